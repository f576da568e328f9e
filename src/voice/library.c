/* library: the voice library's index, audio cache, uses and the fs backend. See library.h.
 * The redis backend is in library_redis.c (shared declarations in library_int.h). */
#include "voice/library.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audio/flac.h"
#include "audio/wav.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "voice/library_int.h"

/* ---- ids and records ---- */

bool th_vlib_id_ok(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > TH_VLIB_ID_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

static bool hex64_ok(const char *s, size_t len)
{
    if (len != 64) return false;
    for (size_t i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

void th_vlib_meta_free(th_vlib_meta *m)
{
    if (m == NULL) return;
    free(m->name);
    free(m->tenant);
    free(m->engine);
    free(m->text);
    free(m->language);
    m->name = m->tenant = m->engine = m->text = m->language = NULL;
}

int th_vlib_meta_set(char **field, const char *v)
{
    char *d = th_strndup(v ? v : "", strlen(v ? v : ""));
    if (d == NULL) return -1;
    free(*field);
    *field = d;
    return 0;
}

int th_vlib_meta_copy(th_vlib_meta *dst, const th_vlib_meta *src)
{
    *dst = *src;
    dst->name = dst->tenant = dst->engine = dst->text = dst->language = NULL;
    if (th_vlib_meta_set(&dst->name, src->name) || th_vlib_meta_set(&dst->tenant, src->tenant) ||
        th_vlib_meta_set(&dst->engine, src->engine) || th_vlib_meta_set(&dst->text, src->text) ||
        th_vlib_meta_set(&dst->language, src->language)) {
        th_vlib_meta_free(dst);
        return -1;
    }
    return 0;
}

/* A string member: absent is "", otherwise a UTF-8 string of at most max bytes without NUL. */
static int get_str(json_t *o, const char *key, size_t max, bool required, char **out, char *err,
                   size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (v == NULL) {
        if (required) {
            snprintf(err, errlen, "'%s' is missing", key);
            return -1;
        }
        return th_vlib_meta_set(out, "");
    }
    if (!json_is_string(v)) {
        snprintf(err, errlen, "'%s' is not a string", key);
        return -1;
    }
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n > max || memchr(s, 0, n) != NULL) {
        snprintf(err, errlen, "'%s' is too long or holds NUL", key);
        return -1;
    }
    char *d = th_strndup(s, n);
    if (d == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    free(*out);
    *out = d;
    return 0;
}

static int get_int(json_t *o, const char *key, int64_t min, int64_t max, int64_t *out, char *err,
                   size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        snprintf(err, errlen, "'%s' must be an integer from %lld to %lld", key, (long long)min,
                 (long long)max);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

int th_vlib_meta_parse(const char *data, size_t len, th_vlib_meta *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (len > TH_VLIB_RECORD_MAX) {
        snprintf(err, errlen, "the record is too large");
        return -1;
    }
    json_error_t je;
    json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(o)) {
        snprintf(err, errlen, "the record is not a JSON object");
        json_decref(o);
        return -1;
    }
    int rc = -1;
    int64_t v = 0;
    json_t *id = json_object_get(o, "id"), *sha = json_object_get(o, "sha256"), *dur;
    if (get_int(o, "format", 1, 1, &v, err, errlen)) goto out;
    if (!json_is_string(id) || !th_vlib_id_ok(json_string_value(id), json_string_length(id))) {
        snprintf(err, errlen, "'id' is not a valid voice id");
        goto out;
    }
    memcpy(m->id, json_string_value(id), json_string_length(id) + 1);
    if (!json_is_string(sha) || !hex64_ok(json_string_value(sha), json_string_length(sha))) {
        snprintf(err, errlen, "'sha256' is not 64 lowercase hex digits");
        goto out;
    }
    memcpy(m->sha256, json_string_value(sha), 65);
    if (get_str(o, "name", TH_VLIB_NAME_MAX, false, &m->name, err, errlen) ||
        get_str(o, "tenant", TH_VLIB_NAME_MAX, false, &m->tenant, err, errlen) ||
        get_str(o, "engine", TH_VLIB_NAME_MAX, false, &m->engine, err, errlen) ||
        get_str(o, "language", TH_VLIB_NAME_MAX, false, &m->language, err, errlen) ||
        get_str(o, "reference_text", TH_VLIB_TEXT_MAX, false, &m->text, err, errlen))
        goto out;
    if (get_int(o, "created_ms", 0, INT64_C(1) << 50, &m->created_ms, err, errlen)) goto out;
    if (get_int(o, "updated_ms", 0, INT64_C(1) << 50, &m->updated_ms, err, errlen)) goto out;
    if (get_int(o, "sample_rate", 8000, 192000, &v, err, errlen)) goto out;
    m->rate = (int)v;
    if (get_int(o, "wav_bytes", 46, INT64_C(1) << 32, &v, err, errlen)) goto out;
    m->wav_len = (uint64_t)v;
    dur = json_object_get(o, "duration_seconds");
    if (!json_is_number(dur) || !(json_number_value(dur) > 0) || json_number_value(dur) > 86400) {
        snprintf(err, errlen, "'duration_seconds' is not a positive number");
        goto out;
    }
    m->duration_s = json_number_value(dur);
    rc = 0;
out:
    json_decref(o);
    if (rc != 0) th_vlib_meta_free(m);
    return rc;
}

char *th_vlib_meta_dump(const th_vlib_meta *m)
{
    json_t *o = json_pack(
        "{s:i,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:f,s:I,s:I,s:i,s:I}", "format", 1, "id", m->id, "name",
        m->name ? m->name : "", "tenant", m->tenant ? m->tenant : "", "engine", m->engine ? m->engine : "",
        "reference_text", m->text ? m->text : "", "language", m->language ? m->language : "", "sha256",
        m->sha256, "duration_seconds", m->duration_s, "created_ms", (json_int_t)m->created_ms, "updated_ms",
        (json_int_t)m->updated_ms, "sample_rate", m->rate, "wav_bytes", (json_int_t)m->wav_len);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(o);
    return s;
}

void th_vlib_sha256_hex(const uint8_t *p, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char hx[] = "0123456789abcdef";
    if (EVP_Digest(p, n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        memset(out, '0', 64);
        out[64] = 0;
        return;
    }
    for (unsigned i = 0; i < 32; i++) {
        out[2 * i] = hx[md[i] >> 4];
        out[2 * i + 1] = hx[md[i] & 15];
    }
    out[64] = 0;
}

/* ---- audio blobs and uses ---- */

struct th_vlib_blob {
    atomic_int refs;
    size_t len;
    uint8_t *data;
    /* the compact form (TH_VOICE_REF_FLAC_RATE, FLAC), made on the thread pool before the blob is shared
     * (vl_prepare), or NULL */
    uint8_t *flac;
    size_t flac_len;
};

th_vlib_blob *th_vlib_blob_new(uint8_t *data, size_t len)
{
    th_vlib_blob *b = malloc(sizeof *b);
    if (b == NULL) return NULL;
    atomic_init(&b->refs, 1);
    b->len = len;
    b->data = data;
    b->flac = NULL;
    b->flac_len = 0;
    return b;
}

/* Bytes a blob keeps resident: the WAV and its compact form. */
static size_t blob_bytes(const th_vlib_blob *b)
{
    return b->len + b->flac_len;
}

const uint8_t *th_vlib_blob_data(const th_vlib_blob *b, size_t *len)
{
    *len = b->len;
    return b->data;
}

static th_vlib_blob *blob_dup(th_vlib_blob *b)
{
    atomic_fetch_add(&b->refs, 1);
    return b;
}

void th_vlib_blob_release(th_vlib_blob *b)
{
    if (b && atomic_fetch_sub(&b->refs, 1) == 1) {
        free(b->data);
        free(b->flac);
        free(b);
    }
}

struct th_vlib_use {
    atomic_int refs;
    th_vlib_blob *audio;
    th_vlib_meta m; /* own copy */
    th_voice_ref ref;
};

/* th_voice_ref.hold/drop of a use's ref: the use (and with it the audio) stays while a transfer reads it. */
static void *use_hold(const th_voice_ref *r)
{
    th_vlib_use *u = (th_vlib_use *)(void *)((char *)(uintptr_t)r - offsetof(th_vlib_use, ref));
    return th_vlib_use_dup(u);
}

static void use_drop(void *token)
{
    th_vlib_use_release(token);
}

static th_vlib_use *use_new(const th_vlib_meta *m, th_vlib_blob *audio)
{
    th_vlib_use *u = calloc(1, sizeof *u);
    if (u == NULL) return NULL;
    if (th_vlib_meta_copy(&u->m, m) != 0) {
        free(u);
        return NULL;
    }
    atomic_init(&u->refs, 1);
    u->audio = blob_dup(audio);
    u->ref = (th_voice_ref){.id = u->m.id,
                            .name = u->m.name,
                            .sha256 = u->m.sha256,
                            .wav = audio->data,
                            .wav_len = audio->len,
                            .rate = u->m.rate,
                            .text = u->m.text,
                            .language = u->m.language,
                            .flac16k = audio->flac,
                            .flac16k_len = audio->flac_len,
                            .hold = use_hold,
                            .drop = use_drop};
    return u;
}

const th_voice_ref *th_vlib_use_ref(const th_vlib_use *u)
{
    return &u->ref;
}

const uint8_t *th_vlib_use_wav(const th_vlib_use *u, size_t *len)
{
    *len = u->audio->len;
    return u->audio->data;
}

th_vlib_use *th_vlib_use_dup(th_vlib_use *u)
{
    if (u) atomic_fetch_add(&u->refs, 1);
    return u;
}

void th_vlib_use_release(th_vlib_use *u)
{
    if (u && atomic_fetch_sub(&u->refs, 1) == 1) {
        th_vlib_blob_release(u->audio);
        th_vlib_meta_free(&u->m);
        free(u);
    }
}

th_voice_ref th_vlib_forget_ref(const th_vlib_meta *m)
{
    return (th_voice_ref){.id = m->id,
                          .name = m->name,
                          .sha256 = m->sha256,
                          .wav = NULL,
                          .wav_len = 0,
                          .rate = m->rate,
                          .text = m->text,
                          .language = m->language};
}

/* ---- the index ---- */

static uint32_t hash_id(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

vl_entry *vl_find_any(const th_vlib *l, const char *id)
{
    if (l->nb == 0) return NULL;
    for (vl_entry *e = l->buckets[hash_id(id) & (l->nb - 1)]; e; e = e->hnext)
        if (strcmp(e->m.id, id) == 0) return e;
    return NULL;
}

static int grow(th_vlib *l)
{
    size_t nb = l->nb ? l->nb * 2 : 64;
    vl_entry **b = calloc(nb, sizeof *b);
    if (b == NULL) return -1;
    for (size_t i = 0; i < l->nb; i++) {
        vl_entry *e = l->buckets[i];
        while (e) {
            vl_entry *nx = e->hnext;
            uint32_t k = hash_id(e->m.id) & (uint32_t)(nb - 1);
            e->hnext = b[k];
            b[k] = e;
            e = nx;
        }
    }
    free(l->buckets);
    l->buckets = b;
    l->nb = nb;
    return 0;
}

vl_entry *vl_add(th_vlib *l, const char *id, int state)
{
    if (l->n + 1 > l->nb && grow(l) != 0) return NULL;
    vl_entry *e = calloc(1, sizeof *e);
    if (e == NULL) return NULL;
    th_strlcpy(e->m.id, id, sizeof e->m.id);
    e->state = state;
    uint32_t k = hash_id(id) & (uint32_t)(l->nb - 1);
    e->hnext = l->buckets[k];
    l->buckets[k] = e;
    l->n++;
    return e;
}

static void lru_unlink(th_vlib *l, vl_entry *e)
{
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else if (l->lru_head == e)
        l->lru_head = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    else if (l->lru_tail == e)
        l->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_front(th_vlib *l, vl_entry *e)
{
    lru_unlink(l, e);
    e->lnext = l->lru_head;
    if (l->lru_head) l->lru_head->lprev = e;
    l->lru_head = e;
    if (l->lru_tail == NULL) l->lru_tail = e;
}

void vl_drop_audio(th_vlib *l, vl_entry *e)
{
    if (e->audio == NULL) return;
    lru_unlink(l, e);
    l->cached -= blob_bytes(e->audio);
    th_vlib_blob_release(e->audio);
    e->audio = NULL;
}

/* Makes b the resident audio of e, then evicts the least recently used until under the cap (e stays). */
void vl_set_audio(th_vlib *l, vl_entry *e, th_vlib_blob *b)
{
    vl_drop_audio(l, e);
    e->audio = blob_dup(b);
    l->cached += blob_bytes(b);
    lru_front(l, e);
    while (l->cached > l->cache_cap && l->lru_tail && l->lru_tail != e)
        vl_drop_audio(l, l->lru_tail);
}

void vl_remove(th_vlib *l, vl_entry *e)
{
    uint32_t k = hash_id(e->m.id) & (uint32_t)(l->nb - 1);
    for (vl_entry **pp = &l->buckets[k]; *pp; pp = &(*pp)->hnext) {
        if (*pp == e) {
            *pp = e->hnext;
            break;
        }
    }
    vl_drop_audio(l, e);
    if (e->loading) e->loading->entry_gone = true;
    th_vlib_meta_free(&e->m);
    free(e);
    l->n--;
}

const th_vlib_meta *th_vlib_find(const th_vlib *l, const char *id)
{
    vl_entry *e = vl_find_any(l, id);
    return e && e->state == VL_LIVE ? &e->m : NULL;
}

bool th_vlib_visible(const th_vlib_meta *m, const char *tenant, bool admin)
{
    if (admin) return true;
    return strcmp(m->tenant ? m->tenant : "", tenant ? tenant : "") == 0;
}

static int cmp_meta(const void *a, const void *b)
{
    const th_vlib_meta *x = *(const th_vlib_meta *const *)a, *y = *(const th_vlib_meta *const *)b;
    return strcmp(x->id, y->id);
}

size_t th_vlib_list(const th_vlib *l, const char *tenant, bool admin, const th_vlib_meta **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < l->nb && n < max; i++)
        for (vl_entry *e = l->buckets[i]; e && n < max; e = e->hnext)
            if (e->state == VL_LIVE && th_vlib_visible(&e->m, tenant, admin)) out[n++] = &e->m;
    qsort(out, n, sizeof *out, cmp_meta);
    return n;
}

size_t th_vlib_count(const th_vlib *l)
{
    size_t n = 0;
    for (size_t i = 0; i < l->nb; i++)
        for (vl_entry *e = l->buckets[i]; e; e = e->hnext)
            if (e->state == VL_LIVE) n++;
    return n;
}

uint64_t th_vlib_cached_bytes(const th_vlib *l)
{
    return l->cached;
}

const char *th_vlib_backend(const th_vlib *l)
{
    return l->redis_mode ? "redis" : "fs";
}

void th_vlib_on_removed(th_vlib *l, void (*fn)(void *ud, const th_voice_ref *ref), void *ud)
{
    l->on_removed = fn;
    l->on_removed_ud = ud;
}

static size_t tenant_count(const th_vlib *l, const char *tenant)
{
    size_t n = 0;
    for (size_t i = 0; i < l->nb; i++)
        for (vl_entry *e = l->buckets[i]; e; e = e->hnext)
            if (e->state != VL_DELETING && strcmp(e->m.tenant ? e->m.tenant : "", tenant ? tenant : "") == 0)
                n++;
    return n;
}

th_vlib_rc th_vlib_reserve(th_vlib *l, const char *id, const char *tenant, size_t max_per_tenant)
{
    if (vl_find_any(l, id)) return TH_VLIB_TAKEN;
    if (l->max_voices && l->n >= l->max_voices) return TH_VLIB_FULL;
    if (max_per_tenant && tenant_count(l, tenant) >= max_per_tenant) return TH_VLIB_FULL;
    vl_entry *e = vl_add(l, id, VL_MAKING);
    if (e == NULL || th_vlib_meta_set(&e->m.tenant, tenant) != 0) {
        if (e) vl_remove(l, e);
        return TH_VLIB_NOMEM;
    }
    return TH_VLIB_OK;
}

void th_vlib_unreserve(th_vlib *l, const char *id)
{
    vl_entry *e = vl_find_any(l, id);
    if (e && e->state == VL_MAKING) vl_remove(l, e);
}

/* ---- the compact form of a reference (made once per blob, before the blob is shared) ---- */

typedef struct vl_prep {
    uv_work_t work;
    th_vlib *l;
    th_vlib_blob *b;
    void (*then)(void *arg);
    void *arg;
    int rc;
    char err[160];
} vl_prep;

static void prep_work(uv_work_t *w)
{
    vl_prep *p = w->data;
    th_buf out;
    th_buf_init(&out, 0); /* the compact form of a stored WAV: smaller than the WAV */
    p->rc = th_flac_from_wav(p->b->data, p->b->len, TH_VOICE_REF_FLAC_RATE, &out, p->err, sizeof p->err);
    if (p->rc == 0) p->b->flac = th_buf_steal(&out, &p->b->flac_len);
    th_buf_free(&out);
}

static void prep_after(uv_work_t *w, int status)
{
    vl_prep *p = w->data;
    th_vlib *l = p->l;
    void (*then)(void *) = p->then;
    void *arg = p->arg;
    if (status != 0 || p->rc != 0)
        TH_LOG(l->log, TH_LOG_WARN, "voice library: no compact form of a reference (%s); engines get the WAV",
               status != 0 ? "cancelled" : p->err);
    free(p);
    l->pending--;
    then(arg); /* ends with vl_maybe_free */
}

/* Makes b's compact form on the thread pool, then calls then(arg) on the loop (also when it cannot: the
 * blob then has none). b must not be shared until then. then() must end with vl_maybe_free(l). */
static void vl_prepare(th_vlib *l, th_vlib_blob *b, void (*then)(void *), void *arg)
{
    vl_prep *p = calloc(1, sizeof *p);
    if (p != NULL) {
        *p = (vl_prep){.l = l, .b = b, .then = then, .arg = arg};
        p->work.data = p;
        l->pending++;
        if (uv_queue_work(l->loop, &p->work, prep_work, prep_after) == 0) return;
        l->pending--;
        free(p);
    }
    then(arg);
}

/* ---- loading audio (cache misses) ---- */

static void load_finish(vl_load *ld)
{
    th_vlib *l = ld->l;
    if (ld->audio && ld->rc == TH_VLIB_OK) {
        vl_entry *e = vl_find_any(l, ld->m.id);
        if (e && e->state == VL_LIVE && strcmp(e->m.sha256, ld->m.sha256) == 0) vl_set_audio(l, e, ld->audio);
    }
    if (!ld->entry_gone) {
        vl_entry *e = vl_find_any(l, ld->m.id);
        if (e && e->loading == ld) e->loading = NULL;
    }
    for (size_t i = 0; i < ld->nw; i++) {
        th_vlib_use *u = NULL;
        th_vlib_rc rc = ld->rc;
        if (rc == TH_VLIB_OK && ld->audio) {
            u = use_new(&ld->m, ld->audio);
            if (u == NULL) rc = TH_VLIB_NOMEM;
        } else if (rc == TH_VLIB_OK) {
            rc = TH_VLIB_IO;
        }
        ld->w[i].cb(ld->w[i].ud, u, rc);
    }
    th_vlib_blob_release(ld->audio);
    th_vlib_meta_free(&ld->m);
    free(ld->w);
    l->pending--;
    free(ld);
    vl_maybe_free(l);
}

static void load_prepared(void *arg)
{
    load_finish(arg);
}

/* Checks loaded bytes against the record, then makes the compact form. */
void vl_load_done(vl_load *ld, uint8_t *data, size_t len, th_vlib_rc rc)
{
    if (rc == TH_VLIB_OK && data) {
        char hex[65];
        th_vlib_sha256_hex(data, len, hex);
        if (len != ld->m.wav_len || strcmp(hex, ld->m.sha256) != 0) {
            TH_LOG(ld->l->log, TH_LOG_ERROR, "voice %s: the stored audio does not match its record",
                   ld->m.id);
            free(data);
            rc = TH_VLIB_IO;
        } else {
            ld->audio = th_vlib_blob_new(data, len);
            if (ld->audio == NULL) {
                free(data);
                rc = TH_VLIB_NOMEM;
            } else {
                ld->rc = rc;
                vl_prepare(ld->l, ld->audio, load_prepared, ld);
                return;
            }
        }
    } else {
        free(data);
    }
    ld->rc = rc;
    load_finish(ld);
}

static void fs_load_work(uv_work_t *w);
static void fs_load_after(uv_work_t *w, int status);

void th_vlib_acquire(th_vlib *l, const char *id, th_vlib_use_cb cb, void *ud)
{
    vl_entry *e = vl_find_any(l, id);
    if (e == NULL || e->state != VL_LIVE || l->closing) {
        cb(ud, NULL, l->closing ? TH_VLIB_IO : TH_VLIB_MISSING);
        return;
    }
    if (e->audio) {
        lru_front(l, e);
        th_vlib_use *u = use_new(&e->m, e->audio);
        cb(ud, u, u ? TH_VLIB_OK : TH_VLIB_NOMEM);
        return;
    }
    vl_load *ld = e->loading;
    if (ld == NULL) {
        ld = calloc(1, sizeof *ld);
        if (ld == NULL || th_vlib_meta_copy(&ld->m, &e->m) != 0) {
            free(ld);
            cb(ud, NULL, TH_VLIB_NOMEM);
            return;
        }
        ld->l = l;
    }
    vl_waiter *nw = realloc(ld->w, (ld->nw + 1) * sizeof *nw);
    if (nw == NULL) {
        if (e->loading == NULL) {
            th_vlib_meta_free(&ld->m);
            free(ld);
        }
        cb(ud, NULL, TH_VLIB_NOMEM);
        return;
    }
    ld->w = nw;
    ld->w[ld->nw++] = (vl_waiter){cb, ud};
    if (e->loading) return; /* joins the load under way */
    e->loading = ld;
    l->pending++;
    if (l->redis_mode) {
        vl_redis_load(l, ld);
        return;
    }
    ld->work.data = ld;
    if (uv_queue_work(l->loop, &ld->work, fs_load_work, fs_load_after) != 0) {
        ld->rc = TH_VLIB_IO;
        load_finish(ld);
    }
}

/* ---- the fs backend ---- */

static int path_of(const th_vlib *l, char *out, size_t n, const char *id, const char *sha, const char *ext)
{
    int k = sha ? snprintf(out, n, "%s/%s.%s.%s", l->dir, id, sha, ext)
                : snprintf(out, n, "%s/%s.%s", l->dir, id, ext);
    return k > 0 && (size_t)k < n ? 0 : -1;
}

static int read_file(const char *path, size_t max, uint8_t **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size > max) {
        close(fd);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *p = malloc(n ? n : 1);
    if (p == NULL) {
        close(fd);
        return -1;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        free(p);
        return -1;
    }
    *out = p;
    *len = n;
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

/* temp file in the same directory, written whole, synced, renamed over path, directory synced. */
static int write_atomic(const char *dir, const char *path, unsigned long seq, const void *data, size_t len,
                        char *err, size_t errlen)
{
    char tmp[1200];
    int k = snprintf(tmp, sizeof tmp, "%s/.tmp-%ld-%lu", dir, (long)getpid(), seq);
    if (k < 0 || (size_t)k >= sizeof tmp) return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %.200s: %s", tmp, strerror(errno));
        return -1;
    }
    const uint8_t *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, p + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        off += (size_t)w;
    }
    if (off != len || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %.200s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    close(fd);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename to %.200s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (fsync_dir(dir) != 0) {
        snprintf(err, errlen, "cannot sync %.200s: %s", dir, strerror(errno));
        return -1;
    }
    return 0;
}

static void fs_load_work(uv_work_t *w)
{
    vl_load *ld = w->data;
    char path[1200];
    ld->data = NULL;
    if (path_of(ld->l, path, sizeof path, ld->m.id, ld->m.sha256, "wav") != 0 ||
        read_file(path, ld->m.wav_len, &ld->data, &ld->len) != 0)
        ld->rc = TH_VLIB_IO;
}

static void fs_load_after(uv_work_t *w, int status)
{
    vl_load *ld = w->data;
    if (status != 0) ld->rc = TH_VLIB_IO;
    if (ld->rc != TH_VLIB_OK)
        TH_LOG(ld->l->log, TH_LOG_ERROR, "voice %s: cannot read its stored audio", ld->m.id);
    vl_load_done(ld, ld->data, ld->len, ld->rc);
}

enum { OP_CREATE, OP_UPDATE, OP_DELETE, OP_REFRESH };

typedef struct fs_op {
    uv_work_t work;
    th_vlib *l;
    int kind;
    th_vlib_meta m;    /* the record to write (create/update), or the one deleted */
    th_vlib_blob *wav; /* create */
    char *record;
    th_vlib_done_cb cb;
    void *ud;
    int rc;
    unsigned long seq; /* names its temp files */
    char err[300];
    th_vlib_meta disk; /* refresh: the record on disk, when present */
    bool present;
    struct fs_op *next;
} fs_op;

static void fs_next(th_vlib *l);

/* Another process on this data_dir may have made, changed or deleted op->m.id: reads its record. A record
 * whose audio is missing or does not match counts as absent (its maker writes the audio first). */
static void fs_refresh_work(th_vlib *l, fs_op *op, const char *mpath)
{
    uint8_t *data = NULL;
    size_t len = 0;
    char perr[200] = "", wpath[1200];
    struct stat st;
    op->present = false;
    if (read_file(mpath, TH_VLIB_RECORD_MAX, &data, &len) != 0) return; /* gone (or unreadable) */
    if (th_vlib_meta_parse((const char *)data, len, &op->disk, perr, sizeof perr) != 0) {
        free(data);
        return;
    }
    free(data);
    op->present = strcmp(op->disk.id, op->m.id) == 0 &&
                  path_of(l, wpath, sizeof wpath, op->disk.id, op->disk.sha256, "wav") == 0 &&
                  stat(wpath, &st) == 0 && (uint64_t)st.st_size == op->disk.wav_len;
}

/* Applies a refresh: adds a voice made elsewhere, takes a changed record, forgets a deleted one. A voice
 * with an operation of this process under way is left to that operation. */
static void fs_refresh_after(th_vlib *l, fs_op *op, vl_entry *e)
{
    if (op->rc != TH_VLIB_OK) return;
    if (op->present && e == NULL) {
        e = vl_add(l, op->disk.id, VL_LIVE);
        if (e == NULL) return;
        e->m = op->disk;
        memset(&op->disk, 0, sizeof op->disk);
        TH_LOG(l->log, TH_LOG_INFO, "voice library: %s was made by another process", e->m.id);
    } else if (op->present && e->state == VL_LIVE) {
        if (strcmp(e->m.sha256, op->disk.sha256) != 0) vl_drop_audio(l, e); /* deleted and made again */
        th_vlib_meta_free(&e->m);
        e->m = op->disk;
        memset(&op->disk, 0, sizeof op->disk);
    } else if (!op->present && e != NULL && e->state == VL_LIVE) {
        TH_LOG(l->log, TH_LOG_INFO, "voice library: %s was deleted by another process", e->m.id);
        if (l->on_removed) {
            th_voice_ref ref = th_vlib_forget_ref(&e->m);
            l->on_removed(l->on_removed_ud, &ref);
        }
        vl_remove(l, e);
    }
}

static void fs_op_work(uv_work_t *w)
{
    fs_op *op = w->data;
    th_vlib *l = op->l;
    char mpath[1200], wpath[1200];
    op->rc = TH_VLIB_OK;
    if (path_of(l, mpath, sizeof mpath, op->m.id, NULL, "json") != 0 ||
        path_of(l, wpath, sizeof wpath, op->m.id, op->m.sha256, "wav") != 0) {
        op->rc = TH_VLIB_IO;
        snprintf(op->err, sizeof op->err, "path too long");
        return;
    }
    switch (op->kind) {
    case OP_CREATE:
        if (write_atomic(l->dir, wpath, op->seq * 2, op->wav->data, op->wav->len, op->err, sizeof op->err) !=
                0 ||
            write_atomic(l->dir, mpath, op->seq * 2 + 1, op->record, strlen(op->record), op->err,
                         sizeof op->err) != 0)
            op->rc = TH_VLIB_IO;
        break;
    case OP_UPDATE:
        if (write_atomic(l->dir, mpath, op->seq * 2, op->record, strlen(op->record), op->err,
                         sizeof op->err) != 0)
            op->rc = TH_VLIB_IO;
        break;
    case OP_REFRESH:
        fs_refresh_work(l, op, mpath);
        break;
    case OP_DELETE:
        /* the record first: from then on the voice is gone; the wav is an orphan until unlinked */
        if (unlink(mpath) != 0 && errno != ENOENT) {
            snprintf(op->err, sizeof op->err, "cannot remove %.200s: %s", mpath, strerror(errno));
            op->rc = TH_VLIB_IO;
            break;
        }
        if (fsync_dir(l->dir) != 0) {
            snprintf(op->err, sizeof op->err, "cannot sync %.200s: %s", l->dir, strerror(errno));
            op->rc = TH_VLIB_IO;
            break;
        }
        (void)unlink(wpath);
        break;
    }
}

static void fs_op_after(uv_work_t *w, int status)
{
    fs_op *op = w->data;
    th_vlib *l = op->l;
    if (status != 0) op->rc = TH_VLIB_IO;
    vl_entry *e = vl_find_any(l, op->m.id);
    if (op->rc != TH_VLIB_OK) TH_LOG(l->log, TH_LOG_ERROR, "voice library: %s", op->err);
    switch (op->kind) {
    case OP_CREATE:
        if (e && e->state == VL_MAKING) {
            if (op->rc == TH_VLIB_OK) {
                th_vlib_meta_free(&e->m);
                if (th_vlib_meta_copy(&e->m, &op->m) != 0) {
                    vl_remove(l, e);
                    op->rc = TH_VLIB_NOMEM;
                } else {
                    e->state = VL_LIVE;
                    vl_set_audio(l, e, op->wav);
                }
            } else {
                vl_remove(l, e);
            }
        }
        break;
    case OP_UPDATE:
        if (op->rc == TH_VLIB_OK && e && e->state == VL_LIVE) {
            th_vlib_meta nm;
            if (th_vlib_meta_copy(&nm, &op->m) == 0) {
                th_vlib_meta_free(&e->m);
                e->m = nm;
            }
        }
        break;
    case OP_DELETE:
        if (e && e->state == VL_DELETING) {
            if (op->rc == TH_VLIB_OK)
                vl_remove(l, e);
            else
                e->state = VL_LIVE; /* still on disk: still there */
        }
        break;
    case OP_REFRESH:
        fs_refresh_after(l, op, e);
        break;
    }
    if (op->cb) op->cb(op->ud, (th_vlib_rc)op->rc, op->rc == TH_VLIB_OK ? NULL : "the voice store failed");
    th_vlib_meta_free(&op->m);
    th_vlib_meta_free(&op->disk);
    th_vlib_blob_release(op->wav);
    free(op->record);
    l->fs_busy = false;
    l->pending--;
    free(op);
    fs_next(l);
    vl_maybe_free(l);
}

static void fs_next(th_vlib *l)
{
    if (l->fs_busy || l->fs_head == NULL) return;
    fs_op *op = l->fs_head;
    l->fs_head = op->next;
    if (l->fs_head == NULL) l->fs_tail = NULL;
    l->fs_busy = true;
    op->work.data = op;
    if (uv_queue_work(l->loop, &op->work, fs_op_work, fs_op_after) != 0) {
        op->rc = TH_VLIB_IO;
        snprintf(op->err, sizeof op->err, "cannot queue the work");
        fs_op_after(&op->work, 0);
    }
}

static fs_op *fs_op_new(th_vlib *l, int kind, const th_vlib_meta *m, th_vlib_done_cb cb, void *ud)
{
    fs_op *op = calloc(1, sizeof *op);
    if (op == NULL) return NULL;
    if (th_vlib_meta_copy(&op->m, m) != 0) {
        free(op);
        return NULL;
    }
    op->l = l;
    op->kind = kind;
    op->cb = cb;
    op->ud = ud;
    return op;
}

static void fs_push(th_vlib *l, fs_op *op)
{
    op->seq = ++l->fs_seq;
    l->pending++;
    if (l->fs_tail)
        l->fs_tail->next = op;
    else
        l->fs_head = op;
    l->fs_tail = op;
    fs_next(l);
}

/* ---- changes ---- */

typedef struct vl_create {
    th_vlib *l;
    th_vlib_meta m;
    th_vlib_blob *b;
    size_t max_per_tenant;
    th_vlib_done_cb cb;
    void *ud;
} vl_create;

static void create_store(th_vlib *l, const th_vlib_meta *m, th_vlib_blob *b, size_t max_per_tenant,
                         th_vlib_done_cb cb, void *ud);

/* The compact form is made: store the voice (unless the reservation went away meanwhile). */
static void create_prepared(void *arg)
{
    vl_create *c = arg;
    th_vlib *l = c->l;
    vl_entry *e = vl_find_any(l, c->m.id);
    if (e == NULL || e->state != VL_MAKING || l->closing) {
        th_vlib_blob_release(c->b);
        if (e && e->state == VL_MAKING) vl_remove(l, e);
        c->cb(c->ud, TH_VLIB_IO, "the voice was not reserved");
    } else {
        create_store(l, &c->m, c->b, c->max_per_tenant, c->cb, c->ud);
    }
    th_vlib_meta_free(&c->m);
    free(c);
    vl_maybe_free(l);
}

void th_vlib_create(th_vlib *l, const th_vlib_meta *m, uint8_t *wav, size_t wav_len, size_t max_per_tenant,
                    th_vlib_done_cb cb, void *ud)
{
    vl_entry *e = vl_find_any(l, m->id);
    th_vlib_blob *b = th_vlib_blob_new(wav, wav_len);
    vl_create *c = b != NULL ? calloc(1, sizeof *c) : NULL;
    if (c == NULL || th_vlib_meta_copy(&c->m, m) != 0) {
        free(c);
        if (b != NULL)
            th_vlib_blob_release(b);
        else
            free(wav);
        if (e && e->state == VL_MAKING) vl_remove(l, e);
        cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    if (e == NULL || e->state != VL_MAKING || l->closing) {
        th_vlib_meta_free(&c->m);
        free(c);
        th_vlib_blob_release(b);
        cb(ud, TH_VLIB_IO, "the voice was not reserved");
        return;
    }
    c->l = l;
    c->b = b;
    c->max_per_tenant = max_per_tenant;
    c->cb = cb;
    c->ud = ud;
    vl_prepare(l, b, create_prepared, c);
}

static void create_store(th_vlib *l, const th_vlib_meta *m, th_vlib_blob *b, size_t max_per_tenant,
                         th_vlib_done_cb cb, void *ud)
{
    vl_entry *e = vl_find_any(l, m->id);
    if (l->redis_mode) {
        vl_redis_create(l, m, b, max_per_tenant, cb, ud);
        return;
    }
    fs_op *op = fs_op_new(l, OP_CREATE, m, cb, ud);
    if (op) op->record = th_vlib_meta_dump(m);
    if (op == NULL || op->record == NULL) {
        if (op) {
            th_vlib_meta_free(&op->m);
            free(op);
        }
        th_vlib_blob_release(b);
        vl_remove(l, e);
        cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    op->wav = b;
    fs_push(l, op);
}

void th_vlib_update(th_vlib *l, const char *id, const char *name, const char *text, th_vlib_done_cb cb,
                    void *ud)
{
    vl_entry *e = vl_find_any(l, id);
    if (e == NULL || e->state != VL_LIVE || l->closing) {
        cb(ud, TH_VLIB_MISSING, "no such voice");
        return;
    }
    th_vlib_meta nm;
    if (th_vlib_meta_copy(&nm, &e->m) != 0 || (name && th_vlib_meta_set(&nm.name, name) != 0) ||
        (text && th_vlib_meta_set(&nm.text, text) != 0)) {
        th_vlib_meta_free(&nm);
        cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    nm.updated_ms = (int64_t)th_wall_ms();
    if (l->redis_mode) {
        vl_redis_update(l, &nm, cb, ud);
        th_vlib_meta_free(&nm);
        return;
    }
    fs_op *op = fs_op_new(l, OP_UPDATE, &nm, cb, ud);
    if (op) op->record = th_vlib_meta_dump(&nm);
    th_vlib_meta_free(&nm);
    if (op == NULL || op->record == NULL) {
        if (op) {
            th_vlib_meta_free(&op->m);
            free(op);
        }
        cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    fs_push(l, op);
}

void th_vlib_delete(th_vlib *l, const char *id, th_vlib_done_cb cb, void *ud)
{
    vl_entry *e = vl_find_any(l, id);
    if (e == NULL || e->state != VL_LIVE || l->closing) {
        cb(ud, TH_VLIB_MISSING, "no such voice");
        return;
    }
    if (l->redis_mode) {
        vl_redis_delete(l, e, cb, ud);
        return;
    }
    fs_op *op = fs_op_new(l, OP_DELETE, &e->m, cb, ud);
    if (op == NULL) {
        cb(ud, TH_VLIB_NOMEM, "out of memory");
        return;
    }
    e->state = VL_DELETING;
    fs_push(l, op);
}

/* ---- start-up scan of the fs store ---- */

static bool has_suffix(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static int mkdirs(const char *path)
{
    char tmp[1024];
    if (th_strlcpy(tmp, path, sizeof tmp) >= sizeof tmp) return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0750) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(tmp, 0750) != 0 && errno != EEXIST ? -1 : 0;
}

/* A leftover file (a temporary file, a wav with no record) is a crashed write when this process is alone
 * on data_dir; otherwise it may be another process's write under way (its audio, then its record, within a
 * moment), and it is removed only when old. */
static bool stale(const th_vlib *l, const char *path)
{
    struct stat st;
    return l->alone_at_start || (stat(path, &st) == 0 && time(NULL) - st.st_mtime > TH_VLIB_STALE_S);
}

/* Joins the processes using this directory: a shared flock on voices/.members for the process's lifetime.
 * An exclusive one taken first tells whether it is alone. */
static int fs_join(th_vlib *l, char *err, size_t errlen)
{
    char path[1200];
    if (snprintf(path, sizeof path, "%s/.members", l->dir) >= (int)sizeof path) {
        snprintf(err, errlen, "data_dir is too long");
        return -1;
    }
    l->members_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->members_fd < 0) {
        snprintf(err, errlen, "cannot open %.200s: %s", path, strerror(errno));
        return -1;
    }
    l->alone_at_start = flock(l->members_fd, LOCK_EX | LOCK_NB) == 0;
    return 0;
}

/* After the scan: from exclusive (alone) or nothing to shared, waiting out another process's scan. */
static int fs_member(th_vlib *l, char *err, size_t errlen)
{
    uint64_t deadline = th_mono_ms() + TH_VLIB_JOIN_WAIT_MS;
    while (flock(l->members_fd, LOCK_SH | LOCK_NB) != 0) {
        if ((errno != EWOULDBLOCK && errno != EINTR) || th_mono_ms() >= deadline) {
            snprintf(err, errlen, "voices/.members: %s", strerror(errno == EWOULDBLOCK ? ETIMEDOUT : errno));
            return -1;
        }
        struct timespec ts = {0, 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Another process on this data_dir changed a record: re-read it, in order with this process's writes. */
static void on_dir_event(uv_fs_event_t *h, const char *name, int events, int status)
{
    (void)events;
    th_vlib *l = h->data;
    if (status < 0 || l->closing || name == NULL || !has_suffix(name, ".json")) return;
    size_t idlen = strlen(name) - 5;
    if (!th_vlib_id_ok(name, idlen)) return; /* temporary files and strangers */
    th_vlib_meta m;
    memset(&m, 0, sizeof m);
    memcpy(m.id, name, idlen);
    m.id[idlen] = '\0';
    fs_op *op = fs_op_new(l, OP_REFRESH, &m, NULL, NULL);
    if (op == NULL) {
        TH_LOG(l->log, TH_LOG_ERROR, "voice library: out of memory re-reading %s", m.id);
        return;
    }
    fs_push(l, op);
}

static void on_watch_closed(uv_handle_t *h)
{
    th_vlib *l = h->data;
    free(h);
    l->pending--;
    vl_maybe_free(l);
}

/* Watches the directory (inotify), so voices made or deleted by another process (a blue/green restart on
 * one data_dir) are seen. Without it (no inotify) a restart sees them. */
static void fs_watch(th_vlib *l)
{
    l->watch = malloc(sizeof *l->watch);
    if (l->watch == NULL || uv_fs_event_init(l->loop, l->watch) != 0) {
        free(l->watch);
        l->watch = NULL;
        TH_LOG(l->log, TH_LOG_WARN, "voice library: cannot watch %s", l->dir);
        return;
    }
    l->watch->data = l;
    int rc = uv_fs_event_start(l->watch, on_dir_event, l->dir, 0);
    if (rc != 0)
        TH_LOG(l->log, TH_LOG_WARN, "voice library: cannot watch %s: %s", l->dir, uv_strerror(rc));
    else
        uv_unref((uv_handle_t *)l->watch);
}

/* One record found at start: 1 taken, 0 skipped (logged), -1 out of memory. */
static int fs_scan_record(th_vlib *l, const char *path, const char *nm, size_t idlen)
{
    uint8_t *data = NULL;
    size_t len = 0;
    th_vlib_meta m;
    char perr[200] = "";
    if (read_file(path, TH_VLIB_RECORD_MAX, &data, &len) != 0 ||
        th_vlib_meta_parse((const char *)data, len, &m, perr, sizeof perr) != 0) {
        TH_LOG(l->log, TH_LOG_ERROR, "voice library: skipping %s: %s", path, perr[0] ? perr : "unreadable");
        free(data);
        return 0;
    }
    free(data);
    struct stat st;
    char wpath[1200];
    if (strlen(m.id) != idlen || strncmp(m.id, nm, idlen) != 0 ||
        path_of(l, wpath, sizeof wpath, m.id, m.sha256, "wav") != 0 || stat(wpath, &st) != 0 ||
        (uint64_t)st.st_size != m.wav_len || vl_find_any(l, m.id) != NULL) {
        TH_LOG(l->log, TH_LOG_ERROR, "voice library: skipping %s: its audio is missing or does not match",
               path);
        th_vlib_meta_free(&m);
        return 0;
    }
    vl_entry *e = vl_add(l, m.id, VL_LIVE);
    if (e == NULL) {
        th_vlib_meta_free(&m);
        return -1;
    }
    e->m = m;
    return 1;
}

/* Orphaned audio: a wav whose record never made it (or was deleted). */
static void fs_scan_orphans(th_vlib *l, DIR *d)
{
    struct dirent *de;
    rewinddir(d);
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        if (!has_suffix(nm, ".wav")) continue;
        const char *dot = strchr(nm, '.');
        if (dot == NULL || !th_vlib_id_ok(nm, (size_t)(dot - nm))) continue;
        char id[TH_VLIB_ID_MAX + 1];
        memcpy(id, nm, (size_t)(dot - nm));
        id[dot - nm] = 0;
        vl_entry *e = vl_find_any(l, id);
        if (e && strlen(dot + 1) == 64 + 4 && strncmp(dot + 1, e->m.sha256, 64) == 0) continue;
        char path[1200];
        if (snprintf(path, sizeof path, "%s/%s", l->dir, nm) < (int)sizeof path && stale(l, path))
            (void)unlink(path);
    }
}

static int fs_scan(th_vlib *l, char *err, size_t errlen)
{
    if (mkdirs(l->dir) != 0) {
        snprintf(err, errlen, "cannot create %.200s: %s", l->dir, strerror(errno));
        return -1;
    }
    if (fs_join(l, err, errlen) != 0) return -1;
    DIR *d = opendir(l->dir);
    if (d == NULL) {
        snprintf(err, errlen, "cannot open %.200s: %s", l->dir, strerror(errno));
        return -1;
    }
    struct dirent *de;
    size_t loaded = 0, bad = 0;
    while ((de = readdir(d)) != NULL) {
        const char *nm = de->d_name;
        char path[1200];
        if (snprintf(path, sizeof path, "%s/%s", l->dir, nm) >= (int)sizeof path) continue;
        if (strncmp(nm, ".tmp-", 5) == 0) { /* an interrupted write, or one under way in another process */
            if (stale(l, path)) (void)unlink(path);
            continue;
        }
        if (!has_suffix(nm, ".json")) continue;
        size_t idlen = strlen(nm) - 5;
        if (!th_vlib_id_ok(nm, idlen)) continue;
        int r = fs_scan_record(l, path, nm, idlen);
        if (r < 0) {
            closedir(d);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        loaded += r == 1;
        bad += r == 0;
    }
    fs_scan_orphans(l, d);
    closedir(d);
    if (fs_member(l, err, errlen) != 0) return -1;
    TH_LOG(l->log, TH_LOG_INFO, "voice library: %zu voice(s) in %s%s", loaded, l->dir,
           bad ? " (some records skipped, see above)" : "");
    return 0;
}

/* ---- lifetime ---- */

th_vlib *th_vlib_new(uv_loop_t *loop, const th_vlib_conf *conf, th_log *log, char *err, size_t errlen)
{
    th_vlib *l = calloc(1, sizeof *l);
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    l->members_fd = -1;
    l->loop = loop;
    l->log = log;
    l->cache_cap = conf->cache_bytes;
    l->max_voices = conf->max_voices;
    if (conf->backend && strcmp(conf->backend, "redis") == 0) {
        if (conf->redis == NULL) {
            snprintf(err, errlen, "voice_library.backend redis needs the redis connection");
            free(l);
            return NULL;
        }
        l->redis_mode = true;
        if (vl_redis_start(l, conf->redis, conf->prefix) != 0) {
            snprintf(err, errlen, "out of memory");
            free(l);
            return NULL;
        }
        return l;
    }
    int k = snprintf(l->dir, sizeof l->dir, "%s/voices",
                     conf->data_dir && *conf->data_dir ? conf->data_dir : ".");
    if (k < 0 || (size_t)k >= sizeof l->dir) {
        snprintf(err, errlen, "data_dir is too long");
        free(l);
        return NULL;
    }
    if (fs_scan(l, err, errlen) != 0) {
        l->closing = true;
        l->timer_closed = true;
        vl_maybe_free(l);
        return NULL;
    }
    l->timer_closed = true; /* fs has no timer */
    fs_watch(l);
    return l;
}

void vl_maybe_free(th_vlib *l)
{
    if (!l->closing || l->pending > 0 || !l->timer_closed) return;
    for (size_t i = 0; i < l->nb; i++) {
        vl_entry *e = l->buckets[i];
        while (e) {
            vl_entry *nx = e->hnext;
            if (e->audio) th_vlib_blob_release(e->audio);
            th_vlib_meta_free(&e->m);
            free(e);
            e = nx;
        }
    }
    free(l->buckets);
    free(l->rs);
    if (l->members_fd >= 0) close(l->members_fd);
    free(l);
}

void th_vlib_free(th_vlib *l)
{
    if (l == NULL) return;
    l->closing = true;
    if (l->redis_mode) vl_redis_stop(l);
    if (l->watch != NULL) {
        l->pending++;
        uv_close((uv_handle_t *)l->watch, on_watch_closed);
        l->watch = NULL;
    }
    vl_maybe_free(l);
}

th_dec_rc th_vlib_normalise(const uint8_t *audio, size_t len, const th_dec_opts *opts, double silence_dbfs,
                            th_vlib_meta *m, th_dec_level *level, uint8_t **wav, size_t *wav_len, char *err,
                            size_t errlen)
{
    th_buf pcm;
    /* the decoder stops just past max_seconds; the bound leaves room for that last frame */
    th_buf_init(&pcm, (size_t)((opts->max_seconds + 2) * opts->out_rate) * 2 + TH_WAV_HEADER_LEN);
    if (th_buf_append(&pcm, (const uint8_t[TH_WAV_HEADER_LEN]){0}, TH_WAV_HEADER_LEN) != TH_BUF_OK)
        return TH_DEC_NOMEM;
    th_dec_rc rc = th_audio_decode(audio, len, opts, &pcm, err, errlen);
    if (rc != TH_DEC_OK) {
        th_buf_free(&pcm);
        return rc;
    }
    size_t samples = (pcm.len - TH_WAV_HEADER_LEN) / 2;
    pcm.len = TH_WAV_HEADER_LEN + samples * 2;
    th_audio_level((const int16_t *)(const void *)(pcm.data + TH_WAV_HEADER_LEN), samples, opts->out_rate,
                   silence_dbfs, level);
    th_wav_header(pcm.data, opts->out_rate, 1, 16, (uint32_t)(samples * 2));
    m->duration_s = (double)samples / opts->out_rate;
    m->rate = opts->out_rate;
    *wav = th_buf_steal(&pcm, wav_len);
    m->wav_len = *wav_len;
    th_vlib_sha256_hex(*wav, *wav_len, m->sha256);
    return TH_DEC_OK;
}
