#include "th_test.h"

#include "core/buf.h"
#include "core/str.h"
#include "routing/split.h"

#include <stdbool.h>
#include <stdint.h>

static bool ascii_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Checks the invariants that hold for every split of valid UTF-8 (ASCII whitespace only in gaps):
 * chunks in order and not overlapping, within the limit, whole code points, trimmed, and every byte
 * outside the chunks is whitespace. Returns the number of failed checks. */
static int check_invariants(const char *t, size_t len, size_t max, const th_split_chunk *c, size_t n)
{
    int bad = 0;
    size_t prev_end = 0;
    for (size_t i = 0; i < n; i++) {
        if (c[i].off < prev_end || c[i].len == 0 || c[i].off + c[i].len > len) return bad + 1;
        for (size_t k = prev_end; k < c[i].off; k++)
            bad += !ascii_space((unsigned char)t[k]);
        int64_t cps = th_utf8_count(t + c[i].off, c[i].len);
        bad += cps < 0 || (size_t)cps != c[i].chars;
        bad += c[i].chars > max;
        bad += ascii_space((unsigned char)t[c[i].off]);
        bad += ascii_space((unsigned char)t[c[i].off + c[i].len - 1]);
        prev_end = c[i].off + c[i].len;
    }
    for (size_t k = prev_end; k < len; k++)
        bad += !ascii_space((unsigned char)t[k]);
    return bad;
}

static const char *chunk_last_cp(const char *t, const th_split_chunk *c)
{
    const char *e = t + c->off + c->len - 1;
    while (e > t + c->off && ((unsigned char)*e & 0xC0) == 0x80)
        e--;
    return e;
}

TH_TEST(split_blank_input)
{
    size_t n = 99;
    th_split_chunk *c = th_split_text("", 0, 100, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(n, 0);
    free(c);
    c = th_split_text(" \n\t  \r\n \xe3\x80\x80 ", 12, 100, &n); /* ideographic space too */
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(n, 0);
    free(c);
    c = th_split_text(NULL, 0, 10, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(n, 0);
    free(c);
}

TH_TEST(split_short_text_one_trimmed_chunk)
{
    const char *t = "  Hello there. How are you?  \n";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 100, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 1);
    TH_CHECK_INT(c[0].off, 2);
    TH_CHECK_INT(c[0].len, 25);
    TH_CHECK_INT(c[0].chars, 25);
    free(c);
}

TH_TEST(split_packs_sentences_greedily)
{
    const char *t = "One two. Three four! Five six? Seven eight; nine ten.";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 22, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 3);
    TH_CHECK_INT(c[0].len, 20);
    TH_CHECK(strncmp(t + c[0].off, "One two. Three four!", 20) == 0);
    TH_CHECK_INT(c[1].len, 22); /* exactly the limit, ending at a sentence end */
    TH_CHECK(strncmp(t + c[1].off, "Five six? Seven eight;", 22) == 0);
    TH_CHECK(strncmp(t + c[2].off, "nine ten.", 9) == 0 && c[2].len == 9);
    TH_CHECK_INT(check_invariants(t, strlen(t), 22, c, n), 0);
    free(c);
}

TH_TEST(split_decimal_and_abbreviations_not_split)
{
    const char *t = "Pi is 3.14159 and e is 2.71828 roughly, see U.S.A. docs";
    size_t n;
    /* limit 20: the only ways in are spaces/clause; never right after a '.' inside a token */
    th_split_chunk *c = th_split_text(t, strlen(t), 20, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(check_invariants(t, strlen(t), 20, c, n), 0);
    for (size_t i = 0; i < n; i++) {
        size_t end = c[i].off + c[i].len;
        /* a cut never has a non-space right after it */
        TH_CHECK(end == strlen(t) || t[end] == ' ');
        TH_CHECK(c[i].off == 0 || t[c[i].off - 1] == ' ');
    }
    free(c);
    /* with a big limit, "3.14" and "e.g." stay whole */
    const char *u = "Take 3.14 as pi, e.g.the value. Next";
    c = th_split_text(u, strlen(u), 31, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 2);
    TH_CHECK_INT(c[0].len, 31); /* "Take 3.14 as pi, e.g.the value." */
    TH_CHECK(strncmp(u + c[1].off, "Next", 4) == 0);
    free(c);
}

TH_TEST(split_closing_quotes_and_brackets)
{
    const char *t = "He said \"Stop.\" Then (he left!) and went home.";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 30, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 2);
    TH_CHECK_INT(c[0].len, 15);
    TH_CHECK(strncmp(t + c[0].off, "He said \"Stop.\"", 15) == 0);
    TH_CHECK(strncmp(t + c[1].off, "Then (he left!) and went home.", c[1].len) == 0);
    free(c);
}

TH_TEST(split_paragraphs)
{
    const char *t = "Title without a stop\n\nFirst paragraph goes here with words\nand a wrapped line";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 60, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 2);
    TH_CHECK_INT(c[0].len, 20);
    TH_CHECK(strncmp(t + c[1].off, "First", 5) == 0);
    TH_CHECK_INT(check_invariants(t, strlen(t), 60, c, n), 0);
    free(c);
}

/* deterministic pseudo-random numbers for building texts */
static uint32_t lcg(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

TH_TEST(split_english_20000)
{
    static const char *const words[] = {"the",  "quick",  "brown",  "fox",     "jumps",      "over",
                                        "lazy", "dog",    "speech", "gateway", "synthesis",  "3.14",
                                        "e.g.", "U.S.A.", "voice",  "model",   "\"quoted\"", "(aside)"};
    static const char *const ends[] = {".", "!", "?", ";", ".\"", "!)"};
    th_buf b;
    th_buf_init(&b, 0);
    uint32_t seed = 7;
    while (b.len < 20000) {
        int nw = 3 + (int)(lcg(&seed) % 30);
        for (int w = 0; w < nw; w++) {
            TH_REQUIRE(th_buf_append_str(&b, words[lcg(&seed) % 18]) == 0);
            if (w + 1 < nw) {
                const char *sep = lcg(&seed) % 9 == 0 ? ", " : " ";
                TH_REQUIRE(th_buf_append_str(&b, sep) == 0);
            }
        }
        TH_REQUIRE(th_buf_append_str(&b, ends[lcg(&seed) % 6]) == 0);
        TH_REQUIRE(th_buf_append_str(&b, lcg(&seed) % 15 == 0 ? "\n\n" : " ") == 0);
    }
    const char *t = th_buf_cstr(&b);
    TH_REQUIRE(t != NULL);
    size_t len = b.len, n;
    th_split_chunk *c = th_split_text(t, len, 500, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK(n >= 40 && n <= 50);
    TH_CHECK_INT(check_invariants(t, len, 500, c, n), 0);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += c[i].chars;
        char last = t[c[i].off + c[i].len - 1];
        /* every sentence here is < 500 chars, so every chunk ends a sentence */
        TH_CHECK(last == '.' || last == '!' || last == '?' || last == ';' || last == '"' || last == ')');
        if (last == '"' || last == ')') TH_CHECK(strchr(".!?;", t[c[i].off + c[i].len - 2]) != NULL);
        /* greedy: the next sentence would not have fitted (checked loosely: chunks are well filled) */
        if (i + 1 < n) TH_CHECK(c[i].chars > 250);
    }
    /* reassembles to the input modulo whitespace */
    size_t nonspace = 0, in_chunks = 0;
    for (size_t k = 0; k < len; k++)
        nonspace += !ascii_space((unsigned char)t[k]);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < c[i].len; k++)
            in_chunks += !ascii_space((unsigned char)t[c[i].off + k]);
    TH_CHECK_INT(in_chunks, nonspace);
    TH_CHECK(total <= len);
    free(c);
    th_buf_free(&b);
}

TH_TEST(split_chinese_5000)
{
    static const char *const hanzi[] = {"我", "们", "的", "语", "音", "合", "成", "服", "务", "很", "好"};
    static const char *const ends[] = {"。", "！", "？"};
    th_buf b;
    th_buf_init(&b, 0);
    uint32_t seed = 11;
    size_t chars = 0;
    while (chars < 5000) {
        int nc = 5 + (int)(lcg(&seed) % 60);
        for (int k = 0; k < nc; k++) {
            TH_REQUIRE(th_buf_append_str(&b, hanzi[lcg(&seed) % 11]) == 0);
            if (k + 1 < nc && lcg(&seed) % 12 == 0) TH_REQUIRE(th_buf_append_str(&b, "，") == 0);
        }
        TH_REQUIRE(th_buf_append_str(&b, ends[lcg(&seed) % 3]) == 0);
        chars = (size_t)th_utf8_count((const char *)b.data, b.len);
    }
    const char *t = th_buf_cstr(&b);
    TH_REQUIRE(t != NULL);
    size_t n;
    th_split_chunk *c = th_split_text(t, b.len, 200, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK(n >= 25 && n <= 30);
    TH_CHECK_INT(check_invariants(t, b.len, 200, c, n), 0);
    size_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        sum += c[i].len;
        const char *e = chunk_last_cp(t, &c[i]);
        TH_CHECK(strncmp(e, "。", 3) == 0 || strncmp(e, "！", 3) == 0 || strncmp(e, "？", 3) == 0);
        TH_CHECK(c[i].chars > 130); /* sentences are <= 70 chars: packed greedily */
    }
    TH_CHECK_INT(sum, b.len); /* no spaces in the text: the chunks tile it */
    free(c);
    th_buf_free(&b);
}

TH_TEST(split_hard_cut_no_punctuation)
{
    /* 3,000 code points with no punctuation and no space, mixing 1-, 2-, 3- and 4-byte chars */
    static const char *const cps[] = {"a", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80"};
    th_buf b;
    th_buf_init(&b, 0);
    for (int i = 0; i < 3000; i++)
        TH_REQUIRE(th_buf_append_str(&b, cps[(i * 7 + i / 3) % 4]) == 0);
    const char *t = th_buf_cstr(&b);
    TH_REQUIRE(t != NULL);
    size_t n;
    th_split_chunk *c = th_split_text(t, b.len, 500, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 6);
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        TH_CHECK_INT(c[i].chars, 500);
        TH_CHECK_INT(c[i].off, off);
        TH_CHECK(((unsigned char)t[c[i].off] & 0xC0) != 0x80);
        TH_CHECK_INT(th_utf8_count(t + c[i].off, c[i].len), 500);
        off += c[i].len;
    }
    TH_CHECK_INT(off, b.len);
    free(c);
    /* an odd limit, so a cut lands between multi-byte chars */
    c = th_split_text(t, b.len, 333, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(n, 10);
    TH_CHECK_INT(check_invariants(t, b.len, 333, c, n), 0);
    for (size_t i = 0; i + 1 < n; i++)
        TH_CHECK_INT(c[i].chars, 333);
    free(c);
    th_buf_free(&b);
}

TH_TEST(split_long_sentence_cut_at_clause_then_space)
{
    /* no sentence end within the limit: the clause mark wins over later spaces */
    const char *t = "alpha beta gamma, delta epsilon zeta eta.";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 30, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 2);
    TH_CHECK_INT(c[0].len, 17); /* "alpha beta gamma," */
    TH_CHECK(strncmp(t + c[1].off, "delta", 5) == 0);
    TH_CHECK_INT(check_invariants(t, strlen(t), 30, c, n), 0);
    free(c);
    /* no clause mark: the last space */
    const char *u = "alpha beta gamma delta epsilon zeta";
    c = th_split_text(u, strlen(u), 20, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 2);
    TH_CHECK_INT(c[0].len, 16); /* "alpha beta gamma" */
    TH_CHECK_INT(c[1].len, 18);
    free(c);
    /* CJK clause marks need no space after them */
    const char *w = "我们的语音合成服务，很好很好很好、非常好";
    c = th_split_text(w, strlen(w), 12, &n);
    TH_REQUIRE(c != NULL);
    TH_REQUIRE(n == 2);
    TH_CHECK_INT(c[0].chars, 10); /* up to and including "，" */
    TH_CHECK_INT(check_invariants(w, strlen(w), 12, c, n), 0);
    free(c);
}

TH_TEST(split_emoji)
{
    const char *t = "I love it \xf0\x9f\x98\x8d\xf0\x9f\x91\x8d! Really \xf0\x9f\x8e\x89\xf0\x9f\x8e\x89. "
                    "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7 family";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 13, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(check_invariants(t, strlen(t), 13, c, n), 0);
    TH_REQUIRE(n == 3);
    TH_CHECK_INT(c[0].chars, 13); /* "I love it 😍👍!" */
    TH_CHECK_INT(c[1].chars, 10); /* "Really 🎉🎉." */
    TH_CHECK_INT(c[2].chars, 12); /* the ZWJ family (5 code points) and " family" */
    free(c);
    /* hard cuts through emoji never split a sequence */
    c = th_split_text(t, strlen(t), 1, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(check_invariants(t, strlen(t), 1, c, n), 0);
    free(c);
}

TH_TEST(split_zero_limit_means_unlimited)
{
    const char *t = "One. Two. Three.";
    size_t n;
    th_split_chunk *c = th_split_text(t, strlen(t), 0, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(n, 1);
    TH_CHECK_INT(c[0].len, strlen(t));
    free(c);
}

TH_TEST(split_linear_time)
{
    /* pathological shapes for a rescanning splitter: one early sentence end, then a huge run with
     * only spaces; and 1 MB with no boundary at all. Both must finish at once. */
    size_t len = 1u << 20;
    char *t = malloc(len);
    TH_REQUIRE(t != NULL);
    for (size_t i = 0; i < len; i++)
        t[i] = (i % 2) ? ' ' : 'x';
    t[2] = '.';
    size_t n;
    th_split_chunk *c = th_split_text(t, len, 100000, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(check_invariants(t, len, 100000, c, n), 0);
    free(c);
    memset(t, 'y', len);
    c = th_split_text(t, len, 7, &n);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(n, (len + 6) / 7);
    free(c);
    free(t);
}

TH_TEST_MAIN()
