/* bench_espeak: P5 (BENCH.md), the embedded espeak-ng provider in-process.
 *
 *   bench_espeak TEXTFILE [N] [-o OUT.pcm]
 *   bench_espeak --run CMD [ARGS...]
 *
 * Creates the espeak provider once (not timed), then synthesises the text N times (default 5) with
 * voice en-us at speed 1.0, one job at a time, on a real uv loop. For each run it measures the wall
 * time, the CPU time of the whole process (loop + owner thread, getrusage), the time from start() to
 * the first PCM byte, and the seconds of audio made. Prints one line per run and a RESULT line with
 * medians, which bench/p5_espeak.sh reads. -o writes the last run's PCM (s16le mono) for checking.
 *
 * --run runs CMD as a child and prints "WALL_S CPU_S" of it with microsecond resolution (wait4
 * rusage, user + sys), so the script measures both sides of the A/B the same way and more finely than
 * /usr/bin/time's 10 ms. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <uv.h>

#include "core/clock.h"
#include "core/str.h"
#include "providers/espeak.h"

typedef struct run {
    uint64_t t0_us, first_us;
    size_t bytes;
    int rate;
    bool ended, failed;
    FILE *out;
} run;

static void on_format(void *ud, const th_audio_spec *spec)
{
    run *r = ud;
    r->rate = spec->sample_rate;
}

static int on_chunk(void *ud, const uint8_t *data, size_t len)
{
    run *r = ud;
    if (r->bytes == 0 && len > 0) r->first_us = th_mono_us() - r->t0_us;
    r->bytes += len;
    if (r->out != NULL && fwrite(data, 1, len, r->out) != len) r->failed = true;
    return 0;
}

static void on_done(void *ud)
{
    run *r = ud;
    r->ended = true;
}

static void on_error(void *ud, const th_perr *e)
{
    run *r = ud;
    fprintf(stderr, "bench_espeak: %s: %s\n", th_perr_kind_name(e->kind), e->message);
    r->ended = true;
    r->failed = true;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (nb == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf != NULL) *len = n;
    return buf;
}

extern char **environ;

static int run_child(char **argv)
{
    pid_t pid;
    uint64_t t0 = th_mono_us();
    int e = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ);
    if (e != 0) {
        fprintf(stderr, "bench_espeak: cannot run %s: %s\n", argv[0], strerror(e));
        return 1;
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 1;
    }
    double wall = (double)(th_mono_us() - t0) / 1e6;
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                 (double)ru.ru_stime.tv_usec / 1e6;
    printf("%.6f %.6f\n", wall, cpu);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--run") == 0) return run_child(argv + 2);
    const char *text_path = NULL, *out_path = NULL;
    int64_t n = 5;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out_path = argv[++i];
        } else if (text_path == NULL) {
            text_path = argv[i];
        } else if (th_str_to_i64(argv[i], 1, 1000, &n) != 0) {
            fprintf(stderr, "bench_espeak: bad run count '%s'\n", argv[i]);
            return 2;
        }
    }
    if (text_path == NULL) {
        fprintf(stderr, "usage: bench_espeak TEXTFILE [N] [-o OUT.pcm]\n");
        return 2;
    }
    size_t text_len = 0;
    char *text = read_file(text_path, &text_len);
    if (text == NULL) {
        perror(text_path);
        return 1;
    }
    int64_t chars = th_utf8_count(text, text_len);
    if (chars < 0) {
        fprintf(stderr, "bench_espeak: %s is not UTF-8\n", text_path);
        free(text);
        return 1;
    }

    uv_loop_t loop;
    uv_loop_init(&loop);
    th_provider_conf conf;
    memset(&conf, 0, sizeof conf);
    conf.name = "local";
    conf.type = "espeak";
    char err[256] = "";
    th_provider *p = th_espeak_ops.create(&loop, &conf, NULL, err, sizeof err);
    if (p == NULL) {
        fprintf(stderr, "bench_espeak: %s\n", err);
        free(text);
        return 1;
    }

    double *wall = calloc((size_t)n, sizeof *wall), *cpu = calloc((size_t)n, sizeof *cpu);
    double *first = calloc((size_t)n, sizeof *first), *audio = calloc((size_t)n, sizeof *audio);
    int rc = 0;
    if (wall == NULL || cpu == NULL || first == NULL || audio == NULL) {
        fprintf(stderr, "bench_espeak: out of memory\n");
        rc = 1;
        goto out;
    }
    for (int64_t i = 0; i < n; i++) {
        run r;
        memset(&r, 0, sizeof r);
        if (out_path != NULL && i == n - 1) {
            r.out = fopen(out_path, "wb");
            if (r.out == NULL) {
                perror(out_path);
                rc = 1;
                goto out;
            }
        }
        th_synth_req req;
        memset(&req, 0, sizeof req);
        req.text = text;
        req.text_len = text_len;
        req.chars = (size_t)chars;
        req.voice = "en-us";
        req.want_fmt = TH_FMT_PCM;
        req.speed = 1.0;
        th_sink sink = {on_format, on_chunk, on_done, on_error, &r};
        double c0 = cpu_s();
        r.t0_us = th_mono_us();
        th_job *job = th_provider_start(p, &req, &sink);
        if (job == NULL) {
            fprintf(stderr, "bench_espeak: start failed\n");
            rc = 1;
            goto out;
        }
        while (!r.ended)
            uv_run(&loop, UV_RUN_ONCE);
        wall[i] = (double)(th_mono_us() - r.t0_us) / 1e6;
        cpu[i] = cpu_s() - c0;
        first[i] = (double)r.first_us / 1e3;
        audio[i] = r.rate > 0 ? (double)r.bytes / 2.0 / r.rate : 0;
        if (r.out != NULL) fclose(r.out);
        if (r.failed) {
            rc = 1;
            goto out;
        }
        printf("run %lld: audio_s=%.3f wall_s=%.4f cpu_s=%.4f first_byte_ms=%.2f rt_cpu=%.0fx\n",
               (long long)i + 1, audio[i], wall[i], cpu[i], first[i], cpu[i] > 0 ? audio[i] / cpu[i] : 0);
    }
    double a = median(audio, (size_t)n), w = median(wall, (size_t)n), c = median(cpu, (size_t)n);
    double f = median(first, (size_t)n);
    printf("RESULT runs=%lld chars=%lld audio_s=%.3f wall_med_s=%.4f cpu_med_s=%.4f first_byte_med_ms=%.2f "
           "rt_cpu=%.1f rt_wall=%.1f\n",
           (long long)n, (long long)chars, a, w, c, f, c > 0 ? a / c : 0, w > 0 ? a / w : 0);
out:
    free(wall);
    free(cpu);
    free(first);
    free(audio);
    th_espeak_ops.destroy(p);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(text);
    return rc;
}
