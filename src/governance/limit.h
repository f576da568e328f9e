/* limit: rate limits and concurrency slots, in memory or shared through Redis.
 *
 * Each request is checked against, in order: global RPM, per-IP RPM,
 * tenant RPM (sliding window), tenant token bucket (rate/burst), per-key
 * RPM when configured, global concurrency, tenant concurrency. The first
 * limit that says no decides the 429 (reason, limit, remaining, reset,
 * retry-after); no counter is charged for a request that is refused.
 * Concurrency slots are held until th_limit_release, which must be called
 * on every path (done, error, disconnect). The per-IP table is bounded and
 * entries expire. With backend redis the same checks are one atomic Lua
 * script; when Redis is unreachable the result follows on_backend_error
 * (open: allowed, marked degraded; closed: refused with reason
 * "backend_unavailable" and status 503). Control routes are never checked. */
#ifndef TH_HUB_LIMIT_H
#define TH_HUB_LIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "config/config.h"
#include "store/redis.h"

typedef struct th_limiter th_limiter;
typedef struct th_limit_slot th_limit_slot;

typedef struct th_limit_req {
    const char *ip;              /* client IP text */
    const char *tenant;          /* "" = no tenant */
    const char *key_id;          /* "" = none */
    const th_tenant_conf *tconf; /* NULL = no tenant limits */
    int key_rpm;                 /* added: the API key's own RPM (sliding window); 0 = none. The config has no
                                    per-key field yet, so callers that have one set it here. */
} th_limit_req;

typedef struct th_limit_result {
    bool allowed;
    bool degraded;      /* the backend was unreachable and on_backend_error is open */
    int status;         /* 429, or 503 for backend_unavailable (closed) */
    const char *reason; /* "global_rpm", "ip_rpm", "tenant_rpm", "tenant_rate", "key_rpm",
                           "concurrency", "tenant_concurrency", "backend_unavailable" */
    int64_t limit, remaining;
    int64_t reset_s;       /* seconds until the limit that applies resets */
    int64_t retry_after_s; /* >= 1 when refused */
    th_limit_slot *slot;   /* when allowed: release with th_limit_release */
} th_limit_result;

typedef void (*th_limit_cb)(void *ud, const th_limit_result *res);

/** redis may be NULL (backend local). */
th_limiter *th_limiter_new(uv_loop_t *loop, const th_config *cfg, th_redis *redis, th_log *log);
void th_limiter_free(th_limiter *l);
/** Checks and charges. cb runs exactly once: synchronously for the local backend, later for Redis.
 * now_ms = wall clock ms (Redis windows are shared across hubs, so wall time). */
void th_limit_check(th_limiter *l, const th_limit_req *req, uint64_t now_ms, th_limit_cb cb, void *ud);
/** Gives a concurrency slot back (NULL is fine). Exactly once per allowed check. */
void th_limit_release(th_limiter *l, th_limit_slot *slot);
/** For /health and metrics. */
size_t th_limiter_ip_entries(const th_limiter *l);
const char *th_limiter_backend(const th_limiter *l);

/* Added. */
/** Concurrency slots currently held through this limiter (local count, both backends). */
size_t th_limiter_inflight(const th_limiter *l);
/** Drops every idle entry now (per-IP, tenant, key tables); checks also do a few steps each. For a
 * periodic timer of the hub. */
void th_limiter_sweep(th_limiter *l, uint64_t now_ms);
/** Applies a reloaded config's rate_limit numbers and on_backend_error (the backend cannot change;
 * counters and held slots are kept). */
void th_limiter_set_config(th_limiter *l, const th_config *cfg);

/* Added: the limiter's part of one combined Redis script (governance/policy.c). */

/** The limiter's Lua library (limit.c): defines the locals lim_check(kp, ap, now, hub), which checks the
 * request whose 7 keys start at KEYS[kp] and 9 profile arguments at ARGV[ap] and returns six values
 * (allowed, index, limit, remaining, reset_ms, retry_ms), lim_undo_slots(kp, ap) and lim_commit(), which
 * writes what the run charged. */
const char *th_limit_lua_lib(void);
typedef struct th_limit_call th_limit_call;
/** The keys and arguments of a Redis check, without sending it. NULL when the backend is not Redis (or on
 * ENOMEM): then use th_limit_check. */
th_limit_call *th_limit_call_new(th_limiter *l, const th_limit_req *req, uint64_t now_ms);
/** The 7 keys, the profile's 9 arguments (limits, rate, burst, slot TTL), now_ms and the hub id (the layout
 * of lim_check in th_limit_lua_lib); valid until the call is finished or freed. */
#define TH_LIMIT_CALL_KEYS 7
#define TH_LIMIT_CALL_PROFILE 9
#define TH_LIMIT_CALL_ARGS (TH_LIMIT_CALL_KEYS + TH_LIMIT_CALL_PROFILE + 2)
void th_limit_call_args(const th_limit_call *k, const char *const **argv, const size_t **lens);
/** The answer (reply = CHECK_LUA's array, or st != OK) becomes res exactly as th_limit_check's would,
 * including on_backend_error. slots_given_back: the script already removed the concurrency holders, so
 * res->slot stays NULL. Frees k. */
void th_limit_call_finish(th_limiter *l, th_limit_call *k, th_redis_status st, const th_redis_reply *reply,
                          bool slots_given_back, th_limit_result *res);
void th_limit_call_free(th_limit_call *k);
/** th_limit_release without sending anything: takes the slot from its limiter and, for Redis slots, hands
 * out the holder keys (up to 2) and the member to remove. They point into the slot, which the caller now
 * owns: th_limit_slot_free when they are sent. Returns the number of keys. */
int th_limit_slot_detach(th_limit_slot *slot, const char **keys, size_t *keylens, const char **member);
/** Frees a slot that th_limit_slot_detach took from its limiter. */
void th_limit_slot_free(th_limit_slot *slot);

#endif
