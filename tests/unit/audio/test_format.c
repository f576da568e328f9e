/* Unit tests: audio/format (names, MIME types, sniffing) and audio/wav (header, streaming reader). */
#include "th_test.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "audio/format.h"
#include "audio/wav.h"

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

TH_TEST(format_names_and_mime)
{
    TH_CHECK_STR(th_fmt_name(TH_FMT_MP3), "mp3");
    TH_CHECK_STR(th_fmt_name(TH_FMT_PCM), "pcm");
    TH_CHECK(th_fmt_name(TH_FMT_NONE) == NULL);
    TH_CHECK(th_fmt_name(TH_FMT_OGG) == NULL);
    TH_CHECK_STR(th_fmt_mime(TH_FMT_MP3), "audio/mpeg");
    TH_CHECK_STR(th_fmt_mime(TH_FMT_WAV), "audio/wav");
    TH_CHECK_STR(th_fmt_mime(TH_FMT_OPUS), "audio/opus");
    TH_CHECK_STR(th_fmt_mime(TH_FMT_AAC), "audio/aac");
    TH_CHECK_STR(th_fmt_mime(TH_FMT_FLAC), "audio/flac");
    TH_CHECK_STR(th_fmt_mime(TH_FMT_PCM), "audio/pcm");
    TH_CHECK_INT(th_fmt_from_name("opus"), TH_FMT_OPUS);
    TH_CHECK_INT(th_fmt_from_name("flac"), TH_FMT_FLAC);
    TH_CHECK_INT(th_fmt_from_name("MP3"), TH_FMT_NONE);
    TH_CHECK_INT(th_fmt_from_name("ogg"), TH_FMT_NONE);
    TH_CHECK_INT(th_fmt_from_name(NULL), TH_FMT_NONE);
}

TH_TEST(format_from_mime)
{
    TH_CHECK_INT(th_fmt_from_mime("audio/mpeg"), TH_FMT_MP3);
    TH_CHECK_INT(th_fmt_from_mime("audio/mp3"), TH_FMT_MP3);
    TH_CHECK_INT(th_fmt_from_mime("Audio/WAV"), TH_FMT_WAV);
    TH_CHECK_INT(th_fmt_from_mime("audio/x-wav"), TH_FMT_WAV);
    TH_CHECK_INT(th_fmt_from_mime("audio/wave"), TH_FMT_WAV);
    TH_CHECK_INT(th_fmt_from_mime("audio/ogg"), TH_FMT_OGG);
    TH_CHECK_INT(th_fmt_from_mime("audio/ogg; codecs=opus"), TH_FMT_OPUS);
    TH_CHECK_INT(th_fmt_from_mime("audio/opus"), TH_FMT_OPUS);
    TH_CHECK_INT(th_fmt_from_mime("audio/aac"), TH_FMT_AAC);
    TH_CHECK_INT(th_fmt_from_mime("audio/flac"), TH_FMT_FLAC);
    TH_CHECK_INT(th_fmt_from_mime("audio/x-flac"), TH_FMT_FLAC);
    TH_CHECK_INT(th_fmt_from_mime("audio/L16; rate=24000"), TH_FMT_PCM);
    TH_CHECK_INT(th_fmt_from_mime("audio/pcm"), TH_FMT_PCM);
    TH_CHECK_INT(th_fmt_from_mime("  audio/mpeg ; charset=x"), TH_FMT_MP3);
    TH_CHECK_INT(th_fmt_from_mime("application/octet-stream"), TH_FMT_NONE);
    TH_CHECK_INT(th_fmt_from_mime("text/html"), TH_FMT_NONE);
    TH_CHECK_INT(th_fmt_from_mime(""), TH_FMT_NONE);
    TH_CHECK_INT(th_fmt_from_mime(NULL), TH_FMT_NONE);
}

TH_TEST(format_sniff)
{
    uint8_t riff[12] = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'A', 'V', 'E'};
    TH_CHECK_INT(th_fmt_sniff(riff, 12), TH_FMT_WAV);
    TH_CHECK_INT(th_fmt_sniff(riff, 6), TH_FMT_NONE); /* too small to tell */
    TH_CHECK_INT(th_fmt_sniff((const uint8_t *)"ID3\x04\0", 5), TH_FMT_MP3);
    TH_CHECK_INT(th_fmt_sniff((const uint8_t *)"fLaC\0\0\0\x22", 8), TH_FMT_FLAC);
    uint8_t ogg[64] = {0};
    memcpy(ogg, "OggS", 4);
    ogg[26] = 1;  /* one segment */
    ogg[27] = 19; /* segment length */
    memcpy(ogg + 28, "OpusHead", 8);
    TH_CHECK_INT(th_fmt_sniff(ogg, 64), TH_FMT_OPUS);
    TH_CHECK_INT(th_fmt_sniff(ogg, 30), TH_FMT_NONE);
    memcpy(ogg + 28, "\x01vorbis\0", 8);
    TH_CHECK_INT(th_fmt_sniff(ogg, 64), TH_FMT_OGG);
    /* ADTS: FFF1, 24 kHz (index 6), frame length 100, twice. */
    uint8_t adts[210] = {0};
    for (int k = 0; k < 2; k++) {
        uint8_t *h = adts + k * 100;
        h[0] = 0xFF;
        h[1] = 0xF1;
        h[2] = (uint8_t)((1 << 6) | (6 << 2));
        h[3] = (uint8_t)(1 << 6 | ((100 >> 11) & 3));
        h[4] = (uint8_t)((100 >> 3) & 0xFF);
        h[5] = (uint8_t)(((100 & 7) << 5) | 0x1F);
        h[6] = 0xFC;
    }
    TH_CHECK_INT(th_fmt_sniff(adts, sizeof adts), TH_FMT_AAC);
    adts[1] = 0xF9; /* MPEG-2 ADTS */
    adts[101] = 0xF9;
    TH_CHECK_INT(th_fmt_sniff(adts, sizeof adts), TH_FMT_AAC);
    /* MPEG-2 layer III, 24 kHz, 64 kbps: 72*64000/24000 = 192 bytes per frame. */
    uint8_t mp3[400] = {0};
    for (int k = 0; k < 2; k++) {
        mp3[k * 192] = 0xFF;
        mp3[k * 192 + 1] = 0xF3;
        mp3[k * 192 + 2] = (uint8_t)((8 << 4) | (1 << 2));
        mp3[k * 192 + 3] = 0xC4;
    }
    TH_CHECK_INT(th_fmt_sniff(mp3, sizeof mp3), TH_FMT_MP3);
    mp3[192] = 0; /* next header missing: not mp3 */
    TH_CHECK_INT(th_fmt_sniff(mp3, sizeof mp3), TH_FMT_NONE);
    bool more = false;
    TH_CHECK_INT(th_fmt_sniff_ex(mp3, 100, true, &more), TH_FMT_NONE);
    TH_CHECK(more);
    TH_CHECK_INT(th_fmt_sniff_ex((const uint8_t *)"\x01\x02\x03\x04", 4, true, &more), TH_FMT_NONE);
    TH_CHECK(!more);
    TH_CHECK_INT(th_fmt_sniff((const uint8_t *)"{\"error\":1}", 11), TH_FMT_NONE);
    TH_CHECK_INT(th_fmt_sniff(NULL, 0), TH_FMT_NONE);
    TH_CHECK_INT(th_sample_bytes(TH_SAMPLE_S16), 2);
    TH_CHECK_INT(th_sample_bytes(TH_SAMPLE_F64), 8);
    TH_CHECK_INT(th_sample_bytes(TH_SAMPLE_U8), 1);
}

TH_TEST(wav_header_canonical)
{
    uint8_t h[TH_WAV_HEADER_LEN];
    th_wav_header(h, 24000, 1, 16, 4800);
    static const uint8_t want[44] = {'R', 'I', 'F',  'F',  0xE4, 0x12, 0,    0,    'W',  'A', 'V',
                                     'E', 'f', 'm',  't',  ' ',  16,   0,    0,    0,    1,   0,
                                     1,   0,   0xC0, 0x5D, 0,    0,    0x80, 0xBB, 0,    0,   2,
                                     0,   16,  0,    'd',  'a',  't',  'a',  0xC0, 0x12, 0,   0};
    TH_CHECK(memcmp(h, want, 44) == 0);
    th_wav_header(h, 24000, 1, 16, TH_WAV_SIZE_UNKNOWN);
    TH_CHECK(memcmp(h + 4, "\xFF\xFF\xFF\xFF", 4) == 0);
    TH_CHECK(memcmp(h + 40, "\xFF\xFF\xFF\xFF", 4) == 0);
}

/* Builds a WAV: fmt chunk (tag, bits), optional LIST chunk, data chunk with given sizes. */
static size_t make_wav(uint8_t *buf, unsigned tag, int ch, int rate, int bits, bool list, bool extensible,
                       uint32_t riff_size, uint32_t data_size, const uint8_t *samples, size_t n)
{
    size_t o = 0;
    memcpy(buf, "RIFF", 4);
    put32(buf + 4, riff_size);
    memcpy(buf + 8, "WAVE", 4);
    o = 12;
    if (list) {
        memcpy(buf + o, "LIST", 4);
        put32(buf + o + 4, 9); /* odd: padded */
        memcpy(buf + o + 8, "INFOISFT\0\0", 10);
        o += 18;
    }
    memcpy(buf + o, "fmt ", 4);
    put32(buf + o + 4, extensible ? 40 : 16);
    put16(buf + o + 8, extensible ? 0xFFFE : (uint16_t)tag);
    put16(buf + o + 10, (uint16_t)ch);
    put32(buf + o + 12, (uint32_t)rate);
    put32(buf + o + 16, (uint32_t)(rate * ch * bits / 8));
    put16(buf + o + 20, (uint16_t)(ch * bits / 8));
    put16(buf + o + 22, (uint16_t)bits);
    o += 24;
    if (extensible) {
        static const uint8_t tail[14] = {0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71};
        put16(buf + o, 22);
        put16(buf + o + 2, (uint16_t)bits);
        put32(buf + o + 4, 4);
        put16(buf + o + 8, (uint16_t)tag);
        memcpy(buf + o + 10, tail, 14);
        o += 24;
    }
    memcpy(buf + o, "fact", 4);
    put32(buf + o + 4, 4);
    put32(buf + o + 8, 0);
    o += 12;
    memcpy(buf + o, "data", 4);
    put32(buf + o + 4, data_size);
    o += 8;
    memcpy(buf + o, samples, n);
    return o + n;
}

TH_TEST(wav_reader_float_zero_sizes_byte_by_byte)
{
    float s[100];
    for (int i = 0; i < 100; i++)
        s[i] = (float)sin(i * 0.1);
    uint8_t buf[1024];
    size_t n = make_wav(buf, 3, 1, 22050, 32, false, false, 0, 0, (const uint8_t *)s, sizeof s);
    th_wav_reader *r = th_wav_reader_new(0);
    TH_REQUIRE(r != NULL);
    uint8_t got[1024];
    size_t got_len = 0;
    int last = -5;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *pcm;
        size_t pl;
        last = th_wav_reader_push(r, buf + i, 1, &pcm, &pl, NULL, 0);
        TH_CHECK(last != TH_WAV_ERROR);
        if (pl) {
            memcpy(got + got_len, pcm, pl);
            got_len += pl;
        }
    }
    TH_CHECK_INT(last, TH_WAV_HAVE_FORMAT);
    TH_CHECK_INT(got_len, sizeof s);
    TH_CHECK(memcmp(got, s, sizeof s) == 0);
    const th_audio_spec *sp = th_wav_reader_spec(r);
    TH_REQUIRE(sp != NULL);
    TH_CHECK_INT(sp->sample, TH_SAMPLE_F32);
    TH_CHECK_INT(sp->sample_rate, 22050);
    TH_CHECK_INT(sp->channels, 1);
    th_wav_reader_free(r);
}

TH_TEST(wav_reader_list_extensible_24bit)
{
    uint8_t samp[12] = {0x01, 0x02, 0x03, 0xFF, 0xFF, 0xFF, 0x10, 0x20, 0x30, 0x00, 0x00, 0x80};
    uint8_t buf[512];
    size_t n = make_wav(buf, 1, 2, 48000, 24, true, true, 0xFFFFFFFF, 0xFFFFFFFF, samp, sizeof samp);
    th_wav_reader *r = th_wav_reader_new(0);
    TH_REQUIRE(r != NULL);
    const uint8_t *pcm;
    size_t pl;
    char err[128] = {0};
    /* Split in the middle of a sample. */
    int rc = th_wav_reader_push(r, buf, n - 4, &pcm, &pl, err, sizeof err);
    TH_CHECK_INT(rc, TH_WAV_HAVE_FORMAT);
    /* 8 sample bytes arrived: one whole stereo frame (6 bytes) widened to 2 x 32-bit. */
    TH_REQUIRE(pl == 8);
    static const uint8_t w1[8] = {0, 0x01, 0x02, 0x03, 0, 0xFF, 0xFF, 0xFF};
    TH_CHECK(memcmp(pcm, w1, 8) == 0);
    rc = th_wav_reader_push(r, buf + n - 4, 4, &pcm, &pl, err, sizeof err);
    TH_CHECK_INT(rc, TH_WAV_HAVE_FORMAT);
    TH_REQUIRE(pl == 8);
    static const uint8_t w2[8] = {0, 0x10, 0x20, 0x30, 0, 0x00, 0x00, 0x80};
    TH_CHECK(memcmp(pcm, w2, 8) == 0);
    const th_audio_spec *sp = th_wav_reader_spec(r);
    TH_REQUIRE(sp != NULL);
    TH_CHECK_INT(sp->sample, TH_SAMPLE_S32);
    TH_CHECK_INT(sp->channels, 2);
    th_wav_reader_free(r);
}

TH_TEST(wav_reader_errors_and_bound)
{
    const uint8_t *pcm;
    size_t pl;
    char err[128] = {0};
    th_wav_reader *r = th_wav_reader_new(0);
    TH_REQUIRE(r != NULL);
    TH_CHECK_INT(th_wav_reader_push(r, (const uint8_t *)"RIFX\0\0\0\0WAVE", 12, &pcm, &pl, err, sizeof err),
                 TH_WAV_ERROR);
    TH_CHECK(err[0] != '\0');
    th_wav_reader_free(r);

    r = th_wav_reader_new(0);
    TH_REQUIRE(r != NULL);
    TH_CHECK_INT(th_wav_reader_push(r, (const uint8_t *)"<html><body>500", 15, &pcm, &pl, err, sizeof err),
                 TH_WAV_ERROR);
    th_wav_reader_free(r);

    /* data before fmt */
    r = th_wav_reader_new(0);
    TH_REQUIRE(r != NULL);
    TH_CHECK_INT(th_wav_reader_push(r, (const uint8_t *)"RIFF\0\0\0\0WAVEdata\0\0\0\0", 20, &pcm, &pl, err,
                                    sizeof err),
                 TH_WAV_ERROR);
    th_wav_reader_free(r);

    /* A huge junk chunk before data is refused by the header bound. */
    uint8_t junk[20] = {'R', 'I', 'F', 'F', 0,   0,   0, 0, 'W', 'A',
                        'V', 'E', 'J', 'U', 'N', 'K', 0, 0, 0,   0x40};
    r = th_wav_reader_new(4096);
    TH_REQUIRE(r != NULL);
    TH_CHECK_INT(th_wav_reader_push(r, junk, sizeof junk, &pcm, &pl, err, sizeof err), TH_WAV_ERROR);
    th_wav_reader_free(r);

    /* 8-bit PCM with a 0x06 (a-law) tag is refused. */
    uint8_t buf[256];
    uint8_t s[4] = {0};
    size_t n = make_wav(buf, 6, 1, 8000, 8, false, false, 0, 0, s, sizeof s);
    r = th_wav_reader_new(0);
    TH_REQUIRE(r != NULL);
    TH_CHECK_INT(th_wav_reader_push(r, buf, n, &pcm, &pl, err, sizeof err), TH_WAV_ERROR);
    th_wav_reader_free(r);
}

TH_TEST_MAIN()
