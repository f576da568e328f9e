/* breaker: a circuit breaker per provider, and the provider's live load.
 *
 * closed -> open on `failures` consecutive failures, or when the failure
 * ratio over the last `window` reaches `failure_ratio` (with at least
 * `failures` calls in the window); open -> half_open after `open_for`;
 * half_open lets `half_open_probes` calls through: all succeed -> closed,
 * any fails -> open again. Time is passed in (ms, monotonic), so tests
 * drive it without sleeping. Pure data, loop thread only. */
#ifndef TH_HUB_BREAKER_H
#define TH_HUB_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { TH_BREAKER_CLOSED = 0, TH_BREAKER_OPEN, TH_BREAKER_HALF_OPEN } th_breaker_state;

typedef struct th_breaker_conf {
    int failures;         /* consecutive failures that open it (default 5) */
    double failure_ratio; /* 0..1; 0 = ratio rule off */
    uint64_t window_ms;   /* ratio window */
    uint64_t open_for_ms;
    int half_open_probes;
} th_breaker_conf;

#define TH_BREAKER_BUCKETS 10

typedef struct th_breaker {
    th_breaker_conf conf;
    th_breaker_state state;
    int consecutive;
    uint64_t opened_at_ms;
    int probes_out; /* half-open calls allowed and not yet reported */
    int probes_ok;
    /* ratio window: ring of buckets of window/TH_BREAKER_BUCKETS ms each */
    uint64_t bucket_start_ms[TH_BREAKER_BUCKETS];
    uint32_t bucket_ok[TH_BREAKER_BUCKETS], bucket_fail[TH_BREAKER_BUCKETS];
    uint64_t transitions; /* state changes so far */
} th_breaker;

void th_breaker_init(th_breaker *b, const th_breaker_conf *conf);
/** May a call go to this provider now? Moves open -> half_open when open_for has passed, and counts a
 * half-open probe as taken when it returns true. */
bool th_breaker_allow(th_breaker *b, uint64_t now_ms);
/** Would th_breaker_allow return true (without taking a probe)? */
bool th_breaker_available(const th_breaker *b, uint64_t now_ms);
/** Outcome of a call that was allowed. Returns true when the state changed. */
bool th_breaker_record(th_breaker *b, bool ok, uint64_t now_ms);
/** A call allowed by th_breaker_allow that ended without an outcome (cancelled by the client). */
void th_breaker_release(th_breaker *b);
th_breaker_state th_breaker_get(const th_breaker *b, uint64_t now_ms);
const char *th_breaker_state_name(th_breaker_state s);
/** Failure ratio over the window (0 when no calls). */
double th_breaker_error_rate(const th_breaker *b, uint64_t now_ms);

#endif
