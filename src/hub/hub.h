/* hub: the gateway's context and its lifetime (build, start, stop; serve/ runs it).
 *
 * Everything the gateway knows hangs off one th_hub, passed down
 * explicitly; there are no globals. One hub runs one uv loop. */
#ifndef TH_HUB_HUB_H
#define TH_HUB_HUB_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/iprate.h"
#include "core/log.h"
#include "core/netacl.h"
#include "core/uuid.h"
#include "http/client.h"
#include "http/http.h"
#include "http/router.h"
#include "governance/announce.h"
#include "governance/auth.h"
#include "governance/cache.h"
#include "config/config.h"
#include "governance/limit.h"
#include "governance/quota.h"
#include "store/redis.h"
#include "cluster/registry.h"
#include "cluster/regsync.h"
#include "observability/metrics.h"
#include "governance/policy.h"
#include "hub/route.h"
#include "observability/trace.h"
#include "providers/provider.h"

#define TH_HUB_LAT_RING 1024

struct th_vlib; /* voice/library.h: the voice library */

typedef struct th_hub_stats {
    /* requests, errors and characters are counted once, in metrics (th_hub_requests...) */
    uint64_t inflight; /* synthesis requests under way (the ttshub_inflight_requests gauge at scrape) */
    uint64_t audio_bytes;
    float lat_ms[TH_HUB_LAT_RING]; /* durations of the last synthesis requests, for /api/status */
    uint32_t lat_n, lat_pos;
} th_hub_stats;

typedef struct th_hub th_hub;

/** Hooks of a command that runs a hub with more to it (`ttshub worker`). */
typedef struct th_hub_ext {
    int (*routes)(th_hub *hub, void *ud); /* after the hub's own routes: add more; 0 or -1 */
    int (*start)(th_hub *hub, void *ud);  /* listening: start background work; 0 or -1 */
    void (*stop)(th_hub *hub, void *ud);  /* SIGTERM/SIGINT or th_serve_shutdown, before the drain */
    void (*free)(th_hub *hub, void *ud);  /* all stopped; async work may still end on the loop */
    void *ud;
    void (*reload)(th_hub *hub, void *ud); /* SIGHUP, instead of a config reload; NULL: reload the config */
    bool node_only; /* serve /health and the ext's routes only: no client protocols, admin or pages */
} th_hub_ext;

struct th_hub {
    uv_loop_t *loop;
    const th_hub_ext *ext; /* NULL for `ttshub serve` */
    th_config *cfg;
    th_log *log;
    th_http_server *http;
    th_router *router;
    th_http_server *metrics_http; /* metrics_listen: /metrics (and /health) on a listener of their own */
    th_router *metrics_router;
    int draining;            /* servers still draining after SIGTERM */
    th_provider **providers; /* parallel to cfg->providers */
    size_t n_providers;
    th_route route; /* per-provider runtime: breakers, slots, queues */
    th_metrics *metrics;
    th_auth *auth;
    th_redis *redis; /* NULL unless a backend is redis */
    th_limiter *limiter;
    th_quota *quota;
    th_cache *cache;       /* NULL when cache.enabled is false */
    th_policy *policy;     /* limits + quota + cache in one Redis round trip; NULL unless limits use Redis */
    th_registry *registry; /* worker nodes (API.md "Worker registry") */
    th_regsync *regsync;   /* registry.backend redis: the registry shared through Redis, else NULL */
    uv_timer_t registry_timer;      /* marks silent nodes offline, once a second */
    th_client *ctl_client;          /* node commands (POST {node}/command) */
    struct th_nodevoice *nodevoice; /* library voices pushed ahead to seed-2 nodes (cluster/nodevoice.h) */
    th_announce *announce;          /* operator announcements */
    void *feed;                     /* the front end's /ws live feed (api/status.c); the hub never looks in */
    th_tracer *tracer;              /* OTLP traces; NULL when tracing.otlp_endpoint is empty */
    struct th_vlib *vlib;           /* the voice library (cloned voices) */
    uv_timer_t housekeeping;        /* limiter sweeps, probes */
    uint64_t started_ms;            /* wall clock */
    uint64_t started_mono_ms;
    th_hub_stats stats;
    struct th_reload *reload; /* live config (hub/reload.h): SIGHUP, file watch, /admin/reload */
    uint64_t cfg_generation;  /* bumped by every reload that swaps the config in */
    struct {
        bool protected_mode;    /* auth.mode none on a non-loopback listener: admin and control closed */
        th_netacl trusted_nets; /* registry.trusted_networks: nodes that need no token */
        th_netacl allowed_nets; /* registry.allowed_networks: where node URLs may point */
        th_iprate *ctl_rate;    /* registry.control_rpm per client IP */
    } safe;
    th_uuid_gen ids; /* request ids (loop thread) */
    uv_signal_t sig_term, sig_int;
    uv_check_t reaper; /* runs deferred frees once per loop turn */
    struct th_hub_deferred *deferred, *deferred_tail;
    bool stopping;
    int exit_code;
};

/** Builds the hub's parts from hub->cfg (loop, log, cfg and router set): providers, metrics, route,
 * governance, registry, tracer, announcements. 0, or -1 with what it made freed again. */
int th_hub_build(th_hub *hub);

/** Frees what th_hub_build made (a start that failed after it). */
void th_hub_unbuild(th_hub *hub);

/** Listening: starts the deferred-free reaper, housekeeping and the provider probes. */
void th_hub_start(th_hub *hub);

/** Drained: stops what th_hub_start started and frees the parts (the loop then runs out). */
void th_hub_stop(th_hub *hub);

/** After the loop: runs what is still deferred. */
void th_hub_run_deferred(th_hub *hub);

/** After the loop and the servers are freed: the route and the metrics. */
void th_hub_finish(th_hub *hub);

/** Frees ptr with fn on the next loop turn, outside any callback that may still use it.
 * Returns 0, or -1 on ENOMEM (then fn(ptr) is called now). */
int th_hub_defer(th_hub *hub, void (*fn)(void *), void *ptr);

/** Makes the provider of one config section (registry targets set for a `nodes` kind without base_url).
 * NULL with err set. */
th_provider *th_hub_provider_new(th_hub *hub, const th_provider_conf *pc, char *err, size_t errlen);

/** The HTTP server limits of a config (at start and on each reload). */
void th_hub_http_limits(const th_config *cfg, th_http_limits *lim);

/** What /api/status and the status page show, read from the metrics (the one set of counters): client
 * requests answered, of which errors (status >= 400), and code points synthesised. */
uint64_t th_hub_requests(const th_hub *hub);
uint64_t th_hub_errors(const th_hub *hub);
uint64_t th_hub_chars(const th_hub *hub);

/** Index of a provider by name, or -1. */
int th_hub_provider_index(const th_hub *hub, const char *name);

#endif
