/* control: health, pages, and the route table. */
#include "api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/asset.h"
#include "core/buf.h"
#include "core/clock.h"
#include "providers/upstream.h"
#include "voice/library.h"
#include "hub/reload.h"

json_t *th_api_health_doc(th_hub *hub, const char **status_out)
{
    json_t *providers = json_object();
    size_t healthy = 0;
    uint64_t now = th_mono_ms();
    for (size_t i = 0; i < hub->n_providers; i++) {
        th_provider *p = hub->providers[i];
        const th_route_prov *rp = hub->route.provs ? hub->route.provs[i] : NULL;
        bool ok = rp == NULL || th_route_available(&hub->route, i);
        size_t nodes_total = 0, nodes_online = 0;
        bool by_registry = hub->registry && strcmp(p->conf->type, "nodes") == 0 &&
                           (p->conf->base_url == NULL || p->conf->base_url[0] == 0);
        if (by_registry) {
            th_registry_counts(hub->registry, p->conf->engine, &nodes_total, &nodes_online);
            if (nodes_online == 0) ok = false;
        }
        if (ok) healthy++;
        json_t *o = json_pack("{s:s,s:s}", "status", ok ? "healthy" : "unhealthy", "type", p->conf->type);
        if (rp) {
            json_object_set_new(o, "breaker",
                                json_string(th_breaker_state_name(th_breaker_get(&rp->breaker, now))));
            json_object_set_new(o, "in_flight", json_integer(rp->inflight));
            json_object_set_new(o, "queued", json_integer(rp->waiting));
            if (!rp->probe_ok) json_object_set_new(o, "probe", json_string(rp->probe_detail));
        }
        if (by_registry) {
            json_object_set_new(o, "nodes", json_integer((json_int_t)nodes_total));
            json_object_set_new(o, "nodes_online", json_integer((json_int_t)nodes_online));
        }
        json_object_set_new(providers, p->conf->name, o);
    }
    json_t *redis = hub->redis ? json_pack("{s:s,s:b}", "status", th_redis_state(hub->redis), "connected",
                                           th_redis_connected(hub->redis))
                               : json_pack("{s:s}", "status", "disabled");
    json_t *limiter =
        json_pack("{s:s,s:s,s:I}", "backend", hub->limiter ? th_limiter_backend(hub->limiter) : "none",
                  "on_backend_error", hub->cfg->rate_limit.on_backend_error, "ip_entries",
                  (json_int_t)(hub->limiter ? th_limiter_ip_entries(hub->limiter) : 0));
    size_t reg_total = 0, reg_online = 0;
    if (hub->registry) th_registry_counts(hub->registry, NULL, &reg_total, &reg_online);
    json_t *registry = json_pack("{s:s,s:s,s:I,s:I}", "status", hub->registry ? "enabled" : "disabled",
                                 "backend", hub->cfg->registry.backend, "nodes", (json_int_t)reg_total,
                                 "online", (json_int_t)reg_online);
    bool redis_down = hub->redis && !th_redis_connected(hub->redis);
    const char *status = hub->stopping                 ? "unhealthy"
                         : healthy == hub->n_providers ? "healthy"
                         : healthy > 0                 ? "degraded"
                                                       : "unhealthy";
    if (redis_down && strcmp(status, "healthy") == 0) status = "degraded"; /* shared state is unreachable */
    json_t *o = json_pack(
        "{s:s,s:s,s:I,s:{s:o,s:o,s:o,s:o},s:{s:I,s:I}}", "status", status, "version", TH_VERSION,
        "uptime_seconds", (json_int_t)((th_mono_ms() - hub->started_mono_ms) / 1000), "components",
        "providers", providers, "registry", registry, "redis", redis, "limiter", limiter, "requests", "total",
        (json_int_t)th_hub_requests(hub), "in_flight", (json_int_t)hub->stats.inflight);
    json_t *comp = o ? json_object_get(o, "components") : NULL;
    if (comp && hub->vlib)
        json_object_set_new(comp, "voice_library",
                            json_pack("{s:s,s:I,s:I}", "backend", th_vlib_backend(hub->vlib), "voices",
                                      (json_int_t)th_vlib_count(hub->vlib), "cached_bytes",
                                      (json_int_t)th_vlib_cached_bytes(hub->vlib)));
    if (o) json_object_set_new(o, "config", th_reload_version(hub)); /* the version of the config in force */
    /* the voice-clone gateway's HealthCheck also has a wall-clock timestamp and these registry counts
     * (its ready = serving, which is our online; a node in standby is in neither) */
    if (o && (json_object_set_new(o, "timestamp", json_real((double)th_wall_ms() / 1000.0)) != 0 ||
              json_object_set_new(registry, "total_nodes", json_integer((json_int_t)reg_total)) != 0 ||
              json_object_set_new(registry, "online_nodes", json_integer((json_int_t)reg_online)) != 0 ||
              json_object_set_new(registry, "ready_nodes", json_integer((json_int_t)reg_online)) != 0)) {
        json_decref(o);
        o = NULL;
    }
    *status_out = status;
    return o;
}

void th_api_health(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/health";
    const char *status = "unhealthy";
    json_t *o = th_api_health_doc(hub, &status);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (body == NULL) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    th_http_set_header(req, "Cache-Control", "no-store");
    th_api_reply(c, strcmp(status, "unhealthy") == 0 ? 503 : 200, "application/json", body, strlen(body));
    free(body);
}

void th_api_page(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/";
    const char *path = th_http_path(req);
    if (strcmp(path, "/") == 0) path = "/index.html";
    if (strcmp(path, "/status") == 0) path = "/status.html";
    if (strcmp(path, "/admin") == 0) path = "/admin.html";
    if (strcmp(path, "/playground") == 0) path = "/playground.html";
    if (strcmp(path, "/voices") == 0) path = "/voices.html";
    const th_asset *a = th_asset_find(path);
    if (a == NULL) {
        th_api_error(c, 404, "not_found_error", "not_found", "no page at %s", path);
        return;
    }
    /* the pages load nothing from elsewhere: scripts, styles and connections are this hub's own */
    th_http_set_header(req, "Content-Security-Policy",
                       "default-src 'self'; connect-src 'self'; media-src 'self' blob:; "
                       "img-src 'self' data:; "
                       "frame-ancestors 'none'");
    th_http_set_header(req, "X-Content-Type-Options", "nosniff");
    th_http_set_header(req, "Cache-Control", "no-cache");
    th_api_reply(c, 200, th_asset_mime(a->path), a->data, a->len);
}

static void render_redis_lanes(const th_redis *r, th_buf *b);
/* Character quotas per tenant and window: the configured limit, and (local backend) the usage so far, so an
 * alert can fire before a tenant runs out. With the Redis backend usage lives in Redis and is not read
 * here (only the limits are shown). */
static void metrics_quota(th_hub *hub, th_buf *b)
{
    const th_config *cfg = hub->cfg;
    bool any = false;
    for (size_t i = 0; i < cfg->n_tenants; i++)
        any = any || cfg->tenants[i].chars_per_day || cfg->tenants[i].chars_per_month;
    if (!any || hub->quota == NULL) return;
    static const char *const windows[2] = {"day", "month"};
    bool local = strcmp(cfg->rate_limit.backend, "redis") != 0;
    th_usage_row *rows[2] = {NULL, NULL};
    size_t nrows[2] = {0, 0};
    th_buf_appendf(b, "# HELP ttshub_quota_limit_chars Character quota of each tenant per window.\n"
                      "# TYPE ttshub_quota_limit_chars gauge\n");
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        const th_tenant_conf *t = &cfg->tenants[i];
        uint64_t lim[2] = {t->chars_per_day, t->chars_per_month};
        for (int w = 0; w < 2; w++)
            if (lim[w])
                th_buf_appendf(b, "ttshub_quota_limit_chars{tenant=\"%s\",window=\"%s\"} %llu\n", t->name,
                               windows[w], (unsigned long long)lim[w]);
    }
    if (!local) return;
    th_buf_appendf(b, "# HELP ttshub_quota_used_chars Characters used by each tenant in the current window.\n"
                      "# TYPE ttshub_quota_used_chars gauge\n");
    uint64_t now = th_wall_ms();
    for (int w = 0; w < 2; w++)
        rows[w] = th_quota_usage(hub->quota, windows[w], NULL, now, &nrows[w]);
    for (size_t i = 0; i < cfg->n_tenants; i++) {
        const th_tenant_conf *t = &cfg->tenants[i];
        uint64_t lim[2] = {t->chars_per_day, t->chars_per_month};
        for (int w = 0; w < 2; w++) {
            if (lim[w] == 0) continue;
            uint64_t used = 0;
            for (size_t r = 0; rows[w] && r < nrows[w]; r++)
                if (strcmp(rows[w][r].tenant, t->name) == 0) used = rows[w][r].chars;
            th_buf_appendf(b, "ttshub_quota_used_chars{tenant=\"%s\",window=\"%s\"} %llu\n", t->name,
                           windows[w], (unsigned long long)used);
        }
    }
    free(rows[0]);
    free(rows[1]);
}

/* Library voices on engines: references made (by result) and requests sent again, one family at a time. */
static void metrics_references(const th_hub *hub, th_buf *b)
{
    for (int fam = 0; fam < 2; fam++) {
        bool head = false;
        for (size_t i = 0; i < hub->n_providers; i++) {
            th_upstream_ref_stats rs;
            const th_provider *p = hub->providers[i];
            if (p == NULL || !p->caps.can_clone || th_upstream_get_ref_stats(p, &rs) != 0) continue;
            const char *n = p->conf->name;
            if (fam == 0) {
                if (!head)
                    th_buf_append_str(b,
                                      "# HELP ttshub_reference_uploads_total References of library voices "
                                      "made on engines (uploads, remote voices, shared files), by result.\n"
                                      "# TYPE ttshub_reference_uploads_total counter\n");
                th_buf_appendf(b,
                               "ttshub_reference_uploads_total{provider=\"%s\",result=\"ok\"} %llu\n"
                               "ttshub_reference_uploads_total{provider=\"%s\",result=\"failed\"} %llu\n",
                               n, (unsigned long long)rs.made, n, (unsigned long long)rs.failed);
            } else {
                if (!head)
                    th_buf_append_str(b,
                                      "# HELP ttshub_reference_resends_total Requests sent again because the "
                                      "engine or node lacked the reference.\n"
                                      "# TYPE ttshub_reference_resends_total counter\n");
                th_buf_appendf(b, "ttshub_reference_resends_total{provider=\"%s\"} %llu\n", n,
                               (unsigned long long)rs.resends);
            }
            head = true;
        }
    }
}

/* The gauges kept outside the metrics table: uptime, nodes, feed clients, dropped spans, stored voices. */
static void metrics_gauges(th_hub *hub, th_buf *b)
{
    th_buf_appendf(b,
                   "# HELP ttshub_uptime_seconds Seconds since the hub started.\n"
                   "# TYPE ttshub_uptime_seconds gauge\nttshub_uptime_seconds %llu\n",
                   (unsigned long long)((th_mono_ms() - hub->started_mono_ms) / 1000));
    if (hub->registry) {
        size_t total = 0, online = 0;
        th_registry_counts(hub->registry, NULL, &total, &online);
        th_buf_appendf(b,
                       "# HELP ttshub_nodes Registered worker nodes by state.\n# TYPE ttshub_nodes gauge\n"
                       "ttshub_nodes{state=\"online\"} %zu\nttshub_nodes{state=\"not_routable\"} %zu\n",
                       online, total - online);
    }
    th_buf_appendf(b,
                   "# HELP ttshub_feed_clients Live-feed (/ws) clients connected.\n"
                   "# TYPE ttshub_feed_clients gauge\nttshub_feed_clients %zu\n",
                   th_api_feed_clients(hub));
    if (hub->tracer)
        th_buf_appendf(
            b,
            "# HELP ttshub_trace_spans_dropped_total Spans dropped because too many were waiting.\n"
            "# TYPE ttshub_trace_spans_dropped_total counter\nttshub_trace_spans_dropped_total %llu\n",
            (unsigned long long)th_tracer_dropped(hub->tracer));
    if (hub->vlib)
        th_buf_appendf(b,
                       "# HELP ttshub_voices_stored Voices in the voice library, by backend.\n"
                       "# TYPE ttshub_voices_stored gauge\nttshub_voices_stored{backend=\"%s\"} %zu\n"
                       "# HELP ttshub_voice_cache_bytes Reference audio held in memory.\n"
                       "# TYPE ttshub_voice_cache_bytes gauge\nttshub_voice_cache_bytes %llu\n",
                       th_vlib_backend(hub->vlib), th_vlib_count(hub->vlib),
                       (unsigned long long)th_vlib_cached_bytes(hub->vlib));
}

void th_api_metrics(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/metrics";
    th_metrics_set(hub->metrics, TH_M_INFLIGHT, NULL, (double)hub->stats.inflight);
    th_buf b;
    th_buf_init(&b, 0); /* our own metrics */
    if (th_metrics_render(hub->metrics, &b) != 0) {
        th_buf_free(&b);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    metrics_gauges(hub, &b);
    metrics_references(hub, &b);
    if (hub->redis)
        th_buf_appendf(&b,
                       "# HELP ttshub_redis_connected 1 while the shared Redis backend is reachable.\n"
                       "# TYPE ttshub_redis_connected gauge\nttshub_redis_connected %d\n",
                       th_redis_connected(hub->redis) ? 1 : 0);
    if (hub->redis) render_redis_lanes(hub->redis, &b);
    if (hub->policy)
        th_buf_appendf(&b,
                       "# HELP ttshub_redis_queued Admissions, settles and cache stores waiting for the loop "
                       "turn's Redis script.\n# TYPE ttshub_redis_queued gauge\nttshub_redis_queued %zu\n",
                       th_policy_queued(hub->policy));
    metrics_quota(hub, &b);
    th_api_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    th_buf_free(&b);
}

/* The pool's lanes: connections, commands, failures, in flight, and the latency of each reply. */
static void render_redis_lanes(const th_redis *r, th_buf *b)
{
    static const char *const lanes[TH_REDIS_LANES] = {"policy", "bulk"};
    th_redis_lane_stats st[TH_REDIS_LANES];
    for (int l = 0; l < TH_REDIS_LANES; l++)
        th_redis_lane_get_stats(r, (th_redis_lane)l, &st[l]);
    th_buf_appendf(b, "# HELP ttshub_redis_connections Redis connections of the pool, by lane.\n"
                      "# TYPE ttshub_redis_connections gauge\n");
    for (int l = 0; l < TH_REDIS_LANES; l++)
        th_buf_appendf(b,
                       "ttshub_redis_connections{lane=\"%s\",state=\"connected\"} %u\n"
                       "ttshub_redis_connections{lane=\"%s\",state=\"down\"} %u\n",
                       lanes[l], st[l].connected, lanes[l], st[l].conns - st[l].connected);
    th_buf_appendf(b, "# HELP ttshub_redis_commands_total Redis commands sent, by lane.\n"
                      "# TYPE ttshub_redis_commands_total counter\n");
    for (int l = 0; l < TH_REDIS_LANES; l++)
        th_buf_appendf(b, "ttshub_redis_commands_total{lane=\"%s\"} %llu\n", lanes[l],
                       (unsigned long long)st[l].commands);
    th_buf_appendf(
        b, "# HELP ttshub_redis_failures_total Redis commands sent that got no answer (down, timeout), "
           "by lane.\n# TYPE ttshub_redis_failures_total counter\n");
    for (int l = 0; l < TH_REDIS_LANES; l++)
        th_buf_appendf(b, "ttshub_redis_failures_total{lane=\"%s\"} %llu\n", lanes[l],
                       (unsigned long long)st[l].failures);
    th_buf_appendf(
        b, "# HELP ttshub_redis_busy_total Redis commands refused because every connection of the lane "
           "had redis.max_inflight commands in flight, by lane.\n# TYPE ttshub_redis_busy_total counter\n");
    for (int l = 0; l < TH_REDIS_LANES; l++)
        th_buf_appendf(b, "ttshub_redis_busy_total{lane=\"%s\"} %llu\n", lanes[l],
                       (unsigned long long)st[l].busy);
    th_buf_appendf(b, "# HELP ttshub_redis_in_flight Redis commands sent and not yet answered, by lane.\n"
                      "# TYPE ttshub_redis_in_flight gauge\n");
    for (int l = 0; l < TH_REDIS_LANES; l++)
        th_buf_appendf(b, "ttshub_redis_in_flight{lane=\"%s\"} %llu\n", lanes[l],
                       (unsigned long long)st[l].inflight);
    th_buf_appendf(b, "# HELP ttshub_redis_latency_seconds Time from sending a Redis command to its reply, "
                      "by lane.\n# TYPE ttshub_redis_latency_seconds histogram\n");
    for (int l = 0; l < TH_REDIS_LANES; l++) {
        uint64_t cum = 0;
        for (int k = 0; k < TH_REDIS_LAT_BUCKETS; k++) {
            cum += st[l].lat_count[k];
            th_buf_appendf(b, "ttshub_redis_latency_seconds_bucket{lane=\"%s\",le=\"%g\"} %llu\n", lanes[l],
                           th_redis_lat_bounds[k], (unsigned long long)cum);
        }
        cum += st[l].lat_count[TH_REDIS_LAT_BUCKETS];
        th_buf_appendf(b,
                       "ttshub_redis_latency_seconds_bucket{lane=\"%s\",le=\"+Inf\"} %llu\n"
                       "ttshub_redis_latency_seconds_sum{lane=\"%s\"} %.9g\n"
                       "ttshub_redis_latency_seconds_count{lane=\"%s\"} %llu\n",
                       lanes[l], (unsigned long long)cum, lanes[l], st[l].lat_sum_s, lanes[l],
                       (unsigned long long)cum);
    }
}

int th_api_register(th_hub *hub)
{
    hub->router = th_router_new(th_api_miss, hub);
    if (hub->router == NULL) return -1;
    if (hub->ext && hub->ext->node_only) /* `ttshub worker`: its node routes (added by the ext) and /health */
        return th_router_add(hub->router, "GET", "/health", th_api_health, hub);
    static const struct {
        const char *method, *pattern;
        th_http_handler h;
    } routes[] = {
        {"POST", "/api/generate", th_api_ttsfm_generate},
        {"POST", "/v1/audio/speech", th_api_openai_speech},
        {"GET", "/v1/models", th_api_openai_models},
        {"GET", "/v1/audio/voices", th_api_openai_voices},
        {"GET", "/admin/usage", th_api_admin_usage},
        {"GET", "/admin/providers", th_api_admin_providers},
        {"GET", "/admin/config", th_api_admin_config},
        {"POST", "/admin/reload", th_api_admin_reload},
        {"POST", "/api/nodes/register", th_api_nodes_register},
        {"POST", "/api/nodes/{id}/heartbeat", th_api_nodes_heartbeat},
        {"POST", "/api/nodes/{id}/command", th_api_nodes_command},
        {"DELETE", "/api/nodes/{id}", th_api_nodes_delete},
        {"GET", "/api/nodes/{id}", th_api_nodes_get},
        {"GET", "/api/nodes", th_api_nodes_list},
        {"POST", "/api/register", th_api_nodes_register},
        {"POST", "/api/heartbeat", th_api_nodes_heartbeat},
        {"POST", "/api/unregister", th_api_nodes_delete},
        {"GET", "/api/status", th_api_status},
        {"POST", "/api/extract_voice", th_api_voices_extract},
        {"GET", "/api/voices", th_api_voices_list},
        {"GET", "/api/voices/{id}", th_api_voices_get},
        {"GET", "/api/voices/{id}/audio", th_api_voices_audio},
        {"PATCH", "/api/voices/{id}", th_api_voices_patch},
        {"DELETE", "/api/voices/{id}", th_api_voices_delete},
        {"POST", "/api/synthesize", th_api_clone_synthesize},
        {"POST", "/api/batch_synthesize", th_api_clone_batch},
        {"GET", "/ws", th_api_ws},
        {"GET", "/api/announcements", th_api_announcements_list},
        {"POST", "/api/announcements", th_api_announcements_add},
        {"DELETE", "/api/announcements/{id}", th_api_announcements_delete},
        {"GET", "/health", th_api_health},
        {"GET", "/api/health", th_api_health},
        {"GET", "/", th_api_page},
        {"GET", "/status", th_api_page},
        {"GET", "/admin", th_api_page},
        {"GET", "/playground", th_api_page},
        {"GET", "/voices", th_api_page},
        {"GET", "/static/*", th_api_page},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (th_router_add(hub->router, routes[i].method, routes[i].pattern, routes[i].h, hub) != 0) return -1;
    /* /metrics: on the main listener, or only on metrics_listen when that is set */
    th_router *mr = hub->router;
    if (hub->cfg->metrics_listen && hub->cfg->metrics_listen[0]) {
        hub->metrics_router = th_router_new(th_api_miss, hub);
        if (hub->metrics_router == NULL) return -1;
        mr = hub->metrics_router;
        if (th_router_add(mr, "GET", "/health", th_api_health, hub) != 0) return -1;
    }
    return th_router_add(mr, "GET", "/metrics", th_api_metrics, hub);
}
