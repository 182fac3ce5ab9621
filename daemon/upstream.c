/* Upstream types and their runtime: one TLS context and one HTTP client per
 * [upstream NAME], shared by every consumer that reads it. */
#include "daemon/upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/sources/http_poll.h"
#include "daemon/sources/sse.h"

const char *const upstream_redirect_choices[] = { "drop", "keep", NULL };

const option upstream_http_options[] = {
  UPSTREAM_HTTP_OPTIONS,
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

int upstream_http_check(void *conf, uint64_t explicit, char *err,
                        size_t errlen) {
  http_upstream_conf *c = conf;

  (void)explicit;
  if (strncmp(c->url, "http://", 7) != 0 &&
      strncmp(c->url, "https://", 8) != 0) {
    snprintf(err, errlen,
             "url = \"%s\": expected http://HOST... or "
             "https://HOST...",
             c->url);
    return UV_EINVAL;
  }
  if ((c->client_cert[0] == '\0') != (c->client_key[0] == '\0')) {
    snprintf(err, errlen, "set client_cert and client_key together");
    return UV_EINVAL;
  }
  if (c->reconnect_min > c->reconnect_max) {
    snprintf(err, errlen, "reconnect_min is above reconnect_max");
    return UV_EINVAL;
  }
  return 0;
}

const upstream_type upstream_sse = {
  .name = "sse",
  .description = "any text/event-stream endpoint (nchan, better-sse, ...)",
  .options = upstream_http_options,
  .conf_size = sizeof(http_upstream_conf),
  .check = upstream_http_check,
  .source = &source_sse,
  .takes_headers = true,
};

const upstream_type upstream_http_poll = {
  .name = "http-poll",
  .description = "any JSON REST collection or changes feed",
  .options = upstream_http_options,
  .conf_size = sizeof(http_upstream_conf),
  .check = upstream_http_check,
  .source = &source_http_poll,
  .takes_headers = true,
};

struct upstream {
  const config_upstream *conf;
  uv_loop_t *loop;
  void *ext; /* the type's shared runtime, or NULL */
  const http_upstream_conf *http;
  tls_ctx *tls;
  http_client *client;
  http_header *headers;
  size_t n_headers;
  void (*close_cb)(void *data);
  void *close_data;
};

static backoff_budget budget;
static bool budget_ready;

backoff_budget *upstream_budget(void) {
  /* Twenty reconnects a second across the process, in bursts of forty:
   * plenty for a sidecar's handful of upstreams, and a blip that cuts off
   * hundreds of consumers is spread over seconds instead of one stampede. */
  if (!budget_ready) {
    backoff_budget_init(&budget, 20, 40);
    budget_ready = true;
  }
  return &budget;
}

static void free_later(void *data) {
  (void)data;
}

int upstream_open(uv_loop_t *loop, const config_upstream *u, upstream **out,
                  char *err, size_t errlen) {
  const http_upstream_conf *h = u->conf;
  http_client_opts co;
  tls_options to;
  upstream *up;
  const char **names = NULL;
  size_t i;
  int rc;

  if ((up = calloc(1, sizeof *up)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  up->conf = u;
  up->loop = loop;
  up->http = h;
  up->headers = calloc(u->n_kv > 0 ? u->n_kv : 1, sizeof *up->headers);
  names = calloc(u->n_kv > 0 ? u->n_kv : 1, sizeof *names);
  if (up->headers == NULL || names == NULL) {
    rc = UV_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  /* header.NAME keys: the name is what follows the dot. */
  for (i = 0; i < u->n_kv; i++) {
    if (strncmp(u->kv[i].key, "header.", 7) != 0)
      continue;
    up->headers[up->n_headers].name = u->kv[i].key + 7;
    up->headers[up->n_headers].value = u->kv[i].value;
    names[up->n_headers] = u->kv[i].key + 7;
    up->n_headers++;
  }
  memset(&to, 0, sizeof to);
  to.ca_file = h->ca_file[0] != '\0' ? h->ca_file : NULL;
  to.client_cert = h->client_cert[0] != '\0' ? h->client_cert : NULL;
  to.client_key = h->client_key[0] != '\0' ? h->client_key : NULL;
  to.verify = h->tls_verify;
  to.alpn = "http/1.1";
  if (strncmp(h->url, "https://", 8) == 0) {
    if ((rc = tls_ctx_create(&to, &up->tls, err, errlen)) != 0)
      goto fail;
    if (!h->tls_verify)
      log_warn("TLS verification is off: the server's certificate and name "
               "are not checked",
               LS("upstream", u->name), LS("url", h->url));
  }
  memset(&co, 0, sizeof co);
  co.tls = up->tls;
  co.max_connections = (unsigned)h->max_connections;
  co.max_streams = (unsigned)h->max_streams;
  co.connect_timeout = h->connect_timeout;
  co.response_timeout = h->response_timeout;
  co.pool_idle_timeout = 60000;
  co.unix_path = h->unix_socket[0] != '\0' ? h->unix_socket : NULL;
  co.use_env_proxy = h->proxy_from_env;
  /* The configured headers are credentials as often as not (an API key):
   * like Authorization, they are for the configured origin only. */
  co.origin_headers = names;
  co.n_origin_headers = up->n_headers;
  co.keep_origin_headers = h->redirect_headers == UPSTREAM_REDIRECT_KEEP;
  rc = http_client_create(loop, &co, &up->client, err, errlen);
  free(names); /* copied by the client */
  names = NULL;
  if (rc != 0)
    goto fail;
  if (u->type_reg->ext_open != NULL &&
      (rc = u->type_reg->ext_open(up, &up->ext, err, errlen)) != 0)
    goto fail_client;
  *out = up;
  return 0;

fail_client:
  /* Nothing ran on the loop yet: the client closes on the next turn. */
  http_client_close(up->client, free_later, NULL);
fail:
  tls_ctx_destroy(up->tls);
  free(names);
  free(up->headers);
  free(up);
  return rc;
}

static void on_client_closed(void *data) {
  upstream *up = data;
  void (*cb)(void *) = up->close_cb;
  void *cb_data = up->close_data;

  tls_ctx_destroy(up->tls);
  free(up->headers);
  free(up);
  cb(cb_data);
}

static void on_ext_closed(void *data) {
  upstream *up = data;

  up->ext = NULL;
  http_client_close(up->client, on_client_closed, up);
}

void upstream_close(upstream *up, void (*cb)(void *data), void *data) {
  up->close_cb = cb;
  up->close_data = data;
  if (up->ext != NULL)
    up->conf->type_reg->ext_close(up->ext, on_ext_closed, up);
  else
    http_client_close(up->client, on_client_closed, up);
}

uv_loop_t *upstream_loop(const upstream *up) {
  return up->loop;
}

const void *upstream_conf(const upstream *up) {
  return up->conf->conf;
}

void *upstream_ext(const upstream *up) {
  return up->ext;
}

const char *upstream_name(const upstream *up) {
  return up->conf->name;
}

const http_upstream_conf *upstream_http_conf(const upstream *up) {
  return up->http;
}

http_client *upstream_http(upstream *up) {
  return up->client;
}

const http_header *upstream_headers(const upstream *up, size_t *n) {
  *n = up->n_headers;
  return up->headers;
}

size_t upstream_add_headers(const upstream *up, http_header *headers, size_t n,
                            size_t cap) {
  size_t i;

  for (i = 0; i < up->n_headers && n < cap; i++)
    headers[n++] = up->headers[i];
  return n;
}

void upstream_backoff_init(const upstream *up, backoff *b) {
  backoff_init(b, up->http->reconnect_min, up->http->reconnect_max,
               (unsigned)up->http->immediate_retries, 0);
}
