/* quota: character quotas per tenant, per day and per month (UTC), in code points.
 *
 * reserve -> commit on success / refund on failure. A reservation counts
 * against the quota at once (so parallel requests cannot overshoot), and
 * only committed characters are usage. Local backend: usage is durable
 * under data_dir as an append-only log (one line per commit, written
 * with write(2) before th_quota_commit returns -- so before the response is finished and
 * safe from kill -9 -- and fdatasync'd in batches within 100 ms, so a power
 * cut loses at most the last ~100 ms; see quota.c) plus a periodic
 * snapshot; a restart, even after kill -9, replays the log and loses no
 * committed unit. Redis backend (used when redis != NULL):
 * counters per tenant and window with expiry, reserved with an atomic Lua
 * script. */
#ifndef TH_HUB_QUOTA_H
#define TH_HUB_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "config/config.h"
#include "store/redis.h"

typedef struct th_quota th_quota;
typedef struct th_quota_resv th_quota_resv;

typedef struct th_quota_result {
    bool allowed;
    bool degraded;         /* backend unreachable, on_backend_error open */
    const char *window;    /* when refused: "day", "month" or "backend" (Redis failed, fail closed) */
    uint64_t limit, used;  /* of the window that refused; used = committed + reserved */
    int64_t retry_after_s; /* until that window resets */
    th_quota_resv *resv;   /* when allowed (NULL if the tenant has no quota) */
} th_quota_result;

typedef void (*th_quota_cb)(void *ud, const th_quota_result *res);

/** data_dir from cfg (created if missing). redis may be NULL. NULL with err set on failure (e.g. the
 * usage log cannot be opened or is corrupt beyond its last complete line). */
th_quota *th_quota_new(uv_loop_t *loop, const th_config *cfg, th_redis *redis, th_log *log, char *err,
                       size_t errlen);
void th_quota_free(th_quota *q); /* flushes the log */
/** Reserves chars for tenant (tconf's chars_per_day / chars_per_month; 0 = unlimited). cb exactly once. */
void th_quota_reserve(th_quota *q, const char *tenant, const th_tenant_conf *tconf, uint64_t chars,
                      uint64_t now_ms, th_quota_cb cb, void *ud);
/** Success: the reserved characters become usage (durably). */
void th_quota_commit(th_quota *q, th_quota_resv *r);
/** Failure: the reservation is given back. */
void th_quota_refund(th_quota *q, th_quota_resv *r);

typedef struct th_usage_row {
    char tenant[64];
    uint64_t chars, requests;
} th_usage_row;
/** Usage in the current day or month window (window = "day" | "month"); tenant NULL = all.
 * Returns a malloc'd array (*n rows). Local backend: synchronous. */
th_usage_row *th_quota_usage(th_quota *q, const char *window, const char *tenant, uint64_t now_ms, size_t *n);

/* Added. */

/** A snapshot is written after this many commits... */
#define TH_QUOTA_SNAPSHOT_EVERY 10000
/** ...or when unsnapshotted commits are older than this (checked every quarter of it). */
#define TH_QUOTA_SNAPSHOT_MS (5 * 60 * 1000)

/** Local backend: writes usage.snapshot now (atomically) and rotates usage.log. 0 or -1 (logged). */
int th_quota_snapshot(th_quota *q);

/** rows NULL and ok false when the backend failed; rows valid during the callback only. */
typedef void (*th_quota_usage_cb)(void *ud, const th_usage_row *rows, size_t n, bool ok);
/** th_quota_usage for both backends: synchronous (cb before returning) for the local one; with Redis,
 * tenant NULL means the tenants of the config given to th_quota_new, and only rows with requests are
 * returned (as for the local backend). The synchronous th_quota_usage cannot ask Redis and returns zeros
 * for the Redis backend. */
void th_quota_usage_fetch(th_quota *q, const char *window, const char *tenant, uint64_t now_ms,
                          th_quota_usage_cb cb, void *ud);

/** A reload: the config the "all tenants" usage query lists (takes a reference, drops the old one) and
 * rate_limit.on_backend_error. */
void th_quota_set_config(th_quota *q, const th_config *cfg);

/* Added: the quota's part of one combined Redis script (governance/policy.c). */

/** RESERVE_LUA: KEYS day, month; ARGV chars, day limit, month limit, day ttl, month ttl; answers {1} or
 * {0, window, limit, used}. SETTLE_LUA: KEYS day, month; ARGV chars, commit (1/0), day ttl, month ttl. */
const char *th_quota_lua_reserve(void);
const char *th_quota_lua_settle(void);
/** True when a reservation for this tenant goes to Redis (Redis backend and a quota set). */
bool th_quota_redis_needed(const th_quota *q, const th_tenant_conf *tconf);
typedef struct th_quota_call th_quota_call;
/** The keys and arguments of a reservation, without sending it; NULL unless th_quota_redis_needed (or on
 * ENOMEM). */
th_quota_call *th_quota_call_new(th_quota *q, const char *tenant, const th_tenant_conf *tconf, uint64_t chars,
                                 uint64_t now_ms);
/** 2 keys then 5 arguments, valid until the call is finished or freed. */
void th_quota_call_args(const th_quota_call *k, const char *const **argv, const size_t **lens);
/** The answer (RESERVE_LUA's array, or st != OK) becomes res as th_quota_reserve's would (on_backend_error
 * included); res->resv belongs to the caller. Frees k. */
void th_quota_call_finish(th_quota *q, th_quota_call *k, th_redis_status st, const th_redis_reply *rep,
                          th_quota_result *res);
void th_quota_call_free(th_quota_call *k);
/** A reservation held in Redis (settled with SETTLE_LUA)? */
bool th_quota_resv_is_redis(const th_quota_resv *r);
/** Frees a Redis reservation and hands out SETTLE_LUA's two keys (malloc'd: the caller frees them) and
 * four arguments, instead of sending the commit / refund itself. -1 (and r freed) when r is not one. */
int th_quota_resv_detach(th_quota_resv *r, bool commit, char **keys, char args[4][24]);

#endif
