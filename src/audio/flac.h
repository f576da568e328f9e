/* flac: whole-buffer FLAC encoding of mono s16 PCM into a minimal file ("fLaC", one STREAMINFO block with
 * the exact sample count and MD5, then the frames: no padding, no tags), and the compact form of a voice
 * reference built on it (resampled, then FLAC). Blocking: run it on the thread pool. */
#ifndef TH_AUDIO_FLAC_H
#define TH_AUDIO_FLAC_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/** Encodes samples of mono s16 PCM at rate (8000..192000) and appends the whole FLAC file to out.
 * 0, or -1 with err set (out may then hold part of it). */
int th_flac_encode_s16(const int16_t *pcm, size_t samples, int rate, th_buf *out, char *err, size_t errlen);

/** A WAV (any the converter reads: PCM or float, any rate and channels) to mono s16 at rate, as FLAC,
 * appended to out. The samples are those th_audio_convert gives for a PCM target at that rate. 0, or -1 with
 * err set. */
int th_flac_from_wav(const uint8_t *data, size_t len, int rate, th_buf *out, char *err, size_t errlen);

#endif
