/* synth: one synthesis from a provider to the client's format.
 *
 * Picks the provider, maps the voice, starts the job, converts its audio
 * (th_audio_stream, off the loop) to the requested format, speed and rate,
 * and hands the bytes to the caller as they come. Back-pressure flows both
 * ways: the caller's on_data may ask to pause (slow client); a large
 * backlog of unconverted input pauses the provider. Errors are typed
 * (th_perr); a failure after the first byte is reported with
 * bytes_out > 0, so the caller cuts the response instead of answering.
 *
 * Routing: candidates come from hub->route (strategy, breakers, voice
 * support). Before a part's first audio byte, a failure is retried once on
 * the same provider (router.retries), then the next candidate is tried
 * (router.fallback). With router.hedge_after set, a second candidate is
 * started when the first is slower than that; the first to send audio wins.
 *
 * Long text: when the input is longer than the smallest max_input_chars of
 * the candidates, it is split at sentence boundaries (routing/split.h), the
 * parts are synthesised in parallel (a window of TH_SYNTH_PARALLEL), each
 * decoded to PCM, and concatenated in order into one encoder; the first
 * part streams while later parts are still being made. */
#ifndef TH_HUB_SYNTH_H
#define TH_HUB_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audio/format.h"
#include "hub/hub.h"
#include "observability/trace.h"
#include "providers/provider.h"

typedef struct th_synth th_synth;

#define TH_SYNTH_PARALLEL 4

typedef struct th_synth_params {
    const char *text;
    size_t text_len;
    size_t chars;
    const char *voice; /* the public voice the client asked for */
    const char *language;
    const char *prompt;
    const char *model;
    const char *generation;
    th_fmt fmt;         /* one of the six client formats */
    int sample_rate;    /* 0 = TH_PCM_DEFAULT_RATE */
    double speed;       /* 0.25..4.0 */
    double pitch;       /* 0 or 1 = unchanged; else a ratio 0.5..2.0, for engines that can (espeak) */
    const char *tenant; /* for route matching; NULL = none */
    th_trace_ctx trace; /* the request's span: provider attempts are its children (invalid: not traced) */
    /** A library (cloned) voice, or NULL: then voice is its id, only clone-capable providers are
     * candidates, and each attempt carries its reference (th_synth_req.ref). The synth holds its own
     * reference to it for as long as it runs. */
    struct th_vlib_use *clone;
    /** Optional tenant restriction: may this request use that provider? */
    bool (*provider_allowed)(const char *provider, void *ud);
    void *allowed_ud;
} th_synth_params;

typedef struct th_synth_cb {
    /** Before the first byte: which provider, and the format delivered. */
    void (*on_start)(void *ud, const char *provider);
    /** Output bytes. Return 1 to pause until th_synth_resume(). */
    int (*on_data)(void *ud, const uint8_t *data, size_t len);
    void (*on_done)(void *ud);
    /** bytes_out > 0: the failure came after the first byte. */
    void (*on_error)(void *ud, const th_perr *err, uint64_t bytes_out);
    void *ud;
} th_synth_cb;

/** Checks what can be checked before starting (provider exists, voice known). 0, or -1 with err set
 * (TH_PERR_CLIENT for a bad voice, TH_PERR_INTERNAL...). */
int th_synth_prepare(th_hub *hub, const th_synth_params *p, th_perr *err);
/** Starts. NULL with err set when it cannot start. Callbacks come later, never from inside this call. */
th_synth *th_synth_start(th_hub *hub, const th_synth_params *p, const th_synth_cb *cb, th_perr *err);
/** The client went away: stops everything; no callbacks after this returns. Frees the synth. */
void th_synth_cancel(th_synth *s);
/** After on_done / on_error: frees the synth. */
void th_synth_free(th_synth *s);
/** The consumer can take more. */
void th_synth_resume(th_synth *s);
/** Number of text parts (1 unless the text was split for length). */
size_t th_synth_parts(const th_synth *s);
/** Milliseconds from start to the first audio byte from the provider (-1 if none yet). */
double th_synth_upstream_ms(const th_synth *s);
const char *th_synth_provider(const th_synth *s);
/** The worker node that answered (its id), or NULL when no node did (yet). */
const char *th_synth_node(const th_synth *s);

#endif
