/* test_library: voice records, the fs backend (atomic files, start-up scan), the audio cache and uses. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hub_loop.h"
#include "audio/flac.h"
#include "audio/wav.h"
#include "core/buf.h"
#include "core/clock.h"
#include "th_test.h"
#include "voice/library.h"

static void fill_meta(th_vlib_meta *m, const char *id, const char *tenant, const uint8_t *wav, size_t len)
{
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    th_vlib_meta_set(&m->name, "Name");
    th_vlib_meta_set(&m->tenant, tenant);
    th_vlib_meta_set(&m->engine, "xtts");
    th_vlib_meta_set(&m->text, "words \"quoted\"\n");
    th_vlib_meta_set(&m->language, "en");
    m->duration_s = 1.5;
    m->created_ms = m->updated_ms = 1700000000000;
    m->rate = 24000;
    m->wav_len = len;
    th_vlib_sha256_hex(wav, len, m->sha256);
}

static uint8_t *make_wav(size_t samples, int seed, size_t *len)
{
    *len = TH_WAV_HEADER_LEN + samples * 2;
    uint8_t *w = malloc(*len);
    th_wav_header(w, 24000, 1, 16, (uint32_t)(samples * 2));
    for (size_t i = TH_WAV_HEADER_LEN; i < *len; i++)
        w[i] = (uint8_t)(i * 31 + (size_t)seed);
    return w;
}

TH_TEST(ids)
{
    TH_CHECK(th_vlib_id_ok("abc_DEF-09", 10));
    TH_CHECK(!th_vlib_id_ok("", 0));
    TH_CHECK(!th_vlib_id_ok("../x", 4));
    TH_CHECK(!th_vlib_id_ok("a.b", 3));
    TH_CHECK(!th_vlib_id_ok("a b", 3));
    char l[66];
    memset(l, 'a', 65);
    l[65] = 0;
    TH_CHECK(th_vlib_id_ok(l, 64));
    TH_CHECK(!th_vlib_id_ok(l, 65));
}

TH_TEST(record_roundtrip_and_rejects)
{
    size_t len;
    uint8_t *w = make_wav(100, 1, &len);
    th_vlib_meta m, back;
    fill_meta(&m, "rt", "acme", w, len);
    char *rec = th_vlib_meta_dump(&m);
    TH_REQUIRE(rec != NULL);
    char err[200];
    TH_REQUIRE(th_vlib_meta_parse(rec, strlen(rec), &back, err, sizeof err) == 0);
    TH_CHECK_STR(back.id, "rt");
    TH_CHECK_STR(back.text, "words \"quoted\"\n");
    TH_CHECK_STR(back.tenant, "acme");
    TH_CHECK_STR(back.sha256, m.sha256);
    TH_CHECK_INT(back.wav_len, len);
    TH_CHECK_INT(back.created_ms, 1700000000000);
    th_vlib_meta_free(&back);
    static const char *bad[] = {
        "",
        "[]",
        "{}",
        "{\"format\":1,\"id\":\"../x\"}",
        "{\"format\":2,\"id\":\"a\"}",
        "{\"format\":1,\"id\":\"a\",\"sha256\":\"00\"}",
        "{\"format\":1,\"id\":\"a\",\"id\":\"b\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        TH_CHECK(th_vlib_meta_parse(bad[i], strlen(bad[i]), &back, err, sizeof err) != 0);
    /* a string member with a NUL in it */
    char *nul = malloc(strlen(rec) + 16);
    char *p = strstr(rec, "\"name\":\"Name\"");
    TH_REQUIRE(p != NULL);
    size_t pre = (size_t)(p - rec) + 9;
    memcpy(nul, rec, pre);
    memcpy(nul + pre, "\\u0000", 6);
    memcpy(nul + pre + 6, rec + pre, strlen(rec + pre) + 1);
    TH_CHECK(th_vlib_meta_parse(nul, strlen(nul), &back, err, sizeof err) != 0);
    free(nul);
    free(rec);
    th_vlib_meta_free(&m);
    free(w);
}

typedef struct res {
    int done;
    th_vlib_rc rc;
    th_vlib_use *u;
} res;

static void on_done(void *ud, th_vlib_rc rc, const char *err)
{
    res *r = ud;
    (void)err;
    r->rc = rc;
    r->done++;
}

static void on_use(void *ud, th_vlib_use *u, th_vlib_rc rc)
{
    res *r = ud;
    r->rc = rc;
    r->u = u;
    r->done++;
}

static size_t count_files(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL)
        if (strncmp(de->d_name, prefix, strlen(prefix)) == 0) n++;
    if (d) closedir(d);
    return n;
}

/* Sets a file's times an hour back. */
static void make_old(const char *path)
{
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= 3600;
    ts[1] = ts[0];
    utimensat(AT_FDCWD, path, ts, 0);
}

TH_TEST(fs_store_cache_and_uses)
{
    char tmpl[] = "/tmp/th-vlib-XXXXXX";
    TH_REQUIRE(mkdtemp(tmpl) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_log *log = th_log_new(TH_LOG_ERROR, TH_LOG_TEXT, "");
    th_vlib_conf conf = {.backend = "fs", .data_dir = tmpl, .cache_bytes = 4500, .max_voices = 100};
    char err[256] = "";
    th_vlib *l = th_vlib_new(&loop, &conf, log, err, sizeof err);
    TH_REQUIRE(l != NULL);

    /* two voices of 2044 bytes and their compact forms: the cache (4500 bytes) holds one */
    size_t la, lb;
    uint8_t *wa = make_wav(1000, 1, &la), *wb = make_wav(1000, 2, &lb);
    th_vlib_meta ma, mb;
    fill_meta(&ma, "alpha", "t1", wa, la);
    fill_meta(&mb, "beta", "t2", wb, lb);
    TH_CHECK_INT(th_vlib_reserve(l, "alpha", "t1", 1), TH_VLIB_OK);
    TH_CHECK_INT(th_vlib_reserve(l, "alpha", "t1", 5), TH_VLIB_TAKEN);
    TH_CHECK_INT(th_vlib_reserve(l, "gamma", "t1", 1), TH_VLIB_FULL); /* t1's cap, counting the reservation */
    TH_CHECK(th_vlib_find(l, "alpha") == NULL);                       /* not live until stored */
    res r = {0};
    uint8_t *copy = malloc(la);
    memcpy(copy, wa, la);
    th_vlib_create(l, &ma, copy, la, 1, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(r.rc, TH_VLIB_OK);
    TH_CHECK(th_vlib_find(l, "alpha") != NULL);
    TH_CHECK_INT(th_vlib_reserve(l, "beta", "t2", 1), TH_VLIB_OK);
    r = (res){0};
    copy = malloc(lb);
    memcpy(copy, wb, lb);
    th_vlib_create(l, &mb, copy, lb, 1, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(th_vlib_count(l), 2);
    TH_CHECK(th_vlib_cached_bytes(l) <= 4500); /* alpha was evicted */

    /* visibility */
    const th_vlib_meta *list[4];
    TH_CHECK_INT(th_vlib_list(l, "t1", false, list, 4), 1);
    TH_CHECK_INT(th_vlib_list(l, "t3", false, list, 4), 0);
    TH_CHECK_INT(th_vlib_list(l, "t3", true, list, 4), 2);
    TH_CHECK_STR(list[0]->id, "alpha");

    /* alpha is loaded from disk (async), beta is resident (sync) */
    res ua = {0}, ub = {0};
    th_vlib_acquire(l, "beta", on_use, &ub);
    TH_CHECK_INT(ub.done, 1);
    th_vlib_acquire(l, "alpha", on_use, &ua);
    TH_REQUIRE(hl_run_until(&loop, &ua.done, 1, 5000));
    TH_REQUIRE(ua.u != NULL && ub.u != NULL);
    const th_voice_ref *ra = th_vlib_use_ref(ua.u);
    TH_CHECK(ra->wav_len == la && memcmp(ra->wav, wa, la) == 0);
    TH_CHECK_STR(ra->sha256, ma.sha256);
    TH_CHECK_STR(ra->text, "words \"quoted\"\n");
    /* both the voice loaded from disk (alpha) and the one made here (beta) carry the compact form: the
     * WAV at 16 kHz as FLAC, made once, counted in the cache */
    th_buf want;
    th_buf_init(&want, 0);
    TH_CHECK(th_flac_from_wav(wa, la, TH_VOICE_REF_FLAC_RATE, &want, err, sizeof err) == 0);
    TH_CHECK(ra->flac16k != NULL && ra->flac16k_len == want.len &&
             memcmp(ra->flac16k, want.data, want.len) == 0);
    const th_voice_ref *rb = th_vlib_use_ref(ub.u);
    TH_CHECK(rb->flac16k != NULL && rb->flac16k_len > 4 && memcmp(rb->flac16k, "fLaC", 4) == 0);
    TH_CHECK(th_vlib_cached_bytes(l) == la + ra->flac16k_len); /* alpha alone: beta was evicted for it */
    th_buf_free(&want);

    /* rename, then delete while the use is held: the job's copy stays whole */
    r = (res){0};
    th_vlib_update(l, "alpha", "Renamed", NULL, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_STR(th_vlib_find(l, "alpha")->name, "Renamed");
    r = (res){0};
    th_vlib_delete(l, "alpha", on_done, &r);
    TH_CHECK_INT(th_vlib_reserve(l, "alpha", "t1", 5), TH_VLIB_TAKEN); /* still being deleted */
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(r.rc, TH_VLIB_OK);
    TH_CHECK(th_vlib_find(l, "alpha") == NULL);
    TH_CHECK(memcmp(ra->wav, wa, la) == 0 && strcmp(ra->name, "Name") == 0);
    th_vlib_use_release(ua.u);
    th_vlib_use_release(ub.u);
    res gone = {0};
    th_vlib_acquire(l, "alpha", on_use, &gone);
    TH_CHECK(gone.done == 1 && gone.u == NULL && gone.rc == TH_VLIB_MISSING);
    th_vlib_free(l);
    hl_run_until_set(&loop, NULL, 50);

    /* a crash's leftovers (old): a temp file and an orphaned wav are cleaned up; beta is back. Fresh ones
     * may be another process's writes under way, and stay. */
    char path[512];
    snprintf(path, sizeof path, "%s/voices/.tmp-1-1", tmpl);
    FILE *f = fopen(path, "w");
    TH_REQUIRE(f != NULL);
    fputs("half", f);
    fclose(f);
    make_old(path);
    snprintf(path, sizeof path, "%s/voices/orphan.%s.wav", tmpl, ma.sha256);
    f = fopen(path, "w");
    TH_REQUIRE(f != NULL);
    fputs("x", f);
    fclose(f);
    make_old(path);
    snprintf(path, sizeof path, "%s/voices/.tmp-2-1", tmpl);
    f = fopen(path, "w");
    TH_REQUIRE(f != NULL);
    fclose(f);
    snprintf(path, sizeof path, "%s/voices/fresh.%s.wav", tmpl, ma.sha256);
    f = fopen(path, "w");
    TH_REQUIRE(f != NULL);
    fclose(f);
    snprintf(path, sizeof path, "%s/voices/broken.json", tmpl);
    f = fopen(path, "w");
    TH_REQUIRE(f != NULL);
    fputs("{\"format\":1,", f);
    fclose(f);
    /* another process uses the directory: only the old leftovers are surely crashed writes */
    snprintf(path, sizeof path, "%s/voices/.members", tmpl);
    int other = open(path, O_RDWR);
    TH_REQUIRE(other >= 0 && flock(other, LOCK_SH) == 0);
    l = th_vlib_new(&loop, &conf, log, err, sizeof err);
    TH_REQUIRE(l != NULL);
    TH_CHECK_INT(th_vlib_count(l), 1);
    TH_CHECK(th_vlib_find(l, "beta") != NULL);
    snprintf(path, sizeof path, "%s/voices", tmpl);
    TH_CHECK_INT(count_files(path, ".tmp-1-"), 0);
    TH_CHECK_INT(count_files(path, "orphan"), 0);
    TH_CHECK_INT(count_files(path, ".tmp-2-"), 1);
    TH_CHECK_INT(count_files(path, "fresh."), 1);
    TH_CHECK_INT(count_files(path, "alpha"), 0);
    res u2 = {0};
    th_vlib_acquire(l, "beta", on_use, &u2);
    TH_REQUIRE(hl_run_until(&loop, &u2.done, 1, 5000));
    TH_REQUIRE(u2.u != NULL);
    TH_CHECK(memcmp(th_vlib_use_ref(u2.u)->wav, wb, lb) == 0);
    th_vlib_use_release(u2.u);
    th_vlib_free(l);
    hl_run_until_set(&loop, NULL, 50);
    /* alone, a start removes every leftover (no other process can be writing) */
    close(other);
    l = th_vlib_new(&loop, &conf, log, err, sizeof err);
    TH_REQUIRE(l != NULL);
    TH_CHECK_INT(count_files(path, ".tmp-"), 0);
    TH_CHECK_INT(count_files(path, "fresh."), 0);
    TH_CHECK_INT(th_vlib_count(l), 1);
    th_vlib_free(l);
    hl_run_until_set(&loop, NULL, 50);

    th_vlib_meta_free(&ma);
    th_vlib_meta_free(&mb);
    free(wa);
    free(wb);
    th_log_free(log);
    uv_loop_close(&loop);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    TH_CHECK(system(cmd) == 0);
}

static void on_removed(void *ud, const th_voice_ref *ref)
{
    (void)ref;
    (*(int *)ud)++;
}

/* Two processes on one data_dir (a blue/green restart): each sees the voices the other makes, renames and
 * deletes, through the directory watch. */
TH_TEST(fs_shared_data_dir)
{
    char tmpl[] = "/tmp/th-vlib-XXXXXX";
    TH_REQUIRE(mkdtemp(tmpl) != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    th_log *log = th_log_new(TH_LOG_ERROR, TH_LOG_TEXT, "");
    th_vlib_conf conf = {.backend = "fs", .data_dir = tmpl, .cache_bytes = 1 << 20, .max_voices = 100};
    char err[256] = "";
    th_vlib *a = th_vlib_new(&loop, &conf, log, err, sizeof err);
    th_vlib *b = th_vlib_new(&loop, &conf, log, err, sizeof err);
    TH_REQUIRE(a != NULL && b != NULL);
    int removed = 0;
    th_vlib_on_removed(b, on_removed, &removed);
    size_t len;
    uint8_t *w = make_wav(800, 3, &len);
    th_vlib_meta m;
    fill_meta(&m, "shared", "t1", w, len);
    TH_CHECK_INT(th_vlib_reserve(a, "shared", "t1", 5), TH_VLIB_OK);
    res r = {0};
    uint8_t *copy = malloc(len);
    memcpy(copy, w, len);
    th_vlib_create(a, &m, copy, len, 5, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(r.rc, TH_VLIB_OK);
    /* b learns of it, and can use its audio */
    uint64_t deadline = th_mono_ms() + 5000;
    while (th_vlib_find(b, "shared") == NULL && th_mono_ms() < deadline)
        hl_run_until_set(&loop, NULL, 10);
    TH_REQUIRE(th_vlib_find(b, "shared") != NULL);
    TH_CHECK_STR(th_vlib_find(b, "shared")->tenant, "t1");
    res u = {0};
    th_vlib_acquire(b, "shared", on_use, &u);
    TH_REQUIRE(hl_run_until(&loop, &u.done, 1, 5000));
    TH_REQUIRE(u.u != NULL);
    TH_CHECK(memcmp(th_vlib_use_ref(u.u)->wav, w, len) == 0);
    th_vlib_use_release(u.u);
    /* a renames it: b sees the new name */
    r = (res){0};
    th_vlib_update(a, "shared", "Renamed", NULL, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    deadline = th_mono_ms() + 5000;
    while (strcmp(th_vlib_find(b, "shared")->name, "Renamed") != 0 && th_mono_ms() < deadline)
        hl_run_until_set(&loop, NULL, 10);
    TH_CHECK_STR(th_vlib_find(b, "shared")->name, "Renamed");
    /* b deletes it: a forgets it; b's own delete is not "removed by another" */
    r = (res){0};
    th_vlib_delete(b, "shared", on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    TH_CHECK_INT(r.rc, TH_VLIB_OK);
    deadline = th_mono_ms() + 5000;
    while (th_vlib_find(a, "shared") != NULL && th_mono_ms() < deadline)
        hl_run_until_set(&loop, NULL, 10);
    TH_CHECK(th_vlib_find(a, "shared") == NULL);
    TH_CHECK_INT(removed, 0);
    /* a makes it again, then deletes it: b gets it and then is told it was removed */
    TH_CHECK_INT(th_vlib_reserve(a, "shared", "t1", 5), TH_VLIB_OK);
    r = (res){0};
    copy = malloc(len);
    memcpy(copy, w, len);
    th_vlib_create(a, &m, copy, len, 5, on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    deadline = th_mono_ms() + 5000;
    while (th_vlib_find(b, "shared") == NULL && th_mono_ms() < deadline)
        hl_run_until_set(&loop, NULL, 10);
    TH_CHECK(th_vlib_find(b, "shared") != NULL);
    r = (res){0};
    th_vlib_delete(a, "shared", on_done, &r);
    TH_REQUIRE(hl_run_until(&loop, &r.done, 1, 5000));
    deadline = th_mono_ms() + 5000;
    while (th_vlib_find(b, "shared") != NULL && th_mono_ms() < deadline)
        hl_run_until_set(&loop, NULL, 10);
    TH_CHECK(th_vlib_find(b, "shared") == NULL);
    TH_CHECK_INT(removed, 1);
    th_vlib_free(a);
    th_vlib_free(b);
    hl_run_until_set(&loop, NULL, 50);
    th_vlib_meta_free(&m);
    free(w);
    th_log_free(log);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpl);
    TH_CHECK(system(cmd) == 0);
}

TH_TEST_MAIN()
