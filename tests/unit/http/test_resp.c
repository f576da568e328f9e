/* test_resp: the upstream response parser, byte by byte and whole. */
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "http/resp.h"
#include "th_test.h"

typedef struct out {
    th_buf body;
    int heads;
    int status;
    char hdrs[512]; /* "name=value;" */
    int pause_every;
    int calls;
} out;

static int on_head(void *ud, int status, const th_client_header *h, size_t n)
{
    out *o = ud;
    o->heads++;
    o->status = status;
    o->hdrs[0] = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(o->hdrs);
        snprintf(o->hdrs + l, sizeof o->hdrs - l, "%s=%s;", h[i].name, h[i].value);
    }
    return 0;
}

static int on_body(void *ud, const uint8_t *d, size_t n)
{
    out *o = ud;
    th_buf_append(&o->body, d, n);
    return o->pause_every && ++o->calls % o->pause_every == 0 ? 1 : 0;
}

/* Parses s in pieces of `step` bytes (0 = whole), resuming after pauses, then EOF if still open.
 * Returns the rc; *keep the keep-alive verdict; *rest bytes left after the message. */
static th_resp_rc parse(const char *s, size_t n, size_t step, bool head_req, out *o, bool *keep, size_t *rest)
{
    th_resp p;
    memset(&p, 0, sizeof p);
    th_resp_init(&p, head_req);
    th_client_header scratch[TH_RESP_MAX_HEADERS];
    th_resp_cb cb = {on_head, on_body};
    th_resp_rc rc = TH_RESP_MORE;
    size_t off = 0;
    *rest = 0;
    while (off < n && rc == TH_RESP_MORE) {
        size_t len = step && n - off > step ? step : n - off;
        const uint8_t *q = (const uint8_t *)s + off;
        size_t left = len;
        for (;;) {
            size_t used = 0;
            rc = th_resp_feed(&p, q, left, &used, &cb, o, scratch);
            q += used;
            left -= used;
            if (rc != TH_RESP_PAUSED) break;
        }
        off += len;
        if (rc == TH_RESP_DONE) *rest = left + (n - off);
    }
    if (rc == TH_RESP_MORE) rc = th_resp_eof(&p);
    *keep = th_resp_keep_alive(&p);
    th_resp_free(&p);
    return rc;
}

typedef struct want {
    const char *in;
    th_resp_rc rc;
    int status;
    const char *body;
    bool keep;
    size_t rest;
    const char *hdrs; /* NULL: not checked */
} want;

static void check_all_splits(int *th__failed, const want *w, bool head_req)
{
    size_t n = strlen(w->in);
    size_t steps[] = {0, 1, 2, 3, 7, 64};
    for (size_t si = 0; si < sizeof steps / sizeof steps[0]; si++) {
        for (int pe = 0; pe <= 2; pe++) {
            out o;
            memset(&o, 0, sizeof o);
            th_buf_init(&o.body, 0);
            o.pause_every = pe;
            bool keep = false;
            size_t rest = 0;
            th_resp_rc rc = parse(w->in, n, steps[si], head_req, &o, &keep, &rest);
            bool ok = rc == w->rc;
            if (w->rc == TH_RESP_DONE) {
                ok = ok && o.status == w->status && keep == w->keep && rest == w->rest &&
                     o.body.len == strlen(w->body) &&
                     memcmp(o.body.data ? (char *)o.body.data : "", w->body, o.body.len) == 0;
                if (w->hdrs) ok = ok && strcmp(o.hdrs, w->hdrs) == 0;
            }
            if (!ok) {
                fprintf(stderr,
                        "case [%.40s...] step %zu pause %d: rc %d status %d keep %d rest %zu body %zu [%s]\n",
                        w->in, steps[si], pe, rc, o.status, keep, rest, o.body.len, o.hdrs);
                (*th__failed)++;
            }
            th_buf_free(&o.body);
        }
    }
}

TH_TEST(framings_at_every_split)
{
    const want cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b c \r\n\r\nhello", TH_RESP_DONE, 200, "hello", true,
         0, "content-length=5;x-a=b c;"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK", TH_RESP_DONE, 200, "ok", true, 4, NULL},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n"
         "Trailer: x\r\n\r\n",
         TH_RESP_DONE, 200, "hello world", true, 0, NULL},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
         TH_RESP_DONE, 200, "0123456789", true, 0, NULL},
        {"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc", TH_RESP_DONE, 200, "abc", true, 0, NULL},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", TH_RESP_DONE, 200, "until the end",
         false, 0, NULL},
        {"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", TH_RESP_DONE, 200, "hi", false, 0, NULL},
        {"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nhi", TH_RESP_DONE, 200, "hi",
         true, 0, NULL},
        {"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n", TH_RESP_DONE, 200,
         "", false, 0, NULL},
        {"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\nHTTP/1.1 201 Created\r\n"
         "Content-Length: 1\r\n\r\nz",
         TH_RESP_DONE, 201, "z", true, 0, "content-length=1;"},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n", TH_RESP_DONE, 204, "", true, 0, NULL},
        {"HTTP/1.1 304 Not Modified\r\n\r\n", TH_RESP_DONE, 304, "", true, 0, NULL},
        {"HTTP/1.1 200 OK\r\nX-Fold: a\r\n  b\r\n\tc\r\nContent-Length: 0\r\n\r\n", TH_RESP_DONE, 200, "",
         true, 0, "x-fold=a b c;content-length=0;"},
        {"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 0\r\n\r\n", TH_RESP_DONE, 200, "", true, 0,
         "x-empty=;content-length=0;"},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", TH_RESP_DONE, 200, "abc",
         true, 0, NULL},
        {"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
         TH_RESP_DONE, 200, "x", false, 0, NULL},
        {"HTTP/1.1 599\r\nContent-Length: 0\r\n\r\n", TH_RESP_DONE, 599, "", true, 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_all_splits(th__failed, &cases[i], false);
}

TH_TEST(head_request_has_no_body)
{
    want w = {"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", TH_RESP_DONE, 200, "", true, 0, NULL};
    check_all_splits(th__failed, &w, true);
}

TH_TEST(bad_responses_are_errors)
{
    const char *bad[] = {
        "XYZ\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "HTTP/1.1 099 X\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n",
        "HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\n continuation first\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",           /* closed mid-body */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", /* closed mid-chunk */
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",                     /* closed inside the head */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        want w = {bad[i], TH_RESP_ERROR, 0, "", false, 0, NULL};
        check_all_splits(th__failed, &w, false);
    }
}

TH_TEST(limits)
{
    /* 100 headers pass, 101 do not */
    th_buf b;
    th_buf_init(&b, 0);
    for (int extra = 0; extra < 2; extra++) {
        th_buf_reset(&b);
        th_buf_append_str(&b, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        for (int i = 0; i < 99 + extra; i++)
            th_buf_appendf(&b, "X-H%d: v\r\n", i);
        th_buf_append_str(&b, "\r\n");
        want w = {th_buf_cstr(&b), extra ? TH_RESP_ERROR : TH_RESP_DONE, 200, "", true, 0, NULL};
        check_all_splits(th__failed, &w, false);
    }
    /* a head over 16 KiB, whole or in pieces */
    th_buf_reset(&b);
    th_buf_append_str(&b, "HTTP/1.1 200 OK\r\nX-Big: ");
    for (int i = 0; i < 17000; i++)
        th_buf_append_byte(&b, 'a');
    th_buf_append_str(&b, "\r\nContent-Length: 0\r\n\r\n");
    want w = {th_buf_cstr(&b), TH_RESP_ERROR, 0, "", false, 0, NULL};
    check_all_splits(th__failed, &w, false);
    th_buf_free(&b);
}

TH_TEST(eof_ends_a_close_delimited_body_only)
{
    want w = {"HTTP/1.1 200 OK\r\n\r\nabc", TH_RESP_DONE, 200, "abc", false, 0, NULL};
    check_all_splits(th__failed, &w, false);
}

TH_TEST_MAIN()
