/* providers/conf: the types of a provider's config section (th_provider_conf) and each kind's own
 * option defaults, in one place.
 *
 * Types only, with no dependency above core: the config parser (config/config.c) fills these structures,
 * and the providers read them. A kind's own keys (model, api, text_lang...) are stored as text in
 * opts; th_provider_opt_default() gives the documented default of one for a kind, which the parser
 * writes into opts when the key is absent and th_upstream_opt() falls back to. */
#ifndef TH_PROVIDERS_CONF_H
#define TH_PROVIDERS_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct th_kv {
    char *key;
    char *value; /* a string, or compact JSON text when is_map */
    bool is_map; /* the YAML value was a mapping (cloning engines' voice references) */
} th_kv;

typedef struct th_provider_conf {
    char *name;
    char *type; /* espeak | openai_fm | openai | gpt_sovits | xtts | openvoice | cosyvoice | fish | elevenlabs
                   | azure | nodes */
    int weight; /* default 1 */
    int priority;           /* default 0 */
    int concurrency;        /* default 4 (0 = unlimited) */
    int queue;              /* default 64 */
    uint64_t timeout_ms;    /* default 30s */
    size_t max_input_chars; /* 0 = the kind's own default */
    th_kv *voices;          /* public voice -> engine voice */
    size_t n_voices;
    uint32_t formats; /* bitmask of 1u << th_fmt; 0 = the kind's default */
    char *base_url;   /* upstream kinds */
    char *api_key_env;
    int sample_rate; /* 0 = the kind's default */
    char *engine;    /* nodes */
    th_kv *opts;     /* the kind's own keys (model, api, text_lang, media_type, streaming_mode, language,
                        stream, accent, mode, format, reference_id, model_id, output_format, region,
                        ref_dir, ref_dir_engine) */
    size_t n_opts;
} th_provider_conf;

/** The value of key in kv[0..n), or NULL. */
const char *th_kv_get(const th_kv *kv, size_t n, const char *key);

/** The documented default of a kind's own key (CONFIG.md), or NULL when it has none for that kind. */
const char *th_provider_opt_default(const char *kind, const char *key);

#endif
