/* say: `ttshub say`, a client of a hub's /api/generate. */
#ifndef TH_CLI_SAY_H
#define TH_CLI_SAY_H

/** argv[0] is "say". Returns the process exit code. */
int th_cli_say(int argc, char **argv);

#endif
