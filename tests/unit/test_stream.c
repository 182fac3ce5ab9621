/* loop/stream over TCP, unix sockets and TLS, against in-process libuv
 * servers and `openssl s_server` children. */
#include "loop/stream.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <mbedtls/ssl.h>
#include <mbedtls/x509.h>

#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- loop helpers ------------------------------------------------------- */

/* Every handle must be closed: the loop ends by itself and closes cleanly. */
#define FINISH_LOOP(loop)                                                      \
  do {                                                                         \
    RUN_UNTIL(loop, !uv_loop_alive(loop), 5000);                               \
    ASSERT_EQ(0, uv_loop_close(loop));                                         \
  } while (0)

/* ---- an in-process server ----------------------------------------------- */

enum srv_mode {
  SRV_ECHO,   /* writes back what it reads */
  SRV_SILENT, /* accepts and never reads or writes */
  SRV_SEND,   /* sends `payload` (or the big pattern), then shuts down */
};

#define SRV_MAX_CONNS 4
/* The big payload: a pattern of i % 251, in chunks that are a multiple of
 * 251 bytes so every chunk is the same. */
#define BIG_CHUNK (251 * 4096)

static char big_chunk[BIG_CHUNK];

/* Once per process, whichever test runs first. */
static void setup_once(void) {
  static bool done;
  size_t i;

  if (done)
    return;
  done = true;
  for (i = 0; i < BIG_CHUNK; i++)
    big_chunk[i] = (char)(i % 251);
  /* A peer that goes away mid-write must give EPIPE, not kill the test. */
  signal(SIGPIPE, SIG_IGN);
}

typedef struct srv srv;

typedef struct srv_conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  srv *server;
  bool open;
  char buf[65536];
  uv_shutdown_t shutdown;
} srv_conn;

typedef struct srv_write {
  uv_write_t req;
  srv *server;
  char *copy;
} srv_write;

struct srv {
  uv_loop_t *loop;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } listener;
  enum srv_mode mode;
  const char *payload; /* SRV_SEND: these bytes; NULL = big_chunks chunks */
  unsigned big_chunks;
  unsigned writes_done;
  unsigned accepted;
  srv_conn conns[SRV_MAX_CONNS];
  int port;
};

static void srv_on_conn_closed(uv_handle_t *h) {
  (void)h;
}

static void srv_close_conn(srv_conn *c) {
  if (c->open) {
    c->open = false;
    uv_close(&c->h.handle, srv_on_conn_closed);
  }
}

static void srv_on_written(uv_write_t *req, int status) {
  srv_write *w = (srv_write *)req;

  (void)status;
  w->server->writes_done++;
  free(w->copy);
  free(w);
}

static void srv_send(srv_conn *c, const char *bytes, size_t len, bool copy) {
  srv_write *w = calloc(1, sizeof *w);
  uv_buf_t b;

  w->server = c->server;
  if (copy) {
    w->copy = malloc(len);
    memcpy(w->copy, bytes, len);
    bytes = w->copy;
  }
  b = uv_buf_init((char *)bytes, (unsigned)len);
  if (uv_write(&w->req, &c->h.stream, &b, 1, srv_on_written) != 0) {
    free(w->copy);
    free(w);
  }
}

static void srv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  srv_conn *c = h->data;

  (void)suggested;
  *buf = uv_buf_init(c->buf, sizeof c->buf);
}

static void srv_on_read(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf) {
  srv_conn *c = h->data;

  if (nread > 0 && c->server->mode == SRV_ECHO)
    srv_send(c, buf->base, (size_t)nread, true);
  else if (nread < 0)
    srv_close_conn(c);
}

static void srv_on_shutdown(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status;
}

static void srv_on_connection(uv_stream_t *l, int status) {
  srv *sv = l->data;
  srv_conn *c;
  unsigned i;

  if (status < 0 || sv->accepted >= SRV_MAX_CONNS)
    return;
  c = &sv->conns[sv->accepted++];
  c->server = sv;
  if (l->type == UV_TCP)
    uv_tcp_init(sv->loop, &c->h.tcp);
  else
    uv_pipe_init(sv->loop, &c->h.pipe, 0);
  c->h.handle.data = c;
  c->open = true;
  if (uv_accept(l, &c->h.stream) != 0) {
    srv_close_conn(c);
    return;
  }
  if (sv->mode == SRV_SILENT)
    return;
  if (sv->mode == SRV_SEND) {
    if (sv->payload != NULL)
      srv_send(c, sv->payload, strlen(sv->payload), false);
    for (i = 0; sv->payload == NULL && i < sv->big_chunks; i++)
      srv_send(c, big_chunk, BIG_CHUNK, false);
    uv_shutdown(&c->shutdown, &c->h.stream, srv_on_shutdown);
  }
  uv_read_start(&c->h.stream, srv_alloc, srv_on_read);
}

/* Listens on host (an IPv4 or IPv6 literal), port 0; fills sv->port.
 * Returns 0 or the bind error. */
static int srv_start_tcp(srv *sv, uv_loop_t *loop, const char *host,
                         enum srv_mode mode) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  int r;

  setup_once();
  memset(sv, 0, sizeof *sv);
  sv->loop = loop;
  sv->mode = mode;
  if (strchr(host, ':') != NULL)
    r = uv_ip6_addr(host, 0, (struct sockaddr_in6 *)&ss);
  else
    r = uv_ip4_addr(host, 0, (struct sockaddr_in *)&ss);
  ASSERT_EQ(0, r);
  ASSERT_EQ(0, uv_tcp_init(loop, &sv->listener.tcp));
  sv->listener.handle.data = sv;
  r = uv_tcp_bind(&sv->listener.tcp, (struct sockaddr *)&ss, 0);
  if (r == 0)
    r = uv_listen(&sv->listener.stream, 16, srv_on_connection);
  if (r != 0) {
    uv_close(&sv->listener.handle, NULL);
    return r;
  }
  ASSERT_EQ(
      0, uv_tcp_getsockname(&sv->listener.tcp, (struct sockaddr *)&ss, &len));
  sv->port =
      ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                     : ((struct sockaddr_in *)&ss)->sin_port);
  return 0;
}

static void srv_start_unix(srv *sv, uv_loop_t *loop, const char *path,
                           enum srv_mode mode) {
  memset(sv, 0, sizeof *sv);
  sv->loop = loop;
  sv->mode = mode;
  ASSERT_EQ(0, uv_pipe_init(loop, &sv->listener.pipe, 0));
  sv->listener.handle.data = sv;
  ASSERT_EQ(0, uv_pipe_bind(&sv->listener.pipe, path));
  ASSERT_EQ(0, uv_listen(&sv->listener.stream, 16, srv_on_connection));
}

static void srv_stop(srv *sv) {
  unsigned i;

  for (i = 0; i < sv->accepted; i++)
    srv_close_conn(&sv->conns[i]);
  uv_close(&sv->listener.handle, NULL);
}

/* ---- a client that records everything ----------------------------------- */

typedef struct client {
  stream *s;
  int connects; /* connect callbacks */
  int connect_status;
  char connect_msg[256];
  int closes;
  int writes;
  int write_status;
  int reads;       /* read callbacks with bytes */
  size_t len;      /* bytes received */
  char data[4096]; /* the first bytes received */
  char *all;       /* when set, every byte received, up to all_cap */
  size_t all_cap;
  int end;         /* 0, or the final status (UV_EOF or an error) */
  int ends;        /* callbacks with a final status */
  bool pattern_ok; /* every byte matched i % 251 (big payloads) */
  bool check_pattern;
  bool stop_after_read;  /* read_stop in the first read callback */
  bool close_after_read; /* stream_close in the first read callback */
  int reads_after_close;
  bool closed;
  char error_at_end[256];
} client;

static void on_client_closed(void *data) {
  client *c = data;

  c->closes++;
}

static void on_client_read(stream *s, ssize_t n, const char *bytes,
                           void *data) {
  client *c = data;
  size_t i;

  if (c->closed)
    c->reads_after_close++;
  if (n < 0) {
    c->end = (int)n;
    c->ends++;
    snprintf(c->error_at_end, sizeof c->error_at_end, "%s", stream_error(s));
    return;
  }
  c->reads++;
  if (c->len < sizeof c->data)
    memcpy(c->data + c->len, bytes,
           (size_t)n < sizeof c->data - c->len ? (size_t)n
                                               : sizeof c->data - c->len);
  if (c->all != NULL && c->len < c->all_cap)
    memcpy(c->all + c->len, bytes,
           (size_t)n < c->all_cap - c->len ? (size_t)n : c->all_cap - c->len);
  if (c->check_pattern)
    for (i = 0; i < (size_t)n; i++)
      if ((unsigned char)bytes[i] != (c->len + i) % 251)
        c->pattern_ok = false;
  c->len += (size_t)n;
  if (c->stop_after_read) {
    c->stop_after_read = false;
    ASSERT_EQ(0, stream_read_stop(s));
  }
  if (c->close_after_read) {
    c->close_after_read = false;
    c->closed = true;
    stream_close(s, on_client_closed, c);
  }
}

static void on_client_connect(stream *s, int status, const char *msg,
                              void *data) {
  client *c = data;

  c->connects++;
  c->connect_status = status;
  snprintf(c->connect_msg, sizeof c->connect_msg, "%s", msg ? msg : "");
  if (status == 0)
    ASSERT_EQ(0, stream_read_start(s, on_client_read, c));
  else
    c->s = NULL; /* freed by the stream itself */
}

static void on_client_written(stream *s, int status, void *data) {
  client *c = data;

  (void)s;
  c->writes++;
  c->write_status = status;
}

static void client_connect(client *c, uv_loop_t *loop, const stream_opts *o) {
  setup_once();
  memset(c, 0, sizeof *c);
  c->pattern_ok = true;
  ASSERT_EQ(0, stream_connect(loop, o, on_client_connect, c, &c->s));
}

static void client_write(client *c, const char *text) {
  uv_buf_t b = uv_buf_init((char *)text, (unsigned)strlen(text));

  ASSERT_EQ(0, stream_write(c->s, &b, 1, on_client_written, c));
}

static void client_close(client *c) {
  c->closed = true;
  stream_close(c->s, on_client_closed, c);
}

/* A port that nothing listens on (bound, then released). */
static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM, 0), port;

  ASSERT(fd >= 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(0, bind(fd, (struct sockaddr *)&a, sizeof a));
  ASSERT_EQ(0, getsockname(fd, (struct sockaddr *)&a, &len));
  port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* ---- TCP ---------------------------------------------------------------- */

static void test_tcp_echo(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_ECHO));
  o.host = "127.0.0.1";
  o.port = (uint16_t)sv.port;
  o.connect_timeout = 5000;
  o.keepalive = true;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(0, c.connect_status);
  ASSERT(!stream_is_tls(c.s));
  ASSERT_STR_EQ("", stream_tls_info(c.s));
  client_write(&c, "hello, ");
  client_write(&c, "stream");
  RUN_UNTIL(&loop, c.len == 13 && c.writes == 2, 5000);
  ASSERT_MEM_EQ("hello, stream", 13, c.data, c.len);
  ASSERT_EQ(0, c.write_status);
  ASSERT_STR_EQ("", stream_error(c.s));
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.closes);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(0, c.ends);
}

static void test_tcp_peer_eof(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_SEND));
  sv.payload = "bye";
  o.host = "127.0.0.1";
  o.port = (uint16_t)sv.port;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.ends == 1, 5000);
  ASSERT_EQ(0, c.connect_status);
  ASSERT_MEM_EQ("bye", 3, c.data, c.len);
  ASSERT_EQ(UV_EOF, c.end);
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.closes);
  ASSERT_EQ(0, c.reads_after_close);
}

/* read_stop stops the socket: nothing arrives while stopped and the peer's
 * writes back up; read_start resumes and every byte arrives in order. */
static void test_tcp_backpressure(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };
  size_t len_at_stop;
  int reads_at_stop;

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_SEND));
  sv.big_chunks = 64; /* 64 MiB: more than the socket buffers hold */
  o.host = "127.0.0.1";
  o.port = (uint16_t)sv.port;
  client_connect(&c, &loop, &o);
  c.check_pattern = true;
  c.stop_after_read = true;
  RUN_UNTIL(&loop, c.reads == 1, 5000);
  len_at_stop = c.len;
  reads_at_stop = c.reads;
  RUN_FOR(&loop, 150);
  ASSERT_EQ(reads_at_stop, c.reads);
  ASSERT_UEQ(len_at_stop, c.len);
  ASSERT(sv.writes_done < sv.big_chunks);
  ASSERT_EQ(0, stream_read_start(c.s, on_client_read, &c));
  RUN_UNTIL(&loop, c.ends == 1, 10000);
  ASSERT_EQ(UV_EOF, c.end);
  ASSERT_UEQ((size_t)64 * BIG_CHUNK, c.len);
  ASSERT(c.pattern_ok);
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A write the peer never reads is pending at close: its callback gets
 * UV_ECANCELED, and the close callback still runs once. */
static void test_tcp_close_with_write_pending(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };
  size_t big = (size_t)64 << 20;
  char *bytes = calloc(1, big);
  uv_buf_t b = uv_buf_init(bytes, (unsigned)big);

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_SILENT));
  o.host = "127.0.0.1";
  o.port = (uint16_t)sv.port;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1 && sv.accepted == 1, 5000);
  ASSERT_EQ(0, stream_write(c.s, &b, 1, on_client_written, &c));
  RUN_FOR(&loop, 20);
  ASSERT_EQ(0, c.writes);
  client_close(&c);
  ASSERT_EQ(0, c.closes); /* never inside stream_close */
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.writes);
  ASSERT_EQ(UV_ECANCELED, c.write_status);
  ASSERT_EQ(1, c.closes);
  free(bytes);
}

/* stream_close from inside the read callback: no read callback after. */
static void test_tcp_close_in_read_cb(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_SEND));
  sv.big_chunks = 4;
  o.host = "127.0.0.1";
  o.port = (uint16_t)sv.port;
  client_connect(&c, &loop, &o);
  c.close_after_read = true;
  RUN_UNTIL(&loop, c.closes == 1, 5000);
  ASSERT_EQ(1, c.reads);
  ASSERT_EQ(0, c.reads_after_close);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.reads);
  ASSERT_EQ(0, c.ends);
}

static void test_tcp_refused(void) {
  uv_loop_t loop;
  client c;
  stream_opts o = { 0 };
  char want[128];

  ASSERT_EQ(0, uv_loop_init(&loop));
  o.host = "127.0.0.1";
  o.port = (uint16_t)free_port();
  o.connect_timeout = 5000;
  client_connect(&c, &loop, &o);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(UV_ECONNREFUSED, c.connect_status);
  snprintf(want, sizeof want, "connect to 127.0.0.1:%u: connection refused",
           (unsigned)o.port);
  ASSERT_STR_EQ(want, c.connect_msg);
}

/* A listener with a backlog of 0 and a queued connection drops further
 * SYNs, so a connect to it hangs until the deadline. */
static void test_tcp_connect_timeout(void) {
  uv_loop_t loop;
  client c;
  stream_opts o = { 0 };
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  int lfd, fill[2], i;
  char want[128];
  uint64_t t0;

  lfd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(0, bind(lfd, (struct sockaddr *)&a, sizeof a));
  ASSERT_EQ(0, listen(lfd, 0));
  ASSERT_EQ(0, getsockname(lfd, (struct sockaddr *)&a, &alen));
  for (i = 0; i < 2; i++) {
    fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(fill[i], (struct sockaddr *)&a, sizeof a);
  }

  ASSERT_EQ(0, uv_loop_init(&loop));
  o.host = "127.0.0.1";
  o.port = ntohs(a.sin_port);
  o.connect_timeout = 200;
  t0 = uv_hrtime();
  client_connect(&c, &loop, &o);
  FINISH_LOOP(&loop);
  ASSERT((uv_hrtime() - t0) / 1000000 >= 190);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(STREAM_ETIMEDOUT, c.connect_status);
  snprintf(want, sizeof want, "connect to 127.0.0.1:%u timed out after 200ms",
           (unsigned)o.port);
  ASSERT_STR_EQ(want, c.connect_msg);
  for (i = 0; i < 2; i++)
    close(fill[i]);
  close(lfd);
}

static void test_dns_failure(void) {
  uv_loop_t loop;
  client c;
  stream_opts o = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  o.host = "nonexistent.invalid";
  o.port = 80;
  o.connect_timeout = 5000;
  client_connect(&c, &loop, &o);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(STREAM_EDNS, c.connect_status);
  ASSERT_CONTAINS(c.connect_msg, "cannot resolve nonexistent.invalid: ");
  ASSERT(strlen(c.connect_msg) >
         strlen("cannot resolve nonexistent.invalid: "));
}

static void test_tcp_ipv6(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };
  int r;

  ASSERT_EQ(0, uv_loop_init(&loop));
  r = srv_start_tcp(&sv, &loop, "::1", SRV_ECHO);
  if (r != 0) {
    /* No IPv6 on this host: bind says so, and there is nothing to test. */
    printf("# skipped: no ::1 here (%s)\n", uv_strerror(r));
    ASSERT(r == UV_EADDRNOTAVAIL || r == UV_EAFNOSUPPORT);
    FINISH_LOOP(&loop);
    return;
  }
  o.host = "::1";
  o.port = (uint16_t)sv.port;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(0, c.connect_status);
  client_write(&c, "six");
  RUN_UNTIL(&loop, c.len == 3, 5000);
  ASSERT_MEM_EQ("six", 3, c.data, c.len);
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A name: localhost may resolve to ::1 first, where nothing listens, and
 * the stream moves on to 127.0.0.1. */
static void test_tcp_localhost_name(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_ECHO));
  o.host = "localhost";
  o.port = (uint16_t)sv.port;
  o.connect_timeout = 5000;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(0, c.connect_status);
  client_write(&c, "name");
  RUN_UNTIL(&loop, c.len == 4, 5000);
  ASSERT_MEM_EQ("name", 4, c.data, c.len);
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* Closing while the connect is under way: the connect callback still runs
 * once (UV_ECANCELED), then the close callback. */
static void test_close_before_connected(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_ECHO));
  o.host = "localhost";
  o.port = (uint16_t)sv.port;
  client_connect(&c, &loop, &o);
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(UV_ECANCELED, c.connect_status);
  ASSERT_EQ(1, c.closes);
}

static void test_bad_args(void) {
  uv_loop_t loop;
  stream_opts o = { 0 };
  stream *s = NULL;

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(UV_EINVAL, stream_connect(&loop, &o, on_client_connect, NULL, &s));
  o.host = "127.0.0.1";
  ASSERT_EQ(UV_EINVAL, stream_connect(&loop, &o, on_client_connect, NULL, &s));
  o.port = 1;
  ASSERT_EQ(UV_EINVAL, stream_connect(&loop, &o, NULL, NULL, &s));
  ASSERT(s == NULL);
  FINISH_LOOP(&loop);
}

/* ---- unix sockets ------------------------------------------------------- */

static void test_unix_echo(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };
  char dir[PATH_MAX], path[PATH_MAX + 16];

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(path, sizeof path, "%s/s.sock", dir);
  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start_unix(&sv, &loop, path, SRV_ECHO);
  o.unix_path = path;
  o.connect_timeout = 5000;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(0, c.connect_status);
  client_write(&c, "over a unix socket");
  RUN_UNTIL(&loop, c.len == 18 && c.writes == 1, 5000);
  ASSERT_MEM_EQ("over a unix socket", 18, c.data, c.len);
  client_close(&c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.closes);
  test_rmtree(dir);
}

static void test_unix_missing(void) {
  uv_loop_t loop;
  client c;
  stream_opts o = { 0 };
  char dir[PATH_MAX], path[PATH_MAX + 16], want[PATH_MAX + 128];

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(path, sizeof path, "%s/none.sock", dir);
  ASSERT_EQ(0, uv_loop_init(&loop));
  o.unix_path = path;
  client_connect(&c, &loop, &o);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(UV_ENOENT, c.connect_status);
  snprintf(want, sizeof want, "connect to unix:%s: no such file or directory",
           path);
  ASSERT_STR_EQ(want, c.connect_msg);
  test_rmtree(dir);
}

/* ---- TLS fixture: certificates and openssl s_server children ------------ */

/* Everything the TLS tests need, made once per process and removed at exit:
 * a CA with a server certificate for localhost/127.0.0.1, the same name
 * expired, another name, a client CA with a client certificate, and files
 * for s_server -WWW to serve. */
static const char fx_script[] =
    "set -e\n"
    "exec >gen.log 2>&1\n"
    "ec='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'\n"
    "ca_ext='-addext basicConstraints=critical,CA:TRUE "
    "-addext keyUsage=critical,keyCertSign,cRLSign'\n"
    "openssl req -x509 $ec -keyout ca.key -out ca.crt -days 30 "
    "-subj '/CN=Test CA' $ca_ext\n"
    "openssl req -x509 $ec -keyout clientca.key -out clientca.crt -days 30 "
    "-subj '/CN=Client CA' $ca_ext\n"
    "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n"
    "basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\n"
    "extendedKeyUsage=serverAuth\\n' > server.ext\n"
    "printf 'subjectAltName=DNS:other.test\\nbasicConstraints=CA:FALSE\\n"
    "keyUsage=digitalSignature\\nextendedKeyUsage=serverAuth\\n' > other.ext\n"
    "printf 'basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\n"
    "extendedKeyUsage=clientAuth\\n' > client.ext\n"
    "openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost\n"
    "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key "
    "-CAcreateserial -out server.crt -days 30 -extfile server.ext\n"
    "openssl req $ec -keyout other.key -out other.csr -subj /CN=other.test\n"
    "openssl x509 -req -in other.csr -CA ca.crt -CAkey ca.key "
    "-CAcreateserial -out other.crt -days 30 -extfile other.ext\n"
    "openssl req $ec -keyout client.key -out client.csr "
    "-subj /CN=tether-client\n"
    "openssl x509 -req -in client.csr -CA clientca.crt -CAkey clientca.key "
    "-CAcreateserial -out client.crt -days 30 -extfile client.ext\n"
    /* OpenSSL 3.0's x509 cannot back-date; `openssl ca` can. */
    "mkdir db && touch db/index.txt && echo 01 > db/serial\n"
    "printf '[ca]\\ndefault_ca = d\\n[d]\\ndatabase = db/index.txt\\n"
    "new_certs_dir = db\\nserial = db/serial\\ndefault_md = sha256\\n"
    "policy = p\\nunique_subject = no\\n[p]\\ncommonName = supplied\\n' "
    "> ca.cnf\n"
    "openssl req $ec -keyout expired.key -out expired.csr -subj /CN=localhost\n"
    "openssl ca -batch -notext -config ca.cnf -cert ca.crt -keyfile ca.key "
    "-in expired.csr -out expired.crt -extfile server.ext "
    "-startdate 20200101000000Z -enddate 20200102000000Z\n"
    "printf 'hello over tls\\n' > hello.txt\n";

#define FX_BIG_SIZE    ((size_t)BIG_CHUNK * 2)
#define FX_MAX_SERVERS 8

enum fx_kind {
  FX_GOOD,    /* server.crt, -WWW, ALPN http/1.1 */
  FX_OTHER,   /* other.crt (other.test) */
  FX_EXPIRED, /* expired.crt */
  FX_TLS1,    /* TLS 1.0 only */
  FX_MTLS,    /* requires a client certificate from clientca */
  FX_KINDS
};

typedef struct fx_server {
  pid_t pid;
  int port;
  int stdin_fd; /* kept open so s_server never sees EOF on stdin */
} fx_server;

static struct {
  bool made;
  char dir[PATH_MAX];
  fx_server servers[FX_MAX_SERVERS];
  int nservers;
  int port[FX_KINDS];
} fx;

static void fx_kill(fx_server *sv) {
  if (sv->pid > 0) {
    kill(sv->pid, SIGKILL);
    waitpid(sv->pid, NULL, 0);
    close(sv->stdin_fd);
    sv->pid = 0;
  }
}

static void fx_cleanup(void) {
  int i;

  for (i = 0; i < fx.nservers; i++)
    fx_kill(&fx.servers[i]);
  if (fx.made)
    test_rmtree(fx.dir);
}

/* dir/name, in a static buffer of four rotating slots. */
static const char *fx_path(const char *name) {
  static char paths[4][PATH_MAX + 64];
  static int next;
  char *p = paths[next++ % 4];

  snprintf(p, sizeof paths[0], "%s/%s", fx.dir, name);
  return p;
}

static void fx_make(void) {
  char cmd[PATH_MAX + 64], *big;
  size_t i;

  if (fx.made)
    return;
  setup_once();
  snprintf(fx.dir, sizeof fx.dir, "%s", test_tmpdir());
  fx.made = true;
  atexit(fx_cleanup);
  test_write_file(fx_path("gen.sh"), fx_script, strlen(fx_script));
  snprintf(cmd, sizeof cmd, "cd '%s' && sh gen.sh", fx.dir);
  if (system(cmd) != 0) {
    char *log = test_read_file(fx_path("gen.log"), NULL);
    printf("# certificate generation failed:\n%s\n", log ? log : "");
    free(log);
    ASSERT(!"openssl could not make the test certificates");
  }
  big = malloc(FX_BIG_SIZE);
  for (i = 0; i < FX_BIG_SIZE; i++)
    big[i] = (char)(i % 251);
  test_write_file(fx_path("big.bin"), big, FX_BIG_SIZE);
  free(big);
}

/* Starts `openssl s_server -accept 127.0.0.1:PORT args...` in fx.dir and
 * waits (bounded) until it accepts connections. */
static fx_server *fx_spawn(const char *const *args) {
  const char *argv[32];
  char accept_arg[32], logname[64];
  fx_server *sv;
  struct sockaddr_in a;
  int p[2], n = 0, fd, log, tries;
  pid_t pid;

  fx_make();
  ASSERT(fx.nservers < FX_MAX_SERVERS);
  sv = &fx.servers[fx.nservers++];
  sv->port = free_port();
  snprintf(accept_arg, sizeof accept_arg, "127.0.0.1:%d", sv->port);
  snprintf(logname, sizeof logname, "s_server-%d.log", sv->port);
  argv[n++] = "openssl";
  argv[n++] = "s_server";
  argv[n++] = "-accept";
  argv[n++] = accept_arg;
  while (*args != NULL && n < 30)
    argv[n++] = *args++;
  argv[n] = NULL;
  ASSERT_EQ(0, pipe(p));
  log = open(fx_path(logname), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT(log >= 0);
  fflush(stdout);
  pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    if (chdir(fx.dir) != 0)
      _exit(126);
    dup2(p[0], 0);
    dup2(log, 1);
    dup2(log, 2);
    close(p[0]);
    close(p[1]);
    close(log);
    execvp("openssl", (char *const *)argv);
    _exit(127);
  }
  close(p[0]);
  close(log);
  sv->pid = pid;
  sv->stdin_fd = p[1];

  /* Poll for the listening socket, up to 5 s; fail at once if it died. */
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)sv->port);
  for (tries = 0; tries < 500; tries++) {
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      char *text = test_read_file(fx_path(logname), NULL);
      sv->pid = 0;
      printf("# s_server exited early:\n%s\n", text ? text : "");
      free(text);
      ASSERT(!"s_server did not start");
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
      close(fd);
      return sv;
    }
    close(fd);
    uv_sleep(10);
  }
  ASSERT(!"s_server did not listen within 5 s");
  return NULL;
}

static int fx_port(enum fx_kind kind) {
  static const char *const good[] = { "-cert",      "server.crt", "-key",
                                      "server.key", "-WWW",       "-alpn",
                                      "http/1.1",   NULL };
  static const char *const other[] = { "-cert",     "other.crt", "-key",
                                       "other.key", "-WWW",      NULL };
  static const char *const expired[] = { "-cert",       "expired.crt", "-key",
                                         "expired.key", "-WWW",        NULL };
  static const char *const tls1[] = {
    "-cert",   "server.crt",          "-key", "server.key", "-WWW", "-tls1",
    "-cipher", "DEFAULT:@SECLEVEL=0", NULL
  };
  static const char *const mtls[] = {
    "-cert",   "server.crt", "-key",    "server.key",   "-WWW",
    "-Verify", "1",          "-CAfile", "clientca.crt", NULL
  };
  static const char *const *const args[FX_KINDS] = { good, other, expired, tls1,
                                                     mtls };

  if (fx.port[kind] == 0)
    fx.port[kind] = fx_spawn(args[kind])->port;
  return fx.port[kind];
}

static tls_ctx *make_tls(const char *ca, const char *cert, const char *key,
                         bool verify, const char *alpn) {
  tls_options o = { 0 };
  tls_ctx *ctx = NULL;
  char err[256] = "";

  fx_make();
  o.ca_file = ca != NULL ? fx_path(ca) : NULL;
  o.client_cert = cert != NULL ? fx_path(cert) : NULL;
  o.client_key = key != NULL ? fx_path(key) : NULL;
  o.verify = verify;
  o.alpn = alpn;
  if (tls_ctx_create(&o, &ctx, err, sizeof err) != 0)
    printf("# tls_ctx_create: %s\n", err);
  ASSERT(ctx != NULL);
  return ctx;
}

/* Connects with TLS to a fixture server and returns once the connect
 * callback has run. */
static void tls_connect(client *c, uv_loop_t *loop, tls_ctx *ctx,
                        const char *host, const char *tls_host, int port) {
  stream_opts o = { 0 };

  o.host = host;
  o.tls_host = tls_host;
  o.port = (uint16_t)port;
  o.tls = ctx;
  o.connect_timeout = 5000;
  client_connect(c, loop, &o);
  RUN_UNTIL(loop, c->connects == 1, 6000);
}

/* Asks the server for a file and reads the reply to its end. */
static void tls_get(client *c, uv_loop_t *loop, const char *file) {
  char req[128];

  snprintf(req, sizeof req, "GET /%s HTTP/1.0\r\n\r\n", file);
  client_write(c, req);
  RUN_UNTIL(loop, c->ends == 1, 5000);
}

/* A connect that must fail with STREAM_ETLS and exactly this message. */
static void expect_tls_failure(tls_ctx *ctx, const char *host,
                               const char *tls_host, int port,
                               const char *want) {
  uv_loop_t loop;
  client c;

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, host, tls_host, port);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.connects);
  ASSERT_EQ(STREAM_ETLS, c.connect_status);
  ASSERT_STR_EQ(want, c.connect_msg);
}

/* ---- TLS ---------------------------------------------------------------- */

static void test_tls_describe_error(void) {
  static const struct {
    int code;
    unsigned flags;
    const char *host;
    const char *want;
  } vectors[] = {
    { MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, MBEDTLS_X509_BADCERT_CN_MISMATCH,
      "pb.internal",
      "certificate verify failed: CN mismatch (expected pb.internal)" },
    { MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, MBEDTLS_X509_BADCERT_NOT_TRUSTED,
      "x", "certificate verify failed: unknown CA" },
    { MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, MBEDTLS_X509_BADCERT_EXPIRED, "x",
      "certificate verify failed: expired" },
    { MBEDTLS_ERR_X509_CERT_VERIFY_FAILED,
      MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_CN_MISMATCH, "a.b",
      "certificate verify failed: CN mismatch (expected a.b), expired" },
    { MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, MBEDTLS_X509_BADCERT_FUTURE, "x",
      "certificate verify failed: not yet valid" },
    { MBEDTLS_ERR_X509_CERT_VERIFY_FAILED, 0, "x",
      "certificate verify failed" },
    { MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION, 0, "x",
      "handshake failed: protocol version (the server offers no TLS 1.2)" },
    { MBEDTLS_ERR_SSL_CONN_EOF, 0, "x", "handshake failed: connection closed" },
    { MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE, 0, "x",
      "handshake failed: the server sent a fatal alert" },
    { MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE, 0, "x",
      "handshake failed: no cipher suite in common with the server" },
  };
  char out[256];
  size_t i;

  for (i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
    tls_describe_error(vectors[i].code, vectors[i].flags, vectors[i].host, out,
                       sizeof out);
    ASSERT_STR_EQ(vectors[i].want, out);
  }
  /* Anything else: mbedTLS's words without the module tag, and the code. */
  tls_describe_error(MBEDTLS_ERR_SSL_INVALID_MAC, 0, "x", out, sizeof out);
  ASSERT_CONTAINS(out, "handshake failed: ");
  ASSERT_CONTAINS(out, "(-0x7180)");
  ASSERT(strstr(out, "SSL - ") == NULL);
  /* A tiny buffer is cut, never overrun. */
  tls_describe_error(MBEDTLS_ERR_SSL_CONN_EOF, 0, "x", out, 8);
  ASSERT_STR_EQ("handsha", out);
}

static void test_tls_ctx_errors(void) {
  tls_options o = { 0 };
  tls_ctx *ctx = NULL;
  char err[512], want[PATH_MAX + 128];

  fx_make();
  o.verify = true;
  o.ca_file = "/nonexistent/ca.pem";
  ASSERT_EQ(UV_ENOENT, tls_ctx_create(&o, &ctx, err, sizeof err));
  ASSERT_STR_EQ(
      "cannot read ca_file /nonexistent/ca.pem: No such file or directory",
      err);
  o.ca_file = fx_path("hello.txt");
  ASSERT_EQ(UV_EINVAL, tls_ctx_create(&o, &ctx, err, sizeof err));
  snprintf(want, sizeof want, "cannot parse ca_file %s: ", o.ca_file);
  ASSERT_CONTAINS(err, want);
  o.ca_file = fx_path("ca.crt");
  o.client_cert = fx_path("client.crt");
  ASSERT_EQ(UV_EINVAL, tls_ctx_create(&o, &ctx, err, sizeof err));
  ASSERT_STR_EQ("client_cert and client_key must be set together", err);
  o.client_key = fx_path("server.key");
  ASSERT_EQ(UV_EINVAL, tls_ctx_create(&o, &ctx, err, sizeof err));
  ASSERT_STR_EQ("client_key does not match client_cert", err);
  ASSERT(ctx == NULL);
  o.client_key = fx_path("client.key");
  ASSERT_EQ(0, tls_ctx_create(&o, &ctx, err, sizeof err));
  ASSERT(ctx != NULL);
  tls_ctx_destroy(ctx);
  tls_ctx_destroy(NULL);
  /* The system bundle, when no ca_file is given. */
  memset(&o, 0, sizeof o);
  o.verify = true;
  ctx = NULL;
  ASSERT_EQ(0, tls_ctx_create(&o, &ctx, err, sizeof err));
  tls_ctx_destroy(ctx);
}

/* Handshake, ALPN, an HTTP exchange, and the server's close_notify as
 * UV_EOF. */
static void test_tls_get(void) {
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, "http/1.1");
  int port = fx_port(FX_GOOD);

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "localhost", NULL, port);
  ASSERT_EQ(0, c.connect_status);
  ASSERT_STR_EQ("", c.connect_msg);
  ASSERT(stream_is_tls(c.s));
  ASSERT_CONTAINS(stream_tls_info(c.s), "TLSv1.2 TLS-ECDHE-ECDSA-");
  ASSERT_CONTAINS(stream_tls_info(c.s), " alpn=http/1.1");
  tls_get(&c, &loop, "hello.txt");
  ASSERT_EQ(UV_EOF, c.end);
  ASSERT_CONTAINS(c.data, "HTTP/1.0 200 ok\r\n");
  ASSERT_CONTAINS(c.data, "\r\n\r\nhello over tls\n");
  ASSERT_EQ(1, c.writes);
  ASSERT_EQ(0, c.write_status);
  client_close(&c);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, c.closes);
  tls_ctx_destroy(ctx);
}

/* An IP literal is checked against the certificate's iPAddress entries
 * (mbedTLS 2.28 matches DNS names only). */
static void test_tls_ip_literal(void) {
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "127.0.0.1", NULL, fx_port(FX_GOOD));
  ASSERT_EQ(0, c.connect_status);
  client_close(&c);
  FINISH_LOOP(&loop);
  expect_tls_failure(
      ctx, "127.0.0.1", NULL, fx_port(FX_OTHER),
      "certificate verify failed: CN mismatch (expected 127.0.0.1)");
  tls_ctx_destroy(ctx);
}

static void test_tls_wrong_name(void) {
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);

  expect_tls_failure(
      ctx, "localhost", NULL, fx_port(FX_OTHER),
      "certificate verify failed: CN mismatch (expected localhost)");
  /* tls_host names the peer when host is only where to connect. */
  expect_tls_failure(
      ctx, "127.0.0.1", "pb.internal", fx_port(FX_GOOD),
      "certificate verify failed: CN mismatch (expected pb.internal)");
  tls_ctx_destroy(ctx);
}

static void test_tls_unknown_ca(void) {
  tls_ctx *ctx = make_tls("clientca.crt", NULL, NULL, true, NULL);
  char want[PATH_MAX + 128];

  snprintf(want, sizeof want,
           "certificate verify failed: unknown CA (not trusted by %s)",
           fx_path("clientca.crt"));
  expect_tls_failure(ctx, "localhost", NULL, fx_port(FX_GOOD), want);
  tls_ctx_destroy(ctx);
}

static void test_tls_expired(void) {
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);

  expect_tls_failure(ctx, "localhost", NULL, fx_port(FX_EXPIRED),
                     "certificate verify failed: expired");
  tls_ctx_destroy(ctx);
}

static void test_tls_old_protocol(void) {
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);

  expect_tls_failure(
      ctx, "localhost", NULL, fx_port(FX_TLS1),
      "handshake failed: protocol version (the server offers no TLS 1.2)");
  tls_ctx_destroy(ctx);
}

static void test_tls_verify_off(void) {
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls(NULL, NULL, NULL, false, NULL);

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "localhost", NULL, fx_port(FX_OTHER));
  ASSERT_EQ(0, c.connect_status);
  ASSERT(stream_is_tls(c.s));
  tls_get(&c, &loop, "hello.txt");
  ASSERT_CONTAINS(c.data, "hello over tls\n");
  client_close(&c);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(ctx);
}

static void test_tls_client_cert(void) {
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls("ca.crt", "client.crt", "client.key", true, NULL);
  tls_ctx *bare = make_tls("ca.crt", NULL, NULL, true, NULL);

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "localhost", NULL, fx_port(FX_MTLS));
  ASSERT_EQ(0, c.connect_status);
  tls_get(&c, &loop, "hello.txt");
  ASSERT_CONTAINS(c.data, "hello over tls\n");
  client_close(&c);
  FINISH_LOOP(&loop);
  expect_tls_failure(bare, "localhost", NULL, fx_port(FX_MTLS),
                     "handshake failed: the server sent alert "
                     "handshake_failure (it asked for a client certificate "
                     "and none is set)");
  tls_ctx_destroy(ctx);
  tls_ctx_destroy(bare);
}

static void on_tls_started(stream *s, int status, const char *msg, void *data) {
  client *c = data;

  (void)s;
  c->connects++;
  c->connect_status = status;
  snprintf(c->connect_msg, sizeof c->connect_msg, "%s", msg ? msg : "");
}

/* stream_start_tls over a plaintext connection, as after a proxy CONNECT;
 * the reader stays started across the upgrade. */
static void test_tls_start_tls(void) {
  uv_loop_t loop;
  client c;
  stream_opts o = { 0 };
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);

  ASSERT_EQ(0, uv_loop_init(&loop));
  o.host = "127.0.0.1";
  o.port = (uint16_t)fx_port(FX_GOOD);
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(0, c.connect_status);
  ASSERT(!stream_is_tls(c.s));
  ASSERT_EQ(0,
            stream_start_tls(c.s, ctx, "localhost", 5000, on_tls_started, &c));
  ASSERT_EQ(1, c.connects); /* never inside stream_start_tls */
  RUN_UNTIL(&loop, c.connects == 2, 5000);
  ASSERT_EQ(0, c.connect_status);
  ASSERT(stream_is_tls(c.s));
  ASSERT_EQ(UV_EINVAL,
            stream_start_tls(c.s, ctx, "localhost", 0, on_tls_started, &c));
  tls_get(&c, &loop, "hello.txt");
  ASSERT_CONTAINS(c.data, "hello over tls\n");
  ASSERT_EQ(0, c.reads_after_close);
  client_close(&c);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(ctx);
}

/* With TLS, read_stop also holds back what is already decrypted or
 * buffered; read_start delivers it on a later turn, never inside the call,
 * and every byte arrives in order. */
static void test_tls_backpressure(void) {
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);
  size_t cap = FX_BIG_SIZE + 4096, len_at_stop, i;
  const char *body;
  int reads_at_stop, round;

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "localhost", NULL, fx_port(FX_GOOD));
  ASSERT_EQ(0, c.connect_status);
  c.all = malloc(cap);
  c.all_cap = cap;
  client_write(&c, "GET /big.bin HTTP/1.0\r\n\r\n");
  /* Stop after each of the first reads, wait, check, resume. */
  for (round = 0; round < 5; round++) {
    c.stop_after_read = true;
    RUN_UNTIL(&loop, !c.stop_after_read, 5000);
    len_at_stop = c.len;
    reads_at_stop = c.reads;
    RUN_FOR(&loop, 30);
    ASSERT_EQ(reads_at_stop, c.reads);
    ASSERT_UEQ(len_at_stop, c.len);
    ASSERT_EQ(0, stream_read_start(c.s, on_client_read, &c));
    ASSERT_EQ(reads_at_stop, c.reads);
  }
  RUN_UNTIL(&loop, c.ends == 1, 10000);
  ASSERT_EQ(UV_EOF, c.end);
  body = strstr(c.all, "\r\n\r\n");
  ASSERT(body != NULL);
  body += 4;
  ASSERT_UEQ(FX_BIG_SIZE, c.len - (size_t)(body - c.all));
  for (i = 0; i < FX_BIG_SIZE; i++)
    if ((unsigned char)body[i] != i % 251)
      break;
  ASSERT_UEQ(FX_BIG_SIZE, i);
  client_close(&c);
  FINISH_LOOP(&loop);
  free(c.all);
  tls_ctx_destroy(ctx);
}

/* A peer that vanishes without close_notify still ends with UV_EOF, so a
 * close-delimited HTTP body ends cleanly. */
static void test_tls_eof_without_close_notify(void) {
  static const char *const args[] = { "-cert", "server.crt", "-key",
                                      "server.key", NULL };
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);
  fx_server *sv = fx_spawn(args);

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "localhost", NULL, sv->port);
  ASSERT_EQ(0, c.connect_status);
  fx_kill(sv);
  RUN_UNTIL(&loop, c.ends == 1, 5000);
  ASSERT_EQ(UV_EOF, c.end);
  ASSERT_EQ(0, c.reads);
  client_close(&c);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(ctx);
}

/* stream_close sends close_notify before closing the socket; the server's
 * message trace shows it arriving. */
static void test_tls_close_notify(void) {
  static const char *const args[] = { "-cert",      "server.crt", "-key",
                                      "server.key", "-msg",       NULL };
  uv_loop_t loop;
  client c;
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);
  fx_server *sv = fx_spawn(args);
  char name[64], *log = NULL;
  int tries;

  ASSERT_EQ(0, uv_loop_init(&loop));
  tls_connect(&c, &loop, ctx, "localhost", NULL, sv->port);
  ASSERT_EQ(0, c.connect_status);
  client_close(&c);
  FINISH_LOOP(&loop);
  snprintf(name, sizeof name, "s_server-%d.log", sv->port);
  for (tries = 0; tries < 200; tries++) {
    free(log);
    log = test_read_file(fx_path(name), NULL);
    if (log != NULL && strstr(log, "<<< TLS 1.2, Alert [length 0002], "
                                   "warning close_notify") != NULL)
      break;
    uv_sleep(10);
  }
  ASSERT_CONTAINS(log,
                  "<<< TLS 1.2, Alert [length 0002], warning close_notify");
  free(log);
  fx_kill(sv);
  tls_ctx_destroy(ctx);
}

/* A server that accepts TCP and never speaks TLS, and one that hangs up. */
static void test_tls_handshake_timeout_and_close(void) {
  uv_loop_t loop;
  srv sv;
  client c;
  stream_opts o = { 0 };
  tls_ctx *ctx = make_tls("ca.crt", NULL, NULL, true, NULL);

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_SILENT));
  o.host = "127.0.0.1";
  o.tls_host = "localhost";
  o.port = (uint16_t)sv.port;
  o.tls = ctx;
  o.connect_timeout = 200;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(STREAM_ETIMEDOUT, c.connect_status);
  ASSERT_STR_EQ("TLS handshake with localhost timed out after 200ms",
                c.connect_msg);
  srv_stop(&sv);
  FINISH_LOOP(&loop);

  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0, srv_start_tcp(&sv, &loop, "127.0.0.1", SRV_SEND));
  sv.payload = "";
  o.port = (uint16_t)sv.port;
  o.connect_timeout = 5000;
  client_connect(&c, &loop, &o);
  RUN_UNTIL(&loop, c.connects == 1, 5000);
  ASSERT_EQ(STREAM_ETLS, c.connect_status);
  ASSERT_STR_EQ("handshake failed: connection closed", c.connect_msg);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(ctx);
}

static const test_case tests[] = {
  TEST(test_tcp_echo),
  TEST(test_tcp_peer_eof),
  TEST(test_tcp_backpressure),
  TEST(test_tcp_close_with_write_pending),
  TEST(test_tcp_close_in_read_cb),
  TEST(test_tcp_refused),
  TEST(test_tcp_connect_timeout),
  TEST(test_dns_failure),
  TEST(test_tcp_ipv6),
  TEST(test_tcp_localhost_name),
  TEST(test_close_before_connected),
  TEST(test_bad_args),
  TEST(test_unix_echo),
  TEST(test_unix_missing),
  TEST(test_tls_describe_error),
  TEST(test_tls_ctx_errors),
  TEST(test_tls_get),
  TEST(test_tls_ip_literal),
  TEST(test_tls_wrong_name),
  TEST(test_tls_unknown_ca),
  TEST(test_tls_expired),
  TEST(test_tls_old_protocol),
  TEST(test_tls_verify_off),
  TEST(test_tls_client_cert),
  TEST(test_tls_start_tls),
  TEST(test_tls_backpressure),
  TEST(test_tls_eof_without_close_notify),
  TEST(test_tls_close_notify),
  TEST(test_tls_handshake_timeout_and_close),
  { NULL, NULL },
};
TEST_MAIN(tests)
