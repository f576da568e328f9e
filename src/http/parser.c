#include "http/parser.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/str.h"

/* Bytes of a request line besides the URL ("METHOD " + " HTTP/1.1\r\n") and of the blank line: counted
 * once per message. Each header line adds ": " and CRLF. */
#define REQ_LINE_OVERHEAD 24
#define HDR_LINE_OVERHEAD 4
#define MAX_HEADERS_DEFAULT 100
/* Memory kept between messages; more is released after a big request. */
#define KEEP_HEAD_BYTES (32 * 1024)
#define KEEP_BODY_BYTES (256 * 1024)

static int fail(th_http_parser *p, int status, const char *code, const char *message)
{
    if (p->err_status == 0) {
        p->err_status = status;
        p->err_code = code;
        p->err_message = message;
    }
    return -1;
}

static th_http_parser *of(http_parser *hp)
{
    return (th_http_parser *)hp->data;
}

static int head_append(th_http_parser *p, const char *at, size_t len)
{
    int rc = th_buf_append(&p->msg.head, at, len);
    if (rc == TH_BUF_OK) return 0;
    if (rc == TH_BUF_EFULL) return fail(p, 431, "headers_too_large", "request headers too large");
    return fail(p, 500, "out_of_memory", "out of memory");
}

static int head_nul(th_http_parser *p)
{
    return head_append(p, "", 1);
}

static int count(th_http_parser *p, size_t n)
{
    p->msg.head_bytes += n;
    if (p->msg.head_bytes > p->max_header)
        return fail(p, 431, "headers_too_large", "request headers too large");
    return 0;
}

static int on_message_begin(http_parser *hp)
{
    th_http_parser *p = of(hp);
    th_http_msg *m = &p->msg;
    th_buf_reset(&m->head);
    th_buf_reset(&m->body);
    m->nhdrs = 0;
    m->url_len = 0;
    m->path = m->query = 0;
    m->head_bytes = REQ_LINE_OVERHEAD;
    m->content_length = 0;
    m->method = NULL;
    m->method_id = -1;
    m->major = m->minor = 0;
    m->started = true;
    m->head_done = m->complete = false;
    m->has_clen = m->chunked = m->keep_alive = m->expect_continue = m->upgrade = false;
    p->last = 0;
    p->body_limit = 0;
    if (p->cbs != NULL && p->cbs->on_begin != NULL) p->cbs->on_begin(p->ud);
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len)
{
    th_http_parser *p = of(hp);
    if (p->msg.url_len + len > p->max_header) return fail(p, 414, "uri_too_long", "request URI too long");
    if (count(p, len) != 0 || head_append(p, at, len) != 0) return -1;
    p->msg.url_len += (uint32_t)len;
    return 0;
}

/* Closes the string being built (URL or header value) before a new header name. */
static int end_value(th_http_parser *p)
{
    th_http_msg *m = &p->msg;
    if (p->last == 2) m->hdrs[m->nhdrs - 1].value_len = (uint32_t)(m->head.len - m->hdrs[m->nhdrs - 1].value);
    return head_nul(p);
}

static int on_header_field(http_parser *hp, const char *at, size_t len)
{
    th_http_parser *p = of(hp);
    th_http_msg *m = &p->msg;
    if (p->last != 1) {
        if (end_value(p) != 0) return -1;
        if (m->nhdrs >= p->max_headers) return fail(p, 431, "headers_too_large", "too many request headers");
        if (m->nhdrs == m->hcap) {
            uint32_t cap = m->hcap ? m->hcap * 2 : 16;
            th_http_hdr *h = realloc(m->hdrs, cap * sizeof *h);
            if (h == NULL) return fail(p, 500, "out_of_memory", "out of memory");
            m->hdrs = h;
            m->hcap = cap;
        }
        th_http_hdr *h = &m->hdrs[m->nhdrs++];
        h->name = (uint32_t)m->head.len;
        h->name_len = h->value = h->value_len = 0;
        p->last = 1;
        if (count(p, HDR_LINE_OVERHEAD) != 0) return -1;
    }
    return count(p, len) != 0 ? -1 : head_append(p, at, len);
}

static int on_header_value(http_parser *hp, const char *at, size_t len)
{
    th_http_parser *p = of(hp);
    th_http_msg *m = &p->msg;
    if (p->last != 2) {
        if (p->last != 1) return fail(p, 400, "bad_request", "malformed request");
        th_http_hdr *h = &m->hdrs[m->nhdrs - 1];
        h->name_len = (uint32_t)(m->head.len - h->name);
        if (head_nul(p) != 0) return -1;
        h->value = (uint32_t)m->head.len;
        p->last = 2;
    }
    return count(p, len) != 0 ? -1 : head_append(p, at, len);
}

const char *th_http_msg_header(const th_http_msg *m, const char *name)
{
    const char *base = (const char *)m->head.data;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        if (strcasecmp(base + m->hdrs[i].name, name) == 0) return base + m->hdrs[i].value;
    }
    return NULL;
}

static bool method_supported(int id)
{
    switch (id) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_POST:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_PATCH:
    case HTTP_OPTIONS:
        return true;
    default:
        return false;
    }
}

/* Splits the URL into path and query, appended to head as two NUL-terminated strings. */
static int split_url(th_http_parser *p)
{
    th_http_msg *m = &p->msg;
    const char *url = (const char *)m->head.data;
    size_t n = m->url_len;
    size_t path_off = 0, path_len = 0, query_off = 0, query_len = 0;
    if (n > 0 && url[0] == '/') {
        size_t i = 0;
        while (i < n && url[i] != '?' && url[i] != '#')
            i++;
        path_len = i;
        if (i < n && url[i] == '?') {
            query_off = i + 1;
            size_t j = query_off;
            while (j < n && url[j] != '#')
                j++;
            query_len = j - query_off;
        }
    } else if (n == 1 && url[0] == '*' && m->method_id == HTTP_OPTIONS) {
        path_len = 1;
    } else {
        /* absolute-form (http://host/path?q): take its path and query */
        struct http_parser_url u;
        http_parser_url_init(&u);
        if (n == 0 || http_parser_parse_url(url, n, 0, &u) != 0 || !(u.field_set & (1 << UF_HOST)))
            return fail(p, 400, "bad_request", "malformed request target");
        if (u.field_set & (1 << UF_PATH)) {
            path_off = u.field_data[UF_PATH].off;
            path_len = u.field_data[UF_PATH].len;
        }
        if (u.field_set & (1 << UF_QUERY)) {
            query_off = u.field_data[UF_QUERY].off;
            query_len = u.field_data[UF_QUERY].len;
        }
    }
    /* head may move while appending: copy through offsets */
    if (th_buf_reserve(&m->head, path_len + query_len + 3) != TH_BUF_OK)
        return fail(p, 431, "headers_too_large", "request headers too large");
    url = (const char *)m->head.data;
    m->path = (uint32_t)m->head.len;
    if (path_len == 0) {
        th_buf_append(&m->head, "/", 1);
    } else {
        th_buf_append(&m->head, url + path_off, path_len);
    }
    th_buf_append(&m->head, "", 1);
    url = (const char *)m->head.data;
    m->query = (uint32_t)m->head.len;
    th_buf_append(&m->head, url + query_off, query_len);
    th_buf_append(&m->head, "", 1);
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    th_http_parser *p = of(hp);
    th_http_msg *m = &p->msg;
    if (p->last == 0 && head_nul(p) != 0) return -1; /* URL without headers */
    if (p->last != 0 && end_value(p) != 0) return -1;
    if (p->last == 1)
        m->hdrs[m->nhdrs - 1].name_len = (uint32_t)(m->head.len - 1 - m->hdrs[m->nhdrs - 1].name);
    m->method_id = (int)hp->method;
    m->method = http_method_str((enum http_method)hp->method);
    m->major = (uint8_t)hp->http_major;
    m->minor = (uint8_t)hp->http_minor;
    m->head_done = true;
    if (hp->http_major != 1) return fail(p, 505, "http_version_not_supported", "HTTP version not supported");
    if (!method_supported(m->method_id)) return fail(p, 501, "not_implemented", "method not implemented");
    if (split_url(p) != 0) return -1;
    m->keep_alive = http_should_keep_alive(hp) != 0;
    m->upgrade = hp->upgrade != 0;
    m->chunked = (hp->flags & F_CHUNKED) != 0;
    m->has_clen = (hp->flags & F_CONTENTLENGTH) != 0;
    m->content_length = m->has_clen ? hp->content_length : 0;
    if (m->has_clen && hp->content_length == UINT64_MAX) m->content_length = 0;
    if (th_http_msg_header(m, "Host") == NULL && m->minor >= 1)
        return fail(p, 400, "bad_request", "missing Host header");

    size_t limit = p->cbs != NULL && p->cbs->body_limit != NULL ? p->cbs->body_limit(p->ud) : 0;
    p->body_limit = limit;
    m->body.max = limit ? limit : SIZE_MAX;
    if (m->has_clen && m->content_length > limit)
        return fail(p, 413, "body_too_large", "request body too large");

    const char *expect = th_http_msg_header(m, "Expect");
    if (expect != NULL && m->minor >= 1) {
        if (strcasecmp(expect, "100-continue") != 0)
            return fail(p, 417, "expectation_failed", "unsupported Expect header");
        m->expect_continue = m->chunked || m->content_length > 0;
    }
    if (p->cbs != NULL && p->cbs->on_head != NULL) {
        int st = p->cbs->on_head(p->ud);
        if (st == 503) return fail(p, 503, "server_busy", "too many request bodies in memory; try again");
        if (st != 0) return fail(p, st, "rejected", "request rejected");
    }
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len)
{
    th_http_parser *p = of(hp);
    th_http_msg *m = &p->msg;
    if (len > p->body_limit || m->body.len > p->body_limit - len)
        return fail(p, 413, "body_too_large", "request body too large");
    int rc = th_buf_append(&m->body, at, len);
    if (rc == TH_BUF_EFULL) return fail(p, 413, "body_too_large", "request body too large");
    if (rc != TH_BUF_OK) return fail(p, 500, "out_of_memory", "out of memory");
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    th_http_parser *p = of(hp);
    p->msg.complete = true;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void th_http_parser_init(th_http_parser *p, size_t max_header, const th_http_parser_cbs *cbs, void *ud)
{
    memset(p, 0, sizeof *p);
    http_parser_init(&p->hp, HTTP_REQUEST);
    p->hp.data = p;
    p->cbs = cbs;
    p->ud = ud;
    p->max_header = max_header ? max_header : 16 * 1024;
    p->max_headers = MAX_HEADERS_DEFAULT;
    /* the head also holds NULs, path and query: room for them past the counted bytes */
    th_buf_init(&p->msg.head, p->max_header * 2 + 64);
    th_buf_init(&p->msg.body, 0); /* max set per request from body_limit (on_headers_complete) */
    p->msg.method_id = -1;
}

void th_http_parser_free(th_http_parser *p)
{
    th_buf_free(&p->msg.head);
    th_buf_free(&p->msg.body);
    free(p->msg.hdrs);
    p->msg.hdrs = NULL;
    p->msg.nhdrs = p->msg.hcap = 0;
}

size_t th_http_parser_feed(th_http_parser *p, const char *data, size_t len, int *status)
{
    *status = 0;
    if (p->err_status != 0) {
        *status = p->err_status;
        return 0;
    }
    if (p->msg.complete) return 0;
    size_t n = http_parser_execute(&p->hp, &settings, data, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&p->hp);
    if (e == HPE_OK || e == HPE_PAUSED) {
        if (p->msg.complete) return n;
        if (n < len && p->hp.upgrade) return len; /* bytes after an upgrade: not HTTP, dropped */
        return n;
    }
    if (p->err_status == 0) {
        if (e == HPE_HEADER_OVERFLOW)
            fail(p, 431, "headers_too_large", "request headers too large");
        else
            fail(p, 400, "bad_request", "malformed request");
    }
    *status = p->err_status;
    return n;
}

void th_http_parser_next(th_http_parser *p)
{
    th_http_msg *m = &p->msg;
    m->started = m->head_done = m->complete = false;
    if (m->head.cap > KEEP_HEAD_BYTES) th_buf_free(&m->head);
    if (m->body.cap > KEEP_BODY_BYTES) th_buf_free(&m->body);
    th_buf_reset(&m->head);
    th_buf_reset(&m->body);
    m->nhdrs = 0;
    if (HTTP_PARSER_ERRNO(&p->hp) == HPE_PAUSED) http_parser_pause(&p->hp, 0);
}
