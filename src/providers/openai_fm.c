/* openai_fm: the ttsfm form protocol, POST {base_url}/api/generate (openai.fm, a ttsfm server, or another
 * ttshub).
 *
 * Request: application/x-www-form-urlencoded fields input, voice, response_format, generation (when
 * given), prompt (when given); `Authorization: Bearer <key>` when api_key_env is set.
 *   - response_format: the client's format when it is in `formats` (default [mp3, wav], all such an
 *     upstream can make), else wav, which the hub transcodes (lossless and cheap to decode).
 *   - speed is not sent: openai.fm has no such field (it is a ttshub extension), so the hub applies
 *     tempo itself (caps.native_speed false).
 * Success: the whole file (mp3 or wav, 24 kHz). Errors {"error":{message,type,code}}, mapped by status
 * (th_upstream_error_generic: 400/404/413/415/422 CLIENT, 401/403 STATUS, 429 OVERLOADED, 5xx STATUS);
 * an HTML 500 page is shown as an excerpt. Probe: GET {base_url}/ (ttsfm serves its page there; a 404
 * still shows that the server is up). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define FM_DEFAULT_FORMATS ((1u << TH_FMT_MP3) | (1u << TH_FMT_WAV))

static th_fmt fm_pick(const th_provider_conf *pc, const th_synth_req *req)
{
    uint32_t allowed = th_upstream_formats(pc, FM_DEFAULT_FORMATS);
    if (req->want_fmt != TH_FMT_NONE && th_fmt_name(req->want_fmt) != NULL &&
        (allowed & (1u << req->want_fmt)))
        return req->want_fmt;
    return TH_FMT_WAV;
}

static int fm_need_base(const th_provider_conf *pc, th_perr *err)
{
    if (pc->base_url != NULL && pc->base_url[0] != '\0') return 0;
    th_perr_set(err, TH_PERR_STATUS, 0, "base_url is not set");
    return -1;
}

static int fm_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    if (req->voice == NULL || req->voice[0] == '\0') {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a voice is required");
        return -1;
    }
    if (req->text == NULL || req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the input is empty");
        return -1;
    }
    if (fm_need_base(pc, err) != 0) return -1;
    const char *key;
    if (th_upstream_need_secret(pc, &key, err) != 0) return -1;
    out->method = "POST";
    int rc = th_upstream_url(out, pc->base_url, "/api/generate");
    rc |= th_upstream_header(out, "Content-Type", "application/x-www-form-urlencoded");
    if (key != NULL) rc |= th_upstream_bearer(out, key);
    rc |= th_upstream_form(&out->body, "input", req->text);
    rc |= th_upstream_form(&out->body, "voice", req->voice);
    rc |= th_upstream_form(&out->body, "response_format", th_fmt_name(fm_pick(pc, req)));
    if (req->generation != NULL && req->generation[0] != '\0')
        rc |= th_upstream_form(&out->body, "generation", req->generation);
    if (req->prompt != NULL && req->prompt[0] != '\0')
        rc |= th_upstream_form(&out->body, "prompt", req->prompt);
    if (rc != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request");
        return -1;
    }
    return 0;
}

static void fm_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    spec->fmt = fm_pick(pc, req);
    spec->sample_rate = 0; /* a container: read from the stream */
    spec->channels = 0;
    spec->sample = TH_SAMPLE_S16;
}

static void fm_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    char msg[180] = "";
    json_t *root = len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    json_t *e = json_object_get(root, "error");
    json_t *m = json_is_object(e) ? json_object_get(e, "message") : e;
    if (json_is_string(m))
        th_strlcpy(msg, json_string_value(m), sizeof msg);
    else
        th_upstream_excerpt(body, len, msg, sizeof msg);
    json_t *code = json_is_object(e) ? json_object_get(e, "code") : NULL;
    char full[240];
    if (json_is_string(code))
        snprintf(full, sizeof full, "(%s) %s", json_string_value(code), msg);
    else
        th_strlcpy(full, msg, sizeof full);
    json_decref(root);
    th_upstream_error_generic(status, full, out);
}

static int fm_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    if (pc->base_url == NULL || pc->base_url[0] == '\0') return -1;
    out->method = "GET";
    return th_upstream_url(out, pc->base_url, "/");
}

const th_upstream_kind th_kind_openai_fm = {
    .kind = "openai_fm",
    .caps =
        {
            .formats = FM_DEFAULT_FORMATS,
            .max_input_chars = 4096, /* openai.fm (and ttsfm) reject longer input */
            .streaming = false,
            .native_speed = false,
        },
    .build = fm_build,
    .body_spec = fm_body_spec,
    .body_is_error = NULL,
    .error = fm_error,
    .probe = fm_probe,
};
