/* api: the client protocols and control routes, registered on the hub's router.
 *
 * Every request gets a th_api_ctx (the http req's data slot) when it
 * reaches the hub: request id, start time and the fields of its access
 * line. Handlers answer through th_api_error / th_api_json / the audio
 * streamer, which also write the access line and free the ctx. */
#ifndef TH_API_API_H
#define TH_API_API_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "audio/format.h"
#include "http/http.h"
#include "governance/auth.h"
#include "governance/cache.h"
#include "hub/hub.h"
#include "governance/limit.h"
#include "governance/quota.h"
#include "hub/synth.h"
#include "providers/provider.h"

typedef enum {
    TH_SHAPE_OPENAI = 0, /* {"error":{message,type,code}} (ttsfm and OpenAI routes) */
    TH_SHAPE_CLONE,      /* {"success":false,"message","code"} (voice-clone routes) */
} th_api_shape;

typedef enum {
    TH_STREAM_AUDIO = 0, /* raw audio bytes, chunked */
    TH_STREAM_SSE,       /* OpenAI stream_format=sse */
} th_api_stream_mode;

typedef struct th_api_ctx {
    th_hub *hub;
    th_config *cfg; /* a reference: the config in force when the request came (c->tconf points into it) */
    th_http_req *req;
    th_api_shape shape;
    const char *route; /* the route's pattern, for metrics ("unmatched" when none) */
    char rid[130];
    /* access-line fields, filled as the request goes */
    char *voice;
    char *tenant;
    const char *error_code;
    char provider[64];
    const char *cache;
    th_fmt fmt;
    int64_t chars;
    uint64_t bytes;
    int status;
    int retry_after_s; /* Retry-After of a 429/503 (0: 1 second) */
    /* who is calling */
    th_identity id;
    const th_tenant_conf *tconf;
    /* the policy chain of a synthesis */
    th_synth_params p; /* owned copies of the strings, see th_api_speak */
    char *owned;       /* one allocation holding p's strings */
    th_limit_slot *slot;
    th_quota_resv *resv;
    th_cache_flight *flight;
    th_cache_follower *follower;
    char cache_key[TH_CACHE_KEY_LEN + 1];
    bool waiting;  /* an async policy step is under way */
    bool gone;     /* the client went away */
    th_span *span; /* the request's SERVER span (NULL when not traced) */
    /* audio streaming */
    th_synth *synth;
    th_api_stream_mode mode;
    bool started, waiting_drain, counted;
    /* voice library */
    struct th_vlib_use *clone; /* the library voice being spoken (released with the ctx) */
    char *only_engine;         /* /api/synthesize `engine`: only providers of that name or kind */
    bool library_voice;        /* voice names a voice-library voice (the access line's voice_id) */
} th_api_ctx;

/** Registers every route and the hub's HTTP handler. 0 or -1 (ENOMEM). */
int th_api_register(th_hub *hub);
/** The HTTP server's handler: makes the ctx, then dispatches through the router. */
void th_api_handle(th_http_req *req, void *ud);
/** The handler of the metrics_listen server (its own router). */
void th_api_handle_metrics(th_http_req *req, void *ud);
size_t th_api_body_limit(th_http_req *req, void *ud);

/** The caller-shaped error body with the right status and type; logs; frees ctx. */
void th_api_error(th_api_ctx *c, int status, const char *type, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/** The default error type of a status (API.md table). */
const char *th_api_error_type(int status);
/** Status, type and code for a provider error. */
void th_api_perr_status(const th_perr *e, int *status, const char **type, const char **code);
/** Answers with a body; logs; frees ctx. */
void th_api_reply(th_api_ctx *c, int status, const char *content_type, const void *body, size_t len);
/** A JSON answer (o is stolen; NULL, or a failed dump, becomes a 500), not cached. */
void th_api_json(th_api_ctx *c, int status, json_t *o);
/** The request body as a JSON object (bounded depth); NULL with a 400 (error code `code`) sent when it is
 * not one. optional: an empty body is {}. */
json_t *th_api_body_object(th_api_ctx *c, bool optional, const char *code);
/** application/json or any +json type. */
bool th_api_is_json_type(const char *content_type);
/** A state-changing method with an Origin that is not this host's (Host or X-Forwarded-Host); the
 * synthesis routes are not state-changing (and ttsfm's client sends a foreign Origin). */
bool th_api_cross_site(th_http_req *req);
/** Sets X-Request-Id from a client-given id (generation) if it is acceptable; false if not. */
bool th_api_set_request_id(th_api_ctx *c, const char *id);
/** Writes the access line (status, bytes, durations) for c. */
void th_api_log(th_api_ctx *c, int status);
void th_api_ctx_free(th_api_ctx *c);

/** Runs a synthesis and streams its audio as the response (audio or SSE); answers errors before the
 * first byte in c's shape, cuts the response after it. Takes over c. */
void th_api_speak(th_api_ctx *c, const th_synth_params *p);

/** Authenticates the request (hub->auth). Answers 401 (or 403 when admin is required and missing)
 * itself and returns -1; on success fills c->id and c->tconf. */
int th_api_auth(th_api_ctx *c, bool admin);

/** Shared checks of synthesis fields. Each answers the error itself and returns -1 when bad. */
int th_api_check_input(th_api_ctx *c, const char *field, const char *text, size_t len, size_t *chars);
int th_api_check_format(th_api_ctx *c, const char *field, const char *name, th_fmt *fmt);
int th_api_check_speed(th_api_ctx *c, const char *field, const char *s, double *speed);

/* route handlers */
void th_api_ttsfm_generate(th_http_req *req, void *ud);
void th_api_health(th_http_req *req, void *ud);
void th_api_page(th_http_req *req, void *ud);
void th_api_miss(th_http_req *req, int status, const char *allow, void *ud);
void th_api_openai_speech(th_http_req *req, void *ud);
void th_api_openai_models(th_http_req *req, void *ud);
void th_api_openai_voices(th_http_req *req, void *ud);
void th_api_metrics(th_http_req *req, void *ud);
void th_api_admin_usage(th_http_req *req, void *ud);
void th_api_admin_providers(th_http_req *req, void *ud);
void th_api_admin_config(th_http_req *req, void *ud);
void th_api_admin_reload(th_http_req *req, void *ud);
/* control.c: the /health document (status: healthy, degraded or unhealthy) */
json_t *th_api_health_doc(th_hub *hub, const char **status);
/* status.c: /api/status, announcements, the /ws live feed */
void th_api_status(th_http_req *req, void *ud);
void th_api_ws(th_http_req *req, void *ud);
void th_api_announcements_list(th_http_req *req, void *ud);
void th_api_announcements_add(th_http_req *req, void *ud);
void th_api_announcements_delete(th_http_req *req, void *ud);
/** The feed: created with the hub (after the registry), closed to clients on SIGTERM, freed at the end. */
int th_api_feed_new(th_hub *hub);
void th_api_feed_shutdown(th_hub *hub);
void th_api_feed_free(th_hub *hub);
size_t th_api_feed_clients(const th_hub *hub);
/** Pushes {type, data, timestamp} to every /ws client (data is stolen). */
void th_api_feed_publish(th_hub *hub, const char *type, json_t *data);
/* voices.c: the voice library and the voice-clone routes (API.md "Voice-clone routes") */
void th_api_voices_extract(th_http_req *req, void *ud);
void th_api_voices_list(th_http_req *req, void *ud);
void th_api_voices_get(th_http_req *req, void *ud);
void th_api_voices_audio(th_http_req *req, void *ud);
void th_api_voices_patch(th_http_req *req, void *ud);
void th_api_voices_delete(th_http_req *req, void *ud);
void th_api_clone_synthesize(th_http_req *req, void *ud);
void th_api_clone_batch(th_http_req *req, void *ud);
/** The voice-clone fields besides the text (voice_id, engine, output_format, speed, pitch, language) into
 * p; 0, or -1 with the error answered. */
struct th_form;
int th_api_clone_fields(th_api_ctx *c, const struct th_form *f, th_synth_params *p);
/* nodes.c: the worker registry's control routes */
void th_api_nodes_register(th_http_req *req, void *ud);
void th_api_nodes_heartbeat(th_http_req *req, void *ud);
void th_api_nodes_delete(th_http_req *req, void *ud);
void th_api_nodes_list(th_http_req *req, void *ud);
void th_api_nodes_get(th_http_req *req, void *ud);
void th_api_nodes_command(th_http_req *req, void *ud);
/** True when the request carries the cluster token (compared by hash, in constant time). */
bool th_api_cluster_token_ok(th_api_ctx *c);
/** The 403 of protected mode (auth.mode none on a public listener), saying how to open the route. */
void th_api_protected_error(th_api_ctx *c);

#endif
