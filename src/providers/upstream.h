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

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "http/client.h"
#include "providers/provider.h"

/** One HTTP request to an engine, built by a kind. */
typedef struct th_upstream_http {
    const char *method;  /* "POST" or "GET" */
    th_buf url;          /* full URL, NUL-terminated via th_buf_cstr */
    th_buf headers;      /* "Name: value\n" lines (no CR) */
    th_buf body;
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

/** The kinds, NULL-terminated. */
extern const th_upstream_kind *const th_upstream_kinds[];
const th_upstream_kind *th_upstream_find(const char *kind);

/** The provider ops shared by every upstream kind (kind picked from conf->type). */
extern const th_provider_ops th_upstream_ops;

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
/** A kind option from conf->opts, or def. */
const char *th_upstream_opt(const th_provider_conf *pc, const char *key, const char *def);
/** Generic error mapping by status: 400/404/413/415/422 -> CLIENT, 401/403 -> STATUS (our config is at
 * fault, not the client's), 429 -> OVERLOADED (+Retry-After), 408/504 -> TIMEOUT, other -> STATUS. */
void th_upstream_error_generic(int status, const char *message, th_perr *out);

#endif
