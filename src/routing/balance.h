/* balance: orders the candidate providers of one request by strategy.
 *
 * weighted (smooth weighted round-robin, as nginx does), round_robin,
 * least_load (fewest in flight, then weight), random (weighted by weight),
 * priority (lowest priority value first, ties by weight). Candidates that
 * are not available (open breaker) go last, so fallback still has somewhere
 * to go only when nothing else is left; the caller skips them unless every
 * candidate is unavailable. Loop thread only. */
#ifndef TH_HUB_BALANCE_H
#define TH_HUB_BALANCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TH_BALANCE_WEIGHTED = 0,
    TH_BALANCE_ROUND_ROBIN,
    TH_BALANCE_LEAST_LOAD,
    TH_BALANCE_RANDOM,
    TH_BALANCE_PRIORITY,
} th_balance_strategy;

int th_balance_parse(const char *name, th_balance_strategy *out);

/** What the balancer knows of one provider. */
typedef struct th_balance_peer {
    int weight;             /* >= 1 */
    int priority;           /* lower first */
    int inflight;           /* live count kept by the hub */
    bool available;         /* breaker allows calls */
    int64_t current_weight; /* smooth WRR state, kept by the balancer */
} th_balance_peer;

typedef struct th_balance {
    th_balance_strategy strategy;
    uint64_t rr_next; /* round-robin cursor */
    uint64_t rng;     /* xorshift state */
} th_balance;

void th_balance_init(th_balance *b, th_balance_strategy s, uint64_t seed);
/** Orders the candidates: idx[0..n) holds indexes into peers (the candidate set), rewritten in the
 * order to try. Updates the strategy's state (cursor, smooth weights) for the first pick only. */
void th_balance_order(th_balance *b, th_balance_peer *peers, size_t npeers, size_t *idx, size_t n);

#endif
