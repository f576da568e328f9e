/* auth: API keys and JWTs -> who is calling (tenant, role).
 *
 * API keys are stored only as sha256 (hex) and compared in constant time
 * (CRYPTO_memcmp). A key is presented as `Authorization: Bearer <key>` or
 * `X-API-Key: <key>`. JWTs (HS256 with a secret from the environment, RS256
 * with a PEM public key file) are checked with OpenSSL: signature, `exp`,
 * `nbf` (with a small leeway), `iss` and `aud` when configured; `alg: none`
 * and any algorithm other than the configured one are rejected. Tenant and
 * role come from the key entry or from the configured claims. Pure, loop
 * thread or any thread (no shared mutable state after creation). */
#ifndef TH_HUB_AUTH_H
#define TH_HUB_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

typedef struct th_auth th_auth;

typedef enum {
    TH_AUTH_OK = 0,
    TH_AUTH_MISSING, /* no credentials given (401) */
    TH_AUTH_INVALID, /* wrong key, bad token, bad signature, wrong audience... (401) */
    TH_AUTH_EXPIRED, /* exp in the past (401) */
    TH_AUTH_NOT_YET, /* nbf in the future (401) */
} th_auth_rc;

typedef struct th_identity {
    bool authenticated; /* false in mode none */
    char tenant[64];    /* "" when none: the "default" tenant applies */
    char role[16];      /* "user" | "admin" */
    char subject[128];  /* key id, or the token's sub */
    char method[8];     /* "none" | "key" | "jwt" */
} th_identity;

/** Builds the checker from cfg->auth (reads the JWT secret from the environment variable named by
 * secret_env, the public key from public_key_file). NULL with err set when that fails. */
th_auth *th_auth_new(const th_config *cfg, char *err, size_t errlen);
void th_auth_free(th_auth *a);
/** Checks the credentials of one request. authorization and x_api_key are header values or NULL.
 * now_s = wall clock seconds. In mode none, returns TH_AUTH_OK with an anonymous identity
 * (role "admin" only when cfg says so: never; role "user"). err gets a message fit for the client. */
th_auth_rc th_auth_check(const th_auth *a, const char *authorization, const char *x_api_key, int64_t now_s,
                         th_identity *out, char *err, size_t errlen);
/** Tenant restrictions: glob patterns of allowed voices / providers (NULL tenant conf = allowed). */
bool th_auth_voice_allowed(const th_tenant_conf *t, const char *voice);
bool th_auth_provider_allowed(const th_tenant_conf *t, const char *provider);
bool th_auth_is_admin(const th_identity *id);
/** sha256 of a key as lower-case hex (65 bytes with NUL), for `ttshub` tooling and tests. */
void th_auth_hash_key(const char *key, size_t len, char out[65]);

#endif
