/* config_governance: the sections auth (keys, jwt), tenants (limits, quota, allowed voices and
 * providers), rate_limit and cache, and the checks between them. */
#include "config/config_int.h"

#include <stdio.h>
#include <string.h>

static const char *const e_auth[] = {"none", "api_key", "jwt", "any", NULL};
static const char *const e_role[] = {"user", "admin", NULL};
static const char *const e_alg[] = {"HS256", "HS384", "HS512", "RS256", "RS384",
                                    "RS512", "ES256", "ES384", "ES512", NULL};
static const char *const e_open_closed[] = {"open", "closed", NULL};
static const char *const e_mem_redis[] = {"memory", "redis", NULL};

static void key_post(ctx *c, const ynode *n, void *base, const char *path, size_t index)
{
    th_key_conf *k = base;
    (void)c, (void)n, (void)path, (void)index;
    for (char *p = k->sha256; p && *p; p++)
        if (*p >= 'A' && *p <= 'F') *p = (char)(*p + 32);
}

static const key_def k_key[] = {
    KSTR(th_key_conf, id, "id", "", cf_check_name, F_REQ, 0),
    KSTR(th_key_conf, sha256, "sha256", "", cf_check_hex64, F_REQ | F_SECRET, 0),
    KSTR(th_key_conf, tenant, "tenant", "", NULL, 0, 0),
    KENUM(th_key_conf, role, "role", "user", e_role),
    KINT(th_key_conf, rpm, "rpm", "0", 0, 1000000, 0),
};
static const section_def s_key = SECTION(k_key, .post = key_post);

static const key_def k_jwt[] = {
    KENUM(th_config, auth.jwt.alg, "alg", "HS256", e_alg),
    KSTR(th_config, auth.jwt.secret_env, "secret_env", "TTSHUB_JWT_SECRET", cf_check_env, 0, 0),
    KSTR(th_config, auth.jwt.public_key_file, "public_key_file", "", NULL, 0, 0),
    KSTR(th_config, auth.jwt.issuer, "issuer", "", NULL, 0, 0),
    KSTR(th_config, auth.jwt.audience, "audience", "", NULL, 0, 0),
    KSTR(th_config, auth.jwt.tenant_claim, "tenant_claim", "tenant", cf_check_nonempty, 0, 0),
    KSTR(th_config, auth.jwt.role_claim, "role_claim", "role", cf_check_nonempty, 0, 0),
    KBOOL(th_config, auth.jwt.require_exp, "require_exp", "true"),
};
static const section_def s_jwt = SECTION(k_jwt);

static const key_def k_auth[] = {
    KENUM(th_config, auth.mode, "mode", "none", e_auth),
    KBOOL(th_config, auth.allow_open_admin, "allow_open_admin", "false"),
    KLIST(th_config, auth.keys, auth.n_keys, "keys", s_key, 0),
    KSEC("jwt", s_jwt),
};
const section_def cf_s_auth = SECTION(k_auth);

static const key_def k_quota[] = {
    KINT(th_tenant_conf, chars_per_day, "chars_per_day", "0", 0, 1000000000000000LL, 0),
    KINT(th_tenant_conf, chars_per_month, "chars_per_month", "0", 0, 1000000000000000LL, 0),
};
static const section_def s_quota = SECTION(k_quota);

static const key_def k_tenant[] = {
    KINT(th_tenant_conf, rpm, "rpm", "0", 0, 1000000, 0),
    KINT(th_tenant_conf, rate, "rate", "0", 0, 1000000, 0),
    KINT(th_tenant_conf, burst, "burst", "0", 0, 1000000, 0),
    KINT(th_tenant_conf, concurrency, "concurrency", "0", 0, 1000000, 0),
    KSEC("quota", s_quota),
    KSTRLIST(th_tenant_conf, voices, n_voices, "voices", "*", 0),
    KSTRLIST(th_tenant_conf, providers, n_providers, "providers", "*", 0),
    KINT(th_tenant_conf, max_voices, "max_voices", "0", 0, 1000000, 0),
};
const section_def cf_s_tenant = SECTION(k_tenant);

static const key_def k_rate[] = {
    KINT(th_config, rate_limit.global_rpm, "global_rpm", "1000", 0, 100000000, 0),
    KINT(th_config, rate_limit.ip_rpm, "ip_rpm", "100", 0, 100000000, 0),
    KINT(th_config, rate_limit.concurrency, "concurrency", "50", 0, 10000000, 0),
    KENUM(th_config, rate_limit.backend, "backend", "local", cf_e_local_redis),
    KENUM(th_config, rate_limit.on_backend_error, "on_backend_error", "open", e_open_closed),
};
const section_def cf_s_rate = SECTION(k_rate);

static const key_def k_cache[] = {
    KBOOL(th_config, cache.enabled, "enabled", "true"),
    KENUM(th_config, cache.backend, "backend", "memory", e_mem_redis),
    KSIZE(th_config, cache.max_bytes, "max_bytes", "256MiB", 0, 1024 * GiB),
    KDUR(th_config, cache.ttl_ms, "ttl", "10m", 1 * SEC, 30 * DAY),
    KBOOL(th_config, cache.per_tenant, "per_tenant", "true"),
};
const section_def cf_s_cache = SECTION(k_cache);

/* auth.mode against what it needs: keys, a jwt secret or public key */
static void check_auth_mode(ctx *c, const ynode *auth, th_config *cfg)
{
    int auth_line = cf_line_of(cf_get(auth, "mode"), cf_line_of(auth, 0));
    const char *mode = cfg->auth.mode ? cfg->auth.mode : "none";
    bool jwt_given = cf_get(auth, "jwt") != NULL;
    bool hs = cfg->auth.jwt.alg && cfg->auth.jwt.alg[0] == 'H';
    if (strcmp(mode, "api_key") == 0 && cfg->auth.n_keys == 0)
        cf_err(c, auth_line, "auth.keys", "required when auth.mode is api_key");
    if (strcmp(mode, "any") == 0 && cfg->auth.n_keys == 0 && !jwt_given)
        cf_err(c, auth_line, "auth.mode", "any needs auth.keys or auth.jwt");
    if (strcmp(mode, "jwt") == 0 || (strcmp(mode, "any") == 0 && jwt_given)) {
        int jl = cf_line_of(cf_get(auth, "jwt"), auth_line);
        if (hs && (cfg->auth.jwt.secret_env == NULL || cfg->auth.jwt.secret_env[0] == 0))
            cf_err(c, jl, "auth.jwt.secret_env", "required for alg %s", cfg->auth.jwt.alg);
        if (!hs && (cfg->auth.jwt.public_key_file == NULL || cfg->auth.jwt.public_key_file[0] == 0))
            cf_err(c, jl, "auth.jwt.public_key_file", "required for alg %s", cfg->auth.jwt.alg);
    }
}

/* auth.keys: unique ids, declared tenants */
static void check_keys(ctx *c, const ynode *keys, th_config *cfg)
{
    char p[256];
    for (size_t i = 0; keys && keys->kind == N_SEQ && i < keys->n && i < cfg->auth.n_keys; i++) {
        const th_key_conf *k = &cfg->auth.keys[i];
        const ynode *kn = cf_item(keys, i);
        for (size_t j = 0; j < i && k->id && k->id[0]; j++) {
            if (cfg->auth.keys[j].id && strcmp(cfg->auth.keys[j].id, k->id) == 0) {
                snprintf(p, sizeof p, "auth.keys[%zu].id", i);
                cf_err(c, cf_line_of(cf_get(kn, "id"), kn->line), p, "duplicate key id \"%s\"", k->id);
                break;
            }
        }
        /* A key's tenant must be declared when there are tenants; with no tenants section every tenant is
         * unlimited, so any name is fine. */
        if (cfg->n_tenants > 0 && k->tenant && k->tenant[0] && th_config_tenant(cfg, k->tenant) == NULL) {
            snprintf(p, sizeof p, "auth.keys[%zu].tenant", i);
            cf_err(c, cf_line_of(cf_get(kn, "tenant"), kn->line), p, "unknown tenant \"%s\"", k->tenant);
        }
    }
}

void cf_check_auth(ctx *c, const ynode *root, th_config *cfg)
{
    const ynode *auth = cf_get(root, "auth");
    check_auth_mode(c, auth, cfg);
    check_keys(c, cf_get(auth, "keys"), cfg);
}
