/* reload: live configuration (see reload.h). */
#include "hub/reload.h"

#include <errno.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/clock.h"
#include "core/sdnotify.h"
#include "core/str.h"
#include "hub/hub.h"

#define RELOAD_MAX_FILE (4u * 1024u * 1024u) /* the config parser's own bound */
#define RELOAD_POLL_MS 2000                  /* the stat poll behind the directory watch */

struct th_reload {
    th_hub *hub;
    char *path;              /* the config file, or NULL (embedded default, or YAML given in memory) */
    char *dir, *base;        /* where the watch looks, and the file's own name there */
    char sha256[65];         /* of the bytes of the config in force ("" for the embedded default) */
    char refused_sha256[65]; /* of the last file refused: a watch does not retry the same bytes */
    uint64_t loaded_at_ms;   /* wall clock */
    uint64_t ok, refused, unchanged;
    bool log_level_pinned;
    bool stopped;
    uint64_t debounce_ms;
    uv_signal_t *sig_hup;
    uv_fs_event_t *watch;
    uv_fs_poll_t *poll;
    uv_timer_t *debounce;
    void (*notify)(th_hub *hub, const char *type, json_t *data);
};

static void sha256_hex(const char *data, size_t n, char out[65]);

/* ---- errors ---- */

static void add_err(th_config_errors *errs, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_err(th_config_errors *errs, const char *path, const char *fmt, ...)
{
    if (errs == NULL) return;
    if (errs->n == errs->cap) {
        size_t cap = errs->cap ? errs->cap * 2 : 8;
        th_config_error *it = realloc(errs->items, cap * sizeof *it);
        if (it == NULL) return;
        errs->items = it;
        errs->cap = cap;
    }
    th_config_error *e = &errs->items[errs->n++];
    memset(e, 0, sizeof *e);
    th_strlcpy(e->path, path, sizeof e->path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

/* ---- the diff ---- */

static json_t *cfg_json(const th_config *c)
{
    char *s = th_config_to_json(c);
    if (s == NULL) return NULL;
    json_t *o = json_loads(s, 0, NULL);
    free(s);
    return o;
}

/* Keys applied to a running hub. Every other key needs a restart: a key added later is safe by
 * default until the code that reads it is made to follow a reload. */
static const char *const live_keys[] = {
    "log.level",
    "limits.max_body",
    "limits.max_upload",
    "limits.max_header",
    "limits.max_input_chars",
    "limits.max_connections",
    "limits.header_timeout",
    "limits.idle_timeout",
    "limits.request_timeout",
    "limits.shutdown_grace",
    "auth",
    "tenants",
    "rate_limit.global_rpm",
    "rate_limit.ip_rpm",
    "rate_limit.concurrency",
    "rate_limit.on_backend_error",
    "providers",
    "router",
    "voices",
    "registry.token_env",
    "reload.watch",
    "reload.debounce",
    NULL,
};

static bool is_live(const char *path)
{
    for (size_t i = 0; live_keys[i]; i++)
        if (strcmp(live_keys[i], path) == 0) return true;
    return false;
}

static void walk(const char *path, json_t *a, json_t *b, th_config_errors *errs, size_t *n)
{
    if (is_live(path)) return;
    if (json_is_object(a) && json_is_object(b)) { /* down to the key that changed */
        const char *k;
        json_t *v;
        char sub[256];
        json_object_foreach(a, k, v)
        {
            snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", k);
            walk(sub, v, json_object_get(b, k), errs, n);
        }
        json_object_foreach(b, k, v)
        {
            if (json_object_get(a, k)) continue;
            snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", k);
            walk(sub, NULL, v, errs, n);
        }
        return;
    }
    if (a != NULL && b != NULL && json_equal(a, b)) return;
    add_err(errs, path,
            "cannot change while ttshub runs: restart it to apply this (the config in force stays)");
    (*n)++;
}

static int prov_index(const th_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_providers; i++)
        if (strcmp(c->providers[i].name, name) == 0) return (int)i;
    return -1;
}

static bool str_same(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* pa, pb: the providers' JSON sections (URLs there lose their credentials, so those are compared raw) */
static bool same_prov(json_t *pa, const th_provider_conf *a, json_t *pb, const th_provider_conf *b)
{
    return pa != NULL && pb != NULL && json_equal(pa, pb) && str_same(a->base_url, b->base_url) &&
           str_same(a->api_key_env, b->api_key_env) && str_same(a->type, b->type);
}

static json_t *prov_json(json_t *cj, size_t i)
{
    return json_array_get(json_object_get(cj, "providers"), i);
}

bool th_reload_provider_same(const th_config *a, size_t ia, const th_config *b, size_t ib)
{
    if (ia >= a->n_providers || ib >= b->n_providers) return false;
    json_t *ja = cfg_json(a), *jb = cfg_json(b);
    bool same = same_prov(prov_json(ja, ia), &a->providers[ia], prov_json(jb, ib), &b->providers[ib]);
    json_decref(ja);
    json_decref(jb);
    return same;
}

void th_reload_provider_tag(const th_config *cfg, const th_provider_conf *pc, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", pc->name);
    size_t i = (size_t)(pc - cfg->providers);
    if (i >= cfg->n_providers) return;
    json_t *cj = cfg_json(cfg);
    json_t *pj = json_deep_copy(prov_json(cj, i));
    json_decref(cj);
    if (pj == NULL) return;
    static const char *const hub_side[] = {"weight", "priority", "concurrency", "queue", "timeout"};
    for (size_t k = 0; k < sizeof hub_side / sizeof hub_side[0]; k++)
        json_object_del(pj, hub_side[k]);
    json_object_set_new(pj, "base_url", json_string(pc->base_url ? pc->base_url : "")); /* raw */
    char *text = json_dumps(pj, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(pj);
    if (text == NULL) return;
    char sha[65];
    sha256_hex(text, strlen(text), sha);
    free(text);
    snprintf(out, outlen, "%s#%.12s", pc->name, sha);
}

static size_t check_restart(const th_config *old, json_t *oj, const th_config *neu, json_t *nj,
                            th_config_errors *errs)
{
    size_t n = 0;
    if (oj == NULL || nj == NULL) {
        add_err(errs, "", "out of memory");
        return 1;
    }
    walk("", oj, nj, errs, &n);
    if (!str_same(old->redis.url, neu->redis.url) &&
        json_equal(json_object_get(oj, "redis"), json_object_get(nj, "redis"))) {
        add_err(errs, "redis.url",
                "cannot change while ttshub runs: restart it to apply this (the config in force stays)");
        n++;
    }
    /* libespeak-ng keeps one state per process: the embedded engine stays as it started */
    for (size_t i = 0; i < old->n_providers; i++) {
        const th_provider_conf *pc = &old->providers[i];
        if (strcmp(pc->type, "espeak") != 0) continue;
        int k = prov_index(neu, pc->name);
        char path[64];
        if (k < 0) {
            add_err(errs, "providers",
                    "the embedded espeak provider '%s' cannot be removed while ttshub runs "
                    "(libespeak-ng has one state per process): restart it to apply this",
                    pc->name);
            n++;
        } else if (!same_prov(prov_json(oj, i), pc, prov_json(nj, (size_t)k), &neu->providers[k])) {
            snprintf(path, sizeof path, "providers[%d]", k);
            add_err(errs, path,
                    "the embedded espeak provider '%s' cannot change while ttshub runs "
                    "(libespeak-ng has one state per process): restart it to apply this",
                    pc->name);
            n++;
        }
    }
    for (size_t i = 0; i < neu->n_providers; i++) {
        const th_provider_conf *pc = &neu->providers[i];
        if (strcmp(pc->type, "espeak") != 0 || prov_index(old, pc->name) >= 0) continue;
        char path[64];
        snprintf(path, sizeof path, "providers[%zu]", i);
        add_err(errs, path,
                "an embedded espeak provider cannot be added while ttshub runs "
                "(libespeak-ng has one state per process): restart it to apply this");
        n++;
    }
    return n;
}

size_t th_reload_check_restart(const th_config *old, const th_config *neu, th_config_errors *errs)
{
    json_t *oj = cfg_json(old), *nj = cfg_json(neu);
    size_t n = check_restart(old, oj, neu, nj, errs);
    json_decref(oj);
    json_decref(nj);
    return n;
}

static json_t *changes(void)
{
    return json_pack("{s:[],s:[],s:[]}", "added", "changed", "removed");
}

static void note(json_t *ch, const char *what, const char *name)
{
    json_array_append_new(json_object_get(ch, what), json_string(name));
}

static bool key_same(const th_key_conf *a, const th_key_conf *b)
{
    return str_same(a->sha256, b->sha256) && str_same(a->tenant, b->tenant) && str_same(a->role, b->role) &&
           a->rpm == b->rpm;
}

static const th_key_conf *find_key(const th_config *c, const char *id)
{
    for (size_t i = 0; i < c->auth.n_keys; i++)
        if (strcmp(c->auth.keys[i].id, id) == 0) return &c->auth.keys[i];
    return NULL;
}

static json_t *diff(const th_config *old, json_t *oj, const th_config *neu, json_t *nj)
{
    json_t *prov = changes(), *ten = changes(), *keys = changes();
    for (size_t i = 0; i < neu->n_providers; i++) {
        int k = prov_index(old, neu->providers[i].name);
        if (k < 0)
            note(prov, "added", neu->providers[i].name);
        else if (!same_prov(prov_json(oj, (size_t)k), &old->providers[k], prov_json(nj, i),
                            &neu->providers[i]))
            note(prov, "changed", neu->providers[i].name);
    }
    for (size_t i = 0; i < old->n_providers; i++)
        if (prov_index(neu, old->providers[i].name) < 0) note(prov, "removed", old->providers[i].name);
    json_t *ot = json_object_get(oj, "tenants"), *nt = json_object_get(nj, "tenants");
    const char *name;
    json_t *v;
    json_object_foreach(nt, name, v)
    {
        json_t *was = json_object_get(ot, name);
        if (was == NULL)
            note(ten, "added", name);
        else if (!json_equal(was, v))
            note(ten, "changed", name);
    }
    json_object_foreach(ot, name, v)
    {
        if (json_object_get(nt, name) == NULL) note(ten, "removed", name);
    }
    for (size_t i = 0; i < neu->auth.n_keys; i++) {
        const th_key_conf *was = find_key(old, neu->auth.keys[i].id);
        if (was == NULL)
            note(keys, "added", neu->auth.keys[i].id);
        else if (!key_same(was, &neu->auth.keys[i]))
            note(keys, "changed", neu->auth.keys[i].id);
    }
    for (size_t i = 0; i < old->auth.n_keys; i++)
        if (find_key(neu, old->auth.keys[i].id) == NULL) note(keys, "removed", old->auth.keys[i].id);
    json_t * or = json_object_get(json_object_get(oj, "router"), "routes");
    json_t *nr = json_object_get(json_object_get(nj, "router"), "routes");
    json_t *routes =
        json_pack("{s:b,s:I}", "changed", !json_equal(or, nr) && (json_array_size(or) || json_array_size(nr)),
                  "count", (json_int_t)neu->router.n_routes);
    return json_pack("{s:o,s:o,s:o,s:o}", "providers", prov, "tenants", ten, "keys", keys, "routes", routes);
}

json_t *th_reload_diff(const th_config *old, const th_config *neu)
{
    json_t *oj = cfg_json(old), *nj = cfg_json(neu);
    json_t *d = oj && nj ? diff(old, oj, neu, nj) : NULL;
    json_decref(oj);
    json_decref(nj);
    return d;
}

/* ---- reading the file ---- */

static int read_file(const char *path, char **out, size_t *len, th_config_errors *errs)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        add_err(errs, "", "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = malloc(RELOAD_MAX_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        add_err(errs, "", "out of memory");
        return -1;
    }
    size_t n = fread(buf, 1, RELOAD_MAX_FILE + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > RELOAD_MAX_FILE) {
        free(buf);
        add_err(errs, "", bad ? "cannot read %s" : "%s is larger than 4 MiB", path);
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

static void sha256_hex(const char *data, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int mdlen = 0;
    if (EVP_Digest(n ? data : "", n, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        out[0] = 0;
        return;
    }
    th_hex(md, 32, out);
    out[64] = 0;
}

/* ---- the swap ---- */

static void start_watch(th_reload *r);
static void stop_watch(th_reload *r);

static json_t *version_json(const th_reload *r, const th_hub *hub)
{
    char ts[40] = "";
    if (r->loaded_at_ms) th_rfc3339(r->loaded_at_ms, ts, sizeof ts);
    return json_pack("{s:s,s:s,s:I,s:s,s:{s:I,s:I,s:I}}", "sha256", r->sha256, "loaded_at", ts, "generation",
                     (json_int_t)hub->cfg_generation, "source", r->path ? r->path : "embedded default",
                     "reloads", "ok", (json_int_t)r->ok, "refused", (json_int_t)r->refused, "unchanged",
                     (json_int_t)r->unchanged);
}

static json_t *answer(th_reload *r, json_t *changed, bool swapped)
{
    json_t *v = version_json(r, r->hub);
    json_t *o = json_pack("{s:o,s:O,s:b,s:o}", "version", v, "loaded_at", json_object_get(v, "loaded_at"),
                          "reloaded", swapped, "changed", changed ? changed : json_object());
    return o;
}

static void count(th_reload *r, const char *result)
{
    if (r->hub->metrics)
        th_metrics_add(r->hub->metrics, TH_M_CONFIG_RELOADS, (const char *[]){result, NULL}, 1);
}

static th_reload_rc refuse(th_reload *r, const char *sha)
{
    r->refused++;
    if (sha) th_strlcpy(r->refused_sha256, sha, sizeof r->refused_sha256);
    count(r, "refused");
    return TH_RELOAD_REFUSED;
}

/* A reload under way: the new config and what is built from it before the swap. */
typedef struct swap {
    th_hub *hub;
    th_reload *r;
    char sha[65];
    uint64_t t0;
    th_config *neu;
    json_t *oj, *nj, *changed;
    th_auth *auth;
    th_route_prov **provs;
    th_provider **plist;
    size_t np, made;
} swap;

/* The file, read and parsed into s->neu. false when the reload ends here, with *rc. */
static bool read_new(swap *s, th_reload_trigger why, th_config_errors *errs, json_t **summary,
                     th_reload_rc *rc)
{
    th_reload *r = s->r;
    if (r == NULL || r->path == NULL) {
        add_err(errs, "",
                "ttshub runs without a config file (the embedded default): there is nothing to reload");
        *rc = r ? refuse(r, NULL) : TH_RELOAD_REFUSED;
        return false;
    }
    if (s->hub->stopping) {
        add_err(errs, "", "ttshub is shutting down");
        *rc = refuse(r, NULL);
        return false;
    }
    char *buf = NULL;
    size_t n = 0;
    if (read_file(r->path, &buf, &n, errs) != 0) {
        *rc = refuse(r, NULL);
        return false;
    }
    sha256_hex(buf, n, s->sha);
    if (strcmp(s->sha, r->sha256) == 0) {
        free(buf);
        r->unchanged++;
        count(r, "unchanged");
        if (summary) *summary = answer(r, NULL, false);
        *rc = TH_RELOAD_UNCHANGED;
        return false;
    }
    if (why == TH_RELOAD_FILE && strcmp(s->sha, r->refused_sha256) == 0) {
        free(buf); /* the same bytes were refused already: their errors are in the log */
        *rc = TH_RELOAD_REFUSED;
        return false;
    }
    s->t0 = th_mono_us();
    s->neu = th_config_parse_file(buf, n, r->path, errs);
    free(buf);
    if (s->neu == NULL) {
        *rc = refuse(r, s->sha);
        return false;
    }
    return true;
}

/* The providers of the new config: an unchanged one keeps its state; a new or changed one starts fresh.
 * 0, or -1 (s->made of them are held). */
static int build_providers(swap *s, th_config_errors *errs)
{
    th_hub *hub = s->hub;
    char err[256] = "";
    for (size_t i = 0; i < s->np; i++) {
        const th_provider_conf *pc = &s->neu->providers[i];
        int k = prov_index(hub->cfg, pc->name);
        th_route_prov *keep = NULL;
        if (k >= 0 &&
            same_prov(prov_json(s->oj, (size_t)k), &hub->cfg->providers[k], prov_json(s->nj, i), pc))
            for (size_t j = 0; j < hub->route.n && keep == NULL; j++)
                if (strcmp(hub->route.provs[j]->p->conf->name, pc->name) == 0) keep = hub->route.provs[j];
        if (keep) {
            s->provs[i] = th_route_prov_ref(keep);
        } else {
            th_provider *p = th_hub_provider_new(hub, pc, err, sizeof err);
            if (p == NULL) {
                char path[64];
                snprintf(path, sizeof path, "providers[%zu]", i);
                add_err(errs, path, "%s", err);
                return -1;
            }
            s->provs[i] = th_route_prov_new(&hub->route, p, s->neu);
            if (s->provs[i] == NULL) {
                p->ops->destroy(p);
                add_err(errs, "", "out of memory");
                return -1;
            }
        }
        s->made = i + 1;
        s->plist[i] = s->provs[i]->p;
    }
    return 0;
}

/* Everything the new config needs, built beside the running one. 0, or -1 with errs. */
static int build_new(swap *s, th_config_errors *errs)
{
    th_hub *hub = s->hub;
    s->oj = cfg_json(hub->cfg);
    s->nj = cfg_json(s->neu);
    if (check_restart(hub->cfg, s->oj, s->neu, s->nj, errs) > 0) return -1;
    char err[256] = "";
    s->auth = th_auth_new(s->neu, err, sizeof err);
    if (s->auth == NULL) {
        add_err(errs, "auth", "%s", err);
        return -1;
    }
    s->np = s->neu->n_providers;
    s->provs = calloc(s->np ? s->np : 1, sizeof *s->provs);
    s->plist = calloc(s->np ? s->np : 1, sizeof *s->plist);
    s->changed = diff(hub->cfg, s->oj, s->neu, s->nj);
    if (s->provs == NULL || s->plist == NULL || s->changed == NULL) {
        add_err(errs, "", "out of memory");
        return -1;
    }
    return build_providers(s, errs);
}

/* The swap: nothing here can fail. */
static void swap_in(swap *s)
{
    th_hub *hub = s->hub;
    th_reload *r = s->r;
    th_config *neu = s->neu;
    th_route_stop_probes(&hub->route);
    th_route_replace(&hub->route, s->provs, s->np, neu);
    free(hub->providers);
    hub->providers = s->plist;
    hub->n_providers = s->np;
    th_auth_free(hub->auth);
    hub->auth = s->auth;
    if (hub->limiter) th_limiter_set_config(hub->limiter, neu);
    if (hub->quota) th_quota_set_config(hub->quota, neu);
    th_http_limits lim;
    th_hub_http_limits(neu, &lim);
    if (hub->http) th_http_server_set_limits(hub->http, &lim);
    if (hub->metrics_http) th_http_server_set_limits(hub->metrics_http, &lim);
    if (!r->log_level_pinned) th_log_set_level(hub->log, neu->log.level);
    th_config *old = hub->cfg;
    hub->cfg = neu;
    th_config_unref(old);
    hub->cfg_generation++;
    th_route_start_probes(&hub->route);
    th_strlcpy(r->sha256, s->sha, sizeof r->sha256);
    r->refused_sha256[0] = 0;
    r->loaded_at_ms = th_wall_ms();
    r->ok++;
    count(r, "ok");
    if (hub->metrics)
        th_metrics_set(hub->metrics, TH_M_CONFIG_LOADED, NULL, (double)r->loaded_at_ms / 1000.0);
    if (r->debounce_ms != neu->reload.debounce_ms || (r->watch != NULL) != neu->reload.watch) {
        stop_watch(r);
        r->debounce_ms = neu->reload.debounce_ms;
        if (neu->reload.watch) start_watch(r);
    }
}

/* After the swap: the log line, the live feed's event and the answer. */
static void announce(swap *s, th_reload_trigger why, json_t **summary)
{
    th_reload *r = s->r;
    json_decref(s->oj);
    json_decref(s->nj);
    char *summary_text = json_dumps(s->changed, JSON_COMPACT);
    static const char *const whys[] = {"signal", "file change", "admin api"};
    TH_LOG(s->hub->log, TH_LOG_INFO, "config reloaded (%s): %s, version %.12s, %.1f ms; %s", whys[why],
           r->path, r->sha256, (double)(th_mono_us() - s->t0) / 1000.0, summary_text ? summary_text : "");
    free(summary_text);
    json_t *ans = answer(r, s->changed, true);
    if (r->notify && ans) r->notify(s->hub, "config_reloaded", json_deep_copy(ans));
    if (summary)
        *summary = ans;
    else
        json_decref(ans);
}

/* A refused reload: what was built is dropped, the config in force stays. */
static th_reload_rc drop(swap *s)
{
    for (size_t i = 0; s->provs && i < s->made; i++)
        th_route_prov_unref(s->provs[i]); /* kept ones lose the extra reference; new ones are destroyed */
    free(s->provs);
    free(s->plist);
    th_auth_free(s->auth);
    json_decref(s->changed);
    json_decref(s->oj);
    json_decref(s->nj);
    th_config_unref(s->neu);
    return refuse(s->r, s->sha);
}

th_reload_rc th_reload_run(th_hub *hub, th_reload_trigger why, th_config_errors *errs, json_t **summary)
{
    swap s = {.hub = hub, .r = hub->reload};
    th_reload_rc rc;
    if (summary) *summary = NULL;
    if (!read_new(&s, why, errs, summary, &rc)) return rc;
    if (build_new(&s, errs) != 0) return drop(&s);
    swap_in(&s);
    announce(&s, why, summary);
    return TH_RELOAD_SWAPPED;
}

/* ---- triggers ---- */

static void log_refused(th_reload *r, const char *why, const th_config_errors *errs)
{
    TH_LOG(r->hub->log, TH_LOG_ERROR, "config reload (%s) refused: %zu error(s); the config in force stays",
           why, errs->n);
    for (size_t i = 0; i < errs->n; i++) {
        const th_config_error *e = &errs->items[i];
        if (e->line > 0)
            TH_LOG(r->hub->log, TH_LOG_ERROR, "%s:%d: %s%s%s", r->path ? r->path : "config", e->line, e->path,
                   e->path[0] ? ": " : "", e->message);
        else
            TH_LOG(r->hub->log, TH_LOG_ERROR, "%s: %s%s%s", r->path ? r->path : "config", e->path,
                   e->path[0] ? ": " : "", e->message);
    }
}

static void on_hup(uv_signal_t *h, int signum)
{
    th_reload *r = h->data;
    th_hub *hub = r->hub;
    (void)signum;
    if (hub->stopping) {
        TH_LOG(hub->log, TH_LOG_INFO, "SIGHUP while draining: ignored");
        return;
    }
    if (hub->ext && hub->ext->reload) {
        hub->ext->reload(hub, hub->ext->ud); /* `ttshub worker`: its own settings */
        return;
    }
    char mono[64];
    snprintf(mono, sizeof mono, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)th_mono_us());
    th_sd_notify(mono);
    th_config_errors errs = {0};
    th_reload_rc rc = th_reload_run(hub, TH_RELOAD_SIGNAL, &errs, NULL);
    if (rc == TH_RELOAD_REFUSED) log_refused(r, "SIGHUP", &errs);
    if (rc == TH_RELOAD_UNCHANGED) TH_LOG(hub->log, TH_LOG_INFO, "SIGHUP: %s is unchanged", r->path);
    th_config_errors_free(&errs);
    th_sd_notify("READY=1");
}

static void on_debounced(uv_timer_t *t)
{
    th_reload *r = t->data;
    if (r->stopped) return;
    th_config_errors errs = {0};
    th_reload_rc rc = th_reload_run(r->hub, TH_RELOAD_FILE, &errs, NULL);
    if (rc == TH_RELOAD_REFUSED && errs.n > 0) log_refused(r, "file change", &errs);
    th_config_errors_free(&errs);
}

static void poke(th_reload *r)
{
    if (r->stopped || r->debounce == NULL) return;
    uv_timer_start(r->debounce, on_debounced, r->debounce_ms, 0); /* each change pushes it back */
}

static void on_dir_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    th_reload *r = h->data;
    (void)events;
    if (status < 0) return;
    /* the file itself, or Kubernetes' ..data / ..YYYY_MM_DD... entries of a ConfigMap swap */
    if (filename == NULL || strcmp(filename, r->base) == 0 || strncmp(filename, "..", 2) == 0) poke(r);
}

static void on_poll(uv_fs_poll_t *h, int status, const uv_stat_t *prev, const uv_stat_t *curr)
{
    (void)status;
    (void)prev;
    (void)curr;
    poke(h->data);
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

static void close_handle(void *h)
{
    if (h && !uv_is_closing(h)) uv_close(h, free_handle);
}

static void start_watch(th_reload *r)
{
    if (r->path == NULL || r->watch != NULL || r->stopped) return;
    th_hub *hub = r->hub;
    r->watch = malloc(sizeof *r->watch);
    if (r->watch && uv_fs_event_init(hub->loop, r->watch) == 0) {
        r->watch->data = r;
        int rc = uv_fs_event_start(r->watch, on_dir_event, r->dir, 0);
        if (rc != 0)
            TH_LOG(hub->log, TH_LOG_WARN, "config watch: cannot watch %s (%s); polling every %d ms", r->dir,
                   uv_strerror(rc), RELOAD_POLL_MS);
    } else {
        free(r->watch);
        r->watch = NULL;
    }
    r->poll = malloc(sizeof *r->poll);
    if (r->poll && uv_fs_poll_init(hub->loop, r->poll) == 0) {
        r->poll->data = r;
        uv_fs_poll_start(r->poll, on_poll, r->path, RELOAD_POLL_MS);
    } else {
        free(r->poll);
        r->poll = NULL;
    }
}

static void stop_watch(th_reload *r)
{
    close_handle(r->watch);
    r->watch = NULL;
    close_handle(r->poll);
    r->poll = NULL;
    if (r->debounce) uv_timer_stop(r->debounce);
}

int th_reload_start(th_hub *hub, const char *path, bool log_level_pinned,
                    void (*notify)(th_hub *hub, const char *type, json_t *data))
{
    th_reload *r = calloc(1, sizeof *r);
    if (r == NULL) return -1;
    r->hub = hub;
    r->notify = notify;
    r->log_level_pinned = log_level_pinned;
    r->debounce_ms = hub->cfg->reload.debounce_ms;
    r->loaded_at_ms = th_wall_ms();
    hub->reload = r;
    if (path && *path) {
        r->path = th_strndup(path, strlen(path));
        char *d = th_strndup(path, strlen(path)), *b = th_strndup(path, strlen(path));
        if (r->path == NULL || d == NULL || b == NULL) {
            free(d);
            free(b);
            return -1;
        }
        r->dir = th_strndup(dirname(d), strlen(dirname(d)));
        r->base = th_strndup(basename(b), strlen(basename(b)));
        free(d);
        free(b);
        if (r->dir == NULL || r->base == NULL) return -1;
        char *buf = NULL;
        size_t n = 0;
        th_config_errors errs = {0};
        if (read_file(path, &buf, &n, &errs) == 0) sha256_hex(buf, n, r->sha256);
        free(buf);
        th_config_errors_free(&errs);
    } else {
        sha256_hex("", 0, r->sha256);
    }
    if (hub->metrics)
        th_metrics_set(hub->metrics, TH_M_CONFIG_LOADED, NULL, (double)r->loaded_at_ms / 1000.0);
    r->sig_hup = malloc(sizeof *r->sig_hup);
    if (r->sig_hup == NULL || uv_signal_init(hub->loop, r->sig_hup) != 0) {
        free(r->sig_hup);
        r->sig_hup = NULL;
        return -1;
    }
    r->sig_hup->data = r;
    uv_signal_start(r->sig_hup, on_hup, SIGHUP);
    r->debounce = malloc(sizeof *r->debounce);
    if (r->debounce == NULL || uv_timer_init(hub->loop, r->debounce) != 0) {
        free(r->debounce);
        r->debounce = NULL;
        return -1;
    }
    r->debounce->data = r;
    if (hub->cfg->reload.watch) start_watch(r);
    return 0;
}

void th_reload_stop(th_hub *hub)
{
    th_reload *r = hub->reload;
    if (r == NULL || r->stopped) return;
    stop_watch(r);
    r->stopped = true;
    close_handle(r->debounce);
    r->debounce = NULL;
}

void th_reload_free(th_hub *hub)
{
    th_reload *r = hub->reload;
    if (r == NULL) return;
    th_reload_stop(hub);
    close_handle(r->sig_hup);
    r->sig_hup = NULL;
    free(r->path);
    free(r->dir);
    free(r->base);
    free(r);
    hub->reload = NULL;
}

json_t *th_reload_version(const th_hub *hub)
{
    if (hub->reload == NULL) return json_object();
    return version_json(hub->reload, hub);
}

uint64_t th_reload_loaded_at(const th_hub *hub)
{
    return hub->reload ? hub->reload->loaded_at_ms : 0;
}
