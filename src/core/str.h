/* str: strict parsing of numbers, durations and sizes; UTF-8; bounded copies. */
#ifndef TH_CORE_STR_H
#define TH_CORE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** Parses a whole string as a base-10 integer within [min,max]. 0 on success, -1 otherwise. */
int th_str_to_i64(const char *s, int64_t min, int64_t max, int64_t *out);
/** Same for n bytes that need not be NUL-terminated. */
int th_strn_to_i64(const char *s, size_t n, int64_t min, int64_t max, int64_t *out);
/** Parses a whole string as a finite double within [min,max]. */
int th_str_to_double(const char *s, double min, double max, double *out);
/** "500ms", "10s", "5m", "1h", "2d" (or a bare number of seconds) -> milliseconds. */
int th_str_to_duration_ms(const char *s, uint64_t *out_ms);
/** "64KiB", "1MiB", "2GiB", "10KB", "512" (bytes) -> bytes. */
int th_str_to_size(const char *s, uint64_t *out);

/** Counts Unicode code points in n bytes of UTF-8. Returns -1 when the bytes are not valid UTF-8
 * (overlongs, surrogates and values past U+10FFFF are invalid). */
int64_t th_utf8_count(const char *s, size_t n);
/** Length in bytes of the valid UTF-8 prefix of s that holds at most max_cp code points. */
size_t th_utf8_prefix(const char *s, size_t n, size_t max_cp);
/** Decodes one code point at s (n bytes available). Returns its byte length (1..4) and sets *cp,
 * or -1 when invalid. */
int th_utf8_decode(const char *s, size_t n, uint32_t *cp);

/** Copies at most dstlen-1 bytes and always NUL-terminates (dstlen > 0). Returns strlen(src). */
size_t th_strlcpy(char *dst, const char *src, size_t dstlen);
/** Appends n bytes of src to the text in dst (cap bytes, *len used) as far as they fit with a NUL after
 * them; the rest is dropped (a peer's error body, kept short for the log). */
void th_str_append_cut(char *dst, size_t cap, size_t *len, const void *src, size_t n);
/** malloc'd copy of n bytes plus NUL; NULL on ENOMEM. */
char *th_strndup(const char *s, size_t n);
/** ASCII case-insensitive compare of a counted string against a C string. */
bool th_strn_ieq(const char *a, size_t alen, const char *b);
/** true if s starts with prefix. */
bool th_str_startswith(const char *s, const char *prefix);
/** Shell-style glob with '*' and '?' only. */
bool th_glob_match(const char *pattern, const char *s);
/** Decimal digits of v into out (at least 20 bytes; 21 for the NUL), NUL-terminated. Returns the number of
 * digits. The hot paths that build Redis arguments use these instead of snprintf. */
size_t th_u64_dec(char *out, uint64_t v);
/** Same for a signed value (a leading '-'; at least 21 bytes, 22 for the NUL). */
size_t th_i64_dec(char *out, int64_t v);
/** Lower-case hex of n bytes into out (2n+1 bytes). */
void th_hex(const uint8_t *in, size_t n, char *out);

#endif
