/* ws: WebSocket (RFC 6455) server connections on top of th_http_upgrade, framed by wslay.
 *
 * th_ws_accept checks the handshake (GET, Upgrade: websocket, Connection: upgrade, version 13, a
 * 16-byte base64 key), answers 101 with Sec-WebSocket-Accept and from then on owns the request. wslay
 * parses the client's frames (masked, fragmented, control frames answered: ping -> pong, close -> close);
 * a message longer than max_msg, a protocol error or a slow reader (more than TH_WS_QUEUE_MAX bytes
 * queued) ends the connection. on_close runs once when the connection is over, however it ended; the ws
 * is freed right after. Loop thread only. */
#ifndef TH_HTTP_WS_H
#define TH_HTTP_WS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http/http.h"

#define TH_WS_QUEUE_MAX (1024 * 1024) /* bytes queued to a client before it is dropped as too slow */
#define TH_WS_CLOSE_WAIT_MS 2000      /* after our close frame, how long the peer has to answer */

typedef struct th_ws th_ws;

typedef struct th_ws_cb {
    /** A complete text message (valid UTF-8 is not checked here). */
    void (*on_text)(th_ws *ws, const char *msg, size_t len, void *ud);
    /** The connection is over; ws is freed when this returns. */
    void (*on_close)(th_ws *ws, void *ud);
    void *ud;
} th_ws_cb;

/** Accepts the upgrade. NULL when the request is not a valid WebSocket handshake (*status 400, or 426
 * for a wrong version; *why says what) or on ENOMEM (*status 500): the caller answers the request then. */
th_ws *th_ws_accept(th_http_req *req, uv_loop_t *loop, const th_ws_cb *cb, size_t max_msg, int *status,
                    const char **why);
/** Pings the client every ping_ms and drops it (cut, on_close) when nothing at all, not even a pong, came
 * from it for idle_ms: a client that stopped reading, or vanished without a FIN, does not stay forever. */
void th_ws_keepalive(th_ws *ws, uint64_t ping_ms, uint64_t idle_ms);
/** Queues a text message. 0, or -1 when the connection is closing or was dropped (too slow). */
int th_ws_send_text(th_ws *ws, const char *s, size_t len);
/** Starts the closing handshake (code 1000 normal, 1001 going away...); on_close follows. */
void th_ws_close(th_ws *ws, uint16_t code, const char *reason);
/** The client's address. */
const char *th_ws_peer(const th_ws *ws);

#endif
