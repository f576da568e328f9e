#include "core/str.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int th_strn_to_i64(const char *s, size_t n, int64_t min, int64_t max, int64_t *out)
{
    if (n == 0) return -1;
    size_t i = 0;
    bool neg = false;
    if (s[0] == '-' || s[0] == '+') {
        neg = s[0] == '-';
        i = 1;
        if (n == 1) return -1;
    }
    uint64_t v = 0;
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    int64_t r;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return -1;
        r = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX) return -1;
        r = (int64_t)v;
    }
    if (r < min || r > max) return -1;
    *out = r;
    return 0;
}

int th_str_to_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    return th_strn_to_i64(s, strlen(s), min, max, out);
}

int th_str_to_double(const char *s, double min, double max, double *out)
{
    if (s == NULL || *s == 0 || strlen(s) > 64) return -1;
    /* no hex floats, infinities or NaN: digits, one dot, exponent */
    for (const char *p = s; *p; p++)
        if (!strchr("0123456789.+-eE", *p)) return -1;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != 0 || !isfinite(v)) return -1;
    if (v < min || v > max) return -1;
    *out = v;
    return 0;
}

static int split_num_unit(const char *s, double *num, const char **unit)
{
    size_t i = 0;
    while (s[i] && (s[i] == '.' || (s[i] >= '0' && s[i] <= '9')))
        i++;
    if (i == 0 || i > 32) return -1;
    char tmp[40];
    memcpy(tmp, s, i);
    tmp[i] = 0;
    if (th_str_to_double(tmp, 0, 1e15, num) != 0) return -1;
    *unit = s + i;
    return 0;
}

int th_str_to_duration_ms(const char *s, uint64_t *out_ms)
{
    double v;
    const char *u;
    if (s == NULL || split_num_unit(s, &v, &u) != 0) return -1;
    double mul;
    if (*u == 0 || strcmp(u, "s") == 0)
        mul = 1000;
    else if (strcmp(u, "ms") == 0)
        mul = 1;
    else if (strcmp(u, "m") == 0)
        mul = 60e3;
    else if (strcmp(u, "h") == 0)
        mul = 3600e3;
    else if (strcmp(u, "d") == 0)
        mul = 86400e3;
    else
        return -1;
    double ms = v * mul;
    if (ms > 1e15) return -1;
    *out_ms = (uint64_t)llround(ms);
    return 0;
}

int th_str_to_size(const char *s, uint64_t *out)
{
    double v;
    const char *u;
    if (s == NULL || split_num_unit(s, &v, &u) != 0) return -1;
    static const struct {
        const char *name;
        double mul;
    } units[] = {
        {"", 1},     {"B", 1},    {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"KB", 1e3},
        {"MB", 1e6}, {"GB", 1e9}, {"K", 1024.0},   {"M", 1048576.0},   {"G", 1073741824.0}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(u, units[i].name) == 0) {
            double b = v * units[i].mul;
            if (b > 9e15) return -1;
            *out = (uint64_t)llround(b);
            return 0;
        }
    }
    return -1;
}

int th_utf8_decode(const char *str, size_t n, uint32_t *cp)
{
    const unsigned char *s = (const unsigned char *)str;
    if (n == 0) return -1;
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int len;
    uint32_t v, min;
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        v = c & 0x1F;
        min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        v = c & 0x0F;
        min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        v = c & 0x07;
        min = 0x10000;
    } else
        return -1;
    if (n < (size_t)len) return -1;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return -1;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return -1;
    *cp = v;
    return len;
}

int64_t th_utf8_count(const char *s, size_t n)
{
    int64_t count = 0;
    size_t i = 0;
    while (i < n) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
        } else {
            uint32_t cp;
            int l = th_utf8_decode(s + i, n - i, &cp);
            if (l < 0) return -1;
            i += (size_t)l;
        }
        count++;
    }
    return count;
}

size_t th_utf8_prefix(const char *s, size_t n, size_t max_cp)
{
    size_t i = 0, count = 0;
    while (i < n && count < max_cp) {
        uint32_t cp;
        int l = th_utf8_decode(s + i, n - i, &cp);
        if (l < 0) break;
        i += (size_t)l;
        count++;
    }
    return i;
}

size_t th_strlcpy(char *dst, const char *src, size_t dstlen)
{
    size_t n = strlen(src);
    if (dstlen > 0) {
        size_t c = n < dstlen - 1 ? n : dstlen - 1;
        memcpy(dst, src, c);
        dst[c] = 0;
    }
    return n;
}

void th_str_append_cut(char *dst, size_t cap, size_t *len, const void *src, size_t n)
{
    if (cap == 0 || *len >= cap) return;
    size_t room = cap - 1 - *len;
    if (n > room) n = room;
    memcpy(dst + *len, src, n);
    *len += n;
    dst[*len] = 0;
}

char *th_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p == NULL) return NULL;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

bool th_strn_ieq(const char *a, size_t alen, const char *b)
{
    size_t bl = strlen(b);
    if (alen != bl) return false;
    for (size_t i = 0; i < alen; i++)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}

bool th_str_startswith(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

bool th_glob_match(const char *p, const char *s)
{
    const char *star = NULL, *ss = NULL;
    while (*s) {
        if (*p == '?' || *p == *s) {
            p++;
            s++;
        } else if (*p == '*') {
            star = p++;
            ss = s;
        } else if (star) {
            p = star + 1;
            s = ++ss;
        } else
            return false;
    }
    while (*p == '*')
        p++;
    return *p == 0;
}

void th_hex(const uint8_t *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = 0;
}

size_t th_u64_dec(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

size_t th_i64_dec(char *out, int64_t v)
{
    if (v >= 0) return th_u64_dec(out, (uint64_t)v);
    out[0] = '-';
    return 1 + th_u64_dec(out + 1, (uint64_t)0 - (uint64_t)v);
}
