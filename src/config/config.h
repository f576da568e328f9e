/* config: the YAML config of CONFIG.md, read with libyaml through one schema table.
 *
 * th_config_load() reads and validates a whole file and reports every error
 * with its YAML path ("providers[2].base_url: not a URL"); unknown keys are
 * errors. A loaded config is immutable and reference-counted: a reload
 * builds and validates a new one, then swaps it in; in-flight requests keep
 * the one they started with. With no file, th_config_default() gives the
 * defaults of CONFIG.md with one embedded espeak provider named "local". */
#ifndef TH_HUB_CONFIG_H
#define TH_HUB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "providers/conf.h"

typedef struct th_tenant_conf {
    char *name;
    int rpm, rate, burst, concurrency;       /* 0 = no limit */
    uint64_t chars_per_day, chars_per_month; /* 0 = unlimited */
    char **voices;                           /* glob patterns; default ["*"] */
    size_t n_voices;
    char **providers; /* default ["*"] */
    size_t n_providers;
    int max_voices; /* voice library: voices this tenant may keep; 0 = voice_library.max_per_tenant */
} th_tenant_conf;

typedef struct th_key_conf {
    char *id;
    char *sha256; /* lower-case hex, 64 chars */
    char *tenant;
    char *role; /* user | admin */
    int rpm;    /* added: sliding-window requests per minute for this key; 0 = no limit */
} th_key_conf;

typedef struct th_route_conf {
    char *tenant, *voice, *model; /* glob patterns; "" or NULL = any */
    char **providers;
    size_t n_providers;
} th_route_conf;

typedef struct th_voice_conf {
    char *id;
    char *language;
    th_kv *providers; /* provider name -> engine voice */
    size_t n_providers;
} th_voice_conf;

typedef struct th_config {
    char *path;   /* the file it came from; NULL for defaults */
    char *listen; /* "0.0.0.0:8080" */
    char *metrics_listen;
    char *data_dir;
    struct {
        th_log_level level;
        th_log_format format;
        char *file;
    } log;
    struct {
        uint64_t max_body, max_upload, max_header;
        uint64_t max_input_chars;
        uint32_t max_connections;
        uint64_t header_timeout_ms, idle_timeout_ms, request_timeout_ms;
        uint64_t shutdown_grace_ms; /* added: how long SIGTERM waits for in-flight requests (30s) */
        /* safe by default (issue 12) */
        uint32_t max_connections_per_ip; /* open connections per client IP (IPv6: per /64); 0 = no cap */
        uint64_t max_buffered_bodies; /* request bodies held in memory at once, all clients (503 past it) */
        uint64_t max_buffered_audio; /* engine audio that must be held whole (Ogg) per request: 502 past it */
        uint32_t max_feed_per_ip;    /* /ws clients per IP */
        uint64_t feed_idle_timeout_ms;  /* a /ws client silent this long (no pong, no frame) is dropped */
        uint64_t feed_ping_interval_ms; /* how often /ws clients are pinged */
    } limits;
    struct {
        char *mode;            /* none | api_key | jwt | any */
        bool allow_open_admin; /* mode none on a non-loopback address: admin and control routes stay open */
        th_key_conf *keys;
        size_t n_keys;
        struct {
            char *alg, *secret_env, *public_key_file, *issuer, *audience, *tenant_claim, *role_claim;
            bool require_exp; /* tokens without exp are refused (default true) */
        } jwt;
    } auth;
    th_tenant_conf *tenants;
    size_t n_tenants;
    struct {
        int global_rpm, ip_rpm, concurrency;
        char *backend;          /* local | redis */
        char *on_backend_error; /* open | closed */
    } rate_limit;
    struct {
        char *url, *prefix;
        uint64_t timeout_ms;
        int pool;         /* connections for limit checks (the bulk lane for cached audio has one more) */
        int max_inflight; /* unanswered commands per connection */
    } redis;
    struct {
        bool enabled;
        char *backend; /* memory | redis */
        uint64_t max_bytes;
        uint64_t ttl_ms;
        bool per_tenant; /* the key holds the tenant: tenants never share entries (default true) */
    } cache;
    th_provider_conf *providers;
    size_t n_providers;
    struct {
        char *strategy; /* weighted | round_robin | least_load | random | priority */
        int retries;
        bool fallback;
        uint64_t hedge_after_ms;
        struct {
            int failures;
            double failure_ratio;
            uint64_t window_ms, open_for_ms;
            int half_open_probes;
        } breaker;
        uint64_t health_interval_ms;
        th_route_conf *routes;
        size_t n_routes;
    } router;
    th_voice_conf *voices;
    size_t n_voices;
    struct {
        uint64_t heartbeat_interval_ms, dead_threshold_ms, remove_after_ms;
        char *token_env;
        char *backend;
        char **trusted_networks; /* nodes from here may register without the token (default loopback) */
        size_t n_trusted_networks;
        char **allowed_networks; /* node addresses, after resolution ([] = loopback + private) */
        size_t n_allowed_networks;
        int max_capacity;           /* a node's capacity is clamped to this */
        uint64_t max_node_bytes;    /* a node's voices + languages, in bytes */
        uint64_t max_bytes;         /* all nodes' voices + languages */
        int control_rpm;            /* node and control requests per minute per client IP (0 = no limit) */
        int max_node_voices;        /* library voices recorded as held per node (seed-2 workers) */
        int voice_push_concurrency; /* library voices pushed to seed-2 nodes at the same time */
        uint64_t voice_push_timeout_ms;
    } registry;
    struct {
        char *otlp_endpoint, *service_name;
        double sample_ratio;
    } tracing;
    struct {
        char *backend;        /* fs | redis */
        double min_seconds;   /* 2 */
        double max_seconds;   /* 60 */
        uint64_t cache_bytes; /* 64MiB of resident reference audio */
        int max_per_tenant;   /* 100; tenants.<t>.max_voices overrides */
        int max_voices;       /* 10000 in the whole library */
        double silence_dbfs;  /* -45: 20 ms windows quieter than this are silence */
    } voice_library;
    bool metrics_tenant_labels; /* /metrics carries per-tenant series (false: one "all" series) */

    struct {
        bool watch;           /* reload when the file changes (default true) */
        uint64_t debounce_ms; /* after the last change seen (300ms) */
        bool reuse_port;      /* bind the listeners with SO_REUSEPORT (or `serve --reuse-port`) */
    } reload;

    int refs; /* reference count; starts at 1 */
} th_config;

/** One validation error. */
typedef struct th_config_error {
    char path[256]; /* "providers[2].base_url" ("" for the whole file) */
    char message[256];
    int line; /* 1-based line in the file, 0 when unknown */
} th_config_error;

typedef struct th_config_errors {
    th_config_error *items;
    size_t n, cap;
} th_config_errors;

/** The defaults of CONFIG.md plus one espeak provider "local". NULL on ENOMEM. */
th_config *th_config_default(void);
/** Reads and validates a file. On any error returns NULL and fills errs (every error, not the first). */
th_config *th_config_load(const char *path, th_config_errors *errs);
/** Same, from a string (tests, fuzzing). name is used in messages. */
th_config *th_config_parse(const char *yaml, size_t len, th_config_errors *errs);
void th_config_errors_free(th_config_errors *errs);
/** The bytes of the file at path, already read (a reload hashes what it parses). Same checks as load. */
th_config *th_config_parse_file(const char *yaml, size_t len, const char *path, th_config_errors *errs);

th_config *th_config_ref(th_config *c);
void th_config_unref(th_config *c);

/** The live config as JSON text (malloc'd), with secrets and key hashes redacted. */
char *th_config_to_json(const th_config *c);

/** Lookups. */
const th_provider_conf *th_config_provider(const th_config *c, const char *name);
const th_tenant_conf *th_config_tenant(const th_config *c, const char *name);

#endif
