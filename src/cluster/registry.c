/* registry: worker nodes, their liveness, and the choice of a node per request.
 *
 * Nodes live in a doubly linked list in registration order (round robin walks it from a cursor). The
 * counts are small (TH_REGISTRY_MAX_NODES); every operation is a linear scan, which at a few hundred
 * nodes costs less than one upstream request. */
#include "cluster/registry.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/list.h"
#include "core/str.h"

#define STATUS_MAX 32
#define LIST_MAX 1000      /* voices / languages kept per node */
#define LIST_ITEM_MAX 128  /* bytes per voice or language name */
#define BENCH_BASE_MS 1000 /* a failed node is skipped for 1 s, doubling per failure in a row... */
#define BENCH_MAX_MS 30000 /* ...up to 30 s; a success ends it */
#define HELD_DEFAULT 1000  /* library voices recorded per node when max_node_voices is 0 */
#define HELD_SHA 16        /* hex digits of the sha256 kept per record */

/* A library voice the hub pushed to a node (or saw it speak). */
typedef struct held_voice {
    char id[65];
    char sha[HELD_SHA + 1];
} held_voice;

struct th_node {
    th_node *prev, *next;
    bool linked; /* in the registry's list (false once removed, while requests still hold it) */
    int refs;    /* 1 for the list + 1 per request in flight */
    char id[TH_NODE_ID_MAX + 1];
    char engine[TH_NODE_ENGINE_MAX + 1];
    char url[TH_NODE_URL_MAX + 1];
    char status[STATUS_MAX + 1]; /* as the node (or a command) last said */
    int capacity;
    bool model_loaded;
    bool alive;                 /* heard from within dead_threshold */
    json_t *voices, *languages; /* arrays of strings, or NULL */
    json_t *stats; /* the last heartbeat's numbers: current_concurrent, queue_size, cpu, memory */
    uint64_t registered_wall_ms;
    uint64_t last_seen; /* mono ms */
    int inflight;       /* counted by the hub */
    uint64_t requests, failures;
    uint64_t touched;         /* mono ms of the last change made through this hub */
    uint64_t updated_wall;    /* wall ms of the last change, here or (applied) elsewhere */
    uint32_t consec_failures; /* since the last success */
    uint64_t benched_until;   /* mono ms: after a failure, other nodes go first until then */
    char owner[160];          /* the credential that registered it ("" = the operator) */
    char owner_addr[48];      /* and the client address it came from */
    uint64_t bytes;           /* of voices and languages, counted in the registry's bytes */
    th_node_proto proto;
    held_voice *held; /* oldest first */
    size_t n_held;
};

struct th_registry {
    th_registry_conf conf;
    th_log *log;
    th_node *head, *tail;
    size_t n;
    th_node *cursor; /* round robin: the node after the last one picked */
    uint64_t rng;    /* xorshift64 state for random picks and generated ids */
    th_registry_event_fn on_event;
    void *event_ud;
    uint64_t bytes; /* voices and languages of every linked node */
    void (*on_ready)(void *ud, const char *node_id);
    void *ready_ud;
};

/* ---- helpers ---- */

static uint64_t rng_next(th_registry *r)
{
    uint64_t x = r->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    r->rng = x;
    return x;
}

static void emit(th_registry *r, const char *event, const th_node *n)
{
    if (r->on_event) r->on_event(r->event_ud, event, n->id, n->alive ? n->status : "offline");
}

static bool id_ok(const char *s, size_t len)
{
    if (len == 0 || len > TH_NODE_ID_MAX) return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* engine types and statuses: [a-z0-9_-] (lower-cased copies of what was sent) */
static bool word_copy(const char *s, size_t len, char *out, size_t max)
{
    if (len == 0 || len > max) return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return false;
        out[i] = c;
    }
    out[len] = 0;
    return true;
}

static bool host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
}

static bool path_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~' || c == '/';
}

bool th_node_url_parse(const char *s, size_t len, char *host, size_t hostlen, int *port)
{
    if (len > TH_NODE_URL_MAX || memchr(s, 0, len) != NULL) return false;
    bool tls = th_str_startswith(s, "https://");
    size_t p = th_str_startswith(s, "http://") ? 7 : tls ? 8 : 0;
    if (p == 0 || len <= p) return false;
    size_t h0 = p, h1;
    if (s[p] == '[') { /* [v6] */
        const char *e = memchr(s + p, ']', len - p);
        if (e == NULL) return false;
        h0 = p + 1;
        h1 = (size_t)(e - s);
        for (size_t i = h0; i < h1; i++)
            if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
                  (s[i] >= 'A' && s[i] <= 'F') || s[i] == ':' || s[i] == '.'))
                return false;
        p = h1 + 1;
    } else {
        while (p < len && host_char(s[p]))
            p++;
        h1 = p;
    }
    if (h1 == h0 || h1 - h0 >= hostlen || h1 - h0 > 253) return false;
    long prt = tls ? 443 : 80;
    if (p < len && s[p] == ':') {
        p++;
        size_t d0 = p;
        prt = 0;
        while (p < len && s[p] >= '0' && s[p] <= '9' && p - d0 < 5)
            prt = prt * 10 + (s[p++] - '0');
        if (p == d0 || prt < 1 || prt > 65535) return false;
    }
    /* what is left: nothing, or a plain path prefix (no query, fragment, userinfo, escapes, dot segments) */
    if (p < len && s[p] != '/') return false;
    for (size_t i = p; i < len; i++) {
        if (!path_char(s[i])) return false;
        if (s[i] == '/' && i + 1 < len && s[i + 1] == '/') return false;
        if (s[i] == '/' && i + 1 < len && s[i + 1] == '.' &&
            (i + 2 == len || s[i + 2] == '/' || (s[i + 2] == '.' && (i + 3 == len || s[i + 3] == '/'))))
            return false;
    }
    memcpy(host, s + h0, h1 - h0);
    host[h1 - h0] = 0;
    if (port) *port = (int)prt;
    return true;
}

static bool url_ok(const char *s, size_t len)
{
    char host[256];
    return th_node_url_parse(s, len, host, sizeof host, NULL);
}

static uint64_t list_bytes(const json_t *a)
{
    uint64_t b = 0;
    size_t i;
    json_t *it;
    json_array_foreach(a, i, it) b += json_string_length(it) + 1;
    return b;
}

/* Replaces n's lists (taking the references) and keeps the byte counts. */
static void set_lists(th_registry *r, th_node *n, json_t *voices, json_t *languages)
{
    if (n->linked) r->bytes -= n->bytes;
    json_decref(n->voices);
    json_decref(n->languages);
    n->voices = voices;
    n->languages = languages;
    n->bytes = list_bytes(voices) + list_bytes(languages);
    if (n->linked) r->bytes += n->bytes;
}

static bool status_routable(const char *s)
{
    return strcmp(s, "online") == 0 || strcmp(s, "active") == 0 || strcmp(s, "ready") == 0 ||
           strcmp(s, "idle") == 0 || strcmp(s, "busy") == 0;
}

static bool held_find(const th_node *n, const char *id, const char *sha, size_t *at)
{
    for (size_t i = 0; i < n->n_held; i++)
        if (strcmp(n->held[i].id, id) == 0 && (sha == NULL || strncmp(n->held[i].sha, sha, HELD_SHA) == 0)) {
            if (at) *at = i;
            return true;
        }
    return false;
}

static void held_clear(th_node *n)
{
    free(n->held);
    n->held = NULL;
    n->n_held = 0;
}

static th_node *find(const th_registry *r, const char *id)
{
    if (id == NULL) return NULL;
    for (th_node *n = r->head; n; n = n->next)
        if (strcmp(n->id, id) == 0) return n;
    return NULL;
}

static void node_unref(th_node *n)
{
    if (--n->refs > 0) return;
    json_decref(n->voices);
    json_decref(n->languages);
    json_decref(n->stats);
    free(n->held);
    free(n);
}

/* Appends a new node (one reference: the list's). */
static void link_node(th_registry *r, th_node *n)
{
    n->refs = 1;
    n->linked = true;
    n->prev = r->tail;
    if (r->tail)
        r->tail->next = n;
    else
        r->head = n;
    r->tail = n;
    r->n++;
    r->bytes += n->bytes;
}

static void unlink_node(th_registry *r, th_node *n)
{
    if (!n->linked) return;
    if (r->cursor == n) r->cursor = n->next;
    TH_DL_UNLINK_T(r->head, r->tail, n, prev, next);
    n->linked = false;
    r->bytes -= n->bytes;
    r->n--;
    node_unref(n);
}

/* A copy of an array of short strings (at most LIST_MAX), or NULL when absent; -1 when it is not one. */
static int string_list(const json_t *v, json_t **out, const char *name, char *err, size_t errlen)
{
    *out = NULL;
    if (v == NULL || json_is_null(v)) return 0;
    if (!json_is_array(v) || json_array_size(v) > LIST_MAX) {
        snprintf(err, errlen, "'%s' must be an array of at most %d strings", name, LIST_MAX);
        return -1;
    }
    json_t *a = json_array();
    if (a == NULL) return -1;
    size_t i;
    json_t *it;
    json_array_foreach(v, i, it)
    {
        if (!json_is_string(it) || json_string_length(it) == 0 || json_string_length(it) > LIST_ITEM_MAX) {
            snprintf(err, errlen, "'%s' must be an array of strings of 1 to %d bytes", name, LIST_ITEM_MAX);
            json_decref(a);
            return -1;
        }
        if (json_array_append(a, it) != 0) {
            json_decref(a);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    *out = a;
    return 0;
}

/* The heartbeat numbers we keep (finite numbers only). NULL on ENOMEM. */
static json_t *stats_of(const json_t *body)
{
    static const char *const keys[] = {"current_concurrent", "queue_size", "cpu_percent", "memory_percent",
                                       NULL};
    json_t *o = json_object();
    if (o == NULL) return NULL;
    for (size_t i = 0; keys[i]; i++) {
        json_t *v = json_object_get(body, keys[i]);
        if (json_is_number(v)) json_object_set(o, keys[i], v);
    }
    return o;
}

/* ---- lifetime ---- */

th_registry *th_registry_new(const th_registry_conf *conf, th_log *log)
{
    th_registry *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->conf = *conf;
    r->log = log;
    r->rng = th_mono_us() * 0x9E3779B97F4A7C15ull + (uint64_t)(uintptr_t)r;
    if (r->rng == 0) r->rng = 1;
    return r;
}

void th_registry_free(th_registry *r)
{
    if (r == NULL) return;
    while (r->head)
        unlink_node(r, r->head);
    free(r);
}

void th_registry_set_ready_listener(th_registry *r, void (*fn)(void *ud, const char *node_id), void *ud)
{
    r->on_ready = fn;
    r->ready_ud = ud;
}

static bool ready_now(const th_node *n)
{
    return n->linked && n->alive && n->model_loaded && status_routable(n->status);
}

static void ready_check(th_registry *r, const th_node *n, bool was)
{
    if (!was && ready_now(n) && r->on_ready) r->on_ready(r->ready_ud, n->id);
}

void th_registry_set_listener(th_registry *r, th_registry_event_fn fn, void *ud)
{
    r->on_event = fn;
    r->event_ud = ud;
}

/* ---- control ---- */

th_reg_rc th_registry_register(th_registry *r, const json_t *body, uint64_t now,
                               char id_out[TH_NODE_ID_MAX + 1], char *err, size_t errlen)
{
    return th_registry_register_as(r, body, NULL, now, id_out, err, errlen);
}

static bool may_change(const th_node *n, const th_reg_caller *who, uint64_t now, uint64_t dead_ms)
{
    if (who == NULL || who->admin || n->owner[0] == 0) return true;
    if (strcmp(n->owner, who->cred ? who->cred : "") != 0) return false;
    bool silent = !n->alive || (now > n->last_seen && now - n->last_seen > dead_ms);
    return silent || strcmp(n->owner_addr, who->addr ? who->addr : "") == 0;
}

th_reg_rc th_registry_check_owner(const th_registry *r, const char *id, const th_reg_caller *who,
                                  uint64_t now, char *err, size_t errlen)
{
    const th_node *n = find(r, id);
    if (n == NULL) {
        snprintf(err, errlen, "unknown node '%s': register again", id ? id : "");
        return TH_REG_UNKNOWN;
    }
    if (!may_change(n, who, now, r->conf.dead_threshold_ms)) {
        snprintf(err, errlen, "node '%s' belongs to another credential or address", n->id);
        return TH_REG_FORBIDDEN;
    }
    return TH_REG_OK;
}

uint64_t th_registry_bytes(const th_registry *r)
{
    return r->bytes;
}

/* A registration, read and checked. */
typedef struct reg_req {
    char engine[TH_NODE_ENGINE_MAX + 1], url[TH_NODE_URL_MAX + 1], status[STATUS_MAX + 1];
    json_int_t capacity;
    bool model_loaded;
    th_node_proto proto;
    const char *id; /* NULL: none given */
    json_t *voices, *languages;
} reg_req;

static bool given(const json_t *v)
{
    return v != NULL && !json_is_null(v);
}

/* Where the node is: 'url', or 'host' and 'port' (0.0.0.0 from a seed-2 worker: the caller's address). */
static bool read_where(const json_t *body, const th_reg_caller *who, char *url, size_t cap, char *err,
                       size_t errlen)
{
    json_t *v = json_object_get(body, "url");
    if (given(v)) {
        if (!json_is_string(v) || !url_ok(json_string_value(v), json_string_length(v))) {
            snprintf(err, errlen,
                     "'url' must be http(s)://host[:port] with at most a plain path prefix (no userinfo, "
                     "query, fragment, escapes or dot segments), at most %d bytes",
                     TH_NODE_URL_MAX);
            return false;
        }
        size_t l = json_string_length(v);
        memcpy(url, json_string_value(v), l);
        while (l > 0 && url[l - 1] == '/')
            l--;
        url[l] = 0;
        return true;
    }
    json_t *h = json_object_get(body, "host"), *p = json_object_get(body, "port");
    if (!json_is_string(h) || !json_is_integer(p) || json_integer_value(p) < 1 ||
        json_integer_value(p) > 65535 || json_string_length(h) == 0 || json_string_length(h) > 255) {
        snprintf(err, errlen, "'url', or 'host' and 'port' (1-65535), is required");
        return false;
    }
    const char *hs = json_string_value(h);
    /* a seed-2 worker sends its listen address: 0.0.0.0 (its default) means "where I came from" */
    if ((strcmp(hs, "0.0.0.0") == 0 || strcmp(hs, "::") == 0) && who != NULL && who->addr != NULL &&
        who->addr[0] != 0)
        hs = who->addr;
    bool v6 = strchr(hs, ':') != NULL;
    int k = snprintf(url, cap, v6 ? "http://[%s]:%d" : "http://%s:%d", hs, (int)json_integer_value(p));
    if (k < 0 || (size_t)k >= cap || !url_ok(url, (size_t)k)) {
        snprintf(err, errlen, "'host' is not a valid host name");
        return false;
    }
    return true;
}

/* capacity (cut to registry.max_capacity), status and model_loaded */
static bool read_state(const th_registry *r, const json_t *body, reg_req *q, char *err, size_t errlen)
{
    json_t *v = json_object_get(body, "capacity");
    if (given(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 100000) {
            snprintf(err, errlen, "'capacity' must be an integer from 1 to 100000");
            return false;
        }
        q->capacity = json_integer_value(v);
        int maxc = r->conf.max_capacity > 0 ? r->conf.max_capacity : 100000;
        if (q->capacity > maxc) q->capacity = maxc; /* registry.max_capacity */
    }
    v = json_object_get(body, "status");
    if (given(v) && (!json_is_string(v) ||
                     !word_copy(json_string_value(v), json_string_length(v), q->status, STATUS_MAX))) {
        snprintf(err, errlen, "'status' must be 1 to %d of a-z 0-9 _ -", STATUS_MAX);
        return false;
    }
    if (given(v)) q->model_loaded = status_routable(q->status); /* until it says otherwise */
    v = json_object_get(body, "model_loaded");
    if (given(v)) {
        if (!json_is_boolean(v)) {
            snprintf(err, errlen, "'model_loaded' must be true or false");
            return false;
        }
        q->model_loaded = json_is_true(v);
    }
    return true;
}

/* the protocol: said, or told by the shape (a seed-2 NodeInfo has host and port, no url, and its
 * registered_at / last_heartbeat times) */
static bool read_proto(const json_t *body, th_node_proto *proto, char *err, size_t errlen)
{
    json_t *v = json_object_get(body, "protocol");
    if (given(v)) {
        if (!json_is_string(v) || th_node_proto_parse(json_string_value(v), proto) != 0) {
            snprintf(err, errlen, "'protocol' must be ttshub or seed2");
            return false;
        }
    } else if (!given(json_object_get(body, "url")) &&
               (json_is_number(json_object_get(body, "registered_at")) ||
                json_is_number(json_object_get(body, "last_heartbeat")))) {
        *proto = TH_NODE_PROTO_SEED2;
    }
    return true;
}

/* The whole body into q, checked in the order of the API's error messages. On false, q holds no lists. */
static bool read_request(const th_registry *r, const json_t *body, const th_reg_caller *who, reg_req *q,
                         char *err, size_t errlen)
{
    if (!json_is_object(body)) {
        snprintf(err, errlen, "the body must be a JSON object");
        return false;
    }
    json_t *v = json_object_get(body, "engine_type");
    if (!json_is_string(v) ||
        !word_copy(json_string_value(v), json_string_length(v), q->engine, TH_NODE_ENGINE_MAX)) {
        snprintf(err, errlen, "'engine_type' is required: 1 to %d of a-z 0-9 _ -", TH_NODE_ENGINE_MAX);
        return false;
    }
    if (!read_where(body, who, q->url, sizeof q->url, err, errlen) || !read_state(r, body, q, err, errlen) ||
        !read_proto(body, &q->proto, err, errlen))
        return false;
    v = json_object_get(body, "node_id");
    if (given(v)) {
        if (!json_is_string(v) || !id_ok(json_string_value(v), json_string_length(v))) {
            snprintf(err, errlen, "'node_id' must be 1 to %d of A-Z a-z 0-9 _ - .", TH_NODE_ID_MAX);
            return false;
        }
        q->id = json_string_value(v);
    }
    if (string_list(json_object_get(body, "voices"), &q->voices, "voices", err, errlen) != 0) return false;
    if (string_list(json_object_get(body, "languages"), &q->languages, "languages", err, errlen) != 0) {
        json_decref(q->voices);
        q->voices = NULL;
        return false;
    }
    return true;
}

/* The node a registration is for: by its id, or, with none, the same engine at the same url (it
 * restarted: it takes its place). NULL: a new node. */
static th_node *reg_target(const th_registry *r, const reg_req *q)
{
    th_node *n = find(r, q->id);
    if (n == NULL && q->id == NULL) {
        for (th_node *o = r->head; o; o = o->next)
            if (strcmp(o->url, q->url) == 0 && strcmp(o->engine, q->engine) == 0) return o;
    }
    return n;
}

/* registry.max_node_bytes and registry.max_bytes against the lists of q replacing those of n */
static th_reg_rc reg_room(const th_registry *r, const th_node *n, const reg_req *q, char *err, size_t errlen)
{
    uint64_t nb = list_bytes(q->voices) + list_bytes(q->languages);
    bool one = r->conf.max_node_bytes && nb > r->conf.max_node_bytes;
    if (!one && !(r->conf.max_bytes && r->bytes - (n ? n->bytes : 0) + nb > r->conf.max_bytes))
        return TH_REG_OK;
    snprintf(err, errlen,
             one ? "'voices' and 'languages' hold more than registry.max_node_bytes (%llu)"
                 : "the registry holds registry.max_bytes (%llu) of voices and languages",
             (unsigned long long)(one ? r->conf.max_node_bytes : r->conf.max_bytes));
    return one ? TH_REG_INVALID : TH_REG_FULL;
}

/* A new node, linked, with the given id or ENGINE-<12 hex>. NULL on ENOMEM. */
static th_node *reg_new(th_registry *r, const reg_req *q)
{
    th_node *n = calloc(1, sizeof *n);
    if (n == NULL) return NULL;
    if (q->id != NULL) {
        th_strlcpy(n->id, q->id, sizeof n->id);
    } else {
        uint64_t x = rng_next(r);
        uint8_t raw[6];
        for (size_t i = 0; i < sizeof raw; i++)
            raw[i] = (uint8_t)(x >> (8 * i));
        char hex[13];
        th_hex(raw, sizeof raw, hex);
        snprintf(n->id, sizeof n->id, "%s-%s", q->engine, hex);
    }
    link_node(r, n);
    n->registered_wall_ms = th_wall_ms();
    return n;
}

/* q into n (which takes its lists), its owner, and the events it makes. */
static void reg_apply(th_registry *r, th_node *n, reg_req *q, const th_reg_caller *who, uint64_t now,
                      bool fresh)
{
    bool was_alive = !fresh && n->alive;
    bool status_changed = !fresh && strcmp(n->status, q->status) != 0;
    th_strlcpy(n->engine, q->engine, sizeof n->engine);
    th_strlcpy(n->url, q->url, sizeof n->url);
    th_strlcpy(n->status, q->status, sizeof n->status);
    n->capacity = (int)q->capacity;
    n->model_loaded = q->model_loaded;
    n->proto = q->proto;
    held_clear(n); /* a registration is a (re)start: what it held is gone */
    set_lists(r, n, q->voices, q->languages);
    q->voices = q->languages = NULL;
    /* the owner: whoever created it (an admin too: then no token holder may take it over), or its own
     * credential registering again (from its new address, once allowed) */
    if (who != NULL && (fresh || (!who->admin && (n->owner[0] == 0 || strcmp(n->owner, who->cred) == 0)))) {
        th_strlcpy(n->owner, who->cred ? who->cred : "", sizeof n->owner);
        th_strlcpy(n->owner_addr, who->addr ? who->addr : "", sizeof n->owner_addr);
    }
    n->alive = true;
    n->last_seen = now;
    n->touched = now;
    n->updated_wall = th_wall_ms();
    TH_LOG(r->log, TH_LOG_INFO, "node %s (%s) %s at %s, capacity %d, %s", n->id, n->engine,
           fresh ? "registered" : "registered again", n->url, n->capacity, n->status);
    if (!was_alive)
        emit(r, "node_online", n);
    else if (status_changed)
        emit(r, "node_status_changed", n);
    ready_check(r, n, false); /* its voices were forgotten: a ready node gets them again */
}

/* Whether the registration q may go ahead on n (NULL: a new node); a dry run stops after this. */
static th_reg_rc reg_admit(const th_registry *r, const th_node *n, const reg_req *q, const th_reg_caller *who,
                           uint64_t now, char *err, size_t errlen)
{
    if (n != NULL && !may_change(n, who, now, r->conf.dead_threshold_ms)) {
        snprintf(err, errlen, "node '%s' belongs to another credential or address", n->id);
        return TH_REG_FORBIDDEN;
    }
    th_reg_rc rc = reg_room(r, n, q, err, errlen);
    if (rc != TH_REG_OK) return rc;
    if (n == NULL && r->n >= TH_REGISTRY_MAX_NODES) {
        snprintf(err, errlen, "the registry is full (%d nodes)", TH_REGISTRY_MAX_NODES);
        return TH_REG_FULL;
    }
    return TH_REG_OK;
}

th_reg_rc th_registry_register_as(th_registry *r, const json_t *body, const th_reg_caller *who, uint64_t now,
                                  char id_out[TH_NODE_ID_MAX + 1], char *err, size_t errlen)
{
    reg_req q = {.status = "online", .capacity = 1, .model_loaded = true, .proto = TH_NODE_PROTO_TTSHUB};
    if (!read_request(r, body, who, &q, err, errlen)) return TH_REG_INVALID;
    th_node *n = reg_target(r, &q);
    bool fresh = n == NULL;
    th_reg_rc rc = reg_admit(r, n, &q, who, now, err, errlen);
    if (rc == TH_REG_OK && (who == NULL || !who->dry_run)) {
        if (fresh) n = reg_new(r, &q);
        if (n == NULL) {
            rc = TH_REG_NOMEM;
        } else {
            reg_apply(r, n, &q, who, now, fresh);
            th_strlcpy(id_out, n->id, TH_NODE_ID_MAX + 1);
        }
    }
    json_decref(q.voices);
    json_decref(q.languages);
    return rc;
}

th_reg_rc th_registry_heartbeat(th_registry *r, const char *id, const json_t *body, uint64_t now, char *err,
                                size_t errlen)
{
    th_node *n = find(r, id);
    if (n == NULL) {
        snprintf(err, errlen, "unknown node '%s': register again", id ? id : "");
        return TH_REG_UNKNOWN;
    }
    if (body != NULL && !json_is_object(body)) {
        snprintf(err, errlen, "the body must be a JSON object");
        return TH_REG_INVALID;
    }
    char status[STATUS_MAX + 1];
    th_strlcpy(status, n->status, sizeof status);
    json_t *v = json_object_get(body, "status");
    if (v != NULL && !json_is_null(v) &&
        (!json_is_string(v) || !word_copy(json_string_value(v), json_string_length(v), status, STATUS_MAX))) {
        snprintf(err, errlen, "'status' must be 1 to %d of a-z 0-9 _ -", STATUS_MAX);
        return TH_REG_INVALID;
    }
    v = json_object_get(body, "model_loaded");
    if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
        snprintf(err, errlen, "'model_loaded' must be true or false");
        return TH_REG_INVALID;
    }
    json_t *stats = body ? stats_of(body) : NULL;
    if (body != NULL && stats == NULL) return TH_REG_NOMEM;
    json_t *sv = json_object_get(body, "status");
    bool was_ready = ready_now(n);
    if (json_is_boolean(v))
        n->model_loaded = json_is_true(v);
    else if (json_is_string(sv))
        n->model_loaded = status_routable(status); /* a seed-2 heartbeat: the status says it all */
    if (stats) {
        json_decref(n->stats);
        n->stats = stats;
    }
    bool was_alive = n->alive, changed = strcmp(status, n->status) != 0;
    th_strlcpy(n->status, status, sizeof n->status);
    n->alive = true;
    n->last_seen = now;
    n->touched = now;
    n->updated_wall = th_wall_ms();
    if (!was_alive) {
        TH_LOG(r->log, TH_LOG_INFO, "node %s is back online", n->id);
        emit(r, "node_online", n);
    } else if (changed) {
        emit(r, "node_status_changed", n);
    }
    ready_check(r, n, was_ready);
    return TH_REG_OK;
}

th_reg_rc th_registry_remove(th_registry *r, const char *id)
{
    th_node *n = find(r, id);
    if (n == NULL) return TH_REG_UNKNOWN;
    TH_LOG(r->log, TH_LOG_INFO, "node %s (%s) unregistered", n->id, n->engine);
    bool was_alive = n->alive;
    n->alive = false;
    if (was_alive) emit(r, "node_offline", n);
    unlink_node(r, n);
    return TH_REG_OK;
}

th_reg_rc th_registry_set_status(th_registry *r, const char *id, const char *status)
{
    th_node *n = find(r, id);
    if (n == NULL) return TH_REG_UNKNOWN;
    n->updated_wall = th_wall_ms();
    n->touched = th_mono_ms();
    bool was_ready = ready_now(n);
    n->model_loaded = status_routable(status);
    if (strcmp(n->status, status) == 0) return TH_REG_OK;
    th_strlcpy(n->status, status, sizeof n->status);
    if (n->alive) emit(r, "node_status_changed", n);
    ready_check(r, n, was_ready);
    return TH_REG_OK;
}

const char *th_registry_url(const th_registry *r, const char *id)
{
    const th_node *n = find(r, id);
    return n ? n->url : NULL;
}

static json_t *node_json(const th_node *n, uint64_t now)
{
    char reg[40];
    th_rfc3339(n->registered_wall_ms, reg, sizeof reg);
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:s,s:s,s:i,s:b,s:b,s:i,s:I,s:I,s:s,s:f}", "node_id", n->id, "engine_type", n->engine,
        "url", n->url, "status", n->alive ? n->status : "offline", "reported_status", n->status, "capacity",
        n->capacity, "model_loaded", n->model_loaded, "online", n->alive, "in_flight", n->inflight,
        "requests", (json_int_t)n->requests, "failures", (json_int_t)n->failures, "registered_at", reg,
        "last_heartbeat_seconds_ago", (double)(now >= n->last_seen ? now - n->last_seen : 0) / 1000.0);
    if (o == NULL) return NULL;
    if (n->voices) json_object_set(o, "voices", n->voices);
    if (n->languages) json_object_set(o, "languages", n->languages);
    if (n->stats) json_object_update(o, n->stats);
    json_object_set_new(o, "protocol", json_string(th_node_proto_name(n->proto)));
    json_t *lv = json_array();
    for (size_t i = 0; lv != NULL && i < n->n_held; i++)
        json_array_append_new(lv, json_string(n->held[i].id));
    if (lv != NULL) json_object_set_new(o, "library_voices", lv);
    return o;
}

json_t *th_registry_node_json(const th_registry *r, const char *id, uint64_t now)
{
    const th_node *n = find(r, id);
    return n ? node_json(n, now) : NULL;
}

json_t *th_registry_list_json(const th_registry *r, const char *engine, const char *status, uint64_t now)
{
    json_t *arr = json_array();
    if (arr == NULL) return NULL;
    for (const th_node *n = r->head; n; n = n->next) {
        if (engine && *engine && strcmp(engine, n->engine) != 0) continue;
        if (status && *status && strcmp(status, n->alive ? n->status : "offline") != 0) continue;
        json_t *o = node_json(n, now);
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    json_t *res = json_pack("{s:o,s:I}", "nodes", arr, "count", (json_int_t)json_array_size(arr));
    return res;
}

void th_registry_counts(const th_registry *r, const char *engine, size_t *total, size_t *online)
{
    size_t t = 0, on = 0;
    for (const th_node *n = r->head; n; n = n->next) {
        if (engine && *engine && strcmp(engine, n->engine) != 0) continue;
        t++;
        if (n->alive && status_routable(n->status)) on++;
    }
    if (total) *total = t;
    if (online) *online = on;
}

json_t *th_registry_engines_json(const th_registry *r)
{
    json_t *o = json_object();
    for (const th_node *n = r->head; o != NULL && n; n = n->next) {
        json_t *e = json_object_get(o, n->engine);
        if (e == NULL) {
            e = json_pack("{s:i,s:i,s:i}", "nodes", 0, "online", 0, "in_flight", 0);
            if (e == NULL || json_object_set_new(o, n->engine, e) != 0) continue;
        }
        json_object_set_new(e, "nodes", json_integer(json_integer_value(json_object_get(e, "nodes")) + 1));
        if (n->alive && status_routable(n->status))
            json_object_set_new(e, "online",
                                json_integer(json_integer_value(json_object_get(e, "online")) + 1));
        json_object_set_new(e, "in_flight",
                            json_integer(json_integer_value(json_object_get(e, "in_flight")) + n->inflight));
    }
    return o;
}

void th_registry_sweep(th_registry *r, uint64_t now)
{
    for (th_node *n = r->head, *next; n; n = next) {
        next = n->next;
        uint64_t silent = now > n->last_seen ? now - n->last_seen : 0;
        if (n->alive && silent > r->conf.dead_threshold_ms) {
            n->alive = false;
            TH_LOG(r->log, TH_LOG_WARN, "node %s (%s) silent for %llu ms: offline", n->id, n->engine,
                   (unsigned long long)silent);
            emit(r, "node_offline", n);
        }
        if (!n->alive && silent > r->conf.remove_after_ms) {
            TH_LOG(r->log, TH_LOG_INFO, "node %s (%s) offline for %llu ms: removed", n->id, n->engine,
                   (unsigned long long)silent);
            emit(r, "node_removed", n);
            unlink_node(r, n);
        }
    }
}

/* ---- sharing between hubs ---- */

json_t *th_registry_record(const th_registry *r, const char *id, uint64_t now, uint64_t now_wall)
{
    const th_node *n = find(r, id);
    if (n == NULL) return NULL;
    uint64_t silent = now > n->last_seen ? now - n->last_seen : 0;
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:i,s:b,s:I,s:I,s:I}", "node_id", n->id, "engine_type", n->engine,
                          "url", n->url, "status", n->status, "capacity", n->capacity, "model_loaded",
                          n->model_loaded, "last_seen_ms", (json_int_t)(now_wall - silent), "updated_ms",
                          (json_int_t)n->updated_wall, "registered_ms", (json_int_t)n->registered_wall_ms);
    if (o == NULL) return NULL;
    if (n->voices) json_object_set(o, "voices", n->voices);
    if (n->languages) json_object_set(o, "languages", n->languages);
    if (n->stats) json_object_set(o, "stats", n->stats);
    if (n->proto != TH_NODE_PROTO_TTSHUB)
        json_object_set_new(o, "protocol", json_string(th_node_proto_name(n->proto)));
    if (n->owner[0]) json_object_set_new(o, "owner", json_string(n->owner));
    if (n->owner_addr[0]) json_object_set_new(o, "owner_addr", json_string(n->owner_addr));
    return o;
}

void th_registry_apply(th_registry *r, const json_t *rec, uint64_t now, uint64_t now_wall)
{
    const char *id = json_string_value(json_object_get(rec, "node_id"));
    const char *engine = json_string_value(json_object_get(rec, "engine_type"));
    const char *url = json_string_value(json_object_get(rec, "url"));
    const char *status = json_string_value(json_object_get(rec, "status"));
    json_t *cap = json_object_get(rec, "capacity");
    json_int_t seen = json_integer_value(json_object_get(rec, "last_seen_ms"));
    json_int_t updated = json_integer_value(json_object_get(rec, "updated_ms"));
    char eng[TH_NODE_ENGINE_MAX + 1], st[STATUS_MAX + 1];
    /* records come from Redis: check them as if they came from a node */
    if (id == NULL || !id_ok(id, strlen(id)) || engine == NULL ||
        !word_copy(engine, strlen(engine), eng, sizeof eng - 1) || url == NULL || !url_ok(url, strlen(url)) ||
        status == NULL || !word_copy(status, strlen(status), st, sizeof st - 1) || !json_is_integer(cap) ||
        json_integer_value(cap) < 1 || json_integer_value(cap) > 100000 || seen <= 0)
        return;
    uint64_t ago = now_wall > (uint64_t)seen ? now_wall - (uint64_t)seen : 0;
    uint64_t last_seen = now > ago ? now - ago : 0;
    th_node *n = find(r, id);
    bool fresh = n == NULL;
    if (fresh) {
        if (r->n >= TH_REGISTRY_MAX_NODES || ago > r->conf.remove_after_ms) return;
        n = calloc(1, sizeof *n);
        if (n == NULL) return;
        th_strlcpy(n->id, id, sizeof n->id);
        link_node(r, n);
        n->alive = false;
        n->updated_wall = 0;
    }
    if (last_seen > n->last_seen || fresh) n->last_seen = last_seen;
    bool was_alive = n->alive;
    bool alive = now - n->last_seen <= r->conf.dead_threshold_ms;
    bool changed = false;
    if (updated >= 0 && (uint64_t)updated >= n->updated_wall) {
        changed = !fresh && strcmp(n->status, st) != 0;
        th_strlcpy(n->engine, eng, sizeof n->engine);
        th_strlcpy(n->url, url, sizeof n->url);
        th_strlcpy(n->status, st, sizeof n->status);
        n->capacity = (int)json_integer_value(cap);
        if (r->conf.max_capacity > 0 && n->capacity > r->conf.max_capacity)
            n->capacity = r->conf.max_capacity;
        n->model_loaded = !json_is_false(json_object_get(rec, "model_loaded"));
        th_node_proto pr = TH_NODE_PROTO_TTSHUB;
        (void)th_node_proto_parse(json_string_value(json_object_get(rec, "protocol")), &pr);
        n->proto = pr;
        n->updated_wall = (uint64_t)updated;
        n->registered_wall_ms = (uint64_t)json_integer_value(json_object_get(rec, "registered_ms"));
        json_t *v = json_object_get(rec, "voices"), *l = json_object_get(rec, "languages");
        json_t *sv = json_object_get(rec, "stats");
        json_t *nv = NULL, *nl = NULL;
        char err[80];
        if (string_list(v, &nv, "voices", err, sizeof err) != 0) nv = json_incref(n->voices);
        if (string_list(l, &nl, "languages", err, sizeof err) != 0) nl = json_incref(n->languages);
        uint64_t nb = list_bytes(nv) + list_bytes(nl);
        if ((r->conf.max_node_bytes && nb > r->conf.max_node_bytes) ||
            (r->conf.max_bytes && r->bytes - n->bytes + nb > r->conf.max_bytes)) {
            json_decref(nv); /* over the caps: the lists are not taken from the shared record */
            json_decref(nl);
            nv = nl = NULL;
        }
        set_lists(r, n, nv, nl);
        const char *ow = json_string_value(json_object_get(rec, "owner"));
        const char *oa = json_string_value(json_object_get(rec, "owner_addr"));
        th_strlcpy(n->owner, ow ? ow : "", sizeof n->owner);
        th_strlcpy(n->owner_addr, oa ? oa : "", sizeof n->owner_addr);
        if (json_is_object(sv)) {
            json_t *stats = stats_of(sv);
            if (stats) {
                json_decref(n->stats);
                n->stats = stats;
            }
        }
    }
    if (alive && !was_alive) {
        n->alive = true;
        emit(r, "node_online", n);
    } else if (changed && n->alive) {
        emit(r, "node_status_changed", n);
    }
}

void th_registry_retain(th_registry *r, const char *const *ids, size_t count, uint64_t since)
{
    for (th_node *n = r->head, *next; n; n = next) {
        next = n->next;
        bool keep = n->touched >= since && n->touched != 0;
        for (size_t i = 0; !keep && i < count; i++)
            keep = strcmp(ids[i], n->id) == 0;
        if (keep) continue;
        TH_LOG(r->log, TH_LOG_INFO, "node %s (%s) removed through another hub", n->id, n->engine);
        if (n->alive) {
            n->alive = false;
            emit(r, "node_offline", n);
        }
        emit(r, "node_removed", n);
        unlink_node(r, n);
    }
}

/* ---- routing ---- */

static bool eligible(const th_node *n, const char *engine, uint64_t now, uint64_t dead_ms);

bool th_registry_node_ready(const th_registry *r, const char *id, uint64_t now)
{
    const th_node *n = find(r, id);
    if (n == NULL || !n->alive || !n->model_loaded || !status_routable(n->status)) return false;
    return !(now > n->last_seen && now - n->last_seen > r->conf.dead_threshold_ms);
}

bool th_registry_node_kind(const th_registry *r, const char *id, char engine[TH_NODE_ENGINE_MAX + 1],
                           th_node_proto *proto)
{
    const th_node *n = find(r, id);
    if (n == NULL) return false;
    th_strlcpy(engine, n->engine, TH_NODE_ENGINE_MAX + 1);
    *proto = n->proto;
    return true;
}

bool th_registry_voice_held(const th_registry *r, const char *url, const char *id, const char *sha256)
{
    if (url == NULL || id == NULL) return false;
    for (const th_node *n = r->head; n; n = n->next)
        if (strcmp(n->url, url) == 0 && held_find(n, id, sha256, NULL)) return true;
    return false;
}

void th_registry_voice_set(th_registry *r, const char *url, const char *id, const char *sha256, bool held)
{
    if (id == NULL || strlen(id) >= sizeof(((held_voice *)0)->id)) return;
    size_t cap = r->conf.max_node_voices > 0 ? (size_t)r->conf.max_node_voices : HELD_DEFAULT;
    for (th_node *n = r->head; n; n = n->next) {
        if (url != NULL && strcmp(n->url, url) != 0) continue;
        size_t at;
        while (held_find(n, id, NULL, &at)) { /* any older copy of the same id goes */
            memmove(&n->held[at], &n->held[at + 1], (n->n_held - at - 1) * sizeof *n->held);
            n->n_held--;
        }
        if (!held || sha256 == NULL) continue;
        if (n->n_held >= cap) { /* the oldest record goes: that voice is pushed again if asked for */
            memmove(&n->held[0], &n->held[1], (n->n_held - 1) * sizeof *n->held);
            n->n_held--;
        }
        if (n->held == NULL) {
            n->held = calloc(cap, sizeof *n->held);
            if (n->held == NULL) continue; /* not recorded: it is pushed again when asked for */
        }
        held_voice *h = &n->held[n->n_held++];
        th_strlcpy(h->id, id, sizeof h->id);
        th_strlcpy(h->sha, sha256, sizeof h->sha);
    }
}

void th_registry_each_lacking(const th_registry *r, const char *engine, int proto, const char *id,
                              const char *sha256, uint64_t now,
                              void (*fn)(void *ud, const char *node_id, const char *url), void *ud)
{
    for (const th_node *n = r->head; n; n = n->next) {
        if (!th_registry_node_ready(r, n->id, now)) continue;
        if (engine && *engine && strcmp(engine, n->engine) != 0) continue;
        if (proto >= 0 && (int)n->proto != proto) continue;
        if (!held_find(n, id, sha256, NULL)) fn(ud, n->id, n->url);
    }
}

static bool eligible(const th_node *n, const char *engine, uint64_t now, uint64_t dead_ms)
{
    if (!n->alive || !n->model_loaded || !status_routable(n->status)) return false;
    if (now > n->last_seen && now - n->last_seen > dead_ms) return false; /* not swept yet */
    if (engine && *engine && strcmp(engine, n->engine) != 0) return false;
    return n->inflight < n->capacity;
}

typedef struct pick_want {
    int proto;       /* -1: any */
    const char *vid; /* NULL: any node; else only the nodes holding it */
    const char *sha;
} pick_want;

/* One pass over the nodes by strategy; benched nodes count only when allow_benched. */
static th_node *pick_pass(th_registry *r, const char *engine, const pick_want *w, th_node_pick how,
                          uint64_t now, bool allow_benched)
{
    th_node *best = NULL;
    uint64_t dead = r->conf.dead_threshold_ms;
    th_node *n = r->cursor ? r->cursor : r->head;
    size_t seen = 0;
    for (size_t k = 0; n != NULL && k < r->n; k++, n = n->next ? n->next : r->head) {
        if (!eligible(n, engine, now, dead) || (!allow_benched && n->benched_until > now)) continue;
        if (w->proto >= 0 && (int)n->proto != w->proto) continue;
        if (w->vid != NULL && !held_find(n, w->vid, w->sha, NULL)) continue;
        if (how == TH_NODE_PICK_ROUND_ROBIN) {
            best = n;
            break;
        }
        if (how == TH_NODE_PICK_LEAST_LOAD) {
            /* the lowest in-flight / capacity; ties go to the first in round-robin order */
            if (best == NULL || (uint64_t)n->inflight * (uint64_t)best->capacity <
                                    (uint64_t)best->inflight * (uint64_t)n->capacity)
                best = n;
        } else {
            seen++;
            if (rng_next(r) % seen == 0) best = n; /* reservoir sampling: uniform over the eligible */
        }
    }
    return best;
}

th_node *th_registry_pick(th_registry *r, const char *engine, th_node_pick how, uint64_t now)
{
    return th_registry_pick_for(r, engine, -1, NULL, NULL, how, now);
}

th_node *th_registry_pick_for(th_registry *r, const char *engine, int proto, const char *voice_id,
                              const char *sha256, th_node_pick how, uint64_t now)
{
    /* the nodes holding the voice first, then the others; nodes that failed lately go last: tried only
     * when no other node has room */
    pick_want held = {proto, voice_id, sha256}, any = {proto, NULL, NULL};
    th_node *best = NULL;
    if (voice_id != NULL) best = pick_pass(r, engine, &held, how, now, false);
    if (best == NULL) best = pick_pass(r, engine, &any, how, now, false);
    if (best == NULL && voice_id != NULL) best = pick_pass(r, engine, &held, how, now, true);
    if (best == NULL) best = pick_pass(r, engine, &any, how, now, true);
    if (best) {
        if (how != TH_NODE_PICK_RANDOM) r->cursor = best->next;
        best->inflight++;
        best->refs++;
        best->requests++;
    }
    return best;
}

void th_registry_release(th_registry *r, th_node *n, bool ok, uint64_t now)
{
    (void)r;
    if (n == NULL) return;
    if (n->inflight > 0) n->inflight--;
    if (ok) {
        n->consec_failures = 0;
        n->benched_until = 0;
    } else {
        n->failures++;
        uint32_t k = n->consec_failures < 16 ? n->consec_failures : 16;
        n->consec_failures++;
        uint64_t bench = (uint64_t)BENCH_BASE_MS << k;
        n->benched_until = now + (bench < BENCH_MAX_MS ? bench : BENCH_MAX_MS);
    }
    node_unref(n);
}

const char *th_node_id(const th_node *n)
{
    return n->id;
}

const char *th_node_url(const th_node *n)
{
    return n->url;
}

th_node_proto th_node_protocol(const th_node *n)
{
    return n->proto;
}

const char *th_node_proto_name(th_node_proto p)
{
    return p == TH_NODE_PROTO_SEED2 ? "seed2" : "ttshub";
}

int th_node_proto_parse(const char *s, th_node_proto *p)
{
    if (s == NULL) return -1;
    if (strcmp(s, "ttshub") == 0)
        *p = TH_NODE_PROTO_TTSHUB;
    else if (strcmp(s, "seed2") == 0)
        *p = TH_NODE_PROTO_SEED2;
    else
        return -1;
    return 0;
}

int th_node_pick_parse(const char *s, th_node_pick *how)
{
    if (s == NULL || strcmp(s, "round_robin") == 0)
        *how = TH_NODE_PICK_ROUND_ROBIN;
    else if (strcmp(s, "least_load") == 0)
        *how = TH_NODE_PICK_LEAST_LOAD;
    else if (strcmp(s, "random") == 0)
        *how = TH_NODE_PICK_RANDOM;
    else
        return -1;
    return 0;
}
