/* redis_proc: starts a real redis-server child on a loopback port for a C test and kills it by PID.
 *
 *   rp_server s = {.debug_command = true};          // port 0: a free one is picked; .pass: requirepass
 *   if (rp_start(&s) != 0) ...;                      // s.port answers PING (no redis-server: -1)
 *   th_redis *r = rp_connect(&loop, s.port);         // a client, connected (or NULL / not yet after ~2 s)
 *   rp_kill(&s);                                     // SIGKILL; rp_start(&s) again restarts on s.port
 *
 * The server runs with --save "" --appendonly no (nothing written to disk), its output to /dev/null.
 */
#ifndef TH_TEST_REDIS_PROC_H
#define TH_TEST_REDIS_PROC_H

#include "core/clock.h"
#include "store/redis.h"
#include "hub_loop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RP_REDIS_SERVER "/usr/bin/redis-server"

typedef struct rp_server {
    pid_t pid;
    int port;           /* 0: rp_start picks a free one */
    const char *pass;   /* --requirepass, or NULL */
    bool debug_command; /* --enable-debug-command yes (DEBUG SLEEP...) */
} rp_server;

/* A free loopback TCP port (bound then released), or -1. */
__attribute__((unused)) static int rp_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

__attribute__((unused)) static void rp_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* One try on s->port: 0 once it answers PING (PONG, or NOAUTH with requirepass), -1 when the child exits
 * (e.g. the port is taken) or does not answer within 5 s. */
__attribute__((unused)) static int rp_start_once(rp_server *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int dn = open("/dev/null", O_RDWR);
        if (dn >= 0) {
            dup2(dn, 1);
            dup2(dn, 2);
        }
        const char *argv[16] = {"redis-server", "--port", port,           "--bind", "127.0.0.1",
                                "--save",       "",       "--appendonly", "no"};
        int n = 9;
        if (s->debug_command) {
            argv[n++] = "--enable-debug-command";
            argv[n++] = "yes";
        }
        if (s->pass) {
            argv[n++] = "--requirepass";
            argv[n++] = s->pass;
        }
        argv[n] = NULL;
        execv(RP_REDIS_SERVER, (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    uint64_t deadline = th_mono_ms() + 5000;
    while (th_mono_ms() < deadline) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            s->pid = 0;
            return -1;
        }
        struct timeval tv = {0, 200000};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
        if (c != NULL && c->err == 0) {
            redisReply *r = redisCommand(c, "PING");
            bool up = r != NULL && (r->type == REDIS_REPLY_STATUS || s->pass != NULL);
            if (r) freeReplyObject(r);
            redisFree(c);
            if (up) return 0;
        } else if (c != NULL) {
            redisFree(c);
        }
        rp_sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    s->pid = 0;
    return -1;
}

/* Starts redis-server on s->port (a free one when 0, retried on another free one if it is taken
 * meanwhile) and waits until it answers PING. -1 when redis-server is missing or does not come up. */
__attribute__((unused)) static int rp_start(rp_server *s)
{
    if (access(RP_REDIS_SERVER, X_OK) != 0) return -1;
    bool pick = s->port == 0;
    for (int attempt = 0; attempt < (pick ? 5 : 1); attempt++) {
        if (pick) s->port = rp_free_port();
        if (s->port <= 0) return -1;
        if (rp_start_once(s) == 0) return 0;
    }
    return -1;
}

/* SIGKILL by PID and reap; a no-op when not running. */
__attribute__((unused)) static void rp_kill(rp_server *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

/* A th_redis client of redis://127.0.0.1:port/0 (500 ms timeout); waits up to 400 x 5 ms for it to connect.
 */
__attribute__((unused)) static th_redis *rp_connect(uv_loop_t *loop, int port)
{
    char url[64], err[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    th_redis *r = th_redis_new(loop, url, 500, NULL, err, sizeof err);
    if (r == NULL) return NULL;
    for (int i = 0; i < 400 && !th_redis_connected(r); i++)
        hl_run_until_set(loop, NULL, 5);
    return r;
}

#endif
