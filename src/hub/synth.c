/* synth: provider job -> audio conversion -> the caller. */
#include "hub/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audio/stream.h"
#include "core/clock.h"
#include "core/str.h"

/* Unconverted input past this pauses the provider; below the low mark it resumes. */
#define PENDING_HIGH (512u * 1024u)
#define PENDING_LOW (128u * 1024u)

struct th_synth {
    th_hub *hub;
    th_provider *prov;
    th_job *job;
    th_audio_stream *astream;
    th_synth_cb cb;
    th_synth_req req;
    char *text, *voice, *language, *prompt, *model, *generation;
    th_audio_target target;
    double speed_rest;
    uint64_t start_us, first_us;
    uint64_t bytes_out;
    bool job_live;     /* the provider may still call us */
    bool job_paused;   /* we asked the provider to pause */
    bool out_paused;   /* the caller asked us to pause */
    bool finished;     /* on_done or on_error was delivered */
    bool freed;        /* the caller let go */
    bool cancelled;
};

static void reap(void *p)
{
    th_synth *s = p;
    if (s->astream) th_audio_stream_close(s->astream);
    free(s->text);
    free(s->voice);
    free(s->language);
    free(s->prompt);
    free(s->model);
    free(s->generation);
    free(s);
}

static void release(th_synth *s)
{
    if (s->job_live && s->job) {
        th_provider_cancel(s->prov, s->job);
        s->job_live = false;
    }
    s->job = NULL;
    s->freed = true;
    th_hub_defer(s->hub, reap, s);
}

void th_synth_free(th_synth *s)
{
    if (s) release(s);
}

void th_synth_cancel(th_synth *s)
{
    if (s == NULL) return;
    s->cancelled = true;
    release(s);
}

const char *th_synth_provider(const th_synth *s)
{
    return s->prov->conf->name;
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
    if (s->job_live && s->job) {
        th_provider_cancel(s->prov, s->job);
        s->job_live = false;
        s->job = NULL;
    }
    s->cb.on_error(s->cb.ud, e, s->bytes_out);
}

static void maybe_resume(th_synth *s)
{
    if (!s->job_paused || s->out_paused || !s->job_live || s->freed) return;
    if (s->astream && th_audio_stream_pending(s->astream) > PENDING_LOW) return;
    s->job_paused = false;
    th_provider_resume(s->prov, s->job);
}

void th_synth_resume(th_synth *s)
{
    if (s == NULL || s->freed) return;
    s->out_paused = false;
    maybe_resume(s);
}

/* ---- audio stream -> caller ---- */

static void a_data(void *ud, const uint8_t *data, size_t len)
{
    th_synth *s = ud;
    if (s->freed || s->finished || len == 0) return;
    if (s->bytes_out == 0) s->cb.on_start(s->cb.ud, s->prov->conf->name);
    if (s->freed) return;
    s->bytes_out += len;
    if (s->cb.on_data(s->cb.ud, data, len) == 1) s->out_paused = true;
    if (!s->freed) maybe_resume(s);
}

static void a_done(void *ud)
{
    th_synth *s = ud;
    if (s->freed || s->finished) return;
    s->finished = true;
    s->cb.on_done(s->cb.ud);
}

static void a_error(void *ud, const char *msg)
{
    th_synth *s = ud;
    th_perr e;
    th_perr_set(&e, TH_PERR_PROTOCOL, 0, "audio from %s could not be converted: %s", s->prov->conf->name, msg);
    fail(s, &e);
}

/* ---- provider -> audio stream ---- */

static void p_format(void *ud, const th_audio_spec *spec)
{
    th_synth *s = ud;
    if (s->freed || s->astream) return;
    static const th_audio_stream_cb acb_tmpl = {a_data, a_done, a_error, NULL};
    th_audio_stream_cb acb = acb_tmpl;
    acb.ud = s;
    char err[200] = "";
    s->astream = th_audio_stream_new(s->hub->loop, spec, &s->target, &acb, err, sizeof err);
    if (s->astream == NULL) {
        th_perr e;
        th_perr_set(&e, TH_PERR_PROTOCOL, 0, "cannot convert the audio of %s: %s", s->prov->conf->name, err);
        fail(s, &e);
    }
}

static int p_chunk(void *ud, const uint8_t *data, size_t len)
{
    th_synth *s = ud;
    if (s->freed || s->finished) return 1;
    if (s->first_us == 0) s->first_us = th_mono_us();
    if (s->astream == NULL) {
        th_audio_spec unknown = {TH_FMT_NONE, 0, 0, TH_SAMPLE_S16};
        p_format(s, &unknown);
        if (s->astream == NULL) return 1;
    }
    if (th_audio_stream_push(s->astream, data, len) != 0) {
        th_perr e;
        th_perr_set(&e, TH_PERR_INTERNAL, 0, "out of memory");
        fail(s, &e);
        return 1;
    }
    if (s->out_paused || th_audio_stream_pending(s->astream) > PENDING_HIGH) {
        s->job_paused = true;
        return 1;
    }
    return 0;
}

static void p_done(void *ud)
{
    th_synth *s = ud;
    s->job_live = false;
    s->job = NULL;
    if (s->freed || s->finished) return;
    if (s->astream == NULL) {
        th_perr e;
        th_perr_set(&e, TH_PERR_PROTOCOL, 0, "%s returned no audio", s->prov->conf->name);
        fail(s, &e);
        return;
    }
    th_audio_stream_finish(s->astream);
}

static void p_error(void *ud, const th_perr *err)
{
    th_synth *s = ud;
    s->job_live = false;
    s->job = NULL;
    fail(s, err);
}

/* ---- start ---- */

static th_provider *pick(th_hub *hub, const char *voice, const char **engine_voice)
{
    for (size_t i = 0; i < hub->n_providers; i++) {
        th_provider *p = hub->providers[i];
        const th_provider_conf *pc = p->conf;
        const char *ev = th_kv_get(pc->voices, pc->n_voices, voice);
        if (ev == NULL) {
            for (size_t v = 0; v < hub->cfg->n_voices && ev == NULL; v++) {
                const th_voice_conf *vc = &hub->cfg->voices[v];
                if (strcmp(vc->id, voice) == 0) ev = th_kv_get(vc->providers, vc->n_providers, pc->name);
            }
        }
        if (ev == NULL) ev = voice;
        if (p->ops->voice_ok == NULL || p->ops->voice_ok(p, ev) == 0) {
            *engine_voice = ev;
            return p;
        }
    }
    return NULL;
}

int th_synth_prepare(th_hub *hub, const th_synth_params *p, th_perr *err)
{
    const char *ev;
    if (hub->n_providers == 0) {
        th_perr_set(err, TH_PERR_OVERLOADED, 0, "no provider is configured");
        return -1;
    }
    if (pick(hub, p->voice, &ev) == NULL) {
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

th_synth *th_synth_start(th_hub *hub, const th_synth_params *p, const th_synth_cb *cb, th_perr *err)
{
    const char *ev = NULL;
    if (th_synth_prepare(hub, p, err) != 0) return NULL;
    th_provider *prov = pick(hub, p->voice, &ev);
    th_synth *s = calloc(1, sizeof *s);
    if (s == NULL) goto oom;
    s->hub = hub;
    s->prov = prov;
    s->cb = *cb;
    s->start_us = th_mono_us();
    bool nomem = false;
    s->text = th_strndup(p->text, p->text_len);
    if (s->text == NULL) nomem = true;
    s->voice = dup_opt(ev, &nomem);
    s->language = dup_opt(p->language, &nomem);
    s->prompt = dup_opt(p->prompt, &nomem);
    s->model = dup_opt(p->model, &nomem);
    s->generation = dup_opt(p->generation, &nomem);
    if (nomem) goto oom;

    /* Speed: the engine takes what it can natively; tempo does the rest. */
    double speed = p->speed > 0 ? p->speed : 1.0;
    double engine_speed = 1.0;
    if (prov->caps.native_speed) {
        engine_speed = speed;
        if (engine_speed < prov->caps.speed_min) engine_speed = prov->caps.speed_min;
        if (engine_speed > prov->caps.speed_max) engine_speed = prov->caps.speed_max;
    }
    s->target.fmt = p->fmt;
    s->target.sample_rate = p->sample_rate ? p->sample_rate : TH_PCM_DEFAULT_RATE;
    s->target.tempo = speed / engine_speed;
    if (s->target.tempo > 0.999 && s->target.tempo < 1.001) s->target.tempo = 1.0;
    s->target.bitrate = 0;
    s->target.wav_data_len = 0xFFFFFFFFu;

    s->req = (th_synth_req){
        .text = s->text,
        .text_len = p->text_len,
        .chars = p->chars,
        .voice = s->voice,
        .language = s->language,
        .prompt = s->prompt,
        .model = s->model,
        .generation = s->generation,
        .want_fmt = p->fmt,
        .want_rate = s->target.sample_rate,
        .speed = engine_speed,
    };
    static const th_sink sink_tmpl = {p_format, p_chunk, p_done, p_error, NULL};
    th_sink sink = sink_tmpl;
    sink.ud = s;
    s->job = th_provider_start(prov, &s->req, &sink);
    if (s->job == NULL) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "provider %s could not start the job", prov->conf->name);
        reap(s);
        return NULL;
    }
    s->job_live = true;
    return s;
oom:
    if (s) reap(s);
    th_perr_set(err, TH_PERR_INTERNAL, 0, "out of memory");
    return NULL;
}
