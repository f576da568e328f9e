/* config_cluster: the registry section (worker nodes: heartbeats, networks, bounds, voice pushes) and
 * its timing checks. */
#include "config/config_int.h"

static const key_def k_registry[] = {
    KDUR(th_config, registry.heartbeat_interval_ms, "heartbeat_interval", "10s", 1 * SEC, 1 * HOUR),
    KDUR(th_config, registry.dead_threshold_ms, "dead_threshold", "30s", 1 * SEC, 1 * DAY),
    KDUR(th_config, registry.remove_after_ms, "remove_after", "10m", 1 * SEC, 30 * DAY),
    KSTR(th_config, registry.token_env, "token_env", "TTSHUB_CLUSTER_TOKEN", cf_check_env, 0, 0),
    KENUM(th_config, registry.backend, "backend", "local", cf_e_local_redis),
    {.name = "trusted_networks",
     .type = K_STRLIST,
     .off = offsetof(th_config, registry.trusted_networks),
     .off2 = offsetof(th_config, registry.n_trusted_networks),
     .def = "loopback",
     .check = cf_check_network},
    {.name = "allowed_networks",
     .type = K_STRLIST,
     .off = offsetof(th_config, registry.allowed_networks),
     .off2 = offsetof(th_config, registry.n_allowed_networks),
     .check = cf_check_network},
    KINT(th_config, registry.max_capacity, "max_capacity", "64", 1, 100000, 0),
    KSIZE(th_config, registry.max_node_bytes, "max_node_bytes", "64KiB", 1 * KiB, 64 * MiB),
    KSIZE(th_config, registry.max_bytes, "max_bytes", "16MiB", 64 * KiB, 4 * GiB),
    KINT(th_config, registry.control_rpm, "control_rpm", "600", 0, 100000000, 0),
    KINT(th_config, registry.max_node_voices, "max_node_voices", "1000", 1, 100000, 0),
    KINT(th_config, registry.voice_push_concurrency, "voice_push_concurrency", "2", 1, 64, 0),
    KDUR(th_config, registry.voice_push_timeout_ms, "voice_push_timeout", "60s", 1 * SEC, 10 * MIN),
};
const section_def cf_s_registry = SECTION(k_registry);

void cf_check_registry(ctx *c, const ynode *root, th_config *cfg)
{
    const ynode *reg = cf_get(root, "registry");
    if (cfg->registry.dead_threshold_ms <= cfg->registry.heartbeat_interval_ms)
        cf_err(c, cf_line_of(cf_get(reg, "dead_threshold"), cf_line_of(reg, 0)), "registry.dead_threshold",
               "must be longer than registry.heartbeat_interval");
    if (cfg->registry.remove_after_ms < cfg->registry.dead_threshold_ms)
        cf_err(c, cf_line_of(cf_get(reg, "remove_after"), cf_line_of(reg, 0)), "registry.remove_after",
               "must not be shorter than registry.dead_threshold");
}
