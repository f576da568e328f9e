/* config_json: a config as JSON (for th_config_to_json: GET /admin/config), from the same tables that
 * read it. Secrets are redacted, and so are the userinfo and query of URLs. */
#include "config/config_int.h"

#include "core/str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* "scheme://user:pass@host/..." -> "scheme://<redacted>@host/..." */
static json_t *url_json(const char *s)
{
    const char *sep = strstr(s, "://");
    if (sep == NULL) return json_string(s);
    const char *auth = sep + 3;
    size_t an = strcspn(auth, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < an; i++)
        if (auth[i] == '@') at = auth + i;
    const char *q = strpbrk(auth, "?#"); /* a query or fragment may carry a key (?api_key=...) */
    if (at == NULL && q == NULL) return json_string(s);
    size_t pre = (size_t)(auth - s);
    const char *rest = at ? at : auth;
    size_t restn = q ? (size_t)(q - rest) : strlen(rest);
    size_t len = pre + 2 * strlen("<redacted>") + restn + 3;
    char *b = malloc(len);
    if (b == NULL) return NULL;
    snprintf(b, len, "%.*s%s%.*s%s", (int)pre, s, at ? "<redacted>" : "", (int)restn, rest,
             q ? "?<redacted>" : "");
    json_t *j = json_string(b);
    free(b);
    return j;
}

static json_t *opt_json(const key_def *kd, const char *s)
{
    bool b;
    int64_t i;
    if (kd->vtype == K_BOOL && cf_parse_bool(s, &b)) return json_boolean(b);
    if (kd->vtype == K_INT && th_str_to_i64(s, INT64_MIN, INT64_MAX, &i) == 0) return json_integer(i);
    return json_string(s);
}

static const void *field2(const key_def *kd, const void *base)
{
    return (const char *)base + kd->off2;
}

static json_t *str_json(const key_def *kd, const char *s)
{
    if (s == NULL) s = "";
    if (kd->flags & F_SECRET) return json_string("<redacted>");
    if (kd->flags & F_URL) return url_json(s);
    return json_string(s);
}

static json_t *int_json(const key_def *kd, const void *f)
{
    if (kd->width == 4) {
        int32_t x;
        memcpy(&x, f, 4);
        return json_integer(x);
    }
    int64_t x;
    memcpy(&x, f, 8);
    return json_integer(x);
}

static json_t *enumi_json(const key_def *kd, const void *f)
{
    int x;
    memcpy(&x, f, sizeof x);
    int ne = 0;
    while (kd->enums[ne])
        ne++;
    return json_string(x >= 0 && x < ne ? kd->enums[x] : "");
}

static json_t *strlist_json(char *const *l, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        if (json_array_append_new(a, json_string(l[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *formats_json(uint32_t m)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < cf_n_fmt_names; i++) {
        if (!(m & (1u << cf_fmt_names[i].fmt))) continue;
        if (json_array_append_new(a, json_string(cf_fmt_names[i].name)) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* name -> string, or -> the mapping (kept as JSON text) of a cloning kind's voice */
static json_t *kvmap_json(const th_kv *kv, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < n; i++) {
        json_t *v = kv[i].is_map ? json_loads(kv[i].value, 0, NULL) : json_string(kv[i].value);
        if (v == NULL || json_object_set_new(o, kv[i].key, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* K_LIST: an array of sections; K_MAP: an object of them by name */
static json_t *list_json(const key_def *kd, const char *arr, size_t n)
{
    json_t *out = kd->type == K_MAP ? json_object() : json_array();
    for (size_t i = 0; out && i < n; i++) {
        const void *el = arr + i * kd->width;
        json_t *o = cf_dump_section(kd->sub, el);
        int rc = -1;
        if (o && kd->type == K_MAP)
            rc = json_object_set_new(out, *(char *const *)((const char *)el + kd->name_off), o);
        else if (o)
            rc = json_array_append_new(out, o);
        if (rc != 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

static json_t *dump_key(const key_def *kd, const void *base)
{
    const void *f = (const char *)base + kd->off;
    char buf[64];
    switch (kd->type) {
    case K_STR:
    case K_ENUM:
        return str_json(kd, *(char *const *)f);
    case K_BOOL:
        return json_boolean(*(const bool *)f);
    case K_INT:
        return int_json(kd, f);
    case K_DBL:
        return json_real(*(const double *)f);
    case K_DUR:
        cf_fmt_dur(*(const uint64_t *)f, buf, sizeof buf);
        return json_string(buf);
    case K_SIZE:
        cf_fmt_size(*(const uint64_t *)f, buf, sizeof buf);
        return json_string(buf);
    case K_ENUMI:
        return enumi_json(kd, f);
    case K_STRLIST:
        return strlist_json(*(char **const *)f, *(const size_t *)field2(kd, base));
    case K_FMTS:
        return formats_json(*(const uint32_t *)f);
    case K_KVMAP:
        return kvmap_json(*(th_kv *const *)f, *(const size_t *)field2(kd, base));
    case K_SECTION:
        return cf_dump_section(kd->sub, base);
    case K_LIST:
    case K_MAP:
        return list_json(kd, *(char *const *)f, *(const size_t *)field2(kd, base));
    default:
        return NULL;
    }
}

json_t *cf_dump_section(const section_def *sec, const void *base)
{
    json_t *o = json_object();
    int kind = -1;
    if (o == NULL) return NULL;
    if (sec->by_kind) {
        const th_provider_conf *pc = base;
        kind = pc->type ? cf_enum_index(cf_kinds, pc->type) : -1;
    }
    for (size_t i = 0; i < sec->n; i++) {
        const key_def *kd = &sec->keys[i];
        json_t *v;
        if (kd->kinds && kind >= 0 && !(kd->kinds & KB(kind))) continue;
        if (kd->type == K_OPT) {
            const th_provider_conf *pc = base;
            const char *s = th_kv_get(pc->opts, pc->n_opts, kd->name);
            if (s == NULL) continue;
            v = opt_json(kd, s);
        } else {
            v = dump_key(kd, base);
        }
        if (v == NULL || json_object_set_new(o, kd->name, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}
