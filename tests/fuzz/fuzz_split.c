/* fuzz_split: th_split_text with a limit taken from the first two bytes.
 *
 * Invariants, for any input: chunks in order and not overlapping, inside the text, non-empty, at most
 * max_chars code points, and every byte outside the chunks is whitespace (no non-space byte lost).
 * For valid UTF-8 also: chunk edges on code point boundaries, `chars` equal to the code point count,
 * and chunks trimmed. The whitespace set is spelled out here on its own, not taken from split.c. */
#include "core/str.h"
#include "routing/split.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static bool space_cp(uint32_t c)
{
    if (c == ' ' || (c >= '\t' && c <= '\r')) return true;
    if (c == 0x85 || c == 0xA0 || c == 0x1680 || c == 0x2028 || c == 0x2029) return true;
    if (c == 0x202F || c == 0x205F || c == 0x3000) return true;
    return c >= 0x2000 && c <= 0x200A;
}

/* Is text[a..b) whitespace only? Invalid bytes are not whitespace. */
static bool all_space(const char *t, size_t a, size_t b)
{
    while (a < b) {
        uint32_t cp;
        int l = th_utf8_decode(t + a, b - a, &cp);
        if (l <= 0 || !space_cp(cp)) return false;
        a += (size_t)l;
    }
    return true;
}

/* Is the code point starting at t[a] (a < n) whitespace? */
static bool space_at(const char *t, size_t n, size_t a)
{
    uint32_t cp;
    int l = th_utf8_decode(t + a, n - a, &cp);
    return l > 0 && space_cp(cp);
}

static bool space_before(const char *t, size_t off, size_t end)
{
    size_t p = end;
    do
        p--;
    while (p > off && ((unsigned char)t[p] & 0xC0) == 0x80);
    uint32_t cp;
    int l = th_utf8_decode(t + p, end - p, &cp);
    return l > 0 && p + (size_t)l == end && space_cp(cp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t max = ((size_t)data[0] << 8 | data[1]) % 600; /* 0 = no limit */
    const char *t = (const char *)data + 2;
    size_t n = size - 2;
    bool valid = th_utf8_count(t, n) >= 0;

    size_t nc = 0;
    th_split_chunk *c = th_split_text(t, n, max, &nc);
    if (c == NULL) return 0; /* ENOMEM */
    size_t prev = 0;
    for (size_t i = 0; i < nc; i++) {
        if (c[i].off < prev || c[i].len == 0 || c[i].off > n || c[i].len > n - c[i].off) abort();
        if (c[i].chars == 0 || c[i].chars > c[i].len) abort();
        if (max != 0 && c[i].chars > max) abort();
        if (valid) {
            if (!all_space(t, prev, c[i].off)) abort();
            int64_t cps = th_utf8_count(t + c[i].off, c[i].len);
            if (cps < 0 || (size_t)cps != c[i].chars) abort();
            if (space_at(t, n, c[i].off) || space_before(t, c[i].off, c[i].off + c[i].len)) abort();
        } else {
            /* the gap holds no byte that could be text */
            for (size_t k = prev; k < c[i].off; k++)
                if ((unsigned char)t[k] < 0x80 && !space_cp((unsigned char)t[k])) abort();
        }
        prev = c[i].off + c[i].len;
    }
    if (valid && !all_space(t, prev, n)) abort();
    if (valid && max == 0 && nc > 1) abort();
    free(c);
    return 0;
}
