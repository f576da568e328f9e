/* loadgen: an open-loop HTTP/1.1 load generator for latency at a fixed rate (wrk2 is not in Debian).
 *
 * Requests are due at fixed intervals (1/rate); each due request takes a free keep-alive connection, or
 * waits for one. Two latencies are kept: from the send (p50_ms, p99_ms) and from the due time
 * (due_p50_ms, due_p99_ms: no coordinated omission, but it includes the generator's own wake-up
 * lateness, late_*_ms, which on a virtual machine can reach milliseconds). Bodies are a ttsfm form with
 * a per-request counter, so no two inputs are the same.
 *
 * usage: loadgen HOST PORT PATH RATE CONNS SECONDS
 * prints: late_p50_ms=.. late_p99_ms=.. due_p50_ms=.. due_p99_ms=.. sent=N ok=N bad=N rate=R p50_ms=..
 *         p90_ms=.. p99_ms=.. max_ms=.. */
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

typedef struct lg {
    lconn conns[MAX_CONNS];
    int nconns;
    uint64_t *lat;  /* ns from the send */
    uint64_t *dlat; /* ns from the due time */
    size_t nlat, caplat;
    uint64_t ok, bad, sent;
    uint64_t *late; /* ns the send came after its due time */
    size_t nlate;
    char path[256];
    char host[64];
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

static int send_req(lg *g, lconn *c, uint64_t due)
{
    char body[256], req[1024];
    int bl = snprintf(body, sizeof body,
                      "input=Hello+from+the+ttshub+benchmark.+%lu-%lu&voice=alloy&response_format=mp3",
                      g->seed, ++g->seq);
    int rl = snprintf(req, sizeof req,
                      "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      "Content-Length: %d\r\n\r\n%s",
                      g->path, g->host, bl, body);
    if (rl <= 0 || (size_t)rl >= sizeof req) return -1;
    if (send(c->fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) return -1;
    c->busy = true;
    c->done = false;
    c->status = 0;
    c->due_ns = due;
    c->sent_ns = now_ns();
    if (g->nlate < g->caplat) g->late[g->nlate++] = c->sent_ns - due;
    http_parser_init(&c->hp, HTTP_RESPONSE);
    c->hp.data = c;
    g->sent++;
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

int main(int argc, char **argv)
{
    int64_t port, rate, nconns, secs;
    if (argc != 7 || arg_int(argv[2], 1, 65535, &port) || arg_int(argv[4], 1, 10000000, &rate) ||
        arg_int(argv[5], 1, MAX_CONNS, &nconns) || arg_int(argv[6], 1, 3600, &secs)) {
        fprintf(stderr, "usage: loadgen HOST PORT PATH RATE CONNS SECONDS\n");
        return 2;
    }
    lg *g = calloc(1, sizeof *g);
    if (!g) return 1;
    snprintf(g->path, sizeof g->path, "%s", argv[3]);
    snprintf(g->host, sizeof g->host, "%s:%d", argv[1], (int)port);
    g->seed = (unsigned long)now_ns();
    g->caplat = (size_t)(rate * secs) + 16;
    g->lat = malloc(g->caplat * sizeof *g->lat);
    g->late = malloc(g->caplat * sizeof *g->late);
    g->dlat = malloc(g->caplat * sizeof *g->dlat);
    if (!g->late || !g->dlat) return 1;
    int ep = epoll_create1(0);
    if (!g->lat || ep < 0) return 1;
    for (int i = 0; i < nconns; i++) {
        lconn *c = &g->conns[i];
        c->fd = connect_to(argv[1], (int)port);
        if (c->fd < 0) {
            fprintf(stderr, "loadgen: cannot connect: %s\n", strerror(errno));
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    g->nconns = (int)nconns;
    char *rbuf = malloc(RBUF);
    if (!rbuf) return 1;
    uint64_t interval = 1000000000ull / (uint64_t)rate;
    uint64_t start = now_ns(), end = start + (uint64_t)secs * 1000000000ull;
    uint64_t next_due = start;
    int next_free = 0;
    for (;;) {
        uint64_t t = now_ns();
        /* send every request that is due, while connections are free */
        while (next_due <= t && next_due < end) {
            lconn *c = NULL;
            for (int k = 0; k < g->nconns; k++) {
                lconn *cand = &g->conns[(next_free + k) % g->nconns];
                if (!cand->busy) {
                    c = cand;
                    next_free = (int)((cand - g->conns) + 1) % g->nconns;
                    break;
                }
            }
            if (!c) break; /* all busy: it stays due (its latency keeps growing) */
            if (send_req(g, c, next_due) != 0) {
                g->bad++;
                c->busy = false;
            }
            next_due += interval;
        }
        bool any_busy = false;
        for (int k = 0; k < g->nconns; k++)
            any_busy |= g->conns[k].busy;
        if (next_due >= end && !any_busy) break;
        if (t > end + 10000000000ull) break; /* 10 s grace for the last answers */
        /* sleep until the next due time with nanosecond resolution (a ms timeout would spin) */
        uint64_t wait_ns = 0;
        if (next_due > t && next_due < end) wait_ns = next_due - t;
        if (next_due >= end) wait_ns = 100000000ull;
        if (next_due <= t && next_due < end) wait_ns = 1000000ull; /* due but no free connection */
        struct timespec ts = {(time_t)(wait_ns / 1000000000ull), (long)(wait_ns % 1000000000ull)};
        struct epoll_event evs[64];
        int n = epoll_pwait2(ep, evs, 64, &ts, NULL);
        for (int e = 0; e < n; e++) {
            lconn *c = &g->conns[evs[e].data.u32];
            ssize_t r = recv(c->fd, rbuf, RBUF, 0);
            if (r <= 0 || !c->busy) {
                fprintf(stderr, "loadgen: connection lost\n");
                return 1;
            }
            http_parser_execute(&c->hp, &settings, rbuf, (size_t)r);
            enum http_errno he = HTTP_PARSER_ERRNO(&c->hp);
            if (he != HPE_OK && he != HPE_PAUSED) {
                fprintf(stderr, "loadgen: bad response: %s\n", http_errno_name(he));
                return 1;
            }
            if (c->done) {
                uint64_t tn = now_ns();
                if (g->nlat < g->caplat) {
                    g->dlat[g->nlat] = tn - c->due_ns;
                    g->lat[g->nlat++] = tn - c->sent_ns;
                }
                if (c->status == 200)
                    g->ok++;
                else
                    g->bad++;
                c->busy = false;
            }
        }
    }
    double wall = (double)(now_ns() - start) / 1e9;
    qsort(g->lat, g->nlat, sizeof *g->lat, cmp_u64);
    qsort(g->late, g->nlate, sizeof *g->late, cmp_u64);
    qsort(g->dlat, g->nlat, sizeof *g->dlat, cmp_u64);
    printf("late_p50_ms=%.3f late_p99_ms=%.3f due_p50_ms=%.3f due_p99_ms=%.3f ", pct(g->late, g->nlate, 0.5),
           pct(g->late, g->nlate, 0.99), pct(g->dlat, g->nlat, 0.5), pct(g->dlat, g->nlat, 0.99));
    printf("sent=%llu ok=%llu bad=%llu rate=%.0f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
           (unsigned long long)g->sent, (unsigned long long)g->ok, (unsigned long long)g->bad,
           (double)g->sent / wall, pct(g->lat, g->nlat, 0.5), pct(g->lat, g->nlat, 0.9),
           pct(g->lat, g->nlat, 0.99), g->nlat ? (double)g->lat[g->nlat - 1] / 1e6 : 0.0);
    return 0;
}
