/* client_h1: th_client's own HTTP/1.1 engine for plain http:// upstreams.
 *
 * Why not libcurl here: per transfer, curl re-registers its socket with epoll, polls the connection for
 * liveness before reuse, and keeps ~19 KiB of state. On a loopback proxy path that was half the hub's
 * CPU, and most of the memory of 10,000 parked requests. This engine does what nginx's upstream module
 * does and no more.
 *
 * Layout
 *   - h1_host: one per host:port seen. Its addresses (numeric: parsed once; names: uv_getaddrinfo,
 *     cached DNS_TTL_MS), its idle connections (LIFO), its open-connection count and the transfers
 *     waiting for a connection (at max_host_connections / max_total_connections) or for the resolver.
 *   - h1_conn: a uv_tcp_t that reads for its whole life (idle connections too, so a server's close is
 *     seen at once and epoll registration never churns), a response parser (resp.c), and at most
 *     one bound transfer. A connection opened for a transfer that is cancelled before it connects stays
 *     open and goes to the next waiter or the idle pool.
 *   - th_h1c_req: one transfer: the request bytes (head and body, built at start), three deadlines on
 *     one uv_timer_t, callbacks. Records are pooled.
 *   - One 64 KiB read buffer per client: reads are parsed at once; bytes left over by a pause are copied
 *     to the connection's own buffer until resume.
 *
 * Rules
 *   - No callback inside th_h1c_start. Failures found there (connect() refused at once) are queued and
 *     reported from the loop (uv_idle_t), as are resumes.
 *   - User callbacks run with c->depth > 0. A transfer cancelled inside its own callback (r->in_cb) is
 *     only marked; the parse loop that called it closes the connection and frees the record. Close with
 *     depth > 0 only marks; the teardown runs from the idle handle.
 *   - A request written on a reused connection that is closed or reset before any response byte is sent
 *     again once, on a new connection (the server closed an idle keep-alive connection under us).
 *   - Out of descriptors (EMFILE/ENFILE) or local ports, a transfer waits in its host's queue, within
 *     its connect deadline, for a connection to close or go idle (and a 100 ms retry timer).
 *   - Deadlines, all from start: connect (until the connection is up; also while queued), first byte
 *     (until a response byte; it counts as a connect timeout while not connected) and total. The total
 *     limit with no response byte yet is reported as a first-byte timeout, as the curl engine does. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/str.h"
#include "http/client_eng.h"
#include "http/resp.h"

#define HDR_MAX_COUNT 100
#define REQ_POOL_MAX 128
#define READ_BUF_SIZE 65536
#define MAX_ADDRS 8
#define DNS_TTL_MS 30000
#define IDLE_MAX_AGE_MS 60000 /* an idle connection older than this is closed rather than reused */
#define KEEPBUF_MAX 8192      /* pooled records keep buffers up to this size */

#define DEF_MAX_HOST 64
#define DEF_MAX_TOTAL 1024
#define DEF_MAX_IDLE 256
#define DEF_CONNECT_MS 10000
#define DEF_TOTAL_MS 120000

typedef struct h1_host h1_host;
typedef struct h1_conn h1_conn;
typedef struct h1_gai h1_gai;

struct h1_host {
    th_qlink link; /* c->hosts */
    th_h1c *c;
    char *name; /* without brackets */
    int port;
    bool numeric;
    h1_gai *gai; /* resolution in flight */
    struct sockaddr_storage addrs[MAX_ADDRS];
    size_t naddrs;
    uint64_t resolved_at; /* loop ms; 0 = not resolved */
    char resolve_err[96];
    th_qlink idle; /* h1_conn.link, most recent first */
    size_t nconns;
    th_qlink waiting; /* th_h1c_req.wait */
};

struct h1_gai {
    uv_getaddrinfo_t req;
    th_h1c *c;
    h1_host *h; /* NULL once the client tore down */
};

typedef enum { K_CONNECTING = 0, K_OPEN, K_CLOSING } kstate;

struct h1_conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    th_h1c *c;
    h1_host *h;
    th_h1c_req *r; /* bound transfer */
    th_qlink link; /* h->idle */
    th_qlink all;  /* c->conns */
    th_resp rp;
    th_buf pend; /* bytes read but not parsed while the transfer is paused */
    uint64_t idle_since;
    size_t addr_i;
    unsigned served; /* responses completed on it */
    kstate state;
    bool reading;
    bool writing;
};

typedef enum { R_POOLED = 0, R_ACTIVE, R_DONE } rstate;

struct th_h1c_req {
    th_client_req base; /* engine tag: first member */
    th_h1c *c;
    h1_host *h;
    h1_conn *k;
    th_qlink live; /* c->live while not pooled; c->pool while pooled */
    th_qlink wait; /* h->waiting */
    th_qlink pend; /* c->pending */
    uv_timer_t timer;
    th_client_cb cb;
    th_buf out;    /* request head, and the body's copied pieces */
    th_cbody body; /* what is sent: the head, then the body (pieces in out or borrowed) */
    uint64_t out_off;
    uint64_t t_start, t_conn, t_first, t_total;
    uint64_t max_body, body_seen;
    int status;
    rstate state;
    th_client_result fail; /* set by a parser callback that stops the transfer */
    bool is_head;
    bool connected;
    bool got_byte;
    bool head_done;
    bool paused;
    bool in_cb;
    bool cancelled;
    bool retried;
    bool want_resume;
    bool want_fail; /* fail/detail to be reported from the loop */
    char detail[160];
};

struct th_h1c {
    uv_loop_t *loop;
    uv_idle_t idle;
    uv_timer_t starve; /* re-pumps waiters after EMFILE */
    th_qlink hosts;
    th_qlink conns;
    th_qlink live;
    th_qlink pool;
    th_qlink pending;
    size_t npool;
    size_t nconns;
    size_t nidle;
    size_t inflight;
    size_t nhandles; /* uv handles and requests not through their callbacks yet (idle, timers, tcp, gai) */
    long max_host, max_total, max_idle;
    int depth; /* user callbacks on the stack */
    bool closing;
    bool torn_down;
    void (*done)(void *ud);
    void *done_ud;
    th_client_header harr[HDR_MAX_COUNT];
    char rbuf[READ_BUF_SIZE];
};

static int resp_head(void *ud, int status, const th_client_header *h, size_t n);
static int resp_body(void *ud, const uint8_t *data, size_t len);
static const th_resp_cb resp_cbs = {resp_head, resp_body};

static void teardown(th_h1c *c);
static void host_pump(h1_host *h);
static void on_req_timer(uv_timer_t *t);
static h1_conn *conn_open(th_h1c *c, h1_host *h, th_h1c_req *r, size_t ai, int *err);
static int req_dispatch(th_h1c_req *r, bool fresh);
static void conn_close_ex(h1_conn *k, bool pump);
static void conn_close(h1_conn *k);

/* ---------------------------------------------------------------- lifetime bookkeeping */

static void handle_gone(th_h1c *c)
{
    if (--c->nhandles > 0 || !c->torn_down) return;
    void (*done)(void *) = c->done;
    void *ud = c->done_ud;
    free(c);
    if (done) done(ud);
}

static void on_idle_closed(uv_handle_t *hd)
{
    handle_gone(hd->data);
}

static void on_timer_closed(uv_handle_t *hd)
{
    th_h1c_req *r = hd->data;
    th_h1c *c = r->c;
    th_buf_free(&r->out);
    free(r);
    handle_gone(c);
}

static void on_conn_closed(uv_handle_t *hd)
{
    h1_conn *k = hd->data;
    th_h1c *c = k->c;
    th_buf_free(&k->pend);
    th_resp_free(&k->rp);
    free(k);
    handle_gone(c);
}

static void on_idle(uv_idle_t *hd);

static void pend(th_h1c_req *r)
{
    th_h1c *c = r->c;
    if (!th_q_linked(&r->pend)) th_q_push(&c->pending, &r->pend);
    uv_idle_start(&c->idle, on_idle);
}

/* ---------------------------------------------------------------- transfer records */

static th_h1c_req *req_get(th_h1c *c)
{
    th_h1c_req *r;
    if (!th_q_empty(&c->pool)) {
        th_qlink *l = c->pool.next;
        th_q_unlink(l);
        c->npool--;
        r = TH_Q_OF(l, th_h1c_req, live);
    } else {
        r = calloc(1, sizeof *r);
        if (!r) return NULL;
        r->base.engine = TH_CLIENT_ENGINE_H1;
        r->c = c;
        if (uv_timer_init(c->loop, &r->timer) != 0) {
            free(r);
            return NULL;
        }
        r->timer.data = r;
        c->nhandles++;
        th_buf_init(&r->out, 0); /* the request we write: built here, not read */
    }
    r->h = NULL;
    r->k = NULL;
    r->out_off = 0;
    r->max_body = r->body_seen = 0;
    r->status = 0;
    r->state = R_POOLED;
    r->fail = TH_CLIENT_OK;
    r->is_head = r->connected = r->got_byte = r->head_done = false;
    r->paused = r->in_cb = r->cancelled = r->retried = r->want_resume = r->want_fail = false;
    r->detail[0] = 0;
    return r;
}

static void req_destroy(th_h1c_req *r)
{
    th_cbody_release(&r->body);
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

/* The record leaves the transfer: back to the pool, or freed. Not linked to a connection any more. */
static void req_release(th_h1c_req *r)
{
    th_h1c *c = r->c;
    th_q_unlink(&r->live);
    th_q_unlink(&r->wait);
    th_q_unlink(&r->pend);
    uv_timer_stop(&r->timer);
    r->state = R_POOLED;
    r->k = NULL;
    th_cbody_release(&r->body); /* no connection writes it any more (see conn_feed, TH_RESP_DONE) */
    if (c->closing || c->npool >= REQ_POOL_MAX) {
        req_destroy(r);
        return;
    }
    if (r->out.cap > KEEPBUF_MAX) th_buf_free(&r->out);
    th_buf_reset(&r->out);
    th_q_push(&c->pool, &r->live);
    c->npool++;
}

/* Ends an active transfer: on_done (unless cancelled), then the record goes. The caller has already
 * detached it from its connection. */
static void finish(th_h1c_req *r, th_client_result res, const char *detail)
{
    th_h1c *c = r->c;
    if (r->state != R_ACTIVE) {
        if (!r->in_cb) req_release(r);
        return;
    }
    r->state = R_DONE;
    c->inflight--;
    uv_timer_stop(&r->timer);
    th_q_unlink(&r->wait);
    th_q_unlink(&r->pend);
    r->k = NULL;
    if (detail && detail != r->detail) snprintf(r->detail, sizeof r->detail, "%s", detail);
    if (r->cb.on_done) {
        c->depth++;
        r->cb.on_done(r->cb.ud, res, r->head_done ? r->status : 0, res == TH_CLIENT_OK ? "" : r->detail);
        c->depth--;
    }
    req_release(r);
    if (c->closing && c->depth == 0 && !c->torn_down) uv_idle_start(&c->idle, on_idle);
}

static void req_arm(th_h1c_req *r)
{
    uint64_t due = r->t_total;
    if (!r->connected) {
        if (r->t_conn < due) due = r->t_conn;
        if (r->t_first < due) due = r->t_first;
    } else if (!r->got_byte) {
        if (r->t_first < due) due = r->t_first;
    }
    uint64_t now = uv_now(r->c->loop);
    uv_timer_start(&r->timer, on_req_timer, due > now ? due - now : 0, 0);
}

/* ---------------------------------------------------------------- connections */

static void conn_unbind(h1_conn *k)
{
    if (k->r) k->r->k = NULL;
    k->r = NULL;
}

static void conn_close(h1_conn *k)
{
    conn_close_ex(k, true);
}

static void conn_close_ex(h1_conn *k, bool pump)
{
    if (k->state == K_CLOSING) return;
    th_h1c *c = k->c;
    conn_unbind(k);
    if (th_q_linked(&k->link)) {
        th_q_unlink(&k->link);
        c->nidle--;
    }
    th_q_unlink(&k->all);
    k->state = K_CLOSING;
    c->nconns--;
    h1_host *h = k->h;
    h->nconns--;
    uv_close((uv_handle_t *)&k->tcp, on_conn_closed);
    if (pump && !c->closing) host_pump(h); /* a slot is free: a waiter may connect */
}

static void on_write(uv_write_t *w, int status);

/* Sends what is left of the bound transfer's request. Returns 0, or a negative uv error. */
static int conn_send(h1_conn *k)
{
    th_h1c_req *r = k->r;
    uv_buf_t b[sizeof r->body.p / sizeof r->body.p[0]];
    size_t nb = th_cbody_bufs(&r->body, &r->out, r->out_off, b, sizeof b / sizeof b[0]);
    int n = uv_try_write((uv_stream_t *)&k->tcp, b, (unsigned)nb);
    if (n == UV_EAGAIN) n = 0;
    if (n < 0) return n;
    r->out_off += (uint64_t)n;
    if (r->out_off == r->body.total) return 0;
    nb = th_cbody_bufs(&r->body, &r->out, r->out_off, b, sizeof b / sizeof b[0]);
    int rc = uv_write(&k->wreq, (uv_stream_t *)&k->tcp, b, (unsigned)nb, on_write);
    if (rc == 0) k->writing = true;
    return rc;
}

/* The bound transfer's request could not be sent, or the connection ended before a response byte. */
static void conn_lost_early(h1_conn *k, int err)
{
    th_h1c_req *r = k->r;
    bool reused = k->served > 0;
    conn_close(k);
    if (!r || r->state != R_ACTIVE) return;
    if (reused && !r->retried) { /* a keep-alive connection the server had closed: once more, fresh */
        r->retried = true;
        r->out_off = 0;
        r->connected = false;
        req_arm(r);
        req_dispatch(r, true);
        return;
    }
    snprintf(r->detail, sizeof r->detail, "%s before the response",
             err == UV_EOF ? "connection closed" : uv_strerror(err));
    finish(r, TH_CLIENT_RESET, r->detail);
}

static void on_write(uv_write_t *w, int status)
{
    h1_conn *k = w->data;
    k->writing = false;
    if (k->state == K_CLOSING || status == 0 || !k->r) return;
    if (k->r->got_byte) return; /* the answer came already (an early error response): let it finish */
    conn_lost_early(k, status);
}

/* Binds r to an open connection and sends its request. Returns false when the send failed at once
 * (the connection is closed then; r is not bound). */
static bool conn_bind_send(h1_conn *k, th_h1c_req *r)
{
    k->r = r;
    r->k = k;
    r->connected = true;
    th_resp_init(&k->rp, r->is_head);
    req_arm(r);
    if (conn_send(k) == 0) return true;
    conn_unbind(k);
    conn_close(k);
    return false;
}

static void conn_idle(h1_conn *k);

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *b)
{
    h1_conn *k = hd->data;
    b->base = k->c->rbuf;
    b->len = READ_BUF_SIZE;
}

/* Runs the parser over bytes of the bound transfer's response and acts on the outcome. len may be 0 (a
 * resume: a response whose last bytes were delivered before the pause completes here). */
static void conn_feed(h1_conn *k, const char *data, size_t len)
{
    th_h1c *c = k->c;
    th_h1c_req *r = k->r;
    size_t used = 0;
    c->depth++;
    th_resp_rc rc = th_resp_feed(&k->rp, (const uint8_t *)data, len, &used, &resp_cbs, k, c->harr);
    c->depth--;

    if (k->state == K_CLOSING) { /* defensive: nothing in a callback closes its own connection */
        if (r->state == R_ACTIVE) {
            finish(r, TH_CLIENT_RESET, "connection closed");
        } else if (r->in_cb) {
            r->in_cb = false;
            req_release(r);
        }
        return;
    }
    if (r->state != R_ACTIVE) { /* cancelled inside its own callback */
        r->in_cb = false;
        conn_close(k);
        req_release(r);
        return;
    }
    if (r->fail != TH_CLIENT_OK) {
        conn_close(k);
        finish(r, r->fail, r->detail);
        return;
    }
    switch (rc) {
    case TH_RESP_DONE: {
        /* Anything after the response on this connection is not ours: it cannot be reused. */
        /* Nor while our request is still being written (an early answer): the write reads the body, which
         * goes back to its owner with the transfer; closing the handle stops the write. */
        bool keep = th_resp_keep_alive(&k->rp) && used == len && !k->writing;
        k->served++;
        conn_unbind(k);
        if (keep)
            conn_idle(k);
        else
            conn_close(k);
        finish(r, TH_CLIENT_OK, NULL);
        return;
    }
    case TH_RESP_PAUSED:
        if (used < len && th_buf_append(&k->pend, data + used, len - used) != TH_BUF_OK) {
            conn_close(k);
            finish(r, TH_CLIENT_INTERNAL, "out of memory");
            return;
        }
        if (k->reading) {
            uv_read_stop((uv_stream_t *)&k->tcp);
            k->reading = false;
        }
        return;
    case TH_RESP_ERROR:
    case TH_RESP_STOPPED:
        snprintf(r->detail, sizeof r->detail, "bad response: %s", th_resp_error(&k->rp));
        conn_close(k);
        finish(r, TH_CLIENT_PROTOCOL, r->detail);
        return;
    case TH_RESP_MORE:
        return;
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    h1_conn *k = st->data;
    if (nread == 0 || k->state == K_CLOSING) return;
    th_h1c_req *r = k->r;
    if (nread < 0) {
        if (!r) { /* an idle connection the server closed */
            conn_close(k);
            return;
        }
        if (!r->got_byte) {
            conn_lost_early(k, (int)nread);
            return;
        }
        if (nread == UV_EOF && r->head_done && th_resp_eof(&k->rp) == TH_RESP_DONE) {
            conn_close(k); /* the body ran until the close */
            finish(r, TH_CLIENT_OK, NULL);
            return;
        }
        snprintf(r->detail, sizeof r->detail, "%s in the middle of the response",
                 nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
        conn_close(k);
        finish(r, TH_CLIENT_RESET, r->detail);
        return;
    }
    if (!r) { /* bytes nobody asked for on an idle connection */
        conn_close(k);
        return;
    }
    if (!r->got_byte) {
        r->got_byte = true;
        req_arm(r);
    }
    conn_feed(k, b->base, (size_t)nread);
}

static void conn_idle(h1_conn *k)
{
    th_h1c *c = k->c;
    h1_host *h = k->h;
    if (c->closing) {
        conn_close(k);
        return;
    }
    /* Read while idle (a pause may have stopped it): the server's close must be seen. */
    if (!k->reading) {
        if (uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) != 0) {
            conn_close(k);
            return;
        }
        k->reading = true;
    }
    if (!th_q_empty(&h->waiting) && h->naddrs > 0) { /* a waiter takes it at once */
        th_h1c_req *w = TH_Q_OF(h->waiting.next, th_h1c_req, wait);
        th_q_unlink(&w->wait);
        if (!conn_bind_send(k, w)) req_dispatch(w, true); /* the send failed at once: it is gone */
        return;
    }
    k->idle_since = uv_now(c->loop);
    th_q_push_head(&h->idle, &k->link);
    c->nidle++;
    if ((long)c->nidle > c->max_idle) { /* the oldest idle connection of this host goes */
        h1_conn *old = TH_Q_OF(h->idle.prev, h1_conn, link);
        conn_close(old);
    }
}

static void on_connect(uv_connect_t *cr, int status)
{
    h1_conn *k = cr->data;
    if (k->state == K_CLOSING) return;
    th_h1c *c = k->c;
    th_h1c_req *r = k->r;
    if (status < 0) {
        h1_host *h = k->h;
        size_t next = k->addr_i + 1;
        conn_close(k);
        if (!r || r->state != R_ACTIVE) return;
        if (next < h->naddrs) { /* the next address of the name (::1 refused, 127.0.0.1 listening) */
            int oerr = 0;
            if (conn_open(c, h, r, next, &oerr)) return;
        }
        snprintf(r->detail, sizeof r->detail, "connect to %s:%d: %s", h->name, h->port, uv_strerror(status));
        finish(r, TH_CLIENT_CONNECT, r->detail);
        return;
    }
    k->state = K_OPEN;
    if (uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) == 0) k->reading = true;
    if (!r) {
        conn_idle(k);
        return;
    }
    conn_unbind(k);
    if (!conn_bind_send(k, r)) {
        snprintf(r->detail, sizeof r->detail, "could not send the request");
        finish(r, TH_CLIENT_RESET, r->detail);
    }
}

/* Opens a connection to address ai of h for r (r may be NULL). NULL when it could not even start; then
 * r is untouched. */
static h1_conn *conn_open(th_h1c *c, h1_host *h, th_h1c_req *r, size_t ai, int *err)
{
    *err = UV_ENOMEM;
    h1_conn *k = calloc(1, sizeof *k);
    if (!k) return NULL;
    if (uv_tcp_init(c->loop, &k->tcp) != 0) {
        free(k);
        return NULL;
    }
    k->tcp.data = k;
    k->creq.data = k;
    k->wreq.data = k;
    k->c = c;
    k->h = h;
    k->addr_i = ai;
    th_buf_init(&k->pend, READ_BUF_SIZE); /* the rest of one read */
    c->nhandles++;
    c->nconns++;
    h->nconns++;
    th_q_push(&c->conns, &k->all);
    uv_tcp_nodelay(&k->tcp, 1);
    int rc = uv_tcp_connect(&k->creq, &k->tcp, (const struct sockaddr *)&h->addrs[ai], on_connect);
    if (rc != 0) {
        *err = rc;
        if (r)
            snprintf(r->detail, sizeof r->detail, "connect to %s:%d: %s", h->name, h->port, uv_strerror(rc));
        k->state = K_OPEN;
        conn_close_ex(k, false); /* no pump: the caller decides what r and the waiters do */
        return NULL;
    }
    k->r = r;
    if (r) r->k = k;
    return k;
}

/* ---------------------------------------------------------------- hosts and resolution */

static void host_fail_waiters(h1_host *h, const char *why)
{
    while (!th_q_empty(&h->waiting)) {
        th_h1c_req *r = TH_Q_OF(h->waiting.next, th_h1c_req, wait);
        th_q_unlink(&r->wait);
        snprintf(r->detail, sizeof r->detail, "%s", why);
        finish(r, TH_CLIENT_CONNECT, r->detail);
    }
}

static void on_resolved(uv_getaddrinfo_t *gr, int status, struct addrinfo *res)
{
    h1_gai *g = gr->data;
    th_h1c *c = g->c;
    h1_host *h = g->h;
    if (h) {
        h->gai = NULL;
        if (status == 0) {
            h->naddrs = 0;
            for (struct addrinfo *ai = res; ai && h->naddrs < MAX_ADDRS; ai = ai->ai_next) {
                if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
                    ai->ai_addrlen > sizeof h->addrs[0])
                    continue;
                memcpy(&h->addrs[h->naddrs++], ai->ai_addr, ai->ai_addrlen);
            }
        }
        if (status != 0 || h->naddrs == 0) {
            h->naddrs = 0;
            h->resolved_at = 0;
            snprintf(h->resolve_err, sizeof h->resolve_err, "could not resolve host %s: %s", h->name,
                     status ? uv_strerror(status) : "no address");
            host_fail_waiters(h, h->resolve_err);
        } else {
            h->resolved_at = uv_now(c->loop);
            host_pump(h);
        }
    }
    if (res) uv_freeaddrinfo(res);
    free(g);
    handle_gone(c);
}

static bool host_resolved(h1_host *h, uint64_t now)
{
    return h->numeric || (h->naddrs > 0 && now - h->resolved_at < DNS_TTL_MS);
}

static void host_resolve(th_h1c *c, h1_host *h)
{
    if (h->gai) return;
    h1_gai *g = calloc(1, sizeof *g);
    if (!g) {
        host_fail_waiters(h, "out of memory");
        return;
    }
    g->c = c;
    g->h = h;
    g->req.data = g;
    char port[8];
    snprintf(port, sizeof port, "%d", h->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
    int rc = uv_getaddrinfo(c->loop, &g->req, on_resolved, h->name, port, &hints);
    if (rc != 0) {
        free(g);
        snprintf(h->resolve_err, sizeof h->resolve_err, "could not resolve host %s: %s", h->name,
                 uv_strerror(rc));
        host_fail_waiters(h, h->resolve_err);
        return;
    }
    h->gai = g;
    c->nhandles++;
}

/* Gives waiting transfers connections while there are idle ones or room for new ones. */
static void host_pump(h1_host *h)
{
    if (th_q_empty(&h->waiting)) return;
    th_h1c *c = h->c;
    if (c->closing) return;
    if (!host_resolved(h, uv_now(c->loop))) {
        host_resolve(c, h);
        return;
    }
    while (!th_q_empty(&h->waiting)) {
        th_h1c_req *r = TH_Q_OF(h->waiting.next, th_h1c_req, wait);
        if (th_q_empty(&h->idle) && ((long)h->nconns >= c->max_host || (long)c->nconns >= c->max_total))
            return;
        th_q_unlink(&r->wait);
        if (req_dispatch(r, false) == 1) return; /* out of descriptors: the starve timer comes back */
    }
}

/* Out of descriptors (EMFILE/ENFILE) or local ports: waiters wait for a connection to close, or for
 * this timer, within their connect deadline, instead of failing at once. */
static void on_starve_timer(uv_timer_t *t)
{
    th_h1c *c = t->data;
    for (th_qlink *l = c->hosts.next; l != &c->hosts; l = l->next)
        host_pump(TH_Q_OF(l, h1_host, link));
}

static bool starved_err(int err)
{
    return err == UV_EMFILE || err == UV_ENFILE || err == UV_EADDRNOTAVAIL || err == UV_ENOBUFS;
}

static h1_host *host_get(th_h1c *c, const char *name, size_t nlen, int port)
{
    for (th_qlink *l = c->hosts.next; l != &c->hosts; l = l->next) {
        h1_host *h = TH_Q_OF(l, h1_host, link);
        if (h->port == port && strlen(h->name) == nlen && strncasecmp(h->name, name, nlen) == 0) return h;
    }
    h1_host *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->name = malloc(nlen + 1);
    if (!h->name) {
        free(h);
        return NULL;
    }
    memcpy(h->name, name, nlen);
    h->name[nlen] = 0;
    h->port = port;
    h->c = c;
    th_q_init(&h->idle);
    th_q_init(&h->waiting);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&h->addrs[0];
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&h->addrs[0];
    if (uv_ip4_addr(h->name, port, a4) == 0 || uv_ip6_addr(h->name, port, a6) == 0) {
        h->numeric = true;
        h->naddrs = 1;
    }
    th_q_push(&c->hosts, &h->link);
    return h;
}

/* ---------------------------------------------------------------- dispatch */

/* Finds r a connection: an idle one, a new one, or a place in the host's queue. fresh: never an idle
 * connection (a retry after a reused one failed). Never calls r's callbacks. */
static int req_dispatch(th_h1c_req *r, bool fresh)
{
    th_h1c *c = r->c;
    h1_host *h = r->h;
    uint64_t now = uv_now(c->loop);
    if (!host_resolved(h, now)) {
        th_q_push(&h->waiting, &r->wait);
        host_resolve(c, h);
        return 0;
    }
    while (!fresh && !th_q_empty(&h->idle)) {
        h1_conn *k = TH_Q_OF(h->idle.next, h1_conn, link);
        th_q_unlink(&k->link);
        c->nidle--;
        if (now - k->idle_since > IDLE_MAX_AGE_MS) {
            conn_close(k);
            continue;
        }
        if (conn_bind_send(k, r)) return 0;
        /* the write failed at once (the server closed it): try the next, or a new one */
    }
    if ((long)h->nconns < c->max_host && (long)c->nconns < c->max_total) {
        int err = 0;
        if (conn_open(c, h, r, 0, &err)) return 0;
        if (starved_err(err)) {
            th_q_push_head(&h->waiting, &r->wait);
            if (!uv_is_active((uv_handle_t *)&c->starve)) uv_timer_start(&c->starve, on_starve_timer, 100, 0);
            return 1;
        }
        r->fail = TH_CLIENT_CONNECT;
        r->want_fail = true;
        pend(r);
        return 0;
    }
    th_q_push(&h->waiting, &r->wait);
    return 0;
}

/* ---------------------------------------------------------------- parser callbacks */

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static int stop_with(th_h1c_req *r, th_client_result res, const char *detail)
{
    r->fail = res;
    snprintf(r->detail, sizeof r->detail, "%s", detail);
    return -1;
}

static int resp_head(void *ud, int status, const th_client_header *h, size_t n)
{
    h1_conn *k = ud;
    th_h1c_req *r = k->r;
    if (!r->is_head && r->max_body && k->rp.clen >= 0 && (uint64_t)k->rp.clen > r->max_body)
        return stop_with(r, TH_CLIENT_TOO_LARGE, "response body larger than max_body");
    r->status = status;
    r->head_done = true;
    if (r->cb.on_head) {
        r->in_cb = true;
        int rc = r->cb.on_head(r->cb.ud, status, h, n);
        r->in_cb = false;
        if (r->state != R_ACTIVE) {
            r->in_cb = true; /* conn_feed releases it */
            return -1;
        }
        if (rc < 0) return stop_with(r, TH_CLIENT_ABORTED, "aborted by on_head");
    }
    return 0;
}

static int resp_body(void *ud, const uint8_t *at, size_t len)
{
    h1_conn *k = ud;
    th_h1c_req *r = k->r;
    if (len == 0) return 0;
    if (r->max_body && (r->body_seen + len < r->body_seen || r->body_seen + len > r->max_body))
        return stop_with(r, TH_CLIENT_TOO_LARGE, "response body larger than max_body");
    r->body_seen += len;
    if (!r->cb.on_body) return 0;
    r->in_cb = true;
    int rc = r->cb.on_body(r->cb.ud, at, len);
    r->in_cb = false;
    if (r->state != R_ACTIVE) {
        r->in_cb = true;
        return -1;
    }
    if (rc < 0) return stop_with(r, TH_CLIENT_ABORTED, "aborted by on_body");
    if (rc == 1) {
        r->paused = true;
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- timers and deferred work */

static void on_req_timer(uv_timer_t *t)
{
    th_h1c_req *r = t->data;
    if (r->state != R_ACTIVE) return;
    th_client_result res;
    const char *what;
    if (!r->connected) {
        res = TH_CLIENT_TIMEOUT_CONNECT;
        what = "no connection";
    } else if (!r->got_byte) {
        res = TH_CLIENT_TIMEOUT_FIRST;
        what = "no response byte";
    } else {
        res = TH_CLIENT_TIMEOUT_TOTAL;
        what = "response not complete";
    }
    snprintf(r->detail, sizeof r->detail, "%s after %llu ms", what,
             (unsigned long long)(uv_now(r->c->loop) - r->t_start));
    h1_conn *k = r->k;
    if (k) conn_close(k);
    finish(r, res, r->detail);
}

static void run_pending(th_h1c *c)
{
    while (!th_q_empty(&c->pending)) {
        th_h1c_req *r = TH_Q_OF(c->pending.next, th_h1c_req, pend);
        th_q_unlink(&r->pend);
        if (r->state != R_ACTIVE) continue;
        if (r->want_fail) {
            r->want_fail = false;
            h1_conn *k = r->k;
            if (k) conn_close(k);
            finish(r, r->fail, r->detail[0] ? r->detail : "connect failed");
            continue;
        }
        if (r->want_resume) {
            r->want_resume = false;
            h1_conn *k = r->k;
            if (!r->paused || !k) continue;
            r->paused = false;
            th_buf tmp = k->pend; /* maybe empty: the response may have ended with the paused bytes */
            th_buf_init(&k->pend, READ_BUF_SIZE);
            conn_feed(k, (const char *)tmp.data, tmp.len);
            th_buf_free(&tmp);
            if (k->state == K_OPEN && k->r == r && r->state == R_ACTIVE && !r->paused && !k->reading &&
                uv_read_start((uv_stream_t *)&k->tcp, on_alloc, on_read) == 0)
                k->reading = true;
        }
    }
}

static void on_idle(uv_idle_t *hd)
{
    th_h1c *c = hd->data;
    run_pending(c);
    if (th_q_empty(&c->pending)) uv_idle_stop(&c->idle);
    if (c->closing && !c->torn_down && c->depth == 0) teardown(c);
}

/* ---------------------------------------------------------------- request building */

typedef struct url_parts {
    const char *host;
    size_t host_len;
    const char *authority; /* for Host: as written */
    size_t auth_len;
    const char *path; /* from '/' or '?'; NULL = "/" */
    size_t path_len;
    int port;
} url_parts;

/* 0 ok, -1 bad, 1 not for this engine */
static int parse_url(const char *url, url_parts *u)
{
    if (strncasecmp(url, "http://", 7) != 0) return 1;
    const char *a = url + 7;
    size_t alen = strcspn(a, "/?#");
    const char *rest = a + alen;
    if (memchr(a, '@', alen)) return 1; /* user info: curl does Basic auth */
    for (const char *q = url; *q; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) return -1;
    if (alen == 0) return -1;
    u->authority = a;
    u->auth_len = alen;
    const char *pstart = NULL;
    if (a[0] == '[') {
        const char *rb = memchr(a, ']', alen);
        if (!rb || rb == a + 1) return -1;
        u->host = a + 1;
        u->host_len = (size_t)(rb - a - 1);
        if (rb + 1 < a + alen) {
            if (rb[1] != ':') return -1;
            pstart = rb + 2;
        }
    } else {
        const char *colon = memchr(a, ':', alen);
        u->host = a;
        u->host_len = colon ? (size_t)(colon - a) : alen;
        if (colon) pstart = colon + 1;
        for (size_t i = 0; i < u->host_len; i++) {
            char ch = a[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '.' || ch == '-' || ch == '_'))
                return -1;
        }
    }
    if (u->host_len == 0 || u->host_len > 253) return -1;
    u->port = 80;
    if (pstart && pstart < a + alen) {
        int64_t port = 0;
        if (th_strn_to_i64(pstart, (size_t)(a + alen - pstart), 1, 65535, &port) != 0) return -1;
        u->port = (int)port;
    }
    size_t plen = strcspn(rest, "#");
    u->path = plen ? rest : NULL;
    u->path_len = plen;
    return 0;
}

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* "Name:" (nothing after the colon) removes a header, as with curl; "Name;" sends it empty. */
static bool header_is_removal(const char *hd, size_t *nlen)
{
    const char *colon = strchr(hd, ':');
    const char *semi = strchr(hd, ';');
    if (colon && (!semi || colon < semi)) {
        *nlen = (size_t)(colon - hd);
        const char *v = colon + 1;
        while (is_ows(*v))
            v++;
        return *v == '\0';
    }
    *nlen = semi ? (size_t)(semi - hd) : strlen(hd);
    return false;
}

static bool name_is(const char *hd, size_t nlen, const char *name, size_t len)
{
    return nlen == len && strncasecmp(hd, name, len) == 0;
}

static int append_u64(th_buf *b, uint64_t v)
{
    char tmp[24];
    char *e = tmp + sizeof tmp, *p = e;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    return th_buf_append(b, p, (size_t)(e - p));
}

static int build_request(th_h1c_req *r, const th_client_opts *o, const char *method, const url_parts *u,
                         bool send_body)
{
    uint64_t body_len = o->body_len;
    if (o->segs != NULL) {
        body_len = 0;
        for (size_t i = 0; i < o->nsegs; i++)
            body_len += o->segs[i].len;
    }
    bool has_host = false, has_accept = false, has_ctype = false;
    size_t hbytes = 0;
    if (o->headers) {
        for (size_t i = 0; o->headers[i]; i++) {
            size_t nlen = 0;
            header_is_removal(o->headers[i], &nlen);
            has_host |= name_is(o->headers[i], nlen, "host", 4);
            has_accept |= name_is(o->headers[i], nlen, "accept", 6);
            has_ctype |= name_is(o->headers[i], nlen, "content-type", 12);
            hbytes += strlen(o->headers[i]) + 2;
        }
    }
    th_buf *b = &r->out;
    size_t copied = o->segs == NULL ? o->body_len : 0;
    int rc = th_buf_reserve(b, 160 + strlen(method) + u->path_len + u->auth_len + hbytes + copied);
    if (rc != TH_BUF_OK) return -1;
    rc |= th_buf_append_str(b, method);
    rc |= th_buf_append_byte(b, ' ');
    if (!u->path || u->path[0] != '/') rc |= th_buf_append_byte(b, '/');
    if (u->path) rc |= th_buf_append(b, u->path, u->path_len);
    rc |= th_buf_append(b, " HTTP/1.1\r\n", 11);
    if (!has_host) {
        rc |= th_buf_append(b, "Host: ", 6);
        rc |= th_buf_append(b, u->authority, u->auth_len);
        rc |= th_buf_append(b, "\r\n", 2);
    }
    if (!has_accept) rc |= th_buf_append(b, "Accept: */*\r\n", 13);
    if (o->headers) {
        for (size_t i = 0; o->headers[i]; i++) {
            const char *hd = o->headers[i];
            size_t nlen = 0;
            if (header_is_removal(hd, &nlen)) continue;
            if (name_is(hd, nlen, "content-length", 14) || name_is(hd, nlen, "transfer-encoding", 17))
                continue;
            if (hd[nlen] == ';') { /* "Name;" = empty value */
                rc |= th_buf_append(b, hd, nlen);
                rc |= th_buf_append(b, ":\r\n", 3);
                continue;
            }
            rc |= th_buf_append_str(b, hd);
            rc |= th_buf_append(b, "\r\n", 2);
        }
    }
    if (send_body) {
        if (!has_ctype) rc |= th_buf_append_str(b, "Content-Type: application/x-www-form-urlencoded\r\n");
        rc |= th_buf_append(b, "Content-Length: ", 16);
        rc |= append_u64(b, body_len);
        rc |= th_buf_append(b, "\r\n", 2);
    }
    rc |= th_buf_append(b, "\r\n", 2);
    if (rc != 0) return -1;
    return th_cbody_build(&r->body, b, o);
}

/* ---------------------------------------------------------------- public */

th_h1c *th_h1c_new(uv_loop_t *loop, const th_client_conf *conf)
{
    if (!loop) return NULL;
    th_h1c *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    th_q_init(&c->hosts);
    th_q_init(&c->conns);
    th_q_init(&c->live);
    th_q_init(&c->pool);
    th_q_init(&c->pending);
    c->max_host = conf && conf->max_host_connections > 0 ? conf->max_host_connections : DEF_MAX_HOST;
    c->max_total = conf && conf->max_total_connections > 0 ? conf->max_total_connections : DEF_MAX_TOTAL;
    c->max_idle = conf && conf->max_connects_cache > 0 ? conf->max_connects_cache : DEF_MAX_IDLE;
    if (uv_idle_init(loop, &c->idle) != 0) {
        free(c);
        return NULL;
    }
    c->idle.data = c;
    if (uv_timer_init(loop, &c->starve) != 0) {
        c->torn_down = true;
        uv_close((uv_handle_t *)&c->idle, on_idle_closed);
        return NULL;
    }
    c->starve.data = c;
    c->nhandles = 2;
    return c;
}

th_h1c_req *th_h1c_start(th_h1c *c, const th_client_opts *o, const th_client_cb *cb, bool *unsupported)
{
    *unsupported = false;
    if (!c || !o || !o->url || !cb || c->closing || has_crlf(o->url)) return NULL;
    url_parts u = {0};
    int pr = parse_url(o->url, &u);
    if (pr == 1) {
        *unsupported = true;
        return NULL;
    }
    if (pr != 0) return NULL;
    if (th_cbody_check(o) != 0) return NULL;
    bool has_body = o->body != NULL || o->segs != NULL;
    const char *method = o->method ? o->method : (has_body ? "POST" : "GET");
    if (!*method || has_crlf(method) || strchr(method, ' ')) return NULL;
    bool is_head = strcmp(method, "HEAD") == 0;
    if (is_head && has_body) return NULL;
    if (o->body_len > (uint64_t)INT64_MAX) return NULL;
    if (o->headers)
        for (size_t i = 0; o->headers[i]; i++)
            if (has_crlf(o->headers[i])) return NULL;
    uint64_t total = o->total_timeout_ms ? o->total_timeout_ms : DEF_TOTAL_MS;
    uint64_t conn = o->connect_timeout_ms ? o->connect_timeout_ms : DEF_CONNECT_MS;
    uint64_t first =
        o->first_byte_timeout_ms && o->first_byte_timeout_ms < total ? o->first_byte_timeout_ms : total;

    h1_host *h = host_get(c, u.host, u.host_len, u.port);
    if (!h) return NULL;
    th_h1c_req *r = req_get(c);
    if (!r) return NULL;
    bool send_body = has_body || strcmp(method, "POST") == 0;
    if (build_request(r, o, method, &u, send_body) != 0) {
        req_release(r);
        return NULL;
    }
    r->h = h;
    r->cb = *cb;
    r->is_head = is_head;
    r->max_body = o->max_body;
    uint64_t now = uv_now(c->loop);
    r->t_start = now;
    r->t_conn = now + conn;
    r->t_first = now + first;
    r->t_total = now + total;
    r->state = R_ACTIVE;
    th_q_push(&c->live, &r->live);
    c->inflight++;
    req_arm(r);
    req_dispatch(r, false);
    return r;
}

void th_h1c_cancel(th_h1c_req *r)
{
    if (!r || r->state != R_ACTIVE) return;
    th_h1c *c = r->c;
    r->state = R_DONE;
    r->cancelled = true;
    c->inflight--;
    uv_timer_stop(&r->timer);
    th_q_unlink(&r->wait);
    th_q_unlink(&r->pend);
    if (r->in_cb) return; /* inside its own callback: the parse loop finishes the job */
    h1_conn *k = r->k;
    if (k) {
        if (k->state == K_CONNECTING)
            conn_unbind(k); /* it connects for the next transfer, or the pool */
        else
            conn_close(k); /* mid-exchange: the connection cannot carry another request */
    }
    req_release(r);
}

void th_h1c_resume(th_h1c_req *r)
{
    if (!r || r->state != R_ACTIVE || !r->paused) return;
    r->want_resume = true;
    pend(r);
}

size_t th_h1c_inflight(const th_h1c *c)
{
    return c ? c->inflight : 0;
}

static void teardown(th_h1c *c)
{
    c->torn_down = true;
    uv_idle_stop(&c->idle);
    while (!th_q_empty(&c->live)) {
        th_h1c_req *r = TH_Q_OF(c->live.next, th_h1c_req, live);
        th_q_unlink(&r->live);
        th_q_unlink(&r->wait);
        th_q_unlink(&r->pend);
        r->k = NULL;
        req_destroy(r);
    }
    while (!th_q_empty(&c->pool)) {
        th_h1c_req *r = TH_Q_OF(c->pool.next, th_h1c_req, live);
        th_q_unlink(&r->live);
        req_destroy(r);
    }
    c->npool = 0;
    while (!th_q_empty(&c->conns)) {
        h1_conn *k = TH_Q_OF(c->conns.next, h1_conn, all);
        k->r = NULL;
        conn_close(k);
    }
    while (!th_q_empty(&c->hosts)) {
        h1_host *h = TH_Q_OF(c->hosts.next, h1_host, link);
        th_q_unlink(&h->link);
        if (h->gai) {
            h->gai->h = NULL;
            uv_cancel((uv_req_t *)&h->gai->req);
        }
        free(h->name);
        free(h);
    }
    uv_timer_stop(&c->starve);
    uv_close((uv_handle_t *)&c->starve, on_idle_closed);
    uv_close((uv_handle_t *)&c->idle, on_idle_closed);
}

void th_h1c_close(th_h1c *c, void (*done)(void *ud), void *ud)
{
    if (!c || c->closing) return;
    c->closing = true;
    c->done = done;
    c->done_ud = ud;
    for (th_qlink *l = c->live.next; l != &c->live; l = l->next) {
        th_h1c_req *r = TH_Q_OF(l, th_h1c_req, live);
        if (r->state != R_ACTIVE) continue;
        r->state = R_DONE;
        r->cancelled = true;
        c->inflight--;
        uv_timer_stop(&r->timer);
    }
    if (c->depth > 0) { /* inside a callback: the idle handle tears down once it returned */
        uv_idle_start(&c->idle, on_idle);
        return;
    }
    teardown(c);
}
