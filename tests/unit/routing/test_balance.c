#include "th_test.h"

#include "routing/balance.h"

#include <stdbool.h>

static th_balance_peer peer(int weight, int priority, int inflight, bool available)
{
    return (th_balance_peer){
        .weight = weight, .priority = priority, .inflight = inflight, .available = available};
}

static void ident(size_t *idx, size_t n)
{
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
}

/* idx[0..n) is a permutation of 0..n-1 */
static bool is_perm(const size_t *idx, size_t n)
{
    bool seen[32] = {false};
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= n || seen[idx[i]]) return false;
        seen[idx[i]] = true;
    }
    return true;
}

TH_TEST(balance_parse_names)
{
    static const char *const names[] = {"weighted", "round_robin", "least_load", "random", "priority"};
    for (int i = 0; i < 5; i++) {
        th_balance_strategy s = TH_BALANCE_PRIORITY;
        TH_CHECK_INT(th_balance_parse(names[i], &s), 0);
        TH_CHECK_INT(s, i);
    }
    th_balance_strategy s;
    TH_CHECK_INT(th_balance_parse("Weighted", &s), -1);
    TH_CHECK_INT(th_balance_parse("", &s), -1);
    TH_CHECK_INT(th_balance_parse(NULL, &s), -1);
}

TH_TEST(balance_smooth_wrr_exact_shares)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_WEIGHTED, 1);
    th_balance_peer p[3] = {peer(5, 0, 0, true), peer(1, 0, 0, true), peer(1, 0, 0, true)};
    int counts[3] = {0, 0, 0};
    char seq[8] = {0};
    for (int i = 0; i < 1001; i++) { /* 143 full cycles of 7 */
        size_t idx[3];
        ident(idx, 3);
        th_balance_order(&b, p, 3, idx, 3);
        TH_REQUIRE(is_perm(idx, 3));
        counts[idx[0]]++;
        if (i < 7) seq[i] = (char)('a' + idx[0]);
        if ((i + 1) % 7 == 0) { /* exact at every cycle end */
            int cycles = (i + 1) / 7;
            TH_CHECK_INT(counts[0], 5 * cycles);
            TH_CHECK_INT(counts[1], cycles);
            TH_CHECK_INT(counts[2], cycles);
        }
        if (i == 999) { /* 1000 picks: 1000 * 5/7 = 714.3, 142.9, 142.9 */
            TH_CHECK_INT(counts[0], 714);
            TH_CHECK_INT(counts[1], 143);
            TH_CHECK_INT(counts[2], 143);
        }
    }
    TH_CHECK_STR(seq, "aabacaa"); /* nginx's smooth sequence for 5,1,1 */
    TH_CHECK_INT(counts[0], 715);
    TH_CHECK_INT(counts[1], 143);
    TH_CHECK_INT(counts[2], 143);
}

TH_TEST(balance_weighted_fallback_order)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_WEIGHTED, 1);
    th_balance_peer p[4] = {peer(1, 0, 0, true), peer(3, 0, 0, true), peer(2, 0, 0, true),
                            peer(9, 0, 0, false)};
    for (int round = 0; round < 50; round++) {
        size_t idx[4];
        ident(idx, 4);
        th_balance_order(&b, p, 4, idx, 4);
        TH_REQUIRE(is_perm(idx, 4));
        TH_CHECK_INT(idx[3], 3); /* unavailable last despite the biggest weight */
        /* the rest by descending weight */
        for (int i = 1; i + 1 < 3; i++)
            TH_CHECK(p[idx[i]].weight >= p[idx[i + 1]].weight);
    }
}

TH_TEST(balance_round_robin_cycles)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_ROUND_ROBIN, 1);
    th_balance_peer p[3] = {peer(1, 0, 0, true), peer(1, 0, 0, true), peer(7, 0, 0, true)};
    for (int i = 0; i < 9; i++) {
        size_t idx[3];
        ident(idx, 3);
        th_balance_order(&b, p, 3, idx, 3);
        TH_REQUIRE(is_perm(idx, 3));
        TH_CHECK_INT(idx[0], i % 3);
        TH_CHECK_INT(idx[1], (i + 1) % 3);
        TH_CHECK_INT(idx[2], (i + 2) % 3);
    }
}

TH_TEST(balance_unavailable_last_every_strategy)
{
    for (int s = TH_BALANCE_WEIGHTED; s <= TH_BALANCE_PRIORITY; s++) {
        th_balance b;
        th_balance_init(&b, (th_balance_strategy)s, 42);
        th_balance_peer p[5] = {peer(10, 0, 0, false), peer(1, 5, 3, true), peer(2, 4, 9, true),
                                peer(10, 0, 0, false), peer(1, 1, 1, true)};
        for (int round = 0; round < 20; round++) {
            size_t idx[5];
            ident(idx, 5);
            th_balance_order(&b, p, 5, idx, 5);
            TH_REQUIRE(is_perm(idx, 5));
            for (int i = 0; i < 3; i++)
                TH_CHECK(p[idx[i]].available);
            TH_CHECK(!p[idx[3]].available && !p[idx[4]].available);
        }
        /* when nothing is available the order is still a full permutation */
        th_balance_peer q[3] = {peer(1, 0, 0, false), peer(2, 0, 0, false), peer(3, 0, 0, false)};
        size_t idx[3];
        ident(idx, 3);
        th_balance_order(&b, q, 3, idx, 3);
        TH_CHECK(is_perm(idx, 3));
    }
}

TH_TEST(balance_subset_of_peers)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_PRIORITY, 1);
    th_balance_peer p[6] = {peer(1, 9, 0, true), peer(1, 3, 0, true), peer(1, 0, 0, true),
                            peer(1, 1, 0, true), peer(1, 2, 0, true), peer(1, 0, 0, true)};
    size_t idx[3] = {4, 1, 3}; /* the route allows only these */
    th_balance_order(&b, p, 6, idx, 3);
    TH_CHECK_INT(idx[0], 3);
    TH_CHECK_INT(idx[1], 4);
    TH_CHECK_INT(idx[2], 1);
    /* an index past npeers is never read and goes last */
    size_t bad[3] = {99, 1, 3};
    th_balance_order(&b, p, 6, bad, 3);
    TH_CHECK_INT(bad[0], 3);
    TH_CHECK_INT(bad[1], 1);
    TH_CHECK_INT(bad[2], 99);
}

TH_TEST(balance_least_load_picks_idle)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_LEAST_LOAD, 1);
    th_balance_peer p[4] = {peer(1, 0, 4, true), peer(1, 0, 0, true), peer(5, 0, 2, true),
                            peer(1, 0, 0, false)};
    for (int i = 0; i < 5; i++) {
        size_t idx[4];
        ident(idx, 4);
        th_balance_order(&b, p, 4, idx, 4);
        TH_CHECK_INT(idx[0], 1);
        TH_CHECK_INT(idx[1], 2);
        TH_CHECK_INT(idx[2], 0);
        TH_CHECK_INT(idx[3], 3);
    }
    /* equal load: higher weight first */
    th_balance_peer q[3] = {peer(1, 0, 1, true), peer(3, 0, 1, true), peer(2, 0, 1, true)};
    size_t idx[3];
    ident(idx, 3);
    th_balance_order(&b, q, 3, idx, 3);
    TH_CHECK_INT(idx[0], 1);
    TH_CHECK_INT(idx[1], 2);
    TH_CHECK_INT(idx[2], 0);
}

TH_TEST(balance_least_load_rotates_equals)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_LEAST_LOAD, 1);
    th_balance_peer p[4] = {peer(2, 0, 0, true), peer(2, 0, 0, true), peer(2, 0, 0, true),
                            peer(2, 0, 5, true)};
    int counts[4] = {0};
    for (int i = 0; i < 30; i++) {
        size_t idx[4];
        ident(idx, 4);
        th_balance_order(&b, p, 4, idx, 4);
        TH_REQUIRE(is_perm(idx, 4));
        counts[idx[0]]++;
        TH_CHECK_INT(idx[3], 3); /* the busy one stays last */
    }
    TH_CHECK_INT(counts[0], 10);
    TH_CHECK_INT(counts[1], 10);
    TH_CHECK_INT(counts[2], 10);
    TH_CHECK_INT(counts[3], 0);
}

TH_TEST(balance_priority_order)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_PRIORITY, 1);
    th_balance_peer p[5] = {peer(1, 2, 0, true), peer(1, 0, 0, true), peer(4, 1, 0, true),
                            peer(2, 1, 0, true), peer(9, 0, 0, false)};
    size_t idx[5];
    ident(idx, 5);
    th_balance_order(&b, p, 5, idx, 5);
    size_t want[5] = {1, 2, 3, 0, 4};
    for (int i = 0; i < 5; i++)
        TH_CHECK_INT(idx[i], want[i]);
}

TH_TEST(balance_random_by_weight)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_RANDOM, 12345);
    th_balance_peer p[3] = {peer(6, 0, 0, true), peer(3, 0, 0, true), peer(1, 0, 0, true)};
    int counts[3] = {0};
    size_t first_of_run[5];
    for (int i = 0; i < 10000; i++) {
        size_t idx[3];
        ident(idx, 3);
        th_balance_order(&b, p, 3, idx, 3);
        TH_REQUIRE(is_perm(idx, 3));
        counts[idx[0]]++;
        if (i < 5) first_of_run[i] = idx[0];
        /* fallbacks by descending weight */
        size_t a = idx[1], c = idx[2];
        TH_CHECK(p[a].weight >= p[c].weight);
    }
    TH_CHECK(counts[0] > 5700 && counts[0] < 6300);
    TH_CHECK(counts[1] > 2700 && counts[1] < 3300);
    TH_CHECK(counts[2] > 800 && counts[2] < 1200);
    /* same seed, same sequence */
    th_balance b2;
    th_balance_init(&b2, TH_BALANCE_RANDOM, 12345);
    for (int i = 0; i < 5; i++) {
        size_t idx[3];
        ident(idx, 3);
        th_balance_order(&b2, p, 3, idx, 3);
        TH_CHECK_INT(idx[0], first_of_run[i]);
    }
}

TH_TEST(balance_weight_below_one_counts_as_one)
{
    th_balance b;
    th_balance_init(&b, TH_BALANCE_WEIGHTED, 0);
    th_balance_peer p[2] = {peer(0, 0, 0, true), peer(-3, 0, 0, true)};
    int counts[2] = {0};
    for (int i = 0; i < 100; i++) {
        size_t idx[2];
        ident(idx, 2);
        th_balance_order(&b, p, 2, idx, 2);
        counts[idx[0]]++;
    }
    TH_CHECK_INT(counts[0], 50);
    TH_CHECK_INT(counts[1], 50);
    th_balance_init(&b, TH_BALANCE_RANDOM, 0); /* seed 0 still gives a working generator */
    for (int i = 0; i < 100; i++) {
        size_t idx[2];
        ident(idx, 2);
        th_balance_order(&b, p, 2, idx, 2);
        TH_CHECK(is_perm(idx, 2));
    }
    th_balance_order(&b, p, 2, NULL, 0); /* nothing to order */
}

TH_TEST_MAIN()
