/* config: YAML (libyaml events) -> a small bounded node tree -> th_config through one schema table.
 *
 * Pipeline:
 *   1. build(): libyaml events into a tree of ynode. Bounded: 4 MiB of text, 32 levels of nesting,
 *      10,000 nodes, one document. Anchors and aliases are rejected (no billion laughs). Duplicate
 *      keys and non-string keys are reported here, and the pair is then ignored.
 *   2. walk(): every mapping is checked against a section_def, an array of key_def. A key_def holds
 *      the key's name, type, bounds, default (as the text one would write in the file), offsetof its
 *      field and an optional validator. Defaults are applied by parsing that text through the same
 *      code as the file. Unknown keys are errors; provider keys also carry the kinds they belong to.
 *   3. cross_check(): checks between sections (routes and voices name existing providers, auth,
 *      tenants of keys, registry timings).
 * The same table frees a config (free_section) and dumps it as JSON (dump_section). */
#include "config/config.h"

#include "audio/format.h"
#include "core/netacl.h"
#include "core/str.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#define MAX_FILE_BYTES (4u << 20)
#define MAX_DEPTH 32
#define MAX_NODES 10000
#define MAX_ERRORS 1000

/* ---------------------------------------------------------------------------------------------- */
/* The node tree */

enum { N_SCALAR, N_MAP, N_SEQ, N_BAD };

typedef struct ynode {
    int kind;
    int line;            /* 1-based */
    bool plain;          /* a plain (unquoted) scalar */
    bool ignore;         /* a map key that is a duplicate or not a string: the pair is skipped */
    char *val;           /* N_SCALAR */
    struct ynode **kids; /* N_SEQ: items; N_MAP: key, value, key, value... */
    size_t n, cap;
} ynode;

static void node_free(ynode *n)
{
    if (n == NULL) return;
    for (size_t i = 0; i < n->n; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->val);
    free(n);
}

static bool is_null(const ynode *n)
{
    if (n == NULL) return true;
    if (n->kind != N_SCALAR || !n->plain) return false;
    const char *s = n->val;
    return s[0] == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

static size_t map_len(const ynode *m)
{
    return m && m->kind == N_MAP ? m->n / 2 : 0;
}

/* The value of key in mapping m (NULL when m is not a mapping or the key is absent). */
static const ynode *get(const ynode *m, const char *key)
{
    if (m == NULL || m->kind != N_MAP) return NULL;
    for (size_t i = 0; i + 1 < m->n; i += 2)
        if (!m->kids[i]->ignore && strcmp(m->kids[i]->val, key) == 0) return m->kids[i + 1];
    return NULL;
}

static const ynode *item(const ynode *s, size_t i)
{
    return s && s->kind == N_SEQ && i < s->n ? s->kids[i] : NULL;
}

static int line_of(const ynode *n, int fallback)
{
    return n ? n->line : fallback;
}

/* ---------------------------------------------------------------------------------------------- */
/* Errors */

typedef struct ctx {
    th_config_errors *errs;
    size_t nerr;
    bool oom;
    int kind; /* the provider kind being walked, -1 outside providers */
    th_config *cfg;
} ctx;

__attribute__((format(printf, 4, 5))) static void err(ctx *c, int line, const char *path, const char *fmt,
                                                      ...)
{
    c->nerr++;
    th_config_errors *e = c->errs;
    if (e == NULL || e->n >= MAX_ERRORS) return;
    if (e->n == e->cap) {
        size_t ncap = e->cap ? e->cap * 2 : 16;
        th_config_error *p = realloc(e->items, ncap * sizeof *p);
        if (p == NULL) {
            c->oom = true;
            return;
        }
        e->items = p;
        e->cap = ncap;
    }
    th_config_error *it = &e->items[e->n++];
    th_strlcpy(it->path, path ? path : "", sizeof it->path);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(it->message, sizeof it->message, fmt, ap);
    va_end(ap);
    it->line = line;
}

static void oom(ctx *c)
{
    if (!c->oom) err(c, 0, "", "out of memory");
    c->oom = true;
}

/* Bounded appends: paths longer than the buffer are cut short (th_config_error.path is 256 bytes). */
static void append(char *out, size_t cap, const char *s)
{
    size_t o = strnlen(out, cap);
    if (o + 1 < cap) th_strlcpy(out + o, s, cap - o);
}

static void join(char *out, size_t cap, const char *path, const char *key)
{
    out[0] = 0;
    append(out, cap, path);
    if (path[0]) append(out, cap, ".");
    append(out, cap, key);
}

static void join_index(char *out, size_t cap, const char *path, size_t i)
{
    char num[32];
    snprintf(num, sizeof num, "[%zu]", i);
    out[0] = 0;
    append(out, cap, path);
    append(out, cap, num);
}

/* ---------------------------------------------------------------------------------------------- */
/* Step 1: YAML events -> tree */

typedef struct builder {
    ctx *c;
    ynode *stack[MAX_DEPTH + 1];
    int depth;
    size_t nodes;
    ynode *root;
} builder;

/* The path of the value about to be added to the top of the stack. For a new map key, key is its text. */
static void stack_path(const builder *b, const char *key, char *out, size_t cap)
{
    out[0] = 0;
    char tmp[256];
    for (int j = 0; j < b->depth; j++) {
        const ynode *n = b->stack[j];
        bool top = j == b->depth - 1;
        th_strlcpy(tmp, out, sizeof tmp);
        if (n->kind == N_SEQ) {
            join_index(out, cap, tmp, top ? n->n : n->n - 1);
        } else {
            const char *k;
            if (top)
                k = n->n % 2 ? n->kids[n->n - 1]->val : key;
            else
                k = n->n >= 2 ? n->kids[n->n - 2]->val : "";
            if (k == NULL) k = "?";
            join(out, cap, tmp, k);
        }
    }
}

static int add_kid(ynode *p, ynode *k)
{
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 8;
        ynode **kids = realloc(p->kids, ncap * sizeof *kids);
        if (kids == NULL) return -1;
        p->kids = kids;
        p->cap = ncap;
    }
    p->kids[p->n++] = k;
    return 0;
}

/* Adds n under the top of the stack (or as the root). Takes ownership of n. -1 on ENOMEM. */
static int attach(builder *b, ynode *n)
{
    if (b->depth == 0) {
        if (b->root == NULL) {
            b->root = n;
            return 0;
        }
        node_free(n); /* cannot happen: one document */
        return 0;
    }
    ynode *p = b->stack[b->depth - 1];
    if (p->kind == N_MAP && p->n % 2 == 0) { /* n is a key */
        char path[256];
        if (n->kind != N_SCALAR) {
            stack_path(b, "?", path, sizeof path);
            err(b->c, n->line, path, "keys must be strings");
            n->ignore = true;
        } else {
            for (size_t i = 0; i < p->n; i += 2) {
                if (!p->kids[i]->ignore && strcmp(p->kids[i]->val, n->val) == 0) {
                    stack_path(b, n->val, path, sizeof path);
                    err(b->c, n->line, path, "duplicate key (first on line %d)", p->kids[i]->line);
                    n->ignore = true;
                    break;
                }
            }
        }
    }
    if (add_kid(p, n) != 0) {
        node_free(n);
        return -1;
    }
    return 0;
}

static ynode *new_node(int kind, const yaml_mark_t *m)
{
    ynode *n = calloc(1, sizeof *n);
    if (n == NULL) return NULL;
    n->kind = kind;
    n->line = (int)m->line + 1;
    return n;
}

/* Returns 0 when the tree was built (maybe with non-fatal errors), -1 on a fatal error. */
static int build(ctx *c, const char *yaml, size_t len, ynode **out)
{
    builder b = {.c = c};
    yaml_parser_t p;
    int rc = -1, docs = 0;
    bool done = false;
    *out = NULL;
    if (!yaml_parser_initialize(&p)) {
        oom(c);
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            if (p.error == YAML_MEMORY_ERROR) {
                oom(c);
            } else {
                const yaml_mark_t *m = &p.problem_mark;
                if (p.error == YAML_READER_ERROR)
                    err(c, 0, "", "YAML error: %s (at byte %zu)", p.problem ? p.problem : "unreadable input",
                        p.problem_offset);
                else if (p.context)
                    err(c, (int)m->line + 1, "",
                        "YAML syntax error: %s (column %zu; %s that starts on line %zu)",
                        p.problem ? p.problem : "error", m->column + 1, p.context, p.context_mark.line + 1);
                else
                    err(c, (int)m->line + 1, "", "YAML syntax error: %s (column %zu)",
                        p.problem ? p.problem : "error", m->column + 1);
            }
            goto out;
        }
        ynode *n = NULL;
        char path[256];
        bool push = false;
        const yaml_mark_t *mark = &ev.start_mark;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                err(c, (int)mark->line + 1, "", "only one YAML document is allowed");
                yaml_event_delete(&ev);
                goto out;
            }
            break;
        case YAML_ALIAS_EVENT:
            stack_path(&b, "?", path, sizeof path);
            err(c, (int)mark->line + 1, path, "YAML aliases are not supported");
            n = new_node(N_BAD, mark);
            if (n) n->val = NULL;
            break;
        case YAML_SCALAR_EVENT:
            n = new_node(N_SCALAR, mark);
            if (n == NULL) break;
            n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            n->val = th_strndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
            if (n->val == NULL) {
                free(n);
                n = NULL;
                break;
            }
            if (strlen(n->val) != ev.data.scalar.length) {
                stack_path(&b, n->val, path, sizeof path);
                err(c, n->line, path, "NUL characters are not allowed");
                n->kind = N_BAD;
            }
            if (ev.data.scalar.anchor) {
                stack_path(&b, n->val, path, sizeof path);
                err(c, n->line, path, "YAML anchors are not supported");
            }
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (b.depth >= MAX_DEPTH) {
                err(c, (int)mark->line + 1, "", "nesting deeper than %d levels", MAX_DEPTH);
                yaml_event_delete(&ev);
                goto out;
            }
            n = new_node(ev.type == YAML_SEQUENCE_START_EVENT ? N_SEQ : N_MAP, mark);
            if (n == NULL) break;
            push = true;
            {
                const yaml_char_t *anchor = ev.type == YAML_SEQUENCE_START_EVENT
                                                ? ev.data.sequence_start.anchor
                                                : ev.data.mapping_start.anchor;
                if (anchor) {
                    stack_path(&b, "?", path, sizeof path);
                    err(c, n->line, path, "YAML anchors are not supported");
                }
            }
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (b.depth > 0) b.depth--;
            break;
        default:
            break;
        }
        bool wanted = ev.type == YAML_SCALAR_EVENT || ev.type == YAML_ALIAS_EVENT ||
                      ev.type == YAML_SEQUENCE_START_EVENT || ev.type == YAML_MAPPING_START_EVENT;
        yaml_event_delete(&ev);
        if (!wanted) continue;
        if (n == NULL) {
            oom(c);
            goto out;
        }
        if (++b.nodes > MAX_NODES) {
            err(c, n->line, "", "more than %d YAML nodes", MAX_NODES);
            node_free(n);
            goto out;
        }
        if (attach(&b, n) != 0) {
            oom(c);
            goto out;
        }
        if (push) b.stack[b.depth++] = n;
    }
    rc = 0;
out:
    yaml_parser_delete(&p);
    if (rc == 0)
        *out = b.root;
    else
        node_free(b.root);
    return rc;
}

/* ---------------------------------------------------------------------------------------------- */
/* Validators: NULL when s is fine, else the message. */

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_alpha(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static bool is_hex(char ch)
{
    return is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static bool valid_port(const char *s, size_t n, bool allow_zero)
{
    int64_t v;
    if (n == 0 || n > 5) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_digit(s[i])) return false;
    if (th_strn_to_i64(s, n, allow_zero ? 0 : 1, 65535, &v) != 0) return false;
    return true;
}

static bool valid_hostname(const char *s, size_t n)
{
    if (n == 0 || n > 253) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_') return false;
    return true;
}

static bool valid_ip6(const char *s, size_t n)
{
    char buf[64];
    unsigned char addr[16];
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    return inet_pton(AF_INET6, buf, addr) == 1;
}

/* host[:port] or [v6][:port]; host required, port optional unless need_port. */
static bool valid_hostport(const char *s, size_t n, bool need_port, bool port_zero)
{
    const char *port = NULL;
    size_t hn, pn = 0;
    if (n > 0 && s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (rb == NULL || !valid_ip6(s + 1, (size_t)(rb - s - 1))) return false;
        size_t used = (size_t)(rb - s) + 1;
        if (used < n) {
            if (s[used] != ':') return false;
            port = s + used + 1;
            pn = n - used - 1;
        }
    } else {
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++)
            if (s[i] == ':') colon = s + i;
        hn = colon ? (size_t)(colon - s) : n;
        if (!valid_hostname(s, hn)) return false;
        if (colon) {
            port = colon + 1;
            pn = n - hn - 1;
        }
    }
    if (port) return valid_port(port, pn, port_zero);
    return !need_port;
}

static const char *check_listen(const char *s)
{
    return valid_hostport(s, strlen(s), true, true) ? NULL : "not a listen address (HOST:PORT)";
}

static const char *check_listen_opt(const char *s)
{
    return s[0] == 0 ? NULL : check_listen(s);
}

/* scheme://[userinfo@]host[:port][/path][?query]; no spaces or control characters. */
static bool valid_url(const char *s, const char *const *schemes)
{
    const char *rest = NULL;
    for (size_t i = 0; schemes[i]; i++) {
        size_t l = strlen(schemes[i]);
        if (strncmp(s, schemes[i], l) == 0 && strncmp(s + l, "://", 3) == 0) {
            rest = s + l + 3;
            break;
        }
    }
    if (rest == NULL) return false;
    for (const char *p = rest; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) return false;
    size_t an = strcspn(rest, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < an; i++)
        if (rest[i] == '@') at = rest + i;
    if (at) {
        an -= (size_t)(at + 1 - rest);
        rest = at + 1;
    }
    return valid_hostport(rest, an, false, false);
}

static const char *check_http_url(const char *s)
{
    static const char *const schemes[] = {"http", "https", NULL};
    return valid_url(s, schemes) ? NULL : "not a URL";
}

static const char *check_http_url_opt(const char *s)
{
    return s[0] == 0 ? NULL : check_http_url(s);
}

static const char *check_redis_url(const char *s)
{
    static const char *const schemes[] = {"redis", "rediss", NULL};
    if (strncmp(s, "unix:///", 8) == 0 && s[8]) return NULL;
    return valid_url(s, schemes) ? NULL : "not a redis URL (redis://HOST:PORT/DB)";
}

static const char *check_env(const char *s)
{
    size_t n = strlen(s);
    if (n == 0) return NULL;
    if (n > 255 || is_digit(s[0])) return "not an environment variable name";
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '_') return "not an environment variable name";
    return NULL;
}

static const char *check_network(const char *s)
{
    th_netacl acl = {0};
    char e[128];
    int rc = th_netacl_add(&acl, s, e, sizeof e);
    th_netacl_free(&acl);
    return rc == 0
               ? NULL
               : "must be a network: a CIDR (10.0.0.0/8, fd00::/8), an address, or loopback | private | any";
}

static const char *check_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0) return "must not be empty";
    if (n > 64) return "longer than 64 characters";
    for (size_t i = 0; i < n; i++)
        if (!is_alpha(s[i]) && !is_digit(s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.')
            return "may hold only letters, digits, '_', '-' and '.'";
    return NULL;
}

static const char *check_nonempty(const char *s)
{
    return s[0] ? NULL : "must not be empty";
}

static const char *check_hex64(const char *s)
{
    size_t n = strlen(s);
    if (n != 64) return "must be 64 hex characters (the sha256 of the key)";
    for (size_t i = 0; i < n; i++)
        if (!is_hex(s[i])) return "must be 64 hex characters (the sha256 of the key)";
    return NULL;
}

static const char *check_region(const char *s)
{
    if (s[0] == 0) return "must not be empty";
    for (const char *p = s; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !is_digit(*p)) return "not an Azure region (like westeurope)";
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* The schema */

typedef enum {
    K_STR,     /* char *, never NULL after defaults */
    K_BOOL,    /* bool */
    K_INT,     /* int / uint32_t / int64 / uint64_t / size_t (width), bounds min..max */
    K_DBL,     /* double, bounds dmin..dmax */
    K_DUR,     /* uint64_t ms, bounds min..max (ms) */
    K_SIZE,    /* uint64_t bytes, bounds min..max */
    K_ENUM,    /* char *, one of enums */
    K_ENUMI,   /* an int-sized C enum: the index in enums */
    K_STRLIST, /* char ** at off, size_t count at off2; def is one item */
    K_FMTS,    /* uint32_t bitmask of 1u << th_fmt */
    K_KVMAP,   /* th_kv * at off, size_t at off2: name -> string (or mapping as JSON, for cloning kinds) */
    K_SECTION, /* a nested mapping into the same struct */
    K_LIST,    /* array of width-byte elements at off, count at off2, each a sub section */
    K_MAP,     /* same, keyed by name: the key goes to the char * at name_off */
    K_OPT,     /* a provider kind's own key: validated as vtype, stored as text in the th_kv at off/off2 */
} ktype;

enum { F_REQ = 1, F_SECRET = 2, F_URL = 4, F_KV_MAPOK = 8 };

enum {
    KD_ESPEAK,
    KD_OPENAI_FM,
    KD_OPENAI,
    KD_GPT_SOVITS,
    KD_XTTS,
    KD_OPENVOICE,
    KD_COSYVOICE,
    KD_FISH,
    KD_ELEVENLABS,
    KD_AZURE,
    KD_NODES,
};
#define KB(k) (1u << (k))
#define KB_ALL 0x7ffu
#define KB_UPSTREAM (KB_ALL & ~(KB(KD_ESPEAK) | KB(KD_NODES)))
#define KB_CLONING (KB(KD_GPT_SOVITS) | KB(KD_COSYVOICE) | KB(KD_NODES))

static const char *const kinds[] = {"espeak",     "openai_fm", "openai",    "gpt_sovits",
                                    "xtts",       "openvoice", "cosyvoice", "fish",
                                    "elevenlabs", "azure",     "nodes",     NULL};

struct section_def;

typedef struct key_def {
    const char *name;
    ktype type;
    ktype vtype; /* K_OPT */
    unsigned flags;
    size_t off, off2, width, name_off;
    int64_t min, max;
    double dmin, dmax;
    const char *def; /* as written in YAML; K_OPT: none (providers/conf.c has the kinds' defaults) */
    const char *const *enums;
    const struct section_def *sub;
    const char *(*check)(const char *s); /* strings, list items and K_MAP names */
    unsigned kinds;                      /* provider keys: the kinds that take it; 0 = all */
} key_def;

typedef struct section_def {
    const key_def *keys;
    size_t n;
    bool by_kind; /* a provider: keys are filtered by the value of `type` */
    void (*post)(ctx *c, const ynode *n, void *base, const char *path, size_t index);
    void (*fini)(void *base);
} section_def;

#define FW(T, f) sizeof(((T *)0)->f)
#define KSTR(T, f, nm, d, chk, fl, kb)                                                                       \
    {                                                                                                        \
        .name = nm, .type = K_STR, .off = offsetof(T, f), .def = d, .check = chk, .flags = fl, .kinds = kb   \
    }
#define KBOOL(T, f, nm, d)                                                                                   \
    {                                                                                                        \
        .name = nm, .type = K_BOOL, .off = offsetof(T, f), .def = d                                          \
    }
#define KINT(T, f, nm, d, lo, hi, kb)                                                                        \
    {                                                                                                        \
        .name = nm, .type = K_INT, .off = offsetof(T, f), .width = FW(T, f), .def = d, .min = lo, .max = hi, \
        .kinds = kb                                                                                          \
    }
#define KDBL(T, f, nm, d, lo, hi)                                                                            \
    {                                                                                                        \
        .name = nm, .type = K_DBL, .off = offsetof(T, f), .def = d, .dmin = lo, .dmax = hi                   \
    }
#define KDUR(T, f, nm, d, lo, hi)                                                                            \
    {                                                                                                        \
        .name = nm, .type = K_DUR, .off = offsetof(T, f), .def = d, .min = lo, .max = hi                     \
    }
#define KSIZE(T, f, nm, d, lo, hi)                                                                           \
    {                                                                                                        \
        .name = nm, .type = K_SIZE, .off = offsetof(T, f), .def = d, .min = lo, .max = hi                    \
    }
#define KENUM(T, f, nm, d, list)                                                                             \
    {                                                                                                        \
        .name = nm, .type = K_ENUM, .off = offsetof(T, f), .def = d, .enums = list                           \
    }
#define KENUMI(T, f, nm, d, list)                                                                            \
    {                                                                                                        \
        .name = nm, .type = K_ENUMI, .off = offsetof(T, f), .width = FW(T, f), .def = d, .enums = list       \
    }
#define KSTRLIST(T, f, nf, nm, d, fl)                                                                        \
    {                                                                                                        \
        .name = nm, .type = K_STRLIST, .off = offsetof(T, f), .off2 = offsetof(T, nf), .def = d, .flags = fl \
    }
#define KKV(T, f, nf, nm, fl)                                                                                \
    {                                                                                                        \
        .name = nm, .type = K_KVMAP, .off = offsetof(T, f), .off2 = offsetof(T, nf), .flags = fl             \
    }
#define KSEC(nm, s)                                                                                          \
    {                                                                                                        \
        .name = nm, .type = K_SECTION, .sub = &s                                                             \
    }
#define KLIST(T, f, nf, nm, s, fl)                                                                           \
    {                                                                                                        \
        .name = nm, .type = K_LIST, .off = offsetof(T, f), .off2 = offsetof(T, nf),                          \
        .width = sizeof(*((T *)0)->f), .sub = &s, .flags = fl                                                \
    }
#define KMAP(T, f, nf, nm, s, namef, chk)                                                                    \
    {                                                                                                        \
        .name = nm, .type = K_MAP, .off = offsetof(T, f), .off2 = offsetof(T, nf),                           \
        .width = sizeof(*((T *)0)->f), .sub = &s, .name_off = offsetof(__typeof__(*((T *)0)->f), namef),     \
        .check = chk                                                                                         \
    }
#define KOPT(nm, vt, kb, ...)                                                                                \
    {                                                                                                        \
        .name = nm, .type = K_OPT, .vtype = vt, .off = offsetof(th_provider_conf, opts),                     \
        .off2 = offsetof(th_provider_conf, n_opts), .kinds = kb, __VA_ARGS__                                 \
    }
#define SECTION(arr, ...)                                                                                    \
    {                                                                                                        \
        .keys = arr, .n = sizeof arr / sizeof arr[0], __VA_ARGS__                                            \
    }

#define KiB 1024LL
#define MiB (1024LL * 1024)
#define GiB (1024LL * 1024 * 1024)
#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static const char *const e_level[] = {"debug", "info", "warn", "error", "off", NULL};
static const char *const e_logfmt[] = {"json", "text", NULL};
static const char *const e_auth[] = {"none", "api_key", "jwt", "any", NULL};
static const char *const e_role[] = {"user", "admin", NULL};
static const char *const e_alg[] = {"HS256", "HS384", "HS512", "RS256", "RS384",
                                    "RS512", "ES256", "ES384", "ES512", NULL};
static const char *const e_local_redis[] = {"local", "redis", NULL};
static const char *const e_open_closed[] = {"open", "closed", NULL};
static const char *const e_mem_redis[] = {"memory", "redis", NULL};
static const char *const e_strategy[] = {"weighted", "round_robin", "least_load", "random", "priority", NULL};
static const char *const e_api[] = {"v2", "v1", NULL};
static const char *const e_node_strategy[] = {"round_robin", "least_load", "random", NULL};
static const char *const e_node_protocol[] = {"ttshub", "seed2", NULL};
static const char *const e_media[] = {"wav", "raw", "ogg", "aac", NULL};
static const char *const e_cosy_mode[] = {"sft", "zero_shot", "cross_lingual", "instruct", NULL};
static const char *const e_fish_fmt[] = {"wav", "pcm", "mp3", "opus", NULL};

/* Client-facing format names (API.md); bit = 1u << th_fmt. */
static const struct {
    const char *name;
    th_fmt fmt;
} fmt_names[] = {{"mp3", TH_FMT_MP3},   {"opus", TH_FMT_OPUS}, {"aac", TH_FMT_AAC},
                 {"flac", TH_FMT_FLAC}, {"wav", TH_FMT_WAV},   {"pcm", TH_FMT_PCM}};

static void provider_post(ctx *c, const ynode *n, void *base, const char *path, size_t index);
static void provider_fini(void *base);
static void key_post(ctx *c, const ynode *n, void *base, const char *path, size_t index);

static const key_def k_log[] = {
    KENUMI(th_config, log.level, "level", "info", e_level),
    KENUMI(th_config, log.format, "format", "json", e_logfmt),
    KSTR(th_config, log.file, "file", "", NULL, 0, 0),
};
static const section_def s_log = SECTION(k_log);

static const key_def k_limits[] = {
    KSIZE(th_config, limits.max_body, "max_body", "1MiB", 1 * KiB, 1 * GiB),
    KSIZE(th_config, limits.max_upload, "max_upload", "20MiB", 1 * KiB, 4 * GiB),
    KSIZE(th_config, limits.max_header, "max_header", "16KiB", 1 * KiB, 1 * MiB),
    KINT(th_config, limits.max_input_chars, "max_input_chars", "100000", 1, 100000000, 0),
    KINT(th_config, limits.max_connections, "max_connections", "10000", 1, 1000000, 0),
    KDUR(th_config, limits.header_timeout_ms, "header_timeout", "10s", 100, 1 * HOUR),
    KDUR(th_config, limits.idle_timeout_ms, "idle_timeout", "60s", 1 * SEC, 1 * DAY),
    KDUR(th_config, limits.request_timeout_ms, "request_timeout", "120s", 1 * SEC, 1 * DAY),
    KDUR(th_config, limits.shutdown_grace_ms, "shutdown_grace", "30s", 0, 1 * HOUR),
    KINT(th_config, limits.max_connections_per_ip, "max_connections_per_ip", "1000", 0, 1000000, 0),
    KSIZE(th_config, limits.max_buffered_bodies, "max_buffered_bodies", "256MiB", 1 * MiB, 64 * GiB),
    KSIZE(th_config, limits.max_buffered_audio, "max_buffered_audio", "32MiB", 64 * KiB, 4 * GiB),
    KINT(th_config, limits.max_feed_per_ip, "max_feed_per_ip", "16", 1, 100000, 0),
    KDUR(th_config, limits.feed_idle_timeout_ms, "feed_idle_timeout", "60s", 1 * SEC, 1 * DAY),
    KDUR(th_config, limits.feed_ping_interval_ms, "feed_ping_interval", "20s", 100, 1 * HOUR),
};
static const section_def s_limits = SECTION(k_limits);

static const key_def k_key[] = {
    KSTR(th_key_conf, id, "id", "", check_name, F_REQ, 0),
    KSTR(th_key_conf, sha256, "sha256", "", check_hex64, F_REQ | F_SECRET, 0),
    KSTR(th_key_conf, tenant, "tenant", "", NULL, 0, 0),
    KENUM(th_key_conf, role, "role", "user", e_role),
    KINT(th_key_conf, rpm, "rpm", "0", 0, 1000000, 0),
};
static const section_def s_key = SECTION(k_key, .post = key_post);

static const key_def k_jwt[] = {
    KENUM(th_config, auth.jwt.alg, "alg", "HS256", e_alg),
    KSTR(th_config, auth.jwt.secret_env, "secret_env", "TTSHUB_JWT_SECRET", check_env, 0, 0),
    KSTR(th_config, auth.jwt.public_key_file, "public_key_file", "", NULL, 0, 0),
    KSTR(th_config, auth.jwt.issuer, "issuer", "", NULL, 0, 0),
    KSTR(th_config, auth.jwt.audience, "audience", "", NULL, 0, 0),
    KSTR(th_config, auth.jwt.tenant_claim, "tenant_claim", "tenant", check_nonempty, 0, 0),
    KSTR(th_config, auth.jwt.role_claim, "role_claim", "role", check_nonempty, 0, 0),
    KBOOL(th_config, auth.jwt.require_exp, "require_exp", "true"),
};
static const section_def s_jwt = SECTION(k_jwt);

static const key_def k_auth[] = {
    KENUM(th_config, auth.mode, "mode", "none", e_auth),
    KBOOL(th_config, auth.allow_open_admin, "allow_open_admin", "false"),
    KLIST(th_config, auth.keys, auth.n_keys, "keys", s_key, 0),
    KSEC("jwt", s_jwt),
};
static const section_def s_auth = SECTION(k_auth);

static const key_def k_quota[] = {
    KINT(th_tenant_conf, chars_per_day, "chars_per_day", "0", 0, 1000000000000000LL, 0),
    KINT(th_tenant_conf, chars_per_month, "chars_per_month", "0", 0, 1000000000000000LL, 0),
};
static const section_def s_quota = SECTION(k_quota);

static const key_def k_tenant[] = {
    KINT(th_tenant_conf, rpm, "rpm", "0", 0, 1000000, 0),
    KINT(th_tenant_conf, rate, "rate", "0", 0, 1000000, 0),
    KINT(th_tenant_conf, burst, "burst", "0", 0, 1000000, 0),
    KINT(th_tenant_conf, concurrency, "concurrency", "0", 0, 1000000, 0),
    KSEC("quota", s_quota),
    KSTRLIST(th_tenant_conf, voices, n_voices, "voices", "*", 0),
    KSTRLIST(th_tenant_conf, providers, n_providers, "providers", "*", 0),
    KINT(th_tenant_conf, max_voices, "max_voices", "0", 0, 1000000, 0),
};
static const section_def s_tenant = SECTION(k_tenant);

static const key_def k_rate[] = {
    KINT(th_config, rate_limit.global_rpm, "global_rpm", "1000", 0, 100000000, 0),
    KINT(th_config, rate_limit.ip_rpm, "ip_rpm", "100", 0, 100000000, 0),
    KINT(th_config, rate_limit.concurrency, "concurrency", "50", 0, 10000000, 0),
    KENUM(th_config, rate_limit.backend, "backend", "local", e_local_redis),
    KENUM(th_config, rate_limit.on_backend_error, "on_backend_error", "open", e_open_closed),
};
static const section_def s_rate = SECTION(k_rate);

static const key_def k_redis[] = {
    KSTR(th_config, redis.url, "url", "redis://127.0.0.1:6379/0", check_redis_url, F_URL, 0),
    KSTR(th_config, redis.prefix, "prefix", "ttshub:", NULL, 0, 0),
    KDUR(th_config, redis.timeout_ms, "timeout", "200ms", 1, 60 * SEC),
    KINT(th_config, redis.pool, "pool", "2", 1, 8, 0),
    KINT(th_config, redis.max_inflight, "max_inflight", "1024", 1, 1000000, 0),
};
static const section_def s_redis = SECTION(k_redis);

static const key_def k_cache[] = {
    KBOOL(th_config, cache.enabled, "enabled", "true"),
    KENUM(th_config, cache.backend, "backend", "memory", e_mem_redis),
    KSIZE(th_config, cache.max_bytes, "max_bytes", "256MiB", 0, 1024 * GiB),
    KDUR(th_config, cache.ttl_ms, "ttl", "10m", 1 * SEC, 30 * DAY),
    KBOOL(th_config, cache.per_tenant, "per_tenant", "true"),
};
static const section_def s_cache = SECTION(k_cache);

static const key_def k_provider[] = {
    KSTR(th_provider_conf, name, "name", "", check_name, F_REQ, 0),
    KENUM(th_provider_conf, type, "type", "", kinds),
    KINT(th_provider_conf, weight, "weight", "1", 0, 10000, 0),
    KINT(th_provider_conf, priority, "priority", "0", 0, 1000000, 0),
    KINT(th_provider_conf, concurrency, "concurrency", "4", 0, 100000, 0),
    KINT(th_provider_conf, queue, "queue", "64", 0, 1000000, 0),
    KDUR(th_provider_conf, timeout_ms, "timeout", "30s", 100, 1 * HOUR),
    KINT(th_provider_conf, max_input_chars, "max_input_chars", "0", 0, 100000000, 0),
    KKV(th_provider_conf, voices, n_voices, "voices", F_KV_MAPOK),
    {.name = "formats", .type = K_FMTS, .off = offsetof(th_provider_conf, formats)},
    KSTR(th_provider_conf, base_url, "base_url", "", check_http_url_opt, F_URL, KB_UPSTREAM | KB(KD_NODES)),
    KSTR(th_provider_conf, api_key_env, "api_key_env", "", check_env, 0, KB_UPSTREAM),
    KINT(th_provider_conf, sample_rate, "sample_rate", "0", 0, 384000, KB_ALL & ~KB(KD_ESPEAK)),
    KSTR(th_provider_conf, engine, "engine", "", NULL, 0, KB(KD_NODES)),
    KOPT("model", K_STR, KB(KD_OPENAI), .check = check_nonempty),
    KOPT("api", K_ENUM, KB(KD_GPT_SOVITS), .enums = e_api),
    KOPT("text_lang", K_STR, KB(KD_GPT_SOVITS), .check = check_nonempty),
    KOPT("media_type", K_ENUM, KB(KD_GPT_SOVITS), .enums = e_media),
    KOPT("streaming_mode", K_INT, KB(KD_GPT_SOVITS), .min = 0, .max = 3),
    KOPT("language", K_STR, KB(KD_XTTS), .check = check_nonempty),
    KOPT("stream", K_BOOL, KB(KD_OPENAI) | KB(KD_XTTS)),
    KOPT("accent", K_STR, KB(KD_OPENVOICE), .check = check_nonempty),
    KOPT("mode", K_ENUM, KB(KD_COSYVOICE), .enums = e_cosy_mode),
    KOPT("format", K_ENUM, KB(KD_FISH), .enums = e_fish_fmt),
    KOPT("reference_id", K_STR, KB(KD_FISH)),
    KOPT("model_id", K_STR, KB(KD_ELEVENLABS), .check = check_nonempty),
    KOPT("output_format", K_STR, KB(KD_ELEVENLABS) | KB(KD_AZURE), .check = check_nonempty),
    KOPT("region", K_STR, KB(KD_AZURE), .check = check_region),
    KOPT("strategy", K_ENUM, KB(KD_NODES), .enums = e_node_strategy),
    /* the node protocol a nodes provider speaks (and the registered nodes it routes to) */
    KOPT("protocol", K_ENUM, KB(KD_NODES), .enums = e_node_protocol),
    /* library voices on shared storage: the folder the hub writes, and where the engine sees it */
    KOPT("ref_dir", K_STR, KB(KD_GPT_SOVITS) | KB(KD_XTTS)),
    KOPT("ref_dir_engine", K_STR, KB(KD_GPT_SOVITS) | KB(KD_XTTS)),
};
static const section_def s_provider =
    SECTION(k_provider, .by_kind = true, .post = provider_post, .fini = provider_fini);

static const key_def k_breaker[] = {
    KINT(th_config, router.breaker.failures, "failures", "5", 1, 100000, 0),
    KDBL(th_config, router.breaker.failure_ratio, "failure_ratio", "0.5", 0.0, 1.0),
    KDUR(th_config, router.breaker.window_ms, "window", "30s", 1 * SEC, 1 * HOUR),
    KDUR(th_config, router.breaker.open_for_ms, "open_for", "30s", 1 * SEC, 1 * HOUR),
    KINT(th_config, router.breaker.half_open_probes, "half_open_probes", "1", 1, 1000, 0),
};
static const section_def s_breaker = SECTION(k_breaker);

static const key_def k_match[] = {
    KSTR(th_route_conf, tenant, "tenant", "", NULL, 0, 0),
    KSTR(th_route_conf, voice, "voice", "", NULL, 0, 0),
    KSTR(th_route_conf, model, "model", "", NULL, 0, 0),
};
static const section_def s_match = SECTION(k_match);

static const key_def k_route[] = {
    KSEC("match", s_match),
    KSTRLIST(th_route_conf, providers, n_providers, "providers", NULL, F_REQ),
};
static const section_def s_route = SECTION(k_route);

static const key_def k_router[] = {
    KENUM(th_config, router.strategy, "strategy", "weighted", e_strategy),
    KINT(th_config, router.retries, "retries", "1", 0, 10, 0),
    KBOOL(th_config, router.fallback, "fallback", "true"),
    KDUR(th_config, router.hedge_after_ms, "hedge_after", "0s", 0, 1 * HOUR),
    KSEC("breaker", s_breaker),
    KDUR(th_config, router.health_interval_ms, "health_interval", "10s", 0, 1 * HOUR),
    KLIST(th_config, router.routes, router.n_routes, "routes", s_route, 0),
};
static const section_def s_router = SECTION(k_router);

static const key_def k_voice[] = {
    KSTR(th_voice_conf, language, "language", "", NULL, 0, 0),
    KKV(th_voice_conf, providers, n_providers, "providers", 0),
};
static const section_def s_voice = SECTION(k_voice);

static const key_def k_registry[] = {
    KDUR(th_config, registry.heartbeat_interval_ms, "heartbeat_interval", "10s", 1 * SEC, 1 * HOUR),
    KDUR(th_config, registry.dead_threshold_ms, "dead_threshold", "30s", 1 * SEC, 1 * DAY),
    KDUR(th_config, registry.remove_after_ms, "remove_after", "10m", 1 * SEC, 30 * DAY),
    KSTR(th_config, registry.token_env, "token_env", "TTSHUB_CLUSTER_TOKEN", check_env, 0, 0),
    KENUM(th_config, registry.backend, "backend", "local", e_local_redis),
    {.name = "trusted_networks",
     .type = K_STRLIST,
     .off = offsetof(th_config, registry.trusted_networks),
     .off2 = offsetof(th_config, registry.n_trusted_networks),
     .def = "loopback",
     .check = check_network},
    {.name = "allowed_networks",
     .type = K_STRLIST,
     .off = offsetof(th_config, registry.allowed_networks),
     .off2 = offsetof(th_config, registry.n_allowed_networks),
     .check = check_network},
    KINT(th_config, registry.max_capacity, "max_capacity", "64", 1, 100000, 0),
    KSIZE(th_config, registry.max_node_bytes, "max_node_bytes", "64KiB", 1 * KiB, 64 * MiB),
    KSIZE(th_config, registry.max_bytes, "max_bytes", "16MiB", 64 * KiB, 4 * GiB),
    KINT(th_config, registry.control_rpm, "control_rpm", "600", 0, 100000000, 0),
    KINT(th_config, registry.max_node_voices, "max_node_voices", "1000", 1, 100000, 0),
    KINT(th_config, registry.voice_push_concurrency, "voice_push_concurrency", "2", 1, 64, 0),
    KDUR(th_config, registry.voice_push_timeout_ms, "voice_push_timeout", "60s", 1 * SEC, 10 * MIN),
};
static const section_def s_registry = SECTION(k_registry);

static const key_def k_reload[] = {
    KBOOL(th_config, reload.watch, "watch", "true"),
    KDUR(th_config, reload.debounce_ms, "debounce", "300ms", 0, 1 * MIN),
    KBOOL(th_config, reload.reuse_port, "reuse_port", "false"),
};
static const section_def s_reload = SECTION(k_reload);

static const key_def k_tracing[] = {
    KSTR(th_config, tracing.otlp_endpoint, "otlp_endpoint", "", check_http_url_opt, F_URL, 0),
    KSTR(th_config, tracing.service_name, "service_name", "ttshub", check_nonempty, 0, 0),
    KDBL(th_config, tracing.sample_ratio, "sample_ratio", "1.0", 0.0, 1.0),
};
static const section_def s_tracing = SECTION(k_tracing);

static const char *const e_fs_redis[] = {"fs", "redis", NULL};
static const key_def k_voice_library[] = {
    KENUM(th_config, voice_library.backend, "backend", "fs", e_fs_redis),
    KDBL(th_config, voice_library.min_seconds, "min_seconds", "2", 0.5, 600.0),
    KDBL(th_config, voice_library.max_seconds, "max_seconds", "60", 1.0, 600.0),
    KSIZE(th_config, voice_library.cache_bytes, "cache_bytes", "64MiB", 0, 64 * GiB),
    KINT(th_config, voice_library.max_per_tenant, "max_per_tenant", "100", 1, 1000000, 0),
    KINT(th_config, voice_library.max_voices, "max_voices", "10000", 1, 1000000, 0),
    KDBL(th_config, voice_library.silence_dbfs, "silence_dbfs", "-45", -90.0, -10.0),
};
static const section_def s_voice_library = SECTION(k_voice_library);

static const key_def k_top[] = {
    KSTR(th_config, listen, "listen", "0.0.0.0:8080", check_listen, 0, 0),
    KSTR(th_config, metrics_listen, "metrics_listen", "", check_listen_opt, 0, 0),
    KSTR(th_config, data_dir, "data_dir", "./data", check_nonempty, 0, 0),
    KSEC("log", s_log),
    KSEC("limits", s_limits),
    KSEC("auth", s_auth),
    KMAP(th_config, tenants, n_tenants, "tenants", s_tenant, name, check_name),
    KSEC("rate_limit", s_rate),
    KSEC("redis", s_redis),
    KSEC("cache", s_cache),
    KLIST(th_config, providers, n_providers, "providers", s_provider, 0),
    KSEC("router", s_router),
    KMAP(th_config, voices, n_voices, "voices", s_voice, id, NULL),
    KSEC("registry", s_registry),
    KSEC("tracing", s_tracing),
    KSEC("voice_library", s_voice_library),
    KSEC("reload", s_reload),
    KBOOL(th_config, metrics_tenant_labels, "metrics_tenant_labels", "true"),
};
static const section_def s_top = SECTION(k_top);

/* With no `providers` key: the embedded espeak provider, read through the same table. */
static const char default_providers_yaml[] = "- name: local\n  type: espeak\n";

/* ---------------------------------------------------------------------------------------------- */
/* Values */

typedef struct val {
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    int idx;
    const char *s;
} val;

static int enum_index(const char *const *list, const char *s)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(list[i], s) == 0) return i;
    return -1;
}

static void enum_message(const char *const *list, char *msg, size_t cap)
{
    size_t o = (size_t)snprintf(msg, cap, "must be one of ");
    for (size_t i = 0; list[i] && o < cap; i++)
        o += (size_t)snprintf(msg + o, cap - o, "%s%s", i ? ", " : "", list[i]);
}

static void fmt_dur(uint64_t ms, char *out, size_t cap)
{
    if (ms == 0)
        snprintf(out, cap, "0s");
    else if (ms % HOUR == 0)
        snprintf(out, cap, "%lluh", (unsigned long long)(ms / HOUR));
    else if (ms % MIN == 0)
        snprintf(out, cap, "%llum", (unsigned long long)(ms / MIN));
    else if (ms % SEC == 0)
        snprintf(out, cap, "%llus", (unsigned long long)(ms / SEC));
    else
        snprintf(out, cap, "%llums", (unsigned long long)ms);
}

static void fmt_size(uint64_t b, char *out, size_t cap)
{
    if (b != 0 && b % GiB == 0)
        snprintf(out, cap, "%lluGiB", (unsigned long long)(b / GiB));
    else if (b != 0 && b % MiB == 0)
        snprintf(out, cap, "%lluMiB", (unsigned long long)(b / MiB));
    else if (b != 0 && b % KiB == 0)
        snprintf(out, cap, "%lluKiB", (unsigned long long)(b / KiB));
    else
        snprintf(out, cap, "%llu", (unsigned long long)b);
}

static bool parse_bool(const char *s, bool *out)
{
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0) {
        *out = true;
        return true;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0) {
        *out = false;
        return true;
    }
    return false;
}

/* Converts the text of a scalar (null: a YAML null) as type t. 0, or -1 with msg. */
static int conv(const key_def *kd, ktype t, const char *s, bool null, val *v, char *msg, size_t cap)
{
    char a[32], b[32];
    const char *m;
    if (null && t != K_STR) s = "";
    switch (t) {
    case K_STR:
        v->s = null ? "" : s;
        if (kd->check && (m = kd->check(v->s)) != NULL) goto fail_m;
        return 0;
    case K_BOOL:
        if (!parse_bool(s, &v->b)) {
            m = "must be true or false";
            goto fail_m;
        }
        return 0;
    case K_INT:
        if (th_str_to_i64(s, INT64_MIN, INT64_MAX, &v->i) != 0) {
            m = "must be an integer";
            goto fail_m;
        }
        if (v->i < kd->min || v->i > kd->max) {
            snprintf(msg, cap, "must be between %lld and %lld", (long long)kd->min, (long long)kd->max);
            return -1;
        }
        return 0;
    case K_DBL:
        if (th_str_to_double(s, -1e300, 1e300, &v->d) != 0) {
            m = "must be a number";
            goto fail_m;
        }
        if (v->d < kd->dmin || v->d > kd->dmax) {
            snprintf(msg, cap, "must be between %g and %g", kd->dmin, kd->dmax);
            return -1;
        }
        return 0;
    case K_DUR:
        if (th_str_to_duration_ms(s, &v->u) != 0) {
            m = "not a duration";
            goto fail_m;
        }
        if (v->u < (uint64_t)kd->min || v->u > (uint64_t)kd->max) {
            fmt_dur((uint64_t)kd->min, a, sizeof a);
            fmt_dur((uint64_t)kd->max, b, sizeof b);
            snprintf(msg, cap, "must be between %s and %s", a, b);
            return -1;
        }
        return 0;
    case K_SIZE:
        if (th_str_to_size(s, &v->u) != 0) {
            m = "not a size";
            goto fail_m;
        }
        if (v->u < (uint64_t)kd->min || v->u > (uint64_t)kd->max) {
            fmt_size((uint64_t)kd->min, a, sizeof a);
            fmt_size((uint64_t)kd->max, b, sizeof b);
            snprintf(msg, cap, "must be between %s and %s", a, b);
            return -1;
        }
        return 0;
    case K_ENUM:
    case K_ENUMI:
        v->idx = enum_index(kd->enums, s);
        if (v->idx < 0) {
            enum_message(kd->enums, msg, cap);
            return -1;
        }
        v->s = kd->enums[v->idx];
        return 0;
    default:
        m = "unsupported type";
        goto fail_m;
    }
fail_m:
    th_strlcpy(msg, m, cap);
    return -1;
}

static const char *type_text(ktype t)
{
    switch (t) {
    case K_STR:
        return "must be a string";
    case K_BOOL:
        return "must be true or false";
    case K_INT:
        return "must be an integer";
    case K_DBL:
        return "must be a number";
    case K_DUR:
        return "not a duration";
    case K_SIZE:
        return "not a size";
    case K_STRLIST:
    case K_FMTS:
    case K_LIST:
        return "must be a list";
    default:
        return "must be a mapping";
    }
}

/* The message for a value of the wrong YAML kind (a list where a scalar belongs...). */
static void type_message(const key_def *kd, ktype t, char *msg, size_t cap)
{
    if (t == K_ENUM || t == K_ENUMI)
        enum_message(kd->enums, msg, cap);
    else
        th_strlcpy(msg, type_text(t), cap);
}

static void *at_off(void *base, size_t off)
{
    return (char *)base + off;
}

/* Stores a converted scalar into its field. -1 on ENOMEM. */
static int store(const key_def *kd, void *base, const val *v)
{
    void *f = at_off(base, kd->off);
    switch (kd->type) {
    case K_STR:
    case K_ENUM: {
        char *d = strdup(v->s);
        if (d == NULL) return -1;
        char **slot = f;
        free(*slot);
        *slot = d;
        return 0;
    }
    case K_BOOL:
        *(bool *)f = v->b;
        return 0;
    case K_INT:
        if (kd->width == 4) {
            int32_t x = (int32_t)v->i;
            memcpy(f, &x, 4);
        } else {
            int64_t x = v->i;
            memcpy(f, &x, 8);
        }
        return 0;
    case K_DBL:
        *(double *)f = v->d;
        return 0;
    case K_DUR:
    case K_SIZE:
        *(uint64_t *)f = v->u;
        return 0;
    case K_ENUMI: {
        int x = v->idx;
        memcpy(f, &x, sizeof x);
        return 0;
    }
    default:
        return 0;
    }
}

static void free_strlist(char **l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(l[i]);
    free(l);
}

static void free_kv(th_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

static void free_section(const section_def *sec, void *base);

static void free_key(const key_def *kd, void *base)
{
    void *f = at_off(base, kd->off);
    switch (kd->type) {
    case K_STR:
    case K_ENUM:
        free(*(char **)f);
        *(char **)f = NULL;
        break;
    case K_STRLIST:
        free_strlist(*(char ***)f, *(size_t *)at_off(base, kd->off2));
        *(char ***)f = NULL;
        *(size_t *)at_off(base, kd->off2) = 0;
        break;
    case K_KVMAP:
        free_kv(*(th_kv **)f, *(size_t *)at_off(base, kd->off2));
        *(th_kv **)f = NULL;
        *(size_t *)at_off(base, kd->off2) = 0;
        break;
    case K_SECTION:
        free_section(kd->sub, base);
        break;
    case K_LIST:
    case K_MAP: {
        char *arr = *(char **)f;
        size_t n = *(size_t *)at_off(base, kd->off2);
        for (size_t i = 0; i < n && arr; i++) {
            void *el = arr + i * kd->width;
            free_section(kd->sub, el);
            if (kd->type == K_MAP) free(*(char **)at_off(el, kd->name_off));
        }
        free(arr);
        *(char **)f = NULL;
        *(size_t *)at_off(base, kd->off2) = 0;
        break;
    }
    default: /* K_OPT: freed by the section's fini */
        break;
    }
}

static void free_section(const section_def *sec, void *base)
{
    for (size_t i = 0; i < sec->n; i++)
        free_key(&sec->keys[i], base);
    if (sec->fini) sec->fini(base);
}

static int kv_append(th_kv **kv, size_t *n, const char *key, const char *value, bool is_map)
{
    th_kv *p = realloc(*kv, (*n + 1) * sizeof *p);
    if (p == NULL) return -1;
    *kv = p;
    th_kv *e = &p[*n];
    e->key = strdup(key);
    e->value = strdup(value);
    e->is_map = is_map;
    if (e->key == NULL || e->value == NULL) {
        free(e->key);
        free(e->value);
        return -1;
    }
    (*n)++;
    return 0;
}

/* Defaults: every key's default text parsed through conv(). -1 on ENOMEM (or a bad default). */
static int apply_defaults(const section_def *sec, void *base)
{
    for (size_t i = 0; i < sec->n; i++) {
        const key_def *kd = &sec->keys[i];
        char msg[128];
        val v = {0};
        switch (kd->type) {
        case K_SECTION:
            if (apply_defaults(kd->sub, base) != 0) return -1;
            break;
        case K_STRLIST:
            if (kd->def) {
                char **l = calloc(1, sizeof *l);
                if (l == NULL) return -1;
                l[0] = strdup(kd->def);
                if (l[0] == NULL) {
                    free(l);
                    return -1;
                }
                *(char ***)at_off(base, kd->off) = l;
                *(size_t *)at_off(base, kd->off2) = 1;
            }
            break;
        case K_STR:
        case K_ENUM:
            if (kd->def == NULL || kd->def[0] == 0) { /* "" without running the validator */
                v.s = "";
                if (store(kd, base, &v) != 0) return -1;
                break;
            }
            /* fallthrough */
        case K_BOOL:
        case K_INT:
        case K_DBL:
        case K_DUR:
        case K_SIZE:
        case K_ENUMI:
            if (kd->def == NULL) break;
            if (conv(kd, kd->type, kd->def, false, &v, msg, sizeof msg) != 0) return -1;
            if (store(kd, base, &v) != 0) return -1;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Step 2: walk the tree */

static void walk_section(ctx *c, const section_def *sec, const ynode *n, void *base, const char *path);

/* A voice reference mapping (cloning engines) -> compact JSON. Values: scalars or lists of scalars. */
static json_t *ref_to_json(ctx *c, const ynode *n, const char *path, int depth)
{
    if (n->kind == N_SCALAR) {
        if (n->plain) {
            bool b;
            int64_t i;
            double d;
            if (is_null(n)) return json_null();
            if (parse_bool(n->val, &b)) return json_boolean(b);
            if (th_str_to_i64(n->val, INT64_MIN, INT64_MAX, &i) == 0) return json_integer(i);
            if (th_str_to_double(n->val, -1e300, 1e300, &d) == 0) return json_real(d);
        }
        return json_string(n->val);
    }
    if (n->kind == N_SEQ && depth > 0) {
        json_t *a = json_array();
        for (size_t i = 0; a && i < n->n; i++) {
            char p[256];
            join_index(p, sizeof p, path, i);
            json_t *x = ref_to_json(c, n->kids[i], p, depth - 1);
            if (x == NULL || json_array_append_new(a, x) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    if (n->kind != N_BAD) err(c, n->line, path, "must be a string or a list of strings");
    return json_null();
}

static void set_kvmap(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    th_kv **kv = at_off(base, kd->off);
    size_t *cnt = at_off(base, kd->off2);
    if (is_null(n)) return;
    if (n->kind != N_MAP) {
        err(c, n->line, path, "must be a mapping");
        return;
    }
    for (size_t i = 0; i + 1 < n->n; i += 2) {
        const ynode *k = n->kids[i], *v = n->kids[i + 1];
        if (k->ignore) continue;
        char p[256];
        join(p, sizeof p, path, k->val);
        if (k->val[0] == 0) {
            err(c, k->line, p, "the name must not be empty");
            continue;
        }
        if (v->kind == N_SCALAR) {
            if (is_null(v) || v->val[0] == 0) {
                err(c, v->line, p, "must not be empty");
                continue;
            }
            if (kv_append(kv, cnt, k->val, v->val, false) != 0) oom(c);
        } else if (v->kind == N_MAP && (kd->flags & F_KV_MAPOK) && c->kind >= 0 &&
                   (KB(c->kind) & KB_CLONING)) {
            json_t *o = json_object();
            if (o == NULL) {
                oom(c);
                continue;
            }
            for (size_t j = 0; j + 1 < v->n; j += 2) {
                if (v->kids[j]->ignore) continue;
                char q[256];
                join(q, sizeof q, p, v->kids[j]->val);
                json_t *x = ref_to_json(c, v->kids[j + 1], q, 1);
                if (x == NULL || json_object_set_new(o, v->kids[j]->val, x) != 0) oom(c);
            }
            if (c->kind == KD_GPT_SOVITS && json_object_get(o, "ref_audio_path") == NULL) {
                char q[256];
                join(q, sizeof q, p, "ref_audio_path");
                err(c, v->line, q, "required");
            }
            if (json_object_size(o) == 0) err(c, v->line, p, "must not be empty");
            char *txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
            json_decref(o);
            if (txt == NULL || kv_append(kv, cnt, k->val, txt, true) != 0) oom(c);
            free(txt);
        } else if (v->kind == N_MAP && (kd->flags & F_KV_MAPOK)) {
            err(c, v->line, p, "must be a string (a mapping is only for gpt_sovits, cosyvoice and nodes)");
        } else if (v->kind != N_BAD) {
            err(c, v->line, p, "must be a string");
        }
    }
}

static void set_strlist(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char ***lp = at_off(base, kd->off);
    size_t *cnt = at_off(base, kd->off2);
    free_strlist(*lp, *cnt);
    *lp = NULL;
    *cnt = 0;
    if (is_null(n)) return;
    if (n->kind != N_SEQ) {
        err(c, n->line, path, "must be a list");
        return;
    }
    if (n->n == 0) return;
    char **l = calloc(n->n, sizeof *l);
    if (l == NULL) {
        oom(c);
        return;
    }
    *lp = l;
    for (size_t i = 0; i < n->n; i++) {
        const ynode *it = n->kids[i];
        char p[256];
        join_index(p, sizeof p, path, i);
        if (it->kind != N_SCALAR) {
            if (it->kind != N_BAD) err(c, it->line, p, "must be a string");
            continue;
        }
        const char *m = kd->check ? kd->check(it->val) : check_nonempty(it->val);
        if (m) {
            err(c, it->line, p, "%s", m);
            continue;
        }
        l[*cnt] = strdup(it->val);
        if (l[*cnt] == NULL) {
            oom(c);
            return;
        }
        (*cnt)++;
    }
}

static void set_formats(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    uint32_t mask = 0;
    if (is_null(n)) return;
    if (n->kind != N_SEQ) {
        err(c, n->line, path, "must be a list");
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        const ynode *it = n->kids[i];
        char p[256];
        join_index(p, sizeof p, path, i);
        size_t j = 0;
        for (; it->kind == N_SCALAR && j < sizeof fmt_names / sizeof fmt_names[0]; j++)
            if (strcmp(fmt_names[j].name, it->val) == 0) break;
        if (it->kind != N_SCALAR || j == sizeof fmt_names / sizeof fmt_names[0]) {
            if (it->kind != N_BAD) err(c, it->line, p, "must be one of mp3, opus, aac, flac, wav, pcm");
            continue;
        }
        mask |= 1u << fmt_names[j].fmt;
    }
    *(uint32_t *)at_off(base, kd->off) = mask;
}

static void set_list(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char **arrp = at_off(base, kd->off);
    size_t *cnt = at_off(base, kd->off2);
    free_key(kd, base);
    if (is_null(n)) return;
    bool is_map = kd->type == K_MAP;
    if (n->kind != (is_map ? N_MAP : N_SEQ)) {
        err(c, n->line, path, is_map ? "must be a mapping" : "must be a list");
        return;
    }
    size_t want = is_map ? n->n / 2 : n->n;
    if (want == 0) return;
    char *arr = calloc(want, kd->width);
    if (arr == NULL) {
        oom(c);
        return;
    }
    *arrp = arr;
    for (size_t i = 0; i < want; i++) {
        const ynode *k = is_map ? n->kids[2 * i] : NULL;
        const ynode *v = is_map ? n->kids[2 * i + 1] : n->kids[i];
        if (k && k->ignore) continue;
        void *el = arr + *cnt * kd->width;
        char p[256];
        if (is_map)
            join(p, sizeof p, path, k->val);
        else
            join_index(p, sizeof p, path, i);
        (*cnt)++;
        if (apply_defaults(kd->sub, el) != 0) {
            oom(c);
            return;
        }
        if (is_map) {
            const char *m = kd->check ? kd->check(k->val) : check_nonempty(k->val);
            if (m) err(c, k->line, p, "%s", m);
            char *name = strdup(k->val);
            if (name == NULL) {
                oom(c);
                return;
            }
            *(char **)at_off(el, kd->name_off) = name;
        }
        if (v->kind == N_BAD) continue;
        walk_section(c, kd->sub, v, el, p);
        if (kd->sub->post) kd->sub->post(c, v, el, p, is_map ? *cnt - 1 : i);
        if (c->oom) return;
    }
}

static void set_opt(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char msg[256], txt[32];
    val v = {0};
    if (n->kind != N_SCALAR) {
        type_message(kd, kd->vtype, msg, sizeof msg);
        err(c, n->line, path, "%s", msg);
        return;
    }
    if (conv(kd, kd->vtype, n->val, is_null(n), &v, msg, sizeof msg) != 0) {
        err(c, n->line, path, "%s", msg);
        return;
    }
    const char *s = v.s;
    if (kd->vtype == K_BOOL) s = v.b ? "true" : "false";
    if (kd->vtype == K_INT) {
        snprintf(txt, sizeof txt, "%lld", (long long)v.i);
        s = txt;
    }
    if (kv_append(at_off(base, kd->off), at_off(base, kd->off2), kd->name, s, false) != 0) oom(c);
}

static void set_key(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path)
{
    char msg[256];
    val v = {0};
    if (n->kind == N_BAD) return; /* already reported (alias, NUL) */
    switch (kd->type) {
    case K_SECTION:
        walk_section(c, kd->sub, n, base, path);
        return;
    case K_LIST:
    case K_MAP:
        set_list(c, kd, n, base, path);
        return;
    case K_STRLIST:
        set_strlist(c, kd, n, base, path);
        return;
    case K_FMTS:
        set_formats(c, kd, n, base, path);
        return;
    case K_KVMAP:
        set_kvmap(c, kd, n, base, path);
        return;
    case K_OPT:
        set_opt(c, kd, n, base, path);
        return;
    default:
        break;
    }
    if (n->kind != N_SCALAR) {
        type_message(kd, kd->type, msg, sizeof msg);
        err(c, n->line, path, "%s", msg);
        return;
    }
    if (conv(kd, kd->type, n->val, is_null(n), &v, msg, sizeof msg) != 0) {
        err(c, n->line, path, "%s", msg);
        return;
    }
    if (store(kd, base, &v) != 0) oom(c);
}

static void walk_section(ctx *c, const section_def *sec, const ynode *n, void *base, const char *path)
{
    uint64_t seen = 0;
    int kind = -1;
    char p[256];
    if (n == NULL || n->kind == N_BAD) return;
    if (!is_null(n) && n->kind != N_MAP) {
        err(c, n->line, path, "must be a mapping");
        return;
    }
    if (sec->by_kind) {
        const ynode *t = get(n, "type");
        if (t && t->kind == N_SCALAR) kind = enum_index(kinds, t->val);
        c->kind = kind;
        if (t == NULL) {
            join(p, sizeof p, path, "type");
            err(c, n->line, p, "required");
        }
    }
    for (size_t i = 0; n->kind == N_MAP && i + 1 < n->n && !c->oom; i += 2) {
        const ynode *k = n->kids[i], *v = n->kids[i + 1];
        if (k->ignore) continue;
        join(p, sizeof p, path, k->val);
        size_t j = 0;
        while (j < sec->n && strcmp(sec->keys[j].name, k->val) != 0)
            j++;
        const key_def *kd = j < sec->n ? &sec->keys[j] : NULL;
        if (kd == NULL || (sec->by_kind && kind >= 0 && kd->kinds && !(kd->kinds & KB(kind)))) {
            if (sec->by_kind && kind >= 0)
                err(c, k->line, p, "unknown key for type %s", kinds[kind]);
            else
                err(c, k->line, p, "unknown key");
            continue;
        }
        seen |= 1ull << j;
        set_key(c, kd, v, base, p);
    }
    for (size_t j = 0; j < sec->n; j++) {
        if ((sec->keys[j].flags & F_REQ) && !(seen & (1ull << j))) {
            join(p, sizeof p, path, sec->keys[j].name);
            err(c, n->line, p, "required");
        }
    }
    if (sec->by_kind) c->kind = -1;
}

/* ---------------------------------------------------------------------------------------------- */
/* Hooks and cross-field checks */

static void provider_fini(void *base)
{
    th_provider_conf *pc = base;
    free_kv(pc->opts, pc->n_opts);
    pc->opts = NULL;
    pc->n_opts = 0;
}

static void provider_post(ctx *c, const ynode *n, void *base, const char *path, size_t index)
{
    th_provider_conf *pc = base;
    char p[256];
    int kind = pc->type ? enum_index(kinds, pc->type) : -1;
    if (pc->name && pc->name[0]) {
        for (size_t i = 0; i < index; i++) {
            if (c->cfg->providers[i].name && strcmp(c->cfg->providers[i].name, pc->name) == 0) {
                join(p, sizeof p, path, "name");
                err(c, line_of(get(n, "name"), n->line), p,
                    "duplicate provider name \"%s\" (also providers[%zu])", pc->name, i);
                break;
            }
        }
    }
    if (kind < 0) return;
    if (KB(kind) & KB_UPSTREAM) {
        /* present but invalid was reported already */
        bool has_url = (pc->base_url && pc->base_url[0]) || get(n, "base_url") != NULL;
        if (kind == KD_AZURE) {
            if (!has_url && get(n, "region") == NULL) {
                join(p, sizeof p, path, "region");
                err(c, n->line, p, "required for type azure (or base_url)");
            }
        } else if (!has_url) {
            join(p, sizeof p, path, "base_url");
            err(c, n->line, p, "required for type %s", kinds[kind]);
        }
    }
    /* the kind's documented defaults for its own keys (providers/conf.c) */
    for (size_t i = 0; i < s_provider.n; i++) {
        const key_def *kd = &s_provider.keys[i];
        if (kd->type != K_OPT || th_kv_get(pc->opts, pc->n_opts, kd->name)) continue;
        const char *dv = th_provider_opt_default(kinds[kind], kd->name);
        if (dv == NULL) continue;
        if (kv_append(&pc->opts, &pc->n_opts, kd->name, dv, false) != 0) oom(c);
    }
}

static void key_post(ctx *c, const ynode *n, void *base, const char *path, size_t index)
{
    th_key_conf *k = base;
    (void)c, (void)n, (void)path, (void)index;
    for (char *p = k->sha256; p && *p; p++)
        if (*p >= 'A' && *p <= 'F') *p = (char)(*p + 32);
}

static void cross_check(ctx *c, const ynode *root, th_config *cfg)
{
    char p[256];
    const ynode *pn = get(root, "providers");
    if (pn && (is_null(pn) || (pn->kind == N_SEQ && pn->n == 0)))
        err(c, pn->line, "providers", "at least one provider is required");

    /* router.routes[i].providers[j] name providers */
    const ynode *routes = get(get(root, "router"), "routes");
    for (size_t i = 0; routes && routes->kind == N_SEQ && i < routes->n; i++) {
        const ynode *rp = get(item(routes, i), "providers");
        char rpath[256];
        snprintf(rpath, sizeof rpath, "router.routes[%zu].providers", i);
        if (rp && (is_null(rp) || (rp->kind == N_SEQ && rp->n == 0)))
            err(c, rp->line, rpath, "must not be empty");
        for (size_t j = 0; rp && rp->kind == N_SEQ && j < rp->n; j++) {
            const ynode *it = rp->kids[j];
            if (it->kind != N_SCALAR || it->val[0] == 0) continue;
            join_index(p, sizeof p, rpath, j);
            if (th_config_provider(cfg, it->val) == NULL)
                err(c, it->line, p, "unknown provider \"%s\"", it->val);
        }
    }

    /* voices.X.providers keys name providers */
    const ynode *voices = get(root, "voices");
    for (size_t i = 0; i < map_len(voices); i++) {
        const ynode *k = voices->kids[2 * i];
        const ynode *vp = get(voices->kids[2 * i + 1], "providers");
        if (k->ignore) continue;
        for (size_t j = 0; j < map_len(vp); j++) {
            const ynode *pk = vp->kids[2 * j];
            if (pk->ignore || pk->val[0] == 0) continue;
            char vpath[256];
            snprintf(vpath, sizeof vpath, "voices.%s.providers", k->val);
            join(p, sizeof p, vpath, pk->val);
            if (th_config_provider(cfg, pk->val) == NULL) err(c, pk->line, p, "unknown provider");
        }
    }

    /* auth */
    const ynode *auth = get(root, "auth");
    const ynode *keys = get(auth, "keys");
    int auth_line = line_of(get(auth, "mode"), line_of(auth, 0));
    const char *mode = cfg->auth.mode ? cfg->auth.mode : "none";
    bool jwt_given = get(auth, "jwt") != NULL;
    bool hs = cfg->auth.jwt.alg && cfg->auth.jwt.alg[0] == 'H';
    if (strcmp(mode, "api_key") == 0 && cfg->auth.n_keys == 0)
        err(c, auth_line, "auth.keys", "required when auth.mode is api_key");
    if (strcmp(mode, "any") == 0 && cfg->auth.n_keys == 0 && !jwt_given)
        err(c, auth_line, "auth.mode", "any needs auth.keys or auth.jwt");
    if (strcmp(mode, "jwt") == 0 || (strcmp(mode, "any") == 0 && jwt_given)) {
        int jl = line_of(get(auth, "jwt"), auth_line);
        if (hs && (cfg->auth.jwt.secret_env == NULL || cfg->auth.jwt.secret_env[0] == 0))
            err(c, jl, "auth.jwt.secret_env", "required for alg %s", cfg->auth.jwt.alg);
        if (!hs && (cfg->auth.jwt.public_key_file == NULL || cfg->auth.jwt.public_key_file[0] == 0))
            err(c, jl, "auth.jwt.public_key_file", "required for alg %s", cfg->auth.jwt.alg);
    }
    for (size_t i = 0; keys && keys->kind == N_SEQ && i < keys->n && i < cfg->auth.n_keys; i++) {
        const th_key_conf *k = &cfg->auth.keys[i];
        const ynode *kn = item(keys, i);
        for (size_t j = 0; j < i && k->id && k->id[0]; j++) {
            if (cfg->auth.keys[j].id && strcmp(cfg->auth.keys[j].id, k->id) == 0) {
                snprintf(p, sizeof p, "auth.keys[%zu].id", i);
                err(c, line_of(get(kn, "id"), kn->line), p, "duplicate key id \"%s\"", k->id);
                break;
            }
        }
        /* A key's tenant must be declared when there are tenants; with no tenants section every tenant is
         * unlimited, so any name is fine. */
        if (cfg->n_tenants > 0 && k->tenant && k->tenant[0] && th_config_tenant(cfg, k->tenant) == NULL) {
            snprintf(p, sizeof p, "auth.keys[%zu].tenant", i);
            err(c, line_of(get(kn, "tenant"), kn->line), p, "unknown tenant \"%s\"", k->tenant);
        }
    }

    /* voice library durations */
    if (cfg->voice_library.min_seconds >= cfg->voice_library.max_seconds) {
        const ynode *vl = get(root, "voice_library");
        err(c, line_of(get(vl, "min_seconds"), line_of(vl, 0)), "voice_library.min_seconds",
            "must be shorter than voice_library.max_seconds");
    }
    /* registry timings */
    const ynode *reg = get(root, "registry");
    if (cfg->registry.dead_threshold_ms <= cfg->registry.heartbeat_interval_ms)
        err(c, line_of(get(reg, "dead_threshold"), line_of(reg, 0)), "registry.dead_threshold",
            "must be longer than registry.heartbeat_interval");
    if (cfg->registry.remove_after_ms < cfg->registry.dead_threshold_ms)
        err(c, line_of(get(reg, "remove_after"), line_of(reg, 0)), "registry.remove_after",
            "must not be shorter than registry.dead_threshold");
}

/* ---------------------------------------------------------------------------------------------- */
/* Public API */

static void config_free(th_config *c)
{
    if (c == NULL) return;
    free_section(&s_top, c);
    free(c->path);
    free(c);
}

static th_config *parse(const char *yaml, size_t len, th_config_errors *errs, const char *path)
{
    ctx c = {.errs = errs, .kind = -1};
    ynode *root = NULL, *defprov = NULL;
    th_config *cfg = NULL;
    if (len > MAX_FILE_BYTES) {
        err(&c, 0, "", "the file is larger than 4 MiB");
        goto out;
    }
    if (build(&c, yaml ? yaml : "", yaml ? len : 0, &root) != 0) goto out;
    cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL) {
        oom(&c);
        goto out;
    }
    cfg->refs = 1;
    c.cfg = cfg;
    if (path && (cfg->path = strdup(path)) == NULL) {
        oom(&c);
        goto out;
    }
    if (apply_defaults(&s_top, cfg) != 0) {
        oom(&c);
        goto out;
    }
    if (root && root->kind != N_MAP && !is_null(root)) {
        err(&c, root->line, "", "the file must be a mapping of keys");
        goto out;
    }
    if (get(root, "providers") == NULL) {
        ctx dc = {.kind = -1, .cfg = cfg};
        if (build(&dc, default_providers_yaml, sizeof default_providers_yaml - 1, &defprov) != 0 || dc.nerr) {
            oom(&c);
            goto out;
        }
        for (size_t i = 0; i < s_top.n; i++)
            if (strcmp(s_top.keys[i].name, "providers") == 0)
                set_key(&dc, &s_top.keys[i], defprov, cfg, "providers");
        if (dc.nerr) {
            oom(&c);
            goto out;
        }
    }
    if (root && root->kind == N_MAP) walk_section(&c, &s_top, root, cfg, "");
    if (!c.oom) cross_check(&c, root, cfg);
out:
    node_free(root);
    node_free(defprov);
    if (c.nerr || c.oom) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

th_config *th_config_default(void)
{
    return parse("", 0, NULL, NULL);
}

th_config *th_config_parse(const char *yaml, size_t len, th_config_errors *errs)
{
    return parse(yaml, len, errs, NULL);
}

th_config *th_config_parse_file(const char *yaml, size_t len, const char *path, th_config_errors *errs)
{
    return parse(yaml, len, errs, path);
}

th_config *th_config_load(const char *path, th_config_errors *errs)
{
    ctx c = {.errs = errs, .kind = -1};
    th_config *cfg = NULL;
    char *buf = NULL;
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (f == NULL) {
        err(&c, 0, "", "cannot open: %s", strerror(errno));
        goto out;
    }
    if (fstat(fileno(f), &st) != 0) {
        err(&c, 0, "", "cannot stat: %s", strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        err(&c, 0, "", "is a directory");
        goto out;
    }
    if (S_ISREG(st.st_mode) && st.st_size > (off_t)MAX_FILE_BYTES) {
        err(&c, 0, "", "the file is larger than 4 MiB");
        goto out;
    }
    buf = malloc(MAX_FILE_BYTES + 1);
    if (buf == NULL) {
        oom(&c);
        goto out;
    }
    n = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    if (ferror(f)) {
        err(&c, 0, "", "cannot read: %s", strerror(errno));
        goto out;
    }
    if (n > MAX_FILE_BYTES) {
        err(&c, 0, "", "the file is larger than 4 MiB");
        goto out;
    }
    cfg = parse(buf, n, errs, path);
out:
    if (f) fclose(f);
    free(buf);
    return cfg;
}

void th_config_errors_free(th_config_errors *errs)
{
    if (errs == NULL) return;
    free(errs->items);
    errs->items = NULL;
    errs->n = errs->cap = 0;
}

th_config *th_config_ref(th_config *c)
{
    if (c) __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void th_config_unref(th_config *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0) config_free(c);
}

const th_provider_conf *th_config_provider(const th_config *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_providers; i++)
        if (c->providers[i].name && strcmp(c->providers[i].name, name) == 0) return &c->providers[i];
    return NULL;
}

const th_tenant_conf *th_config_tenant(const th_config *c, const char *name)
{
    for (size_t i = 0; c && name && i < c->n_tenants; i++)
        if (c->tenants[i].name && strcmp(c->tenants[i].name, name) == 0) return &c->tenants[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* JSON dump, from the same table */

/* "scheme://user:pass@host/..." -> "scheme://<redacted>@host/..." */
static json_t *url_json(const char *s)
{
    const char *sep = strstr(s, "://");
    if (sep == NULL) return json_string(s);
    const char *auth = sep + 3;
    size_t an = strcspn(auth, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < an; i++)
        if (auth[i] == '@') at = auth + i;
    const char *q = strpbrk(auth, "?#"); /* a query or fragment may carry a key (?api_key=...) */
    if (at == NULL && q == NULL) return json_string(s);
    size_t pre = (size_t)(auth - s);
    const char *rest = at ? at : auth;
    size_t restn = q ? (size_t)(q - rest) : strlen(rest);
    size_t len = pre + 2 * strlen("<redacted>") + restn + 3;
    char *b = malloc(len);
    if (b == NULL) return NULL;
    snprintf(b, len, "%.*s%s%.*s%s", (int)pre, s, at ? "<redacted>" : "", (int)restn, rest,
             q ? "?<redacted>" : "");
    json_t *j = json_string(b);
    free(b);
    return j;
}

static json_t *dump_section(const section_def *sec, const void *base);

static json_t *opt_json(const key_def *kd, const char *s)
{
    bool b;
    int64_t i;
    if (kd->vtype == K_BOOL && parse_bool(s, &b)) return json_boolean(b);
    if (kd->vtype == K_INT && th_str_to_i64(s, INT64_MIN, INT64_MAX, &i) == 0) return json_integer(i);
    return json_string(s);
}

static json_t *dump_key(const key_def *kd, const void *base)
{
    const void *f = (const char *)base + kd->off;
    char buf[64];
    switch (kd->type) {
    case K_STR:
    case K_ENUM: {
        const char *s = *(char *const *)f;
        if (s == NULL) s = "";
        if (kd->flags & F_SECRET) return json_string("<redacted>");
        if (kd->flags & F_URL) return url_json(s);
        return json_string(s);
    }
    case K_BOOL:
        return json_boolean(*(const bool *)f);
    case K_INT:
        if (kd->width == 4) {
            int32_t x;
            memcpy(&x, f, 4);
            return json_integer(x);
        } else {
            int64_t x;
            memcpy(&x, f, 8);
            return json_integer(x);
        }
    case K_DBL:
        return json_real(*(const double *)f);
    case K_DUR:
        fmt_dur(*(const uint64_t *)f, buf, sizeof buf);
        return json_string(buf);
    case K_SIZE:
        fmt_size(*(const uint64_t *)f, buf, sizeof buf);
        return json_string(buf);
    case K_ENUMI: {
        int x;
        memcpy(&x, f, sizeof x);
        int ne = 0;
        while (kd->enums[ne])
            ne++;
        return json_string(x >= 0 && x < ne ? kd->enums[x] : "");
    }
    case K_STRLIST: {
        char *const *l = *(char **const *)f;
        size_t n = *(const size_t *)((const char *)base + kd->off2);
        json_t *a = json_array();
        for (size_t i = 0; a && i < n; i++)
            if (json_array_append_new(a, json_string(l[i])) != 0) goto fail_a;
        return a;
    fail_a:
        json_decref(a);
        return NULL;
    }
    case K_FMTS: {
        uint32_t m = *(const uint32_t *)f;
        json_t *a = json_array();
        for (size_t i = 0; a && i < sizeof fmt_names / sizeof fmt_names[0]; i++) {
            if (!(m & (1u << fmt_names[i].fmt))) continue;
            if (json_array_append_new(a, json_string(fmt_names[i].name)) != 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    case K_KVMAP: {
        const th_kv *kv = *(th_kv *const *)f;
        size_t n = *(const size_t *)((const char *)base + kd->off2);
        json_t *o = json_object();
        for (size_t i = 0; o && i < n; i++) {
            json_t *v = kv[i].is_map ? json_loads(kv[i].value, 0, NULL) : json_string(kv[i].value);
            if (v == NULL || json_object_set_new(o, kv[i].key, v) != 0) {
                json_decref(o);
                return NULL;
            }
        }
        return o;
    }
    case K_SECTION:
        return dump_section(kd->sub, base);
    case K_LIST:
    case K_MAP: {
        const char *arr = *(char *const *)f;
        size_t n = *(const size_t *)((const char *)base + kd->off2);
        json_t *out = kd->type == K_MAP ? json_object() : json_array();
        for (size_t i = 0; out && i < n; i++) {
            const void *el = arr + i * kd->width;
            json_t *o = dump_section(kd->sub, el);
            int rc = -1;
            if (o && kd->type == K_MAP)
                rc = json_object_set_new(out, *(char *const *)((const char *)el + kd->name_off), o);
            else if (o)
                rc = json_array_append_new(out, o);
            if (rc != 0) {
                json_decref(out);
                return NULL;
            }
        }
        return out;
    }
    default:
        return NULL;
    }
}

static json_t *dump_section(const section_def *sec, const void *base)
{
    json_t *o = json_object();
    int kind = -1;
    if (o == NULL) return NULL;
    if (sec->by_kind) {
        const th_provider_conf *pc = base;
        kind = pc->type ? enum_index(kinds, pc->type) : -1;
    }
    for (size_t i = 0; i < sec->n; i++) {
        const key_def *kd = &sec->keys[i];
        json_t *v;
        if (kd->kinds && kind >= 0 && !(kd->kinds & KB(kind))) continue;
        if (kd->type == K_OPT) {
            const th_provider_conf *pc = base;
            const char *s = th_kv_get(pc->opts, pc->n_opts, kd->name);
            if (s == NULL) continue;
            v = opt_json(kd, s);
        } else {
            v = dump_key(kd, base);
        }
        if (v == NULL || json_object_set_new(o, kd->name, v) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

char *th_config_to_json(const th_config *c)
{
    if (c == NULL) return NULL;
    json_t *o = dump_section(&s_top, c);
    if (o == NULL) return NULL;
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}
