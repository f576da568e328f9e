/* metrics: the descriptor table, series interned per metric, and the Prometheus text rendering.
 *
 * Each metric (family) holds its series in an array in insertion order and an open-addressing hash
 * table of indexes into that array (FNV-1a over the label values, linear probing, grown at half
 * load). A family holds at most TH_METRICS_MAX_SERIES series; past that every new label set is
 * counted in one more series whose label values are all "_overflow". Label values are cut to
 * TH_METRICS_MAX_LABEL_LEN bytes (at a UTF-8 boundary), and a NULL value counts as "".
 *
 * Counters ignore negative or NaN additions; th_metrics_set works on counters and gauges; adding to a
 * histogram or observing a counter/gauge is ignored. A metric without labels is always rendered
 * (0 until touched). Allocation failure drops the update: metrics must never fail a request. */
#include "observability/metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NLABELS 3

static const double latency_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double transcode_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                           0.25,  0.5,    1,     2.5,  5,     10};
static const double round_trip_buckets[] = {0, 1, 2, 3, 4, 6};
static const double turn_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128};

#define NB(a) (sizeof(a) / sizeof((a)[0]))

const th_metric_desc th_metric_descs[TH_M_COUNT] = {
    [TH_M_REQUESTS] = {TH_M_REQUESTS,
                       "ttshub_requests_total",
                       TH_MT_COUNTER,
                       "HTTP requests served, by route and status code.",
                       {"route", "status", NULL},
                       NULL,
                       0},
    [TH_M_REQUEST_SECONDS] = {TH_M_REQUEST_SECONDS,
                              "ttshub_request_duration_seconds",
                              TH_MT_HISTOGRAM,
                              "Time from request start to the last byte sent, by route.",
                              {"route", NULL, NULL},
                              latency_buckets,
                              NB(latency_buckets)},
    [TH_M_UPSTREAM_SECONDS] = {TH_M_UPSTREAM_SECONDS,
                               "ttshub_upstream_first_byte_seconds",
                               TH_MT_HISTOGRAM,
                               "Time from sending a request to a provider to its first audio byte.",
                               {"provider", NULL, NULL},
                               latency_buckets,
                               NB(latency_buckets)},
    [TH_M_UPSTREAM_ERRORS] = {TH_M_UPSTREAM_ERRORS,
                              "ttshub_upstream_errors_total",
                              TH_MT_COUNTER,
                              "Failed provider calls, by provider and failure kind.",
                              {"provider", "kind", NULL},
                              NULL,
                              0},
    [TH_M_TRANSCODE_SECONDS] = {TH_M_TRANSCODE_SECONDS,
                                "ttshub_transcode_seconds",
                                TH_MT_HISTOGRAM,
                                "CPU seconds spent converting audio, by output format.",
                                {"format", NULL, NULL},
                                transcode_buckets,
                                NB(transcode_buckets)},
    [TH_M_CACHE] = {TH_M_CACHE,
                    "ttshub_cache_requests_total",
                    TH_MT_COUNTER,
                    "Audio cache lookups, by result (hit, miss, coalesced).",
                    {"result", NULL, NULL},
                    NULL,
                    0},
    [TH_M_BREAKER_STATE] = {TH_M_BREAKER_STATE,
                            "ttshub_provider_breaker_state",
                            TH_MT_GAUGE,
                            "Circuit breaker state per provider: 0 closed, 1 open, 2 half_open.",
                            {"provider", NULL, NULL},
                            NULL,
                            0},
    [TH_M_PROVIDER_INFLIGHT] = {TH_M_PROVIDER_INFLIGHT,
                                "ttshub_provider_in_flight",
                                TH_MT_GAUGE,
                                "Calls in flight to each provider.",
                                {"provider", NULL, NULL},
                                NULL,
                                0},
    [TH_M_QUEUE_DEPTH] = {TH_M_QUEUE_DEPTH,
                          "ttshub_provider_queue_depth",
                          TH_MT_GAUGE,
                          "Requests waiting for a provider's concurrency slot.",
                          {"provider", NULL, NULL},
                          NULL,
                          0},
    [TH_M_RETRIES] = {TH_M_RETRIES,
                      "ttshub_retries_total",
                      TH_MT_COUNTER,
                      "Retries on the same provider before the first byte.",
                      {"provider", NULL, NULL},
                      NULL,
                      0},
    [TH_M_FALLBACKS] = {TH_M_FALLBACKS,
                        "ttshub_fallbacks_total",
                        TH_MT_COUNTER,
                        "Moves from one provider to the next candidate.",
                        {"from", "to", NULL},
                        NULL,
                        0},
    [TH_M_HEDGES] = {TH_M_HEDGES,
                     "ttshub_hedges_total",
                     TH_MT_COUNTER,
                     "Hedged calls started on a provider because the first one was slow.",
                     {"provider", NULL, NULL},
                     NULL,
                     0},
    [TH_M_CUT_RESPONSES] = {TH_M_CUT_RESPONSES,
                            "ttshub_cut_responses_total",
                            TH_MT_COUNTER,
                            "Provider failures after the first audio byte was sent to the client.",
                            {"provider", NULL, NULL},
                            NULL,
                            0},
    [TH_M_CHARS] = {TH_M_CHARS,
                    "ttshub_characters_total",
                    TH_MT_COUNTER,
                    "Unicode code points synthesised, by tenant.",
                    {"tenant", NULL, NULL},
                    NULL,
                    0},
    [TH_M_REJECTIONS] = {TH_M_REJECTIONS,
                         "ttshub_rejections_total",
                         TH_MT_COUNTER,
                         "Requests refused before synthesis, by reason.",
                         {"reason", NULL, NULL},
                         NULL,
                         0},
    [TH_M_INFLIGHT] = {TH_M_INFLIGHT,
                       "ttshub_in_flight_requests",
                       TH_MT_GAUGE,
                       "Requests in flight.",
                       {NULL, NULL, NULL},
                       NULL,
                       0},
    [TH_M_CONFIG_RELOADS] = {TH_M_CONFIG_RELOADS,
                             "ttshub_config_reloads_total",
                             TH_MT_COUNTER,
                             "Config reloads (SIGHUP, file change, POST /admin/reload), by result.",
                             {"result", NULL, NULL},
                             NULL,
                             0},
    [TH_M_CONFIG_LOADED] = {TH_M_CONFIG_LOADED,
                            "ttshub_config_loaded_timestamp_seconds",
                            TH_MT_GAUGE,
                            "Unix time at which the config in force was loaded.",
                            {NULL, NULL, NULL},
                            NULL,
                            0},
    [TH_M_REDIS_ROUND_TRIPS] = {TH_M_REDIS_ROUND_TRIPS,
                                "ttshub_redis_round_trips",
                                TH_MT_HISTOGRAM,
                                "Redis commands of one synthesis request: before_first_byte counts the calls "
                                "the request waited for, after the ones sent once the response had ended.",
                                {"when", NULL, NULL},
                                round_trip_buckets,
                                NB(round_trip_buckets)},
    [TH_M_REDIS_TURN] =
        {TH_M_REDIS_TURN,
         "ttshub_redis_turn_requests",
         TH_MT_HISTOGRAM,
         "Requests in one policy script, which carries what a loop turn queued: admissions, and "
         "settles (sent after the response).",
         {"part", NULL, NULL},
         turn_buckets,
         NB(turn_buckets)},
};

typedef struct series {
    char *block;              /* label values, each NUL-terminated, one allocation */
    const char *val[NLABELS]; /* into block */
    uint64_t hash;
    double value; /* counter, gauge */
    double sum;   /* histogram */
    uint64_t count;
    uint64_t *buckets; /* histogram: nbuckets + 1 (the last is +Inf), not cumulative */
} series;

typedef struct family {
    series *s;
    size_t n, cap;
    uint32_t *slots; /* index + 1; 0 = empty */
    size_t nslots;   /* power of two */
} family;

struct th_metrics {
    family fam[TH_M_COUNT];
};

static size_t nlabels(const th_metric_desc *d)
{
    size_t n = 0;
    while (n < NLABELS && d->labels[n] != NULL)
        n++;
    return n;
}

/* Length of v cut to TH_METRICS_MAX_LABEL_LEN bytes without splitting a UTF-8 sequence. */
static size_t label_len(const char *v)
{
    size_t n = strnlen(v, TH_METRICS_MAX_LABEL_LEN + 1);
    if (n <= TH_METRICS_MAX_LABEL_LEN) return n;
    n = TH_METRICS_MAX_LABEL_LEN;
    while (n > 0 && ((unsigned char)v[n] & 0xC0) == 0x80)
        n--;
    return n;
}

typedef struct key {
    const char *v[NLABELS];
    size_t len[NLABELS];
    size_t n;
    uint64_t hash;
} key;

static void make_key(key *k, const th_metric_desc *d, const char *const *labels)
{
    k->n = nlabels(d);
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < k->n; i++) {
        const char *v = (labels != NULL && labels[i] != NULL) ? labels[i] : "";
        k->v[i] = v;
        k->len[i] = label_len(v);
        for (size_t j = 0; j < k->len[i]; j++) {
            h ^= (unsigned char)v[j];
            h *= 1099511628211ULL;
        }
        h ^= (uint64_t)k->len[i] << 8 | 0xFF; /* separates "a","bc" from "ab","c" */
        h *= 1099511628211ULL;
    }
    k->hash = h;
}

static bool key_eq(const key *k, const series *s)
{
    if (s->hash != k->hash) return false;
    for (size_t i = 0; i < k->n; i++) {
        if (strncmp(s->val[i], k->v[i], k->len[i]) != 0 || s->val[i][k->len[i]] != '\0') return false;
    }
    return true;
}

/* Index of the series for k, or -1. */
static long find(const family *f, const key *k)
{
    if (f->nslots == 0) return -1;
    size_t mask = f->nslots - 1;
    for (size_t i = (size_t)k->hash & mask;; i = (i + 1) & mask) {
        uint32_t e = f->slots[i];
        if (e == 0) return -1;
        if (key_eq(k, &f->s[e - 1])) return (long)(e - 1);
    }
}

static bool grow_slots(family *f)
{
    size_t n = f->nslots ? f->nslots * 2 : 16;
    uint32_t *slots = calloc(n, sizeof *slots);
    if (slots == NULL) return false;
    for (size_t i = 0; i < f->n; i++) {
        size_t j = (size_t)f->s[i].hash & (n - 1);
        while (slots[j] != 0)
            j = (j + 1) & (n - 1);
        slots[j] = (uint32_t)(i + 1);
    }
    free(f->slots);
    f->slots = slots;
    f->nslots = n;
    return true;
}

static long insert(family *f, const th_metric_desc *d, const key *k)
{
    if ((f->n + 1) * 2 > f->nslots && !grow_slots(f)) return -1;
    if (f->n == f->cap) {
        size_t ncap = f->cap ? f->cap * 2 : 8;
        series *ns = realloc(f->s, ncap * sizeof *ns);
        if (ns == NULL) return -1;
        f->s = ns;
        f->cap = ncap;
    }
    size_t total = 1;
    for (size_t i = 0; i < k->n; i++)
        total += k->len[i] + 1;
    series s = {.hash = k->hash};
    s.block = malloc(total);
    if (s.block == NULL) return -1;
    if (d->type == TH_MT_HISTOGRAM) {
        s.buckets = calloc(d->nbuckets + 1, sizeof *s.buckets);
        if (s.buckets == NULL) {
            free(s.block);
            return -1;
        }
    }
    char *p = s.block;
    for (size_t i = 0; i < k->n; i++) {
        memcpy(p, k->v[i], k->len[i]);
        p[k->len[i]] = '\0';
        s.val[i] = p;
        p += k->len[i] + 1;
    }
    *p = '\0';
    for (size_t i = k->n; i < NLABELS; i++)
        s.val[i] = p;
    f->s[f->n] = s;
    size_t mask = f->nslots - 1;
    size_t j = (size_t)k->hash & mask;
    while (f->slots[j] != 0)
        j = (j + 1) & mask;
    f->slots[j] = (uint32_t)(f->n + 1);
    return (long)f->n++;
}

/* The series for labels, created on first use; NULL when it cannot be. */
static series *intern(th_metrics *m, th_metric_id id, const char *const *labels)
{
    if (m == NULL || (unsigned)id >= TH_M_COUNT) return NULL;
    const th_metric_desc *d = &th_metric_descs[id];
    family *f = &m->fam[id];
    key k;
    make_key(&k, d, labels);
    long i = find(f, &k);
    if (i >= 0) return &f->s[i];
    if (f->n >= TH_METRICS_MAX_SERIES) {
        static const char *const ov[NLABELS] = {"_overflow", "_overflow", "_overflow"};
        make_key(&k, d, ov);
        i = find(f, &k);
        if (i >= 0) return &f->s[i];
    }
    i = insert(f, d, &k);
    return i >= 0 ? &f->s[i] : NULL;
}

th_metrics *th_metrics_new(void)
{
    return calloc(1, sizeof(th_metrics));
}

void th_metrics_free(th_metrics *m)
{
    if (m == NULL) return;
    for (size_t id = 0; id < TH_M_COUNT; id++) {
        family *f = &m->fam[id];
        for (size_t i = 0; i < f->n; i++) {
            free(f->s[i].block);
            free(f->s[i].buckets);
        }
        free(f->s);
        free(f->slots);
    }
    free(m);
}

void th_metrics_add(th_metrics *m, th_metric_id id, const char *const *labels, double v)
{
    if ((unsigned)id >= TH_M_COUNT || isnan(v)) return;
    const th_metric_desc *d = &th_metric_descs[id];
    if (d->type == TH_MT_HISTOGRAM || (d->type == TH_MT_COUNTER && v < 0)) return;
    series *s = intern(m, id, labels);
    if (s != NULL) s->value += v;
}

void th_metrics_set(th_metrics *m, th_metric_id id, const char *const *labels, double v)
{
    if ((unsigned)id >= TH_M_COUNT || th_metric_descs[id].type == TH_MT_HISTOGRAM) return;
    series *s = intern(m, id, labels);
    if (s != NULL) s->value = v;
}

void th_metrics_observe(th_metrics *m, th_metric_id id, const char *const *labels, double v)
{
    if ((unsigned)id >= TH_M_COUNT || isnan(v)) return;
    const th_metric_desc *d = &th_metric_descs[id];
    if (d->type != TH_MT_HISTOGRAM) return;
    series *s = intern(m, id, labels);
    if (s == NULL) return;
    size_t b = 0;
    while (b < d->nbuckets && v > d->buckets[b])
        b++;
    s->buckets[b]++;
    s->sum += v;
    s->count++;
}

double th_metrics_get(const th_metrics *m, th_metric_id id, const char *const *labels)
{
    if (m == NULL || (unsigned)id >= TH_M_COUNT) return 0;
    const th_metric_desc *d = &th_metric_descs[id];
    key k;
    make_key(&k, d, labels);
    long i = find(&m->fam[id], &k);
    if (i < 0) return 0;
    const series *s = &m->fam[id].s[i];
    return d->type == TH_MT_HISTOGRAM ? (double)s->count : s->value;
}

double th_metrics_sum(const th_metrics *m, th_metric_id id, size_t label, const char *min)
{
    if (m == NULL || (unsigned)id >= TH_M_COUNT) return 0;
    const th_metric_desc *d = &th_metric_descs[id];
    const family *f = &m->fam[id];
    double sum = 0;
    for (size_t i = 0; i < f->n; i++) {
        const series *se = &f->s[i];
        if (min != NULL && (label >= nlabels(d) || strcmp(se->val[label], min) < 0)) continue;
        sum += d->type == TH_MT_HISTOGRAM ? (double)se->count : se->value;
    }
    return sum;
}

/* ---------------------------------------------------------------------------------------------- */
/* Rendering */

/* Shortest of %.15g / %.17g that reads back as v; Prometheus spellings for the non-finite. */
static int append_value(th_buf *out, double v)
{
    if (isnan(v)) return th_buf_append_str(out, "NaN");
    if (isinf(v)) return th_buf_append_str(out, v > 0 ? "+Inf" : "-Inf");
    char tmp[40];
    snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v) snprintf(tmp, sizeof tmp, "%.17g", v);
    return th_buf_append_str(out, tmp);
}

/* Escapes \ and newline (and " when quoted, for label values). */
static int append_escaped(th_buf *out, const char *s, bool quoted)
{
    const char *run = s;
    int rc = TH_BUF_OK;
    for (const char *p = s;; p++) {
        const char *esc = NULL;
        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (*p == '"' && quoted)
            esc = "\\\"";
        if (esc == NULL && *p != '\0') continue;
        if ((rc = th_buf_append(out, run, (size_t)(p - run))) != TH_BUF_OK) return rc;
        if (*p == '\0') return TH_BUF_OK;
        if ((rc = th_buf_append_str(out, esc)) != TH_BUF_OK) return rc;
        run = p + 1;
    }
}

/* {a="x",b="y"[,le="..."]} or nothing when there are no labels at all. */
static int append_labels(th_buf *out, const th_metric_desc *d, const series *s, const char *le)
{
    size_t n = nlabels(d);
    if (n == 0 && le == NULL) return TH_BUF_OK;
    int rc = th_buf_append_byte(out, '{');
    for (size_t i = 0; i < n && rc == TH_BUF_OK; i++) {
        if (i > 0) rc = th_buf_append_byte(out, ',');
        if (rc == TH_BUF_OK) rc = th_buf_appendf(out, "%s=\"", d->labels[i]);
        if (rc == TH_BUF_OK) rc = append_escaped(out, s != NULL ? s->val[i] : "", true);
        if (rc == TH_BUF_OK) rc = th_buf_append_byte(out, '"');
    }
    if (le != NULL && rc == TH_BUF_OK) rc = th_buf_appendf(out, "%sle=\"%s\"", n > 0 ? "," : "", le);
    if (rc == TH_BUF_OK) rc = th_buf_append_byte(out, '}');
    return rc;
}

static int append_sample(th_buf *out, const th_metric_desc *d, const char *suffix, const series *s,
                         const char *le, double v)
{
    int rc = th_buf_append_str(out, d->name);
    if (rc == TH_BUF_OK) rc = th_buf_append_str(out, suffix);
    if (rc == TH_BUF_OK) rc = append_labels(out, d, s, le);
    if (rc == TH_BUF_OK) rc = th_buf_append_byte(out, ' ');
    if (rc == TH_BUF_OK) rc = append_value(out, v);
    if (rc == TH_BUF_OK) rc = th_buf_append_byte(out, '\n');
    return rc;
}

static int render_histogram(th_buf *out, const th_metric_desc *d, const series *s)
{
    int rc = TH_BUF_OK;
    uint64_t cum = 0;
    for (size_t b = 0; b <= d->nbuckets && rc == TH_BUF_OK; b++) {
        cum += s != NULL ? s->buckets[b] : 0;
        char le[40];
        if (b < d->nbuckets)
            snprintf(le, sizeof le, "%.15g", d->buckets[b]);
        else
            snprintf(le, sizeof le, "+Inf");
        rc = append_sample(out, d, "_bucket", s, le, (double)cum);
    }
    if (rc == TH_BUF_OK) rc = append_sample(out, d, "_sum", s, NULL, s != NULL ? s->sum : 0);
    if (rc == TH_BUF_OK) rc = append_sample(out, d, "_count", s, NULL, s != NULL ? (double)s->count : 0);
    return rc;
}

int th_metrics_render(const th_metrics *m, th_buf *out)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    int rc = TH_BUF_OK;
    for (size_t id = 0; id < TH_M_COUNT && rc == TH_BUF_OK; id++) {
        const th_metric_desc *d = &th_metric_descs[id];
        const family *f = m != NULL ? &m->fam[id] : NULL;
        rc = th_buf_appendf(out, "# HELP %s ", d->name);
        if (rc == TH_BUF_OK) rc = append_escaped(out, d->help, false);
        if (rc == TH_BUF_OK) rc = th_buf_appendf(out, "\n# TYPE %s %s\n", d->name, types[d->type]);
        size_t n = f != NULL ? f->n : 0;
        if (n == 0 && nlabels(d) == 0 && rc == TH_BUF_OK) { /* label-less: always one sample */
            rc = d->type == TH_MT_HISTOGRAM ? render_histogram(out, d, NULL)
                                            : append_sample(out, d, "", NULL, NULL, 0);
        }
        for (size_t i = 0; i < n && rc == TH_BUF_OK; i++) {
            const series *s = &f->s[i];
            rc = d->type == TH_MT_HISTOGRAM ? render_histogram(out, d, s)
                                            : append_sample(out, d, "", s, NULL, s->value);
        }
    }
    return rc;
}
