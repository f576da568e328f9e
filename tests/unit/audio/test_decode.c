/* test_decode: uploads of every container decoded to mono s16 at 24 kHz, bounded; level analysis. */
#include <sys/resource.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "audio/conv.h"
#include "audio/decode.h"
#include "audio/wav.h"
#include "th_test.h"

/* A stereo s16 WAV file of a tone at rate (amp 0 = digital silence). */
static uint8_t *tone_wav(int rate, double seconds, double amp, size_t *len)
{
    size_t frames = (size_t)(rate * seconds);
    *len = TH_WAV_HEADER_LEN + frames * 4;
    uint8_t *w = malloc(*len);
    if (w == NULL) return NULL;
    th_wav_header(w, rate, 2, 16, (uint32_t)(frames * 4));
    int16_t *s = (int16_t *)(void *)(w + TH_WAV_HEADER_LEN);
    for (size_t i = 0; i < frames; i++) {
        int16_t v = (int16_t)(amp * 32767.0 * sin(2 * M_PI * 220.0 * (double)i / rate));
        s[2 * i] = v;
        s[2 * i + 1] = v;
    }
    return w;
}

static double seconds_of(const th_buf *pcm)
{
    return (double)pcm->len / 2.0 / 24000.0;
}

TH_TEST(wav_is_downmixed_and_resampled)
{
    size_t len;
    uint8_t *w = tone_wav(44100, 3.0, 0.5, &len);
    TH_REQUIRE(w != NULL);
    th_dec_opts o = {.out_rate = 24000, .max_seconds = 10};
    th_buf pcm;
    th_buf_init(&pcm, 0);
    char err[256] = "";
    TH_CHECK_INT(th_audio_decode(w, len, &o, &pcm, err, sizeof err), TH_DEC_OK);
    TH_CHECK(fabs(seconds_of(&pcm) - 3.0) < 0.02);
    th_dec_level lv;
    th_audio_level((const int16_t *)(const void *)pcm.data, pcm.len / 2, 24000, -45, &lv);
    TH_CHECK(lv.peak_dbfs > -7.0 && lv.peak_dbfs < -5.0); /* amplitude 0.5 = -6 dBFS */
    TH_CHECK(lv.active_seconds > 2.9);
    th_buf_free(&pcm);
    free(w);
}

/* Encodes the tone with the hub's own encoder, then decodes it as an upload. */
static void roundtrip(int *th__failed, th_fmt fmt)
{
    size_t len;
    uint8_t *w = tone_wav(24000, 2.5, 0.4, &len);
    TH_REQUIRE(w != NULL);
    th_audio_spec in = {TH_FMT_WAV, 0, 0, TH_SAMPLE_S16};
    th_audio_target t = {.fmt = fmt, .sample_rate = fmt == TH_FMT_OPUS ? 48000 : 24000, .tempo = 1.0};
    th_buf enc, pcm;
    th_buf_init(&enc, 0);
    th_buf_init(&pcm, 0);
    char err[256] = "";
    TH_REQUIRE(th_audio_convert(&in, w, len, &t, &enc, err, sizeof err) == 0);
    th_dec_opts o = {.out_rate = 24000, .max_seconds = 10};
    TH_CHECK_INT(th_audio_decode(enc.data, enc.len, &o, &pcm, err, sizeof err), TH_DEC_OK);
    TH_CHECK(fabs(seconds_of(&pcm) - 2.5) < 0.1);
    th_buf_free(&enc);
    th_buf_free(&pcm);
    free(w);
}

TH_TEST(mp3_flac_opus_aac)
{
    roundtrip(th__failed, TH_FMT_MP3);
    roundtrip(th__failed, TH_FMT_FLAC);
    roundtrip(th__failed, TH_FMT_OPUS);
    roundtrip(th__failed, TH_FMT_AAC);
}

TH_TEST(too_long_stops_early)
{
    size_t len;
    uint8_t *w = tone_wav(16000, 9.0, 0.5, &len);
    TH_REQUIRE(w != NULL);
    th_dec_opts o = {.out_rate = 24000, .max_seconds = 4};
    th_buf pcm;
    th_buf_init(&pcm, 0);
    char err[256] = "";
    TH_CHECK_INT(th_audio_decode(w, len, &o, &pcm, err, sizeof err), TH_DEC_TOO_LONG);
    TH_CHECK(seconds_of(&pcm) < 5.0); /* it stopped, it did not decode all 9 s */
    th_buf_free(&pcm);
    free(w);
}

TH_TEST(not_audio_and_empty_and_broken)
{
    th_dec_opts o = {.out_rate = 24000, .max_seconds = 10};
    th_buf pcm;
    th_buf_init(&pcm, 0);
    char err[256] = "";
    TH_CHECK_INT(th_audio_decode((const uint8_t *)"", 0, &o, &pcm, err, sizeof err), TH_DEC_NOT_AUDIO);
    static const char text[] = "#EXTM3U\n#EXT-X-VERSION:3\nfile:///etc/passwd\nhttp://127.0.0.1:1/x.ts\n";
    TH_CHECK_INT(th_audio_decode((const uint8_t *)text, sizeof text - 1, &o, &pcm, err, sizeof err),
                 TH_DEC_NOT_AUDIO);
    static const char concat[] = "ffconcat version 1.0\nfile /etc/passwd\n";
    TH_CHECK_INT(th_audio_decode((const uint8_t *)concat, sizeof concat - 1, &o, &pcm, err, sizeof err),
                 TH_DEC_NOT_AUDIO);
    uint8_t noise[4096];
    for (size_t i = 0; i < sizeof noise; i++)
        noise[i] = (uint8_t)(i * 7919u >> 3);
    th_dec_rc rc = th_audio_decode(noise, sizeof noise, &o, &pcm, err, sizeof err);
    TH_CHECK(rc == TH_DEC_NOT_AUDIO || rc == TH_DEC_BROKEN);
    size_t len;
    uint8_t *w = tone_wav(24000, 1.0, 0.5, &len);
    TH_REQUIRE(w != NULL);
    rc = th_audio_decode(w, TH_WAV_HEADER_LEN, &o, &pcm, err, sizeof err); /* a header, no samples */
    TH_CHECK(rc == TH_DEC_NOT_AUDIO || rc == TH_DEC_BROKEN);
    th_buf_free(&pcm);
    free(w);
}

/* A RIFF LIST chunk that claims gigabytes: the demuxer would allocate (and zero) what each INFO entry claims
 * before reading it; FFmpeg's allocations are capped, so the file is refused without the memory. */
TH_TEST(huge_riff_info_is_refused_cheaply)
{
    uint8_t f[96] = {'R',  'I',  'F', 'F', 88,  0,   0,   0,   'W', 'A', 'V',  'E',  'f',  'm',
                     't',  ' ',  16,  0,   0,   0,   1,   0,   1,   0,   0x40, 0x1f, 0,    0,
                     0x80, 0x3e, 0,   0,   2,   0,   16,  0,   'L', 'I', 'S',  'T',  0x1a, 0,
                     0,    0xfc, 'I', 'N', 'F', 'O', 'I', 'S', 'F', 'T', 0,    0,    0,    0x60};
    th_dec_opts o = {.out_rate = 24000, .max_seconds = 10};
    th_buf pcm;
    th_buf_init(&pcm, 0); /* the test's own output */
    char err[256] = "";
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    th_dec_rc rc = th_audio_decode(f, sizeof f, &o, &pcm, err, sizeof err);
    getrusage(RUSAGE_SELF, &after);
    TH_CHECK(rc == TH_DEC_NOT_AUDIO || rc == TH_DEC_BROKEN);
    TH_CHECK(after.ru_maxrss - before.ru_maxrss < 256 * 1024); /* KiB: no 1.5 GB allocation was made */
    th_buf_free(&pcm);
}

TH_TEST(levels_of_silence)
{
    int16_t z[24000] = {0};
    th_dec_level lv;
    th_audio_level(z, 24000, 24000, -45, &lv);
    TH_CHECK(lv.peak_dbfs <= -119.0 && lv.rms_dbfs <= -119.0);
    TH_CHECK(lv.active_seconds == 0.0);
    for (int i = 0; i < 24000; i++)
        z[i] = (int16_t)((i % 2) ? 30 : -30); /* -60 dBFS hiss */
    th_audio_level(z, 24000, 24000, -45, &lv);
    TH_CHECK(lv.active_seconds == 0.0);
}

TH_TEST_MAIN()
