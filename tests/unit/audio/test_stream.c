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

#include "audio_testlib.h"

typedef struct sink {
    th_buf out;
    int data_calls, done, errors;
    int after_close;          /* callbacks after close: must stay 0 */
    const uint8_t *first_ptr; /* where the first on_data bytes lived */
    bool closed;
    char err[256];
    th_audio_stream *s;
} sink;

static void on_data(void *ud, const uint8_t *d, size_t n)
{
    sink *k = ud;
    if (n == 0) return; /* progress without output */
    if (k->closed) k->after_close++;
    if (k->data_calls++ == 0) k->first_ptr = d;
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

TH_TEST(stream_same_compressed_format_is_zero_copy)
{
    /* mp3 asked for, mp3 declared and sent: the caller's own bytes reach on_data, inside push, uncopied. */
    uv_loop_t loop;
    TH_REQUIRE(uv_loop_init(&loop) == 0);
    size_t n;
    uint8_t *pcm = tu_sine_s16(24000, 1, 1.0, &n);
    TH_REQUIRE(pcm != NULL);
    th_buf mp3;
    th_buf_init(&mp3, 0);
    char err[256] = {0};
    th_audio_spec pin = {.fmt = TH_FMT_PCM, .sample_rate = 24000, .channels = 1};
    th_audio_target mt = {.fmt = TH_FMT_MP3};
    TH_REQUIRE(th_audio_convert(&pin, pcm, n, &mt, &mp3, err, sizeof err) == 0);
    sink k = {0};
    th_buf_init(&k.out, 0);
    th_audio_stream_cb cb = {on_data, on_done, on_error, &k};
    th_audio_spec in = {.fmt = TH_FMT_MP3};
    th_audio_stream *s = th_audio_stream_new(&loop, &in, &mt, &cb, err, sizeof err);
    TH_REQUIRE(s != NULL);
    TH_REQUIRE(th_audio_stream_push(s, mp3.data, 1000) == 0);
    TH_CHECK_INT(k.data_calls, 1);
    TH_CHECK(k.first_ptr == mp3.data);
    TH_REQUIRE(th_audio_stream_push(s, mp3.data + 1000, mp3.len - 1000) == 0);
    TH_CHECK_INT(k.data_calls, 2);
    th_audio_stream_finish(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(k.done, 1);
    TH_CHECK_INT(k.errors, 0);
    TH_CHECK(k.out.len == mp3.len && memcmp(k.out.data, mp3.data, mp3.len) == 0);
    th_audio_stream_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    TH_CHECK_INT(uv_loop_close(&loop), 0);
    th_buf_free(&k.out);
    th_buf_free(&mp3);
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
