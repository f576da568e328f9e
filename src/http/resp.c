/* resp: see resp.h. */
#include "http/resp.h"

#include <string.h>
#include <strings.h>

enum { S_HEAD = 0, S_LEN, S_EOF, S_CSIZE, S_CDATA, S_CCRLF, S_TRAILER, S_DONE, S_ERROR };

#define CHUNK_LINE_MAX 4096
#define SIZE_LIMIT (1ULL << 60)

void th_resp_init(th_resp *p, bool head_request)
{
    th_buf h = p->head, d = p->hdrs;
    bool had = p->head.max != 0;
    memset(p, 0, sizeof *p);
    if (had) { /* keep the memory of a reused parser */
        p->head = h;
        p->hdrs = d;
        th_buf_reset(&p->head);
        th_buf_reset(&p->hdrs);
    } else {
        th_buf_init(&p->head, TH_RESP_HEAD_MAX);
        th_buf_init(&p->hdrs, TH_RESP_HEAD_MAX);
    }
    p->head_request = head_request;
    p->clen = -1;
}

void th_resp_free(th_resp *p)
{
    th_buf_free(&p->head);
    th_buf_free(&p->hdrs);
}

static th_resp_rc fail(th_resp *p, const char *why)
{
    p->state = S_ERROR;
    p->err = why;
    return TH_RESP_ERROR;
}

static bool is_ows(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static bool is_tchar(uint8_t c)
{
    if (c >= 'a' && c <= 'z') return true;
    if (c >= 'A' && c <= 'Z') return true;
    if (c >= '0' && c <= '9') return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Does the comma-separated list v (NUL-terminated) hold token t (case-insensitive)? last: only as the
 * last element. */
static bool list_has(const char *v, const char *t, bool last)
{
    size_t tl = strlen(t);
    bool found = false;
    while (*v) {
        while (*v == ',' || is_ows((uint8_t)*v))
            v++;
        const char *s = v;
        while (*v && *v != ',')
            v++;
        const char *e = v;
        while (e > s && is_ows((uint8_t)e[-1]))
            e--;
        if (e == s) continue;
        bool eq = (size_t)(e - s) == tl && strncasecmp(s, t, tl) == 0;
        if (last)
            found = eq;
        else if (eq)
            return true;
    }
    return found;
}

/* Offset just past the blank line that ends a head in d[0..n), or 0 when it is not there yet. from: where
 * to start looking (a line feed before it has been checked already). */
static size_t head_end(const uint8_t *d, size_t n, size_t from)
{
    size_t i = from;
    while (i < n) {
        const uint8_t *lf = memchr(d + i, '\n', n - i);
        if (!lf) return 0;
        size_t k = (size_t)(lf - d);
        if (k + 1 < n && d[k + 1] == '\n') return k + 2;
        if (k + 2 < n && d[k + 1] == '\r' && d[k + 2] == '\n') return k + 3;
        if (k + 2 >= n && (k + 1 >= n || d[k + 1] == '\r')) return 0; /* undecided: wait for more */
        i = k + 1;
    }
    return 0;
}

/* What a head says of the body's framing. */
typedef struct framing {
    bool close, ka, chunked, te;
    int64_t clen; /* -1: none */
} framing;

/* The status line h[0..le) (le: its line feed): HTTP/1.x SP 3DIGIT [SP reason]. The minor version, or -1
 * (failed). */
static int status_line(th_resp *p, const uint8_t *h, size_t le)
{
    size_t lend = le > 0 && h[le - 1] == '\r' ? le - 1 : le;
    if (lend < 12 || memcmp(h, "HTTP/1.", 7) != 0 || h[7] < '0' || h[7] > '9' || h[8] != ' ' || h[9] < '1' ||
        h[9] > '9' || h[10] < '0' || h[10] > '9' || h[11] < '0' || h[11] > '9' ||
        (lend > 12 && h[12] != ' ')) {
        fail(p, "bad status line");
        return -1;
    }
    p->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    for (size_t k = 12; k < lend; k++)
        if (h[k] == 0 || (h[k] < 32 && h[k] != '\t') || h[k] == 127) {
            fail(p, "bad status line");
            return -1;
        }
    return h[7] - '0';
}

/* An obs-fold line: its trimmed text continues the previous value (nh: headers so far). 0, or -1. */
static int fold_line(th_resp *p, const uint8_t *s, size_t len, size_t nh)
{
    th_buf *b = &p->hdrs;
    if (nh == 0) {
        fail(p, "continuation line without a header");
        return -1;
    }
    size_t a = 0, e = len;
    while (a < e && is_ows(s[a]))
        a++;
    while (e > a && is_ows(s[e - 1]))
        e--;
    if (a == e) return 0;
    if (th_buf_reserve(b, e - a + 1) != TH_BUF_OK) {
        fail(p, "response headers over 16 KiB");
        return -1;
    }
    b->data[b->len - 1] = ' ';
    memcpy(b->data + b->len, s + a, e - a);
    b->len += e - a;
    b->data[b->len++] = 0;
    return 0;
}

/* Content-Length, Transfer-Encoding and Connection into f. 0, or -1. */
static int note_framing(th_resp *p, const char *name, size_t nl, const char *val, size_t vl, framing *f)
{
    if (nl == 14 && memcmp(name, "content-length", 14) == 0) {
        int64_t v = 0;
        if (vl == 0 || vl > 18) {
            fail(p, "bad Content-Length");
            return -1;
        }
        for (size_t k = 0; k < vl; k++) {
            if (val[k] < '0' || val[k] > '9') {
                fail(p, "bad Content-Length");
                return -1;
            }
            v = v * 10 + (val[k] - '0');
        }
        if (f->clen >= 0 && f->clen != v) {
            fail(p, "conflicting Content-Length headers");
            return -1;
        }
        f->clen = v;
    } else if (nl == 17 && memcmp(name, "transfer-encoding", 17) == 0) {
        f->te = true;
        f->chunked = list_has(val, "chunked", true);
    } else if (nl == 10 && memcmp(name, "connection", 10) == 0) {
        f->close |= list_has(val, "close", false);
        f->ka |= list_has(val, "keep-alive", false);
    }
    return 0;
}

/* One header line s[0..len) (no line end): kept in p->hdrs as "name\0value\0" with the name lower-cased,
 * its framing noted in f. 0, or -1. */
static int header_line(th_resp *p, const uint8_t *s, size_t len, size_t *nh, framing *f)
{
    th_buf *b = &p->hdrs;
    for (size_t k = 0; k < len; k++)
        if (s[k] == 0 || s[k] == '\r' || (s[k] < 32 && s[k] != '\t') || s[k] == 127) {
            fail(p, "control byte in a response header");
            return -1;
        }
    if (is_ows(s[0])) return fold_line(p, s, len, *nh); /* obs-fold: continues the previous value */
    const uint8_t *colon = memchr(s, ':', len);
    if (!colon || colon == s) {
        fail(p, "malformed response header line");
        return -1;
    }
    size_t nl = (size_t)(colon - s);
    for (size_t k = 0; k < nl; k++)
        if (!is_tchar(s[k])) {
            fail(p, "bad response header name");
            return -1;
        }
    if (*nh >= TH_RESP_MAX_HEADERS) {
        fail(p, "more than 100 response headers");
        return -1;
    }
    size_t va = nl + 1, ve = len;
    while (va < ve && is_ows(s[va]))
        va++;
    while (ve > va && is_ows(s[ve - 1]))
        ve--;
    if (th_buf_reserve(b, nl + 1 + (ve - va) + 1) != TH_BUF_OK) {
        fail(p, "response headers over 16 KiB");
        return -1;
    }
    char *name = (char *)b->data + b->len;
    for (size_t k = 0; k < nl; k++) {
        uint8_t c = s[k];
        name[k] = (char)((c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c);
    }
    name[nl] = 0;
    char *val = name + nl + 1;
    memcpy(val, s + va, ve - va);
    val[ve - va] = 0;
    b->len += nl + 1 + (ve - va) + 1;
    (*nh)++;
    return note_framing(p, name, nl, val, ve - va, f);
}

/* A final head's keep-alive, Content-Length and body state. 0, or -1. */
static int body_state(th_resp *p, int minor, const framing *f)
{
    p->keep_alive = minor >= 1 ? !f->close : (f->ka && !f->close);
    p->clen = f->te ? -1 : f->clen;
    if (p->head_request || p->status == 204 || p->status == 304) {
        p->state = S_DONE;
    } else if (f->te && f->chunked) {
        p->state = S_CSIZE;
        if (f->clen >= 0) p->keep_alive = false; /* both framings: trust chunked, then close */
    } else if (f->te) {
        p->state = S_EOF; /* another coding last: the body runs until the close */
        p->keep_alive = false;
    } else if (f->clen >= 0) {
        if ((uint64_t)f->clen >= SIZE_LIMIT) {
            fail(p, "Content-Length too large");
            return -1;
        }
        p->remain = (uint64_t)f->clen;
        p->state = f->clen == 0 ? S_DONE : S_LEN;
    } else {
        p->state = S_EOF;
        p->keep_alive = false;
    }
    return 0;
}

/* Parses a complete head (status line to the blank line). 1 = a final head (body state set), 0 = an
 * interim 1xx (skipped), or an error. */
static int parse_head(th_resp *p, const uint8_t *h, size_t n, th_resp_rc *rc)
{
    const uint8_t *lf = memchr(h, '\n', n);
    size_t le = (size_t)(lf - h);
    int minor = status_line(p, h, le);
    if (minor < 0) goto failed;
    size_t i = le + 1, nh = 0;
    framing f = {.clen = -1};
    th_buf_reset(&p->hdrs);
    while (i < n) {
        lf = memchr(h + i, '\n', n - i);
        le = (size_t)(lf - h);
        size_t lend = le > i && h[le - 1] == '\r' ? le - 1 : le;
        if (lend == i) break; /* the blank line */
        const uint8_t *s = h + i;
        i = le + 1;
        if (header_line(p, s, lend - (size_t)(s - h), &nh, &f) != 0) goto failed;
    }
    if (p->status < 200) {
        if (p->status == 101) {
            fail(p, "unexpected protocol switch");
            goto failed;
        }
        th_buf_reset(&p->hdrs);
        return 0;
    }
    if (body_state(p, minor, &f) != 0) goto failed;
    return 1;
failed:
    *rc = TH_RESP_ERROR;
    return -1;
}

static th_resp_rc deliver(th_resp *p, const uint8_t *d, size_t n, const th_resp_cb *cb, void *ud)
{
    if (n == 0 || !cb->on_body) return TH_RESP_MORE;
    int r = cb->on_body(ud, d, n);
    if (r < 0) {
        p->state = S_ERROR;
        p->err = "stopped";
        return TH_RESP_STOPPED;
    }
    return r == 1 ? TH_RESP_PAUSED : TH_RESP_MORE;
}

static th_resp_rc emit_head(th_resp *p, const th_resp_cb *cb, void *ud, th_client_header *scratch)
{
    const char *s = (const char *)p->hdrs.data;
    size_t n = 0;
    for (size_t off = 0; off < p->hdrs.len && n < TH_RESP_MAX_HEADERS; n++) {
        scratch[n].name = s + off;
        off += strlen(s + off) + 1;
        scratch[n].value = s + off;
        off += strlen(s + off) + 1;
    }
    if (cb->on_head && cb->on_head(ud, p->status, scratch, n) < 0) {
        p->state = S_ERROR;
        p->err = "stopped";
        return TH_RESP_STOPPED;
    }
    return TH_RESP_MORE;
}

/* One call of th_resp_feed: the bytes, where it is in them, and its answer once it stops. */
typedef struct feed {
    th_resp *p;
    const uint8_t *data;
    size_t len, i;
    size_t *used;
    const th_resp_cb *cb;
    void *ud;
    th_client_header *scratch;
    th_resp_rc rc;
} feed;

/* Stops the feed with rc (*used left as it is). */
static bool stop(feed *f, th_resp_rc rc)
{
    f->rc = rc;
    return false;
}

/* Stops the feed with rc, i bytes used. */
static bool stop_at(feed *f, th_resp_rc rc)
{
    *f->used = f->i;
    return stop(f, rc);
}

/* One byte of a chunk-size line: hex digits, then maybe ";ext", then CRLF. */
static th_resp_rc chunk_size_byte(th_resp *p, uint8_t c)
{
    if (++p->line > CHUNK_LINE_MAX) return fail(p, "chunk size line too long");
    if (c == '\n') {
        if (p->digits == 0) return fail(p, "bad chunk size");
        p->line = 0;
        p->digits = 0;
        p->in_ext = false;
        p->got_cr = false;
        p->state = p->remain == 0 ? S_TRAILER : S_CDATA;
        return TH_RESP_MORE;
    }
    if (p->got_cr) return fail(p, "bad chunk size");
    if (c == '\r') {
        p->got_cr = true;
        return TH_RESP_MORE;
    }
    if (p->in_ext) {
        if (c == 0 || (c < 32 && c != '\t')) return fail(p, "bad chunk extension");
        return TH_RESP_MORE;
    }
    int v = hexval(c);
    if (v >= 0) {
        if (p->remain >= SIZE_LIMIT / 16) return fail(p, "chunk too large");
        p->remain = p->remain * 16 + (uint64_t)v;
        p->digits++;
        return TH_RESP_MORE;
    }
    if ((c == ';' || is_ows(c)) && p->digits > 0) {
        p->in_ext = true;
        return TH_RESP_MORE;
    }
    return fail(p, "bad chunk size");
}

/* One byte of the CRLF after a chunk's data. */
static th_resp_rc chunk_end_byte(th_resp *p, uint8_t c)
{
    if (c == '\r' && !p->got_cr) {
        p->got_cr = true;
        return TH_RESP_MORE;
    }
    if (c != '\n') return fail(p, "missing line end after a chunk");
    p->got_cr = false;
    p->remain = 0;
    p->state = S_CSIZE;
    return TH_RESP_MORE;
}

/* One byte of the trailers (skipped, bounded), up to the blank line. */
static th_resp_rc trailer_byte(th_resp *p, uint8_t c)
{
    if (++p->trailer > TH_RESP_HEAD_MAX) return fail(p, "trailers over 16 KiB");
    if (c == '\n') {
        if (p->line == 0) p->state = S_DONE;
        p->line = 0;
    } else if (c != '\r') {
        if (c == 0) return fail(p, "NUL byte in a trailer");
        p->line++;
    }
    return TH_RESP_MORE;
}

/* A head that started in an earlier call: the bytes join p->head until its blank line. 1 = the head is
 * whole (*end: its length, *old: the bytes that came before), 0 = the feed stopped. */
static int buffered_head(feed *f, size_t *end, size_t *old)
{
    th_resp *p = f->p;
    *old = p->head.len;
    size_t take = f->len - f->i;
    if (take > TH_RESP_HEAD_MAX - *old + 1) take = TH_RESP_HEAD_MAX - *old + 1;
    if (*old + take > TH_RESP_HEAD_MAX) {
        if (th_buf_append(&p->head, f->data + f->i, TH_RESP_HEAD_MAX - *old) != TH_BUF_OK)
            return stop(f, fail(p, "out of memory"));
        *end = head_end(p->head.data, p->head.len, *old > 2 ? *old - 2 : 0);
        if (*end == 0) return stop(f, fail(p, "response headers over 16 KiB"));
        return 1;
    }
    if (th_buf_append(&p->head, f->data + f->i, take) != TH_BUF_OK) return stop(f, fail(p, "out of memory"));
    *end = head_end(p->head.data, p->head.len, *old > 2 ? *old - 2 : 0);
    if (*end == 0) {
        *f->used = f->len;
        return stop(f, TH_RESP_MORE);
    }
    return 1;
}

/* S_HEAD: the head, whole in data or joined in p->head; then on_head. true to go on. */
static bool feed_head(feed *f)
{
    th_resp *p = f->p;
    size_t end, consumed;
    th_resp_rc rc = TH_RESP_MORE;
    int r;
    if (p->head.len == 0) {
        end = head_end(f->data + f->i, f->len - f->i, 0);
        if (end == 0) {
            if (f->len - f->i > TH_RESP_HEAD_MAX) return stop(f, fail(p, "response headers over 16 KiB"));
            if (th_buf_append(&p->head, f->data + f->i, f->len - f->i) != TH_BUF_OK)
                return stop(f, fail(p, "out of memory"));
            *f->used = f->len;
            return stop(f, TH_RESP_MORE);
        }
        if (end > TH_RESP_HEAD_MAX) return stop(f, fail(p, "response headers over 16 KiB"));
        r = parse_head(p, f->data + f->i, end, &rc);
        consumed = end;
    } else {
        size_t old;
        if (!buffered_head(f, &end, &old)) return false;
        r = parse_head(p, p->head.data, end, &rc);
        consumed = end - old;
        th_buf_reset(&p->head);
    }
    if (r < 0) return stop_at(f, rc);
    f->i += consumed;
    if (r == 0) return true; /* interim: the final head follows */
    rc = emit_head(p, f->cb, f->ud, f->scratch);
    return rc == TH_RESP_MORE ? true : stop_at(f, rc);
}

/* S_LEN, S_CDATA: body bytes up to what remains of the body or the chunk. true to go on. */
static bool feed_data(feed *f)
{
    th_resp *p = f->p;
    size_t n = f->len - f->i;
    if ((uint64_t)n > p->remain) n = (size_t)p->remain;
    p->remain -= n;
    if (p->remain == 0) p->state = p->state == S_LEN ? S_DONE : S_CCRLF;
    th_resp_rc rc = deliver(p, f->data + f->i, n, f->cb, f->ud);
    f->i += n;
    return rc == TH_RESP_MORE ? true : stop_at(f, rc);
}

/* A byte state's answer: go on, or stop. */
static bool byte_fed(feed *f, th_resp_rc rc)
{
    return rc == TH_RESP_MORE ? true : stop(f, rc);
}

/* One step in the current state. true to go on. */
static bool feed_step(feed *f)
{
    th_resp *p = f->p;
    switch (p->state) {
    case S_DONE:
        return stop_at(f, TH_RESP_DONE);
    case S_ERROR:
        return stop_at(f, TH_RESP_ERROR);
    case S_HEAD:
        return feed_head(f);
    case S_LEN:
    case S_CDATA:
        return feed_data(f);
    case S_EOF:
        *f->used = f->len;
        return stop(f, deliver(p, f->data + f->i, f->len - f->i, f->cb, f->ud));
    case S_CSIZE:
        return byte_fed(f, chunk_size_byte(p, f->data[f->i++]));
    case S_CCRLF:
        return byte_fed(f, chunk_end_byte(p, f->data[f->i++]));
    case S_TRAILER:
        return byte_fed(f, trailer_byte(p, f->data[f->i++]));
    default:
        return stop(f, fail(p, "parser state"));
    }
}

th_resp_rc th_resp_feed(th_resp *p, const uint8_t *data, size_t len, size_t *used, const th_resp_cb *cb,
                        void *ud, th_client_header *scratch)
{
    feed f = {.p = p, .data = data, .len = len, .used = used, .cb = cb, .ud = ud, .scratch = scratch};
    *used = 0;
    while (f.i < len || p->state == S_DONE)
        if (!feed_step(&f)) return f.rc;
    *used = len;
    return TH_RESP_MORE;
}

th_resp_rc th_resp_eof(th_resp *p)
{
    if (p->state == S_EOF || p->state == S_DONE) {
        p->state = S_DONE;
        return TH_RESP_DONE;
    }
    if (p->state == S_ERROR) return TH_RESP_ERROR;
    return fail(p, p->state == S_HEAD ? "connection closed inside the response head"
                                      : "connection closed in the middle of the body");
}

bool th_resp_started(const th_resp *p)
{
    return p->state != S_HEAD || p->head.len > 0;
}

bool th_resp_head_done(const th_resp *p)
{
    return p->state != S_HEAD && p->state != S_ERROR;
}

bool th_resp_keep_alive(const th_resp *p)
{
    return p->state == S_DONE && p->keep_alive;
}

const char *th_resp_error(const th_resp *p)
{
    return p->err ? p->err : "bad response";
}
