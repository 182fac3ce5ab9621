/* One text/event-stream reader over an upstream's HTTP client, for every
 * source that reads SSE: the `sse` source, the PocketBase realtime stream
 * and, next, the event stream. It connects with the upstream's headers on
 * the client's control lane (a stream never takes a pooled connection),
 * parses with protocol/sse, reconnects with the upstream's backoff, and
 * leaves to its owner what the events mean and where resuming starts.
 *
 *   sse_stream_init(&s->st, up, &opts, &hooks, s, err, errlen);
 *   sse_stream_start(&s->st);          connect (again after a stop)
 *   hooks.on_event -> emit; return SSE_STREAM_PAUSE when the room is gone
 *   on_room: sse_stream_resume(&s->st);
 *   close:   sse_stream_close(&s->st, on_closed, s);  then free s
 *
 * Resume. At each (re)connect the stream asks the owner's cursor hook for
 * the position to resume from and sends it as Last-Event-ID, or as the
 * query parameter opts.resume_query. The owner decides what the cursor is:
 * the `sse` source the last event id it handed over, the event stream a
 * field inside each event's JSON.
 *
 * Control events. The types listed in opts.control_types go to on_control,
 * never to on_event: the stream's own talk (PocketBase's PB_CONNECT, the
 * event stream's phase, evicted, invalidate), which no sink sees.
 *
 * Backpressure. on_event returns SSE_STREAM_PAUSE when the event it took
 * filled the window: reading stops right after that event, the rest of the
 * read waits, and sse_stream_resume goes on from there. The has_room hook
 * is asked before any byte is parsed, so a window that lost its room
 * meanwhile (a pause, a held flusher) takes no event either. Nothing is
 * dropped or parsed twice.
 *
 * Reconnects (protocol document §7), each wait drawn from the process-wide
 * reconnect budget:
 *   - a clean end of the body reconnects after the server's retry: (or
 *     reconnect_min), later when the connection brought no event;
 *   - 5xx, 408, 429 and transport errors back off, a Retry-After or a
 *     retry: winning;
 *   - a line or an event over its cap (max_line, max_event_size) is
 *     retried; the same cap HTTP_SOURCE_CAP_TRIES times at one cursor is a
 *     poison event, and fatal;
 *   - 204, a 200 of another Content-Type and other statuses are fatal:
 *     retrying cannot fix a wrong URL.
 * With opts.persistent nothing is fatal: a wake-up stream whose owner
 * goes on without it backs off and tries again.
 */
#ifndef TETHER_DAEMON_SOURCES_SSE_STREAM_H
#define TETHER_DAEMON_SOURCES_SSE_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/upstream.h"
#include "loop/backoff.h"
#include "loop/http_client.h"
#include "protocol/buf.h"
#include "protocol/sse.h"

typedef struct sse_stream sse_stream;

/* What on_event and on_control return, beside a negative code: that ends
 * the connection as a failure with the code, and the stream reconnects
 * after the backoff. */
enum {
  SSE_STREAM_NEXT = 0,  /* taken: read on */
  SSE_STREAM_PAUSE = 1, /* taken, and the window is full: read no further
                           until sse_stream_resume */
  SSE_STREAM_SKIP = 2,  /* not wanted (a type filtered out): read on. Not
                           progress: a stream that brings only these and
                           ends is reconnected with the backoff */
};

/* How a connection ended, for the owner to report. */
typedef struct sse_stream_end {
  int status;                /* 0: the body ended cleanly; else the error
                                (HTTP_E*, SSE_E*, UV_E*, a hook's code) */
  const http_response *resp; /* the head, or NULL when none came */
  const char *why;           /* in words, naming the URL where it helps */
  bool refused;      /* the answer was no event stream (a status, a type) */
  bool failure;      /* a failure to report (false: a routine reconnect) */
  bool fatal;        /* retrying cannot fix it: no reconnect is scheduled */
  uint64_t delay_ms; /* the wait before the reconnect, when not fatal */
  unsigned attempt;  /* failures since the stream last stayed up */
} sse_stream_end;

/* The owner's side. Each is called on the loop thread with the owner's
 * data; a hook may call sse_stream_stop, never free the stream. */
typedef struct sse_stream_hooks {
  /* A 200 text/event-stream head came. Return 0 to read the stream, or a
   * negative code to refuse it (a failure: reconnect after the backoff;
   * call sse_stream_stop first to stop for good). May be NULL. */
  int (*on_open)(sse_stream *st, const http_response *resp, void *data);
  /* An event of a type not in control_types; ev is borrowed for the call.
   * Returns SSE_STREAM_NEXT, _PAUSE, _SKIP or a negative code. */
  int (*on_event)(sse_stream *st, const sse_event *ev, void *data);
  /* An event of a type in control_types; the same returns, though _SKIP
   * and _NEXT mean the same here. May be NULL: control events are
   * dropped. */
  int (*on_control)(sse_stream *st, const sse_event *ev, void *data);
  /* A block with an id and no data moved the last event id to id
   * (borrowed; "" after a reset). Returns 0 or a negative code. May be
   * NULL. */
  int (*on_id_only)(sse_stream *st, const char *id, size_t len, void *data);
  /* The position to resume from, sent at each connect ("" or NULL: none),
   * borrowed until the request has started; it also names the place of a
   * cap error for the poison rule. May be NULL: never resume. */
  const char *(*cursor)(sse_stream *st, void *data);
  /* Whether an event may be taken now (the consumer's room). Asked before
   * bytes are parsed; false holds them until sse_stream_resume. May be
   * NULL: always. */
  bool (*has_room)(sse_stream *st, void *data);
  /* A connection ended on its own (never after sse_stream_stop, drop
   * excepted, or close). e is borrowed for the call; the reconnect is
   * already scheduled unless e->fatal. May come from inside
   * sse_stream_start when the request cannot be started. */
  void (*on_end)(sse_stream *st, const sse_stream_end *e, void *data);
} sse_stream_hooks;

typedef struct sse_stream_opts {
  const char *url;            /* absolute; copied */
  const char *resume_query;   /* send the cursor as this query parameter
                                 instead of Last-Event-ID; NULL = the header;
                                 copied */
  const http_header *headers; /* sent beside Accept: text/event-stream and
                                 the upstream's; copied */
  size_t n_headers;
  const char *const *control_types; /* NULL-terminated; copied; may be NULL */
  sse_limits limits;                /* 0 = the parser's defaults */
  uint64_t idle_timeout; /* ms without a byte before the stream is dead;
                            0 = never (a stream silent by design) */
  unsigned max_redirects;
  bool persistent; /* never fatal (see the top) */
} sse_stream_opts;

/* Embeddable; every field is private. */
struct sse_stream {
  upstream *_up;
  uv_loop_t *_loop;
  sse_stream_hooks _h;
  void *_data;
  char *_url;
  char *_query;
  http_header *_headers;
  size_t _n_headers;
  char **_control;
  size_t _n_control;
  uint64_t _idle_timeout;
  unsigned _max_redirects;
  bool _persistent;
  sse_parser _parser;
  http_req *_req;    /* the connection, until its on_done */
  uv_timer_t _timer; /* the wait before a reconnect */
  backoff _retry;
  uint64_t _retry_hint; /* the server's retry:, clamped; 0 = none */
  buf _pending;         /* bytes waiting for room, in order */
  bool _waiting;        /* bytes wait for room (the parser stopped) */
  bool _paused;         /* the request is paused for room */
  bool _progress;       /* this connection brought an event */
  bool _refused;        /* this connection's head was no event stream */
  bool _stopping;       /* its request was cancelled by stop: no hooks */
  bool _restart;        /* start came while a stopped request ended */
  bool _in_feed;        /* inside sse_parser_feed */
  int _feed_error;      /* an error met feeding held bytes in resume */
  int _drop_status;     /* sse_stream_drop: the end's status and why */
  char _drop_why[256];
  int _poison_err; /* the last cap error, the cursor it came at and how
                      often in a row */
  unsigned _poison_count;
  buf _poison_at;
  bool _closing;
  bool _timer_closed;
  void (*_close_cb)(sse_stream *st, void *data);
  void *_close_data;
};

/* Sets up st for the upstream up (borrowed for st's life); o is copied,
 * hooks too; data goes to every hook. Nothing connects yet. Returns 0, or
 * UV_ENOMEM with the reason in err. After a failure st holds nothing. */
int sse_stream_init(sse_stream *st, upstream *up, const sse_stream_opts *o,
                    const sse_stream_hooks *hooks, void *data, char *err,
                    size_t errlen);

/* Connects now, unless a connection is open or a reconnect waits. */
void sse_stream_start(sse_stream *st);

/* Ends the connection and any wait, with no hook: nothing happens until
 * the next sse_stream_start. */
void sse_stream_stop(sse_stream *st);

/* Ends the connection as a failure (status UV_ECANCELED, why): on_end
 * follows and the stream reconnects after the backoff. Nothing happens
 * without a connection. */
void sse_stream_drop(sse_stream *st, const char *why);

/* The owner has room again: the held bytes are parsed (on_event may run
 * inside this call) and reading goes on. */
void sse_stream_resume(sse_stream *st);

/* True while a connection is open or opening. */
bool sse_stream_connected(const sse_stream *st);

/* Stops, then frees what st holds; cb runs once the connection's request
 * and the timer are gone (never inside this call), after which st may be
 * freed. No hook runs after this call; stop, drop and resume do nothing
 * then, and start must not be called. */
void sse_stream_close(sse_stream *st, void (*cb)(sse_stream *st, void *data),
                      void *data);

#endif
