/* hash: FNV-1a (see hash.h for its basis) and the chained string-keyed table of hash.h. */
#include "core/hash.h"

#include <stdlib.h>
#include <string.h>

uint64_t th_hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

int th_htab_init(th_htab *t, size_t nb)
{
    t->nb = nb ? nb : 1;
    t->n = 0;
    t->b = calloc(t->nb, sizeof *t->b);
    return t->b ? 0 : -1;
}

void th_htab_free(th_htab *t)
{
    free(t->b);
    t->b = NULL;
    t->nb = t->n = 0;
}

th_hnode *th_htab_find(const th_htab *t, const char *key)
{
    for (th_hnode *n = t->b[th_hash_str(key) % t->nb]; n; n = n->next)
        if (strcmp(n->key, key) == 0) return n;
    return NULL;
}

static void grow(th_htab *t)
{
    size_t nb = t->nb * 2;
    th_hnode **b = calloc(nb, sizeof *b);
    if (b == NULL) return; /* longer chains, still correct */
    for (size_t i = 0; i < t->nb; i++) {
        th_hnode *n = t->b[i];
        while (n) {
            th_hnode *next = n->next;
            size_t k = th_hash_str(n->key) % nb;
            n->next = b[k];
            b[k] = n;
            n = next;
        }
    }
    free(t->b);
    t->b = b;
    t->nb = nb;
}

void th_htab_add(th_htab *t, th_hnode *n, const char *key)
{
    if (t->n >= t->nb) grow(t);
    n->key = key;
    size_t k = th_hash_str(key) % t->nb;
    n->next = t->b[k];
    t->b[k] = n;
    t->n++;
}

void th_htab_del(th_htab *t, th_hnode *n)
{
    th_hnode **pp = &t->b[th_hash_str(n->key) % t->nb];
    while (*pp != n)
        pp = &(*pp)->next;
    *pp = n->next;
    n->next = NULL;
    t->n--;
}
