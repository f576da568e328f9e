/* voices: the voice library's routes (API.md "Voice-clone routes").
 *
 *   POST   /api/extract_voice        multipart: audio, voice_id?, voice_name?, engine?, reference_text?,
 * language? GET    /api/voices               the caller's library voices plus the configured ones GET
 * /api/voices/{id} GET    /api/voices/{id}/audio    the stored reference (owner or admin) PATCH
 * /api/voices/{id}          {voice_name?, reference_text?} DELETE /api/voices/{id}          also tells every
 * engine holding a copy to drop it POST   /api/synthesize           {text, voice_id, engine?, language?,
 * output_format?, speed?, pitch?}
 *
 * A voice belongs to the tenant that made it; for any other tenant it does not exist (404 on every
 * route), so ids do not leak through reads. Admins see every voice. Errors use the voice-clone shape
 * {"success":false,"message","code"} with real statuses. Uploads are decoded off the loop. */
#include "api/api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audio/decode.h"
#include "audio/wav.h"
#include "core/clock.h"
#include "core/str.h"
#include "core/uuid.h"
#include "http/body.h"
#include "cluster/nodevoice.h"
#include "voice/library.h"

#define LIST_MAX 10000
#define MIN_ACTIVE_SECONDS 0.5 /* less audible audio than this is a silent reference */

/* ---- helpers ---- */

static bool is_admin(const th_api_ctx *c)
{
    return th_auth_is_admin(&c->id);
}

static size_t tenant_cap(const th_api_ctx *c)
{
    if (c->tconf && c->tconf->max_voices > 0) return (size_t)c->tconf->max_voices;
    return (size_t)c->hub->cfg->voice_library.max_per_tenant;
}

static bool word_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
              ch == '-'))
            return false;
    }
    return true;
}

/* Printable UTF-8 of at most max bytes (tabs and newlines allowed in text). */
static bool text_ok(const char *s, size_t len, size_t max, bool multiline)
{
    if (len > max || th_utf8_count(s, len) < 0) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 && !(multiline && (ch == '\n' || ch == '\t' || ch == '\r'))) return false;
        if (ch == 0x7f) return false;
    }
    return true;
}

static void iso_time(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (gmtime_r(&t, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        th_strlcpy(out, "", 32);
}

static json_t *voice_json(const th_vlib_meta *m)
{
    char created[32], updated[32];
    iso_time(m->created_ms, created);
    iso_time(m->updated_ms, updated);
    return json_pack("{s:s,s:s,s:s,s:s?,s:s,s:f,s:s,s:s,s:s,s:s,s:i,s:I,s:s,s:s}", "voice_id", m->id, "name",
                     m->name, "voice_name", m->name, "engine", m->engine[0] ? m->engine : NULL, "language",
                     m->language, "duration_seconds", m->duration_s, "created_at", created, "updated_at",
                     updated, "owner", m->tenant, "reference_text", m->text, "sample_rate", m->rate, "size",
                     (json_int_t)m->wav_len, "sha256", m->sha256, "type", "cloned");
}

static json_t *configured_json(const th_voice_conf *v)
{
    json_t *prov = json_array();
    for (size_t i = 0; prov && i < v->n_providers; i++)
        json_array_append_new(prov, json_string(v->providers[i].key));
    return json_pack("{s:s,s:s,s:s,s:o,s:n,s:s}", "voice_id", v->id, "name", v->id, "language",
                     v->language ? v->language : "", "providers", prov ? prov : json_array(), "owner", "type",
                     "configured");
}

/* The library voice id (from the path) if the caller may see it; otherwise answers 404 and gives NULL. */
static const th_vlib_meta *visible_voice(th_api_ctx *c, const char *id)
{
    const th_vlib_meta *m = NULL;
    if (id && th_vlib_id_ok(id, strlen(id)) && c->hub->vlib) m = th_vlib_find(c->hub->vlib, id);
    if (m && !th_vlib_visible(m, c->id.tenant, is_admin(c))) m = NULL;
    if (m == NULL)
        th_api_error(c, 404, "not_found_error", "voice_not_found", "no voice '%.64s'", id ? id : "");
    return m;
}

static int begin(th_http_req *req, const char *route, th_api_ctx **out)
{
    th_api_ctx *c = th_http_get_data(req);
    c->shape = TH_SHAPE_CLONE;
    c->route = route;
    *out = c;
    if (th_api_auth(c, false) != 0) return -1;
    if (c->hub->vlib == NULL) {
        th_api_error(c, 503, NULL, "voice_library_unavailable", "the voice library is not available");
        return -1;
    }
    const char *id = th_http_param(req, "id");
    if (id && c->voice == NULL) c->voice = th_strndup(id, strnlen(id, TH_VLIB_ID_MAX + 1));
    c->library_voice = id != NULL;
    return 0;
}

static void store_error(th_api_ctx *c, th_vlib_rc rc, const char *id)
{
    switch (rc) {
    case TH_VLIB_TAKEN:
        th_api_error(c, 409, NULL, "voice_exists", "voice id '%.64s' is already taken", id);
        break;
    case TH_VLIB_FULL:
        th_api_error(c, 403, "permission_error", "voice_limit_reached",
                     "the voice library limit is reached (%zu voices for this tenant); delete a voice first",
                     tenant_cap(c));
        break;
    case TH_VLIB_MISSING:
        th_api_error(c, 404, "not_found_error", "voice_not_found", "no voice '%.64s'", id);
        break;
    case TH_VLIB_NOMEM:
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        break;
    default:
        th_api_error(c, 503, NULL, "voice_store_error", "the voice store is unavailable; try again");
        break;
    }
}

/* ---- POST /api/extract_voice ---- */

typedef struct extract_job {
    th_api_ctx *c;
    uv_work_t work;
    th_form form;
    const uint8_t *audio;
    size_t audio_len;
    th_dec_opts opts;
    double min_s, silence_dbfs;
    /* results */
    th_dec_rc drc;
    char err[256];
    uint8_t *wav;
    size_t wav_len;
    th_dec_level level;
    th_vlib_meta m;
    th_limiter *limiter;
    th_limit_slot *slot; /* the upload's concurrency slot, held until it is answered */
} extract_job;

static void job_free(extract_job *j)
{
    if (j->slot) th_limit_release(j->limiter, j->slot);
    th_form_free(&j->form);
    free(j->wav);
    th_vlib_meta_free(&j->m);
    free(j);
}

static void extract_work(uv_work_t *w)
{
    extract_job *j = w->data;
    j->drc = th_vlib_normalise(j->audio, j->audio_len, &j->opts, j->silence_dbfs, &j->m, &j->level, &j->wav,
                               &j->wav_len, j->err, sizeof j->err);
}

static void created(void *ud, th_vlib_rc rc, const char *err)
{
    extract_job *j = ud;
    th_api_ctx *c = j->c;
    (void)err;
    if (rc != TH_VLIB_OK) {
        store_error(c, rc, j->m.id);
        job_free(j);
        return;
    }
    TH_LOG(c->hub->log, TH_LOG_INFO, "voice %s made by tenant '%s' (%.2f s, %s)", j->m.id, j->m.tenant,
           j->m.duration_s, th_vlib_backend(c->hub->vlib));
    th_nodevoice_voice_added(c->hub->nodevoice, j->m.id); /* seed-2 nodes get it now */
    json_t *o = json_pack("{s:b,s:s,s:s,s:s?,s:f,s:s,s:s}", "success", 1, "voice_id", j->m.id, "voice_name",
                          j->m.name, "engine", j->m.engine[0] ? j->m.engine : NULL, "duration_seconds",
                          j->m.duration_s, "sha256", j->m.sha256, "owner", j->m.tenant);
    char loc[TH_VLIB_ID_MAX + 16];
    snprintf(loc, sizeof loc, "/api/voices/%s", j->m.id);
    th_http_set_header(c->req, "Location", loc);
    job_free(j);
    th_api_json(c, 201, o);
}

static void extract_after(uv_work_t *w, int status)
{
    extract_job *j = w->data;
    th_api_ctx *c = j->c;
    th_hub *hub = c->hub;
    const char *fail_code = NULL;
    int fail_status = 400;
    char msg[320] = "";
    double min_s = j->min_s, max_s = j->opts.max_seconds;
    if (status != 0) {
        fail_status = 500;
        fail_code = "internal_error";
        snprintf(msg, sizeof msg, "the upload could not be processed");
    } else if (j->drc == TH_DEC_NOT_AUDIO) {
        fail_status = 415;
        fail_code = "unsupported_audio";
        snprintf(msg, sizeof msg,
                 "'audio' is not an audio file this hub reads (wav, mp3, ogg/opus, flac, m4a, "
                 "webm): %.150s",
                 j->err);
    } else if (j->drc == TH_DEC_BROKEN) {
        fail_code = "invalid_audio";
        snprintf(msg, sizeof msg, "'audio' cannot be decoded: %.200s", j->err);
    } else if (j->drc == TH_DEC_TOO_LONG) {
        fail_code = "audio_too_long";
        snprintf(msg, sizeof msg, "the reference is longer than %g seconds", max_s);
    } else if (j->drc != TH_DEC_OK) {
        fail_status = 500;
        fail_code = "internal_error";
        snprintf(msg, sizeof msg, "out of memory");
    } else if (j->m.duration_s < min_s) {
        fail_code = "audio_too_short";
        snprintf(msg, sizeof msg, "the reference is %.2f seconds; at least %g are needed", j->m.duration_s,
                 min_s);
    } else if (j->level.active_seconds < MIN_ACTIVE_SECONDS) {
        fail_code = "audio_silent";
        snprintf(msg, sizeof msg, "the reference is silent (peak %.1f dBFS)", j->level.peak_dbfs);
    }
    if (fail_code) {
        th_vlib_unreserve(hub->vlib, j->m.id);
        job_free(j);
        th_api_error(c, fail_status, NULL, fail_code, "%s", msg);
        return;
    }
    uint8_t *wav = j->wav;
    size_t len = j->wav_len;
    j->wav = NULL;
    j->m.created_ms = j->m.updated_ms = (int64_t)th_wall_ms();
    th_vlib_create(hub->vlib, &j->m, wav, len, tenant_cap(c), created, j);
}

static const th_field *form_str(const th_form *f, const char *name)
{
    const th_field *fl = th_form_get(f, name);
    if (fl == NULL || fl->is_null || fl->is_json) return NULL;
    return fl;
}

static void extract_reserve(extract_job *j)
{
    th_api_ctx *c = j->c;
    th_hub *hub = c->hub;
    th_vlib_rc vr = th_vlib_reserve(hub->vlib, j->m.id, c->id.tenant, tenant_cap(c));
    if (vr != TH_VLIB_OK) {
        store_error(c, vr, j->m.id);
        job_free(j);
        return;
    }
    j->work.data = j;
    if (uv_queue_work(hub->loop, &j->work, extract_work, extract_after) != 0) {
        th_vlib_unreserve(hub->vlib, j->m.id);
        job_free(j);
        th_api_error(c, 500, NULL, "internal_error", "cannot queue the decode");
    }
}

static void extract_limited(void *ud, const th_limit_result *res)
{
    extract_job *j = ud;
    th_api_ctx *c = j->c;
    if (res->allowed) j->slot = res->slot;
    if (!res->allowed) {
        c->retry_after_s = res->retry_after_s > 0 ? (int)res->retry_after_s : 1;
        if (c->hub->metrics)
            th_metrics_add(c->hub->metrics, TH_M_REJECTIONS,
                           (const char *[]){res->reason ? res->reason : "limit", NULL}, 1);
        int status = res->status ? res->status : 429;
        job_free(j);
        th_api_error(c, status, status == 429 ? "rate_limit_error" : "service_unavailable", res->reason,
                     "rate limit reached (%s); retry in %d s", res->reason ? res->reason : "limit",
                     c->retry_after_s);
        return;
    }
    extract_reserve(j);
}

/* The form fields of an extraction. */
typedef struct ex_fields {
    const th_field *audio, *id, *name, *engine, *text, *lang;
} ex_fields;

/* What is wrong with the optional fields (with its code), or NULL. */
static const char *bad_fields(const ex_fields *f, const char **code)
{
    if (f->id && f->id->value_len > 0 && !th_vlib_id_ok(f->id->value, f->id->value_len)) {
        *code = "invalid_voice_id";
        return "'voice_id' must be 1-64 letters, digits, '_' or '-'";
    }
    if (f->name && !text_ok(f->name->value, f->name->value_len, TH_VLIB_NAME_MAX, false)) {
        *code = "invalid_voice_name";
        return "'voice_name' must be printable UTF-8 of at most 256 bytes";
    }
    if (f->engine && (!word_ok(f->engine->value, 64) || memchr(f->engine->value, 0, f->engine->value_len))) {
        *code = "invalid_engine";
        return "'engine' must be a provider name or kind";
    }
    if (f->text && !text_ok(f->text->value, f->text->value_len, TH_VLIB_TEXT_MAX, true)) {
        *code = "invalid_reference_text";
        return "'reference_text' must be UTF-8 of at most 4096 bytes";
    }
    if (f->lang && (!word_ok(f->lang->value, 35) || memchr(f->lang->value, 0, f->lang->value_len))) {
        *code = "invalid_language";
        return "'language' must be a language tag such as en or zh-CN";
    }
    return NULL;
}

/* The multipart body into j->form and f, checked. 0, or -1 when an error was sent (j is freed). */
static int read_form(extract_job *j, const char *ct, ex_fields *f)
{
    th_api_ctx *c = j->c;
    size_t blen = 0;
    const uint8_t *body = th_http_body(c->req, &blen);
    char err[256] = "";
    int rc = th_form_parse_multipart(&j->form, ct, body, blen, err, sizeof err);
    if (rc != TH_BODY_OK) {
        job_free(j);
        if (rc == TH_BODY_NOMEM)
            th_api_error(c, 500, NULL, "internal_error", "out of memory");
        else
            th_api_error(c, 400, NULL, "malformed_body", "%s", err[0] ? err : "malformed multipart body");
        return -1;
    }
    f->audio = th_form_get(&j->form, "audio");
    if (f->audio == NULL) f->audio = th_form_get(&j->form, "file");
    if (f->audio == NULL || f->audio->value_len == 0) {
        job_free(j);
        if (f->audio == NULL)
            th_api_error(c, 400, NULL, "missing_audio", "the 'audio' file field is required");
        else
            th_api_error(c, 400, NULL, "empty_audio", "the 'audio' file is empty");
        return -1;
    }
    f->id = form_str(&j->form, "voice_id");
    f->name = form_str(&j->form, "voice_name");
    f->engine = form_str(&j->form, "engine");
    f->text = form_str(&j->form, "reference_text");
    f->lang = form_str(&j->form, "language");
    if (f->name == NULL) f->name = form_str(&j->form, "name");
    if (f->text == NULL) f->text = form_str(&j->form, "text");
    const char *code = NULL, *bad = bad_fields(f, &code);
    if (bad) {
        job_free(j);
        th_api_error(c, 400, NULL, code, "%s", bad);
        return -1;
    }
    return 0;
}

/* The voice's id (given, or v_ + 16 characters of a uuid) and record. 0, or -1 on ENOMEM. */
static int set_meta(extract_job *j, const ex_fields *f)
{
    th_api_ctx *c = j->c;
    if (f->id && f->id->value_len > 0) {
        memcpy(j->m.id, f->id->value, f->id->value_len);
        j->m.id[f->id->value_len] = 0;
    } else {
        char u[TH_UUID_LEN + 1];
        th_uuid_gen_next(&c->hub->ids, u);
        snprintf(j->m.id, sizeof j->m.id, "v_%.8s%.4s%.4s", u, u + 9, u + 14);
    }
    free(c->voice);
    c->voice = th_strndup(j->m.id, strlen(j->m.id));
    c->library_voice = true;
    if (th_vlib_meta_set(&j->m.name, f->name && f->name->value_len ? f->name->value : j->m.id) ||
        th_vlib_meta_set(&j->m.tenant, c->id.tenant) ||
        th_vlib_meta_set(&j->m.engine, f->engine ? f->engine->value : "") ||
        th_vlib_meta_set(&j->m.text, f->text ? f->text->value : "") ||
        th_vlib_meta_set(&j->m.language, f->lang ? f->lang->value : ""))
        return -1;
    return 0;
}

void th_api_voices_extract(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c;
    if (begin(req, "/api/extract_voice", &c) != 0) return;
    th_hub *hub = c->hub;
    const char *ct = th_http_header(req, "Content-Type");
    if (ct == NULL || !th_strn_ieq(ct, strlen(ct) < 19 ? strlen(ct) : 19, "multipart/form-data")) {
        th_api_error(c, 415, NULL, "unsupported_media_type",
                     "send multipart/form-data with the reference in the 'audio' field");
        return;
    }
    extract_job *j = calloc(1, sizeof *j);
    if (j == NULL) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    j->c = c;
    th_form_init(&j->form);
    ex_fields f;
    if (read_form(j, ct, &f) != 0) return;
    if (set_meta(j, &f) != 0) {
        job_free(j);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    j->audio = (const uint8_t *)f.audio->value;
    j->audio_len = f.audio->value_len;
    j->opts.out_rate = TH_VLIB_RATE;
    j->opts.max_seconds = hub->cfg->voice_library.max_seconds;
    j->min_s = hub->cfg->voice_library.min_seconds;
    j->silence_dbfs = hub->cfg->voice_library.silence_dbfs;
    if (hub->limiter == NULL) {
        extract_reserve(j);
        return;
    }
    /* an upload is decoded: it passes the same rate limits as a synthesis */
    j->limiter = hub->limiter;
    th_limit_req lr = {
        .ip = th_http_peer(req),
        .tenant = c->tconf ? c->tconf->name : "",
        .key_id = c->id.method[0] == 'k' ? c->id.subject : "",
        .tconf = c->tconf,
    };
    th_limit_check(hub->limiter, &lr, th_wall_ms(), extract_limited, j);
}

/* ---- GET /api/voices, GET /api/voices/{id} ---- */

void th_api_voices_list(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c;
    if (begin(req, "/api/voices", &c) != 0) return;
    th_hub *hub = c->hub;
    const th_vlib_meta **v = malloc(LIST_MAX * sizeof *v);
    json_t *arr = json_array();
    if (v == NULL || arr == NULL) {
        free(v);
        json_decref(arr);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    size_t n = th_vlib_list(hub->vlib, c->id.tenant, is_admin(c), v, LIST_MAX);
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, voice_json(v[i]));
    free(v);
    for (size_t i = 0; i < hub->cfg->n_voices; i++) {
        const th_voice_conf *vc = &hub->cfg->voices[i];
        if (c->tconf && !th_auth_voice_allowed(c->tconf, vc->id)) continue;
        if (th_vlib_find(hub->vlib, vc->id)) continue; /* a library id shadows the catalogue */
        json_array_append_new(arr, configured_json(vc));
    }
    json_t *o =
        json_pack("{s:b,s:o,s:I}", "success", 1, "voices", arr, "count", (json_int_t)json_array_size(arr));
    th_api_json(c, 200, o);
}

void th_api_voices_get(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c;
    if (begin(req, "/api/voices/{id}", &c) != 0) return;
    const char *id = th_http_param(req, "id");
    const th_vlib_meta *m = th_vlib_id_ok(id, strlen(id)) ? th_vlib_find(c->hub->vlib, id) : NULL;
    if (m == NULL || !th_vlib_visible(m, c->id.tenant, is_admin(c))) {
        for (size_t i = 0; m == NULL && i < c->hub->cfg->n_voices; i++) {
            const th_voice_conf *vc = &c->hub->cfg->voices[i];
            if (strcmp(vc->id, id) == 0 && (c->tconf == NULL || th_auth_voice_allowed(c->tconf, vc->id))) {
                json_t *o = json_pack("{s:b,s:o}", "success", 1, "voice", configured_json(vc));
                th_api_json(c, 200, o);
                return;
            }
        }
        if (visible_voice(c, id) == NULL) return; /* answers 404 */
    }
    json_t *o = json_pack("{s:b,s:o}", "success", 1, "voice", voice_json(m));
    th_api_json(c, 200, o);
}

/* ---- GET /api/voices/{id}/audio ---- */

static void audio_ready(void *ud, th_vlib_use *u, th_vlib_rc rc)
{
    th_api_ctx *c = ud;
    if (u == NULL) {
        store_error(c, rc == TH_VLIB_MISSING ? TH_VLIB_MISSING : TH_VLIB_IO, c->voice ? c->voice : "");
        return;
    }
    size_t len;
    const uint8_t *wav = th_vlib_use_wav(u, &len);
    th_http_set_header(c->req, "Cache-Control", "no-store");
    th_http_set_header(c->req, "X-Voice-Sha256", th_vlib_use_ref(u)->sha256);
    c->fmt = TH_FMT_WAV;
    th_api_reply(c, 200, "audio/wav", wav, len);
    th_vlib_use_release(u);
}

void th_api_voices_audio(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c;
    if (begin(req, "/api/voices/{id}/audio", &c) != 0) return;
    const th_vlib_meta *m = visible_voice(c, th_http_param(req, "id"));
    if (m == NULL) return;
    th_vlib_acquire(c->hub->vlib, m->id, audio_ready, c);
}

/* ---- PATCH /api/voices/{id} ---- */

static void updated(void *ud, th_vlib_rc rc, const char *err)
{
    th_api_ctx *c = ud;
    (void)err;
    const th_vlib_meta *m = rc == TH_VLIB_OK ? th_vlib_find(c->hub->vlib, c->voice) : NULL;
    if (m == NULL) {
        store_error(c, rc == TH_VLIB_OK ? TH_VLIB_MISSING : rc, c->voice ? c->voice : "");
        return;
    }
    json_t *o = json_pack("{s:b,s:o}", "success", 1, "voice", voice_json(m));
    th_api_json(c, 200, o);
}

void th_api_voices_patch(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c;
    if (begin(req, "/api/voices/{id}", &c) != 0) return;
    const th_vlib_meta *m = visible_voice(c, th_http_param(req, "id"));
    if (m == NULL) return;
    json_t *body = th_api_body_object(c, false, "malformed_body");
    if (body == NULL) return;
    json_t *name = json_object_get(body, "voice_name");
    if (name == NULL) name = json_object_get(body, "name");
    json_t *text = json_object_get(body, "reference_text");
    const char *bad = NULL, *code = NULL;
    if (name == NULL && text == NULL) {
        bad = "send 'voice_name' and/or 'reference_text'";
        code = "nothing_to_change";
    } else if (name &&
               (!json_is_string(name) || json_string_length(name) == 0 ||
                !text_ok(json_string_value(name), json_string_length(name), TH_VLIB_NAME_MAX, false))) {
        bad = "'voice_name' must be printable UTF-8 of 1-256 bytes";
        code = "invalid_voice_name";
    } else if (text && (!json_is_string(text) || !text_ok(json_string_value(text), json_string_length(text),
                                                          TH_VLIB_TEXT_MAX, true))) {
        bad = "'reference_text' must be UTF-8 of at most 4096 bytes";
        code = "invalid_reference_text";
    }
    if (bad) {
        json_decref(body);
        th_api_error(c, 400, NULL, code, "%s", bad);
        return;
    }
    char id[TH_VLIB_ID_MAX + 1];
    th_strlcpy(id, m->id, sizeof id);
    th_vlib_update(c->hub->vlib, id, name ? json_string_value(name) : NULL,
                   text ? json_string_value(text) : NULL, updated, c);
    json_decref(body);
}

/* ---- DELETE /api/voices/{id} ---- */

typedef struct del_job {
    th_api_ctx *c;
    th_vlib_meta m;
} del_job;

static void deleted(void *ud, th_vlib_rc rc, const char *err)
{
    del_job *d = ud;
    th_api_ctx *c = d->c;
    th_hub *hub = c->hub;
    (void)err;
    if (rc != TH_VLIB_OK) {
        store_error(c, rc, d->m.id);
    } else {
        /* every engine that may hold a copy drops it (those with a delete call) */
        th_voice_ref ref = th_vlib_forget_ref(&d->m);
        for (size_t i = 0; i < hub->n_providers; i++) {
            th_provider *p = hub->providers[i];
            if (p && p->ops->voice_forget) p->ops->voice_forget(p, &ref);
        }
        /* seed-2 workers have no delete call: the registry forgets which nodes hold it */
        if (hub->registry) th_registry_voice_set(hub->registry, NULL, d->m.id, NULL, false);
        TH_LOG(hub->log, TH_LOG_INFO, "voice %s deleted", d->m.id);
        json_t *o = json_pack("{s:b,s:s,s:s}", "success", 1, "voice_id", d->m.id, "message", "voice deleted");
        th_api_json(c, 200, o);
    }
    th_vlib_meta_free(&d->m);
    free(d);
}

void th_api_voices_delete(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c;
    if (begin(req, "/api/voices/{id}", &c) != 0) return;
    const th_vlib_meta *m = visible_voice(c, th_http_param(req, "id"));
    if (m == NULL) return;
    del_job *d = calloc(1, sizeof *d);
    if (d == NULL || th_vlib_meta_copy(&d->m, m) != 0) {
        free(d);
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        return;
    }
    d->c = c;
    th_vlib_delete(c->hub->vlib, d->m.id, deleted, d);
}

/* ---- POST /api/synthesize ---- */

static bool engine_known(const th_hub *hub, const char *engine)
{
    for (size_t i = 0; i < hub->cfg->n_providers; i++) {
        const th_provider_conf *pc = &hub->cfg->providers[i];
        if (strcmp(pc->name, engine) == 0 || strcmp(pc->type, engine) == 0) return true;
        if (pc->engine != NULL && strcmp(pc->engine, engine) == 0)
            return true; /* a nodes provider's engine */
    }
    return false;
}

/* Shared by /api/synthesize and /api/batch_synthesize: the fields besides the text. 0, or -1 with the error
 * answered. */
int th_api_clone_fields(th_api_ctx *c, const th_form *f, th_synth_params *p)
{
    const th_field *voice = form_str(f, "voice_id");
    if (voice == NULL) voice = form_str(f, "voice");
    if (voice == NULL || voice->value_len == 0) {
        th_api_error(c, 400, NULL, "missing_voice_id", "'voice_id' is required");
        return -1;
    }
    if (voice->value_len > 256 || memchr(voice->value, 0, voice->value_len)) {
        th_api_error(c, 400, NULL, "invalid_voice_id", "'voice_id' is not a voice id");
        return -1;
    }
    if (c->voice == NULL) c->voice = th_strndup(voice->value, voice->value_len);
    const th_field *eng = form_str(f, "engine");
    if (eng && eng->value_len > 0) {
        if (!word_ok(eng->value, 64) || !engine_known(c->hub, eng->value)) {
            th_api_error(c, 400, NULL, "unknown_engine", "'engine' names no configured provider or kind");
            return -1;
        }
        c->only_engine = th_strndup(eng->value, eng->value_len);
        if (c->only_engine == NULL) {
            th_api_error(c, 500, NULL, "internal_error", "out of memory");
            return -1;
        }
    }
    const th_field *of = form_str(f, "output_format");
    if (of == NULL) of = form_str(f, "response_format");
    th_fmt fmt;
    if (th_api_check_format(c, "output_format", of && of->value_len ? of->value : "wav", &fmt) != 0)
        return -1;
    double speed;
    const th_field *sp = form_str(f, "speed");
    if (th_api_check_speed(c, "speed", sp ? sp->value : NULL, &speed) != 0) return -1;
    const th_field *pitch = form_str(f, "pitch");
    double pv = 0.0; /* seed-2's SynthesizeRequest: a ratio 0.5..2.0, 1.0 = the voice's own */
    if (pitch && pitch->value_len && th_str_to_double(pitch->value, 0.5, 2.0, &pv) != 0) {
        th_api_error(c, 400, NULL, "invalid_pitch",
                     "'pitch' must be a number from 0.5 to 2.0 (1 = the voice's own)");
        return -1;
    }
    const th_field *lang = form_str(f, "language");
    if (lang && (!word_ok(lang->value, 35) || memchr(lang->value, 0, lang->value_len))) {
        th_api_error(c, 400, NULL, "invalid_language",
                     "'language' must be a language tag such as en or zh-CN");
        return -1;
    }
    p->voice = voice->value;
    p->language = lang && lang->value_len ? lang->value : NULL;
    p->fmt = fmt;
    p->speed = speed;
    p->pitch = pv; /* engines without a pitch control ignore it */
    p->generation = c->rid;
    return 0;
}

void th_api_clone_synthesize(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c = th_http_get_data(req);
    c->shape = TH_SHAPE_CLONE;
    c->route = "/api/synthesize";
    if (th_api_auth(c, false) != 0) return;
    size_t blen = 0;
    const uint8_t *body = th_http_body(req, &blen);
    th_form form;
    th_form_init(&form);
    char err[256] = "";
    int rc = th_body_parse(&form, th_http_header(req, "Content-Type"), body, blen, err, sizeof err);
    if (rc == TH_BODY_UNSUPPORTED) {
        th_api_error(c, 415, NULL, "unsupported_media_type", "send application/json (%s)", err);
        goto out;
    }
    if (rc != TH_BODY_OK) {
        if (rc == TH_BODY_NOMEM)
            th_api_error(c, 500, NULL, "internal_error", "out of memory");
        else
            th_api_error(c, 400, NULL, "malformed_body", "%s", err[0] ? err : "malformed request body");
        goto out;
    }
    const th_field *text = form_str(&form, "text");
    if (text == NULL) text = form_str(&form, "input");
    size_t chars = 0;
    if (th_api_check_input(c, "text", text ? text->value : NULL, text ? text->value_len : 0, &chars) != 0)
        goto out;
    if (memchr(text->value, 0, text->value_len) != NULL) {
        th_api_error(c, 400, NULL, "invalid_input", "'text' must not contain NUL bytes");
        goto out;
    }
    th_synth_params p = {.text = text->value, .text_len = text->value_len, .chars = chars};
    if (th_api_clone_fields(c, &form, &p) != 0) goto out;
    th_api_speak(c, &p);
out:
    th_form_free(&form);
}
