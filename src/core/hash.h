/* hash: FNV-1a, and an intrusive chained hash table keyed by strings (in the way of redis's dict).
 *
 * A th_hnode is embedded in the element, and points at the element's own key (which must not change
 * while it is in a table). The table doubles its buckets when it holds as many nodes as buckets; if
 * that allocation fails the chains just get longer. Nothing else is allocated: the caller owns the
 * elements. Iterate with TH_HTAB_EACH (removing the node at hand is not allowed inside it; collect
 * first, or walk the buckets by hand keeping the next node). */
#ifndef TH_CORE_HASH_H
#define TH_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct th_hnode {
    struct th_hnode *next;
    const char *key;
} th_hnode;

typedef struct th_htab {
    th_hnode **b;
    size_t nb; /* buckets */
    size_t n;  /* nodes */
} th_htab;

/** The element of type that holds node ptr in its member (ptr must not be NULL). */
#define TH_HT_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
/** Every node of t, as th_hnode *var. */
#define TH_HTAB_EACH(t, var)                                                                                 \
    for (size_t th_i_ = 0; (t)->b && th_i_ < (t)->nb; th_i_++)                                               \
        for (th_hnode *var = (t)->b[th_i_]; var; var = var->next)

/** FNV-1a of a NUL-terminated string: the 64-bit prime, from the offset basis 1469598103934665603 that
 * the tables of this code always used (the standard basis without its last digit; just as good for
 * buckets, and keeping it keeps every table's order as it was). */
uint64_t th_hash_str(const char *s);

/** An empty table of nb buckets (at least 1). 0, or -1 on ENOMEM. */
int th_htab_init(th_htab *t, size_t nb);
/** Frees the buckets (not the elements). */
void th_htab_free(th_htab *t);
/** The node whose key equals key, or NULL. */
th_hnode *th_htab_find(const th_htab *t, const char *key);
/** Adds n under key (the caller checks that it is not there yet). */
void th_htab_add(th_htab *t, th_hnode *n, const char *key);
/** Removes n, which is in t. */
void th_htab_del(th_htab *t, th_hnode *n);

#endif
