/* gpt_sovits: the GPT-SoVITS engine (RVC-Boss/GPT-SoVITS), ENGINES.md §2.
 *
 * api v2 (api_v2.py, the default): POST {base_url}/tts with a JSON body. The voice is a reference: a
 * mapping {ref_audio_path, prompt_text, prompt_lang} from the provider's voices, or a string value of the
 * provider's voices, taken as ref_audio_path (a path on the engine's machine) with prompt_lang = text_lang.
 * A client's voice string never becomes a path: a voice that is neither is refused (400). A library voice
 * (req->ref) is a file the hub writes into the shared folder (options ref_dir / ref_dir_engine, see
 * upstream.h ref_files): ref_audio_path is its engine path, prompt_text its transcript, prompt_lang its
 * language (else text_lang). The answer
 * is media_type (wav by default; streamed wav is a 44-byte header with data size 0, then int16 PCM,
 * which the WAV reader takes as a stream; raw is headerless int16 mono at sample_rate, 32 kHz by default).
 * Errors: 400 {"message": ..} (validation: the request is at fault), 400 {"message":"tts failed",
 * "Exception": ..} (inference crashed: the engine is at fault), plain-text 500.
 *
 * api v1 (api.py): POST {base_url}/ JSON {text, text_language, refer_wav_path, prompt_text,
 * prompt_language, speed}; always a WAV (its stream mode and media type are fixed when the server
 * starts); errors {"code": 400, "message": ..}. When the three reference fields are not all set, api.py
 * uses the reference it was started with.
 *
 * A voice is parsed as a mapping only when it is the value of a mapping entry of the provider's voices
 * (a client's voice string is never parsed as JSON). */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/str.h"
#include "providers/upstream.h"

#define GS_DEFAULT_RATE 32000 /* v1/v2/v2Pro models: 32 kHz mono int16 */
#define GS_SPEED_MIN 0.5      /* speed_factor range that still sounds natural */
#define GS_SPEED_MAX 2.0

/* The string at key of a JSON object body (NULL when absent); *root keeps it alive (json_decref). */
static const char *gs_json_str(const uint8_t *body, size_t len, const char *key, json_t **root)
{
    *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    return json_is_object(*root) ? json_string_value(json_object_get(*root, key)) : NULL;
}

/* Is voice the value of one of the provider's voices (what the operator configured, never a client's)? */
static bool gs_configured(const th_provider_conf *pc, const char *voice)
{
    for (size_t i = 0; i < pc->n_voices; i++)
        if (pc->voices[i].value != NULL && strcmp(pc->voices[i].value, voice) == 0) return true;
    return false;
}

static int gs_is_v1(const th_provider_conf *pc)
{
    return strcmp(th_upstream_opt(pc, "api", NULL), "v1") == 0;
}

static int gs_set_str(json_t *o, const char *key, const char *v)
{
    return json_object_set_new(o, key, json_string(v != NULL ? v : ""));
}

/* The reference a request speaks with: the audio's path on the engine, its text and language. */
typedef struct gs_ref {
    json_t *map; /* the voice's mapping in the config, or NULL */
    const char *path, *text, *lang;
    char t1[64], t2[64], t3[64]; /* the mapping's values as text */
} gs_ref;

/* The reference of req: a library voice's file in the shared folder, or a configured voice (a mapping,
 * or a plain path the operator configured). 0, or -1 with err. */
static int gs_reference(const th_provider_conf *pc, const th_synth_req *req, const th_upstream_http *out,
                        int v1, gs_ref *r, th_perr *err)
{
    int bad = 0;
    if (req->ref != NULL) { /* a library voice: the file in the shared folder */
        r->path = out->prepared;
        if (r->path == NULL || r->path[0] == 0) {
            th_perr_set(err, TH_PERR_INTERNAL, 0, "the reference file was not written");
            return -1;
        }
        if (req->ref->text != NULL) r->text = req->ref->text;
        if (req->ref->language != NULL && req->ref->language[0] != 0) r->lang = req->ref->language;
        if (v1 && r->text[0] == 0) { /* api.py would silently use its default reference instead */
            th_perr_set(err, TH_PERR_CLIENT, 0,
                        "GPT-SoVITS api v1 needs the voice's reference text (set it on the library voice)");
            return -1;
        }
        return 0;
    }
    if (req->voice == NULL || req->voice[0] == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a reference voice is required");
        return -1;
    }
    r->map = th_upstream_voice_ref(pc, req->voice, &bad);
    if (bad) {
        th_perr_set(err, TH_PERR_STATUS, 0, "the voice reference does not parse");
        return -1;
    }
    /* a plain string is a path on the engine: only one the operator configured */
    if (r->map == NULL && !gs_configured(pc, req->voice)) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "voice '%.64s' is not a reference configured for this provider",
                    req->voice);
        return -1;
    }
    r->path = req->voice;
    if (r->map == NULL) return 0;
    r->path = th_upstream_ref_str(r->map, "ref_audio_path", r->t1, sizeof r->t1);
    const char *s = th_upstream_ref_str(r->map, "prompt_text", r->t2, sizeof r->t2);
    if (s != NULL) r->text = s;
    s = th_upstream_ref_str(r->map, "prompt_lang", r->t3, sizeof r->t3);
    if (s != NULL && s[0] != 0) r->lang = s;
    if (r->path == NULL || r->path[0] == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the voice mapping has no ref_audio_path");
        return -1;
    }
    return 0;
}

/* The JSON body of api v1 (/) or v2 (/tts). NULL on ENOMEM. */
static json_t *gs_json(const th_provider_conf *pc, const th_synth_req *req, int v1, const gs_ref *r,
                       int64_t sm)
{
    const char *text_lang = th_upstream_opt(pc, "text_lang", NULL);
    double speed = req->speed > 0 ? req->speed : 1.0;
    json_t *body = json_object();
    json_t *text = json_stringn(req->text, req->text_len);
    if (body == NULL || text == NULL) {
        json_decref(text);
        json_decref(body);
        return NULL;
    }
    int e = json_object_set_new(body, "text", text);
    if (v1) {
        e |= gs_set_str(body, "text_language", text_lang);
        e |= gs_set_str(body, "refer_wav_path", r->path);
        e |= gs_set_str(body, "prompt_text", r->text);
        e |= gs_set_str(body, "prompt_language", r->lang);
        e |= json_object_set_new(body, "speed", json_real(speed));
    } else {
        e |= gs_set_str(body, "text_lang", text_lang);
        e |= gs_set_str(body, "ref_audio_path", r->path);
        e |= gs_set_str(body, "prompt_text", r->text);
        e |= gs_set_str(body, "prompt_lang", r->lang);
        e |= gs_set_str(body, "media_type", th_upstream_opt(pc, "media_type", NULL));
        e |= json_object_set_new(body, "streaming_mode", json_integer(sm));
        e |= json_object_set_new(body, "speed_factor", json_real(speed));
        e |= gs_set_str(body, "text_split_method", "cut5");
        e |= json_object_set_new(body, "batch_size", json_integer(1));
    }
    if (e != 0) {
        json_decref(body);
        return NULL;
    }
    return body;
}

static int gs_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    int rc = -1;
    json_t *body = NULL;
    char *txt = NULL;
    const int v1 = gs_is_v1(pc);
    const char *sm_txt = th_upstream_opt(pc, "streaming_mode", NULL);
    gs_ref r = {.text = "", .lang = th_upstream_opt(pc, "text_lang", NULL)};
    int64_t sm = 1;

    if (th_upstream_need_base_and_text(pc, req, err) != 0) goto out;
    if (th_str_to_i64(sm_txt, 0, 3, &sm) != 0) {
        th_perr_set(err, TH_PERR_STATUS, 0, "streaming_mode '%s' is not 0..3", sm_txt);
        goto out;
    }
    if (gs_reference(pc, req, out, v1, &r, err) != 0) goto out;
    body = gs_json(pc, req, v1, &r, sm);
    txt = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (txt == NULL) goto oom;
    out->method = "POST";
    if (th_upstream_url(out, pc->base_url, v1 ? "/" : "/tts") != 0 ||
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
    json_decref(r.map);
    return rc;
}

static void gs_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    const char *media = gs_is_v1(pc) ? "wav" : th_upstream_opt(pc, "media_type", NULL);
    if (strcmp(media, "raw") == 0) {
        spec->fmt = TH_FMT_PCM;
        spec->sample_rate = pc->sample_rate > 0 ? pc->sample_rate : GS_DEFAULT_RATE;
        spec->channels = 1;
        spec->sample = TH_SAMPLE_S16;
    } else if (strcmp(media, "aac") == 0) {
        spec->fmt = TH_FMT_AAC;
    } else if (strcmp(media, "ogg") == 0) {
        spec->fmt = TH_FMT_OGG;
    } else if (gs_is_v1(pc)) {
        /* api.py's media type is fixed at its start (-mt wav|ogg|aac): believe its Content-Type */
        th_fmt f = th_fmt_from_mime(content_type);
        spec->fmt = f != TH_FMT_NONE ? f : TH_FMT_WAV;
    } else {
        spec->fmt = TH_FMT_WAV;
    }
}

static void gs_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    json_t *root = NULL;
    char tmp[160] = "", msg[240];
    const char *m = gs_json_str(body, len, "message", &root);
    const char *exc = json_is_object(root) ? json_string_value(json_object_get(root, "Exception")) : NULL;
    if (exc != NULL) {
        /* {"message":"tts failed","Exception":..}: inference itself failed, whatever the status */
        th_upstream_excerpt((const uint8_t *)exc, strlen(exc), tmp, sizeof tmp);
        snprintf(msg, sizeof msg, "%.40s: %s", m != NULL ? m : "tts failed", tmp);
        th_upstream_error_generic(status, msg, out);
        out->kind = TH_PERR_STATUS;
    } else {
        if (m != NULL)
            th_upstream_excerpt((const uint8_t *)m, strlen(m), tmp, sizeof tmp);
        else if (body != NULL && len > 0 && root == NULL)
            th_upstream_excerpt(body, len, tmp, sizeof tmp); /* uvicorn's plain-text 500 */
        /* 400 {"message"} / {"code":400,"message"} -> CLIENT; 5xx -> STATUS; 429 -> OVERLOADED */
        th_upstream_error_generic(status, tmp, out);
    }
    json_decref(root);
}

/* The engine could not read the reference file (removed from the shared folder): write it again. */
static bool gs_ref_lost(const th_provider_conf *pc, int status, const uint8_t *body, size_t len)
{
    return status >= 400 && body != NULL &&
           (memmem(body, len, "No such file", 12) != NULL || memmem(body, len, "not exist", 9) != NULL);
}

static int gs_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    if (pc->base_url == NULL || pc->base_url[0] == 0) return -1;
    out->method = "GET";
    return th_upstream_url(out, pc->base_url, "/docs") == 0 ? 0 : -1; /* FastAPI's docs page: 200 */
}

const th_upstream_kind th_kind_gpt_sovits = {
    .kind = "gpt_sovits",
    .caps =
        {
            /* media_type wav by default (raw/aac/ogg are config choices: declare them with formats) */
            .formats = 1u << TH_FMT_WAV,
            /* The engine splits text itself (cut5), but inference time grows with the text and the
             * first byte waits for the first fragment: 1000 chars keeps a segment well under the
             * default 30 s timeout on a consumer GPU and lets the hub stream segment by segment. */
            .max_input_chars = 1000,
            .streaming = true, /* streaming_mode 1 by default: header first, PCM per fragment */
            .can_clone = true,
            .native_speed = true,
            .speed_min = GS_SPEED_MIN,
            .speed_max = GS_SPEED_MAX,
            .needs_reference = true,
        },
    .build = gs_build,
    .body_spec = gs_body_spec,
    .body_is_error = NULL,
    .error = gs_error,
    .probe = gs_probe,
    .ref_files = true,
    .ref_lost = gs_ref_lost,
};
