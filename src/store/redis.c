/* redis: a pool of hiredis 0.14.1 async connections on the hub's uv loop, with timeouts and reconnects.
 *
 * The pool (th_redis) is an array of independent connections (rd_conn), split into lanes (see redis.h).
 * Each connection below is exactly what one th_redis used to be; the pool only picks one per command and
 * frees itself once the last connection has closed its handles.
 *
 * Lifetimes, which are the hard part with hiredis 0.14:
 *  - Every command sent to hiredis carries an rd_cmd record as privdata. hiredis calls back exactly once
 *    per sent command: with the reply, or with NULL when the context goes away (error, or our own
 *    redisAsyncFree). The record counts how many hiredis callbacks it still waits for (held) and whether
 *    the caller's callback already ran (done). A timed-out command is marked done and answered with
 *    TH_REDIS_TIMEOUT; its record stays alive until hiredis hands it back, and the late reply is dropped.
 *  - A context frees itself after a connect error (after on_connect(ERR)) and after a disconnect (after
 *    the NULL-reply callbacks and on_disconnect). We never call redisAsyncFree from inside a hiredis
 *    callback: a context we drop is parked in r->doomed and freed from a 0 ms uv timer (drop_timer); if
 *    it frees itself first, on_connect/on_disconnect clear r->doomed. At most one of r->ac and r->doomed
 *    is set: rd_connect frees a doomed context before it makes a new one (from a timer callback).
 *  - Pending commands form one FIFO list. All share the same timeout and are appended in order, so one
 *    uv timer armed for the head's deadline times them all out.
 *  - th_redis_free fails what is pending, parks the context, and the drop timer frees it and closes the
 *    three timers; the struct is freed in the last close callback. */
#include "store/redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libuv.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/clock.h"
#include "core/list.h"
#include "core/str.h"

#define RD_BACKOFF_MIN_MS 100
#define RD_BACKOFF_MAX_MS 5000
#define RD_CONNECT_MIN_MS 1000 /* connect (+ AUTH/SELECT) timeout: max(timeout, 1 s) */
#define RD_SCRIPTS_MAX 16      /* scripts remembered as loaded per connection */
#define RD_SPILL 64            /* in flight on a connection before the next one of its lane is used */
#define RD_CONNS_MAX 9         /* policy lane (up to 8) + bulk lane */
#define RD_STALL_MIN_MS 1000   /* no reply at all for max(10 x timeout, 1 s) with commands timing out: drop */
#define RD_LAZY_MS 20 /* a parked connection reads its quiet replies after this (at most timeout / 4) */

typedef enum { RS_BACKOFF = 0, RS_CONNECTING, RS_READY } rd_state;

/* A connection's reply objects. hiredis makes every node of a reply with its own malloc (and the string's
 * with another) and frees them all after the callback: an answer of the policy's turn is about ten nodes
 * per admission, and the allocator's slow paths were a tenth of the hub's CPU on the Redis path. The
 * reader's object functions carve them from one block instead, reused reply after reply: a reply's root
 * is the first object made for it, and the block starts over when hiredis frees the root (or a new root
 * begins). What does not fit goes to further blocks of the same size, freed with the reply (a burst's
 * large turn answers in a few mallocs, not one per element); an object larger than a block (a cached
 * value) gets a block of its own. The replies of one connection are read and answered one at a time, so only
 * one is ever alive. */
#define RD_ARENA_BYTES (32u << 10)
/* Elements of one array reply: no reply the hub reads comes near (a turn's answer is about a thousand, a
 * voice index one per voice); a header announcing more is answered as an allocation failure, which drops
 * the connection like any protocol error, before anything that size is allocated. */
#define RD_REPLY_ELEMENTS_MAX (1 << 20)
typedef struct rd_big rd_big;
struct rd_big {
    rd_big *next;
    size_t cap, used;
    max_align_t data[]; /* the objects */
};
typedef struct rd_arena {
    char *base; /* RD_ARENA_BYTES, made on first use */
    size_t used;
    rd_big *big;
    void *root; /* the reply being read or answered */
} rd_arena;

typedef struct rd_cmd rd_cmd;
typedef struct rd_conn rd_conn;
struct rd_cmd {
    rd_conn *r;
    th_redis_cb cb;
    void *ud;
    uint64_t sent;     /* loop time when sent */
    uint64_t sent_us;  /* th_mono_us when sent: the latency histogram */
    uint64_t deadline; /* loop time */
    rd_cmd *prev, *next;
    int held;           /* hiredis callbacks still to come for this record */
    bool done;          /* the caller has its answer (or the record is internal) */
    bool queued;        /* in r's pending list */
    bool internal;      /* AUTH/SELECT of the handshake */
    bool optional;      /* internal, and an error does not fail the handshake (CLIENT SETNAME) */
    bool fell_back;     /* EVAL was sent after NOSCRIPT */
    bool quiet;         /* nothing waits for the answer (see th_redis_eval_lane_quiet) */
    int eval_n;         /* > 0: an EVAL(SHA)'s number of arguments, command name included */
    const char *script; /* the script text (the pool's copy, or in this block) */
    size_t slen;
    const char *tail; /* RESP of nkeys and the arguments, kept for the NOSCRIPT fallback (in this block) */
    size_t tail_len;
    char sha[41];
};

typedef struct rd_script {
    size_t len;
    char *text; /* the pool's copy: EVAL after NOSCRIPT reads it */
    char sha[41];
} rd_script;

struct th_redis {
    rd_script scripts[RD_SCRIPTS_MAX];
    int nscripts;
    rd_conn *conn[RD_CONNS_MAX];
    int first[TH_REDIS_LANES], count[TH_REDIS_LANES]; /* lane -> its connections */
    int total, live;               /* live: connections whose handles are not all closed yet */
    uint64_t busy[TH_REDIS_LANES]; /* commands refused with TH_REDIS_BUSY */
    bool freeing;
    char state_text[224];
};

struct rd_conn {
    th_redis *pool;
    int lane;
    uint32_t max_inflight;
    th_redis_lane_stats stats; /* inflight, commands, replies, failures, latency */
    uv_loop_t *loop;
    th_log *log;
    char *host, *user, *pass;
    int port;
    int64_t db;
    uint64_t timeout_ms;
    rd_state st;
    redisAsyncContext *ac;     /* connecting or ready */
    redisAsyncContext *doomed; /* dropped, freed by drop_timer outside hiredis callbacks */
    int handshake_left;
    uint64_t backoff_ms;
    uint64_t last_reply;  /* loop time of the last reply on the current connection */
    uint64_t stall_since; /* loop time the oldest unanswered timed-out command was sent; 0 = none */
    bool freeing;
    int open_handles;
    uv_timer_t conn_timer; /* connect timeout while connecting; reconnect backoff while down */
    uv_timer_t cmd_timer;  /* the deadline of the oldest pending command */
    uv_timer_t drop_timer; /* 0 ms: frees r->doomed; after th_redis_free, closes everything */
    uv_check_t flush;      /* writes what the loop turn queued, once, after its I/O callbacks */
    uv_idle_t nudge;       /* while a flush is armed: the loop does not block before it runs */
    bool flush_armed, in_flush;
    /* Parked: only quiet commands are in flight, so the socket's read interest is off and their replies
     * wait in the socket until the next awaited command (or lazy_timer) turns it on again. */
    uint64_t awaited; /* queued commands that are not quiet */
    bool read_wanted; /* hiredis asked for read interest on the current context */
    bool parked;
    uv_timer_t lazy_timer; /* while parked: reads the quiet replies after at most RD_LAZY_MS */
    rd_cmd *head, *tail;
    char loaded[RD_SCRIPTS_MAX][41]; /* SHAs sent with EVAL on the current connection */
    int nloaded;
    rd_arena arena;                /* the current context's reply objects (see rd_arena) */
    redisReplyObjectFunctions fns; /* its reader's: objects from the arena */
    char state_text[224];
};

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);
static int rd_send_eval(redisAsyncContext *ac, rd_cmd *c);
static void on_reconnect_timer(uv_timer_t *t);
static bool rd_usable(const rd_conn *r);

/* ---- URL ---------------------------------------------------------------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* malloc'd percent-decoded copy of n bytes; NULL on ENOMEM or a bad escape (*bad set). */
static char *pct_decode(const char *s, size_t n, bool *bad)
{
    char *out = malloc(n + 1);
    if (out == NULL) return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[j++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
        int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            *bad = true;
            free(out);
            return NULL;
        }
        out[j++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[j] = '\0';
    return out;
}

/* user:password@ of a redis URL, percent-decoded. */
static int parse_auth(rd_conn *r, const char *p, const char *at, char *err, size_t errlen)
{
    bool bad = false;
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *pw = colon ? colon + 1 : p;
    size_t pwlen = (size_t)(at - pw);
    if (colon != NULL && colon > p && (r->user = pct_decode(p, (size_t)(colon - p), &bad)) == NULL) goto fail;
    if (pwlen > 0 && (r->pass = pct_decode(pw, pwlen, &bad)) == NULL) goto fail;
    return 0;
fail:
    snprintf(err, errlen, bad ? "bad percent escape in redis URL credentials" : "out of memory");
    return -1;
}

/* host[:port] or [v6][:port], up to end. */
static int parse_host(rd_conn *r, const char *hp, const char *end, char *err, size_t errlen)
{
    const char *host_s, *host_e, *port_s = NULL;
    if (hp < end && *hp == '[') {
        host_s = hp + 1;
        host_e = memchr(host_s, ']', (size_t)(end - host_s));
        if (host_e == NULL) {
            snprintf(err, errlen, "bad IPv6 host in redis URL");
            return -1;
        }
        if (host_e + 1 < end) {
            if (host_e[1] != ':') {
                snprintf(err, errlen, "bad host in redis URL");
                return -1;
            }
            port_s = host_e + 2;
        }
    } else {
        host_s = hp;
        host_e = memchr(hp, ':', (size_t)(end - hp));
        if (host_e == NULL)
            host_e = end;
        else
            port_s = host_e + 1;
    }
    if (host_e == host_s) {
        snprintf(err, errlen, "no host in redis URL");
        return -1;
    }
    r->host = th_strndup(host_s, (size_t)(host_e - host_s));
    if (r->host == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    r->port = 6379;
    if (port_s != NULL) {
        int64_t port;
        if (th_strn_to_i64(port_s, (size_t)(end - port_s), 1, 65535, &port) != 0) {
            snprintf(err, errlen, "bad port in redis URL");
            return -1;
        }
        r->port = (int)port;
    }
    return 0;
}

static int parse_url(rd_conn *r, const char *url, char *err, size_t errlen)
{
    if (url == NULL) {
        snprintf(err, errlen, "no redis URL");
        return -1;
    }
    if (th_str_startswith(url, "rediss://")) {
        snprintf(err, errlen, "rediss:// (TLS) is not supported by this build");
        return -1;
    }
    if (!th_str_startswith(url, "redis://")) {
        snprintf(err, errlen, "not a redis URL (redis://[:password@]host:port/db)");
        return -1;
    }
    const char *p = url + strlen("redis://");
    const char *auth_end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < auth_end; q++)
        if (*q == '@') at = q;
    if (at != NULL && parse_auth(r, p, at, err, errlen) != 0) return -1;
    if (parse_host(r, at != NULL ? at + 1 : p, auth_end, err, errlen) != 0) return -1;
    r->db = 0;
    if (*auth_end == '/') {
        const char *db_s = auth_end + 1;
        size_t dblen = strlen(db_s);
        if (dblen > 0 && th_strn_to_i64(db_s, dblen, 0, 1000000, &r->db) != 0) {
            snprintf(err, errlen, "bad database number in redis URL");
            return -1;
        }
    } else if (*auth_end != '\0') {
        snprintf(err, errlen, "unexpected query or fragment in redis URL");
        return -1;
    }
    return 0;
}

/* ---- state -------------------------------------------------------------------------------------- */

static void rd_set_text(rd_conn *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rd_set_text(rd_conn *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->state_text, sizeof r->state_text, fmt, ap);
    va_end(ap);
}

static void rd_unqueue(rd_conn *r, rd_cmd *c)
{
    if (!c->queued) return;
    TH_DL_UNLINK_T(r->head, r->tail, c, prev, next);
    c->queued = false;
    if (r->stats.inflight > 0) r->stats.inflight--;
    if (!c->quiet && r->awaited > 0) r->awaited--;
}

static void rd_cmd_free(rd_cmd *c)
{
    free(c); /* an EVAL's copy of its arguments is in the same block */
}

/* Frees the record once the caller has its answer and hiredis no longer holds it. */
static void rd_cmd_release(rd_cmd *c)
{
    if (c->done && c->held == 0 && !c->queued) rd_cmd_free(c);
}

/* Answers every pending command with st. Callbacks may send commands or free r: each record is unlinked
 * before its callback runs. */
static void rd_fail_pending(rd_conn *r, th_redis_status st)
{
    uv_timer_stop(&r->cmd_timer);
    while (r->head != NULL) {
        rd_cmd *c = r->head;
        rd_unqueue(r, c);
        c->done = true;
        r->stats.failures++;
        th_redis_cb cb = c->cb;
        void *ud = c->ud;
        rd_cmd_release(c);
        cb(ud, st, NULL);
    }
}

/* Schedules the next connect attempt (state: down). */
static void rd_schedule(rd_conn *r)
{
    r->st = RS_BACKOFF;
    uv_timer_stop(&r->conn_timer);
    if (r->freeing) return;
    uv_timer_start(&r->conn_timer, on_reconnect_timer, r->backoff_ms, 0);
    r->backoff_ms *= 2;
    if (r->backoff_ms > RD_BACKOFF_MAX_MS) r->backoff_ms = RD_BACKOFF_MAX_MS;
}

/* The current connection is gone (hiredis frees it) or was parked in r->doomed: go down, retry later,
 * and fail what was pending. */
static void rd_lost(rd_conn *r, const char *reason)
{
    bool was_ready = r->st == RS_READY;
    r->ac = NULL;
    r->stall_since = 0;
    rd_set_text(r, "down: %s", reason && reason[0] ? reason : "connection lost");
    if (was_ready)
        TH_LOG(r->log, TH_LOG_WARN, "redis %s:%d: %s", r->host, r->port, r->state_text);
    else
        TH_LOG(r->log, TH_LOG_DEBUG, "redis %s:%d: %s", r->host, r->port, r->state_text);
    rd_schedule(r);
    rd_fail_pending(r, TH_REDIS_DOWN);
}

static void on_drop_timer(uv_timer_t *t);

/* Drops the current connection on our initiative; safe inside hiredis callbacks. */
static void rd_drop(rd_conn *r, const char *reason)
{
    if (r->ac == NULL) return;
    r->doomed = r->ac;
    uv_timer_start(&r->drop_timer, on_drop_timer, 0, 0);
    rd_lost(r, reason);
}

static void rd_ready(rd_conn *r)
{
    r->last_reply = uv_now(r->loop);
    uv_timer_stop(&r->conn_timer);
    r->st = RS_READY;
    r->backoff_ms = RD_BACKOFF_MIN_MS;
    r->stall_since = 0;
    rd_set_text(r, "connected");
    TH_LOG(r->log, TH_LOG_INFO, "redis %s:%d connected", r->host, r->port);
}

/* ---- hiredis callbacks -------------------------------------------------------------------------- */

static int rd_send_internal(rd_conn *r, int argc, const char **argv, const size_t *argvlen, bool optional)
{
    rd_cmd *c = calloc(1, sizeof *c);
    if (c == NULL) return -1;
    c->r = r;
    c->internal = true;
    c->optional = optional;
    c->done = true;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        return -1;
    }
    c->held = 1;
    return 0;
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    rd_conn *r = cac->data;
    if (status != REDIS_OK) {
        /* hiredis frees this context right after we return */
        if (cac == r->doomed) r->doomed = NULL;
        if (cac == r->ac) rd_lost(r, cac->c.errstr[0] ? cac->c.errstr : "connect failed");
        return;
    }
    if (cac != r->ac) return;
    r->handshake_left = 0;
    if (r->pass != NULL) {
        const char *argv[3] = {"AUTH", r->user ? r->user : r->pass, r->pass};
        size_t lens[3] = {4, strlen(argv[1]), strlen(r->pass)};
        if (rd_send_internal(r, r->user ? 3 : 2, argv, lens, false) != 0) goto fail;
        r->handshake_left++;
    }
    if (r->db != 0) {
        char dbs[24];
        int n = snprintf(dbs, sizeof dbs, "%lld", (long long)r->db);
        const char *argv[2] = {"SELECT", dbs};
        size_t lens[2] = {6, (size_t)n};
        if (rd_send_internal(r, 2, argv, lens, false) != 0) goto fail;
        r->handshake_left++;
    }
    {
        /* the lane in the server's CLIENT LIST (for operators, and the tests); an error is harmless */
        const char *name = r->lane == TH_REDIS_LANE_BULK ? "ttshub-bulk" : "ttshub-policy";
        const char *argv[3] = {"CLIENT", "SETNAME", name};
        size_t lens[3] = {6, 7, strlen(name)};
        if (rd_send_internal(r, 3, argv, lens, true) != 0) goto fail;
    }
    {
        /* ready only once the server has answered: a stopped server still accepts TCP connects */
        const char *argv[1] = {"PING"};
        size_t lens[1] = {4};
        if (rd_send_internal(r, 1, argv, lens, false) != 0) goto fail;
        r->handshake_left++;
    }
    return;
fail:
    rd_drop(r, "cannot send the handshake");
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    rd_conn *r = cac->data;
    /* hiredis frees this context right after we return */
    if (cac == r->doomed) r->doomed = NULL;
    if (cac == r->ac) rd_lost(r, cac->c.errstr[0] ? cac->c.errstr : "disconnected");
}

/* ---- reply objects (rd_arena) -------------------------------------------------------------------- */

/* Every object starts with its arena's address, so freeObject (which gets only the object) finds it. */
typedef struct rd_obj {
    rd_arena *arena;
    max_align_t pad[]; /* the redisReply follows, aligned */
} rd_obj;

static void ar_reset(rd_arena *a)
{
    while (a->big != NULL) {
        rd_big *b = a->big;
        a->big = b->next;
        free(b);
    }
    a->used = 0;
    a->root = NULL;
}

static void ar_free(rd_arena *a)
{
    ar_reset(a);
    free(a->base);
    a->base = NULL;
}

/* n bytes, zeroed when zero is set (a large block by calloc, whose fresh pages cost nothing until used). */
static void *ar_alloc(rd_arena *a, size_t n, bool zero)
{
    size_t al = sizeof(max_align_t);
    if (n > SIZE_MAX - sizeof(rd_big) - al) return NULL;
    n = (n + al - 1) / al * al;
    if (a->base == NULL && n <= RD_ARENA_BYTES) a->base = malloc(RD_ARENA_BYTES);
    if (a->base != NULL && n <= RD_ARENA_BYTES - a->used) {
        void *p = a->base + a->used;
        a->used += n;
        if (zero) memset(p, 0, n);
        return p;
    }
    rd_big *h = a->big;
    if (h != NULL && n <= h->cap - h->used) {
        void *p = (char *)h->data + h->used;
        h->used += n;
        if (zero) memset(p, 0, n);
        return p;
    }
    bool own = n >= RD_ARENA_BYTES; /* an object of its own block */
    size_t cap = own ? n : RD_ARENA_BYTES;
    rd_big *b = own && zero ? calloc(1, sizeof(rd_big) + cap) : malloc(sizeof(rd_big) + cap);
    if (b == NULL) return NULL;
    b->cap = cap;
    b->used = n;
    if (own && h != NULL) { /* behind the block still being filled */
        b->next = h->next;
        h->next = b;
    } else {
        b->next = h;
        a->big = b;
    }
    if (zero && !own) memset(b->data, 0, n);
    return b->data;
}

/* The reader's arena: its privdata, which hiredis gives the root task. */
static rd_arena *task_arena(const redisReadTask *task)
{
    while (task->parent != NULL)
        task = task->parent;
    return task->privdata;
}

/* A node for task: zeroed, linked into its parent's elements. The first node of a reply starts the arena
 * over (the previous reply was answered before hiredis began this one). NULL: hiredis reports OOM. */
static redisReply *ar_node(const redisReadTask *task, int type)
{
    rd_arena *a = task_arena(task);
    if (task->parent == NULL) ar_reset(a);
    rd_obj *o = ar_alloc(a, sizeof(rd_obj) + sizeof(redisReply), true);
    if (o == NULL) return NULL;
    o->arena = a;
    redisReply *r = (redisReply *)(void *)o->pad;
    r->type = type;
    if (task->parent == NULL) {
        a->root = r;
    } else {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *ar_string(const redisReadTask *task, char *str, size_t len)
{
    redisReply *r = ar_node(task, task->type);
    if (r == NULL) return NULL;
    char *buf = len < SIZE_MAX ? ar_alloc(task_arena(task), len + 1, false) : NULL;
    if (buf == NULL) return NULL;
    memcpy(buf, str, len);
    buf[len] = '\0';
    r->str = buf;
    r->len = len;
    return r;
}

static void *ar_array(const redisReadTask *task, int elements)
{
    if (elements > RD_REPLY_ELEMENTS_MAX) return NULL;
    redisReply *r = ar_node(task, REDIS_REPLY_ARRAY);
    if (r == NULL) return NULL;
    if (elements > 0) {
        r->element = ar_alloc(task_arena(task), (size_t)elements * sizeof(redisReply *), true);
        if (r->element == NULL) return NULL;
    }
    r->elements = elements > 0 ? (size_t)elements : 0;
    return r;
}

static void *ar_integer(const redisReadTask *task, long long value)
{
    redisReply *r = ar_node(task, REDIS_REPLY_INTEGER);
    if (r != NULL) r->integer = value;
    return r;
}

static void *ar_nil(const redisReadTask *task)
{
    return ar_node(task, REDIS_REPLY_NIL);
}

/* hiredis frees a reply's root once it was answered (and a partial one with the reader): the arena's
 * objects go with it. Other objects are never freed one by one. */
static void ar_free_object(void *obj)
{
    if (obj == NULL) return;
    rd_obj *o = (rd_obj *)(void *)((char *)obj - offsetof(rd_obj, pad));
    rd_arena *a = o->arena;
    if (a->root == obj) ar_reset(a);
}

/* Flattens a redisReply tree into views: node x's children are contiguous in pool. */
static size_t rd_count(const redisReply *x)
{
    size_t n = 1;
    if (x->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < x->elements; i++)
            n += rd_count(x->element[i]);
    return n;
}

static void rd_fill(th_redis_reply *out, const redisReply *x, th_redis_reply *pool, size_t *next)
{
    out->type = x->type;
    out->integer = x->integer;
    out->str = x->str;
    out->len = x->str ? x->len : 0;
    out->elements = 0;
    out->element = NULL;
    if (x->type == REDIS_REPLY_ARRAY && x->elements > 0) {
        size_t base = *next;
        *next += x->elements;
        out->elements = x->elements;
        out->element = &pool[base];
        for (size_t i = 0; i < x->elements; i++)
            rd_fill(&pool[base + i], x->element[i], pool, next);
    }
}

/* Gives the caller its answer to a reply. */
static void rd_observe(rd_conn *r, uint64_t sent_us)
{
    uint64_t now = th_mono_us();
    double s = now > sent_us ? (double)(now - sent_us) / 1e6 : 0;
    int b = 0;
    while (b < TH_REDIS_LAT_BUCKETS && s > th_redis_lat_bounds[b])
        b++;
    r->stats.lat_count[b]++;
    r->stats.lat_sum_s += s;
    r->stats.replies++;
}

/* Gives cb the views of rep. */
static void rd_answer(th_redis_cb cb, void *ud, const redisReply *rep)
{
    th_redis_reply top;
    /* the policy's answer is about 13 nodes per admission of the turn: views of replies of up to 256 nodes
     * (about 20 admissions) live on the stack (12 KiB), since a larger malloc makes glibc consolidate */
    th_redis_reply small[256];
    th_redis_reply *pool = NULL;
    size_t n = rd_count(rep);
    if (n > 1 && n - 1 <= sizeof small / sizeof small[0]) {
        pool = small;
    } else if (n > 1) {
        pool = calloc(n - 1, sizeof *pool);
        if (pool == NULL) {
            th_redis_reply oom = {.type = REDIS_REPLY_ERROR, .str = "ERR out of memory", .len = 17};
            cb(ud, TH_REDIS_ERROR, &oom);
            return;
        }
    }
    size_t next = 0;
    rd_fill(&top, rep, pool, &next);
    cb(ud, rep->type == REDIS_REPLY_ERROR ? TH_REDIS_ERROR : TH_REDIS_OK, &top);
    if (pool != small) free(pool);
}

static void rd_finish_reply(rd_cmd *c, const redisReply *rep)
{
    rd_conn *r = c->r;
    rd_unqueue(r, c);
    rd_observe(r, c->sent_us); /* a quiet command's includes the time its reply waited in the socket */
    c->done = true;
    th_redis_cb cb = c->cb;
    void *ud = c->ud;
    rd_cmd_release(c);
    rd_answer(cb, ud, rep);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rd_cmd *c = privdata;
    rd_conn *r = c->r;
    redisReply *rep = reply;
    if (rep == NULL) {
        /* The context is going away: an error, or our own redisAsyncFree. c->held is still counted here,
         * so rd_lost (which answers and releases every queued record) cannot free c under us. */
        if (ac == r->ac) rd_lost(r, ac->c.errstr[0] ? ac->c.errstr : "connection lost");
        c->held--;
        if (!c->done) { /* not reachable: rd_lost answered everything that was queued */
            rd_unqueue(r, c);
            c->done = true;
            c->cb(c->ud, TH_REDIS_DOWN, NULL);
        }
        rd_cmd_release(c);
        return;
    }
    c->held--;
    if (ac == r->ac) {
        r->stall_since = 0; /* the server is answering */
        r->last_reply = uv_now(r->loop);
    }
    if (c->internal) {
        if (ac == r->ac && r->st == RS_CONNECTING && !c->optional) {
            if (rep->type == REDIS_REPLY_ERROR) {
                char why[160];
                snprintf(why, sizeof why, "handshake failed: %.*s", (int)(rep->len < 120 ? rep->len : 120),
                         rep->str ? rep->str : "");
                rd_drop(r, why);
            } else if (--r->handshake_left == 0) {
                rd_ready(r);
            }
        }
        rd_cmd_release(c);
        return;
    }
    if (c->done) { /* timed out earlier: drop the late reply */
        rd_cmd_release(c);
        return;
    }
    if (rep->type == REDIS_REPLY_ERROR && c->eval_n > 0 && !c->fell_back && rep->len >= 8 &&
        memcmp(rep->str, "NOSCRIPT", 8) == 0 && ac == r->ac) {
        c->fell_back = true;
        if (rd_send_eval(ac, c) == REDIS_OK) {
            c->held++;
            return;
        }
    }
    rd_finish_reply(c, rep);
}

/* ---- event hooks ---------------------------------------------------------------------------------
 * hiredis 0.14.1's libuv adapter ignores a poll callback with status < 0. libuv reports POLLERR that way
 * (UV_EBADF) and stops the handle, so a refused connect, or a reset connection, would go unnoticed until
 * a timeout. redisLibuvAttach sets everything up; these hooks replace its four start/stop hooks with ones
 * whose poll callback lets hiredis read the socket error itself (the connect check, or a failing read). */

static void rd_poll_cb(uv_poll_t *h, int status, int events)
{
    redisLibuvEvents *p = h->data;
    redisAsyncContext *ac = p->context;
    if (ac == NULL) return;
    if (status < 0) {
        if (!(ac->c.flags & REDIS_CONNECTED))
            redisAsyncHandleWrite(ac); /* connect failed: on_connect(ERR) */
        else
            redisAsyncHandleRead(ac); /* the read fails: disconnect */
        return;
    }
    if (events & UV_READABLE) redisAsyncHandleRead(ac);
    if (p->context != NULL && (events & UV_WRITABLE)) redisAsyncHandleWrite(ac);
}

/* uv_poll_start stops and restarts the watcher, which costs an epoll_ctl even when nothing changes (and
 * hiredis asks for reads after every write): only a change is applied. */
static void rd_poll_set(redisLibuvEvents *p, int events)
{
    if (events == p->events) return;
    p->events = events;
    if (p->events)
        uv_poll_start(&p->handle, p->events, rd_poll_cb);
    else
        uv_poll_stop(&p->handle);
}

/* The read interest of the current context: hiredis' wish, unless the connection is parked. */
static void rd_apply_read(rd_conn *r)
{
    if (r->ac == NULL || r->ac->ev.data == NULL) return;
    redisLibuvEvents *p = r->ac->ev.data;
    int rd = r->read_wanted && !r->parked ? UV_READABLE : 0;
    rd_poll_set(p, (p->events & ~UV_READABLE) | rd);
}

static void rd_add_read(void *priv)
{
    redisLibuvEvents *p = priv;
    redisAsyncContext *ac = p->context;
    rd_conn *r = ac != NULL ? ac->data : NULL;
    if (r != NULL && ac == r->ac) {
        r->read_wanted = true;
        rd_apply_read(r);
        return;
    }
    rd_poll_set(p, p->events | UV_READABLE);
}

static void rd_del_read(void *priv)
{
    redisLibuvEvents *p = priv;
    redisAsyncContext *ac = p->context;
    rd_conn *r = ac != NULL ? ac->data : NULL;
    if (r != NULL && ac == r->ac) r->read_wanted = false;
    rd_poll_set(p, p->events & ~UV_READABLE);
}

static void rd_unpark(rd_conn *r)
{
    if (!r->parked) return;
    r->parked = false;
    uv_timer_stop(&r->lazy_timer);
    rd_apply_read(r);
}

static void on_lazy_timer(uv_timer_t *t)
{
    rd_unpark(t->data);
}

/* After a write: with only quiet commands in flight nothing waits for a reply, so the loop is not woken
 * for them (a wake-up and a read per request at low rates); the next awaited command, or lazy_timer,
 * turns reading on again and the replies are read together. */
static void rd_maybe_park(rd_conn *r)
{
    if (r->parked || r->st != RS_READY || r->ac == NULL || r->awaited > 0 || r->stats.inflight == 0) return;
    r->parked = true;
    rd_apply_read(r);
    uint64_t lazy = r->timeout_ms / 4 < RD_LAZY_MS ? r->timeout_ms / 4 : RD_LAZY_MS;
    uv_timer_start(&r->lazy_timer, on_lazy_timer, lazy > 0 ? lazy : 1, 0);
}

/* Pipelining without a poll per batch: on a connected context, a command queued by hiredis arms the flush
 * check instead of write interest, so every command of a loop turn leaves in one write at the end of the
 * turn, and the socket's epoll interest stays "readable" (no epoll_ctl per batch). Only a write that could
 * not finish (a full socket buffer) waits for writability. Connecting still waits for writability, which
 * is how a non-blocking connect completes. */
/* hiredis frees its output buffer after every complete write and starts an empty one, so the next batch
 * grew a new one: with a cache store (a 4 KiB value) in every batch that was a large malloc per request,
 * and glibc consolidates its free lists before each (about a tenth of the hub's CPU on the Redis path).
 * The batch is written here instead and the buffer kept, cleared (up to RD_OBUF_KEEP). true when all of
 * it went; otherwise hiredis writes the rest (or sees the error) as before. */
#define RD_OBUF_KEEP (256u << 10)
static bool rd_write_keep(redisAsyncContext *ac)
{
    redisContext *c = &ac->c;
    size_t len = sdslen(c->obuf);
    if (len == 0) return true;
    ssize_t n = send(c->fd, c->obuf, len, MSG_NOSIGNAL);
    if (n <= 0) return false;
    if ((size_t)n < len) {
        sdsrange(c->obuf, (int)n, -1);
        return false;
    }
    if (sdsalloc(c->obuf) > RD_OBUF_KEEP) {
        sds fresh = sdsempty();
        if (fresh == NULL) {
            sdsclear(c->obuf);
            return true;
        }
        sdsfree(c->obuf);
        c->obuf = fresh;
    } else {
        sdsclear(c->obuf);
    }
    return true;
}

static void on_flush(uv_check_t *h)
{
    rd_conn *r = h->data;
    uv_check_stop(&r->flush);
    uv_idle_stop(&r->nudge);
    r->flush_armed = false;
    if (r->ac == NULL || r->freeing || !(r->ac->c.flags & REDIS_CONNECTED)) return;
    r->in_flush = true;
    if (!rd_write_keep(r->ac))
        redisAsyncHandleWrite(
            r->ac); /* calls rd_add_write (in_flush: real interest) when it could not finish */
    r->in_flush = false;
    if (r->ac != NULL) rd_maybe_park(r);
}

static void on_nudge(uv_idle_t *h)
{
    (void)h; /* only keeps the loop from blocking before the flush */
}

static void rd_add_write(void *priv)
{
    redisLibuvEvents *p = priv;
    redisAsyncContext *ac = p->context;
    rd_conn *r = ac != NULL ? ac->data : NULL;
    if (r != NULL && ac == r->ac && (ac->c.flags & REDIS_CONNECTED) && !r->in_flush && !r->freeing) {
        if (!r->flush_armed) {
            r->flush_armed = true;
            uv_check_start(&r->flush, on_flush);
            uv_idle_start(&r->nudge, on_nudge);
        }
        return;
    }
    rd_poll_set(p, p->events | UV_WRITABLE);
}

static void rd_del_write(void *priv)
{
    redisLibuvEvents *p = priv;
    rd_poll_set(p, p->events & ~UV_WRITABLE);
}

/* ---- timers ------------------------------------------------------------------------------------- */

static void rd_connect(rd_conn *r)
{
    if (r->doomed != NULL) { /* only ever from a timer callback: not inside hiredis */
        redisAsyncContext *old = r->doomed;
        r->doomed = NULL;
        redisAsyncFree(old);
    }
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);
    if (ac == NULL) {
        rd_set_text(r, "down: out of memory");
        rd_schedule(r);
        return;
    }
    if (ac->err) {
        rd_set_text(r, "down: %s", ac->errstr ? ac->errstr : "connect failed");
        TH_LOG(r->log, TH_LOG_DEBUG, "redis %s:%d: %s", r->host, r->port, r->state_text);
        redisAsyncFree(ac);
        rd_schedule(r);
        return;
    }
    ac->data = r;
    ar_reset(&r->arena); /* the previous context and its reader are gone */
    r->fns = (redisReplyObjectFunctions){ar_string, ar_array, ar_integer, ar_nil, ar_free_object};
    ac->c.reader->fn = &r->fns;
    ac->c.reader->privdata = &r->arena;
    if (redisLibuvAttach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        rd_set_text(r, "down: cannot attach to the loop");
        rd_schedule(r);
        return;
    }
    ac->ev.addRead = rd_add_read;
    ac->ev.delRead = rd_del_read;
    ac->ev.addWrite = rd_add_write;
    ac->ev.delWrite = rd_del_write;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->nloaded = 0; /* a new connection may reach a new (or flushed) server */
    r->read_wanted = false;
    r->parked = false;
    uv_timer_stop(&r->lazy_timer);
    r->st = RS_CONNECTING;
    r->stall_since = 0;
    /* the text stays "connecting" before the first attempt ends, and "down: <why>" while retrying */
    uint64_t cto = r->timeout_ms > RD_CONNECT_MIN_MS ? r->timeout_ms : RD_CONNECT_MIN_MS;
    uv_timer_start(&r->conn_timer, on_reconnect_timer, cto, 0);
}

/* conn_timer: in BACKOFF, time to reconnect; in CONNECTING, the connect (or handshake) timed out. */
static void on_reconnect_timer(uv_timer_t *t)
{
    rd_conn *r = t->data;
    if (r->freeing) return;
    if (r->st == RS_CONNECTING) {
        rd_drop(r, "connect timeout");
        return;
    }
    if (r->st == RS_BACKOFF) rd_connect(r);
}

static void on_cmd_timer(uv_timer_t *t)
{
    rd_conn *r = t->data;
    uint64_t now = uv_now(r->loop);
    while (r->head != NULL && r->head->deadline <= now) {
        rd_cmd *c = r->head;
        rd_unqueue(r, c);
        c->done = true;
        r->stats.failures++;
        if (r->stall_since == 0 || c->sent < r->stall_since) r->stall_since = c->sent ? c->sent : 1;
        th_redis_cb cb = c->cb;
        void *ud = c->ud;
        rd_cmd_release(c); /* still held by hiredis: freed when its reply (or NULL) comes */
        cb(ud, TH_REDIS_TIMEOUT, NULL);
        if (r->freeing) return;
    }
    /* A server that answers nothing at all (stopped, partitioned) would make every command wait for its
     * timeout: after a long silence drop the connection, so commands fail at once until it is back. */
    uint64_t stall = r->timeout_ms * 10 > RD_STALL_MIN_MS ? r->timeout_ms * 10 : RD_STALL_MIN_MS;
    if (r->st == RS_READY && r->stall_since != 0 && now - r->stall_since >= stall) {
        char why[96];
        uint64_t since = r->stall_since;
        snprintf(why, sizeof why, "no reply for %llu ms", (unsigned long long)(now - since));
        th_redis *pool = r->pool;
        rd_drop(r, why);
        /* The same server is silent to the rest of the pool: a connection that has heard nothing since
         * the stall began (an idle one, say) is dropped too, so no lane keeps sending into the silence. */
        for (int i = 0; pool != NULL && !pool->freeing && i < RD_CONNS_MAX; i++) {
            rd_conn *o = pool->conn[i];
            if (o != NULL && o != r && rd_usable(o) && o->last_reply < since) rd_drop(o, why);
        }
        return;
    }
    if (r->head != NULL) uv_timer_start(&r->cmd_timer, on_cmd_timer, r->head->deadline - now, 0);
}

static void on_handle_closed(uv_handle_t *h)
{
    rd_conn *r = h->data;
    if (--r->open_handles > 0) return;
    th_redis *pool = r->pool;
    ar_free(&r->arena); /* every context (and its reader) was freed before the handles closed */
    free(r->host);
    free(r->user);
    free(r->pass);
    free(r);
    if (pool != NULL && --pool->live == 0) {
        for (int i = 0; i < pool->nscripts; i++)
            free(pool->scripts[i].text);
        free(pool);
    }
}

static void on_drop_timer(uv_timer_t *t)
{
    rd_conn *r = t->data;
    redisAsyncContext *ac = r->doomed;
    r->doomed = NULL;
    if (ac != NULL) redisAsyncFree(ac); /* NULL replies free the held records; on_disconnect ignores it */
    if (r->freeing) {
        uv_close((uv_handle_t *)&r->conn_timer, on_handle_closed);
        uv_close((uv_handle_t *)&r->cmd_timer, on_handle_closed);
        uv_close((uv_handle_t *)&r->drop_timer, on_handle_closed);
        uv_close((uv_handle_t *)&r->flush, on_handle_closed);
        uv_close((uv_handle_t *)&r->nudge, on_handle_closed);
        uv_close((uv_handle_t *)&r->lazy_timer, on_handle_closed);
    }
}

/* ---- API ---------------------------------------------------------------------------------------- */

static rd_conn *rd_conn_new(th_redis *pool, int lane, uint32_t max_inflight, uv_loop_t *loop, const char *url,
                            uint64_t timeout_ms, th_log *log, char *err, size_t errlen)
{
    rd_conn *r = calloc(1, sizeof *r);
    if (r == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    r->pool = pool;
    r->lane = lane;
    r->max_inflight = max_inflight;
    r->loop = loop;
    r->log = log;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 200;
    r->backoff_ms = RD_BACKOFF_MIN_MS;
    if (parse_url(r, url, err, errlen) != 0) goto fail;
    uv_timer_init(loop, &r->conn_timer);
    uv_timer_init(loop, &r->cmd_timer);
    uv_timer_init(loop, &r->drop_timer);
    r->conn_timer.data = r->cmd_timer.data = r->drop_timer.data = r;
    uv_check_init(loop, &r->flush);
    uv_idle_init(loop, &r->nudge);
    r->flush.data = r->nudge.data = r;
    uv_timer_init(loop, &r->lazy_timer);
    r->lazy_timer.data = r;
    r->open_handles = 6;
    rd_set_text(r, "connecting");
    rd_connect(r);
    return r;
fail:
    free(r->host);
    free(r->user);
    free(r->pass);
    free(r);
    return NULL;
}

static rd_cmd *rd_cmd_new(rd_conn *r, th_redis_cb cb, void *ud)
{
    rd_cmd *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->r = r;
    c->cb = cb;
    c->ud = ud;
    return c;
}

static void rd_enqueue(rd_conn *r, rd_cmd *c)
{
    uv_update_time(r->loop); /* the cached loop time may be old after a long callback */
    uint64_t now = uv_now(r->loop);
    c->sent = now;
    c->deadline = now + r->timeout_ms;
    c->sent_us = th_mono_us();
    c->held = 1;
    c->queued = true;
    r->stats.inflight++;
    r->stats.commands++;
    if (!c->quiet) {
        r->awaited++;
        rd_unpark(r);
    }
    c->prev = r->tail;
    c->next = NULL;
    if (r->tail)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    if (!uv_is_active((uv_handle_t *)&r->cmd_timer))
        uv_timer_start(&r->cmd_timer, on_cmd_timer, c->deadline - now, 0);
}

static bool rd_usable(const rd_conn *r)
{
    return !r->freeing && r->st == RS_READY && r->ac != NULL;
}

static int rd_conn_cmd(rd_conn *r, th_redis_cb cb, void *ud, int argc, const char **argv,
                       const size_t *argvlen)
{
    if (!rd_usable(r)) {
        cb(ud, TH_REDIS_DOWN, NULL);
        return 0;
    }
    rd_cmd *c = rd_cmd_new(r, cb, ud);
    if (c == NULL) return -1;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        cb(ud, TH_REDIS_DOWN, NULL);
        return 0;
    }
    rd_enqueue(r, c);
    return 0;
}

/* A command already in RESP form (argc, then each argument as a bulk string). */
static int rd_conn_cmd_resp(rd_conn *r, th_redis_cb cb, void *ud, const char *resp, size_t len, bool quiet)
{
    if (!rd_usable(r)) {
        cb(ud, TH_REDIS_DOWN, NULL);
        return 0;
    }
    rd_cmd *c = rd_cmd_new(r, cb, ud);
    if (c == NULL) return -1;
    if (redisAsyncFormattedCommand(r->ac, on_reply, c, resp, len) != REDIS_OK) {
        free(c);
        cb(ud, TH_REDIS_DOWN, NULL);
        return 0;
    }
    c->quiet = quiet;
    rd_enqueue(r, c);
    return 0;
}

static void sha1_hex(const char *s, size_t n, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(s, n, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20) {
        memset(out, '0', 40); /* EVALSHA then fails with NOSCRIPT and EVAL runs */
        out[40] = '\0';
        return;
    }
    th_hex(md, 20, out);
}

/* The pool's copy of a script (made the first time it is seen; NULL when the table is full or on ENOMEM,
 * and the caller then copies and hashes it per call as before). */
static const rd_script *rd_script_get(th_redis *p, const char *script, size_t slen)
{
    if (p == NULL) return NULL;
    for (int i = 0; i < p->nscripts; i++) {
        const rd_script *s = &p->scripts[i];
        if (s->len == slen && memcmp(s->text, script, slen) == 0) return s;
    }
    if (p->nscripts >= RD_SCRIPTS_MAX) return NULL;
    rd_script *s = &p->scripts[p->nscripts];
    s->text = malloc(slen + 1);
    if (s->text == NULL) return NULL;
    memcpy(s->text, script, slen + 1);
    s->len = slen;
    sha1_hex(script, slen, s->sha);
    p->nscripts++;
    return s;
}

/* ---- EVAL / EVALSHA in RESP, formatted here ---------------------------------------------------------
 * An EVALSHA is "*N\r\n$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n" followed by the tail: nkeys and the arguments as
 * bulk strings. The tail is written once, into the command's record, right after room for the head, so
 * head and tail go to hiredis as one formatted command (hiredis only copies it into its output buffer);
 * the NOSCRIPT fallback sends "EVAL <script>" with the same tail. */

#define RD_HEAD_ROOM 96 /* "*N\r\n" + EVALSHA + "$40\r\n<sha>\r\n" */

static size_t rd_dec_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

/* "$<n>\r\n<bytes>\r\n" at p; returns the end. */
static char *rd_bulk(char *p, const char *s, size_t n)
{
    *p++ = '$';
    p += th_u64_dec(p, n);
    *p++ = '\r';
    *p++ = '\n';
    if (n > 0) memcpy(p, s, n);
    p += n;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* "*<n>\r\n" at p; returns the end. */
static char *rd_count_hdr(char *p, size_t n)
{
    *p++ = '*';
    p += th_u64_dec(p, n);
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* EVAL <script> and the kept tail (the first send on a connection, and the NOSCRIPT fallback). */
static int rd_send_eval(redisAsyncContext *ac, rd_cmd *c)
{
    size_t len = 24 + 10 + 32 + c->slen + c->tail_len;
    char *buf = malloc(len);
    if (buf == NULL) return REDIS_ERR;
    char *p = rd_count_hdr(buf, (size_t)c->eval_n);
    p = rd_bulk(p, "EVAL", 4);
    p = rd_bulk(p, c->script, c->slen);
    memcpy(p, c->tail, c->tail_len);
    p += c->tail_len;
    int rc = redisAsyncFormattedCommand(ac, on_reply, c, buf, (size_t)(p - buf));
    free(buf);
    return rc;
}

/* EVALSHA <sha> and the tail, from the record's head room. */
static int rd_send_evalsha(redisAsyncContext *ac, rd_cmd *c)
{
    char head[RD_HEAD_ROOM];
    char *p = rd_count_hdr(head, (size_t)c->eval_n);
    p = rd_bulk(p, "EVALSHA", 7);
    p = rd_bulk(p, c->sha, 40);
    size_t hlen = (size_t)(p - head);
    char *start = (char *)c->tail - hlen;
    memcpy(start, head, hlen);
    return redisAsyncFormattedCommand(ac, on_reply, c, start, hlen + c->tail_len);
}

static int rd_conn_eval(rd_conn *r, th_redis_cb cb, void *ud, const char *script, int nkeys, int argc,
                        const char **argv, const size_t *argvlen, bool quiet)
{
    if (!rd_usable(r)) {
        cb(ud, TH_REDIS_DOWN, NULL);
        return 0;
    }
    if (argc < 0 || nkeys < 0 || nkeys > argc) {
        th_redis_reply e = {.type = REDIS_REPLY_ERROR, .str = "ERR bad EVAL arguments", .len = 22};
        cb(ud, TH_REDIS_ERROR, &e);
        return 0;
    }
    size_t slen = strlen(script);
    /* A script the pool has seen before is not copied nor hashed again: its copy and SHA live in the pool
     * (hashing a 3 KB script per request cost more than the rest of the call). */
    const rd_script *known = rd_script_get(r->pool, script, slen);
    char nk[24];
    size_t nklen = th_u64_dec(nk, (uint64_t)nkeys);
    size_t tail = 1 + rd_dec_len(nklen) + 2 + nklen + 2;
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        tail += 1 + rd_dec_len(len) + 2 + len + 2;
    }
    /* one block: the record, the head room, the tail, then the script when the pool has no copy */
    size_t head =
        (sizeof(rd_cmd) + _Alignof(max_align_t) - 1) / _Alignof(max_align_t) * _Alignof(max_align_t);
    char *mem = malloc(head + RD_HEAD_ROOM + tail + (known ? 0 : slen + 1));
    if (mem == NULL) return -1;
    rd_cmd *c = (rd_cmd *)(void *)mem;
    *c = (rd_cmd){
        .r = r, .cb = cb, .ud = ud, .eval_n = argc + 3, .slen = slen, .tail_len = tail, .quiet = quiet};
    char *t = mem + head + RD_HEAD_ROOM;
    c->tail = t;
    char *p = rd_bulk(t, nk, nklen);
    for (int i = 0; i < argc; i++)
        p = rd_bulk(p, argv[i], argvlen ? argvlen[i] : strlen(argv[i]));
    if (known != NULL) {
        c->script = known->text;
        memcpy(c->sha, known->sha, sizeof c->sha);
    } else {
        memcpy(p, script, slen + 1);
        c->script = p;
        sha1_hex(script, slen, c->sha);
    }
    /* The first time on a connection the script goes with EVAL, which loads it; later calls use EVALSHA.
     * Commands stay in order that way (a NOSCRIPT fallback would run after what was sent meanwhile); the
     * fallback remains for a server whose scripts were flushed. */
    bool loaded = false;
    for (int i = 0; i < r->nloaded && !loaded; i++)
        loaded = memcmp(r->loaded[i], c->sha, 41) == 0;
    int rc;
    if (!loaded) {
        rc = rd_send_eval(r->ac, c);
        if (rc == REDIS_OK) {
            c->fell_back = true;
            if (r->nloaded < RD_SCRIPTS_MAX) memcpy(r->loaded[r->nloaded++], c->sha, 41);
        }
    } else {
        rc = rd_send_evalsha(r->ac, c);
    }
    if (rc != REDIS_OK) {
        rd_cmd_free(c);
        cb(ud, TH_REDIS_DOWN, NULL);
        return 0;
    }
    rd_enqueue(r, c);
    return 0;
}

static void rd_conn_free(rd_conn *r)
{
    if (r == NULL || r->freeing) return;
    r->freeing = true;
    uv_timer_stop(&r->conn_timer);
    if (r->ac != NULL) r->doomed = r->ac; /* never both set (see the top of the file) */
    r->ac = NULL;
    r->st = RS_BACKOFF;
    rd_set_text(r, "down: closed");
    uv_timer_start(&r->drop_timer, on_drop_timer, 0, 0);
    rd_fail_pending(r, TH_REDIS_DOWN);
}

/* ---- the pool ----------------------------------------------------------------------------------- */

const double th_redis_lat_bounds[TH_REDIS_LAT_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                          0.01,   0.025,   0.05,   0.1,   0.25,   1.0};

th_redis *th_redis_new_pool(uv_loop_t *loop, const char *url, uint64_t timeout_ms,
                            const th_redis_pool_conf *pc, th_log *log, char *err, size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    int np = pc && pc->policy_conns > 0 ? pc->policy_conns : TH_REDIS_POOL_DEFAULT;
    if (np > RD_CONNS_MAX - 1) np = RD_CONNS_MAX - 1;
    uint32_t mi = pc && pc->max_inflight > 0 ? pc->max_inflight : TH_REDIS_INFLIGHT_DEFAULT;
    th_redis *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->first[TH_REDIS_LANE_POLICY] = 0;
    p->count[TH_REDIS_LANE_POLICY] = np;
    p->first[TH_REDIS_LANE_BULK] = np;
    p->count[TH_REDIS_LANE_BULK] = 1;
    snprintf(p->state_text, sizeof p->state_text, "connecting");
    for (int i = 0; i < np + 1; i++) {
        int lane = i < np ? TH_REDIS_LANE_POLICY : TH_REDIS_LANE_BULK;
        p->conn[i] = rd_conn_new(p, lane, mi, loop, url, timeout_ms, log, err, errlen);
        if (p->conn[i] == NULL) {
            if (i == 0) { /* nothing was started: no handle to wait for */
                free(p);
                return NULL;
            }
            th_redis_free(p); /* the connections made so far close, and the last one frees p */
            return NULL;
        }
        p->total++;
        p->live++;
    }
    return p;
}

th_redis *th_redis_new(uv_loop_t *loop, const char *url, uint64_t timeout_ms, th_log *log, char *err,
                       size_t errlen)
{
    return th_redis_new_pool(loop, url, timeout_ms, NULL, log, err, errlen);
}

/* The first connected connection of the lane with fewer than RD_SPILL commands in flight, else the one
 * with the fewest; NULL when none can take one. *busy is set when some are connected but all are at
 * max_inflight. Filling the first connection before the next keeps the batches large: Redis runs one
 * command at a time whatever the number of connections, and every connection in use costs its own write
 * and read per loop turn. The others take over when it is lost or has a long queue. */
static rd_conn *rd_pick(th_redis *p, th_redis_lane lane, bool *busy)
{
    *busy = false;
    if (p == NULL || p->freeing || (int)lane < 0 || lane >= TH_REDIS_LANES) return NULL;
    rd_conn *best = NULL;
    int n = p->count[lane], first = p->first[lane];
    for (int k = 0; k < n; k++) {
        rd_conn *c = p->conn[first + k];
        if (c == NULL || !rd_usable(c)) continue;
        if (c->stats.inflight >= c->max_inflight) {
            *busy = true;
            continue;
        }
        if (c->stats.inflight < RD_SPILL) {
            best = c;
            break;
        }
        if (best == NULL || c->stats.inflight < best->stats.inflight) best = c;
    }
    if (best != NULL) *busy = false;
    return best;
}

/* A connection of the lane, or NULL after answering cb at once (BUSY when all are full, else DOWN). */
static rd_conn *rd_pick_or_answer(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud)
{
    bool busy;
    rd_conn *c = rd_pick(r, lane, &busy);
    if (c == NULL) {
        if (busy) r->busy[lane]++;
        cb(ud, busy ? TH_REDIS_BUSY : TH_REDIS_DOWN, NULL);
    }
    return c;
}

int th_redis_cmd_lane(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, int argc, const char **argv,
                      const size_t *argvlen)
{
    rd_conn *c = rd_pick_or_answer(r, lane, cb, ud);
    if (c == NULL) return 0;
    return rd_conn_cmd(c, cb, ud, argc, argv, argvlen);
}

int th_redis_cmd_lane_resp(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *resp,
                           size_t len)
{
    rd_conn *c = rd_pick_or_answer(r, lane, cb, ud);
    if (c == NULL) return 0;
    return rd_conn_cmd_resp(c, cb, ud, resp, len, false);
}

int th_redis_cmd_lane_resp_quiet(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *resp,
                                 size_t len)
{
    rd_conn *c = rd_pick_or_answer(r, lane, cb, ud);
    if (c == NULL) return 0;
    return rd_conn_cmd_resp(c, cb, ud, resp, len, true);
}

int th_redis_eval_lane(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *script,
                       int nkeys, int argc, const char **argv, const size_t *argvlen)
{
    rd_conn *c = rd_pick_or_answer(r, lane, cb, ud);
    if (c == NULL) return 0;
    return rd_conn_eval(c, cb, ud, script, nkeys, argc, argv, argvlen, false);
}

int th_redis_eval_lane_quiet(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *script,
                             int nkeys, int argc, const char **argv, const size_t *argvlen)
{
    rd_conn *c = rd_pick_or_answer(r, lane, cb, ud);
    if (c == NULL) return 0;
    return rd_conn_eval(c, cb, ud, script, nkeys, argc, argv, argvlen, true);
}

/* The first policy connection, so that commands sent through th_redis_cmd / th_redis_eval stay in order
 * (a caller may SET and then GET); NULL when it cannot take one. */
static rd_conn *rd_ordered(th_redis *p, bool *busy)
{
    *busy = false;
    if (p == NULL || p->freeing) return NULL;
    rd_conn *c = p->conn[p->first[TH_REDIS_LANE_POLICY]];
    if (c == NULL || !rd_usable(c)) return NULL;
    if (c->stats.inflight >= c->max_inflight) {
        *busy = true;
        return NULL;
    }
    return c;
}

int th_redis_cmd(th_redis *r, th_redis_cb cb, void *ud, int argc, const char **argv, const size_t *argvlen)
{
    bool busy;
    rd_conn *c = rd_ordered(r, &busy);
    if (c == NULL) {
        if (busy) r->busy[TH_REDIS_LANE_POLICY]++;
        cb(ud, busy ? TH_REDIS_BUSY : TH_REDIS_DOWN, NULL);
        return 0;
    }
    return rd_conn_cmd(c, cb, ud, argc, argv, argvlen);
}

int th_redis_eval(th_redis *r, th_redis_cb cb, void *ud, const char *script, int nkeys, int argc,
                  const char **argv, const size_t *argvlen)
{
    bool busy;
    rd_conn *c = rd_ordered(r, &busy);
    if (c == NULL) {
        if (busy) r->busy[TH_REDIS_LANE_POLICY]++;
        cb(ud, busy ? TH_REDIS_BUSY : TH_REDIS_DOWN, NULL);
        return 0;
    }
    return rd_conn_eval(c, cb, ud, script, nkeys, argc, argv, argvlen, false);
}

/* Connected when the first policy connection is: it carries th_redis_cmd / th_redis_eval, and the lanes
 * prefer it. */
bool th_redis_connected(const th_redis *r)
{
    if (r == NULL || r->freeing) return false;
    const rd_conn *c = r->conn[r->first[TH_REDIS_LANE_POLICY]];
    return c != NULL && rd_usable(c);
}

const char *th_redis_state(const th_redis *r)
{
    if (r == NULL) return "down: not configured";
    if (r->freeing) return "down: closed";
    if (th_redis_connected(r)) return "connected";
    return r->conn[0] != NULL ? r->conn[0]->state_text : r->state_text;
}

uv_loop_t *th_redis_loop(const th_redis *r)
{
    return r != NULL && r->conn[0] != NULL ? r->conn[0]->loop : NULL;
}

void th_redis_lane_get_stats(const th_redis *r, th_redis_lane lane, th_redis_lane_stats *out)
{
    memset(out, 0, sizeof *out);
    if (r == NULL || (int)lane < 0 || lane >= TH_REDIS_LANES) return;
    for (int i = r->first[lane]; i < r->first[lane] + r->count[lane]; i++) {
        const rd_conn *c = r->conn[i];
        if (c == NULL) continue;
        out->conns++;
        if (rd_usable(c)) out->connected++;
        out->inflight += c->stats.inflight;
        out->commands += c->stats.commands;
        out->replies += c->stats.replies;
        out->failures += c->stats.failures;
        for (int b = 0; b <= TH_REDIS_LAT_BUCKETS; b++)
            out->lat_count[b] += c->stats.lat_count[b];
        out->lat_sum_s += c->stats.lat_sum_s;
    }
    out->busy = r->busy[lane];
}

void th_redis_free(th_redis *r)
{
    if (r == NULL || r->freeing) return;
    r->freeing = true;
    /* each connection frees itself once its handles are closed; the last one frees the pool */
    for (int i = 0; i < RD_CONNS_MAX; i++)
        if (r->conn[i] != NULL) rd_conn_free(r->conn[i]);
}

void th_redis_flush(th_redis *r)
{
    if (r == NULL || r->freeing) return;
    for (int i = 0; i < RD_CONNS_MAX; i++)
        if (r->conn[i] != NULL && r->conn[i]->flush_armed) on_flush(&r->conn[i]->flush);
}

int th_redis_parse(const char *buf, size_t len, size_t chunk, th_redis_cb cb, void *ud)
{
    rd_arena arena = {0};
    redisReplyObjectFunctions fns = {ar_string, ar_array, ar_integer, ar_nil, ar_free_object};
    redisReader *rd = redisReaderCreate();
    if (rd == NULL) return -1;
    rd->fn = &fns;
    rd->privdata = &arena;
    int n = 0;
    size_t at = 0;
    do {
        size_t k = chunk == 0 || len - at < chunk ? len - at : chunk;
        if (k > 0 && redisReaderFeed(rd, buf + at, k) != REDIS_OK) n = -1;
        at += k;
        while (n >= 0) {
            void *reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK) {
                n = -1;
            } else if (reply != NULL) {
                rd_answer(cb, ud, reply);
                fns.freeObject(reply);
                n++;
                continue;
            }
            break;
        }
    } while (n >= 0 && at < len);
    redisReaderFree(rd); /* frees a partial reply's root through fns */
    ar_free(&arena);
    return n;
}
