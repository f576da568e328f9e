/* regsync: the worker registry in Redis, see regsync.h. */
#include "cluster/regsync.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/str.h"

#define SYNC_EVERY_MS 1000
#define KEY_MAX 256
#define RECORD_MAX 65536 /* bytes of one record read back */

struct th_regsync {
    uv_loop_t *loop;
    th_registry *reg;
    th_redis *redis;
    th_log *log;
    char prefix[128];
    uint64_t ttl_ms;
    uv_timer_t timer;
    int pending;    /* commands whose callback has not run */
    bool syncing;   /* a read-back is under way */
    uint64_t since; /* mono ms when the read-back began */
    bool closing, timer_closed;
};

static void maybe_free(th_regsync *s)
{
    if (s->closing && s->timer_closed && s->pending == 0) free(s);
}

static void on_write(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    th_regsync *s = ud;
    s->pending--;
    if (!s->closing && st != TH_REDIS_OK && st != TH_REDIS_DOWN)
        TH_LOG(s->log, TH_LOG_WARN, "registry: redis write failed: %s",
               st == TH_REDIS_TIMEOUT ? "timeout"
               : rep && rep->str      ? rep->str
                                      : "error");
    maybe_free(s);
}

static int rs_send(th_regsync *s, th_redis_cb cb, int argc, const char **argv, const size_t *lens)
{
    s->pending++;
    if (th_redis_cmd(s->redis, cb, s, argc, argv, lens) != 0) {
        s->pending--;
        return -1;
    }
    return 0;
}

static int node_key(const th_regsync *s, const char *id, char *out, size_t n)
{
    int k = snprintf(out, n, "%snode:%s", s->prefix, id);
    return k > 0 && (size_t)k < n ? k : -1;
}

void th_regsync_publish(th_regsync *s, const char *id)
{
    if (s == NULL || s->closing) return;
    json_t *rec = th_registry_record(s->reg, id, th_mono_ms(), th_wall_ms());
    char *text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
    json_decref(rec);
    char key[KEY_MAX], idx[KEY_MAX], px[24];
    if (text == NULL || node_key(s, id, key, sizeof key) < 0) {
        free(text);
        return;
    }
    snprintf(idx, sizeof idx, "%snodes", s->prefix);
    int pl = snprintf(px, sizeof px, "%llu", (unsigned long long)s->ttl_ms);
    const char *set[] = {"SET", key, text, "PX", px};
    size_t setl[] = {3, strlen(key), strlen(text), 2, (size_t)pl};
    const char *add[] = {"SADD", idx, id};
    size_t addl[] = {4, strlen(idx), strlen(id)};
    if (rs_send(s, on_write, 5, set, setl) != 0 || rs_send(s, on_write, 3, add, addl) != 0)
        TH_LOG(s->log, TH_LOG_WARN, "registry: out of memory writing node %s to redis", id);
    free(text);
}

void th_regsync_unpublish(th_regsync *s, const char *id)
{
    if (s == NULL || s->closing) return;
    char key[KEY_MAX], idx[KEY_MAX];
    if (node_key(s, id, key, sizeof key) < 0) return;
    snprintf(idx, sizeof idx, "%snodes", s->prefix);
    const char *del[] = {"DEL", key};
    size_t dell[] = {3, strlen(key)};
    const char *rem[] = {"SREM", idx, id};
    size_t reml[] = {4, strlen(idx), strlen(id)};
    if (rs_send(s, on_write, 2, del, dell) != 0 || rs_send(s, on_write, 3, rem, reml) != 0)
        TH_LOG(s->log, TH_LOG_WARN, "registry: out of memory removing node %s from redis", id);
}

/* ---- read-back ---- */

typedef struct mget_ctx {
    th_regsync *s;
    size_t n;
    char **ids;
} mget_ctx;

static void mget_ctx_free(mget_ctx *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->ids[i]);
    free(m->ids);
    free(m);
}

static void on_mget(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    mget_ctx *m = ud;
    th_regsync *s = m->s;
    s->pending--;
    s->syncing = false;
    if (s->closing || st != TH_REDIS_OK || rep == NULL || rep->type != REDIS_REPLY_ARRAY ||
        rep->elements != m->n) {
        mget_ctx_free(m);
        maybe_free(s);
        return;
    }
    uint64_t now = th_mono_ms(), wall = th_wall_ms();
    const char **live = calloc(m->n ? m->n : 1, sizeof *live);
    size_t nlive = 0;
    char idx[KEY_MAX];
    snprintf(idx, sizeof idx, "%snodes", s->prefix);
    for (size_t i = 0; i < m->n; i++) {
        const th_redis_reply *e = &rep->element[i];
        if (e->type != REDIS_REPLY_STRING) {
            /* the record expired (silent past remove_after) or was deleted: drop it from the index */
            const char *rem[] = {"SREM", idx, m->ids[i]};
            size_t reml[] = {4, strlen(idx), strlen(m->ids[i])};
            (void)rs_send(s, on_write, 3, rem, reml);
            continue;
        }
        if (e->len > RECORD_MAX) continue;
        json_t *rec = json_loadb(e->str, e->len, 0, NULL);
        if (json_is_object(rec)) {
            th_registry_apply(s->reg, rec, now, wall);
            if (live) live[nlive++] = m->ids[i];
        }
        json_decref(rec);
    }
    if (live) th_registry_retain(s->reg, live, nlive, s->since);
    free(live);
    mget_ctx_free(m);
}

static void on_members(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    th_regsync *s = ud;
    s->pending--;
    if (s->closing || st != TH_REDIS_OK || rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        s->syncing = false;
        maybe_free(s);
        return;
    }
    if (rep->elements == 0) {
        s->syncing = false;
        th_registry_retain(s->reg, NULL, 0, s->since);
        return;
    }
    size_t n = rep->elements < TH_REGISTRY_MAX_NODES ? rep->elements : TH_REGISTRY_MAX_NODES;
    mget_ctx *m = calloc(1, sizeof *m);
    const char **argv = calloc(n + 1, sizeof *argv);
    size_t *lens = calloc(n + 1, sizeof *lens);
    char **keys = calloc(n, sizeof *keys);
    if (m == NULL || argv == NULL || lens == NULL || keys == NULL) goto fail;
    m->s = s;
    m->ids = calloc(n, sizeof *m->ids);
    if (m->ids == NULL) goto fail;
    argv[0] = "MGET";
    lens[0] = 4;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const th_redis_reply *e = &rep->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len == 0 || e->len > TH_NODE_ID_MAX) continue;
        char key[KEY_MAX];
        m->ids[k] = th_strndup(e->str, e->len);
        if (m->ids[k] == NULL) goto fail;
        m->n = k + 1;
        int kl = node_key(s, m->ids[k], key, sizeof key);
        keys[k] = kl > 0 ? th_strndup(key, (size_t)kl) : NULL;
        if (keys[k] == NULL) goto fail;
        argv[k + 1] = keys[k];
        lens[k + 1] = (size_t)kl;
        k++;
    }
    if (k == 0) {
        s->syncing = false;
        th_registry_retain(s->reg, NULL, 0, s->since);
        mget_ctx_free(m);
        m = NULL;
    } else {
        s->pending++;
        if (th_redis_cmd(s->redis, on_mget, m, (int)k + 1, argv, lens) != 0) {
            s->pending--;
            goto fail;
        }
        m = NULL; /* on_mget owns it */
    }
    goto out;
fail:
    s->syncing = false;
    if (m) mget_ctx_free(m);
    m = NULL;
out:
    for (size_t i = 0; keys && i < n; i++)
        free(keys[i]);
    free(keys);
    free(argv);
    free(lens);
    if (m) mget_ctx_free(m);
}

static void on_tick(uv_timer_t *t)
{
    th_regsync *s = t->data;
    if (s->syncing || s->closing || !th_redis_connected(s->redis)) return;
    char idx[KEY_MAX];
    snprintf(idx, sizeof idx, "%snodes", s->prefix);
    const char *argv[] = {"SMEMBERS", idx};
    size_t lens[] = {8, strlen(idx)};
    s->syncing = true;
    s->since = th_mono_ms();
    if (rs_send(s, on_members, 2, argv, lens) != 0) s->syncing = false;
}

th_regsync *th_regsync_new(uv_loop_t *loop, th_registry *reg, th_redis *redis, const char *prefix,
                           uint64_t remove_after_ms, th_log *log)
{
    th_regsync *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->loop = loop;
    s->reg = reg;
    s->redis = redis;
    s->log = log;
    th_strlcpy(s->prefix, prefix ? prefix : "", sizeof s->prefix);
    s->ttl_ms = remove_after_ms + 1000;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_tick, 0, SYNC_EVERY_MS);
    return s;
}

static void on_timer_closed(uv_handle_t *h)
{
    th_regsync *s = h->data;
    s->timer_closed = true;
    maybe_free(s);
}

void th_regsync_free(th_regsync *s)
{
    if (s == NULL) return;
    s->closing = true;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
