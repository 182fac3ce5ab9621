/* The HTTP/1.1 server of the local API: listeners, connections, a request
 * parser on llhttp, whole and streamed responses.
 *
 * Ownership, in one place:
 *   http_server  owns its listeners, its connections, and for tests the
 *                socketless connection's wire (loop/http_srv_test.h).
 *   http_conn    owns its socket handle, its timer, the bytes read and not
 *                parsed yet (in), the request being parsed or handled (p)
 *                and its writes in flight (each a wreq, freed in its
 *                callback).
 * A connection is freed only from the close callback of its last handle,
 * and the server only once every connection and handle is gone (STYLE
 * rule 8). User callbacks never run inside llhttp and never inside a call
 * of this API: the handler runs after a parse, on_drain from a write's
 * completion, on_closed from the last close callback.
 *
 * A connection's life:
 *
 *   READ --request--> HANDLING --respond--> WRITING --written--> READ
 *                         \--stream_start--> STREAM --end--> STREAM_END
 *                                                  --written--> READ
 *   A response that closes (Connection: close, HTTP/1.0, an error) goes
 *   from WRITING to LINGER: the write side is shut and what the client
 *   still sends is read and dropped for a moment, so that closing with
 *   unread bytes does not reset the connection under the response.
 *   Anything else (EOF, a failed write, a timeout, room made for a new
 *   connection on a full listener, http_conn_close, http_server_close)
 *   goes to CLOSED at once.
 *
 * Requests on a connection are strictly sequential: the next one is not
 * parsed until the current response is completely written, and nothing is
 * read while a handler has not answered. Bytes already read stay in `in`,
 * so pipelined requests are answered in order, one per loop turn.
 *
 * Expect: 100-continue is honoured: "100 Continue" goes out when the head
 * has been parsed and the body is still to come (unless the announced
 * length is already over max_body, which gets 413 at once). Any other
 * expectation gets 417.
 */
#include "loop/http_server.h"
#include "loop/list.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "loop/http_srv_test.h"
#include "protocol/buf.h"
#include "protocol/envelope.h"

#define DEFAULT_MAX_CONNECTIONS     256
#define DEFAULT_TCP_MAX_CONNECTIONS 16
#define DEFAULT_MAX_HEADER_SIZE     (16 * 1024)
#define DEFAULT_MAX_BODY            (1024 * 1024)
#define DEFAULT_REQUEST_TIMEOUT     10000 /* ms */
#define DEFAULT_IDLE_TIMEOUT        5000  /* ms */
#define DEFAULT_WRITE_TIMEOUT       60000 /* ms */
/* Bytes a stream may have unsent before writes are refused. */
#define STREAM_QUEUE_MAX (1024 * 1024)
/* One read; libuv reads at most 32 times per wake-up, and a connection
 * stops reading as soon as a request is complete. */
#define READ_CHUNK     (16 * 1024)
#define LISTEN_BACKLOG 128
/* A closing connection drains what the client still sends for at most
 * this long (and never longer than request_timeout), and this much. */
#define LINGER_MAX_MS    2000
#define LINGER_MAX_BYTES (1024 * 1024)
/* Larger whole responses do not fit a single uv_buf_t. */
#define RESPONSE_MAX ((size_t)INT32_MAX)

__attribute__((format(printf, 3, 4))) static void fmt(char *out, size_t outlen,
                                                      const char *f, ...) {
  va_list ap;

  if (out == NULL || outlen == 0)
    return;
  va_start(ap, f);
  vsnprintf(out, outlen, f, ap);
  va_end(ap);
}

/* RFC 9110 §5.6.2: the characters of a token (header names, methods). */
static bool is_token(const char *s, size_t n) {
  size_t i;

  if (n == 0)
    return false;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];

    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
          (ch >= '0' && ch <= '9') ||
          (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL)))
      return false;
  }
  return true;
}

/* ---- The request parser ---------------------------------------------------
 *
 * llhttp in request mode with the server's caps. Like the client's response
 * parser (loop/http_parse.h), it pauses llhttp at each event so that the
 * connection acts outside of llhttp: RP_HEAD when the head is in (time for
 * 100 Continue), RP_DONE when the request is whole, RP_ERROR with the
 * status to answer. */

enum { RP_MORE = 0, RP_HEAD, RP_DONE, RP_ERROR };

typedef struct req_parser {
  llhttp_t ll; /* first, so a callback's llhttp_t * is the parser */
  size_t max_head, max_body;
  /* Results, from RP_HEAD on. */
  const char *method;   /* llhttp's static name */
  http_header *headers; /* owned; strings point into strings */
  size_t n_headers;
  buf body;
  bool head_method;     /* a HEAD request (known once the method is) */
  bool expect_continue; /* send 100 Continue before the body */
  bool keep_alive;      /* from RP_DONE */
  /* From RP_ERROR: the answer. */
  int status;
  const char *code;
  char msg[256];
  /* private */
  int event;
  bool head_done, done, in_field, target_done;
  const char *chunk;    /* start of the data being executed */
  size_t raw;           /* head bytes consumed before chunk */
  size_t trailer_bytes; /* of a chunked body's trailers */
  buf strings;          /* "target\0" then "name\0value\0" pairs */
  size_t *offs;         /* name and value offsets into strings */
  size_t offs_cap;
} req_parser;

static req_parser *parser_of(llhttp_t *ll) {
  return (req_parser *)ll;
}

/* Stops the parser with an answer; llhttp then returns HPE_USER. */
__attribute__((format(printf, 4, 5))) static int
rp_fail(req_parser *p, int status, const char *code, const char *f, ...) {
  va_list ap;

  if (p->status == 0) {
    p->status = status;
    p->code = code;
    va_start(ap, f);
    vsnprintf(p->msg, sizeof p->msg, f, ap);
    va_end(ap);
  }
  return HPE_USER;
}

static int rp_fail_oom(req_parser *p) {
  return rp_fail(p, 500, "internal_error", "out of memory");
}

/* The head size just past at + len, counted from the reset: the request
 * line, the headers and any empty lines before them. */
static int rp_check_head(req_parser *p, const char *at, size_t len) {
  size_t pos = p->raw + (size_t)(at + len - p->chunk);

  if (pos > p->max_head)
    return rp_fail(p, 431, "headers_too_large",
                   "request head larger than %zu bytes (max_header_size)",
                   p->max_head);
  return 0;
}

static int rp_on_url(llhttp_t *ll, const char *at, size_t len) {
  req_parser *p = parser_of(ll);

  if (rp_check_head(p, at, len) != 0)
    return HPE_USER;
  if (buf_append(&p->strings, at, len) != 0)
    return rp_fail_oom(p);
  return 0;
}

/* The target is the first string; headers follow it. */
static int rp_end_target(req_parser *p) {
  if (p->target_done)
    return 0;
  p->target_done = true;
  if (buf_append(&p->strings, "", 1) != 0)
    return rp_fail_oom(p);
  return 0;
}

static int rp_on_url_complete(llhttp_t *ll) {
  return rp_end_target(parser_of(ll));
}

static int rp_on_method_complete(llhttp_t *ll) {
  parser_of(ll)->head_method = ll->method == HTTP_HEAD;
  return 0;
}

/* Trailers of a chunked body are counted against the same cap, not kept. */
static int rp_on_trailer(req_parser *p, size_t len) {
  p->trailer_bytes += len;
  if (p->trailer_bytes > p->max_head)
    return rp_fail(p, 431, "headers_too_large",
                   "request trailers larger than %zu bytes (max_header_size)",
                   p->max_head);
  return 0;
}

static int rp_on_header_field(llhttp_t *ll, const char *at, size_t len) {
  req_parser *p = parser_of(ll);

  if (p->head_done)
    return rp_on_trailer(p, len);
  if (rp_check_head(p, at, len) != 0 || rp_end_target(p) != 0)
    return HPE_USER;
  if (!p->in_field) {
    p->in_field = true;
    if (p->n_headers * 2 + 2 > p->offs_cap) {
      size_t cap = p->offs_cap ? p->offs_cap * 2 : 32;
      size_t *o = realloc(p->offs, cap * sizeof *o);

      if (o == NULL)
        return rp_fail_oom(p);
      p->offs = o;
      p->offs_cap = cap;
    }
    p->offs[p->n_headers * 2] = p->strings.len;
  }
  if (buf_append(&p->strings, at, len) != 0)
    return rp_fail_oom(p);
  return 0;
}

static int rp_on_header_field_complete(llhttp_t *ll) {
  req_parser *p = parser_of(ll);

  const char *name;
  size_t len;

  if (p->head_done || !p->in_field)
    return 0;
  p->in_field = false;
  /* llhttp (not built strict) lets spaces into names: "Transfer-Encoding :"
   * must not pass for another header. */
  name = p->strings.data + p->offs[p->n_headers * 2];
  len = p->strings.len - p->offs[p->n_headers * 2];
  if (!is_token(name, len))
    return rp_fail(p, 400, "bad_request",
                   "invalid HTTP request: header name \"%.*s\" is not a token",
                   (int)(len < 64 ? len : 64), name);
  if (buf_append(&p->strings, "", 1) != 0)
    return rp_fail_oom(p);
  p->offs[p->n_headers * 2 + 1] = p->strings.len;
  return 0;
}

static int rp_on_header_value(llhttp_t *ll, const char *at, size_t len) {
  req_parser *p = parser_of(ll);

  if (p->head_done)
    return rp_on_trailer(p, len);
  if (rp_check_head(p, at, len) != 0)
    return HPE_USER;
  if (buf_append(&p->strings, at, len) != 0)
    return rp_fail_oom(p);
  return 0;
}

static int rp_on_header_value_complete(llhttp_t *ll) {
  req_parser *p = parser_of(ll);

  if (p->head_done)
    return 0;
  if (buf_append(&p->strings, "", 1) != 0)
    return rp_fail_oom(p);
  p->n_headers++;
  return 0;
}

/* A header value without the optional whitespace around it equals s,
 * without case. */
static bool value_is(const char *v, const char *s) {
  size_t n;

  while (*v == ' ' || *v == '\t')
    v++;
  n = strlen(v);
  while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
    n--;
  return n == strlen(s) && strncasecmp(v, s, n) == 0;
}

/* What the head asks for that llhttp does not judge: the version, CONNECT,
 * transfer codings and expectations. */
static int rp_check_request(req_parser *p) {
  llhttp_t *ll = &p->ll;
  bool has_body = (ll->flags & F_CHUNKED) || ll->content_length > 0;
  unsigned n_te = 0;
  size_t i;

  if (ll->http_major != 1 || ll->http_minor > 1)
    return rp_fail(p, 505, "http_version_not_supported",
                   "HTTP/%u.%u is not supported (HTTP/1.0 and 1.1 are)",
                   (unsigned)ll->http_major, (unsigned)ll->http_minor);
  if (ll->method == HTTP_CONNECT)
    return rp_fail(p, 501, "not_implemented", "CONNECT is not supported");
  for (i = 0; i < p->n_headers; i++) {
    const http_header *h = &p->headers[i];

    if (strcasecmp(h->name, "Transfer-Encoding") == 0 &&
        (++n_te > 1 || !value_is(h->value, "chunked")))
      return rp_fail(p, 501, "not_implemented",
                     "Transfer-Encoding other than chunked is not supported: "
                     "\"%.100s\"",
                     h->value);
  }
  if ((ll->flags & F_CONTENT_LENGTH) && !(ll->flags & F_CHUNKED) &&
      ll->content_length > p->max_body)
    return rp_fail(p, 413, "body_too_large",
                   "request body of %" PRIu64
                   " bytes is larger than %zu bytes (max_body)",
                   ll->content_length, p->max_body);
  for (i = 0; i < p->n_headers; i++) {
    const http_header *h = &p->headers[i];

    if (strcasecmp(h->name, "Expect") != 0)
      continue;
    if (!value_is(h->value, "100-continue"))
      return rp_fail(p, 417, "expectation_failed",
                     "Expect: \"%.100s\" is not supported (only 100-continue)",
                     h->value);
    /* RFC 9110 §10.1.1: ignored for HTTP/1.0, pointless without a body. */
    p->expect_continue = ll->http_minor == 1 && has_body;
  }
  return 0;
}

static int rp_on_headers_complete(llhttp_t *ll) {
  req_parser *p = parser_of(ll);
  size_t i;

  if (rp_end_target(p) != 0)
    return HPE_USER;
  if (p->n_headers > 0) {
    p->headers = malloc(p->n_headers * sizeof *p->headers);
    if (p->headers == NULL)
      return rp_fail_oom(p);
    for (i = 0; i < p->n_headers; i++) {
      p->headers[i].name = p->strings.data + p->offs[i * 2];
      p->headers[i].value = p->strings.data + p->offs[i * 2 + 1];
    }
  }
  p->method = llhttp_method_name((llhttp_method_t)ll->method);
  p->head_method = ll->method == HTTP_HEAD;
  if (rp_check_request(p) != 0)
    return HPE_USER;
  /* Upgrade requests are served as plain requests (RFC 9110 §7.8 lets a
   * server ignore Upgrade); llhttp would otherwise stop after them. */
  ll->upgrade = 0;
  p->head_done = true;
  p->event = RP_HEAD;
  return HPE_PAUSED;
}

static int rp_on_body(llhttp_t *ll, const char *at, size_t len) {
  req_parser *p = parser_of(ll);
  int rc;

  if (len == 0)
    return 0;
  if ((rc = buf_append(&p->body, at, len)) == UV_ENOBUFS)
    return rp_fail(p, 413, "body_too_large",
                   "request body larger than %zu bytes (max_body)",
                   p->max_body);
  if (rc != 0)
    return rp_fail_oom(p);
  return 0;
}

static int rp_on_message_complete(llhttp_t *ll) {
  req_parser *p = parser_of(ll);

  /* HTTP/1.0 closes after the response even with keep-alive: one less
   * dialect to get right, and no client of ours needs it. */
  p->keep_alive = llhttp_should_keep_alive(ll) && ll->http_minor == 1;
  p->done = true;
  p->event = RP_DONE;
  return HPE_PAUSED;
}

static const llhttp_settings_t rp_settings = {
  .on_url = rp_on_url,
  .on_url_complete = rp_on_url_complete,
  .on_method_complete = rp_on_method_complete,
  .on_header_field = rp_on_header_field,
  .on_header_field_complete = rp_on_header_field_complete,
  .on_header_value = rp_on_header_value,
  .on_header_value_complete = rp_on_header_value_complete,
  .on_headers_complete = rp_on_headers_complete,
  .on_body = rp_on_body,
  .on_message_complete = rp_on_message_complete,
};

static void rp_reset(req_parser *p) {
  llhttp_init(&p->ll, HTTP_REQUEST, &rp_settings);
  p->method = NULL;
  free(p->headers);
  p->headers = NULL;
  p->n_headers = 0;
  buf_reset(&p->body);
  p->head_method = p->expect_continue = p->keep_alive = false;
  p->status = 0;
  p->code = NULL;
  p->msg[0] = '\0';
  p->event = RP_MORE;
  p->head_done = p->done = p->in_field = p->target_done = false;
  p->chunk = NULL;
  p->raw = p->trailer_bytes = 0;
  buf_reset(&p->strings);
}

static void rp_init(req_parser *p, size_t max_head, size_t max_body) {
  memset(p, 0, sizeof *p);
  p->max_head = max_head;
  p->max_body = max_body;
  buf_init(&p->body, max_body);
  buf_init(&p->strings, 0);
  rp_reset(p);
}

static void rp_free(req_parser *p) {
  free(p->headers);
  free(p->offs);
  buf_free(&p->body);
  buf_free(&p->strings);
  p->headers = NULL;
  p->offs = NULL;
  p->offs_cap = 0;
  p->n_headers = 0;
}

/* Between requests, a kept-alive connection holds no parser memory. */
static void rp_release(req_parser *p) {
  buf_free(&p->body);
  buf_free(&p->strings);
  free(p->offs);
  p->offs = NULL;
  p->offs_cap = 0;
}

/* True once a byte of the next request has been parsed. */
static bool rp_started(const req_parser *p) {
  return p->raw > 0 || p->head_done;
}

/* Runs data[0..len) until the next event; *used gets the bytes consumed.
 * Feed the rest next, even when it is empty: after RP_HEAD the parser may
 * finish a request that has no body without new bytes. */
static int rp_feed(req_parser *p, const char *data, size_t len, size_t *used) {
  bool head_done = p->head_done;
  llhttp_errno_t e;

  *used = 0;
  if (p->status != 0)
    return RP_ERROR;
  if (p->done)
    return RP_DONE;
  if (llhttp_get_errno(&p->ll) == HPE_PAUSED)
    llhttp_resume(&p->ll);
  p->event = RP_MORE;
  p->chunk = data;
  e = llhttp_execute(&p->ll, data, len);
  p->chunk = NULL;
  if (e == HPE_OK) {
    *used = len;
  } else if (e == HPE_PAUSED) {
    *used = (size_t)(llhttp_get_error_pos(&p->ll) - data);
  } else {
    if (p->status != 0)
      return RP_ERROR;
    if (e == HPE_PAUSED_H2_UPGRADE)
      rp_fail(p, 505, "http_version_not_supported",
              "HTTP/2 is not supported (HTTP/1.0 and 1.1 are)");
    else if (e == HPE_PAUSED_UPGRADE)
      rp_fail(p, 501, "not_implemented", "protocol upgrades are not supported");
    else
      rp_fail(p, 400, "bad_request", "invalid HTTP request: %s",
              llhttp_get_error_reason(&p->ll));
    return RP_ERROR;
  }
  /* Bytes that gave no callback (empty lines, a request line cut short)
   * count towards the head too. */
  if (!head_done) {
    p->raw += *used;
    if (p->raw > p->max_head) {
      rp_fail(p, 431, "headers_too_large",
              "request head larger than %zu bytes (max_header_size)",
              p->max_head);
      return RP_ERROR;
    }
  }
  return p->event;
}

/* ---- The server and its connections -------------------------------------- */

typedef enum conn_state {
  CONN_READ,       /* reading a request (or waiting for one) */
  CONN_HANDLING,   /* the handler has it and has not answered */
  CONN_WRITING,    /* a whole response is being written */
  CONN_STREAM,     /* a streamed response is open */
  CONN_STREAM_END, /* its last chunk is being written */
  CONN_LINGER,     /* answered and closing: draining the client */
  CONN_CLOSED      /* handles closing; freed in the last close callback */
} conn_state;

typedef enum conn_phase {
  PHASE_NONE,
  PHASE_IDLE,    /* waiting for a request: idle_timeout */
  PHASE_REQUEST, /* a request started: request_timeout, never extended */
  PHASE_WRITE,   /* a write makes no progress: write_timeout */
  PHASE_LINGER,
  PHASE_DEFER /* a step for the next loop turn */
} conn_phase;

/* The listeners, by index. */
enum { L_UNIX = 0, L_TCP = 1 };

typedef union sock {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_tcp_t tcp;
  uv_pipe_t pipe;
} sock;

struct http_conn {
  list node; /* in http_server.conns while not closed */
  /* In http_server.idle[listener] while kept alive after a response and
   * waiting for the next request: what a full listener may close. */
  list idle_node;
  http_server *s;
  sock h;
  bool has_sock; /* false for the socketless test connection */
  uv_timer_t timer;
  uv_shutdown_t shutdown;
  conn_state state;
  conn_phase phase;
  bool reading;
  bool tcp;          /* on the TCP listener (the index of its budget) */
  bool reject;       /* over max_connections: answers 503 and closes */
  bool served;       /* a response went out: kept alive from then on */
  bool close_after;  /* the current response ends the connection */
  bool head_request; /* the current request is HEAD: no body goes out */
  bool answered;     /* the current request has its answer */
  bool broken;       /* a write failed while the handler held the request */
  bool want_drain;   /* a stream write was made or refused since a drain */
  pid_t pid;
  uid_t uid;
  gid_t gid;
  buf in; /* read, not parsed yet */
  req_parser p;
  unsigned writes; /* writes not called back yet */
  size_t queued;   /* their bytes */
  size_t lingered; /* bytes dropped while lingering */
  http_stream_callbacks cbs;
  unsigned closes; /* close callbacks still to come */
};

struct http_server {
  uv_loop_t *loop;
  http_server_opts o; /* defaults applied; strings point to the copies */
  char *unix_path;
  char *tcp_host;
  http_server_handler handler;
  void *data;
  sock l[2]; /* the listeners */
  bool listening[2];
  sock drop[2]; /* accepts and closes a connection that cannot be served */
  bool drop_busy[2];
  bool stalled[2]; /* a connection waits for the drop handle */
  uint16_t tcp_port;
  bool have_sock_file;
  dev_t sock_dev;
  ino_t sock_ino;
  list conns; /* open connections */
  /* Idle kept-alive connections per listener, the longest idle first. */
  list idle[2];
  unsigned n_open[2];    /* per listener: not closed, rejected ones apart */
  unsigned n_rejects[2]; /* per listener: rejected connections not freed */
  unsigned n_live;       /* connections not freed, rejected ones apart */
  unsigned handles;      /* other handles not closed yet */
  bool closing, freeing;
  void (*close_cb)(void *data);
  void *close_data;
  uv_timer_t close_handle; /* never started: makes close_cb asynchronous */
  /* The socketless test connection. */
  http_conn *fake;
  buf *fake_out;
  buf fake_wire;
  bool fake_eof, fake_eof_sent, fake_idle_init;
  list fake_writes; /* writes to complete on the next turn */
  uv_idle_t fake_idle;
};

typedef struct wreq {
  uv_write_t req;
  list node; /* socketless: in http_server.fake_writes */
  http_conn *c;
  size_t len;
  char data[];
} wreq;

static void conn_close(http_conn *c);
static void conn_process(http_conn *c);
static void server_maybe_freed(http_server *s);

/* ---- Writing ------------------------------------------------------------- */

static wreq *wreq_new(http_conn *c, size_t len) {
  wreq *w = malloc(sizeof *w + len);

  if (w == NULL)
    return NULL;
  w->c = c;
  w->len = len;
  list_init(&w->node);
  return w;
}

static void conn_on_written(wreq *w, int status);

static void conn_on_uv_written(uv_write_t *req, int status) {
  conn_on_written(container_of(req, wreq, req), status);
}

/* Sends w, consumed: it is freed in its callback, or here on error. */
static int conn_write(http_conn *c, wreq *w) {
  http_server *s = c->s;
  uv_buf_t b;
  int rc;

  if (!c->has_sock) {
    if (buf_append(s->fake_out, w->data, w->len) != 0) {
      free(w);
      return UV_ENOMEM;
    }
    list_push_back(&s->fake_writes, &w->node);
  } else {
    b = uv_buf_init(w->data, (unsigned)w->len);
    if ((rc = uv_write(&w->req, &c->h.stream, &b, 1, conn_on_uv_written)) !=
        0) {
      free(w);
      return rc;
    }
  }
  c->writes++;
  c->queued += w->len;
  return 0;
}

static int conn_write_str(http_conn *c, const char *text) {
  size_t n = strlen(text);
  wreq *w = wreq_new(c, n);

  if (w == NULL)
    return UV_ENOMEM;
  memcpy(w->data, text, n);
  return conn_write(c, w);
}

/* ---- Timers -------------------------------------------------------------- */

/* Every change of phase goes through here, so that the idle list holds
 * exactly the kept-alive connections waiting for a request. A connection
 * that has never been answered is not on it: closing it to make room
 * would fail a client that has only just connected. */
static void conn_set_phase(http_conn *c, conn_phase phase) {
  if (phase == PHASE_IDLE && c->phase != PHASE_IDLE && c->served)
    list_push_back(&c->s->idle[c->tcp ? L_TCP : L_UNIX], &c->idle_node);
  else if (phase != PHASE_IDLE)
    list_remove(&c->idle_node);
  c->phase = phase;
}

static void conn_timer_stop(http_conn *c) {
  uv_timer_stop(&c->timer);
  conn_set_phase(c, PHASE_NONE);
}

static void conn_timer(http_conn *c, conn_phase phase, uv_timer_cb cb,
                       uint64_t ms) {
  conn_set_phase(c, phase);
  uv_timer_start(&c->timer, cb, ms, 0);
}

static void conn_on_idle_timeout(uv_timer_t *t) {
  conn_close(t->data);
}

static void conn_on_write_timeout(uv_timer_t *t) {
  /* The client has read nothing for write_timeout: a stream's subscriber
   * that stopped reading, or a response nobody collects. */
  conn_close(t->data);
}

static void conn_on_linger_timeout(uv_timer_t *t) {
  conn_close(t->data);
}

/* Armed when a write starts and re-armed on each completion, so it measures
 * the time without progress. */
static void conn_arm_write_timer(http_conn *c) {
  if (c->writes > 0)
    conn_timer(c, PHASE_WRITE, conn_on_write_timeout, c->s->o.write_timeout);
  else if (c->phase == PHASE_WRITE)
    conn_timer_stop(c);
}

/* ---- Reading ------------------------------------------------------------- */

static void conn_on_read(http_conn *c, ssize_t n);

static void conn_on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  http_conn *c = h->data;

  (void)suggested;
  /* Straight into the connection's buffer; at its cap libuv reports
   * UV_ENOBUFS and the connection closes. */
  if (buf_reserve(&c->in, READ_CHUNK) != 0) {
    *b = uv_buf_init(NULL, 0);
    return;
  }
  *b = uv_buf_init(c->in.data + c->in.len, READ_CHUNK);
}

static void conn_on_uv_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  (void)b;
  conn_on_read(st->data, n);
}

/* Reads in READ (the request), STREAM (to notice the client leaving) and
 * LINGER (draining); not while a handler holds a request nor while a
 * response is written, which is what keeps pipelined requests in order. */
static void conn_update_reading(http_conn *c) {
  bool want = c->state == CONN_READ || c->state == CONN_STREAM ||
              c->state == CONN_LINGER;

  if (want == c->reading)
    return;
  c->reading = want;
  if (!c->has_sock)
    return;
  if (!want) {
    uv_read_stop(&c->h.stream);
  } else if (uv_read_start(&c->h.stream, conn_on_alloc, conn_on_uv_read) != 0) {
    c->reading = false;
    conn_close(c);
  }
}

/* ---- Closing ------------------------------------------------------------- */

static void fake_cancel_writes(http_server *s, http_conn *c);

static void conn_on_handle_closed(uv_handle_t *h) {
  http_conn *c = h->data;
  http_server *s = c->s;

  if (--c->closes > 0)
    return;
  assert(c->writes == 0);
  if (c->cbs.on_closed != NULL)
    c->cbs.on_closed(c, c->cbs.data);
  rp_free(&c->p);
  buf_free(&c->in);
  if (c->reject)
    s->n_rejects[c->tcp ? L_TCP : L_UNIX]--;
  else
    s->n_live--;
  free(c);
  server_maybe_freed(s);
}

/* Closes at once. Pending writes call back with UV_ECANCELED before the
 * close callbacks (libuv does it for sockets, fake_cancel_writes here for
 * the socketless connection), and on_closed runs from the last one. */
static void conn_close(http_conn *c) {
  if (c->state == CONN_CLOSED)
    return;
  c->state = CONN_CLOSED;
  c->reading = false;
  conn_set_phase(c, PHASE_NONE);
  list_remove(&c->node);
  /* Its place in the budget is free at once; the handles close on the
   * next loop turn. */
  if (!c->reject)
    c->s->n_open[c->tcp ? L_TCP : L_UNIX]--;
  c->closes = 1;
  uv_close((uv_handle_t *)&c->timer, conn_on_handle_closed);
  if (c->has_sock) {
    c->closes++;
    uv_close(&c->h.handle, conn_on_handle_closed);
  } else {
    if (c->s->fake == c)
      c->s->fake = NULL;
    fake_cancel_writes(c->s, c);
  }
}

static void conn_on_shutdown(uv_shutdown_t *req, int status) {
  http_conn *c = req->data;

  if (status < 0 && c->state == CONN_LINGER)
    conn_close(c);
}

/* The response that ends the connection is written: shut the write side
 * and drop what the client still sends until it closes too. */
static void conn_linger(http_conn *c) {
  uint64_t ms = c->s->o.request_timeout;

  c->state = CONN_LINGER;
  buf_free(&c->in);
  c->lingered = 0;
  if (!c->has_sock ||
      uv_shutdown(&c->shutdown, &c->h.stream, conn_on_shutdown) != 0) {
    conn_close(c);
    return;
  }
  conn_timer(c, PHASE_LINGER, conn_on_linger_timeout,
             ms < LINGER_MAX_MS ? ms : LINGER_MAX_MS);
  conn_update_reading(c);
}

/* ---- Responses ----------------------------------------------------------- */

static const char *reason_phrase(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 206:
    return "Partial Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 303:
    return "See Other";
  case 304:
    return "Not Modified";
  case 307:
    return "Temporary Redirect";
  case 308:
    return "Permanent Redirect";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 406:
    return "Not Acceptable";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 410:
    return "Gone";
  case 411:
    return "Length Required";
  case 412:
    return "Precondition Failed";
  case 413:
    return "Content Too Large";
  case 414:
    return "URI Too Long";
  case 415:
    return "Unsupported Media Type";
  case 416:
    return "Range Not Satisfiable";
  case 417:
    return "Expectation Failed";
  case 422:
    return "Unprocessable Content";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return ""; /* the reason phrase may be empty (RFC 9112 §4) */
  }
}

static bool is_field_value(const char *s) {
  for (; *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;

    if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
      return false;
  }
  return true;
}

/* Appends the status line and headers. The server owns the framing:
 * Content-Length or chunked, and Connection: close when the connection
 * ends after this response. */
static int build_head(buf *out, int status, const char *content_type,
                      const http_header *extra, size_t n_extra, bool chunked,
                      size_t len, bool close) {
  bool no_body = status == 204 || status == 304;
  size_t i;
  int rc;

  if (status < 200 || status > 599 || (no_body && (chunked || len > 0)))
    return UV_EINVAL;
  if (content_type != NULL && !is_field_value(content_type))
    return UV_EINVAL;
  for (i = 0; i < n_extra; i++) {
    const char *name = extra[i].name, *value = extra[i].value;

    if (name == NULL || value == NULL || !is_token(name, strlen(name)) ||
        !is_field_value(value) || strcasecmp(name, "Content-Length") == 0 ||
        strcasecmp(name, "Transfer-Encoding") == 0 ||
        strcasecmp(name, "Connection") == 0)
      return UV_EINVAL;
  }
  rc = buf_appendf(out, "HTTP/1.1 %d %s\r\n", status, reason_phrase(status));
  if (rc == 0 && content_type != NULL)
    rc = buf_appendf(out, "Content-Type: %s\r\n", content_type);
  if (rc == 0 && chunked)
    rc = buf_append_str(out, "Transfer-Encoding: chunked\r\n");
  else if (rc == 0 && !no_body)
    rc = buf_appendf(out, "Content-Length: %zu\r\n", len);
  for (i = 0; rc == 0 && i < n_extra; i++)
    rc = buf_appendf(out, "%s: %s\r\n", extra[i].name, extra[i].value);
  if (rc == 0 && close)
    rc = buf_append_str(out, "Connection: close\r\n");
  if (rc == 0)
    rc = buf_append_str(out, "\r\n");
  return rc;
}

/* Checks that c may answer now. */
static int conn_can_answer(const http_conn *c) {
  if (c->state == CONN_HANDLING)
    return 0;
  if (c->state == CONN_CLOSED && !c->answered)
    return UV_ECANCELED;
  return UV_EINVAL;
}

/* Queues the answer's first write; on failure the connection closes. */
static int conn_send_answer(http_conn *c, wreq *w, conn_state next) {
  c->answered = true;
  if (c->broken) {
    free(w);
    memset(&c->cbs, 0, sizeof c->cbs);
    conn_close(c);
    return UV_ECANCELED;
  }
  c->state = next;
  if (conn_write(c, w) != 0) {
    conn_close(c);
    return UV_ECANCELED;
  }
  conn_arm_write_timer(c);
  return 0;
}

int http_conn_respond(http_conn *c, int status, const char *content_type,
                      const http_header *extra, size_t n_extra,
                      const char *body, size_t len) {
  size_t body_len;
  buf head;
  wreq *w;
  int rc;

  if (c == NULL || (n_extra > 0 && extra == NULL) ||
      (len > 0 && body == NULL) || len > RESPONSE_MAX)
    return UV_EINVAL;
  if ((rc = conn_can_answer(c)) != 0)
    return rc;
  buf_init(&head, 0);
  rc = build_head(&head, status, content_type, extra, n_extra, false, len,
                  c->close_after);
  if (rc != 0)
    goto done;
  body_len = c->head_request ? 0 : len;
  if ((w = wreq_new(c, head.len + body_len)) == NULL) {
    rc = UV_ENOMEM;
    goto done;
  }
  memcpy(w->data, head.data, head.len);
  if (body_len > 0)
    memcpy(w->data + head.len, body, body_len);
  /* The answer is whole: nothing more to tell the handler. */
  memset(&c->cbs, 0, sizeof c->cbs);
  rc = conn_send_answer(c, w, CONN_WRITING);
  if (rc == 0)
    conn_update_reading(c);
done:
  buf_free(&head);
  return rc;
}

static int error_json(buf *out, const char *code, const char *message) {
  int rc;

  if ((rc = buf_append_str(out, "{\"error\":{\"code\":")) != 0 ||
      (rc = envelope_append_json_string(out, code, strlen(code))) != 0 ||
      (rc = buf_append_str(out, ",\"message\":")) != 0 ||
      (rc = envelope_append_json_string(out, message, strlen(message))) != 0 ||
      (rc = buf_append_str(out, "}}")) != 0)
    return rc;
  return 0;
}

int http_conn_respond_error(http_conn *c, int status, const char *code,
                            const char *message) {
  buf body;
  int rc;

  if (c == NULL || code == NULL || message == NULL)
    return UV_EINVAL;
  buf_init(&body, 0);
  rc = error_json(&body, code, message);
  if (rc == 0)
    rc = http_conn_respond(c, status, "application/json", NULL, 0, body.data,
                           body.len);
  buf_free(&body);
  return rc;
}

/* Answers a request the handler never saw (a parse error, a timeout, a
 * connection over the cap) and closes after it. */
__attribute__((format(printf, 4, 5))) static void
conn_send_error(http_conn *c, int status, const char *code, const char *f,
                ...) {
  char msg[320];
  va_list ap;

  va_start(ap, f);
  vsnprintf(msg, sizeof msg, f, ap);
  va_end(ap);
  conn_timer_stop(c);
  c->state = CONN_HANDLING;
  c->answered = c->broken = false;
  c->close_after = true;
  c->head_request = c->p.head_method;
  if (http_conn_respond_error(c, status, code, msg) != 0)
    conn_close(c);
}

int http_conn_stream_start(http_conn *c, int status, const char *content_type) {
  buf head;
  wreq *w;
  int rc;

  if (c == NULL)
    return UV_EINVAL;
  if ((rc = conn_can_answer(c)) != 0)
    return rc;
  buf_init(&head, 0);
  rc =
      build_head(&head, status, content_type, NULL, 0, true, 0, c->close_after);
  if (rc != 0)
    goto done;
  if ((w = wreq_new(c, head.len)) == NULL) {
    rc = UV_ENOMEM;
    goto done;
  }
  memcpy(w->data, head.data, head.len);
  c->want_drain = false;
  rc = conn_send_answer(c, w, CONN_STREAM);
  if (rc == 0)
    conn_update_reading(c);
done:
  buf_free(&head);
  return rc;
}

int http_conn_stream_write(http_conn *c, const char *data, size_t len) {
  char size[24];
  size_t total;
  unsigned was;
  wreq *w;
  int n;

  if (c == NULL || (len > 0 && data == NULL))
    return UV_EINVAL;
  if (c->state == CONN_CLOSED)
    return UV_ECANCELED;
  if (c->state != CONN_STREAM || len > RESPONSE_MAX)
    return UV_EINVAL;
  /* An empty chunk would end the stream; a HEAD request gets no body. */
  if (len == 0 || c->head_request)
    return 0;
  n = snprintf(size, sizeof size, "%zx\r\n", len);
  total = (size_t)n + len + 2;
  /* A chunk larger than the cap still goes when nothing waits, so any
   * write can make progress. */
  if (c->queued > 0 && total > STREAM_QUEUE_MAX - c->queued) {
    c->want_drain = true;
    return UV_ENOBUFS;
  }
  if ((w = wreq_new(c, total)) == NULL)
    return UV_ENOMEM;
  memcpy(w->data, size, (size_t)n);
  memcpy(w->data + n, data, len);
  memcpy(w->data + n + len, "\r\n", 2);
  was = c->writes;
  if (conn_write(c, w) != 0) {
    conn_close(c);
    return UV_ECANCELED;
  }
  c->want_drain = true;
  if (was == 0)
    conn_arm_write_timer(c);
  return 0;
}

size_t http_conn_stream_queued(const http_conn *c) {
  if (c == NULL || (c->state != CONN_STREAM && c->state != CONN_STREAM_END))
    return 0;
  return c->queued;
}

static void conn_response_done(http_conn *c);

static void conn_on_deferred_done(uv_timer_t *t) {
  http_conn *c = t->data;

  conn_set_phase(c, PHASE_NONE);
  conn_response_done(c);
}

void http_conn_stream_end(http_conn *c) {
  if (c == NULL || c->state != CONN_STREAM)
    return;
  memset(&c->cbs, 0, sizeof c->cbs);
  c->state = CONN_STREAM_END;
  conn_update_reading(c);
  if (!c->head_request && conn_write_str(c, "0\r\n\r\n") != 0) {
    conn_close(c);
    return;
  }
  if (c->writes > 0)
    conn_arm_write_timer(c);
  else /* a HEAD stream whose head is out: go on, but not inside this call */
    conn_timer(c, PHASE_DEFER, conn_on_deferred_done, 0);
}

void http_conn_stream_callbacks(http_conn *c,
                                const http_stream_callbacks *cbs) {
  if (c == NULL)
    return;
  if (cbs == NULL)
    memset(&c->cbs, 0, sizeof c->cbs);
  else
    c->cbs = *cbs;
}

void http_conn_close(http_conn *c) {
  if (c != NULL)
    conn_close(c);
}

/* ---- The request cycle --------------------------------------------------- */

static void conn_on_written(wreq *w, int status) {
  http_conn *c = w->c;
  size_t len = w->len;

  free(w);
  c->writes--;
  c->queued -= len;
  if (c->state == CONN_CLOSED)
    return;
  if (status < 0) {
    /* The handler still holds the request and will answer: the
     * connection stays until then (the answer gets UV_ECANCELED). */
    if (c->state == CONN_HANDLING)
      c->broken = true;
    else
      conn_close(c);
    return;
  }
  switch (c->state) {
  case CONN_WRITING:
  case CONN_STREAM_END:
    if (c->writes == 0)
      conn_response_done(c);
    else
      conn_arm_write_timer(c);
    break;
  case CONN_STREAM:
    conn_arm_write_timer(c);
    if (c->writes == 0 && c->want_drain) {
      c->want_drain = false;
      if (c->cbs.on_drain != NULL)
        c->cbs.on_drain(c, c->cbs.data);
    }
    break;
  default: /* a 100 Continue went out */
    break;
  }
}

/* Everything of the response is written: read the next request, or close. */
static void conn_response_done(http_conn *c) {
  conn_timer_stop(c);
  if (c->close_after || c->s->closing) {
    conn_linger(c);
    return;
  }
  rp_reset(&c->p);
  c->served = true;
  c->state = CONN_READ;
  conn_process(c);
}

static void conn_on_request_timeout(uv_timer_t *t) {
  http_conn *c = t->data;

  conn_set_phase(c, PHASE_NONE);
  conn_send_error(c, 408, "request_timeout",
                  "the request did not arrive whole within %" PRIu64
                  " ms (request_timeout)",
                  c->s->o.request_timeout);
}

static void conn_dispatch(http_conn *c) {
  http_server *s = c->s;
  req_parser *p = &c->p;
  http_srv_request req;

  conn_timer_stop(c);
  c->state = CONN_HANDLING;
  conn_update_reading(c);
  c->close_after = !p->keep_alive || s->closing;
  c->head_request = p->head_method;
  c->answered = c->broken = false;
  memset(&c->cbs, 0, sizeof c->cbs);
  memset(&req, 0, sizeof req);
  req.method = p->method;
  req.target = p->strings.data;
  req.headers = p->headers;
  req.n_headers = p->n_headers;
  /* buf_cstr cannot fail after an append: buf_reserve keeps room. */
  req.body = p->body.len > 0 ? buf_cstr(&p->body) : "";
  req.body_len = p->body.len;
  req.tcp = c->tcp;
  req.pid = c->pid;
  req.uid = c->uid;
  req.gid = c->gid;
  s->handler(c, &req, s->data);
}

/* Waits for more of the request: the idle timer before its first byte, the
 * request timer after it. */
static void conn_wait(http_conn *c) {
  http_server *s = c->s;

  if (rp_started(&c->p)) {
    /* A deadline for the whole request, not extended by progress, so a
     * client trickling bytes (slow loris) cannot hold the connection. */
    if (c->phase != PHASE_REQUEST)
      conn_timer(c, PHASE_REQUEST, conn_on_request_timeout,
                 s->o.request_timeout);
  } else if (c->phase != PHASE_IDLE) {
    conn_timer(c, PHASE_IDLE, conn_on_idle_timeout, s->o.idle_timeout);
    buf_free(&c->in);
    rp_release(&c->p);
  }
  conn_update_reading(c);
}

/* Parses what `in` holds, in READ: at most one request per call. */
static void conn_process(http_conn *c) {
  size_t off = 0, used;
  int ev;

  for (;;) {
    const char *data = c->in.data != NULL ? c->in.data + off : "";

    ev = rp_feed(&c->p, data, c->in.len - off, &used);
    off += used;
    if (ev != RP_HEAD)
      break;
    if (c->p.expect_continue &&
        conn_write_str(c, "HTTP/1.1 100 Continue\r\n\r\n") != 0) {
      conn_close(c);
      return;
    }
  }
  buf_consume(&c->in, off);
  if (ev == RP_MORE)
    conn_wait(c);
  else if (ev == RP_DONE)
    conn_dispatch(c);
  else
    conn_send_error(c, c->p.status, c->p.code, "%s", c->p.msg);
}

static void conn_on_read(http_conn *c, ssize_t n) {
  if (c->state == CONN_CLOSED || n == 0)
    return;
  if (n < 0) {
    /* EOF or an error: a partial request is dropped; a stream's client is
     * gone (on_closed follows). */
    conn_close(c);
    return;
  }
  c->in.len += (size_t)n;
  switch (c->state) {
  case CONN_READ:
    conn_process(c);
    break;
  case CONN_STREAM:
    /* A client must not send while its stream is open; what it sends is
     * the next request, kept up to the head cap. */
    if (c->in.len > c->s->o.max_header_size)
      conn_close(c);
    break;
  case CONN_LINGER:
    c->lingered += c->in.len;
    buf_reset(&c->in);
    if (c->lingered > LINGER_MAX_BYTES)
      conn_close(c);
    break;
  default:
    break;
  }
}

/* ---- Accepting ----------------------------------------------------------- */

static http_conn *conn_new(http_server *s, int which, bool reject) {
  http_conn *c = calloc(1, sizeof *c);

  if (c == NULL)
    return NULL;
  c->s = s;
  c->tcp = which == L_TCP;
  c->reject = reject;
  c->pid = -1;
  c->uid = (uid_t)-1;
  c->gid = (gid_t)-1;
  list_init(&c->node);
  list_init(&c->idle_node);
  buf_init(&c->in, s->o.max_header_size + 2 * READ_CHUNK);
  rp_init(&c->p, s->o.max_header_size, s->o.max_body);
  uv_timer_init(s->loop, &c->timer);
  c->timer.data = c;
  c->shutdown.data = c;
  if (reject) {
    s->n_rejects[which]++;
  } else {
    s->n_open[which]++;
    s->n_live++;
  }
  list_push_back(&s->conns, &c->node);
  return c;
}

static void conn_start(http_conn *c) {
  c->state = CONN_READ;
  if (c->reject && c->tcp)
    conn_send_error(c, 503, "too_many_connections",
                    "more than %u connections at once on the TCP listener "
                    "(tcp_max_connections)",
                    c->s->o.tcp_max_connections);
  else if (c->reject)
    conn_send_error(c, 503, "too_many_connections",
                    "more than %u connections at once (max_connections)",
                    c->s->o.max_connections);
  else
    conn_process(c);
}

static void server_on_connection(uv_stream_t *l, int status);
static void server_accept(http_server *s, int which);

static void server_on_drop_closed(uv_handle_t *h) {
  http_server *s = h->data;
  int which = h == &s->drop[L_TCP].handle ? L_TCP : L_UNIX;

  s->drop_busy[which] = false;
  s->handles--;
  if (s->stalled[which] && !s->closing) {
    s->stalled[which] = false;
    server_accept(s, which);
  }
  server_maybe_freed(s);
}

/* Accepts and closes a connection that cannot be served (out of memory, or
 * too many rejected ones closing already). libuv stops watching a listener
 * until its pending connection is accepted, so one must be. */
static void server_drop(http_server *s, int which) {
  sock *d = &s->drop[which];

  if (s->drop_busy[which]) {
    s->stalled[which] = true; /* retried when the drop handle is free */
    return;
  }
  if (which == L_TCP)
    uv_tcp_init(s->loop, &d->tcp);
  else
    uv_pipe_init(s->loop, &d->pipe, 0);
  d->handle.data = s;
  s->drop_busy[which] = true;
  s->handles++;
  uv_accept(&s->l[which].stream, &d->stream);
  uv_close(&d->handle, server_on_drop_closed);
}

static void conn_read_peer(http_conn *c) {
  struct ucred uc;
  socklen_t len = sizeof uc;
  uv_os_fd_t fd;

  if (uv_fileno(&c->h.handle, &fd) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) == 0 &&
      len == sizeof uc) {
    c->pid = uc.pid;
    c->uid = uc.uid;
    c->gid = uc.gid;
  }
}

/* Makes room on a full listener: its longest-idle kept-alive connection
 * is closed (a client must expect that of a kept-alive connection, RFC
 * 9112 §9.8). Streams, requests in progress and connections that have
 * not been answered yet keep their place. Returns false when none is
 * idle. */
static bool server_evict(http_server *s, int which) {
  if (list_empty(&s->idle[which]))
    return false;
  conn_close(container_of(s->idle[which].next, http_conn, idle_node));
  return true;
}

static void server_accept(http_server *s, int which) {
  unsigned max =
      which == L_TCP ? s->o.tcp_max_connections : s->o.max_connections;
  bool reject = s->n_open[which] >= max && !server_evict(s, which);
  http_conn *c;

  /* Rejected connections linger briefly; past as many again they are
   * closed without an answer. */
  if (reject && s->n_rejects[which] >= max) {
    server_drop(s, which);
    return;
  }
  if ((c = conn_new(s, which, reject)) == NULL) {
    server_drop(s, which);
    return;
  }
  c->has_sock = true;
  if (c->tcp)
    uv_tcp_init(s->loop, &c->h.tcp);
  else
    uv_pipe_init(s->loop, &c->h.pipe, 0);
  c->h.handle.data = c;
  if (uv_accept(&s->l[which].stream, &c->h.stream) != 0) {
    conn_close(c);
    return;
  }
  if (c->tcp)
    uv_tcp_nodelay(&c->h.tcp, 1);
  else
    conn_read_peer(c);
  conn_start(c);
}

static void server_on_connection(uv_stream_t *l, int status) {
  http_server *s = l->data;

  /* Errors here are the listener's (EMFILE, ENOMEM); libuv retries. */
  if (status < 0 || s->closing)
    return;
  server_accept(s, l == &s->l[L_TCP].stream ? L_TCP : L_UNIX);
}

/* ---- Listening ----------------------------------------------------------- */

/* Removes a stale socket file at path (nothing listens: connect() is
 * refused). Anything else there is an error. */
static int unix_clear_path(const char *path, const struct sockaddr_un *sa,
                           char *err, size_t errlen) {
  struct stat st;
  int fd, rc, e;

  if (lstat(path, &st) != 0) {
    if (errno == ENOENT)
      return 0;
    e = errno;
    fmt(err, errlen, "cannot use socket path %s: %s", path, strerror(e));
    return -e;
  }
  if (!S_ISSOCK(st.st_mode)) {
    fmt(err, errlen,
        "cannot listen on %s: the file exists and is not a socket (refusing "
        "to replace it)",
        path);
    return UV_EEXIST;
  }
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) <
      0) {
    e = errno;
    fmt(err, errlen, "cannot probe socket %s: socket: %s", path, strerror(e));
    return -e;
  }
  rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
  e = errno;
  close(fd);
  /* A full backlog (EAGAIN) is a live listener too. */
  if (rc == 0 || e == EAGAIN || e == EINPROGRESS) {
    fmt(err, errlen,
        "cannot listen on %s: another process is listening there (is tether "
        "already running?)",
        path);
    return UV_EADDRINUSE;
  }
  if (e != ECONNREFUSED) {
    fmt(err, errlen, "cannot probe socket %s: connect: %s", path, strerror(e));
    return -e;
  }
  if (unlink(path) != 0 && errno != ENOENT) {
    e = errno;
    fmt(err, errlen, "cannot remove the stale socket %s: %s", path,
        strerror(e));
    return -e;
  }
  return 0;
}

static int unix_listen(http_server *s, int *out, char *err, size_t errlen) {
  const char *path = s->unix_path;
  struct sockaddr_un sa;
  struct stat st;
  mode_t old;
  int fd, rc, e;

  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa.sun_path) {
    fmt(err, errlen, "socket path %s is too long (%zu bytes, at most %zu)",
        path, strlen(path), sizeof sa.sun_path - 1);
    return UV_ENAMETOOLONG;
  }
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if ((rc = unix_clear_path(path, &sa, err, errlen)) != 0)
    return rc;
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) <
      0) {
    e = errno;
    fmt(err, errlen, "cannot listen on %s: socket: %s", path, strerror(e));
    return -e;
  }
  /* bind() creates the file with the umask applied: with every bit masked
   * it is born mode 0000, so it is never more open than asked, not even
   * between bind and chmod. umask is per process; the window is two
   * syscalls, and a file created meanwhile elsewhere only gets stricter. */
  old = umask(0777);
  rc = bind(fd, (const struct sockaddr *)&sa, sizeof sa);
  e = errno;
  umask(old);
  if (rc != 0) {
    fmt(err, errlen, "cannot listen on %s: bind: %s", path, strerror(e));
    close(fd);
    return -e;
  }
  if (s->o.unix_gid != (gid_t)-1 && chown(path, (uid_t)-1, s->o.unix_gid)) {
    e = errno;
    fmt(err, errlen, "cannot give socket %s to group %u: %s", path,
        (unsigned)s->o.unix_gid, strerror(e));
    goto fail;
  }
  if (chmod(path, (mode_t)(s->o.unix_mode & 07777)) != 0) {
    e = errno;
    fmt(err, errlen, "cannot set mode %04o on socket %s: %s", s->o.unix_mode,
        path, strerror(e));
    goto fail;
  }
  if (stat(path, &st) != 0) {
    e = errno;
    fmt(err, errlen, "cannot stat socket %s: %s", path, strerror(e));
    goto fail;
  }
  if (listen(fd, LISTEN_BACKLOG) != 0) {
    e = errno;
    fmt(err, errlen, "cannot listen on %s: %s", path, strerror(e));
    goto fail;
  }
  s->have_sock_file = true;
  s->sock_dev = st.st_dev;
  s->sock_ino = st.st_ino;
  *out = fd;
  return 0;

fail:
  unlink(path);
  close(fd);
  return -e;
}

static int tcp_listen(http_server *s, int *out, char *err, size_t errlen) {
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
    struct sockaddr_storage ss;
  } a;
  char host[INET6_ADDRSTRLEN + 16];
  size_t n = strlen(s->tcp_host);
  socklen_t alen;
  int fd, one = 1, e;

  /* "[::1]" is accepted for "::1". */
  if (n >= 2 && n < sizeof host && s->tcp_host[0] == '[' &&
      s->tcp_host[n - 1] == ']') {
    memcpy(host, s->tcp_host + 1, n - 2);
    host[n - 2] = '\0';
  } else {
    fmt(host, sizeof host, "%s", s->tcp_host);
  }
  memset(&a, 0, sizeof a);
  if (uv_ip4_addr(host, s->o.tcp_port, &a.in) == 0) {
    alen = sizeof a.in;
  } else if (uv_ip6_addr(host, s->o.tcp_port, &a.in6) == 0) {
    alen = sizeof a.in6;
  } else {
    fmt(err, errlen, "tcp_host %s is not an IPv4 or IPv6 address", s->tcp_host);
    return UV_EINVAL;
  }
  if ((fd = socket(a.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                   0)) < 0) {
    e = errno;
    fmt(err, errlen, "cannot listen on %s port %u: socket: %s", s->tcp_host,
        (unsigned)s->o.tcp_port, strerror(e));
    return -e;
  }
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, &a.sa, alen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
    e = errno;
    fmt(err, errlen, "cannot listen on %s port %u: %s", s->tcp_host,
        (unsigned)s->o.tcp_port, strerror(e));
    close(fd);
    return -e;
  }
  alen = sizeof a;
  if (getsockname(fd, &a.sa, &alen) != 0) {
    e = errno;
    fmt(err, errlen, "cannot listen on %s port %u: getsockname: %s",
        s->tcp_host, (unsigned)s->o.tcp_port, strerror(e));
    close(fd);
    return -e;
  }
  s->tcp_port =
      ntohs(a.sa.sa_family == AF_INET6 ? a.in6.sin6_port : a.in.sin_port);
  *out = fd;
  return 0;
}

/* Removes the socket file, if it is still the one this server made. */
static void server_unlink_socket(http_server *s) {
  struct stat st;

  if (!s->have_sock_file)
    return;
  s->have_sock_file = false;
  if (lstat(s->unix_path, &st) == 0 && st.st_dev == s->sock_dev &&
      st.st_ino == s->sock_ino)
    unlink(s->unix_path);
}

/* ---- The server ---------------------------------------------------------- */

static void server_on_freed(uv_handle_t *h) {
  http_server *s = h->data;
  void (*cb)(void *) = s->close_cb;
  void *data = s->close_data;

  free(s->unix_path);
  free(s->tcp_host);
  buf_free(&s->fake_wire);
  free(s);
  if (cb != NULL)
    cb(data);
}

static void server_maybe_freed(http_server *s) {
  if (s->closing && !s->freeing && s->n_live == 0 &&
      s->n_rejects[L_UNIX] == 0 && s->n_rejects[L_TCP] == 0 &&
      s->handles == 0) {
    s->freeing = true;
    uv_close((uv_handle_t *)&s->close_handle, server_on_freed);
  }
}

static void server_on_handle_closed(uv_handle_t *h) {
  http_server *s = h->data;

  s->handles--;
  server_maybe_freed(s);
}

/* Stops listening and closes every connection; s is freed once all is
 * closed. */
static void server_shut(http_server *s) {
  int i;

  s->closing = true;
  for (i = 0; i < 2; i++) {
    if (s->listening[i]) {
      s->listening[i] = false;
      uv_close(&s->l[i].handle, server_on_handle_closed);
    }
  }
  if (s->fake_idle_init) {
    s->fake_idle_init = false;
    uv_close((uv_handle_t *)&s->fake_idle, server_on_handle_closed);
  }
  server_unlink_socket(s);
  while (!list_empty(&s->conns))
    conn_close(container_of(s->conns.next, http_conn, node));
  server_maybe_freed(s);
}

static int server_open(http_server *s, int which, int fd) {
  sock *l = &s->l[which];
  int rc;

  if (which == L_TCP) {
    uv_tcp_init(s->loop, &l->tcp);
  } else {
    uv_pipe_init(s->loop, &l->pipe, 0);
  }
  l->handle.data = s;
  s->listening[which] = true;
  s->handles++;
  rc = which == L_TCP ? uv_tcp_open(&l->tcp, fd) : uv_pipe_open(&l->pipe, fd);
  if (rc != 0) {
    close(fd);
    return rc;
  }
  return uv_listen(&l->stream, LISTEN_BACKLOG, server_on_connection);
}

int http_server_start(uv_loop_t *loop, const http_server_opts *o,
                      http_server_handler handler, void *data,
                      http_server **out, char *err, size_t errlen) {
  int ufd = -1, tfd = -1, rc = UV_ENOMEM;
  http_server *s;

  if (loop == NULL || o == NULL || handler == NULL || out == NULL) {
    fmt(err, errlen, "http_server_start: missing argument");
    return UV_EINVAL;
  }
  if ((s = calloc(1, sizeof *s)) == NULL) {
    fmt(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  s->loop = loop;
  s->o = *o;
  s->handler = handler;
  s->data = data;
  list_init(&s->conns);
  list_init(&s->idle[L_UNIX]);
  list_init(&s->idle[L_TCP]);
  list_init(&s->fake_writes);
  buf_init(&s->fake_wire, 0);
  if (s->o.max_connections == 0)
    s->o.max_connections = DEFAULT_MAX_CONNECTIONS;
  if (s->o.tcp_max_connections == 0)
    s->o.tcp_max_connections = DEFAULT_TCP_MAX_CONNECTIONS;
  if (s->o.max_header_size == 0)
    s->o.max_header_size = DEFAULT_MAX_HEADER_SIZE;
  if (s->o.max_body == 0)
    s->o.max_body = DEFAULT_MAX_BODY;
  if (s->o.request_timeout == 0)
    s->o.request_timeout = DEFAULT_REQUEST_TIMEOUT;
  if (s->o.idle_timeout == 0)
    s->o.idle_timeout = DEFAULT_IDLE_TIMEOUT;
  if (s->o.write_timeout == 0)
    s->o.write_timeout = DEFAULT_WRITE_TIMEOUT;
  if ((o->unix_path != NULL && (s->unix_path = strdup(o->unix_path)) == NULL) ||
      (o->tcp_host != NULL && (s->tcp_host = strdup(o->tcp_host)) == NULL)) {
    fmt(err, errlen, "out of memory");
    goto fail;
  }
  s->o.unix_path = s->unix_path;
  s->o.tcp_host = s->tcp_host;
  /* Sockets first, with plain syscalls: the common failures (a path in
   * use, a port taken) return here before any handle exists. */
  if (s->unix_path != NULL && (rc = unix_listen(s, &ufd, err, errlen)) != 0)
    goto fail;
  if (s->tcp_host != NULL && (rc = tcp_listen(s, &tfd, err, errlen)) != 0)
    goto fail;
  uv_timer_init(loop, &s->close_handle);
  s->close_handle.data = s;
  if (ufd >= 0) {
    rc = server_open(s, L_UNIX, ufd);
    ufd = -1;
    if (rc != 0) {
      fmt(err, errlen, "cannot listen on %s: %s", s->unix_path,
          uv_strerror(rc));
      goto fail_handles;
    }
  }
  if (tfd >= 0) {
    rc = server_open(s, L_TCP, tfd);
    tfd = -1;
    if (rc != 0) {
      fmt(err, errlen, "cannot listen on %s port %u: %s", s->tcp_host,
          (unsigned)s->o.tcp_port, uv_strerror(rc));
      goto fail_handles;
    }
  }
  *out = s;
  return 0;

fail_handles:
  /* Handles exist: they close on the loop's next turns, and s with them. */
  if (tfd >= 0)
    close(tfd);
  server_shut(s);
  return rc;

fail:
  if (ufd >= 0)
    close(ufd);
  if (tfd >= 0)
    close(tfd);
  server_unlink_socket(s);
  free(s->unix_path);
  free(s->tcp_host);
  free(s);
  return rc;
}

uint16_t http_server_tcp_port(const http_server *s) {
  return s != NULL ? s->tcp_port : 0;
}

void http_server_close(http_server *s, void (*cb)(void *data), void *data) {
  assert(!s->closing);
  s->close_cb = cb;
  s->close_data = data;
  server_shut(s);
}

/* ---- The socketless connection (loop/http_srv_test.h) -------------------- */

static void fake_cancel_writes(http_server *s, http_conn *c) {
  list *n = s->fake_writes.next;

  while (n != &s->fake_writes) {
    wreq *w = container_of(n, wreq, node);

    n = n->next;
    if (w->c == c) {
      list_remove(&w->node);
      conn_on_written(w, UV_ECANCELED);
    }
  }
}

/* One loop turn of the fake transport: the writes made so far complete,
 * then one read is delivered if the connection reads. */
static void server_on_fake_idle(uv_idle_t *h) {
  http_server *s = h->data;
  http_conn *c;
  list done;
  size_t n;

  list_init(&done);
  while (!list_empty(&s->fake_writes)) {
    list *first = s->fake_writes.next;

    list_remove(first);
    list_push_back(&done, first);
  }
  while (!list_empty(&done)) {
    wreq *w = container_of(done.next, wreq, node);

    list_remove(&w->node);
    conn_on_written(w, 0);
  }
  c = s->fake;
  if (c == NULL || !c->reading)
    return;
  if (s->fake_wire.len > 0) {
    n = s->fake_wire.len < READ_CHUNK ? s->fake_wire.len : READ_CHUNK;
    if (buf_reserve(&c->in, READ_CHUNK) != 0) {
      conn_on_read(c, UV_ENOBUFS);
      return;
    }
    memcpy(c->in.data + c->in.len, s->fake_wire.data, n);
    buf_consume(&s->fake_wire, n);
    conn_on_read(c, (ssize_t)n);
  } else if (s->fake_eof && !s->fake_eof_sent) {
    s->fake_eof_sent = true;
    conn_on_read(c, UV_EOF);
  }
}

int http__server_fake_open(http_server *s, buf *out) {
  http_conn *c;

  if (s == NULL || out == NULL)
    return UV_EINVAL;
  if (s->fake != NULL || s->closing)
    return UV_EBUSY;
  if ((c = conn_new(s, L_UNIX, false)) == NULL)
    return UV_ENOMEM;
  c->pid = getpid();
  c->uid = getuid();
  c->gid = getgid();
  s->fake = c;
  s->fake_out = out;
  buf_reset(&s->fake_wire);
  s->fake_eof = s->fake_eof_sent = false;
  if (!s->fake_idle_init) {
    uv_idle_init(s->loop, &s->fake_idle);
    s->fake_idle.data = s;
    s->fake_idle_init = true;
    s->handles++;
    uv_idle_start(&s->fake_idle, server_on_fake_idle);
  }
  conn_start(c);
  return 0;
}

int http__server_fake_feed(http_server *s, const char *data, size_t len) {
  if (s->fake == NULL || len == 0)
    return 0;
  return buf_append(&s->fake_wire, data, len);
}

void http__server_fake_eof(http_server *s) {
  s->fake_eof = true;
}

bool http__server_fake_pending(const http_server *s) {
  const http_conn *c = s->fake;

  if (!list_empty(&s->fake_writes))
    return true;
  if (c == NULL)
    return false;
  if (c->phase == PHASE_DEFER)
    return true;
  return c->reading &&
         (s->fake_wire.len > 0 || (s->fake_eof && !s->fake_eof_sent));
}

bool http__server_fake_open_p(const http_server *s) {
  return s->fake != NULL;
}
