/* fuzz_resp: the upstream response parser, fed the input whole and again split at a byte the input
 * picks; both ways must agree on the outcome and the body bytes. */
#include "http/resp.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct sink {
    th_buf body;
    int heads;
    int pause_every; /* on_body returns 1 on every k-th call */
    int calls;
} sink;

static int on_head(void *ud, int status, const th_client_header *h, size_t n)
{
    sink *s = ud;
    if (status < 200 || status > 999 || n > TH_RESP_MAX_HEADERS) abort();
    for (size_t i = 0; i < n; i++)
        if (h[i].name == NULL || h[i].value == NULL || h[i].name[0] == '\0') abort();
    s->heads++;
    return 0;
}

static int on_body(void *ud, const uint8_t *d, size_t n)
{
    sink *s = ud;
    if (n == 0) abort();
    th_buf_append(&s->body, d, n);
    return s->pause_every && ++s->calls % s->pause_every == 0 ? 1 : 0;
}

/* Feeds the pieces, resuming after pauses; returns the final rc (DONE/ERROR/MORE after EOF). */
static th_resp_rc run(const uint8_t *d, size_t n, size_t cut, sink *s, bool *keep)
{
    th_resp p;
    memset(&p, 0, sizeof p);
    th_resp_init(&p, false);
    th_client_header scratch[TH_RESP_MAX_HEADERS];
    th_resp_cb cb = {on_head, on_body};
    th_resp_rc rc = TH_RESP_MORE;
    const uint8_t *parts[2] = {d, d + cut};
    size_t lens[2] = {cut, n - cut};
    for (int k = 0; k < 2 && rc == TH_RESP_MORE; k++) {
        const uint8_t *q = parts[k];
        size_t left = lens[k];
        for (;;) {
            size_t used = 0;
            rc = th_resp_feed(&p, q, left, &used, &cb, s, scratch);
            if (used > left) abort();
            if (rc != TH_RESP_PAUSED) break;
            q += used;
            left -= used;
        }
    }
    if (rc == TH_RESP_MORE) rc = th_resp_eof(&p);
    *keep = th_resp_keep_alive(&p);
    if (rc == TH_RESP_ERROR && th_resp_error(&p) == NULL) abort();
    th_resp_free(&p);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sink a = {0}, b = {0};
    th_buf_init(&a.body, 0);
    th_buf_init(&b.body, 0);
    size_t cut = size ? (size_t)data[0] % (size + 1) : 0;
    b.pause_every = size ? 1 + data[size - 1] % 3 : 1;
    bool ka = false, kb = false;
    th_resp_rc ra = run(data, size, size, &a, &ka);
    th_resp_rc rb = run(data, size, cut, &b, &kb);
    if (ra != rb || ka != kb || a.heads != b.heads || a.body.len != b.body.len ||
        (a.body.len && memcmp(a.body.data, b.body.data, a.body.len) != 0))
        abort();
    th_buf_free(&a.body);
    th_buf_free(&b.body);
    return 0;
}
