/* extract: see extract.h. */
#include "worker/extract.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio/decode.h"
#include "audio/wav.h"
#include "core/clock.h"
#include "core/str.h"
#include "core/uuid.h"
#include "http/body.h"
#include "voice/library.h"

#define EXTRACT_AUDIO_MAX (16u * 1024 * 1024) /* bytes of the uploaded file */
#define MIN_ACTIVE_SECONDS 0.5                /* less audible audio than this is a silent reference */

typedef struct xjob {
    th_api_ctx *c;
    uv_work_t work;
    th_form form;
    const uint8_t *audio;
    size_t audio_len;
    th_dec_opts opts;
    double min_s, silence_dbfs;
    size_t cap;
    char engine[64];
    th_dec_rc drc;
    char err[256];
    uint8_t *wav;
    size_t wav_len;
    th_dec_level level;
    th_vlib_meta m;
    int *busy; /* the caller's count of uploads under way; ours is one of them */
} xjob;

static void xerr(th_api_ctx *c, int status, const char *code, const char *msg)
{
    c->shape = TH_SHAPE_CLONE;
    th_api_error(c, status, NULL, code, "%s", msg);
}

static void xjob_free(xjob *j)
{
    if (j->busy) (*j->busy)--;
    th_form_free(&j->form);
    free(j->wav);
    th_vlib_meta_free(&j->m);
    free(j);
}

bool th_wextract_is_content_id(const char *id)
{
    if (id[0] != 'r' || strlen(id) != 64) return false;
    return strspn(id + 1, "0123456789abcdef") == 63;
}

/* printable UTF-8 (no control bytes but tab/newline when multiline) of at most max bytes */
static bool text_ok(const char *s, size_t len, size_t max, bool multiline)
{
    if (len > max || th_utf8_count(s, len) < 0) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == 0x7f || (ch < 0x20 && !(multiline && (ch == '\n' || ch == '\t' || ch == '\r'))))
            return false;
    }
    return true;
}

static bool lang_ok(const char *s, size_t len)
{
    if (len == 0 || len > 35) return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_'))
            return false;
    }
    return true;
}

static const th_field *form_str(const th_form *f, const char *name)
{
    const th_field *fl = th_form_get(f, name);
    if (fl == NULL || fl->is_null || fl->is_json || fl->filename != NULL) return NULL;
    return fl;
}

static void x_work(uv_work_t *w)
{
    xjob *j = w->data;
    j->drc = th_vlib_normalise(j->audio, j->audio_len, &j->opts, j->silence_dbfs, &j->m, &j->level, &j->wav,
                               &j->wav_len, j->err, sizeof j->err);
}

static void x_created(void *ud, th_vlib_rc rc, const char *err)
{
    xjob *j = ud;
    th_api_ctx *c = j->c;
    if (rc != TH_VLIB_OK) {
        TH_LOG(c->hub->log, TH_LOG_WARN, "worker: cannot store voice %s: %s", j->m.id, err ? err : "");
        int st = rc == TH_VLIB_TAKEN ? 409 : rc == TH_VLIB_FULL ? 507 : 503;
        const char *code = rc == TH_VLIB_TAKEN  ? "voice_exists"
                           : rc == TH_VLIB_FULL ? "voice_store_full"
                                                : "voice_store_error";
        xjob_free(j);
        xerr(c, st, code,
             st == 409   ? "the voice is being stored by another request"
             : st == 507 ? "the node's voice store is full"
                         : "the node cannot store the voice");
        return;
    }
    TH_LOG(c->hub->log, TH_LOG_INFO, "worker: voice %s extracted (%.2f s)", j->m.id, j->m.duration_s);
    json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:s,s:f}", "success", 1, "message", "", "voice_id", j->m.id,
                          "voice_name", j->m.name, "engine", j->engine, "duration_seconds", j->m.duration_s);
    xjob_free(j);
    th_api_json(c, 200, o);
}

static void x_store(xjob *j)
{
    th_api_ctx *c = j->c;
    th_vlib *l = c->hub->vlib;
    th_vlib_rc vr = th_vlib_reserve(l, j->m.id, "", j->cap);
    if (vr != TH_VLIB_OK) {
        x_created(j, vr, "reserve");
        return;
    }
    uint8_t *wav = j->wav;
    size_t len = j->wav_len;
    j->wav = NULL;
    j->m.created_ms = j->m.updated_ms = (int64_t)th_wall_ms();
    th_vlib_create(l, &j->m, wav, len, j->cap, x_created, j); /* wav is stolen */
}

static void x_replaced(void *ud, th_vlib_rc rc, const char *err)
{
    xjob *j = ud;
    if (rc != TH_VLIB_OK && rc != TH_VLIB_MISSING) {
        x_created(j, rc, err);
        return;
    }
    x_store(j);
}

static void x_after(uv_work_t *w, int status)
{
    xjob *j = w->data;
    th_api_ctx *c = j->c;
    const char *code = NULL;
    int st = 400;
    char msg[320] = "";
    if (status != 0) {
        st = 500, code = "internal_error";
        snprintf(msg, sizeof msg, "the upload could not be processed");
    } else if (j->drc == TH_DEC_NOT_AUDIO) {
        st = 415, code = "unsupported_audio";
        snprintf(msg, sizeof msg, "'audio' is not an audio file this node reads: %.150s", j->err);
    } else if (j->drc == TH_DEC_BROKEN) {
        code = "invalid_audio";
        snprintf(msg, sizeof msg, "'audio' cannot be decoded: %.200s", j->err);
    } else if (j->drc == TH_DEC_TOO_LONG) {
        code = "audio_too_long";
        snprintf(msg, sizeof msg, "the reference is longer than %g seconds", j->opts.max_seconds);
    } else if (j->drc != TH_DEC_OK) {
        st = 500, code = "internal_error";
        snprintf(msg, sizeof msg, "out of memory");
    } else if (j->m.duration_s < j->min_s) {
        code = "audio_too_short";
        snprintf(msg, sizeof msg, "the reference is %.2f seconds; at least %g are needed", j->m.duration_s,
                 j->min_s);
    } else if (j->level.active_seconds < MIN_ACTIVE_SECONDS) {
        code = "audio_silent";
        snprintf(msg, sizeof msg, "the reference is silent (peak %.1f dBFS)", j->level.peak_dbfs);
    } else if (th_http_aborted(c->req)) {
        st = 499, code = "client_closed";
        snprintf(msg, sizeof msg, "the client went away");
    }
    if (code) {
        xjob_free(j);
        xerr(c, st, code, msg);
        return;
    }
    th_vlib *l = c->hub->vlib;
    if (th_vlib_find(l, j->m.id) != NULL) { /* the same id again: the new reference replaces the old */
        TH_LOG(c->hub->log, TH_LOG_INFO, "worker: voice %s extracted again: replacing it", j->m.id);
        th_vlib_delete(l, j->m.id, x_replaced, j);
        return;
    }
    x_store(j);
}

/* The form fields of an extraction. */
typedef struct x_fields {
    const th_field *audio, *id, *name, *text, *lang;
} x_fields;

/* What is wrong with the fields (with its code and status), or NULL. */
static const char *x_bad_fields(const x_fields *f, const char **code, int *st)
{
    *st = 400;
    if (f->audio == NULL) {
        *code = "missing_audio";
        return "the 'audio' file field is required";
    }
    if (f->audio->value_len == 0) {
        *code = "empty_audio";
        return "the 'audio' file is empty";
    }
    if (f->audio->value_len > EXTRACT_AUDIO_MAX) {
        *code = "audio_too_large", *st = 413;
        return "the 'audio' file is larger than 16 MiB";
    }
    if (f->id && f->id->value_len > 0 &&
        (!th_vlib_id_ok(f->id->value, f->id->value_len) || th_wextract_is_content_id(f->id->value))) {
        *code = "invalid_voice_id";
        return "'voice_id' must be 1-64 letters, digits, '_' or '-' (and not r + 63 hex digits)";
    }
    if (f->name && !text_ok(f->name->value, f->name->value_len, TH_VLIB_NAME_MAX, false)) {
        *code = "invalid_voice_name";
        return "'voice_name' must be printable UTF-8 of at most 256 bytes";
    }
    if (f->text && !text_ok(f->text->value, f->text->value_len, TH_VLIB_TEXT_MAX, true)) {
        *code = "invalid_reference_text";
        return "'reference_text' must be UTF-8 of at most 4096 bytes";
    }
    if (f->lang && f->lang->value_len > 0 && !lang_ok(f->lang->value, f->lang->value_len)) {
        *code = "invalid_language";
        return "'language' must be a language tag such as en or zh-CN";
    }
    return NULL;
}

/* The multipart body into j->form and f, checked. 0, or -1 when an error was sent (j is freed). */
static int x_read_form(xjob *j, const char *ct, x_fields *f)
{
    th_api_ctx *c = j->c;
    size_t blen = 0;
    const uint8_t *body = th_http_body(c->req, &blen);
    char err[256] = "";
    int rc = th_form_parse_multipart(&j->form, ct, body, blen, err, sizeof err);
    if (rc != TH_BODY_OK) {
        xjob_free(j);
        if (rc == TH_BODY_NOMEM)
            xerr(c, 500, "internal_error", "out of memory");
        else
            xerr(c, 400, "malformed_body", err[0] ? err : "malformed multipart body");
        return -1;
    }
    f->audio = th_form_get(&j->form, "audio");
    if (f->audio == NULL) f->audio = th_form_get(&j->form, "file");
    f->id = form_str(&j->form, "voice_id");
    f->name = form_str(&j->form, "voice_name");
    f->text = form_str(&j->form, "reference_text");
    f->lang = form_str(&j->form, "language");
    const char *code;
    int st;
    const char *bad = x_bad_fields(f, &code, &st);
    if (bad) {
        xjob_free(j);
        xerr(c, st, code, bad);
        return -1;
    }
    return 0;
}

/* The voice's id (given, or v_ + 16 characters of a uuid) and record. 0, or -1 on ENOMEM. */
static int x_set_meta(xjob *j, th_hub *hub, const x_fields *f, const char *engine_type)
{
    if (f->id && f->id->value_len > 0) {
        memcpy(j->m.id, f->id->value, f->id->value_len);
        j->m.id[f->id->value_len] = 0;
    } else { /* a seed-2 worker makes 8 characters of a uuid; ours are longer, and never a content id */
        char u[TH_UUID_LEN + 1];
        th_uuid_gen_next(&hub->ids, u);
        snprintf(j->m.id, sizeof j->m.id, "v_%.8s%.4s%.4s", u, u + 9, u + 14);
    }
    if (th_vlib_meta_set(&j->m.name, f->name && f->name->value_len ? f->name->value : j->m.id) ||
        th_vlib_meta_set(&j->m.tenant, "") || th_vlib_meta_set(&j->m.engine, engine_type) ||
        th_vlib_meta_set(&j->m.text, f->text ? f->text->value : "") ||
        th_vlib_meta_set(&j->m.language, f->lang ? f->lang->value : ""))
        return -1;
    return 0;
}

/* The request's Content-Type when the node can take an upload now, else NULL (an error was sent). */
static const char *x_admit(th_api_ctx *c, const int *busy, int max_busy)
{
    if (c->hub->vlib == NULL) {
        xerr(c, 503, "voice_store_error", "the node has no voice store");
        return NULL;
    }
    if (*busy >= max_busy) {
        c->retry_after_s = 1;
        xerr(c, 503, "busy", "the node is processing other uploads; try again");
        return NULL;
    }
    const char *ct = th_http_header(c->req, "Content-Type");
    if (ct == NULL || strlen(ct) < 19 || !th_strn_ieq(ct, 19, "multipart/form-data")) {
        xerr(c, 415, "unsupported_media_type",
             "send multipart/form-data with the reference in the 'audio' field");
        return NULL;
    }
    return ct;
}

void th_wextract(th_api_ctx *c, const char *engine_type, size_t cap, int *busy, int max_busy)
{
    th_hub *hub = c->hub;
    const char *ct = x_admit(c, busy, max_busy);
    if (ct == NULL) return;
    xjob *j = calloc(1, sizeof *j);
    if (j == NULL) {
        xerr(c, 500, "internal_error", "out of memory");
        return;
    }
    j->c = c;
    j->cap = cap;
    j->busy = busy;
    (*busy)++;
    th_strlcpy(j->engine, engine_type, sizeof j->engine);
    th_form_init(&j->form);
    x_fields f;
    if (x_read_form(j, ct, &f) != 0) return;
    if (x_set_meta(j, hub, &f, engine_type) != 0) {
        xjob_free(j);
        xerr(c, 500, "internal_error", "out of memory");
        return;
    }
    j->audio = (const uint8_t *)f.audio->value;
    j->audio_len = f.audio->value_len;
    j->opts.out_rate = TH_VLIB_RATE;
    j->opts.max_seconds = hub->cfg->voice_library.max_seconds;
    j->min_s = hub->cfg->voice_library.min_seconds;
    j->silence_dbfs = hub->cfg->voice_library.silence_dbfs;
    j->work.data = j;
    if (uv_queue_work(hub->loop, &j->work, x_work, x_after) != 0) {
        xjob_free(j);
        xerr(c, 500, "internal_error", "cannot queue the decode");
    }
}
