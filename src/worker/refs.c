/* refs: see refs.h. */
#include "worker/refs.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

int th_wref_id(const char *sha256, const char *text, const char *language, char out[65])
{
    uint8_t d[SHA256_DIGEST_LENGTH];
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
             EVP_DigestUpdate(ctx, sha256, strlen(sha256)) == 1 && EVP_DigestUpdate(ctx, "\n", 1) == 1 &&
             EVP_DigestUpdate(ctx, text, strlen(text)) == 1 && EVP_DigestUpdate(ctx, "\n", 1) == 1 &&
             EVP_DigestUpdate(ctx, language, strlen(language)) == 1 && EVP_DigestFinal_ex(ctx, d, NULL) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) return -1;
    char hex[65];
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    out[0] = 'r';
    memcpy(out + 1, hex, 63);
    out[64] = 0;
    return 0;
}

int th_wref_check_wav(const uint8_t *wav, size_t len, int *rate, double *seconds, char *err, size_t errlen)
{
    if (len < 44 || memcmp(wav, "RIFF", 4) != 0 || memcmp(wav + 8, "WAVE", 4) != 0) {
        snprintf(err, errlen, "reference_audio is not a WAV file");
        return -1;
    }
    size_t off = 12;
    bool fmt_ok = false;
    uint32_t r = 0;
    while (off + 8 <= len) {
        uint32_t sz = le32(wav + off + 4);
        const uint8_t *body = wav + off + 8;
        size_t room = len - off - 8;
        if (memcmp(wav + off, "fmt ", 4) == 0) {
            if (sz < 16 || sz > room) break;
            uint16_t format = le16(body), ch = le16(body + 2), bits = le16(body + 14);
            r = le32(body + 4);
            fmt_ok = format == 1 && ch == 1 && bits == 16 && r >= 8000 && r <= 192000;
            if (!fmt_ok) {
                snprintf(err, errlen, "reference_audio must be mono 16-bit PCM");
                return -1;
            }
        } else if (memcmp(wav + off, "data", 4) == 0) {
            if (!fmt_ok) break;
            size_t data = sz <= room ? sz : room; /* a streamed header may say more than there is */
            if (data < 2) break;
            *rate = (int)r;
            *seconds = (double)(data / 2) / (double)r;
            return 0;
        }
        if (sz > room) break;
        off += 8 + (size_t)sz + (sz & 1);
    }
    snprintf(err, errlen, "reference_audio is not a whole WAV file (fmt and data chunks)");
    return -1;
}

int th_wref_base64(const char *s, size_t n, size_t max, uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (n == 0 || n % 4 != 0 || n / 4 * 3 > max + 2 || n > (size_t)1 << 30) return -1;
    uint8_t *b = malloc(n / 4 * 3 + 1);
    if (b == NULL) return -1;
    int w = EVP_DecodeBlock(b, (const uint8_t *)s, (int)n);
    if (w < 0) {
        free(b);
        return -1;
    }
    size_t pad = s[n - 1] == '=' ? (s[n - 2] == '=' ? 2 : 1) : 0;
    *out = b;
    *outlen = (size_t)w - pad;
    return 0;
}
