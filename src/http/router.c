/* router: method + path -> handler.
 *
 * Patterns are split into segments once, at th_router_add: literal segments, {param} segments (one
 * non-empty path segment each) and an optional trailing '*' (the rest of the path, possibly empty; its
 * value is the param "*"). Dispatch walks the routes without allocating. When several patterns match a
 * path, the most specific wins: more literal segments, then no wildcard, then more segments, then the
 * earliest added. A method matches exactly, or "*" matches any, and a HEAD request falls back to a GET
 * route. A path that matched with no method gives 405 with the Allow list, no path 404. */
#include "http/router.h"

#include <stdlib.h>
#include <string.h>

#include "core/str.h"

#define MAX_CAPS 16
#define MAX_VALUE 2048

typedef struct seg {
    char *text; /* literal text, or the param name */
    size_t len;
    bool param;
} seg;

typedef struct route {
    char *method;
    seg *segs;
    size_t nsegs;
    bool wildcard;
    size_t literals;
    th_http_handler h;
    void *ud;
} route;

struct th_router {
    route *routes;
    size_t n, cap;
    th_router_miss_fn miss;
    void *ud;
};

typedef struct capture {
    const char *name;
    const char *val;
    size_t len;
} capture;

th_router *th_router_new(th_router_miss_fn miss, void *ud)
{
    th_router *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->miss = miss;
    r->ud = ud;
    return r;
}

static void route_free(route *rt)
{
    for (size_t i = 0; i < rt->nsegs; i++)
        free(rt->segs[i].text);
    free(rt->segs);
    free(rt->method);
}

void th_router_free(th_router *r)
{
    if (r == NULL) return;
    for (size_t i = 0; i < r->n; i++)
        route_free(&r->routes[i]);
    free(r->routes);
    free(r);
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

int th_router_add(th_router *r, const char *method, const char *pattern, th_http_handler h, void *ud)
{
    if (r == NULL || method == NULL || method[0] == '\0' || pattern == NULL || pattern[0] != '/' || h == NULL)
        return -1;
    route rt;
    memset(&rt, 0, sizeof rt);
    rt.h = h;
    rt.ud = ud;
    size_t nmax = 1;
    for (const char *p = pattern; *p; p++)
        nmax += *p == '/';
    rt.segs = calloc(nmax, sizeof *rt.segs);
    rt.method = th_strndup(method, strlen(method));
    if (rt.segs == NULL || rt.method == NULL) goto fail;
    const char *p = pattern + 1;
    for (;;) {
        const char *end = p;
        while (*end && *end != '/')
            end++;
        size_t len = (size_t)(end - p);
        if (len == 1 && p[0] == '*') {
            if (*end != '\0') goto fail; /* '*' only at the end */
            rt.wildcard = true;
            break;
        }
        seg *sg = &rt.segs[rt.nsegs];
        if (len >= 2 && p[0] == '{' && p[len - 1] == '}') {
            if (!name_ok(p + 1, len - 2)) goto fail;
            sg->param = true;
            sg->text = th_strndup(p + 1, len - 2);
            sg->len = len - 2;
        } else {
            if (memchr(p, '{', len) != NULL || memchr(p, '}', len) != NULL || memchr(p, '*', len) != NULL)
                goto fail;
            sg->text = th_strndup(p, len);
            sg->len = len;
            rt.literals++;
        }
        if (sg->text == NULL) goto fail;
        rt.nsegs++;
        if (*end == '\0') break;
        p = end + 1;
    }
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        route *nr = realloc(r->routes, cap * sizeof *nr);
        if (nr == NULL) goto fail;
        r->routes = nr;
        r->cap = cap;
    }
    r->routes[r->n++] = rt;
    return 0;
fail:
    route_free(&rt);
    return -1;
}

/* Matches path against rt; fills caps (param values point into path). */
static bool path_match(const route *rt, const char *path, capture *caps, size_t *ncaps)
{
    *ncaps = 0;
    if (path[0] != '/') return false;
    const char *p = path + 1;
    if (rt->nsegs == 0) {
        /* the pattern "/" followed by a star */
        caps[(*ncaps)++] = (capture){"*", p, strlen(p)};
        return rt->wildcard;
    }
    for (size_t i = 0; i < rt->nsegs; i++) {
        const seg *sg = &rt->segs[i];
        const char *end = p;
        while (*end && *end != '/')
            end++;
        size_t len = (size_t)(end - p);
        if (sg->param) {
            if (len == 0 || *ncaps >= MAX_CAPS - 1) return false;
            caps[(*ncaps)++] = (capture){sg->text, p, len};
        } else if (len != sg->len || memcmp(p, sg->text, len) != 0) {
            return false;
        }
        if (i + 1 < rt->nsegs) {
            if (*end != '/') return false;
            p = end + 1;
            continue;
        }
        if (*end == '\0') {
            if (rt->wildcard) caps[(*ncaps)++] = (capture){"*", end, 0};
            return true;
        }
        if (!rt->wildcard) return false;
        caps[(*ncaps)++] = (capture){"*", end + 1, strlen(end + 1)};
        return true;
    }
    return false;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes a path segment into out (NUL-terminated). Keeps the raw text when an escape is bad or
 * decodes to NUL. */
static void decode(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    bool ok = true;
    for (size_t i = 0; i < n && o + 1 < outlen; i++) {
        if (s[i] == '%') {
            int hi = i + 2 < n ? hexval(s[i + 1]) : -1;
            int lo = i + 2 < n ? hexval(s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                ok = false;
                break;
            }
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    if (!ok) {
        o = n < outlen - 1 ? n : outlen - 1;
        memcpy(out, s, o);
    }
    out[o] = '\0';
}

static bool method_match(const char *rm, const char *m)
{
    return strcmp(rm, "*") == 0 || strcmp(rm, m) == 0;
}

static void allow_add(char *allow, size_t cap, const char *m)
{
    size_t ml = strlen(m), al = strlen(allow);
    /* already listed? */
    const char *p = allow;
    while ((p = strstr(p, m)) != NULL) {
        bool start = p == allow || p[-1] == ' ';
        bool end = p[ml] == '\0' || p[ml] == ',';
        if (start && end) return;
        p += ml;
    }
    if (al + ml + 3 >= cap) return;
    if (al > 0) {
        memcpy(allow + al, ", ", 2);
        al += 2;
    }
    memcpy(allow + al, m, ml + 1);
}

void th_router_dispatch(th_router *r, th_http_req *req)
{
    const char *path = th_http_path(req);
    const char *method = th_http_method(req);
    bool is_head = strcmp(method, "HEAD") == 0;
    const route *best = NULL;
    int best_score = -1;
    capture best_caps[MAX_CAPS];
    size_t best_n = 0;
    bool path_hit = false;
    char allow[256] = "";
    for (size_t i = 0; i < r->n; i++) {
        const route *rt = &r->routes[i];
        capture caps[MAX_CAPS];
        size_t n;
        if (!path_match(rt, path, caps, &n)) continue;
        path_hit = true;
        int score;
        if (method_match(rt->method, method))
            score = 2;
        else if (is_head && strcmp(rt->method, "GET") == 0)
            score = 1; /* HEAD falls back to GET, after an exact HEAD route */
        else {
            allow_add(allow, sizeof allow, rt->method);
            if (strcmp(rt->method, "GET") == 0) allow_add(allow, sizeof allow, "HEAD");
            continue;
        }
        int spec = (int)rt->literals * 4096 + (rt->wildcard ? 0 : 2048) + (int)rt->nsegs * 2 + score;
        if (spec > best_score) {
            best_score = spec;
            best = rt;
            memcpy(best_caps, caps, n * sizeof *caps);
            best_n = n;
        }
    }
    if (best == NULL) {
        if (r->miss != NULL) r->miss(req, path_hit ? 405 : 404, path_hit ? allow : NULL, r->ud);
        return;
    }
    char val[MAX_VALUE];
    for (size_t i = 0; i < best_n; i++) {
        decode(best_caps[i].val, best_caps[i].len, val, sizeof val);
        th_http_set_param(req, best_caps[i].name, val);
    }
    best->h(req, best->ud);
}
