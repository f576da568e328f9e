/* redis: one hiredis async connection on the hub's uv loop, with timeouts.
 *
 * hiredis 0.14's async API has no timeouts, so every connect and every
 * command arms a uv timer; a command that times out gets its callback with
 * TH_REDIS_TIMEOUT (and the late reply is ignored). The connection
 * reconnects by itself with exponential backoff (100 ms .. 5 s) after any
 * error; while it is down, commands fail at once with TH_REDIS_DOWN, so
 * callers can fail open or closed as configured. Loop thread only. */
#ifndef TH_HUB_REDIS_H
#define TH_HUB_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"

typedef struct th_redis th_redis;

typedef enum {
    TH_REDIS_OK = 0,
    TH_REDIS_DOWN,    /* not connected (reconnecting) */
    TH_REDIS_TIMEOUT, /* no reply in time */
    TH_REDIS_ERROR,   /* the server answered an error (reply->str says which) */
} th_redis_status;

/** A reply, valid only during the callback. A flattened view of hiredis' redisReply. */
typedef struct th_redis_reply {
    int type; /* REDIS_REPLY_* from hiredis */
    long long integer;
    const char *str; /* STRING, STATUS, ERROR */
    size_t len;
    size_t elements;
    const struct th_redis_reply *element; /* ARRAY: elements entries */
} th_redis_reply;

typedef void (*th_redis_cb)(void *ud, th_redis_status st, const th_redis_reply *reply);

/** url: redis://[:password@]host:port/db. Connects in the background. NULL on a bad URL (err set). */
th_redis *th_redis_new(uv_loop_t *loop, const char *url, uint64_t timeout_ms, th_log *log, char *err,
                       size_t errlen);
/** Sends a command given as argv (binary-safe). The callback runs exactly once (possibly before this
 * returns, with TH_REDIS_DOWN). Returns 0, or -1 on ENOMEM (no callback). */
int th_redis_cmd(th_redis *r, th_redis_cb cb, void *ud, int argc, const char **argv, const size_t *argvlen);
/** EVALSHA with a fallback to EVAL on NOSCRIPT; script is loaded once per connection. */
int th_redis_eval(th_redis *r, th_redis_cb cb, void *ud, const char *script, int nkeys, int argc,
                  const char **argv, const size_t *argvlen);
bool th_redis_connected(const th_redis *r);
/** Text for /health: "connected", "connecting", "down: <reason>". */
const char *th_redis_state(const th_redis *r);
/** Fails pending commands with TH_REDIS_DOWN, closes, frees when the handles are closed (the loop must
 * run once more). */
void th_redis_free(th_redis *r);

#endif
