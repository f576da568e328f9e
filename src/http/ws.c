/* ws: WebSocket server connections, see ws.h.
 *
 * Input: th_http_upgrade hands us the client's bytes; they are kept in `in` and wslay_event_recv pulls
 * them through recv_cb (WOULDBLOCK when drained). Output: wslay_event_send pushes frames through send_cb
 * into th_http_raw_write, which copies them; above TH_WS_QUEUE_MAX queued the client is dropped.
 *
 * Ending: whichever comes first -- both close frames exchanged, a protocol error, the peer gone, our
 * close unanswered for TH_WS_CLOSE_WAIT_MS -- ends the http request, runs on_close once, and frees. Calls
 * into the ws from its own callbacks are allowed: `depth` defers the free to the outermost entry. */
#include "http/ws.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <wslay/wslay.h>

#include "core/buf.h"
#include "core/str.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define IN_MAX (256 * 1024) /* client bytes buffered before wslay takes them */

struct th_ws {
    th_http_req *req;
    wslay_event_context_ptr ctx;
    th_ws_cb cb;
    th_buf in;
    uv_timer_t *timer; /* keepalive pings, then the close wait; freed in its close callback */
    uv_loop_t *loop;
    uint64_t ping_ms, idle_ms; /* th_ws_keepalive; 0 = off */
    uint64_t last_rx;          /* uv_now of the last bytes from the client */
    int depth;
    bool over;    /* ended: no more I/O */
    bool closing; /* we queued a close frame */
};

/* ---- helpers ---- */

static bool has_token(const char *value, const char *token)
{
    /* a comma-separated header value containing token, case-insensitive */
    size_t tl = strlen(token);
    const char *p = value;
    while (p && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == tl && strncasecmp(p, token, tl) == 0) return true;
        p = e;
    }
    return false;
}

static void on_timer_closed(uv_handle_t *h)
{
    free(h);
}

static void ws_free(th_ws *ws)
{
    if (ws->ctx) wslay_event_context_free(ws->ctx);
    th_buf_free(&ws->in);
    if (ws->timer) uv_close((uv_handle_t *)ws->timer, on_timer_closed);
    free(ws);
}

/* Ends the connection (once): releases the request, tells the owner. The free waits for depth 0. */
static void ws_end(th_ws *ws, bool cut)
{
    if (ws->over) return;
    ws->over = true;
    if (ws->timer) uv_timer_stop(ws->timer);
    if (ws->cb.on_close) ws->cb.on_close(ws, ws->cb.ud); /* the request is still ours here (th_ws_peer) */
    th_http_on_close(ws->req, NULL, NULL);
    th_http_on_drain(ws->req, NULL, NULL);
    th_http_end(ws->req, cut);
}

static void leave(th_ws *ws)
{
    if (--ws->depth == 0 && ws->over) ws_free(ws);
}

/* Pushes what wslay has queued, and ends the connection when the exchange is over. */
static void pump(th_ws *ws)
{
    if (ws->over) return;
    if (wslay_event_want_write(ws->ctx) && wslay_event_send(ws->ctx) != 0) {
        ws_end(ws, true);
        return;
    }
    if (ws->over) return;
    if (wslay_event_get_close_sent(ws->ctx) && wslay_event_get_close_received(ws->ctx)) {
        ws_end(ws, false);
        return;
    }
    if (!wslay_event_want_read(ws->ctx) && !wslay_event_want_write(ws->ctx)) ws_end(ws, false);
}

/* ---- wslay callbacks ---- */

static ssize_t recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    th_ws *ws = ud;
    if (ws->in.len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = ws->in.len < len ? ws->in.len : len;
    memcpy(buf, ws->in.data, n);
    th_buf_consume(&ws->in, n);
    return (ssize_t)n;
}

static ssize_t send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags, void *ud)
{
    (void)flags;
    th_ws *ws = ud;
    if (ws->over) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    if (th_http_queued(ws->req) > TH_WS_QUEUE_MAX) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE); /* too slow a reader: dropped */
        return -1;
    }
    if (th_http_raw_write(ws->req, data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void on_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg, void *ud)
{
    (void)ctx;
    th_ws *ws = ud;
    if (ws->over || arg->opcode != WSLAY_TEXT_FRAME || ws->cb.on_text == NULL) return;
    ws->cb.on_text(ws, (const char *)arg->msg, arg->msg_length, ws->cb.ud);
}

/* ---- http callbacks ---- */

static void on_data(th_http_req *req, const uint8_t *data, size_t len, void *ud)
{
    (void)req;
    th_ws *ws = ud;
    if (ws->over) return;
    ws->last_rx = uv_now(ws->loop);
    ws->depth++;
    if (th_buf_append(&ws->in, data, len) != TH_BUF_OK) {
        ws_end(ws, true); /* a client pushing faster than frames are read: cut */
    } else if (wslay_event_recv(ws->ctx) != 0) {
        ws_end(ws, true); /* protocol error, too long a message, or out of memory */
    } else {
        pump(ws);
    }
    leave(ws);
}

static void on_drain(th_http_req *req, void *ud)
{
    (void)req;
    th_ws *ws = ud;
    ws->depth++;
    pump(ws);
    leave(ws);
}

static void on_gone(th_http_req *req, void *ud)
{
    (void)req;
    th_ws *ws = ud;
    ws->depth++;
    ws_end(ws, true);
    leave(ws);
}

static void on_close_wait(uv_timer_t *t)
{
    th_ws *ws = t->data;
    ws->depth++;
    ws_end(ws, true); /* the peer never answered our close frame */
    leave(ws);
}

static void on_keepalive(uv_timer_t *t)
{
    th_ws *ws = t->data;
    if (ws->over || ws->closing) return;
    ws->depth++;
    uint64_t now = uv_now(ws->loop);
    if (now - ws->last_rx >= ws->idle_ms) {
        ws_end(ws, true); /* nothing from the client, not even a pong: it is gone or not reading */
    } else {
        struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"", 0};
        if (wslay_event_queue_msg(ws->ctx, &m) != 0) {
            ws_end(ws, true);
        } else {
            pump(ws);
            uint64_t left = ws->last_rx + ws->idle_ms - now;
            if (!ws->over)
                uv_timer_start(ws->timer, on_keepalive, left < ws->ping_ms ? left : ws->ping_ms, 0);
        }
    }
    leave(ws);
}

/* ---- public ---- */

void th_ws_keepalive(th_ws *ws, uint64_t ping_ms, uint64_t idle_ms)
{
    if (ws->over || ws->closing || ping_ms == 0 || idle_ms == 0) return;
    ws->ping_ms = ping_ms;
    ws->idle_ms = idle_ms;
    ws->last_rx = uv_now(ws->loop);
    uv_timer_start(ws->timer, on_keepalive, ping_ms < idle_ms ? ping_ms : idle_ms, 0);
}

th_ws *th_ws_accept(th_http_req *req, uv_loop_t *loop, const th_ws_cb *cb, size_t max_msg, int *status,
                    const char **why)
{
    *status = 400;
    const char *up = th_http_header(req, "Upgrade");
    const char *conn = th_http_header(req, "Connection");
    const char *ver = th_http_header(req, "Sec-WebSocket-Version");
    const char *key = th_http_header(req, "Sec-WebSocket-Key");
    if (strcmp(th_http_method(req), "GET") != 0) {
        *why = "a WebSocket handshake is a GET";
        return NULL;
    }
    if (up == NULL || !has_token(up, "websocket") || conn == NULL || !has_token(conn, "upgrade")) {
        *status = 426;
        *why = "this route speaks WebSocket only (Upgrade: websocket, Connection: Upgrade)";
        return NULL;
    }
    if (ver == NULL || strcmp(ver, "13") != 0) {
        *status = 426;
        *why = "Sec-WebSocket-Version must be 13";
        return NULL;
    }
    uint8_t raw[32];
    size_t klen = key ? strlen(key) : 0;
    if (klen != 24 || key[22] != '=' || key[23] != '=' || key[21] == '=' ||
        EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18) {
        *why = "Sec-WebSocket-Key must be 16 bytes in base64";
        return NULL;
    }
    char cat[24 + sizeof WS_GUID];
    memcpy(cat, key, 24);
    memcpy(cat + 24, WS_GUID, sizeof WS_GUID - 1);
    uint8_t md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, 24 + sizeof WS_GUID - 1, md);
    char accept[40];
    EVP_EncodeBlock((unsigned char *)accept, md, SHA_DIGEST_LENGTH);

    *status = 500;
    *why = "out of memory";
    th_ws *ws = calloc(1, sizeof *ws);
    if (ws == NULL) return NULL;
    ws->req = req;
    ws->cb = *cb;
    ws->loop = loop;
    th_buf_init(&ws->in, IN_MAX);
    struct wslay_event_callbacks wcb = {
        .recv_callback = recv_cb, .send_callback = send_cb, .on_msg_recv_callback = on_msg_cb};
    ws->timer = malloc(sizeof *ws->timer);
    if (ws->timer == NULL || wslay_event_context_server_init(&ws->ctx, &wcb, ws) != 0) {
        free(ws->timer);
        ws->timer = NULL;
        th_buf_free(&ws->in);
        free(ws);
        return NULL;
    }
    uv_timer_init(loop, ws->timer);
    ws->timer->data = ws;
    wslay_event_config_set_max_recv_msg_length(ws->ctx, max_msg);
    if (th_http_set_header(req, "Upgrade", "websocket") != 0 ||
        th_http_set_header(req, "Sec-WebSocket-Accept", accept) != 0 ||
        th_http_upgrade(req, on_data, ws) != 0) {
        ws->over = true; /* the request was not taken: the caller answers it */
        ws_free(ws);
        return NULL;
    }
    th_http_on_close(req, on_gone, ws);
    th_http_on_drain(req, on_drain, ws);
    return ws;
}

int th_ws_send_text(th_ws *ws, const char *s, size_t len)
{
    if (ws->over || ws->closing) return -1;
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)s, len};
    if (wslay_event_queue_msg(ws->ctx, &m) != 0) return -1;
    ws->depth++;
    pump(ws);
    int rc = ws->over ? -1 : 0;
    leave(ws);
    return rc;
}

void th_ws_close(th_ws *ws, uint16_t code, const char *reason)
{
    if (ws->over || ws->closing) return;
    ws->closing = true;
    ws->depth++;
    if (wslay_event_queue_close(ws->ctx, code, (const uint8_t *)reason, reason ? strlen(reason) : 0) != 0) {
        ws_end(ws, true);
    } else {
        uv_timer_start(ws->timer, on_close_wait, TH_WS_CLOSE_WAIT_MS, 0);
        pump(ws);
    }
    leave(ws);
}

const char *th_ws_peer(const th_ws *ws)
{
    return th_http_peer(ws->req);
}
