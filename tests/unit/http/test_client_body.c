/* test_client_body: the layout of a request body given in pieces (th_cbody, client.c), which both upstream
 * engines send from: small pieces copied after the head, large ones borrowed, read back from any offset. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "http/client_eng.h"
#include "th_test.h"

static void count_release(void *ud)
{
    (*(int *)ud)++;
}

/* Everything from offset off on, through th_cbody_bufs, into dst; returns the byte count. */
static size_t gather(const th_cbody *b, const th_buf *own, uint64_t off, uint8_t *dst)
{
    uv_buf_t v[TH_CLIENT_MAX_SEGS * 2 + 2];
    size_t nv = th_cbody_bufs(b, own, off, v, sizeof v / sizeof v[0]), n = 0;
    for (size_t i = 0; i < nv; i++) {
        memcpy(dst + n, v[i].base, v[i].len);
        n += v[i].len;
    }
    return n;
}

TH_TEST(layout_copies_small_borrows_large_merges_adjacent)
{
    enum { BIG = 10000 };
    uint8_t *big = malloc(BIG);
    TH_REQUIRE(big != NULL);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (uint8_t)(i * 3 + 7);
    th_buf own;
    th_buf_init(&own, 0);
    TH_REQUIRE(th_buf_append_str(&own, "HEAD\r\n\r\n") == TH_BUF_OK);
    th_client_seg segs[] = {{(const uint8_t *)"ab", 2},
                            {(const uint8_t *)"cd", 2},
                            {big, BIG},
                            {NULL, 0},
                            {(const uint8_t *)"ef", 2}};
    int rel = 0;
    th_client_opts o = {.segs = segs, .nsegs = 5, .segs_release = count_release, .segs_ud = &rel};
    TH_REQUIRE(th_cbody_check(&o) == 0);
    th_cbody b;
    TH_REQUIRE(th_cbody_build(&b, &own, &o) == 0);
    TH_CHECK_INT(b.total, 8 + 4 + BIG + 2);
    TH_CHECK_INT(b.n, 3); /* head + "abcd" merged, big borrowed, "ef" */
    TH_CHECK(b.p[0].ext == NULL && b.p[0].len == 12);
    TH_CHECK(b.p[1].ext == big && b.p[1].len == BIG);
    TH_CHECK(b.p[2].ext == NULL && b.p[2].len == 2);
    TH_CHECK_INT(own.len, 14); /* the big piece was not copied */

    uint8_t *want = malloc(b.total), *got = malloc(b.total);
    TH_REQUIRE(want != NULL && got != NULL);
    memcpy(want, "HEAD\r\n\r\nabcd", 12);
    memcpy(want + 12, big, BIG);
    memcpy(want + 12 + BIG, "ef", 2);
    uint64_t offs[] = {0, 1, 11, 12, 13, 12 + BIG - 1, 12 + BIG, 12 + BIG + 1, b.total};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
        uint64_t off = offs[i];
        size_t n = gather(&b, &own, off, got);
        TH_CHECK_INT(n, b.total - off);
        TH_CHECK(memcmp(got, want + off, n) == 0);
        /* the copying reader, in small steps across piece edges */
        size_t m = 0, k;
        while ((k = th_cbody_copy(&b, &own, off + m, got + m, 7)) > 0)
            m += k;
        TH_CHECK_INT(m, b.total - off);
        TH_CHECK(memcmp(got, want + off, m) == 0);
    }
    uv_buf_t one[1];
    TH_CHECK_INT(th_cbody_bufs(&b, &own, 0, one, 1), 1); /* max respected */
    TH_CHECK_INT(rel, 0);
    th_cbody_release(&b);
    TH_CHECK_INT(rel, 1);
    th_cbody_release(&b);
    TH_CHECK_INT(rel, 1);
    TH_CHECK_INT(b.total, 0);
    free(want);
    free(got);
    free(big);
    th_buf_free(&own);
}

TH_TEST(plain_body_is_copied_and_has_no_release)
{
    th_buf own;
    th_buf_init(&own, 0);
    th_client_opts o = {.body = (const uint8_t *)"hello", .body_len = 5};
    TH_REQUIRE(th_cbody_check(&o) == 0);
    th_cbody b;
    TH_REQUIRE(th_cbody_build(&b, &own, &o) == 0);
    TH_CHECK_INT(b.n, 1);
    TH_CHECK_INT(b.total, 5);
    TH_CHECK(b.release == NULL);
    uint8_t got[8];
    TH_CHECK_INT(th_cbody_copy(&b, &own, 0, got, sizeof got), 5);
    TH_CHECK(memcmp(got, "hello", 5) == 0);
    th_cbody_release(&b);
    th_buf_free(&own);
}

TH_TEST(bad_bodies_are_refused)
{
    th_client_seg s[TH_CLIENT_MAX_SEGS + 1] = {{0}};
    TH_CHECK(th_cbody_check(&(th_client_opts){.body_len = 3}) != 0);
    TH_CHECK(th_cbody_check(&(th_client_opts){.nsegs = 1}) != 0);
    TH_CHECK(th_cbody_check(&(th_client_opts){.segs = s, .nsegs = TH_CLIENT_MAX_SEGS + 1}) != 0);
    TH_CHECK(th_cbody_check(&(th_client_opts){.segs = s, .nsegs = TH_CLIENT_MAX_SEGS}) == 0);
    TH_CHECK(th_cbody_check(&(th_client_opts){.segs = s, .nsegs = 1, .body = (const uint8_t *)"x"}) != 0);
    s[0].len = 1; /* a length with no bytes */
    TH_CHECK(th_cbody_check(&(th_client_opts){.segs = s, .nsegs = 1}) != 0);
    TH_CHECK(th_cbody_check(&(th_client_opts){0}) == 0);
}

TH_TEST_MAIN()
