/* policy: the governance chain of one request in one Redis round trip.
 *
 * With rate_limit.backend redis, a request's limits, its quota
 * reservation and (cache.backend redis) its cache lookup are one
 * EVALSHA on the policy lane, atomically: every limit is checked and
 * charged, the quota is reserved, and the cached audio comes back with
 * the answer when it is small (TH_CACHE_INLINE_MAX), or only its size when
 * it is large (then it is fetched on the bulk lane). After the response
 * has ended, the concurrency release and the quota commit or refund ride
 * with the next admissions' script (or leave on their own within a few
 * milliseconds), without waiting for the answer. Each part's answer is turned
 * into the same result its own module gives (th_limit_result,
 * th_quota_result, th_cache_lookup), on_backend_error included, so the
 * caller's handling is the same on both paths. Loop thread only. */
#ifndef TH_HUB_POLICY_H
#define TH_HUB_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "governance/cache.h"
#include "governance/limit.h"
#include "observability/metrics.h"
#include "governance/quota.h"
#include "store/redis.h"

typedef struct th_policy th_policy;

/** NULL (nothing to combine) unless the limiter's backend is Redis; also NULL on ENOMEM. cache may be NULL,
 * metrics may be NULL. The objects must outlive the policy (free it first). */
th_policy *th_policy_new(th_redis *redis, th_limiter *l, th_quota *q, th_cache *c, th_metrics *m,
                         th_log *log);
/** Admissions still waiting for Redis are refused at once (on_limit with 503 backend_unavailable). Clear
 * any pointer to p before: the hooks run inside this call. */
void th_policy_free(th_policy *p);

typedef struct th_policy_req {
    const th_limit_req *limit;
    const char *tenant;          /* quota */
    const th_tenant_conf *tconf; /* quota: NULL = none */
    uint64_t chars;
    const char *cache_key;           /* NULL = no cache step */
    const th_cache_follower_cb *fcb; /* for a join, as th_cache_get's */
    uint64_t now_ms;
} th_policy_req;

typedef struct th_policy_hooks {
    /** The limits' answer; return false to stop (refused, or the client left). */
    bool (*on_limit)(void *ud, const th_limit_result *res);
    /** The quota's answer, when the tenant has a quota; return false to stop. */
    bool (*on_quota)(void *ud, const th_quota_result *res);
    /** The cache's answer, when cache_key was given (as th_cache_get's callback). */
    th_cache_cb on_cache;
    /** Admitted and no cache step: go on. */
    void (*on_admitted)(void *ud);
} th_policy_hooks;

/** One round trip; the hooks run in order, later (or at once when Redis is down). */
void th_policy_admit(th_policy *p, const th_policy_req *req, const th_policy_hooks *hooks, void *ud);

/** After the response: gives the slot back and commits (ok) or refunds the reservation in one script,
 * without waiting for it. Either may be NULL. */
void th_policy_after(th_policy *p, th_limit_slot *slot, th_quota_resv *resv, bool ok);

/** Admissions and finishes queued and not sent to Redis yet. */
size_t th_policy_queued(const th_policy *p);

#endif
