/* conv: a synchronous, incremental audio converter.
 *
 * input bytes of any th_audio_spec -> decode -> downmix to mono -> resample
 * -> tempo -> encode -> output bytes of a th_audio_target. It never touches
 * files; it is not tied to a thread (one converter is used by one thread at
 * a time). When the input is already what is asked for, bytes pass through
 * untouched. */
#ifndef TH_AUDIO_CONV_H
#define TH_AUDIO_CONV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audio/format.h"
#include "core/buf.h"

typedef struct th_audio_target {
    th_fmt fmt;            /* one of the six client formats */
    int sample_rate;       /* 0 = TH_PCM_DEFAULT_RATE (24000); opus: one of 8/12/16/24/48 kHz */
    double tempo;          /* 1.0 = unchanged; 0.25..4.0 */
    int bitrate;           /* bits/s for lossy codecs; 0 = a sensible default per format */
    uint32_t wav_data_len; /* wav only: exact data size when known in advance, else TH_WAV_SIZE_UNKNOWN */
    uint64_t max_buffered; /* input that must be held whole for a demuxer (Ogg): past it the conversion
                              fails; 0 = TH_AUDIO_MAX_BUFFERED */
} th_audio_target;

#define TH_AUDIO_MAX_BUFFERED (32u * 1024u * 1024u)

typedef struct th_audio_conv th_audio_conv;

/** in->fmt may be TH_FMT_NONE: the first bytes are sniffed (a headerless stream that matches nothing
 * is taken as PCM of in's rate/channels/sample, or s16 mono 24 kHz if those are 0). NULL on error. */
th_audio_conv *th_audio_conv_new(const th_audio_spec *in, const th_audio_target *out, char *err,
                                 size_t errlen);
/** Feeds input; appends whatever output is ready to out. 0, or -1 on error (err says why). */
int th_audio_conv_push(th_audio_conv *c, const uint8_t *data, size_t len, th_buf *out, char *err,
                       size_t errlen);
/** Zero-copy pass-through: 1 when these bytes go out exactly as they are (the caller hands `data` on
 * itself and must not push it), 0 when they must go through th_audio_conv_push, -1 on error. Decides
 * pass-through on the first bytes when the input is declared as the very compressed format asked for. */
int th_audio_conv_pass(th_audio_conv *c, const uint8_t *data, size_t len, char *err, size_t errlen);
/** End of input: flushes decoder, filters, encoder and muxer into out. */
int th_audio_conv_finish(th_audio_conv *c, th_buf *out, char *err, size_t errlen);
/** true when bytes pass through unchanged. */
bool th_audio_conv_passthrough(const th_audio_conv *c);
/** true when the next push is cheap enough for the caller's thread: pass-through decided, or the input is
 * declared as the very compressed format asked for (the first bytes only confirm it). */
bool th_audio_conv_light(const th_audio_conv *c);
/** Samples (per channel, at the output rate) emitted so far. */
uint64_t th_audio_conv_samples_out(const th_audio_conv *c);
void th_audio_conv_free(th_audio_conv *c);

/** Whole-buffer helper for tests, benches and the CLI. */
int th_audio_convert(const th_audio_spec *in, const uint8_t *data, size_t len, const th_audio_target *out,
                     th_buf *result, char *err, size_t errlen);

#endif
