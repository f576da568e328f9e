/* policy: the governance chain in one Redis round trip (see policy.h).
 *
 * The loop turn's script (EVALSHA on the policy lane). Admissions and finishes are not sent one by one:
 * they wait in the policy's queues until its check handle runs at the end of the loop turn, and then leave
 * together as one script (up to POL_BATCH_MAX admissions and POL_FIN_MAX finishes each), which Redis runs
 * atomically. The limiter's library (th_limit_lua_lib) reads each window, holder count and bucket once per
 * run and decides the admissions one after another on exact counts, so the cost in Redis follows the
 * number of distinct keys of the turn rather than a dozen commands per request. Under load the turns hold
 * more requests and each costs Redis less.
 *   The admissions of a turn share their limit profiles (the 7 limiter keys and 9 limit arguments of one
 *   tenant, IP and key), so each profile is sent once and an admission names its profile by index.
 *   KEYS: every release group's holder count (below), every settle's 2 reservation keys, then every
 *         profile's 7 keys, then the cache keys (of the admissions whose cache asks Redis, in their
 *         order), then every admission's quota keys (2, when its tenant has a quota).
 *   ARGV: inline_max, the number of release groups, of settles, of admissions and of profiles, the hub
 *         id, the number of cache keys; per release group the hub (of its slots' members) and how many
 *         slots it gives back; per settle the quota's 4 arguments; per profile its 9 arguments; per
 *         admission: its profile's index, has_quota, has_cache, now_ms, then the quota's 5.
 *   The hub groups a turn's releases by holder count and hub before it sends them (a turn's finishes are
 *   mostly one tenant's, and each used to send its keys and its member: eleven arguments for two HINCRBYs).
 *   Finishes run first (their slots are free for the admissions of the same turn; the counts are lowered
 *   with one HINCRBY per group), then the admissions in order, which is the order of their profiles (the
 *   hub sorts a turn's admissions by profile, stably). One EXISTS over the turn's cache keys comes first:
 *   when none is there (a turn of new texts), no admission asks for its key's length. Each admission's
 *   answer is {limits} when a limit refuses (nothing charged); {limits, quota} when the quota refuses (the
 *   RPM windows stay charged, as when the calls were separate, and the concurrency holders it had just
 *   taken are given back); else {limits, quota, cache} with cache = {0} (miss), {size, value} (size <=
 *   inline_max) or {size} (larger: fetched with GET on the bulk lane). An admission whose part of the
 *   script fails (a wrong type under one of its keys) gets an error, and only it is answered as a Redis
 *   failure.
 *   The script answers one flat array: per admission the lengths of its three parts, then their elements
 *   (or -1, 0, 0 and the error), and last the number of release groups and settles that failed (logged).
 *   Redis turns every table of a script's answer into RESP with a few lookups of its own, and hiredis
 *   makes an object of every array, so nested parts cost both sides about a microsecond per admission; the
 *   hub rebuilds the parts as views into the flat array.
 *   Finishes wait for the next admissions to ride with (or POL_FIN_LINGER_MS); a turn with finishes only
 *   is sent without waiting for the answer (a quiet command).
 *   The cache's stores wait for the turn as well and leave after its scripts (take_store, send_stores).
 * A failure of the lane counts as the separate calls' failures did: on_backend_error decides for the limits
 * and the quota, and the cache answers a miss. */
#include "governance/policy.h"

#include <hiredis/read.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/str.h"

#define POL_BATCH_MAX 64 /* admissions per script */
#define POL_FIN_MAX 128  /* finishes per script */
/* Finishes with no admission in their turn wait this long for one to ride with (see th_policy_after). */
#define POL_FIN_LINGER_MS 2
/* The cache's stores wait for the turn too (take_store): up to this many, of up to this size each (larger
 * ones go straight to the bulk lane); past POL_STORES_BYTES waiting, the turn leaves now. */
#define POL_STORES_MAX 64
#define POL_STORE_MAX (16u << 10)
#define POL_STORES_BYTES (256u << 10)
/* What Redis reads from a connection at a time (PROTO_IOBUF_LEN): the stores that fit in the first read
 * with the turn's script ride in its write; the rest take the bulk lane (send_stores). */
#define POL_REDIS_READ 16384

typedef struct adm adm;
struct adm {
    adm *prev, *next; /* p->pending: queued or sent, until answered */
    th_qlink q;       /* p->adms, until the turn's script leaves */
    th_policy *p;     /* NULL once the policy is freed: the reply only frees this */
    th_limit_call *lc;
    th_quota_call *qc;
    char *ckey; /* the cache key (hex), when the script asks the cache (in strs) */
    char *rkey; /* its Redis key (in strs) */
    th_cache_follower_cb fcb;
    bool has_fcb;
    char prof[8]; /* in the turn's script: the index of its limit profile (1-based digits) */
    th_policy_hooks hooks;
    void *ud;
    char strs[]; /* ckey and rkey, in the same block */
};

/* A request's finish, waiting for the turn's script: its holder counts and member, and the reservation's
 * settle (keys and arguments), all owned here. */
typedef struct fin fin;
struct fin {
    th_qlink q; /* p->fins */
    int nh;
    th_limit_slot *slot; /* keys and member point into it */
    const char *keys[4];
    size_t klens[4];
    const char *member;
    bool settle;
    char *qkeys[2];
    char qargs[4][24];
};

/* A script in flight: its admissions in ARGV order. */
typedef struct batch {
    th_log *log;
    int na, nf;
    int nrs; /* its release groups and settles: what the answer's last entry counts failures of */
    adm *a[];
} batch;

/* A turn's releases, grouped: one per holder count and hub (its slots' members' hub id), with how many
 * slots it gives back. A finish has up to 4 holder keys and a script up to POL_FIN_MAX finishes. */
typedef struct rel_group {
    const char *key, *hb;
    size_t klen, hblen;
    int n;
    char ns[12];
} rel_group;
#define POL_REL_MAX (POL_FIN_MAX * 4)

/* A store waiting for the turn: its length in p->stores and its answer's callback (the cache's). */
typedef struct store_ref {
    size_t len;
    th_redis_cb cb;
    void *ud;
} store_ref;

struct th_policy {
    th_log *log;
    th_redis *redis;
    th_limiter *l;
    th_quota *q;
    th_cache *c;
    th_metrics *m;
    char *lua;
    adm *pending;
    th_qlink adms; /* admissions not sent yet */
    int nq;
    th_qlink fins; /* finishes not sent yet */
    int nf;
    uv_check_t turn;   /* sends the queues at the end of the loop turn */
    uv_idle_t nudge;   /* while armed: the loop does not block before the check */
    uv_timer_t linger; /* finishes without admissions: arms the turn after POL_FIN_LINGER_MS */
    bool armed, freeing;
    int open_handles;
    const char **argv; /* the turn's KEYS and ARGV (scratch_fit) */
    rel_group *rel;    /* the turn's release groups (POL_REL_MAX, made on first use) */
    size_t *lens;
    int cap;
    th_buf stores; /* the stores waiting for the turn, as RESP, one after another */
    store_ref *st; /* theirs (POL_STORES_MAX, made on first use) */
    int nst;
    size_t sent; /* the bytes of the scripts this turn sent (what rides after them fits in a read) */
};

static const char BATCH_MAIN[] =
    "local inl = tonumber(ARGV[1])\n"
    "local nr, ns, na, np = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local hub, nck = ARGV[6], tonumber(ARGV[7])\n"
    "local kp, ap, failed = 1, 8, 0\n"
    "local function release(k, hb, n)\n"
    "  if call('HINCRBY', k, hb, -n) <= 0 then call('HDEL', k, hb, hb .. ':e') end\n"
    "end\n"
    "for r = 1, nr do\n"
    "  if not pcall(release, KEYS[kp], ARGV[ap], tonumber(ARGV[ap + 1])) then failed = failed + 1 end\n"
    "  kp, ap = kp + 1, ap + 2\n"
    "end\n"
    "for q = 1, ns do\n"
    "  if not pcall(settle, {KEYS[kp], KEYS[kp + 1]}, {ARGV[ap], ARGV[ap + 1], ARGV[ap + 2], ARGV[ap + 3]})\n"
    "  then failed = failed + 1 end\n"
    "  kp, ap = kp + 2, ap + 4\n"
    "end\n"
    "local function admit1(lkp, lap, nows, hq, qkp, qap, ck)\n"
    "  local ok, l2, l3, l4, l5, l6 = lim_check(lkp, lap, nows, hub)\n"
    "  if ok == 0 then return 0, l2, l3, l4, l5, l6 end\n"
    "  local qr\n"
    "  if hq then\n"
    "    qr = reserve({KEYS[qkp], KEYS[qkp + 1]}, {ARGV[qap], ARGV[qap + 1], ARGV[qap + 2], ARGV[qap + 3],\n"
    "                                             ARGV[qap + 4]})\n"
    "    if qr[1] == 0 then\n"
    "      lim_undo_slots(lkp, lap)\n"
    "      return 1, l2, l3, l4, l5, l6, qr\n"
    "    end\n"
    "  end\n"
    "  local cn, cv = 0, nil\n"
    "  if ck then\n"
    "    cn = call('STRLEN', ck)\n"
    "    if cn > 0 and cn <= inl then cv = call('GET', ck) end\n"
    "  end\n"
    "  return 1, l2, l3, l4, l5, l6, qr, cn, cv\n"
    "end\n"
    "local out, on = {}, 0\n"
    "local pk, pa = kp, ap\n"
    "kp, ap = kp + 7 * np, ap + 9 * np\n"
    "local ckp = kp\n"
    "kp = kp + nck\n"
    "local cex = nck > 0 and call('EXISTS', unpack(KEYS, ckp, kp - 1)) > 0\n"
    "for a = 1, na do\n"
    "  local pi = tonumber(ARGV[ap]) - 1\n"
    "  local hq, hc, nows = ARGV[ap + 1] == '1', ARGV[ap + 2] == '1', ARGV[ap + 3]\n"
    "  local lkp, lap = pk + 7 * pi, pa + 9 * pi\n"
    "  ap = ap + 4\n"
    "  local qkp, qap, ck = kp, ap, nil\n"
    "  if hq then kp, ap = kp + 2, ap + 5 end\n"
    "  if hc then\n"
    "    if cex then ck = KEYS[ckp] end\n"
    "    ckp = ckp + 1\n"
    "  end\n"
    "  local ok, l1, l2, l3, l4, l5, l6, qr, cn, cv = pcall(admit1, lkp, lap, nows, hq, qkp, qap, ck)\n"
    "  if ok then\n"
    "    local nq, nc = 0, 0\n"
    "    if l1 == 1 then\n"
    "      nq = qr and #qr or 1\n"
    "      if qr == nil or qr[1] ~= 0 then nc = cv and 2 or 1 end\n"
    "    end\n"
    "    out[on + 1], out[on + 2], out[on + 3] = 6, nq, nc\n"
    "    out[on + 4], out[on + 5], out[on + 6], out[on + 7], out[on + 8], out[on + 9] = l1, l2, l3, l4, l5, "
    "l6\n"
    "    on = on + 9\n"
    "    if qr then\n"
    "      for j = 1, nq do out[on + j] = qr[j] end\n"
    "    elseif nq == 1 then\n"
    "      out[on + 1] = 1\n"
    "    end\n"
    "    on = on + nq\n"
    "    if nc > 0 then out[on + 1], out[on + 2] = cn, cv end\n"
    "    on = on + nc\n"
    "  else\n"
    "    if not (type(l1) == 'table' and l1.err) then l1 = {err = tostring(l1)} end\n"
    "    out[on + 1], out[on + 2], out[on + 3], out[on + 4] = -1, 0, 0, l1\n"
    "    on = on + 4\n"
    "  end\n"
    "end\n"
    "lim_commit()\n"
    "out[on + 1] = failed\n"
    "return out\n";

/* The limiter's library, "local function NAME(KEYS, ARGV)\n BODY end\n" for the quota's two scripts, then
 * main. */
static char *compose(const char *main)
{
    th_buf b;
    th_buf_init(&b, 0); /* our own Lua source */
    const char *names[2] = {"reserve", "settle"},
               *bodies[2] = {th_quota_lua_reserve(), th_quota_lua_settle()};
    if (th_buf_append_str(&b, th_limit_lua_lib()) != TH_BUF_OK) goto fail;
    for (int i = 0; i < 2; i++) {
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

static void on_turn(uv_check_t *h);
static bool take_store(void *ud, const char *resp, size_t len, th_redis_cb cb, void *cbud);
static void on_nudge(uv_idle_t *h)
{
    (void)h; /* only keeps the loop from blocking before the check */
}

th_policy *th_policy_new(th_redis *redis, th_limiter *l, th_quota *q, th_cache *c, th_metrics *m, th_log *log)
{
    if (redis == NULL || l == NULL || q == NULL || strcmp(th_limiter_backend(l), "redis") != 0) return NULL;
    uv_loop_t *loop = th_redis_loop(redis);
    if (loop == NULL) return NULL;
    th_policy *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->log = log;
    p->redis = redis;
    p->l = l;
    p->q = q;
    p->c = c;
    p->m = m;
    p->lua = compose(BATCH_MAIN);
    if (p->lua == NULL) {
        free(p);
        return NULL;
    }
    uv_check_init(loop, &p->turn);
    uv_idle_init(loop, &p->nudge);
    uv_timer_init(loop, &p->linger);
    p->turn.data = p->nudge.data = p->linger.data = p;
    th_q_init(&p->adms);
    th_q_init(&p->fins);
    th_buf_init(&p->stores, 0); /* RESP made by the cache */
    p->open_handles = 3;
    if (c != NULL) th_cache_set_store_sink(c, take_store, p);
    return p;
}

static void arm(th_policy *p)
{
    if (p->armed || p->freeing) return;
    p->armed = true;
    uv_check_start(&p->turn, on_turn);
    uv_idle_start(&p->nudge, on_nudge);
}

static void on_linger(uv_timer_t *t)
{
    arm(t->data);
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
    free(a);
}

static void fin_free(fin *f)
{
    th_limit_slot_free(f->slot);
    free(f->qkeys[0]);
    free(f->qkeys[1]);
    free(f);
}

static void refuse_backend(adm *a)
{
    th_limit_result lres = {.status = 503, .reason = "backend_unavailable", .retry_after_s = 1, .reset_s = 1};
    a->hooks.on_limit(a->ud, &lres);
}

static void send_queued(th_policy *p, int max_adm, int max_fin);
static void send_stores(th_policy *p);

static void on_handle_closed(uv_handle_t *h)
{
    th_policy *p = h->data;
    if (--p->open_handles == 0) free(p);
}

void th_policy_free(th_policy *p)
{
    if (p == NULL) return;
    p->freeing = true;
    uv_check_stop(&p->turn);
    uv_idle_stop(&p->nudge);
    uv_timer_stop(&p->linger);
    /* Finishes waiting for the turn leave now, so their slots and reservations are settled. Admissions not
     * sent yet are refused (as a backend failure; nothing of theirs is held yet), and so are those still
     * waiting for Redis, whose replies find no policy and only free their records. */
    while (p->nq > 0) {
        adm *a = TH_Q_OF(p->adms.next, adm, q);
        th_q_unlink(&a->q);
        p->nq--;
        adm_unlink(a);
        refuse_backend(a);
        adm_free(a);
    }
    while (p->nf > 0)
        send_queued(p, 0, POL_FIN_MAX);
    th_cache_unset_store_sink(p->c, p); /* a policy made since keeps its own */
    send_stores(p);
    th_buf_free(&p->stores);
    free(p->st);
    p->st = NULL;
    th_redis_flush(p->redis);
    while (p->pending != NULL) {
        adm *a = p->pending;
        adm_unlink(a);
        refuse_backend(a);
    }
    free(p->lua);
    p->lua = NULL;
    free(p->argv);
    free(p->lens);
    free(p->rel);
    p->rel = NULL;
    p->argv = NULL;
    p->lens = NULL;
    p->cap = 0;
    uv_close((uv_handle_t *)&p->turn, on_handle_closed);
    uv_close((uv_handle_t *)&p->nudge, on_handle_closed);
    uv_close((uv_handle_t *)&p->linger, on_handle_closed);
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

/* One admission's answer: rep is its entry of the turn's answer (or the lane's failure). */
static void admit_done(adm *a, th_redis_status st, const th_redis_reply *rep)
{
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

/* ---- the turn's script ---------------------------------------------------------------------------- */

static void batch_answer(batch *b, th_redis_status st, const th_redis_reply *rep)
{
    for (int i = 0; i < b->na; i++)
        admit_done(b->a[i], st, rep);
}

/* Admission i's part of the flat answer, from *at: its entry rebuilt in row (views of {limits, quota,
 * cache} in parts), or the error the script gave it. false when the answer does not have that shape. */
static bool flat_entry(const th_redis_reply *rep, size_t *at, th_redis_reply *row, th_redis_reply parts[3],
                       const th_redis_reply **entry)
{
    size_t i = *at, n = rep->elements;
    if (n < 1 || i + 3 > n - 1) return false;
    const th_redis_reply *h = &rep->element[i];
    for (int k = 0; k < 3; k++)
        if (h[k].type != REDIS_REPLY_INTEGER) return false;
    if (h[0].integer == -1) { /* this admission's part of the script failed */
        if (i + 4 > n - 1 || h[3].type != REDIS_REPLY_ERROR) return false;
        *entry = &h[3];
        *at = i + 4;
        return true;
    }
    size_t used = i + 3, nparts = 0;
    for (int k = 0; k < 3; k++) {
        long long len = h[k].integer;
        if (len < 0 || (size_t)len > n - 1 - used) return false;
        if (len == 0) break; /* the parts after a missing one are missing too */
        parts[k] = (th_redis_reply){
            .type = REDIS_REPLY_ARRAY, .elements = (size_t)len, .element = &rep->element[used]};
        used += (size_t)len;
        nparts++;
    }
    if (nparts == 0) return false;
    *row = (th_redis_reply){.type = REDIS_REPLY_ARRAY, .elements = nparts, .element = parts};
    *entry = row;
    *at = used;
    return true;
}

static void on_batch(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    batch *b = ud;
    bool ok = st == TH_REDIS_OK && rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
              rep->element[rep->elements - 1].type == REDIS_REPLY_INTEGER;
    /* the whole answer is checked before anyone is answered: a malformed one fails every admission alike */
    size_t at = 0;
    for (int i = 0; ok && i < b->na; i++) {
        th_redis_reply row, parts[3];
        const th_redis_reply *e;
        ok = flat_entry(rep, &at, &row, parts, &e);
    }
    ok = ok && at == rep->elements - 1;
    long long failed = ok ? rep->element[rep->elements - 1].integer : b->nrs;
    if (b->nrs > 0 && failed > 0)
        TH_LOG(
            b->log, TH_LOG_WARN,
            "policy: %lld of the %d releases and settles of %d finished requests failed in Redis (%d%s%.*s): "
            "their slots expire by their TTL and their reservations stay counted until the quota window "
            "ends",
            failed, b->nrs, b->nf, (int)st, !ok && rep && rep->str ? ": " : "",
            !ok && rep && rep->str ? (int)(rep->len < 200 ? rep->len : 200) : 0,
            !ok && rep && rep->str ? rep->str : "");
    if (ok) {
        at = 0;
        for (int i = 0; i < b->na; i++) {
            th_redis_reply row, parts[3];
            const th_redis_reply *e = NULL;
            flat_entry(rep, &at, &row, parts, &e);
            admit_done(b->a[i], TH_REDIS_OK, e);
        }
    } else {
        batch_answer(b, st == TH_REDIS_OK ? TH_REDIS_ERROR : st, rep);
    }
    free(b);
}

/* Counts of KEYS and ARGV of an admission and of a finish. */
static int adm_nkeys(const adm *a)
{
    return (a->qc ? 2 : 0) + (a->rkey ? 1 : 0);
}
static int adm_nargs(const adm *a)
{
    return 4 + (a->qc ? 5 : 0);
}
static int fin_nkeys(const fin *f)
{
    return f->settle ? 2 : 0;
}
static int fin_nargs(const fin *f)
{
    return f->settle ? 4 : 0;
}

static void put(const char **argv, size_t *lens, int *n, const char *s, size_t len)
{
    argv[*n] = s;
    lens[*n] = len;
    (*n)++;
}

/* The same limit profile: keys and profile arguments (TH_LIMIT_CALL_KEYS + TH_LIMIT_CALL_PROFILE). */
static bool same_profile(const adm *a, const adm *b)
{
    const char *const *av, *const *bv;
    const size_t *al, *bl;
    th_limit_call_args(a->lc, &av, &al);
    th_limit_call_args(b->lc, &bv, &bl);
    for (int i = 0; i < TH_LIMIT_CALL_KEYS + TH_LIMIT_CALL_PROFILE; i++)
        if (al[i] != bl[i] || memcmp(av[i], bv[i], al[i]) != 0) return false;
    return true;
}

/* Gives each of the na admissions its profile's index and puts them in the order of their profiles (stably:
 * a turn's admissions arrived in the same loop turn, and the script decides a run of one profile's
 * admissions at the same time without reading its limits again); prof[] gets one admission per profile.
 * Returns the number of profiles. */
static int profiles(adm **as, int na, adm *prof[POL_BATCH_MAX])
{
    int np = 0, idx[POL_BATCH_MAX];
    for (int i = 0; i < na; i++) {
        adm *a = as[i];
        int j = 0;
        while (j < np && !same_profile(a, prof[j]))
            j++;
        if (j == np) prof[np++] = a;
        th_u64_dec(a->prof, (uint64_t)j + 1);
        idx[i] = j;
    }
    for (int i = 1; i < na; i++) {
        adm *a = as[i];
        int k = idx[i], j = i - 1;
        for (; j >= 0 && idx[j] > k; j--) {
            as[j + 1] = as[j];
            idx[j + 1] = idx[j];
        }
        as[j + 1] = a;
        idx[j + 1] = k;
    }
    return np;
}

static void prof_put(const adm *a, const char **argv, size_t *lens, int *n, bool keys)
{
    const char *const *lv;
    const size_t *ll;
    th_limit_call_args(a->lc, &lv, &ll);
    int from = keys ? 0 : TH_LIMIT_CALL_KEYS, count = keys ? TH_LIMIT_CALL_KEYS : TH_LIMIT_CALL_PROFILE;
    for (int i = from; i < from + count; i++)
        put(argv, lens, n, lv[i], ll[i]);
}

static void adm_put_keys(const adm *a, const char **argv, size_t *lens, int *n)
{
    const char *const *qv;
    const size_t *ql;
    if (a->qc) {
        th_quota_call_args(a->qc, &qv, &ql);
        for (int i = 0; i < 2; i++)
            put(argv, lens, n, qv[i], ql[i]);
    }
}

static void adm_put_args(const adm *a, const char **argv, size_t *lens, int *n)
{
    const char *const *lv, *const *qv;
    const size_t *ll, *ql;
    th_limit_call_args(a->lc, &lv, &ll);
    put(argv, lens, n, a->prof, strlen(a->prof));
    put(argv, lens, n, a->qc ? "1" : "0", 1);
    put(argv, lens, n, a->rkey ? "1" : "0", 1);
    put(argv, lens, n, lv[TH_LIMIT_CALL_KEYS + TH_LIMIT_CALL_PROFILE],
        ll[TH_LIMIT_CALL_KEYS + TH_LIMIT_CALL_PROFILE]);
    if (a->qc) {
        th_quota_call_args(a->qc, &qv, &ql);
        for (int i = 0; i < 5; i++)
            put(argv, lens, n, qv[2 + i], ql[2 + i]);
    }
}

static void fin_put_keys(const fin *f, const char **argv, size_t *lens, int *n)
{
    if (f->settle)
        for (int i = 0; i < 2; i++)
            put(argv, lens, n, f->qkeys[i], strlen(f->qkeys[i]));
}

static void fin_put_args(const fin *f, const char **argv, size_t *lens, int *n)
{
    if (f->settle)
        for (int i = 0; i < 4; i++)
            put(argv, lens, n, f->qargs[i], strlen(f->qargs[i]));
}

/* Groups the releases of nf finishes into p->rel: the count of each holder key and hub. Returns how many
 * groups, or -1 on ENOMEM. The groups point into the finishes. */
static int rel_groups(th_policy *p, fin *const *fs, int nf)
{
    if (p->rel == NULL && (p->rel = malloc(POL_REL_MAX * sizeof *p->rel)) == NULL) return -1;
    int ng = 0;
    for (int i = 0; i < nf; i++) {
        const fin *f = fs[i];
        size_t ml = strlen(f->member);
        const char *colon = memchr(f->member, ':', ml);
        size_t hl = colon != NULL ? (size_t)(colon - f->member) : ml;
        for (int k = 0; k < f->nh; k++) {
            int g = 0;
            while (g < ng && !(p->rel[g].klen == f->klens[k] && p->rel[g].hblen == hl &&
                               memcmp(p->rel[g].key, f->keys[k], f->klens[k]) == 0 &&
                               memcmp(p->rel[g].hb, f->member, hl) == 0))
                g++;
            if (g == ng)
                p->rel[ng++] =
                    (rel_group){.key = f->keys[k], .klen = f->klens[k], .hb = f->member, .hblen = hl};
            p->rel[g].n++;
        }
    }
    for (int g = 0; g < ng; g++)
        th_u64_dec(p->rel[g].ns, (uint64_t)p->rel[g].n);
    return ng;
}

/* p->argv/p->lens with room for n entries (kept from turn to turn: a turn's arrays are a few KiB, and a
 * malloc of that size makes glibc consolidate its free lists first). */
static int scratch_fit(th_policy *p, int n)
{
    if (n <= p->cap) return 0;
    int cap = p->cap > 0 ? p->cap : 256;
    while (cap < n)
        cap *= 2;
    const char **argv = realloc(p->argv, (size_t)cap * sizeof *argv);
    if (argv == NULL) return -1;
    p->argv = argv;
    size_t *lens = realloc(p->lens, (size_t)cap * sizeof *lens);
    if (lens == NULL) return -1;
    p->lens = lens;
    p->cap = cap;
    return 0;
}

/* One part of the script, in the order of KEYS or of ARGV: the finishes', the profiles', the admissions'. */
static void turn_part(const th_policy *p, adm *const *as, int na, fin *const *fs, int nf, int nr,
                      adm *const *prof, int np, bool keys, int *n)
{
    for (int g = 0; g < nr; g++) {
        const rel_group *r = &p->rel[g];
        if (keys) {
            put(p->argv, p->lens, n, r->key, r->klen);
        } else {
            put(p->argv, p->lens, n, r->hb, r->hblen);
            put(p->argv, p->lens, n, r->ns, strlen(r->ns));
        }
    }
    for (int i = 0; i < nf; i++)
        (keys ? fin_put_keys : fin_put_args)(fs[i], p->argv, p->lens, n);
    for (int j = 0; j < np; j++)
        prof_put(prof[j], p->argv, p->lens, n, keys);
    if (keys)
        for (int i = 0; i < na; i++)
            if (as[i]->rkey) put(p->argv, p->lens, n, as[i]->rkey, strlen(as[i]->rkey));
    for (int i = 0; i < na; i++)
        (keys ? adm_put_keys : adm_put_args)(as[i], p->argv, p->lens, n);
}

/* The script's KEYS and ARGV for na admissions and nf finishes into p->argv/p->lens (nums holds the header's
 * digits); returns the count of both and sets *nkeys, or -1 on ENOMEM. */
static int turn_args(th_policy *p, adm **as, int na, fin *const *fs, int nf, int *nkeys, int *nrs,
                     char nums[6][24])
{
    adm *prof[POL_BATCH_MAX];
    int np = profiles(as, na, prof), nck = 0;
    int nr = rel_groups(p, fs, nf), ns = 0;
    if (nr < 0) return -1;
    int nk = np * TH_LIMIT_CALL_KEYS + nr, nargs = 7 + np * TH_LIMIT_CALL_PROFILE + 2 * nr;
    for (int i = 0; i < na; i++) {
        nk += adm_nkeys(as[i]);
        nargs += adm_nargs(as[i]);
        nck += as[i]->rkey ? 1 : 0;
    }
    for (int i = 0; i < nf; i++) {
        nk += fin_nkeys(fs[i]);
        nargs += fin_nargs(fs[i]);
        ns += fs[i]->settle ? 1 : 0;
    }
    if (scratch_fit(p, nk + nargs) != 0) return -1;
    int n = 0;
    turn_part(p, as, na, fs, nf, nr, prof, np, true, &n);
    uint64_t hdr[5] = {TH_CACHE_INLINE_MAX, (uint64_t)nr, (uint64_t)ns, (uint64_t)na, (uint64_t)np};
    for (int i = 0; i < 5; i++)
        put(p->argv, p->lens, &n, nums[i], th_u64_dec(nums[i], hdr[i]));
    const char *const *lv = NULL;
    const size_t *ll = NULL;
    if (na > 0) th_limit_call_args(as[0]->lc, &lv, &ll);
    put(p->argv, p->lens, &n, lv ? lv[TH_LIMIT_CALL_ARGS - 1] : "",
        lv ? ll[TH_LIMIT_CALL_ARGS - 1] : 0); /* hub id */
    put(p->argv, p->lens, &n, nums[5], th_u64_dec(nums[5], (uint64_t)nck));
    turn_part(p, as, na, fs, nf, nr, prof, np, false, &n);
    *nkeys = nk;
    *nrs = nr + ns;
    return n;
}

/* Takes up to max admissions and max finishes from the queues' heads, in order. */
static int take_adms(th_policy *p, adm **as, int max)
{
    int n = 0;
    for (; n < max && !th_q_empty(&p->adms); n++) {
        as[n] = TH_Q_OF(p->adms.next, adm, q);
        th_q_unlink(&as[n]->q);
    }
    p->nq -= n;
    return n;
}
static int take_fins(th_policy *p, fin **fs, int max)
{
    int n = 0;
    for (; n < max && !th_q_empty(&p->fins); n++) {
        fs[n] = TH_Q_OF(p->fins.next, fin, q);
        th_q_unlink(&fs[n]->q);
    }
    p->nf -= n;
    return n;
}

static void observe_turn(th_policy *p, int na, int nf)
{
    if (p->m == NULL) return;
    const char *adm_lbl[] = {"admissions", NULL}, *fin_lbl[] = {"settles", NULL};
    if (na > 0) th_metrics_observe(p->m, TH_M_REDIS_TURN, adm_lbl, na);
    if (nf > 0) th_metrics_observe(p->m, TH_M_REDIS_TURN, fin_lbl, nf);
}

/* One script with up to max_adm queued admissions and max_fin queued finishes (taken from the queues'
 * heads). The admissions are answered through on_batch, at once when the lane cannot take it. */
static void send_queued(th_policy *p, int max_adm, int max_fin)
{
    adm *as[POL_BATCH_MAX];
    fin *fs[POL_FIN_MAX];
    int na = take_adms(p, as, max_adm < POL_BATCH_MAX ? max_adm : POL_BATCH_MAX);
    int nf = take_fins(p, fs, max_fin < POL_FIN_MAX ? max_fin : POL_FIN_MAX);
    batch *b = calloc(1, sizeof *b + (size_t)na * sizeof(adm *));
    char nums[6][24];
    int nkeys, nrs = 0, n = b != NULL ? turn_args(p, as, na, fs, nf, &nkeys, &nrs, nums) : -1, rc = -1;
    if (n >= 0) {
        b->log = p->log;
        b->na = na;
        b->nf = nf;
        b->nrs = nrs;
        memcpy(b->a, as, (size_t)na * sizeof(adm *));
        observe_turn(p, na, nf);
        for (int i = 0; i < n; i++)
            p->sent += p->lens[i] + 16; /* with "$<len>\r\n...\r\n" */
        /* the callback may run before this returns (Redis down): b is not touched after */
        rc = na > 0 ? th_redis_eval_lane(p->redis, TH_REDIS_LANE_POLICY, on_batch, b, p->lua, nkeys, n,
                                         p->argv, p->lens)
                    : th_redis_eval_lane_quiet(p->redis, TH_REDIS_LANE_POLICY, on_batch, b, p->lua, nkeys, n,
                                               p->argv, p->lens);
    }
    for (int i = 0; i < nf; i++)
        fin_free(fs[i]);
    if (rc == 0) return;
    TH_LOG(p->log, TH_LOG_ERROR,
           "policy: out of memory for the turn's Redis script (%d admissions, %d finishes)", na, nf);
    /* refused as a backend failure (503, retry in 1 s): nothing was charged */
    for (int i = 0; i < na; i++) {
        adm_unlink(as[i]);
        refuse_backend(as[i]);
        adm_free(as[i]);
    }
    free(b);
}

static void on_turn(uv_check_t *h)
{
    th_policy *p = h->data;
    uv_check_stop(&p->turn);
    uv_idle_stop(&p->nudge);
    uv_timer_stop(&p->linger);
    p->armed = false;
    /* what the hooks of an answer given at once (Redis down) queue waits for the next turn */
    int na = p->nq, nf = p->nf;
    p->sent = 0;
    while (na > 0 || nf > 0) {
        int ta = na < POL_BATCH_MAX ? na : POL_BATCH_MAX, tf = nf < POL_FIN_MAX ? nf : POL_FIN_MAX;
        send_queued(p, ta, tf);
        na -= ta;
        nf -= tf;
    }
    send_stores(p);
    th_redis_flush(p->redis); /* written in this turn, whatever the order of the check handles */
}

void th_policy_admit(th_policy *p, const th_policy_req *req, const th_policy_hooks *hooks, void *ud)
{
    bool ask_cache = req->cache_key != NULL && p->c != NULL &&
                     th_cache_remote_wanted(p->c, req->cache_key, req->fcb != NULL);
    size_t ckl = ask_cache ? strlen(req->cache_key) : 0;
    size_t rkl = ask_cache ? th_cache_redis_key_into(p->c, req->cache_key, NULL, 0) : 0;
    adm *a = calloc(1, sizeof *a + (ask_cache ? ckl + 1 + rkl + 1 : 0));
    if (a == NULL) goto nomem;
    a->hooks = *hooks;
    a->ud = ud;
    a->lc = th_limit_call_new(p->l, req->limit, req->now_ms);
    if (a->lc == NULL) goto nomem;
    if (th_quota_redis_needed(p->q, req->tconf)) {
        a->qc = th_quota_call_new(p->q, req->tenant, req->tconf, req->chars, req->now_ms);
        if (a->qc == NULL) goto nomem;
    }
    if (ask_cache) {
        a->ckey = a->strs;
        memcpy(a->ckey, req->cache_key, ckl + 1);
        a->rkey = a->strs + ckl + 1;
        th_cache_redis_key_into(p->c, req->cache_key, a->rkey, rkl + 1);
        if (req->fcb) {
            a->fcb = *req->fcb;
            a->has_fcb = true;
        }
    }
    a->p = p;
    TH_DL_PUSH_FRONT(p->pending, a, prev, next);
    th_q_push(&p->adms, &a->q);
    p->nq++;
    arm(p);
    return;
nomem:
    TH_LOG(p->log, TH_LOG_ERROR, "policy: out of memory for an admission");
    if (a != NULL) adm_free(a);
    /* refused as a backend failure (503, retry in 1 s): nothing was charged */
    th_limit_result lres = {.status = 503, .reason = "backend_unavailable", .retry_after_s = 1, .reset_s = 1};
    hooks->on_limit(ud, &lres);
}

void th_policy_after(th_policy *p, th_limit_slot *slot, th_quota_resv *resv, bool ok)
{
    fin tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.member = "";
    tmp.nh = th_limit_slot_detach(slot, tmp.keys, tmp.klens, &tmp.member);
    tmp.slot = slot;
    tmp.settle = resv != NULL && th_quota_resv_detach(resv, ok, tmp.qkeys, tmp.qargs) == 0;
    if (tmp.nh == 0 && !tmp.settle) {
        th_limit_slot_free(slot);
        return;
    }
    fin *f = malloc(sizeof *f);
    if (f == NULL) {
        TH_LOG(
            p->log, TH_LOG_ERROR,
            "policy: out of memory settling a request: its slot expires by its TTL and its reservation stays "
            "counted until the quota window ends");
        th_limit_slot_free(slot);
        free(tmp.qkeys[0]);
        free(tmp.qkeys[1]);
        return;
    }
    *f = tmp;
    observe(p, "after", 1);
    th_q_push(&p->fins, &f->q);
    p->nf++;
    if (p->freeing) { /* no turn any more: it leaves now */
        send_queued(p, 0, POL_FIN_MAX);
        th_redis_flush(p->redis);
        return;
    }
    /* A finish rides with the next admissions: under load they come within a turn or two, and one script
     * instead of two per turn halves what Redis and the hub spend on the scripts' fixed part. With none
     * after POL_FIN_LINGER_MS (or a script's worth waiting), the finishes leave on their own. Meanwhile the
     * slot counts as held, as it did while the script was on its way. */
    if (p->nq > 0 || p->nf >= POL_FIN_MAX)
        arm(p);
    else if (!p->armed && !uv_is_active((uv_handle_t *)&p->linger))
        uv_timer_start(&p->linger, on_linger, POL_FIN_LINGER_MS, 0);
}

size_t th_policy_queued(const th_policy *p)
{
    return p != NULL ? (size_t)p->nq + (size_t)p->nf + (size_t)p->nst : 0;
}

/* ---- the cache's stores ride with the turn --------------------------------------------------------- */

/* The cache's store sink (th_cache_set_store_sink). A store is nothing anyone waits for: it waits, like a
 * finish, for the turn's script and leaves with it (or after POL_FIN_LINGER_MS). At low load a request's
 * store and the next admission's script then cost one write to Redis instead of two, and under load the
 * stores of a turn leave in one write of the bulk lane instead of one per loop turn. */
static bool take_store(void *ud, const char *resp, size_t len, th_redis_cb cb, void *cbud)
{
    th_policy *p = ud;
    if (p->freeing || len > POL_STORE_MAX || p->nst >= POL_STORES_MAX) return false;
    if (p->st == NULL && (p->st = malloc(POL_STORES_MAX * sizeof *p->st)) == NULL) return false;
    if (th_buf_append(&p->stores, resp, len) != TH_BUF_OK) return false;
    p->st[p->nst++] = (store_ref){.len = len, .cb = cb, .ud = cbud};
    if (p->stores.len >= POL_STORES_BYTES || p->nst >= POL_STORES_MAX)
        arm(p);
    else if (!p->armed && !uv_is_active((uv_handle_t *)&p->linger))
        uv_timer_start(&p->linger, on_linger, POL_FIN_LINGER_MS, 0);
    return true;
}

/* Sends the waiting stores, quiet. Those that fit in Redis' first read of this turn's write, after the
 * scripts, go on the policy lane (the connection the scripts took, unless it is full): Redis runs them
 * after the script, in the same read, so no script waits behind them. The rest go on the bulk lane. */
static void send_stores(th_policy *p)
{
    size_t off = 0, room = p->sent < POL_REDIS_READ ? POL_REDIS_READ - p->sent : 0;
    for (int i = 0; i < p->nst; i++) {
        const store_ref *s = &p->st[i];
        th_redis_lane lane = TH_REDIS_LANE_BULK;
        if (s->len <= room) {
            lane = TH_REDIS_LANE_POLICY;
            room -= s->len;
        }
        if (th_redis_cmd_lane_resp_quiet(p->redis, lane, s->cb, s->ud, (const char *)p->stores.data + off,
                                         s->len) != 0)
            TH_LOG(p->log, TH_LOG_WARN, "cache: out of memory sending SET");
        off += s->len;
    }
    p->nst = 0;
    if (p->stores.cap > 2 * POL_STORES_BYTES)
        th_buf_free(&p->stores);
    else
        th_buf_reset(&p->stores);
}
