/* Sink types: where a consumer's events go.
 *
 * A sink receives batches of NDJSON envelope lines, one batch at a time, and
 * reports an outcome for each: delivered, retry or fatal. It never retries by
 * itself; the consumer owns retries and backoff (STYLE rule 13).
 *
 * Durability: a sink whose delivery is not yet durable when write() reports
 * it (a file in the page cache) makes it durable in sync(). The flusher calls
 * sync() before it commits a cursor that covers the data, so a committed
 * cursor is never ahead of what the sink holds.
 */
#ifndef TETHER_DAEMON_SINK_H
#define TETHER_DAEMON_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/options.h"

typedef struct sink sink;
typedef struct sink_type sink_type;

/* What becomes of an event the sink cannot deliver: the [consumer] keys
 * max_attempts and on_fail, parsed once by the configuration. */
typedef enum sink_on_fail {
  SINK_ON_FAIL_RETRY,       /* go on trying, with a warning */
  SINK_ON_FAIL_SKIP,        /* give up on it, with an error in the log */
  SINK_ON_FAIL_DEAD_LETTER, /* give up once its record is durable in the
                               dead-letter file (daemon/dead_letter.h) */
} sink_on_fail;

typedef struct sink_policy {
  int64_t max_attempts; /* failed attempts before on_fail; 0 = never */
  sink_on_fail on_fail;
  const char *dead_letter; /* the file's path for SINK_ON_FAIL_DEAD_LETTER,
                              else NULL */
} sink_policy;

/* How a sink that acknowledges events one by one (exec, socket) reports to
 * its consumer, which fills this in after open. Every call runs on the
 * loop thread. */
typedef struct sink_report {
  /* Events first..last (inclusive) are delivered: any order, any range
   * inside what was accepted; a repeat is harmless. */
  void (*delivered)(sink *s, uint64_t first, uint64_t last, void *data);
  /* The sink gave up on events first..last (on_fail = skip, or their
   * dead-letter records are durable): the cursor passes them, and the
   * source learns they were refused, not delivered. why (borrowed for the
   * call) is the last failure. */
  void (*gave_up)(sink *s, uint64_t first, uint64_t last, const char *why,
                  void *data);
  /* The sink cannot go on, as a SINK_FATAL outcome would say. */
  void (*failed)(sink *s, const char *why, void *data);
  /* A state of the sink's own for the status and the log, such as
   * "waiting_for_reader"; NULL when it is back to normal. */
  void (*state)(sink *s, const char *state, void *data);
  void *data;
} sink_report;

/* Counters a sink keeps of its own, for the status and /metrics. */
typedef struct sink_stats {
  uint64_t write_errors;  /* writes that failed (what they held comes again) */
  uint64_t redelivered;   /* events sent again: a retry answer, a timeout, a
                             subscriber or handler that went away */
  uint64_t failed;        /* events given up on (on_fail = skip/dead_letter) */
  uint64_t dead_lettered; /* of those, kept in the dead-letter file */
} sink_stats;

struct sink {
  const sink_type *type;
  sink_report report; /* set by the consumer after open */
};

typedef struct sink_batch {
  const char *data; /* whole lines, each ending in '\n'; borrowed until cb */
  size_t len;
  uint64_t first_seq, last_seq;
} sink_batch;

typedef enum sink_outcome {
  SINK_DELIVERED, /* every line of the batch is delivered */
  SINK_ACCEPTED,  /* the sink holds the batch (copied) and reports each
                     event through report.delivered; send the next one */
  SINK_RETRY,     /* nothing of the batch is delivered; try again later */
  SINK_FATAL,     /* the sink cannot go on; the consumer fails */
} sink_outcome;

/* msg says why for RETRY and FATAL; borrowed for the call. */
typedef void (*sink_write_cb)(sink *s, sink_outcome outcome, const char *msg,
                              void *data);
/* status is 0, or a negative errno with msg saying why, or
 * SINK_EREMOVED. */
typedef void (*sink_sync_cb)(sink *s, int status, const char *msg, void *data);

/* A sync's status when the file the sink wrote was removed (not renamed):
 * what it held since the last commit exists nowhere, so the cursor must not
 * pass it. The sink has opened a new file at its path by then, and the
 * consumer delivers again everything after its committed cursor. Apart
 * from the errno range on purpose. Only a sink that reports whole batches
 * delivered (not one by one) may report it. */
#define SINK_EREMOVED (-31001)
/* The sink is freed when this returns. */
typedef void (*sink_close_cb)(void *data);

struct sink_type {
  const char *name;        /* as written before the colon in `sink =` */
  const char *description; /* one line */
  const option *options;   /* this type's keys in a [consumer] section */
  size_t conf_size;
  const char *arg; /* NULL: takes no argument; else its name ("PATH") */

  /* Cross-option checks; see source_type.check. May be NULL. */
  int (*check)(void *conf, const char *arg, uint64_t explicit, char *err,
               size_t errlen);

  /* Whether the sink applies the policy itself, to each event (exec,
   * socket), reporting what it gives up on through report.gave_up. When
   * false, the consumer applies it to each batch the sink keeps failing
   * (SINK_RETRY), max_attempts failed writes of that batch being the
   * attempts. */
  bool per_event_policy;

  /* Opens the sink. arg, conf and policy are borrowed for the sink's life;
   * a NULL policy never gives up. */
  int (*open)(uv_loop_t *loop, const char *arg, const void *conf,
              const sink_policy *policy, const char *consumer_name, sink **out,
              char *err, size_t errlen);

  /* Delivers one batch; cb runs exactly once, on the loop thread. Only one
   * write is outstanding at a time. */
  void (*write)(sink *s, const sink_batch *b, sink_write_cb cb, void *data);

  /* Makes everything reported delivered before this call durable; cb runs
   * exactly once. Only one sync is outstanding at a time. */
  void (*sync)(sink *s, sink_sync_cb cb, void *data);

  /* Reopens files after they were moved (SIGHUP, for logrotate). May be
   * NULL. */
  void (*reopen)(sink *s);

  /* Closes the sink once outstanding work is done; every pending cb runs
   * first. cb runs exactly once, after which the sink is freed. */
  void (*close)(sink *s, sink_close_cb cb, void *data);

  /* Adds the sink's own counters to out. May be NULL (none). */
  void (*stats)(const sink *s, sink_stats *out);
};

#endif
