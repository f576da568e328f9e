/* reload: live configuration. SIGHUP, a change of the config file (seen by the event loop) and
 * POST /admin/reload all run one reload:
 *
 *   read the file -> sha256 (unchanged: nothing to do) -> parse and validate in full (the checks of
 *   `ttshub check`) -> refuse changes of keys that need a restart -> build what the new config needs
 *   (auth, new or changed providers) -> swap it in at once.
 *
 * Any failure leaves the config in force untouched and reports every error with its YAML path. A
 * config is immutable and reference-counted: requests in flight keep the one they started with (and
 * the providers they started on, see route.h); new requests see the new one.
 *
 * The file watch: uv_fs_event on the file's directory (in-place writes, rename-over, Kubernetes'
 * ConfigMap `..data` symlink swap) backed by a uv_fs_poll of the path itself, both debounced
 * (reload.debounce); a content hash equal to the one in force does nothing. Loop thread only. */
#ifndef TH_HUB_RELOAD_H
#define TH_HUB_RELOAD_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "config/config.h"

struct th_hub;
typedef struct th_reload th_reload;

typedef enum { TH_RELOAD_SIGNAL = 0, TH_RELOAD_FILE, TH_RELOAD_API } th_reload_trigger;

typedef enum {
    TH_RELOAD_SWAPPED = 0,  /* a new config is in force */
    TH_RELOAD_UNCHANGED,    /* same content as the config in force: nothing done */
    TH_RELOAD_REFUSED = -1, /* invalid, or a restart-only key changed: the old config stays */
} th_reload_rc;

/** Starts the triggers for the hub's config: SIGHUP always; the file watch when the config came from a
 * file and reload.watch is on. path: the file the config came from (NULL: none, so a reload is refused).
 * log_level_pinned: --log-level was given, so a reload leaves the level alone. notify: called with a
 * `config_reloaded` event after each swap (the live feed), or NULL. 0 or -1 (hub->reload may then be set:
 * th_reload_free it). */
int th_reload_start(struct th_hub *hub, const char *path, bool log_level_pinned,
                    void (*notify)(struct th_hub *hub, const char *type, json_t *data));
/** The hub drains: the file watch stops; SIGHUP is still caught (and ignored) until th_reload_free. */
void th_reload_stop(struct th_hub *hub);
/** Closes the signal handle and frees (the end of the drain). */
void th_reload_free(struct th_hub *hub);

/** Runs one reload now. On TH_RELOAD_REFUSED errs holds every error; on TH_RELOAD_SWAPPED and
 * TH_RELOAD_UNCHANGED *summary (if summary != NULL) is the answer of POST /admin/reload (caller owns). */
th_reload_rc th_reload_run(struct th_hub *hub, th_reload_trigger why, th_config_errors *errs,
                           json_t **summary);

/** {sha256, loaded_at, generation, source, reloads:{ok,refused}} of the config in force (new reference). */
json_t *th_reload_version(const struct th_hub *hub);
/** Wall-clock ms at which the config in force was loaded (0 before start). */
uint64_t th_reload_loaded_at(const struct th_hub *hub);

/* ---- the pure part, for tests ---- */

/** Appends an error for every key whose change needs a restart (listen, metrics_listen, data_dir, the
 * backends, redis, cache, tracing, the embedded espeak engine...). Returns how many. */
size_t th_reload_check_restart(const th_config *old, const th_config *neu, th_config_errors *errs);
/** true when two provider sections mean the same provider (every key, secrets' names and URLs too). */
bool th_reload_provider_same(const th_config *a, size_t ia, const th_config *b, size_t ib);
/** The provider's name in cache keys: "name#" and 12 hex digits of the sha256 of its section without the
 * keys that do not change its audio (weight, priority, concurrency, queue, timeout), so a reload that
 * changes an engine's settings stops its old cache entries from answering, and one that does not keeps
 * them. pc must be one of cfg->providers. */
void th_reload_provider_tag(const th_config *cfg, const th_provider_conf *pc, char *out, size_t outlen);
/** {providers:{added,changed,removed},tenants:{added,changed,removed},keys:{added,changed,removed},
 * routes:{changed,count}} between two configs (new reference). */
json_t *th_reload_diff(const th_config *old, const th_config *neu);

#endif
