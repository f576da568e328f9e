/* openai: POST /v1/audio/speech, GET /v1/models, GET /v1/audio/voices. */
#include "api/api.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/str.h"
#include "http/body.h"
#include "providers/espeak.h"

static const char *const openai_voices[] = {"alloy", "ash",  "ballad",  "coral", "echo",  "fable", "nova",
                                            "onyx",  "sage", "shimmer", "verse", "marin", "cedar", NULL};

static bool is_json_type(const char *ct)
{
    if (ct == NULL) return false;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, "; ");
    if (th_strn_ieq(ct, n, "application/json")) return true;
    return n > 5 && th_strn_ieq(ct + n - 5, 5, "+json");
}

/* The JSON body, an object; NULL when an error was sent. */
static json_t *read_body(th_api_ctx *c)
{
    size_t blen = 0;
    const uint8_t *body = th_http_body(c->req, &blen);
    char err[256] = "";
    json_t *j = th_json_parse_bounded(body, blen, TH_JSON_MAX_DEPTH, err, sizeof err);
    if (j == NULL) {
        th_api_error(c, 400, NULL, "malformed_body", "%s", err[0] ? err : "malformed JSON");
        return NULL;
    }
    if (!json_is_object(j)) {
        th_api_error(c, 400, NULL, "malformed_body", "the body must be a JSON object");
        json_decref(j);
        return NULL;
    }
    return j;
}

/* input, voice (a name or {"id": ...}), model and instructions into p. 0, or -1 when an error was sent. */
static int read_what(th_api_ctx *c, json_t *j, th_synth_params *p)
{
    json_t *jin = json_object_get(j, "input");
    if (jin && !json_is_string(jin)) {
        th_api_error(c, 400, NULL, "invalid_input", "'input' must be a string");
        return -1;
    }
    p->text = jin ? json_string_value(jin) : NULL;
    p->text_len = jin ? json_string_length(jin) : 0;
    if (th_api_check_input(c, "input", p->text, p->text_len, &p->chars) != 0) return -1;
    json_t *jv = json_object_get(j, "voice");
    const char *voice = NULL;
    if (json_is_string(jv))
        voice = json_string_value(jv);
    else if (json_is_object(jv) && json_is_string(json_object_get(jv, "id")))
        voice = json_string_value(json_object_get(jv, "id"));
    if (voice == NULL || *voice == 0) {
        th_api_error(c, 400, NULL, "missing_voice", "'voice' is required: a voice name or {\"id\": \"...\"}");
        return -1;
    }
    c->voice = th_strndup(voice, strlen(voice));
    p->voice = voice;
    return 0;
}

/* response_format, speed, stream_format and sample_rate into p and c->mode. 0, or -1 when an error was
 * sent. */
static int read_how(th_api_ctx *c, json_t *j, th_synth_params *p)
{
    json_t *jf = json_object_get(j, "response_format");
    if (jf && !json_is_string(jf) && !json_is_null(jf)) {
        th_api_error(c, 400, NULL, "invalid_response_format", "'response_format' must be a string");
        return -1;
    }
    if (th_api_check_format(c, "response_format", json_is_string(jf) ? json_string_value(jf) : NULL,
                            &p->fmt) != 0)
        return -1;
    json_t *js = json_object_get(j, "speed");
    if (js && !json_is_null(js)) {
        if (!json_is_number(js) || json_number_value(js) < 0.25 || json_number_value(js) > 4.0) {
            th_api_error(c, 400, NULL, "invalid_speed", "'speed' must be a number from 0.25 to 4.0");
            return -1;
        }
        p->speed = json_number_value(js);
    }
    json_t *jsf = json_object_get(j, "stream_format");
    c->mode = TH_STREAM_AUDIO;
    if (jsf && !json_is_null(jsf)) {
        const char *sf = json_is_string(jsf) ? json_string_value(jsf) : "";
        if (strcmp(sf, "sse") == 0)
            c->mode = TH_STREAM_SSE;
        else if (strcmp(sf, "audio") != 0) {
            th_api_error(c, 400, NULL, "invalid_stream_format", "'stream_format' must be 'audio' or 'sse'");
            return -1;
        }
    }
    json_t *jsr = json_object_get(j, "sample_rate");
    if (jsr && !json_is_null(jsr)) {
        if (!json_is_integer(jsr) || json_integer_value(jsr) < 8000 || json_integer_value(jsr) > 48000) {
            th_api_error(c, 400, NULL, "invalid_sample_rate",
                         "'sample_rate' must be an integer from 8000 to 48000");
            return -1;
        }
        p->sample_rate = (int)json_integer_value(jsr);
    }
    return 0;
}

void th_api_openai_speech(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c = th_http_get_data(req);
    c->shape = TH_SHAPE_OPENAI;
    c->route = "/v1/audio/speech";
    if (th_api_auth(c, false) != 0) return;
    if (!is_json_type(th_http_header(req, "Content-Type"))) {
        th_api_error(c, 415, "invalid_request_error", "unsupported_media_type",
                     "this endpoint takes application/json");
        return;
    }
    json_t *j = read_body(c);
    if (j == NULL) return;
    th_synth_params p = {.generation = c->rid, .speed = 1.0};
    if (read_what(c, j, &p) == 0) {
        json_t *jm = json_object_get(j, "model"), *ji = json_object_get(j, "instructions");
        p.model = json_is_string(jm) ? json_string_value(jm) : NULL;
        p.prompt = json_is_string(ji) ? json_string_value(ji) : NULL;
        if (read_how(c, j, &p) == 0) th_api_speak(c, &p);
    }
    json_decref(j);
}

void th_api_openai_models(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/v1/models";
    if (th_api_auth(c, false) != 0) return;
    json_t *data = json_array();
    const char *base[] = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", NULL};
    for (size_t i = 0; base[i]; i++)
        json_array_append_new(data,
                              json_pack("{s:s,s:s,s:I,s:s}", "id", base[i], "object", "model", "created",
                                        (json_int_t)(hub->started_ms / 1000), "owned_by", "ttshub"));
    for (size_t i = 0; i < hub->cfg->router.n_routes; i++) {
        const char *m = hub->cfg->router.routes[i].model;
        if (m == NULL || *m == 0 || strpbrk(m, "*?")) continue;
        json_array_append_new(data, json_pack("{s:s,s:s,s:I,s:s}", "id", m, "object", "model", "created",
                                              (json_int_t)(hub->started_ms / 1000), "owned_by", "ttshub"));
    }
    th_api_json(c, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
}

static json_t *providers_for(th_hub *hub, const char *voice)
{
    json_t *arr = json_array();
    size_t idx[16];
    const char *ev[16];
    size_t n = th_route_candidates(&hub->route, NULL, voice, NULL, NULL, NULL, idx, ev, 16);
    for (size_t k = 0; k < n; k++)
        json_array_append_new(arr, json_string(hub->providers[idx[k]]->conf->name));
    return arr;
}

void th_api_openai_voices(th_http_req *req, void *ud)
{
    th_hub *hub = ud;
    th_api_ctx *c = th_http_get_data(req);
    c->route = "/v1/audio/voices";
    if (th_api_auth(c, false) != 0) return;
    json_t *voices = json_array();
    for (size_t i = 0; i < hub->cfg->n_voices; i++) {
        const th_voice_conf *v = &hub->cfg->voices[i];
        json_t *prov = json_array();
        for (size_t k = 0; k < v->n_providers; k++)
            json_array_append_new(prov, json_string(v->providers[k].key));
        if (json_array_size(prov) == 0) {
            json_decref(prov);
            prov = providers_for(hub, v->id);
        }
        json_array_append_new(voices, json_pack("{s:s,s:s,s:s,s:o}", "id", v->id, "name", v->id, "language",
                                                v->language ? v->language : "", "providers", prov));
    }
    for (size_t i = 0; openai_voices[i]; i++) {
        bool listed = false;
        for (size_t k = 0; k < hub->cfg->n_voices; k++)
            if (strcmp(hub->cfg->voices[k].id, openai_voices[i]) == 0) listed = true;
        if (listed) continue;
        json_t *prov = providers_for(hub, openai_voices[i]);
        if (json_array_size(prov) == 0) {
            json_decref(prov);
            continue;
        }
        json_array_append_new(voices, json_pack("{s:s,s:s,s:s,s:o}", "id", openai_voices[i], "name",
                                                openai_voices[i], "language", "en", "providers", prov));
    }
    th_api_json(c, 200, json_pack("{s:o}", "voices", voices));
}
