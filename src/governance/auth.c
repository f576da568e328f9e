/* auth: API keys and JWTs -> who is calling (tenant, role).
 *
 * Decisions (see auth.h for the contract):
 * - Credentials: `Authorization: Bearer <v>` (scheme case-insensitive) wins over `X-API-Key: <v>`; an
 *   Authorization header with another scheme (Basic...) is ignored when X-API-Key is given, else INVALID.
 *   Empty (or blank) header values count as absent. Keys are at most TH_AUTH_MAX_KEY bytes, tokens at most
 *   TH_AUTH_MAX_TOKEN bytes; longer values are INVALID without any hashing or parsing.
 * - Keys: the presented key is hashed with SHA-256 and compared with CRYPTO_memcmp against every configured
 *   hash (no early exit; the match is picked without a branch), so timing does not tell which entry matched.
 * - Mode any: a Bearer value with exactly two dots is checked as a JWT, anything else as a key; X-API-Key is
 *   always a key. In mode jwt, X-API-Key is INVALID; in mode api_key, a Bearer value is always a key. In
 *   mode any, when the JWT part cannot be set up because the secret's environment variable is unset or
 *   empty (HS*) or no public_key_file is configured (RS*, ES*), tokens are rejected and keys still work; in
 *   mode jwt that is an error of th_auth_new.
 * - JWT: compact JWS only; strict base64url (no padding, no foreign characters, zero unused bits). The
 *   header's `alg` must equal the configured alg exactly; `crit` is rejected; `typ`, when present, must be
 *   a string. The signature is verified before the claims are parsed. Algorithms: HS256/384/512 (HMAC with
 *   the secret from getenv(secret_env), read once in th_auth_new), RS256/384/512 (PKCS#1 v1.5, RSA keys of
 *   2048 bits or more) and ES256/384/512 (raw r||s signatures; the key's curve must fit the alg).
 * - Claims: `exp` is required unless auth.jwt.require_exp is false; when present it must be a number and
 *   now < exp + 30 s (else EXPIRED). HS secrets shorter than 32 bytes are refused at start.
 *   `nbf` likewise: now + 30 s >= nbf (else NOT_YET). `iat`, when present, must be a number not more than
 *   30 s in the future (else NOT_YET). `iss` must equal the configured issuer when one is configured; `aud`
 *   must equal the configured audience, or be an array containing it, when one is configured. The tenant
 *   claim is optional (absent -> "" = the default tenant) but must be a string that fits th_identity, and
 *   when the config declares tenants it must name one of them; the role claim gives "admin" only for the
 *   exact string "admin", anything else (absent, other strings, other types) is "user"; `sub`, when
 *   present, must be a string that fits th_identity.subject.
 * - Messages never say which key entry or which byte failed. */
#include "governance/auth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "core/str.h"
#include "http/body.h"

#define TH_AUTH_MAX_KEY 512    /* bytes of an API key */
#define TH_AUTH_MAX_TOKEN 8192 /* bytes of a compact JWT */
#define TH_AUTH_LEEWAY_S 30    /* clock skew allowed for exp, nbf and iat */
#define TH_AUTH_JSON_DEPTH 8   /* nesting allowed in a JWT header or claims set */

typedef enum { MODE_NONE, MODE_API_KEY, MODE_JWT, MODE_ANY } auth_mode;
typedef enum { KIND_HS, KIND_RS, KIND_ES } alg_kind;

typedef struct key_entry {
    uint8_t hash[32];
    char id[128];
    char tenant[64];
    char role[16];
} key_entry;

struct th_auth {
    auth_mode mode;
    key_entry *keys;
    size_t n_keys;

    bool jwt_enabled;
    char alg[8];
    alg_kind kind;
    const EVP_MD *md;
    size_t es_len; /* ES*: bytes of r (and of s) */
    uint8_t *secret;
    size_t secret_len;
    EVP_PKEY *pkey;
    char *issuer, *audience, *tenant_claim, *role_claim;

    char **tenants; /* names declared in cfg->tenants (a JWT's tenant must be one, when any) */
    size_t n_tenants;
    bool require_exp; /* auth.jwt.require_exp */
};

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen) th_strlcpy(err, msg, errlen);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Setup */

static char *dup_or_empty(const char *s)
{
    return th_strndup(s ? s : "", s ? strlen(s) : 0);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool parse_hash(const char *hex, uint8_t out[32])
{
    if (hex == NULL || strlen(hex) != 64) return false;
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static int setup_alg(th_auth *a, const char *alg, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        alg_kind kind;
        int bits;
    } algs[] = {{"HS256", KIND_HS, 256}, {"HS384", KIND_HS, 384}, {"HS512", KIND_HS, 512},
                {"RS256", KIND_RS, 256}, {"RS384", KIND_RS, 384}, {"RS512", KIND_RS, 512},
                {"ES256", KIND_ES, 256}, {"ES384", KIND_ES, 384}, {"ES512", KIND_ES, 512}};
    for (size_t i = 0; alg && i < sizeof algs / sizeof algs[0]; i++) {
        if (strcmp(alg, algs[i].name) != 0) continue;
        th_strlcpy(a->alg, algs[i].name, sizeof a->alg);
        a->kind = algs[i].kind;
        a->md = algs[i].bits == 256 ? EVP_sha256() : algs[i].bits == 384 ? EVP_sha384() : EVP_sha512();
        a->es_len = algs[i].bits == 256 ? 32 : algs[i].bits == 384 ? 48 : 66;
        return 0;
    }
    set_err(err, errlen, "auth.jwt.alg: unsupported algorithm");
    return -1;
}

static int load_pubkey(th_auth *a, const char *path, char *err, size_t errlen)
{
    BIO *bio = BIO_new_file(path, "r");
    if (bio == NULL) {
        set_err(err, errlen, "auth.jwt.public_key_file: cannot open");
        return -1;
    }
    a->pkey = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (a->pkey == NULL) {
        set_err(err, errlen, "auth.jwt.public_key_file: not a PEM public key");
        return -1;
    }
    if (a->kind == KIND_RS) {
        if (!EVP_PKEY_is_a(a->pkey, "RSA")) {
            set_err(err, errlen, "auth.jwt.public_key_file: not an RSA key (alg RS*)");
            return -1;
        }
        if (EVP_PKEY_get_bits(a->pkey) < 2048) {
            set_err(err, errlen, "auth.jwt.public_key_file: RSA key shorter than 2048 bits");
            return -1;
        }
        return 0;
    }
    char group[64];
    size_t glen = 0;
    const char *want = a->es_len == 32 ? "prime256v1" : a->es_len == 48 ? "secp384r1" : "secp521r1";
    if (!EVP_PKEY_is_a(a->pkey, "EC") ||
        !EVP_PKEY_get_utf8_string_param(a->pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen) ||
        strcmp(group, want) != 0) {
        set_err(err, errlen, "auth.jwt.public_key_file: not an EC key on the curve of the alg");
        return -1;
    }
    return 0;
}

/* JWT set-up. Returns 0 (enabled or, in mode any, left disabled) or -1. */
static int setup_jwt(th_auth *a, const th_config *cfg, char *err, size_t errlen)
{
    if (setup_alg(a, cfg->auth.jwt.alg ? cfg->auth.jwt.alg : "HS256", err, errlen) != 0) return -1;
    bool required = a->mode == MODE_JWT;
    if (a->kind == KIND_HS) {
        const char *env = cfg->auth.jwt.secret_env;
        const char *secret = env && env[0] ? getenv(env) : NULL;
        if (secret == NULL || secret[0] == '\0') {
            if (!required) return 0;
            set_err(err, errlen, "auth.jwt.secret_env: the environment variable is unset or empty");
            return -1;
        }
        a->secret_len = strlen(secret);
        if (a->secret_len < 32) { /* RFC 7518 3.2: at least the hash size; short secrets are guessable */
            set_err(err, errlen, "auth.jwt.secret_env: the HMAC secret must be at least 32 bytes");
            return -1;
        }
        a->secret = malloc(a->secret_len);
        if (a->secret == NULL) {
            set_err(err, errlen, "out of memory");
            return -1;
        }
        memcpy(a->secret, secret, a->secret_len);
    } else {
        const char *path = cfg->auth.jwt.public_key_file;
        if (path == NULL || path[0] == '\0') {
            if (!required) return 0;
            set_err(err, errlen, "auth.jwt.public_key_file: required for this alg");
            return -1;
        }
        if (load_pubkey(a, path, err, errlen) != 0) return -1;
    }
    a->issuer = dup_or_empty(cfg->auth.jwt.issuer);
    a->audience = dup_or_empty(cfg->auth.jwt.audience);
    a->tenant_claim = dup_or_empty(
        cfg->auth.jwt.tenant_claim && cfg->auth.jwt.tenant_claim[0] ? cfg->auth.jwt.tenant_claim : "tenant");
    a->role_claim = dup_or_empty(
        cfg->auth.jwt.role_claim && cfg->auth.jwt.role_claim[0] ? cfg->auth.jwt.role_claim : "role");
    if (!a->issuer || !a->audience || !a->tenant_claim || !a->role_claim) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    a->jwt_enabled = true;
    return 0;
}

static int setup_keys(th_auth *a, const th_config *cfg, char *err, size_t errlen)
{
    if (cfg->auth.n_keys == 0) return 0;
    a->keys = calloc(cfg->auth.n_keys, sizeof *a->keys);
    if (a->keys == NULL) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cfg->auth.n_keys; i++) {
        const th_key_conf *k = &cfg->auth.keys[i];
        key_entry *e = &a->keys[i];
        const char *role = k->role && k->role[0] ? k->role : "user";
        const char *tenant = k->tenant ? k->tenant : "";
        const char *id = k->id ? k->id : "";
        if (!parse_hash(k->sha256, e->hash)) {
            set_err(err, errlen, "auth.keys: sha256 must be 64 hex characters");
            return -1;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "admin") != 0) {
            set_err(err, errlen, "auth.keys: role must be user or admin");
            return -1;
        }
        if (th_strlcpy(e->id, id, sizeof e->id) >= sizeof e->id ||
            th_strlcpy(e->tenant, tenant, sizeof e->tenant) >= sizeof e->tenant) {
            set_err(err, errlen, "auth.keys: id or tenant too long");
            return -1;
        }
        th_strlcpy(e->role, role, sizeof e->role);
        a->n_keys++;
    }
    return 0;
}

static int setup_tenants(th_auth *a, const th_config *cfg, char *err, size_t errlen)
{
    if (cfg->n_tenants == 0) return 0;
    a->tenants = calloc(cfg->n_tenants, sizeof *a->tenants);
    if (a->tenants == NULL) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        a->tenants[i] = dup_or_empty(cfg->tenants[i].name);
        if (a->tenants[i] == NULL) {
            set_err(err, errlen, "out of memory");
            return -1;
        }
        a->n_tenants++;
    }
    return 0;
}

th_auth *th_auth_new(const th_config *cfg, char *err, size_t errlen)
{
    set_err(err, errlen, "");
    if (cfg == NULL) {
        set_err(err, errlen, "no config");
        return NULL;
    }
    th_auth *a = calloc(1, sizeof *a);
    if (a != NULL) a->require_exp = cfg->auth.jwt.require_exp;
    if (a == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    const char *mode = cfg->auth.mode ? cfg->auth.mode : "none";
    if (strcmp(mode, "none") == 0) {
        a->mode = MODE_NONE;
    } else if (strcmp(mode, "api_key") == 0) {
        a->mode = MODE_API_KEY;
    } else if (strcmp(mode, "jwt") == 0) {
        a->mode = MODE_JWT;
    } else if (strcmp(mode, "any") == 0) {
        a->mode = MODE_ANY;
    } else {
        set_err(err, errlen, "auth.mode: unknown mode");
        goto fail;
    }
    if (a->mode == MODE_NONE) return a;
    if (a->mode != MODE_JWT && setup_keys(a, cfg, err, errlen) != 0) goto fail;
    if (a->mode != MODE_API_KEY && setup_jwt(a, cfg, err, errlen) != 0) goto fail;
    if (setup_tenants(a, cfg, err, errlen) != 0) goto fail;
    return a;
fail:
    th_auth_free(a);
    return NULL;
}

void th_auth_free(th_auth *a)
{
    if (a == NULL) return;
    if (a->keys) OPENSSL_cleanse(a->keys, a->n_keys * sizeof *a->keys);
    free(a->keys);
    if (a->secret) OPENSSL_cleanse(a->secret, a->secret_len);
    free(a->secret);
    EVP_PKEY_free(a->pkey);
    free(a->issuer);
    free(a->audience);
    free(a->tenant_claim);
    free(a->role_claim);
    for (size_t i = 0; i < a->n_tenants; i++)
        free(a->tenants[i]);
    free(a->tenants);
    free(a);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Keys */

void th_auth_hash_key(const char *key, size_t len, char out[65])
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (key == NULL) len = 0;
    if (!EVP_Digest(len ? key : "", len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
        out[0] = '\0';
        return;
    }
    th_hex(md, 32, out);
}

static th_auth_rc check_key(const th_auth *a, const char *key, size_t len, th_identity *out, char *err,
                            size_t errlen)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (len == 0 || len > TH_AUTH_MAX_KEY || a->n_keys == 0 ||
        !EVP_Digest(key, len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
        set_err(err, errlen, "invalid API key");
        return TH_AUTH_INVALID;
    }
    /* Compare against every entry; pick the first match with a mask, without branching on the result. */
    size_t found = 0, matched = 0;
    for (size_t i = 0; i < a->n_keys; i++) {
        size_t eq = (size_t)(CRYPTO_memcmp(md, a->keys[i].hash, 32) == 0); /* 0 or 1 */
        size_t take = eq & (matched ^ 1);
        size_t mask = (size_t)0 - take;
        found = (found & ~mask) | (i & mask);
        matched |= eq;
    }
    OPENSSL_cleanse(md, sizeof md);
    if (!matched) {
        set_err(err, errlen, "invalid API key");
        return TH_AUTH_INVALID;
    }
    const key_entry *e = &a->keys[found];
    out->authenticated = true;
    th_strlcpy(out->tenant, e->tenant, sizeof out->tenant);
    th_strlcpy(out->role, e->role, sizeof out->role);
    th_strlcpy(out->subject, e->id, sizeof out->subject);
    th_strlcpy(out->method, "key", sizeof out->method);
    return TH_AUTH_OK;
}

/* ---------------------------------------------------------------------------------------------------- */
/* JWT */

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Strict base64url without padding. out has room for len * 3 / 4 + 1 bytes. Returns the decoded length,
 * or -1 on a foreign character, an impossible length or non-zero unused bits. */
static long b64url_decode(const char *in, size_t len, uint8_t *out)
{
    if (len % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64url_val((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* the unused low bits of the last character must be zero */
    return (long)o;
}

/* Decodes one segment into a new buffer (*out, NUL-terminated for convenience). */
static int decode_segment(const char *s, size_t len, uint8_t **out, size_t *outlen)
{
    uint8_t *buf = malloc(len * 3 / 4 + 2);
    if (buf == NULL) return -1;
    long n = b64url_decode(s, len, buf);
    if (n < 0) {
        free(buf);
        return -1;
    }
    buf[n] = 0;
    *out = buf;
    *outlen = (size_t)n;
    return 0;
}

static bool verify_hs(const th_auth *a, const char *input, size_t inlen, const uint8_t *sig, size_t siglen)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (a->secret_len > (size_t)INT32_MAX) return false;
    if (HMAC(a->md, a->secret, (int)a->secret_len, (const unsigned char *)input, inlen, mac, &maclen) == NULL)
        return false;
    bool ok = siglen == maclen && CRYPTO_memcmp(mac, sig, maclen) == 0;
    OPENSSL_cleanse(mac, sizeof mac);
    return ok;
}

/* ES*: raw r||s (JWS) -> DER (OpenSSL). Returns a malloc'd buffer or NULL. */
static uint8_t *es_to_der(const th_auth *a, const uint8_t *sig, size_t siglen, size_t *derlen)
{
    if (siglen != 2 * a->es_len) return NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)a->es_len, NULL);
    BIGNUM *s = BN_bin2bn(sig + a->es_len, (int)a->es_len, NULL);
    uint8_t *der = NULL;
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return NULL;
    }
    int n = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    if (n <= 0) {
        OPENSSL_free(der);
        return NULL;
    }
    *derlen = (size_t)n;
    return der;
}

static bool verify_pk(const th_auth *a, const char *input, size_t inlen, const uint8_t *sig, size_t siglen)
{
    uint8_t *der = NULL;
    size_t derlen = 0;
    if (a->kind == KIND_RS) {
        if (siglen != (size_t)EVP_PKEY_get_size(a->pkey)) return false;
    } else {
        der = es_to_der(a, sig, siglen, &derlen);
        if (der == NULL) return false;
        sig = der;
        siglen = derlen;
    }
    bool ok = false;
    EVP_PKEY_CTX *pctx = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) goto out;
    if (EVP_DigestVerifyInit(ctx, &pctx, a->md, NULL, a->pkey) != 1) goto out;
    if (a->kind == KIND_RS && EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) goto out;
    ok = EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)input, inlen) == 1;
out:
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    return ok;
}

/* A NumericDate claim: absent (0), a finite number (1, *v set) or something else (-1). */
static int num_claim(const json_t *claims, const char *name, double *v)
{
    const json_t *j = json_object_get(claims, name);
    if (j == NULL) return 0;
    if (!json_is_number(j)) return -1;
    *v = json_number_value(j);
    return isfinite(*v) ? 1 : -1;
}

static bool aud_matches(const json_t *aud, const char *want)
{
    if (json_is_string(aud)) return strcmp(json_string_value(aud), want) == 0;
    if (!json_is_array(aud)) return false;
    size_t i;
    const json_t *v;
    json_array_foreach(aud, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0) return true;
    }
    return false;
}

static th_auth_rc check_claims(const th_auth *a, const json_t *claims, int64_t now_s, th_identity *out,
                               char *err, size_t errlen)
{
    const double now = (double)now_s, leeway = TH_AUTH_LEEWAY_S;
    double exp = 0, nbf = 0, iat = 0;
    int has_exp = num_claim(claims, "exp", &exp), has_nbf = num_claim(claims, "nbf", &nbf),
        has_iat = num_claim(claims, "iat", &iat);
    if (has_exp < 0 || has_nbf < 0 || has_iat < 0) {
        set_err(err, errlen, "invalid token claims");
        return TH_AUTH_INVALID;
    }
    if (!has_exp && a->require_exp) {
        set_err(err, errlen, "the token has no exp claim");
        return TH_AUTH_INVALID;
    }
    if (has_exp && !(now < exp + leeway)) {
        set_err(err, errlen, "token expired");
        return TH_AUTH_EXPIRED;
    }
    if ((has_nbf && now + leeway < nbf) || (has_iat && now + leeway < iat)) {
        set_err(err, errlen, "token not yet valid");
        return TH_AUTH_NOT_YET;
    }
    if (a->issuer[0]) {
        const json_t *iss = json_object_get(claims, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), a->issuer) != 0) {
            set_err(err, errlen, "token issuer mismatch");
            return TH_AUTH_INVALID;
        }
    }
    if (a->audience[0] && !aud_matches(json_object_get(claims, "aud"), a->audience)) {
        set_err(err, errlen, "token audience mismatch");
        return TH_AUTH_INVALID;
    }

    const json_t *tenant = json_object_get(claims, a->tenant_claim);
    const json_t *sub = json_object_get(claims, "sub");
    const json_t *role = json_object_get(claims, a->role_claim);
    const char *tv = "", *sv = "";
    if (tenant != NULL && !json_is_null(tenant)) {
        if (!json_is_string(tenant) || json_string_length(tenant) >= sizeof out->tenant) {
            set_err(err, errlen, "invalid token tenant");
            return TH_AUTH_INVALID;
        }
        tv = json_string_value(tenant);
    }
    if (tv[0] && a->n_tenants > 0) {
        bool known = false;
        for (size_t i = 0; i < a->n_tenants; i++)
            known |= strcmp(a->tenants[i], tv) == 0;
        if (!known) {
            set_err(err, errlen, "invalid token tenant");
            return TH_AUTH_INVALID;
        }
    }
    if (sub != NULL) {
        if (!json_is_string(sub) || json_string_length(sub) >= sizeof out->subject) {
            set_err(err, errlen, "invalid token subject");
            return TH_AUTH_INVALID;
        }
        sv = json_string_value(sub);
    }
    bool admin = json_is_string(role) && strcmp(json_string_value(role), "admin") == 0;

    out->authenticated = true;
    th_strlcpy(out->tenant, tv, sizeof out->tenant);
    th_strlcpy(out->role, admin ? "admin" : "user", sizeof out->role);
    th_strlcpy(out->subject, sv, sizeof out->subject);
    th_strlcpy(out->method, "jwt", sizeof out->method);
    return TH_AUTH_OK;
}

static th_auth_rc check_jwt(const th_auth *a, const char *tok, size_t len, int64_t now_s, th_identity *out,
                            char *err, size_t errlen)
{
    th_auth_rc rc = TH_AUTH_INVALID;
    const char *msg = "invalid token";
    uint8_t *hdr_raw = NULL, *claims_raw = NULL, *sig = NULL;
    size_t hdr_len = 0, claims_len = 0, sig_len = 0;
    json_t *hdr = NULL, *claims = NULL;
    char jerr[128];

    if (!a->jwt_enabled || len == 0 || len > TH_AUTH_MAX_TOKEN) goto out;
    const char *d1 = memchr(tok, '.', len);
    if (d1 == NULL) goto out;
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok));
    if (d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - tok)) != NULL) goto out;
    size_t n1 = (size_t)(d1 - tok), n2 = (size_t)(d2 - d1 - 1), n3 = len - (size_t)(d2 + 1 - tok);
    if (n1 == 0 || n2 == 0) goto out;
    if (n3 == 0) { /* an unsecured JWS (alg none) */
        msg = "unsupported token algorithm";
        goto out;
    }
    if (decode_segment(tok, n1, &hdr_raw, &hdr_len) != 0) goto out;
    hdr = th_json_parse_bounded(hdr_raw, hdr_len, TH_AUTH_JSON_DEPTH, jerr, sizeof jerr);
    if (!json_is_object(hdr)) goto out;
    const json_t *alg = json_object_get(hdr, "alg");
    if (!json_is_string(alg) || strcmp(json_string_value(alg), a->alg) != 0) {
        msg = "unsupported token algorithm";
        goto out;
    }
    const json_t *typ = json_object_get(hdr, "typ");
    if ((typ != NULL && !json_is_string(typ)) || json_object_get(hdr, "crit") != NULL) goto out;

    if (decode_segment(d2 + 1, n3, &sig, &sig_len) != 0) goto out;
    size_t signed_len = (size_t)(d2 - tok);
    bool ok = a->kind == KIND_HS ? verify_hs(a, tok, signed_len, sig, sig_len)
                                 : verify_pk(a, tok, signed_len, sig, sig_len);
    if (!ok) {
        msg = "invalid token signature";
        goto out;
    }

    if (decode_segment(d1 + 1, n2, &claims_raw, &claims_len) != 0) goto out;
    claims = th_json_parse_bounded(claims_raw, claims_len, TH_AUTH_JSON_DEPTH, jerr, sizeof jerr);
    if (!json_is_object(claims)) {
        msg = "invalid token claims";
        goto out;
    }
    rc = check_claims(a, claims, now_s, out, err, errlen);
    msg = NULL;
out:
    if (msg) set_err(err, errlen, msg);
    json_decref(hdr);
    json_decref(claims);
    free(hdr_raw);
    free(claims_raw);
    free(sig);
    return rc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Requests */

static bool ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Trims optional whitespace; returns false when nothing is left. At most max + 64 bytes are scanned: a
 * longer value comes back untrimmed with *len = max + 1 (too long, whatever its whitespace). */
static bool trimmed(const char *v, size_t max, const char **s, size_t *len)
{
    if (v == NULL) return false;
    size_t n = strnlen(v, max + 64);
    if (n == max + 64) {
        *s = v;
        *len = max + 1;
        return true;
    }
    while (n && ows(*v))
        v++, n--;
    while (n && ows(v[n - 1]))
        n--;
    if (n > max) n = max + 1;
    *s = v;
    *len = n;
    return n > 0;
}

static size_t count_dots(const char *s, size_t n)
{
    size_t dots = 0;
    for (size_t i = 0; i < n; i++)
        dots += s[i] == '.';
    return dots;
}

th_auth_rc th_auth_check(const th_auth *a, const char *authorization, const char *x_api_key, int64_t now_s,
                         th_identity *out, char *err, size_t errlen)
{
    th_identity id = {0};
    th_strlcpy(id.role, "user", sizeof id.role);
    th_strlcpy(id.method, "none", sizeof id.method);
    set_err(err, errlen, "");
    if (out) *out = id;
    if (a == NULL || out == NULL) {
        set_err(err, errlen, "authentication unavailable");
        return TH_AUTH_INVALID;
    }
    if (a->mode == MODE_NONE) return TH_AUTH_OK;

    const size_t max_len = TH_AUTH_MAX_TOKEN > TH_AUTH_MAX_KEY ? TH_AUTH_MAX_TOKEN : TH_AUTH_MAX_KEY;
    const char *bearer = NULL, *key = NULL, *av = NULL;
    size_t bearer_len = 0, key_len = 0, alen = 0;
    bool has_auth = trimmed(authorization, max_len + 16, &av, &alen);
    bool has_key = trimmed(x_api_key, max_len, &key, &key_len);
    bool is_bearer = false;
    if (has_auth && alen >= 6 && th_strn_ieq(av, 6, "bearer") && (alen == 6 || ows(av[6]))) {
        is_bearer = true;
        trimmed(av + 6, max_len, &bearer, &bearer_len);
    }

    th_auth_rc rc;
    if (is_bearer) {
        bool as_jwt = a->mode == MODE_JWT || (a->mode == MODE_ANY && bearer_len <= TH_AUTH_MAX_TOKEN &&
                                              count_dots(bearer, bearer_len) == 2);
        if (bearer_len == 0) {
            set_err(err, errlen, "invalid Authorization header");
            rc = TH_AUTH_INVALID;
        } else if (as_jwt) {
            rc = check_jwt(a, bearer, bearer_len, now_s, &id, err, errlen);
        } else {
            rc = check_key(a, bearer, bearer_len, &id, err, errlen);
        }
    } else if (has_key) {
        if (a->mode == MODE_JWT) {
            set_err(err, errlen, "API keys are not accepted; use a bearer token");
            rc = TH_AUTH_INVALID;
        } else {
            rc = check_key(a, key, key_len, &id, err, errlen);
        }
    } else if (has_auth) {
        set_err(err, errlen, "unsupported Authorization scheme; use Bearer");
        rc = TH_AUTH_INVALID;
    } else {
        set_err(err, errlen, "missing credentials");
        rc = TH_AUTH_MISSING;
    }
    if (rc == TH_AUTH_OK) *out = id;
    return rc;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Tenants and roles */

static bool any_glob(char *const *patterns, size_t n, const char *s)
{
    if (s == NULL) return false;
    for (size_t i = 0; i < n; i++)
        if (patterns[i] && th_glob_match(patterns[i], s)) return true;
    return false;
}

bool th_auth_voice_allowed(const th_tenant_conf *t, const char *voice)
{
    if (t == NULL) return voice != NULL;
    return any_glob(t->voices, t->n_voices, voice);
}

bool th_auth_provider_allowed(const th_tenant_conf *t, const char *provider)
{
    if (t == NULL) return provider != NULL;
    return any_glob(t->providers, t->n_providers, provider);
}

bool th_auth_is_admin(const th_identity *id)
{
    return id != NULL && id->authenticated && strcmp(id->role, "admin") == 0;
}
