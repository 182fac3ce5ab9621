/* The daemon: loads state, runs every consumer on one loop, commits cursors
 * and shuts down cleanly on SIGTERM/SIGINT. */
#ifndef TETHER_DAEMON_DAEMON_H
#define TETHER_DAEMON_DAEMON_H

#include "daemon/config.h"

/* Exit codes, as documented in the README. */
enum {
  TETHER_EXIT_OK = 0,
  TETHER_EXIT_RUNTIME = 1, /* a runtime failure: state file, sink, commit */
  TETHER_EXIT_USAGE = 2,   /* a bad command line or configuration */
};

/* Runs cfg (borrowed) until a signal or, with exit_when_done, until every
 * source is done. Returns an exit code. */
int daemon_run(const config *cfg);

#endif
