/* providers/conf: each kind's own option defaults (the one table), and th_kv lookups. */
#include "providers/conf.h"

#include <string.h>

static const struct {
    const char *kind, *key, *value;
} opt_defaults[] = {
    {"openai", "model", "tts-1"},
    {"gpt_sovits", "api", "v2"},
    {"gpt_sovits", "text_lang", "auto"},
    {"gpt_sovits", "media_type", "wav"},
    {"gpt_sovits", "streaming_mode", "1"},
    {"xtts", "language", "en"},
    {"openai", "stream", "true"},
    {"xtts", "stream", "false"},
    {"openvoice", "accent", "en-newest"},
    {"cosyvoice", "mode", "sft"},
    {"fish", "format", "wav"},
    {"elevenlabs", "model_id", "eleven_multilingual_v2"},
    {"elevenlabs", "output_format", "mp3_44100_128"},
    {"azure", "output_format", "riff-24khz-16bit-mono-pcm"},
    {"nodes", "strategy", "round_robin"},
    {"nodes", "protocol", "ttshub"},
};

const char *th_provider_opt_default(const char *kind, const char *key)
{
    for (size_t i = 0; kind && key && i < sizeof opt_defaults / sizeof opt_defaults[0]; i++)
        if (strcmp(opt_defaults[i].kind, kind) == 0 && strcmp(opt_defaults[i].key, key) == 0)
            return opt_defaults[i].value;
    return NULL;
}

const char *th_kv_get(const th_kv *kv, size_t n, const char *key)
{
    for (size_t i = 0; kv && key && i < n; i++)
        if (strcmp(kv[i].key, key) == 0) return kv[i].value;
    return NULL;
}
