/* What every source that reads an HTTP upstream shares: one request at a
 * time, a timer for the wait before the next one, the reconnect backoff,
 * and a stop that cancels the request before it frees anything.
 *
 * Embed http_source first in the source's own struct:
 *
 *   typedef struct my_src { http_source h; ... } my_src;
 *
 *   start:    http_source_init(&s->h, &source_mine, c, my_free);
 *   on_done:  if (http_source_ended(&s->h)) return;   (first thing)
 *   retry:    http_source_wait(&s->h, delay, on_timer, "why");
 *   close:    .close = http_source_close in the source type
 */
#ifndef TETHER_DAEMON_SOURCES_HTTP_SOURCE_H
#define TETHER_DAEMON_SOURCES_HTTP_SOURCE_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/source.h"
#include "daemon/upstream.h"
#include "loop/backoff.h"
#include "loop/http_client.h"
#include "protocol/buf.h"

typedef struct http_source http_source;

/* A response or event over one of its caps (max_page_size, max_line,
 * max_event_size) this many times in a row at one cursor is what no retry
 * will get past: the consumer fails, naming the cap to raise. One rule for
 * every HTTP source. */
#define HTTP_SOURCE_CAP_TRIES 3

struct http_source {
  source base;      /* first: the consumer holds the source through it */
  upstream *up;     /* the upstream it reads; borrowed */
  http_req *req;    /* the request in flight, or NULL */
  uv_timer_t timer; /* the wait before the next request; data = this */
  backoff retry;    /* from the upstream's reconnect options */
  bool stopping;    /* close() was called: nothing more is started */
  bool failed;      /* failed for good; nothing more is started */
  /* private */
  bool _closing;
  void (*_free)(http_source *hs);
};

/* Sets up the base for type and c, the upstream's backoff and the timer.
 * free_fn frees the whole source once stop has closed everything. */
void http_source_init(http_source *hs, const source_type *type, consumer *c,
                      void (*free_fn)(http_source *hs));

/* source_type.close of an HTTP source: a request in flight is cancelled and
 * its on_done (through http_source_ended) finishes the close. */
void http_source_close(source *s);

/* The first call of every on_done: forgets the request. Returns true when
 * the source is closing; the caller must then return at once. */
bool http_source_ended(http_source *hs);

/* Calls cb after delay_ms, drawn from the process-wide reconnect budget so
 * that many consumers cut off together do not redial in lockstep. With why,
 * it is a failure: the consumer reports the backoff (state, log). */
void http_source_wait(http_source *hs, uint64_t delay_ms, uv_timer_cb cb,
                      const char *why);

/* True for the statuses worth retrying: 5xx, 408 and 429. */
bool http_source_retryable(int status);

/* The wait after a retryable response: the server's Retry-After (seconds
 * or an HTTP-date, clamped to [reconnect_min, reconnect_max]) when it sent
 * one, else the next step of the backoff. */
uint64_t http_source_retry_delay(http_source *hs, const http_response *resp);

/* The identity of a stream read from path under upstream_url (see
 * source_type.identity): the resolved URL, without the query parameters
 * named in ignore (comma-separated, compared without case: tuning such as
 * a page limit), into out. Returns 0 or UV_ENOMEM. */
int http_source_identity(const char *upstream_url, const char *path,
                         const char *ignore, buf *out);

/* Fails the consumer for good with the formatted reason; nothing more is
 * started. */
void http_source_fail(http_source *hs, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
