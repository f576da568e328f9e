/* upstream: the generic provider of HTTP engines (see upstream.h).
 *
 * One up_provider per configured provider owns one th_client (its own connection pool, at most
 * `concurrency` connections to the engine, 64 when that is 0). A job is one transfer:
 *
 *   start    kind->build() -> th_client_start(). A build failure (bad input: CLIENT; a missing key or a
 *            bad kind option: STATUS) is reported through on_error from the loop, never inside start().
 *   on_head  2xx: the declared spec is kind->body_spec(); anything else: collect the error body.
 *   on_body  2xx: the first bytes are held until th_fmt_sniff_ex() can tell what they are (at least
 *            UP_SNIFF_MIN bytes unless a signature decides sooner, at most UP_SNIFF_MAX). A sniffed container
 *            wins over the declared spec (engines lie about Content-Type); bytes that match nothing are
 *            headerless PCM at the declared rate, or the config's sample_rate, or 24 kHz; JSON, HTML or
 *            text (or kind->body_is_error) is TH_PERR_PROTOCOL. Then on_format, then every byte to on_chunk
 *            as it arrives. on_chunk returning 1 pauses the transfer (on_body returns 1) until resume().
 *            Non-2xx: up to 64 KiB of body, then the transfer is stopped and kind->error() maps it.
 *   on_done  the transfer's end mapped to the sink's end (table in map_result()).
 *
 * Timeouts (per transfer, from the provider's `timeout`, 30 s when 0): connect min(10 s, timeout); first
 * response byte `timeout` (the engine's time to start answering: what the timeout means to an operator);
 * total max(4 x timeout, 120 s), so that a long synthesis that streams steadily is not cut, while a
 * stalled one still ends. A paused transfer counts against the total too.
 *
 * Pause: only chunks are held back. The end of a transfer is reported when it comes, so on_done may follow
 * a chunk that asked for a pause when that chunk was the last one (a short body flushed at the end).
 *
 * Lifetime: a job lives until its end was delivered or it was cancelled. Every client callback holds
 * the job (in_cb) so that a sink callback may cancel it; it is freed when the outermost callback
 * returns. destroy() drops the jobs still live without callbacks (the caller should have cancelled
 * them), closes the client and a uv_idle_t: both close asynchronously, so the loop must run once more
 * for the provider's memory to be freed.
 *
 * Library voices (th_synth_req.ref). A kind sends the reference itself in build() (cosyvoice, fish, nodes),
 * or needs something made on the engine first (kind->ref_key): an upload (openvoice), a remote voice
 * (elevenlabs), a file on shared storage (kind->ref_files: gpt_sovits, xtts). The provider keeps one entry
 * per key (at most UP_ENTRIES_MAX, least recently used dropped first): while it is being made, the jobs that
 * need it wait on it (made once however many ask at the same time); once made, its value goes to build()
 * as prepared. The entry owns a copy of the reference while it is being made, so a job that goes away does
 * not stop it. HTTP steps (kind->ref_make) run on the provider's client; file writes run on the loop's
 * thread pool with their own copies of the paths, so a provider destroyed meanwhile only detaches them.
 * When a synthesis fails in a way kind->ref_lost recognises (the engine forgot the upload, the node lacks
 * the reference), the entry is dropped and the job starts again once with pass 1, before any byte reached
 * the sink. voice_forget drops the entry and runs kind->ref_drop (HTTP) or removes the file. */
#include "providers/upstream.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/str.h"

#define UP_ERRBODY_MAX (64 * 1024)
#define UP_SNIFF_MIN 64
#define UP_SNIFF_MAX 8192
#define UP_HEAD_MAX (1024 * 1024) /* UP_SNIFF_MAX plus one chunk from curl, with room to spare */
#define UP_REQ_BODY_MAX (16u * 1024 * 1024)
#define UP_DEFAULT_TIMEOUT_MS 30000
#define UP_CONNECT_MAX_MS 10000
#define UP_TOTAL_MIN_MS 120000
#define UP_PROBE_TIMEOUT_MS 2000
#define UP_DEFAULT_CONNS 64
#define UP_TEXT_CHECK 512   /* bytes looked at to tell text from audio */
#define UP_ENTRIES_MAX 4096 /* references remembered per provider (least recently used ones go first) */
#define UP_VALUE_MAX 1024
#define UP_CALL_BODY_MAX (1024 * 1024)   /* a reference request's answer (a voice list) */
#define UP_BOUNDARY_SCAN_MAX (64 * 1024) /* parts up to this size are checked for the multipart boundary */

const th_upstream_kind *const th_upstream_kinds[] = {
    &th_kind_openai_fm,
    &th_kind_openai,
    &th_kind_gpt_sovits,
    &th_kind_xtts,
    &th_kind_openvoice,
    &th_kind_cosyvoice,
    &th_kind_fish,
    &th_kind_elevenlabs,
    &th_kind_azure,
    &th_kind_nodes,
    NULL,
};

const th_upstream_kind *th_upstream_find(const char *kind)
{
    if (kind == NULL) return NULL;
    for (size_t i = 0; th_upstream_kinds[i] != NULL; i++)
        if (th_upstream_kinds[i]->kind != NULL && strcmp(th_upstream_kinds[i]->kind, kind) == 0)
            return th_upstream_kinds[i];
    return NULL;
}

/* ---- helpers for kinds ---- */

void th_upstream_http_init(th_upstream_http *h)
{
    h->base_url = NULL;
    h->method = "POST";
    th_buf_init(&h->url, 64 * 1024);
    th_buf_init(&h->headers, 64 * 1024);
    th_buf_init(&h->body, UP_REQ_BODY_MAX);
    h->body_ref = NULL;
    h->body_ref_data = NULL;
    h->body_ref_len = 0;
    h->body_ref_at = 0;
}

int th_upstream_body_ref_bytes(th_upstream_http *h, const th_voice_ref *ref, const uint8_t *data, size_t len)
{
    if (h->body_ref != NULL || ref == NULL || (data == NULL && len > 0)) return -1;
    if (h->body.max != 0 && (len > h->body.max || h->body.len > h->body.max - len)) return -1;
    h->body_ref = ref;
    h->body_ref_data = data;
    h->body_ref_len = len;
    h->body_ref_at = h->body.len;
    return 0;
}

int th_upstream_body_ref(th_upstream_http *h, const th_voice_ref *ref)
{
    return ref != NULL ? th_upstream_body_ref_bytes(h, ref, ref->wav, ref->wav_len) : -1;
}

int th_upstream_body_flat(const th_upstream_http *h, th_buf *out)
{
    size_t at = h->body_ref != NULL ? h->body_ref_at : h->body.len;
    if (th_buf_append(out, h->body.data, at) != TH_BUF_OK) return -1;
    if (h->body_ref != NULL && h->body_ref_len > 0 &&
        th_buf_append(out, h->body_ref_data, h->body_ref_len) != TH_BUF_OK)
        return -1;
    return th_buf_append(out, h->body.data + at, h->body.len - at) == TH_BUF_OK ? 0 : -1;
}

/* The body of h for th_client_opts: body alone, or in three pieces around the reference's bytes, which the
 * transfer reads from the library's memory while it holds the voice (dropped by the client when it is done
 * with them). A reference with nobody to hold it is copied into body first. 0, or -1 (out of memory). */
static int up_body_opts(th_upstream_http *h, th_client_opts *o, th_client_seg segs[3])
{
    const th_voice_ref *r = h->body_ref;
    if (r != NULL && (r->hold == NULL || r->drop == NULL)) {
        th_buf flat;
        th_buf_init(&flat, 0); /* our own request body, built already */
        if (th_upstream_body_flat(h, &flat) != 0) {
            th_buf_free(&flat);
            return -1;
        }
        th_buf_free(&h->body);
        h->body = flat;
        h->body_ref = NULL;
        r = NULL;
    }
    if (r == NULL) {
        o->body = h->body.len > 0 ? h->body.data : NULL;
        o->body_len = h->body.len;
        return 0;
    }
    size_t at = h->body_ref_at;
    segs[0] = (th_client_seg){h->body.data, at};
    segs[1] = (th_client_seg){h->body_ref_data, h->body_ref_len};
    segs[2] = (th_client_seg){h->body.data != NULL ? h->body.data + at : NULL, h->body.len - at};
    o->segs = segs;
    o->nsegs = 3;
    o->segs_release = r->drop;
    o->segs_ud = r->hold(r);
    return 0;
}

/* Gives back what up_body_opts held when the transfer did not start. */
static void up_body_unhold(th_client_opts *o)
{
    if (o->segs_release != NULL) o->segs_release(o->segs_ud);
}

void th_upstream_http_free(th_upstream_http *h)
{
    th_buf_free(&h->url);
    th_buf_free(&h->headers);
    th_buf_free(&h->body);
}

int th_upstream_url(th_upstream_http *h, const char *base_url, const char *path)
{
    if (base_url == NULL || path == NULL) return -1;
    size_t n = strlen(base_url);
    while (n > 0 && base_url[n - 1] == '/')
        n--;
    th_buf_reset(&h->url);
    if (th_buf_append(&h->url, base_url, n) != TH_BUF_OK) return -1;
    if (path[0] != '\0' && path[0] != '/' && th_buf_append_byte(&h->url, '/') != TH_BUF_OK) return -1;
    return th_buf_append_str(&h->url, path) == TH_BUF_OK ? 0 : -1;
}

int th_upstream_urlencode(th_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '.' || c == '_' || c == '~';
        int rc;
        if (keep) {
            rc = th_buf_append_byte(b, c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            rc = th_buf_append(b, e, 3);
        }
        if (rc != TH_BUF_OK) return -1;
    }
    return 0;
}

int th_upstream_query(th_upstream_http *h, const char *name, const char *value)
{
    if (name == NULL || value == NULL) return -1;
    char *url = th_buf_cstr(&h->url);
    if (url == NULL) return -1;
    char sep = strchr(url, '?') != NULL ? '&' : '?';
    if (th_buf_append_byte(&h->url, (uint8_t)sep) != TH_BUF_OK) return -1;
    if (th_upstream_urlencode(&h->url, name, strlen(name)) != 0) return -1;
    if (th_buf_append_byte(&h->url, '=') != TH_BUF_OK) return -1;
    return th_upstream_urlencode(&h->url, value, strlen(value));
}

int th_upstream_form(th_buf *b, const char *name, const char *value)
{
    if (name == NULL || value == NULL) return -1;
    if (b->len > 0 && th_buf_append_byte(b, '&') != TH_BUF_OK) return -1;
    if (th_upstream_urlencode(b, name, strlen(name)) != 0) return -1;
    if (th_buf_append_byte(b, '=') != TH_BUF_OK) return -1;
    return th_upstream_urlencode(b, value, strlen(value));
}

int th_upstream_header(th_upstream_http *h, const char *name, const char *value)
{
    if (name == NULL || value == NULL || name[0] == '\0') return -1;
    /* No header injection through a voice name or a key: no CR, LF or NUL, no ':' in the name. */
    if (strpbrk(name, "\r\n: \t") != NULL || strpbrk(value, "\r\n") != NULL) return -1;
    size_t nl = strlen(name), vl = strlen(value);
    if (th_buf_reserve(&h->headers, nl + vl + 3) != TH_BUF_OK) return -1;
    th_buf_append(&h->headers, name, nl);
    th_buf_append(&h->headers, ": ", 2);
    th_buf_append(&h->headers, value, vl);
    th_buf_append(&h->headers, "\n", 1);
    return 0;
}

int th_upstream_xml_escape(th_buf *b, const char *s, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *esc;
        switch (s[i]) {
        case '&':
            esc = "&amp;";
            break;
        case '<':
            esc = "&lt;";
            break;
        case '>':
            esc = "&gt;";
            break;
        case '"':
            esc = "&quot;";
            break;
        case '\'':
            esc = "&apos;";
            break;
        default:
            esc = NULL;
            break;
        }
        /* XML 1.0 forbids most control characters even as references: make them spaces. */
        unsigned char c = (unsigned char)s[i];
        if (esc == NULL && c < 0x20 && c != '\t' && c != '\n' && c != '\r') esc = " ";
        if (esc == NULL) continue;
        if (th_buf_append(b, s + start, i - start) != TH_BUF_OK) return -1;
        if (th_buf_append_str(b, esc) != TH_BUF_OK) return -1;
        start = i + 1;
    }
    return th_buf_append(b, s + start, n - start) == TH_BUF_OK ? 0 : -1;
}

void th_upstream_excerpt(const uint8_t *body, size_t len, char *out, size_t outlen)
{
    if (outlen == 0) return;
    size_t o = 0;
    bool blank = true; /* drops leading blanks and squeezes runs */
    for (size_t i = 0; i < len && o + 1 < outlen; i++) {
        unsigned char c = body[i];
        if (c < 0x20 || c == 0x7f) c = ' ';
        if (c == ' ') {
            if (blank) continue;
            blank = true;
        } else {
            blank = false;
        }
        out[o++] = (char)c;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    /* Do not end inside a UTF-8 sequence. */
    if (o > 0 && ((unsigned char)out[o - 1] & 0x80)) {
        size_t k = o;
        while (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0x80)
            k--;
        if (k > 0 && ((unsigned char)out[k - 1] & 0xC0) == 0xC0) {
            unsigned char lead = (unsigned char)out[k - 1];
            size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
            if (o - (k - 1) < need) o = k - 1;
        }
    }
    out[o] = '\0';
}

int th_upstream_retry_after(const char *value, int64_t now_s)
{
    if (value == NULL) return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t'))
        n--;
    if (n == 0) return -1;
    int64_t secs;
    if (value[0] >= '0' && value[0] <= '9') {
        if (th_strn_to_i64(value, n, 0, INT64_MAX, &secs) != 0) return -1;
    } else {
        /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" (the obsolete forms are not worth it here). */
        char tmp[64];
        if (n >= sizeof tmp) return -1;
        memcpy(tmp, value, n);
        tmp[n] = '\0';
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *end = strptime(tmp, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        if (end == NULL || *end != '\0') return -1;
        time_t t = timegm(&tm);
        if (t == (time_t)-1) return -1;
        secs = (int64_t)t - now_s;
        if (secs < 0) secs = 0;
    }
    if (secs > 86400) secs = 86400;
    return (int)secs;
}

const char *th_upstream_secret(const th_provider_conf *pc)
{
    if (pc == NULL || pc->api_key_env == NULL || pc->api_key_env[0] == '\0') return NULL;
    const char *v = getenv(pc->api_key_env);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

json_t *th_upstream_voice_ref(const th_provider_conf *pc, const char *voice, int *bad)
{
    *bad = 0;
    for (size_t i = 0; voice != NULL && i < pc->n_voices; i++) {
        const th_kv *kv = &pc->voices[i];
        if (!kv->is_map || kv->value == NULL || strcmp(kv->value, voice) != 0) continue;
        json_t *o = json_loads(kv->value, 0, NULL);
        if (json_is_object(o)) return o;
        json_decref(o);
        *bad = 1;
        return NULL;
    }
    return NULL;
}

const char *th_upstream_ref_str(const json_t *ref, const char *key, char *tmp, size_t n)
{
    const json_t *v = json_object_get(ref, key);
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_integer(v)) {
        snprintf(tmp, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return tmp;
    }
    if (json_is_real(v)) {
        snprintf(tmp, n, "%g", json_real_value(v));
        return tmp;
    }
    return NULL;
}

int th_upstream_need_base_and_text(const th_provider_conf *pc, const th_synth_req *req, th_perr *err)
{
    if (pc->base_url == NULL || pc->base_url[0] == '\0') {
        th_perr_set(err, TH_PERR_STATUS, 0, "base_url is not set");
        return -1;
    }
    if (req->text_len == 0) {
        th_perr_set(err, TH_PERR_CLIENT, 0, "the input is empty");
        return -1;
    }
    return 0;
}

const char *th_upstream_opt(const th_provider_conf *pc, const char *key, const char *def)
{
    if (pc == NULL) return def;
    const char *v = th_kv_get(pc->opts, pc->n_opts, key);
    if (v == NULL) v = th_provider_opt_default(pc->type, key);
    return v != NULL ? v : def;
}

bool th_upstream_opt_bool(const th_provider_conf *pc, const char *key, bool def)
{
    const char *v = th_upstream_opt(pc, key, NULL);
    if (v == NULL) return def;
    if (strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0 ||
        strcmp(v, "1") == 0)
        return true;
    if (strcasecmp(v, "false") == 0 || strcasecmp(v, "no") == 0 || strcasecmp(v, "off") == 0 ||
        strcmp(v, "0") == 0)
        return false;
    return def;
}

uint32_t th_upstream_formats(const th_provider_conf *pc, uint32_t kind_formats)
{
    return pc != NULL && pc->formats != 0 ? pc->formats : kind_formats;
}

void th_upstream_error_generic(int status, const char *message, th_perr *out)
{
    th_perr_kind k;
    switch (status) {
    case 400:
    case 404:
    case 413:
    case 415:
    case 422:
        k = TH_PERR_CLIENT;
        break;
    case 401:
    case 403:
        k = TH_PERR_STATUS;
        break; /* our key or config is at fault, not the client's */
    case 429:
        k = TH_PERR_OVERLOADED;
        break;
    case 408:
    case 504:
        k = TH_PERR_TIMEOUT;
        break;
    default:
        k = TH_PERR_STATUS;
        break;
    }
    if (message != NULL && message[0] != '\0')
        th_perr_set(out, k, status, "HTTP %d: %s", status, message);
    else
        th_perr_set(out, k, status, "HTTP %d", status);
}

/* ---- the provider ---- */

typedef struct up_entry up_entry;
typedef struct up_call up_call;
typedef struct up_work up_work;

typedef struct up_provider {
    th_provider base;
    const th_upstream_kind *kind;
    th_log *log;
    uv_loop_t *loop;
    th_client *client;
    uv_idle_t idle; /* delivers the failures of jobs that could not start */
    bool idle_on;
    bool closing;
    th_job *jobs;                /* live jobs and probes */
    th_upstream_targets targets; /* pick == NULL: conf->base_url */
    up_entry *entries;           /* library references made on the engine, most recently used first */
    size_t n_entries;
    up_call *calls; /* reference uploads and drops under way */
    up_work *works; /* file writes and removals on the thread pool */
    th_upstream_ref_stats ref_stats;
    char bearer[520]; /* "Bearer <cluster token>" sent to nodes; "" = none */
} up_provider;

typedef enum { J_HEAD = 0, J_AUDIO, J_ERRBODY } job_mode;

struct th_job {
    up_provider *p;
    th_job *prev, *next;
    bool linked;
    th_client_req *req; /* NULL once the client is done with it */
    th_sink sink;
    th_synth_req sreq; /* a deep copy: body_spec() runs after start() returned */
    char *ctype;       /* the Content-Type the engine sent */
    int status;
    int retry_after_s;
    job_mode mode;
    th_audio_spec declared, spec;
    th_buf head;    /* audio held until sniffed */
    th_buf errbody; /* a non-2xx body, at most UP_ERRBODY_MAX */
    bool format_sent;
    uint64_t received;  /* audio bytes from the engine */
    uint64_t delivered; /* audio bytes given to on_chunk */
    bool has_forced;    /* we stopped the transfer ourselves: forced says why */
    th_perr forced;
    bool deferred; /* a start failure waiting for the idle callback */
    bool ended;    /* on_done or on_error was delivered */
    bool cancelled;
    int in_cb;
    uint64_t timeout_ms;
    void (*probe_done)(void *ud, bool healthy, const char *detail);
    void *probe_ud;
    void *lease;          /* from targets.pick, handed back in job_free */
    bool lease_ok;        /* false once the target failed */
    char *target;         /* the base URL targets.pick chose (kept for a second pass), or NULL */
    char target_name[72]; /* what targets.lease_name called it (a node id), or "" */
    /* library voices */
    int pass;          /* 1 once the engine said it lacked the reference */
    char *prepared;    /* the entry's value this job uses */
    up_entry *wait_en; /* the entry this job waits for, or NULL */
    th_job *wprev, *wnext;
};

static const char *pname(const up_provider *p)
{
    return p->base.conf != NULL && p->base.conf->name != NULL ? p->base.conf->name : p->kind->kind;
}

static void job_unlink(th_job *j)
{
    if (!j->linked) return;
    if (j->prev)
        j->prev->next = j->next;
    else
        j->p->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    j->linked = false;
}

static void waiter_remove(th_job *j);

static void job_free(th_job *j)
{
    job_unlink(j);
    waiter_remove(j);
    free(j->target);
    free(j->prepared);
    if (j->req != NULL) th_client_cancel(j->req);
    if (j->lease != NULL && j->p->targets.release != NULL)
        j->p->targets.release(j->p->targets.ud, j->lease, j->lease_ok);
    j->lease = NULL;
    th_buf_free(&j->head);
    th_buf_free(&j->errbody);
    free(j->ctype);
    free((char *)j->sreq.text);
    free((char *)j->sreq.voice);
    free((char *)j->sreq.language);
    free((char *)j->sreq.prompt);
    free((char *)j->sreq.model);
    free((char *)j->sreq.generation);
    free(j);
}

/* Leaves a client callback: frees the job when it is over and nothing up the stack holds it. */
static void job_leave(th_job *j)
{
    j->in_cb--;
    if (j->in_cb == 0 && (j->ended || j->cancelled)) job_free(j);
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (s == NULL) return NULL;
    char *d = th_strndup(s, strlen(s));
    if (d == NULL) *oom = true;
    return d;
}

static int copy_req(th_synth_req *dst, const th_synth_req *src)
{
    bool oom = false;
    *dst = *src;
    dst->text = NULL;
    if (src->text != NULL) {
        dst->text = th_strndup(src->text, src->text_len);
        if (dst->text == NULL) oom = true;
    }
    dst->voice = dup_or_null(src->voice, &oom);
    dst->language = dup_or_null(src->language, &oom);
    dst->prompt = dup_or_null(src->prompt, &oom);
    dst->model = dup_or_null(src->model, &oom);
    dst->generation = dup_or_null(src->generation, &oom);
    return oom ? -1 : 0;
}

static th_job *job_new(up_provider *p)
{
    th_job *j = calloc(1, sizeof *j);
    if (j == NULL) return NULL;
    j->p = p;
    th_buf_init(&j->head, UP_HEAD_MAX);
    th_buf_init(&j->errbody, UP_ERRBODY_MAX);
    j->next = p->jobs;
    if (p->jobs) p->jobs->prev = j;
    p->jobs = j;
    j->linked = true;
    return j;
}

/* ---- ending a job ---- */

static void job_fail(th_job *j, th_perr *e)
{
    if (j->ended || j->cancelled) return;
    j->ended = true;
    if (e->kind != TH_PERR_CLIENT && e->kind != TH_PERR_CANCELLED) j->lease_ok = false;
    if (e->status == 0 && j->status != 0) e->status = j->status;
    if (e->retry_after_s == 0 && j->retry_after_s > 0) e->retry_after_s = j->retry_after_s;
    TH_LOG(j->p->log, TH_LOG_DEBUG, "provider %s: %s: %s", pname(j->p), th_perr_kind_name(e->kind),
           e->message);
    if (j->sink.on_error) j->sink.on_error(j->sink.ud, e);
}

static void job_done(th_job *j)
{
    if (j->ended || j->cancelled) return;
    j->ended = true;
    if (j->sink.on_done) j->sink.on_done(j->sink.ud);
}

/* Sets e->message to "<provider>: <message>". */
static void prefix_message(const up_provider *p, th_perr *e)
{
    char tmp[sizeof e->message];
    th_strlcpy(tmp, e->message, sizeof tmp);
    size_t n = th_strlcpy(e->message, pname(p), sizeof e->message);
    if (n + 2 < sizeof e->message) {
        memcpy(e->message + n, ": ", 3);
        th_strlcpy(e->message + n + 2, tmp, sizeof e->message - n - 2);
    }
}

/* ---- deferred start failures ---- */

static void on_idle(uv_idle_t *h)
{
    up_provider *p = h->data;
    for (;;) {
        if (p->closing) return;
        th_job *j = p->jobs;
        while (j != NULL && !(j->deferred && !j->cancelled && !j->ended))
            j = j->next;
        if (j == NULL) break;
        j->deferred = false;
        j->in_cb++;
        th_perr e = j->forced;
        job_fail(j, &e);
        job_leave(j);
    }
    uv_idle_stop(&p->idle);
    p->idle_on = false;
}

static void defer_fail(th_job *j, const th_perr *e)
{
    up_provider *p = j->p;
    j->forced = *e;
    j->has_forced = true;
    j->deferred = true;
    if (!p->idle_on) {
        uv_idle_start(&p->idle, on_idle);
        p->idle_on = true;
    }
}

/* ---- delivering audio ---- */

/* 1: pause, 0: go on, -1: the job was cancelled or ended inside the sink. */
static int deliver(th_job *j, const uint8_t *d, size_t len)
{
    int rc = j->sink.on_chunk ? j->sink.on_chunk(j->sink.ud, d, len) : 0;
    j->delivered += len;
    if (j->cancelled || j->ended) return -1;
    return rc == 1 ? 1 : 0;
}

static bool is_blank(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static bool is_text_type(const char *ct)
{
    if (ct == NULL) return false;
    while (*ct == ' ')
        ct++;
    return strncasecmp(ct, "text/", 5) == 0 || strncasecmp(ct, "application/json", 16) == 0 ||
           strncasecmp(ct, "application/problem+json", 24) == 0 ||
           strncasecmp(ct, "application/xml", 15) == 0;
}

/* A JSON or HTML/XML document, or plain text sent as text: an error page where audio was expected.
 * Audio almost never passes: its first bytes are never all printable for long. */
static bool looks_textual(const uint8_t *p, size_t n, const char *ctype)
{
    size_t i = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) i = 3; /* UTF-8 BOM */
    while (i < n && is_blank(p[i]))
        i++;
    if (i >= n) return n > 0;
    bool doc = p[i] == '{' || p[i] == '[' || p[i] == '<';
    if (!doc && !is_text_type(ctype)) return false;
    size_t lim = n < UP_TEXT_CHECK ? n : UP_TEXT_CHECK;
    for (size_t k = i; k < lim; k++) {
        uint8_t c = p[k];
        if ((c < 0x20 && !is_blank(c)) || c == 0x7f) return false;
    }
    return true;
}

static th_audio_spec choose_spec(const th_job *j, th_fmt sniffed)
{
    const th_audio_spec *d = &j->declared;
    th_audio_spec s = {sniffed, 0, 0, TH_SAMPLE_S16};
    if (sniffed != TH_FMT_NONE) {
        if (sniffed == d->fmt) s = *d; /* the container says the rest itself; keep what was declared */
        return s;
    }
    /* Nothing recognisable. MP3 and ADTS have no file signature (only frame syncs, possibly after a
     * few stray bytes): leave them to the decoder's probe. Anything else is headerless PCM. */
    if (d->fmt == TH_FMT_MP3 || d->fmt == TH_FMT_AAC) return *d;
    const th_provider_conf *pc = j->p->base.conf;
    s.fmt = TH_FMT_PCM;
    s.sample_rate = d->fmt == TH_FMT_PCM && d->sample_rate > 0 ? d->sample_rate
                    : pc->sample_rate > 0                      ? pc->sample_rate
                                                               : TH_PCM_DEFAULT_RATE;
    s.channels = d->fmt == TH_FMT_PCM && d->channels > 0 ? d->channels : 1;
    s.sample = d->fmt == TH_FMT_PCM ? d->sample : TH_SAMPLE_S16;
    return s;
}

/* Looks at the first n bytes of the body. 1: decided (j->spec set), 0: need more, -1: not audio (e set). */
static int decide_on(th_job *j, const uint8_t *p, size_t n, bool final, th_perr *e)
{
    bool can_wait = !final && n < UP_SNIFF_MAX;
    bool more = false;
    th_fmt f = th_fmt_sniff_ex(p, n, can_wait, &more);
    if (f == TH_FMT_NONE && can_wait && (more || n < UP_SNIFF_MIN)) return 0;
    const th_upstream_kind *k = j->p->kind;
    char ex[160];
    if (k->body_is_error != NULL && k->body_is_error(p, n)) {
        /* an error dressed as a success (OpenVoice answers rejections with 200): the kind maps it */
        if (k->error != NULL) {
            k->error(j->p->base.conf, j->status, j->ctype, p, n, e);
            if (e->kind != TH_PERR_NONE) return -1;
        }
        th_upstream_excerpt(p, n, ex, sizeof ex);
        th_perr_set(e, TH_PERR_PROTOCOL, j->status, "HTTP %d with an error instead of audio: %s", j->status,
                    ex);
        return -1;
    }
    if (f == TH_FMT_NONE && looks_textual(p, n, j->ctype)) {
        th_upstream_excerpt(p, n, ex, sizeof ex);
        th_perr_set(e, TH_PERR_PROTOCOL, j->status, "HTTP %d with %s instead of audio: %s", j->status,
                    j->ctype != NULL ? j->ctype : "text", ex);
        return -1;
    }
    j->spec = choose_spec(j, f);
    return 1;
}

/* decide_on the held bytes. */
static int decide(th_job *j, bool final, th_perr *e)
{
    return decide_on(j, j->head.data, j->head.len, final, e);
}

/* on_format, then the held bytes. Same return as deliver(). */
static int flush_head(th_job *j)
{
    j->format_sent = true;
    if (j->sink.on_format) j->sink.on_format(j->sink.ud, &j->spec);
    if (j->cancelled || j->ended) return -1;
    int rc = 0;
    if (j->head.len > 0) rc = deliver(j, j->head.data, j->head.len);
    th_buf_free(&j->head);
    return rc;
}

/* ---- client callbacks ---- */

static void force(th_job *j, th_perr_kind kind, const char *msg)
{
    if (j->has_forced) return;
    th_perr_set(&j->forced, kind, j->status, "%s", msg);
    j->has_forced = true;
}

static int cb_head(void *ud, int status, const th_client_header *h, size_t n)
{
    th_job *j = ud;
    if (j->cancelled || j->ended) return -1;
    j->status = status;
    free(j->ctype);
    j->ctype = NULL;
    const char *ct = th_client_header_get(h, n, "content-type");
    if (ct != NULL) {
        j->ctype = th_strndup(ct, strlen(ct));
        if (j->ctype == NULL) {
            force(j, TH_PERR_INTERNAL, "out of memory");
            return -1;
        }
    }
    const char *ra = th_client_header_get(h, n, "retry-after");
    if (ra != NULL) {
        int s = th_upstream_retry_after(ra, (int64_t)time(NULL));
        if (s > 0) j->retry_after_s = s;
    }
    if (j->probe_done != NULL) return 0;
    if (status >= 200 && status < 300) {
        j->mode = J_AUDIO;
        th_audio_spec spec = {th_fmt_from_mime(j->ctype), 0, 0, TH_SAMPLE_S16};
        if (j->p->kind->body_spec != NULL) j->p->kind->body_spec(j->p->base.conf, &j->sreq, j->ctype, &spec);
        j->declared = spec;
    } else {
        j->mode = J_ERRBODY;
    }
    return 0;
}

static int body_impl(th_job *j, const uint8_t *d, size_t len)
{
    if (j->probe_done != NULL) return 0; /* a probe only wants the status */
    if (j->mode == J_ERRBODY) {
        size_t room = UP_ERRBODY_MAX - j->errbody.len;
        size_t take = len < room ? len : room;
        if (take > 0 && th_buf_append(&j->errbody, d, take) != TH_BUF_OK) {
            force(j, TH_PERR_INTERNAL, "out of memory");
            return -1;
        }
        /* Enough to explain the failure: stop reading (the end maps the status, not the abort). */
        return j->errbody.len >= UP_ERRBODY_MAX ? -1 : 0;
    }
    if (j->mode != J_AUDIO) {
        force(j, TH_PERR_PROTOCOL, "body before the response head");
        return -1;
    }
    j->received += len;
    if (j->format_sent) return deliver(j, d, len);
    if (j->head.len == 0) {
        /* The first chunk usually decides by itself: then it goes on as it is, not through a copy in head
         * (a fresh buffer per request; the allocation showed in profiles of the Redis path). */
        th_perr e;
        int rc = decide_on(j, d, len, false, &e);
        if (rc < 0) {
            j->forced = e;
            j->has_forced = true;
            return -1;
        }
        if (rc == 1) {
            j->format_sent = true;
            if (j->sink.on_format) j->sink.on_format(j->sink.ud, &j->spec);
            if (j->cancelled || j->ended) return -1;
            return deliver(j, d, len);
        }
    }
    if (th_buf_append(&j->head, d, len) != TH_BUF_OK) {
        force(j, TH_PERR_INTERNAL, "out of memory");
        return -1;
    }
    th_perr e;
    int rc = decide(j, false, &e);
    if (rc == 0) return 0;
    if (rc < 0) {
        j->forced = e;
        j->has_forced = true;
        return -1;
    }
    return flush_head(j);
}

static int cb_body(void *ud, const uint8_t *d, size_t len)
{
    th_job *j = ud;
    if (j->cancelled || j->ended) return -1;
    j->in_cb++;
    int rc = body_impl(j, d, len);
    bool over = j->cancelled || j->ended;
    job_leave(j);
    return over ? -1 : rc;
}

static void status_error(th_job *j, th_perr *e)
{
    const up_provider *p = j->p;
    memset(e, 0, sizeof *e);
    if (p->kind->error != NULL)
        p->kind->error(p->base.conf, j->status, j->ctype, j->errbody.data, j->errbody.len, e);
    if (e->kind == TH_PERR_NONE) {
        char ex[160];
        th_upstream_excerpt(j->errbody.data, j->errbody.len, ex, sizeof ex);
        th_upstream_error_generic(j->status, ex, e);
    }
    if (e->status == 0) e->status = j->status;
}

static uint64_t total_ms(uint64_t timeout)
{
    uint64_t t = timeout > UINT64_MAX / 4 ? UINT64_MAX : timeout * 4;
    return t < UP_TOTAL_MIN_MS ? UP_TOTAL_MIN_MS : t;
}

/* How the transfer ended, as the sink's end:
 *   our own stop (not audio, out of memory)           -> what we decided
 *   a non-2xx status (whatever happened to its body)  -> kind->error(), else th_upstream_error_generic()
 *   OK, 2xx, audio                                    -> on_done; zero audio bytes -> PROTOCOL "empty audio"
 *   CONNECT                                           -> CONNECT
 *   TIMEOUT_CONNECT, TIMEOUT_FIRST, TIMEOUT_TOTAL     -> TIMEOUT
 *   RESET before any response byte                    -> CONNECT (the engine dropped the connection
 *                                                        without answering: down or crashing)
 *   RESET after the head, PROTOCOL, TOO_LARGE         -> PROTOCOL ("after N bytes" once audio came)
 *   ABORTED without a reason, INTERNAL                -> INTERNAL */
static bool job_again(th_job *j);

static bool end_impl(th_job *j, th_client_result res, const char *detail)
{
    th_perr e;
    memset(&e, 0, sizeof e);
    const char *rn = th_client_result_name(res);
    const th_upstream_kind *k = j->p->kind;
    if (j->has_forced) {
        e = j->forced;
    } else if (j->mode == J_ERRBODY && j->sreq.ref != NULL && j->pass == 0 && k->ref_lost != NULL &&
               k->ref_lost(j->p->base.conf, j->status, j->errbody.data, j->errbody.len)) {
        return job_again(j);
    } else if (j->mode == J_ERRBODY) {
        status_error(j, &e);
    } else {
        char after[64] = "";
        if (j->received > 0 && res != TH_CLIENT_OK)
            snprintf(after, sizeof after, " after %llu bytes", (unsigned long long)j->received);
        switch (res) {
        case TH_CLIENT_OK:
            if (j->mode != J_AUDIO) {
                th_perr_set(&e, TH_PERR_PROTOCOL, j->status, "no response");
                break;
            }
            if (!j->format_sent) {
                if (j->head.len == 0) {
                    th_perr_set(&e, TH_PERR_PROTOCOL, j->status, "HTTP %d with empty audio", j->status);
                    break;
                }
                int rc = decide(j, true, &e);
                if (rc < 0) break;
                if (flush_head(j) < 0) return false; /* cancelled or ended inside the sink */
            }
            job_done(j);
            return false;
        case TH_CLIENT_CONNECT:
            th_perr_set(&e, TH_PERR_CONNECT, 0, "cannot connect: %s", detail);
            break;
        case TH_CLIENT_TIMEOUT_CONNECT:
            th_perr_set(
                &e, TH_PERR_TIMEOUT, 0, "not connected within %llu ms",
                (unsigned long long)(j->timeout_ms < UP_CONNECT_MAX_MS ? j->timeout_ms : UP_CONNECT_MAX_MS));
            break;
        case TH_CLIENT_TIMEOUT_FIRST:
            th_perr_set(&e, TH_PERR_TIMEOUT, 0, "no response within %llu ms",
                        (unsigned long long)j->timeout_ms);
            break;
        case TH_CLIENT_TIMEOUT_TOTAL:
            th_perr_set(&e, TH_PERR_TIMEOUT, j->status, "transfer longer than %llu ms%s",
                        (unsigned long long)total_ms(j->timeout_ms), after);
            break;
        case TH_CLIENT_RESET:
            if (j->mode == J_HEAD)
                th_perr_set(&e, TH_PERR_CONNECT, 0, "connection closed before any response (%s)", detail);
            else
                th_perr_set(&e, TH_PERR_PROTOCOL, j->status, "connection closed%s (%s)", after, detail);
            break;
        case TH_CLIENT_PROTOCOL:
        case TH_CLIENT_TOO_LARGE:
            th_perr_set(&e, TH_PERR_PROTOCOL, j->status, "bad HTTP response%s: %s (%s)", after, rn, detail);
            break;
        case TH_CLIENT_ABORTED:
        case TH_CLIENT_CANCELLED:
        case TH_CLIENT_INTERNAL:
        default:
            th_perr_set(&e, TH_PERR_INTERNAL, j->status, "transfer failed: %s (%s)", rn, detail);
            break;
        }
    }
    prefix_message(j->p, &e);
    job_fail(j, &e);
    return false;
}

static void probe_end(th_job *j, th_client_result res, const char *detail)
{
    char msg[256];
    bool healthy = false;
    if (res == TH_CLIENT_OK) {
        int s = j->status;
        healthy = (s >= 200 && s < 400) || s == 404 || s == 405;
        snprintf(msg, sizeof msg, "HTTP %d", s);
    } else {
        snprintf(msg, sizeof msg, "%s: %s", th_client_result_name(res), detail);
    }
    j->ended = true;
    j->probe_done(j->probe_ud, healthy, msg);
}

static void cb_done(void *ud, th_client_result res, int status, const char *detail)
{
    th_job *j = ud;
    j->req = NULL; /* the client reuses it after this returns */
    if (j->cancelled || j->ended) return;
    if (status != 0) j->status = status;
    j->in_cb++;
    bool again = false;
    if (j->probe_done != NULL)
        probe_end(j, res, detail != NULL ? detail : "");
    else
        again = end_impl(j, res, detail != NULL ? detail : "");
    if (!again) j->ended = true; /* the transfer is over whatever the sink did */
    job_leave(j);
}

static int send_req(th_job *j, th_upstream_http *h, uint64_t connect_ms, uint64_t first_ms, uint64_t total)
{
    int rc = -1;
    const char **hdrs = NULL;
    const char *url = th_buf_cstr(&h->url);
    char *hb = th_buf_cstr(&h->headers);
    if (url == NULL || hb == NULL || url[0] == '\0') goto out;
    size_t nl = 0;
    for (char *c = hb; *c; c++)
        if (*c == '\n') nl++;
    hdrs = calloc(nl + 2, sizeof *hdrs);
    if (hdrs == NULL) goto out;
    size_t k = 0;
    for (char *line = hb; *line;) {
        char *e = strchr(line, '\n');
        if (e != NULL) *e = '\0';
        if (line[0] != '\0') hdrs[k++] = line;
        if (e == NULL) break;
        line = e + 1;
    }
    hdrs[k] = NULL;
    th_client_opts o = {
        .method = h->method,
        .url = url,
        .headers = hdrs,
        .connect_timeout_ms = connect_ms,
        .first_byte_timeout_ms = first_ms,
        .total_timeout_ms = total,
    };
    th_client_seg segs[3];
    if (up_body_opts(h, &o, segs) != 0) goto out;
    th_client_cb cb = {cb_head, cb_body, cb_done, j};
    j->req = th_client_start(j->p->client, &o, &cb);
    if (j->req != NULL)
        rc = 0;
    else
        up_body_unhold(&o);
out:
    free(hdrs);
    return rc;
}

/* ---- library voices: entries, uploads, files (see the header comment) ---- */

struct up_call {
    up_provider *p;
    up_call *prev, *next;
    th_client_req *req;
    int status;
    th_buf body;
    void (*done)(up_call *c, th_client_result res, const char *detail);
    void *ud;
    void (*ud_free)(void *ud); /* the provider went away first */
};

struct up_entry {
    up_provider *p;
    up_entry *prev, *next;
    char key[800];
    char *target; /* ref_per_target: the base URL it is made on */
    char *value;  /* once made */
    bool made;
    bool doomed; /* voice_forget while it was being made: drop once made */
    int step;
    th_voice_ref *ref; /* a copy with the audio, while being made */
    th_job *waiters;
    up_call *call;
    up_work *work;
};

struct up_work {
    uv_work_t w;
    up_provider *p; /* NULL once the provider went away */
    up_work *prev, *next;
    up_entry *en; /* NULL for a removal */
    char path[4096];
    char value[UP_VALUE_MAX];
    const uint8_t *data; /* the entry's copy of the audio (the entry outlives the work) */
    size_t len;
    th_voice_ref *own_ref; /* keeps data alive when the entry went away first */
    int rc;
    char err[256];
};

static void waiter_remove(th_job *j)
{
    up_entry *en = j->wait_en;
    if (en == NULL) return;
    if (j->wprev)
        j->wprev->wnext = j->wnext;
    else
        en->waiters = j->wnext;
    if (j->wnext) j->wnext->wprev = j->wprev;
    j->wprev = j->wnext = NULL;
    j->wait_en = NULL;
}

static void waiter_add(up_entry *en, th_job *j)
{
    j->wait_en = en;
    j->wprev = NULL;
    j->wnext = en->waiters;
    if (en->waiters) en->waiters->wprev = j;
    en->waiters = j;
}

static void call_unlink(up_call *c)
{
    up_provider *p = c->p;
    if (c->prev)
        c->prev->next = c->next;
    else if (p->calls == c)
        p->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static int call_head(void *ud, int status, const th_client_header *h, size_t n)
{
    up_call *c = ud;
    c->status = status;
    return 0;
}

static int call_body(void *ud, const uint8_t *d, size_t len)
{
    up_call *c = ud;
    size_t room = UP_CALL_BODY_MAX - c->body.len;
    if (len > room) len = room; /* enough to read an answer: the rest is dropped */
    if (len > 0 && th_buf_append(&c->body, d, len) != TH_BUF_OK) return -1;
    return 0;
}

static void call_done(void *ud, th_client_result res, int status, const char *detail)
{
    up_call *c = ud;
    c->req = NULL;
    if (status != 0) c->status = status;
    call_unlink(c);
    c->done(c, res, detail != NULL ? detail : "");
    th_buf_free(&c->body);
    free(c);
}

static int send_req(th_job *j, th_upstream_http *h, uint64_t connect_ms, uint64_t first_ms, uint64_t total);
static uint64_t total_ms(uint64_t timeout);

/* Starts a reference request; done gets its end (never inside this call). 0, or -1. */
static int call_start(up_provider *p, th_upstream_http *h,
                      void (*done)(up_call *, th_client_result, const char *), void *ud,
                      void (*ud_free)(void *))
{
    up_call *c = calloc(1, sizeof *c);
    if (c == NULL) return -1;
    c->p = p;
    c->done = done;
    c->ud = ud;
    c->ud_free = ud_free;
    th_buf_init(&c->body, UP_CALL_BODY_MAX);
    const th_provider_conf *pc = p->base.conf;
    uint64_t t = pc->timeout_ms > 0 ? pc->timeout_ms : UP_DEFAULT_TIMEOUT_MS;
    const char *url = th_buf_cstr(&h->url);
    char *hb = th_buf_cstr(&h->headers);
    const char *hdrs[33];
    size_t k = 0;
    for (char *line = hb; line != NULL && *line && k < 32;) {
        char *e = strchr(line, '\n');
        if (e != NULL) *e = '\0';
        if (line[0] != '\0') hdrs[k++] = line;
        if (e == NULL) break;
        line = e + 1;
    }
    hdrs[k] = NULL;
    th_client_opts o = {
        .method = h->method,
        .url = url,
        .headers = hdrs,
        .connect_timeout_ms = t < UP_CONNECT_MAX_MS ? t : UP_CONNECT_MAX_MS,
        .first_byte_timeout_ms = t,
        .total_timeout_ms = total_ms(t),
    };
    th_client_seg segs[3];
    th_client_cb cb = {call_head, call_body, call_done, c};
    bool bodied = up_body_opts(h, &o, segs) == 0;
    if (bodied && url != NULL && url[0] != 0) c->req = th_client_start(p->client, &o, &cb);
    if (c->req == NULL) {
        if (bodied) up_body_unhold(&o);
        th_buf_free(&c->body);
        free(c);
        return -1;
    }
    c->next = p->calls;
    if (p->calls) p->calls->prev = c;
    p->calls = c;
    return 0;
}

static void call_fail_perr(th_client_result res, const char *detail, th_perr *e)
{
    th_perr_kind k =
        res == TH_CLIENT_TIMEOUT_CONNECT || res == TH_CLIENT_TIMEOUT_FIRST || res == TH_CLIENT_TIMEOUT_TOTAL
            ? TH_PERR_TIMEOUT
        : res == TH_CLIENT_CONNECT || res == TH_CLIENT_RESET ? TH_PERR_CONNECT
                                                             : TH_PERR_PROTOCOL;
    th_perr_set(e, k, 0, "reference request failed: %s (%s)", th_client_result_name(res), detail);
}

static up_entry *entry_find(up_provider *p, const char *key)
{
    for (up_entry *en = p->entries; en != NULL; en = en->next) {
        if (strcmp(en->key, key) != 0) continue;
        if (en != p->entries) { /* most recently used first */
            en->prev->next = en->next;
            if (en->next) en->next->prev = en->prev;
            en->prev = NULL;
            en->next = p->entries;
            p->entries->prev = en;
            p->entries = en;
        }
        return en;
    }
    return NULL;
}

/* Unlinks and frees an entry that nobody waits for. A running file write is detached (it keeps the audio). */
static void entry_free(up_entry *en)
{
    up_provider *p = en->p;
    if (en->prev)
        en->prev->next = en->next;
    else if (p->entries == en)
        p->entries = en->next;
    if (en->next) en->next->prev = en->prev;
    p->n_entries--;
    if (en->call != NULL) {
        en->call->ud = NULL; /* its end finds no entry */
        en->call = NULL;
    }
    if (en->work != NULL) {
        en->work->en = NULL;
        en->work->own_ref = en->ref; /* the write still reads it */
        en->ref = NULL;
        en->work = NULL;
    }
    while (en->waiters != NULL)
        waiter_remove(en->waiters);
    free(en->ref);
    free(en->value);
    free(en->target);
    free(en);
}

static bool per_target(const up_provider *p)
{
    return p->kind->ref_per_target != NULL && p->kind->ref_per_target(p->base.conf);
}

static up_entry *entry_new(up_provider *p, const char *key, const th_voice_ref *ref, const char *target)
{
    if (p->n_entries >= UP_ENTRIES_MAX) { /* drop the least recently used entry that nobody waits for */
        up_entry *last = p->entries;
        while (last != NULL && last->next != NULL)
            last = last->next;
        while (last != NULL && (!last->made || last->waiters != NULL))
            last = last->prev;
        if (last == NULL) return NULL;
        entry_free(last);
    }
    up_entry *en = calloc(1, sizeof *en);
    if (en == NULL) return NULL;
    en->ref = th_voice_ref_copy(ref, true);
    if (en->ref == NULL) {
        free(en);
        return NULL;
    }
    if (target != NULL) {
        en->target = th_strndup(target, strlen(target));
        if (en->target == NULL) {
            free(en->ref);
            free(en);
            return NULL;
        }
    }
    en->p = p;
    th_strlcpy(en->key, key, sizeof en->key);
    en->next = p->entries;
    if (p->entries) p->entries->prev = en;
    p->entries = en;
    p->n_entries++;
    return en;
}

static int transfer_start(th_job *j, th_perr *e);
static void job_fail(th_job *j, th_perr *e);
static void job_leave(th_job *j);
static void prefix_message(const up_provider *p, th_perr *e);
static void ref_forget_value(up_provider *p, const th_voice_ref *ref, const char *value);

/* The entry is made (value) or failed (e): every waiter goes on or fails. Frees a failed or doomed entry. */
static void entry_finish(up_entry *en, const char *value, const th_perr *e)
{
    up_provider *p = en->p;
    if (value != NULL) {
        en->value = th_strndup(value, strlen(value));
        if (en->value != NULL) {
            en->made = true;
            p->ref_stats.made++;
            TH_LOG(p->log, TH_LOG_INFO, "provider %s: reference of voice %s ready on %s (%s)", pname(p),
                   en->ref != NULL ? en->ref->id : "?", en->target != NULL ? en->target : "the engine",
                   en->value);
            if (en->target != NULL && en->ref != NULL && !en->doomed && p->targets.ref_note != NULL)
                p->targets.ref_note(p->targets.ud, en->target, en->ref, true);
        }
    }
    th_perr oom;
    if (value != NULL && en->value == NULL) {
        th_perr_set(&oom, TH_PERR_INTERNAL, 0, "out of memory");
        e = &oom;
    }
    if (!en->made) p->ref_stats.failed++;
    if (!en->made && e != NULL)
        TH_LOG(p->log, TH_LOG_WARN, "provider %s: reference of voice %s not made: %s: %s", pname(p),
               en->ref != NULL ? en->ref->id : "?", th_perr_kind_name(e->kind), e->message);
    th_job *j;
    while (!p->closing && (j = en->waiters) != NULL) {
        waiter_remove(j);
        j->in_cb++;
        th_perr fe;
        if (en->made) {
            j->prepared = th_strndup(en->value, strlen(en->value));
            if (j->prepared == NULL) {
                th_perr_set(&fe, TH_PERR_INTERNAL, 0, "out of memory");
                prefix_message(p, &fe);
                job_fail(j, &fe);
            } else if (transfer_start(j, &fe) != 0) {
                prefix_message(p, &fe);
                job_fail(j, &fe);
            }
        } else {
            fe = *e;
            prefix_message(p, &fe);
            job_fail(j, &fe);
        }
        job_leave(j);
    }
    if (p->closing) return; /* destroy frees the entries */
    if (en->made && en->target != NULL && en->waiters == NULL && p->targets.ref_note != NULL) {
        /* the targets keep the record */
        entry_free(en);
        return;
    }
    if (en->made && en->doomed) { /* forgotten while it was being made */
        char *v = en->value;
        th_voice_ref *r = en->ref;
        en->value = NULL;
        en->ref = NULL;
        entry_free(en);
        if (r != NULL) ref_forget_value(p, r, v);
        free(r);
        free(v);
        return;
    }
    free(en->ref);
    en->ref = NULL;
    if (!en->made) entry_free(en);
}

static void entry_step(up_entry *en, int status, const uint8_t *body, size_t len);

static void entry_call_done(up_call *c, th_client_result res, const char *detail)
{
    up_entry *en = c->ud;
    if (en == NULL) return; /* dropped meanwhile */
    en->call = NULL;
    if (res != TH_CLIENT_OK) {
        th_perr e;
        call_fail_perr(res, detail, &e);
        entry_finish(en, NULL, &e);
        return;
    }
    entry_step(en, c->status, c->body.data, c->body.len);
}

/* Runs the kind's next step: starts a request, or finishes the entry. */
static void entry_step(up_entry *en, int status, const uint8_t *body, size_t len)
{
    up_provider *p = en->p;
    const th_provider_conf *pc = p->base.conf;
    th_upstream_http h;
    th_upstream_http_init(&h);
    h.base_url = en->target != NULL ? en->target : pc->base_url;
    char value[UP_VALUE_MAX] = "";
    th_perr e;
    memset(&e, 0, sizeof e);
    int rc = p->kind->ref_make(pc, en->ref, en->step, status, body, len, &h, value, sizeof value, &e);
    if (rc == 1) {
        en->step++;
        if (call_start(p, &h, entry_call_done, en, NULL) == 0) {
            en->call = p->calls; /* call_start put it first */
            th_upstream_http_free(&h);
            return;
        }
        th_perr_set(&e, TH_PERR_INTERNAL, 0, "cannot start the reference request");
        rc = -1;
    }
    th_upstream_http_free(&h);
    if (rc == 0)
        entry_finish(en, value, NULL);
    else {
        if (e.kind == TH_PERR_NONE) th_perr_set(&e, TH_PERR_INTERNAL, 0, "cannot make the reference");
        entry_finish(en, NULL, &e);
    }
}

/* ---- reference files on shared storage (kind->ref_files) ---- */

static const char *ref_dir(const th_provider_conf *pc)
{
    const char *d = th_upstream_opt(pc, "ref_dir", NULL);
    return d != NULL && d[0] != 0 ? d : NULL;
}

/* The file's path on our side and the value for build(). 0, or -1 (err). */
static int ref_file_paths(const th_provider_conf *pc, const th_upstream_kind *k, const th_voice_ref *ref,
                          char *path, size_t pn, char *value, size_t vn, th_perr *err)
{
    char name[128];
    const char *dir = ref_dir(pc);
    if (dir == NULL) {
        th_perr_set(err, TH_PERR_STATUS, 0, "ref_dir is not set: this provider cannot speak library voices");
        return -1;
    }
    if (th_voice_ref_file_name(ref, name, sizeof name) != 0) {
        th_perr_set(err, TH_PERR_INTERNAL, 0, "the library voice has a bad id or sha256");
        return -1;
    }
    const char *edir = th_upstream_opt(pc, "ref_dir_engine", NULL);
    if (edir != NULL && edir[0] == 0) edir = NULL;
    size_t dl = strlen(dir), el;
    while (dl > 1 && dir[dl - 1] == '/')
        dl--;
    int n = snprintf(path, pn, "%.*s/%s", (int)dl, dir, name);
    if (n < 0 || (size_t)n >= pn) goto toolong;
    if (edir == NULL && k->ref_file_name_only) {
        n = snprintf(value, vn, "%s", name);
    } else {
        if (edir == NULL) edir = dir;
        el = strlen(edir);
        while (el > 1 && edir[el - 1] == '/')
            el--;
        n = snprintf(value, vn, "%.*s/%s", (int)el, edir, name);
    }
    if (n < 0 || (size_t)n >= vn) goto toolong;
    return 0;
toolong:
    th_perr_set(err, TH_PERR_STATUS, 0, "ref_dir is too long");
    return -1;
}

static void work_unlink(up_work *w)
{
    up_provider *p = w->p;
    if (p == NULL) return;
    if (w->prev)
        w->prev->next = w->next;
    else if (p->works == w)
        p->works = w->next;
    if (w->next) w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

/* thread pool: writes the file unless it is there already (a complete one: they are only ever renamed in) */
static void work_write(uv_work_t *req)
{
    up_work *w = req->data;
    struct stat st;
    if (stat(w->path, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == w->len) {
        w->rc = 0;
        return;
    }
    char dir[4096];
    th_strlcpy(dir, w->path, sizeof dir);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = 0;
        if (th_mkdirs(dir) != 0) {
            snprintf(w->err, sizeof w->err, "cannot create ref_dir: %s", strerror(errno));
            w->rc = -1;
            return;
        }
    }
    w->rc = th_atomic_write(w->path, w->data, w->len, w->err, sizeof w->err);
}

static void work_remove(uv_work_t *req)
{
    up_work *w = req->data;
    w->rc = unlink(w->path) == 0 || errno == ENOENT ? 0 : -1;
    if (w->rc != 0) snprintf(w->err, sizeof w->err, "%s", strerror(errno));
}

static void work_after(uv_work_t *req, int status)
{
    up_work *w = req->data;
    up_provider *p = w->p;
    up_entry *en = w->en;
    work_unlink(w);
    if (p != NULL && en != NULL) {
        en->work = NULL;
        th_perr e;
        if (status == 0 && w->rc == 0) {
            entry_finish(en, w->value, NULL);
        } else {
            th_perr_set(&e, TH_PERR_STATUS, 0, "%s", status != 0 ? "the file write was cancelled" : w->err);
            entry_finish(en, NULL, &e);
        }
    } else if (p != NULL && en == NULL && w->rc != 0 && w->data == NULL) {
        TH_LOG(p->log, TH_LOG_WARN, "provider %s: cannot remove a reference file: %s", pname(p), w->err);
    }
    free(w->own_ref);
    free(w);
}

static up_work *work_new(up_provider *p)
{
    up_work *w = calloc(1, sizeof *w);
    if (w == NULL) return NULL;
    w->p = p;
    w->w.data = w;
    w->next = p->works;
    if (p->works) p->works->prev = w;
    p->works = w;
    return w;
}

/* Starts making an entry: a file write or the kind's first HTTP step. 0: under way; 1: made at once; -1 with
 * e: failed at once (the entry is then freed). Runs inside start(): calls no sink. */
static int entry_begin(up_entry *en, th_perr *e)
{
    up_provider *p = en->p;
    if (p->kind->ref_files) {
        up_work *w = work_new(p);
        if (w == NULL) {
            th_perr_set(e, TH_PERR_INTERNAL, 0, "out of memory");
            entry_free(en);
            return -1;
        }
        if (ref_file_paths(p->base.conf, p->kind, en->ref, w->path, sizeof w->path, w->value, sizeof w->value,
                           e) != 0) {
            work_unlink(w);
            free(w);
            entry_free(en);
            return -1;
        }
        w->en = en;
        w->data = en->ref->wav;
        w->len = en->ref->wav_len;
        en->work = w;
        if (uv_queue_work(p->loop, &w->w, work_write, work_after) != 0) {
            work_unlink(w);
            free(w);
            en->work = NULL;
            th_perr_set(e, TH_PERR_INTERNAL, 0, "cannot queue the file write");
            entry_free(en);
            return -1;
        }
        return 0;
    }
    const th_provider_conf *pc = p->base.conf;
    th_upstream_http h;
    th_upstream_http_init(&h);
    h.base_url = en->target != NULL ? en->target : pc->base_url;
    char value[UP_VALUE_MAX] = "";
    memset(e, 0, sizeof *e);
    int rc = p->kind->ref_make(pc, en->ref, 0, 0, NULL, 0, &h, value, sizeof value, e);
    if (rc == 1) {
        en->step = 1;
        if (call_start(p, &h, entry_call_done, en, NULL) == 0) {
            en->call = p->calls;
            rc = 0;
        } else {
            th_perr_set(e, TH_PERR_INTERNAL, 0, "cannot start the reference request");
            rc = -1;
        }
    } else if (rc == 0) {
        en->value = th_strndup(value, strlen(value));
        if (en->value != NULL) {
            en->made = true;
            free(en->ref);
            en->ref = NULL;
            rc = 1;
        } else {
            th_perr_set(e, TH_PERR_INTERNAL, 0, "out of memory");
            rc = -1;
        }
    }
    th_upstream_http_free(&h);
    if (rc < 0) {
        if (e->kind == TH_PERR_NONE) th_perr_set(e, TH_PERR_INTERNAL, 0, "cannot make the reference");
        entry_free(en);
    }
    return rc;
}

/* The key of what must be made for the job's reference: 1 (key set), 0 (nothing to make), -1 (e). */
static int ref_key_of1(up_provider *p, const th_voice_ref *ref, char *key, size_t n, th_perr *e);

/* The same, made per target (kind->ref_per_target): "<key>@<target>". */
static int ref_key_of(up_provider *p, const th_voice_ref *ref, const char *target, char *key, size_t n,
                      th_perr *e)
{
    int rc = ref_key_of1(p, ref, key, n, e);
    if (rc != 1 || !per_target(p)) return rc;
    size_t l = strlen(key);
    int k = snprintf(key + l, n - l, "@%s", target != NULL ? target : "");
    if (k < 0 || (size_t)k >= n - l) {
        th_perr_set(e, TH_PERR_INTERNAL, 0, "the reference key is too long");
        return -1;
    }
    return 1;
}

static int ref_key_of1(up_provider *p, const th_voice_ref *ref, char *key, size_t n, th_perr *e)
{
    if (ref == NULL) return 0;
    if (p->kind->ref_files) {
        if (th_voice_ref_file_name(ref, key, n) != 0) {
            th_perr_set(e, TH_PERR_INTERNAL, 0, "the library voice has a bad id or sha256");
            return -1;
        }
        if (ref_dir(p->base.conf) == NULL) {
            th_perr_set(e, TH_PERR_STATUS, 0,
                        "ref_dir is not set: this provider cannot speak library voices");
            return -1;
        }
        return 1;
    }
    if (p->kind->ref_key == NULL || p->kind->ref_make == NULL) return 0;
    return p->kind->ref_key(p->base.conf, ref, key, n, e);
}

/* Gets the job's reference ready: 1 when the transfer can start now (j->prepared set, or nothing to make),
 * 0 when the job waits for an entry, -1 with e. */
static int ref_ready(th_job *j, th_perr *e)
{
    up_provider *p = j->p;
    char key[800];
    int rc = ref_key_of(p, j->sreq.ref, j->target, key, sizeof key, e);
    if (rc <= 0) return rc < 0 ? -1 : 1;
    up_entry *en = entry_find(p, key);
    if (per_target(p)) {
        /* the targets' record decides: held -> speak; else make it on this target (again) */
        if (p->targets.ref_holds != NULL && p->targets.ref_holds(p->targets.ud, j->target, j->sreq.ref))
            return 1;
        if (en != NULL && en->made && en->waiters == NULL && p->targets.ref_holds != NULL) {
            entry_free(en);
            en = NULL;
        }
    }
    if (en != NULL && en->made) {
        free(j->prepared);
        j->prepared = th_strndup(en->value, strlen(en->value));
        if (j->prepared == NULL) {
            th_perr_set(e, TH_PERR_INTERNAL, 0, "out of memory");
            return -1;
        }
        return 1;
    }
    if (en == NULL) {
        en = entry_new(p, key, j->sreq.ref,
                       per_target(p) ? (j->target ? j->target : p->base.conf->base_url) : NULL);
        if (en == NULL) {
            th_perr_set(e, TH_PERR_OVERLOADED, 0, "too many references being made");
            return -1;
        }
        int b = entry_begin(en, e);
        if (b < 0) return -1;
        if (b == 1) {
            j->prepared = th_strndup(en->value, strlen(en->value));
            if (j->prepared == NULL) {
                th_perr_set(e, TH_PERR_INTERNAL, 0, "out of memory");
                return -1;
            }
            return 1;
        }
    }
    waiter_add(en, j);
    return 0;
}

/* Drops the entry for the job's reference when it still holds what the job used (the engine lost it). */
static void ref_drop_entry(th_job *j)
{
    up_provider *p = j->p;
    char key[800];
    th_perr e;
    if (per_target(p) && p->targets.ref_note != NULL && j->target != NULL)
        p->targets.ref_note(p->targets.ud, j->target, j->sreq.ref, false);
    if (ref_key_of(p, j->sreq.ref, j->target, key, sizeof key, &e) != 1) return;
    up_entry *en = entry_find(p, key);
    if (en == NULL || !en->made || en->waiters != NULL) return;
    if (j->prepared != NULL && en->value != NULL && strcmp(en->value, j->prepared) != 0) return;
    entry_free(en);
}

static void drop_call_done(up_call *c, th_client_result res, const char *detail);

typedef struct up_drop {
    th_voice_ref *ref; /* without audio */
    char *value;
    int step;
} up_drop;

static void drop_free(void *ud)
{
    up_drop *d = ud;
    if (d == NULL) return;
    free(d->ref);
    free(d->value);
    free(d);
}

static void drop_step(up_provider *p, up_drop *d, int status, const uint8_t *body, size_t len)
{
    th_upstream_http h;
    th_upstream_http_init(&h);
    h.base_url = p->base.conf->base_url;
    int rc = p->kind->ref_drop(p->base.conf, d->ref, d->value, d->step, status, body, len, &h);
    if (rc == 1) {
        d->step++;
        if (call_start(p, &h, drop_call_done, d, drop_free) == 0) {
            th_upstream_http_free(&h);
            return;
        }
        TH_LOG(p->log, TH_LOG_WARN, "provider %s: cannot start the request to drop voice %s", pname(p),
               d->ref->id);
    } else {
        TH_LOG(p->log, TH_LOG_INFO, "provider %s: voice %s dropped from the engine", pname(p), d->ref->id);
    }
    th_upstream_http_free(&h);
    drop_free(d);
}

static void drop_call_done(up_call *c, th_client_result res, const char *detail)
{
    up_drop *d = c->ud;
    if (res != TH_CLIENT_OK) {
        TH_LOG(c->p->log, TH_LOG_WARN, "provider %s: dropping voice %s failed: %s (%s)", pname(c->p),
               d->ref->id, th_client_result_name(res), detail);
        drop_free(d);
        return;
    }
    drop_step(c->p, d, c->status, c->body.data, c->body.len);
}

/* Removes what the engine holds for ref (value: what was made, or NULL when unknown here). */
static void ref_forget_value(up_provider *p, const th_voice_ref *ref, const char *value)
{
    if (p->kind->ref_files) {
        char path[4096], v[UP_VALUE_MAX];
        th_perr e;
        if (ref_file_paths(p->base.conf, p->kind, ref, path, sizeof path, v, sizeof v, &e) != 0) return;
        up_work *w = work_new(p);
        if (w == NULL) return;
        th_strlcpy(w->path, path, sizeof w->path);
        if (uv_queue_work(p->loop, &w->w, work_remove, work_after) != 0) {
            work_unlink(w);
            free(w);
        }
        return;
    }
    if (p->kind->ref_drop == NULL) return;
    up_drop *d = calloc(1, sizeof *d);
    if (d == NULL) return;
    d->ref = th_voice_ref_copy(ref, false);
    d->value = value != NULL ? th_strndup(value, strlen(value)) : NULL;
    if (d->ref == NULL || (value != NULL && d->value == NULL)) {
        drop_free(d);
        return;
    }
    drop_step(p, d, 0, NULL, 0);
}

static void up_voice_forget(th_provider *bp, const th_voice_ref *ref)
{
    up_provider *p = (up_provider *)bp;
    if (p == NULL || p->closing || ref == NULL) return;
    char key[800];
    th_perr e;
    if (per_target(p)) { /* every target's entry goes; the targets forget it */
        if (ref_key_of1(p, ref, key, sizeof key, &e) != 1) return;
        size_t kl = strlen(key);
        for (up_entry *en = p->entries, *next; en != NULL; en = next) {
            next = en->next;
            if (strncmp(en->key, key, kl) != 0 || en->key[kl] != '@') continue;
            if (!en->made)
                en->doomed = true;
            else
                entry_free(en);
        }
        if (p->targets.ref_note != NULL) p->targets.ref_note(p->targets.ud, NULL, ref, false);
        return;
    }
    int rc = ref_key_of(p, ref, NULL, key, sizeof key, &e);
    if (rc != 1) return; /* nothing was made on the engine for it */
    up_entry *en = entry_find(p, key);
    if (en != NULL && !en->made) { /* being made: drop it once made */
        en->doomed = true;
        return;
    }
    char *value = NULL;
    if (en != NULL) {
        value = en->value;
        en->value = NULL;
        entry_free(en);
    }
    ref_forget_value(p, ref, value);
    free(value);
}

/* ---- ops ---- */

static th_provider *up_create(uv_loop_t *loop, const th_provider_conf *conf, th_log *log, char *err,
                              size_t errlen)
{
    const th_upstream_kind *k = conf != NULL ? th_upstream_find(conf->type) : NULL;
    if (k == NULL) {
        snprintf(err, errlen, "unknown upstream kind %s", conf != NULL && conf->type ? conf->type : "(none)");
        return NULL;
    }
    up_provider *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->base.ops = &th_upstream_ops;
    p->base.conf = conf;
    p->base.caps = k->caps;
    if (conf->formats != 0) p->base.caps.formats = conf->formats;
    if (conf->max_input_chars != 0) p->base.caps.max_input_chars = conf->max_input_chars;
    p->kind = k;
    p->log = log;
    p->loop = loop;
    /* a kind that reads references from shared storage speaks library voices only with a ref_dir */
    if (k->ref_files && ref_dir(conf) == NULL) p->base.caps.can_clone = false;
    /* a pool of nodes whose engine cannot clone (the embedded espeak-ng, plain speech kinds) would be sent
     * the reference and refuse it: library voices go to the providers that can speak them */
    if (k == &th_kind_nodes && conf->engine != NULL && conf->engine[0] != 0) {
        const th_upstream_kind *ek = th_upstream_find(conf->engine);
        if (strcmp(conf->engine, "espeak") == 0 || (ek != NULL && !ek->caps.can_clone))
            p->base.caps.can_clone = false;
    }
    /* The provider's own cap (route.c) keeps in-flight transfers at `concurrency`, so curl never needs
     * to queue: its pending queue is the expensive kind (BENCH.md). */
    long conns = conf->concurrency > 0 ? conf->concurrency : UP_DEFAULT_CONNS;
    th_client_conf cc = {.max_host_connections = conns,
                         .max_total_connections = conf->concurrency > 0 ? conns : 65536,
                         .max_connects_cache = conns < 256 ? conns : 256};
    p->client = th_client_new(loop, &cc);
    if (p->client == NULL) {
        snprintf(err, errlen, "cannot create the HTTP client");
        free(p);
        return NULL;
    }
    if (uv_idle_init(loop, &p->idle) != 0) {
        snprintf(err, errlen, "cannot create a loop handle");
        th_client_close(p->client, NULL, NULL);
        free(p);
        return NULL;
    }
    p->idle.data = p;
    return &p->base;
}

static void on_idle_closed(uv_handle_t *h)
{
    free(h->data);
}

static void up_destroy(th_provider *bp)
{
    if (bp == NULL) return;
    up_provider *p = (up_provider *)bp;
    p->closing = true;
    /* Jobs should have ended or been cancelled; drop the rest without callbacks. A job whose callback
     * is on the stack (destroy from inside a sink) is unlinked and frees itself when that returns. */
    while (p->jobs != NULL) {
        th_job *j = p->jobs;
        j->cancelled = true;
        if (j->req != NULL) th_client_cancel(j->req);
        j->req = NULL;
        if (j->in_cb > 0)
            job_unlink(j);
        else
            job_free(j);
    }
    /* reference work: entries freed, uploads and drops cancelled, file writes detached (they free
     * themselves) */
    while (p->entries != NULL)
        entry_free(p->entries);
    while (p->calls != NULL) {
        up_call *c = p->calls;
        call_unlink(c);
        if (c->req != NULL) th_client_cancel(c->req);
        if (c->ud_free != NULL) c->ud_free(c->ud);
        th_buf_free(&c->body);
        free(c);
    }
    while (p->works != NULL) {
        up_work *w = p->works;
        work_unlink(w);
        w->p = NULL;
    }
    th_client_close(p->client, NULL, NULL); /* frees itself once its handles are closed */
    p->client = NULL;
    uv_close((uv_handle_t *)&p->idle, on_idle_closed);
}

/* Builds the job's request and sends it. 0, or -1 with e set (not yet prefixed). */
static int transfer_start(th_job *j, th_perr *e)
{
    up_provider *p = j->p;
    const th_provider_conf *pc = p->base.conf;
    int rc = -1;
    th_upstream_http h;
    th_upstream_http_init(&h);
    memset(e, 0, sizeof *e);
    h.base_url = j->target != NULL ? j->target : pc->base_url;
    h.prepared = j->prepared;
    h.pass = j->pass;
    if (p->kind->build == NULL || p->kind->build(pc, &j->sreq, &h, e) != 0) {
        if (e->kind == TH_PERR_NONE) th_perr_set(e, TH_PERR_INTERNAL, 0, "cannot build the request");
        goto out;
    }
    if ((j->sreq.traceparent != NULL && th_upstream_header(&h, "traceparent", j->sreq.traceparent) != 0) ||
        (p->bearer[0] && th_upstream_header(&h, "Authorization", p->bearer) != 0)) {
        th_perr_set(e, TH_PERR_INTERNAL, 0, "cannot build the request (out of memory)");
        goto out;
    }
    uint64_t t = j->timeout_ms;
    if (send_req(j, &h, t < UP_CONNECT_MAX_MS ? t : UP_CONNECT_MAX_MS, t, total_ms(t)) != 0) {
        th_perr_set(e, TH_PERR_INTERNAL, 0, "cannot start the request");
        goto out;
    }
    rc = 0;
out:
    th_upstream_http_free(&h);
    return rc;
}

/* The reference (when there is one), then the transfer. 0 (sent or waiting), or -1 with e (not prefixed). */
static int job_begin(th_job *j, th_perr *e)
{
    int r = j->sreq.ref != NULL ? ref_ready(j, e) : 1;
    if (r < 0) return -1;
    if (r == 0) return 0; /* waits for its reference */
    return transfer_start(j, e);
}

static th_job *up_start(th_provider *bp, const th_synth_req *req, const th_sink *sink)
{
    up_provider *p = (up_provider *)bp;
    if (p == NULL || p->closing || req == NULL || sink == NULL) return NULL;
    th_job *j = job_new(p);
    if (j == NULL) return NULL;
    if (copy_req(&j->sreq, req) != 0) {
        job_free(j);
        return NULL;
    }
    j->sink = *sink;
    const th_provider_conf *pc = p->base.conf;
    j->timeout_ms = pc->timeout_ms > 0 ? pc->timeout_ms : UP_DEFAULT_TIMEOUT_MS;

    th_perr e;
    memset(&e, 0, sizeof e);
    j->lease_ok = true;
    if (p->targets.pick != NULL && (pc->base_url == NULL || pc->base_url[0] == 0)) {
        char target[1024];
        if (p->targets.pick(p->targets.ud, pc, j->sreq.ref, target, sizeof target, &j->lease, &e) != 0) {
            if (e.kind == TH_PERR_NONE) th_perr_set(&e, TH_PERR_OVERLOADED, 0, "no target to send to");
            prefix_message(p, &e);
            defer_fail(j, &e);
            return j;
        }
        j->target = th_strndup(target, strlen(target));
        const char *tn = p->targets.lease_name ? p->targets.lease_name(p->targets.ud, j->lease) : NULL;
        if (tn != NULL) th_strlcpy(j->target_name, tn, sizeof j->target_name);
        if (j->target == NULL) {
            th_perr_set(&e, TH_PERR_INTERNAL, 0, "out of memory");
            prefix_message(p, &e);
            defer_fail(j, &e);
            return j;
        }
    }
    if (job_begin(j, &e) != 0) {
        prefix_message(p, &e);
        defer_fail(j, &e);
    }
    return j;
}

/* The engine said it lacks the job's reference: drop what was made and begin again (pass 1). true when the
 * job goes on (or already failed through the sink); false when it cannot start again. */
static bool job_again(th_job *j)
{
    up_provider *p = j->p;
    TH_LOG(p->log, TH_LOG_INFO, "provider %s: the engine lacks the reference of voice %s: sending it again",
           pname(p), j->sreq.ref->id);
    p->ref_stats.resends++;
    ref_drop_entry(j);
    free(j->prepared);
    j->prepared = NULL;
    free(j->ctype);
    j->ctype = NULL;
    j->pass = 1;
    j->status = 0;
    j->retry_after_s = 0;
    j->mode = J_HEAD;
    th_buf_reset(&j->errbody);
    th_buf_reset(&j->head);
    j->has_forced = false;
    j->received = 0;
    th_perr e;
    if (job_begin(j, &e) != 0) {
        prefix_message(p, &e);
        job_fail(j, &e);
    }
    return true;
}

static void up_cancel(th_job *j)
{
    if (j == NULL || j->cancelled) return;
    j->cancelled = true;
    if (j->req != NULL) th_client_cancel(j->req);
    j->req = NULL;
    if (j->in_cb == 0) job_free(j);
}

static const char *up_job_node(const th_job *j)
{
    return j != NULL && j->target_name[0] != 0 ? j->target_name : NULL;
}

static void up_resume(th_job *j)
{
    if (j == NULL || j->cancelled || j->ended || j->req == NULL) return;
    th_client_resume(j->req);
}

const th_provider_ops th_upstream_ops = {
    .kind = "upstream",
    .create = up_create,
    .destroy = up_destroy,
    .start = up_start,
    .cancel = up_cancel,
    .resume = up_resume,
    .voice_ok = NULL, /* engines check voices themselves: an unknown one comes back as a 4xx (CLIENT) */
    .voice_forget = up_voice_forget,
    .job_node = up_job_node,
};

int th_upstream_get_ref_stats(const th_provider *bp, th_upstream_ref_stats *out)
{
    if (bp == NULL || bp->ops != &th_upstream_ops) return -1;
    *out = ((const up_provider *)bp)->ref_stats;
    return 0;
}

int th_upstream_set_targets(th_provider *bp, const th_upstream_targets *t)
{
    if (bp == NULL || bp->ops != &th_upstream_ops) return -1;
    up_provider *p = (up_provider *)bp;
    if (t != NULL)
        p->targets = *t;
    else
        memset(&p->targets, 0, sizeof p->targets);
    return 0;
}

int th_upstream_set_bearer(th_provider *bp, const char *token)
{
    if (bp == NULL || bp->ops != &th_upstream_ops) return -1;
    up_provider *p = (up_provider *)bp;
    p->bearer[0] = 0;
    if (token == NULL || *token == 0) return 0;
    int n = snprintf(p->bearer, sizeof p->bearer, "Bearer %s", token);
    if (n < 0 || (size_t)n >= sizeof p->bearer || strpbrk(token, "\r\n") != NULL) {
        p->bearer[0] = 0;
        return -1;
    }
    return 0;
}

int th_upstream_probe(th_provider *bp, void (*done)(void *ud, bool healthy, const char *detail), void *ud)
{
    if (bp == NULL || bp->ops != &th_upstream_ops || done == NULL) return -1;
    up_provider *p = (up_provider *)bp;
    if (p->closing || p->kind->probe == NULL) return -1;
    int rc = -1;
    th_upstream_http h;
    th_upstream_http_init(&h);
    h.method = "GET";
    h.base_url = p->base.conf->base_url;
    if (p->kind->probe(p->base.conf, &h) != 0) goto out;
    th_job *j = job_new(p);
    if (j == NULL) goto out;
    j->probe_done = done;
    j->probe_ud = ud;
    j->timeout_ms = UP_PROBE_TIMEOUT_MS;
    if (send_req(j, &h, UP_PROBE_TIMEOUT_MS, 0, UP_PROBE_TIMEOUT_MS) != 0) {
        job_free(j);
        goto out;
    }
    rc = 0;
out:
    th_upstream_http_free(&h);
    return rc;
}

/* ---- more helpers for kinds ---- */

static int json_key(th_buf *b, const char *key)
{
    if (b->len > 0 && b->data[b->len - 1] != '{' && th_buf_append_byte(b, ',') != TH_BUF_OK) return -1;
    if (th_buf_append_byte(b, '"') != TH_BUF_OK) return -1;
    if (th_buf_append_json_str(b, key, strlen(key)) != TH_BUF_OK) return -1;
    return th_buf_append(b, "\":", 2) == TH_BUF_OK ? 0 : -1;
}

int th_upstream_json_str(th_buf *b, const char *key, const char *value)
{
    if (key == NULL || value == NULL || json_key(b, key) != 0) return -1;
    if (th_buf_append_byte(b, '"') != TH_BUF_OK) return -1;
    if (th_buf_append_json_str(b, value, strlen(value)) != TH_BUF_OK) return -1;
    return th_buf_append_byte(b, '"') == TH_BUF_OK ? 0 : -1;
}

int th_upstream_json_raw(th_buf *b, const char *key, const char *raw)
{
    if (key == NULL || raw == NULL || json_key(b, key) != 0) return -1;
    return th_buf_append_str(b, raw) == TH_BUF_OK ? 0 : -1;
}

int th_upstream_bearer(th_upstream_http *h, const char *key)
{
    if (key == NULL || strpbrk(key, "\r\n") != NULL) return -1;
    size_t kl = strlen(key);
    if (th_buf_reserve(&h->headers, kl + 23) != TH_BUF_OK) return -1;
    th_buf_append(&h->headers, "Authorization: Bearer ", 22);
    th_buf_append(&h->headers, key, kl);
    th_buf_append(&h->headers, "\n", 1);
    return 0;
}

int th_upstream_need_secret(const th_provider_conf *pc, const char **key, th_perr *err)
{
    *key = NULL;
    if (pc == NULL || pc->api_key_env == NULL || pc->api_key_env[0] == '\0') return 0;
    *key = th_upstream_secret(pc);
    if (*key != NULL) return 0;
    th_perr_set(err, TH_PERR_STATUS, 0, "the API key variable %s is not set", pc->api_key_env);
    return -1;
}

/* ---- multipart and base64 ---- */

int th_upstream_boundary(char *out, size_t n, const void *const *parts, const size_t *lens, size_t nparts)
{
    /* 96 random bits in every boundary: nobody can put it in a part, not even a client who knows the text
     * and the reference. Small parts (text, names) are still scanned for it; large binary parts (a
     * reference WAV) are not: a random 22-byte string turns up in them with odds of about 2^-96 per
     * position, and scanning half a megabyte on every request is measurable (bench/clone_cost.sh). */
    uint8_t rnd[12];
    for (int attempt = 0; attempt < 8; attempt++) {
        if (getentropy(rnd, sizeof rnd) != 0) return -1;
        int w = snprintf(out, n, "----ttshub%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1],
                         rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7], rnd[8], rnd[9], rnd[10], rnd[11]);
        if (w < 0 || (size_t)w >= n) return -1;
        bool clash = false;
        for (size_t i = 0; i < nparts && !clash; i++)
            clash = lens[i] > 0 && lens[i] <= UP_BOUNDARY_SCAN_MAX &&
                    memmem(parts[i], lens[i], out, (size_t)w) != NULL;
        if (!clash) return 0;
    }
    return -1;
}

int th_upstream_part_head(th_buf *b, const char *boundary, const char *name, const char *filename,
                          const char *ctype)
{
    if (th_buf_appendf(b, "--%s\r\nContent-Disposition: form-data; name=\"%s\"", boundary, name) != TH_BUF_OK)
        return -1;
    if (filename != NULL && th_buf_appendf(b, "; filename=\"%s\"\r\nContent-Type: %s", filename,
                                           ctype != NULL ? ctype : "application/octet-stream") != TH_BUF_OK)
        return -1;
    return th_buf_append_str(b, "\r\n\r\n") == TH_BUF_OK ? 0 : -1;
}

int th_upstream_part(th_buf *b, const char *boundary, const char *name, const char *filename,
                     const char *ctype, const void *data, size_t len)
{
    if (th_upstream_part_head(b, boundary, name, filename, ctype) != 0 ||
        (len > 0 && th_buf_append(b, data, len) != TH_BUF_OK) || th_buf_append_str(b, "\r\n") != TH_BUF_OK)
        return -1;
    return 0;
}

int th_upstream_parts_end(th_buf *b, const char *boundary)
{
    return th_buf_appendf(b, "--%s--\r\n", boundary) == TH_BUF_OK ? 0 : -1;
}

int th_upstream_base64(th_buf *b, const uint8_t *data, size_t n)
{
    if (n > (SIZE_MAX / 4) * 3 - 3) return -1;
    size_t out = 4 * ((n + 2) / 3);
    if (th_buf_reserve(b, out + 1) != TH_BUF_OK) return -1;
    /* EVP_EncodeBlock takes an int length: encode in slices of a multiple of 3 bytes */
    size_t done = 0;
    while (done < n) {
        size_t take = n - done > 3u * 1024 * 1024 ? 3u * 1024 * 1024 : n - done;
        int w = EVP_EncodeBlock(b->data + b->len, data + done, (int)take);
        if (w < 0) return -1;
        b->len += (size_t)w;
        done += take;
    }
    return 0;
}
