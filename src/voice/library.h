/* library: the hub's voice library (cloned voices), API.md "Voice-clone routes".
 *
 * A voice is a metadata record (th_vlib_meta) plus its normalised reference: a canonical WAV file, mono
 * s16 at TH_VLIB_RATE. Ids are [A-Za-z0-9_-]{1,64} and unique in the library; a voice belongs to the
 * tenant that made it (ownership is the caller's check: th_vlib_visible).
 *
 * Every voice's metadata is in memory. Reference audio is cached in memory under a byte cap (LRU) and
 * loaded from the backend on a miss. With it goes its compact form (th_voice_ref.flac16k: 16 kHz FLAC, for
 * engines that resample their prompt to 16 kHz), made on the thread pool when the voice is created and when
 * its audio is loaded, before anyone uses it, and counted in the same cap. A request speaking a voice holds a
 * th_vlib_use: its own copy of the metadata plus a counted reference to the audio, so a voice deleted or
 * evicted during a job stays whole for that job.
 *
 * Backends:
 *  - fs: under {data_dir}/voices. A voice is {id}.json (the metadata record) and {id}.{sha256}.wav. A new
 *    voice writes the wav (temp file, fsync, rename, dir fsync), then the record the same way: a voice
 *    exists exactly when its record does, and the record names the wav, so kill -9 at any moment leaves
 *    the old state or the new, never half a voice. Start-up removes temp files and orphaned wavs. File
 *    operations run one at a time, in order, on the uv thread pool.
 *  - redis: {prefix}vmeta:{id} (the record), {prefix}vwav:{id}:{sha256} (the wav), the set {prefix}voices,
 *    and {prefix}voices:ver, a counter bumped by every change. Each change is one Lua script (atomic; it
 *    also decides "id taken" and the tenant's cap). Every hub polls the counter twice a second and reads
 *    the records back when it moved, so a voice made or deleted through one hub is seen by every hub
 *    within a second.
 *
 * Loop thread only, except th_vlib_use_ref / th_vlib_use_release (any thread). */
#ifndef TH_VOICE_LIBRARY_H
#define TH_VOICE_LIBRARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "audio/decode.h"
#include "core/log.h"
#include "store/redis.h"
#include "providers/provider.h"

#define TH_VLIB_ID_MAX 64
#define TH_VLIB_RATE 24000       /* what cloning engines take best: XTTS, OpenVoice, CosyVoice resample */
#define TH_VLIB_TEXT_MAX 4096    /* bytes of reference text */
#define TH_VLIB_NAME_MAX 256     /* bytes of a display name, engine hint, language, tenant */
#define TH_VLIB_RECORD_MAX 65536 /* bytes of one metadata record */
#define TH_VLIB_STALE_S 600 /* fs: with another process on the directory, leftovers this old are removed */
#define TH_VLIB_JOIN_WAIT_MS 10000 /* fs: at most this long for another process's start-up scan */

/** A voice's metadata record. Strings are owned (never NULL once parsed or made). */
typedef struct th_vlib_meta {
    char id[TH_VLIB_ID_MAX + 1];
    char sha256[65]; /* lowercase hex of the wav */
    char *name, *tenant, *engine, *text, *language;
    double duration_s;
    int64_t created_ms, updated_ms; /* wall clock */
    int rate;
    uint64_t wav_len;
} th_vlib_meta;

/** true when s[0..len) is a valid id. */
bool th_vlib_id_ok(const char *s, size_t len);
/** Parses a record (JSON). 0, or -1 with err set (the record is rejected whole). */
int th_vlib_meta_parse(const char *data, size_t len, th_vlib_meta *m, char *err, size_t errlen);
/** The record as compact JSON (malloc'd), or NULL on ENOMEM. */
char *th_vlib_meta_dump(const th_vlib_meta *m);
/** Lowercase hex sha256 of p[0..n). */
void th_vlib_sha256_hex(const uint8_t *p, size_t n, char out[65]);

/** An uploaded file (any container th_audio_decode takes) to the library's normalised reference: a mono
 * s16 WAV at opts->out_rate. Fills m's duration_s, rate, wav_len and sha256, and *level (silence_dbfs is
 * the level that counts as sound). On TH_DEC_OK *wav (malloc'd, *wav_len bytes) is the caller's; on any
 * other result nothing is left to free and err says why. Blocking: run it on the thread pool. */
th_dec_rc th_vlib_normalise(const uint8_t *audio, size_t len, const th_dec_opts *opts, double silence_dbfs,
                            th_vlib_meta *m, th_dec_level *level, uint8_t **wav, size_t *wav_len, char *err,
                            size_t errlen);
/** Deep copy; 0 or -1 (ENOMEM). */
int th_vlib_meta_copy(th_vlib_meta *dst, const th_vlib_meta *src);
void th_vlib_meta_free(th_vlib_meta *m);
/** Sets a string field (name, text...) to a copy of v; 0 or -1. */
int th_vlib_meta_set(char **field, const char *v);

typedef struct th_vlib th_vlib;

typedef struct th_vlib_conf {
    const char *backend;  /* "fs" | "redis" */
    const char *data_dir; /* fs: voices live in {data_dir}/voices */
    th_redis *redis;      /* redis backend */
    const char *prefix;   /* redis key prefix */
    uint64_t cache_bytes; /* resident reference audio */
    size_t max_voices;    /* the whole library */
} th_vlib_conf;

typedef enum {
    TH_VLIB_OK = 0,
    TH_VLIB_TAKEN,   /* the id exists (or is being made or deleted) */
    TH_VLIB_FULL,    /* the tenant's cap (or the library's) is reached */
    TH_VLIB_MISSING, /* no such voice */
    TH_VLIB_IO,      /* the backend failed */
    TH_VLIB_NOMEM,
} th_vlib_rc;

/** Loads the fs index synchronously (start-up) or starts the redis sync. NULL with err set. */
th_vlib *th_vlib_new(uv_loop_t *loop, const th_vlib_conf *conf, th_log *log, char *err, size_t errlen);
/** Stops; frees once pending operations have ended (the loop must run). Callbacks still pending are
 * answered with TH_VLIB_IO. */
void th_vlib_free(th_vlib *l);
const char *th_vlib_backend(const th_vlib *l);

/** Called for every voice that disappears because another hub deleted it (redis backend), so engines
 * can drop their copies. */
void th_vlib_on_removed(th_vlib *l, void (*fn)(void *ud, const th_voice_ref *ref), void *ud);

/* ---- reading (metadata only, synchronous) ---- */

/** The live voice with that id, or NULL. Valid until the next change on the loop. */
const th_vlib_meta *th_vlib_find(const th_vlib *l, const char *id);
/** May a caller of tenant `tenant` (admin: every tenant) see voice m? */
bool th_vlib_visible(const th_vlib_meta *m, const char *tenant, bool admin);
/** Live voices visible to the caller, sorted by id; returns how many were written (at most max). */
size_t th_vlib_list(const th_vlib *l, const char *tenant, bool admin, const th_vlib_meta **out, size_t max);
size_t th_vlib_count(const th_vlib *l);
/** Resident audio bytes. */
uint64_t th_vlib_cached_bytes(const th_vlib *l);

/* ---- speaking ---- */

typedef struct th_vlib_use th_vlib_use;
typedef void (*th_vlib_use_cb)(void *ud, th_vlib_use *u, th_vlib_rc rc);
/** Gets voice id with its audio for a job. When the audio is resident the callback runs before this
 * returns; otherwise it is loaded from the backend first. u is the caller's (release it). */
void th_vlib_acquire(th_vlib *l, const char *id, th_vlib_use_cb cb, void *ud);
const th_voice_ref *th_vlib_use_ref(const th_vlib_use *u);
th_vlib_use *th_vlib_use_dup(th_vlib_use *u);
void th_vlib_use_release(th_vlib_use *u);
/** The whole stored reference (for GET .../audio), same lifetime as u. */
const uint8_t *th_vlib_use_wav(const th_vlib_use *u, size_t *len);

/* ---- changing ---- */

typedef void (*th_vlib_done_cb)(void *ud, th_vlib_rc rc, const char *err);

/** Reserves id for a voice being made by tenant (checks "taken" and the tenant's cap max_per_tenant,
 * counting voices still being made). TH_VLIB_OK, TAKEN or FULL. */
th_vlib_rc th_vlib_reserve(th_vlib *l, const char *id, const char *tenant, size_t max_per_tenant);
/** Gives a reservation back (the upload failed before th_vlib_create). */
void th_vlib_unreserve(th_vlib *l, const char *id);
/** Stores a reserved voice: m (its id reserved; copied) and wav (stolen, malloc'd; a whole WAV file).
 * The callback runs later with OK, TAKEN/FULL (redis: another hub won), IO or NOMEM. */
void th_vlib_create(th_vlib *l, const th_vlib_meta *m, uint8_t *wav, size_t wav_len, size_t max_per_tenant,
                    th_vlib_done_cb cb, void *ud);
/** Changes the name and/or reference text (NULL: unchanged). */
void th_vlib_update(th_vlib *l, const char *id, const char *name, const char *text, th_vlib_done_cb cb,
                    void *ud);
/** Deletes a voice. The caller tells engines to drop their copies (th_vlib_forget_ref). */
void th_vlib_delete(th_vlib *l, const char *id, th_vlib_done_cb cb, void *ud);

/** A reference for voice_forget built from metadata alone: wav is NULL and wav_len 0 (engines drop
 * their copies by id and sha256). Strings point into m. */
th_voice_ref th_vlib_forget_ref(const th_vlib_meta *m);

#endif
