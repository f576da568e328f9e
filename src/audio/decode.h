/* decode: a whole uploaded audio file (any container a browser or phone makes) to mono s16 PCM.
 *
 * For voice-library uploads: the bytes are read from memory through avformat with a fixed list of
 * demuxers (wav, mp3, ogg, flac, mov/mp4/m4a, matroska/webm, aac) and decoders, no protocols (nothing
 * the file names is ever opened), bounded probing, and a bounded output: decoding stops as soon as
 * the audio is longer than max_seconds. The result is resampled to mono s16 at out_rate. Synchronous
 * and thread-agnostic: run it off the loop (uv_queue_work). */
#ifndef TH_AUDIO_DECODE_H
#define TH_AUDIO_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef enum {
    TH_DEC_OK = 0,
    TH_DEC_NOT_AUDIO = -1, /* no known container or no audio stream: 415 */
    TH_DEC_BROKEN = -2,    /* a known container whose audio cannot be decoded (truncated, corrupt): 400 */
    TH_DEC_TOO_LONG = -3,  /* longer than max_seconds (decoding stopped there) */
    TH_DEC_NOMEM = -4,
} th_dec_rc;

typedef struct th_dec_opts {
    int out_rate;       /* e.g. 24000 */
    double max_seconds; /* decoding stops past this */
} th_dec_opts;

/** Decodes data[0..len) into out (s16le mono samples at opts->out_rate, appended). */
th_dec_rc th_audio_decode(const uint8_t *data, size_t len, const th_dec_opts *opts, th_buf *out, char *err,
                          size_t errlen);

/** Level analysis of s16 mono PCM: the peak and RMS in dBFS (-120 for digital silence), and the seconds
 * of 20 ms windows whose RMS is above active_dbfs. */
typedef struct th_dec_level {
    double peak_dbfs, rms_dbfs, active_seconds;
} th_dec_level;
void th_audio_level(const int16_t *pcm, size_t samples, int rate, double active_dbfs, th_dec_level *out);

#endif
