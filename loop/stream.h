/* One byte-stream interface over TCP, unix sockets and TLS (STYLE rule 11).
 *
 * The HTTP client never knows which transport it is on: it connects, reads
 * through one callback, writes, and closes. TLS runs inside the stream;
 * decrypted bytes arrive through the same read callback as plaintext.
 *
 *   stream_connect(loop, &opts, on_connect, ud, &s);
 *   on_connect(s, 0, NULL, ud)  -> stream_read_start(s, on_read, ud);
 *   on_read(s, n, bytes, ud)    n > 0 bytes, UV_EOF at the end, < 0 error
 *   stream_write(s, bufs, n, on_written, ud)
 *   stream_close(s, on_closed, ud)   after which s is freed
 *
 * Every callback runs on the loop thread and exactly once per request; after
 * stream_close, pending write callbacks run with UV_ECANCELED and no read
 * callback runs again.
 */
#ifndef TETHER_LOOP_STREAM_H
#define TETHER_LOOP_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "loop/tls.h"

/* Error codes of their own, beside libuv's UV_E*. */
#define STREAM_ETIMEDOUT UV_ETIMEDOUT /* connect or handshake took too long */
#define STREAM_ETLS      (-31001)     /* TLS failed; stream_error says why */
#define STREAM_EDNS      (-31002)     /* the name did not resolve */

typedef struct stream stream;

typedef struct stream_opts {
  const char *host; /* DNS name, IPv4 or IPv6 literal (no brackets) */
  uint16_t port;
  const char *unix_path;    /* when set, connect to this unix socket instead */
  tls_ctx *tls;             /* start TLS after connecting; NULL = plaintext */
  const char *tls_host;     /* name for SNI and verification; NULL = host */
  uint64_t connect_timeout; /* ms for DNS + connect + handshake; 0 = none */
  bool keepalive;           /* TCP keepalive (finds dead silent peers) */
} stream_opts;

/* status 0, or a negative code with msg saying why (borrowed for the call).
 * On failure the stream is already closed and freed. */
typedef void (*stream_connect_cb)(stream *s, int status, const char *msg,
                                  void *data);
/* nread > 0: bytes (borrowed for the call); UV_EOF: the peer finished;
 * other < 0: an error, stream_error(s) says why. */
typedef void (*stream_read_cb)(stream *s, ssize_t nread, const char *bytes,
                               void *data);
typedef void (*stream_write_cb)(stream *s, int status, void *data);
typedef void (*stream_close_cb)(void *data);

/* Resolves, connects and (with opts->tls) completes the TLS handshake, then
 * calls cb. opts and the strings in it are copied. Returns 0 (cb will run),
 * or an error (cb will not run, *out is untouched). */
int stream_connect(uv_loop_t *loop, const stream_opts *opts,
                   stream_connect_cb cb, void *data, stream **out);

/* Starts TLS on a connected plaintext stream (after an HTTP CONNECT through
 * a proxy); cb runs once the handshake is done. host names the peer for SNI
 * and verification. Returns 0 (cb will run, never inside this call) or an
 * error (cb will not run, s is unchanged). As with stream_connect, when cb
 * reports a failure s is already closed and freed. */
int stream_start_tls(stream *s, tls_ctx *tls, const char *host,
                     uint64_t timeout, stream_connect_cb cb, void *data);

/* Delivers incoming bytes to cb until stream_read_stop. Backpressure: a
 * stopped stream reads nothing from the socket. */
int stream_read_start(stream *s, stream_read_cb cb, void *data);
int stream_read_stop(stream *s);

/* Writes n buffers; they must stay valid until cb. With TLS the plaintext
 * is encrypted at once, so the caller's buffers are free when this returns,
 * but cb still marks the write done. Returns 0 (cb will run) or an error
 * (cb will not run). */
int stream_write(stream *s, const uv_buf_t *bufs, unsigned n,
                 stream_write_cb cb, void *data);

/* Closes (with TLS, after a best-effort close_notify) and frees s; cb runs
 * once every handle is closed, never inside this call. Safe from inside any
 * of s's callbacks. A connect or start_tls callback still due runs first,
 * with UV_ECANCELED. Not for a stream whose connect callback reported a
 * failure: that one is freed already. */
void stream_close(stream *s, stream_close_cb cb, void *data);

/* True when bytes have arrived that the reader has not had yet: unread in
 * the socket (FIONREAD) or, with TLS, received and not yet delivered. A
 * timer that decides the peer is silent asks this first: when the loop was
 * held up, due timers run before the socket is read. */
bool stream_input_waiting(const stream *s);

/* The reason for the last error, in words; "" when there was none. */
const char *stream_error(const stream *s);

/* True once TLS is up on s; the negotiated version and suite for logs. */
bool stream_is_tls(const stream *s);
const char *stream_tls_info(const stream *s);

#endif
