/* test_policy: the governance chain in one Redis round trip (governance/policy.c), against a real
 * redis-server on a free loopback port (redis_proc.h).
 *
 * What is checked: the admission's answer reaches each module's hook in order and as that module would
 * give it (limits, then quota, then cache or admitted); a limit refusal charges nothing; a quota refusal
 * keeps the RPM windows charged and gives the concurrency holders back inside the script; the settle
 * script after the response releases the slot and commits the reservation; the cache answer comes inline
 * when small and over the bulk lane when large, across two hubs; a server whose scripts were flushed
 * (NOSCRIPT) gets the script again and the answer is the same; Redis down follows on_backend_error, and
 * Redis back is used again; a policy freed with admissions in flight refuses them at once, exactly once. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "governance/cache.h"
#include "config/config.h"
#include "governance/limit.h"
#include "governance/policy.h"
#include "governance/quota.h"
#include "store/redis.h"
#include "redis_proc.h"
#include "th_test.h"

/* ---- a hub's governance objects on one Redis ---------------------------------------------------- */

typedef struct hub {
    th_redis *r;
    th_limiter *l;
    th_quota *q;
    th_cache *c;
    th_policy *p;
} hub;

typedef struct env {
    uv_loop_t loop;
    rp_server s;
    th_config *cfg;
    char dir[64];
    hub h[2];
} env;

static th_config *cfg_from(const char *yaml)
{
    th_config_errors errs = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "    config: %s: %s\n", errs.items[i].path, errs.items[i].message);
    th_config_errors_free(&errs);
    return c;
}

static int hub_open(env *e, hub *h)
{
    char err[256] = "";
    h->r =
        th_redis_new_pool(&e->loop, e->cfg->redis.url, e->cfg->redis.timeout_ms, NULL, NULL, err, sizeof err);
    if (h->r == NULL) return -1;
    h->l = th_limiter_new(&e->loop, e->cfg, h->r, NULL);
    h->q = th_quota_new(&e->loop, e->cfg, h->r, NULL, err, sizeof err);
    h->c = th_cache_new(&e->loop, e->cfg, h->r, NULL);
    if (h->l == NULL || h->q == NULL || h->c == NULL) return -1;
    h->p = th_policy_new(h->r, h->l, h->q, h->c, NULL, NULL);
    if (h->p == NULL) return -1;
    uint64_t deadline = th_mono_ms() + 3000;
    while (!th_redis_connected(h->r) && th_mono_ms() < deadline)
        hl_run_until_set(&e->loop, NULL, 10);
    return th_redis_connected(h->r) ? 0 : -1;
}

static void hub_close(hub *h)
{
    th_policy_free(h->p);
    th_cache_free(h->c);
    th_quota_free(h->q);
    th_limiter_free(h->l);
    th_redis_free(h->r);
}

/* Two hubs on one new redis-server with this rate_limit section (which has its own on_backend_error) and
 * this tenants section. -1 when there is no redis-server. */
static int env_start_cfg(env *e, const char *on_error, const char *rate_limit, const char *tenants)
{
    memset(e, 0, sizeof *e);
    if (rp_start(&e->s) != 0) return -1;
    uv_loop_init(&e->loop);
    snprintf(e->dir, sizeof e->dir, "/tmp/th_policy_XXXXXX");
    if (mkdtemp(e->dir) == NULL) return -1;
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "data_dir: \"%s\"\n"
             "rate_limit: { %s, backend: redis, on_backend_error: %s }\n"
             "redis: { url: \"redis://127.0.0.1:%d/0\", prefix: \"pt:\", timeout: 1000ms }\n"
             "cache: { enabled: true, backend: redis, max_bytes: 4MiB, ttl: 10m }\n"
             "%s",
             e->dir, rate_limit, on_error, e->s.port, tenants);
    e->cfg = cfg_from(yaml);
    if (e->cfg == NULL) return -1;
    for (int i = 0; i < 2; i++)
        if (hub_open(e, &e->h[i]) != 0) return -1;
    return 0;
}

/* The default tenants: acme with a quota of 100 characters a day. */
static int env_start_with(env *e, const char *on_error, const char *rate_limit)
{
    return env_start_cfg(e, on_error, rate_limit, "tenants:\n  acme:\n    quota: { chars_per_day: 100 }\n");
}

/* The default: global_rpm 6, concurrency 1. on_error: open | closed. */
static int env_start(env *e, const char *on_error)
{
    return env_start_with(e, on_error, "global_rpm: 6, ip_rpm: 0, concurrency: 1");
}

static void env_stop(env *e)
{
    for (int i = 0; i < 2; i++)
        hub_close(&e->h[i]);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    uv_loop_close(&e->loop);
    rp_kill(&e->s);
    th_config_unref(e->cfg);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", e->dir);
    if (system(cmd) != 0) fprintf(stderr, "    (could not remove %s)\n", e->dir);
}

/* ---- one admission, recorded ---------------------------------------------------------------------- */

typedef struct rec {
    int limits, quotas, caches, admitted, hooks; /* hooks: any of them, in order */
    int order[4];
    th_limit_result lres;
    th_quota_result qres;
    th_cache_outcome outcome;
    th_cache_flight *flight;
    uint8_t *hit;
    size_t hit_len;
} rec;

static void rec_note(rec *r, int which)
{
    if (r->hooks < 4) r->order[r->hooks] = which;
    r->hooks++;
}

static bool h_limit(void *ud, const th_limit_result *res)
{
    rec *r = ud;
    r->limits++;
    r->lres = *res;
    rec_note(r, 1);
    return res->allowed;
}

static bool h_quota(void *ud, const th_quota_result *res)
{
    rec *r = ud;
    r->quotas++;
    r->qres = *res;
    rec_note(r, 2);
    return res->allowed;
}

static void h_cache(void *ud, const th_cache_lookup *res)
{
    rec *r = ud;
    r->caches++;
    r->outcome = res->outcome;
    r->flight = res->flight;
    if (res->outcome == TH_CACHE_HIT) {
        r->hit = malloc(res->entry.len + 1);
        if (r->hit != NULL) memcpy(r->hit, res->entry.data, res->entry.len);
        r->hit_len = res->entry.len;
    }
    rec_note(r, 3);
}

static void h_admitted(void *ud)
{
    rec *r = ud;
    r->admitted++;
    rec_note(r, 4);
}

static const th_policy_hooks hooks = {h_limit, h_quota, h_cache, h_admitted};

static bool rec_ended(const rec *r);

/* Admits through h and waits until the chain has ended (a refusal, the cache's answer, or admitted). */
static void admit(env *e, hub *h, const char *tenant, uint64_t chars, const char *ckey, rec *r)
{
    memset(r, 0, sizeof *r);
    const th_tenant_conf *tc = tenant != NULL ? th_config_tenant(e->cfg, tenant) : NULL;
    th_limit_req lr = {.ip = "10.1.2.3", .tenant = tenant != NULL ? tenant : "", .key_id = "", .tconf = tc};
    th_policy_req pr = {.limit = &lr,
                        .tenant = tenant != NULL ? tenant : "",
                        .tconf = tc,
                        .chars = chars,
                        .cache_key = ckey,
                        .now_ms = th_wall_ms()};
    th_policy_admit(h->p, &pr, &hooks, r);
    uint64_t deadline = th_mono_ms() + 5000;
    for (;;) {
        if (rec_ended(r) || th_mono_ms() > deadline) break;
        hl_run_until_set(&e->loop, NULL, 5);
    }
}

static bool rec_ended(const rec *r)
{
    return (r->limits && !r->lres.allowed) || (r->quotas && !r->qres.allowed) || r->caches || r->admitted;
}

/* n admissions from ips[i] for tenants[i] (NULL or "": none) with chars[i] characters (NULL: 1 each), no
 * cache step, in one loop turn through h at now_ms; then waits until every one has ended. */
static void admit_turn_at(env *e, hub *h, int n, const char *const *ips, const char *const *tenants,
                          const uint64_t *chars, rec *r, uint64_t now_ms)
{
    for (int i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        const char *t = tenants != NULL ? tenants[i] : "";
        const th_tenant_conf *tc = t[0] ? th_config_tenant(e->cfg, t) : NULL;
        th_limit_req lr = {.ip = ips[i], .tenant = t, .key_id = "", .tconf = tc};
        th_policy_req pr = {
            .limit = &lr, .tenant = t, .tconf = tc, .chars = chars != NULL ? chars[i] : 1, .now_ms = now_ms};
        th_policy_admit(h->p, &pr, &hooks, &r[i]);
    }
    uint64_t deadline = th_mono_ms() + 5000;
    for (;;) {
        int ended = 0;
        for (int i = 0; i < n; i++)
            ended += rec_ended(&r[i]);
        if (ended == n || th_mono_ms() > deadline) break;
        hl_run_until_set(&e->loop, NULL, 5);
    }
}

/* admit_turn_at now, every admission for tenant (NULL: none; at most 16 admissions). */
static void admit_turn(env *e, hub *h, int n, const char *const *ips, const char *tenant,
                       const uint64_t *chars, rec *r)
{
    const char *tns[16];
    for (int i = 0; i < n && i < 16; i++)
        tns[i] = tenant;
    admit_turn_at(e, h, n < 16 ? n : 16, ips, tenant != NULL ? tns : NULL, chars, r, th_wall_ms());
}

static void on_pong(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    (void)st;
    (void)rep;
    (*(int *)ud)++;
}

/* A PING behind what h sent on its first policy connection (the settle script): that has run. */
/* Until what h's policy queued has left (finishes wait a little for admissions), then one round trip on
 * the same lane. */
static void sync_hub(env *e, hub *h)
{
    uint64_t until = th_mono_ms() + 3000;
    while (th_policy_queued(h->p) > 0 && th_mono_ms() < until)
        uv_run(&e->loop, UV_RUN_ONCE);
    int n = 0;
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    th_redis_cmd(h->r, on_pong, &n, 1, argv, lens);
    hl_run_until(&e->loop, &n, 1, 3000);
}

/* A number from INFO commandstats (calls of cmd), through a plain connection; -1 when absent. */
static long long calls_of(const env *e, const char *cmd)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", e->s.port, tv);
    long long v = 0;
    if (c == NULL || c->err) {
        if (c) redisFree(c);
        return -1;
    }
    redisReply *r = redisCommand(c, "INFO commandstats");
    char want[64];
    snprintf(want, sizeof want, "cmdstat_%s:calls=", cmd);
    const char *p = r != NULL && r->type == REDIS_REPLY_STRING ? strstr(r->str, want) : NULL;
    if (p != NULL) v = strtoll(p + strlen(want), NULL, 10);
    if (r) freeReplyObject(r);
    redisFree(c);
    return v;
}

static void redis_do(const env *e, const char *cmd)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", e->s.port, tv);
    if (c == NULL) return;
    if (!c->err) {
        redisReply *r = redisCommand(c, cmd);
        if (r) freeReplyObject(r);
    }
    redisFree(c);
}

/* An integer answer through a plain connection; -1 on any error. */
static long long redis_int(const env *e, const char *cmd)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", e->s.port, tv);
    long long v = -1;
    if (c != NULL && !c->err) {
        redisReply *r = redisCommand(c, cmd);
        if (r != NULL && r->type == REDIS_REPLY_INTEGER) v = r->integer;
        if (r) freeReplyObject(r);
    }
    if (c) redisFree(c);
    return v;
}

static void key_of(const char *text, char out[TH_CACHE_KEY_LEN + 1])
{
    th_cache_key_parts kp = {
        .route = "p", .voice = "v", .format = "mp3", .input = text, .input_len = strlen(text)};
    th_cache_key(&kp, out);
}

/* ---- tests ---------------------------------------------------------------------------------------- */

TH_TEST(limits_quota_and_settle_in_one_script)
{
    env e;
    if (env_start(&e, "closed") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0], *b = &e.h[1];
    rec r1, r2, r3, r4;
    /* allowed: limits, then quota (40 of 100 reserved), then admitted (no cache step) */
    admit(&e, a, "acme", 40, NULL, &r1);
    TH_CHECK_INT(r1.limits, 1);
    TH_CHECK(r1.lres.allowed && !r1.lres.degraded && r1.lres.slot != NULL);
    TH_CHECK_INT(r1.quotas, 1);
    TH_CHECK(r1.qres.allowed && r1.qres.resv != NULL);
    TH_CHECK_INT(r1.admitted, 1);
    TH_CHECK(r1.hooks == 3 && r1.order[0] == 1 && r1.order[1] == 2 && r1.order[2] == 4);

    /* the other hub, while the slot is held: concurrency 1 refuses, the quota is not asked */
    admit(&e, b, "acme", 10, NULL, &r2);
    TH_CHECK(!r2.lres.allowed);
    TH_CHECK_INT(r2.lres.status, 429);
    TH_CHECK_STR(r2.lres.reason, "concurrency");
    TH_CHECK_INT(r2.quotas, 0);
    TH_CHECK_INT(r2.admitted, 0);

    /* settle: slot released, 40 committed */
    th_policy_after(a->p, r1.lres.slot, r1.qres.resv, true);
    sync_hub(&e, a);

    /* 40 + 70 > 100: the quota refuses inside the script; the limits had said yes */
    admit(&e, b, "acme", 70, NULL, &r3);
    TH_CHECK(r3.lres.allowed);
    TH_CHECK(r3.lres.slot == NULL); /* the script gave the concurrency holder back itself */
    TH_CHECK_INT(r3.quotas, 1);
    TH_CHECK(!r3.qres.allowed);
    TH_CHECK_STR(r3.qres.window, "day");
    TH_CHECK_INT(r3.qres.limit, 100);
    TH_CHECK_INT(r3.qres.used, 40);
    TH_CHECK_INT(r3.admitted, 0);

    /* so the slot is free: a request without a tenant gets it at once */
    admit(&e, a, NULL, 5, NULL, &r4);
    TH_CHECK(r4.lres.allowed && r4.lres.slot != NULL);
    TH_CHECK_INT(r4.quotas, 0); /* no tenant, no quota step */
    TH_CHECK_INT(r4.admitted, 1);
    th_policy_after(a->p, r4.lres.slot, NULL, true);
    sync_hub(&e, a);

    /* global_rpm 6 counts across both hubs: r1, r3 (a quota refusal keeps the RPM charge) and r4 so far;
     * r2 (refused by a limit) charged nothing. Three more are allowed, then global_rpm refuses. */
    for (int i = 0; i < 3; i++) {
        rec r;
        admit(&e, i % 2 ? a : b, NULL, 1, NULL, &r);
        TH_CHECK(r.lres.allowed);
        TH_CHECK_INT(r.lres.remaining, 2 - i);
        th_policy_after((i % 2 ? a : b)->p, r.lres.slot, NULL, true);
        sync_hub(&e, i % 2 ? a : b);
    }
    rec r5;
    admit(&e, a, NULL, 1, NULL, &r5);
    TH_CHECK(!r5.lres.allowed);
    TH_CHECK_STR(r5.lres.reason, "global_rpm");
    TH_CHECK_INT(r5.lres.limit, 6);

    th_policy_after(a->p, NULL, NULL, true); /* nothing to send: a no-op */
    env_stop(&e);
}

TH_TEST(cache_answer_inline_when_small_bulk_lane_when_large)
{
    env e;
    if (env_start(&e, "closed") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    redis_do(&e, "CONFIG SET maxmemory-policy noeviction");
    hub *a = &e.h[0], *b = &e.h[1];
    size_t sizes[2] = {5000, 200000}; /* under and over TH_CACHE_INLINE_MAX */
    for (int k = 0; k < 2; k++) {
        char key[TH_CACHE_KEY_LEN + 1];
        key_of(k == 0 ? "small entry" : "large entry", key);
        uint8_t *audio = malloc(sizes[k]);
        TH_REQUIRE(audio != NULL);
        for (size_t i = 0; i < sizes[k]; i++)
            audio[i] = (uint8_t)(i * 7 + (size_t)k);
        /* hub a: a miss; it leads and stores */
        rec r1;
        admit(&e, a, NULL, 1, key, &r1);
        TH_CHECK(r1.lres.allowed);
        TH_CHECK_INT(r1.caches, 1);
        TH_CHECK_INT(r1.outcome, TH_CACHE_LEAD);
        TH_CHECK_INT(r1.admitted, 0); /* the cache's answer replaces on_admitted */
        TH_REQUIRE(r1.flight != NULL);
        th_cache_flight_data(r1.flight, audio, sizes[k]);
        th_cache_flight_done(r1.flight, "audio/mpeg", "engine-x");
        th_policy_after(a->p, r1.lres.slot, NULL, true);
        hl_run_until_set(&e.loop, NULL, 200); /* the store is not awaited */
        sync_hub(&e, a);

        /* hub b: not in its memory, so the script asks Redis; a hit with the same bytes */
        th_redis_lane_stats before, after;
        th_redis_lane_get_stats(b->r, TH_REDIS_LANE_BULK, &before);
        rec r2;
        admit(&e, b, NULL, 1, key, &r2);
        TH_CHECK(r2.lres.allowed);
        TH_CHECK_INT(r2.caches, 1);
        TH_CHECK_INT(r2.outcome, TH_CACHE_HIT);
        TH_CHECK(r2.hit_len == sizes[k] && r2.hit != NULL && memcmp(r2.hit, audio, sizes[k]) == 0);
        th_redis_lane_get_stats(b->r, TH_REDIS_LANE_BULK, &after);
        /* small: inside the admission's answer; large: fetched on the bulk lane */
        if (k == 0)
            TH_CHECK_INT(after.commands - before.commands, 0);
        else
            TH_CHECK(after.commands - before.commands >= 1);
        th_policy_after(b->p, r2.lres.slot, NULL, true);
        sync_hub(&e, b);
        free(r2.hit);
        free(audio);
    }
    env_stop(&e);
}

TH_TEST(flushed_scripts_are_sent_again)
{
    env e;
    if (env_start(&e, "closed") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0];
    rec r;
    admit(&e, a, NULL, 1, NULL, &r); /* the first on the connection goes with EVAL, which loads it */
    TH_CHECK(r.admitted == 1);
    th_policy_after(a->p, r.lres.slot, NULL, true);
    sync_hub(&e, a);
    long long eval0 = calls_of(&e, "eval"), sha0 = calls_of(&e, "evalsha");
    admit(&e, a, NULL, 1, NULL, &r);
    TH_CHECK(r.admitted == 1);
    th_policy_after(a->p, r.lres.slot, NULL, true);
    sync_hub(&e, a);
    /* loaded now: the admission and the settle both went as EVALSHA */
    TH_CHECK_INT(calls_of(&e, "eval") - eval0, 0);
    TH_CHECK_INT(calls_of(&e, "evalsha") - sha0, 2);

    redis_do(&e, "SCRIPT FLUSH");
    long long eval1 = calls_of(&e, "eval");
    admit(&e, a, NULL, 1, NULL, &r); /* NOSCRIPT, then EVAL: the same answer */
    TH_CHECK_INT(r.limits, 1);
    TH_CHECK(r.lres.allowed && !r.lres.degraded);
    TH_CHECK_INT(r.lres.remaining, 3); /* 6 - 3 */
    TH_CHECK_INT(r.admitted, 1);
    TH_CHECK_INT(calls_of(&e, "eval") - eval1, 1);
    th_policy_after(a->p, r.lres.slot, NULL, true);
    sync_hub(&e, a);
    env_stop(&e);
}

TH_TEST(redis_down_follows_on_backend_error_and_recovers)
{
    const char *modes[2] = {"closed", "open"};
    for (int m = 0; m < 2; m++) {
        env e;
        if (env_start(&e, modes[m]) != 0) {
            fprintf(stderr, "    (no redis-server: skipped)\n");
            return;
        }
        hub *a = &e.h[0];
        rp_kill(&e.s);
        uint64_t deadline = th_mono_ms() + 3000;
        while (th_redis_connected(a->r) && th_mono_ms() < deadline)
            hl_run_until_set(&e.loop, NULL, 10);
        TH_CHECK(!th_redis_connected(a->r));
        rec r;
        admit(&e, a, "acme", 10, NULL, &r);
        TH_CHECK_INT(r.limits, 1);
        if (m == 0) { /* closed: 503, nothing else asked */
            TH_CHECK(!r.lres.allowed);
            TH_CHECK_INT(r.lres.status, 503);
            TH_CHECK_STR(r.lres.reason, "backend_unavailable");
            TH_CHECK_INT(r.quotas, 0);
        } else { /* open: allowed, degraded, on to the quota and the request */
            TH_CHECK(r.lres.allowed && r.lres.degraded);
            TH_CHECK_INT(r.quotas, 1);
            TH_CHECK(r.qres.allowed && r.qres.degraded);
            TH_CHECK_INT(r.admitted, 1);
            th_policy_after(a->p, r.lres.slot, r.qres.resv, true);
        }
        /* Redis back on the same port: the pool reconnects and the script runs again */
        TH_REQUIRE(rp_start(&e.s) == 0);
        deadline = th_mono_ms() + 10000;
        while (!th_redis_connected(a->r) && th_mono_ms() < deadline)
            hl_run_until_set(&e.loop, NULL, 20);
        TH_CHECK(th_redis_connected(a->r));
        admit(&e, a, "acme", 10, NULL, &r);
        TH_CHECK(r.lres.allowed && !r.lres.degraded);
        TH_CHECK(r.qres.allowed && !r.qres.degraded);
        TH_CHECK_INT(r.qres.used, 0);
        TH_CHECK_INT(r.admitted, 1);
        th_policy_after(a->p, r.lres.slot, r.qres.resv, false);
        sync_hub(&e, a);
        env_stop(&e);
    }
}

TH_TEST(free_refuses_admissions_in_flight_once)
{
    env e;
    if (env_start(&e, "closed") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0];
    rec r[3];
    memset(r, 0, sizeof r);
    th_limit_req lr = {.ip = "10.9.9.9", .tenant = "", .key_id = ""};
    th_policy_req pr = {.limit = &lr, .tenant = "", .now_ms = th_wall_ms()};
    for (int i = 0; i < 3; i++)
        th_policy_admit(a->p, &pr, &hooks, &r[i]);
    for (int i = 0; i < 3; i++)
        TH_CHECK_INT(r[i].limits, 0); /* sent, not answered yet */
    th_policy_free(a->p);
    a->p = NULL;
    for (int i = 0; i < 3; i++) {
        TH_CHECK_INT(r[i].limits, 1);
        TH_CHECK(!r[i].lres.allowed);
        TH_CHECK_INT(r[i].lres.status, 503);
    }
    sync_hub(&e, a); /* the replies arrive: they only free their records */
    hl_run_until_set(&e.loop, NULL, 50);
    for (int i = 0; i < 3; i++)
        TH_CHECK(r[i].limits == 1 && r[i].admitted == 0 && r[i].hooks == 1);
    env_stop(&e);
}

/* Gives back what the allowed ones of r hold (slots, reservations). */
static void after_all(hub *h, rec *r, int n)
{
    for (int i = 0; i < n; i++) {
        th_policy_after(h->p, r[i].lres.allowed ? r[i].lres.slot : NULL,
                        r[i].quotas && r[i].qres.allowed ? r[i].qres.resv : NULL, true);
        r[i].lres.slot = NULL;
        r[i].qres.resv = NULL;
    }
}

static long long scripts_run(const env *e)
{
    return calls_of(e, "evalsha") + calls_of(e, "eval");
}

/* The cache's stores wait for the turn: small ones leave on the policy lane with the next turn's script (or
 * on their own after the linger), a larger one goes to the bulk lane at once, and a policy freed with stores
 * waiting sends them. Every stored value is then in Redis. */
/* A miss for text whose 3000-byte answer ends, its slot then given back. key gets the text's cache key.
 * Returns how many stores and finishes wait in h's policy right after the answer ended (-1: no flight). */
static int store_waits(env *e, hub *h, const char *text, const uint8_t *audio, char key[TH_CACHE_KEY_LEN + 1])
{
    key_of(text, key);
    rec r;
    admit(e, h, NULL, 1, key, &r);
    if (r.flight == NULL) return -1;
    sync_hub(e, h);
    th_cache_flight_data(r.flight, audio, 3000);
    th_cache_flight_done(r.flight, "audio/mpeg", "engine-x");
    int waiting = (int)th_policy_queued(h->p);
    th_policy_after(h->p, r.lres.slot, NULL, true);
    return waiting;
}

TH_TEST(stores_ride_with_the_turn)
{
    env e;
    if (env_start_with(&e, "closed", "global_rpm: 0, ip_rpm: 0, concurrency: 0") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    redis_do(&e, "CONFIG SET maxmemory-policy noeviction");
    hub *a = &e.h[0];
    size_t sizes[4] = {3000, 3000, 40000, 3000}; /* the third is over the policy's POL_STORE_MAX */
    char keys[4][TH_CACHE_KEY_LEN + 1];
    uint8_t *audio = malloc(40000);
    TH_REQUIRE(audio != NULL);
    memset(audio, 0x5a, 40000);
    rec r[4];
    for (int k = 0; k < 4; k++) {
        char text[32];
        snprintf(text, sizeof text, "stored entry %d", k);
        key_of(text, keys[k]);
        admit(&e, a, NULL, 1, keys[k], &r[k]);
        TH_REQUIRE(r[k].flight != NULL);
        th_policy_after(a->p, r[k].lres.slot, NULL, true);
    }
    sync_hub(&e, a);
    th_redis_lane_stats p0, b0, p1, b1;
    th_redis_lane_get_stats(a->r, TH_REDIS_LANE_POLICY, &p0);
    th_redis_lane_get_stats(a->r, TH_REDIS_LANE_BULK, &b0);
    for (int k = 0; k < 3; k++) {
        th_cache_flight_data(r[k].flight, audio, sizes[k]);
        th_cache_flight_done(r[k].flight, "audio/mpeg", "engine-x");
    }
    /* the two small ones wait in the policy; the large one went to the bulk lane at once */
    TH_CHECK_INT(th_policy_queued(a->p), 2);
    th_redis_lane_get_stats(a->r, TH_REDIS_LANE_BULK, &b1);
    TH_CHECK_INT(b1.commands - b0.commands, 1);
    /* an admission's turn takes them along: one script and two stores on the policy lane */
    rec r5;
    admit(&e, a, NULL, 1, NULL, &r5);
    TH_CHECK(r5.lres.allowed);
    TH_CHECK_INT(th_policy_queued(a->p), 0);
    th_redis_lane_get_stats(a->r, TH_REDIS_LANE_POLICY, &p1);
    TH_CHECK_INT(p1.commands - p0.commands, 3);
    th_policy_after(a->p, r5.lres.slot, NULL, true);
    /* with no admission after it, a store leaves on its own */
    th_cache_flight_data(r[3].flight, audio, sizes[3]);
    th_cache_flight_done(r[3].flight, "audio/mpeg", "engine-x");
    sync_hub(&e, a);
    for (int k = 0; k < 4; k++) {
        char *rk = th_cache_redis_key(a->c, keys[k]);
        TH_REQUIRE(rk != NULL);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "STRLEN %s", rk);
        TH_CHECK(redis_int(&e, cmd) > (long long)sizes[k]);
        free(rk);
    }
    /* freed with a store waiting: it is sent before the policy goes */
    char key5[TH_CACHE_KEY_LEN + 1];
    TH_CHECK_INT(store_waits(&e, a, "stored at the end", audio, key5), 1);
    th_policy_free(a->p);
    a->p = NULL;
    char *rk = th_cache_redis_key(a->c, key5);
    TH_REQUIRE(rk != NULL);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "EXISTS %s", rk);
    uint64_t until = th_mono_ms() + 3000;
    while (redis_int(&e, cmd) != 1 && th_mono_ms() < until)
        hl_run_until_set(&e.loop, NULL, 10);
    TH_CHECK_INT(redis_int(&e, cmd), 1);
    free(rk);
    /* a policy made later on the same cache takes its stores; freeing an earlier one leaves them with it */
    th_policy *old = th_policy_new(a->r, a->l, a->q, a->c, NULL, NULL);
    a->p = th_policy_new(a->r, a->l, a->q, a->c, NULL, NULL);
    TH_REQUIRE(old != NULL && a->p != NULL);
    th_policy_free(old);
    char key6[TH_CACHE_KEY_LEN + 1];
    TH_CHECK_INT(store_waits(&e, a, "stored after a new policy", audio, key6), 1);
    free(audio);
    env_stop(&e);
}

TH_TEST(one_turn_is_one_script_with_exact_counts)
{
    env e;
    if (env_start_with(&e, "closed", "global_rpm: 0, ip_rpm: 5, concurrency: 0") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0];
    rec r[8];
    const char *ipa[8] = {"10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1",
                          "10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.1"};
    admit_turn(&e, a, 1, (const char *const[]){"10.0.0.9"}, NULL, NULL, r); /* loads the script */
    after_all(a, r, 1);
    sync_hub(&e, a);
    long long s0 = scripts_run(&e);
    /* eight in one turn, ip_rpm 5: decided one after another on exact counts, in one script */
    admit_turn(&e, a, 8, ipa, NULL, NULL, r);
    TH_CHECK_INT(scripts_run(&e) - s0, 1);
    for (int i = 0; i < 8; i++) {
        TH_CHECK_INT(r[i].limits, 1);
        if (i < 5) {
            TH_CHECK(r[i].lres.allowed && !r[i].lres.degraded);
            TH_CHECK_INT(r[i].lres.remaining, 4 - i);
            TH_CHECK_INT(r[i].lres.limit, 5);
        } else {
            TH_CHECK(!r[i].lres.allowed);
            TH_CHECK_INT(r[i].lres.status, 429);
            TH_CHECK_STR(r[i].lres.reason, "ip_rpm");
            TH_CHECK(r[i].lres.retry_after_s >= 59 && r[i].lres.retry_after_s <= 60);
        }
    }
    after_all(a, r, 8);
    /* the quota inside a turn: 40 + 40 fit in 100, the third does not; every one keeps its RPM charge */
    const char *ipb[3] = {"10.0.0.2", "10.0.0.2", "10.0.0.2"};
    uint64_t chars[3] = {40, 40, 40};
    admit_turn(&e, a, 3, ipb, "acme", chars, r);
    TH_CHECK(r[0].qres.allowed && r[1].qres.allowed);
    TH_CHECK(r[0].admitted == 1 && r[1].admitted == 1);
    TH_CHECK_INT(r[2].quotas, 1);
    TH_CHECK(!r[2].qres.allowed);
    TH_CHECK_INT(r[2].qres.used, 80);
    after_all(a, r, 3);
    admit_turn(&e, a, 3, ipb, NULL, NULL, r);
    TH_CHECK(r[0].lres.allowed && r[1].lres.allowed && !r[2].lres.allowed);
    TH_CHECK_INT(r[1].lres.remaining, 0);
    after_all(a, r, 3);
    sync_hub(&e, a);
    /* a wrong type under one admission's key fails that admission only (on_backend_error closed) */
    redis_do(&e, "SET pt:rl:w:ip:10.0.0.66 not-a-window");
    const char *ipc[3] = {"10.0.0.3", "10.0.0.66", "10.0.0.3"};
    admit_turn(&e, a, 3, ipc, NULL, NULL, r);
    TH_CHECK(r[0].lres.allowed && r[2].lres.allowed);
    TH_CHECK_INT(r[2].lres.remaining, 3);
    TH_CHECK(!r[1].lres.allowed);
    TH_CHECK_INT(r[1].lres.status, 503);
    TH_CHECK_STR(r[1].lres.reason, "backend_unavailable");
    after_all(a, r, 3);
    sync_hub(&e, a);
    env_stop(&e);
}

TH_TEST(finishes_leave_before_the_turns_admissions)
{
    env e;
    if (env_start_with(&e, "closed", "global_rpm: 0, ip_rpm: 0, concurrency: 1") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0], *b = &e.h[1];
    rec r1, r[2];
    admit(&e, a, NULL, 1, NULL, &r1);
    TH_CHECK(r1.lres.allowed && r1.lres.slot != NULL);
    /* the other hub while the slot is held: refused */
    admit(&e, b, NULL, 1, NULL, &r[0]);
    TH_CHECK(!r[0].lres.allowed);
    TH_CHECK_STR(r[0].lres.reason, "concurrency");
    /* one turn: r1's finish, then two admissions; the finish runs first, so one of them gets the slot */
    long long s0 = scripts_run(&e);
    th_policy_after(a->p, r1.lres.slot, NULL, true);
    const char *ips[2] = {"10.0.0.1", "10.0.0.1"};
    admit_turn(&e, a, 2, ips, NULL, NULL, r);
    TH_CHECK_INT(scripts_run(&e) - s0, 1);
    TH_CHECK(r[0].lres.allowed && r[0].lres.slot != NULL);
    TH_CHECK(!r[1].lres.allowed);
    TH_CHECK_STR(r[1].lres.reason, "concurrency");
    /* a finish alone leaves without waiting, and the slot is free for the other hub */
    th_policy_after(a->p, r[0].lres.slot, NULL, true);
    hl_run_until_set(&e.loop, NULL, 20);
    sync_hub(&e, a);
    admit(&e, b, NULL, 1, NULL, &r1);
    TH_CHECK(r1.lres.allowed && r1.lres.slot != NULL);
    th_policy_after(b->p, r1.lres.slot, NULL, true);
    sync_hub(&e, b);
    env_stop(&e);
}

TH_TEST(leaked_slots_expire_with_their_hub)
{
    env e;
    if (env_start_with(&e, "closed", "global_rpm: 0, ip_rpm: 0, concurrency: 2") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0], *b = &e.h[1];
    const char *ips[3] = {"10.0.0.1", "10.0.0.1", "10.0.0.1"};
    rec r[3], q[3];
    uint64_t t0 = th_wall_ms();
    /* hub a takes both slots and never gives them back (as if it had crashed) */
    admit_turn_at(&e, a, 2, ips, NULL, NULL, r, t0);
    TH_CHECK(r[0].lres.allowed && r[1].lres.allowed);
    TH_CHECK_INT(redis_int(&e, "HGET pt:rl:h:g nonexistent"), -1);
    TH_CHECK_INT(redis_int(&e, "HLEN pt:rl:h:g"), 2); /* a's count and its expiry */
    /* within the slot TTL (limits.request_timeout + 60 s; the key lives as long) they still count */
    long long ttl = redis_int(&e, "PTTL pt:rl:h:g");
    TH_REQUIRE(ttl > 60000);
    ttl = (ttl + 999) / 1000 * 1000;
    admit_turn_at(&e, b, 1, ips, NULL, NULL, q, t0 + (uint64_t)ttl - 2000);
    TH_CHECK(!q[0].lres.allowed);
    TH_CHECK_STR(q[0].lres.reason, "concurrency");
    /* past it, a's slots are leaks: dropped, and b gets both */
    admit_turn_at(&e, b, 3, ips, NULL, NULL, q, t0 + (uint64_t)ttl + 1);
    TH_CHECK(q[0].lres.allowed && q[1].lres.allowed && !q[2].lres.allowed);
    TH_CHECK_INT(redis_int(&e, "HLEN pt:rl:h:g"), 2); /* b's fields only */
    after_all(b, q, 3);
    sync_hub(&e, b);
    TH_CHECK_INT(redis_int(&e, "EXISTS pt:rl:h:g"), 0); /* b gave both back: the fields went */
    /* a's own late releases of the dropped slots leave nothing behind */
    after_all(a, r, 2);
    sync_hub(&e, a);
    TH_CHECK_INT(redis_int(&e, "EXISTS pt:rl:h:g"), 0);
    env_stop(&e);
}

TH_TEST(releases_are_grouped_by_count_and_hub)
{
    env e;
    if (env_start_with(&e, "closed", "global_rpm: 0, ip_rpm: 0, concurrency: 5") != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    hub *a = &e.h[0], *b = &e.h[1];
    const char *ips[5] = {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"};
    rec r[3], q[2], x[1];
    admit_turn(&e, a, 3, ips, NULL, NULL, r);
    admit_turn(&e, b, 2, ips, NULL, NULL, q);
    TH_CHECK(r[0].lres.allowed && r[1].lres.allowed && r[2].lres.allowed);
    TH_CHECK(q[0].lres.allowed && q[1].lres.allowed);
    TH_CHECK_INT(redis_int(&e, "HLEN pt:rl:h:g"), 4); /* two hubs: a count and an expiry each */
    /* one of a's slots and both of b's leave in b's turn: each count is lowered under the hub id its slot
     * was taken with (the one in the slot's member), whichever policy sends the release */
    th_policy_after(b->p, r[0].lres.slot, NULL, true);
    r[0].lres.slot = NULL;
    after_all(b, q, 2);
    sync_hub(&e, b);
    TH_CHECK_INT(redis_int(&e, "HLEN pt:rl:h:g"), 2);
    admit_turn(&e, b, 1, ips, NULL, NULL, x); /* 2 held of 5: three more fit */
    TH_CHECK(x[0].lres.allowed);
    after_all(b, x, 1);
    after_all(a, &r[1], 2);
    sync_hub(&e, b);
    sync_hub(&e, a);
    TH_CHECK_INT(redis_int(&e, "EXISTS pt:rl:h:g"), 0); /* every count reached 0 and went */
    env_stop(&e);
}

/* ---- the script decides as the local limiter does ------------------------------------------------ */

typedef struct lrec {
    int n;
    th_limit_result res;
} lrec;

static void on_local(void *ud, const th_limit_result *res)
{
    lrec *r = ud;
    r->n++;
    r->res = *res;
}

static uint32_t rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*s >> 33);
}

/* Random turns of one to twelve admissions from three IPs and three tenants (a bucket, windows, slots),
 * the clock moving by 0-4 s between turns (windows slide over the 60 s), slots given back at random
 * between turns: every answer of the script (runs of one profile's admissions decided without reading
 * its limits again, the hub's order by profile) is the local limiter's for the same requests in the same
 * order. */
TH_TEST(turns_decide_as_the_local_limiter_does)
{
    static const char limits[] = "global_rpm: 90, ip_rpm: 18, concurrency: 10";
    static const char tenants[] = "tenants:\n  acme: { rpm: 40, rate: 2, burst: 5, concurrency: 4 }\n"
                                  "  beta: { rpm: 9 }\n";
    env e;
    if (env_start_cfg(&e, "closed", limits, tenants) != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    char yaml[512];
    snprintf(yaml, sizeof yaml, "rate_limit: { %s, backend: local }\n%s", limits, tenants);
    th_config *lcfg = cfg_from(yaml);
    TH_CHECK(lcfg != NULL);
    th_limiter *loc = lcfg != NULL ? th_limiter_new(&e.loop, lcfg, NULL, NULL) : NULL;
    TH_CHECK(loc != NULL);
    hub *a = &e.h[0];
    const char *ipset[6] = {"10.9.0.1", "10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"},
               *tset[3] = {"acme", "beta", ""};
    enum { HELD_MAX = 512 };
    th_limit_slot *held_l[HELD_MAX], *held_r[HELD_MAX];
    int nheld = 0, compared = 0, allowed = 0, refused[7] = {0};
    static const char *const reasons[7] = {
        "", "global_rpm", "ip_rpm", "tenant_rpm", "tenant_rate", "concurrency", "tenant_concurrency"};
    uint64_t seed = 20261206, now = th_wall_ms();
    for (int t = 0; t < 60 && loc != NULL; t++) {
        int n = 1 + (int)(rnd(&seed) % 12);
        const char *ips[12], *tns[12];
        for (int i = 0; i < n; i++) {
            ips[i] = ipset[rnd(&seed) % 6];
            tns[i] = tset[rnd(&seed) % 3];
        }
        rec r[12];
        admit_turn_at(&e, a, n, ips, tns, NULL, r, now);
        /* the script's order: the turn's admissions by profile (IP and tenant), first seen first, stable */
        int order[12], no = 0;
        bool done[12] = {false};
        for (int i = 0; i < n; i++) {
            if (done[i]) continue;
            for (int j = i; j < n; j++)
                if (!done[j] && strcmp(ips[j], ips[i]) == 0 && strcmp(tns[j], tns[i]) == 0) {
                    done[j] = true;
                    order[no++] = j;
                }
        }
        lrec lr[12] = {0};
        for (int k = 0; k < no; k++) {
            int i = order[k];
            const th_tenant_conf *tc = tns[i][0] ? th_config_tenant(lcfg, tns[i]) : NULL;
            th_limit_req q = {.ip = ips[i], .tenant = tns[i], .key_id = "", .tconf = tc};
            th_limit_check(loc, &q, now, on_local, &lr[i]);
        }
        for (int i = 0; i < n; i++) {
            const th_limit_result *x = &r[i].lres, *y = &lr[i].res;
            TH_CHECK_INT(r[i].limits, 1);
            TH_CHECK_INT(lr[i].n, 1);
            TH_CHECK(x->allowed == y->allowed);
            TH_CHECK_STR(x->reason ? x->reason : "", y->reason ? y->reason : "");
            TH_CHECK_INT(x->limit, y->limit);
            TH_CHECK_INT(x->remaining, y->remaining);
            TH_CHECK_INT(x->reset_s, y->reset_s);
            TH_CHECK_INT(x->retry_after_s, y->retry_after_s);
            compared++;
            if (x->allowed && y->allowed && nheld < HELD_MAX) {
                held_r[nheld] = x->slot;
                held_l[nheld++] = y->slot;
                allowed++;
            } else {
                if (x->allowed) th_policy_after(a->p, x->slot, NULL, true);
                if (y->allowed) th_limit_release(loc, y->slot);
                for (int k = 1; k < 7; k++)
                    if (!y->allowed && y->reason != NULL && strcmp(y->reason, reasons[k]) == 0) refused[k]++;
            }
        }
        /* give back some of the slots: the finishes ride with the next turn, ahead of its admissions */
        int give = nheld > 0 ? (int)(rnd(&seed) % (unsigned)(nheld + 1)) : 0;
        for (int k = 0; k < give; k++) {
            int j = (int)(rnd(&seed) % (unsigned)nheld);
            th_policy_after(a->p, held_r[j], NULL, true);
            th_limit_release(loc, held_l[j]);
            held_r[j] = held_r[nheld - 1];
            held_l[j] = held_l[--nheld];
        }
        now += rnd(&seed) % 3 == 0 ? 0 : rnd(&seed) % 4000;
    }
    for (int k = 0; k < nheld; k++) {
        th_policy_after(a->p, held_r[k], NULL, true);
        th_limit_release(loc, held_l[k]);
    }
    sync_hub(&e, a);
    /* the turns did reach every kind of limit, and let requests through */
    TH_CHECK(compared > 300);
    TH_CHECK(allowed > 50);
    for (int k = 1; k < 7; k++)
        TH_CHECK(refused[k] > 0);
    fprintf(
        stderr,
        "    %d answers compared, %d allowed; refused: global %d ip %d tenant %d rate %d conc %d tconc %d\n",
        compared, allowed, refused[1], refused[2], refused[3], refused[4], refused[5], refused[6]);
    th_limiter_free(loc);
    th_config_unref(lcfg);
    env_stop(&e);
}

TH_TEST(new_needs_a_redis_limiter)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_from("rate_limit: { global_rpm: 5, backend: local }\n");
    TH_REQUIRE(cfg != NULL);
    th_limiter *l = th_limiter_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(l != NULL);
    TH_CHECK(th_policy_new(NULL, l, NULL, NULL, NULL, NULL) == NULL);
    th_policy_free(NULL);
    th_limiter_free(l);
    th_config_unref(cfg);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST_MAIN()
