/* client_curl: th_client's libcurl engine (https, proxies), multi_socket API on a uv loop.
 *
 * Layout
 *   - One CURLM per th_curlc. CURLMOPT_SOCKETFUNCTION keeps one uv_poll_t per socket (its context is
 *     attached with curl_multi_assign); CURLMOPT_TIMERFUNCTION drives one uv_timer_t.
 *     curl_multi_socket_action is only called from our own uv callbacks, never from a curl callback.
 *   - c->in_curl counts the curl calls on the stack. While it is non-zero we are (possibly) inside a
 *     curl callback, so nothing may call a multi API: th_curlc_start, th_curlc_cancel and
 *     th_curlc_close then only mark the transfer and queue it on c->pending. drain() runs after every
 *     curl call made from the loop (and from a uv_idle_t when work was queued from elsewhere); it reads
 *     the finished transfers with curl_multi_info_read and then works through c->pending.
 *   - th_curlc_resume always defers to the loop (uv_idle_t) so it never calls back into the caller.
 *   - Our own stops from inside a curl callback (on_head/on_body returned -1, max_body, bad headers) set
 *     r->forced and make the callback fail; curl then ends the transfer with CURLE_WRITE_ERROR and the
 *     transfer is removed from drain(), after socket_action returned.
 *   - Back-pressure: on_body returning 1 makes the write callback return CURL_WRITEFUNC_PAUSE. curl keeps
 *     that same data and delivers it again after curl_easy_pause(CONT), so r->skip counts the bytes the
 *     consumer already has and the write callback drops them on re-delivery.
 *   - Transfers (easy handle, first-byte timer, header buffer) are pooled for reuse: curl_easy_reset is
 *     cheaper than a new easy handle, and the timer need not be closed per transfer.
 *   - Timeouts: connect and total are curl's (CONNECTTIMEOUT_MS, TIMEOUT_MS). The first-byte timer is ours,
 *     armed at start (so it includes connecting) and stopped by the first header byte; if it fires before
 *     the connection is up (prereq callback not run yet) the result is TIMEOUT_CONNECT. curl's total
 *     limit with no response byte yet is reported as TIMEOUT_FIRST (first-byte limit = total).
 *   - A peer that closes right after accept gives CURLE_RECV_ERROR ("Connection reset by peer": the
 *     request hits a closed socket) or CURLE_GOT_NOTHING: both map to TH_CLIENT_RESET.
 *
 * Process-wide state: curl_global_init is not thread-safe and must run once per process. It is called
 * through pthread_once from th_curlc_new; the library never calls curl_global_cleanup (the process
 * may own other curl users). The pthread_once_t and the saved init result are the only statics. */
#include "http/client_eng.h"

#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/str.h"

#define HDR_MAX_COUNT 100
#define HDR_MAX_BYTES 16384
#define REQ_POOL_MAX 128

#define DEF_MAX_HOST 64
#define DEF_MAX_TOTAL 1024
#define DEF_MAX_CONNECTS 256
#define DEF_CONNECT_MS 10000
#define DEF_TOTAL_MS 120000

typedef enum { R_POOLED = 0, R_ACTIVE, R_DONE } req_state;

struct th_curlc_req {
    th_client_req base; /* engine tag: first member */
    th_curlc *c;
    CURL *easy;
    uv_timer_t fb_timer; /* first-byte timer; initialised once, lives as long as the struct */
    th_qlink live;       /* c->live while not pooled */
    th_qlink pend;       /* c->pending while deferred work is queued */
    th_qlink pool;       /* c->pool while pooled */
    th_client_cb cb;
    struct curl_slist *hdrs;
    req_state state;
    bool added;              /* in the multi handle */
    bool want_add;           /* start() ran inside a curl callback */
    bool want_resume;        /* th_curlc_resume() asked for it */
    bool want_stop;          /* the first-byte timer fired: finish with r->forced */
    bool cancelled;          /* no callback may run any more */
    bool paused;             /* the write callback returned CURL_WRITEFUNC_PAUSE */
    bool connected;          /* the prereq callback ran: connection up (or reused) */
    bool got_byte;           /* a response byte arrived (first header line) */
    bool head_done;          /* on_head was called */
    th_client_result forced; /* TH_CLIENT_OK, or why we ended it ourselves */
    const char *forced_detail;
    int status;
    uint64_t max_body;
    uint64_t body_seen;
    size_t skip;    /* bytes curl will re-deliver after a pause that the consumer already has */
    size_t hdr_raw; /* raw header bytes seen (all responses, 1xx included) */
    size_t hdr_n;   /* stored headers of the current response */
    th_buf hbuf;    /* "name\0value\0" pairs of the current response */
    th_buf bbuf;    /* the copied pieces of a body given in pieces */
    th_cbody body;  /* a body given in pieces, read by on_read */
    uint64_t body_off;
    char errbuf[CURL_ERROR_SIZE];
};

typedef struct poll_ctx {
    uv_poll_t poll;
    th_curlc *c;
    curl_socket_t fd;
    int events;    /* UV_READABLE | UV_WRITABLE as last asked by curl */
    th_qlink link; /* c->polls */
} poll_ctx;

struct th_curlc {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer; /* curl's timer */
    uv_idle_t idle;   /* runs drain() for work queued outside curl calls */
    th_qlink live;
    th_qlink pending;
    th_qlink pool;
    th_qlink polls;
    size_t npool;
    size_t inflight;
    size_t nhandles; /* uv handles initialised and not yet through their close callback */
    int in_curl;
    bool draining;
    bool closing;   /* th_curlc_close was called */
    bool torn_down; /* teardown() ran */
    bool in_multi_cleanup;
    void (*done)(void *ud);
    void *done_ud;
    th_client_header harr[HDR_MAX_COUNT]; /* scratch for on_head (never nested) */
};

/* ---- process-wide curl init ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- small helpers ---- */

size_t th_curlc_inflight(const th_curlc *c)
{
    return c ? c->inflight : 0;
}

static void drain(th_curlc *c);
static void teardown(th_curlc *c);

static void handle_closed(th_curlc *c)
{
    if (--c->nhandles > 0 || !c->torn_down) return;
    void (*done)(void *) = c->done;
    void *ud = c->done_ud;
    free(c);
    if (done) done(ud);
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_poll_closed(uv_handle_t *h)
{
    poll_ctx *ps = h->data;
    th_curlc *c = ps->c;
    free(ps);
    handle_closed(c);
}

static void on_req_timer_closed(uv_handle_t *h)
{
    th_curlc_req *r = h->data;
    th_curlc *c = r->c;
    free(r);
    handle_closed(c);
}

/* ---- deferred work ---- */

static void on_idle(uv_idle_t *h)
{
    drain(h->data);
}

/* Queues r for drain() and makes sure drain() runs soon. */
static void pend(th_curlc_req *r)
{
    th_curlc *c = r->c;
    if (!th_q_linked(&r->pend)) th_q_push(&c->pending, &r->pend);
    if (!c->torn_down && !c->draining) uv_idle_start(&c->idle, on_idle);
}

/* ---- transfer objects ---- */

static void req_destroy(th_curlc_req *r)
{
    if (r->easy) curl_easy_cleanup(r->easy);
    r->easy = NULL;
    th_cbody_release(&r->body);
    th_buf_free(&r->hbuf);
    th_buf_free(&r->bbuf);
    uv_close((uv_handle_t *)&r->fb_timer, on_req_timer_closed);
}

/* The transfer is out of the multi handle and no callback will run: pool it or free it.
 * Never called while a curl call is on the stack. */
static void req_release(th_curlc_req *r)
{
    th_curlc *c = r->c;
    th_q_unlink(&r->live);
    th_q_unlink(&r->pend);
    uv_timer_stop(&r->fb_timer);
    curl_slist_free_all(r->hdrs);
    r->hdrs = NULL;
    r->state = R_POOLED;
    if (c->closing || c->npool >= REQ_POOL_MAX) {
        req_destroy(r);
        return;
    }
    curl_easy_reset(r->easy);
    th_cbody_release(&r->body); /* out of the multi handle: curl reads it no more */
    th_buf_reset(&r->hbuf);
    if (r->bbuf.cap > 65536) th_buf_free(&r->bbuf);
    th_buf_reset(&r->bbuf);
    th_q_push(&c->pool, &r->pool);
    c->npool++;
}

static void req_remove_release(th_curlc_req *r)
{
    if (r->added) curl_multi_remove_handle(r->c->multi, r->easy);
    r->added = false;
    req_release(r);
}

static th_curlc_req *req_get(th_curlc *c)
{
    th_curlc_req *r;
    if (!th_q_empty(&c->pool)) {
        th_qlink *l = c->pool.next;
        th_q_unlink(l);
        c->npool--;
        r = TH_Q_OF(l, th_curlc_req, pool);
    } else {
        r = calloc(1, sizeof *r);
        if (!r) return NULL;
        r->base.engine = TH_CLIENT_ENGINE_CURL;
        r->c = c;
        r->easy = curl_easy_init();
        if (!r->easy || uv_timer_init(c->loop, &r->fb_timer) != 0) {
            if (r->easy) curl_easy_cleanup(r->easy);
            free(r);
            return NULL;
        }
        r->fb_timer.data = r;
        c->nhandles++;
        th_buf_init(&r->hbuf, HDR_MAX_BYTES);
        th_buf_init(&r->bbuf, 0); /* copies of our own request body */
    }
    r->body_off = 0;
    r->hdrs = NULL;
    r->state = R_POOLED;
    r->added = r->want_add = r->want_resume = r->want_stop = false;
    r->cancelled = r->paused = r->connected = r->got_byte = r->head_done = false;
    r->forced = TH_CLIENT_OK;
    r->forced_detail = NULL;
    r->status = 0;
    r->max_body = 0;
    r->body_seen = 0;
    r->skip = 0;
    r->hdr_raw = 0;
    r->hdr_n = 0;
    r->errbuf[0] = 0;
    return r;
}

/* Ends an active transfer: out of the multi handle, on_done (unless cancelled), back to the pool.
 * Only from drain(), never with a curl call on the stack. */
static void finish(th_curlc_req *r, th_client_result res, const char *detail)
{
    th_curlc *c = r->c;
    r->state = R_DONE;
    c->inflight--;
    uv_timer_stop(&r->fb_timer);
    th_q_unlink(&r->pend);
    if (r->added) curl_multi_remove_handle(c->multi, r->easy);
    r->added = false;
    if (!r->cancelled && r->cb.on_done) r->cb.on_done(r->cb.ud, res, r->status, detail ? detail : "");
    req_release(r);
}

static th_client_result map_result(const th_curlc_req *r, CURLcode code)
{
    switch (code) {
    case CURLE_OK:
        return TH_CLIENT_OK;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return TH_CLIENT_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        if (!r->connected) return TH_CLIENT_TIMEOUT_CONNECT;
        /* Our first-byte timer fires first when it is shorter than the total, so no byte here
         * means the first-byte limit was the same as the total one. */
        return r->got_byte ? TH_CLIENT_TIMEOUT_TOTAL : TH_CLIENT_TIMEOUT_FIRST;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2_STREAM:
        return TH_CLIENT_RESET;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_HTTP2:
    case CURLE_HTTP3:
    case CURLE_TOO_MANY_REDIRECTS:
        return TH_CLIENT_PROTOCOL;
    case CURLE_FILESIZE_EXCEEDED:
        return TH_CLIENT_TOO_LARGE;
    case CURLE_WRITE_ERROR:
    case CURLE_ABORTED_BY_CALLBACK:
        return TH_CLIENT_ABORTED;
    default:
        return TH_CLIENT_INTERNAL;
    }
}

/* curl reported the transfer done (info_read). */
static void complete(th_curlc_req *r, CURLcode code)
{
    if (r->state != R_ACTIVE) { /* cancelled, removal still queued */
        req_remove_release(r);
        return;
    }
    if (r->forced != TH_CLIENT_OK) {
        finish(r, r->forced, r->forced_detail);
        return;
    }
    if (code == CURLE_FILESIZE_EXCEEDED) {
        finish(r, TH_CLIENT_TOO_LARGE, "response body larger than max_body");
        return;
    }
    finish(r, map_result(r, code), r->errbuf[0] ? r->errbuf : curl_easy_strerror(code));
}

static void process_pending(th_curlc *c, th_curlc_req *r)
{
    if (r->state != R_ACTIVE) {
        req_remove_release(r);
        return;
    }
    if (r->want_stop) {
        finish(r, r->forced, r->forced_detail);
        return;
    }
    if (r->want_add) {
        r->want_add = false;
        if (curl_multi_add_handle(c->multi, r->easy) != CURLM_OK) {
            finish(r, TH_CLIENT_INTERNAL, "curl_multi_add_handle failed");
            return;
        }
        r->added = true;
    }
    if (r->want_resume) {
        r->want_resume = false;
        if (!r->paused || !r->added) return;
        r->paused = false;
        int running = 0;
        c->in_curl++;
        /* curl delivers what it held back from inside curl_easy_pause (on_body may run). */
        CURLcode rc = curl_easy_pause(r->easy, CURLPAUSE_CONT);
        curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        c->in_curl--;
        if (rc != CURLE_OK && r->state == R_ACTIVE) {
            /* The re-delivery failed inside curl_easy_pause: curl may not end the transfer itself. */
            if (r->forced != TH_CLIENT_OK)
                finish(r, r->forced, r->forced_detail);
            else
                finish(r, TH_CLIENT_INTERNAL, curl_easy_strerror(rc));
        }
    }
}

/* Runs after every curl call made from the loop: completed transfers, then queued work. */
static void drain(th_curlc *c)
{
    if (c->torn_down || c->in_curl || c->draining) return;
    c->draining = true;
    for (;;) {
        bool progress = false;
        CURLMsg *m;
        int left = 0;
        while ((m = curl_multi_info_read(c->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE) continue;
            CURLcode code = m->data.result;
            char *priv = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
            if (priv) complete((th_curlc_req *)(void *)priv, code);
            progress = true;
        }
        if (!th_q_empty(&c->pending)) {
            th_qlink *l = c->pending.next;
            th_q_unlink(l);
            process_pending(c, TH_Q_OF(l, th_curlc_req, pend));
            progress = true;
        }
        if (!progress) break;
    }
    c->draining = false;
    if (th_q_empty(&c->pending)) uv_idle_stop(&c->idle);
    if (c->closing) teardown(c);
}

/* ---- curl callbacks (in_curl > 0: no multi API calls, no freeing) ---- */

static size_t fail_cb(th_curlc_req *r, th_client_result res, const char *detail)
{
    if (r->forced == TH_CLIENT_OK) {
        r->forced = res;
        r->forced_detail = detail;
    }
    return CURL_WRITEFUNC_ERROR;
}

static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    (void)primary_ip, (void)local_ip, (void)primary_port, (void)local_port;
    th_curlc_req *r = ud;
    r->connected = true;
    return CURL_PREREQFUNC_OK;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

static size_t head_end(th_curlc_req *r, size_t n)
{
    th_curlc *c = r->c;
    if (r->status == 0) return fail_cb(r, TH_CLIENT_PROTOCOL, "response without a status line");
    if (r->status < 200) { /* 1xx interim response: forget it, wait for the final one */
        r->status = 0;
        r->hdr_n = 0;
        th_buf_reset(&r->hbuf);
        return n;
    }
    r->head_done = true;
    const char *p = (const char *)r->hbuf.data;
    for (size_t i = 0; i < r->hdr_n; i++) {
        c->harr[i].name = p;
        p += strlen(p) + 1;
        c->harr[i].value = p;
        p += strlen(p) + 1;
    }
    if (r->cb.on_head) {
        int rc = r->cb.on_head(r->cb.ud, r->status, c->harr, r->hdr_n);
        if (r->state != R_ACTIVE) return CURL_WRITEFUNC_ERROR;
        if (rc < 0) return fail_cb(r, TH_CLIENT_ABORTED, "aborted by on_head");
    }
    return n;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    th_curlc_req *r = ud;
    size_t n = size * nitems;
    if (r->state != R_ACTIVE) return CURL_WRITEFUNC_ERROR;
    if (r->head_done) return n; /* trailers */
    if (!r->got_byte) {
        r->got_byte = true;
        uv_timer_stop(&r->fb_timer);
    }
    r->hdr_raw += n;
    if (r->hdr_raw > HDR_MAX_BYTES) return fail_cb(r, TH_CLIENT_PROTOCOL, "response headers over 16 KiB");
    size_t len = n;
    if (len && buf[len - 1] == '\n') len--;
    if (len && buf[len - 1] == '\r') len--;
    if (len == 0) return head_end(r, n);
    if (memchr(buf, '\0', len)) return fail_cb(r, TH_CLIENT_PROTOCOL, "NUL byte in a response header");

    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) { /* status line of a (new) response */
        const char *sp = memchr(buf, ' ', len);
        int64_t st = 0;
        size_t rest = sp ? len - (size_t)(sp + 1 - buf) : 0;
        if (!sp || rest < 3 || th_strn_to_i64(sp + 1, 3, 100, 999, &st) != 0 || (rest > 3 && sp[4] != ' '))
            return fail_cb(r, TH_CLIENT_PROTOCOL, "bad status line");
        r->status = (int)st;
        r->hdr_n = 0;
        th_buf_reset(&r->hbuf);
        return n;
    }
    if (r->status == 0) return fail_cb(r, TH_CLIENT_PROTOCOL, "header before the status line");

    th_buf *hb = &r->hbuf;
    if (is_ows(buf[0])) { /* obs-fold: continue the previous value */
        if (r->hdr_n == 0) return fail_cb(r, TH_CLIENT_PROTOCOL, "continuation line without a header");
        size_t b = 0, e = len;
        while (b < e && is_ows(buf[b]))
            b++;
        while (e > b && is_ows(buf[e - 1]))
            e--;
        if (b == e) return n;
        if (th_buf_reserve(hb, e - b + 1) != TH_BUF_OK)
            return fail_cb(r, TH_CLIENT_PROTOCOL, "response headers over 16 KiB");
        hb->data[hb->len - 1] = ' '; /* the NUL that ended the previous value */
        memcpy(hb->data + hb->len, buf + b, e - b);
        hb->len += e - b;
        hb->data[hb->len++] = 0;
        return n;
    }

    const char *colon = memchr(buf, ':', len);
    if (!colon) return fail_cb(r, TH_CLIENT_PROTOCOL, "malformed response header line");
    size_t nlen = (size_t)(colon - buf);
    while (nlen > 0 && is_ows(buf[nlen - 1]))
        nlen--;
    if (nlen == 0) return fail_cb(r, TH_CLIENT_PROTOCOL, "empty response header name");
    if (r->hdr_n >= HDR_MAX_COUNT) return fail_cb(r, TH_CLIENT_PROTOCOL, "more than 100 response headers");
    size_t vb = (size_t)(colon - buf) + 1, ve = len;
    while (vb < ve && is_ows(buf[vb]))
        vb++;
    while (ve > vb && is_ows(buf[ve - 1]))
        ve--;
    int rc = th_buf_reserve(hb, nlen + 1 + (ve - vb) + 1);
    if (rc == TH_BUF_ENOMEM) return fail_cb(r, TH_CLIENT_INTERNAL, "out of memory");
    if (rc != TH_BUF_OK) return fail_cb(r, TH_CLIENT_PROTOCOL, "response headers over 16 KiB");
    uint8_t *d = hb->data + hb->len;
    for (size_t i = 0; i < nlen; i++) {
        unsigned char ch = (unsigned char)buf[i];
        d[i] = (ch >= 'A' && ch <= 'Z') ? (uint8_t)(ch + ('a' - 'A')) : ch;
    }
    d[nlen] = 0;
    memcpy(d + nlen + 1, buf + vb, ve - vb);
    d[nlen + 1 + (ve - vb)] = 0;
    hb->len += nlen + 1 + (ve - vb) + 1;
    r->hdr_n++;
    return n;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    th_curlc_req *r = ud;
    size_t n = size * nmemb;
    if (r->state != R_ACTIVE) return CURL_WRITEFUNC_ERROR;
    if (n == 0) return 0;
    if (!r->head_done) return fail_cb(r, TH_CLIENT_PROTOCOL, "body before the response headers");
    size_t off = 0;
    if (r->skip) { /* curl re-delivers what it held back at the pause: the consumer has it already */
        off = r->skip < n ? r->skip : n;
        r->skip -= off;
        if (off == n) return n;
    }
    size_t len = n - off;
    if (r->max_body && (r->body_seen + len < r->body_seen || r->body_seen + len > r->max_body))
        return fail_cb(r, TH_CLIENT_TOO_LARGE, "response body larger than max_body");
    r->body_seen += len;
    int rc = r->cb.on_body ? r->cb.on_body(r->cb.ud, (const uint8_t *)ptr + off, len) : 0;
    if (r->state != R_ACTIVE) return CURL_WRITEFUNC_ERROR;
    if (rc < 0) return fail_cb(r, TH_CLIENT_ABORTED, "aborted by on_body");
    if (rc == 1) {
        r->paused = true;
        r->skip = n;
        return CURL_WRITEFUNC_PAUSE;
    }
    return n;
}

/* ---- curl <-> uv glue ---- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    poll_ctx *ps = h->data;
    th_curlc *c = ps->c;
    int flags = 0;
    if (status < 0) {
        /* POLLERR (libuv says UV_EBADF and stops the handle): let curl touch the socket so that it
         * reports the real error (ECONNRESET...) rather than "select/poll returned error". */
        flags = CURL_CSELECT_IN | CURL_CSELECT_OUT;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    int running = 0;
    c->in_curl++;
    curl_multi_socket_action(c->multi, ps->fd, flags, &running);
    c->in_curl--;
    /* libuv stopped the handle on error; curl still expects it watched unless it let go of it. */
    if (status < 0 && !uv_is_closing((uv_handle_t *)h) && ps->events) uv_poll_start(h, ps->events, on_poll);
    drain(c);
}

static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    th_curlc *c = userp;
    poll_ctx *ps = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (ps) {
            th_q_unlink(&ps->link);
            uv_poll_stop(&ps->poll);
            uv_close((uv_handle_t *)&ps->poll, on_poll_closed);
            if (!c->in_multi_cleanup) curl_multi_assign(c->multi, s, NULL);
        }
        return 0;
    }
    if (!ps) {
        ps = calloc(1, sizeof *ps);
        if (!ps) return -1;
        if (uv_poll_init_socket(c->loop, &ps->poll, s) != 0) {
            free(ps);
            return -1;
        }
        ps->poll.data = ps;
        ps->c = c;
        ps->fd = s;
        c->nhandles++;
        th_q_push(&c->polls, &ps->link);
        curl_multi_assign(c->multi, s, ps);
    }
    int events = 0;
    if (what & CURL_POLL_IN) events |= UV_READABLE;
    if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
    /* Same socket (curl never REMOVEd it), same events: uv_poll_start would cost two epoll_ctl calls. */
    if (socketp && events == ps->events && uv_is_active((uv_handle_t *)&ps->poll)) return 0;
    ps->events = events;
    return uv_poll_start(&ps->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_curl_timer(uv_timer_t *t)
{
    th_curlc *c = t->data;
    int running = 0;
    c->in_curl++;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    c->in_curl--;
    drain(c);
}

/* CURLMOPT_TIMERFUNCTION: only (re)arms the uv timer; socket_action runs from on_curl_timer. */
static int on_curl_timeout_set(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    th_curlc *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, on_curl_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static void on_fb_timeout(uv_timer_t *t)
{
    th_curlc_req *r = t->data;
    if (r->state != R_ACTIVE || r->got_byte) return;
    r->forced = r->connected ? TH_CLIENT_TIMEOUT_FIRST : TH_CLIENT_TIMEOUT_CONNECT;
    r->forced_detail = r->connected ? "no response byte within the first-byte timeout"
                                    : "not connected within the first-byte timeout";
    r->want_stop = true;
    pend(r);
    drain(r->c);
}

/* ---- public API ---- */

static void on_new_fail_closed(uv_handle_t *h)
{
    free(h->data);
}

th_curlc *th_curlc_new(uv_loop_t *loop, const th_client_conf *conf)
{
    if (!loop) return NULL;
    /* curl_global_init is process-wide and not thread-safe: once per process, never cleaned up here. */
    if (pthread_once(&curl_once, curl_init_once) != 0 || curl_init_rc != CURLE_OK) return NULL;
    th_curlc *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    th_q_init(&c->live);
    th_q_init(&c->pending);
    th_q_init(&c->pool);
    th_q_init(&c->polls);
    long max_host = conf && conf->max_host_connections > 0 ? conf->max_host_connections : DEF_MAX_HOST;
    long max_total = conf && conf->max_total_connections > 0 ? conf->max_total_connections : DEF_MAX_TOTAL;
    long max_conn = conf && conf->max_connects_cache > 0 ? conf->max_connects_cache : DEF_MAX_CONNECTS;

    c->multi = curl_multi_init();
    if (!c->multi) goto fail;
    CURLMcode mc = CURLM_OK;
#define MSET(opt, val)                                                                                       \
    do {                                                                                                     \
        if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, opt, val);                                      \
    } while (0)
    MSET(CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    MSET(CURLMOPT_SOCKETDATA, c);
    MSET(CURLMOPT_TIMERFUNCTION, on_curl_timeout_set);
    MSET(CURLMOPT_TIMERDATA, c);
    MSET(CURLMOPT_MAX_HOST_CONNECTIONS, max_host);
    MSET(CURLMOPT_MAX_TOTAL_CONNECTIONS, max_total);
    MSET(CURLMOPT_MAXCONNECTS, max_conn);
#undef MSET
    if (mc != CURLM_OK) goto fail;
    if (uv_timer_init(loop, &c->timer) != 0) goto fail;
    c->timer.data = c;
    if (uv_idle_init(loop, &c->idle) != 0) {
        curl_multi_cleanup(c->multi);
        uv_close((uv_handle_t *)&c->timer, on_new_fail_closed);
        return NULL;
    }
    c->idle.data = c;
    c->nhandles = 2;
    return c;
fail:
    if (c->multi) curl_multi_cleanup(c->multi);
    free(c);
    return NULL;
}

static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* The body given in pieces, as curl asks for it (CURLOPT_READFUNCTION). */
static size_t on_read(char *buf, size_t size, size_t n, void *ud)
{
    th_curlc_req *r = ud;
    size_t k = th_cbody_copy(&r->body, &r->bbuf, r->body_off, (uint8_t *)buf, size * n);
    r->body_off += k;
    return k;
}

/* curl rewinds the body when it sends the request again (a reused connection the server had closed). */
static int on_seek(void *ud, curl_off_t off, int origin)
{
    th_curlc_req *r = ud;
    if (origin != SEEK_SET || off < 0 || (uint64_t)off > r->body.total) return CURL_SEEKFUNC_FAIL;
    r->body_off = (uint64_t)off;
    return CURL_SEEKFUNC_OK;
}

/* The request's method when the options are fine (no CR/LF anywhere, a body only where one goes), else
 * NULL. */
static const char *check_opts(const th_curlc *c, const th_client_opts *o, const th_client_cb *cb)
{
    if (!c || !o || !o->url || !cb || c->closing || has_crlf(o->url)) return NULL;
    if (th_cbody_check(o) != 0) return NULL;
    bool has_body = o->body != NULL || o->segs != NULL;
    const char *method = o->method ? o->method : (has_body ? "POST" : "GET");
    if (!*method || has_crlf(method) || strchr(method, ' ')) return NULL;
    if (strcmp(method, "HEAD") == 0 && has_body) return NULL;
    if (o->body_len > (uint64_t)INT64_MAX) return NULL;
    if (o->headers)
        for (size_t i = 0; o->headers[i]; i++)
            if (has_crlf(o->headers[i])) return NULL;
    return method;
}

#define SET(opt, val)                                                                                        \
    do {                                                                                                     \
        if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val);                                              \
    } while (0)

/* What every transfer sets: the URL, callbacks, buffers and timeouts. */
static CURLcode set_common(th_curlc_req *r, const th_client_opts *o, uint64_t conn, uint64_t total)
{
    CURL *e = r->easy;
    CURLcode rc = CURLE_OK;
    SET(CURLOPT_URL, o->url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_PRIVATE, r);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TCP_NODELAY, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_BUFFERSIZE, 4096L); /* per transfer: 10,000 parked transfers x 16 KiB default is 160 MiB */
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    SET(CURLOPT_ERRORBUFFER, r->errbuf);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, r);
    SET(CURLOPT_WRITEFUNCTION, on_write);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_PREREQFUNCTION, on_prereq);
    SET(CURLOPT_PREREQDATA, r);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)conn);
    SET(CURLOPT_TIMEOUT_MS, (long)total);
    /* HTTP/1.1 to plain-text upstreams; https keeps curl's default (h2 when ALPN agrees). */
    if (strncasecmp(o->url, "http://", 7) == 0) SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    if (o->max_body && o->max_body <= (uint64_t)INT64_MAX)
        SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->max_body); /* early TOO_LARGE from Content-Length */
    return rc;
}

/* The method and the body (read from the pieces as curl sends, or copied). 0, or -1. */
static int set_method_body(th_curlc_req *r, const th_client_opts *o, const char *method, bool *send_body)
{
    CURL *e = r->easy;
    CURLcode rc = CURLE_OK;
    bool has_body = o->body != NULL || o->segs != NULL;
    bool is_head = strcmp(method, "HEAD") == 0, is_get = strcmp(method, "GET") == 0;
    bool is_post = strcmp(method, "POST") == 0;
    if (is_head)
        SET(CURLOPT_NOBODY, 1L);
    else if ((!is_get && !is_post) || (is_get && has_body))
        SET(CURLOPT_CUSTOMREQUEST, method);
    *send_body = has_body || is_post;
    if (*send_body && o->segs != NULL) { /* read from the pieces as curl sends: nothing copied */
        if (th_cbody_build(&r->body, &r->bbuf, o) != 0) return -1;
        SET(CURLOPT_UPLOAD, 0L);
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body.total);
        SET(CURLOPT_READFUNCTION, on_read);
        SET(CURLOPT_READDATA, r);
        SET(CURLOPT_SEEKFUNCTION, on_seek);
        SET(CURLOPT_SEEKDATA, r);
    } else if (*send_body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
        SET(CURLOPT_COPYPOSTFIELDS, has_body ? (const char *)o->body : "");
    }
    return rc == CURLE_OK ? 0 : -1;
}
#undef SET

/* The caller's headers, and an empty Expect: with a body (no 100-continue round trip). 0, or -1. */
static int set_headers(th_curlc_req *r, const th_client_opts *o, bool send_body)
{
    for (size_t i = 0; o->headers && o->headers[i]; i++) {
        struct curl_slist *t = curl_slist_append(r->hdrs, o->headers[i]);
        if (!t) return -1;
        r->hdrs = t;
    }
    if (send_body) {
        struct curl_slist *t = curl_slist_append(r->hdrs, "Expect:");
        if (!t) return -1;
        r->hdrs = t;
    }
    if (r->hdrs && curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->hdrs) != CURLE_OK) return -1;
    return 0;
}

/* The transfer joins the multi handle (later, from inside a curl callback). 0, or -1. */
static int go_live(th_curlc *c, th_curlc_req *r, const th_client_opts *o, const th_client_cb *cb)
{
    r->cb = *cb;
    r->max_body = o->max_body;
    r->state = R_ACTIVE;
    th_q_push(&c->live, &r->live);
    c->inflight++;
    if (c->in_curl) { /* inside a curl callback: the multi handle cannot take it now */
        r->want_add = true;
        pend(r);
        return 0;
    }
    if (curl_multi_add_handle(c->multi, r->easy) != CURLM_OK) {
        c->inflight--;
        return -1;
    }
    r->added = true;
    return 0;
}

th_curlc_req *th_curlc_start(th_curlc *c, const th_client_opts *o, const th_client_cb *cb)
{
    const char *method = check_opts(c, o, cb);
    if (method == NULL) return NULL;
    uint64_t total = o->total_timeout_ms ? o->total_timeout_ms : DEF_TOTAL_MS;
    uint64_t conn = o->connect_timeout_ms ? o->connect_timeout_ms : DEF_CONNECT_MS;
    if (total > LONG_MAX) total = LONG_MAX;
    if (conn > LONG_MAX) conn = LONG_MAX;

    th_curlc_req *r = req_get(c);
    if (!r) return NULL;
    bool send_body = false;
    if (set_common(r, o, conn, total) != CURLE_OK || set_method_body(r, o, method, &send_body) != 0 ||
        set_headers(r, o, send_body) != 0 || go_live(c, r, o, cb) != 0) {
        r->body.release = NULL; /* not taken: the caller keeps its bytes */
        req_release(r);
        return NULL;
    }
    uint64_t fb = o->first_byte_timeout_ms;
    if (fb && fb < total) uv_timer_start(&r->fb_timer, on_fb_timeout, fb, 0);
    return r;
}

void th_curlc_cancel(th_curlc_req *r)
{
    if (!r || r->state != R_ACTIVE) return;
    th_curlc *c = r->c;
    r->state = R_DONE;
    r->cancelled = true;
    c->inflight--;
    uv_timer_stop(&r->fb_timer);
    if (c->in_curl) { /* maybe inside its own callback: removal waits for drain() */
        pend(r);
        return;
    }
    req_remove_release(r);
}

void th_curlc_resume(th_curlc_req *r)
{
    if (!r || r->state != R_ACTIVE) return;
    r->want_resume = true;
    pend(r); /* always from the loop, so the caller never sees on_body inside this call */
}

static void teardown(th_curlc *c)
{
    c->torn_down = true;
    uv_idle_stop(&c->idle);
    while (!th_q_empty(&c->live)) {
        th_curlc_req *r = TH_Q_OF(c->live.next, th_curlc_req, live);
        if (r->state == R_ACTIVE) c->inflight--;
        r->state = R_DONE;
        r->cancelled = true;
        req_remove_release(r); /* closing: destroys */
    }
    while (!th_q_empty(&c->pool)) {
        th_curlc_req *r = TH_Q_OF(c->pool.next, th_curlc_req, pool);
        th_q_unlink(&r->pool);
        c->npool--;
        req_destroy(r);
    }
    c->in_multi_cleanup = true;
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    c->in_multi_cleanup = false;
    while (!th_q_empty(&c->polls)) {
        poll_ctx *ps = TH_Q_OF(c->polls.next, poll_ctx, link);
        th_q_unlink(&ps->link);
        uv_poll_stop(&ps->poll);
        uv_close((uv_handle_t *)&ps->poll, on_poll_closed);
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
}

void th_curlc_close(th_curlc *c, void (*done)(void *ud), void *ud)
{
    if (!c || c->closing) return;
    c->closing = true;
    c->done = done;
    c->done_ud = ud;
    for (th_qlink *l = c->live.next; l != &c->live; l = l->next) {
        th_curlc_req *r = TH_Q_OF(l, th_curlc_req, live);
        if (r->state != R_ACTIVE) continue;
        r->state = R_DONE;
        r->cancelled = true;
        c->inflight--;
        uv_timer_stop(&r->fb_timer);
    }
    if (c->in_curl || c->draining) { /* drain() finishes the job once the curl call returns */
        uv_idle_start(&c->idle, on_idle);
        return;
    }
    teardown(c);
}
