/* fuzz_multipart: multipart/form-data. The first line of the input (when it is short) is the
 * Content-Type parameter list after "multipart/form-data; ", e.g. "boundary=abc"; otherwise the
 * boundary is "b" and the whole input is the body. */
#include "http/body.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char ct[160] = "multipart/form-data; boundary=b";
    const uint8_t *nl = memchr(data, '\n', size < 100 ? size : 100);
    if (nl != NULL && memchr(data, '\0', (size_t)(nl - data)) == NULL) {
        int len = (int)(nl - data);
        snprintf(ct, sizeof ct, "multipart/form-data; %.*s", len, (const char *)data);
        size -= (size_t)(nl - data) + 1;
        data = nl + 1;
    }
    /* an exact-size copy, so that a read past len is caught even at the end of the input */
    uint8_t *body = malloc(size ? size : 1);
    if (body == NULL) return 0;
    if (size) memcpy(body, data, size);

    char err[128];
    th_form f;
    th_form_init(&f);
    f.max_fields = 32;
    int rc = th_body_parse(&f, ct, body, size, err, sizeof err);
    if (rc != TH_BODY_OK && rc != TH_BODY_MALFORMED) abort();
    size_t total = 0;
    for (size_t i = 0; i < f.n; i++) {
        const th_field *fl = &f.fields[i];
        if (fl->name == NULL || fl->value == NULL || fl->value[fl->value_len] != '\0') abort();
        total += fl->value_len;
    }
    if (total > size) abort();
    th_form_free(&f);
    free(body);
    return 0;
}
