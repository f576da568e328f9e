/* Unit tests of src/governance/cache.c on a real uv loop: keys and their normalisation, miss / lead / hit,
 * coalescing of 50 identical requests (with a follower that joins halfway), failed flights, TTL, LRU by
 * bytes, the per-entry cap, unfollow from inside callbacks, a disabled cache, and the Redis backend
 * against a real redis-server. */
#include "th_test.h"

#include "governance/cache.h"
#include "config/config.h"
#include "store/redis.h"
#include "redis_proc.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

static th_config *cfg_of(const char *yaml)
{
    th_config_errors e = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &e);
    for (size_t i = 0; i < e.n; i++)
        fprintf(stderr, "config: %s: %s\n", e.items[i].path, e.items[i].message);
    th_config_errors_free(&e);
    return c;
}

/* What one th_cache_get and its follower callbacks saw. */
typedef struct req {
    int *in_get; /* set by the test around th_cache_get (shared by requests, or own_in_get) */
    int own_in_get;
    int get_calls;
    int early; /* follower callbacks before the get callback, or inside th_cache_get */
    th_cache_lookup res;
    uint8_t hit[65536];
    size_t hit_len;
    char hit_ct[64], hit_prov[64];
    uint8_t data[65536];
    size_t len;
    int data_calls, done, errors, status;
    char ct[64], prov[64], msg[64];
    /* unfollow tricks */
    th_cache_follower *unfollow_on_data[2]; /* unfollowed at the first on_data */
    bool unfollow_in_get, unfollow_on_done;
} req;

static void on_get(void *ud, const th_cache_lookup *res)
{
    req *r = ud;
    r->get_calls++;
    r->res = *res;
    if (res->outcome == TH_CACHE_HIT) {
        memcpy(r->hit, res->entry.data, res->entry.len);
        r->hit_len = res->entry.len;
        snprintf(r->hit_ct, sizeof r->hit_ct, "%s", res->entry.content_type);
        snprintf(r->hit_prov, sizeof r->hit_prov, "%s", res->entry.provider);
    }
    if (res->outcome == TH_CACHE_JOINED && r->unfollow_in_get) th_cache_unfollow(res->follower);
}

static void f_data(void *ud, const uint8_t *d, size_t n)
{
    req *r = ud;
    if (r->get_calls == 0 || (r->in_get && *r->in_get)) r->early++;
    if (r->len + n <= sizeof r->data) memcpy(r->data + r->len, d, n);
    r->len += n;
    r->data_calls++;
    for (int i = 0; i < 2; i++)
        if (r->unfollow_on_data[i]) {
            th_cache_follower *fl = r->unfollow_on_data[i];
            r->unfollow_on_data[i] = NULL;
            th_cache_unfollow(fl);
        }
}

static void f_done(void *ud, const char *ct, const char *prov)
{
    req *r = ud;
    if (r->get_calls == 0 || (r->in_get && *r->in_get)) r->early++;
    r->done++;
    snprintf(r->ct, sizeof r->ct, "%s", ct);
    snprintf(r->prov, sizeof r->prov, "%s", prov);
    if (r->unfollow_on_done) th_cache_unfollow(r->res.follower);
}

static void f_error(void *ud, int status, const char *msg)
{
    req *r = ud;
    if (r->get_calls == 0 || (r->in_get && *r->in_get)) r->early++;
    r->errors++;
    r->status = status;
    snprintf(r->msg, sizeof r->msg, "%s", msg);
}

static void get(th_cache *c, const char *key, req *r, int *in_get)
{
    th_cache_follower_cb fcb = {f_data, f_done, f_error, r};
    r->in_get = in_get ? in_get : &r->own_in_get;
    *r->in_get = 1;
    th_cache_get(c, key, &fcb, on_get, r);
    *r->in_get = 0;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void run_for(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_tick, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
}

static void finish(uv_loop_t *loop, th_cache *c, th_config *cfg)
{
    th_cache_free(c);
    uv_run(loop, UV_RUN_DEFAULT);
    th_config_unref(cfg);
}

static const char *key_of(const char *input, char out[TH_CACHE_KEY_LEN + 1])
{
    th_cache_key_parts p = {"local", "en-us", "mp3", 24000, 1.0, "", input, strlen(input)};
    th_cache_key(&p, out);
    return out;
}

TH_TEST(test_key_known_answers)
{
    /* SHA-256 over length-prefixed parts, speed as "%.4f": computed independently (Python hashlib), so
     * hubs of different builds sharing one Redis agree on keys. */
    char k[TH_CACHE_KEY_LEN + 1];
    th_cache_key_parts p = {"local", "en-us", "mp3", 24000, 1.0, "", "Hello world", 11};
    th_cache_key(&p, k);
    TH_CHECK_STR(k, "64e455735c552b4839ce64ffcb5b0e306ec0aeeace5c96d479a93e5a10be9a39");
    p.speed = 1.25;
    th_cache_key(&p, k);
    TH_CHECK_STR(k, "adade4d606c06071b94e6000c290e9212d3c7f6a21766375b5beca9f06dec086");
    th_cache_key_parts q = {"a,b", "alloy", "opus", 48000, 0.3333, "calm", "x", 1};
    th_cache_key(&q, k);
    TH_CHECK_STR(k, "66cac4edd3d3a646a28995231de0ec0fbcd78560d79a6d417eefc6b257002277");
}

TH_TEST(test_key_normalisation)
{
    char a[TH_CACHE_KEY_LEN + 1], b[TH_CACHE_KEY_LEN + 1];
    TH_CHECK_INT(strlen(key_of("Hello world", a)), 64);
    for (size_t i = 0; i < 64; i++)
        TH_CHECK((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f'));
    TH_CHECK_STR(key_of("Hello   world", b), a);
    TH_CHECK_STR(key_of("  Hello \t\n world \r\n", b), a);
    TH_CHECK(strcmp(key_of("Helloworld", b), a) != 0);
    TH_CHECK(strcmp(key_of("hello world", b), a) != 0); /* case matters */

    th_cache_key_parts p = {"local", "en-us", "mp3", 24000, 1.0, "", "Hello world", 11};
    char base[TH_CACHE_KEY_LEN + 1], k[TH_CACHE_KEY_LEN + 1];
    th_cache_key(&p, base);
    TH_CHECK_STR(base, a);
    th_cache_key_parts q = p;
    q.speed = 1.25;
    th_cache_key(&q, k);
    TH_CHECK(strcmp(k, base) != 0);
    q.speed = 1.00001; /* below the fixed precision: the same */
    th_cache_key(&q, k);
    TH_CHECK_STR(k, base);
    q = p;
    q.voice = "en-us+f3";
    th_cache_key(&q, k);
    TH_CHECK(strcmp(k, base) != 0);
    q = p;
    q.sample_rate = 22050;
    th_cache_key(&q, k);
    TH_CHECK(strcmp(k, base) != 0);
    q = p;
    q.format = "wav";
    th_cache_key(&q, k);
    TH_CHECK(strcmp(k, base) != 0);
    q = p;
    q.prompt = "calm";
    th_cache_key(&q, k);
    TH_CHECK(strcmp(k, base) != 0);
    q = p;
    q.input_len = 5; /* only "Hello" */
    th_cache_key(&q, k);
    TH_CHECK(strcmp(k, base) != 0);
    q.input = "Hello";
    char k2[TH_CACHE_KEY_LEN + 1];
    th_cache_key(&q, k2);
    TH_CHECK_STR(k, k2);
    /* length prefixes: ("ab","c") != ("a","bc") in any neighbouring parts */
    th_cache_key_parts x = {"ab", "c", "mp3", 24000, 1.0, "", "hi", 2};
    th_cache_key_parts y = {"a", "bc", "mp3", 24000, 1.0, "", "hi", 2};
    th_cache_key(&x, k);
    th_cache_key(&y, k2);
    TH_CHECK(strcmp(k, k2) != 0);
    th_cache_key_parts x2 = {"r", "v", "mp3", 24000, 1.0, "ab", "c", 1};
    th_cache_key_parts y2 = {"r", "v", "mp3", 24000, 1.0, "a", "bc", 2};
    th_cache_key(&x2, k);
    th_cache_key(&y2, k2);
    TH_CHECK(strcmp(k, k2) != 0);
    /* NULL strings behave like "" */
    th_cache_key_parts n1 = {NULL, NULL, NULL, 0, 1.0, NULL, NULL, 0};
    th_cache_key_parts n2 = {"", "", "", 0, 1.0, "", "", 0};
    th_cache_key(&n1, k);
    th_cache_key(&n2, k2);
    TH_CHECK_STR(k, k2);
}

TH_TEST(test_miss_lead_then_hit)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { enabled: true, backend: memory, max_bytes: 1MiB, ttl: 10m }\n");
    TH_REQUIRE(cfg != NULL);
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("hello", key);
    req *r1 = calloc(1, sizeof *r1), *r2 = calloc(1, sizeof *r2);
    TH_REQUIRE(r1 && r2);
    get(c, key, r1, NULL);
    TH_CHECK_INT(r1->get_calls, 1); /* synchronous for memory */
    TH_CHECK_INT(r1->res.outcome, TH_CACHE_LEAD);
    TH_REQUIRE(r1->res.flight != NULL);
    th_cache_flight_data(r1->res.flight, (const uint8_t *)"ID3abc", 6);
    th_cache_flight_data(r1->res.flight, (const uint8_t *)"defg", 4);
    th_cache_flight_done(r1->res.flight, "audio/mpeg", "local");
    get(c, key, r2, NULL);
    TH_CHECK_INT(r2->get_calls, 1);
    TH_CHECK_INT(r2->res.outcome, TH_CACHE_HIT);
    TH_CHECK_INT(r2->hit_len, 10);
    TH_CHECK(memcmp(r2->hit, "ID3abcdefg", 10) == 0);
    TH_CHECK_STR(r2->hit_ct, "audio/mpeg");
    TH_CHECK_STR(r2->hit_prov, "local");
    th_cache_stats st;
    th_cache_get_stats(c, &st);
    TH_CHECK_INT(st.hits, 1);
    TH_CHECK_INT(st.misses, 1);
    TH_CHECK_INT(st.stores, 1);
    TH_CHECK_INT(st.entries, 1);
    TH_CHECK(st.bytes > 10 && st.bytes < 400);
    free(r1);
    free(r2);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_coalesce_50)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { max_bytes: 1MiB }\n");
    TH_REQUIRE(cfg != NULL);
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("fifty", key);
    req *r = calloc(51, sizeof *r);
    TH_REQUIRE(r != NULL);
    int in_get = 0;
    uint8_t audio[3000];
    for (size_t i = 0; i < sizeof audio; i++)
        audio[i] = (uint8_t)(i * 7 + 3);

    get(c, key, &r[0], &in_get);
    TH_CHECK_INT(r[0].res.outcome, TH_CACHE_LEAD);
    th_cache_flight *f = r[0].res.flight;
    for (int i = 1; i < 25; i++)
        get(c, key, &r[i], &in_get); /* before any byte */
    th_cache_flight_data(f, audio, 1000);
    for (int i = 25; i < 50; i++)
        get(c, key, &r[i], &in_get); /* halfway: 1000 bytes of backlog */
    for (int i = 1; i < 50; i++) {
        TH_CHECK_INT(r[i].get_calls, 1);
        TH_CHECK_INT(r[i].res.outcome, TH_CACHE_JOINED);
        TH_CHECK(r[i].res.follower != NULL);
    }
    TH_CHECK_INT(r[30].len, 0); /* no follower callback inside th_cache_get */
    TH_CHECK_INT(r[1].len, 1000);
    run_for(&loop, 5); /* the backlog goes out from the loop */
    TH_CHECK_INT(r[30].len, 1000);
    TH_CHECK_INT(r[30].data_calls, 1);
    th_cache_flight_data(f, audio + 1000, 1500);
    /* one more joins, and a chunk comes before the loop runs: backlog and chunk still arrive in order */
    get(c, key, &r[50], &in_get);
    TH_CHECK_INT(r[50].res.outcome, TH_CACHE_JOINED);
    th_cache_flight_data(f, audio + 2500, 500);
    th_cache_flight_done(f, "audio/wav", "fm");
    run_for(&loop, 5);
    for (int i = 1; i <= 50; i++) {
        TH_CHECK_INT(r[i].len, 3000);
        TH_CHECK(memcmp(r[i].data, audio, 3000) == 0);
        TH_CHECK_INT(r[i].done, 1);
        TH_CHECK_INT(r[i].errors, 0);
        TH_CHECK_INT(r[i].early, 0);
        TH_CHECK_STR(r[i].ct, "audio/wav");
        TH_CHECK_STR(r[i].prov, "fm");
    }
    th_cache_stats st;
    th_cache_get_stats(c, &st);
    TH_CHECK_INT(st.misses, 1);
    TH_CHECK_INT(st.coalesced, 50); /* 49 + the late one */
    req hit = {0};
    get(c, key, &hit, NULL);
    TH_CHECK_INT(hit.res.outcome, TH_CACHE_HIT);
    TH_CHECK(hit.hit_len == 3000 && memcmp(hit.hit, audio, 3000) == 0);
    free(r);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_failed_flight)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { max_bytes: 1MiB }\n");
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("fails", key);
    req *r = calloc(4, sizeof *r);
    TH_REQUIRE(r != NULL);
    get(c, key, &r[0], NULL);
    TH_REQUIRE(r[0].res.outcome == TH_CACHE_LEAD);
    get(c, key, &r[1], NULL);
    th_cache_flight_data(r[0].res.flight, (const uint8_t *)"partial", 7);
    get(c, key, &r[2], NULL); /* gets the backlog, then the error */
    th_cache_flight_fail(r[0].res.flight, 502, "engine exploded");
    run_for(&loop, 5);
    for (int i = 1; i <= 2; i++) {
        TH_CHECK_INT(r[i].res.outcome, TH_CACHE_JOINED);
        TH_CHECK_INT(r[i].errors, 1);
        TH_CHECK_INT(r[i].done, 0);
        TH_CHECK_INT(r[i].status, 502);
        TH_CHECK_STR(r[i].msg, "engine exploded");
        TH_CHECK_INT(r[i].len, 7);
        TH_CHECK_INT(r[i].early, 0);
    }
    get(c, key, &r[3], NULL); /* nothing was stored: a new leader */
    TH_CHECK_INT(r[3].res.outcome, TH_CACHE_LEAD);
    th_cache_stats st;
    th_cache_get_stats(c, &st);
    TH_CHECK_INT(st.stores, 0);
    TH_CHECK_INT(st.entries, 0);
    th_cache_flight_fail(r[3].res.flight, 499, "client went away");
    free(r);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

static uint64_t fake_now(void *ud)
{
    return *(uint64_t *)ud;
}

static void store_key(th_cache *c, const char *key, const uint8_t *data, size_t n)
{
    req r = {0};
    get(c, key, &r, NULL);
    if (r.res.outcome != TH_CACHE_LEAD) return;
    th_cache_flight_data(r.res.flight, data, n);
    th_cache_flight_done(r.res.flight, "audio/mpeg", "p");
}

static int outcome_of(th_cache *c, const char *key)
{
    req *r = calloc(1, sizeof *r);
    if (r == NULL) return -1;
    get(c, key, r, NULL);
    int o = r->res.outcome;
    if (o == TH_CACHE_LEAD) th_cache_flight_fail(r->res.flight, 499, "test");
    free(r);
    return o;
}

TH_TEST(test_ttl_expiry)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { max_bytes: 1MiB, ttl: 2s }\n");
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    uint64_t now = 1000000;
    th_cache_set_clock(c, fake_now, &now);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("ttl", key);
    store_key(c, key, (const uint8_t *)"abc", 3);
    now += 1999;
    TH_CHECK_INT(outcome_of(c, key), TH_CACHE_HIT);
    now += 1;
    TH_CHECK_INT(outcome_of(c, key), TH_CACHE_LEAD); /* expired: a miss, and dropped */
    th_cache_stats st;
    th_cache_get_stats(c, &st);
    TH_CHECK_INT(st.entries, 0);
    TH_CHECK_INT(st.bytes, 0);
    TH_CHECK_INT(st.evictions, 1);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_lru_by_bytes)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { max_bytes: 64KiB }\n"); /* entries up to 8 KiB */
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    uint8_t *blob = malloc(10000);
    TH_REQUIRE(blob != NULL);
    memset(blob, 'x', 10000);
    char keys[40][TH_CACHE_KEY_LEN + 1];
    for (int i = 0; i < 40; i++) {
        char in[16];
        snprintf(in, sizeof in, "k%d", i);
        key_of(in, keys[i]);
    }
    for (int i = 0; i < 40; i++) {
        store_key(c, keys[i], blob, 3000);
        if (i > 0) TH_CHECK_INT(outcome_of(c, keys[0]), TH_CACHE_HIT); /* keeps k0 the most recent */
        th_cache_stats st;
        th_cache_get_stats(c, &st);
        TH_CHECK(st.bytes <= 65536);
    }
    th_cache_stats st;
    th_cache_get_stats(c, &st);
    TH_CHECK(st.entries >= 18 && st.entries <= 21);
    TH_CHECK_INT(st.evictions, 40 - st.entries);
    TH_CHECK_INT(outcome_of(c, keys[0]), TH_CACHE_HIT);
    TH_CHECK_INT(outcome_of(c, keys[39]), TH_CACHE_HIT);
    TH_CHECK_INT(outcome_of(c, keys[1]), TH_CACHE_LEAD); /* the least recently used went first */
    TH_CHECK_INT(outcome_of(c, keys[15]), TH_CACHE_LEAD);
    /* an entry over max_bytes / 8 is not stored */
    char big[TH_CACHE_KEY_LEN + 1];
    key_of("big", big);
    uint64_t stores = st.stores;
    store_key(c, big, blob, 8192);
    th_cache_get_stats(c, &st);
    TH_CHECK_INT(st.stores, stores);
    TH_CHECK_INT(outcome_of(c, big), TH_CACHE_LEAD);
    free(blob);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_unfollow_inside_callbacks)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { max_bytes: 1MiB }\n");
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("unfollow", key);
    req *r = calloc(6, sizeof *r);
    TH_REQUIRE(r != NULL);
    get(c, key, &r[0], NULL);
    th_cache_flight *f = r[0].res.flight;
    for (int i = 1; i <= 3; i++)
        get(c, key, &r[i], NULL);
    r[4].unfollow_in_get = true; /* leaves inside its own get callback */
    get(c, key, &r[4], NULL);
    r[5].unfollow_on_done = true;
    get(c, key, &r[5], NULL);
    /* r1 unfollows itself and r2 (a later follower) at its first chunk */
    r[1].unfollow_on_data[0] = r[1].res.follower;
    r[1].unfollow_on_data[1] = r[2].res.follower;
    th_cache_flight_data(f, (const uint8_t *)"one", 3);
    th_cache_flight_data(f, (const uint8_t *)"two", 3);
    th_cache_flight_done(f, "audio/ogg", "x");
    run_for(&loop, 5);
    TH_CHECK_INT(r[1].len, 3);
    TH_CHECK_INT(r[1].done, 0);
    TH_CHECK_INT(r[2].len, 0);
    TH_CHECK_INT(r[2].done, 0);
    TH_CHECK_INT(r[3].len, 6);
    TH_CHECK_INT(r[3].done, 1);
    TH_CHECK_INT(r[4].len + r[4].done + r[4].errors, 0);
    TH_CHECK_INT(r[5].len, 6);
    TH_CHECK_INT(r[5].done, 1);
    /* a follower that leaves before its backlog was sent gets nothing */
    req *s = calloc(3, sizeof *s);
    TH_REQUIRE(s != NULL);
    char key2[TH_CACHE_KEY_LEN + 1];
    key_of("unfollow2", key2);
    get(c, key2, &s[0], NULL);
    th_cache_flight_data(s[0].res.flight, (const uint8_t *)"abc", 3);
    get(c, key2, &s[1], NULL);
    get(c, key2, &s[2], NULL);
    th_cache_unfollow(s[1].res.follower);
    run_for(&loop, 5);
    TH_CHECK_INT(s[1].len, 0);
    TH_CHECK_INT(s[2].len, 3);
    th_cache_flight_done(s[0].res.flight, "audio/ogg", "x");
    TH_CHECK_INT(s[2].done, 1);
    free(s);
    free(r);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_flight_over_cap)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { max_bytes: 64KiB }\n"); /* per-entry cap 8 KiB */
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("long", key);
    uint8_t chunk[4096];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (uint8_t)i;
    req *r = calloc(4, sizeof *r);
    TH_REQUIRE(r != NULL);
    get(c, key, &r[0], NULL);
    th_cache_flight *f = r[0].res.flight;
    th_cache_flight_data(f, chunk, 4096);
    get(c, key, &r[1], NULL);
    TH_CHECK_INT(r[1].res.outcome, TH_CACHE_JOINED);
    for (int i = 0; i < 4; i++)
        th_cache_flight_data(f, chunk, 4096); /* 20 KiB: past the cap */
    get(c, key, &r[2], NULL);                 /* cannot join any more: leads its own synthesis */
    TH_CHECK_INT(r[2].res.outcome, TH_CACHE_LEAD);
    th_cache_flight_data(f, chunk, 100);
    th_cache_flight_done(f, "audio/mpeg", "p");
    run_for(&loop, 5);
    TH_CHECK_INT(r[1].len, 5 * 4096 + 100);
    TH_CHECK_INT(r[1].done, 1);
    bool same = r[1].len == 5 * 4096 + 100;
    for (size_t i = 0; same && i < r[1].len; i++)
        same = r[1].data[i] == (uint8_t)(i % 4096);
    TH_CHECK(same);
    th_cache_stats st;
    th_cache_get_stats(c, &st);
    TH_CHECK_INT(st.stores, 0);
    th_cache_flight_fail(r[2].res.flight, 499, "test");
    free(r);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_disabled_still_coalesces)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_of("cache: { enabled: false }\n");
    th_cache *c = th_cache_new(&loop, cfg, NULL, NULL);
    TH_REQUIRE(c != NULL);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("off", key);
    req *r = calloc(3, sizeof *r);
    TH_REQUIRE(r != NULL);
    get(c, key, &r[0], NULL);
    TH_CHECK_INT(r[0].res.outcome, TH_CACHE_LEAD);
    get(c, key, &r[1], NULL);
    TH_CHECK_INT(r[1].res.outcome, TH_CACHE_JOINED);
    th_cache_flight_data(r[0].res.flight, (const uint8_t *)"zz", 2);
    th_cache_flight_done(r[0].res.flight, "audio/mpeg", "p");
    run_for(&loop, 5);
    TH_CHECK_INT(r[1].len, 2);
    TH_CHECK_INT(r[1].done, 1);
    get(c, key, &r[2], NULL);
    TH_CHECK_INT(r[2].res.outcome, TH_CACHE_LEAD); /* nothing stored */
    th_cache_flight_fail(r[2].res.flight, 499, "test");
    /* the "" key (no hash) never coalesces */
    req e[2] = {{0}};
    get(c, "", &e[0], NULL);
    get(c, "", &e[1], NULL);
    TH_CHECK(e[0].res.outcome == TH_CACHE_LEAD && e[1].res.outcome == TH_CACHE_LEAD);
    th_cache_flight_done(e[0].res.flight, "a", "b");
    th_cache_flight_done(e[1].res.flight, "a", "b");
    free(r);
    finish(&loop, c, cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

/* ---- Redis ---- */

TH_TEST(test_redis_backend)
{
    rp_server srv = {0};
    if (rp_start(&srv) != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg =
        cfg_of("cache: { backend: redis, max_bytes: 1MiB, ttl: 10m }\nredis: { prefix: \"ct:\" }\n");
    TH_REQUIRE(cfg != NULL);
    th_redis *r1 = rp_connect(&loop, srv.port), *r2 = rp_connect(&loop, srv.port);
    TH_REQUIRE(r1 && r2 && th_redis_connected(r1) && th_redis_connected(r2));
    th_cache *c1 = th_cache_new(&loop, cfg, r1, NULL),
             *c2 = th_cache_new(&loop, cfg, r2, NULL); /* two hubs */
    TH_REQUIRE(c1 && c2);
    char key[TH_CACHE_KEY_LEN + 1];
    key_of("shared", key);
    req *r = calloc(6, sizeof *r);
    TH_REQUIRE(r != NULL);

    get(c1, key, &r[0], NULL); /* asks Redis: answered later */
    TH_CHECK_INT(r[0].get_calls, 0);
    get(c1, key, &r[1], NULL);
    hl_run_until_set(&loop, &r[1].get_calls, 2000);
    hl_run_until_set(&loop, &r[0].get_calls, 2000);
    TH_CHECK_INT(r[0].res.outcome, TH_CACHE_LEAD);
    TH_CHECK_INT(r[1].res.outcome, TH_CACHE_JOINED); /* the second answer joins the first leader */
    uint8_t audio[5000];
    for (size_t i = 0; i < sizeof audio; i++)
        audio[i] = (uint8_t)(i * 31);
    th_cache_flight_data(r[0].res.flight, audio, sizeof audio);
    th_cache_flight_done(r[0].res.flight, "audio/flac", "engine-a");
    hl_run_until_set(&loop, &r[1].done, 2000);
    TH_CHECK(r[1].len == sizeof audio && memcmp(r[1].data, audio, sizeof audio) == 0);
    hl_run_until_set(&loop, NULL, 100); /* the SET is fire-and-forget */

    get(c2, key, &r[2], NULL); /* the other hub: from Redis */
    hl_run_until_set(&loop, &r[2].get_calls, 2000);
    TH_CHECK_INT(r[2].res.outcome, TH_CACHE_HIT);
    TH_CHECK(r[2].hit_len == sizeof audio && memcmp(r[2].hit, audio, sizeof audio) == 0);
    TH_CHECK_STR(r[2].hit_ct, "audio/flac");
    TH_CHECK_STR(r[2].hit_prov, "engine-a");
    get(c2, key, &r[3], NULL); /* now in c2's memory LRU: synchronous */
    TH_CHECK_INT(r[3].get_calls, 1);
    TH_CHECK_INT(r[3].res.outcome, TH_CACHE_HIT);

    /* Redis down: a miss, never a failure */
    rp_kill(&srv);
    hl_run_until_set(&loop, NULL, 300);
    char key2[TH_CACHE_KEY_LEN + 1];
    key_of("while down", key2);
    get(c2, key2, &r[4], NULL);
    hl_run_until_set(&loop, &r[4].get_calls, 2000);
    TH_CHECK_INT(r[4].get_calls, 1);
    TH_CHECK_INT(r[4].res.outcome, TH_CACHE_LEAD);
    th_cache_flight_data(r[4].res.flight, audio, 10);
    th_cache_flight_done(r[4].res.flight, "audio/mpeg", "p");
    get(c2, key2, &r[5], NULL); /* stored in memory anyway */
    TH_CHECK_INT(r[5].res.outcome, TH_CACHE_HIT);

    free(r);
    th_cache_free(c1);
    th_cache_free(c2);
    th_redis_free(r1);
    th_redis_free(r2);
    uv_run(&loop, UV_RUN_DEFAULT);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST_MAIN()
