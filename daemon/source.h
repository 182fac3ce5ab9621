/* Source types: where a consumer's events come from.
 *
 * A source type is a registration struct with an option table (STYLE rule
 * 12). An instance is a struct whose first member is `source`; the consumer
 * holds it through that base and never sees the rest. docs/sources.md walks
 * through writing one; this header is the contract.
 *
 * Life of an instance:
 *
 *   start        creates it from the committed cursor (source_resume) and
 *                begins producing: consumer_emit() while consumer_room() > 0.
 *   on_room      the window has room again. A full window, a pause, a held
 *                flusher and a stopped intake all read as room 0; a source
 *                with no room stops reading (or polling) and waits for this.
 *   on_settled   what became of events it emitted, in ranges, in any order:
 *                delivered, gave up or abandoned (source_outcome).
 *   on_durable   a group commit covered every event up to seq (the cursor
 *                at position is in the state file). Only now may anything
 *                be told outside: an upstream ack, an offset mirror.
 *   on_intake    (optional) intake paused, resumed or stopped for good.
 *   close        closes every handle and request; consumer_source_closed()
 *                follows (at once or later), then no callback comes again.
 *
 * Two-phase stop. A drain (SIGTERM) stops intake first: the source stops
 * fetching but stays open, so the settlements of what is in flight and the
 * on_durable of the final commit still reach it; close comes after the
 * final commit. A pause stops intake the same way and keeps the source: it
 * goes on acknowledging and extending what it holds.
 *
 * THE DURABILITY RULE, here as in the flusher and in DESIGN §3: an upstream
 * acknowledgement, an offset or checkpoint mirror, anything told outside
 * about an event, happens only in on_durable, after the group commit that
 * covers the event; that commit itself follows the sink's sync (a file's
 * fdatasync). So nothing outside ever gets ahead of what the application
 * durably has, power loss included.
 *
 * Records of its own: a source may stage journal entries, outbox entries
 * and extra cursor rows through the consumer (consumer_journal_put, ...);
 * they are written in the same transaction as the cursor, so a kill -9 sees
 * both or neither, and come back in source_resume at the next start.
 */
#ifndef TETHER_DAEMON_SOURCE_H
#define TETHER_DAEMON_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/options.h"
#include "protocol/buf.h"

typedef struct consumer consumer;
typedef struct source source;
typedef struct source_type source_type;

/* A record a source staged in an earlier run, read back at start. */
typedef struct source_record {
  const char *key;   /* journal: its key; extra cursor row: its subject */
  uint64_t id;       /* outbox: its id */
  const void *value; /* journal/outbox: the bytes; cursor row: position */
  size_t len;
} source_record;

/* Where to resume, read from the state file at start-up. Everything is
 * borrowed for the start() call. */
typedef struct source_resume {
  uint64_t seq;         /* last committed sequence; 0 = nothing delivered yet */
  const char *position; /* the upstream cursor committed with it; "" = none */
  const source_record *journal; /* by key */
  size_t n_journal;
  const source_record *outbox; /* by id */
  size_t n_outbox;
  const source_record *cursors; /* extra cursor rows, by subject */
  size_t n_cursors;
} source_resume;

/* What became of an emitted event. */
typedef enum source_outcome {
  SOURCE_DELIVERED, /* the sink has it; durable once on_durable covers it */
  SOURCE_GAVE_UP,   /* the sink gave up on it (on_fail = skip or dead_letter
                       after max_attempts): the application refused it, and
                       the cursor passes it. An upstream that can be told
                       (a nack) should be, after on_durable covers it. */
  SOURCE_ABANDONED, /* this run will never deliver it: a forced stop, a sink
                       that failed for good, a rewind. The cursor does not
                       pass it; it comes again after a restart. */
} source_outcome;

extern const char *const source_outcome_names[];

typedef enum source_intake {
  SOURCE_INTAKE_ON,      /* fetch while there is room */
  SOURCE_INTAKE_PAUSED,  /* an operator's pause: room 0 until resumed */
  SOURCE_INTAKE_STOPPED, /* a drain: room 0 for good; close follows */
} source_intake;

struct source {
  const source_type *type;
  consumer *consumer;
};

struct source_type {
  const char *name;
  const char *description; /* one line, for `tether help` and the docs */
  const option *options;   /* this type's keys in a [consumer] section */
  size_t conf_size;        /* size of the struct the options fill */

  /* Checks that span several options, after each parsed on its own.
   * explicit has bit i set when options[i] was written in the file. Returns
   * 0, or UV_EINVAL with what is wrong in err. May be NULL. */
  int (*check)(void *conf, uint64_t explicit, char *err, size_t errlen);

  /* The stream name of the cursor key as it was before identities: read
   * at start to adopt a cursor kept under it. */
  const char *(*stream_name)(const void *conf);

  /* The identity of the stream the cursor is a position in, as text into
   * out: what names the stream (the upstream's URL, a collection, a
   * path), never a tuning option (page size, timeouts, intervals), so a
   * tuned configuration keeps its cursor and a different stream does not
   * inherit one. upstream_url is the upstream's url, "" for a built-in
   * source. Returns 0 or UV_ENOMEM. */
  int (*identity)(const void *conf, const char *upstream_url, buf *out);

  /* Creates an instance and starts it. conf is borrowed for the instance's
   * life. Returns 0, or a negative code with the reason in err. */
  int (*start)(consumer *c, const void *conf, const source_resume *resume,
               source **out, char *err, size_t errlen);

  /* The consumer's window has room again. */
  void (*on_room)(source *s);

  /* Events first..last (inclusive), all emitted by this instance, came to
   * outcome. Each event is settled once. May be NULL. */
  void (*on_settled)(source *s, uint64_t first, uint64_t last,
                     source_outcome outcome);

  /* The cursor up to seq, at position (borrowed for the call), is durable
   * in the state file, with every record staged before the commit. Comes
   * after every commit that covered this consumer, the final one included.
   * May be NULL. */
  void (*on_durable)(source *s, uint64_t seq, const char *position);

  /* Intake changed (see source_intake). Room is 0 whenever intake is not
   * on, so a source that only waits for on_room needs nothing more. May be
   * NULL. */
  void (*on_intake)(source *s, source_intake intake);

  /* Closes the instance; consumer_source_closed() follows once every
   * handle is closed and every request ended. */
  void (*close)(source *s);
};

#endif
