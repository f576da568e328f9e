/* balance: orders the candidates of one request.
 *
 * th_balance_order first partitions idx stably: available peers, then unavailable ones, then any
 * index >= npeers (never read). The strategy then runs on the available group (or on the whole set
 * when nothing is available, since the caller will try those anyway) and updates its state for that
 * first pick only. The rest of each group follows in the strategy's fallback order:
 *
 *   weighted     first: smooth WRR (nginx): every candidate's current_weight += weight, the largest
 *                wins (first in idx order on ties), the winner's current_weight -= total.
 *                rest: weight descending.
 *   round_robin  the group rotated by the cursor; the cursor advances by one per call.
 *   least_load   inflight ascending, then weight descending, then idx order; the leading run of
 *                equal (inflight, weight) candidates is rotated by the cursor so equal peers share.
 *   random       first: weighted random (xorshift64*). rest: weight descending.
 *   priority     priority ascending, then weight descending, then idx order.
 *
 * Sorts are stable insertion sorts: candidate sets are a handful of providers. A weight < 1 counts
 * as 1. */
#include "routing/balance.h"

#include <string.h>

static const char *const names[] = {
    [TH_BALANCE_WEIGHTED] = "weighted",     [TH_BALANCE_ROUND_ROBIN] = "round_robin",
    [TH_BALANCE_LEAST_LOAD] = "least_load", [TH_BALANCE_RANDOM] = "random",
    [TH_BALANCE_PRIORITY] = "priority",
};

int th_balance_parse(const char *name, th_balance_strategy *out)
{
    if (name == NULL) return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i]) == 0) {
            if (out != NULL) *out = (th_balance_strategy)i;
            return 0;
        }
    }
    return -1;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void th_balance_init(th_balance *b, th_balance_strategy s, uint64_t seed)
{
    b->strategy = s;
    b->rr_next = 0;
    b->rng = seed != 0 ? seed : 0x9E3779B97F4A7C15ULL; /* xorshift must not start at 0 */
}

static int64_t weight_of(const th_balance_peer *p)
{
    return p->weight > 0 ? p->weight : 1;
}

/* Sort keys: cmp(a, b) < 0 when a goes before b. */
typedef int (*cmp_fn)(const th_balance_peer *a, const th_balance_peer *b);

static int cmp_weight(const th_balance_peer *a, const th_balance_peer *b)
{
    int64_t wa = weight_of(a), wb = weight_of(b);
    return wa > wb ? -1 : wa < wb ? 1 : 0;
}

static int cmp_load(const th_balance_peer *a, const th_balance_peer *b)
{
    if (a->inflight != b->inflight) return a->inflight < b->inflight ? -1 : 1;
    return cmp_weight(a, b);
}

static int cmp_priority(const th_balance_peer *a, const th_balance_peer *b)
{
    if (a->priority != b->priority) return a->priority < b->priority ? -1 : 1;
    return cmp_weight(a, b);
}

static int cmp_none(const th_balance_peer *a, const th_balance_peer *b)
{
    (void)a;
    (void)b;
    return 0;
}

static cmp_fn fallback_cmp(th_balance_strategy s)
{
    switch (s) {
    case TH_BALANCE_WEIGHTED:
    case TH_BALANCE_RANDOM:
        return cmp_weight;
    case TH_BALANCE_LEAST_LOAD:
        return cmp_load;
    case TH_BALANCE_PRIORITY:
        return cmp_priority;
    case TH_BALANCE_ROUND_ROBIN:
        break;
    }
    return cmp_none;
}

static void sort_group(const th_balance_peer *peers, size_t *idx, size_t n, cmp_fn cmp)
{
    if (cmp == cmp_none) return;
    for (size_t i = 1; i < n; i++) {
        size_t v = idx[i], j = i;
        while (j > 0 && cmp(&peers[v], &peers[idx[j - 1]]) < 0) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
}

static void reverse(size_t *a, size_t n)
{
    for (size_t i = 0; i < n / 2; i++) {
        size_t t = a[i];
        a[i] = a[n - 1 - i];
        a[n - 1 - i] = t;
    }
}

/* Rotates a left by k: a[k] becomes a[0]. */
static void rotate(size_t *a, size_t n, size_t k)
{
    if (n < 2 || k % n == 0) return;
    k %= n;
    reverse(a, k);
    reverse(a + k, n - k);
    reverse(a, n);
}

/* Moves a[pos] to the front, keeping the order of the others. */
static void to_front(size_t *a, size_t pos)
{
    size_t v = a[pos];
    memmove(a + 1, a, pos * sizeof *a);
    a[0] = v;
}

static size_t pick_smooth(th_balance_peer *peers, const size_t *idx, size_t n)
{
    int64_t total = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        th_balance_peer *p = &peers[idx[i]];
        int64_t w = weight_of(p);
        p->current_weight += w;
        total += w;
        if (i == 0 || p->current_weight > peers[idx[best]].current_weight) best = i;
    }
    peers[idx[best]].current_weight -= total;
    return best;
}

static size_t pick_random(th_balance *b, const th_balance_peer *peers, const size_t *idx, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (uint64_t)weight_of(&peers[idx[i]]);
    uint64_t r = rng_next(&b->rng) % total;
    for (size_t i = 0; i < n; i++) {
        uint64_t w = (uint64_t)weight_of(&peers[idx[i]]);
        if (r < w) return i;
        r -= w;
    }
    return n - 1;
}

/* Runs the strategy on idx[0..n), n >= 1, updating its state. */
static void order_group(th_balance *b, th_balance_peer *peers, size_t *idx, size_t n)
{
    switch (b->strategy) {
    case TH_BALANCE_WEIGHTED: {
        size_t first = idx[pick_smooth(peers, idx, n)];
        sort_group(peers, idx, n, cmp_weight);
        for (size_t i = 0; i < n; i++) {
            if (idx[i] == first) {
                to_front(idx, i);
                break;
            }
        }
        break;
    }
    case TH_BALANCE_RANDOM: {
        size_t first = idx[pick_random(b, peers, idx, n)];
        sort_group(peers, idx, n, cmp_weight);
        for (size_t i = 0; i < n; i++) {
            if (idx[i] == first) {
                to_front(idx, i);
                break;
            }
        }
        break;
    }
    case TH_BALANCE_ROUND_ROBIN:
        rotate(idx, n, (size_t)(b->rr_next % n));
        b->rr_next++;
        break;
    case TH_BALANCE_LEAST_LOAD: {
        sort_group(peers, idx, n, cmp_load);
        size_t ties = 1;
        while (ties < n && cmp_load(&peers[idx[0]], &peers[idx[ties]]) == 0)
            ties++;
        rotate(idx, ties, (size_t)(b->rr_next % ties));
        b->rr_next++;
        break;
    }
    case TH_BALANCE_PRIORITY:
    default:
        sort_group(peers, idx, n, cmp_priority);
        break;
    }
}

/* 0 available, 1 unavailable, 2 not a valid index. */
static int group_of(const th_balance_peer *peers, size_t npeers, size_t i)
{
    if (i >= npeers) return 2;
    return peers[i].available ? 0 : 1;
}

void th_balance_order(th_balance *b, th_balance_peer *peers, size_t npeers, size_t *idx, size_t n)
{
    if (n == 0 || idx == NULL) return;
    /* stable partition by group */
    for (size_t i = 1; i < n; i++) {
        size_t v = idx[i], j = i;
        int g = group_of(peers, npeers, v);
        while (j > 0 && group_of(peers, npeers, idx[j - 1]) > g) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
    size_t navail = 0, nvalid = 0;
    while (nvalid < n && idx[nvalid] < npeers) {
        if (peers[idx[nvalid]].available) navail++;
        nvalid++;
    }
    if (nvalid == 0) return;
    if (navail > 0) {
        order_group(b, peers, idx, navail);
        sort_group(peers, idx + navail, nvalid - navail, fallback_cmp(b->strategy));
    } else {
        order_group(b, peers, idx, nvalid);
    }
}
