/* Unit tests of src/hub/synth.c against scripted provider doubles (fake_hub.h): retry once then
 * fallback, client faults neither retried nor counted by the breaker, breaker accounting, a full queue,
 * hedging, the cut after the first byte, and cancel. */
#include "th_test.h"

#include "hub/fake_hub.h"
#include "hub_loop.h"
#include "hub/synth.h"

#include <stdio.h>
#include <string.h>

#define WAIT_MS 5000

#define CFG(router)                                                                                          \
    "providers:\n"                                                                                           \
    "  - { name: a, type: openai_fm, base_url: \"http://127.0.0.1:7001\", priority: 0 }\n"                   \
    "  - { name: b, type: openai_fm, base_url: \"http://127.0.0.1:7002\", priority: 1 }\n"                   \
    "router: { strategy: priority, " router " }\n"

typedef struct outcome {
    int started, done, errors, ended;
    char provider[32];
    uint64_t bytes;
    th_perr err;
    uint64_t err_bytes_out;
    int after_end; /* callbacks after on_done/on_error */
} outcome;

static void o_start(void *ud, const char *provider)
{
    outcome *o = ud;
    o->started++;
    snprintf(o->provider, sizeof o->provider, "%s", provider);
}

static int o_data(void *ud, const uint8_t *data, size_t len)
{
    outcome *o = ud;
    (void)data;
    if (o->ended) o->after_end++;
    o->bytes += len;
    return 0;
}

static void o_done(void *ud)
{
    outcome *o = ud;
    if (o->ended) o->after_end++;
    o->done++;
    o->ended = 1;
}

static void o_error(void *ud, const th_perr *err, uint64_t bytes_out)
{
    outcome *o = ud;
    if (o->ended) o->after_end++;
    o->errors++;
    o->err = *err;
    o->err_bytes_out = bytes_out;
    o->ended = 1;
}

static th_synth_params params(void)
{
    static const char text[] = "Hello there.";
    return (th_synth_params){
        .text = text,
        .text_len = sizeof text - 1,
        .chars = sizeof text - 1,
        .voice = "alloy",
        .fmt = TH_FMT_PCM,
        .sample_rate = 24000,
        .speed = 1.0,
    };
}

/* Runs one synthesis to its end (true when it ended in time), then frees it. */
static bool run_one(fh_world *w, outcome *o)
{
    memset(o, 0, sizeof *o);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, o};
    th_perr err;
    th_synth *s = th_synth_start(&w->hub, &p, &cb, &err);
    if (s == NULL) return false;
    bool ended = hl_run_until(&w->loop, &o->ended, 1, WAIT_MS);
    th_synth_free(s);
    hl_run_until_set(&w->loop, NULL, 10); /* the deferred free and the doubles' closes */
    return ended;
}

static const fh_step OK[] = {{FH_OK, TH_PERR_NONE}};

TH_TEST(synth_ok_streams_the_first_candidate)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_INT(o.errors, 0);
    TH_CHECK_INT(o.started, 1);
    TH_CHECK_STR(o.provider, "a");
    TH_CHECK_INT(o.bytes, 2 * FH_CHUNK); /* pcm to pcm at the same rate passes through */
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK_STR(w.fp[0]->last_voice, "alloy");
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 0);
    TH_CHECK_INT(o.after_end, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Each engine-side failure before the first byte: one retry on the same provider, then the next. */
TH_TEST(synth_engine_failures_retry_once_then_fall_back)
{
    static const th_perr_kind kinds[] = {TH_PERR_TIMEOUT, TH_PERR_CONNECT, TH_PERR_STATUS, TH_PERR_PROTOCOL};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        fh_world w;
        TH_REQUIRE(fh_open(&w, CFG("retries: 1, fallback: true")) == 0);
        fh_step fail[] = {{FH_FAIL, kinds[k]}};
        fh_script(w.fp[0], 1, fail);
        fh_script(w.fp[1], 1, OK);
        outcome o;
        TH_CHECK(run_one(&w, &o));
        if (o.done != 1) fprintf(stderr, "  kind %s\n", th_perr_kind_name(kinds[k]));
        TH_CHECK_INT(o.done, 1);
        TH_CHECK_STR(o.provider, "b");
        TH_CHECK_INT(w.fp[0]->started, 2);
        TH_CHECK_INT(w.fp[1]->started, 1);
        TH_CHECK_INT(fh_rp(&w, 0)->failures, 2); /* both count against a's breaker */
        TH_CHECK_INT(fh_rp(&w, 1)->calls, 1);
        TH_CHECK_INT(fh_rp(&w, 1)->failures, 0);
        TH_CHECK_INT(o.bytes, 2 * FH_CHUNK);
        TH_CHECK(fh_close(&w) == 0);
    }
}

TH_TEST(synth_retry_on_same_provider_can_succeed)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step steps[] = {{FH_FAIL, TH_PERR_STATUS}, {FH_OK, TH_PERR_NONE}};
    fh_script(w.fp[0], 2, steps);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "a");
    TH_CHECK_INT(w.fp[0]->started, 2);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 2);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 1);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(synth_retries_zero_falls_back_at_once)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 0")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_TIMEOUT}};
    fh_script(w.fp[0], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "b");
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 1);
    TH_CHECK(fh_close(&w) == 0);
}

/* An engine's 429: no second try on the engine that is busy, straight to the next one. */
TH_TEST(synth_overloaded_falls_back_without_retry)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_OVERLOADED}};
    fh_script(w.fp[0], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "b");
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 1);
    TH_CHECK(fh_close(&w) == 0);
}

/* Every candidate busy: 503-class overload with a Retry-After, not a 502. */
TH_TEST(synth_all_overloaded_is_overloaded)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_OVERLOADED}};
    fh_script(w.fp[0], 1, fail);
    fh_script(w.fp[1], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.err.kind, TH_PERR_OVERLOADED);
    TH_CHECK(o.err.retry_after_s >= 1);
    TH_CHECK_INT(o.err_bytes_out, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* A client fault is passed on at once: no retry, no fallback, no breaker count. */
TH_TEST(synth_client_fault_not_retried_nor_counted)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 3, fallback: true")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_CLIENT}};
    fh_script(w.fp[0], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.done, 0);
    TH_CHECK_INT(o.started, 0);
    TH_CHECK_INT(o.err.kind, TH_PERR_CLIENT);
    TH_CHECK_INT(o.err_bytes_out, 0);
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->breaker.consecutive, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Many client faults in a row never open the breaker. */
TH_TEST(synth_client_faults_never_open_breaker)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 0, breaker: { failures: 2, failure_ratio: 0 }")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_CLIENT}};
    fh_script(w.fp[0], 1, fail);
    for (int i = 0; i < 5; i++) {
        outcome o;
        TH_CHECK(run_one(&w, &o));
        TH_CHECK_INT(o.err.kind, TH_PERR_CLIENT);
    }
    TH_CHECK_INT(w.fp[0]->started, 5);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK(th_route_prov_available(fh_rp(&w, 0)));
    TH_CHECK(fh_close(&w) == 0);
}

/* A bug on our side (out of memory...) is not retried either. */
TH_TEST(synth_internal_error_not_retried)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_INTERNAL}};
    fh_script(w.fp[0], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.err.kind, TH_PERR_INTERNAL);
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* A job that reports CANCELLED on its own is not an engine failure for the breaker. */
TH_TEST(synth_cancelled_kind_not_counted)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step steps[] = {{FH_FAIL, TH_PERR_CANCELLED}, {FH_OK, TH_PERR_NONE}};
    fh_script(w.fp[0], 2, steps);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 1); /* only the successful call */
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(synth_no_fallback_when_disabled)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1, fallback: false")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_STATUS}};
    fh_script(w.fp[0], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.err.kind, TH_PERR_STATUS);
    TH_CHECK_INT(w.fp[0]->started, 2);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Every candidate fails: the last failure is reported, before any byte. */
TH_TEST(synth_all_fail_reports_last_error)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step fa[] = {{FH_FAIL, TH_PERR_CONNECT}};
    fh_step fb[] = {{FH_FAIL, TH_PERR_TIMEOUT}};
    fh_script(w.fp[0], 1, fa);
    fh_script(w.fp[1], 1, fb);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.err.kind, TH_PERR_TIMEOUT);
    TH_CHECK_INT(o.err_bytes_out, 0);
    TH_CHECK_INT(o.started, 0);
    TH_CHECK_INT(w.fp[0]->started, 2);
    TH_CHECK_INT(w.fp[1]->started, 2);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight + fh_rp(&w, 1)->inflight, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* A 2xx with no audio is a protocol failure: retried, then the next candidate. */
TH_TEST(synth_no_audio_is_a_failure)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    fh_step empty[] = {{FH_EMPTY, TH_PERR_NONE}};
    fh_script(w.fp[0], 1, empty);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "b");
    TH_CHECK_INT(w.fp[0]->started, 2);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 2);
    TH_CHECK(fh_close(&w) == 0);
}

/* After the engine's first byte there is no retry and no fallback, whether or not the client has seen a
 * byte yet (what it has seen is in bytes_out). */
TH_TEST(synth_failure_after_engine_first_byte_not_retried)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 2, fallback: true")) == 0);
    fh_step cut[] = {{FH_CUT, TH_PERR_STATUS}};
    fh_script(w.fp[0], 1, cut);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.done, 0);
    TH_CHECK_INT(o.err.kind, TH_PERR_STATUS);
    TH_CHECK_INT(o.err_bytes_out, o.bytes);
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 1);
    TH_CHECK_INT(o.after_end, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* The client has audio, then the engine fails: the response is cut (bytes_out > 0), nothing else. */
TH_TEST(synth_failure_after_client_bytes_cuts)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 2, fallback: true")) == 0);
    fh_step stall[] = {{FH_STALL, TH_PERR_NONE}};
    fh_script(w.fp[0], 1, stall);
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    th_perr err;
    th_synth *s = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s != NULL);
    TH_CHECK(hl_run_until(&w.loop, &o.started, 1, WAIT_MS));
    for (int i = 0; i < 1000 && o.bytes < FH_CHUNK; i++) /* until the converter has passed the chunk on */
        hl_run_until_set(&w.loop, NULL, 5);
    TH_CHECK_INT(o.bytes, FH_CHUNK);
    TH_CHECK(fh_fail_now(w.fp[0], TH_PERR_TIMEOUT));
    hl_run_until(&w.loop, &o.ended, 1, WAIT_MS);
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.done, 0);
    TH_CHECK_INT(o.err.kind, TH_PERR_TIMEOUT);
    TH_CHECK_INT(o.err_bytes_out, FH_CHUNK);
    TH_CHECK_STR(o.provider, "a");
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->failures, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 0);
    th_synth_free(s);
    hl_run_until_set(&w.loop, NULL, 10);
    TH_CHECK_INT(o.after_end, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Consecutive failures open a's breaker: the next request skips a without calling it. */
TH_TEST(synth_breaker_opens_and_is_skipped)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1, breaker: { failures: 2, failure_ratio: 0, open_for: 1h }")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_STATUS}};
    fh_script(w.fp[0], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_INT(w.fp[0]->started, 2);
    TH_CHECK_INT(th_breaker_get(&fh_rp(&w, 0)->breaker, th_mono_ms()), TH_BREAKER_OPEN);
    TH_CHECK(!th_route_prov_available(fh_rp(&w, 0)));
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "b");
    TH_CHECK_INT(w.fp[0]->started, 2); /* not called again */
    TH_CHECK_INT(w.fp[1]->started, 2);
    TH_CHECK(fh_close(&w) == 0);
}

/* Only open breakers left: overload, and nobody is called. */
TH_TEST(synth_every_breaker_open_is_overloaded)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 0, breaker: { failures: 1, failure_ratio: 0, open_for: 1h }")) == 0);
    fh_step fail[] = {{FH_FAIL, TH_PERR_CONNECT}};
    fh_script(w.fp[0], 1, fail);
    fh_script(w.fp[1], 1, fail);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.err.kind, TH_PERR_CONNECT);
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.errors, 1);
    TH_CHECK_INT(o.err.kind, TH_PERR_OVERLOADED);
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[1]->started, 1);
    TH_CHECK(fh_close(&w) == 0);
}

/* A full provider (concurrency 1, queue 0, its slot taken) is passed over for the next. */
TH_TEST(synth_full_queue_falls_to_next)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w,
                       "providers:\n"
                       "  - { name: a, type: openai_fm, base_url: \"http://127.0.0.1:7001\", concurrency: 1, "
                       "queue: 0 }\n"
                       "  - { name: b, type: openai_fm, base_url: \"http://127.0.0.1:7002\", priority: 1 }\n"
                       "router: { strategy: priority, retries: 1 }\n") == 0);
    fh_step hang[] = {{FH_HANG, TH_PERR_NONE}};
    fh_script(w.fp[0], 1, hang);
    outcome o1;
    memset(&o1, 0, sizeof o1);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o1};
    th_perr err;
    th_synth *s1 = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s1 != NULL);
    TH_CHECK(hl_run_until(&w.loop, &w.fp[0]->started, 1, WAIT_MS));
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 1);
    outcome o2;
    TH_CHECK(run_one(&w, &o2));
    TH_CHECK_INT(o2.done, 1);
    TH_CHECK_STR(o2.provider, "b");
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 0); /* a full queue is not a breaker failure */
    th_synth_cancel(s1);
    TH_CHECK_INT(w.fp[0]->cancelled, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 0);
    TH_CHECK_INT(o1.started + o1.done + o1.errors, 0);
    hl_run_until_set(&w.loop, NULL, 10);
    TH_CHECK(fh_close(&w) == 0);
}

/* A queued request starts when the slot frees. */
TH_TEST(synth_queued_request_starts_when_slot_frees)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w,
                       "providers:\n"
                       "  - { name: a, type: openai_fm, base_url: \"http://127.0.0.1:7001\", concurrency: 1, "
                       "queue: 4 }\n"
                       "router: { retries: 0 }\n") == 0);
    fh_step steps[] = {{FH_HANG, TH_PERR_NONE}, {FH_OK, TH_PERR_NONE}};
    fh_script(w.fp[0], 2, steps);
    outcome o1, o2;
    memset(&o1, 0, sizeof o1);
    memset(&o2, 0, sizeof o2);
    th_synth_params p = params();
    th_synth_cb cb1 = {o_start, o_data, o_done, o_error, &o1};
    th_synth_cb cb2 = {o_start, o_data, o_done, o_error, &o2};
    th_perr err;
    th_synth *s1 = th_synth_start(&w.hub, &p, &cb1, &err);
    TH_REQUIRE(s1 != NULL);
    TH_CHECK(hl_run_until(&w.loop, &w.fp[0]->started, 1, WAIT_MS));
    th_synth *s2 = th_synth_start(&w.hub, &p, &cb2, &err);
    TH_REQUIRE(s2 != NULL);
    hl_run_until_set(&w.loop, NULL, 20);
    TH_CHECK_INT(fh_rp(&w, 0)->waiting, 1);
    TH_CHECK_INT(w.fp[0]->started, 1);
    th_synth_cancel(s1); /* frees the slot: s2 is granted it */
    TH_CHECK(hl_run_until(&w.loop, &o2.ended, 1, WAIT_MS));
    TH_CHECK_INT(o2.done, 1);
    TH_CHECK_INT(w.fp[0]->started, 2);
    TH_CHECK_INT(fh_rp(&w, 0)->waiting, 0);
    th_synth_free(s2);
    hl_run_until_set(&w.loop, NULL, 10);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Hedging: the first candidate is slow, a second starts and wins; the slow one is cancelled and its
 * breaker allowance given back without an outcome. */
TH_TEST(synth_hedge_second_candidate_wins)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1, hedge_after: 30ms")) == 0);
    fh_step hang[] = {{FH_HANG, TH_PERR_NONE}};
    fh_script(w.fp[0], 1, hang);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "b");
    TH_CHECK_INT(o.bytes, 2 * FH_CHUNK);
    TH_CHECK_INT(w.fp[0]->started, 1);
    TH_CHECK_INT(w.fp[0]->cancelled, 1);
    TH_CHECK_INT(w.fp[0]->live, 0);
    TH_CHECK_INT(w.fp[1]->started, 1);
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight, 0);
    TH_CHECK_INT(fh_rp(&w, 1)->calls, 1);
    TH_CHECK(fh_close(&w) == 0);
}

/* Both run after the hedge starts; the first to send audio wins even if it is the primary, and the hedge
 * is cancelled with no outcome counted. */
TH_TEST(synth_hedge_first_audio_wins)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1, hedge_after: 20ms")) == 0);
    fh_step hang[] = {{FH_HANG, TH_PERR_NONE}};
    fh_script(w.fp[0], 1, hang);
    fh_script(w.fp[1], 1, hang);
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    th_perr err;
    th_synth *s = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s != NULL);
    TH_CHECK(hl_run_until(&w.loop, &w.fp[1]->started, 1, WAIT_MS));
    TH_CHECK(fh_go(w.fp[0]));
    TH_CHECK_INT(w.fp[1]->cancelled, 1);
    TH_CHECK(hl_run_until(&w.loop, &o.ended, 1, WAIT_MS));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "a");
    TH_CHECK_STR(th_synth_provider(s), "a");
    TH_CHECK_INT(o.bytes, 2 * FH_CHUNK);
    TH_CHECK_INT(fh_rp(&w, 0)->calls, 1);
    TH_CHECK_INT(fh_rp(&w, 1)->calls, 0);
    TH_CHECK_INT(fh_rp(&w, 1)->inflight, 0);
    th_synth_free(s);
    hl_run_until_set(&w.loop, NULL, 10);
    TH_CHECK_INT(o.after_end, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* A primary that answers before hedge_after: no second call. */
TH_TEST(synth_no_hedge_when_primary_is_fast)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1, hedge_after: 10s")) == 0);
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "a");
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Hedging with both hanging: both are cancelled when the client goes away. */
TH_TEST(synth_cancel_stops_every_attempt)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1, hedge_after: 20ms")) == 0);
    fh_step hang[] = {{FH_HANG, TH_PERR_NONE}};
    fh_script(w.fp[0], 1, hang);
    fh_script(w.fp[1], 1, hang);
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    th_perr err;
    th_synth *s = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s != NULL);
    TH_CHECK_INT(w.fp[0]->started, 0); /* nothing inside start */
    TH_CHECK(hl_run_until(&w.loop, &w.fp[1]->started, 1, WAIT_MS));
    TH_CHECK_INT(w.fp[0]->live + w.fp[1]->live, 2);
    th_synth_cancel(s);
    TH_CHECK_INT(w.fp[0]->cancelled, 1);
    TH_CHECK_INT(w.fp[1]->cancelled, 1);
    TH_CHECK_INT(w.fp[0]->live + w.fp[1]->live, 0);
    hl_run_until_set(&w.loop, NULL, 20);
    TH_CHECK_INT(o.started + o.done + o.errors, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->inflight + fh_rp(&w, 1)->inflight, 0);
    TH_CHECK_INT(fh_rp(&w, 0)->calls + fh_rp(&w, 1)->calls, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Cancel before the first loop turn: no provider is ever called. */
TH_TEST(synth_cancel_before_start)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    th_perr err;
    th_synth *s = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s != NULL);
    th_synth_cancel(s);
    hl_run_until_set(&w.loop, NULL, 20);
    TH_CHECK_INT(w.fp[0]->started + w.fp[1]->started, 0);
    TH_CHECK_INT(o.started + o.done + o.errors, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* An unknown voice (refused by every provider) is a client error at prepare and at start. */
TH_TEST(synth_unknown_voice_is_client_error)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    snprintf(w.fp[0]->refuse, sizeof w.fp[0]->refuse, "nobody");
    snprintf(w.fp[1]->refuse, sizeof w.fp[1]->refuse, "x,nobody");
    th_synth_params p = params();
    p.voice = "nobody";
    th_perr err;
    memset(&err, 0, sizeof err);
    TH_CHECK_INT(th_synth_prepare(&w.hub, &p, &err), -1);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    memset(&err, 0, sizeof err);
    TH_CHECK(th_synth_start(&w.hub, &p, &cb, &err) == NULL);
    TH_CHECK_INT(err.kind, TH_PERR_CLIENT);
    p.voice = "alloy";
    TH_CHECK_INT(th_synth_prepare(&w.hub, &p, &err), 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* A voice only b knows goes to b even though a comes first. */
TH_TEST(synth_voice_known_only_to_second)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    snprintf(w.fp[0]->refuse, sizeof w.fp[0]->refuse, "alloy");
    outcome o;
    TH_CHECK(run_one(&w, &o));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_STR(o.provider, "b");
    TH_CHECK_INT(w.fp[0]->started, 0);
    TH_CHECK(fh_close(&w) == 0);
}

/* Native speed within the engine's range goes to the engine; the rest is done by tempo. */
TH_TEST(synth_native_speed_is_clamped_for_engine)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    w.fp[0]->base.caps.native_speed = true;
    w.fp[0]->base.caps.speed_min = 0.5;
    w.fp[0]->base.caps.speed_max = 2.0;
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_params p = params();
    p.speed = 1.5;
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    th_perr err;
    th_synth *s = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s != NULL);
    TH_CHECK(hl_run_until(&w.loop, &o.ended, 1, WAIT_MS));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK(w.fp[0]->last_speed > 1.49 && w.fp[0]->last_speed < 1.51);
    th_synth_free(s);
    hl_run_until_set(&w.loop, NULL, 10);
    TH_CHECK(fh_close(&w) == 0);
}

/* A reload during a request: the request keeps its config generation and its (now retired) provider,
 * new requests use the new ones, and the retired provider is destroyed when the request ends. */
TH_TEST(synth_request_survives_reload)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, CFG("retries: 1")) == 0);
    int destroyed = 0;
    w.fp[0]->destroyed = &destroyed;
    w.fp[1]->destroyed = &destroyed;
    fh_step steps[] = {{FH_HANG, TH_PERR_NONE}, {FH_OK, TH_PERR_NONE}};
    fh_script(w.fp[0], 2, steps);
    outcome o1;
    memset(&o1, 0, sizeof o1);
    th_synth_params p = params();
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o1};
    th_perr err;
    th_synth *s1 = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s1 != NULL);
    TH_CHECK(hl_run_until(&w.loop, &w.fp[0]->started, 1, WAIT_MS));

    /* the reload: a changed provider a (a new record), b kept, and no retries any more */
    th_config *neu = fh_parse(CFG("retries: 0"));
    TH_REQUIRE(neu != NULL);
    fh_prov *a2 = fh_new_prov(&w, &neu->providers[0]);
    TH_REQUIRE(a2 != NULL);
    a2->destroyed = &destroyed;
    th_route_prov **np = calloc(2, sizeof *np);
    TH_REQUIRE(np != NULL);
    np[0] = th_route_prov_new(&w.hub.route, &a2->base, neu);
    TH_REQUIRE(np[0] != NULL);
    np[1] = th_route_prov_ref(fh_rp(&w, 1));
    th_route_prov *old_a = fh_rp(&w, 0);
    fh_prov *old_fa = w.fp[0];
    th_route_replace(&w.hub.route, np, 2, neu);
    w.provs2[0] = &a2->base;
    w.provs2[1] = w.provs[1];
    w.hub.providers = w.provs2;
    th_config_unref(w.hub.cfg);
    w.hub.cfg = neu;
    w.fp[0] = a2;
    TH_CHECK(old_a->retired);
    TH_CHECK_INT(destroyed, 0); /* the request still holds it */

    /* a new request goes to the new a */
    outcome o2;
    TH_CHECK(run_one(&w, &o2));
    TH_CHECK_INT(o2.done, 1);
    TH_CHECK_STR(o2.provider, "a");
    TH_CHECK_INT(a2->started, 1);
    TH_CHECK_INT(old_fa->started, 1);

    /* the old request fails on the old a and, under its own config (retries 1), retries there */
    TH_CHECK(fh_fail_now(old_fa, TH_PERR_STATUS));
    TH_CHECK(hl_run_until(&w.loop, &o1.ended, 1, WAIT_MS));
    TH_CHECK_INT(o1.done, 1);
    TH_CHECK_INT(old_fa->started, 2);
    TH_CHECK_INT(w.fp[1]->started, 0);
    TH_CHECK_INT(destroyed, 0);
    th_synth_free(s1);
    for (int i = 0; i < 100 && destroyed == 0; i++)
        hl_run_until_set(&w.loop, NULL, 5);
    TH_CHECK_INT(destroyed, 1); /* the retired a, once drained */
    TH_CHECK(fh_close(&w) == 0);
    TH_CHECK_INT(destroyed, 3);
}

/* Long text: split at sentences into parts (the smallest max_input_chars), joined in order. */
static void long_text(const char *strategy, int *th__failed, int *started_a, int *started_b, size_t *parts)
{
    static const char fmt[] =
        "providers:\n"
        "  - { name: a, type: openai_fm, base_url: \"http://127.0.0.1:7001\" }\n"
        "  - { name: b, type: openai_fm, base_url: \"http://127.0.0.1:7002\", priority: 1 }\n"
        "router: { strategy: %s, retries: 1 }\n";
    char yaml[512];
    snprintf(yaml, sizeof yaml, fmt, strategy);
    fh_world w;
    TH_REQUIRE(fh_open(&w, yaml) == 0);
    w.fp[0]->base.caps.max_input_chars = 14;
    w.fp[1]->base.caps.max_input_chars = 20;
    static const char text[] = "One two three. Four five six. Seven eight.";
    outcome o;
    memset(&o, 0, sizeof o);
    th_synth_params p = params();
    p.text = text;
    p.text_len = sizeof text - 1;
    p.chars = sizeof text - 1;
    th_synth_cb cb = {o_start, o_data, o_done, o_error, &o};
    th_perr err;
    th_synth *s = th_synth_start(&w.hub, &p, &cb, &err);
    TH_REQUIRE(s != NULL);
    *parts = th_synth_parts(s);
    TH_CHECK(hl_run_until(&w.loop, &o.ended, 1, WAIT_MS));
    TH_CHECK_INT(o.done, 1);
    TH_CHECK_INT(o.bytes, *parts * 2 * FH_CHUNK); /* every part's audio, once */
    TH_CHECK_INT(w.fp[0]->started + w.fp[1]->started, *parts);
    *started_a = w.fp[0]->started;
    *started_b = w.fp[1]->started;
    th_synth_free(s);
    hl_run_until_set(&w.loop, NULL, 10);
    TH_CHECK_INT(o.after_end, 0);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(synth_long_text_parts_spread_over_providers)
{
    int a = 0, b = 0;
    size_t parts = 0;
    long_text("round_robin", th__failed, &a, &b, &parts);
    TH_CHECK_INT(parts, 3);
    TH_CHECK(a >= 1 && b >= 1);
}

TH_TEST(synth_long_text_priority_stays_on_first)
{
    int a = 0, b = 0;
    size_t parts = 0;
    long_text("priority", th__failed, &a, &b, &parts);
    TH_CHECK_INT(parts, 3);
    TH_CHECK_INT(a, 3);
    TH_CHECK_INT(b, 0);
}

TH_TEST_MAIN()
