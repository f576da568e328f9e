/* fish: fish-speech's POST {base_url}/v1/tts (ENGINES.md §5), JSON body.
 *
 * Request: {text, format, reference_id, streaming false, normalize true, chunk_length 200}, with
 * `Authorization: Bearer <key>` when api_key_env is set (the server's --api-key).
 *   - format: the client's format when it is one fish makes (wav, pcm, mp3, opus) and `formats` allows
 *     it, so the hub passes it through; else the `format` option (wav).
 *   - reference_id: the engine voice (the voices map value); the `reference_id` option when the request
 *     has none. Neither: left out (the engine picks a random voice).
 *   - streaming false: fish streams wav only, and a whole file keeps the error path simple; the body
 *     is still relayed chunk by chunk as it arrives.
 * Success: audio/wav, audio/mpeg or application/octet-stream (pcm, opus): pcm is headerless s16le mono at
 * 44.1 kHz unless sample_rate says otherwise; opus is Ogg Opus at 48 kHz.
 * Errors {"statusCode","message","error"}, mapped by status (th_upstream_error_generic: 400 e.g. unknown
 * reference -> CLIENT, 401 -> STATUS, 429 -> OVERLOADED, 5xx -> STATUS).
 * caps.max_input_chars 1000: fish answers only when the whole text is made, so shorter pieces (run in
 * parallel by the hub) keep the first byte near. Probe: GET /v1/health. */
#include <jansson.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define FISH_RATE 44100
#define FISH_NATIVE ((1u << TH_FMT_WAV) | (1u << TH_FMT_PCM) | (1u << TH_FMT_MP3) | (1u << TH_FMT_OPUS))

/* The format to ask for; TH_FMT_NONE when the `format` option is not one fish knows. */
static th_fmt fish_pick(const th_provider_conf *pc, const th_synth_req *req)
{
    uint32_t allowed = th_upstream_formats(pc, FISH_NATIVE) & FISH_NATIVE;
    if (req->want_fmt != TH_FMT_NONE && (allowed & (1u << req->want_fmt))) return req->want_fmt;
    th_fmt f = th_fmt_from_name(th_upstream_opt(pc, "format", NULL));
    return (FISH_NATIVE & (1u << f)) ? f : TH_FMT_NONE;
}

static int fish_mp_write(void *data, const char *buf, size_t len)
{
    return th_buf_append(data, buf, len) == TH_BUF_OK ? 0 : -1;
}

static int fish_mp_str(msgpack_packer *pk, const char *s, size_t n)
{
    return msgpack_pack_str(pk, n) != 0 || (n > 0 && msgpack_pack_str_body(pk, s, n) != 0) ? -1 : 0;
}

/* {text, format, references:[{audio, text}], streaming, normalize, chunk_length} in msgpack. The audio's
 * bytes are not copied: the bin header is packed, then the transfer writes the reference from the library
 * (th_upstream_body_ref), then the rest is packed after it. */
static int fish_msgpack(th_upstream_http *out, const th_synth_req *req, th_fmt f)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, &out->body, fish_mp_write);
    const th_voice_ref *r = req->ref;
    const char *rt = r->text != NULL ? r->text : "";
    const char *fmt = th_fmt_name(f);
    int rc = msgpack_pack_map(&pk, 6);
    rc |= fish_mp_str(&pk, "text", 4) | fish_mp_str(&pk, req->text, req->text_len);
    rc |= fish_mp_str(&pk, "format", 6) | fish_mp_str(&pk, fmt, strlen(fmt));
    rc |= fish_mp_str(&pk, "references", 10) | msgpack_pack_array(&pk, 1) | msgpack_pack_map(&pk, 2);
    rc |= fish_mp_str(&pk, "audio", 5) | msgpack_pack_bin(&pk, r->wav_len);
    if (rc == 0) rc |= th_upstream_body_ref(out, r);
    rc |= fish_mp_str(&pk, "text", 4) | fish_mp_str(&pk, rt, strlen(rt));
    rc |= fish_mp_str(&pk, "streaming", 9) | msgpack_pack_false(&pk);
    rc |= fish_mp_str(&pk, "normalize", 9) | msgpack_pack_true(&pk);
    rc |= fish_mp_str(&pk, "chunk_length", 12) | msgpack_pack_int(&pk, 200);
    return rc != 0 ? -1 : 0;
}

static int fish_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out,
                      th_perr *err)
{
    if (req->text == NULL || req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the text is empty");
        return -1;
    }
    th_fmt f = fish_pick(pc, req);
    if (f == TH_FMT_NONE) {
        th_perr_set(err, TH_PERR_STATUS, 0, "format %s is not one of wav, pcm, mp3, opus",
                    th_upstream_opt(pc, "format", NULL));
        return -1;
    }
    if (pc->base_url == NULL || pc->base_url[0] == '\0') {
        th_perr_set(err, TH_PERR_STATUS, 0, "base_url is not set");
        return -1;
    }
    const char *key;
    if (th_upstream_need_secret(pc, &key, err) != 0) return -1;
    out->method = "POST";
    if (req->ref != NULL) {
        int rc = th_upstream_url(out, pc->base_url, "/v1/tts");
        rc |= th_upstream_header(out, "Content-Type", "application/msgpack");
        if (key != NULL) rc |= th_upstream_bearer(out, key);
        if (rc != 0) {
            th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request");
            return -1;
        }
        if (fish_msgpack(out, req, f) != 0) {
            th_perr_set(err, TH_PERR_CLIENT, 0, "the request with the reference is over %zu bytes",
                        out->body.max);
            return -1;
        }
        return 0;
    }
    const char *ref =
        req->voice != NULL && req->voice[0] != '\0' ? req->voice : th_upstream_opt(pc, "reference_id", NULL);
    int rc = th_upstream_url(out, pc->base_url, "/v1/tts");
    rc |= th_upstream_header(out, "Content-Type", "application/json");
    if (key != NULL) rc |= th_upstream_bearer(out, key);
    th_buf *b = &out->body;
    rc |= th_buf_append_byte(b, '{') != TH_BUF_OK;
    rc |= th_upstream_json_str(b, "text", req->text);
    rc |= th_upstream_json_str(b, "format", th_fmt_name(f));
    if (ref != NULL && ref[0] != '\0') rc |= th_upstream_json_str(b, "reference_id", ref);
    rc |= th_upstream_json_raw(b, "streaming", "false");
    rc |= th_upstream_json_raw(b, "normalize", "true");
    rc |= th_upstream_json_raw(b, "chunk_length", "200");
    rc |= th_buf_append_byte(b, '}') != TH_BUF_OK;
    if (rc != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request");
        return -1;
    }
    return 0;
}

static void fish_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                           th_audio_spec *spec)
{
    th_fmt f = fish_pick(pc, req);
    spec->fmt = f;
    spec->sample = TH_SAMPLE_S16;
    spec->channels = f == TH_FMT_PCM ? 1 : 0;
    spec->sample_rate = f == TH_FMT_PCM    ? (pc->sample_rate > 0 ? pc->sample_rate : FISH_RATE)
                        : f == TH_FMT_OPUS ? 48000
                                           : 0;
}

static void fish_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                       size_t len, th_perr *out)
{
    char msg[200] = "";
    json_t *root = len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    json_t *m = json_object_get(root, "message");
    if (!json_is_string(m)) m = json_object_get(root, "detail"); /* FastAPI-style builds */
    if (json_is_string(m))
        th_strlcpy(msg, json_string_value(m), sizeof msg);
    else
        th_upstream_excerpt(body, len, msg, sizeof msg);
    json_decref(root);
    th_upstream_error_generic(status, msg, out);
}

static int fish_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    if (pc->base_url == NULL || pc->base_url[0] == '\0') return -1;
    out->method = "GET";
    const char *key = th_upstream_secret(pc);
    if (key != NULL && th_upstream_bearer(out, key) != 0) return -1;
    return th_upstream_url(out, pc->base_url, "/v1/health");
}

const th_upstream_kind th_kind_fish = {
    .kind = "fish",
    .caps =
        {
            .formats = FISH_NATIVE,
            .max_input_chars = 1000,
            .streaming = false,
            .can_clone = true,
            .native_speed = false,
        },
    .build = fish_build,
    .body_spec = fish_body_spec,
    .body_is_error = NULL,
    .error = fish_error,
    .probe = fish_probe,
};
