/* parser: the request-parsing layer of the HTTP server, without sockets.
 *
 * A thin wrapper of http-parser (so it can be swapped for llhttp) that builds one request message at a
 * time: URL, headers (counted against max_header in our own callbacks, since http-parser's own limit is
 * a compile-time constant), path and query, and a body bounded by a per-request limit. It decides the
 * protocol errors (400, 413, 414, 417, 431, 501, 505) and stops after each complete message so the
 * caller can answer it before the next pipelined one is parsed. The fuzz target drives it directly. */
#ifndef TH_HTTP_PARSER_H
#define TH_HTTP_PARSER_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/** One header: offsets into th_http_msg.head, each string NUL-terminated there. */
typedef struct th_http_hdr {
    uint32_t name, name_len;
    uint32_t value, value_len;
} th_http_hdr;

/** The request being parsed. Memory is kept from one message to the next. */
typedef struct th_http_msg {
    th_buf head; /* url, header names and values, then path and query: each NUL-terminated */
    th_http_hdr *hdrs;
    uint32_t nhdrs, hcap;
    uint32_t url_len;
    uint32_t path, query; /* offsets into head, valid once head_done */
    size_t head_bytes;    /* bytes counted against max_header */
    th_buf body;
    uint64_t content_length;
    const char *method;
    int method_id; /* enum http_method */
    uint8_t major, minor;
    bool started;         /* a byte of this message has been seen */
    bool head_done;       /* headers complete */
    bool complete;        /* whole message (headers and body) in */
    bool has_clen;        /* Content-Length given */
    bool chunked;         /* Transfer-Encoding: chunked */
    bool keep_alive;      /* per the version and the Connection header */
    bool expect_continue; /* Expect: 100-continue on HTTP/1.1 with a body to come */
    bool upgrade;         /* Upgrade request: the connection cannot carry another HTTP request */
} th_http_msg;

typedef struct th_http_parser_cbs {
    /** First byte of a message. */
    void (*on_begin)(void *ud);
    /** Headers complete (msg readable): returns the body limit of this request. */
    size_t (*body_limit)(void *ud);
    /** Headers accepted (after the limit and Expect checks): 0 to go on, or an HTTP status to fail with. */
    int (*on_head)(void *ud);
} th_http_parser_cbs;

typedef struct th_http_parser {
    http_parser hp;
    th_http_msg msg;
    const th_http_parser_cbs *cbs; /* may be NULL */
    void *ud;
    size_t max_header;  /* bytes of request line + headers */
    size_t max_headers; /* number of header lines */
    size_t body_limit;
    int err_status;
    const char *err_code;    /* short machine code, e.g. "headers_too_large" */
    const char *err_message; /* for the client */
    uint8_t last;            /* last data callback: 0 url, 1 header name, 2 header value */
} th_http_parser;

void th_http_parser_init(th_http_parser *p, size_t max_header, const th_http_parser_cbs *cbs, void *ud);
void th_http_parser_free(th_http_parser *p);
/** Feeds bytes. Returns how many were consumed. It stops after a complete message (msg.complete; call
 * th_http_parser_next before feeding the rest) or at an error: then *status is set to the HTTP status
 * to answer with (err_code and err_message say why) and the parser must not be fed again. */
size_t th_http_parser_feed(th_http_parser *p, const char *data, size_t len, int *status);
/** Readies the parser for the next message after a complete one (memory is kept, capped). */
void th_http_parser_next(th_http_parser *p);
/** First header of that name (case-insensitive) of the current message, or NULL. */
const char *th_http_msg_header(const th_http_msg *m, const char *name);

#endif
