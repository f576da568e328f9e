/* Unit tests of src/hub/route.c over provider doubles (fake_hub.h): router.routes matching (first match on
 * tenant/voice/model globs), candidate order per strategy, unavailable providers last, voice_ok and tenant
 * filtering, engine voice mapping, clone candidates, and slots with their bounded FIFO queue. */
#include "th_test.h"

#include "core/clock.h"
#include "hub/fake_hub.h"
#include "hub/route.h"

#include <stdio.h>
#include <string.h>

#define PROV(name, more)                                                                                     \
    "  - { name: " name ", type: openai_fm, base_url: \"http://127.0.0.1:7001\"" more " }\n"

#define THREE(more_a, more_b, more_c) "providers:\n" PROV("a", more_a) PROV("b", more_b) PROV("c", more_c)

/* The candidates' names joined with commas. */
static const char *cands(fh_world *w, const char *tenant, const char *voice, const char *model, bool clone,
                         char *out, size_t outlen)
{
    size_t idx[16];
    const char *ev[16];
    size_t n = clone ? th_route_clone_candidates(&w->hub.route, tenant, voice, model, NULL, NULL, idx, ev, 16)
                     : th_route_candidates(&w->hub.route, tenant, voice, model, NULL, NULL, idx, ev, 16);
    out[0] = 0;
    size_t used = 0;
    for (size_t k = 0; k < n; k++) {
        int m =
            snprintf(out + used, outlen - used, "%s%s", k ? "," : "", w->hub.providers[idx[k]]->conf->name);
        if (m < 0 || (size_t)m >= outlen - used) break;
        used += (size_t)m;
    }
    return out;
}

TH_TEST(route_no_routes_means_every_provider_by_priority)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE(", priority: 2", ", priority: 0",
                                 ", priority: 1") "router: { strategy: priority }\n") == 0);
    char buf[128];
    TH_CHECK_STR(cands(&w, NULL, "alloy", NULL, false, buf, sizeof buf), "b,c,a");
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_first_matching_route_wins)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE("", ", priority: 1",
                                 ", priority: 2") "router:\n"
                                                  "  strategy: priority\n"
                                                  "  routes:\n"
                                                  "    - match: { tenant: \"acme\", voice: \"clone-*\" }\n"
                                                  "      providers: [c]\n"
                                                  "    - match: { model: \"hd*\" }\n"
                                                  "      providers: [c, b]\n"
                                                  "    - match: { voice: \"x?\" }\n"
                                                  "      providers: [b]\n") == 0);
    char buf[128];
    /* tenant and voice both match the first route */
    TH_CHECK_STR(cands(&w, "acme", "clone-bob", NULL, false, buf, sizeof buf), "c");
    /* voice matches, tenant not: no first route; no model; voice clone-bob is not x?: all */
    TH_CHECK_STR(cands(&w, "other", "clone-bob", NULL, false, buf, sizeof buf), "a,b,c");
    TH_CHECK_STR(cands(&w, NULL, "clone-bob", NULL, false, buf, sizeof buf), "a,b,c");
    /* the model route: its providers, in strategy order (b has the lower priority value) */
    TH_CHECK_STR(cands(&w, "other", "alloy", "hd-1", false, buf, sizeof buf), "b,c");
    /* first match wins: acme + clone-* + hd model takes route 1, not route 2 */
    TH_CHECK_STR(cands(&w, "acme", "clone-x", "hd", false, buf, sizeof buf), "c");
    /* ? is one character */
    TH_CHECK_STR(cands(&w, NULL, "xy", NULL, false, buf, sizeof buf), "b");
    TH_CHECK_STR(cands(&w, NULL, "xyz", NULL, false, buf, sizeof buf), "a,b,c");
    TH_CHECK_STR(cands(&w, NULL, "x", NULL, false, buf, sizeof buf), "a,b,c");
    /* the model glob against no model */
    TH_CHECK_STR(cands(&w, NULL, "alloy", "sd", false, buf, sizeof buf), "a,b,c");
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_voice_ok_filters_and_engine_voice_maps)
{
    fh_world w;
    TH_REQUIRE(
        fh_open(&w,
                THREE(", voices: { alloy: eng-a }", ", priority: 1",
                      ", priority: 2") "router: { strategy: priority }\n"
                                       "voices: { alloy: { language: en, providers: { b: cat-b } } }\n") ==
        0);
    snprintf(w.fp[2]->refuse, sizeof w.fp[2]->refuse, "alloy,echo");
    size_t idx[8];
    const char *ev[8];
    size_t n = th_route_candidates(&w.hub.route, NULL, "alloy", NULL, NULL, NULL, idx, ev, 8);
    TH_CHECK_INT(n, 2);
    TH_CHECK_INT(idx[0], 0);
    TH_CHECK_STR(ev[0], "eng-a"); /* the provider's own map */
    TH_CHECK_INT(idx[1], 1);
    TH_CHECK_STR(ev[1], "cat-b"); /* the catalogue */
    /* c refuses "echo"; nobody maps it, so the public name goes through */
    n = th_route_candidates(&w.hub.route, NULL, "echo", NULL, NULL, NULL, idx, ev, 8);
    TH_CHECK_INT(n, 2);
    TH_CHECK_STR(ev[0], "echo");
    TH_CHECK_STR(ev[1], "echo");
    /* voice_ok is asked with the engine voice: c refusing "eng-c" would not matter for alloy */
    snprintf(w.fp[0]->refuse, sizeof w.fp[0]->refuse, "eng-a");
    n = th_route_candidates(&w.hub.route, NULL, "alloy", NULL, NULL, NULL, idx, ev, 8);
    TH_CHECK_INT(n, 1);
    TH_CHECK_INT(idx[0], 1);
    /* max bounds the list */
    n = th_route_candidates(&w.hub.route, NULL, "zzz", NULL, NULL, NULL, idx, ev, 2);
    TH_CHECK_INT(n, 2);
    /* everyone refuses */
    snprintf(w.fp[0]->refuse, sizeof w.fp[0]->refuse, "nope");
    snprintf(w.fp[1]->refuse, sizeof w.fp[1]->refuse, "nope");
    snprintf(w.fp[2]->refuse, sizeof w.fp[2]->refuse, "nope");
    TH_CHECK_INT(th_route_candidates(&w.hub.route, NULL, "nope", NULL, NULL, NULL, idx, ev, 8), 0);
    TH_CHECK(fh_close(&w) == 0);
}

static bool only_c(const char *provider, void *ud)
{
    int *asked = ud;
    (*asked)++;
    return strcmp(provider, "c") == 0;
}

TH_TEST(route_tenant_restriction_filters)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE("", "", "") "router: { strategy: priority }\n") == 0);
    size_t idx[8];
    const char *ev[8];
    int asked = 0;
    size_t n = th_route_candidates(&w.hub.route, NULL, "alloy", NULL, only_c, &asked, idx, ev, 8);
    TH_CHECK_INT(n, 1);
    TH_CHECK_INT(idx[0], 2);
    TH_CHECK_INT(asked, 3);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_clone_candidates_need_can_clone)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE(", voices: { v1: mapped }", ", priority: 1",
                                 ", priority: 2") "router: { strategy: priority }\n") == 0);
    w.fp[0]->base.caps.can_clone = true;
    w.fp[2]->base.caps.can_clone = true;
    /* voice_ok is not asked for a library voice: a refusing cloner stays a candidate */
    snprintf(w.fp[2]->refuse, sizeof w.fp[2]->refuse, "v1");
    size_t idx[8];
    const char *ev[8];
    size_t n = th_route_clone_candidates(&w.hub.route, NULL, "v1", NULL, NULL, NULL, idx, ev, 8);
    TH_CHECK_INT(n, 2);
    TH_CHECK_INT(idx[0], 0);
    TH_CHECK_INT(idx[1], 2);
    TH_CHECK_STR(ev[0], "v1"); /* the library id itself, not a mapping */
    TH_CHECK_STR(ev[1], "v1");
    /* no cloner: nothing */
    w.fp[0]->base.caps.can_clone = false;
    w.fp[2]->base.caps.can_clone = false;
    TH_CHECK_INT(th_route_clone_candidates(&w.hub.route, NULL, "v1", NULL, NULL, NULL, idx, ev, 8), 0);
    /* the ordinary list is unaffected by can_clone */
    char buf[64];
    TH_CHECK_STR(cands(&w, NULL, "v2", NULL, false, buf, sizeof buf), "a,b,c");
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_clone_candidates_follow_routes)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE("", "",
                                 "") "router: { strategy: priority, routes: [ { match: { voice: \"lib-*\" }, "
                                     "providers: [b, c] } ] }\n") == 0);
    w.fp[0]->base.caps.can_clone = true;
    w.fp[2]->base.caps.can_clone = true;
    char buf[64];
    TH_CHECK_STR(cands(&w, NULL, "lib-1", NULL, true, buf, sizeof buf), "c");
    TH_CHECK_STR(cands(&w, NULL, "other", NULL, true, buf, sizeof buf), "a,c");
    TH_CHECK(fh_close(&w) == 0);
}

/* Open breakers and failed probes go last, in every strategy. */
TH_TEST(route_unavailable_providers_last)
{
    static const char *strategies[] = {"priority", "weighted", "round_robin", "least_load", "random"};
    for (size_t s = 0; s < sizeof strategies / sizeof strategies[0]; s++) {
        char yaml[1024];
        snprintf(
            yaml, sizeof yaml,
            THREE("", ", priority: 1", ", priority: 2") "router: { strategy: %s, breaker: { failures: 1, "
                                                        "failure_ratio: 0, open_for: 1h } }\n",
            strategies[s]);
        fh_world w;
        TH_REQUIRE(fh_open(&w, yaml) == 0);
        th_route_prov *a = fh_rp(&w, 0);
        TH_CHECK(th_route_allow(a));
        th_route_outcome(a, false, -1);
        TH_CHECK(!th_route_prov_available(a));
        TH_CHECK(!th_route_available(&w.hub.route, 0));
        fh_rp(&w, 1)->probe_ok = false;
        TH_CHECK(!th_route_available(&w.hub.route, 1));
        for (int round = 0; round < 6; round++) {
            size_t idx[8];
            const char *ev[8];
            size_t n = th_route_candidates(&w.hub.route, NULL, "alloy", NULL, NULL, NULL, idx, ev, 8);
            TH_CHECK_INT(n, 3);
            TH_CHECK_INT(idx[0], 2);
            if (idx[0] != 2) fprintf(stderr, "  strategy %s\n", strategies[s]);
        }
        TH_CHECK(fh_close(&w) == 0);
    }
}

TH_TEST(route_round_robin_rotates)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE("", "", "") "router: { strategy: round_robin }\n") == 0);
    int first[3] = {0, 0, 0};
    for (int i = 0; i < 9; i++) {
        size_t idx[8];
        const char *ev[8];
        TH_REQUIRE(th_route_candidates(&w.hub.route, NULL, "alloy", NULL, NULL, NULL, idx, ev, 8) == 3);
        TH_CHECK(idx[0] != idx[1] && idx[1] != idx[2] && idx[0] != idx[2]);
        first[idx[0]]++;
    }
    TH_CHECK_INT(first[0], 3);
    TH_CHECK_INT(first[1], 3);
    TH_CHECK_INT(first[2], 3);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_weighted_follows_weights)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE(", weight: 3", ", weight: 1",
                                 ", weight: 0") "router: { strategy: weighted }\n") == 0);
    int first[3] = {0, 0, 0};
    for (int i = 0; i < 50; i++) {
        size_t idx[8];
        const char *ev[8];
        TH_REQUIRE(th_route_candidates(&w.hub.route, NULL, "alloy", NULL, NULL, NULL, idx, ev, 8) == 3);
        first[idx[0]]++;
    }
    /* smooth weighted round-robin with weights 3:1:1 (0 counts as 1) is exact over whole cycles */
    TH_CHECK_INT(first[0], 30);
    TH_CHECK_INT(first[1], 10);
    TH_CHECK_INT(first[2], 10);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_least_load_prefers_idle)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, THREE("", "", "") "router: { strategy: least_load }\n") == 0);
    th_route_waiter wt = {0};
    TH_CHECK_INT(th_route_acquire(fh_rp(&w, 0), &wt), TH_SLOT_NOW);
    TH_CHECK_INT(th_route_acquire(fh_rp(&w, 0), &wt), TH_SLOT_NOW);
    TH_CHECK_INT(th_route_acquire(fh_rp(&w, 2), &wt), TH_SLOT_NOW);
    size_t idx[8];
    const char *ev[8];
    TH_REQUIRE(th_route_candidates(&w.hub.route, NULL, "alloy", NULL, NULL, NULL, idx, ev, 8) == 3);
    TH_CHECK_INT(idx[0], 1);
    TH_CHECK_INT(idx[1], 2);
    TH_CHECK_INT(idx[2], 0);
    th_route_release(fh_rp(&w, 0));
    th_route_release(fh_rp(&w, 0));
    th_route_release(fh_rp(&w, 2));
    TH_CHECK(fh_close(&w) == 0);
}

typedef struct grant_log {
    int order[8];
    int n;
} grant_log;

typedef struct tw {
    th_route_waiter w;
    grant_log *log;
    int id;
} tw;

static void on_grant(void *ud)
{
    tw *t = ud;
    if (t->log->n < 8) t->log->order[t->log->n++] = t->id;
}

TH_TEST(route_slots_queue_and_grant_in_order)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, "providers:\n" PROV("a", ", concurrency: 2, queue: 2")) == 0);
    th_route_prov *rp = fh_rp(&w, 0);
    grant_log log = {{0}, 0};
    tw t[5];
    for (int i = 0; i < 5; i++)
        t[i] = (tw){.w = {.grant = on_grant, .ud = &t[i]}, .log = &log, .id = i};
    TH_CHECK_INT(th_route_acquire(rp, &t[0].w), TH_SLOT_NOW);
    TH_CHECK_INT(th_route_acquire(rp, &t[1].w), TH_SLOT_NOW);
    TH_CHECK_INT(rp->inflight, 2);
    TH_CHECK_INT(th_route_acquire(rp, &t[2].w), TH_SLOT_QUEUED);
    TH_CHECK_INT(th_route_acquire(rp, &t[3].w), TH_SLOT_QUEUED);
    TH_CHECK_INT(th_route_acquire(rp, &t[4].w), TH_SLOT_FULL);
    TH_CHECK_INT(rp->waiting, 2);
    TH_CHECK_INT(log.n, 0);
    /* a release passes the slot to the first waiter */
    th_route_release(rp);
    TH_CHECK_INT(log.n, 1);
    TH_CHECK_INT(log.order[0], 2);
    TH_CHECK_INT(rp->inflight, 2);
    TH_CHECK_INT(rp->waiting, 1);
    /* a queue with room again: queued, not NOW, while someone waits (FIFO, no overtaking) */
    TH_CHECK_INT(th_route_acquire(rp, &t[4].w), TH_SLOT_QUEUED);
    TH_CHECK_INT(rp->waiting, 2);
    /* a waiter that gives up leaves the queue without a grant */
    th_route_unwait(rp, &t[3].w);
    TH_CHECK_INT(rp->waiting, 1);
    th_route_release(rp);
    TH_CHECK_INT(log.n, 2);
    TH_CHECK_INT(log.order[1], 4);
    TH_CHECK_INT(rp->waiting, 0);
    TH_CHECK(rp->wait_head == NULL && rp->wait_tail == NULL);
    th_route_release(rp);
    th_route_release(rp);
    TH_CHECK_INT(rp->inflight, 0);
    /* releasing with nothing in flight stays at 0 */
    th_route_release(rp);
    TH_CHECK_INT(rp->inflight, 0);
    TH_CHECK_INT(log.n, 2);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_unwait_middle_and_tail)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, "providers:\n" PROV("a", ", concurrency: 1, queue: 3")) == 0);
    th_route_prov *rp = fh_rp(&w, 0);
    grant_log log = {{0}, 0};
    tw t[4];
    for (int i = 0; i < 4; i++)
        t[i] = (tw){.w = {.grant = on_grant, .ud = &t[i]}, .log = &log, .id = i};
    TH_CHECK_INT(th_route_acquire(rp, &t[0].w), TH_SLOT_NOW);
    for (int i = 1; i < 4; i++)
        TH_CHECK_INT(th_route_acquire(rp, &t[i].w), TH_SLOT_QUEUED);
    th_route_unwait(rp, &t[2].w); /* middle */
    th_route_unwait(rp, &t[3].w); /* tail */
    TH_CHECK(rp->wait_head == &t[1].w && rp->wait_tail == &t[1].w);
    th_route_release(rp);
    TH_CHECK_INT(log.n, 1);
    TH_CHECK_INT(log.order[0], 1);
    th_route_release(rp);
    TH_CHECK_INT(rp->inflight, 0);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_concurrency_zero_is_unlimited)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, "providers:\n" PROV("a", ", concurrency: 0, queue: 0")) == 0);
    th_route_prov *rp = fh_rp(&w, 0);
    th_route_waiter wt = {0};
    for (int i = 0; i < 100; i++)
        TH_CHECK_INT(th_route_acquire(rp, &wt), TH_SLOT_NOW);
    TH_CHECK_INT(rp->inflight, 100);
    TH_CHECK_INT(rp->waiting, 0);
    for (int i = 0; i < 100; i++)
        th_route_release(rp);
    TH_CHECK_INT(rp->inflight, 0);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST(route_queue_zero_is_full_at_once)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, "providers:\n" PROV("a", ", concurrency: 1, queue: 0")) == 0);
    th_route_prov *rp = fh_rp(&w, 0);
    th_route_waiter wt = {0};
    TH_CHECK_INT(th_route_acquire(rp, &wt), TH_SLOT_NOW);
    TH_CHECK_INT(th_route_acquire(rp, &wt), TH_SLOT_FULL);
    TH_CHECK_INT(rp->waiting, 0);
    th_route_release(rp);
    TH_CHECK_INT(th_route_acquire(rp, &wt), TH_SLOT_NOW);
    th_route_release(rp);
    TH_CHECK(fh_close(&w) == 0);
}

/* Breaker accounting through the route: outcomes, the EWMA of the first byte, allowance without outcome. */
TH_TEST(route_outcomes_and_breaker)
{
    fh_world w;
    TH_REQUIRE(fh_open(&w, "providers:\n" PROV("a", "") "router: { breaker: { failures: 3, failure_ratio: 0, "
                                                        "open_for: 1h, half_open_probes: 1 } }\n") == 0);
    th_route_prov *rp = fh_rp(&w, 0);
    TH_CHECK(th_route_allow(rp));
    th_route_outcome(rp, true, 100);
    TH_CHECK(rp->ewma_first_byte_ms > 99.9 && rp->ewma_first_byte_ms < 100.1);
    TH_CHECK(th_route_allow(rp));
    th_route_outcome(rp, true, 200);
    TH_CHECK(rp->ewma_first_byte_ms > 119.9 && rp->ewma_first_byte_ms < 120.1); /* 0.8*100 + 0.2*200 */
    TH_CHECK_INT(rp->calls, 2);
    for (int i = 0; i < 2; i++) {
        TH_CHECK(th_route_allow(rp));
        th_route_outcome(rp, false, -1);
    }
    TH_CHECK(th_route_prov_available(rp));
    /* an allowed call that ends with no outcome does not count */
    TH_CHECK(th_route_allow(rp));
    th_route_outcome_none(rp);
    TH_CHECK(th_route_prov_available(rp));
    TH_CHECK_INT(rp->calls, 4);
    TH_CHECK(th_route_allow(rp));
    th_route_outcome(rp, false, -1);
    TH_CHECK(!th_route_prov_available(rp));
    TH_CHECK(!th_route_allow(rp));
    TH_CHECK_INT(rp->failures, 3);
    TH_CHECK_INT(th_breaker_get(&rp->breaker, th_mono_ms()), TH_BREAKER_OPEN);
    TH_CHECK(fh_close(&w) == 0);
}

TH_TEST_MAIN()
