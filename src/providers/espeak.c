/* espeak: the embedded espeak-ng engine (see espeak.h).
 *
 * Threads. The loop thread calls create/start/cancel/resume/voice_ok/destroy and runs every sink
 * callback. One owner thread per provider initialises libespeak-ng (once per process), lists its
 * voices, and then runs segments: it picks the next runnable job round-robin, synthesises one segment
 * of it with espeak_Synth (synchronous mode), and loops. The synth callback (on the owner thread)
 * appends PCM to the job's chunk queue and wakes the loop with uv_async_send; the loop delivers.
 *
 * Locking. One mutex per provider (p->mu) guards every job's shared fields (chunk queue, flags,
 * reference count) and both job lists. It is never held while a sink callback or espeak runs. One
 * lock is enough: the owner thread takes it once per ~50 ms of audio and the loop once per chunk.
 *
 * Job lifetime. A job has up to two references: the loop's (dropped when the job ends, by
 * on_done/on_error or by cancel) and the owner thread's (dropped when it has no more segments to run
 * or sees the job cancelled). Whoever drops the last one frees it. While the loop delivers it holds a
 * third, temporary one, so a sink callback may cancel the job it is called for. */
#include "providers/espeak.h"

#include <espeak-ng/espeak_ng.h>
#include <espeak-ng/speak_lib.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/str.h"

#define ES_BUFLENGTH_MS 50 /* PCM per synth callback: small, so the first byte comes fast */
#define ES_DEFAULT_VOICE "en-us"
#define ES_DEFAULT_MAX_CHARS 100000
#define ES_BASE_WPM 175.0
#define ES_MIN_WPM 80
#define ES_MAX_WPM 450

/* The one mutable static, and why: libespeak-ng keeps its whole state in process globals, so the
 * process may hold only one espeak provider at a time, and the library must be initialised once per
 * process (espeak-ng 1.51 hangs in espeak_Terminate after a terminate + re-initialise). Bit
 * ES_STATE_IN_USE: a provider exists. Bit ES_STATE_INITIALISED: the library is initialised. */
#define ES_STATE_IN_USE 1
#define ES_STATE_INITIALISED 2
static atomic_int es_state;

typedef struct es_voice {
    char *ident;      /* "gmw/en-US", "!v/f3" */
    const char *base; /* into ident, after the last '/': "en-US", "f3" */
    char *name;       /* "English (America)", "female3" */
} es_voice;

typedef struct es_lang {
    char *lang; /* "en-us" */
    int prio;   /* lower is preferred */
    size_t voice;
} es_lang;

typedef struct es_chunk {
    struct es_chunk *next;
    size_t len;
    uint8_t data[];
} es_chunk;

typedef struct th_espeak th_espeak;

struct th_job {
    th_espeak *p;
    int refs; /* under p->mu */
    th_sink sink;
    char *text; /* sanitised, NUL-terminated; immutable after start */
    size_t len;
    size_t pos;  /* next segment start: owner thread, under p->mu */
    char *voice; /* canonical espeak voice ("gmw/en-US+f3"); immutable */
    int rate;    /* words per minute */
    int pitch;   /* espeakPITCH, 0..100 (50 = the voice's own) */

    /* under p->mu */
    es_chunk *head, *tail;
    size_t pending; /* undelivered bytes */
    unsigned resume_seq;
    bool paused;    /* the sink asked for a pause: no segments, no callbacks until resume */
    bool cancelled; /* cancel() ran: no callbacks, the owner thread drops it */
    bool produced;  /* the owner thread is done with it (all segments, or failed) */
    bool failed;    /* err is set */
    bool ended;     /* the loop's side is over: on_done/on_error called or cancelled */
    bool format_sent;
    bool in_run;     /* on the owner thread's run list (holds the thread's reference) */
    bool in_deliver; /* on the deliver list */
    th_perr err;
    th_job *run_prev, *run_next;
    th_job *dl_next;
};

struct th_espeak {
    th_provider base;
    uv_loop_t *loop;
    th_log *log;
    uv_async_t *async; /* freed in its close callback */
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int rate; /* sample rate */

    /* set by the owner thread before init_done, then immutable */
    es_voice *voices;
    size_t n_voices;
    es_voice *variants;
    size_t n_variants;
    es_lang *langs;
    size_t n_langs;

    /* under mu */
    bool init_done, init_ok;
    char init_err[256];
    bool stopping;
    th_job *run_head, *run_tail;
    th_job *dl_head, *dl_tail;

    /* owner thread only */
    char *cur_voice;
    int cur_rate, cur_pitch;
};

/* ---- voices ---------------------------------------------------------------------------------- */

static const struct {
    const char *openai, *espeak;
} openai_voices[] = {
    {"alloy", "en-us+f3"}, {"ash", "en-us+m3"},     {"ballad", "en-gb+m1"}, {"coral", "en-us+f2"},
    {"echo", "en-us+m1"},  {"fable", "en-gb+m2"},   {"nova", "en-us+f4"},   {"onyx", "en-us+m7"},
    {"sage", "en-gb+f3"},  {"shimmer", "en-us+f5"}, {"verse", "en-us+m5"},  {"marin", "en-gb+f2"},
    {"cedar", "en-gb+m4"},
};

const char *th_espeak_openai_voice(const char *name)
{
    if (name == NULL) return NULL;
    for (size_t i = 0; i < sizeof openai_voices / sizeof openai_voices[0]; i++)
        if (strcmp(openai_voices[i].openai, name) == 0) return openai_voices[i].espeak;
    return NULL;
}

static bool ieq_n(const char *a, size_t alen, const char *b)
{
    return b != NULL && th_strn_ieq(a, alen, b);
}

/* The voice whose identifier, file name, name or language is s[0..n), or -1. */
static long find_base_voice(const th_espeak *p, const char *s, size_t n)
{
    for (size_t i = 0; i < p->n_voices; i++)
        if (ieq_n(s, n, p->voices[i].ident) || ieq_n(s, n, p->voices[i].base)) return (long)i;
    for (size_t i = 0; i < p->n_voices; i++)
        if (ieq_n(s, n, p->voices[i].name)) return (long)i;
    long best = -1;
    int best_prio = 0;
    size_t best_len = 0;
    for (size_t i = 0; i < p->n_langs; i++) {
        const es_lang *l = &p->langs[i];
        if (!ieq_n(s, n, l->lang)) continue;
        size_t blen = strlen(p->voices[l->voice].base);
        /* lowest priority wins; on a tie the most generic (shortest) voice file */
        if (best < 0 || l->prio < best_prio || (l->prio == best_prio && blen < best_len)) {
            best = (long)l->voice;
            best_prio = l->prio;
            best_len = blen;
        }
    }
    return best;
}

static long find_variant(const th_espeak *p, const char *s, size_t n)
{
    for (size_t i = 0; i < p->n_variants; i++)
        if (ieq_n(s, n, p->variants[i].base)) return (long)i;
    for (size_t i = 0; i < p->n_variants; i++)
        if (ieq_n(s, n, p->variants[i].name)) return (long)i;
    return -1;
}

/* Maps a requested voice to the canonical espeak name ("gmw/en-US+f3", malloc'd) in out. Returns 0,
 * -1 when the voice is unknown, -2 on ENOMEM. */
static int resolve_voice(const th_espeak *p, const char *voice, char **out)
{
    *out = NULL;
    if (voice == NULL || voice[0] == '\0') voice = ES_DEFAULT_VOICE;
    const th_provider_conf *conf = p->base.conf;
    if (conf != NULL)
        for (size_t i = 0; i < conf->n_voices; i++)
            if (conf->voices[i].key != NULL && conf->voices[i].value != NULL && !conf->voices[i].is_map &&
                strcmp(conf->voices[i].key, voice) == 0) {
                voice = conf->voices[i].value;
                break;
            }
    const char *oa = th_espeak_openai_voice(voice);
    if (oa != NULL) voice = oa;

    const char *plus = strchr(voice, '+');
    size_t blen = plus ? (size_t)(plus - voice) : strlen(voice);
    long v = find_base_voice(p, voice, blen);
    if (v < 0) return -1;
    long var = -1;
    if (plus != NULL) {
        var = find_variant(p, plus + 1, strlen(plus + 1));
        if (var < 0) return -1;
    }
    const char *ident = p->voices[v].ident;
    const char *vbase = var >= 0 ? p->variants[var].base : NULL;
    size_t len = strlen(ident) + (vbase ? 1 + strlen(vbase) : 0) + 1;
    char *s = malloc(len);
    if (s == NULL) return -2;
    snprintf(s, len, "%s%s%s", ident, vbase ? "+" : "", vbase ? vbase : "");
    *out = s;
    return 0;
}

static int espeak_voice_ok(th_provider *base, const char *voice)
{
    th_espeak *p = (th_espeak *)base;
    if (voice == NULL || voice[0] == '\0') return -1;
    const th_provider_conf *conf = base->conf;
    if (conf != NULL)
        for (size_t i = 0; i < conf->n_voices; i++)
            if (conf->voices[i].key != NULL && strcmp(conf->voices[i].key, voice) == 0) return 0;
    char *canon = NULL;
    int r = resolve_voice(p, voice, &canon);
    free(canon);
    return r == -1 ? -1 : 0; /* ENOMEM: let start() report it */
}

static void free_voice_list(es_voice *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].ident);
        free(v[i].name);
    }
    free(v);
}

/* Copies espeak's list (owner thread). Languages go to langs when langs_out != NULL. */
static int copy_voice_list(const espeak_VOICE **list, es_voice **out, size_t *n_out, es_lang **langs_out,
                           size_t *n_langs_out)
{
    size_t n = 0, nl = 0;
    while (list != NULL && list[n] != NULL) {
        const char *l = list[n]->languages;
        while (l != NULL && l[0] != '\0') { /* pairs: priority byte, then a string */
            nl++;
            l += 1 + strlen(l + 1) + 1;
        }
        n++;
    }
    es_voice *v = calloc(n ? n : 1, sizeof *v);
    es_lang *langs = calloc(nl ? nl : 1, sizeof *langs);
    size_t il = 0;
    if (v == NULL || langs == NULL) goto oom;
    for (size_t i = 0; i < n; i++) {
        const char *ident = list[i]->identifier ? list[i]->identifier : "";
        v[i].ident = th_strndup(ident, strlen(ident));
        const char *name = list[i]->name ? list[i]->name : "";
        v[i].name = th_strndup(name, strlen(name));
        if (v[i].ident == NULL || v[i].name == NULL) {
            n = i + 1;
            goto oom;
        }
        const char *slash = strrchr(v[i].ident, '/');
        v[i].base = slash ? slash + 1 : v[i].ident;
        const char *l = list[i]->languages;
        while (langs_out != NULL && l != NULL && l[0] != '\0') {
            langs[il].prio = (unsigned char)l[0];
            langs[il].voice = i;
            langs[il].lang = th_strndup(l + 1, strlen(l + 1));
            if (langs[il].lang == NULL) {
                n = i + 1;
                goto oom;
            }
            il++;
            l += 1 + strlen(l + 1) + 1;
        }
    }
    *out = v;
    *n_out = n;
    if (langs_out != NULL) {
        *langs_out = langs;
        *n_langs_out = il;
    } else {
        free(langs);
    }
    return 0;
oom:
    if (v != NULL) free_voice_list(v, n);
    for (size_t i = 0; langs != NULL && i < il; i++)
        free(langs[i].lang);
    free(langs);
    return -1;
}

/* ---- text ------------------------------------------------------------------------------------ */

char *th_espeak_sanitize(const char *text, size_t n, size_t *out_len)
{
    char *o = malloc(n + 1);
    if (o == NULL) return NULL;
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x80) {
            o[i] = (c < 0x20 && c != '\n') || c == 0x7f ? ' ' : (char)c;
            i++;
            continue;
        }
        uint32_t cp;
        int l = th_utf8_decode(text + i, n - i, &cp);
        if (l < 0) {
            o[i++] = ' ';
            continue;
        }
        if (cp >= 0x80 && cp <= 0x9f)
            memset(o + i, ' ', (size_t)l);
        else
            memcpy(o + i, text + i, (size_t)l);
        i += (size_t)l;
    }
    o[n] = '\0';
    *out_len = n;
    return o;
}

static bool is_space_byte(char c)
{
    return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

static size_t skip_space(const char *s, size_t len, size_t i)
{
    while (i < len && is_space_byte(s[i]))
        i++;
    return i;
}

static bool is_closer(uint32_t cp)
{
    return cp == '"' || cp == '\'' || cp == ')' || cp == ']' || cp == 0x201d || cp == 0x2019 ||
           cp == 0x300d || cp == 0x300f || cp == 0xff09;
}

size_t th_espeak_segment(const char *s, size_t len, size_t pos, size_t max_cp, bool *sentence_end)
{
    size_t i = pos, count = 0, soft = 0;
    if (max_cp == 0) max_cp = 1;
    while (i < len) {
        uint32_t cp;
        int l = th_utf8_decode(s + i, len - i, &cp);
        if (l < 0) {
            cp = (unsigned char)s[i];
            l = 1;
        }
        size_t next = i + (size_t)l;
        count++;
        if (cp == 0x3002 || cp == 0xff01 || cp == 0xff1f || cp == 0xff1b) { /* 。！？； */
            while (next < len) { /* closing quotes after a CJK full stop */
                int l2 = th_utf8_decode(s + next, len - next, &cp);
                if (l2 < 0 || !is_closer(cp)) break;
                next += (size_t)l2;
            }
            *sentence_end = true;
            return skip_space(s, len, next);
        }
        if (cp == '.' || cp == '!' || cp == '?' || cp == ';') {
            size_t j = next;
            while (j < len) {
                uint32_t c2;
                int l2 = th_utf8_decode(s + j, len - j, &c2);
                if (l2 < 0 || !is_closer(c2)) break;
                j += (size_t)l2;
            }
            if (j == len || is_space_byte(s[j])) {
                *sentence_end = true;
                return skip_space(s, len, j);
            }
        }
        if (is_space_byte((char)cp) || cp == 0xff0c || cp == 0x3001) soft = next; /* ， 、 */
        if (count >= max_cp && next < len) {
            *sentence_end = false;
            return soft > pos ? soft : next;
        }
        i = next;
    }
    *sentence_end = true;
    return len;
}

/* ---- jobs ------------------------------------------------------------------------------------ */

static void job_free(th_job *j)
{
    es_chunk *c = j->head;
    while (c != NULL) {
        es_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(j->text);
    free(j->voice);
    free(j);
}

/* Drops one reference (p->mu held). Returns true when the caller must job_free() after unlocking. */
static bool job_unref_locked(th_job *j)
{
    return --j->refs == 0;
}

static void job_unref(th_job *j)
{
    th_espeak *p = j->p;
    pthread_mutex_lock(&p->mu);
    bool last = job_unref_locked(j);
    pthread_mutex_unlock(&p->mu);
    if (last) job_free(j);
}

static void chunks_clear_locked(th_job *j)
{
    es_chunk *c = j->head;
    while (c != NULL) {
        es_chunk *next = c->next;
        free(c);
        c = next;
    }
    j->head = j->tail = NULL;
    j->pending = 0;
}

/* Puts j on the deliver list (p->mu held). Returns true when the loop must be woken. */
static bool deliver_add_locked(th_espeak *p, th_job *j)
{
    if (j->in_deliver || j->ended) return false;
    j->in_deliver = true;
    j->dl_next = NULL;
    if (p->dl_tail != NULL)
        p->dl_tail->dl_next = j;
    else
        p->dl_head = j;
    p->dl_tail = j;
    return true;
}

static void deliver_remove_locked(th_espeak *p, th_job *j)
{
    if (!j->in_deliver) return;
    th_job *prev = NULL;
    for (th_job *it = p->dl_head; it != NULL; prev = it, it = it->dl_next) {
        if (it != j) continue;
        if (prev != NULL)
            prev->dl_next = it->dl_next;
        else
            p->dl_head = it->dl_next;
        if (p->dl_tail == it) p->dl_tail = prev;
        break;
    }
    j->in_deliver = false;
    j->dl_next = NULL;
}

static th_job *deliver_pop_locked(th_espeak *p)
{
    th_job *j = p->dl_head;
    if (j == NULL) return NULL;
    p->dl_head = j->dl_next;
    if (p->dl_head == NULL) p->dl_tail = NULL;
    j->in_deliver = false;
    j->dl_next = NULL;
    return j;
}

static void run_remove_locked(th_espeak *p, th_job *j)
{
    if (!j->in_run) return;
    if (j->run_prev != NULL)
        j->run_prev->run_next = j->run_next;
    else
        p->run_head = j->run_next;
    if (j->run_next != NULL)
        j->run_next->run_prev = j->run_prev;
    else
        p->run_tail = j->run_prev;
    j->run_prev = j->run_next = NULL;
    j->in_run = false;
}

static void run_append_locked(th_espeak *p, th_job *j)
{
    j->run_prev = p->run_tail;
    j->run_next = NULL;
    if (p->run_tail != NULL)
        p->run_tail->run_next = j;
    else
        p->run_head = j;
    p->run_tail = j;
    j->in_run = true;
}

static void wake_loop(th_espeak *p)
{
    uv_async_send(p->async);
}

/* Delivers what j has (loop thread). The caller holds a temporary reference. */
static void deliver_job(th_espeak *p, th_job *j)
{
    bool wake = false;
    pthread_mutex_lock(&p->mu);
    /* At most what was queued on entry, so a producer that keeps up cannot hold the loop here. */
    size_t budget = j->pending;
    while (!j->cancelled && !j->ended && !j->paused) {
        if (!j->format_sent && (j->head != NULL || (j->produced && !j->failed))) {
            j->format_sent = true;
            th_audio_spec spec = {TH_FMT_PCM, p->rate, 1, TH_SAMPLE_S16};
            pthread_mutex_unlock(&p->mu);
            if (j->sink.on_format) j->sink.on_format(j->sink.ud, &spec);
            pthread_mutex_lock(&p->mu);
            continue;
        }
        es_chunk *c = j->head;
        if (c != NULL && budget == 0) {
            wake = deliver_add_locked(p, j); /* the rest on the next wake-up */
            break;
        }
        if (c != NULL) {
            budget -= c->len < budget ? c->len : budget;
            j->head = c->next;
            if (j->head == NULL) j->tail = NULL;
            bool was_full = j->pending >= TH_ESPEAK_MAX_PENDING;
            j->pending -= c->len;
            if (was_full && j->pending < TH_ESPEAK_MAX_PENDING) pthread_cond_signal(&p->cv);
            unsigned seq = j->resume_seq;
            pthread_mutex_unlock(&p->mu);
            int r = j->sink.on_chunk ? j->sink.on_chunk(j->sink.ud, c->data, c->len) : 0;
            free(c);
            pthread_mutex_lock(&p->mu);
            /* a resume() from inside on_chunk wins over its own pause request */
            if (r == 1 && !j->cancelled && j->resume_seq == seq) j->paused = true;
            continue;
        }
        if (!j->produced) break;
        j->ended = true;
        deliver_remove_locked(p, j); /* the owner thread may have queued it again meanwhile */
        bool failed = j->failed;
        pthread_mutex_unlock(&p->mu);
        if (failed) {
            if (j->sink.on_error) j->sink.on_error(j->sink.ud, &j->err);
        } else {
            if (j->sink.on_done) j->sink.on_done(j->sink.ud);
        }
        job_unref(j); /* the loop's reference */
        return;
    }
    pthread_mutex_unlock(&p->mu);
    if (wake) wake_loop(p);
}

static void async_cb(uv_async_t *h)
{
    th_espeak *p = h->data;
    /* Bounded: jobs the owner thread re-adds meanwhile are picked up by the next wake-up. */
    pthread_mutex_lock(&p->mu);
    size_t n = 0;
    for (th_job *it = p->dl_head; it != NULL; it = it->dl_next)
        n++;
    pthread_mutex_unlock(&p->mu);
    for (size_t i = 0; i < n; i++) {
        pthread_mutex_lock(&p->mu);
        th_job *j = deliver_pop_locked(p);
        if (j != NULL) j->refs++;
        pthread_mutex_unlock(&p->mu);
        if (j == NULL) break;
        deliver_job(p, j);
        job_unref(j);
    }
}

/* ---- owner thread ---------------------------------------------------------------------------- */

static int synth_cb(short *wav, int numsamples, espeak_EVENT *events)
{
    th_job *j = events != NULL ? events[0].user_data : NULL;
    if (j == NULL) return 0;
    th_espeak *p = j->p;
    es_chunk *c = NULL;
    if (wav != NULL && numsamples > 0) {
        size_t bytes = (size_t)numsamples * 2;
        c = malloc(sizeof *c + bytes);
        if (c != NULL) {
            c->next = NULL;
            c->len = bytes;
            /* s16 host order; every Debian target is little-endian */
            memcpy(c->data, wav, bytes);
        }
    }
    pthread_mutex_lock(&p->mu);
    if (j->cancelled || p->stopping) {
        pthread_mutex_unlock(&p->mu);
        free(c);
        return 1;
    }
    if (wav != NULL && numsamples > 0 && c == NULL) {
        if (!j->failed) {
            j->failed = true;
            th_perr_set(&j->err, TH_PERR_INTERNAL, 0, "espeak: out of memory");
        }
        pthread_mutex_unlock(&p->mu);
        return 1;
    }
    bool wake = false;
    if (c != NULL) {
        if (j->tail != NULL)
            j->tail->next = c;
        else
            j->head = c;
        j->tail = c;
        j->pending += c->len;
        wake = deliver_add_locked(p, j);
    }
    pthread_mutex_unlock(&p->mu);
    if (wake) wake_loop(p);
    return 0;
}

static bool job_runnable_locked(const th_job *j)
{
    return !j->cancelled && !j->paused && !j->failed && j->pending < TH_ESPEAK_MAX_PENDING && j->pos < j->len;
}

static int set_voice_and_rate(th_espeak *p, const char *voice, int rate, int pitch)
{
    if (p->cur_voice == NULL || strcmp(p->cur_voice, voice) != 0) {
        free(p->cur_voice);
        p->cur_voice = NULL;
        if (espeak_SetVoiceByName(voice) != EE_OK) return -1;
        p->cur_voice = th_strndup(voice, strlen(voice));
        p->cur_rate = -1; /* a voice change may reset the rate and pitch */
        p->cur_pitch = -1;
        if (p->cur_voice == NULL) return -1;
    }
    if (p->cur_rate != rate) {
        if (espeak_SetParameter(espeakRATE, rate, 0) != EE_OK) return -1;
        p->cur_rate = rate;
    }
    if (p->cur_pitch != pitch) {
        if (espeak_SetParameter(espeakPITCH, pitch, 0) != EE_OK) return -1;
        p->cur_pitch = pitch;
    }
    return 0;
}

static bool has_content(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_space_byte(s[i])) return true;
    return false;
}

static int engine_init(th_espeak *p)
{
    int st = atomic_load(&es_state);
    if (!(st & ES_STATE_INITIALISED)) {
        espeak_ng_InitializePath(NULL);
        espeak_ng_ERROR_CONTEXT ctx = NULL;
        espeak_ng_STATUS s = espeak_ng_Initialize(&ctx);
        if (s == ENS_OK) s = espeak_ng_InitializeOutput(ENOUTPUT_MODE_SYNCHRONOUS, ES_BUFLENGTH_MS, NULL);
        if (s != ENS_OK) {
            char msg[160];
            espeak_ng_GetStatusCodeMessage(s, msg, sizeof msg);
            snprintf(p->init_err, sizeof p->init_err, "espeak: cannot initialise espeak-ng: %s", msg);
            espeak_ng_ClearErrorContext(&ctx);
            return -1;
        }
        atomic_fetch_or(&es_state, ES_STATE_INITIALISED);
    }
    espeak_SetSynthCallback(synth_cb);
    p->rate = espeak_ng_GetSampleRate();
    if (p->rate <= 0) {
        snprintf(p->init_err, sizeof p->init_err, "espeak: bad sample rate %d", p->rate);
        return -1;
    }
    if (copy_voice_list(espeak_ListVoices(NULL), &p->voices, &p->n_voices, &p->langs, &p->n_langs) != 0)
        goto oom;
    espeak_VOICE spec;
    memset(&spec, 0, sizeof spec);
    spec.languages = "variant";
    if (copy_voice_list(espeak_ListVoices(&spec), &p->variants, &p->n_variants, NULL, NULL) != 0) goto oom;
    if (p->n_voices == 0) {
        snprintf(p->init_err, sizeof p->init_err,
                 "espeak: espeak-ng lists no voices (is espeak-ng-data installed?)");
        return -1;
    }
    return 0;
oom:
    snprintf(p->init_err, sizeof p->init_err, "espeak: out of memory");
    return -1;
}

/* The next job with work to do, in round-robin order, or NULL. Cancelled jobs lose the thread's
 * reference on the way (the lock is let go to free one). Called and returns with p->mu held. */
static th_job *next_job_locked(th_espeak *p)
{
    th_job *it = p->run_head;
    while (it != NULL) {
        th_job *next = it->run_next;
        if (it->cancelled) { /* drop the thread's reference */
            run_remove_locked(p, it);
            if (job_unref_locked(it)) {
                pthread_mutex_unlock(&p->mu);
                job_free(it);
                pthread_mutex_lock(&p->mu);
                it = p->run_head; /* the list may have changed while unlocked */
                continue;
            }
        } else if (job_runnable_locked(it)) {
            return it;
        }
        it = next;
    }
    return NULL;
}

/* Marks j failed with msg (the first error wins). */
static void job_fail(th_espeak *p, th_job *j, th_perr_kind kind, const char *msg)
{
    pthread_mutex_lock(&p->mu);
    if (!j->failed) {
        j->failed = true;
        th_perr_set(&j->err, kind, 0, "%s", msg);
    }
    pthread_mutex_unlock(&p->mu);
}

/* Speaks j->text[start, end) (the lock is not held): the audio arrives through the synth callback. */
static void speak_segment(th_espeak *p, th_job *j, size_t start, size_t end, bool sentence_end)
{
    char seg[TH_ESPEAK_SEGMENT_MAX_CP * 4 + 1];
    size_t n = end - start;
    if (n == 0 || !has_content(j->text + start, n)) return;
    if (n >= sizeof seg) n = sizeof seg - 1; /* cannot happen: 4 bytes per code point at most */
    memcpy(seg, j->text + start, n);
    seg[n] = '\0';
    if (set_voice_and_rate(p, j->voice, j->rate, j->pitch) != 0) {
        char msg[sizeof j->err.message];
        snprintf(msg, sizeof msg, "espeak: cannot select voice '%s'", j->voice);
        job_fail(p, j, TH_PERR_CLIENT, msg);
        return;
    }
    unsigned flags = espeakCHARS_UTF8 | (sentence_end ? espeakENDPAUSE : 0); /* no SSML, no [[ ]] */
    espeak_ERROR e = espeak_Synth(seg, n + 1, 0, POS_CHARACTER, 0, flags, NULL, j);
    if (e != EE_OK) {
        char msg[64];
        snprintf(msg, sizeof msg, "espeak: synthesis failed (%d)", (int)e);
        job_fail(p, j, TH_PERR_INTERNAL, msg);
    }
}

/* After a segment (p->mu held): a job that failed or is whole goes to the loop thread. */
static void segment_done_locked(th_espeak *p, th_job *j)
{
    if (j->cancelled) return; /* dropped at the next scan */
    if (!j->failed && j->pos < j->len) return;
    j->produced = true;
    run_remove_locked(p, j);
    if (j->failed) chunks_clear_locked(j); /* an error ends the stream: no half audio */
    bool wake = deliver_add_locked(p, j);
    bool last = job_unref_locked(j);
    pthread_mutex_unlock(&p->mu);
    if (wake) wake_loop(p);
    if (last) job_free(j);
    pthread_mutex_lock(&p->mu);
}

/* stopping: drop the thread's references (p->mu held) */
static void drop_all_locked(th_espeak *p)
{
    while (p->run_head != NULL) {
        th_job *j = p->run_head;
        run_remove_locked(p, j);
        if (job_unref_locked(j)) {
            pthread_mutex_unlock(&p->mu);
            job_free(j);
            pthread_mutex_lock(&p->mu);
        }
    }
}

static void *owner_main(void *arg)
{
    th_espeak *p = arg;
    int r = engine_init(p);
    pthread_mutex_lock(&p->mu);
    p->init_done = true;
    p->init_ok = r == 0;
    pthread_cond_broadcast(&p->cv);
    if (r != 0) {
        pthread_mutex_unlock(&p->mu);
        return NULL;
    }
    while (!p->stopping) {
        th_job *j = next_job_locked(p);
        if (j == NULL) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        /* round-robin: the job goes to the back of the line */
        run_remove_locked(p, j);
        run_append_locked(p, j);
        bool sentence_end = true;
        size_t start = j->pos;
        size_t end = th_espeak_segment(j->text, j->len, start, TH_ESPEAK_SEGMENT_MAX_CP, &sentence_end);
        j->pos = end;
        pthread_mutex_unlock(&p->mu);
        speak_segment(p, j, start, end, sentence_end);
        pthread_mutex_lock(&p->mu);
        segment_done_locked(p, j);
    }
    drop_all_locked(p);
    pthread_mutex_unlock(&p->mu);
    free(p->cur_voice);
    p->cur_voice = NULL;
    espeak_SetSynthCallback(NULL);
    return NULL;
}

/* ---- provider -------------------------------------------------------------------------------- */

static void async_close_cb(uv_handle_t *h)
{
    free(h);
}

static void provider_free(th_espeak *p)
{
    free_voice_list(p->voices, p->n_voices);
    free_voice_list(p->variants, p->n_variants);
    for (size_t i = 0; i < p->n_langs; i++)
        free(p->langs[i].lang);
    free(p->langs);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static th_provider *espeak_create(uv_loop_t *loop, const th_provider_conf *conf, th_log *log, char *err,
                                  size_t errlen)
{
    int st = atomic_load(&es_state);
    do {
        if (st & ES_STATE_IN_USE) {
            snprintf(err, errlen,
                     "espeak: only one espeak provider may exist per process (libespeak-ng state is global)");
            return NULL;
        }
    } while (!atomic_compare_exchange_weak(&es_state, &st, st | ES_STATE_IN_USE));

    th_espeak *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "espeak: out of memory");
        atomic_fetch_and(&es_state, ~ES_STATE_IN_USE);
        return NULL;
    }
    p->base.ops = &th_espeak_ops;
    p->base.conf = conf;
    p->base.caps.formats = 1u << TH_FMT_PCM;
    p->base.caps.max_input_chars =
        conf != NULL && conf->max_input_chars > 0 ? conf->max_input_chars : ES_DEFAULT_MAX_CHARS;
    p->base.caps.streaming = true;
    p->base.caps.native_speed = true;
    p->base.caps.speed_min = ES_MIN_WPM / ES_BASE_WPM;
    p->base.caps.speed_max = ES_MAX_WPM / ES_BASE_WPM;
    p->base.caps.needs_reference = false;
    p->loop = loop;
    p->log = log;
    p->cur_rate = -1;
    p->cur_pitch = -1;
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        snprintf(err, errlen, "espeak: cannot create a mutex");
        atomic_fetch_and(&es_state, ~ES_STATE_IN_USE);
        return NULL;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        snprintf(err, errlen, "espeak: cannot create a condition variable");
        atomic_fetch_and(&es_state, ~ES_STATE_IN_USE);
        return NULL;
    }
    p->async = malloc(sizeof *p->async);
    if (p->async == NULL || uv_async_init(loop, p->async, async_cb) != 0) {
        free(p->async);
        provider_free(p);
        snprintf(err, errlen, "espeak: cannot create the wake-up handle");
        atomic_fetch_and(&es_state, ~ES_STATE_IN_USE);
        return NULL;
    }
    p->async->data = p;
    if (pthread_create(&p->thread, NULL, owner_main, p) != 0) {
        snprintf(err, errlen, "espeak: cannot start the engine thread");
        goto fail;
    }
    p->thread_started = true;
    pthread_mutex_lock(&p->mu);
    while (!p->init_done)
        pthread_cond_wait(&p->cv, &p->mu);
    bool ok = p->init_ok;
    pthread_mutex_unlock(&p->mu);
    if (!ok) {
        snprintf(err, errlen, "%s", p->init_err);
        goto fail;
    }
    TH_LOG(log, TH_LOG_INFO, "espeak: ready, %zu voices, %zu variants, %d Hz", p->n_voices, p->n_variants,
           p->rate);
    return &p->base;
fail:
    if (p->thread_started) pthread_join(p->thread, NULL);
    uv_close((uv_handle_t *)p->async, async_close_cb);
    provider_free(p);
    atomic_fetch_and(&es_state, ~ES_STATE_IN_USE);
    return NULL;
}

static void espeak_destroy(th_provider *base)
{
    if (base == NULL) return;
    th_espeak *p = (th_espeak *)base;
    pthread_mutex_lock(&p->mu);
    p->stopping = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    /* Jobs still on the deliver list have not ended: a caller bug (the contract says jobs must have
     * ended or been cancelled). Free them so nothing leaks. */
    size_t leaked = 0;
    th_job *j;
    while ((j = deliver_pop_locked(p)) != NULL) {
        leaked++;
        j->ended = true;
        if (--j->refs == 0) job_free(j);
    }
    if (leaked) TH_LOG(p->log, TH_LOG_WARN, "espeak: destroyed with %zu unfinished jobs", leaked);
    uv_close((uv_handle_t *)p->async, async_close_cb);
    provider_free(p);
    atomic_fetch_and(&es_state, ~ES_STATE_IN_USE);
}

static int speed_to_wpm(double speed)
{
    if (!(speed > 0) || !isfinite(speed)) speed = 1.0;
    double wpm = nearbyint(ES_BASE_WPM * speed);
    if (wpm < ES_MIN_WPM) wpm = ES_MIN_WPM;
    if (wpm > ES_MAX_WPM) wpm = ES_MAX_WPM;
    return (int)wpm;
}

static th_job *espeak_start(th_provider *base, const th_synth_req *req, const th_sink *sink)
{
    th_espeak *p = (th_espeak *)base;
    th_job *j = calloc(1, sizeof *j);
    if (j == NULL) return NULL;
    j->p = p;
    j->sink = *sink;
    j->rate = speed_to_wpm(req->speed);
    /* pitch is a ratio (1 = the voice's own); espeak's parameter is 0..100 around 50 */
    double pr = req->pitch > 0 && isfinite(req->pitch) ? req->pitch : 1.0;
    j->pitch = (int)nearbyint(50.0 * (pr < 0.0 ? 0.0 : pr > 2.0 ? 2.0 : pr));
    j->text = th_espeak_sanitize(req->text ? req->text : "", req->text ? req->text_len : 0, &j->len);
    if (j->text == NULL) {
        free(j);
        return NULL;
    }
    const char *voice = req->voice;
    if ((voice == NULL || voice[0] == '\0') && req->language != NULL && req->language[0] != '\0')
        voice = req->language;
    int r = resolve_voice(p, voice, &j->voice);
    if (r == -2) {
        job_free(j);
        return NULL;
    }
    j->refs = 1; /* the loop's */
    bool wake = false;
    pthread_mutex_lock(&p->mu);
    if (r == -1) {
        j->failed = true;
        j->produced = true;
        th_perr_set(&j->err, TH_PERR_CLIENT, 0, "espeak: unknown voice '%s'", voice ? voice : "");
        wake = deliver_add_locked(p, j);
    } else if (j->len == 0) { /* nothing to say: on_format, then on_done */
        j->produced = true;
        wake = deliver_add_locked(p, j);
    } else {
        j->refs++; /* the owner thread's */
        run_append_locked(p, j);
        pthread_cond_signal(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    if (wake) wake_loop(p);
    return j;
}

static void espeak_cancel(th_job *j)
{
    if (j == NULL) return;
    th_espeak *p = j->p;
    pthread_mutex_lock(&p->mu);
    if (j->ended || j->cancelled) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    j->cancelled = true;
    j->ended = true;
    j->paused = false;
    deliver_remove_locked(p, j);
    chunks_clear_locked(j);
    pthread_cond_signal(&p->cv); /* the owner thread drops its reference */
    bool last = job_unref_locked(j);
    pthread_mutex_unlock(&p->mu);
    if (last) job_free(j);
}

static void espeak_resume(th_job *j)
{
    if (j == NULL) return;
    th_espeak *p = j->p;
    pthread_mutex_lock(&p->mu);
    j->resume_seq++;
    if (!j->paused || j->cancelled || j->ended) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    j->paused = false;
    pthread_cond_signal(&p->cv);
    bool wake = (j->head != NULL || j->produced) && deliver_add_locked(p, j);
    pthread_mutex_unlock(&p->mu);
    if (wake) wake_loop(p);
}

const th_provider_ops th_espeak_ops = {
    .kind = "espeak",
    .create = espeak_create,
    .destroy = espeak_destroy,
    .start = espeak_start,
    .cancel = espeak_cancel,
    .resume = espeak_resume,
    .voice_ok = espeak_voice_ok,
};
