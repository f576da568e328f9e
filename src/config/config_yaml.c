/* config_yaml: step 1 of the config (config.c): libyaml events into a small bounded tree of ynode, and
 * the errors with their YAML paths.
 *
 * Bounded: 4 MiB of text, 32 levels of nesting, 10,000 nodes, one document. Anchors and aliases are
 * rejected (no billion laughs). Duplicate keys and non-string keys are reported here, and the pair is
 * then ignored. */
#include "config/config_int.h"

#include "core/str.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

void cf_node_free(ynode *n)
{
    if (n == NULL) return;
    for (size_t i = 0; i < n->n; i++)
        cf_node_free(n->kids[i]);
    free(n->kids);
    free(n->val);
    free(n);
}

bool cf_is_null(const ynode *n)
{
    if (n == NULL) return true;
    if (n->kind != N_SCALAR || !n->plain) return false;
    const char *s = n->val;
    return s[0] == 0 || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
           strcmp(s, "NULL") == 0;
}

size_t cf_map_len(const ynode *m)
{
    return m && m->kind == N_MAP ? m->n / 2 : 0;
}

/* The value of key in mapping m (NULL when m is not a mapping or the key is absent). */
const ynode *cf_get(const ynode *m, const char *key)
{
    if (m == NULL || m->kind != N_MAP) return NULL;
    for (size_t i = 0; i + 1 < m->n; i += 2)
        if (!m->kids[i]->ignore && strcmp(m->kids[i]->val, key) == 0) return m->kids[i + 1];
    return NULL;
}

const ynode *cf_item(const ynode *s, size_t i)
{
    return s && s->kind == N_SEQ && i < s->n ? s->kids[i] : NULL;
}

int cf_line_of(const ynode *n, int fallback)
{
    return n ? n->line : fallback;
}

void cf_err(ctx *c, int line, const char *path, const char *fmt, ...)
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

void cf_oom(ctx *c)
{
    if (!c->oom) cf_err(c, 0, "", "out of memory");
    c->oom = true;
}

/* Bounded appends: paths longer than the buffer are cut short (th_config_error.path is 256 bytes). */
static void append(char *out, size_t cap, const char *s)
{
    size_t o = strnlen(out, cap);
    if (o + 1 < cap) th_strlcpy(out + o, s, cap - o);
}

void cf_join(char *out, size_t cap, const char *path, const char *key)
{
    out[0] = 0;
    append(out, cap, path);
    if (path[0]) append(out, cap, ".");
    append(out, cap, key);
}

void cf_join_index(char *out, size_t cap, const char *path, size_t i)
{
    char num[32];
    snprintf(num, sizeof num, "[%zu]", i);
    out[0] = 0;
    append(out, cap, path);
    append(out, cap, num);
}

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
            cf_join_index(out, cap, tmp, top ? n->n : n->n - 1);
        } else {
            const char *k;
            if (top)
                k = n->n % 2 ? n->kids[n->n - 1]->val : key;
            else
                k = n->n >= 2 ? n->kids[n->n - 2]->val : "";
            if (k == NULL) k = "?";
            cf_join(out, cap, tmp, k);
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
        cf_node_free(n); /* cannot happen: one document */
        return 0;
    }
    ynode *p = b->stack[b->depth - 1];
    if (p->kind == N_MAP && p->n % 2 == 0) { /* n is a key */
        char path[256];
        if (n->kind != N_SCALAR) {
            stack_path(b, "?", path, sizeof path);
            cf_err(b->c, n->line, path, "keys must be strings");
            n->ignore = true;
        } else {
            for (size_t i = 0; i < p->n; i += 2) {
                if (!p->kids[i]->ignore && strcmp(p->kids[i]->val, n->val) == 0) {
                    stack_path(b, n->val, path, sizeof path);
                    cf_err(b->c, n->line, path, "duplicate key (first on line %d)", p->kids[i]->line);
                    n->ignore = true;
                    break;
                }
            }
        }
    }
    if (add_kid(p, n) != 0) {
        cf_node_free(n);
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

/* The parser's error, with the line and column where it has them. */
static void parse_error(ctx *c, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR) {
        cf_oom(c);
        return;
    }
    const yaml_mark_t *m = &p->problem_mark;
    if (p->error == YAML_READER_ERROR)
        cf_err(c, 0, "", "YAML error: %s (at byte %zu)", p->problem ? p->problem : "unreadable input",
               p->problem_offset);
    else if (p->context)
        cf_err(c, (int)m->line + 1, "", "YAML syntax error: %s (column %zu; %s that starts on line %zu)",
               p->problem ? p->problem : "error", m->column + 1, p->context, p->context_mark.line + 1);
    else
        cf_err(c, (int)m->line + 1, "", "YAML syntax error: %s (column %zu)",
               p->problem ? p->problem : "error", m->column + 1);
}

/* A scalar's node (NULL on ENOMEM); NUL characters and anchors are reported. */
static ynode *scalar_node(builder *b, const yaml_event_t *ev)
{
    char path[256];
    ynode *n = new_node(N_SCALAR, &ev->start_mark);
    if (n == NULL) return NULL;
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    n->val = th_strndup((const char *)ev->data.scalar.value, ev->data.scalar.length);
    if (n->val == NULL) {
        free(n);
        return NULL;
    }
    if (strlen(n->val) != ev->data.scalar.length) {
        stack_path(b, n->val, path, sizeof path);
        cf_err(b->c, n->line, path, "NUL characters are not allowed");
        n->kind = N_BAD;
    }
    if (ev->data.scalar.anchor) {
        stack_path(b, n->val, path, sizeof path);
        cf_err(b->c, n->line, path, "YAML anchors are not supported");
    }
    return n;
}

/* What one event does: nothing to add, a node to add (*out; NULL on ENOMEM), the end, or a fatal error. */
typedef enum { EV_NEXT, EV_NODE, EV_DONE, EV_FAIL } ev_rc;

static ev_rc on_event(builder *b, const yaml_event_t *ev, int *docs, ynode **out, bool *push)
{
    ctx *c = b->c;
    char path[256];
    const yaml_mark_t *mark = &ev->start_mark;
    switch (ev->type) {
    case YAML_STREAM_END_EVENT:
        return EV_DONE;
    case YAML_DOCUMENT_START_EVENT:
        if (++*docs > 1) {
            cf_err(c, (int)mark->line + 1, "", "only one YAML document is allowed");
            return EV_FAIL;
        }
        return EV_NEXT;
    case YAML_ALIAS_EVENT:
        stack_path(b, "?", path, sizeof path);
        cf_err(c, (int)mark->line + 1, path, "YAML aliases are not supported");
        *out = new_node(N_BAD, mark);
        return EV_NODE;
    case YAML_SCALAR_EVENT:
        *out = scalar_node(b, ev);
        return EV_NODE;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        if (b->depth >= MAX_DEPTH) {
            cf_err(c, (int)mark->line + 1, "", "nesting deeper than %d levels", MAX_DEPTH);
            return EV_FAIL;
        }
        bool seq = ev->type == YAML_SEQUENCE_START_EVENT;
        *out = new_node(seq ? N_SEQ : N_MAP, mark);
        if (*out == NULL) return EV_NODE;
        *push = true;
        if (seq ? ev->data.sequence_start.anchor : ev->data.mapping_start.anchor) {
            stack_path(b, "?", path, sizeof path);
            cf_err(c, (*out)->line, path, "YAML anchors are not supported");
        }
        return EV_NODE;
    }
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (b->depth > 0) b->depth--;
        return EV_NEXT;
    default:
        return EV_NEXT;
    }
}

/* Adds an event's node to the tree (and to the stack when it opens a collection). -1 on a fatal error. */
static int add_node(builder *b, ynode *n, bool push)
{
    if (n == NULL) {
        cf_oom(b->c);
        return -1;
    }
    if (++b->nodes > MAX_NODES) {
        cf_err(b->c, n->line, "", "more than %d YAML nodes", MAX_NODES);
        cf_node_free(n);
        return -1;
    }
    if (attach(b, n) != 0) {
        cf_oom(b->c);
        return -1;
    }
    if (push) b->stack[b->depth++] = n;
    return 0;
}

/* Returns 0 when the tree was built (maybe with non-fatal errors), -1 on a fatal error. */
int cf_build(ctx *c, const char *yaml, size_t len, ynode **out)
{
    builder b = {.c = c};
    yaml_parser_t p;
    int rc = -1, docs = 0;
    *out = NULL;
    if (!yaml_parser_initialize(&p)) {
        cf_oom(c);
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            parse_error(c, &p);
            break;
        }
        ynode *n = NULL;
        bool push = false;
        ev_rc r = on_event(&b, &ev, &docs, &n, &push);
        yaml_event_delete(&ev);
        if (r == EV_DONE) {
            rc = 0;
            break;
        }
        if (r == EV_FAIL || (r == EV_NODE && add_node(&b, n, push) != 0)) break;
    }
    yaml_parser_delete(&p);
    if (rc == 0)
        *out = b.root;
    else
        cf_node_free(b.root);
    return rc;
}
