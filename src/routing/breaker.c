/* breaker: closed / open / half_open, with a consecutive-failure rule and a failure-ratio rule over a
 * sliding window of TH_BREAKER_BUCKETS buckets.
 *
 * Bucket i covers [bucket_start_ms[i], bucket_start_ms[i] + width); the bucket a call lands in is
 * (now / width) % TH_BREAKER_BUCKETS and it is reset when it last held an older slot. The window is
 * the TH_BREAKER_BUCKETS slots ending with the current one, so it slides in steps of width.
 *
 * Conf values out of range are normalised at init: failures < 1 -> 5, half_open_probes < 1 -> 1,
 * failure_ratio <= 0 or window_ms == 0 -> ratio rule off, failure_ratio > 1 -> 1. Outcomes in the
 * closed state feed the window whenever window_ms > 0 (so th_breaker_error_rate works with the ratio
 * rule off); half-open probes do not.
 *
 * Outcomes reported while open, or while half_open with no probe out, belong to calls allowed before
 * the last transition; they are ignored. */
#include "routing/breaker.h"

#include <string.h>

static uint64_t bucket_width(const th_breaker *b)
{
    uint64_t w = b->conf.window_ms / TH_BREAKER_BUCKETS;
    return w > 0 ? w : 1;
}

static bool ratio_on(const th_breaker *b)
{
    return b->conf.failure_ratio > 0 && b->conf.window_ms > 0;
}

static void window_clear(th_breaker *b)
{
    memset(b->bucket_start_ms, 0, sizeof b->bucket_start_ms);
    memset(b->bucket_ok, 0, sizeof b->bucket_ok);
    memset(b->bucket_fail, 0, sizeof b->bucket_fail);
}

/* Sums the buckets inside the window ending at now. */
static void window_sum(const th_breaker *b, uint64_t now_ms, uint64_t *ok, uint64_t *fail)
{
    uint64_t w = bucket_width(b);
    uint64_t cur = now_ms / w * w;
    uint64_t span = (uint64_t)(TH_BREAKER_BUCKETS - 1) * w;
    uint64_t oldest = cur >= span ? cur - span : 0;
    *ok = 0;
    *fail = 0;
    for (int i = 0; i < TH_BREAKER_BUCKETS; i++) {
        uint64_t s = b->bucket_start_ms[i];
        if (s < oldest || s > cur) continue;
        *ok += b->bucket_ok[i];
        *fail += b->bucket_fail[i];
    }
}

static void window_add(th_breaker *b, bool ok, uint64_t now_ms)
{
    uint64_t w = bucket_width(b);
    uint64_t slot = now_ms / w;
    size_t i = (size_t)(slot % TH_BREAKER_BUCKETS);
    uint64_t start = slot * w;
    if (b->bucket_start_ms[i] != start) {
        b->bucket_start_ms[i] = start;
        b->bucket_ok[i] = 0;
        b->bucket_fail[i] = 0;
    }
    if (ok) {
        if (b->bucket_ok[i] < UINT32_MAX) b->bucket_ok[i]++;
    } else if (b->bucket_fail[i] < UINT32_MAX) {
        b->bucket_fail[i]++;
    }
}

static void go_open(th_breaker *b, uint64_t now_ms)
{
    b->state = TH_BREAKER_OPEN;
    b->opened_at_ms = now_ms;
    b->consecutive = 0;
    b->probes_out = 0;
    b->probes_ok = 0;
    b->transitions++;
}

static void go_half_open(th_breaker *b)
{
    b->state = TH_BREAKER_HALF_OPEN;
    b->probes_out = 0;
    b->probes_ok = 0;
    b->transitions++;
}

static void go_closed(th_breaker *b)
{
    b->state = TH_BREAKER_CLOSED;
    b->consecutive = 0;
    b->probes_out = 0;
    b->probes_ok = 0;
    window_clear(b);
    b->transitions++;
}

static bool open_elapsed(const th_breaker *b, uint64_t now_ms)
{
    return now_ms >= b->opened_at_ms && now_ms - b->opened_at_ms >= b->conf.open_for_ms;
}

void th_breaker_init(th_breaker *b, const th_breaker_conf *conf)
{
    memset(b, 0, sizeof *b);
    if (conf != NULL) b->conf = *conf;
    if (b->conf.failures < 1) b->conf.failures = 5;
    if (b->conf.half_open_probes < 1) b->conf.half_open_probes = 1;
    if (!(b->conf.failure_ratio > 0)) b->conf.failure_ratio = 0; /* also NaN */
    if (b->conf.failure_ratio > 1) b->conf.failure_ratio = 1;
    b->state = TH_BREAKER_CLOSED;
}

bool th_breaker_available(const th_breaker *b, uint64_t now_ms)
{
    switch (b->state) {
    case TH_BREAKER_CLOSED:
        return true;
    case TH_BREAKER_OPEN:
        return open_elapsed(b, now_ms); /* would become half_open with every probe free */
    case TH_BREAKER_HALF_OPEN:
        return b->probes_out + b->probes_ok < b->conf.half_open_probes;
    }
    return false;
}

bool th_breaker_allow(th_breaker *b, uint64_t now_ms)
{
    if (b->state == TH_BREAKER_OPEN && open_elapsed(b, now_ms)) go_half_open(b);
    switch (b->state) {
    case TH_BREAKER_CLOSED:
        return true;
    case TH_BREAKER_OPEN:
        return false;
    case TH_BREAKER_HALF_OPEN:
        if (b->probes_out + b->probes_ok >= b->conf.half_open_probes) return false;
        b->probes_out++;
        return true;
    }
    return false;
}

bool th_breaker_record(th_breaker *b, bool ok, uint64_t now_ms)
{
    switch (b->state) {
    case TH_BREAKER_CLOSED:
        if (b->conf.window_ms > 0) window_add(b, ok, now_ms); /* also feeds error_rate */
        if (ok) {
            b->consecutive = 0;
            return false;
        }
        b->consecutive++;
        if (b->consecutive >= b->conf.failures) {
            go_open(b, now_ms);
            return true;
        }
        if (ratio_on(b)) {
            uint64_t nok, nfail;
            window_sum(b, now_ms, &nok, &nfail);
            uint64_t total = nok + nfail;
            if (total >= (uint64_t)b->conf.failures &&
                (double)nfail >= b->conf.failure_ratio * (double)total) {
                go_open(b, now_ms);
                return true;
            }
        }
        return false;
    case TH_BREAKER_OPEN:
        return false; /* a call allowed before it opened */
    case TH_BREAKER_HALF_OPEN:
        if (b->probes_out <= 0) return false; /* not a probe */
        b->probes_out--;
        if (!ok) {
            go_open(b, now_ms);
            return true;
        }
        b->probes_ok++;
        if (b->probes_ok >= b->conf.half_open_probes) {
            go_closed(b);
            return true;
        }
        return false;
    }
    return false;
}

void th_breaker_release(th_breaker *b)
{
    if (b->state == TH_BREAKER_HALF_OPEN && b->probes_out > 0) b->probes_out--;
}

th_breaker_state th_breaker_get(const th_breaker *b, uint64_t now_ms)
{
    if (b->state == TH_BREAKER_OPEN && open_elapsed(b, now_ms)) return TH_BREAKER_HALF_OPEN;
    return b->state;
}

const char *th_breaker_state_name(th_breaker_state s)
{
    switch (s) {
    case TH_BREAKER_CLOSED:
        return "closed";
    case TH_BREAKER_OPEN:
        return "open";
    case TH_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

double th_breaker_error_rate(const th_breaker *b, uint64_t now_ms)
{
    uint64_t ok, fail;
    window_sum(b, now_ms, &ok, &fail);
    if (ok + fail == 0) return 0;
    return (double)fail / (double)(ok + fail);
}
