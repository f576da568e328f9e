/* fuzz_iprate: the per-IP table (limits per client address, IPv6 per /64) under floods of addresses.
 * The input is a list of 18-byte operations: op, cap, then 16 address bytes (IPv4-mapped when op bit 2
 * is set). Ops: hit (requests per minute), acquire, release of an earlier acquire, clock step. Checks: no
 * address holds more than its cap, every acquire is given back exactly once, addresses of one /64 share
 * their count, the table stays within its slots. */
#include "core/iprate.h"
#include "core/netacl.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HELD_MAX 256

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    th_iprate *t = th_iprate_new(64);
    if (t == NULL) return 0;
    char held[HELD_MAX][64];
    size_t nheld = 0;
    uint64_t now = 1000;
    for (size_t off = 0; off + 18 <= size; off += 18) {
        uint8_t op = data[off], cap = (uint8_t)(data[off + 1] % 8);
        uint8_t a[16];
        memcpy(a, data + off + 2, 16);
        if (op & 4) {
            memset(a, 0, 10);
            a[10] = a[11] = 0xff;
        }
        char ip[64];
        if (inet_ntop(AF_INET6, a, ip, sizeof ip) == NULL) continue;
        if (op & 4) inet_ntop(AF_INET, a + 12, ip, sizeof ip);
        switch (op & 3) {
        case 0:
            th_iprate_hit(t, ip, now, cap);
            break;
        case 1: {
            int got = th_iprate_acquire(t, ip, now, cap);
            if (got == 1) {
                if (nheld == HELD_MAX) {
                    th_iprate_release(t, ip);
                } else {
                    memcpy(held[nheld++], ip, sizeof ip);
                }
            }
            if (got == 1 && th_iprate_open(t, ip) > cap) abort(); /* a slot is never taken past the cap */
            if (got == 0 && th_iprate_open(t, ip) < cap) abort(); /* nor refused below it */
            /* another address of the same /64 sees the same count */
            static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
            if (memcmp(a, mapped, 12) != 0) { /* IPv6 proper (a mapped IPv4 counts as itself) */
                uint8_t b[16];
                memcpy(b, a, 16);
                b[15] ^= 1;
                char ip2[64];
                inet_ntop(AF_INET6, b, ip2, sizeof ip2);
                if (th_iprate_open(t, ip2) != th_iprate_open(t, ip)) abort();
            }
            break;
        }
        case 2:
            if (nheld > 0) {
                size_t k = data[off + 1] % nheld;
                th_iprate_release(t, held[k]);
                memcpy(held[k], held[--nheld], sizeof held[k]);
            }
            break;
        default:
            now += (uint64_t)data[off + 1] * 1000;
            break;
        }
        if (th_iprate_entries(t) > 64) abort();
    }
    while (nheld > 0)
        th_iprate_release(t, held[--nheld]);
    th_iprate_free(t);
    return 0;
}
