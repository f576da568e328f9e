/* fuzz_traceparent: th_trace_parse_parent on any header value. A context it accepts must format back to
 * a version-00 header that parses to the same context. */
#include "observability/trace.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *h = malloc(size + 1);
    if (h == NULL) return 0;
    memcpy(h, data, size);
    h[size] = 0;
    th_trace_ctx c, d;
    if (th_trace_parse_parent(h, &c)) {
        char out[TH_TRACEPARENT_LEN + 1];
        th_trace_format_parent(&c, out);
        if (!th_trace_parse_parent(out, &d) || memcmp(&c, &d, sizeof c) != 0) abort();
    }
    free(h);
    return 0;
}
