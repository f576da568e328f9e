/* config_providers: the providers section. One table for every kind: the common keys, then each kind's
 * own keys (K_OPT, with their defaults in providers/conf.c); a key a kind does not take is an error. */
#include "config/config_int.h"

#include <string.h>

const char *const cf_kinds[] = {"espeak",    "openai_fm", "openai",     "gpt_sovits", "xtts",  "openvoice",
                                "cosyvoice", "fish",      "elevenlabs", "azure",      "nodes", NULL};

static const char *const e_api[] = {"v2", "v1", NULL};
static const char *const e_node_strategy[] = {"round_robin", "least_load", "random", NULL};
static const char *const e_node_protocol[] = {"ttshub", "seed2", NULL};
static const char *const e_media[] = {"wav", "raw", "ogg", "aac", NULL};
static const char *const e_cosy_mode[] = {"sft", "zero_shot", "cross_lingual", "instruct", NULL};
static const char *const e_fish_fmt[] = {"wav", "pcm", "mp3", "opus", NULL};

static void provider_post(ctx *c, const ynode *n, void *base, const char *path, size_t index);
static void provider_fini(void *base);

static const key_def k_provider[] = {
    KSTR(th_provider_conf, name, "name", "", cf_check_name, F_REQ, 0),
    KENUM(th_provider_conf, type, "type", "", cf_kinds),
    KINT(th_provider_conf, weight, "weight", "1", 0, 10000, 0),
    KINT(th_provider_conf, priority, "priority", "0", 0, 1000000, 0),
    KINT(th_provider_conf, concurrency, "concurrency", "4", 0, 100000, 0),
    KINT(th_provider_conf, queue, "queue", "64", 0, 1000000, 0),
    KDUR(th_provider_conf, timeout_ms, "timeout", "30s", 100, 1 * HOUR),
    KINT(th_provider_conf, max_input_chars, "max_input_chars", "0", 0, 100000000, 0),
    KKV(th_provider_conf, voices, n_voices, "voices", F_KV_MAPOK),
    {.name = "formats", .type = K_FMTS, .off = offsetof(th_provider_conf, formats)},
    KSTR(th_provider_conf, base_url, "base_url", "", cf_check_http_url_opt, F_URL,
         KB_UPSTREAM | KB(KD_NODES)),
    KSTR(th_provider_conf, api_key_env, "api_key_env", "", cf_check_env, 0, KB_UPSTREAM),
    KINT(th_provider_conf, sample_rate, "sample_rate", "0", 0, 384000, KB_ALL & ~KB(KD_ESPEAK)),
    KSTR(th_provider_conf, engine, "engine", "", NULL, 0, KB(KD_NODES)),
    KOPT("model", K_STR, KB(KD_OPENAI), .check = cf_check_nonempty),
    KOPT("api", K_ENUM, KB(KD_GPT_SOVITS), .enums = e_api),
    KOPT("text_lang", K_STR, KB(KD_GPT_SOVITS), .check = cf_check_nonempty),
    KOPT("media_type", K_ENUM, KB(KD_GPT_SOVITS), .enums = e_media),
    KOPT("streaming_mode", K_INT, KB(KD_GPT_SOVITS), .min = 0, .max = 3),
    KOPT("language", K_STR, KB(KD_XTTS), .check = cf_check_nonempty),
    KOPT("stream", K_BOOL, KB(KD_OPENAI) | KB(KD_XTTS)),
    KOPT("accent", K_STR, KB(KD_OPENVOICE), .check = cf_check_nonempty),
    KOPT("mode", K_ENUM, KB(KD_COSYVOICE), .enums = e_cosy_mode),
    KOPT("format", K_ENUM, KB(KD_FISH), .enums = e_fish_fmt),
    KOPT("reference_id", K_STR, KB(KD_FISH)),
    KOPT("model_id", K_STR, KB(KD_ELEVENLABS), .check = cf_check_nonempty),
    KOPT("output_format", K_STR, KB(KD_ELEVENLABS) | KB(KD_AZURE), .check = cf_check_nonempty),
    KOPT("region", K_STR, KB(KD_AZURE), .check = cf_check_region),
    KOPT("strategy", K_ENUM, KB(KD_NODES), .enums = e_node_strategy),
    /* the node protocol a nodes provider speaks (and the registered nodes it routes to) */
    KOPT("protocol", K_ENUM, KB(KD_NODES), .enums = e_node_protocol),
    /* library voices on shared storage: the folder the hub writes, and where the engine sees it */
    KOPT("ref_dir", K_STR, KB(KD_GPT_SOVITS) | KB(KD_XTTS)),
    KOPT("ref_dir_engine", K_STR, KB(KD_GPT_SOVITS) | KB(KD_XTTS)),
};
const section_def cf_s_provider =
    SECTION(k_provider, .by_kind = true, .post = provider_post, .fini = provider_fini);

static void provider_fini(void *base)
{
    th_provider_conf *pc = base;
    cf_free_kv(pc->opts, pc->n_opts);
    pc->opts = NULL;
    pc->n_opts = 0;
}

static void provider_post(ctx *c, const ynode *n, void *base, const char *path, size_t index)
{
    th_provider_conf *pc = base;
    char p[256];
    int kind = pc->type ? cf_enum_index(cf_kinds, pc->type) : -1;
    if (pc->name && pc->name[0]) {
        for (size_t i = 0; i < index; i++) {
            if (c->cfg->providers[i].name && strcmp(c->cfg->providers[i].name, pc->name) == 0) {
                cf_join(p, sizeof p, path, "name");
                cf_err(c, cf_line_of(cf_get(n, "name"), n->line), p,
                       "duplicate provider name \"%s\" (also providers[%zu])", pc->name, i);
                break;
            }
        }
    }
    if (kind < 0) return;
    if (KB(kind) & KB_UPSTREAM) {
        /* present but invalid was reported already */
        bool has_url = (pc->base_url && pc->base_url[0]) || cf_get(n, "base_url") != NULL;
        if (kind == KD_AZURE) {
            if (!has_url && cf_get(n, "region") == NULL) {
                cf_join(p, sizeof p, path, "region");
                cf_err(c, n->line, p, "required for type azure (or base_url)");
            }
        } else if (!has_url) {
            cf_join(p, sizeof p, path, "base_url");
            cf_err(c, n->line, p, "required for type %s", cf_kinds[kind]);
        }
    }
    /* the kind's documented defaults for its own keys (providers/conf.c) */
    for (size_t i = 0; i < cf_s_provider.n; i++) {
        const key_def *kd = &cf_s_provider.keys[i];
        if (kd->type != K_OPT || th_kv_get(pc->opts, pc->n_opts, kd->name)) continue;
        const char *dv = th_provider_opt_default(cf_kinds[kind], kd->name);
        if (dv == NULL) continue;
        if (cf_kv_append(&pc->opts, &pc->n_opts, kd->name, dv, false) != 0) cf_oom(c);
    }
}

void cf_check_providers(ctx *c, const ynode *root, th_config *cfg)
{
    (void)cfg;
    const ynode *pn = cf_get(root, "providers");
    if (pn && (cf_is_null(pn) || (pn->kind == N_SEQ && pn->n == 0)))
        cf_err(c, pn->line, "providers", "at least one provider is required");
}
