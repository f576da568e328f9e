/* espeak: the embedded espeak-ng engine, in-process on one owner thread.
 *
 * libespeak-ng has one global state and is not thread-safe, so one thread
 * owns it and runs jobs from a queue. Text is synthesised in segments
 * (sentences, at most a few hundred characters), round-robin between jobs,
 * so a long text does not starve short ones, a paused job (slow client)
 * parks between segments without blocking the thread, and cancel takes
 * effect within one callback (the synth callback returns 1). PCM is s16le
 * mono at the library's rate (22050 Hz), delivered as it is made.
 *
 * Lifetime rules:
 * - Only one espeak provider may exist per process at a time (the library
 *   state is process-global); a second create() fails with a clear error.
 * - destroy() joins the owner thread and frees the provider at once, but the
 *   provider's uv_async_t is closed with uv_close() and freed in its close
 *   callback: the caller must run the loop at least once more after destroy()
 *   (uv_run(loop, UV_RUN_DEFAULT) or UV_RUN_NOWAIT) before uv_loop_close().
 * - espeak-ng 1.51 hangs in espeak_Terminate() once it has been terminated
 *   and initialised again in the same process, so the library is initialised
 *   on the first create() and kept (not terminated) for the life of the
 *   process; a later provider reuses it.
 * - start() never calls the sink before it returns; it returns NULL only when
 *   memory runs out. An unknown voice gives on_error(TH_PERR_CLIENT) from the
 *   loop, before any on_format. */
#ifndef TH_PROVIDERS_ESPEAK_H
#define TH_PROVIDERS_ESPEAK_H

#include <stdbool.h>
#include <stddef.h>

#include "providers/provider.h"

extern const th_provider_ops th_espeak_ops;

/** The espeak voice for an OpenAI voice name (alloy, ash, ...), or NULL when it is not one. */
const char *th_espeak_openai_voice(const char *name);

/** Largest segment, in code points, that one espeak_Synth() call gets. */
#define TH_ESPEAK_SEGMENT_MAX_CP 400
/** Undelivered PCM above which a job is parked between segments. */
#define TH_ESPEAK_MAX_PENDING (2u * 1024 * 1024)

/** The end (byte offset, exclusive) of the segment that starts at pos (pos < len): after a sentence
 * end (. ! ? ; followed by space or the end, with closing quotes/brackets; or 。！？；), else at the
 * last space (or CJK comma) before max_cp code points, else at max_cp code points. Whitespace after a
 * sentence end belongs to the segment. *sentence_end tells whether the segment ends a sentence (or the
 * text) rather than being cut at the cap. */
size_t th_espeak_segment(const char *s, size_t len, size_t pos, size_t max_cp, bool *sentence_end);

/** A malloc'd, NUL-terminated copy of n bytes of text that is safe to give espeak-ng as plain text:
 * NUL and other C0 controls (but \n), DEL, C1 controls (U+0080..U+009F) and invalid UTF-8 bytes
 * become spaces. *out_len gets the length. NULL on ENOMEM. */
char *th_espeak_sanitize(const char *text, size_t n, size_t *out_len);

#endif
