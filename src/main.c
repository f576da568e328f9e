/* ttshub: subcommand dispatch only. */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("ttshub %s\n", TH_VERSION);
        return 0;
    }
    fprintf(stderr, "usage: ttshub serve|worker|say|check|help\n");
    return 2;
}
