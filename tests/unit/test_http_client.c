/* loop/http_client against servers scripted inside the test (libuv TCP and
 * unix sockets, proxies among them) and `openssl s_server` for https; plus
 * the response parser (loop/http_parse.h) on its own. */
#include "loop/http_client.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "loop/http_parse.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- loop helpers -------------------------------------------------------- */

static void srv_free_all(void);

/* Every handle must be closed: the loop ends by itself and closes cleanly.
 * Then the test's servers are freed. */
#define FINISH_LOOP(loop)                                                      \
  do {                                                                         \
    RUN_UNTIL(loop, !uv_loop_alive(loop), 5000);                               \
    ASSERT_EQ(0, uv_loop_close(loop));                                         \
    srv_free_all();                                                            \
  } while (0)

static void setup_once(void) {
  static bool done;

  if (done)
    return;
  done = true;
  signal(SIGPIPE, SIG_IGN);
  unsetenv("http_proxy");
  unsetenv("HTTP_PROXY");
  unsetenv("https_proxy");
  unsetenv("HTTPS_PROXY");
  unsetenv("no_proxy");
  unsetenv("NO_PROXY");
}

/* ---- a scripted server ----------------------------------------------------
 *
 * Accepts connections, splits what arrives into requests (head, then a
 * Content-Length body) and hands each to the test's handler, which answers
 * with srv_send, srv_drip or srv_close, or nothing. As a CONNECT proxy it
 * can also relay a connection to another port. */

typedef struct sconn sconn;
typedef struct server server;

struct sconn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  uv_timer_t timer; /* srv_drip */
  uv_tcp_t up;      /* relay: the upstream connection */
  uv_connect_t upc;
  server *sv;
  sconn *next;
  int index;    /* accept order, from 0 */
  int requests; /* requests seen on this connection */
  bool open, up_open, relaying;
  int closes;
  char in[65536];
  size_t in_len;
  char upbuf[65536];
  char *drip;
  size_t drip_len, drip_off;
  bool drip_close;
};

struct server {
  uv_loop_t *loop;
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } l;
  int port;
  int accepts;
  int requests;
  void (*handler)(sconn *c, const char *req, size_t len);
  const char *reply;      /* the default handler sends this... */
  bool close_after_reply; /* ... and then closes */
  char last[8192];        /* the last request, NUL-terminated */
  char all[32768];        /* every request byte, in order */
  size_t all_len;
  int relay_port; /* relay CONNECTs to 127.0.0.1:relay_port */
  sconn *conns;
  void *data;
};

typedef struct swrite {
  uv_write_t req;
  char bytes[];
} swrite;

static void srv_on_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void srv_write_to(uv_stream_t *s, const char *bytes, size_t n) {
  swrite *w = malloc(sizeof *w + n + 1);
  uv_buf_t b;

  memcpy(w->bytes, bytes, n);
  b = uv_buf_init(w->bytes, (unsigned)n);
  if (uv_write(&w->req, s, &b, 1, srv_on_written) != 0)
    free(w);
}

static void srv_send_n(sconn *c, const char *bytes, size_t n) {
  if (c->open)
    srv_write_to(&c->h.stream, bytes, n);
}

static void srv_send(sconn *c, const char *text) {
  srv_send_n(c, text, strlen(text));
}

/* The servers of the running test; their connections are freed together
 * after the loop closed, so tests may look at closed ones. */
static server *servers[8];
static int n_servers;

static void srv_on_closed(uv_handle_t *h) {
  sconn *c = h->data;

  c->closes--;
}

static void srv_free_all(void) {
  int i;

  for (i = 0; i < n_servers; i++) {
    while (servers[i]->conns != NULL) {
      sconn *c = servers[i]->conns;

      servers[i]->conns = c->next;
      free(c->drip);
      free(c);
    }
  }
  n_servers = 0;
}

/* Closes the connection (and its relay); the sconn stays listed, closed. */
static void srv_close(sconn *c) {
  if (!c->open)
    return;
  c->open = false;
  uv_close(&c->h.handle, srv_on_closed);
  uv_close((uv_handle_t *)&c->timer, srv_on_closed);
  if (c->up_open) {
    c->up_open = false;
    uv_close((uv_handle_t *)&c->up, srv_on_closed);
  }
}

static void srv_on_drip(uv_timer_t *t) {
  sconn *c = t->data;

  if (c->drip_off < c->drip_len) {
    srv_send_n(c, c->drip + c->drip_off, 1);
    c->drip_off++;
  }
  if (c->drip_off == c->drip_len) {
    uv_timer_stop(t);
    if (c->drip_close)
      srv_close(c);
  }
}

/* Sends text one byte per write, ms apart, then closes when asked. */
static void srv_drip(sconn *c, const char *text, uint64_t ms, bool close) {
  free(c->drip);
  c->drip = strdup(text);
  c->drip_len = strlen(text);
  c->drip_off = 0;
  c->drip_close = close;
  uv_timer_start(&c->timer, srv_on_drip, ms, ms);
}

static void srv_default(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  if (c->sv->reply != NULL)
    srv_send(c, c->sv->reply);
  if (c->sv->close_after_reply)
    srv_close(c);
}

static size_t content_length(const char *head, size_t n) {
  const char *p = head, *end = head + n;

  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));

    if (eol == NULL)
      break;
    if (strncasecmp(p, "Content-Length:", 15) == 0)
      return (size_t)strtoul(p + 15, NULL, 10);
    p = eol + 1;
  }
  return 0;
}

static void up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  sconn *c = h->data;

  (void)suggested;
  *buf = uv_buf_init(c->upbuf, sizeof c->upbuf);
}

static void up_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sconn *c = s->data;

  if (n > 0)
    srv_send_n(c, buf->base, (size_t)n);
  else if (n < 0)
    srv_close(c);
}

static void up_on_connect(uv_connect_t *req, int status) {
  sconn *c = req->data;

  if (!c->open)
    return;
  if (status != 0) {
    srv_send(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
    srv_close(c);
    return;
  }
  srv_send(c, "HTTP/1.1 200 Connection established\r\n\r\n");
  c->relaying = true;
  uv_read_start((uv_stream_t *)&c->up, up_alloc, up_on_read);
}

/* A CONNECT proxy: opens the upstream, answers 200, then relays. */
static void srv_relay(sconn *c) {
  struct sockaddr_in a;

  uv_ip4_addr("127.0.0.1", c->sv->relay_port, &a);
  uv_tcp_init(c->sv->loop, &c->up);
  c->up.data = c;
  c->up_open = true;
  c->closes++;
  c->upc.data = c;
  uv_tcp_connect(&c->upc, &c->up, (struct sockaddr *)&a, up_on_connect);
}

static void srv_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  sconn *c = h->data;

  (void)suggested;
  if (c->in_len == sizeof c->in)
    *buf = uv_buf_init(NULL, 0);
  else
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(sizeof c->in - c->in_len));
}

static void srv_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sconn *c = s->data;
  server *sv = c->sv;

  if (n < 0) {
    srv_close(c);
    return;
  }
  if (c->relaying) {
    if (c->up_open)
      srv_write_to((uv_stream_t *)&c->up, buf->base, (size_t)n);
    return;
  }
  c->in_len += (size_t)n;
  while (c->open && !c->relaying) {
    const char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    size_t head, total;

    if (end == NULL)
      break;
    head = (size_t)(end - c->in) + 4;
    total = head + content_length(c->in, head);
    if (c->in_len < total)
      break;
    if (total < sizeof sv->last) {
      memcpy(sv->last, c->in, total);
      sv->last[total] = '\0';
    }
    if (sv->all_len + total < sizeof sv->all) {
      memcpy(sv->all + sv->all_len, c->in, total);
      sv->all_len += total;
      sv->all[sv->all_len] = '\0';
    }
    sv->requests++;
    c->requests++;
    if (sv->relay_port != 0 && strncmp(c->in, "CONNECT ", 8) == 0) {
      srv_relay(c);
      c->in_len = 0;
      break;
    }
    sv->handler(c, c->in, total);
    memmove(c->in, c->in + total, c->in_len - total);
    c->in_len -= total;
  }
}

static void srv_on_connection(uv_stream_t *l, int status) {
  server *sv = l->data;
  sconn *c;

  if (status < 0)
    return;
  c = calloc(1, sizeof *c);
  c->sv = sv;
  c->index = sv->accepts++;
  if (l->type == UV_TCP)
    uv_tcp_init(sv->loop, &c->h.tcp);
  else
    uv_pipe_init(sv->loop, &c->h.pipe, 0);
  uv_timer_init(sv->loop, &c->timer);
  c->h.handle.data = c;
  c->timer.data = c;
  c->open = true;
  c->closes = 2;
  c->next = sv->conns;
  sv->conns = c;
  if (uv_accept(l, &c->h.stream) != 0) {
    srv_close(c);
    return;
  }
  uv_read_start(&c->h.stream, srv_alloc, srv_on_read);
}

static void srv_start(server *sv, uv_loop_t *loop) {
  struct sockaddr_in a;
  struct sockaddr_storage ss;
  int len = sizeof ss;

  setup_once();
  memset(sv, 0, sizeof *sv);
  sv->loop = loop;
  sv->handler = srv_default;
  ASSERT(n_servers < 8);
  servers[n_servers++] = sv;
  uv_ip4_addr("127.0.0.1", 0, &a);
  ASSERT_EQ(0, uv_tcp_init(loop, &sv->l.tcp));
  sv->l.handle.data = sv;
  ASSERT_EQ(0, uv_tcp_bind(&sv->l.tcp, (struct sockaddr *)&a, 0));
  ASSERT_EQ(0, uv_listen(&sv->l.stream, 64, srv_on_connection));
  ASSERT_EQ(0, uv_tcp_getsockname(&sv->l.tcp, (struct sockaddr *)&ss, &len));
  sv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void srv_start_unix(server *sv, uv_loop_t *loop, const char *path) {
  setup_once();
  memset(sv, 0, sizeof *sv);
  sv->loop = loop;
  sv->handler = srv_default;
  ASSERT(n_servers < 8);
  servers[n_servers++] = sv;
  ASSERT_EQ(0, uv_pipe_init(loop, &sv->l.pipe, 0));
  sv->l.handle.data = sv;
  ASSERT_EQ(0, uv_pipe_bind(&sv->l.pipe, path));
  ASSERT_EQ(0, uv_listen(&sv->l.stream, 64, srv_on_connection));
}

static void srv_stop(server *sv) {
  sconn *c;

  for (c = sv->conns; c != NULL; c = c->next)
    srv_close(c);
  uv_close(&sv->l.handle, NULL);
}

/* The connection that arrived index-th. */
static sconn *srv_conn(server *sv, int index) {
  sconn *c;

  for (c = sv->conns; c != NULL; c = c->next)
    if (c->index == index)
      return c;
  return NULL;
}

/* The path of a request line, copied into out. */
static const char *req_path(const char *req, char *out, size_t outlen) {
  const char *sp = strchr(req, ' '), *sp2;

  out[0] = '\0';
  if (sp != NULL && (sp2 = strchr(sp + 1, ' ')) != NULL &&
      (size_t)(sp2 - sp) < outlen) {
    memcpy(out, sp + 1, (size_t)(sp2 - sp - 1));
    out[sp2 - sp - 1] = '\0';
  }
  return out;
}

/* ---- a client that records everything ------------------------------------ */

typedef struct result {
  http_client *c;
  http_req *r;
  int heads, bodies, dones;
  int status;      /* from on_head, else from on_done's resp */
  int done_status; /* on_done's status */
  bool done_resp;  /* on_done had a response */
  char msg[256];
  char url[512];
  char ctype[128];
  char body[65536];
  size_t body_len;
  int bodies_while_paused;
  bool paused;
  /* What the callbacks do. */
  bool pause_in_body;  /* pause at the first body callback */
  bool cancel_in_body; /* cancel at the first body callback */
  bool pause_in_head;
  int head_rc;
  int body_rc;
  struct result *next_on_done; /* start next_url with this from on_done */
  const char *next_url;
  struct result *next_in_body;   /* ... or from the first on_body */
  struct result *cancel_in_head; /* cancel this one's request in on_head */
  bool in_start; /* on_done must never run inside http_request_start */
  bool done_in_start;
} result;

static void start_get(http_client *c, const char *url, bool streaming,
                      result *res);

static int on_head(http_req *r, const http_response *resp, void *data) {
  result *res = data;
  const char *ct = http_response_header(resp, "content-type");

  ASSERT(r == res->r || res->r == NULL);
  res->heads++;
  res->status = resp->status;
  snprintf(res->url, sizeof res->url, "%s", resp->url);
  snprintf(res->ctype, sizeof res->ctype, "%s", ct ? ct : "");
  if (res->pause_in_head) {
    http_req_pause(r);
    res->paused = true;
  }
  if (res->cancel_in_head != NULL) {
    http_req_cancel(res->cancel_in_head->r);
    res->cancel_in_head = NULL;
  }
  return res->head_rc;
}

static int on_body(http_req *r, const char *bytes, size_t n, void *data) {
  result *res = data;

  res->bodies++;
  if (res->paused)
    res->bodies_while_paused++;
  if (res->body_len + n <= sizeof res->body) {
    memcpy(res->body + res->body_len, bytes, n);
    res->body_len += n;
  }
  if (res->cancel_in_body) {
    res->cancel_in_body = false;
    http_req_cancel(r);
  }
  if (res->next_in_body != NULL) {
    result *n = res->next_in_body;

    res->next_in_body = NULL;
    start_get(res->c, res->next_url, false, n);
  }
  if (res->pause_in_body) {
    res->pause_in_body = false;
    http_req_pause(r);
    res->paused = true;
  }
  return res->body_rc;
}

static void start_next(result *res);

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  result *res = data;

  (void)r;
  res->dones++;
  if (res->in_start)
    res->done_in_start = true;
  res->done_status = status;
  res->done_resp = resp != NULL;
  snprintf(res->msg, sizeof res->msg, "%s", msg ? msg : "");
  if (resp != NULL) {
    res->status = resp->status;
    snprintf(res->url, sizeof res->url, "%s", resp->url);
    if (resp->body != NULL && resp->body_len <= sizeof res->body) {
      memcpy(res->body, resp->body, resp->body_len);
      res->body_len = resp->body_len;
    }
  }
  if (res->next_on_done != NULL)
    start_next(res);
}

static const http_callbacks cbs = { on_head, on_body, on_done };

static int start_req(http_client *c, const http_request *req, result *res) {
  int rc;

  res->c = c;
  res->in_start = true;
  rc = http_request_start(c, req, &cbs, res, &res->r);
  res->in_start = false;
  return rc;
}

static void start_get(http_client *c, const char *url, bool streaming,
                      result *res) {
  http_request req = { 0 };

  req.method = "GET";
  req.url = url;
  req.streaming = streaming;
  ASSERT_EQ(0, start_req(c, &req, res));
}

static void start_next(result *res) {
  result *n = res->next_on_done;

  res->next_on_done = NULL;
  start_get(res->c, res->next_url, false, n);
}

static http_client *make_client(uv_loop_t *loop, const http_client_opts *o) {
  http_client *c = NULL;
  http_client_opts def = { 0 };
  char err[256] = "";

  ASSERT_EQ(0, http_client_create(loop, o ? o : &def, &c, err, sizeof err));
  ASSERT_STR_EQ("", err);
  return c;
}

static void on_client_closed(void *data) {
  (*(int *)data)++;
}

static void close_client(uv_loop_t *loop, http_client *c) {
  int closed = 0;

  http_client_close(c, on_client_closed, &closed);
  ASSERT_EQ(0, closed); /* never inside the call */
  RUN_UNTIL(loop, closed == 1, 5000);
}

static char *url_of(const server *sv, const char *path) {
  static char urls[4][512];
  static int next;
  char *u = urls[next++ % 4];

  snprintf(u, sizeof urls[0], "http://127.0.0.1:%d%s", sv->port, path);
  return u;
}

/* ---- the parser on its own ----------------------------------------------- */

static void test_parser_vectors(void) {
  static const struct {
    const char *in;
    bool streaming, head;
    int want; /* the last event */
    int status;
    const char *body; /* all body bytes */
    int err;
    const char *msg;
  } v[] = {
    { "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false, false,
      HTTP__DONE, 200, "hello", 0, "" },
    { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;x=y\r\nhello\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n",
      true, false, HTTP__DONE, 200, "hello!", 0, "" },
    { "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
      "Content-Length: 2\r\n\r\nok",
      false, false, HTTP__DONE, 201, "ok", 0, "" },
    { "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false, false,
      HTTP__DONE, 204, "", 0, "" },
    { "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", true, false,
      HTTP__DONE, 304, "", 0, "" },
    { "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", false, true,
      HTTP__DONE, 200, "", 0, "" },
    /* Close-delimited: the body is whatever came; EOF ends it. */
    { "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n",
      true, false, HTTP__DONE, 200, ": hi\n\n", 0, "" },
    { "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false, false,
      HTTP__ERROR, 200, "abc", HTTP_ECLOSED,
      "connection closed before the end of the body" },
    { "HTTP/1.1 200 OK\r\nContent-Len", false, false, HTTP__ERROR, 0, "",
      HTTP_ECLOSED, "connection closed in the middle of the response head" },
    { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", true,
      false, HTTP__ERROR, 200, "", HTTP_EPARSE,
      "invalid HTTP response: Invalid character in chunk size "
      "(HPE_INVALID_CHUNK_SIZE)" },
    { "SSH-2.0-OpenSSH\r\n", false, false, HTTP__ERROR, 0, "", HTTP_EPARSE,
      "invalid HTTP response: Expected HTTP/ (HPE_INVALID_CONSTANT)" },
    { "HTTP/1.1 101 Switching Protocols\r\n\r\n", false, false, HTTP__ERROR, 0,
      "", HTTP_EPARSE,
      "unexpected 101 Switching Protocols (no upgrade was asked for)" },
    { "HTTP/1.1 099 Odd\r\n\r\n", false, false, HTTP__ERROR, 0, "", HTTP_EPARSE,
      "invalid status code 99" },
    { "HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n", false, false, HTTP__ERROR, 0, "",
      HTTP_EPARSE,
      "invalid HTTP response: Invalid header value char "
      "(HPE_INVALID_HEADER_TOKEN)" },
  };
  http__limits lim = { 0, 0, 0, 0 };
  size_t i, split;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    /* Whole, and split at every byte: the result must not change. */
    for (split = 0; split <= strlen(v[i].in); split++) {
      http__parser p;
      const char *in = v[i].in, *b;
      size_t n = strlen(in), off = 0, used, bn, cut = split ? split : n;
      char body[256];
      size_t blen = 0;
      int ev;

      http__parser_init(&p, &lim);
      http__parser_reset(&p, v[i].streaming, v[i].head, false);
      for (;;) {
        size_t len = off < cut ? cut - off : n - off;

        ev = http__parser_feed(&p, in + off, len, &used, &b, &bn);
        off += used;
        if (ev == HTTP__BODY) {
          memcpy(body + blen, b, bn);
          blen += bn;
        }
        if (ev == HTTP__DONE || ev == HTTP__ERROR)
          break;
        if (ev == HTTP__MORE && off == n) {
          ev = http__parser_eof(&p);
          break;
        }
      }
      if (!v[i].streaming) {
        memcpy(body, p.body.data ? p.body.data : "", p.body.len);
        blen = p.body.len;
      }
      ASSERT_EQ(v[i].want, ev);
      ASSERT_EQ(v[i].status, p.status);
      ASSERT_MEM_EQ(v[i].body, strlen(v[i].body), body, blen);
      ASSERT_EQ(v[i].err, p.err);
      ASSERT_STR_EQ(v[i].msg, p.msg);
      http__parser_free(&p);
    }
  }
}

static void test_parser_caps(void) {
  static const struct {
    const char *prefix;
    char fill;
    size_t fill_n;
    const char *suffix;
    int err;
    const char *msg;
  } v[] = {
    { "HTTP/1.1 200 ", 'O', 100, "\r\n\r\n", HTTP_ESTATUSLINE,
      "status line longer than 64 bytes" },
    /* Cut short: the status line never ends. */
    { "HTTP/1.1 200 ", 'O', 100, "", HTTP_ESTATUSLINE,
      "status line longer than 64 bytes" },
    { "HTTP/1.1 200 OK\r\nX-Big: ", 'v', 300, "\r\n\r\n", HTTP_EHEADERS,
      "headers longer than 256 bytes" },
    /* Whitespace gives no callback, and counts all the same. */
    { "HTTP/1.1 200 OK\r\nX-Big:", ' ', 300, "", HTTP_EHEADERS,
      "headers longer than 256 bytes" },
    { "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n", 0, 0,
      "\r\n", HTTP_EHEADERS, "more than 4 headers" },
    { "HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n", 'x', 200, "",
      HTTP_EBODY, "body larger than 128 bytes (Content-Length 200)" },
    { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "c8\r\n",
      'x', 200, "\r\n0\r\n\r\n", HTTP_EBODY, "body larger than 128 bytes" },
    { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: ", 't', 300,
      "\r\n\r\n", HTTP_EHEADERS, "trailers longer than 256 bytes" },
  };
  http__limits lim = { 64, 256, 4, 128 };
  size_t i, chunk;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    for (chunk = 1; chunk <= 4096; chunk *= 8) {
      char in[1024];
      size_t n, off = 0, used, bn;
      const char *b;
      http__parser p;
      int ev = HTTP__MORE;

      n = (size_t)snprintf(in, sizeof in, "%s", v[i].prefix);
      memset(in + n, v[i].fill, v[i].fill_n);
      n += v[i].fill_n;
      n += (size_t)snprintf(in + n, sizeof in - n, "%s", v[i].suffix);
      http__parser_init(&p, &lim);
      http__parser_reset(&p, false, false, false);
      while (off < n || ev != HTTP__MORE) {
        size_t len = n - off < chunk ? n - off : chunk;

        ev = http__parser_feed(&p, in + off, len, &used, &b, &bn);
        off += used;
        if (ev == HTTP__ERROR || ev == HTTP__DONE)
          break;
      }
      ASSERT_EQ(HTTP__ERROR, ev);
      ASSERT_EQ(v[i].err, p.err);
      ASSERT_STR_EQ(v[i].msg, p.msg);
      http__parser_free(&p);
    }
  }
}

/* ---- bodies -------------------------------------------------------------- */

static void test_content_length(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 };
  char want[128];

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
             "Content-Length: 5\r\n\r\nhello";
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/x?y=1"), false, &res);
  ASSERT_EQ(0, res.dones); /* never inside http_request_start */
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(0, res.done_status);
  ASSERT_STR_EQ("", res.msg);
  ASSERT(res.done_resp);
  ASSERT_EQ(1, res.heads);
  ASSERT_EQ(200, res.status);
  ASSERT_STR_EQ("text/plain", res.ctype);
  ASSERT_MEM_EQ("hello", 5, res.body, res.body_len);
  ASSERT_STR_EQ(url_of(&sv, "/x?y=1"), res.url);
  snprintf(want, sizeof want,
           "GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           "User-Agent: tether/" TETHER_VERSION "\r\n\r\n",
           sv.port);
  ASSERT_STR_EQ(want, sv.last);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, res.dones);
}

static void test_chunked_streaming(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 }, res2 = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             "6\r\nhello \r\n5;ext=1\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n";
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/"), true, &res);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(0, res.done_status);
  ASSERT_MEM_EQ("hello world", 11, res.body, res.body_len);
  ASSERT(res.bodies >= 1);

  /* The same, dribbled one byte per write on the pooled connection,
   * buffered. */
  sv.reply = NULL;
  {
    static const char *text =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    sconn *k;

    start_get(c, url_of(&sv, "/"), false, &res2);
    RUN_UNTIL(&loop, sv.requests == 2, 5000);
    k = srv_conn(&sv, 0);
    srv_drip(k, text, 1, false);
    RUN_UNTIL(&loop, res2.dones == 1, 5000);
    ASSERT_EQ(0, res2.done_status);
    ASSERT_MEM_EQ("abcde", 5, res2.body, res2.body_len);
    ASSERT_EQ(0, res2.bodies); /* buffered: no on_body */
  }
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void reply_sse_and_close(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  srv_send(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; "
              "charset=utf-8\r\nConnection: keep-alive\r\n\r\n: hi\n\n"
              "id: 1\ndata: x\n\n");
  srv_close(c);
}

/* nchan's way: no Content-Length, no chunking; the close ends the body. */
static void test_close_delimited(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 }, res2 = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = reply_sse_and_close;
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/sub/demo"), true, &res);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(0, res.done_status);
  ASSERT_STR_EQ("text/event-stream; charset=utf-8", res.ctype);
  ASSERT_MEM_EQ(": hi\n\nid: 1\ndata: x\n\n", 21, res.body, res.body_len);

  start_get(c, url_of(&sv, "/sub/demo"), false, &res2);
  RUN_UNTIL(&loop, res2.dones == 1, 5000);
  ASSERT_EQ(0, res2.done_status);
  ASSERT_MEM_EQ(": hi\n\nid: 1\ndata: x\n\n", 21, res2.body, res2.body_len);
  ASSERT_EQ(2, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void test_truncated_body(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  sv.close_after_reply = true;
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/"), false, &res);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(HTTP_ECLOSED, res.done_status);
  ASSERT_STR_EQ("connection closed before the end of the body", res.msg);
  ASSERT(res.done_resp);
  ASSERT_EQ(200, res.status);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* HEAD, 204 and 304 have no body whatever the headers say; 1xx answers are
 * skipped. The connection stays usable after each. */
static void no_body_handler(sconn *c, const char *req, size_t len) {
  char path[64];

  (void)len;
  req_path(req, path, sizeof path);
  if (strcmp(path, "/204") == 0)
    srv_send(c, "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
  else if (strcmp(path, "/304") == 0)
    srv_send(c, "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n"
                "Content-Length: 7\r\n\r\n");
  else if (strcmp(path, "/100") == 0)
    srv_send(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                "Link: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                "\r\nok");
  else
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
}

static void test_no_body_responses(void) {
  static const struct {
    const char *method, *path;
    int status;
    const char *body;
  } v[] = {
    { "HEAD", "/head", 200, "" },  { "GET", "/204", 204, "" },
    { "GET", "/304", 304, "" },    { "GET", "/100", 200, "ok" },
    { "HEAD", "/again", 200, "" },
  };
  uv_loop_t loop;
  server sv;
  http_client *c;
  size_t i;

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = no_body_handler;
  c = make_client(&loop, NULL);
  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    result res = { 0 };
    http_request req = { 0 };

    req.method = v[i].method;
    req.url = url_of(&sv, v[i].path);
    ASSERT_EQ(0, start_req(c, &req, &res));
    RUN_UNTIL(&loop, res.dones == 1, 5000);
    ASSERT_EQ(0, res.done_status);
    ASSERT_EQ(v[i].status, res.status);
    ASSERT_MEM_EQ(v[i].body, strlen(v[i].body), res.body, res.body_len);
  }
  /* Every answer left the connection clean for the next request. */
  ASSERT_EQ(1, sv.accepts);
  ASSERT_EQ(5, sv.requests);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void test_bad_response(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/"), true, &res);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(HTTP_EPARSE, res.done_status);
  ASSERT_STR_EQ("invalid HTTP response: Invalid character in chunk size "
                "(HPE_INVALID_CHUNK_SIZE)",
                res.msg);
  ASSERT_STR_EQ("bad_response", http_strerror(res.done_status));
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* ---- the pool ------------------------------------------------------------ */

static void test_keep_alive_reuse(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 }, b = { 0 }, d = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/1"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  start_get(c, url_of(&sv, "/2"), false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  /* A request started from on_done gets the connection just released. */
  b.next_on_done = &d;
  b.next_url = url_of(&sv, "/3");
  b.dones = 0;
  start_get(c, url_of(&sv, "/2b"), false, &b);
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_EQ(0, b.done_status);
  ASSERT_EQ(0, d.done_status);
  ASSERT_EQ(1, sv.accepts);
  ASSERT_EQ(4, sv.requests);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* Answers each request 20 ms later. */
static void on_slow_reply(uv_timer_t *t) {
  sconn *c = t->data;

  srv_send(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
}

static void slow_handler(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  uv_timer_start(&c->timer, on_slow_reply, 20, 0);
}

static void test_max_connections_queue(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result res[6];
  int i;

  memset(res, 0, sizeof res);
  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = slow_handler;
  o.max_connections = 2;
  c = make_client(&loop, &o);
  for (i = 0; i < 6; i++)
    start_get(c, url_of(&sv, "/q"), false, &res[i]);
  RUN_UNTIL(&loop, res[5].dones == 1, 5000);
  for (i = 0; i < 6; i++) {
    ASSERT_EQ(1, res[i].dones);
    ASSERT_EQ(0, res[i].done_status);
  }
  ASSERT_EQ(2, sv.accepts);
  ASSERT_EQ(6, sv.requests);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* ---- the control lane ---------------------------------------------------- */

/* /stream: a head and one event, then the stream stays open; /hold: no
 * answer at all; anything else: a short answer, kept alive. */
static void lane_handler(sconn *c, const char *req, size_t len) {
  char path[128];

  (void)len;
  req_path(req, path, sizeof path);
  if (strncmp(path, "/stream", 7) == 0)
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
                "8\r\ndata: x\n\r\n");
  else if (strcmp(path, "/hold") != 0)
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
}

static void start_stream(http_client *c, const char *url, result *res) {
  http_request req = { 0 };

  req.method = "GET";
  req.url = url;
  req.streaming = true;
  req.long_lived = true;
  ASSERT_EQ(0, start_req(c, &req, res));
}

/* Streams held open take no slot of the pool: with max_connections = 1
 * and two streams open, a short request goes out at once on the pool's one
 * connection, and the next one reuses it. */
static void test_streams_leave_the_pool_free(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result s1 = { 0 }, s2 = { 0 }, a = { 0 }, b = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = lane_handler;
  o.max_connections = 1;
  c = make_client(&loop, &o);
  start_stream(c, url_of(&sv, "/stream1"), &s1);
  start_stream(c, url_of(&sv, "/stream2"), &s2);
  RUN_UNTIL(&loop, s1.bodies == 1 && s2.bodies == 1, 5000);
  ASSERT_EQ(2, sv.accepts);
  start_get(c, url_of(&sv, "/short"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_MEM_EQ("ok", 2, a.body, a.body_len);
  start_get(c, url_of(&sv, "/short2"), false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_EQ(3, sv.accepts); /* one pooled connection, kept alive */
  ASSERT_EQ(0, s1.dones);
  ASSERT_EQ(0, s2.dones);
  http_req_cancel(s1.r);
  http_req_cancel(s2.r);
  RUN_UNTIL(&loop, s1.dones == 1 && s2.dones == 1, 5000);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* Nor does a stream wait in the queue behind short requests: the pool's
 * one connection is busy with an unanswered request and another waits for
 * it, and a stream still opens at once. */
static void test_streams_never_wait_for_the_pool(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result held = { 0 }, queued = { 0 }, st = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = lane_handler;
  o.max_connections = 1;
  c = make_client(&loop, &o);
  start_get(c, url_of(&sv, "/hold"), false, &held);
  start_get(c, url_of(&sv, "/short"), false, &queued);
  RUN_UNTIL(&loop, sv.requests == 1, 5000);
  start_stream(c, url_of(&sv, "/stream"), &st);
  RUN_UNTIL(&loop, st.bodies == 1, 5000);
  ASSERT_EQ(200, st.status);
  ASSERT_EQ(0, queued.dones); /* still behind /hold */
  http_req_cancel(held.r);
  RUN_UNTIL(&loop, queued.dones == 1, 5000);
  ASSERT_EQ(0, queued.done_status);
  http_req_cancel(st.r);
  RUN_UNTIL(&loop, st.dones == 1 && held.dones == 1, 5000);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* max_streams: one stream past the cap ends at once with a message that
 * names the cap; a stream that ended gives its place back, and its
 * connection is closed, not pooled. */
static void test_max_streams(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result s1 = { 0 }, s2 = { 0 }, s3 = { 0 }, s4 = { 0 }, a = { 0 };
  char want[256];

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = lane_handler;
  o.max_connections = 1;
  o.max_streams = 2;
  c = make_client(&loop, &o);
  start_stream(c, url_of(&sv, "/stream1"), &s1);
  start_stream(c, url_of(&sv, "/stream2"), &s2);
  start_stream(c, url_of(&sv, "/stream3"), &s3);
  ASSERT(!s3.done_in_start);
  RUN_UNTIL(&loop, s3.dones == 1, 5000);
  ASSERT_EQ(HTTP_ESTREAMS, s3.done_status);
  ASSERT_STR_EQ("too_many_streams", http_strerror(s3.done_status));
  snprintf(want, sizeof want,
           "more than 2 long-lived streams at once to 127.0.0.1:%d "
           "(max_streams)",
           sv.port);
  ASSERT_STR_EQ(want, s3.msg);
  ASSERT(!s3.done_resp);
  RUN_UNTIL(&loop, s1.bodies == 1 && s2.bodies == 1, 5000);
  ASSERT_EQ(2, sv.accepts);
  /* The cap is the lane's own: short requests still have the pool. */
  start_get(c, url_of(&sv, "/short"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  http_req_cancel(s1.r);
  RUN_UNTIL(&loop, s1.dones == 1, 5000);
  start_stream(c, url_of(&sv, "/stream4"), &s4);
  RUN_UNTIL(&loop, s4.bodies == 1, 5000);
  ASSERT_EQ(4, sv.accepts); /* a connection of its own again */
  http_req_cancel(s2.r);
  http_req_cancel(s4.r);
  RUN_UNTIL(&loop, s2.dones == 1 && s4.dones == 1, 5000);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A request of a full pool that times out gives its slot to the one
 * waiting behind it at once. */
static void test_timeout_frees_the_pool_slot(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  http_request req = { 0 };
  result held = { 0 }, queued = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = lane_handler;
  o.max_connections = 1;
  c = make_client(&loop, &o);
  req.method = "GET";
  req.url = url_of(&sv, "/hold");
  req.timeout = 50;
  ASSERT_EQ(0, start_req(c, &req, &held));
  start_get(c, url_of(&sv, "/short"), false, &queued);
  RUN_UNTIL(&loop, held.dones == 1, 5000);
  ASSERT_EQ(HTTP_EDEADLINE, held.done_status);
  RUN_UNTIL(&loop, queued.dones == 1, 5000);
  ASSERT_EQ(0, queued.done_status);
  ASSERT_MEM_EQ("ok", 2, queued.body, queued.body_len);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A stream whose body ends cleanly closes its connection: the next request
 * (a short one) opens the pool's own rather than inheriting it. */
static void end_stream_handler(sconn *c, const char *req, size_t len) {
  char path[128];

  (void)len;
  req_path(req, path, sizeof path);
  if (strcmp(path, "/stream") == 0)
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                "Content-Length: 8\r\n\r\ndata: x\n");
  else
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
}

static void test_ended_stream_is_not_pooled(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result st = { 0 }, a = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = end_stream_handler;
  c = make_client(&loop, NULL);
  start_stream(c, url_of(&sv, "/stream"), &st);
  RUN_UNTIL(&loop, st.dones == 1, 5000);
  ASSERT_EQ(0, st.done_status);
  RUN_UNTIL(&loop, !srv_conn(&sv, 0)->open, 5000);
  start_get(c, url_of(&sv, "/short"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_EQ(2, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A full pool whose connections close after each answer (Connection:
 * close) or break under their request still serves the queue: each closed
 * connection's slot goes to the next request waiting for one. */
static void close_handler(sconn *c, const char *req, size_t len) {
  char path[128];

  (void)len;
  req_path(req, path, sizeof path);
  if (strcmp(path, "/reset") == 0) {
    srv_close(c);
    return;
  }
  srv_send(c, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n"
              "\r\nok");
  srv_close(c);
}

static void test_closed_connections_free_their_slots(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result res[4];
  int i;

  memset(res, 0, sizeof res);
  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = close_handler;
  o.max_connections = 1;
  c = make_client(&loop, &o);
  start_get(c, url_of(&sv, "/a"), false, &res[0]);
  start_get(c, url_of(&sv, "/reset"), false, &res[1]);
  start_get(c, url_of(&sv, "/b"), false, &res[2]);
  start_get(c, url_of(&sv, "/c"), false, &res[3]);
  RUN_UNTIL(&loop, res[3].dones == 1, 5000);
  for (i = 0; i < 4; i++)
    ASSERT_EQ(1, res[i].dones);
  ASSERT_EQ(0, res[0].done_status);
  ASSERT_EQ(HTTP_ECLOSED, res[1].done_status);
  ASSERT_EQ(0, res[2].done_status);
  ASSERT_EQ(0, res[3].done_status);
  ASSERT_EQ(4, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* The first connection answers once with keep-alive, then closes on the
 * next request without a byte: the client must retry on a new one. */
static void stale_handler(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  if (c->index == 0 && c->requests == 2)
    srv_close(c);
  else
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
}

static void test_stale_pooled_connection_retry(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 }, b = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = stale_handler;
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/1"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  start_get(c, url_of(&sv, "/2"), false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_MEM_EQ("ok", 2, b.body, b.body_len);
  ASSERT_EQ(2, sv.accepts);
  ASSERT_EQ(3, sv.requests);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A fresh connection that closes without a byte is not retried. */
static void test_fresh_connection_closed(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.close_after_reply = true;
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/1"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(HTTP_ECLOSED, a.done_status);
  ASSERT_STR_EQ("connection closed before any response byte", a.msg);
  ASSERT(!a.done_resp);
  ASSERT_EQ(1, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* Idle pooled connections are watched: a peer's close, or the pool's idle
 * timeout, takes them out, so the next request opens a new one. */
static void test_pool_idle_close_and_timeout(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 }, b = { 0 }, d = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  o.pool_idle_timeout = 40;
  c = make_client(&loop, &o);
  start_get(c, url_of(&sv, "/1"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  /* The server closes the idle connection. */
  srv_close(srv_conn(&sv, 0));
  RUN_FOR(&loop, 20);
  start_get(c, url_of(&sv, "/2"), false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_EQ(2, sv.accepts);
  ASSERT_EQ(2, sv.requests);
  /* The pool closes it after 40 ms idle. */
  RUN_UNTIL(&loop, !srv_conn(&sv, 1)->open, 2000);
  start_get(c, url_of(&sv, "/3"), false, &d);
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_EQ(0, d.done_status);
  ASSERT_EQ(3, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* A response that says Connection: close, or HTTP/1.0, is not reused. */
static void test_connection_close_not_reused(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 }, b = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n"
             "\r\nok";
  c = make_client(&loop, NULL);
  start_get(c, url_of(&sv, "/1"), false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  sv.reply = "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
  start_get(c, url_of(&sv, "/2"), false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_EQ(0, b.done_status);
  ASSERT_EQ(2, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void test_connect_refused(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 };
  char url[64], want[128];
  int port;

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  port = sv.port;
  srv_stop(&sv);
  RUN_FOR(&loop, 5);
  c = make_client(&loop, NULL);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
  start_get(c, url, false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(UV_ECONNREFUSED, a.done_status);
  snprintf(want, sizeof want, "connect to 127.0.0.1:%d failed: ", port);
  ASSERT_CONTAINS(a.msg, want);
  close_client(&loop, c);
  FINISH_LOOP(&loop);
}

/* ---- caps ---------------------------------------------------------------- */

static void test_caps(void) {
  static const struct {
    const char *reply;
    bool streaming;
    int code;
    const char *msg;
  } v[] = {
    { "HTTP/1.1 200 OOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOO"
      "OOOOOOOOOOOOOOOOOOOOOOO\r\n\r\n",
      false, HTTP_ESTATUSLINE, "status line longer than 64 bytes" },
    { "HTTP/1.1 200 OK\r\nX-Big: "
      "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
      "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
      "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
      "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv"
      "\r\n\r\n",
      false, HTTP_EHEADERS, "headers longer than 256 bytes" },
    { "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n", false,
      HTTP_EHEADERS, "more than 4 headers" },
    { "HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n", false, HTTP_EBODY,
      "body larger than 128 bytes (Content-Length 200)" },
    { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "50\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "x"
      "xxxxxxxxxxxxx\r\n"
      "50\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
      "x"
      "xxxxxxxxxxxxx\r\n0\r\n\r\n",
      false, HTTP_EBODY, "body larger than 128 bytes" },
  };
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  size_t i;

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  o.max_status_line = 64;
  o.max_header_size = 256;
  o.max_headers = 4;
  o.max_body = 128;
  c = make_client(&loop, &o);
  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    result res = { 0 };

    sv.reply = v[i].reply;
    start_get(c, url_of(&sv, "/"), v[i].streaming, &res);
    RUN_UNTIL(&loop, res.dones == 1, 5000);
    ASSERT_EQ(v[i].code, res.done_status);
    ASSERT_STR_EQ(v[i].msg, res.msg);
  }
  /* A streaming body has no cap. */
  {
    result res = { 0 };

    sv.reply = "HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n"
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
               "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
               "xxxxxxxxxxx";
    start_get(c, url_of(&sv, "/"), true, &res);
    RUN_UNTIL(&loop, res.dones == 1, 5000);
    ASSERT_EQ(0, res.done_status);
    ASSERT_EQ(200, res.body_len);
  }
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* ---- timeouts ------------------------------------------------------------ */

static void test_connect_timeout(void) {
  uv_loop_t loop;
  http_client *c;
  http_client_opts o = { 0 };
  result res = { 0 };
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  int lfd, fill[2], i;
  char url[64], want[128];

  /* A listener with a backlog of 0 and a queued connection drops further
   * SYNs, so a connect to it hangs. */
  setup_once();
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
  o.connect_timeout = 100;
  c = make_client(&loop, &o);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(a.sin_port));
  start_get(c, url, false, &res);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(HTTP_ETIMEOUT, res.done_status);
  snprintf(want, sizeof want,
           "connect to 127.0.0.1:%d took longer than 100 ms (connect_timeout)",
           ntohs(a.sin_port));
  ASSERT_STR_EQ(want, res.msg);
  ASSERT_STR_EQ("timeout", http_strerror(res.done_status));
  close_client(&loop, c);
  FINISH_LOOP(&loop);
  for (i = 0; i < 2; i++)
    close(fill[i]);
  close(lfd);
}

static void silent_handler(sconn *c, const char *req, size_t len) {
  (void)c;
  (void)req;
  (void)len;
}

/* A head that starts and never ends: the status line, then silence. */
static void half_head_handler(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  srv_send(c, "HTTP/1.1 200 OK\r\nContent-");
}

static void test_response_timeout(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  http_request req = { 0 };
  result res = { 0 }, b = { 0 }, d = { 0 };
  char want[128];

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = silent_handler;
  o.response_timeout = 50;
  c = make_client(&loop, &o);
  start_get(c, url_of(&sv, "/"), false, &res);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(HTTP_ETIMEOUT, res.done_status);
  snprintf(want, sizeof want,
           "no response head from 127.0.0.1:%d within 50 ms "
           "(response_timeout)",
           sv.port);
  ASSERT_STR_EQ(want, res.msg);
  ASSERT(!res.done_resp);
  /* The half-used connection is closed, not pooled. */
  RUN_UNTIL(&loop, !srv_conn(&sv, 0)->open, 2000);

  /* The first bytes of a head do not stop the clock, on a stream either. */
  sv.handler = half_head_handler;
  start_get(c, url_of(&sv, "/half"), true, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(HTTP_ETIMEOUT, b.done_status);
  ASSERT_CONTAINS(b.msg, "within 50 ms (response_timeout)");
  ASSERT_EQ(0, b.heads);

  /* A request's own value wins over the client's. */
  sv.handler = silent_handler;
  req.url = url_of(&sv, "/long");
  req.response_timeout = 300;
  ASSERT_EQ(0, start_req(c, &req, &d));
  RUN_FOR(&loop, 150);
  ASSERT_EQ(0, d.dones);
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_CONTAINS(d.msg, "within 300 ms (response_timeout)");
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void head_then_silence(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  srv_send(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
              ": hi\n\n");
}

static void drip_handler(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  srv_drip(c, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789", 5,
           false);
}

static void test_idle_and_request_timeouts(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 }, b = { 0 }, d = { 0 };
  http_request req = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  c = make_client(&loop, NULL);

  /* A stream that goes quiet. */
  sv.handler = head_then_silence;
  req.url = url_of(&sv, "/sse");
  req.streaming = true;
  req.idle_timeout = 50;
  ASSERT_EQ(0, start_req(c, &req, &a));
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(HTTP_ETIMEOUT, a.done_status);
  ASSERT_STR_EQ("no data for 50 ms (idle_timeout)", a.msg);
  ASSERT_MEM_EQ(": hi\n\n", 6, a.body, a.body_len);

  /* A byte every 5 ms keeps the idle timer from firing ... */
  sv.handler = drip_handler;
  req.url = url_of(&sv, "/drip");
  req.idle_timeout = 60;
  ASSERT_EQ(0, start_req(c, &req, &b));
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_MEM_EQ("0123456789", 10, b.body, b.body_len);

  /* ... but not the whole-request timeout. */
  req.streaming = false;
  req.idle_timeout = 0;
  req.timeout = 60;
  ASSERT_EQ(0, start_req(c, &req, &d));
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_EQ(HTTP_EDEADLINE, d.done_status);
  ASSERT_STR_EQ("no complete response within 60 ms (timeout)", d.msg);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* The loop held up past its timers (SIGSTOP, a paused VM, a slow callback):
 * libuv runs due timers before it reads the sockets, so the bytes that
 * arrived meanwhile must be read before the peer is called silent. */
static void test_held_loop_reads_before_timeouts(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  http_request req = { 0 };
  result a = { 0 }, b = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = head_then_silence;
  o.response_timeout = 50;
  c = make_client(&loop, &o);
  req.url = url_of(&sv, "/sse");
  req.streaming = true;
  req.idle_timeout = 50;
  ASSERT_EQ(0, start_req(c, &req, &a));
  RUN_UNTIL(&loop, a.bodies == 1, 5000);
  /* The peer writes (straight into the socket), then the loop is held for
   * four idle timeouts. */
  srv_send(srv_conn(&sv, 0), "data: x\n\n");
  uv_sleep(200);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_MEM_EQ(": hi\n\ndata: x\n\n", 15, a.body, a.body_len);
  /* Then real silence: the idle timeout still fires. */
  ASSERT_EQ(HTTP_ETIMEOUT, a.done_status);
  ASSERT_STR_EQ("no data for 50 ms (idle_timeout)", a.msg);

  /* The head arrives while the loop is held past response_timeout. */
  sv.handler = silent_handler;
  start_get(c, url_of(&sv, "/late"), false, &b);
  RUN_UNTIL(&loop, sv.requests == 2, 5000);
  srv_send(srv_conn(&sv, 1), "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
  uv_sleep(200);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_MEM_EQ("ok", 2, b.body, b.body_len);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* ---- redirects ----------------------------------------------------------- */

static void redirect_handler(sconn *c, const char *req, size_t len) {
  char path[128], text[512];
  server *sv = c->sv;

  (void)len;
  req_path(req, path, sizeof path);
  if (strcmp(path, "/r1") == 0) {
    srv_send(c, "HTTP/1.1 302 Found\r\nLocation: r2?x=1\r\n"
                "Content-Length: 4\r\n\r\nmove");
  } else if (strcmp(path, "/r2?x=1") == 0) {
    snprintf(text, sizeof text,
             "HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:%d/final\r\n"
             "Content-Length: 0\r\n\r\n",
             sv->port);
    srv_send(c, text);
  } else if (strcmp(path, "/post303") == 0) {
    srv_send(c, "HTTP/1.1 303 See Other\r\nLocation: /after\r\n"
                "Content-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/post307") == 0) {
    srv_send(c, "HTTP/1.1 307 Temporary Redirect\r\nLocation: /after\r\n"
                "Content-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/loop") == 0) {
    srv_send(c, "HTTP/1.1 308 Permanent Redirect\r\nLocation: /loop\r\n"
                "Content-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/nolocation") == 0) {
    srv_send(c, "HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/tohttps") == 0) {
    srv_send(c, "HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:1/\r\n"
                "Content-Length: 0\r\n\r\n");
  } else if (strcmp(path, "/badloc") == 0) {
    srv_send(c, "HTTP/1.1 302 Found\r\nLocation: ftp://x/\r\n"
                "Content-Length: 0\r\n\r\n");
  } else {
    snprintf(text, sizeof text,
             "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(path),
             path);
    srv_send(c, text);
  }
}

static void test_redirects(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 }, b = { 0 }, d = { 0 }, e = { 0 }, f = { 0 }, g = { 0 },
         h = { 0 }, k = { 0 };
  http_request req = { 0 };
  http_header hdr[] = { { "Content-Type", "application/json" },
                        { "Authorization", "Bearer t" } };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = redirect_handler;
  c = make_client(&loop, NULL);

  /* 302 to a relative reference, then 301 to an absolute URL. */
  req.url = url_of(&sv, "/r1");
  req.max_redirects = 5;
  ASSERT_EQ(0, start_req(c, &req, &a));
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_EQ(1, a.heads); /* on_head only for the final answer */
  ASSERT_EQ(200, a.status);
  ASSERT_STR_EQ(url_of(&sv, "/final"), a.url);
  ASSERT_MEM_EQ("/final", 6, a.body, a.body_len);

  /* 303 after a POST: GET, no body, no Content-Type. */
  req.method = "POST";
  req.url = url_of(&sv, "/post303");
  req.body = "{\"a\":1}";
  req.body_len = 7;
  req.headers = hdr;
  req.n_headers = 2;
  ASSERT_EQ(0, start_req(c, &req, &b));
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT(strncmp(sv.last, "GET /after HTTP/1.1\r\n", 21) == 0);
  ASSERT(strstr(sv.last, "Content-Type") == NULL);
  ASSERT(strstr(sv.last, "Content-Length") == NULL);
  /* Same origin: the credentials stay. */
  ASSERT_CONTAINS(sv.last, "Authorization: Bearer t\r\n");

  /* 307 keeps the method and the body. */
  req.url = url_of(&sv, "/post307");
  ASSERT_EQ(0, start_req(c, &req, &d));
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_EQ(0, d.done_status);
  ASSERT(strncmp(sv.last, "POST /after HTTP/1.1\r\n", 22) == 0);
  ASSERT_CONTAINS(sv.last, "Content-Length: 7\r\n\r\n{\"a\":1}");

  /* A loop ends at max_redirects. */
  memset(&req, 0, sizeof req);
  req.url = url_of(&sv, "/loop");
  req.max_redirects = 3;
  ASSERT_EQ(0, start_req(c, &req, &e));
  RUN_UNTIL(&loop, e.dones == 1, 5000);
  ASSERT_EQ(HTTP_EREDIRECTS, e.done_status);
  ASSERT_STR_EQ("more than 3 redirects (max_redirects); the last to /loop",
                e.msg);

  /* max_redirects 0: the 3xx is the answer. */
  req.max_redirects = 0;
  ASSERT_EQ(0, start_req(c, &req, &f));
  RUN_UNTIL(&loop, f.dones == 1, 5000);
  ASSERT_EQ(0, f.done_status);
  ASSERT_EQ(308, f.status);
  ASSERT_EQ(1, f.heads);

  /* No Location: the 3xx is the answer too. */
  req.max_redirects = 5;
  req.url = url_of(&sv, "/nolocation");
  ASSERT_EQ(0, start_req(c, &req, &g));
  RUN_UNTIL(&loop, g.dones == 1, 5000);
  ASSERT_EQ(0, g.done_status);
  ASSERT_EQ(302, g.status);

  /* To https without TLS settings, and to a scheme that is not http. */
  req.url = url_of(&sv, "/tohttps");
  ASSERT_EQ(0, start_req(c, &req, &h));
  RUN_UNTIL(&loop, h.dones == 1, 5000);
  ASSERT_EQ(HTTP_EURL, h.done_status);
  ASSERT_STR_EQ("redirect to https://127.0.0.1:1/: https needs TLS settings",
                h.msg);
  req.url = url_of(&sv, "/badloc");
  ASSERT_EQ(0, start_req(c, &req, &k));
  RUN_UNTIL(&loop, k.dones == 1, 5000);
  ASSERT_EQ(HTTP_EURL, k.done_status);
  ASSERT_STR_EQ("redirect to ftp://x/: URL scheme must be http or https, not "
                "ftp",
                k.msg);

  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* One request through a client made with o, redirected by a to b (307 to
 * another port: another origin), with hdr. */
static void redirect_across(const http_client_opts *o, const http_header *hdr,
                            size_t n, server *a, server *b) {
  uv_loop_t loop;
  http_client *c;
  result res = { 0 };
  http_request req = { 0 };
  char reply[256];

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(a, &loop);
  srv_start(b, &loop);
  snprintf(reply, sizeof reply,
           "HTTP/1.1 307 Temporary Redirect\r\nLocation: "
           "http://127.0.0.1:%d/there\r\nContent-Length: 0\r\n\r\n",
           b->port);
  a->reply = reply;
  b->reply = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  c = make_client(&loop, o);
  req.url = url_of(a, "/here");
  req.headers = hdr;
  req.n_headers = n;
  req.max_redirects = 1;
  ASSERT_EQ(0, start_req(c, &req, &res));
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(0, res.done_status);
  ASSERT_EQ(1, b->requests);
  close_client(&loop, c);
  srv_stop(a);
  srv_stop(b);
  RUN_UNTIL(&loop, !uv_loop_alive(&loop), 5000);
  ASSERT_EQ(0, uv_loop_close(&loop));
}

/* Credentials are not carried to another origin: Authorization, Cookie
 * and the headers the client was told are for the origin (an upstream's
 * header.NAME keys), unless it keeps those. */
static void test_redirect_cross_origin_drops_credentials(void) {
  static const char *const origin[] = { "X-Api-Key", "authorization" };
  http_header hdr[] = { { "Authorization", "Bearer t" },
                        { "Cookie", "s=1" },
                        { "Accept", "x/y" },
                        { "x-api-key", "k1" } };
  http_client_opts o = { 0 };
  server a, b;

  redirect_across(NULL, hdr, 4, &a, &b);
  ASSERT_CONTAINS(a.last, "Authorization: Bearer t\r\n");
  ASSERT(strstr(b.last, "Authorization") == NULL);
  ASSERT(strstr(b.last, "Cookie") == NULL);
  ASSERT_CONTAINS(b.last, "Accept: x/y\r\n");
  ASSERT_CONTAINS(b.last, "x-api-key: k1\r\n"); /* nobody said */
  srv_free_all();

  o.origin_headers = origin;
  o.n_origin_headers = 1;
  redirect_across(&o, hdr, 4, &a, &b);
  ASSERT_CONTAINS(a.last, "x-api-key: k1\r\n");
  ASSERT(strstr(b.last, "x-api-key") == NULL);
  ASSERT(strstr(b.last, "Authorization") == NULL);
  ASSERT_CONTAINS(b.last, "Accept: x/y\r\n");
  srv_free_all();

  /* Kept: the origin headers follow, Authorization too once it is one of
   * them; Cookie, which is not, still stays behind. */
  o.keep_origin_headers = true;
  o.n_origin_headers = 2;
  redirect_across(&o, hdr, 4, &a, &b);
  ASSERT_CONTAINS(b.last, "x-api-key: k1\r\n");
  ASSERT_CONTAINS(b.last, "Authorization: Bearer t\r\n");
  ASSERT(strstr(b.last, "Cookie") == NULL);
  srv_free_all();
}

/* ---- pause, resume, cancel and re-entry ---------------------------------- */

static void on_tail(uv_timer_t *t) {
  sconn *c = t->data;

  srv_send(c, "4\r\ndddd\r\n0\r\n\r\n");
}

static void pause_handler(sconn *c, const char *req, size_t len) {
  (void)req;
  (void)len;
  srv_send(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
              "4\r\naaaa\r\n4\r\nbbbb\r\n4\r\ncccc\r\n");
  uv_timer_start(&c->timer, on_tail, 30, 0);
}

static void test_pause_resume(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 };
  http_request req = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = pause_handler;
  c = make_client(&loop, NULL);
  req.url = url_of(&sv, "/s");
  req.streaming = true;
  req.idle_timeout = 40; /* paused, it must not fire */
  res.pause_in_body = true;
  ASSERT_EQ(0, start_req(c, &req, &res));
  RUN_UNTIL(&loop, res.bodies == 1, 5000);
  ASSERT_MEM_EQ("aaaa", 4, res.body, res.body_len);
  /* The rest arrives (and more after 30 ms), but nothing is delivered. */
  RUN_FOR(&loop, 120);
  ASSERT_EQ(1, res.bodies);
  ASSERT_EQ(0, res.dones);
  res.paused = false;
  http_req_resume(res.r);
  ASSERT_EQ(1, res.bodies); /* not from inside resume */
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(0, res.done_status);
  ASSERT_EQ(0, res.bodies_while_paused);
  ASSERT_MEM_EQ("aaaabbbbccccdddd", 16, res.body, res.body_len);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* Paused in on_head: the body waits; resumed from outside any callback. */
static void test_pause_in_head(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result res = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz";
  c = make_client(&loop, NULL);
  res.pause_in_head = true;
  start_get(c, url_of(&sv, "/"), true, &res);
  RUN_UNTIL(&loop, res.heads == 1, 5000);
  RUN_FOR(&loop, 30);
  ASSERT_EQ(0, res.bodies);
  ASSERT_EQ(0, res.dones);
  res.paused = false;
  http_req_resume(res.r);
  RUN_UNTIL(&loop, res.dones == 1, 5000);
  ASSERT_EQ(0, res.done_status);
  ASSERT_MEM_EQ("xyz", 3, res.body, res.body_len);
  /* The connection was kept for the next request. */
  {
    result b = { 0 };

    start_get(c, url_of(&sv, "/"), false, &b);
    RUN_UNTIL(&loop, b.dones == 1, 5000);
    ASSERT_EQ(1, sv.accepts);
  }
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void test_cancel(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 }, b = { 0 }, d = { 0 }, e = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.handler = silent_handler;
  o.max_connections = 1;
  c = make_client(&loop, &o);

  /* a waits for its answer, b waits in the queue. */
  start_get(c, url_of(&sv, "/a"), false, &a);
  start_get(c, url_of(&sv, "/b"), false, &b);
  RUN_UNTIL(&loop, sv.requests == 1, 5000);
  http_req_cancel(b.r);
  ASSERT_EQ(0, b.dones); /* on a later turn */
  http_req_cancel(a.r);
  ASSERT_EQ(0, a.dones);
  RUN_UNTIL(&loop, a.dones == 1 && b.dones == 1, 5000);
  ASSERT_EQ(UV_ECANCELED, a.done_status);
  ASSERT_EQ(UV_ECANCELED, b.done_status);
  ASSERT_STR_EQ("request cancelled", a.msg);
  RUN_FOR(&loop, 20);
  ASSERT_EQ(1, sv.requests); /* b never went out */
  ASSERT_EQ(1, a.dones);

  /* Cancel inside on_body: no more on_body, on_done once. */
  sv.handler = pause_handler;
  d.cancel_in_body = true;
  start_get(c, url_of(&sv, "/d"), true, &d);
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_EQ(UV_ECANCELED, d.done_status);
  ASSERT_EQ(1, d.bodies);
  RUN_FOR(&loop, 50);
  ASSERT_EQ(1, d.bodies);
  ASSERT_EQ(1, d.dones);

  /* Cancel right after start, while connecting. */
  start_get(c, url_of(&sv, "/e"), false, &e);
  http_req_cancel(e.r);
  RUN_UNTIL(&loop, e.dones == 1, 5000);
  ASSERT_EQ(UV_ECANCELED, e.done_status);
  RUN_FOR(&loop, 20);
  ASSERT_EQ(1, e.dones);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

/* Callbacks that start and cancel requests, and a cancel followed at once
 * by the client's close. */
static void test_reentrant_calls(void) {
  uv_loop_t loop;
  server sv, quiet;
  http_client *c;
  result a = { 0 }, b = { 0 }, d = { 0 }, e = { 0 }, f = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  srv_start(&quiet, &loop);
  sv.handler = pause_handler;
  quiet.handler = silent_handler;
  c = make_client(&loop, NULL);

  /* d waits on the quiet server; a's on_head cancels it, a's on_body
   * starts b. */
  start_get(c, url_of(&quiet, "/d"), false, &d);
  RUN_UNTIL(&loop, quiet.requests == 1, 5000);
  a.cancel_in_head = &d;
  a.next_in_body = &b;
  a.next_url = url_of(&sv, "/b");
  start_get(c, url_of(&sv, "/a"), true, &a);
  RUN_UNTIL(&loop, a.dones == 1 && b.dones == 1 && d.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_MEM_EQ("aaaabbbbccccdddd", 16, a.body, a.body_len);
  ASSERT_EQ(0, b.done_status);
  ASSERT_MEM_EQ("aaaabbbbccccdddd", 16, b.body, b.body_len);
  ASSERT_EQ(UV_ECANCELED, d.done_status);
  ASSERT(!b.done_in_start);

  /* Cancelled, then the client closes: on_done still comes, once. */
  start_get(c, url_of(&quiet, "/e"), false, &e);
  start_get(c, url_of(&quiet, "/f"), true, &f);
  RUN_UNTIL(&loop, quiet.requests == 3, 5000);
  http_req_cancel(e.r);
  http_req_cancel(f.r);
  http_req_cancel(f.r); /* a second cancel is a no-op */
  close_client(&loop, c);
  ASSERT_EQ(1, e.dones);
  ASSERT_EQ(1, f.dones);
  ASSERT_EQ(UV_ECANCELED, f.done_status);
  srv_stop(&sv);
  srv_stop(&quiet);
  FINISH_LOOP(&loop);
  ASSERT_EQ(1, a.dones);
  ASSERT_EQ(1, b.dones);
  ASSERT_EQ(1, d.dones);
}

static void test_callback_errors(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  result a = { 0 }, b = { 0 };

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&sv, &loop);
  sv.reply = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop";
  c = make_client(&loop, NULL);
  a.head_rc = HTTP_EABORTED;
  start_get(c, url_of(&sv, "/"), true, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(HTTP_EABORTED, a.done_status);
  ASSERT_STR_EQ("on_head stopped the request: aborted", a.msg);
  ASSERT(a.done_resp);
  ASSERT_EQ(404, a.status);
  ASSERT_EQ(0, a.bodies);

  b.body_rc = UV_ENOSPC;
  start_get(c, url_of(&sv, "/"), true, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(UV_ENOSPC, b.done_status);
  ASSERT_STR_EQ("on_body stopped the request: ENOSPC", b.msg);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
}

static void test_start_errors(void) {
  uv_loop_t loop;
  http_client *c;
  result res = { 0 };
  http_request req = { 0 };
  http_header bad[] = { { "X-A", "a\r\nb" } };

  ASSERT_EQ(0, uv_loop_init(&loop));
  setup_once();
  c = make_client(&loop, NULL);
  req.url = "ftp://h/";
  ASSERT_EQ(HTTP_EURL, start_req(c, &req, &res));
  req.url = "https://h/"; /* no TLS settings */
  ASSERT_EQ(HTTP_EURL, start_req(c, &req, &res));
  req.url = "http://h/";
  req.headers = bad;
  req.n_headers = 1;
  ASSERT_EQ(UV_EINVAL, start_req(c, &req, &res));
  req.url = NULL;
  ASSERT_EQ(UV_EINVAL, start_req(c, &req, &res));
  ASSERT_EQ(0, res.dones);
  close_client(&loop, c);
  FINISH_LOOP(&loop);
  ASSERT_STR_EQ("bad_url", http_strerror(HTTP_EURL));
  ASSERT_STR_EQ("ECONNRESET", http_strerror(UV_ECONNRESET));
}

/* ---- unix sockets and proxies -------------------------------------------- */

static void test_unix_socket(void) {
  uv_loop_t loop;
  server sv;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 }, b = { 0 };
  char dir[PATH_MAX], path[PATH_MAX + 16];

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(path, sizeof path, "%s/up.sock", dir);
  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start_unix(&sv, &loop, path);
  sv.reply = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nunix";
  o.unix_path = path;
  c = make_client(&loop, &o);
  start_get(c, "http://api.local/v1/health", false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_MEM_EQ("unix", 4, a.body, a.body_len);
  ASSERT_STR_EQ("GET /v1/health HTTP/1.1\r\nHost: api.local\r\n"
                "User-Agent: tether/" TETHER_VERSION "\r\n\r\n",
                sv.last);
  start_get(c, "http://api.local/2", false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(1, sv.accepts);
  close_client(&loop, c);
  srv_stop(&sv);
  FINISH_LOOP(&loop);
  test_rmtree(dir);
}

static void test_http_proxy(void) {
  uv_loop_t loop;
  server proxy, origin;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 }, b = { 0 };
  char env[64], url[64];

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&proxy, &loop);
  srv_start(&origin, &loop);
  proxy.reply = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nproxy";
  origin.reply = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\norigin";
  snprintf(env, sizeof env, "127.0.0.1:%d", proxy.port); /* no scheme */
  setenv("HTTP_PROXY", env, 1);
  setenv("no_proxy", "localhost, 127.0.0.1", 1);
  o.use_env_proxy = true;
  c = make_client(&loop, &o);
  unsetenv("HTTP_PROXY");
  unsetenv("no_proxy");

  start_get(c, "http://origin.test:81/path?q=1", false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_MEM_EQ("proxy", 5, a.body, a.body_len);
  ASSERT_STR_EQ("GET http://origin.test:81/path?q=1 HTTP/1.1\r\n"
                "Host: origin.test:81\r\n"
                "User-Agent: tether/" TETHER_VERSION "\r\n\r\n",
                proxy.last);

  /* NO_PROXY: straight to the origin. */
  snprintf(url, sizeof url, "http://127.0.0.1:%d/direct", origin.port);
  start_get(c, url, false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_MEM_EQ("origin", 6, b.body, b.body_len);
  ASSERT_EQ(1, proxy.requests);
  ASSERT_EQ(1, origin.requests);
  close_client(&loop, c);
  srv_stop(&proxy);
  srv_stop(&origin);
  FINISH_LOOP(&loop);
}

/* A CONNECT proxy that then serves the tunnelled request itself. */
static void tunnel_handler(sconn *c, const char *req, size_t len) {
  (void)len;
  if (strncmp(req, "CONNECT ", 8) == 0) {
    if (strstr(req, "denied") != NULL)
      srv_send(c, "HTTP/1.1 407 Proxy Authentication Required\r\n"
                  "Content-Length: 0\r\n\r\n");
    else
      srv_send(c, "HTTP/1.1 200 Connection established\r\n\r\n");
  } else {
    srv_send(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ntunnel");
  }
}

static void test_connect_tunnel_plain(void) {
  uv_loop_t loop;
  server proxy;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 }, b = { 0 }, d = { 0 };
  char env[64], want[128];

  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&proxy, &loop);
  proxy.handler = tunnel_handler;
  snprintf(env, sizeof env, "http://127.0.0.1:%d/", proxy.port);
  setenv("http_proxy", env, 1);
  o.use_env_proxy = true;
  c = make_client(&loop, &o);
  unsetenv("http_proxy");
  http__client_tunnel_plain_http(c, true);

  start_get(c, "http://origin.test:81/path", false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_MEM_EQ("tunnel", 6, a.body, a.body_len);
  snprintf(want, sizeof want,
           "CONNECT origin.test:81 HTTP/1.1\r\nHost: origin.test:81\r\n"
           "User-Agent: tether/" TETHER_VERSION "\r\n\r\n"
           "GET /path HTTP/1.1\r\nHost: origin.test:81\r\n");
  ASSERT(strncmp(proxy.all, want, strlen(want)) == 0);
  /* The tunnel is pooled like any connection. */
  start_get(c, "http://origin.test:81/again", false, &b);
  RUN_UNTIL(&loop, b.dones == 1, 5000);
  ASSERT_EQ(0, b.done_status);
  ASSERT_EQ(1, proxy.accepts);

  start_get(c, "http://denied.test/", false, &d);
  RUN_UNTIL(&loop, d.dones == 1, 5000);
  ASSERT_EQ(HTTP_EPROXY, d.done_status);
  snprintf(want, sizeof want,
           "proxy 127.0.0.1:%d answered CONNECT denied.test with 407 Proxy "
           "Authentication Required",
           proxy.port);
  ASSERT_STR_EQ(want, d.msg);
  ASSERT_STR_EQ("proxy_refused", http_strerror(d.done_status));
  close_client(&loop, c);
  srv_stop(&proxy);
  FINISH_LOOP(&loop);
}

static void test_bad_proxy_env(void) {
  uv_loop_t loop;
  http_client *c = NULL;
  http_client_opts o = { 0 };
  char err[256] = "";

  ASSERT_EQ(0, uv_loop_init(&loop));
  setup_once();
  o.use_env_proxy = true;
  setenv("https_proxy", "https://proxy.example:3128", 1);
  ASSERT_EQ(HTTP_EURL, http_client_create(&loop, &o, &c, err, sizeof err));
  ASSERT_STR_EQ("https_proxy=https://proxy.example:3128: https:// proxies "
                "are not supported",
                err);
  setenv("https_proxy", "http://user:pw@proxy:3128", 1);
  ASSERT_EQ(HTTP_EURL, http_client_create(&loop, &o, &c, err, sizeof err));
  ASSERT_STR_EQ("https_proxy=http://user:pw@proxy:3128: URL must not contain "
                "userinfo (user:password@)",
                err);
  unsetenv("https_proxy");
  /* Without use_env_proxy the variables are not read. */
  setenv("HTTP_PROXY", "::bad::", 1);
  o.use_env_proxy = false;
  ASSERT_EQ(0, http_client_create(&loop, &o, &c, err, sizeof err));
  unsetenv("HTTP_PROXY");
  close_client(&loop, c);
  FINISH_LOOP(&loop);
}

/* ---- TLS: openssl s_server children -------------------------------------- */

static const char tls_script[] =
    "set -e\n"
    "exec >gen.log 2>&1\n"
    "ec='-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes'\n"
    "openssl req -x509 $ec -keyout ca.key -out ca.crt -days 30 "
    "-subj '/CN=Test CA' -addext basicConstraints=critical,CA:TRUE "
    "-addext keyUsage=critical,keyCertSign,cRLSign\n"
    "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n"
    "basicConstraints=CA:FALSE\\nkeyUsage=digitalSignature\\n"
    "extendedKeyUsage=serverAuth\\n' > server.ext\n"
    "openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost\n"
    "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key "
    "-CAcreateserial -out server.crt -days 30 -extfile server.ext\n";

typedef struct tls_server {
  pid_t pid;
  int port;
  int stdin_fd; /* s_server sends what is written here */
} tls_server;

static struct {
  bool made;
  char dir[PATH_MAX];
  tls_server servers[4];
  int n;
} tfx;

static void tfx_cleanup(void) {
  int i;

  for (i = 0; i < tfx.n; i++)
    if (tfx.servers[i].pid > 0) {
      kill(tfx.servers[i].pid, SIGKILL);
      waitpid(tfx.servers[i].pid, NULL, 0);
      close(tfx.servers[i].stdin_fd);
    }
  if (tfx.made)
    test_rmtree(tfx.dir);
}

static void tfx_stop(tls_server *s) {
  if (s->pid > 0) {
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    close(s->stdin_fd);
    s->pid = 0;
  }
}

static const char *tfx_path(const char *name) {
  static char p[PATH_MAX + 64];

  snprintf(p, sizeof p, "%s/%s", tfx.dir, name);
  return p;
}

static int free_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM, 0), port;

  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(0, bind(fd, (struct sockaddr *)&a, sizeof a));
  ASSERT_EQ(0, getsockname(fd, (struct sockaddr *)&a, &len));
  port = ntohs(a.sin_port);
  close(fd);
  return port;
}

/* Starts `openssl s_server` with extra (NULL-terminated) in tfx.dir and
 * waits, bounded, until it prints ACCEPT. No probe connection: without
 * -www, s_server would send its stdin to the probe. */
static tls_server *tfx_spawn(const char *const *extra) {
  const char *argv[24];
  char accept_arg[32], logname[64], cmd[PATH_MAX + 32];
  tls_server *s;
  int p[2], n = 0, tries, log;
  pid_t pid;

  if (!tfx.made) {
    snprintf(tfx.dir, sizeof tfx.dir, "%s", test_tmpdir());
    tfx.made = true;
    atexit(tfx_cleanup);
    test_write_file(tfx_path("gen.sh"), tls_script, strlen(tls_script));
    snprintf(cmd, sizeof cmd, "cd '%s' && sh gen.sh", tfx.dir);
    ASSERT_EQ(0, system(cmd));
  }
  ASSERT(tfx.n < 4);
  s = &tfx.servers[tfx.n++];
  s->port = free_port();
  snprintf(accept_arg, sizeof accept_arg, "127.0.0.1:%d", s->port);
  snprintf(logname, sizeof logname, "s_server-%d.log", s->port);
  argv[n++] = "openssl";
  argv[n++] = "s_server";
  argv[n++] = "-accept";
  argv[n++] = accept_arg;
  argv[n++] = "-cert";
  argv[n++] = "server.crt";
  argv[n++] = "-key";
  argv[n++] = "server.key";
  while (*extra != NULL)
    argv[n++] = *extra++;
  argv[n] = NULL;
  ASSERT_EQ(0, pipe(p));
  log = open(tfx_path(logname), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT(log >= 0);
  fflush(stdout);
  pid = fork();
  ASSERT(pid >= 0);
  if (pid == 0) {
    if (chdir(tfx.dir) != 0)
      _exit(126);
    dup2(p[0], 0);
    dup2(log, 1);
    dup2(log, 2);
    close(p[0]);
    close(p[1]);
    execvp("openssl", (char *const *)argv);
    _exit(127);
  }
  close(p[0]);
  close(log);
  s->pid = pid;
  s->stdin_fd = p[1];
  for (tries = 0; tries < 500; tries++) {
    char *text = test_read_file(tfx_path(logname), NULL);
    bool up = text != NULL && strstr(text, "ACCEPT") != NULL;

    if (waitpid(pid, NULL, WNOHANG) == pid) {
      s->pid = 0;
      printf("# s_server exited early:\n%s\n", text ? text : "");
      free(text);
      ASSERT(!"s_server did not start");
    }
    free(text);
    if (up)
      return s;
    uv_sleep(10);
  }
  ASSERT(!"s_server did not listen within 5 s");
  return NULL;
}

static tls_ctx *make_tls(void) {
  tls_options to = { 0 };
  tls_ctx *t = NULL;
  char err[256] = "";

  to.ca_file = tfx_path("ca.crt");
  to.verify = true;
  ASSERT_EQ(0, tls_ctx_create(&to, &t, err, sizeof err));
  return t;
}

static void test_https(void) {
  static const char *const www[] = { "-www", NULL };
  uv_loop_t loop;
  tls_server *s;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 };
  char url[64];

  setup_once();
  s = tfx_spawn(www);
  ASSERT_EQ(0, uv_loop_init(&loop));
  o.tls = make_tls();
  o.connect_timeout = 5000;
  c = make_client(&loop, &o);
  snprintf(url, sizeof url, "https://localhost:%d/", s->port);
  start_get(c, url, false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 10000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_EQ(200, a.status);
  /* -www answers HTTP/1.0 and ends the page by closing. */
  a.body[a.body_len < sizeof a.body ? a.body_len : sizeof a.body - 1] = '\0';
  ASSERT_CONTAINS(a.body, "s_server");
  close_client(&loop, c);
  tls_ctx_destroy(o.tls);

  /* The system trust anchors do not know the test CA. */
  {
    tls_options to = { 0 };
    result b = { 0 };
    char err[256] = "", want[64];

    to.verify = true;
    ASSERT_EQ(0, tls_ctx_create(&to, &o.tls, err, sizeof err));
    c = make_client(&loop, &o);
    start_get(c, url, false, &b);
    RUN_UNTIL(&loop, b.dones == 1, 10000);
    ASSERT_EQ(STREAM_ETLS, b.done_status);
    ASSERT_STR_EQ("tls_error", http_strerror(b.done_status));
    snprintf(want, sizeof want, "connect to localhost:%d failed: ", s->port);
    ASSERT_CONTAINS(b.msg, want);
    close_client(&loop, c);
    tls_ctx_destroy(o.tls);
  }
  FINISH_LOOP(&loop);
  tfx_stop(s);
}

/* An https origin (s_server sends its stdin) redirecting to http. */
static void test_https_downgrade_refused(void) {
  static const char *const raw[] = { NULL };
  static const char answer[] = "HTTP/1.1 302 Found\r\nLocation: "
                               "http://127.0.0.1:1/plain\r\n"
                               "Content-Length: 0\r\n\r\n";
  uv_loop_t loop;
  tls_server *s;
  http_client *c;
  http_client_opts o = { 0 };
  http_request req = { 0 };
  result a = { 0 };
  char url[64];

  setup_once();
  s = tfx_spawn(raw);
  ASSERT_EQ((ssize_t)strlen(answer),
            write(s->stdin_fd, answer, strlen(answer)));
  ASSERT_EQ(0, uv_loop_init(&loop));
  o.tls = make_tls();
  o.connect_timeout = 5000;
  c = make_client(&loop, &o);
  snprintf(url, sizeof url, "https://localhost:%d/", s->port);
  req.url = url;
  req.max_redirects = 5;
  ASSERT_EQ(0, start_req(c, &req, &a));
  RUN_UNTIL(&loop, a.dones == 1, 10000);
  ASSERT_EQ(HTTP_EDOWNGRADE, a.done_status);
  ASSERT_STR_EQ("refused a redirect from https to http "
                "(http://127.0.0.1:1/plain)",
                a.msg);
  ASSERT_STR_EQ("redirect_downgrade", http_strerror(a.done_status));
  close_client(&loop, c);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(o.tls);
  tfx_stop(s);
}

/* As test_held_loop_reads_before_timeouts, under TLS: the record that
 * arrived while the loop was held is read before idle_timeout decides. */
static void test_https_held_loop_reads_before_idle_timeout(void) {
  static const char *const raw[] = { NULL };
  static const char head[] = "HTTP/1.1 200 OK\r\n"
                             "Content-Type: text/event-stream\r\n\r\n"
                             ": hi\n\n";
  static const char more[] = "data: x\n\n";
  uv_loop_t loop;
  tls_server *s;
  http_client *c;
  http_client_opts o = { 0 };
  http_request req = { 0 };
  result a = { 0 };
  char url[64];

  setup_once();
  s = tfx_spawn(raw);
  ASSERT_EQ((ssize_t)strlen(head), write(s->stdin_fd, head, strlen(head)));
  ASSERT_EQ(0, uv_loop_init(&loop));
  o.tls = make_tls();
  o.connect_timeout = 5000;
  c = make_client(&loop, &o);
  snprintf(url, sizeof url, "https://localhost:%d/", s->port);
  req.url = url;
  req.streaming = true;
  req.idle_timeout = 100;
  ASSERT_EQ(0, start_req(c, &req, &a));
  RUN_UNTIL(&loop, a.bodies >= 1, 10000);
  ASSERT_EQ(0, a.dones);
  ASSERT_EQ((ssize_t)strlen(more), write(s->stdin_fd, more, strlen(more)));
  uv_sleep(400);
  RUN_UNTIL(&loop, a.dones == 1, 5000);
  ASSERT_MEM_EQ(": hi\n\ndata: x\n\n", 15, a.body, a.body_len);
  ASSERT_STR_EQ("no data for 100 ms (idle_timeout)", a.msg);
  close_client(&loop, c);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(o.tls);
  tfx_stop(s);
}

/* https through a CONNECT proxy that relays to s_server. */
static void test_https_through_connect_proxy(void) {
  static const char *const www[] = { "-www", NULL };
  uv_loop_t loop;
  tls_server *s;
  server proxy;
  http_client *c;
  http_client_opts o = { 0 };
  result a = { 0 };
  char url[64], env[64], want[128];

  setup_once();
  s = tfx_spawn(www);
  ASSERT_EQ(0, uv_loop_init(&loop));
  srv_start(&proxy, &loop);
  proxy.relay_port = s->port;
  snprintf(env, sizeof env, "http://127.0.0.1:%d", proxy.port);
  setenv("HTTPS_PROXY", env, 1);
  o.tls = make_tls();
  o.use_env_proxy = true;
  o.connect_timeout = 5000;
  c = make_client(&loop, &o);
  unsetenv("HTTPS_PROXY");
  snprintf(url, sizeof url, "https://localhost:%d/", s->port);
  start_get(c, url, false, &a);
  RUN_UNTIL(&loop, a.dones == 1, 10000);
  ASSERT_EQ(0, a.done_status);
  ASSERT_EQ(200, a.status);
  a.body[a.body_len < sizeof a.body ? a.body_len : sizeof a.body - 1] = '\0';
  ASSERT_CONTAINS(a.body, "s_server");
  snprintf(want, sizeof want,
           "CONNECT localhost:%d HTTP/1.1\r\nHost: localhost:%d\r\n", s->port,
           s->port);
  ASSERT(strncmp(proxy.all, want, strlen(want)) == 0);
  close_client(&loop, c);
  srv_stop(&proxy);
  FINISH_LOOP(&loop);
  tls_ctx_destroy(o.tls);
  tfx_stop(s);
}

static const test_case tests[] = {
  TEST(test_parser_vectors),
  TEST(test_parser_caps),
  TEST(test_content_length),
  TEST(test_chunked_streaming),
  TEST(test_close_delimited),
  TEST(test_truncated_body),
  TEST(test_no_body_responses),
  TEST(test_bad_response),
  TEST(test_keep_alive_reuse),
  TEST(test_max_connections_queue),
  TEST(test_streams_leave_the_pool_free),
  TEST(test_streams_never_wait_for_the_pool),
  TEST(test_max_streams),
  TEST(test_timeout_frees_the_pool_slot),
  TEST(test_closed_connections_free_their_slots),
  TEST(test_ended_stream_is_not_pooled),
  TEST(test_stale_pooled_connection_retry),
  TEST(test_fresh_connection_closed),
  TEST(test_pool_idle_close_and_timeout),
  TEST(test_connection_close_not_reused),
  TEST(test_connect_refused),
  TEST(test_caps),
  TEST(test_connect_timeout),
  TEST(test_response_timeout),
  TEST(test_idle_and_request_timeouts),
  TEST(test_held_loop_reads_before_timeouts),
  TEST(test_redirects),
  TEST(test_redirect_cross_origin_drops_credentials),
  TEST(test_pause_resume),
  TEST(test_pause_in_head),
  TEST(test_cancel),
  TEST(test_reentrant_calls),
  TEST(test_callback_errors),
  TEST(test_start_errors),
  TEST(test_unix_socket),
  TEST(test_http_proxy),
  TEST(test_connect_tunnel_plain),
  TEST(test_bad_proxy_env),
  TEST(test_https),
  TEST(test_https_downgrade_refused),
  TEST(test_https_through_connect_proxy),
  TEST(test_https_held_loop_reads_before_idle_timeout),
  { NULL, NULL },
};

TEST_MAIN(tests)
