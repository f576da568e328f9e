/* worker: `ttshub worker`, see worker.h.
 *
 * The gateway conversation is one state machine on the hub's loop, with one request in flight at a time
 * and one timer: REGISTER (retry with backoff) -> RUNNING (heartbeat every interval; 404 -> REGISTER) ->
 * STOPPING (DELETE) -> DONE. Every gateway call has a 5 s limit (the DELETE 2 s). */
#include "worker/worker.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api/api.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "http/body.h"
#include "http/client.h"
#include "hub/hub.h"
#include "serve/serve.h"
#include "voice/library.h"
#include "worker/extract.h"
#include "worker/refs.h"

#define CALL_TIMEOUT_MS 5000
#define DELETE_TIMEOUT_MS 2000
#define BACKOFF_MIN_MS 500
#define BACKOFF_MAX_MS 10000
#define REPLY_MAX 8192
#define WARN_EVERY_MS 30000
#define EXTRACT_MAX_BUSY 2 /* /extract_voice uploads decoded at once; more get 503 */
#define REF_AUDIO_MAX                                                                                        \
    (16u * 1024 * 1024) /* a reference WAV sent to the node (a minute at 48 kHz is 5.5 MiB) */

typedef enum { W_IDLE, W_REGISTER, W_RUNNING, W_STOPPING, W_DONE } wstate;
typedef enum { CALL_REGISTER, CALL_HEARTBEAT, CALL_DELETE } wcall;
/* which gateway: ttshub's registry, or the seed-2 gateway (voice-clone-tts), told by --gateway-protocol or
 * found out from the first registration's answer (auto) */
typedef enum { PROTO_AUTO, PROTO_TTSHUB, PROTO_SEED2 } wproto;

typedef struct worker {
    th_hub *hub;
    th_client *client;
    uv_timer_t *timer; /* retry / heartbeat; freed in its close callback */
    th_client_req *req;
    wcall call;
    wstate state;
    char gateway[512], advertise[512], engine[33], engine_url[512], key_env[64], data_dir[512];
    char ref_dir[512], ref_dir_engine[512]; /* the engine's shared folder for library references */
    int max_refs;                           /* references kept (oldest dropped first) */
    char node_id[TH_NODE_ID_MAX + 1];
    char listen[128], log_level[16];
    char token_env[64];
    char token_hash[65]; /* sha256 hex of the cluster token; "" with --no-token */
    bool no_token;
    char status[16]; /* online | standby | stopping */
    int capacity;
    json_t *voices, *languages; /* arrays, or NULL */
    uint64_t backoff_ms, heartbeat_ms;
    uint64_t last_warn;
    th_buf reply;
    /* cpu_percent between heartbeats */
    uint64_t cpu_us, cpu_at_us;
    bool closing; /* the hub is done with us: free once the last call ends */
    bool ever_registered;
    wproto proto;         /* as given; PROTO_AUTO until the gateway's answers tell */
    bool seed2;           /* speaking the seed-2 protocol now */
    bool model_loaded;    /* load_model/activate vs unload_model/standby */
    bool reregister;      /* register again after the call in flight (seed-2: a model was loaded) */
    char engine_type[33]; /* what the node registers as (--engine-type; default: --engine) */
    char adv_host[256];   /* host and port of --advertise, sent beside url (seed-2 NodeInfo) */
    int adv_port;
    double heartbeat_default_s; /* when the gateway's answer names no interval (seed-2 never does) */
    int extracting;             /* /extract_voice uploads under way */
} worker;

/* ---- small helpers ---- */

static const char *token(const worker *w)
{
    const char *t = getenv(w->token_env);
    return t && *t ? t : NULL;
}

/* The node routes need `Authorization: Bearer <cluster token>` (compared by hash, in constant time);
 * 0 when the caller has it, else the 401 was sent. */
static int node_auth(th_api_ctx *c, const worker *w)
{
    c->shape = TH_SHAPE_CLONE;
    if (w->no_token) return 0;
    const char *h = th_http_header(c->req, "Authorization");
    if (h != NULL && strlen(h) > 7 && th_strn_ieq(h, 7, "Bearer ")) {
        const char *t = h + 7;
        while (*t == ' ')
            t++;
        char got[65];
        th_auth_hash_key(t, strlen(t), got);
        if (CRYPTO_memcmp(got, w->token_hash, 64) == 0) return 0;
    }
    th_http_set_header(c->req, "WWW-Authenticate", "Bearer");
    th_api_error(c, 401, "authentication_error", h ? "invalid_credentials" : "missing_credentials",
                 "this node's routes need the cluster token as a Bearer token");
    return -1;
}

static uint64_t cpu_used_us(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
           (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
}

/* resident memory as a percentage of the machine's, from /proc (0 when unknown) */
static double memory_percent(void)
{
    unsigned long long pages = 0, total_kb = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long long size;
        if (fscanf(f, "%llu %llu", &size, &pages) != 2) pages = 0;
        fclose(f);
    }
    f = fopen("/proc/meminfo", "r");
    if (f) {
        if (fscanf(f, "MemTotal: %llu kB", &total_kb) != 1) total_kb = 0;
        fclose(f);
    }
    long ps = sysconf(_SC_PAGESIZE);
    if (total_kb == 0 || ps <= 0) return 0;
    return (double)pages * (double)ps / 1024.0 / (double)total_kb * 100.0;
}

static size_t queued(const th_hub *hub)
{
    size_t q = 0;
    for (size_t i = 0; hub->route.provs && i < hub->n_providers; i++)
        q += (size_t)hub->route.provs[i]->waiting;
    return q;
}

/* true at most once per WARN_EVERY_MS: repeated failures are logged, not every one of them */
static bool may_warn(worker *w)
{
    uint64_t now = th_mono_ms();
    if (w->last_warn != 0 && now - w->last_warn < WARN_EVERY_MS) return false;
    w->last_warn = now;
    return true;
}

/* The status as the gateway's vocabulary has it: ours is online | standby | stopping; seed-2's WorkerStatus
 * is ready | standby | offline (also loading, busy, error). */
static const char *wire_status(const worker *w)
{
    if (!w->seed2) return w->status;
    return strcmp(w->status, "online") == 0    ? "ready"
           : strcmp(w->status, "standby") == 0 ? "standby"
                                               : "offline";
}

/* The engine_type the node registers as: --engine-type, else the engine kind (seed-2 spells gpt-sovits
 * with a hyphen, and knows only xtts, openvoice and gpt-sovits). */
static const char *wire_engine(const worker *w)
{
    if (w->engine_type[0]) return w->engine_type;
    if (w->seed2 && strcmp(w->engine, "gpt_sovits") == 0) return "gpt-sovits";
    return w->engine;
}

/* ---- the gateway conversation ---- */

static void finish(worker *w);
static void tick(uv_timer_t *t);
static void send_register(worker *w);

static void arm(worker *w, uint64_t ms)
{
    if (w->timer) uv_timer_start(w->timer, tick, ms, 0);
}

static int on_head(void *ud, int status, const th_client_header *h, size_t n)
{
    (void)ud, (void)status, (void)h, (void)n;
    return 0;
}

static int on_body(void *ud, const uint8_t *d, size_t len)
{
    worker *w = ud;
    if (th_buf_append(&w->reply, d, len) != TH_BUF_OK) return -1;
    return 0;
}

static void retry_register(worker *w)
{
    w->state = W_REGISTER;
    arm(w, w->backoff_ms);
    w->backoff_ms = w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
}

static void registered(worker *w, const json_t *reply)
{
    const char *id = json_string_value(json_object_get(reply, "node_id"));
    json_t *hb = json_object_get(reply, "heartbeat_interval");
    if (id == NULL || *id == 0 || strlen(id) > TH_NODE_ID_MAX ||
        !json_is_true(json_object_get(reply, "success"))) {
        if (may_warn(w))
            TH_LOG(w->hub->log, TH_LOG_WARN,
                   "worker: the gateway's answer to register is not {success, node_id}");
        retry_register(w);
        return;
    }
    bool again = w->ever_registered;
    w->ever_registered = true;
    th_strlcpy(w->node_id, id, sizeof w->node_id);
    double s = json_is_number(hb) ? json_number_value(hb) : w->heartbeat_default_s;
    if (!(s >= 0.1)) s = 0.1;
    if (s > 3600) s = 3600;
    w->heartbeat_ms = (uint64_t)(s * 1000.0);
    w->backoff_ms = BACKOFF_MIN_MS;
    w->state = W_RUNNING;
    w->last_warn = 0;
    TH_LOG(w->hub->log, TH_LOG_INFO, "worker: %s as %s (%s, %s) with %s %s(heartbeat every %llu ms)",
           again ? "registered again" : "registered", w->node_id, wire_engine(w), wire_status(w), w->gateway,
           w->seed2 ? "[seed-2] " : "", (unsigned long long)w->heartbeat_ms);
    if (w->seed2 && !again && th_str_startswith(w->advertise, "https://"))
        TH_LOG(w->hub->log, TH_LOG_WARN,
               "worker: the seed-2 gateway calls nodes at http://host:port only; this node advertises %s",
               w->advertise);
    if (w->reregister) { /* the model was loaded while the registration was under way */
        send_register(w);
        return;
    }
    arm(w, w->heartbeat_ms);
}

static void on_done(void *ud, th_client_result res, int status, const char *detail)
{
    worker *w = ud;
    w->req = NULL;
    wcall call = w->call;
    json_t *reply = NULL;
    if (res == TH_CLIENT_OK && w->reply.len > 0)
        reply = json_loadb((const char *)w->reply.data, w->reply.len, 0, NULL);
    th_buf_reset(&w->reply);
    char st[16];
    snprintf(st, sizeof st, "HTTP %d", status);
    const char *why = res != TH_CLIENT_OK ? th_client_result_name(res) : st;
    if (call == CALL_DELETE || w->state == W_STOPPING) {
        if (call == CALL_DELETE && res == TH_CLIENT_OK && status < 300)
            TH_LOG(w->hub->log, TH_LOG_INFO, "worker: unregistered %s", w->node_id);
        else if (call == CALL_DELETE)
            TH_LOG(w->hub->log, TH_LOG_WARN, "worker: could not unregister %s: %s", w->node_id, why);
        w->state = W_DONE;
        json_decref(reply);
        if (w->closing) finish(w);
        return;
    }
    /* FastAPI's validation answer: 422 {"detail":[{loc, msg, ...}]}; ttshub never answers 422 */
    json_t *fdetail = json_object_get(reply, "detail");
    bool fastapi_422 = res == TH_CLIENT_OK && status == 422 && json_is_array(fdetail);
    if (call == CALL_REGISTER) {
        if (res == TH_CLIENT_OK && status >= 200 && status < 300) {
            registered(w, reply);
        } else if (fastapi_422 && w->proto == PROTO_AUTO && !w->seed2) {
            /* a seed-2 gateway refuses ttshub's status words (and engine kinds it does not know) */
            w->seed2 = true;
            TH_LOG(w->hub->log, TH_LOG_INFO,
                   "worker: %s answers like the seed-2 gateway (voice-clone-tts): registering in its shapes",
                   w->gateway);
            send_register(w);
        } else {
            const char *m = json_string_value(json_object_get(reply, "message"));
            char d[400] = "";
            if (fastapi_422) { /* the first complaint: field and message */
                json_t *e = json_array_get(fdetail, 0), *loc = json_object_get(e, "loc");
                const char *msg = json_string_value(json_object_get(e, "msg"));
                const char *field = json_string_value(json_array_get(loc, json_array_size(loc) - 1));
                snprintf(d, sizeof d, "%.60s: %.200s%s", field ? field : "?", msg ? msg : "?",
                         field && strcmp(field, "engine_type") == 0
                             ? " (a seed-2 gateway knows xtts, openvoice and gpt-sovits: choose one with "
                               "--engine-type)"
                             : "");
                m = d;
            }
            if (may_warn(w))
                TH_LOG(w->hub->log, TH_LOG_WARN, "worker: cannot register with %s: %s%s%s", w->gateway, why,
                       m ? ": " : "", m ? m : "");
            retry_register(w);
        }
    } else { /* heartbeat */
        /* 404 (ttshub) or 200 {"success":false} (the seed-2 gateway forgot the node, e.g. it restarted) */
        bool unknown = res == TH_CLIENT_OK &&
                       (status == 404 ||
                        (status >= 200 && status < 300 && json_is_false(json_object_get(reply, "success"))));
        if (unknown || w->reregister) {
            if (unknown)
                TH_LOG(w->hub->log, TH_LOG_INFO, "worker: the gateway does not know %s: registering again",
                       w->node_id);
            w->state = W_REGISTER;
            send_register(w);
        } else {
            if ((res != TH_CLIENT_OK || status >= 300) && may_warn(w))
                TH_LOG(w->hub->log, TH_LOG_WARN, "worker: heartbeat to %s failed: %s", w->gateway, why);
            arm(w, w->heartbeat_ms);
        }
    }
    json_decref(reply);
}

static void call(worker *w, wcall what, const char *method, const char *path, const char *body,
                 uint64_t timeout)
{
    char url[1024], auth[300];
    snprintf(url, sizeof url, "%s%s", w->gateway, path);
    const char *hdrs[3] = {"Content-Type: application/json", NULL, NULL};
    const char *t = token(w);
    if (t) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", t);
        hdrs[1] = auth;
    }
    th_client_opts o = {.method = method,
                        .url = url,
                        .headers = hdrs,
                        .body = (const uint8_t *)body,
                        .body_len = body ? strlen(body) : 0,
                        .connect_timeout_ms = timeout,
                        .total_timeout_ms = timeout,
                        .max_body = REPLY_MAX};
    th_client_cb cb = {on_head, on_body, on_done, w};
    th_buf_reset(&w->reply);
    w->call = what;
    w->req = th_client_start(w->client, &o, &cb);
    if (w->req == NULL) { /* out of memory or a bad URL: try again later */
        if (may_warn(w)) TH_LOG(w->hub->log, TH_LOG_WARN, "worker: cannot start a request to %s", w->gateway);
        if (what == CALL_DELETE) {
            w->state = W_DONE;
        } else if (what == CALL_REGISTER) {
            retry_register(w);
        } else {
            arm(w, w->heartbeat_ms);
        }
    }
}

static void send_register(worker *w)
{
    w->reregister = false;
    if (w->seed2 && !w->no_token) { /* it would send no token to /synthesize: every call would get 401 */
        if (may_warn(w))
            TH_LOG(w->hub->log, TH_LOG_ERROR,
                   "worker: %s is a seed-2 gateway, which sends no credential to its nodes: not registering. "
                   "Run this node with --no-token, on a network only the gateway reaches",
                   w->gateway);
        retry_register(w);
        return;
    }
    /* NodeInfo (seed-2) and ttshub's registration in one body: url and host+port */
    json_t *b = json_pack("{s:s,s:s,s:s,s:i,s:i,s:b,s:s}", "engine_type", wire_engine(w), "url", w->advertise,
                          "host", w->adv_host, "port", w->adv_port, "capacity", w->capacity, "model_loaded",
                          w->model_loaded, "status", wire_status(w));
    if (b && w->node_id[0]) json_object_set_new(b, "node_id", json_string(w->node_id));
    if (b && w->voices) json_object_set(b, "voices", w->voices);
    if (b && w->languages) json_object_set(b, "languages", w->languages);
    char *text = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    if (text == NULL) {
        retry_register(w);
        return;
    }
    call(w, CALL_REGISTER, "POST", "/api/nodes/register", text, CALL_TIMEOUT_MS);
    free(text);
}

static void send_heartbeat(worker *w)
{
    uint64_t now = th_mono_us(), cpu = cpu_used_us();
    double pct = now > w->cpu_at_us && w->cpu_at_us
                     ? (double)(cpu - w->cpu_us) * 100.0 / (double)(now - w->cpu_at_us)
                     : 0.0;
    w->cpu_us = cpu;
    w->cpu_at_us = now;
    /* NodeMetrics (seed-2 needs node_id in the body) and ttshub's heartbeat in one body */
    json_t *b =
        json_pack("{s:s,s:s,s:b,s:I,s:I,s:f,s:f,s:I,s:I}", "node_id", w->node_id, "status", wire_status(w),
                  "model_loaded", w->model_loaded, "current_concurrent", (json_int_t)w->hub->stats.inflight,
                  "queue_size", (json_int_t)queued(w->hub), "cpu_percent", pct, "memory_percent",
                  memory_percent(), "request_count", (json_int_t)th_hub_requests(w->hub), "error_count",
                  (json_int_t)th_hub_errors(w->hub));
    char *text = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    char path[TH_NODE_ID_MAX + 32];
    snprintf(path, sizeof path, "/api/nodes/%s/heartbeat", w->node_id);
    if (text == NULL) {
        arm(w, w->heartbeat_ms);
        return;
    }
    call(w, CALL_HEARTBEAT, "POST", path, text, CALL_TIMEOUT_MS);
    free(text);
}

static void tick(uv_timer_t *t)
{
    worker *w = t->data;
    if (w->req != NULL) return;
    if (w->state == W_REGISTER)
        send_register(w);
    else if (w->state == W_RUNNING)
        send_heartbeat(w);
}

/* ---- node routes ---- */

static void node_error(th_api_ctx *c, int status, const char *code, const char *msg)
{
    c->shape = TH_SHAPE_CLONE;
    th_api_error(c, status, NULL, code, "%s", msg);
}

/* ---- library references (worker/refs.h) ---- */

/* A synthesis waiting for its reference to be stored. */
typedef struct ref_job {
    th_api_ctx *c;
    char id[65];
    char *text, *lang;
    th_fmt fmt;
    double speed;
    size_t chars;
} ref_job;

static void ref_job_free(ref_job *rj)
{
    free(rj->text);
    free(rj->lang);
    free(rj);
}

static void speak_ref(th_api_ctx *c, const char *id, const char *text, size_t chars, const char *lang,
                      th_fmt fmt, double speed)
{
    th_synth_params p = {
        .text = text,
        .text_len = strlen(text),
        .chars = chars,
        .voice = id, /* a library voice of the node's own store */
        .language = lang,
        .generation = c->rid,
        .fmt = fmt,
        .speed = speed,
    };
    th_api_speak(c, &p);
}

static void ref_dropped(void *ud, th_vlib_rc rc, const char *err)
{
    (void)ud, (void)rc, (void)err;
}

/* Keeps the store under max_refs: drops the oldest references. */
static void refs_trim(worker *w)
{
    th_vlib *l = w->hub->vlib;
    size_t n = th_vlib_count(l);
    if (n < (size_t)w->max_refs) return;
    const th_vlib_meta **all = calloc(n + 1, sizeof *all);
    if (all == NULL) return;
    size_t got = th_vlib_list(l, "", true, all, n + 1);
    size_t keep = 0; /* voices made by /extract_voice are the client's: only references are dropped */
    for (size_t i = 0; i < got; i++)
        if (th_wextract_is_content_id(all[i]->id)) all[keep++] = all[i];
    got = keep;
    while (got >= (size_t)w->max_refs) {
        size_t oldest = 0;
        for (size_t i = 1; i < got; i++)
            if (all[i]->created_ms < all[oldest]->created_ms) oldest = i;
        TH_LOG(w->hub->log, TH_LOG_INFO, "worker: dropping reference %s (the store holds %d)",
               all[oldest]->id, w->max_refs);
        th_vlib_delete(l, all[oldest]->id, ref_dropped, NULL);
        all[oldest] = all[--got];
    }
    free(all);
}

static void ref_stored(void *ud, th_vlib_rc rc, const char *err)
{
    ref_job *rj = ud;
    th_api_ctx *c = rj->c;
    if (th_http_aborted(c->req)) { /* the gateway went away meanwhile: the reference stays stored */
        node_error(c, 499, "client_closed", "the client went away");
    } else if (rc != TH_VLIB_OK && rc != TH_VLIB_TAKEN) {
        TH_LOG(c->hub->log, TH_LOG_WARN, "worker: cannot store reference %s: %s", rj->id, err ? err : "");
        c->retry_after_s = 1;
        node_error(c, 503, "reference_store_error", "the node cannot store the reference");
    } else {
        speak_ref(c, rj->id, rj->text, rj->chars, rj->lang, rj->fmt, rj->speed);
    }
    ref_job_free(rj);
}

/* /synthesize with reference_sha256: speak from the store, store what came, or ask for the bytes. */
/* A synthesis with a reference voice: what to say, and the reference. */
typedef struct ref_req {
    const char *text, *lang;
    size_t chars;
    th_fmt fmt;
    double speed;
    const char *sha, *rtext, *rlang, *voice;
    char id[65];
} ref_req;

/* The reference fields of j into q (and its id); false when an error was sent. */
static bool read_ref_fields(th_api_ctx *c, json_t *j, ref_req *q)
{
    json_t *sha = json_object_get(j, "reference_sha256"), *rt = json_object_get(j, "reference_text");
    json_t *rl = json_object_get(j, "reference_language"), *audio = json_object_get(j, "reference_audio");
    q->sha = json_string_value(sha);
    if (!json_is_string(sha) || !th_sha256_hex_ok(q->sha)) {
        node_error(c, 400, "invalid_request", "'reference_sha256' must be 64 lowercase hex digits");
        return false;
    }
    if ((rt && !json_is_null(rt) && (!json_is_string(rt) || json_string_length(rt) > TH_VLIB_TEXT_MAX)) ||
        (rl && !json_is_null(rl) && (!json_is_string(rl) || json_string_length(rl) > 64)) ||
        (audio && !json_is_null(audio) && !json_is_string(audio))) {
        node_error(c, 400, "invalid_request",
                   "'reference_text', 'reference_language' and 'reference_audio' must be strings");
        return false;
    }
    q->rtext = json_is_string(rt) ? json_string_value(rt) : "";
    q->rlang = json_is_string(rl) ? json_string_value(rl) : "";
    q->voice = json_string_value(json_object_get(j, "voice"));
    if (th_wref_id(q->sha, q->rtext, q->rlang, q->id) != 0) {
        node_error(c, 500, "internal_error", "out of memory");
        return false;
    }
    return true;
}

/* The reference audio: base64 of a WAV whose sha256 is q->sha. 0, or -1 when an error was sent. */
static int read_ref_audio(th_api_ctx *c, const json_t *audio, const ref_req *q, uint8_t **wav, size_t *wl,
                          int *rate, double *secs)
{
    char err[160], got[65];
    if (th_wref_base64(json_string_value(audio), json_string_length(audio), REF_AUDIO_MAX, wav, wl) != 0) {
        node_error(c, 400, "invalid_request", "'reference_audio' is not base64 of at most 16 MiB");
        return -1;
    }
    th_vlib_sha256_hex(*wav, *wl, got);
    if (strcmp(got, q->sha) != 0) {
        free(*wav);
        node_error(c, 400, "invalid_request", "'reference_audio' does not match 'reference_sha256'");
        return -1;
    }
    if (th_wref_check_wav(*wav, *wl, rate, secs, err, sizeof err) != 0) {
        free(*wav);
        node_error(c, 400, "invalid_request", err);
        return -1;
    }
    return 0;
}

/* The job that speaks once the reference is stored, and the reference's record. NULL on ENOMEM. */
static ref_job *new_ref_job(th_api_ctx *c, const worker *w, const ref_req *q, th_vlib_meta *meta)
{
    memset(meta, 0, sizeof *meta);
    th_strlcpy(meta->id, q->id, sizeof meta->id);
    th_strlcpy(meta->sha256, q->sha, sizeof meta->sha256);
    ref_job *rj = calloc(1, sizeof *rj);
    bool ok = rj != NULL && th_vlib_meta_set(&meta->name, q->voice ? q->voice : q->id) == 0 &&
              th_vlib_meta_set(&meta->tenant, "") == 0 && th_vlib_meta_set(&meta->engine, w->engine) == 0 &&
              th_vlib_meta_set(&meta->text, q->rtext) == 0 &&
              th_vlib_meta_set(&meta->language, q->rlang) == 0;
    if (ok) {
        rj->c = c;
        th_strlcpy(rj->id, q->id, sizeof rj->id);
        rj->text = th_strndup(q->text, strlen(q->text));
        rj->lang = q->lang != NULL ? th_strndup(q->lang, strlen(q->lang)) : NULL;
        ok = rj->text != NULL && (q->lang == NULL || rj->lang != NULL);
    }
    if (!ok) {
        if (rj) ref_job_free(rj);
        th_vlib_meta_free(meta);
        return NULL;
    }
    rj->fmt = q->fmt;
    rj->speed = q->speed;
    rj->chars = q->chars;
    return rj;
}

/* Stores the reference (wav is taken), then speaks with it (ref_stored). */
static void store_ref(th_api_ctx *c, worker *w, th_vlib *l, const ref_req *q, uint8_t *wav, size_t wl,
                      int rate, double secs)
{
    refs_trim(w);
    th_vlib_rc rc = th_vlib_reserve(l, q->id, "", (size_t)w->max_refs + 8);
    if (rc != TH_VLIB_OK) { /* being stored by a concurrent request, or the store is full for a moment */
        free(wav);
        c->retry_after_s = 1;
        node_error(c, 503, "reference_busy", "the reference is being stored; try again");
        return;
    }
    th_vlib_meta meta;
    ref_job *rj = new_ref_job(c, w, q, &meta);
    if (rj == NULL) {
        free(wav);
        th_vlib_unreserve(l, q->id);
        node_error(c, 500, "internal_error", "out of memory");
        return;
    }
    meta.duration_s = secs;
    meta.rate = rate;
    meta.wav_len = wl;
    meta.created_ms = meta.updated_ms = (int64_t)th_wall_ms();
    TH_LOG(c->hub->log, TH_LOG_INFO, "worker: storing reference %s (%.2f s) for voice %s", q->id, secs,
           meta.name);
    th_vlib_create(l, &meta, wav, wl, (size_t)w->max_refs + 8, ref_stored, rj); /* wav is stolen */
    th_vlib_meta_free(&meta);
}

static void synthesize_ref(th_api_ctx *c, worker *w, json_t *j, const char *text, size_t chars,
                           const char *lang, th_fmt fmt, double speed)
{
    ref_req q = {.text = text, .lang = lang, .chars = chars, .fmt = fmt, .speed = speed};
    if (!read_ref_fields(c, j, &q)) return;
    th_vlib *l = c->hub->vlib;
    const th_vlib_meta *m = l != NULL ? th_vlib_find(l, q.id) : NULL;
    if (m != NULL && strcmp(m->sha256, q.sha) == 0) { /* held already */
        speak_ref(c, q.id, text, chars, lang, fmt, speed);
        return;
    }
    json_t *audio = json_object_get(j, "reference_audio");
    if (!json_is_string(audio)) {
        node_error(c, 409, "reference_missing",
                   "the node does not hold this reference: send reference_audio");
        return;
    }
    if (l == NULL) {
        node_error(c, 503, "reference_store_error", "the node has no reference store");
        return;
    }
    uint8_t *wav = NULL;
    size_t wl = 0;
    int rate = 0;
    double secs = 0;
    if (read_ref_audio(c, audio, &q, &wav, &wl, &rate, &secs) != 0) return;
    store_ref(c, w, l, &q, wav, wl, rate, secs);
}

static void h_synthesize(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    worker *w = hub->ext->ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/synthesize";
    c->shape = TH_SHAPE_CLONE;
    if (node_auth(c, w) != 0) return;
    if (strcmp(w->status, "online") != 0) {
        char m[80];
        snprintf(m, sizeof m, "the node is %s%s", w->status, w->model_loaded ? "" : " (Model not loaded)");
        c->retry_after_s = 1;
        node_error(c, 503, "unavailable", m);
        return;
    }
    json_t *j = th_api_body_object(c, false, "invalid_request");
    if (j == NULL) return;
    /* ttshub's fields {voice, format} and seed-2's {voice_id, output_format, engine, pitch} */
    json_t *text = json_object_get(j, "text"), *voice = json_object_get(j, "voice");
    json_t *format = json_object_get(j, "format"), *speed = json_object_get(j, "speed");
    json_t *lang = json_object_get(j, "language"), *pitch = json_object_get(j, "pitch");
    json_t *engine = json_object_get(j, "engine");
    if (voice == NULL || json_is_null(voice)) voice = json_object_get(j, "voice_id");
    if (format == NULL || json_is_null(format)) format = json_object_get(j, "output_format");
    size_t chars = 0;
    th_fmt fmt = TH_FMT_WAV;
    double sp = 1.0, pv = 0;
    if (!json_is_string(text) || json_string_length(text) == 0) {
        node_error(c, 400, "invalid_request", "'text' is required");
    } else if (voice && !json_is_null(voice) && (!json_is_string(voice) || json_string_length(voice) > 256)) {
        node_error(c, 400, "invalid_request", "'voice' ('voice_id') must be a string of at most 256 bytes");
    } else if (format && !json_is_null(format) && !json_is_string(format)) {
        node_error(c, 400, "invalid_request", "'format' ('output_format') must be a string");
    } else if (engine && !json_is_null(engine) && !json_is_string(engine)) {
        node_error(c, 400, "invalid_request", "'engine' must be a string");
    } else if (pitch && !json_is_null(pitch) &&
               (!json_is_number(pitch) || json_number_value(pitch) < 0.5 || json_number_value(pitch) > 2.0)) {
        node_error(c, 400, "invalid_request",
                   "'pitch' must be a number from 0.5 to 2.0 (1 = the voice's own)");
    } else if (speed && !json_is_null(speed) &&
               (!json_is_number(speed) || json_number_value(speed) < 0.25 ||
                json_number_value(speed) > 4.0)) {
        node_error(c, 400, "invalid_request", "'speed' must be a number from 0.25 to 4.0");
    } else if (lang && !json_is_null(lang) && !json_is_string(lang)) {
        node_error(c, 400, "invalid_request", "'language' must be a string");
    } else if (th_api_check_input(c, "text", json_string_value(text), json_string_length(text), &chars) ==
                   0 &&
               th_api_check_format(c, "format", json_is_string(format) ? json_string_value(format) : "wav",
                                   &fmt) == 0) {
        if (json_is_number(speed)) sp = json_number_value(speed);
        if (json_is_number(pitch)) pv = json_number_value(pitch);
        json_t *rsha = json_object_get(j, "reference_sha256");
        if (rsha != NULL && !json_is_null(rsha)) {
            th_http_set_header(req, "X-Node-Id", w->node_id[0] ? w->node_id : "unregistered");
            th_http_set_header(req, "X-Engine", w->engine);
            synthesize_ref(c, w, j, json_string_value(text), chars, json_string_value(lang), fmt, sp);
            json_decref(j);
            return;
        }
        const char *v =
            json_is_string(voice) && json_string_length(voice) > 0 ? json_string_value(voice) : "alloy";
        th_http_set_header(req, "X-Node-Id", w->node_id[0] ? w->node_id : "unregistered");
        th_http_set_header(req, "X-Engine", w->engine);
        th_synth_params p = {
            .text = json_string_value(text),
            .text_len = json_string_length(text),
            .chars = chars,
            .voice = v,
            .language = json_string_value(lang),
            .generation = c->rid,
            .fmt = fmt,
            .speed = sp,
            .pitch = pv,
        };
        th_api_speak(c, &p);
    }
    json_decref(j);
}

static json_t *info_doc(const worker *w)
{
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:i,s:s,s:b,s:I,s:I,s:s}", "node_id", w->node_id, "engine_type", w->engine,
                  "url", w->advertise, "capacity", w->capacity, "status", wire_status(w), "model_loaded",
                  w->model_loaded, "current_concurrent", (json_int_t)w->hub->stats.inflight, "queue_size",
                  (json_int_t)queued(w->hub), "version", TH_VERSION);
    if (o && w->voices) json_object_set(o, "voices", w->voices);
    if (o && w->languages) json_object_set(o, "languages", w->languages);
    if (o) json_object_set_new(o, "gateway", json_string(w->gateway));
    if (o) json_object_set_new(o, "registered", json_boolean(w->state == W_RUNNING));
    if (o) json_object_set_new(o, "gateway_protocol", json_string(w->seed2 ? "seed2" : "ttshub"));
    if (o) json_object_set_new(o, "host", json_string(w->adv_host));
    if (o) json_object_set_new(o, "port", json_integer(w->adv_port));
    if (o) json_object_set_new(o, "registered_as", json_string(wire_engine(w)));
    return o;
}

static void h_info(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/info";
    if (node_auth(c, hub->ext->ud) != 0) return;
    th_api_json(c, 200, info_doc(hub->ext->ud));
}

static void deferred_shutdown(void *p)
{
    th_serve_shutdown(p);
}

/* A seed-2 gateway takes model_loaded from registrations only (its heartbeat has no such field): after a
 * load, the node registers again so that the gateway routes to it. */
static void request_register(worker *w)
{
    if (!w->seed2 || w->state == W_STOPPING || w->state == W_DONE) return;
    if (w->req != NULL) { /* after the call in flight */
        w->reregister = true;
        return;
    }
    if (w->state != W_RUNNING) return; /* waiting to retry: that attempt sends the new state */
    if (w->timer) uv_timer_stop(w->timer);
    w->state = W_REGISTER;
    send_register(w);
}

static void h_command(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    worker *w = hub->ext->ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/command";
    c->shape = TH_SHAPE_CLONE;
    if (node_auth(c, w) != 0) return;
    json_t *j = th_api_body_object(c, false, "invalid_command");
    if (j == NULL) return;
    json_t *cv = json_object_get(j, "command"), *params = json_object_get(j, "params");
    char cmd[16] = "";
    if (json_is_string(cv) && json_string_length(cv) < sizeof cmd) /* seed-2 workers take any case */
        for (size_t i = 0; i < json_string_length(cv); i++) {
            char ch = json_string_value(cv)[i];
            cmd[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
    bool load = strcmp(cmd, "activate") == 0 || strcmp(cmd, "load_model") == 0;
    bool unload = strcmp(cmd, "standby") == 0 || strcmp(cmd, "unload_model") == 0;
    bool stop = strcmp(cmd, "stop") == 0;
    if (!load && !unload && !stop) {
        json_decref(j);
        node_error(c, 400, "invalid_command",
                   "'command' must be activate, load_model, standby, unload_model or stop");
        return;
    }
    if (params != NULL && !json_is_null(params) && !json_is_object(params)) {
        json_decref(j);
        node_error(c, 400, "invalid_command", "'params' must be an object");
        return;
    }
    json_decref(j);
    bool was_loaded = w->model_loaded;
    if (w->state != W_STOPPING && w->state != W_DONE && !stop) {
        /* activate = load_model, standby = unload_model, as on a seed-2 worker: readiness follows the model
         */
        w->model_loaded = load;
        th_strlcpy(w->status, load ? "online" : "standby", sizeof w->status);
    } else if (stop) {
        th_strlcpy(w->status, "stopping", sizeof w->status);
    }
    TH_LOG(hub->log, TH_LOG_INFO, "worker: command %s: now %s, model %s", cmd, w->status,
           w->model_loaded ? "loaded" : "unloaded");
    th_api_json(c, 200, json_pack("{s:b,s:s}", "success", 1, "status", wire_status(w)));
    if (load && !was_loaded) request_register(w);
    if (stop && th_hub_defer(hub, deferred_shutdown, hub) != 0) th_serve_shutdown(hub);
}

/* POST /extract_voice (seed-2): a reference into the node's store, spoken later by voice_id */
static void h_extract(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    worker *w = hub->ext->ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/extract_voice";
    c->shape = TH_SHAPE_CLONE;
    if (node_auth(c, w) != 0) return;
    if (!w->model_loaded || strcmp(w->status, "online") != 0) {
        c->retry_after_s = 1;
        node_error(c, 503, "model_not_loaded", "Model not loaded");
        return;
    }
    bool can_clone = hub->route.provs && hub->n_providers > 0 && hub->route.provs[0]->p->caps.can_clone;
    if (!can_clone) {
        char m[160];
        snprintf(m, sizeof m, "this node's engine (%s) cannot speak with a reference voice", w->engine);
        node_error(c, 501, "engine_cannot_clone", m);
        return;
    }
    th_wextract(c, wire_engine(w), (size_t)w->max_refs + 8, &w->extracting, EXTRACT_MAX_BUSY);
}

/* ---- hub hooks ---- */

static int x_routes(th_hub *hub, void *ud)
{
    (void)ud;
    if (th_router_add(hub->router, "POST", "/synthesize", h_synthesize, hub) != 0) return -1;
    if (th_router_add(hub->router, "GET", "/info", h_info, hub) != 0) return -1;
    if (th_router_add(hub->router, "POST", "/extract_voice", h_extract, hub) != 0) return -1;
    return th_router_add(hub->router, "POST", "/command", h_command, hub);
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static int x_start(th_hub *hub, void *ud)
{
    worker *w = ud;
    w->hub = hub;
    th_client_conf cc = {.max_host_connections = 2, .max_total_connections = 4, .max_connects_cache = 2};
    w->client = th_client_new(hub->loop, &cc);
    w->timer = malloc(sizeof *w->timer);
    if (w->client == NULL || w->timer == NULL) {
        free(w->timer);
        w->timer = NULL;
        return -1;
    }
    uv_timer_init(hub->loop, w->timer);
    w->timer->data = w;
    w->backoff_ms = BACKOFF_MIN_MS;
    w->cpu_us = cpu_used_us();
    w->cpu_at_us = th_mono_us();
    w->state = W_REGISTER;
    TH_LOG(hub->log, TH_LOG_INFO, "worker: %s engine, advertised as %s, registering with %s", w->engine,
           w->advertise, w->gateway);
    send_register(w);
    return 0;
}

static void x_stop(th_hub *hub, void *ud)
{
    (void)hub;
    worker *w = ud;
    th_strlcpy(w->status, "stopping", sizeof w->status);
    if (w->state == W_STOPPING || w->state == W_DONE || w->client == NULL) return;
    if (w->timer) uv_timer_stop(w->timer);
    if (w->req) {
        th_client_cancel(w->req);
        w->req = NULL;
    }
    bool known = w->node_id[0] != 0;
    w->state = W_STOPPING;
    if (!known) {
        w->state = W_DONE;
        return;
    }
    char path[TH_NODE_ID_MAX + 16];
    snprintf(path, sizeof path, "/api/nodes/%s", w->node_id);
    call(w, CALL_DELETE, "DELETE", path, NULL, DELETE_TIMEOUT_MS);
}

/* Releases the client and the timer once no gateway call is left. */
static void finish(worker *w)
{
    if (w->req != NULL) return;
    if (w->timer) {
        uv_timer_stop(w->timer);
        uv_close((uv_handle_t *)w->timer, on_timer_closed);
        w->timer = NULL;
    }
    if (w->client) th_client_close(w->client, NULL, NULL);
    w->client = NULL;
}

/* SIGHUP: a worker's settings are its flags and environment, which a running process cannot read
 * again (the cluster token is read from the environment at each registration already). Ignored, and
 * never fatal: `systemctl reload` must not stop an engine node. */
static void x_reload(th_hub *hub, void *ud)
{
    (void)ud;
    TH_LOG(hub->log, TH_LOG_INFO,
           "SIGHUP: ignored (a worker's settings are its flags and environment; restart it to change them)");
}

static void x_free(th_hub *hub, void *ud)
{
    (void)hub;
    worker *w = ud;
    w->closing = true;
    if (w->state != W_STOPPING) { /* no DELETE under way */
        if (w->req) {
            th_client_cancel(w->req);
            w->req = NULL;
        }
        finish(w);
    }
}

/* ---- command line ---- */

static const char *const ENGINES[] = {"espeak",     "openai_fm", "openai",    "gpt_sovits",
                                      "xtts",       "openvoice", "cosyvoice", "fish",
                                      "elevenlabs", "azure",     NULL};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: ttshub worker --engine ENGINE --gateway URL --listen ADDR --advertise URL\n"
        "                     [--engine-url URL] [--engine-key-env NAME] [--capacity N] [--node-id ID]\n"
        "                     [--voices a,b,...] [--languages en,zh,...] [--data-dir DIR] [--log-level L]\n"
        "                     [--ref-dir DIR [--ref-dir-engine DIR]] [--max-references N]\n"
        "                     [--token-env NAME] [--no-token]\n"
        "                     [--gateway-protocol auto|ttshub|seed2] [--engine-type TYPE]\n"
        "                     [--heartbeat-interval SECONDS]\n"
        "  ENGINE: espeak (embedded) or an engine kind at --engine-url: openai_fm, openai, gpt_sovits,\n"
        "          xtts, openvoice, cosyvoice, fish, elevenlabs, azure\n"
        "  the cluster token is read from the variable --token-env names (default TTSHUB_CLUSTER_TOKEN);\n"
        "  it is sent to the gateway and required, as Authorization: Bearer, on /synthesize, /command,\n"
        "  /extract_voice and /info.\n"
        "  --no-token serves the node routes to anyone (only behind a gateway that sends no credential)\n"
        "  library voices: references are kept under DATA-DIR (at most N, 256 by default); for xtts and\n"
        "          gpt_sovits, --ref-dir is the engine's speaker folder the node writes them into and\n"
        "          --ref-dir-engine the path under which the engine sees it\n"
        "  --gateway-protocol: ttshub's registry, or the seed-2 gateway (voice-clone-tts); auto (default)\n"
        "          tells them apart from the answer to the first registration. Behind a seed-2 gateway run\n"
        "          with --no-token (it sends no credential) and --engine-type xtts|openvoice|gpt-sovits\n"
        "          unless --engine is one of those\n"
        "  --engine-type: the engine_type the node registers as (default: --engine)\n"
        "  --heartbeat-interval: when the gateway names none (a seed-2 gateway never does); default 10\n");
}

/* http(s)://... of printable bytes with no quote or backslash (it goes into generated YAML) */
static bool url_arg_ok(const char *s)
{
    if (!th_str_startswith(s, "http://") && !th_str_startswith(s, "https://")) return false;
    size_t n = strlen(s);
    if (n < 9 || n >= 500) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f || s[i] == '"' || s[i] == '\\')
            return false;
    return true;
}

/* host and port of --advertise (NodeInfo's host, port): http://h[:p], https://h[:p], [v6] literals */
static int advertise_host_port(worker *w)
{
    const char *s = w->advertise;
    bool tls = th_str_startswith(s, "https://");
    s += tls ? 8 : 7;
    const char *end = s + strcspn(s, "/?#"); /* a path prefix is ttshub's; seed-2 speaks to host:port */
    const char *colon = NULL;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb > end) return -1;
        if ((size_t)(rb - s - 1) >= sizeof w->adv_host || rb == s + 1) return -1;
        memcpy(w->adv_host, s + 1, (size_t)(rb - s - 1));
        w->adv_host[rb - s - 1] = 0;
        if (rb[1] == ':')
            colon = rb + 1;
        else if (rb + 1 != end)
            return -1;
    } else {
        colon = memchr(s, ':', (size_t)(end - s));
        size_t hl = colon ? (size_t)(colon - s) : (size_t)(end - s);
        if (hl == 0 || hl >= sizeof w->adv_host) return -1;
        memcpy(w->adv_host, s, hl);
        w->adv_host[hl] = 0;
    }
    int64_t port = tls ? 443 : 80;
    char ps[8] = "";
    if (colon && ((size_t)(end - colon - 1) >= sizeof ps || end == colon + 1)) return -1;
    if (colon) memcpy(ps, colon + 1, (size_t)(end - colon - 1));
    if (colon && th_str_to_i64(ps, 1, 65535, &port) != 0) return -1;
    w->adv_port = (int)port;
    return 0;
}

static json_t *csv_list(const char *s)
{
    json_t *a = json_array();
    const char *p = s;
    while (a && *p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0 && n <= 128) json_array_append_new(a, json_stringn(p, n));
        p += n + (e ? 1 : 0);
    }
    return a;
}

/* One option with its value; false when it is unknown or its value is bad. */
static bool set_option(worker *w, const char *a, const char *v)
{
    int64_t n;
    if (strcmp(a, "--engine") == 0)
        th_strlcpy(w->engine, v, sizeof w->engine);
    else if (strcmp(a, "--gateway") == 0)
        th_strlcpy(w->gateway, v, sizeof w->gateway);
    else if (strcmp(a, "--listen") == 0)
        th_strlcpy(w->listen, v, sizeof w->listen);
    else if (strcmp(a, "--advertise") == 0)
        th_strlcpy(w->advertise, v, sizeof w->advertise);
    else if (strcmp(a, "--engine-url") == 0)
        th_strlcpy(w->engine_url, v, sizeof w->engine_url);
    else if (strcmp(a, "--engine-key-env") == 0)
        th_strlcpy(w->key_env, v, sizeof w->key_env);
    else if (strcmp(a, "--node-id") == 0)
        th_strlcpy(w->node_id, v, sizeof w->node_id);
    else if (strcmp(a, "--token-env") == 0)
        th_strlcpy(w->token_env, v, sizeof w->token_env);
    else if (strcmp(a, "--data-dir") == 0)
        th_strlcpy(w->data_dir, v, sizeof w->data_dir);
    else if (strcmp(a, "--log-level") == 0)
        th_strlcpy(w->log_level, v, sizeof w->log_level);
    else if (strcmp(a, "--ref-dir") == 0)
        th_strlcpy(w->ref_dir, v, sizeof w->ref_dir);
    else if (strcmp(a, "--ref-dir-engine") == 0)
        th_strlcpy(w->ref_dir_engine, v, sizeof w->ref_dir_engine);
    else if (strcmp(a, "--max-references") == 0 && th_str_to_i64(v, 1, 100000, &n) == 0)
        w->max_refs = (int)n;
    else if (strcmp(a, "--engine-type") == 0 && strlen(v) < sizeof w->engine_type && *v &&
             strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789_-") == strlen(v))
        th_strlcpy(w->engine_type, v, sizeof w->engine_type);
    else if (strcmp(a, "--heartbeat-interval") == 0 &&
             th_str_to_double(v, 0.1, 3600, &w->heartbeat_default_s) == 0)
        ;
    else if (strcmp(a, "--gateway-protocol") == 0 &&
             (strcmp(v, "auto") == 0 || strcmp(v, "ttshub") == 0 || strcmp(v, "seed2") == 0))
        w->proto = strcmp(v, "auto") == 0     ? PROTO_AUTO
                   : strcmp(v, "ttshub") == 0 ? PROTO_TTSHUB
                                              : PROTO_SEED2;
    else if (strcmp(a, "--voices") == 0) {
        json_decref(w->voices);
        w->voices = csv_list(v);
    } else if (strcmp(a, "--languages") == 0) {
        json_decref(w->languages);
        w->languages = csv_list(v);
    } else if (strcmp(a, "--capacity") == 0 && th_str_to_i64(v, 1, 10000, &n) == 0)
        w->capacity = (int)n;
    else
        return false;
    return true;
}

/* The options into w; -1 to go on, else the exit code. */
static int parse_options(worker *w, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--no-token") == 0) {
            w->no_token = true;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "ttshub worker: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!set_option(w, a, v)) {
            fprintf(stderr, "ttshub worker: unknown or bad option %s %s\n", a, v);
            usage(stderr);
            return 2;
        }
    }
    return -1;
}

/* What is wrong with the options as a whole, or NULL. */
static const char *check_options(worker *w)
{
    bool known = false;
    for (size_t i = 0; ENGINES[i]; i++)
        known |= strcmp(ENGINES[i], w->engine) == 0;
    return !known                      ? "--engine must be one of the engine kinds"
           : !url_arg_ok(w->gateway)   ? "--gateway must be an http:// or https:// URL"
           : !url_arg_ok(w->advertise) ? "--advertise must be the http(s):// URL the gateway reaches"
           : w->listen[0] == 0         ? "--listen ADDR is required (e.g. 0.0.0.0:9000)"
           : strcmp(w->engine, "espeak") != 0 && !url_arg_ok(w->engine_url)
               ? "--engine-url must be the engine's http(s):// URL"
           : w->node_id[0] && strspn(w->node_id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                                 "0123456789_-.") != strlen(w->node_id)
               ? "--node-id may only hold A-Z a-z 0-9 _ - ."
           : strspn(w->key_env, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != strlen(w->key_env)
               ? "--engine-key-env is the NAME of an environment variable"
           : w->token_env[0] == 0 ||
                   strspn(w->token_env, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
                       strlen(w->token_env)
               ? "--token-env is the NAME of an environment variable"
           : w->proto == PROTO_SEED2 && !w->no_token ? "--gateway-protocol seed2 needs --no-token: the "
                                                       "seed-2 gateway sends no credential to its nodes"
           : !w->no_token && token(w) == NULL
               ? "the cluster token is not set: put it in the variable --token-env names (default "
                 "TTSHUB_CLUSTER_TOKEN), or run with --no-token behind a gateway that sends none"
           : strpbrk(w->data_dir, "\"\\\n") != NULL ? "--data-dir may not hold quotes or backslashes"
           : strpbrk(w->ref_dir, "\"\\\n") != NULL || strpbrk(w->ref_dir_engine, "\"\\\n") != NULL
               ? "--ref-dir and --ref-dir-engine may not hold quotes or backslashes"
           : w->ref_dir_engine[0] && !w->ref_dir[0] ? "--ref-dir-engine needs --ref-dir"
                                                    : NULL;
}

/* The token's hash, URLs without trailing slashes, the advertised host and port. 0, or -1. */
static int prepare(worker *w)
{
    if (!w->no_token) th_auth_hash_key(token(w), strlen(token(w)), w->token_hash);
    /* trailing slashes would double in the paths */
    for (size_t n = strlen(w->gateway); n > 0 && w->gateway[n - 1] == '/'; n--)
        w->gateway[n - 1] = 0;
    for (size_t n = strlen(w->advertise); n > 0 && w->advertise[n - 1] == '/'; n--)
        w->advertise[n - 1] = 0;
    if (advertise_host_port(w) != 0) {
        fprintf(stderr, "ttshub worker: --advertise must be http(s)://HOST[:PORT] (no path: a seed-2 gateway "
                        "speaks to host:port)\n");
        return -1;
    }
    w->seed2 = w->proto == PROTO_SEED2;
    return 0;
}

/* The node's own hub: one provider, no cache, no limits (the gateway governs). 0, or -1 when it does not
 * fit in yaml. */
static int node_config(const worker *w, char *yaml, size_t cap)
{
    char url_line[600] = "", key_line[100] = "", ref_lines[1100] = "";
    if (strcmp(w->engine, "espeak") != 0)
        snprintf(url_line, sizeof url_line, "    base_url: \"%s\"\n", w->engine_url);
    if (w->ref_dir[0] && w->ref_dir_engine[0])
        snprintf(ref_lines, sizeof ref_lines, "    ref_dir: \"%s\"\n    ref_dir_engine: \"%s\"\n", w->ref_dir,
                 w->ref_dir_engine);
    else if (w->ref_dir[0])
        snprintf(ref_lines, sizeof ref_lines, "    ref_dir: \"%s\"\n", w->ref_dir);
    if (w->key_env[0]) snprintf(key_line, sizeof key_line, "    api_key_env: %s\n", w->key_env);
    int yl = snprintf(yaml, cap,
                      "data_dir: \"%s\"\n"
                      "providers:\n"
                      "  - name: engine\n"
                      "    type: %s\n%s%s%s"
                      "    concurrency: %d\n"
                      "    queue: %d\n"
                      "    timeout: 120s\n"
                      "cache: { enabled: false }\n"
                      "rate_limit: { global_rpm: 0, ip_rpm: 0, concurrency: 0 }\n"
                      "limits: { max_body: 24MiB }\n"
                      "voice_library: { backend: fs, max_voices: %d, max_per_tenant: %d, min_seconds: 0.5, "
                      "max_seconds: 600 }\n",
                      w->data_dir, w->engine, url_line, key_line, ref_lines, w->capacity, w->capacity * 4,
                      w->max_refs + 16, w->max_refs + 8);
    return yl < 0 || (size_t)yl >= cap ? -1 : 0;
}

int th_worker_main(int argc, char **argv)
{
    worker *w = calloc(1, sizeof *w);
    if (w == NULL) return 1;
    w->capacity = 4;
    w->max_refs = 256;
    w->model_loaded = true;
    w->heartbeat_default_s = 10.0;
    th_strlcpy(w->status, "online", sizeof w->status);
    th_strlcpy(w->data_dir, "./data", sizeof w->data_dir);
    th_strlcpy(w->token_env, "TTSHUB_CLUSTER_TOKEN", sizeof w->token_env);
    th_buf_init(&w->reply, REPLY_MAX);
    int rc = parse_options(w, argc, argv);
    if (rc >= 0) goto out;
    rc = 2;
    const char *bad = check_options(w);
    if (bad) {
        fprintf(stderr, "ttshub worker: %s\n", bad);
        usage(stderr);
        goto out;
    }
    char yaml[6144];
    if (prepare(w) != 0 || node_config(w, yaml, sizeof yaml) != 0) goto out;
    th_hub_ext ext = {x_routes, x_start, x_stop, x_free, w, x_reload, .node_only = true};
    th_serve_opts o = {.config_text = yaml,
                       .ext = &ext,
                       .listen = w->listen,
                       .log_level = w->log_level[0] ? w->log_level : NULL};
    rc = th_serve(&o);
out:
    json_decref(w->voices);
    json_decref(w->languages);
    th_buf_free(&w->reply);
    free(w);
    return rc;
}
