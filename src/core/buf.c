#include "core/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void th_buf_init(th_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max ? max : SIZE_MAX;
}

int th_buf_reserve(th_buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n) return TH_BUF_EFULL;
    size_t need = b->len + n + 1; /* room for a NUL from th_buf_cstr */
    if (need <= b->cap) return TH_BUF_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL) return TH_BUF_ENOMEM;
    b->data = p;
    b->cap = cap;
    return TH_BUF_OK;
}

int th_buf_append(th_buf *b, const void *p, size_t n)
{
    if (n == 0) return TH_BUF_OK;
    int rc = th_buf_reserve(b, n);
    if (rc != TH_BUF_OK) return rc;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return TH_BUF_OK;
}

int th_buf_append_str(th_buf *b, const char *s)
{
    return th_buf_append(b, s, strlen(s));
}

int th_buf_append_byte(th_buf *b, uint8_t c)
{
    return th_buf_append(b, &c, 1);
}

int th_buf_vappendf(th_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap2);
    va_end(ap2);
    if (n < 0) return TH_BUF_ENOMEM;
    if ((size_t)n < sizeof small) return th_buf_append(b, small, (size_t)n);
    int rc = th_buf_reserve(b, (size_t)n);
    if (rc != TH_BUF_OK) return rc;
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return TH_BUF_OK;
}

int th_buf_appendf(th_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = th_buf_vappendf(b, fmt, ap);
    va_end(ap);
    return rc;
}

int th_buf_append_json_str(th_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;
    size_t clean = 0; /* the common case: nothing to escape, one copy */
    while (clean < n) {
        unsigned char c = (unsigned char)s[clean];
        if (c < 0x20 || c == '"' || c == '\\' || c == 0x7f) break;
        clean++;
    }
    if (clean == n) return th_buf_append(b, s, n);
    int rr = th_buf_reserve(b, n + 16);
    if (rr != TH_BUF_OK) return rr;
    for (size_t i = clean; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char u[6];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20 || c == 0x7f) {
            u[0] = '\\';
            u[1] = 'u';
            u[2] = '0';
            u[3] = '0';
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
        } else
            continue;
        int rc = th_buf_append(b, s + start, i - start);
        if (rc == TH_BUF_OK) rc = esc ? th_buf_append_str(b, esc) : th_buf_append(b, u, 6);
        if (rc != TH_BUF_OK) return rc;
        start = i + 1;
    }
    return th_buf_append(b, s + start, n - start);
}

void th_buf_consume(th_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

char *th_buf_cstr(th_buf *b)
{
    if (b->data == NULL || b->cap < b->len + 1) {
        size_t max = b->max;
        b->max = SIZE_MAX; /* the NUL never counts against the limit */
        int rc = th_buf_reserve(b, 1);
        b->max = max;
        if (rc != TH_BUF_OK) return NULL;
    }
    b->data[b->len] = 0;
    return (char *)b->data;
}

uint8_t *th_buf_steal(th_buf *b, size_t *len)
{
    uint8_t *p = b->data;
    if (len) *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}

void th_buf_reset(th_buf *b)
{
    b->len = 0;
}

void th_buf_free(th_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
