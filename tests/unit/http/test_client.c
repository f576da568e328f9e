/* test_client: th_client against a scripted fake upstream, with the engine for http:// URLs
 * (our HTTP/1.1 client); test_client_curl.c builds this same file for the libcurl engine.
 *
 * The fake upstream is a blocking-socket server on 127.0.0.1:0: one accept thread, one thread per
 * connection, keep-alive, behaviour chosen by the request path (or "close right after accept" for a
 * whole server). Every test ends with th_client_close + uv_loop_close == 0, so leaked uv handles fail. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <dirent.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/str.h"
#include "http/client.h"
#include "th_test.h"

#ifndef TEST_CLIENT_ENGINE
#define TEST_CLIENT_ENGINE TH_CLIENT_ENGINE_AUTO
#endif

/* ---------------------------------------------------------------- fake upstream */

enum { FM_PATH = 0, FM_CLOSE_ON_ACCEPT = 1 };
#define FAKE_MAX_CONNS 256

typedef struct fake {
    int lfd;
    int port;
    int mode;
    atomic_int accepted;
    atomic_int requests;
    atomic_bool stop;
    pthread_t acceptor;
    pthread_mutex_t mu;
    pthread_t conns[FAKE_MAX_CONNS];
    int nconns;
    char last_req[16384]; /* head + body of the last request, NUL-terminated (body may hold NULs) */
    size_t last_len;
} fake;

typedef struct conn_arg {
    fake *f;
    int fd;
} conn_arg;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int send_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int send_str(int fd, const char *s)
{
    return send_all(fd, s, strlen(s));
}

/* Waits ms, but gives up (-1) when the peer closed or the server stops. */
static int wait_ms(fake *f, int fd, int ms)
{
    uint64_t end = th_mono_ms() + (uint64_t)ms;
    while (th_mono_ms() < end) {
        if (atomic_load(&f->stop)) return -1;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 10) > 0) {
            char ch;
            ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN)) return -1;
            sleep_ms(10);
        }
    }
    return 0;
}

static uint8_t pattern(size_t i)
{
    return (uint8_t)(i % 251);
}

static int send_pattern(int fd, size_t n)
{
    uint8_t blk[8192];
    for (size_t off = 0; off < n;) {
        size_t k = n - off < sizeof blk ? n - off : sizeof blk;
        for (size_t i = 0; i < k; i++)
            blk[i] = pattern(off + i);
        if (send_all(fd, blk, k) != 0) return -1;
        off += k;
    }
    return 0;
}

static size_t query_n(const char *path, size_t def)
{
    const char *q = strstr(path, "?n=");
    int64_t v;
    if (!q) return def;
    const char *e = q + 3;
    while (*e >= '0' && *e <= '9')
        e++;
    if (th_strn_to_i64(q + 3, (size_t)(e - q - 3), 0, 1 << 30, &v) != 0) return def;
    return (size_t)v;
}

/* Answers one request. 0: keep the connection, -1: close it. */
static int respond(fake *f, int fd, const char *method, const char *path, const char *body, size_t blen)
{
    char hdr[512];
    if (th_str_startswith(path, "/fixed")) {
        return send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Test:   hello  \r\n"
                            "Content-Type: text/plain\r\n\r\nhello world");
    }
    if (th_str_startswith(path, "/head")) {
        return send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n");
    }
    if (th_str_startswith(path, "/echo")) {
        snprintf(hdr, sizeof hdr, "HTTP/1.1 201 Created\r\nContent-Length: %zu\r\nX-Method: %s\r\n\r\n", blen,
                 method);
        if (send_str(fd, hdr) != 0) return -1;
        return send_all(fd, body, blen);
    }
    if (th_str_startswith(path, "/chunked")) {
        if (send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") != 0) return -1;
        for (int i = 0; i < 5; i++) {
            snprintf(hdr, sizeof hdr, "5\r\npart%d\r\n", i);
            if (send_str(fd, hdr) != 0) return -1;
            if (wait_ms(f, fd, 100) != 0) return -1;
        }
        return send_str(fd, "0\r\n\r\n");
    }
    if (th_str_startswith(path, "/delay")) {
        if (wait_ms(f, fd, (int)query_n(path, 2000)) != 0) return -1;
        return send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    }
    if (th_str_startswith(path, "/slow")) {
        if (send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") != 0) return -1;
        for (int i = 0; i < 100; i++) {
            if (send_str(fd, "0123456789") != 0) return -1;
            if (wait_ms(f, fd, 100) != 0) return -1;
        }
        return 0;
    }
    if (th_str_startswith(path, "/half")) {
        send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        send_pattern(fd, 500);
        wait_ms(f, fd, 50);
        return -1;
    }
    if (th_str_startswith(path, "/garbage")) {
        send_str(fd, "XYZ\r\n\r\n");
        return -1;
    }
    if (th_str_startswith(path, "/interim")) {
        return send_str(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    }
    if (th_str_startswith(path, "/manyheaders")) {
        if (send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") != 0) return -1;
        for (int i = 0; i < 150; i++) {
            snprintf(hdr, sizeof hdr, "X-H%d: v\r\n", i);
            if (send_str(fd, hdr) != 0) return -1;
        }
        return send_str(fd, "\r\nok");
    }
    if (th_str_startswith(path, "/big")) {
        size_t n = query_n(path, 262144);
        snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", n);
        if (send_str(fd, hdr) != 0) return -1;
        return send_pattern(fd, n);
    }
    if (th_str_startswith(path, "/chunkbig")) {
        size_t n = query_n(path, 200000), off = 0;
        if (send_str(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") != 0) return -1;
        uint8_t blk[4096];
        while (off < n) {
            size_t k = n - off < sizeof blk ? n - off : sizeof blk;
            for (size_t i = 0; i < k; i++)
                blk[i] = pattern(off + i);
            snprintf(hdr, sizeof hdr, "%zx\r\n", k);
            if (send_str(fd, hdr) != 0 || send_all(fd, blk, k) != 0 || send_str(fd, "\r\n") != 0) return -1;
            off += k;
        }
        return send_str(fd, "0\r\n\r\n");
    }
    if (th_str_startswith(path, "/kaclose")) { /* looks keep-alive, then the server closes it */
        send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        return -1;
    }
    if (th_str_startswith(path, "/emptyhdr")) {
        return send_str(fd, "HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Test:  b \r\nContent-Length: 2\r\n\r\nok");
    }
    if (th_str_startswith(path, "/extra")) { /* bytes after the response: the connection is spoiled */
        return send_str(fd, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK");
    }
    if (th_str_startswith(path, "/eofbody")) { /* no length: the body ends with the connection */
        if (send_str(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n") != 0) return -1;
        send_pattern(fd, query_n(path, 5000));
        return -1;
    }
    send_str(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    return 0;
}

static void *conn_main(void *arg)
{
    conn_arg *ca = arg;
    fake *f = ca->f;
    int fd = ca->fd;
    free(ca);
    char *req = malloc(1 << 20);
    size_t len = 0;
    if (!req) goto out;
    for (;;) {
        char *end;
        while (!(end = memmem(req, len, "\r\n\r\n", 4))) {
            if (len >= (1 << 20) - 1) goto out;
            struct pollfd p = {fd, POLLIN, 0};
            if (atomic_load(&f->stop)) goto out;
            if (poll(&p, 1, 20) <= 0) continue;
            ssize_t n = recv(fd, req + len, (1 << 20) - 1 - len, 0);
            if (n <= 0) goto out;
            len += (size_t)n;
        }
        size_t head_len = (size_t)(end - req) + 4;
        size_t blen = 0;
        req[head_len - 1] = 0; /* temporarily, for strcasestr */
        const char *cl = strcasestr(req, "\r\ncontent-length:");
        if (cl) {
            cl += 17;
            while (*cl == ' ')
                cl++;
            const char *e = cl;
            while (*e >= '0' && *e <= '9')
                e++;
            int64_t v = 0;
            if (th_strn_to_i64(cl, (size_t)(e - cl), 0, (1 << 20) - 1, &v) != 0) goto out;
            blen = (size_t)v;
        }
        req[head_len - 1] = '\n';
        while (len < head_len + blen) {
            if (head_len + blen > (1 << 20) - 1) goto out;
            ssize_t n = recv(fd, req + len, head_len + blen - len, 0);
            if (n <= 0) goto out;
            len += (size_t)n;
        }
        char method[16] = {0}, path[512] = {0};
        const char *sp1 = memchr(req, ' ', head_len);
        const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', head_len - (size_t)(sp1 + 1 - req)) : NULL;
        if (!sp1 || !sp2 || (size_t)(sp1 - req) >= sizeof method || (size_t)(sp2 - sp1 - 1) >= sizeof path)
            goto out;
        memcpy(method, req, (size_t)(sp1 - req));
        memcpy(path, sp1 + 1, (size_t)(sp2 - sp1 - 1));
        pthread_mutex_lock(&f->mu);
        size_t keep = head_len + blen < sizeof f->last_req - 1 ? head_len + blen : sizeof f->last_req - 1;
        memcpy(f->last_req, req, keep);
        f->last_req[keep] = 0;
        f->last_len = keep;
        pthread_mutex_unlock(&f->mu);
        atomic_fetch_add(&f->requests, 1);
        int rc = respond(f, fd, method, path, req + head_len, blen);
        memmove(req, req + head_len + blen, len - head_len - blen);
        len -= head_len + blen;
        if (rc != 0) goto out;
    }
out:
    free(req);
    close(fd);
    return NULL;
}

static void *accept_main(void *arg)
{
    fake *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {f->lfd, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) continue;
        int fd = accept(f->lfd, NULL, NULL);
        if (fd < 0) continue;
        atomic_fetch_add(&f->accepted, 1);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (f->mode == FM_CLOSE_ON_ACCEPT) {
            close(fd);
            continue;
        }
        conn_arg *ca = malloc(sizeof *ca);
        pthread_mutex_lock(&f->mu);
        bool ok = ca && f->nconns < FAKE_MAX_CONNS;
        if (ok) {
            ca->f = f;
            ca->fd = fd;
            ok = pthread_create(&f->conns[f->nconns], NULL, conn_main, ca) == 0;
            if (ok) f->nconns++;
        }
        pthread_mutex_unlock(&f->mu);
        if (!ok) {
            free(ca);
            close(fd);
        }
    }
    return NULL;
}

static int fake_start(fake *f, int mode)
{
    memset(f, 0, sizeof *f);
    f->mode = mode;
    pthread_mutex_init(&f->mu, NULL);
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (f->lfd < 0) return -1;
    int one = 1;
    setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(f->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(f->lfd, 512) != 0 ||
        getsockname(f->lfd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    f->port = ntohs(a.sin_port);
    return pthread_create(&f->acceptor, NULL, accept_main, f) == 0 ? 0 : -1;
}

static void fake_stop(fake *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->acceptor, NULL);
    for (int i = 0; i < f->nconns; i++)
        pthread_join(f->conns[i], NULL);
    close(f->lfd);
    pthread_mutex_destroy(&f->mu);
}

static bool fake_last_has(fake *f, const char *s)
{
    pthread_mutex_lock(&f->mu);
    bool ok = memmem(f->last_req, f->last_len, s, strlen(s)) != NULL;
    pthread_mutex_unlock(&f->mu);
    return ok;
}

/* ---------------------------------------------------------------- loop and client fixture */

typedef struct fx {
    uv_loop_t loop;
    th_client *c;
    fake f;
    bool closed;
    char url[256];
} fx;

static void noop_timer(uv_timer_t *t)
{
    (void)t;
}

static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg, int timeout_ms)
{
    uv_timer_t tick;
    uv_timer_init(loop, &tick);
    uv_timer_start(&tick, noop_timer, 5, 5);
    uint64_t end = th_mono_ms() + (uint64_t)timeout_ms;
    bool ok;
    while (!(ok = pred ? pred(arg) : false) && th_mono_ms() < end)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static bool pred_closed(void *arg)
{
    return ((fx *)arg)->closed;
}

static void on_closed(void *ud)
{
    ((fx *)ud)->closed = true;
}

static int fx_open(fx *x, int mode, const th_client_conf *conf)
{
    memset(x, 0, sizeof *x);
    if (uv_loop_init(&x->loop) != 0) return -1;
    if (fake_start(&x->f, mode) != 0) return -1;
    th_client_conf cc = conf ? *conf : (th_client_conf){0};
    cc.engine = TEST_CLIENT_ENGINE;
    x->c = th_client_new(&x->loop, &cc);
    return x->c ? 0 : -1;
}

static const char *fx_url(fx *x, const char *path)
{
    snprintf(x->url, sizeof x->url, "http://127.0.0.1:%d%s", x->f.port, path);
    return x->url;
}

/* Closes the client, checks done fired and that no uv handle is left. Returns failures. */
static int fx_close(fx *x)
{
    int bad = 0;
    th_client_close(x->c, on_closed, x);
    if (!run_until(&x->loop, pred_closed, x, 5000)) bad++;
    if (uv_loop_close(&x->loop) != 0) {
        fprintf(stderr, "uv_loop_close: handles left\n");
        bad++;
    }
    fake_stop(&x->f);
    return bad;
}

/* ---------------------------------------------------------------- transfer recorder */

typedef struct tr {
    fx *x;
    th_client_req *req;
    int heads, bodies, dones, pauses;
    int status, done_status;
    th_client_result result;
    char detail[256];
    char xtest[64], ctype[64];
    bool has_xempty;
    size_t nhdr;
    th_buf body;
    uint64_t t0, t_first_body, t_done;
    int head_rc;             /* returned from on_head */
    bool pause_each;         /* on_body returns 1 every time; resumed from a uv timer */
    bool cancel_in_body;     /* th_client_cancel(self) from the first on_body */
    struct tr *cancel_other; /* cancelled from the first on_body */
    bool close_in_body;      /* th_client_close from the first on_body */
    bool start_in_head;      /* start `child` from on_head */
    bool start_in_done;      /* start `child` from on_done */
    struct tr *child;
    const char *child_path;
    uv_timer_t resume_timer;
    bool timer_inited;
    bool paused_now;
} tr;

static th_client_req *tr_start(tr *t, const th_client_opts *o);

static int cb_head(void *ud, int status, const th_client_header *h, size_t n)
{
    tr *t = ud;
    t->heads++;
    t->status = status;
    t->nhdr = n;
    const char *v = th_client_header_get(h, n, "X-TEST");
    if (v) th_strlcpy(t->xtest, v, sizeof t->xtest);
    const char *ve = th_client_header_get(h, n, "x-empty");
    t->has_xempty = ve != NULL && *ve == '\0';
    for (size_t i = 0; i < n; i++)
        if (strcmp(h[i].name, "content-type") == 0) th_strlcpy(t->ctype, h[i].value, sizeof t->ctype);
    if (t->start_in_head && t->child) {
        th_client_opts o = {.url = fx_url(t->x, t->child_path)};
        t->child->x = t->x;
        tr_start(t->child, &o);
    }
    return t->head_rc;
}

static void on_resume_timer(uv_timer_t *tm)
{
    tr *t = tm->data;
    t->paused_now = false;
    th_client_resume(t->req);
}

static int cb_body(void *ud, const uint8_t *d, size_t n)
{
    tr *t = ud;
    t->bodies++;
    if (t->bodies == 1) t->t_first_body = th_mono_ms();
    if (t->paused_now) fprintf(stderr, "on_body while paused\n"), t->heads += 1000;
    th_buf_append(&t->body, d, n);
    if (t->bodies == 1 && t->cancel_other) th_client_cancel(t->cancel_other->req);
    if (t->cancel_in_body) {
        th_client_cancel(t->req);
        return 0;
    }
    if (t->close_in_body) {
        th_client_close(t->x->c, on_closed, t->x);
        return 0;
    }
    if (t->pause_each) {
        t->pauses++;
        t->paused_now = true;
        uv_timer_start(&t->resume_timer, on_resume_timer, 1, 0);
        return 1;
    }
    return 0;
}

static void cb_done(void *ud, th_client_result r, int status, const char *detail)
{
    tr *t = ud;
    t->dones++;
    t->result = r;
    t->done_status = status;
    t->t_done = th_mono_ms();
    th_strlcpy(t->detail, detail ? detail : "(null)", sizeof t->detail);
#ifdef TEST_VERBOSE
    fprintf(stderr, "  done: %s status=%d detail=%s\n", th_client_result_name(r), status, t->detail);
#endif
    th_client_cancel(t->req); /* no-op on a finished transfer */
    if (t->start_in_done && t->child) {
        th_client_opts o = {.url = fx_url(t->x, t->child_path)};
        t->child->x = t->x;
        tr_start(t->child, &o);
    }
}

static void tr_init(tr *t, fx *x)
{
    memset(t, 0, sizeof *t);
    t->x = x;
    t->result = (th_client_result)-1;
    th_buf_init(&t->body, 0);
}

static th_client_req *tr_start(tr *t, const th_client_opts *o)
{
    th_client_cb cb = {cb_head, cb_body, cb_done, t};
    if (t->pause_each && !t->timer_inited) {
        uv_timer_init(&t->x->loop, &t->resume_timer);
        t->resume_timer.data = t;
        t->timer_inited = true;
    }
    t->t0 = th_mono_ms();
    t->req = th_client_start(t->x->c, o, &cb);
    return t->req;
}

static void tr_free(tr *t)
{
    if (t->timer_inited) {
        uv_close((uv_handle_t *)&t->resume_timer, NULL);
        uv_run(&t->x->loop, UV_RUN_NOWAIT);
    }
    th_buf_free(&t->body);
}

static bool pred_done(void *arg)
{
    return ((tr *)arg)->dones > 0;
}

typedef struct many {
    tr *t;
    int n;
} many;

static bool pred_all_done(void *arg)
{
    many *m = arg;
    for (int i = 0; i < m->n; i++)
        if (m->t[i].dones == 0) return false;
    return true;
}

static bool body_is(const tr *t, const char *s)
{
    return t->body.len == strlen(s) && memcmp(t->body.data, s, t->body.len) == 0;
}

static bool body_is_pattern(const tr *t, size_t n)
{
    if (t->body.len != n) return false;
    for (size_t i = 0; i < n; i++)
        if (t->body.data[i] != pattern(i)) return false;
    return true;
}

/* ---------------------------------------------------------------- tests */

TH_TEST(result_names_and_header_get)
{
    TH_CHECK_STR(th_client_result_name(TH_CLIENT_OK), "ok");
    TH_CHECK_STR(th_client_result_name(TH_CLIENT_TIMEOUT_FIRST), "timeout_first_byte");
    TH_CHECK_STR(th_client_result_name(TH_CLIENT_INTERNAL), "internal");
    th_client_header h[2] = {{"content-type", "a/b"}, {"x-y", "z"}};
    TH_CHECK_STR(th_client_header_get(h, 2, "Content-Type"), "a/b");
    TH_CHECK(th_client_header_get(h, 2, "nope") == NULL);
}

TH_TEST(get_reaches_server_and_headers_parsed)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    const char *hdrs[] = {"X-Custom: abc", "Accept: text/plain", NULL};
    th_client_opts o = {.url = fx_url(&x, "/fixed"), .headers = hdrs};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK_INT(th_client_inflight(x.c), 1);
    TH_CHECK_INT(t.heads, 0); /* never inside start */
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(t.status, 200);
    TH_CHECK_INT(t.done_status, 200);
    TH_CHECK_INT(t.heads, 1);
    TH_CHECK_INT(t.dones, 1);
    TH_CHECK_STR(t.xtest, "hello");
    TH_CHECK_STR(t.ctype, "text/plain");
    TH_CHECK_INT(t.nhdr, 3);
    TH_CHECK(body_is(&t, "hello world"));
    TH_CHECK(fake_last_has(&x.f, "GET /fixed HTTP/1.1\r\n"));
    TH_CHECK(fake_last_has(&x.f, "\r\nX-Custom: abc\r\n"));
    TH_CHECK(fake_last_has(&x.f, "\r\nAccept: text/plain\r\n"));
    TH_CHECK_INT(th_client_inflight(x.c), 0);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(post_put_head_with_body_and_headers)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    uint8_t body[3000];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t)(i * 7); /* NULs included */
    const char *hdrs[] = {"Content-Type: application/octet-stream", "X-Req: 1", NULL};
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/echo"), .headers = hdrs, .body = body, .body_len = sizeof body};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(t.status, 201);
    TH_CHECK(t.body.len == sizeof body && memcmp(t.body.data, body, sizeof body) == 0);
    TH_CHECK(fake_last_has(&x.f, "POST /echo HTTP/1.1\r\n"));
    TH_CHECK(fake_last_has(&x.f, "\r\nContent-Length: 3000\r\n"));
    TH_CHECK(fake_last_has(&x.f, "\r\nX-Req: 1\r\n"));
    TH_CHECK(!fake_last_has(&x.f, "Expect"));
    tr_free(&t);

    /* PUT through CURLOPT_CUSTOMREQUEST, with a body */
    tr_init(&t, &x);
    th_client_opts p = {
        .method = "PUT", .url = fx_url(&x, "/echo"), .body = (const uint8_t *)"abc", .body_len = 3};
    TH_REQUIRE(tr_start(&t, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK(body_is(&t, "abc"));
    TH_CHECK(fake_last_has(&x.f, "PUT /echo HTTP/1.1\r\n"));
    tr_free(&t);

    /* POST without a body sends Content-Length: 0 */
    tr_init(&t, &x);
    th_client_opts q = {.method = "POST", .url = fx_url(&x, "/echo")};
    TH_REQUIRE(tr_start(&t, &q) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(t.body.len, 0);
    TH_CHECK(fake_last_has(&x.f, "\r\nContent-Length: 0\r\n"));
    tr_free(&t);

    /* HEAD: headers with a Content-Length but no body */
    tr_init(&t, &x);
    th_client_opts h = {.method = "HEAD", .url = fx_url(&x, "/head")};
    TH_REQUIRE(tr_start(&t, &h) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(t.status, 200);
    TH_CHECK_INT(t.bodies, 0);
    tr_free(&t);

    /* bad options */
    th_client_cb cb = {cb_head, cb_body, cb_done, &t};
    const char *bad_hdrs[] = {"X-A: 1\r\nX-B: 2", NULL};
    th_client_opts b1 = {.url = fx_url(&x, "/fixed"), .headers = bad_hdrs};
    TH_CHECK(th_client_start(x.c, &b1, &cb) == NULL);
    th_client_opts b2 = {.url = NULL};
    TH_CHECK(th_client_start(x.c, &b2, &cb) == NULL);
    TH_CHECK(th_client_start(x.c, &(th_client_opts){.url = "http://x/", .body_len = 3}, &cb) == NULL);
    TH_CHECK_INT(th_client_inflight(x.c), 0);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(streaming_body_arrives_in_pieces)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/chunked")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK(body_is(&t, "part0part1part2part3part4"));
    TH_CHECK(t.bodies >= 4);
    TH_CHECK(t.t_first_body + 300 <= t.t_done); /* the first piece came ~400 ms before the end */
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(connection_reuse_sequential)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    for (int i = 0; i < 10; i++) {
        tr t;
        tr_init(&t, &x);
        th_client_opts o = {.url = fx_url(&x, i % 2 ? "/fixed" : "/echo"),
                            .body = (const uint8_t *)"x",
                            .body_len = (size_t)(i % 2 ? 0 : 1)};
        if (i % 2) o.body = NULL;
        TH_REQUIRE(tr_start(&t, &o) != NULL);
        TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
        TH_CHECK_INT(t.result, TH_CLIENT_OK);
        tr_free(&t);
    }
    TH_CHECK_INT(atomic_load(&x.f.requests), 10);
    TH_CHECK_INT(atomic_load(&x.f.accepted), 1);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(fifty_concurrent_transfers)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    enum { N = 50 };
    tr *t = calloc(N, sizeof *t);
    TH_REQUIRE(t != NULL);
    for (int i = 0; i < N; i++) {
        tr_init(&t[i], &x);
        th_client_opts o = {.url = fx_url(&x, i % 2 ? "/chunked" : "/big?n=100000")};
        TH_CHECK(tr_start(&t[i], &o) != NULL);
    }
    TH_CHECK_INT(th_client_inflight(x.c), N);
    many m = {t, N};
    TH_CHECK(run_until(&x.loop, pred_all_done, &m, 10000));
    int ok = 0;
    for (int i = 0; i < N; i++) {
        bool good = t[i].result == TH_CLIENT_OK && t[i].dones == 1 &&
                    (i % 2 ? body_is(&t[i], "part0part1part2part3part4") : body_is_pattern(&t[i], 100000));
        ok += good;
        tr_free(&t[i]);
    }
    TH_CHECK_INT(ok, N);
    TH_CHECK_INT(th_client_inflight(x.c), 0);
    TH_CHECK(atomic_load(&x.f.accepted) <= N);
    free(t);
    TH_CHECK_INT(fx_close(&x), 0);
}

static int unused_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    close(fd); /* bound, never listened: connecting is refused */
    return ntohs(a.sin_port);
}

TH_TEST(connect_refused)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", unused_port());
    th_client_opts o = {.url = url};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_CONNECT);
    TH_CHECK_INT(t.done_status, 0);
    TH_CHECK_INT(t.heads, 0);
    TH_CHECK(t.detail[0] != 0);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

/* A listener with backlog 0 and one connection already queued: further SYNs go unanswered, so
 * connecting hangs (Linux drops SYNs while the accept queue is full). */
static int blackhole(int *lfd, int *filler)
{
    *lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(*lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(*lfd, 0) != 0 ||
        getsockname(*lfd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    *filler = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(*filler, (struct sockaddr *)&a, sizeof a);
    struct pollfd p = {*filler, POLLOUT, 0};
    poll(&p, 1, 500);
    return ntohs(a.sin_port);
}

TH_TEST(connect_timeout)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    int lfd = -1, filler = -1;
    int port = blackhole(&lfd, &filler);
    TH_REQUIRE(port > 0);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = url, .connect_timeout_ms = 300};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TIMEOUT_CONNECT);
    TH_CHECK(t.t_done - t.t0 >= 280 && t.t_done - t.t0 < 1500);
    tr_free(&t);

    /* the first-byte timer expires before a connection exists: still a connect timeout */
    tr_init(&t, &x);
    th_client_opts p = {.url = url, .first_byte_timeout_ms = 200, .connect_timeout_ms = 5000};
    TH_REQUIRE(tr_start(&t, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TIMEOUT_CONNECT);
    TH_CHECK(t.t_done - t.t0 < 1500);
    tr_free(&t);
    close(filler);
    close(lfd);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(first_byte_timeout)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/delay?n=2000"), .first_byte_timeout_ms = 300};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TIMEOUT_FIRST);
    TH_CHECK_INT(t.heads, 0);
    TH_CHECK(t.t_done - t.t0 >= 280 && t.t_done - t.t0 < 1000);
    tr_free(&t);

    /* the first byte in time: the timer is cleared and the total limit governs */
    tr_init(&t, &x);
    th_client_opts p = {.url = fx_url(&x, "/slow"), .first_byte_timeout_ms = 300, .total_timeout_ms = 700};
    TH_REQUIRE(tr_start(&t, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TIMEOUT_TOTAL);
    TH_CHECK(t.t_done - t.t0 >= 650);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(total_timeout)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/slow"), .total_timeout_ms = 500};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TIMEOUT_TOTAL);
    TH_CHECK_INT(t.heads, 1);
    TH_CHECK_INT(t.done_status, 200);
    TH_CHECK(t.body.len > 0 && t.body.len < 1000);
    TH_CHECK(t.t_done - t.t0 >= 450 && t.t_done - t.t0 < 1500);
    tr_free(&t);

    /* curl's total limit with no byte yet (first-byte limit = total): reported as TIMEOUT_FIRST, also
     * on a reused connection (the prereq callback marks it connected) */
    tr_init(&t, &x);
    th_client_opts f = {.url = fx_url(&x, "/fixed")};
    TH_REQUIRE(tr_start(&t, &f) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    tr_free(&t);
    int accepted = atomic_load(&x.f.accepted);
    tr_init(&t, &x);
    th_client_opts p = {.url = fx_url(&x, "/delay?n=2000"), .total_timeout_ms = 300};
    TH_REQUIRE(tr_start(&t, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TIMEOUT_FIRST);
    TH_CHECK(t.t_done - t.t0 < 1000);
    TH_CHECK_INT(atomic_load(&x.f.accepted), accepted);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(reset_before_first_byte)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_CLOSE_ON_ACCEPT, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/fixed")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    /* curl: CURLE_GOT_NOTHING ("Empty reply from server") or CURLE_RECV_ERROR (ECONNRESET) */
    if (t.result != TH_CLIENT_RESET)
        fprintf(stderr, "reset_before_first_byte: %s (%s)\n", th_client_result_name(t.result), t.detail);
    TH_CHECK_INT(t.result, TH_CLIENT_RESET);
    TH_CHECK_INT(t.heads, 0);
    TH_CHECK_INT(t.done_status, 0);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(reset_mid_body)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/half")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_RESET);
    TH_CHECK_INT(t.heads, 1);
    TH_CHECK_INT(t.done_status, 200);
    TH_CHECK(body_is_pattern(&t, 500));
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(garbage_and_bad_headers_are_protocol)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/garbage")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_PROTOCOL);
    TH_CHECK_INT(t.heads, 0);
    tr_free(&t);

    tr_init(&t, &x);
    th_client_opts p = {.url = fx_url(&x, "/manyheaders")};
    TH_REQUIRE(tr_start(&t, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_PROTOCOL);
    TH_CHECK_INT(t.heads, 0);
    TH_CHECK(strstr(t.detail, "100") != NULL);
    tr_free(&t);

    /* ftp:// is not allowed */
    tr_init(&t, &x);
    th_client_opts q = {.url = "ftp://127.0.0.1:1/x"};
    TH_REQUIRE(tr_start(&t, &q) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_PROTOCOL);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(interim_1xx_skipped)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/interim")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(t.heads, 1);
    TH_CHECK_INT(t.status, 200);
    TH_CHECK(body_is(&t, "ok"));
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(pause_resume_exactly_once_in_order)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    const char *paths[] = {"/big?n=300000", "/chunkbig?n=200000"};
    const size_t sizes[] = {300000, 200000};
    for (int k = 0; k < 2; k++) {
        tr t;
        tr_init(&t, &x);
        t.pause_each = true;
        th_client_opts o = {.url = fx_url(&x, paths[k])};
        TH_REQUIRE(tr_start(&t, &o) != NULL);
        TH_CHECK(run_until(&x.loop, pred_done, &t, 10000));
        TH_CHECK_INT(t.result, TH_CLIENT_OK);
        TH_CHECK(t.pauses > 3);
        TH_CHECK(t.heads < 1000); /* no on_body while paused */
        TH_CHECK(body_is_pattern(&t, sizes[k]));
        if (!body_is_pattern(&t, sizes[k])) fprintf(stderr, "got %zu bytes\n", t.body.len);
        tr_free(&t);
    }
    TH_CHECK_INT(fx_close(&x), 0);
}

static bool pred_paused(void *arg)
{
    const tr *t = arg;
    return t->pauses > 0;
}

static bool pred_never(void *arg)
{
    (void)arg;
    return false;
}

TH_TEST(cancel_inside_on_body)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t, other;
    tr_init(&t, &x);
    tr_init(&other, &x);
    t.cancel_in_body = true;
    th_client_opts o = {.url = fx_url(&x, "/chunked")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    th_client_opts p = {.url = fx_url(&x, "/delay?n=1000")};
    TH_REQUIRE(tr_start(&other, &p) != NULL);
    t.cancel_other = &other; /* and cancel a second transfer from the same callback */
    run_until(&x.loop, pred_never, NULL, 800);
    TH_CHECK_INT(t.bodies, 1);
    TH_CHECK_INT(t.dones, 0);
    TH_CHECK_INT(other.heads + other.bodies + other.dones, 0);
    TH_CHECK_INT(th_client_inflight(x.c), 0);
    tr_free(&t);
    tr_free(&other);

    /* the client still works afterwards */
    tr_init(&t, &x);
    th_client_opts q = {.url = fx_url(&x, "/fixed")};
    TH_REQUIRE(tr_start(&t, &q) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(abort_from_on_head)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    t.head_rc = -1;
    th_client_opts o = {.url = fx_url(&x, "/big?n=100000")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_ABORTED);
    TH_CHECK_INT(t.heads, 1);
    TH_CHECK_INT(t.bodies, 0);
    TH_CHECK_INT(t.done_status, 200);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(max_body_too_large)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x); /* known Content-Length: refused before any body byte */
    th_client_opts o = {.url = fx_url(&x, "/fixed"), .max_body = 5};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TOO_LARGE);
    TH_CHECK_INT(t.bodies, 0);
    tr_free(&t);

    tr_init(&t, &x); /* chunked: counted as it streams */
    th_client_opts p = {.url = fx_url(&x, "/chunkbig?n=200000"), .max_body = 10000};
    TH_REQUIRE(tr_start(&t, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_TOO_LARGE);
    TH_CHECK_INT(t.heads, 1);
    TH_CHECK(t.body.len <= 10000);
    tr_free(&t);

    tr_init(&t, &x); /* exactly max_body is fine */
    th_client_opts q = {.url = fx_url(&x, "/fixed"), .max_body = 11};
    TH_REQUIRE(tr_start(&t, &q) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(start_from_callbacks)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr a, b, c;
    tr_init(&a, &x);
    tr_init(&b, &x);
    tr_init(&c, &x);
    a.start_in_head = true; /* inside a curl header callback: deferred add */
    a.child = &b;
    a.child_path = "/fixed";
    b.start_in_done = true; /* from on_done: a retry-like start */
    b.child = &c;
    b.child_path = "/echo";
    th_client_opts o = {.url = fx_url(&x, "/chunked")};
    TH_REQUIRE(tr_start(&a, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &c, 5000));
    TH_CHECK(run_until(&x.loop, pred_done, &a, 5000));
    TH_CHECK_INT(a.result, TH_CLIENT_OK);
    TH_CHECK_INT(b.result, TH_CLIENT_OK);
    TH_CHECK(b.req != NULL);
    TH_CHECK(body_is(&b, "hello world"));
    TH_CHECK_INT(c.result, TH_CLIENT_OK);
    TH_CHECK_INT(c.status, 201);
    tr_free(&a);
    tr_free(&b);
    tr_free(&c);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(close_with_transfers_in_flight)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    enum { N = 5 };
    tr t[N + 1];
    for (int i = 0; i < N; i++) {
        tr_init(&t[i], &x);
        th_client_opts o = {.url = fx_url(&x, i % 2 ? "/delay?n=2000" : "/slow")};
        TH_REQUIRE(tr_start(&t[i], &o) != NULL);
    }
    tr_init(&t[N], &x); /* a paused one too */
    t[N].pause_each = true;
    th_client_opts p = {.url = fx_url(&x, "/big?n=50000000")};
    TH_REQUIRE(tr_start(&t[N], &p) != NULL);
    /* until the big one has paused at least once (however slowly a loaded machine gets there), then a
     * little longer so the others are well under way */
    TH_CHECK(run_until(&x.loop, pred_paused, &t[N], 10000));
    run_until(&x.loop, pred_never, NULL, 150);
    uv_timer_stop(&t[N].resume_timer); /* its req dies with the client */
    th_client_close(x.c, on_closed, &x);
    TH_CHECK_INT(th_client_inflight(x.c), 0);
    TH_CHECK(run_until(&x.loop, pred_closed, &x, 5000));
    TH_CHECK(t[N].pauses > 0 && t[N].body.len < 50000000);
    for (int i = 0; i <= N; i++) {
        if (t[i].dones) fprintf(stderr, "transfer %d ended: %s\n", i, th_client_result_name(t[i].result));
        TH_CHECK_INT(t[i].dones, 0);
        tr_free(&t[i]);
    }
    TH_CHECK_INT(uv_loop_close(&x.loop), 0);
    fake_stop(&x.f);
}

static void done_then_close(void *ud, th_client_result r, int status, const char *detail)
{
    tr *t = ud;
    cb_done(ud, r, status, detail);
    th_client_close(t->x->c, on_closed, t->x);
    th_client_close(t->x->c, on_closed, t->x); /* twice: ignored */
}

TH_TEST(close_from_inside_on_done)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t, u;
    tr_init(&t, &x);
    tr_init(&u, &x);
    th_client_cb cb = {cb_head, cb_body, done_then_close, &t};
    th_client_opts o = {.url = fx_url(&x, "/fixed")};
    t.req = th_client_start(x.c, &o, &cb);
    TH_REQUIRE(t.req != NULL);
    th_client_opts p = {.url = fx_url(&x, "/delay?n=1000")};
    TH_REQUIRE(tr_start(&u, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_closed, &x, 5000));
    TH_CHECK_INT(t.dones, 1);
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(u.dones, 0);
    tr_free(&t);
    tr_free(&u);
    TH_CHECK_INT(uv_loop_close(&x.loop), 0);
    fake_stop(&x.f);
}

TH_TEST(close_from_inside_on_body)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t, u;
    tr_init(&t, &x);
    tr_init(&u, &x);
    t.close_in_body = true;
    th_client_opts o = {.url = fx_url(&x, "/chunked")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    th_client_opts p = {.url = fx_url(&x, "/delay?n=1000")};
    TH_REQUIRE(tr_start(&u, &p) != NULL);
    TH_CHECK(run_until(&x.loop, pred_closed, &x, 5000));
    TH_CHECK_INT(t.bodies, 1);
    TH_CHECK_INT(t.dones + u.dones + u.heads, 0);
    tr_free(&t);
    tr_free(&u);
    TH_CHECK_INT(uv_loop_close(&x.loop), 0);
    fake_stop(&x.f);
}

TH_TEST(server_closed_keepalive_is_sent_again)
{
    /* Each answer looks keep-alive but the server closes right after it; the next request is started
     * inside on_done, before the close is read, so it goes out on the dead connection and must be sent
     * again on a new one, unseen by the caller. */
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    enum { N = 20 };
    tr t[N];
    for (int i = 0; i < N; i++) {
        tr_init(&t[i], &x);
        t[i].start_in_done = i + 1 < N;
        t[i].child = i + 1 < N ? &t[i + 1] : NULL;
        t[i].child_path = "/kaclose";
    }
    th_client_opts o = {.url = fx_url(&x, "/kaclose")};
    TH_REQUIRE(tr_start(&t[0], &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t[N - 1], 10000));
    int ok = 0;
    for (int i = 0; i < N; i++) {
        ok += t[i].result == TH_CLIENT_OK && body_is(&t[i], "ok");
        if (t[i].result != TH_CLIENT_OK)
            fprintf(stderr, "  %d: %s %s\n", i, th_client_result_name(t[i].result), t[i].detail);
        tr_free(&t[i]);
    }
    TH_CHECK_INT(ok, N);
    TH_CHECK_INT(atomic_load(&x.f.requests), N);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(empty_header_value_and_trim)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/emptyhdr")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK(t.has_xempty);
    TH_CHECK_STR(t.xtest, "b");
    TH_CHECK_INT(t.nhdr, 3);
    TH_CHECK(body_is(&t, "ok"));
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(bytes_after_response_spoil_the_connection)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    for (int i = 0; i < 2; i++) {
        tr t;
        tr_init(&t, &x);
        th_client_opts o = {.url = fx_url(&x, i == 0 ? "/extra" : "/fixed")};
        TH_REQUIRE(tr_start(&t, &o) != NULL);
        TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
        TH_CHECK_INT(t.result, TH_CLIENT_OK);
        TH_CHECK(body_is(&t, i == 0 ? "ok" : "hello world"));
        tr_free(&t);
    }
    TH_CHECK_INT(atomic_load(&x.f.accepted), 2); /* the second request did not reuse the first connection */
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(body_delimited_by_close)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/eofbody?n=70000")};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK(body_is_pattern(&t, 70000));
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(host_names_are_resolved)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    tr t;
    tr_init(&t, &x);
    char url[128];
    /* localhost may resolve to ::1 first, where nothing listens: the next address is tried */
    snprintf(url, sizeof url, "http://localhost:%d/fixed", x.f.port);
    TH_REQUIRE(tr_start(&t, &(th_client_opts){.url = url}) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK(body_is(&t, "hello world"));
    TH_CHECK(fake_last_has(&x.f, "\r\nHost: localhost:"));
    tr_free(&t);

    tr u;
    tr_init(&u, &x);
    th_client_opts o = {.url = "http://no-such-host.invalid:81/", .connect_timeout_ms = 3000};
    TH_REQUIRE(tr_start(&u, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &u, 8000));
    TH_CHECK(u.result == TH_CLIENT_CONNECT || u.result == TH_CLIENT_TIMEOUT_CONNECT);
    TH_CHECK_INT(u.dones, 1);
    tr_free(&u);
    TH_CHECK_INT(fx_close(&x), 0);
}

TH_TEST(bad_urls_never_succeed)
{
    /* Our engine refuses a bad http:// URL at start; curl takes it and ends it with an error. */
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    const char *bad[] = {"http://",      "http:///x",   "http://a b/",
                         "http://[::1/", "http://h:0/", "http://h:99999/",
                         "http://h:x/",  "ftp-ish",     NULL};
    for (int i = 0; bad[i]; i++) {
        tr t;
        tr_init(&t, &x);
        th_client_req *r = tr_start(&t, &(th_client_opts){.url = bad[i], .connect_timeout_ms = 2000});
        if (TEST_CLIENT_ENGINE == TH_CLIENT_ENGINE_AUTO && strncmp(bad[i], "http:", 5) == 0)
            TH_CHECK(r == NULL);
        if (r) {
            TH_CHECK(run_until(&x.loop, pred_done, &t, 5000));
            TH_CHECK(t.result != TH_CLIENT_OK);
        }
        tr_free(&t);
    }
    TH_CHECK_INT(th_client_inflight(x.c), 0);
    TH_CHECK_INT(fx_close(&x), 0);
}

static int open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own descriptor */
}

static bool pred_accepted4(void *arg)
{
    return atomic_load(&((fx *)arg)->f.accepted) >= 4;
}

TH_TEST(out_of_descriptors_waits_instead_of_failing)
{
    /* Four transfers hold four connections; then the process has no descriptor left. Four more must
     * wait (not fail) and go out on the first four connections once those are free. */
    if (TEST_CLIENT_ENGINE == TH_CLIENT_ENGINE_CURL) return; /* curl fails such a transfer at once */
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    enum { N = 8 };
    tr t[N];
    for (int i = 0; i < N; i++)
        tr_init(&t[i], &x);
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/delay?n=300", x.f.port);
    for (int i = 0; i < 4; i++)
        TH_REQUIRE(tr_start(&t[i], &(th_client_opts){.url = url}) != NULL);
    TH_CHECK(run_until(&x.loop, pred_accepted4, &x, 5000));
    struct rlimit old;
    TH_REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
    int used = open_fds();
    TH_REQUIRE(used > 0);
    struct rlimit lim = {(rlim_t)used + 16, old.rlim_max};
    TH_REQUIRE(setrlimit(RLIMIT_NOFILE, &lim) == 0);
    int fill[64], nfill = 0; /* every free descriptor (holes too) taken */
    while (nfill < 64 && (fill[nfill] = dup(0)) >= 0)
        nfill++;
    TH_CHECK(nfill < 64);
    for (int i = 4; i < N; i++)
        TH_CHECK(tr_start(&t[i], &(th_client_opts){.url = url, .connect_timeout_ms = 5000}) != NULL);
    many m = {t, N};
    bool all = run_until(&x.loop, pred_all_done, &m, 10000);
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    setrlimit(RLIMIT_NOFILE, &old);
    TH_CHECK(all);
    int ok = 0;
    for (int i = 0; i < N; i++) {
        ok += t[i].result == TH_CLIENT_OK && body_is(&t[i], "ok");
        if (t[i].result != TH_CLIENT_OK || !body_is(&t[i], "ok"))
            fprintf(stderr, "  %d: %s %d %s [%.*s]\n", i, th_client_result_name(t[i].result), t[i].status,
                    t[i].detail, (int)t[i].body.len, (const char *)t[i].body.data);
        tr_free(&t[i]);
    }
    TH_CHECK_INT(ok, N);
    if (TEST_CLIENT_ENGINE == TH_CLIENT_ENGINE_AUTO) TH_CHECK_INT(atomic_load(&x.f.accepted), 4);
    TH_CHECK_INT(fx_close(&x), 0);
}

/* ---- a body in pieces (th_client_opts.segs) ---- */

static bool pred_one_request(void *arg)
{
    return atomic_load(&((fx *)arg)->f.requests) >= 1;
}

static void count_release(void *ud)
{
    (*(int *)ud)++;
}

TH_TEST(body_in_pieces_sent_in_order_large_pieces_borrowed)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    enum { BIG = 600000, MID = 5000 };
    uint8_t *big = malloc(BIG), *mid = malloc(MID), *want = malloc(BIG + MID + 64);
    TH_REQUIRE(big != NULL && mid != NULL && want != NULL);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (uint8_t)(i * 13 + 1);
    for (size_t i = 0; i < MID; i++)
        mid[i] = (uint8_t)(i * 5);
    char head[] = "--head part--", tail[] = "--tail--";
    th_client_seg segs[] = {{(const uint8_t *)head, strlen(head)},
                            {big, BIG},
                            {NULL, 0},
                            {(const uint8_t *)tail, strlen(tail)},
                            {mid, MID}};
    int released = 0;
    tr t;
    tr_init(&t, &x);
    th_client_opts o = {.url = fx_url(&x, "/echo"),
                        .segs = segs,
                        .nsegs = 5,
                        .segs_release = count_release,
                        .segs_ud = &released};
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK_INT(released, 0); /* never inside start */
    /* A new connection: nothing is sent before the loop runs. The large pieces are read from where they
     * are when they are written (changes show), the small ones were copied at start (changes do not). */
    big[0] = 0xAA;
    big[BIG - 1] = 0xBB;
    mid[MID / 2] = 0xCC;
    head[0] = 'X';
    size_t n = 0;
    memcpy(want + n, "--head part--", 13), n += 13;
    memcpy(want + n, big, BIG), n += BIG;
    memcpy(want + n, tail, strlen(tail)), n += strlen(tail);
    memcpy(want + n, mid, MID), n += MID;
    TH_CHECK(run_until(&x.loop, pred_done, &t, 10000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK_INT(t.status, 201);
    TH_CHECK_INT(t.body.len, n);
    TH_CHECK(t.body.len == n && memcmp(t.body.data, want, n) == 0);
    TH_CHECK(fake_last_has(&x.f, "POST /echo HTTP/1.1\r\n"));
    char cl[64];
    snprintf(cl, sizeof cl, "\r\nContent-Length: %zu\r\n", n);
    TH_CHECK(fake_last_has(&x.f, cl));
    TH_CHECK_INT(released, 1);
    tr_free(&t);

    /* the same pieces again on the kept connection, and a PUT: copied afresh, so the change shows now */
    want[0] = 'X';
    tr_init(&t, &x);
    o.method = "PUT";
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 10000));
    TH_CHECK_INT(t.result, TH_CLIENT_OK);
    TH_CHECK(t.body.len == n && memcmp(t.body.data, want, n) == 0);
    TH_CHECK(fake_last_has(&x.f, "PUT /echo HTTP/1.1\r\n"));
    TH_CHECK_INT(released, 2);
    tr_free(&t);
    TH_CHECK_INT(fx_close(&x), 0);
    TH_CHECK_INT(released, 2);
    free(big);
    free(mid);
    free(want);
}

TH_TEST(body_in_pieces_released_once_on_cancel_failure_and_close)
{
    fx x;
    TH_REQUIRE(fx_open(&x, FM_PATH, NULL) == 0);
    static uint8_t big[100000];
    th_client_seg segs[] = {{(const uint8_t *)"a=", 2}, {big, sizeof big}};
    int released = 0;
    th_client_opts o = {.url = fx_url(&x, "/echo"),
                        .segs = segs,
                        .nsegs = 2,
                        .segs_release = count_release,
                        .segs_ud = &released};
    /* cancelled before anything was sent */
    tr t;
    tr_init(&t, &x);
    TH_REQUIRE(tr_start(&t, &o) != NULL);
    th_client_cancel(t.req);
    TH_CHECK_INT(released, 1);
    th_client_cancel(t.req);
    TH_CHECK_INT(released, 1);
    tr_free(&t);

    /* bad options: nothing taken, nothing released */
    th_client_cb cb = {cb_head, cb_body, cb_done, &t};
    th_client_opts both = o;
    both.body = (const uint8_t *)"x";
    both.body_len = 1;
    TH_CHECK(th_client_start(x.c, &both, &cb) == NULL);
    th_client_opts many_segs = o;
    many_segs.nsegs = TH_CLIENT_MAX_SEGS + 1;
    TH_CHECK(th_client_start(x.c, &many_segs, &cb) == NULL);
    th_client_seg nul[] = {{NULL, 3}};
    th_client_opts nul_seg = o;
    nul_seg.segs = nul;
    nul_seg.nsegs = 1;
    TH_CHECK(th_client_start(x.c, &nul_seg, &cb) == NULL);
    th_client_opts head = o;
    head.method = "HEAD";
    TH_CHECK(th_client_start(x.c, &head, &cb) == NULL);
    TH_CHECK_INT(released, 1);

    /* a transfer that fails (nobody listens) gives the bytes back once, after on_done */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo", unused_port());
    tr_init(&t, &x);
    th_client_opts bad = o;
    bad.url = url;
    TH_REQUIRE(tr_start(&t, &bad) != NULL);
    TH_CHECK(run_until(&x.loop, pred_done, &t, 10000));
    TH_CHECK_INT(t.result, TH_CLIENT_CONNECT);
    TH_CHECK_INT(released, 2);
    tr_free(&t);

    /* the client closed with the transfer in flight */
    tr_init(&t, &x);
    th_client_opts slow = o;
    char surl[128];
    snprintf(surl, sizeof surl, "http://127.0.0.1:%d/delay?n=3000", x.f.port);
    slow.url = surl;
    TH_REQUIRE(tr_start(&t, &slow) != NULL);
    TH_CHECK(run_until(&x.loop, pred_one_request, &x, 5000));
    TH_CHECK_INT(released, 2);
    TH_CHECK_INT(fx_close(&x), 0);
    TH_CHECK_INT(released, 3);
    TH_CHECK_INT(t.dones, 0);
    tr_free(&t);
}

TH_TEST_MAIN()
