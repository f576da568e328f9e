/* body: readers of request bodies into a flat list of fields.
 *
 * Decisions worth knowing (see also body.h):
 * - Every reader appends to f. On any error f may hold the fields read so far; it is always safe to
 *   th_form_free() it, and the caller is expected to do so.
 * - A form holds at most f->max_fields fields (0 = TH_BODY_MAX_FIELDS_DEFAULT); one more is MALFORMED.
 * - urlencoded: pairs split on '&' only; empty pairs ("a=1&&b=2", a trailing '&') are skipped; a key
 *   without '=' gets the value ""; names and values are %XX and '+' decoded; a name may not decode
 *   to a NUL byte, a value may hold any bytes (value_len).
 * - multipart: part headers are bounded (TH_BODY_MAX_PART_HEADER bytes per part); obsolete header
 *   folding is not supported; filename* (RFC 5987, UTF-8 or ISO-8859-1) wins over filename; quoted
 *   strings are unescaped as RFC 7230 says (backslash escapes); the epilogue is ignored.
 * - JSON: nesting is checked by a byte scanner before jansson sees the input (the top-level object is
 *   depth 1; max_depth 0 = TH_JSON_MAX_DEPTH). Duplicate keys are rejected (JSON_REJECT_DUPLICATES),
 *   so "last one wins" can never differ between us and another reader of the same body. NUL
 *   characters (\u0000), invalid UTF-8 and trailing garbage are rejected by jansson. Reals are given
 *   as the shortest text that reads back to the same double ("1.5", "2.0").
 */
#include "http/body.h"

#include "core/buf.h"
#include "core/str.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TH_BODY_MAX_FIELDS_DEFAULT 256
#define TH_BODY_MAX_PART_HEADER 8192
#define TH_BODY_MAX_BOUNDARY 70

typedef struct span {
    const char *p;
    size_t n;
} span;

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int nomem(char *err, size_t errlen)
{
    set_err(err, errlen, "out of memory");
    return TH_BODY_NOMEM;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static span trim(span s)
{
    while (s.n > 0 && is_ows(s.p[0])) {
        s.p++;
        s.n--;
    }
    while (s.n > 0 && is_ows(s.p[s.n - 1]))
        s.n--;
    return s;
}

static bool span_ieq(span s, const char *lit)
{
    return th_strn_ieq(s.p, s.n, lit);
}

/* ---- fields ---------------------------------------------------------------------------------- */

void th_form_init(th_form *f)
{
    f->fields = NULL;
    f->n = 0;
    f->cap = 0;
    f->max_fields = 0;
}

static void field_free(th_field *fl)
{
    free(fl->name);
    free(fl->value);
    free(fl->filename);
    free(fl->content_type);
}

void th_form_free(th_form *f)
{
    if (f == NULL) return;
    for (size_t i = 0; i < f->n; i++)
        field_free(&f->fields[i]);
    free(f->fields);
    f->fields = NULL;
    f->n = 0;
    f->cap = 0; /* max_fields is kept: the form can be reused with the same limit */
}

const th_field *th_form_get(const th_form *f, const char *name)
{
    if (f == NULL || name == NULL) return NULL;
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->fields[i].name, name) == 0) return &f->fields[i];
    return NULL;
}

static size_t form_limit(const th_form *f)
{
    return f->max_fields ? f->max_fields : TH_BODY_MAX_FIELDS_DEFAULT;
}

/* Checks the field limit and makes room for one more field. */
static int form_room(th_form *f, char *err, size_t errlen)
{
    size_t limit = form_limit(f);
    if (f->n >= limit) {
        set_err(err, errlen, "too many fields (max %zu)", limit);
        return TH_BODY_MALFORMED;
    }
    if (f->n < f->cap) return TH_BODY_OK;
    size_t cap = f->cap ? f->cap * 2 : 8;
    if (cap > limit) cap = limit;
    if (cap <= f->n || cap > SIZE_MAX / sizeof(th_field)) return nomem(err, errlen);
    th_field *p = realloc(f->fields, cap * sizeof(th_field));
    if (p == NULL) return nomem(err, errlen);
    f->fields = p;
    f->cap = cap;
    return TH_BODY_OK;
}

/* Appends fl (taking ownership of its strings: they are freed on failure). */
static int form_add(th_form *f, th_field *fl, char *err, size_t errlen)
{
    int rc = form_room(f, err, errlen);
    if (rc != TH_BODY_OK) {
        field_free(fl);
        return rc;
    }
    f->fields[f->n++] = *fl;
    return TH_BODY_OK;
}

/* ---- percent-decoding ------------------------------------------------------------------------ */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long th_url_decode(const char *in, size_t len, char *out, bool plus_is_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        if (c == '%') {
            if (len - i < 3) return -1;
            int hi = hexval(in[i + 1]), lo = hexval(in[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            out[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out[o++] = ' ';
        } else {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return (long)o;
}

/* Decodes n bytes into a new string; *out_len gets its length. Returns TH_BODY_OK, MALFORMED (bad
 * escape) or NOMEM. */
static int decode_dup(const char *in, size_t n, bool plus, char **out, size_t *out_len)
{
    *out = NULL;
    char *p = malloc(n + 1);
    if (p == NULL) return TH_BODY_NOMEM;
    long r = th_url_decode(in, n, p, plus);
    if (r < 0) {
        free(p);
        return TH_BODY_MALFORMED;
    }
    *out = p;
    *out_len = (size_t)r;
    return TH_BODY_OK;
}

/* ---- application/x-www-form-urlencoded --------------------------------------------------------- */

int th_form_parse_urlencoded(th_form *f, const char *data, size_t len, char *err, size_t errlen)
{
    if (data == NULL) len = 0;
    size_t i = 0;
    while (i < len) {
        const char *amp = memchr(data + i, '&', len - i);
        size_t end = amp ? (size_t)(amp - data) : len;
        if (end > i) {
            const char *pair = data + i;
            size_t plen = end - i;
            const char *eq = memchr(pair, '=', plen);
            size_t klen = eq ? (size_t)(eq - pair) : plen;
            th_field fl = {0};
            size_t nlen = 0;
            int rc = decode_dup(pair, klen, true, &fl.name, &nlen);
            if (rc == TH_BODY_OK && eq)
                rc = decode_dup(eq + 1, plen - klen - 1, true, &fl.value, &fl.value_len);
            else if (rc == TH_BODY_OK)
                rc = decode_dup("", 0, true, &fl.value, &fl.value_len);
            if (rc == TH_BODY_NOMEM) {
                field_free(&fl);
                return nomem(err, errlen);
            }
            if (rc == TH_BODY_MALFORMED) {
                field_free(&fl);
                set_err(err, errlen, "malformed form body: bad percent-escape in the pair at byte %zu", i);
                return TH_BODY_MALFORMED;
            }
            if (memchr(fl.name, '\0', nlen) != NULL) {
                field_free(&fl);
                set_err(err, errlen, "malformed form body: NUL byte in a field name");
                return TH_BODY_MALFORMED;
            }
            rc = form_add(f, &fl, err, errlen);
            if (rc != TH_BODY_OK) return rc;
        }
        i = end + 1;
    }
    return TH_BODY_OK;
}

/* Compares an encoded query key with name, decoding on the fly. false on a bad escape. */
static bool key_matches(const char *k, size_t klen, const char *name)
{
    size_t j = 0;
    for (size_t i = 0; i < klen; i++) {
        char c = k[i];
        if (c == '%') {
            if (klen - i < 3) return false;
            int hi = hexval(k[i + 1]), lo = hexval(k[i + 2]);
            if (hi < 0 || lo < 0) return false;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (name[j] == '\0' || name[j] != c) return false;
        j++;
    }
    return name[j] == '\0';
}

/* NULL when absent, when the value has a bad escape or decodes to a NUL byte, or on ENOMEM. */
char *th_query_get(const char *query, const char *name)
{
    if (query == NULL || name == NULL) return NULL;
    if (query[0] == '?') query++;
    size_t len = strlen(query);
    size_t i = 0;
    while (i < len) {
        const char *amp = memchr(query + i, '&', len - i);
        size_t end = amp ? (size_t)(amp - query) : len;
        const char *pair = query + i;
        size_t plen = end - i;
        const char *eq = memchr(pair, '=', plen);
        size_t klen = eq ? (size_t)(eq - pair) : plen;
        if (plen > 0 && key_matches(pair, klen, name)) {
            const char *v = eq ? eq + 1 : "";
            size_t vlen = eq ? plen - klen - 1 : 0;
            char *out = NULL;
            size_t olen = 0;
            if (decode_dup(v, vlen, true, &out, &olen) != TH_BODY_OK) return NULL;
            if (memchr(out, '\0', olen) != NULL) {
                free(out);
                return NULL;
            }
            return out;
        }
        i = end + 1;
    }
    return NULL;
}

/* ---- header parameters (Content-Type, Content-Disposition) ------------------------------------- */

/* Reads the next "; name=value" of a header value at *s (up to end). The value span is raw: for a
 * quoted string, the inside of the quotes with escapes still in it. Returns 1 when a parameter was
 * read, 0 at the end, -1 on an unterminated quoted string. */
static int next_param(const char **s, const char *end, span *name, span *val, bool *quoted)
{
    const char *p = *s;
    for (;;) {
        while (p < end && *p != ';')
            p++;
        if (p >= end) {
            *s = p;
            return 0;
        }
        p++; /* ';' */
        while (p < end && is_ows(*p))
            p++;
        const char *n0 = p;
        while (p < end && *p != '=' && *p != ';')
            p++;
        *name = trim((span){n0, (size_t)(p - n0)});
        if (p >= end || *p == ';') {
            if (name->n == 0) continue; /* ";;" or a trailing ';' */
            *val = (span){p, 0};
            *quoted = false;
            *s = p;
            return 1;
        }
        p++; /* '=' */
        while (p < end && is_ows(*p))
            p++;
        if (p < end && *p == '"') {
            const char *v0 = ++p;
            while (p < end && *p != '"') {
                if (*p == '\\' && end - p > 1) p++;
                p++;
            }
            if (p >= end) return -1;
            *val = (span){v0, (size_t)(p - v0)};
            *quoted = true;
            p++; /* closing quote; anything up to the next ';' is ignored */
        } else {
            const char *v0 = p;
            while (p < end && *p != ';')
                p++;
            *val = trim((span){v0, (size_t)(p - v0)});
            *quoted = false;
        }
        *s = p;
        return 1;
    }
}

/* Copies a parameter value into a new string, undoing backslash escapes of a quoted string. */
static char *param_dup(span v, bool quoted)
{
    char *out = malloc(v.n + 1);
    if (out == NULL) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < v.n; i++) {
        if (quoted && v.p[i] == '\\' && i + 1 < v.n) i++;
        out[o++] = v.p[i];
    }
    out[o] = '\0';
    return out;
}

/* The media type of a header value: up to the first ';', trimmed. */
static span media_type(const char *ct)
{
    const char *semi = strchr(ct, ';');
    span s = {ct, semi ? (size_t)(semi - ct) : strlen(ct)};
    return trim(s);
}

/* ---- multipart/form-data ----------------------------------------------------------------------- */

typedef enum { DELIM_NONE, DELIM_PART, DELIM_CLOSE } delim_kind;

/* Looks at what follows "--boundary" at data[at]: "--" closes the body, optional spaces or tabs
 * then CRLF or LF open a part (*next is set past the line end), anything else means this was not a
 * delimiter. */
static delim_kind delim_after(const uint8_t *d, size_t len, size_t at, size_t *next)
{
    if (len - at >= 2 && d[at] == '-' && d[at + 1] == '-') return DELIM_CLOSE;
    while (at < len && (d[at] == ' ' || d[at] == '\t'))
        at++;
    if (at < len && d[at] == '\n') {
        *next = at + 1;
        return DELIM_PART;
    }
    if (len - at >= 2 && d[at] == '\r' && d[at + 1] == '\n') {
        *next = at + 2;
        return DELIM_PART;
    }
    return DELIM_NONE;
}

/* Finds the next delimiter line starting the search at from (the delimiter's leading LF must be at
 * or after from). Returns its kind; *lf is the position of that LF (SIZE_MAX for a delimiter at the
 * very start of the body) and *next what delim_after sets. DELIM_NONE when there is none. */
static delim_kind find_delim(const uint8_t *d, size_t len, size_t from, const char *delim, size_t dl,
                             size_t *lf, size_t *next)
{
    /* delim is "\n--boundary"; a body may also start with "--boundary" (no preamble). */
    if (from == 0 && len >= dl - 1 && memcmp(d, delim + 1, dl - 1) == 0) {
        delim_kind k = delim_after(d, len, dl - 1, next);
        if (k != DELIM_NONE) {
            *lf = SIZE_MAX;
            return k;
        }
    }
    size_t s = from;
    while (s < len) {
        const uint8_t *hit = memmem(d + s, len - s, delim, dl);
        if (hit == NULL) return DELIM_NONE;
        size_t at = (size_t)(hit - d);
        delim_kind k = delim_after(d, len, at + dl, next);
        if (k != DELIM_NONE) {
            *lf = at;
            return k;
        }
        s = at + 1;
    }
    return DELIM_NONE;
}

/* Gets the boundary parameter from a Content-Type value into out (at least 71 bytes). */
static int get_boundary(const char *ct, char *out, size_t *outlen, char *err, size_t errlen)
{
    if (ct == NULL) {
        set_err(err, errlen, "malformed multipart body: missing boundary parameter");
        return TH_BODY_MALFORMED;
    }
    const char *s = ct, *end = ct + strlen(ct);
    span name, val;
    bool quoted;
    int r;
    while ((r = next_param(&s, end, &name, &val, &quoted)) > 0) {
        if (!span_ieq(name, "boundary")) continue;
        size_t o = 0;
        for (size_t i = 0; i < val.n; i++) {
            if (quoted && val.p[i] == '\\' && i + 1 < val.n) i++;
            unsigned char c = (unsigned char)val.p[i];
            if (o >= TH_BODY_MAX_BOUNDARY || c < 0x20 || c > 0x7e) {
                set_err(err, errlen, "malformed multipart body: bad boundary (1 to 70 printable characters)");
                return TH_BODY_MALFORMED;
            }
            out[o++] = (char)c;
        }
        if (o == 0 || out[o - 1] == ' ') {
            set_err(err, errlen, "malformed multipart body: bad boundary (1 to 70 printable characters)");
            return TH_BODY_MALFORMED;
        }
        out[o] = '\0';
        *outlen = o;
        return TH_BODY_OK;
    }
    if (r < 0) {
        set_err(err, errlen, "malformed multipart body: bad Content-Type parameters");
        return TH_BODY_MALFORMED;
    }
    set_err(err, errlen, "malformed multipart body: missing boundary parameter");
    return TH_BODY_MALFORMED;
}

/* Decodes an RFC 5987 ext-value (charset'lang'pct-encoded). Sets *out to NULL (not an error) for a
 * charset other than UTF-8 or ISO-8859-1. */
static int ext_value_dup(span v, char **out)
{
    *out = NULL;
    const char *q1 = memchr(v.p, '\'', v.n);
    if (q1 == NULL) return TH_BODY_MALFORMED;
    span cs = {v.p, (size_t)(q1 - v.p)};
    const char *rest = q1 + 1;
    size_t rn = v.n - cs.n - 1;
    const char *q2 = memchr(rest, '\'', rn);
    if (q2 == NULL) return TH_BODY_MALFORMED;
    const char *enc = q2 + 1;
    size_t en = rn - (size_t)(q2 - rest) - 1;
    bool utf8 = span_ieq(cs, "utf-8"), latin1 = span_ieq(cs, "iso-8859-1");
    if (!utf8 && !latin1) return TH_BODY_OK;
    char *dec = NULL;
    size_t dn = 0;
    int rc = decode_dup(enc, en, false, &dec, &dn);
    if (rc != TH_BODY_OK) return rc;
    if (memchr(dec, '\0', dn) != NULL) {
        free(dec);
        return TH_BODY_MALFORMED;
    }
    if (utf8) {
        *out = dec;
        return TH_BODY_OK;
    }
    char *u = malloc(dn * 2 + 1); /* ISO-8859-1 to UTF-8: at most two bytes each */
    if (u == NULL) {
        free(dec);
        return TH_BODY_NOMEM;
    }
    size_t o = 0;
    for (size_t i = 0; i < dn; i++) {
        unsigned char c = (unsigned char)dec[i];
        if (c < 0x80) {
            u[o++] = (char)c;
        } else {
            u[o++] = (char)(0xC0 | (c >> 6));
            u[o++] = (char)(0x80 | (c & 0x3F));
        }
    }
    u[o] = '\0';
    free(dec);
    *out = u;
    return TH_BODY_OK;
}

/* Fills the name and filename of fl from a Content-Disposition value. */
static int parse_disposition(span cd, th_field *fl, char *err, size_t errlen)
{
    const char *s = cd.p, *end = cd.p + cd.n;
    span name, val;
    bool quoted;
    int r;
    char *fn_ext = NULL;
    while ((r = next_param(&s, end, &name, &val, &quoted)) > 0) {
        char **slot = NULL;
        if (span_ieq(name, "name") && fl->name == NULL) {
            slot = &fl->name;
        } else if (span_ieq(name, "filename") && fl->filename == NULL) {
            slot = &fl->filename;
        } else if (span_ieq(name, "filename*") && fn_ext == NULL) {
            int rc = ext_value_dup(val, &fn_ext);
            if (rc == TH_BODY_NOMEM) return nomem(err, errlen);
            if (rc != TH_BODY_OK) {
                set_err(err, errlen, "malformed multipart body: bad filename* parameter");
                return TH_BODY_MALFORMED;
            }
            continue;
        } else {
            continue;
        }
        *slot = param_dup(val, quoted);
        if (*slot == NULL) {
            free(fn_ext);
            return nomem(err, errlen);
        }
    }
    if (r < 0) {
        free(fn_ext);
        set_err(err, errlen, "malformed multipart body: bad Content-Disposition header");
        return TH_BODY_MALFORMED;
    }
    if (fn_ext != NULL) {
        free(fl->filename);
        fl->filename = fn_ext;
    }
    return TH_BODY_OK;
}

/* Reads the headers of one part starting at *pos; leaves *pos at the first byte of its body. */
static int parse_part_headers(const uint8_t *d, size_t len, size_t *pos, th_field *fl, char *err,
                              size_t errlen)
{
    size_t p = *pos, start = *pos;
    span cd = {NULL, 0}, ctype = {NULL, 0};
    for (;;) {
        size_t lim = len - start > TH_BODY_MAX_PART_HEADER ? start + TH_BODY_MAX_PART_HEADER : len;
        const uint8_t *nl = p < lim ? memchr(d + p, '\n', lim - p) : NULL;
        if (nl == NULL) {
            if (lim < len)
                set_err(err, errlen, "malformed multipart body: part headers too large (max %d bytes)",
                        TH_BODY_MAX_PART_HEADER);
            else
                set_err(err, errlen, "malformed multipart body: unterminated part headers");
            return TH_BODY_MALFORMED;
        }
        size_t e = (size_t)(nl - d);
        span line = {(const char *)d + p, e - p};
        p = e + 1;
        if (line.n > 0 && line.p[line.n - 1] == '\r') line.n--;
        if (line.n == 0) break;
        for (size_t i = 0; i < line.n; i++) {
            unsigned char c = (unsigned char)line.p[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f) {
                set_err(err, errlen, "malformed multipart body: control character in a part header");
                return TH_BODY_MALFORMED;
            }
        }
        const char *colon = memchr(line.p, ':', line.n);
        if (colon == NULL || colon == line.p || is_ows(line.p[0])) {
            set_err(err, errlen, "malformed multipart body: bad part header");
            return TH_BODY_MALFORMED;
        }
        span hn = trim((span){line.p, (size_t)(colon - line.p)});
        span hv = trim((span){colon + 1, line.n - (size_t)(colon - line.p) - 1});
        if (span_ieq(hn, "content-disposition") && cd.p == NULL)
            cd = hv;
        else if (span_ieq(hn, "content-type") && ctype.p == NULL)
            ctype = hv;
    }
    *pos = p;
    if (cd.p != NULL) {
        int rc = parse_disposition(cd, fl, err, errlen);
        if (rc != TH_BODY_OK) return rc;
    }
    if (fl->name == NULL) {
        set_err(err, errlen, "malformed multipart body: part without a name");
        return TH_BODY_MALFORMED;
    }
    if (ctype.p != NULL) {
        fl->content_type = th_strndup(ctype.p, ctype.n);
        if (fl->content_type == NULL) return nomem(err, errlen);
    }
    return TH_BODY_OK;
}

int th_form_parse_multipart(th_form *f, const char *content_type, const uint8_t *data, size_t len, char *err,
                            size_t errlen)
{
    char delim[3 + TH_BODY_MAX_BOUNDARY + 1] = "\n--";
    size_t blen = 0;
    int rc = get_boundary(content_type, delim + 3, &blen, err, errlen);
    if (rc != TH_BODY_OK) return rc;
    size_t dl = 3 + blen;
    if (data == NULL) len = 0;
    const uint8_t *d = len ? data : (const uint8_t *)"";

    size_t lf = 0, pos = 0;
    delim_kind k = find_delim(d, len, 0, delim, dl, &lf, &pos);
    if (k == DELIM_NONE) {
        set_err(err, errlen, "malformed multipart body: missing opening boundary");
        return TH_BODY_MALFORMED;
    }
    while (k == DELIM_PART) {
        if (pos >= len) break; /* "--boundary" CRLF and then nothing: no closing boundary */
        th_field fl = {0};
        rc = parse_part_headers(d, len, &pos, &fl, err, errlen);
        if (rc != TH_BODY_OK) {
            field_free(&fl);
            return rc;
        }
        size_t body = pos;
        k = find_delim(d, len, body, delim, dl, &lf, &pos);
        if (k == DELIM_NONE) {
            field_free(&fl);
            break;
        }
        size_t bend = lf;
        if (bend > body && d[bend - 1] == '\r') bend--;
        fl.value = malloc(bend - body + 1);
        if (fl.value == NULL) {
            field_free(&fl);
            return nomem(err, errlen);
        }
        if (bend > body) memcpy(fl.value, d + body, bend - body);
        fl.value[bend - body] = '\0';
        fl.value_len = bend - body;
        rc = form_add(f, &fl, err, errlen);
        if (rc != TH_BODY_OK) return rc;
    }
    if (k != DELIM_CLOSE) {
        set_err(err, errlen, "malformed multipart body: missing closing boundary");
        return TH_BODY_MALFORMED;
    }
    return TH_BODY_OK;
}

/* ---- JSON -------------------------------------------------------------------------------------- */

/* true when no array or object nests deeper than max_depth. Strings (and escapes in them) are
 * skipped, so brackets inside strings do not count. Stops at the first level too deep. */
static bool json_depth_ok(const uint8_t *d, size_t len, size_t max_depth)
{
    size_t depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = d[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) return false;
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return true;
}

static const char *json_reason(const json_error_t *e)
{
    switch (json_error_code(e)) {
    case json_error_invalid_utf8:
        return "invalid UTF-8";
    case json_error_premature_end_of_input:
        return "unexpected end of input";
    case json_error_end_of_input_expected:
        return "unexpected data after the JSON value";
    case json_error_null_character:
        return "\\u0000 is not allowed in strings";
    case json_error_null_byte_in_key:
        return "\\u0000 is not allowed in keys";
    case json_error_duplicate_key:
        return "duplicate key";
    case json_error_numeric_overflow:
        return "number out of range";
    case json_error_stack_overflow:
        return "nested too deeply";
    default:
        return e->text;
    }
}

/* th_json_parse_bounded, also saying whether a failure was MALFORMED or NOMEM in *rc. */
static json_t *parse_bounded(const uint8_t *data, size_t len, size_t max_depth, int *rc, char *err,
                             size_t errlen)
{
    if (max_depth == 0) max_depth = TH_JSON_MAX_DEPTH;
    if (data == NULL) len = 0;
    const char *buf = len ? (const char *)data : "";
    *rc = TH_BODY_MALFORMED;
    if (!json_depth_ok((const uint8_t *)buf, len, max_depth)) {
        set_err(err, errlen, "invalid JSON: nested deeper than %zu levels", max_depth);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (root != NULL) {
        *rc = TH_BODY_OK;
    } else if (json_error_code(&je) == json_error_out_of_memory || je.text[0] == '\0') {
        /* jansson 2.14 mostly fails on ENOMEM without setting an error; an allocation failing in its
         * lexer can still look like a syntax error (then the client gets a 400). */
        *rc = nomem(err, errlen);
    } else {
        set_err(err, errlen, "invalid JSON at line %d, column %d: %s", je.line, je.column, json_reason(&je));
    }
    return root;
}

json_t *th_json_parse_bounded(const uint8_t *data, size_t len, size_t max_depth, char *err, size_t errlen)
{
    int rc;
    return parse_bounded(data, len, max_depth, &rc, err, errlen);
}

/* The shortest text that reads back as v, JSON style ("2.0", not "2"). */
static int real_text(double v, char *out, size_t outlen)
{
    int n = 0;
    for (int prec = 1; prec <= 17; prec++) {
        n = snprintf(out, outlen, "%.*g", prec, v);
        if (n < 0 || (size_t)n >= outlen) return -1;
        if (strtod(out, NULL) == v) break;
    }
    if (strpbrk(out, ".eEn") == NULL) {
        if ((size_t)n + 2 >= outlen) return -1;
        out[n++] = '.';
        out[n++] = '0';
        out[n] = '\0';
    }
    return n;
}

/* Compact JSON text of an object or array into a new string (our allocator, not jansson's). */
static char *json_compact_dup(const json_t *v, size_t *outlen)
{
    size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
    size_t n = json_dumpb(v, NULL, 0, flags);
    if (n == 0) return NULL;
    char *out = malloc(n + 1);
    if (out == NULL) return NULL;
    if (json_dumpb(v, out, n, flags) != n) {
        free(out);
        return NULL;
    }
    out[n] = '\0';
    *outlen = n;
    return out;
}

static int json_member(th_form *f, const char *key, const json_t *v, char *err, size_t errlen)
{
    th_field fl = {0};
    char num[64];
    fl.name = th_strndup(key, strlen(key));
    if (fl.name == NULL) return nomem(err, errlen);
    const char *text = NULL;
    size_t tlen = 0;
    switch (json_typeof(v)) {
    case JSON_STRING:
        text = json_string_value(v);
        tlen = json_string_length(v);
        break;
    case JSON_INTEGER: {
        int n = snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        text = num;
        tlen = n > 0 ? (size_t)n : 0;
        break;
    }
    case JSON_REAL: {
        int n = real_text(json_real_value(v), num, sizeof num);
        text = num;
        tlen = n > 0 ? (size_t)n : 0;
        break;
    }
    case JSON_TRUE:
        text = "true";
        tlen = 4;
        break;
    case JSON_FALSE:
        text = "false";
        tlen = 5;
        break;
    case JSON_NULL:
        text = "";
        fl.is_null = true;
        break;
    case JSON_OBJECT:
    case JSON_ARRAY:
        fl.value = json_compact_dup(v, &fl.value_len);
        if (fl.value == NULL) {
            field_free(&fl);
            return nomem(err, errlen);
        }
        fl.is_json = true;
        break;
    }
    if (fl.value == NULL) {
        fl.value = th_strndup(text ? text : "", tlen);
        fl.value_len = tlen;
        if (fl.value == NULL) {
            field_free(&fl);
            return nomem(err, errlen);
        }
    }
    return form_add(f, &fl, err, errlen);
}

int th_form_parse_json(th_form *f, const uint8_t *data, size_t len, size_t max_depth, char *err,
                       size_t errlen)
{
    int rc;
    json_t *root = parse_bounded(data, len, max_depth, &rc, err, errlen);
    if (root == NULL) return rc;
    if (!json_is_object(root)) {
        set_err(err, errlen, "invalid JSON: the body must be an object");
        rc = TH_BODY_MALFORMED;
        goto out;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        rc = json_member(f, key, v, err, errlen);
        if (rc != TH_BODY_OK) goto out;
    }
out:
    json_decref(root);
    return rc;
}

/* ---- dispatch ---------------------------------------------------------------------------------- */

static bool is_json_type(span mt)
{
    if (span_ieq(mt, "application/json")) return true;
    /* application/<anything>+json (application/vnd.api+json, application/merge-patch+json ...) */
    const char *app = "application/";
    size_t al = strlen(app);
    if (mt.n <= al + 5 || !th_strn_ieq(mt.p, al, app)) return false;
    return th_strn_ieq(mt.p + mt.n - 5, 5, "+json");
}

int th_body_parse(th_form *f, const char *content_type, const uint8_t *data, size_t len, char *err,
                  size_t errlen)
{
    if (data == NULL) len = 0;
    span mt = {"", 0};
    if (content_type != NULL) mt = media_type(content_type);
    if (mt.n == 0) {
        size_t i = 0;
        while (i < len && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n'))
            i++;
        if (i < len && data[i] == '{')
            return th_form_parse_json(f, data, len, TH_JSON_MAX_DEPTH, err, errlen);
        return th_form_parse_urlencoded(f, (const char *)data, len, err, errlen);
    }
    if (span_ieq(mt, "application/x-www-form-urlencoded"))
        return th_form_parse_urlencoded(f, (const char *)data, len, err, errlen);
    if (is_json_type(mt)) return th_form_parse_json(f, data, len, TH_JSON_MAX_DEPTH, err, errlen);
    if (span_ieq(mt, "multipart/form-data"))
        return th_form_parse_multipart(f, content_type, data, len, err, errlen);
    set_err(err, errlen,
            "unsupported media type: use application/json, application/x-www-form-urlencoded or "
            "multipart/form-data");
    return TH_BODY_UNSUPPORTED;
}
