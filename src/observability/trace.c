/* trace: spans and their OTLP/HTTP JSON export, see trace.h. */
#include "observability/trace.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/clock.h"
#include "core/str.h"
#include "http/client.h"

#define FLUSH_MS 1000
#define EXPORT_TIMEOUT_MS 2000
#define WARN_EVERY_MS 30000
#define MAX_ATTRS 24

struct th_tracer {
    uv_loop_t *loop;
    th_log *log;
    char url[1024];
    char service[128];
    double ratio;
    uint64_t rng[2];
    th_client *client;
    uv_timer_t *timer;
    json_t *pending; /* array of span objects */
    th_client_req *inflight;
    char status_detail[128];
    uint64_t dropped, exported, failed;
    uint64_t last_warn;
    size_t live; /* spans started and not ended */
    bool closing;
};

struct th_span {
    th_tracer *t;
    th_trace_ctx ctx;
    uint8_t parent[8];
    bool has_parent;
    th_span_kind kind;
    char name[128];
    uint64_t start_ns;
    json_t *attrs; /* array of {key, value} */
    char *error;
};

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* xorshift128+ */
static uint64_t rnd(th_tracer *t)
{
    uint64_t s1 = t->rng[0];
    const uint64_t s0 = t->rng[1];
    t->rng[0] = s0;
    s1 ^= s1 << 23;
    t->rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return t->rng[1] + s0;
}

static void fill_random(th_tracer *t, uint8_t *out, size_t n)
{
    for (;;) {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t v = rnd(t);
            for (size_t k = 0; k < 8 && i + k < n; k++)
                out[i + k] = (uint8_t)(v >> (8 * k));
        }
        for (size_t i = 0; i < n; i++)
            if (out[i] != 0) return; /* all-zero ids are invalid */
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1; /* W3C: lower-case only */
}

static bool unhex(const char *s, uint8_t *out, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (uint8_t)(hi << 4 | lo);
        nonzero |= out[i] != 0;
    }
    return nonzero;
}

bool th_trace_parse_parent(const char *h, th_trace_ctx *out)
{
    memset(out, 0, sizeof *out);
    if (h == NULL) return false;
    while (*h == ' ' || *h == '\t')
        h++;
    size_t n = strlen(h);
    while (n > 0 && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    /* version 00 is exactly 55 bytes; a later version may append fields after a '-' */
    if (n < TH_TRACEPARENT_LEN || h[2] != '-' || h[35] != '-' || h[52] != '-') return false;
    if (hexval(h[0]) < 0 || hexval(h[1]) < 0 || (h[0] == 'f' && h[1] == 'f')) return false;
    if (h[0] == '0' && h[1] == '0' && n != TH_TRACEPARENT_LEN) return false;
    if (n > TH_TRACEPARENT_LEN && h[TH_TRACEPARENT_LEN] != '-') return false;
    uint8_t flags;
    if (!unhex(h + 3, out->trace_id, 16) || !unhex(h + 36, out->span_id, 8)) return false;
    if (hexval(h[53]) < 0 || hexval(h[54]) < 0) return false;
    flags = (uint8_t)(hexval(h[53]) << 4 | hexval(h[54]));
    out->sampled = (flags & 1) != 0;
    out->valid = true;
    return true;
}

void th_trace_format_parent(const th_trace_ctx *c, char *out)
{
    char tid[33], sid[17];
    th_hex(c->trace_id, 16, tid);
    th_hex(c->span_id, 8, sid);
    snprintf(out, TH_TRACEPARENT_LEN + 1, "00-%s-%s-%s", tid, sid, c->sampled ? "01" : "00");
}

/* ---- export ---- */

static void maybe_free(th_tracer *t);

static int ex_head(void *ud, int status, const th_client_header *h, size_t n)
{
    (void)ud, (void)status, (void)h, (void)n;
    return 0;
}

static int ex_body(void *ud, const uint8_t *d, size_t len)
{
    (void)ud, (void)d, (void)len;
    return 0;
}

static void ex_done(void *ud, th_client_result res, int status, const char *detail)
{
    th_tracer *t = ud;
    t->inflight = NULL;
    if (res == TH_CLIENT_OK && status >= 200 && status < 300) {
        t->exported++;
    } else {
        t->failed++;
        uint64_t now = th_mono_ms();
        if (t->last_warn == 0 || now - t->last_warn >= WARN_EVERY_MS) {
            t->last_warn = now;
            if (res == TH_CLIENT_OK)
                TH_LOG(t->log, TH_LOG_WARN, "tracing: %s answered HTTP %d; spans dropped", t->url, status);
            else
                TH_LOG(t->log, TH_LOG_WARN, "tracing: cannot export to %s: %s (%s); spans dropped", t->url,
                       th_client_result_name(res), detail ? detail : "");
        }
    }
    maybe_free(t);
}

static void flush(th_tracer *t)
{
    if (t->inflight != NULL || json_array_size(t->pending) == 0) return;
    json_t *batch = t->pending;
    t->pending = json_array();
    if (t->pending == NULL) {
        t->pending = batch;
        return;
    }
    json_t *doc =
        json_pack("{s:[{s:{s:[{s:s,s:{s:s}}]},s:[{s:{s:s,s:s},s:o}]}]}", "resourceSpans", "resource",
                  "attributes", "key", "service.name", "value", "stringValue", t->service, "scopeSpans",
                  "scope", "name", "ttshub", "version", TH_VERSION, "spans", batch);
    char *body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (body == NULL) return;
    static const char *const hdrs[] = {"Content-Type: application/json", NULL};
    th_client_opts o = {.method = "POST",
                        .url = t->url,
                        .headers = hdrs,
                        .body = (const uint8_t *)body,
                        .body_len = strlen(body),
                        .connect_timeout_ms = EXPORT_TIMEOUT_MS,
                        .total_timeout_ms = EXPORT_TIMEOUT_MS,
                        .max_body = 64 * 1024};
    th_client_cb cb = {ex_head, ex_body, ex_done, t};
    t->inflight = th_client_start(t->client, &o, &cb);
    if (t->inflight == NULL) t->failed++;
    free(body);
}

static void on_tick(uv_timer_t *h)
{
    flush(h->data);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void maybe_free(th_tracer *t)
{
    if (!t->closing || t->live > 0) return;
    if (t->inflight == NULL && json_array_size(t->pending) > 0) flush(t); /* the last batch */
    if (t->inflight != NULL) return;
    th_client_close(t->client, NULL, NULL);
    json_decref(t->pending);
    free(t);
}

th_tracer *th_tracer_new(uv_loop_t *loop, const char *endpoint, const char *service_name, double sample_ratio,
                         th_log *log)
{
    if (endpoint == NULL || endpoint[0] == 0) return NULL;
    th_tracer *t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->loop = loop;
    t->log = log;
    t->ratio = sample_ratio;
    size_t n = strlen(endpoint);
    while (n > 0 && endpoint[n - 1] == '/')
        n--;
    /* the endpoint is the collector's base URL; a full .../v1/traces is taken as it is */
    bool full = n >= 10 && memcmp(endpoint + n - 10, "/v1/traces", 10) == 0;
    snprintf(t->url, sizeof t->url, "%.*s%s", (int)n, endpoint, full ? "" : "/v1/traces");
    th_strlcpy(t->service, service_name && *service_name ? service_name : "ttshub", sizeof t->service);
    if (getrandom(t->rng, sizeof t->rng, 0) != (ssize_t)sizeof t->rng || (t->rng[0] | t->rng[1]) == 0) {
        t->rng[0] = th_mono_us() ^ 0x9E3779B97F4A7C15ull;
        t->rng[1] = (uint64_t)(uintptr_t)t ^ th_wall_ms();
    }
    th_client_conf cc = {.max_host_connections = 2, .max_total_connections = 4, .max_connects_cache = 2};
    t->client = th_client_new(loop, &cc);
    t->pending = json_array();
    t->timer = malloc(sizeof *t->timer);
    if (t->client == NULL || t->pending == NULL || t->timer == NULL) {
        if (t->client) th_client_close(t->client, NULL, NULL);
        json_decref(t->pending);
        free(t->timer);
        free(t);
        return NULL;
    }
    uv_timer_init(loop, t->timer);
    t->timer->data = t;
    uv_timer_start(t->timer, on_tick, FLUSH_MS, FLUSH_MS);
    TH_LOG(log, TH_LOG_INFO, "tracing: OTLP/HTTP to %s, sample ratio %.3f", t->url, sample_ratio);
    return t;
}

void th_tracer_close(th_tracer *t)
{
    if (t == NULL || t->closing) return;
    t->closing = true;
    uv_timer_stop(t->timer);
    uv_close((uv_handle_t *)t->timer, on_timer_closed);
    t->timer = NULL;
    maybe_free(t);
}

uint64_t th_tracer_dropped(const th_tracer *t)
{
    return t ? t->dropped : 0;
}

/* ---- spans ---- */

th_span *th_span_start(th_tracer *t, const char *name, th_span_kind kind, const th_trace_ctx *parent)
{
    if (t == NULL || t->closing) return NULL;
    bool has_parent = parent != NULL && parent->valid;
    bool sampled = has_parent
                       ? parent->sampled
                       : t->ratio >= 1.0 || (t->ratio > 0 && (double)(rnd(t) >> 11) * 0x1.0p-53 < t->ratio);
    if (!sampled) return NULL;
    th_span *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->attrs = json_array();
    if (s->attrs == NULL) {
        free(s);
        return NULL;
    }
    s->t = t;
    s->kind = kind;
    th_strlcpy(s->name, name ? name : "span", sizeof s->name);
    if (has_parent) {
        memcpy(s->ctx.trace_id, parent->trace_id, 16);
        memcpy(s->parent, parent->span_id, 8);
        s->has_parent = true;
    } else {
        fill_random(t, s->ctx.trace_id, 16);
    }
    fill_random(t, s->ctx.span_id, 8);
    s->ctx.sampled = true;
    s->ctx.valid = true;
    s->start_ns = wall_ns();
    t->live++;
    return s;
}

void th_span_ctx(const th_span *s, th_trace_ctx *out)
{
    if (s == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = s->ctx;
}

void th_span_set_name(th_span *s, const char *name)
{
    if (s && name) th_strlcpy(s->name, name, sizeof s->name);
}

static void attr(th_span *s, const char *key, json_t *value)
{
    if (s == NULL || value == NULL || json_array_size(s->attrs) >= MAX_ATTRS) {
        json_decref(value);
        return;
    }
    json_array_append_new(s->attrs, json_pack("{s:s,s:o}", "key", key, "value", value));
}

void th_span_attr_str(th_span *s, const char *key, const char *value)
{
    if (s == NULL || value == NULL) return;
    attr(s, key, json_pack("{s:s}", "stringValue", value));
}

void th_span_attr_int(th_span *s, const char *key, int64_t value)
{
    if (s == NULL) return;
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)value); /* OTLP JSON: 64-bit integers are strings */
    attr(s, key, json_pack("{s:s}", "intValue", v));
}

void th_span_error(th_span *s, const char *message)
{
    if (s == NULL) return;
    free(s->error);
    s->error = th_strndup(message ? message : "", message ? strlen(message) : 0);
}

static void span_free(th_span *s)
{
    th_tracer *t = s->t;
    json_decref(s->attrs);
    free(s->error);
    free(s);
    t->live--;
    maybe_free(t);
}

void th_span_drop(th_span *s)
{
    if (s) span_free(s);
}

void th_span_end(th_span *s)
{
    if (s == NULL) return;
    th_tracer *t = s->t;
    if (t->closing && t->inflight != NULL) {
        span_free(s);
        return;
    }
    if (json_array_size(t->pending) >= TH_TRACE_PENDING) {
        t->dropped++;
        span_free(s);
        return;
    }
    char tid[33], sid[17], pid[17], st[24], en[24];
    th_hex(s->ctx.trace_id, 16, tid);
    th_hex(s->ctx.span_id, 8, sid);
    if (s->has_parent) th_hex(s->parent, 8, pid);
    snprintf(st, sizeof st, "%llu", (unsigned long long)s->start_ns);
    snprintf(en, sizeof en, "%llu", (unsigned long long)wall_ns());
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:O}", "traceId", tid, "spanId", sid, "name", s->name, "kind",
                  (int)s->kind, "startTimeUnixNano", st, "endTimeUnixNano", en, "attributes", s->attrs);
    if (o != NULL) {
        if (s->has_parent) json_object_set_new(o, "parentSpanId", json_string(pid));
        json_object_set_new(o, "status",
                            s->error ? json_pack("{s:i,s:s}", "code", 2, "message", s->error)
                                     : json_pack("{s:i}", "code", 0));
        json_array_append_new(t->pending, o);
    }
    bool flush_now = json_array_size(t->pending) >= TH_TRACE_BATCH && !t->closing;
    span_free(s); /* may free t when closing (flush_now is false then) */
    if (flush_now) flush(t);
}
