/* upstream: the shared machinery of providers that are HTTP engines.
 *
 * Each engine kind (openai_fm, openai, gpt_sovits, xtts, openvoice,
 * cosyvoice, fish, elevenlabs, azure, nodes) is a th_upstream_kind: a small
 * table of functions that build the engine's request, say what its success
 * body is, and map its failures to typed errors. One generic provider
 * (th_upstream_ops) runs them through th_client on the hub's loop: it
 * streams the body to the sink as it arrives, sniffs the first bytes
 * (engines lie about Content-Type), applies back-pressure (pause/resume),
 * enforces the provider's timeout, and turns every transport failure into
 * a th_perr. */
#ifndef TH_PROVIDERS_UPSTREAM_H
#define TH_PROVIDERS_UPSTREAM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "http/client.h"
#include "providers/provider.h"

/** One HTTP request to an engine, built by a kind. */
typedef struct th_upstream_http {
    const char *base_url; /* in: where this request goes (conf->base_url, or the target picked for it) */
    const char *method;   /* "POST" or "GET" */
    th_buf url;           /* full URL, NUL-terminated via th_buf_cstr */
    th_buf headers;       /* "Name: value\n" lines (no CR) */
    th_buf body;
    /* A library voice's reference sent inside the body without being copied (th_upstream_body_ref): what
     * goes out is body[0..body_ref_at) + body_ref_data[0..body_ref_len) (the reference's wav, or its compact
     * form) + body[body_ref_at..). body_ref NULL: the body is all in body. */
    const th_voice_ref *body_ref;
    const uint8_t *body_ref_data;
    size_t body_ref_len;
    size_t body_ref_at;
    /* in, for a library voice (th_synth_req.ref): */
    const char *prepared; /* what ref_make (or the ref_files step) made for the reference (an uploaded
                             label, a remote voice id, the path the engine reads), or NULL */
    int pass; /* 0; 1 when the engine said it lacked the reference and the request is made again */
} th_upstream_http;

typedef struct th_upstream_kind {
    const char *kind;
    /** Native formats and limits of the engine (merged with the config's formats/max_input_chars). */
    th_caps caps;
    /** Builds the synthesis request. 0, or -1 with err set (TH_PERR_CLIENT for bad input). */
    int (*build)(const th_provider_conf *pc, const th_synth_req *req, th_upstream_http *out, th_perr *err);
    /** The spec of a 2xx body: from what was asked, the config (sample_rate) and the Content-Type the
     * engine sent (may be NULL or wrong: TH_FMT_NONE means "sniff the bytes"). */
    void (*body_spec)(const th_provider_conf *pc, const th_synth_req *req, const char *content_type,
                      th_audio_spec *spec);
    /** Some engines answer 200 with an error in JSON (OpenVoice upload). NULL = a 2xx is audio. */
    int (*body_is_error)(const uint8_t *first, size_t n);
    /** Maps a failure (status, and up to 64 KiB of body) to a typed error in out. */
    void (*error)(const th_provider_conf *pc, int status, const char *content_type, const uint8_t *body,
                  size_t len, th_perr *out);
    /** A cheap liveness request (GET). 0, or -1 when the kind has none. */
    int (*probe)(const th_provider_conf *pc, th_upstream_http *out);

    /* ---- library voices (th_synth_req.ref), all optional (see upstream.c "Library voices") ---- */
    /** 1 with key set when something must exist on the engine before build() can use ref (an upload, a
     * remote voice, a file on shared storage): the provider remembers what was made under that key. 0 when
     * build() sends the reference itself (or the kind cannot use it). -1 with err: it cannot be used. */
    int (*ref_key)(const th_provider_conf *pc, const th_voice_ref *ref, char *key, size_t n, th_perr *err);
    /** Makes it over HTTP, one request per step: step 0 first (status 0, no body), then again with the
     * answer to the previous step's request (at most 1 MiB of its body). 1: out is the next request;
     * 0: done, value set (build() gets it as prepared); -1: failed, err set. */
    int (*ref_make)(const th_provider_conf *pc, const th_voice_ref *ref, int step, int status,
                    const uint8_t *body, size_t len, th_upstream_http *out, char *value, size_t vn,
                    th_perr *err);
    /** Or the kind reads references from shared storage (options ref_dir: the folder the hub writes;
     * ref_dir_engine: the same folder as the engine sees it, default ref_dir): the generic provider writes
     * "<ref_dir>/<id>-<sha256 first 16>.wav" once, atomically, on the loop's thread pool, and build() gets
     * "<ref_dir_engine>/<name>" as prepared (just "<name>" when ref_file_name_only and ref_dir_engine is
     * not set). voice_forget removes the file. Without ref_dir the provider cannot speak library voices
     * (caps.can_clone is cleared). */
    bool ref_files;
    bool ref_file_name_only;
    /** Does this failure of a synthesis request say that the engine does not have the reference (any more)?
     * Then what was made is dropped and the request is made again, once, with pass 1. */
    bool (*ref_lost)(const th_provider_conf *pc, int status, const uint8_t *body, size_t len);
    /** voice_forget over HTTP, step by step as ref_make (value: what was made, NULL when this provider does
     * not know): 1 with out the next request, 0 done. */
    int (*ref_drop)(const th_provider_conf *pc, const th_voice_ref *ref, const char *value, int step,
                    int status, const uint8_t *body, size_t len, th_upstream_http *out);
    /** What ref_make makes lives on one target (a worker node), not on the engine as a whole: entries are
     * kept per target, ref_make gets the job's target as out->base_url, and the targets (when they record
     * it: ref_holds / ref_note) say which target holds what. ref_per_target(pc) false: not for this
     * provider (NULL: never). */
    bool (*ref_per_target)(const th_provider_conf *pc);
} th_upstream_kind;

/* One per engine kind, each in its own file src/providers/<kind>.c. */
extern const th_upstream_kind th_kind_openai_fm;  /* openai_fm.c */
extern const th_upstream_kind th_kind_openai;     /* openai.c */
extern const th_upstream_kind th_kind_elevenlabs; /* elevenlabs.c */
extern const th_upstream_kind th_kind_azure;      /* azure.c */
extern const th_upstream_kind th_kind_fish;       /* fish.c */
extern const th_upstream_kind th_kind_gpt_sovits; /* gpt_sovits.c (api v2 and v1) */
extern const th_upstream_kind th_kind_xtts;       /* xtts.c */
extern const th_upstream_kind th_kind_openvoice;  /* openvoice.c */
extern const th_upstream_kind th_kind_cosyvoice;  /* cosyvoice.c */
extern const th_upstream_kind th_kind_nodes;      /* nodes.c: registered worker nodes (POST /synthesize) */

/** The seed-2 worker's POST {base_url}/extract_voice (multipart: audio, voice_id, voice_name, reference_text)
 * for ref (with its audio) into out (nodes.c; the hub pushes library voices with it too). 0 or -1. */
int th_nodes_seed2_extract(th_upstream_http *out, const char *base_url, const th_voice_ref *ref);

/** The kinds, NULL-terminated. */
extern const th_upstream_kind *const th_upstream_kinds[];
const th_upstream_kind *th_upstream_find(const char *kind);

/** The provider ops shared by every upstream kind (kind picked from conf->type). */
extern const th_provider_ops th_upstream_ops;

/** Where requests go when the engine is not one fixed URL (registered worker nodes): pick() chooses a
 * target for one request and writes its base URL (0), or sets err and returns -1 when there is none;
 * release() gets the lease back exactly once, when the job ends or is cancelled. ok is false when the
 * target failed (no answer, 5xx, garbage), true when it answered (even with a client error) or the
 * client went away. */
typedef struct th_upstream_targets {
    /* ref: the library voice of the request, or NULL (targets holding it may go first) */
    int (*pick)(void *ud, const th_provider_conf *pc, const th_voice_ref *ref, char *base_url, size_t len,
                void **lease, th_perr *err);
    void (*release)(void *ud, void *lease, bool ok);
    void *ud;
    /* optional, for kinds with ref_per_target: does the target hold the reference; the target now holds
     * it (held) or lacks it (target NULL: no target any more: the voice was deleted) */
    bool (*ref_holds)(void *ud, const char *target, const th_voice_ref *ref);
    void (*ref_note)(void *ud, const char *target, const th_voice_ref *ref, bool held);
    /* optional: the name of the target a lease is (a node id), for X-Node-Id */
    const char *(*lease_name)(void *ud, void *lease);
} th_upstream_targets;
/** Installs targets on an upstream provider (NULL removes them). -1 when p is not an upstream provider. */
int th_upstream_set_targets(th_provider *p, const th_upstream_targets *t);
/** Sends `Authorization: Bearer <token>` with every request (the cluster token, to worker nodes); NULL or
 * "" stops it. -1 when p is not an upstream provider or the token is too long (511 bytes) or has a CR/LF. */
int th_upstream_set_bearer(th_provider *p, const char *token);

/* helpers for kinds */
void th_upstream_http_init(th_upstream_http *h);
void th_upstream_http_free(th_upstream_http *h);
/** url = base_url (without trailing '/') + path. */
int th_upstream_url(th_upstream_http *h, const char *base_url, const char *path);
/** Appends "&name=value" (or "?name=value" first) with the value percent-encoded. */
int th_upstream_query(th_upstream_http *h, const char *name, const char *value);
int th_upstream_header(th_upstream_http *h, const char *name, const char *value);
/** The secret named by api_key_env (NULL when unset or empty). Never logged. */
const char *th_upstream_secret(const th_provider_conf *pc);
/** The configured reference mapping (a cloning kind's voices entry) that voice is, parsed; NULL with
 * *bad = 0 when it is a plain voice name, NULL with *bad = 1 when the configured text does not parse
 * (or no memory). The caller json_decref()s it. */
json_t *th_upstream_voice_ref(const th_provider_conf *pc, const char *voice, int *bad);
/** A string from a reference mapping (numbers are written out into tmp), or NULL. */
const char *th_upstream_ref_str(const json_t *ref, const char *key, char *tmp, size_t n);
/** What a self-hosted kind checks first: a base_url (status error) and some text (client error). 0, or -1
 * with err set. */
int th_upstream_need_base_and_text(const th_provider_conf *pc, const th_synth_req *req, th_perr *err);
/** A kind option from conf->opts, else the kind's default (th_provider_opt_default), else def. */
const char *th_upstream_opt(const th_provider_conf *pc, const char *key, const char *def);
/** Generic error mapping by status: 400/404/413/415/422 -> CLIENT, 401/403 -> STATUS (our config is at
 * fault, not the client's), 429 -> OVERLOADED (+Retry-After), 408/504 -> TIMEOUT, other -> STATUS. */
void th_upstream_error_generic(int status, const char *message, th_perr *out);

/* more helpers for kinds (upstream.c) */
/** Appends n bytes of s percent-encoded (RFC 3986: only A-Z a-z 0-9 - . _ ~ stay as they are). */
int th_upstream_urlencode(th_buf *b, const char *s, size_t n);
/** Appends "name=value" to an application/x-www-form-urlencoded body ('&' first unless b is empty). */
int th_upstream_form(th_buf *b, const char *name, const char *value);
/** Appends n bytes of s with & < > " ' escaped for XML text and attribute values. */
int th_upstream_xml_escape(th_buf *b, const char *s, size_t n);
/** A one-line printable excerpt of a body for messages (control bytes become spaces, runs of blanks are
 * squeezed, cut at outlen - 1 bytes). */
void th_upstream_excerpt(const uint8_t *body, size_t len, char *out, size_t outlen);
/** A Retry-After value, delta-seconds or an HTTP-date (IMF-fixdate), as seconds from now_s (>= 0, at most
 * a day); -1 when it cannot be parsed. */
int th_upstream_retry_after(const char *value, int64_t now_s);
/** A boolean kind option (true/yes/on/1, false/no/off/0), or def when absent or not a boolean. */
bool th_upstream_opt_bool(const th_provider_conf *pc, const char *key, bool def);
/** The formats an engine may be asked for: conf->formats when set, else the kind's native ones. */
uint32_t th_upstream_formats(const th_provider_conf *pc, uint32_t kind_formats);

/** Appends "key":"value" (value JSON-escaped) to a JSON object under construction in b, after a ','
 * unless b is empty or ends with '{'. */
int th_upstream_json_str(th_buf *b, const char *key, const char *value);
/** Same with value written as is (a number, true/false, or an object built by the caller). */
int th_upstream_json_raw(th_buf *b, const char *key, const char *raw);
/** Picks a random multipart boundary that none of the n parts contains (parts up to 64 KiB are checked;
 * larger binary parts cannot hold 96 random bits by chance); 0, or -1. */
int th_upstream_boundary(char *out, size_t n, const void *const *parts, const size_t *lens, size_t nparts);
/** Appends one multipart/form-data part ("--boundary" line, Content-Disposition with name and, when
 * filename is not NULL, filename and Content-Type ctype, then the data and CRLF). 0 or -1. */
int th_upstream_part(th_buf *b, const char *boundary, const char *name, const char *filename,
                     const char *ctype, const void *data, size_t len);
/** The head of such a part only, up to the blank line: the caller adds the data (th_upstream_body_ref)
 * and the CRLF that ends it. 0 or -1. */
int th_upstream_part_head(th_buf *b, const char *boundary, const char *name, const char *filename,
                          const char *ctype);
/** Appends the closing "--boundary--" line. */
int th_upstream_parts_end(th_buf *b, const char *boundary);
/** Puts ref's WAV bytes at the current end of h->body without copying them: the transfer writes them from
 * the library's memory, holding the voice (th_voice_ref.hold) while it does; what the kind appends to body
 * afterwards follows them. One per request. 0, or -1 when h has one already or the whole body would pass
 * body's limit. */
int th_upstream_body_ref(th_upstream_http *h, const th_voice_ref *ref);
/** The same with other bytes that ref holds (its compact form: ref->flac16k). 0 or -1. */
int th_upstream_body_ref_bytes(th_upstream_http *h, const th_voice_ref *ref, const uint8_t *data, size_t len);
/** The whole body of h as one buffer (the reference copied in), appended to out. 0 or -1. */
int th_upstream_body_flat(const th_upstream_http *h, th_buf *out);
/** Appends n bytes as standard base64 (with padding). 0 or -1. */
int th_upstream_base64(th_buf *b, const uint8_t *data, size_t n);
/** Library-voice counters of a provider, for /metrics. */
typedef struct th_upstream_ref_stats {
    uint64_t made;    /* references made on the engine: uploads, remote voices, shared files */
    uint64_t failed;  /* attempts to make one that failed */
    uint64_t resends; /* requests sent again because the engine or node lacked the reference */
} th_upstream_ref_stats;
/** 0 with *out filled, or -1 when p is not an upstream provider. */
int th_upstream_get_ref_stats(const th_provider *p, th_upstream_ref_stats *out);

/** Adds "Authorization: Bearer <key>". */
int th_upstream_bearer(th_upstream_http *h, const char *key);
/** The key of a kind that sends one: 0 with *key = the secret, or *key = NULL when no api_key_env is
 * configured (local engines, fakes); -1 with err = TH_PERR_STATUS when api_key_env names an unset or
 * empty variable (our configuration is at fault, not the client's request). */
int th_upstream_need_secret(const th_provider_conf *pc, const char **key, th_perr *err);

/** Health probe: kind->probe as a GET with a 2 s limit on the provider's own connection pool. done runs
 * later on the loop thread (never inside this call): healthy when the engine answered 2xx/3xx, or 404/405
 * for kinds whose probe only checks that the server is up; not when it did not answer, answered 5xx,
 * 429, or 401/403 (our key is wrong). Returns 0 when a probe was started, -1 when the kind has no probe
 * (or p is not an upstream provider, or out of memory): done is then never called. A provider destroyed
 * while a probe runs drops it without calling done. */
int th_upstream_probe(th_provider *p, void (*done)(void *ud, bool healthy, const char *detail), void *ud);

#endif
