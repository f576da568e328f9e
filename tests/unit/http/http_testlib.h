/* http_testlib: a real server on 127.0.0.1:0 driven by a uv loop on the test thread, and a blocking
 * socket client on a second thread. Shared by tests/unit/http/test_*.c (static functions only). */
#ifndef TH_HTTP_TESTLIB_H
#define TH_HTTP_TESTLIB_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "http/http.h"

/* ---- client ---- */

typedef struct clbuf {
    int fd;
    char *data;
    size_t len, cap;
} clbuf;

typedef struct resp {
    int status;
    char head[16384];
    char *body;
    size_t blen;
    bool chunked;
} resp;

static inline void ms_sleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static inline uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline int cl_connect(int port, int rcvbuf, clbuf *b)
{
    memset(b, 0, sizeof *b);
    b->fd = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    b->fd = fd;
    return 0;
}

static inline void cl_close(clbuf *b)
{
    if (b->fd >= 0) close(b->fd);
    b->fd = -1;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static inline int cl_send(clbuf *b, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(b->fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static inline int cl_sends(clbuf *b, const char *s)
{
    return cl_send(b, s, strlen(s));
}

/* Reads more bytes; returns the count, 0 at EOF, -1 on error or timeout. */
static inline int cl_fill(clbuf *b)
{
    if (b->cap - b->len < 65536) {
        size_t cap = b->cap ? b->cap * 2 : 131072;
        char *d = realloc(b->data, cap);
        if (d == NULL) return -1;
        b->data = d;
        b->cap = cap;
    }
    ssize_t n = recv(b->fd, b->data + b->len, b->cap - b->len - 1, 0);
    if (n < 0) return -1;
    b->len += (size_t)n;
    b->data[b->len] = 0;
    return (int)n;
}

static inline void cl_consume(clbuf *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
    b->data[b->len] = 0;
}

static inline bool resp_header(const resp *r, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = r->head;
    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t l = e ? (size_t)(e - v) : strlen(v);
            if (l >= outlen) l = outlen - 1;
            memcpy(out, v, l);
            out[l] = 0;
            return true;
        }
    }
    return false;
}

static inline void resp_free(resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* Reads one response. slow_ms > 0: sleeps that long between reads (a slow reader). 0 or -1. */
static inline int cl_response_slow(clbuf *b, resp *r, int slow_ms)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (b->data == NULL || (end = strstr(b->data, "\r\n\r\n")) == NULL) {
        if (cl_fill(b) <= 0) return -1;
    }
    size_t hl = (size_t)(end - b->data) + 4;
    if (hl >= sizeof r->head) return -1;
    memcpy(r->head, b->data, hl);
    r->head[hl] = 0;
    cl_consume(b, hl);
    if (strncmp(r->head, "HTTP/1.", 7) != 0) return -1;
    r->status = (int)strtol(r->head + 9, NULL, 10);
    char v[64];
    if (r->status < 200 || r->status == 204 || r->status == 304) return 0;
    if (resp_header(r, "Content-Length", v, sizeof v)) {
        size_t n = (size_t)strtoull(v, NULL, 10);
        while (b->len < n) {
            if (slow_ms) ms_sleep(slow_ms);
            if (cl_fill(b) <= 0) return -1;
        }
        r->body = malloc(n + 1);
        memcpy(r->body, b->data, n);
        r->body[n] = 0;
        r->blen = n;
        cl_consume(b, n);
        return 0;
    }
    if (resp_header(r, "Transfer-Encoding", v, sizeof v) && strcasecmp(v, "chunked") == 0) {
        r->chunked = true;
        size_t cap = 65536;
        r->body = malloc(cap);
        for (;;) {
            char *le;
            while (b->data == NULL || (le = strstr(b->data, "\r\n")) == NULL) {
                if (slow_ms) ms_sleep(slow_ms);
                if (cl_fill(b) <= 0) return -1;
            }
            size_t n = (size_t)strtoull(b->data, NULL, 16);
            size_t need = (size_t)(le - b->data) + 2 + n + 2;
            while (b->len < need) {
                if (slow_ms) ms_sleep(slow_ms);
                if (cl_fill(b) <= 0) return -1;
            }
            if (memcmp(b->data + need - 2, "\r\n", 2) != 0) return -1;
            if (r->blen + n + 1 > cap) {
                while (r->blen + n + 1 > cap)
                    cap *= 2;
                r->body = realloc(r->body, cap);
            }
            memcpy(r->body + r->blen, le + 2, n);
            r->blen += n;
            r->body[r->blen] = 0;
            cl_consume(b, need);
            if (n == 0) return 0;
        }
    }
    /* close-delimited */
    for (;;) {
        int n = cl_fill(b);
        if (n < 0) return -1;
        if (n == 0) break;
    }
    r->body = malloc(b->len + 1);
    memcpy(r->body, b->data ? b->data : "", b->len);
    r->body[b->len] = 0;
    r->blen = b->len;
    cl_consume(b, b->len);
    return 0;
}

/* Reads only a response head (HEAD requests). */
static inline int cl_head(clbuf *b, resp *r)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (b->data == NULL || (end = strstr(b->data, "\r\n\r\n")) == NULL) {
        if (cl_fill(b) <= 0) return -1;
    }
    size_t hl = (size_t)(end - b->data) + 4;
    if (hl >= sizeof r->head) return -1;
    memcpy(r->head, b->data, hl);
    r->head[hl] = 0;
    cl_consume(b, hl);
    r->status = (int)strtol(r->head + 9, NULL, 10);
    return 0;
}

static inline int cl_response(clbuf *b, resp *r)
{
    return cl_response_slow(b, r, 0);
}

/* true when the server closed the connection within ms without sending more bytes. */
static inline bool cl_eof(clbuf *b, int ms)
{
    struct pollfd pfd = {b->fd, POLLIN, 0};
    uint64_t end = now_ms() + (uint64_t)ms;
    for (;;) {
        uint64_t now = now_ms();
        if (now >= end) return false;
        int rc = poll(&pfd, 1, (int)(end - now));
        if (rc <= 0) return false;
        char tmp[4096];
        ssize_t n = recv(b->fd, tmp, sizeof tmp, 0);
        if (n == 0) return true;
        if (n < 0) return errno == ECONNRESET;
        return false;
    }
}

/* One request on a fresh connection; the response in r. */
static inline int cl_roundtrip(int port, const char *req, resp *r)
{
    clbuf b;
    if (cl_connect(port, 0, &b) != 0) return -1;
    int rc = cl_sends(&b, req) == 0 ? cl_response(&b, r) : -1;
    cl_close(&b);
    return rc;
}

/* ---- server harness ---- */

typedef struct harness harness;
/* The first member of every test state passed as the handler's ud. */
typedef struct th_hstate {
    harness *h;
    uint64_t grace_ms; /* 0: 2000 */
    uint64_t done_ms;  /* shutdown call to done */
    bool shutdown_started;
} th_hstate;
typedef void (*client_fn)(harness *h, int *th__failed);

struct harness {
    uv_loop_t loop;
    th_http_server *s;
    uv_async_t async;
    pthread_t th;
    client_fn client;
    void *ud;
    int *failed;
    int port;
    uint64_t grace_ms;
    bool done_called;
    bool shutdown_started;
    uint64_t shutdown_at_ms;
    uint64_t done_at_ms;
};

static inline void *h_client_main(void *arg)
{
    harness *h = arg;
    h->client(h, h->failed);
    uv_async_send(&h->async);
    return NULL;
}

static inline void h_on_done(void *ud)
{
    harness *h = ud;
    h->done_called = true;
    h->done_at_ms = now_ms();
    uv_close((uv_handle_t *)&h->async, NULL);
}

static inline void h_on_async(uv_async_t *a)
{
    harness *h = a->data;
    if (h->shutdown_started) return;
    h->shutdown_started = true;
    h->shutdown_at_ms = now_ms();
    if (h->ud != NULL) ((th_hstate *)h->ud)->shutdown_started = true;
    th_http_server_shutdown(h->s, h->grace_ms, h_on_done, h);
}

/* Runs a server with handler until client returns, then shuts it down and frees it. Returns the
 * uv_loop_close result (0 = no handle left). */
static inline int h_run(const th_http_limits *lim, th_http_handler handler, void *ud, client_fn client,
                        int *th__failed, th_http_body_limit_fn blf)
{
    harness h;
    memset(&h, 0, sizeof h);
    h.client = client;
    h.ud = ud;
    h.failed = th__failed;
    th_hstate *hs = ud;
    h.grace_ms = hs != NULL && hs->grace_ms ? hs->grace_ms : 2000;
    uv_loop_init(&h.loop);
    h.s = th_http_server_new(&h.loop, lim, handler, ud, NULL);
    if (h.s == NULL) return -1;
    if (blf) th_http_server_set_body_limit_fn(h.s, blf);
    char err[256];
    if (th_http_server_listen(h.s, "127.0.0.1:0", err, sizeof err) != 0) {
        fprintf(stderr, "listen: %s\n", err);
        return -1;
    }
    h.port = th_http_server_port(h.s);
    uv_async_init(&h.loop, &h.async, h_on_async);
    h.async.data = &h;
    if (hs != NULL) hs->h = &h; /* lets handlers and clients reach the harness */
    pthread_create(&h.th, NULL, h_client_main, &h);
    uv_run(&h.loop, UV_RUN_DEFAULT);
    pthread_join(h.th, NULL);
    if (!h.done_called) {
        fprintf(stderr, "shutdown done not called\n");
        (*th__failed)++;
    }
    if (hs != NULL) {
        hs->done_ms = h.done_at_ms - h.shutdown_at_ms;
        hs->h = NULL;
    }
    th_http_server_free(h.s);
    int rc = uv_loop_close(&h.loop);
    if (rc != 0) {
        uv_run(&h.loop, UV_RUN_DEFAULT);
        uv_loop_close(&h.loop);
    }
    return rc;
}

#endif
