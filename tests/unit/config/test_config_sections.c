/* Unit tests of the section files of src/config (config_server.c, config_observability.c,
 * config_governance.c, config_routing.c, config_cluster.c, config_voice_library.c) and of the JSON dump
 * (config_json.c): each section's defaults, one bound or enum, its checks, and how it is dumped. */
#include "th_test.h"

#include "config/config.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static th_config *P(const char *yaml, th_config_errors *errs)
{
    return th_config_parse(yaml, strlen(yaml), errs);
}

/* Expects exactly one error, at path with msg (th__failed: the test's failure count, for TH_CHECK). */
#define EXPECT_ONE(yaml, path, msg) expect_one(th__failed, yaml, path, msg)
static void expect_one(int *th__failed, const char *yaml, const char *path, const char *msg)
{
    th_config_errors e = {0};
    th_config *c = P(yaml, &e);
    TH_CHECK(c == NULL);
    TH_CHECK_INT(e.n, 1);
    if (e.n == 1) {
        TH_CHECK_STR(e.items[0].path, path);
        TH_CHECK_STR(e.items[0].message, msg);
    }
    th_config_unref(c);
    th_config_errors_free(&e);
}

TH_TEST(test_server_sections)
{
    th_config *c = th_config_default();
    TH_REQUIRE(c != NULL);
    TH_CHECK(c->limits.max_body == 1024 * 1024);
    TH_CHECK(c->limits.header_timeout_ms == 10000);
    TH_CHECK_STR(c->redis.prefix, "ttshub:");
    TH_CHECK(c->redis.timeout_ms == 200);
    TH_CHECK(c->reload.watch);
    TH_CHECK(c->reload.debounce_ms == 300);
    th_config_unref(c);
    EXPECT_ONE("limits:\n  max_header: 2MiB\n", "limits.max_header", "must be between 1KiB and 1MiB");
    EXPECT_ONE("redis:\n  pool: 9\n", "redis.pool", "must be between 1 and 8");
    EXPECT_ONE("reload:\n  debounce: 2m\n", "reload.debounce", "must be between 0s and 1m");
}

TH_TEST(test_observability_sections)
{
    th_config_errors e = {0};
    th_config *c = P("log: {level: warn, format: text}\ntracing: {sample_ratio: 0.25}\n", &e);
    TH_REQUIRE(c != NULL);
    TH_CHECK(c->log.level == TH_LOG_WARN);
    TH_CHECK(c->log.format == TH_LOG_TEXT);
    TH_CHECK(c->tracing.sample_ratio == 0.25);
    TH_CHECK_STR(c->tracing.service_name, "ttshub");
    th_config_unref(c);
    EXPECT_ONE("log: {level: loud}\n", "log.level", "must be one of debug, info, warn, error, off");
    EXPECT_ONE("tracing: {sample_ratio: 2}\n", "tracing.sample_ratio", "must be between 0 and 1");
}

TH_TEST(test_governance_sections)
{
    th_config_errors e = {0};
    th_config *c =
        P("rate_limit: {backend: redis, on_backend_error: closed}\ncache: {backend: redis, ttl: 1h}\n"
          "tenants:\n  t: {quota: {chars_per_day: 5}}\n",
          &e);
    TH_REQUIRE(c != NULL);
    TH_CHECK_STR(c->rate_limit.backend, "redis");
    TH_CHECK_STR(c->rate_limit.on_backend_error, "closed");
    TH_CHECK_STR(c->cache.backend, "redis");
    TH_CHECK(c->cache.ttl_ms == 3600000);
    TH_REQUIRE(c->n_tenants == 1);
    TH_CHECK(c->tenants[0].chars_per_day == 5);
    TH_CHECK(c->tenants[0].n_voices == 1 && strcmp(c->tenants[0].voices[0], "*") == 0);
    th_config_unref(c);
    EXPECT_ONE("cache: {backend: disk}\n", "cache.backend", "must be one of memory, redis");
    EXPECT_ONE("auth: {mode: jwt, jwt: {alg: ES256}}\n", "auth.jwt.public_key_file",
               "required for alg ES256");
    EXPECT_ONE("auth: {mode: jwt, jwt: {secret_env: \"\"}}\n", "auth.jwt.secret_env",
               "required for alg HS256");
}

TH_TEST(test_routing_cluster_voice_library_sections)
{
    th_config *c = th_config_default();
    TH_REQUIRE(c != NULL);
    TH_CHECK_STR(c->router.strategy, "weighted");
    TH_CHECK(c->router.breaker.failures == 5);
    TH_CHECK(c->registry.n_trusted_networks == 1 && strcmp(c->registry.trusted_networks[0], "loopback") == 0);
    TH_CHECK(c->registry.max_capacity == 64);
    TH_CHECK_STR(c->voice_library.backend, "fs");
    TH_CHECK(c->voice_library.min_seconds == 2.0);
    th_config_unref(c);
    EXPECT_ONE("router: {breaker: {failure_ratio: 1.5}}\n", "router.breaker.failure_ratio",
               "must be between 0 and 1");
    EXPECT_ONE("router:\n  routes:\n  - {providers: [local, other]}\n", "router.routes[0].providers[1]",
               "unknown provider \"other\"");
    EXPECT_ONE("registry: {backend: etcd}\n", "registry.backend", "must be one of local, redis");
    EXPECT_ONE("voice_library: {min_seconds: 10, max_seconds: 10}\n", "voice_library.min_seconds",
               "must be shorter than voice_library.max_seconds");
}

TH_TEST(test_json_dump_sections)
{
    th_config_errors e = {0};
    th_config *c = P("redis: {url: \"redis://:pw@h:1/0\"}\ntracing: {otlp_endpoint: \"http://h:1/x?key=s\"}\n"
                     "limits: {max_body: 2048}\nregistry: {heartbeat_interval: 20s}\n",
                     &e);
    TH_REQUIRE(c != NULL);
    char *s = th_config_to_json(c);
    TH_REQUIRE(s != NULL);
    json_t *j = json_loads(s, 0, NULL);
    TH_REQUIRE(j != NULL);
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(j, "redis"), "url")),
                 "redis://<redacted>@h:1/0");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(j, "tracing"), "otlp_endpoint")),
                 "http://h:1/x?<redacted>");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(j, "limits"), "max_body")), "2KiB");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(j, "registry"), "heartbeat_interval")),
                 "20s");
    TH_CHECK_STR(json_string_value(json_object_get(json_object_get(j, "log"), "level")), "info");
    TH_CHECK(strstr(s, "pw") == NULL && strstr(s, "key=s") == NULL);
    json_decref(j);
    free(s);
    th_config_unref(c);
}

TH_TEST_MAIN()
