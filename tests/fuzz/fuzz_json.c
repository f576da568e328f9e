/* fuzz_json: th_json_parse_bounded, th_form_parse_json and Content-Type guessing. The first byte
 * picks the depth limit (0..63; 0 = the default). */
#include "http/body.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t depth = data[0] & 63;
    data++;
    size--;
    uint8_t *buf = malloc(size ? size : 1); /* exact size: reads past len are caught */
    if (buf == NULL) return 0;
    if (size) memcpy(buf, data, size);

    char err[160];
    json_t *j = th_json_parse_bounded(buf, size, depth, err, sizeof err);
    bool parsed = j != NULL;
    json_decref(j);

    th_form f;
    th_form_init(&f);
    f.max_fields = 64;
    int rc = th_form_parse_json(&f, buf, size, depth, err, sizeof err);
    if (rc != TH_BODY_OK && rc != TH_BODY_MALFORMED) abort();
    if (rc == TH_BODY_OK && !parsed) abort();
    for (size_t i = 0; i < f.n; i++) {
        const th_field *fl = &f.fields[i];
        if (fl->name == NULL || fl->value == NULL || fl->value[fl->value_len] != '\0') abort();
        if (fl->is_json && fl->is_null) abort();
        if (fl->is_json && fl->value_len > 0) {
            json_t *again =
                th_json_parse_bounded((const uint8_t *)fl->value, fl->value_len, 0, err, sizeof err);
            if (again == NULL && depth == 0) abort(); /* compact output of valid JSON reads back */
            json_decref(again);
        }
    }
    th_form_free(&f);

    th_form_init(&f);
    rc = th_body_parse(&f, NULL, buf, size, err, sizeof err);
    if (rc != TH_BODY_OK && rc != TH_BODY_MALFORMED) abort();
    th_form_free(&f);
    free(buf);
    return 0;
}
