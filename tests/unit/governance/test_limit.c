/* Unit tests of src/governance/limit.c.
 * Local backend (time driven by now_ms, no sleeps): every limit admits its exact number in a burst and
 * refuses the next with its reason and a retry-after, windows recover, refused requests charge nothing,
 * token bucket burst then rate, concurrency slots come back on release, the per-IP table is bounded and
 * expires, tenants are separate. Redis backend, against a real redis-server on a free loopback port: the
 * exact burst shared by two limiters on two connections ("two hubs"), shared concurrency, fail open vs
 * closed while the server is down, a timeout, and recovery after a restart. */
#include "th_test.h"

#include "core/clock.h"
#include "config/config.h"
#include "governance/limit.h"
#include "store/redis.h"
#include "redis_proc.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#define T0 1700000000000ULL /* a wall-clock ms */

static th_config *cfg_from(const char *yaml)
{
    th_config_errors errs = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &errs);
    for (size_t i = 0; c == NULL && i < errs.n; i++)
        fprintf(stderr, "    config: %s: %s\n", errs.items[i].path, errs.items[i].message);
    th_config_errors_free(&errs);
    return c;
}

/* The last result of a check, copied. */
typedef struct got {
    int n;
    th_limit_result res;
} got;

static void on_result(void *ud, const th_limit_result *res)
{
    got *g = ud;
    g->n++;
    g->res = *res;
}

/* A synchronous (local) check. */
static th_limit_result check(th_limiter *l, const char *ip, const char *tenant, const th_config *c,
                             uint64_t now)
{
    got g = {0};
    th_limit_req req = {.ip = ip,
                        .tenant = tenant ? tenant : "",
                        .key_id = "",
                        .tconf = tenant ? th_config_tenant(c, tenant) : NULL};
    th_limit_check(l, &req, now, on_result, &g);
    if (g.n != 1) {
        fprintf(stderr, "    callback ran %d times\n", g.n);
        abort();
    }
    return g.res;
}

/* Checks and releases at once (for rate limits, where slots do not matter). */
static th_limit_result hit(th_limiter *l, const char *ip, const char *tenant, const th_config *c,
                           uint64_t now)
{
    th_limit_result r = check(l, ip, tenant, c, now);
    if (r.allowed) th_limit_release(l, r.slot);
    return r;
}

/* ---- local backend -------------------------------------------------------------------------------- */

TH_TEST(test_global_rpm_exact_burst)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 10, ip_rpm: 0, concurrency: 0 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    TH_CHECK_STR(th_limiter_backend(l), "local");
    for (int i = 0; i < 10; i++) {
        th_limit_result r = hit(l, "10.0.0.1", NULL, c, T0 + (uint64_t)i);
        TH_CHECK(r.allowed);
        TH_CHECK(!r.degraded);
        TH_CHECK_INT(r.limit, 10);
        TH_CHECK_INT(r.remaining, 9 - i);
        TH_CHECK_INT(r.reset_s, 60);
    }
    th_limit_result r = hit(l, "10.0.0.2", NULL, c, T0 + 10);
    TH_CHECK(!r.allowed);
    TH_CHECK_INT(r.status, 429);
    TH_CHECK_STR(r.reason, "global_rpm");
    TH_CHECK_INT(r.limit, 10);
    TH_CHECK_INT(r.remaining, 0);
    TH_CHECK(r.retry_after_s >= 1);
    TH_CHECK_INT(r.retry_after_s, 60);
    TH_CHECK(r.slot == NULL);
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_window_recovers_exactly)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 10, ip_rpm: 0, concurrency: 0 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    /* one hit per second from T0 */
    for (uint64_t i = 0; i < 10; i++)
        TH_CHECK(hit(l, "1.1.1.1", NULL, c, T0 + i * 1000).allowed);
    th_limit_result r = hit(l, "1.1.1.1", NULL, c, T0 + 10000);
    TH_CHECK(!r.allowed);
    TH_CHECK_INT(r.retry_after_s, 50); /* the hit at T0 leaves at T0 + 60 s */
    TH_CHECK_INT(r.reset_s, 50);
    r = hit(l, "1.1.1.1", NULL, c, T0 + 59999);
    TH_CHECK(!r.allowed);
    TH_CHECK_INT(r.retry_after_s, 1);
    /* at T0 + 60 s exactly one slot is free again, and only one */
    TH_CHECK(hit(l, "1.1.1.1", NULL, c, T0 + 60000).allowed);
    TH_CHECK(!hit(l, "1.1.1.1", NULL, c, T0 + 60000).allowed);
    TH_CHECK(hit(l, "1.1.1.1", NULL, c, T0 + 61000).allowed);
    /* after a whole quiet window everything is back */
    int ok = 0;
    for (int i = 0; i < 12; i++)
        ok += hit(l, "1.1.1.1", NULL, c, T0 + 200000).allowed;
    TH_CHECK_INT(ok, 10);
    /* time going backwards is clamped, not trusted */
    TH_CHECK(!hit(l, "1.1.1.1", NULL, c, T0).allowed);
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_ip_rpm_and_refused_not_charged)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 5, ip_rpm: 3, concurrency: 0 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    for (int i = 0; i < 3; i++)
        TH_CHECK(hit(l, "10.1.1.1", NULL, c, T0).allowed);
    for (int i = 0; i < 4; i++) { /* refused by ip_rpm: the global window must not move */
        th_limit_result r = hit(l, "10.1.1.1", NULL, c, T0 + 1);
        TH_CHECK(!r.allowed);
        TH_CHECK_STR(r.reason, "ip_rpm");
        TH_CHECK_INT(r.limit, 3);
        TH_CHECK_INT(r.retry_after_s, 60);
    }
    TH_CHECK(hit(l, "10.1.1.2", NULL, c, T0 + 2).allowed);
    th_limit_result r = hit(l, "10.1.1.3", NULL, c, T0 + 3);
    TH_CHECK(r.allowed); /* 5th global */
    TH_CHECK_INT(r.limit, 5);
    TH_CHECK_INT(r.remaining, 0);
    r = hit(l, "10.1.1.3", NULL, c, T0 + 4);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.reason, "global_rpm");
    /* refused by global: the IP window of 10.1.1.3 holds one hit only */
    for (int i = 0; i < 5; i++)
        TH_CHECK(!hit(l, "10.1.1.3", NULL, c, T0 + 5).allowed);
    TH_CHECK_INT(th_limiter_ip_entries(l), 3);
    r = hit(l, "10.1.1.3", NULL, c, T0 + 60002);
    TH_CHECK(r.allowed);
    TH_CHECK_INT(r.limit, 3); /* the IP window is now the closest to refusing */
    TH_CHECK_INT(r.remaining, 1);
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_token_bucket_burst_then_rate)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
                            "tenants:\n  acme: { rate: 2, burst: 5 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    for (int i = 0; i < 5; i++) {
        th_limit_result r = hit(l, "1.2.3.4", "acme", c, T0);
        TH_CHECK(r.allowed);
        TH_CHECK_INT(r.limit, 5);
        TH_CHECK_INT(r.remaining, 4 - i);
    }
    th_limit_result r = hit(l, "1.2.3.4", "acme", c, T0);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.reason, "tenant_rate");
    TH_CHECK_INT(r.retry_after_s, 1);
    TH_CHECK(!hit(l, "1.2.3.4", "acme", c, T0 + 499).allowed);
    TH_CHECK(hit(l, "1.2.3.4", "acme", c, T0 + 500).allowed); /* 2 tokens/s */
    TH_CHECK(!hit(l, "1.2.3.4", "acme", c, T0 + 500).allowed);
    int ok = 0;
    for (int i = 0; i < 10; i++)
        ok += hit(l, "1.2.3.4", "acme", c, T0 + 1500).allowed;
    TH_CHECK_INT(ok, 2);
    ok = 0;
    for (int i = 0; i < 10; i++)
        ok += hit(l, "1.2.3.4", "acme", c, T0 + 100000).allowed;
    TH_CHECK_INT(ok, 5); /* never more than the burst */
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_concurrency_slots)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 3 }\n"
                            "tenants:\n  a: { concurrency: 1 }\n  b: { concurrency: 2 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    th_limit_result a1 = check(l, "1.1.1.1", "a", c, T0);
    TH_CHECK(a1.allowed);
    TH_CHECK(a1.slot != NULL);
    th_limit_result a2 = check(l, "1.1.1.1", "a", c, T0);
    TH_CHECK(!a2.allowed);
    TH_CHECK_STR(a2.reason, "tenant_concurrency");
    TH_CHECK_INT(a2.limit, 1);
    TH_CHECK(a2.retry_after_s >= 1);
    th_limit_result b1 = check(l, "1.1.1.1", "b", c, T0);
    th_limit_result b2 = check(l, "1.1.1.1", "b", c, T0);
    TH_CHECK(b1.allowed && b2.allowed);
    TH_CHECK_INT(th_limiter_inflight(l), 3);
    th_limit_result g = check(l, "1.1.1.1", NULL, c, T0);
    TH_CHECK(!g.allowed);
    TH_CHECK_STR(g.reason, "concurrency");
    TH_CHECK_INT(g.limit, 3);
    th_limit_release(l, b1.slot);
    TH_CHECK_INT(th_limiter_inflight(l), 2);
    th_limit_result g2 = check(l, "1.1.1.1", NULL, c, T0);
    TH_CHECK(g2.allowed);
    TH_CHECK(!check(l, "1.1.1.1", "a", c, T0).allowed); /* global full again */
    th_limit_release(l, g2.slot);
    th_limit_result a3 = check(l, "1.1.1.1", "a", c, T0);
    TH_CHECK(!a3.allowed); /* global has room, tenant a does not */
    TH_CHECK_STR(a3.reason, "tenant_concurrency");
    th_limit_release(l, a1.slot);
    a3 = check(l, "1.1.1.1", "a", c, T0);
    TH_CHECK(a3.allowed);
    th_limit_release(l, a3.slot);
    th_limit_release(l, b2.slot);
    th_limit_release(l, NULL);
    TH_CHECK_INT(th_limiter_inflight(l), 0);
    /* the tenant entries are idle once nothing is held, and expire */
    th_limiter_sweep(l, T0 + 121000);
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_refused_by_concurrency_charges_nothing)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 3, ip_rpm: 2, concurrency: 1 }\n"
                            "tenants:\n  acme: { rpm: 2, rate: 1, burst: 2 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    th_limit_result held = check(l, "9.9.9.9", "acme", c, T0);
    TH_REQUIRE(held.allowed);
    for (int i = 0; i < 20; i++) {
        th_limit_result r = check(l, "9.9.9.9", "acme", c, T0);
        TH_CHECK(!r.allowed);
        TH_CHECK_STR(r.reason, "concurrency");
    }
    th_limit_release(l, held.slot);
    /* one more fits every window and the bucket: nothing was charged by the 20 refusals */
    th_limit_result r = hit(l, "9.9.9.9", "acme", c, T0);
    TH_CHECK(r.allowed);
    r = hit(l, "9.9.9.9", "acme", c, T0);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.reason, "ip_rpm");
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_tenants_and_keys_are_separate)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
                            "tenants:\n  acme: { rpm: 3 }\n  beta: { rpm: 2 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    for (int i = 0; i < 3; i++)
        TH_CHECK(hit(l, "1.1.1.1", "acme", c, T0).allowed);
    th_limit_result r = hit(l, "1.1.1.1", "acme", c, T0 + 30000);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.reason, "tenant_rpm");
    TH_CHECK_INT(r.limit, 3);
    TH_CHECK_INT(r.retry_after_s, 30);
    TH_CHECK(hit(l, "1.1.1.1", "beta", c, T0).allowed);
    TH_CHECK(hit(l, "1.1.1.1", "beta", c, T0).allowed);
    r = hit(l, "1.1.1.1", "beta", c, T0);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.reason, "tenant_rpm");
    TH_CHECK_INT(r.limit, 2);
    /* no tenant: no tenant limits */
    for (int i = 0; i < 10; i++)
        TH_CHECK(hit(l, "1.1.1.1", NULL, c, T0).allowed);
    /* per-key RPM, per key */
    got g = {0};
    th_limit_req kr = {.ip = "1.1.1.1", .tenant = "", .key_id = "k1", .key_rpm = 2};
    for (int i = 0; i < 3; i++) {
        th_limit_check(l, &kr, T0, on_result, &g);
        if (g.res.allowed) th_limit_release(l, g.res.slot);
    }
    TH_CHECK_INT(g.n, 3);
    TH_CHECK(!g.res.allowed);
    TH_CHECK_STR(g.res.reason, "key_rpm");
    kr.key_id = "k2";
    th_limit_check(l, &kr, T0, on_result, &g);
    TH_CHECK(g.res.allowed);
    th_limit_release(l, g.res.slot);
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_ip_table_bounded_and_expiring)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 0, ip_rpm: 2, concurrency: 0 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    /* lazy expiry: idle entries go as later checks come */
    TH_CHECK(hit(l, "192.168.0.1", NULL, c, T0).allowed);
    TH_CHECK(hit(l, "192.168.0.2", NULL, c, T0).allowed);
    TH_CHECK_INT(th_limiter_ip_entries(l), 2);
    TH_CHECK(hit(l, "192.168.0.3", NULL, c, T0 + 120000).allowed);
    TH_CHECK_INT(th_limiter_ip_entries(l), 3); /* untouched for exactly 2 min: kept */
    TH_CHECK(hit(l, "192.168.0.3", NULL, c, T0 + 120001).allowed);
    TH_CHECK_INT(th_limiter_ip_entries(l), 1);

    /* bounded: the least recently used entry goes first. 10.255.255.255 is at its limit, then 70,000
     * other addresses come; it is evicted (and so allowed again), the most recent ones are still there. */
    uint64_t t = T0 + 200000;
    TH_CHECK(hit(l, "10.255.255.255", NULL, c, t).allowed);
    TH_CHECK(hit(l, "10.255.255.255", NULL, c, t).allowed);
    TH_CHECK(!hit(l, "10.255.255.255", NULL, c, t).allowed);
    char ip[32];
    for (int i = 0; i < 70000; i++) {
        snprintf(ip, sizeof ip, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        th_limit_result r = hit(l, ip, NULL, c, t);
        if (!r.allowed) {
            TH_CHECK(r.allowed);
            break;
        }
    }
    TH_CHECK_INT(th_limiter_ip_entries(l), 65536);
    snprintf(ip, sizeof ip, "10.%d.%d.%d", (69999 >> 16) & 255, (69999 >> 8) & 255, 69999 & 255);
    TH_CHECK(hit(l, ip, NULL, c, t).allowed);
    TH_CHECK(!hit(l, ip, NULL, c, t).allowed); /* still remembered: 2 hits */
    TH_CHECK(hit(l, "10.255.255.255", NULL, c, t).allowed);
    TH_CHECK_INT(th_limiter_ip_entries(l), 65536);
    /* all idle after 2 minutes */
    th_limiter_sweep(l, t + 120001);
    TH_CHECK_INT(th_limiter_ip_entries(l), 0);
    th_limiter_free(l);
    th_config_unref(c);
}

TH_TEST(test_free_with_slots_held)
{
    th_config *c = cfg_from("rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 5 }\n"
                            "tenants:\n  acme: { concurrency: 2 }\n");
    TH_REQUIRE(c != NULL);
    th_limiter *l = th_limiter_new(NULL, c, NULL, NULL);
    TH_REQUIRE(l != NULL);
    th_limit_result a = check(l, "1.1.1.1", "acme", c, T0);
    th_limit_result b = check(l, "1.1.1.1", NULL, c, T0);
    TH_CHECK(a.allowed && b.allowed);
    th_limiter_free(l);
    th_limit_release(NULL, a.slot); /* the slots outlive the limiter; releasing only frees them */
    th_limit_release(NULL, b.slot);
    th_config_unref(c);
}

/* ---- Redis backend -------------------------------------------------------------------------------- */

static bool wait_connected(uv_loop_t *loop, th_redis *r, bool want, uint64_t timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, hl_on_tick, 5, 5);
    uint64_t deadline = th_mono_ms() + timeout_ms;
    while (th_redis_connected(r) != want && th_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return th_redis_connected(r) == want;
}

static void on_pong(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    (*(int *)ud)++;
}

/* A PING round trip on one hub's connection: what it sent before (a release) has been processed. */
static void sync_conn(uv_loop_t *loop, th_redis *r)
{
    int n = 0;
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    th_redis_cmd(r, on_pong, &n, 1, argv, lens);
    hl_run_until(loop, &n, 1, 2000);
}

/* A check through the loop: waits for the callback. */
static th_limit_result rcheck(uv_loop_t *loop, th_limiter *l, const th_limit_req *req, uint64_t now)
{
    got g = {0};
    th_limit_check(l, req, now, on_result, &g);
    if (!hl_run_until(loop, &g.n, 1, 3000)) {
        fprintf(stderr, "    no answer from the limiter\n");
        abort();
    }
    return g.res;
}

/* Two "hubs": two Redis connections and two limiters with the same config. */
typedef struct hubs {
    uv_loop_t loop;
    rp_server s;
    th_config *cfg;
    th_redis *r[2];
    th_limiter *l[2];
} hubs;

static int hubs_start(hubs *h, const char *rate_limit_yaml, uint64_t redis_timeout_ms)
{
    memset(h, 0, sizeof *h);
    h->s.debug_command = true;
    if (rp_start(&h->s) != 0) return -1;
    uv_loop_init(&h->loop);
    char yaml[512];
    snprintf(yaml, sizeof yaml,
             "rate_limit: %s\n"
             "redis: { url: \"redis://127.0.0.1:%d/0\", prefix: \"t%d:\", timeout: %llums }\n"
             "tenants:\n  acme: { rpm: 0, rate: 1, burst: 3, concurrency: 1 }\n",
             rate_limit_yaml, h->s.port, (int)getpid(), (unsigned long long)redis_timeout_ms);
    h->cfg = cfg_from(yaml);
    if (h->cfg == NULL) return -1;
    for (int i = 0; i < 2; i++) {
        char err[128];
        h->r[i] = th_redis_new(&h->loop, h->cfg->redis.url, h->cfg->redis.timeout_ms, NULL, err, sizeof err);
        if (h->r[i] == NULL) return -1;
        h->l[i] = th_limiter_new(&h->loop, h->cfg, h->r[i], NULL);
        if (h->l[i] == NULL) return -1;
        if (!wait_connected(&h->loop, h->r[i], true, 3000)) return -1;
    }
    return 0;
}

static void hubs_stop(hubs *h)
{
    for (int i = 0; i < 2; i++) {
        th_limiter_free(h->l[i]);
        th_redis_free(h->r[i]);
    }
    uv_run(&h->loop, UV_RUN_DEFAULT);
    uv_loop_close(&h->loop);
    rp_kill(&h->s);
    th_config_unref(h->cfg);
}

TH_TEST(test_redis_burst_shared_by_two_hubs)
{
    hubs h;
    TH_REQUIRE(hubs_start(&h, "{ global_rpm: 10, ip_rpm: 0, concurrency: 0, backend: redis }", 1000) == 0);
    TH_CHECK_STR(th_limiter_backend(h.l[0]), "redis");
    uint64_t now = th_wall_ms();
    th_limit_req req = {.ip = "10.0.0.1", .tenant = "", .key_id = ""};
    int allowed = 0;
    for (int i = 0; i < 10; i++) {
        th_limit_result r = rcheck(&h.loop, h.l[i % 2], &req, now + (uint64_t)i);
        allowed += r.allowed;
        TH_CHECK(!r.degraded);
        TH_CHECK_INT(r.limit, 10);
        TH_CHECK_INT(r.remaining, 9 - i);
        TH_CHECK_INT(r.reset_s, 60);
        th_limit_release(h.l[i % 2], r.slot);
    }
    TH_CHECK_INT(allowed, 10);
    for (int i = 0; i < 2; i++) {
        th_limit_result r = rcheck(&h.loop, h.l[i], &req, now + 10);
        TH_CHECK(!r.allowed);
        TH_CHECK(!r.degraded);
        TH_CHECK_INT(r.status, 429);
        TH_CHECK_STR(r.reason, "global_rpm");
        TH_CHECK_INT(r.limit, 10);
        TH_CHECK_INT(r.retry_after_s, 60);
    }
    /* the window moves with now_ms: after 60 s from the first hit, one is free again */
    th_limit_result r = rcheck(&h.loop, h.l[1], &req, now + 60000);
    TH_CHECK(r.allowed);
    th_limit_release(h.l[1], r.slot);
    r = rcheck(&h.loop, h.l[0], &req, now + 60000);
    TH_CHECK(!r.allowed);
    TH_CHECK_INT(r.retry_after_s, 1);
    hubs_stop(&h);
}

/* The script reads a window's oldest hit only for the window that refuses or is closest to refusing: the
 * reset it reports is that window's, whichever window that is. */
TH_TEST(test_redis_reset_of_the_closest_window)
{
    hubs h;
    TH_REQUIRE(hubs_start(&h, "{ global_rpm: 100, ip_rpm: 3, concurrency: 0, backend: redis }", 1000) == 0);
    uint64_t now = th_wall_ms();
    th_limit_req a = {.ip = "10.0.0.1", .tenant = "", .key_id = ""};
    th_limit_req b = {.ip = "10.0.0.2", .tenant = "", .key_id = ""};
    th_limit_result r = rcheck(&h.loop, h.l[0], &a, now);
    TH_CHECK(r.allowed);
    TH_CHECK_INT(r.limit, 3);
    TH_CHECK_INT(r.remaining, 2);
    TH_CHECK_INT(r.reset_s, 60); /* an empty window */
    th_limit_release(h.l[0], r.slot);
    r = rcheck(&h.loop, h.l[1], &a, now + 20000);
    TH_CHECK(r.allowed);
    TH_CHECK_INT(r.limit, 3);
    TH_CHECK_INT(r.remaining, 1);
    TH_CHECK_INT(r.reset_s, 40); /* A's first hit leaves 60 s after it */
    th_limit_release(h.l[1], r.slot);
    r = rcheck(&h.loop, h.l[0], &b, now + 30000);
    TH_CHECK(r.allowed);
    TH_CHECK_INT(r.limit, 3);
    TH_CHECK_INT(r.remaining, 2);
    TH_CHECK_INT(r.reset_s, 60); /* B's window is empty; the global one (97 left) is not the closest */
    th_limit_release(h.l[0], r.slot);
    r = rcheck(&h.loop, h.l[1], &a, now + 45000);
    TH_CHECK(r.allowed);
    TH_CHECK_INT(r.remaining, 0);
    TH_CHECK_INT(r.reset_s, 15);
    th_limit_release(h.l[1], r.slot);
    r = rcheck(&h.loop, h.l[0], &a, now + 50000);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.reason, "ip_rpm");
    TH_CHECK_INT(r.retry_after_s, 10);
    hubs_stop(&h);
}

TH_TEST(test_redis_tenant_bucket_and_concurrency)
{
    hubs h;
    TH_REQUIRE(hubs_start(&h, "{ global_rpm: 0, ip_rpm: 0, concurrency: 2, backend: redis }", 1000) == 0);
    uint64_t now = th_wall_ms();
    const th_tenant_conf *acme = th_config_tenant(h.cfg, "acme");
    TH_REQUIRE(acme != NULL);
    th_limit_req treq = {.ip = "1.1.1.1", .tenant = "acme", .key_id = "", .tconf = acme};
    th_limit_req req = {.ip = "1.1.1.1", .tenant = "", .key_id = ""};

    /* tenant concurrency 1 across hubs; global concurrency 2 across hubs */
    th_limit_result a = rcheck(&h.loop, h.l[0], &treq, now);
    TH_CHECK(a.allowed);
    TH_CHECK_INT(a.limit, 3); /* bucket: burst 3 */
    TH_CHECK_INT(a.remaining, 2);
    th_limit_result b = rcheck(&h.loop, h.l[1], &treq, now);
    TH_CHECK(!b.allowed);
    TH_CHECK_STR(b.reason, "tenant_concurrency");
    th_limit_result g = rcheck(&h.loop, h.l[1], &req, now);
    TH_CHECK(g.allowed);
    th_limit_result g2 = rcheck(&h.loop, h.l[1], &req, now);
    TH_CHECK(!g2.allowed);
    TH_CHECK_STR(g2.reason, "concurrency");
    TH_CHECK_INT(g2.limit, 2);
    TH_CHECK(g2.retry_after_s >= 1);
    th_limit_release(h.l[1], g.slot); /* sent on hub 1's connection, before its next check */
    g2 = rcheck(&h.loop, h.l[1], &req, now);
    TH_CHECK(g2.allowed);
    th_limit_release(h.l[1], g2.slot);
    sync_conn(&h.loop, h.r[1]);
    th_limit_release(h.l[0], a.slot);
    sync_conn(&h.loop, h.r[0]);
    /* the bucket: 3 in a burst in total (1 used above), then 1/s */
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        th_limit_result r = rcheck(&h.loop, h.l[i % 2], &treq, now + 1);
        if (r.allowed) {
            ok++;
            th_limit_release(h.l[i % 2], r.slot);
            sync_conn(&h.loop, h.r[i % 2]);
        } else {
            TH_CHECK_STR(r.reason, "tenant_rate");
            TH_CHECK_INT(r.retry_after_s, 1);
        }
    }
    TH_CHECK_INT(ok, 2);
    th_limit_result r = rcheck(&h.loop, h.l[0], &treq, now + 1001);
    TH_CHECK(r.allowed);
    th_limit_release(h.l[0], r.slot);
    sync_conn(&h.loop, h.r[0]);
    r = rcheck(&h.loop, h.l[1], &treq, now + 1002);
    TH_CHECK(!r.allowed);
    hubs_stop(&h);
}

TH_TEST(test_redis_fail_open_closed_and_recovery)
{
    hubs h;
    TH_REQUIRE(hubs_start(&h, "{ global_rpm: 5, ip_rpm: 0, concurrency: 0, backend: redis }", 1000) == 0);
    /* hub 1 fails closed */
    th_config_errors errs = {0};
    char yaml[256];
    snprintf(yaml, sizeof yaml, "rate_limit: { global_rpm: 5, backend: redis, on_backend_error: closed }\n");
    th_config *closed = th_config_parse(yaml, strlen(yaml), &errs);
    th_config_errors_free(&errs);
    TH_REQUIRE(closed != NULL);
    th_limiter_set_config(h.l[1], closed);
    th_config_unref(closed);

    uint64_t now = th_wall_ms();
    th_limit_req req = {.ip = "10.0.0.1", .tenant = "", .key_id = ""};
    th_limit_result r = rcheck(&h.loop, h.l[0], &req, now);
    TH_CHECK(r.allowed && !r.degraded);
    th_limit_release(h.l[0], r.slot);

    rp_kill(&h.s);
    TH_CHECK(wait_connected(&h.loop, h.r[0], false, 3000));
    TH_CHECK(wait_connected(&h.loop, h.r[1], false, 3000));
    /* open: allowed, degraded, and the hub's own local limits still apply (5 per minute) */
    int ok = 0;
    for (int i = 0; i < 6; i++) {
        r = rcheck(&h.loop, h.l[0], &req, now + 1);
        TH_CHECK(r.degraded);
        if (r.allowed) {
            ok++;
            th_limit_release(h.l[0], r.slot);
        } else {
            TH_CHECK_STR(r.reason, "global_rpm");
            TH_CHECK_INT(r.status, 429);
        }
    }
    TH_CHECK_INT(ok, 5);
    /* closed: 503 backend_unavailable */
    r = rcheck(&h.loop, h.l[1], &req, now + 1);
    TH_CHECK(!r.allowed);
    TH_CHECK_INT(r.status, 503);
    TH_CHECK_STR(r.reason, "backend_unavailable");
    TH_CHECK_INT(r.retry_after_s, 1);
    TH_CHECK(r.slot == NULL);

    /* the server comes back on the same port: both hubs reconnect by themselves */
    TH_REQUIRE(rp_start(&h.s) == 0);
    TH_CHECK(wait_connected(&h.loop, h.r[0], true, 8000));
    TH_CHECK(wait_connected(&h.loop, h.r[1], true, 8000));
    r = rcheck(&h.loop, h.l[1], &req, now + 2);
    TH_CHECK(r.allowed);
    TH_CHECK(!r.degraded);
    th_limit_release(h.l[1], r.slot);
    r = rcheck(&h.loop, h.l[0], &req, now + 2);
    TH_CHECK(r.allowed);
    TH_CHECK(!r.degraded);
    TH_CHECK_INT(r.remaining, 3); /* a fresh server: 2 of 5 used */
    th_limit_release(h.l[0], r.slot);
    hubs_stop(&h);
}

TH_TEST(test_redis_timeout_is_a_backend_error)
{
    hubs h;
    TH_REQUIRE(hubs_start(&h, "{ global_rpm: 5, ip_rpm: 0, concurrency: 0, backend: redis }", 100) == 0);
    /* a third client keeps the server busy for 400 ms (sent without waiting for the reply) */
    struct timeval tv = {1, 0};
    redisContext *busy = redisConnectWithTimeout("127.0.0.1", h.s.port, tv);
    TH_REQUIRE(busy != NULL && busy->err == 0);
    redisAppendCommand(busy, "DEBUG SLEEP 0.4");
    int done = 0;
    while (!done)
        if (redisBufferWrite(busy, &done) != REDIS_OK) break;
    rp_sleep_ms(20);
    th_limit_req req = {.ip = "10.0.0.1", .tenant = "", .key_id = ""};
    /* degraded below shows the timeout path answered, not the late reply */
    th_limit_result r = rcheck(&h.loop, h.l[0], &req, th_wall_ms());
    TH_CHECK(r.allowed);
    TH_CHECK(r.degraded);
    th_limit_release(h.l[0], r.slot);
    redisReply *rep = NULL;
    if (redisGetReply(busy, (void **)&rep) == REDIS_OK && rep) freeReplyObject(rep);
    redisFree(busy);
    /* the connection survived: the next check is answered by Redis again */
    r = rcheck(&h.loop, h.l[0], &req, th_wall_ms());
    TH_CHECK(r.allowed);
    TH_CHECK(!r.degraded);
    th_limit_release(h.l[0], r.slot);
    hubs_stop(&h);
}

TH_TEST_MAIN()
