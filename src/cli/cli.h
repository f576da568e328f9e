/* cli: the `ttshub` subcommands that live in src/cli/ (one .c each). */
#ifndef TH_CLI_CLI_H
#define TH_CLI_CLI_H

/** `ttshub check -c FILE` (or --config FILE, or $TTSHUB_CONFIG): validates a config file.
 * argv[0] is "check". Prints "FILE: ok" and a summary line to stdout and returns 0; or prints every
 * error as "FILE:LINE: path: message" to stderr and returns 1; returns 2 on a usage error. */
int th_cli_check(int argc, char **argv);

#endif
