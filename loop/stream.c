/* One byte stream over TCP, unix sockets and TLS (see stream.h).
 *
 * Life of a stream: RESOLVING (TCP only) -> CONNECTING -> HANDSHAKING (TLS
 * only) -> OPEN, and `closing` once stream_close or a failed connect begins
 * the teardown. The struct is freed only when every handle's close callback
 * and the getaddrinfo callback have run (`pending` counts them), so a close
 * requested from inside any callback is always deferred: libuv never runs a
 * close callback while another callback is on the stack. Code that calls a
 * user callback therefore only has to check `closing` afterwards.
 *
 * TLS: mbedTLS talks to two in-memory BIOs. Ciphertext from the socket is
 * read straight into tls_in (capped at STREAM_TLS_IN_CAP) and handed to
 * mbedTLS by tls_recv; whatever mbedTLS sends is collected in tls_out and
 * flushed with one uv_write. Decrypted bytes are delivered through the same
 * read callback as plaintext.
 *
 * Backpressure: the socket is read only while someone wants the bytes (the
 * handshake, or a reader that has not called stream_read_stop) and, with
 * TLS, nothing is left undelivered in tls_in or in mbedTLS. Otherwise the
 * kernel's buffers fill and TCP flow control slows the peer.
 */
#include "loop/stream.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include <mbedtls/ssl.h>

/* Plaintext bytes read from the socket per read callback. */
#define STREAM_READ_CHUNK 65536
/* Ciphertext buffered between the socket and mbedTLS. It must hold more
 * than one full record (16 KiB of payload plus header, IV, MAC and
 * padding), and it is only refilled once mbedTLS has drained it. */
#define STREAM_TLS_IN_CAP (64 * 1024)
/* Decrypted bytes handed to the reader per call. */
#define STREAM_TLS_PLAIN_CHUNK 16384
/* Records decrypted and delivered per wake-up before yielding to the loop
 * (STYLE rule 9); the rest waits for the next turn. */
#define STREAM_DRAIN_BUDGET 64
/* Idle seconds before TCP keepalive probes start. */
#define STREAM_KEEPALIVE_DELAY 60

enum stream_state {
  STREAM_RESOLVING,
  STREAM_CONNECTING,
  STREAM_HANDSHAKING,
  STREAM_OPEN,
};

/* One uv_write: a caller's write (cb set) or a flush of TLS records that
 * mbedTLS produced by itself (cb NULL). */
typedef struct stream_write_req {
  uv_write_t req;
  stream *s;
  stream_write_cb cb;
  void *data;
  char *cipher; /* owned; the encrypted bytes of a TLS write, else NULL */
} stream_write_req;

struct stream {
  uv_loop_t *loop;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } io;
  uv_timer_t timer; /* the connect or handshake deadline */
  uv_timer_t pump;  /* delivers buffered TLS plaintext on the next turn */
  uv_getaddrinfo_t gai;
  uv_connect_t connect_req;

  enum stream_state state;
  unsigned pending;    /* handles and requests whose callbacks are due */
  bool io_open;        /* io is initialized and uv_close not yet called */
  bool gai_pending;    /* gai is in flight */
  bool socket_reading; /* uv_read_start is in effect on io */
  bool reading;        /* the caller wants bytes (read_start) */
  bool read_done;      /* TLS: read_final went to the reader */
  bool closing;        /* teardown has begun; no more callbacks but close */
  bool user_closed;    /* stream_close was called */

  /* Options, copied; owned and freed with the stream. */
  char *host;
  char *unix_path;
  char *tls_host; /* name checked against the certificate */
  uint16_t port;
  bool keepalive;
  uint64_t timeout_ms; /* of the running phase, for messages */

  struct addrinfo *addrs; /* owned; freed with uv_freeaddrinfo */
  struct addrinfo *next_addr;
  char addr[64]; /* the address of the current attempt, for messages */
  int last_err;

  stream_connect_cb connect_cb; /* NULL once it has run */
  void *connect_data;
  stream_read_cb read_cb;
  void *read_data;
  stream_close_cb close_cb;
  void *close_data;

  char *rbuf; /* plaintext read buffer, STREAM_READ_CHUNK; owned */

  /* TLS */
  tls_ctx *tls;   /* borrowed from the caller */
  bool tls_on;    /* ssl is set up */
  bool tls_up;    /* the handshake is done */
  int peer_eof;   /* 0, or UV_EOF / a read error seen but not delivered */
  int read_final; /* the last status delivered (UV_EOF or an error) */
  mbedtls_ssl_context ssl;
  char *tls_in; /* ciphertext from the socket, STREAM_TLS_IN_CAP; owned */
  size_t tls_in_off, tls_in_len;
  char *tls_out; /* ciphertext for the socket; owned, handed to writes */
  size_t tls_out_len, tls_out_cap;
  char *plain; /* decrypted chunk, STREAM_TLS_PLAIN_CHUNK; owned */
  char info[128];

  char err[256];
};

static void stream__begin_close(stream *s);
static int stream__sync_reading(stream *s);
static void stream__tls_handshake_step(stream *s);
static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf);
static void on_pump(uv_timer_t *t);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static char *stream__strdup(const char *src) {
  return src != NULL ? strdup(src) : NULL;
}

/* Sets the message stream_error returns; long names are cut. */
__attribute__((format(printf, 2, 3))) static void
stream__set_err(stream *s, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
}

/* "host:port", with brackets for an IPv6 literal, or "unix:path". */
static void stream__peer_name(const stream *s, char *out, size_t outlen) {
  if (s->unix_path != NULL)
    snprintf(out, outlen, "unix:%s", s->unix_path);
  else if (strchr(s->host, ':') != NULL)
    snprintf(out, outlen, "[%s]:%u", s->host, (unsigned)s->port);
  else
    snprintf(out, outlen, "%s:%u", s->host, (unsigned)s->port);
}

/* Frees everything once the last close or getaddrinfo callback has run. A
 * connect callback still owed (the caller closed before it came) runs here
 * with UV_ECANCELED, then the close callback. */
static void stream__maybe_finish(stream *s) {
  stream_connect_cb connect_cb = s->connect_cb;
  stream_close_cb close_cb = s->close_cb;
  void *close_data = s->close_data;

  if (s->pending > 0)
    return;
  if (connect_cb != NULL) {
    s->connect_cb = NULL;
    stream__set_err(s, "closed before the connection was up");
    connect_cb(s, UV_ECANCELED, s->err, s->connect_data);
  }
  if (s->addrs != NULL)
    uv_freeaddrinfo(s->addrs);
  if (s->tls_on)
    mbedtls_ssl_free(&s->ssl);
  free(s->tls_in);
  free(s->tls_out);
  free(s->plain);
  free(s->rbuf);
  free(s->host);
  free(s->unix_path);
  free(s->tls_host);
  free(s);
  if (close_cb != NULL)
    close_cb(close_data);
}

static void on_handle_closed(uv_handle_t *h) {
  stream *s = h->data;

  s->pending--;
  stream__maybe_finish(s);
}

/* Fails the connect (or start_tls): the teardown begins, then the callback
 * runs once with s->err. s stays valid during the callback and is freed
 * after it, so the caller must not close it. */
static void stream__fail_connect(stream *s, int status) {
  stream_connect_cb cb = s->connect_cb;

  s->connect_cb = NULL;
  stream__begin_close(s);
  if (cb != NULL)
    cb(s, status, s->err, s->connect_data);
}

static void stream__connected(stream *s) {
  stream_connect_cb cb = s->connect_cb;

  uv_timer_stop(&s->timer);
  s->state = STREAM_OPEN;
  s->err[0] = '\0';
  s->connect_cb = NULL;
  if (cb != NULL)
    cb(s, 0, NULL, s->connect_data);
  if (!s->closing)
    stream__sync_reading(s);
}

static void on_timeout(uv_timer_t *t) {
  stream *s = t->data;
  char peer[300];

  stream__peer_name(s, peer, sizeof peer);
  switch (s->state) {
  case STREAM_RESOLVING:
    stream__set_err(s, "resolving %s timed out after %llums", s->host,
                    (unsigned long long)s->timeout_ms);
    break;
  case STREAM_CONNECTING:
    stream__set_err(s, "connect to %s timed out after %llums", peer,
                    (unsigned long long)s->timeout_ms);
    break;
  default:
    stream__set_err(s, "TLS handshake with %s timed out after %llums",
                    s->tls_host, (unsigned long long)s->timeout_ms);
    break;
  }
  stream__fail_connect(s, STREAM_ETIMEDOUT);
}

/* ---- TLS ---------------------------------------------------------------- */

/* mbedTLS output: collected, then sent by stream__tls_flush. */
static int stream__tls_send(void *ctx, const unsigned char *buf, size_t len) {
  stream *s = ctx;
  size_t cap;
  char *p;

  if (len > SIZE_MAX / 2 - s->tls_out_len)
    return MBEDTLS_ERR_SSL_ALLOC_FAILED;
  if (s->tls_out_len + len > s->tls_out_cap) {
    cap = s->tls_out_cap ? s->tls_out_cap : 4096;
    while (cap < s->tls_out_len + len)
      cap *= 2;
    p = realloc(s->tls_out, cap);
    if (p == NULL)
      return MBEDTLS_ERR_SSL_ALLOC_FAILED;
    s->tls_out = p;
    s->tls_out_cap = cap;
  }
  memcpy(s->tls_out + s->tls_out_len, buf, len);
  s->tls_out_len += len;
  return (int)len;
}

/* mbedTLS input: whatever tls_in holds; WANT_READ when it is empty, also at
 * the end of the stream, so the caller decides what EOF means. */
static int stream__tls_recv(void *ctx, unsigned char *buf, size_t len) {
  stream *s = ctx;
  size_t n = s->tls_in_len - s->tls_in_off;

  if (n == 0)
    return MBEDTLS_ERR_SSL_WANT_READ;
  if (n > len)
    n = len;
  memcpy(buf, s->tls_in + s->tls_in_off, n);
  s->tls_in_off += n;
  return (int)n;
}

static void on_written(uv_write_t *req, int status);

/* Sends what mbedTLS has produced; the bytes move to the write request. */
static int stream__tls_flush(stream *s, stream_write_cb cb, void *data) {
  stream_write_req *w;
  uv_buf_t buf;
  int r;

  if (s->tls_out_len == 0 && cb == NULL)
    return 0;
  w = calloc(1, sizeof *w);
  if (w == NULL)
    return UV_ENOMEM;
  w->s = s;
  w->cb = cb;
  w->data = data;
  w->cipher = s->tls_out;
  buf = uv_buf_init(s->tls_out, (unsigned)s->tls_out_len);
  s->tls_out = NULL;
  s->tls_out_len = s->tls_out_cap = 0;
  r = uv_write(&w->req, &s->io.stream, &buf, 1, on_written);
  if (r < 0) {
    free(w->cipher);
    free(w);
  }
  return r;
}

static bool stream__tls_backlog(const stream *s) {
  return mbedtls_ssl_get_bytes_avail(&s->ssl) > 0 ||
         s->tls_in_len > s->tls_in_off;
}

/* Hands the reader its last status: UV_EOF, or an error with s->err. Like
 * libuv after an EOF, reading stops; a later read_start repeats the status
 * once instead of leaving the reader waiting forever. */
static void stream__read_final(stream *s, int status) {
  s->read_done = true;
  s->read_final = status;
  s->reading = false;
  s->read_cb(s, status, NULL, s->read_data);
}

/* The peer's end, after every complete record is delivered. A close without
 * close_notify is UV_EOF too: servers that end a close-delimited HTTP body
 * that way are common, and HTTP framing catches real truncation. */
static void stream__tls_peer_end(stream *s) {
  char peer[300];

  if (s->peer_eof != UV_EOF) {
    stream__peer_name(s, peer, sizeof peer);
    stream__set_err(s, "read from %s: %s", peer, uv_strerror(s->peer_eof));
    stream__read_final(s, s->peer_eof);
  } else if (s->ssl.in_left > 0) {
    /* mbedTLS has part of a record (in_left counts the bytes of the record
     * being fetched): the connection ended inside it. */
    stream__set_err(s, "TLS error: connection closed in the middle of a "
                       "record");
    stream__read_final(s, STREAM_ETLS);
  } else {
    stream__read_final(s, UV_EOF);
  }
}

/* Decrypts and delivers records while the reader wants them, up to
 * STREAM_DRAIN_BUDGET per call. */
static void stream__tls_drain(stream *s) {
  unsigned budget = STREAM_DRAIN_BUDGET;
  int r;

  while (!s->closing && s->reading && budget-- > 0) {
    if (s->read_done) {
      stream__read_final(s, s->read_final);
      break;
    }
    r = mbedtls_ssl_read(&s->ssl, (unsigned char *)s->plain,
                         STREAM_TLS_PLAIN_CHUNK);
    if (r > 0) {
      s->read_cb(s, r, s->plain, s->read_data);
      continue;
    }
    if (r == MBEDTLS_ERR_SSL_WANT_READ) {
      if (s->peer_eof != 0)
        stream__tls_peer_end(s);
      break;
    }
    if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY ||
        r == MBEDTLS_ERR_SSL_CONN_EOF) {
      stream__read_final(s, UV_EOF);
      break;
    }
    tls__describe(s->tls, &s->ssl, r, false, s->tls_host, s->err,
                  sizeof s->err);
    stream__read_final(s, STREAM_ETLS);
    break;
  }
  if (!s->closing && stream__tls_flush(s, NULL, NULL) < 0)
    s->tls_out_len = 0; /* the socket is gone; the read side will say so */
}

static void stream__tls_handshake_step(stream *s) {
  int r = mbedtls_ssl_handshake(&s->ssl);
  int fr;
  const char *alpn;

  fr = stream__tls_flush(s, NULL, NULL);
  if (r == 0) {
    s->tls_up = true;
    alpn = mbedtls_ssl_get_alpn_protocol(&s->ssl);
    snprintf(s->info, sizeof s->info, "%s %s%s%s",
             mbedtls_ssl_get_version(&s->ssl),
             mbedtls_ssl_get_ciphersuite(&s->ssl), alpn ? " alpn=" : "",
             alpn ? alpn : "");
    stream__connected(s);
    return;
  }
  if (r == MBEDTLS_ERR_SSL_WANT_READ && fr < 0) {
    stream__set_err(s, "handshake failed: write: %s", uv_strerror(fr));
    stream__fail_connect(s, STREAM_ETLS);
    return;
  }
  if (r == MBEDTLS_ERR_SSL_WANT_READ && s->peer_eof == 0)
    return;
  if (r == MBEDTLS_ERR_SSL_WANT_READ && s->peer_eof != UV_EOF) {
    stream__set_err(s, "handshake failed: %s", uv_strerror(s->peer_eof));
    stream__fail_connect(s, STREAM_ETLS);
    return;
  }
  if (r == MBEDTLS_ERR_SSL_WANT_READ)
    r = MBEDTLS_ERR_SSL_CONN_EOF;
  tls__describe(s->tls, &s->ssl, r, true, s->tls_host, s->err, sizeof s->err);
  stream__fail_connect(s, STREAM_ETLS);
}

/* Sets up TLS on a connected socket; the first handshake step (the
 * ClientHello) runs from the pump on the next loop turn, so stream_start_tls
 * never calls back re-entrantly. Leaves s as it was on failure. */
static int stream__tls_begin(stream *s) {
  int r;

  if (s->tls_in == NULL)
    s->tls_in = malloc(STREAM_TLS_IN_CAP);
  if (s->plain == NULL)
    s->plain = malloc(STREAM_TLS_PLAIN_CHUNK);
  if (s->tls_in == NULL || s->plain == NULL) {
    stream__set_err(s, "out of memory");
    return UV_ENOMEM;
  }
  mbedtls_ssl_init(&s->ssl);
  r = tls__session_init(s->tls, &s->ssl, s->tls_host, s->err, sizeof s->err);
  if (r < 0) {
    mbedtls_ssl_free(&s->ssl);
    return r;
  }
  mbedtls_ssl_set_bio(&s->ssl, s, stream__tls_send, stream__tls_recv, NULL);
  s->tls_on = true;
  s->tls_in_off = s->tls_in_len = 0;
  s->state = STREAM_HANDSHAKING;
  return uv_timer_start(&s->pump, on_pump, 0, 0);
}

/* ---- reading ------------------------------------------------------------ */

/* Puts the socket and the pump in the state the stream needs now. */
static int stream__sync_reading(stream *s) {
  bool want_socket = false, want_pump = false;
  int r = 0;

  if (s->closing)
    return 0;
  if (s->state == STREAM_HANDSHAKING) {
    want_socket = s->peer_eof == 0;
  } else if (s->state == STREAM_OPEN && s->reading) {
    if (!s->tls_on)
      want_socket = true;
    else if (s->read_done || stream__tls_backlog(s) || s->peer_eof != 0)
      want_pump = true;
    else
      want_socket = true;
  }
  if (want_socket && !s->socket_reading) {
    r = uv_read_start(&s->io.stream, on_alloc, on_read);
    s->socket_reading = r == 0;
  } else if (!want_socket && s->socket_reading) {
    uv_read_stop(&s->io.stream);
    s->socket_reading = false;
  }
  if (want_pump)
    uv_timer_start(&s->pump, on_pump, 0, 0);
  else if (s->state == STREAM_OPEN)
    uv_timer_stop(&s->pump);
  return r;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  stream *s = h->data;
  size_t left;

  (void)suggested;
  if (s->tls_on) {
    /* Compact, then offer the free tail; a full buffer gives UV_ENOBUFS,
     * which on_read takes as "stop reading until drained". */
    left = s->tls_in_len - s->tls_in_off;
    if (s->tls_in_off > 0) {
      memmove(s->tls_in, s->tls_in + s->tls_in_off, left);
      s->tls_in_off = 0;
      s->tls_in_len = left;
    }
    *buf = uv_buf_init(s->tls_in + s->tls_in_len,
                       (unsigned)(STREAM_TLS_IN_CAP - s->tls_in_len));
    return;
  }
  if (s->rbuf == NULL)
    s->rbuf = malloc(STREAM_READ_CHUNK);
  *buf = uv_buf_init(s->rbuf, s->rbuf != NULL ? STREAM_READ_CHUNK : 0);
}

static void on_read_tls(stream *s, ssize_t nread) {
  if (nread > 0) {
    s->tls_in_len += (size_t)nread;
  } else if (nread == UV_ENOBUFS) {
    uv_read_stop(&s->io.stream);
    s->socket_reading = false;
  } else if (nread < 0) {
    uv_read_stop(&s->io.stream);
    s->socket_reading = false;
    s->peer_eof = (int)nread;
  }
  if (s->state == STREAM_HANDSHAKING)
    stream__tls_handshake_step(s);
  else if (s->reading)
    stream__tls_drain(s);
  stream__sync_reading(s);
}

static void on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  stream *s = h->data;
  char peer[300];

  (void)buf;
  if (s->closing || nread == 0)
    return;
  if (s->tls_on) {
    on_read_tls(s, nread);
    return;
  }
  if (nread > 0) {
    s->read_cb(s, nread, s->rbuf, s->read_data);
    return;
  }
  /* libuv has stopped reading after an EOF or an error already. */
  uv_read_stop(&s->io.stream);
  s->socket_reading = false;
  s->reading = false;
  if (nread == UV_ENOBUFS)
    nread = UV_ENOMEM;
  if (nread != UV_EOF) {
    stream__peer_name(s, peer, sizeof peer);
    stream__set_err(s, "read from %s: %s", peer, uv_strerror((int)nread));
  }
  s->read_cb(s, nread, NULL, s->read_data);
}

/* Next-turn work: the first handshake step after stream_start_tls, or
 * delivery of plaintext buffered while the reader was stopped. */
static void on_pump(uv_timer_t *t) {
  stream *s = t->data;

  if (s->closing)
    return;
  if (s->state == STREAM_HANDSHAKING) {
    stream__tls_handshake_step(s);
    if (!s->closing)
      stream__sync_reading(s);
    return;
  }
  if (s->tls_on && s->reading)
    stream__tls_drain(s);
  stream__sync_reading(s);
}

/* ---- connecting --------------------------------------------------------- */

/* After TCP or the unix socket connects: TLS or done. */
static void stream__transport_up(stream *s) {
  int r;

  if (s->unix_path == NULL) {
    /* Best effort: a socket without them still works. */
    (void)uv_tcp_nodelay(&s->io.tcp, 1);
    if (s->keepalive)
      (void)uv_tcp_keepalive(&s->io.tcp, 1, STREAM_KEEPALIVE_DELAY);
  }
  if (s->addrs != NULL) {
    uv_freeaddrinfo(s->addrs);
    s->addrs = s->next_addr = NULL;
  }
  if (s->tls == NULL) {
    stream__connected(s);
    return;
  }
  r = stream__tls_begin(s);
  if (r < 0)
    stream__fail_connect(s, r);
}

static void stream__try_next(stream *s);

static void on_attempt_closed(uv_handle_t *h) {
  stream *s = h->data;

  s->pending--;
  if (s->closing)
    stream__maybe_finish(s);
  else
    stream__try_next(s);
}

static void on_connect(uv_connect_t *req, int status) {
  stream *s = req->data;
  char peer[300];

  if (s->closing)
    return; /* UV_ECANCELED from the teardown */
  if (status == 0) {
    stream__transport_up(s);
    return;
  }
  stream__peer_name(s, peer, sizeof peer);
  s->last_err = status;
  if (s->addr[0] != '\0' && strcmp(s->addr, s->host) != 0)
    stream__set_err(s, "connect to %s (%s): %s", peer, s->addr,
                    uv_strerror(status));
  else
    stream__set_err(s, "connect to %s: %s", peer, uv_strerror(status));
  if (s->unix_path != NULL) {
    stream__fail_connect(s, status);
    return;
  }
  /* A handle whose connect failed cannot be reused for another address
   * (it may be the wrong family), so close it and try the next one from
   * the close callback. */
  s->io_open = false;
  uv_close(&s->io.handle, on_attempt_closed);
}

/* Connects to the next resolved address, in the resolver's order. */
static void stream__try_next(stream *s) {
  struct addrinfo *ai = s->next_addr;
  const void *src;
  int r;

  while (ai != NULL && ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
    ai = ai->ai_next;
  if (ai == NULL) {
    if (s->last_err == 0) {
      s->last_err = UV_EAI_ADDRFAMILY;
      stream__set_err(s, "cannot resolve %s: %s", s->host,
                      "no IPv4 or IPv6 address");
    }
    stream__fail_connect(s, s->last_err == UV_EAI_ADDRFAMILY ? STREAM_EDNS
                                                             : s->last_err);
    return;
  }
  s->next_addr = ai->ai_next;
  if (ai->ai_family == AF_INET)
    src = &((const struct sockaddr_in *)ai->ai_addr)->sin_addr;
  else
    src = &((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
  if (uv_inet_ntop(ai->ai_family, src, s->addr, sizeof s->addr) != 0)
    s->addr[0] = '\0';

  r = uv_tcp_init(s->loop, &s->io.tcp);
  if (r < 0) {
    stream__set_err(s, "socket: %s", uv_strerror(r));
    stream__fail_connect(s, r);
    return;
  }
  s->io.handle.data = s;
  s->io_open = true;
  s->pending++;
  s->connect_req.data = s;
  r = uv_tcp_connect(&s->connect_req, &s->io.tcp, ai->ai_addr, on_connect);
  if (r < 0)
    on_connect(&s->connect_req, r);
}

static void on_resolved(uv_getaddrinfo_t *req, int status,
                        struct addrinfo *res) {
  stream *s = req->data;

  s->gai_pending = false;
  s->pending--;
  if (s->closing) {
    if (res != NULL)
      uv_freeaddrinfo(res);
    stream__maybe_finish(s);
    return;
  }
  if (status < 0) {
    stream__set_err(s, "cannot resolve %s: %s", s->host, uv_strerror(status));
    stream__fail_connect(s, STREAM_EDNS);
    return;
  }
  s->addrs = s->next_addr = res;
  s->state = STREAM_CONNECTING;
  stream__try_next(s);
}

/* Starts the teardown: close_notify (best effort), then every handle. */
static void stream__begin_close(stream *s) {
  uv_buf_t buf;

  assert(!s->closing);
  s->closing = true;
  if (s->tls_up && s->io_open) {
    /* uv_close cancels queued writes, so the alert goes out with
     * uv_try_write or not at all (it fails when writes are queued). */
    if (mbedtls_ssl_close_notify(&s->ssl) == 0 && s->tls_out_len > 0) {
      buf = uv_buf_init(s->tls_out, (unsigned)s->tls_out_len);
      (void)uv_try_write(&s->io.stream, &buf, 1);
    }
    s->tls_out_len = 0;
  }
  if (s->gai_pending)
    (void)uv_cancel((uv_req_t *)&s->gai); /* on_resolved runs either way */
  if (s->io_open) {
    s->io_open = false;
    s->socket_reading = false;
    uv_close(&s->io.handle, on_handle_closed);
  }
  uv_close((uv_handle_t *)&s->timer, on_handle_closed);
  uv_close((uv_handle_t *)&s->pump, on_handle_closed);
}

int stream_connect(uv_loop_t *loop, const stream_opts *opts,
                   stream_connect_cb cb, void *data, stream **out) {
  struct addrinfo hints;
  char port[8];
  stream *s;
  int r;

  if (loop == NULL || opts == NULL || cb == NULL || out == NULL)
    return UV_EINVAL;
  if (opts->unix_path == NULL &&
      (opts->host == NULL || opts->host[0] == '\0' || opts->port == 0))
    return UV_EINVAL;
  if (opts->unix_path != NULL && opts->unix_path[0] == '\0')
    return UV_EINVAL;

  s = calloc(1, sizeof *s);
  if (s == NULL)
    return UV_ENOMEM;
  s->loop = loop;
  s->port = opts->port;
  s->keepalive = opts->keepalive;
  s->tls = opts->tls;
  s->connect_cb = cb;
  s->connect_data = data;
  s->host = stream__strdup(opts->host != NULL ? opts->host : "localhost");
  s->unix_path = stream__strdup(opts->unix_path);
  s->tls_host = stream__strdup(opts->tls_host ? opts->tls_host : s->host);
  if (s->host == NULL || s->tls_host == NULL ||
      (opts->unix_path != NULL && s->unix_path == NULL)) {
    r = UV_ENOMEM;
    goto fail_strings;
  }

  /* Timers cannot fail to initialize; from here on s is freed only by the
   * close callbacks. */
  uv_timer_init(loop, &s->timer);
  uv_timer_init(loop, &s->pump);
  s->timer.data = s->pump.data = s;
  s->pending = 2;

  if (s->unix_path != NULL) {
    r = uv_pipe_init(loop, &s->io.pipe, 0);
    if (r < 0)
      goto fail_handles;
    s->io.handle.data = s;
    s->io_open = true;
    s->pending++;
    s->state = STREAM_CONNECTING;
    s->connect_req.data = s;
    uv_pipe_connect(&s->connect_req, &s->io.pipe, s->unix_path, on_connect);
  } else {
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(port, sizeof port, "%u", (unsigned)s->port);
    s->state = STREAM_RESOLVING;
    s->gai.data = s;
    r = uv_getaddrinfo(loop, &s->gai, on_resolved, s->host, port, &hints);
    if (r < 0)
      goto fail_handles;
    s->gai_pending = true;
    s->pending++;
  }
  if (opts->connect_timeout > 0) {
    s->timeout_ms = opts->connect_timeout;
    uv_timer_start(&s->timer, on_timeout, opts->connect_timeout, 0);
  }
  *out = s;
  return 0;

fail_handles:
  /* The close callbacks free s; no callback of the caller's runs. */
  s->connect_cb = NULL;
  stream__begin_close(s);
  return r;

fail_strings:
  free(s->host);
  free(s->unix_path);
  free(s->tls_host);
  free(s);
  return r;
}

int stream_start_tls(stream *s, tls_ctx *tls, const char *host,
                     uint64_t timeout, stream_connect_cb cb, void *data) {
  char *name;
  int r;

  if (s == NULL || tls == NULL || cb == NULL)
    return UV_EINVAL;
  assert(!s->closing);
  if (s->state != STREAM_OPEN || s->tls_on)
    return UV_EINVAL;
  name = stream__strdup(host != NULL ? host : s->host);
  if (name == NULL)
    return UV_ENOMEM;
  free(s->tls_host);
  s->tls_host = name;
  s->tls = tls;
  r = stream__tls_begin(s);
  if (r < 0) {
    s->tls = NULL;
    return r;
  }
  s->connect_cb = cb;
  s->connect_data = data;
  if (timeout > 0) {
    s->timeout_ms = timeout;
    uv_timer_start(&s->timer, on_timeout, timeout, 0);
  }
  return 0;
}

/* ---- the rest of the interface ----------------------------------------- */

int stream_read_start(stream *s, stream_read_cb cb, void *data) {
  if (s == NULL || cb == NULL)
    return UV_EINVAL;
  assert(!s->closing);
  if (s->state != STREAM_OPEN && s->state != STREAM_HANDSHAKING)
    return UV_ENOTCONN;
  s->read_cb = cb;
  s->read_data = data;
  s->reading = true;
  return stream__sync_reading(s);
}

int stream_read_stop(stream *s) {
  if (s == NULL)
    return UV_EINVAL;
  assert(!s->closing);
  s->reading = false;
  return stream__sync_reading(s);
}

static void on_written(uv_write_t *req, int status) {
  stream_write_req *w = (stream_write_req *)req;
  stream *s = w->s;
  char peer[300];

  if (s->closing) {
    status = UV_ECANCELED;
  } else if (status < 0) {
    stream__peer_name(s, peer, sizeof peer);
    stream__set_err(s, "write to %s: %s", peer, uv_strerror(status));
    if (s->state == STREAM_HANDSHAKING && w->cb == NULL) {
      stream__set_err(s, "handshake failed: write: %s", uv_strerror(status));
      stream__fail_connect(s, STREAM_ETLS);
    }
  }
  if (w->cb != NULL)
    w->cb(s, status, w->data);
  free(w->cipher);
  free(w);
}

int stream_write(stream *s, const uv_buf_t *bufs, unsigned n,
                 stream_write_cb cb, void *data) {
  stream_write_req *w;
  size_t off;
  unsigned i;
  int r;

  if (s == NULL || (bufs == NULL && n > 0))
    return UV_EINVAL;
  assert(!s->closing);
  if (s->state != STREAM_OPEN)
    return UV_ENOTCONN;

  if (s->tls_on) {
    for (i = 0; i < n; i++) {
      for (off = 0; off < bufs[i].len; off += (size_t)r) {
        r = mbedtls_ssl_write(&s->ssl,
                              (const unsigned char *)bufs[i].base + off,
                              bufs[i].len - off);
        if (r < 0) {
          s->tls_out_len = 0;
          tls__describe(s->tls, &s->ssl, r, false, s->tls_host, s->err,
                        sizeof s->err);
          return STREAM_ETLS;
        }
      }
    }
    return stream__tls_flush(s, cb, data);
  }

  w = calloc(1, sizeof *w);
  if (w == NULL)
    return UV_ENOMEM;
  w->s = s;
  w->cb = cb;
  w->data = data;
  r = uv_write(&w->req, &s->io.stream, bufs, n, on_written);
  if (r < 0)
    free(w);
  return r;
}

void stream_close(stream *s, stream_close_cb cb, void *data) {
  if (s == NULL)
    return;
  /* A second close, or a close of a stream whose connect failed, is a bug
   * in the caller. */
  assert(!s->closing && !s->user_closed);
  if (s->closing)
    return;
  s->user_closed = true;
  s->close_cb = cb;
  s->close_data = data;
  stream__begin_close(s);
}

bool stream_input_waiting(const stream *s) {
  uv_os_fd_t fd;
  int n = 0;

  if (s == NULL || s->closing || !s->io_open)
    return false;
  /* Under TLS, the plaintext mbedTLS holds and the ciphertext read but not
   * yet decrypted both wait for the pump (a partial record never stays in
   * tls_in: the drain moves it into mbedTLS). */
  if (s->tls_on && stream__tls_backlog(s))
    return true;
  if (uv_fileno(&s->io.handle, &fd) != 0)
    return false;
  return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

const char *stream_error(const stream *s) {
  return s != NULL ? s->err : "";
}

bool stream_is_tls(const stream *s) {
  return s != NULL && s->tls_up;
}

const char *stream_tls_info(const stream *s) {
  return s != NULL ? s->info : "";
}
