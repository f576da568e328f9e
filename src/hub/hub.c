/* hub: builds the gateway from its config, runs the loop, drains on SIGTERM. */
#include "hub/hub.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "core/clock.h"
#include "core/sdnotify.h"
#include "core/str.h"
#include "hub/nodevoice.h"
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
    (void)th_node_pick_parse(th_upstream_opt(pc, "strategy", "round_robin"), &how);
    /* a provider speaks one protocol (option protocol) and goes only to nodes that registered with it;
     * nodes holding the library voice go first */
    th_node_proto proto = TH_NODE_PROTO_TTSHUB;
    (void)th_node_proto_parse(th_upstream_opt(pc, "protocol", "ttshub"), &proto);
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
    th_api_feed_free(hub);
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

static void shutdown_done(void *ud)
{
    th_hub *hub = ud;
    if (--hub->draining > 0) return; /* the other listener is still draining */
    TH_LOG(hub->log, TH_LOG_INFO, "drained; stopping");
    th_route_stop_probes(&hub->route);
    uv_timer_stop(&hub->housekeeping);
    uv_close((uv_handle_t *)&hub->housekeeping, NULL);
    free_governance(hub);
    destroy_providers(hub);
    free_registry(hub);
    uv_close((uv_handle_t *)&hub->sig_term, NULL);
    uv_close((uv_handle_t *)&hub->sig_int, NULL);
    th_reload_free(hub);
    uv_check_stop(&hub->reaper);
    run_deferred(hub);
    uv_close((uv_handle_t *)&hub->reaper, NULL);
}

static void begin_drain(th_hub *hub, const char *why)
{
    hub->stopping = true;
    th_sd_notify("STOPPING=1");
    th_reload_stop(hub);
    if (hub->ext && hub->ext->stop) hub->ext->stop(hub, hub->ext->ud);
    th_api_feed_shutdown(hub); /* live-feed clients get a close frame now */
    TH_LOG(hub->log, TH_LOG_INFO, "%s: draining %zu in-flight requests (grace %llums)", why,
           th_http_server_inflight(hub->http), (unsigned long long)hub->cfg->limits.shutdown_grace_ms);
    hub->draining = hub->metrics_http ? 2 : 1;
    if (hub->metrics_http) th_http_server_shutdown(hub->metrics_http, 1000, shutdown_done, hub);
    th_http_server_shutdown(hub->http, hub->cfg->limits.shutdown_grace_ms, shutdown_done, hub);
}

void th_hub_shutdown(th_hub *hub)
{
    if (!hub->stopping) begin_drain(hub, "shutdown");
}

static void on_signal(uv_signal_t *h, int signum)
{
    th_hub *hub = h->data;
    if (hub->stopping) {
        TH_LOG(hub->log, TH_LOG_WARN, "second signal %d: exiting now", signum);
        exit(1);
    }
    char why[24];
    snprintf(why, sizeof why, "signal %d", signum);
    begin_drain(hub, why);
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

static bool is_loopback(const char *listen)
{
    return th_str_startswith(listen, "127.") || th_str_startswith(listen, "[::1]") ||
           th_str_startswith(listen, "localhost:");
}

static th_config *load_config(const th_serve_opts *opts, FILE *err)
{
    if (opts->config_text != NULL) {
        th_config_errors errs = {0};
        th_config *cfg = th_config_parse(opts->config_text, strlen(opts->config_text), &errs);
        for (size_t i = 0; cfg == NULL && i < errs.n; i++)
            fprintf(err, "ttshub: %s%s%s\n", errs.items[i].path, errs.items[i].path[0] ? ": " : "",
                    errs.items[i].message);
        th_config_errors_free(&errs);
        return cfg;
    }
    const char *path = opts->config_path;
    if (path == NULL || *path == 0) path = getenv("TTSHUB_CONFIG");
    if (path == NULL || *path == 0) return th_config_default();
    th_config_errors errs = {0};
    th_config *cfg = th_config_load(path, &errs);
    if (cfg == NULL) {
        for (size_t i = 0; i < errs.n; i++) {
            const th_config_error *e = &errs.items[i];
            if (e->line > 0)
                fprintf(err, "%s:%d: %s%s%s\n", path, e->line, e->path, e->path[0] ? ": " : "", e->message);
            else
                fprintf(err, "%s: %s%s%s\n", path, e->path, e->path[0] ? ": " : "", e->message);
        }
        if (errs.n == 0) fprintf(err, "%s: cannot load config\n", path);
        th_config_errors_free(&errs);
    }
    return cfg;
}

int th_hub_serve(const th_serve_opts *opts)
{
    int rc = 1;
    th_hub hub;
    memset(&hub, 0, sizeof hub);
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return 1;
    hub.loop = &loop;
    signal(SIGPIPE, SIG_IGN);

    hub.cfg = load_config(opts, stderr);
    if (hub.cfg == NULL) goto out_loop;
    th_log_level level = hub.cfg->log.level;
    if (opts->log_level && th_log_level_parse(opts->log_level, &level) != 0) {
        fprintf(stderr, "ttshub: --log-level must be debug, info, warn or error\n");
        goto out_cfg;
    }
    hub.log = th_log_new(level, hub.cfg->log.format, hub.cfg->log.file);
    if (hub.log == NULL) {
        fprintf(stderr, "ttshub: cannot open log file %s: %s\n", hub.cfg->log.file, strerror(errno));
        goto out_cfg;
    }
    hub.started_ms = th_wall_ms();
    th_uuid_gen_init(&hub.ids);
    hub.started_mono_ms = th_mono_ms();
    hub.exit_code = 0;

    const char *listen = opts->listen && *opts->listen ? opts->listen : hub.cfg->listen;
    th_http_limits lim;
    th_hub_http_limits(hub.cfg, &lim);
    hub.http = th_http_server_new(&loop, &lim, th_api_handle, &hub, hub.log);
    if (hub.http == NULL) goto out_log;
    th_http_server_set_body_limit_fn(hub.http, th_api_body_limit);
    hub.ext = opts->ext;
    if (th_api_register(&hub) != 0) goto out_http;
    if (hub.ext && hub.ext->routes && hub.ext->routes(&hub, hub.ext->ud) != 0) goto out_http;
    if (create_providers(&hub) != 0) goto out_router;
    hub.metrics = th_metrics_new();
    if (hub.metrics == NULL || th_route_init(&hub.route, &hub) != 0) goto out_providers;
    if (create_governance(&hub) != 0) goto out_governance;
    if (create_registry(&hub) != 0) goto out_governance;
    hub.tracer = th_tracer_new(&loop, hub.cfg->tracing.otlp_endpoint, hub.cfg->tracing.service_name,
                               hub.cfg->tracing.sample_ratio, hub.log);
    hub.announce = th_announce_new();
    if (hub.announce == NULL || th_api_feed_new(&hub) != 0) goto out_governance;

    char err[256] = "";
    bool reuse_port = opts->reuse_port || hub.cfg->reload.reuse_port;
    th_http_server_set_reuse_port(hub.http, reuse_port);
    if (th_http_server_listen(hub.http, listen, err, sizeof err) != 0) {
        TH_LOG(hub.log, TH_LOG_ERROR, "cannot listen on %s: %s", listen, err);
        fprintf(stderr, "ttshub: cannot listen on %s: %s\n", listen, err);
        goto out_governance;
    }
    if (hub.metrics_router) {
        hub.metrics_http = th_http_server_new(&loop, &lim, th_api_handle_metrics, &hub, hub.log);
        if (hub.metrics_http) th_http_server_set_reuse_port(hub.metrics_http, reuse_port);
        if (hub.metrics_http == NULL ||
            th_http_server_listen(hub.metrics_http, hub.cfg->metrics_listen, err, sizeof err) != 0) {
            TH_LOG(hub.log, TH_LOG_ERROR, "cannot listen on %s: %s", hub.cfg->metrics_listen, err);
            fprintf(stderr, "ttshub: cannot listen on %s (metrics_listen): %s\n", hub.cfg->metrics_listen,
                    err);
            goto out_governance;
        }
        TH_LOG(hub.log, TH_LOG_INFO, "metrics on %s (port %d)", hub.cfg->metrics_listen,
               th_http_server_port(hub.metrics_http));
    }
    if (strcmp(hub.cfg->auth.mode, "none") == 0 && !is_loopback(listen) && !(hub.ext && hub.ext->node_only)) {
        TH_LOG(hub.log, TH_LOG_WARN,
               "auth.mode is none and ttshub listens on %s: anyone who can reach it can use it", listen);
        hub.safe.protected_mode = !hub.cfg->auth.allow_open_admin;
        if (hub.safe.protected_mode)
            TH_LOG(hub.log, TH_LOG_WARN,
                   "protected mode: /admin/*, announcements and the node routes are refused until API keys "
                   "are configured (auth.mode), the cluster token is set (registry.token_env) or "
                   "auth.allow_open_admin is true");
    }
    TH_LOG(hub.log, TH_LOG_INFO, "ttshub %s listening on %s (port %d) with %zu provider(s)%s%s", TH_VERSION,
           listen, th_http_server_port(hub.http), hub.n_providers,
           hub.cfg->path ? ", config " : ", embedded default", hub.cfg->path ? hub.cfg->path : "");

    uv_signal_init(&loop, &hub.sig_term);
    uv_signal_init(&loop, &hub.sig_int);
    hub.sig_term.data = hub.sig_int.data = &hub;
    uv_signal_start(&hub.sig_term, on_signal, SIGTERM);
    uv_signal_start(&hub.sig_int, on_signal, SIGINT);
    uv_check_init(&loop, &hub.reaper);
    hub.reaper.data = &hub;
    uv_check_start(&hub.reaper, reaper_cb);
    uv_timer_init(&loop, &hub.housekeeping);
    hub.housekeeping.data = &hub;
    uv_timer_start(&hub.housekeeping, housekeeping_cb, 10000, 10000);
    th_route_start_probes(&hub.route);
    const char *cfg_path = opts->config_text ? NULL : opts->config_path;
    if (opts->config_text == NULL && (cfg_path == NULL || *cfg_path == 0)) cfg_path = getenv("TTSHUB_CONFIG");
    if (th_reload_start(&hub, cfg_path, opts->log_level != NULL, th_api_feed_publish) != 0) {
        TH_LOG(hub.log, TH_LOG_ERROR, "cannot set up config reloads: out of memory");
        hub.exit_code = 1;
        begin_drain(&hub, "start failed");
    }
    th_sd_notify("READY=1");
    if (hub.ext && hub.ext->start && hub.ext->start(&hub, hub.ext->ud) != 0) {
        TH_LOG(hub.log, TH_LOG_ERROR, "cannot start");
        hub.exit_code = 1;
        begin_drain(&hub, "start failed");
    }

    uv_run(&loop, UV_RUN_DEFAULT);
    run_deferred(&hub);
    th_http_server_free(hub.http);
    hub.http = NULL;
    th_http_server_free(hub.metrics_http);
    hub.metrics_http = NULL;
    th_router_free(hub.router);
    hub.router = NULL;
    th_router_free(hub.metrics_router);
    hub.metrics_router = NULL;
    th_route_free(&hub.route);
    th_metrics_free(hub.metrics);
    hub.metrics = NULL;
    rc = hub.exit_code;
    TH_LOG(hub.log, TH_LOG_INFO, "stopped");
    goto out_log;

out_governance:
    free_governance(&hub);
out_providers:
    destroy_providers(&hub); /* through the route once it owns them */
    th_metrics_free(hub.metrics);
    free_registry(&hub);
out_router:
    th_router_free(hub.router);
    th_router_free(hub.metrics_router);
out_http:
    th_http_server_free(hub.http);
    th_http_server_free(hub.metrics_http);
    uv_run(&loop, UV_RUN_DEFAULT); /* let closed handles finish */
out_log:
    th_log_free(hub.log);
out_cfg:
    th_config_unref(hub.cfg);
out_loop:
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return rc;
}
