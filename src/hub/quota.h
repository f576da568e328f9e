/* quota: character quotas per tenant, per day and per month (UTC), in code points.
 *
 * reserve -> commit on success / refund on failure. A reservation counts
 * against the quota at once (so parallel requests cannot overshoot), and
 * only committed characters are usage. Local backend: usage is durable
 * under data_dir as an append-only log (one line per commit, fsync'd in
 * batches within 100 ms and always before a commit's response is
 * finished... see quota.c) plus a periodic snapshot; a restart, even after
 * kill -9, replays the log and loses no committed unit. Redis backend:
 * counters per tenant and window with expiry, reserved with an atomic Lua
 * script. */
#ifndef TH_HUB_QUOTA_H
#define TH_HUB_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "hub/config.h"
#include "hub/redis.h"

typedef struct th_quota th_quota;
typedef struct th_quota_resv th_quota_resv;

typedef struct th_quota_result {
    bool allowed;
    bool degraded;          /* backend unreachable, on_backend_error open */
    const char *window;     /* when refused: "day" or "month" */
    uint64_t limit, used;   /* of the window that refused */
    int64_t retry_after_s;  /* until that window resets */
    th_quota_resv *resv;    /* when allowed (NULL if the tenant has no quota) */
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

#endif
