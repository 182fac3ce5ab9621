/* Sink `socket`: subscribers of the local API receive the events and
 * acknowledge them.
 *
 * Several subscribers of one consumer compete: each event goes to one of
 * them. An event not acknowledged within ack_timeout, or whose subscriber
 * goes away, goes to another. With no subscriber the events wait, the
 * window fills and the source pauses: nothing is dropped. A peeking
 * subscriber (tether tail --no-ack) sees a copy of every event and takes
 * none of them.
 */
#ifndef TETHER_DAEMON_SINKS_SOCKET_H
#define TETHER_DAEMON_SINKS_SOCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/sink.h"
#include "loop/http_server.h"

extern const sink_type sink_socket;

typedef enum socket_format {
  SOCKET_NDJSON, /* one envelope per line */
  SOCKET_SSE,    /* text/event-stream, id = seq */
} socket_format;

/* Starts a streamed response on c and makes it a subscriber, named name
 * (copied; NULL = anonymous); uid and pid are the caller's, for the log.
 * Returns 0, or a negative code (the caller answers with an error). */
int socket_sink_subscribe(sink *s, http_conn *c, socket_format format,
                          bool peek, const char *name, long uid, long pid);

/* Acknowledges every event up to seq (cumulative) that is out with a
 * subscriber: with a name, only those now with the subscriber of that name
 * (so competing subscribers never acknowledge each other's events); with
 * NULL, those with any subscriber. An event not sent to anyone is never
 * acknowledged. Costs O(events held), whatever seq is. Returns how many
 * events it delivered. */
size_t socket_sink_ack_through(sink *s, uint64_t seq, const char *name);

/* Acknowledges one event, under the same rule. Returns 1 when it was out
 * with the (named) subscriber, else 0. */
size_t socket_sink_ack(sink *s, uint64_t seq, const char *name);

/* Subscribers now attached (peekers not counted). */
size_t socket_sink_subscribers(const sink *s);

#endif
