/* openvoice: ValyrianTech/OpenVoice_server (OpenVoice v2), ENGINES.md §4.
 *
 * GET {base_url}/synthesize_speech/?text=&voice=&accent=&speed= -> audio/wav (22.05 kHz, from the
 * converter's config: the WAV header says). voice is the label of a reference uploaded to the server
 * (POST /upload_audio/, done out of band); accent is the provider's accent option (en-newest).
 * Errors: 400/500 {"detail": ..}, 422 FastAPI lists, and a 200 whose body is JSON {"error": ..}
 * (the server's way of refusing some requests): body_is_error catches that one. error() maps a 2xx it is
 * given to CLIENT; note that upstream.c currently reports a body_is_error hit itself, as PROTOCOL, without
 * calling error().
 * A library voice (req->ref) is uploaded once per (provider, reference sha256): POST /upload_audio/
 * multipart audio_file_label "ttshub-<sha256 first 16>", file "<label>.wav" (refused uploads come back 200
 * {"error"}), then spoken by that label. When the engine answers 400 "No matching voice found." for it
 * (restarted, resources cleared), the generic provider uploads it again and retries once. The server has
 * no delete route: voice_forget leaves the file on the engine. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/upstream.h"

#define OV_SPEED_MIN 0.5 /* OpenVoice's base speakers stay intelligible in 0.5..2 */
#define OV_SPEED_MAX 2.0

static int ov_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    int rc = -1;
    char speed[32];

    if (th_upstream_need_base_and_text(pc, req, err) != 0) goto out;
    const char *voice = req->ref != NULL ? out->prepared : req->voice;
    if (voice == NULL || voice[0] == 0) {
        th_perr_set(err, req->ref != NULL ? TH_PERR_INTERNAL : TH_PERR_CLIENT, 0,
                    req->ref != NULL ? "the reference was not uploaded"
                                     : "a reference voice label is required");
        goto out;
    }
    snprintf(speed, sizeof speed, "%g", req->speed > 0 ? req->speed : 1.0);
    out->method = "GET";
    if (th_upstream_url(out, pc->base_url, "/synthesize_speech/") != 0 ||
        th_buf_append_str(&out->url, "?text=") != TH_BUF_OK ||
        th_upstream_urlencode(&out->url, req->text, req->text_len) != 0 ||
        th_upstream_query(out, "voice", voice) != 0 ||
        th_upstream_query(out, "accent", th_upstream_opt(pc, "accent", NULL)) != 0 ||
        th_upstream_query(out, "speed", speed) != 0)
        goto oom;
    rc = 0;
    goto out;
oom:
    th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
out:
    return rc;
}

static void ov_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->fmt = TH_FMT_WAV;
}

/* A 2xx whose first bytes are a JSON object ({"error": ..}) is a refusal, not audio (WAV starts "RIFF"). */
static int ov_body_is_error(const uint8_t *first, size_t n)
{
    size_t i = 0;
    while (i < n && (first[i] == ' ' || first[i] == '\t' || first[i] == '\r' || first[i] == '\n'))
        i++;
    return i < n && first[i] == '{';
}

static void ov_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    json_t *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    const json_t *detail = NULL;
    char tmp[160] = "";
    if (json_is_object(root)) {
        detail = json_object_get(root, "detail");
        if (detail == NULL) detail = json_object_get(root, "error");
    }
    if (json_is_string(detail)) {
        const char *d = json_string_value(detail);
        th_upstream_excerpt((const uint8_t *)d, strlen(d), tmp, sizeof tmp);
    } else if (detail != NULL) {
        char *dump = json_dumps(detail, JSON_COMPACT); /* a 422 validation list */
        if (dump != NULL) th_upstream_excerpt((const uint8_t *)dump, strlen(dump), tmp, sizeof tmp);
        free(dump);
    } else if (body != NULL && len > 0 && root == NULL) {
        th_upstream_excerpt(body, len, tmp, sizeof tmp);
    }
    if (status >= 200 && status < 300) {
        /* 200 {"error": ..}: the server refused what was asked */
        th_perr_set(out, TH_PERR_CLIENT, status, "HTTP %d with an error instead of audio: %s", status, tmp);
    } else {
        /* 400 (unknown voice, accent) / 422 -> CLIENT; 500 -> STATUS; 429 -> OVERLOADED */
        th_upstream_error_generic(status, tmp, out);
    }
    json_decref(root);
}

/* ---- library voices ---- */

static void ov_label(const th_voice_ref *ref, char *out, size_t n)
{
    snprintf(out, n, "ttshub-%.16s", ref->sha256);
}

static int ov_ref_key(const th_provider_conf *pc, const th_voice_ref *ref, char *key, size_t n, th_perr *err)
{
    if (!th_sha256_hex_ok(ref->sha256)) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "the library voice has a bad sha256");
        return -1;
    }
    ov_label(ref, key, n); /* once per reference content, whatever its id */
    return 1;
}

/* step 0: the upload; step 1: its answer (200 {"message"} or 200 {"error"}, 4xx/5xx {"detail"}). */
static int ov_ref_make(const th_provider_conf *pc, const th_voice_ref *ref, int step, int status,
                       const uint8_t *body, size_t len, th_upstream_http *out, char *value, size_t vn,
                       th_perr *err)
{
    char label[64], file[80], boundary[64], ctype[128];
    ov_label(ref, label, sizeof label);
    if (step == 0) {
        if (pc->base_url == NULL || pc->base_url[0] == 0) {
            th_perr_set(err, TH_PERR_STATUS, 0, "base_url is not set");
            return -1;
        }
        snprintf(file, sizeof file, "%s.wav", label);
        const void *parts[2] = {ref->wav, label};
        const size_t lens[2] = {ref->wav_len, strlen(label)};
        if (th_upstream_boundary(boundary, sizeof boundary, parts, lens, 2) != 0) {
            th_perr_set(err, TH_PERR_INTERNAL, 0, "no multipart boundary fits");
            return -1;
        }
        snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", boundary);
        out->method = "POST";
        if (th_upstream_url(out, pc->base_url, "/upload_audio/") != 0 ||
            th_upstream_header(out, "Content-Type", ctype) != 0 ||
            th_upstream_part(&out->body, boundary, "audio_file_label", NULL, NULL, label, strlen(label)) !=
                0 ||
            th_upstream_part(&out->body, boundary, "file", file, "audio/wav", ref->wav, ref->wav_len) != 0 ||
            th_upstream_parts_end(&out->body, boundary) != 0) {
            th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the upload (out of memory or too large)");
            return -1;
        }
        return 1;
    }
    json_t *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    bool refused = json_object_get(root, "error") != NULL; /* 200 {"error"}: a refusal */
    json_decref(root);
    if (status < 200 || status >= 300 || refused) {
        ov_error(pc, status, NULL, body, len, err);
        if (status >= 200 && status < 300) err->kind = TH_PERR_STATUS; /* the engine refused our upload */
        return -1;
    }
    snprintf(value, vn, "%s", label);
    return 0;
}

/* 400 {"detail":"No matching voice found."}: the engine does not know the label (any more). */
static bool ov_ref_lost(const th_provider_conf *pc, int status, const uint8_t *body, size_t len)
{
    return status == 400 && body != NULL && memmem(body, len, "No matching voice", 17) != NULL;
}

static int ov_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    if (pc->base_url == NULL || pc->base_url[0] == 0) return -1;
    out->method = "GET";
    return th_upstream_url(out, pc->base_url, "/docs") == 0 ? 0 : -1; /* FastAPI's docs page */
}

const th_upstream_kind th_kind_openvoice = {
    .kind = "openvoice",
    .caps =
        {
            .formats = 1u << TH_FMT_WAV,
            /* The server synthesises the whole text before the first byte (base TTS + tone colour
             * conversion of the full clip): 1000 chars keeps the wait and the memory per request
             * moderate; the hub splits longer text. */
            .max_input_chars = 1000,
            .streaming = false,
            .can_clone = true,
            .native_speed = true,
            .speed_min = OV_SPEED_MIN,
            .speed_max = OV_SPEED_MAX,
            .needs_reference = false, /* the reference is uploaded to the server beforehand */
        },
    .build = ov_build,
    .body_spec = ov_body_spec,
    .body_is_error = ov_body_is_error,
    .error = ov_error,
    .probe = ov_probe,
    .ref_key = ov_ref_key,
    .ref_make = ov_ref_make,
    .ref_lost = ov_ref_lost,
};
