/* Unit tests of src/governance/quota.c: limits per UTC day and month, reservations, refunds, durability of
 * the usage log (restart, kill -9 from inside and from outside, torn last line, corruption), snapshots, usage
 * reports, window rollover, and the Redis backend against a real redis-server. */
#include "th_test.h"

#include "config/config.h"
#include "governance/quota.h"
#include "store/redis.h"
#include "redis_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* 2026-03-10 15:00:00 UTC */
#define T0 1773154800000ULL
#define HOUR 3600000ULL
#define DAYMS 86400000ULL

typedef struct got {
    int calls;
    th_quota_result r;
} got;

static void on_res(void *ud, const th_quota_result *r)
{
    got *g = ud;
    g->calls++;
    g->r = *r;
}

/* A fresh data_dir under /tmp. */
static void mkdir_tmp(char *dir, size_t n)
{
    snprintf(dir, n, "/tmp/th_quota_XXXXXX");
    if (mkdtemp(dir) == NULL) dir[0] = '\0';
}

static void rm_dir(const char *dir)
{
    const char *names[] = {"usage.log", "usage.snapshot", "usage.snapshot.tmp", "usage.lock",
                           "usage.log.tmp"};
    char p[512];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        unlink(p);
    }
    rmdir(dir);
}

static th_config *cfg_for(const char *dir, const char *extra)
{
    char y[1024];
    snprintf(y, sizeof y, "data_dir: \"%s\"\n%s", dir, extra ? extra : "");
    th_config_errors e = {0};
    th_config *c = th_config_parse(y, strlen(y), &e);
    for (size_t i = 0; i < e.n; i++)
        fprintf(stderr, "config: %s: %s\n", e.items[i].path, e.items[i].message);
    th_config_errors_free(&e);
    return c;
}

static th_quota *open_q(uv_loop_t *loop, const th_config *cfg, th_redis *r)
{
    char err[256] = "";
    th_quota *q = th_quota_new(loop, cfg, r, NULL, err, sizeof err);
    if (q == NULL) fprintf(stderr, "th_quota_new: %s\n", err);
    return q;
}

static void close_q(uv_loop_t *loop, th_quota *q)
{
    th_quota_free(q);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* Reserves synchronously (local backend). */
static th_quota_result reserve(th_quota *q, const char *t, const th_tenant_conf *tc, uint64_t n, uint64_t now)
{
    got g = {0};
    th_quota_reserve(q, t, tc, n, now, on_res, &g);
    if (g.calls != 1) fprintf(stderr, "reserve: %d callbacks\n", g.calls);
    return g.r;
}

static uint64_t usage_of(th_quota *q, const char *window, const char *tenant, uint64_t now, uint64_t *req)
{
    size_t n = 0;
    th_usage_row *rows = th_quota_usage(q, window, tenant, now, &n);
    uint64_t chars = n == 1 ? rows[0].chars : (uint64_t)-1;
    if (req) *req = n == 1 ? rows[0].requests : (uint64_t)-1;
    free(rows);
    return chars;
}

TH_TEST(test_day_limit)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    TH_REQUIRE(cfg != NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 100};

    th_quota_result a = reserve(q, "acme", &tc, 60, T0);
    TH_CHECK(a.allowed && !a.degraded && a.resv != NULL);
    th_quota_result b = reserve(q, "acme", &tc, 50, T0);
    TH_CHECK(!b.allowed && b.resv == NULL);
    TH_CHECK_STR(b.window, "day");
    TH_CHECK_INT(b.limit, 100);
    TH_CHECK_INT(b.used, 60);                /* reserved counts at once */
    TH_CHECK_INT(b.retry_after_s, 9 * 3600); /* 15:00 -> midnight UTC */
    /* 1 ms before midnight: 1 s (rounded up, never 0) */
    th_quota_result b2 = reserve(q, "acme", &tc, 50, T0 + 9 * HOUR - 1);
    TH_CHECK(!b2.allowed);
    TH_CHECK_INT(b2.retry_after_s, 1);

    th_quota_refund(q, a.resv);
    th_quota_result c = reserve(q, "acme", &tc, 50, T0);
    TH_CHECK(c.allowed && c.resv != NULL);
    th_quota_result d = reserve(q, "acme", &tc, 50, T0);
    TH_CHECK(d.allowed && d.resv != NULL); /* exactly at the limit */
    th_quota_result e = reserve(q, "acme", &tc, 1, T0);
    TH_CHECK(!e.allowed);
    TH_CHECK_INT(e.used, 100);
    th_quota_commit(q, c.resv);
    th_quota_refund(q, d.resv);
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, NULL), 50);
    /* a reservation bigger than the limit is refused too */
    TH_CHECK(!reserve(q, "acme", &tc, 101, T0).allowed);
    /* no quota configured: allowed with no reservation */
    th_tenant_conf free_tc = {.name = "free"};
    th_quota_result f = reserve(q, "free", &free_tc, 1000000, T0);
    TH_CHECK(f.allowed && f.resv == NULL);
    th_quota_result g = reserve(q, "other", NULL, 5, T0);
    TH_CHECK(g.allowed && g.resv == NULL);
    th_quota_commit(q, NULL); /* no-ops */
    th_quota_refund(q, NULL);

    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

TH_TEST(test_month_limit)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 400, .chars_per_month = 1000};
    /* 300 a day on March 10, 11, 12: the fourth day hits the month limit */
    for (int i = 0; i < 3; i++) {
        th_quota_result r = reserve(q, "acme", &tc, 300, T0 + (uint64_t)i * DAYMS);
        TH_CHECK(r.allowed);
        th_quota_commit(q, r.resv);
    }
    th_quota_result r = reserve(q, "acme", &tc, 300, T0 + 3 * DAYMS);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.window, "month");
    TH_CHECK_INT(r.limit, 1000);
    TH_CHECK_INT(r.used, 900);
    /* 2026-03-13 15:00 -> 2026-04-01 00:00 = 18 days 9 hours */
    TH_CHECK_INT(r.retry_after_s, 18 * 86400 + 9 * 3600);
    r = reserve(q, "acme", &tc, 100, T0 + 3 * DAYMS);
    TH_CHECK(r.allowed);
    th_quota_refund(q, r.resv);
    /* April: a new month */
    r = reserve(q, "acme", &tc, 300, T0 + 22 * DAYMS);
    TH_CHECK(r.allowed);
    th_quota_commit(q, r.resv);
    TH_CHECK_INT(usage_of(q, "month", "acme", T0 + 22 * DAYMS, NULL), 300);
    /* December: the month resets at the first of January of the next year */
    uint64_t dec31 = 1798729200000ULL; /* 2026-12-31 15:00:00 UTC */
    th_tenant_conf tm = {.name = "m", .chars_per_month = 10};
    r = reserve(q, "m", &tm, 10, dec31);
    TH_CHECK(r.allowed);
    th_quota_commit(q, r.resv);
    r = reserve(q, "m", &tm, 1, dec31);
    TH_CHECK(!r.allowed);
    TH_CHECK_STR(r.window, "month");
    TH_CHECK_INT(r.retry_after_s, 9 * 3600);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

TH_TEST(test_commit_persists)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 1000};
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t total = 0;
    for (int i = 1; i <= 10; i++) {
        th_quota_result r = reserve(q, "acme", &tc, (uint64_t)i, T0);
        TH_CHECK(r.allowed);
        if (i % 3 == 0) {
            th_quota_refund(q, r.resv);
        } else {
            th_quota_commit(q, r.resv);
            total += (uint64_t)i;
        }
    }
    th_quota_result open_resv = reserve(q, "acme", &tc, 100, T0); /* never committed */
    TH_CHECK(open_resv.allowed);
    th_quota_refund(q, open_resv.resv);
    /* an older version takes usage.log exclusively: it cannot start beside a new one, and the other way
     * round a new one refuses to start beside it */
    char p[256], err[256] = "";
    snprintf(p, sizeof p, "%s/usage.log", dir);
    int old = open(p, O_RDWR | O_APPEND);
    TH_REQUIRE(old >= 0);
    TH_CHECK(flock(old, LOCK_EX | LOCK_NB) != 0);
    close_q(&loop, q);
    TH_REQUIRE(flock(old, LOCK_EX | LOCK_NB) == 0);
    th_quota *q2 = th_quota_new(&loop, cfg, NULL, NULL, err, sizeof err);
    TH_CHECK(q2 == NULL);
    TH_CHECK(strstr(err, "does not share it") != NULL);
    close(old);
    uv_run(&loop, UV_RUN_DEFAULT);

    q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, &req), total);
    TH_CHECK_INT(req, 7);
    TH_CHECK_INT(usage_of(q, "month", "acme", T0, NULL), total);
    /* and the quota counts it */
    TH_CHECK(!reserve(q, "acme", &tc, 1000 - total + 1, T0).allowed);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

/* Child: commits n reservations of 7 chars, leaves one reservation open, then SIGKILLs itself. */
static void child_commit_and_die(const char *dir, int n)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = cfg ? open_q(&loop, cfg, NULL) : NULL;
    if (q == NULL) _exit(3);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 1000000};
    for (int i = 0; i < n; i++) {
        th_quota_result r = reserve(q, "acme", &tc, 7, T0);
        if (!r.allowed) _exit(4);
        th_quota_commit(q, r.resv);
        if (i % 10 == 0) uv_run(&loop, UV_RUN_NOWAIT);
    }
    (void)reserve(q, "acme", &tc, 1000, T0); /* in flight when killed: not usage */
    raise(SIGKILL);
    _exit(5);
}

TH_TEST(test_kill9_exact)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    fflush(NULL);
    pid_t pid = fork();
    TH_REQUIRE(pid >= 0);
    if (pid == 0) child_commit_and_die(dir, 137);
    int status = 0;
    TH_REQUIRE(waitpid(pid, &status, 0) == pid);
    TH_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, &req), 137 * 7);
    TH_CHECK_INT(req, 137);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

/* Kill -9 from outside at a random moment: the child reports each commit that returned on a pipe; the
 * log must hold every reported commit (and at most the one in progress besides). */
TH_TEST(test_kill9_external)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    int fds[2];
    TH_REQUIRE(pipe(fds) == 0);
    fflush(NULL);
    pid_t pid = fork();
    TH_REQUIRE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        uv_loop_t loop;
        uv_loop_init(&loop);
        th_config *cfg = cfg_for(dir, NULL);
        th_quota *q = cfg ? open_q(&loop, cfg, NULL) : NULL;
        if (q == NULL) _exit(3);
        th_tenant_conf tc = {.name = "acme", .chars_per_day = 1000000000};
        for (unsigned i = 0;; i++) {
            th_quota_result r = reserve(q, "acme", &tc, 3, T0);
            th_quota_commit(q, r.resv);
            if (write(fds[1], "c", 1) != 1) _exit(6);
            if (i % 16 == 0) uv_run(&loop, UV_RUN_NOWAIT);
        }
    }
    close(fds[1]);
    char buf[4096];
    uint64_t seen = 0;
    struct timespec ts = {0, 0};
    srand((unsigned)time(NULL));
    while (seen < 2000 + (uint64_t)(rand() % 3000)) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n <= 0) break;
        seen += (uint64_t)n;
    }
    kill(pid, SIGKILL);
    int status = 0;
    TH_REQUIRE(waitpid(pid, &status, 0) == pid);
    TH_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    for (;;) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n <= 0) break;
        seen += (uint64_t)n;
    }
    close(fds[0]);
    (void)ts;
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t req = 0, chars = usage_of(q, "day", "acme", T0, &req);
    TH_CHECK(req >= seen && req <= seen + 1);
    TH_CHECK_INT(chars, req * 3);
    if (!(req >= seen && req <= seen + 1))
        fprintf(stderr, "reported %llu, logged %llu\n", (unsigned long long)seen, (unsigned long long)req);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return;
    if (write(fd, text, strlen(text)) < 0) perror("write");
    close(fd);
}

static long file_size(const char *dir, const char *name)
{
    char p[512];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

TH_TEST(test_torn_last_line)
{
    char dir[64], log[256];
    mkdir_tmp(dir, sizeof dir);
    snprintf(log, sizeof log, "1 %llu acme 10\n2 %llu acme 20\n3 %llu ac", (unsigned long long)T0,
             (unsigned long long)T0, (unsigned long long)T0);
    write_file(dir, "usage.log", log);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, NULL), 30);
    /* the torn line was cut off, so the next line starts on its own */
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 1000};
    th_quota_result r = reserve(q, "acme", &tc, 5, T0);
    th_quota_commit(q, r.resv);
    close_q(&loop, q);
    q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, &req), 35);
    TH_CHECK_INT(req, 3);
    close_q(&loop, q);

    /* a malformed complete line is corruption: th_quota_new fails and says where */
    snprintf(log, sizeof log, "1 %llu acme 10\n2 %llu ac me 20\n3 %llu acme 5\n", (unsigned long long)T0,
             (unsigned long long)T0, (unsigned long long)T0);
    write_file(dir, "usage.log", log);
    char err[256] = "";
    q = th_quota_new(&loop, cfg, NULL, NULL, err, sizeof err);
    TH_CHECK(q == NULL);
    TH_CHECK(strstr(err, "line 2") != NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

TH_TEST(test_snapshot_and_replay)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 100000};
    const char *weird = "we ird\n%tenant";
    for (int i = 0; i < 3; i++) {
        th_quota_commit(q, reserve(q, "acme", &tc, 100, T0).resv);
        th_quota_commit(q, reserve(q, weird, &tc, 1, T0).resv);
    }
    TH_CHECK(file_size(dir, "usage.log") > 0);
    TH_CHECK(th_quota_snapshot(q) == 0);
    TH_CHECK_INT(file_size(dir, "usage.log"), 0);
    TH_CHECK(file_size(dir, "usage.snapshot") > 0);
    th_quota_commit(q, reserve(q, "acme", &tc, 11, T0).resv);
    th_quota_commit(q, reserve(q, "acme", &tc, 22, T0 + DAYMS).resv); /* next day */
    close_q(&loop, q);

    q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(q, "month", "acme", T0 + DAYMS, &req), 333);
    TH_CHECK_INT(req, 5);
    TH_CHECK_INT(usage_of(q, "day", "acme", T0 + DAYMS, NULL), 22);
    TH_CHECK_INT(usage_of(q, "day", weird, T0, &req), 3); /* an escaped name survives both files */
    TH_CHECK_INT(req, 3);
    close_q(&loop, q);

    /* A crash between the snapshot's rename and the log's truncation: lines already in the snapshot
     * (seq <= its seq) are skipped. */
    char snap[256], log[512];
    snprintf(snap, sizeof snap, "ttshub-usage-snapshot 1 7\nacme 20260310 100 1 202603 100 1\nend 1\n");
    snprintf(log, sizeof log, "6 %llu acme 50\n7 %llu acme 100\n8 %llu acme 1\n", (unsigned long long)T0,
             (unsigned long long)T0, (unsigned long long)T0);
    write_file(dir, "usage.snapshot", snap);
    write_file(dir, "usage.log", log);
    q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, &req), 101);
    TH_CHECK_INT(req, 2);
    /* new commits continue after the highest seq */
    th_quota_commit(q, reserve(q, "acme", &tc, 1, T0).resv);
    close_q(&loop, q);
    q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, NULL), 102);
    close_q(&loop, q);

    /* a snapshot without its end line is corrupt */
    write_file(dir, "usage.snapshot", "ttshub-usage-snapshot 1 7\nacme 20260310 100 1 202603 100 1\n");
    char err[256] = "";
    q = th_quota_new(&loop, cfg, NULL, NULL, err, sizeof err);
    TH_CHECK(q == NULL);
    TH_CHECK(strstr(err, "usage.snapshot") != NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

static int row_cmp(const void *a, const void *b)
{
    return strcmp(((const th_usage_row *)a)->tenant, ((const th_usage_row *)b)->tenant);
}

/* 1 if the seqs of usage.log's lines (its first field) strictly increase and there are at least min lines. */
static int seqs_increase(const char *dir, size_t min)
{
    char p[256], line[512];
    snprintf(p, sizeof p, "%s/usage.log", dir);
    FILE *f = fopen(p, "r");
    if (f == NULL) return 0;
    unsigned long long prev = 0, seq;
    size_t n = 0;
    int ok = 1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (sscanf(line, "%llu ", &seq) != 1 || seq <= prev) ok = 0;
        prev = seq;
        n++;
    }
    fclose(f);
    return ok && n >= min;
}

static void on_step(uv_timer_t *t)
{
    (void)t;
}

/* One turn of the loop, after `ms` (the quota's own handles do not keep a loop alive). */
static void turn(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t step;
    uv_timer_init(loop, &step);
    uv_timer_start(&step, on_step, ms, 0);
    uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&step, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* Two quotas on one data_dir (two processes during a blue/green restart) share committed usage: each
 * sees the other's commits, through the other's snapshots and log rotations, and a restart counts all. */
TH_TEST(test_shared_data_dir)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *a = open_q(&loop, cfg, NULL);
    TH_REQUIRE(a != NULL);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 100};
    th_quota_commit(a, reserve(a, "acme", &tc, 2, T0).resv); /* alone: a holds the log */
    th_quota *b = open_q(&loop, cfg, NULL);
    TH_REQUIRE(b != NULL);
    TH_CHECK_INT(usage_of(b, "day", "acme", T0, NULL), 2);
    turn(&loop, 0); /* a sees b's knock and shares the log */
    th_quota_commit(a, reserve(a, "acme", &tc, 8, T0).resv);
    TH_CHECK_INT(usage_of(b, "day", "acme", T0, NULL), 10);
    th_quota_commit(b, reserve(b, "acme", &tc, 5, T0).resv);
    TH_CHECK_INT(usage_of(a, "day", "acme", T0, NULL), 15);
    /* a rotates the log; b's next commit lands in the new log after reloading a's snapshot */
    TH_CHECK(th_quota_snapshot(a) == 0);
    th_quota_commit(b, reserve(b, "acme", &tc, 7, T0).resv);
    TH_CHECK_INT(usage_of(a, "day", "acme", T0, NULL), 22);
    TH_CHECK_INT(usage_of(b, "day", "acme", T0, NULL), 22);
    /* b rotates while a holds an open reservation: a keeps it, and learns the committed count */
    th_quota_result open_a = reserve(a, "acme", &tc, 70, T0);
    TH_CHECK(open_a.allowed);
    TH_CHECK(th_quota_snapshot(b) == 0);
    th_quota_commit(b, reserve(b, "acme", &tc, 1, T0).resv);
    /* 23 committed + a's 70 in flight: 8 more is too much for a, and 7 fits */
    TH_CHECK(!reserve(a, "acme", &tc, 8, T0).allowed);
    th_quota_result r7 = reserve(a, "acme", &tc, 7, T0);
    TH_CHECK(r7.allowed);
    th_quota_refund(a, r7.resv);
    th_quota_commit(a, open_a.resv);
    TH_CHECK_INT(usage_of(b, "day", "acme", T0, NULL), 93);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(a, "day", "acme", T0, &req), 93);
    TH_CHECK_INT(req, 6);
    /* b leaves: within a tick a is alone again and holds usage.lock for good */
    close_q(&loop, b);
    char lp[256];
    snprintf(lp, sizeof lp, "%s/usage.lock", dir);
    int probe = open(lp, O_RDWR);
    TH_REQUIRE(probe >= 0);
    bool held = false;
    for (int i = 0; i < 400 && !held; i++) { /* up to 4 s */
        turn(&loop, 10);
        if (flock(probe, LOCK_EX | LOCK_NB) == 0)
            flock(probe, LOCK_UN);
        else
            held = true;
    }
    close(probe);
    TH_CHECK(held);
    th_quota_commit(a, reserve(a, "acme", &tc, 1, T0).resv);
    close_q(&loop, a);
    TH_CHECK(seqs_increase(dir, 3)); /* since b's rotation: b's 1, a's 70 */
    /* a restart reads it all */
    th_quota *c = open_q(&loop, cfg, NULL);
    TH_REQUIRE(c != NULL);
    TH_CHECK_INT(usage_of(c, "day", "acme", T0, &req), 94);
    TH_CHECK_INT(req, 7);
    close_q(&loop, c);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

/* Child of test_shared_processes: n commits of `chars`, a snapshot (a rotation) every `every`. */
static void child_commit_shared(const char *dir, int n, uint64_t chars, int every)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = cfg ? open_q(&loop, cfg, NULL) : NULL;
    if (q == NULL) _exit(3);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 1000000000};
    for (int i = 1; i <= n; i++) {
        th_quota_result r = reserve(q, "acme", &tc, chars, T0);
        if (!r.allowed) _exit(4);
        th_quota_commit(q, r.resv);
        if (i % every == 0 && th_quota_snapshot(q) != 0) _exit(5);
        if (i % 16 == 0) uv_run(&loop, UV_RUN_NOWAIT);
    }
    close_q(&loop, q);
    th_config_unref(cfg);
    _exit(0);
}

/* Three processes commit at once on one data_dir, each rotating the log now and then: not one commit is
 * lost or counted twice. */
TH_TEST(test_shared_processes)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    const int n = 3000;
    const uint64_t chars[3] = {1, 10, 100};
    const int every[3] = {97, 389, 1201};
    pid_t pids[3];
    fflush(NULL);
    for (int i = 0; i < 3; i++) {
        pids[i] = fork();
        TH_REQUIRE(pids[i] >= 0);
        if (pids[i] == 0) child_commit_shared(dir, n, chars[i], every[i]);
    }
    for (int i = 0; i < 3; i++) {
        int status = 0;
        TH_REQUIRE(waitpid(pids[i], &status, 0) == pids[i]);
        TH_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    TH_CHECK(seqs_increase(dir, 1)); /* one sequence across the writers, in file order */
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(q, "day", "acme", T0, &req), (uint64_t)n * 111);
    TH_CHECK_INT(req, (uint64_t)n * 3);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

TH_TEST(test_usage_report)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    th_tenant_conf tc = {.chars_per_day = 100000};
    th_quota_commit(q, reserve(q, "acme", &tc, 10, T0 - DAYMS).resv); /* yesterday */
    th_quota_commit(q, reserve(q, "acme", &tc, 20, T0).resv);
    th_quota_commit(q, reserve(q, "acme", &tc, 30, T0).resv);
    th_quota_commit(q, reserve(q, "beta", &tc, 5, T0).resv);
    th_quota_commit(q, reserve(q, "old", &tc, 7, T0 - 40 * DAYMS).resv); /* January */
    th_quota_refund(q, reserve(q, "gamma", &tc, 5, T0).resv);            /* no usage at all */
    size_t n = 0;
    th_usage_row *rows = th_quota_usage(q, "day", NULL, T0, &n);
    TH_REQUIRE(rows != NULL);
    qsort(rows, n, sizeof *rows, row_cmp);
    TH_CHECK_INT(n, 2);
    if (n == 2) {
        TH_CHECK_STR(rows[0].tenant, "acme");
        TH_CHECK_INT(rows[0].chars, 50);
        TH_CHECK_INT(rows[0].requests, 2);
        TH_CHECK_STR(rows[1].tenant, "beta");
        TH_CHECK_INT(rows[1].chars, 5);
    }
    free(rows);
    rows = th_quota_usage(q, "month", NULL, T0, &n);
    TH_REQUIRE(rows != NULL);
    qsort(rows, n, sizeof *rows, row_cmp);
    TH_CHECK_INT(n, 2);
    if (n == 2) {
        TH_CHECK_INT(rows[0].chars, 60);
        TH_CHECK_INT(rows[0].requests, 3);
    }
    free(rows);
    uint64_t req = 9;
    TH_CHECK_INT(usage_of(q, "day", "nobody", T0, &req), 0); /* unknown: one zero row */
    TH_CHECK_INT(req, 0);
    rows = th_quota_usage(q, "day", "nobody", T0, &n);
    TH_CHECK(rows != NULL && n == 1 && strcmp(rows[0].tenant, "nobody") == 0);
    free(rows);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

TH_TEST(test_rollover_midnight)
{
    char dir[64];
    mkdir_tmp(dir, sizeof dir);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg = cfg_for(dir, NULL);
    th_quota *q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 100};
    uint64_t midnight = T0 + 9 * HOUR; /* 2026-03-11 00:00:00 UTC */
    th_quota_result a = reserve(q, "acme", &tc, 90, midnight - 1000);
    TH_CHECK(a.allowed);
    th_quota_commit(q, a.resv);
    th_quota_result late = reserve(q, "acme", &tc, 10, midnight - 1); /* reserved before midnight */
    TH_CHECK(late.allowed);
    th_quota_result b = reserve(q, "acme", &tc, 1, midnight - 1);
    TH_CHECK(!b.allowed);
    TH_CHECK_INT(b.retry_after_s, 1);
    /* at midnight the day starts again; the month keeps counting */
    th_quota_result c = reserve(q, "acme", &tc, 100, midnight);
    TH_CHECK(c.allowed);
    th_quota_commit(q, late.resv); /* belongs to yesterday: not today's usage */
    TH_CHECK_INT(usage_of(q, "day", "acme", midnight, NULL), 0);
    th_quota_commit(q, c.resv);
    uint64_t req = 0;
    TH_CHECK_INT(usage_of(q, "day", "acme", midnight, &req), 100);
    TH_CHECK_INT(req, 1);
    TH_CHECK_INT(usage_of(q, "month", "acme", midnight, &req), 200);
    TH_CHECK_INT(req, 3);
    TH_CHECK_INT(usage_of(q, "day", "acme", midnight - 1, NULL), 0); /* the old day is dropped */
    TH_CHECK_INT(usage_of(q, "day", "acme", midnight + DAYMS, NULL), 0);
    close_q(&loop, q);
    /* the same after a replay */
    q = open_q(&loop, cfg, NULL);
    TH_REQUIRE(q != NULL);
    TH_CHECK_INT(usage_of(q, "day", "acme", midnight, NULL), 100);
    TH_CHECK_INT(usage_of(q, "month", "acme", midnight, NULL), 200);
    close_q(&loop, q);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
    rm_dir(dir);
}

/* ---- Redis ---- */

/* Reserves and waits for the answer. */
static th_quota_result reserve_wait(uv_loop_t *loop, th_quota *q, const char *t, const th_tenant_conf *tc,
                                    uint64_t n, uint64_t now)
{
    got g = {0};
    th_quota_reserve(q, t, tc, n, now, on_res, &g);
    hl_run_until_set(loop, &g.calls, 3000);
    return g.r;
}

typedef struct usage_got {
    int calls;
    bool ok;
    size_t n;
    th_usage_row rows[8];
} usage_got;

static void on_usage(void *ud, const th_usage_row *rows, size_t n, bool ok)
{
    usage_got *u = ud;
    u->calls++;
    u->ok = ok;
    u->n = n;
    for (size_t i = 0; i < n && i < 8; i++)
        u->rows[i] = rows[i];
}

TH_TEST(test_redis_shared)
{
    rp_server srv = {0};
    if (rp_start(&srv) != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *cfg =
        cfg_for("/tmp", "redis: { prefix: \"qt:\" }\ntenants:\n  acme:\n    quota: { chars_per_day: "
                        "100, chars_per_month: 150 }\n  beta: {}\n");
    TH_REQUIRE(cfg != NULL);
    const th_tenant_conf *tc = th_config_tenant(cfg, "acme");
    TH_REQUIRE(tc != NULL);
    th_redis *r1 = rp_connect(&loop, srv.port), *r2 = rp_connect(&loop, srv.port);
    TH_REQUIRE(r1 && r2 && th_redis_connected(r1) && th_redis_connected(r2));
    th_quota *q1 = open_q(&loop, cfg, r1), *q2 = open_q(&loop, cfg, r2); /* two hubs */
    TH_REQUIRE(q1 && q2);

    th_quota_result a = reserve_wait(&loop, q1, "acme", tc, 60, T0);
    TH_CHECK(a.allowed && !a.degraded && a.resv != NULL);
    th_quota_result b = reserve_wait(&loop, q2, "acme", tc, 50, T0); /* the other hub sees the reservation */
    TH_CHECK(!b.allowed);
    TH_CHECK_STR(b.window, "day");
    TH_CHECK_INT(b.limit, 100);
    TH_CHECK_INT(b.used, 60);
    TH_CHECK_INT(b.retry_after_s, 9 * 3600);
    th_quota_refund(q1, a.resv);
    hl_run_until_set(&loop, NULL, 100); /* refunds and commits are fire-and-forget */
    th_quota_result c = reserve_wait(&loop, q2, "acme", tc, 50, T0);
    TH_CHECK(c.allowed && c.resv != NULL);
    th_quota_commit(q2, c.resv);
    hl_run_until_set(&loop, NULL, 100);
    th_quota_result d = reserve_wait(&loop, q1, "acme", tc, 50, T0);
    TH_CHECK(d.allowed);
    th_quota_commit(q1, d.resv);
    hl_run_until_set(&loop, NULL, 100);
    th_quota_result e = reserve_wait(&loop, q1, "acme", tc, 1, T0);
    TH_CHECK(!e.allowed);
    TH_CHECK_STR(e.window, "day");
    /* next day: the day is free again but the month (150) is not */
    th_quota_result f = reserve_wait(&loop, q2, "acme", tc, 60, T0 + DAYMS);
    TH_CHECK(!f.allowed);
    TH_CHECK_STR(f.window, "month");
    TH_CHECK_INT(f.used, 100);
    /* parallel reservations from both hubs cannot overshoot: 10 x 10 against the 50 left */
    got g[10] = {{0}};
    for (int i = 0; i < 10; i++)
        th_quota_reserve(i % 2 ? q1 : q2, "acme", tc, 10, T0 + DAYMS, on_res, &g[i]);
    int done = 0;
    for (int spins = 0; spins < 600 && done < 10; spins++) {
        hl_run_until_set(&loop, NULL, 5);
        done = 0;
        for (int i = 0; i < 10; i++)
            done += g[i].calls;
    }
    int allowed = 0;
    for (int i = 0; i < 10; i++) {
        TH_CHECK_INT(g[i].calls, 1);
        if (g[i].r.allowed) {
            allowed++;
            th_quota_commit(i % 2 ? q1 : q2, g[i].r.resv);
        }
    }
    TH_CHECK_INT(allowed, 5);
    hl_run_until_set(&loop, NULL, 100); /* commits are fire-and-forget */
    usage_got u = {0};
    th_quota_usage_fetch(q1, "month", "acme", T0 + DAYMS, on_usage, &u);
    hl_run_until_set(&loop, &u.calls, 3000);
    TH_CHECK(u.ok && u.n == 1);
    TH_CHECK_INT(u.rows[0].chars, 150);
    TH_CHECK_INT(u.rows[0].requests, 7);
    usage_got all = {0};
    th_quota_usage_fetch(q2, "day", NULL, T0 + DAYMS, on_usage, &all);
    hl_run_until_set(&loop, &all.calls, 3000);
    TH_CHECK(all.ok && all.n == 1); /* beta has no usage */
    TH_CHECK_STR(all.rows[0].tenant, "acme");
    TH_CHECK_INT(all.rows[0].chars, 50);

    th_quota_free(q1);
    th_quota_free(q2);
    th_redis_free(r1);
    th_redis_free(r2);
    uv_run(&loop, UV_RUN_DEFAULT);
    rp_kill(&srv);
    th_config_unref(cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST(test_redis_down)
{
    rp_server srv = {0};
    if (rp_start(&srv) != 0) {
        fprintf(stderr, "    (no redis-server: skipped)\n");
        return;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_config *open_cfg =
        cfg_for("/tmp", "redis: { prefix: \"qd:\" }\nrate_limit: { on_backend_error: open }\n");
    th_config *closed_cfg =
        cfg_for("/tmp", "redis: { prefix: \"qd:\" }\nrate_limit: { on_backend_error: closed }\n");
    TH_REQUIRE(open_cfg && closed_cfg);
    th_tenant_conf tc = {.name = "acme", .chars_per_day = 100};
    th_redis *r = rp_connect(&loop, srv.port);
    TH_REQUIRE(r && th_redis_connected(r));
    th_quota *qo = open_q(&loop, open_cfg, r), *qc = open_q(&loop, closed_cfg, r);
    TH_REQUIRE(qo && qc);
    th_quota_result a = reserve_wait(&loop, qc, "acme", &tc, 10, T0);
    TH_CHECK(a.allowed && !a.degraded);
    th_quota_commit(qc, a.resv);
    hl_run_until_set(&loop, NULL, 50);

    rp_kill(&srv); /* Redis goes away */
    hl_run_until_set(&loop, NULL, 300);
    th_quota_result o = reserve_wait(&loop, qo, "acme", &tc, 10, T0);
    TH_CHECK(o.allowed && o.degraded && o.resv == NULL);
    th_quota_result c = reserve_wait(&loop, qc, "acme", &tc, 10, T0);
    TH_CHECK(!c.allowed && !c.degraded && c.resv == NULL);
    TH_CHECK_STR(c.window, "backend");
    TH_CHECK_INT(c.retry_after_s, 1);
    usage_got u = {0};
    th_quota_usage_fetch(qo, "day", "acme", T0, on_usage, &u);
    hl_run_until_set(&loop, &u.calls, 3000);
    TH_CHECK_INT(u.calls, 1);
    TH_CHECK(!u.ok);

    th_quota_free(qo);
    th_quota_free(qc);
    th_redis_free(r);
    uv_run(&loop, UV_RUN_DEFAULT);
    th_config_unref(open_cfg);
    th_config_unref(closed_cfg);
    TH_CHECK(uv_loop_close(&loop) == 0);
}

TH_TEST_MAIN()
