/* Unit tests of src/config/config_validate.c, through the keys that use each validator: listen
 * addresses, http and redis URLs, environment variable names, networks, names, key hashes, regions. */
#include "th_test.h"

#include "config/config.h"

#include <stdio.h>
#include <string.h>

/* The message of the only error of yaml at path, or NULL when the file is valid (or errs elsewhere). */
static const char *one_err(const char *yaml, const char *path, char *msg, size_t cap)
{
    th_config_errors e = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &e);
    const char *r = NULL;
    if (c == NULL && e.n == 1 && strcmp(e.items[0].path, path) == 0) {
        snprintf(msg, cap, "%s", e.items[0].message);
        r = msg;
    }
    th_config_unref(c);
    th_config_errors_free(&e);
    return r;
}

static bool valid(const char *yaml)
{
    th_config_errors e = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &e);
    bool ok = c != NULL && e.n == 0;
    th_config_unref(c);
    th_config_errors_free(&e);
    return ok;
}

#define KEY_OK(key, v) TH_CHECK(valid(key ": \"" v "\"\n"))
#define KEY_BAD(key, path, v, want)                                                                          \
    do {                                                                                                     \
        char m_[256];                                                                                        \
        const char *got_ = one_err(key ": \"" v "\"\n", path, m_, sizeof m_);                                \
        TH_CHECK(got_ != NULL && strcmp(got_, want) == 0);                                                   \
    } while (0)

TH_TEST(test_listen_addresses)
{
    const char *bad = "not a listen address (HOST:PORT)";
    KEY_OK("listen", "0.0.0.0:8080");
    KEY_OK("listen", "localhost:0");
    KEY_OK("listen", "[::1]:65535");
    KEY_OK("listen", "[::]:80");
    KEY_BAD("listen", "listen", "0.0.0.0", bad);
    KEY_BAD("listen", "listen", "0.0.0.0:65536", bad);
    KEY_BAD("listen", "listen", "0.0.0.0:-1", bad);
    KEY_BAD("listen", "listen", ":8080", bad);
    KEY_BAD("listen", "listen", "[::1:80", bad);
    KEY_BAD("listen", "listen", "[zz::1]:80", bad);
    KEY_BAD("listen", "listen", "host name:80", bad);
    KEY_OK("metrics_listen", "");
    KEY_BAD("metrics_listen", "metrics_listen", "x", bad);
}

TH_TEST(test_urls)
{
    KEY_OK("tracing:\n  otlp_endpoint", "http://collector:4318/v1/traces");
    KEY_OK("tracing:\n  otlp_endpoint", "https://user:pw@[fd00::1]:4318");
    KEY_OK("tracing:\n  otlp_endpoint", "");
    KEY_BAD("tracing:\n  otlp_endpoint", "tracing.otlp_endpoint", "ftp://h/x", "not a URL");
    KEY_BAD("tracing:\n  otlp_endpoint", "tracing.otlp_endpoint", "http://h /x", "not a URL");
    KEY_BAD("tracing:\n  otlp_endpoint", "tracing.otlp_endpoint", "http://h:99999", "not a URL");
    KEY_BAD("tracing:\n  otlp_endpoint", "tracing.otlp_endpoint", "http://", "not a URL");

    const char *rbad = "not a redis URL (redis://HOST:PORT/DB)";
    KEY_OK("redis:\n  url", "redis://127.0.0.1:6379/0");
    KEY_OK("redis:\n  url", "rediss://:secret@cache.example:6380");
    KEY_OK("redis:\n  url", "unix:///run/redis.sock");
    KEY_BAD("redis:\n  url", "redis.url", "unix:///", rbad);
    KEY_BAD("redis:\n  url", "redis.url", "http://h:1", rbad);
}

TH_TEST(test_env_names)
{
    const char *bad = "not an environment variable name";
    KEY_OK("registry:\n  token_env", "TTSHUB_TOKEN_2");
    KEY_OK("registry:\n  token_env", "");
    KEY_BAD("registry:\n  token_env", "registry.token_env", "2TOKEN", bad);
    KEY_BAD("registry:\n  token_env", "registry.token_env", "TOKEN-X", bad);
}

TH_TEST(test_networks)
{
    TH_CHECK(valid("registry:\n  trusted_networks: [10.0.0.0/8, \"fd00::/8\", 127.0.0.1, private, any]\n"));
    char m[256];
    const char *got = one_err("registry:\n  allowed_networks: [10.0.0.0/33]\n",
                              "registry.allowed_networks[0]", m, sizeof m);
    TH_CHECK(got != NULL && strstr(got, "must be a network") == got);
}

TH_TEST(test_names_and_hashes)
{
    char m[256];
    const char *got = one_err("tenants:\n  \"a b\": {rpm: 1}\n", "tenants.a b", m, sizeof m);
    TH_CHECK(got != NULL && strcmp(got, "may hold only letters, digits, '_', '-' and '.'") == 0);
    char y[512];
    snprintf(y, sizeof y, "auth:\n  keys:\n  - {id: %s, sha256: %064d}\n",
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0);
    got = one_err(y, "auth.keys[0].id", m, sizeof m);
    TH_CHECK(got != NULL && strcmp(got, "longer than 64 characters") == 0);
    got = one_err("auth:\n  keys:\n  - {id: k, sha256: abc}\n", "auth.keys[0].sha256", m, sizeof m);
    TH_CHECK(got != NULL && strcmp(got, "must be 64 hex characters (the sha256 of the key)") == 0);
    snprintf(y, sizeof y, "auth:\n  keys:\n  - {id: k, sha256: %s}\n",
             "ABCDEF0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789");
    TH_CHECK(valid(y));
    got = one_err("data_dir: \"\"\n", "data_dir", m, sizeof m);
    TH_CHECK(got != NULL && strcmp(got, "must not be empty") == 0);
}

TH_TEST_MAIN()
