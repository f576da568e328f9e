/* refs: the references a `ttshub worker` holds for the gateway's library voices.
 *
 * The gateway's /synthesize for a library voice carries reference_sha256 (+ reference_text,
 * reference_language) and, only when the node said it lacked it, reference_audio (the WAV in base64). The
 * node keeps references in its own voice library (voice/library.h, fs backend under its --data-dir), under a
 * content id: "r" + the first 63 hex digits of sha256(audio sha256, text, language). So a reference is
 * stored once whatever the gateway calls it, a changed transcript is a new entry, and an id never comes from
 * a client. The store is bounded (--max-references, oldest dropped first) and survives a restart; a node
 * that lost it answers 409 {"code":"reference_missing"} and the gateway sends the bytes again. The
 * reference is then spoken through the engine's own kind code, as on the gateway (a file in the engine's
 * speaker folder for xtts with --ref-dir, inline for cosyvoice, an upload for openvoice...). */
#ifndef TH_WORKER_REFS_H
#define TH_WORKER_REFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/** The content id of a reference: 65 bytes with the NUL. 0, or -1 (out of memory). */
int th_wref_id(const char *sha256, const char *text, const char *language, char out[65]);
/** Checks that wav is a whole mono s16 PCM WAV (what the gateway's library stores): 0 with its rate and
 * duration, or -1 with a message in err. */
int th_wref_check_wav(const uint8_t *wav, size_t len, int *rate, double *seconds, char *err, size_t errlen);
/** Decodes standard base64 (no whitespace) into a malloc'd buffer of at most max bytes. 0, or -1. */
int th_wref_base64(const char *s, size_t n, size_t max, uint8_t **out, size_t *outlen);

#endif
