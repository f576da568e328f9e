/* registry: the worker nodes that registered with this hub (API.md "Worker registry").
 *
 * A node registers (engine type, URL, capacity, voices...), then heartbeats. A node silent for longer
 * than dead_threshold is offline (no traffic); offline for remove_after, it is removed. The hub counts
 * each node's in-flight requests itself (a heartbeat's count is already stale), and picks a node for a
 * request by engine type with round_robin, least_load or random.
 *
 * Nodes are reference counted: a request holds its node (th_registry_pick) until th_registry_release,
 * so a node removed while requests are under way is freed after the last one. Loop thread only;
 * times are th_mono_ms() values passed in, so tests can drive the clock. */
#ifndef TH_HUB_REGISTRY_H
#define TH_HUB_REGISTRY_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/log.h"

#define TH_NODE_ID_MAX 64     /* [A-Za-z0-9_.-]{1,64} */
#define TH_NODE_ENGINE_MAX 32 /* [a-z0-9_-]{1,32} */
#define TH_NODE_URL_MAX 512
#define TH_REGISTRY_MAX_NODES 4096

typedef struct th_registry th_registry;
typedef struct th_node th_node;

/** The protocol a node speaks: ttshub's node contract (API.md "What a node must serve"), or a seed-2
 * voice-clone-tts worker (NodeInfo registration, {text, voice_id, ...} /synthesize, multipart
 * /extract_voice). Told by the registration: an explicit `protocol`, else the NodeInfo shape (host + port,
 * no url, with registered_at or last_heartbeat) is seed2 and anything else ttshub. */
typedef enum {
    TH_NODE_PROTO_TTSHUB = 0,
    TH_NODE_PROTO_SEED2 = 1,
} th_node_proto;

typedef enum {
    TH_NODE_PICK_ROUND_ROBIN = 0,
    TH_NODE_PICK_LEAST_LOAD,
    TH_NODE_PICK_RANDOM,
} th_node_pick;

/** Events for the live feed: node_online, node_offline, node_status_changed, node_removed. */
typedef void (*th_registry_event_fn)(void *ud, const char *event, const char *node_id, const char *status);

typedef struct th_registry_conf {
    uint64_t heartbeat_interval_ms, dead_threshold_ms, remove_after_ms;
    int max_capacity;        /* a node's capacity is clamped to this (0: 100000) */
    uint64_t max_node_bytes; /* voices + languages of one node (0: no cap but the list limits) */
    uint64_t max_bytes;      /* voices + languages of every node (0: no cap) */
    int max_node_voices;     /* library voices recorded as held per node, oldest forgotten first (0: 1000) */
} th_registry_conf;

/** Who makes a registry change (the control routes): cred names the credential ("token", "trusted",
 * "key:ID", "jwt:SUB"), addr the client IP. A node is bound to the cred and addr that registered it. */
typedef struct th_reg_caller {
    const char *cred;
    const char *addr;
    bool admin;   /* an admin credential: may change any node */
    bool dry_run; /* check everything, change nothing */
} th_reg_caller;

typedef enum {
    TH_REG_OK = 0,
    TH_REG_INVALID,   /* the body is wrong (err says how): 400 */
    TH_REG_UNKNOWN,   /* no such node: 404 */
    TH_REG_FULL,      /* TH_REGISTRY_MAX_NODES reached: 503 */
    TH_REG_NOMEM,     /* 500 */
    TH_REG_FORBIDDEN, /* the node belongs to another credential or address: 403 */
} th_reg_rc;

th_registry *th_registry_new(const th_registry_conf *conf, th_log *log);
/** Frees the registry; nodes still held by requests are freed at their release. */
void th_registry_free(th_registry *r);
void th_registry_set_listener(th_registry *r, th_registry_event_fn fn, void *ud);
/** A second listener, for the nodes that start taking traffic (registered, back, activated: alive, loaded,
 * routable status where they were not). */
void th_registry_set_ready_listener(th_registry *r, void (*fn)(void *ud, const char *node_id), void *ud);

/** POST /api/nodes/register. body: {node_id?, engine_type, url | host+port, capacity, model_loaded, status,
 * voices?, languages?}. A known node_id is updated in place; a registration without one that names the
 * URL and engine of a known node replaces it (the node restarted). *id_out gets the node id. */
th_reg_rc th_registry_register(th_registry *r, const json_t *body, uint64_t now,
                               char id_out[TH_NODE_ID_MAX + 1], char *err, size_t errlen);
/** The same on behalf of who (NULL: the operator, like an admin). A node already known is changed only
 * by an admin or by its own cred from its own addr (from another addr once it is offline). */
th_reg_rc th_registry_register_as(th_registry *r, const json_t *body, const th_reg_caller *who, uint64_t now,
                                  char id_out[TH_NODE_ID_MAX + 1], char *err, size_t errlen);
/** TH_REG_OK when who may heartbeat, change or remove node id (TH_REG_UNKNOWN, TH_REG_FORBIDDEN). */
th_reg_rc th_registry_check_owner(const th_registry *r, const char *id, const th_reg_caller *who,
                                  uint64_t now, char *err, size_t errlen);
/** Bytes of voices and languages held for every node. */
uint64_t th_registry_bytes(const th_registry *r);

/** A node URL as registration accepts it: http(s)://host[:port][/plain/prefix], with no userinfo, query,
 * fragment, dot segment or escape. host gets the host (without brackets), *port the port. */
bool th_node_url_parse(const char *url, size_t len, char *host, size_t hostlen, int *port);
/** POST /api/nodes/{id}/heartbeat. body: {status, model_loaded, current_concurrent, queue_size, cpu_percent,
 * memory_percent, ...}: any field may be absent. */
th_reg_rc th_registry_heartbeat(th_registry *r, const char *id, const json_t *body, uint64_t now, char *err,
                                size_t errlen);
th_reg_rc th_registry_remove(th_registry *r, const char *id);
/** Sets the node's status as a command changed it (activate -> online, standby, stop -> stopping). A
 * status given without model_loaded (here, at registration or in a heartbeat) also sets model_loaded: a
 * routable status means loaded, any other not (seed-2 heartbeats carry no model_loaded). */
th_reg_rc th_registry_set_status(th_registry *r, const char *id, const char *status);

/** The node's URL (for commands), or NULL. */
const char *th_registry_url(const th_registry *r, const char *id);
/** One node as JSON (new reference), or NULL when unknown. */
json_t *th_registry_node_json(const th_registry *r, const char *id, uint64_t now);
/** {nodes:[...], count}: engine and status filter when non-NULL and non-empty ("offline" matches offline
 * nodes). */
json_t *th_registry_list_json(const th_registry *r, const char *engine, const char *status, uint64_t now);
/** Counts for /health and /api/status: every node, and those taking traffic, of that engine (NULL or ""
 * = any). */
void th_registry_counts(const th_registry *r, const char *engine, size_t *total, size_t *online);

/** {engine: {nodes, online, in_flight}} over every node (new reference). */
json_t *th_registry_engines_json(const th_registry *r);

/** Marks silent nodes offline and removes long-offline ones. Called every second by the hub. */
void th_registry_sweep(th_registry *r, uint64_t now);

/** Picks an online node of that engine (NULL or "" = any) with room (in-flight < capacity), counts one
 * request in flight on it and holds it; NULL when there is none. */
th_node *th_registry_pick(th_registry *r, const char *engine, th_node_pick how, uint64_t now);
/** The same among the nodes speaking proto (-1: any); with voice_id (and its sha256) set, the nodes that
 * hold that library voice go first, then the others (which get it pushed before they speak it). */
th_node *th_registry_pick_for(th_registry *r, const char *engine, int proto, const char *voice_id,
                              const char *sha256, th_node_pick how, uint64_t now);
/** Ends what th_registry_pick began. ok: the node answered; a failure counts against the node and puts it
 * last in line for a while (1 s, doubling per failure in a row, at most 30 s; a success ends it). */
void th_registry_release(th_registry *r, th_node *n, bool ok, uint64_t now);
const char *th_node_id(const th_node *n);
const char *th_node_url(const th_node *n);
th_node_proto th_node_protocol(const th_node *n);
/** "ttshub" | "seed2" */
const char *th_node_proto_name(th_node_proto p);
/** "ttshub" | "seed2" -> *p; -1 when unknown. */
int th_node_proto_parse(const char *s, th_node_proto *p);

/* ---- library voices held by nodes (pushed by the hub; cluster/nodevoice.h) ---- */

/** Does the node at url (any node with that URL) hold library voice id with that sha256? */
bool th_registry_voice_held(const th_registry *r, const char *url, const char *id, const char *sha256);
/** Records that the nodes at url hold (held) or lack the voice; url NULL: every node (a deleted voice). A
 * node holds at most max_node_voices: the oldest record goes first. */
void th_registry_voice_set(th_registry *r, const char *url, const char *id, const char *sha256, bool held);
/** Calls fn for each routable node of that engine ("" or NULL: any) speaking proto (-1: any) that does not
 * hold the voice. */
void th_registry_each_lacking(const th_registry *r, const char *engine, int proto, const char *id,
                              const char *sha256, uint64_t now,
                              void (*fn)(void *ud, const char *node_id, const char *url), void *ud);
/** Whether node id takes traffic now (alive, loaded, routable status). */
bool th_registry_node_ready(const th_registry *r, const char *id, uint64_t now);
/** The node's engine and protocol (false when unknown). */
bool th_registry_node_kind(const th_registry *r, const char *id, char engine[TH_NODE_ENGINE_MAX + 1],
                           th_node_proto *proto);

/* ---- sharing between hubs (cluster/regsync.h keeps these records in Redis) ---- */

/** The node as a record other hubs can apply (new reference), or NULL when unknown. Times in it are wall
 * clock: last_seen_ms, updated_ms (the last change made here), registered_ms. */
json_t *th_registry_record(const th_registry *r, const char *id, uint64_t now, uint64_t now_wall);
/** Takes a record written by any hub: creates the node or updates it when the record is at least as new as
 * what is known here (a heartbeat seen here later is kept). Events fire as for local changes. */
void th_registry_apply(th_registry *r, const json_t *rec, uint64_t now, uint64_t now_wall);
/** Removes the nodes that are not in ids (removed through another hub), except those changed here at or
 * after since (mono ms: changes the shared list cannot have seen yet). */
void th_registry_retain(th_registry *r, const char *const *ids, size_t n, uint64_t since);

/** "round_robin" | "least_load" | "random" -> how; -1 when unknown. */
int th_node_pick_parse(const char *s, th_node_pick *how);

#endif
