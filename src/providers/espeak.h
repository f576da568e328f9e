/* espeak: the embedded espeak-ng engine, in-process on one owner thread.
 *
 * libespeak-ng has one global state and is not thread-safe, so one thread
 * owns it and runs jobs from a queue. Text is synthesised in segments
 * (sentences, at most a few hundred characters), round-robin between jobs,
 * so a long text does not starve short ones, a paused job (slow client)
 * parks between segments without blocking the thread, and cancel takes
 * effect within one callback (the synth callback returns 1). PCM is s16le
 * mono at the library's rate (22050 Hz), delivered as it is made. */
#ifndef TH_PROVIDERS_ESPEAK_H
#define TH_PROVIDERS_ESPEAK_H

#include "providers/provider.h"

extern const th_provider_ops th_espeak_ops;

/** The espeak voice for an OpenAI voice name (alloy, ash, ...), or NULL when it is not one. */
const char *th_espeak_openai_voice(const char *name);

#endif
