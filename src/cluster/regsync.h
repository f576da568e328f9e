/* regsync: the worker registry shared by every hub on one Redis (registry.backend: redis).
 *
 * Each change made through this hub (register, heartbeat, command, delete) is written at once:
 *   SET {prefix}node:{id} <record JSON> PX remove_after + 1 s, SADD {prefix}nodes {id}
 *   (delete: DEL + SREM).
 * Once a second the hub reads the whole list back (SMEMBERS, then one MGET) and applies it to its own
 * registry (th_registry_apply / th_registry_retain), so a node registered with any hub takes traffic from
 * every hub within about a second, and a heartbeat to any hub keeps it alive everywhere. Records that
 * expired are dropped from the index set. In-flight counts stay each hub's own. While Redis is down each
 * hub keeps routing on what it knows and catches up when Redis is back. Loop thread only. */
#ifndef TH_HUB_REGSYNC_H
#define TH_HUB_REGSYNC_H

#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "store/redis.h"
#include "cluster/registry.h"

typedef struct th_regsync th_regsync;

/** prefix: redis.prefix. remove_after_ms: the records' lifetime after their last change. */
th_regsync *th_regsync_new(uv_loop_t *loop, th_registry *reg, th_redis *redis, const char *prefix,
                           uint64_t remove_after_ms, th_log *log);
/** Writes the node's current record (after a change made here). */
void th_regsync_publish(th_regsync *s, const char *id);
/** Removes the node from the shared list (after a delete made here). */
void th_regsync_unpublish(th_regsync *s, const char *id);
/** Stops the timer and frees once pending replies are dropped (the redis connection must outlive it or be
 * freed after it: its pending callbacks are answered with TH_REDIS_DOWN). */
void th_regsync_free(th_regsync *s);

#endif
