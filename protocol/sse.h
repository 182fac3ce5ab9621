/* An incremental parser for text/event-stream bodies (WHATWG HTML §9.2, as
 * transcribed in shared/protocols/sse-and-http-poll.md §1). It does no I/O:
 * the caller feeds it body bytes as they arrive, in reads of any size, and it
 * calls back for each event, each id-only block and each retry value.
 *
 *   sse_parser p;
 *   sse_parser_init(&p, NULL, &cbs, ctx);      (once per source)
 *   sse_parser_new_response(&p);               (before each response body)
 *   rc = sse_parser_feed(&p, bytes, n, &used); (for each read)
 *   sse_parser_free(&p);
 *
 * Backpressure: any callback may return a positive value to pause. The feed
 * then returns SSE_PAUSED right after that callback, with *consumed saying
 * how many bytes it used; the caller keeps bytes[*consumed..n) and feeds
 * them again later. The call that paused has happened in full (its event is
 * handed over), so return 1 when the window has just become full,
 * not when an event no longer fits. No byte is lost or seen twice, and
 * every event complete so far has been dispatched when a feed returns 0 (a
 * read that ends in a CR ends its line at once).
 *
 * Memory: the parser holds at most one partial line (max_line bytes), the
 * data buffer (max_event_size bytes) and three strings of at most max_line
 * bytes each (event type, id buffer, last event id); see sse_parser_held.
 */
#ifndef TETHER_PROTOCOL_SSE_H
#define TETHER_PROTOCOL_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/buf.h"

/* Named errors, beside UV_E*; sse_strerror gives the name. Both mean the
 * stream cannot be parsed further: close the connection and reconnect. */
#define SSE_ELINE  (-33001) /* a line (or a decoded id/type) over max_line */
#define SSE_EEVENT (-33002) /* the data buffer over max_event_size */

/* Not an error: a callback asked sse_parser_feed to stop. */
#define SSE_PAUSED 1

#define SSE_DEFAULT_MAX_LINE       (64 * 1024)
#define SSE_DEFAULT_MAX_EVENT_SIZE (1024 * 1024)

typedef struct sse_limits {
  /* Bytes of one line, terminator not counted. It also caps the event type
   * and the id after UTF-8 repair (each invalid byte becomes 3 bytes of
   * U+FFFD). 0 = SSE_DEFAULT_MAX_LINE. */
  size_t max_line;
  /* Bytes of the data buffer: the data values joined with LF, counting the
   * LF after each data line (the spec's buffer). 0 =
   * SSE_DEFAULT_MAX_EVENT_SIZE. */
  size_t max_event_size;
} sse_limits;

/* One dispatched event. Every pointer is non-NULL and NUL-terminated after
 * its length (data may hold NULs, so use the lengths), and borrowed for the
 * callback: copy what you keep. All three are valid UTF-8. */
typedef struct sse_event {
  const char *type; /* the event: line, or "message" */
  size_t type_len;
  const char *data; /* data lines joined with LF, last LF dropped */
  size_t data_len;
  const char *id; /* the last event id string (persists; "" = none) */
  size_t id_len;
} sse_event;

/* Each callback returns 0 to go on, a positive value to pause the feed (see
 * the top), or a negative code to stop it: sse_parser_feed then returns that
 * code, sticky like a cap error. A callback may call the getters below, but
 * must not feed, reset or free the parser. Any may be NULL. */
typedef struct sse_callbacks {
  /* A blank line dispatched an event. */
  int (*on_event)(void *data, const sse_event *ev);
  /* A blank line dispatched no event (no data line), but the last event id
   * string changed to id (borrowed for the call; "" after a reset): the
   * position advances with nothing to deliver. */
  int (*on_id_only)(void *data, const char *id, size_t len);
  /* A valid retry: line, in ms as sent (saturated at UINT64_MAX). It takes
   * effect at once, not at dispatch; clamping is the caller's job. */
  int (*on_retry)(void *data, uint64_t ms);
} sse_callbacks;

/* Embeddable; fields starting with _ are private. */
typedef struct sse_parser {
  /* private */
  sse_limits _lim;
  sse_callbacks _cb;
  void *_data;
  buf _line;       /* a line split across reads, raw bytes */
  buf _evdata;     /* the data buffer */
  buf _type;       /* the event type buffer */
  buf _idbuf;      /* the last event id buffer, when _idbuf_set */
  buf _last_id;    /* the last event id string */
  bool _idbuf_set; /* false: the id buffer equals the last event id */
  uint64_t _retry;
  bool _has_retry;
  bool _skip_lf; /* the last line ended in CR: drop one LF */
  bool _in_cb;   /* inside a callback */
  unsigned _bom; /* BOM bytes matched at the response start; 3 = done */
  int _err;      /* sticky error until the next response */
} sse_parser;

/* Sets up p with lim (copied; NULL = defaults) and cb (copied); data is
 * passed to every callback. The last event id starts empty and no retry is
 * known. Returns 0. Allocation happens lazily in feed. */
int sse_parser_init(sse_parser *p, const sse_limits *lim,
                    const sse_callbacks *cb, void *data);

/* Frees the buffers. p may be initialized again afterwards. */
void sse_parser_free(sse_parser *p);

/* Starts a new response body: the BOM check restarts, and the partial line,
 * the event being built and a cap error are dropped. The last event id and
 * the retry value are kept, and the id buffer goes back to the last event id
 * string, so an id never dispatched on the old response is forgotten. Call
 * it before each response, the first one included (harmless after init). */
void sse_parser_new_response(sse_parser *p);

/* Parses n bytes (borrowed for the call). Returns 0 with *consumed = n;
 * SSE_PAUSED when a callback asked to pause, with *consumed the bytes used
 * up to and including the line that made the call (possibly all n: the
 * caller must still stop); or an error, sticky until
 * sse_parser_new_response: SSE_ELINE, SSE_EEVENT, UV_ENOMEM or a
 * callback's negative code. Calls before the error have been made. */
int sse_parser_feed(sse_parser *p, const void *bytes, size_t n,
                    size_t *consumed);

/* The last event id string, for Last-Event-ID (send no header when *len is
 * 0). Borrowed until the next feed or new_response; NUL-terminated. */
const char *sse_parser_last_id(const sse_parser *p, size_t *len);

/* True when a valid retry: line has been seen; *ms gets the latest value. */
bool sse_parser_retry(const sse_parser *p, uint64_t *ms);

/* Bytes of heap the parser holds now. Never more than
 * 4 * (max_line + 1) + max_event_size + 1. */
size_t sse_parser_held(const sse_parser *p);

/* "line_too_long", "event_too_large", "paused", or uv_err_name(code). */
const char *sse_strerror(int code);

#endif
