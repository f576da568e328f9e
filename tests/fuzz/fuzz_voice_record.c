/* fuzz_voice_record: voice-library metadata records (the fs backend's {id}.json, the redis backend's
 * vmeta values) parsed from arbitrary bytes. A record that parses must dump and parse back to the same
 * fields, its id must be a valid id (it names files) and its sha256 64 lowercase hex digits. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "voice/library.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1); /* exact size: reads past len are caught */
    if (copy == NULL) return 0;
    if (size) memcpy(copy, data, size);
    th_vlib_meta m, back;
    char err[200];
    if (th_vlib_meta_parse(copy, size, &m, err, sizeof err) == 0) {
        if (!th_vlib_id_ok(m.id, strlen(m.id))) abort();
        if (strlen(m.sha256) != 64 || strspn(m.sha256, "0123456789abcdef") != 64) abort();
        if (m.name == NULL || m.tenant == NULL || m.text == NULL || m.engine == NULL || m.language == NULL)
            abort();
        char *rec = th_vlib_meta_dump(&m);
        if (rec != NULL) {
            if (th_vlib_meta_parse(rec, strlen(rec), &back, err, sizeof err) != 0) abort();
            if (strcmp(back.id, m.id) != 0 || strcmp(back.sha256, m.sha256) != 0 ||
                strcmp(back.text, m.text) != 0 || strcmp(back.tenant, m.tenant) != 0 ||
                back.wav_len != m.wav_len || back.rate != m.rate || back.created_ms != m.created_ms)
                abort();
            th_vlib_meta_free(&back);
            free(rec);
        }
        th_vlib_meta_free(&m);
    }
    free(copy);
    return 0;
}
