/* fake_hub: a hub with scripted provider doubles, for unit tests of routing and synthesis.
 *
 *   fh_world w;
 *   fh_open(&w, yaml);                  // a config from YAML; one double per providers[] entry
 *   fh_script(w.fp[0], FH_FAIL, TH_PERR_STATUS);   // the next job of provider 0 fails before audio
 *   ... th_synth_start(&w.hub, ...), hl_run_until(&w.loop, ...) ...
 *   fh_close(&w);
 *
 * Each double answers a job from a 0 ms timer (never inside start), following its script one step per
 * job (the last step repeats): OK sends a PCM format and two chunks then done; FAIL errors before any
 * audio; CUT sends one chunk then errors; HANG does nothing until cancelled; EMPTY is done with no audio;
 * STALL sends one chunk and then waits for fh_fail_now().
 * voice_ok refuses the voices listed in `refuse` (comma-separated); can_clone is set per double.
 */
#ifndef TH_TEST_FAKE_HUB_H
#define TH_TEST_FAKE_HUB_H

#include "hub/hub.h"
#include "hub/route.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define FH_MAX_PROV 8
#define FH_MAX_STEPS 8
#define FH_CHUNK 960 /* 20 ms of s16 mono at 24 kHz */

typedef enum { FH_OK = 0, FH_FAIL, FH_CUT, FH_HANG, FH_EMPTY, FH_STALL } fh_act;

typedef struct fh_step {
    fh_act act;
    th_perr_kind kind;
} fh_step;

typedef struct fh_prov {
    th_provider base;
    fh_step steps[FH_MAX_STEPS];
    int nsteps;
    int started;   /* jobs started */
    int cancelled; /* jobs cancelled by the hub */
    int live;      /* jobs not yet ended or cancelled */
    char refuse[64];
    char last_voice[64];
    double last_speed;
    bool had_ref;
    uv_loop_t *loop;
    struct fh_job *cur; /* the last job started, while it lives */
    int *destroyed;     /* counts destroy() calls when set */
} fh_prov;

typedef struct fh_job {
    fh_prov *p;
    /* (the provider's cur points here while the job lives) */
    th_sink sink;
    fh_act act;
    th_perr_kind kind;
    uv_timer_t t;
    bool ended;
} fh_job;

typedef struct fh_world {
    uv_loop_t loop;
    th_hub hub;
    uv_check_t reaper;
    th_provider *provs[FH_MAX_PROV];
    fh_prov *fp[FH_MAX_PROV];
    th_provider *provs2[FH_MAX_PROV]; /* hub->providers after fh_reload-style swaps in a test */
} fh_world;

/* The hub's deferred-free list (hub.c keeps it private; this mirrors its record to run it from a test). */
struct th_hub_deferred {
    struct th_hub_deferred *next;
    void (*fn)(void *);
    void *ptr;
};

__attribute__((unused)) static void fh_run_deferred(th_hub *hub)
{
    while (hub->deferred) {
        struct th_hub_deferred *list = hub->deferred;
        hub->deferred = NULL;
        hub->deferred_tail = NULL;
        while (list) {
            struct th_hub_deferred *d = list;
            list = d->next;
            d->fn(d->ptr);
            free(d);
        }
    }
}

__attribute__((unused)) static void fh_reaper(uv_check_t *h)
{
    fh_run_deferred(h->data);
}

__attribute__((unused)) static void fh_job_closed(uv_handle_t *h)
{
    free(h->data);
}

__attribute__((unused)) static void fh_job_end(fh_job *j)
{
    if (j->ended) return;
    j->ended = true;
    j->p->live--;
    if (j->p->cur == j) j->p->cur = NULL;
    uv_close((uv_handle_t *)&j->t, fh_job_closed);
}

__attribute__((unused)) static void fh_job_run(uv_timer_t *t)
{
    fh_job *j = t->data;
    if (j->ended) return;
    th_sink sk = j->sink;
    if (j->act == FH_HANG) return;
    if (j->act == FH_FAIL) {
        th_perr e;
        th_perr_set(&e, j->kind, j->kind == TH_PERR_CLIENT ? 400 : 500, "scripted %s",
                    th_perr_kind_name(j->kind));
        fh_job_end(j);
        sk.on_error(sk.ud, &e);
        return;
    }
    th_audio_spec spec = {TH_FMT_PCM, 24000, 1, TH_SAMPLE_S16};
    if (j->act == FH_EMPTY) {
        fh_job_end(j);
        sk.on_done(sk.ud);
        return;
    }
    sk.on_format(sk.ud, &spec);
    if (j->ended) return; /* cancelled from inside the callback */
    uint8_t chunk[FH_CHUNK];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (uint8_t)(i * 7u);
    sk.on_chunk(sk.ud, chunk, sizeof chunk);
    if (j->ended || j->act == FH_STALL) return;
    if (j->act == FH_CUT) {
        th_perr e;
        th_perr_set(&e, j->kind, 500, "scripted cut");
        fh_job_end(j);
        sk.on_error(sk.ud, &e);
        return;
    }
    sk.on_chunk(sk.ud, chunk, sizeof chunk);
    if (j->ended) return;
    fh_job_end(j);
    sk.on_done(sk.ud);
}

__attribute__((unused)) static th_job *fh_start(th_provider *bp, const th_synth_req *req, const th_sink *sink)
{
    fh_prov *p = (fh_prov *)bp;
    fh_job *j = calloc(1, sizeof *j);
    if (j == NULL) return NULL;
    int step = p->started < p->nsteps ? p->started : p->nsteps - 1;
    j->act = p->nsteps ? p->steps[step].act : FH_OK;
    j->kind = p->nsteps ? p->steps[step].kind : TH_PERR_NONE;
    p->started++;
    p->live++;
    snprintf(p->last_voice, sizeof p->last_voice, "%s", req->voice ? req->voice : "");
    p->last_speed = req->speed;
    p->had_ref = req->ref != NULL;
    j->p = p;
    j->sink = *sink;
    p->cur = j;
    uv_timer_init(p->loop, &j->t);
    j->t.data = j;
    uv_timer_start(&j->t, fh_job_run, 0, 0);
    return (th_job *)j;
}

/* Lets p's live HANG job answer now as OK would; false when none lives. */
__attribute__((unused)) static bool fh_go(fh_prov *p)
{
    fh_job *j = p->cur;
    if (j == NULL || j->ended) return false;
    j->act = FH_OK;
    fh_job_run(&j->t);
    return true;
}

/* Fails p's live job now (a STALL or HANG job); false when none lives. */
__attribute__((unused)) static bool fh_fail_now(fh_prov *p, th_perr_kind kind)
{
    fh_job *j = p->cur;
    if (j == NULL || j->ended) return false;
    th_sink sk = j->sink;
    th_perr e;
    th_perr_set(&e, kind, 500, "scripted failure");
    fh_job_end(j);
    sk.on_error(sk.ud, &e);
    return true;
}

__attribute__((unused)) static void fh_cancel(th_job *job)
{
    fh_job *j = (fh_job *)job;
    if (j->ended) return;
    j->p->cancelled++;
    fh_job_end(j);
}

__attribute__((unused)) static int fh_voice_ok(th_provider *bp, const char *voice)
{
    fh_prov *p = (fh_prov *)bp;
    char list[80];
    snprintf(list, sizeof list, ",%s,", p->refuse);
    char want[80];
    snprintf(want, sizeof want, ",%s,", voice);
    return strstr(list, want) ? -1 : 0;
}

__attribute__((unused)) static void fh_destroy(th_provider *bp)
{
    fh_prov *p = (fh_prov *)bp;
    if (p->destroyed) (*p->destroyed)++;
    free(bp);
}

static const th_provider_ops fh_ops = {
    .kind = "fake",
    .destroy = fh_destroy,
    .start = fh_start,
    .cancel = fh_cancel,
    .voice_ok = fh_voice_ok,
};

/* Scripts the next jobs of p: pairs of (act, kind), n steps. */
__attribute__((unused)) static void fh_script(fh_prov *p, int n, const fh_step *steps)
{
    p->nsteps = n < FH_MAX_STEPS ? n : FH_MAX_STEPS;
    memcpy(p->steps, steps, (size_t)p->nsteps * sizeof *steps);
}

__attribute__((unused)) static th_config *fh_parse(const char *yaml)
{
    th_config_errors errs = {0};
    th_config *c = th_config_parse(yaml, strlen(yaml), &errs);
    for (size_t i = 0; c == NULL && i < errs.n; i++)
        fprintf(stderr, "  %s: %s\n", errs.items[i].path, errs.items[i].message);
    th_config_errors_free(&errs);
    return c;
}

/* A double for provider section pc (NULL on ENOMEM). */
__attribute__((unused)) static fh_prov *fh_new_prov(fh_world *w, const th_provider_conf *pc)
{
    fh_prov *p = calloc(1, sizeof *p);
    if (p == NULL) return NULL;
    p->base.ops = &fh_ops;
    p->base.conf = pc;
    p->base.caps.streaming = true;
    p->loop = &w->loop;
    return p;
}

/* A hub over yaml's config with one double per provider section. 0 or -1. */
__attribute__((unused)) static int fh_open(fh_world *w, const char *yaml)
{
    memset(w, 0, sizeof *w);
    if (uv_loop_init(&w->loop) != 0) return -1;
    w->hub.loop = &w->loop;
    w->hub.cfg = fh_parse(yaml);
    if (w->hub.cfg == NULL || w->hub.cfg->n_providers > FH_MAX_PROV) return -1;
    w->hub.log = th_log_new(TH_LOG_OFF, TH_LOG_TEXT, NULL);
    if (w->hub.log == NULL) return -1;
    for (size_t i = 0; i < w->hub.cfg->n_providers; i++) {
        fh_prov *p = fh_new_prov(w, &w->hub.cfg->providers[i]);
        if (p == NULL) return -1;
        w->fp[i] = p;
        w->provs[i] = &p->base;
    }
    w->hub.providers = w->provs;
    w->hub.n_providers = w->hub.cfg->n_providers;
    if (th_route_init(&w->hub.route, &w->hub) != 0) return -1;
    uv_check_init(&w->loop, &w->reaper);
    w->reaper.data = &w->hub;
    uv_check_start(&w->reaper, fh_reaper);
    return 0;
}

/* The route's record of provider i. */
__attribute__((unused)) static th_route_prov *fh_rp(fh_world *w, size_t i)
{
    return w->hub.route.provs[i];
}

/* Frees everything; 0, or -1 when a handle was left open (a job or timer nobody closed). */
__attribute__((unused)) static int fh_close(fh_world *w)
{
    fh_run_deferred(&w->hub);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    fh_run_deferred(&w->hub);
    th_route_free(&w->hub.route);
    uv_check_stop(&w->reaper);
    uv_close((uv_handle_t *)&w->reaper, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    fh_run_deferred(&w->hub);
    int rc = uv_loop_close(&w->loop) == 0 ? 0 : -1;
    th_log_free(w->hub.log);
    th_config_unref(w->hub.cfg);
    return rc;
}

#endif
