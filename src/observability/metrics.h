/* metrics: counters and histograms as an enum plus a descriptor table.
 *
 * Every metric is declared once in the table (name, type, help, label
 * names, histogram buckets). Values live in a th_metrics hanging off the
 * hub (no globals). Label sets are interned on first use into a bounded
 * table per metric (past the bound, new label sets go to an "_overflow"
 * series, so a peer cannot grow memory). /metrics, /api/status and the
 * dashboard read the same values. Loop thread only (a second loop would
 * keep its own th_metrics and merge on scrape). */
#ifndef TH_HUB_METRICS_H
#define TH_HUB_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef enum {
    TH_M_REQUESTS = 0,      /* counter {route,status} */
    TH_M_REQUEST_SECONDS,   /* histogram {route} */
    TH_M_UPSTREAM_SECONDS,  /* histogram {provider}: time to first audio byte */
    TH_M_UPSTREAM_ERRORS,   /* counter {provider,kind} */
    TH_M_TRANSCODE_SECONDS, /* histogram {format}: CPU seconds converting */
    TH_M_CACHE,             /* counter {result}: hit|miss|coalesced */
    TH_M_BREAKER_STATE,     /* gauge {provider}: 0 closed, 1 open, 2 half_open */
    TH_M_PROVIDER_INFLIGHT, /* gauge {provider} */
    TH_M_QUEUE_DEPTH,       /* gauge {provider} */
    TH_M_RETRIES,           /* counter {provider} */
    TH_M_FALLBACKS,         /* counter {from,to} */
    TH_M_HEDGES,            /* counter {provider} */
    TH_M_CUT_RESPONSES,     /* counter {provider}: failures after the first byte */
    TH_M_CHARS,             /* counter {tenant}: code points synthesised */
    TH_M_REJECTIONS,        /* counter {reason} */
    TH_M_INFLIGHT,          /* gauge: requests in flight */
    TH_M_CONFIG_RELOADS,    /* counter {result}: ok|refused|unchanged */
    TH_M_CONFIG_LOADED,     /* gauge: unix time the config in force was loaded */
    TH_M_REDIS_ROUND_TRIPS, /* histogram {when}: Redis round trips of one request (before_first_byte|after) */
    TH_M_REDIS_TURN,        /* histogram {part}: admissions|settles in one loop turn's policy script */
    TH_M_COUNT
} th_metric_id;

typedef enum { TH_MT_COUNTER = 0, TH_MT_GAUGE, TH_MT_HISTOGRAM } th_metric_type;

typedef struct th_metric_desc {
    th_metric_id id;
    const char *name; /* "ttshub_requests_total" */
    th_metric_type type;
    const char *help;
    const char *labels[3]; /* label names, NULL-terminated */
    const double *buckets; /* histograms: upper bounds, ascending, ending with +Inf implied */
    size_t nbuckets;
} th_metric_desc;

extern const th_metric_desc th_metric_descs[TH_M_COUNT];

typedef struct th_metrics th_metrics;

/** Series per metric before new label sets go to the one "_overflow" series. */
#define TH_METRICS_MAX_SERIES 1000
/** Label values are cut to this many bytes (at a UTF-8 boundary) before interning. */
#define TH_METRICS_MAX_LABEL_LEN 256

th_metrics *th_metrics_new(void);
void th_metrics_free(th_metrics *m);
/** Label values in the order of the descriptor (NULL for none). */
void th_metrics_add(th_metrics *m, th_metric_id id, const char *const *labels, double v);
void th_metrics_set(th_metrics *m, th_metric_id id, const char *const *labels, double v);
void th_metrics_observe(th_metrics *m, th_metric_id id, const char *const *labels, double v);
/** Reads one series' value (counter/gauge) or count (histogram); 0 when absent. */
double th_metrics_get(const th_metrics *m, th_metric_id id, const char *const *labels);
/** The sum over the series of id (counts for histograms); with min, only the series whose label number
 * label is at least min in byte order ("400": the 4xx and 5xx statuses). */
double th_metrics_sum(const th_metrics *m, th_metric_id id, size_t label, const char *min);
/** Prometheus text exposition format 0.0.4 into out. */
int th_metrics_render(const th_metrics *m, th_buf *out);

#endif
