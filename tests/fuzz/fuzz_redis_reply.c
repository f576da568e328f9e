/* fuzz_redis_reply: bytes from a Redis server, read as a connection reads them (hiredis' reader with the
 * connection's reply objects, th_redis_parse), fed whole and again in chunks of a size the input picks
 * (its first byte): both ways must give the same replies, and every view must be well formed. */
#include "store/redis.h"

#include <hiredis/read.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct acc {
    uint64_t h;
    int n;
} acc;

static void mix(acc *a, uint64_t v)
{
    a->h = (a->h ^ v) * 0x100000001b3ULL;
}

static void walk(acc *a, const th_redis_reply *r, int depth)
{
    if (depth > 16) abort(); /* hiredis nests at most 7 deep */
    mix(a, (uint64_t)r->type);
    switch (r->type) {
    case REDIS_REPLY_INTEGER:
        mix(a, (uint64_t)r->integer);
        break;
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        if (r->str == NULL) abort();
        mix(a, r->len);
        for (size_t i = 0; i < r->len; i++)
            mix(a, (unsigned char)r->str[i]);
        if (r->str[r->len] != '\0') abort(); /* strings end with a NUL, as hiredis' own do */
        break;
    case REDIS_REPLY_ARRAY:
        if (r->elements > 0 && r->element == NULL) abort();
        mix(a, r->elements);
        for (size_t i = 0; i < r->elements; i++)
            walk(a, &r->element[i], depth + 1);
        break;
    case REDIS_REPLY_NIL:
        break;
    default:
        abort();
    }
}

static void on_reply(void *ud, th_redis_status st, const th_redis_reply *r)
{
    acc *a = ud;
    if (r == NULL) abort();
    if ((st == TH_REDIS_ERROR) != (r->type == REDIS_REPLY_ERROR)) abort();
    a->n++;
    walk(a, r, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n < 1) return 0;
    size_t chunk = (size_t)(d[0] % 23) + 1;
    const char *buf = (const char *)d + 1;
    acc whole = {0xcbf29ce484222325ULL, 0}, parts = {0xcbf29ce484222325ULL, 0};
    int a = th_redis_parse(buf, n - 1, 0, on_reply, &whole);
    int b = th_redis_parse(buf, n - 1, chunk, on_reply, &parts);
    if (a != b || whole.n != parts.n || whole.h != parts.h) abort();
    if (a >= 0 && a != whole.n) abort();
    return 0;
}
