/* ttshub: subcommand dispatch only. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/say.h"
#include "serve/serve.h"
#include "worker/worker.h"

static void usage(FILE *f)
{
    fprintf(f,
            "ttshub %s: a text-to-speech hub\n\n"
            "usage:\n"
            "  ttshub serve [-c FILE] [--listen ADDR] [--log-level L] [--reuse-port]\n"
            "                                                           run the gateway\n"
            "  ttshub worker --engine E --gateway URL --listen ADDR --advertise URL [--engine-url URL]\n"
            "                [--capacity N]                            run an engine node (worker)\n"
            "  ttshub say [TEXT|-] [-v VOICE] [-f FORMAT] [-o FILE] [--url HUB] [--speed S]\n"
            "  ttshub check -c FILE                                     validate a config file\n"
            "  ttshub --version | help\n",
            TH_VERSION);
}

static int cmd_serve(int argc, char **argv)
{
    th_serve_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && v) {
            o.config_path = v;
            i++;
        } else if (strcmp(a, "--listen") == 0 && v) {
            o.listen = v;
            i++;
        } else if (strcmp(a, "--log-level") == 0 && v) {
            o.log_level = v;
            i++;
        } else if (strcmp(a, "--reuse-port") == 0) {
            o.reuse_port = true;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ttshub serve: unknown or incomplete option %s\n", a);
            return 2;
        }
    }
    return th_serve(&o);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "version") == 0) {
        printf("ttshub %s\n", TH_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc - 1, argv + 1);
    if (strcmp(cmd, "say") == 0) return th_cli_say(argc - 1, argv + 1);
    if (strcmp(cmd, "worker") == 0) return th_worker_main(argc - 1, argv + 1);
    if (strcmp(cmd, "check") == 0) return th_cli_check(argc - 1, argv + 1);
    fprintf(stderr, "ttshub: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
