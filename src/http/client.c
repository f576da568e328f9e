/* client: the facade over the two upstream engines (see client.h).
 *
 * th_client owns our HTTP/1.1 engine from the start and creates the libcurl engine on the first transfer
 * that needs it (https://, a proxy in the environment, or TH_CLIENT_ENGINE_CURL). Transfers carry their
 * engine's tag, so cancel and resume go straight to the owner. th_client_close closes both engines and
 * calls done once the last one has freed its handles. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http/client_eng.h"

struct th_client {
    uv_loop_t *loop;
    th_client_conf conf;
    th_h1c *h1;
    th_curlc *cu;
    bool proxy_env; /* http_proxy / all_proxy set when the client was made: curl honours them */
    bool closing;
    int open_engines; /* engines not through their close yet */
    void (*done)(void *ud);
    void *done_ud;
};

const char *th_client_result_name(th_client_result r)
{
    switch (r) {
    case TH_CLIENT_OK:
        return "ok";
    case TH_CLIENT_CONNECT:
        return "connect";
    case TH_CLIENT_TIMEOUT_CONNECT:
        return "timeout_connect";
    case TH_CLIENT_TIMEOUT_FIRST:
        return "timeout_first_byte";
    case TH_CLIENT_TIMEOUT_TOTAL:
        return "timeout_total";
    case TH_CLIENT_RESET:
        return "reset";
    case TH_CLIENT_PROTOCOL:
        return "protocol";
    case TH_CLIENT_TOO_LARGE:
        return "too_large";
    case TH_CLIENT_CANCELLED:
        return "cancelled";
    case TH_CLIENT_ABORTED:
        return "aborted";
    case TH_CLIENT_INTERNAL:
        return "internal";
    }
    return "unknown";
}

const char *th_client_header_get(const th_client_header *h, size_t n, const char *name)
{
    if (!h || !name) return NULL;
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(h[i].name, name) == 0) return h[i].value;
    return NULL;
}

/* ---------------------------------------------------------------- request bodies in pieces */

int th_cbody_check(const th_client_opts *o)
{
    if (o->body_len > 0 && !o->body) return -1;
    if (o->segs == NULL) return o->nsegs == 0 ? 0 : -1;
    if (o->body != NULL || o->nsegs > TH_CLIENT_MAX_SEGS) return -1;
    for (size_t i = 0; i < o->nsegs; i++)
        if (o->segs[i].len > 0 && o->segs[i].data == NULL) return -1;
    return 0;
}

/* Appends n bytes to own as a piece, extending the last piece when it ends where these begin. */
static int piece_own(th_cbody *b, th_buf *own, const uint8_t *data, size_t n)
{
    size_t at = own->len;
    if (n > 0 && th_buf_append(own, data, n) != TH_BUF_OK) return -1;
    th_cbody_piece *last = b->n > 0 ? &b->p[b->n - 1] : NULL;
    if (last != NULL && last->ext == NULL && last->off + last->len == at)
        last->len += n;
    else if (n > 0)
        b->p[b->n++] = (th_cbody_piece){NULL, at, n};
    b->total += n;
    return 0;
}

int th_cbody_build(th_cbody *b, th_buf *own, const th_client_opts *o)
{
    *b = (th_cbody){0};
    if (own->len > 0) {
        b->p[b->n++] = (th_cbody_piece){NULL, 0, own->len};
        b->total = own->len;
    }
    if (o->segs == NULL) {
        if (o->body_len > 0 && piece_own(b, own, o->body, o->body_len) != 0) return -1;
        return 0;
    }
    size_t copy = 0;
    for (size_t i = 0; i < o->nsegs; i++)
        if (o->segs[i].len <= TH_CLIENT_SEG_COPY_MAX) copy += o->segs[i].len;
    if (th_buf_reserve(own, copy) != TH_BUF_OK) return -1;
    for (size_t i = 0; i < o->nsegs; i++) {
        const th_client_seg *sg = &o->segs[i];
        if (sg->len == 0) continue;
        if (sg->len <= TH_CLIENT_SEG_COPY_MAX) {
            if (piece_own(b, own, sg->data, sg->len) != 0) return -1;
        } else {
            b->p[b->n++] = (th_cbody_piece){sg->data, 0, sg->len};
            b->total += sg->len;
        }
    }
    b->release = o->segs_release;
    b->ud = o->segs_ud;
    return 0;
}

static const uint8_t *piece_at(const th_cbody_piece *p, const th_buf *own)
{
    return p->ext != NULL ? p->ext : own->data + p->off;
}

size_t th_cbody_bufs(const th_cbody *b, const th_buf *own, uint64_t off, uv_buf_t *out, size_t max)
{
    size_t k = 0;
    for (size_t i = 0; i < b->n && k < max; i++) {
        const th_cbody_piece *p = &b->p[i];
        if (off >= p->len) {
            off -= p->len;
            continue;
        }
        out[k++] = uv_buf_init((char *)(uintptr_t)(piece_at(p, own) + off), (unsigned)(p->len - off));
        off = 0;
    }
    return k;
}

size_t th_cbody_copy(const th_cbody *b, const th_buf *own, uint64_t off, uint8_t *dst, size_t n)
{
    size_t done = 0;
    for (size_t i = 0; i < b->n && done < n; i++) {
        const th_cbody_piece *p = &b->p[i];
        if (off >= p->len) {
            off -= p->len;
            continue;
        }
        size_t k = p->len - (size_t)off;
        if (k > n - done) k = n - done;
        memcpy(dst + done, piece_at(p, own) + off, k);
        done += k;
        off = 0;
    }
    return done;
}

void th_cbody_release(th_cbody *b)
{
    void (*rel)(void *) = b->release;
    void *ud = b->ud;
    *b = (th_cbody){0};
    if (rel) rel(ud);
}

static bool env_set(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && *v != '\0';
}

th_client *th_client_new(uv_loop_t *loop, const th_client_conf *conf)
{
    if (!loop) return NULL;
    th_client *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    if (conf) c->conf = *conf;
    c->proxy_env = env_set("http_proxy") || env_set("all_proxy") || env_set("ALL_PROXY");
    if (c->conf.engine != TH_CLIENT_ENGINE_CURL) {
        c->h1 = th_h1c_new(loop, &c->conf);
        if (!c->h1) {
            free(c);
            return NULL;
        }
        c->open_engines++;
    }
    return c;
}

static th_curlc *curl_engine(th_client *c)
{
    if (!c->cu) {
        c->cu = th_curlc_new(c->loop, &c->conf);
        if (c->cu) c->open_engines++;
    }
    return c->cu;
}

th_client_req *th_client_start(th_client *c, const th_client_opts *opts, const th_client_cb *cb)
{
    if (!c || !opts || !opts->url || !cb || c->closing) return NULL;
    if (c->h1 && !c->proxy_env) {
        bool unsupported = false;
        th_h1c_req *r = th_h1c_start(c->h1, opts, cb, &unsupported);
        if (r || !unsupported) return (th_client_req *)(void *)r;
    }
    th_curlc *cu = curl_engine(c);
    return cu ? (th_client_req *)(void *)th_curlc_start(cu, opts, cb) : NULL;
}

void th_client_cancel(th_client_req *r)
{
    if (!r) return;
    if (r->engine == TH_CLIENT_ENGINE_H1)
        th_h1c_cancel((th_h1c_req *)(void *)r);
    else
        th_curlc_cancel((th_curlc_req *)(void *)r);
}

void th_client_resume(th_client_req *r)
{
    if (!r) return;
    if (r->engine == TH_CLIENT_ENGINE_H1)
        th_h1c_resume((th_h1c_req *)(void *)r);
    else
        th_curlc_resume((th_curlc_req *)(void *)r);
}

size_t th_client_inflight(const th_client *c)
{
    if (!c) return 0;
    return (c->h1 ? th_h1c_inflight(c->h1) : 0) + (c->cu ? th_curlc_inflight(c->cu) : 0);
}

static void engine_closed(void *ud)
{
    th_client *c = ud;
    if (--c->open_engines > 0) return;
    void (*done)(void *) = c->done;
    void *done_ud = c->done_ud;
    free(c);
    if (done) done(done_ud);
}

void th_client_close(th_client *c, void (*done)(void *ud), void *ud)
{
    if (!c || c->closing) return;
    c->closing = true;
    c->done = done;
    c->done_ud = ud;
    if (c->open_engines == 0) { /* curl-only client that never started a transfer */
        c->open_engines = 1;
        engine_closed(c);
        return;
    }
    /* Count both before closing either: an engine may report closed from inside its close call. */
    th_h1c *h1 = c->h1;
    th_curlc *cu = c->cu;
    if (h1) th_h1c_close(h1, engine_closed, c);
    if (cu) th_curlc_close(cu, engine_closed, c);
}
