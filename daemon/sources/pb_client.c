/* The shared runtime of a PocketBase upstream: token, server clock and the
 * realtime wake-up stream (see pb_client.h).
 *
 * Auth (§4). A login posts identity and password to the auth collection
 * (superusers: /api/collections/_superusers, or /api/admins on ≤ v0.22,
 * found by the 404 of the first). The token's exp is read from the JWT and
 * a refresh runs well before it, because an expired token is not refused:
 * the server quietly treats the request as a guest's, which looks like an
 * empty collection. A refresh that fails falls back to a new login. A login
 * refused for good (bad password, MFA, 403) ends authentication: every
 * waiting poller fails with the cause.
 *
 * Realtime (§6). One GET /api/realtime carries every consumer's topic,
 * read by daemon/sources/sse_stream (persistent: the pollers go on without
 * it, so nothing about it is fatal). On PB_CONNECT, a control event, the
 * topics are posted with the token; once the server takes them each poller
 * is told to poll (catch-up: the gap before the stream hid events). Record
 * events only wake pollers. The stream is silent by design, so it has no
 * idle timeout; the server's own idle and lifetime closes are clean ends,
 * reconnected after reconnect_min. Errors back off.
 */
#include "daemon/sources/pb_client.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/sources/pocketbase.h"
#include "daemon/sources/sse_stream.h"
#include "protocol/buf.h"
#include "protocol/http.h"
#include "protocol/pocketbase.h"
#include "protocol/sse.h"

/* Date samples are kept for the best (highest) one within this window. */
#define PB_CLOCK_WINDOW_MS 30000

struct pb_client {
  upstream *up;
  const pb_upstream_conf *conf;
  uv_loop_t *loop;
  char *base; /* url without the trailing '/' */

  /* auth */
  char *token; /* the token to send; NULL = none ready */
  unsigned gen;
  int64_t exp_ms; /* the token's exp in server ms; 0 = unknown */
  bool legacy;
  http_req *auth_req;
  bool auth_refreshing; /* auth_req is a refresh, not a login */
  char *auth_error;     /* authentication failed for good */
  char auth_transient[256];
  list waiters;
  uv_timer_t auth_timer;   /* the refresh before exp, or a login retry */
  uv_timer_t notify_timer; /* runs waiter callbacks off the caller's stack */
  backoff auth_retry;

  /* clock */
  int64_t offset_ms; /* server - local, the best lower bound in the window */
  uint64_t offset_window_start;
  bool have_offset;

  /* realtime */
  list watches;
  sse_stream rt;
  bool rt_open; /* rt is set up and not closed yet */
  http_req *sub_req;
  bool sub_again; /* the topics or the token changed while a POST ran */
  unsigned sub_gen;
  char client_id[256]; /* "" = no PB_CONNECT on the current stream */
  pb_waiter rt_waiter; /* the POST waits for a token */

  bool closing;
  unsigned open_handles;
  void (*close_cb)(void *data);
  void *close_data;
};

static void start_login(pb_client *pc);
static void start_stream(pb_client *pc);
static void post_topics(pb_client *pc);

static int64_t wall_ms(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

pb_client *pb_client_of(upstream *up) {
  return upstream_ext(up);
}

const char *pb_client_base(const pb_client *pc) {
  return pc->base;
}

bool pb_client_legacy(const pb_client *pc) {
  return pc->legacy;
}

const char *pb_client_auth_error(const pb_client *pc) {
  return pc->auth_error;
}

/* ---- clock ---- */

/* sample is a lower bound of (server clock - local clock). The best bound
 * of a window is kept; a new window lets a stepped clock in. */
static void take_sample(pb_client *pc, int64_t sample) {
  uint64_t now = uv_now(pc->loop);

  if (!pc->have_offset || now - pc->offset_window_start > PB_CLOCK_WINDOW_MS) {
    pc->offset_ms = sample;
    pc->offset_window_start = now;
    pc->have_offset = true;
  } else if (sample > pc->offset_ms) {
    pc->offset_ms = sample;
  }
}

void pb_client_observe(pb_client *pc, const http_response *resp) {
  const char *date = resp != NULL ? http_response_header(resp, "Date") : NULL;
  int64_t secs;

  if (date == NULL || http_date_parse(date, 0, &secs) != 0)
    return;
  /* Date has whole seconds: the server's clock read somewhere in
   * [secs, secs + 1), so this is a lower bound of the offset. */
  take_sample(pc, secs * 1000 - wall_ms());
}

void pb_client_observe_stamp(pb_client *pc, int64_t server_ms) {
  /* A record the server shows was stamped at or before its clock's now:
   * a lower bound with milliseconds, where Date has whole seconds. */
  if (server_ms > 0)
    take_sample(pc, server_ms - wall_ms());
}

int64_t pb_client_server_now(const pb_client *pc) {
  return wall_ms() + (pc->have_offset ? pc->offset_ms : 0);
}

uint64_t pb_client_loop_time(const pb_client *pc, int64_t server_ms) {
  int64_t d = server_ms - pb_client_server_now(pc);
  uint64_t now = uv_now(pc->loop);

  return d <= 0 ? now : now + (uint64_t)d;
}

/* ---- requests of the client itself ---- */

int pb_client_prepare(pb_client *pc, const char *method, const char *path,
                      const char *body, size_t body_len, const char *token,
                      pb_request *out) {
  http_header *headers = out->_headers;
  size_t n = 0;

  memset(out, 0, sizeof *out);
  if (asprintf(&out->_url, "%s%s", pc->base, path) < 0) {
    out->_url = NULL;
    return UV_ENOMEM;
  }
  headers[n++] = (http_header){ "Accept", "application/json" };
  if (body != NULL)
    headers[n++] = (http_header){ "Content-Type", "application/json" };
  if (token != NULL)
    headers[n++] = (http_header){ "Authorization", token };
  n = upstream_add_headers(pc->up, headers, n,
                           sizeof out->_headers / sizeof out->_headers[0]);
  out->req.method = method;
  out->req.url = out->_url;
  out->req.headers = headers;
  out->req.n_headers = n;
  out->req.body = body;
  out->req.body_len = body_len;
  out->req.timeout = pc->conf->request_timeout;
  return 0;
}

void pb_request_free(pb_request *r) {
  free(r->_url);
  r->_url = NULL;
}

int pb_client_request(pb_client *pc, const char *method, const char *path,
                      const char *body, size_t body_len, const char *token,
                      const http_callbacks *cbs, void *data, http_req **out) {
  pb_request pr;
  int rc;

  if ((rc = pb_client_prepare(pc, method, path, body, body_len, token, &pr)) !=
      0)
    return rc;
  rc = http_request_start(upstream_http(pc->up), &pr.req, cbs, data, out);
  pb_request_free(&pr);
  return rc;
}

static void maybe_closed(pb_client *pc);

/* ---- auth ---- */

static bool needs_login(const pb_client *pc) {
  return pc->conf->auth == PB_AUTH_SUPERUSER || pc->conf->auth == PB_AUTH_USER;
}

static void on_notify(uv_timer_t *t) {
  pb_client *pc = t->data;
  list ready;

  /* Each waiter leaves the queue before its callback, which may queue it
   * again (a transient failure: it backs off and asks later). */
  list_init(&ready);
  while (!list_empty(&pc->waiters)) {
    list *n = pc->waiters.next;

    list_remove(n);
    list_push_back(&ready, n);
  }
  while (!list_empty(&ready)) {
    pb_waiter *w = container_of(ready.next, pb_waiter, _node);

    list_remove(&w->_node);
    w->_queued = false;
    if (pc->auth_error != NULL)
      w->cb(w, UV_EACCES, pc->auth_error);
    else if (pc->token != NULL || !needs_login(pc))
      w->cb(w, 0, NULL);
    else
      w->cb(w, UV_EAGAIN, pc->auth_transient);
  }
}

static void notify(pb_client *pc) {
  if (!pc->closing && !list_empty(&pc->waiters))
    uv_timer_start(&pc->notify_timer, on_notify, 0, 0);
}

static void auth_fail(pb_client *pc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void auth_fail(pb_client *pc, const char *fmt, ...) {
  char why[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  free(pc->auth_error);
  pc->auth_error = strdup(why);
  free(pc->token);
  pc->token = NULL;
  uv_timer_stop(&pc->auth_timer);
  log_error("PocketBase authentication failed",
            LS("upstream", upstream_name(pc->up)), LS("error", why));
  notify(pc);
}

static const char *auth_path(pb_client *pc, bool refresh, char *out,
                             size_t outlen) {
  const char *verb = refresh ? "auth-refresh" : "auth-with-password";

  if (pc->conf->auth == PB_AUTH_SUPERUSER && pc->legacy)
    snprintf(out, outlen, "/api/admins/%s", verb);
  else if (pc->conf->auth == PB_AUTH_SUPERUSER)
    snprintf(out, outlen, "/api/collections/_superusers/%s", verb);
  else
    snprintf(out, outlen, "/api/collections/%s/%s", pc->conf->auth_collection,
             verb);
  return out;
}

static void on_auth_timer(uv_timer_t *t);

/* Schedules the refresh: a quarter of the token's life before exp, and at
 * least half of it or 30 s, whichever is less, so a long token is renewed
 * hours ahead and a short one still has time. */
static void schedule_refresh(pb_client *pc, int64_t now_server) {
  int64_t life = pc->exp_ms - now_server, margin, at;

  if (pc->exp_ms == 0 || life <= 0)
    return;
  margin = life / 4;
  if (margin < (life / 2 < 30000 ? life / 2 : 30000))
    margin = life / 2 < 30000 ? life / 2 : 30000;
  at = life - margin;
  uv_timer_start(&pc->auth_timer, on_auth_timer, (uint64_t)at, 0);
}

static void take_token(pb_client *pc, const http_response *resp) {
  char err[256], *token = NULL;
  int64_t exp;

  if (pb_auth_parse(resp->body, resp->body_len, &token, &exp, err,
                    sizeof err) != 0) {
    auth_fail(pc, "the auth answer from %s is not usable: %s", resp->url, err);
    return;
  }
  free(pc->token);
  pc->token = token;
  pc->gen++;
  pc->exp_ms = exp * 1000;
  pc->auth_transient[0] = '\0';
  backoff_reset(&pc->auth_retry);
  schedule_refresh(pc, pb_client_server_now(pc));
  log_info(pc->auth_refreshing ? "PocketBase token refreshed"
                               : "PocketBase login",
           LS("upstream", upstream_name(pc->up)),
           LI("expires_in_s", (pc->exp_ms - pb_client_server_now(pc)) / 1000));
  notify(pc);
  /* A new token must be posted again: the server forgets the stream's
   * identity when the old one changes (§6). */
  if (pc->client_id[0] != '\0')
    post_topics(pc);
}

static void auth_retry_later(pb_client *pc, const char *why) {
  uint64_t delay = backoff_next_at(&pc->auth_retry, uv_now(pc->loop));

  if (delay < 1000 && backoff_attempt(&pc->auth_retry) > 1)
    delay = 1000;
  snprintf(pc->auth_transient, sizeof pc->auth_transient, "%s", why);
  log_warn("PocketBase login failed; retrying",
           LS("upstream", upstream_name(pc->up)), LS("error", why),
           LU("retry_in_ms", delay));
  uv_timer_start(&pc->auth_timer, on_auth_timer, delay, 0);
  notify(pc);
}

static void on_auth_done(http_req *r, int status, const http_response *resp,
                         const char *msg, void *data) {
  pb_client *pc = data;
  bool refreshing = pc->auth_refreshing;
  char why[1024], path[320];
  pb_error e;
  int code = resp != NULL ? resp->status : 0;

  (void)r;
  pc->auth_req = NULL;
  if (pc->closing) {
    maybe_closed(pc);
    return;
  }
  if (status != 0) {
    snprintf(why, sizeof why, "%s: %s",
             auth_path(pc, refreshing, path, sizeof path),
             msg != NULL ? msg : http_strerror(status));
    if (refreshing && pc->token != NULL &&
        pb_client_server_now(pc) < pc->exp_ms - 1000) {
      /* The token still holds: try the refresh again a little later. */
      uv_timer_start(&pc->auth_timer, on_auth_timer,
                     backoff_next(&pc->auth_retry) + 1000, 0);
      return;
    }
    auth_retry_later(pc, why);
    return;
  }
  pb_client_observe(pc, resp);
  if (code == 200) {
    take_token(pc, resp);
    return;
  }
  pb_error_parse(resp->body, resp->body_len, &e);
  if (refreshing) {
    /* The token is no longer accepted (or refresh is refused): log in
     * with the password instead. */
    log_info("PocketBase refresh refused; logging in again",
             LS("upstream", upstream_name(pc->up)), LI("status", code));
    free(pc->token);
    pc->token = NULL;
    pc->auth_refreshing = false;
    start_login(pc);
    return;
  }
  if (code == 404 && pc->conf->auth == PB_AUTH_SUPERUSER && !pc->legacy &&
      pc->conf->api_version == PB_API_AUTO) {
    /* ≤ v0.22 has no _superusers collection: its admins log in apart. */
    log_info("no _superusers collection: speaking to PocketBase <= v0.22",
             LS("upstream", upstream_name(pc->up)));
    pc->legacy = true;
    start_login(pc);
    return;
  }
  if (code == 429 || code >= 500) {
    snprintf(why, sizeof why, "HTTP %d from %s: %s", code,
             auth_path(pc, false, path, sizeof path), e.message);
    auth_retry_later(pc, why);
    return;
  }
  if (code == 401 && e.mfa) {
    auth_fail(pc,
              "PocketBase asks %s for a second factor (MFA): tether cannot "
              "give one; turn MFA off for this account or use auth = token",
              pc->conf->identity);
    return;
  }
  auth_path(pc, false, path, sizeof path);
  if (code == 400)
    auth_fail(pc,
              "login as %s refused by %s: %s%s%s (check identity and "
              "password)",
              pc->conf->identity, path, e.message, e.detail[0] ? "; " : "",
              e.detail);
  else if (code == 403)
    auth_fail(pc,
              "login as %s forbidden (403) by %s: %s (password auth may be "
              "off, the auth rule may refuse it, or this address is not "
              "allowed)",
              pc->conf->identity, path, e.message);
  else if (code == 404)
    auth_fail(pc,
              "%s answered 404: %s (is auth_collection an auth collection, "
              "and is the url a PocketBase server?)",
              path, e.message);
  else
    auth_fail(pc, "HTTP %d from %s: %s", code, path, e.message);
}

static const http_callbacks auth_callbacks = { .on_done = on_auth_done };

static void start_auth(pb_client *pc, bool refresh) {
  char path[512], err[64];
  buf body;
  int rc;

  if (pc->auth_req != NULL || pc->closing || pc->auth_error != NULL ||
      !needs_login(pc))
    return;
  uv_timer_stop(&pc->auth_timer);
  pc->auth_refreshing = refresh && pc->token != NULL;
  buf_init(&body, 0);
  if (!pc->auth_refreshing &&
      pb_auth_body(pc->conf->identity, pc->conf->password, &body) != 0) {
    buf_free(&body);
    auth_retry_later(pc, "out of memory");
    return;
  }
  rc = pb_client_request(pc, "POST",
                         auth_path(pc, pc->auth_refreshing, path, sizeof path),
                         pc->auth_refreshing ? NULL : body.data,
                         pc->auth_refreshing ? 0 : body.len,
                         pc->auth_refreshing ? pc->token : NULL,
                         &auth_callbacks, pc, &pc->auth_req);
  buf_free(&body);
  if (rc != 0) {
    snprintf(err, sizeof err, "cannot start the login: %s", http_strerror(rc));
    auth_retry_later(pc, err);
  }
}

static void start_login(pb_client *pc) {
  start_auth(pc, false);
}

/* A login now, unless one failed lately and its retry is scheduled: many
 * pollers asking must not cut the login's own backoff short. */
static void login_unless_waiting(pb_client *pc) {
  if (!uv_is_active((uv_handle_t *)&pc->auth_timer))
    start_login(pc);
}

static void on_auth_timer(uv_timer_t *t) {
  pb_client *pc = t->data;

  start_auth(pc, pc->token != NULL);
}

bool pb_client_token(pb_client *pc, const char **token, unsigned *gen) {
  *gen = pc->gen;
  *token = NULL;
  switch (pc->conf->auth) {
  case PB_AUTH_NONE:
    return true;
  case PB_AUTH_TOKEN:
    *token = pc->token;
    return pc->token != NULL;
  default:
    break;
  }
  if (pc->auth_error != NULL)
    return false;
  /* A token at its end (a process stopped past its refresh) is a guest's
   * in the server's eyes: never send it. */
  if (pc->token != NULL && pc->exp_ms != 0 &&
      pb_client_server_now(pc) >= pc->exp_ms - 1000) {
    free(pc->token);
    pc->token = NULL;
    uv_timer_stop(&pc->auth_timer); /* the refresh is moot */
  }
  if (pc->token == NULL) {
    login_unless_waiting(pc);
    return false;
  }
  *token = pc->token;
  return true;
}

void pb_client_wait(pb_client *pc, pb_waiter *w) {
  assert(!w->_queued);
  list_push_back(&pc->waiters, &w->_node);
  w->_queued = true;
  if (pc->auth_error != NULL || pc->token != NULL || !needs_login(pc))
    notify(pc);
  else
    login_unless_waiting(pc);
}

void pb_client_cancel_wait(pb_client *pc, pb_waiter *w) {
  (void)pc;
  if (w->_queued) {
    list_remove(&w->_node);
    w->_queued = false;
  }
}

bool pb_client_reject(pb_client *pc, unsigned gen) {
  if (!needs_login(pc))
    return false;
  if (gen == pc->gen && pc->token != NULL) {
    free(pc->token);
    pc->token = NULL;
    start_login(pc);
  }
  return true;
}

/* ---- realtime ---- */

static void on_sub_done(http_req *r, int status, const http_response *resp,
                        const char *msg, void *data);

static const http_callbacks sub_callbacks = { .on_done = on_sub_done };

static void on_rt_token(pb_waiter *w, int status, const char *why) {
  pb_client *pc = container_of(w, pb_client, rt_waiter);

  (void)why;
  if (status == 0) {
    post_topics(pc);
  } else if (status == UV_EAGAIN && !pc->closing) {
    /* The login failed for now and retries on its own timer: wait for
     * its outcome rather than ask for another login at once. */
    list_push_back(&pc->waiters, &w->_node);
    w->_queued = true;
  }
}

static void post_topics(pb_client *pc) {
  const char **topics = NULL;
  const char *token;
  size_t n = 0, i;
  buf body;
  list *it;
  int rc;

  if (pc->closing || pc->client_id[0] == '\0')
    return;
  if (pc->sub_req != NULL) {
    pc->sub_again = true;
    return;
  }
  if (!pb_client_token(pc, &token, &pc->sub_gen)) {
    if (pc->auth_error == NULL && !pc->rt_waiter._queued)
      pb_client_wait(pc, &pc->rt_waiter);
    return;
  }
  for (it = pc->watches.next; it != &pc->watches; it = it->next)
    n++;
  if ((topics = calloc(n + 1, sizeof *topics)) == NULL)
    return;
  n = 0;
  for (it = pc->watches.next; it != &pc->watches; it = it->next) {
    const char *t = container_of(it, pb_watch, _node)->topic;

    for (i = 0; i < n && strcmp(topics[i], t) != 0; i++)
      ;
    if (i == n)
      topics[n++] = t;
  }
  buf_init(&body, 0);
  rc = pb_subscribe_body(pc->client_id, topics, n, &body);
  free(topics);
  pc->sub_again = false;
  if (rc == 0)
    rc = pb_client_request(pc, "POST", "/api/realtime", body.data, body.len,
                           token, &sub_callbacks, pc, &pc->sub_req);
  buf_free(&body);
  if (rc != 0) /* a new stream posts again */
    sse_stream_drop(&pc->rt, "cannot post the realtime topics");
}

static void on_sub_done(http_req *r, int status, const http_response *resp,
                        const char *msg, void *data) {
  pb_client *pc = data;
  int code = resp != NULL ? resp->status : 0;
  pb_error e;
  list *it, *next;

  (void)r;
  pc->sub_req = NULL;
  if (pc->closing) {
    maybe_closed(pc);
    return;
  }
  if (status == 0 && code == 204) {
    if (pc->sub_again) {
      post_topics(pc);
      return;
    }
    log_debug("realtime topics subscribed",
              LS("upstream", upstream_name(pc->up)));
    /* Catch up: whatever happened before the server took the topics was
     * never sent on this stream. */
    for (it = pc->watches.next; it != &pc->watches; it = next) {
      next = it->next;
      container_of(it, pb_watch, _node)
          ->on_connect(container_of(it, pb_watch, _node));
    }
    return;
  }
  if (status != 0) {
    log_warn("realtime subscription failed",
             LS("upstream", upstream_name(pc->up)),
             LS("error", msg != NULL ? msg : http_strerror(status)));
  } else {
    pb_error_parse(resp->body, resp->body_len, &e);
    log_warn("realtime subscription refused",
             LS("upstream", upstream_name(pc->up)), LI("status", code),
             LS("error", e.message));
    /* 403: the stream's identity no longer matches the token (it
     * expired after an authenticated post): log in again. */
    if (code == 401 || code == 403)
      pb_client_reject(pc, pc->sub_gen);
  }
  /* Drop this stream; the next one gets a fresh client id and posts
   * again. */
  sse_stream_drop(&pc->rt, "the realtime subscription failed");
}

/* PB_CONNECT: the stream's client id, to post the topics with. */
static int on_rt_connect(sse_stream *st, const sse_event *ev, void *data) {
  pb_client *pc = data;
  char err[128];

  (void)st;
  if (pb_connect_parse(ev->data, ev->data_len, pc->client_id,
                       sizeof pc->client_id, err, sizeof err) != 0) {
    log_warn("realtime PB_CONNECT not understood",
             LS("upstream", upstream_name(pc->up)), LS("error", err));
    return UV_EPROTO;
  }
  log_debug("realtime connected", LS("upstream", upstream_name(pc->up)));
  post_topics(pc);
  return SSE_STREAM_NEXT;
}

/* A record event: it wakes the pollers of its topic. */
static int on_rt_event(sse_stream *st, const sse_event *ev, void *data) {
  pb_client *pc = data;
  char action[16];
  int64_t created = 0;
  list *it, *next;

  (void)st;
  if (pb_event_parse(ev->data, ev->data_len, action, &created) != 0)
    created = 0;
  /* Sent after the commit: the server's clock has passed created. */
  pb_client_observe_stamp(pc, created);
  for (it = pc->watches.next; it != &pc->watches; it = next) {
    pb_watch *w = container_of(it, pb_watch, _node);

    next = it->next;
    if (strcmp(w->topic, ev->type) == 0)
      w->on_event(w, created);
  }
  return SSE_STREAM_NEXT;
}

static int on_rt_open(sse_stream *st, const http_response *resp, void *data) {
  (void)st;
  pb_client_observe(data, resp);
  return 0;
}

/* The stream reconnects by itself; this only says why it ended. */
static void on_rt_end(sse_stream *st, const sse_stream_end *e, void *data) {
  pb_client *pc = data;
  const char *ct;

  (void)st;
  pc->client_id[0] = '\0';
  if (e->refused) {
    pb_client_observe(pc, e->resp);
    ct = http_response_header(e->resp, "Content-Type");
    log_warn("realtime stream refused", LS("upstream", upstream_name(pc->up)),
             LI("status", e->resp->status), LS("content_type", ct ? ct : ""));
  } else if (!e->failure) {
    log_debug("realtime stream ended; reconnecting",
              LS("upstream", upstream_name(pc->up)));
  } else if (e->status != UV_ECANCELED) {
    log_warn("realtime stream lost", LS("upstream", upstream_name(pc->up)),
             LS("error", e->why));
  }
}

static const sse_stream_hooks rt_hooks = {
  .on_open = on_rt_open,
  .on_event = on_rt_event,
  .on_control = on_rt_connect,
  .on_end = on_rt_end,
};

static void start_stream(pb_client *pc) {
  if (pc->conf->realtime && !pc->closing && !list_empty(&pc->watches))
    sse_stream_start(&pc->rt);
}

void pb_client_watch(pb_client *pc, pb_watch *w) {
  list_push_back(&pc->watches, &w->_node);
  if (!pc->conf->realtime)
    return;
  if (!sse_stream_connected(&pc->rt))
    start_stream(pc);
  else
    post_topics(pc);
}

void pb_client_topics_changed(pb_client *pc) {
  if (pc->conf->realtime && !pc->closing)
    post_topics(pc);
}

void pb_client_unwatch(pb_client *pc, pb_watch *w) {
  list_remove(&w->_node);
  if (!pc->conf->realtime || pc->closing)
    return;
  if (list_empty(&pc->watches)) {
    sse_stream_stop(&pc->rt);
    pc->client_id[0] = '\0';
  } else {
    post_topics(pc);
  }
}

/* ---- life ---- */

int pb_client_open(upstream *up, void **ext, char *err, size_t errlen) {
  const pb_upstream_conf *conf = upstream_conf(up);
  uv_loop_t *loop = upstream_loop(up);
  static const char *const control[] = { "PB_CONNECT", NULL };
  const http_header cache = { "Cache-Control", "no-store" };
  sse_stream_opts so;
  char *url = NULL;
  pb_client *pc;
  size_t n;
  int rc;

  if ((pc = calloc(1, sizeof *pc)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  pc->up = up;
  pc->conf = conf;
  pc->loop = loop;
  pc->legacy = conf->api_version == PB_API_LEGACY;
  if ((pc->base = strdup(conf->http.url)) == NULL) {
    free(pc);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  n = strlen(pc->base);
  while (n > 0 && pc->base[n - 1] == '/')
    pc->base[--n] = '\0';
  if (conf->auth == PB_AUTH_TOKEN &&
      (pc->token = strdup(conf->token)) == NULL) {
    free(pc->base);
    free(pc);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  list_init(&pc->waiters);
  list_init(&pc->watches);
  pc->rt_waiter.cb = on_rt_token;
  list_init(&pc->rt_waiter._node);
  backoff_init(&pc->auth_retry, conf->http.reconnect_min,
               conf->http.reconnect_max, 1, 0);
  /* The realtime stream: never resumed (records come from the polls),
   * silent by design (no idle timeout), and a wake-up only, so nothing
   * about it is fatal. */
  memset(&so, 0, sizeof so);
  rc = asprintf(&url, "%s/api/realtime", pc->base) < 0 ? UV_ENOMEM : 0;
  so.url = url;
  so.headers = &cache;
  so.n_headers = 1;
  so.control_types = control;
  so.persistent = true;
  if (rc != 0 || (rc = sse_stream_init(&pc->rt, up, &so, &rt_hooks, pc, err,
                                       errlen)) != 0) {
    if (rc == UV_ENOMEM)
      snprintf(err, errlen, "out of memory");
    free(url);
    free(pc->token);
    free(pc->base);
    free(pc);
    return rc;
  }
  free(url);
  pc->rt_open = true;
  uv_timer_init(loop, &pc->auth_timer);
  uv_timer_init(loop, &pc->notify_timer);
  pc->auth_timer.data = pc->notify_timer.data = pc;
  pc->open_handles = 2;
  *ext = pc;
  return 0;
}

static void on_rt_closed(sse_stream *st, void *data) {
  pb_client *pc = data;

  (void)st;
  pc->rt_open = false;
  maybe_closed(pc);
}

static void on_handle_closed(uv_handle_t *h) {
  pb_client *pc = h->data;

  pc->open_handles--;
  maybe_closed(pc);
}

static void maybe_closed(pb_client *pc) {
  void (*cb)(void *);
  void *data;

  if (!pc->closing || pc->open_handles > 0 || pc->auth_req != NULL ||
      pc->rt_open || pc->sub_req != NULL)
    return;
  cb = pc->close_cb;
  data = pc->close_data;
  free(pc->token);
  free(pc->auth_error);
  free(pc->base);
  free(pc);
  cb(data);
}

void pb_client_close(void *ext, void (*cb)(void *data), void *data) {
  pb_client *pc = ext;

  assert(!pc->closing);
  pc->closing = true;
  pc->close_cb = cb;
  pc->close_data = data;
  if (pc->auth_req != NULL)
    http_req_cancel(pc->auth_req);
  if (pc->sub_req != NULL)
    http_req_cancel(pc->sub_req);
  sse_stream_close(&pc->rt, on_rt_closed, pc);
  uv_close((uv_handle_t *)&pc->auth_timer, on_handle_closed);
  uv_close((uv_handle_t *)&pc->notify_timer, on_handle_closed);
}
