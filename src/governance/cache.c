/* cache: synthesised audio by request, with coalescing (see cache.h).
 *
 * Key: sha256 (hex) over length-prefixed parts -- each part is an 8-byte big-endian length and then its
 * bytes, after a version tag -- so no two different part lists can hash the same bytes. Parts: route,
 * voice, format (as given; NULL = ""), sample_rate (decimal), speed ("%.4f"), prompt and input; prompt and
 * input are trimmed and every run of ASCII whitespace (space, \t, \n, \v, \f, \r) becomes one space
 * (Unicode spaces and NFC are left alone). If the hash cannot be computed (ENOMEM) the key is "", which
 * th_cache_get always answers with LEAD, neither coalesced nor stored.
 *
 * Memory backend: a chained hash map plus a doubly linked LRU. An entry costs its audio bytes plus its
 * key, content type, provider and the entry struct; the sum stays <= cache.max_bytes (least recently used
 * entries are evicted first). An entry costing more than max_bytes / 8 is not stored, so one large answer
 * cannot flush the cache. Entries expire ttl_ms after they are stored; an expired entry is a miss and is
 * dropped when met (expired and byte-evicted entries both count as evictions).
 *
 * Coalescing. A flight is keyed by the cache key. A follower that joins gets, in order: the get callback
 * (JOINED), then everything produced so far (the backlog), then each new chunk as it is fed, then on_done
 * or on_error. Follower callbacks never run inside th_cache_get: the backlog of a new follower is sent
 * from a 0 ms timer after th_cache_get's callback has returned (or earlier, at the next th_cache_flight_*
 * call of its leader, which delivers to every follower whose get callback has returned). A follower
 * handle is valid until its on_done / on_error has returned or until th_cache_unfollow; unfollow is safe
 * from inside any follower callback (its own or another's) and inside the get callback.
 *
 * Bounds. A flight buffers its output for late joiners and for storing, up to the per-entry cap (max_bytes
 * / 8 for memory; at least TH_CACHE_REDIS_MAX_ENTRY with the Redis backend). When it grows past that it
 * leaves the flight map: it still fans out to the followers it has, but it will not be stored, and a
 * later identical request becomes a leader of its own (joining would miss the beginning of the audio).
 * After that the buffer only keeps bytes that some follower has not been sent yet.
 *
 * cache.enabled false: nothing is stored and nothing is a HIT, but identical requests in flight are still
 * coalesced -- one synthesis serves them all and the idempotency of a repeated `generation` (API.md) then
 * holds only while the first one runs.
 *
 * Redis backend (cache.backend redis and a th_redis given): the memory LRU is asked first, then the
 * flights, then GET {prefix}cache:{key}. A value is "THC1", one byte of content-type length, the content
 * type, one byte of provider length, the provider, then the audio. A successful flight of at most
 * TH_CACHE_REDIS_MAX_ENTRY bytes is SET with PX ttl_ms. Any Redis failure (down, timeout, error, a
 * malformed value) is a miss: a request never fails because the cache is down. Coalescing stays per hub:
 * while a GET is out, a second identical request asks Redis too; whichever answer comes back first without
 * a hit leads, the other joins it. */
/* SHA256_Init/Update/Final: deprecated in OpenSSL 3 but kept, and the cheapest way to hash per request. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include "governance/cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <openssl/sha.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/list.h"
#include "core/str.h"

#define KEY_TAG "ttshub-cache-1"
#define VALUE_MAGIC "THC1"

typedef struct entry {
    th_hnode hn;               /* in the entry map */
    struct entry *prev, *next; /* LRU, head = most recently used */
    char *key, *ct, *prov;
    uint8_t *data;
    size_t len, cost;
    uint64_t expires_ms;
} entry;

enum { F_RUNNING = 0, F_DONE, F_FAILED };

struct th_cache_follower {
    th_cache_flight *f;
    th_cache_follower *prev, *next;
    th_cache_follower_cb cb;
    uint64_t sent; /* absolute stream offset delivered so far */
    bool ready;    /* the get callback has returned */
    bool gone;     /* unfollowed */
    bool finished; /* on_done / on_error delivered */
};

struct th_cache_flight {
    th_cache *c;
    th_hnode hn;                    /* in the flight map, while joinable */
    th_cache_flight *aprev, *anext; /* every live flight */
    char *key;
    bool joinable, storable, leading;
    int state, status;
    char *ct, *prov, *message;
    uint8_t *buf;
    size_t len, cap;      /* buf holds stream bytes [base, base + len) */
    uint64_t base, total; /* total = bytes fed so far */
    th_cache_follower *fhead, *ftail;
    int busy; /* > 0 while followers are being called: removals are deferred */
    int pins; /* > 0 while the pump holds it: not freed */
};

typedef struct lookup { /* a Redis GET in flight */
    struct lookup *prev, *next;
    th_cache *c; /* NULL once the cache is freed */
    char *key;
    th_cache_follower_cb fcb;
    bool has_fcb;
    th_cache_cb cb;
    void *ud;
} lookup;

/* A flight's first buffer. Every miss needs one; kept for the next flight rather than freed: a fresh 16 KiB
 * block per request came from fresh heap pages each time (a page fault per request, ~5 % of the hub's CPU
 * under load). */
#define FLIGHT_BUF0 16384
#define FLIGHT_SPARES 64

struct th_cache {
    uv_loop_t *loop;
    th_log *log;
    th_redis *redis; /* NULL unless the Redis backend is on */
    char *prefix;
    bool enabled;
    uint64_t max_bytes, ttl_ms;
    size_t mem_cap, flight_cap;
    uint64_t (*now)(void *ud);
    void *now_ud;

    th_htab entries;
    entry *lru_head, *lru_tail;
    th_htab flight_map;       /* joinable flights by key */
    th_cache_flight *flights; /* every live flight (joinable or not) */
    lookup *lookups;
    uv_timer_t pump;
    bool pump_armed;
    th_cache_stats st;
    uint8_t *spare[FLIGHT_SPARES]; /* first buffers of finished flights (FLIGHT_BUF0 bytes), for the next */
    size_t nspare;
    th_buf resp; /* the SET being built (kept between stores: a fresh multi-KiB buffer per store cost a large
                    malloc per request) */
    th_cache_store_sink sink; /* NULL: stores go straight to the bulk lane */
    void *sink_ud;
};

/* ---- key ---- */

static bool is_ws(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
}

/* Walks s normalised (trimmed, whitespace runs collapsed); feeds sha when it is not NULL. Returns the
 * normalised length. */
static size_t norm(const char *s, size_t n, SHA256_CTX *sha)
{
    char out[256];
    size_t o = 0, total = 0;
    bool space = false;
    for (size_t i = 0; i < n; i++) {
        if (is_ws(s[i])) {
            space = true;
            continue;
        }
        for (int k = space && total > 0 ? 2 : 1; k > 0; k--) {
            out[o++] = k == 2 ? ' ' : s[i];
            total++;
            if (o == sizeof out) {
                if (sha) SHA256_Update(sha, out, o);
                o = 0;
            }
        }
        space = false;
    }
    if (sha && o) SHA256_Update(sha, out, o);
    return total;
}

static void put_len(SHA256_CTX *sha, uint64_t n)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(n >> (56 - 8 * i));
    SHA256_Update(sha, b, sizeof b);
}

static void put_part(SHA256_CTX *sha, const char *s, size_t n)
{
    put_len(sha, n);
    if (n) SHA256_Update(sha, s, n);
}

static void put_str(SHA256_CTX *sha, const char *s)
{
    put_part(sha, s ? s : "", s ? strlen(s) : 0);
}

static void put_norm(SHA256_CTX *sha, const char *s, size_t n)
{
    if (s == NULL) n = 0;
    put_len(sha, norm(s, n, NULL));
    norm(s, n, sha);
}

/* Decimal digits of v (v >= 0) written backwards from end; returns the start. */
static char *put_digits(char *end, unsigned long long v, int min_digits)
{
    int k = 0;
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
        k++;
    } while (v > 0 || k < min_digits);
    return end;
}

/* The same text as "%d" and "%.4f" (speeds are 0.25..4: rounding to 4 places is exact enough). */
static size_t fmt_int(char *out, long long v)
{
    char tmp[32];
    char *e = tmp + sizeof tmp;
    char *p = put_digits(e, (unsigned long long)(v < 0 ? -v : v), 1);
    if (v < 0) *--p = '-';
    memcpy(out, p, (size_t)(e - p));
    return (size_t)(e - p);
}

static size_t fmt_fixed4(char *out, double v)
{
    if (!(v > -1e12 && v < 1e12)) v = 0;
    bool neg = v < 0;
    unsigned long long q = (unsigned long long)((neg ? -v : v) * 10000.0 + 0.5);
    char tmp[40];
    char *e = tmp + sizeof tmp;
    char *p = put_digits(e, q % 10000, 4);
    *--p = '.';
    p = put_digits(p, q / 10000, 1);
    if (neg && q) *--p = '-';
    memcpy(out, p, (size_t)(e - p));
    return (size_t)(e - p);
}

void th_cache_key(const th_cache_key_parts *p, char out[TH_CACHE_KEY_LEN + 1])
{
    /* SHA-256 through the low-level API: EVP_DigestInit fetches the algorithm from the provider on
     * every call, which cost more than hashing the text itself (this runs on every request). */
    uint8_t md[SHA256_DIGEST_LENGTH];
    char num[48];
    SHA256_CTX sha;
    out[0] = '\0';
    if (!SHA256_Init(&sha)) return;
    put_str(&sha, KEY_TAG);
    put_str(&sha, p->route);
    put_str(&sha, p->voice);
    put_str(&sha, p->format);
    put_part(&sha, num, fmt_int(num, p->sample_rate));
    put_part(&sha, num, fmt_fixed4(num, p->speed));
    put_norm(&sha, p->prompt, p->prompt ? strlen(p->prompt) : 0);
    put_norm(&sha, p->input, p->input ? p->input_len : 0);
    if (!SHA256_Final(md, &sha)) return;
    th_hex(md, 32, out);
}

static uint64_t now_ms(const th_cache *c)
{
    return c->now ? c->now(c->now_ud) : th_mono_ms();
}

static entry *entry_find(const th_cache *c, const char *key)
{
    th_hnode *n = th_htab_find(&c->entries, key);
    return n ? TH_HT_OF(n, entry, hn) : NULL;
}

static void lru_unlink(th_cache *c, entry *e)
{
    TH_DL_UNLINK_T(c->lru_head, c->lru_tail, e, prev, next);
}

static void lru_push(th_cache *c, entry *e)
{
    TH_DL_PUSH_FRONT_T(c->lru_head, c->lru_tail, e, prev, next);
}

static void entry_free(entry *e)
{
    free(e->key);
    free(e->ct);
    free(e->prov);
    free(e->data);
    free(e);
}

static void entry_remove(th_cache *c, entry *e)
{
    th_htab_del(&c->entries, &e->hn);
    lru_unlink(c, e);
    c->st.bytes -= e->cost;
    c->st.entries--;
    c->st.evictions++;
    entry_free(e);
}

static char *dup_str(const char *s)
{
    return th_strndup(s ? s : "", s ? strlen(s) : 0);
}

/* Stores a copy (or takes data when own is true). Returns 0 if stored; on any refusal data is freed when
 * owned. */
static int store(th_cache *c, const char *key, uint8_t *data, size_t len, bool own, const char *ct,
                 const char *prov)
{
    entry *e = NULL;
    size_t cost = sizeof(entry) + strlen(key) + (ct ? strlen(ct) : 0) + (prov ? strlen(prov) : 0) + 3 + len;
    if (!c->enabled || key[0] == '\0' || cost > c->mem_cap || len > SIZE_MAX - cost) goto refuse;
    e = calloc(1, sizeof *e);
    if (e == NULL) goto refuse;
    e->key = dup_str(key);
    e->ct = dup_str(ct);
    e->prov = dup_str(prov);
    e->data = own ? data : malloc(len ? len : 1);
    own = false;
    if (e->key == NULL || e->ct == NULL || e->prov == NULL || e->data == NULL) goto refuse;
    if (e->data != data && len) memcpy(e->data, data, len);
    e->len = len;
    e->cost = cost;
    e->expires_ms = now_ms(c) + c->ttl_ms;
    entry *old = entry_find(c, key);
    if (old) {
        entry_remove(c, old);
        c->st.evictions--; /* a replacement, not an eviction */
    }
    while (c->lru_tail && c->st.bytes + cost > c->max_bytes)
        entry_remove(c, c->lru_tail);
    th_htab_add(&c->entries, &e->hn, e->key);
    lru_push(c, e);
    c->st.bytes += cost;
    c->st.entries++;
    c->st.stores++;
    return 0;
refuse:
    if (own) free(data);
    if (e) entry_free(e);
    return -1;
}

/* A live entry for key, or NULL (an expired one is dropped). */
static entry *lookup_entry(th_cache *c, const char *key)
{
    entry *e = entry_find(c, key);
    if (e == NULL) return NULL;
    if (now_ms(c) >= e->expires_ms) {
        entry_remove(c, e);
        return NULL;
    }
    lru_unlink(c, e);
    lru_push(c, e);
    return e;
}

static th_cache_flight *flight_find(const th_cache *c, const char *key)
{
    th_hnode *n = th_htab_find(&c->flight_map, key);
    return n ? TH_HT_OF(n, th_cache_flight, hn) : NULL;
}

static void flight_unjoin(th_cache_flight *f)
{
    if (!f->joinable) return;
    th_htab_del(&f->c->flight_map, &f->hn);
    f->joinable = false;
}

/* ---- flights and followers ---- */

static void flight_maybe_free(th_cache_flight *f)
{
    if (f->leading || f->fhead || f->busy > 0 || f->pins > 0) return;
    th_cache *c = f->c;
    flight_unjoin(f);
    if (c) TH_DL_UNLINK(c->flights, f, aprev, anext);
    free(f->key);
    free(f->ct);
    free(f->prov);
    free(f->message);
    if (c != NULL && f->buf != NULL && f->cap == FLIGHT_BUF0 && c->nspare < FLIGHT_SPARES)
        c->spare[c->nspare++] = f->buf;
    else
        free(f->buf);
    free(f);
}

static void follower_unlink(th_cache_follower *fl)
{
    th_cache_flight *f = fl->f;
    TH_DL_UNLINK_T(f->fhead, f->ftail, fl, prev, next);
    free(fl);
}

/* Drops finished or unfollowed followers, and buffered bytes nobody needs any more. */
static void sweep(th_cache_flight *f)
{
    if (f->busy > 0) return;
    uint64_t need = f->total;
    for (th_cache_follower *fl = f->fhead, *next; fl; fl = next) {
        next = fl->next;
        if (fl->gone || fl->finished)
            follower_unlink(fl);
        else if (fl->sent < need)
            need = fl->sent;
    }
    if (!f->storable && need > f->base) {
        size_t drop = (size_t)(need - f->base);
        memmove(f->buf, f->buf + drop, f->len - drop);
        f->len -= drop;
        f->base = need;
    }
}

static void follower_pump(th_cache_follower *fl)
{
    th_cache_flight *f = fl->f;
    while (fl->ready && !fl->gone && !fl->finished && fl->sent < f->total) {
        if (fl->sent < f->base) { /* cannot happen: bytes are kept until every follower has them */
            fl->finished = true;
            if (fl->cb.on_error) fl->cb.on_error(fl->cb.ud, 500, "cache: coalesced stream lost bytes");
            return;
        }
        size_t off = (size_t)(fl->sent - f->base), n = (size_t)(f->total - fl->sent);
        fl->sent = f->total;
        if (fl->cb.on_data) fl->cb.on_data(fl->cb.ud, f->buf + off, n);
    }
    if (!fl->ready || fl->gone || fl->finished || f->state == F_RUNNING) return;
    fl->finished = true;
    if (f->state == F_DONE) {
        if (fl->cb.on_done) fl->cb.on_done(fl->cb.ud, f->ct, f->prov);
    } else if (fl->cb.on_error) {
        fl->cb.on_error(fl->cb.ud, f->status, f->message ? f->message : "error");
    }
}

static void arm_pump(th_cache *c);

static void pump_flight(th_cache_flight *f)
{
    f->busy++;
    for (th_cache_follower *fl = f->fhead; fl; fl = fl->next)
        follower_pump(fl);
    f->busy--;
    sweep(f);
    flight_maybe_free(f);
}

static void on_pump(uv_timer_t *t)
{
    th_cache *c = t->data;
    c->pump_armed = false;
    /* Callbacks can finish or free other flights: pin them all first, then pump each. */
    size_t n = 0, i = 0;
    for (th_cache_flight *f = c->flights; f; f = f->anext)
        n++;
    th_cache_flight **v = malloc((n ? n : 1) * sizeof *v);
    if (v == NULL) {
        arm_pump(c); /* try again */
        return;
    }
    for (th_cache_flight *f = c->flights; f; f = f->anext) {
        f->pins++;
        v[i++] = f;
    }
    for (i = 0; i < n; i++)
        pump_flight(v[i]);
    for (i = 0; i < n; i++) {
        v[i]->pins--;
        flight_maybe_free(v[i]);
    }
    free(v);
}

static void arm_pump(th_cache *c)
{
    if (c->pump_armed) return;
    c->pump_armed = true;
    uv_timer_start(&c->pump, on_pump, 0, 0);
}

static th_cache_flight *flight_new(th_cache *c, const char *key)
{
    th_cache_flight *f = calloc(1, sizeof *f);
    if (f == NULL) return NULL;
    f->key = dup_str(key);
    if (f->key == NULL) {
        free(f);
        return NULL;
    }
    f->c = c;
    f->leading = true;
    f->storable = true;
    TH_DL_PUSH_FRONT(c->flights, f, aprev, anext);
    if (key[0] != '\0') { /* the "" key (no hash) never coalesces */
        th_htab_add(&c->flight_map, &f->hn, f->key);
        f->joinable = true;
    }
    return f;
}

/* Answers a get: HIT when rdata is set, else JOINED when a joinable flight exists (and fcb is given),
 * else LEAD with a new flight. */
static void finish_get(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_cache_cb cb,
                       void *ud, const uint8_t *rdata, size_t rlen, const char *rct, const char *rprov)
{
    th_cache_lookup res = {0};
    if (rdata) {
        res.outcome = TH_CACHE_HIT;
        res.entry = (th_cache_entry){rdata, rlen, rct, rprov};
        c->st.hits++;
        cb(ud, &res);
        return;
    }
    th_cache_flight *f = key[0] && fcb ? flight_find(c, key) : NULL;
    th_cache_follower *fl = f ? calloc(1, sizeof *fl) : NULL;
    if (fl) {
        fl->f = f;
        fl->cb = *fcb;
        TH_DL_PUSH_BACK_T(f->fhead, f->ftail, fl, prev, next);
        c->st.coalesced++;
        res.outcome = TH_CACHE_JOINED;
        res.follower = fl;
        f->busy++; /* an unfollow inside cb is deferred */
        cb(ud, &res);
        f->busy--;
        fl->ready = true;
        if (!fl->gone && (fl->sent < f->total || f->state != F_RUNNING)) arm_pump(c);
        sweep(f);
        flight_maybe_free(f);
        return;
    }
    res.outcome = TH_CACHE_LEAD;
    res.flight = flight_new(c, key);
    c->st.misses++;
    if (res.flight == NULL) /* ENOMEM: LEAD with no flight; the th_cache_flight_* calls accept NULL */
        TH_LOG(c->log, TH_LOG_ERROR, "cache: out of memory starting a flight");
    cb(ud, &res);
}

/* ---- Redis ---- */

static void lookup_unlink(lookup *l)
{
    if (l->c == NULL) return;
    TH_DL_UNLINK(l->c->lookups, l, prev, next);
    l->c = NULL;
}

/* Answers a get from Redis' answer: a hit when rep is a well-formed value, else LEAD or JOINED. */
static void deliver(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_cache_cb cb, void *ud,
                    th_redis_status st, const th_redis_reply *rep)
{
    const uint8_t *data = NULL, *p;
    size_t len = 0;
    char ct[256], prov[256];
    if (st == TH_REDIS_OK && rep && rep->type == REDIS_REPLY_STRING && rep->len >= 6 &&
        memcmp(rep->str, VALUE_MAGIC, 4) == 0) {
        p = (const uint8_t *)rep->str + 4;
        size_t left = rep->len - 4, n = p[0];
        if (left >= 1 + n + 1) {
            memcpy(ct, p + 1, n);
            ct[n] = '\0';
            p += 1 + n;
            left -= 1 + n;
            size_t m = p[0];
            if (left >= 1 + m) {
                memcpy(prov, p + 1, m);
                prov[m] = '\0';
                data = p + 1 + m;
                len = left - 1 - m;
            }
        }
    } else if (st != TH_REDIS_OK || (rep && rep->type != REDIS_REPLY_NIL)) {
        TH_LOG(c->log, TH_LOG_DEBUG, "cache: redis GET failed (%d): a miss", (int)st);
    }
    if (data) {
        store(c, key, (uint8_t *)data, len, false, ct, prov);
        finish_get(c, key, fcb, cb, ud, data, len, ct, prov);
        return;
    }
    /* Another request may have been answered or become the leader meanwhile. */
    entry *e = lookup_entry(c, key);
    if (e)
        finish_get(c, key, NULL, cb, ud, e->data, e->len, e->ct, e->prov);
    else
        finish_get(c, key, fcb, cb, ud, NULL, 0, NULL, NULL);
}

static void on_redis_get(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    lookup *l = ud;
    th_cache *c = l->c;
    lookup_unlink(l);
    if (c != NULL) /* else the cache was freed: nobody to answer */
        deliver(c, l->key, l->has_fcb ? &l->fcb : NULL, l->cb, l->ud, st, rep);
    free(l->key);
    free(l);
}

static char *redis_key(const th_cache *c, const char *key)
{
    size_t n = th_cache_redis_key_into(c, key, NULL, 0);
    char *k = malloc(n + 1);
    if (k != NULL) th_cache_redis_key_into(c, key, k, n + 1);
    return k;
}

/* true when the GET was sent (the answer comes through on_redis_get). */
static bool ask_redis(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_cache_cb cb, void *ud)
{
    lookup *l = calloc(1, sizeof *l);
    char *rk = redis_key(c, key);
    if (l == NULL || rk == NULL) goto fail;
    l->key = dup_str(key);
    if (l->key == NULL) goto fail;
    if (fcb) {
        l->fcb = *fcb;
        l->has_fcb = true;
    }
    l->cb = cb;
    l->ud = ud;
    l->c = c;
    TH_DL_PUSH_FRONT(c->lookups, l, prev, next);
    const char *argv[2] = {"GET", rk};
    size_t argvlen[2] = {3, strlen(rk)};
    /* the bulk lane: a value of megabytes must not sit in front of limit checks */
    if (th_redis_cmd_lane(c->redis, TH_REDIS_LANE_BULK, on_redis_get, l, 2, argv, argvlen) != 0) {
        lookup_unlink(l);
        goto fail;
    }
    free(rk);
    return true;
fail:
    if (l) free(l->key);
    free(l);
    free(rk);
    return false;
}

static void on_redis_set(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    (void)ud;
    (void)st;
    (void)rep; /* best effort */
}

/* SET {key} {value} PX {ttl}, formatted here as RESP so the audio is copied once into it (hiredis would
 * copy a value given as an argument twice more, through buffers that it grows from empty). */
static void redis_store(th_cache *c, const char *key, const uint8_t *data, size_t len, const char *ct,
                        const char *prov)
{
    size_t nct = ct ? strlen(ct) : 0, npr = prov ? strlen(prov) : 0;
    if (nct > 255 || npr > 255 || len > TH_CACHE_REDIS_MAX_ENTRY) return;
    size_t vlen = 4 + 1 + nct + 1 + npr + len;
    char kb[256], *heap = NULL; /* the Redis key: on the stack unless the prefix is long */
    const char *rk = kb;
    size_t klen = th_cache_redis_key_into(c, key, kb, sizeof kb);
    if (klen >= sizeof kb && (rk = heap = redis_key(c, key)) == NULL) return;
    /* the numbers by hand: snprintf was a visible part of the per-request cost */
    char px[24], pxn[24], kn[24], vn[24];
    size_t pl = th_u64_dec(px, c->ttl_ms), pnl = th_u64_dec(pxn, pl);
    size_t knl = th_u64_dec(kn, klen), vnl = th_u64_dec(vn, vlen);
    th_buf b = c->resp;
    th_buf_reset(&b);
    uint8_t hdr[2] = {(uint8_t)nct, (uint8_t)npr};
    if (th_buf_reserve(&b, vlen + klen + 128) != TH_BUF_OK ||
        th_buf_append_str(&b, "*5\r\n$3\r\nSET\r\n$") != TH_BUF_OK ||
        th_buf_append(&b, kn, knl) != TH_BUF_OK || th_buf_append(&b, "\r\n", 2) != TH_BUF_OK ||
        th_buf_append(&b, rk, klen) != TH_BUF_OK || th_buf_append(&b, "\r\n$", 3) != TH_BUF_OK ||
        th_buf_append(&b, vn, vnl) != TH_BUF_OK || th_buf_append(&b, "\r\n", 2) != TH_BUF_OK ||
        th_buf_append(&b, VALUE_MAGIC, 4) != TH_BUF_OK || th_buf_append(&b, &hdr[0], 1) != TH_BUF_OK ||
        th_buf_append(&b, ct ? ct : "", nct) != TH_BUF_OK || th_buf_append(&b, &hdr[1], 1) != TH_BUF_OK ||
        th_buf_append(&b, prov ? prov : "", npr) != TH_BUF_OK || th_buf_append(&b, data, len) != TH_BUF_OK ||
        th_buf_append_str(&b, "\r\n$2\r\nPX\r\n$") != TH_BUF_OK || th_buf_append(&b, pxn, pnl) != TH_BUF_OK ||
        th_buf_append(&b, "\r\n", 2) != TH_BUF_OK || th_buf_append(&b, px, pl) != TH_BUF_OK ||
        th_buf_append(&b, "\r\n", 2) != TH_BUF_OK) {
        TH_LOG(c->log, TH_LOG_WARN, "cache: out of memory sending SET");
        goto out;
    }
    /* The policy, when there is one, sends the store with its next loop turn's script (a small one in the
     * same write, after the script). Otherwise it goes on the bulk lane, even a small one: Redis reads a
     * connection 16 KiB at a time and answers after each read, so an admission script written behind
     * stores on the same connection waited for them (four 4 KiB stores per read) before it even ran. */
    if (c->sink != NULL && c->sink(c->sink_ud, (const char *)b.data, b.len, on_redis_set, NULL)) goto out;
    if (th_redis_cmd_lane_resp_quiet(c->redis, TH_REDIS_LANE_BULK, on_redis_set, NULL, (const char *)b.data,
                                     b.len) != 0)
        TH_LOG(c->log, TH_LOG_WARN, "cache: out of memory sending SET");
out:
    if (b.cap > (256u << 10)) th_buf_free(&b); /* a large entry's buffer is not kept */
    c->resp = b;
    free(heap);
}

/* ---- public ---- */

th_cache *th_cache_new(uv_loop_t *loop, const th_config *cfg, th_redis *redis, th_log *log)
{
    th_cache *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->loop = loop;
    c->log = log;
    th_buf_init(&c->resp, 0); /* SET commands we build from entries held whole */
    c->enabled = cfg->cache.enabled;
    c->max_bytes = cfg->cache.max_bytes;
    c->ttl_ms = cfg->cache.ttl_ms;
    c->mem_cap = (size_t)(c->max_bytes / 8);
    c->flight_cap = c->mem_cap;
    if (redis && cfg->cache.backend && strcmp(cfg->cache.backend, "redis") == 0) {
        c->redis = redis;
        if (c->flight_cap < TH_CACHE_REDIS_MAX_ENTRY) c->flight_cap = TH_CACHE_REDIS_MAX_ENTRY;
    }
    c->prefix = dup_str(cfg->redis.prefix);
    int hrc = th_htab_init(&c->entries, 256);
    hrc |= th_htab_init(&c->flight_map, 256);
    if (c->prefix == NULL || hrc != 0) {
        free(c->prefix);
        th_htab_free(&c->entries);
        th_htab_free(&c->flight_map);
        free(c);
        return NULL;
    }
    uv_timer_init(loop, &c->pump);
    c->pump.data = c;
    return c;
}

static void on_close(uv_handle_t *h)
{
    free(h->data);
}

void th_cache_free(th_cache *c)
{
    if (c == NULL) return;
    while (c->lookups)
        lookup_unlink(c->lookups); /* their replies find no cache and are dropped */
    while (c->flights) {
        th_cache_flight *f = c->flights;
        c->flights = f->anext;
        while (f->fhead)
            follower_unlink(f->fhead);
        free(f->key);
        free(f->ct);
        free(f->prov);
        free(f->message);
        free(f->buf);
        free(f);
    }
    while (c->nspare > 0)
        free(c->spare[--c->nspare]);
    while (c->lru_head) {
        entry *e = c->lru_head;
        c->lru_head = e->next;
        entry_free(e);
    }
    th_htab_free(&c->entries);
    th_htab_free(&c->flight_map);
    free(c->prefix);
    th_buf_free(&c->resp);
    uv_close((uv_handle_t *)&c->pump, on_close);
}

void th_cache_set_clock(th_cache *c, uint64_t (*now)(void *ud), void *ud)
{
    c->now = now;
    c->now_ud = ud;
}

void th_cache_get(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_cache_cb cb, void *ud)
{
    entry *e = c->enabled && key[0] ? lookup_entry(c, key) : NULL;
    if (e) {
        finish_get(c, key, NULL, cb, ud, e->data, e->len, e->ct, e->prov);
        return;
    }
    if (key[0] && fcb && flight_find(c, key)) {
        finish_get(c, key, fcb, cb, ud, NULL, 0, NULL, NULL);
        return;
    }
    if (c->redis && c->enabled && key[0] && ask_redis(c, key, fcb, cb, ud)) return;
    finish_get(c, key, fcb, cb, ud, NULL, 0, NULL, NULL);
}

void th_cache_flight_data(th_cache_flight *f, const uint8_t *data, size_t len)
{
    if (f == NULL || len == 0 || f->state != F_RUNNING) return;
    if (f->storable && f->total + len > f->c->flight_cap) {
        f->storable = false;
        flight_unjoin(f); /* later requests lead their own synthesis */
    }
    bool need = f->storable || f->len > 0;
    for (th_cache_follower *fl = f->fhead; !need && fl; fl = fl->next)
        need = !fl->gone && !fl->finished;
    if (need) {
        if (f->len + len > f->cap) {
            size_t cap = f->cap ? f->cap : FLIGHT_BUF0;
            while (cap < f->len + len)
                cap *= 2;
            uint8_t *nb;
            if (f->buf == NULL && cap == FLIGHT_BUF0 && f->c->nspare > 0)
                nb = f->c->spare[--f->c->nspare];
            else
                nb = realloc(f->buf, cap);
            if (nb == NULL) {
                /* Cannot keep the bytes: the followers cannot be served, nothing is stored. */
                TH_LOG(f->c->log, TH_LOG_ERROR, "cache: out of memory buffering a flight");
                f->storable = false;
                flight_unjoin(f);
                f->busy++;
                for (th_cache_follower *fl = f->fhead; fl; fl = fl->next)
                    if (!fl->gone && !fl->finished) {
                        fl->finished = true;
                        if (fl->ready && fl->cb.on_error)
                            fl->cb.on_error(fl->cb.ud, 503, "cache: out of memory");
                    }
                f->busy--;
                sweep(f);
                return;
            }
            f->buf = nb;
            f->cap = cap;
        }
        memcpy(f->buf + f->len, data, len);
        f->len += len;
    } else {
        f->base += len; /* nobody needs these bytes later */
    }
    f->total += len;
    pump_flight(f);
}

void th_cache_flight_done(th_cache_flight *f, const char *content_type, const char *provider)
{
    if (f == NULL) return;
    th_cache *c = f->c;
    flight_unjoin(f);
    f->ct = dup_str(content_type);
    f->prov = dup_str(provider);
    if (f->ct == NULL || f->prov == NULL) {
        th_cache_flight_fail(f, 500, "cache: out of memory");
        return;
    }
    f->state = F_DONE;
    f->leading = false;
    if (f->storable && c->enabled && f->base == 0) {
        store(c, f->key, f->buf, f->len, false, content_type, provider);
        if (c->redis) redis_store(c, f->key, f->buf, f->len, content_type, provider);
    }
    pump_flight(f); /* frees f when no follower still waits */
}

void th_cache_flight_fail(th_cache_flight *f, int status, const char *message)
{
    if (f == NULL) return;
    flight_unjoin(f);
    free(f->message);
    f->message = dup_str(message);
    f->state = F_FAILED;
    f->status = status;
    f->leading = false;
    pump_flight(f);
}

void th_cache_unfollow(th_cache_follower *fl)
{
    if (fl == NULL) return;
    fl->gone = true;
    th_cache_flight *f = fl->f;
    sweep(f); /* deferred while the flight is calling followers */
    flight_maybe_free(f);
}

void th_cache_get_stats(const th_cache *c, th_cache_stats *out)
{
    *out = c->st;
}

/* ---- one round trip (governance/policy.c) ---- */

void th_cache_set_store_sink(th_cache *c, th_cache_store_sink sink, void *ud)
{
    if (c == NULL) return;
    c->sink = sink;
    c->sink_ud = ud;
}

void th_cache_unset_store_sink(th_cache *c, void *ud)
{
    if (c != NULL && c->sink != NULL && c->sink_ud == ud) th_cache_set_store_sink(c, NULL, NULL);
}

bool th_cache_remote_wanted(th_cache *c, const char *key, bool joinable)
{
    if (c == NULL || c->redis == NULL || !c->enabled || key[0] == '\0') return false;
    if (lookup_entry(c, key) != NULL) return false;
    return !(joinable && flight_find(c, key) != NULL);
}

char *th_cache_redis_key(const th_cache *c, const char *key)
{
    return redis_key(c, key);
}

size_t th_cache_redis_key_into(const th_cache *c, const char *key, char *out, size_t cap)
{
    size_t a = strlen(c->prefix), b = strlen(key);
    if (cap > a + 6 + b) {
        memcpy(out, c->prefix, a);
        memcpy(out + a, "cache:", 6);
        memcpy(out + a + 6, key, b + 1);
    }
    return a + 6 + b;
}

void th_cache_resolve(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_redis_status st,
                      const th_redis_reply *rep, th_cache_cb cb, void *ud)
{
    if (st == TH_REDIS_OK && rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 1 &&
        rep->element[0].type == REDIS_REPLY_INTEGER && rep->element[0].integer > 0) {
        /* only the size came back: the audio itself comes on the bulk lane */
        if (ask_redis(c, key, fcb, cb, ud)) return;
        finish_get(c, key, fcb, cb, ud, NULL, 0, NULL, NULL);
        return;
    }
    const th_redis_reply *val = NULL;
    if (st == TH_REDIS_OK && rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2)
        val = &rep->element[1];
    deliver(c, key, fcb, cb, ud, val ? TH_REDIS_OK : st, val);
}
