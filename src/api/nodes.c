/* nodes: the worker registry's control routes (API.md "Worker registry").
 *
 *   POST   /api/nodes/register          {node_id?, engine_type, url | host+port, capacity, ...}
 *   POST   /api/nodes/{id}/heartbeat    {status, model_loaded, current_concurrent, ...}; unknown id: 404
 *   DELETE /api/nodes/{id}
 *   GET    /api/nodes?engine=&status=   {nodes:[...], count}
 *   GET    /api/nodes/{id}
 *   POST   /api/nodes/{id}/command      {command: activate|load_model|standby|unload_model|stop}: relayed to
 *                                        POST {node}/command (a ttshub node gets activate/standby for
 *                                        load_model/unload_model; a seed-2 worker takes all five)
 *   POST   /api/register, /api/heartbeat, /api/unregister: the same, with node_id in the body
 *
 * Auth: the cluster token (Authorization: Bearer, from the env variable registry.token_env names) or the
 * admin role. When the token is set, an open hub (auth.mode none) still asks for it. These routes never
 * touch the rate limits or quotas. Errors use the voice-clone shape {"success":false,"message","code"}. */
#include "api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/str.h"
#include "http/body.h"

#include <netdb.h>
#include <openssl/crypto.h>

#define CMD_TIMEOUT_MS 5000
#define CMD_LOAD_TIMEOUT_MS 180000 /* a seed-2 worker loads its model inside the command (XTTS: ~30 s) */

bool th_api_cluster_token_ok(th_api_ctx *c)
{
    const char *env = c->hub->cfg->registry.token_env;
    const char *token = env && *env ? getenv(env) : NULL;
    const char *h = th_http_header(c->req, "Authorization");
    if (token == NULL || *token == 0 || h == NULL || strlen(h) < 7 || !th_strn_ieq(h, 7, "Bearer "))
        return false;
    const char *t = h + 7;
    while (*t == ' ')
        t++;
    /* by hash, in constant time: neither the length nor a prefix of the token leaks through timing */
    char a[65], b[65];
    th_auth_hash_key(t, strlen(t), a);
    th_auth_hash_key(token, strlen(token), b);
    return CRYPTO_memcmp(a, b, 64) == 0;
}

static bool token_configured(const th_hub *hub)
{
    const char *env = hub->cfg->registry.token_env;
    const char *token = env && *env ? getenv(env) : NULL;
    return token != NULL && *token != 0;
}

void th_api_protected_error(th_api_ctx *c)
{
    th_api_error(
        c, 403, "permission_error", "protected_mode",
        "protected mode: ttshub listens on a public address with auth.mode none, so admin and control "
        "routes are closed. Enable them by configuring API keys (auth.mode api_key), by setting the "
        "cluster token (registry.token_env) and sending it as a Bearer token, or by setting "
        "auth.allow_open_admin: true");
}

typedef enum {
    CTL_NODE,     /* register, heartbeat, unregister: a node speaking for itself */
    CTL_OPERATOR, /* list, get, commands */
} ctl_kind;

/* 0 when the caller may use the control route; who says who it is. Otherwise the error was sent. */
static int control_auth(th_api_ctx *c, const char *route, ctl_kind kind, th_reg_caller *who, char *cred,
                        size_t credlen)
{
    th_hub *hub = c->hub;
    c->route = route;
    c->shape = TH_SHAPE_CLONE;
    const char *peer = th_http_peer(c->req);
    who->addr = peer;
    who->admin = false;
    who->cred = cred;
    cred[0] = 0;
    if (hub->safe.ctl_rate &&
        !th_iprate_hit(hub->safe.ctl_rate, peer, th_mono_ms(), (uint32_t)hub->cfg->registry.control_rpm)) {
        c->retry_after_s = 5;
        th_api_error(c, 429, "rate_limit_error", "rate_limited",
                     "too many control requests from this address (registry.control_rpm)");
        return -1;
    }
    if (th_api_cluster_token_ok(c)) {
        th_strlcpy(cred, "token", credlen);
        return 0;
    }
    bool none = strcmp(hub->cfg->auth.mode, "none") == 0;
    bool presented = th_http_header(c->req, "Authorization") || th_http_header(c->req, "X-API-Key");
    bool trusted = kind == CTL_NODE && th_netacl_match_text(&hub->safe.trusted_nets, peer);
    /* a node from registry.trusted_networks needs no credential, unless protected mode holds (a public
     * listener with nothing configured): then only a configured token opens the door */
    if (trusted && !presented && (!hub->safe.protected_mode || token_configured(hub))) {
        th_strlcpy(cred, "trusted", credlen);
        return 0;
    }
    if (none) {
        if (hub->safe.protected_mode && !token_configured(hub)) {
            th_api_protected_error(c);
            return -1;
        }
        if (token_configured(hub) || kind == CTL_NODE || hub->safe.protected_mode) {
            const char *env = hub->cfg->registry.token_env;
            th_http_set_header(c->req, "WWW-Authenticate", "Bearer");
            th_api_error(
                c, 401, "authentication_error", presented ? "invalid_credentials" : "missing_credentials",
                "the control routes need the cluster token (%s)%s", env && *env ? env : "registry.token_env",
                kind == CTL_NODE ? ", or a node in registry.trusted_networks" : "");
            return -1;
        }
        return 0; /* an open hub on loopback: operators are whoever can reach it */
    }
    if (th_api_auth(c, true) != 0) return -1;
    who->admin = true;
    snprintf(cred, credlen, "%s:%s", c->id.method, c->id.subject);
    return 0;
}

/* id from the path, or node_id from the body (the seed-1 aliases); NULL with the error sent. */
static const char *node_id_of(th_api_ctx *c, const json_t *body)
{
    const char *id = th_http_param(c->req, "id");
    if (id != NULL) return id;
    json_t *v = json_object_get(body, "node_id");
    if (json_is_string(v) && json_string_length(v) > 0) return json_string_value(v);
    th_api_error(c, 400, NULL, "missing_node_id", "'node_id' is required");
    return NULL;
}

static void reg_error(th_api_ctx *c, th_reg_rc rc, const char *id, const char *err)
{
    switch (rc) {
    case TH_REG_UNKNOWN:
        th_api_error(c, 404, NULL, "unknown_node", "%s", err && *err ? err : "unknown node");
        break;
    case TH_REG_FULL:
        th_api_error(c, 503, NULL, "registry_full", "%s", err);
        break;
    case TH_REG_NOMEM:
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        break;
    case TH_REG_FORBIDDEN:
        th_api_error(c, 403, "permission_error", "node_owned", "%s", err);
        break;
    default:
        th_api_error(c, 400, NULL, "invalid_node", "%s", err && *err ? err : "invalid request");
        break;
    }
    (void)id;
}

/* ---- registration: the node's address is checked after resolution ---- */

typedef struct reg_wait {
    th_api_ctx *c;
    json_t *body;
    char cred[160], addr[48];
    bool admin;
    char host[256];
    uv_getaddrinfo_t gai;
} reg_wait;

static void reg_wait_free(reg_wait *w)
{
    json_decref(w->body);
    free(w);
}

/* The host of the registration's url (or host), or "" when it has none the registry would take. */
static void reg_host(const json_t *body, char *host, size_t len)
{
    host[0] = 0;
    json_t *u = json_object_get(body, "url"), *h = json_object_get(body, "host");
    if (json_is_string(u)) {
        if (!th_node_url_parse(json_string_value(u), json_string_length(u), host, len, NULL)) host[0] = 0;
    } else if (json_is_string(h) && json_string_length(h) < len) {
        th_strlcpy(host, json_string_value(h), len);
    }
}

/* NULL when addr may be a node's address, else why not. */
static const char *addr_refused(th_hub *hub, const uint8_t a[16])
{
    if (th_net_forbidden(a)) return "a link-local, metadata, multicast or unspecified address";
    if (!th_netacl_match(&hub->safe.allowed_nets, a)) return "outside registry.allowed_networks";
    return NULL;
}

static void reg_finish(reg_wait *w)
{
    th_api_ctx *c = w->c;
    th_hub *hub = c->hub;
    th_reg_caller who = {.cred = w->cred, .addr = w->addr, .admin = w->admin};
    char id[TH_NODE_ID_MAX + 1] = "", err[256] = "";
    th_reg_rc rc = th_registry_register_as(hub->registry, w->body, &who, th_mono_ms(), id, err, sizeof err);
    if (rc == TH_REG_FORBIDDEN)
        TH_LOG(hub->log, TH_LOG_WARN, "registration from %s (%s) refused: %s", who.addr, who.cred, err);
    reg_wait_free(w); /* who points into w */
    if (rc != TH_REG_OK) {
        reg_error(c, rc, NULL, err);
        return;
    }
    th_regsync_publish(hub->regsync, id);
    double hb = (double)hub->cfg->registry.heartbeat_interval_ms / 1000.0;
    th_api_json(c, 200, json_pack("{s:b,s:s,s:f}", "success", 1, "node_id", id, "heartbeat_interval", hb));
}

static void reg_refuse(reg_wait *w, const char *host, const char *why)
{
    th_api_ctx *c = w->c;
    TH_LOG(c->hub->log, TH_LOG_WARN, "registration from %s refused: %s is %s", w->addr, host, why);
    reg_wait_free(w);
    th_api_error(c, 400, NULL, "address_not_allowed", "the node's address is %s", why);
}

static void reg_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    reg_wait *w = g->data;
    if (status != 0 || res == NULL) {
        uv_freeaddrinfo(res);
        th_api_ctx *c = w->c;
        reg_wait_free(w);
        th_api_error(c, 400, NULL, "unresolvable_host", "the node's host name does not resolve");
        return;
    }
    const char *why = NULL;
    for (struct addrinfo *a = res; a && why == NULL; a = a->ai_next) {
        uint8_t ip[16];
        if (th_net_from_sa(a->ai_addr, ip) == 0) why = addr_refused(w->c->hub, ip); /* every address */
    }
    uv_freeaddrinfo(res);
    if (why) {
        char host[256];
        th_strlcpy(host, w->host, sizeof host);
        reg_refuse(w, host, why);
        return;
    }
    reg_finish(w);
}

void th_api_nodes_register(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    th_reg_caller who;
    char cred[160];
    if (control_auth(c, "/api/nodes/register", CTL_NODE, &who, cred, sizeof cred) != 0) return;
    json_t *body = th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    reg_wait *w = calloc(1, sizeof *w);
    if (w == NULL) {
        json_decref(body);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    w->c = c;
    w->body = body;
    w->admin = who.admin;
    th_strlcpy(w->cred, cred, sizeof w->cred);
    th_strlcpy(w->addr, who.addr ? who.addr : "", sizeof w->addr);
    reg_host(body, w->host, sizeof w->host);
    /* an unspecified listen address in a host + port registration (a seed-2 worker's default 0.0.0.0)
     * stands for the caller's address, as the registry takes it; in a url it stays what it is, refused */
    json_t *url = json_object_get(body, "url");
    if ((url == NULL || json_is_null(url)) &&
        (strcmp(w->host, "0.0.0.0") == 0 || strcmp(w->host, "::") == 0) && w->addr[0] != 0)
        th_strlcpy(w->host, w->addr, sizeof w->host);
    uint8_t ip[16];
    char err[256] = "", id[TH_NODE_ID_MAX + 1];
    th_reg_caller dry = {.cred = w->cred, .addr = w->addr, .admin = w->admin, .dry_run = true};
    th_reg_rc rc = th_registry_register_as(hub->registry, body, &dry, th_mono_ms(), id, err, sizeof err);
    if (rc != TH_REG_OK || w->host[0] == 0) { /* the body is wrong: say so before resolving anything */
        reg_finish(w);
    } else if (th_net_parse_addr(w->host, ip) == 0) {
        const char *why = addr_refused(hub, ip);
        if (why) {
            char host[256];
            th_strlcpy(host, w->host, sizeof host);
            reg_refuse(w, host, why);
        } else {
            reg_finish(w);
        }
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
        w->gai.data = w;
        if (uv_getaddrinfo(hub->loop, &w->gai, reg_resolved, w->host, NULL, &hints) != 0) {
            reg_wait_free(w);
            th_api_error(c, 400, NULL, "unresolvable_host", "the node's host name does not resolve");
        }
    }
}

/* the node's own credential (or an admin) for heartbeats and unregistration */
static int node_owner_ok(th_api_ctx *c, const char *id, const th_reg_caller *who)
{
    char err[256] = "";
    th_reg_rc rc = th_registry_check_owner(c->hub->registry, id, who, th_mono_ms(), err, sizeof err);
    if (rc == TH_REG_OK) return 0;
    if (rc == TH_REG_FORBIDDEN)
        TH_LOG(c->hub->log, TH_LOG_WARN, "%s on node %s from %s (%s) refused: not its owner", c->route, id,
               who->addr, who->cred);
    reg_error(c, rc, id, err);
    return -1;
}

void th_api_nodes_heartbeat(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    th_reg_caller who;
    char cred[160];
    if (control_auth(c, "/api/nodes/{id}/heartbeat", CTL_NODE, &who, cred, sizeof cred) != 0) return;
    json_t *body = th_api_body_object(c, true, "malformed_body");
    if (body == NULL) return;
    const char *id = node_id_of(c, body);
    if (id != NULL && node_owner_ok(c, id, &who) == 0) {
        char err[256] = "";
        th_reg_rc rc = th_registry_heartbeat(hub->registry, id, body, th_mono_ms(), err, sizeof err);
        if (rc != TH_REG_OK) {
            reg_error(c, rc, id, err);
        } else {
            th_regsync_publish(hub->regsync, id);
            th_api_json(c, 200, json_pack("{s:b}", "success", 1));
        }
    }
    json_decref(body);
}

void th_api_nodes_delete(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    th_reg_caller who;
    char cred[160];
    if (control_auth(c, "/api/nodes/{id}", CTL_NODE, &who, cred, sizeof cred) != 0) return;
    json_t *body = th_http_param(req, "id") ? json_object() : th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    const char *id = node_id_of(c, body);
    if (id != NULL && node_owner_ok(c, id, &who) == 0) {
        if (th_registry_remove(hub->registry, id) != TH_REG_OK) {
            th_api_error(c, 404, NULL, "unknown_node", "unknown node '%s'", id);
        } else {
            th_regsync_unpublish(hub->regsync, id);
            th_api_json(c, 200, json_pack("{s:b,s:s}", "success", 1, "node_id", id));
        }
    }
    json_decref(body);
}

/* The voice-clone gateway's NodeInfo keys its pages and scripts read, beside ours; a key already there (the
 * last heartbeat's cpu_percent, memory_percent, current_concurrent) is kept. Added: host and port (from the
 * URL), cpu_percent and memory_percent 0 when never reported (NodeInfo's defaults), current_concurrent as the
 * hub's in-flight to the node when it reports none, request_count and error_count (the hub's counts). */
static void seed2_node_keys(json_t *n)
{
    if (!json_is_object(n)) return;
    const char *url = json_string_value(json_object_get(n, "url"));
    char host[256];
    int port = 0;
    if (url && json_object_get(n, "host") == NULL &&
        th_node_url_parse(url, strlen(url), host, sizeof host, &port)) {
        json_object_set_new(n, "host", json_string(host));
        json_object_set_new(n, "port", json_integer(port));
    }
    if (json_object_get(n, "cpu_percent") == NULL) json_object_set_new(n, "cpu_percent", json_real(0.0));
    if (json_object_get(n, "memory_percent") == NULL)
        json_object_set_new(n, "memory_percent", json_real(0.0));
    if (json_object_get(n, "current_concurrent") == NULL)
        json_object_set_new(n, "current_concurrent",
                            json_integer(json_integer_value(json_object_get(n, "in_flight"))));
    if (json_object_get(n, "request_count") == NULL)
        json_object_set_new(n, "request_count",
                            json_integer(json_integer_value(json_object_get(n, "requests"))));
    if (json_object_get(n, "error_count") == NULL)
        json_object_set_new(n, "error_count",
                            json_integer(json_integer_value(json_object_get(n, "failures"))));
}

void th_api_nodes_list(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    th_reg_caller who;
    char cred[160];
    if (control_auth(c, "/api/nodes", CTL_OPERATOR, &who, cred, sizeof cred) != 0) return;
    char *engine = th_query_get(th_http_query(req), "engine");
    char *status = th_query_get(th_http_query(req), "status");
    json_t *o = th_registry_list_json(hub->registry, engine, status, th_mono_ms());
    free(engine);
    free(status);
    size_t i;
    json_t *n;
    json_array_foreach(json_object_get(o, "nodes"), i, n) seed2_node_keys(n);
    th_api_json(c, 200, o);
}

void th_api_nodes_get(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    th_reg_caller who;
    char cred[160];
    if (control_auth(c, "/api/nodes/{id}", CTL_OPERATOR, &who, cred, sizeof cred) != 0) return;
    const char *id = th_http_param(req, "id");
    json_t *o = th_registry_node_json(hub->registry, id, th_mono_ms());
    if (o == NULL) {
        th_api_error(c, 404, NULL, "unknown_node", "unknown node '%s'", id ? id : "");
        return;
    }
    seed2_node_keys(o);
    th_api_json(c, 200, o);
}

/* ---- commands: relayed to the node, then its status is set ---- */

typedef struct cmd_relay {
    th_api_ctx *c;
    char id[TH_NODE_ID_MAX + 1];
    char command[16];
    bool seed2;     /* a seed-2 worker: its answer's status is taken */
    char body[512]; /* the node's answer, cut */
    size_t blen;
} cmd_relay;

static int cmd_head(void *ud, int status, const th_client_header *h, size_t n)
{
    (void)ud;
    (void)status;
    (void)h;
    (void)n;
    return 0;
}

static int cmd_body(void *ud, const uint8_t *d, size_t len)
{
    cmd_relay *r = ud;
    th_str_append_cut(r->body, sizeof r->body, &r->blen, d, len);
    return 0;
}

static void cmd_done(void *ud, th_client_result res, int status, const char *detail)
{
    cmd_relay *r = ud;
    th_api_ctx *c = r->c;
    th_hub *hub = c->hub;
    if (res != TH_CLIENT_OK || status < 200 || status >= 300) {
        /* what went wrong stays in the log: the client learns only that the node did not take it */
        if (res != TH_CLIENT_OK)
            TH_LOG(hub->log, TH_LOG_WARN, "request %s: command %s to node %s: %s (%s)", c->rid, r->command,
                   r->id, th_client_result_name(res), detail ? detail : "");
        else
            TH_LOG(hub->log, TH_LOG_WARN, "request %s: command %s to node %s: HTTP %d: %.*s", c->rid,
                   r->command, r->id, status, (int)r->blen, r->body);
        th_api_error(c, 502, NULL, res != TH_CLIENT_OK ? "node_unreachable" : "node_refused",
                     "node %s did not take the command; request %s, the details are in the hub's log", r->id,
                     c->rid);
        free(r);
        return;
    }
    /* a seed-2 worker answers 200 {"success": false} when it could not (load failed) */
    json_t *ans = r->blen > 0 ? json_loadb(r->body, r->blen, 0, NULL) : NULL;
    if (json_is_false(json_object_get(ans, "success"))) {
        TH_LOG(hub->log, TH_LOG_WARN, "request %s: command %s to node %s refused: %.*s", c->rid, r->command,
               r->id, (int)r->blen, r->body);
        json_decref(ans);
        th_api_error(c, 502, NULL, "node_refused",
                     "node %s did not take the command; request %s, the details are in the hub's log", r->id,
                     c->rid);
        free(r);
        return;
    }
    bool up = strcmp(r->command, "activate") == 0 || strcmp(r->command, "load_model") == 0;
    bool down = strcmp(r->command, "standby") == 0 || strcmp(r->command, "unload_model") == 0;
    char st[33];
    th_strlcpy(st, up ? "online" : down ? "standby" : "stopping", sizeof st);
    /* the status a seed-2 worker says it is in now (ready, standby, error...), when it is a plain word */
    const char *said = r->seed2 ? json_string_value(json_object_get(ans, "status")) : NULL;
    if (said != NULL && said[0] != 0 && strlen(said) < sizeof st &&
        strspn(said, "abcdefghijklmnopqrstuvwxyz0123456789_-") == strlen(said))
        th_strlcpy(st, said, sizeof st);
    json_decref(ans);
    if (th_registry_set_status(hub->registry, r->id, st) == TH_REG_OK) /* the node may have gone meanwhile */
        th_regsync_publish(hub->regsync, r->id);
    th_api_json(
        c, 200,
        json_pack("{s:b,s:s,s:s,s:s}", "success", 1, "node_id", r->id, "command", r->command, "status", st));
    free(r);
}

void th_api_nodes_command(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    th_reg_caller who;
    char cred[160];
    if (control_auth(c, "/api/nodes/{id}/command", CTL_OPERATOR, &who, cred, sizeof cred) != 0) return;
    json_t *body = th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    const char *id = th_http_param(req, "id");
    const char *cmd = json_string_value(json_object_get(body, "command"));
    if (cmd == NULL ||
        (strcmp(cmd, "activate") != 0 && strcmp(cmd, "standby") != 0 && strcmp(cmd, "stop") != 0 &&
         strcmp(cmd, "load_model") != 0 && strcmp(cmd, "unload_model") != 0)) {
        json_decref(body);
        th_api_error(c, 400, NULL, "invalid_command",
                     "'command' must be activate, load_model, standby, unload_model or stop");
        return;
    }
    const char *url = th_registry_url(hub->registry, id);
    if (url == NULL) {
        json_decref(body);
        th_api_error(c, 404, NULL, "unknown_node", "unknown node '%s'", id ? id : "");
        return;
    }
    cmd_relay *r = calloc(1, sizeof *r);
    char target[TH_NODE_URL_MAX + 16], payload[64];
    if (r == NULL) {
        json_decref(body);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    r->c = c;
    th_strlcpy(r->id, id, sizeof r->id);
    th_strlcpy(r->command, cmd, sizeof r->command);
    json_decref(body);
    snprintf(target, sizeof target, "%s/command", url);
    /* what the node understands: a ttshub node knows activate and standby */
    char nengine[TH_NODE_ENGINE_MAX + 1];
    th_node_proto proto = TH_NODE_PROTO_TTSHUB;
    (void)th_registry_node_kind(hub->registry, id, nengine, &proto);
    const char *sent = r->command;
    r->seed2 = proto == TH_NODE_PROTO_SEED2;
    if (proto == TH_NODE_PROTO_TTSHUB && strcmp(sent, "load_model") == 0) sent = "activate";
    if (proto == TH_NODE_PROTO_TTSHUB && strcmp(sent, "unload_model") == 0) sent = "standby";
    int pl = snprintf(payload, sizeof payload, "{\"command\":\"%s\"}", sent);
    char bearer[600] = "";
    const char *tenv = hub->cfg->registry.token_env;
    const char *tok = tenv && *tenv ? getenv(tenv) : NULL;
    if (tok && *tok && strpbrk(tok, "\r\n") == NULL)
        snprintf(bearer, sizeof bearer, "Authorization: Bearer %s", tok);
    const char *const hdrs[] = {"Content-Type: application/json", bearer[0] ? bearer : NULL, NULL};
    th_client_opts o = {.method = "POST",
                        .url = target,
                        .headers = hdrs,
                        .body = (const uint8_t *)payload,
                        .body_len = (size_t)pl,
                        .connect_timeout_ms = 2000,
                        .total_timeout_ms = strcmp(sent, "activate") == 0 || strcmp(sent, "load_model") == 0
                                                ? CMD_LOAD_TIMEOUT_MS
                                                : CMD_TIMEOUT_MS,
                        .max_body = 64 * 1024};
    th_client_cb cb = {cmd_head, cmd_body, cmd_done, r};
    if (hub->ctl_client == NULL || th_client_start(hub->ctl_client, &o, &cb) == NULL) {
        free(r);
        th_api_error(c, 500, NULL, "internal_error", "cannot start the command request");
    }
}
