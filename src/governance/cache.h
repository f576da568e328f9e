/* cache: synthesised audio by request, with coalescing of identical requests.
 *
 * The key is sha256 over the normalised (provider route, engine voice,
 * format, sample rate, speed, prompt, input). Memory backend: a byte-capped
 * LRU with TTL. Redis backend: shared entries with TTL (SET PX) and a byte
 * cap per entry, plus the memory LRU in front.
 *
 * Coalescing: the first request for a key that is neither cached nor in
 * flight becomes the leader (a th_cache_flight); identical requests that
 * arrive while it runs join the flight as followers and get the same bytes
 * as they stream (everything produced so far, then each new chunk). Only a
 * complete, successful flight is stored; a failed or cut one is not, and
 * its followers get the error. Loop thread only. */
#ifndef TH_HUB_CACHE_H
#define TH_HUB_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"
#include "config/config.h"
#include "store/redis.h"

typedef struct th_cache th_cache;
typedef struct th_cache_flight th_cache_flight;
typedef struct th_cache_follower th_cache_follower;

#define TH_CACHE_KEY_LEN 64 /* hex sha256 */

typedef struct th_cache_key_parts {
    const char *route; /* provider route: the chosen provider name(s) */
    const char *voice; /* engine voice */
    const char *format;
    int sample_rate;
    double speed;
    const char *prompt;
    const char *input;
    size_t input_len;
} th_cache_key_parts;

/** Normalises (trims input, collapses runs of whitespace, NFC is not applied) and hashes. */
void th_cache_key(const th_cache_key_parts *p, char out[TH_CACHE_KEY_LEN + 1]);

typedef struct th_cache_entry {
    const uint8_t *data; /* valid during the callback only */
    size_t len;
    const char *content_type;
    const char *provider;
} th_cache_entry;

typedef enum {
    TH_CACHE_HIT = 0, /* entry is set */
    TH_CACHE_LEAD,    /* miss: the caller synthesises and feeds the flight */
    TH_CACHE_JOINED,  /* an identical request is in flight: follower callbacks will deliver */
} th_cache_outcome;

typedef struct th_cache_follower_cb {
    void (*on_data)(void *ud, const uint8_t *data, size_t len);
    void (*on_done)(void *ud, const char *content_type, const char *provider);
    void (*on_error)(void *ud, int status, const char *message);
    void *ud;
} th_cache_follower_cb;

typedef struct th_cache_lookup {
    th_cache_outcome outcome;
    th_cache_entry entry;        /* HIT */
    th_cache_flight *flight;     /* LEAD: feed it (NULL only on ENOMEM; th_cache_flight_* accept NULL) */
    th_cache_follower *follower; /* JOINED: cancel with th_cache_unfollow if the client leaves */
} th_cache_lookup;

typedef void (*th_cache_cb)(void *ud, const th_cache_lookup *res);

th_cache *th_cache_new(uv_loop_t *loop, const th_config *cfg, th_redis *redis, th_log *log);
void th_cache_free(th_cache *c);
/** Looks up key; cb exactly once (synchronously for memory, later when Redis is asked). fcb is used
 * only when the outcome is JOINED. */
void th_cache_get(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_cache_cb cb, void *ud);
/** Leader side: output bytes as they are produced (copied, fanned out to followers). */
void th_cache_flight_data(th_cache_flight *f, const uint8_t *data, size_t len);
/** Leader succeeded: stores the entry (if it fits) and finishes the followers. Frees the flight. */
void th_cache_flight_done(th_cache_flight *f, const char *content_type, const char *provider);
/** Leader failed or was cut: followers get the error; nothing is stored. Frees the flight. */
void th_cache_flight_fail(th_cache_flight *f, int status, const char *message);
/** A follower's client went away: no more callbacks to it. Safe inside any follower callback and inside
 * the get callback; the handle is invalid once its on_done / on_error has returned. */
void th_cache_unfollow(th_cache_follower *fl);

typedef struct th_cache_stats {
    uint64_t hits, misses, coalesced, stores, evictions;
    uint64_t bytes, entries;
} th_cache_stats;
void th_cache_get_stats(const th_cache *c, th_cache_stats *out);

/* Added. */

/** The largest entry the Redis backend stores (SET PX); larger ones stay per hub (if they fit there). */
#define TH_CACHE_REDIS_MAX_ENTRY (8u << 20)
/** Replaces the clock used for TTLs (default th_mono_ms) -- tests. */
void th_cache_set_clock(th_cache *c, uint64_t (*now)(void *ud), void *ud);

/* Added: the cache's part of one combined Redis script (governance/policy.c). */

/** Values up to this size come back inside the admission script; larger ones are fetched on the bulk lane
 * (redis.h). */
#define TH_CACHE_INLINE_MAX (32u << 10)
/** Where the Redis backend's stores go instead of straight to the bulk lane: sink gets each SET, as RESP
 * valid during the call, with the callback its answer needs, and returns true when it has taken a copy
 * (false: the cache sends it itself). The policy uses this to send stores with its loop turn's script
 * (policy.c). sink NULL: back to sending them directly. */
typedef bool (*th_cache_store_sink)(void *ud, const char *resp, size_t len, th_redis_cb cb, void *cbud);
void th_cache_set_store_sink(th_cache *c, th_cache_store_sink sink, void *ud);
/** Back to sending stores directly, if the sink is still ud's (one set since by another owner stays). */
void th_cache_unset_store_sink(th_cache *c, void *ud);
/** True when th_cache_get would have to ask Redis: Redis backend, enabled, key set, not in the memory
 * LRU, and (joinable: fcb would be given) no flight to join. */
bool th_cache_remote_wanted(th_cache *c, const char *key, bool joinable);
/** {prefix}cache:{key}, malloc'd (NULL on ENOMEM). */
char *th_cache_redis_key(const th_cache *c, const char *key);
/** The same key written into out when it fits in cap bytes with its NUL. Returns its length either way. */
size_t th_cache_redis_key_into(const th_cache *c, const char *key, char *out, size_t cap);
/** Finishes a get whose Redis part was asked by the admission script. rep: {size, value} (a hit, or a
 * miss when size is 0), {size} (the value is larger than TH_CACHE_INLINE_MAX: it is fetched now on the
 * bulk lane), or st != OK (a miss). cb runs exactly once, as for th_cache_get. */
void th_cache_resolve(th_cache *c, const char *key, const th_cache_follower_cb *fcb, th_redis_status st,
                      const th_redis_reply *rep, th_cache_cb cb, void *ud);

#endif
