/* buf: a growable byte buffer with a hard maximum size.
 *
 * Every buffer that a peer can grow is a th_buf with a max; appending past
 * the max fails with TH_BUF_EFULL instead of growing. */
#ifndef TH_CORE_BUF_H
#define TH_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

enum { TH_BUF_OK = 0, TH_BUF_ENOMEM = -1, TH_BUF_EFULL = -2 };

typedef struct th_buf {
    uint8_t *data; /* NULL until the first append */
    size_t len;    /* bytes in use */
    size_t cap;    /* bytes allocated */
    size_t max;    /* hard limit on len; 0 = SIZE_MAX */
} th_buf;

/** Initialises an empty buffer that may hold at most max bytes (0: no limit). */
void th_buf_init(th_buf *b, size_t max);
/** Appends n bytes. Returns TH_BUF_OK, TH_BUF_ENOMEM or TH_BUF_EFULL; on failure b is unchanged. */
int th_buf_append(th_buf *b, const void *p, size_t n);
int th_buf_append_str(th_buf *b, const char *s);
int th_buf_append_byte(th_buf *b, uint8_t c);
/** printf-style append (bounded, vsnprintf). */
int th_buf_appendf(th_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int th_buf_vappendf(th_buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/** Appends s as the inside of a JSON string (quotes not included), escaping as JSON requires. */
int th_buf_append_json_str(th_buf *b, const char *s, size_t n);
/** Makes sure at least n more bytes fit without reallocating. */
int th_buf_reserve(th_buf *b, size_t n);
/** Removes n bytes from the front. */
void th_buf_consume(th_buf *b, size_t n);
/** Returns a NUL-terminated view (the NUL is not counted in len); NULL on ENOMEM. */
char *th_buf_cstr(th_buf *b);
/** Hands the memory to the caller (who frees it) and resets b. */
uint8_t *th_buf_steal(th_buf *b, size_t *len);
void th_buf_reset(th_buf *b); /* len = 0, keeps memory */
void th_buf_free(th_buf *b);  /* frees memory, keeps max */

#endif
