/* uuid: random (v4) UUIDs and validation. */
#ifndef TH_CORE_UUID_H
#define TH_CORE_UUID_H

#include <stdbool.h>

#define TH_UUID_LEN 36
/** Writes a lower-case v4 UUID and a NUL into out[37]. */
void th_uuid_v4(char out[TH_UUID_LEN + 1]);
/** true for 8-4-4-4-12 hex, any version. */
bool th_uuid_valid(const char *s);

#endif
