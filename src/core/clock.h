/* clock: monotonic and wall time. */
#ifndef TH_CORE_CLOCK_H
#define TH_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

uint64_t th_mono_ms(void);
uint64_t th_mono_us(void);
uint64_t th_wall_ms(void);
/** RFC 3339 UTC with milliseconds, e.g. 2026-11-22T04:19:36.123Z. out must hold 32 bytes. */
void th_rfc3339(uint64_t wall_ms, char *out, size_t outlen);
/** IMF-fixdate for HTTP Date headers. out must hold 32 bytes. */
void th_http_date(uint64_t wall_ms, char *out, size_t outlen);

#endif
