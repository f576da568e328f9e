/* fake_proc: starts one Python engine fake (tests/e2e/fakes) for a C test and stops it.
 *
 *   fake_proc f;
 *   if (fake_start(&f, "openai", "--latency 0") != 0) ...;   // f.port, f.url
 *   fake_ctl(&f, "{\"fault\":\"status_500\",\"count\":1}");      // POST /__fake/fault
 *   fake_stop(&f);
 */
#ifndef TH_TEST_FAKE_PROC_H
#define TH_TEST_FAKE_PROC_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct fake_proc {
    pid_t pid;
    int port;
    char url[64];
} fake_proc;

/* extra: more CLI arguments, space-separated (no quoting), or "" */
__attribute__((unused)) static int fake_start(fake_proc *f, const char *kind, const char *extra)
{
    int pipefd[2];
    if (pipe(pipefd) != 0) return -1;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd tests/e2e && exec /usr/bin/python3 -m fakes.engines --kind %s --port 0 %s",
             kind, extra ? extra : "");
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(pipefd[1], 1);
        close(pipefd[0]);
        close(pipefd[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(pipefd[1]);
    FILE *in = fdopen(pipefd[0], "r");
    if (in == NULL) return -1;
    char line[128];
    f->pid = pid;
    f->port = 0;
    while (fgets(line, sizeof line, in)) {
        if (strncmp(line, "READY ", 6) == 0) {
            f->port = (int)strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(in);
    if (f->port <= 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    snprintf(f->url, sizeof f->url, "http://127.0.0.1:%d", f->port);
    return 0;
}

/* POST a JSON body to /__fake/fault (or another control path when path is given). */
__attribute__((unused)) static int fake_ctl_path(fake_proc *f, const char *path, const char *json)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "curl -s -o /dev/null -w '%%{http_code}' -X POST -H 'Content-Type: application/json' -d '%s' "
             "%s%s | grep -q 200",
             json, f->url, path);
    return system(cmd) == 0 ? 0 : -1;
}

__attribute__((unused)) static int fake_ctl(fake_proc *f, const char *json)
{
    return fake_ctl_path(f, "/__fake/fault", json);
}

__attribute__((unused)) static void fake_stop(fake_proc *f)
{
    if (f->pid > 0) {
        kill(f->pid, SIGTERM);
        waitpid(f->pid, NULL, 0);
        f->pid = 0;
    }
}

#endif
