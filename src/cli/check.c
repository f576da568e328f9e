/* check: `ttshub check -c FILE` validates a config file and prints every error with its YAML path. */
#include "cli/cli.h"

#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: ttshub check -c FILE   (or --config FILE, or TTSHUB_CONFIG=FILE)\n"
               "  prints every error as FILE:LINE: path: message; exit 0 when the file is valid\n");
}

int th_cli_check(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ttshub check: %s needs a file\n", a);
                usage(stderr);
                return 2;
            }
            path = argv[++i];
        } else if (strncmp(a, "--config=", 9) == 0) {
            path = a + 9;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "ttshub check: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (path == NULL || path[0] == 0) path = getenv("TTSHUB_CONFIG");
    if (path == NULL || path[0] == 0) {
        usage(stderr);
        return 2;
    }

    th_config_errors errs = {0};
    th_config *cfg = th_config_load(path, &errs);
    if (cfg != NULL) {
        printf("%s: ok\n", path);
        printf("%zu provider%s, listen %s\n", cfg->n_providers, cfg->n_providers == 1 ? "" : "s",
               cfg->listen);
        th_config_unref(cfg);
        th_config_errors_free(&errs);
        return 0;
    }
    for (size_t i = 0; i < errs.n; i++) {
        const th_config_error *e = &errs.items[i];
        char where[32] = "";
        if (e->line > 0) snprintf(where, sizeof where, ":%d", e->line);
        fprintf(stderr, "%s%s: %s%s%s\n", path, where, e->path, e->path[0] ? ": " : "", e->message);
    }
    if (errs.n == 0) fprintf(stderr, "%s: cannot load the config\n", path);
    th_config_errors_free(&errs);
    return 1;
}
