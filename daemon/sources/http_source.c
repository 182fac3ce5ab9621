#include "daemon/sources/http_source.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "daemon/consumer.h"
#include "protocol/http.h"

static void on_closed(uv_handle_t *h) {
  http_source *hs = h->data;
  consumer *c = hs->base.consumer;

  hs->_free(hs);
  consumer_source_closed(c);
}

static void close_timer(http_source *hs) {
  if (hs->_closing)
    return;
  hs->_closing = true;
  uv_close((uv_handle_t *)&hs->timer, on_closed);
}

/* A request of the source: the caller's callbacks and data, called through
 * these wrappers so the source knows when the last one ended. */
typedef struct tracked {
  list node; /* in http_source._reqs */
  http_source *hs;
  http_callbacks cb;
  void *data;
  http_req *req;
} tracked;

static int tracked_on_head(http_req *r, const http_response *resp, void *data) {
  tracked *t = data;

  return t->cb.on_head != NULL ? t->cb.on_head(r, resp, t->data) : 0;
}

static int tracked_on_body(http_req *r, const char *bytes, size_t n,
                           void *data) {
  tracked *t = data;

  return t->cb.on_body != NULL ? t->cb.on_body(r, bytes, n, t->data) : 0;
}

static void tracked_on_done(http_req *r, int status, const http_response *resp,
                            const char *msg, void *data) {
  tracked *t = data;
  http_source *hs = t->hs;

  list_remove(&t->node);
  hs->_n_reqs--;
  t->cb.on_done(r, status, resp, msg, t->data);
  free(t);
  /* The caller's on_done has returned: when it was the last request of a
   * closing source, nothing of the source is on the stack any more. */
  if (hs->stopping && hs->_n_reqs == 0)
    close_timer(hs);
}

static const http_callbacks tracked_callbacks = {
  .on_head = tracked_on_head,
  .on_body = tracked_on_body,
  .on_done = tracked_on_done,
};

int http_source_request(http_source *hs, const http_request *req,
                        const http_callbacks *cbs, void *data, http_req **out) {
  tracked *t;
  int rc;

  assert(!hs->stopping && "a request started after close");
  if (cbs == NULL || cbs->on_done == NULL)
    return UV_EINVAL;
  if ((t = calloc(1, sizeof *t)) == NULL)
    return UV_ENOMEM;
  t->hs = hs;
  t->cb = *cbs;
  t->data = data;
  rc = http_request_start(upstream_http(hs->up), req, &tracked_callbacks, t,
                          &t->req);
  if (rc != 0) {
    free(t);
    return rc;
  }
  list_push_back(&hs->_reqs, &t->node);
  hs->_n_reqs++;
  if (out != NULL)
    *out = t->req;
  return 0;
}

unsigned http_source_requests(const http_source *hs) {
  return hs->_n_reqs;
}

void http_source_init(http_source *hs, const source_type *type, consumer *c,
                      void (*free_fn)(http_source *hs)) {
  hs->base.type = type;
  hs->base.consumer = c;
  hs->up = consumer_upstream(c);
  assert(hs->up != NULL && "an HTTP source needs an upstream");
  hs->_free = free_fn;
  list_init(&hs->_reqs);
  upstream_backoff_init(hs->up, &hs->retry);
  uv_timer_init(consumer_loop(c), &hs->timer);
  hs->timer.data = hs;
}

void http_source_close(source *s) {
  http_source *hs = (http_source *)s;
  list *n;

  assert(!hs->stopping);
  hs->stopping = true;
  uv_timer_stop(&hs->timer);
  /* A cancel's on_done comes on a later turn, so the list holds still. */
  for (n = hs->_reqs.next; n != &hs->_reqs; n = n->next)
    http_req_cancel(container_of(n, tracked, node)->req);
  if (hs->_n_reqs == 0)
    close_timer(hs); /* else the last on_done does */
}

bool http_source_ended(const http_source *hs) {
  return hs->stopping;
}

void http_source_wait(http_source *hs, uint64_t delay_ms, uv_timer_cb cb,
                      const char *why) {
  consumer *c = hs->base.consumer;
  uv_loop_t *loop = consumer_loop(c);

  delay_ms = backoff_budget_take(upstream_budget(), uv_now(loop), delay_ms);
  if (why != NULL)
    consumer_source_backoff(c, delay_ms, backoff_attempt(&hs->retry), why);
  uv_timer_start(&hs->timer, cb, delay_ms, 0);
}

bool http_source_retryable(int status) {
  return status >= 500 || status == 408 || status == 429;
}

uint64_t http_source_retry_after(backoff *b, upstream *up,
                                 const http_response *resp) {
  const http_upstream_conf *h = upstream_http_conf(up);
  const char *ra = http_response_header(resp, "Retry-After");
  uint64_t hint;
  char err[128];

  if (ra != NULL &&
      http_retry_after(ra, http_response_header(resp, "Date"),
                       (int64_t)time(NULL), &hint, err, sizeof err) == 0)
    return backoff_next_hinted(b, hint < h->reconnect_min ? h->reconnect_min
                                                          : hint);
  return backoff_next_at(b, uv_now(upstream_loop(up)));
}

uint64_t http_source_retry_delay(http_source *hs, const http_response *resp) {
  return http_source_retry_after(&hs->retry, hs->up, resp);
}

/* Whether name (n bytes) is one of the comma-separated names in list. */
static bool listed(const char *list, const char *name, size_t n) {
  const char *p = list, *end;
  size_t len;

  while (*p != '\0') {
    while (*p == ',' || *p == ' ')
      p++;
    end = p;
    while (*end != '\0' && *end != ',')
      end++;
    len = (size_t)(end - p);
    while (len > 0 && p[len - 1] == ' ')
      len--;
    if (len == n && len > 0 && strncasecmp(p, name, n) == 0)
      return true;
    p = end;
  }
  return false;
}

int http_source_identity(const char *upstream_url, const char *path,
                         const char *ignore, buf *out) {
  char err[128], *url = NULL;
  const char *q, *p, *end;
  bool first = true;
  int rc;

  buf_reset(out);
  if (http_url_resolve(upstream_url, path, &url, err, sizeof err) != 0) {
    /* Checked at start-up anyway; the text still names the stream. */
    rc = buf_appendf(out, "%s %s", upstream_url, path);
    return rc != 0 || buf_cstr(out) == NULL ? UV_ENOMEM : 0;
  }
  q = strchr(url, '?');
  rc = buf_append(out, url, q != NULL ? (size_t)(q - url) : strlen(url));
  for (p = q != NULL ? q + 1 : NULL; rc == 0 && p != NULL && *p != '\0';
       p = *end == '&' ? end + 1 : end) {
    size_t name;

    end = strchr(p, '&');
    if (end == NULL)
      end = p + strlen(p);
    name = strcspn(p, "=&");
    if (name > (size_t)(end - p))
      name = (size_t)(end - p);
    if (end == p || listed(ignore, p, name))
      continue;
    if ((rc = buf_append(out, first ? "?" : "&", 1)) == 0)
      rc = buf_append(out, p, (size_t)(end - p));
    first = false;
  }
  free(url);
  return rc != 0 || buf_cstr(out) == NULL ? UV_ENOMEM : 0;
}

void http_source_fail(http_source *hs, const char *fmt, ...) {
  char why[768];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  hs->failed = true;
  consumer_source_failed(hs->base.consumer, why);
}
