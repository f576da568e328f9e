/* config_voice_library: the voice_library section (cloned voices: backend, durations, bounds) and its
 * check. */
#include "config/config_int.h"

static const char *const e_fs_redis[] = {"fs", "redis", NULL};
static const key_def k_voice_library[] = {
    KENUM(th_config, voice_library.backend, "backend", "fs", e_fs_redis),
    KDBL(th_config, voice_library.min_seconds, "min_seconds", "2", 0.5, 600.0),
    KDBL(th_config, voice_library.max_seconds, "max_seconds", "60", 1.0, 600.0),
    KSIZE(th_config, voice_library.cache_bytes, "cache_bytes", "64MiB", 0, 64 * GiB),
    KINT(th_config, voice_library.max_per_tenant, "max_per_tenant", "100", 1, 1000000, 0),
    KINT(th_config, voice_library.max_voices, "max_voices", "10000", 1, 1000000, 0),
    KDBL(th_config, voice_library.silence_dbfs, "silence_dbfs", "-45", -90.0, -10.0),
};
const section_def cf_s_voice_library = SECTION(k_voice_library);

void cf_check_voice_library(ctx *c, const ynode *root, th_config *cfg)
{
    if (cfg->voice_library.min_seconds >= cfg->voice_library.max_seconds) {
        const ynode *vl = cf_get(root, "voice_library");
        cf_err(c, cf_line_of(cf_get(vl, "min_seconds"), cf_line_of(vl, 0)), "voice_library.min_seconds",
               "must be shorter than voice_library.max_seconds");
    }
}
