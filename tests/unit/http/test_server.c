#include "th_test.h"

#include "http/http.h"
#include "http_testlib.h"

/* ---- test handlers ---- */

typedef struct tstate {
    th_hstate hs; /* first */
    size_t stream_total;
    int writes_blocked;
    int drains;
    int on_close_count;
    int on_close_after_shutdown;
    int write_fail;
    int handled;
    int slow_ms;
    bool hold_started;
} tstate;

typedef struct job {
    uv_timer_t t;
    th_http_req *r;
    tstate *ts;
    size_t sent;
    size_t total;
} job;

static void job_free_cb(uv_handle_t *h)
{
    free(h->data);
}

static job *job_new(th_http_req *r, tstate *ts, uv_loop_t *loop)
{
    job *j = calloc(1, sizeof *j);
    j->r = r;
    j->ts = ts;
    uv_timer_init(loop, &j->t);
    j->t.data = j;
    return j;
}

static void job_done(job *j)
{
    uv_timer_stop(&j->t);
    uv_close((uv_handle_t *)&j->t, job_free_cb);
}

static char pattern_byte(size_t off)
{
    return (char)('a' + off % 26);
}

static void stream_pump(job *j)
{
    char chunk[16384];
    while (j->sent < j->total) {
        size_t n = j->total - j->sent < sizeof chunk ? j->total - j->sent : sizeof chunk;
        for (size_t i = 0; i < n; i++)
            chunk[i] = pattern_byte(j->sent + i);
        int rc = th_http_write(j->r, chunk, n);
        if (rc < 0) {
            j->ts->write_fail++;
            return; /* on_close ends it */
        }
        j->sent += n;
        if (rc == 1) {
            j->ts->writes_blocked++;
            return;
        }
    }
    th_http_end(j->r, false);
    job_done(j);
}

static void stream_drain(th_http_req *r, void *ud)
{
    job *j = ud;
    j->ts->drains++;
    stream_pump(j);
}

static void job_on_close(th_http_req *r, void *ud)
{
    job *j = ud;
    j->ts->on_close_count++;
    if (j->ts->hs.shutdown_started) j->ts->on_close_after_shutdown++;
    th_http_end(r, false);
    job_done(j);
}

static void slow_fire(uv_timer_t *t)
{
    job *j = t->data;
    th_http_respond(j->r, 200, "text/plain", "slow", 4);
    job_done(j);
}

static void hold_tick(uv_timer_t *t)
{
    job *j = t->data;
    char data[1024];
    memset(data, 'h', sizeof data);
    if (th_http_write(j->r, data, sizeof data) < 0) {
        j->ts->write_fail++;
        uv_timer_stop(&j->t);
    }
}

static uv_loop_t *loop_of(tstate *ts)
{
    return &ts->hs.h->loop;
}

static void handler(th_http_req *r, void *ud)
{
    tstate *ts = ud;
    ts->handled++;
    const char *path = th_http_path(r);
    const char *q = th_http_query(r);
    if (strcmp(path, "/hello") == 0) {
        th_http_respond(r, 200, "text/plain", "hello", 5);
    } else if (strcmp(path, "/echo") == 0 || strcmp(path, "/upload") == 0) {
        size_t n;
        const uint8_t *b = th_http_body(r, &n);
        if (strncmp(q, "id=", 3) == 0) th_http_set_header(r, "X-Request-Id", q + 3);
        th_http_set_header(r, "X-Method", th_http_method(r));
        th_http_respond(r, 200, "application/octet-stream", b, n);
    } else if (strcmp(path, "/slow") == 0) {
        job *j = job_new(r, ts, loop_of(ts));
        uv_timer_start(&j->t, slow_fire, ts->slow_ms ? (uint64_t)ts->slow_ms : 150, 0);
    } else if (strcmp(path, "/stream") == 0) {
        job *j = job_new(r, ts, loop_of(ts));
        j->total = ts->stream_total;
        th_http_on_drain(r, stream_drain, j);
        th_http_on_close(r, job_on_close, j);
        if (th_http_start(r, 200, "application/octet-stream", -1) != 0) return;
        stream_pump(j);
    } else if (strcmp(path, "/hold") == 0) {
        job *j = job_new(r, ts, loop_of(ts));
        th_http_on_close(r, job_on_close, j);
        th_http_start(r, 200, "text/plain", -1);
        ts->hold_started = true;
        uv_timer_start(&j->t, hold_tick, 10, 10);
    } else if (strcmp(path, "/cut") == 0) {
        th_http_start(r, 200, "text/plain", -1);
        th_http_write(r, "partial", 7);
        th_http_end(r, true);
    } else if (strcmp(path, "/info") == 0) {
        char out[512];
        int n = snprintf(out, sizeof out, "peer=%s conns=%zu inflight=%zu start=%d hdrs=%zu", th_http_peer(r),
                         th_http_server_connections(ts->hs.h->s), th_http_server_inflight(ts->hs.h->s),
                         th_http_start_us(r) > 0, th_http_header_count(r));
        th_http_respond(r, 200, "text/plain", out, (size_t)n);
    } else {
        th_http_respond(r, 404, "text/plain", "nf", 2);
    }
}

static size_t body_limit(th_http_req *r, void *ud)
{
    return strcmp(th_http_path(r), "/upload") == 0 ? 1024 * 1024 : 64 * 1024;
}

static th_http_limits test_limits(void)
{
    th_http_limits l = {
        .max_header = 8192,
        .max_body = 64 * 1024,
        .max_upload = 1024 * 1024,
        .max_connections = 100,
        .header_timeout_ms = 2000,
        .idle_timeout_ms = 3000,
        .request_timeout_ms = 5000,
    };
    return l;
}

static bool has(const char *hay, const char *needle)
{
    return hay != NULL && strstr(hay, needle) != NULL;
}

/* ---- tests ---- */

static void c_get_post(harness *h, int *th__failed)
{
    resp r;
    TH_REQUIRE(cl_roundtrip(h->port, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_STR(r.body, "hello");
    char v[128];
    TH_CHECK(resp_header(&r, "Date", v, sizeof v));
    TH_CHECK(resp_header(&r, "Content-Type", v, sizeof v) && strcmp(v, "text/plain") == 0);
    TH_CHECK(resp_header(&r, "X-Request-Id", v, sizeof v) && strlen(v) == 36);
    TH_CHECK(!resp_header(&r, "Connection", v, sizeof v));
    resp_free(&r);

    TH_REQUIRE(
        cl_roundtrip(h->port,
                     "POST /echo?id=gen-42 HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
                     &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_STR(r.body, "hello world");
    TH_CHECK(resp_header(&r, "X-Request-Id", v, sizeof v) && strcmp(v, "gen-42") == 0);
    TH_CHECK(resp_header(&r, "X-Method", v, sizeof v) && strcmp(v, "POST") == 0);
    const char *first = strstr(r.head, "X-Request-Id");
    TH_CHECK(first != NULL && strstr(first + 1, "X-Request-Id") == NULL); /* only the handler's */
    resp_free(&r);

    TH_REQUIRE(cl_roundtrip(h->port, "GET /info HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n", &r) == 0);
    TH_CHECK(has(r.body, "peer=127.0.0.1"));
    TH_CHECK(has(r.body, "inflight=1"));
    TH_CHECK(has(r.body, "start=1"));
    TH_CHECK(has(r.body, "hdrs=2"));
    resp_free(&r);

    /* HEAD: the length of the GET, no body (the next response follows at once) */
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_head(&b, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK(resp_header(&r, "Content-Length", v, sizeof v) && strcmp(v, "5") == 0);
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_STR(r.body, "hello");
    resp_free(&r);
    cl_close(&b);
}

TH_TEST(http_get_post_head)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_get_post, th__failed, NULL), 0);
}

static void c_keepalive(harness *h, int *th__failed)
{
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    resp r;
    for (int i = 0; i < 3; i++) {
        TH_REQUIRE(cl_sends(&b, "GET /info HTTP/1.1\r\nHost: x\r\n\r\n") == 0);
        TH_REQUIRE(cl_response(&b, &r) == 0);
        TH_CHECK_INT(r.status, 200);
        TH_CHECK(has(r.body, "conns=1 "));
        resp_free(&r);
    }
    cl_close(&b);

    /* HTTP/1.0: closes unless keep-alive is asked for */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /hello HTTP/1.0\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK(cl_eof(&b, 2000));
    resp_free(&r);
    cl_close(&b);

    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK(has(r.head, "Connection: keep-alive"));
    resp_free(&r);
    cl_sends(&b, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_STR(r.body, "hello");
    resp_free(&r);
    cl_close(&b);

    /* Connection: close on 1.1 */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK(cl_eof(&b, 2000));
    resp_free(&r);
    cl_close(&b);
}

TH_TEST(http_keepalive_and_close)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_keepalive, th__failed, NULL), 0);
}

static void c_pipeline(harness *h, int *th__failed)
{
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    /* the first answer is asynchronous (150 ms), the others synchronous */
    TH_REQUIRE(cl_sends(&b, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                            "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthird") == 0);
    resp r;
    const char *want[] = {"slow", "hello", "third"};
    for (int i = 0; i < 3; i++) {
        TH_REQUIRE(cl_response(&b, &r) == 0);
        TH_CHECK_INT(r.status, 200);
        TH_CHECK_STR(r.body, want[i]);
        resp_free(&r);
    }
    /* many small pipelined requests in one write */
    char big[64 * 40];
    size_t o = 0;
    for (int i = 0; i < 40; i++)
        o += (size_t)snprintf(big + o, sizeof big - o, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_send(&b, big, o) == 0);
    for (int i = 0; i < 40; i++) {
        TH_REQUIRE(cl_response(&b, &r) == 0);
        TH_CHECK_STR(r.body, "hello");
        resp_free(&r);
    }
    cl_close(&b);
}

TH_TEST(http_pipelined_in_order)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_pipeline, th__failed, NULL), 0);
}

static void c_bodies(harness *h, int *th__failed)
{
    resp r;
    clbuf b;
    /* chunked request body, sent in pieces */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    ms_sleep(20);
    cl_sends(&b, "6\r\n world\r\n0\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_STR(r.body, "hello world");
    resp_free(&r);
    /* Content-Length body split across writes, same connection */
    cl_sends(&b, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01234");
    ms_sleep(20);
    cl_sends(&b, "56789");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_STR(r.body, "0123456789");
    resp_free(&r);
    cl_close(&b);

    /* Content-Length over the limit: 413 at once, without the body */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 413);
    TH_CHECK(has(r.body, "\"type\":\"invalid_request_error\""));
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK(cl_eof(&b, 3000));
    resp_free(&r);
    cl_close(&b);

    /* a chunked body that grows past the limit */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[8200];
    memset(chunk, 'z', sizeof chunk);
    memcpy(chunk, "2000\r\n", 6);
    memcpy(chunk + 6 + 8192, "\r\n", 2);
    for (int i = 0; i < 10; i++)
        if (cl_send(&b, chunk, 6 + 8192 + 2) != 0) break;
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 413);
    resp_free(&r);
    cl_close(&b);

    /* the body-limit function raises the limit for uploads */
    size_t n = 200000;
    char *req = malloc(n + 200);
    int hl = snprintf(req, 200, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", n);
    memset(req + hl, 'u', n);
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_send(&b, req, (size_t)hl + n);
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_INT(r.blen, n);
    resp_free(&r);
    cl_close(&b);
    free(req);
}

TH_TEST(http_request_bodies_and_413)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_bodies, th__failed, body_limit), 0);
}

static void c_continue(harness *h, int *th__failed)
{
    resp r;
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 100);
    TH_CHECK(strcmp(r.head, "HTTP/1.1 100 Continue\r\n\r\n") == 0);
    cl_sends(&b, "abcde");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_STR(r.body, "abcde");
    resp_free(&r);
    cl_close(&b);

    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b,
             "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\nExpect: 100-continue\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 413);
    TH_CHECK(cl_eof(&b, 3000));
    resp_free(&r);
    cl_close(&b);

    TH_REQUIRE(cl_roundtrip(h->port,
                            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: magic\r\n\r\n",
                            &r) == 0);
    TH_CHECK_INT(r.status, 417);
    resp_free(&r);
}

TH_TEST(http_expect_100_continue)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_continue, th__failed, NULL), 0);
}

static void c_errors(harness *h, int *th__failed)
{
    resp r;
    char v[128];
    /* headers past max_header (8 KiB) */
    char *big = malloc(20000);
    int n = snprintf(big, 20000, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + n, 'b', 9000);
    memcpy(big + n + 9000, "\r\n\r\n", 5);
    TH_REQUIRE(cl_roundtrip(h->port, big, &r) == 0);
    TH_CHECK_INT(r.status, 431);
    TH_CHECK(has(r.body, "\"error\":{"));
    TH_CHECK(resp_header(&r, "X-Request-Id", v, sizeof v) && strlen(v) == 36);
    resp_free(&r);
    /* many small headers add up too */
    n = snprintf(big, 20000, "GET /hello HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 90; i++)
        n += snprintf(big + n, (size_t)(20000 - n), "X-H%d: %0100d\r\n", i, i);
    snprintf(big + n, (size_t)(20000 - n), "\r\n");
    TH_REQUIRE(cl_roundtrip(h->port, big, &r) == 0);
    TH_CHECK_INT(r.status, 431);
    resp_free(&r);
    /* the URL alone */
    n = snprintf(big, 20000, "GET /");
    memset(big + n, 'u', 9000);
    snprintf(big + n + 9000, 100, " HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_roundtrip(h->port, big, &r) == 0);
    TH_CHECK_INT(r.status, 414);
    resp_free(&r);
    free(big);

    /* malformed: 400 and close */
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 400);
    TH_CHECK(has(r.body, "\"type\":\"invalid_request_error\""));
    TH_CHECK(has(r.head, "Content-Type: application/json"));
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK(cl_eof(&b, 3000));
    resp_free(&r);
    cl_close(&b);

    TH_REQUIRE(cl_roundtrip(h->port, "\x01\x02garbage\r\n\r\n", &r) == 0);
    TH_CHECK_INT(r.status, 400);
    resp_free(&r);
    TH_REQUIRE(cl_roundtrip(h->port, "GET /hello HTTP/1.1\r\n\r\n", &r) == 0); /* no Host */
    TH_CHECK_INT(r.status, 400);
    resp_free(&r);
    TH_REQUIRE(cl_roundtrip(h->port, "BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 0);
    TH_CHECK(r.status == 400 || r.status == 501);
    resp_free(&r);
    TH_REQUIRE(cl_roundtrip(h->port, "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", &r) == 0);
    TH_CHECK_INT(r.status, 501);
    resp_free(&r);
    TH_REQUIRE(
        cl_roundtrip(
            h->port,
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            &r) == 0);
    TH_CHECK_INT(r.status, 400);
    resp_free(&r);
}

TH_TEST(http_protocol_errors)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_errors, th__failed, NULL), 0);
}

static void c_timeouts(harness *h, int *th__failed)
{
    resp r;
    clbuf b;
    /* slowloris: part of the headers, then nothing */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    uint64_t t0 = now_ms();
    cl_sends(&b, "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: ");
    ms_sleep(100);
    cl_sends(&b, "b"); /* trickling bytes do not extend the header timeout */
    TH_REQUIRE(cl_response(&b, &r) == 0);
    uint64_t dt = now_ms() - t0;
    TH_CHECK_INT(r.status, 408);
    TH_CHECK(dt >= 150 && dt < 1500);
    TH_CHECK(cl_eof(&b, 2000));
    resp_free(&r);
    cl_close(&b);

    /* idle keep-alive connection: closed quietly */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    resp_free(&r);
    t0 = now_ms();
    TH_CHECK(cl_eof(&b, 2000));
    dt = now_ms() - t0;
    TH_CHECK(dt >= 250 && dt < 1500);
    cl_close(&b);

    /* a response in progress is not cut by the header or idle timeouts (slow: 600 ms) */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_STR(r.body, "slow");
    resp_free(&r);
    cl_close(&b);

    /* request timeout: headers in time, body never completes */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    t0 = now_ms();
    cl_sends(&b, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    dt = now_ms() - t0;
    TH_CHECK_INT(r.status, 408);
    TH_CHECK(dt >= 600 && dt < 2500);
    resp_free(&r);
    cl_close(&b);
}

TH_TEST(http_timeouts)
{
    tstate ts = {0};
    ts.slow_ms = 600;
    th_http_limits l = test_limits();
    l.header_timeout_ms = 200;
    l.idle_timeout_ms = 300;
    l.request_timeout_ms = 800;
    TH_CHECK_INT(h_run(&l, handler, &ts, c_timeouts, th__failed, NULL), 0);
}

static void c_maxconn(harness *h, int *th__failed)
{
    clbuf a, b, c;
    resp r;
    TH_REQUIRE(cl_connect(h->port, 0, &a) == 0);
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&a, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&a, &r) == 0);
    resp_free(&r);
    cl_sends(&b, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    resp_free(&r);
    TH_REQUIRE(cl_connect(h->port, 0, &c) == 0);
    TH_REQUIRE(cl_response(&c, &r) == 0);
    TH_CHECK_INT(r.status, 503);
    char v[64];
    TH_CHECK(resp_header(&r, "Retry-After", v, sizeof v) && strcmp(v, "1") == 0);
    TH_CHECK(has(r.body, "\"type\":\"service_unavailable\""));
    TH_CHECK(cl_eof(&c, 2000));
    resp_free(&r);
    cl_close(&c);
    /* a slot frees up: accepted again */
    cl_close(&a);
    ms_sleep(100);
    TH_REQUIRE(cl_connect(h->port, 0, &c) == 0);
    cl_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&c, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    resp_free(&r);
    cl_close(&c);
    cl_close(&b);
}

TH_TEST(http_max_connections_503)
{
    tstate ts = {0};
    th_http_limits l = test_limits();
    l.max_connections = 2;
    TH_CHECK_INT(h_run(&l, handler, &ts, c_maxconn, th__failed, NULL), 0);
}

static void c_stream(harness *h, int *th__failed)
{
    tstate *ts = (tstate *)h->ud;
    clbuf b;
    resp r;
    TH_REQUIRE(cl_connect(h->port, 4096, &b) == 0);
    cl_sends(&b, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    ms_sleep(200); /* let the server fill the pipe */
    TH_REQUIRE(cl_response_slow(&b, &r, 1) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK(r.chunked);
    TH_CHECK_INT(r.blen, ts->stream_total);
    bool ok = r.blen == ts->stream_total;
    for (size_t i = 0; ok && i < r.blen; i++)
        ok = r.body[i] == pattern_byte(i);
    TH_CHECK(ok);
    resp_free(&r);
    /* the connection is still usable */
    cl_sends(&b, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK_STR(r.body, "hello");
    resp_free(&r);
    cl_close(&b);

    /* HTTP/1.0: no chunked, the body ends with the connection */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /stream HTTP/1.0\r\n\r\n");
    TH_REQUIRE(cl_response(&b, &r) == 0);
    TH_CHECK(!r.chunked);
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK_INT(r.blen, ts->stream_total);
    resp_free(&r);
    cl_close(&b);

    /* cut on purpose: no final chunk, connection closed */
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /cut HTTP/1.1\r\nHost: x\r\n\r\n");
    while (cl_fill(&b) > 0) {
    }
    TH_CHECK(b.data != NULL && has(b.data, "Transfer-Encoding: chunked"));
    TH_CHECK(b.data != NULL && has(b.data, "\r\n\r\n7\r\npartial\r\n"));
    /* no final chunk: truncated (look in the body only; a header value may end in '0') */
    const char *body_start = b.data ? strstr(b.data, "\r\n\r\n") : NULL;
    TH_CHECK(body_start != NULL && !has(body_start + 4, "\r\n0\r\n\r\n") &&
             strncmp(body_start + 4, "0\r\n\r\n", 5) != 0);
    cl_close(&b);
}

TH_TEST(http_streaming_backpressure)
{
    tstate ts = {0};
    ts.stream_total = 8 * 1024 * 1024;
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_stream, th__failed, NULL), 0);
    TH_CHECK(ts.writes_blocked > 0);
    TH_CHECK(ts.drains > 0);
    TH_CHECK_INT(ts.drains, ts.writes_blocked);
    TH_CHECK_INT(ts.on_close_count, 0);
}

static void c_disconnect(harness *h, int *th__failed)
{
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_CHECK(cl_fill(&b) > 0);
    ms_sleep(50);
    cl_close(&b);
    ms_sleep(300);
    /* a stream whose client goes away while it is blocked on back-pressure */
    TH_REQUIRE(cl_connect(h->port, 4096, &b) == 0);
    cl_sends(&b, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_CHECK(cl_fill(&b) > 0);
    ms_sleep(100);
    cl_close(&b);
    ms_sleep(300);
}

TH_TEST(http_client_disconnect_midstream)
{
    tstate ts = {0};
    ts.stream_total = 64 * 1024 * 1024;
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_disconnect, th__failed, NULL), 0);
    TH_CHECK(ts.hold_started);
    TH_CHECK_INT(ts.on_close_count, 2);
    TH_CHECK_INT(ts.on_close_after_shutdown, 0);
}

static void c_shutdown(harness *h, int *th__failed)
{
    clbuf idle, busy;
    resp r;
    TH_REQUIRE(cl_connect(h->port, 0, &idle) == 0);
    cl_sends(&idle, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&idle, &r) == 0);
    resp_free(&r);
    clbuf fresh; /* connected, its first request not sent yet */
    TH_REQUIRE(cl_connect(h->port, 0, &fresh) == 0);
    TH_REQUIRE(cl_connect(h->port, 0, &busy) == 0);
    cl_sends(&busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    ms_sleep(50);
    uv_async_send(&h->async);      /* shutdown while /slow is in flight */
    TH_CHECK(cl_eof(&idle, 1000)); /* idle keep-alive: closed at once */
    /* a fresh connection's first request, sent after the shutdown began, is still served */
    cl_sends(&fresh, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_REQUIRE(cl_response(&fresh, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK(cl_eof(&fresh, 2000));
    resp_free(&r);
    cl_close(&fresh);
    TH_REQUIRE(cl_response(&busy, &r) == 0);
    TH_CHECK_INT(r.status, 200);
    TH_CHECK_STR(r.body, "slow");
    TH_CHECK(has(r.head, "Connection: close"));
    TH_CHECK(cl_eof(&busy, 2000));
    resp_free(&r);
    cl_close(&idle);
    cl_close(&busy);
    clbuf late;
    TH_CHECK(cl_connect(h->port, 0, &late) != 0); /* not listening any more */
    cl_close(&late);
}

TH_TEST(http_shutdown_inflight_finishes)
{
    tstate ts = {0};
    ts.slow_ms = 300;
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_shutdown, th__failed, NULL), 0);
    TH_CHECK(ts.hs.done_ms < 1500); /* did not wait for the grace period */
}

static void c_shutdown_grace(harness *h, int *th__failed)
{
    clbuf b;
    TH_REQUIRE(cl_connect(h->port, 0, &b) == 0);
    cl_sends(&b, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    TH_CHECK(cl_fill(&b) > 0);
    uv_async_send(&h->async);
    /* the hold never ends by itself: force-closed after the grace period */
    bool eof = false;
    uint64_t t0 = now_ms();
    while (now_ms() - t0 < 3000) {
        int n = cl_fill(&b);
        if (n <= 0) {
            eof = true;
            break;
        }
        if (b.len > 1 << 20) b.len = 0;
    }
    TH_CHECK(eof);
    cl_close(&b);
}

TH_TEST(http_shutdown_grace_force_close)
{
    tstate ts = {0};
    ts.hs.grace_ms = 300;
    th_http_limits l = test_limits();
    TH_CHECK_INT(h_run(&l, handler, &ts, c_shutdown_grace, th__failed, NULL), 0);
    TH_CHECK_INT(ts.on_close_count, 1);
    TH_CHECK(ts.hs.done_ms >= 250 && ts.hs.done_ms < 1500);
}

static void listen_done(void *ud)
{
    *(int *)ud = 1;
}

TH_TEST(http_listen_addresses)
{
    const char *good[] = {"127.0.0.1:0", "0.0.0.0:0", ":0", "localhost:0", "[::]:0"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        th_http_server *s = th_http_server_new(&loop, NULL, handler, NULL, NULL);
        char err[256] = "";
        int rc = th_http_server_listen(s, good[i], err, sizeof err);
        if (rc != 0 && strcmp(good[i], "[::]:0") == 0) {
            fprintf(stderr, "note: %s: %s (no IPv6 here?)\n", good[i], err);
        } else {
            TH_CHECK_INT(rc, 0);
            TH_CHECK(th_http_server_port(s) > 0);
        }
        int done = 0;
        th_http_server_shutdown(s, 100, listen_done, &done);
        uv_run(&loop, UV_RUN_DEFAULT);
        TH_CHECK_INT(done, 1);
        th_http_server_free(s);
        TH_CHECK_INT(uv_loop_close(&loop), 0);
    }
    const char *bad[] = {"nope", "1.2.3.4:99999", "[::1", "127.0.0.1:x", "no.such.host.invalid:80"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uv_loop_t loop;
        uv_loop_init(&loop);
        th_http_server *s = th_http_server_new(&loop, NULL, handler, NULL, NULL);
        char err[256] = "";
        TH_CHECK(th_http_server_listen(s, bad[i], err, sizeof err) != 0);
        TH_CHECK(err[0] != '\0');
        th_http_server_free(s);
        uv_run(&loop, UV_RUN_DEFAULT);
        TH_CHECK_INT(uv_loop_close(&loop), 0);
    }
}

TH_TEST(http_reason)
{
    TH_CHECK_STR(th_http_reason(200), "OK");
    TH_CHECK_STR(th_http_reason(431), "Request Header Fields Too Large");
    TH_CHECK_STR(th_http_reason(799), "Unknown");
}

TH_TEST_MAIN()
