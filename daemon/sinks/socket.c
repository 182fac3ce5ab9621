/* Sink `socket`: events go to subscribers of the local API, which
 * acknowledge them (see socket.h).
 *
 * The sink accepts each batch at once (copying its lines) and holds every
 * event until it is acknowledged: the consumer's window bounds how many
 * that can be. An event is "assigned" to one subscriber with a deadline;
 * an acknowledgement delivers it, a missed deadline or the subscriber's
 * departure puts it back for another. The consumer's cursor moves over the
 * acknowledged events (sink_report.delivered), so nothing is committed
 * that no application has confirmed.
 *
 * Attempts: each time an event goes out to a subscriber and comes back
 * unacknowledged (its ack_timeout passed, or the subscriber left) is one
 * failed attempt. At max_attempts, on_fail decides: retry goes on as
 * before, skip gives the event up at once (report.gave_up, an error in the
 * log), dead_letter:PATH gives it up once its record is durable in PATH;
 * until then it is held and goes to no one.
 */
#include "daemon/sinks/socket.h"

#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "daemon/dead_letter.h"
#include "daemon/log.h"
#include "protocol/buf.h"

/* Backoff of a dead-letter write that failed. */
#define SOCKET_DL_RETRY_MIN_MS 250
#define SOCKET_DL_RETRY_MAX_MS 30000

typedef struct socket_conf {
  uint64_t ack_timeout; /* ms an event may wait for its acknowledgement */
} socket_conf;

static const option socket_options[] = {
  { "ack_timeout", OPT_DURATION, "30s", offsetof(socket_conf, ack_timeout),
    "an event not acknowledged within this goes to another subscriber", 10,
    86400000, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

typedef struct sock_sink sock_sink;

typedef struct sub {
  sock_sink *owner;
  http_conn *conn;
  char *name; /* as the subscriber named itself; NULL = anonymous */
  socket_format format;
  bool peek;
  bool blocked; /* its stream is full: wait for on_drain */
  buf out;      /* frames gathered in one dispatch, written as one chunk */
  struct sub *next;
} sub;

typedef struct item {
  uint64_t seq;
  char *line; /* the envelope line, newline included */
  size_t len;
  sub *to;           /* the subscriber it went to; NULL: waiting */
  uint64_t deadline; /* uv_now() by which it must be acknowledged */
  bool acked;        /* acknowledged, or given up on */
  bool dead;         /* its dead-letter record is on its way: held, sent to
                        no one */
  uint32_t attempts; /* times it came back unacknowledged */
  const char *why;   /* the last time's reason; static text */
} item;

struct sock_sink {
  sink base;
  uv_loop_t *loop;
  char *consumer;
  uint64_t ack_timeout;
  int64_t max_attempts; /* 0: never give up */
  sink_on_fail on_fail;
  dead_letter *dl; /* on_fail = dead_letter:PATH; else NULL */
  /* The events held, in seq order: items[head..n) are live. */
  item *items;
  size_t head, n, cap;
  size_t next_free; /* no waiting item before this index (a hint) */
  sub *subs;
  sub *rr; /* where round-robin goes on */
  uv_timer_t deadlines;
  uv_timer_t accepted; /* reports SINK_ACCEPTED on the next loop turn */
  sink_write_cb write_cb;
  void *write_data;
  uint64_t redelivered; /* events put back for another subscriber */
  uint64_t failed;      /* events given up on */
  uint64_t dead_lettered;
  size_t assigned;    /* events with a subscriber, not acknowledged */
  bool no_subscriber; /* reported: events wait and nobody takes them */
  int pending_closes;
  sink_close_cb close_cb;
  void *close_data;
};

static item *find(sock_sink *k, uint64_t seq) {
  uint64_t first;

  if (k->head == k->n)
    return NULL;
  first = k->items[k->head].seq;
  if (seq < first || seq - first >= k->n - k->head)
    return NULL;
  return &k->items[k->head + (size_t)(seq - first)];
}

/* Drops acknowledged events from the front and compacts now and then. */
static void trim(sock_sink *k) {
  while (k->head < k->n && k->items[k->head].acked) {
    free(k->items[k->head].line);
    k->head++;
  }
  if (k->head == k->n) {
    k->head = k->n = k->next_free = 0;
  } else if (k->head > k->cap / 2) {
    memmove(k->items, k->items + k->head, (k->n - k->head) * sizeof *k->items);
    k->n -= k->head;
    k->next_free = k->next_free > k->head ? k->next_free - k->head : 0;
    k->head = 0;
  }
  if (k->next_free < k->head)
    k->next_free = k->head;
}

/* What a subscriber may have queued before it takes no more events until
 * its stream drains (below the server's 1 MiB stream cap, so a gathered
 * write is never refused). A subscriber with nothing queued takes an event
 * of any size. */
#define SUB_BUDGET (256 * 1024)

static size_t pending(const sub *s) {
  return http_conn_stream_queued(s->conn) + s->out.len;
}

/* The next subscriber able to take an event of len bytes, round-robin. */
static sub *pick(sock_sink *k, size_t len) {
  sub *start = k->rr != NULL ? k->rr : k->subs, *s = start;

  if (s == NULL)
    return NULL;
  do {
    sub *next = s->next != NULL ? s->next : k->subs;

    if (!s->peek && !s->blocked) {
      size_t p = pending(s);

      if (p == 0 || p + len <= SUB_BUDGET) {
        k->rr = next;
        return s;
      }
      s->blocked = true; /* until on_drain */
    }
    s = next;
  } while (s != start);
  return NULL;
}

/* Appends the event as the subscriber's format frames it. */
static int frame(sub *s, const item *it) {
  if (s->format == SOCKET_NDJSON)
    return buf_append(&s->out, it->line, it->len);
  /* text/event-stream: the envelope is one line, so one data: field. */
  if (buf_appendf(&s->out, "id: %" PRIu64 "\ndata: ", it->seq) != 0 ||
      buf_append(&s->out, it->line, it->len - 1) != 0 ||
      buf_append(&s->out, "\n\n", 2) != 0)
    return UV_ENOMEM;
  return 0;
}

/* Writes what was gathered for s as one chunk. A refused write keeps it
 * for on_drain; a closed stream drops it (on_closed puts its events back). */
static void flush(sub *s) {
  int rc;

  if (s->out.len == 0)
    return;
  rc = http_conn_stream_write(s->conn, s->out.data, s->out.len);
  if (rc == UV_ENOBUFS) {
    s->blocked = true;
    return;
  }
  buf_reset(&s->out);
}

static void arm_deadlines(sock_sink *k);

/* Tells the consumer (and so `tether status`) when events wait with no
 * subscriber to take them, and when one is back. */
static void report_waiting(sock_sink *k) {
  bool none = k->head < k->n && socket_sink_subscribers(&k->base) == 0;

  if (none == k->no_subscriber || k->close_cb != NULL ||
      k->base.report.state == NULL)
    return;
  k->no_subscriber = none;
  k->base.report.state(&k->base, none ? "no_subscriber" : NULL,
                       k->base.report.data);
}

/* Hands every waiting event to a subscriber that can take it. */
static void dispatch(sock_sink *k) {
  size_t i;
  sub *s;

  for (i = k->next_free; i < k->n; i++) {
    item *it = &k->items[i];

    if (it->acked || it->to != NULL || it->dead)
      continue;
    if ((s = pick(k, it->len + 40)) == NULL || frame(s, it) != 0)
      break;
    it->to = s;
    it->deadline = uv_now(k->loop) + k->ack_timeout;
    k->assigned++;
  }
  k->next_free = i;
  for (s = k->subs; s != NULL; s = s->next)
    if (!s->peek)
      flush(s);
  arm_deadlines(k);
  report_waiting(k);
}

/* A peeker gets a copy of items [from, to); one that falls more than the
 * stream cap behind is let go rather than shown a stream with holes. */
static void peek_copy(sock_sink *k, sub *s, size_t from, size_t to) {
  size_t i;
  int rc = 0;

  for (i = from; i < to && rc == 0; i++)
    if (!k->items[i].acked)
      rc = frame(s, &k->items[i]);
  if (rc == 0 && s->out.len > 0)
    rc = http_conn_stream_write(s->conn, s->out.data, s->out.len);
  buf_reset(&s->out);
  if (rc == 0 || rc == UV_ECANCELED)
    return;
  log_warn("a peeking subscriber fell behind; it is disconnected",
           LS("consumer", k->consumer), LS("name", s->name ? s->name : ""));
  http_conn_close(s->conn);
}

static void report_gave_up(sock_sink *k, item *it) {
  it->acked = true;
  k->failed++;
  if (k->base.report.gave_up != NULL)
    k->base.report.gave_up(&k->base, it->seq, it->seq, it->why,
                           k->base.report.data);
  else if (k->base.report.delivered != NULL)
    k->base.report.delivered(&k->base, it->seq, it->seq, k->base.report.data);
}

/* The event came back unacknowledged (why: static text), a failed attempt:
 * it goes back for another subscriber, or on_fail gives up on it. Leaves
 * the items where they are (no trim), so callers may go on walking them. */
static void unassign(sock_sink *k, item *it, const char *why) {
  size_t i = (size_t)(it - k->items);

  it->to = NULL;
  it->why = why;
  k->assigned--;
  if (it->attempts < UINT32_MAX)
    it->attempts++;
  if (k->max_attempts > 0 && it->attempts >= (uint64_t)k->max_attempts &&
      k->on_fail != SINK_ON_FAIL_RETRY) {
    if (k->on_fail == SINK_ON_FAIL_SKIP) {
      log_error("giving up on an event after max_attempts (on_fail = skip)",
                LS("consumer", k->consumer), LS("sink", "socket"),
                LU("seq", it->seq), LU("attempts", it->attempts),
                LS("err", why));
      report_gave_up(k, it);
      return;
    }
    log_warn("event goes to the dead-letter file after max_attempts",
             LS("consumer", k->consumer), LS("sink", "socket"),
             LU("seq", it->seq), LU("attempts", it->attempts), LS("err", why),
             LS("path", dead_letter_path(k->dl)));
    if (dead_letter_append(k->dl, it->seq, it->attempts, why, it->line, it->len,
                           0) == 0) {
      it->dead = true;
      return;
    }
    /* Out of memory: the event is not lost, it goes out again. */
    log_error("cannot queue a dead letter", LS("consumer", k->consumer),
              LS("sink", "socket"), LU("seq", it->seq),
              LS("err", uv_strerror(UV_ENOMEM)));
  }
  k->redelivered++;
  if (i < k->next_free)
    k->next_free = i;
}

static void on_deadlines(uv_timer_t *t) {
  sock_sink *k = t->data;
  uint64_t now = uv_now(k->loop), next = UINT64_MAX;
  size_t i, late = 0;

  for (i = k->head; i < k->n; i++) {
    item *it = &k->items[i];

    if (it->acked || it->to == NULL)
      continue;
    if (it->deadline <= now) {
      unassign(k, it, "not acknowledged within ack_timeout");
      late++;
    } else if (it->deadline < next) {
      next = it->deadline;
    }
  }
  if (late > 0)
    log_warn("events not acknowledged in time go to another subscriber",
             LS("consumer", k->consumer), LU("events", late),
             LU("ack_timeout_ms", k->ack_timeout));
  if (next != UINT64_MAX)
    uv_timer_start(&k->deadlines, on_deadlines, next - now, 0);
  trim(k);
  dispatch(k);
}

/* The timer runs while any event waits for its acknowledgement. Every
 * deadline is set to now + ack_timeout, so one started now is never later
 * than the earliest; when it fires early, on_deadlines re-arms it at the
 * earliest one left. No scan of the window on the hot path. */
static void arm_deadlines(sock_sink *k) {
  if (k->close_cb != NULL)
    return;
  if (k->assigned == 0)
    uv_timer_stop(&k->deadlines);
  else if (!uv_is_active((uv_handle_t *)&k->deadlines))
    uv_timer_start(&k->deadlines, on_deadlines, k->ack_timeout, 0);
}

/* An event may be acknowledged only while it is out with a subscriber: one
 * still waiting was never sent, so no one can have it. With a name, only
 * the subscriber of that name may acknowledge it. */
static bool ackable(const item *it, const char *name) {
  if (it->acked || it->to == NULL)
    return false;
  return name == NULL ||
         (it->to->name != NULL && strcmp(it->to->name, name) == 0);
}

/* Reports the acknowledged events of items[from, to) as delivered, in
 * runs. The walk is over the events held, never over the numbers the
 * request names, so an acknowledgement costs O(events held) whatever it
 * says. */
static size_t deliver(sock_sink *k, size_t from, size_t to, const char *name) {
  uint64_t run = 0, prev = 0;
  size_t i, n = 0;

  for (i = from; i < to; i++) {
    item *it = &k->items[i];

    if (!ackable(it, name)) {
      if (run != 0)
        k->base.report.delivered(&k->base, run, prev, k->base.report.data);
      run = 0;
      continue;
    }
    k->assigned--;
    it->acked = true;
    n++;
    if (run == 0)
      run = it->seq;
    prev = it->seq;
  }
  if (run != 0)
    k->base.report.delivered(&k->base, run, prev, k->base.report.data);
  trim(k);
  arm_deadlines(k);
  return n;
}

size_t socket_sink_ack_through(sink *s, uint64_t seq, const char *name) {
  sock_sink *k = (sock_sink *)s;
  uint64_t first;
  size_t to;

  if (k->head == k->n)
    return 0;
  first = k->items[k->head].seq;
  if (seq < first)
    return 0;
  /* items are consecutive seqs, so the end is found without a walk. */
  to = seq - first >= k->n - k->head ? k->n
                                     : k->head + (size_t)(seq - first) + 1;
  return deliver(k, k->head, to, name);
}

size_t socket_sink_ack(sink *s, uint64_t seq, const char *name) {
  sock_sink *k = (sock_sink *)s;
  item *it = find(k, seq);
  size_t i;

  if (it == NULL)
    return 0;
  i = (size_t)(it - k->items);
  return deliver(k, i, i + 1, name);
}

size_t socket_sink_subscribers(const sink *s) {
  const sock_sink *k = (const sock_sink *)s;
  const sub *x;
  size_t n = 0;

  for (x = k->subs; x != NULL; x = x->next)
    n += !x->peek;
  return n;
}

static void on_drain(http_conn *c, void *data) {
  sub *s = data;

  (void)c;
  s->blocked = false;
  flush(s);
  dispatch(s->owner);
}

static void on_sub_closed(http_conn *c, void *data) {
  sub *s = data, **p;
  sock_sink *k = s->owner;
  size_t i, back = 0;

  (void)c;
  for (p = &k->subs; *p != NULL; p = &(*p)->next) {
    if (*p == s) {
      *p = s->next;
      break;
    }
  }
  if (k->rr == s)
    k->rr = NULL;
  for (i = k->head; i < k->n; i++) {
    if (k->items[i].to == s && !k->items[i].acked) {
      unassign(k, &k->items[i], "the subscriber left without acknowledging it");
      back++;
    }
  }
  trim(k);
  if (!s->peek)
    log_info("subscriber left", LS("consumer", k->consumer),
             LU("unacknowledged", back),
             LU("subscribers", socket_sink_subscribers(&k->base)));
  buf_free(&s->out);
  free(s->name);
  free(s);
  dispatch(k);
}

int socket_sink_subscribe(sink *snk, http_conn *c, socket_format format,
                          bool peek, const char *name, long uid, long pid) {
  sock_sink *k = (sock_sink *)snk;
  http_stream_callbacks cbs;
  sub *s;
  int rc;

  if (k->close_cb != NULL)
    return UV_ECANCELED;
  if ((s = calloc(1, sizeof *s)) == NULL ||
      (name != NULL && (s->name = strdup(name)) == NULL)) {
    free(s);
    return UV_ENOMEM;
  }
  rc = http_conn_stream_start(c, 200,
                              format == SOCKET_SSE ? "text/event-stream"
                                                   : "application/x-ndjson");
  if (rc != 0) {
    free(s->name);
    free(s);
    return rc;
  }
  s->owner = k;
  s->conn = c;
  buf_init(&s->out, 0);
  s->format = format;
  s->peek = peek;
  cbs.on_drain = on_drain;
  cbs.on_closed = on_sub_closed;
  cbs.data = s;
  http_conn_stream_callbacks(c, &cbs);
  s->next = k->subs;
  k->subs = s;
  if (peek) {
    /* A peeker first sees what is held now, then what arrives. */
    peek_copy(k, s, k->head, k->n);
    return 0;
  }
  log_info("subscriber attached", LS("consumer", k->consumer),
           LS("name", s->name != NULL ? s->name : ""), LI("by_uid", uid),
           LI("by_pid", pid),
           LS("format", format == SOCKET_SSE ? "sse" : "ndjson"),
           LU("subscribers", socket_sink_subscribers(&k->base)));
  dispatch(k);
  return 0;
}

static void on_accepted(uv_timer_t *t) {
  sock_sink *k = t->data;
  sink_write_cb cb = k->write_cb;

  k->write_cb = NULL;
  cb(&k->base, SINK_ACCEPTED, NULL, k->write_data);
}

static void socket_write(sink *snk, const sink_batch *b, sink_write_cb cb,
                         void *data) {
  sock_sink *k = (sock_sink *)snk;
  const char *p = b->data, *end = b->data + b->len, *nl;
  uint64_t seq = b->first_seq;
  size_t start = k->n;
  sub *s, *next;

  assert(k->write_cb == NULL && "one write at a time");
  for (; p < end && seq <= b->last_seq; p = nl + 1, seq++) {
    item *it;

    nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL)
      nl = end - 1;
    if (k->n == k->cap) {
      size_t cap = k->cap ? k->cap * 2 : 64;
      item *bigger = realloc(k->items, cap * sizeof *bigger);

      if (bigger == NULL)
        goto oom;
      k->items = bigger;
      k->cap = cap;
    }
    it = &k->items[k->n];
    memset(it, 0, sizeof *it);
    it->seq = seq;
    it->len = (size_t)(nl - p) + 1;
    if ((it->line = malloc(it->len)) == NULL)
      goto oom;
    memcpy(it->line, p, it->len);
    k->n++;
  }
  /* Peekers get a copy of each new event, and never hold one. */
  for (s = k->subs; s != NULL; s = next) {
    next = s->next; /* a peeker let go leaves the list later, not now */
    if (s->peek)
      peek_copy(k, s, start, k->n);
  }
  dispatch(k);
  k->write_cb = cb;
  k->write_data = data;
  uv_timer_start(&k->accepted, on_accepted, 0, 0);
  return;

oom:
  /* Nothing of this batch is taken: it is retried whole. */
  while (k->n > start)
    free(k->items[--k->n].line);
  cb(snk, SINK_RETRY, "out of memory holding the batch", data);
}

/* The records first..last are durable: those events are given up on. */
static void on_dead_letter(dead_letter *d, uint64_t first, uint64_t last,
                           uint64_t tag, void *data) {
  sock_sink *k = data;
  uint64_t seq;
  item *it;

  (void)d, (void)tag;
  for (seq = first; seq <= last; seq++) {
    it = find(k, seq);
    if (it != NULL && it->dead && !it->acked) {
      it->dead = false;
      k->dead_lettered++;
      report_gave_up(k, it);
    }
  }
  trim(k);
}

static void socket_sync(sink *snk, sink_sync_cb cb, void *data) {
  /* An acknowledgement is the application's word that it has the event,
   * and a dead letter is durable before its event is given up: there is
   * nothing of tether's own to make durable. */
  cb(snk, 0, NULL, data);
}

/* One of the sink's handles (or its dead-letter writer) is closed; the
 * last one frees the sink. */
static void close_step(sock_sink *k) {
  sink_close_cb cb;
  void *data;
  size_t i;

  if (--k->pending_closes > 0)
    return;
  cb = k->close_cb;
  data = k->close_data;
  for (i = k->head; i < k->n; i++)
    free(k->items[i].line);
  free(k->items);
  free(k->consumer);
  free(k);
  cb(data);
}

static void on_handle_closed(uv_handle_t *h) {
  close_step(h->data);
}

static void on_dead_letter_closed(void *data) {
  sock_sink *k = data;

  k->dl = NULL;
  close_step(k);
}

static void socket_close(sink *snk, sink_close_cb cb, void *data) {
  sock_sink *k = (sock_sink *)snk;
  sub *s, *next;

  k->close_cb = cb;
  k->close_data = data;
  if (k->write_cb != NULL) {
    uv_timer_stop(&k->accepted);
    on_accepted(&k->accepted);
  }
  /* Subscribers' streams end; their on_closed callbacks unlink them. */
  for (s = k->subs; s != NULL; s = next) {
    const http_stream_callbacks none = { NULL, NULL, NULL };

    next = s->next;
    http_conn_stream_callbacks(s->conn, &none);
    http_conn_stream_end(s->conn);
    buf_free(&s->out);
    free(s->name);
    free(s);
  }
  k->subs = NULL;
  k->pending_closes = 2;
  /* A dead-letter write under way finishes first; records still queued
   * are dropped with their events, which come again after a restart. */
  if (k->dl != NULL) {
    k->pending_closes++;
    dead_letter_close(k->dl, on_dead_letter_closed, k);
  }
  uv_close((uv_handle_t *)&k->deadlines, on_handle_closed);
  uv_close((uv_handle_t *)&k->accepted, on_handle_closed);
}

static int socket_open(uv_loop_t *loop, const char *arg, const void *conf,
                       const sink_policy *policy, const char *consumer_name,
                       sink **out, char *err, size_t errlen) {
  const socket_conf *sc = conf;
  sock_sink *k = calloc(1, sizeof *k);
  int rc;

  (void)arg;
  if (k == NULL || (k->consumer = strdup(consumer_name)) == NULL) {
    free(k);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  if (policy != NULL) {
    k->max_attempts = policy->max_attempts;
    k->on_fail = policy->on_fail;
  }
  /* Opened now, so a bad path is an error at start-up. */
  if (k->on_fail == SINK_ON_FAIL_DEAD_LETTER &&
      (rc = dead_letter_open(loop, policy->dead_letter, consumer_name, "socket",
                             SOCKET_DL_RETRY_MIN_MS, SOCKET_DL_RETRY_MAX_MS,
                             on_dead_letter, k, &k->dl, err, errlen)) != 0) {
    free(k->consumer);
    free(k);
    return rc;
  }
  k->base.type = &sink_socket;
  k->loop = loop;
  k->ack_timeout = sc->ack_timeout;
  uv_timer_init(loop, &k->deadlines);
  uv_timer_init(loop, &k->accepted);
  k->deadlines.data = k;
  k->accepted.data = k;
  *out = &k->base;
  return 0;
}

static void socket_stats(const sink *snk, sink_stats *out) {
  const sock_sink *k = (const sock_sink *)snk;

  out->redelivered += k->redelivered;
  out->failed += k->failed;
  out->dead_lettered += k->dead_lettered;
  if (k->dl != NULL)
    out->write_errors += dead_letter_write_errors(k->dl);
}

/* SIGHUP: the dead-letter file may have been moved away. */
static void socket_reopen(sink *snk) {
  sock_sink *k = (sock_sink *)snk;

  if (k->dl != NULL && k->close_cb == NULL)
    dead_letter_reopen(k->dl);
}

const sink_type sink_socket = {
  .name = "socket",
  .description = "subscribers of the local API (GET /v1/consumers/NAME/events) "
                 "receive the events and acknowledge them",
  .options = socket_options,
  .conf_size = sizeof(socket_conf),
  .arg = NULL,
  .per_event_policy = true,
  .open = socket_open,
  .write = socket_write,
  .sync = socket_sync,
  .reopen = socket_reopen,
  .close = socket_close,
  .stats = socket_stats,
};
