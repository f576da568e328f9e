/* hub: builds the gateway from its config, runs the loop, drains on SIGTERM. */
#include "hub/hub.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/sdnotify.h"
#include "core/str.h"
#include "cluster/nodevoice.h"
#include "hub/reload.h"
#include "providers/upstream.h"
#include "voice/library.h"

typedef struct th_hub_deferred {
    struct th_hub_deferred *next;
    void (*fn)(void *);
    void *ptr;
} th_hub_deferred;

static void run_deferred(th_hub *hub)
{
    while (hub->deferred) {
        th_hub_deferred *list = hub->deferred;
        hub->deferred = NULL;
        hub->deferred_tail = NULL;
        while (list) {
            th_hub_deferred *d = list;
            list = d->next;
            d->fn(d->ptr);
            free(d);
        }
    }
}

static void reaper_cb(uv_check_t *h)
{
    run_deferred(h->data);
}

int th_hub_defer(th_hub *hub, void (*fn)(void *), void *ptr)
{
    th_hub_deferred *d = malloc(sizeof *d);
    if (d == NULL) {
        fn(ptr);
        return -1;
    }
    d->fn = fn;
    d->ptr = ptr;
    d->next = NULL;
    /* FIFO: a free deferred after a start runs after it */
    if (hub->deferred_tail)
        hub->deferred_tail->next = d;
    else
        hub->deferred = d;
    hub->deferred_tail = d;
    return 0;
}

uint64_t th_hub_requests(const th_hub *hub)
{
    return (uint64_t)th_metrics_sum(hub->metrics, TH_M_REQUESTS, 0, NULL);
}

uint64_t th_hub_errors(const th_hub *hub)
{
    return (uint64_t)th_metrics_sum(hub->metrics, TH_M_REQUESTS, 1, "400");
}

uint64_t th_hub_chars(const th_hub *hub)
{
    return (uint64_t)th_metrics_sum(hub->metrics, TH_M_CHARS, 0, NULL);
}

int th_hub_provider_index(const th_hub *hub, const char *name)
{
    for (size_t i = 0; i < hub->n_providers; i++)
        if (strcmp(hub->providers[i]->conf->name, name) == 0) return (int)i;
    return -1;
}

static void destroy_providers(th_hub *hub)
{
    if (hub->route.provs) {
        th_route_free(&hub->route); /* the route owns them: each goes with its last reference */
    } else {
        for (size_t i = 0; i < hub->n_providers; i++)
            if (hub->providers[i]) hub->providers[i]->ops->destroy(hub->providers[i]);
    }
    free(hub->providers);
    hub->providers = NULL;
    hub->n_providers = 0;
}

static int node_targets(th_hub *hub, th_provider *p, char *err, size_t errlen);

th_provider *th_hub_provider_new(th_hub *hub, const th_provider_conf *pc, char *err, size_t errlen)
{
    const th_provider_ops *ops = th_provider_kind(pc->type);
    if (ops == NULL) {
        snprintf(err, errlen, "type %s is not available in this build", pc->type);
        return NULL;
    }
    th_provider *p = ops->create(hub->loop, pc, hub->log, err, errlen);
    if (p != NULL && node_targets(hub, p, err, errlen) != 0) {
        p->ops->destroy(p);
        return NULL;
    }
    return p;
}

static int create_providers(th_hub *hub)
{
    const th_config *cfg = hub->cfg;
    hub->providers = calloc(cfg->n_providers ? cfg->n_providers : 1, sizeof *hub->providers);
    if (hub->providers == NULL) return -1;
    for (size_t i = 0; i < cfg->n_providers; i++) {
        const th_provider_conf *pc = &cfg->providers[i];
        char err[256] = "";
        th_provider *p = th_hub_provider_new(hub, pc, err, sizeof err);
        if (p == NULL) {
            TH_LOG(hub->log, TH_LOG_ERROR, "provider %s: %s", pc->name, err);
            return -1;
        }
        hub->providers[hub->n_providers++] = p;
        TH_LOG(hub->log, TH_LOG_INFO, "provider %s (%s) ready", pc->name, pc->type);
    }
    return 0;
}

/* ---- worker nodes: the registry as the targets of `nodes` providers without a base_url ---- */

static int node_pick(void *ud, const th_provider_conf *pc, const th_voice_ref *ref, char *base_url,
                     size_t len, void **lease, th_perr *err)
{
    th_hub *hub = ud;
    th_node_pick how = TH_NODE_PICK_ROUND_ROBIN;
    (void)th_node_pick_parse(th_upstream_opt(pc, "strategy", NULL), &how);
    /* a provider speaks one protocol (option protocol) and goes only to nodes that registered with it;
     * nodes holding the library voice go first */
    th_node_proto proto = TH_NODE_PROTO_TTSHUB;
    (void)th_node_proto_parse(th_upstream_opt(pc, "protocol", NULL), &proto);
    bool s2 = proto == TH_NODE_PROTO_SEED2;
    th_node *n = hub->registry
                     ? th_registry_pick_for(hub->registry, pc->engine, (int)proto, s2 && ref ? ref->id : NULL,
                                            s2 && ref ? ref->sha256 : NULL, how, th_mono_ms())
                     : NULL;
    if (n == NULL) {
        th_perr_set(err, TH_PERR_OVERLOADED, 0, "no online %s node with room",
                    pc->engine && *pc->engine ? pc->engine : "worker");
        err->retry_after_s = 1;
        return -1;
    }
    th_strlcpy(base_url, th_node_url(n), len);
    *lease = n;
    return 0;
}

static void node_release(void *ud, void *lease, bool ok)
{
    th_hub *hub = ud;
    th_registry_release(hub->registry, lease, ok, th_mono_ms());
}

static bool node_ref_holds(void *ud, const char *target, const th_voice_ref *ref)
{
    th_hub *hub = ud;
    return th_registry_voice_held(hub->registry, target, ref->id, ref->sha256);
}

static void node_ref_note(void *ud, const char *target, const th_voice_ref *ref, bool held)
{
    th_hub *hub = ud;
    th_registry_voice_set(hub->registry, target, ref->id, ref->sha256, held);
}

static const char *node_lease_name(void *ud, void *lease)
{
    (void)ud;
    return th_node_id(lease);
}

/* A nodes provider: routed over the registry when it has no base_url (once the registry exists), and
 * sending the cluster token to its nodes. */
static int node_targets(th_hub *hub, th_provider *p, char *err, size_t errlen)
{
    const th_provider_conf *pc = p->conf;
    if (strcmp(pc->type, "nodes") != 0) return 0;
    th_upstream_targets t = {node_pick, node_release, hub, node_ref_holds, node_ref_note, node_lease_name};
    if (hub->registry != NULL && (pc->base_url == NULL || pc->base_url[0] == 0))
        th_upstream_set_targets(p, &t);
    const char *tenv = hub->cfg->registry.token_env;
    const char *token = tenv && *tenv ? getenv(tenv) : NULL;
    if (th_upstream_set_bearer(p, token) != 0) {
        snprintf(err, errlen, "registry.token_env: the cluster token is too long or has a line break");
        return -1;
    }
    return 0;
}

static void registry_tick(uv_timer_t *t)
{
    th_hub *hub = t->data;
    th_registry_sweep(hub->registry, th_mono_ms());
}

static int create_registry(th_hub *hub)
{
    const th_config *cfg = hub->cfg;
    th_registry_conf rc = {.heartbeat_interval_ms = cfg->registry.heartbeat_interval_ms,
                           .dead_threshold_ms = cfg->registry.dead_threshold_ms,
                           .remove_after_ms = cfg->registry.remove_after_ms,
                           .max_capacity = cfg->registry.max_capacity,
                           .max_node_bytes = cfg->registry.max_node_bytes,
                           .max_bytes = cfg->registry.max_bytes,
                           .max_node_voices = cfg->registry.max_node_voices};
    hub->registry = th_registry_new(&rc, hub->log);
    if (hub->registry == NULL) return -1;
    char nerr[160];
    if (th_netacl_parse(&hub->safe.trusted_nets, (const char *const *)cfg->registry.trusted_networks,
                        cfg->registry.n_trusted_networks, nerr, sizeof nerr) != 0)
        return -1;
    static const char *const def_allowed[] = {"loopback", "private"};
    bool dflt = cfg->registry.n_allowed_networks == 0;
    if (th_netacl_parse(&hub->safe.allowed_nets,
                        dflt ? def_allowed : (const char *const *)cfg->registry.allowed_networks,
                        dflt ? 2 : cfg->registry.n_allowed_networks, nerr, sizeof nerr) != 0)
        return -1;
    hub->safe.ctl_rate = th_iprate_new(4096);
    if (hub->safe.ctl_rate == NULL) return -1;
    uv_timer_init(hub->loop, &hub->registry_timer);
    hub->registry_timer.data = hub;
    if (strcmp(cfg->registry.backend, "redis") == 0 && hub->redis != NULL) {
        hub->regsync = th_regsync_new(hub->loop, hub->registry, hub->redis, cfg->redis.prefix,
                                      cfg->registry.remove_after_ms, hub->log);
        if (hub->regsync == NULL) return -1;
    }
    th_client_conf cc = {.max_host_connections = 4, .max_total_connections = 64, .max_connects_cache = 16};
    hub->ctl_client = th_client_new(hub->loop, &cc);
    if (hub->ctl_client == NULL) return -1;
    for (size_t i = 0; i < hub->n_providers; i++) {
        char err[160] = "";
        if (node_targets(hub, hub->providers[i], err, sizeof err) != 0) {
            TH_LOG(hub->log, TH_LOG_ERROR, "%s", err);
            return -1;
        }
    }
    char bearer[560] = "";
    const char *ctok =
        cfg->registry.token_env && *cfg->registry.token_env ? getenv(cfg->registry.token_env) : NULL;
    if (ctok && *ctok) snprintf(bearer, sizeof bearer, "Bearer %s", ctok);
    th_nodevoice_conf nvc = {.concurrency = cfg->registry.voice_push_concurrency,
                             .timeout_ms = cfg->registry.voice_push_timeout_ms,
                             .max_per_node = cfg->registry.max_node_voices,
                             .bearer = bearer};
    hub->nodevoice = th_nodevoice_new(hub->registry, hub->vlib, hub->ctl_client, &nvc, hub->log);
    if (hub->nodevoice == NULL) return -1;
    th_registry_set_ready_listener(hub->registry, th_nodevoice_node_ready, hub->nodevoice);
    uv_timer_start(&hub->registry_timer, registry_tick, 1000, 1000);
    return 0;
}

/* after the providers: their jobs hold nodes until they end */
static void free_registry(th_hub *hub)
{
    if (hub->registry == NULL) return;
    uv_timer_stop(&hub->registry_timer);
    uv_close((uv_handle_t *)&hub->registry_timer, NULL);
    if (hub->ctl_client) th_client_close(hub->ctl_client, NULL, NULL);
    hub->ctl_client = NULL;
    th_registry_free(hub->registry);
    hub->registry = NULL;
    th_netacl_free(&hub->safe.trusted_nets);
    th_netacl_free(&hub->safe.allowed_nets);
    th_iprate_free(hub->safe.ctl_rate);
    hub->safe.ctl_rate = NULL;
}

static void free_governance(th_hub *hub)
{
    if (hub->ext && hub->ext->free) hub->ext->free(hub, hub->ext->ud);
    hub->ext = NULL;
    th_tracer_close(hub->tracer); /* sends what is waiting, then frees itself */
    hub->tracer = NULL;
    th_announce_free(hub->announce);
    hub->announce = NULL;
    if (hub->registry) th_registry_set_ready_listener(hub->registry, NULL, NULL);
    th_nodevoice_free(hub->nodevoice); /* before the library it reads */
    hub->nodevoice = NULL;
    th_vlib_free(hub->vlib); /* before the redis connection it may use */
    hub->vlib = NULL;
    th_regsync_free(hub->regsync); /* before the redis connection it writes to */
    hub->regsync = NULL;
    th_policy *policy = hub->policy; /* before the limiter, quota and cache it combines */
    hub->policy = NULL;
    th_policy_free(policy);
    th_cache_free(hub->cache);
    hub->cache = NULL;
    th_quota_free(hub->quota);
    hub->quota = NULL;
    th_limiter_free(hub->limiter);
    hub->limiter = NULL;
    th_auth_free(hub->auth);
    hub->auth = NULL;
    if (hub->redis) th_redis_free(hub->redis);
    hub->redis = NULL;
}

static void housekeeping_cb(uv_timer_t *t)
{
    th_hub *hub = t->data;
    if (hub->limiter) th_limiter_sweep(hub->limiter, th_wall_ms());
}

/* A voice deleted through another hub (shared library): engines drop their copies here too. */
static void voice_removed(void *ud, const th_voice_ref *ref)
{
    th_hub *hub = ud;
    for (size_t i = 0; i < hub->n_providers; i++) {
        th_provider *p = hub->providers[i];
        if (p && p->ops->voice_forget) p->ops->voice_forget(p, ref);
    }
    if (hub->registry) th_registry_voice_set(hub->registry, NULL, ref->id, NULL, false);
}

static int create_governance(th_hub *hub)
{
    const th_config *cfg = hub->cfg;
    char err[256] = "";
    hub->auth = th_auth_new(cfg, err, sizeof err);
    if (hub->auth == NULL) {
        TH_LOG(hub->log, TH_LOG_ERROR, "auth: %s", err);
        fprintf(stderr, "ttshub: auth: %s\n", err);
        return -1;
    }
    bool limits_redis = strcmp(cfg->rate_limit.backend, "redis") == 0;
    bool cache_redis = strcmp(cfg->cache.backend, "redis") == 0;
    bool registry_redis = strcmp(cfg->registry.backend, "redis") == 0;
    bool voices_redis = strcmp(cfg->voice_library.backend, "redis") == 0;
    if (limits_redis || cache_redis || registry_redis || voices_redis) {
        th_redis_pool_conf pc = {.policy_conns = cfg->redis.pool,
                                 .max_inflight = (uint32_t)cfg->redis.max_inflight};
        hub->redis = th_redis_new_pool(hub->loop, cfg->redis.url, cfg->redis.timeout_ms, &pc, hub->log, err,
                                       sizeof err);
        if (hub->redis == NULL) {
            TH_LOG(hub->log, TH_LOG_ERROR, "redis: %s", err);
            fprintf(stderr, "ttshub: redis: %s\n", err);
            return -1;
        }
    }
    hub->limiter = th_limiter_new(hub->loop, cfg, limits_redis ? hub->redis : NULL, hub->log);
    if (hub->limiter == NULL) return -1;
    /* quotas live where the limits live: local files, or Redis when hubs share state */
    hub->quota = th_quota_new(hub->loop, cfg, limits_redis ? hub->redis : NULL, hub->log, err, sizeof err);
    if (hub->quota == NULL) {
        TH_LOG(hub->log, TH_LOG_ERROR, "quota: %s", err);
        fprintf(stderr, "ttshub: quota: %s\n", err);
        return -1;
    }
    hub->cache = th_cache_new(hub->loop, cfg, cache_redis ? hub->redis : NULL, hub->log);
    if (hub->cache == NULL) return -1;
    th_vlib_conf vc = {
        .backend = cfg->voice_library.backend,
        .data_dir = cfg->data_dir,
        .redis = voices_redis ? hub->redis : NULL,
        .prefix = cfg->redis.prefix,
        .cache_bytes = cfg->voice_library.cache_bytes,
        .max_voices = (size_t)cfg->voice_library.max_voices,
    };
    hub->vlib = th_vlib_new(hub->loop, &vc, hub->log, err, sizeof err);
    if (hub->vlib == NULL) {
        TH_LOG(hub->log, TH_LOG_ERROR, "voice library: %s", err);
        fprintf(stderr, "ttshub: voice library: %s\n", err);
        return -1;
    }
    th_vlib_on_removed(hub->vlib, voice_removed, hub);
    if (limits_redis && hub->redis != NULL) {
        hub->policy = th_policy_new(hub->redis, hub->limiter, hub->quota, hub->cache, hub->metrics, hub->log);
        if (hub->policy == NULL) return -1;
    }
    return 0;
}

void th_hub_http_limits(const th_config *cfg, th_http_limits *lim)
{
    *lim = (th_http_limits){
        .max_header = (size_t)cfg->limits.max_header,
        .max_body = (size_t)cfg->limits.max_body,
        .max_upload = (size_t)cfg->limits.max_upload,
        .max_connections = cfg->limits.max_connections,
        .header_timeout_ms = cfg->limits.header_timeout_ms,
        .idle_timeout_ms = cfg->limits.idle_timeout_ms,
        .request_timeout_ms = cfg->limits.request_timeout_ms,
        .max_connections_per_ip = cfg->limits.max_connections_per_ip,
        .max_buffered_bodies = cfg->limits.max_buffered_bodies,
    };
}

static void unbuild_rest(th_hub *hub)
{
    destroy_providers(hub); /* through the route once it owns them */
    th_metrics_free(hub->metrics);
    hub->metrics = NULL;
    free_registry(hub);
}

int th_hub_build(th_hub *hub)
{
    if (create_providers(hub) != 0) return -1;
    hub->metrics = th_metrics_new();
    if (hub->metrics == NULL || th_route_init(&hub->route, hub) != 0) goto out_providers;
    if (create_governance(hub) != 0) goto out_governance;
    if (create_registry(hub) != 0) goto out_governance;
    hub->tracer = th_tracer_new(hub->loop, hub->cfg->tracing.otlp_endpoint, hub->cfg->tracing.service_name,
                                hub->cfg->tracing.sample_ratio, hub->log);
    hub->announce = th_announce_new();
    if (hub->announce == NULL) goto out_governance;
    return 0;

out_governance:
    free_governance(hub);
out_providers:
    unbuild_rest(hub);
    return -1;
}

void th_hub_unbuild(th_hub *hub)
{
    free_governance(hub);
    unbuild_rest(hub);
}

void th_hub_start(th_hub *hub)
{
    uv_check_init(hub->loop, &hub->reaper);
    hub->reaper.data = hub;
    uv_check_start(&hub->reaper, reaper_cb);
    uv_timer_init(hub->loop, &hub->housekeeping);
    hub->housekeeping.data = hub;
    uv_timer_start(&hub->housekeeping, housekeeping_cb, 10000, 10000);
    th_route_start_probes(&hub->route);
}

void th_hub_stop(th_hub *hub)
{
    th_route_stop_probes(&hub->route);
    uv_timer_stop(&hub->housekeeping);
    uv_close((uv_handle_t *)&hub->housekeeping, NULL);
    free_governance(hub);
    destroy_providers(hub);
    free_registry(hub);
    th_reload_free(hub);
    uv_check_stop(&hub->reaper);
    run_deferred(hub);
    uv_close((uv_handle_t *)&hub->reaper, NULL);
}

void th_hub_run_deferred(th_hub *hub)
{
    run_deferred(hub);
}

void th_hub_finish(th_hub *hub)
{
    th_route_free(&hub->route);
    th_metrics_free(hub->metrics);
    hub->metrics = NULL;
}
