/* Source `pocketbase`: a collection polled with the compound (created, id)
 * cursor (protocols/pocketbase.md §2.5) and the settle window of §2.6,
 * variant A.
 *
 * Each poll asks for the records strictly after the cursor, sorted by
 * (created, id), and hands on those whose created is at or before W =
 * server time - settle. Ties in one millisecond are safe because the id
 * breaks them; a late commit (a record stamped before one already visible)
 * is safe while it lands within settle, because nothing newer than W has
 * been handed on. Variant A, not B: the cursor of every record is exactly
 * its own (created, id), so the committed position is what the envelope
 * shows and a restart re-reads nothing; the price is settle of latency (2 s
 * by default, 0 turns it off for writers that never hold a transaction
 * open). W is applied here rather than in the filter, so a poll also sees
 * the records still settling and the next one is timed for the first of
 * them, with realtime or without.
 *
 * A full page polls again at once; otherwise the next poll is after
 * poll_interval, or earlier: when a record seen settling has settled, or
 * when realtime says a record was created (at its created + settle).
 * Realtime never hands records on itself: it has no replay and no order
 * (§6).
 *
 * Two lanes of requests per consumer (http_source holds both): the poll
 * lane (the start-up read of the mirror row, polls, the probe that
 * explains a 400), one request at a time, and the mirror lane beside it,
 * so a mirror write goes out as soon as a commit is durable, never behind
 * a poll the server holds or a page that waits for room.
 */
#include "daemon/sources/pocketbase.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/log.h"
#include "daemon/sources/http_source.h"
#include "daemon/sources/pager.h"
#include "daemon/sources/pb_client.h"
#include "loop/backoff.h"
#include "loop/http_client.h"
#include "protocol/buf.h"
#include "protocol/http.h"
#include "protocol/pocketbase.h"

/* ---- options ---- */

static const char *const auth_choices[] = { "none", "superuser", "user",
                                            "token", NULL };
static const char *const api_choices[] = { "auto", "current", "legacy", NULL };
static const char *const offset_choices[] = { "created", "id", NULL };
static const char *const start_choices[] = { "beginning", "now", NULL };

static const option pb_upstream_options[] = {
  UPSTREAM_HTTP_OPTIONS,
  { "auth", OPT_ENUM, "none", offsetof(pb_upstream_conf, auth),
    "none (guest), superuser (_superusers login), user (a login in "
    "auth_collection) or token (a fixed token)",
    0, 0, auth_choices, 0 },
  { "identity", OPT_STRING, "", offsetof(pb_upstream_conf, identity),
    "login identity (usually the email), for auth = superuser or user; use "
    "${VAR}",
    0, 0, NULL, 0 },
  { "password", OPT_STRING, "", offsetof(pb_upstream_conf, password),
    "login password, for auth = superuser or user; use ${VAR}", 0, 0, NULL,
    OPT_SECRET },
  { "auth_collection", OPT_STRING, "users",
    offsetof(pb_upstream_conf, auth_collection),
    "the auth collection of auth = user", 0, 0, NULL, 0 },
  { "token", OPT_STRING, "", offsetof(pb_upstream_conf, token),
    "the token of auth = token (e.g. an impersonation token); never "
    "refreshed",
    0, 0, NULL, OPT_SECRET },
  { "api_version", OPT_ENUM, "auto", offsetof(pb_upstream_conf, api_version),
    "auto (a superuser login falls back to /api/admins on a 404), current "
    "(v0.23+) or legacy (<= v0.22)",
    0, 0, api_choices, 0 },
  { "realtime", OPT_BOOL, "true", offsetof(pb_upstream_conf, realtime),
    "hold one /api/realtime stream that wakes the pollers when records are "
    "created; false = poll on poll_interval only",
    0, 0, NULL, 0 },
  { "request_timeout", OPT_DURATION, "30s",
    offsetof(pb_upstream_conf, request_timeout),
    "limit on one whole request (the realtime stream has none)", 100, 3600000,
    NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

static const option pb_consumer_options[] = {
  { "collection", OPT_STRING, NULL, offsetof(pb_consumer_conf, collection),
    "the collection to read, by its exact name", 0, 0, NULL, OPT_REQUIRED },
  { "filter", OPT_STRING, "", offsetof(pb_consumer_conf, filter),
    "a PocketBase filter the records must match, e.g. status = \"paid\"; no "
    "backslashes or // comments",
    0, 0, NULL, 0 },
  { "offset", OPT_ENUM, "created", offsetof(pb_consumer_conf, offset),
    "created: the (created, id) cursor, safe with ties and late commits; "
    "id: only for ids that increase (default ids are random)",
    0, 0, offset_choices, 0 },
  { "batch_size", OPT_INT, "200", offsetof(pb_consumer_conf, batch_size),
    "records per request (perPage; the server caps it at 1000, 500 before "
    "v0.23)",
    1, 1000, NULL, 0 },
  { "poll_interval", OPT_DURATION, "5s",
    offsetof(pb_consumer_conf, poll_interval),
    "pause after a poll that emptied the collection, unless realtime wakes "
    "it earlier",
    10, 86400000, NULL, 0 },
  { "settle", OPT_DURATION, "2s", offsetof(pb_consumer_conf, settle),
    "records are handed on only once they are this old by the server's clock, "
    "so "
    "a write committed late is not skipped; 0 = at once",
    0, 600000, NULL, 0 },
  { "start", OPT_ENUM, "beginning", offsetof(pb_consumer_conf, start),
    "where a consumer with no cursor starts: beginning, or now (records "
    "created from the server's time at start)",
    0, 0, start_choices, 0 },
  { "fields", OPT_STRING, "", offsetof(pb_consumer_conf, fields),
    "the fields to return (PocketBase fields=); id and created are added", 0, 0,
    NULL, 0 },
  { "expand", OPT_STRING, "", offsetof(pb_consumer_conf, expand),
    "relations to expand into each record (PocketBase expand=)", 0, 0, NULL,
    0 },
  { "offset_store", OPT_STRING, "local",
    offsetof(pb_consumer_conf, offset_store),
    "local, or upstream:COLLECTION to mirror each committed cursor into a "
    "consumer_offsets-style collection",
    0, 0, NULL, 0 },
  { "consumer_group", OPT_STRING, "",
    offsetof(pb_consumer_conf, consumer_group),
    "the mirror row's consumer_group; empty = the consumer's name", 0, 0, NULL,
    0 },
  { "appname", OPT_STRING, "", offsetof(pb_consumer_conf, appname),
    "written into the mirror row's appname when set", 0, 0, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

static bool plain_name(const char *s) {
  if (*s == '\0')
    return false;
  for (; *s != '\0'; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || *s == '_'))
      return false;
  return true;
}

static bool printable(const char *s) {
  for (; *s != '\0'; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f)
      return false;
  return true;
}

static int pb_upstream_check(void *conf, uint64_t explicit, char *err,
                             size_t errlen) {
  pb_upstream_conf *c = conf;
  int rc;

  if ((rc = upstream_http_check(conf, explicit, err, errlen)) != 0)
    return rc;
  if ((c->auth == PB_AUTH_SUPERUSER || c->auth == PB_AUTH_USER) &&
      (c->identity[0] == '\0' || c->password[0] == '\0')) {
    snprintf(err, errlen, "auth = %s needs identity and password",
             auth_choices[c->auth]);
    return UV_EINVAL;
  }
  if (c->auth == PB_AUTH_TOKEN && c->token[0] == '\0') {
    snprintf(err, errlen, "auth = token needs token");
    return UV_EINVAL;
  }
  if (c->auth == PB_AUTH_NONE &&
      (c->identity[0] != '\0' || c->password[0] != '\0' ||
       c->token[0] != '\0')) {
    snprintf(err, errlen,
             "credentials are set but auth = none: set auth = superuser, "
             "user or token");
    return UV_EINVAL;
  }
  if (!plain_name(c->auth_collection)) {
    snprintf(err, errlen,
             "auth_collection = \"%s\": expected a collection name (letters, "
             "digits, _)",
             c->auth_collection);
    return UV_EINVAL;
  }
  return 0;
}

static int pb_consumer_check(void *conf, uint64_t explicit, char *err,
                             size_t errlen) {
  pb_consumer_conf *c = conf;
  char why[256];
  const char *m;

  (void)explicit;
  if (!pb_value_ok(c->collection) || strchr(c->collection, '/') != NULL ||
      strchr(c->collection, '?') != NULL) {
    snprintf(err, errlen,
             "collection = \"%s\": expected a collection name (no quotes, "
             "backslashes, / or ?)",
             c->collection);
    return UV_EINVAL;
  }
  if (c->filter[0] != '\0' &&
      pb_filter_check(c->filter, why, sizeof why) != 0) {
    snprintf(err, errlen, "%s", why);
    return UV_EINVAL;
  }
  if (!printable(c->fields) || !printable(c->expand)) {
    snprintf(err, errlen, "fields and expand take printable text only");
    return UV_EINVAL;
  }
  if (strcmp(c->offset_store, "local") != 0) {
    if (strncmp(c->offset_store, "upstream:", 9) != 0 ||
        !plain_name(c->offset_store + 9)) {
      snprintf(err, errlen,
               "offset_store = \"%s\": expected local or upstream:COLLECTION",
               c->offset_store);
      return UV_EINVAL;
    }
  } else if (c->consumer_group[0] != '\0' || c->appname[0] != '\0') {
    snprintf(err, errlen,
             "consumer_group and appname name the mirror row: set "
             "offset_store = upstream:COLLECTION");
    return UV_EINVAL;
  }
  m = c->consumer_group[0] != '\0' ? c->consumer_group : NULL;
  if ((m != NULL && !pb_value_ok(m)) ||
      (c->appname[0] != '\0' && !pb_value_ok(c->appname))) {
    snprintf(err, errlen,
             "consumer_group and appname: no quotes, backslashes or control "
             "characters");
    return UV_EINVAL;
  }
  return 0;
}

/* ---- the source ---- */

/* Wake-ups waiting for the bound to pass them; more are folded into the
 * last, which only ever grows, so the latest one is always honoured. */
#define PB_MAX_WAKES 32

enum { REQ_POLL, REQ_PROBE, REQ_MIRROR_FIND, REQ_MIRROR_WRITE };

/* One lane of requests: at most one in flight. */
typedef struct pb_lane {
  http_req *req; /* in flight, or NULL */
  int kind;      /* what req is */
  unsigned gen;  /* the token it carries */
  bool reauthed; /* a 401/403 led to a new login; another one fails */
} pb_lane;

typedef struct pb_src {
  http_source h; /* first: requests, timer, backoff, close */
  const pb_consumer_conf *conf;
  pb_client *pc;
  pb_waiter waiter;
  pb_watch watch;
  char *topic;
  pb_cursor cursor;   /* of the last record handed to the window */
  pb_lane polls;      /* the mirror read at start-up, polls, the probe */
  pb_lane writes;     /* the mirror's finds and writes after start-up */
  bool waiting_token; /* a request of either lane waits for a token */
  bool poll_due;
  bool backing_off;     /* h.timer is a backoff: wake-ups do not cut it short */
  bool starting;        /* the mirror read or the start point comes first */
  bool woken_in_flight; /* a wake-up came while a poll ran */
  bool warned_future;   /* a far-future stamp was reported */
  int64_t poll_until;   /* the bound W of the poll in flight (server ms) */
  int64_t wakes[PB_MAX_WAKES]; /* server ms of created, ascending */
  size_t n_wakes;
  /* The page being handed over. */
  pb_page page;
  pager pager;
  int64_t held; /* created of the first record still settling; 0 = none */
  buf pos;      /* a record's position, as text */
  /* Offset mirror. */
  char *mirror; /* the collection, or NULL */
  const char *group;
  char *mirror_id;      /* the row's record id, once known */
  char *mirror_due;     /* a committed position not yet written */
  char *mirror_sending; /* the position of the write in flight */
  bool mirror_retry;    /* the last write failed: wait for the next poll */
  /* close() came: the last committed position is written to the mirror
   * (one write, no retry, no new login), then the source closes. */
  bool closing;
} pb_src;

static void kick(pb_src *s);
static void start_poll(pb_src *s);
static void finish_close(pb_src *s);
static bool is_mirror(int kind);

/* Fails the consumer for good; see http_source_fail. */
#define fail(s, ...) http_source_fail(&(s)->h, __VA_ARGS__)

static consumer *cons(pb_src *s) {
  return s->h.base.consumer;
}

static void on_poll_timer(uv_timer_t *t) {
  pb_src *s = t->data;

  s->backing_off = false;
  s->poll_due = true;
  kick(s);
}

/* The next poll in delay ms, unless one is due sooner. */
static void schedule(pb_src *s, uint64_t delay) {
  uint64_t due_in;

  if (s->h.stopping || s->h.failed)
    return;
  if (uv_is_active((uv_handle_t *)&s->h.timer)) {
    if (s->backing_off)
      return;
    due_in = uv_timer_get_due_in(&s->h.timer);
    if (due_in <= delay)
      return;
  }
  uv_timer_start(&s->h.timer, on_poll_timer, delay, 0);
}

static void back_off(pb_src *s, uint64_t delay, const char *why) {
  if (s->closing) {
    kick(s); /* no retries while closing: kick closes */
    return;
  }
  s->backing_off = true;
  s->poll_due = false;
  http_source_wait(&s->h, delay, on_poll_timer, why);
}

/* The poll after one that emptied what it could see: after poll_interval,
 * or when the earliest pending wake-up's record has settled. */
static void schedule_after_poll(pb_src *s) {
  const pb_consumer_conf *c = s->conf;
  uint64_t now = uv_now(consumer_loop(cons(s))), delay = c->poll_interval, at;
  size_t i, k = 0;

  /* Wake-ups the finished poll covered are done: with a bound, those at
   * or before it; without, all of them, and one that came while the poll
   * ran asks for another at once (its record may have missed this one). */
  for (i = 0; i < s->n_wakes; i++)
    if (s->poll_until != 0 && s->wakes[i] > s->poll_until)
      s->wakes[k++] = s->wakes[i];
  s->n_wakes = k;
  if (s->woken_in_flight)
    delay = 0;
  s->woken_in_flight = false;
  if (k > 0) {
    at = pb_client_loop_time(s->pc, s->wakes[0] + (int64_t)c->settle) + 1;
    if (at - now < delay)
      delay = at > now ? at - now : 0;
  }
  schedule(s, delay);
}

/* Keeps created (server ms) among the pending wake-ups, sorted; when they
 * are full, the last one only grows. */
static void add_wake(pb_src *s, int64_t created) {
  size_t i;

  if (s->n_wakes == PB_MAX_WAKES) {
    if (created > s->wakes[PB_MAX_WAKES - 1])
      s->wakes[PB_MAX_WAKES - 1] = created;
  } else {
    for (i = s->n_wakes; i > 0 && s->wakes[i - 1] > created; i--)
      s->wakes[i] = s->wakes[i - 1];
    s->wakes[i] = created;
    s->n_wakes++;
  }
}

static void wake(pb_src *s, int64_t created) {
  const pb_consumer_conf *c = s->conf;
  uint64_t now, at;

  if (s->h.stopping || s->h.failed)
    return;
  if (c->offset == PB_OFFSET_ID || c->settle == 0 || created == 0) {
    created = pb_client_server_now(s->pc) - (int64_t)c->settle;
  }
  add_wake(s, created);
  /* A record the poll in flight should cover but may have missed (its
   * commit came after the query): poll again when it ends. */
  if (s->polls.req != NULL && s->polls.kind == REQ_POLL &&
      (s->poll_until == 0 || created <= s->poll_until))
    s->woken_in_flight = true;
  /* A timer that fires while a request runs leaves the poll due for when
   * it ends; a poll in flight reschedules from the wake-ups it left. */
  now = uv_now(consumer_loop(cons(s)));
  at = pb_client_loop_time(s->pc, s->wakes[0] + (int64_t)c->settle) + 1;
  schedule(s, at > now ? at - now : 0);
}

static void on_watch_event(pb_watch *w, int64_t created) {
  wake(container_of(w, pb_src, watch), created);
}

static void on_watch_connect(pb_watch *w) {
  pb_src *s = container_of(w, pb_src, watch);

  /* Catch up at once: the stream was down for a while. */
  if (!s->backing_off && !s->h.stopping && !s->h.failed)
    schedule(s, 0);
}

/* ---- requests ---- */

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data);

static const http_callbacks pb_http_callbacks = { .on_done = on_done };

static void on_token(pb_waiter *w, int status, const char *why) {
  pb_src *s = container_of(w, pb_src, waiter);

  s->waiting_token = false;
  if (s->h.stopping || s->h.failed)
    return;
  if (status == UV_EAGAIN) {
    back_off(s, backoff_next_at(&s->h.retry, uv_now(consumer_loop(cons(s)))),
             why != NULL && why[0] ? why : "waiting for a PocketBase login");
    return;
  }
  if (status != 0) {
    fail(s, "%s", why);
    return;
  }
  kick(s);
}

/* Starts a request of kind on path ("/api/...") in lane l; false when it
 * must wait for a token (the waiter kicks again) or failed. */
static bool send_req(pb_src *s, pb_lane *l, int kind, const char *method,
                     const char *path, const char *body, size_t body_len) {
  const char *token;
  pb_request pr;
  int rc;

  assert(l->req == NULL);
  if (!pb_client_token(s->pc, &token, &l->gen)) {
    if (s->closing)
      return false; /* no new login for the last mirror write */
    if (pb_client_auth_error(s->pc) != NULL) {
      fail(s, "%s", pb_client_auth_error(s->pc));
      return false;
    }
    if (!s->waiting_token) /* the other lane may wait already */
      pb_client_wait(s->pc, &s->waiter);
    s->waiting_token = true;
    return false;
  }
  l->kind = kind;
  rc = pb_client_prepare(s->pc, method, path, body, body_len, token, &pr);
  if (rc == 0)
    rc = http_source_request(&s->h, &pr.req, &pb_http_callbacks, s, &l->req);
  pb_request_free(&pr);
  if (rc != 0) {
    fail(s, "cannot start a request: %s", http_strerror(rc));
    return false;
  }
  return true;
}

static void start_poll(pb_src *s) {
  const pb_consumer_conf *c = s->conf;
  pb_list_query q;
  int64_t per_page = c->batch_size;
  buf target;
  int rc;

  s->mirror_retry = false; /* a failed mirror write goes again after this */
  /* The bound W is applied here, not in the filter: the page then shows
   * the records still settling too, and the next poll is timed for the
   * first of them. settle = 0 has no bound at all, so the clock estimate
   * (which errs early) holds nothing back. */
  s->poll_until = 0;
  if (c->offset == PB_OFFSET_CREATED && c->settle > 0)
    s->poll_until = pb_client_server_now(s->pc) - (int64_t)c->settle;
  if (pb_client_legacy(s->pc) && per_page > 500)
    per_page = 500;
  memset(&q, 0, sizeof q);
  q.collection = c->collection;
  q.offset = c->offset;
  q.after = &s->cursor;
  q.until = NULL;
  q.filter = c->filter;
  q.per_page = per_page;
  q.fields = c->fields;
  q.expand = c->expand;
  buf_init(&target, 0);
  rc = pb_list_target(&q, &target);
  if (rc == 0 && buf_cstr(&target) == NULL)
    rc = UV_ENOMEM;
  if (rc != 0) {
    buf_free(&target);
    if (rc == UV_E2BIG)
      fail(s,
           "the filter with the cursor would pass PocketBase's limit of "
           "%d bytes: shorten filter",
           PB_FILTER_MAX);
    else if (rc == UV_EINVAL)
      fail(s,
           "cannot write a poll for cursor \"%s|%s\": a value is not "
           "portable into a filter",
           s->cursor.created, s->cursor.id);
    else
      fail(s, "out of memory building a request");
    return;
  }
  s->poll_due = false;
  if (!send_req(s, &s->polls, REQ_POLL, "GET", target.data, NULL, 0))
    s->poll_due = true; /* asked again once the token is there */
  buf_free(&target);
}

/* ---- the offset mirror ---- */

static void start_mirror(pb_src *s) {
  buf b;
  int rc;

  buf_init(&b, 0);
  if (s->mirror_id == NULL) {
    rc = pb_mirror_find_target(s->mirror, s->group, s->conf->collection, &b);
    if (rc == 0 && buf_cstr(&b) != NULL)
      send_req(s, &s->writes, REQ_MIRROR_FIND, "GET", b.data, NULL, 0);
    buf_free(&b);
    return;
  }
  free(s->mirror_sending);
  s->mirror_sending = s->mirror_due;
  s->mirror_due = NULL;
  rc = pb_mirror_body(s->group, s->conf->collection, s->mirror_sending,
                      s->conf->appname, &b);
  if (rc == 0) {
    char path[1024];

    if (s->mirror_id[0] == '\0')
      snprintf(path, sizeof path, "/api/collections/%s/records", s->mirror);
    else
      snprintf(path, sizeof path, "/api/collections/%s/records/%s", s->mirror,
               s->mirror_id);
    if (!send_req(s, &s->writes, REQ_MIRROR_WRITE,
                  s->mirror_id[0] == '\0' ? "POST" : "PATCH", path, b.data,
                  b.len) &&
        s->mirror_due == NULL) {
      s->mirror_due = s->mirror_sending; /* waits for the token */
      s->mirror_sending = NULL;
    }
  }
  buf_free(&b);
}

static void mirror_failed(pb_src *s, const char *why) {
  log_warn("offset mirror write failed; the local cursor is unaffected",
           LS("consumer", consumer_name(cons(s))), LS("collection", s->mirror),
           LS("error", why));
  /* Write the newest position later; the next poll goes first. */
  if (s->mirror_due == NULL) {
    s->mirror_due = s->mirror_sending;
    s->mirror_sending = NULL;
  }
  s->mirror_retry = true;
}

/* The mirror's answers after start-up. */
static void on_mirror_done(pb_src *s, int kind, const http_response *resp) {
  char err[640], *id = NULL, *offset = NULL;
  pb_error e;
  int rc;

  if (kind == REQ_MIRROR_FIND && resp->status == 200) {
    rc = pb_mirror_parse(resp->body, resp->body_len, &id, &offset, err,
                         sizeof err);
    free(offset);
    if (rc != 0 && rc != UV_ENOENT) {
      mirror_failed(s, err);
      return;
    }
    free(s->mirror_id);
    s->mirror_id = rc == 0 ? id : strdup(""); /* "": the write creates it */
    if (rc != 0)
      free(id);
    if (s->mirror_id == NULL)
      mirror_failed(s, "out of memory");
    return;
  }
  if (kind == REQ_MIRROR_WRITE && resp->status == 200) {
    if (s->mirror_id[0] == '\0') {
      json_t *doc = json_loadb(resp->body, resp->body_len, 0, NULL);
      json_t *v = json_object_get(doc, "id");

      free(s->mirror_id);
      s->mirror_id = json_is_string(v) ? strdup(json_string_value(v)) : NULL;
      json_decref(doc);
    }
    log_debug("offset mirrored", LS("consumer", consumer_name(cons(s))),
              LS("offset", s->mirror_sending));
    free(s->mirror_sending);
    s->mirror_sending = NULL;
    return;
  }
  pb_error_parse(resp->body, resp->body_len, &e);
  if (resp->status == 404 || resp->status == 400) {
    /* The row went away, or another writer created it first (a unique
     * index): find it again before the next write. */
    free(s->mirror_id);
    s->mirror_id = NULL;
  }
  snprintf(err, sizeof err, "HTTP %d: %s%s%s", resp->status, e.message,
           e.detail[0] ? "; " : "", e.detail);
  mirror_failed(s, err);
}

/* ---- polling ---- */

/* The pager's item: hands record i of the page to the window; a record
 * still settling ends the page there. */
static int hand_item(pager *p, size_t i, void *data) {
  pb_src *s = data;
  json_t *item = json_array_get(s->page.items, i);
  json_t *created;
  pb_cursor cur;
  char *text;
  int64_t t = 0;
  event e;
  int rc;

  (void)p;
  created = json_object_get(item, "created");
  if (json_is_string(created))
    pb_time_parse(json_string_value(created), json_string_length(created), &t);
  if (s->poll_until != 0 && t > s->poll_until) {
    s->held = t; /* still settling, and so is everything after it */
    return PAGER_END;
  }
  pb_item_cursor(item, &cur);
  if (s->conf->offset == PB_OFFSET_ID)
    cur.created[0] = '\0'; /* an id cursor is "|id" */
  if (pb_cursor_cmp(&cur, &s->cursor) <= 0)
    return PAGER_NEXT; /* not after the cursor: the server ignored the filter */
  buf_reset(&s->pos);
  text = json_dumps(item, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (text == NULL || pb_cursor_format(&cur, &s->pos) != 0) {
    free(text);
    fail(s, "out of memory handing over a page");
    return UV_ENOMEM;
  }
  memset(&e, 0, sizeof e);
  e.name = "create";
  e.kind = s->conf->collection;
  e.position = s->pos.data;
  e.position_len = s->pos.len;
  e.data = text;
  e.data_len = strlen(text);
  e.data_is_json = true;
  e.time_ms = t;
  rc = consumer_emit(cons(s), &e) == 0 ? UV_ENOMEM : 0;
  free(text);
  if (rc != 0) {
    fail(s, "cannot hand a record on: %s", uv_strerror(rc));
    return rc;
  }
  s->cursor = cur;
  return PAGER_NEXT;
}

/* The pager's done: the page went to the window up to end. */
static void page_done(pager *p, size_t end, void *data) {
  pb_src *s = data;
  size_t n = json_array_size(s->page.items);
  int64_t held = s->held;

  (void)p;
  (void)end;
  if (held != 0) {
    /* Come back when the first record still settling has settled. A stamp
     * far ahead of the server's clock (set by a hook or a migration) holds
     * everything after it: say so once. */
    if (held - s->poll_until > 60000 && !s->warned_future) {
      s->warned_future = true;
      log_warn("a record is stamped ahead of the server's clock; records "
               "after it wait until it settles",
               LS("consumer", consumer_name(cons(s))),
               LI("ahead_s", (held - s->poll_until) / 1000));
    }
    pb_page_free(&s->page);
    add_wake(s, held);
    schedule_after_poll(s);
    kick(s);
  } else if ((int64_t)n >= s->page.per_page && n > 0) {
    /* A full page: more may follow at once. */
    pb_page_free(&s->page);
    s->poll_due = true;
    kick(s);
  } else {
    pb_page_free(&s->page);
    schedule_after_poll(s);
    kick(s); /* a mirror write may be due */
  }
}

static const pager_callbacks pb_pager = { hand_item, page_done };

/* The newest created of a page is a stamp the server's clock has passed. */
static void observe_newest(pb_src *s) {
  size_t n = json_array_size(s->page.items);
  json_t *created;
  int64_t t;

  if (n == 0 || s->conf->offset != PB_OFFSET_CREATED)
    return;
  created = json_object_get(json_array_get(s->page.items, n - 1), "created");
  if (json_is_string(created) &&
      pb_time_parse(json_string_value(created), json_string_length(created),
                    &t) == 0)
    pb_client_observe_stamp(s->pc, t);
}

/* Realtime topics match the collection's exact name, where the REST path
 * matches it in any case (§6): once a record shows the canonical name, the
 * topic follows it, or wake-ups would never come. */
static void follow_canonical_name(pb_src *s) {
  json_t *name;
  char *topic;

  if (s->topic == NULL || json_array_size(s->page.items) == 0)
    return;
  name = json_object_get(json_array_get(s->page.items, 0), "collectionName");
  if (!json_is_string(name) || !pb_value_ok(json_string_value(name)) ||
      asprintf(&topic, "%s/*", json_string_value(name)) < 0)
    return;
  if (strcmp(topic, s->topic) == 0) {
    free(topic);
    return;
  }
  log_info("realtime topic follows the collection's exact name",
           LS("consumer", consumer_name(cons(s))), LS("topic", topic));
  free(s->topic);
  s->topic = topic;
  s->watch.topic = topic;
  pb_client_topics_changed(s->pc);
}

static void take_page(pb_src *s, const http_response *resp) {
  char err[256];

  if (pb_page_parse(resp->body, resp->body_len,
                    s->conf->offset == PB_OFFSET_CREATED, &s->page, err,
                    sizeof err) != 0) {
    char why[512];

    snprintf(why, sizeof why, "malformed list response for collection %s: %s",
             s->conf->collection, err);
    back_off(s, backoff_next_at(&s->h.retry, uv_now(consumer_loop(cons(s)))),
             why);
    return;
  }
  backoff_reset(&s->h.retry);
  consumer_source_connected(cons(s));
  observe_newest(s);
  follow_canonical_name(s);
  s->held = 0;
  pager_start(&s->pager, json_array_size(s->page.items));
}

static void on_bad_request(pb_src *s, const http_response *resp) {
  pb_error e;
  buf b;

  pb_error_parse(resp->body, resp->body_len, &e);
  if (s->polls.kind == REQ_POLL && s->conf->offset == PB_OFFSET_CREATED) {
    /* Ask once more with nothing but sort=created to tell a missing field
     * from a bad filter. */
    buf_init(&b, 0);
    if (pb_probe_target(s->conf->collection, &b) == 0 && buf_cstr(&b) != NULL &&
        send_req(s, &s->polls, REQ_PROBE, "GET", b.data, NULL, 0)) {
      buf_free(&b);
      return;
    }
    buf_free(&b);
  }
  if (s->polls.kind == REQ_PROBE) {
    fail(s,
         "collection %s has no created field (HTTP 400 sorting by it): "
         "offset = created needs one; add an autodate field named created, "
         "or use offset = id if the ids increase",
         s->conf->collection);
    return;
  }
  fail(s,
       "HTTP 400 listing collection %s: %s%s%s; check filter, fields and "
       "expand",
       s->conf->collection, e.message, e.detail[0] ? "; " : "", e.detail);
}

static bool is_mirror(int kind) {
  return kind == REQ_MIRROR_FIND || kind == REQ_MIRROR_WRITE;
}

/* Puts back what the request was for, to be asked again. */
static void requeue(pb_src *s, int kind) {
  if (kind == REQ_POLL || kind == REQ_PROBE)
    s->poll_due = true;
  if (kind == REQ_MIRROR_WRITE && s->mirror_due == NULL) {
    s->mirror_due = s->mirror_sending;
    s->mirror_sending = NULL;
  }
}

/* The answer to the start-up read of the mirror row. */
static void on_mirror_start(pb_src *s, const http_response *resp) {
  char err[256], *id = NULL, *offset = NULL;
  pb_cursor cur;
  pb_error e;
  int rc;

  if (resp->status != 200) {
    pb_error_parse(resp->body, resp->body_len, &e);
    fail(s,
         "offset_store = upstream:%s: HTTP %d reading the row: %s (does the "
         "collection exist, with text fields consumer_group, collection and "
         "offset, and may these credentials read it?)",
         s->mirror, resp->status, e.message);
    return;
  }
  rc = pb_mirror_parse(resp->body, resp->body_len, &id, &offset, err,
                       sizeof err);
  if (rc != 0 && rc != UV_ENOENT) {
    fail(s, "offset_store = upstream:%s: %s", s->mirror, err);
    return;
  }
  if (rc == 0 && pb_cursor_parse(offset, &cur, err, sizeof err) == 0) {
    s->cursor = cur;
    log_info("no local cursor: resuming from the offset mirror",
             LS("consumer", consumer_name(cons(s))),
             LS("collection", s->mirror), LS("offset", offset));
  } else if (rc == 0) {
    log_warn("the offset mirror row holds no tether position; ignored",
             LS("consumer", consumer_name(cons(s))), LS("offset", offset),
             LS("error", err));
  } else if (s->conf->start == PB_START_NOW) {
    pb_time_format(pb_client_server_now(s->pc), s->cursor.created);
  }
  free(s->mirror_id);
  s->mirror_id = rc == 0 ? id : strdup("");
  if (rc != 0)
    free(id);
  free(offset);
  if (s->mirror_id == NULL) {
    fail(s, "out of memory");
    return;
  }
  s->starting = false;
  s->poll_due = true;
}

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  pb_src *s = data;
  pb_lane *l = r == s->polls.req ? &s->polls : &s->writes;
  uv_loop_t *loop = consumer_loop(cons(s));
  int kind = l->kind, code = resp != NULL ? resp->status : 0;
  bool mirror_lane = l == &s->writes;
  char why[768];
  pb_error e;

  assert(r == l->req);
  l->req = NULL;
  if (http_source_ended(&s->h))
    return;
  if (s->closing && !mirror_lane) {
    kick(s); /* a poll's answer is moot now: kick closes */
    return;
  }
  if (status != 0) {
    snprintf(why, sizeof why, "%s", msg != NULL ? msg : http_strerror(status));
    requeue(s, kind);
    if (mirror_lane) {
      /* The poll lane goes on; the mirror waits for the next poll. */
      mirror_failed(s, why);
      kick(s);
      return;
    }
    back_off(s, backoff_next_at(&s->h.retry, uv_now(loop)), why);
    return;
  }
  pb_client_observe(s->pc, resp);
  if ((code == 401 || code == 403) && !l->reauthed &&
      pb_client_reject(s->pc, l->gen)) {
    /* The token may have lapsed, and the server then treats the request
     * as a guest's. Log in again and ask once more. */
    l->reauthed = true;
    requeue(s, kind);
    kick(s);
    return;
  }
  if (code == 429 || code >= 500 || code == 408) {
    uint64_t delay;

    pb_error_parse(resp->body, resp->body_len, &e);
    snprintf(why, sizeof why, "HTTP %d %s: %s", code,
             is_mirror(kind) ? "writing the offset mirror" : "polling",
             e.message);
    requeue(s, kind);
    if (mirror_lane) {
      mirror_failed(s, why);
      kick(s);
      return;
    }
    /* PocketBase sends no Retry-After (§7): never retry a 429 sooner
     * than a second. */
    delay = backoff_next_at(&s->h.retry, uv_now(loop));
    if (code == 429 && delay < 1000)
      delay = 1000;
    back_off(s, delay, why);
    return;
  }
  if (code == 200)
    l->reauthed = false;
  if (is_mirror(kind)) {
    if (s->starting)
      on_mirror_start(s, resp);
    else
      on_mirror_done(s, kind, resp);
    kick(s);
    return;
  }
  if (code == 200) {
    if (kind == REQ_PROBE)
      on_bad_request(s, resp); /* the field exists: the filter is bad */
    else
      take_page(s, resp);
    return;
  }
  pb_error_parse(resp->body, resp->body_len, &e);
  if (code == 400) {
    on_bad_request(s, resp);
    return;
  }
  if (code == 401 || code == 403) {
    const char *auth_err = pb_client_auth_error(s->pc);

    fail(s,
         "HTTP %d listing collection %s%s: %s; these credentials may not "
         "list it (a superuser-only collection needs auth = superuser)%s%s",
         code, s->conf->collection, l->reauthed ? " after a new login" : "",
         e.message, auth_err != NULL ? "; " : "",
         auth_err != NULL ? auth_err : "");
    return;
  }
  if (code == 404) {
    fail(s, "collection %s not found (HTTP 404: %s)", s->conf->collection,
         e.message);
    return;
  }
  fail(s, "HTTP %d listing collection %s: %s; retrying cannot fix this", code,
       s->conf->collection, e.message);
}

/* Starts whatever is due. The mirror lane: a write of the newest durable
 * position (small, and it says what is durable), beside whatever the poll
 * lane does. The poll lane: the start-up read of the mirror row, then
 * polls, one at a time, never while a page waits for room or a backoff
 * runs. */
static void kick(pb_src *s) {
  if (s->closing) {
    finish_close(s);
    return;
  }
  if (s->h.stopping || s->h.failed || s->waiting_token)
    return;
  if (!s->starting && s->mirror != NULL && s->writes.req == NULL &&
      !s->mirror_retry && s->mirror_due != NULL) {
    start_mirror(s);
    if (s->waiting_token || s->h.failed)
      return;
  }
  if (s->polls.req != NULL || pager_active(&s->pager) || s->backing_off)
    return;
  if (s->starting) {
    buf b;

    buf_init(&b, 0);
    if (pb_mirror_find_target(s->mirror, s->group, s->conf->collection, &b) ==
            0 &&
        buf_cstr(&b) != NULL)
      send_req(s, &s->polls, REQ_MIRROR_FIND, "GET", b.data, NULL, 0);
    else
      fail(s, "out of memory");
    buf_free(&b);
    return;
  }
  /* Polls wait while intake is off (a pause, a drain): on_intake asks for
   * one when it is on again. */
  if (s->poll_due && consumer_intake(cons(s)) == SOURCE_INTAKE_ON)
    start_poll(s);
}

static void pb_on_room(source *src) {
  pb_src *s = (pb_src *)src;

  if (!s->h.stopping && !s->h.failed)
    pager_on_room(&s->pager);
}

/* The durability rule: the mirror row is written only with a position a
 * local commit already holds, never ahead of it. It hears every commit,
 * the final one at shutdown too, and the write of that one finishes
 * before the source closes. */
static void pb_on_durable(source *src, uint64_t seq, const char *position) {
  pb_src *s = (pb_src *)src;
  char *p;

  (void)seq;
  if (s->mirror == NULL || s->h.stopping)
    return;
  if ((p = strdup(position)) == NULL)
    return;
  free(s->mirror_due);
  s->mirror_due = p;
  kick(s);
}

static void pb_on_intake(source *src, source_intake intake) {
  pb_src *s = (pb_src *)src;

  if (intake != SOURCE_INTAKE_ON)
    return;
  s->poll_due = true;
  kick(s);
}

/* Closing: a mirror write in flight finishes, and a position still due
 * (the final commit's) is written once, if a token is at hand; then the
 * source closes. The poll lane's request is cancelled at once. */
static void finish_close(pb_src *s) {
  if (s->h.stopping)
    return;
  if (s->polls.req != NULL)
    http_req_cancel(s->polls.req); /* its on_done comes back here */
  if (s->writes.req != NULL)
    return; /* its on_done comes back here */
  if (s->mirror != NULL && s->mirror_due != NULL && s->mirror_id != NULL &&
      !s->mirror_retry && !s->starting && !s->h.failed) {
    start_mirror(s);
    if (s->writes.req != NULL)
      return;
  }
  http_source_close(&s->h.base);
}

static void pb_close(source *src) {
  pb_src *s = (pb_src *)src;

  s->closing = true;
  pb_client_cancel_wait(s->pc, &s->waiter);
  s->waiting_token = false;
  if (s->topic != NULL)
    pb_client_unwatch(s->pc, &s->watch);
  uv_timer_stop(&s->h.timer);
  finish_close(s);
}

static void free_source(http_source *hs) {
  pb_src *s = (pb_src *)hs;

  pb_page_free(&s->page);
  buf_free(&s->pos);
  free(s->topic);
  free(s->mirror);
  free(s->mirror_id);
  free(s->mirror_due);
  free(s->mirror_sending);
  free(s);
}

static const char *pb_stream_name(const void *conf) {
  const pb_consumer_conf *c = conf;

  return c->collection;
}

/* The collection, its filter and the offset read from it name the stream;
 * batch_size, intervals, settle and fields only tune the reading. */
static int pb_identity(const void *conf, const char *upstream_url, buf *out) {
  const pb_consumer_conf *c = conf;

  buf_reset(out);
  if (buf_appendf(out, "%s/api/collections/%s/records?filter=%s&offset=%s",
                  upstream_url, c->collection, c->filter,
                  c->offset == PB_OFFSET_ID ? "id" : "created") != 0 ||
      buf_cstr(out) == NULL)
    return UV_ENOMEM;
  return 0;
}

static int pb_start(consumer *c, const void *conf, const source_resume *r,
                    source **out, char *err, size_t errlen) {
  const pb_consumer_conf *pcf = conf;
  upstream *up = consumer_upstream(c);
  const pb_upstream_conf *ucf = upstream_conf(up);
  pb_src *s;

  if ((s = calloc(1, sizeof *s)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  s->conf = pcf;
  s->pc = pb_client_of(up);
  if (pb_cursor_parse(r->position, &s->cursor, err, errlen) != 0) {
    char why[256];

    snprintf(why, sizeof why, "%s", err);
    snprintf(err, errlen,
             "the committed cursor \"%s\" is not a pocketbase position: %s "
             "(reset it with tether cursors reset)",
             r->position, why);
    free(s);
    return UV_EINVAL;
  }
  if (strncmp(pcf->offset_store, "upstream:", 9) == 0) {
    s->mirror = strdup(pcf->offset_store + 9);
    s->group =
        pcf->consumer_group[0] != '\0' ? pcf->consumer_group : consumer_name(c);
    if (s->mirror == NULL || !pb_value_ok(s->group)) {
      snprintf(err, errlen,
               s->mirror == NULL ? "out of memory"
                                 : "the consumer name cannot be a "
                                   "consumer_group; set consumer_group");
      free(s->mirror);
      free(s);
      return UV_EINVAL;
    }
    /* With no local cursor, the mirror may hold a group's position (a Go
     * consumer handing over). The local store stays the truth after. */
    s->starting = r->seq == 0 && r->position[0] == '\0';
  }
  if (!s->starting && r->seq == 0 && r->position[0] == '\0' &&
      pcf->start == PB_START_NOW) {
    pb_time_format(pb_client_server_now(s->pc), s->cursor.created);
    s->cursor.id[0] = '\0';
  }
  s->waiter.cb = on_token;
  http_source_init(&s->h, &source_pocketbase, c, free_source);
  pager_init(&s->pager, c, &pb_pager, s);
  buf_init(&s->pos, 0);
  if (ucf->realtime) {
    if (asprintf(&s->topic, "%s/*", pcf->collection) < 0) {
      s->topic = NULL;
    } else {
      s->watch.topic = s->topic;
      s->watch.on_event = on_watch_event;
      s->watch.on_connect = on_watch_connect;
      pb_client_watch(s->pc, &s->watch);
    }
  }
  *out = &s->h.base;
  s->poll_due = true;
  kick(s);
  return 0;
}

const source_type source_pocketbase = {
  .name = "pocketbase",
  .description = "a PocketBase collection, polled by (created, id) and woken "
                 "by realtime",
  .options = pb_consumer_options,
  .conf_size = sizeof(pb_consumer_conf),
  .check = pb_consumer_check,
  .stream_name = pb_stream_name,
  .identity = pb_identity,
  .start = pb_start,
  .close = pb_close,
  .on_room = pb_on_room,
  .on_durable = pb_on_durable,
  .on_intake = pb_on_intake,
};

const upstream_type upstream_pocketbase = {
  .name = "pocketbase",
  .description = "a PocketBase server (v0.23+, and v0.22 with api_version)",
  .options = pb_upstream_options,
  .conf_size = sizeof(pb_upstream_conf),
  .check = pb_upstream_check,
  .source = &source_pocketbase,
  .takes_headers = true,
  .ext_open = pb_client_open,
  .ext_close = pb_client_close,
};
