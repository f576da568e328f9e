/* nodes: the worker registry's control routes (API.md "Worker registry").
 *
 *   POST   /api/nodes/register          {node_id?, engine_type, url | host+port, capacity, ...}
 *   POST   /api/nodes/{id}/heartbeat    {status, model_loaded, current_concurrent, ...}; unknown id: 404
 *   DELETE /api/nodes/{id}
 *   GET    /api/nodes?engine=&status=   {nodes:[...], count}
 *   GET    /api/nodes/{id}
 *   POST   /api/nodes/{id}/command      {command: activate|standby|stop}: relayed to POST {node}/command
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

#define CMD_TIMEOUT_MS 5000

static bool token_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    unsigned char d = alen == blen ? 0 : 1;
    for (size_t i = 0; i < alen; i++)
        d |= (unsigned char)(a[i] ^ (i < blen ? b[i] : 0));
    return d == 0;
}

/* 0 when the caller may use the control routes; otherwise the error was sent. */
static int control_auth(th_api_ctx *c, const char *route)
{
    th_hub *hub = c->hub;
    c->route = route;
    c->shape = TH_SHAPE_CLONE;
    const char *env = hub->cfg->registry.token_env;
    const char *token = env && *env ? getenv(env) : NULL;
    if (token != NULL && *token) {
        const char *h = th_http_header(c->req, "Authorization");
        if (h != NULL && th_strn_ieq(h, strlen(h) < 7 ? strlen(h) : 7, "Bearer ")) {
            const char *t = h + 7;
            while (*t == ' ')
                t++;
            if (token_eq(t, strlen(t), token, strlen(token))) return 0;
        }
        if (strcmp(hub->cfg->auth.mode, "none") == 0) {
            th_http_set_header(c->req, "WWW-Authenticate", "Bearer");
            th_api_error(c, 401, "authentication_error", h ? "invalid_credentials" : "missing_credentials",
                         "the control routes need the cluster token (%s) or an admin credential", env);
            return -1;
        }
    }
    return th_api_auth(c, true);
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
    default:
        th_api_error(c, 400, NULL, "invalid_node", "%s", err && *err ? err : "invalid request");
        break;
    }
    (void)id;
}

void th_api_nodes_register(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    if (control_auth(c, "/api/nodes/register") != 0) return;
    json_t *body = th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    char id[TH_NODE_ID_MAX + 1] = "", err[256] = "";
    th_reg_rc rc = th_registry_register(hub->registry, body, th_mono_ms(), id, err, sizeof err);
    json_decref(body);
    if (rc != TH_REG_OK) {
        reg_error(c, rc, NULL, err);
        return;
    }
    th_regsync_publish(hub->regsync, id);
    double hb = (double)hub->cfg->registry.heartbeat_interval_ms / 1000.0;
    th_api_json(c, 200, json_pack("{s:b,s:s,s:f}", "success", 1, "node_id", id, "heartbeat_interval", hb));
}

void th_api_nodes_heartbeat(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    if (control_auth(c, "/api/nodes/{id}/heartbeat") != 0) return;
    json_t *body = th_api_body_object(c, true, "malformed_body");
    if (body == NULL) return;
    const char *id = node_id_of(c, body);
    if (id != NULL) {
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
    if (control_auth(c, "/api/nodes/{id}") != 0) return;
    json_t *body = th_http_param(req, "id") ? json_object() : th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    const char *id = node_id_of(c, body);
    if (id != NULL) {
        if (th_registry_remove(hub->registry, id) != TH_REG_OK) {
            th_api_error(c, 404, NULL, "unknown_node", "unknown node '%s'", id);
        } else {
            th_regsync_unpublish(hub->regsync, id);
            th_api_json(c, 200, json_pack("{s:b,s:s}", "success", 1, "node_id", id));
        }
    }
    json_decref(body);
}

void th_api_nodes_list(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    if (control_auth(c, "/api/nodes") != 0) return;
    char *engine = th_query_get(th_http_query(req), "engine");
    char *status = th_query_get(th_http_query(req), "status");
    json_t *o = th_registry_list_json(hub->registry, engine, status, th_mono_ms());
    free(engine);
    free(status);
    th_api_json(c, 200, o);
}

void th_api_nodes_get(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    if (control_auth(c, "/api/nodes/{id}") != 0) return;
    const char *id = th_http_param(req, "id");
    json_t *o = th_registry_node_json(hub->registry, id, th_mono_ms());
    if (o == NULL) {
        th_api_error(c, 404, NULL, "unknown_node", "unknown node '%s'", id ? id : "");
        return;
    }
    th_api_json(c, 200, o);
}

/* ---- commands: relayed to the node, then its status is set ---- */

typedef struct cmd_relay {
    th_api_ctx *c;
    char id[TH_NODE_ID_MAX + 1];
    char command[16];
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
    size_t room = sizeof r->body - 1 - r->blen;
    if (len > room) len = room;
    memcpy(r->body + r->blen, d, len);
    r->blen += len;
    return 0;
}

static void cmd_done(void *ud, th_client_result res, int status, const char *detail)
{
    cmd_relay *r = ud;
    th_api_ctx *c = r->c;
    th_hub *hub = c->hub;
    if (res != TH_CLIENT_OK || status < 200 || status >= 300) {
        if (res != TH_CLIENT_OK)
            th_api_error(c, 502, NULL, "node_unreachable", "node %s did not take the command: %s (%s)", r->id,
                         th_client_result_name(res), detail ? detail : "");
        else
            th_api_error(c, 502, NULL, "node_refused", "node %s answered HTTP %d to the command", r->id,
                         status);
        free(r);
        return;
    }
    const char *st = strcmp(r->command, "activate") == 0  ? "online"
                     : strcmp(r->command, "standby") == 0 ? "standby"
                                                          : "stopping";
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
    if (control_auth(c, "/api/nodes/{id}/command") != 0) return;
    json_t *body = th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    const char *id = th_http_param(req, "id");
    const char *cmd = json_string_value(json_object_get(body, "command"));
    if (cmd == NULL ||
        (strcmp(cmd, "activate") != 0 && strcmp(cmd, "standby") != 0 && strcmp(cmd, "stop") != 0)) {
        json_decref(body);
        th_api_error(c, 400, NULL, "invalid_command", "'command' must be activate, standby or stop");
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
    int pl = snprintf(payload, sizeof payload, "{\"command\":\"%s\"}", r->command);
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    th_client_opts o = {.method = "POST",
                        .url = target,
                        .headers = hdrs,
                        .body = (const uint8_t *)payload,
                        .body_len = (size_t)pl,
                        .connect_timeout_ms = 2000,
                        .total_timeout_ms = CMD_TIMEOUT_MS,
                        .max_body = 64 * 1024};
    th_client_cb cb = {cmd_head, cmd_body, cmd_done, r};
    if (hub->ctl_client == NULL || th_client_start(hub->ctl_client, &o, &cb) == NULL) {
        free(r);
        th_api_error(c, 500, NULL, "internal_error", "cannot start the command request");
    }
}
