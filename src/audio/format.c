/* format: names, MIME types and sniffing of the audio formats of API.md. */
#include "audio/format.h"

#include <string.h>

#include "core/str.h"

static const char *const fmt_names[TH_FMT_COUNT] = {
    [TH_FMT_MP3] = "mp3",   [TH_FMT_OPUS] = "opus", [TH_FMT_AAC] = "aac",
    [TH_FMT_FLAC] = "flac", [TH_FMT_WAV] = "wav",   [TH_FMT_PCM] = "pcm",
};

static const char *const fmt_mimes[TH_FMT_COUNT] = {
    [TH_FMT_MP3] = "audio/mpeg",  [TH_FMT_OPUS] = "audio/opus", [TH_FMT_AAC] = "audio/aac",
    [TH_FMT_FLAC] = "audio/flac", [TH_FMT_WAV] = "audio/wav",   [TH_FMT_PCM] = "audio/pcm",
};

const char *th_fmt_name(th_fmt f)
{
    if ((int)f < 0 || f >= TH_FMT_COUNT) return NULL;
    return fmt_names[f];
}

const char *th_fmt_mime(th_fmt f)
{
    if ((int)f < 0 || f >= TH_FMT_COUNT) return NULL;
    return fmt_mimes[f];
}

th_fmt th_fmt_from_name(const char *name)
{
    if (name == NULL) return TH_FMT_NONE;
    for (int f = 0; f < TH_FMT_COUNT; f++)
        if (fmt_names[f] != NULL && strcmp(fmt_names[f], name) == 0) return (th_fmt)f;
    return TH_FMT_NONE;
}

static const struct {
    const char *type;
    th_fmt fmt;
} mime_map[] = {
    {"audio/mpeg", TH_FMT_MP3},   {"audio/mp3", TH_FMT_MP3},       {"audio/mpeg3", TH_FMT_MP3},
    {"audio/x-mpeg", TH_FMT_MP3}, {"audio/x-mp3", TH_FMT_MP3},     {"audio/x-mpeg-3", TH_FMT_MP3},
    {"audio/mpa", TH_FMT_MP3},    {"audio/wav", TH_FMT_WAV},       {"audio/x-wav", TH_FMT_WAV},
    {"audio/wave", TH_FMT_WAV},   {"audio/vnd.wave", TH_FMT_WAV},  {"audio/x-pn-wav", TH_FMT_WAV},
    {"audio/ogg", TH_FMT_OGG},    {"application/ogg", TH_FMT_OGG}, {"audio/vorbis", TH_FMT_OGG},
    {"audio/opus", TH_FMT_OPUS},  {"audio/aac", TH_FMT_AAC},       {"audio/x-aac", TH_FMT_AAC},
    {"audio/aacp", TH_FMT_AAC},   {"audio/flac", TH_FMT_FLAC},     {"audio/x-flac", TH_FMT_FLAC},
    {"audio/l16", TH_FMT_PCM},    {"audio/pcm", TH_FMT_PCM},       {"audio/x-pcm", TH_FMT_PCM},
    {"audio/raw", TH_FMT_PCM},    {"audio/x-raw", TH_FMT_PCM},     {"audio/basic-pcm", TH_FMT_PCM},
    {"audio/s16le", TH_FMT_PCM},
};

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

th_fmt th_fmt_from_mime(const char *content_type)
{
    if (content_type == NULL) return TH_FMT_NONE;
    const char *s = content_type;
    while (is_space(*s))
        s++;
    size_t n = 0;
    while (s[n] != '\0' && s[n] != ';' && !is_space(s[n]))
        n++;
    if (n == 0) return TH_FMT_NONE;
    th_fmt f = TH_FMT_NONE;
    for (size_t i = 0; i < sizeof mime_map / sizeof mime_map[0]; i++) {
        if (th_strn_ieq(s, n, mime_map[i].type)) {
            f = mime_map[i].fmt;
            break;
        }
    }
    /* audio/ogg; codecs=opus (or codecs="opus") names the codec. */
    if (f == TH_FMT_OGG) {
        const char *p = s + n;
        for (; *p != '\0'; p++) {
            if (th_strn_ieq(p, 4, "opus")) return TH_FMT_OPUS;
        }
    }
    return f;
}

int th_sample_bytes(th_sample s)
{
    switch (s) {
    case TH_SAMPLE_S16:
        return 2;
    case TH_SAMPLE_S32:
    case TH_SAMPLE_F32:
        return 4;
    case TH_SAMPLE_F64:
        return 8;
    case TH_SAMPLE_U8:
        return 1;
    }
    return 0;
}

/* MPEG audio frame header -> frame length in bytes, or 0 when p is not a valid header. */
static size_t mpeg_frame_len(const uint8_t *p)
{
    static const uint16_t br_v1[3][16] = {
        {0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448, 0}, /* layer I */
        {0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 0},    /* layer II */
        {0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0},     /* layer III */
    };
    static const uint16_t br_v2[3][16] = {
        {0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256, 0},
        {0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0},
        {0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0},
    };
    static const uint32_t rates[3] = {44100, 48000, 32000};
    if (p[0] != 0xFF || (p[1] & 0xE0) != 0xE0) return 0;
    int version = (p[1] >> 3) & 3; /* 0: 2.5, 1: reserved, 2: 2, 3: 1 */
    int layer = (p[1] >> 1) & 3;   /* 1: III, 2: II, 3: I */
    int bri = p[2] >> 4, sri = (p[2] >> 2) & 3, pad = (p[2] >> 1) & 1;
    if (version == 1 || layer == 0 || bri == 0 || bri == 15 || sri == 3) return 0;
    int li = 3 - layer; /* 0: I, 1: II, 2: III */
    uint32_t kbps = version == 3 ? br_v1[li][bri] : br_v2[li][bri];
    uint32_t rate = rates[sri] >> (version == 3 ? 0 : version == 2 ? 1 : 2);
    if (li == 0) return (size_t)((12 * kbps * 1000 / rate + (uint32_t)pad) * 4);
    uint32_t coef = (li == 2 && version != 3) ? 72 : 144;
    return (size_t)(coef * kbps * 1000 / rate + (uint32_t)pad);
}

/* ADTS header -> frame length, or 0. */
static size_t adts_frame_len(const uint8_t *p)
{
    if (p[0] != 0xFF || (p[1] & 0xF6) != 0xF0) return 0;
    if (((p[2] >> 2) & 0xF) >= 13) return 0; /* sampling frequency index */
    size_t len = ((size_t)(p[3] & 3) << 11) | ((size_t)p[4] << 3) | (p[5] >> 5);
    return len >= 7 ? len : 0;
}

static bool prefix_of(const uint8_t *p, size_t n, const char *sig)
{
    size_t sl = strlen(sig);
    return memcmp(p, sig, n < sl ? n : sl) == 0;
}

th_fmt th_fmt_sniff_ex(const uint8_t *p, size_t n, bool strict, bool *more)
{
    bool need = false;
    if (n == 0) {
        if (more) *more = true;
        return TH_FMT_NONE;
    }
    /* Strong signatures first. */
    if (prefix_of(p, n, "RIFF")) {
        if (n >= 12) {
            if (memcmp(p + 8, "WAVE", 4) == 0) return TH_FMT_WAV;
        } else if (n < 8 || prefix_of(p + 8, n - 8, "WAVE")) {
            need = true;
        }
    }
    if (n >= 3 && memcmp(p, "ID3", 3) == 0) return TH_FMT_MP3;
    if (n < 3 && prefix_of(p, n, "ID3")) need = true;
    if (n >= 4 && memcmp(p, "fLaC", 4) == 0) return TH_FMT_FLAC;
    if (n < 4 && prefix_of(p, n, "fLaC")) need = true;
    if (prefix_of(p, n, "OggS")) {
        /* The first page's payload starts after 27 bytes + the segment table. */
        if (n >= 27) {
            size_t body = 27 + (size_t)p[26];
            if (n >= body + 8) return memcmp(p + body, "OpusHead", 8) == 0 ? TH_FMT_OPUS : TH_FMT_OGG;
            need = true;
        } else {
            need = true;
        }
    }
    /* Frame syncs: ADTS (FFF1/FFF9 and the CRC variants FFF0/FFF8) and MPEG audio. When the next
     * header is within reach it must be there too. */
    if (p[0] == 0xFF) {
        if (n < 7) {
            need = true;
        } else {
            size_t alen = adts_frame_len(p), mlen = mpeg_frame_len(p);
            if (alen) {
                if (n >= alen + 2) {
                    if (p[alen] == 0xFF && (p[alen + 1] & 0xF6) == 0xF0) return TH_FMT_AAC;
                } else if (strict) {
                    need = true;
                } else {
                    return TH_FMT_AAC;
                }
            } else if (mlen) {
                if (n >= mlen + 4) {
                    if (mpeg_frame_len(p + mlen) != 0) return TH_FMT_MP3;
                } else if (strict) {
                    need = true;
                } else {
                    return TH_FMT_MP3;
                }
            }
        }
    }
    if (more) *more = need;
    return TH_FMT_NONE;
}

th_fmt th_fmt_sniff(const uint8_t *p, size_t n)
{
    return th_fmt_sniff_ex(p, n, false, NULL);
}
