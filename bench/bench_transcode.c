/* bench_transcode: P7 driver. Converts a WAV file to mp3 (24 kHz mono, 64 kbit/s by default) N times
 * with th_audio_convert and prints the realtime factor and CPU seconds.
 *
 *   bench_transcode IN.wav [N=10] [BITRATE=64000] [-o OUT.mp3]
 *
 * The last line is machine-readable:
 *   RESULT audio_s=<s> runs=<N> wall_med_s=<s> cpu_med_s=<s> rtf_wall=<x> rtf_cpu=<x> out_bytes=<n> */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audio/conv.h"
#include "audio/wav.h"
#include "core/buf.h"
#include "core/str.h"

static double now(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

static int read_file(const char *path, th_buf *b)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -1;
    uint8_t chunk[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (th_buf_append(b, chunk, n) != TH_BUF_OK) {
            rc = -1;
            break;
        }
    if (ferror(f)) rc = -1;
    fclose(f);
    return rc;
}

/* Seconds of audio in a WAV held in memory (sizes in the header are not trusted). */
static double wav_seconds(const uint8_t *p, size_t n)
{
    th_wav_reader *r = th_wav_reader_new(0);
    if (r == NULL) return -1;
    const uint8_t *pcm;
    size_t pcm_len;
    char err[128];
    double s = -1;
    if (th_wav_reader_push(r, p, n, &pcm, &pcm_len, err, sizeof err) == TH_WAV_HAVE_FORMAT) {
        const th_audio_spec *sp = th_wav_reader_spec(r);
        int bytes = th_sample_bytes(sp->sample) * sp->channels;
        s = (double)pcm_len / bytes / sp->sample_rate;
    }
    th_wav_reader_free(r);
    return s;
}

int main(int argc, char **argv)
{
    const char *in_path = NULL, *out_path = NULL;
    int64_t runs = 10, bitrate = 64000;
    int pos = 0, rc = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out_path = argv[++i];
        } else if (pos == 0) {
            in_path = argv[i];
            pos++;
        } else if (pos == 1 && th_str_to_i64(argv[i], 1, 100000, &runs) == 0) {
            pos++;
        } else if (pos == 2 && th_str_to_i64(argv[i], 8000, 320000, &bitrate) == 0) {
            pos++;
        } else {
            in_path = NULL;
            break;
        }
    }
    if (in_path == NULL) {
        fprintf(stderr, "usage: %s IN.wav [N=10] [BITRATE=64000] [-o OUT.mp3]\n", argv[0]);
        return 2;
    }
    th_buf in, out;
    th_buf_init(&in, 0);
    th_buf_init(&out, 0);
    double *wall = calloc((size_t)runs, sizeof *wall), *cpu = calloc((size_t)runs, sizeof *cpu);
    if (wall == NULL || cpu == NULL) goto out;
    if (read_file(in_path, &in) != 0) {
        fprintf(stderr, "bench_transcode: cannot read %s: %s\n", in_path, strerror(errno));
        goto out;
    }
    double audio_s = wav_seconds(in.data, in.len);
    if (audio_s <= 0) {
        fprintf(stderr, "bench_transcode: %s is not a WAV file\n", in_path);
        goto out;
    }
    th_audio_spec spec = {.fmt = TH_FMT_WAV};
    th_audio_target target = {.fmt = TH_FMT_MP3, .sample_rate = 24000, .tempo = 1.0, .bitrate = (int)bitrate};
    char err[256] = {0};
    for (int i = 0; i < runs; i++) {
        th_buf_reset(&out);
        double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
        if (th_audio_convert(&spec, in.data, in.len, &target, &out, err, sizeof err) != 0) {
            fprintf(stderr, "bench_transcode: %s\n", err);
            goto out;
        }
        wall[i] = now(CLOCK_MONOTONIC) - w0;
        cpu[i] = now(CLOCK_PROCESS_CPUTIME_ID) - c0;
    }
    if (out_path != NULL) {
        FILE *f = fopen(out_path, "wb");
        if (f == NULL || fwrite(out.data, 1, out.len, f) != out.len) {
            fprintf(stderr, "bench_transcode: cannot write %s\n", out_path);
            if (f) fclose(f);
            goto out;
        }
        fclose(f);
    }
    double wm = median(wall, (int)runs), cm = median(cpu, (int)runs);
    printf("input %s: %.2f s of audio; wav -> mp3 24 kHz mono %lld bit/s, %lld runs\n", in_path, audio_s,
           (long long)bitrate, (long long)runs);
    printf("median wall %.4f s, median cpu %.4f s, realtime x%.0f (wall), x%.0f (cpu)\n", wm, cm,
           audio_s / wm, audio_s / cm);
    printf("RESULT audio_s=%.3f runs=%lld wall_med_s=%.5f cpu_med_s=%.5f rtf_wall=%.1f rtf_cpu=%.1f "
           "out_bytes=%zu\n",
           audio_s, (long long)runs, wm, cm, audio_s / wm, audio_s / cm, out.len);
    rc = 0;
out:
    free(wall);
    free(cpu);
    th_buf_free(&in);
    th_buf_free(&out);
    return rc;
}
