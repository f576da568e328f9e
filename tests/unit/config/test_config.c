/* Unit tests of src/config/config.c: defaults, the example file, every type's errors with exact paths,
 * cross-field checks, bounds (size, depth, nodes, aliases), the JSON dump and reference counting. */
#include "th_test.h"

#include "config/config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Parses yaml; returns the config (or NULL) and leaves the errors in errs. */
static th_config *P(const char *yaml, th_config_errors *errs)
{
    return th_config_parse(yaml, strlen(yaml), errs);
}

/* The error with this path (and message, when msg != NULL), or NULL. */
static const th_config_error *find_err(const th_config_errors *e, const char *path, const char *msg)
{
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->items[i].path, path) == 0 && (msg == NULL || strcmp(e->items[i].message, msg) == 0))
            return &e->items[i];
    return NULL;
}

static void dump_errs(const th_config_errors *e)
{
    for (size_t i = 0; i < e->n; i++)
        fprintf(stderr, "    %d: %s: %s\n", e->items[i].line, e->items[i].path, e->items[i].message);
}

/* Expects the parse to fail with exactly one error at path with msg (msg NULL: any message). */
#define EXPECT_ONE(yaml, epath, emsg)                                                                        \
    do {                                                                                                     \
        th_config_errors e_ = {0};                                                                           \
        th_config *c_ = P(yaml, &e_);                                                                        \
        TH_CHECK(c_ == NULL);                                                                                \
        TH_CHECK_INT(e_.n, 1);                                                                               \
        TH_CHECK(find_err(&e_, epath, emsg) != NULL);                                                        \
        if (e_.n != 1 || find_err(&e_, epath, emsg) == NULL) dump_errs(&e_);                                 \
        th_config_unref(c_);                                                                                 \
        th_config_errors_free(&e_);                                                                          \
    } while (0)

TH_TEST(test_defaults)
{
    th_config *c = th_config_default();
    TH_REQUIRE(c != NULL);
    TH_CHECK(c->path == NULL);
    TH_CHECK_STR(c->listen, "0.0.0.0:8080");
    TH_CHECK_STR(c->metrics_listen, "");
    TH_CHECK_STR(c->data_dir, "./data");
    TH_CHECK_INT(c->log.level, TH_LOG_INFO);
    TH_CHECK_INT(c->log.format, TH_LOG_JSON);
    TH_CHECK_STR(c->log.file, "");
    TH_CHECK_INT(c->limits.max_body, 1 << 20);
    TH_CHECK_INT(c->limits.max_upload, 20 << 20);
    TH_CHECK_INT(c->limits.max_header, 16 << 10);
    TH_CHECK_INT(c->limits.max_input_chars, 100000);
    TH_CHECK_INT(c->limits.max_connections, 10000);
    TH_CHECK_INT(c->limits.header_timeout_ms, 10000);
    TH_CHECK_INT(c->limits.idle_timeout_ms, 60000);
    TH_CHECK_INT(c->limits.request_timeout_ms, 120000);
    TH_CHECK_INT(c->limits.shutdown_grace_ms, 30000);
    TH_CHECK_STR(c->auth.mode, "none");
    TH_CHECK_INT(c->auth.n_keys, 0);
    TH_CHECK_STR(c->auth.jwt.alg, "HS256");
    TH_CHECK_STR(c->auth.jwt.secret_env, "TTSHUB_JWT_SECRET");
    TH_CHECK_STR(c->auth.jwt.tenant_claim, "tenant");
    TH_CHECK_STR(c->auth.jwt.role_claim, "role");
    TH_CHECK_INT(c->n_tenants, 0);
    TH_CHECK_INT(c->rate_limit.global_rpm, 1000);
    TH_CHECK_INT(c->rate_limit.ip_rpm, 100);
    TH_CHECK_INT(c->rate_limit.concurrency, 50);
    TH_CHECK_STR(c->rate_limit.backend, "local");
    TH_CHECK_STR(c->rate_limit.on_backend_error, "open");
    TH_CHECK_STR(c->redis.url, "redis://127.0.0.1:6379/0");
    TH_CHECK_STR(c->redis.prefix, "ttshub:");
    TH_CHECK_INT(c->redis.timeout_ms, 200);
    TH_CHECK(c->cache.enabled);
    TH_CHECK_STR(c->cache.backend, "memory");
    TH_CHECK_INT(c->cache.max_bytes, 256ull << 20);
    TH_CHECK_INT(c->cache.ttl_ms, 600000);
    TH_CHECK_STR(c->router.strategy, "weighted");
    TH_CHECK_INT(c->router.retries, 1);
    TH_CHECK(c->router.fallback);
    TH_CHECK_INT(c->router.hedge_after_ms, 0);
    TH_CHECK_INT(c->router.breaker.failures, 5);
    TH_CHECK(c->router.breaker.failure_ratio == 0.5);
    TH_CHECK_INT(c->router.breaker.window_ms, 30000);
    TH_CHECK_INT(c->router.breaker.open_for_ms, 30000);
    TH_CHECK_INT(c->router.breaker.half_open_probes, 1);
    TH_CHECK_INT(c->router.health_interval_ms, 10000);
    TH_CHECK_INT(c->router.n_routes, 0);
    TH_CHECK_INT(c->n_voices, 0);
    TH_CHECK_INT(c->registry.heartbeat_interval_ms, 10000);
    TH_CHECK_INT(c->registry.dead_threshold_ms, 30000);
    TH_CHECK_INT(c->registry.remove_after_ms, 600000);
    TH_CHECK_STR(c->registry.token_env, "TTSHUB_CLUSTER_TOKEN");
    TH_CHECK_STR(c->registry.backend, "local");
    TH_CHECK_STR(c->tracing.otlp_endpoint, "");
    TH_CHECK_STR(c->tracing.service_name, "ttshub");
    TH_CHECK(c->tracing.sample_ratio == 1.0);
    TH_CHECK_INT(c->refs, 1);
    /* the embedded espeak provider, with the provider defaults */
    TH_REQUIRE(c->n_providers == 1);
    const th_provider_conf *p = &c->providers[0];
    TH_CHECK_STR(p->name, "local");
    TH_CHECK_STR(p->type, "espeak");
    TH_CHECK_INT(p->weight, 1);
    TH_CHECK_INT(p->priority, 0);
    TH_CHECK_INT(p->concurrency, 4);
    TH_CHECK_INT(p->queue, 64);
    TH_CHECK_INT(p->timeout_ms, 30000);
    TH_CHECK_INT(p->max_input_chars, 0);
    TH_CHECK_INT(p->formats, 0);
    TH_CHECK_INT(p->sample_rate, 0);
    TH_CHECK(th_config_provider(c, "local") == p);
    TH_CHECK(th_config_provider(c, "nope") == NULL);
    th_config_unref(c);
}

TH_TEST(test_empty_file_is_defaults)
{
    th_config_errors e = {0};
    th_config *c = P("# only a comment\n", &e);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(e.n, 0);
    TH_CHECK_INT(c->n_providers, 1);
    TH_CHECK_STR(c->listen, "0.0.0.0:8080");
    th_config_unref(c);
    c = P("", &e);
    TH_CHECK(c != NULL);
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_example_file_loads)
{
    th_config_errors e = {0};
    th_config *c = th_config_load("config/ttshub.example.yaml", &e);
    if (c == NULL) dump_errs(&e);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(e.n, 0);
    TH_CHECK_STR(c->path, "config/ttshub.example.yaml");
    TH_CHECK_INT(c->n_providers, 11);
    TH_CHECK_INT(c->n_tenants, 1);
    const th_tenant_conf *t = th_config_tenant(c, "acme");
    TH_REQUIRE(t != NULL);
    TH_CHECK_INT(t->rpm, 600);
    TH_CHECK_INT(t->chars_per_day, 1000000);
    TH_REQUIRE(t->n_voices == 1);
    TH_CHECK_STR(t->voices[0], "*");
    const th_provider_conf *fm = th_config_provider(c, "fm");
    TH_REQUIRE(fm != NULL);
    TH_CHECK_STR(fm->base_url, "http://127.0.0.1:7000");
    TH_CHECK_INT(fm->formats, (1u << 1) | (1u << 5)); /* TH_FMT_MP3 = 1, TH_FMT_WAV = 5 */
    const th_provider_conf *oa = th_config_provider(c, "openai");
    TH_REQUIRE(oa != NULL);
    TH_CHECK_STR(th_kv_get(oa->opts, oa->n_opts, "model"), "tts-1");
    TH_CHECK_STR(th_kv_get(oa->opts, oa->n_opts, "stream"), "true");
    TH_CHECK_STR(oa->api_key_env, "OPENAI_API_KEY");
    const th_provider_conf *az = th_config_provider(c, "azure");
    TH_REQUIRE(az != NULL);
    TH_CHECK_STR(th_kv_get(az->opts, az->n_opts, "region"), "westeurope");
    TH_CHECK_INT(c->router.n_routes, 1);
    TH_CHECK_STR(c->router.routes[0].tenant, "acme");
    TH_CHECK_STR(c->router.routes[0].voice, "clone-*");
    TH_CHECK_INT(c->router.routes[0].n_providers, 2);
    TH_CHECK_INT(c->n_voices, 1);
    TH_CHECK_STR(c->voices[0].id, "alloy");
    TH_CHECK_STR(th_kv_get(c->voices[0].providers, c->voices[0].n_providers, "local"), "en-us");
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_values_parsed)
{
    const char *y =
        "listen: \"[::]:9000\"\n"
        "metrics_listen: 127.0.0.1:0\n"
        "log: { level: debug, format: text, file: /tmp/x.log }\n"
        "limits: { max_body: 64KiB, header_timeout: 500ms, request_timeout: 5m, shutdown_grace: 1h }\n"
        "cache: { enabled: false, ttl: 1h, max_bytes: 1GiB }\n"
        "router: { hedge_after: 250ms, breaker: { failure_ratio: 0.25 } }\n"
        "tracing: { otlp_endpoint: \"http://collector:4318/v1/traces\", sample_ratio: 0.1 }\n";
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    if (c == NULL) dump_errs(&e);
    TH_REQUIRE(c != NULL);
    TH_CHECK_STR(c->listen, "[::]:9000");
    TH_CHECK_STR(c->metrics_listen, "127.0.0.1:0");
    TH_CHECK_INT(c->log.level, TH_LOG_DEBUG);
    TH_CHECK_INT(c->log.format, TH_LOG_TEXT);
    TH_CHECK_STR(c->log.file, "/tmp/x.log");
    TH_CHECK_INT(c->limits.max_body, 65536);
    TH_CHECK_INT(c->limits.header_timeout_ms, 500);
    TH_CHECK_INT(c->limits.request_timeout_ms, 300000);
    TH_CHECK_INT(c->limits.shutdown_grace_ms, 3600000);
    TH_CHECK(!c->cache.enabled);
    TH_CHECK_INT(c->cache.ttl_ms, 3600000);
    TH_CHECK_INT(c->cache.max_bytes, 1ull << 30);
    TH_CHECK_INT(c->router.hedge_after_ms, 250);
    TH_CHECK(c->router.breaker.failure_ratio == 0.25);
    TH_CHECK(c->tracing.sample_ratio == 0.1);
    /* untouched keys of a section keep their defaults */
    TH_CHECK_INT(c->limits.max_upload, 20 << 20);
    TH_CHECK_INT(c->router.breaker.failures, 5);
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_type_errors_have_exact_paths)
{
    EXPECT_ONE("limits: { max_body: lots }", "limits.max_body", "not a size");
    EXPECT_ONE("limits: { max_body: 2GiB }", "limits.max_body", "must be between 1KiB and 1GiB");
    EXPECT_ONE("limits: { idle_timeout: soon }", "limits.idle_timeout", "not a duration");
    EXPECT_ONE("limits: { idle_timeout: 2d }", "limits.idle_timeout", "must be between 1s and 24h");
    EXPECT_ONE("limits: { max_connections: many }", "limits.max_connections", "must be an integer");
    EXPECT_ONE("limits: { max_connections: 0 }", "limits.max_connections", "must be between 1 and 1000000");
    EXPECT_ONE("tenants: { acme: { rpm: 2000000 } }", "tenants.acme.rpm", "must be between 0 and 1000000");
    EXPECT_ONE("cache: { enabled: maybe }", "cache.enabled", "must be true or false");
    EXPECT_ONE("tracing: { sample_ratio: 1.5 }", "tracing.sample_ratio", "must be between 0 and 1");
    EXPECT_ONE("tracing: { sample_ratio: half }", "tracing.sample_ratio", "must be a number");
    EXPECT_ONE("router: { strategy: fastest }", "router.strategy",
               "must be one of weighted, round_robin, least_load, random, priority");
    EXPECT_ONE("log: { level: loud }", "log.level", "must be one of debug, info, warn, error, off");
    EXPECT_ONE("listen: [a, b]", "listen", "must be a string");
    EXPECT_ONE("listen: \"0.0.0.0\"", "listen", "not a listen address (HOST:PORT)");
    EXPECT_ONE("listen: \"0.0.0.0:65536\"", "listen", "not a listen address (HOST:PORT)");
    EXPECT_ONE("listen: \"[::1:80\"", "listen", "not a listen address (HOST:PORT)");
    EXPECT_ONE("limits: 5", "limits", "must be a mapping");
    EXPECT_ONE("tenants: { acme: { voices: \"*\" } }", "tenants.acme.voices", "must be a list");
    EXPECT_ONE("redis: { url: \"http://x\" }", "redis.url", "not a redis URL (redis://HOST:PORT/DB)");
    EXPECT_ONE("registry: { token_env: \"1BAD-NAME\" }", "registry.token_env",
               "not an environment variable name");
    EXPECT_ONE("auth: { jwt: { secret_env: \"A B\" } }", "auth.jwt.secret_env",
               "not an environment variable name");
    EXPECT_ONE("tracing: { otlp_endpoint: \"localhost:4318\" }", "tracing.otlp_endpoint", "not a URL");
    EXPECT_ONE("data_dir: \"\"", "data_dir", "must not be empty");
}

TH_TEST(test_bad_url_and_kind_keys)
{
    const char *y = "providers:\n"
                    "  - { name: a, type: espeak }\n"
                    "  - { name: b, type: openai, base_url: \"http://ok:1\" }\n"
                    "  - { name: c, type: openai, base_url: \"not a url\" }\n";
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    TH_CHECK(c == NULL);
    TH_CHECK_INT(e.n, 1);
    const th_config_error *er = find_err(&e, "providers[2].base_url", "not a URL");
    TH_CHECK(er != NULL);
    TH_CHECK(er && er->line == 4);
    th_config_errors_free(&e);

    EXPECT_ONE("providers: [ { name: az, type: azure, regoin: westeurope, base_url: \"https://x\" } ]",
               "providers[0].regoin", "unknown key for type azure");
    EXPECT_ONE("providers: [ { name: e, type: espeak, region: westeurope } ]", "providers[0].region",
               "unknown key for type espeak");
    EXPECT_ONE("providers: [ { name: e, type: espeak, base_url: \"http://x\" } ]", "providers[0].base_url",
               "unknown key for type espeak");
    EXPECT_ONE("providers: [ { name: x, type: xtts, base_url: \"http://x\", api: v2 } ]", "providers[0].api",
               "unknown key for type xtts");
    EXPECT_ONE("providers: [ { name: o, type: openai } ]", "providers[0].base_url",
               "required for type openai");
    EXPECT_ONE("providers: [ { name: z, type: azure } ]", "providers[0].region",
               "required for type azure (or base_url)");
    EXPECT_ONE(
        "providers: [ { name: z, type: bogus } ]", "providers[0].type",
        "must be one of espeak, openai_fm, openai, gpt_sovits, xtts, openvoice, cosyvoice, fish, elevenlabs, "
        "azure, nodes");
    EXPECT_ONE("providers: [ { name: z } ]", "providers[0].type", "required");
    EXPECT_ONE("providers: [ { type: espeak } ]", "providers[0].name", "required");
    EXPECT_ONE("providers: [ { name: \"\", type: espeak } ]", "providers[0].name", "must not be empty");
    EXPECT_ONE("providers: [ { name: e, type: espeak, formats: [mp3, ogg] } ]", "providers[0].formats[1]",
               "must be one of mp3, opus, aac, flac, wav, pcm");
    EXPECT_ONE("providers: [ { name: g, type: gpt_sovits, base_url: \"http://x\", streaming_mode: 9 } ]",
               "providers[0].streaming_mode", "must be between 0 and 3");
    EXPECT_ONE("providers: [ { name: x, type: xtts, base_url: \"http://x\", stream: yes } ]",
               "providers[0].stream", "must be true or false");
    EXPECT_ONE("providers: [ { name: a, type: azure, region: \"West Europe\" } ]", "providers[0].region",
               "not an Azure region (like westeurope)");
    EXPECT_ONE("providers: []", "providers", "at least one provider is required");
}

TH_TEST(test_kind_options_and_defaults)
{
    const char *y =
        "providers:\n"
        "  - { name: x, type: xtts, base_url: \"http://x:8020\", stream: true, sample_rate: 24000 }\n"
        "  - { name: g, type: gpt_sovits, base_url: \"http://g\", streaming_mode: 0 }\n"
        "  - { name: n, type: nodes, engine: xtts }\n";
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    if (c == NULL) dump_errs(&e);
    TH_REQUIRE(c != NULL);
    const th_provider_conf *x = th_config_provider(c, "x");
    TH_CHECK_STR(th_kv_get(x->opts, x->n_opts, "stream"), "true");
    TH_CHECK_STR(th_kv_get(x->opts, x->n_opts, "language"), "en"); /* the kind's default */
    TH_CHECK_INT(x->sample_rate, 24000);
    const th_provider_conf *g = th_config_provider(c, "g");
    TH_CHECK_STR(th_kv_get(g->opts, g->n_opts, "streaming_mode"), "0");
    TH_CHECK_STR(th_kv_get(g->opts, g->n_opts, "api"), "v2");
    TH_CHECK_STR(th_kv_get(g->opts, g->n_opts, "media_type"), "wav");
    const th_provider_conf *n = th_config_provider(c, "n");
    TH_CHECK_STR(n->engine, "xtts");
    TH_CHECK_INT(n->n_opts, 2);
    TH_CHECK_STR(th_kv_get(n->opts, n->n_opts, "strategy"), "round_robin"); /* the kind's default */
    TH_CHECK_STR(th_kv_get(n->opts, n->n_opts, "protocol"), "ttshub");      /* the kind's default */
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_unknown_keys_every_level)
{
    const char *y = "lisen: \"0.0.0.0:1\"\n"                                            /* 1 */
                    "limits:\n"                                                         /* 2 */
                    "  max_bodyy: 1MiB\n"                                               /* 3 */
                    "router:\n"                                                         /* 4 */
                    "  breaker: { failures: 3, ratio: 0.1 }\n"                          /* 5 */
                    "  routes:\n"                                                       /* 6 */
                    "    - { match: { tenant: a, colour: red }, providers: [local] }\n" /* 7 */
                    "providers:\n"                                                      /* 8 */
                    "  - name: local\n"                                                 /* 9 */
                    "    type: espeak\n"                                                /* 10 */
                    "    wieght: 2\n";                                                  /* 11 */
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    TH_CHECK(c == NULL);
    TH_CHECK_INT(e.n, 5);
    const th_config_error *x;
    TH_CHECK((x = find_err(&e, "lisen", "unknown key")) && x->line == 1);
    TH_CHECK((x = find_err(&e, "limits.max_bodyy", "unknown key")) && x->line == 3);
    TH_CHECK((x = find_err(&e, "router.breaker.ratio", "unknown key")) && x->line == 5);
    TH_CHECK((x = find_err(&e, "router.routes[0].match.colour", "unknown key")) && x->line == 7);
    TH_CHECK((x = find_err(&e, "providers[0].wieght", "unknown key for type espeak")) && x->line == 11);
    if (e.n != 5) dump_errs(&e);
    th_config_errors_free(&e);
}

TH_TEST(test_many_errors_all_reported)
{
    const char *y = "listen: nope\n"
                    "limits: { max_body: x, max_upload: y }\n"
                    "cache: { backend: disk }\n"
                    "tenants: { acme: { rpm: -1, burst: lots } }\n"
                    "providers:\n"
                    "  - { name: a, type: openai, base_url: \"ftp://x\" }\n"
                    "  - { name: a, type: espeak }\n"
                    "router: { routes: [ { providers: [a, ghost] } ] }\n";
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    TH_CHECK(c == NULL);
    TH_CHECK(find_err(&e, "listen", NULL) != NULL);
    TH_CHECK(find_err(&e, "limits.max_body", "not a size") != NULL);
    TH_CHECK(find_err(&e, "limits.max_upload", "not a size") != NULL);
    TH_CHECK(find_err(&e, "cache.backend", "must be one of memory, redis") != NULL);
    TH_CHECK(find_err(&e, "tenants.acme.rpm", "must be between 0 and 1000000") != NULL);
    TH_CHECK(find_err(&e, "tenants.acme.burst", "must be an integer") != NULL);
    TH_CHECK(find_err(&e, "providers[0].base_url", "not a URL") != NULL);
    TH_CHECK(find_err(&e, "providers[1].name", "duplicate provider name \"a\" (also providers[0])") != NULL);
    TH_CHECK(find_err(&e, "router.routes[0].providers[1]", "unknown provider \"ghost\"") != NULL);
    TH_CHECK_INT(e.n, 9);
    if (e.n != 9) dump_errs(&e);
    th_config_errors_free(&e);
}

TH_TEST(test_duplicate_provider_names)
{
    const char *y = "providers:\n"
                    "  - { name: fm, type: espeak }\n"
                    "  - { name: other, type: espeak }\n"
                    "  - { name: fm, type: espeak }\n";
    th_config_errors e = {0};
    TH_CHECK(P(y, &e) == NULL);
    TH_CHECK_INT(e.n, 1);
    const th_config_error *x =
        find_err(&e, "providers[2].name", "duplicate provider name \"fm\" (also providers[0])");
    TH_CHECK(x && x->line == 4);
    th_config_errors_free(&e);
}

TH_TEST(test_duplicate_yaml_keys)
{
    const char *y = "listen: \"0.0.0.0:1\"\n"
                    "tenants:\n"
                    "  acme: { rpm: 1 }\n"
                    "  acme: { rpm: 2 }\n"
                    "listen: \"0.0.0.0:2\"\n";
    th_config_errors e = {0};
    TH_CHECK(P(y, &e) == NULL);
    TH_CHECK_INT(e.n, 2);
    const th_config_error *x;
    TH_CHECK((x = find_err(&e, "tenants.acme", "duplicate key (first on line 3)")) && x->line == 4);
    TH_CHECK((x = find_err(&e, "listen", "duplicate key (first on line 1)")) && x->line == 5);
    th_config_errors_free(&e);
}

TH_TEST(test_routes_and_voices_name_providers)
{
    EXPECT_ONE("router: { routes: [ { match: { voice: \"x*\" }, providers: [local, missing] } ] }",
               "router.routes[0].providers[1]", "unknown provider \"missing\"");
    EXPECT_ONE("router: { routes: [ { match: { voice: \"x*\" } } ] }", "router.routes[0].providers",
               "required");
    EXPECT_ONE("router: { routes: [ { providers: [] } ] }", "router.routes[0].providers",
               "must not be empty");
    EXPECT_ONE("voices: { alloy: { language: en, providers: { local: en-us, fm: alloy } } }",
               "voices.alloy.providers.fm", "unknown provider");
    /* routes before providers in the file are fine */
    th_config_errors e = {0};
    th_config *c =
        P("router: { routes: [ { providers: [b] } ] }\nproviders: [ { name: b, type: espeak } ]\n", &e);
    TH_CHECK(c != NULL);
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_voice_mapping_values)
{
    const char *y =
        "providers:\n"
        "  - name: sv\n"
        "    type: gpt_sovits\n"
        "    base_url: \"http://127.0.0.1:9880\"\n"
        "    voices:\n"
        "      amy: { ref_audio_path: /r/amy.wav, prompt_text: \"Hi, there\", prompt_lang: en, top_k: 5 }\n"
        "      plain: speaker1\n";
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    if (c == NULL) dump_errs(&e);
    TH_REQUIRE(c != NULL);
    const th_provider_conf *p = th_config_provider(c, "sv");
    TH_REQUIRE(p && p->n_voices == 2);
    TH_CHECK_STR(p->voices[0].key, "amy");
    TH_CHECK(p->voices[0].is_map);
    TH_CHECK_STR(p->voices[0].value, "{\"ref_audio_path\":\"/r/amy.wav\",\"prompt_text\":\"Hi, "
                                     "there\",\"prompt_lang\":\"en\",\"top_k\":5}");
    TH_CHECK(!p->voices[1].is_map);
    TH_CHECK_STR(th_kv_get(p->voices, p->n_voices, "plain"), "speaker1");
    th_config_unref(c);
    th_config_errors_free(&e);

    EXPECT_ONE("providers: [ { name: e, type: espeak, voices: { a: { x: 1 } } } ]", "providers[0].voices.a",
               "must be a string (a mapping is only for gpt_sovits, cosyvoice and nodes)");
    EXPECT_ONE("providers: [ { name: g, type: gpt_sovits, base_url: \"http://g\", voices: { a: { "
               "prompt_text: x } } } ]",
               "providers[0].voices.a.ref_audio_path", "required");
    EXPECT_ONE("providers: [ { name: e, type: espeak, voices: { a: [x] } } ]", "providers[0].voices.a",
               "must be a string");
    EXPECT_ONE("providers: [ { name: e, type: espeak, voices: { a: \"\" } } ]", "providers[0].voices.a",
               "must not be empty");
}

TH_TEST(test_auth_checks)
{
    const char *hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    char y[1024];
    EXPECT_ONE("auth: { mode: api_key }", "auth.keys", "required when auth.mode is api_key");
    EXPECT_ONE("auth: { mode: any }", "auth.mode", "any needs auth.keys or auth.jwt");
    EXPECT_ONE("auth: { mode: jwt, jwt: { alg: RS256 } }", "auth.jwt.public_key_file",
               "required for alg RS256");
    EXPECT_ONE("auth: { mode: jwt, jwt: { secret_env: \"\" } }", "auth.jwt.secret_env",
               "required for alg HS256");
    EXPECT_ONE("auth: { keys: [ { id: k1, sha256: \"abc\" } ] }", "auth.keys[0].sha256",
               "must be 64 hex characters (the sha256 of the key)");
    snprintf(y, sizeof y, "auth: { keys: [ { id: k1, sha256: \"%s\", role: root } ] }", hex);
    EXPECT_ONE(y, "auth.keys[0].role", "must be one of user, admin");
    snprintf(y, sizeof y, "auth: { keys: [ { id: k1, sha256: \"%s\" }, { id: k1, sha256: \"%s\" } ] }", hex,
             hex);
    EXPECT_ONE(y, "auth.keys[1].id", "duplicate key id \"k1\"");
    /* with tenants declared, a key's tenant must be one of them; with none, any name is fine */
    snprintf(y, sizeof y,
             "tenants: { acme: {} }\nauth: { keys: [ { id: k1, sha256: \"%s\", tenant: other } ] }", hex);
    EXPECT_ONE(y, "auth.keys[0].tenant", "unknown tenant \"other\"");
    snprintf(y, sizeof y,
             "auth: { mode: api_key, keys: [ { id: k1, sha256: \"%.32s%.32s\", tenant: other } ] }",
             "9F86D081884C7D659A2FEAA0C55AD015", hex + 32);
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    TH_REQUIRE(c != NULL);
    TH_CHECK_STR(c->auth.keys[0].sha256, hex); /* stored lower-case */
    TH_CHECK_STR(c->auth.keys[0].role, "user");
    TH_CHECK_STR(c->auth.keys[0].tenant, "other");
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_cross_field_registry)
{
    EXPECT_ONE("registry: { heartbeat_interval: 30s, dead_threshold: 30s }", "registry.dead_threshold",
               "must be longer than registry.heartbeat_interval");
    EXPECT_ONE("registry: { dead_threshold: 20m }", "registry.remove_after",
               "must not be shorter than registry.dead_threshold");
}

TH_TEST(test_yaml_syntax_error_line)
{
    th_config_errors e = {0};
    const char *y = "listen: \"0.0.0.0:1\"\n"
                    "limits:\n"
                    "  max_body: 1MiB\n"
                    "   max_upload: 2MiB\n";
    TH_CHECK(P(y, &e) == NULL);
    TH_REQUIRE(e.n == 1);
    TH_CHECK_INT(e.items[0].line, 4);
    TH_CHECK_STR(e.items[0].path, "");
    TH_CHECK(strstr(e.items[0].message, "YAML syntax error") != NULL);
    TH_CHECK(strstr(e.items[0].message, "column") != NULL);
    th_config_errors_free(&e);

    TH_CHECK(P("a: [1, 2\n", &e) == NULL);
    TH_CHECK(e.n == 1 && strstr(e.items[0].message, "starts on line 1") != NULL);
    th_config_errors_free(&e);

    TH_CHECK(P("listen: \"0.0.0.0:1\"\n---\nlisten: \"0.0.0.0:2\"\n", &e) == NULL);
    TH_CHECK(find_err(&e, "", "only one YAML document is allowed") != NULL);
    th_config_errors_free(&e);

    TH_CHECK(P("- a\n- b\n", &e) == NULL);
    TH_CHECK(find_err(&e, "", "the file must be a mapping of keys") != NULL);
    th_config_errors_free(&e);

    TH_CHECK(P("? [a, b]\n: c\n", &e) == NULL);
    TH_CHECK(find_err(&e, "?", "keys must be strings") != NULL);
    th_config_errors_free(&e);
}

TH_TEST(test_bounds_rejected)
{
    th_config_errors e = {0};
    /* over 4 MiB */
    size_t big = (4u << 20) + 1;
    char *buf = malloc(big);
    TH_REQUIRE(buf != NULL);
    memset(buf, '#', big);
    TH_CHECK(th_config_parse(buf, big, &e) == NULL);
    TH_CHECK(find_err(&e, "", "the file is larger than 4 MiB") != NULL);
    th_config_errors_free(&e);

    /* a file over 4 MiB on disk */
    char path[] = "/tmp/th_config_big_XXXXXX";
    int fd = mkstemp(path);
    TH_REQUIRE(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    TH_REQUIRE(f != NULL);
    fwrite(buf, 1, big, f);
    fclose(f);
    TH_CHECK(th_config_load(path, &e) == NULL);
    TH_CHECK(find_err(&e, "", "the file is larger than 4 MiB") != NULL);
    th_config_errors_free(&e);
    remove(path);

    /* deeper than 32 levels */
    size_t o = 0;
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(buf + o, big - o, "[");
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(buf + o, big - o, "]");
    TH_CHECK(th_config_parse(buf, o, &e) == NULL);
    TH_CHECK(find_err(&e, "", "nesting deeper than 32 levels") != NULL);
    th_config_errors_free(&e);

    /* more than 10,000 nodes */
    o = (size_t)snprintf(buf, big, "tenants: { acme: { voices: [");
    for (int i = 0; i < 10500; i++)
        o += (size_t)snprintf(buf + o, big - o, "v%d, ", i);
    o += (size_t)snprintf(buf + o, big - o, "x] } }\n");
    TH_CHECK(th_config_parse(buf, o, &e) == NULL);
    TH_CHECK(find_err(&e, "", "more than 10000 YAML nodes") != NULL);
    th_config_errors_free(&e);
    free(buf);

    /* aliases: billion laughs is refused, not expanded */
    const char *lol =
        "a: &a [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n";
    TH_CHECK(P(lol, &e) == NULL);
    TH_CHECK(find_err(&e, "b[0]", "YAML aliases are not supported") != NULL);
    TH_CHECK(find_err(&e, "a", "YAML anchors are not supported") != NULL);
    th_config_errors_free(&e);

    EXPECT_ONE("listen: &anchor \"0.0.0.0:1\"\n", "listen", "YAML anchors are not supported");
    TH_CHECK(P("listen: &l \"0.0.0.0:1\"\nmetrics_listen: *l\n", &e) == NULL);
    TH_CHECK(find_err(&e, "metrics_listen", "YAML aliases are not supported") != NULL);
    TH_CHECK_INT(e.n, 2);
    th_config_errors_free(&e);

    TH_CHECK(th_config_load("/nonexistent/ttshub.yaml", &e) == NULL);
    TH_CHECK(e.n == 1 && strstr(e.items[0].message, "cannot open") != NULL);
    th_config_errors_free(&e);
}

TH_TEST(test_to_json_redacts_secrets)
{
    const char *hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    char y[1024];
    snprintf(
        y, sizeof y,
        "auth: { mode: api_key, keys: [ { id: k1, sha256: \"%s\" } ] }\n"
        "redis: { url: \"redis://user:hunter2@127.0.0.1:6379/0\" }\n"
        "providers:\n"
        "  - { name: o, type: openai, base_url: \"https://api.example.com\", api_key_env: OPENAI_API_KEY }\n"
        "  - { name: e, type: espeak, voices: { alloy: en-us } }\n",
        hex);
    setenv("OPENAI_API_KEY", "sk-very-secret", 1);
    th_config_errors e = {0};
    th_config *c = P(y, &e);
    if (c == NULL) dump_errs(&e);
    TH_REQUIRE(c != NULL);
    char *js = th_config_to_json(c);
    TH_REQUIRE(js != NULL);
    TH_CHECK(strstr(js, hex) == NULL);
    TH_CHECK(strstr(js, "hunter2") == NULL);
    TH_CHECK(strstr(js, "sk-very-secret") == NULL);
    json_error_t je;
    json_t *o = json_loads(js, 0, &je);
    TH_REQUIRE(o != NULL);
    TH_CHECK_STR(json_string_value(json_object_get(
                     json_array_get(json_object_get(json_object_get(o, "auth"), "keys"), 0), "sha256")),
                 "<redacted>");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(o, "redis"), "url")),
                 "redis://<redacted>@127.0.0.1:6379/0");
    json_t *p0 = json_array_get(json_object_get(o, "providers"), 0);
    TH_CHECK_STR(json_string_value(json_object_get(p0, "api_key_env")), "OPENAI_API_KEY");
    TH_CHECK(json_is_true(json_object_get(p0, "stream")));
    TH_CHECK_STR(json_string_value(json_object_get(p0, "model")), "tts-1");
    json_t *p1 = json_array_get(json_object_get(o, "providers"), 1);
    TH_CHECK(json_object_get(p1, "base_url") == NULL); /* not a key of espeak */
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(p1, "voices"), "alloy")), "en-us");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(o, "limits"), "max_body")), "1MiB");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(o, "redis"), "timeout")), "200ms");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(o, "log"), "level")), "info");
    json_decref(o);
    free(js);
    th_config_unref(c);
    th_config_errors_free(&e);
    unsetenv("OPENAI_API_KEY");
}

TH_TEST(test_to_json_round_trips)
{
    /* The dump is YAML too (JSON is YAML). The example's dump reloads except for the redacted key hash. */
    th_config_errors e = {0};
    th_config *c = th_config_load("config/ttshub.example.yaml", &e);
    TH_REQUIRE(c != NULL);
    char *a = th_config_to_json(c);
    TH_REQUIRE(a != NULL);
    TH_CHECK(th_config_parse(a, strlen(a), &e) == NULL);
    TH_CHECK_INT(e.n, 1);
    TH_CHECK(find_err(&e, "auth.keys[0].sha256", NULL) != NULL);
    th_config_errors_free(&e);
    free(a);
    th_config_unref(c);

    /* without keys it loads back to the same dump */
    const char *y =
        "listen: \"127.0.0.1:9\"\n"
        "limits: { max_body: 1536, header_timeout: 1500ms }\n"
        "tenants: { t1: { rpm: 5, quota: { chars_per_month: 7 }, voices: [\"a*\"] } }\n"
        "providers:\n"
        "  - { name: g, type: gpt_sovits, base_url: \"http://g:1/x\", formats: [wav, pcm],\n"
        "      voices: { amy: { ref_audio_path: /a.wav, aux_ref_audio_paths: [/b.wav], speed: 1.5 } } }\n"
        "  - { name: z, type: azure, region: westus2 }\n"
        "router: { routes: [ { match: { voice: \"x*\" }, providers: [z] } ] }\n"
        "voices: { alloy: { providers: { g: amy } } }\n";
    c = th_config_parse(y, strlen(y), &e);
    if (c == NULL) dump_errs(&e);
    TH_REQUIRE(c != NULL);
    a = th_config_to_json(c);
    TH_REQUIRE(a != NULL);
    th_config *c2 = th_config_parse(a, strlen(a), &e);
    if (c2 == NULL) dump_errs(&e);
    TH_REQUIRE(c2 != NULL);
    char *b = th_config_to_json(c2);
    TH_CHECK_STR(a, b);
    free(a);
    free(b);
    th_config_unref(c);
    th_config_unref(c2);
    th_config_errors_free(&e);
}

TH_TEST(test_ref_unref)
{
    th_config *c = th_config_default();
    TH_REQUIRE(c != NULL);
    TH_CHECK(th_config_ref(c) == c);
    TH_CHECK_INT(c->refs, 2);
    th_config_unref(c);
    TH_CHECK_INT(c->refs, 1);
    th_config_unref(c); /* freed: LSan reports a leak otherwise */
    TH_CHECK(th_config_ref(NULL) == NULL);
    th_config_unref(NULL);
}

TH_TEST(test_lookups)
{
    th_kv kv[2] = {{.key = "a", .value = "1"}, {.key = "b", .value = "2"}};
    TH_CHECK_STR(th_kv_get(kv, 2, "b"), "2");
    TH_CHECK(th_kv_get(kv, 2, "c") == NULL);
    TH_CHECK(th_kv_get(NULL, 0, "a") == NULL);
    TH_CHECK(th_config_tenant(NULL, "a") == NULL);
    TH_CHECK(th_config_provider(NULL, "a") == NULL);
}

TH_TEST_MAIN()
