/* config_schema: step 2 of the config (config.c): the walk of the YAML tree through the tables.
 *
 * Every mapping is checked against a section_def, an array of key_def. A key_def holds the key's name,
 * type, bounds, default (as the text one would write in the file), offsetof its field and an optional
 * validator. Defaults are applied by parsing that text through the same code as the file. Unknown keys
 * are errors; provider keys also carry the kinds they belong to. The same tables free a config. */
#include "config/config_int.h"

#include "core/str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct val {
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    int idx;
    const char *s;
} val;

/* Client-facing format names (API.md); bit = 1u << th_fmt. */
const fmt_name cf_fmt_names[] = {{"mp3", TH_FMT_MP3},   {"opus", TH_FMT_OPUS}, {"aac", TH_FMT_AAC},
                                 {"flac", TH_FMT_FLAC}, {"wav", TH_FMT_WAV},   {"pcm", TH_FMT_PCM}};
const size_t cf_n_fmt_names = sizeof cf_fmt_names / sizeof cf_fmt_names[0];

int cf_enum_index(const char *const *list, const char *s)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0) return i;
    return -1;
}

static void enum_message(const char *const *list, char *msg, size_t cap)
{
    size_t o = (size_t)snprintf(msg, cap, "must be one of ");
    for (size_t i = 0; list[i] && o < cap; i++)
        o += (size_t)snprintf(msg + o, cap - o, "%s%s", i ? ", " : "", list[i]);
}

void cf_fmt_dur(uint64_t ms, char *out, size_t cap)
{
    if (ms == 0)
        snprintf(out, cap, "0s");
    else if (ms % HOUR == 0)
        snprintf(out, cap, "%lluh", (unsigned long long)(ms / HOUR));
    else if (ms % MIN == 0)
        snprintf(out, cap, "%llum", (unsigned long long)(ms / MIN));
    else if (ms % SEC == 0)
        snprintf(out, cap, "%llus", (unsigned long long)(ms / SEC));
    else
        snprintf(out, cap, "%llums", (unsigned long long)ms);
}

void cf_fmt_size(uint64_t b, char *out, size_t cap)
{
    if (b != 0 && b % GiB == 0)
        snprintf(out, cap, "%lluGiB", (unsigned long long)(b / GiB));
    else if (b != 0 && b % MiB == 0)
        snprintf(out, cap, "%lluMiB", (unsigned long long)(b / MiB));
    else if (b != 0 && b % KiB == 0)
        snprintf(out, cap, "%lluKiB", (unsigned long long)(b / KiB));
    else
        snprintf(out, cap, "%llu", (unsigned long long)b);
}

bool cf_parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
        *out = false;
        return true;
    }
    return false;
}

/* Converts the text of a scalar (null: a YAML null) as type t. 0, or -1 with msg. */
static int conv(const key_def *kd, ktype t, const char *s, bool null, val *v, char *msg, size_t cap)
{
    char a[32], b[32];
    const char *m;
    if (null && t != K_STR) s = "";
    switch (t) {
    case K_STR:
        v->s = null ? "" : s;
        if (kd->check && (m = kd->check(v->s)) != NULL) goto fail_m;
        return 0;
    case K_BOOL:
        if (!cf_parse_bool(s, &v->b)) {
            m = "must be true or false";
            goto fail_m;
        }
        return 0;
    case K_INT:
        if (th_str_to_i64(s, INT64_MIN, INT64_MAX, &v->i) != 0) {
            m = "must be an integer";
            goto fail_m;
        }
        if (v->i < kd->min || v->i > kd->max) {
            snprintf(msg, cap, "must be between %lld and %lld", (long long)kd->min, (long long)kd->max);
            return -1;
        }
        return 0;
    case K_DBL:
        if (th_str_to_double(s, -1e300, 1e300, &v->d) != 0) {
            m = "must be a number";
            goto fail_m;
        }
        if (v->d < kd->dmin || v->d > kd->dmax) {
            snprintf(msg, cap, "must be between %g and %g", kd->dmin, kd->dmax);
            return -1;
        }
        return 0;
    case K_DUR:
        if (th_str_to_duration_ms(s, &v->u) != 0) {
            m = "not a duration";
            goto fail_m;
        }
        if (v->u < (uint64_t)kd->min || v->u > (uint64_t)kd->max) {
            cf_fmt_dur((uint64_t)kd->min, a, sizeof a);
            cf_fmt_dur((uint64_t)kd->max, b, sizeof b);
            snprintf(msg, cap, "must be between %s and %s", a, b);
            return -1;
        }
        return 0;
    case K_SIZE:
        if (th_str_to_size(s, &v->u) != 0) {
            m = "not a size";
            goto fail_m;
        }
        if (v->u < (uint64_t)kd->min || v->u > (uint64_t)kd->max) {
            cf_fmt_size((uint64_t)kd->min, a, sizeof a);
            cf_fmt_size((uint64_t)kd->max, b, sizeof b);
            snprintf(msg, cap, "must be between %s and %s", a, b);
            return -1;
        }
        return 0;
    case K_ENUM:
    case K_ENUMI:
        v->idx = cf_enum_index(kd->enums, s);
        if (v->idx < 0) {
            enum_message(kd->enums, msg, cap);
            return -1;
        }
        v->s = kd->enums[v->idx];
        return 0;
    default:
        m = "unsupported type";
        goto fail_m;
    }
fail_m:
    th_strlcpy(msg, m, cap);
    return -1;
}

static const char *type_text(ktype t)
{
    switch (t) {
    case K_STR:
        return "must be a string";
    case K_BOOL:
        return "must be true or false";
    case K_INT:
        return "must be an integer";
    case K_DBL:
        return "must be a number";
    case K_DUR:
        return "not a duration";
    case K_SIZE:
        return "not a size";
    case K_STRLIST:
    case K_FMTS:
    case K_LIST:
        return "must be a list";
    default:
        return "must be a mapping";
    }
}

/* The message for a value of the wrong YAML kind (a list where a scalar belongs...). */
static void type_message(const key_def *kd, ktype t, char *msg, size_t cap)
{
    if (t == K_ENUM || t == K_ENUMI)
        enum_message(kd->enums, msg, cap);
    else
        th_strlcpy(msg, type_text(t), cap);
}

static void *at_off(void *base, size_t off)
{
    return (char *)base + off;
}

/* Stores a converted scalar into its field. -1 on ENOMEM. */
static int store(const key_def *kd, void *base, const val *v)
{
    void *f = at_off(base, kd->off);
    switch (kd->type) {
    case K_STR:
    case K_ENUM: {
        char *d = strdup(v->s);
        if (d == NULL) return -1;
        char **slot = f;
        free(*slot);
        *slot = d;
        return 0;
    }
    case K_BOOL:
        *(bool *)f = v->b;
        return 0;
    case K_INT:
        if (kd->width == 4) {
            int32_t x = (int32_t)v->i;
            memcpy(f, &x, 4);
        } else {
            int64_t x = v->i;
            memcpy(f, &x, 8);
        }
        return 0;
    case K_DBL:
        *(double *)f = v->d;
        return 0;
    case K_DUR:
    case K_SIZE:
        *(uint64_t *)f = v->u;
        return 0;
    case K_ENUMI: {
        int x = v->idx;
        memcpy(f, &x, sizeof x);
        return 0;
    }
    default:
        return 0;
    }
}

static void free_strlist(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

void cf_free_kv(th_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

static void free_key(const key_def *kd, void *base)
{
    void *f = at_off(base, kd->off);
    switch (kd->type) {
    case K_STR:
    case K_ENUM:
        free(*(char **)f);
        *(char **)f = NULL;
        break;
    case K_STRLIST:
        free_strlist(*(char ***)f, *(size_t *)at_off(base, kd->off2));
        *(char ***)f = NULL;
        *(size_t *)at_off(base, kd->off2) = 0;
        break;
    case K_KVMAP:
        cf_free_kv(*(th_kv **)f, *(size_t *)at_off(base, kd->off2));
        *(th_kv **)f = NULL;
        *(size_t *)at_off(base, kd->off2) = 0;
        break;
    case K_SECTION:
        cf_free_section(kd->sub, base);
        break;
    case K_LIST:
    case K_MAP: {
        char *arr = *(char **)f;
        size_t n = *(size_t *)at_off(base, kd->off2);
        for (size_t i = 0; i < n && arr; i++) {
            void *el = arr + i * kd->width;
            cf_free_section(kd->sub, el);
            if (kd->type == K_MAP) free(*(char **)at_off(el, kd->name_off));
        }
        free(arr);
        *(char **)f = NULL;
        *(size_t *)at_off(base, kd->off2) = 0;
        break;
    }
    default: /* K_OPT: freed by the section's fini */
        break;
    }
}

void cf_free_section(const section_def *sec, void *base)
{
    for (size_t i = 0; i < sec->n; i++)
        free_key(&sec->keys[i], base);
    if (sec->fini) sec->fini(base);
}

int cf_kv_append(th_kv **kv, size_t *n, const char *key, const char *value, bool is_map)
{
    th_kv *p = realloc(*kv, (*n + 1) * sizeof *p);
    if (p == NULL) return -1;
    *kv = p;
    th_kv *e = &p[*n];
    e->key = strdup(key);
    e->value = strdup(value);
    e->is_map = is_map;
    if (e->key == NULL || e->value == NULL) {
        free(e->key);
        free(e->value);
        return -1;
    }
    (*n)++;
    return 0;
}

/* Defaults: every key's default text parsed through conv(). -1 on ENOMEM (or a bad default). */
int cf_apply_defaults(const section_def *sec, void *base)
{
    for (size_t i = 0; i < sec->n; i++) {
        const key_def *kd = &sec->keys[i];
        char msg[128];
        val v = {0};
        switch (kd->type) {
        case K_SECTION:
            if (cf_apply_defaults(kd->sub, base) != 0) return -1;
            break;
        case K_STRLIST:
            if (kd->def) {
                char **l = calloc(1, sizeof *l);
                if (l == NULL) return -1;
                l[0] = strdup(kd->def);
                if (l[0] == NULL) {
                    free(l);
                    return -1;
                }
                *(char ***)at_off(base, kd->off) = l;
                *(size_t *)at_off(base, kd->off2) = 1;
            }
            break;
        case K_STR:
        case K_ENUM:
            if (kd->def == NULL || kd->def[0] == 0) { /* "" without running the validator */
                v.s = "";
                if (store(kd, base, &v) != 0) return -1;
                break;
            }
            /* fallthrough */
        case K_BOOL:
        case K_INT:
        case K_DBL:
        case K_DUR:
        case K_SIZE:
        case K_ENUMI:
            if (kd->def == NULL) break;
            if (conv(kd, kd->type, kd->def, false, &v, msg, sizeof msg) != 0) return -1;
            if (store(kd, base, &v) != 0) return -1;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* A voice reference mapping (cloning engines) -> compact JSON. Values: scalars or lists of scalars. */
static json_t *ref_to_json(ctx *c, const ynode *n, const char *path, int depth)
{
    if (n->kind == N_SCALAR) {
        if (n->plain) {
            bool b;
            int64_t i;
            double d;
            if (cf_is_null(n)) return json_null();
            if (cf_parse_bool(n->val, &b)) return json_boolean(b);
            if (th_str_to_i64(n->val, INT64_MIN, INT64_MAX, &i) == 0) return json_integer(i);
            if (th_str_to_double(n->val, -1e300, 1e300, &d) == 0) return json_real(d);
        }
        return json_string(n->val);
    }
    if (n->kind == N_SEQ && depth > 0) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < n->n; i++) {
            char p[256];
            cf_join_index(p, sizeof p, path, i);
            json_t *x = ref_to_json(c, n->kids[i], p, depth - 1);
            if (x == NULL || json_array_append_new(a, x) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    if (n->kind != N_BAD) cf_err(c, n->line, path, "must be a string or a list of strings");
    return json_null();
}

static void set_kvmap(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    th_kv **kv = at_off(base, kd->off);
    size_t *cnt = at_off(base, kd->off2);
    if (cf_is_null(n)) return;
    if (n->kind != N_MAP) {
        cf_err(c, n->line, path, "must be a mapping");
        return;
    }
    for (size_t i = 0; i + 1 < n->n; i += 2) {
        const ynode *k = n->kids[i], *v = n->kids[i + 1];
        if (k->ignore) continue;
        char p[256];
        cf_join(p, sizeof p, path, k->val);
        if (k->val[0] == 0) {
            cf_err(c, k->line, p, "the name must not be empty");
            continue;
        }
        if (v->kind == N_SCALAR) {
            if (cf_is_null(v) || v->val[0] == 0) {
                cf_err(c, v->line, p, "must not be empty");
                continue;
            }
            if (cf_kv_append(kv, cnt, k->val, v->val, false) != 0) cf_oom(c);
        } else if (v->kind == N_MAP && (kd->flags & F_KV_MAPOK) && c->kind >= 0 &&
                   (KB(c->kind) & KB_CLONING)) {
            json_t *o = json_object();
            if (o == NULL) {
                cf_oom(c);
                continue;
            }
            for (size_t j = 0; j + 1 < v->n; j += 2) {
                if (v->kids[j]->ignore) continue;
                char q[256];
                cf_join(q, sizeof q, p, v->kids[j]->val);
                json_t *x = ref_to_json(c, v->kids[j + 1], q, 1);
                if (x == NULL || json_object_set_new(o, v->kids[j]->val, x) != 0) cf_oom(c);
            }
            if (c->kind == KD_GPT_SOVITS && json_object_get(o, "ref_audio_path") == NULL) {
                char q[256];
                cf_join(q, sizeof q, p, "ref_audio_path");
                cf_err(c, v->line, q, "required");
            }
            if (json_object_size(o) == 0) cf_err(c, v->line, p, "must not be empty");
            char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(o);
            if (txt == NULL || cf_kv_append(kv, cnt, k->val, txt, true) != 0) cf_oom(c);
            free(txt);
        } else if (v->kind == N_MAP && (kd->flags & F_KV_MAPOK)) {
            cf_err(c, v->line, p, "must be a string (a mapping is only for gpt_sovits, cosyvoice and nodes)");
        } else if (v->kind != N_BAD) {
            cf_err(c, v->line, p, "must be a string");
        }
    }
}

static void set_strlist(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char ***lp = at_off(base, kd->off);
    size_t *cnt = at_off(base, kd->off2);
    free_strlist(*lp, *cnt);
    *lp = NULL;
    *cnt = 0;
    if (cf_is_null(n)) return;
    if (n->kind != N_SEQ) {
        cf_err(c, n->line, path, "must be a list");
        return;
    }
    if (n->n == 0) return;
    char **l = calloc(n->n, sizeof *l);
    if (l == NULL) {
        cf_oom(c);
        return;
    }
    *lp = l;
    for (size_t i = 0; i < n->n; i++) {
        const ynode *it = n->kids[i];
        char p[256];
        cf_join_index(p, sizeof p, path, i);
        if (it->kind != N_SCALAR) {
            if (it->kind != N_BAD) cf_err(c, it->line, p, "must be a string");
            continue;
        }
        const char *m = kd->check ? kd->check(it->val) : cf_check_nonempty(it->val);
        if (m) {
            cf_err(c, it->line, p, "%s", m);
            continue;
        }
        l[*cnt] = strdup(it->val);
        if (l[*cnt] == NULL) {
            cf_oom(c);
            return;
        }
        (*cnt)++;
    }
}

static void set_formats(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    uint32_t mask = 0;
    if (cf_is_null(n)) return;
    if (n->kind != N_SEQ) {
        cf_err(c, n->line, path, "must be a list");
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        const ynode *it = n->kids[i];
        char p[256];
        cf_join_index(p, sizeof p, path, i);
        size_t j = 0;
        for (; it->kind == N_SCALAR && j < cf_n_fmt_names; j++)
            if (strcmp(cf_fmt_names[j].name, it->val) == 0) break;
        if (it->kind != N_SCALAR || j == cf_n_fmt_names) {
            if (it->kind != N_BAD) cf_err(c, it->line, p, "must be one of mp3, opus, aac, flac, wav, pcm");
            continue;
        }
        mask |= 1u << cf_fmt_names[j].fmt;
    }
    *(uint32_t *)at_off(base, kd->off) = mask;
}

static void set_list(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char **arrp = at_off(base, kd->off);
    size_t *cnt = at_off(base, kd->off2);
    free_key(kd, base);
    if (cf_is_null(n)) return;
    bool is_map = kd->type == K_MAP;
    if (n->kind != (is_map ? N_MAP : N_SEQ)) {
        cf_err(c, n->line, path, is_map ? "must be a mapping" : "must be a list");
        return;
    }
    size_t want = is_map ? n->n / 2 : n->n;
    if (want == 0) return;
    char *arr = calloc(want, kd->width);
    if (arr == NULL) {
        cf_oom(c);
        return;
    }
    *arrp = arr;
    for (size_t i = 0; i < want; i++) {
        const ynode *k = is_map ? n->kids[2 * i] : NULL;
        const ynode *v = is_map ? n->kids[2 * i + 1] : n->kids[i];
        if (k && k->ignore) continue;
        void *el = arr + *cnt * kd->width;
        char p[256];
        if (is_map)
            cf_join(p, sizeof p, path, k->val);
        else
            cf_join_index(p, sizeof p, path, i);
        (*cnt)++;
        if (cf_apply_defaults(kd->sub, el) != 0) {
            cf_oom(c);
            return;
        }
        if (is_map) {
            const char *m = kd->check ? kd->check(k->val) : cf_check_nonempty(k->val);
            if (m) cf_err(c, k->line, p, "%s", m);
            char *name = strdup(k->val);
            if (name == NULL) {
                cf_oom(c);
                return;
            }
            *(char **)at_off(el, kd->name_off) = name;
        }
        if (v->kind == N_BAD) continue;
        cf_walk_section(c, kd->sub, v, el, p);
        if (kd->sub->post) kd->sub->post(c, v, el, p, is_map ? *cnt - 1 : i);
        if (c->oom) return;
    }
}

static void set_opt(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char msg[256], txt[32];
    val v = {0};
    if (n->kind != N_SCALAR) {
        type_message(kd, kd->vtype, msg, sizeof msg);
        cf_err(c, n->line, path, "%s", msg);
        return;
    }
    if (conv(kd, kd->vtype, n->val, cf_is_null(n), &v, msg, sizeof msg) != 0) {
        cf_err(c, n->line, path, "%s", msg);
        return;
    }
    const char *s = v.s;
    if (kd->vtype == K_BOOL) s = v.b ? "true" : "false";
    if (kd->vtype == K_INT) {
        snprintf(txt, sizeof txt, "%lld", (long long)v.i);
        s = txt;
    }
    if (cf_kv_append(at_off(base, kd->off), at_off(base, kd->off2), kd->name, s, false) != 0) cf_oom(c);
}

void cf_set_key(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char msg[256];
    val v = {0};
    if (n->kind == N_BAD) return; /* already reported (alias, NUL) */
    switch (kd->type) {
    case K_SECTION:
        cf_walk_section(c, kd->sub, n, base, path);
        return;
    case K_LIST:
    case K_MAP:
        set_list(c, kd, n, base, path);
        return;
    case K_STRLIST:
        set_strlist(c, kd, n, base, path);
        return;
    case K_FMTS:
        set_formats(c, kd, n, base, path);
        return;
    case K_KVMAP:
        set_kvmap(c, kd, n, base, path);
        return;
    case K_OPT:
        set_opt(c, kd, n, base, path);
        return;
    default:
        break;
    }
    if (n->kind != N_SCALAR) {
        type_message(kd, kd->type, msg, sizeof msg);
        cf_err(c, n->line, path, "%s", msg);
        return;
    }
    if (conv(kd, kd->type, n->val, cf_is_null(n), &v, msg, sizeof msg) != 0) {
        cf_err(c, n->line, path, "%s", msg);
        return;
    }
    if (store(kd, base, &v) != 0) cf_oom(c);
}

void cf_walk_section(ctx *c, const section_def *sec, const ynode *n, void *base, const char *path)
{
    uint64_t seen = 0;
    int kind = -1;
    char p[256];
    if (n == NULL || n->kind == N_BAD) return;
    if (!cf_is_null(n) && n->kind != N_MAP) {
        cf_err(c, n->line, path, "must be a mapping");
        return;
    }
    if (sec->by_kind) {
        const ynode *t = cf_get(n, "type");
        if (t && t->kind == N_SCALAR) kind = cf_enum_index(cf_kinds, t->val);
        c->kind = kind;
        if (t == NULL) {
            cf_join(p, sizeof p, path, "type");
            cf_err(c, n->line, p, "required");
        }
    }
    for (size_t i = 0; n->kind == N_MAP && i + 1 < n->n && !c->oom; i += 2) {
        const ynode *k = n->kids[i], *v = n->kids[i + 1];
        if (k->ignore) continue;
        cf_join(p, sizeof p, path, k->val);
        size_t j = 0;
        while (j < sec->n && strcmp(sec->keys[j].name, k->val) != 0)
            j++;
        const key_def *kd = j < sec->n ? &sec->keys[j] : NULL;
        if (kd == NULL || (sec->by_kind && kind >= 0 && kd->kinds && !(kd->kinds & KB(kind)))) {
            if (sec->by_kind && kind >= 0)
                cf_err(c, k->line, p, "unknown key for type %s", cf_kinds[kind]);
            else
                cf_err(c, k->line, p, "unknown key");
            continue;
        }
        seen |= 1ull << j;
        cf_set_key(c, kd, v, base, p);
    }
    for (size_t j = 0; j < sec->n; j++) {
        if ((sec->keys[j].flags & F_REQ) && !(seen & (1ull << j))) {
            cf_join(p, sizeof p, path, sec->keys[j].name);
            cf_err(c, n->line, p, "required");
        }
    }
    if (sec->by_kind) c->kind = -1;
}
