/* The SSE stream reader (see sse_stream.h).
 *
 * One request at a time, on the client's control lane. Body bytes go to
 * protocol/sse unless the owner has no room: then they wait in _pending,
 * in order, and the request is paused, which stops reading the socket and
 * the idle timer. Every end of a request goes through on_done, which
 * decides between a clean reconnect, a backoff and a fatal stop, then
 * tells the owner.
 */
#include "daemon/sources/sse_stream.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/sources/http_source.h" /* HTTP_SOURCE_CAP_TRIES */
#include "protocol/http.h"

static void connect_now(sse_stream *st);
static void maybe_closed(sse_stream *st);

/* ---- the parser's callbacks ---- */

static bool is_control(const sse_stream *st, const char *type, size_t len) {
  size_t i;

  for (i = 0; i < st->_n_control; i++)
    if (strlen(st->_control[i]) == len &&
        memcmp(st->_control[i], type, len) == 0)
      return true;
  return false;
}

static int on_parsed_event(void *data, const sse_event *ev) {
  sse_stream *st = data;
  int rc;

  if (is_control(st, ev->type, ev->type_len)) {
    rc = st->_h.on_control != NULL ? st->_h.on_control(st, ev, st->_data)
                                   : SSE_STREAM_NEXT;
  } else {
    rc = st->_h.on_event(st, ev, st->_data);
    if (rc == SSE_STREAM_NEXT || rc == SSE_STREAM_PAUSE)
      st->_progress = true;
  }
  /* The parser pauses on any positive value: a skip is no pause. */
  return rc == SSE_STREAM_SKIP ? SSE_STREAM_NEXT : rc;
}

static int on_parsed_id(void *data, const char *id, size_t len) {
  sse_stream *st = data;

  return st->_h.on_id_only != NULL ? st->_h.on_id_only(st, id, len, st->_data)
                                   : 0;
}

static int on_parsed_retry(void *data, uint64_t ms) {
  sse_stream *st = data;
  const http_upstream_conf *h = upstream_http_conf(st->_up);

  if (ms < h->reconnect_min)
    ms = h->reconnect_min;
  if (ms > h->reconnect_max)
    ms = h->reconnect_max;
  st->_retry_hint = ms;
  return 0;
}

/* ---- reading ---- */

static bool has_room(sse_stream *st) {
  return st->_h.has_room == NULL || st->_h.has_room(st, st->_data);
}

static int feed(sse_stream *st, const char *bytes, size_t n, size_t *used) {
  int rc;

  st->_in_feed = true;
  rc = sse_parser_feed(&st->_parser, bytes, n, used);
  st->_in_feed = false;
  return rc;
}

/* Parses bytes, or holds them once the owner has no room: the parser stops
 * right after the event that filled the window, and every byte after it
 * (the rest of this read and of any further reads) waits in _pending, in
 * order. Returns 0, or an SSE_E* / hook / UV_ENOMEM error. */
static int take(sse_stream *st, const char *bytes, size_t n) {
  size_t used = 0;
  int rc;

  if (!st->_waiting && !has_room(st))
    st->_waiting = true;
  if (st->_waiting)
    return buf_append(&st->_pending, bytes, n) != 0 ? UV_ENOMEM : 0;
  rc = feed(st, bytes, n, &used);
  if (rc != SSE_PAUSED)
    return rc;
  st->_waiting = true;
  return buf_append(&st->_pending, bytes + used, n - used) != 0 ? UV_ENOMEM : 0;
}

static int on_head(http_req *r, const http_response *resp, void *data) {
  sse_stream *st = data;
  const char *ct = http_response_header(resp, "Content-Type");
  int rc;

  (void)r;
  if (resp->status != 200 || !http_content_type_is(ct, "text/event-stream")) {
    /* Not a stream: its body is not read; on_done says what it means. */
    st->_refused = true;
    return HTTP_EABORTED;
  }
  sse_parser_new_response(&st->_parser);
  backoff_connected(&st->_retry, uv_now(st->_loop));
  if (st->_h.on_open != NULL && (rc = st->_h.on_open(st, resp, st->_data)) < 0)
    return rc;
  return 0;
}

static int on_body(http_req *r, const char *bytes, size_t n, void *data) {
  sse_stream *st = data;
  int rc;

  if ((rc = take(st, bytes, n)) != 0)
    return rc;
  if (st->_waiting && !st->_paused) {
    st->_paused = true;
    http_req_pause(r);
  }
  return 0;
}

/* ---- ends ---- */

static void on_timer(uv_timer_t *t) {
  connect_now(t->data);
}

/* Schedules the reconnect of e (unless fatal) and tells the owner. */
static void ended(sse_stream *st, sse_stream_end *e) {
  uint64_t now = uv_now(st->_loop);

  e->attempt = backoff_attempt(&st->_retry);
  if (!e->fatal) {
    e->delay_ms = backoff_budget_take(upstream_budget(), now, e->delay_ms);
    uv_timer_start(&st->_timer, on_timer, e->delay_ms, 0);
  }
  if (st->_h.on_end != NULL)
    st->_h.on_end(st, e, st->_data);
}

/* A head that was no event stream. */
static void refused(sse_stream *st, const http_response *resp,
                    sse_stream_end *e, char *why, size_t whylen) {
  const char *ct = http_response_header(resp, "Content-Type");
  int code = resp->status;

  e->refused = true;
  e->failure = true;
  if (code == 200)
    snprintf(why, whylen,
             "expected Content-Type text/event-stream from %s, got %s",
             st->_url, ct != NULL ? ct : "none");
  else if (code == 204 && !st->_persistent)
    snprintf(why, whylen,
             "the server answered 204 No Content: it asks clients to stop");
  else if (http_source_retryable(code) || st->_persistent)
    snprintf(why, whylen, "HTTP %d from %s", code, st->_url);
  else
    snprintf(why, whylen,
             "HTTP %d from %s; retrying cannot fix this: check the url and "
             "path",
             code, st->_url);
  if (http_source_retryable(code) || st->_persistent)
    e->delay_ms = http_source_retry_after(&st->_retry, st->_up, resp);
  else
    e->fatal = true;
}

/* A line or an event over its cap: retried, unless the same cap keeps
 * coming at the same cursor (a poison event no reconnect gets past). */
static void over_cap(sse_stream *st, int status, sse_stream_end *e, char *why,
                     size_t whylen) {
  const char *cur = st->_h.cursor != NULL ? st->_h.cursor(st, st->_data) : "";
  size_t len;

  if (cur == NULL)
    cur = "";
  len = strlen(cur);
  if (status == st->_poison_err && st->_poison_at.len == len &&
      memcmp(st->_poison_at.data, cur, len) == 0) {
    st->_poison_count++;
  } else {
    st->_poison_err = status;
    st->_poison_count = 1;
    buf_reset(&st->_poison_at);
    buf_append(&st->_poison_at, cur, len);
  }
  e->failure = true;
  if (st->_poison_count >= HTTP_SOURCE_CAP_TRIES && !st->_persistent) {
    snprintf(why, whylen,
             "%s %u times after id \"%s\": a poison event; raise %s or skip "
             "it upstream",
             sse_strerror(status), st->_poison_count, cur,
             status == SSE_ELINE ? "max_line" : "max_event_size");
    e->fatal = true;
    return;
  }
  snprintf(why, whylen, "%s in the stream from %s", sse_strerror(status),
           st->_url);
}

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  sse_stream *st = data;
  uint64_t now = uv_now(st->_loop);
  sse_stream_end e;
  char why[768];

  (void)r;
  st->_req = NULL;
  if (st->_closing) {
    maybe_closed(st);
    return;
  }
  st->_paused = false;
  st->_waiting = false;
  buf_reset(&st->_pending);
  if (st->_stopping) {
    st->_stopping = false;
    if (st->_restart) {
      st->_restart = false;
      connect_now(st);
    }
    return;
  }
  /* A parse error met while feeding held bytes, or a drop. */
  if (status == UV_ECANCELED && st->_feed_error != 0)
    status = st->_feed_error;
  st->_feed_error = 0;

  memset(&e, 0, sizeof e);
  e.status = status;
  e.resp = resp;
  e.why = why;
  why[0] = '\0';
  if (status == 0 && !st->_refused) {
    /* A stream that ended cleanly: reconnect after the server's retry:,
     * or later when it keeps ending without an event. */
    e.delay_ms = st->_retry_hint ? st->_retry_hint
                                 : upstream_http_conf(st->_up)->reconnect_min;
    if (!st->_progress) {
      uint64_t b = backoff_next_at(&st->_retry, now);

      if (b > e.delay_ms)
        e.delay_ms = b;
    }
    snprintf(why, sizeof why, "the stream ended");
  } else if (st->_refused && resp != NULL) {
    refused(st, resp, &e, why, sizeof why);
  } else {
    e.failure = true;
    if (status == SSE_ELINE || status == SSE_EEVENT) {
      over_cap(st, status, &e, why, sizeof why);
    } else if (status == UV_ECANCELED && st->_drop_status != 0) {
      snprintf(why, sizeof why, "%s", st->_drop_why);
    } else {
      snprintf(why, sizeof why, "%s",
               msg != NULL ? msg : http_strerror(status));
    }
    if (!e.fatal) {
      e.delay_ms = backoff_next_at(&st->_retry, now);
      if (st->_retry_hint > e.delay_ms)
        e.delay_ms = st->_retry_hint;
    }
  }
  st->_drop_status = 0;
  ended(st, &e);
}

static const http_callbacks stream_callbacks = {
  .on_head = on_head,
  .on_body = on_body,
  .on_done = on_done,
};

/* ---- connecting ---- */

static void connect_now(sse_stream *st) {
  http_header *headers;
  size_t n = 0, cap = st->_n_headers + 66;
  const char *cur = NULL;
  http_request req;
  char *url = st->_url, *with_query = NULL;
  sse_stream_end e;
  char why[512];
  buf q;
  int rc;

  if (st->_req != NULL || st->_closing)
    return;
  uv_timer_stop(&st->_timer);
  if ((headers = calloc(cap, sizeof *headers)) == NULL) {
    rc = UV_ENOMEM;
    goto fail;
  }
  headers[n++] = (http_header){ "Accept", "text/event-stream" };
  memcpy(headers + n, st->_headers, st->_n_headers * sizeof *headers);
  n += st->_n_headers;
  if (st->_h.cursor != NULL)
    cur = st->_h.cursor(st, st->_data);
  if (cur != NULL && cur[0] != '\0') {
    if (st->_query == NULL) {
      headers[n++] = (http_header){ "Last-Event-ID", cur };
    } else {
      buf_init(&q, 0);
      if (buf_append_str(&q, st->_url) != 0 ||
          buf_append_str(&q, strchr(st->_url, '?') ? "&" : "?") != 0 ||
          buf_append_str(&q, st->_query) != 0 || buf_append_str(&q, "=") != 0 ||
          http_percent_encode(&q, cur, strlen(cur)) != 0 ||
          (with_query = buf_steal(&q)) == NULL) {
        buf_free(&q);
        free(headers);
        rc = UV_ENOMEM;
        goto fail;
      }
      url = with_query;
    }
  }
  n = upstream_add_headers(st->_up, headers, n, cap);
  memset(&req, 0, sizeof req);
  req.method = "GET";
  req.url = url;
  req.headers = headers;
  req.n_headers = n;
  req.streaming = true;
  req.long_lived = true;
  req.idle_timeout = st->_idle_timeout;
  req.max_redirects = st->_max_redirects;
  st->_progress = false;
  st->_refused = false;
  st->_drop_status = 0;
  rc = http_request_start(upstream_http(st->_up), &req, &stream_callbacks, st,
                          &st->_req);
  free(with_query);
  free(headers);
  if (rc == 0)
    return;
  st->_req = NULL;

fail:
  memset(&e, 0, sizeof e);
  snprintf(why, sizeof why, "cannot start a request to %s: %s", st->_url,
           http_strerror(rc));
  e.status = rc;
  e.why = why;
  e.failure = true;
  e.fatal = !st->_persistent;
  if (!e.fatal)
    e.delay_ms = backoff_next_at(&st->_retry, uv_now(st->_loop));
  ended(st, &e);
}

/* ---- the public calls ---- */

static void free_fields(sse_stream *st) {
  size_t i;

  for (i = 0; i < st->_n_headers; i++) {
    free((char *)st->_headers[i].name);
    free((char *)st->_headers[i].value);
  }
  free(st->_headers);
  for (i = 0; i < st->_n_control; i++)
    free(st->_control[i]);
  free(st->_control);
  free(st->_url);
  free(st->_query);
  sse_parser_free(&st->_parser);
  buf_free(&st->_pending);
  buf_free(&st->_poison_at);
}

int sse_stream_init(sse_stream *st, upstream *up, const sse_stream_opts *o,
                    const sse_stream_hooks *hooks, void *data, char *err,
                    size_t errlen) {
  const sse_callbacks pcb = { on_parsed_event, on_parsed_id, on_parsed_retry };
  size_t i, n;

  assert(hooks->on_event != NULL);
  memset(st, 0, sizeof *st);
  st->_up = up;
  st->_loop = upstream_loop(up);
  st->_h = *hooks;
  st->_data = data;
  st->_idle_timeout = o->idle_timeout;
  st->_max_redirects = o->max_redirects;
  st->_persistent = o->persistent;
  buf_init(&st->_pending, 0);
  buf_init(&st->_poison_at, 0);
  sse_parser_init(&st->_parser, &o->limits, &pcb, st);
  if ((st->_url = strdup(o->url)) == NULL ||
      (o->resume_query != NULL &&
       (st->_query = strdup(o->resume_query)) == NULL))
    goto oom;
  if (o->n_headers > 0) {
    if ((st->_headers = calloc(o->n_headers, sizeof *st->_headers)) == NULL)
      goto oom;
    for (i = 0; i < o->n_headers; i++, st->_n_headers++)
      if ((st->_headers[i].name = strdup(o->headers[i].name)) == NULL ||
          (st->_headers[i].value = strdup(o->headers[i].value)) == NULL) {
        free((char *)st->_headers[i].name);
        goto oom;
      }
  }
  for (n = 0; o->control_types != NULL && o->control_types[n] != NULL; n++)
    ;
  if (n > 0) {
    if ((st->_control = calloc(n, sizeof *st->_control)) == NULL)
      goto oom;
    for (i = 0; i < n; i++, st->_n_control++)
      if ((st->_control[i] = strdup(o->control_types[i])) == NULL)
        goto oom;
  }
  upstream_backoff_init(up, &st->_retry);
  uv_timer_init(st->_loop, &st->_timer);
  st->_timer.data = st;
  return 0;

oom:
  snprintf(err, errlen, "out of memory");
  free_fields(st);
  return UV_ENOMEM;
}

void sse_stream_start(sse_stream *st) {
  assert(!st->_closing);
  if (st->_req != NULL) {
    /* A stopped request has not ended yet: connect once it has. */
    if (st->_stopping)
      st->_restart = true;
    return;
  }
  if (uv_is_active((uv_handle_t *)&st->_timer))
    return;
  connect_now(st);
}

void sse_stream_stop(sse_stream *st) {
  if (st->_closing)
    return;
  uv_timer_stop(&st->_timer);
  st->_restart = false;
  if (st->_req != NULL && !st->_stopping) {
    st->_stopping = true;
    http_req_cancel(st->_req);
  }
}

void sse_stream_drop(sse_stream *st, const char *why) {
  if (st->_req == NULL || st->_stopping || st->_closing)
    return;
  st->_drop_status = UV_ECANCELED;
  snprintf(st->_drop_why, sizeof st->_drop_why, "%s", why);
  http_req_cancel(st->_req);
}

void sse_stream_resume(sse_stream *st) {
  buf rest;
  int rc;

  if (!st->_waiting || st->_req == NULL || st->_stopping || st->_closing ||
      st->_in_feed || !has_room(st))
    return;
  /* Feed what waited; it may fill the window again. */
  st->_waiting = false;
  rest = st->_pending;
  buf_init(&st->_pending, 0);
  rc = take(st, rest.data, rest.len);
  buf_free(&rest);
  if (rc != 0) {
    st->_feed_error = rc;
    http_req_cancel(st->_req);
    return;
  }
  if (!st->_waiting && st->_paused) {
    st->_paused = false;
    http_req_resume(st->_req);
  }
}

bool sse_stream_connected(const sse_stream *st) {
  return st->_req != NULL && !st->_stopping;
}

/* The close is over once the request has ended and the timer closed. */
static void maybe_closed(sse_stream *st) {
  if (!st->_timer_closed || st->_req != NULL)
    return;
  free_fields(st);
  st->_close_cb(st, st->_close_data);
}

static void on_timer_closed(uv_handle_t *h) {
  sse_stream *st = h->data;

  st->_timer_closed = true;
  maybe_closed(st);
}

void sse_stream_close(sse_stream *st, void (*cb)(sse_stream *st, void *data),
                      void *data) {
  assert(!st->_closing);
  st->_closing = true;
  st->_close_cb = cb;
  st->_close_data = data;
  if (st->_req != NULL)
    http_req_cancel(st->_req); /* on_done may finish the close */
  uv_close((uv_handle_t *)&st->_timer, on_timer_closed);
}
