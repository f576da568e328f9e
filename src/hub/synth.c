/* synth: routing, retries, fallback, hedging, long-text stitching, conversion. */
#include "hub/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio/stream.h"
#include "core/clock.h"
#include "core/str.h"
#include "observability/metrics.h"
#include "routing/split.h"
#include "voice/library.h"

/* Unconverted input past this pauses the provider; below the low mark it resumes. */
#define PENDING_HIGH (512u * 1024u)
#define PENDING_LOW (128u * 1024u)
#define MAX_CANDIDATES 16

typedef struct part part;
typedef struct attempt attempt;

struct attempt {
    th_synth *s;
    part *pt;
    size_t cand;         /* index into s->cand */
    th_route_prov *prov; /* the provider (a reference held by the synth's candidates) */
    th_job *job;
    th_route_waiter waiter;
    th_audio_stream *conv;
    th_synth_req req;
    bool queued;  /* waiting for a slot */
    bool slot;    /* holds a slot */
    bool allowed; /* the breaker let it through and no outcome was recorded yet */
    bool live;    /* the provider may still call us */
    bool paused;  /* we asked the provider to pause */
    bool ended;   /* finished one way or the other */
    uint64_t start_us, first_us;
    attempt *next_all; /* every attempt of the synth, for cleanup */
    th_span *span;     /* CLIENT span of this attempt (NULL when not traced) */
    char traceparent[TH_TRACEPARENT_LEN + 1];
};

struct part {
    th_synth *s;
    size_t index;
    const char *text;
    size_t len, chars;
    size_t cand_next;  /* next candidate to fall back to (a position, see cand_of) */
    size_t rot;        /* long text: part i starts at candidate i, so parts spread over providers */
    int retries_left;  /* on the current candidate */
    attempt *a[2];     /* the primary and, with hedging, one more */
    attempt *winner;   /* the attempt whose audio is used */
    uv_timer_t *hedge; /* separately allocated; freed in its close callback */
    th_buf out;        /* converted PCM waiting for its turn (long text) */
    bool started, done, current;
    bool saw_overload;
    th_perr last;
    bool have_last;
};

struct th_synth {
    th_hub *hub;
    th_config *cfg; /* a reference: the config in force when the request started */
    th_synth_cb cb;
    char *text, *voice, *language, *prompt, *model, *generation, *tenant;
    size_t text_len, chars;
    th_fmt fmt;
    int rate;
    double speed, pitch;
    th_route_prov *cand[MAX_CANDIDATES]; /* one reference each */
    const char *cand_voice[MAX_CANDIDATES];
    size_t ncand;
    part *parts;
    size_t nparts;
    size_t cur;              /* the part whose audio flows now */
    size_t next_part;        /* the next part to start */
    th_audio_stream *stitch; /* long text: PCM -> the client's format */
    attempt *all;
    uint64_t start_us, first_us;
    uint64_t bytes_out;
    const char *provider_name;
    char node_id[72]; /* the worker node that answered (the winner's), or "" */
    th_trace_ctx trace;
    th_vlib_use *clone; /* a library voice: its reference goes with every attempt */
    bool out_paused;
    bool finished, freed;
};

static bool multi(const th_synth *s)
{
    return s->nparts > 1;
}

static th_metrics *M(const th_synth *s)
{
    return s->hub->metrics;
}

static const char *pname(const th_synth *s, const th_route_prov *prov)
{
    (void)s;
    return prov->p->conf->name;
}

/* The candidate index at position k of a part's own order. */
static size_t cand_of(const part *pt, size_t k)
{
    return (k + pt->rot) % pt->s->ncand;
}

/* ---- teardown ---- */

static void hedge_closed(uv_handle_t *h)
{
    free(h);
}

static void stop_hedge(part *pt)
{
    if (pt->hedge) {
        pt->hedge->data = NULL;
        uv_timer_stop(pt->hedge);
        uv_close((uv_handle_t *)pt->hedge, hedge_closed);
        pt->hedge = NULL;
    }
}

/* Ends an attempt: cancels its job, gives back its slot and breaker allowance, closes its converter. */
static void drop_attempt(attempt *a, bool record_none)
{
    th_route_prov *r = a->prov;
    if (a->ended) return;
    a->ended = true;
    if (a->queued) {
        th_route_unwait(r, &a->waiter);
        a->queued = false;
    }
    if (a->live && a->job) th_provider_cancel(r->p, a->job);
    a->live = false;
    a->job = NULL;
    if (a->slot) {
        a->slot = false;
        th_route_release(r);
    }
    if (a->allowed) {
        a->allowed = false;
        if (record_none) th_route_outcome_none(r);
    }
    if (a->conv) {
        th_audio_stream_close(a->conv);
        a->conv = NULL;
    }
    if (a->span) {
        th_span_end(a->span);
        a->span = NULL;
    }
    for (int k = 0; k < 2; k++)
        if (a->pt->a[k] == a) a->pt->a[k] = NULL;
}

static void reap(void *p)
{
    th_synth *s = p;
    while (s->all) {
        attempt *a = s->all;
        s->all = a->next_all;
        free(a);
    }
    for (size_t i = 0; i < s->nparts; i++)
        th_buf_free(&s->parts[i].out);
    free(s->parts);
    if (s->stitch) th_audio_stream_close(s->stitch);
    free(s->text);
    free(s->voice);
    free(s->language);
    free(s->prompt);
    free(s->model);
    free(s->generation);
    free(s->tenant);
    th_vlib_use_release(s->clone);
    for (size_t k = 0; k < s->ncand; k++)
        th_route_prov_unref(s->cand[k]);
    th_config_unref(s->cfg);
    free(s);
}

static void stop_all(th_synth *s)
{
    for (attempt *a = s->all; a; a = a->next_all)
        drop_attempt(a, true);
    for (size_t i = 0; i < s->nparts; i++)
        stop_hedge(&s->parts[i]);
}

static void release(th_synth *s)
{
    if (s->freed) return;
    s->freed = true;
    stop_all(s);
    th_hub_defer(s->hub, reap, s);
}

void th_synth_free(th_synth *s)
{
    if (s) release(s);
}

void th_synth_cancel(th_synth *s)
{
    if (s) release(s);
}

const char *th_synth_node(const th_synth *s)
{
    return s != NULL && s->node_id[0] != 0 ? s->node_id : NULL;
}

const char *th_synth_provider(const th_synth *s)
{
    return s->provider_name ? s->provider_name : "";
}

size_t th_synth_parts(const th_synth *s)
{
    return s->nparts;
}

double th_synth_upstream_ms(const th_synth *s)
{
    if (s->first_us == 0) return -1;
    return (double)(s->first_us - s->start_us) / 1000.0;
}

static void fail(th_synth *s, const th_perr *e)
{
    if (s->finished || s->freed) return;
    s->finished = true;
    stop_all(s);
    if (s->bytes_out > 0 && M(s)) {
        const char *lbl[] = {s->provider_name ? s->provider_name : "", NULL};
        th_metrics_add(M(s), TH_M_CUT_RESPONSES, lbl, 1);
    }
    s->cb.on_error(s->cb.ud, e, s->bytes_out);
}

/* ---- output to the caller ---- */

static void emit(th_synth *s, const uint8_t *data, size_t len)
{
    if (s->freed || s->finished || len == 0) return;
    if (s->bytes_out == 0) s->cb.on_start(s->cb.ud, th_synth_provider(s));
    if (s->freed) return;
    s->bytes_out += len;
    if (s->cb.on_data(s->cb.ud, data, len) == 1) s->out_paused = true;
}

static void finish_ok(th_synth *s)
{
    if (s->freed || s->finished) return;
    s->finished = true;
    s->cb.on_done(s->cb.ud);
}

/* Resumes paused providers whose converters have drained. */
static void maybe_resume(th_synth *s)
{
    if (s->freed || s->finished) return;
    for (attempt *a = s->all; a; a = a->next_all) {
        if (!a->paused || !a->live || a->ended) continue;
        bool flows_to_client = !multi(s) || a->pt->current;
        if (flows_to_client && s->out_paused) continue;
        if (a->conv && th_audio_stream_pending(a->conv) > PENDING_LOW) continue;
        if (s->stitch && flows_to_client && th_audio_stream_pending(s->stitch) > PENDING_LOW) continue;
        a->paused = false;
        th_provider_resume(a->prov->p, a->job);
        if (s->freed) return;
    }
}

void th_synth_resume(th_synth *s)
{
    if (s == NULL || s->freed) return;
    s->out_paused = false;
    maybe_resume(s);
}

/* ---- long text: the stitch encoder ---- */

static void st_data(void *ud, const uint8_t *data, size_t len)
{
    th_synth *s = ud;
    if (len > 0) emit(s, data, len);
    if (!s->freed) maybe_resume(s);
}

static void st_done(void *ud)
{
    finish_ok(ud);
}

static void st_error(void *ud, const char *msg)
{
    th_synth *s = ud;
    th_perr e;
    th_perr_set(&e, TH_PERR_INTERNAL, 0, "encoding the joined audio failed: %s", msg);
    fail(s, &e);
}

static void start_parts(th_synth *s);

/* The current part is complete: the next one's buffered audio goes out, and so on. */
static void advance(th_synth *s)
{
    while (!s->freed && !s->finished && s->cur < s->nparts && s->parts[s->cur].done) {
        s->parts[s->cur].current = false;
        th_buf_free(&s->parts[s->cur].out);
        s->cur++;
        if (s->cur == s->nparts) {
            th_audio_stream_finish(s->stitch);
            return;
        }
        part *nx = &s->parts[s->cur];
        nx->current = true;
        if (nx->out.len && th_audio_stream_push(s->stitch, nx->out.data, nx->out.len) != 0) {
            th_perr e;
            th_perr_set(&e, TH_PERR_INTERNAL, 0, "out of memory");
            fail(s, &e);
            return;
        }
        th_buf_free(&nx->out);
        start_parts(s);
    }
    maybe_resume(s);
}

/* ---- one attempt's converter ---- */

static void cv_data(void *ud, const uint8_t *data, size_t len)
{
    attempt *a = ud;
    th_synth *s = a->s;
    if (s->freed || s->finished || a->pt->winner != a) return;
    if (len == 0) { /* the converter took input and holds it (Ogg): room to read more */
        maybe_resume(s);
        return;
    }
    if (!multi(s)) {
        emit(s, data, len);
    } else if (a->pt->current) {
        if (th_audio_stream_push(s->stitch, data, len) != 0) {
            th_perr e;
            th_perr_set(&e, TH_PERR_INTERNAL, 0, "out of memory");
            fail(s, &e);
            return;
        }
    } else if (th_buf_append(&a->pt->out, data, len) != TH_BUF_OK) {
        th_perr e;
        if (a->pt->out.len + len > a->pt->out.max) /* held until its turn: limits.max_buffered_audio */
            th_perr_set(&e, TH_PERR_PROTOCOL, 0, "a part's audio is larger than limits.max_buffered_audio");
        else
            th_perr_set(&e, TH_PERR_INTERNAL, 0, "out of memory");
        fail(s, &e);
        return;
    }
    if (!s->freed) maybe_resume(s);
}

static void cv_done(void *ud)
{
    attempt *a = ud;
    th_synth *s = a->s;
    part *pt = a->pt;
    if (s->freed || s->finished || pt->winner != a) return;
    if (M(s)) {
        const char *lbl[] = {th_fmt_name(s->fmt), NULL};
        th_metrics_observe(M(s), TH_M_TRANSCODE_SECONDS, lbl, th_audio_stream_cpu_seconds(a->conv));
    }
    pt->done = true;
    if (!multi(s)) {
        finish_ok(s);
        return;
    }
    if (pt->current) advance(s);
    start_parts(s);
}

static void cv_error(void *ud, const char *msg)
{
    attempt *a = ud;
    th_synth *s = a->s;
    th_perr e;
    th_perr_set(&e, TH_PERR_PROTOCOL, 0, "audio from %s could not be decoded: %s", pname(s, a->prov), msg);
    if (a->allowed) {
        a->allowed = false;
        th_route_outcome(a->prov, false, -1);
    }
    fail(s, &e);
}

/* ---- attempts ---- */

static void try_next(part *pt, const th_perr *why);
static void launch(attempt *a);

static th_audio_target target_for(const th_synth *s, const th_caps *caps, double *engine_speed)
{
    double speed = s->speed > 0 ? s->speed : 1.0;
    double es = 1.0;
    if (caps->native_speed) {
        es = speed;
        if (es < caps->speed_min) es = caps->speed_min;
        if (es > caps->speed_max) es = caps->speed_max;
    }
    *engine_speed = es;
    th_audio_target t = {
        .fmt = multi(s) ? TH_FMT_PCM : s->fmt,
        .sample_rate = s->rate,
        .tempo = speed / es,
        .bitrate = 0,
        .wav_data_len = 0xFFFFFFFFu,
        .max_buffered = s->hub->cfg->limits.max_buffered_audio,
    };
    if (t.tempo > 0.999 && t.tempo < 1.001) t.tempo = 1.0;
    return t;
}

static void a_format(void *ud, const th_audio_spec *spec)
{
    attempt *a = ud;
    th_synth *s = a->s;
    if (a->ended || a->conv) return;
    double es;
    th_audio_target t = target_for(s, &a->prov->p->caps, &es);
    static const th_audio_stream_cb tmpl = {cv_data, cv_done, cv_error, NULL};
    th_audio_stream_cb cb = tmpl;
    cb.ud = a;
    char err[200] = "";
    a->conv = th_audio_stream_new(s->hub->loop, spec, &t, &cb, err, sizeof err);
    if (a->conv == NULL) {
        th_perr e;
        th_perr_set(&e, TH_PERR_PROTOCOL, 0, "cannot convert the audio of %s: %s", pname(s, a->prov), err);
        part *pt = a->pt;
        if (a->allowed) {
            a->allowed = false;
            th_route_outcome(a->prov, false, -1);
        }
        drop_attempt(a, true);
        if (pt->winner == NULL && pt->a[0] == NULL && pt->a[1] == NULL) try_next(pt, &e);
    }
}

static int a_chunk(void *ud, const uint8_t *data, size_t len)
{
    attempt *a = ud;
    th_synth *s = a->s;
    part *pt = a->pt;
    if (a->ended || s->freed || s->finished) return 1;
    if (pt->winner == NULL) {
        pt->winner = a;
        a->first_us = th_mono_us();
        if (s->first_us == 0) s->first_us = a->first_us;
        if (s->provider_name == NULL) s->provider_name = pname(s, a->prov);
        const th_provider *wp = a->prov->p;
        const char *nid = wp->ops->job_node != NULL && a->job != NULL ? wp->ops->job_node(a->job) : NULL;
        if (s->node_id[0] == 0 && nid != NULL) th_strlcpy(s->node_id, nid, sizeof s->node_id);
        stop_hedge(pt);
        for (int k = 0; k < 2; k++) {
            attempt *o = pt->a[k];
            if (o && o != a) drop_attempt(o, true); /* the hedge lost */
        }
        if (M(s)) {
            const char *lbl[] = {pname(s, a->prov), NULL};
            th_metrics_observe(M(s), TH_M_UPSTREAM_SECONDS, lbl, (double)(a->first_us - a->start_us) / 1e6);
        }
    } else if (pt->winner != a) {
        return 1;
    }
    if (a->conv == NULL) {
        th_audio_spec unknown = {TH_FMT_NONE, 0, 0, TH_SAMPLE_S16};
        a_format(a, &unknown);
        if (a->conv == NULL || a->ended) return 1;
    }
    if (th_audio_stream_push(a->conv, data, len) != 0) {
        th_perr e;
        th_perr_set(&e, TH_PERR_INTERNAL, 0, "out of memory");
        fail(s, &e);
        return 1;
    }
    if (s->freed || s->finished || a->ended) return 1;
    bool to_client = !multi(s) || pt->current;
    if ((to_client && s->out_paused) || th_audio_stream_pending(a->conv) > PENDING_HIGH ||
        (to_client && s->stitch && th_audio_stream_pending(s->stitch) > PENDING_HIGH)) {
        a->paused = true;
        return 1;
    }
    return 0;
}

static void a_done(void *ud)
{
    attempt *a = ud;
    th_synth *s = a->s;
    part *pt = a->pt;
    a->live = false;
    a->job = NULL;
    if (a->ended) return;
    th_route_prov *r = a->prov;
    if (a->slot) {
        a->slot = false;
        th_route_release(r);
    }
    if (s->freed || s->finished) return;
    if (pt->winner != a || a->conv == NULL) {
        /* a 2xx with no audio at all */
        th_perr e;
        th_perr_set(&e, TH_PERR_PROTOCOL, 0, "%s returned no audio", pname(s, a->prov));
        if (a->allowed) {
            a->allowed = false;
            th_route_outcome(r, false, -1);
        }
        drop_attempt(a, false);
        if (pt->winner == NULL && pt->a[0] == NULL && pt->a[1] == NULL) try_next(pt, &e);
        return;
    }
    if (a->allowed) {
        a->allowed = false;
        th_route_outcome(r, true, (double)(a->first_us - a->start_us) / 1000.0);
    }
    th_audio_stream_finish(a->conv);
}

static bool counts_as_failure(th_perr_kind k)
{
    return k != TH_PERR_CLIENT && k != TH_PERR_CANCELLED;
}

static void a_error(void *ud, const th_perr *err)
{
    attempt *a = ud;
    th_synth *s = a->s;
    part *pt = a->pt;
    a->live = false;
    a->job = NULL;
    if (a->ended) return;
    th_route_prov *r = a->prov;
    if (a->allowed) {
        a->allowed = false;
        if (counts_as_failure(err->kind))
            th_route_outcome(r, false, -1);
        else
            th_route_outcome_none(r);
    }
    if (M(s)) {
        const char *lbl[] = {pname(s, a->prov), th_perr_kind_name(err->kind), NULL};
        th_metrics_add(M(s), TH_M_UPSTREAM_ERRORS, lbl, 1);
    }
    if (a->span) {
        th_span_attr_str(a->span, "error.type", th_perr_kind_name(err->kind));
        if (err->status) th_span_attr_int(a->span, "http.response.status_code", err->status);
        th_span_error(a->span, err->message);
    }
    bool was_winner = pt->winner == a;
    drop_attempt(a, false);
    if (s->freed || s->finished) return;
    if (was_winner) {
        /* after the first byte: no retry, the response is cut */
        fail(s, err);
        return;
    }
    if (pt->a[0] || pt->a[1]) return; /* a hedge is still running */
    try_next(pt, err);
}

static void granted(void *ud)
{
    attempt *a = ud;
    a->queued = false;
    a->slot = true;
    launch(a);
}

static attempt *new_attempt(part *pt, size_t cand)
{
    th_synth *s = pt->s;
    attempt *a = calloc(1, sizeof *a);
    if (a == NULL) return NULL;
    a->s = s;
    a->pt = pt;
    a->cand = cand;
    a->prov = s->cand[cand];
    a->waiter.grant = granted;
    a->waiter.ud = a;
    a->next_all = s->all;
    s->all = a;
    return a;
}

static void hedge_fire(uv_timer_t *t);

static void launch(attempt *a)
{
    th_synth *s = a->s;
    part *pt = a->pt;
    th_route_prov *rp = a->prov;
    double es;
    (void)target_for(s, &rp->p->caps, &es);
    a->req = (th_synth_req){
        .text = pt->text,
        .text_len = pt->len,
        .chars = pt->chars,
        .voice = s->cand_voice[a->cand],
        .language = s->language,
        .prompt = s->prompt,
        .model = s->model,
        .generation = s->generation,
        .want_fmt = multi(s) ? TH_FMT_PCM : s->fmt,
        .want_rate = s->rate,
        .speed = es,
        .pitch = s->pitch,
        .ref = s->clone ? th_vlib_use_ref(s->clone) : NULL,
    };
    if (s->trace.valid && s->hub->tracer && a->span == NULL) {
        char name[96];
        snprintf(name, sizeof name, "synthesize %s", pname(s, a->prov));
        a->span = th_span_start(s->hub->tracer, name, TH_SPAN_CLIENT, &s->trace);
        th_span_attr_str(a->span, "ttshub.provider", pname(s, a->prov));
        th_span_attr_str(a->span, "ttshub.provider.type", rp->p->conf->type);
        th_span_attr_int(a->span, "ttshub.part", (int64_t)pt->index);
        th_span_attr_int(a->span, "ttshub.characters", (int64_t)pt->chars);
        if (a->span) {
            th_trace_ctx tc;
            th_span_ctx(a->span, &tc);
            th_trace_format_parent(&tc, a->traceparent);
            a->req.traceparent = a->traceparent;
        }
    }
    static const th_sink tmpl = {a_format, a_chunk, a_done, a_error, NULL};
    th_sink sink = tmpl;
    sink.ud = a;
    a->start_us = th_mono_us();
    a->job = th_provider_start(rp->p, &a->req, &sink);
    if (a->job == NULL) {
        th_perr e;
        th_perr_set(&e, TH_PERR_INTERNAL, 0, "provider %s could not start", pname(s, a->prov));
        drop_attempt(a, true);
        if (pt->winner == NULL && pt->a[0] == NULL && pt->a[1] == NULL) try_next(pt, &e);
        return;
    }
    a->live = true;
    /* hedging: only for the primary attempt, when another candidate exists */
    uint64_t hedge_ms = s->cfg->router.hedge_after_ms;
    if (hedge_ms > 0 && pt->hedge == NULL && pt->a[1] == NULL && pt->cand_next < s->ncand) {
        pt->hedge = malloc(sizeof *pt->hedge);
        if (pt->hedge) {
            uv_timer_init(s->hub->loop, pt->hedge);
            pt->hedge->data = pt;
            uv_timer_start(pt->hedge, hedge_fire, hedge_ms, 0);
        }
    }
}

/* Starts an attempt on candidate cand. Returns false when it could not even be queued (breaker open,
 * queue full). */
static bool begin(part *pt, size_t pos, int slot_index)
{
    th_synth *s = pt->s;
    size_t cand = cand_of(pt, pos);
    th_route_prov *prov = s->cand[cand];
    if (!th_route_prov_available(prov) || !th_route_allow(prov)) return false;
    attempt *a = new_attempt(pt, cand);
    if (a == NULL) {
        th_route_outcome_none(prov);
        return false;
    }
    a->allowed = true;
    pt->a[slot_index] = a;
    switch (th_route_acquire(prov, &a->waiter)) {
    case TH_SLOT_NOW:
        a->slot = true;
        launch(a);
        return true;
    case TH_SLOT_QUEUED:
        a->queued = true;
        return true;
    case TH_SLOT_FULL:
    default:
        pt->saw_overload = true;
        drop_attempt(a, true);
        return false;
    }
}

static void hedge_fire(uv_timer_t *t)
{
    part *pt = t->data;
    if (pt == NULL) return;
    stop_hedge(pt);
    th_synth *s = pt->s;
    if (s->freed || s->finished || pt->winner || pt->a[1]) return;
    while (pt->cand_next < s->ncand) {
        size_t c = pt->cand_next++;
        int slot = pt->a[0] ? 1 : 0;
        if (begin(pt, c, slot)) {
            const char *to = pname(s, s->cand[cand_of(pt, c)]);
            if (M(s)) {
                const char *lbl[] = {to, NULL};
                th_metrics_add(M(s), TH_M_HEDGES, lbl, 1);
            }
            TH_LOG(s->hub->log, TH_LOG_INFO, "request %s: hedging to %s", s->generation ? s->generation : "",
                   to);
            return;
        }
    }
}

/* Before the first byte of a part: retry once on the same provider, then fall back. */
static void try_next(part *pt, const th_perr *why)
{
    th_synth *s = pt->s;
    if (s->freed || s->finished) return;
    if (why) {
        pt->last = *why;
        pt->have_last = true;
        if (why->kind == TH_PERR_OVERLOADED) pt->saw_overload = true;
        if (why->kind == TH_PERR_CLIENT || why->kind == TH_PERR_INTERNAL) {
            fail(s, why);
            return;
        }
    }
    const th_config *cfg = s->cfg;
    /* one more go on the provider that just failed */
    if (why && pt->retries_left > 0 && pt->cand_next > 0 && why->kind != TH_PERR_OVERLOADED) {
        pt->retries_left--;
        size_t c = pt->cand_next - 1;
        if (M(s)) {
            const char *lbl[] = {pname(s, s->cand[cand_of(pt, c)]), NULL};
            th_metrics_add(M(s), TH_M_RETRIES, lbl, 1);
        }
        if (begin(pt, c, 0)) return;
    }
    th_route_prov *from = pt->cand_next > 0 ? s->cand[cand_of(pt, pt->cand_next - 1)] : NULL;
    while (pt->cand_next < s->ncand) {
        if (why && !cfg->router.fallback) break;
        size_t c = pt->cand_next++;
        pt->retries_left = cfg->router.retries;
        if (begin(pt, c, 0)) {
            const char *to = pname(s, s->cand[cand_of(pt, c)]);
            if (why && from != NULL && M(s)) {
                const char *lbl[] = {pname(s, from), to, NULL};
                th_metrics_add(M(s), TH_M_FALLBACKS, lbl, 1);
            }
            if (why)
                TH_LOG(s->hub->log, TH_LOG_INFO, "request %s: %s failed (%s), trying %s",
                       s->generation ? s->generation : "", from != NULL ? pname(s, from) : "-", why->message,
                       to);
            return;
        }
    }
    /* nothing left */
    th_perr e;
    if (pt->have_last && pt->last.kind != TH_PERR_OVERLOADED) {
        e = pt->last;
    } else {
        th_perr_set(&e, TH_PERR_OVERLOADED, 503, "no healthy provider can take this request now");
        e.retry_after_s = pt->have_last && pt->last.retry_after_s > 0 ? pt->last.retry_after_s : 1;
    }
    fail(s, &e);
}

static void start_parts(th_synth *s)
{
    while (!s->freed && !s->finished && s->next_part < s->nparts &&
           s->next_part < s->cur + TH_SYNTH_PARALLEL) {
        part *pt = &s->parts[s->next_part++];
        pt->started = true;
        try_next(pt, NULL);
    }
}

/* ---- start ---- */

int th_synth_prepare(th_hub *hub, const th_synth_params *p, th_perr *err)
{
    size_t idx[MAX_CANDIDATES];
    const char *ev[MAX_CANDIDATES];
    if (hub->n_providers == 0) {
        th_perr_set(err, TH_PERR_OVERLOADED, 0, "no provider is configured");
        return -1;
    }
    size_t n = p->clone
                   ? th_route_clone_candidates(&hub->route, p->tenant, p->voice, p->model,
                                               p->provider_allowed, p->allowed_ud, idx, ev, MAX_CANDIDATES)
                   : th_route_candidates(&hub->route, p->tenant, p->voice, p->model, p->provider_allowed,
                                         p->allowed_ud, idx, ev, MAX_CANDIDATES);
    if (n == 0) {
        if (p->clone)
            th_perr_set(err, TH_PERR_CLIENT, 400,
                        "voice '%s' is a cloned voice and no provider that can clone is available for it",
                        p->voice);
        else
            th_perr_set(err, TH_PERR_CLIENT, 400, "voice '%s' is not known to any provider", p->voice);
        return -1;
    }
    return 0;
}

static char *dup_opt(const char *s, bool *oom)
{
    if (s == NULL) return NULL;
    char *d = th_strndup(s, strlen(s));
    if (d == NULL) *oom = true;
    return d;
}

static int split_parts(th_synth *s)
{
    size_t limit = 0;
    for (size_t k = 0; k < s->ncand; k++) {
        size_t m = s->cand[k]->p->caps.max_input_chars;
        if (m > 0 && (limit == 0 || m < limit)) limit = m;
    }
    if (limit == 0 || s->chars <= limit) {
        s->parts = calloc(1, sizeof *s->parts);
        if (s->parts == NULL) return -1;
        s->nparts = 1;
        s->parts[0] = (part){.s = s, .index = 0, .text = s->text, .len = s->text_len, .chars = s->chars};
        th_buf_init(&s->parts[0].out, s->hub->cfg->limits.max_buffered_audio);
        return 0;
    }
    size_t n = 0;
    th_split_chunk *ch = th_split_text(s->text, s->text_len, limit, &n);
    if (ch == NULL) return -1;
    if (n == 0) {
        free(ch);
        return -1;
    }
    s->parts = calloc(n, sizeof *s->parts);
    if (s->parts == NULL) {
        free(ch);
        return -1;
    }
    s->nparts = n;
    for (size_t i = 0; i < n; i++) {
        s->parts[i] =
            (part){.s = s, .index = i, .text = s->text + ch[i].off, .len = ch[i].len, .chars = ch[i].chars};
        th_buf_init(&s->parts[i].out, s->hub->cfg->limits.max_buffered_audio);
    }
    free(ch);
    return 0;
}

th_synth *th_synth_start(th_hub *hub, const th_synth_params *p, const th_synth_cb *cb, th_perr *err)
{
    th_synth *s = calloc(1, sizeof *s);
    if (s == NULL) goto oom;
    s->hub = hub;
    s->cfg = th_config_ref(hub->cfg);
    s->cb = *cb;
    s->start_us = th_mono_us();
    bool nomem = false;
    s->text = th_strndup(p->text, p->text_len);
    if (s->text == NULL) nomem = true;
    s->text_len = p->text_len;
    s->chars = p->chars;
    s->voice = dup_opt(p->voice, &nomem);
    s->language = dup_opt(p->language, &nomem);
    s->prompt = dup_opt(p->prompt, &nomem);
    s->model = dup_opt(p->model, &nomem);
    s->generation = dup_opt(p->generation, &nomem);
    s->tenant = dup_opt(p->tenant, &nomem);
    if (nomem) goto oom;
    s->fmt = p->fmt;
    s->rate = p->sample_rate ? p->sample_rate : TH_PCM_DEFAULT_RATE;
    s->speed = p->speed > 0 ? p->speed : 1.0;
    s->pitch = p->pitch;
    s->trace = p->trace;

    s->clone = th_vlib_use_dup(p->clone);
    size_t idx[MAX_CANDIDATES];
    s->ncand =
        p->clone ? th_route_clone_candidates(&hub->route, s->tenant, s->voice, s->model, p->provider_allowed,
                                             p->allowed_ud, idx, s->cand_voice, MAX_CANDIDATES)
                 : th_route_candidates(&hub->route, s->tenant, s->voice, s->model, p->provider_allowed,
                                       p->allowed_ud, idx, s->cand_voice, MAX_CANDIDATES);
    for (size_t k = 0; k < s->ncand; k++)
        s->cand[k] = th_route_prov_ref(hub->route.provs[idx[k]]);
    if (s->ncand == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 400, "voice '%s' is not known to any provider", p->voice);
        reap(s);
        return NULL;
    }
    if (split_parts(s) != 0) goto oom;
    if (multi(s)) {
        static const th_audio_stream_cb tmpl = {st_data, st_done, st_error, NULL};
        th_audio_stream_cb scb = tmpl;
        scb.ud = s;
        th_audio_spec in = {TH_FMT_PCM, s->rate, 1, TH_SAMPLE_S16};
        th_audio_target t = {
            .fmt = s->fmt, .sample_rate = s->rate, .tempo = 1.0, .wav_data_len = 0xFFFFFFFFu};
        char e[200] = "";
        s->stitch = th_audio_stream_new(hub->loop, &in, &t, &scb, e, sizeof e);
        if (s->stitch == NULL) {
            th_perr_set(err, TH_PERR_INTERNAL, 0, "cannot set up the joined audio: %s", e);
            reap(s);
            return NULL;
        }
        TH_LOG(hub->log, TH_LOG_DEBUG, "request %s: %zu characters split into %zu parts",
               s->generation ? s->generation : "", s->chars, s->nparts);
    }
    s->parts[0].current = true;
    bool spread = multi(s) && strcmp(s->cfg->router.strategy, "priority") != 0;
    for (size_t i = 0; i < s->nparts; i++) {
        s->parts[i].retries_left = s->cfg->router.retries;
        s->parts[i].rot = spread ? i % s->ncand : 0;
    }
    /* Parts start on the next loop turn, so no callback runs inside this call. */
    th_hub_defer(hub, (void (*)(void *))start_parts, s);
    return s;
oom:
    if (s) reap(s);
    th_perr_set(err, TH_PERR_INTERNAL, 0, "out of memory");
    return NULL;
}
