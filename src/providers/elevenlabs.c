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
 * Probe: GET /v1/models with the key. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define EL_DEFAULT_BASE "https://api.elevenlabs.io"
#define EL_DEFAULT_FORMAT "mp3_44100_128"
#define EL_DEFAULT_MODEL "eleven_multilingual_v2"

static const char *el_base(const th_provider_conf *pc)
{
    return pc->base_url != NULL && pc->base_url[0] != '\0' ? pc->base_url : EL_DEFAULT_BASE;
}

/* output_format -> spec; -1 when the hub cannot take it. */
static int el_format(const char *name, th_audio_spec *spec)
{
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
    if (req->voice == NULL || req->voice[0] == '\0') {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a voice id is required");
        return -1;
    }
    if (req->text == NULL || req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the text is empty");
        return -1;
    }
    const char *ofmt = th_upstream_opt(pc, "output_format", EL_DEFAULT_FORMAT);
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
    rc |= th_upstream_urlencode(&path, req->voice, strlen(req->voice));
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
    rc |= th_upstream_json_str(b, "model_id", th_upstream_opt(pc, "model_id", EL_DEFAULT_MODEL));
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
    if (el_format(th_upstream_opt(pc, "output_format", EL_DEFAULT_FORMAT), &s) != 0) return;
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
};
