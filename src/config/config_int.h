/* config_int: the config module's internals, shared by its files. Not for other modules.
 *
 *   config.c            the pipeline (parse, load), the top-level table, the cross-section checks in
 *                       order, reference counting and lookups
 *   config_yaml.c       step 1: libyaml events -> a bounded tree of ynode; errors with their YAML paths
 *   config_schema.c     step 2: the walk of a tree through the tables (types, bounds, defaults, free)
 *   config_validate.c   the validators of strings (addresses, URLs, names, env names...)
 *   config_json.c       the JSON dump, from the same tables, with secrets redacted
 *   one file a group of sections, each with its tables and its checks:
 *   config_server.c (limits, redis, reload), config_observability.c (log, tracing),
 *   config_governance.c (auth, tenants, rate_limit, cache), config_providers.c (providers),
 *   config_routing.c (router, voices), config_cluster.c (registry), config_voice_library.c */
#ifndef TH_CONFIG_INT_H
#define TH_CONFIG_INT_H

#include "config/config.h"

#include "audio/format.h"

#include <jansson.h>

#define MAX_FILE_BYTES (4u << 20)
#define MAX_DEPTH 32
#define MAX_NODES 10000
#define MAX_ERRORS 1000

/* ---------------------------------------------------------------------------------------------- */
/* The node tree (config_yaml.c) */

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

void cf_node_free(ynode *n);
bool cf_is_null(const ynode *n);
size_t cf_map_len(const ynode *m);
/* The value of key in mapping m (NULL when m is not a mapping or the key is absent). */
const ynode *cf_get(const ynode *m, const char *key);
const ynode *cf_item(const ynode *s, size_t i);
int cf_line_of(const ynode *n, int fallback);

/* ---------------------------------------------------------------------------------------------- */
/* Errors (config_yaml.c) */

typedef struct ctx {
    th_config_errors *errs;
    size_t nerr;
    bool oom;
    int kind; /* the provider kind being walked, -1 outside providers */
    th_config *cfg;
} ctx;

__attribute__((format(printf, 4, 5))) void cf_err(ctx *c, int line, const char *path, const char *fmt, ...);
void cf_oom(ctx *c);
/* Bounded joins: paths longer than the buffer are cut short (th_config_error.path is 256 bytes). */
void cf_join(char *out, size_t cap, const char *path, const char *key);
void cf_join_index(char *out, size_t cap, const char *path, size_t i);

/* Step 1. Returns 0 when the tree was built (maybe with non-fatal errors), -1 on a fatal error. */
int cf_build(ctx *c, const char *yaml, size_t len, ynode **out);

/* ---------------------------------------------------------------------------------------------- */
/* Validators (config_validate.c): NULL when s is fine, else the message. */

const char *cf_check_listen(const char *s);
const char *cf_check_listen_opt(const char *s);
const char *cf_check_http_url_opt(const char *s);
const char *cf_check_redis_url(const char *s);
const char *cf_check_env(const char *s);
const char *cf_check_network(const char *s);
const char *cf_check_name(const char *s);
const char *cf_check_nonempty(const char *s);
const char *cf_check_hex64(const char *s);
const char *cf_check_region(const char *s);

/* ---------------------------------------------------------------------------------------------- */
/* The schema (config_schema.c) */

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

/* The provider kinds, in the order of cf_kinds (config_providers.c). */
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

extern const char *const cf_kinds[];

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

/* Client-facing format names (API.md); bit = 1u << th_fmt. */
typedef struct fmt_name {
    const char *name;
    th_fmt fmt;
} fmt_name;
extern const fmt_name cf_fmt_names[];
extern const size_t cf_n_fmt_names;

int cf_enum_index(const char *const *list, const char *s);
bool cf_parse_bool(const char *s, bool *out);
void cf_fmt_dur(uint64_t ms, char *out, size_t cap);
void cf_fmt_size(uint64_t b, char *out, size_t cap);
void cf_free_kv(th_kv *kv, size_t n);
int cf_kv_append(th_kv **kv, size_t *n, const char *key, const char *value, bool is_map);
void cf_free_section(const section_def *sec, void *base);
/* Defaults: every key's default text parsed as if it were in the file. -1 on ENOMEM (or a bad default). */
int cf_apply_defaults(const section_def *sec, void *base);
/* Step 2: the mapping n (at path) into base through sec; errors go to c. */
void cf_walk_section(ctx *c, const section_def *sec, const ynode *n, void *base, const char *path);
void cf_set_key(ctx *c, const key_def *kd, const ynode *n, void *base, const char *path);

/* The JSON dump (config_json.c) */
json_t *cf_dump_section(const section_def *sec, const void *base);

/* ---------------------------------------------------------------------------------------------- */
/* The sections, one file a group; s_top (config.c) holds them in the file's order. */

extern const char *const cf_e_local_redis[];

extern const section_def cf_s_log, cf_s_tracing;                        /* config_observability.c */
extern const section_def cf_s_limits, cf_s_redis, cf_s_reload;          /* config_server.c */
extern const section_def cf_s_auth, cf_s_tenant, cf_s_rate, cf_s_cache; /* config_governance.c */
extern const section_def cf_s_provider;                                 /* config_providers.c */
extern const section_def cf_s_router, cf_s_voice;                       /* config_routing.c */
extern const section_def cf_s_registry;                                 /* config_cluster.c */
extern const section_def cf_s_voice_library;                            /* config_voice_library.c */

/* Checks between keys, after the walk (root: the file's tree, maybe NULL). config.c runs them in this
 * order. */
void cf_check_providers(ctx *c, const ynode *root, th_config *cfg);
void cf_check_routing(ctx *c, const ynode *root, th_config *cfg);
void cf_check_auth(ctx *c, const ynode *root, th_config *cfg);
void cf_check_voice_library(ctx *c, const ynode *root, th_config *cfg);
void cf_check_registry(ctx *c, const ynode *root, th_config *cfg);

#endif
