/* ttsfm: POST /api/generate, the form protocol of ttsfm's clients. */
#include "api/api.h"

#include <stdlib.h>
#include <string.h>

#include "core/str.h"
#include "http/body.h"

static const char *field(const th_form *f, const char *name)
{
    const th_field *fl = th_form_get(f, name);
    if (fl == NULL || fl->is_null) return NULL;
    return fl->value;
}

void th_api_ttsfm_generate(th_http_req *req, void *ud)
{
    (void)ud;
    th_api_ctx *c = th_http_get_data(req);
    c->shape = TH_SHAPE_OPENAI;
    c->route = "/api/generate";
    if (th_api_auth(c, false) != 0) return;
    size_t blen = 0;
    const uint8_t *body = th_http_body(req, &blen);
    th_form form;
    th_form_init(&form);
    char err[256] = "";
    int rc = th_body_parse(&form, th_http_header(req, "Content-Type"), body, blen, err, sizeof err);
    if (rc == TH_BODY_UNSUPPORTED) {
        th_api_error(c, 415, "invalid_request_error", "unsupported_media_type",
                     "send application/x-www-form-urlencoded, multipart/form-data or application/json (%s)",
                     err);
        goto out;
    }
    if (rc == TH_BODY_NOMEM) {
        th_api_error(c, 500, NULL, "internal_error", "out of memory");
        goto out;
    }
    if (rc != TH_BODY_OK) {
        th_api_error(c, 400, NULL, "malformed_body", "%s", err[0] ? err : "malformed request body");
        goto out;
    }

    const th_field *in = th_form_get(&form, "input");
    if (in && (in->is_json || in->is_null)) in = NULL;
    const char *generation = field(&form, "generation");
    if (generation && *generation && !th_api_set_request_id(c, generation)) {
        th_api_error(c, 400, NULL, "invalid_generation",
                     "'generation' must be 1-128 characters of letters, digits, '-', '_', '.', ':'");
        goto out;
    }
    size_t chars = 0;
    if (th_api_check_input(c, "input", in ? in->value : NULL, in ? in->value_len : 0, &chars) != 0) goto out;
    if (memchr(in->value, 0, in->value_len) != NULL) {
        th_api_error(c, 400, NULL, "invalid_input", "'input' must not contain NUL bytes");
        goto out;
    }
    const char *voice = field(&form, "voice");
    if (voice == NULL || *voice == 0) {
        th_api_error(c, 400, NULL, "missing_voice", "'voice' is required");
        goto out;
    }
    c->voice = th_strndup(voice, strlen(voice));
    th_fmt fmt;
    if (th_api_check_format(c, "response_format", field(&form, "response_format"), &fmt) != 0) goto out;
    double speed;
    if (th_api_check_speed(c, "speed", field(&form, "speed"), &speed) != 0) goto out;
    int rate = 0;
    const char *sr = field(&form, "sample_rate");
    if (sr && *sr) {
        int64_t v;
        if (th_str_to_i64(sr, 8000, 48000, &v) != 0) {
            th_api_error(c, 400, NULL, "invalid_sample_rate",
                         "'sample_rate' must be an integer from 8000 to 48000");
            goto out;
        }
        rate = (int)v;
    }
    th_synth_params p = {
        .text = in->value,
        .text_len = in->value_len,
        .chars = chars,
        .voice = voice,
        .language = field(&form, "language"),
        .prompt = field(&form, "prompt"),
        .model = field(&form, "model"),
        .generation = c->rid,
        .fmt = fmt,
        .sample_rate = rate,
        .speed = speed,
    };
    th_api_speak(c, &p);
out:
    th_form_free(&form);
}
