/* Unit tests of the generic upstream provider and of five kinds (openai_fm, openai, elevenlabs, azure,
 * fish). Each kind runs through the real provider on a real uv loop against the real Python fake of its
 * engine (tests/e2e/fakes, started by fake_proc.h; CTest runs from the repo root).
 *
 * Fault matrix (one function, run for every kind): status_500 -> STATUS, status_429 -> OVERLOADED with
 * retry_after_s, status_4xx -> the kind's mapping, slow_first_byte past the timeout -> TIMEOUT,
 * reset_before -> CONNECT (the engine dropped the connection before any response byte: see
 * upstream.c), reset_after -> PROTOCOL after bytes were delivered, garbage -> PROTOCOL,
 * wrong_content_type -> decoded as usual (sniffing), truncated -> PROTOCOL after bytes, refuse ->
 * CONNECT. Faults are armed without a count and cleared after each case, so that curl's own retry of a
 * request on a reused connection meets the same fault. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "audio/conv.h"
#include "core/clock.h"
#include "core/str.h"
#include "fake_proc.h"
#include "loop_until.h"
#include "providers/upstream.h"
#include "th_test.h"

#define WAIT_MS 20000
#define TEXT "Hello world, this is a test." /* 28 code points: 1.68 s at the fakes' 60 ms per char */

/* ---- a sink that records everything ---- */

typedef struct col {
    th_provider *p;
    th_job *job;
    int formats, chunks, dones, errors;
    th_audio_spec spec;
    uint8_t *data;
    size_t len, cap;
    th_perr err;
    int pause_at_chunk;  /* return 1 from this chunk (1-based), 0 = never */
    int cancel_at_chunk; /* cancel from inside this chunk, 0 = never */
    bool cancelled;
    int after_cancel;
    bool bad_order;
} col;

static void c_format(void *ud, const th_audio_spec *spec)
{
    col *c = ud;
    if (c->cancelled) c->after_cancel++;
    if (c->dones || c->errors || c->formats) c->bad_order = true;
    c->formats++;
    c->spec = *spec;
}

static int c_chunk(void *ud, const uint8_t *data, size_t len)
{
    col *c = ud;
    if (c->cancelled) c->after_cancel++;
    if (!c->formats || c->dones || c->errors || len == 0) c->bad_order = true;
    c->chunks++;
    if (c->len + len > c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 65536;
        while (ncap < c->len + len)
            ncap *= 2;
        uint8_t *n = realloc(c->data, ncap);
        if (n == NULL) abort();
        c->data = n;
        c->cap = ncap;
    }
    memcpy(c->data + c->len, data, len);
    c->len += len;
    if (c->cancel_at_chunk && c->chunks == c->cancel_at_chunk) {
        th_provider_cancel(c->p, c->job);
        c->cancelled = true;
        return 0;
    }
    return c->pause_at_chunk && c->chunks == c->pause_at_chunk ? 1 : 0;
}

static void c_done(void *ud)
{
    col *c = ud;
    if (c->cancelled) c->after_cancel++;
    if (c->dones || c->errors || !c->formats) c->bad_order = true;
    c->dones++;
}

static void c_error(void *ud, const th_perr *e)
{
    col *c = ud;
    if (c->cancelled) c->after_cancel++;
    if (c->dones || c->errors) c->bad_order = true;
    c->errors++;
    c->err = *e;
}

static void col_reset(col *c, th_provider *p)
{
    free(c->data);
    memset(c, 0, sizeof *c);
    c->p = p;
}

/* ---- the loop ---- */

static bool col_ended(void *arg)
{
    col *c = arg;
    return c->dones || c->errors;
}

static bool col_has_chunk(void *arg)
{
    col *c = arg;
    return c->chunks > 0 || c->dones || c->errors;
}

/* ---- one fake + one provider ---- */

typedef struct env {
    uv_loop_t loop;
    fake_proc fake;
    th_provider_conf pc;
    th_kv opts[4];
    char type[32], name[48], keyenv[48], base[96];
    th_provider *p;
} env;

static th_provider *env_provider(env *e)
{
    if (e->p) e->p->ops->destroy(e->p);
    char err[256] = "";
    e->p = th_upstream_ops.create(&e->loop, &e->pc, NULL, err, sizeof err);
    if (e->p == NULL) fprintf(stderr, "create: %s\n", err);
    return e->p;
}

/* kind: the provider type; fake_kind/fake_args: the fake; keyenv/key: the key variable (key NULL: none). */
static int env_open(env *e, const char *kind, const char *fake_kind, const char *fake_args,
                    const char *keyenv, const char *key)
{
    memset(e, 0, sizeof *e);
    if (uv_loop_init(&e->loop) != 0) return -1;
    if (fake_start(&e->fake, fake_kind, fake_args) != 0) {
        fprintf(stderr, "cannot start the %s fake\n", fake_kind);
        uv_loop_close(&e->loop);
        return -1;
    }
    th_strlcpy(e->type, kind, sizeof e->type);
    snprintf(e->name, sizeof e->name, "test-%s", kind);
    th_strlcpy(e->base, e->fake.url, sizeof e->base);
    e->pc.name = e->name;
    e->pc.type = e->type;
    e->pc.base_url = e->base;
    e->pc.timeout_ms = 10000;
    e->pc.concurrency = 4;
    e->pc.opts = e->opts;
    if (keyenv != NULL) {
        th_strlcpy(e->keyenv, keyenv, sizeof e->keyenv);
        e->pc.api_key_env = e->keyenv;
        if (key != NULL) setenv(keyenv, key, 1);
    }
    return env_provider(e) != NULL ? 0 : -1;
}

static void env_opt(env *e, const char *key, const char *value)
{
    for (size_t i = 0; i < e->pc.n_opts; i++) {
        if (strcmp(e->opts[i].key, key) == 0) {
            e->opts[i].value = (char *)value;
            return;
        }
    }
    if (e->pc.n_opts < sizeof e->opts / sizeof e->opts[0])
        e->opts[e->pc.n_opts++] = (th_kv){(char *)key, (char *)value, false};
}

/* Destroys the provider, lets the loop close every handle, and checks that none is left. */
static int env_close(env *e)
{
    if (e->p) e->p->ops->destroy(e->p);
    e->p = NULL;
    uv_run(&e->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&e->loop);
    fake_stop(&e->fake);
    return rc;
}

static void clear_fault(env *e)
{
    fake_ctl(&e->fake, "{\"fault\":null}");
}

static th_synth_req make_req(const char *text, const char *voice, th_fmt fmt)
{
    th_synth_req r;
    memset(&r, 0, sizeof r);
    r.text = text;
    r.text_len = strlen(text);
    int64_t n = th_utf8_count(text, r.text_len);
    r.chars = n > 0 ? (size_t)n : 0;
    r.voice = voice;
    r.want_fmt = fmt;
    r.speed = 1.0;
    return r;
}

static void run_job(env *e, const th_synth_req *r, col *c)
{
    col_reset(c, e->p);
    th_sink s = {c_format, c_chunk, c_done, c_error, c};
    c->job = th_provider_start(e->p, r, &s);
    if (c->job == NULL) {
        c->errors = 1;
        th_perr_set(&c->err, TH_PERR_INTERNAL, 0, "start returned NULL");
        return;
    }
    lu_run_until(&e->loop, col_ended, c, WAIT_MS);
}

/* Seconds of audio in what the sink got, decoded through th_audio_convert to 24 kHz PCM. */
static double decoded_seconds(const col *c)
{
    th_audio_target t = {.fmt = TH_FMT_PCM, .sample_rate = 24000, .tempo = 1.0};
    th_buf out;
    th_buf_init(&out, 0);
    char err[256] = "";
    double s = -1;
    if (th_audio_convert(&c->spec, c->data, c->len, &t, &out, err, sizeof err) != 0)
        fprintf(stderr, "convert (fmt %d, rate %d): %s\n", (int)c->spec.fmt, c->spec.sample_rate, err);
    else
        s = (double)out.len / 2.0 / 24000.0;
    th_buf_free(&out);
    return s;
}

static bool near(double got, double want)
{
    double tol = want * 0.05 > 0.12 ? want * 0.05 : 0.12;
    bool ok = got > want - tol && got < want + tol;
    if (!ok) fprintf(stderr, "duration %.3f s, expected %.3f s\n", got, want);
    return ok;
}

static double expect_s(const char *text, double speed)
{
    return (double)th_utf8_count(text, strlen(text)) * 0.060 / speed;
}

/* A success: one on_format with fmt (and rate for PCM), audio, on_done, and the right duration. */
static void check_ok(int *th__failed, const col *c, th_fmt fmt, int pcm_rate, double seconds)
{
    if (c->errors)
        fprintf(stderr, "unexpected error: %s: %s\n", th_perr_kind_name(c->err.kind), c->err.message);
    TH_CHECK_INT(c->errors, 0);
    TH_CHECK_INT(c->dones, 1);
    TH_CHECK_INT(c->formats, 1);
    TH_CHECK(!c->bad_order);
    TH_CHECK(c->len > 0);
    TH_CHECK_INT(c->spec.fmt, fmt);
    if (fmt == TH_FMT_PCM) {
        TH_CHECK_INT(c->spec.sample_rate, pcm_rate);
        TH_CHECK_INT(c->spec.channels, 1);
        TH_CHECK_INT(c->spec.sample, TH_SAMPLE_S16);
    }
    if (c->dones == 1) TH_CHECK(near(decoded_seconds(c), seconds));
}

static void check_err(int *th__failed, const col *c, th_perr_kind kind, const char *needle)
{
    TH_CHECK_INT(c->dones, 0);
    TH_CHECK_INT(c->errors, 1);
    TH_CHECK(!c->bad_order);
    if (c->err.kind != kind)
        fprintf(stderr, "got %s (%s), expected %s\n", th_perr_kind_name(c->err.kind), c->err.message,
                th_perr_kind_name(kind));
    TH_CHECK_INT(c->err.kind, kind);
    if (needle != NULL && strstr(c->err.message, needle) == NULL)
        fprintf(stderr, "message \"%s\" lacks \"%s\"\n", c->err.message, needle);
    if (needle != NULL) TH_CHECK(strstr(c->err.message, needle) != NULL);
}

/* ---- the fault matrix, the same for every kind ---- */

static void fault_matrix(int *th__failed, env *e, const th_synth_req *r, th_fmt fmt, int pcm_rate,
                         th_perr_kind k4xx)
{
    col c = {0};

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"status_500\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "500");
    TH_CHECK_INT(c.err.status, 500);
    TH_CHECK_INT(c.len, 0);

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"status_429\",\"retry_after\":7}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_OVERLOADED, "429");
    TH_CHECK_INT(c.err.status, 429);
    TH_CHECK_INT(c.err.retry_after_s, 7);

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"status_4xx\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, k4xx, NULL);
    TH_CHECK(c.err.status >= 400 && c.err.status < 500);

    /* Past the timeout: the provider's timeout is the first-byte limit. */
    e->pc.timeout_ms = 400;
    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"slow_first_byte\",\"seconds\":1.5}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_TIMEOUT, "400 ms");
    e->pc.timeout_ms = 10000;

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"reset_before\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_CONNECT, "before any response");
    TH_CHECK_INT(c.formats, 0);

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"reset_after\",\"bytes\":4000}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, "after 4000 bytes");
    TH_CHECK_INT(c.formats, 1);
    TH_CHECK_INT(c.len, 4000); /* the bytes were delivered before the error */

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"garbage\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, NULL);
    TH_CHECK_INT(c.len, 0);

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"wrong_content_type\"}") == 0);
    run_job(e, r, &c);
    check_ok(th__failed, &c, fmt, pcm_rate, expect_s(r->text, r->speed));

    TH_REQUIRE(fake_ctl(&e->fake,
                        "{\"fault\":\"wrong_content_type\",\"content_type\":\"application/octet-stream\"}") ==
               0);
    run_job(e, r, &c);
    check_ok(th__failed, &c, fmt, pcm_rate, expect_s(r->text, r->speed));

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"truncated\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, "after");
    TH_CHECK(c.len > 0);

    /* A 200 with a JSON error, an HTML page, or nothing at all: never audio. */
    TH_REQUIRE(fake_ctl(&e->fake,
                        "{\"fault\":\"garbage\",\"data\":\"HTTP/1.1 200 OK\\r\\nContent-Type: "
                        "application/json\\r\\nContent-Length: 30\\r\\n\\r\\n{\\\"error\\\":{\\\"message\\\":"
                        "\\\"nope\\\"}}  \"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, "instead of audio");
    TH_CHECK_INT(c.formats, 0);
    TH_CHECK(strstr(c.err.message, "nope") != NULL);

    TH_REQUIRE(fake_ctl(&e->fake,
                        "{\"fault\":\"garbage\",\"data\":\"HTTP/1.1 200 OK\\r\\nContent-Type: "
                        "audio/mpeg\\r\\nContent-Length: 37\\r\\n\\r\\n<html><body>Busy, sorry</body></html>"
                        "\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, "Busy");

    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"garbage\",\"data\":\"HTTP/1.1 200 OK\\r\\nContent-Type: "
                                  "audio/mpeg\\r\\nContent-Length: 0\\r\\n\\r\\n\"}") == 0);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, "empty audio");
    clear_fault(e);

    /* Refused: a new provider, so no kept-alive connection hides the closed listener. */
    TH_REQUIRE(fake_ctl(&e->fake, "{\"fault\":\"refuse\",\"seconds\":0.6}") == 0);
    lu_run_until(&e->loop, NULL, NULL, 150);
    TH_REQUIRE(env_provider(e) != NULL);
    run_job(e, r, &c);
    check_err(th__failed, &c, TH_PERR_CONNECT, "cannot connect");
    for (int i = 0; i < 40 && fake_ctl(&e->fake, "{\"fault\":null}") != 0; i++)
        lu_run_until(&e->loop, NULL, NULL, 50);

    /* And the engine works again. */
    run_job(e, r, &c);
    check_ok(th__failed, &c, fmt, pcm_rate, expect_s(r->text, r->speed));
    col_reset(&c, NULL);
}

/* ---- pause/resume and cancel (kind independent; run on the openai kind) ---- */

static void flow_tests(int *th__failed, env *e, const th_synth_req *r)
{
    col c = {0};
    /* Pause at the first chunk: nothing more comes until resume. */
    col_reset(&c, e->p);
    c.pause_at_chunk = 1;
    th_sink s = {c_format, c_chunk, c_done, c_error, &c};
    c.job = th_provider_start(e->p, r, &s);
    TH_REQUIRE(c.job != NULL);
    TH_CHECK(lu_run_until(&e->loop, col_has_chunk, &c, WAIT_MS));
    lu_run_until(&e->loop, NULL, NULL, 400);
    TH_CHECK_INT(c.chunks, 1);
    TH_CHECK_INT(c.dones + c.errors, 0);
    th_provider_resume(e->p, c.job);
    TH_CHECK(lu_run_until(&e->loop, col_ended, &c, WAIT_MS));
    TH_CHECK(c.chunks > 1);
    check_ok(th__failed, &c, r->want_fmt, 24000, expect_s(r->text, r->speed));

    /* Cancel from inside the second chunk: no callback after. */
    col_reset(&c, e->p);
    c.cancel_at_chunk = 2;
    c.job = th_provider_start(e->p, r, &s);
    TH_REQUIRE(c.job != NULL);
    lu_run_until(&e->loop, NULL, NULL, 1500);
    TH_CHECK(c.cancelled);
    TH_CHECK_INT(c.chunks, 2);
    TH_CHECK_INT(c.after_cancel, 0);
    TH_CHECK_INT(c.dones + c.errors, 0);

    /* Cancel from outside, mid-stream (paused at chunk 1). */
    col_reset(&c, e->p);
    c.pause_at_chunk = 1;
    c.job = th_provider_start(e->p, r, &s);
    TH_REQUIRE(c.job != NULL);
    TH_CHECK(lu_run_until(&e->loop, col_has_chunk, &c, WAIT_MS));
    th_provider_cancel(e->p, c.job);
    c.cancelled = true;
    lu_run_until(&e->loop, NULL, NULL, 300);
    TH_CHECK_INT(c.after_cancel, 0);
    TH_CHECK_INT(c.dones + c.errors, 0);

    /* Cancel right after start: no callback at all. */
    col_reset(&c, e->p);
    c.job = th_provider_start(e->p, r, &s);
    TH_REQUIRE(c.job != NULL);
    th_provider_cancel(e->p, c.job);
    c.cancelled = true;
    lu_run_until(&e->loop, NULL, NULL, 300);
    TH_CHECK_INT(c.formats + c.chunks + c.dones + c.errors, 0);

    /* Cancel a job whose start failed (its error waits for the loop): no callback either. */
    th_synth_req bad = *r;
    bad.voice = "";
    col_reset(&c, e->p);
    c.job = th_provider_start(e->p, &bad, &s);
    TH_REQUIRE(c.job != NULL);
    th_provider_cancel(e->p, c.job);
    c.cancelled = true;
    lu_run_until(&e->loop, NULL, NULL, 100);
    TH_CHECK_INT(c.formats + c.chunks + c.dones + c.errors, 0);

    /* Several at once on one provider. */
    col cs[6];
    memset(cs, 0, sizeof cs);
    for (int i = 0; i < 6; i++) {
        col_reset(&cs[i], e->p);
        th_sink si = {c_format, c_chunk, c_done, c_error, &cs[i]};
        cs[i].job = th_provider_start(e->p, r, &si);
        TH_REQUIRE(cs[i].job != NULL);
    }
    for (int i = 0; i < 6; i++) {
        lu_run_until(&e->loop, col_ended, &cs[i], WAIT_MS);
        check_ok(th__failed, &cs[i], r->want_fmt, 24000, expect_s(r->text, r->speed));
        col_reset(&cs[i], NULL);
    }
    col_reset(&c, NULL);
}

/* ---- kinds ---- */

TH_TEST(test_openai)
{
    env e;
    TH_REQUIRE(env_open(&e, "openai", "openai", "--api-key sk-test --chunk-bytes 4096", "TH_TEST_OPENAI_KEY",
                        "sk-test") == 0);
    TH_CHECK(e.p->caps.native_speed);
    TH_CHECK_INT(e.p->caps.max_input_chars, 4096);
    col c = {0};
    static const struct {
        th_fmt f;
    } fmts[] = {{TH_FMT_MP3}, {TH_FMT_PCM}, {TH_FMT_WAV}, {TH_FMT_OPUS}, {TH_FMT_FLAC}, {TH_FMT_AAC}};
    for (size_t i = 0; i < sizeof fmts / sizeof fmts[0]; i++) {
        th_synth_req r = make_req(TEXT, "alloy", fmts[i].f);
        run_job(&e, &r, &c);
        check_ok(th__failed, &c, fmts[i].f, 24000, expect_s(TEXT, 1.0));
    }
    /* Native speed, a custom voice object, instructions with a model that takes them. */
    th_synth_req r = make_req(TEXT, "alloy", TH_FMT_PCM);
    r.speed = 2.0;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_PCM, 24000, expect_s(TEXT, 2.0));
    r = make_req(TEXT, "voice_abc123", TH_FMT_PCM);
    env_opt(&e, "model", "gpt-4o-mini-tts");
    r.prompt = "Speak \"calmly\"";
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_PCM, 24000, expect_s(TEXT, 1.0));
    env_opt(&e, "model", "tts-1");
    /* formats narrowed to [mp3, wav]: pcm is not asked for, wav comes (sniffed and declared). */
    e.pc.formats = (1u << TH_FMT_MP3) | (1u << TH_FMT_WAV);
    r = make_req(TEXT, "alloy", TH_FMT_PCM);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 1.0));
    e.pc.formats = 0;

    /* The engine's own errors. */
    r = make_req(TEXT, "nobody", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "invalid_value");
    TH_CHECK_INT(c.err.status, 400);
    env_opt(&e, "model", "tts-9");
    r = make_req(TEXT, "alloy", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "model_not_found");
    env_opt(&e, "model", "tts-1");
    TH_REQUIRE(fake_ctl(&e.fake, "{\"fault\":\"status_429\",\"quota\":true}") == 0);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "insufficient_quota");
    clear_fault(&e);
    setenv("TH_TEST_OPENAI_KEY", "sk-wrong", 1);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "invalid_api_key");
    TH_CHECK_INT(c.err.status, 401);
    unsetenv("TH_TEST_OPENAI_KEY");
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "TH_TEST_OPENAI_KEY is not set");
    setenv("TH_TEST_OPENAI_KEY", "sk-test", 1);
    r = make_req("", "alloy", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "empty");

    th_synth_req rp = make_req(TEXT TEXT TEXT TEXT, "alloy", TH_FMT_PCM);
    flow_tests(th__failed, &e, &rp);

    r = make_req(TEXT, "alloy", TH_FMT_PCM);
    fault_matrix(th__failed, &e, &r, TH_FMT_PCM, 24000, TH_PERR_CLIENT);
    r = make_req(TEXT, "alloy", TH_FMT_MP3);
    fault_matrix(th__failed, &e, &r, TH_FMT_MP3, 0, TH_PERR_CLIENT);
    col_reset(&c, NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

TH_TEST(test_openai_fm)
{
    env e;
    TH_REQUIRE(env_open(&e, "openai_fm", "openai_fm", "--api-key fm-key", "TH_TEST_FM_KEY", "fm-key") == 0);
    TH_CHECK(!e.p->caps.native_speed);
    TH_CHECK_INT(e.p->caps.formats, (1u << TH_FMT_MP3) | (1u << TH_FMT_WAV));
    col c = {0};
    th_synth_req r = make_req(TEXT, "alloy", TH_FMT_MP3);
    r.generation = "0d6c6c0e-1a2b-4c3d-8e9f-001122334455";
    r.prompt = "cheerful & bright";
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_MP3, 0, expect_s(TEXT, 1.0));
    r = make_req(TEXT, "Nova", TH_FMT_WAV);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 1.0));
    /* Not a format of the upstream: wav, for the hub to transcode. */
    r = make_req("Grüße, 世界!", "alloy", TH_FMT_OPUS);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s("Grüße, 世界!", 1.0));

    r = make_req(TEXT, "nobody", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "Invalid voice");
    TH_REQUIRE(fake_ctl(&e.fake, "{\"fault\":\"status_500\",\"shape\":\"html\"}") == 0);
    r = make_req(TEXT, "alloy", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "Internal Server Error");
    clear_fault(&e);
    setenv("TH_TEST_FM_KEY", "bad", 1);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "invalid_api_key");
    setenv("TH_TEST_FM_KEY", "fm-key", 1);

    fault_matrix(th__failed, &e, &r, TH_FMT_MP3, 0, TH_PERR_CLIENT);
    col_reset(&c, NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

TH_TEST(test_elevenlabs)
{
    env e;
    TH_REQUIRE(env_open(&e, "elevenlabs", "elevenlabs", "--api-key xi-test", "TH_TEST_XI_KEY", "xi-test") ==
               0);
    TH_CHECK(e.p->caps.native_speed);
    TH_CHECK(e.p->caps.speed_min == 0.7 && e.p->caps.speed_max == 1.2);
    TH_CHECK_INT(e.p->caps.max_input_chars, 5000);
    col c = {0};
    const char *voice = "21m00Tcm4TlvDq8ikWAM";
    th_synth_req r = make_req(TEXT, voice, TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_MP3, 0, expect_s(TEXT, 1.0));
    r.speed = 1.2;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_MP3, 0, expect_s(TEXT, 1.2));
    env_opt(&e, "output_format", "pcm_16000");
    r = make_req(TEXT, voice, TH_FMT_WAV);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_PCM, 16000, expect_s(TEXT, 1.0));
    env_opt(&e, "output_format", "opus_48000_64");
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_OPUS, 0, expect_s(TEXT, 1.0));
    env_opt(&e, "output_format", "ulaw_8000");
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "ulaw_8000 is not supported");
    env_opt(&e, "output_format", "mp3_44100_128");

    r = make_req(TEXT, "NoSuchVoice123", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "voice_not_found");
    TH_CHECK_INT(c.err.status, 404);
    r = make_req(TEXT, "no/such voice", TH_FMT_MP3); /* encoded into one path segment: still a 404 */
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "404");
    r = make_req(TEXT, voice, TH_FMT_MP3);
    env_opt(&e, "model_id", "eleven_nope");
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "model_not_found");
    env_opt(&e, "model_id", "eleven_multilingual_v2");
    TH_REQUIRE(fake_ctl(&e.fake, "{\"fault\":\"status_4xx\",\"status\":404}") == 0);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "voice_not_found");
    clear_fault(&e);
    setenv("TH_TEST_XI_KEY", "xi-wrong", 1);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "invalid_api_key");
    setenv("TH_TEST_XI_KEY", "xi-test", 1);

    /* status_4xx here is ElevenLabs' 401 quota_exceeded: our account, not the request -> STATUS. */
    fault_matrix(th__failed, &e, &r, TH_FMT_MP3, 0, TH_PERR_STATUS);
    col_reset(&c, NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

TH_TEST(test_azure)
{
    env e;
    TH_REQUIRE(env_open(&e, "azure", "azure", "--api-key az-test", "TH_TEST_AZ_KEY", "az-test") == 0);
    col c = {0};
    th_synth_req r = make_req(TEXT, "en-US-JennyNeural", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 1.0));
    r.speed = 1.5;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 1.5));
    r.speed = 0.5;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 0.5));
    /* SSML injection: the text is escaped, so the engine speaks it as written. */
    const char *evil = "Tom & Jerry </prosody><break time=\"5s\"/> 'x' \"y\" <";
    r = make_req(evil, "de-DE-KatjaNeural", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(evil, 1.0));
    /* raw-*: headerless PCM at the rate in the name, although Azure says audio/x-wav. */
    env_opt(&e, "output_format", "raw-16khz-16bit-mono-pcm");
    r = make_req(TEXT, "en-US-GuyNeural", TH_FMT_PCM);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_PCM, 16000, expect_s(TEXT, 1.0));
    env_opt(&e, "output_format", "audio-24khz-48kbitrate-mono-mp3");
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_MP3, 0, expect_s(TEXT, 1.0));
    env_opt(&e, "output_format", "ogg-24khz-16bit-mono-opus");
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_OPUS, 0, expect_s(TEXT, 1.0));
    env_opt(&e, "output_format", "raw-8khz-8bit-mono-mulaw");
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "not supported");
    env_opt(&e, "output_format", "riff-24khz-16bit-mono-pcm");

    /* Errors have empty bodies: by status. */
    r = make_req(TEXT, "xx-XX-NobodyNeural", TH_FMT_MP3);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "unknown voice");
    r = make_req(TEXT, "en-US-JennyNeural", TH_FMT_WAV);
    setenv("TH_TEST_AZ_KEY", "az-wrong", 1);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "401");
    setenv("TH_TEST_AZ_KEY", "az-test", 1);
    /* Without base_url the region decides the host; without either it is a config error. */
    e.pc.base_url = NULL;
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "region");
    e.pc.base_url = e.base;

    fault_matrix(th__failed, &e, &r, TH_FMT_WAV, 0, TH_PERR_CLIENT);
    col_reset(&c, NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

TH_TEST(test_fish)
{
    env e;
    TH_REQUIRE(env_open(&e, "fish", "fish", "--api-key fish-test --option references=[\\\"speaker1\\\"]",
                        "TH_TEST_FISH_KEY", "fish-test") == 0);
    col c = {0};
    th_synth_req r = make_req(TEXT, "speaker1", TH_FMT_WAV);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 1.0));
    r.want_fmt = TH_FMT_PCM;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_PCM, 44100, expect_s(TEXT, 1.0));
    r.want_fmt = TH_FMT_MP3;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_MP3, 0, expect_s(TEXT, 1.0));
    r.want_fmt = TH_FMT_OPUS;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_OPUS, 0, expect_s(TEXT, 1.0));
    /* aac is not fish's: the `format` option (pcm here) is asked for. */
    env_opt(&e, "format", "pcm");
    r.want_fmt = TH_FMT_AAC;
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_PCM, 44100, expect_s(TEXT, 1.0));
    e.pc.sample_rate = 22050; /* the fake follows --sample-rate only: the body is 44.1 kHz, declared 22.05 */
    run_job(&e, &r, &c);
    TH_CHECK_INT(c.spec.sample_rate, 22050);
    e.pc.sample_rate = 0;
    env_opt(&e, "format", "aiff");
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "aiff");
    env_opt(&e, "format", "wav");
    /* No voice: the reference_id option. */
    env_opt(&e, "reference_id", "speaker1");
    r = make_req(TEXT, NULL, TH_FMT_WAV);
    run_job(&e, &r, &c);
    check_ok(th__failed, &c, TH_FMT_WAV, 0, expect_s(TEXT, 1.0));

    r = make_req(TEXT, "stranger", TH_FMT_WAV);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_CLIENT, "Reference ID stranger not found");
    TH_CHECK_INT(c.err.status, 400);
    setenv("TH_TEST_FISH_KEY", "nope", 1);
    r = make_req(TEXT, "speaker1", TH_FMT_WAV);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_STATUS, "Invalid token");
    setenv("TH_TEST_FISH_KEY", "fish-test", 1);

    fault_matrix(th__failed, &e, &r, TH_FMT_WAV, 0, TH_PERR_CLIENT);
    col_reset(&c, NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

/* ---- sniffing: the bytes win over what was declared ---- */

/* Arms a garbage fault whose "garbage" is an HTTP 200 with ctype (NULL: none) and body (JSON-escaped). */
static int answer_with(env *e, const char *ctype, const char *body_json, size_t body_len)
{
    char json[1800];
    int n = snprintf(
        json, sizeof json,
        "{\"fault\":\"garbage\",\"data\":\"HTTP/1.1 200 OK\\r\\n%s%s%sContent-Length: %zu\\r\\n\\r\\n%s\"}",
        ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\\r\\n" : "", body_len, body_json);
    if (n < 0 || (size_t)n >= sizeof json) return -1;
    return fake_ctl(&e->fake, json);
}

TH_TEST(test_sniffing)
{
    env e;
    TH_REQUIRE(env_open(&e, "openai", "openai", "", NULL, NULL) == 0);
    col c = {0};
    /* A WAV (24 kHz, 200 samples of 'A') under audio/mpeg, for a request that asked for mp3. */
    char body[1400];
    int n =
        snprintf(body, sizeof body,
                 "RIFF\\u00b8\\u0001\\u0000\\u0000WAVEfmt \\u0010\\u0000\\u0000\\u0000\\u0001\\u0000\\u0001"
                 "\\u0000\\u00c0\\u005d\\u0000\\u0000\\u0080\\u00bb\\u0000\\u0000\\u0002\\u0000\\u0010\\u0000"
                 "data\\u0090\\u0001\\u0000\\u0000");
    TH_REQUIRE(n > 0);
    for (int i = 0; i < 400; i++)
        body[n++] = 'A';
    body[n] = '\0';
    TH_REQUIRE(answer_with(&e, "audio/mpeg", body, 444) == 0);
    th_synth_req r = make_req(TEXT, "alloy", TH_FMT_MP3);
    run_job(&e, &r, &c);
    TH_CHECK_INT(c.dones, 1);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_WAV);
    TH_CHECK_INT(c.len, 444);
    TH_CHECK(near(decoded_seconds(&c), 200.0 / 24000.0));
    /* Headerless bytes with no Content-Type for a request that asked for wav: PCM at the config's rate. */
    TH_REQUIRE(answer_with(&e, NULL, body + n - 400, 400) == 0);
    e.pc.sample_rate = 16000;
    r.want_fmt = TH_FMT_WAV;
    run_job(&e, &r, &c);
    TH_CHECK_INT(c.dones, 1);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(c.spec.sample_rate, 16000);
    TH_CHECK_INT(c.len, 400);
    /* A tiny body (under the sniffing window) still comes out, at the end. */
    TH_REQUIRE(answer_with(&e, "audio/pcm", "AAAA", 4) == 0);
    r.want_fmt = TH_FMT_PCM;
    run_job(&e, &r, &c);
    TH_CHECK_INT(c.dones, 1);
    TH_CHECK_INT(c.spec.fmt, TH_FMT_PCM);
    TH_CHECK_INT(c.spec.sample_rate, 16000); /* openai pcm: sample_rate overrides the 24 kHz default */
    TH_CHECK_INT(c.len, 4);
    /* Plain text sent as text/plain is not audio either. */
    TH_REQUIRE(answer_with(&e, "text/plain", "upstream exploded, try later", 28) == 0);
    run_job(&e, &r, &c);
    check_err(th__failed, &c, TH_PERR_PROTOCOL, "upstream exploded");
    e.pc.sample_rate = 0;
    clear_fault(&e);
    col_reset(&c, NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

/* ---- probes ---- */

typedef struct probe_res {
    int calls;
    bool healthy;
    char detail[256];
} probe_res;

static void probe_cb(void *ud, bool healthy, const char *detail)
{
    probe_res *p = ud;
    p->calls++;
    p->healthy = healthy;
    th_strlcpy(p->detail, detail, sizeof p->detail);
}

static bool probe_ended(void *arg)
{
    return ((probe_res *)arg)->calls > 0;
}

TH_TEST(test_probe)
{
    env e;
    TH_REQUIRE(env_open(&e, "fish", "fish", "--api-key fish-test", "TH_TEST_FISH_KEY", "fish-test") == 0);
    probe_res pr = {0};
    /* A synthesis fault does not touch the health route. */
    TH_REQUIRE(fake_ctl(&e.fake, "{\"fault\":\"status_500\"}") == 0);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK_INT(pr.calls, 0); /* never inside the call */
    TH_CHECK(lu_run_until(&e.loop, probe_ended, &pr, 5000));
    TH_CHECK(pr.healthy);
    TH_CHECK_STR(pr.detail, "HTTP 200");
    TH_REQUIRE(fake_ctl(&e.fake, "{\"fault\":\"status_500\",\"scope\":\"all\"}") == 0);
    memset(&pr, 0, sizeof pr);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK(lu_run_until(&e.loop, probe_ended, &pr, 5000));
    TH_CHECK(!pr.healthy);
    TH_CHECK_STR(pr.detail, "HTTP 500");
    /* Slower than the probe's 2 s limit. */
    TH_REQUIRE(fake_ctl(&e.fake, "{\"fault\":\"slow_first_byte\",\"seconds\":3,\"scope\":\"all\"}") == 0);
    memset(&pr, 0, sizeof pr);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK(lu_run_until(&e.loop, probe_ended, &pr, 5000));
    TH_CHECK(!pr.healthy);
    clear_fault(&e);
    /* A probe still running when the provider goes: dropped, no callback. */
    memset(&pr, 0, sizeof pr);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK_INT(env_close(&e), 0);
    TH_CHECK_INT(pr.calls, 0);

    /* Nothing listening. */
    TH_REQUIRE(env_open(&e, "openai", "openai", "--api-key sk-test", "TH_TEST_OPENAI_KEY", "sk-test") == 0);
    memset(&pr, 0, sizeof pr);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK(lu_run_until(&e.loop, probe_ended, &pr, 5000));
    TH_CHECK(pr.healthy); /* GET /v1/models with the key */
    setenv("TH_TEST_OPENAI_KEY", "sk-bad", 1);
    memset(&pr, 0, sizeof pr);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK(lu_run_until(&e.loop, probe_ended, &pr, 5000));
    TH_CHECK(!pr.healthy); /* 401: our key is wrong */
    setenv("TH_TEST_OPENAI_KEY", "sk-test", 1);
    fake_stop(&e.fake);
    memset(&pr, 0, sizeof pr);
    TH_REQUIRE(env_provider(&e) != NULL);
    TH_REQUIRE(th_upstream_probe(e.p, probe_cb, &pr) == 0);
    TH_CHECK(lu_run_until(&e.loop, probe_ended, &pr, 5000));
    TH_CHECK(!pr.healthy);
    TH_CHECK(strstr(pr.detail, "connect") != NULL);
    TH_CHECK_INT(env_close(&e), 0);
}

/* ---- pure helpers and the kind table ---- */

TH_TEST(test_kind_table)
{
    static const char *const kinds[] = {"openai_fm", "openai", "gpt_sovits", "xtts",  "openvoice",
                                        "cosyvoice", "fish",   "elevenlabs", "azure", "nodes"};
    size_t n = 0;
    while (th_upstream_kinds[n] != NULL)
        n++;
    TH_CHECK_INT(n, 10);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        const th_upstream_kind *k = th_upstream_find(kinds[i]);
        TH_CHECK(k != NULL);
        if (k) TH_CHECK_STR(k->kind, kinds[i]);
        TH_CHECK(th_provider_kind(kinds[i]) == &th_upstream_ops);
    }
    TH_CHECK(th_upstream_find("espeak") == NULL);
    TH_CHECK(th_upstream_find(NULL) == NULL);
    TH_CHECK(th_provider_kind("espeak") != NULL && th_provider_kind("espeak") != &th_upstream_ops);
    TH_CHECK(th_provider_kind("nope") == NULL);
    TH_CHECK(th_provider_kind(NULL) == NULL);

    /* create: an unknown type fails; caps merge with the config. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_provider_conf pc;
    memset(&pc, 0, sizeof pc);
    pc.name = "x";
    pc.type = "espeak";
    char err[128] = "";
    TH_CHECK(th_upstream_ops.create(&loop, &pc, NULL, err, sizeof err) == NULL);
    TH_CHECK(strstr(err, "espeak") != NULL);
    pc.type = "openai";
    pc.formats = 1u << TH_FMT_WAV;
    pc.max_input_chars = 123;
    th_provider *p = th_upstream_ops.create(&loop, &pc, NULL, err, sizeof err);
    TH_REQUIRE(p != NULL);
    TH_CHECK_INT(p->caps.formats, 1u << TH_FMT_WAV);
    TH_CHECK_INT(p->caps.max_input_chars, 123);
    TH_CHECK(p->caps.native_speed);
    TH_CHECK(p->ops->voice_ok == NULL);
    TH_CHECK(th_upstream_probe(p, NULL, NULL) == -1);
    p->ops->destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
}

TH_TEST(test_helpers)
{
    th_upstream_http h;
    th_upstream_http_init(&h);
    TH_CHECK_INT(th_upstream_url(&h, "http://h:1/base//", "/v1/x"), 0);
    TH_CHECK_STR(th_buf_cstr(&h.url), "http://h:1/base/v1/x");
    TH_CHECK_INT(th_upstream_query(&h, "a b", "x&y=z/é"), 0);
    TH_CHECK_INT(th_upstream_query(&h, "n", ""), 0);
    TH_CHECK_STR(th_buf_cstr(&h.url), "http://h:1/base/v1/x?a%20b=x%26y%3Dz%2F%C3%A9&n=");
    TH_CHECK_INT(th_upstream_header(&h, "X-A", "1"), 0);
    TH_CHECK(th_upstream_header(&h, "X-B", "evil\r\nX-C: 1") != 0);
    TH_CHECK(th_upstream_header(&h, "X:B", "v") != 0);
    TH_CHECK(th_upstream_bearer(&h, "k\n") != 0);
    TH_CHECK_INT(th_upstream_bearer(&h, "sk"), 0);
    TH_CHECK_STR(th_buf_cstr(&h.headers), "X-A: 1\nAuthorization: Bearer sk\n");
    TH_CHECK_INT(th_upstream_form(&h.body, "input", "a+b c&d"), 0);
    TH_CHECK_INT(th_upstream_form(&h.body, "voice", "x"), 0);
    TH_CHECK_STR(th_buf_cstr(&h.body), "input=a%2Bb%20c%26d&voice=x");
    th_upstream_http_free(&h);

    th_buf b;
    th_buf_init(&b, 0);
    TH_CHECK_INT(th_upstream_xml_escape(&b, "a&b<c>d\"e'f\x01g", 13), 0);
    TH_CHECK_STR(th_buf_cstr(&b), "a&amp;b&lt;c&gt;d&quot;e&apos;f g");
    th_buf_reset(&b);
    TH_CHECK_INT(th_buf_append_byte(&b, '{'), 0);
    TH_CHECK_INT(th_upstream_json_str(&b, "t", "q\"\n"), 0);
    TH_CHECK_INT(th_upstream_json_raw(&b, "n", "1.5"), 0);
    TH_CHECK_INT(th_buf_append_byte(&b, '}'), 0);
    TH_CHECK_STR(th_buf_cstr(&b), "{\"t\":\"q\\\"\\n\",\"n\":1.5}");
    th_buf_free(&b);

    char ex[16];
    th_upstream_excerpt((const uint8_t *)"  a\n\n b\tc  ", 11, ex, sizeof ex);
    TH_CHECK_STR(ex, "a b c");
    th_upstream_excerpt((const uint8_t *)"abcdefghijklmn\xC3\xA9", 16, ex, sizeof ex);
    TH_CHECK_STR(ex, "abcdefghijklmn"); /* not cut inside é */

    TH_CHECK_INT(th_upstream_retry_after("120", 0), 120);
    TH_CHECK_INT(th_upstream_retry_after(" 3 ", 0), 3);
    TH_CHECK_INT(th_upstream_retry_after("999999", 0), 86400);
    TH_CHECK_INT(th_upstream_retry_after("-1", 0), -1);
    TH_CHECK_INT(th_upstream_retry_after("soon", 0), -1);
    TH_CHECK_INT(th_upstream_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111767), 10);
    TH_CHECK_INT(th_upstream_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111787), 0);

    static const struct {
        int status;
        th_perr_kind kind;
    } map[] = {{400, TH_PERR_CLIENT},  {404, TH_PERR_CLIENT},     {413, TH_PERR_CLIENT},
               {415, TH_PERR_CLIENT},  {422, TH_PERR_CLIENT},     {401, TH_PERR_STATUS},
               {403, TH_PERR_STATUS},  {429, TH_PERR_OVERLOADED}, {408, TH_PERR_TIMEOUT},
               {504, TH_PERR_TIMEOUT}, {500, TH_PERR_STATUS},     {503, TH_PERR_STATUS},
               {302, TH_PERR_STATUS},  {418, TH_PERR_STATUS}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        th_perr e;
        th_upstream_error_generic(map[i].status, "m", &e);
        TH_CHECK_INT(e.kind, map[i].kind);
        TH_CHECK_INT(e.status, map[i].status);
    }

    th_kv kv[2] = {{"stream", "no", false}, {"model", "m1", false}};
    th_provider_conf pc;
    memset(&pc, 0, sizeof pc);
    pc.opts = kv;
    pc.n_opts = 2;
    TH_CHECK(!th_upstream_opt_bool(&pc, "stream", true));
    TH_CHECK(th_upstream_opt_bool(&pc, "absent", true));
    TH_CHECK_STR(th_upstream_opt(&pc, "model", "d"), "m1");
    TH_CHECK_STR(th_upstream_opt(&pc, "x", "d"), "d");
    pc.api_key_env = "TH_TEST_UNSET_VAR";
    unsetenv("TH_TEST_UNSET_VAR");
    const char *key = "x";
    th_perr e;
    TH_CHECK_INT(th_upstream_need_secret(&pc, &key, &e), -1);
    TH_CHECK(key == NULL && e.kind == TH_PERR_STATUS);
    setenv("TH_TEST_UNSET_VAR", "v", 1);
    TH_CHECK_INT(th_upstream_need_secret(&pc, &key, &e), 0);
    TH_CHECK_STR(key, "v");
    unsetenv("TH_TEST_UNSET_VAR");
}

/* Kind functions called directly: request shapes that the fakes do not show. */
TH_TEST(test_requests)
{
    th_provider_conf pc;
    memset(&pc, 0, sizeof pc);
    th_kv kv[2] = {{"region", "westeurope", false}, {"stream", "false", false}};
    pc.opts = kv;
    pc.n_opts = 2;
    th_synth_req r = make_req("a < b", "en-GB-SoniaNeural\"><x", TH_FMT_MP3);
    r.speed = 1.25;
    th_upstream_http h;
    th_perr e;
    th_upstream_http_init(&h);
    pc.type = "azure"; /* the kind's defaults (providers/conf.c) */
    TH_REQUIRE(th_kind_azure.build(&pc, &r, &h, &e) == 0);
    TH_CHECK_STR(th_buf_cstr(&h.url), "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1");
    TH_CHECK_STR(
        th_buf_cstr(&h.body),
        "<speak version=\"1.0\" xmlns=\"http://www.w3.org/2001/10/synthesis\" xml:lang=\"en-GB\"><voice "
        "name=\"en-GB-SoniaNeural&quot;&gt;&lt;x\"><prosody rate=\"+25.00%\">a &lt; b</prosody></voice>"
        "</speak>");
    TH_CHECK(strstr(th_buf_cstr(&h.headers), "X-Microsoft-OutputFormat: riff-24khz-16bit-mono-pcm\n") !=
             NULL);
    TH_CHECK(strstr(th_buf_cstr(&h.headers), "User-Agent: ttshub\n") != NULL);
    th_upstream_http_free(&h);

    /* openai: default base, stream: false leaves stream_format out, tts-1 gets no instructions. */
    r = make_req("hi", "alloy", TH_FMT_FLAC);
    r.prompt = "whisper";
    th_upstream_http_init(&h);
    pc.type = "openai"; /* the kind's defaults (providers/conf.c) */
    TH_REQUIRE(th_kind_openai.build(&pc, &r, &h, &e) == 0);
    TH_CHECK_STR(th_buf_cstr(&h.url), "https://api.openai.com/v1/audio/speech");
    TH_CHECK_STR(th_buf_cstr(&h.body),
                 "{\"model\":\"tts-1\",\"input\":\"hi\",\"voice\":\"alloy\",\"response_format\":"
                 "\"flac\"}");
    th_upstream_http_free(&h);

    /* elevenlabs: the voice id is a path segment. */
    r = make_req("hi", "a/b?c", TH_FMT_MP3);
    r.speed = 0.8;
    th_upstream_http_init(&h);
    pc.type = "elevenlabs"; /* the kind's defaults (providers/conf.c) */
    TH_REQUIRE(th_kind_elevenlabs.build(&pc, &r, &h, &e) == 0);
    TH_CHECK_STR(th_buf_cstr(&h.url),
                 "https://api.elevenlabs.io/v1/text-to-speech/a%2Fb%3Fc/stream?output_format=mp3_44100_128");
    TH_CHECK_STR(
        th_buf_cstr(&h.body),
        "{\"text\":\"hi\",\"model_id\":\"eleven_multilingual_v2\",\"voice_settings\":{\"speed\":0.8}}");
    th_upstream_http_free(&h);

    /* Error bodies mapped by the kinds. */
    static const char oq[] =
        "{\"error\":{\"message\":\"quota\",\"type\":\"insufficient_quota\",\"code\":null}}";
    th_kind_openai.error(&pc, 429, "application/json", (const uint8_t *)oq, sizeof oq - 1, &e);
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    th_kind_openai.error(&pc, 503, NULL, NULL, 0, &e);
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    static const char el422[] = "{\"detail\":[{\"loc\":[\"body\",\"text\"],\"msg\":\"field required\"}]}";
    th_kind_elevenlabs.error(&pc, 422, NULL, (const uint8_t *)el422, sizeof el422 - 1, &e);
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "text: field required") != NULL);
    static const char elq[] = "{\"detail\":{\"status\":\"quota_exceeded\",\"message\":\"no credits\"}}";
    th_kind_elevenlabs.error(&pc, 401, NULL, (const uint8_t *)elq, sizeof elq - 1, &e);
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    th_kind_azure.error(&pc, 429, NULL, NULL, 0, &e);
    TH_CHECK_INT(e.kind, TH_PERR_OVERLOADED);
    th_kind_azure.error(&pc, 415, NULL, NULL, 0, &e);
    TH_CHECK_INT(e.kind, TH_PERR_STATUS);
    static const char fe[] =
        "{\"statusCode\":400,\"message\":\"chunk_length out of range\",\"error\":\"Bad Request\"}";
    th_kind_fish.error(&pc, 400, NULL, (const uint8_t *)fe, sizeof fe - 1, &e);
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "chunk_length out of range") != NULL);
    static const char fm[] = "{\"error\":{\"message\":\"Invalid voice\",\"type\":\"invalid_request_error\"}}";
    th_kind_openai_fm.error(&pc, 400, NULL, (const uint8_t *)fm, sizeof fm - 1, &e);
    TH_CHECK_INT(e.kind, TH_PERR_CLIENT);
    TH_CHECK(strstr(e.message, "Invalid voice") != NULL);
}

TH_TEST_MAIN()
