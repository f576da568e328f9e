/* openai: OpenAI's POST {base_url}/v1/audio/speech (ENGINES.md §1) and servers compatible with it.
 *
 * Request: JSON {model, input, voice, response_format, speed, instructions, stream_format}, with
 * `Authorization: Bearer <key>` when api_key_env is set.
 *   - model: the `model` option (tts-1). The client's model is a route selector in ttshub, not an
 *     OpenAI model name, so it is not forwarded.
 *   - voice: a string; "voice_..." ids are sent as the custom-voice object {"id": "voice_..."}.
 *   - response_format: the client's format when the engine may emit it (all six by default; the
 *     `formats` key narrows that), so the hub passes it through; otherwise pcm (nothing to decode),
 *     then wav, then whatever is allowed. pcm is headerless s16le mono at 24 kHz (sample_rate overrides
 *     it for compatible servers).
 *   - speed: sent when not 1 (the hub keeps it within [0.25, 4], the native range).
 *   - instructions: the request's prompt, only for models other than tts-1/tts-1-hd (they reject it).
 *   - stream_format "audio" (raw bytes, chunked) when the `stream` option is true (default); with
 *     stream: false the field is left out, for compatible servers that do not know it.
 * Errors {"error":{message,type,param,code}}: 400/413/415/422 -> CLIENT; 401/403 -> STATUS (our key);
 * 404 -> STATUS (unknown model or URL: our config, since the model comes from it); 429 -> OVERLOADED,
 * except code/type insufficient_quota -> STATUS (retrying will not help); 408/504 -> TIMEOUT; 5xx and the
 * rest -> STATUS. Probe: GET /v1/models (no health route exists). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define OAI_DEFAULT_BASE "https://api.openai.com"
#define OAI_RATE 24000
#define OAI_NATIVE                                                                                           \
    ((1u << TH_FMT_MP3) | (1u << TH_FMT_OPUS) | (1u << TH_FMT_AAC) | (1u << TH_FMT_FLAC) |                   \
     (1u << TH_FMT_WAV) | (1u << TH_FMT_PCM))

static const char *oai_base(const th_provider_conf *pc)
{
    return pc->base_url != NULL && pc->base_url[0] != '\0' ? pc->base_url : OAI_DEFAULT_BASE;
}

static th_fmt oai_pick(const th_provider_conf *pc, const th_synth_req *req)
{
    uint32_t allowed = th_upstream_formats(pc, OAI_NATIVE) & OAI_NATIVE;
    if (req->want_fmt != TH_FMT_NONE && (allowed & (1u << req->want_fmt))) return req->want_fmt;
    static const th_fmt pref[] = {TH_FMT_PCM, TH_FMT_WAV, TH_FMT_MP3, TH_FMT_FLAC, TH_FMT_OPUS, TH_FMT_AAC};
    for (size_t i = 0; i < sizeof pref / sizeof pref[0]; i++)
        if (allowed & (1u << pref[i])) return pref[i];
    return TH_FMT_PCM;
}

static int oai_auth(const th_provider_conf *pc, th_upstream_http *out, th_perr *err)
{
    const char *key;
    if (th_upstream_need_secret(pc, &key, err) != 0) return -1;
    if (key != NULL && th_upstream_bearer(out, key) != 0) {
        th_perr_set(err, TH_PERR_STATUS, 0, "the API key cannot be sent in a header");
        return -1;
    }
    return 0;
}

static int oai_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    if (req->voice == NULL || req->voice[0] == '\0') {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a voice is required");
        return -1;
    }
    if (req->text == NULL || req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the input is empty");
        return -1;
    }
    out->method = "POST";
    if (oai_auth(pc, out, err) != 0) return -1;
    const char *model = th_upstream_opt(pc, "model", NULL);
    th_buf *b = &out->body;
    int rc = th_upstream_url(out, oai_base(pc), "/v1/audio/speech");
    rc |= th_upstream_header(out, "Content-Type", "application/json");
    rc |= th_buf_append_byte(b, '{') != TH_BUF_OK;
    rc |= th_upstream_json_str(b, "model", model);
    rc |= th_upstream_json_str(b, "input", req->text);
    if (th_str_startswith(req->voice, "voice_")) {
        rc |= th_buf_append_str(b, ",\"voice\":{") != TH_BUF_OK;
        rc |= th_upstream_json_str(b, "id", req->voice);
        rc |= th_buf_append_byte(b, '}') != TH_BUF_OK;
    } else {
        rc |= th_upstream_json_str(b, "voice", req->voice);
    }
    rc |= th_upstream_json_str(b, "response_format", th_fmt_name(oai_pick(pc, req)));
    if (req->speed > 0 && req->speed != 1.0) {
        char num[32];
        snprintf(num, sizeof num, "%.4g", req->speed);
        rc |= th_upstream_json_raw(b, "speed", num);
    }
    if (req->prompt != NULL && req->prompt[0] != '\0' && !th_str_startswith(model, "tts-1"))
        rc |= th_upstream_json_str(b, "instructions", req->prompt);
    if (th_upstream_opt_bool(pc, "stream", true)) rc |= th_upstream_json_str(b, "stream_format", "audio");
    rc |= th_buf_append_byte(b, '}') != TH_BUF_OK;
    if (rc != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
        return -1;
    }
    return 0;
}

static void oai_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                          th_audio_spec *spec)
{
    /* Decoding keys off the requested format, not Content-Type (ENGINES.md §1). */
    th_fmt f = oai_pick(pc, req);
    spec->fmt = f;
    spec->sample_rate = f == TH_FMT_PCM ? (pc->sample_rate > 0 ? pc->sample_rate : OAI_RATE) : 0;
    spec->channels = f == TH_FMT_PCM ? 1 : 0;
    spec->sample = TH_SAMPLE_S16;
}

/* Copies a JSON string member (or "" when absent or not a string). */
static void jstr(json_t *obj, const char *key, char *out, size_t outlen)
{
    json_t *v = json_object_get(obj, key);
    th_strlcpy(out, json_is_string(v) ? json_string_value(v) : "", outlen);
}

static void oai_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                      size_t len, th_perr *out)
{
    char msg[160] = "", type[48] = "", code[48] = "";
    json_t *root = len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    json_t *e = json_object_get(root, "error");
    if (json_is_object(e)) {
        jstr(e, "message", msg, sizeof msg);
        jstr(e, "type", type, sizeof type);
        jstr(e, "code", code, sizeof code);
    } else if (json_is_string(e)) {
        th_strlcpy(msg, json_string_value(e), sizeof msg);
    } else {
        th_upstream_excerpt(body, len, msg, sizeof msg);
    }
    json_decref(root);
    th_perr_kind k;
    if (status == 400 || status == 413 || status == 415 || status == 422)
        k = TH_PERR_CLIENT;
    else if (status == 429)
        k = strcmp(code, "insufficient_quota") == 0 || strcmp(type, "insufficient_quota") == 0
                ? TH_PERR_STATUS
                : TH_PERR_OVERLOADED;
    else if (status == 408 || status == 504)
        k = TH_PERR_TIMEOUT;
    else
        k = TH_PERR_STATUS; /* 401, 403, 404, 5xx, anything else */
    const char *tag = code[0] ? code : type;
    if (tag[0])
        th_perr_set(out, k, status, "HTTP %d (%s): %s", status, tag, msg);
    else
        th_perr_set(out, k, status, "HTTP %d: %s", status, msg);
}

static int oai_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    th_perr err;
    out->method = "GET";
    if (oai_auth(pc, out, &err) != 0) return -1;
    return th_upstream_url(out, oai_base(pc), "/v1/models");
}

const th_upstream_kind th_kind_openai = {
    .kind = "openai",
    .caps =
        {
            .formats = OAI_NATIVE,
            .max_input_chars = 4096, /* the API's limit on `input` */
            .streaming = true,
            .native_speed = true,
            .speed_min = 0.25,
            .speed_max = 4.0,
        },
    .build = oai_build,
    .body_spec = oai_body_spec,
    .body_is_error = NULL,
    .error = oai_error,
    .probe = oai_probe,
};
