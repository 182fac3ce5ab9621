/* An HTTP/1.1 client on llhttp, over loop/stream (TCP, unix or TLS).
 *
 * One http_client per [upstream]: it keeps a pool of keep-alive connections
 * per origin (at most max_connections each; further requests wait), the TLS
 * settings and the limits. A request either buffers its whole body (polls,
 * capped by max_body) or streams it to on_body as it arrives (SSE, NDJSON),
 * where backpressure is http_req_pause / http_req_resume.
 *
 * The control lane. A request marked long_lived (a subscribe stream that
 * may stay open for hours) never takes a pool slot: it gets a connection of
 * its own at once, outside max_connections, and that connection closes with
 * it. So the pool stays free for the short requests (polls, acks, lease
 * extensions, logins, pushes), which never wait behind streams, and a
 * stream never waits behind them either. Streams have a cap of their own,
 * max_streams per origin; one past it ends at once with HTTP_ESTREAMS.
 *
 * Bodies may be delimited by Content-Length, chunked encoding or the close
 * of the connection (nchan): the end of a close-delimited body is a success.
 * Redirects (301, 302, 303, 307, 308) are followed up to max_redirects, never
 * from https to http; a redirect to another origin drops the request's
 * Authorization and Cookie and the client's origin_headers. HTTP_PROXY,
 * HTTPS_PROXY and NO_PROXY are honoured when use_env_proxy is set: plain http
 * goes through the proxy with an absolute URL, https through a CONNECT tunnel.
 *
 * Timers: connect_timeout, then response_timeout until the whole head is in
 * (every request, streams included), then idle_timeout between the bytes of
 * a streaming body; timeout bounds the whole request. A head or idle timer
 * that comes due while bytes wait unread on the connection (the loop was
 * held up: a stopped process, a paused VM) starts over instead of failing,
 * so those bytes are read before the peer is called silent.
 */
#ifndef TETHER_LOOP_HTTP_CLIENT_H
#define TETHER_LOOP_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "loop/stream.h"
#include "loop/tls.h"
#include "protocol/http.h" /* http_header */

/* Named errors, beside UV_E* and STREAM_E*; http_strerror gives the name. */
#define HTTP_EURL        (-32001) /* the URL does not parse or is not http(s) */
#define HTTP_EPARSE      (-32002) /* the response is not valid HTTP/1.x */
#define HTTP_ESTATUSLINE (-32003) /* status line over max_status_line */
#define HTTP_EHEADERS    (-32004) /* headers over max_header_size/count */
#define HTTP_EBODY       (-32005) /* buffered body over max_body */
#define HTTP_EREDIRECTS  (-32006) /* more redirects than max_redirects */
#define HTTP_EDOWNGRADE  (-32007) /* a redirect from https to http */
#define HTTP_EPROXY      (-32008) /* the proxy refused the CONNECT */
#define HTTP_ECLOSED     (-32009) /* closed before a complete response */
#define HTTP_ETIMEOUT    (-32010) /* a timeout; the message names which one */
#define HTTP_EABORTED    (-32011) /* a callback asked to stop */
#define HTTP_EDEADLINE   (-32012) /* the request's own timeout ran out */
#define HTTP_ESTREAMS    (-32013) /* a long-lived request over max_streams */

typedef struct http_client http_client;
typedef struct http_req http_req;

typedef struct http_client_opts {
  tls_ctx *tls;               /* for https; borrowed; NULL = no https */
  unsigned max_connections;   /* pooled, per origin; 0 = 4 */
  unsigned max_streams;       /* long-lived requests open at once, per
                                 origin, beside the pool; 0 = 64 */
  uint64_t connect_timeout;   /* ms: DNS, connect and TLS handshake */
  uint64_t response_timeout;  /* ms from a request put on a connection to
                                 its whole response head; 0 = none */
  uint64_t pool_idle_timeout; /* ms a kept-alive connection may idle */
  size_t max_status_line;     /* bytes; 0 = 8 KiB */
  size_t max_header_size;     /* bytes of all header lines; 0 = 64 KiB */
  size_t max_headers;         /* count; 0 = 100 */
  size_t max_body;            /* bytes of a buffered body; 0 = 16 MiB */
  const char *unix_path;      /* speak HTTP over this unix socket, whatever the
                                 URL's host (which still goes in Host:) */
  bool use_env_proxy;         /* honour HTTP(S)_PROXY and NO_PROXY */
  /* Names of request headers meant for the origin a request was made to
   * (an upstream's configured credentials), beside Authorization and
   * Cookie: a redirect to another origin drops them, unless
   * keep_origin_headers. Copied. */
  const char *const *origin_headers;
  size_t n_origin_headers;
  bool keep_origin_headers;
} http_client_opts;

typedef struct http_response {
  int status;
  const http_header *headers; /* as received, in order */
  size_t n_headers;
  const char *url;  /* the URL that answered, after redirects */
  const char *body; /* the whole body, buffered requests only */
  size_t body_len;
} http_response;

typedef struct http_request {
  const char *method;         /* "GET" */
  const char *url;            /* absolute http:// or https:// URL */
  const http_header *headers; /* extra request headers */
  size_t n_headers;
  const char *body; /* request body, or NULL */
  size_t body_len;
  bool streaming; /* body to on_body as it arrives, no cap */
  /* A subscribe stream: a connection of its own, outside max_connections,
   * closed when the request ends (see the control lane above). Meant for
   * requests that stay open indefinitely; a short request is better
   * served by the pool, which keeps its connections alive. */
  bool long_lived;
  uint64_t timeout;          /* ms for the whole request; 0 = none */
  uint64_t response_timeout; /* ms for the head; 0 = the client's */
  uint64_t idle_timeout;  /* ms without a byte in a streaming body; 0 = none */
  unsigned max_redirects; /* 0 = do not follow */
  size_t max_body; /* bytes of a buffered body; 0 = the client's max_body */
} http_request;

typedef struct http_callbacks {
  /* Status and headers are in (after redirects). Return 0 to take the
   * body, or a negative code to abort: on_done follows with it. May be
   * NULL. */
  int (*on_head)(http_req *r, const http_response *resp, void *data);
  /* Streaming requests: body bytes, borrowed for the call. Return 0, or a
   * negative code to abort. */
  int (*on_body)(http_req *r, const char *bytes, size_t n, void *data);
  /* Exactly once. status 0: the response is complete (resp has the body of
   * a buffered request). Otherwise an error code with msg in words (msg is
   * NULL on success); resp is NULL when no head arrived. Everything is
   * borrowed for the call; r is freed when it returns. */
  void (*on_done)(http_req *r, int status, const http_response *resp,
                  const char *msg, void *data);
} http_callbacks;

/* o is copied. Returns 0, or a negative code with the reason in err. */
int http_client_create(uv_loop_t *loop, const http_client_opts *o,
                       http_client **out, char *err, size_t errlen);

/* Closes the pooled connections; every request must have finished or been
 * cancelled (on_done of a cancelled one still runs). cb runs when the last
 * handle closed, after which the client is freed. */
void http_client_close(http_client *c, void (*cb)(void *data), void *data);

/* Starts req (copied). Returns 0 (cbs->on_done will run, never from inside
 * this call), or a negative code (it will not run). */
int http_request_start(http_client *c, const http_request *req,
                       const http_callbacks *cbs, void *data, http_req **out);

/* Ends the request; on_done follows with UV_ECANCELED, on a later turn of
 * the loop. A no-op once on_done has run. */
void http_req_cancel(http_req *r);

/* Stops reading the connection (and the idle timer) until resume. */
void http_req_pause(http_req *r);
void http_req_resume(http_req *r);

/* The first header named name (compared without case), or NULL. */
const char *http_response_header(const http_response *resp, const char *name);

/* A name for an HTTP_E* code ("status_line_too_long", ...), or uv_err_name
 * for others. */
const char *http_strerror(int code);

#endif
