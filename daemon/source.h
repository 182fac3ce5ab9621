/* Source types: where a consumer's events come from.
 *
 * A source type is a registration struct with an option table (STYLE rule
 * 12). An instance is a struct whose first member is `source`; the consumer
 * holds it through that base and never sees the rest.
 *
 * Life of an instance: start() creates it and begins producing into the
 * consumer with consumer_emit() while consumer_room() > 0. When the window is
 * full the source stops reading (or polling) and waits for on_room(). stop()
 * asks it to stop producing and close its handles; once they are closed it
 * calls consumer_source_closed() and frees itself.
 */
#ifndef TETHER_DAEMON_SOURCE_H
#define TETHER_DAEMON_SOURCE_H

#include <stdint.h>

#include "daemon/options.h"

typedef struct consumer consumer;
typedef struct source source;
typedef struct source_type source_type;

/* Where to resume, read from the committed cursor at start-up. */
typedef struct source_resume {
  uint64_t seq;         /* last committed sequence; 0 = nothing delivered yet */
  const char *position; /* the upstream cursor committed with it; "" = none */
} source_resume;

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

  /* The stream name of the cursor key (consumer, stream, subject). */
  const char *(*stream_name)(const void *conf);

  /* Creates an instance and starts it. conf is borrowed for the instance's
   * life. Returns 0, or a negative code with the reason in err. */
  int (*start)(consumer *c, const void *conf, const source_resume *resume,
               source **out, char *err, size_t errlen);

  /* Stops producing; consumer_source_closed() follows once it is closed. */
  void (*stop)(source *s);

  /* The consumer's window has room again. */
  void (*on_room)(source *s);

  /* Every event up to seq is delivered by the sink (for upstream acks).
   * May be NULL. */
  void (*on_delivered)(source *s, uint64_t seq);

  /* The cursor up to seq, at position (borrowed for the call), is durable
   * in the local store: what may now be told elsewhere (an offset mirror).
   * May be NULL. */
  void (*on_committed)(source *s, uint64_t seq, const char *position);
};

#endif
