/* speak: runs one synthesis and streams it as the HTTP response. */
#include "api/api.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/str.h"

static void finish(th_api_ctx *c, int status, bool cut)
{
    th_http_req *req = c->req;
    th_api_log(c, status);
    if (c->synth) {
        th_synth_free(c->synth);
        c->synth = NULL;
    }
    th_hub *hub = c->hub;
    if (hub->stats.inflight) hub->stats.inflight--;
    th_api_ctx_free(c);
    th_http_set_data(req, NULL);
    th_http_end(req, cut);
}

static void on_drain(th_http_req *req, void *ud)
{
    th_api_ctx *c = ud;
    (void)req;
    c->waiting_drain = false;
    if (c->synth) th_synth_resume(c->synth);
}

static void on_client_gone(th_http_req *req, void *ud)
{
    th_api_ctx *c = ud;
    (void)req;
    if (c->synth) {
        th_synth_cancel(c->synth);
        c->synth = NULL;
    }
    c->error_code = "client_closed";
    finish(c, 499, true);
}

static void on_start(void *ud, const char *provider)
{
    th_api_ctx *c = ud;
    th_strlcpy(c->provider, provider, sizeof c->provider);
    th_http_set_header(c->req, "X-Request-Id", c->rid);
    th_http_set_header(c->req, "X-Provider", provider);
    th_http_set_header(c->req, "X-Cache", c->cache ? c->cache : "MISS");
    th_http_set_header(c->req, "X-Audio-Format", th_fmt_name(c->fmt));
    th_http_set_header(c->req, "Cache-Control", "no-store");
    const char *ct = c->mode == TH_STREAM_SSE ? "text/event-stream" : th_fmt_mime(c->fmt);
    c->started = true;
    c->status = 200;
    th_http_start(c->req, 200, ct, -1);
}

static int write_out(th_api_ctx *c, const void *data, size_t len)
{
    int rc = th_http_write(c->req, data, len);
    if (rc == 1 && !c->waiting_drain) {
        c->waiting_drain = true;
        th_http_on_drain(c->req, on_drain, c);
    }
    return rc == 1 ? 1 : 0;
}

static int write_sse_delta(th_api_ctx *c, const uint8_t *data, size_t len)
{
    th_buf b;
    th_buf_init(&b, 0);
    size_t b64 = 4 * ((len + 2) / 3);
    int rc = th_buf_reserve(&b, b64 + 64);
    if (rc != TH_BUF_OK) return -1;
    th_buf_append_str(&b, "data: {\"type\":\"speech.audio.delta\",\"audio\":\"");
    int n = EVP_EncodeBlock(b.data + b.len, data, (int)len);
    b.len += (size_t)n;
    th_buf_append_str(&b, "\"}\n\n");
    int w = write_out(c, b.data, b.len);
    th_buf_free(&b);
    return w;
}

static int on_data(void *ud, const uint8_t *data, size_t len)
{
    th_api_ctx *c = ud;
    c->bytes += len;
    c->hub->stats.audio_bytes += len;
    if (c->mode == TH_STREAM_SSE) {
        /* base64 in pieces of at most 48 KiB keeps each event small */
        int pause = 0;
        for (size_t off = 0; off < len; off += 49152) {
            size_t n = len - off < 49152 ? len - off : 49152;
            int w = write_sse_delta(c, data + off, n);
            if (w > 0) pause = 1;
        }
        return pause;
    }
    return write_out(c, data, len);
}

static void on_done(void *ud)
{
    th_api_ctx *c = ud;
    c->hub->stats.chars += (uint64_t)(c->chars > 0 ? c->chars : 0);
    if (!c->started) on_start(c, th_synth_provider(c->synth));
    if (c->mode == TH_STREAM_SSE) {
        char ev[160];
        int n = snprintf(ev, sizeof ev,
                         "data: {\"type\":\"speech.audio.done\",\"usage\":{\"input_characters\":%lld}}\n\n",
                         (long long)c->chars);
        th_http_write(c->req, ev, (size_t)n);
    }
    finish(c, 200, false);
}

static void on_error(void *ud, const th_perr *err, uint64_t bytes_out)
{
    th_api_ctx *c = ud;
    if (c->started || bytes_out > 0) {
        TH_LOG(c->hub->log, TH_LOG_WARN, "request %s: %s after %llu bytes: %s; response cut", c->rid,
               th_perr_kind_name(err->kind), (unsigned long long)bytes_out, err->message);
        c->error_code = "cut";
        finish(c, 200, true);
        return;
    }
    int status;
    const char *type, *code;
    th_api_perr_status(err, &status, &type, &code);
    th_synth_free(c->synth);
    c->synth = NULL;
    if (c->hub->stats.inflight) c->hub->stats.inflight--;
    if (err->retry_after_s > 0) c->retry_after_s = err->retry_after_s;
    th_api_error(c, status, type, code, "%s", err->message);
}

void th_api_speak(th_api_ctx *c, const th_synth_params *p)
{
    static const th_synth_cb cb_tmpl = {on_start, on_data, on_done, on_error, NULL};
    th_synth_cb cb = cb_tmpl;
    cb.ud = c;
    th_perr err = {0};
    c->fmt = p->fmt;
    if (c->voice == NULL && p->voice) c->voice = th_strndup(p->voice, strlen(p->voice));
    c->hub->stats.inflight++;
    c->synth = th_synth_start(c->hub, p, &cb, &err);
    if (c->synth == NULL) {
        if (c->hub->stats.inflight) c->hub->stats.inflight--;
        int status;
        const char *type, *code;
        th_api_perr_status(&err, &status, &type, &code);
        if (err.kind == TH_PERR_CLIENT) code = "invalid_voice";
        th_api_error(c, status, type, code, "%s", err.message);
        return;
    }
    th_http_on_close(c->req, on_client_gone, c);
}
