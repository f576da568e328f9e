/* provider: the interface every engine kind implements.
 *
 * A provider turns one th_synth_req into an audio stream delivered to a
 * th_sink. It never writes to the client. All sink callbacks run on the
 * loop thread; after on_done or on_error there are no more callbacks and the
 * job is freed by the provider. cancel() stops a job: no callback after it
 * returns. Errors are typed (th_perr_kind): only the type decides retry,
 * fallback and breaker accounting. */
#ifndef TH_PROVIDERS_PROVIDER_H
#define TH_PROVIDERS_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "audio/format.h"
#include "core/log.h"
#include "providers/conf.h"

typedef enum {
    TH_PERR_NONE = 0,
    TH_PERR_TIMEOUT,    /* no answer in time: 504 */
    TH_PERR_CONNECT,    /* could not reach the engine: 502 */
    TH_PERR_STATUS,     /* the engine answered 5xx (or another failure status): 502 */
    TH_PERR_OVERLOADED, /* the engine said 429 / busy: retry elsewhere, 503 */
    TH_PERR_PROTOCOL,   /* garbage, truncated or undecodable audio: 502 */
    TH_PERR_CLIENT,     /* the request is at fault (bad voice, text...): 400, never retried */
    TH_PERR_CANCELLED,  /* the client went away */
    TH_PERR_INTERNAL,   /* out of memory, a bug: 500 */
} th_perr_kind;

typedef struct th_perr {
    th_perr_kind kind;
    int status;        /* the upstream HTTP status, when there was one */
    int retry_after_s; /* from Retry-After, or 0 */
    char message[256];
} th_perr;

const char *th_perr_kind_name(th_perr_kind k);
/** Fills e (message printf-style). */
void th_perr_set(th_perr *e, th_perr_kind kind, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A voice from the hub's voice library (a cloned voice): the stored reference and its metadata.
 * Owned by the library; valid for the whole job (the job holds a reference to the library entry).
 * Each cloning kind hands it to its engine in the engine's own way (inline bytes, an upload once per
 * sha256, a file in a shared folder...). Kinds that cannot clone never get one. */
#define TH_VOICE_REF_FLAC_RATE 16000

typedef struct th_voice_ref {
    const char *id;     /* library id, [A-Za-z0-9_-]{1,64} */
    const char *name;   /* display name, may be "" */
    const char *sha256; /* lowercase hex of wav[0..wav_len) */
    const uint8_t *wav; /* the normalised reference: a whole WAV file, mono s16 */
    size_t wav_len;
    int rate;             /* its sample rate */
    const char *text;     /* what is said in the reference, may be "" */
    const char *language; /* may be "" */
    /* The compact form, for engines that resample their prompt to 16 kHz (CosyVoice): the same audio
     * resampled to TH_VOICE_REF_FLAC_RATE and packed as FLAC, lossless at that rate. Prepared once per voice
     * by the library and kept (and held) with wav. NULL, flac16k_len 0: not made (copies, tests, an encode
     * that failed): such engines get wav. */
    const uint8_t *flac16k;
    size_t flac16k_len;
    /* A counted owner of wav, when it has one (a library voice in use): hold() takes a reference to it and
     * returns a token, drop(token) gives it back (any thread), so wav may be read after the request that
     * carried the ref is gone. NULL: wav lives only as long as the ref does (copies, tests). */
    void *(*hold)(const struct th_voice_ref *r);
    void (*drop)(void *token);
} th_voice_ref;

/** A deep copy in one allocation (the audio too when with_audio; else wav is NULL; never the compact form:
 * flac16k is NULL). Free with free(). */
th_voice_ref *th_voice_ref_copy(const th_voice_ref *r, bool with_audio);
/** "<id>-<first 16 hex of sha256>.wav" into out: the name under which a reference is stored on an engine's
 * disk. -1 when out is too small or id/sha256 are not what they should be (so the name is never a path). */
int th_voice_ref_file_name(const th_voice_ref *r, char *out, size_t n);
/** true for [A-Za-z0-9_-]{1,64}. */
bool th_voice_id_ok(const char *id);
/** true for 64 lowercase hex digits. */
bool th_sha256_hex_ok(const char *s);

typedef struct th_synth_req {
    const char *text;     /* UTF-8, valid */
    size_t text_len;      /* bytes */
    size_t chars;         /* code points */
    const char *voice;    /* the engine's own voice (after catalogue mapping) */
    const char *language; /* optional */
    const char *prompt;   /* optional style instructions */
    const char *model;    /* optional */
    const char *generation;
    th_fmt want_fmt;         /* what the client will get: a provider may emit it natively */
    int want_rate;           /* 0 = default */
    double speed;            /* 1.0 = normal */
    double pitch;            /* 0 or 1.0 = normal; else a ratio (0.5..2.0), where the engine can */
    const char *traceparent; /* W3C trace context for the engine request, or NULL */
    const th_voice_ref *ref; /* a library voice (voice is then its id), or NULL */
} th_synth_req;

typedef struct th_sink {
    /** The format of the bytes that follow; called once before the first chunk. */
    void (*on_format)(void *ud, const th_audio_spec *spec);
    /** Audio bytes (copy them). Return 1 to ask the provider to pause until th_provider_resume(). */
    int (*on_chunk)(void *ud, const uint8_t *data, size_t len);
    void (*on_done)(void *ud);
    void (*on_error)(void *ud, const th_perr *err);
    void *ud;
} th_sink;

typedef struct th_caps {
    uint32_t formats;       /* bitmask of (1u << th_fmt) the engine emits natively */
    size_t max_input_chars; /* longer text is split by the hub */
    bool streaming;         /* audio comes in chunks as it is made */
    bool native_speed;      /* the engine honours speed itself within [speed_min, speed_max] */
    double speed_min, speed_max;
    bool needs_reference; /* voice cloning engine */
    bool can_clone; /* speaks a library voice (th_synth_req.ref); only such kinds are candidates for one */
} th_caps;

typedef struct th_provider th_provider;
typedef struct th_job th_job;

typedef struct th_provider_ops {
    const char *kind;
    /** Builds a provider from its config section. NULL on error (err says why). */
    th_provider *(*create)(uv_loop_t *loop, const th_provider_conf *conf, th_log *log, char *err,
                           size_t errlen);
    /** Stops background threads and frees. Jobs must have ended or been cancelled. */
    void (*destroy)(th_provider *p);
    th_job *(*start)(th_provider *p, const th_synth_req *req, const th_sink *sink);
    void (*cancel)(th_job *job);
    void (*resume)(th_job *job);
    /** 0 if the engine knows this voice, -1 if not (-> 400). May be NULL: every voice is accepted. */
    int (*voice_ok)(th_provider *p, const char *voice);
    /** A library voice was deleted: drop any copy the engine holds (remote voice, shared file...).
     *  Fire and forget; may be NULL (nothing to drop). */
    void (*voice_forget)(th_provider *p, const th_voice_ref *ref);
    /** Optional: the worker node a job went to (its id), or NULL (not a node, or none yet). */
    const char *(*job_node)(const th_job *job);
} th_provider_ops;

/** The base every provider struct begins with. */
struct th_provider {
    const th_provider_ops *ops;
    const th_provider_conf *conf; /* owned by the config the provider was made from */
    th_caps caps;
};

/** Finds the ops of a kind ("espeak", "openai", ...), or NULL. */
const th_provider_ops *th_provider_kind(const char *kind);

static inline th_job *th_provider_start(th_provider *p, const th_synth_req *req, const th_sink *sink)
{
    return p->ops->start(p, req, sink);
}
static inline void th_provider_cancel(th_provider *p, th_job *j)
{
    p->ops->cancel(j);
}
static inline void th_provider_resume(th_provider *p, th_job *j)
{
    if (p->ops->resume) p->ops->resume(j);
}

#endif
