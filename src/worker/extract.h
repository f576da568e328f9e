/* extract: POST /extract_voice on `ttshub worker`, the seed-2 node route (ENGINES.md 7b).
 *
 * multipart/form-data: audio (the file; "file" is accepted too), voice_id?, voice_name?, reference_text?,
 * language?. The upload is decoded with FFmpeg off the loop (any container the hub's own /api/extract_voice
 * reads), bounded in length and checked for silence, normalised to the library's canonical WAV and kept in
 * the node's reference store (its voice library under --data-dir) under voice_id, which must be
 * [A-Za-z0-9_-]{1,64} and not the shape of the store's content ids (r + 63 hex digits). An id given again
 * replaces that voice, as a seed-2 worker overwrites its voices/{id}/. The reply is 200 (the seed-2 gateway
 * checks for exactly 200) {"success":true,"message","voice_id","voice_name","engine","duration_seconds"};
 * failures are real statuses in the node's error shape. A later /synthesize with that voice_id speaks it
 * through the engine's cloning code. */
#ifndef TH_WORKER_EXTRACT_H
#define TH_WORKER_EXTRACT_H

#include <stdbool.h>
#include <stddef.h>

#include "api/api.h"

/** Handles the request (the caller has checked auth and readiness). engine_type is what the reply names;
 * cap bounds the store (voices and references together). *busy counts the uploads being processed (each
 * holds its body and up to max_seconds of decoded audio): at max_busy more are answered 503. */
void th_wextract(th_api_ctx *c, const char *engine_type, size_t cap, int *busy, int max_busy);
/** true for ids of the store's content-addressed references ("r" + 63 lowercase hex digits). */
bool th_wextract_is_content_id(const char *id);

#endif
