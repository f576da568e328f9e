/* fuzz_form: application/x-www-form-urlencoded, th_url_decode and th_query_get. */
#include "http/body.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_form(const th_form *f)
{
    for (size_t i = 0; i < f->n; i++) {
        const th_field *fl = &f->fields[i];
        if (fl->name == NULL || fl->value == NULL || fl->value[fl->value_len] != '\0') abort();
        if (th_form_get(f, fl->name) == NULL) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128];
    th_form f;
    th_form_init(&f);
    f.max_fields = 64;
    int rc = th_form_parse_urlencoded(&f, (const char *)data, size, err, sizeof err);
    if (rc != TH_BODY_OK && rc != TH_BODY_MALFORMED) abort();
    check_form(&f);
    th_form_free(&f);

    char *out = malloc(size + 1);
    if (out == NULL) return 0;
    long n = th_url_decode((const char *)data, size, out, size & 1);
    if (n > (long)size || (n >= 0 && out[n] != '\0')) abort();

    /* th_query_get wants a C string: the input up to its first NUL, looking up the first key */
    memcpy(out, data, size);
    out[size] = '\0';
    const char *eq = strchr(out, '=');
    char key[32] = "input";
    if (eq != NULL && (size_t)(eq - out) < sizeof key) {
        size_t kn = (size_t)(eq - out);
        if (out[0] == '?') {
            memcpy(key, out + 1, kn - (kn > 0));
            key[kn - (kn > 0)] = '\0';
        } else {
            memcpy(key, out, kn);
            key[kn] = '\0';
        }
    }
    free(th_query_get(out, key));
    free(out);
    return 0;
}
