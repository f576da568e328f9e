/* Unit tests of the api layer's field validation (src/api/common.c, src/api/voices.c): th_api_check_input,
 * th_api_check_format, th_api_check_speed, th_api_clone_fields, th_api_set_request_id and the error
 * mappings, at every edge. The checks answer their own errors on a th_http_req, so each runs inside the
 * handler of an in-process server (tests/unit/http/http_testlib.h) fed by a socket client. */
#include "th_test.h"

#include "../http/http_testlib.h"
#include "api/api.h"
#include "http/body.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct api_state {
    th_hstate hs; /* first: the harness's view */
    th_hub hub;
} api_state;

static th_config *parse(const char *yaml)
{
    th_config_errors errs = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &errs);
    for (size_t i = 0; c == NULL && i < errs.n; i++)
        fprintf(stderr, "  %s: %s\n", errs.items[i].path, errs.items[i].message);
    th_config_errors_free(&errs);
    return c;
}

/* POST /input|/format|/speed with the value as the body (query "null": the field is absent), or
 * POST /clone with a JSON body; 200 with what was parsed, or the check's own error. */
static void handler(th_http_req *req, void *ud)
{
    api_state *st = ud;
    th_api_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) {
        th_http_respond(req, 500, "text/plain", "oom", 3);
        return;
    }
    c->hub = &st->hub;
    c->req = req;
    c->shape = strcmp(th_http_path(req), "/clone") == 0 ? TH_SHAPE_CLONE : TH_SHAPE_OPENAI;
    snprintf(c->rid, sizeof c->rid, "rid-1");
    const char *path = th_http_path(req);
    bool absent = strcmp(th_http_query(req), "null") == 0;
    size_t blen = 0;
    const uint8_t *body = th_http_body(req, &blen);
    char val[2048];
    size_t vlen = blen < sizeof val - 1 ? blen : sizeof val - 1;
    if (vlen) memcpy(val, body, vlen);
    val[vlen] = 0;
    char out[256] = "";
    if (strcmp(path, "/input") == 0) {
        size_t chars = 0;
        if (th_api_check_input(c, "input", absent ? NULL : val, vlen, &chars) != 0) return;
        snprintf(out, sizeof out, "chars=%zu", chars);
    } else if (strcmp(path, "/format") == 0) {
        th_fmt fmt = TH_FMT_NONE;
        if (th_api_check_format(c, "response_format", absent ? NULL : val, &fmt) != 0) return;
        snprintf(out, sizeof out, "fmt=%s", th_fmt_name(fmt));
    } else if (strcmp(path, "/speed") == 0) {
        double sp = 0;
        if (th_api_check_speed(c, "speed", absent ? NULL : val, &sp) != 0) return;
        snprintf(out, sizeof out, "speed=%.4f", sp);
    } else if (strcmp(path, "/clone") == 0) {
        th_form f;
        th_form_init(&f);
        char err[256] = "";
        if (th_body_parse(&f, "application/json", body, blen, err, sizeof err) != TH_BODY_OK) {
            th_form_free(&f);
            th_api_error(c, 400, NULL, "malformed_body", "%s", err);
            return;
        }
        th_synth_params p;
        memset(&p, 0, sizeof p);
        if (th_api_clone_fields(c, &f, &p) != 0) {
            th_form_free(&f);
            return;
        }
        snprintf(out, sizeof out, "voice=%s fmt=%s speed=%.2f lang=%s engine=%s gen=%s pitch=%.2f", p.voice,
                 th_fmt_name(p.fmt), p.speed, p.language ? p.language : "-",
                 c->only_engine ? c->only_engine : "-", p.generation ? p.generation : "-", p.pitch);
        th_form_free(&f);
    } else {
        th_api_error(c, 404, NULL, "not_found", "no");
        return;
    }
    th_api_reply(c, 200, "text/plain", out, strlen(out));
}

typedef struct fcase {
    const char *path; /* "/speed" or "/speed?null" */
    const char *body;
    int status;
    const char *want; /* a substring of the response body */
} fcase;

static void run_cases(harness *h, const fcase *cases, size_t n, int *th__failed)
{
    for (size_t i = 0; i < n; i++) {
        const fcase *k = &cases[i];
        size_t blen = strlen(k->body);
        char *req = malloc(blen + 256);
        if (req == NULL) {
            (*th__failed)++;
            return;
        }
        snprintf(req, blen + 256, "POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s", k->path,
                 blen, k->body);
        resp r;
        memset(&r, 0, sizeof r);
        int rc = cl_roundtrip(h->port, req, &r);
        free(req);
        TH_CHECK_INT(rc, 0);
        bool ok = rc == 0 && r.status == k->status && r.body && strstr(r.body, k->want) != NULL;
        if (!ok)
            fprintf(stderr, "  case %zu: %s [%s]: status %d body %.*s (want %d, %s)\n", i, k->path, k->body,
                    r.status, (int)r.blen, r.body ? r.body : "", k->status, k->want);
        TH_CHECK(ok);
        resp_free(&r);
    }
}

#define CASES(name, ...)                                                                                     \
    static const fcase name[] = {__VA_ARGS__};                                                               \
    static void client_##name(harness *h, int *th__failed)                                                   \
    {                                                                                                        \
        run_cases(h, name, sizeof name / sizeof name[0], th__failed);                                        \
    }

/* limits.max_input_chars is 10 below */
CASES(input_cases, {"/input?null", "", 400, "\"missing_input\""}, {"/input", "", 400, "\"missing_input\""},
      {"/input", " \t\r\n ", 400, "\"missing_input\""}, {"/input", "a", 200, "chars=1"},
      {"/input", " a ", 200, "chars=3"}, {"/input", "0123456789", 200, "chars=10"},
      {"/input", "01234567890", 400, "\"input_too_long\""},
      {"/input", "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 200,
       "chars=10"}, /* 10 code points in 20 bytes */
      {"/input", "\xe4\xbd\xa0\xe5\xa5\xbd\xf0\x9f\x98\x80", 200, "chars=3"},
      {"/input", "\xff", 400, "\"invalid_input\""}, {"/input", "ab\xc3", 400, "\"invalid_input\""},
      {"/input", "\xc0\xaf", 400, "\"invalid_input\""},     /* overlong '/' */
      {"/input", "\xed\xa0\x80", 400, "\"invalid_input\""}, /* a UTF-16 surrogate */
      {"/input", "\xf4\x90\x80\x80", 400, "\"invalid_input\""} /* past U+10FFFF */)

CASES(format_cases, {"/format?null", "", 200, "fmt=mp3"}, {"/format", "", 200, "fmt=mp3"},
      {"/format", "mp3", 200, "fmt=mp3"}, {"/format", "opus", 200, "fmt=opus"},
      {"/format", "aac", 200, "fmt=aac"}, {"/format", "flac", 200, "fmt=flac"},
      {"/format", "wav", 200, "fmt=wav"}, {"/format", "pcm", 200, "fmt=pcm"},
      {"/format", "MP3", 400, "\"invalid_response_format\""},
      {"/format", "ogg", 400, "\"invalid_response_format\""},
      {"/format", "mp3 ", 400, "\"invalid_response_format\""},
      {"/format", "wave", 400, "\"invalid_response_format\""},
      {"/format", "none", 400, "\"invalid_response_format\""},
      {"/format", "mp", 400, "\"invalid_response_format\""})

CASES(speed_cases, {"/speed?null", "", 200, "speed=1.0000"}, {"/speed", "", 200, "speed=1.0000"},
      {"/speed", "0.25", 200, "speed=0.2500"}, {"/speed", "4", 200, "speed=4.0000"},
      {"/speed", "4.0", 200, "speed=4.0000"}, {"/speed", "1", 200, "speed=1.0000"},
      {"/speed", "2.5e-1", 200, "speed=0.2500"}, {"/speed", ".5", 200, "speed=0.5000"},
      {"/speed", "+1.5", 200, "speed=1.5000"}, {"/speed", "0.2499", 400, "\"invalid_speed\""},
      {"/speed", "4.0001", 400, "\"invalid_speed\""}, {"/speed", "0", 400, "\"invalid_speed\""},
      {"/speed", "-1", 400, "\"invalid_speed\""}, {"/speed", "abc", 400, "\"invalid_speed\""},
      {"/speed", "1x", 400, "\"invalid_speed\""}, {"/speed", " 1", 400, "\"invalid_speed\""},
      {"/speed", "nan", 400, "\"invalid_speed\""}, {"/speed", "inf", 400, "\"invalid_speed\""},
      {"/speed", "0x1p0", 400, "\"invalid_speed\""}, {"/speed", "1e400", 400, "\"invalid_speed\""},
      {"/speed", "1.", 200, "speed=1.0000"}, {"/speed", ".", 400, "\"invalid_speed\""},
      {"/speed", "1..2", 400, "\"invalid_speed\""},
      {"/speed", "1.00000000000000000000000000000000000000000000000000000000000000000", 400,
       "\"invalid_speed\""} /* over 64 characters */)

CASES(clone_cases, {"/clone", "{}", 400, "\"missing_voice_id\""},
      {"/clone", "{\"voice_id\":\"\"}", 400, "\"missing_voice_id\""},
      {"/clone", "{\"voice_id\":null}", 400, "\"missing_voice_id\""},
      {"/clone", "{\"voice_id\":7}", 200, "voice=7 "}, /* a JSON scalar is read as its text */
      {"/clone", "{\"voice_id\":\"v1\"}", 200, "voice=v1 fmt=wav speed=1.00 lang=- engine=- gen=rid-1"},
      {"/clone", "{\"voice\":\"v2\"}", 200, "voice=v2 "},
      {"/clone", "{\"voice_id\":\"v1\",\"voice\":\"v2\"}", 200, "voice=v1 "},
      {"/clone", "{\"voice_id\":\"a\\u0000b\"}", 400, "\"malformed_body\""}, /* NUL never gets through */
      {"/clone", "{\"voice_id\":\"v\",\"engine\":\"fm\"}", 200, "engine=fm "},
      {"/clone", "{\"voice_id\":\"v\",\"engine\":\"openai_fm\"}", 200, "engine=openai_fm "},
      {"/clone", "{\"voice_id\":\"v\",\"engine\":\"\"}", 200, "engine=- "},
      {"/clone", "{\"voice_id\":\"v\",\"engine\":\"xtts\"}", 400, "\"unknown_engine\""},
      {"/clone", "{\"voice_id\":\"v\",\"engine\":\"f m\"}", 400, "\"unknown_engine\""},
      {"/clone", "{\"voice_id\":\"v\",\"engine\":\"../fm\"}", 400, "\"unknown_engine\""},
      {"/clone", "{\"voice_id\":\"v\",\"output_format\":\"mp3\"}", 200, "fmt=mp3 "},
      {"/clone", "{\"voice_id\":\"v\",\"response_format\":\"flac\"}", 200, "fmt=flac "},
      {"/clone", "{\"voice_id\":\"v\",\"output_format\":\"\"}", 200, "fmt=wav "},
      {"/clone", "{\"voice_id\":\"v\",\"output_format\":\"ogg\"}", 400, "\"invalid_response_format\""},
      {"/clone", "{\"voice_id\":\"v\",\"speed\":\"4\"}", 200, "speed=4.00 "},
      {"/clone", "{\"voice_id\":\"v\",\"speed\":0.25}", 200, "speed=0.25 "},
      {"/clone", "{\"voice_id\":\"v\",\"speed\":\"4.5\"}", 400, "\"invalid_speed\""},
      /* pitch: seed-2's ratio 0.5..2.0; unset is 0 (the voice's own) */
      {"/clone", "{\"voice_id\":\"v1\"}", 200, "gen=rid-1 pitch=0.00"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":null}", 200, "pitch=0.00"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":\"\"}", 200, "pitch=0.00"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":0.5}", 200, "pitch=0.50"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":1}", 200, "pitch=1.00"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":\"2\"}", 200, "pitch=2.00"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":1.25e0}", 200, "pitch=1.25"},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":0.49}", 400, "\"invalid_pitch\""},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":2.01}", 400, "\"invalid_pitch\""},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":0}", 400, "\"invalid_pitch\""},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":\"-24\"}", 400, "\"invalid_pitch\""},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":24}", 400, "\"invalid_pitch\""},
      {"/clone", "{\"voice_id\":\"v\",\"pitch\":\"up\"}", 400, "\"invalid_pitch\""},
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"zh-CN\"}", 200, "lang=zh-CN "},
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"\"}", 200, "lang=- "},
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"en us\"}", 400, "\"invalid_language\""},
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"en\\u0000\"}", 400, "\"malformed_body\""},
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"abcdefghijabcdefghijabcdefghijabcde\"}", 200,
       "lang=abc"},
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"abcdefghijabcdefghijabcdefghijabcdef\"}", 400,
       "\"invalid_language\""},
      /* the voice-clone shape: success false and the code */
      {"/clone", "{\"voice_id\":\"v\",\"language\":\"??\"}", 400, "\"success\":false"})

/* voice_id of 256 bytes is the longest accepted; 257 is refused */
static char long_ok[400], long_bad[400];
static fcase long_cases[] = {
    {"/clone", long_ok, 200, "voice=xxxxxxxx"},
    {"/clone", long_bad, 400, "\"invalid_voice_id\""},
};

static void client_long_cases(harness *h, int *th__failed)
{
    run_cases(h, long_cases, sizeof long_cases / sizeof long_cases[0], th__failed);
}

static void long_body(char *out, size_t n)
{
    char id[300];
    memset(id, 'x', n);
    id[n] = 0;
    snprintf(out, 400, "{\"voice_id\":\"%s\"}", id);
}

static int run_server(client_fn client, int *th__failed)
{
    api_state st;
    memset(&st, 0, sizeof st);
    st.hub.cfg = parse("limits: { max_input_chars: 10 }\n"
                       "providers:\n"
                       "  - { name: fm, type: openai_fm, base_url: \"http://127.0.0.1:7001\" }\n");
    st.hub.log = th_log_new(TH_LOG_OFF, TH_LOG_TEXT, NULL);
    if (st.hub.cfg == NULL || st.hub.log == NULL) return -1;
    th_http_limits lim = {0};
    th_hub_http_limits(st.hub.cfg, &lim);
    int rc = h_run(&lim, handler, &st, client, th__failed, NULL);
    th_log_free(st.hub.log);
    th_config_unref(st.hub.cfg);
    return rc;
}

TH_TEST(api_check_input_edges)
{
    TH_CHECK_INT(run_server(client_input_cases, th__failed), 0);
}

TH_TEST(api_check_format_edges)
{
    TH_CHECK_INT(run_server(client_format_cases, th__failed), 0);
}

TH_TEST(api_check_speed_edges)
{
    TH_CHECK_INT(run_server(client_speed_cases, th__failed), 0);
}

TH_TEST(api_clone_fields_edges)
{
    TH_CHECK_INT(run_server(client_clone_cases, th__failed), 0);
}

TH_TEST(api_clone_voice_id_length)
{
    long_body(long_ok, 256);
    long_body(long_bad, 257);
    TH_CHECK_INT(run_server(client_long_cases, th__failed), 0);
}

TH_TEST(api_request_id_edges)
{
    th_api_ctx c;
    memset(&c, 0, sizeof c);
    snprintf(c.rid, sizeof c.rid, "before");
    TH_CHECK(!th_api_set_request_id(&c, ""));
    TH_CHECK_STR(c.rid, "before");
    TH_CHECK(th_api_set_request_id(&c, "a"));
    TH_CHECK_STR(c.rid, "a");
    TH_CHECK(th_api_set_request_id(&c, "AZaz09-_.:"));
    TH_CHECK_STR(c.rid, "AZaz09-_.:");
    char id[200];
    memset(id, 'x', 128);
    id[128] = 0;
    TH_CHECK(th_api_set_request_id(&c, id));
    TH_CHECK_INT(strlen(c.rid), 128);
    memset(id, 'y', 129);
    id[129] = 0;
    TH_CHECK(!th_api_set_request_id(&c, id));
    TH_CHECK_INT(strlen(c.rid), 128);
    TH_CHECK(c.rid[0] == 'x');
    static const char *bad[] = {"a b", "a/b", "a\\b", "a\"b", "a\r\nX-Evil: 1", "caf\xc3\xa9", "a\tb",
                                "a;b", "a,b", "a?b",  "a%20"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bool r = th_api_set_request_id(&c, bad[i]);
        if (r) fprintf(stderr, "  accepted %s\n", bad[i]);
        TH_CHECK(!r);
    }
}

TH_TEST(api_perr_status_mapping)
{
    static const struct {
        th_perr_kind kind;
        int status;
        const char *type, *code;
    } m[] = {
        {TH_PERR_CLIENT, 400, "invalid_request_error", "upstream_rejected"},
        {TH_PERR_TIMEOUT, 504, "timeout_error", "upstream_timeout"},
        {TH_PERR_OVERLOADED, 503, "service_unavailable", "upstream_overloaded"},
        {TH_PERR_INTERNAL, 500, "server_error", "internal_error"},
        {TH_PERR_CANCELLED, 499, "invalid_request_error", "cancelled"},
        {TH_PERR_CONNECT, 502, "upstream_error", "upstream_error"},
        {TH_PERR_STATUS, 502, "upstream_error", "upstream_error"},
        {TH_PERR_PROTOCOL, 502, "upstream_error", "upstream_error"},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        th_perr e;
        th_perr_set(&e, m[i].kind, 0, "x");
        int st = 0;
        const char *type = NULL, *code = NULL;
        th_api_perr_status(&e, &st, &type, &code);
        TH_CHECK_INT(st, m[i].status);
        TH_CHECK_STR(type, m[i].type);
        TH_CHECK_STR(code, m[i].code);
    }
}

TH_TEST(api_error_type_by_status)
{
    TH_CHECK_STR(th_api_error_type(400), "invalid_request_error");
    TH_CHECK_STR(th_api_error_type(401), "authentication_error");
    TH_CHECK_STR(th_api_error_type(403), "permission_error");
    TH_CHECK_STR(th_api_error_type(404), "not_found_error");
    TH_CHECK_STR(th_api_error_type(405), "invalid_request_error");
    TH_CHECK_STR(th_api_error_type(408), "timeout_error");
    TH_CHECK_STR(th_api_error_type(413), "invalid_request_error");
    TH_CHECK_STR(th_api_error_type(429), "rate_limit_error");
    TH_CHECK_STR(th_api_error_type(500), "server_error");
    TH_CHECK_STR(th_api_error_type(502), "upstream_error");
    TH_CHECK_STR(th_api_error_type(503), "service_unavailable");
    TH_CHECK_STR(th_api_error_type(504), "timeout_error");
    TH_CHECK_STR(th_api_error_type(599), "server_error");
}

TH_TEST_MAIN()
