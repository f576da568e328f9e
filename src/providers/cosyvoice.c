/* cosyvoice: FunAudioLLM/CosyVoice runtime/python/fastapi/server.py, ENGINES.md §5.
 *
 * Every route takes form fields. By the provider's mode option:
 *   sft (default)  POST /inference_sft            urlencoded tts_text, spk_id (the voice)
 *   instruct       POST /inference_instruct       urlencoded tts_text, spk_id, instruct_text (the prompt)
 *   zero_shot      POST /inference_zero_shot      multipart tts_text, prompt_text, file prompt_wav
 *   cross_lingual  POST /inference_cross_lingual  multipart tts_text, file prompt_wav
 * For zero_shot and cross_lingual the voice must be a mapping of the provider's voices
 * {prompt_wav: a local file, prompt_text}; build() reads the file (at most CV_MAX_PROMPT bytes) and
 * sends its bytes. Only a configured mapping is read: a client's voice string never names a file to read.
 * A library voice (req->ref) goes inline on every request, whatever the mode: POST /inference_zero_shot
 * with its transcript as prompt_text and its reference as prompt_wav; /inference_cross_lingual (prompt_wav
 * only) when it has no transcript or the mode is cross_lingual. The engine keeps nothing between requests.
 * The reference goes in its compact form when the library made one (ref->flac16k: 16 kHz FLAC, a file
 * prompt.flac of type audio/flac): the server reads prompt_wav with torchaudio (libsndfile: WAV or FLAC,
 * told apart by content) and resamples it to 16 kHz, so 16 kHz loses nothing and FLAC is lossless.
 * Success: a stream with no Content-Type of headerless int16 LE mono PCM at the model rate (sample_rate;
 * 22050 for CosyVoice-300M, 24000 for CosyVoice2/3). Errors: 422 FastAPI lists (the request), plain-text
 * 500 (the engine). An unknown spk_id crashes inside the stream: a 200 that ends early. */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "providers/upstream.h"

#define CV_DEFAULT_RATE 22050
/* A prompt wav is a few seconds of speech (a minute of 48 kHz stereo int16 is 11 MiB). The generic
 * provider bounds request bodies at 16 MiB: 15 MiB leaves room for the text and the part headers. */
#define CV_MAX_PROMPT (15u * 1024 * 1024)

/* Appends name=value to an application/x-www-form-urlencoded body ('&' first unless it is empty). */
static int cv_form_field(th_buf *b, const char *name, const char *v, size_t len)
{
    if (b->len > 0 && th_buf_append_byte(b, '&') != TH_BUF_OK) return -1;
    if (th_buf_append_str(b, name) != TH_BUF_OK || th_buf_append_byte(b, '=') != TH_BUF_OK) return -1;
    return th_upstream_urlencode(b, v, len);
}

/* Reads a whole local file of at most max bytes into b. 0, or -1 with err set. Messages name the file
 * by its base name only: they reach the client, the server's directory layout should not. */
static int cv_read_file(const char *path, th_buf *b, size_t max, th_perr *err)
{
    int rc = -1;
    const char *slash = strrchr(path, '/');
    const char *name = slash != NULL ? slash + 1 : path;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the prompt wav '%s' of this voice %s", name,
                    errno == ENOENT ? "does not exist" : "cannot be opened");
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the prompt wav '%s' of this voice is not a file", name);
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the prompt wav '%s' of this voice is over %zu bytes", name, max);
        goto out;
    }
    if (th_buf_reserve(b, (size_t)st.st_size) != TH_BUF_OK) goto oom;
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        int r = th_buf_append(b, chunk, n);
        if (r == TH_BUF_EFULL) { /* it grew since fstat */
            th_perr_set(err, TH_PERR_CLIENT, 0, "the prompt wav '%s' of this voice is over %zu bytes", name,
                        max);
            goto out;
        }
        if (r != TH_BUF_OK) goto oom;
    }
    if (ferror(f)) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the prompt wav '%s' of this voice cannot be read", name);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
out:
    fclose(f);
    return rc;
}

/* The multipart body of a cloning request: tts_text, prompt_text (zero_shot only), prompt_wav (a WAV file,
 * or FLAC when flac). */
static int cv_multipart(const th_provider_conf *pc, const th_synth_req *req, bool zero_shot,
                        const char *ptext, const uint8_t *wav, size_t wav_len, bool flac,
                        th_upstream_http *out, th_perr *err)
{
    /* A library voice's reference is not copied into the body: the transfer writes it from the library. */
    const th_voice_ref *borrow =
        req->ref != NULL && (wav == req->ref->wav || (wav != NULL && wav == req->ref->flac16k)) ? req->ref
                                                                                                : NULL;
    const char *fname = flac ? "prompt.flac" : "prompt.wav", *ftype = flac ? "audio/flac" : "audio/wav";
    char boundary[64], ctype[128];
    const void *parts[3] = {wav, req->text, ptext};
    const size_t lens[3] = {wav_len, req->text_len, strlen(ptext)};
    if (th_upstream_boundary(boundary, sizeof boundary, parts, lens, 3) != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "no multipart boundary fits");
        return -1;
    }
    size_t need = wav_len + req->text_len + lens[2] + 1024;
    if (out->body.max != 0 && need > out->body.max - out->body.len) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the request with the prompt wav is over %zu bytes",
                    out->body.max);
        return -1;
    }
    snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", boundary);
    out->method = "POST";
    if (th_upstream_url(out, pc->base_url, zero_shot ? "/inference_zero_shot" : "/inference_cross_lingual") !=
            0 ||
        th_upstream_header(out, "Content-Type", ctype) != 0 ||
        th_buf_reserve(&out->body, borrow != NULL ? need - wav_len : need) != TH_BUF_OK ||
        th_upstream_part(&out->body, boundary, "tts_text", NULL, NULL, req->text, req->text_len) != 0 ||
        (zero_shot &&
         th_upstream_part(&out->body, boundary, "prompt_text", NULL, NULL, ptext, lens[2]) != 0) ||
        (borrow != NULL
             ? th_upstream_part_head(&out->body, boundary, "prompt_wav", fname, ftype) != 0 ||
                   th_upstream_body_ref_bytes(out, borrow, wav, wav_len) != 0 ||
                   th_buf_append_str(&out->body, "\r\n") != TH_BUF_OK
             : th_upstream_part(&out->body, boundary, "prompt_wav", fname, ftype, wav, wav_len) != 0) ||
        th_upstream_parts_end(&out->body, boundary) != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
        return -1;
    }
    return 0;
}

/* A library voice: its reference inline, on every request. */
static int cv_build_library(const th_provider_conf *pc, const th_synth_req *req, const char *mode,
                            th_upstream_http *out, th_perr *err)
{
    const th_voice_ref *r = req->ref;
    const char *rt = r->text != NULL ? r->text : "";
    bool zs = rt[0] != 0 && strcmp(mode, "cross_lingual") != 0;
    /* the server resamples prompt_wav to 16 kHz (load_wav(prompt_wav.file, 16000)): the compact form
     * (16 kHz FLAC) is all of what it uses, in about a third of the bytes */
    bool flac = r->flac16k != NULL && r->flac16k_len > 0;
    return cv_multipart(pc, req, zs, zs ? rt : "", flac ? r->flac16k : r->wav,
                        flac ? r->flac16k_len : r->wav_len, flac, out, err);
}

/* sft / instruct: a speaker id (a mapping may name it as spk_id) in a form. */
static int cv_build_speaker(const th_provider_conf *pc, const th_synth_req *req, const char *mode,
                            json_t *ref, th_upstream_http *out, th_perr *err)
{
    char t1[64];
    const int instruct = strcmp(mode, "instruct") == 0;
    const char *spk = req->voice;
    if (ref != NULL) {
        spk = th_upstream_ref_str(ref, "spk_id", t1, sizeof t1);
        if (spk == NULL || spk[0] == 0) {
            th_perr_set(err, TH_PERR_CLIENT, 0, "mode %s needs a speaker id (spk_id)", mode);
            return -1;
        }
    }
    const char *instr = req->prompt != NULL ? req->prompt : "";
    out->method = "POST";
    if (th_upstream_url(out, pc->base_url, instruct ? "/inference_instruct" : "/inference_sft") != 0 ||
        th_upstream_header(out, "Content-Type", "application/x-www-form-urlencoded") != 0 ||
        cv_form_field(&out->body, "tts_text", req->text, req->text_len) != 0 ||
        cv_form_field(&out->body, "spk_id", spk, strlen(spk)) != 0 ||
        (instruct && cv_form_field(&out->body, "instruct_text", instr, strlen(instr)) != 0)) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
        return -1;
    }
    return 0;
}

/* zero_shot / cross_lingual with a configured voice: the reference wav's bytes as a file part. */
static int cv_build_mapped(const th_provider_conf *pc, const th_synth_req *req, const char *mode, json_t *ref,
                           th_upstream_http *out, th_perr *err)
{
    char t1[64], t2[64];
    const char *path = ref != NULL ? th_upstream_ref_str(ref, "prompt_wav", t1, sizeof t1) : NULL;
    const char *ptext = ref != NULL ? th_upstream_ref_str(ref, "prompt_text", t2, sizeof t2) : NULL;
    if (path == NULL || path[0] == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0,
                    "mode %s needs a voice mapped to {prompt_wav, prompt_text} in the provider's voices",
                    mode);
        return -1;
    }
    th_buf wav;
    th_buf_init(&wav, CV_MAX_PROMPT);
    int rc = -1;
    if (cv_read_file(path, &wav, CV_MAX_PROMPT, err) == 0)
        rc = cv_multipart(pc, req, strcmp(mode, "zero_shot") == 0, ptext ? ptext : "", wav.data, wav.len,
                          false, out, err);
    th_buf_free(&wav);
    return rc;
}

static int cv_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    int bad = 0;
    const char *mode = th_upstream_opt(pc, "mode", NULL);
    const int cloning = strcmp(mode, "zero_shot") == 0 || strcmp(mode, "cross_lingual") == 0;
    if (th_upstream_need_base_and_text(pc, req, err) != 0) return -1;
    if (!cloning && strcmp(mode, "instruct") != 0 && strcmp(mode, "sft") != 0) {
        th_perr_set(err, TH_PERR_STATUS, 0, "unknown mode '%s'", mode);
        return -1;
    }
    if (req->ref != NULL) return cv_build_library(pc, req, mode, out, err);
    if (req->voice == NULL || req->voice[0] == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a voice is required");
        return -1;
    }
    json_t *ref = th_upstream_voice_ref(pc, req->voice, &bad);
    int rc = -1;
    if (bad)
        th_perr_set(err, TH_PERR_STATUS, 0, "the voice reference does not parse");
    else
        rc = cloning ? cv_build_mapped(pc, req, mode, ref, out, err)
                     : cv_build_speaker(pc, req, mode, ref, out, err);
    json_decref(ref);
    return rc;
}

static void cv_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    spec->fmt = TH_FMT_PCM;
    spec->sample_rate = pc->sample_rate > 0 ? pc->sample_rate : CV_DEFAULT_RATE;
    spec->channels = 1;
    spec->sample = TH_SAMPLE_S16;
}

static void cv_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    json_t *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    const json_t *detail = json_is_object(root) ? json_object_get(root, "detail") : NULL;
    char tmp[160] = "";
    if (json_is_string(detail)) {
        const char *d = json_string_value(detail);
        th_upstream_excerpt((const uint8_t *)d, strlen(d), tmp, sizeof tmp);
    } else if (detail != NULL) {
        char *dump = json_dumps(detail, JSON_COMPACT); /* the 422 list: which field, why */
        if (dump != NULL) th_upstream_excerpt((const uint8_t *)dump, strlen(dump), tmp, sizeof tmp);
        free(dump);
    } else if (body != NULL && len > 0 && root == NULL) {
        th_upstream_excerpt(body, len, tmp, sizeof tmp);
    }
    th_upstream_error_generic(status, tmp, out);
    /* The server validates only through FastAPI (422). Any other 4xx is not the request's fault: a 404 or
     * 405 means the route of the configured mode is missing on this server. 429/408 keep their kinds. */
    if (out->kind == TH_PERR_CLIENT && status != 422) out->kind = TH_PERR_STATUS;
    json_decref(root);
}

static int cv_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    if (pc->base_url == NULL || pc->base_url[0] == 0) return -1;
    out->method = "GET";
    return th_upstream_url(out, pc->base_url, "/docs") == 0 ? 0 : -1; /* FastAPI's docs page */
}

const th_upstream_kind th_kind_cosyvoice = {
    .kind = "cosyvoice",
    .caps =
        {
            .formats = 1u << TH_FMT_PCM,
            /* CosyVoice splits text into sentences itself, but a whole request runs on one GPU worker:
             * 1000 chars keeps one request to about a minute of speech; the hub splits longer text. */
            .max_input_chars = 1000,
            .streaming = true, /* PCM chunks as each sentence is made */
            .can_clone = true,
            .native_speed = false, /* the fastapi server has no speed field */
            .speed_min = 1.0,
            .speed_max = 1.0,
            /* only zero_shot/cross_lingual need a reference, and caps cannot depend on the mode: sft is
             * the default; build() refuses a cloning mode without a configured mapping */
            .needs_reference = false,
        },
    .build = cv_build,
    .body_spec = cv_body_spec,
    .body_is_error = NULL,
    .error = cv_error,
    .probe = cv_probe,
};
