/* Unit tests: audio/stream on a real libuv loop and thread pool. */
#include "th_test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "audio/conv.h"
#include "audio/stream.h"
#include "audio/wav.h"
#include "core/buf.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio/conv.h"
#include "audio/wav.h"
#include "core/buf.h"

/* s16le sine, interleaved over ch channels (the same tone on each). Caller frees. */
static inline uint8_t *tu_sine_s16(int rate, int ch, double seconds, size_t *len)
{
    size_t frames = (size_t)(rate * seconds);
    *len = frames * (size_t)ch * 2;
    uint8_t *p = malloc(*len ? *len : 1);
    if (p == NULL) return NULL;
    for (size_t i = 0; i < frames; i++) {
        int16_t v = (int16_t)(12000.0 * sin(2.0 * M_PI * 440.0 * (double)i / rate));
        for (int c = 0; c < ch; c++) {
            p[(i * (size_t)ch + (size_t)c) * 2] = (uint8_t)(v & 0xFF);
            p[(i * (size_t)ch + (size_t)c) * 2 + 1] = (uint8_t)((uint16_t)v >> 8);
        }
    }
    return p;
}

/* Converts anything (sniffed) to pcm s16 mono at rate; returns seconds of audio, or -1. */
static inline double tu_decoded_seconds(const uint8_t *p, size_t n, int rate)
{
    th_audio_spec in = {.fmt = TH_FMT_NONE};
    th_audio_target out = {.fmt = TH_FMT_PCM, .sample_rate = rate, .tempo = 1.0};
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    double s = -1;
    if (th_audio_convert(&in, p, n, &out, &b, err, sizeof err) == 0)
        s = (double)b.len / 2.0 / rate;
    else
        fprintf(stderr, "decode failed: %s\n", err);
    th_buf_free(&b);
    return s;
}

__attribute__((unused)) static inline int tu_within(double got, double want, double rel)
{
    int ok = fabs(got - want) <= want * rel;
    if (!ok) fprintf(stderr, "  duration %.4f s, want %.4f s (+-%.0f%%)\n", got, want, rel * 100);
    return ok;
}

__attribute__((unused)) static inline const uint8_t *tu_memmem(const uint8_t *h, size_t hn, const char *needle)
{
    size_t nn = strlen(needle);
    if (nn == 0 || hn < nn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, needle, nn) == 0) return h + i;
    return NULL;
}

typedef struct sink {
    th_buf out;
    int data_calls, done, errors;
    int after_close; /* callbacks after close: must stay 0 */
    bool closed;
    char err[256];
    th_audio_stream *s;
} sink;

static void on_data(void *ud, const uint8_t *d, size_t n)
{
    sink *k = ud;
    if (k->closed) k->after_close++;
    k->data_calls++;
    th_buf_append(&k->out, d, n);
}

static void on_done(void *ud)
{
    sink *k = ud;
    if (k->closed) k->after_close++;
    k->done++;
}

static void on_error(void *ud, const char *msg)
{
    sink *k = ud;
    if (k->closed) k->after_close++;
    k->errors++;
    snprintf(k->err, sizeof k->err, "%s", msg);
}

static const th_audio_spec pcm22k = {
    .fmt = TH_FMT_PCM, .sample_rate = 22050, .channels = 1, .sample = TH_SAMPLE_S16};

/* Pushes the input in chunks from a timer, as a network source would. */
typedef struct feeder {
    uv_timer_t timer;
    th_audio_stream *s;
    const uint8_t *p;
    size_t len, pos, chunk;
    size_t max_pending;
} feeder;

static void feed_tick(uv_timer_t *t)
{
    feeder *f = t->data;
    size_t pend = th_audio_stream_pending(f->s);
    if (pend > f->max_pending) f->max_pending = pend;
    for (int i = 0; i < 4 && f->pos < f->len; i++) {
        size_t k = f->len - f->pos < f->chunk ? f->len - f->pos : f->chunk;
        if (th_audio_stream_push(f->s, f->p + f->pos, k) != 0) break;
        f->pos += k;
    }
    if (f->pos >= f->len) {
        th_audio_stream_finish(f->s);
        uv_timer_stop(t);
        uv_close((uv_handle_t *)t, NULL);
    }
}

TH_TEST(stream_wav_to_mp3_on_loop)
{
    uv_loop_t loop;
    TH_REQUIRE(uv_loop_init(&loop) == 0);
    size_t n;
    uint8_t *pcm = tu_sine_s16(22050, 1, 3.0, &n);
    TH_REQUIRE(pcm != NULL);
    uint8_t *w = malloc(n + 44);
    TH_REQUIRE(w != NULL);
    th_wav_header(w, 22050, 1, 16, 0); /* streaming producer: size 0 */
    memcpy(w + 44, pcm, n);
    sink k = {0};
    th_buf_init(&k.out, 0);
    th_audio_stream_cb cb = {on_data, on_done, on_error, &k};
    th_audio_target t = {.fmt = TH_FMT_MP3};
    th_audio_spec in = {.fmt = TH_FMT_NONE};
    char err[256] = {0};
    th_audio_stream *s = th_audio_stream_new(&loop, &in, &t, &cb, err, sizeof err);
    TH_REQUIRE(s != NULL);
    feeder f = {.s = s, .p = w, .len = n + 44, .chunk = 4410};
    uv_timer_init(&loop, &f.timer);
    f.timer.data = &f;
    uv_timer_start(&f.timer, feed_tick, 0, 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(k.done, 1);
    TH_CHECK_INT(k.errors, 0);
    TH_CHECK(k.data_calls > 1); /* output came in pieces, not only at the end */
    TH_CHECK(f.max_pending > 0);
    TH_CHECK_INT(th_audio_stream_pending(s), 0);
    TH_CHECK(th_audio_stream_cpu_seconds(s) > 0.0);
    TH_CHECK(k.out.len > 1000 && memcmp(k.out.data, "ID3", 3) != 0);
    TH_CHECK(tu_within(tu_decoded_seconds(k.out.data, k.out.len, 24000), 3.0, 0.03));
    th_audio_stream_close(s);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    th_buf_free(&k.out);
    free(w);
    free(pcm);
}

TH_TEST(stream_passthrough_is_direct)
{
    uv_loop_t loop;
    TH_REQUIRE(uv_loop_init(&loop) == 0);
    size_t n;
    uint8_t *pcm = tu_sine_s16(24000, 1, 1.0, &n);
    TH_REQUIRE(pcm != NULL);
    sink k = {0};
    th_buf_init(&k.out, 0);
    th_audio_stream_cb cb = {on_data, on_done, on_error, &k};
    th_audio_spec in = {.fmt = TH_FMT_PCM, .sample_rate = 24000, .channels = 1};
    th_audio_target t = {.fmt = TH_FMT_PCM};
    char err[256] = {0};
    th_audio_stream *s = th_audio_stream_new(&loop, &in, &t, &cb, err, sizeof err);
    TH_REQUIRE(s != NULL);
    /* First push may hop to the pool (the format is not decided yet); run it. */
    TH_REQUIRE(th_audio_stream_push(s, pcm, 4800) == 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    size_t before = k.out.len;
    TH_REQUIRE(th_audio_stream_push(s, pcm + 4800, n - 4800) == 0);
    /* Pass-through now: delivered inside push, without running the loop. */
    TH_CHECK_INT(k.out.len, n);
    TH_CHECK(before == 4800);
    th_audio_stream_finish(s);
    TH_CHECK_INT(k.done, 1);
    TH_CHECK(k.out.len == n && memcmp(k.out.data, pcm, n) == 0);
    th_audio_stream_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    th_buf_free(&k.out);
    free(pcm);
}

TH_TEST(stream_close_mid_stream)
{
    uv_loop_t loop;
    TH_REQUIRE(uv_loop_init(&loop) == 0);
    size_t n;
    uint8_t *pcm = tu_sine_s16(22050, 1, 10.0, &n);
    TH_REQUIRE(pcm != NULL);
    for (int round = 0; round < 3; round++) {
        sink k = {0};
        th_buf_init(&k.out, 0);
        th_audio_stream_cb cb = {on_data, on_done, on_error, &k};
        th_audio_target t = {.fmt = round == 2 ? TH_FMT_OPUS : TH_FMT_MP3, .tempo = round == 1 ? 1.5 : 1.0};
        char err[256] = {0};
        th_audio_stream *s = th_audio_stream_new(&loop, &pcm22k, &t, &cb, err, sizeof err);
        TH_REQUIRE(s != NULL);
        TH_REQUIRE(th_audio_stream_push(s, pcm, n / 2) == 0); /* goes to the pool */
        TH_REQUIRE(th_audio_stream_push(s, pcm + n / 2, n / 2) == 0);
        TH_CHECK(th_audio_stream_pending(s) > 0);
        if (round == 1) uv_run(&loop, UV_RUN_NOWAIT); /* maybe one batch back */
        th_audio_stream_close(s);                     /* work may still be in flight */
        k.closed = true;
        uv_run(&loop, UV_RUN_DEFAULT); /* the work returns; the stream is freed then */
        TH_CHECK_INT(k.after_close, 0);
        TH_CHECK_INT(k.done, 0);
        th_buf_free(&k.out);
    }
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    free(pcm);
}

TH_TEST(stream_error_reported)
{
    uv_loop_t loop;
    TH_REQUIRE(uv_loop_init(&loop) == 0);
    sink k = {0};
    th_buf_init(&k.out, 0);
    th_audio_stream_cb cb = {on_data, on_done, on_error, &k};
    th_audio_spec in = {.fmt = TH_FMT_WAV};
    th_audio_target t = {.fmt = TH_FMT_MP3};
    char err[256] = {0};
    th_audio_stream *s = th_audio_stream_new(&loop, &in, &t, &cb, err, sizeof err);
    TH_REQUIRE(s != NULL);
    const char *bad = "RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x07\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0";
    TH_REQUIRE(th_audio_stream_push(s, (const uint8_t *)bad, 36) == 0);
    th_audio_stream_finish(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(k.errors, 1);
    TH_CHECK_INT(k.done, 0);
    TH_CHECK(strstr(k.err, "wav") != NULL);
    TH_CHECK(th_audio_stream_push(s, (const uint8_t *)"x", 1) != 0);
    th_audio_stream_close(s);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    th_buf_free(&k.out);

    /* A bad target fails at creation. */
    th_audio_target bad_t = {.fmt = TH_FMT_OPUS, .sample_rate = 44100};
    TH_CHECK(th_audio_stream_new(&loop, &in, &bad_t, &cb, err, sizeof err) == NULL);
    TH_CHECK(err[0] != '\0');
}

TH_TEST_MAIN()
