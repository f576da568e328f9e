#include "providers/provider.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "providers/espeak.h"
#include "providers/upstream.h"

const char *th_perr_kind_name(th_perr_kind k)
{
    switch (k) {
    case TH_PERR_NONE:
        return "none";
    case TH_PERR_TIMEOUT:
        return "timeout";
    case TH_PERR_CONNECT:
        return "connect";
    case TH_PERR_STATUS:
        return "upstream_status";
    case TH_PERR_OVERLOADED:
        return "overloaded";
    case TH_PERR_PROTOCOL:
        return "protocol";
    case TH_PERR_CLIENT:
        return "client";
    case TH_PERR_CANCELLED:
        return "cancelled";
    case TH_PERR_INTERNAL:
        return "internal";
    }
    return "unknown";
}

void th_perr_set(th_perr *e, th_perr_kind kind, int status, const char *fmt, ...)
{
    e->kind = kind;
    e->status = status;
    e->retry_after_s = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

const th_provider_ops *th_provider_kind(const char *kind)
{
    if (kind == NULL) return NULL;
    if (strcmp(kind, th_espeak_ops.kind) == 0) return &th_espeak_ops;
    /* Every HTTP engine kind (openai_fm, openai, ..., nodes) runs through the one generic provider. */
    if (th_upstream_find(kind) != NULL) return &th_upstream_ops;
    return NULL;
}

bool th_voice_id_ok(const char *id)
{
    if (id == NULL) return false;
    size_t n = strlen(id);
    if (n == 0 || n > 64) return false;
    return strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") == n;
}

bool th_sha256_hex_ok(const char *s)
{
    return s != NULL && strlen(s) == 64 && strspn(s, "0123456789abcdef") == 64;
}

th_voice_ref *th_voice_ref_copy(const th_voice_ref *r, bool with_audio)
{
    const char *src[6] = {r->id, r->name, r->sha256, r->text, r->language, NULL};
    size_t lens[5], total = sizeof(th_voice_ref);
    for (int i = 0; i < 5; i++) {
        lens[i] = src[i] != NULL ? strlen(src[i]) : 0;
        total += lens[i] + 1;
    }
    size_t wl = with_audio && r->wav != NULL ? r->wav_len : 0;
    total += wl;
    th_voice_ref *c = malloc(total);
    if (c == NULL) return NULL;
    char *p = (char *)(c + 1);
    const char **dst[5] = {&c->id, &c->name, &c->sha256, &c->text, &c->language};
    for (int i = 0; i < 5; i++) {
        if (lens[i] > 0) memcpy(p, src[i], lens[i]);
        p[lens[i]] = 0;
        *dst[i] = p;
        p += lens[i] + 1;
    }
    c->rate = r->rate;
    c->hold = NULL; /* the copy owns its bytes */
    c->drop = NULL;
    c->wav = NULL;
    c->wav_len = 0;
    c->flac16k = NULL;
    c->flac16k_len = 0;
    if (with_audio && r->wav != NULL) {
        if (wl > 0) memcpy(p, r->wav, wl);
        c->wav = (const uint8_t *)p;
        c->wav_len = wl;
    }
    return c;
}

int th_voice_ref_file_name(const th_voice_ref *r, char *out, size_t n)
{
    if (r == NULL || !th_voice_id_ok(r->id) || !th_sha256_hex_ok(r->sha256)) return -1;
    int w = snprintf(out, n, "%s-%.16s.wav", r->id, r->sha256);
    return w > 0 && (size_t)w < n ? 0 : -1;
}
