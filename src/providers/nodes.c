/* nodes: worker nodes (`ttshub worker` or a third-party node), API.md "What a node must serve".
 *
 * POST {base_url}/synthesize JSON {text, voice, format, speed, pitch?, language?, reference?} -> audio in the
 * format asked for (the client's own format, so the hub passes it through), under a Content-Type the
 * hub does not need: the bytes are sniffed, except pcm (headerless s16le mono, 24 kHz unless the
 * provider's sample_rate says otherwise). The voice is passed as is; when it is a mapping of the
 * provider's voices, the mapping goes as `reference` and its `voice` key (if any) as `voice`.
 * Errors: {"success":false,"message":..,"code":..}: 4xx -> CLIENT (429 -> OVERLOADED, 401/403 -> STATUS:
 * our own setup is at fault), 503 (node in standby, busy) -> OVERLOADED, others -> STATUS.
 * Probe: GET /health (only with a fixed base_url).
 * With base_url set the provider talks to that one node; without it, each request goes to a node of the
 * provider's `engine` picked from the hub's registry (cluster/registry.h, installed by the hub as the
 * provider's targets), by the provider's `strategy` (round_robin, least_load or random).
 * A library voice (req->ref): voice is its id, with reference_sha256, reference_text and reference_language
 * and no audio; a node that does not hold that reference answers 409 {"code":"reference_missing"}, and the
 * same node gets the request again (pass 1) with reference_audio: the WAV in base64.
 *
 * With option `protocol: seed2` the provider speaks to seed-2 voice-clone-tts workers (and routes only to
 * nodes that registered as such): POST {node}/synthesize JSON {text, voice_id, engine, language,
 * output_format: "wav", speed (0.5-2), pitch} -> WAV. A library voice is pushed to the node first with
 * POST {node}/extract_voice (multipart: audio file, voice_id, voice_name, reference_text), per node
 * (ref_per_target): the hub's registry records which node holds it. Errors are FastAPI's {"detail": ...}:
 * 503 (model not loaded, though the registry had it ready) -> STATUS, 500 "Voice not found" -> the reference
 * is pushed again and the same node asked once more, other 5xx -> STATUS, 4xx (422 validation) -> CLIENT. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/upstream.h"

/* The format name to ask the node for: the client's, or wav when it has none. */
static const char *nd_format(const th_synth_req *req)
{
    const char *name = th_fmt_name(req->want_fmt);
    return name != NULL ? name : "wav";
}

static bool nd_seed2(const th_provider_conf *pc)
{
    const char *p = th_upstream_opt(pc, "protocol", NULL);
    return p != NULL && strcmp(p, "seed2") == 0;
}

/* seed-2 /synthesize: {text, voice_id, engine, language, output_format, speed, pitch} */
static int s2_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    const char *vid = req->ref != NULL ? req->ref->id : req->voice;
    if (vid == NULL || vid[0] == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a seed-2 worker needs a voice");
        return -1;
    }
    /* the worker joins voice_id to its voices folder (and loads what it finds there): only plain ids pass */
    if (!th_voice_id_ok(vid)) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "a seed-2 voice id is 1 to 64 of A-Z a-z 0-9 _ -");
        return -1;
    }
    const char *lang = req->language;
    if ((lang == NULL || lang[0] == 0) && req->ref != NULL) lang = req->ref->language;
    double speed = req->speed > 0 ? req->speed : 1.0;
    if (speed < 0.5) speed = 0.5; /* the worker's SynthesizeRequest takes 0.5 to 2 */
    if (speed > 2.0) speed = 2.0;
    json_t *body = json_object();
    if (body == NULL) goto oom;
    int e = json_object_set_new(body, "text", json_stringn(req->text, req->text_len));
    e |= json_object_set_new(body, "voice_id", json_string(vid));
    if (pc->engine != NULL && pc->engine[0] != 0)
        e |= json_object_set_new(body, "engine", json_string(pc->engine));
    if (lang != NULL && lang[0] != 0) e |= json_object_set_new(body, "language", json_string(lang));
    e |= json_object_set_new(body, "output_format", json_string("wav"));
    e |= json_object_set_new(body, "speed", json_real(speed));
    double pitch = req->pitch > 0 ? req->pitch : 1.0; /* a ratio there too, 0.5 to 2 */
    if (pitch < 0.5) pitch = 0.5;
    if (pitch > 2.0) pitch = 2.0;
    e |= json_object_set_new(body, "pitch", json_real(pitch));
    char *txt = e == 0 ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(body);
    if (txt == NULL) goto oom;
    out->method = "POST";
    int rc = th_upstream_url(out, out->base_url, "/synthesize") != 0 ||
                     th_upstream_header(out, "Content-Type", "application/json") != 0 ||
                     th_buf_append_str(&out->body, txt) != TH_BUF_OK
                 ? -1
                 : 0;
    free(txt);
    if (rc == 0) return 0;
oom:
    th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
    return -1;
}

static int nd_build(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err)
{
    int rc = -1, bad = 0, e = 0;
    json_t *body = NULL, *text = NULL, *ref = NULL;
    char *txt = NULL;

    if (out->base_url == NULL || out->base_url[0] == 0) {
        th_perr_set(err, TH_PERR_OVERLOADED, 0, "no node to send to");
        goto out;
    }
    if (req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the input is empty");
        goto out;
    }
    if (nd_seed2(pc)) return s2_build(pc, req, out, err);
    if (req->ref == NULL) ref = th_upstream_voice_ref(pc, req->voice, &bad);
    if (bad) {
        th_perr_set(err, TH_PERR_STATUS, 0, "the voice reference does not parse");
        goto out;
    }
    body = json_object();
    text = json_stringn(req->text, req->text_len);
    if (body == NULL || text == NULL) {
        json_decref(text);
        goto oom;
    }
    e = json_object_set_new(body, "text", text);
    if (req->ref != NULL) {
        const th_voice_ref *r = req->ref;
        e |= json_object_set_new(body, "voice", json_string(r->id));
        e |= json_object_set_new(body, "reference_sha256", json_string(r->sha256));
        e |= json_object_set_new(body, "reference_text", json_string(r->text != NULL ? r->text : ""));
        if (r->language != NULL && r->language[0] != 0)
            e |= json_object_set_new(body, "reference_language", json_string(r->language));
    } else if (ref != NULL) {
        json_t *v = json_object_get(ref, "voice");
        if (json_is_string(v)) e |= json_object_set(body, "voice", v);
        e |= json_object_set(body, "reference", ref);
    } else if (req->voice != NULL && req->voice[0] != 0) {
        e |= json_object_set_new(body, "voice", json_string(req->voice));
    }
    e |= json_object_set_new(body, "format", json_string(nd_format(req)));
    e |= json_object_set_new(body, "speed", json_real(req->speed > 0 ? req->speed : 1.0));
    if (req->pitch > 0 && req->pitch != 1.0) e |= json_object_set_new(body, "pitch", json_real(req->pitch));
    if (req->language != NULL && req->language[0] != 0)
        e |= json_object_set_new(body, "language", json_string(req->language));
    if (e != 0) goto oom;
    txt = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (txt == NULL) goto oom;
    out->method = "POST";
    if (th_upstream_url(out, out->base_url, "/synthesize") != 0 ||
        th_upstream_header(out, "Content-Type", "application/json") != 0 ||
        th_buf_append_str(&out->body, txt) != TH_BUF_OK)
        goto oom;
    if (req->ref != NULL && out->pass > 0) { /* the node lacked it: ,"reference_audio":"<base64>"} */
        out->body.len--;                     /* the closing brace */
        if (th_buf_append_str(&out->body, ",\"reference_audio\":\"") != TH_BUF_OK ||
            th_upstream_base64(&out->body, req->ref->wav, req->ref->wav_len) != 0 ||
            th_buf_append_str(&out->body, "\"}") != TH_BUF_OK) {
            th_perr_set(err, TH_PERR_CLIENT, 0, "the request with the reference is over %zu bytes",
                        out->body.max);
            goto out;
        }
    }
    rc = 0;
    goto out;
oom:
    th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
out:
    free(txt);
    json_decref(body);
    json_decref(ref);
    return rc;
}

static void nd_body_spec(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                         th_audio_spec *spec)
{
    memset(spec, 0, sizeof *spec);
    if (req->want_fmt == TH_FMT_PCM && !nd_seed2(pc)) {
        /* headerless: nothing to sniff; the node's pcm is the API's (s16le mono 24 kHz) */
        spec->fmt = TH_FMT_PCM;
        spec->sample_rate = pc->sample_rate > 0 ? pc->sample_rate : TH_PCM_DEFAULT_RATE;
        spec->channels = 1;
        spec->sample = TH_SAMPLE_S16;
    } else {
        spec->fmt = TH_FMT_NONE; /* what was asked for, in a container: sniff it */
    }
}

static void nd_error(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                     size_t len, th_perr *out)
{
    json_t *root = body != NULL && len > 0 ? json_loadb((const char *)body, len, 0, NULL) : NULL;
    const char *m = json_is_object(root) ? json_string_value(json_object_get(root, "message")) : NULL;
    if (m == NULL && json_is_object(root)) /* FastAPI (seed-2 workers): {"detail": "..."} */
        m = json_string_value(json_object_get(root, "detail"));
    const char *code = json_is_object(root) ? json_string_value(json_object_get(root, "code")) : NULL;
    char tmp[160] = "", msg[240];
    if (m != NULL)
        th_upstream_excerpt((const uint8_t *)m, strlen(m), tmp, sizeof tmp);
    else if (body != NULL && len > 0 && root == NULL)
        th_upstream_excerpt(body, len, tmp, sizeof tmp); /* an HTML or plain-text 5xx */
    if (code != NULL)
        snprintf(msg, sizeof msg, "%s (%.30s)", tmp, code);
    else
        snprintf(msg, sizeof msg, "%s", tmp);
    th_upstream_error_generic(status, msg, out);
    if (status == 503 && nd_seed2(pc))
        out->kind = TH_PERR_STATUS; /* "Model not loaded" from a node the registry has ready: that node failed
                                       (it is benched, the retry goes to another, the breaker counts it) */
    else if (status == 503 || status == 429)
        out->kind = TH_PERR_OVERLOADED; /* standby, stopping or busy: try another node */
    else if (status >= 400 && status < 500 && status != 401 && status != 403 && status != 408)
        out->kind = TH_PERR_CLIENT; /* the node refused this request (voice, format, text...) */
    else if (status >= 500)
        out->kind = TH_PERR_STATUS; /* seed-2 workers answer 500 for every failure: try another node */
    json_decref(root);
}

/* 409 {"code":"reference_missing"}: the node does not hold the reference; send it again with the audio. */
static bool nd_ref_lost(const th_provider_conf *pc, int status, const uint8_t *body, size_t len)
{
    if (nd_seed2(pc)) /* 500 {"detail":"Voice not found: <id>"} (xtts, openvoice workers) */
        return status == 500 && body != NULL && memmem(body, len, "Voice not found", 15) != NULL;
    if (status != 409 || body == NULL || len == 0) return false;
    json_t *root = json_loadb((const char *)body, len, 0, NULL);
    const char *code = json_string_value(json_object_get(root, "code"));
    bool lost = code != NULL && strcmp(code, "reference_missing") == 0;
    json_decref(root);
    return lost;
}

/* seed-2 workers: the reference is pushed to each node with /extract_voice before it speaks it. */
static bool nd_per_target(const th_provider_conf *pc)
{
    return nd_seed2(pc);
}

static int nd_ref_key(const th_provider_conf *pc, const th_voice_ref *ref, char *key, size_t n, th_perr *err)
{
    if (!nd_seed2(pc)) return 0; /* ttshub nodes get the reference in the request itself */
    if (th_voice_ref_file_name(ref, key, n) != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "the library voice has a bad id or sha256");
        return -1;
    }
    return 1;
}

/* step 0: POST {node}/extract_voice multipart (audio, voice_id, voice_name, reference_text); step 1: its
 * answer: 200 {"success":true,...}, or {"detail"} with 4xx/5xx (503: the model is not loaded). */
static int nd_ref_make(const th_provider_conf *pc, const th_voice_ref *ref, int step, int status,
                       const uint8_t *body, size_t len, th_upstream_http *out, char *value, size_t vn,
                       th_perr *err)
{
    if (step == 0) {
        if (out->base_url == NULL || out->base_url[0] == 0) {
            th_perr_set(err, TH_PERR_OVERLOADED, 0, "no node to send the reference to");
            return -1;
        }
        if (th_nodes_seed2_extract(out, out->base_url, ref) != 0) {
            th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot build the reference upload (out of memory)");
            return -1;
        }
        return 1;
    }
    if (status < 200 || status >= 300) {
        nd_error(pc, status, NULL, body, len, err);
        if (status >= 400 && status < 500) err->kind = TH_PERR_STATUS; /* the node refused our upload */
        return -1;
    }
    snprintf(value, vn, "%s", ref->id);
    return 0;
}

int th_nodes_seed2_extract(th_upstream_http *out, const char *base_url, const th_voice_ref *ref)
{
    char boundary[64], ctype[128], file[96];
    const char *name = ref->name != NULL && ref->name[0] != 0 ? ref->name : ref->id;
    const char *text = ref->text != NULL ? ref->text : "";
    const void *parts[4] = {ref->wav, ref->id, name, text};
    const size_t lens[4] = {ref->wav_len, strlen(ref->id), strlen(name), strlen(text)};
    if (ref->wav == NULL || th_upstream_boundary(boundary, sizeof boundary, parts, lens, 4) != 0) return -1;
    snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", boundary);
    snprintf(file, sizeof file, "%s.wav", ref->id);
    out->method = "POST";
    if (th_upstream_url(out, base_url, "/extract_voice") != 0 ||
        th_upstream_header(out, "Content-Type", ctype) != 0 ||
        th_upstream_part(&out->body, boundary, "audio", file, "audio/wav", ref->wav, ref->wav_len) != 0 ||
        th_upstream_part(&out->body, boundary, "voice_id", NULL, NULL, ref->id, strlen(ref->id)) != 0 ||
        th_upstream_part(&out->body, boundary, "voice_name", NULL, NULL, name, strlen(name)) != 0 ||
        th_upstream_part(&out->body, boundary, "reference_text", NULL, NULL, text, strlen(text)) != 0 ||
        th_upstream_parts_end(&out->body, boundary) != 0)
        return -1;
    return 0;
}

static int nd_probe(const th_provider_conf *pc, th_upstream_http *out)
{
    (void)pc;
    if (out->base_url == NULL || out->base_url[0] == 0) return -1;
    out->method = "GET";
    return th_upstream_url(out, out->base_url, "/health") == 0 ? 0 : -1;
}

const th_upstream_kind th_kind_nodes = {
    .kind = "nodes",
    .caps =
        {
            /* a node answers in any of the six client formats */
            .formats = (1u << TH_FMT_MP3) | (1u << TH_FMT_OPUS) | (1u << TH_FMT_AAC) | (1u << TH_FMT_FLAC) |
                       (1u << TH_FMT_WAV) | (1u << TH_FMT_PCM),
            /* A node may front any engine and splits no text itself; 5000 chars (a few minutes of
             * speech) bounds one request to one node while keeping splits rare. */
            .max_input_chars = 5000,
            .streaming = false, /* not promised by the node contract */
            .can_clone = true,
            .native_speed = true, /* the node takes speed in the API's range */
            .speed_min = 0.25,
            .speed_max = 4.0,
            .needs_reference = false,
        },
    .build = nd_build,
    .body_spec = nd_body_spec,
    .body_is_error = NULL,
    .error = nd_error,
    .probe = nd_probe,
    .ref_lost = nd_ref_lost,
    .ref_key = nd_ref_key,
    .ref_make = nd_ref_make,
    .ref_per_target = nd_per_target,
};
