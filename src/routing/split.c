/* split: one forward pass over the text, O(n) time.
 *
 * Every position between two code points (and the end) gets a boundary class, decided from the code
 * point after it and a small state about what came before:
 *   SENT    after . ! ? ; (plus any closing quotes/brackets) when whitespace or the end follows;
 *           after 。！？； ．！？ (plus closers) whatever follows; before the second newline of a
 *           whitespace run (a blank line between paragraphs).
 *   CLAUSE  after , : (plus closers) when whitespace or the end follows; after ，、：, whatever follows.
 *   SPACE   before any whitespace.
 *   HARD    anywhere else.
 * The scanner keeps the last position of each class. A chunk starts at its first non-space code point
 * and the scanner runs until the window holds max_chars code points; if the text ends first, the rest is
 * the last chunk. Otherwise the chunk ends at the last SENT boundary inside the window, else the last
 * CLAUSE, else the last SPACE, else right at the window end. The scanner never goes back: after a cut at
 * the last boundary of a class, no boundary of that class (or a better one) lies between the cut and the
 * scanner, and the last one of each worse class is still the one remembered.
 *
 * Bytes that are not valid UTF-8 count as one code point each (the contract asks for valid input; this
 * only keeps bad input safe). max_chars == 0 means no limit. */
#include "routing/split.h"

#include "core/str.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

enum { B_SENT = 0, B_CLAUSE, B_SPACE, B_NCLASS, B_HARD = B_NCLASS };

enum { ST_NONE = 0, ST_TERM, ST_TERM_CJK, ST_CLAUSE, ST_CLAUSE_CJK };

static bool is_space(uint32_t c)
{
    switch (c) {
    case ' ':
    case '\t':
    case '\n':
    case '\v':
    case '\f':
    case '\r':
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
        return true;
    default:
        return c >= 0x2000 && c <= 0x200A;
    }
}

static bool is_closer(uint32_t c)
{
    switch (c) {
    case '"':
    case '\'':
    case ')':
    case ']':
    case '}':
    case 0xBB:   /* » */
    case 0x2019: /* ’ */
    case 0x201D: /* ” */
    case 0x203A: /* › */
    case 0x3009: /* 〉 */
    case 0x300B: /* 》 */
    case 0x300D: /* 」 */
    case 0x300F: /* 』 */
    case 0x3011: /* 】 */
    case 0x3015: /* 〕 */
    case 0x3017: /* 〗 */
    case 0x3019: /* 〙 */
    case 0x301B: /* 〛 */
    case 0xFF02: /* ＂ */
    case 0xFF07: /* ＇ */
    case 0xFF09: /* ） */
    case 0xFF3D: /* ］ */
    case 0xFF5D: /* ｝ */
        return true;
    default:
        return false;
    }
}

/* The state after code point c. Closers keep the state. */
static int next_state(int st, uint32_t c)
{
    switch (c) {
    case '.':
    case '!':
    case '?':
    case ';':
        return ST_TERM;
    case 0x3002: /* 。 */
    case 0xFF01: /* ！ */
    case 0xFF1F: /* ？ */
    case 0xFF1B: /* ； */
    case 0xFF0E: /* ． */
        return ST_TERM_CJK;
    case ',':
    case ':':
        return ST_CLAUSE;
    case 0xFF0C: /* ， */
    case 0x3001: /* 、 */
    case 0xFF1A: /* ： */
        return ST_CLAUSE_CJK;
    default:
        return is_closer(c) ? st : ST_NONE;
    }
}

/* Decodes the code point at s[i]; an invalid byte is taken as one code point on its own. */
static size_t decode(const char *s, size_t len, size_t i, uint32_t *cp)
{
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int l = th_utf8_decode(s + i, len - i, cp);
    if (l <= 0) {
        *cp = 0xFFFD;
        return 1;
    }
    return (size_t)l;
}

/* Byte offset of the code point that ends at `end` (end > start), stepping back over continuation
 * bytes only as far as a valid sequence allows. */
static size_t prev_start(const char *s, size_t start, size_t end)
{
    size_t p = end - 1;
    size_t back = 0;
    while (p > start && back < 3 && ((unsigned char)s[p] & 0xC0) == 0x80) {
        p--;
        back++;
    }
    uint32_t cp;
    int l = th_utf8_decode(s + p, end - p, &cp);
    if (l > 0 && p + (size_t)l == end) return p;
    return end - 1; /* not a valid sequence ending here: one byte */
}

typedef struct scanner {
    const char *s;
    size_t len;
    size_t pos, cp; /* next byte to classify, and its code point index */
    int st;
    int nl; /* newlines in the current whitespace run */
    size_t last[B_NCLASS], last_cp[B_NCLASS];
    bool has[B_NCLASS];
} scanner;

/* Classifies the boundary at sc->pos given the code point c after it (has_c false at the end). */
static int classify(const scanner *sc, bool has_c, uint32_t c)
{
    bool ws_or_end = !has_c || is_space(c);
    if (sc->st == ST_TERM_CJK || (sc->st == ST_TERM && ws_or_end)) return B_SENT;
    if (has_c && c == '\n' && sc->nl > 0) return B_SENT;
    if (sc->st == ST_CLAUSE_CJK || (sc->st == ST_CLAUSE && ws_or_end)) return B_CLAUSE;
    if (has_c && is_space(c)) return B_SPACE;
    return B_HARD;
}

static void note(scanner *sc, int cls)
{
    if (cls >= B_NCLASS) return;
    sc->last[cls] = sc->pos;
    sc->last_cp[cls] = sc->cp;
    sc->has[cls] = true;
}

/* Consumes one code point (pos < len), classifying the boundary before it. */
static void step(scanner *sc)
{
    uint32_t c;
    size_t l = decode(sc->s, sc->len, sc->pos, &c);
    note(sc, classify(sc, true, c));
    if (is_space(c)) {
        if (c == '\n') sc->nl++;
    } else {
        sc->nl = 0;
    }
    sc->st = next_state(sc->st, c);
    sc->pos += l;
    sc->cp++;
}

static bool push(th_split_chunk **arr, size_t *n, size_t *cap, size_t off, size_t len, size_t chars)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        if (ncap > SIZE_MAX / sizeof **arr) return false;
        th_split_chunk *p = realloc(*arr, ncap * sizeof **arr);
        if (p == NULL) return false;
        *arr = p;
        *cap = ncap;
    }
    (*arr)[(*n)++] = (th_split_chunk){.off = off, .len = len, .chars = chars};
    return true;
}

th_split_chunk *th_split_text(const char *text, size_t len, size_t max_chars, size_t *n)
{
    size_t count = 0, cap = 0;
    th_split_chunk *out = NULL;
    if (n != NULL) *n = 0;
    if (text == NULL) len = 0;
    if (max_chars == 0) max_chars = SIZE_MAX;

    scanner sc = {.s = text, .len = len};
    size_t s = 0, s_cp = 0; /* start of the current chunk, before trimming */
    for (;;) {
        /* skip leading whitespace */
        while (s < len) {
            uint32_t c;
            size_t l = decode(text, len, s, &c);
            if (!is_space(c)) break;
            s += l;
            s_cp++;
        }
        if (s >= len) break;
        while (sc.pos < s) /* the whitespace ran past the scanner */
            step(&sc);

        /* fill the window */
        bool full = false;
        for (;;) {
            if (sc.pos >= len) {
                note(&sc, classify(&sc, false, 0));
                break;
            }
            if (sc.cp - s_cp >= max_chars) {
                uint32_t c;
                (void)decode(text, len, sc.pos, &c);
                note(&sc, classify(&sc, true, c));
                full = true;
                break;
            }
            step(&sc);
        }

        size_t cut = sc.pos, cut_cp = sc.cp;
        if (full) {
            for (int k = 0; k < B_NCLASS; k++) {
                if (sc.has[k] && sc.last[k] > s) {
                    cut = sc.last[k];
                    cut_cp = sc.last_cp[k];
                    break;
                }
            }
        }

        /* trim trailing whitespace */
        size_t e = cut, e_cp = cut_cp;
        while (e > s) {
            size_t p = prev_start(text, s, e);
            uint32_t c;
            size_t l = decode(text, len, p, &c);
            if (p + l != e || !is_space(c)) break;
            e = p;
            e_cp--;
        }
        if (!push(&out, &count, &cap, s, e - s, e_cp - s_cp)) {
            free(out);
            return NULL;
        }
        s = cut;
        s_cp = cut_cp;
        if (!full) break;
    }

    if (out == NULL) {
        out = malloc(sizeof *out); /* an empty result is not an error */
        if (out == NULL) return NULL;
    }
    if (n != NULL) *n = count;
    return out;
}
