/* uuid: random (v4) UUIDs and validation. */
#ifndef TH_CORE_UUID_H
#define TH_CORE_UUID_H

#include <stdbool.h>
#include <stdint.h>

#define TH_UUID_LEN 36
/** Writes a lower-case v4 UUID and a NUL into out[37]. */
void th_uuid_v4(char out[TH_UUID_LEN + 1]);
/** A fast generator for request ids: xoshiro256** seeded once from getrandom. Unique, not secret;
 * the state belongs to its owner (one per loop), so there is no shared mutable state. */
typedef struct th_uuid_gen {
    uint64_t s[4];
} th_uuid_gen;
void th_uuid_gen_init(th_uuid_gen *g);
void th_uuid_gen_next(th_uuid_gen *g, char out[TH_UUID_LEN + 1]);

/** true for 8-4-4-4-12 hex, any version. */
bool th_uuid_valid(const char *s);

#endif
