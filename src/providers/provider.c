#include "providers/provider.h"

#include <stdarg.h>
#include <stdio.h>
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
