/* fuzz_config: th_config_parse on arbitrary bytes. Every path must free everything (LSan), and a
 * config that loads must also dump to JSON. */
#include "config/config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    th_config_errors errs = {0};
    th_config *c = th_config_parse((const char *)data, size, &errs);
    if (c != NULL) {
        char *js = th_config_to_json(c);
        free(js);
        th_config_unref(th_config_ref(c));
        th_config_unref(c);
    }
    th_config_errors_free(&errs);
    return 0;
}
