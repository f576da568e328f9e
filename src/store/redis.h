/* redis: a small pool of hiredis async connections on the hub's uv loop, with timeouts.
 *
 * Two lanes share the pool. The policy lane (TH_REDIS_LANE_POLICY, a few
 * connections) carries the small, latency-bound calls: limit checks, quota
 * reservations, small cache answers, the registry. The bulk lane (one
 * connection of its own) carries large values (cached audio), so a
 * megabyte on the wire never sits in front of a limit check. Each
 * connection pipelines (every command sent in one loop turn leaves in one
 * write) and holds at most max_inflight unanswered commands; past that a
 * command fails at once with TH_REDIS_BUSY. A lane picks its first connected
 * connection that has fewer than 64 commands in flight (the first one
 * fills before the next is used, so batches stay large), so commands sent
 * with th_redis_cmd_lane / th_redis_eval_lane are not ordered among
 * themselves. th_redis_cmd and th_redis_eval keep their order: they all go
 * to the first connection of the policy lane.
 *
 * hiredis 0.14's async API has no timeouts, so every connect and every
 * command arms a uv timer; a command that times out gets its callback with
 * TH_REDIS_TIMEOUT (and the late reply is ignored). The connection
 * reconnects by itself with exponential backoff (100 ms .. 5 s) after any
 * error; while it is down, commands fail at once with TH_REDIS_DOWN, so
 * callers can fail open or closed as configured. Loop thread only. */
#ifndef TH_STORE_REDIS_H
#define TH_STORE_REDIS_H

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
    TH_REDIS_BUSY,    /* every connection of the lane has max_inflight commands in flight */
} th_redis_status;

typedef enum {
    TH_REDIS_LANE_POLICY = 0, /* small, latency-bound commands */
    TH_REDIS_LANE_BULK = 1,   /* large values (cached audio) */
} th_redis_lane;
#define TH_REDIS_LANES 2

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

/* Added: the pool. */

typedef struct th_redis_pool_conf {
    int policy_conns;      /* connections of the policy lane (1..8); the bulk lane has one */
    uint32_t max_inflight; /* unanswered commands per connection before TH_REDIS_BUSY */
} th_redis_pool_conf;
#define TH_REDIS_POOL_DEFAULT 2
#define TH_REDIS_INFLIGHT_DEFAULT 1024

/** th_redis_new with the pool's shape (pc NULL = the defaults). */
th_redis *th_redis_new_pool(uv_loop_t *loop, const char *url, uint64_t timeout_ms,
                            const th_redis_pool_conf *pc, th_log *log, char *err, size_t errlen);
/** th_redis_cmd / th_redis_eval on a chosen lane. */
int th_redis_cmd_lane(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, int argc, const char **argv,
                      const size_t *argvlen);
/** th_redis_cmd_lane with the command already in RESP form ("*N\r\n" then "$len\r\n<bytes>\r\n" per
 * argument): a large value is then copied once (into the connection's buffer) instead of three times. */
int th_redis_cmd_lane_resp(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *resp,
                           size_t len);
int th_redis_eval_lane(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *script,
                       int nkeys, int argc, const char **argv, const size_t *argvlen);

/** th_redis_eval_lane / th_redis_cmd_lane_resp for a command whose answer nothing waits for (a settle, a
 * cache store; the callback still runs). While only such commands are in flight on a connection, its socket
 * is not read: their replies are read with the next awaited reply, or after at most 20 ms (a quarter of the
 * timeout when that is shorter), so the loop does not wake up for them. Their latency in the histogram
 * includes that wait. */
int th_redis_eval_lane_quiet(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *script,
                             int nkeys, int argc, const char **argv, const size_t *argvlen);
int th_redis_cmd_lane_resp_quiet(th_redis *r, th_redis_lane lane, th_redis_cb cb, void *ud, const char *resp,
                                 size_t len);

#define TH_REDIS_LAT_BUCKETS 12
/** Upper bounds (seconds) of the latency histogram buckets. */
extern const double th_redis_lat_bounds[TH_REDIS_LAT_BUCKETS];
typedef struct th_redis_lane_stats {
    uint32_t conns, connected;
    uint64_t inflight;                            /* commands sent and not yet answered */
    uint64_t commands;                            /* sent */
    uint64_t replies;                             /* answered by the server (errors included) */
    uint64_t failures;                            /* sent, then answered DOWN or TIMEOUT */
    uint64_t busy;                                /* refused at once with TH_REDIS_BUSY */
    uint64_t lat_count[TH_REDIS_LAT_BUCKETS + 1]; /* per bucket (not cumulative); last = +Inf */
    double lat_sum_s;
} th_redis_lane_stats;
/** Writes what is queued now instead of at the end of the loop turn (commands of a turn otherwise leave
 * together in one write per connection, after the turn's I/O callbacks). */
void th_redis_flush(th_redis *r);
/** The loop the pool runs on. */
uv_loop_t *th_redis_loop(const th_redis *r);

/** Parses RESP bytes as a connection reads them (hiredis' reader, with a connection's reply objects) and
 * gives each complete reply to cb (TH_REDIS_OK, or TH_REDIS_ERROR for an error reply) as its view; fed
 * chunk bytes at a time (0: all at once). Returns the number of replies, or -1 when the bytes are not RESP
 * (a connection drops the server then) or memory ran out. For the fuzz target and the tests. */
int th_redis_parse(const char *buf, size_t len, size_t chunk, th_redis_cb cb, void *ud);

/** Sums of a lane's connections, for /metrics. */
void th_redis_lane_get_stats(const th_redis *r, th_redis_lane lane, th_redis_lane_stats *out);
/** Text for /health: "connected", "connecting", "down: <reason>". */
const char *th_redis_state(const th_redis *r);
/** Fails pending commands with TH_REDIS_DOWN, closes, frees when the handles are closed (the loop must
 * run once more). */
void th_redis_free(th_redis *r);

#endif
