/* Source `sse`: reads a text/event-stream and resumes it with Last-Event-ID.
 *
 * One streaming request at a time. Body bytes go through protocol/sse; each
 * event becomes one envelope whose cursor is the event's last event id, so
 * the committed cursor is the id of the highest contiguous delivered event.
 *
 * Backpressure: an event is handed over only while the window has room.
 * When the room runs out mid-read, the parser pauses right after that event;
 * the unread rest of the read is kept (at most one read) and the request is
 * paused, which stops reading the socket and the idle timer. on_room feeds
 * the rest and resumes. Nothing is dropped, nothing is parsed twice.
 *
 * Reconnects (protocol document §7): a clean end of the body reconnects
 * after the server's retry: (or reconnect_min); 5xx, 408, 429 and transport
 * errors back off, a Retry-After or retry: winning; 204 means "stop"; other
 * statuses and a wrong Content-Type fail the consumer with a clear message,
 * since retrying cannot fix a wrong URL. The resume point is the last id
 * handed to the window: events already there are not lost.
 */
#include "daemon/sources/sse.h"

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/log.h"
#include "daemon/sources/http_source.h"
#include "daemon/upstream.h"
#include "loop/backoff.h"
#include "loop/http_client.h"
#include "protocol/buf.h"
#include "protocol/envelope.h"
#include "protocol/http.h"
#include "protocol/sse.h"

static const option sse_options[] = {
  { "path", OPT_STRING, "", offsetof(sse_conf, path),
    "request path and query, resolved against the upstream url", 0, 0, NULL,
    0 },
  { "resume", OPT_STRING, "header", offsetof(sse_conf, resume),
    "how the last event id is sent back: header (Last-Event-ID) or "
    "query:NAME",
    0, 0, NULL, 0 },
  { "event_types", OPT_STRING, "", offsetof(sse_conf, event_types),
    "comma-separated event types to deliver; empty = all", 0, 0, NULL, 0 },
  { "idle_timeout", OPT_DURATION, "45s", offsetof(sse_conf, idle_timeout),
    "a stream silent this long is dead and is reconnected; 0 = never", 0,
    86400000, NULL, 0 },
  { "max_line", OPT_SIZE, "64KiB", offsetof(sse_conf, max_line),
    "longest line of the stream; longer is an error and a reconnect", 64,
    16777216, NULL, 0 },
  { "max_event_size", OPT_SIZE, "1MiB", offsetof(sse_conf, max_event_size),
    "largest data of one event; larger is an error and a reconnect", 64,
    67108864, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

typedef struct sse_src {
  http_source h; /* first: request, timer, backoff, stop */
  const sse_conf *conf;
  char *url;         /* path resolved against the upstream url */
  const char *query; /* the NAME of resume = query:NAME, or NULL */
  sse_parser parser;
  buf last_id;         /* the last event id handed to the window */
  buf pending;         /* body bytes waiting for room, in order */
  bool window_full;    /* the parser stopped for room; bytes wait */
  bool paused;         /* the request is paused for room */
  bool delivered_any;  /* this connection handed over an event */
  uint64_t retry_hint; /* the server's retry:, clamped; 0 = none */
  int feed_error;      /* a parse error met in sse_on_room */
  int poison_err;      /* the last cap error, and the id it came at */
  unsigned poison_count;
  buf poison_id;
  char **types; /* event_types split; NULL = all */
  size_t n_types;
} sse_src;

static void connect_now(sse_src *s);

static bool wanted(const sse_src *s, const char *type, size_t len) {
  size_t i;

  if (s->types == NULL)
    return true;
  for (i = 0; i < s->n_types; i++)
    if (strlen(s->types[i]) == len && memcmp(s->types[i], type, len) == 0)
      return true;
  return false;
}

static int set_last_id(sse_src *s, const char *id, size_t len) {
  buf_reset(&s->last_id);
  return buf_append(&s->last_id, id, len);
}

static int on_event(void *data, const sse_event *ev) {
  sse_src *s = data;
  consumer *c = s->h.base.consumer;
  event e;

  if (set_last_id(s, ev->id, ev->id_len) != 0)
    return -1;
  if (!wanted(s, ev->type, ev->type_len))
    return 0;
  memset(&e, 0, sizeof e);
  e.name = ev->type;
  e.kind = upstream_name(s->h.up);
  e.position = ev->id;
  e.position_len = ev->id_len;
  e.data = ev->data;
  e.data_len = ev->data_len;
  e.data_is_json = envelope_is_json(ev->data, ev->data_len);
  if (consumer_emit(c, &e) == 0)
    return -1;
  s->delivered_any = true;
  /* The window is full: stop right after this event. */
  return consumer_room(c) == 0 ? 1 : 0;
}

/* An id-only block moves the resume point for this process's reconnects.
 * The committed cursor moves with the next delivered event: after a crash
 * the block is read again, which costs nothing. */
static int on_id_only(void *data, const char *id, size_t len) {
  sse_src *s = data;

  if (len == 0)
    log_warn("the server reset the last event id; the next reconnect sends "
             "none and the server chooses where to start",
             LS("consumer", consumer_name(s->h.base.consumer)));
  return set_last_id(s, id, len) != 0 ? -1 : 0;
}

static int on_retry_hint(void *data, uint64_t ms) {
  sse_src *s = data;
  const http_upstream_conf *h = upstream_http_conf(s->h.up);

  if (ms < h->reconnect_min)
    ms = h->reconnect_min;
  if (ms > h->reconnect_max)
    ms = h->reconnect_max;
  s->retry_hint = ms;
  return 0;
}

static void on_timer(uv_timer_t *t) {
  connect_now(t->data);
}

/* Reconnects after delay_ms; a failure is reported as a backoff. */
static void reconnect_after(sse_src *s, uint64_t delay_ms, const char *why,
                            bool failure) {
  if (!failure)
    log_debug("stream ended; reconnecting",
              LS("consumer", consumer_name(s->h.base.consumer)),
              LU("in_ms", delay_ms));
  http_source_wait(&s->h, delay_ms, on_timer, failure ? why : NULL);
}

static void fail(sse_src *s, const char *why) {
  http_source_fail(&s->h, "%s", why);
}

/* Feeds bytes to the parser, or keeps them while the window is full: the
 * parser stops right after the event that filled it, and every byte after
 * that (the rest of this read, and any further body callbacks of the same
 * socket read) waits in pending, in order, for on_room. Returns 0, or an
 * SSE_E* / UV_ENOMEM error. */
static int take(sse_src *s, const char *bytes, size_t n) {
  size_t used = 0;
  int rc;

  /* No room before a byte is parsed (a pause, a held flusher, a seq lease
   * waiting for its commit): everything waits. */
  if (!s->window_full && consumer_room(s->h.base.consumer) == 0)
    s->window_full = true;
  if (s->window_full)
    return buf_append(&s->pending, bytes, n) != 0 ? UV_ENOMEM : 0;
  rc = sse_parser_feed(&s->parser, bytes, n, &used);
  if (rc != SSE_PAUSED)
    return rc;
  s->window_full = true;
  return buf_append(&s->pending, bytes + used, n - used) != 0 ? UV_ENOMEM : 0;
}

static int on_head(http_req *r, const http_response *resp, void *data) {
  sse_src *s = data;
  const char *ct = http_response_header(resp, "Content-Type");

  (void)r;
  if (resp->status == 200 && http_content_type_is(ct, "text/event-stream")) {
    sse_parser_new_response(&s->parser);
    backoff_connected(&s->h.retry, uv_now(consumer_loop(s->h.base.consumer)));
    consumer_source_connected(s->h.base.consumer);
    return 0;
  }
  /* Not a stream: its body is not read; on_done decides what the status
   * means. */
  return HTTP_EABORTED;
}

static int on_body(http_req *r, const char *bytes, size_t n, void *data) {
  sse_src *s = data;
  int rc;

  if ((rc = take(s, bytes, n)) != 0)
    return rc;
  if (s->window_full && !s->paused) {
    s->paused = true;
    http_req_pause(r);
  }
  return 0;
}

/* Decides what an ended request means: reconnect, back off or fail. */
static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  sse_src *s = data;
  const http_upstream_conf *h = upstream_http_conf(s->h.up);
  uv_loop_t *loop = consumer_loop(s->h.base.consumer);
  char why[512];
  uint64_t delay = 0, hint = 0;
  int code = resp != NULL ? resp->status : 0;

  (void)r;
  if (http_source_ended(&s->h))
    return;
  s->paused = false;
  s->window_full = false;
  buf_reset(&s->pending);
  if (s->h.failed)
    return;
  /* A parse error found while feeding a paused read's rest. */
  if (status == UV_ECANCELED && s->feed_error != 0)
    status = s->feed_error;
  s->feed_error = 0;

  /* A stream that ended cleanly: reconnect after the server's retry:, or
   * later when it keeps ending without an event. */
  if (status == 0 && code == 200) {
    delay = s->retry_hint ? s->retry_hint : h->reconnect_min;
    if (!s->delivered_any) {
      hint = backoff_next_at(&s->h.retry, uv_now(loop));
      delay = hint > delay ? hint : delay;
    }
    reconnect_after(s, delay, "the stream ended", false);
    return;
  }

  if (status == 0 || status == HTTP_EABORTED) {
    const char *ct = resp ? http_response_header(resp, "Content-Type") : NULL;

    if (code == 204) {
      fail(s, "the server answered 204 No Content: it asks clients to stop");
      return;
    }
    if (code == 200) {
      snprintf(why, sizeof why,
               "expected Content-Type text/event-stream from %s, got %s",
               s->url, ct != NULL ? ct : "none");
      fail(s, why);
      return;
    }
    if (http_source_retryable(code)) {
      snprintf(why, sizeof why, "HTTP %d from %s", code, s->url);
      reconnect_after(s, http_source_retry_delay(&s->h, resp), why, true);
      return;
    }
    snprintf(why, sizeof why,
             "HTTP %d from %s; retrying cannot fix this: check the url and "
             "path",
             code, s->url);
    fail(s, why);
    return;
  }

  /* A cap error at the same id again and again: a poison event. */
  if (status == SSE_ELINE || status == SSE_EEVENT) {
    if (status == s->poison_err && s->poison_id.len == s->last_id.len &&
        memcmp(s->poison_id.data, s->last_id.data, s->last_id.len) == 0) {
      s->poison_count++;
    } else {
      s->poison_err = status;
      s->poison_count = 1;
      buf_reset(&s->poison_id);
      buf_append(&s->poison_id, s->last_id.data, s->last_id.len);
    }
    if (s->poison_count >= HTTP_SOURCE_CAP_TRIES) {
      snprintf(why, sizeof why,
               "%s %u times after id \"%.*s\": a poison event; raise %s or "
               "skip it upstream",
               sse_strerror(status), s->poison_count, (int)s->last_id.len,
               s->last_id.data ? s->last_id.data : "",
               status == SSE_ELINE ? "max_line" : "max_event_size");
      fail(s, why);
      return;
    }
    snprintf(why, sizeof why, "%s in the stream from %s", sse_strerror(status),
             s->url);
  } else {
    snprintf(why, sizeof why, "%s", msg != NULL ? msg : http_strerror(status));
  }
  delay = backoff_next_at(&s->h.retry, uv_now(loop));
  if (s->retry_hint > delay)
    delay = s->retry_hint;
  reconnect_after(s, delay, why, true);
}

static const http_callbacks sse_http_callbacks = {
  .on_head = on_head,
  .on_body = on_body,
  .on_done = on_done,
};

static void connect_now(sse_src *s) {
  http_header headers[64];
  size_t n = 0;
  http_request req;
  char *url = s->url, *with_query = NULL;
  buf q;
  int rc;

  if (s->h.stopping || s->h.failed)
    return;
  headers[n++] = (http_header){ "Accept", "text/event-stream" };
  headers[n++] = (http_header){ "Cache-Control", "no-cache" };
  if (s->last_id.len > 0 && buf_cstr(&s->last_id) != NULL) {
    if (s->query == NULL) {
      headers[n++] = (http_header){ "Last-Event-ID", s->last_id.data };
    } else {
      buf_init(&q, 0);
      if (buf_append_str(&q, s->url) != 0 ||
          buf_append_str(&q, strchr(s->url, '?') ? "&" : "?") != 0 ||
          buf_append_str(&q, s->query) != 0 || buf_append_str(&q, "=") != 0 ||
          http_percent_encode(&q, s->last_id.data, s->last_id.len) != 0 ||
          (with_query = buf_steal(&q)) == NULL) {
        buf_free(&q);
        fail(s, "out of memory building the request");
        return;
      }
      url = with_query;
    }
  }
  n = upstream_add_headers(s->h.up, headers, n,
                           sizeof headers / sizeof headers[0]);
  memset(&req, 0, sizeof req);
  req.method = "GET";
  req.url = url;
  req.headers = headers;
  req.n_headers = n;
  req.streaming = true;
  req.idle_timeout = s->conf->idle_timeout;
  req.max_redirects = 5;
  s->delivered_any = false;
  rc = http_request_start(upstream_http(s->h.up), &req, &sse_http_callbacks, s,
                          &s->h.req);
  free(with_query);
  if (rc != 0) {
    char why[256];

    snprintf(why, sizeof why, "cannot start a request to %s: %s", s->url,
             http_strerror(rc));
    fail(s, why);
  }
}

static void sse_on_room(source *src) {
  sse_src *s = (sse_src *)src;
  buf rest;
  int rc;

  if (!s->window_full || s->h.req == NULL ||
      consumer_room(s->h.base.consumer) == 0)
    return;
  /* Feed what waited; it may fill the window again. */
  s->window_full = false;
  rest = s->pending;
  buf_init(&s->pending, 0);
  rc = take(s, rest.data, rest.len);
  buf_free(&rest);
  if (rc != 0) {
    s->feed_error = rc;
    http_req_cancel(s->h.req);
    return;
  }
  if (!s->window_full && s->paused) {
    s->paused = false;
    http_req_resume(s->h.req);
  }
}

static void free_src(sse_src *s) {
  size_t i;

  sse_parser_free(&s->parser);
  buf_free(&s->last_id);
  buf_free(&s->pending);
  buf_free(&s->poison_id);
  for (i = 0; i < s->n_types; i++)
    free(s->types[i]);
  free(s->types);
  free(s->url);
  free(s);
}

static void free_source(http_source *hs) {
  free_src((sse_src *)hs);
}

/* Splits "a, b,c" into the types the consumer keeps. */
static int split_types(sse_src *s, const char *list) {
  const char *p = list, *end;
  size_t n;

  while (*p != '\0') {
    while (*p == ' ' || *p == ',')
      p++;
    end = p;
    while (*end != '\0' && *end != ',')
      end++;
    n = (size_t)(end - p);
    while (n > 0 && p[n - 1] == ' ')
      n--;
    if (n > 0) {
      char **t = realloc(s->types, (s->n_types + 1) * sizeof *t);

      if (t == NULL)
        return UV_ENOMEM;
      s->types = t;
      if ((s->types[s->n_types] = strndup(p, n)) == NULL)
        return UV_ENOMEM;
      s->n_types++;
    }
    p = end;
  }
  return 0;
}

static int sse_start(consumer *c, const void *conf, const source_resume *r,
                     source **out, char *err, size_t errlen) {
  const sse_conf *sc = conf;
  sse_src *s = calloc(1, sizeof *s);
  const sse_callbacks cbs = { on_event, on_id_only, on_retry_hint };
  sse_limits lim;
  int rc;

  if (s == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  s->conf = sc;
  buf_init(&s->last_id, (size_t)sc->max_line);
  buf_init(&s->pending, 0);
  buf_init(&s->poison_id, 0);
  lim.max_line = (size_t)sc->max_line;
  lim.max_event_size = (size_t)sc->max_event_size;
  sse_parser_init(&s->parser, &lim, &cbs, s);
  if (strncmp(sc->resume, "query:", 6) == 0)
    s->query = sc->resume + 6;
  /* The base is not set up yet: its timer comes last, after every step
   * that can fail. */
  rc = http_url_resolve(upstream_http_conf(consumer_upstream(c))->url, sc->path,
                        &s->url, err, errlen);
  if (rc == 0 && sc->event_types[0] != '\0')
    rc = split_types(s, sc->event_types);
  if (rc == 0 && set_last_id(s, r->position, strlen(r->position)) != 0)
    rc = UV_ENOMEM;
  if (rc != 0) {
    if (rc == UV_ENOMEM)
      snprintf(err, errlen, "out of memory");
    free_src(s);
    return rc;
  }
  http_source_init(&s->h, &source_sse, c, free_source);
  *out = &s->h.base;
  connect_now(s);
  return 0;
}

static int sse_check(void *conf, uint64_t explicit, char *err, size_t errlen) {
  sse_conf *c = conf;

  (void)explicit;
  if (strcmp(c->resume, "header") != 0 &&
      (strncmp(c->resume, "query:", 6) != 0 || c->resume[6] == '\0')) {
    snprintf(err, errlen,
             "resume = \"%s\": expected header or query:NAME (for example "
             "query:last_event_id)",
             c->resume);
    return UV_EINVAL;
  }
  return 0;
}

static const char *sse_stream_name(const void *conf) {
  const sse_conf *c = conf;

  return c->path[0] != '\0' ? c->path : "/";
}

static int sse_identity(const void *conf, const char *upstream_url, buf *out) {
  return http_source_identity(upstream_url, sse_stream_name(conf), "", out);
}

const source_type source_sse = {
  .name = "sse",
  .description = "any text/event-stream endpoint, resumed with Last-Event-ID",
  .options = sse_options,
  .conf_size = sizeof(sse_conf),
  .check = sse_check,
  .stream_name = sse_stream_name,
  .identity = sse_identity,
  .start = sse_start,
  .close = http_source_close,
  .on_room = sse_on_room,
};
