/* An HTTP/1.1 server on llhttp (request mode) for tether's local API.
 *
 * It listens on a unix socket (the API) and optionally on a TCP address
 * (probes and metrics). Requests on one connection are handled one at a
 * time, in order (pipelining is answered in order); the next request is not
 * read until the current one's response has ended. A response is either
 * whole (Content-Length) or a stream (chunked) that stays open until the
 * handler ends it or the client goes away: subscriptions use that.
 *
 * Limits, each breach answered (400, 413, 431, 503) or cut with a named
 * reason, never a crash: connections, counted per listener so that one
 * listener's clients cannot lock the other's out (when a listener's budget
 * is full, a new connection closes that listener's longest-idle kept-alive
 * connection, or is answered 503 and closed when none is idle), header
 * bytes, body bytes, and the time a started request may take to arrive
 * whole (slow clients) or a connection may wait for a request.
 *
 * (Added) The other answers the server gives by itself, each closing the
 * connection, with the body {"error":{"code":"...","message":"..."}}: 408
 * request_timeout, 417 expectation_failed (an Expect other than
 * 100-continue, which is honoured), 501 not_implemented (CONNECT, a
 * Transfer-Encoding other than chunked), 505 http_version_not_supported.
 * A response or stream that makes no write progress for write_timeout (the
 * client stopped reading) is cut too. The process must ignore SIGPIPE.
 */
#ifndef TETHER_LOOP_HTTP_SERVER_H
#define TETHER_LOOP_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "protocol/http.h" /* http_header */

typedef struct http_server http_server;
typedef struct http_conn http_conn;

typedef struct http_server_opts {
  const char *unix_path; /* the API socket; NULL = none */
  unsigned unix_mode;    /* permission bits of the socket file, e.g. 0600 */
  gid_t unix_gid;        /* group of the socket file; (gid_t)-1 = unchanged */
  const char *tcp_host;  /* "127.0.0.1"; NULL = no TCP listener */
  uint16_t tcp_port;     /* 0 = any free port (see http_server_tcp_port) */
  unsigned max_connections;     /* open at once on the unix socket; 0 = 256 */
  unsigned tcp_max_connections; /* on the TCP listener, apart; 0 = 16 */
  size_t
      max_header_size; /* bytes of the request line and headers; 0 = 16 KiB */
  size_t max_body;     /* bytes; 0 = 1 MiB */
  uint64_t
      request_timeout; /* ms for a started request to arrive whole; 0 = 10 s */
  /* ms a connection may wait for the first byte of a request (a new one,
   * or one kept alive after a response); 0 = 5 s. */
  uint64_t idle_timeout;
  /* ms a response or stream may go without write progress; 0 = 60 s. */
  uint64_t write_timeout;
} http_server_opts;

/* One request, borrowed for the handler call (copy what you keep). */
typedef struct http_srv_request {
  const char *method; /* "GET" */
  const char *target; /* path and query as sent, e.g. "/v1/cursors?limit=5" */
  const http_header *headers;
  size_t n_headers;
  const char *body; /* NUL-terminated after body_len; "" when none */
  size_t body_len;
  bool tcp;  /* arrived on the TCP listener (not the unix socket) */
  pid_t pid; /* the peer's, from SO_PEERCRED on the unix socket; -1 on TCP */
  uid_t uid; /* likewise; (uid_t)-1 on TCP */
  gid_t gid;
} http_srv_request;

/* Called once per request. The handler must answer: with http_conn_respond
 * now or later, or with http_conn_stream_start and later writes. */
typedef void (*http_server_handler)(http_conn *c, const http_srv_request *req,
                                    void *data);

/* Listens as o says (strings are copied). A stale socket file at
 * unix_path (nothing listens) is replaced; any other file there is an
 * error. Returns 0 or a negative code with the reason in err. */
int http_server_start(uv_loop_t *loop, const http_server_opts *o,
                      http_server_handler handler, void *data,
                      http_server **out, char *err, size_t errlen);

/* The TCP port actually bound (after tcp_port = 0). */
uint16_t http_server_tcp_port(const http_server *s);

/* Stops listening, closes every connection (streams get their close
 * callbacks), removes the socket file; cb runs once all is closed and s is
 * freed. */
void http_server_close(http_server *s, void (*cb)(void *data), void *data);

/* A whole response: status, Content-Type, body (copied). Extra headers may
 * be NULL. Returns 0, or UV_EINVAL when the request was already answered.
 * The connection then reads its next request. */
int http_conn_respond(http_conn *c, int status, const char *content_type,
                      const http_header *extra, size_t n_extra,
                      const char *body, size_t len);
/* (Added) More cases of http_conn_respond and http_conn_stream_start:
 * UV_EINVAL also for a status outside 200..599, a body with 204 or 304, a
 * header name that is not a token, a value with control characters, or an
 * extra Content-Length, Transfer-Encoding or Connection (the server owns
 * framing); UV_ENOMEM; and UV_ECANCELED when the connection is already
 * closing (the client went away, http_conn_close, http_server_close): the
 * answer is dropped. Answers to HEAD requests carry no body. */

/* (Added) Answers with the API's error form,
 * {"error":{"code":code,"message":message}} as application/json (both
 * strings are JSON-escaped, borrowed for the call). Returns as
 * http_conn_respond. */
int http_conn_respond_error(http_conn *c, int status, const char *code,
                            const char *message);

/* Starts a streamed (chunked) response. */
int http_conn_stream_start(http_conn *c, int status, const char *content_type);

/* Queues len bytes (copied) as one chunk. Returns 0, or UV_ENOBUFS when
 * more than the stream's cap (1 MiB) waits unsent: the caller stops writing
 * until the drain callback. UV_ECANCELED once the client is gone. */
int http_conn_stream_write(http_conn *c, const char *data, size_t len);

/* Bytes queued and not yet sent on a stream. */
size_t http_conn_stream_queued(const http_conn *c);

/* Ends the stream (the last chunk); the connection reads its next request. */
void http_conn_stream_end(http_conn *c);

/* Callbacks of a streamed response: drain runs when everything queued has
 * been sent; closed runs once when the client goes away or the server
 * closes (after it, c must not be used). Either may be NULL.
 *
 * (Added) They may also be set while an answer is pending (a handler that
 * answers later): on_closed then tells that the connection closed first.
 * Both are cleared once the answer is complete (http_conn_respond,
 * http_conn_stream_end). A connection with no on_closed must not be used
 * after http_server_close. Neither runs inside a call of this API: drain
 * runs from a write's completion, closed from the last close callback. */
typedef struct http_stream_callbacks {
  void (*on_drain)(http_conn *c, void *data);
  void (*on_closed)(http_conn *c, void *data);
  void *data;
} http_stream_callbacks;

void http_conn_stream_callbacks(http_conn *c, const http_stream_callbacks *cbs);

/* Ends the connection at once (a stream's on_closed follows). */
void http_conn_close(http_conn *c);

#endif
