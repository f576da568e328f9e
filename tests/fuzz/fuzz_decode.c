/* fuzz_decode: uploads decoded by th_audio_decode (FFmpeg from memory, fixed demuxers and decoders, no
 * protocols). Any bytes: no crash, no leak, no read past the input, output bounded by max_seconds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio/decode.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL) return 0;
    if (size) memcpy(copy, data, size);
    th_dec_opts o = {.out_rate = 24000, .max_seconds = 2};
    th_buf pcm;
    th_buf_init(&pcm, 0);
    char err[256];
    th_dec_rc rc = th_audio_decode(copy, size, &o, &pcm, err, sizeof err);
    if (rc == TH_DEC_OK && (pcm.len % 2 != 0 || pcm.len / 2 > (size_t)(2 * 24000))) abort();
    if (pcm.len / 2 > (size_t)(2 * 24000) + 96000) abort(); /* stopped near the limit */
    th_buf_free(&pcm);
    free(copy);
    return 0;
}
