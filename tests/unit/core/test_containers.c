/* Unit tests of core/list (the queue and the TH_DL_* lists), core/hash (FNV-1a, the table and its
 * rehash) and the request-id generator of core/uuid. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/list.h"
#include "core/uuid.h"
#include "th_test.h"

typedef struct item {
    int v;
    th_qlink link;
    struct item *prev, *next; /* a TH_DL_* list */
    th_hnode hn;
    char key[16];
} item;

/* The values of a queue, head to tail, as "1,2,3". */
static void q_values(th_qlink *h, char *out, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (th_qlink *l = h->next; l != h && o < n; l = l->next)
        o += (size_t)snprintf(out + o, n - o, "%s%d", o ? "," : "", TH_Q_OF(l, item, link)->v);
}

static void dl_values(const item *head, char *out, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (const item *i = head; i && o < n; i = i->next)
        o += (size_t)snprintf(out + o, n - o, "%s%d", o ? "," : "", i->v);
}

TH_TEST(queue)
{
    item it[4];
    memset(it, 0, sizeof it);
    for (int i = 0; i < 4; i++)
        it[i].v = i;
    th_qlink h;
    th_q_init(&h);
    TH_CHECK(th_q_empty(&h));
    TH_CHECK(!th_q_linked(&it[0].link));
    th_q_push(&h, &it[1].link);
    th_q_push(&h, &it[2].link);
    th_q_push_head(&h, &it[0].link);
    th_q_push(&h, &it[3].link);
    char s[64];
    q_values(&h, s, sizeof s);
    TH_CHECK_STR(s, "0,1,2,3");
    th_q_unlink(&it[2].link);
    th_q_unlink(&it[2].link); /* twice: nothing */
    TH_CHECK(!th_q_linked(&it[2].link));
    q_values(&h, s, sizeof s);
    TH_CHECK_STR(s, "0,1,3");
    th_q_unlink(&it[0].link);
    th_q_unlink(&it[3].link);
    q_values(&h, s, sizeof s);
    TH_CHECK_STR(s, "1");
    th_q_unlink(&it[1].link);
    TH_CHECK(th_q_empty(&h));
}

TH_TEST(dl_lists)
{
    item it[4];
    memset(it, 0, sizeof it);
    for (int i = 0; i < 4; i++)
        it[i].v = i;
    item *head = NULL, *tail = NULL;
    TH_DL_PUSH_BACK_T(head, tail, &it[1], prev, next);
    TH_DL_PUSH_BACK_T(head, tail, &it[2], prev, next);
    TH_DL_PUSH_FRONT_T(head, tail, &it[0], prev, next);
    TH_DL_PUSH_BACK_T(head, tail, &it[3], prev, next);
    char s[64];
    dl_values(head, s, sizeof s);
    TH_CHECK_STR(s, "0,1,2,3");
    TH_CHECK(tail == &it[3] && tail->prev == &it[2]);
    TH_DL_UNLINK_T(head, tail, &it[3], prev, next); /* the tail */
    TH_CHECK(tail == &it[2] && it[3].prev == NULL && it[3].next == NULL);
    TH_DL_UNLINK_T(head, tail, &it[0], prev, next); /* the head */
    TH_CHECK(head == &it[1]);
    TH_DL_UNLINK_T(head, tail, &it[1], prev, next);
    TH_DL_UNLINK_T(head, tail, &it[2], prev, next);
    TH_CHECK(head == NULL && tail == NULL);

    /* head only (no tail pointer) */
    item *h = NULL;
    for (int i = 0; i < 3; i++)
        TH_DL_PUSH_FRONT(h, &it[i], prev, next);
    dl_values(h, s, sizeof s);
    TH_CHECK_STR(s, "2,1,0");
    TH_DL_UNLINK(h, &it[1], prev, next); /* the middle */
    dl_values(h, s, sizeof s);
    TH_CHECK_STR(s, "2,0");
    TH_CHECK(it[0].prev == &it[2]);
    TH_DL_UNLINK(h, &it[2], prev, next);
    TH_DL_UNLINK(h, &it[0], prev, next);
    TH_CHECK(h == NULL);
}

TH_TEST(fnv1a)
{
    /* FNV-1a steps with the 64-bit prime from the table's own basis (hash.h) */
    const uint64_t basis = 1469598103934665603ULL, prime = 1099511628211ULL;
    TH_CHECK(th_hash_str("") == basis);
    TH_CHECK(th_hash_str("a") == (basis ^ 'a') * prime);
    TH_CHECK(th_hash_str("ab") == (((basis ^ 'a') * prime) ^ 'b') * prime);
    TH_CHECK(th_hash_str("ab") != th_hash_str("ba"));
}

TH_TEST(hash_table_and_rehash)
{
    enum { N = 1000 };
    item *it = calloc(N, sizeof *it);
    TH_REQUIRE(it != NULL);
    th_htab t;
    TH_REQUIRE(th_htab_init(&t, 4) == 0);
    for (int i = 0; i < N; i++) {
        it[i].v = i;
        snprintf(it[i].key, sizeof it[i].key, "k%d", i);
        th_htab_add(&t, &it[i].hn, it[i].key);
    }
    TH_CHECK_INT(t.n, N);
    TH_CHECK(t.nb >= N); /* doubled from 4 as it filled */
    int found = 0;
    for (int i = 0; i < N; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        th_hnode *n = th_htab_find(&t, k);
        if (n && TH_HT_OF(n, item, hn)->v == i) found++;
    }
    TH_CHECK_INT(found, N);
    TH_CHECK(th_htab_find(&t, "k1000") == NULL);
    TH_CHECK(th_htab_find(&t, "") == NULL);
    for (int i = 0; i < N; i += 2)
        th_htab_del(&t, &it[i].hn);
    TH_CHECK_INT(t.n, N / 2);
    size_t seen = 0, odd = 0;
    TH_HTAB_EACH(&t, n)
    {
        seen++;
        if (TH_HT_OF(n, item, hn)->v % 2 == 1) odd++;
    }
    TH_CHECK_INT(seen, N / 2);
    TH_CHECK_INT(odd, N / 2);
    TH_CHECK(th_htab_find(&t, "k2") == NULL);
    TH_CHECK(th_htab_find(&t, "k3") != NULL);
    th_htab_free(&t);
    TH_CHECK(t.b == NULL && t.n == 0);
    free(it);
}

TH_TEST(request_ids)
{
    th_uuid_gen g, g2;
    th_uuid_gen_init(&g);
    th_uuid_gen_init(&g2);
    char a[TH_UUID_LEN + 1], b[TH_UUID_LEN + 1], c[TH_UUID_LEN + 1];
    th_uuid_gen_next(&g, a);
    th_uuid_gen_next(&g, b);
    th_uuid_gen_next(&g2, c);
    TH_CHECK(th_uuid_valid(a) && th_uuid_valid(b) && th_uuid_valid(c));
    TH_CHECK_INT((int)strlen(a), TH_UUID_LEN);
    TH_CHECK(a[14] == '4');                           /* version 4 */
    TH_CHECK(strchr("89ab", a[19]) != NULL);          /* RFC 4122 variant */
    TH_CHECK(strcmp(a, b) != 0 && strcmp(a, c) != 0); /* two generators are seeded apart */
}

TH_TEST_MAIN()
