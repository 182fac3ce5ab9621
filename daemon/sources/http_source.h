/* What every source that reads an HTTP upstream shares: its requests, any
 * number at once (a poll beside a mirror write, an ack and a lease
 * extension beside a subscribe stream), a timer for the wait before the
 * next one, the reconnect backoff, and a close that cancels every request
 * and frees the source only after the last one's on_done.
 *
 * Embed http_source first in the source's own struct:
 *
 *   typedef struct my_src { http_source h; ... } my_src;
 *
 *   start:    http_source_init(&s->h, &source_mine, c, my_free);
 *   request:  http_source_request(&s->h, &req, &cbs, s, &s->poll_req);
 *   on_done:  s->poll_req = NULL;
 *             if (http_source_ended(&s->h)) return;   (before anything
 *             that starts a request or touches the consumer)
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
#include "loop/list.h"
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
  uv_timer_t timer; /* the wait before the next request; data = this */
  backoff retry;    /* from the upstream's reconnect options */
  bool stopping;    /* close() was called: nothing more is started */
  bool failed;      /* failed for good; nothing more is started */
  /* private */
  list _reqs; /* requests whose on_done has not run */
  unsigned _n_reqs;
  bool _closing;
  void (*_free)(http_source *hs);
};

/* Sets up the base for type and c, the upstream's backoff and the timer.
 * free_fn frees the whole source once stop has closed everything. */
void http_source_init(http_source *hs, const source_type *type, consumer *c,
                      void (*free_fn)(http_source *hs));

/* Starts req (see http_request_start) on the upstream's client for the
 * source. The source tracks it: close cancels it, and frees the source only
 * once its on_done has run. cbs and data are the caller's, as with
 * http_request_start; *out (may be NULL) is valid until on_done. Returns 0
 * (on_done will run, never inside this call) or a negative code (it will
 * not). */
int http_source_request(http_source *hs, const http_request *req,
                        const http_callbacks *cbs, void *data, http_req **out);

/* Requests of the source whose on_done has not run yet. */
unsigned http_source_requests(const http_source *hs);

/* source_type.close of an HTTP source: every request in flight is
 * cancelled; once the last one's on_done has returned the timer closes,
 * then the source is freed and the consumer told. */
void http_source_close(source *s);

/* The first call of every on_done, after the caller forgot its pointer to
 * the request: true when the source is closing. Then the caller frees
 * what belongs to that request only and returns at once: nothing new may
 * start and the consumer may be gone. */
bool http_source_ended(const http_source *hs);

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

/* The same for another backoff b of the upstream up (a stream's). */
uint64_t http_source_retry_after(backoff *b, upstream *up,
                                 const http_response *resp);

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
