/* Unit tests: audio/conv (decode, downmix, resample, tempo, encode, pass-through). */
#include "th_test.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audio/conv.h"
#include "audio/wav.h"
#include "core/buf.h"

#include "audio_testlib.h"

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* 3 s of 22050 Hz s16 mono sine converted to fmt (24 kHz default). */
static int convert_sine(th_fmt fmt, double tempo, th_buf *out, char *err, size_t errlen)
{
    size_t n;
    uint8_t *pcm = tu_sine_s16(22050, 1, 3.0, &n);
    if (pcm == NULL) return -1;
    th_audio_target t = {.fmt = fmt, .tempo = tempo, .wav_data_len = TH_WAV_SIZE_UNKNOWN};
    int rc = th_audio_convert(&pcm22k, pcm, n, &t, out, err, errlen);
    free(pcm);
    return rc;
}

TH_TEST(conv_to_mp3)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_MP3, 1.0, &b, err, sizeof err) == 0);
    TH_REQUIRE(b.len > 1000);
    TH_CHECK(memcmp(b.data, "ID3", 3) != 0);
    TH_CHECK(b.data[0] == 0xFF && (b.data[1] & 0xE0) == 0xE0);
    TH_CHECK(tu_memmem(b.data, b.len, "Xing") == NULL);
    TH_CHECK(tu_memmem(b.data, b.len, "Info") == NULL);
    TH_CHECK(tu_memmem(b.data, b.len, "Lavf") == NULL);
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 3.0, 0.03));
    th_buf_free(&b);
}

TH_TEST(conv_to_opus)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_OPUS, 1.0, &b, err, sizeof err) == 0);
    TH_REQUIRE(b.len > 100);
    TH_CHECK(memcmp(b.data, "OggS", 4) == 0);
    TH_CHECK(tu_memmem(b.data, 200, "OpusHead") != NULL);
    TH_CHECK_INT(th_fmt_sniff(b.data, b.len), TH_FMT_OPUS);
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 3.0, 0.03));
    th_buf_free(&b);
}

TH_TEST(conv_to_aac)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_AAC, 1.0, &b, err, sizeof err) == 0);
    TH_REQUIRE(b.len > 100);
    TH_CHECK(b.data[0] == 0xFF && (b.data[1] == 0xF1 || b.data[1] == 0xF9));
    TH_CHECK_INT(th_fmt_sniff(b.data, b.len), TH_FMT_AAC);
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 3.0, 0.04));
    th_buf_free(&b);
}

TH_TEST(conv_to_flac)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_FLAC, 1.0, &b, err, sizeof err) == 0);
    TH_REQUIRE(b.len > 100);
    TH_CHECK(memcmp(b.data, "fLaC", 4) == 0);
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 3.0, 0.03));
    th_buf_free(&b);
}

TH_TEST(conv_to_wav_canonical)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_WAV, 1.0, &b, err, sizeof err) == 0);
    TH_REQUIRE(b.len > 44);
    uint8_t want[44];
    th_wav_header(want, 24000, 1, 16, TH_WAV_SIZE_UNKNOWN);
    TH_CHECK(memcmp(b.data, want, 44) == 0);
    TH_CHECK(tu_memmem(b.data, b.len, "LIST") == NULL);
    TH_CHECK((b.len - 44) % 2 == 0);
    TH_CHECK(tu_within((double)(b.len - 44) / 2.0 / 24000.0, 3.0, 0.01));
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 3.0, 0.01));
    th_buf_free(&b);

    /* Exact sizes when the length is known. */
    size_t n;
    uint8_t *pcm = tu_sine_s16(24000, 1, 0.5, &n);
    TH_REQUIRE(pcm != NULL);
    th_audio_spec in = {.fmt = TH_FMT_PCM, .sample_rate = 24000, .channels = 1};
    th_audio_target t = {.fmt = TH_FMT_WAV, .tempo = 1.0, .wav_data_len = (uint32_t)n};
    th_buf_init(&b, 0);
    TH_REQUIRE(th_audio_convert(&in, pcm, n, &t, &b, err, sizeof err) == 0);
    th_wav_header(want, 24000, 1, 16, (uint32_t)n);
    TH_CHECK_INT(b.len, n + 44);
    TH_CHECK(memcmp(b.data, want, 44) == 0);
    TH_CHECK(memcmp(b.data + 44, pcm, n) == 0);
    th_buf_free(&b);
    free(pcm);
}

TH_TEST(conv_to_pcm)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_PCM, 1.0, &b, err, sizeof err) == 0);
    TH_CHECK(b.len % 2 == 0);
    TH_CHECK(tu_within((double)b.len / 2.0 / 24000.0, 3.0, 0.01));
    /* Still a sine of about the same amplitude. */
    int peak = 0;
    for (size_t i = 0; i + 1 < b.len; i += 2) {
        int v = (int16_t)(b.data[i] | (b.data[i + 1] << 8));
        if (abs(v) > peak) peak = abs(v);
    }
    TH_CHECK(peak > 11000 && peak < 13500);
    th_buf_free(&b);
}

TH_TEST(conv_tempo_2_halves)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_PCM, 2.0, &b, err, sizeof err) == 0);
    TH_CHECK(tu_within((double)b.len / 2.0 / 24000.0, 1.5, 0.05));
    th_buf_free(&b);
    th_buf_init(&b, 0);
    TH_REQUIRE(convert_sine(TH_FMT_MP3, 2.0, &b, err, sizeof err) == 0);
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 1.5, 0.05));
    th_buf_free(&b);
}

TH_TEST(conv_tempo_quarter_and_four)
{
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_PCM, 0.25, &b, err, sizeof err) == 0);
    TH_CHECK(tu_within((double)b.len / 2.0 / 24000.0, 12.0, 0.05));
    th_buf_free(&b);
    th_buf_init(&b, 0);
    TH_REQUIRE(convert_sine(TH_FMT_PCM, 4.0, &b, err, sizeof err) == 0);
    TH_CHECK(tu_within((double)b.len / 2.0 / 24000.0, 0.75, 0.05));
    th_buf_free(&b);
    th_buf_init(&b, 0);
    TH_REQUIRE(convert_sine(TH_FMT_AAC, 4.0, &b, err, sizeof err) == 0);
    /* ADTS has no edit list: decoders keep the 1024-sample priming and the last frame's padding. */
    double d = tu_decoded_seconds(b.data, b.len, 24000);
    TH_CHECK(d >= 0.75 * 0.97 && d <= 0.75 + 2048.0 / 24000 + 0.01);
    th_buf_free(&b);
    th_buf_init(&b, 0);
    TH_CHECK(convert_sine(TH_FMT_PCM, 8.0, &b, err, sizeof err) != 0); /* out of range */
    th_buf_free(&b);
}

TH_TEST(conv_resample_rates)
{
    int rates[] = {22050, 44100, 8000, 48000};
    for (int i = 0; i < 4; i++) {
        size_t n;
        uint8_t *pcm = tu_sine_s16(rates[i], 1, 2.0, &n);
        TH_REQUIRE(pcm != NULL);
        th_audio_spec in = {
            .fmt = TH_FMT_PCM, .sample_rate = rates[i], .channels = 1, .sample = TH_SAMPLE_S16};
        th_audio_target t = {.fmt = TH_FMT_PCM, .tempo = 1.0};
        th_buf b;
        th_buf_init(&b, 0);
        char err[256] = {0};
        TH_CHECK(th_audio_convert(&in, pcm, n, &t, &b, err, sizeof err) == 0);
        /* 2 s at 24 kHz = 48000 samples, within a few samples of filter delay. */
        TH_CHECK(labs((long)(b.len / 2) - 48000) <= 64);
        th_buf_free(&b);
        free(pcm);
    }
}

static size_t make_wav(uint8_t *buf, unsigned tag, int ch, int rate, int bits, bool list, uint32_t riff_size,
                       uint32_t data_size)
{
    memcpy(buf, "RIFF", 4);
    put32(buf + 4, riff_size);
    memcpy(buf + 8, "WAVEfmt ", 8);
    put32(buf + 16, 16);
    put16(buf + 20, (uint16_t)tag);
    put16(buf + 22, (uint16_t)ch);
    put32(buf + 24, (uint32_t)rate);
    put32(buf + 28, (uint32_t)(rate * ch * bits / 8));
    put16(buf + 32, (uint16_t)(ch * bits / 8));
    put16(buf + 34, (uint16_t)bits);
    size_t o = 36;
    if (list) {
        static const char info[] = "LIST\x1a\0\0\0INFOISFT\x0e\0\0\0Lavf59.27.100\0";
        memcpy(buf + o, info, 34);
        o += 34;
    }
    memcpy(buf + o, "data", 4);
    put32(buf + o + 4, data_size);
    return o + 8;
}

TH_TEST(conv_float_wav_zero_sizes_byte_by_byte)
{
    int rate = 22050, frames = rate * 2;
    size_t cap = 100 + (size_t)frames * 4;
    uint8_t *w = malloc(cap);
    TH_REQUIRE(w != NULL);
    size_t h = make_wav(w, 3, 1, rate, 32, false, 0, 0);
    for (int i = 0; i < frames; i++) {
        float v = (float)(0.4 * sin(2 * M_PI * 440.0 * i / rate));
        memcpy(w + h + (size_t)i * 4, &v, 4);
    }
    size_t n = h + (size_t)frames * 4;
    th_audio_spec in = {.fmt = TH_FMT_NONE};
    th_audio_target t = {.fmt = TH_FMT_PCM, .tempo = 1.0};
    char err[256] = {0};
    th_audio_conv *c = th_audio_conv_new(&in, &t, err, sizeof err);
    TH_REQUIRE(c != NULL);
    th_buf b;
    th_buf_init(&b, 0);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = th_audio_conv_push(c, w + i, 1, &b, err, sizeof err);
    TH_CHECK_INT(rc, 0);
    TH_CHECK(b.len > 0); /* output before finish: incremental */
    TH_CHECK_INT(th_audio_conv_finish(c, &b, err, sizeof err), 0);
    TH_CHECK(labs((long)(b.len / 2) - 48000) <= 64);
    TH_CHECK_INT(th_audio_conv_samples_out(c), b.len / 2);
    th_audio_conv_free(c);
    th_buf_free(&b);
    free(w);
}

TH_TEST(conv_wav_with_list_chunk)
{
    size_t n;
    uint8_t *pcm = tu_sine_s16(24000, 1, 1.0, &n);
    TH_REQUIRE(pcm != NULL);
    uint8_t *w = malloc(n + 100);
    TH_REQUIRE(w != NULL);
    size_t h = make_wav(w, 1, 1, 24000, 16, true, 0xFFFFFFFF, 0xFFFFFFFF);
    memcpy(w + h, pcm, n);
    char err[256] = {0};
    th_audio_spec in = {.fmt = TH_FMT_WAV};
    /* wav -> wav with the same spec: pass-through, but with a canonical header. */
    th_audio_target t = {.fmt = TH_FMT_WAV, .tempo = 1.0, .wav_data_len = TH_WAV_SIZE_UNKNOWN};
    th_audio_conv *c = th_audio_conv_new(&in, &t, err, sizeof err);
    TH_REQUIRE(c != NULL);
    th_buf b;
    th_buf_init(&b, 0);
    TH_CHECK_INT(th_audio_conv_push(c, w, 50, &b, err, sizeof err), 0);
    TH_CHECK_INT(th_audio_conv_push(c, w + 50, h + n - 50, &b, err, sizeof err), 0);
    TH_CHECK(th_audio_conv_passthrough(c));
    TH_CHECK_INT(th_audio_conv_finish(c, &b, err, sizeof err), 0);
    uint8_t want[44];
    th_wav_header(want, 24000, 1, 16, TH_WAV_SIZE_UNKNOWN);
    TH_REQUIRE(b.len == n + 44);
    TH_CHECK(memcmp(b.data, want, 44) == 0);
    TH_CHECK(memcmp(b.data + 44, pcm, n) == 0);
    TH_CHECK(tu_memmem(b.data, b.len, "LIST") == NULL);
    th_audio_conv_free(c);
    th_buf_free(&b);
    /* wav with LIST -> mp3 */
    th_buf_init(&b, 0);
    th_audio_target t2 = {.fmt = TH_FMT_MP3};
    TH_CHECK_INT(th_audio_convert(&in, w, h + n, &t2, &b, err, sizeof err), 0);
    /* Without a Xing/LAME frame decoders cannot trim the encoder delay and padding (~50 ms). */
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 1.0, 0.08));
    th_buf_free(&b);
    free(w);
    free(pcm);
}

TH_TEST(conv_stereo_downmix)
{
    size_t n;
    uint8_t *pcm = tu_sine_s16(44100, 2, 2.0, &n);
    TH_REQUIRE(pcm != NULL);
    th_audio_spec in = {.fmt = TH_FMT_PCM, .sample_rate = 44100, .channels = 2, .sample = TH_SAMPLE_S16};
    th_audio_target t = {.fmt = TH_FMT_PCM, .tempo = 1.0};
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(th_audio_convert(&in, pcm, n, &t, &b, err, sizeof err) == 0);
    TH_CHECK(labs((long)(b.len / 2) - 48000) <= 64);
    int peak = 0;
    for (size_t i = 0; i + 1 < b.len; i += 2) {
        int v = (int16_t)(b.data[i] | (b.data[i + 1] << 8));
        if (abs(v) > peak) peak = abs(v);
    }
    TH_CHECK(peak > 5000); /* both channels carried the tone: not silence */
    th_buf_free(&b);
    free(pcm);
}

TH_TEST(conv_headerless_pcm_spec)
{
    size_t n;
    uint8_t *pcm = tu_sine_s16(16000, 1, 1.5, &n);
    TH_REQUIRE(pcm != NULL);
    th_audio_spec in = {.fmt = TH_FMT_PCM, .sample_rate = 16000, .channels = 1, .sample = TH_SAMPLE_S16};
    th_audio_target t = {.fmt = TH_FMT_PCM, .sample_rate = 16000, .tempo = 1.0};
    char err[256] = {0};
    th_audio_conv *c = th_audio_conv_new(&in, &t, err, sizeof err);
    TH_REQUIRE(c != NULL);
    th_buf b;
    th_buf_init(&b, 0);
    /* Odd split: half a sample in the first push. */
    TH_CHECK_INT(th_audio_conv_push(c, pcm, 101, &b, err, sizeof err), 0);
    TH_CHECK_INT(th_audio_conv_push(c, pcm + 101, n - 101, &b, err, sizeof err), 0);
    TH_CHECK_INT(th_audio_conv_finish(c, &b, err, sizeof err), 0);
    TH_CHECK(th_audio_conv_passthrough(c));
    TH_CHECK_INT(b.len, n);
    TH_CHECK(b.len == n && memcmp(b.data, pcm, n) == 0);
    th_audio_conv_free(c);
    th_buf_free(&b);

    /* Same bytes with fmt NONE and a spec: not sniffable, taken as the spec's PCM -> 24 kHz. */
    in.fmt = TH_FMT_NONE;
    th_audio_target t2 = {.fmt = TH_FMT_WAV, .wav_data_len = TH_WAV_SIZE_UNKNOWN};
    th_buf_init(&b, 0);
    TH_CHECK_INT(th_audio_convert(&in, pcm, n, &t2, &b, err, sizeof err), 0);
    TH_CHECK(tu_within((double)(b.len - 44) / 2 / 24000.0, 1.5, 0.01));
    th_buf_free(&b);
    free(pcm);
}

TH_TEST(conv_mp3_input_incremental)
{
    th_buf mp3;
    th_buf_init(&mp3, 0);
    char err[256] = {0};
    TH_REQUIRE(convert_sine(TH_FMT_MP3, 1.0, &mp3, err, sizeof err) == 0);
    th_audio_spec in = {.fmt = TH_FMT_MP3};
    th_audio_target t = {.fmt = TH_FMT_PCM, .tempo = 1.0};
    th_audio_conv *c = th_audio_conv_new(&in, &t, err, sizeof err);
    TH_REQUIRE(c != NULL);
    th_buf b;
    th_buf_init(&b, 0);
    size_t half_out = 0;
    for (size_t i = 0; i < mp3.len; i += 97) {
        size_t k = mp3.len - i < 97 ? mp3.len - i : 97;
        TH_REQUIRE(th_audio_conv_push(c, mp3.data + i, k, &b, err, sizeof err) == 0);
        if (i < mp3.len / 2) half_out = b.len;
    }
    TH_CHECK(!th_audio_conv_passthrough(c));
    TH_CHECK(half_out > 24000); /* about half of the audio came out during the first half of the input */
    TH_CHECK_INT(th_audio_conv_finish(c, &b, err, sizeof err), 0);
    TH_CHECK(tu_within((double)b.len / 2 / 24000.0, 3.0, 0.03));
    th_audio_conv_free(c);
    th_buf_free(&b);

    /* mp3 -> mp3: pass-through, untouched. */
    th_audio_target t2 = {.fmt = TH_FMT_MP3};
    th_buf_init(&b, 0);
    TH_CHECK_INT(th_audio_convert(&in, mp3.data, mp3.len, &t2, &b, err, sizeof err), 0);
    TH_CHECK(b.len == mp3.len && memcmp(b.data, mp3.data, mp3.len) == 0);
    th_buf_free(&b);
    th_buf_free(&mp3);
}

TH_TEST(conv_flac_aac_input_incremental)
{
    th_fmt fmts[] = {TH_FMT_FLAC, TH_FMT_AAC};
    for (int f = 0; f < 2; f++) {
        th_buf enc;
        th_buf_init(&enc, 0);
        char err[256] = {0};
        TH_REQUIRE(convert_sine(fmts[f], 1.0, &enc, err, sizeof err) == 0);
        th_audio_spec in = {.fmt = TH_FMT_NONE};
        th_audio_target t = {.fmt = TH_FMT_WAV, .wav_data_len = TH_WAV_SIZE_UNKNOWN};
        th_audio_conv *c = th_audio_conv_new(&in, &t, err, sizeof err);
        TH_REQUIRE(c != NULL);
        th_buf b;
        th_buf_init(&b, 0);
        size_t before_finish = 0;
        for (size_t i = 0; i < enc.len; i += 501) {
            size_t k = enc.len - i < 501 ? enc.len - i : 501;
            TH_REQUIRE(th_audio_conv_push(c, enc.data + i, k, &b, err, sizeof err) == 0);
        }
        before_finish = b.len;
        /* Decoded while pushed: FFmpeg's flac parser looks ahead several frames (~2 s here) before
         * it emits one, so ask for more than 1 s of the 3 s before finish. */
        if (before_finish <= 44 + 48000)
            fprintf(stderr, "  %s: %zu bytes out before finish\n", th_fmt_name(fmts[f]), before_finish);
        TH_CHECK(before_finish > 44 + 48000);
        TH_CHECK_INT(th_audio_conv_finish(c, &b, err, sizeof err), 0);
        TH_CHECK(tu_within((double)(b.len - 44) / 2 / 24000.0, 3.0, 0.04));
        th_audio_conv_free(c);
        th_buf_free(&b);
        th_buf_free(&enc);
    }
}

TH_TEST(conv_garbage_is_an_error)
{
    uint8_t junk[4096];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (uint8_t)(x >> 16);
    }
    th_fmt decl[] = {TH_FMT_MP3, TH_FMT_AAC, TH_FMT_FLAC, TH_FMT_OGG, TH_FMT_OPUS, TH_FMT_WAV};
    for (size_t i = 0; i < sizeof decl / sizeof decl[0]; i++) {
        th_audio_spec in = {.fmt = decl[i]};
        th_audio_target t = {.fmt = TH_FMT_MP3};
        th_buf b;
        th_buf_init(&b, 0);
        char err[256] = {0};
        int rc = th_audio_convert(&in, junk, sizeof junk, &t, &b, err, sizeof err);
        if (rc == 0) fprintf(stderr, "  declared %d: no error\n", (int)decl[i]);
        TH_CHECK(rc != 0);
        TH_CHECK(err[0] != '\0');
        th_buf_free(&b);
    }
    /* An error body where audio was expected. */
    const char *html = "<html><head><title>500 Internal Server Error</title></head></html>";
    th_audio_spec in = {.fmt = TH_FMT_NONE};
    th_audio_target t = {.fmt = TH_FMT_WAV};
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_CHECK(th_audio_convert(&in, (const uint8_t *)html, strlen(html), &t, &b, err, sizeof err) != 0);
    th_buf_free(&b);
    /* Bad targets. */
    th_audio_target bad = {.fmt = TH_FMT_OPUS, .sample_rate = 22050};
    TH_CHECK(th_audio_conv_new(&in, &bad, err, sizeof err) == NULL);
    bad = (th_audio_target){.fmt = TH_FMT_OGG};
    TH_CHECK(th_audio_conv_new(&in, &bad, err, sizeof err) == NULL);
    bad = (th_audio_target){.fmt = TH_FMT_MP3, .sample_rate = 23456};
    TH_CHECK(th_audio_conv_new(&in, &bad, err, sizeof err) == NULL);
}

TH_TEST(conv_opus_48k_and_empty_input)
{
    size_t n;
    uint8_t *pcm = tu_sine_s16(22050, 1, 1.0, &n);
    TH_REQUIRE(pcm != NULL);
    th_audio_target t = {.fmt = TH_FMT_OPUS, .sample_rate = 48000, .bitrate = 24000};
    th_buf b;
    th_buf_init(&b, 0);
    char err[256] = {0};
    TH_REQUIRE(th_audio_convert(&pcm22k, pcm, n, &t, &b, err, sizeof err) == 0);
    TH_CHECK(memcmp(b.data, "OggS", 4) == 0);
    TH_CHECK(tu_within(tu_decoded_seconds(b.data, b.len, 24000), 1.0, 0.04));
    th_buf_free(&b);
    free(pcm);
    /* No input at all: a valid, empty file (wav: just the header). */
    th_fmt outs[] = {TH_FMT_MP3, TH_FMT_OPUS, TH_FMT_AAC, TH_FMT_FLAC, TH_FMT_WAV, TH_FMT_PCM};
    for (int i = 0; i < 6; i++) {
        th_audio_target te = {.fmt = outs[i], .wav_data_len = TH_WAV_SIZE_UNKNOWN};
        th_buf_init(&b, 0);
        TH_CHECK_INT(th_audio_convert(&pcm22k, NULL, 0, &te, &b, err, sizeof err), 0);
        if (outs[i] == TH_FMT_WAV) TH_CHECK_INT(b.len, 44);
        th_buf_free(&b);
    }
}

TH_TEST(conv_ffprobe_agrees)
{
    /* Optional cross-check with ffprobe when it is installed. */
    if (system("command -v ffprobe >/dev/null 2>&1") != 0) return;
    th_fmt outs[] = {TH_FMT_MP3, TH_FMT_OPUS, TH_FMT_AAC, TH_FMT_FLAC, TH_FMT_WAV};
    for (int i = 0; i < 5; i++) {
        th_buf b;
        th_buf_init(&b, 0);
        char err[256] = {0};
        TH_REQUIRE(convert_sine(outs[i], 1.0, &b, err, sizeof err) == 0);
        char path[64];
        snprintf(path, sizeof path, "/tmp/th_audio_test_%d_%d.%s", (int)getpid(), i, th_fmt_name(outs[i]));
        FILE *f = fopen(path, "wb");
        TH_REQUIRE(f != NULL);
        fwrite(b.data, 1, b.len, f);
        fclose(f);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "ffprobe -v error -show_entries stream=sample_rate,channels -of csv=p=0 %s",
                 path);
        FILE *p = popen(cmd, "r");
        TH_REQUIRE(p != NULL);
        char line[128] = {0};
        char *got = fgets(line, sizeof line, p);
        pclose(p);
        remove(path);
        /* Ogg Opus always decodes at 48 kHz (OpusHead keeps the input rate, 24000, as a note). */
        TH_CHECK(got != NULL && strncmp(line, outs[i] == TH_FMT_OPUS ? "48000,1" : "24000,1", 7) == 0);
        if (got) fprintf(stderr, "  ffprobe %s: %s", th_fmt_name(outs[i]), line);
        th_buf_free(&b);
    }
}

TH_TEST_MAIN()
