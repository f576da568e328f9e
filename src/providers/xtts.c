/* xtts: daswer123/xtts-api-server, ENGINES.md §3.
 *
 * stream false (default): POST {base_url}/tts_to_audio/ JSON {text, speaker_wav, language} -> one WAV,
 * written by torchaudio from a float tensor: often 32-bit float (fmt 3, with a fact chunk). The WAV
 * reader takes it.
 * stream true: GET {base_url}/tts_stream?text=&speaker_wav=&language= -> a WAV header (24 kHz, int16,
 * data size 0) then int16 PCM chunks (only with the server's local model source).
 * The voice (speaker_wav) is a speaker name of the server's speaker folder or a .wav file name. The server
 * takes an absolute path as is and joins anything else to its speaker folder, so a client's voice must be a
 * plain name ([A-Za-z0-9 _.-], not starting with '.', no "..": it stays inside the speaker folder); a value
 * of the provider's voices (the operator's) is sent as configured. A library voice (req->ref) is a file the
 * hub writes into the shared folder (ref_dir): speaker_wav is "<ref_dir_engine>/<file>", or just the file
 * name when ref_dir_engine is not set (ref_dir is then the engine's speaker folder). A 500 "Speaker ... not
 * found" for it makes the hub write it again and retry once.
 * language: the request's, else the provider's language option (en).
 * Errors: 400 {"detail":"Language code sent is either unsupported or misspelled."} (the request),
 * 500 {"detail":"Error: .."} (the engine), 422 FastAPI validation lists. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/upstream.h"

static const char *xt_language(const th_provider_conf *pc, const th_synth_req *req)
{
    if (req->language != NULL && req->language[0] != 0) return req->language;
    return th_upstream_opt(pc, "language", NULL);
}

/* Is voice the value of one of the provider's voices (what the operator configured)? */
static bool xt_configured(const th_provider_conf *pc, const char *voice)
{
    for (size_t i = 0; i < pc->n_voices; i++)
        if (pc->voices[i].value != NULL && strcmp(pc->voices[i].value, voice) == 0) return true;
    return false;
}

/* A speaker name that stays inside the server's speaker folder: no path at all. */
static bool xt_plain_name(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 128 || v[0] == '.' || strstr(v, "..") != NULL) return false;
    return strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.-") == n;
}

static int xt_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    int rc = -1;
    json_t *body = NULL, *text = NULL;
    char *txt = NULL;
    int e = 0;
    const char *lang = xt_language(pc, req);

    if (th_upstream_need_base_and_text(pc, req, err) != 0) goto out;
    const char *voice = req->ref != NULL ? out->prepared : req->voice;
    if (voice == NULL || voice[0] == 0) {
        th_perr_set(err, req->ref != NULL ? TH_PERR_INTERNAL : TH_PERR_CLIENT, 0,
                    req->ref != NULL ? "the reference file was not written" : "a speaker voice is required");
        goto out;
    }
    if (req->ref == NULL && !xt_configured(pc, voice) && !xt_plain_name(voice)) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "voice '%.64s' is not a speaker name", voice);
        goto out;
    }
    if (th_upstream_opt_bool(pc, "stream", false)) {
        out->method = "GET";
        if (th_upstream_url(out, pc->base_url, "/tts_stream") != 0 ||
            th_buf_append_str(&out->url, "?text=") != TH_BUF_OK ||
            th_upstream_urlencode(&out->url, req->text, req->text_len) != 0 ||
            th_upstream_query(out, "speaker_wav", voice) != 0 ||
            th_upstream_query(out, "language", lang) != 0)
            goto oom;
        rc = 0;
        goto out;
    }
    body = json_object();
    text = json_stringn(req->text, req->text_len);
    if (body == NULL || text == NULL) {
        json_decref(text);
        goto oom;
    }
    e = json_object_set_new(body, "text", text);
    e |= json_object_set_new(body, "speaker_wav", json_string(voice));
    e |= json_object_set_new(body, "language", json_string(lang));
    if (e != 0) goto oom;
    txt = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (txt == NULL) goto oom;
    out->method = "POST";
    if (th_upstream_url(out, pc->base_url, "/tts_to_audio/") != 0 ||
        th_upstream_header(out, "Content-Type", "application/json") != 0 ||
        th_buf_append_str(&out->body, txt) != TH_BUF_OK)
        goto oom;
    rc = 0;
    goto out;
oom:
    th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
out:
    free(txt);
    json_decref(body);
    return rc;
}

static void xt_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->fmt = TH_FMT_WAV; /* int16 or float32: rate, channels and sample come from the fmt chunk */
}

static void xt_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    json_t *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    const json_t *detail = json_is_object(root) ? json_object_get(root, "detail") : NULL;
    char tmp[160] = "";
    int unknown_speaker = 0;
    if (json_is_string(detail)) {
        const char *d = json_string_value(detail);
        th_upstream_excerpt((const uint8_t *)d, strlen(d), tmp, sizeof tmp);
        /* "Error: Speaker X not found in speakers folder" (a 500): the voice asked for is at fault */
        unknown_speaker = strncmp(d, "Error: Speaker ", 15) == 0 && strstr(d, "not found") != NULL;
    } else if (detail != NULL) {
        char *dump = json_dumps(detail, JSON_COMPACT); /* a 422 validation list */
        if (dump != NULL) th_upstream_excerpt((const uint8_t *)dump, strlen(dump), tmp, sizeof tmp);
        free(dump);
    } else if (body != NULL && len > 0 && root == NULL) {
        th_upstream_excerpt(body, len, tmp, sizeof tmp);
    }
    /* 400 language / 422 -> CLIENT; 500 -> STATUS; 429 -> OVERLOADED */
    th_upstream_error_generic(status, tmp, out);
    if (unknown_speaker) out->kind = TH_PERR_CLIENT;
    json_decref(root);
}

/* "Speaker X not found" (a 500) or a file the server cannot open: the reference file is gone. */
static bool xt_ref_lost(const th_provider_conf *pc, int status, const uint8_t *body, size_t len)
{
    return status >= 400 && body != NULL &&
           ((memmem(body, len, "Speaker ", 8) != NULL && memmem(body, len, "not found", 9) != NULL) ||
            memmem(body, len, "No such file", 12) != NULL);
}

static int xt_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    if (pc->base_url == NULL || pc->base_url[0] == 0) return -1;
    out->method = "GET";
    return th_upstream_url(out, pc->base_url, "/speakers_list") == 0 ? 0 : -1;
}

const th_upstream_kind th_kind_xtts = {
    .kind = "xtts",
    .caps =
        {
            .formats = 1u << TH_FMT_WAV,
            /* xtts-api-server splits text into sentences itself (enable_text_splitting); XTTS v2 is
             * slower than real time on CPU, so 2000 chars (~2 min of speech) bounds one request. */
            .max_input_chars = 2000,
            .streaming = false, /* /tts_to_audio/ (the default) answers one file at the end */
            .can_clone = true,
            .native_speed = false, /* speed is a server-wide setting (/set_tts_settings), not per request */
            .speed_min = 1.0,
            .speed_max = 1.0,
            .needs_reference = false, /* speakers are names on the server, like any voice */
        },
    .build = xt_build,
    .body_spec = xt_body_spec,
    .body_is_error = NULL,
    .error = xt_error,
    .probe = xt_probe,
    .ref_files = true,
    .ref_file_name_only = true,
    .ref_lost = xt_ref_lost,
};
