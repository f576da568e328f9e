/* route: which providers may serve a request, in what order, and whether
 * one can take another call now.
 *
 * Per provider the hub keeps a th_route_prov: its breaker, live in-flight
 * count, a bounded FIFO of requests waiting for a slot, an EWMA of the time
 * to first byte, and the result of its last active health probe. Candidate
 * lists come from router.routes (first match on tenant/voice/model) or all
 * providers, minus those that do not know the voice, ordered by the
 * configured strategy with unavailable ones (open breaker, failed probe)
 * last. Loop thread only.
 *
 * A th_route_prov is reference-counted and outlives a config reload: the
 * route holds one reference for each provider of the config in force, and
 * every synthesis holds one on each candidate it may call. A reload keeps an
 * unchanged provider's th_route_prov (breaker, EWMA, in-flight count, queue
 * and the provider itself with its connection pool) and retires a changed or
 * removed one: it leaves the route, drains the calls that hold it, and the
 * last reference destroys the provider. */
#ifndef TH_HUB_ROUTE_H
#define TH_HUB_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "routing/balance.h"
#include "routing/breaker.h"
#include "config/config.h"
#include "providers/provider.h"

struct th_hub;

typedef struct th_route_waiter {
    struct th_route_waiter *next, *prev;
    void (*grant)(void *ud); /* a slot is yours: start now */
    void *ud;
    uint64_t since_ms;
} th_route_waiter;

typedef struct th_route_prov {
    int refs;               /* the route's while live, plus one per synthesis using it */
    struct th_route *owner; /* the route (lives as long as the hub) */
    th_config *cfg;         /* a reference: the config p->conf belongs to */
    th_provider *p;         /* destroyed with the last reference */
    bool retired;           /* left the route on a reload: drains, then goes */
    char cache_name[96];    /* "name#<hash of its audio-relevant settings>": its name in cache keys */
    th_breaker breaker;
    th_breaker_state last_state;
    int inflight;
    int waiting;
    th_route_waiter *wait_head, *wait_tail;
    double ewma_first_byte_ms; /* 0 until the first sample */
    uint64_t calls, failures;
    bool probe_ok; /* last active probe (true until one fails) */
    bool probing;
    char probe_detail[128];
    int64_t current_weight; /* smooth weighted round-robin state */
} th_route_prov;

typedef struct th_route {
    struct th_hub *hub;
    uv_timer_t *probe_timer; /* separately allocated; freed in its close callback */
    th_route_prov **provs;   /* the live providers, parallel to hub->providers */
    size_t n;
    th_balance balance;
} th_route;

int th_route_init(th_route *r, struct th_hub *hub);
/** Drops the route's references (providers whose calls have ended are destroyed). */
void th_route_free(th_route *r);

/** A new th_route_prov for provider p made from cfg (takes a config reference; the route_prov owns p). */
th_route_prov *th_route_prov_new(th_route *r, th_provider *p, th_config *cfg);
th_route_prov *th_route_prov_ref(th_route_prov *rp);
/** Drops a reference; the last one destroys the provider and frees rp. Call it outside the provider's
 * own callbacks (synth does it from a deferred free). */
void th_route_prov_unref(th_route_prov *rp);
/** Installs a new set of live providers (a reload): takes over provs (n references), retires those of
 * the old set that are not in the new one, and applies cfg's router settings (strategy, breaker). */
void th_route_replace(th_route *r, th_route_prov **provs, size_t n, const th_config *cfg);
/** The breaker settings of cfg. */
void th_route_breaker_conf(const th_config *cfg, th_breaker_conf *bc);

/** The candidates for one request, best first, at most max; returns the count. Writes the engine
 * voice for each (from the provider's voices map, then the catalogue, else the public name). Providers
 * that reject the voice (voice_ok) or that the tenant may not use (allowed, NULL = all) are left out. */
size_t th_route_candidates(th_route *r, const char *tenant, const char *voice, const char *model,
                           bool (*allowed)(const char *provider, void *ud), void *allowed_ud, size_t *idx,
                           const char **engine_voice, size_t max);
/** The candidates for a library (cloned) voice: like th_route_candidates, but only providers whose kind
 * can clone (caps.can_clone), without asking voice_ok; the engine voice is the library id itself. */
size_t th_route_clone_candidates(th_route *r, const char *tenant, const char *voice, const char *model,
                                 bool (*allowed)(const char *provider, void *ud), void *allowed_ud,
                                 size_t *idx, const char **engine_voice, size_t max);
/** true when provider i's breaker allows a call and its probe is not failing. */
bool th_route_available(th_route *r, size_t i);
bool th_route_prov_available(const th_route_prov *rp);

typedef enum { TH_SLOT_NOW = 0, TH_SLOT_QUEUED, TH_SLOT_FULL } th_slot_rc;
/** Asks for a slot on a provider: NOW (inflight counted), QUEUED (w->grant is called later; cancel with
 * th_route_unwait), or FULL (queue full). */
th_slot_rc th_route_acquire(th_route_prov *rp, th_route_waiter *w);
void th_route_unwait(th_route_prov *rp, th_route_waiter *w);
/** A call on the provider ended: frees its slot and grants the next waiter. */
void th_route_release(th_route_prov *rp);
/** Breaker bookkeeping for a call that th_breaker_allow let through. */
bool th_route_allow(th_route_prov *rp);
void th_route_outcome(th_route_prov *rp, bool ok, double first_byte_ms);
void th_route_outcome_none(th_route_prov *rp);

/** Starts the periodic active health probes (router.health_interval). */
void th_route_start_probes(th_route *r);
void th_route_stop_probes(th_route *r);

#endif
