/* Drives the request-parsing layer (http/parser.h) with small limits, without sockets: the input is
 * fed in pieces whose sizes come from its first byte, and each complete message is walked (headers,
 * path, query, body) as the server would, then the parser moves to the next pipelined message. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "http/parser.h"

static size_t limit_cb(void *ud)
{
    return 256;
}

static int head_cb(void *ud)
{
    th_http_parser *p = ud;
    /* read everything the server reads at this point */
    const th_http_msg *m = &p->msg;
    size_t sum = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        sum += strlen((const char *)m->head.data + m->hdrs[i].name);
        sum += strlen((const char *)m->head.data + m->hdrs[i].value);
    }
    sum += strlen((const char *)m->head.data + m->path) + strlen((const char *)m->head.data + m->query);
    return sum == (size_t)-1 ? 400 : 0;
}

static const th_http_parser_cbs cbs = {NULL, limit_cb, head_cb};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t step = (size_t)(data[0] % 64) + 1;
    data++;
    size--;
    th_http_parser p;
    th_http_parser_init(&p, 512, &cbs, &p);
    p.cbs = &cbs;
    p.ud = &p;
    size_t off = 0;
    int messages = 0;
    while (off < size && messages < 64) {
        size_t n = size - off < step ? size - off : step;
        int st = 0;
        size_t used = th_http_parser_feed(&p, (const char *)data + off, n, &st);
        if (st != 0) {
            if (st < 400 || st > 599) __builtin_trap();
            break;
        }
        off += used;
        if (p.msg.complete) {
            messages++;
            if (!p.msg.head_done) __builtin_trap();
            if (p.msg.body.len > 256) __builtin_trap();
            (void)th_http_msg_header(&p.msg, "Host");
            th_http_parser_next(&p);
            continue;
        }
        if (used < n && !p.hp.upgrade) __builtin_trap(); /* stops only at a message end or an error */
        if (used < n) break;
    }
    th_http_parser_free(&p);
    return 0;
}
