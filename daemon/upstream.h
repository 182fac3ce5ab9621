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

struct upstream;

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
  /* The type's own shared runtime beside the HTTP client (PocketBase: the
   * token and the realtime stream), opened after the client and closed
   * before it; cb runs once everything of it ended. Both may be NULL. */
  int (*ext_open)(struct upstream *up, void **ext, char *err, size_t errlen);
  void (*ext_close)(void *ext, void (*cb)(void *data), void *data);
} upstream_type;

/* redirect_headers: what a redirect to another origin does with the
 * header.NAME headers. */
enum { UPSTREAM_REDIRECT_DROP, UPSTREAM_REDIRECT_KEEP };

/* The options every HTTP upstream has (sse, http-poll, pocketbase). */
typedef struct http_upstream_conf {
  char *url;         /* base URL: scheme, host, port and a base path */
  char *unix_socket; /* reach the host over this unix socket instead */
  char *ca_file;     /* PEM trust anchors; "" = the system bundle */
  char *client_cert; /* PEM certificate for mTLS */
  char *client_key;  /* its key */
  bool tls_verify;   /* check the server's certificate and name */
  int64_t max_connections;
  int64_t max_streams; /* long-lived streams beside the pool */
  uint64_t connect_timeout;
  uint64_t reconnect_min;
  uint64_t reconnect_max;
  int64_t immediate_retries;
  bool proxy_from_env;       /* honour HTTP(S)_PROXY and NO_PROXY */
  uint64_t response_timeout; /* ms for a response head, every request */
  int redirect_headers;      /* UPSTREAM_REDIRECT_* */
} http_upstream_conf;

extern const option upstream_http_options[];
extern const char *const upstream_redirect_choices[];

/* The cross-option check of every HTTP upstream (url scheme, mTLS pair). */
int upstream_http_check(void *conf, uint64_t explicit, char *err,
                        size_t errlen);

/* The option entries of every HTTP upstream, for the table of a type
 * whose conf struct starts with an http_upstream_conf. */
#define UPSTREAM_HTTP_OPTIONS                                                  \
  { "url",                                                                     \
    OPT_STRING,                                                                \
    NULL,                                                                      \
    offsetof(http_upstream_conf, url),                                         \
    "base URL of the service: http:// or https://, host, port and a base "     \
    "path",                                                                    \
    0,                                                                         \
    0,                                                                         \
    NULL,                                                                      \
    OPT_REQUIRED },                                                            \
      { "unix_socket",                                                         \
        OPT_STRING,                                                            \
        "",                                                                    \
        offsetof(http_upstream_conf, unix_socket),                             \
        "reach the service over this unix socket (the url still names the "    \
        "host)",                                                               \
        0,                                                                     \
        0,                                                                     \
        NULL,                                                                  \
        0 },                                                                   \
      { "ca_file",                                                             \
        OPT_STRING,                                                            \
        "",                                                                    \
        offsetof(http_upstream_conf, ca_file),                                 \
        "PEM file of the CAs to trust; empty = the system bundle",             \
        0,                                                                     \
        0,                                                                     \
        NULL,                                                                  \
        0 },                                                                   \
      { "client_cert",                                                         \
        OPT_STRING,                                                            \
        "",                                                                    \
        offsetof(http_upstream_conf, client_cert),                             \
        "PEM certificate tether presents (mutual TLS)",                        \
        0,                                                                     \
        0,                                                                     \
        NULL,                                                                  \
        0 },                                                                   \
      { "client_key",                                                          \
        OPT_STRING,                                                            \
        "",                                                                    \
        offsetof(http_upstream_conf, client_key),                              \
        "PEM key of client_cert",                                              \
        0,                                                                     \
        0,                                                                     \
        NULL,                                                                  \
        0 },                                                                   \
      { "tls_verify",                                                          \
        OPT_BOOL,                                                              \
        "true",                                                                \
        offsetof(http_upstream_conf, tls_verify),                              \
        "check the server's certificate and name; false is logged as a "       \
        "warning",                                                             \
        0,                                                                     \
        0,                                                                     \
        NULL,                                                                  \
        0 },                                                                   \
      { "max_connections",                                                     \
        OPT_INT,                                                               \
        "4",                                                                   \
        offsetof(http_upstream_conf, max_connections),                         \
        "connections kept open to the service, shared by its consumers",       \
        1,                                                                     \
        256,                                                                   \
        NULL,                                                                  \
        0 },                                                                   \
      { "max_streams",                                                         \
        OPT_INT,                                                               \
        "64",                                                                  \
        offsetof(http_upstream_conf, max_streams),                             \
        "long-lived streams (SSE, PocketBase realtime) open at once, each "   \
        "on a connection of its own outside max_connections",                  \
        1,                                                                     \
        4096,                                                                  \
        NULL,                                                                  \
        0 },                                                                   \
      { "connect_timeout",                                                     \
        OPT_DURATION,                                                          \
        "10s",                                                                 \
        offsetof(http_upstream_conf, connect_timeout),                         \
        "limit on name lookup, connect and TLS handshake",                     \
        10,                                                                    \
        600000,                                                                \
        NULL,                                                                  \
        0 },                                                                   \
      { "reconnect_min",                                                       \
        OPT_DURATION,                                                          \
        "250ms",                                                               \
        offsetof(http_upstream_conf, reconnect_min),                           \
        "shortest wait before reconnecting after a failure",                   \
        1,                                                                     \
        3600000,                                                               \
        NULL,                                                                  \
        0 },                                                                   \
      { "reconnect_max",                                                       \
        OPT_DURATION,                                                          \
        "30s",                                                                 \
        offsetof(http_upstream_conf, reconnect_max),                           \
        "longest wait before reconnecting, hints such as Retry-After "         \
        "included",                                                            \
        1,                                                                     \
        86400000,                                                              \
        NULL,                                                                  \
        0 },                                                                   \
      { "immediate_retries",                                                   \
        OPT_INT,                                                               \
        "3",                                                                   \
        offsetof(http_upstream_conf, immediate_retries),                       \
        "failures retried at once before the waits begin",                     \
        0,                                                                     \
        100,                                                                   \
        NULL,                                                                  \
        0 },                                                                   \
      { "proxy_from_env",                                                      \
        OPT_BOOL,                                                              \
        "true",                                                                \
        offsetof(http_upstream_conf, proxy_from_env),                          \
        "use HTTP_PROXY, HTTPS_PROXY and NO_PROXY from the environment",       \
        0,                                                                     \
        0,                                                                     \
        NULL,                                                                  \
        0 },                                                                   \
      { "response_timeout",                                                    \
        OPT_DURATION,                                                          \
        "30s",                                                                 \
        offsetof(http_upstream_conf, response_timeout),                        \
        "limit on the wait for each response's status and headers, streams "   \
        "and logins included; a longpoll may wait its request_timeout",        \
        10,                                                                    \
        3600000,                                                               \
        NULL,                                                                  \
        0 },                                                                   \
  {                                                                            \
    "redirect_headers", OPT_ENUM, "drop",                                      \
        offsetof(http_upstream_conf, redirect_headers),                        \
        "drop: a redirect to another origin leaves the header.NAME headers "   \
        "behind, as it does Authorization and Cookie; keep: they follow it",   \
        0, 0, upstream_redirect_choices, 0                                     \
  }

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
uv_loop_t *upstream_loop(const upstream *up);
/* The section's parsed options (the type's conf struct). */
const void *upstream_conf(const upstream *up);
/* The type's shared runtime from ext_open, or NULL. */
void *upstream_ext(const upstream *up);
const http_upstream_conf *upstream_http_conf(const upstream *up);
http_client *upstream_http(upstream *up);

/* The request headers of header.NAME keys (values expanded, never
 * logged). */
const http_header *upstream_headers(const upstream *up, size_t *n);

/* Appends those headers to headers[n..cap); returns the new count. */
size_t upstream_add_headers(const upstream *up, http_header *headers, size_t n,
                            size_t cap);

/* A reconnect backoff set up from the upstream's reconnect options. */
void upstream_backoff_init(const upstream *up, backoff *b);

/* The process-wide reconnect budget every source draws from. */
backoff_budget *upstream_budget(void);

#endif
