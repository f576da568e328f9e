/* fuzz_wav: th_wav_reader fed arbitrary bytes in random pieces, and (small inputs) th_audio_conv with
 * in.fmt = NONE -> pcm, also in random pieces. The first byte seeds the split points and picks the
 * PCM fallback spec. Neither may crash or leak; the reader's output must be whole frames. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "audio/conv.h"
#include "audio/wav.h"
#include "core/buf.h"

static uint32_t next(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static size_t piece(uint32_t *s, size_t left)
{
    size_t k = 1 + next(s) % 97;
    if (next(s) % 8 == 0) k = 1 + next(s) % 4096;
    return k < left ? k : left;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    uint8_t *buf = malloc(size ? size : 1); /* exact size: reads past len are caught */
    if (buf == NULL) return 0;
    if (size) memcpy(buf, data, size);

    uint32_t seed = ctl * 2654435761u + 1;
    th_wav_reader *r = th_wav_reader_new(ctl & 1 ? 512 : 0);
    if (r == NULL) goto out;
    char err[160];
    for (size_t pos = 0; pos < size;) {
        size_t k = piece(&seed, size - pos);
        const uint8_t *pcm;
        size_t pcm_len;
        int rc = th_wav_reader_push(r, buf + pos, k, &pcm, &pcm_len, err, sizeof err);
        pos += k;
        if (rc == TH_WAV_ERROR) break;
        if (rc == TH_WAV_NEED_MORE && pcm_len != 0) abort();
        if (rc == TH_WAV_HAVE_FORMAT) {
            const th_audio_spec *sp = th_wav_reader_spec(r);
            if (sp == NULL || sp->channels < 1 || sp->sample_rate <= 0) abort();
            size_t frame = (size_t)th_sample_bytes(sp->sample) * (size_t)sp->channels;
            if (frame == 0 || pcm_len % frame != 0) abort();
            if (pcm_len > 0) {
                volatile uint8_t sink = pcm[0] ^ pcm[pcm_len - 1]; /* ASan checks the range */
                (void)sink;
            }
        }
    }
    th_wav_reader_free(r);

    if (size <= 4096) {
        static const int rates[4] = {0, 8000, 22050, 44100};
        th_audio_spec in = {.fmt = TH_FMT_NONE,
                            .sample_rate = rates[(ctl >> 1) & 3],
                            .channels = 1 + ((ctl >> 3) & 1),
                            .sample = (th_sample)((ctl >> 4) % 5)};
        th_audio_target t = {.fmt = TH_FMT_PCM, .tempo = (ctl & 0x80) ? 1.5 : 1.0};
        th_buf out;
        th_buf_init(&out, 1 << 22);
        th_audio_conv *c = th_audio_conv_new(&in, &t, err, sizeof err);
        if (c == NULL) abort(); /* the target is valid */
        int rc = 0;
        for (size_t pos = 0; pos < size && rc == 0;) {
            size_t k = piece(&seed, size - pos);
            rc = th_audio_conv_push(c, buf + pos, k, &out, err, sizeof err);
            pos += k;
        }
        if (rc == 0) rc = th_audio_conv_finish(c, &out, err, sizeof err);
        if (rc == 0 && out.len % 2 != 0) abort();
        th_audio_conv_free(c);
        th_buf_free(&out);
    }
out:
    free(buf);
    return 0;
}
