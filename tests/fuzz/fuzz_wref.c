/* fuzz_wref: what a worker node checks in a reference the gateway sends: base64 decoding (bounded) and the
 * WAV check (mono s16 PCM, fmt and data chunks), on arbitrary bytes. Never a crash, a leak or a read past the
 * input; a WAV that passes has a rate in range and a positive duration. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/refs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1); /* exact size: reads past the end are caught */
    if (copy == NULL) return 0;
    if (size) memcpy(copy, data, size);
    int rate = 0;
    double secs = 0;
    char err[160];
    if (th_wref_check_wav(copy, size, &rate, &secs, err, sizeof err) == 0 &&
        (rate < 8000 || rate > 192000 || !(secs > 0)))
        abort();
    uint8_t *out = NULL;
    size_t n = 0;
    if (th_wref_base64((const char *)copy, size, 1 << 20, &out, &n) == 0) {
        if (n > size) abort();
        if (th_wref_check_wav(out, n, &rate, &secs, err, sizeof err) == 0 && !(secs > 0)) abort();
        free(out);
    }
    char id[65];
    char *s = malloc(size + 1);
    if (s != NULL) {
        memcpy(s, copy, size);
        s[size] = 0;
        if (th_wref_id(s, s, s, id) == 0 && (id[0] != 'r' || strlen(id) != 64)) abort();
        free(s);
    }
    free(copy);
    return 0;
}
