/* stream: a th_audio_conv driven from a libuv loop, converting on the thread pool.
 *
 * One batch per stream is in flight at a time: the loop thread queues input; a batch takes all of
 * it (buffers are swapped, not copied) to the pool; after_work hands the output to on_data on the
 * loop thread and starts the next batch if more input came meanwhile. The converter is touched by
 * the pool thread only while a batch is in flight, and by the loop thread only when none is.
 * Pass-through streams convert on the loop thread and call on_data from inside push/finish.
 * A stream is never freed while a work item is in flight or while one of its callbacks runs. */
#include "audio/stream.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"

struct th_audio_stream {
    uv_loop_t *loop;
    th_audio_conv *conv;
    th_audio_stream_cb cb;
    th_buf queued;   /* input not yet handed to a batch */
    th_buf batch_in; /* input of the batch in flight */
    th_buf out;      /* output of the batch in flight */
    uv_work_t work;
    bool in_flight;
    bool batch_finish;
    int batch_rc;
    double batch_cpu;
    char batch_err[256];
    double cpu;
    bool finishing; /* finish() was called */
    bool ended;     /* on_done or on_error delivered */
    bool closed;
    int busy; /* callbacks running */
};

static double thread_cpu(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0.0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void stream_free(th_audio_stream *s)
{
    th_audio_conv_free(s->conv);
    th_buf_free(&s->queued);
    th_buf_free(&s->batch_in);
    th_buf_free(&s->out);
    free(s);
}

/* Runs the converter on the batch (pool thread, or loop thread for pass-through). */
static void convert_batch(th_audio_stream *s)
{
    bool light = th_audio_conv_light(s->conv); /* copies: not worth two clock syscalls */
    double t0 = light ? 0.0 : thread_cpu();
    th_buf_reset(&s->out);
    s->batch_err[0] = '\0';
    s->batch_rc = 0;
    if (s->batch_in.len > 0)
        s->batch_rc = th_audio_conv_push(s->conv, s->batch_in.data, s->batch_in.len, &s->out, s->batch_err,
                                         sizeof s->batch_err);
    if (s->batch_rc == 0 && s->batch_finish)
        s->batch_rc = th_audio_conv_finish(s->conv, &s->out, s->batch_err, sizeof s->batch_err);
    s->batch_cpu = light ? 0.0 : thread_cpu() - t0;
}

/* Hands a batch's results to the callbacks. Returns false when the stream is gone or ended. */
static bool deliver(th_audio_stream *s)
{
    s->cpu += s->batch_cpu;
    bool took_input = s->batch_in.len > 0;
    th_buf_reset(&s->batch_in);
    s->busy++;
    if (s->batch_rc != 0) {
        s->ended = true;
        if (s->cb.on_error)
            s->cb.on_error(s->cb.ud, s->batch_err[0] ? s->batch_err : "audio conversion failed");
    } else {
        if (s->out.len > 0 && s->cb.on_data && !s->closed) s->cb.on_data(s->cb.ud, s->out.data, s->out.len);
        /* input taken with nothing out yet (a container held whole for its demuxer): say so, so that a
         * producer paused on th_audio_stream_pending may resume */
        else if (took_input && s->cb.on_data && !s->closed)
            s->cb.on_data(s->cb.ud, NULL, 0);
        if (s->batch_finish && !s->closed) {
            s->ended = true;
            if (s->cb.on_done) s->cb.on_done(s->cb.ud);
        }
    }
    s->busy--;
    if (s->closed) {
        if (s->busy == 0) stream_free(s);
        return false;
    }
    return !s->ended;
}

static void work_cb(uv_work_t *w)
{
    convert_batch(w->data);
}

static void schedule(th_audio_stream *s);

static void after_work_cb(uv_work_t *w, int status)
{
    th_audio_stream *s = w->data;
    s->in_flight = false;
    if (s->closed) {
        if (s->busy == 0) stream_free(s);
        return;
    }
    if (status != 0) {
        s->batch_rc = -1;
        snprintf(s->batch_err, sizeof s->batch_err, "audio: work cancelled: %s", uv_strerror(status));
    }
    if (deliver(s)) schedule(s);
}

/* Takes everything queued into a batch. */
static void take_batch(th_audio_stream *s)
{
    th_buf t = s->batch_in; /* empty, keeps its memory */
    s->batch_in = s->queued;
    s->queued = t;
    th_buf_reset(&s->queued);
    s->batch_finish = s->finishing;
}

static void schedule(th_audio_stream *s)
{
    while (!s->in_flight && !s->closed && !s->ended && s->busy == 0 && (s->queued.len > 0 || s->finishing)) {
        take_batch(s);
        if (th_audio_conv_light(s->conv)) {
            convert_batch(s); /* cheap: bytes are copied (a WAV header is rewritten) */
            if (!deliver(s)) return;
            continue;
        }
        s->work.data = s;
        int rc = uv_queue_work(s->loop, &s->work, work_cb, after_work_cb);
        if (rc != 0) {
            s->batch_rc = -1;
            s->batch_cpu = 0;
            snprintf(s->batch_err, sizeof s->batch_err, "audio: uv_queue_work: %s", uv_strerror(rc));
            deliver(s);
            return;
        }
        s->in_flight = true;
        return;
    }
}

th_audio_stream *th_audio_stream_new(uv_loop_t *loop, const th_audio_spec *in, const th_audio_target *out,
                                     const th_audio_stream_cb *cb, char *err, size_t errlen)
{
    th_audio_stream *s = calloc(1, sizeof *s);
    if (s == NULL) {
        if (err && errlen) snprintf(err, errlen, "audio: out of memory");
        return NULL;
    }
    s->loop = loop;
    s->cb = *cb;
    /* input held at once: what arrives between batches (the caller keeps it small through
     * th_audio_stream_pending), plus one part held whole before its turn (hub/synth.c) */
    size_t in_max = 2 * (size_t)(out->max_buffered ? out->max_buffered : TH_AUDIO_MAX_BUFFERED);
    th_buf_init(&s->queued, in_max);
    th_buf_init(&s->batch_in, in_max);
    th_buf_init(&s->out, 0); /* the converter's output of one bounded batch */
    s->conv = th_audio_conv_new(in, out, err, errlen);
    if (s->conv == NULL) {
        stream_free(s);
        return NULL;
    }
    return s;
}

int th_audio_stream_push(th_audio_stream *s, const uint8_t *data, size_t len)
{
    if (s->closed || s->ended || s->finishing) return -1;
    if (s->queued.len == 0 && !s->in_flight && s->busy == 0) {
        /* pass-through: the caller's bytes go straight to on_data, never copied */
        s->batch_err[0] = '\0';
        int pr = th_audio_conv_pass(s->conv, data, len, s->batch_err, sizeof s->batch_err);
        if (pr != 0) {
            th_buf_reset(&s->out);
            s->batch_rc = pr < 0 ? -1 : 0;
            s->batch_finish = false;
            s->batch_cpu = 0;
            if (pr > 0) {
                s->busy++;
                if (s->cb.on_data && !s->closed) s->cb.on_data(s->cb.ud, data, len);
                s->busy--;
                if (s->closed && s->busy == 0) stream_free(s);
                return 0;
            }
            deliver(s);
            return 0;
        }
    }
    if (th_buf_append(&s->queued, data, len) != TH_BUF_OK) return -1;
    schedule(s);
    return 0;
}

void th_audio_stream_finish(th_audio_stream *s)
{
    if (s->closed || s->ended || s->finishing) return;
    s->finishing = true;
    schedule(s);
}

size_t th_audio_stream_pending(const th_audio_stream *s)
{
    return s->queued.len + (s->in_flight ? s->batch_in.len : 0);
}

void th_audio_stream_close(th_audio_stream *s)
{
    if (s == NULL || s->closed) return;
    s->closed = true;
    if (!s->in_flight && s->busy == 0) stream_free(s);
}

double th_audio_stream_cpu_seconds(const th_audio_stream *s)
{
    return s->cpu;
}
