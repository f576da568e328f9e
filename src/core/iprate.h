/* iprate: a bounded table of per-client-IP counters (IPv6 counted per /64, see th_net_ip_key).
 *
 * Each entry holds a requests-per-minute window and a count of things held open (connections, feed
 * clients). The table has a fixed number of slots chosen at creation; idle entries are swept out when it
 * fills, at most once a second. When it is full of busy entries a new address is let through uncounted
 * (the global caps still hold): a flood of distinct /64s must not lock every client out. Loop thread only. */
#ifndef TH_CORE_IPRATE_H
#define TH_CORE_IPRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct th_iprate th_iprate;

/** slots: table size (rounded up to a power of two, at least 64). NULL on ENOMEM. */
th_iprate *th_iprate_new(size_t slots);
void th_iprate_free(th_iprate *t);
/** One request from ip at now_ms: true when it is within rpm per minute (rpm 0: always true). */
bool th_iprate_hit(th_iprate *t, const char *ip, uint64_t now_ms, uint32_t rpm);
/** Takes one of ip's open slots: 1 when taken (give it back with th_iprate_release), 0 when ip already
 * holds cap, -1 when let through uncounted (cap 0, or the table is full): nothing to give back. */
int th_iprate_acquire(th_iprate *t, const char *ip, uint64_t now_ms, uint32_t cap);
/** Gives back a slot th_iprate_acquire took (returned 1). */
void th_iprate_release(th_iprate *t, const char *ip);
/** Entries in use, and the open count of ip (tests, /health). */
size_t th_iprate_entries(const th_iprate *t);
uint32_t th_iprate_open(const th_iprate *t, const char *ip);

#endif
