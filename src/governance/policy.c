/* policy: the governance chain in one Redis round trip (see policy.h).
 *
 * ADMIT (EVALSHA on the policy lane)
 *   KEYS: the limiter's 7 keys, then the quota's 2 (when the tenant has a quota), then the cache key (when
 *         the cache asks Redis).
 *   ARGV: has_quota, has_cache, inline_max, the limiter's 13 arguments, then the quota's 5.
 *   Returns {limits} when a limit refuses (nothing charged); {limits, quota} when the quota refuses (the
 *   RPM windows stay charged, as when the calls were separate, and the concurrency holders just added are
 *   removed again in the script); else {limits, quota, cache} with cache = {0} (miss), {size, value}
 *   (size <= inline_max) or {size} (larger: fetched with GET on the bulk lane).
 *   The limiter's and the quota's own scripts are the bodies of two local functions, so the checks are
 *   the very code of the separate path.
 * FINISH (EVALSHA on the policy lane, not awaited)
 *   KEYS: the slot's holder sets (0..2), then the reservation's 2 keys. ARGV: n holders, member, has
 *   settle, then the quota's 4 settle arguments. The quota's own SETTLE_LUA is its body.
 * A failure of either lane counts as the separate calls' failures did: on_backend_error decides for the
 * limits and the quota, and the cache answers a miss. */
#include "governance/policy.h"

#include <hiredis/read.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/str.h"

typedef struct adm adm;
struct adm {
    adm *prev, *next;
    th_policy *p; /* NULL once the policy is freed: the reply only frees this */
    th_limit_call *lc;
    th_quota_call *qc;
    char *ckey; /* the cache key (hex), when the script asks the cache */
    th_cache_follower_cb fcb;
    bool has_fcb;
    th_policy_hooks hooks;
    void *ud;
};

struct th_policy {
    th_log *log;
    th_redis *redis;
    th_limiter *l;
    th_quota *q;
    th_cache *c;
    th_metrics *m;
    char *admit_lua, *finish_lua;
    adm *pending;
};

static const char ADMIT_MAIN[] =
    "local hq, hc = ARGV[1] == '1', ARGV[2] == '1'\n"
    "local inl = tonumber(ARGV[3])\n"
    "local lk = {KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]}\n"
    "local la = {}\n"
    "for i = 1, 13 do la[i] = ARGV[3 + i] end\n"
    "local lr = limits(lk, la)\n"
    "if lr[1] == 0 then return {lr} end\n"
    "local qr = {1}\n"
    "local ki = 8\n"
    "if hq then\n"
    "  qr = reserve({KEYS[8], KEYS[9]}, {ARGV[17], ARGV[18], ARGV[19], ARGV[20], ARGV[21]})\n"
    "  ki = 10\n"
    "  if qr[1] == 0 then\n"
    "    if tonumber(la[7]) > 0 then redis.call('ZREM', lk[6], la[2]) end\n"
    "    if tonumber(la[8]) > 0 then redis.call('ZREM', lk[7], la[2]) end\n"
    "    return {lr, qr}\n"
    "  end\n"
    "end\n"
    "local cr = {0}\n"
    "if hc then\n"
    "  local n = redis.call('STRLEN', KEYS[ki])\n"
    "  if n > 0 and n <= inl then cr = {n, redis.call('GET', KEYS[ki])} elseif n > 0 then cr = {n} end\n"
    "end\n"
    "return {lr, qr, cr}\n";

static const char FINISH_MAIN[] =
    "local nh = tonumber(ARGV[1])\n"
    "for i = 1, nh do redis.call('ZREM', KEYS[i], ARGV[2]) end\n"
    "if ARGV[3] == '1' then settle({KEYS[nh + 1], KEYS[nh + 2]}, {ARGV[4], ARGV[5], ARGV[6], ARGV[7]}) end\n"
    "return 1\n";

/* "local function NAME(KEYS, ARGV)\n BODY end\n" for each part, then main. */
static char *compose(const char *n1, const char *b1, const char *n2, const char *b2, const char *main)
{
    th_buf b;
    th_buf_init(&b, 0); /* our own Lua source */
    const char *names[2] = {n1, n2}, *bodies[2] = {b1, b2};
    for (int i = 0; i < 2; i++) {
        if (names[i] == NULL) continue;
        if (th_buf_appendf(&b, "local function %s(KEYS, ARGV)\n", names[i]) != TH_BUF_OK ||
            th_buf_append_str(&b, bodies[i]) != TH_BUF_OK || th_buf_append_str(&b, "end\n") != TH_BUF_OK)
            goto fail;
    }
    if (th_buf_append_str(&b, main) != TH_BUF_OK || th_buf_cstr(&b) == NULL) goto fail;
    size_t n;
    return (char *)th_buf_steal(&b, &n);
fail:
    th_buf_free(&b);
    return NULL;
}

th_policy *th_policy_new(th_redis *redis, th_limiter *l, th_quota *q, th_cache *c, th_metrics *m, th_log *log)
{
    if (redis == NULL || l == NULL || q == NULL || strcmp(th_limiter_backend(l), "redis") != 0) return NULL;
    th_policy *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->log = log;
    p->redis = redis;
    p->l = l;
    p->q = q;
    p->c = c;
    p->m = m;
    p->admit_lua = compose("limits", th_limit_lua_check(), "reserve", th_quota_lua_reserve(), ADMIT_MAIN);
    p->finish_lua = compose("settle", th_quota_lua_settle(), NULL, NULL, FINISH_MAIN);
    if (p->admit_lua == NULL || p->finish_lua == NULL) {
        th_policy_free(p);
        return NULL;
    }
    return p;
}

static void adm_unlink(adm *a)
{
    th_policy *p = a->p;
    if (p == NULL) return;
    if (a->prev)
        a->prev->next = a->next;
    else
        p->pending = a->next;
    if (a->next) a->next->prev = a->prev;
    a->prev = a->next = NULL;
    a->p = NULL;
}

static void adm_free(adm *a)
{
    th_limit_call_free(a->lc);
    th_quota_call_free(a->qc);
    free(a->ckey);
    free(a);
}

void th_policy_free(th_policy *p)
{
    if (p == NULL) return;
    /* Admissions still waiting are refused now (as a backend failure; nothing of theirs is held yet); their
     * replies find no policy and only free their records. */
    while (p->pending != NULL) {
        adm *a = p->pending;
        adm_unlink(a);
        th_limit_result lres = {
            .status = 503, .reason = "backend_unavailable", .retry_after_s = 1, .reset_s = 1};
        a->hooks.on_limit(a->ud, &lres);
    }
    free(p->admit_lua);
    free(p->finish_lua);
    free(p);
}

static void observe(th_policy *p, const char *when, double n)
{
    if (p->m == NULL) return;
    const char *lbl[] = {when, NULL};
    th_metrics_observe(p->m, TH_M_REDIS_ROUND_TRIPS, lbl, n);
}

static bool is_array(const th_redis_reply *r, size_t min)
{
    return r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements >= min;
}

static void on_admit(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    adm *a = ud;
    th_policy *p = a->p;
    adm_unlink(a);
    if (p == NULL) {
        adm_free(a);
        return;
    }
    bool ok = st == TH_REDIS_OK && is_array(rep, 1);
    th_redis_status pst = ok ? TH_REDIS_OK : (st == TH_REDIS_OK ? TH_REDIS_ERROR : st);
    const th_redis_reply *lrep = ok ? &rep->element[0] : rep;
    const th_redis_reply *qrep = ok && rep->elements >= 2 ? &rep->element[1] : NULL;
    const th_redis_reply *crep = ok && rep->elements >= 3 ? &rep->element[2] : NULL;
    bool large = crep != NULL && is_array(crep, 1) && crep->elements == 1 &&
                 crep->element[0].type == REDIS_REPLY_INTEGER && crep->element[0].integer > 0;
    /* DOWN and BUSY are answered without a round trip */
    bool sent = st != TH_REDIS_DOWN && st != TH_REDIS_BUSY;
    observe(p, "before_first_byte", !sent ? 0 : large && a->ckey != NULL ? 2 : 1);

    /* the quota refused in the script: it gave the concurrency holders back there */
    bool qrefused = qrep != NULL && a->qc != NULL && is_array(qrep, 1) &&
                    qrep->element[0].type == REDIS_REPLY_INTEGER && qrep->element[0].integer == 0;
    th_limit_result lres;
    th_limit_call *lc = a->lc;
    a->lc = NULL;
    th_limit_call_finish(p->l, lc, pst, lrep, qrefused, &lres);
    bool limit_ok = lres.allowed;
    /* the limits allowed but the answer stops short: the script failed in between */
    th_redis_status qst = pst;
    if (pst == TH_REDIS_OK && qrep == NULL) qst = TH_REDIS_ERROR;
    if (!a->hooks.on_limit(a->ud, &lres) || !limit_ok) {
        /* a reservation made by the script is given back (the request does not go on) */
        if (limit_ok && a->qc != NULL && !qrefused && qst == TH_REDIS_OK) {
            th_quota_result qres;
            th_quota_call *qc = a->qc;
            a->qc = NULL;
            th_quota_call_finish(p->q, qc, qst, qrep, &qres);
            if (qres.resv) th_policy_after(p, NULL, qres.resv, false);
        }
        adm_free(a);
        return;
    }
    if (a->qc != NULL) {
        th_quota_result qres;
        th_quota_call *qc = a->qc;
        a->qc = NULL;
        th_quota_call_finish(p->q, qc, qst, qrep, &qres);
        if (!a->hooks.on_quota(a->ud, &qres)) {
            adm_free(a);
            return;
        }
    }
    if (a->ckey != NULL) {
        th_redis_status cst = crep != NULL ? TH_REDIS_OK : (pst == TH_REDIS_OK ? TH_REDIS_ERROR : pst);
        th_cache_resolve(p->c, a->ckey, a->has_fcb ? &a->fcb : NULL, cst, crep, a->hooks.on_cache, a->ud);
    } else {
        a->hooks.on_admitted(a->ud);
    }
    adm_free(a);
}

#define ADMIT_ARGS_MAX (7 + 2 + 1 + 3 + 13 + 5)

/* The admission script's KEYS (limits, quota?, cache?) then ARGV (flags, limits, quota?); returns the count
 * and sets *nkeys. rkey is the cache entry's Redis key when a->ckey is set; inl holds a flag's digits. */
static int admit_args(const adm *a, const char *rkey, const char *argv[ADMIT_ARGS_MAX],
                      size_t lens[ADMIT_ARGS_MAX], int *nkeys, char inl[24])
{
    const char *const *lv, *const *qv = NULL;
    const size_t *ll, *ql = NULL;
    th_limit_call_args(a->lc, &lv, &ll);
    if (a->qc) th_quota_call_args(a->qc, &qv, &ql);
    int n = 0;
    for (int i = 0; i < 7; i++, n++) {
        argv[n] = lv[i];
        lens[n] = ll[i];
    }
    if (a->qc)
        for (int i = 0; i < 2; i++, n++) {
            argv[n] = qv[i];
            lens[n] = ql[i];
        }
    if (a->ckey) {
        argv[n] = rkey;
        lens[n] = strlen(rkey);
        n++;
    }
    *nkeys = n;
    size_t inln = th_u64_dec(inl, TH_CACHE_INLINE_MAX);
    const char *flags[3] = {a->qc ? "1" : "0", a->ckey ? "1" : "0", inl};
    for (int i = 0; i < 3; i++, n++) {
        argv[n] = flags[i];
        lens[n] = i < 2 ? 1 : inln;
    }
    for (int i = 0; i < 13; i++, n++) {
        argv[n] = lv[7 + i];
        lens[n] = ll[7 + i];
    }
    if (a->qc)
        for (int i = 0; i < 5; i++, n++) {
            argv[n] = qv[2 + i];
            lens[n] = ql[2 + i];
        }
    return n;
}

void th_policy_admit(th_policy *p, const th_policy_req *req, const th_policy_hooks *hooks, void *ud)
{
    adm *a = calloc(1, sizeof *a);
    char *rkey = NULL;
    if (a == NULL) goto nomem;
    a->hooks = *hooks;
    a->ud = ud;
    a->lc = th_limit_call_new(p->l, req->limit, req->now_ms);
    if (a->lc == NULL) goto nomem;
    if (th_quota_redis_needed(p->q, req->tconf)) {
        a->qc = th_quota_call_new(p->q, req->tenant, req->tconf, req->chars, req->now_ms);
        if (a->qc == NULL) goto nomem;
    }
    if (req->cache_key != NULL && p->c != NULL &&
        th_cache_remote_wanted(p->c, req->cache_key, req->fcb != NULL)) {
        a->ckey = th_strndup(req->cache_key, strlen(req->cache_key));
        rkey = th_cache_redis_key(p->c, req->cache_key);
        if (a->ckey == NULL || rkey == NULL) goto nomem;
        if (req->fcb) {
            a->fcb = *req->fcb;
            a->has_fcb = true;
        }
    }
    /* KEYS: 7 + 2? + 1?; ARGV: 3 + 13 + 5? */
    const char *argv[ADMIT_ARGS_MAX];
    size_t lens[ADMIT_ARGS_MAX];
    char inl[24];
    int nkeys, n = admit_args(a, rkey, argv, lens, &nkeys, inl);
    a->p = p;
    a->next = p->pending;
    if (p->pending) p->pending->prev = a;
    p->pending = a;
    /* the callback may run before this returns (Redis down) */
    if (th_redis_eval_lane(p->redis, TH_REDIS_LANE_POLICY, on_admit, a, p->admit_lua, nkeys, n, argv, lens) !=
        0) {
        adm_unlink(a);
        goto nomem;
    }
    free(rkey);
    return;
nomem:
    TH_LOG(p->log, TH_LOG_ERROR, "policy: out of memory for an admission");
    free(rkey);
    if (a != NULL) adm_free(a);
    /* refused as a backend failure (503, retry in 1 s): nothing was charged */
    th_limit_result lres = {.status = 503, .reason = "backend_unavailable", .retry_after_s = 1, .reset_s = 1};
    hooks->on_limit(ud, &lres);
}

static void on_finish(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    th_log *log = ud;
    if (st != TH_REDIS_OK)
        TH_LOG(log, TH_LOG_WARN,
               "policy: settling a request in Redis failed (%d%s%.*s): its slot expires by its TTL and its "
               "reservation stays counted until the quota window ends",
               (int)st, rep && rep->str ? ": " : "", rep && rep->str ? (int)rep->len : 0,
               rep && rep->str ? rep->str : "");
}

void th_policy_after(th_policy *p, th_limit_slot *slot, th_quota_resv *resv, bool ok)
{
    const char *keys[4] = {NULL, NULL, NULL, NULL};
    size_t klens[4] = {0, 0, 0, 0};
    char member[48] = "";
    int nh = th_limit_slot_detach(slot, keys, klens, member, sizeof member);
    char *qkeys[2] = {NULL, NULL};
    char qargs[4][24];
    bool settle = resv != NULL && th_quota_resv_detach(resv, ok, qkeys, qargs) == 0;
    if (nh == 0 && !settle) return;
    const char *argv[4 + 7];
    size_t lens[4 + 7];
    int n = 0;
    for (int i = 0; i < nh; i++, n++) {
        argv[n] = keys[i];
        lens[n] = klens[i];
    }
    if (settle)
        for (int i = 0; i < 2; i++, n++) {
            argv[n] = qkeys[i];
            lens[n] = strlen(qkeys[i]);
        }
    int nkeys = n;
    char nhs[24];
    th_u64_dec(nhs, (uint64_t)nh);
    const char *head[3] = {nhs, member, settle ? "1" : "0"};
    for (int i = 0; i < 3; i++, n++) {
        argv[n] = head[i];
        lens[n] = strlen(head[i]);
    }
    if (settle)
        for (int i = 0; i < 4; i++, n++) {
            argv[n] = qargs[i];
            lens[n] = strlen(qargs[i]);
        }
    observe(p, "after", 1);
    if (th_redis_eval_lane_quiet(p->redis, TH_REDIS_LANE_POLICY, on_finish, p->log, p->finish_lua, nkeys, n,
                                 argv, lens) != 0)
        TH_LOG(p->log, TH_LOG_ERROR, "policy: out of memory settling a request");
    for (int i = 0; i < nh; i++)
        free((char *)keys[i]);
    free(qkeys[0]);
    free(qkeys[1]);
}
