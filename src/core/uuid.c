#include "core/uuid.h"

#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static void format_v4(uint8_t r[16], char out[TH_UUID_LEN + 1])
{
    r[6] = (uint8_t)((r[6] & 0x0F) | 0x40);
    r[8] = (uint8_t)((r[8] & 0x3F) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[r[i] >> 4];
        out[o++] = hex[r[i] & 15];
    }
    out[o] = 0;
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro(th_uuid_gen *g)
{
    uint64_t *s = g->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void th_uuid_gen_init(th_uuid_gen *g)
{
    char seed[TH_UUID_LEN + 1];
    th_uuid_v4(seed); /* getrandom, once */
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < 4; i++) {
        for (const char *p = seed; *p; p++)
            h = (h ^ (uint8_t)*p) * 1099511628211ull;
        h ^= (uint64_t)i * 0x9E3779B97F4A7C15ull;
        g->s[i] = h ? h : 0x9E3779B97F4A7C15ull;
        th_uuid_v4(seed);
    }
}

void th_uuid_gen_next(th_uuid_gen *g, char out[TH_UUID_LEN + 1])
{
    uint64_t a = xoshiro(g), b = xoshiro(g);
    uint8_t r[16];
    memcpy(r, &a, 8);
    memcpy(r + 8, &b, 8);
    format_v4(r, out);
}

void th_uuid_v4(char out[TH_UUID_LEN + 1])
{
    uint8_t r[16];
    ssize_t got = getrandom(r, sizeof r, 0);
    if (got != (ssize_t)sizeof r) {
        /* getrandom cannot fail for 16 bytes after boot; mix the clock in anyway */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)out;
        for (int i = 0; i < 16; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            r[i] = (uint8_t)x;
        }
    }
    format_v4(r, out);
}

bool th_uuid_valid(const char *s)
{
    if (s == NULL || strlen(s) != TH_UUID_LEN) return false;
    for (int i = 0; i < TH_UUID_LEN; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-') return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return false;
    }
    return true;
}
