/* Unit tests of src/governance/auth.c: the auth matrix for API keys and JWTs (HS256, RS256, ES256), modes,
 * malformed input, tenant voice/provider globs and admin detection. Tokens are made here with OpenSSL. */
#include "th_test.h"

#include "governance/auth.h"
#include "config/config.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOW ((int64_t)1700000000)
#define SECRET "0123456789abcdef0123456789abcdef-test-secret"
#define SECRET_ENV "TTSHUB_TEST_JWT_SECRET"

/* ------------------------------------------------------------------------------------------------ */
/* Helpers */

static th_config *P(const char *yaml)
{
    th_config_errors e = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &e);
    for (size_t i = 0; i < e.n; i++)
        fprintf(stderr, "    config %d: %s: %s\n", e.items[i].line, e.items[i].path, e.items[i].message);
    th_config_errors_free(&e);
    return c;
}

/* An auth checker from YAML (the config is released: th_auth keeps copies). */
static th_auth *A(const char *yaml)
{
    th_config *c = P(yaml);
    if (c == NULL) return NULL;
    char err[256];
    th_auth *a = th_auth_new(c, err, sizeof err);
    if (a == NULL) fprintf(stderr, "    th_auth_new: %s\n", err);
    th_config_unref(c);
    return a;
}

static void b64url(const uint8_t *in, size_t n, char *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = tbl[(v >> 6) & 63];
        if (i + 2 < n) out[o++] = tbl[v & 63];
    }
    out[o] = 0;
}

/* "b64(header).b64(claims)" into out (large enough). */
static void signing_input(const char *header, const char *claims, char *out)
{
    b64url((const uint8_t *)header, strlen(header), out);
    size_t n = strlen(out);
    out[n++] = '.';
    b64url((const uint8_t *)claims, strlen(claims), out + n);
}

static void append(char *dst, const char *s)
{
    size_t n = strlen(dst);
    memcpy(dst + n, s, strlen(s) + 1);
}

static void append_sig(char *tok, const uint8_t *sig, size_t siglen)
{
    size_t n = strlen(tok);
    tok[n++] = '.';
    b64url(sig, siglen, tok + n);
}

/* An HMAC token: header and claims are JSON text. */
static void hs_token(const EVP_MD *md, const char *secret, const char *header, const char *claims, char *tok)
{
    signing_input(header, claims, tok);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(md, secret, (int)strlen(secret), (const uint8_t *)tok, strlen(tok), mac, &maclen);
    append_sig(tok, mac, maclen);
}

static void hs256(const char *claims, char *tok)
{
    hs_token(EVP_sha256(), SECRET, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims, tok);
}

/* A token signed with pkey (RSA: PKCS#1 v1.5; EC: DER converted to raw r||s of clen bytes each). */
static bool pk_token(EVP_PKEY *pkey, const EVP_MD *md, const char *header, const char *claims, size_t clen,
                     char *tok)
{
    signing_input(header, claims, tok);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint8_t sig[1024];
    size_t siglen = sizeof sig;
    bool ok = ctx && EVP_DigestSignInit(ctx, NULL, md, NULL, pkey) == 1 &&
              EVP_DigestSign(ctx, sig, &siglen, (const uint8_t *)tok, strlen(tok)) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) return false;
    if (clen == 0) {
        append_sig(tok, sig, siglen);
        return true;
    }
    const uint8_t *p = sig;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
    if (es == NULL) return false;
    uint8_t raw[200];
    ok = BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)clen) == (int)clen &&
         BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + clen, (int)clen) == (int)clen;
    ECDSA_SIG_free(es);
    if (ok) append_sig(tok, raw, 2 * clen);
    return ok;
}

/* Writes the public half of pkey as PEM into a new temp file; path must hold 64 bytes. */
static bool write_pubkey(EVP_PKEY *pkey, char *path)
{
    snprintf(path, 64, "/tmp/th_auth_pub_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return false;
    close(fd);
    BIO *bio = BIO_new_file(path, "w");
    bool ok = bio && PEM_write_bio_PUBKEY(bio, pkey) == 1;
    BIO_free(bio);
    return ok;
}

static th_auth_rc CHECK(const th_auth *a, const char *authz, const char *xkey, th_identity *id)
{
    char err[128];
    th_auth_rc rc = th_auth_check(a, authz, xkey, NOW, id, err, sizeof err);
    if (rc != TH_AUTH_OK && err[0] == '\0') return (th_auth_rc)99; /* every failure says something */
    return rc;
}

static th_auth_rc CHECK_MSG(const th_auth *a, const char *authz, char *err, size_t errlen)
{
    th_identity id;
    return th_auth_check(a, authz, NULL, NOW, &id, err, errlen);
}

static char *bearer(const char *tok)
{
    size_t n = strlen(tok);
    char *s = malloc(n + 8);
    if (s == NULL) abort();
    memcpy(s, "Bearer ", 7);
    memcpy(s + 7, tok, n + 1);
    return s;
}

/* Keys: "alpha-key" -> acme/user, "admin-key" -> acme/admin, "beta-key" -> beta/user. */
static char yaml_keys[2048];

static const char *keys_yaml(const char *mode)
{
    char h1[65], h2[65], h3[65];
    th_auth_hash_key("alpha-key", 9, h1);
    th_auth_hash_key("admin-key", 9, h2);
    th_auth_hash_key("beta-key", 8, h3);
    snprintf(yaml_keys, sizeof yaml_keys,
             "auth:\n"
             "  mode: %s\n"
             "  keys:\n"
             "    - { id: k1, sha256: \"%s\", tenant: acme, role: user }\n"
             "    - { id: k2, sha256: \"%s\", tenant: acme, role: admin }\n"
             "    - { id: k3, sha256: \"%s\", tenant: beta }\n"
             "  jwt: { alg: HS256, secret_env: " SECRET_ENV ", issuer: \"https://issuer.example\", "
             "audience: ttshub, tenant_claim: org, role_claim: ttshub_role, require_exp: false }\n"
             "tenants:\n"
             "  acme: { voices: [\"alloy\", \"en-*\"], providers: [\"local\"] }\n"
             "  beta: {}\n",
             mode, h1, h2, h3);
    return yaml_keys;
}

static const char *const GOOD_CLAIMS =
    "{\"sub\":\"user-7\",\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\","
    "\"exp\":1700003600,\"iat\":1700000000,\"org\":\"acme\"}";

/* ------------------------------------------------------------------------------------------------ */
/* Hashing and mode none */

TH_TEST(hash_key_is_sha256_hex)
{
    char h[65];
    th_auth_hash_key("abc", 3, h);
    TH_CHECK_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    th_auth_hash_key("", 0, h);
    TH_CHECK_STR(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TH_TEST(mode_none_is_anonymous)
{
    th_auth *a = A("auth: { mode: none }\n");
    TH_REQUIRE(a != NULL);
    th_identity id;
    TH_CHECK_INT(CHECK(a, NULL, NULL, &id), TH_AUTH_OK);
    TH_CHECK(!id.authenticated);
    TH_CHECK_STR(id.tenant, "");
    TH_CHECK_STR(id.role, "user");
    TH_CHECK_STR(id.method, "none");
    TH_CHECK(!th_auth_is_admin(&id));
    TH_CHECK_INT(CHECK(a, "Bearer whatever", "x", &id), TH_AUTH_OK);
    TH_CHECK_STR(id.role, "user");
    th_auth_free(a);

    th_config *c = th_config_default();
    TH_REQUIRE(c != NULL);
    char err[128];
    a = th_auth_new(c, err, sizeof err);
    TH_CHECK(a != NULL);
    TH_CHECK_INT(CHECK(a, NULL, NULL, &id), TH_AUTH_OK);
    th_auth_free(a);
    th_config_unref(c);
}

/* ------------------------------------------------------------------------------------------------ */
/* API keys */

TH_TEST(key_matrix)
{
    th_auth *a = A(keys_yaml("api_key"));
    TH_REQUIRE(a != NULL);
    th_identity id;
    char err[128];

    TH_CHECK_INT(CHECK(a, NULL, NULL, &id), TH_AUTH_MISSING);
    TH_CHECK_INT(CHECK(a, "", "", &id), TH_AUTH_MISSING);
    TH_CHECK_INT(CHECK(a, "   ", NULL, &id), TH_AUTH_MISSING);
    TH_CHECK_INT(CHECK(a, "Bearer wrong-key", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK_MSG(a, "Bearer wrong-key", err, sizeof err), TH_AUTH_INVALID);
    TH_CHECK_STR(err, "invalid API key");
    TH_CHECK_INT(CHECK(a, "Bearer alpha-ke", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Bearer alpha-key2", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Bearer ", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Bearer", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Basic YWxwaGEta2V5", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Bearer: alpha-key", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Beareralpha-key", NULL, &id), TH_AUTH_INVALID);

    TH_CHECK_INT(CHECK(a, "Bearer alpha-key", NULL, &id), TH_AUTH_OK);
    TH_CHECK(id.authenticated);
    TH_CHECK_STR(id.tenant, "acme");
    TH_CHECK_STR(id.role, "user");
    TH_CHECK_STR(id.subject, "k1");
    TH_CHECK_STR(id.method, "key");
    TH_CHECK(!th_auth_is_admin(&id));

    /* scheme case-insensitive, extra whitespace tolerated */
    TH_CHECK_INT(CHECK(a, "bearer alpha-key", NULL, &id), TH_AUTH_OK);
    TH_CHECK_INT(CHECK(a, "BEARER \t alpha-key  ", NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.subject, "k1");

    /* X-API-Key */
    TH_CHECK_INT(CHECK(a, NULL, "admin-key", &id), TH_AUTH_OK);
    TH_CHECK_STR(id.tenant, "acme");
    TH_CHECK_STR(id.role, "admin");
    TH_CHECK_STR(id.subject, "k2");
    TH_CHECK(th_auth_is_admin(&id));
    TH_CHECK_INT(CHECK(a, NULL, "nope", &id), TH_AUTH_INVALID);
    /* a non-Bearer Authorization (from a proxy, say) does not hide X-API-Key */
    TH_CHECK_INT(CHECK(a, "Basic Zm9vOmJhcg==", "alpha-key", &id), TH_AUTH_OK);
    TH_CHECK_STR(id.subject, "k1");
    /* Bearer wins over X-API-Key */
    TH_CHECK_INT(CHECK(a, "Bearer wrong", "alpha-key", &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Bearer beta-key", "alpha-key", &id), TH_AUTH_OK);

    /* a key of another tenant gets that tenant (the API layer turns a mismatch into 403); default role */
    TH_CHECK_INT(CHECK(a, "Bearer beta-key", NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.tenant, "beta");
    TH_CHECK_STR(id.role, "user");
    TH_CHECK_STR(id.subject, "k3");

    /* in mode api_key a JWT-looking bearer is just a (wrong) key */
    char tok[4096];
    hs256(GOOD_CLAIMS, tok);
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK_MSG(a, b, err, sizeof err), TH_AUTH_INVALID);
    TH_CHECK_STR(err, "invalid API key");
    free(b);

    /* a failed check leaves an anonymous identity */
    TH_CHECK_INT(CHECK(a, "Bearer wrong", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK(!id.authenticated);
    TH_CHECK_STR(id.tenant, "");
    TH_CHECK_STR(id.role, "user");
    th_auth_free(a);
}

TH_TEST(key_length_bounds)
{
    th_auth *a = A(keys_yaml("api_key"));
    TH_REQUIRE(a != NULL);
    th_identity id;
    size_t n = 100000;
    char *big = malloc(n + 8);
    TH_REQUIRE(big != NULL);
    memcpy(big, "Bearer ", 7);
    memset(big + 7, 'k', n);
    big[n + 7] = 0;
    TH_CHECK_INT(CHECK(a, big, NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, NULL, big + 7, &id), TH_AUTH_INVALID);
    /* whitespace padding does not make a long value short */
    memcpy(big + 7, "alpha-key", 9);
    memset(big + 16, ' ', n - 9);
    TH_CHECK_INT(CHECK(a, big, NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, NULL, big + 7, &id), TH_AUTH_INVALID);
    big[7 + 513] = 0; /* "alpha-key" + spaces, 513 bytes before trimming: fine, trimmed it is 9 */
    TH_CHECK_INT(CHECK(a, big, NULL, &id), TH_AUTH_OK);
    free(big);

    /* a 512-byte key works, 513 does not */
    char k512[514], hash[65], yaml[1024];
    memset(k512, 'z', 513);
    k512[512] = 0;
    th_auth_hash_key(k512, 512, hash);
    snprintf(yaml, sizeof yaml, "auth:\n  mode: api_key\n  keys:\n    - { id: long, sha256: \"%s\" }\n",
             hash);
    th_auth *b = A(yaml);
    TH_REQUIRE(b != NULL);
    TH_CHECK_INT(CHECK(b, NULL, k512, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.tenant, "");
    k512[512] = 'z';
    k512[513] = 0;
    TH_CHECK_INT(CHECK(b, NULL, k512, &id), TH_AUTH_INVALID);
    th_auth_free(b);
    th_auth_free(a);
}

TH_TEST(key_upper_case_hash_in_config)
{
    char h[65], yaml[512];
    th_auth_hash_key("Secret-1", 8, h);
    for (char *p = h; *p; p++)
        if (*p >= 'a' && *p <= 'f') *p = (char)(*p - 32);
    snprintf(yaml, sizeof yaml,
             "auth:\n  mode: api_key\n  keys:\n    - { id: up, sha256: \"%s\", tenant: t }\n", h);
    th_auth *a = A(yaml);
    TH_REQUIRE(a != NULL);
    th_identity id;
    TH_CHECK_INT(CHECK(a, "Bearer Secret-1", NULL, &id), TH_AUTH_OK);
    TH_CHECK_INT(CHECK(a, "Bearer secret-1", NULL, &id), TH_AUTH_INVALID);
    th_auth_free(a);
}

/* ------------------------------------------------------------------------------------------------ */
/* JWT HS256 */

TH_TEST(jwt_hs256_good)
{
    setenv(SECRET_ENV, SECRET, 1);
    th_auth *a = A(keys_yaml("jwt"));
    TH_REQUIRE(a != NULL);
    char tok[4096];
    th_identity id;
    hs256(GOOD_CLAIMS, tok);
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK(id.authenticated);
    TH_CHECK_STR(id.tenant, "acme");
    TH_CHECK_STR(id.role, "user");
    TH_CHECK_STR(id.subject, "user-7");
    TH_CHECK_STR(id.method, "jwt");
    TH_CHECK(!th_auth_is_admin(&id));
    free(b);

    /* no typ; aud as an array; non-integer exp; role claim */
    hs_token(EVP_sha256(), SECRET, "{\"alg\":\"HS256\"}",
             "{\"iss\":\"https://issuer.example\",\"aud\":[\"other\",\"ttshub\"],\"exp\":1700000100.5,"
             "\"ttshub_role\":\"admin\",\"org\":\"beta\"}",
             tok);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.tenant, "beta");
    TH_CHECK_STR(id.role, "admin");
    TH_CHECK_STR(id.subject, "");
    TH_CHECK(th_auth_is_admin(&id));
    free(b);

    /* no tenant claim -> default tenant; unknown role -> user; role of another type -> user */
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"ttshub_role\":\"root\"}", tok);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.tenant, "");
    TH_CHECK_STR(id.role, "user");
    free(b);
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"ttshub_role\":[\"admin\"]}", tok);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.role, "user");
    free(b);
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"ttshub_role\":\"Admin\"}", tok);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.role, "user");
    free(b);
    /* the default claim name "role" is not the configured one */
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"role\":\"admin\",\"tenant\":\"beta\"}",
          tok);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.role, "user");
    TH_CHECK_STR(id.tenant, "");
    free(b);

    /* keys are not accepted in mode jwt */
    TH_CHECK_INT(CHECK(a, NULL, "alpha-key", &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, "Bearer alpha-key", NULL, &id), TH_AUTH_INVALID);
    TH_CHECK_INT(CHECK(a, NULL, NULL, &id), TH_AUTH_MISSING);
    th_auth_free(a);
}

TH_TEST(jwt_hs256_rejections)
{
    setenv(SECRET_ENV, SECRET, 1);
    th_auth *a = A(keys_yaml("jwt"));
    TH_REQUIRE(a != NULL);
    char tok[4096], err[128];
    char *b;
#define EXPECT_TOK(expr_rc, expected_msg)                                                                    \
    do {                                                                                                     \
        b = bearer(tok);                                                                                     \
        TH_CHECK_INT(CHECK_MSG(a, b, err, sizeof err), expr_rc);                                             \
        if (expected_msg) TH_CHECK_STR(err, (const char *)expected_msg);                                     \
        free(b);                                                                                             \
    } while (0)

    /* alg none, with and without a signature */
    signing_input("{\"alg\":\"none\",\"typ\":\"JWT\"}", GOOD_CLAIMS, tok);
    append(tok, ".");
    EXPECT_TOK(TH_AUTH_INVALID, "unsupported token algorithm");
    signing_input("{\"alg\":\"none\"}", GOOD_CLAIMS, tok);
    append_sig(tok, (const uint8_t *)"xx", 2);
    EXPECT_TOK(TH_AUTH_INVALID, "unsupported token algorithm");
    /* alg HS512 (validly signed with the same secret) when HS256 is configured */
    hs_token(EVP_sha512(), SECRET, "{\"alg\":\"HS512\",\"typ\":\"JWT\"}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "unsupported token algorithm");
    /* alg spelled differently, or not a string, or absent */
    hs_token(EVP_sha256(), SECRET, "{\"alg\":\"hs256\"}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "unsupported token algorithm");
    hs_token(EVP_sha256(), SECRET, "{\"alg\":256}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "unsupported token algorithm");
    hs_token(EVP_sha256(), SECRET, "{\"typ\":\"JWT\"}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "unsupported token algorithm");
    /* crit, non-string typ, duplicate members, header not an object */
    hs_token(EVP_sha256(), SECRET, "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token");
    hs_token(EVP_sha256(), SECRET, "{\"alg\":\"HS256\",\"typ\":1}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token");
    hs_token(EVP_sha256(), SECRET, "{\"alg\":\"HS256\",\"alg\":\"HS256\"}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token");
    hs_token(EVP_sha256(), SECRET, "[\"HS256\"]", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token");

    /* bad signature: other secret; one flipped character; truncated; signature of other claims */
    hs_token(EVP_sha256(), "another-secret", "{\"alg\":\"HS256\"}", GOOD_CLAIMS, tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token signature");
    hs256(GOOD_CLAIMS, tok);
    size_t n = strlen(tok);
    tok[n - 2] = tok[n - 2] == 'A' ? 'B' : 'A';
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token signature");
    hs256(GOOD_CLAIMS, tok);
    tok[strlen(tok) - 3] = 0; /* 43 -> 40 characters: 30 bytes, canonical */
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token signature");
    {
        char other[4096];
        hs256("{\"iss\":\"https://"
              "issuer.example\",\"aud\":\"ttshub\",\"org\":\"acme\",\"ttshub_role\":\"user\"}",
              other);
        hs256("{\"iss\":\"https://"
              "issuer.example\",\"aud\":\"ttshub\",\"org\":\"acme\",\"ttshub_role\":\"admin\"}",
              tok);
        /* splice: claims of tok (admin) with the signature of other */
        char *sig_other = strrchr(other, '.');
        char *sig_tok = strrchr(tok, '.');
        memcpy(sig_tok, sig_other, strlen(sig_other) + 1);
        EXPECT_TOK(TH_AUTH_INVALID, "invalid token signature");
    }

    /* time */
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"exp\":1699999000}", tok);
    EXPECT_TOK(TH_AUTH_EXPIRED, "token expired");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"exp\":1699999970}", tok); /* now - 30 */
    EXPECT_TOK(TH_AUTH_EXPIRED, "token expired");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"exp\":1699999971}", tok); /* leeway */
    EXPECT_TOK(TH_AUTH_OK, NULL);
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"nbf\":1700000600}", tok);
    EXPECT_TOK(TH_AUTH_NOT_YET, "token not yet valid");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"nbf\":1700000030}", tok); /* leeway */
    EXPECT_TOK(TH_AUTH_OK, NULL);
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"nbf\":1700000031}", tok);
    EXPECT_TOK(TH_AUTH_NOT_YET, "token not yet valid");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"iat\":1700086400}", tok);
    EXPECT_TOK(TH_AUTH_NOT_YET, "token not yet valid");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"exp\":\"1800000000\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token claims");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"nbf\":null}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token claims");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"exp\":1e300}", tok);
    EXPECT_TOK(TH_AUTH_OK, NULL);

    /* audience and issuer */
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"other\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "token audience mismatch");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":[\"a\",\"b\"]}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "token audience mismatch");
    hs256("{\"iss\":\"https://issuer.example\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "token audience mismatch");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshubx\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "token audience mismatch");
    hs256("{\"iss\":\"https://evil.example\",\"aud\":\"ttshub\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "token issuer mismatch");
    hs256("{\"aud\":\"ttshub\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "token issuer mismatch");

    /* tenant claim: unknown tenant, wrong type, too long; sub of the wrong type */
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"org\":\"gamma\"}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token tenant");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"org\":7}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token tenant");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"org\":"
          "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
          tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token tenant");
    hs256("{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"sub\":42}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token subject");
    /* claims not an object / not JSON (validly signed) */
    hs256("[1,2]", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token claims");
    hs256("{\"a\":", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token claims");
    hs256("{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", tok);
    EXPECT_TOK(TH_AUTH_INVALID, "invalid token claims");
#undef EXPECT_TOK
    th_auth_free(a);
}

TH_TEST(jwt_malformed)
{
    setenv(SECRET_ENV, SECRET, 1);
    th_auth *a = A(keys_yaml("jwt"));
    TH_REQUIRE(a != NULL);
    th_identity id;
    char tok[4096], bad[4200];
    hs256(GOOD_CLAIMS, tok);
    const char *cases[] = {
        "Bearer a.b",
        "Bearer a.b.c.d",
        "Bearer ..",
        "Bearer .eyJ9.abc",
        "Bearer eyJhbGciOiJIUzI1NiJ9..abc",
        "Bearer !!!.???.***",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30=.abc", /* padding */
        "Bearer eyJhbGciOiJIUzI1NiJ9=.e30.abc", /* padding */
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.a",    /* impossible length */
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ab+/", /* base64, not base64url */
        "Bearer eyJhbGciOiJIUzI1NiJ8.e30.abcd", /* non-zero unused bits */
        "Bearer e30.e30.abcd",                  /* header without alg */
        "Bearer bm90IGpzb24.e30.abcd",          /* header not JSON */
        "Bearer not-a-jwt-at-all",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        th_auth_rc rc = CHECK(a, cases[i], NULL, &id);
        if (rc != TH_AUTH_INVALID) fprintf(stderr, "    case %zu: %s -> %d\n", i, cases[i], (int)rc);
        TH_CHECK_INT(rc, TH_AUTH_INVALID);
    }
    /* a good token with a space, NUL-free garbage or padding spliced in */
    snprintf(bad, sizeof bad, "Bearer %s=", tok);
    TH_CHECK_INT(CHECK(a, bad, NULL, &id), TH_AUTH_INVALID);
    snprintf(bad, sizeof bad, "Bearer %s", tok);
    char *dot = strchr(bad, '.');
    dot[1] = ' ';
    TH_CHECK_INT(CHECK(a, bad, NULL, &id), TH_AUTH_INVALID);

    /* huge tokens: over 8 KiB (even with a valid prefix) */
    size_t n = 64 * 1024;
    char *huge = malloc(n + 8);
    TH_REQUIRE(huge != NULL);
    memcpy(huge, "Bearer ", 7);
    memset(huge + 7, 'A', n);
    huge[7 + 100] = '.';
    huge[7 + 200] = '.';
    huge[n + 7] = 0;
    TH_CHECK_INT(CHECK(a, huge, NULL, &id), TH_AUTH_INVALID);
    /* a signed token of over 8 KiB */
    {
        size_t pad = 9000;
        char *claims = malloc(pad + 200);
        char *big = malloc(2 * pad + 1000);
        TH_REQUIRE(claims != NULL && big != NULL);
        snprintf(claims, pad + 200, "{\"iss\":\"https://issuer.example\",\"aud\":\"ttshub\",\"x\":\"");
        size_t cl = strlen(claims);
        memset(claims + cl, 'x', pad);
        memcpy(claims + cl + pad, "\"}", 3);
        hs256(claims, big);
        char *b = bearer(big);
        TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
        free(b);
        free(claims);
        free(big);
    }
    free(huge);
    /* the good token still passes (nothing above changed state) */
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    free(b);
    th_auth_free(a);
}

TH_TEST(jwt_setup_errors)
{
    char err[256];
    /* mode jwt with the secret's variable unset: th_auth_new fails */
    unsetenv("TTSHUB_TEST_UNSET_SECRET");
    th_config *c = P("auth:\n  mode: jwt\n  jwt: { alg: HS256, secret_env: TTSHUB_TEST_UNSET_SECRET }\n");
    TH_REQUIRE(c != NULL);
    TH_CHECK(th_auth_new(c, err, sizeof err) == NULL);
    TH_CHECK(strstr(err, "secret_env") != NULL);
    th_config_unref(c);
    /* RS256 with a missing file */
    c = P("auth:\n  mode: jwt\n  jwt: { alg: RS256, public_key_file: /nonexistent/key.pem }\n");
    TH_REQUIRE(c != NULL);
    TH_CHECK(th_auth_new(c, err, sizeof err) == NULL);
    TH_CHECK(strstr(err, "public_key_file") != NULL);
    th_config_unref(c);
    /* RS256 with a file that is not a key */
    c = P("auth:\n  mode: jwt\n  jwt: { alg: RS256, public_key_file: /etc/hostname }\n");
    TH_REQUIRE(c != NULL);
    TH_CHECK(th_auth_new(c, err, sizeof err) == NULL);
    th_config_unref(c);
}

/* ------------------------------------------------------------------------------------------------ */
/* RS256 and ES256 */

TH_TEST(jwt_rs256)
{
    setenv(SECRET_ENV, SECRET, 1);
    EVP_PKEY *key = EVP_RSA_gen(2048), *other = EVP_RSA_gen(2048);
    TH_REQUIRE(key != NULL && other != NULL);
    char path[64], yaml[512], tok[4096];
    TH_REQUIRE(write_pubkey(key, path));
    snprintf(yaml, sizeof yaml,
             "auth:\n  mode: jwt\n  jwt: { alg: RS256, public_key_file: \"%s\", audience: ttshub }\n", path);
    th_auth *a = A(yaml);
    TH_REQUIRE(a != NULL);
    th_identity id;
    const char *claims =
        "{\"sub\":\"svc\",\"aud\":\"ttshub\",\"exp\":1700000600,\"tenant\":\"acme\",\"role\":\"admin\"}";

    TH_CHECK(pk_token(key, EVP_sha256(), "{\"alg\":\"RS256\",\"typ\":\"JWT\"}", claims, 0, tok));
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.subject, "svc");
    TH_CHECK_STR(id.tenant, "acme"); /* no tenants declared: any tenant is taken as is */
    TH_CHECK_STR(id.role, "admin");
    TH_CHECK(th_auth_is_admin(&id));
    free(b);

    /* signed by another key */
    TH_CHECK(pk_token(other, EVP_sha256(), "{\"alg\":\"RS256\"}", claims, 0, tok));
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
    free(b);
    /* tampered claims */
    TH_CHECK(pk_token(key, EVP_sha256(), "{\"alg\":\"RS256\"}", claims, 0, tok));
    {
        char forged[4096];
        signing_input("{\"alg\":\"RS256\"}", "{\"sub\":\"svc\",\"aud\":\"ttshub\",\"tenant\":\"beta\"}",
                      forged);
        append(forged, strrchr(tok, '.'));
        b = bearer(forged);
        TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
        free(b);
    }
    /* RS512 signature when RS256 is configured */
    TH_CHECK(pk_token(key, EVP_sha512(), "{\"alg\":\"RS512\"}", claims, 0, tok));
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
    free(b);
    /* key confusion: HS256 token whose HMAC key is the public key PEM */
    {
        FILE *f = fopen(path, "r");
        TH_REQUIRE(f != NULL);
        char pem[4096];
        size_t pn = fread(pem, 1, sizeof pem - 1, f);
        fclose(f);
        pem[pn] = 0;
        hs_token(EVP_sha256(), pem, "{\"alg\":\"HS256\"}", claims, tok);
        b = bearer(tok);
        TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
        free(b);
    }
    /* expired (validly signed) */
    TH_CHECK(pk_token(key, EVP_sha256(), "{\"alg\":\"RS256\"}", "{\"aud\":\"ttshub\",\"exp\":1600000000}", 0,
                      tok));
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_EXPIRED);
    free(b);
    th_auth_free(a);

    /* an RS256 token presented to an HS256 config -> INVALID */
    th_auth *h = A(keys_yaml("jwt"));
    TH_REQUIRE(h != NULL);
    TH_CHECK(pk_token(key, EVP_sha256(), "{\"alg\":\"RS256\"}", GOOD_CLAIMS, 0, tok));
    b = bearer(tok);
    char err[128];
    TH_CHECK_INT(CHECK_MSG(h, b, err, sizeof err), TH_AUTH_INVALID);
    TH_CHECK_STR(err, "unsupported token algorithm");
    free(b);
    th_auth_free(h);

    /* an RS256 config given an EC key, or a short RSA key, fails to start */
    EVP_PKEY *ec = EVP_EC_gen("prime256v1");
    EVP_PKEY *small = EVP_RSA_gen(1024);
    TH_REQUIRE(ec != NULL && small != NULL);
    char p2[64];
    TH_REQUIRE(write_pubkey(ec, p2));
    snprintf(yaml, sizeof yaml, "auth:\n  mode: jwt\n  jwt: { alg: RS256, public_key_file: \"%s\" }\n", p2);
    TH_CHECK(A(yaml) == NULL);
    unlink(p2);
    char p3[64];
    TH_REQUIRE(write_pubkey(small, p3));
    snprintf(yaml, sizeof yaml, "auth:\n  mode: jwt\n  jwt: { alg: RS256, public_key_file: \"%s\" }\n", p3);
    TH_CHECK(A(yaml) == NULL);
    unlink(p3);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(small);

    unlink(path);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

TH_TEST(jwt_es256)
{
    EVP_PKEY *key = EVP_EC_gen("prime256v1"), *other = EVP_EC_gen("prime256v1");
    TH_REQUIRE(key != NULL && other != NULL);
    char path[64], yaml[512], tok[4096];
    TH_REQUIRE(write_pubkey(key, path));
    snprintf(yaml, sizeof yaml,
             "auth:\n  mode: jwt\n  jwt: { alg: ES256, public_key_file: \"%s\", require_exp: false }\n",
             path);
    th_auth *a = A(yaml);
    TH_REQUIRE(a != NULL);
    th_identity id;
    TH_CHECK(
        pk_token(key, EVP_sha256(), "{\"alg\":\"ES256\"}", "{\"sub\":\"e\",\"tenant\":\"t1\"}", 32, tok));
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.subject, "e");
    TH_CHECK_STR(id.tenant, "t1");
    free(b);
    TH_CHECK(pk_token(other, EVP_sha256(), "{\"alg\":\"ES256\"}", "{\"sub\":\"e\"}", 32, tok));
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
    free(b);
    /* DER signature instead of raw r||s */
    TH_CHECK(pk_token(key, EVP_sha256(), "{\"alg\":\"ES256\"}", "{\"sub\":\"e\"}", 0, tok));
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
    free(b);
    th_auth_free(a);
    unlink(path);
    EVP_PKEY_free(key);
    EVP_PKEY_free(other);
}

/* ------------------------------------------------------------------------------------------------ */
/* Mode any */

TH_TEST(mode_any_picks_the_path)
{
    setenv(SECRET_ENV, SECRET, 1);
    th_auth *a = A(keys_yaml("any"));
    TH_REQUIRE(a != NULL);
    th_identity id;
    char tok[4096], err[128];
    hs256(GOOD_CLAIMS, tok);
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.method, "jwt");
    TH_CHECK_STR(id.subject, "user-7");
    free(b);
    TH_CHECK_INT(CHECK(a, "Bearer admin-key", NULL, &id), TH_AUTH_OK);
    TH_CHECK_STR(id.method, "key");
    TH_CHECK_STR(id.role, "admin");
    TH_CHECK_INT(CHECK(a, NULL, "beta-key", &id), TH_AUTH_OK);
    TH_CHECK_STR(id.method, "key");
    TH_CHECK_STR(id.tenant, "beta");
    /* X-API-Key is always a key, even when it looks like a JWT */
    TH_CHECK_INT(CHECK(a, NULL, tok, &id), TH_AUTH_INVALID);
    /* two dots -> JWT path (its messages); otherwise the key path */
    TH_CHECK_INT(CHECK_MSG(a, "Bearer a.b.c", err, sizeof err), TH_AUTH_INVALID);
    TH_CHECK_STR(err, "invalid token");
    TH_CHECK_INT(CHECK_MSG(a, "Bearer a.b", err, sizeof err), TH_AUTH_INVALID);
    TH_CHECK_STR(err, "invalid API key");
    TH_CHECK_INT(CHECK(a, NULL, NULL, &id), TH_AUTH_MISSING);
    th_auth_free(a);

    /* mode any without a usable secret: keys still work, tokens are rejected */
    unsetenv(SECRET_ENV);
    a = A(keys_yaml("any"));
    TH_REQUIRE(a != NULL);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_INVALID);
    free(b);
    TH_CHECK_INT(CHECK(a, "Bearer alpha-key", NULL, &id), TH_AUTH_OK);
    th_auth_free(a);
    /* ...while mode jwt refuses to start */
    th_config *c = P(keys_yaml("jwt"));
    TH_REQUIRE(c != NULL);
    TH_CHECK(th_auth_new(c, err, sizeof err) == NULL);
    th_config_unref(c);
    setenv(SECRET_ENV, SECRET, 1);
}

/* ------------------------------------------------------------------------------------------------ */
/* Tenants and roles */

TH_TEST(tenant_globs)
{
    th_config *c = P(keys_yaml("api_key"));
    TH_REQUIRE(c != NULL);
    const th_tenant_conf *acme = th_config_tenant(c, "acme");
    const th_tenant_conf *beta = th_config_tenant(c, "beta");
    TH_REQUIRE(acme != NULL && beta != NULL);
    TH_CHECK(th_auth_voice_allowed(acme, "alloy"));
    TH_CHECK(th_auth_voice_allowed(acme, "en-us"));
    TH_CHECK(th_auth_voice_allowed(acme, "en-"));
    TH_CHECK(!th_auth_voice_allowed(acme, "echo"));
    TH_CHECK(!th_auth_voice_allowed(acme, "alloy2"));
    TH_CHECK(!th_auth_voice_allowed(acme, "fr-fr"));
    TH_CHECK(!th_auth_voice_allowed(acme, NULL));
    TH_CHECK(th_auth_provider_allowed(acme, "local"));
    TH_CHECK(!th_auth_provider_allowed(acme, "fm"));
    /* beta has the defaults ["*"] */
    TH_CHECK(th_auth_voice_allowed(beta, "anything"));
    TH_CHECK(th_auth_provider_allowed(beta, "fm"));
    /* no tenant conf: allowed */
    TH_CHECK(th_auth_voice_allowed(NULL, "x"));
    TH_CHECK(th_auth_provider_allowed(NULL, "x"));
    th_config_unref(c);

    /* an explicit empty list allows nothing; '?' matches one character */
    c = P("tenants:\n  t: { voices: [], providers: [\"p?\"] }\n");
    TH_REQUIRE(c != NULL);
    const th_tenant_conf *t = th_config_tenant(c, "t");
    TH_REQUIRE(t != NULL);
    TH_CHECK(!th_auth_voice_allowed(t, "alloy"));
    TH_CHECK(th_auth_provider_allowed(t, "p1"));
    TH_CHECK(!th_auth_provider_allowed(t, "p12"));
    th_config_unref(c);
}

/* auth.jwt.require_exp (default true) refuses a token without exp; HS secrets need 32 bytes */
TH_TEST(jwt_require_exp_and_secret_length)
{
    setenv(SECRET_ENV, SECRET, 1);
    th_auth *a = A("auth:\n  mode: jwt\n  jwt: { alg: HS256, secret_env: " SECRET_ENV " }\n");
    TH_REQUIRE(a != NULL);
    char tok[4096], err[128];
    th_identity id;
    hs256("{\"sub\":\"x\"}", tok);
    char *b = bearer(tok);
    TH_CHECK_INT(CHECK_MSG(a, b, err, sizeof err), TH_AUTH_INVALID);
    TH_CHECK_STR(err, "the token has no exp claim");
    free(b);
    hs256("{\"sub\":\"x\",\"exp\":1800000000}", tok);
    b = bearer(tok);
    TH_CHECK_INT(CHECK(a, b, NULL, &id), TH_AUTH_OK);
    free(b);
    th_auth_free(a);
    setenv(SECRET_ENV, "only-31-bytes-of-secret-1234567", 1);
    char e2[256] = "";
    th_config_errors errs = {0};
    const char *y = "auth:\n  mode: jwt\n  jwt: { alg: HS256, secret_env: " SECRET_ENV " }\n";
    th_config *cfg = th_config_parse(y, strlen(y), &errs);
    TH_REQUIRE(cfg != NULL);
    TH_CHECK(th_auth_new(cfg, e2, sizeof e2) == NULL);
    TH_CHECK(strstr(e2, "at least 32 bytes") != NULL);
    th_config_unref(cfg);
    setenv(SECRET_ENV, SECRET, 1);
}

TH_TEST(admin_detection)
{
    th_identity id = {0};
    TH_CHECK(!th_auth_is_admin(NULL));
    TH_CHECK(!th_auth_is_admin(&id));
    id.authenticated = true;
    memcpy(id.role, "admin", 6);
    TH_CHECK(th_auth_is_admin(&id));
    memcpy(id.role, "user", 5);
    TH_CHECK(!th_auth_is_admin(&id));
    memcpy(id.role, "admin", 6);
    id.authenticated = false; /* an anonymous identity is never admin */
    TH_CHECK(!th_auth_is_admin(&id));
}

TH_TEST_MAIN()
