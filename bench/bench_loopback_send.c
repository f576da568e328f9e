/* bench_loopback_send: what it costs a sender's CPU to push a request body of N bytes through loopback TCP,
 * written from memory (write, as the hub's HTTP client does with writev) against sendfile(2) from a memfd
 * (no copy from user memory into the socket). A child on CPU 1 reads and drops everything; the sender runs
 * on CPU 0 and counts its own utime+stime (on loopback the receiving side's TCP work runs in the sender's
 * context too). Modes alternate, ROUNDS times each; medians.
 *
 *   bench_loopback_send [BYTES=179000] [ITERS=5000] [ROUNDS=3]
 *
 * The last line is machine-readable: RESULT bytes=<n> write_us=<x> sendfile_us=<x> */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/str.h"

static double cpu_s(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return (double)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (double)(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    (void)sched_setaffinity(0, sizeof s, &s);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One body, whole: 0, or -1 when the socket failed. */
static int send_body(int fd, const uint8_t *buf, int mfd, size_t n, int mode)
{
    if (mode == 0) {
        for (size_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, n - off);
            if (w <= 0) return -1;
            off += (size_t)w;
        }
        return 0;
    }
    for (off_t o = 0; (size_t)o < n;)
        if (sendfile(fd, mfd, &o, n - (size_t)o) <= 0) return -1;
    return 0;
}

static long arg(int argc, char **argv, int i, long def)
{
    int64_t v;
    return argc > i && th_str_to_i64(argv[i], 1, 1L << 40, &v) == 0 ? (long)v : def;
}

int main(int argc, char **argv)
{
    size_t n = (size_t)arg(argc, argv, 1, 179000);
    long iters = arg(argc, argv, 2, 5000), rounds = arg(argc, argv, 3, 3);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) != 0) {
        perror("listen");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        pin(1);
        int c = accept(ls, NULL, NULL);
        static uint8_t sink[1 << 20];
        while (c >= 0 && read(c, sink, sizeof sink) > 0) {
        }
        _exit(0);
    }
    pin(0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint8_t *buf = malloc(n);
    int mfd = memfd_create("bench", MFD_CLOEXEC);
    if (fd < 0 || buf == NULL || mfd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        perror("setup");
        kill(child, SIGTERM);
        return 1;
    }
    uint32_t x = 2463534242u; /* incompressible bytes, as a FLAC body is */
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (uint8_t)x;
    }
    if (write(mfd, buf, n) != (ssize_t)n) return 1;
    double *res[2] = {calloc((size_t)rounds, sizeof(double)), calloc((size_t)rounds, sizeof(double))};
    if (res[0] == NULL || res[1] == NULL) return 1;
    for (long r = 0; r < rounds; r++) {
        for (int mode = 0; mode < 2; mode++) {
            double t0 = cpu_s();
            for (long i = 0; i < iters; i++)
                if (send_body(fd, buf, mfd, n, mode) != 0) {
                    perror("send");
                    return 1;
                }
            res[mode][r] = (cpu_s() - t0) / (double)iters * 1e6;
            printf("round %ld %-8s %8.1f us CPU per %zu-byte body\n", r + 1, mode ? "sendfile" : "write", res[mode][r],
                   n);
        }
    }
    close(fd);
    waitpid(child, NULL, 0);
    qsort(res[0], (size_t)rounds, sizeof(double), cmp_double);
    qsort(res[1], (size_t)rounds, sizeof(double), cmp_double);
    printf("RESULT bytes=%zu write_us=%.1f sendfile_us=%.1f\n", n, res[0][rounds / 2], res[1][rounds / 2]);
    free(res[0]);
    free(res[1]);
    free(buf);
    return 0;
}
