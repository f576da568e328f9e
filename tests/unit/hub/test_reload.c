/* Unit tests of the pure part of src/hub/reload.c: which key changes need a restart (by name), the
 * embedded espeak engine's rule, provider sameness and the summary of a reload. */
#include "th_test.h"

#include "hub/reload.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static th_config *P(const char *yaml)
{
    th_config_errors errs = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &errs);
    for (size_t i = 0; c == NULL && i < errs.n; i++)
        fprintf(stderr, "  %s: %s\n", errs.items[i].path, errs.items[i].message);
    th_config_errors_free(&errs);
    return c;
}

static bool has_err(const th_config_errors *e, const char *path, const char *needle)
{
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->items[i].path, path) == 0 && strstr(e->items[i].message, needle) != NULL) return true;
    return false;
}

#define UP(name, url, more) "  - name: " name "\n    type: openai_fm\n    base_url: \"" url "\"\n" more

static const char *base =
    "listen: \"127.0.0.1:8080\"\n"
    "providers:\n" UP("a", "http://127.0.0.1:7001", "") UP("b", "http://127.0.0.1:7002", "");

/* Restart errors of changing base into `changed`. */
static size_t restart_errs(const char *changed, th_config_errors *errs)
{
    th_config *o = P(base), *n = P(changed);
    size_t k = (o && n) ? th_reload_check_restart(o, n, errs) : 999;
    th_config_unref(o);
    th_config_unref(n);
    return k;
}

TH_TEST(reload_same_config_needs_no_restart)
{
    th_config_errors e = {0};
    TH_CHECK_INT((int)restart_errs(base, &e), 0);
    th_config_errors_free(&e);
}

TH_TEST(reload_live_keys_need_no_restart)
{
    char y[4096];
    snprintf(y, sizeof y,
             "%s"
             "log: { level: debug }\n"
             "limits: { max_body: 2MiB, idle_timeout: 5s, shutdown_grace: 1s }\n"
             "auth: { mode: api_key, keys: [ { id: k, sha256: \"%064d\", tenant: t, role: user } ] }\n"
             "tenants: { t: { rpm: 5 } }\n"
             "rate_limit: { global_rpm: 10, ip_rpm: 3 }\n"
             "router: { strategy: priority, routes: [ { match: { voice: \"x*\" }, providers: [b] } ] }\n"
             "voices: { alloy: { language: en, providers: { a: x } } }\n"
             "registry: { token_env: OTHER }\n"
             "reload: { watch: false, debounce: 1s }\n",
             base, 0);
    th_config_errors e = {0};
    TH_CHECK_INT((int)restart_errs(y, &e), 0);
    for (size_t i = 0; i < e.n; i++)
        fprintf(stderr, "  unexpected: %s: %s\n", e.items[i].path, e.items[i].message);
    th_config_errors_free(&e);
}

TH_TEST(reload_restart_only_keys_are_named)
{
    static const struct {
        const char *add, *path;
    } cases[] = {
        {"metrics_listen: \"127.0.0.1:9100\"\n", "metrics_listen"},
        {"data_dir: /tmp/elsewhere\n", "data_dir"},
        {"log: { format: text }\n", "log.format"},
        {"log: { file: /tmp/x.log }\n", "log.file"},
        {"cache: { max_bytes: 1MiB }\n", "cache.max_bytes"},
        {"cache: { backend: redis }\n", "cache.backend"},
        {"rate_limit: { backend: redis }\n", "rate_limit.backend"},
        {"redis: { prefix: \"x:\" }\n", "redis.prefix"},
        {"tracing: { service_name: other }\n", "tracing.service_name"},
        {"registry: { heartbeat_interval: 3s }\n", "registry.heartbeat_interval"},
        {"reload: { reuse_port: true }\n", "reload.reuse_port"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char y[4096];
        snprintf(y, sizeof y, "%s%s", base, cases[i].add);
        th_config_errors e = {0};
        size_t n = restart_errs(y, &e);
        TH_CHECK_INT((int)n, 1);
        TH_CHECK(has_err(&e, cases[i].path, "restart"));
        if (!has_err(&e, cases[i].path, "restart")) fprintf(stderr, "  case %s\n", cases[i].path);
        th_config_errors_free(&e);
    }
    /* the listen address itself */
    char y[4096];
    snprintf(y, sizeof y, "%s", base);
    char *p = strstr(y, "8080");
    TH_REQUIRE(p != NULL);
    memcpy(p, "8081", 4);
    th_config_errors e = {0};
    TH_CHECK_INT((int)restart_errs(y, &e), 1);
    TH_CHECK(has_err(&e, "listen", "restart"));
    th_config_errors_free(&e);
}

TH_TEST(reload_redis_url_compared_raw)
{
    /* the JSON dump hides a URL's password: a change of it still needs a restart */
    th_config *o = P("redis: { url: \"redis://:one@127.0.0.1:6379/0\" }\n");
    th_config *n = P("redis: { url: \"redis://:two@127.0.0.1:6379/0\" }\n");
    TH_REQUIRE(o != NULL && n != NULL);
    th_config_errors e = {0};
    TH_CHECK(th_reload_check_restart(o, n, &e) >= 1);
    TH_CHECK(has_err(&e, "redis.url", "restart"));
    th_config_errors_free(&e);
    th_config_unref(o);
    th_config_unref(n);
}

TH_TEST(reload_espeak_is_fixed_while_running)
{
    const char *es = "providers:\n  - name: local\n    type: espeak\n    voices: { alloy: en-us }\n";
    th_config *o = P(es);
    TH_REQUIRE(o != NULL);
    /* changed */
    th_config *n = P("providers:\n  - name: local\n    type: espeak\n    voices: { alloy: en-us+f3 }\n");
    th_config_errors e = {0};
    TH_CHECK_INT((int)th_reload_check_restart(o, n, &e), 1);
    TH_CHECK(has_err(&e, "providers[0]", "espeak"));
    th_config_errors_free(&e);
    th_config_unref(n);
    /* removed (and an upstream added instead) */
    n = P("providers:\n" UP("a", "http://127.0.0.1:7001", ""));
    e = (th_config_errors){0};
    TH_CHECK_INT((int)th_reload_check_restart(o, n, &e), 1);
    TH_CHECK(has_err(&e, "providers", "removed"));
    th_config_errors_free(&e);
    /* added */
    e = (th_config_errors){0};
    TH_CHECK_INT((int)th_reload_check_restart(n, o, &e), 1);
    TH_CHECK(has_err(&e, "providers[0]", "added"));
    th_config_errors_free(&e);
    th_config_unref(n);
    /* unchanged, with other providers around it changing: fine */
    n = P("providers:\n  - name: local\n    type: espeak\n    voices: { alloy: en-us }\n" UP(
        "a", "http://127.0.0.1:7001", ""));
    e = (th_config_errors){0};
    TH_CHECK_INT((int)th_reload_check_restart(o, n, &e), 0);
    th_config_errors_free(&e);
    th_config_unref(n);
    th_config_unref(o);
}

TH_TEST(reload_provider_sameness)
{
    th_config *o = P(base);
    th_config *n =
        P("providers:\n" UP("b", "http://127.0.0.1:7002", "") UP("a", "http://u:p2@127.0.0.1:7001", ""));
    th_config *w = P("providers:\n" UP("a", "http://127.0.0.1:7001", "    weight: 3\n"));
    TH_REQUIRE(o && n && w);
    TH_CHECK(th_reload_provider_same(o, 1, n, 0));  /* b moved, same settings */
    TH_CHECK(!th_reload_provider_same(o, 0, n, 1)); /* a: credentials in the URL differ */
    TH_CHECK(!th_reload_provider_same(o, 0, w, 0)); /* a: weight */
    TH_CHECK(th_reload_provider_same(o, 0, o, 0));
    TH_CHECK(!th_reload_provider_same(o, 5, o, 0));
    th_config_unref(o);
    th_config_unref(n);
    th_config_unref(w);
}

TH_TEST(reload_provider_cache_tag)
{
    th_config *o = P(base);
    th_config *w = P("providers:\n" UP("a", "http://127.0.0.1:7001", "    weight: 3\n    timeout: 9s\n"));
    th_config *u = P("providers:\n" UP("a", "http://127.0.0.1:7009", ""));
    TH_REQUIRE(o && w && u);
    char t1[96], t2[96], t3[96], t4[96];
    th_reload_provider_tag(o, &o->providers[0], t1, sizeof t1);
    th_reload_provider_tag(w, &w->providers[0], t2, sizeof t2);
    th_reload_provider_tag(u, &u->providers[0], t3, sizeof t3);
    th_reload_provider_tag(o, &o->providers[1], t4, sizeof t4);
    TH_CHECK(strncmp(t1, "a#", 2) == 0 && strlen(t1) == 14);
    TH_CHECK_STR(t1, t2);          /* hub-side keys do not change the audio */
    TH_CHECK(strcmp(t1, t3) != 0); /* another engine does */
    TH_CHECK(strncmp(t4, "b#", 2) == 0);
    th_config_unref(o);
    th_config_unref(w);
    th_config_unref(u);
}

static bool list_is(json_t *d, const char *sect, const char *what, const char *csv)
{
    json_t *a = json_object_get(json_object_get(d, sect), what);
    char buf[256] = "";
    size_t off = 0;
    for (size_t i = 0; i < json_array_size(a); i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                                json_string_value(json_array_get(a, i)));
    if (strcmp(buf, csv) != 0) fprintf(stderr, "  %s.%s: got '%s', want '%s'\n", sect, what, buf, csv);
    return strcmp(buf, csv) == 0;
}

TH_TEST(reload_diff_summary)
{
    char y1[4096], y2[4096];
    snprintf(y1, sizeof y1,
             "auth: { mode: api_key, keys: [ { id: k1, sha256: \"%064d\", tenant: t1, role: user },"
             " { id: k2, sha256: \"%064d\", tenant: t1, role: user } ] }\n"
             "tenants: { t1: { rpm: 5 }, t2: { rpm: 1 } }\n"
             "providers:\n" UP("a", "http://127.0.0.1:7001", "") UP("b", "http://127.0.0.1:7002", "")
                 UP("c", "http://127.0.0.1:7003", ""),
             1, 2);
    snprintf(y2, sizeof y2,
             "auth: { mode: api_key, keys: [ { id: k2, sha256: \"%064d\", tenant: t1, role: admin },"
             " { id: k3, sha256: \"%064d\", tenant: t3, role: user } ] }\n"
             "tenants: { t1: { rpm: 6 }, t3: { rpm: 1 } }\n"
             "router: { routes: [ { match: { voice: \"x*\" }, providers: [a] } ] }\n"
             "providers:\n" UP("a", "http://127.0.0.1:7001", "") UP("b", "http://127.0.0.1:7009", "")
                 UP("d", "http://127.0.0.1:7004", ""),
             2, 3);
    th_config *o = P(y1), *n = P(y2);
    TH_REQUIRE(o && n);
    json_t *d = th_reload_diff(o, n);
    TH_REQUIRE(d != NULL);
    TH_CHECK(list_is(d, "providers", "added", "d"));
    TH_CHECK(list_is(d, "providers", "changed", "b"));
    TH_CHECK(list_is(d, "providers", "removed", "c"));
    TH_CHECK(list_is(d, "tenants", "added", "t3"));
    TH_CHECK(list_is(d, "tenants", "changed", "t1"));
    TH_CHECK(list_is(d, "tenants", "removed", "t2"));
    TH_CHECK(list_is(d, "keys", "added", "k3"));
    TH_CHECK(list_is(d, "keys", "changed", "k2"));
    TH_CHECK(list_is(d, "keys", "removed", "k1"));
    TH_CHECK(json_is_true(json_object_get(json_object_get(d, "routes"), "changed")));
    TH_CHECK_INT((int)json_integer_value(json_object_get(json_object_get(d, "routes"), "count")), 1);
    json_decref(d);
    /* no change at all */
    d = th_reload_diff(o, o);
    TH_REQUIRE(d != NULL);
    TH_CHECK(list_is(d, "providers", "changed", ""));
    TH_CHECK(list_is(d, "keys", "changed", ""));
    TH_CHECK(json_is_false(json_object_get(json_object_get(d, "routes"), "changed")));
    json_decref(d);
    th_config_unref(o);
    th_config_unref(n);
}

TH_TEST_MAIN()
