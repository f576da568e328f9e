/* client: upstream HTTP(S) on the hub's uv loop.
 *
 * Two engines behind one interface, chosen per transfer by th_client_start:
 *   - plain http:// goes through our own HTTP/1.1 client (client_h1.c): uv_tcp streams kept readable for
 *     their whole life, http-parser in response mode, a per-host pool of keep-alive connections, one read
 *     buffer per client, a small record per transfer (the cost that matters with 10,000 parked requests);
 *   - https://, and every URL while an http_proxy/all_proxy variable is set, goes through libcurl's
 *     multi_socket API (client_curl.c), created on first use.
 * Both give the same callbacks, results and timeouts. Nothing blocks the loop. Callbacks run on the loop
 * thread, never inside th_client_start. */
#ifndef TH_HTTP_CLIENT_H
#define TH_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct th_client th_client;
typedef struct th_client_req th_client_req;

typedef enum {
    TH_CLIENT_ENGINE_AUTO = 0, /* our HTTP/1.1 client for http://, libcurl for https:// and proxies */
    TH_CLIENT_ENGINE_CURL = 1, /* libcurl for every URL */
    TH_CLIENT_ENGINE_H1 = 2,   /* only used as the tag of a transfer */
} th_client_engine;

typedef struct th_client_conf {
    th_client_engine engine;
    long max_host_connections;  /* per host:port; 0 = 64 */
    long max_total_connections; /* 0 = 1024 */
    long max_connects_cache;    /* idle connections kept; 0 = 256 */
} th_client_conf;

/** How a transfer ended. Only this decides retry, fallback and breaker accounting upstream. */
typedef enum {
    TH_CLIENT_OK = 0,          /* the whole response arrived (any HTTP status) */
    TH_CLIENT_CONNECT,         /* refused, unreachable, DNS failure */
    TH_CLIENT_TIMEOUT_CONNECT, /* no connection within connect_timeout_ms */
    TH_CLIENT_TIMEOUT_FIRST,   /* connected, no response byte within first_byte_timeout_ms */
    TH_CLIENT_TIMEOUT_TOTAL,   /* the whole exchange took longer than total_timeout_ms */
    TH_CLIENT_RESET,           /* the peer closed or reset mid-response (truncated body) */
    TH_CLIENT_PROTOCOL,        /* not HTTP, bad chunking, bad headers */
    TH_CLIENT_TOO_LARGE,       /* the response body passed max_body */
    TH_CLIENT_CANCELLED,       /* never reported: cancel means no callbacks */
    TH_CLIENT_ABORTED,         /* a callback asked to stop (on_head or on_body returned -1) */
    TH_CLIENT_INTERNAL,        /* out of memory, curl setup failure */
} th_client_result;

const char *th_client_result_name(th_client_result r);

typedef struct th_client_header {
    const char *name;  /* lower-cased */
    const char *value; /* trimmed */
} th_client_header;

/** One piece of a request body given in pieces (th_client_opts.segs). */
typedef struct th_client_seg {
    const uint8_t *data;
    size_t len;
} th_client_seg;

/** The most pieces one body may have. */
#define TH_CLIENT_MAX_SEGS 8
/** Pieces up to this size are copied at start; larger ones are borrowed (sent from where they are). */
#define TH_CLIENT_SEG_COPY_MAX 4096

typedef struct th_client_opts {
    const char *method; /* "GET", "POST", ... (default POST when body is set, else GET) */
    const char *url;
    const char *const *headers; /* "Name: value" strings, NULL-terminated; may be NULL */
    const uint8_t *body;        /* copied at start */
    size_t body_len;
    /* Or the body in pieces, sent in order as one body (body must then be NULL): small pieces are copied
     * at start, large ones are written straight from the caller's memory (writev on our engine, a read
     * callback on libcurl), never copied. The borrowed bytes must stay valid and unchanged until
     * segs_release(segs_ud) runs: exactly once, on the loop thread, when the transfer no longer reads them
     * (it ended, was cancelled, or its client closed); never inside th_client_start, and not at all when
     * th_client_start returns NULL (the caller still owns them then). segs_release may be NULL. */
    const th_client_seg *segs;
    size_t nsegs; /* at most TH_CLIENT_MAX_SEGS */
    void (*segs_release)(void *ud);
    void *segs_ud;
    uint64_t connect_timeout_ms;    /* 0 = 10 s */
    uint64_t first_byte_timeout_ms; /* 0 = total */
    uint64_t total_timeout_ms;      /* 0 = 120 s */
    uint64_t max_body;              /* 0 = unlimited (bytes delivered through on_body) */
} th_client_opts;

typedef struct th_client_cb {
    /** All response headers are in. Return 0 to go on, -1 to abort (ends with TH_CLIENT_ABORTED). */
    int (*on_head)(void *ud, int status, const th_client_header *headers, size_t n);
    /** Body bytes as they arrive (dechunked). Return 0 to go on, 1 to pause until th_client_resume(),
     * -1 to abort. */
    int (*on_body)(void *ud, const uint8_t *data, size_t len);
    /** The end, exactly once unless cancelled. status is the HTTP status (0 when none arrived). */
    void (*on_done)(void *ud, th_client_result result, int status, const char *detail);
    void *ud;
} th_client_cb;

th_client *th_client_new(uv_loop_t *loop, const th_client_conf *conf);
/** Starts a transfer. NULL on bad options or ENOMEM. Callbacks come later, never inside this call. */
th_client_req *th_client_start(th_client *c, const th_client_opts *opts, const th_client_cb *cb);
/** Stops a transfer: no callback after this returns. Safe from inside its own callbacks. */
void th_client_cancel(th_client_req *r);
/** Resumes a transfer paused by on_body returning 1. */
void th_client_resume(th_client_req *r);
size_t th_client_inflight(const th_client *c);
/** Cancels every transfer, closes the handles, and calls done on the loop thread when all is freed. */
void th_client_close(th_client *c, void (*done)(void *ud), void *ud);

/** Case-insensitive lookup in a header array; NULL when absent. */
const char *th_client_header_get(const th_client_header *h, size_t n, const char *name);

#endif
