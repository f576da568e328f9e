/* elevenlabs: POST {base_url}/v1/text-to-speech/{voice_id}/stream?output_format=... (ENGINES.md §7).
 *
 * Request: header xi-api-key (when api_key_env is set), JSON {text, model_id, voice_settings{speed}}.
 *   - base_url defaults to https://api.elevenlabs.io; the voice id is percent-encoded into the path.
 *   - output_format: the option (mp3_44100_128). mp3_* -> MP3, pcm_<rate> -> headerless s16le mono at
 *     that rate, opus_48000_* -> Ogg Opus. ulaw_8000/alaw_8000 (and anything else) are refused as a
 *     config error (STATUS): the hub has no mu-law/A-law decoder. The format is not chosen per request:
 *     higher tiers gate some formats, so the operator picks one that the account has.
 *   - model_id: the option (eleven_multilingual_v2).
 *   - voice_settings.speed only when speed != 1; the native range is [0.7, 1.2] (the hub clamps to
 *     it and makes up the rest with tempo).
 * Errors {"detail":{"status","message"}} (or FastAPI's {"detail":[...]} list on 422): by detail.status
 * first - voice_not_found, invalid_voice_settings, empty_text, invalid_json -> CLIENT; quota_exceeded,
 * invalid_api_key, model_not_found (model_id comes from our config) -> STATUS;
 * too_many_concurrent_requests, system_busy -> OVERLOADED - then by status: 400/404/413/415/422 -> CLIENT,
 * 401/403 -> STATUS, 429 -> OVERLOADED, 5xx -> STATUS.
 * caps.max_input_chars 5000: the smallest per-request limit of the current models is 10,000 characters
 * (eleven_multilingual_v2) and shorter pieces start playing sooner; the hub splits longer text.
 * Probe: GET /v1/models with the key.
 * A library voice (req->ref) becomes a remote voice once per provider: named "ttshub-<id>-<sha256 first 16>",
 * looked up first in GET /v1/voices (so a restarted hub, or a second hub on the same account, reuses it
 * instead of adding a duplicate), else added with POST /v1/voices/add (multipart name, files, description).
 * Its voice_id is kept in the provider (keyed by voice id and sha256) and spoken like any voice id; a
 * voice_not_found for it makes the provider look it up (or add it) again, once. voice_forget deletes it
 * (DELETE /v1/voices/{voice_id}, looking the id up by name when this provider does not know it). */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define EL_DEFAULT_BASE "https://api.elevenlabs.io"

static const char *el_base(const th_provider_conf *pc)
{
    return pc->base_url != NULL && pc->base_url[0] != '\0' ? pc->base_url : EL_DEFAULT_BASE;
}

/* output_format -> spec; -1 when the hub cannot take it. */
static int el_format(const char *name, th_audio_spec *spec)
{
    if (name == NULL) return -1; /* a conf without its kind's defaults */
    int64_t rate = 0;
    spec->channels = 1;
    spec->sample = TH_SAMPLE_S16;
    if (th_str_startswith(name, "mp3_")) {
        const char *r = name + 4, *us = strchr(r, '_');
        if (us == NULL || th_strn_to_i64(r, (size_t)(us - r), 8000, 48000, &rate) != 0) return -1;
        spec->fmt = TH_FMT_MP3;
        spec->sample_rate = (int)rate;
        return 0;
    }
    if (th_str_startswith(name, "pcm_")) {
        if (th_str_to_i64(name + 4, 8000, 192000, &rate) != 0) return -1;
        spec->fmt = TH_FMT_PCM;
        spec->sample_rate = (int)rate;
        return 0;
    }
    if (th_str_startswith(name, "opus_")) {
        spec->fmt = TH_FMT_OPUS;
        spec->sample_rate = 48000;
        return 0;
    }
    return -1;
}

static int el_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    const char *voice = req->ref != NULL ? out->prepared : req->voice;
    if (voice == NULL || voice[0] == '\0') {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a voice id is required");
        return -1;
    }
    if (req->text == NULL || req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the text is empty");
        return -1;
    }
    const char *ofmt = th_upstream_opt(pc, "output_format", NULL);
    th_audio_spec spec;
    if (el_format(ofmt, &spec) != 0) {
        th_perr_set(err, TH_PERR_STATUS, 0, "output_format %s is not supported (use mp3_*, pcm_* or opus_*)",
                    ofmt);
        return -1;
    }
    const char *key;
    if (th_upstream_need_secret(pc, &key, err) != 0) return -1;
    out->method = "POST";
    th_buf path;
    th_buf_init(&path, 4096);
    int rc = th_buf_append_str(&path, "/v1/text-to-speech/") != TH_BUF_OK;
    rc |= th_upstream_urlencode(&path, voice, strlen(voice));
    rc |= th_buf_append_str(&path, "/stream") != TH_BUF_OK;
    const char *p = th_buf_cstr(&path);
    rc |= p == NULL || th_upstream_url(out, el_base(pc), p) != 0;
    th_buf_free(&path);
    rc |= th_upstream_query(out, "output_format", ofmt);
    rc |= th_upstream_header(out, "Content-Type", "application/json");
    if (key != NULL) rc |= th_upstream_header(out, "xi-api-key", key);
    th_buf *b = &out->body;
    rc |= th_buf_append_byte(b, '{') != TH_BUF_OK;
    rc |= th_upstream_json_str(b, "text", req->text);
    rc |= th_upstream_json_str(b, "model_id", th_upstream_opt(pc, "model_id", NULL));
    if (req->speed > 0 && req->speed != 1.0) {
        char vs[48];
        snprintf(vs, sizeof vs, "{\"speed\":%.4g}", req->speed);
        rc |= th_upstream_json_raw(b, "voice_settings", vs);
    }
    rc |= th_buf_append_byte(b, '}') != TH_BUF_OK;
    if (rc != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request");
        return -1;
    }
    return 0;
}

static void el_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    th_audio_spec s;
    if (el_format(th_upstream_opt(pc, "output_format", NULL), &s) != 0) return;
    if (s.fmt == TH_FMT_PCM && pc->sample_rate > 0) s.sample_rate = pc->sample_rate;
    *spec = s;
}

static void el_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    char st[64] = "", msg[180] = "";
    json_t *root = len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    json_t *d = json_object_get(root, "detail");
    if (json_is_object(d)) {
        json_t *s = json_object_get(d, "status"), *m = json_object_get(d, "message");
        if (json_is_string(s)) th_strlcpy(st, json_string_value(s), sizeof st);
        if (json_is_string(m)) th_strlcpy(msg, json_string_value(m), sizeof msg);
    } else if (json_is_array(d) && json_array_size(d) > 0) {
        json_t *m = json_object_get(json_array_get(d, 0), "msg");
        json_t *loc = json_object_get(json_array_get(d, 0), "loc");
        json_t *last = json_is_array(loc) && json_array_size(loc) > 0
                           ? json_array_get(loc, json_array_size(loc) - 1)
                           : NULL;
        snprintf(msg, sizeof msg, "%s%s%s", json_is_string(last) ? json_string_value(last) : "",
                 json_is_string(last) ? ": " : "",
                 json_is_string(m) ? json_string_value(m) : "validation error");
    } else if (json_is_string(d)) {
        th_strlcpy(msg, json_string_value(d), sizeof msg);
    }
    json_decref(root);
    if (msg[0] == '\0') th_upstream_excerpt(body, len, msg, sizeof msg);

    th_perr_kind k;
    if (strcmp(st, "voice_not_found") == 0 || strcmp(st, "invalid_voice_settings") == 0 ||
        strcmp(st, "empty_text") == 0 || strcmp(st, "invalid_json") == 0)
        k = TH_PERR_CLIENT;
    else if (strcmp(st, "quota_exceeded") == 0 || strcmp(st, "invalid_api_key") == 0 ||
             strcmp(st, "model_not_found") == 0)
        k = TH_PERR_STATUS;
    else if (strcmp(st, "too_many_concurrent_requests") == 0 || strcmp(st, "system_busy") == 0)
        k = TH_PERR_OVERLOADED;
    else {
        th_upstream_error_generic(status, NULL, out);
        k = out->kind;
    }
    if (st[0])
        th_perr_set(out, k, status, "HTTP %d (%s): %s", status, st, msg);
    else
        th_perr_set(out, k, status, "HTTP %d: %s", status, msg);
}

/* ---- library voices ---- */

static void el_name(const th_voice_ref *ref, char *out, size_t n)
{
    snprintf(out, n, "ttshub-%s-%.16s", ref->id, ref->sha256);
}

static int el_ref_key(const th_provider_conf *pc, const th_voice_ref *ref, char *key, size_t n, th_perr *err)
{
    if (!th_voice_id_ok(ref->id) || !th_sha256_hex_ok(ref->sha256)) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "the library voice has a bad id or sha256");
        return -1;
    }
    snprintf(key, n, "%s:%s", ref->id, ref->sha256);
    return 1;
}

static int el_key_header(const th_provider_conf *pc, th_upstream_http *out, th_perr *err)
{
    const char *key;
    th_perr e;
    if (th_upstream_need_secret(pc, &key, err != NULL ? err : &e) != 0) return -1;
    return key != NULL && th_upstream_header(out, "xi-api-key", key) != 0 ? -1 : 0;
}

/* GET /v1/voices */
static int el_list_req(const th_provider_conf *pc, th_upstream_http *out, th_perr *err)
{
    out->method = "GET";
    if (el_key_header(pc, out, err) != 0) return -1;
    return th_upstream_url(out, el_base(pc), "/v1/voices");
}

/* The voice_id of the voice called name in a /v1/voices answer, into id; 0, or -1 when absent. */
static int el_find(const uint8_t *body, size_t len, const char *name, char *id, size_t n)
{
    int rc = -1;
    json_t *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    json_t *voices = json_object_get(root, "voices");
    for (size_t i = 0; json_is_array(voices) && i < json_array_size(voices); i++) {
        json_t *v = json_array_get(voices, i);
        const char *nm = json_string_value(json_object_get(v, "name"));
        const char *vid = json_string_value(json_object_get(v, "voice_id"));
        if (nm != NULL && vid != NULL && vid[0] != 0 && strcmp(nm, name) == 0 && strlen(vid) < n) {
            th_strlcpy(id, vid, n);
            rc = 0;
            break;
        }
    }
    json_decref(root);
    return rc;
}

/* step 0: list; step 1: found -> done, else add; step 2: the add's answer {"voice_id"}. */
static int el_ref_make(const th_provider_conf *pc, const th_voice_ref *ref, int step, int status,
                       const uint8_t *body, size_t len, th_upstream_http *out, char *value, size_t vn,
                       th_perr *err)
{
    char name[128], file[160], boundary[64], ctype[128];
    el_name(ref, name, sizeof name);
    if (step == 0) {
        if (el_list_req(pc, out, err) != 0) {
            if (err->kind == TH_PERR_NONE)
                th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the voice list");
            return -1;
        }
        return 1;
    }
    if (status < 200 || status >= 300) {
        el_error(pc, status, NULL, body, len, err);
        if (err->kind == TH_PERR_CLIENT)
            err->kind = TH_PERR_STATUS; /* our account or request, not the client */
        return -1;
    }
    if (step == 2) {
        json_t *root = len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
        const char *vid = json_string_value(json_object_get(root, "voice_id"));
        int rc = -1;
        if (vid != NULL && vid[0] != 0 && strlen(vid) < vn) {
            th_strlcpy(value, vid, vn);
            rc = 0;
        } else {
            th_perr_set(err, TH_PERR_PROTOCOL, status, "voices/add answered without a voice_id");
        }
        json_decref(root);
        return rc;
    }
    if (el_find(body, len, name, value, vn) == 0) return 0; /* added before: reuse it */
    snprintf(file, sizeof file, "%s.wav", name);
    const char *desc = "ttshub library voice";
    const void *parts[3] = {ref->wav, name, desc};
    const size_t lens[3] = {ref->wav_len, strlen(name), strlen(desc)};
    if (th_upstream_boundary(boundary, sizeof boundary, parts, lens, 3) != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "no multipart boundary fits");
        return -1;
    }
    snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", boundary);
    out->method = "POST";
    if (el_key_header(pc, out, err) != 0) return -1;
    if (th_upstream_url(out, el_base(pc), "/v1/voices/add") != 0 ||
        th_upstream_header(out, "Content-Type", ctype) != 0 ||
        th_upstream_part(&out->body, boundary, "name", NULL, NULL, name, lens[1]) != 0 ||
        th_upstream_part(&out->body, boundary, "description", NULL, NULL, desc, lens[2]) != 0 ||
        th_upstream_part(&out->body, boundary, "files", file, "audio/wav", ref->wav, ref->wav_len) != 0 ||
        th_upstream_parts_end(&out->body, boundary) != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build voices/add (out of memory or too large)");
        return -1;
    }
    return 1;
}

/* voice_not_found for a voice we added: deleted on the account meanwhile. */
static bool el_ref_lost(const th_provider_conf *pc, int status, const uint8_t *body, size_t len)
{
    return (status == 400 || status == 404) && body != NULL &&
           memmem(body, len, "voice_not_found", 15) != NULL;
}

/* value known: step 0 DELETE, step 1 done. Unknown: step 0 list, step 1 DELETE what has our name, step 2
 * done. */
static int el_ref_drop(const th_provider_conf *pc, const th_voice_ref *ref, const char *value, int step,
                       int status, const uint8_t *body, size_t len, th_upstream_http *out)
{
    char name[128], id[128], path[200];
    const char *vid = value;
    if (vid == NULL) {
        if (step == 0) return el_list_req(pc, out, NULL) == 0 ? 1 : 0;
        if (step != 1 || status < 200 || status >= 300) return 0;
        el_name(ref, name, sizeof name);
        if (el_find(body, len, name, id, sizeof id) != 0) return 0; /* not there: nothing to drop */
        vid = id;
    } else if (step != 0) {
        return 0;
    }
    th_buf p;
    th_buf_init(&p, sizeof path);
    int rc =
        th_buf_append_str(&p, "/v1/voices/") != TH_BUF_OK || th_upstream_urlencode(&p, vid, strlen(vid)) != 0;
    const char *ps = rc == 0 ? th_buf_cstr(&p) : NULL;
    out->method = "DELETE";
    rc = ps == NULL || el_key_header(pc, out, NULL) != 0 || th_upstream_url(out, el_base(pc), ps) != 0;
    th_buf_free(&p);
    return rc == 0 ? 1 : 0;
}

static int el_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    out->method = "GET";
    const char *key = th_upstream_secret(pc);
    if (key != NULL && th_upstream_header(out, "xi-api-key", key) != 0) return -1;
    return th_upstream_url(out, el_base(pc), "/v1/models");
}

const th_upstream_kind th_kind_elevenlabs = {
    .kind = "elevenlabs",
    .caps =
        {
            .formats = 1u << TH_FMT_MP3, /* the default output_format; on_format says what really comes */
            .max_input_chars = 5000,
            .streaming = true,
            .can_clone = true,
            .native_speed = true,
            .speed_min = 0.7,
            .speed_max = 1.2,
        },
    .build = el_build,
    .body_spec = el_body_spec,
    .body_is_error = NULL,
    .error = el_error,
    .probe = el_probe,
    .ref_key = el_ref_key,
    .ref_make = el_ref_make,
    .ref_lost = el_ref_lost,
    .ref_drop = el_ref_drop,
};
