/* batch: POST /api/batch_synthesize (API.md "Voice-clone routes").
 *
 *   {texts:[...], voice_id, engine?, language?, output_format?, speed?}
 *   -> 200 {success, total, succeeded, failed, results:[{index, success, audio_base64 | error, size}]}
 *
 * At most BATCH_MAX texts. The batch passes the rate limits once (one concurrency slot for the whole
 * batch); each text is its own synthesis with its own quota reservation, committed when that text
 * succeeds and refunded when it fails, so quota is charged per successful text. BATCH_PARALLEL texts
 * run at a time. A library voice is held for the whole batch. Results are not cached (each text may be
 * long and the answer is one JSON document); the audio of each text and of the whole batch is bounded. */
#include "api/api.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "http/body.h"
#include "voice/library.h"

#define BATCH_MAX 32
#define BATCH_PARALLEL 4
#define BATCH_ITEM_MAX (16u * 1024u * 1024u)  /* audio bytes of one text */
#define BATCH_TOTAL_MAX (48u * 1024u * 1024u) /* audio bytes of the whole answer (before base64) */

enum { IT_WAIT = 0, IT_QUOTA, IT_RUN, IT_DONE };

typedef struct batch batch;

typedef struct item {
    batch *b;
    size_t index;
    char *text;
    size_t len, chars;
    int state;
    th_synth *s;
    th_buf out;
    th_quota_resv *resv;
    bool ok, overflow;
    char err[256];
} item;

struct batch {
    th_api_ctx *c;
    item items[BATCH_MAX];
    size_t n, next, running, done;
    char *voice, *language;
    th_synth_params base;
    th_limit_slot *slot;
    uint64_t total_bytes;
    int async; /* limit or quota callbacks still to come */
    bool gone, in_run, ended;
};

static void kick(batch *b);

static void batch_free(batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->items[i].text);
        th_buf_free(&b->items[i].out);
    }
    free(b->voice);
    free(b->language);
    free(b);
}

static bool allowed(const char *provider, void *ud)
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

/* ---- the answer ---- */

static void answer(batch *b)
{
    th_api_ctx *c = b->c;
    th_hub *hub = c->hub;
    b->ended = true;
    if (b->slot) {
        th_limit_release(hub->limiter, b->slot);
        b->slot = NULL;
    }
    if (b->gone) {
        th_http_req *req = c->req;
        c->error_code = "client_closed";
        th_api_log(c, 499);
        th_api_ctx_free(c);
        th_http_set_data(req, NULL);
        th_http_end(req, true);
        batch_free(b);
        return;
    }
    size_t ok = 0;
    int64_t chars = 0;
    json_t *results = json_array();
    for (size_t i = 0; results && i < b->n; i++) {
        item *it = &b->items[i];
        json_t *r;
        if (it->ok) {
            ok++;
            chars += (int64_t)it->chars;
            size_t b64 = 4 * ((it->out.len + 2) / 3);
            char *enc = malloc(b64 + 1);
            if (enc == NULL) {
                r = json_pack("{s:I,s:b,s:s,s:i}", "index", (json_int_t)i, "success", 0, "error",
                              "out of memory", "size", 0);
            } else {
                EVP_EncodeBlock((unsigned char *)enc, it->out.data ? it->out.data : (const uint8_t *)"",
                                (int)it->out.len);
                enc[b64] = 0;
                r = json_pack("{s:I,s:b,s:s,s:I}", "index", (json_int_t)i, "success", 1, "audio_base64", enc,
                              "size", (json_int_t)it->out.len);
                free(enc);
            }
        } else {
            r = json_pack("{s:I,s:b,s:s,s:i}", "index", (json_int_t)i, "success", 0, "error", it->err, "size",
                          0);
        }
        th_buf_free(&it->out);
        json_array_append_new(results, r);
    }
    c->chars = chars;
    if (hub->metrics && chars > 0) {
        const char *lbl[] = {c->tenant ? c->tenant : "", NULL};
        th_metrics_add(hub->metrics, TH_M_CHARS, lbl, (double)chars);
    }
    json_t *o = json_pack("{s:b,s:I,s:I,s:I,s:o,s:s}", "success", ok == b->n, "total", (json_int_t)b->n,
                          "succeeded", (json_int_t)ok, "failed", (json_int_t)(b->n - ok), "results",
                          results ? results : json_array(), "format", th_fmt_name(c->fmt));
    char msg[64]; /* BatchSynthesizeResponse.message, in the voice-clone gateway's words */
    snprintf(msg, sizeof msg, "Batch completed: %zu/%zu", ok, b->n);
    if (o != NULL && json_object_set_new(o, "message", json_string(msg)) != 0) {
        json_decref(o);
        o = NULL;
    }
    batch_free(b);
    th_api_json(c, 200, o);
}

/* ---- one text ---- */

static void item_end(item *it, bool ok, const char *err)
{
    batch *b = it->b;
    th_hub *hub = b->c->hub;
    if (it->resv) {
        if (ok)
            th_quota_commit(hub->quota, it->resv);
        else
            th_quota_refund(hub->quota, it->resv);
        it->resv = NULL;
    }
    if (it->s) {
        th_synth_free(it->s);
        it->s = NULL;
    }
    it->ok = ok;
    if (!ok) {
        th_buf_free(&it->out);
        if (err) th_strlcpy(it->err, err, sizeof it->err);
    } else {
        b->total_bytes += it->out.len;
    }
    it->state = IT_DONE;
    b->running--;
    b->done++;
    kick(b);
}

static void sy_start(void *ud, const char *provider)
{
    (void)ud;
    (void)provider;
}

static int sy_data(void *ud, const uint8_t *data, size_t len)
{
    item *it = ud;
    if (it->overflow) return 0;
    if (th_buf_append(&it->out, data, len) != TH_BUF_OK) it->overflow = true;
    return 0;
}

static void sy_done(void *ud)
{
    item *it = ud;
    if (it->overflow)
        item_end(it, false, "the audio of this text is too large for a batch");
    else if (it->b->total_bytes + it->out.len > BATCH_TOTAL_MAX)
        item_end(it, false, "the batch's audio is too large; send fewer or shorter texts");
    else
        item_end(it, true, NULL);
}

static void sy_error(void *ud, const th_perr *err, uint64_t bytes_out)
{
    item *it = ud;
    (void)bytes_out;
    TH_LOG(it->b->c->hub->log, TH_LOG_WARN, "batch %s text %zu: %s: %s", it->b->c->rid, it->index,
           th_perr_kind_name(err->kind), err->message);
    int status;
    const char *type, *code;
    th_api_perr_status(err, &status, &type, &code);
    char msg[300];
    snprintf(msg, sizeof msg, "%.200s (%d %s)",
             err->kind == TH_PERR_CLIENT ? err->message : "the synthesis failed", status, code);
    item_end(it, false, msg);
}

static void run_synth(item *it)
{
    batch *b = it->b;
    th_api_ctx *c = b->c;
    static const th_synth_cb tmpl = {sy_start, sy_data, sy_done, sy_error, NULL};
    th_synth_cb cb = tmpl;
    cb.ud = it;
    th_synth_params p = b->base;
    p.text = it->text;
    p.text_len = it->len;
    p.chars = it->chars;
    p.clone = c->clone;
    th_perr err = {0};
    it->state = IT_RUN;
    it->s = th_synth_start(c->hub, &p, &cb, &err);
    if (it->s == NULL) item_end(it, false, err.message);
}

static void quota_cb(void *ud, const th_quota_result *res)
{
    item *it = ud;
    batch *b = it->b;
    if (it->state == IT_QUOTA && b->async > 0) b->async--;
    if (!res->allowed) {
        char msg[160];
        snprintf(msg, sizeof msg, "character quota used up for this %s",
                 res->window ? res->window : "window");
        item_end(it, false, msg);
        return;
    }
    it->resv = res->resv;
    if (b->gone) {
        item_end(it, false, "the client went away");
        return;
    }
    run_synth(it);
}

static void start_item(item *it)
{
    batch *b = it->b;
    th_api_ctx *c = b->c;
    th_hub *hub = c->hub;
    b->running++;
    if (hub->quota == NULL || c->tconf == NULL ||
        (c->tconf->chars_per_day == 0 && c->tconf->chars_per_month == 0)) {
        run_synth(it);
        return;
    }
    it->state = IT_QUOTA;
    b->async++;
    th_quota_reserve(hub->quota, c->tconf->name, c->tconf, (uint64_t)it->chars, th_wall_ms(), quota_cb, it);
}

static void kick(batch *b)
{
    if (b->in_run || b->ended) return;
    b->in_run = true;
    while (!b->gone && b->next < b->n && b->running < BATCH_PARALLEL)
        start_item(&b->items[b->next++]);
    b->in_run = false;
    if (b->running == 0 && b->async == 0 && (b->gone || b->done == b->n)) answer(b);
}

static void on_gone(th_http_req *req, void *ud)
{
    batch *b = ud;
    (void)req;
    b->gone = true;
    for (size_t i = b->next; i < b->n; i++)
        th_strlcpy(b->items[i].err, "the client went away", sizeof b->items[i].err);
    kick(b);
}

/* ---- start ---- */

static void limit_cb(void *ud, const th_limit_result *res)
{
    batch *b = ud;
    th_api_ctx *c = b->c;
    b->async--;
    if (res->allowed) b->slot = res->slot;
    if (!res->allowed) {
        c->retry_after_s = res->retry_after_s > 0 ? (int)res->retry_after_s : 1;
        if (c->hub->metrics)
            th_metrics_add(c->hub->metrics, TH_M_REJECTIONS,
                           (const char *[]){res->reason ? res->reason : "limit", NULL}, 1);
        int status = res->status ? res->status : 429;
        b->ended = true;
        batch_free(b);
        th_api_error(c, status, status == 429 ? "rate_limit_error" : "service_unavailable", res->reason,
                     "rate limit reached (%s); retry in %d s", res->reason ? res->reason : "limit",
                     c->retry_after_s);
        return;
    }
    th_http_on_close(c->req, on_gone, b);
    kick(b);
}

static void go(batch *b)
{
    th_api_ctx *c = b->c;
    th_hub *hub = c->hub;
    th_perr err = {0};
    b->base.clone = c->clone;
    if (th_synth_prepare(hub, &b->base, &err) != 0) {
        int status;
        const char *type, *code;
        th_api_perr_status(&err, &status, &type, &code);
        if (err.kind == TH_PERR_CLIENT) code = c->clone ? "no_clone_provider" : "invalid_voice";
        b->ended = true;
        batch_free(b);
        th_api_error(c, status, type, code, "%s", err.message);
        return;
    }
    if (hub->limiter == NULL) {
        th_http_on_close(c->req, on_gone, b);
        kick(b);
        return;
    }
    th_limit_req lr = {
        .ip = th_http_peer(c->req),
        .tenant = c->tconf ? c->tconf->name : "",
        .key_id = c->id.method[0] == 'k' ? c->id.subject : "",
        .tconf = c->tconf,
    };
    b->async++;
    th_limit_check(hub->limiter, &lr, th_wall_ms(), limit_cb, b);
}

static void clone_ready(void *ud, th_vlib_use *u, th_vlib_rc rc)
{
    batch *b = ud;
    th_api_ctx *c = b->c;
    if (u == NULL) {
        b->ended = true;
        batch_free(b);
        if (rc == TH_VLIB_MISSING)
            th_api_error(c, 404, NULL, "voice_not_found", "the voice was deleted");
        else
            th_api_error(c, 500, NULL, "voice_store_error", "the voice's reference cannot be read");
        return;
    }
    c->clone = u;
    c->library_voice = true;
    go(b);
}

/* The body: a JSON object (also read as a form, for the clone fields) with 'texts', 1 to BATCH_MAX of
 * them. The texts, or NULL when an error was sent. */
static json_t *read_body(th_api_ctx *c, json_t **doc, th_form *form)
{
    size_t blen = 0;
    const uint8_t *body = th_http_body(c->req, &blen);
    char err[256] = "";
    *doc = th_json_parse_bounded(body, blen, TH_JSON_MAX_DEPTH, err, sizeof err);
    if (!json_is_object(*doc)) {
        th_api_error(c, 400, NULL, "malformed_body", "%s", err[0] ? err : "the body must be a JSON object");
        return NULL;
    }
    if (th_form_parse_json(form, body, blen, TH_JSON_MAX_DEPTH, err, sizeof err) != TH_BODY_OK) {
        th_api_error(c, 400, NULL, "malformed_body", "%s", err[0] ? err : "malformed JSON");
        return NULL;
    }
    json_t *texts = json_object_get(*doc, "texts");
    if (!json_is_array(texts) || json_array_size(texts) == 0) {
        th_api_error(c, 400, NULL, "missing_texts", "'texts' must be a non-empty array of strings");
        return NULL;
    }
    if (json_array_size(texts) > BATCH_MAX) {
        th_api_error(c, 400, NULL, "too_many_texts", "'texts' holds %zu texts; at most %d are allowed",
                     json_array_size(texts), BATCH_MAX);
        return NULL;
    }
    return texts;
}

/* The texts into b's items, each a non-empty string within limits.max_input_chars. 0, or -1 when an error
 * was sent. */
static int read_texts(th_api_ctx *c, batch *b, const json_t *texts)
{
    uint64_t max_chars = c->hub->cfg->limits.max_input_chars;
    for (size_t i = 0; i < json_array_size(texts); i++) {
        json_t *t = json_array_get(texts, i);
        item *it = &b->items[i];
        it->b = b;
        it->index = i;
        th_buf_init(&it->out, BATCH_ITEM_MAX);
        b->n = i + 1;
        const char *s = json_string_value(t);
        size_t len = json_string_length(t);
        int64_t n = s ? th_utf8_count(s, len) : -1;
        bool blank = true;
        for (size_t k = 0; s && k < len && blank; k++)
            if (!strchr(" \t\r\n", s[k])) blank = false;
        if (!json_is_string(t) || n <= 0 || blank || memchr(s, 0, len) != NULL || (uint64_t)n > max_chars) {
            th_api_error(c, 400, NULL, "invalid_text",
                         "texts[%zu] must be a non-empty string of at most %llu characters", i,
                         (unsigned long long)max_chars);
            return -1;
        }
        it->text = th_strndup(s, len);
        if (it->text == NULL) {
            th_api_error(c, 500, NULL, "internal_error", "out of memory");
            return -1;
        }
        it->len = len;
        it->chars = (size_t)n;
    }
    return 0;
}

/* The parameters every item shares, from the clone fields. 0, or -1 when an error was sent. */
static int set_base(th_api_ctx *c, batch *b, const th_form *form)
{
    th_synth_params p = {0};
    if (th_api_clone_fields(c, form, &p) != 0) return -1;
    b->voice = th_strndup(p.voice, strlen(p.voice));
    b->language = p.language ? th_strndup(p.language, strlen(p.language)) : NULL;
    if (b->voice == NULL || (p.language && b->language == NULL)) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return -1;
    }
    b->base = (th_synth_params){
        .voice = b->voice,
        .language = b->language,
        .generation = c->rid,
        .fmt = p.fmt,
        .speed = p.speed,
        .tenant = c->tconf ? c->tconf->name : NULL,
        .provider_allowed = (c->tconf || c->only_engine) ? allowed : NULL,
        .allowed_ud = c,
    };
    return 0;
}

void th_api_clone_batch(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c = th_http_get_data(req);
    c->shape = TH_SHAPE_CLONE;
    c->route = "/api/batch_synthesize";
    if (th_api_auth(c, false) != 0) return;
    th_hub *hub = c->hub;
    th_form form;
    th_form_init(&form);
    batch *b = NULL;
    json_t *doc = NULL;
    json_t *texts = read_body(c, &doc, &form);
    if (texts == NULL) goto out;
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        goto out;
    }
    b->c = c;
    if (read_texts(c, b, texts) != 0 || set_base(c, b, &form) != 0) goto out;
    const th_vlib_meta *m = hub->vlib ? th_vlib_find(hub->vlib, b->voice) : NULL;
    if (m && !th_vlib_visible(m, c->id.tenant, th_auth_is_admin(&c->id))) m = NULL;
    if (m == NULL && c->tconf && !th_auth_voice_allowed(c->tconf, b->voice)) {
        th_api_error(c, 403, "permission_error", "voice_not_allowed",
                     "voice '%s' is not allowed for tenant %s", b->voice, c->tconf->name);
        goto out;
    }
    batch *run = b;
    b = NULL;
    json_decref(doc);
    th_form_free(&form);
    if (m)
        th_vlib_acquire(hub->vlib, m->id, clone_ready, run);
    else
        go(run);
    return;
out:
    if (b) batch_free(b);
    json_decref(doc);
    th_form_free(&form);
}
