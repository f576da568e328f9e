/* speak: the policy chain of one synthesis, then its audio as the HTTP response.
 *
 * limits -> quota -> cache (hit / lead / join) -> synth. Each step may
 * answer asynchronously (Redis). Whatever happens, a concurrency slot is
 * released exactly once, a quota reservation is committed (success) or
 * refunded (failure) exactly once, and a cache flight is finished or failed
 * exactly once. With the limits in Redis (hub->policy), the first three
 * steps are one round trip (governance/policy.h) whose answers run through the
 * same handlers, and the release and settle go out after the response has
 * ended. */
#include "api/api.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio/wav.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/netacl.h"
#include "core/str.h"
#include "voice/library.h"

/* ---- ending ---- */

static void settle(th_api_ctx *c, bool ok)
{
    th_hub *hub = c->hub;
    if (c->resv) {
        if (ok)
            th_quota_commit(hub->quota, c->resv);
        else
            th_quota_refund(hub->quota, c->resv);
        c->resv = NULL;
    }
    if (c->slot) {
        th_limit_release(hub->limiter, c->slot);
        c->slot = NULL;
    }
    if (c->follower) {
        th_cache_unfollow(c->follower);
        c->follower = NULL;
    }
    if (ok && hub->metrics) {
        /* metrics_tenant_labels: false keeps tenant names out of /metrics (one "all" series) */
        const char *lbl[] = {!hub->cfg->metrics_tenant_labels ? "all" : c->tenant ? c->tenant : "", NULL};
        th_metrics_add(hub->metrics, TH_M_CHARS, lbl, (double)(c->chars > 0 ? c->chars : 0));
    }
}

static void free_owned(th_api_ctx *c)
{
    free(c->owned);
    c->owned = NULL;
}

/* With hub->policy, takes the slot and the reservation out of c: they are settled in one script once the
 * response has ended (settle_after). */
typedef struct held {
    th_policy *policy;
    th_limit_slot *slot;
    th_quota_resv *resv;
} held;

static held take_held(th_api_ctx *c)
{
    held h = {c->hub->policy, NULL, NULL};
    if (h.policy == NULL) return h;
    h.slot = c->slot;
    h.resv = c->resv;
    c->slot = NULL;
    c->resv = NULL;
    return h;
}

static void settle_after(const held *h, bool ok)
{
    if (h->policy != NULL) th_policy_after(h->policy, h->slot, h->resv, ok);
}

/* Ends a streamed (or never started) response. */
static void finish(th_api_ctx *c, int status, bool ok, bool cut)
{
    th_http_req *req = c->req;
    held h = take_held(c);
    settle(c, ok);
    if (c->flight) {
        if (ok)
            th_cache_flight_done(c->flight, th_fmt_mime(c->fmt), c->provider);
        else
            th_cache_flight_fail(c->flight, 502, "the synthesis failed");
        c->flight = NULL;
    }
    th_api_log(c, status);
    if (c->synth) {
        th_synth_free(c->synth);
        c->synth = NULL;
    }
    th_hub *hub = c->hub;
    if (c->counted && hub->stats.inflight) hub->stats.inflight--;
    free_owned(c);
    th_api_ctx_free(c);
    th_http_set_data(req, NULL);
    th_http_end(req, cut);
    settle_after(&h, ok);
}

/* An error before any byte went out, in the caller's shape. */
static void fail_early(th_api_ctx *c, int status, const char *type, const char *code, const char *msg)
{
    held h = take_held(c);
    settle(c, false);
    if (c->flight) {
        th_cache_flight_fail(c->flight, status, msg);
        c->flight = NULL;
    }
    if (c->synth) {
        th_synth_free(c->synth);
        c->synth = NULL;
    }
    if (c->counted && c->hub->stats.inflight) c->hub->stats.inflight--;
    free_owned(c);
    th_api_error(c, status, type, code, "%s", msg);
    settle_after(&h, false);
}

/* ---- writing audio ---- */

static void on_drain(th_http_req *req, void *ud)
{
    th_api_ctx *c = ud;
    (void)req;
    c->waiting_drain = false;
    if (c->synth) th_synth_resume(c->synth);
}

static void start_response(th_api_ctx *c, const char *provider, const char *cache, int64_t length)
{
    if (c->started) return;
    if (provider && provider != c->provider) th_strlcpy(c->provider, provider, sizeof c->provider);
    c->cache = cache;
    th_http_set_header(c->req, "X-Request-Id", c->rid);
    th_http_set_header(c->req, "X-Provider", c->provider);
    /* the voice-clone route names the engine kind too */
    if (c->route && strcmp(c->route, "/api/synthesize") == 0) {
        const th_provider_conf *pc = th_config_provider(c->hub->cfg, c->provider);
        if (pc) th_http_set_header(c->req, "X-Engine", pc->engine && *pc->engine ? pc->engine : pc->type);
        const char *node = th_synth_node(c->synth);
        if (node != NULL) th_http_set_header(c->req, "X-Node-Id", node);
    }
    th_http_set_header(c->req, "X-Cache", cache);
    th_http_set_header(c->req, "X-Audio-Format", th_fmt_name(c->fmt));
    th_http_set_header(c->req, "Cache-Control", "no-store");
    const char *ct = c->mode == TH_STREAM_SSE ? "text/event-stream" : th_fmt_mime(c->fmt);
    c->started = true;
    c->status = 200;
    th_http_start(c->req, 200, ct, c->mode == TH_STREAM_SSE ? -1 : length);
}

static int write_out(th_api_ctx *c, const void *data, size_t len)
{
    int rc = th_http_write(c->req, data, len);
    if (rc == 1 && !c->waiting_drain) {
        c->waiting_drain = true;
        th_http_on_drain(c->req, on_drain, c);
    }
    return rc == 1 ? 1 : 0;
}

static int write_sse_delta(th_api_ctx *c, const uint8_t *data, size_t len)
{
    th_buf b;
    th_buf_init(&b, 0); /* one delta of bounded audio */
    size_t b64 = 4 * ((len + 2) / 3);
    if (th_buf_reserve(&b, b64 + 64) != TH_BUF_OK) return 0;
    th_buf_append_str(&b, "data: {\"type\":\"speech.audio.delta\",\"audio\":\"");
    int n = EVP_EncodeBlock(b.data + b.len, data, (int)len);
    b.len += (size_t)n;
    th_buf_append_str(&b, "\"}\n\n");
    int w = write_out(c, b.data, b.len);
    th_buf_free(&b);
    return w;
}

/* Audio bytes to the client, as audio or as SSE deltas. Returns 1 to ask for a pause. */
static int send_audio(th_api_ctx *c, const uint8_t *data, size_t len)
{
    c->bytes += len;
    c->hub->stats.audio_bytes += len;
    if (c->mode != TH_STREAM_SSE) return write_out(c, data, len);
    int pause = 0;
    for (size_t off = 0; off < len; off += 49152) {
        size_t n = len - off < 49152 ? len - off : 49152;
        if (write_sse_delta(c, data + off, n) > 0) pause = 1;
    }
    return pause;
}

static void send_sse_done(th_api_ctx *c)
{
    if (c->mode != TH_STREAM_SSE) return;
    char ev[160];
    int n = snprintf(ev, sizeof ev,
                     "data: {\"type\":\"speech.audio.done\",\"usage\":{\"input_characters\":%lld}}\n\n",
                     (long long)c->chars);
    th_http_write(c->req, ev, (size_t)n);
}

/* ---- client gone ---- */

static void on_client_gone(th_http_req *req, void *ud)
{
    th_api_ctx *c = ud;
    (void)req;
    c->gone = true;
    c->error_code = "client_closed";
    if (c->waiting) return; /* the pending step's callback finishes the job */
    if (c->synth) {
        th_synth_cancel(c->synth);
        c->synth = NULL;
    }
    finish(c, 499, false, true);
}

/* ---- synthesis ---- */

static void sy_start(void *ud, const char *provider)
{
    th_api_ctx *c = ud;
    start_response(c, provider, c->flight ? "MISS" : (c->cache ? c->cache : "MISS"), -1);
}

static int sy_data(void *ud, const uint8_t *data, size_t len)
{
    th_api_ctx *c = ud;
    if (c->flight) th_cache_flight_data(c->flight, data, len);
    return send_audio(c, data, len);
}

static void sy_done(void *ud)
{
    th_api_ctx *c = ud;
    if (!c->started) start_response(c, th_synth_provider(c->synth), "MISS", -1);
    send_sse_done(c);
    finish(c, 200, true, false);
}

static void sy_error(void *ud, const th_perr *err, uint64_t bytes_out)
{
    th_api_ctx *c = ud;
    if (c->started || bytes_out > 0) {
        TH_LOG(c->hub->log, TH_LOG_WARN, "request %s: %s after %llu bytes: %s; response cut", c->rid,
               th_perr_kind_name(err->kind), (unsigned long long)bytes_out, err->message);
        c->error_code = "cut";
        finish(c, 200, false, true);
        return;
    }
    int status;
    const char *type, *code;
    th_api_perr_status(err, &status, &type, &code);
    if (err->retry_after_s > 0) c->retry_after_s = err->retry_after_s;
    /* what an engine or node said (its error body) goes to the log only: it may hold anything the engine
     * can reach. The client gets the type and the request id to look it up. */
    TH_LOG(c->hub->log, TH_LOG_WARN, "request %s: %s: %s", c->rid, th_perr_kind_name(err->kind),
           err->message);
    char msg[256];
    snprintf(msg, sizeof msg, "%s (%s); request %s, the details are in the hub's log",
             err->kind == TH_PERR_CLIENT       ? "the engine refused the request"
             : err->kind == TH_PERR_TIMEOUT    ? "the engine did not answer in time"
             : err->kind == TH_PERR_OVERLOADED ? "no engine can take the request now"
                                               : "the engine failed",
             th_perr_kind_name(err->kind), c->rid);
    fail_early(c, status, type, code, msg);
}

static bool provider_allowed(const char *provider, void *ud)
{
    th_api_ctx *c = ud;
    if (c->only_engine) {
        const th_provider_conf *pc = th_config_provider(c->hub->cfg, provider);
        if (pc == NULL ||
            (strcmp(pc->name, c->only_engine) != 0 && strcmp(pc->type, c->only_engine) != 0 &&
             (pc->engine == NULL || strcmp(pc->engine, c->only_engine) != 0))) /* a nodes engine */
            return false;
    }
    return c->tconf == NULL || th_auth_provider_allowed(c->tconf, provider);
}

static bool restricted(const th_api_ctx *c)
{
    return c->tconf != NULL || c->only_engine != NULL;
}

static void step_synth(th_api_ctx *c)
{
    static const th_synth_cb tmpl = {sy_start, sy_data, sy_done, sy_error, NULL};
    th_synth_cb cb = tmpl;
    cb.ud = c;
    th_perr err = {0};
    c->p.provider_allowed = restricted(c) ? provider_allowed : NULL;
    c->p.allowed_ud = c;
    th_span_ctx(c->span, &c->p.trace);
    c->synth = th_synth_start(c->hub, &c->p, &cb, &err);
    if (c->synth == NULL) {
        int status;
        const char *type, *code;
        th_api_perr_status(&err, &status, &type, &code);
        if (err.kind == TH_PERR_CLIENT) code = "invalid_voice";
        fail_early(c, status, type, code, err.message);
    }
}

/* ---- cache ---- */

static void fl_data(void *ud, const uint8_t *data, size_t len)
{
    th_api_ctx *c = ud;
    start_response(c, c->provider[0] ? c->provider : "cache", "COALESCED", -1);
    send_audio(c, data, len); /* followers are bounded by the leader's pace */
}

static void fl_done(void *ud, const char *content_type, const char *provider)
{
    th_api_ctx *c = ud;
    (void)content_type;
    c->follower = NULL; /* no unfollow after done */
    if (!c->started) start_response(c, provider, "COALESCED", -1);
    if (provider) th_strlcpy(c->provider, provider, sizeof c->provider);
    send_sse_done(c);
    finish(c, 200, true, false);
}

static void fl_error(void *ud, int status, const char *message)
{
    th_api_ctx *c = ud;
    c->follower = NULL;
    if (c->started) {
        c->error_code = "cut";
        finish(c, 200, false, true);
        return;
    }
    fail_early(c, status >= 400 ? status : 502, NULL, "upstream_error", message);
}

static void reply_hit(th_api_ctx *c, const th_cache_entry *e)
{
    if (e->provider) th_strlcpy(c->provider, e->provider, sizeof c->provider);
    uint8_t *copy = NULL;
    const uint8_t *data = e->data;
    if (c->fmt == TH_FMT_WAV && e->len >= TH_WAV_HEADER_LEN && memcmp(e->data, "RIFF", 4) == 0) {
        /* the length is known now: write exact sizes into the canonical header */
        copy = malloc(e->len);
        if (copy) {
            memcpy(copy, e->data, e->len);
            uint32_t riff = (uint32_t)(e->len - 8), dlen = (uint32_t)(e->len - TH_WAV_HEADER_LEN);
            for (int i = 0; i < 4; i++) {
                copy[4 + i] = (uint8_t)(riff >> (8 * i));
                copy[40 + i] = (uint8_t)(dlen >> (8 * i));
            }
            data = copy;
        }
    }
    start_response(c, c->provider, "HIT", c->mode == TH_STREAM_SSE ? -1 : (int64_t)e->len);
    send_audio(c, data, e->len);
    free(copy);
    send_sse_done(c);
    finish(c, 200, true, false);
}

static void cache_cb(void *ud, const th_cache_lookup *res)
{
    th_api_ctx *c = ud;
    c->waiting = false;
    if (c->gone) {
        if (res->outcome == TH_CACHE_LEAD && res->flight)
            th_cache_flight_fail(res->flight, 499, "client gone");
        if (res->outcome == TH_CACHE_JOINED && res->follower) th_cache_unfollow(res->follower);
        finish(c, 499, false, true);
        return;
    }
    switch (res->outcome) {
    case TH_CACHE_HIT:
        if (c->hub->metrics) th_metrics_add(c->hub->metrics, TH_M_CACHE, (const char *[]){"hit", NULL}, 1);
        reply_hit(c, &res->entry);
        return;
    case TH_CACHE_JOINED:
        if (c->hub->metrics)
            th_metrics_add(c->hub->metrics, TH_M_CACHE, (const char *[]){"coalesced", NULL}, 1);
        c->follower = res->follower;
        c->cache = "COALESCED";
        return; /* the follower callbacks take it from here */
    case TH_CACHE_LEAD:
    default:
        if (c->hub->metrics) th_metrics_add(c->hub->metrics, TH_M_CACHE, (const char *[]){"miss", NULL}, 1);
        c->flight = res->flight;
        step_synth(c);
        return;
    }
}

/* c->cache_key for this request (hub->cache set). */
static void make_cache_key(th_api_ctx *c)
{
    th_hub *hub = c->hub;
    /* the key names the candidate set, not the provider that will answer, so balancing keeps hits */
    size_t idx[16];
    const char *ev[16];
    size_t n = c->clone ? th_route_clone_candidates(&hub->route, c->p.tenant, c->p.voice, c->p.model, NULL,
                                                    NULL, idx, ev, 16)
                        : th_route_candidates(&hub->route, c->p.tenant, c->p.voice, c->p.model, NULL, NULL,
                                              idx, ev, 16);
    char route[512] = "";
    size_t off = 0;
    if (hub->cfg->cache.per_tenant && c->tenant && *c->tenant) {
        /* cache.per_tenant: no tenant gets, or learns from a hit's speed, another tenant's audio */
        int w = snprintf(route, sizeof route, "tenant=%s;", c->tenant);
        off = w > 0 && (size_t)w < sizeof route ? (size_t)w : 0;
        route[off] = 0;
    }
    for (size_t k = 0; k < n; k++) {
        const char *name = hub->route.provs[idx[k]]->cache_name; /* a settings change is a new name */
        /* sorted order: simple insertion by name would do; indexes are config order, already stable */
        size_t nl = strlen(name);
        if (off + nl + 2 > sizeof route) break;
        if (k) route[off++] = ',';
        memcpy(route + off, name, nl);
        off += nl;
        route[off] = '\0';
    }
    (void)ev;
    /* a library voice keys on its reference's content: deleted and made again, it never hits stale audio */
    char lv[TH_VLIB_ID_MAX + 80];
    if (c->clone) snprintf(lv, sizeof lv, "library:%s:%s", c->p.voice, th_vlib_use_ref(c->clone)->sha256);
    th_cache_key_parts kp = {
        .route = route,
        .voice = c->clone ? lv : c->p.voice,
        .format = th_fmt_name(c->fmt),
        .sample_rate = c->p.sample_rate ? c->p.sample_rate : TH_PCM_DEFAULT_RATE,
        .speed = c->p.speed,
        .prompt = c->p.prompt ? c->p.prompt : "",
        .input = c->p.text,
        .input_len = c->p.text_len,
    };
    th_cache_key(&kp, c->cache_key);
}

static th_cache_follower_cb follower_cb(th_api_ctx *c)
{
    static const th_cache_follower_cb ftmpl = {fl_data, fl_done, fl_error, NULL};
    th_cache_follower_cb fcb = ftmpl;
    fcb.ud = c;
    return fcb;
}

/* The cache lookup with c->cache_key already made. */
static void cache_lookup(th_api_ctx *c)
{
    th_hub *hub = c->hub;
    if (hub->cache == NULL || (c->p.pitch > 0 && c->p.pitch != 1.0)) { /* the key has no pitch */
        step_synth(c);
        return;
    }
    th_cache_follower_cb fcb = follower_cb(c);
    c->waiting = true;
    th_cache_get(hub->cache, c->cache_key, &fcb, cache_cb, c);
}

static void step_cache(th_api_ctx *c)
{
    if (c->hub->cache != NULL) make_cache_key(c);
    cache_lookup(c);
}

/* ---- quota ---- */

/* The quota's answer; false when the request stops here. */
static bool on_quota(th_api_ctx *c, const th_quota_result *res)
{
    c->waiting = false;
    if (res->allowed) c->resv = res->resv;
    if (c->gone) {
        finish(c, 499, false, true);
        return false;
    }
    if (!res->allowed) {
        c->retry_after_s = res->retry_after_s > 0 ? (int)res->retry_after_s : 1;
        if (c->hub->metrics)
            th_metrics_add(c->hub->metrics, TH_M_REJECTIONS, (const char *[]){"quota", NULL}, 1);
        char msg[200];
        if (strcmp(res->window ? res->window : "", "backend") == 0)
            snprintf(msg, sizeof msg, "the quota backend is unavailable");
        else
            snprintf(msg, sizeof msg, "character quota used up for this %s (%llu of %llu)",
                     res->window ? res->window : "window", (unsigned long long)res->used,
                     (unsigned long long)res->limit);
        fail_early(c, 429, "insufficient_quota", "insufficient_quota", msg);
        return false;
    }
    return true;
}

static void quota_cb(void *ud, const th_quota_result *res)
{
    th_api_ctx *c = ud;
    if (on_quota(c, res)) step_cache(c);
}

static void step_quota(th_api_ctx *c)
{
    th_hub *hub = c->hub;
    if (hub->quota == NULL || c->tconf == NULL ||
        (c->tconf->chars_per_day == 0 && c->tconf->chars_per_month == 0)) {
        step_cache(c);
        return;
    }
    c->waiting = true;
    th_quota_reserve(hub->quota, c->tconf->name, c->tconf, (uint64_t)c->chars, th_wall_ms(), quota_cb, c);
}

/* ---- limits ---- */

static void set_ratelimit_headers(th_api_ctx *c, const th_limit_result *r)
{
    if (r->limit <= 0) return;
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)r->limit);
    th_http_set_header(c->req, "X-RateLimit-Limit", v);
    snprintf(v, sizeof v, "%lld", (long long)(r->remaining > 0 ? r->remaining : 0));
    th_http_set_header(c->req, "X-RateLimit-Remaining", v);
    snprintf(v, sizeof v, "%lld", (long long)(r->reset_s > 0 ? r->reset_s : 0));
    th_http_set_header(c->req, "X-RateLimit-Reset", v);
}

/* The limits' answer; false when the request stops here. */
static bool on_limit(th_api_ctx *c, const th_limit_result *res)
{
    c->waiting = false;
    if (res->allowed) c->slot = res->slot;
    if (c->gone) {
        finish(c, 499, false, true);
        return false;
    }
    set_ratelimit_headers(c, res);
    if (!res->allowed) {
        c->retry_after_s = res->retry_after_s > 0 ? (int)res->retry_after_s : 1;
        if (c->hub->metrics)
            th_metrics_add(c->hub->metrics, TH_M_REJECTIONS,
                           (const char *[]){res->reason ? res->reason : "limit", NULL}, 1);
        int status = res->status ? res->status : 429;
        char msg[160];
        snprintf(msg, sizeof msg, "rate limit reached (%s); retry in %lld s",
                 res->reason ? res->reason : "limit", (long long)c->retry_after_s);
        fail_early(c, status, status == 429 ? "rate_limit_error" : "service_unavailable", res->reason, msg);
        return false;
    }
    return true;
}

static void limit_cb(void *ud, const th_limit_result *res)
{
    th_api_ctx *c = ud;
    if (on_limit(c, res)) step_quota(c);
}

/* ---- the chain in one Redis round trip (hub->policy) ---- */

static bool pol_limit(void *ud, const th_limit_result *res)
{
    th_api_ctx *c = ud;
    if (!on_limit(c, res)) return false;
    c->waiting = true; /* the rest of the answer follows at once, or the cache's fetch later */
    return true;
}

static bool pol_quota(void *ud, const th_quota_result *res)
{
    th_api_ctx *c = ud;
    if (!on_quota(c, res)) return false;
    c->waiting = true;
    return true;
}

static void pol_admitted(void *ud)
{
    th_api_ctx *c = ud;
    c->waiting = false;
    cache_lookup(c); /* answered from memory or a flight in progress, or no cache */
}

static void step_policy(th_api_ctx *c, const th_limit_req *lr)
{
    th_hub *hub = c->hub;
    static const th_policy_hooks hooks = {pol_limit, pol_quota, cache_cb, pol_admitted};
    if (hub->cache != NULL) make_cache_key(c);
    th_cache_follower_cb fcb = follower_cb(c);
    th_policy_req pr = {
        .limit = lr,
        .tenant = c->tconf ? c->tconf->name : "",
        .tconf = c->tconf,
        .chars = (uint64_t)(c->chars > 0 ? c->chars : 0),
        .cache_key = hub->cache != NULL ? c->cache_key : NULL,
        .fcb = &fcb,
        .now_ms = th_wall_ms(),
    };
    c->waiting = true;
    th_policy_admit(hub->policy, &pr, &hooks, c);
}

static void step_limits(th_api_ctx *c)
{
    th_hub *hub = c->hub;
    if (hub->limiter == NULL) {
        step_quota(c);
        return;
    }
    char ipkey[64]; /* rate_limit.ip_rpm counts IPv6 clients per /64 (one customer's allocation) */
    th_net_ip_key(th_http_peer(c->req), ipkey, sizeof ipkey);
    th_limit_req lr = {
        .ip = ipkey,
        .tenant = c->tconf ? c->tconf->name : "",
        .key_id = c->id.method[0] == 'k' ? c->id.subject : "",
        .tconf = c->tconf,
    };
    if (lr.key_id[0])
        for (size_t i = 0; i < c->cfg->auth.n_keys; i++)
            if (strcmp(c->cfg->auth.keys[i].id, lr.key_id) == 0) lr.key_rpm = c->cfg->auth.keys[i].rpm;
    if (hub->policy != NULL) {
        step_policy(c, &lr);
        return;
    }
    c->waiting = true;
    th_limit_check(hub->limiter, &lr, th_wall_ms(), limit_cb, c);
}

/* ---- entry ---- */

static int own_params(th_api_ctx *c, const th_synth_params *p)
{
    const char *src[] = {p->text, p->voice, p->language, p->prompt, p->model, p->generation, p->tenant};
    size_t lens[7], total = 0;
    for (int i = 0; i < 7; i++) {
        lens[i] = src[i] ? (i == 0 ? p->text_len : strlen(src[i])) : 0;
        total += src[i] ? lens[i] + 1 : 0;
    }
    c->owned = malloc(total ? total : 1);
    if (c->owned == NULL) return -1;
    char *dst[7] = {0};
    size_t off = 0;
    for (int i = 0; i < 7; i++) {
        if (src[i] == NULL) continue;
        dst[i] = c->owned + off;
        memcpy(dst[i], src[i], lens[i]);
        dst[i][lens[i]] = 0;
        off += lens[i] + 1;
    }
    c->p = *p;
    c->p.text = dst[0];
    c->p.voice = dst[1];
    c->p.language = dst[2];
    c->p.prompt = dst[3];
    c->p.model = dst[4];
    c->p.generation = dst[5];
    c->p.tenant = dst[6];
    return 0;
}

/* The request's own strings are in c->p; a library voice's use (if any) is c->clone. */
static void speak_go(th_api_ctx *c)
{
    /* an unknown voice is a 400 before any limit or quota is charged */
    th_perr err = {0};
    c->p.clone = c->clone;
    c->p.provider_allowed = restricted(c) ? provider_allowed : NULL;
    c->p.allowed_ud = c;
    if (th_synth_prepare(c->hub, &c->p, &err) != 0) {
        int status;
        const char *type, *code;
        th_api_perr_status(&err, &status, &type, &code);
        if (err.kind == TH_PERR_CLIENT) {
            if (restricted(c)) {
                /* known to some provider, but none this request may use? */
                th_synth_params any = c->p;
                any.provider_allowed = NULL;
                th_perr e2;
                if (th_synth_prepare(c->hub, &any, &e2) == 0) {
                    free_owned(c);
                    if (c->only_engine) {
                        th_api_error(c, 400, NULL, "engine_unavailable",
                                     "no provider '%s' that this request may use can speak voice '%s'",
                                     c->only_engine, c->voice ? c->voice : "");
                        return;
                    }
                    th_api_error(c, 403, "permission_error", "provider_not_allowed",
                                 "no provider that tenant %s may use offers voice '%s'",
                                 c->tconf ? c->tconf->name : "", c->voice ? c->voice : "");
                    return;
                }
            }
            code = c->clone ? "no_clone_provider" : "invalid_voice";
        }
        free_owned(c);
        th_api_error(c, status, type, code, "%s", err.message);
        return;
    }
    c->hub->stats.inflight++;
    c->counted = true;
    th_http_on_close(c->req, on_client_gone, c);
    step_limits(c);
}

static void clone_ready(void *ud, th_vlib_use *u, th_vlib_rc rc)
{
    th_api_ctx *c = ud;
    c->waiting = false;
    if (th_http_aborted(c->req)) {
        th_vlib_use_release(u);
        c->error_code = "client_closed";
        finish(c, 499, false, true);
        return;
    }
    if (u == NULL) {
        free_owned(c);
        if (rc == TH_VLIB_MISSING)
            th_api_error(c, 404, NULL, "voice_not_found", "voice '%s' was deleted", c->voice ? c->voice : "");
        else
            th_api_error(c, 500, NULL, "voice_store_error", "the voice's reference cannot be read");
        return;
    }
    c->clone = u;
    c->library_voice = true;
    speak_go(c);
}

/* A library voice the caller may use, or NULL. */
static const th_vlib_meta *library_voice(th_api_ctx *c, const char *voice)
{
    if (c->hub->vlib == NULL || voice == NULL) return NULL;
    const th_vlib_meta *m = th_vlib_find(c->hub->vlib, voice);
    if (m == NULL || !th_vlib_visible(m, c->id.tenant, th_auth_is_admin(&c->id))) return NULL;
    return m;
}

void th_api_speak(th_api_ctx *c, const th_synth_params *p)
{
    c->fmt = p->fmt;
    if (c->voice == NULL && p->voice) c->voice = th_strndup(p->voice, strlen(p->voice));
    /* a library id is looked up before the configured voices; a tenant's own voices need no pattern */
    const th_vlib_meta *lib = c->clone ? NULL : library_voice(c, p->voice);
    if (lib == NULL && c->clone == NULL && c->tconf && !th_auth_voice_allowed(c->tconf, p->voice)) {
        th_api_error(c, 403, "permission_error", "voice_not_allowed",
                     "voice '%s' is not allowed for tenant %s", p->voice, c->tconf->name);
        return;
    }
    th_synth_params q = *p;
    q.tenant = c->tconf ? c->tconf->name : NULL;
    if (own_params(c, &q) != 0) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    if (lib != NULL) {
        c->waiting = true;
        th_vlib_acquire(c->hub->vlib, lib->id, clone_ready, c); /* may answer at once */
        return;
    }
    speak_go(c);
}

/* ---- auth ---- */

int th_api_auth(th_api_ctx *c, bool admin)
{
    th_hub *hub = c->hub;
    memset(&c->id, 0, sizeof c->id);
    c->tconf = NULL;
    if (admin && hub->safe.protected_mode && !th_api_cluster_token_ok(c)) {
        th_api_protected_error(c); /* auth.mode none on a public listener: admin routes stay closed */
        return -1;
    }
    if (hub->auth == NULL) return 0;
    char err[200] = "";
    th_auth_rc rc =
        th_auth_check(hub->auth, th_http_header(c->req, "Authorization"), th_http_header(c->req, "X-API-Key"),
                      (int64_t)(th_wall_ms() / 1000), &c->id, err, sizeof err);
    if (rc != TH_AUTH_OK) {
        th_http_set_header(c->req, "WWW-Authenticate", "Bearer");
        if (hub->metrics) th_metrics_add(hub->metrics, TH_M_REJECTIONS, (const char *[]){"auth", NULL}, 1);
        th_api_error(c, 401, "authentication_error",
                     rc == TH_AUTH_MISSING ? "missing_credentials" : "invalid_credentials", "%s",
                     err[0] ? err : "invalid credentials");
        return -1;
    }
    if (c->id.tenant[0]) {
        c->tenant = th_strndup(c->id.tenant, strlen(c->id.tenant));
        c->tconf = th_config_tenant(c->cfg, c->id.tenant);
    }
    if (admin && !th_auth_is_admin(&c->id) && strcmp(c->cfg->auth.mode, "none") != 0) {
        th_api_error(c, 403, "permission_error", "admin_required", "this route needs the admin role");
        return -1;
    }
    return 0;
}
