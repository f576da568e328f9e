/* config_server: the sections that shape the server itself: limits (bodies, headers, connections,
 * timeouts), redis (the shared store) and reload (live configuration). */
#include "config/config_int.h"

/* where shared state lives (rate_limit.backend, registry.backend) */
const char *const cf_e_local_redis[] = {"local", "redis", NULL};

static const key_def k_limits[] = {
    KSIZE(th_config, limits.max_body, "max_body", "1MiB", 1 * KiB, 1 * GiB),
    KSIZE(th_config, limits.max_upload, "max_upload", "20MiB", 1 * KiB, 4 * GiB),
    KSIZE(th_config, limits.max_header, "max_header", "16KiB", 1 * KiB, 1 * MiB),
    KINT(th_config, limits.max_input_chars, "max_input_chars", "100000", 1, 100000000, 0),
    KINT(th_config, limits.max_connections, "max_connections", "10000", 1, 1000000, 0),
    KDUR(th_config, limits.header_timeout_ms, "header_timeout", "10s", 100, 1 * HOUR),
    KDUR(th_config, limits.idle_timeout_ms, "idle_timeout", "60s", 1 * SEC, 1 * DAY),
    KDUR(th_config, limits.request_timeout_ms, "request_timeout", "120s", 1 * SEC, 1 * DAY),
    KDUR(th_config, limits.shutdown_grace_ms, "shutdown_grace", "30s", 0, 1 * HOUR),
    KINT(th_config, limits.max_connections_per_ip, "max_connections_per_ip", "1000", 0, 1000000, 0),
    KSIZE(th_config, limits.max_buffered_bodies, "max_buffered_bodies", "256MiB", 1 * MiB, 64 * GiB),
    KSIZE(th_config, limits.max_buffered_audio, "max_buffered_audio", "32MiB", 64 * KiB, 4 * GiB),
    KINT(th_config, limits.max_feed_per_ip, "max_feed_per_ip", "16", 1, 100000, 0),
    KDUR(th_config, limits.feed_idle_timeout_ms, "feed_idle_timeout", "60s", 1 * SEC, 1 * DAY),
    KDUR(th_config, limits.feed_ping_interval_ms, "feed_ping_interval", "20s", 100, 1 * HOUR),
};
const section_def cf_s_limits = SECTION(k_limits);

static const key_def k_redis[] = {
    KSTR(th_config, redis.url, "url", "redis://127.0.0.1:6379/0", cf_check_redis_url, F_URL, 0),
    KSTR(th_config, redis.prefix, "prefix", "ttshub:", NULL, 0, 0),
    KDUR(th_config, redis.timeout_ms, "timeout", "200ms", 1, 60 * SEC),
    KINT(th_config, redis.pool, "pool", "2", 1, 8, 0),
    KINT(th_config, redis.max_inflight, "max_inflight", "1024", 1, 1000000, 0),
};
const section_def cf_s_redis = SECTION(k_redis);

static const key_def k_reload[] = {
    KBOOL(th_config, reload.watch, "watch", "true"),
    KDUR(th_config, reload.debounce_ms, "debounce", "300ms", 0, 1 * MIN),
    KBOOL(th_config, reload.reuse_port, "reuse_port", "false"),
};
const section_def cf_s_reload = SECTION(k_reload);
