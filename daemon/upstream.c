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

const option upstream_http_options[] = {
  { "url", OPT_STRING, NULL, offsetof(http_upstream_conf, url),
    "base URL of the service: http:// or https://, host, port and a base "
    "path",
    0, 0, NULL, OPT_REQUIRED },
  { "unix_socket", OPT_STRING, "", offsetof(http_upstream_conf, unix_socket),
    "reach the service over this unix socket (the url still names the host)", 0,
    0, NULL, 0 },
  { "ca_file", OPT_STRING, "", offsetof(http_upstream_conf, ca_file),
    "PEM file of the CAs to trust; empty = the system bundle", 0, 0, NULL, 0 },
  { "client_cert", OPT_STRING, "", offsetof(http_upstream_conf, client_cert),
    "PEM certificate tether presents (mutual TLS)", 0, 0, NULL, 0 },
  { "client_key", OPT_STRING, "", offsetof(http_upstream_conf, client_key),
    "PEM key of client_cert", 0, 0, NULL, 0 },
  { "tls_verify", OPT_BOOL, "true", offsetof(http_upstream_conf, tls_verify),
    "check the server's certificate and name; false is logged as a warning", 0,
    0, NULL, 0 },
  { "max_connections", OPT_INT, "4",
    offsetof(http_upstream_conf, max_connections),
    "connections kept open to the service, shared by its consumers", 1, 256,
    NULL, 0 },
  { "connect_timeout", OPT_DURATION, "10s",
    offsetof(http_upstream_conf, connect_timeout),
    "limit on name lookup, connect and TLS handshake", 10, 600000, NULL, 0 },
  { "reconnect_min", OPT_DURATION, "250ms",
    offsetof(http_upstream_conf, reconnect_min),
    "shortest wait before reconnecting after a failure", 1, 3600000, NULL, 0 },
  { "reconnect_max", OPT_DURATION, "30s",
    offsetof(http_upstream_conf, reconnect_max),
    "longest wait before reconnecting, hints such as Retry-After included", 1,
    86400000, NULL, 0 },
  { "immediate_retries", OPT_INT, "3",
    offsetof(http_upstream_conf, immediate_retries),
    "failures retried at once before the waits begin", 0, 100, NULL, 0 },
  { "proxy_from_env", OPT_BOOL, "true",
    offsetof(http_upstream_conf, proxy_from_env),
    "use HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment", 0, 0, NULL,
    0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

static int http_check(void *conf, uint64_t explicit, char *err, size_t errlen) {
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
  .check = http_check,
  .source = &source_sse,
  .takes_headers = true,
};

const upstream_type upstream_http_poll = {
  .name = "http-poll",
  .description = "any JSON REST collection or changes feed",
  .options = upstream_http_options,
  .conf_size = sizeof(http_upstream_conf),
  .check = http_check,
  .source = &source_http_poll,
  .takes_headers = true,
};

struct upstream {
  const config_upstream *conf;
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

int upstream_open(uv_loop_t *loop, const config_upstream *u, upstream **out,
                  char *err, size_t errlen) {
  const http_upstream_conf *h = u->conf;
  http_client_opts co;
  tls_options to;
  upstream *up;
  size_t i;
  int rc;

  if ((up = calloc(1, sizeof *up)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  up->conf = u;
  up->http = h;
  up->headers = calloc(u->n_kv > 0 ? u->n_kv : 1, sizeof *up->headers);
  if (up->headers == NULL) {
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
  co.connect_timeout = h->connect_timeout;
  co.first_byte_timeout = 0;
  co.pool_idle_timeout = 60000;
  co.unix_path = h->unix_socket[0] != '\0' ? h->unix_socket : NULL;
  co.use_env_proxy = h->proxy_from_env;
  if ((rc = http_client_create(loop, &co, &up->client, err, errlen)) != 0)
    goto fail;
  *out = up;
  return 0;

fail:
  tls_ctx_destroy(up->tls);
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

void upstream_close(upstream *up, void (*cb)(void *data), void *data) {
  up->close_cb = cb;
  up->close_data = data;
  http_client_close(up->client, on_client_closed, up);
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

void upstream_backoff_init(const upstream *up, backoff *b) {
  backoff_init(b, up->http->reconnect_min, up->http->reconnect_max,
               (unsigned)up->http->immediate_retries, 0);
}
