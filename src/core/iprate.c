/* iprate: per-IP counters in an open-addressing table (see iprate.h).
 *
 * Linear probing over a power-of-two table of fixed-size keys; entries are never removed one by one, so
 * a probe sequence is never broken. A sweep rebuilds the table without idle entries (no open count and a
 * window older than a minute). The load is kept under 3/4; past it a new key is not stored. */
#include "core/iprate.h"

#include <stdlib.h>
#include <string.h>

#include "core/netacl.h"

#define KEY_MAX 48
#define WINDOW_MS 60000u

typedef struct slot {
    char key[KEY_MAX]; /* "" = empty */
    uint64_t window_start;
    uint32_t count, prev_count; /* this window, the one before (sliding estimate) */
    uint32_t open;
} slot;

struct th_iprate {
    slot *s;
    size_t cap, used;
    uint64_t last_sweep;
};

static uint64_t hash(const char *k)
{
    uint64_t h = 1469598103934665603ull;
    for (; *k; k++)
        h = (h ^ (uint8_t)*k) * 1099511628211ull;
    return h;
}

th_iprate *th_iprate_new(size_t slots)
{
    size_t cap = 64;
    while (cap < slots && cap < ((size_t)1 << 24))
        cap <<= 1;
    th_iprate *t = calloc(1, sizeof *t);
    if (t == NULL) return NULL;
    t->s = calloc(cap, sizeof *t->s);
    if (t->s == NULL) {
        free(t);
        return NULL;
    }
    t->cap = cap;
    return t;
}

void th_iprate_free(th_iprate *t)
{
    if (t == NULL) return;
    free(t->s);
    free(t);
}

static slot *probe(th_iprate *t, const char *key, bool *found)
{
    size_t mask = t->cap - 1, i = (size_t)hash(key) & mask;
    for (size_t n = 0; n < t->cap; n++, i = (i + 1) & mask) {
        if (t->s[i].key[0] == 0) {
            *found = false;
            return &t->s[i];
        }
        if (strcmp(t->s[i].key, key) == 0) {
            *found = true;
            return &t->s[i];
        }
    }
    *found = false;
    return NULL;
}

static bool idle(const slot *e, uint64_t now)
{
    return e->open == 0 && now >= e->window_start + 2 * (uint64_t)WINDOW_MS;
}

static void sweep(th_iprate *t, uint64_t now)
{
    slot *old = t->s;
    slot *fresh = calloc(t->cap, sizeof *fresh);
    if (fresh == NULL) return;
    t->s = fresh;
    t->used = 0;
    for (size_t i = 0; i < t->cap; i++) {
        if (old[i].key[0] == 0 || idle(&old[i], now)) continue;
        bool found;
        slot *e = probe(t, old[i].key, &found);
        if (e == NULL) continue;
        *e = old[i];
        t->used++;
    }
    free(old);
    t->last_sweep = now;
}

/* The entry of ip, created when absent; NULL when the table is full. */
static slot *get(th_iprate *t, const char *ip, uint64_t now, bool create)
{
    char key[KEY_MAX];
    th_net_ip_key(ip, key, sizeof key);
    if (key[0] == 0) key[0] = '?', key[1] = 0;
    bool found;
    slot *e = probe(t, key, &found);
    if (found || !create) return found ? e : NULL;
    if ((t->used + 1) * 4 > t->cap * 3) {
        if (now < t->last_sweep + 1000 && t->last_sweep != 0) return NULL;
        sweep(t, now);
        if ((t->used + 1) * 4 > t->cap * 3) return NULL;
        e = probe(t, key, &found);
        if (e == NULL) return NULL;
    }
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, strlen(key) + 1);
    e->window_start = now;
    t->used++;
    return e;
}

bool th_iprate_hit(th_iprate *t, const char *ip, uint64_t now, uint32_t rpm)
{
    if (rpm == 0) return true;
    slot *e = get(t, ip, now, true);
    if (e == NULL) return true;
    if (now >= e->window_start + WINDOW_MS) {
        uint64_t windows = (now - e->window_start) / WINDOW_MS;
        e->prev_count = windows == 1 ? e->count : 0;
        e->count = 0;
        e->window_start += windows * WINDOW_MS;
    }
    /* sliding-window estimate: the previous window weighted by how much of it still overlaps */
    uint64_t into = now - e->window_start;
    uint64_t est = (uint64_t)e->prev_count * (WINDOW_MS - into) / WINDOW_MS + e->count;
    if (est >= rpm) return false;
    e->count++;
    return true;
}

int th_iprate_acquire(th_iprate *t, const char *ip, uint64_t now, uint32_t cap)
{
    if (cap == 0) return -1;
    slot *e = get(t, ip, now, true);
    if (e == NULL) return -1;
    if (e->open >= cap) return 0;
    e->open++;
    return 1;
}

void th_iprate_release(th_iprate *t, const char *ip)
{
    slot *e = get(t, ip, 0, false);
    if (e != NULL && e->open > 0) e->open--;
}

size_t th_iprate_entries(const th_iprate *t)
{
    return t->used;
}

uint32_t th_iprate_open(const th_iprate *t, const char *ip)
{
    slot *e = get((th_iprate *)t, ip, 0, false);
    return e ? e->open : 0;
}
