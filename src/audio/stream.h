/* stream: runs a th_audio_conv off the loop, on libuv's thread pool.
 *
 * The loop thread pushes input; batches are converted on the pool one at a
 * time per stream (so order is kept), and output comes back to the loop
 * thread through the on_data callback. Pass-through streams skip the pool.
 * The number of input bytes not yet converted is bounded by the caller
 * through th_audio_stream_pending() (back-pressure). */
#ifndef TH_AUDIO_STREAM_H
#define TH_AUDIO_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "audio/conv.h"

typedef struct th_audio_stream th_audio_stream;

typedef struct th_audio_stream_cb {
    void (*on_data)(void *ud, const uint8_t *data, size_t len); /* output bytes, in order; len 0 (data NULL):
                                                                   input was taken, nothing out yet */
    void (*on_done)(void *ud);                                  /* after finish, all output delivered */
    void (*on_error)(void *ud, const char *msg);                /* conversion failed; no more callbacks */
    void *ud;
} th_audio_stream_cb;

th_audio_stream *th_audio_stream_new(uv_loop_t *loop, const th_audio_spec *in, const th_audio_target *out,
                                     const th_audio_stream_cb *cb, char *err, size_t errlen);
/** Copies len bytes of input. Returns 0 or -1 (ENOMEM, or more than twice out->max_buffered held). */
int th_audio_stream_push(th_audio_stream *s, const uint8_t *data, size_t len);
/** No more input: flush, deliver the rest, then on_done. */
void th_audio_stream_finish(th_audio_stream *s);
/** Input bytes queued or being converted. */
size_t th_audio_stream_pending(const th_audio_stream *s);
/** Stops: no callbacks after this returns; memory is freed once any pool work has come back.
 * Also the way to free a stream after on_done/on_error. */
void th_audio_stream_close(th_audio_stream *s);
/** Seconds spent converting on the pool so far (for metrics). */
double th_audio_stream_cpu_seconds(const th_audio_stream *s);

#endif
