/* Unit tests of the self-hosted engine kinds (gpt_sovits, xtts, openvoice, cosyvoice, nodes).
 *
 * First their requests, body specs and error mapping, called directly; then end to end through the
 * generic upstream provider (th_upstream_ops, real libcurl client on a uv loop) against the Python fakes
 * of tests/e2e/fakes: the audio must decode with the right length, and each engine's failures must come
 * back as the right th_perr kind. */
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "audio/conv.h"
#include "audio/wav.h"
#include "core/clock.h"
#include "core/str.h"
#include "fake_proc.h"
#include "providers/upstream.h"
#include "th_test.h"

/* ---- helpers ------------------------------------------------------------------------------ */

typedef struct tconf {
    th_provider_conf pc;
    th_kv opts[8];
    th_kv voices[8];
} tconf;

static void tconf_init(tconf *t, const char *type, const char *base_url)
{
    memset(t, 0, sizeof *t);
    t->pc.name = (char *)type;
    t->pc.type = (char *)type;
    t->pc.base_url = (char *)base_url;
    t->pc.timeout_ms = 10000;
    t->pc.opts = t->opts;
    t->pc.voices = t->voices;
}

static void tconf_opt(tconf *t, const char *key, const char *value)
{
    t->opts[t->pc.n_opts++] = (th_kv){(char *)key, (char *)value, false};
}

static void tconf_voice(tconf *t, const char *key, const char *value, bool is_map)
{
    t->voices[t->pc.n_voices++] = (th_kv){(char *)key, (char *)value, is_map};
}

static th_synth_req mkreq(const char *text, const char *voice)
{
    return (th_synth_req){.text = text,
                          .text_len = strlen(text),
                          .chars = strlen(text),
                          .voice = voice,
                          .want_fmt = TH_FMT_WAV,
                          .want_rate = 24000,
                          .speed = 1.0};
}

/* Builds a request; returns 0 or -1 (err filled). h must be freed by the caller. */
static int build(const th_upstream_kind *k, const tconf *t, const th_synth_req *req, th_upstream_http *h,
                 th_perr *err)
{
    th_upstream_http_init(h);
    h->base_url = t->pc.base_url; /* as the upstream provider sets it (or the target it picked) */
    memset(err, 0, sizeof *err);
    return k->build(&t->pc, req, h, err);
}

static const char *url_of(th_upstream_http *h)
{
    const char *u = th_buf_cstr(&h->url);
    return u != NULL ? u : "";
}

/* The URL without its query string, into out. */
static const char *url_path(th_upstream_http *h, char *out, size_t n)
{
    const char *u = url_of(h);
    size_t l = strcspn(u, "?");
    if (l >= n) l = n - 1;
    memcpy(out, u, l);
    out[l] = 0;
    return out;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes (and '+' -> ' ') n bytes of s into out. */
static void pct_decode(const char *s, size_t n, char *out, size_t outn)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outn; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            out[o++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    out[o] = 0;
}

/* The decoded value of name in an a=b&c=d string (a query or a form body); NULL when absent. */
static const char *field_get(const char *q, size_t qlen, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name), i = 0;
    while (i < qlen) {
        size_t end = i;
        while (end < qlen && q[end] != '&')
            end++;
        if (end - i > nl && memcmp(q + i, name, nl) == 0 && q[i + nl] == '=') {
            pct_decode(q + i + nl + 1, end - i - nl - 1, out, n);
            return out;
        }
        i = end + 1;
    }
    return NULL;
}

static const char *query_get(th_upstream_http *h, const char *name, char *out, size_t n)
{
    const char *u = url_of(h), *q = strchr(u, '?');
    if (q == NULL) return NULL;
    return field_get(q + 1, strlen(q + 1), name, out, n);
}

static size_t query_count(th_upstream_http *h)
{
    const char *u = url_of(h), *q = strchr(u, '?');
    if (q == NULL) return 0;
    size_t c = 1;
    for (q++; *q; q++)
        c += *q == '&';
    return c;
}

static bool has_header(th_upstream_http *h, const char *line)
{
    const char *s = th_buf_cstr(&h->headers);
    if (s == NULL) return false;
    size_t l = strlen(line);
    for (const char *p = s; (p = strstr(p, line)) != NULL; p++)
        if ((p == s || p[-1] == '\n') && (p[l] == '\n' || p[l] == 0)) return true;
    return false;
}

static json_t *body_json(th_upstream_http *h)
{
    return json_loadb((const char *)h->body.data, h->body.len, 0, NULL);
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static double jnum(json_t *o, const char *key)
{
    return json_number_value(json_object_get(o, key));
}

static th_perr map_err(const th_upstream_kind *k, const tconf *t, int status, const char *ct,
                       const char *body)
{
    th_perr e;
    memset(&e, 0, sizeof e);
    k->error(&t->pc, status, ct, (const uint8_t *)body, body ? strlen(body) : 0, &e);
    return e;
}

/* ---- gpt_sovits ----------------------------------------------------------------------------- */

TH_TEST(gpt_sovits_v2_plain_voice_defaults)
{
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://127.0.0.1:9880/");
    tconf_voice(&t, "alice", "refs/alice.wav", false); /* a path the operator configured */
    th_synth_req req = mkreq("Hello, wörld \"quoted\"\n", "refs/alice.wav");
    req.speed = 1.25;
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_gpt_sovits, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://127.0.0.1:9880/tts");
    TH_CHECK(has_header(&h, "Content-Type: application/json"));
    json_t *b = body_json(&h);
    TH_CHECK(json_is_object(b));
    TH_CHECK_INT(json_object_size(b), 10);
    TH_CHECK_STR(jstr(b, "text"), "Hello, wörld \"quoted\"\n");
    TH_CHECK_STR(jstr(b, "text_lang"), "auto");
    TH_CHECK_STR(jstr(b, "ref_audio_path"), "refs/alice.wav");
    TH_CHECK_STR(jstr(b, "prompt_text"), "");
    TH_CHECK_STR(jstr(b, "prompt_lang"), "auto");
    TH_CHECK_STR(jstr(b, "media_type"), "wav");
    TH_CHECK(json_is_integer(json_object_get(b, "streaming_mode")));
    TH_CHECK_INT(json_integer_value(json_object_get(b, "streaming_mode")), 1);
    TH_CHECK(jnum(b, "speed_factor") > 1.249 && jnum(b, "speed_factor") < 1.251);
    TH_CHECK_STR(jstr(b, "text_split_method"), "cut5");
    TH_CHECK_INT(json_integer_value(json_object_get(b, "batch_size")), 1);
    json_decref(b);
    th_audio_spec spec;
    th_kind_gpt_sovits.body_spec(&t.pc, &req, "audio/wav", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_WAV);
    th_upstream_http_free(&h);
}

TH_TEST(gpt_sovits_v2_mapping_and_options)
{
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://h:1");
    tconf_opt(&t, "text_lang", "en");
    tconf_opt(&t, "media_type", "raw");
    tconf_opt(&t, "streaming_mode", "0");
    const char *ref =
        "{\"ref_audio_path\":\"/srv/ref/bob.wav\",\"prompt_text\":\"你好\",\"prompt_lang\":\"zh\"}";
    tconf_voice(&t, "bob", ref, true);
    th_synth_req req = mkreq("text", ref);
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_gpt_sovits, &t, &req, &h, &err) == 0);
    json_t *b = body_json(&h);
    TH_CHECK_STR(jstr(b, "text_lang"), "en");
    TH_CHECK_STR(jstr(b, "ref_audio_path"), "/srv/ref/bob.wav");
    TH_CHECK_STR(jstr(b, "prompt_text"), "你好");
    TH_CHECK_STR(jstr(b, "prompt_lang"), "zh");
    TH_CHECK_STR(jstr(b, "media_type"), "raw");
    TH_CHECK_INT(json_integer_value(json_object_get(b, "streaming_mode")), 0);
    json_decref(b);
    th_upstream_http_free(&h);

    /* raw: headerless int16 mono at sample_rate (32000 by default, or the provider's) */
    th_audio_spec spec;
    th_kind_gpt_sovits.body_spec(&t.pc, &req, "audio/raw", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(spec.sample_rate, 32000);
    TH_CHECK_INT(spec.channels, 1);
    TH_CHECK_INT(spec.sample, TH_SAMPLE_S16);
    t.pc.sample_rate = 24000;
    th_kind_gpt_sovits.body_spec(&t.pc, &req, NULL, &spec);
    TH_CHECK_INT(spec.sample_rate, 24000);

    /* a mapping without prompt_lang: prompt_lang = text_lang */
    tconf t2;
    tconf_init(&t2, "gpt_sovits", "http://h:1");
    tconf_opt(&t2, "text_lang", "ja");
    const char *ref2 = "{\"ref_audio_path\":\"a.wav\"}";
    tconf_voice(&t2, "a", ref2, true);
    req = mkreq("x", ref2);
    TH_REQUIRE(build(&th_kind_gpt_sovits, &t2, &req, &h, &err) == 0);
    b = body_json(&h);
    TH_CHECK_STR(jstr(b, "ref_audio_path"), "a.wav");
    TH_CHECK_STR(jstr(b, "prompt_text"), "");
    TH_CHECK_STR(jstr(b, "prompt_lang"), "ja");
    json_decref(b);
    th_upstream_http_free(&h);
}

TH_TEST(gpt_sovits_client_voice_never_becomes_a_path)
{
    /* a voice string that looks like a mapping but is not one of the provider's mappings, or a path the
     * operator did not configure: refused as the client's fault, never sent as ref_audio_path */
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://h:1");
    tconf_voice(&t, "alice", "/srv/refs/alice.wav", false);
    const char *bad[] = {"{\"ref_audio_path\":\"/etc/shadow\"}", "/etc/passwd", "../../etc/passwd", "alice",
                         "refs/alice.wav"};
    th_upstream_http h;
    th_perr err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_synth_req req = mkreq("x", bad[i]);
        TH_CHECK(build(&th_kind_gpt_sovits, &t, &req, &h, &err) == -1);
        TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
        TH_CHECK_INT(h.body.len, 0);
        th_upstream_http_free(&h);
    }
    /* the configured value goes through */
    th_synth_req req = mkreq("x", "/srv/refs/alice.wav");
    TH_REQUIRE(build(&th_kind_gpt_sovits, &t, &req, &h, &err) == 0);
    json_t *b = body_json(&h);
    TH_CHECK_STR(jstr(b, "ref_audio_path"), "/srv/refs/alice.wav");
    json_decref(b);
    th_upstream_http_free(&h);

    /* no voice at all: the request is at fault */
    req.voice = NULL;
    TH_CHECK(build(&th_kind_gpt_sovits, &t, &req, &h, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    th_upstream_http_free(&h);
}

TH_TEST(gpt_sovits_v1_request)
{
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://h:9880");
    tconf_opt(&t, "api", "v1");
    tconf_opt(&t, "text_lang", "zh");
    const char *ref = "{\"ref_audio_path\":\"r.wav\",\"prompt_text\":\"p\",\"prompt_lang\":\"zh\"}";
    tconf_voice(&t, "r", ref, true);
    th_synth_req req = mkreq("你好", ref);
    req.speed = 0.8;
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_gpt_sovits, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://h:9880/");
    TH_CHECK(has_header(&h, "Content-Type: application/json"));
    json_t *b = body_json(&h);
    TH_CHECK_INT(json_object_size(b), 6);
    TH_CHECK_STR(jstr(b, "text"), "你好");
    TH_CHECK_STR(jstr(b, "text_language"), "zh");
    TH_CHECK_STR(jstr(b, "refer_wav_path"), "r.wav");
    TH_CHECK_STR(jstr(b, "prompt_text"), "p");
    TH_CHECK_STR(jstr(b, "prompt_language"), "zh");
    TH_CHECK(jnum(b, "speed") > 0.799 && jnum(b, "speed") < 0.801);
    json_decref(b);
    th_upstream_http_free(&h);
    th_audio_spec spec;
    th_kind_gpt_sovits.body_spec(&t.pc, &req, "audio/wav", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_WAV);
}

TH_TEST(gpt_sovits_errors)
{
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://h:1");
    th_perr e =
        map_err(&th_kind_gpt_sovits, &t, 400, "application/json", "{\"message\": \"text is required\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK_INT(e.status, 400);
    TH_CHECK(strstr(e.message, "text is required") != NULL);
    e = map_err(&th_kind_gpt_sovits, &t, 400, "application/json",
                "{\"message\":\"tts failed\",\"Exception\":\"CUDA out of memory\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    TH_CHECK(strstr(e.message, "CUDA out of memory") != NULL);
    e = map_err(&th_kind_gpt_sovits, &t, 500, "text/plain; charset=utf-8", "Internal Server Error");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    TH_CHECK(strstr(e.message, "Internal Server Error") != NULL);
    e = map_err(&th_kind_gpt_sovits, &t, 500, NULL, NULL);
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    e = map_err(&th_kind_gpt_sovits, &t, 429, "application/json", "{\"message\":\"too many requests\"}");
    TH_CHECK_INT(e.kind, TH_PERR_OVERLOADED);
    e = map_err(
        &th_kind_gpt_sovits, &t, 422, "application/json",
        "{\"detail\":[{\"type\":\"json_invalid\",\"loc\":[\"body\",0],\"msg\":\"JSON decode error\"}]}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    /* api.py (v1) */
    tconf_opt(&t, "api", "v1");
    e = map_err(&th_kind_gpt_sovits, &t, 400, "application/json",
                "{\"code\":400,\"message\":\"未指定文本语种\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "未指定文本语种") != NULL);
    e = map_err(&th_kind_gpt_sovits, &t, 500, "application/json",
                "{\"code\":500,\"message\":\"tts failed\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
}

TH_TEST(gpt_sovits_probe)
{
    tconf t;
    tconf_init(&t, "gpt_sovits", "http://h:9880");
    th_upstream_http h;
    th_upstream_http_init(&h);
    TH_REQUIRE(th_kind_gpt_sovits.probe(&t.pc, &h) == 0);
    TH_CHECK_STR(h.method, "GET");
    TH_CHECK_STR(url_of(&h), "http://h:9880/docs");
    th_upstream_http_free(&h);
}

/* ---- xtts ----------------------------------------------------------------------------------- */

TH_TEST(xtts_tts_to_audio_request)
{
    tconf t;
    tconf_init(&t, "xtts", "http://h:8020");
    th_synth_req req = mkreq("Bonjour à tous", "female");
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_xtts, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://h:8020/tts_to_audio/");
    TH_CHECK(has_header(&h, "Content-Type: application/json"));
    json_t *b = body_json(&h);
    TH_CHECK_INT(json_object_size(b), 3);
    TH_CHECK_STR(jstr(b, "text"), "Bonjour à tous");
    TH_CHECK_STR(jstr(b, "speaker_wav"), "female");
    TH_CHECK_STR(jstr(b, "language"), "en");
    json_decref(b);
    th_upstream_http_free(&h);

    /* the request's language wins over the option */
    tconf_opt(&t, "language", "de");
    TH_REQUIRE(build(&th_kind_xtts, &t, &req, &h, &err) == 0);
    b = body_json(&h);
    TH_CHECK_STR(jstr(b, "language"), "de");
    json_decref(b);
    th_upstream_http_free(&h);
    req.language = "fr";
    TH_REQUIRE(build(&th_kind_xtts, &t, &req, &h, &err) == 0);
    b = body_json(&h);
    TH_CHECK_STR(jstr(b, "language"), "fr");
    json_decref(b);
    th_upstream_http_free(&h);

    th_audio_spec spec;
    th_kind_xtts.body_spec(&t.pc, &req, "audio/wav", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_WAV);
}

TH_TEST(xtts_client_voice_never_becomes_a_path)
{
    tconf t;
    tconf_init(&t, "xtts", "http://h:8020");
    tconf_voice(&t, "narrator", "/srv/speakers/narrator.wav", false); /* the operator's own path */
    const char *bad[] = {"/etc/passwd.wav", "../../etc/passwd", "..", ".hidden", "a/b", "a\\b", "x\ny"};
    th_upstream_http h;
    th_perr err;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        th_synth_req req = mkreq("x", bad[i]);
        TH_CHECK(build(&th_kind_xtts, &t, &req, &h, &err) == -1);
        TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
        th_upstream_http_free(&h);
    }
    th_synth_req req = mkreq("x", "/srv/speakers/narrator.wav");
    TH_CHECK(build(&th_kind_xtts, &t, &req, &h, &err) == 0);
    th_upstream_http_free(&h);
    req = mkreq("x", "calm_female");
    TH_CHECK(build(&th_kind_xtts, &t, &req, &h, &err) == 0);
    th_upstream_http_free(&h);
}

TH_TEST(xtts_stream_request)
{
    tconf t;
    tconf_init(&t, "xtts", "http://h:8020");
    tconf_opt(&t, "stream", "true");
    th_synth_req req = mkreq("a b&c=d/é?", "calm female.wav");
    th_upstream_http h;
    th_perr err;
    char v[128], p[128];
    TH_REQUIRE(build(&th_kind_xtts, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "GET");
    TH_CHECK_STR(url_path(&h, p, sizeof p), "http://h:8020/tts_stream");
    TH_CHECK_INT(query_count(&h), 3);
    TH_CHECK_STR(query_get(&h, "text", v, sizeof v), "a b&c=d/é?");
    TH_CHECK_STR(query_get(&h, "speaker_wav", v, sizeof v), "calm female.wav");
    TH_CHECK_STR(query_get(&h, "language", v, sizeof v), "en");
    TH_CHECK_INT(h.body.len, 0);
    th_upstream_http_free(&h);
}

TH_TEST(xtts_errors_and_probe)
{
    tconf t;
    tconf_init(&t, "xtts", "http://h:8020");
    th_perr e = map_err(&th_kind_xtts, &t, 400, "application/json",
                        "{\"detail\":\"Language code sent is either unsupported or misspelled.\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "unsupported or misspelled") != NULL);
    e = map_err(&th_kind_xtts, &t, 500, "application/json", "{\"detail\":\"Error: CUDA out of memory\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    TH_CHECK_INT(e.status, 500);
    /* an unknown speaker is the request's fault even though the server says 500 */
    e = map_err(&th_kind_xtts, &t, 500, "application/json",
                "{\"detail\":\"Error: Speaker nobody not found in speakers folder\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    e = map_err(&th_kind_xtts, &t, 422, "application/json",
                "{\"detail\":[{\"loc\":[\"body\",\"text\"],\"msg\":\"field required\"}]}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "field required") != NULL);
    e = map_err(&th_kind_xtts, &t, 502, "text/html", "<html>bad gateway</html>");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);

    th_upstream_http h;
    th_upstream_http_init(&h);
    TH_REQUIRE(th_kind_xtts.probe(&t.pc, &h) == 0);
    TH_CHECK_STR(h.method, "GET");
    TH_CHECK_STR(url_of(&h), "http://h:8020/speakers_list");
    th_upstream_http_free(&h);
}

/* ---- openvoice ------------------------------------------------------------------------------ */

TH_TEST(openvoice_request)
{
    tconf t;
    tconf_init(&t, "openvoice", "http://h:8000");
    th_synth_req req = mkreq("Hi there & 'you' 中文", "demo_speaker0");
    req.speed = 1.5;
    th_upstream_http h;
    th_perr err;
    char v[128], p[128];
    TH_REQUIRE(build(&th_kind_openvoice, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "GET");
    TH_CHECK_STR(url_path(&h, p, sizeof p), "http://h:8000/synthesize_speech/");
    TH_CHECK_INT(query_count(&h), 4);
    TH_CHECK_STR(query_get(&h, "text", v, sizeof v), "Hi there & 'you' 中文");
    TH_CHECK_STR(query_get(&h, "voice", v, sizeof v), "demo_speaker0");
    TH_CHECK_STR(query_get(&h, "accent", v, sizeof v), "en-newest");
    TH_CHECK_STR(query_get(&h, "speed", v, sizeof v), "1.5");
    th_upstream_http_free(&h);

    tconf_opt(&t, "accent", "en-br");
    req.speed = 0; /* unset: 1 */
    TH_REQUIRE(build(&th_kind_openvoice, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(query_get(&h, "accent", v, sizeof v), "en-br");
    TH_CHECK_STR(query_get(&h, "speed", v, sizeof v), "1");
    th_upstream_http_free(&h);

    th_audio_spec spec;
    th_kind_openvoice.body_spec(&t.pc, &req, "audio/wav", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_WAV);

    th_upstream_http_init(&h);
    TH_REQUIRE(th_kind_openvoice.probe(&t.pc, &h) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:8000/docs");
    th_upstream_http_free(&h);
}

TH_TEST(openvoice_errors)
{
    tconf t;
    tconf_init(&t, "openvoice", "http://h:8000");
    TH_REQUIRE(th_kind_openvoice.body_is_error != NULL);
    const char *refusal = "{\"error\": \"File type not allowed\"}";
    TH_CHECK(th_kind_openvoice.body_is_error((const uint8_t *)refusal, strlen(refusal)) == 1);
    TH_CHECK(th_kind_openvoice.body_is_error((const uint8_t *)"  {", 3) == 1);
    TH_CHECK(th_kind_openvoice.body_is_error((const uint8_t *)"RIFF\x24\0\0\0WAVE", 12) == 0);
    TH_CHECK(th_kind_openvoice.body_is_error((const uint8_t *)"", 0) == 0);
    th_perr e = map_err(&th_kind_openvoice, &t, 200, "application/json", refusal);
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "File type not allowed") != NULL);
    e = map_err(&th_kind_openvoice, &t, 400, "application/json", "{\"detail\":\"No matching voice found.\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "No matching voice found.") != NULL);
    e = map_err(&th_kind_openvoice, &t, 500, "application/json",
                "{\"detail\":\"CUDA error: out of memory\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    e = map_err(
        &th_kind_openvoice, &t, 422, "application/json",
        "{\"detail\":[{\"type\":\"missing\",\"loc\":[\"query\",\"voice\"],\"msg\":\"Field required\"}]}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
}

/* ---- cosyvoice ------------------------------------------------------------------------------ */

TH_TEST(cosyvoice_sft_and_instruct_requests)
{
    tconf t;
    tconf_init(&t, "cosyvoice", "http://h:50000");
    th_synth_req req = mkreq("你好 world&x=1+2", "中文女");
    th_upstream_http h;
    th_perr err;
    char v[128];
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_sft");
    TH_CHECK(has_header(&h, "Content-Type: application/x-www-form-urlencoded"));
    const char *b = th_buf_cstr(&h.body);
    TH_REQUIRE(b != NULL);
    TH_CHECK(strchr(b, ' ') == NULL && strchr(b, '+') == NULL);
    TH_CHECK_STR(field_get(b, h.body.len, "tts_text", v, sizeof v), "你好 world&x=1+2");
    TH_CHECK_STR(field_get(b, h.body.len, "spk_id", v, sizeof v), "中文女");
    TH_CHECK(field_get(b, h.body.len, "instruct_text", v, sizeof v) == NULL);
    th_upstream_http_free(&h);

    tconf_opt(&t, "mode", "instruct");
    req.prompt = "speak slowly, calmly";
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_instruct");
    b = th_buf_cstr(&h.body);
    TH_REQUIRE(b != NULL);
    TH_CHECK_STR(field_get(b, h.body.len, "tts_text", v, sizeof v), "你好 world&x=1+2");
    TH_CHECK_STR(field_get(b, h.body.len, "spk_id", v, sizeof v), "中文女");
    TH_CHECK_STR(field_get(b, h.body.len, "instruct_text", v, sizeof v), "speak slowly, calmly");
    th_upstream_http_free(&h);

    /* headerless s16le mono at sample_rate (22050 by default) */
    th_audio_spec spec;
    th_kind_cosyvoice.body_spec(&t.pc, &req, NULL, &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(spec.sample_rate, 22050);
    TH_CHECK_INT(spec.channels, 1);
    TH_CHECK_INT(spec.sample, TH_SAMPLE_S16);
    t.pc.sample_rate = 24000;
    th_kind_cosyvoice.body_spec(&t.pc, &req, NULL, &spec);
    TH_CHECK_INT(spec.sample_rate, 24000);
}

/* Writes a small fake wav file; returns its path (static buffer of the caller). */
static int write_tmp(char *path, size_t n, const uint8_t *data, size_t len)
{
    snprintf(path, n, "/tmp/th_kinds_prompt_%d.wav", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (f == NULL) return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

/* The content of the multipart part named name, or NULL. */
static const uint8_t *mp_part(const th_buf *body, const char *boundary, const char *name, size_t *len)
{
    char hdr[256];
    snprintf(hdr, sizeof hdr, "Content-Disposition: form-data; name=\"%s\"", name);
    const uint8_t *p = memmem(body->data, body->len, hdr, strlen(hdr));
    if (p == NULL) return NULL;
    const uint8_t *end = body->data + body->len;
    const uint8_t *s = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
    if (s == NULL) return NULL;
    s += 4;
    char delim[128];
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    const uint8_t *e = memmem(s, (size_t)(end - s), delim, strlen(delim));
    if (e == NULL) return NULL;
    *len = (size_t)(e - s);
    return s;
}

TH_TEST(cosyvoice_zero_shot_and_cross_lingual)
{
    uint8_t wav[3000];
    for (size_t i = 0; i < sizeof wav; i++)
        wav[i] = (uint8_t)(i * 7 + 3);
    memcpy(wav, "RIFF", 4);
    char path[128], ref[512];
    TH_REQUIRE(write_tmp(path, sizeof path, wav, sizeof wav) == 0);
    snprintf(ref, sizeof ref, "{\"prompt_wav\":\"%s\",\"prompt_text\":\"希望你以后能够做的比我还好呦。\"}",
             path);

    tconf t;
    tconf_init(&t, "cosyvoice", "http://h:50000");
    tconf_opt(&t, "mode", "zero_shot");
    tconf_voice(&t, "clone", ref, true);
    th_synth_req req = mkreq("收到好友从远方寄来的生日礼物", ref);
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_zero_shot");
    const char *hd = th_buf_cstr(&h.headers);
    TH_REQUIRE(hd != NULL);
    const char *bp = strstr(hd, "Content-Type: multipart/form-data; boundary=");
    TH_REQUIRE(bp != NULL);
    char boundary[100];
    bp += strlen("Content-Type: multipart/form-data; boundary=");
    size_t bl = strcspn(bp, "\n");
    TH_REQUIRE(bl > 0 && bl < sizeof boundary);
    memcpy(boundary, bp, bl);
    boundary[bl] = 0;
    size_t len = 0;
    const uint8_t *part = mp_part(&h.body, boundary, "tts_text", &len);
    TH_CHECK(part != NULL && len == strlen(req.text) && memcmp(part, req.text, len) == 0);
    part = mp_part(&h.body, boundary, "prompt_text", &len);
    TH_CHECK(part != NULL && len == strlen("希望你以后能够做的比我还好呦。"));
    part = mp_part(&h.body, boundary, "prompt_wav", &len);
    TH_CHECK(part != NULL && len == sizeof wav && memcmp(part, wav, len) == 0);
    TH_CHECK(memmem(h.body.data, h.body.len, "filename=\"", 10) != NULL);
    char closing[128];
    snprintf(closing, sizeof closing, "--%s--\r\n", boundary);
    TH_CHECK(h.body.len > strlen(closing) &&
             memcmp(h.body.data + h.body.len - strlen(closing), closing, strlen(closing)) == 0);
    TH_CHECK(memcmp(h.body.data, "--", 2) == 0 && memcmp(h.body.data + 2, boundary, bl) == 0);
    th_upstream_http_free(&h);

    /* cross_lingual: no prompt_text part */
    t.opts[0].value = "cross_lingual";
    TH_REQUIRE(build(&th_kind_cosyvoice, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(url_of(&h), "http://h:50000/inference_cross_lingual");
    TH_CHECK(memmem(h.body.data, h.body.len, "name=\"prompt_text\"", 18) == NULL);
    TH_CHECK(memmem(h.body.data, h.body.len, "name=\"prompt_wav\"", 17) != NULL);
    th_upstream_http_free(&h);

    /* a plain voice in a cloning mode: refused, no file is read */
    req.voice = "/etc/passwd";
    TH_CHECK(build(&th_kind_cosyvoice, &t, &req, &h, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    th_upstream_http_free(&h);
    /* a client's JSON voice that is not one of the provider's mappings: refused too */
    req.voice = "{\"prompt_wav\":\"/etc/passwd\",\"prompt_text\":\"x\"}";
    TH_CHECK(build(&th_kind_cosyvoice, &t, &req, &h, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    th_upstream_http_free(&h);

    /* a missing prompt file: a clear client error */
    unlink(path);
    req.voice = ref;
    TH_CHECK(build(&th_kind_cosyvoice, &t, &req, &h, &err) == -1);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(err.message, strrchr(path, '/') + 1) != NULL &&
             strstr(err.message, "does not exist") != NULL);
    TH_CHECK(strstr(err.message, "/tmp/") == NULL); /* no server path in a message the client sees */
    th_upstream_http_free(&h);
}

TH_TEST(cosyvoice_errors)
{
    tconf t;
    tconf_init(&t, "cosyvoice", "http://h:50000");
    th_perr e = map_err(&th_kind_cosyvoice, &t, 422, "application/json",
                        "{\"detail\":[{\"type\":\"missing\",\"loc\":[\"body\",\"tts_text\"],\"msg\":\"Field "
                        "required\",\"input\":null}]}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "tts_text") != NULL);
    e = map_err(&th_kind_cosyvoice, &t, 500, "text/plain; charset=utf-8", "Internal Server Error");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    e = map_err(&th_kind_cosyvoice, &t, 404, "application/json", "{\"detail\":\"Not Found\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    e = map_err(&th_kind_cosyvoice, &t, 429, "application/json", "{\"detail\":\"Too Many Requests\"}");
    TH_CHECK_INT(e.kind, TH_PERR_OVERLOADED);
}

/* ---- nodes ---------------------------------------------------------------------------------- */

TH_TEST(nodes_request)
{
    tconf t;
    tconf_init(&t, "nodes", "http://n:9000");
    th_synth_req req = mkreq("Hello node", "en-us");
    req.want_fmt = TH_FMT_MP3;
    req.speed = 1.5;
    req.language = "en";
    th_upstream_http h;
    th_perr err;
    TH_REQUIRE(build(&th_kind_nodes, &t, &req, &h, &err) == 0);
    TH_CHECK_STR(h.method, "POST");
    TH_CHECK_STR(url_of(&h), "http://n:9000/synthesize");
    TH_CHECK(has_header(&h, "Content-Type: application/json"));
    json_t *b = body_json(&h);
    TH_CHECK_INT(json_object_size(b), 5);
    TH_CHECK_STR(jstr(b, "text"), "Hello node");
    TH_CHECK_STR(jstr(b, "voice"), "en-us");
    TH_CHECK_STR(jstr(b, "format"), "mp3");
    TH_CHECK(jnum(b, "speed") > 1.499 && jnum(b, "speed") < 1.501);
    TH_CHECK_STR(jstr(b, "language"), "en");
    json_decref(b);
    th_upstream_http_free(&h);

    th_audio_spec spec;
    th_kind_nodes.body_spec(&t.pc, &req, "audio/mpeg", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_NONE); /* sniffed */
    req.want_fmt = TH_FMT_PCM;
    th_kind_nodes.body_spec(&t.pc, &req, "audio/pcm", &spec);
    TH_CHECK_INT(spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(spec.sample_rate, 24000);
    TH_CHECK_INT(spec.channels, 1);

    /* a mapping voice goes as reference */
    const char *ref = "{\"voice\":\"alice\",\"path\":\"/refs/alice.wav\",\"text\":\"hi\"}";
    tconf_voice(&t, "alice", ref, true);
    req.voice = ref;
    req.language = NULL;
    req.want_fmt = TH_FMT_NONE;
    TH_REQUIRE(build(&th_kind_nodes, &t, &req, &h, &err) == 0);
    b = body_json(&h);
    TH_CHECK_STR(jstr(b, "voice"), "alice");
    TH_CHECK_STR(jstr(json_object_get(b, "reference"), "path"), "/refs/alice.wav");
    TH_CHECK_STR(jstr(b, "format"), "wav");
    TH_CHECK(json_object_get(b, "language") == NULL);
    json_decref(b);
    th_upstream_http_free(&h);

    th_upstream_http_init(&h);
    h.base_url = t.pc.base_url;
    TH_REQUIRE(th_kind_nodes.probe(&t.pc, &h) == 0);
    TH_CHECK_STR(h.method, "GET");
    TH_CHECK_STR(url_of(&h), "http://n:9000/health");
    th_upstream_http_free(&h);
}

TH_TEST(nodes_errors)
{
    tconf t;
    tconf_init(&t, "nodes", "http://n:9000");
    th_perr e = map_err(&th_kind_nodes, &t, 400, "application/json",
                        "{\"success\":false,\"message\":\"text is required\",\"code\":\"invalid_request\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "text is required") != NULL);
    e = map_err(&th_kind_nodes, &t, 404, "application/json",
                "{\"success\":false,\"message\":\"unknown voice: x\",\"code\":\"voice_not_found\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    e = map_err(&th_kind_nodes, &t, 409, "application/json",
                "{\"success\":false,\"message\":\"m\",\"code\":\"c\"}");
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    e = map_err(&th_kind_nodes, &t, 503, "application/json",
                "{\"success\":false,\"message\":\"node is standby\",\"code\":\"unavailable\"}");
    TH_CHECK_INT(e.kind, TH_PERR_OVERLOADED);
    e = map_err(&th_kind_nodes, &t, 429, "application/json",
                "{\"success\":false,\"message\":\"node is busy\",\"code\":\"rate_limited\"}");
    TH_CHECK_INT(e.kind, TH_PERR_OVERLOADED);
    e = map_err(&th_kind_nodes, &t, 500, "application/json",
                "{\"success\":false,\"message\":\"engine failed\",\"code\":\"engine_error\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    e = map_err(&th_kind_nodes, &t, 500, "text/html", "<!doctype html><title>500</title>");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    e = map_err(&th_kind_nodes, &t, 401, "application/json", "{\"success\":false,\"message\":\"no\"}");
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
}

TH_TEST(kinds_caps)
{
    const th_upstream_kind *ks[] = {&th_kind_gpt_sovits, &th_kind_xtts, &th_kind_openvoice,
                                    &th_kind_cosyvoice, &th_kind_nodes};
    const char *names[] = {"gpt_sovits", "xtts", "openvoice", "cosyvoice", "nodes"};
    const size_t maxc[] = {1000, 2000, 1000, 1000, 5000};
    for (size_t i = 0; i < 5; i++) {
        TH_CHECK_STR(ks[i]->kind, names[i]);
        TH_CHECK(ks[i]->caps.formats != 0);
        TH_CHECK_INT(ks[i]->caps.max_input_chars, maxc[i]);
        TH_CHECK(ks[i]->build && ks[i]->body_spec && ks[i]->error && ks[i]->probe);
        if (ks[i]->caps.native_speed)
            TH_CHECK(ks[i]->caps.speed_min > 0 && ks[i]->caps.speed_min < 1 && ks[i]->caps.speed_max > 1);
    }
    TH_CHECK(th_kind_gpt_sovits.caps.needs_reference);
    TH_CHECK(th_kind_gpt_sovits.caps.native_speed);
    TH_CHECK(!th_kind_xtts.caps.native_speed);
    TH_CHECK(th_kind_openvoice.caps.native_speed);
    TH_CHECK(!th_kind_cosyvoice.caps.native_speed);
    TH_CHECK_INT(th_kind_cosyvoice.caps.formats, 1u << TH_FMT_PCM);
    TH_CHECK(th_kind_cosyvoice.caps.streaming);
}

/* ---- end to end: th_upstream_ops against the fakes --------------------------------------------- */

#define E2E_WAIT_MS 20000
#define MS_PER_CHAR 60 /* the fakes' default */

typedef struct col {
    int formats, dones, errors;
    th_audio_spec spec;
    th_buf audio;
    th_perr err;
} col;

static void c_format(void *ud, const th_audio_spec *spec)
{
    col *c = ud;
    c->formats++;
    c->spec = *spec;
}

static int c_chunk(void *ud, const uint8_t *data, size_t len)
{
    col *c = ud;
    if (th_buf_append(&c->audio, data, len) != TH_BUF_OK) abort();
    return 0;
}

static void c_done(void *ud)
{
    ((col *)ud)->dones++;
}

static void c_error(void *ud, const th_perr *e)
{
    col *c = ud;
    c->errors++;
    c->err = *e;
}

static void tick_cb(uv_timer_t *t)
{
    (void)t;
}

typedef struct probe_res {
    int done;
    bool healthy;
} probe_res;

static void probe_cb(void *ud, bool healthy, const char *detail)
{
    probe_res *r = ud;
    (void)detail;
    r->done++;
    r->healthy = healthy;
}

/* Runs the loop until *flag is set or E2E_WAIT_MS pass. */
static bool run_until(uv_loop_t *loop, const int *a, const int *b)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick_cb, 10, 10);
    uint64_t end = th_mono_ms() + E2E_WAIT_MS;
    bool ok = false;
    while (th_mono_ms() < end) {
        if (*a || (b != NULL && *b)) {
            ok = true;
            break;
        }
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

/* One synthesis through a fresh provider of t's kind; c is filled. 0 when the job ended at all. */
static int synth(const tconf *t, const th_synth_req *req, col *c)
{
    memset(c, 0, sizeof *c);
    th_buf_init(&c->audio, 64u * 1024 * 1024);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return -1;
    char err[256] = "";
    int rc = -1;
    th_provider *p = th_upstream_ops.create(&loop, &t->pc, NULL, err, sizeof err);
    if (p == NULL) {
        fprintf(stderr, "create: %s\n", err);
        goto out;
    }
    th_sink sink = {c_format, c_chunk, c_done, c_error, c};
    th_job *j = th_upstream_ops.start(p, req, &sink);
    if (j != NULL && run_until(&loop, &c->dones, &c->errors)) rc = 0;
    if (rc != 0 && j != NULL) th_upstream_ops.cancel(j);
    th_upstream_ops.destroy(p);
out:
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0) rc = -1;
    if (c->errors) fprintf(stderr, "  (%s: %s)\n", th_perr_kind_name(c->err.kind), c->err.message);
    return rc;
}

/* The health probe of t's kind against its server: 1 healthy, 0 not, -1 no answer. */
static int probe(const tconf *t)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return -1;
    char err[256] = "";
    int rc = -1;
    probe_res r = {0, false};
    th_provider *p = th_upstream_ops.create(&loop, &t->pc, NULL, err, sizeof err);
    if (p == NULL) goto out;
    if (th_upstream_probe(p, probe_cb, &r) == 0 && run_until(&loop, &r.done, NULL)) rc = r.healthy ? 1 : 0;
    th_upstream_ops.destroy(p);
out:
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
}

/* Decodes what c got to s16 mono 24 kHz; returns the duration in ms, or -1. */
static double decoded_ms(col *c)
{
    if (c->dones != 1 || c->errors || c->formats != 1 || c->audio.len == 0) return -1;
    th_audio_target tg = {TH_FMT_PCM, 24000, 1.0, 0, TH_WAV_SIZE_UNKNOWN, 0};
    th_buf out;
    th_buf_init(&out, 0);
    char err[256] = "";
    double ms = -1;
    if (th_audio_convert(&c->spec, c->audio.data, c->audio.len, &tg, &out, err, sizeof err) == 0)
        ms = (double)out.len / 2.0 / 24.0;
    else
        fprintf(stderr, "  decode: %s\n", err);
    th_buf_free(&out);
    return ms;
}

/* Is the decoded audio as long as the fakes make it (60 ms per character, divided by speed)? */
static bool duration_ok(col *c, const char *text, double speed)
{
    int64_t chars = th_utf8_count(text, strlen(text));
    double want = (double)chars * MS_PER_CHAR / speed, got = decoded_ms(c);
    bool ok = got > 0 && got > want * 0.95 - 30 && got < want * 1.05 + 30;
    if (!ok) fprintf(stderr, "  duration %.1f ms, want %.1f ms\n", got, want);
    return ok;
}

static void col_free(col *c)
{
    th_buf_free(&c->audio);
}

/* Synthesises and checks that it failed with kind. */
static bool fails_with(const tconf *t, const th_synth_req *req, th_perr_kind kind)
{
    col c;
    bool ok = synth(t, req, &c) == 0 && c.errors == 1 && c.dones == 0 && c.err.kind == kind;
    if (!ok)
        fprintf(stderr, "  want %s, got dones=%d errors=%d kind=%s\n", th_perr_kind_name(kind), c.dones,
                c.errors, th_perr_kind_name(c.err.kind));
    col_free(&c);
    return ok;
}

#define FAULT(f, json) TH_CHECK(fake_ctl(f, json) == 0)

TH_TEST(e2e_gpt_sovits_v2)
{
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "gpt_sovits", "") == 0);
    tconf t;
    tconf_init(&t, "gpt_sovits", f.url);
    tconf_opt(&t, "text_lang", "en");
    const char *ref =
        "{\"ref_audio_path\":\"ref/alice.wav\",\"prompt_text\":\"hello\",\"prompt_lang\":\"en\"}";
    tconf_voice(&t, "alice", ref, true);
    const char *text = "Hello from the streaming fake.";
    th_synth_req req = mkreq(text, ref);
    col c;

    /* streaming_mode 1 (default): a 44-byte WAV header with data size 0, then PCM */
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_WAV);
    TH_CHECK(c.audio.len > 44 && memcmp(c.audio.data, "RIFF", 4) == 0);
    TH_CHECK(c.audio.len > 44 && c.audio.data[40] == 0 && c.audio.data[41] == 0); /* data size 0 */
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);

    /* native speed: speed_factor */
    req.speed = 1.5;
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 1.5));
    col_free(&c);
    req.speed = 1.0;

    /* raw: headerless int16 at 32 kHz, whole (streaming_mode 0) */
    tconf_opt(&t, "media_type", "raw");
    tconf_opt(&t, "streaming_mode", "0");
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(c.spec.sample_rate, 32000);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    t.pc.n_opts = 1;

    /* a configured plain voice: ref_audio_path, prompt_lang = text_lang */
    tconf_voice(&t, "bob", "ref/bob.wav", false);
    req.voice = "ref/bob.wav";
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    /* a client's path: refused before the engine sees it */
    req.voice = "/etc/passwd";
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    req.voice = ref;

    /* errors: validation 400 {"message"} -> CLIENT */
    t.opts[0].value = "xx";
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    t.opts[0].value = "en";
    /* 400 {"message":"tts failed","Exception"} -> STATUS */
    FAULT(&f, "{\"fault\":\"status_4xx\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    /* uvicorn's plain-text 500 and the JSON 500 -> STATUS */
    FAULT(&f, "{\"fault\":\"status_500\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    FAULT(&f, "{\"fault\":\"status_500\",\"shape\":\"json\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    FAULT(&f, "{\"fault\":\"status_429\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_OVERLOADED));
    /* and it works again */
    TH_CHECK(synth(&t, &req, &c) == 0 && c.dones == 1);
    col_free(&c);

    TH_CHECK_INT(probe(&t), 1);
    fake_stop(&f);
}

TH_TEST(e2e_gpt_sovits_v1)
{
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "gpt_sovits_v1", "") == 0);
    tconf t;
    tconf_init(&t, "gpt_sovits", f.url);
    tconf_opt(&t, "api", "v1");
    tconf_opt(&t, "text_lang", "en");
    const char *ref = "{\"ref_audio_path\":\"ref/v1.wav\",\"prompt_text\":\"hi\",\"prompt_lang\":\"en\"}";
    tconf_voice(&t, "v1", ref, true);
    const char *text = "Version one answers one WAV.";
    th_synth_req req = mkreq(text, ref);
    col c;
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_WAV);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    /* {"code":400,"message":..} -> CLIENT */
    t.opts[1].value = "klingon";
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    t.opts[1].value = "en";
    FAULT(&f, "{\"fault\":\"status_500\",\"shape\":\"json\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    fake_stop(&f);
}

TH_TEST(e2e_xtts)
{
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "xtts", "") == 0);
    tconf t;
    tconf_init(&t, "xtts", f.url);
    const char *text = "Float samples from torchaudio.";
    th_synth_req req = mkreq(text, "female");
    col c;

    /* /tts_to_audio/: a 32-bit float WAV */
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_WAV);
    TH_CHECK(c.audio.len > 44 && c.audio.data[20] == 3 && c.audio.data[21] == 0); /* WAVE_FORMAT_IEEE_FLOAT */
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);

    /* /tts_stream: header with size 0, then int16 */
    tconf_opt(&t, "stream", "true");
    req.voice = "calm_female.wav";
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_WAV);
    TH_CHECK(c.audio.len > 44 && c.audio.data[40] == 0 && c.audio.data[41] == 0);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    t.pc.n_opts = 0;
    req.voice = "female";

    /* 400 bad language -> CLIENT (also on the stream route) */
    req.language = "tlh";
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    tconf_opt(&t, "stream", "true");
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    t.pc.n_opts = 0;
    req.language = NULL;
    /* unknown speaker (a 500 from the server) -> CLIENT */
    req.voice = "nobody";
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    req.voice = "female";
    /* 500 {"detail":"Error: .."} -> STATUS */
    FAULT(&f, "{\"fault\":\"status_500\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));

    TH_CHECK_INT(probe(&t), 1);
    fake_stop(&f);
}

TH_TEST(e2e_openvoice)
{
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "openvoice", "") == 0);
    tconf t;
    tconf_init(&t, "openvoice", f.url);
    const char *text = "Tone colour converter, twenty two kilohertz.";
    th_synth_req req = mkreq(text, "demo_speaker1");
    col c;
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_WAV);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    req.speed = 0.75;
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 0.75));
    col_free(&c);
    req.speed = 1.0;

    /* 400 {"detail"}: unknown voice, bad accent -> CLIENT */
    req.voice = "nobody";
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    req.voice = "demo_speaker1";
    tconf_opt(&t, "accent", "xx-nowhere");
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    t.pc.n_opts = 0;
    FAULT(&f, "{\"fault\":\"status_500\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    /* a real WAV under a wrong Content-Type is still audio (sniffed) */
    FAULT(&f, "{\"fault\":\"wrong_content_type\",\"content_type\":\"application/json\",\"count\":1}");
    TH_CHECK(synth(&t, &req, &c) == 0 && c.dones == 1);
    col_free(&c);

    TH_CHECK(probe(&t) == 1); /* /docs (the fake has none: 404 still says the server is up) */
    fake_stop(&f);
}

TH_TEST(e2e_cosyvoice)
{
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "cosyvoice", "") == 0);
    tconf t;
    tconf_init(&t, "cosyvoice", f.url);
    const char *text = "你好，我是通义生成式语音大模型。";
    th_synth_req req = mkreq(text, "中文女");
    col c;

    /* sft: headerless s16le at 22050 with no Content-Type */
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(c.spec.sample_rate, 22050);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);

    /* instruct */
    tconf_opt(&t, "mode", "instruct");
    req.prompt = "用开心的语气说";
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);

    /* zero_shot and cross_lingual: the prompt wav's bytes as a multipart file (a WAV the engine's load_wav
     * reads: 1 s at 16 kHz) */
    uint8_t wav[TH_WAV_HEADER_LEN + 32000];
    th_wav_header(wav, 16000, 1, 16, 32000);
    for (size_t i = TH_WAV_HEADER_LEN; i < sizeof wav; i++)
        wav[i] = (uint8_t)(i * 7);
    char path[128], ref[512];
    TH_REQUIRE(write_tmp(path, sizeof path, wav, sizeof wav) == 0);
    snprintf(ref, sizeof ref, "{\"prompt_wav\":\"%s\",\"prompt_text\":\"希望你以后能够做的比我还好呦。\"}",
             path);
    tconf_voice(&t, "clone", ref, true);
    req.voice = ref;
    t.opts[0].value = "zero_shot";
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    t.opts[0].value = "cross_lingual";
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    /* a prompt file that is not audio: the engine's load_wav fails, a plain 500 */
    TH_REQUIRE(write_tmp(path, sizeof path, (const uint8_t *)"not a wav file at all", 21) == 0);
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    /* the prompt file is gone: CLIENT before anything is sent */
    unlink(path);
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    t.opts[0].value = "sft";
    req.voice = "中文女";

    /* 422 -> CLIENT; plain-text 500 -> STATUS; an unknown spk_id: a 200 stream that ends early */
    FAULT(&f, "{\"fault\":\"status_4xx\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    FAULT(&f, "{\"fault\":\"status_500\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    req.voice = "nobody";
    TH_CHECK(synth(&t, &req, &c) == 0 && c.errors == 1 && c.dones == 0);
    col_free(&c);

    /* another model rate, from the provider's sample_rate */
    fake_stop(&f);
    TH_REQUIRE(fake_start(&f, "cosyvoice", "--sample-rate 24000") == 0);
    tconf_init(&t, "cosyvoice", f.url);
    t.pc.sample_rate = 24000;
    req.voice = "英文女";
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK_INT(c.spec.sample_rate, 24000);
    TH_CHECK(duration_ok(&c, text, 1.0));
    col_free(&c);
    fake_stop(&f);
}

TH_TEST(e2e_nodes)
{
    fake_proc f;
    TH_REQUIRE(fake_start(&f, "node", "--option engine=xtts") == 0);
    tconf t;
    tconf_init(&t, "nodes", f.url);
    const char *text = "A worker node answers in the asked format.";
    th_synth_req req = mkreq(text, "default");
    col c;
    const th_fmt fmts[] = {TH_FMT_WAV, TH_FMT_MP3, TH_FMT_PCM, TH_FMT_FLAC};
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        req.want_fmt = fmts[i];
        TH_CHECK(synth(&t, &req, &c) == 0);
        TH_CHECK_INT(c.spec.fmt, fmts[i]);
        TH_CHECK(duration_ok(&c, text, 1.0));
        col_free(&c);
    }
    req.want_fmt = TH_FMT_WAV;
    req.speed = 2.0;
    TH_CHECK(synth(&t, &req, &c) == 0);
    TH_CHECK(duration_ok(&c, text, 2.0));
    col_free(&c);
    req.speed = 1.0;

    /* {"success":false,..}: 4xx -> CLIENT, 503 -> OVERLOADED, 500 -> STATUS */
    FAULT(&f, "{\"fault\":\"status_4xx\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_CLIENT));
    FAULT(&f, "{\"fault\":\"status_500\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    FAULT(&f, "{\"fault\":\"status_500\",\"shape\":\"html\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_STATUS));
    FAULT(&f, "{\"fault\":\"status_500\",\"status\":503,\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_OVERLOADED));
    FAULT(&f, "{\"fault\":\"status_429\",\"count\":1}");
    TH_CHECK(fails_with(&t, &req, TH_PERR_OVERLOADED));
    /* a node in standby answers 503 */
    TH_CHECK(fake_ctl_path(&f, "/command", "{\"command\":\"standby\"}") == 0);
    TH_CHECK(fails_with(&t, &req, TH_PERR_OVERLOADED));
    TH_CHECK(fake_ctl_path(&f, "/command", "{\"command\":\"activate\"}") == 0);
    TH_CHECK(synth(&t, &req, &c) == 0 && c.dones == 1);
    col_free(&c);

    TH_CHECK_INT(probe(&t), 1);
    fake_stop(&f);
    TH_CHECK_INT(probe(&t), 0); /* nobody listens any more */
}

TH_TEST_MAIN()
