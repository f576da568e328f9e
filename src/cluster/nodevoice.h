/* nodevoice: library voices pushed ahead of need to seed-2 worker nodes (their POST /extract_voice).
 *
 * A seed-2 worker speaks only the voices stored on it. The nodes provider pushes a voice to the node it
 * picked when that node lacks it (on demand, providers/nodes.c); this module pushes before anyone asks:
 * - a voice just made in the library goes to every ready seed-2 node of its engine (every seed-2 node when
 *   the voice names no engine);
 * - a seed-2 node that starts taking traffic (registered, back, activated) gets the library's voices of its
 *   engine, newest first, at most registry.max_node_voices of them.
 * Each push is recorded in the registry (th_registry_voice_set), so requests go to nodes holding the voice.
 * Bounded: at most TH_NODEVOICE_QUEUE_MAX pushes wait (more are dropped and left to the on-demand path),
 * registry.voice_push_concurrency run at once, each within registry.voice_push_timeout. Loop thread only. */
#ifndef TH_HUB_NODEVOICE_H
#define TH_HUB_NODEVOICE_H

#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "http/client.h"
#include "cluster/registry.h"

#define TH_NODEVOICE_QUEUE_MAX 4096

struct th_vlib;
typedef struct th_nodevoice th_nodevoice;

typedef struct th_nodevoice_conf {
    int concurrency;     /* pushes at once (>= 1) */
    uint64_t timeout_ms; /* one push, whole */
    int max_per_node;    /* voices pushed to a node that becomes ready */
    const char *bearer;  /* "Bearer <cluster token>" for the nodes, or NULL */
} th_nodevoice_conf;

/** NULL on ENOMEM. Borrows the registry, library and client (all outlive it). */
th_nodevoice *th_nodevoice_new(th_registry *reg, struct th_vlib *vlib, th_client *client,
                               const th_nodevoice_conf *conf, th_log *log);
/** Cancels pending and running pushes. */
void th_nodevoice_free(th_nodevoice *nv);
/** A library voice was made: push it to the ready seed-2 nodes of its engine that lack it. */
void th_nodevoice_voice_added(th_nodevoice *nv, const char *voice_id);
/** Node id started taking traffic: push it the library's voices (for the registry's ready listener). */
void th_nodevoice_node_ready(void *nv, const char *node_id);
/** Pushes waiting and running (for tests and /metrics). */
size_t th_nodevoice_pending(const th_nodevoice *nv);

#endif
