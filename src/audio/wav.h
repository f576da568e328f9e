/* wav: the canonical 44-byte header we emit, and a streaming reader for what engines send. */
#ifndef TH_AUDIO_WAV_H
#define TH_AUDIO_WAV_H

#include <stddef.h>
#include <stdint.h>

#include "audio/format.h"

#define TH_WAV_HEADER_LEN 44
#define TH_WAV_SIZE_UNKNOWN 0xFFFFFFFFu

/** Writes RIFF/WAVE/fmt(16, PCM)/data. data_len = TH_WAV_SIZE_UNKNOWN while streaming (both size
 * fields are then 0xFFFFFFFF). */
void th_wav_header(uint8_t out[TH_WAV_HEADER_LEN], int sample_rate, int channels, int bits,
                   uint32_t data_len);

/** Streaming reader: push bytes as they come; it parses RIFF chunks (ignoring RIFF/data sizes, which
 * streaming producers leave at 0 or 0xFFFFFFFF), accepts PCM 8/16/24/32-bit, IEEE float 32/64 and
 * WAVE_FORMAT_EXTENSIBLE, skips LIST and other chunks, and hands out the samples as they are. */
typedef struct th_wav_reader th_wav_reader;

enum { TH_WAV_NEED_MORE = 0, TH_WAV_HAVE_FORMAT = 1, TH_WAV_ERROR = -1 };

th_wav_reader *th_wav_reader_new(size_t max_header_bytes);
void th_wav_reader_free(th_wav_reader *r);
/** Pushes bytes. *pcm and *pcm_len point at sample bytes ready in this call (inside the reader's own
 * storage, valid until the next push). Returns TH_WAV_HAVE_FORMAT once the fmt chunk is known (and
 * on every later call), TH_WAV_NEED_MORE before, TH_WAV_ERROR on a malformed header (err says why). */
int th_wav_reader_push(th_wav_reader *r, const uint8_t *data, size_t len, const uint8_t **pcm,
                       size_t *pcm_len, char *err, size_t errlen);
/** The format once known: fmt=TH_FMT_PCM with rate, channels and sample type. */
const th_audio_spec *th_wav_reader_spec(const th_wav_reader *r);

#endif
