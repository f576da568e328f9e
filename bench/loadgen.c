/* loadgen: an open-loop HTTP/1.1 load generator for latency at a fixed rate (wrk2 is not in Debian).
 *
 * Requests are due at fixed intervals (1/rate per target); each due request takes a free keep-alive
 * connection of its target, or waits for one. With several targets the requests are interleaved (target
 * k's schedule is offset by k/n of its interval), so all targets see the same moments of the machine: on a
 * virtual machine whose scheduling pauses reach milliseconds, "added latency" is only meaningful as the
 * difference of two targets measured side by side. Two latencies are kept: from the send (p50_ms,
 * p99_ms) and from the due time (due_p50_ms, due_p99_ms: no coordinated omission, but it includes the
 * generator's own wake-up lateness, late_*_ms). Bodies are a ttsfm form with a per-request counter, so
 * no two inputs are the same.
 *
 * usage: loadgen HOST RATE CONNS SECONDS PORT/PATH[@RATE] [PORT/PATH[@RATE] ...]
 *        (RATE and CONNS per target; a target's own @RATE overrides the common one); LOADGEN_AUTH in the
 *        environment adds an Authorization header with that value
 * prints, per target: target=PORT/PATH late_p50_ms=.. late_p99_ms=.. due_p50_ms=.. due_p99_ms=.. sent=N
 *         ok=N bad=N rate=R p50_ms=.. p90_ms=.. p99_ms=.. max_ms=.. */
#include <arpa/inet.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/str.h"

#define MAX_CONNS 256
#define MAX_TARGETS 4
#define RBUF 65536

typedef struct lconn {
    int fd;
    bool busy;
    bool done;
    uint64_t due_ns;
    uint64_t sent_ns;
    http_parser hp;
    int status;
} lconn;

typedef struct target {
    const char *spec; /* PORT/PATH as given */
    char path[256];
    char host[64];
    lconn conns[MAX_CONNS];
    int next_free;
    uint64_t *lat;  /* ns from the send */
    uint64_t *dlat; /* ns from the due time */
    size_t nlat;
    uint64_t *late; /* ns the send came after its due time */
    size_t nlate;
    size_t cap; /* of each of the three arrays */
    uint64_t ok, bad, sent;
    uint64_t interval, next_due; /* ns */
} target;

typedef struct lg {
    target t[MAX_TARGETS];
    int ntargets;
    int nconns; /* per target */
    unsigned long seq;
    unsigned long seed;
} lg;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_headers_complete(http_parser *p)
{
    ((lconn *)p->data)->status = (int)p->status_code;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    ((lconn *)p->data)->done = true;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

static int connect_to(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_req(lg *g, target *tg, lconn *c, uint64_t due)
{
    char body[256], req[1024];
    /* LOADGEN_AUTH: an Authorization header value (e.g. "Bearer KEY"), for hubs with auth on */
    const char *auth = getenv("LOADGEN_AUTH");
    bool has_auth = auth != NULL && auth[0] != '\0' && strlen(auth) < 256 && strpbrk(auth, "\r\n") == NULL;
    int bl = snprintf(body, sizeof body,
                      "input=Hello+from+the+ttshub+benchmark.+%lu-%lu&voice=alloy&response_format=mp3",
                      g->seed, ++g->seq);
    int rl = snprintf(req, sizeof req,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      "%s%s%sContent-Length: %d\r\n\r\n%s",
                      tg->path, tg->host, has_auth ? "Authorization: " : "", has_auth ? auth : "",
                      has_auth ? "\r\n" : "", bl, body);
    if (rl <= 0 || (size_t)rl >= sizeof req) return -1;
    if (send(c->fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) return -1;
    c->busy = true;
    c->done = false;
    c->status = 0;
    c->due_ns = due;
    c->sent_ns = now_ns();
    if (tg->nlate < tg->cap) tg->late[tg->nlate++] = c->sent_ns - due;
    http_parser_init(&c->hp, HTTP_RESPONSE);
    c->hp.data = c;
    tg->sent++;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double p)
{
    if (n == 0) return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static int arg_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    return th_strn_to_i64(s, strlen(s), lo, hi, out);
}

/* "PORT/PATH[@RATE]" -> target (connections opened later); *rate is left alone without @RATE */
static int target_parse(target *tg, const char *host, const char *spec, int64_t *rate)
{
    const char *slash = strchr(spec, '/'), *at = strchr(spec, '@');
    int64_t port;
    if (!slash || th_strn_to_i64(spec, (size_t)(slash - spec), 1, 65535, &port) != 0) return -1;
    if (at && (at < slash || arg_int(at + 1, 1, 10000000, rate) != 0)) return -1;
    tg->spec = spec;
    snprintf(tg->path, sizeof tg->path, "%.*s", (int)(at ? at - slash : (ptrdiff_t)strlen(slash)), slash);
    snprintf(tg->host, sizeof tg->host, "%s:%d", host, (int)port);
    return (int)port;
}

/* a free connection of the target, round robin, or NULL */
static lconn *target_free_conn(target *tg, int nconns)
{
    for (int k = 0; k < nconns; k++) {
        int i = (tg->next_free + k) % nconns;
        if (!tg->conns[i].busy) {
            tg->next_free = (i + 1) % nconns;
            return &tg->conns[i];
        }
    }
    return NULL;
}

static void target_report(target *tg, double wall)
{
    qsort(tg->lat, tg->nlat, sizeof *tg->lat, cmp_u64);
    qsort(tg->late, tg->nlate, sizeof *tg->late, cmp_u64);
    qsort(tg->dlat, tg->nlat, sizeof *tg->dlat, cmp_u64);
    printf("target=%s late_p50_ms=%.3f late_p99_ms=%.3f due_p50_ms=%.3f due_p99_ms=%.3f ", tg->spec,
           pct(tg->late, tg->nlate, 0.5), pct(tg->late, tg->nlate, 0.99), pct(tg->dlat, tg->nlat, 0.5),
           pct(tg->dlat, tg->nlat, 0.99));
    printf("sent=%llu ok=%llu bad=%llu rate=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
           (unsigned long long)tg->sent, (unsigned long long)tg->ok, (unsigned long long)tg->bad,
           (double)tg->sent / wall, pct(tg->lat, tg->nlat, 0.5), pct(tg->lat, tg->nlat, 0.9),
           pct(tg->lat, tg->nlat, 0.99), tg->nlat ? (double)tg->lat[tg->nlat - 1] / 1e6 : 0.0);
}

int main(int argc, char **argv)
{
    int64_t rate, nconns, secs;
    if (argc < 6 || argc - 5 > MAX_TARGETS || arg_int(argv[2], 1, 10000000, &rate) ||
        arg_int(argv[3], 1, MAX_CONNS, &nconns) || arg_int(argv[4], 1, 3600, &secs)) {
        fprintf(stderr, "usage: loadgen HOST RATE CONNS SECONDS PORT/PATH [PORT/PATH ...] (at most %d)\n",
                MAX_TARGETS);
        return 2;
    }
    lg *g = calloc(1, sizeof *g);
    if (!g) return 1;
    g->seed = (unsigned long)now_ns();
    g->ntargets = argc - 5;
    g->nconns = (int)nconns;
    int ep = epoll_create1(0);
    if (ep < 0) return 1;
    for (int ti = 0; ti < g->ntargets; ti++) {
        target *tg = &g->t[ti];
        int64_t trate = rate;
        int port = target_parse(tg, argv[1], argv[5 + ti], &trate);
        if (port < 0) {
            fprintf(stderr, "loadgen: bad target %s (PORT/PATH)\n", argv[5 + ti]);
            return 2;
        }
        tg->cap = (size_t)(trate * secs) + 16;
        tg->interval = 1000000000ull / (uint64_t)trate;
        tg->lat = malloc(tg->cap * sizeof *tg->lat);
        tg->dlat = malloc(tg->cap * sizeof *tg->dlat);
        tg->late = malloc(tg->cap * sizeof *tg->late);
        if (!tg->lat || !tg->dlat || !tg->late) return 1;
        for (int i = 0; i < g->nconns; i++) {
            lconn *c = &tg->conns[i];
            c->fd = connect_to(argv[1], port);
            if (c->fd < 0) {
                fprintf(stderr, "loadgen: cannot connect to %s: %s\n", tg->host, strerror(errno));
                return 1;
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(ti * MAX_CONNS + i)};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        }
    }
    char *rbuf = malloc(RBUF);
    if (!rbuf) return 1;
    /* each target its own schedule, target k offset by k/n of its interval so the targets interleave */
    uint64_t start = now_ns(), end = start + (uint64_t)secs * 1000000000ull;
    for (int ti = 0; ti < g->ntargets; ti++)
        g->t[ti].next_due = start + g->t[ti].interval * (uint64_t)ti / (uint64_t)g->ntargets;
    for (;;) {
        uint64_t t = now_ns();
        /* send every request that is due, while its target has a free connection; find the next wake-up */
        bool any_due = false, any_busy = false, starved = false;
        uint64_t wake = UINT64_MAX;
        for (int ti = 0; ti < g->ntargets; ti++) {
            target *tg = &g->t[ti];
            while (tg->next_due <= t && tg->next_due < end) {
                lconn *c = target_free_conn(tg, g->nconns);
                if (!c) { /* all busy: it stays due (its latency keeps growing) */
                    starved = true;
                    break;
                }
                if (send_req(g, tg, c, tg->next_due) != 0) {
                    tg->bad++;
                    c->busy = false;
                }
                tg->next_due += tg->interval;
            }
            if (tg->next_due < end) {
                any_due = true;
                if (tg->next_due < wake) wake = tg->next_due;
            }
            for (int k = 0; k < g->nconns; k++)
                any_busy |= tg->conns[k].busy;
        }
        if (!any_due && !any_busy) break;
        if (t > end + 10000000000ull) break; /* 10 s grace for the last answers */
        /* sleep until the next due time with nanosecond resolution (a ms timeout would spin) */
        uint64_t wait_ns = 100000000ull;
        if (any_due && wake > t) wait_ns = wake - t;
        if (starved) wait_ns = 1000000ull; /* due but no free connection: an answer or 1 ms */
        struct timespec ts = {(time_t)(wait_ns / 1000000000ull), (long)(wait_ns % 1000000000ull)};
        struct epoll_event evs[64];
        int n = epoll_pwait2(ep, evs, 64, &ts, NULL);
        for (int e = 0; e < n; e++) {
            target *tg = &g->t[evs[e].data.u32 / MAX_CONNS];
            lconn *c = &tg->conns[evs[e].data.u32 % MAX_CONNS];
            ssize_t r = recv(c->fd, rbuf, RBUF, 0);
            if (r <= 0 || !c->busy) {
                fprintf(stderr, "loadgen: connection to %s lost\n", tg->host);
                return 1;
            }
            http_parser_execute(&c->hp, &settings, rbuf, (size_t)r);
            enum http_errno he = HTTP_PARSER_ERRNO(&c->hp);
            if (he != HPE_OK && he != HPE_PAUSED) {
                fprintf(stderr, "loadgen: bad response from %s: %s\n", tg->host, http_errno_name(he));
                return 1;
            }
            if (c->done) {
                uint64_t tn = now_ns();
                if (tg->nlat < tg->cap) {
                    tg->dlat[tg->nlat] = tn - c->due_ns;
                    tg->lat[tg->nlat++] = tn - c->sent_ns;
                }
                if (c->status == 200)
                    tg->ok++;
                else
                    tg->bad++;
                c->busy = false;
            }
        }
    }
    double wall = (double)(now_ns() - start) / 1e9;
    for (int ti = 0; ti < g->ntargets; ti++)
        target_report(&g->t[ti], wall);
    return 0;
}
