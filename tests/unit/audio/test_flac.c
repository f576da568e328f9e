/* Unit tests: audio/flac (whole-buffer FLAC: a minimal, complete file that decodes to the very samples;
 * the compact form of a reference: resampled, then FLAC). */
#include "th_test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio/conv.h"
#include "audio/flac.h"
#include "audio/wav.h"
#include "core/buf.h"

#include "audio_testlib.h"

/* FLAC bytes -> s16 PCM at rate, through the converter's FLAC parser and decoder. */
static int decode(const th_buf *flac, int rate, th_buf *pcm)
{
    th_audio_spec in = {.fmt = TH_FMT_NONE};
    th_audio_target t = {.fmt = TH_FMT_PCM, .sample_rate = rate, .tempo = 1.0};
    char err[256] = "";
    int rc = th_audio_convert(&in, flac->data, flac->len, &t, pcm, err, sizeof err);
    if (rc != 0) fprintf(stderr, "decode: %s\n", err);
    return rc;
}

static uint64_t streaminfo_total(const uint8_t *p)
{
    const uint8_t *i = p + 8;
    return ((uint64_t)(i[13] & 0x0F) << 32) | ((uint64_t)i[14] << 24) | ((uint64_t)i[15] << 16) |
           ((uint64_t)i[16] << 8) | i[17];
}

TH_TEST(flac_is_lossless_and_minimal)
{
    size_t n;
    /* an odd length: the last frame is a short one */
    uint8_t *pcm = tu_sine_s16(16000, 1, 2.3456, &n);
    TH_CHECK(pcm != NULL);
    /* some noise on top, so the encoder has something to lose if it were lossy */
    uint32_t seed = 12345;
    for (size_t i = 0; i < n; i += 2) {
        seed = seed * 1103515245u + 12345u;
        int16_t v = (int16_t)(pcm[i] | (pcm[i + 1] << 8));
        v = (int16_t)(v + (int16_t)((seed >> 16) & 0x3FF) - 512);
        pcm[i] = (uint8_t)v;
        pcm[i + 1] = (uint8_t)((uint16_t)v >> 8);
    }
    th_buf f, back;
    th_buf_init(&f, 0);
    th_buf_init(&back, 0);
    char err[256] = "";
    TH_CHECK(th_flac_encode_s16((const int16_t *)(const void *)pcm, n / 2, 16000, &f, err, sizeof err) == 0);
    TH_CHECK(f.len > 42 && f.len < n);
    TH_CHECK(memcmp(f.data, "fLaC", 4) == 0);
    TH_CHECK(f.data[4] == 0x80 && f.data[5] == 0 && f.data[6] == 0 && f.data[7] == 34); /* one block only */
    TH_CHECK(streaminfo_total(f.data) == n / 2);
    /* sample rate 16000 in STREAMINFO: 20 bits from byte 10 */
    const uint8_t *i = f.data + 8;
    TH_CHECK((((uint32_t)i[10] << 12) | ((uint32_t)i[11] << 4) | (i[12] >> 4)) == 16000);
    uint8_t zero[16] = {0};
    TH_CHECK(memcmp(i + 18, zero, 16) != 0); /* the MD5 is set */
    TH_CHECK(tu_memmem(f.data, f.len, "Lavf") == NULL && tu_memmem(f.data, f.len, "Lavc") == NULL);
    TH_CHECK(decode(&f, 16000, &back) == 0);
    TH_CHECK(back.len == n && memcmp(back.data, pcm, n) == 0);
    th_buf_free(&f);
    th_buf_free(&back);
    free(pcm);
}

TH_TEST(flac_from_wav_resamples_24k_to_16k)
{
    size_t n;
    uint8_t *pcm = tu_sine_s16(24000, 1, 3.0, &n);
    TH_CHECK(pcm != NULL);
    uint8_t *wav = malloc(TH_WAV_HEADER_LEN + n);
    TH_CHECK(wav != NULL);
    th_wav_header(wav, 24000, 1, 16, (uint32_t)n);
    memcpy(wav + TH_WAV_HEADER_LEN, pcm, n);
    th_buf f, want, got;
    th_buf_init(&f, 0);
    th_buf_init(&want, 0);
    th_buf_init(&got, 0);
    char err[256] = "";
    TH_CHECK(th_flac_from_wav(wav, TH_WAV_HEADER_LEN + n, 16000, &f, err, sizeof err) == 0);
    /* the very samples the converter gives for the same WAV at 16 kHz */
    th_audio_spec in = {.fmt = TH_FMT_NONE};
    th_audio_target t = {.fmt = TH_FMT_PCM, .sample_rate = 16000, .tempo = 1.0};
    TH_CHECK(th_audio_convert(&in, wav, TH_WAV_HEADER_LEN + n, &t, &want, err, sizeof err) == 0);
    TH_CHECK(tu_within((double)want.len / 2 / 16000, 3.0, 0.01));
    TH_CHECK(decode(&f, 16000, &got) == 0);
    TH_CHECK(got.len == want.len && memcmp(got.data, want.data, want.len) == 0);
    TH_CHECK(streaminfo_total(f.data) == want.len / 2);
    TH_CHECK(f.len < (TH_WAV_HEADER_LEN + n) * 2 / 3); /* smaller than the WAV at 16 kHz would be */
    th_buf_free(&f);
    th_buf_free(&want);
    th_buf_free(&got);
    free(wav);
    free(pcm);
}

TH_TEST(flac_refuses_what_it_cannot_encode)
{
    th_buf f;
    th_buf_init(&f, 0);
    char err[256] = "";
    int16_t s[4] = {0};
    TH_CHECK(th_flac_encode_s16(s, 4, 1000, &f, err, sizeof err) == -1 && err[0] != 0);
    const uint8_t junk[64] = "this is not audio at all, not even close to it............";
    TH_CHECK(th_flac_from_wav(junk, sizeof junk, 16000, &f, err, sizeof err) == -1);
    th_buf_free(&f);
}

TH_TEST_MAIN()
