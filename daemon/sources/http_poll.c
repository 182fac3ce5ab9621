/* Source `http-poll`: pages of a JSON collection or changes feed
 * (protocol document §6).
 *
 * A cycle asks for the page after the cursor, hands its items to the
 * window (each with its position: the item's cursor, or in page mode the
 * page's cursor on the last item), and goes on at once while pages bring
 * something new; then it sleeps poll_interval (poll) or asks again at once
 * (longpoll). With an inclusive bound (json-server's _gte) the items at the
 * cursor already handed over are dropped by id, and those ids are committed
 * with the cursor, so a restart drops them too.
 *
 * Backpressure (daemon/sources/pager.h): items are handed over while the
 * window has room; the page waits in memory for on_room, and no new
 * request starts meanwhile.
 */
#include "daemon/sources/http_poll.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/log.h"
#include "daemon/sources/http_source.h"
#include "daemon/sources/pager.h"
#include "daemon/upstream.h"
#include "loop/backoff.h"
#include "loop/http_client.h"
#include "protocol/buf.h"
#include "protocol/http.h"
#include "protocol/jsonptr.h"

static const char *const bound_choices[] = { "exclusive", "inclusive", NULL };
static const char *const mode_choices[] = { "poll", "longpoll", NULL };

static const option http_poll_options[] = {
  { "path", OPT_STRING, NULL, offsetof(http_poll_conf, path),
    "request path and query with {cursor}, resolved against the upstream "
    "url",
    0, 0, NULL, OPT_REQUIRED },
  { "cursor_initial", OPT_STRING, "", offsetof(http_poll_conf, cursor_initial),
    "the cursor before anything was committed", 0, 0, NULL, 0 },
  { "items", OPT_STRING, "", offsetof(http_poll_conf, items),
    "JSON pointer to the array of items; empty = the body is the array", 0, 0,
    NULL, 0 },
  { "item_cursor", OPT_STRING, "", offsetof(http_poll_conf, item_cursor),
    "JSON pointer to each item's cursor (set this or page_cursor)", 0, 0, NULL,
    0 },
  { "page_cursor", OPT_STRING, "", offsetof(http_poll_conf, page_cursor),
    "JSON pointer to the response's next cursor, e.g. /last_seq (set this "
    "or item_cursor)",
    0, 0, NULL, 0 },
  { "item_id", OPT_STRING, "", offsetof(http_poll_conf, item_id),
    "JSON pointer to each item's unique id (needed with inclusive)", 0, 0, NULL,
    0 },
  { "cursor_bound", OPT_ENUM, "exclusive",
    offsetof(http_poll_conf, cursor_bound),
    "exclusive: the server returns items after the cursor; inclusive: at or "
    "after it (boundary items are dropped by id)",
    0, 0, bound_choices, 0 },
  { "page_size", OPT_INT, "0", offsetof(http_poll_conf, page_size),
    "the page limit written in path (needed with inclusive); 0 = unknown", 0,
    1000000, NULL, 0 },
  { "more", OPT_STRING, "", offsetof(http_poll_conf, more),
    "JSON pointer that says whether more pages follow (CouchDB /pending)", 0, 0,
    NULL, 0 },
  { "mode", OPT_ENUM, "poll", offsetof(http_poll_conf, mode),
    "poll: sleep poll_interval when nothing is new; longpoll: ask again at "
    "once (the server holds the request)",
    0, 0, mode_choices, 0 },
  { "poll_interval", OPT_DURATION, "5s",
    offsetof(http_poll_conf, poll_interval),
    "pause after a cycle that brought nothing new", 10, 86400000, NULL, 0 },
  { "request_timeout", OPT_DURATION, "30s",
    offsetof(http_poll_conf, request_timeout),
    "limit on one whole request (in longpoll above the server's hold time)",
    100, 86400000, NULL, 0 },
  { "max_page_size", OPT_SIZE, "16MiB", offsetof(http_poll_conf, max_page_size),
    "largest response body; a page over it is retried, and the consumer "
    "fails after 3 at one cursor",
    1024, 1073741824, NULL, 0 },
  { "follow_next", OPT_BOOL, "false", offsetof(http_poll_conf, follow_next),
    "follow Link: rel=\"next\" within a cycle (same origin only)", 0, 0, NULL,
    0 },
  { "conditional", OPT_BOOL, "true", offsetof(http_poll_conf, conditional),
    "send If-None-Match with the last ETag; a 304 means nothing new", 0, 0,
    NULL, 0 },
  { "tuning_params", OPT_STRING,
    "limit,_limit,per_page,perPage,page_size,pageSize,timeout,heartbeat,feed",
    offsetof(http_poll_conf, tuning_params),
    "query parameters of path that tune the reading, not which stream it "
    "is: a change to them keeps the cursor (comma-separated)",
    0, 0, NULL, 0 },
  { "event", OPT_STRING, "item", offsetof(http_poll_conf, event),
    "the event name each item carries in the envelope", 0, 0, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

/* Pages per cycle before a pause, so one endless feed cannot keep the
 * source from ever sleeping (and a misread cursor from spinning). */
#define POLL_MAX_PAGES 1000
/* Boundary ids persisted with an inclusive cursor. */
#define POLL_MAX_BOUNDARY 1000

typedef struct poll_src {
  http_source h; /* first: requests, timer, backoff, close */
  const http_poll_conf *conf;
  jsonptr items, item_cursor, page_cursor, item_id, more;
  buf cursor;      /* the cursor of the last item handed to the window */
  char **boundary; /* inclusive: ids at the cursor already handed over */
  size_t n_boundary;
  /* The page being handed over. */
  json_t *doc;
  json_t *list;
  pager pager;      /* hands the items over as room allows */
  size_t fresh;     /* items of this page that were new */
  size_t at_cursor; /* items of this page at the cursor (inclusive) */
  char *page_next;  /* page mode: the response's cursor */
  bool page_more;   /* the page says more follow */
  char *next_link;  /* Link: rel="next", resolved */
  char *page_start; /* the cursor this page was asked with */
  unsigned pages;   /* pages in this cycle */
  char *etag;
  char *last_url;
  buf item_text, id_text; /* an item's cursor and id, as text */
  bool stalled; /* pages come back with the cursor they were asked with */
  /* Pages over max_page_size in a row at one cursor (see on_done). */
  unsigned cap_hits;
  char *cap_cursor;
} poll_src;

static void request_page(poll_src *s, const char *url);
static void next_cycle(poll_src *s, bool at_once);

/* Fails the consumer for good; see http_source_fail. */
#define fail(s, ...) http_source_fail(&(s)->h, __VA_ARGS__)

static void drop_page(poll_src *s) {
  json_decref(s->doc);
  s->doc = NULL;
  s->list = NULL;
  free(s->page_next);
  s->page_next = NULL;
  free(s->next_link);
  s->next_link = NULL;
  free(s->page_start);
  s->page_start = NULL;
}

static void clear_boundary(poll_src *s) {
  size_t i;

  for (i = 0; i < s->n_boundary; i++)
    free(s->boundary[i]);
  s->n_boundary = 0;
}

static bool in_boundary(const poll_src *s, const char *id) {
  size_t i;

  for (i = 0; i < s->n_boundary; i++)
    if (strcmp(s->boundary[i], id) == 0)
      return true;
  return false;
}

static int add_boundary(poll_src *s, const char *id) {
  char **b;

  if (s->n_boundary == POLL_MAX_BOUNDARY)
    return 0; /* the cap: older ids may be delivered twice after a crash */
  b = realloc(s->boundary, (s->n_boundary + 1) * sizeof *b);
  if (b == NULL)
    return UV_ENOMEM;
  s->boundary = b;
  if ((b[s->n_boundary] = strdup(id)) == NULL)
    return UV_ENOMEM;
  s->n_boundary++;
  return 0;
}

/* The position committed with an item: the cursor, and with inclusive
 * bounds the ids already seen at it, as {"c":...,"ids":[...]}. */
static char *encode_position(const poll_src *s) {
  json_t *o, *ids;
  char *text;
  size_t i;

  if (s->conf->cursor_bound != POLL_INCLUSIVE)
    return strndup(s->cursor.data ? s->cursor.data : "", s->cursor.len);
  o = json_object();
  ids = json_array();
  if (o == NULL || ids == NULL) {
    json_decref(o);
    json_decref(ids);
    return NULL;
  }
  json_object_set_new(
      o, "c",
      json_stringn(s->cursor.data ? s->cursor.data : "", s->cursor.len));
  for (i = 0; i < s->n_boundary; i++)
    json_array_append_new(ids, json_string(s->boundary[i]));
  json_object_set_new(o, "ids", ids);
  text = json_dumps(o, JSON_COMPACT);
  json_decref(o);
  return text;
}

/* Reads a committed position back (see encode_position). */
static int decode_position(poll_src *s, const char *pos) {
  json_t *o, *c, *ids, *id;
  size_t i;
  int rc = 0;

  buf_reset(&s->cursor);
  if (*pos == '\0')
    return buf_append_str(&s->cursor, s->conf->cursor_initial);
  if (s->conf->cursor_bound != POLL_INCLUSIVE || *pos != '{')
    return buf_append_str(&s->cursor, pos);
  o = json_loads(pos, 0, NULL);
  c = json_object_get(o, "c");
  ids = json_object_get(o, "ids");
  if (!json_is_string(c) || !json_is_array(ids)) {
    json_decref(o);
    return buf_append_str(&s->cursor, pos);
  }
  rc = buf_append(&s->cursor, json_string_value(c), json_string_length(c));
  json_array_foreach(ids, i, id) {
    if (rc == 0 && json_is_string(id))
      rc = add_boundary(s, json_string_value(id));
  }
  json_decref(o);
  return rc;
}

static bool truthy(const json_t *v) {
  if (v == NULL || json_is_null(v) || json_is_false(v))
    return false;
  if (json_is_integer(v))
    return json_integer_value(v) != 0;
  if (json_is_real(v))
    return json_real_value(v) != 0;
  if (json_is_string(v))
    return json_string_length(v) > 0;
  return true;
}

/* The text of the value at p in v, as a cursor or an id. */
static int text_at(poll_src *s, const jsonptr *p, json_t *v, const char *what,
                   buf *out) {
  char err[256];
  json_t *x;

  if (jsonptr_resolve(p, v, &x, NULL, err, sizeof err) != 0) {
    fail(s, "%s %s: %s", what, p->text, err);
    return UV_EINVAL;
  }
  buf_reset(out);
  if (jsonptr_cursor_append(x, out, err, sizeof err) != 0 ||
      buf_cstr(out) == NULL) {
    fail(s, "%s %s: %s", what, p->text, err);
    return UV_EINVAL;
  }
  return 0;
}

/* A page that brought items but whose next cursor is the one it was asked
 * with: a server that ignores the cursor (or a cursor pointer that names
 * something else) would hand the same page back at once, for ever, and
 * every round would deliver it again. Such a page ends the cycle: the next
 * one waits poll_interval, whatever the mode, so at most one page of
 * repeats comes per interval. Warned once per episode and counted. With an
 * inclusive bound a page at the same cursor may bring new ids of a tie
 * group: that is progress, and a repeat brings nothing fresh. */
static bool stalled_page(poll_src *s) {
  consumer *c = s->h.base.consumer;
  bool same = s->page_start != NULL && strlen(s->page_start) == s->cursor.len &&
              memcmp(s->page_start, s->cursor.data, s->cursor.len) == 0;

  if (s->fresh == 0 || s->conf->cursor_bound == POLL_INCLUSIVE || !same) {
    if (s->stalled && s->fresh > 0) {
      s->stalled = false;
      log_info("the poll cursor advances again",
               LS("consumer", consumer_name(c)),
               LS("cursor", s->cursor.data ? s->cursor.data : ""));
    }
    return false;
  }
  consumer_source_stalled(c);
  if (!s->stalled) {
    s->stalled = true;
    log_warn("a page brought items but its next cursor is the one it was "
             "asked with; the items may come again, once per poll_interval: "
             "check that the path sends {cursor} the way the server reads it "
             "and that item_cursor or page_cursor points at the server's "
             "cursor",
             LS("consumer", consumer_name(c)), LS("cursor", s->page_start),
             LU("items", s->fresh),
             LU("poll_interval_ms", s->conf->poll_interval));
  }
  drop_page(s);
  next_cycle(s, false);
  return true;
}

/* The pager's item: hands item i of the page to the window, or skips it
 * when the inclusive bound brought it again. */
static int hand_item(pager *p, size_t i, void *data) {
  poll_src *s = data;
  json_t *item = json_array_get(s->list, i);
  buf *cur = &s->item_text, *id = &s->id_text;
  char *text, *pos;
  event e;
  int rc = 0;

  (void)p;
  if (s->conf->item_cursor[0] != '\0') {
    if (text_at(s, &s->item_cursor, item, "item_cursor", cur) != 0)
      return UV_EINVAL;
    if (s->conf->cursor_bound == POLL_INCLUSIVE) {
      if (text_at(s, &s->item_id, item, "item_id", id) != 0)
        return UV_EINVAL;
      if (cur->len == s->cursor.len &&
          memcmp(cur->data, s->cursor.data, cur->len) == 0) {
        s->at_cursor++;
        if (in_boundary(s, id->data))
          return PAGER_NEXT; /* delivered already: the bound is inclusive */
      } else {
        clear_boundary(s);
      }
      rc = add_boundary(s, id->data);
    }
    buf_reset(&s->cursor);
    if (rc != 0 || buf_append(&s->cursor, cur->data, cur->len) != 0)
      goto oom;
  } else if (i + 1 == json_array_size(s->list)) {
    /* Page mode: the last item carries the page's cursor; the others
     * the cursor the page was asked with, so a crash mid-page re-reads
     * at most this page. */
    buf_reset(&s->cursor);
    if (buf_append_str(&s->cursor, s->page_next) != 0)
      goto oom;
  }
  text = json_dumps(item, JSON_COMPACT | JSON_ENCODE_ANY);
  pos = encode_position(s);
  if (text == NULL || pos == NULL) {
    free(text);
    free(pos);
    goto oom;
  }
  memset(&e, 0, sizeof e);
  e.name = s->conf->event;
  e.kind = upstream_name(s->h.up);
  e.position = pos;
  e.position_len = strlen(pos);
  e.data = text;
  e.data_len = strlen(text);
  e.data_is_json = true;
  rc = consumer_emit(s->h.base.consumer, &e) == 0 ? UV_ENOMEM : 0;
  free(text);
  free(pos);
  if (rc != 0)
    goto oom;
  s->fresh++;
  return PAGER_NEXT;

oom:
  fail(s, "out of memory handing over a page");
  return UV_ENOMEM;
}

/* The pager's done: every item of the page went to the window. Pages on,
 * or ends the cycle. */
static void page_done(pager *p, size_t end, void *data) {
  poll_src *s = data;
  size_t n = end;

  (void)p;
  if (s->conf->item_cursor[0] == '\0' && s->page_next != NULL) {
    buf_reset(&s->cursor);
    if (buf_append_str(&s->cursor, s->page_next) != 0) {
      fail(s, "out of memory handing over a page");
      return;
    }
  }
  if (s->fresh == 0 && s->conf->cursor_bound == POLL_INCLUSIVE &&
      s->conf->page_size > 0 && n >= (size_t)s->conf->page_size &&
      s->at_cursor == n) {
    fail(s,
         "tie_group_exceeds_page: %zu items share the cursor \"%.*s\", a "
         "whole page of %" PRId64 " or more; raise the page limit or use a "
         "unique cursor",
         n, (int)s->cursor.len, s->cursor.data ? s->cursor.data : "",
         s->conf->page_size);
    return;
  }
  if (stalled_page(s))
    return;
  /* An ETag stands for "nothing new since": only a page that brought
   * nothing may be asked for conditionally. After a page with new items
   * the same URL must come back whole, or its items could not be checked
   * against the cursor again (a tie group filling the page). */
  if (s->fresh > 0) {
    free(s->etag);
    s->etag = NULL;
  }
  /* Page on at once while pages bring something new: by the next link
   * when following links (the last page has none), else by the cursor. */
  if (s->fresh > 0 && s->pages < POLL_MAX_PAGES &&
      (s->conf->more[0] == '\0' || s->page_more) &&
      (!s->conf->follow_next || s->next_link != NULL)) {
    char *link = s->next_link;

    s->next_link = NULL;
    drop_page(s);
    request_page(s, link);
    free(link);
  } else {
    drop_page(s);
    next_cycle(s, s->conf->mode == POLL_MODE_LONGPOLL);
  }
}

static const pager_callbacks poll_pager = { hand_item, page_done };

/* Takes a 200 response: finds the items and the page's cursor. */
static void take_page(poll_src *s, const http_response *resp) {
  const char *link, *etag;
  json_error_t jerr;
  char err[256];
  buf b;

  drop_page(s);
  s->doc = json_loadb(resp->body, resp->body_len,
                      JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  if (s->doc == NULL) {
    fail(s, "invalid JSON from %s at line %d column %d: %s", resp->url,
         jerr.line, jerr.column, jerr.text);
    return;
  }
  if (jsonptr_resolve(&s->items, s->doc, &s->list, NULL, err, sizeof err) !=
      0) {
    fail(s, "items %s in the response from %s: %s", s->items.text, resp->url,
         err);
    return;
  }
  if (!json_is_array(s->list)) {
    fail(s,
         "items_not_array: items %s in the response from %s is not an "
         "array",
         s->items.text, resp->url);
    return;
  }
  if (s->conf->page_cursor[0] != '\0') {
    buf_init(&b, 0);
    if (text_at(s, &s->page_cursor, s->doc, "page_cursor", &b) != 0) {
      buf_free(&b);
      return;
    }
    s->page_next = buf_steal(&b);
  }
  s->page_more =
      s->conf->more[0] != '\0' && truthy(jsonptr_get(&s->more, s->doc));
  etag = http_response_header(resp, "ETag");
  free(s->etag);
  s->etag = etag != NULL ? strdup(etag) : NULL;
  link = http_response_header(resp, "Link");
  if (s->conf->follow_next && link != NULL) {
    char *target = NULL;

    if (http_link_find(link, "next", &target, err, sizeof err) == 0) {
      http_url_resolve(resp->url, target, &s->next_link, err, sizeof err);
      free(target);
    }
    /* The upstream's headers (credentials) go to its own origin only: a
     * next page elsewhere ends the cycle instead. */
    if (s->next_link != NULL &&
        !http_url_same_origin(resp->url, s->next_link)) {
      log_warn("ignoring a Link rel=next to another origin",
               LS("consumer", consumer_name(s->h.base.consumer)),
               LS("url", s->next_link));
      free(s->next_link);
      s->next_link = NULL;
    }
  }
  s->page_start = strndup(s->cursor.data ? s->cursor.data : "", s->cursor.len);
  if (s->page_start == NULL) {
    fail(s, "out of memory taking a page");
    return;
  }
  s->fresh = 0;
  s->at_cursor = 0;
  pager_start(&s->pager, json_array_size(s->list));
}

/* A body over max_page_size is retried like any failed request; the same
 * failure HTTP_SOURCE_CAP_TRIES times at one cursor will not go away by
 * retrying (the page is what it is), so the consumer fails, naming the cap
 * to raise: the rule the sse source applies to an event over its cap. */
static bool page_over_cap(poll_src *s) {
  const char *cur = s->cursor.data ? s->cursor.data : "";

  if (s->cap_cursor != NULL && strlen(s->cap_cursor) == s->cursor.len &&
      memcmp(s->cap_cursor, cur, s->cursor.len) == 0) {
    s->cap_hits++;
  } else {
    free(s->cap_cursor);
    s->cap_cursor = strndup(cur, s->cursor.len);
    s->cap_hits = 1;
  }
  if (s->cap_hits < HTTP_SOURCE_CAP_TRIES)
    return false;
  fail(s,
       "page_too_large: the page after cursor \"%.*s\" was over "
       "max_page_size (%" PRIu64 " bytes) %u times; raise max_page_size or "
       "ask for fewer items per page in path",
       (int)s->cursor.len, cur, s->conf->max_page_size, s->cap_hits);
  return true;
}

static void on_timer(uv_timer_t *t) {
  poll_src *s = t->data;

  s->pages = 0;
  request_page(s, NULL);
}

static void next_cycle(poll_src *s, bool at_once) {
  uv_timer_start(&s->h.timer, on_timer, at_once ? 0 : s->conf->poll_interval,
                 0);
}

static void back_off(poll_src *s, uint64_t delay, const char *why) {
  http_source_wait(&s->h, delay, on_timer, why);
}

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  poll_src *s = data;
  uv_loop_t *loop = consumer_loop(s->h.base.consumer);
  char why[512];
  int code = resp != NULL ? resp->status : 0;

  (void)r;
  if (http_source_ended(&s->h))
    return;
  if (status != 0) {
    /* In longpoll mode the request's own timeout only means nothing
     * changed. A connect or response-head timeout is a failure like any
     * other: a dead server is backed off from and said, not re-asked in
     * silence every request_timeout. */
    if (status == HTTP_EDEADLINE && s->conf->mode == POLL_MODE_LONGPOLL) {
      next_cycle(s, true);
      return;
    }
    if (status == HTTP_EBODY && page_over_cap(s))
      return;
    snprintf(why, sizeof why, "%s", msg != NULL ? msg : http_strerror(status));
    back_off(s, backoff_next_at(&s->h.retry, uv_now(loop)), why);
    return;
  }
  if (code == 200) {
    s->cap_hits = 0;
    backoff_reset(&s->h.retry);
    consumer_source_connected(s->h.base.consumer);
    s->pages++;
    take_page(s, resp);
    return;
  }
  if (code == 304 || code == 204) {
    backoff_reset(&s->h.retry);
    consumer_source_connected(s->h.base.consumer);
    next_cycle(s, false);
    return;
  }
  if (http_source_retryable(code)) {
    snprintf(why, sizeof why, "HTTP %d from %s", code, resp->url);
    back_off(s, http_source_retry_delay(&s->h, resp), why);
    return;
  }
  fail(s, "HTTP %d from %s; retrying cannot fix this: check the url and path",
       code, resp->url);
}

static const http_callbacks poll_http_callbacks = {
  .on_head = NULL,
  .on_body = NULL,
  .on_done = on_done,
};

/* Builds the URL of the next page from the cursor, or takes url. */
static void request_page(poll_src *s, const char *url) {
  const char *t = s->conf->path, *hit;
  http_header headers[64];
  size_t n = 0;
  http_request req;
  char err[256], *full = NULL;
  buf target;
  int rc;

  if (s->h.stopping || s->h.failed)
    return;
  buf_init(&target, 0);
  if (url == NULL) {
    while ((hit = strstr(t, "{cursor}")) != NULL) {
      if (buf_append(&target, t, (size_t)(hit - t)) != 0 ||
          http_percent_encode(&target, s->cursor.data ? s->cursor.data : "",
                              s->cursor.len) != 0)
        goto oom;
      t = hit + 8;
    }
    if (buf_append_str(&target, t) != 0 || buf_cstr(&target) == NULL)
      goto oom;
    rc = http_url_resolve(upstream_http_conf(s->h.up)->url, target.data, &full,
                          err, sizeof err);
    if (rc != 0) {
      buf_free(&target);
      fail(s, "path %s: %s", s->conf->path, err);
      return;
    }
    url = full;
  }
  headers[n++] = (http_header){ "Accept", "application/json" };
  if (s->conf->conditional && s->etag != NULL && s->last_url != NULL &&
      strcmp(s->last_url, url) == 0)
    headers[n++] = (http_header){ "If-None-Match", s->etag };
  n = upstream_add_headers(s->h.up, headers, n,
                           sizeof headers / sizeof headers[0]);
  memset(&req, 0, sizeof req);
  req.method = "GET";
  req.url = url;
  req.headers = headers;
  req.n_headers = n;
  req.timeout = s->conf->request_timeout;
  /* A longpoll server may hold even the head until it has a change
   * (CouchDB does): the head may take as long as the request. */
  if (s->conf->mode == POLL_MODE_LONGPOLL &&
      s->conf->request_timeout > upstream_http_conf(s->h.up)->response_timeout)
    req.response_timeout = s->conf->request_timeout;
  req.max_redirects = 5;
  req.max_body = (size_t)s->conf->max_page_size;
  if (s->last_url == NULL || strcmp(s->last_url, url) != 0) {
    free(s->last_url);
    s->last_url = strdup(url);
  }
  rc = http_source_request(&s->h, &req, &poll_http_callbacks, s, NULL);
  buf_free(&target);
  free(full);
  if (rc != 0)
    fail(s, "cannot start a request: %s", http_strerror(rc));
  return;

oom:
  buf_free(&target);
  fail(s, "out of memory building a request");
}

static void http_poll_on_room(source *src) {
  poll_src *s = (poll_src *)src;

  if (!s->h.stopping && !s->h.failed)
    pager_on_room(&s->pager);
}

static void free_src(poll_src *s) {
  drop_page(s);
  clear_boundary(s);
  free(s->boundary);
  jsonptr_free(&s->items);
  jsonptr_free(&s->item_cursor);
  jsonptr_free(&s->page_cursor);
  jsonptr_free(&s->item_id);
  jsonptr_free(&s->more);
  buf_free(&s->cursor);
  buf_free(&s->item_text);
  buf_free(&s->id_text);
  free(s->etag);
  free(s->last_url);
  free(s->cap_cursor);
  free(s);
}

static void free_source(http_source *hs) {
  free_src((poll_src *)hs);
}

static int compile(const char *text, jsonptr *out, const char *key, char *err,
                   size_t errlen) {
  char why[256];

  if (jsonptr_parse(text, strlen(text), out, why, sizeof why) != 0) {
    snprintf(err, errlen, "%s = \"%s\": %s", key, text, why);
    return UV_EINVAL;
  }
  return 0;
}

static int http_poll_check(void *conf, uint64_t explicit, char *err,
                           size_t errlen) {
  http_poll_conf *c = conf;
  jsonptr p;
  const char *keys[] = { "items", "item_cursor", "page_cursor", "item_id",
                         "more" };
  const char *vals[] = { c->items, c->item_cursor, c->page_cursor, c->item_id,
                         c->more };
  size_t i;

  (void)explicit;
  if ((c->item_cursor[0] == '\0') == (c->page_cursor[0] == '\0')) {
    snprintf(err, errlen, "set exactly one of item_cursor and page_cursor");
    return UV_EINVAL;
  }
  if (strstr(c->path, "{cursor}") == NULL) {
    snprintf(err, errlen, "path needs {cursor} where the cursor goes");
    return UV_EINVAL;
  }
  if (c->cursor_bound == POLL_INCLUSIVE &&
      (c->item_id[0] == '\0' || c->page_size == 0 ||
       c->item_cursor[0] == '\0')) {
    snprintf(err, errlen,
             "cursor_bound = inclusive needs item_cursor, item_id and "
             "page_size");
    return UV_EINVAL;
  }
  for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (compile(vals[i], &p, keys[i], err, errlen) != 0)
      return UV_EINVAL;
    jsonptr_free(&p);
  }
  return 0;
}

static const char *http_poll_stream_name(const void *conf) {
  const http_poll_conf *c = conf;

  return c->path;
}

static int http_poll_start(consumer *c, const void *conf,
                           const source_resume *r, source **out, char *err,
                           size_t errlen) {
  const http_poll_conf *pc = conf;
  poll_src *s = calloc(1, sizeof *s);

  if (s == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  s->conf = pc;
  buf_init(&s->cursor, 0);
  buf_init(&s->item_text, 0);
  buf_init(&s->id_text, 0);
  if (compile(pc->items, &s->items, "items", err, errlen) != 0 ||
      compile(pc->item_cursor, &s->item_cursor, "item_cursor", err, errlen) !=
          0 ||
      compile(pc->page_cursor, &s->page_cursor, "page_cursor", err, errlen) !=
          0 ||
      compile(pc->item_id, &s->item_id, "item_id", err, errlen) != 0 ||
      compile(pc->more, &s->more, "more", err, errlen) != 0 ||
      decode_position(s, r->position) != 0) {
    free_src(s);
    return UV_EINVAL;
  }
  http_source_init(&s->h, &source_http_poll, c, free_source);
  pager_init(&s->pager, c, &poll_pager, s);
  *out = &s->h.base;
  consumer_source_connected(c);
  request_page(s, NULL);
  return 0;
}

static int http_poll_identity(const void *conf, const char *upstream_url,
                              buf *out) {
  const http_poll_conf *c = conf;

  return http_source_identity(upstream_url, c->path, c->tuning_params, out);
}

const source_type source_http_poll = {
  .name = "http-poll",
  .description = "a JSON collection or changes feed read in pages, its "
                 "cursor found by JSON pointer",
  .options = http_poll_options,
  .conf_size = sizeof(http_poll_conf),
  .check = http_poll_check,
  .stream_name = http_poll_stream_name,
  .identity = http_poll_identity,
  .start = http_poll_start,
  .close = http_source_close,
  .on_room = http_poll_on_room,
};
