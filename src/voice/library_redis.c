/* library_redis: the voice library's redis backend (voice_library.backend: redis). See library.h.
 *
 * Keys: {prefix}vmeta:{id} record JSON; {prefix}vwav:{id}:{sha256} the wav; {prefix}voices the set of
 * ids; {prefix}tvoices:{tenant} the set of a tenant's ids; {prefix}voices:ver bumped on every change.
 * Each change is one script, so "id taken" and the caps are decided atomically by Redis, whichever hub
 * asks. Every hub polls the counter every SYNC_MS and reads all records back when it moved. The two calls
 * that carry a wav (the create script and the audio's GET) go on the bulk lane (store/redis.h); records,
 * updates, deletes and the sync stay on the policy lane. */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/str.h"
#include "voice/library_int.h"

#define SYNC_MS 500
#define KEY_MAX 512

typedef struct vl_redis {
    th_redis *r;
    char prefix[128];
    uv_timer_t timer;
    bool syncing;
    char ver[32];
    bool have_ver;
    char next_ver[32];
    uint64_t gen_at_start;
} vl_redis;

static const char k_create[] = "if redis.call('EXISTS', KEYS[1]) == 1 then return 'taken' end\n"
                               "local mt = tonumber(ARGV[4])\n"
                               "if mt > 0 and redis.call('SCARD', KEYS[5]) >= mt then return 'full' end\n"
                               "local mx = tonumber(ARGV[5])\n"
                               "if mx > 0 and redis.call('SCARD', KEYS[3]) >= mx then return 'full' end\n"
                               "redis.call('SET', KEYS[2], ARGV[2])\n"
                               "redis.call('SET', KEYS[1], ARGV[1])\n"
                               "redis.call('SADD', KEYS[3], ARGV[3])\n"
                               "redis.call('SADD', KEYS[5], ARGV[3])\n"
                               "redis.call('INCR', KEYS[4])\n"
                               "return 'ok'\n";

/* KEYS: meta, ver; ARGV: expected sha256, new record */
static const char k_update[] =
    "local m = redis.call('GET', KEYS[1])\n"
    "if not m then return 'missing' end\n"
    "local ok, d = pcall(cjson.decode, m)\n"
    "if not ok or type(d) ~= 'table' or d.sha256 ~= ARGV[1] then return 'missing' end\n"
    "redis.call('SET', KEYS[1], ARGV[2])\n"
    "redis.call('INCR', KEYS[2])\n"
    "return 'ok'\n";

/* KEYS: meta, wav, set, ver, tenant set; ARGV: id, expected sha256 */
static const char k_delete[] =
    "local m = redis.call('GET', KEYS[1])\n"
    "if not m then return 'missing' end\n"
    "local ok, d = pcall(cjson.decode, m)\n"
    "if not ok or type(d) ~= 'table' or d.sha256 ~= ARGV[2] then return 'missing' end\n"
    "redis.call('DEL', KEYS[1], KEYS[2])\n"
    "redis.call('SREM', KEYS[3], ARGV[1])\n"
    "redis.call('SREM', KEYS[5], ARGV[1])\n"
    "redis.call('INCR', KEYS[4])\n"
    "return 'ok'\n";

static int key(const vl_redis *rs, char *out, const char *a, const char *b, const char *c)
{
    int k = snprintf(out, KEY_MAX, "%s%s%s%s%s%s", rs->prefix, a, b ? b : "", c ? ":" : "", c ? c : "", "");
    return k > 0 && k < KEY_MAX ? k : -1;
}

static bool reply_is(const th_redis_reply *rep, const char *s)
{
    return rep && (rep->type == REDIS_REPLY_STRING || rep->type == REDIS_REPLY_STATUS) &&
           rep->len == strlen(s) && memcmp(rep->str, s, rep->len) == 0;
}

static const char *why(th_redis_status st, const th_redis_reply *rep)
{
    if (st == TH_REDIS_DOWN) return "redis is down";
    if (st == TH_REDIS_TIMEOUT) return "redis timed out";
    if (rep && rep->type == REDIS_REPLY_ERROR && rep->str) return rep->str;
    return "unexpected redis reply";
}

/* ---- operations ---- */

typedef struct rop {
    th_vlib *l;
    th_vlib_meta m;
    th_vlib_blob *wav;
    th_vlib_done_cb cb;
    void *ud;
} rop;

static rop *rop_new(th_vlib *l, const th_vlib_meta *m, th_vlib_done_cb cb, void *ud)
{
    rop *o = calloc(1, sizeof *o);
    if (o == NULL) return NULL;
    if (th_vlib_meta_copy(&o->m, m) != 0) {
        free(o);
        return NULL;
    }
    o->l = l;
    o->cb = cb;
    o->ud = ud;
    l->pending++;
    return o;
}

static void rop_end(rop *o, th_vlib_rc rc, const char *err)
{
    th_vlib *l = o->l;
    if (rc != TH_VLIB_OK && rc != TH_VLIB_TAKEN && rc != TH_VLIB_FULL && rc != TH_VLIB_MISSING)
        TH_LOG(l->log, TH_LOG_ERROR, "voice library (redis): voice %s: %s", o->m.id, err ? err : "failed");
    o->cb(o->ud, rc, err);
    th_vlib_meta_free(&o->m);
    th_vlib_blob_release(o->wav);
    free(o);
    l->pending--;
    vl_maybe_free(l);
}

static void on_create(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    rop *o = ud;
    th_vlib *l = o->l;
    vl_entry *e = vl_find_any(l, o->m.id);
    th_vlib_rc rc = TH_VLIB_IO;
    if (st == TH_REDIS_OK && reply_is(rep, "ok"))
        rc = TH_VLIB_OK;
    else if (st == TH_REDIS_OK && reply_is(rep, "taken"))
        rc = TH_VLIB_TAKEN;
    else if (st == TH_REDIS_OK && reply_is(rep, "full"))
        rc = TH_VLIB_FULL;
    if (e && e->state == VL_MAKING) {
        if (rc == TH_VLIB_OK) {
            th_vlib_meta_free(&e->m);
            if (th_vlib_meta_copy(&e->m, &o->m) != 0) {
                vl_remove(l, e);
            } else {
                e->state = VL_LIVE;
                vl_set_audio(l, e, o->wav);
            }
            l->gen++;
        } else {
            vl_remove(l, e);
        }
    }
    if (rc == TH_VLIB_TAKEN && l->rs) l->rs->have_ver = false; /* made elsewhere: read it back next tick */
    rop_end(o, rc, rc == TH_VLIB_IO ? why(st, rep) : NULL);
}

void vl_redis_create(th_vlib *l, const th_vlib_meta *m, th_vlib_blob *wav, size_t max_per_tenant,
                     th_vlib_done_cb cb, void *ud)
{
    vl_redis *rs = l->rs;
    rop *o = rop_new(l, m, cb, ud);
    char *rec = th_vlib_meta_dump(m);
    char kmeta[KEY_MAX], kwav[KEY_MAX], kset[KEY_MAX], kver[KEY_MAX], kten[KEY_MAX], mt[24], mx[24];
    if (o == NULL || rec == NULL || key(rs, kmeta, "vmeta:", m->id, NULL) < 0 ||
        key(rs, kwav, "vwav:", m->id, m->sha256) < 0 || key(rs, kset, "voices", NULL, NULL) < 0 ||
        key(rs, kver, "voices:ver", NULL, NULL) < 0 || key(rs, kten, "tvoices:", m->tenant, NULL) < 0) {
        free(rec);
        th_vlib_blob_release(wav);
        vl_entry *e = vl_find_any(l, m->id);
        if (e && e->state == VL_MAKING) vl_remove(l, e);
        if (o)
            rop_end(o, TH_VLIB_NOMEM, "out of memory");
        else
            cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    o->wav = wav;
    snprintf(mt, sizeof mt, "%zu", max_per_tenant);
    snprintf(mx, sizeof mx, "%zu", l->max_voices);
    size_t wlen;
    const uint8_t *wdata = th_vlib_blob_data(wav, &wlen);
    const char *argv[] = {kmeta, kwav, kset, kver, kten, rec, (const char *)wdata, m->id, mt, mx};
    size_t lens[] = {strlen(kmeta), strlen(kwav), strlen(kset),  strlen(kver), strlen(kten),
                     strlen(rec),   wlen,         strlen(m->id), strlen(mt),   strlen(mx)};
    /* the wav travels on the bulk lane: half a megabyte never sits in front of a limit check */
    int rc = th_redis_eval_lane(rs->r, TH_REDIS_LANE_BULK, on_create, o, k_create, 5, 10, argv, lens);
    free(rec);
    if (rc != 0) on_create(o, TH_REDIS_ERROR, NULL);
}

static void on_update(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    rop *o = ud;
    th_vlib *l = o->l;
    th_vlib_rc rc = TH_VLIB_IO;
    if (st == TH_REDIS_OK && reply_is(rep, "ok"))
        rc = TH_VLIB_OK;
    else if (st == TH_REDIS_OK && reply_is(rep, "missing"))
        rc = TH_VLIB_MISSING;
    vl_entry *e = vl_find_any(l, o->m.id);
    if (rc == TH_VLIB_OK && e && e->state == VL_LIVE && strcmp(e->m.sha256, o->m.sha256) == 0) {
        th_vlib_meta nm;
        if (th_vlib_meta_copy(&nm, &o->m) == 0) {
            th_vlib_meta_free(&e->m);
            e->m = nm;
        }
        l->gen++;
    }
    if (rc == TH_VLIB_MISSING && l->rs) l->rs->have_ver = false;
    rop_end(o, rc, rc == TH_VLIB_IO ? why(st, rep) : NULL);
}

void vl_redis_update(th_vlib *l, const th_vlib_meta *nm, th_vlib_done_cb cb, void *ud)
{
    vl_redis *rs = l->rs;
    rop *o = rop_new(l, nm, cb, ud);
    char *rec = th_vlib_meta_dump(nm);
    char kmeta[KEY_MAX], kver[KEY_MAX];
    if (o == NULL || rec == NULL || key(rs, kmeta, "vmeta:", nm->id, NULL) < 0 ||
        key(rs, kver, "voices:ver", NULL, NULL) < 0) {
        free(rec);
        if (o)
            rop_end(o, TH_VLIB_NOMEM, "out of memory");
        else
            cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    const char *argv[] = {kmeta, kver, nm->sha256, rec};
    size_t lens[] = {strlen(kmeta), strlen(kver), 64, strlen(rec)};
    int rc = th_redis_eval(rs->r, on_update, o, k_update, 2, 4, argv, lens);
    free(rec);
    if (rc != 0) on_update(o, TH_REDIS_ERROR, NULL);
}

static void on_delete(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    rop *o = ud;
    th_vlib *l = o->l;
    th_vlib_rc rc = TH_VLIB_IO;
    if (st == TH_REDIS_OK && reply_is(rep, "ok"))
        rc = TH_VLIB_OK;
    else if (st == TH_REDIS_OK && reply_is(rep, "missing"))
        rc = TH_VLIB_MISSING;
    vl_entry *e = vl_find_any(l, o->m.id);
    if (e && e->state == VL_DELETING) {
        if (rc == TH_VLIB_OK || rc == TH_VLIB_MISSING) {
            vl_remove(l, e);
            l->gen++;
        } else {
            e->state = VL_LIVE;
        }
    }
    if (rc == TH_VLIB_MISSING) {
        rc = TH_VLIB_OK; /* another hub deleted (or replaced) it first: read the library back */
        if (l->rs) l->rs->have_ver = false;
    }
    rop_end(o, rc, rc == TH_VLIB_IO ? why(st, rep) : NULL);
}

void vl_redis_delete(th_vlib *l, vl_entry *e, th_vlib_done_cb cb, void *ud)
{
    vl_redis *rs = l->rs;
    rop *o = rop_new(l, &e->m, cb, ud);
    char kmeta[KEY_MAX], kwav[KEY_MAX], kset[KEY_MAX], kver[KEY_MAX], kten[KEY_MAX];
    if (o == NULL || key(rs, kmeta, "vmeta:", e->m.id, NULL) < 0 ||
        key(rs, kwav, "vwav:", e->m.id, e->m.sha256) < 0 || key(rs, kset, "voices", NULL, NULL) < 0 ||
        key(rs, kver, "voices:ver", NULL, NULL) < 0 || key(rs, kten, "tvoices:", e->m.tenant, NULL) < 0) {
        if (o)
            rop_end(o, TH_VLIB_NOMEM, "out of memory");
        else
            cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    e->state = VL_DELETING;
    const char *argv[] = {kmeta, kwav, kset, kver, kten, e->m.id, e->m.sha256};
    size_t lens[] = {
        strlen(kmeta), strlen(kwav), strlen(kset), strlen(kver), strlen(kten), strlen(e->m.id), 64};
    if (th_redis_eval(rs->r, on_delete, o, k_delete, 5, 7, argv, lens) != 0)
        on_delete(o, TH_REDIS_ERROR, NULL);
}

/* ---- loading audio ---- */

static void on_load(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    vl_load *ld = ud;
    if (st != TH_REDIS_OK || rep == NULL || rep->type != REDIS_REPLY_STRING) {
        TH_LOG(ld->l->log, TH_LOG_ERROR, "voice %s: cannot read its audio from redis: %s", ld->m.id,
               st == TH_REDIS_OK ? "missing" : why(st, rep));
        vl_load_done(ld, NULL, 0, TH_VLIB_IO);
        return;
    }
    uint8_t *copy = malloc(rep->len ? rep->len : 1);
    if (copy == NULL) {
        vl_load_done(ld, NULL, 0, TH_VLIB_NOMEM);
        return;
    }
    memcpy(copy, rep->str, rep->len);
    vl_load_done(ld, copy, rep->len, TH_VLIB_OK);
}

void vl_redis_load(th_vlib *l, vl_load *ld)
{
    char k[KEY_MAX];
    if (key(l->rs, k, "vwav:", ld->m.id, ld->m.sha256) < 0) {
        vl_load_done(ld, NULL, 0, TH_VLIB_IO);
        return;
    }
    const char *argv[] = {"GET", k};
    size_t lens[] = {3, strlen(k)};
    if (th_redis_cmd_lane(l->rs->r, TH_REDIS_LANE_BULK, on_load, ld, 2, argv, lens) != 0)
        vl_load_done(ld, NULL, 0, TH_VLIB_NOMEM);
}

/* ---- sync ---- */

typedef struct sync_ctx {
    th_vlib *l;
    size_t n;
} sync_ctx;

static void sync_end(th_vlib *l)
{
    l->rs->syncing = false;
    l->pending--;
    vl_maybe_free(l);
}

static void apply(th_vlib *l, const th_redis_reply *rep)
{
    for (size_t i = 0; i < l->nb; i++)
        for (vl_entry *e = l->buckets[i]; e; e = e->hnext)
            e->seen = false;
    for (size_t i = 0; i < rep->elements; i++) {
        const th_redis_reply *r = &rep->element[i];
        if (r->type != REDIS_REPLY_STRING) continue;
        th_vlib_meta m;
        char err[160];
        if (th_vlib_meta_parse(r->str, r->len, &m, err, sizeof err) != 0) {
            TH_LOG(l->log, TH_LOG_WARN, "voice library (redis): skipping a record: %s", err);
            continue;
        }
        vl_entry *e = vl_find_any(l, m.id);
        if (e == NULL) {
            e = vl_add(l, m.id, VL_LIVE);
            if (e == NULL) {
                th_vlib_meta_free(&m);
                continue;
            }
            e->m = m;
            e->seen = true;
            continue;
        }
        e->seen = true;
        if (e->state != VL_LIVE) {
            th_vlib_meta_free(&m);
            continue;
        }
        if (strcmp(e->m.sha256, m.sha256) != 0) vl_drop_audio(l, e); /* deleted and made again elsewhere */
        th_vlib_meta_free(&e->m);
        e->m = m;
    }
    /* live voices no longer in Redis were deleted through another hub */
    for (size_t i = 0; i < l->nb; i++) {
        vl_entry *e = l->buckets[i];
        while (e) {
            vl_entry *nx = e->hnext;
            if (e->state == VL_LIVE && !e->seen) {
                if (l->on_removed) {
                    th_voice_ref ref = th_vlib_forget_ref(&e->m);
                    l->on_removed(l->on_removed_ud, &ref);
                }
                vl_remove(l, e);
            }
            e = nx;
        }
    }
}

static void on_mget(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    th_vlib *l = ud;
    vl_redis *rs = l->rs;
    if (!l->closing && st == TH_REDIS_OK && rep && rep->type == REDIS_REPLY_ARRAY) {
        if (l->gen == rs->gen_at_start) {
            apply(l, rep);
            memcpy(rs->ver, rs->next_ver, sizeof rs->ver);
            rs->have_ver = true;
        } /* else: a change was made here meanwhile; read again next tick */
    }
    sync_end(l);
}

static void apply_empty(th_vlib *l)
{
    th_redis_reply empty = {.type = REDIS_REPLY_ARRAY, .elements = 0};
    apply(l, &empty);
}

static void on_members(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    th_vlib *l = ud;
    vl_redis *rs = l->rs;
    if (l->closing || st != TH_REDIS_OK || rep == NULL || rep->type != REDIS_REPLY_ARRAY) {
        sync_end(l);
        return;
    }
    if (rep->elements == 0) {
        if (l->gen == rs->gen_at_start) {
            apply_empty(l);
            memcpy(rs->ver, rs->next_ver, sizeof rs->ver);
            rs->have_ver = true;
        }
        sync_end(l);
        return;
    }
    size_t n = rep->elements;
    if (l->max_voices && n > l->max_voices) n = l->max_voices;
    const char **argv = calloc(n + 1, sizeof *argv);
    size_t *lens = calloc(n + 1, sizeof *lens);
    char *keys = malloc(n * KEY_MAX);
    if (argv == NULL || lens == NULL || keys == NULL) goto fail;
    argv[0] = "MGET";
    lens[0] = 4;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const th_redis_reply *e = &rep->element[i];
        if (e->type != REDIS_REPLY_STRING || !th_vlib_id_ok(e->str, e->len)) continue;
        char id[TH_VLIB_ID_MAX + 1];
        memcpy(id, e->str, e->len);
        id[e->len] = 0;
        int kl = key(rs, keys + k * KEY_MAX, "vmeta:", id, NULL);
        if (kl < 0) continue;
        argv[k + 1] = keys + k * KEY_MAX;
        lens[k + 1] = (size_t)kl;
        k++;
    }
    if (k == 0) {
        free(argv);
        free(lens);
        free(keys);
        if (l->gen == rs->gen_at_start) apply_empty(l);
        sync_end(l);
        return;
    }
    int rc = th_redis_cmd(rs->r, on_mget, l, (int)k + 1, argv, lens);
    free(argv);
    free(lens);
    free(keys);
    if (rc != 0) sync_end(l);
    return;
fail:
    free(argv);
    free(lens);
    free(keys);
    sync_end(l);
}

static void on_ver(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    th_vlib *l = ud;
    vl_redis *rs = l->rs;
    if (l->closing || st != TH_REDIS_OK || rep == NULL) {
        sync_end(l);
        return;
    }
    char v[32] = "0";
    if (rep->type == REDIS_REPLY_STRING && rep->len < sizeof v) {
        memcpy(v, rep->str, rep->len);
        v[rep->len] = 0;
    }
    if (rs->have_ver && strcmp(v, rs->ver) == 0) {
        sync_end(l);
        return;
    }
    memcpy(rs->next_ver, v, sizeof v);
    char kset[KEY_MAX];
    key(rs, kset, "voices", NULL, NULL);
    const char *argv[] = {"SMEMBERS", kset};
    size_t lens[] = {8, strlen(kset)};
    if (th_redis_cmd(rs->r, on_members, l, 2, argv, lens) != 0) sync_end(l);
}

static void on_tick(uv_timer_t *t)
{
    th_vlib *l = t->data;
    vl_redis *rs = l->rs;
    if (rs->syncing || l->closing || !th_redis_connected(rs->r)) return;
    rs->syncing = true;
    rs->gen_at_start = l->gen;
    l->pending++;
    char kver[KEY_MAX];
    key(rs, kver, "voices:ver", NULL, NULL);
    const char *argv[] = {"GET", kver};
    size_t lens[] = {3, strlen(kver)};
    if (th_redis_cmd(rs->r, on_ver, l, 2, argv, lens) != 0) sync_end(l);
}

int vl_redis_start(th_vlib *l, th_redis *redis, const char *prefix)
{
    vl_redis *rs = calloc(1, sizeof *rs);
    if (rs == NULL) return -1;
    rs->r = redis;
    th_strlcpy(rs->prefix, prefix ? prefix : "", sizeof rs->prefix);
    l->rs = rs;
    uv_timer_init(l->loop, &rs->timer);
    rs->timer.data = l;
    uv_timer_start(&rs->timer, on_tick, 0, SYNC_MS);
    return 0;
}

static void on_timer_closed(uv_handle_t *h)
{
    th_vlib *l = h->data;
    l->timer_closed = true;
    vl_maybe_free(l);
}

void vl_redis_stop(th_vlib *l)
{
    if (l->rs == NULL) {
        l->timer_closed = true;
        return;
    }
    uv_timer_stop(&l->rs->timer);
    uv_close((uv_handle_t *)&l->rs->timer, on_timer_closed);
}
