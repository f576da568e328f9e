/* Unit tests of src/hub/redis.c against a real redis-server started on a free loopback port: URL errors,
 * AUTH + SELECT, replies (binary strings, nested arrays, integers, nil, errors), EVALSHA with the NOSCRIPT
 * fallback, the per-command timeout with the late reply dropped, DOWN at once while down, reconnecting
 * by itself after a restart, dropping a connection that stopped answering, and freeing with commands in
 * flight; the pool: its lanes named in the server, max_inflight per connection (BUSY past it, the
 * bulk lane unaffected) and the latency counts; quiet commands answered in order.
 * The servers are killed by PID. */
#include "th_test.h"

#include "core/clock.h"
#include "store/redis.h"
#include "redis_proc.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

/* ---- loop helpers --------------------------------------------------------------------------------- */

typedef struct wait_conn {
    th_redis *r;
    bool want;
    int hit;
} wait_conn;

static void on_poll_conn(uv_timer_t *t)
{
    wait_conn *w = t->data;
    if (th_redis_connected(w->r) == w->want) w->hit = 1;
}

static bool wait_connected(uv_loop_t *loop, th_redis *r, bool want, uint64_t timeout_ms)
{
    wait_conn w = {r, want, th_redis_connected(r) == want};
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &w;
    uv_timer_start(&t, on_poll_conn, 5, 5);
    uint64_t deadline = th_mono_ms() + timeout_ms;
    while (!w.hit && th_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return w.hit != 0;
}

/* Frees r and runs the loop until nothing is left; then closes the loop. */
static int finish_loop(uv_loop_t *loop, th_redis *r)
{
    th_redis_free(r);
    uv_run(loop, UV_RUN_DEFAULT);
    return uv_loop_close(loop);
}

/* One command's answer, deep-copied for checks after the callback. */
typedef struct answer {
    int n;
    th_redis_status st;
    int type;
    long long integer;
    char str[8192];
    size_t len;
    size_t elements;
    int sub_type[4];
    long long sub_int[4];
    char sub_str[4][32];
    int subsub_type;
    long long subsub_int;
    uint64_t at_ms;
} answer;

static void on_answer(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    answer *a = ud;
    a->n++;
    a->st = st;
    a->at_ms = th_mono_ms();
    if (rep == NULL) {
        a->type = -1;
        return;
    }
    a->type = rep->type;
    a->integer = rep->integer;
    a->len = rep->len;
    if (rep->str) {
        size_t n = rep->len < sizeof a->str - 1 ? rep->len : sizeof a->str - 1;
        memcpy(a->str, rep->str, n);
        a->str[n] = '\0';
    }
    a->elements = rep->elements;
    for (size_t i = 0; i < rep->elements && i < 4; i++) {
        const th_redis_reply *e = &rep->element[i];
        a->sub_type[i] = e->type;
        a->sub_int[i] = e->integer;
        if (e->str) snprintf(a->sub_str[i], sizeof a->sub_str[i], "%.*s", (int)e->len, e->str);
        if (e->type == REDIS_REPLY_ARRAY && e->elements > 0) {
            a->subsub_type = e->element[0].type;
            a->subsub_int = e->element[0].integer;
        }
    }
}

static int cmd(th_redis *r, answer *a, const char *c0, const char *c1, const char *c2)
{
    const char *argv[3] = {c0, c1, c2};
    size_t lens[3] = {strlen(c0), c1 ? strlen(c1) : 0, c2 ? strlen(c2) : 0};
    int argc = c2 ? 3 : c1 ? 2 : 1;
    return th_redis_cmd(r, on_answer, a, argc, argv, lens);
}

static char *url_for(const rp_server *s, const char *auth, int db, char *buf, size_t n)
{
    snprintf(buf, n, "redis://%s127.0.0.1:%d/%d", auth ? auth : "", s->port, db);
    return buf;
}

/* ---- tests ---------------------------------------------------------------------------------------- */

TH_TEST(test_url_errors)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    static const char *const bad[] = {"http://127.0.0.1:6379/0",  "redis://",
                                      "redis://127.0.0.1:0/0",    "redis://127.0.0.1:99999/0",
                                      "redis://127.0.0.1:6379/x", "rediss://127.0.0.1:6379/0",
                                      "redis://[::1:6379/0",      "redis://:%zz@127.0.0.1:6379/0",
                                      "redis://127.0.0.1:6379?x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[128] = "";
        th_redis *r = th_redis_new(&loop, bad[i], 100, NULL, err, sizeof err);
        TH_CHECK(r == NULL);
        TH_CHECK(err[0] != '\0');
        if (r != NULL) {
            fprintf(stderr, "    accepted: %s\n", bad[i]);
            th_redis_free(r);
        }
    }
    /* A good URL with nothing listening: commands answer DOWN before th_redis_cmd returns. */
    int port = rp_free_port();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    char err[128] = "";
    th_redis *r = th_redis_new(&loop, url, 100, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_CHECK(!th_redis_connected(r));
    answer a = {0};
    TH_CHECK_INT(cmd(r, &a, "PING", NULL, NULL), 0);
    TH_CHECK_INT(a.n, 1);
    TH_CHECK_INT(a.st, TH_REDIS_DOWN);
    int dummy = 0;
    hl_run_until(&loop, &dummy, 1, 150);
    TH_CHECK(strncmp(th_redis_state(r), "down: ", 6) == 0);
    if (strncmp(th_redis_state(r), "down: ", 6) != 0) fprintf(stderr, "    state: %s\n", th_redis_state(r));
    TH_CHECK_INT(finish_loop(&loop, r), 0);
}

TH_TEST(test_auth_select_and_replies)
{
    rp_server s = {.debug_command = true, .pass = "s3cret"};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r =
        th_redis_new(&loop, url_for(&s, ":s3cret@", 2, url, sizeof url), 1000, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_CHECK(wait_connected(&loop, r, true, 3000));
    TH_CHECK_STR(th_redis_state(r), "connected");

    /* SELECT 2 happened */
    answer a = {0};
    cmd(r, &a, "CLIENT", "INFO", NULL);
    TH_CHECK(hl_run_until(&loop, &a.n, 1, 2000));
    TH_CHECK_INT(a.st, TH_REDIS_OK);
    TH_CHECK(strstr(a.str, " db=2 ") != NULL);

    /* binary-safe SET/GET */
    const char val[] = {'a', '\0', 'b'};
    const char *argv[3] = {"SET", "k", val};
    size_t lens[3] = {3, 1, 3};
    answer s1 = {0}, g1 = {0};
    TH_CHECK_INT(th_redis_cmd(r, on_answer, &s1, 3, argv, lens), 0);
    cmd(r, &g1, "GET", "k", NULL);
    TH_CHECK(hl_run_until(&loop, &g1.n, 1, 2000));
    TH_CHECK_INT(s1.n, 1);
    TH_CHECK_INT(s1.type, REDIS_REPLY_STATUS);
    TH_CHECK_STR(s1.str, "OK");
    TH_CHECK_INT(g1.type, REDIS_REPLY_STRING);
    TH_CHECK_INT(g1.len, 3);
    TH_CHECK(memcmp(g1.str, val, 3) == 0);

    /* integer, nil, error, nested arrays */
    answer in = {0}, nil = {0}, er = {0}, arr = {0};
    cmd(r, &in, "INCR", "n", NULL);
    cmd(r, &nil, "GET", "missing", NULL);
    cmd(r, &er, "NOSUCHCOMMAND", NULL, NULL);
    const char *eargv[4] = {"EVAL", "return {7, {8, 9}, 'x'}", "0"};
    size_t elens[3] = {4, strlen(eargv[1]), 1};
    th_redis_cmd(r, on_answer, &arr, 3, eargv, elens);
    TH_CHECK(hl_run_until(&loop, &arr.n, 1, 2000));
    TH_CHECK_INT(in.type, REDIS_REPLY_INTEGER);
    TH_CHECK_INT(in.integer, 1);
    TH_CHECK_INT(nil.st, TH_REDIS_OK);
    TH_CHECK_INT(nil.type, REDIS_REPLY_NIL);
    TH_CHECK_INT(er.st, TH_REDIS_ERROR);
    TH_CHECK(strncmp(er.str, "ERR", 3) == 0);
    TH_CHECK_INT(arr.type, REDIS_REPLY_ARRAY);
    TH_CHECK_INT(arr.elements, 3);
    TH_CHECK_INT(arr.sub_type[0], REDIS_REPLY_INTEGER);
    TH_CHECK_INT(arr.sub_int[0], 7);
    TH_CHECK_INT(arr.sub_type[1], REDIS_REPLY_ARRAY);
    TH_CHECK_INT(arr.subsub_type, REDIS_REPLY_INTEGER);
    TH_CHECK_INT(arr.subsub_int, 8);
    TH_CHECK_STR(arr.sub_str[2], "x");

    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

/* Reply objects come from a reused block per connection; what does not fit goes to further blocks (a value
 * larger than a block to one of its own), freed with its reply. Replies larger than the block, many replies
 * in one read, and one after another. */
typedef struct big_answer {
    int n, bad;
    size_t want_len;
    long long want_elems;
} big_answer;

static void on_big(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    big_answer *b = ud;
    b->n++;
    if (st != TH_REDIS_OK || rep == NULL) {
        b->bad++;
        return;
    }
    if (b->want_elems > 0) { /* {1, "s2", 3, "s4", ...} */
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != (size_t)b->want_elems) {
            b->bad++;
            return;
        }
        for (size_t i = 0; i < rep->elements; i++) {
            const th_redis_reply *e = &rep->element[i];
            char want[24];
            int wl = snprintf(want, sizeof want, "s%zu", i + 1);
            bool ok = i % 2 == 0 ? e->type == REDIS_REPLY_INTEGER && e->integer == (long long)i + 1
                                 : e->type == REDIS_REPLY_STRING && e->len == (size_t)wl &&
                                       memcmp(e->str, want, (size_t)wl) == 0;
            if (!ok) b->bad++;
        }
        return;
    }
    if (rep->type != REDIS_REPLY_STRING || rep->len != b->want_len) {
        b->bad++;
        return;
    }
    for (size_t i = 0; i < rep->len; i++)
        if ((unsigned char)rep->str[i] != (unsigned char)(i * 7 + rep->len)) {
            b->bad++;
            return;
        }
}

TH_TEST(test_replies_larger_than_the_block)
{
    rp_server s = {0};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r = th_redis_new(&loop, url_for(&s, NULL, 0, url, sizeof url), 2000, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_CHECK(wait_connected(&loop, r, true, 3000));
    /* values of 10 bytes to 300 KiB (the block is 32 KiB) */
    static const size_t sizes[] = {10, 4096, 40000, 300000, 33, 65536};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    char *vals[NS];
    for (int k = 0; k < NS; k++) {
        vals[k] = malloc(sizes[k]);
        TH_REQUIRE(vals[k] != NULL);
        for (size_t i = 0; i < sizes[k]; i++)
            vals[k][i] = (char)(unsigned char)(i * 7 + sizes[k]);
        char key[16];
        snprintf(key, sizeof key, "v%d", k);
        const char *argv[3] = {"SET", key, vals[k]};
        size_t lens[3] = {3, strlen(key), sizes[k]};
        answer a = {0};
        TH_CHECK_INT(th_redis_cmd(r, on_answer, &a, 3, argv, lens), 0);
        TH_CHECK(hl_run_until(&loop, &a.n, 1, 3000));
        TH_CHECK_INT(a.st, TH_REDIS_OK);
    }
    /* every value three times in one write: big and small replies in the same reads */
    big_answer got[3 * NS];
    for (int j = 0; j < 3 * NS; j++) {
        got[j] = (big_answer){.want_len = sizes[j % NS]};
        char key[16];
        snprintf(key, sizeof key, "v%d", j % NS);
        const char *argv[2] = {"GET", key};
        size_t lens[2] = {3, strlen(key)};
        TH_CHECK_INT(th_redis_cmd(r, on_big, &got[j], 2, argv, lens), 0);
    }
    TH_CHECK(hl_run_until(&loop, &got[3 * NS - 1].n, 1, 5000));
    for (int j = 0; j < 3 * NS; j++) {
        TH_CHECK_INT(got[j].n, 1);
        TH_CHECK_INT(got[j].bad, 0);
    }
    /* an array of 20000 nodes (about 1.3 MiB of objects), then a small one on the same connection */
    big_answer arr = {.want_elems = 20000}, small = {.want_elems = 4};
    const char *script = "local t = {} for i = 1, tonumber(ARGV[1]) do if i % 2 == 1 then t[i] = i else "
                         "t[i] = 's' .. i end end return t";
    const char *a1[4] = {"EVAL", script, "0", "20000"}, *a2[4] = {"EVAL", script, "0", "4"};
    size_t l1[4] = {4, strlen(script), 1, 5}, l2[4] = {4, strlen(script), 1, 1};
    TH_CHECK_INT(th_redis_cmd(r, on_big, &arr, 4, a1, l1), 0);
    TH_CHECK_INT(th_redis_cmd(r, on_big, &small, 4, a2, l2), 0);
    TH_CHECK(hl_run_until(&loop, &small.n, 1, 5000));
    TH_CHECK_INT(arr.n, 1);
    TH_CHECK_INT(arr.bad, 0);
    TH_CHECK_INT(small.bad, 0);
    for (int k = 0; k < NS; k++)
        free(vals[k]);
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

/* th_redis_parse: what a connection makes of a server's bytes, fed whole or a byte at a time. */
typedef struct parsed {
    int n, errors;
    long long ints;
    size_t bytes, elems;
} parsed;

static void on_parsed(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    parsed *p = ud;
    p->n++;
    if (st == TH_REDIS_ERROR) p->errors++;
    if (rep->type == REDIS_REPLY_INTEGER) p->ints += rep->integer;
    p->bytes += rep->len;
    p->elems += rep->elements;
    for (size_t i = 0; i < rep->elements; i++)
        on_parsed(ud, TH_REDIS_OK, &rep->element[i]);
}

TH_TEST(test_parse_replies_and_refusals)
{
    const char ok[] = "*3\r\n:5\r\n$3\r\nabc\r\n*2\r\n+OK\r\n$-1\r\n-ERR no\r\n:7\r\n";
    for (size_t chunk = 0; chunk <= 2; chunk++) {
        parsed p = {0};
        TH_CHECK_INT(th_redis_parse(ok, sizeof ok - 1, chunk, on_parsed, &p), 3);
        TH_CHECK_INT(p.n, 8); /* 3 replies, 5 nodes under the first */
        TH_CHECK_INT(p.errors, 1);
        TH_CHECK_INT(p.ints, 12);
        TH_CHECK_INT(p.bytes, 3 + 2 + 6);
        TH_CHECK_INT(p.elems, 5);
    }
    /* an incomplete reply is not an error: nothing yet */
    parsed q = {0};
    TH_CHECK_INT(th_redis_parse("*2\r\n:1\r\n", 8, 0, on_parsed, &q), 0);
    TH_CHECK_INT(q.n, 0);
    /* not RESP, and an array header of more than a million elements: refused, after the replies before */
    parsed b = {0};
    TH_CHECK_INT(th_redis_parse(":1\r\n?x\r\n", 8, 0, on_parsed, &b), -1);
    TH_CHECK_INT(b.n, 1);
    parsed h = {0};
    const char huge[] = ":1\r\n*1777777777\r\n:1\r\n";
    TH_CHECK_INT(th_redis_parse(huge, sizeof huge - 1, 0, on_parsed, &h), -1);
    TH_CHECK_INT(h.n, 1);
}

TH_TEST(test_wrong_password)
{
    rp_server s = {.debug_command = true, .pass = "right"};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r = th_redis_new(&loop, url_for(&s, ":wrong@", 0, url, sizeof url), 500, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    int dummy = 0;
    hl_run_until(&loop, &dummy, 1, 400);
    TH_CHECK(!th_redis_connected(r));
    TH_CHECK(strstr(th_redis_state(r), "handshake failed") != NULL ||
             strcmp(th_redis_state(r), "connecting") == 0);
    if (strstr(th_redis_state(r), "handshake failed") == NULL)
        fprintf(stderr, "    state: %s\n", th_redis_state(r));
    answer a = {0};
    cmd(r, &a, "PING", NULL, NULL);
    TH_CHECK_INT(a.n, 1);
    TH_CHECK_INT(a.st, TH_REDIS_DOWN);
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

TH_TEST(test_eval_noscript_fallback)
{
    rp_server s = {.debug_command = true};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r = th_redis_new(&loop, url_for(&s, NULL, 0, url, sizeof url), 1000, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(wait_connected(&loop, r, true, 3000));
    const char *script = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}";
    const char *argv[3] = {"key", "arg", "41"};
    size_t lens[3] = {3, 3, 2};
    answer e1 = {0}, flush = {0}, e2 = {0}, e3 = {0}, stats = {0};
    /* first use on this connection: EVAL (loads it); then the server's scripts are flushed, so the next
     * EVALSHA gets NOSCRIPT and falls back to EVAL; the third is a plain EVALSHA again */
    TH_CHECK_INT(th_redis_eval(r, on_answer, &e1, script, 1, 3, argv, lens), 0);
    cmd(r, &flush, "SCRIPT", "FLUSH", NULL);
    TH_CHECK_INT(th_redis_eval(r, on_answer, &e2, script, 1, 3, argv, lens), 0);
    TH_CHECK(hl_run_until(&loop, &e2.n, 1, 2000));
    TH_CHECK_INT(e1.n, 1);
    TH_CHECK_INT(e1.st, TH_REDIS_OK);
    TH_CHECK_INT(e1.elements, 3);
    TH_CHECK_STR(e1.sub_str[0], "key");
    TH_CHECK_STR(e1.sub_str[1], "arg");
    TH_CHECK_INT(e1.sub_int[2], 42);
    TH_CHECK_INT(flush.st, TH_REDIS_OK);
    TH_CHECK_INT(e2.st, TH_REDIS_OK);
    TH_CHECK_INT(e2.sub_int[2], 42);
    th_redis_eval(r, on_answer, &e3, script, 1, 3, argv, lens);
    cmd(r, &stats, "INFO", "commandstats", NULL);
    TH_CHECK(hl_run_until(&loop, &stats.n, 1, 2000));
    TH_CHECK_INT(e3.st, TH_REDIS_OK);
    TH_CHECK_INT(e3.sub_int[2], 42);
    /* EVAL twice (first use, fallback); EVALSHA twice (NOSCRIPT, then served) */
    TH_CHECK(strstr(stats.str, "cmdstat_eval:calls=2,") != NULL);
    TH_CHECK(strstr(stats.str, "cmdstat_evalsha:calls=") != NULL);
    if (strstr(stats.str, "cmdstat_eval:calls=2,") == NULL) fprintf(stderr, "%s\n", stats.str);
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

TH_TEST(test_command_timeout_drops_late_reply)
{
    rp_server s = {.debug_command = true};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r = th_redis_new(&loop, url_for(&s, NULL, 0, url, sizeof url), 100, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(wait_connected(&loop, r, true, 3000));
    answer slow = {0};
    uint64_t t0 = th_mono_ms();
    cmd(r, &slow, "DEBUG", "SLEEP", "0.5");
    TH_CHECK(hl_run_until(&loop, &slow.n, 1, 2000));
    TH_CHECK_INT(slow.st, TH_REDIS_TIMEOUT);
    TH_CHECK(slow.at_ms - t0 >=
             90); /* never before the timeout; TIMEOUT above shows it did not wait for the reply */
    /* the connection stays; once the server is awake, commands work and the late reply was dropped */
    int dummy = 0;
    hl_run_until(&loop, &dummy, 1, 600);
    answer ping = {0};
    cmd(r, &ping, "PING", NULL, NULL);
    TH_CHECK(hl_run_until(&loop, &ping.n, 1, 2000));
    TH_CHECK_INT(ping.st, TH_REDIS_OK);
    TH_CHECK_STR(ping.str, "PONG");
    TH_CHECK_INT(slow.n, 1);
    TH_CHECK(th_redis_connected(r));
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

TH_TEST(test_down_then_reconnects)
{
    rp_server s = {.debug_command = true};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r = th_redis_new(&loop, url_for(&s, NULL, 0, url, sizeof url), 3000, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(wait_connected(&loop, r, true, 3000));
    /* a command in flight when the server dies gets DOWN */
    answer slow = {0};
    cmd(r, &slow, "DEBUG", "SLEEP", "5");
    int dummy = 0;
    hl_run_until(&loop, &dummy, 1, 50);
    rp_kill(&s);
    TH_CHECK(hl_run_until(&loop, &slow.n, 1, 2000));
    TH_CHECK_INT(slow.st, TH_REDIS_DOWN);
    TH_CHECK(wait_connected(&loop, r, false, 2000));
    TH_CHECK(strncmp(th_redis_state(r), "down: ", 6) == 0);
    /* while down: DOWN at once */
    answer a = {0};
    cmd(r, &a, "PING", NULL, NULL);
    TH_CHECK_INT(a.n, 1);
    TH_CHECK_INT(a.st, TH_REDIS_DOWN);
    /* a few failed attempts, then the server is back on the same port */
    hl_run_until(&loop, &dummy, 1, 400);
    TH_REQUIRE(rp_start(&s) == 0);
    TH_CHECK(wait_connected(&loop, r, true, 8000));
    answer b = {0};
    cmd(r, &b, "PING", NULL, NULL);
    TH_CHECK(hl_run_until(&loop, &b.n, 1, 2000));
    TH_CHECK_INT(b.st, TH_REDIS_OK);
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

TH_TEST(test_silent_server_is_dropped)
{
    rp_server s = {.debug_command = true};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis *r = th_redis_new(&loop, url_for(&s, NULL, 0, url, sizeof url), 100, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(wait_connected(&loop, r, true, 3000));
    kill(s.pid, SIGSTOP);
    /* every command times out; after ~1 s without any reply the connection is dropped */
    int timeouts = 0;
    uint64_t deadline = th_mono_ms() + 3000;
    while (th_redis_connected(r) && th_mono_ms() < deadline) {
        answer a = {0};
        cmd(r, &a, "PING", NULL, NULL);
        hl_run_until(&loop, &a.n, 1, 1000);
        if (a.st == TH_REDIS_TIMEOUT) timeouts++;
    }
    TH_CHECK(!th_redis_connected(r));
    TH_CHECK(timeouts >= 5);
    TH_CHECK(strstr(th_redis_state(r), "no reply") != NULL || strstr(th_redis_state(r), "connect") != NULL);
    answer d = {0};
    cmd(r, &d, "PING", NULL, NULL);
    TH_CHECK_INT(d.n, 1);
    TH_CHECK_INT(d.st, TH_REDIS_DOWN);
    kill(s.pid, SIGCONT);
    TH_CHECK(wait_connected(&loop, r, true, 8000));
    answer b = {0};
    cmd(r, &b, "PING", NULL, NULL);
    TH_CHECK(hl_run_until(&loop, &b.n, 1, 2000));
    TH_CHECK_INT(b.st, TH_REDIS_OK);
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

typedef struct free_in_cb {
    th_redis *r;
    int n;
    th_redis_status st;
} free_in_cb;

static void on_free_in_cb(void *ud, th_redis_status st, const th_redis_reply *rep)
{
    free_in_cb *f = ud;
    f->n++;
    f->st = st;
    th_redis_free(f->r); /* from inside a hiredis callback */
}

TH_TEST(test_free_with_commands_in_flight)
{
    rp_server s = {.debug_command = true};
    TH_REQUIRE(rp_start(&s) == 0);
    char url[96], err[128];
    url_for(&s, NULL, 0, url, sizeof url);

    /* free right after sending: the callback gets DOWN, the late reply is dropped, nothing leaks */
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_redis *r = th_redis_new(&loop, url, 1000, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(wait_connected(&loop, r, true, 3000));
    answer a = {0}, b = {0};
    cmd(r, &a, "DEBUG", "SLEEP", "0.2");
    cmd(r, &b, "PING", NULL, NULL);
    th_redis_free(r);
    TH_CHECK_INT(a.n, 1);
    TH_CHECK_INT(a.st, TH_REDIS_DOWN);
    TH_CHECK_INT(b.n, 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(uv_loop_close(&loop), 0);

    /* free from inside a reply callback, with another command still pending */
    uv_loop_init(&loop);
    r = th_redis_new(&loop, url, 1000, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(wait_connected(&loop, r, true, 3000));
    free_in_cb f = {.r = r};
    answer c = {0};
    const char *ping[1] = {"PING"};
    size_t plen[1] = {4};
    th_redis_cmd(r, on_free_in_cb, &f, 1, ping, plen);
    cmd(r, &c, "DEBUG", "SLEEP", "0.2");
    uv_run(&loop, UV_RUN_DEFAULT); /* ends once everything is closed */
    TH_CHECK_INT(f.n, 1);
    TH_CHECK_INT(f.st, TH_REDIS_OK);
    TH_CHECK_INT(c.n, 1);
    TH_CHECK_INT(c.st, TH_REDIS_DOWN);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    rp_kill(&s);
}

static bool all_lanes_connected(uv_loop_t *loop, th_redis *r, uint64_t timeout_ms)
{
    uint64_t deadline = th_mono_ms() + timeout_ms;
    for (;;) {
        th_redis_lane_stats a, b;
        th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &a);
        th_redis_lane_get_stats(r, TH_REDIS_LANE_BULK, &b);
        if (a.connected == a.conns && b.connected == b.conns && a.conns > 0 && b.conns > 0) return true;
        if (th_mono_ms() >= deadline) return false;
        int dummy = 0;
        hl_run_until(loop, &dummy, 1, 20);
    }
}

static int lane_cmd(th_redis *r, th_redis_lane lane, answer *a, const char *c0, const char *c1,
                    const char *c2)
{
    const char *argv[3] = {c0, c1, c2};
    size_t lens[3] = {strlen(c0), c1 ? strlen(c1) : 0, c2 ? strlen(c2) : 0};
    int argc = c2 ? 3 : c1 ? 2 : 1;
    return th_redis_cmd_lane(r, lane, on_answer, a, argc, argv, lens);
}

TH_TEST(test_pool_lanes_and_in_flight_bound)
{
    rp_server s = {.debug_command = true};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis_pool_conf pc = {.policy_conns = 2, .max_inflight = 3};
    th_redis *r =
        th_redis_new_pool(&loop, url_for(&s, NULL, 0, url, sizeof url), 2000, &pc, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(all_lanes_connected(&loop, r, 5000));
    th_redis_lane_stats st;
    th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &st);
    TH_CHECK_INT(st.conns, 2);
    th_redis_lane_get_stats(r, TH_REDIS_LANE_BULK, &st);
    TH_CHECK_INT(st.conns, 1);

    /* each lane's connections are named after it in the server */
    answer n1 = {0}, n2 = {0};
    lane_cmd(r, TH_REDIS_LANE_BULK, &n1, "CLIENT", "GETNAME", NULL);
    lane_cmd(r, TH_REDIS_LANE_POLICY, &n2, "CLIENT", "GETNAME", NULL);
    TH_CHECK(hl_run_until(&loop, &n2.n, 1, 2000) && hl_run_until(&loop, &n1.n, 1, 2000));
    TH_CHECK_STR(n1.str, "ttshub-bulk");
    TH_CHECK_STR(n2.str, "ttshub-policy");

    /* 3 in flight per connection: two policy connections take 6 slow commands, the 7th is BUSY at once,
     * and the bulk lane is not affected */
    answer slow[6], over = {0}, bulk = {0};
    memset(slow, 0, sizeof slow);
    for (int i = 0; i < 6; i++)
        TH_CHECK_INT(lane_cmd(r, TH_REDIS_LANE_POLICY, &slow[i], "DEBUG", "SLEEP", "0.05"), 0);
    TH_CHECK_INT(lane_cmd(r, TH_REDIS_LANE_POLICY, &over, "PING", NULL, NULL), 0);
    TH_CHECK_INT(over.n, 1);
    TH_CHECK_INT(over.st, TH_REDIS_BUSY);
    th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &st);
    TH_CHECK_INT(st.inflight, 6);
    TH_CHECK_INT(st.busy, 1);
    lane_cmd(r, TH_REDIS_LANE_BULK, &bulk, "PING", NULL, NULL);
    TH_CHECK_INT(bulk.n, 0); /* sent, not refused */
    /* the two connections' commands may run in either order in the server: wait for every one */
    for (int i = 0; i < 6; i++)
        TH_CHECK(hl_run_until(&loop, &slow[i].n, 1, 3000));
    TH_CHECK(hl_run_until(&loop, &bulk.n, 1, 2000));
    TH_CHECK_INT(bulk.st, TH_REDIS_OK);
    for (int i = 0; i < 6; i++)
        TH_CHECK_INT(slow[i].st, TH_REDIS_OK);
    th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &st);
    TH_CHECK_INT(st.inflight, 0);
    TH_CHECK(st.replies >= 7);
    uint64_t counted = 0;
    for (int b = 0; b <= TH_REDIS_LAT_BUCKETS; b++)
        counted += st.lat_count[b];
    TH_CHECK_INT(counted, st.replies);
    TH_CHECK(st.lat_sum_s >= 0.04); /* the slow commands took their 50 ms each, at least */
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

/* Quiet commands (a settle, a cache store): answered like any other, in order, whether or not an awaited
 * command follows them (with only quiet ones in flight the socket is read after a short while). */
TH_TEST(test_quiet_commands)
{
    rp_server s = {0};
    TH_REQUIRE(rp_start(&s) == 0);
    uv_loop_t loop;
    uv_loop_init(&loop);
    char url[96], err[128];
    th_redis_pool_conf pc = {.policy_conns = 1};
    th_redis *r =
        th_redis_new_pool(&loop, url_for(&s, NULL, 0, url, sizeof url), 1000, &pc, NULL, err, sizeof err);
    TH_REQUIRE(r != NULL);
    TH_REQUIRE(all_lanes_connected(&loop, r, 5000));
    th_redis_lane_stats st0, st;
    th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &st0);
    static const char script[] = "redis.call('SET', KEYS[1], ARGV[1]) return 7";
    const char *argv[2] = {"q1", "v1"};
    size_t lens[2] = {2, 2};
    static const char set[] = "*3\r\n$3\r\nSET\r\n$2\r\nq2\r\n$2\r\nv2\r\n";
    /* only quiet commands in flight: the answers still come (read after a short while) */
    answer e1 = {0}, s1 = {0};
    TH_CHECK_INT(th_redis_eval_lane_quiet(r, TH_REDIS_LANE_POLICY, on_answer, &e1, script, 1, 2, argv, lens),
                 0);
    TH_CHECK_INT(th_redis_cmd_lane_resp_quiet(r, TH_REDIS_LANE_POLICY, on_answer, &s1, set, sizeof set - 1),
                 0);
    TH_CHECK(hl_run_until(&loop, &s1.n, 1, 3000));
    TH_CHECK_INT(e1.n, 1);
    TH_CHECK_INT(e1.st, TH_REDIS_OK);
    TH_CHECK_INT(e1.integer, 7);
    TH_CHECK_INT(s1.st, TH_REDIS_OK);
    TH_CHECK_STR(s1.str, "OK");
    th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &st);
    TH_CHECK_INT(st.inflight, 0);
    TH_CHECK_INT(st.replies, st0.replies + 2);
    uint64_t before = 0, after = 0;
    for (int b = 0; b <= TH_REDIS_LAT_BUCKETS; b++) {
        before += st0.lat_count[b];
        after += st.lat_count[b];
    }
    TH_CHECK_INT(after, before + 2); /* counted, with the time their replies waited */
    /* quiet ones, then an awaited one: every answer, in order (EVALSHA now) */
    answer e2 = {0}, g1 = {0}, g2 = {0};
    argv[1] = "v3";
    TH_CHECK_INT(th_redis_eval_lane_quiet(r, TH_REDIS_LANE_POLICY, on_answer, &e2, script, 1, 2, argv, lens),
                 0);
    lane_cmd(r, TH_REDIS_LANE_POLICY, &g1, "GET", "q1", NULL);
    lane_cmd(r, TH_REDIS_LANE_POLICY, &g2, "GET", "q2", NULL);
    TH_CHECK(hl_run_until(&loop, &g2.n, 1, 3000));
    TH_CHECK_INT(e2.n, 1);
    TH_CHECK_INT(e2.integer, 7);
    TH_CHECK(e2.at_ms <= g1.at_ms);
    TH_CHECK_STR(g1.str, "v3");
    TH_CHECK_STR(g2.str, "v2");
    th_redis_lane_get_stats(r, TH_REDIS_LANE_POLICY, &st);
    TH_CHECK_INT(st.inflight, 0);
    TH_CHECK_INT(finish_loop(&loop, r), 0);
    rp_kill(&s);
}

TH_TEST_MAIN()
