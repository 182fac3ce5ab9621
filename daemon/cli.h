/* The commands that talk to a running tether over its local API socket:
 * status, consumers, cursors and tail. */
#ifndef TETHER_DAEMON_CLI_H
#define TETHER_DAEMON_CLI_H

/* Each takes the command's own argv (argv[0] is the command name) and
 * returns an exit code: 0 ok, 1 a runtime failure (tether unreachable, an
 * error answer; status: not ready), 2 a usage error. */
int cli_status(int argc, char **argv);
int cli_consumers(int argc, char **argv);
int cli_cursors(int argc, char **argv);
int cli_tail(int argc, char **argv);

extern const char cli_usage_status[];
extern const char cli_usage_consumers[];
extern const char cli_usage_cursors[];
extern const char cli_usage_tail[];

#endif
