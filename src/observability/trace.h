/* trace: OpenTelemetry traces exported over OTLP/HTTP (JSON) to tracing.otlp_endpoint.
 *
 * A request gets a SERVER span (the API layer), each attempt on a provider a CLIENT span under it, and
 * the attempt's context goes to the engine as a W3C `traceparent` header. A client's own `traceparent`
 * is honoured: its trace id is kept and its sampled flag decides (parent-based sampling); without one,
 * tracing.sample_ratio decides. Ended spans are batched (at most TH_TRACE_BATCH per export, one export in
 * flight, every second or when a batch is full) and POSTed to {endpoint}/v1/traces; past TH_TRACE_PENDING
 * waiting spans, new ones are dropped and counted. An export that fails is logged (at most every 30 s) and
 * dropped: tracing never slows or fails a request. Loop thread only. */
#ifndef TH_HUB_TRACE_H
#define TH_HUB_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/log.h"

#define TH_TRACE_BATCH 512
#define TH_TRACE_PENDING 4096
#define TH_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

typedef struct th_tracer th_tracer;
typedef struct th_span th_span;

/** A span's identity, copied where a child may be made later (the synthesis holds one). */
typedef struct th_trace_ctx {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    bool sampled;
    bool valid;
} th_trace_ctx;

typedef enum { TH_SPAN_INTERNAL = 1, TH_SPAN_SERVER = 2, TH_SPAN_CLIENT = 3 } th_span_kind;

/** NULL when endpoint is empty (tracing off) or on ENOMEM. */
th_tracer *th_tracer_new(uv_loop_t *loop, const char *endpoint, const char *service_name, double sample_ratio,
                         th_log *log);
/** Sends what is waiting, then frees (the loop must keep running until the export ends; at most 2 s). */
void th_tracer_close(th_tracer *t);

/** Parses a W3C traceparent header ("00-<trace>-<parent>-<flags>"). false when absent or malformed. */
bool th_trace_parse_parent(const char *header, th_trace_ctx *out);

/** A root span: parent is a client's context (or NULL / invalid: a new trace, sampled by ratio). NULL when
 * the trace is not sampled (every th_span_* call takes NULL and does nothing). */
th_span *th_span_start(th_tracer *t, const char *name, th_span_kind kind, const th_trace_ctx *parent);
/** The span's context (for children made later, and for th_trace_format_parent). */
void th_span_ctx(const th_span *s, th_trace_ctx *out);
/** "00-<trace>-<span>-01" into out (TH_TRACEPARENT_LEN + 1 bytes). */
void th_trace_format_parent(const th_trace_ctx *c, char *out);
void th_span_set_name(th_span *s, const char *name);
void th_span_attr_str(th_span *s, const char *key, const char *value);
void th_span_attr_int(th_span *s, const char *key, int64_t value);
/** Marks the span failed (status ERROR with the message). */
void th_span_error(th_span *s, const char *message);
/** Ends the span and queues it for export; s is gone afterwards. */
void th_span_end(th_span *s);
/** Drops a span without exporting it. */
void th_span_drop(th_span *s);
/** Spans dropped because too many were waiting. */
uint64_t th_tracer_dropped(const th_tracer *t);

#endif
