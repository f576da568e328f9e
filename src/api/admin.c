/* admin: /admin/usage, /admin/providers, /admin/config (admin role). */
#include "api/api.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
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
        const th_route_prov *rp = &hub->route.provs[i];
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
    if (json == NULL) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    th_http_set_header(req, "Cache-Control", "no-store");
    th_api_reply(c, 200, "application/json", json, strlen(json));
    free(json);
}
