/* server: the HTTP/1.1 connection layer on libuv, with http-parser behind http/parser.h.
 *
 * One connection (struct conn) owns a uv_tcp_t, one uv_timer_t for all its deadlines, the request parser
 * and one th_http_req, reused from one request to the next: a connection has at most one request in
 * flight, since the parser is paused after each complete request until its response has ended
 * (pipelined bytes wait in a bounded `pending` buffer; reading stops when it is full).
 *
 * Lifetimes (libuv handle.rst / redis connhelpers): conn->refs counts one reference for the open handles
 * (dropped in the last uv_close callback) and one while the handler holds the request. A connection is
 * freed only when both are gone, so a handler may keep its req after the client left until it calls
 * th_http_end; on_close is fired from the close callback, never from inside a read or write callback.
 *
 * Output: response heads are built in one per-connection buffer and sent with uv_try_write when nothing
 * is queued; what the socket does not take is copied into one uv_write request. Bytes queued in
 * uv_write requests are counted: th_http_write returns 1 above WRITE_HIGH and on_drain fires once when
 * the count drops to WRITE_LOW.
 *
 * Error bodies (API.md): 400/413/414/417/431/501/505 and 408 use type "invalid_request_error" -- 408 is
 * the client being too slow, which API.md's 4xx row covers, while "timeout_error" is reserved there for
 * the engine timing out (504). 503 (too many connections) uses "service_unavailable" with Retry-After. */
#include "http/http.h"

#include "core/iprate.h"

#include <netinet/in.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "core/uuid.h"
#include "http/parser.h"

#define WRITE_HIGH (256 * 1024)        /* th_http_write returns 1 above this many queued bytes */
#define WRITE_LOW (64 * 1024)          /* on_drain fires at or below this */
#define SHUTDOWN_FIRST_REQUEST_MS 2000 /* at shutdown, a fresh connection's first request may still come */
#define WRITE_HARD (32 * 1024 * 1024)  /* a streaming handler that ignores back-pressure is cut here */
#define READ_BUF_SIZE (64 * 1024)      /* one per server: reads are consumed or copied at once */
#define PENDING_PAUSE (64 * 1024)      /* pipelined bytes held while a response is in progress */
#define LINGER_MS 2000                 /* after a closing response: read and drop, then close */
#define REJECT_LINGER_MS 500
#define MAX_PARAMS 16
#define MAX_RESP_HEADERS (16 * 1024)
#define HOLD_MAX (16 * 1024) /* body bytes held with the head until the end of the loop iteration */
#define LISTEN_BACKLOG 511

enum cstate { C_IDLE, C_HEAD, C_BODY, C_BUSY, C_LINGER, C_CLOSED, C_RAW };

typedef struct conn conn;

struct th_http_req {
    conn *c;
    th_buf rh;     /* extra response headers, "Name: value\r\n" each */
    th_buf params; /* name\0value\0 ... */
    uint32_t pname[MAX_PARAMS], pval[MAX_PARAMS];
    uint32_t nparams;
    void *data;
    void (*on_drain)(th_http_req *r, void *ud);
    void *drain_ud;
    void (*on_close)(th_http_req *r, void *ud);
    void *close_ud;
    uint64_t start_us;
    uint64_t bytes_sent;
    int64_t clen; /* declared Content-Length of a streamed response; -1 when not known */
    int status;
    bool held;         /* the handler owns it (between dispatch and th_http_end/th_http_respond) */
    bool started;      /* response head built */
    bool head_pending; /* built in c->out but not sent: it goes out with the first body bytes */
    bool ended;        /* th_http_end/th_http_respond called */
    bool aborted;      /* the client went away while the handler held it */
    bool close_fired;
    bool drain_armed;
    bool has_reqid; /* the handler set X-Request-Id */
    bool head_only; /* HEAD request */
    bool want_close;
    bool chunked;
    bool close_delim; /* HTTP/1.0 with no known length: the body ends when the connection closes */
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    th_http_server *s;
    conn *prev, *next; /* the server's list */
    conn *rnext;       /* the server's resume queue */
    conn *fnext;       /* the server's flush queue */
    th_http_parser p;
    th_http_req req;
    th_buf pending; /* bytes read but not parsed yet */
    th_buf out;     /* response head scratch */
    th_http_limits lim;
    uint64_t deadline; /* loop ms; 0 = none */
    uint64_t timer_due;
    uint64_t req_deadline;
    size_t queued; /* bytes in uv_write requests */
    int refs;
    int handles;
    enum cstate state;
    bool closing;
    bool reading;
    bool rejected;
    bool from_backlog;      /* taken off the listen queue at shutdown: its request has not been read yet */
    bool served;            /* has finished a request: idle now means idle between requests */
    bool counted;           /* in s->nactive */
    bool ip_counted;        /* holds one of its IP's slots in s->per_ip */
    uint64_t body_reserved; /* of s->body_bytes, for the current request */
    bool in_parse;
    bool resume_queued;
    bool flush_queued;
    char peer[INET6_ADDRSTRLEN];
    /* after th_http_upgrade: the bytes go to raw_data */
    void (*raw_data)(th_http_req *r, const uint8_t *data, size_t len, void *ud);
    void *raw_ud;
};

typedef struct wreq {
    uv_write_t w;
    conn *c;
    size_t len;
    char data[];
} wreq;

struct th_http_server {
    uv_loop_t *loop;
    th_http_limits lim;
    th_http_handler handler;
    void *ud;
    th_http_body_limit_fn body_limit;
    th_log *log;
    uv_tcp_t *listener;
    uv_idle_t *idle; /* deferred work: pipelined requests to resume, the shutdown's done */
    uv_timer_t *grace;
    conn *conns;
    conn *resume;
    conn *flush;    /* connections holding a head (and the first body bytes) to send this iteration */
    size_t nconns;  /* every conn object */
    size_t nactive; /* connections counted against max_connections */
    size_t nrejecting;
    size_t ninflight;
    th_iprate *per_ip;   /* open connections per client IP */
    uint64_t body_bytes; /* reserved by requests' bodies (lim.max_buffered_bodies) */
    int port;
    bool reuse_port; /* SO_REUSEPORT: another process may listen on the same port */
    bool shutting_down;
    bool done_called;
    void (*done)(void *ud);
    void *done_ud;
    uint64_t date_sec;
    char date[40];
    th_uuid_gen ids; /* request ids (core/uuid.h) */
    char rbuf[READ_BUF_SIZE];
};

static void conn_close(conn *c);
static void raw_input(conn *c, const char *data, size_t len);
static void conn_fail(conn *c, int status, const char *code, const char *message);
static void conn_parse_pending(conn *c);
static void schedule_idle(th_http_server *s);

/* ---- small helpers ---- */

static void free_handle_cb(uv_handle_t *h)
{
    free(h);
}

static int put(th_buf *b, const char *s, size_t n)
{
    return th_buf_append(b, s, n);
}

static int puts_(th_buf *b, const char *s)
{
    return th_buf_append(b, s, strlen(s));
}

static int put_u64(th_buf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return th_buf_append(b, tmp + i, sizeof tmp - i);
}

static int put_hex(char *out, size_t v)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    for (int i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static const char *cached_date(th_http_server *s)
{
    uint64_t sec = th_wall_ms() / 1000;
    if (sec != s->date_sec) {
        th_http_date(sec * 1000, s->date, sizeof s->date);
        s->date_sec = sec;
    }
    return s->date;
}

static void fill_defaults(th_http_limits *l)
{
    if (l->max_header == 0) l->max_header = 16 * 1024;
    if (l->max_body == 0) l->max_body = 1024 * 1024;
    if (l->max_upload == 0) l->max_upload = 20 * 1024 * 1024;
    if (l->max_connections == 0) l->max_connections = 10000;
}

static bool status_has_body(int status)
{
    return !(status < 200 || status == 204 || status == 304);
}

const char *th_http_reason(int status)
{
    const char *r = http_status_str((enum http_status)status);
    if (r == NULL || r[0] == '<') return "Unknown";
    return r;
}

/* ---- refs and lifetime ---- */

static void body_release(conn *c)
{
    c->s->body_bytes -= c->body_reserved;
    c->body_reserved = 0;
}

static void conn_free(conn *c)
{
    th_http_server *s = c->s;
    body_release(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->nconns--;
    if (c->counted) s->nactive--;
    if (c->rejected) s->nrejecting--;
    if (c->ip_counted) th_iprate_release(s->per_ip, c->peer);
    th_http_parser_free(&c->p);
    th_buf_free(&c->pending);
    th_buf_free(&c->out);
    th_buf_free(&c->req.rh);
    th_buf_free(&c->req.params);
    free(c);
    if (s->shutting_down && s->nconns == 0) schedule_idle(s);
}

static void conn_unref(conn *c)
{
    if (--c->refs == 0) conn_free(c);
}

static void on_handle_close(uv_handle_t *h)
{
    conn *c = h->data;
    if (--c->handles > 0) return;
    c->refs++;
    th_http_req *r = &c->req;
    if (r->held && !r->ended && !r->close_fired) {
        r->close_fired = true;
        r->aborted = true;
        if (r->on_close != NULL) r->on_close(r, r->close_ud);
    }
    conn_unref(c); /* the one just taken */
    conn_unref(c); /* the handles' */
}

static void conn_close(conn *c)
{
    if (c->closing) return;
    c->closing = true;
    c->state = C_CLOSED;
    if (c->req.held && !c->req.ended) c->req.aborted = true;
    uv_close((uv_handle_t *)&c->tcp, on_handle_close);
    uv_close((uv_handle_t *)&c->timer, on_handle_close);
}

/* ---- timers ---- */

static void on_timer(uv_timer_t *t);

static void set_deadline_at(conn *c, uint64_t at)
{
    c->deadline = at;
    if (at == 0 || c->closing) return;
    if (!uv_is_active((uv_handle_t *)&c->timer) || c->timer_due > at) {
        uint64_t now = uv_now(c->s->loop);
        uv_timer_start(&c->timer, on_timer, at > now ? at - now : 0, 0);
        c->timer_due = at;
    }
}

static void set_deadline_in(conn *c, uint64_t ms)
{
    set_deadline_at(c, ms ? uv_now(c->s->loop) + ms : 0);
}

static void on_timer(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->closing || c->deadline == 0) return;
    uint64_t now = uv_now(c->s->loop);
    if (now < c->deadline) {
        uv_timer_start(&c->timer, on_timer, c->deadline - now, 0);
        c->timer_due = c->deadline;
        return;
    }
    c->deadline = 0;
    switch (c->state) {
    case C_HEAD:
    case C_BODY:
        conn_fail(c, 408, "request_timeout", "request not received in time");
        break;
    case C_IDLE:
    case C_LINGER:
        conn_close(c);
        break;
    default:
        break;
    }
}

/* ---- output ---- */

static void on_write(uv_write_t *w, int status)
{
    wreq *wr = (wreq *)w;
    conn *c = wr->c;
    c->queued -= wr->len;
    free(wr);
    if (status < 0) {
        conn_close(c);
        return;
    }
    th_http_req *r = &c->req;
    if (r->drain_armed && c->queued <= WRITE_LOW && r->held && !r->aborted && !c->closing) {
        r->drain_armed = false;
        if (r->on_drain != NULL) r->on_drain(r, r->drain_ud);
    }
}

/* Sends bufs in order after what is queued. 0, or -1 when the connection is gone (then closing). */
static int conn_send(conn *c, const uv_buf_t *bufs, unsigned n)
{
    if (c->closing) return -1;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (total == 0) return 0;
    size_t skip = 0;
    if (c->queued == 0) {
        int w = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        if (w >= 0) {
            if ((size_t)w == total) return 0;
            skip = (size_t)w;
        } else if (w != UV_EAGAIN) {
            conn_close(c);
            return -1;
        }
    }
    size_t rem = total - skip;
    wreq *wr = malloc(sizeof *wr + rem);
    if (wr == NULL) {
        conn_close(c);
        return -1;
    }
    size_t o = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        const char *p = bufs[i].base;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        p += skip;
        len -= skip;
        skip = 0;
        memcpy(wr->data + o, p, len);
        o += len;
    }
    wr->c = c;
    wr->len = rem;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)rem);
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
        free(wr);
        conn_close(c);
        return -1;
    }
    c->queued += rem;
    return 0;
}

static void read_pause(conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b);

static void read_resume(conn *c)
{
    if (!c->reading && !c->closing) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = true;
    }
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    conn *c = sr->data;
    if (c->closing) return;
    if (status < 0) conn_close(c);
}

/* After a response that closes the connection: FIN once the queued output is out, then read and drop
 * what the client still sends (so it is not reset before it reads the response), then close. */
static void conn_finish(conn *c)
{
    if (c->closing || c->state == C_LINGER) return;
    c->state = C_LINGER;
    th_buf_reset(&c->pending);
    set_deadline_in(c, c->rejected ? REJECT_LINGER_MS : LINGER_MS);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    read_resume(c);
}

/* Appends the response head. clen >= 0: Content-Length; -1: chunked; -2: none (close-delimited or no
 * body). reqid NULL: the X-Request-Id is among the extra headers. */
static int build_head(conn *c, th_buf *b, int status, const char *ctype, int64_t clen, bool close,
                      const char *reqid, const void *extra, size_t extra_len)
{
    int rc = 0;
    rc |= put(b, "HTTP/1.1 ", 9);
    rc |= put_u64(b, (uint64_t)status);
    rc |= put(b, " ", 1);
    rc |= puts_(b, th_http_reason(status));
    rc |= put(b, "\r\nDate: ", 8);
    rc |= puts_(b, cached_date(c->s));
    if (ctype != NULL && ctype[0] != '\0') {
        rc |= put(b, "\r\nContent-Type: ", 16);
        rc |= puts_(b, ctype);
    }
    if (clen >= 0) {
        rc |= put(b, "\r\nContent-Length: ", 18);
        rc |= put_u64(b, (uint64_t)clen);
    } else if (clen == -1) {
        rc |= put(b, "\r\nTransfer-Encoding: chunked", 28);
    }
    if (reqid != NULL) {
        rc |= put(b, "\r\nX-Request-Id: ", 16);
        rc |= puts_(b, reqid);
    }
    rc |= put(b, "\r\n", 2);
    if (extra_len > 0) rc |= put(b, extra, extra_len);
    if (close)
        rc |= put(b, "Connection: close\r\n", 19);
    else if (c->p.msg.minor == 0)
        rc |= put(b, "Connection: keep-alive\r\n", 24);
    rc |= put(b, "\r\n", 2);
    return rc ? -1 : 0;
}

/* The head of a handler's response. */
static int build_resp_head(conn *c, int status, const char *ctype, int64_t clen, bool close)
{
    th_http_req *r = &c->req;
    char id[TH_UUID_LEN + 1];
    if (!r->has_reqid) th_uuid_gen_next(&c->s->ids, id);
    th_buf_reset(&c->out);
    return build_head(c, &c->out, status, ctype, clen, close, r->has_reqid ? NULL : id, r->rh.data,
                      r->rh.len);
}

static bool will_close(conn *c)
{
    const th_http_msg *m = &c->p.msg;
    return c->req.want_close || !m->keep_alive || m->upgrade || c->s->shutting_down;
}

/* ---- server-generated errors ---- */

static const char *error_type(int status)
{
    return status == 503 ? "service_unavailable" : "invalid_request_error";
}

static void conn_fail(conn *c, int status, const char *code, const char *message)
{
    if (c->closing || c->state == C_LINGER || c->state == C_BUSY) return;
    th_http_server *s = c->s;
    const th_http_msg *m = &c->p.msg;
    char id[TH_UUID_LEN + 1];
    th_uuid_v4(id);
    th_buf body;
    th_buf_init(&body, 4096);
    int rc = 0;
    rc |= puts_(&body, "{\"error\":{\"message\":\"");
    rc |= th_buf_append_json_str(&body, message, strlen(message));
    rc |= puts_(&body, "\",\"type\":\"");
    rc |= puts_(&body, error_type(status));
    rc |= puts_(&body, "\",\"code\":\"");
    rc |= th_buf_append_json_str(&body, code, strlen(code));
    rc |= puts_(&body, "\"}}");
    th_buf_reset(&c->out);
    const char *extra = status == 503 ? "Retry-After: 1\r\n" : "";
    rc |=
        build_head(c, &c->out, status, "application/json", (int64_t)body.len, true, id, extra, strlen(extra));
    if (rc == 0) {
        uv_buf_t bufs[2];
        unsigned n = 0;
        bufs[n++] = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
        if (!(m->head_done && m->method_id == HTTP_HEAD))
            bufs[n++] = uv_buf_init((char *)body.data, (unsigned)body.len);
        conn_send(c, bufs, n);
    }
    if (s->log != NULL) {
        th_access a = {0};
        a.generation = id;
        a.method = m->head_done ? m->method : NULL;
        a.route = m->head_done ? (const char *)m->head.data + m->path : NULL;
        a.peer = c->peer;
        a.error = code;
        a.status = status;
        a.bytes = -1;
        a.chars = -1;
        a.upstream_ms = -1;
        a.duration_ms = m->started ? (double)(th_mono_us() - c->req.start_us) / 1000.0 : 0.0;
        th_log_access(s->log, &a);
    }
    th_buf_free(&body);
    if (!c->closing) conn_finish(c);
}

/* ---- parsing and dispatch ---- */

static void req_reset(th_http_req *r)
{
    r->nparams = 0;
    if (r->params.cap > 4096) th_buf_free(&r->params);
    th_buf_reset(&r->params);
    if (r->rh.cap > 4096) th_buf_free(&r->rh);
    th_buf_reset(&r->rh);
    r->data = NULL;
    r->on_drain = NULL;
    r->drain_ud = NULL;
    r->on_close = NULL;
    r->close_ud = NULL;
    r->bytes_sent = 0;
    r->clen = -1;
    r->status = 0;
    r->held = r->started = r->ended = r->aborted = r->close_fired = r->drain_armed = false;
    r->has_reqid = r->head_only = r->want_close = r->chunked = r->close_delim = false;
}

static void p_on_begin(void *ud)
{
    conn *c = ud;
    th_http_req *r = &c->req;
    body_release(c);
    req_reset(r);
    r->start_us = th_mono_us();
    c->state = C_HEAD;
    uint64_t now = uv_now(c->s->loop);
    c->req_deadline = c->lim.request_timeout_ms ? now + c->lim.request_timeout_ms : 0;
    uint64_t hd = c->lim.header_timeout_ms ? now + c->lim.header_timeout_ms : 0;
    uint64_t d = hd;
    if (d == 0 || (c->req_deadline != 0 && c->req_deadline < d)) d = c->req_deadline;
    set_deadline_at(c, d);
}

static size_t p_body_limit(void *ud)
{
    conn *c = ud;
    th_http_server *s = c->s;
    if (s->body_limit != NULL) return s->body_limit(&c->req, s->ud);
    return c->lim.max_body;
}

static int p_on_head(void *ud)
{
    conn *c = ud;
    th_http_server *s = c->s;
    const th_http_msg *m = &c->p.msg;
    uint64_t want = m->has_clen ? m->content_length : m->chunked ? c->p.body_limit : 0;
    if (want > 0 && c->lim.max_buffered_bodies > 0) { /* one budget for the bodies of every connection */
        if (s->body_bytes + want > c->lim.max_buffered_bodies) return 503;
        c->body_reserved = want;
        s->body_bytes += want;
    }
    c->state = C_BODY;
    set_deadline_at(c, c->req_deadline);
    if (c->p.msg.expect_continue) {
        uv_buf_t b = uv_buf_init((char *)"HTTP/1.1 100 Continue\r\n\r\n", 25);
        conn_send(c, &b, 1);
    }
    return 0;
}

static const th_http_parser_cbs parser_cbs = {
    .on_begin = p_on_begin,
    .body_limit = p_body_limit,
    .on_head = p_on_head,
};

static void dispatch(conn *c)
{
    th_http_server *s = c->s;
    th_http_req *r = &c->req;
    c->state = C_BUSY;
    set_deadline_at(c, 0);
    r->held = true;
    r->head_only = c->p.msg.method_id == HTTP_HEAD;
    c->refs++;
    s->ninflight++;
    s->handler(r, s->ud);
}

/* Parses and dispatches complete requests from data until a response is in progress. Returns bytes
 * consumed. The connection stays allocated during the call: its handles are open. */
static size_t conn_parse(conn *c, const char *data, size_t len)
{
    size_t off = 0;
    c->in_parse = true;
    while (off < len && !c->closing && (c->state == C_IDLE || c->state == C_HEAD || c->state == C_BODY)) {
        int st = 0;
        size_t n = th_http_parser_feed(&c->p, data + off, len - off, &st);
        off += n;
        if (st != 0) {
            conn_fail(c, st, c->p.err_code ? c->p.err_code : "bad_request",
                      c->p.err_message ? c->p.err_message : "malformed request");
            break;
        }
        if (c->p.msg.complete) {
            dispatch(c);
            continue;
        }
        if (n == 0) break;
    }
    c->in_parse = false;
    return off;
}

static void pending_check(conn *c)
{
    if (c->pending.len >= PENDING_PAUSE)
        read_pause(c);
    else if (!c->closing)
        read_resume(c);
}

static void conn_parse_pending(conn *c)
{
    if (c->closing || c->state != C_IDLE || c->pending.len == 0) return;
    size_t n = conn_parse(c, (const char *)c->pending.data, c->pending.len);
    if (c->closing || c->state == C_LINGER) return;
    th_buf_consume(&c->pending, n);
    if (c->state == C_RAW) {
        /* the upgrade request came pipelined: what followed it is the new protocol's */
        th_buf rest = c->pending;
        th_buf_init(&c->pending, rest.max);
        raw_input(c, (const char *)rest.data, rest.len);
        th_buf_free(&rest);
        read_resume(c);
        return;
    }
    pending_check(c);
}

/* Bytes on an upgraded connection (and those read with the upgrade request) go to the protocol. */
static void raw_input(conn *c, const char *data, size_t len)
{
    th_http_req *r = &c->req;
    if (len == 0 || c->closing || !r->held || r->ended || c->raw_data == NULL) return;
    c->raw_data(r, (const uint8_t *)data, len, c->raw_ud);
}

static void conn_input(conn *c, const char *data, size_t len)
{
    if (c->state == C_RAW) {
        raw_input(c, data, len);
        return;
    }
    if (c->state == C_BUSY || c->pending.len > 0) {
        if (th_buf_append(&c->pending, data, len) != TH_BUF_OK) {
            conn_close(c);
            return;
        }
        if (c->state != C_BUSY)
            conn_parse_pending(c);
        else
            pending_check(c);
        return;
    }
    size_t n = conn_parse(c, data, len);
    if (n < len && !c->closing && c->state == C_RAW) {
        raw_input(c, data + n, len - n);
        return;
    }
    if (n < len && !c->closing && c->state == C_BUSY) {
        if (th_buf_append(&c->pending, data + n, len - n) != TH_BUF_OK) {
            conn_close(c);
            return;
        }
        pending_check(c);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    conn *c = h->data;
    b->base = c->s->rbuf;
    b->len = READ_BUF_SIZE;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    conn *c = st->data;
    if (nread == 0 || c->closing) return;
    if (nread < 0) {
        /* EOF or error: in every state the exchange cannot go on (a held request is aborted) */
        conn_close(c);
        return;
    }
    if (c->state == C_LINGER) return;
    conn_input(c, b->base, (size_t)nread);
}

/* The handler is done with the request (not aborted): the exchange ends. */
static void exchange_done(conn *c, bool close)
{
    th_http_server *s = c->s;
    th_http_req *r = &c->req;
    r->ended = true;
    r->held = false;
    s->ninflight--;
    c->served = true;
    close = close || will_close(c);
    th_http_parser_next(&c->p);
    if (!c->closing) {
        if (close) {
            conn_finish(c);
        } else {
            c->state = C_IDLE;
            set_deadline_in(c, c->lim.idle_timeout_ms);
            if (!c->in_parse && c->pending.len > 0 && !c->resume_queued) {
                c->resume_queued = true;
                c->refs++;
                c->rnext = s->resume;
                s->resume = c;
                schedule_idle(s);
            }
        }
    }
    conn_unref(c); /* the handler's */
}

/* Releases an aborted request (after the client went away). */
static void release_aborted(conn *c)
{
    th_http_req *r = &c->req;
    r->ended = true;
    r->held = false;
    c->s->ninflight--;
    conn_unref(c);
}

/* ---- deferred work ---- */

static int send_with_head(conn *c, th_http_req *r, uv_buf_t *bufs, unsigned n);

static void flush_held(th_http_server *s)
{
    while (s->flush != NULL) {
        conn *c = s->flush;
        s->flush = c->fnext;
        c->fnext = NULL;
        c->flush_queued = false;
        th_http_req *r = &c->req;
        if (!c->closing && r->held && r->head_pending && send_with_head(c, r, NULL, 0) != 0) conn_close(c);
        conn_unref(c);
    }
}

static void on_idle(uv_idle_t *h)
{
    th_http_server *s = h->data;
    flush_held(s);
    while (s->resume != NULL) {
        conn *list = s->resume;
        s->resume = NULL;
        while (list != NULL) {
            conn *c = list;
            list = c->rnext;
            c->rnext = NULL;
            c->resume_queued = false;
            conn_parse_pending(c);
            conn_unref(c);
        }
    }
    if (s->shutting_down && !s->done_called && s->nconns == 0) {
        s->done_called = true;
        if (s->grace != NULL) {
            uv_close((uv_handle_t *)s->grace, free_handle_cb);
            s->grace = NULL;
        }
        uv_close((uv_handle_t *)s->idle, free_handle_cb);
        s->idle = NULL;
        if (s->done != NULL) s->done(s->done_ud); /* may free s */
        return;
    }
    uv_idle_stop(h);
}

static void schedule_idle(th_http_server *s)
{
    if (s->idle != NULL) uv_idle_start(s->idle, on_idle);
}

/* ---- accept ---- */

static void peer_name(conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    c->peer[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0) return;
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
    } else if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
            struct sockaddr_in a4;
            memset(&a4, 0, sizeof a4);
            a4.sin_family = AF_INET;
            memcpy(&a4.sin_addr, &a6->sin6_addr.s6_addr[12], 4);
            uv_ip4_name(&a4, c->peer, sizeof c->peer);
        } else {
            uv_ip6_name(a6, c->peer, sizeof c->peer);
        }
    }
}

static conn *conn_new(th_http_server *s);
static void conn_accepted(conn *c);

static void on_connection(uv_stream_t *ls, int status)
{
    th_http_server *s = ls->data;
    if (status < 0) {
        TH_LOG(s->log, TH_LOG_WARN, "http: accept: %s", uv_strerror(status));
        return;
    }
    conn *c = conn_new(s);
    if (c == NULL) {
        /* take the connection off the queue and drop it, or libuv would stop accepting */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t != NULL && uv_tcp_init(s->loop, t) == 0) {
            uv_accept(ls, (uv_stream_t *)t);
            uv_close((uv_handle_t *)t, free_handle_cb);
        } else {
            free(t);
        }
        return;
    }
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    if (s->shutting_down) {
        conn_close(c);
        return;
    }
    conn_accepted(c);
}

static conn *conn_new(th_http_server *s)
{
    conn *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->s = s;
    c->lim = s->lim;
    c->refs = 1;
    c->state = C_IDLE;
    c->req.c = c;
    c->req.clen = -1;
    th_buf_init(&c->pending, PENDING_PAUSE + READ_BUF_SIZE);
    th_buf_init(&c->out, MAX_RESP_HEADERS + 4096 + HOLD_MAX + 64);
    th_buf_init(&c->req.rh, MAX_RESP_HEADERS);
    th_buf_init(&c->req.params, 8192);
    th_http_parser_init(&c->p, c->lim.max_header, &parser_cbs, c);
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    return c;
}

/* A connection is open on c->tcp: start reading it. */
static void conn_accepted(conn *c)
{
    th_http_server *s = c->s;
    uv_tcp_nodelay(&c->tcp, 1);
    peer_name(c);
    if (s->nactive >= c->lim.max_connections) {
        c->rejected = true;
        s->nrejecting++;
        if (s->nrejecting > c->lim.max_connections) {
            conn_close(c);
            return;
        }
        conn_fail(c, 503, "too_many_connections", "server busy, too many connections");
        return;
    }
    if (c->lim.max_connections_per_ip > 0 && s->per_ip != NULL) {
        int got = th_iprate_acquire(s->per_ip, c->peer, uv_now(s->loop), c->lim.max_connections_per_ip);
        if (got == 0) { /* this address holds its share: others are still served */
            c->rejected = true;
            s->nrejecting++;
            if (s->nrejecting > c->lim.max_connections) {
                conn_close(c);
                return;
            }
            conn_fail(c, 503, "too_many_connections", "too many connections from this address");
            return;
        }
        c->ip_counted = got == 1;
    }
    c->counted = true;
    s->nactive++;
    set_deadline_in(c, c->lim.idle_timeout_ms);
    read_resume(c);
}

/* ---- server ---- */

th_http_server *th_http_server_new(uv_loop_t *loop, const th_http_limits *lim, th_http_handler handler,
                                   void *ud, th_log *log)
{
    th_http_server *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    s->loop = loop;
    if (lim != NULL) s->lim = *lim;
    fill_defaults(&s->lim);
    s->per_ip = th_iprate_new(16384);
    if (s->per_ip == NULL) {
        free(s);
        return NULL;
    }
    s->handler = handler;
    s->ud = ud;
    s->log = log;
    s->port = -1;
    th_uuid_gen_init(&s->ids);
    return s;
}

void th_http_server_set_body_limit_fn(th_http_server *s, th_http_body_limit_fn fn)
{
    s->body_limit = fn;
}

void th_http_server_set_limits(th_http_server *s, const th_http_limits *lim)
{
    s->lim = *lim;
    fill_defaults(&s->lim);
}

/* Splits "host:port", "[v6]:port" or ":port". */
static int split_addr(const char *addr, char *host, size_t hostlen, int *port)
{
    const char *colon;
    size_t hl;
    const char *h = addr;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (end == NULL || end[1] != ':') return -1;
        h = addr + 1;
        hl = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL) return -1;
        hl = (size_t)(colon - addr);
    }
    if (hl >= hostlen) return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (hl == 0) th_strlcpy(host, "0.0.0.0", hostlen);
    int64_t p;
    if (th_str_to_i64(colon + 1, 0, 65535, &p) != 0) return -1;
    *port = (int)p;
    return 0;
}

/* host:port into ss: a literal address, or a name resolved now. 0, or -1 with err. */
static int resolve(const char *addr, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[256];
    int port = 0;
    if (addr == NULL || split_addr(addr, host, sizeof host, &port) != 0) {
        snprintf(err, errlen, "bad listen address \"%s\" (want host:port, [v6]:port or :port)",
                 addr ? addr : "");
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0 ||
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    int gai = getaddrinfo(host, NULL, &hints, &res);
    if (gai != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(gai));
        if (res) freeaddrinfo(res);
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    return 0;
}

/* A TCP handle for ss's family, with SO_REUSEPORT when the server shares its port. NULL with err. */
static uv_tcp_t *new_listener(th_http_server *s, const struct sockaddr_storage *ss, char *err, size_t errlen)
{
    uv_tcp_t *l = malloc(sizeof *l);
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* with reuse_port the socket is made now (init_ex), so SO_REUSEPORT can be set before the bind:
     * libuv 1.44 has no UV_TCP_REUSEPORT */
    int rc = s->reuse_port ? uv_tcp_init_ex(s->loop, l, ss->ss_family) : uv_tcp_init(s->loop, l);
    if (rc != 0) {
        free(l);
        snprintf(err, errlen, "tcp init: %s", uv_strerror(rc));
        return NULL;
    }
    l->data = s;
    if (s->reuse_port) {
        uv_os_fd_t fd;
        int one = 1;
        rc = uv_fileno((uv_handle_t *)l, &fd);
        if (rc == 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) rc = -errno;
        if (rc != 0) {
            snprintf(err, errlen, "SO_REUSEPORT: %s", uv_strerror(rc));
            uv_close((uv_handle_t *)l, free_handle_cb);
            return NULL;
        }
    }
    return l;
}

int th_http_server_listen(th_http_server *s, const char *addr, char *err, size_t errlen)
{
    if (s->listener != NULL || s->shutting_down) {
        snprintf(err, errlen, "already listening");
        return -1;
    }
    struct sockaddr_storage ss;
    if (resolve(addr, &ss, err, errlen) != 0) return -1;
    uv_tcp_t *l = new_listener(s, &ss, err, errlen);
    if (l == NULL) return -1;
    /* libuv sets SO_REUSEADDR when it binds a TCP handle on Unix */
    int rc = uv_tcp_bind(l, (const struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)l, LISTEN_BACKLOG, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "listen on %s: %s", addr, uv_strerror(rc));
        uv_close((uv_handle_t *)l, free_handle_cb);
        return -1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if (uv_tcp_getsockname(l, (struct sockaddr *)&bound, &blen) == 0) {
        s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                              : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    }
    if (s->idle == NULL) {
        s->idle = malloc(sizeof *s->idle);
        if (s->idle == NULL || uv_idle_init(s->loop, s->idle) != 0) {
            free(s->idle);
            s->idle = NULL;
            uv_close((uv_handle_t *)l, free_handle_cb);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        s->idle->data = s;
    }
    s->listener = l;
    return 0;
}

int th_http_server_port(const th_http_server *s)
{
    return s->port;
}

static void on_grace(uv_timer_t *t)
{
    th_http_server *s = t->data;
    for (conn *c = s->conns; c != NULL; c = c->next)
        conn_close(c);
}

/* reuse_port: connections the kernel queued on this listener would be reset when it closes, so they are
 * taken and served first (another process on the port takes the new ones once this one has closed). */
static void accept_backlog(th_http_server *s)
{
    uv_os_fd_t lfd;
    if (s->listener == NULL || uv_fileno((uv_handle_t *)s->listener, &lfd) != 0) return;
    for (int n = 0; n < 65536; n++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break; /* EAGAIN: the queue is empty */
        conn *c = conn_new(s);
        if (c == NULL) {
            close(fd);
            continue;
        }
        if (uv_tcp_open(&c->tcp, fd) != 0) {
            close(fd);
            conn_close(c);
            continue;
        }
        c->from_backlog = true;
        conn_accepted(c);
    }
}

void th_http_server_set_reuse_port(th_http_server *s, bool on)
{
    s->reuse_port = on;
}

void th_http_server_shutdown(th_http_server *s, uint64_t grace_ms, void (*done)(void *ud), void *ud)
{
    if (s->shutting_down) return;
    if (s->reuse_port) accept_backlog(s);
    s->shutting_down = true;
    s->done = done;
    s->done_ud = ud;
    if (s->listener != NULL) {
        uv_close((uv_handle_t *)s->listener, free_handle_cb);
        s->listener = NULL;
    }
    if (s->idle == NULL) {
        s->idle = malloc(sizeof *s->idle);
        if (s->idle != NULL && uv_idle_init(s->loop, s->idle) == 0) {
            s->idle->data = s;
        } else {
            free(s->idle);
            s->idle = NULL;
        }
    }
    /* Idle keep-alive connections close now (their clients must expect that). One that has not sent its
     * first request yet was just accepted, and its request is on the way: it gets a short while to arrive
     * and is served (then closed), like the ones taken off the listen queue. */
    for (conn *c = s->conns; c != NULL; c = c->next) {
        if (c->state != C_IDLE || c->p.msg.started) continue;
        if (c->served)
            conn_close(c);
        else if (!c->from_backlog &&
                 (c->deadline == 0 || c->deadline > uv_now(s->loop) + SHUTDOWN_FIRST_REQUEST_MS))
            set_deadline_in(c, SHUTDOWN_FIRST_REQUEST_MS);
    }
    s->grace = malloc(sizeof *s->grace);
    if (s->grace != NULL && uv_timer_init(s->loop, s->grace) == 0) {
        s->grace->data = s;
        uv_timer_start(s->grace, on_grace, grace_ms, 0);
    } else {
        free(s->grace);
        s->grace = NULL;
        for (conn *c = s->conns; c != NULL; c = c->next)
            conn_close(c);
    }
    if (s->idle == NULL) {
        /* no way to defer: only possible on ENOMEM */
        if (s->nconns == 0 && done != NULL) {
            s->done_called = true;
            done(ud);
        }
        return;
    }
    schedule_idle(s);
}

void th_http_server_free(th_http_server *s)
{
    if (s == NULL) return;
    /* normally nothing is open here (after done, or before listen) */
    if (s->listener != NULL) uv_close((uv_handle_t *)s->listener, free_handle_cb);
    if (s->grace != NULL) uv_close((uv_handle_t *)s->grace, free_handle_cb);
    if (s->idle != NULL) uv_close((uv_handle_t *)s->idle, free_handle_cb);
    th_iprate_free(s->per_ip);
    free(s);
}

size_t th_http_server_connections(const th_http_server *s)
{
    return s->nactive;
}

size_t th_http_server_inflight(const th_http_server *s)
{
    return s->ninflight;
}

/* ---- request ---- */

const char *th_http_method(const th_http_req *r)
{
    return r->c->p.msg.method ? r->c->p.msg.method : "";
}

const char *th_http_path(const th_http_req *r)
{
    return (const char *)r->c->p.msg.head.data + r->c->p.msg.path;
}

const char *th_http_query(const th_http_req *r)
{
    return (const char *)r->c->p.msg.head.data + r->c->p.msg.query;
}

const char *th_http_header(const th_http_req *r, const char *name)
{
    return th_http_msg_header(&r->c->p.msg, name);
}

size_t th_http_header_count(const th_http_req *r)
{
    return r->c->p.msg.nhdrs;
}

void th_http_header_at(const th_http_req *r, size_t i, const char **name, const char **value)
{
    const th_http_msg *m = &r->c->p.msg;
    if (i >= m->nhdrs) {
        *name = *value = NULL;
        return;
    }
    *name = (const char *)m->head.data + m->hdrs[i].name;
    *value = (const char *)m->head.data + m->hdrs[i].value;
}

const uint8_t *th_http_body(const th_http_req *r, size_t *len)
{
    const th_buf *b = &r->c->p.msg.body;
    if (len != NULL) *len = b->len;
    return b->data != NULL ? b->data : (const uint8_t *)"";
}

const char *th_http_peer(const th_http_req *r)
{
    return r->c->peer;
}

uint64_t th_http_start_us(const th_http_req *r)
{
    return r->start_us;
}

const char *th_http_param(const th_http_req *r, const char *name)
{
    const char *base = (const char *)r->params.data;
    for (uint32_t i = 0; i < r->nparams; i++) {
        if (strcmp(base + r->pname[i], name) == 0) return base + r->pval[i];
    }
    return NULL;
}

int th_http_set_param(th_http_req *r, const char *name, const char *value)
{
    if (r->nparams >= MAX_PARAMS) return -1;
    size_t nl = strlen(name), vl = strlen(value);
    if (th_buf_reserve(&r->params, nl + vl + 2) != TH_BUF_OK) return -1;
    r->pname[r->nparams] = (uint32_t)r->params.len;
    th_buf_append(&r->params, name, nl + 1);
    r->pval[r->nparams] = (uint32_t)r->params.len;
    th_buf_append(&r->params, value, vl + 1);
    r->nparams++;
    return 0;
}

void th_http_set_data(th_http_req *r, void *data)
{
    r->data = data;
}

void *th_http_get_data(const th_http_req *r)
{
    return r->data;
}

/* ---- response ---- */

static bool header_token_ok(const char *s)
{
    if (*s == '\0') return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= 32 || ch >= 127 || ch == ':') return false;
    }
    return true;
}

static bool header_value_ok(const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '\r' || ch == '\n' || (ch < 32 && ch != '\t') || ch == 127) return false;
    }
    return true;
}

int th_http_set_header(th_http_req *r, const char *name, const char *value)
{
    if (r->started || r->ended || name == NULL || value == NULL) return -1;
    if (!header_token_ok(name) || !header_value_ok(value)) return -1;
    /* framing headers belong to the server (the first letter spares most names the compares) */
    char f = (char)(name[0] | 0x20);
    if ((f == 'c' || f == 't' || f == 'd') &&
        (strcasecmp(name, "Content-Length") == 0 || strcasecmp(name, "Transfer-Encoding") == 0 ||
         strcasecmp(name, "Date") == 0))
        return -1;
    if (f == 'c' && strcasecmp(name, "Connection") == 0) {
        if (strcasecmp(value, "close") == 0) r->want_close = true;
        return 0;
    }
    size_t nl = strlen(name), vl = strlen(value);
    if (th_buf_reserve(&r->rh, nl + vl + 4) != TH_BUF_OK) return -1;
    th_buf_append(&r->rh, name, nl);
    th_buf_append(&r->rh, ": ", 2);
    th_buf_append(&r->rh, value, vl);
    th_buf_append(&r->rh, "\r\n", 2);
    if (f == 'x' && strcasecmp(name, "X-Request-Id") == 0) r->has_reqid = true;
    return 0;
}

void th_http_respond(th_http_req *r, int status, const char *content_type, const void *body, size_t len)
{
    if (!r->held) return;
    conn *c = r->c;
    if (r->aborted || c->closing || r->started) {
        /* after th_http_start, respond just ends the stream */
        if (r->started && !r->aborted && !c->closing) {
            th_http_write(r, body, len);
            th_http_end(r, false);
            return;
        }
        release_aborted(c);
        return;
    }
    r->status = status;
    r->started = true;
    bool has_body = status_has_body(status);
    bool close = will_close(c);
    if (build_resp_head(c, status, content_type, has_body ? (int64_t)len : -2, close) != 0) {
        conn_close(c);
        release_aborted(c);
        return;
    }
    uv_buf_t bufs[2];
    unsigned n = 0;
    bufs[n++] = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    if (has_body && !r->head_only && len > 0) bufs[n++] = uv_buf_init((char *)body, (unsigned)len);
    if (conn_send(c, bufs, n) != 0) {
        release_aborted(c);
        return;
    }
    if (has_body && !r->head_only) r->bytes_sent = len;
    exchange_done(c, close);
}

int th_http_start(th_http_req *r, int status, const char *content_type, int64_t content_length)
{
    conn *c = r->c;
    if (!r->held || r->aborted || c->closing) return -1;
    if (r->started) return 0;
    r->status = status;
    r->started = true;
    bool has_body = status_has_body(status);
    int64_t mode;
    if (!has_body) {
        mode = -2;
        r->clen = 0;
    } else if (content_length >= 0) {
        mode = content_length;
        r->clen = content_length;
    } else if (c->p.msg.minor >= 1) {
        mode = -1;
        r->chunked = true;
    } else {
        mode = -2;
        r->close_delim = true;
        r->want_close = true;
    }
    if (build_resp_head(c, status, content_type, mode, will_close(c)) != 0) {
        conn_close(c);
        return -1;
    }
    /* Held back: the head and the first body bytes (or the end) leave in one writev. */
    r->head_pending = true;
    return 0;
}

/* Sends a held-back head in front of bufs (n may be 0). */
static int send_with_head(conn *c, th_http_req *r, uv_buf_t *bufs, unsigned n)
{
    if (!r->head_pending) return conn_send(c, bufs, n);
    r->head_pending = false;
    uv_buf_t all[4];
    all[0] = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    for (unsigned i = 0; i < n && i < 3; i++)
        all[i + 1] = bufs[i];
    int rc = conn_send(c, all, n + 1);           /* what the socket did not take is copied */
    if (c->out.cap > 8192) th_buf_free(&c->out); /* idle keep-alive connections keep no big scratch */
    return rc;
}

int th_http_write(th_http_req *r, const void *data, size_t len)
{
    conn *c = r->c;
    if (!r->held || r->aborted || c->closing) return -1;
    if (!r->started && th_http_start(r, 200, NULL, -1) != 0) return -1;
    if (r->head_only || len == 0) {
        if (r->head_pending && send_with_head(c, r, NULL, 0) != 0) return -1;
        return c->queued > WRITE_HIGH ? 1 : 0;
    }
    if (r->clen >= 0) {
        uint64_t room = (uint64_t)r->clen - r->bytes_sent;
        if (len > room) {
            TH_LOG(c->s->log, TH_LOG_WARN, "http: response body past its Content-Length, %zu bytes dropped",
                   (size_t)(len - room));
            len = (size_t)room;
            if (len == 0) return 0;
        }
    }
    if (c->queued > WRITE_HARD) {
        TH_LOG(c->s->log, TH_LOG_WARN, "http: %s: output queue past %d bytes, connection cut", c->peer,
               WRITE_HARD);
        conn_close(c);
        return -1;
    }
    int rc;
    if (r->head_pending && len <= HOLD_MAX && c->out.len + len + 32 <= c->out.max) {
        /* Held with the head until th_http_end or the end of this loop iteration: a short answer then
         * leaves in one write (head, body and the last chunk), not two. */
        char hdr[24];
        int hn = 0;
        if (r->chunked) {
            hn = put_hex(hdr, len);
            hdr[hn++] = '\r';
            hdr[hn++] = '\n';
        }
        th_buf_append(&c->out, hdr, (size_t)hn);
        th_buf_append(&c->out, data, len);
        if (r->chunked) th_buf_append(&c->out, "\r\n", 2);
        r->bytes_sent += len;
        if (!c->flush_queued) {
            c->flush_queued = true;
            c->refs++;
            c->fnext = c->s->flush;
            c->s->flush = c;
            schedule_idle(c->s);
        }
        return 0;
    }
    if (r->chunked) {
        char hdr[24];
        int hn = put_hex(hdr, len);
        hdr[hn++] = '\r';
        hdr[hn++] = '\n';
        uv_buf_t bufs[3] = {uv_buf_init(hdr, (unsigned)hn), uv_buf_init((char *)data, (unsigned)len),
                            uv_buf_init((char *)"\r\n", 2)};
        rc = send_with_head(c, r, bufs, 3);
    } else {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        rc = send_with_head(c, r, &b, 1);
    }
    if (rc != 0) return -1;
    r->bytes_sent += len;
    if (c->queued > WRITE_HIGH) {
        r->drain_armed = true;
        return 1;
    }
    return 0;
}

void th_http_end(th_http_req *r, bool cut)
{
    if (!r->held) return;
    conn *c = r->c;
    if (r->aborted || c->closing) {
        release_aborted(c);
        return;
    }
    if (c->state == C_RAW) {
        c->raw_data = NULL;
        exchange_done(c, true); /* FIN after the queued output, then linger and close */
        return;
    }
    if (!r->started) {
        if (th_http_start(r, r->status ? r->status : 200, NULL, cut ? -1 : 0) != 0) {
            release_aborted(c);
            return;
        }
    }
    bool close = cut || r->close_delim;
    if (!r->head_only && r->clen >= 0 && r->bytes_sent < (uint64_t)r->clen) close = true;
    if (r->chunked && !cut && !r->head_only) {
        uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
        if (send_with_head(c, r, &b, 1) != 0) { /* with a held head: head, body and end in one write */
            release_aborted(c);
            return;
        }
    } else if (r->head_pending && send_with_head(c, r, NULL, 0) != 0) {
        release_aborted(c);
        return;
    }
    exchange_done(c, close);
}

int th_http_upgrade(th_http_req *r,
                    void (*on_data)(th_http_req *r, const uint8_t *data, size_t len, void *ud), void *ud)
{
    conn *c = r->c;
    if (!r->held || r->aborted || r->started || c->closing || !c->p.msg.upgrade || on_data == NULL) return -1;
    th_buf_reset(&c->out);
    int rc = put(&c->out, "HTTP/1.1 101 Switching Protocols\r\n", 34);
    rc |= put(&c->out, "Connection: Upgrade\r\n", 21);
    if (r->rh.len > 0) rc |= put(&c->out, (const char *)r->rh.data, r->rh.len);
    rc |= put(&c->out, "\r\n", 2);
    if (rc != 0) return -1;
    r->started = true;
    r->status = 101;
    r->clen = -2;
    c->state = C_RAW;
    c->raw_data = on_data;
    c->raw_ud = ud;
    set_deadline_at(c, 0);
    uv_buf_t b = uv_buf_init((char *)c->out.data, (unsigned)c->out.len);
    if (conn_send(c, &b, 1) != 0) return -1;
    /* bytes that came after the request in the same read are delivered when the parse loop unwinds
     * (conn_input / conn_parse_pending); keep reading */
    read_resume(c);
    return 0;
}

int th_http_raw_write(th_http_req *r, const void *data, size_t len)
{
    conn *c = r->c;
    if (!r->held || r->aborted || r->ended || c->closing || c->state != C_RAW) return -1;
    if (c->queued > WRITE_HARD) {
        conn_close(c);
        return -1;
    }
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    if (conn_send(c, &b, 1) != 0) return -1;
    r->bytes_sent += len;
    if (c->queued > WRITE_HIGH) {
        r->drain_armed = true;
        return 1;
    }
    return 0;
}

size_t th_http_queued(const th_http_req *r)
{
    return r->c->queued;
}

void th_http_on_drain(th_http_req *r, void (*cb)(th_http_req *r, void *ud), void *ud)
{
    r->on_drain = cb;
    r->drain_ud = ud;
}

void th_http_on_close(th_http_req *r, void (*cb)(th_http_req *r, void *ud), void *ud)
{
    r->on_close = cb;
    r->close_ud = ud;
}

bool th_http_aborted(const th_http_req *r)
{
    return r->aborted || (r->held && r->c->closing);
}

bool th_http_started(const th_http_req *r)
{
    return r->started;
}

int th_http_status(const th_http_req *r)
{
    return r->status;
}

uint64_t th_http_bytes_sent(const th_http_req *r)
{
    return r->bytes_sent;
}
