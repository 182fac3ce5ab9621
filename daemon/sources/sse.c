/* Source `sse`: reads a text/event-stream and resumes it with Last-Event-ID.
 *
 * The stream is read by daemon/sources/sse_stream (connect, parse,
 * backpressure, reconnects, the poison rule); this file says what its
 * events mean: each becomes one envelope whose cursor is the event's last
 * event id, so the committed cursor is the id of the highest contiguous
 * delivered event. The resume point is the last id handed to the window
 * (an id-only block moves it too): events already there are not lost.
 *
 * Backpressure: an event is handed over only while the window has room;
 * when the one just taken filled it, the stream stops reading right after
 * it until on_room.
 */
#include "daemon/sources/sse.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/log.h"
#include "daemon/sources/http_source.h"
#include "daemon/sources/sse_stream.h"
#include "daemon/upstream.h"
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
  http_source h; /* first: the base, its failure and close */
  const sse_conf *conf;
  sse_stream st;
  bool stream_open; /* st is set up: close closes it first */
  buf last_id;      /* the last event id handed to the window */
  char **types;     /* event_types split; NULL = all */
  size_t n_types;
} sse_src;

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

static int on_event(sse_stream *st, const sse_event *ev, void *data) {
  sse_src *s = data;
  consumer *c = s->h.base.consumer;
  event e;

  (void)st;
  if (set_last_id(s, ev->id, ev->id_len) != 0)
    return UV_ENOMEM;
  if (!wanted(s, ev->type, ev->type_len))
    return SSE_STREAM_SKIP;
  memset(&e, 0, sizeof e);
  e.name = ev->type;
  e.kind = upstream_name(s->h.up);
  e.position = ev->id;
  e.position_len = ev->id_len;
  e.data = ev->data;
  e.data_len = ev->data_len;
  e.data_is_json = envelope_is_json(ev->data, ev->data_len);
  if (consumer_emit(c, &e) == 0)
    return UV_ENOMEM;
  /* The window is full: stop right after this event. */
  return consumer_room(c) == 0 ? SSE_STREAM_PAUSE : SSE_STREAM_NEXT;
}

/* An id-only block moves the resume point for this process's reconnects.
 * The committed cursor moves with the next delivered event: after a crash
 * the block is read again, which costs nothing. */
static int on_id_only(sse_stream *st, const char *id, size_t len, void *data) {
  sse_src *s = data;

  (void)st;
  if (len == 0)
    log_warn("the server reset the last event id; the next reconnect sends "
             "none and the server chooses where to start",
             LS("consumer", consumer_name(s->h.base.consumer)));
  return set_last_id(s, id, len) != 0 ? UV_ENOMEM : 0;
}

static const char *cursor(sse_stream *st, void *data) {
  sse_src *s = data;
  const char *id = buf_cstr(&s->last_id);

  (void)st;
  return id != NULL ? id : "";
}

static bool has_room(sse_stream *st, void *data) {
  sse_src *s = data;

  (void)st;
  return consumer_room(s->h.base.consumer) > 0;
}

static int on_open(sse_stream *st, const http_response *resp, void *data) {
  sse_src *s = data;

  (void)st;
  (void)resp;
  consumer_source_connected(s->h.base.consumer);
  return 0;
}

/* Says what the end of a connection means for the consumer: a routine
 * reconnect, a backoff it reports, or the end of the consumer. */
static void on_end(sse_stream *st, const sse_stream_end *e, void *data) {
  sse_src *s = data;
  consumer *c = s->h.base.consumer;

  (void)st;
  if (e->fatal)
    http_source_fail(&s->h, "%s", e->why);
  else if (e->failure)
    consumer_source_backoff(c, e->delay_ms, e->attempt, e->why);
  else
    log_debug("stream ended; reconnecting", LS("consumer", consumer_name(c)),
              LU("in_ms", e->delay_ms));
}

static const sse_stream_hooks stream_hooks = {
  .on_open = on_open,
  .on_event = on_event,
  .on_id_only = on_id_only,
  .cursor = cursor,
  .has_room = has_room,
  .on_end = on_end,
};

static void sse_on_room(source *src) {
  sse_src *s = (sse_src *)src;

  if (!s->h.stopping && !s->h.failed)
    sse_stream_resume(&s->st);
}

static void on_stream_closed(sse_stream *st, void *data) {
  sse_src *s = data;

  (void)st;
  s->stream_open = false;
  http_source_close(&s->h.base);
}

/* The stream first (its request and timer), then the base. */
static void sse_close(source *src) {
  sse_src *s = (sse_src *)src;

  if (s->stream_open)
    sse_stream_close(&s->st, on_stream_closed, s);
  else
    http_source_close(src);
}

static void free_src(sse_src *s) {
  size_t i;

  buf_free(&s->last_id);
  for (i = 0; i < s->n_types; i++)
    free(s->types[i]);
  free(s->types);
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
  upstream *up = consumer_upstream(c);
  sse_src *s = calloc(1, sizeof *s);
  const http_header cache = { "Cache-Control", "no-cache" };
  sse_stream_opts o;
  char *url = NULL;
  int rc;

  if (s == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  s->conf = sc;
  buf_init(&s->last_id, (size_t)sc->max_line);
  /* The base is not set up yet: its timer comes last, after every step
   * that can fail. */
  rc = http_url_resolve(upstream_http_conf(up)->url, sc->path, &url, err,
                        errlen);
  if (rc == 0 && sc->event_types[0] != '\0' &&
      (rc = split_types(s, sc->event_types)) != 0)
    snprintf(err, errlen, "out of memory");
  if (rc == 0 && set_last_id(s, r->position, strlen(r->position)) != 0) {
    rc = UV_ENOMEM;
    snprintf(err, errlen, "out of memory");
  }
  if (rc == 0) {
    memset(&o, 0, sizeof o);
    o.url = url;
    o.resume_query =
        strncmp(sc->resume, "query:", 6) == 0 ? sc->resume + 6 : NULL;
    o.headers = &cache;
    o.n_headers = 1;
    o.limits.max_line = (size_t)sc->max_line;
    o.limits.max_event_size = (size_t)sc->max_event_size;
    o.idle_timeout = sc->idle_timeout;
    o.max_redirects = 5;
    rc = sse_stream_init(&s->st, up, &o, &stream_hooks, s, err, errlen);
  }
  free(url);
  if (rc != 0) {
    free_src(s);
    return rc;
  }
  s->stream_open = true;
  http_source_init(&s->h, &source_sse, c, free_source);
  *out = &s->h.base;
  sse_stream_start(&s->st);
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
  .close = sse_close,
  .on_room = sse_on_room,
};
