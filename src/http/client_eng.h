/* client_eng: what the th_client facade (client.c) shares with its two engines, and nothing else
 * includes: client_h1.c (our HTTP/1.1 client for plain http://) and client_curl.c (libcurl).
 * Each engine's transfer record starts with a th_client_req, whose tag says which engine owns it. */
#ifndef TH_HTTP_CLIENT_ENG_H
#define TH_HTTP_CLIENT_ENG_H

#include "core/buf.h"
#include "http/client.h"

struct th_client_req {
    th_client_engine engine; /* TH_CLIENT_ENGINE_H1 or TH_CLIENT_ENGINE_CURL */
};

/* A request body laid out for sending (client.c): pieces in order, each either bytes in the transfer's own
 * buffer (copied at start: the request head on our engine, small pieces, a plain body) or borrowed bytes
 * of the caller's (th_client_opts.segs), written from where they are. */
typedef struct th_cbody_piece {
    const uint8_t *ext; /* borrowed bytes, or NULL: own->data + off */
    size_t off;
    size_t len;
} th_cbody_piece;

typedef struct th_cbody {
    th_cbody_piece p[TH_CLIENT_MAX_SEGS * 2 + 2];
    size_t n;
    uint64_t total;
    void (*release)(void *ud); /* the caller's hold on the borrowed bytes; NULL once released */
    void *ud;
} th_cbody;

/** Validates o's body (body or segs, not both; segs within TH_CLIENT_MAX_SEGS, no NULL data with a
 * length). 0 or -1. */
int th_cbody_check(const th_client_opts *o);
/** Lays out own's current bytes (if any: a request head) followed by o's body: a plain body and small
 * pieces are appended to own, large pieces are borrowed. b takes the caller's release only when this
 * returns 0. -1 on ENOMEM (own may have grown; nothing was taken). */
int th_cbody_build(th_cbody *b, th_buf *own, const th_client_opts *o);
/** Up to max uv bufs for the bytes from offset off on; returns how many. */
size_t th_cbody_bufs(const th_cbody *b, const th_buf *own, uint64_t off, uv_buf_t *out, size_t max);
/** Copies up to n bytes from offset off into dst; returns how many. */
size_t th_cbody_copy(const th_cbody *b, const th_buf *own, uint64_t off, uint8_t *dst, size_t n);
/** Gives the borrowed bytes back (the caller's release, once) and empties b. */
void th_cbody_release(th_cbody *b);

typedef struct th_curlc th_curlc;
typedef struct th_curlc_req th_curlc_req;
th_curlc *th_curlc_new(uv_loop_t *loop, const th_client_conf *conf);
th_curlc_req *th_curlc_start(th_curlc *c, const th_client_opts *opts, const th_client_cb *cb);
void th_curlc_cancel(th_curlc_req *r);
void th_curlc_resume(th_curlc_req *r);
size_t th_curlc_inflight(const th_curlc *c);
void th_curlc_close(th_curlc *c, void (*done)(void *ud), void *ud);

typedef struct th_h1c th_h1c;
typedef struct th_h1c_req th_h1c_req;
th_h1c *th_h1c_new(uv_loop_t *loop, const th_client_conf *conf);
/** NULL on bad options or ENOMEM; *unsupported set (and NULL returned) for a URL this engine does not
 * take (not http://, or user info in it): the facade then hands it to curl. */
th_h1c_req *th_h1c_start(th_h1c *c, const th_client_opts *opts, const th_client_cb *cb, bool *unsupported);
void th_h1c_cancel(th_h1c_req *r);
void th_h1c_resume(th_h1c_req *r);
size_t th_h1c_inflight(const th_h1c *c);
void th_h1c_close(th_h1c *c, void (*done)(void *ud), void *ud);

#endif
