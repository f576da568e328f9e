/* format: the audio formats of API.md, their MIME types, and sniffing. */
#ifndef TH_AUDIO_FORMAT_H
#define TH_AUDIO_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    TH_FMT_NONE = 0, /* unknown: sniff the bytes */
    TH_FMT_MP3,
    TH_FMT_OPUS, /* Ogg Opus */
    TH_FMT_AAC,  /* ADTS */
    TH_FMT_FLAC,
    TH_FMT_WAV,
    TH_FMT_PCM, /* headerless; rate/channels/sample from th_audio_spec */
    TH_FMT_OGG, /* Ogg with another codec (e.g. Vorbis): input only */
    TH_FMT_COUNT
} th_fmt;

typedef enum { TH_SAMPLE_S16 = 0, TH_SAMPLE_S32, TH_SAMPLE_F32, TH_SAMPLE_F64, TH_SAMPLE_U8 } th_sample;

/** What a stream of bytes is. For TH_FMT_PCM all fields matter; for containers the rest may be 0
 * (unknown: read from the stream). */
typedef struct th_audio_spec {
    th_fmt fmt;
    int sample_rate;
    int channels;
    th_sample sample;
} th_audio_spec;

#define TH_PCM_DEFAULT_RATE 24000 /* API.md: pcm is s16le mono 24 kHz unless asked otherwise */

/** "mp3", "opus", "aac", "flac", "wav", "pcm" (client-facing names; NULL for NONE/OGG). */
const char *th_fmt_name(th_fmt f);
/** Content-Type of a client-facing format ("audio/mpeg", ...). */
const char *th_fmt_mime(th_fmt f);
/** Client-facing name -> format; TH_FMT_NONE when it is not one of the six. Case-sensitive, like OpenAI. */
th_fmt th_fmt_from_name(const char *name);
/** Maps a Content-Type an engine sent to a format (audio/mpeg, audio/wav, audio/x-wav, audio/ogg, ...).
 * Returns TH_FMT_NONE when the type says nothing useful (octet-stream, text/html, missing). */
th_fmt th_fmt_from_mime(const char *content_type);
/** Looks at the first bytes. Returns TH_FMT_NONE when n is too small to tell or nothing matches
 * (callers then fall back to the declared spec, or to PCM). */
th_fmt th_fmt_sniff(const uint8_t *p, size_t n);
/** Like th_fmt_sniff. With strict, a lone MPEG/ADTS frame header is not enough when the next header
 * could still arrive. *more (may be NULL) is set when more bytes could change a TH_FMT_NONE answer. */
th_fmt th_fmt_sniff_ex(const uint8_t *p, size_t n, bool strict, bool *more);
/** Bytes per sample of a PCM sample format. */
int th_sample_bytes(th_sample s);

#endif
