/* resp: the HTTP/1.x response parser of the upstream client, without sockets.
 *
 * Why not http-parser here: it walks the head byte by byte and calls back twice per header; on the proxy
 * path that was ~10,000 instructions per response. This parser finds the end of the head with memchr,
 * splits lines once, and hands the body on in the largest slices it can (Content-Length, chunked, or until
 * the connection closes). Interim 1xx responses are skipped; 101 is an error (we never ask to upgrade).
 *
 * Bounds: head (status line and headers, across reads) 16 KiB, 100 headers, chunk-size lines 4 KiB,
 * trailers 16 KiB, Content-Length and chunk sizes < 2^60. Anything else that is not HTTP/1.x is an error,
 * with a short reason. The fuzz target drives it directly. */
#ifndef TH_HTTP_RESP_H
#define TH_HTTP_RESP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "http/client.h"

#define TH_RESP_HEAD_MAX 16384
#define TH_RESP_MAX_HEADERS 100

typedef enum {
    TH_RESP_MORE = 0, /* all bytes used; the response goes on */
    TH_RESP_DONE,     /* the response is complete (*used says where it ended) */
    TH_RESP_PAUSED,   /* on_body returned 1: feed the rest (from *used) later */
    TH_RESP_STOPPED,  /* a callback returned -1 */
    TH_RESP_ERROR,    /* not a valid response: th_resp_error says why */
} th_resp_rc;

typedef struct th_resp_cb {
    /** The final head. headers point into the parser (valid until the next th_resp_init). 0 to go on,
     * -1 to stop. */
    int (*on_head)(void *ud, int status, const th_client_header *headers, size_t n);
    /** Body bytes (dechunked). 0 to go on, 1 to pause after these bytes, -1 to stop. */
    int (*on_body)(void *ud, const uint8_t *data, size_t len);
} th_resp_cb;

typedef struct th_resp {
    th_buf head;     /* a head that spans reads */
    th_buf hdrs;     /* "name\0value\0" of the final head */
    uint64_t remain; /* body bytes (Content-Length) or chunk bytes left */
    int64_t clen;    /* Content-Length of the final head, -1 if none */
    const char *err;
    size_t line;    /* bytes of the current chunk-size or trailer line */
    size_t trailer; /* trailer bytes so far */
    int state;
    int status;
    int digits; /* hex digits of the current chunk size */
    bool head_request;
    bool keep_alive;
    bool in_ext; /* in a chunk extension */
    bool got_cr;
} th_resp;

void th_resp_init(th_resp *p, bool head_request);
void th_resp_free(th_resp *p);
/** Feeds bytes. *used = bytes taken (all of them for MORE; up to the end of the message for DONE; up to
 * the pause for PAUSED). scratch must hold TH_RESP_MAX_HEADERS entries (on_head's array). */
th_resp_rc th_resp_feed(th_resp *p, const uint8_t *data, size_t len, size_t *used, const th_resp_cb *cb,
                        void *ud, th_client_header *scratch);
/** The connection closed: DONE when the body ran until the close, else ERROR (truncated). */
th_resp_rc th_resp_eof(th_resp *p);
/** A byte of a head was seen (the status line at least started). */
bool th_resp_started(const th_resp *p);
bool th_resp_head_done(const th_resp *p);
/** The connection may carry another request after this (complete) response. */
bool th_resp_keep_alive(const th_resp *p);
const char *th_resp_error(const th_resp *p);

#endif
