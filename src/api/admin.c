/* admin: /admin/usage, /admin/providers, /admin/config (admin role). */
#include "api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "hub/reload.h"
#include "http/body.h"

typedef struct usage_wait {
    th_api_ctx *c;
    char window[8];
} usage_wait;

static void usage_cb(void *ud, const th_usage_row *rows, size_t n, bool ok)
{
    usage_wait *w = ud;
    th_api_ctx *c = w->c;
    if (!ok) {
        free(w);
        th_api_error(c, 503, "service_unavailable", "backend_unavailable",
                     "the usage backend is unavailable");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr,
                              json_pack("{s:s,s:I,s:I}", "tenant", rows[i].tenant, "characters",
                                        (json_int_t)rows[i].chars, "requests", (json_int_t)rows[i].requests));
    th_api_json(c, 200, json_pack("{s:s,s:o}", "window", w->window, "usage", arr));
    free(w);
}

void th_api_admin_usage(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/admin/usage";
    if (th_api_auth(c, true) != 0) return;
    char *window = th_query_get(th_http_query(req), "window");
    char *tenant = th_query_get(th_http_query(req), "tenant");
    const char *win = window && *window ? window : "day";
    if (strcmp(win, "day") != 0 && strcmp(win, "month") != 0) {
        free(window);
        free(tenant);
        th_api_error(c, 400, NULL, "invalid_window", "'window' must be day or month");
        return;
    }
    usage_wait *w = calloc(1, sizeof *w);
    if (w == NULL || hub->quota == NULL) {
        free(w);
        free(window);
        free(tenant);
        th_api_error(c, 500, NULL, "internal_error", "usage is not available");
        return;
    }
    w->c = c;
    memcpy(w->window, win, strlen(win) + 1);
    th_quota_usage_fetch(hub->quota, win, tenant && *tenant ? tenant : NULL, th_wall_ms(), usage_cb, w);
    free(window);
    free(tenant);
}

void th_api_admin_providers(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/admin/providers";
    if (th_api_auth(c, true) != 0) return;
    json_t *arr = json_array();
    uint64_t now = th_mono_ms();
    for (size_t i = 0; i < hub->n_providers; i++) {
        const th_route_prov *rp = hub->route.provs[i];
        const th_provider_conf *pc = rp->p->conf;
        json_array_append_new(
            arr,
            json_pack("{s:s,s:s,s:s,s:s,s:i,s:i,s:f,s:f,s:I,s:I,s:b}", "name", pc->name, "type", pc->type,
                      "health", th_route_available(&hub->route, i) ? "healthy" : "unhealthy", "breaker",
                      th_breaker_state_name(th_breaker_get(&rp->breaker, now)), "in_flight", rp->inflight,
                      "queued", rp->waiting, "ewma_first_byte_ms", rp->ewma_first_byte_ms, "error_rate",
                      th_breaker_error_rate(&rp->breaker, now), "calls", (json_int_t)rp->calls, "failures",
                      (json_int_t)rp->failures, "probe_ok", rp->probe_ok));
    }
    th_api_json(c, 200, json_pack("{s:o}", "providers", arr));
}

void th_api_admin_config(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/admin/config";
    if (th_api_auth(c, true) != 0) return;
    char *json = th_config_to_json(hub->cfg);
    json_t *o = json ? json_loads(json, JSON_DECODE_ANY, NULL) : NULL;
    free(json);
    if (o == NULL || json_object_set_new(o, "version", th_reload_version(hub)) != 0) {
        json_decref(o);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    th_http_set_header(req, "Cache-Control", "no-store");
    th_api_json(c, 200, o);
}

void th_api_admin_reload(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/admin/reload";
    if (th_api_auth(c, true) != 0) return;
    th_config_errors errs = {0};
    json_t *summary = NULL;
    th_reload_rc rc = th_reload_run(hub, TH_RELOAD_API, &errs, &summary);
    if (rc == TH_RELOAD_REFUSED) {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < errs.n; i++) {
            const th_config_error *e = &errs.items[i];
            json_t *one = json_pack("{s:s,s:s}", "path", e->path, "message", e->message);
            if (one && e->line > 0) json_object_set_new(one, "line", json_integer(e->line));
            json_array_append_new(arr, one);
        }
        th_config_errors_free(&errs);
        TH_LOG(hub->log, TH_LOG_WARN,
               "config reload (admin api) refused: %zu error(s); the config in force stays",
               arr ? json_array_size(arr) : 0);
        json_t *body = json_pack("{s:o,s:{s:s,s:s,s:s}}", "errors", arr ? arr : json_array(), "error",
                                 "message", "the config was not reloaded; the config in force stays", "type",
                                 "invalid_request_error", "code", "invalid_config");
        c->error_code = "invalid_config";
        th_api_json(c, 400, body);
        return;
    }
    th_config_errors_free(&errs);
    th_http_set_header(req, "Cache-Control", "no-store");
    th_api_json(c, 200, summary);
}
