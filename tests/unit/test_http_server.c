/* loop/http_server against real client sockets driven in the same loop (unix
 * and TCP), and through its socketless connection (loop/http_srv_test.h)
 * for table-driven request vectors. Responses are read back with the HTTP
 * client's own parser (loop/http_parse.h). */
#include "loop/http_server.h"

#include <grp.h>
#include <jansson.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "loop/http_parse.h"
#include "loop/http_srv_test.h"
#include "protocol/buf.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- A fixture: the loop, a temporary directory, the server -------------- */

#define MAX_SEEN 16

typedef struct seen {
  char method[16];
  char target[256];
  char body[4096];
  size_t body_len;
  char headers[1024]; /* "name: value\n" each */
  bool tcp;
  pid_t pid;
  uid_t uid;
  gid_t gid;
  http_conn *c;
} seen;

typedef struct fx fx;
typedef void (*on_request_fn)(fx *f, http_conn *c, const http_srv_request *r);

struct fx {
  uv_loop_t loop;
  char dir[PATH_MAX];
  char path[PATH_MAX];
  http_server_opts o;
  http_server *s;
  bool closed; /* the server's close callback ran */
  int close_cbs;
  on_request_fn on_request;
  seen req[MAX_SEEN];
  int n_req;
  http_conn *held[MAX_SEEN]; /* requests answered later */
  int n_held;
  int drains, closes; /* stream callbacks */
  int rc[8];          /* return codes a handler saw */
  uv_timer_t timer;
  bool timer_open;
};

static fx F;

static void setup_once(void) {
  static bool done;

  if (!done) {
    done = true;
    signal(SIGPIPE, SIG_IGN);
  }
}

static void fx_on_request(http_conn *c, const http_srv_request *r, void *data) {
  fx *f = data;
  seen *sn = &f->req[f->n_req < MAX_SEEN ? f->n_req : MAX_SEEN - 1];
  size_t i, off = 0;
  char text[4200];
  int n;

  memset(sn, 0, sizeof *sn);
  ASSERT(r->method != NULL && r->target != NULL && r->body != NULL);
  ASSERT_EQ(0, r->body[r->body_len]);
  snprintf(sn->method, sizeof sn->method, "%s", r->method);
  snprintf(sn->target, sizeof sn->target, "%s", r->target);
  sn->body_len =
      r->body_len < sizeof sn->body - 1 ? r->body_len : sizeof sn->body - 1;
  memcpy(sn->body, r->body, sn->body_len);
  for (i = 0; i < r->n_headers && off < sizeof sn->headers; i++)
    off +=
        (size_t)snprintf(sn->headers + off, sizeof sn->headers - off,
                         "%s: %s\n", r->headers[i].name, r->headers[i].value);
  sn->tcp = r->tcp;
  sn->pid = r->pid;
  sn->uid = r->uid;
  sn->gid = r->gid;
  sn->c = c;
  f->n_req++;
  if (f->on_request != NULL) {
    f->on_request(f, c, r);
    return;
  }
  n = snprintf(text, sizeof text, "%s %s\n%.*s", r->method, r->target,
               (int)sn->body_len, r->body);
  ASSERT_EQ(0,
            http_conn_respond(c, 200, "text/plain", NULL, 0, text, (size_t)n));
}

static void fx_init(fx *f) {
  const char *dir;

  setup_once();
  memset(f, 0, sizeof *f);
  ASSERT_EQ(0, uv_loop_init(&f->loop));
  dir = test_tmpdir();
  ASSERT(strlen(dir) < sizeof f->dir);
  strcpy(f->dir, dir);
  ASSERT((size_t)snprintf(f->path, sizeof f->path, "%s/api.sock", dir) <
         sizeof f->path);
  f->o.unix_path = f->path;
  f->o.unix_mode = 0600;
  f->o.unix_gid = (gid_t)-1;
}

static int fx_try_start(fx *f, char *err, size_t errlen) {
  return http_server_start(&f->loop, &f->o, fx_on_request, f, &f->s, err,
                           errlen);
}

static void fx_start(fx *f) {
  char err[256] = "";
  int rc = fx_try_start(f, err, sizeof err);

  if (rc != 0)
    printf("# http_server_start: %s\n", err);
  ASSERT_EQ(0, rc);
}

static void fx_on_closed(void *data) {
  fx *f = data;

  f->closed = true;
  f->close_cbs++;
}

static void fx_close_server(fx *f) {
  if (f->s != NULL && !f->closed) {
    http_server_close(f->s, fx_on_closed, f);
    RUN_UNTIL(&f->loop, f->closed, 2000);
  }
}

/* ---- A client: a libuv socket in the same loop --------------------------- */

typedef struct cli {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_connect_t creq;
  buf in;
  bool open, connected, eof, closed, no_read, reading;
  int connect_status;
  int read_err;
  char rbuf[65536];
} cli;

static void cli_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  cli *c = h->data;

  (void)suggested;
  *b = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void cli_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  cli *c = s->data;

  if (n > 0) {
    buf_append(&c->in, b->base, (size_t)n);
  } else if (n < 0) {
    c->eof = true;
    c->read_err = n == UV_EOF ? 0 : (int)n;
    uv_read_stop(s);
    c->reading = false;
  }
}

static void cli_read_start(cli *c) {
  if (!c->reading && !c->eof) {
    c->reading = true;
    uv_read_start(&c->h.stream, cli_alloc, cli_on_read);
  }
}

static void cli_on_connect(uv_connect_t *req, int status) {
  cli *c = req->data;

  c->connect_status = status;
  c->connected = status == 0;
  if (status == 0 && !c->no_read)
    cli_read_start(c);
}

static void cli_init(cli *c) {
  bool no_read = c->no_read;

  memset(c, 0, sizeof *c);
  c->no_read = no_read;
  buf_init(&c->in, 0);
  c->h.handle.data = c;
  c->creq.data = c;
  c->open = true;
}

static void cli_unix(fx *f, cli *c) {
  cli_init(c);
  uv_pipe_init(&f->loop, &c->h.pipe, 0);
  c->h.handle.data = c;
  uv_pipe_connect(&c->creq, &c->h.pipe, f->path, cli_on_connect);
  RUN_UNTIL(&f->loop, c->connected || c->connect_status != 0, 2000);
  ASSERT_EQ(0, c->connect_status);
}

static void cli_tcp(fx *f, cli *c, const char *host, int port) {
  struct sockaddr_storage a;

  cli_init(c);
  if (strchr(host, ':') != NULL)
    ASSERT_EQ(0, uv_ip6_addr(host, port, (struct sockaddr_in6 *)&a));
  else
    ASSERT_EQ(0, uv_ip4_addr(host, port, (struct sockaddr_in *)&a));
  uv_tcp_init(&f->loop, &c->h.tcp);
  c->h.handle.data = c;
  ASSERT_EQ(0, uv_tcp_connect(&c->creq, &c->h.tcp, (struct sockaddr *)&a,
                              cli_on_connect));
  RUN_UNTIL(&f->loop, c->connected || c->connect_status != 0, 2000);
  ASSERT_EQ(0, c->connect_status);
}

typedef struct cwrite {
  uv_write_t req;
  char bytes[];
} cwrite;

static void cli_on_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void cli_send_n(cli *c, const char *bytes, size_t n) {
  cwrite *w = malloc(sizeof *w + n);
  uv_buf_t b;

  memcpy(w->bytes, bytes, n);
  b = uv_buf_init(w->bytes, (unsigned)n);
  if (uv_write(&w->req, &c->h.stream, &b, 1, cli_on_written) != 0)
    free(w);
}

static void cli_send(cli *c, const char *text) {
  cli_send_n(c, text, strlen(text));
}

static void cli_on_closed(uv_handle_t *h) {
  cli *c = h->data;

  c->closed = true;
}

static void cli_close(cli *c) {
  if (c->open) {
    c->open = false;
    uv_close(&c->h.handle, cli_on_closed);
  }
}

/* Every handle must be closed: the loop ends by itself and closes cleanly.
 * Then the clients' buffers and the directory go. */
static void fx_finish(fx *f, cli *clients, int n) {
  int i;

  fx_close_server(f);
  for (i = 0; i < n; i++)
    cli_close(&clients[i]);
  if (f->timer_open) {
    f->timer_open = false;
    uv_close((uv_handle_t *)&f->timer, NULL);
  }
  RUN_UNTIL(&f->loop, !uv_loop_alive(&f->loop), 5000);
  ASSERT_EQ(0, uv_loop_close(&f->loop));
  for (i = 0; i < n; i++)
    buf_free(&clients[i].in);
  test_rmtree(f->dir);
}

/* ---- Reading responses back ---------------------------------------------- */

typedef struct resp {
  int status;
  char content_type[128];
  char connection[64];
  char content_length[32];
  char body[4096]; /* the first bytes, NUL-terminated */
  size_t body_len; /* all of them */
} resp;

static void header_copy(const http__parser *p, const char *name, char *out,
                        size_t outlen) {
  size_t i;

  out[0] = '\0';
  for (i = 0; i < p->n_headers; i++)
    if (strcasecmp(p->headers[i].name, name) == 0)
      snprintf(out, outlen, "%s", p->headers[i].value);
}

/* Parses the complete responses in data (interim 1xx skipped); heads[i]
 * says the i-th answers a HEAD request (NULL: none does). Returns how many
 * there are, or -1 when the bytes are not HTTP. */
static int parse_resps(const char *data, size_t len, resp *out, int max,
                       const bool *heads) {
  http__limits lim = { 0, 0, 0, 64 * 1024 * 1024 };
  http__parser p;
  size_t off = 0, used, bn;
  const char *b;
  int n = 0, ev = HTTP__MORE;

  http__parser_init(&p, &lim);
  while (n < max && off < len) {
    http__parser_reset(&p, false, heads != NULL && heads[n], false);
    do {
      ev = http__parser_feed(&p, data + off, len - off, &used, &b, &bn);
      off += used;
    } while (ev == HTTP__HEAD);
    if (ev != HTTP__DONE)
      break;
    memset(&out[n], 0, sizeof out[n]);
    out[n].status = p.status;
    header_copy(&p, "Content-Type", out[n].content_type,
                sizeof out[n].content_type);
    header_copy(&p, "Connection", out[n].connection, sizeof out[n].connection);
    header_copy(&p, "Content-Length", out[n].content_length,
                sizeof out[n].content_length);
    out[n].body_len = p.body.len;
    if (p.body.len >= sizeof out[n].body)
      p.body.len = sizeof out[n].body - 1;
    if (p.body.len > 0)
      memcpy(out[n].body, p.body.data, p.body.len);
    out[n].body[p.body.len] = '\0';
    n++;
  }
  http__parser_free(&p);
  return ev == HTTP__ERROR ? -1 : n;
}

static int cli_resps(cli *c, resp *out, int max) {
  return parse_resps(c->in.data != NULL ? c->in.data : "", c->in.len, out, max,
                     NULL);
}

/* Runs the loop until c has n complete responses, and parses them. */
#define WAIT_RESPS(f, c, r, n)                                                 \
  do {                                                                         \
    RUN_UNTIL(&(f)->loop, cli_resps((c), (r), (n)) == (n) || (c)->eof, 3000);  \
    ASSERT_EQ((n), cli_resps((c), (r), (n)));                                  \
  } while (0)

/* What c received, as text. */
static const char *cli_text(cli *c) {
  const char *t = buf_cstr(&c->in);

  return t != NULL ? t : "";
}

/* The body of r is {"error":{"code":code,"message":...}} and the message
 * contains msg. */
static void assert_error_body(const resp *r, const char *code,
                              const char *msg) {
  json_error_t je;
  json_t *j = json_loadb(r->body, r->body_len, 0, &je), *e;

  ASSERT_STR_EQ("application/json", r->content_type);
  ASSERT(j != NULL);
  e = json_object_get(j, "error");
  ASSERT(json_is_object(e));
  ASSERT_EQ(2, json_object_size(e));
  ASSERT_STR_EQ(code, json_string_value(json_object_get(e, "code")));
  ASSERT_CONTAINS(json_string_value(json_object_get(e, "message")), msg);
  json_decref(j);
}

static void fx_timer(fx *f, uint64_t ms, uv_timer_cb cb) {
  if (!f->timer_open) {
    uv_timer_init(&f->loop, &f->timer);
    f->timer.data = f;
    f->timer_open = true;
  }
  uv_timer_start(&f->timer, cb, ms, 0);
}

/* ---- Plain requests ------------------------------------------------------ */

static void test_unix_get(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /v1/health?x=1 HTTP/1.1\r\nHost: x\r\nX-Tag: a b\r\n"
                  "\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT_STR_EQ("text/plain", r[0].content_type);
  ASSERT_STR_EQ("GET /v1/health?x=1\n", r[0].body);
  ASSERT_STR_EQ("", r[0].connection);
  ASSERT_EQ(1, f->n_req);
  ASSERT_STR_EQ("GET", f->req[0].method);
  ASSERT_STR_EQ("/v1/health?x=1", f->req[0].target);
  ASSERT_STR_EQ("Host: x\nX-Tag: a b\n", f->req[0].headers);
  ASSERT_EQ(0, f->req[0].body_len);
  ASSERT(!f->req[0].tcp);
  /* Kept alive. */
  RUN_FOR(&f->loop, 30);
  ASSERT(!c[0].eof);
  fx_finish(f, c, 1);
}

static void test_tcp_post(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];
  uint16_t port;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.unix_path = NULL;
  f->o.tcp_host = "127.0.0.1";
  fx_start(f);
  port = http_server_tcp_port(f->s);
  ASSERT_NE(0, port);
  cli_tcp(f, &c[0], "127.0.0.1", port);
  cli_send(&c[0], "POST /v1/sync/x/push HTTP/1.1\r\nHost: x\r\n"
                  "Content-Length: 11\r\n\r\nhello world");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT_STR_EQ("POST /v1/sync/x/push\nhello world", r[0].body);
  ASSERT_STR_EQ("hello world", f->req[0].body);
  ASSERT(f->req[0].tcp);
  ASSERT_EQ(-1, f->req[0].pid);
  ASSERT_UEQ((uid_t)-1, f->req[0].uid);
  fx_finish(f, c, 1);
}

static void test_tcp_ipv6(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];
  char err[256] = "";
  int rc;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.unix_path = NULL;
  f->o.tcp_host = "[::1]";
  rc = fx_try_start(f, err, sizeof err);
  if (rc == UV_EADDRNOTAVAIL || rc == UV_EAFNOSUPPORT) {
    printf("# no IPv6 loopback here: %s\n", err);
    ASSERT(strstr(err, "[::1]") != NULL);
    f->s = NULL;
    fx_finish(f, c, 0);
    return;
  }
  ASSERT_EQ(0, rc);
  cli_tcp(f, &c[0], "::1", http_server_tcp_port(f->s));
  cli_send(&c[0], "GET /six HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_STR_EQ("GET /six\n", r[0].body);
  fx_finish(f, c, 1);
}

static void test_tcp_host_invalid(void) {
  fx *f = &F;
  char err[256] = "";

  fx_init(f);
  f->o.unix_path = NULL;
  f->o.tcp_host = "localhost";
  ASSERT_EQ(UV_EINVAL, fx_try_start(f, err, sizeof err));
  ASSERT_STR_EQ("tcp_host localhost is not an IPv4 or IPv6 address", err);
  f->s = NULL;
  fx_finish(f, NULL, 0);
}

static void test_chunked_request_body(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0],
           "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
           "\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT_STR_EQ("POST /c\nhello world", r[0].body);
  ASSERT_EQ(11, f->req[0].body_len);
  fx_finish(f, c, 1);
}

static void test_keep_alive(void) {
  fx *f = &F;
  cli c[1];
  resp r[2];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /one HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  cli_send(&c[0], "GET /two HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 2);
  ASSERT_STR_EQ("GET /one\n", r[0].body);
  ASSERT_STR_EQ("GET /two\n", r[1].body);
  ASSERT_EQ(2, f->n_req);
  ASSERT(f->req[0].c == f->req[1].c);
  ASSERT(!c[0].eof);
  fx_finish(f, c, 1);
}

/* /slow is answered 100 ms later, the others at once. */
static void on_slow_timer(uv_timer_t *t) {
  fx *f = t->data;

  ASSERT_EQ(1, f->n_held);
  f->rc[0] =
      http_conn_respond(f->held[0], 200, "text/plain", NULL, 0, "slow", 4);
  f->n_held = 0;
}

static void on_request_slow_first(fx *f, http_conn *c,
                                  const http_srv_request *r) {
  if (strcmp(r->target, "/slow") == 0) {
    f->held[f->n_held++] = c;
    fx_timer(f, 100, on_slow_timer);
    return;
  }
  ASSERT_EQ(0, http_conn_respond(c, 200, "text/plain", NULL, 0, r->target,
                                 strlen(r->target)));
}

static void test_pipelining_in_order(void) {
  fx *f = &F;
  cli c[1];
  resp r[3];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_slow_first;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0],
           "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
           "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
           "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz");
  RUN_FOR(&f->loop, 50);
  /* The first is not answered: the others wait, unread or unparsed. */
  ASSERT_EQ(1, f->n_req);
  ASSERT_EQ(0, c[0].in.len);
  WAIT_RESPS(f, &c[0], r, 3);
  ASSERT_EQ(0, f->rc[0]);
  ASSERT_STR_EQ("slow", r[0].body);
  ASSERT_STR_EQ("/a", r[1].body);
  ASSERT_STR_EQ("/b", r[2].body);
  ASSERT_EQ(3, f->n_req);
  ASSERT_STR_EQ("xyz", f->req[2].body);
  fx_finish(f, c, 1);
}

static void test_http10_and_connection_close(void) {
  fx *f = &F;
  cli c[2];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_unix(f, &c[1]);
  cli_send(&c[0], "GET /old HTTP/1.0\r\n\r\n");
  cli_send(&c[1], "GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  RUN_UNTIL(&f->loop, c[0].eof && c[1].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[0], r, 1));
  ASSERT_STR_EQ("GET /old\n", r[0].body);
  ASSERT_STR_EQ("close", r[0].connection);
  ASSERT_EQ(1, cli_resps(&c[1], r, 1));
  ASSERT_STR_EQ("GET /bye\n", r[0].body);
  ASSERT_STR_EQ("close", r[0].connection);
  ASSERT_EQ(0, c[1].read_err);
  fx_finish(f, c, 2);
}

static void test_head_request(void) {
  fx *f = &F;
  cli c[1];
  resp r[2];
  bool heads[2] = { true, false };

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /g HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_req == 2 && c[0].in.len > 100, 2000);
  RUN_FOR(&f->loop, 20);
  ASSERT_EQ(2, parse_resps(c[0].in.data, c[0].in.len, r, 2, heads));
  ASSERT_STR_EQ("8", r[0].content_length); /* "HEAD /h\n" */
  ASSERT_EQ(0, r[0].body_len);
  ASSERT_STR_EQ("GET /g\n", r[1].body);
  fx_finish(f, c, 1);
}

static void test_expect_continue(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  "Expect: 100-continue\r\n\r\n");
  RUN_UNTIL(&f->loop, c[0].in.len >= 25, 2000);
  ASSERT_MEM_EQ("HTTP/1.1 100 Continue\r\n\r\n", 25, c[0].in.data, c[0].in.len);
  ASSERT_EQ(0, f->n_req);
  cli_send(&c[0], "hello");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT_STR_EQ("POST /e\nhello", r[0].body);
  fx_finish(f, c, 1);
}

/* ---- Peer credentials and the socket file -------------------------------- */

static void test_peer_credentials(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /who HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_EQ(getpid(), f->req[0].pid);
  ASSERT_UEQ(getuid(), f->req[0].uid);
  ASSERT_UEQ(getgid(), f->req[0].gid);
  fx_finish(f, c, 1);
}

/* A group of ours other than the primary one when there is one, so chown
 * really changes something. */
static gid_t some_group(void) {
  gid_t groups[64];
  int n = getgroups(64, groups), i;

  for (i = 0; i < n; i++)
    if (groups[i] != getgid())
      return groups[i];
  return getgid();
}

static void test_socket_mode_0600(void) {
  fx *f = &F;
  struct stat st;

  fx_init(f);
  fx_start(f);
  ASSERT_EQ(0, lstat(f->path, &st));
  ASSERT(S_ISSOCK(st.st_mode));
  ASSERT_EQ(0600, st.st_mode & 07777);
  ASSERT_UEQ(getuid(), st.st_uid);
  fx_close_server(f);
  /* The socket file goes with the server. */
  ASSERT_EQ(-1, lstat(f->path, &st));
  ASSERT_EQ(ENOENT, errno);
  fx_finish(f, NULL, 0);
}

static void test_socket_mode_0660_group(void) {
  fx *f = &F;
  struct stat st;
  gid_t g = some_group();
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.unix_mode = 0660;
  f->o.unix_gid = g;
  fx_start(f);
  ASSERT_EQ(0, lstat(f->path, &st));
  ASSERT(S_ISSOCK(st.st_mode));
  ASSERT_EQ(0660, st.st_mode & 07777);
  ASSERT_UEQ(g, st.st_gid);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  fx_finish(f, c, 1);
}

static void test_stale_socket_replaced(void) {
  fx *f = &F;
  struct sockaddr_un sa;
  struct stat st;
  cli c[1];
  resp r[1];
  int fd;

  memset(c, 0, sizeof c);
  fx_init(f);
  /* A socket file nobody listens on, as a crashed daemon leaves it. */
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  ASSERT(strlen(f->path) < sizeof sa.sun_path);
  strcpy(sa.sun_path, f->path);
  fd = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT(fd >= 0);
  ASSERT_EQ(0, bind(fd, (struct sockaddr *)&sa, sizeof sa));
  close(fd);
  ASSERT_EQ(0, lstat(f->path, &st));
  ASSERT(S_ISSOCK(st.st_mode));
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /fresh HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_STR_EQ("GET /fresh\n", r[0].body);
  fx_finish(f, c, 1);
}

static void test_regular_file_refused(void) {
  fx *f = &F;
  char err[512] = "", want[PATH_MAX + 64], *text;

  fx_init(f);
  test_write_file(f->path, "keep me", 7);
  ASSERT_EQ(UV_EEXIST, fx_try_start(f, err, sizeof err));
  ASSERT((size_t)snprintf(want, sizeof want,
                          "cannot listen on %s: the file exists and is "
                          "not a socket",
                          f->path) < sizeof want);
  ASSERT_CONTAINS(err, want);
  text = test_read_file(f->path, NULL);
  ASSERT_STR_EQ("keep me", text);
  free(text);
  f->s = NULL;
  fx_finish(f, NULL, 0);
}

static void test_live_socket_refused(void) {
  fx *f = &F;
  http_server *second = NULL;
  char err[512] = "", want[PATH_MAX + 64];
  struct stat st;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  ASSERT_EQ(UV_EADDRINUSE, http_server_start(&f->loop, &f->o, fx_on_request, f,
                                             &second, err, sizeof err));
  ASSERT(second == NULL);
  ASSERT((size_t)snprintf(
             want, sizeof want,
             "cannot listen on %s: another process is listening there",
             f->path) < sizeof want);
  ASSERT_CONTAINS(err, want);
  /* The first server is unharmed (the probe's connection just ends). */
  ASSERT_EQ(0, lstat(f->path, &st));
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /still HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_STR_EQ("GET /still\n", r[0].body);
  fx_finish(f, c, 1);
}

static void test_path_too_long(void) {
  fx *f = &F;
  char err[512] = "", path[300];

  fx_init(f);
  memset(path, 'a', sizeof path - 1);
  path[0] = '/';
  path[sizeof path - 1] = '\0';
  f->o.unix_path = path;
  ASSERT_EQ(UV_ENAMETOOLONG, fx_try_start(f, err, sizeof err));
  ASSERT_CONTAINS(err, "is too long (299 bytes, at most 107)");
  f->s = NULL;
  fx_finish(f, NULL, 0);
}

/* ---- Limits -------------------------------------------------------------- */

static void test_max_connections(void) {
  fx *f = &F;
  cli c[4];
  resp r[2];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_connections = 2;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_unix(f, &c[1]);
  /* Neither is idle after an answer: one has a request under way, the
   * other has not sent its first one yet. */
  cli_send(&c[0], "GET /0 HTTP/1.1\r\n");
  RUN_FOR(&f->loop, 30);
  /* The third gets 503 and is closed, without reading its request. */
  cli_unix(f, &c[2]);
  cli_send(&c[2], "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, c[2].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[2], r, 1));
  ASSERT_EQ(503, r[0].status);
  ASSERT_STR_EQ("close", r[0].connection);
  assert_error_body(&r[0], "too_many_connections",
                    "more than 2 connections at once (max_connections)");
  ASSERT_EQ(0, f->n_req);
  /* The others still work. */
  cli_send(&c[0], "Host: x\r\n\r\n");
  cli_send(&c[1], "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_STR_EQ("GET /0\n", r[0].body);
  WAIT_RESPS(f, &c[1], r, 1);
  ASSERT_STR_EQ("GET /1\n", r[0].body);
  /* A closed one frees its place. */
  cli_close(&c[1]);
  RUN_FOR(&f->loop, 30);
  cli_unix(f, &c[3]);
  cli_send(&c[3], "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[3], r, 1);
  ASSERT_EQ(200, r[0].status);
  fx_finish(f, c, 4);
}

/* A full listener closes its longest-idle kept-alive connection for a new
 * one, instead of refusing it. */
static void test_max_connections_evicts_idle(void) {
  fx *f = &F;
  cli c[4];
  resp r[2];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_connections = 2;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /0 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  cli_unix(f, &c[1]);
  cli_send(&c[1], "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[1], r, 1);
  /* Both answered and idle: c[0] has been idle longer. */
  cli_unix(f, &c[2]);
  cli_send(&c[2], "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[2], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT_STR_EQ("GET /2\n", r[0].body);
  RUN_UNTIL(&f->loop, c[0].eof, 2000);
  ASSERT_EQ(0, c[0].read_err);
  ASSERT_EQ(1, cli_resps(&c[0], r, 2)); /* nothing after its answer */
  ASSERT(!c[1].eof);
  /* c[1] is still served, and is now the longest idle: the next
   * newcomer takes its place, c[2] keeps its own. */
  cli_send(&c[1], "GET /1b HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[1], r, 2);
  ASSERT_STR_EQ("GET /1b\n", r[1].body);
  RUN_FOR(&f->loop, 5);
  cli_unix(f, &c[3]);
  cli_send(&c[3], "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[3], r, 1);
  ASSERT_EQ(200, r[0].status);
  RUN_UNTIL(&f->loop, c[2].eof, 2000);
  ASSERT(!c[1].eof);
  ASSERT_EQ(5, f->n_req);
  fx_finish(f, c, 4);
}

/* The unix socket and the TCP listener count their connections apart: a
 * full TCP listener locks nobody out of the unix socket, nor the other
 * way round. */
static void test_listener_budgets_apart(void) {
  fx *f = &F;
  cli c[8];
  resp r[1];
  int port, i;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.tcp_host = "127.0.0.1";
  f->o.max_connections = 2;
  f->o.tcp_max_connections = 3;
  fx_start(f);
  port = http_server_tcp_port(f->s);
  /* Three TCP connections that never send: the TCP budget is full. */
  for (i = 0; i < 3; i++)
    cli_tcp(f, &c[i], "127.0.0.1", port);
  cli_tcp(f, &c[3], "127.0.0.1", port);
  RUN_UNTIL(&f->loop, c[3].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[3], r, 1));
  ASSERT_EQ(503, r[0].status);
  assert_error_body(&r[0], "too_many_connections",
                    "more than 3 connections at once on the TCP listener "
                    "(tcp_max_connections)");
  /* The unix socket still has both its places. */
  cli_unix(f, &c[4]);
  cli_unix(f, &c[5]);
  cli_send(&c[4], "GET /u0 HTTP/1.1\r\nHost: x\r\n");
  cli_send(&c[5], "GET /u1 HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[5], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT_STR_EQ("GET /u1\n", r[0].body);
  /* And a full unix socket leaves the TCP places alone: one TCP client
   * leaves, and a new one is served. */
  cli_send(&c[5], "GET /u1b HTTP/1.1\r\n");
  RUN_FOR(&f->loop, 30);
  cli_unix(f, &c[6]);
  RUN_UNTIL(&f->loop, c[6].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[6], r, 1));
  ASSERT_EQ(503, r[0].status);
  assert_error_body(&r[0], "too_many_connections",
                    "more than 2 connections at once (max_connections)");
  cli_close(&c[0]);
  RUN_FOR(&f->loop, 30);
  cli_tcp(f, &c[7], "127.0.0.1", port);
  cli_send(&c[7], "GET /t HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[7], r, 1);
  ASSERT_EQ(200, r[0].status);
  ASSERT(f->req[f->n_req - 1].tcp);
  fx_finish(f, c, 8);
}

static void test_header_too_large(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];
  char big[2200];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_header_size = 1024;
  fx_start(f);
  cli_unix(f, &c[0]);
  memset(big, 'a', sizeof big);
  memcpy(big, "X-Big: ", 7);
  cli_send(&c[0], "GET / HTTP/1.1\r\nHost: x\r\n");
  cli_send_n(&c[0], big, sizeof big);
  cli_send(&c[0], "\r\n\r\n");
  RUN_UNTIL(&f->loop, c[0].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[0], r, 1));
  ASSERT_EQ(431, r[0].status);
  ASSERT_STR_EQ("close", r[0].connection);
  assert_error_body(&r[0], "headers_too_large",
                    "request head larger than 1024 bytes (max_header_size)");
  ASSERT_EQ(0, f->n_req);
  fx_finish(f, c, 1);
}

static void test_body_too_large(void) {
  fx *f = &F;
  cli c[2];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_body = 10;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_unix(f, &c[1]);
  /* Announced: refused before the body is read. */
  cli_send(&c[0], "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n");
  /* Chunked: refused when the body passes the cap. */
  cli_send(&c[1], "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  "\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n");
  RUN_UNTIL(&f->loop, c[0].eof && c[1].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[0], r, 1));
  ASSERT_EQ(413, r[0].status);
  assert_error_body(&r[0], "body_too_large",
                    "request body of 11 bytes is larger than 10 bytes "
                    "(max_body)");
  ASSERT_EQ(1, cli_resps(&c[1], r, 1));
  ASSERT_EQ(413, r[0].status);
  assert_error_body(&r[0], "body_too_large",
                    "request body larger than 10 bytes (max_body)");
  ASSERT_EQ(0, f->n_req);
  fx_finish(f, c, 2);
}

static void test_malformed_400(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "FOO / HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, c[0].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[0], r, 1));
  ASSERT_EQ(400, r[0].status);
  assert_error_body(&r[0], "bad_request",
                    "invalid HTTP request: Invalid method encountered");
  fx_finish(f, c, 1);
}

static void on_trickle(uv_timer_t *t) {
  cli *c = t->data;

  if (!c->eof)
    cli_send(c, "x");
}

static void test_slow_loris_408(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];
  uv_timer_t trickle;
  uint64_t t0;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.request_timeout = 300;
  fx_start(f);
  cli_unix(f, &c[0]);
  t0 = uv_now(&f->loop);
  cli_send(&c[0], "GET / HTTP/1.1\r\nX-Slow: ");
  /* Progress does not extend the deadline. */
  uv_timer_init(&f->loop, &trickle);
  trickle.data = &c[0];
  uv_timer_start(&trickle, on_trickle, 40, 40);
  RUN_UNTIL(&f->loop, c[0].eof, 3000);
  uv_close((uv_handle_t *)&trickle, NULL);
  ASSERT(uv_now(&f->loop) - t0 >= 250);
  ASSERT(uv_now(&f->loop) - t0 < 2000);
  ASSERT_EQ(1, cli_resps(&c[0], r, 1));
  ASSERT_EQ(408, r[0].status);
  assert_error_body(&r[0], "request_timeout",
                    "the request did not arrive whole within 300 ms "
                    "(request_timeout)");
  ASSERT_EQ(0, f->n_req);
  fx_finish(f, c, 1);
}

static void test_idle_timeout(void) {
  fx *f = &F;
  cli c[2];
  resp r[1];
  uint64_t t0;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.idle_timeout = 200;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_unix(f, &c[1]);
  cli_send(&c[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  t0 = uv_now(&f->loop);
  RUN_UNTIL(&f->loop, c[0].eof && c[1].eof, 2000);
  ASSERT(uv_now(&f->loop) - t0 >= 150);
  ASSERT_EQ(0, c[1].in.len); /* closed without a word */
  fx_finish(f, c, 2);
}

/* A connection closed for idling frees its place: a silent client holds
 * one only for idle_timeout. */
static void test_idle_timeout_frees_the_place(void) {
  fx *f = &F;
  cli c[3];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_connections = 1;
  f->o.idle_timeout = 200;
  fx_start(f);
  cli_unix(f, &c[0]);
  /* A connection not answered yet is not closed to make room. */
  cli_unix(f, &c[1]);
  RUN_UNTIL(&f->loop, c[1].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[1], r, 1));
  ASSERT_EQ(503, r[0].status);
  ASSERT(!c[0].eof);
  RUN_UNTIL(&f->loop, c[0].eof, 3000);
  cli_unix(f, &c[2]);
  cli_send(&c[2], "GET /after HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[2], r, 1);
  ASSERT_EQ(200, r[0].status);
  fx_finish(f, c, 3);
}

/* The default idle time is seconds, not a minute: a kept-alive
 * connection does not hold its place for long. */
static void test_idle_timeout_default(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];
  uint64_t t0;

  memset(c, 0, sizeof c);
  fx_init(f);
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  t0 = uv_now(&f->loop);
  RUN_UNTIL(&f->loop, c[0].eof, 20000);
  ASSERT(uv_now(&f->loop) - t0 >= 4000);
  ASSERT(uv_now(&f->loop) - t0 < 15000);
  fx_finish(f, c, 1);
}

/* Requests through the socketless connection: each vector's bytes, the
 * answer's status, error code and message. */
typedef struct vector {
  const char *name;
  const char *in;
  size_t len; /* 0: strlen(in) */
  int status;
  const char *code;
  const char *msg;
} vector;

static const vector vectors[] = {
  { "bad method", "FOO / HTTP/1.1\r\n\r\n", 0, 400, "bad_request",
    "invalid HTTP request: Invalid method encountered" },
  { "lower-case method", "get / HTTP/1.1\r\n\r\n", 0, 400, "bad_request",
    "invalid HTTP request: " },
  { "NUL in target", "GET /a\0b HTTP/1.1\r\n\r\n",
    sizeof "GET /a\0b HTTP/1.1\r\n\r\n" - 1, 400, "bad_request",
    "invalid HTTP request: " },
  { "bad header name", "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 0, 400,
    "bad_request",
    "invalid HTTP request: header name \"Bad Name\" is not a token" },
  { "control in header name", "GET / HTTP/1.1\r\nBad\001: x\r\n\r\n", 0, 400,
    "bad_request", "invalid HTTP request: Invalid header token" },
  { "space before colon",
    "POST / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 0, 400,
    "bad_request", "invalid HTTP request: Invalid header field char" },
  { "CL and TE",
    "POST / HTTP/1.1\r\nContent-Length: 3\r\n"
    "Transfer-Encoding: chunked\r\n\r\n",
    0, 400, "bad_request",
    "invalid HTTP request: Content-Length can't be present with "
    "Transfer-Encoding" },
  { "two Content-Lengths",
    "POST / HTTP/1.1\r\nContent-Length: 3\r\n"
    "Content-Length: 4\r\n\r\nabcd",
    0, 400, "bad_request", "invalid HTTP request: Duplicate Content-Length" },
  { "bad chunk size",
    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "zz\r\n",
    0, 400, "bad_request",
    "invalid HTTP request: Invalid character in chunk "
    "size" },
  { "gzip coding",
    "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n"
    "\r\n0\r\n\r\n",
    0, 501, "not_implemented",
    "Transfer-Encoding other than chunked is not supported: \"gzip, "
    "chunked\"" },
  { "identity coding",
    "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n"
    "\r\n",
    0, 501, "not_implemented", "Transfer-Encoding other than chunked" },
  { "chunked twice",
    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    0, 400, "bad_request",
    "invalid HTTP request: Invalid `Transfer-Encoding` header value" },
  { "gzip then chunked",
    "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    0, 501, "not_implemented",
    "Transfer-Encoding other than chunked is not supported: \"gzip\"" },
  { "CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 0, 501,
    "not_implemented", "CONNECT is not supported" },
  { "HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0, 505,
    "http_version_not_supported", "HTTP/2" },
  { "Expect other",
    "POST / HTTP/1.1\r\nContent-Length: 1\r\n"
    "Expect: 200-ok\r\n\r\nx",
    0, 417, "expectation_failed",
    "Expect: \"200-ok\" is not supported (only 100-continue)" },
  { "Content-Length over max_body",
    "POST / HTTP/1.1\r\nContent-Length: 17\r\n"
    "\r\n",
    0, 413, "body_too_large",
    "request body of 17 bytes is larger than 16 bytes (max_body)" },
  { "Content-Length overflow",
    "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 0,
    400, "bad_request", "invalid HTTP request: Content-Length overflow" },
  { "head over max_header_size",
    "GET /"
    "0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123"
    " HTTP/1.1\r\n\r\n",
    0, 431, "headers_too_large",
    "request head larger than 256 bytes (max_header_size)" },
  { "empty lines count",
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
    "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n",
    0, 431, "headers_too_large", "request head larger than 256 bytes" },
  { "trailers over the cap",
    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    "X-T: 0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123"
    "0123456789012345678901234567890123456789012345678901234567890123"
    "\r\n\r\n",
    0, 431, "headers_too_large",
    "request trailers larger than 256 bytes (max_header_size)" },
  { "HTTP/0.9", "GET /\r\n\r\n", 0, 505, "http_version_not_supported",
    "HTTP/0.9 is not supported" },
};

static void test_error_vectors(void) {
  size_t i;

  for (i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
    const vector *v = &vectors[i];
    fx *f = &F;
    buf out;
    resp r[1];
    int n;

    printf("# %s\n", v->name);
    fx_init(f);
    f->o.unix_path = NULL;
    f->o.max_header_size = 256;
    f->o.max_body = 16;
    fx_start(f);
    buf_init(&out, 0);
    ASSERT_EQ(0, http__server_fake_open(f->s, &out));
    ASSERT_EQ(0, http__server_fake_feed(f->s, v->in,
                                        v->len ? v->len : strlen(v->in)));
    RUN_UNTIL(&f->loop, !http__server_fake_pending(f->s), 2000);
    ASSERT(!http__server_fake_open_p(f->s));
    n = parse_resps(out.data != NULL ? out.data : "", out.len, r, 1, NULL);
    ASSERT_EQ(1, n);
    ASSERT_EQ(v->status, r[0].status);
    ASSERT_STR_EQ("close", r[0].connection);
    assert_error_body(&r[0], v->code, v->msg);
    ASSERT_EQ(0, f->n_req);
    buf_free(&out);
    fx_finish(f, NULL, 0);
  }
}

/* Requests the socketless connection accepts, one at a time or in one go. */
static void test_fake_pipelined(void) {
  static const char in[] =
      "\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
      "\r\n"
      "PUT /c HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
      "Content-Length: 2\r\n\r\nhi"
      "GET /d HTTP/1.0\r\n\r\n"
      "GET /never HTTP/1.1\r\n\r\n";
  size_t step;

  for (step = 1; step <= sizeof in; step += sizeof in / 3) {
    fx *f = &F;
    size_t off;
    resp r[5];
    buf out;

    fx_init(f);
    f->o.unix_path = NULL;
    fx_start(f);
    buf_init(&out, 0);
    ASSERT_EQ(0, http__server_fake_open(f->s, &out));
    for (off = 0; off < sizeof in - 1; off += step) {
      size_t n = sizeof in - 1 - off < step ? sizeof in - 1 - off : step;

      ASSERT_EQ(0, http__server_fake_feed(f->s, in + off, n));
      RUN_UNTIL(&f->loop, !http__server_fake_pending(f->s), 2000);
    }
    ASSERT(!http__server_fake_open_p(f->s));
    ASSERT_EQ(4, f->n_req);
    ASSERT_EQ(4, parse_resps(out.data, out.len, r, 5, NULL));
    ASSERT_STR_EQ("GET /a\n", r[0].body);
    ASSERT_STR_EQ("POST /b\nabc", r[1].body);
    ASSERT_STR_EQ("PUT /c\nhi", r[2].body);
    ASSERT_STR_EQ("GET /d\n", r[3].body);
    ASSERT_STR_EQ("close", r[3].connection);
    ASSERT_EQ(getpid(), f->req[0].pid);
    buf_free(&out);
    fx_finish(f, NULL, 0);
  }
}

/* ---- Answers ------------------------------------------------------------- */

static void on_request_bad_answers(fx *f, http_conn *c,
                                   const http_srv_request *r) {
  http_header bad_name[] = { { "Bad Name", "x" } };
  http_header bad_value[] = { { "X-A", "a\r\nb" } };
  http_header framing[] = { { "content-length", "3" } };
  http_header ok[] = { { "X-A", "1" }, { "Cache-Control", "no-store" } };

  (void)r;
  f->rc[0] = http_conn_respond(c, 200, "text/plain", bad_name, 1, "x", 1);
  f->rc[1] = http_conn_respond(c, 200, "text/plain", bad_value, 1, "x", 1);
  f->rc[2] = http_conn_respond(c, 200, "text/plain", framing, 1, "x", 1);
  f->rc[3] = http_conn_respond(c, 99, "text/plain", NULL, 0, "x", 1);
  f->rc[4] = http_conn_respond(c, 204, "text/plain", NULL, 0, "x", 1);
  f->rc[5] = http_conn_respond(c, 201, "text/plain", ok, 2, "made", 4);
  f->rc[6] = http_conn_respond(c, 200, "text/plain", NULL, 0, "again", 5);
  f->rc[7] = http_conn_stream_start(c, 200, "text/plain");
}

static void test_respond_checks(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];
  int i;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_bad_answers;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  for (i = 0; i < 5; i++)
    ASSERT_EQ(UV_EINVAL, f->rc[i]);
  ASSERT_EQ(0, f->rc[5]);
  ASSERT_EQ(UV_EINVAL, f->rc[6]);
  ASSERT_EQ(UV_EINVAL, f->rc[7]);
  ASSERT_EQ(201, r[0].status);
  ASSERT_STR_EQ("made", r[0].body);
  ASSERT_CONTAINS(cli_text(&c[0]), "\r\nX-A: 1\r\nCache-Control: no-store\r\n");
  fx_finish(f, c, 1);
}

static void on_request_error(fx *f, http_conn *c, const http_srv_request *r) {
  (void)r;
  f->rc[0] = http_conn_respond_error(c, 404, "not_found",
                                     "no consumer named \"a\\b\"\n");
}

static void test_respond_error(void) {
  fx *f = &F;
  cli c[1];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_error;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /v1/consumers/a HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_EQ(0, f->rc[0]);
  ASSERT_EQ(404, r[0].status);
  ASSERT_STR_EQ("{\"error\":{\"code\":\"not_found\",\"message\":\"no consumer "
                "named \\\"a\\\\b\\\"\\n\"}}",
                r[0].body);
  assert_error_body(&r[0], "not_found", "no consumer named \"a\\b\"\n");
  /* An answered error keeps the connection. */
  ASSERT_STR_EQ("", r[0].connection);
  fx_finish(f, c, 1);
}

/* ---- Streams ------------------------------------------------------------- */

static void on_stream_drain(http_conn *c, void *data) {
  fx *f = data;

  (void)c;
  f->drains++;
}

static void on_stream_closed(http_conn *c, void *data) {
  fx *f = data;
  int i;

  f->closes++;
  for (i = 0; i < f->n_held; i++)
    if (f->held[i] == c)
      f->held[i] = NULL;
}

static const http_stream_callbacks stream_cbs = { on_stream_drain,
                                                  on_stream_closed, &F };

/* Streams are held open; /s also writes two chunks at once. */
static void on_request_stream(fx *f, http_conn *c, const http_srv_request *r) {
  if (strcmp(r->target, "/plain") == 0) {
    ASSERT_EQ(0, http_conn_respond(c, 200, "text/plain", NULL, 0, "p", 1));
    return;
  }
  http_conn_stream_callbacks(c, &stream_cbs);
  ASSERT_EQ(0, http_conn_stream_start(c, 200, "text/event-stream"));
  if (strcmp(r->target, "/s") == 0) {
    ASSERT_EQ(0, http_conn_stream_write(c, "a", 1));
    ASSERT_EQ(0, http_conn_stream_write(c, "", 0)); /* no empty chunk */
    ASSERT_EQ(0, http_conn_stream_write(c, "bb", 2));
  }
  f->held[f->n_held++] = c;
}

/* Streams, answers the handler still owes and requests under way are not
 * idle: they keep their places and a newcomer is refused. */
static void on_request_stream_or_hold(fx *f, http_conn *c,
                                      const http_srv_request *r) {
  if (strcmp(r->target, "/hold") == 0) {
    http_conn_stream_callbacks(c, &stream_cbs);
    f->held[f->n_held++] = c;
    return;
  }
  if (strcmp(r->target, "/plain") == 0) {
    ASSERT_EQ(0, http_conn_respond(c, 200, "text/plain", NULL, 0, "p", 1));
    return;
  }
  http_conn_stream_callbacks(c, &stream_cbs);
  ASSERT_EQ(0, http_conn_stream_start(c, 200, "text/event-stream"));
  f->held[f->n_held++] = c;
}

static void test_busy_connections_keep_their_place(void) {
  fx *f = &F;
  cli c[5];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_connections = 3;
  f->on_request = on_request_stream_or_hold;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_unix(f, &c[1]);
  cli_send(&c[1], "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_unix(f, &c[2]);
  cli_send(&c[2], "GET /plain HTTP/1.1\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 2, 2000);
  cli_unix(f, &c[3]);
  RUN_UNTIL(&f->loop, c[3].eof, 2000);
  ASSERT_EQ(1, cli_resps(&c[3], r, 1));
  ASSERT_EQ(503, r[0].status);
  ASSERT(!c[0].eof && !c[1].eof && !c[2].eof);
  ASSERT_EQ(0, f->closes);
  /* Once the stream ends its connection is kept alive and idle: a
   * newcomer may take its place. */
  http_conn_stream_end(f->held[0]);
  RUN_FOR(&f->loop, 30);
  ASSERT(!c[0].eof);
  cli_unix(f, &c[4]);
  cli_send(&c[4], "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[4], r, 1);
  ASSERT_EQ(200, r[0].status);
  RUN_UNTIL(&f->loop, c[0].eof, 2000);
  ASSERT(!c[1].eof && !c[2].eof);
  ASSERT_EQ(
      0, http_conn_respond(f->held[1], 200, "text/plain", NULL, 0, "late", 4));
  fx_finish(f, c, 5);
}

static void on_stream_more(uv_timer_t *t) {
  fx *f = t->data;

  ASSERT_EQ(0, http_conn_stream_write(f->held[0], "ccc", 3));
  http_conn_stream_end(f->held[0]);
  ASSERT_EQ(UV_EINVAL, http_conn_stream_write(f->held[0], "d", 1));
}

static void test_stream_chunks(void) {
  fx *f = &F;
  cli c[1];
  resp r[2];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_stream;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop,
            c[0].in.len > 0 &&
                memmem(c[0].in.data, c[0].in.len, "2\r\nbb\r\n", 7) != NULL,
            2000);
  ASSERT_CONTAINS(cli_text(&c[0]), "Transfer-Encoding: chunked\r\n");
  ASSERT_EQ(0, cli_resps(&c[0], r, 1)); /* still open */
  fx_timer(f, 10, on_stream_more);
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_STR_EQ("text/event-stream", r[0].content_type);
  ASSERT_STR_EQ("abbccc", r[0].body);
  /* The connection serves the next request after the stream. */
  cli_send(&c[0], "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[0], r, 2);
  ASSERT_STR_EQ("p", r[1].body);
  ASSERT_EQ(0, f->closes); /* ended, not closed: no on_closed */
  fx_finish(f, c, 1);
}

static void test_stream_backpressure(void) {
  static char chunk[64 * 1024];
  fx *f = &F;
  cli c[1];
  resp r[1];
  size_t sent = 0, chunk_frame = 5 + sizeof chunk + 2;
  int rc = 0, writes = 0;

  memset(chunk, 'z', sizeof chunk);
  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_stream;
  fx_start(f);
  c[0].no_read = true;
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 1, 2000);
  while (writes < 64 &&
         (rc = http_conn_stream_write(f->held[0], chunk, sizeof chunk)) == 0) {
    sent += sizeof chunk;
    writes++;
  }
  ASSERT_EQ(UV_ENOBUFS, rc);
  ASSERT(http_conn_stream_queued(f->held[0]) > 1024 * 1024 - chunk_frame);
  ASSERT(http_conn_stream_queued(f->held[0]) <= 1024 * 1024);
  /* The client reads nothing: the queue cannot empty. */
  RUN_FOR(&f->loop, 100);
  ASSERT_EQ(0, f->drains);
  ASSERT(http_conn_stream_queued(f->held[0]) > 0);
  cli_read_start(&c[0]);
  RUN_UNTIL(&f->loop, f->drains == 1, 3000);
  ASSERT_EQ(0, http_conn_stream_queued(f->held[0]));
  ASSERT_EQ(0, http_conn_stream_write(f->held[0], "end", 3));
  sent += 3;
  http_conn_stream_end(f->held[0]);
  WAIT_RESPS(f, &c[0], r, 1);
  ASSERT_UEQ(sent, r[0].body_len);
  ASSERT_EQ(0, f->closes);
  fx_finish(f, c, 1);
}

static void test_stream_stalled_client(void) {
  static char chunk[64 * 1024];
  fx *f = &F;
  cli c[1];
  uint64_t t0;

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.write_timeout = 200;
  f->on_request = on_request_stream;
  fx_start(f);
  c[0].no_read = true;
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 1, 2000);
  while (http_conn_stream_write(f->held[0], chunk, sizeof chunk) == 0)
    ;
  t0 = uv_now(&f->loop);
  /* No progress for write_timeout: the stream is cut. */
  RUN_UNTIL(&f->loop, f->closes == 1, 3000);
  ASSERT(uv_now(&f->loop) - t0 >= 150);
  ASSERT(f->held[0] == NULL);
  fx_finish(f, c, 1);
}

static void test_stream_client_disconnect(void) {
  fx *f = &F;
  cli c[2];
  resp r[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_stream;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 1 && c[0].in.len > 0, 2000);
  cli_close(&c[0]);
  RUN_UNTIL(&f->loop, f->closes == 1, 2000);
  ASSERT(f->held[0] == NULL);
  RUN_FOR(&f->loop, 30);
  ASSERT_EQ(1, f->closes);
  /* Others are served. */
  cli_unix(f, &c[1]);
  cli_send(&c[1], "GET /plain HTTP/1.1\r\nHost: x\r\n\r\n");
  WAIT_RESPS(f, &c[1], r, 1);
  fx_finish(f, c, 2);
}

/* A client that sends while its stream is open is kept up to the head cap,
 * then closed. */
static void test_stream_client_sends_too_much(void) {
  fx *f = &F;
  cli c[1];
  char junk[2048];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->o.max_header_size = 1024;
  f->on_request = on_request_stream;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 1, 2000);
  memset(junk, 'j', sizeof junk);
  cli_send_n(&c[0], junk, 512);
  RUN_FOR(&f->loop, 30);
  ASSERT_EQ(0, f->closes);
  cli_send_n(&c[0], junk, sizeof junk);
  RUN_UNTIL(&f->loop, f->closes == 1 && c[0].eof, 2000);
  fx_finish(f, c, 1);
}

static void test_server_close_with_streams(void) {
  fx *f = &F;
  cli c[3];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_stream;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_unix(f, &c[1]);
  cli_unix(f, &c[2]);
  cli_send(&c[0], "GET /s HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_send(&c[1], "GET /t HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_send(&c[2], "GET /partial HTTP/1.1\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 2, 2000);
  http_server_close(f->s, fx_on_closed, f);
  RUN_UNTIL(&f->loop, f->closed && c[0].eof && c[1].eof && c[2].eof, 2000);
  ASSERT_EQ(2, f->closes);
  ASSERT_EQ(1, f->close_cbs);
  fx_finish(f, c, 3);
}

/* Answers held by the handler when the server closes: on_closed tells. */
static void on_request_hold(fx *f, http_conn *c, const http_srv_request *r) {
  (void)r;
  http_conn_stream_callbacks(c, &stream_cbs);
  f->held[f->n_held++] = c;
}

static void test_server_close_with_pending_answer(void) {
  fx *f = &F;
  cli c[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_hold;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 1, 2000);
  http_server_close(f->s, fx_on_closed, f);
  /* Closing, not freed yet: the answer is refused. */
  ASSERT_EQ(UV_ECANCELED,
            http_conn_respond(f->held[0], 200, "text/plain", NULL, 0, "x", 1));
  RUN_UNTIL(&f->loop, f->closed && c[0].eof, 2000);
  ASSERT_EQ(1, f->closes);
  ASSERT(f->held[0] == NULL);
  fx_finish(f, c, 1);
}

/* The client leaves before a late answer: the answer still succeeds from
 * the handler's view, and everything is freed. */
static void test_late_answer_client_gone(void) {
  fx *f = &F;
  cli c[1];

  memset(c, 0, sizeof c);
  fx_init(f);
  f->on_request = on_request_hold;
  fx_start(f);
  cli_unix(f, &c[0]);
  cli_send(&c[0], "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n");
  RUN_UNTIL(&f->loop, f->n_held == 1, 2000);
  cli_close(&c[0]);
  RUN_FOR(&f->loop, 30);
  ASSERT_EQ(0, f->closes); /* not reading: nothing noticed yet */
  ASSERT_EQ(
      0, http_conn_respond(f->held[0], 200, "text/plain", NULL, 0, "late", 4));
  RUN_FOR(&f->loop, 50);
  ASSERT_EQ(0, f->closes); /* answered: the callbacks were done with */
  fx_finish(f, c, 1);
}

static const test_case tests[] = { TEST(test_unix_get),
                                   TEST(test_tcp_post),
                                   TEST(test_tcp_ipv6),
                                   TEST(test_tcp_host_invalid),
                                   TEST(test_chunked_request_body),
                                   TEST(test_keep_alive),
                                   TEST(test_pipelining_in_order),
                                   TEST(test_http10_and_connection_close),
                                   TEST(test_head_request),
                                   TEST(test_expect_continue),
                                   TEST(test_peer_credentials),
                                   TEST(test_socket_mode_0600),
                                   TEST(test_socket_mode_0660_group),
                                   TEST(test_stale_socket_replaced),
                                   TEST(test_regular_file_refused),
                                   TEST(test_live_socket_refused),
                                   TEST(test_path_too_long),
                                   TEST(test_max_connections),
                                   TEST(test_max_connections_evicts_idle),
                                   TEST(test_busy_connections_keep_their_place),
                                   TEST(test_listener_budgets_apart),
                                   TEST(test_header_too_large),
                                   TEST(test_body_too_large),
                                   TEST(test_malformed_400),
                                   TEST(test_slow_loris_408),
                                   TEST(test_idle_timeout),
                                   TEST(test_idle_timeout_frees_the_place),
                                   TEST(test_idle_timeout_default),
                                   TEST(test_error_vectors),
                                   TEST(test_fake_pipelined),
                                   TEST(test_respond_checks),
                                   TEST(test_respond_error),
                                   TEST(test_stream_chunks),
                                   TEST(test_stream_backpressure),
                                   TEST(test_stream_stalled_client),
                                   TEST(test_stream_client_disconnect),
                                   TEST(test_stream_client_sends_too_much),
                                   TEST(test_server_close_with_streams),
                                   TEST(test_server_close_with_pending_answer),
                                   TEST(test_late_answer_client_gone),
                                   { NULL, NULL } };
TEST_MAIN(tests)
