/* memio: an FFmpeg read context over bytes in memory. See memio.h. */
#include "audio/memio.h"

#include <stdio.h>
#include <string.h>

#include <libavutil/error.h>
#include <libavutil/mem.h>

static int memio_read(void *opaque, uint8_t *buf, int size)
{
    th_memio *m = opaque;
    size_t left = m->len - m->pos;
    if (left == 0) return AVERROR_EOF;
    size_t n = (size_t)size < left ? (size_t)size : left;
    memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    return (int)n;
}

static int64_t memio_seek(void *opaque, int64_t off, int whence)
{
    th_memio *m = opaque;
    int64_t base;
    switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE:
        return (int64_t)m->len;
    case SEEK_SET:
        base = 0;
        break;
    case SEEK_CUR:
        base = (int64_t)m->pos;
        break;
    case SEEK_END:
        base = (int64_t)m->len;
        break;
    default:
        return AVERROR(EINVAL);
    }
    if (off < -base || base + off > (int64_t)m->len) return AVERROR(EINVAL);
    m->pos = (size_t)(base + off);
    return (int64_t)m->pos;
}

AVIOContext *th_memio_open(th_memio *m, const uint8_t *p, size_t len, int bufsize)
{
    m->p = p;
    m->len = len;
    m->pos = 0;
    uint8_t *iobuf = av_malloc((size_t)bufsize);
    if (iobuf == NULL) return NULL;
    AVIOContext *io = avio_alloc_context(iobuf, bufsize, 0, m, memio_read, NULL, memio_seek);
    if (io == NULL) av_free(iobuf);
    return io;
}

void th_memio_close(AVIOContext **io)
{
    if (*io == NULL) return;
    av_freep(&(*io)->buffer);
    avio_context_free(io);
}
