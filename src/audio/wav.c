/* wav: canonical header writer and a streaming RIFF/WAVE reader.
 *
 * The reader never trusts sizes: the RIFF size is ignored, and once the data chunk starts every
 * later byte is sample data (streaming producers write 0, 0xFFFFFFFF or a guess there). Chunks
 * before data (LIST, fact, JUNK, ...) are skipped without being buffered; the fmt chunk is the only
 * one held in memory. All bytes before the samples count against max_header_bytes. 24-bit samples
 * are widened to 32-bit (TH_SAMPLE_S32, left-justified), the rest are handed out as they are, in
 * whole frames (a partial frame waits for the next push). */
#include "audio/wav.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WAV_DEFAULT_MAX_HEADER (256u * 1024u)
#define WAV_MAX_FMT 1024u
#define WAV_MAX_CHANNELS 32

enum { ST_RIFF, ST_CHUNK, ST_FMT, ST_SKIP, ST_DATA, ST_ERROR };

struct th_wav_reader {
    size_t max_header;
    size_t header_seen; /* bytes before the samples */
    int state;
    uint8_t hdr[WAV_MAX_FMT]; /* RIFF header, a chunk header or the fmt body */
    size_t need, have;
    uint64_t skip; /* bytes of a skipped chunk still to come (pad byte included) */
    bool have_fmt;
    th_audio_spec spec;
    int block;    /* input bytes per frame */
    int in_bytes; /* input bytes per sample */
    uint8_t carry[WAV_MAX_CHANNELS * 8];
    size_t carry_len;
    uint8_t *out;
    size_t out_cap;
};

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void th_wav_header(uint8_t out[TH_WAV_HEADER_LEN], int sample_rate, int channels, int bits, uint32_t data_len)
{
    uint32_t block = (uint32_t)channels * (uint32_t)(bits / 8);
    memcpy(out, "RIFF", 4);
    wr32(out + 4, data_len == TH_WAV_SIZE_UNKNOWN || data_len > TH_WAV_SIZE_UNKNOWN - 36 ? TH_WAV_SIZE_UNKNOWN
                                                                                         : data_len + 36);
    memcpy(out + 8, "WAVEfmt ", 8);
    wr32(out + 16, 16);
    wr16(out + 20, 1); /* PCM */
    wr16(out + 22, (uint16_t)channels);
    wr32(out + 24, (uint32_t)sample_rate);
    wr32(out + 28, (uint32_t)sample_rate * block);
    wr16(out + 32, (uint16_t)block);
    wr16(out + 34, (uint16_t)bits);
    memcpy(out + 36, "data", 4);
    wr32(out + 40, data_len);
}

th_wav_reader *th_wav_reader_new(size_t max_header_bytes)
{
    th_wav_reader *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->max_header = max_header_bytes ? max_header_bytes : WAV_DEFAULT_MAX_HEADER;
    r->state = ST_RIFF;
    r->need = 12;
    return r;
}

void th_wav_reader_free(th_wav_reader *r)
{
    if (r == NULL) return;
    free(r->out);
    free(r);
}

const th_audio_spec *th_wav_reader_spec(const th_wav_reader *r)
{
    return r->have_fmt ? &r->spec : NULL;
}

static int fail(th_wav_reader *r, char *err, size_t errlen, const char *msg)
{
    r->state = ST_ERROR;
    if (err != NULL && errlen > 0) snprintf(err, errlen, "wav: %s", msg);
    return TH_WAV_ERROR;
}

/* Parses the fmt body in r->hdr[0..have). */
static int parse_fmt(th_wav_reader *r, char *err, size_t errlen)
{
    const uint8_t *p = r->hdr;
    if (r->have < 16) return fail(r, err, errlen, "fmt chunk too short");
    unsigned tag = rd16(p), channels = rd16(p + 2), bits = rd16(p + 14);
    uint32_t rate = rd32(p + 4);
    if (tag == 0xFFFE) {
        /* WAVE_FORMAT_EXTENSIBLE: cbSize(2) validBits(2) channelMask(4) SubFormat GUID(16). */
        if (r->have < 40 || rd16(p + 16) < 22) return fail(r, err, errlen, "short WAVE_FORMAT_EXTENSIBLE");
        static const uint8_t guid_tail[14] = {0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80,
                                              0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71};
        if (memcmp(p + 26, guid_tail, sizeof guid_tail) != 0)
            return fail(r, err, errlen, "unknown sub-format");
        tag = rd16(p + 24);
    }
    if (channels < 1 || channels > WAV_MAX_CHANNELS) return fail(r, err, errlen, "bad channel count");
    if (rate < 1000 || rate > 768000) return fail(r, err, errlen, "bad sample rate");
    th_sample s;
    if (tag == 1) {
        switch (bits) {
        case 8:
            s = TH_SAMPLE_U8;
            break;
        case 16:
            s = TH_SAMPLE_S16;
            break;
        case 24:
        case 32:
            s = TH_SAMPLE_S32;
            break;
        default:
            return fail(r, err, errlen, "unsupported PCM bit depth");
        }
    } else if (tag == 3) {
        if (bits == 32)
            s = TH_SAMPLE_F32;
        else if (bits == 64)
            s = TH_SAMPLE_F64;
        else
            return fail(r, err, errlen, "unsupported float bit depth");
    } else {
        return fail(r, err, errlen, "unsupported format tag (only PCM and IEEE float)");
    }
    r->spec =
        (th_audio_spec){.fmt = TH_FMT_PCM, .sample_rate = (int)rate, .channels = (int)channels, .sample = s};
    r->in_bytes = (int)bits / 8;
    r->block = r->in_bytes * (int)channels; /* block_align in the header is not trusted either */
    r->have_fmt = true;
    return 0;
}

static int ensure_out(th_wav_reader *r, size_t n)
{
    if (n <= r->out_cap) return 0;
    size_t cap = r->out_cap ? r->out_cap : 4096;
    while (cap < n)
        cap *= 2;
    uint8_t *p = realloc(r->out, cap);
    if (p == NULL) return -1;
    r->out = p;
    r->out_cap = cap;
    return 0;
}

/* Copies (or widens) whole frames of sample bytes into r->out. */
static int emit(th_wav_reader *r, const uint8_t *d, size_t n, size_t *out_len)
{
    size_t block = (size_t)r->block;
    size_t total = r->carry_len + n;
    size_t frames = total / block;
    size_t in_len = frames * block;
    size_t ob = r->in_bytes == 3 ? 4 : 1;
    size_t samples_bytes = r->in_bytes == 3 ? in_len / 3 * 4 : in_len;
    *out_len = 0;
    if (frames == 0) {
        memcpy(r->carry + r->carry_len, d, n);
        r->carry_len += n;
        return 0;
    }
    if (ensure_out(r, samples_bytes) != 0) return -1;
    if (ob == 1) {
        memcpy(r->out, r->carry, r->carry_len);
        memcpy(r->out + r->carry_len, d, in_len - r->carry_len);
    } else {
        /* 24-bit: join carry and data sample by sample. */
        size_t samples = in_len / 3;
        size_t pos = 0;
        for (size_t i = 0; i < samples; i++) {
            uint8_t b[3];
            for (int k = 0; k < 3; k++, pos++)
                b[k] = pos < r->carry_len ? r->carry[pos] : d[pos - r->carry_len];
            uint8_t *o = r->out + i * 4;
            o[0] = 0;
            o[1] = b[0];
            o[2] = b[1];
            o[3] = b[2];
        }
    }
    size_t used = in_len - r->carry_len; /* bytes of d consumed */
    r->carry_len = n - used;
    memcpy(r->carry, d + used, r->carry_len);
    *out_len = samples_bytes;
    return 0;
}

int th_wav_reader_push(th_wav_reader *r, const uint8_t *data, size_t len, const uint8_t **pcm,
                       size_t *pcm_len, char *err, size_t errlen)
{
    *pcm = NULL;
    *pcm_len = 0;
    if (r->state == ST_ERROR) return fail(r, err, errlen, "reader is in error");
    while (len > 0 && r->state != ST_DATA) {
        if (r->state == ST_SKIP) {
            size_t n = r->skip < len ? (size_t)r->skip : len;
            r->skip -= n;
            data += n;
            len -= n;
            if (r->skip == 0) {
                r->state = ST_CHUNK;
                r->need = 8;
                r->have = 0;
            }
            continue;
        }
        size_t n = r->need - r->have;
        if (n > len) n = len;
        if (r->header_seen + n > r->max_header) return fail(r, err, errlen, "header too large");
        memcpy(r->hdr + r->have, data, n);
        r->have += n;
        r->header_seen += n;
        data += n;
        len -= n;
        if (r->have < r->need) break;
        if (r->state == ST_RIFF) {
            if (memcmp(r->hdr, "RIFF", 4) != 0 && memcmp(r->hdr, "RIFX", 4) != 0)
                return fail(r, err, errlen, "not a RIFF file");
            if (memcmp(r->hdr, "RIFX", 4) == 0)
                return fail(r, err, errlen, "big-endian RIFX is not supported");
            if (memcmp(r->hdr + 8, "WAVE", 4) != 0) return fail(r, err, errlen, "not a WAVE file");
            r->state = ST_CHUNK;
            r->need = 8;
            r->have = 0;
        } else if (r->state == ST_CHUNK) {
            uint32_t size = rd32(r->hdr + 4);
            if (memcmp(r->hdr, "data", 4) == 0) {
                if (!r->have_fmt) return fail(r, err, errlen, "data chunk before fmt chunk");
                r->state = ST_DATA; /* its size is ignored: samples run to the end of the stream */
            } else if (memcmp(r->hdr, "fmt ", 4) == 0) {
                if (r->have_fmt) return fail(r, err, errlen, "second fmt chunk");
                if (size < 16 || size > WAV_MAX_FMT) return fail(r, err, errlen, "bad fmt chunk size");
                r->state = ST_FMT;
                r->need = size + (size & 1);
                r->have = 0;
                if (r->need > WAV_MAX_FMT) r->need = WAV_MAX_FMT;
            } else {
                uint64_t skip = (uint64_t)size + (size & 1);
                if (skip > r->max_header - r->header_seen) return fail(r, err, errlen, "header too large");
                r->header_seen += (size_t)skip;
                r->skip = skip;
                r->state = skip ? ST_SKIP : ST_CHUNK;
                r->need = 8;
                r->have = 0;
            }
        } else if (r->state == ST_FMT) {
            if (parse_fmt(r, err, errlen) != 0) return TH_WAV_ERROR;
            r->state = ST_CHUNK;
            r->need = 8;
            r->have = 0;
        }
    }
    if (r->state == ST_DATA && len > 0) {
        if (emit(r, data, len, pcm_len) != 0) return fail(r, err, errlen, "out of memory");
        *pcm = *pcm_len ? r->out : NULL;
    }
    return r->have_fmt ? TH_WAV_HAVE_FORMAT : TH_WAV_NEED_MORE;
}
