/* test_library_redis: two voice libraries on one real redis-server, as two hubs share one: ids and the
 * tenant cap are decided by Redis for both, changes reach the other within its polling, and a voice
 * deleted through one is reported (for voice_forget) by the other. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_proc.h"
#include "audio/wav.h"
#include "th_test.h"
#include "voice/library.h"

typedef struct res {
    int done;
    th_vlib_rc rc;
    th_vlib_use *u;
} res;

static void on_done(void *ud, th_vlib_rc rc, const char *err)
{
    res *r = ud;
    (void)err;
    r->rc = rc;
    r->done++;
}

static void on_use(void *ud, th_vlib_use *u, th_vlib_rc rc)
{
    res *r = ud;
    r->rc = rc;
    r->u = u;
    r->done++;
}

static void on_removed(void *ud, const th_voice_ref *ref)
{
    (void)ref;
    (*(int *)ud)++;
}

static th_vlib_rc make(uv_loop_t *loop, th_vlib *l, const char *id, const char *tenant, int seed)
{
    size_t len = TH_WAV_HEADER_LEN + 2000;
    uint8_t *w = malloc(len);
    th_wav_header(w, 24000, 1, 16, 2000);
    for (size_t i = TH_WAV_HEADER_LEN; i < len; i++)
        w[i] = (uint8_t)(i * 13 + (size_t)seed);
    th_vlib_meta m;
    memset(&m, 0, sizeof m);
    snprintf(m.id, sizeof m.id, "%s", id);
    th_vlib_meta_set(&m.name, id);
    th_vlib_meta_set(&m.tenant, tenant);
    th_vlib_meta_set(&m.engine, "");
    th_vlib_meta_set(&m.text, "hello");
    th_vlib_meta_set(&m.language, "en");
    m.duration_s = 2.0;
    m.created_ms = m.updated_ms = 1;
    m.rate = 24000;
    m.wav_len = len;
    th_vlib_sha256_hex(w, len, m.sha256);
    th_vlib_rc rc = th_vlib_reserve(l, id, tenant, 1);
    if (rc != TH_VLIB_OK) {
        free(w);
        th_vlib_meta_free(&m);
        return rc;
    }
    res r = {0};
    th_vlib_create(l, &m, w, len, 1, on_done, &r);
    hl_run_until(loop, &r.done, 1, 5000);
    th_vlib_meta_free(&m);
    return r.done ? r.rc : TH_VLIB_IO;
}

static bool seen(uv_loop_t *loop, th_vlib *l, const char *id, bool want)
{
    uint64_t deadline = th_mono_ms() + 5000;
    while (th_mono_ms() < deadline) {
        if ((th_vlib_find(l, id) != NULL) == want) return true;
        hl_run_until_set(loop, NULL, 20);
    }
    return false;
}

TH_TEST(two_libraries_share_one_redis)
{
    rp_server s = {0};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_log *log = th_log_new(TH_LOG_ERROR, TH_LOG_TEXT, "");
    char url[128], err[256] = "";
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", s.port);
    th_redis *ra = th_redis_new(&loop, url, 2000, log, err, sizeof err);
    th_redis *rb = th_redis_new(&loop, url, 2000, log, err, sizeof err);
    TH_REQUIRE(ra && rb);
    th_vlib_conf conf = {
        .backend = "redis", .redis = ra, .prefix = "t:", .cache_bytes = 1 << 20, .max_voices = 50};
    th_vlib *a = th_vlib_new(&loop, &conf, log, err, sizeof err);
    conf.redis = rb;
    th_vlib *b = th_vlib_new(&loop, &conf, log, err, sizeof err);
    TH_REQUIRE(a && b);
    int removed_b = 0;
    th_vlib_on_removed(b, on_removed, &removed_b);
    hl_run_until_set(&loop, NULL, 300); /* both connected */

    th_redis_lane_stats bulk0, bulk1;
    th_redis_lane_get_stats(ra, TH_REDIS_LANE_BULK, &bulk0);
    TH_CHECK_INT(make(&loop, a, "one", "t", 1), TH_VLIB_OK);
    th_redis_lane_get_stats(ra, TH_REDIS_LANE_BULK, &bulk1);
    TH_CHECK_INT(bulk1.commands - bulk0.commands, 1); /* the create script, with the wav, on the bulk lane */
    /* b has not read it back yet, but Redis decides: the id is taken, and t's cap (1) is reached */
    TH_CHECK_INT(make(&loop, b, "one", "u", 2), TH_VLIB_TAKEN);
    TH_CHECK_INT(make(&loop, b, "two", "t", 3), TH_VLIB_FULL);
    TH_CHECK(seen(&loop, b, "one", true));
    TH_CHECK(th_vlib_find(b, "two") == NULL);
    TH_CHECK_INT(make(&loop, b, "two", "u", 4), TH_VLIB_OK);
    TH_CHECK(seen(&loop, a, "two", true));

    /* b's copy of the audio comes from Redis and matches */
    res u = {0};
    th_redis_lane_get_stats(rb, TH_REDIS_LANE_BULK, &bulk0);
    th_vlib_acquire(b, "one", on_use, &u);
    TH_REQUIRE(hl_run_until(&loop, &u.done, 1, 5000));
    TH_REQUIRE(u.u != NULL);
    th_redis_lane_get_stats(rb, TH_REDIS_LANE_BULK, &bulk1);
    TH_CHECK_INT(bulk1.commands - bulk0.commands, 1); /* the audio's GET, on the bulk lane */

    TH_CHECK_STR(th_vlib_use_ref(u.u)->sha256, th_vlib_find(a, "one")->sha256);

    /* renamed through b, seen by a; deleted through a, gone from b (and reported there) */
    res r = {0};
    th_vlib_update(b, "one", "Renamed", NULL, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(r.rc, TH_VLIB_OK);
    uint64_t deadline = th_mono_ms() + 5000;
    while (th_mono_ms() < deadline && strcmp(th_vlib_find(a, "one")->name, "Renamed") != 0)
        hl_run_until_set(&loop, NULL, 20);
    TH_CHECK_STR(th_vlib_find(a, "one")->name, "Renamed");
    r = (res){0};
    th_vlib_delete(a, "one", on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(r.rc, TH_VLIB_OK);
    TH_CHECK(seen(&loop, b, "one", false));
    TH_CHECK_INT(removed_b, 1);
    /* the use taken before the delete is still whole */
    TH_CHECK(th_vlib_use_ref(u.u)->wav_len == TH_WAV_HEADER_LEN + 2000);
    th_vlib_use_release(u.u);
    TH_CHECK_INT(th_vlib_count(a), 1);
    TH_CHECK_INT(th_vlib_count(b), 1);

    th_vlib_free(a);
    th_vlib_free(b);
    th_redis_free(ra);
    th_redis_free(rb);
    hl_run_until_set(&loop, NULL, 100);
    th_log_free(log);
    uv_loop_close(&loop);
    rp_kill(&s);
}

TH_TEST_MAIN()
