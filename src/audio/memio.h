/* memio: an FFmpeg read context over bytes in memory (seekable), for demuxing a buffered file.
 *
 * The bytes are borrowed: they must outlive the context. th_memio_open fills *m and returns a context
 * (NULL when out of memory); th_memio_close frees the context and its buffer and sets *io to NULL. */
#ifndef TH_AUDIO_MEMIO_H
#define TH_AUDIO_MEMIO_H

#include <stddef.h>
#include <stdint.h>

#include <libavformat/avio.h>

typedef struct th_memio {
    const uint8_t *p;
    size_t len, pos;
} th_memio;

AVIOContext *th_memio_open(th_memio *m, const uint8_t *p, size_t len, int bufsize);
void th_memio_close(AVIOContext **io);

#endif
