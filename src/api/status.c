/* status: GET /api/status, the announcements, and the /ws live feed.
 *
 * /api/status: totals for nodes, requests, in-flight and latency (percentiles over the last
 * TH_HUB_LAT_RING syntheses), per-engine counts, per-provider state, and the announcements.
 *
 * /ws (WebSocket): every message is {type, data, timestamp}. Pushed: system_status every 2 s (the
 * /api/status document), node_online / node_offline / node_status_changed / node_removed (from the
 * registry, local or shared), provider_breaker when a provider's breaker changes state (checked every
 * 500 ms), announcement (action created or deleted). Client messages: {"type":"ping"} -> pong,
 * {"type":"get_status"} -> system_status; anything else -> an error message. At most FEED_MAX_CLIENTS
 * subscribers; a client that reads too slowly is dropped (ws.h). On SIGTERM every client gets a close
 * frame (1001 going away) before the hub drains.
 *
 * /api/status, GET /api/announcements and /ws are public (what a status page shows); posting and
 * deleting announcements need the admin role. */
#include "api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/str.h"
#include "http/body.h"
#include "http/ws.h"

#define FEED_TICK_MS 500
#define FEED_STATUS_EVERY 4 /* ticks: system_status every 2 s */
#define FEED_MAX_CLIENTS 256
#define FEED_MAX_MSG 4096 /* bytes of one client message */

typedef struct feed_client {
    struct feed_client *prev, *next;
    struct th_feed *f;
    th_ws *ws;
    char peer[48]; /* for the per-IP count */
    bool ip_counted;
} feed_client;

struct th_feed {
    th_hub *hub;
    uv_timer_t *timer; /* freed in its close callback */
    feed_client *clients;
    size_t n;
    unsigned tick;
    int *breaker; /* last state seen per provider */
    size_t n_breaker;
    uint64_t generation; /* hub->cfg_generation the breaker array was made for */
    bool stopping;
    th_iprate *per_ip; /* feed clients per IP (limits.max_feed_per_ip) */
};

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static json_t *latency_json(const th_hub *hub, double *avg_ms)
{
    uint32_t n = hub->stats.lat_n;
    *avg_ms = 0;
    if (n == 0) return json_pack("{s:i}", "samples", 0);
    float *v = malloc(n * sizeof *v);
    if (v == NULL) return NULL;
    memcpy(v, hub->stats.lat_ms, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_float);
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += v[i];
    *avg_ms = sum / n;
#define PCT(p) ((double)v[(size_t)((p) * (double)(n - 1) + 0.5)])
    json_t *o = json_pack("{s:i,s:f,s:f,s:f,s:f,s:f}", "samples", (int)n, "avg", sum / n, "p50", PCT(0.50),
                          "p95", PCT(0.95), "p99", PCT(0.99), "max", (double)v[n - 1]);
#undef PCT
    free(v);
    return o;
}

/* json[key] += by (an integer; absent counts as 0) */
static void add_int(json_t *o, const char *key, json_int_t by)
{
    json_object_set_new(o, key, json_integer(json_integer_value(json_object_get(o, key)) + by));
}

/* One provider into providers (its breaker and load) and into engines (per engine type: the providers of
 * that kind too; a nodes provider counts under its engine). */
static void add_provider(json_t *providers, json_t *engines, const th_provider_conf *pc,
                         const th_route_prov *rp, uint64_t now)
{
    json_t *p =
        json_pack("{s:s,s:s,s:I,s:I}", "type", pc->type, "breaker",
                  rp ? th_breaker_state_name(th_breaker_get(&rp->breaker, now)) : "closed", "in_flight",
                  (json_int_t)(rp ? rp->inflight : 0), "queued", (json_int_t)(rp ? rp->waiting : 0));
    json_object_set_new(providers, pc->name, p);
    const char *kind = strcmp(pc->type, "nodes") == 0 && pc->engine && *pc->engine ? pc->engine : pc->type;
    json_t *e = json_object_get(engines, kind);
    if (e == NULL) {
        e = json_pack("{s:i,s:i,s:i}", "nodes", 0, "online", 0, "in_flight", 0);
        json_object_set_new(engines, kind, e);
    }
    if (e == NULL) return;
    add_int(e, "providers", 1);
    if (strcmp(pc->type, "nodes") == 0) return;
    add_int(e, "in_flight", (json_int_t)(rp ? rp->inflight : 0));
    /* an in-process or upstream provider is one serving unit for the counts below */
    add_int(e, "local", 1);
    if (rp == NULL || th_breaker_get(&rp->breaker, now) != TH_BREAKER_OPEN) add_int(e, "local_ready", 1);
}

/* The voice-clone gateway's per-engine {total, online, ready}, which its status page reads: total counts
 * the nodes and the providers that are not node pools, ready those that take traffic now (a node online, a
 * provider whose breaker is not open). Our "online" keeps its meaning (nodes taking traffic), so a node in
 * standby shows as offline there, not as standby. */
static void engine_totals(json_t *engines)
{
    const char *kname;
    json_t *ke;
    json_object_foreach(engines, kname, ke)
    {
        json_int_t nodes = json_integer_value(json_object_get(ke, "nodes"));
        json_int_t on = json_integer_value(json_object_get(ke, "online"));
        json_int_t loc = json_integer_value(json_object_get(ke, "local"));
        json_int_t loc_ready = json_integer_value(json_object_get(ke, "local_ready"));
        json_object_del(ke, "local");
        json_object_del(ke, "local_ready");
        json_object_set_new(ke, "total", json_integer(nodes + loc));
        json_object_set_new(ke, "ready", json_integer(on + loc_ready));
    }
}

/* The /api/status document (new reference). */
static json_t *status_doc(th_hub *hub)
{
    const char *status = "unhealthy";
    json_t *health = th_api_health_doc(hub, &status);
    size_t total = 0, online = 0;
    if (hub->registry) th_registry_counts(hub->registry, NULL, &total, &online);
    json_t *engines = hub->registry ? th_registry_engines_json(hub->registry) : json_object();
    json_t *providers = json_object();
    uint64_t now = th_mono_ms();
    for (size_t i = 0; providers && engines && i < hub->n_providers; i++)
        add_provider(providers, engines, hub->providers[i]->conf,
                     hub->route.provs ? hub->route.provs[i] : NULL, now);
    engine_totals(engines);
    json_t *ann = hub->announce ? th_announce_list(hub->announce, th_wall_ms()) : json_array();
    double avg_ms = 0;
    json_t *latency = latency_json(hub, &avg_ms);
    json_t *o = json_pack(
        "{s:s,s:s,s:I,s:{s:I,s:I,s:I},s:{s:I,s:I,s:I,s:I,s:I},s:o*,s:o*,s:o*,s:o*}", "status", status,
        "version", TH_VERSION, "uptime_seconds", (json_int_t)((th_mono_ms() - hub->started_mono_ms) / 1000),
        "nodes", "total", (json_int_t)total, "online", (json_int_t)online, "offline",
        (json_int_t)(total - online), "requests", "total", (json_int_t)th_hub_requests(hub), "errors",
        (json_int_t)th_hub_errors(hub), "in_flight", (json_int_t)hub->stats.inflight, "characters",
        (json_int_t)th_hub_chars(hub), "audio_bytes", (json_int_t)hub->stats.audio_bytes, "latency_ms",
        latency, "engines", engines, "providers", providers, "announcements", ann);
    /* the voice-clone gateway's flat SystemStatus keys, which its scripts read */
    if (o != NULL &&
        (json_object_set_new(o, "online_nodes", json_integer((json_int_t)online)) != 0 ||
         json_object_set_new(o, "total_nodes", json_integer((json_int_t)total)) != 0 ||
         json_object_set_new(o, "total_requests", json_integer((json_int_t)th_hub_requests(hub))) != 0 ||
         json_object_set_new(o, "current_concurrent", json_integer((json_int_t)hub->stats.inflight)) != 0 ||
         json_object_set_new(o, "avg_response_time_ms", json_real(avg_ms)) != 0)) {
        json_decref(o);
        o = NULL;
    }
    json_decref(health);
    return o;
}

void th_api_status(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/api/status";
    th_api_json(c, 200, status_doc(hub));
}

/* ---- the feed ---- */

/* {type, data, timestamp} as text (malloc'd), data stolen. */
static char *feed_msg(const char *type, json_t *data)
{
    char ts[40];
    th_rfc3339(th_wall_ms(), ts, sizeof ts);
    json_t *o =
        json_pack("{s:s,s:o,s:s}", "type", type, "data", data ? data : json_object(), "timestamp", ts);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

static void feed_send(th_ws *ws, const char *type, json_t *data)
{
    char *text = feed_msg(type, data);
    if (text) th_ws_send_text(ws, text, strlen(text));
    free(text);
}

void th_api_feed_publish(th_hub *hub, const char *type, json_t *data)
{
    struct th_feed *f = hub->feed;
    if (f == NULL || f->n == 0 || f->stopping) {
        json_decref(data);
        return;
    }
    char *text = feed_msg(type, data);
    if (text == NULL) return;
    size_t len = strlen(text);
    for (feed_client *fc = f->clients, *next; fc; fc = next) {
        next = fc->next; /* a failed send closes the client, which unlinks it */
        th_ws_send_text(fc->ws, text, len);
    }
    free(text);
}

static void on_registry_event(void *ud, const char *event, const char *node_id, const char *status)
{
    th_hub *hub = ud;
    th_api_feed_publish(hub, event, json_pack("{s:s,s:s}", "node_id", node_id, "status", status));
}

static void feed_tick(uv_timer_t *t)
{
    struct th_feed *f = t->data;
    th_hub *hub = f->hub;
    uint64_t now = th_mono_ms();
    if (f->generation != hub->cfg_generation) { /* a reload: the providers are another set */
        int *b = realloc(f->breaker, (hub->n_providers ? hub->n_providers : 1) * sizeof *b);
        if (b == NULL) return;
        f->breaker = b;
        f->n_breaker = hub->n_providers;
        f->generation = hub->cfg_generation;
        for (size_t i = 0; i < hub->n_providers; i++)
            f->breaker[i] = (int)th_breaker_get(&hub->route.provs[i]->breaker, now);
    }
    for (size_t i = 0; f->breaker && i < hub->n_providers && i < f->n_breaker && hub->route.provs; i++) {
        int st = (int)th_breaker_get(&hub->route.provs[i]->breaker, now);
        if (st != f->breaker[i])
            th_api_feed_publish(hub, "provider_breaker",
                                json_pack("{s:s,s:s,s:s}", "provider", hub->providers[i]->conf->name, "state",
                                          th_breaker_state_name((th_breaker_state)st), "previous",
                                          th_breaker_state_name((th_breaker_state)f->breaker[i])));
        f->breaker[i] = st;
    }
    if (++f->tick % FEED_STATUS_EVERY == 0 && f->n > 0)
        th_api_feed_publish(hub, "system_status", status_doc(hub));
}

static void on_feed_timer_closed(uv_handle_t *h)
{
    free(h);
}

int th_api_feed_new(th_hub *hub)
{
    struct th_feed *f = calloc(1, sizeof *f);
    if (f == NULL) return -1;
    f->hub = hub;
    f->breaker = malloc((hub->n_providers ? hub->n_providers : 1) * sizeof *f->breaker);
    f->timer = malloc(sizeof *f->timer);
    f->per_ip = th_iprate_new(1024);
    if (f->breaker == NULL || f->timer == NULL || f->per_ip == NULL) {
        free(f->breaker);
        free(f->timer);
        th_iprate_free(f->per_ip);
        free(f);
        return -1;
    }
    uint64_t now = th_mono_ms();
    f->n_breaker = hub->n_providers;
    f->generation = hub->cfg_generation;
    for (size_t i = 0; i < hub->n_providers; i++)
        f->breaker[i] = hub->route.provs ? (int)th_breaker_get(&hub->route.provs[i]->breaker, now) : 0;
    uv_timer_init(hub->loop, f->timer);
    f->timer->data = f;
    uv_timer_start(f->timer, feed_tick, FEED_TICK_MS, FEED_TICK_MS);
    hub->feed = f;
    if (hub->registry) th_registry_set_listener(hub->registry, on_registry_event, hub);
    return 0;
}

size_t th_api_feed_clients(const th_hub *hub)
{
    const struct th_feed *f = hub->feed;
    return f ? f->n : 0;
}

void th_api_feed_shutdown(th_hub *hub)
{
    struct th_feed *f = hub->feed;
    if (f == NULL || f->stopping) return;
    f->stopping = true;
    uv_timer_stop(f->timer);
    for (feed_client *fc = f->clients, *next; fc; fc = next) {
        next = fc->next;
        th_ws_close(fc->ws, 1001, "the hub is shutting down");
    }
}

void th_api_feed_free(th_hub *hub)
{
    struct th_feed *f = hub->feed;
    if (f == NULL) return;
    if (hub->registry) th_registry_set_listener(hub->registry, NULL, NULL);
    /* clients still here are ended by the server's own shutdown; they no longer see the feed (each
     * record is freed by its ws_closed) */
    for (feed_client *fc = f->clients; fc; fc = fc->next)
        fc->f = NULL;
    f->clients = NULL;
    uv_timer_stop(f->timer);
    uv_close((uv_handle_t *)f->timer, on_feed_timer_closed);
    free(f->breaker);
    th_iprate_free(f->per_ip);
    free(f);
    hub->feed = NULL;
}

static void ws_text(th_ws *ws, const char *msg, size_t len, void *ud)
{
    feed_client *fc = ud;
    json_t *m = json_loadb(msg, len, 0, NULL);
    const char *type = json_string_value(json_object_get(m, "type"));
    if (type && strcmp(type, "ping") == 0)
        feed_send(ws, "pong", json_object());
    else if (type && strcmp(type, "get_status") == 0)
        feed_send(ws, "system_status", status_doc(fc->f->hub));
    else
        feed_send(ws, "error",
                  json_pack("{s:s}", "message",
                            json_is_object(m) ? "unknown type: use ping or get_status"
                                              : "messages are JSON objects"));
    json_decref(m);
}

static void ws_closed(th_ws *ws, void *ud)
{
    (void)ws;
    feed_client *fc = ud;
    struct th_feed *f = fc->f;
    if (f != NULL) {
        if (fc->prev)
            fc->prev->next = fc->next;
        else
            f->clients = fc->next;
        if (fc->next) fc->next->prev = fc->prev;
        f->n--;
        if (fc->ip_counted) th_iprate_release(f->per_ip, fc->peer);
    }
    free(fc);
}

void th_api_ws(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/ws";
    struct th_feed *f = hub->feed;
    if (f == NULL || f->stopping) {
        th_api_error(c, 503, NULL, "shutting_down", "the hub is shutting down");
        return;
    }
    if (f->n >= FEED_MAX_CLIENTS) {
        c->retry_after_s = 5;
        th_api_error(c, 503, NULL, "too_many_subscribers", "at most %d live-feed clients", FEED_MAX_CLIENTS);
        return;
    }
    feed_client *fc = calloc(1, sizeof *fc);
    if (fc == NULL) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    th_strlcpy(fc->peer, th_http_peer(req), sizeof fc->peer);
    int got = f->per_ip
                  ? th_iprate_acquire(f->per_ip, fc->peer, th_mono_ms(), hub->cfg->limits.max_feed_per_ip)
                  : -1;
    if (got == 0) {
        free(fc);
        c->retry_after_s = 5;
        th_api_error(c, 429, "rate_limit_error", "too_many_subscribers",
                     "at most %u live-feed clients per address (limits.max_feed_per_ip)",
                     (unsigned)hub->cfg->limits.max_feed_per_ip);
        return;
    }
    fc->ip_counted = got == 1;
    fc->f = f;
    int status = 400;
    const char *why = "bad handshake";
    th_ws_cb cb = {ws_text, ws_closed, fc};
    fc->ws = th_ws_accept(req, hub->loop, &cb, FEED_MAX_MSG, &status, &why);
    if (fc->ws == NULL) {
        if (fc->ip_counted) th_iprate_release(f->per_ip, fc->peer);
        free(fc);
        th_api_error(c, status, NULL, status == 426 ? "upgrade_required" : "bad_handshake", "%s", why);
        return;
    }
    /* the access line says 101, and the request leaves the api layer: the ws owns it now */
    th_api_log(c, 101);
    th_api_ctx_free(c);
    th_http_set_data(req, NULL);
    fc->next = f->clients;
    if (f->clients) f->clients->prev = fc;
    f->clients = fc;
    f->n++;
    th_ws_keepalive(fc->ws, hub->cfg->limits.feed_ping_interval_ms, hub->cfg->limits.feed_idle_timeout_ms);
    feed_send(fc->ws, "system_status", status_doc(hub));
}

/* ---- announcements ---- */

void th_api_announcements_list(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/api/announcements";
    json_t *arr = th_announce_list(hub->announce, th_wall_ms());
    th_api_json(c, 200,
                json_pack("{s:o,s:I}", "announcements", arr, "count", (json_int_t)json_array_size(arr)));
}

void th_api_announcements_add(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/api/announcements";
    if (th_api_auth(c, true) != 0) return;
    json_t *j = th_api_body_object(c, false, "malformed_body");
    if (j == NULL) return;
    char err[200] = "";
    json_t *a = NULL;
    th_ann_rc rc = th_announce_add(hub->announce, j, th_wall_ms(), &a, err, sizeof err);
    json_decref(j);
    if (rc == TH_ANN_INVALID) {
        th_api_error(c, 400, NULL, "invalid_announcement", "%s", err);
    } else if (rc == TH_ANN_FULL) {
        th_api_error(c, 409, NULL, "too_many_announcements", "%s", err);
    } else if (rc != TH_ANN_OK) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
    } else {
        th_api_feed_publish(hub, "announcement",
                            json_pack("{s:s,s:O}", "action", "created", "announcement", a));
        /* the voice-clone gateway answers {success, id}: both fit beside the announcement */
        json_t *reply = json_deep_copy(a);
        if (reply != NULL) json_object_set_new(reply, "success", json_true());
        json_decref(a);
        th_api_json(c, 201, reply);
    }
}

void th_api_announcements_delete(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/api/announcements/{id}";
    if (th_api_auth(c, true) != 0) return;
    const char *id = th_http_param(req, "id");
    if (th_announce_remove(hub->announce, id) != TH_ANN_OK) {
        th_api_error(c, 404, NULL, "unknown_announcement", "no announcement %s", id ? id : "");
        return;
    }
    th_api_feed_publish(hub, "announcement", json_pack("{s:s,s:s}", "action", "deleted", "id", id));
    th_api_json(c, 200, json_pack("{s:b,s:s}", "success", 1, "id", id));
}
