/* fuzz_jwt: th_auth_check on arbitrary credentials, with an HS256 config in mode any (keys and JWTs).
 * The first byte picks the shape of the input:
 *   0: the rest is the whole Authorization header value;
 *   1: the rest is an X-API-Key value;
 *   2: the rest is "header JSON \n claims JSON": the fuzzer's JSON is signed with the configured secret so
 *      that the claim checks behind the signature are reached too;
 *   3: "Bearer " + the rest.
 * Nothing may crash or leak, and an OK result must carry a well-formed identity. */
#include "governance/auth.h"
#include "config/config.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_SECRET "fuzz-secret-0123456789abcdef0123"
#define FUZZ_NOW ((int64_t)1700000000)

static const th_auth *the_auth; /* built once by LLVMFuzzerInitialize; read-only afterwards */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    setenv("TTSHUB_FUZZ_JWT_SECRET", FUZZ_SECRET, 1);
    char h1[65], h2[65], yaml[1024];
    th_auth_hash_key("fuzz-key", 8, h1);
    th_auth_hash_key("admin-key", 9, h2);
    int n = snprintf(yaml, sizeof yaml,
                     "auth:\n"
                     "  mode: any\n"
                     "  keys:\n"
                     "    - { id: k1, sha256: \"%s\", tenant: acme }\n"
                     "    - { id: k2, sha256: \"%s\", tenant: beta, role: admin }\n"
                     "  jwt: { alg: HS256, secret_env: TTSHUB_FUZZ_JWT_SECRET, issuer: iss, audience: aud }\n"
                     "tenants:\n  acme: {}\n  beta: {}\n",
                     h1, h2);
    if (n < 0 || (size_t)n >= sizeof yaml) abort();
    th_config_errors errs = {0};
    th_config *c = th_config_parse(yaml, (size_t)n, &errs);
    th_config_errors_free(&errs);
    if (c == NULL) abort();
    char err[256];
    the_auth = th_auth_new(c, err, sizeof err);
    th_config_unref(c);
    if (the_auth == NULL) abort();
    return 0;
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

/* "Bearer " + a signed token made of the fuzzer's header and claims (split at the first '\n'). */
static char *signed_bearer(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hl = nl ? (size_t)(nl - data) : size;
    const uint8_t *claims = nl ? nl + 1 : data + size;
    size_t cl = nl ? size - hl - 1 : 0;
    char *out = malloc(7 + (hl + cl) * 4 / 3 + 8 + 2 + 64 + 1);
    if (out == NULL) return NULL;
    memcpy(out, "Bearer ", 7);
    char *tok = out + 7;
    b64url(data, hl, tok);
    size_t n = strlen(tok);
    tok[n++] = '.';
    b64url(claims, cl, tok + n);
    n += strlen(tok + n);
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    if (HMAC(EVP_sha256(), FUZZ_SECRET, (int)strlen(FUZZ_SECRET), (const uint8_t *)tok, n, mac, &maclen) ==
        NULL) {
        free(out);
        return NULL;
    }
    tok[n++] = '.';
    b64url(mac, maclen, tok + n);
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    int shape = data[0] & 3;
    data++;
    size--;
    char *value;
    if (shape == 2) {
        value = signed_bearer(data, size);
    } else {
        size_t pre = shape == 3 ? 7 : 0;
        value = malloc(pre + size + 1); /* exact size: reads past the NUL are caught */
        if (value) {
            memcpy(value, "Bearer ", pre);
            if (size) memcpy(value + pre, data, size);
            value[pre + size] = 0;
        }
    }
    if (value == NULL) return 0;

    th_identity id;
    char err[128];
    th_auth_rc rc = th_auth_check(the_auth, shape == 1 ? NULL : value, shape == 1 ? value : NULL, FUZZ_NOW,
                                  &id, err, sizeof err);
    if (rc == TH_AUTH_OK) {
        if (!id.authenticated) abort();
        if (strcmp(id.role, "user") != 0 && strcmp(id.role, "admin") != 0) abort();
        if (strcmp(id.method, "key") != 0 && strcmp(id.method, "jwt") != 0) abort();
        if (strnlen(id.tenant, sizeof id.tenant) == sizeof id.tenant) abort();
        if (strnlen(id.subject, sizeof id.subject) == sizeof id.subject) abort();
    } else {
        if (rc != TH_AUTH_MISSING && rc != TH_AUTH_INVALID && rc != TH_AUTH_EXPIRED && rc != TH_AUTH_NOT_YET)
            abort();
        if (err[0] == '\0') abort();
        if (id.authenticated) abort();
    }
    free(value);
    return 0;
}
