/* Upstreams: the [upstream NAME] sections consumers read.
 *
 * An upstream type names the protocol (`sse`, `http-poll`, ...), declares
 * the option table of its section and the source type that reads it. At
 * run time an upstream is the shared state of every consumer that reads it:
 * for HTTP upstreams, one TLS context and one HTTP client (its connection
 * pool), so consumers on one upstream share connections.
 */
#ifndef TETHER_DAEMON_UPSTREAM_H
#define TETHER_DAEMON_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/options.h"
#include "daemon/source.h"
#include "loop/backoff.h"
#include "loop/http_client.h"

typedef struct upstream_type {
  const char *name;
  const char *description;
  const option *options; /* keys of [upstream NAME] besides type */
  size_t conf_size;
  /* Cross-option checks; see source_type.check. May be NULL. */
  int (*check)(void *conf, uint64_t explicit, char *err, size_t errlen);
  const source_type *source; /* the source type its consumers run */
  /* True for types whose section takes header.NAME keys. */
  bool takes_headers;
} upstream_type;

/* The options every HTTP upstream has (sse, http-poll). */
typedef struct http_upstream_conf {
  char *url;         /* base URL: scheme, host, port and a base path */
  char *unix_socket; /* reach the host over this unix socket instead */
  char *ca_file;     /* PEM trust anchors; "" = the system bundle */
  char *client_cert; /* PEM certificate for mTLS */
  char *client_key;  /* its key */
  bool tls_verify;   /* check the server's certificate and name */
  int64_t max_connections;
  uint64_t connect_timeout;
  uint64_t reconnect_min;
  uint64_t reconnect_max;
  int64_t immediate_retries;
  bool proxy_from_env; /* honour HTTP(S)_PROXY and NO_PROXY */
} http_upstream_conf;

extern const option upstream_http_options[];

/* The runtime of one [upstream NAME] section. */
typedef struct upstream upstream;

typedef struct config_upstream config_upstream;

/* Creates the runtime for u (borrowed for the upstream's life): loads the
 * TLS files and makes the HTTP client. Logs a warning when tls_verify is
 * off. Returns 0 or a negative code with the reason in err. */
int upstream_open(uv_loop_t *loop, const config_upstream *u, upstream **out,
                  char *err, size_t errlen);

/* Closes the client once every request ended; cb follows, then up is
 * freed. */
void upstream_close(upstream *up, void (*cb)(void *data), void *data);

const char *upstream_name(const upstream *up);
const http_upstream_conf *upstream_http_conf(const upstream *up);
http_client *upstream_http(upstream *up);

/* The request headers of header.NAME keys (values expanded, never
 * logged). */
const http_header *upstream_headers(const upstream *up, size_t *n);

/* A reconnect backoff set up from the upstream's reconnect options. */
void upstream_backoff_init(const upstream *up, backoff *b);

/* The process-wide reconnect budget every source draws from. */
backoff_budget *upstream_budget(void);

#endif
