/* http: the hand-written HTTP/1.1 server on libuv + http-parser.
 *
 * One server per loop. It accepts connections, parses requests (keep-alive,
 * pipelining, chunked bodies, Expect: 100-continue), enforces the limits and
 * timeouts below, and hands each complete request to one handler on the
 * loop thread. Protocol errors (400, 408, 413, 414, 431, 501, 503 when over
 * max_connections) are answered here, with the JSON error body of API.md.
 *
 * Lifetime of a th_http_req: the server creates it when its headers are in
 * and calls the handler once its body is complete. From then on the handler
 * owns one reference and must call th_http_respond() or th_http_end()
 * exactly once, even after the client has gone away (th_http_on_close()
 * tells it so). The req is freed only when both the connection and the
 * handler are done with it, so a handler never sees a dangling req. */
#ifndef TH_HTTP_HTTP_H
#define TH_HTTP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"

typedef struct th_http_server th_http_server;
typedef struct th_http_req th_http_req;

typedef struct th_http_limits {
    size_t max_header;           /* bytes of request line + headers (431 past it; 414 for the URL alone) */
    size_t max_body;             /* 413 past it */
    size_t max_upload;           /* the body limit of routes that th_http_body_limit_fn marks as uploads */
    uint32_t max_connections;    /* past it: 503 and close */
    uint64_t header_timeout_ms;  /* from the first byte of a request to the end of its headers: 408 */
    uint64_t idle_timeout_ms;    /* keep-alive connection with no request in progress: closed quietly */
    uint64_t request_timeout_ms; /* from the first byte to the end of the body: 408 */
    uint32_t max_connections_per_ip; /* open connections of one client IP (IPv6: its /64); past it 503 and
                                        close; 0 = no cap */
    uint64_t max_buffered_bodies;    /* request bodies in memory, all connections together (reserved at the
                                        head by Content-Length, or the body limit when chunked); past it 503;
                                        0 = no cap */
} th_http_limits;

/** Called on the loop thread once the whole request (headers and body) has arrived. */
typedef void (*th_http_handler)(th_http_req *req, void *ud);
/** Optional: called when the headers are in, to pick the body limit of this request (e.g. max_upload
 * for upload routes). Returns the limit in bytes. */
typedef size_t (*th_http_body_limit_fn)(th_http_req *req, void *ud);

th_http_server *th_http_server_new(uv_loop_t *loop, const th_http_limits *lim, th_http_handler handler,
                                   void *ud, th_log *log);
void th_http_server_set_body_limit_fn(th_http_server *s, th_http_body_limit_fn fn);
/** Replaces the limits for connections accepted from now on (config reload). */
void th_http_server_set_limits(th_http_server *s, const th_http_limits *lim);
/** Binds with SO_REUSEPORT (before th_http_server_listen), so another process can listen on the same
 * port; on shutdown the connections queued on this listener are taken and served before it closes. */
void th_http_server_set_reuse_port(th_http_server *s, bool on);
/** addr: "0.0.0.0:8080", "127.0.0.1:0", "[::]:8080", ":8080". 0 on success; on failure err says why. */
int th_http_server_listen(th_http_server *s, const char *addr, char *err, size_t errlen);
/** The port actually bound (useful with port 0). */
int th_http_server_port(const th_http_server *s);
/** Stops accepting, closes idle connections and connections when their in-flight response ends,
 * force-closes what is left after grace_ms, then calls done (on the loop thread). */
void th_http_server_shutdown(th_http_server *s, uint64_t grace_ms, void (*done)(void *ud), void *ud);
/** Frees the server; only after shutdown's done callback, or before listen. */
void th_http_server_free(th_http_server *s);
size_t th_http_server_connections(const th_http_server *s);
size_t th_http_server_inflight(const th_http_server *s);

/* ---- request ---- */
const char *th_http_method(const th_http_req *r); /* "GET", "POST", ... */
const char *th_http_path(const th_http_req *r);   /* raw path without the query, NUL-terminated */
const char *th_http_query(const th_http_req *r);  /* raw query without '?', "" when none */
/** First header of that name (case-insensitive), NUL-terminated, or NULL. */
const char *th_http_header(const th_http_req *r, const char *name);
size_t th_http_header_count(const th_http_req *r);
void th_http_header_at(const th_http_req *r, size_t i, const char **name, const char **value);
const uint8_t *th_http_body(const th_http_req *r, size_t *len);
const char *th_http_peer(const th_http_req *r);  /* client IP as text */
uint64_t th_http_start_us(const th_http_req *r); /* th_mono_us() when the first byte arrived */
/** Path parameters set by the router ({id}); NULL when absent. */
const char *th_http_param(const th_http_req *r, const char *name);
int th_http_set_param(th_http_req *r, const char *name, const char *value);
/** Per-request slot for the handler. */
void th_http_set_data(th_http_req *r, void *data);
void *th_http_get_data(const th_http_req *r);

/* ---- response ---- */
/** Adds a response header (copied). Only before th_http_respond/th_http_start. */
int th_http_set_header(th_http_req *r, const char *name, const char *value);
/** A complete response; ends the exchange (the handler's reference is released). */
void th_http_respond(th_http_req *r, int status, const char *content_type, const void *body, size_t len);
/** Starts a streamed response. content_length < 0: chunked transfer. Returns 0, or -1 if the client is gone.
 */
int th_http_start(th_http_req *r, int status, const char *content_type, int64_t content_length);
/** Queues body bytes (copied). Returns 0 when the caller may go on, 1 when it should pause until the
 * drain callback (output above the high watermark), -1 when the client is gone. */
int th_http_write(th_http_req *r, const void *data, size_t len);
/** Ends the response (the final chunk for chunked) and releases the handler's reference. After a
 * client abort it only releases. With cut=true the response is cut on purpose: for chunked, no final
 * chunk is sent and the connection is closed, so the client sees a truncated body. */
void th_http_end(th_http_req *r, bool cut);
/** Called once when queued output drops below the low watermark after th_http_write returned 1. */
void th_http_on_drain(th_http_req *r, void (*cb)(th_http_req *r, void *ud), void *ud);
/** Called once if the client goes away before th_http_end: stop producing, then call th_http_end. */
void th_http_on_close(th_http_req *r, void (*cb)(th_http_req *r, void *ud), void *ud);
/** Protocol upgrade (WebSocket): sends "101 Switching Protocols", Connection: Upgrade and the headers
 * set so far (the handler sets Upgrade and the protocol's own), and from then on the connection carries raw
 * bytes: on_data gets every byte the client sends after the request, th_http_raw_write queues bytes, and
 * th_http_end(r, false) ends it (FIN after the queued output). The server sets no deadline on an upgraded
 * connection: the protocol keeps its own. on_close still fires if the client goes away. 0, or -1 when the
 * request is not an Upgrade request, a response was started, or the client is gone. */
int th_http_upgrade(th_http_req *r,
                    void (*on_data)(th_http_req *r, const uint8_t *data, size_t len, void *ud), void *ud);
/** Queues raw bytes on an upgraded connection: 0, 1 above the high watermark (on_drain fires below the
 * low one), -1 when the connection is gone. */
int th_http_raw_write(th_http_req *r, const void *data, size_t len);
/** Bytes queued and not yet taken by the socket. */
size_t th_http_queued(const th_http_req *r);
bool th_http_aborted(const th_http_req *r);
bool th_http_started(const th_http_req *r);
int th_http_status(const th_http_req *r);
uint64_t th_http_bytes_sent(const th_http_req *r); /* body bytes */

/** Standard reason phrase. */
const char *th_http_reason(int status);

#endif
