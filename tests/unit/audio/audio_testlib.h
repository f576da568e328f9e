/* audio_testlib: helpers shared by the audio unit tests: a test tone, the duration of any encoded audio,
 * a tolerance check on durations, a byte search, and the 22050 Hz s16 mono input spec. */
#ifndef TH_TEST_AUDIO_TESTLIB_H
#define TH_TEST_AUDIO_TESTLIB_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio/conv.h"
#include "audio/wav.h"
#include "core/buf.h"

__attribute__((unused)) static const th_audio_spec pcm22k = {
    .fmt = TH_FMT_PCM, .sample_rate = 22050, .channels = 1, .sample = TH_SAMPLE_S16};

/* s16le sine, interleaved over ch channels (the same tone on each). Caller frees. */
__attribute__((unused)) static inline uint8_t *tu_sine_s16(int rate, int ch, double seconds, size_t *len)
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
__attribute__((unused)) static inline double tu_decoded_seconds(const uint8_t *p, size_t n, int rate)
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

__attribute__((unused)) static inline const uint8_t *tu_memmem(const uint8_t *h, size_t hn,
                                                               const char *needle)
{
    size_t nn = strlen(needle);
    if (nn == 0 || hn < nn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (memcmp(h + i, needle, nn) == 0) return h + i;
    return NULL;
}

#endif
