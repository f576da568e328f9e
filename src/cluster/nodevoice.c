/* nodevoice: the queue of library voices to push to seed-2 nodes, and the pushes under way.
 *
 * A push is a (node id, voice id) pair. When its turn comes it is checked again (the node still ready and
 * speaking seed2, the voice still in the library, the node still lacking it), the voice's audio is
 * acquired from the library, and POST {node}/extract_voice goes out on the hub's control client. A 2xx
 * records the voice as held by the node; anything else goes to the log (the on-demand path tries again
 * when a request needs it). */
#include "cluster/nodevoice.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/str.h"
#include "providers/upstream.h"
#include "voice/library.h"

#define LIST_MAX 100000 /* library voices looked at when a node becomes ready */
#define ERR_MAX 512     /* bytes of a node's error answer kept for the log */

typedef struct nv_task nv_task;
struct nv_task {
    nv_task *next;
    char node[TH_NODE_ID_MAX + 1];
    char voice[TH_VLIB_ID_MAX + 1];
};

typedef struct nv_push nv_push;
struct nv_push {
    th_nodevoice *nv; /* NULL once the pusher went away while the library still loads the audio */
    nv_push *prev, *next;
    nv_task t;
    char url[TH_NODE_URL_MAX + 1];
    char sha[65];
    th_vlib_use *use;
    th_upstream_http h;
    const char **hdrs;
    th_client_req *req;
    char err[ERR_MAX];
    size_t errlen;
    int status;
};

struct th_nodevoice {
    th_registry *reg;
    struct th_vlib *vlib;
    th_client *client;
    th_nodevoice_conf conf;
    char bearer[600];
    th_log *log;
    nv_task *head, *tail;
    size_t queued;
    nv_push *running;
    size_t n_running;
    bool pumping;
};

static void pump(th_nodevoice *nv);

th_nodevoice *th_nodevoice_new(th_registry *reg, struct th_vlib *vlib, th_client *client,
                               const th_nodevoice_conf *conf, th_log *log)
{
    th_nodevoice *nv = calloc(1, sizeof *nv);
    if (nv == NULL) return NULL;
    nv->reg = reg;
    nv->vlib = vlib;
    nv->client = client;
    nv->conf = *conf;
    if (nv->conf.concurrency < 1) nv->conf.concurrency = 1;
    if (nv->conf.timeout_ms == 0) nv->conf.timeout_ms = 60000;
    if (nv->conf.max_per_node < 1) nv->conf.max_per_node = 1000;
    if (conf->bearer != NULL && conf->bearer[0] != 0 && strpbrk(conf->bearer, "\r\n") == NULL)
        snprintf(nv->bearer, sizeof nv->bearer, "Authorization: %s", conf->bearer);
    nv->conf.bearer = NULL;
    nv->log = log;
    return nv;
}

static void push_unlink(th_nodevoice *nv, nv_push *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else if (nv->running == p)
        nv->running = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
    nv->n_running--;
}

static void push_free(nv_push *p)
{
    if (p->use) th_vlib_use_release(p->use);
    th_upstream_http_free(&p->h);
    free(p->hdrs);
    free(p);
}

void th_nodevoice_free(th_nodevoice *nv)
{
    if (nv == NULL) return;
    for (nv_task *t = nv->head, *n; t; t = n) {
        n = t->next;
        free(t);
    }
    for (nv_push *p = nv->running, *n; p; p = n) {
        n = p->next;
        if (p->req != NULL) {
            th_client_cancel(p->req); /* no callback after this */
            push_free(p);
        } else {
            p->nv = NULL; /* the library's callback frees it */
        }
    }
    free(nv);
}

size_t th_nodevoice_pending(const th_nodevoice *nv)
{
    return nv ? nv->queued + nv->n_running : 0;
}

static bool busy_with(const th_nodevoice *nv, const char *node, const char *voice)
{
    for (const nv_task *t = nv->head; t; t = t->next)
        if (strcmp(t->node, node) == 0 && strcmp(t->voice, voice) == 0) return true;
    for (const nv_push *p = nv->running; p; p = p->next)
        if (strcmp(p->t.node, node) == 0 && strcmp(p->t.voice, voice) == 0) return true;
    return false;
}

static void enqueue(th_nodevoice *nv, const char *node, const char *voice)
{
    if (strlen(node) > TH_NODE_ID_MAX || strlen(voice) > TH_VLIB_ID_MAX || busy_with(nv, node, voice)) return;
    if (nv->queued >= TH_NODEVOICE_QUEUE_MAX) {
        TH_LOG(nv->log, TH_LOG_WARN, "voice %s for node %s not pushed ahead: %d pushes wait already", voice,
               node, TH_NODEVOICE_QUEUE_MAX);
        return;
    }
    nv_task *t = calloc(1, sizeof *t);
    if (t == NULL) return;
    th_strlcpy(t->node, node, sizeof t->node);
    th_strlcpy(t->voice, voice, sizeof t->voice);
    if (nv->tail)
        nv->tail->next = t;
    else
        nv->head = t;
    nv->tail = t;
    nv->queued++;
}

/* Engine names match with - and _ taken as one (gpt-sovits nodes, gpt_sovits voices). */
static bool engine_match(const char *voice_engine, const char *node_engine)
{
    if (voice_engine == NULL || voice_engine[0] == 0) return true;
    size_t i = 0;
    for (; voice_engine[i] && node_engine[i]; i++) {
        char a = voice_engine[i] == '_' ? '-' : voice_engine[i],
             b = node_engine[i] == '_' ? '-' : node_engine[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (a != b) return false;
    }
    return voice_engine[i] == 0 && node_engine[i] == 0;
}

/* The node takes traffic, speaks seed2 and its engine fits the voice. */
static bool node_wants(th_nodevoice *nv, const char *node, const th_vlib_meta *m)
{
    char engine[TH_NODE_ENGINE_MAX + 1];
    th_node_proto proto;
    if (!th_registry_node_kind(nv->reg, node, engine, &proto) || proto != TH_NODE_PROTO_SEED2) return false;
    return th_registry_node_ready(nv->reg, node, th_mono_ms()) && engine_match(m->engine, engine);
}

typedef struct lack_ctx {
    th_nodevoice *nv;
    const th_vlib_meta *m;
} lack_ctx;

static void on_lacking(void *ud, const char *node_id, const char *url)
{
    lack_ctx *lc = ud;
    (void)url;
    if (node_wants(lc->nv, node_id, lc->m)) enqueue(lc->nv, node_id, lc->m->id);
}

void th_nodevoice_voice_added(th_nodevoice *nv, const char *voice_id)
{
    if (nv == NULL || nv->vlib == NULL) return;
    const th_vlib_meta *m = th_vlib_find(nv->vlib, voice_id);
    if (m == NULL) return;
    lack_ctx lc = {nv, m};
    th_registry_each_lacking(nv->reg, NULL, TH_NODE_PROTO_SEED2, m->id, m->sha256, th_mono_ms(), on_lacking,
                             &lc);
    pump(nv);
}

static int newest_first(const void *a, const void *b)
{
    const th_vlib_meta *x = *(const th_vlib_meta *const *)a, *y = *(const th_vlib_meta *const *)b;
    return x->created_ms > y->created_ms ? -1 : x->created_ms < y->created_ms ? 1 : strcmp(x->id, y->id);
}

void th_nodevoice_node_ready(void *ud, const char *node_id)
{
    th_nodevoice *nv = ud;
    if (nv == NULL || nv->vlib == NULL) return;
    char engine[TH_NODE_ENGINE_MAX + 1];
    th_node_proto proto;
    if (!th_registry_node_kind(nv->reg, node_id, engine, &proto) || proto != TH_NODE_PROTO_SEED2) return;
    size_t total = th_vlib_count(nv->vlib);
    if (total == 0) return;
    if (total > LIST_MAX) total = LIST_MAX;
    const th_vlib_meta **all = calloc(total, sizeof *all);
    if (all == NULL) return;
    size_t n = th_vlib_list(nv->vlib, NULL, true, all, total);
    qsort(all, n, sizeof *all, newest_first);
    const char *url = th_registry_url(nv->reg, node_id);
    int pushed = 0;
    for (size_t i = 0; i < n && pushed < nv->conf.max_per_node; i++) {
        if (!engine_match(all[i]->engine, engine)) continue;
        pushed++;
        if (!th_registry_voice_held(nv->reg, url, all[i]->id, all[i]->sha256))
            enqueue(nv, node_id, all[i]->id);
    }
    free(all);
    if (pushed > 0)
        TH_LOG(nv->log, TH_LOG_INFO, "node %s is ready: %d library voice(s) of engine %s go to it", node_id,
               pushed, engine);
    pump(nv);
}

/* ---- one push ---- */

static int p_head(void *ud, int status, const th_client_header *h, size_t n)
{
    nv_push *p = ud;
    (void)h;
    (void)n;
    p->status = status;
    return 0;
}

static int p_body(void *ud, const uint8_t *d, size_t len)
{
    nv_push *p = ud;
    th_str_append_cut(p->err, sizeof p->err, &p->errlen, d, len);
    return 0;
}

static void p_done(void *ud, th_client_result res, int status, const char *detail)
{
    nv_push *p = ud;
    th_nodevoice *nv = p->nv;
    p->req = NULL;
    if (res == TH_CLIENT_OK && status >= 200 && status < 300) {
        th_registry_voice_set(nv->reg, p->url, p->t.voice, p->sha, true);
        TH_LOG(nv->log, TH_LOG_INFO, "voice %s pushed to node %s", p->t.voice, p->t.node);
    } else if (res != TH_CLIENT_OK) {
        TH_LOG(nv->log, TH_LOG_WARN, "voice %s not pushed to node %s: %s (%s)", p->t.voice, p->t.node,
               th_client_result_name(res), detail ? detail : "");
    } else {
        char ex[200];
        th_upstream_excerpt((const uint8_t *)p->err, p->errlen, ex, sizeof ex);
        TH_LOG(nv->log, TH_LOG_WARN, "voice %s not pushed to node %s: HTTP %d: %s", p->t.voice, p->t.node,
               status, ex);
    }
    push_unlink(nv, p);
    push_free(p);
    pump(nv);
}

static void p_send(nv_push *p, const th_voice_ref *ref)
{
    th_nodevoice *nv = p->nv;
    th_upstream_http_init(&p->h);
    th_strlcpy(p->sha, ref->sha256, sizeof p->sha);
    char *hb = NULL;
    const char *url = NULL;
    if (th_nodes_seed2_extract(&p->h, p->url, ref) == 0) {
        url = th_buf_cstr(&p->h.url);
        hb = th_buf_cstr(&p->h.headers);
    }
    p->hdrs = calloc(4, sizeof *p->hdrs);
    if (url != NULL && hb != NULL && p->hdrs != NULL) {
        size_t k = 0;
        for (char *line = hb; *line && k < 2;) {
            char *e = strchr(line, '\n');
            if (e != NULL) *e = '\0';
            if (line[0] != '\0') p->hdrs[k++] = line;
            if (e == NULL) break;
            line = e + 1;
        }
        if (nv->bearer[0]) p->hdrs[k++] = nv->bearer;
        th_client_opts o = {.method = "POST",
                            .url = url,
                            .headers = p->hdrs,
                            .body = p->h.body.data,
                            .body_len = p->h.body.len,
                            .connect_timeout_ms = 2000,
                            .total_timeout_ms = nv->conf.timeout_ms,
                            .max_body = 64 * 1024};
        th_client_cb cb = {p_head, p_body, p_done, p};
        p->req = th_client_start(nv->client, &o, &cb);
        if (p->req != NULL) return;
    }
    TH_LOG(nv->log, TH_LOG_WARN, "voice %s not pushed to node %s: cannot start the request", p->t.voice,
           p->t.node);
    push_unlink(nv, p);
    push_free(p);
}

static void p_acquired(void *ud, th_vlib_use *u, th_vlib_rc rc)
{
    nv_push *p = ud;
    p->use = u;
    if (p->nv == NULL) { /* the pusher went away meanwhile */
        push_free(p);
        return;
    }
    th_nodevoice *nv = p->nv;
    const th_voice_ref *ref = rc == TH_VLIB_OK && u != NULL ? th_vlib_use_ref(u) : NULL;
    if (ref == NULL || ref->wav == NULL) {
        TH_LOG(nv->log, TH_LOG_WARN, "voice %s not pushed to node %s: the library cannot give its audio",
               p->t.voice, p->t.node);
        push_unlink(nv, p);
        push_free(p);
        if (!nv->pumping) pump(nv);
        return;
    }
    p_send(p, ref);
    if (!nv->pumping) pump(nv);
}

static void pump(th_nodevoice *nv)
{
    if (nv->pumping) return;
    nv->pumping = true;
    while (nv->head != NULL && nv->n_running < (size_t)nv->conf.concurrency) {
        nv_task *t = nv->head;
        nv->head = t->next;
        if (nv->head == NULL) nv->tail = NULL;
        nv->queued--;
        const th_vlib_meta *m = th_vlib_find(nv->vlib, t->voice);
        const char *url = th_registry_url(nv->reg, t->node);
        if (m == NULL || url == NULL || !node_wants(nv, t->node, m) ||
            th_registry_voice_held(nv->reg, url, m->id, m->sha256)) {
            free(t);
            continue;
        }
        nv_push *p = calloc(1, sizeof *p);
        if (p == NULL) {
            free(t);
            continue;
        }
        p->nv = nv;
        p->t = *t;
        p->t.next = NULL;
        free(t);
        th_strlcpy(p->url, url, sizeof p->url);
        p->next = nv->running;
        if (nv->running) nv->running->prev = p;
        nv->running = p;
        nv->n_running++;
        th_vlib_acquire(nv->vlib, p->t.voice, p_acquired, p); /* may answer at once */
    }
    nv->pumping = false;
}
