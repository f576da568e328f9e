/* common: per-request context, error bodies, the access line. */
#include "api/api.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "core/uuid.h"
#include "http/body.h"
#include "voice/library.h"

const char *th_api_error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 405:
        return "invalid_request_error";
    case 408:
        return "timeout_error";
    case 429:
        return "rate_limit_error";
    case 502:
        return "upstream_error";
    case 503:
        return "service_unavailable";
    case 504:
        return "timeout_error";
    default:
        return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void th_api_perr_status(const th_perr *e, int *status, const char **type, const char **code)
{
    switch (e->kind) {
    case TH_PERR_CLIENT:
        *status = 400;
        *code = "upstream_rejected";
        break;
    case TH_PERR_TIMEOUT:
        *status = 504;
        *code = "upstream_timeout";
        break;
    case TH_PERR_OVERLOADED:
        *status = 503;
        *code = "upstream_overloaded";
        break;
    case TH_PERR_INTERNAL:
        *status = 500;
        *code = "internal_error";
        break;
    case TH_PERR_CANCELLED:
        *status = 499;
        *code = "cancelled";
        break;
    default:
        *status = 502;
        *code = "upstream_error";
        break;
    }
    *type = th_api_error_type(*status);
}

void th_api_ctx_free(th_api_ctx *c)
{
    if (c == NULL) return;
    th_span_drop(c->span); /* a request that never reached th_api_log */
    th_vlib_use_release(c->clone);
    free(c->only_engine);
    th_config_unref(c->cfg);
    free(c->voice);
    free(c->tenant);
    free(c);
}

void th_api_log(th_api_ctx *c, int status)
{
    th_hub *hub = c->hub;
    double dur = (double)(th_mono_us() - th_http_start_us(c->req)) / 1000.0;
    th_access a = {
        .generation = c->rid,
        .method = th_http_method(c->req),
        .route = th_http_path(c->req),
        .tenant = c->tenant,
        .voice = c->voice,
        .voice_id = c->library_voice ? c->voice : NULL,
        .format = c->fmt != TH_FMT_NONE ? th_fmt_name(c->fmt) : NULL,
        .provider = c->provider[0] ? c->provider : NULL,
        .cache = c->cache,
        .peer = th_http_peer(c->req),
        .error = status >= 400 ? c->error_code : NULL,
        .status = status,
        .bytes = (int64_t)c->bytes,
        .chars = c->chars > 0 ? c->chars : -1,
        .duration_ms = dur,
        .upstream_ms = c->synth ? th_synth_upstream_ms(c->synth) : -1,
    };
    th_log_access(hub->log, &a);
    if (c->span) {
        char name[160];
        snprintf(name, sizeof name, "%s %s", a.method, c->route ? c->route : "unmatched");
        th_span_set_name(c->span, name);
        th_span_attr_str(c->span, "http.request.method", a.method);
        th_span_attr_str(c->span, "http.route", c->route ? c->route : "unmatched");
        th_span_attr_str(c->span, "url.path", a.route);
        th_span_attr_int(c->span, "http.response.status_code", status);
        th_span_attr_str(c->span, "client.address", a.peer);
        th_span_attr_str(c->span, "ttshub.request_id", c->rid);
        th_span_attr_str(c->span, "ttshub.provider", a.provider);
        th_span_attr_str(c->span, "ttshub.cache", a.cache);
        th_span_attr_str(c->span, "ttshub.voice", a.voice);
        th_span_attr_str(c->span, "ttshub.format", a.format);
        th_span_attr_str(c->span, "ttshub.tenant", a.tenant);
        if (c->chars > 0) th_span_attr_int(c->span, "ttshub.characters", c->chars);
        if (status >= 400 && c->error_code) th_span_attr_str(c->span, "error.type", c->error_code);
        if (status >= 500) th_span_error(c->span, c->error_code ? c->error_code : "server error");
        th_span_end(c->span);
        c->span = NULL;
    }
    if (c->chars > 0 && status < 400) { /* a synthesis: its duration feeds /api/status */
        hub->stats.lat_ms[hub->stats.lat_pos] = (float)dur;
        hub->stats.lat_pos = (hub->stats.lat_pos + 1) % TH_HUB_LAT_RING;
        if (hub->stats.lat_n < TH_HUB_LAT_RING) hub->stats.lat_n++;
    }
    if (hub->metrics) {
        char st[8];
        st[0] = (char)('0' + status / 100 % 10);
        st[1] = (char)('0' + status / 10 % 10);
        st[2] = (char)('0' + status % 10);
        st[3] = 0;
        const char *route = c->route ? c->route : "unmatched";
        const char *l1[] = {route, st, NULL};
        const char *l2[] = {route, NULL};
        th_metrics_add(hub->metrics, TH_M_REQUESTS, l1, 1);
        th_metrics_observe(hub->metrics, TH_M_REQUEST_SECONDS, l2, dur / 1000.0);
    }
}

void th_api_reply(th_api_ctx *c, int status, const char *content_type, const void *body, size_t len)
{
    c->bytes = len;
    th_api_log(c, status);
    th_http_req *req = c->req;
    th_http_set_header(req, "X-Request-Id", c->rid);
    th_api_ctx_free(c);
    th_http_set_data(req, NULL);
    th_http_respond(req, status, content_type, body, len);
}

void th_api_error(th_api_ctx *c, int status, const char *type, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (type == NULL) type = th_api_error_type(status);
    c->error_code = code;
    json_t *o;
    /* a rate limit also carries the voice-clone gateway's code, which its clients test, beside ours */
    const char *compat =
        status == 429 && strcmp(type, "rate_limit_error") == 0 ? "RATE_LIMIT_EXCEEDED" : NULL;
    if (c->shape == TH_SHAPE_CLONE && compat == NULL)
        o = json_pack("{s:b,s:s,s:s}", "success", 0, "message", msg, "code", code ? code : type);
    else if (c->shape == TH_SHAPE_CLONE)
        o = json_pack("{s:b,s:s,s:s,s:{s:s,s:s,s:s?}}", "success", 0, "message", msg, "code", compat, "error",
                      "message", msg, "type", type, "code", code);
    else
        o = json_pack("{s:{s:s,s:s,s:s?},s:s*}", "error", "message", msg, "type", type, "code", code, "code",
                      compat);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (status == 429 || status == 503) {
        char ra[24];
        snprintf(ra, sizeof ra, "%d", c->retry_after_s > 0 ? c->retry_after_s : 1);
        th_http_set_header(c->req, "Retry-After", ra);
    }
    if (body == NULL) {
        static const char fallback[] = "{\"error\":{\"message\":\"out of "
                                       "memory\",\"type\":\"server_error\",\"code\":\"internal_error\"}}";
        th_api_reply(c, 500, "application/json", fallback, sizeof fallback - 1);
        return;
    }
    th_api_reply(c, status, "application/json", body, strlen(body));
    free(body);
}

void th_api_json(th_api_ctx *c, int status, json_t *o)
{
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (body == NULL) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    th_http_set_header(c->req, "Cache-Control", "no-store");
    th_api_reply(c, status, "application/json", body, strlen(body));
    free(body);
}

bool th_api_is_json_type(const char *ct)
{
    if (ct == NULL) return false;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, "; ");
    if (th_strn_ieq(ct, n, "application/json")) return true;
    return n > 5 && th_strn_ieq(ct + n - 5, 5, "+json");
}

json_t *th_api_body_object(th_api_ctx *c, bool optional, const char *code)
{
    size_t blen = 0;
    const uint8_t *body = th_http_body(c->req, &blen);
    if (blen == 0 && optional) return json_object();
    /* a JSON route takes JSON only: a cross-site form or text/plain POST never reaches it */
    if (!th_api_is_json_type(th_http_header(c->req, "Content-Type"))) {
        th_api_error(c, 415, "invalid_request_error", "unsupported_media_type",
                     "this endpoint takes application/json");
        return NULL;
    }
    char err[200] = "";
    json_t *j = th_json_parse_bounded(body, blen, TH_JSON_MAX_DEPTH, err, sizeof err);
    if (j == NULL) {
        th_api_error(c, 400, NULL, code, "%s", err[0] ? err : "malformed JSON");
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        th_api_error(c, 400, NULL, code, "the body must be a JSON object");
        return NULL;
    }
    return j;
}

bool th_api_set_request_id(th_api_ctx *c, const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 128) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = id[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '-' || ch == '_' || ch == '.' || ch == ':';
        if (!ok) return false;
    }
    memcpy(c->rid, id, n + 1);
    return true;
}

/* "scheme://host[:port]" of an Origin header -> "host[:port]" equals the Host (or X-Forwarded-Host)? */
static bool origin_matches(const char *origin, const char *host)
{
    if (host == NULL) return false;
    const char *p = strstr(origin, "://");
    if (p == NULL) return false;
    p += 3;
    size_t n = strcspn(p, "/");
    size_t hn = strcspn(host, ", ");
    return n == hn && th_strn_ieq(p, n, host);
}

bool th_api_cross_site(th_http_req *req)
{
    const char *m = th_http_method(req);
    if (strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0) return false;
    /* synthesis changes nothing, and ttsfm's client sends browser headers with Origin: https://www.openai.fm
     */
    static const char *const speech[] = {"/api/generate", "/v1/audio/speech", "/api/synthesize",
                                         "/api/batch_synthesize", "/synthesize"};
    const char *path = th_http_path(req);
    for (size_t i = 0; i < sizeof speech / sizeof speech[0]; i++)
        if (strcmp(path, speech[i]) == 0) return false;
    const char *origin = th_http_header(req, "Origin");
    if (origin == NULL) return false; /* not a browser, or a browser that does not say: nothing to check */
    return !origin_matches(origin, th_http_header(req, "Host")) &&
           !origin_matches(origin, th_http_header(req, "X-Forwarded-Host"));
}

static void handle(th_http_req *req, th_hub *hub, th_router *router)
{
    th_api_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) {
        static const char oom[] = "{\"error\":{\"message\":\"out of "
                                  "memory\",\"type\":\"server_error\",\"code\":\"internal_error\"}}";
        th_http_respond(req, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    c->hub = hub;
    c->cfg = th_config_ref(hub->cfg);
    c->req = req;
    c->fmt = TH_FMT_NONE;
    const char *given = th_http_header(req, "X-Request-Id");
    if (given == NULL || !th_api_set_request_id(c, given)) th_uuid_gen_next(&hub->ids, c->rid);
    if (hub->tracer) {
        th_trace_ctx parent;
        th_trace_parse_parent(th_http_header(req, "traceparent"), &parent);
        c->span = th_span_start(hub->tracer, th_http_path(req), TH_SPAN_SERVER, &parent);
    }
    th_http_set_data(req, c);
    if (th_api_cross_site(req)) { /* a page of another site posting to us: no state change from there */
        c->route = "cross-site";
        th_api_error(c, 403, "permission_error", "cross_site_request",
                     "requests that change state are not taken from pages of another origin");
        return;
    }
    th_router_dispatch(router, req);
}

void th_api_handle(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    handle(req, hub, hub->router);
}

void th_api_handle_metrics(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    handle(req, hub, hub->metrics_router);
}

size_t th_api_body_limit(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    const char *path = th_http_path(req);
    if (strcmp(path, "/api/extract_voice") == 0) return (size_t)hub->cfg->limits.max_upload;
    return (size_t)hub->cfg->limits.max_body;
}

void th_api_miss(th_http_req *req, int status, const char *allow, void *ud)
{
    th_api_ctx *c = th_http_get_data(req);
    if (status == 405) {
        if (allow) th_http_set_header(req, "Allow", allow);
        th_api_error(c, 405, "invalid_request_error", "method_not_allowed", "method %s is not allowed on %s",
                     th_http_method(req), th_http_path(req));
        return;
    }
    th_api_error(c, 404, "not_found_error", "not_found", "no route for %s %s", th_http_method(req),
                 th_http_path(req));
}

int th_api_check_input(th_api_ctx *c, const char *field, const char *text, size_t len, size_t *chars)
{
    if (text == NULL) {
        th_api_error(c, 400, NULL, "missing_input", "'%s' is required", field);
        return -1;
    }
    int64_t n = th_utf8_count(text, len);
    if (n < 0) {
        th_api_error(c, 400, NULL, "invalid_input", "'%s' is not valid UTF-8", field);
        return -1;
    }
    bool blank = true;
    for (size_t i = 0; i < len && blank; i++)
        if (!strchr(" \t\r\n", text[i])) blank = false;
    if (n == 0 || blank) {
        th_api_error(c, 400, NULL, "missing_input", "'%s' must not be empty", field);
        return -1;
    }
    uint64_t max = c->hub->cfg->limits.max_input_chars;
    if ((uint64_t)n > max) {
        th_api_error(c, 400, NULL, "input_too_long", "'%s' is %lld characters; the limit is %llu", field,
                     (long long)n, (unsigned long long)max);
        return -1;
    }
    c->chars = n;
    *chars = (size_t)n;
    return 0;
}

int th_api_check_format(th_api_ctx *c, const char *field, const char *name, th_fmt *fmt)
{
    if (name == NULL || *name == 0) {
        *fmt = TH_FMT_MP3;
    } else {
        *fmt = th_fmt_from_name(name);
        if (*fmt == TH_FMT_NONE) {
            th_api_error(c, 400, NULL, "invalid_response_format",
                         "'%s' must be one of mp3, opus, aac, flac, wav, pcm", field);
            return -1;
        }
    }
    c->fmt = *fmt;
    return 0;
}

int th_api_check_speed(th_api_ctx *c, const char *field, const char *s, double *speed)
{
    *speed = 1.0;
    if (s == NULL || *s == 0) return 0;
    if (th_str_to_double(s, 0.25, 4.0, speed) != 0) {
        th_api_error(c, 400, NULL, "invalid_speed", "'%s' must be a number from 0.25 to 4.0", field);
        return -1;
    }
    return 0;
}
