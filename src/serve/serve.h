/* serve: the `ttshub serve` front end: loads the config, wires the HTTP servers to the api layer, runs
 * the hub's loop and drains it on SIGTERM. `ttshub worker` runs through it too (with a th_hub_ext). */
#ifndef TH_SERVE_SERVE_H
#define TH_SERVE_SERVE_H

#include <stdbool.h>

#include "hub/hub.h"

typedef struct th_serve_opts {
    const char *config_text; /* YAML to use instead of a file (ttshub worker), or NULL */
    const th_hub_ext *ext;   /* or NULL */
    const char *config_path; /* NULL: TTSHUB_CONFIG, else the embedded default */
    const char *listen;      /* overrides the config */
    const char *log_level;   /* overrides the config */
    bool reuse_port;         /* --reuse-port: SO_REUSEPORT on the listeners (also reload.reuse_port) */
} th_serve_opts;

/** `ttshub serve`: runs until SIGTERM/SIGINT has drained in-flight requests. Returns the exit code. */
int th_serve(const th_serve_opts *opts);

/** Stops the hub as SIGTERM does: drain in-flight requests, then exit 0. */
void th_serve_shutdown(th_hub *hub);

#endif
