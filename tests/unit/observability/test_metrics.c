#include "th_test.h"

#include "core/buf.h"
#include "observability/metrics.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#define L(...) ((const char *const[]){__VA_ARGS__})

/* Renders m into a new NUL-terminated string (caller frees), or NULL. */
static char *render(const th_metrics *m)
{
    th_buf b;
    th_buf_init(&b, 0);
    if (th_metrics_render(m, &b) != TH_BUF_OK || th_buf_cstr(&b) == NULL) {
        th_buf_free(&b);
        return NULL;
    }
    size_t len;
    return (char *)th_buf_steal(&b, &len);
}

static bool contains_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n') return true;
    }
    return false;
}

static bool name_char(char c, bool first)
{
    return isalpha((unsigned char)c) || c == '_' || c == ':' || (!first && isdigit((unsigned char)c));
}

/* Parses one sample line `name{l="v",...} value`: returns false when it does not match. */
static bool parse_sample(const char *s, const char *e)
{
    const char *p = s;
    if (p == e || !name_char(*p, true)) return false;
    while (p < e && name_char(*p, false))
        p++;
    if (p < e && *p == '{') {
        p++;
        for (bool first = true;; first = false) {
            if (p < e && *p == '}' && first) break;
            if (!first) {
                if (p < e && *p == '}') break;
                if (p >= e || *p != ',') return false;
                p++;
            }
            if (p >= e || !name_char(*p, true)) return false;
            while (p < e && name_char(*p, false))
                p++;
            if (p + 1 >= e || p[0] != '=' || p[1] != '"') return false;
            p += 2;
            while (p < e && *p != '"') {
                if (*p == '\\') {
                    if (p + 1 >= e || (p[1] != '\\' && p[1] != '"' && p[1] != 'n')) return false;
                    p++;
                }
                p++;
            }
            if (p >= e) return false;
            p++; /* closing quote */
        }
        p++; /* } */
    }
    if (p >= e || *p != ' ') return false;
    p++;
    size_t vn = (size_t)(e - p);
    if (vn == 4 && (strncmp(p, "+Inf", 4) == 0 || strncmp(p, "-Inf", 4) == 0)) return true;
    if (vn == 3 && strncmp(p, "NaN", 3) == 0) return true;
    char tmp[64];
    if (vn == 0 || vn >= sizeof tmp) return false;
    memcpy(tmp, p, vn);
    tmp[vn] = '\0';
    char *end;
    (void)strtod(tmp, &end);
    return *end == '\0' && !isspace((unsigned char)tmp[0]);
}

/* Every line is a HELP, a TYPE or a sample; returns the number of bad lines (and counts samples). */
static int check_exposition(const char *text, int *samples)
{
    int bad = 0;
    *samples = 0;
    const char *p = text;
    while (*p != '\0') {
        const char *e = strchr(p, '\n');
        if (e == NULL) return bad + 1; /* the last line must end with a newline */
        if (strncmp(p, "# HELP ttshub_", 14) == 0) {
        } else if (strncmp(p, "# TYPE ttshub_", 14) == 0) {
            const char *t = e;
            while (t > p && t[-1] != ' ')
                t--;
            size_t tn = (size_t)(e - t);
            bool ok = (tn == 7 && strncmp(t, "counter", 7) == 0) ||
                      (tn == 5 && strncmp(t, "gauge", 5) == 0) ||
                      (tn == 9 && strncmp(t, "histogram", 9) == 0);
            if (!ok) bad++;
        } else if (parse_sample(p, e)) {
            (*samples)++;
        } else {
            fprintf(stderr, "bad line: %.*s\n", (int)(e - p), p);
            bad++;
        }
        p = e + 1;
    }
    return bad;
}

TH_TEST(metrics_descriptor_table)
{
    for (int i = 0; i < TH_M_COUNT; i++) {
        const th_metric_desc *d = &th_metric_descs[i];
        TH_CHECK_INT(d->id, i);
        TH_CHECK(d->name != NULL && strncmp(d->name, "ttshub_", 7) == 0);
        TH_CHECK(d->help != NULL && d->help[0] != '\0');
        if (d->type == TH_MT_HISTOGRAM) {
            TH_CHECK(d->buckets != NULL && d->nbuckets > 0);
            for (size_t b = 1; b < d->nbuckets; b++)
                TH_CHECK(d->buckets[b] > d->buckets[b - 1]);
        } else {
            TH_CHECK(d->buckets == NULL && d->nbuckets == 0);
        }
        if (d->type == TH_MT_COUNTER) TH_CHECK(strstr(d->name, "_total") != NULL);
    }
    TH_CHECK_STR(th_metric_descs[TH_M_REQUESTS].name, "ttshub_requests_total");
    TH_CHECK_STR(th_metric_descs[TH_M_REQUESTS].labels[1], "status");
    TH_CHECK_STR(th_metric_descs[TH_M_FALLBACKS].labels[0], "from");
    TH_CHECK_STR(th_metric_descs[TH_M_FALLBACKS].labels[1], "to");
    TH_CHECK(th_metric_descs[TH_M_INFLIGHT].labels[0] == NULL);
    const th_metric_desc *h = &th_metric_descs[TH_M_REQUEST_SECONDS];
    TH_CHECK(h->buckets[0] == 0.005 && h->buckets[h->nbuckets - 1] == 60);
    const th_metric_desc *tc = &th_metric_descs[TH_M_TRANSCODE_SECONDS];
    TH_CHECK(tc->buckets[0] == 0.001 && tc->buckets[tc->nbuckets - 1] == 10);
}

TH_TEST(metrics_counters_and_gauges)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "200"), 1);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "200"), 2);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "500"), 1);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "500"), -5);  /* counters never go down */
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "500"), NAN); /* ignored */
    TH_CHECK(th_metrics_get(m, TH_M_REQUESTS, L("speech", "200")) == 3);
    TH_CHECK(th_metrics_get(m, TH_M_REQUESTS, L("speech", "500")) == 1);
    TH_CHECK(th_metrics_get(m, TH_M_REQUESTS, L("speech", "404")) == 0);
    th_metrics_set(m, TH_M_INFLIGHT, NULL, 7);
    th_metrics_add(m, TH_M_INFLIGHT, NULL, -2);
    TH_CHECK(th_metrics_get(m, TH_M_INFLIGHT, NULL) == 5);
    th_metrics_set(m, TH_M_BREAKER_STATE, L("fm"), 1);
    th_metrics_set(m, TH_M_BREAKER_STATE, L("fm"), 2);
    TH_CHECK(th_metrics_get(m, TH_M_BREAKER_STATE, L("fm")) == 2);
    /* NULL label values count as "" */
    th_metrics_add(m, TH_M_FALLBACKS, L("a", NULL), 1);
    TH_CHECK(th_metrics_get(m, TH_M_FALLBACKS, L("a", "")) == 1);
    /* wrong kinds of update are ignored */
    th_metrics_observe(m, TH_M_REQUESTS, L("x", "y"), 1);
    th_metrics_add(m, TH_M_REQUEST_SECONDS, L("x"), 1);
    TH_CHECK(th_metrics_get(m, TH_M_REQUESTS, L("x", "y")) == 0);
    TH_CHECK(th_metrics_get(m, TH_M_REQUEST_SECONDS, L("x")) == 0);
    th_metrics_add(m, TH_M_COUNT, NULL, 1); /* out of range */

    char *text = render(m);
    TH_REQUIRE(text != NULL);
    TH_CHECK(
        contains_line(text, "# HELP ttshub_requests_total HTTP requests served, by route and status code."));
    TH_CHECK(contains_line(text, "# TYPE ttshub_requests_total counter"));
    TH_CHECK(contains_line(text, "ttshub_requests_total{route=\"speech\",status=\"200\"} 3"));
    TH_CHECK(contains_line(text, "ttshub_requests_total{route=\"speech\",status=\"500\"} 1"));
    TH_CHECK(contains_line(text, "# TYPE ttshub_in_flight_requests gauge"));
    TH_CHECK(contains_line(text, "ttshub_in_flight_requests 5"));
    TH_CHECK(contains_line(text, "ttshub_provider_breaker_state{provider=\"fm\"} 2"));
    TH_CHECK(contains_line(text, "ttshub_fallbacks_total{from=\"a\",to=\"\"} 1"));
    /* insertion order within a metric */
    TH_CHECK(strstr(text, "status=\"200\"") < strstr(text, "status=\"500\""));
    free(text);
    th_metrics_free(m);
}

TH_TEST(metrics_histogram_buckets)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    const char *const *lab = L("speech");
    /* on a bound counts in that bucket (le is <=); past the last only in +Inf */
    double obs[] = {0.001, 0.005, 0.0051, 0.3, 1, 1, 59.9, 60, 61, 1000};
    double sum = 0;
    for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++) {
        th_metrics_observe(m, TH_M_REQUEST_SECONDS, lab, obs[i]);
        sum += obs[i];
    }
    th_metrics_observe(m, TH_M_REQUEST_SECONDS, lab, NAN); /* ignored */
    TH_CHECK(th_metrics_get(m, TH_M_REQUEST_SECONDS, lab) == 10);
    char *text = render(m);
    TH_REQUIRE(text != NULL);
    const char *n = "ttshub_request_duration_seconds";
    char line[160];
    struct {
        const char *le;
        int cum;
    } want[] = {{"0.005", 2}, {"0.01", 3}, {"0.025", 3}, {"0.25", 3}, {"0.5", 4},
                {"1", 6},     {"2.5", 6},  {"30", 6},    {"60", 8},   {"+Inf", 10}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        snprintf(line, sizeof line, "%s_bucket{route=\"speech\",le=\"%s\"} %d", n, want[i].le, want[i].cum);
        TH_CHECK(contains_line(text, line));
    }
    snprintf(line, sizeof line, "%s_count{route=\"speech\"} 10", n);
    TH_CHECK(contains_line(text, line));
    const char *s = strstr(text, "ttshub_request_duration_seconds_sum{route=\"speech\"} ");
    TH_REQUIRE(s != NULL);
    double got = strtod(strchr(s, ' ') + 1, NULL);
    TH_CHECK(fabs(got - sum) < 1e-9);
    TH_CHECK(contains_line(text, "# TYPE ttshub_request_duration_seconds histogram"));
    /* buckets come in ascending order and +Inf is last, then _sum, then _count */
    const char *b1 = strstr(text, "le=\"0.005\"");
    const char *b2 = strstr(text, "le=\"60\"");
    const char *b3 = strstr(text, "le=\"+Inf\"");
    const char *b4 = strstr(text, "_sum{route=\"speech\"}");
    TH_CHECK(b1 && b2 && b3 && b4 && b1 < b2 && b2 < b3 && b3 < b4);
    /* transcode buckets start at 1 ms */
    th_metrics_observe(m, TH_M_TRANSCODE_SECONDS, L("mp3"), 0.0005);
    free(text);
    text = render(m);
    TH_REQUIRE(text != NULL);
    TH_CHECK(contains_line(text, "ttshub_transcode_seconds_bucket{format=\"mp3\",le=\"0.001\"} 1"));
    TH_CHECK(contains_line(text, "ttshub_transcode_seconds_bucket{format=\"mp3\",le=\"0.0025\"} 1"));
    TH_CHECK(contains_line(text, "ttshub_transcode_seconds_bucket{format=\"mp3\",le=\"+Inf\"} 1"));
    free(text);
    th_metrics_free(m);
}

TH_TEST(metrics_label_escaping)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    th_metrics_add(m, TH_M_CHARS, L("a\\b\"c\nd"), 42);
    th_metrics_add(m, TH_M_CHARS, L("ünï ☃"), 1);
    char *text = render(m);
    TH_REQUIRE(text != NULL);
    TH_CHECK(contains_line(text, "ttshub_characters_total{tenant=\"a\\\\b\\\"c\\nd\"} 42"));
    TH_CHECK(contains_line(text, "ttshub_characters_total{tenant=\"ünï ☃\"} 1"));
    int samples;
    TH_CHECK_INT(check_exposition(text, &samples), 0);
    TH_CHECK(th_metrics_get(m, TH_M_CHARS, L("a\\b\"c\nd")) == 42);
    free(text);
    /* long label values are cut at a UTF-8 boundary; the cut value names the same series */
    char big[600];
    for (size_t i = 0; i + 2 < sizeof big; i += 2)
        memcpy(big + i, "\xc3\xa9", 2);
    big[sizeof big - 2] = 'x';
    big[sizeof big - 1] = '\0';
    th_metrics_add(m, TH_M_CHARS, L(big), 1);
    th_metrics_add(m, TH_M_CHARS, L(big), 1);
    TH_CHECK(th_metrics_get(m, TH_M_CHARS, L(big)) == 2);
    text = render(m);
    TH_REQUIRE(text != NULL);
    const char *p = strstr(text, "tenant=\"\xc3\xa9");
    TH_REQUIRE(p != NULL);
    const char *q = strchr(p + 8, '"');
    TH_REQUIRE(q != NULL);
    TH_CHECK((size_t)(q - (p + 8)) <= TH_METRICS_MAX_LABEL_LEN);
    TH_CHECK((q - (p + 8)) % 2 == 0);
    free(text);
    th_metrics_free(m);
}

TH_TEST(metrics_overflow_bound)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    char name[32];
    for (int i = 0; i < TH_METRICS_MAX_SERIES + 500; i++) {
        snprintf(name, sizeof name, "tenant-%d", i);
        th_metrics_add(m, TH_M_CHARS, L(name), 2);
        snprintf(name, sizeof name, "p%d", i);
        th_metrics_add(m, TH_M_FALLBACKS, L(name, "x"), 1);
    }
    th_metrics_add(m, TH_M_CHARS, L("tenant-0"), 1); /* an existing series still counts on its own */
    TH_CHECK(th_metrics_get(m, TH_M_CHARS, L("tenant-0")) == 3);
    TH_CHECK(th_metrics_get(m, TH_M_CHARS, L("tenant-999")) == 2);
    TH_CHECK(th_metrics_get(m, TH_M_CHARS, L("tenant-1000")) == 0);
    TH_CHECK(th_metrics_get(m, TH_M_CHARS, L("_overflow")) == 1000);
    TH_CHECK(th_metrics_get(m, TH_M_FALLBACKS, L("_overflow", "_overflow")) == 500);
    char *text = render(m);
    TH_REQUIRE(text != NULL);
    int lines = 0;
    for (const char *p = text; (p = strstr(p, "ttshub_characters_total{")) != NULL; p++)
        lines++;
    TH_CHECK_INT(lines, TH_METRICS_MAX_SERIES + 1);
    TH_CHECK(contains_line(text, "ttshub_characters_total{tenant=\"_overflow\"} 1000"));
    TH_CHECK(contains_line(text, "ttshub_fallbacks_total{from=\"_overflow\",to=\"_overflow\"} 500"));
    int samples;
    TH_CHECK_INT(check_exposition(text, &samples), 0);
    free(text);
    th_metrics_free(m);
}

TH_TEST(metrics_render_parses_back)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    /* touch every metric */
    for (int id = 0; id < TH_M_COUNT; id++) {
        const th_metric_desc *d = &th_metric_descs[id];
        const char *const *lab = L("v1", "v\"2", "v3");
        if (d->type == TH_MT_HISTOGRAM) {
            th_metrics_observe(m, (th_metric_id)id, lab, 0.2);
            th_metrics_observe(m, (th_metric_id)id, lab, 0.3);
        } else if (d->type == TH_MT_GAUGE) {
            th_metrics_set(m, (th_metric_id)id, lab, -1.5);
        } else {
            th_metrics_add(m, (th_metric_id)id, lab, 1e20);
        }
    }
    th_metrics_set(m, TH_M_QUEUE_DEPTH, L("inf"), INFINITY);
    char *text = render(m);
    TH_REQUIRE(text != NULL);
    int samples = 0;
    TH_CHECK_INT(check_exposition(text, &samples), 0);
    /* 4 histograms x (14 buckets + sum + count) + 12 other series + the +Inf gauge */
    int hist = 0, other = 0;
    for (int id = 0; id < TH_M_COUNT; id++) {
        if (th_metric_descs[id].type == TH_MT_HISTOGRAM)
            hist += (int)th_metric_descs[id].nbuckets + 3;
        else
            other++;
    }
    TH_CHECK_INT(samples, hist + other + 1);
    /* each metric has exactly one HELP and one TYPE, in table order */
    const char *prev = text;
    for (int id = 0; id < TH_M_COUNT; id++) {
        char h[128];
        snprintf(h, sizeof h, "# HELP %s ", th_metric_descs[id].name);
        const char *p = strstr(text, h);
        TH_CHECK(p != NULL && p >= prev);
        if (p != NULL) {
            TH_CHECK(strstr(p + 1, h) == NULL);
            prev = p;
        }
    }
    TH_CHECK(contains_line(text, "ttshub_provider_queue_depth{provider=\"inf\"} +Inf"));
    TH_CHECK(contains_line(text, "ttshub_provider_in_flight{provider=\"v1\"} -1.5"));
    TH_CHECK(contains_line(text, "ttshub_cache_requests_total{result=\"v1\"} 1e+20"));
    TH_CHECK(contains_line(text, "ttshub_transcode_seconds_sum{format=\"v1\"} 0.5"));
    free(text);
    th_metrics_free(m);

    /* an empty registry renders HELP/TYPE for every metric and the label-less gauge at 0 */
    m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    text = render(m);
    TH_REQUIRE(text != NULL);
    TH_CHECK_INT(check_exposition(text, &samples), 0);
    int labelless_gauges = 0;
    for (int id = 0; id < TH_M_COUNT; id++)
        if (th_metric_descs[id].type == TH_MT_GAUGE && th_metric_descs[id].labels[0] == NULL)
            labelless_gauges++;
    TH_CHECK_INT(samples, labelless_gauges);
    TH_CHECK(contains_line(text, "ttshub_in_flight_requests 0"));
    TH_CHECK(contains_line(text, "ttshub_config_loaded_timestamp_seconds 0"));
    free(text);
    th_metrics_free(m);
}

TH_TEST(metrics_render_respects_buffer_limit)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "200"), 1);
    th_buf b;
    th_buf_init(&b, 64);
    TH_CHECK_INT(th_metrics_render(m, &b), TH_BUF_EFULL);
    TH_CHECK(b.len <= 64);
    th_buf_free(&b);
    th_metrics_free(m);
    th_metrics_free(NULL);
}

/* The sums that /api/status and the status page read (one set of counters). */
TH_TEST(metrics_sum)
{
    th_metrics *m = th_metrics_new();
    TH_REQUIRE(m != NULL);
    TH_CHECK(th_metrics_sum(m, TH_M_REQUESTS, 0, NULL) == 0);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "200"), 3);
    th_metrics_add(m, TH_M_REQUESTS, L("generate", "200"), 2);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "404"), 1);
    th_metrics_add(m, TH_M_REQUESTS, L("generate", "503"), 4);
    th_metrics_add(m, TH_M_REQUESTS, L("speech", "302"), 5);
    TH_CHECK(th_metrics_sum(m, TH_M_REQUESTS, 0, NULL) == 15);
    TH_CHECK(th_metrics_sum(m, TH_M_REQUESTS, 1, "400") == 5); /* 404 and 503 */
    TH_CHECK(th_metrics_sum(m, TH_M_REQUESTS, 0, "speech") == 9);
    TH_CHECK(th_metrics_sum(m, TH_M_REQUESTS, 7, "x") == 0); /* no such label: nothing matches */
    th_metrics_add(m, TH_M_CHARS, L("acme"), 10);
    th_metrics_add(m, TH_M_CHARS, L(""), 7);
    TH_CHECK(th_metrics_sum(m, TH_M_CHARS, 0, NULL) == 17);
    th_metrics_observe(m, TH_M_REQUEST_SECONDS, L("speech"), 0.1);
    th_metrics_observe(m, TH_M_REQUEST_SECONDS, L("speech"), 0.2);
    TH_CHECK(th_metrics_sum(m, TH_M_REQUEST_SECONDS, 0, NULL) == 2); /* histograms: counts */
    TH_CHECK(th_metrics_sum(NULL, TH_M_CHARS, 0, NULL) == 0);
    th_metrics_free(m);
}

TH_TEST_MAIN()
