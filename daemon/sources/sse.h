/* Source `sse`: any text/event-stream endpoint, resumed with Last-Event-ID.
 * Its consumer options; the upstream holds the origin, TLS and headers. */
#ifndef TETHER_DAEMON_SOURCES_SSE_H
#define TETHER_DAEMON_SOURCES_SSE_H

#include <stdint.h>

#include "daemon/source.h"

typedef struct sse_conf {
  char *path;            /* request target, resolved against the upstream url */
  char *resume;          /* "header" or "query:NAME" */
  char *event_types;     /* comma-separated types to deliver; "" = all */
  uint64_t idle_timeout; /* ms without a byte before the stream is dead */
  uint64_t max_line;     /* bytes */
  uint64_t max_event_size; /* bytes of one event's data */
} sse_conf;

extern const source_type source_sse;

#endif
