/* The HTTP/1.1 client: a response parser on llhttp, connection pools per
 * origin, requests with their timers, redirects and proxies.
 *
 * Ownership, in one place:
 *   http_client  owns its origins; origins list their connections (the
 *                pool's and the control lane's apart) and the requests
 *                waiting for a pooled one.
 *   conn         owns its stream, its timer and the bytes being written;
 *                it points at the request it serves (or was opened for).
 *   http_req     owns its copy of the request, its parser (so the head and
 *                body stay put after the connection moves on), the bytes
 *                held while paused and three handles: the whole-request
 *                timer, the phase timer (the head, then idle) and an idle
 *                handle that defers work to a later loop turn.
 * Structs with handles are freed only from their last close callback
 * (STYLE rule 8); the client is freed once every connection and request is.
 */
#include "loop/http_client.h"
#include "loop/list.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "loop/http_parse.h"
#include "protocol/buf.h"
#include "protocol/http.h"

#define DEFAULT_MAX_CONNECTIONS 4
#define DEFAULT_MAX_STREAMS     64
#define DEFAULT_MAX_STATUS_LINE (8 * 1024)
#define DEFAULT_MAX_HEADER_SIZE (64 * 1024)
#define DEFAULT_MAX_HEADERS     100
#define DEFAULT_MAX_BODY        (16 * 1024 * 1024)
#define USER_AGENT              "tether/" TETHER_VERSION

/* ---- The response parser ------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static void fmt(char *out, size_t outlen,
                                                      const char *f, ...) {
  va_list ap;

  va_start(ap, f);
  vsnprintf(out, outlen, f, ap);
  va_end(ap);
}

static http__parser *parser_of(llhttp_t *ll) {
  return (http__parser *)ll;
}

/* Stops the parser with an error; llhttp then returns HPE_USER. */
__attribute__((format(printf, 3, 4))) static int
parser_fail(http__parser *p, int code, const char *f, ...) {
  va_list ap;

  if (p->err == 0) {
    p->err = code;
    va_start(ap, f);
    vsnprintf(p->msg, sizeof p->msg, f, ap);
    va_end(ap);
  }
  return HPE_USER;
}

/* The position just past at + len, counted from the reset. */
static size_t parser_pos(const http__parser *p, const char *at, size_t len) {
  return p->_raw + (size_t)(at + len - p->_chunk);
}

static int on_message_begin(llhttp_t *ll) {
  http__parser *p = parser_of(ll);

  p->_status_done = false;
  p->_in_field = false;
  p->_informational = false;
  p->n_headers = 0;
  p->reason[0] = '\0';
  buf_reset(&p->_strings);
  return 0;
}

static int on_status(llhttp_t *ll, const char *at, size_t len) {
  http__parser *p = parser_of(ll);
  size_t have = strlen(p->reason), take;

  p->_last = parser_pos(p, at, len);
  if (parser_pos(p, at, len) - p->_msg_base > p->lim.max_status_line)
    return parser_fail(p, HTTP_ESTATUSLINE, "status line longer than %zu bytes",
                       p->lim.max_status_line);
  take = len < sizeof p->reason - 1 - have ? len : sizeof p->reason - 1 - have;
  memcpy(p->reason + have, at, take);
  p->reason[have + take] = '\0';
  return 0;
}

static int on_status_complete(llhttp_t *ll) {
  http__parser *p = parser_of(ll);

  /* The CRLF is not consumed yet; _status_end is refined at the first
   * header field. Heads made only of a status line are capped by the
   * check after each execute. */
  if (!p->_status_done) {
    p->_status_done = true;
    p->_status_end = p->_raw;
  }
  return 0;
}

/* Header lines count by position, so whitespace and folding the parser
 * skips without a callback still counts towards the cap. */
static int check_header_bytes(http__parser *p, const char *at, size_t len) {
  if (p->_head_done) {
    p->_trailer_bytes += len;
    if (p->_trailer_bytes > p->lim.max_header_size)
      return parser_fail(p, HTTP_EHEADERS, "trailers longer than %zu bytes",
                         p->lim.max_header_size);
    return 0;
  }
  if (parser_pos(p, at, len) - p->_status_end > p->lim.max_header_size)
    return parser_fail(p, HTTP_EHEADERS, "headers longer than %zu bytes",
                       p->lim.max_header_size);
  return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t len) {
  http__parser *p = parser_of(ll);

  if (!p->_status_done) {
    p->_status_done = true;
    p->_status_end = parser_pos(p, at, 0);
  }
  p->_last = parser_pos(p, at, len);
  if (check_header_bytes(p, at, len) != 0)
    return HPE_USER;
  if (p->_head_done) /* trailers: counted, not kept */
    return 0;
  if (!p->_in_field) {
    p->_in_field = true;
    if (p->n_headers >= p->lim.max_headers)
      return parser_fail(p, HTTP_EHEADERS, "more than %zu headers",
                         p->lim.max_headers);
    if (p->n_headers * 2 + 2 > p->_offs_cap) {
      size_t cap = p->_offs_cap ? p->_offs_cap * 2 : 32;
      size_t *o = realloc(p->_offs, cap * sizeof *o);

      if (o == NULL)
        return parser_fail(p, UV_ENOMEM, "out of memory for headers");
      p->_offs = o;
      p->_offs_cap = cap;
    }
    p->_offs[p->n_headers * 2] = p->_strings.len;
  }
  if (buf_append(&p->_strings, at, len) != 0)
    return parser_fail(p, UV_ENOMEM, "out of memory for headers");
  return 0;
}

static int on_header_field_complete(llhttp_t *ll) {
  http__parser *p = parser_of(ll);

  if (p->_head_done) {
    if (++p->_n_trailers > p->lim.max_headers)
      return parser_fail(p, HTTP_EHEADERS, "more than %zu trailers",
                         p->lim.max_headers);
    return 0;
  }
  if (!p->_in_field)
    return 0;
  p->_in_field = false;
  if (buf_append(&p->_strings, "", 1) != 0)
    return parser_fail(p, UV_ENOMEM, "out of memory for headers");
  p->_offs[p->n_headers * 2 + 1] = p->_strings.len;
  return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t len) {
  http__parser *p = parser_of(ll);

  p->_last = parser_pos(p, at, len);
  if (check_header_bytes(p, at, len) != 0)
    return HPE_USER;
  if (p->_head_done)
    return 0;
  if (buf_append(&p->_strings, at, len) != 0)
    return parser_fail(p, UV_ENOMEM, "out of memory for headers");
  return 0;
}

static int on_header_value_complete(llhttp_t *ll) {
  http__parser *p = parser_of(ll);

  if (p->_head_done)
    return 0;
  if (buf_append(&p->_strings, "", 1) != 0)
    return parser_fail(p, UV_ENOMEM, "out of memory for headers");
  p->n_headers++;
  return 0;
}

static int on_headers_complete(llhttp_t *ll) {
  http__parser *p = parser_of(ll);
  int status = ll->status_code;
  size_t i;

  if (status < 100 || status > 999)
    return parser_fail(p, HTTP_EPARSE, "invalid status code %d", status);
  if (status == 101)
    return parser_fail(p, HTTP_EPARSE,
                       "unexpected 101 Switching Protocols (no upgrade was "
                       "asked for)");
  if (status < 200) {
    /* An interim answer: skip it and parse the next head. */
    if (++p->_n_informational > HTTP__MAX_INFORMATIONAL)
      return parser_fail(p, HTTP_EPARSE,
                         "more than %d informational (1xx) responses",
                         HTTP__MAX_INFORMATIONAL);
    p->_informational = true;
    return 1;
  }
  p->status = status;
  free(p->headers);
  p->headers = NULL;
  if (p->n_headers > 0) {
    p->headers = malloc(p->n_headers * sizeof *p->headers);
    if (p->headers == NULL)
      return parser_fail(p, UV_ENOMEM, "out of memory for headers");
    for (i = 0; i < p->n_headers; i++) {
      p->headers[i].name = p->_strings.data + p->_offs[i * 2];
      p->headers[i].value = p->_strings.data + p->_offs[i * 2 + 1];
    }
  }
  p->_head_done = true;
  p->_event = HTTP__HEAD;
  /* RFC 9110 §6.3: these never have a body, whatever the headers say. The
   * flag is what returning 1 would set; here the parser also pauses. */
  if (p->_no_body || p->_connect || status == 204 || status == 304)
    ll->flags |= F_SKIPBODY;
  else if (!p->_streaming && (ll->flags & F_CONTENT_LENGTH) &&
           !(ll->flags & F_CHUNKED) && ll->content_length > p->lim.max_body)
    return parser_fail(p, HTTP_EBODY,
                       "body larger than %zu bytes (Content-Length %" PRIu64
                       ")",
                       p->lim.max_body, ll->content_length);
  return HPE_PAUSED;
}

static int on_body(llhttp_t *ll, const char *at, size_t len) {
  http__parser *p = parser_of(ll);

  /* llhttp reports an open body span again at the end of every execute,
   * empty when no byte came: not an event. */
  if (len == 0)
    return 0;
  if (p->_streaming) {
    p->_body_at = at;
    p->_body_len = len;
    p->_event = HTTP__BODY;
    return HPE_PAUSED;
  }
  if (buf_append(&p->body, at, len) != 0)
    return parser_fail(p, HTTP_EBODY, "body larger than %zu bytes",
                       p->lim.max_body);
  return 0;
}

static int on_message_complete(llhttp_t *ll) {
  http__parser *p = parser_of(ll);

  if (p->_informational) {
    /* The next head is measured from the end of this one. */
    p->_msg_base = p->_last;
    return 0;
  }
  p->keep_alive = llhttp_should_keep_alive(ll) != 0;
  p->_done = true;
  p->_event = HTTP__DONE;
  return HPE_PAUSED;
}

static const llhttp_settings_t parser_settings = {
  .on_message_begin = on_message_begin,
  .on_status = on_status,
  .on_header_field = on_header_field,
  .on_header_value = on_header_value,
  .on_headers_complete = on_headers_complete,
  .on_body = on_body,
  .on_message_complete = on_message_complete,
  .on_status_complete = on_status_complete,
  .on_header_field_complete = on_header_field_complete,
  .on_header_value_complete = on_header_value_complete,
};

void http__parser_init(http__parser *p, const http__limits *lim) {
  memset(p, 0, sizeof *p);
  p->lim = *lim;
  if (p->lim.max_status_line == 0)
    p->lim.max_status_line = DEFAULT_MAX_STATUS_LINE;
  if (p->lim.max_header_size == 0)
    p->lim.max_header_size = DEFAULT_MAX_HEADER_SIZE;
  if (p->lim.max_headers == 0)
    p->lim.max_headers = DEFAULT_MAX_HEADERS;
  if (p->lim.max_body == 0)
    p->lim.max_body = DEFAULT_MAX_BODY;
  buf_init(&p->body, p->lim.max_body);
  buf_init(&p->_strings, 0);
  http__parser_reset(p, false, false, false);
}

void http__parser_reset(http__parser *p, bool streaming, bool head_request,
                        bool connect) {
  llhttp_init(&p->ll, HTTP_RESPONSE, &parser_settings);
  p->status = 0;
  p->reason[0] = '\0';
  free(p->headers);
  p->headers = NULL;
  p->n_headers = 0;
  buf_reset(&p->body);
  buf_reset(&p->_strings);
  p->keep_alive = false;
  p->err = 0;
  p->msg[0] = '\0';
  p->_streaming = streaming;
  p->_no_body = head_request;
  p->_connect = connect;
  p->_head_done = p->_done = p->_status_done = false;
  p->_in_field = p->_informational = false;
  p->_event = HTTP__MORE;
  p->_n_informational = 0;
  p->_chunk = NULL;
  p->_raw = p->_msg_base = p->_status_end = p->_last = 0;
  p->_trailer_bytes = p->_n_trailers = 0;
  p->_body_at = NULL;
  p->_body_len = 0;
}

void http__parser_free(http__parser *p) {
  free(p->headers);
  free(p->_offs);
  buf_free(&p->body);
  buf_free(&p->_strings);
  p->headers = NULL;
  p->_offs = NULL;
  p->_offs_cap = 0;
  p->n_headers = 0;
}

/* Caps of a head that is still arriving, checked after every execute:
 * data that gave no callback (whitespace, a status line cut short) still
 * counts. */
static int parser_check_head(http__parser *p) {
  if (p->_head_done || p->err != 0)
    return 0;
  if (!p->_status_done && p->_raw - p->_msg_base > p->lim.max_status_line)
    return parser_fail(p, HTTP_ESTATUSLINE, "status line longer than %zu bytes",
                       p->lim.max_status_line);
  if (p->_status_done && p->_raw - p->_status_end > p->lim.max_header_size)
    return parser_fail(p, HTTP_EHEADERS, "headers longer than %zu bytes",
                       p->lim.max_header_size);
  return 0;
}

int http__parser_feed(http__parser *p, const char *data, size_t len,
                      size_t *used, const char **body, size_t *body_len) {
  llhttp_errno_t e;

  *used = 0;
  *body = NULL;
  *body_len = 0;
  if (p->err != 0)
    return HTTP__ERROR;
  if (p->_done)
    return HTTP__DONE;
  if (llhttp_get_errno(&p->ll) == HPE_PAUSED)
    llhttp_resume(&p->ll);
  p->_event = HTTP__MORE;
  p->_chunk = data;
  e = llhttp_execute(&p->ll, data, len);
  if (e == HPE_OK) {
    *used = len;
  } else if (e == HPE_PAUSED) {
    *used = (size_t)(llhttp_get_error_pos(&p->ll) - data);
  } else {
    if (p->err == 0)
      parser_fail(p, HTTP_EPARSE, "invalid HTTP response: %s (%s)",
                  llhttp_get_error_reason(&p->ll), llhttp_errno_name(e));
    return HTTP__ERROR;
  }
  if (!p->_head_done) {
    p->_raw += *used;
    if (parser_check_head(p) != 0)
      return HTTP__ERROR;
  }
  if (p->_event == HTTP__BODY) {
    *body = p->_body_at;
    *body_len = p->_body_len;
  }
  p->_chunk = NULL;
  return p->_event;
}

int http__parser_eof(http__parser *p) {
  llhttp_errno_t e;

  if (p->err != 0)
    return HTTP__ERROR;
  if (p->_done)
    return HTTP__DONE;
  if (llhttp_get_errno(&p->ll) == HPE_PAUSED)
    llhttp_resume(&p->ll);
  p->_event = HTTP__MORE;
  e = llhttp_finish(&p->ll);
  if (p->_event == HTTP__DONE) {
    p->keep_alive = false; /* the connection is gone anyway */
    return HTTP__DONE;
  }
  if (e == HPE_OK && !p->_head_done)
    return HTTP__MORE;
  if (p->err == 0) {
    if (p->_head_done)
      parser_fail(p, HTTP_ECLOSED,
                  "connection closed before the end of the body");
    else
      parser_fail(p, HTTP_ECLOSED,
                  "connection closed in the middle of the response head");
  }
  return HTTP__ERROR;
}

/* ---- The client ---------------------------------------------------------- */

typedef struct origin origin;
typedef struct conn conn;

typedef enum route_kind {
  ROUTE_DIRECT, /* TCP (and TLS for https) to the URL's host */
  ROUTE_UNIX,   /* the client's unix socket, plaintext */
  ROUTE_PROXY,  /* plain http through an HTTP proxy, absolute-form */
  ROUTE_TUNNEL  /* a CONNECT tunnel through the proxy, then TLS */
} route_kind;

struct http_client {
  uv_loop_t *loop;
  http_client_opts o;
  char *unix_path;
  http__limits lim;
  bool have_http_proxy, have_https_proxy;
  http_url http_proxy, https_proxy;
  char *no_proxy;
  char **origin_headers;  /* copies of o.origin_headers */
  bool tunnel_plain_http; /* tests: plain http through CONNECT too */
  list origins;
  unsigned n_active; /* requests not finished (on_done not even due) */
  unsigned n_reqs;   /* requests not freed yet */
  unsigned n_conns;  /* connections not freed yet */
  /* Inside a public call or a user callback: on_done of another request
   * must wait for a later turn, and origins must not be freed. */
  unsigned api_depth;
  bool closing;
  void (*close_cb)(void *data);
  void *close_data;
  uv_timer_t close_handle; /* never started: makes close_cb asynchronous */
};

struct origin {
  list node; /* in http_client.origins */
  http_client *c;
  char *key;
  route_kind kind;
  char *host; /* where to connect */
  uint16_t port;
  bool tls;         /* TLS to the origin (directly or inside the tunnel) */
  char *tls_host;   /* SNI and verification name */
  buf connect_head; /* ROUTE_TUNNEL: the CONNECT request */
  char *proxy_name; /* ROUTE_TUNNEL: host:port of the proxy, for messages */
  list conns;       /* every pooled connection not closing */
  unsigned n_conns;
  list streams; /* connections of long-lived requests, not closing */
  unsigned n_streams;
  list queue; /* requests waiting for a pooled connection */
};

typedef enum conn_state {
  CONN_CONNECTING, /* stream_connect in progress */
  CONN_TUNNEL,     /* CONNECT sent, waiting for the proxy's answer */
  CONN_TLS,        /* TLS handshake inside the tunnel */
  CONN_IDLE,       /* in the pool */
  CONN_BUSY,       /* serving req */
  CONN_CLOSING
} conn_state;

struct conn {
  list node; /* in origin.conns */
  http_client *c;
  origin *o;
  stream *s;
  conn_state state;
  bool reading;
  http_req *req;        /* the request served, or the one it was opened for */
  uv_timer_t timer;     /* pool idle timeout; the proxy's CONNECT answer */
  buf out;              /* bytes being written, kept until the write cb */
  unsigned served;      /* responses completed */
  unsigned writes;      /* writes not called back yet */
  http__parser *tunnel; /* the proxy's answer to CONNECT */
  unsigned closes;      /* close callbacks still to come */
  bool lane;            /* opened for a long-lived request: in
                           origin.streams, never pooled */
};

typedef enum req_state {
  REQ_QUEUED,     /* waiting in an origin's queue */
  REQ_CONNECTING, /* bound to a connection being opened */
  REQ_ACTIVE,     /* on a connection: sending, reading */
  REQ_FINISHING,  /* on_done is deferred to a later turn */
  REQ_DONE        /* on_done ran; the handles are closing */
} req_state;

struct http_req {
  http_client *c;
  http_callbacks cb;
  void *data;
  req_state state;
  /* The request, owned copies. */
  char *method;
  char *url; /* the current one, after redirects */
  http_url u;
  http_header *headers;
  size_t n_headers;
  char *body;
  size_t body_len;
  bool streaming, long_lived;
  uint64_t timeout, response_timeout, idle_timeout;
  unsigned max_redirects, redirects;
  /* Where it is. */
  origin *o; /* while queued */
  list node; /* in origin.queue */
  conn *k;   /* while connecting or active */
  bool reused, retried, force_fresh, got_bytes, got_head, paused;
  unsigned in_cb; /* inside one of its callbacks */
  http__parser p;
  buf pending; /* bytes received while paused */
  /* The outcome for on_done. */
  int status;
  char msg[256];
  uv_timer_t deadline; /* the whole request */
  uv_timer_t phase;    /* the head, then idle between body bytes */
  uv_idle_t defer;     /* on_done or a resume, on a later turn */
  unsigned closes;
};

static void origin_pump(origin *o);
static void conn_close(conn *k);
static void req_dispatch(http_req *r);
static void req_arm_phase(http_req *r);
static void conn_update_reading(conn *k);
static void req_on_defer(uv_idle_t *h);
static void req_on_head_timeout(uv_timer_t *t);

static const char *code_name(int code) {
  switch (code) {
  case HTTP_EURL:
    return "bad_url";
  case HTTP_EPARSE:
    return "bad_response";
  case HTTP_ESTATUSLINE:
    return "status_line_too_long";
  case HTTP_EHEADERS:
    return "headers_too_large";
  case HTTP_EBODY:
    return "body_too_large";
  case HTTP_EREDIRECTS:
    return "too_many_redirects";
  case HTTP_EDOWNGRADE:
    return "redirect_downgrade";
  case HTTP_EPROXY:
    return "proxy_refused";
  case HTTP_ECLOSED:
    return "closed_early";
  case HTTP_ETIMEOUT:
    return "timeout";
  case HTTP_EABORTED:
    return "aborted";
  case HTTP_EDEADLINE:
    return "deadline";
  case HTTP_ESTREAMS:
    return "too_many_streams";
  default:
    return NULL;
  }
}

/* libuv's uv_err_name and uv_strerror allocate (and leak) a string for a
 * code they do not know, such as a caller's SSE_E* code passed through
 * on_body; the _r forms write into a buffer instead. One buffer per thread
 * and per use is enough: every message is copied before the next call. */
static const char *err_text(int code, bool name) {
  static _Thread_local char text[2][96];

  if (name)
    return uv_err_name_r(code, text[0], sizeof text[0]);
  return uv_strerror_r(code, text[1], sizeof text[1]);
}

const char *http_strerror(int code) {
  const char *n = code_name(code);

  if (n != NULL)
    return n;
  if (code == STREAM_ETLS)
    return "tls_error";
  if (code == STREAM_EDNS)
    return "dns_error";
  return err_text(code, true);
}

const char *http_response_header(const http_response *resp, const char *name) {
  size_t i;

  if (resp == NULL || name == NULL)
    return NULL;
  for (i = 0; i < resp->n_headers; i++)
    if (strcasecmp(resp->headers[i].name, name) == 0)
      return resp->headers[i].value;
  return NULL;
}

/* ---- Requests: finishing and freeing ------------------------------------- */

static void client_maybe_closed(http_client *c);

static void req_on_handle_closed(uv_handle_t *h) {
  http_req *r = h->data;
  http_client *c = r->c;
  size_t i;

  if (--r->closes > 0)
    return;
  for (i = 0; i < r->n_headers; i++) {
    free((char *)r->headers[i].name);
    free((char *)r->headers[i].value);
  }
  free(r->headers);
  free(r->method);
  free(r->url);
  free(r->body);
  http_url_free(&r->u);
  http__parser_free(&r->p);
  buf_free(&r->pending);
  free(r);
  c->n_reqs--;
  client_maybe_closed(c);
}

static void req_close_handles(http_req *r) {
  r->closes = 3;
  uv_close((uv_handle_t *)&r->deadline, req_on_handle_closed);
  uv_close((uv_handle_t *)&r->phase, req_on_handle_closed);
  uv_close((uv_handle_t *)&r->defer, req_on_handle_closed);
}

static void req_deliver(http_req *r) {
  http_response resp, *rp = NULL;

  assert(r->state == REQ_FINISHING);
  r->state = REQ_DONE;
  if (r->p.status != 0) {
    memset(&resp, 0, sizeof resp);
    resp.status = r->p.status;
    resp.headers = r->p.headers;
    resp.n_headers = r->p.n_headers;
    resp.url = r->url;
    if (!r->streaming) {
      resp.body = buf_cstr(&r->p.body);
      resp.body_len = r->p.body.len;
      if (resp.body == NULL) { /* out of memory for the NUL */
        resp.body = "";
        resp.body_len = 0;
      }
    }
    rp = &resp;
  }
  r->c->api_depth++;
  r->cb.on_done(r, r->status, rp, r->status != 0 ? r->msg : NULL, r->data);
  r->c->api_depth--;
  req_close_handles(r);
}

/* Takes the request off its queue or connection. A connection in the
 * middle of this request's exchange cannot serve another, so it closes; one
 * still being opened goes on and joins the pool, unless it was the control
 * lane's, which serves its one request only. */
static void req_detach(http_req *r) {
  conn *k = r->k;

  if (r->state == REQ_QUEUED && r->o != NULL) {
    list_remove(&r->node);
    r->o = NULL;
  }
  if (k != NULL) {
    r->k = NULL;
    k->req = NULL;
    if (k->state == CONN_BUSY || k->lane)
      conn_close(k);
  }
  uv_timer_stop(&r->deadline);
  uv_timer_stop(&r->phase);
}

/* Ends the request with status (0 or an error) and msg. on_done runs now,
 * or on a later turn when the request is inside a public call or one of its
 * own callbacks, or when it was cancelled. */
static void req_finish(http_req *r, int status, const char *msg) {
  if (r->state >= REQ_FINISHING)
    return;
  req_detach(r);
  r->status = status;
  snprintf(r->msg, sizeof r->msg, "%s", msg != NULL ? msg : "");
  r->state = REQ_FINISHING;
  r->c->n_active--;
  if (r->c->api_depth > 0 || r->in_cb > 0 || status == UV_ECANCELED)
    uv_idle_start(&r->defer, req_on_defer);
  else
    req_deliver(r);
}

__attribute__((format(printf, 3, 4))) static void
req_fail(http_req *r, int code, const char *f, ...) {
  char msg[256];
  va_list ap;

  va_start(ap, f);
  vsnprintf(msg, sizeof msg, f, ap);
  va_end(ap);
  req_finish(r, code, msg);
}

/* ---- Origins --------------------------------------------------------------
 *
 * An origin is where connections go and what they may be shared for: the
 * scheme, host and port of a URL, the unix socket, or the proxy. */

static void origin_free(origin *o) {
  free(o->key);
  free(o->host);
  free(o->tls_host);
  free(o->proxy_name);
  buf_free(&o->connect_head);
  free(o);
}

/* Frees origins with no connection and no waiting request. Only called when
 * no client code is on the stack, so nobody holds a pointer to one. */
static void client_sweep(http_client *c) {
  list *n = c->origins.next;

  while (n != &c->origins) {
    origin *o = container_of(n, origin, node);

    n = n->next;
    if (o->n_conns == 0 && o->n_streams == 0 && list_empty(&o->queue)) {
      list_remove(&o->node);
      origin_free(o);
    }
  }
}

static origin *origin_get(http_client *c, const http_url *u) {
  char key[2 * HTTP_HOST_MAX + 64], target[HTTP_HOST_MAX + 16];
  char proxy[HTTP_HOST_MAX + 16];
  const http_url *px = NULL;
  route_kind kind = ROUTE_DIRECT;
  origin *o;
  list *n;

  http_url_authority(u, true, target, sizeof target);
  if (c->unix_path != NULL) {
    kind = ROUTE_UNIX;
  } else if (u->https && c->have_https_proxy &&
             !http_no_proxy_match(c->no_proxy, u->host, u->port)) {
    kind = ROUTE_TUNNEL;
    px = &c->https_proxy;
  } else if (!u->https && c->have_http_proxy &&
             !http_no_proxy_match(c->no_proxy, u->host, u->port)) {
    kind = c->tunnel_plain_http ? ROUTE_TUNNEL : ROUTE_PROXY;
    px = &c->http_proxy;
  }
  if (px != NULL)
    http_url_authority(px, true, proxy, sizeof proxy);
  switch (kind) {
  case ROUTE_DIRECT:
    fmt(key, sizeof key, "%s://%s", u->https ? "https" : "http", target);
    break;
  case ROUTE_UNIX:
    fmt(key, sizeof key, "unix:%s", c->unix_path);
    break;
  case ROUTE_PROXY:
    fmt(key, sizeof key, "proxy:%s", proxy);
    break;
  case ROUTE_TUNNEL:
    fmt(key, sizeof key, "tunnel:%s>%s%s", proxy, target,
        u->https ? "+tls" : "");
    break;
  }
  for (n = c->origins.next; n != &c->origins; n = n->next) {
    o = container_of(n, origin, node);
    if (strcmp(o->key, key) == 0)
      return o;
  }

  if ((o = calloc(1, sizeof *o)) == NULL)
    return NULL;
  o->c = c;
  o->kind = kind;
  list_init(&o->conns);
  list_init(&o->streams);
  list_init(&o->queue);
  buf_init(&o->connect_head, 0);
  o->key = strdup(key);
  if (px != NULL) {
    o->host = strdup(px->host);
    o->port = px->port;
    o->proxy_name = strdup(proxy);
  } else {
    o->host = strdup(u->host);
    o->port = u->port;
  }
  o->tls = u->https && kind != ROUTE_PROXY;
  o->tls_host = strdup(u->host);
  if (o->key == NULL || o->host == NULL || o->tls_host == NULL ||
      (px != NULL && o->proxy_name == NULL) ||
      (kind == ROUTE_TUNNEL &&
       http_request_build_connect(&o->connect_head, u, USER_AGENT) != 0)) {
    origin_free(o);
    return NULL;
  }
  list_push_back(&c->origins, &o->node);
  return o;
}

/* Where a connection of o goes, for messages: "host:port", "unix:/path" or
 * "proxy host:port". */
static void origin_name(const origin *o, char *out, size_t outlen) {
  if (o->kind == ROUTE_UNIX)
    snprintf(out, outlen, "unix:%s", o->c->unix_path);
  else if (o->proxy_name != NULL)
    snprintf(out, outlen, "proxy %s", o->proxy_name);
  else if (strchr(o->host, ':') != NULL)
    snprintf(out, outlen, "[%s]:%u", o->host, (unsigned)o->port);
  else
    snprintf(out, outlen, "%s:%u", o->host, (unsigned)o->port);
}

/* ---- Connections --------------------------------------------------------- */

static void conn_release_one(conn *k) {
  http_client *c = k->c;

  if (--k->closes > 0)
    return;
  buf_free(&k->out);
  if (k->tunnel != NULL) {
    http__parser_free(k->tunnel);
    free(k->tunnel);
  }
  free(k);
  c->n_conns--;
  client_maybe_closed(c);
}

static void conn_on_timer_closed(uv_handle_t *h) {
  conn_release_one(h->data);
}

static void conn_on_stream_closed(void *data) {
  conn_release_one(data);
}

static void conn_close_now(conn *k) {
  k->closes = k->s != NULL ? 2 : 1;
  uv_close((uv_handle_t *)&k->timer, conn_on_timer_closed);
  if (k->s != NULL) {
    stream_close(k->s, conn_on_stream_closed, k);
    k->s = NULL;
  }
}

/* Takes k out of its pool and closes it. A connect or TLS start still in
 * progress calls back with UV_ECANCELED before the stream's close callback
 * (loop/stream.h), and is ignored then. */
static void conn_close(conn *k) {
  origin *o = k->o;

  if (k->state == CONN_CLOSING)
    return;
  if (k->req != NULL) {
    k->req->k = NULL;
    k->req = NULL;
  }
  if (o != NULL) {
    list_remove(&k->node);
    if (k->lane)
      o->n_streams--;
    else
      o->n_conns--;
    k->o = NULL;
  }
  k->state = CONN_CLOSING;
  uv_timer_stop(&k->timer);
  conn_close_now(k);
  /* The pool has a free slot now: a request waiting for one goes out at
   * once (after a cancel, a timeout, a Connection: close or a broken
   * connection), not when some other request happens to come or go. */
  if (o != NULL && !k->lane && !list_empty(&o->queue))
    origin_pump(o);
}

static void conn_on_read(stream *s, ssize_t n, const char *bytes, void *data);

/* Reads unless the request on k is paused or still has held bytes to
 * parse: an idle pooled connection reads too, to notice the peer closing. */
static void conn_update_reading(conn *k) {
  bool want;

  if (k->s == NULL || (k->state != CONN_IDLE && k->state != CONN_BUSY))
    return;
  want = k->req == NULL || (!k->req->paused && k->req->pending.len == 0);
  if (want && !k->reading) {
    if (stream_read_start(k->s, conn_on_read, k) == 0)
      k->reading = true;
  } else if (!want && k->reading) {
    stream_read_stop(k->s);
    k->reading = false;
  }
}

static void conn_on_pool_timeout(uv_timer_t *t) {
  conn_close(t->data);
}

static void conn_make_idle(conn *k) {
  http_client *c = k->c;
  origin *o = k->o;

  k->state = CONN_IDLE;
  if (c->closing) {
    conn_close(k);
    return;
  }
  if (c->o.pool_idle_timeout > 0)
    uv_timer_start(&k->timer, conn_on_pool_timeout, c->o.pool_idle_timeout, 0);
  conn_update_reading(k);
  origin_pump(o);
}

/* The connection broke while serving its request. A request that was
 * sent on a reused connection and got no byte back met a keep-alive
 * connection the server had closed: it goes again once, on a new one. */
static void conn_failed(conn *k, int code, const char *msg) {
  http_req *r = k->req;
  origin *o = k->o;

  conn_close(k);
  if (r == NULL)
    return;
  if (r->reused && !r->got_bytes && !r->retried && o != NULL) {
    r->retried = true;
    r->force_fresh = true;
    uv_timer_stop(&r->phase);
    r->state = REQ_QUEUED;
    r->o = o;
    list_push_front(&o->queue, &r->node);
    origin_pump(o);
    return;
  }
  req_finish(r, code, msg);
}

static void conn_on_written(stream *s, int status, void *data) {
  conn *k = data;
  http_req *r = k->req;
  char msg[256];

  (void)s;
  k->writes--;
  if (k->state == CONN_TUNNEL && status < 0) {
    char name[HTTP_HOST_MAX + 32];

    origin_name(k->o, name, sizeof name);
    fmt(msg, sizeof msg, "%s: writing CONNECT failed: %s", name,
        err_text(status, false));
    conn_failed(k, status, msg);
    return;
  }
  if (k->state != CONN_BUSY || r == NULL)
    return;
  if (status < 0) {
    fmt(msg, sizeof msg, "writing the request failed: %s",
        err_text(status, false));
    conn_failed(k, status, msg);
  }
}

/* Puts r on k: builds the head, writes head and body, waits for the
 * answer. */
static void conn_assign(conn *k, http_req *r) {
  http_request_head h;
  char err[256];
  uv_buf_t b;
  int rc;

  k->state = CONN_BUSY;
  k->req = r;
  r->k = k;
  r->state = REQ_ACTIVE;
  r->reused = k->served > 0;
  r->got_bytes = r->got_head = false;
  uv_timer_stop(&k->timer);
  http__parser_reset(&r->p, r->streaming, strcmp(r->method, "HEAD") == 0,
                     false);
  buf_reset(&r->pending);

  memset(&h, 0, sizeof h);
  h.method = r->method;
  h.url = &r->u;
  h.absolute_form = k->o->kind == ROUTE_PROXY;
  h.headers = r->headers;
  h.n_headers = r->n_headers;
  h.user_agent = USER_AGENT;
  h.body_len = r->body_len;
  buf_reset(&k->out);
  rc = http_request_build(&k->out, &h, err, sizeof err);
  if (rc == 0 && r->body_len > 0)
    rc = buf_append(&k->out, r->body, r->body_len);
  if (rc != 0) {
    req_finish(r, rc, rc == UV_ENOMEM ? "out of memory" : err);
    return;
  }
  b = uv_buf_init(k->out.data, (unsigned)k->out.len);
  rc = stream_write(k->s, &b, 1, conn_on_written, k);
  if (rc != 0) {
    fmt(err, sizeof err, "writing the request failed: %s", err_text(rc, false));
    conn_failed(k, rc, err);
    return;
  }
  k->writes++;
  conn_update_reading(k);
  /* The head deadline runs from here, the write included: a peer that
   * takes the request and never reads it is as silent as one that never
   * answers. Each hop of a redirect and each retry starts it again. */
  if (r->response_timeout > 0)
    uv_timer_start(&r->phase, req_on_head_timeout, r->response_timeout, 0);
}

static void conn_ready(conn *k) {
  http_req *r = k->req;

  if (r != NULL) {
    k->req = NULL;
    r->k = NULL;
    conn_assign(k, r);
  } else if (k->lane) {
    conn_close(k); /* not reached: req_detach closes a lane's at once */
  } else {
    conn_make_idle(k);
  }
}

/* Fails the request a connection was opened for, and lets the origin's
 * queue try again. */
static void conn_open_failed(conn *k, int code, const char *msg) {
  http_req *r = k->req;
  origin *o = k->o;

  conn_close(k);
  if (r != NULL)
    req_finish(r, code, msg);
  if (o != NULL)
    origin_pump(o);
}

static void conn_on_tls(stream *s, int status, const char *msg, void *data) {
  conn *k = data;
  char name[HTTP_HOST_MAX + 32], m[320];

  (void)s;
  if (k->state == CONN_CLOSING)
    return;
  if (status != 0) {
    k->s = NULL; /* closed and freed by the stream */
    origin_name(k->o, name, sizeof name);
    fmt(m, sizeof m, "TLS to %s through %s failed: %s", k->o->tls_host, name,
        msg != NULL && *msg ? msg : err_text(status, false));
    conn_open_failed(k, status == UV_ETIMEDOUT ? HTTP_ETIMEOUT : status, m);
    return;
  }
  k->state = CONN_IDLE;
  conn_update_reading(k);
  conn_ready(k);
}

static void conn_on_tunnel_timeout(uv_timer_t *t) {
  conn *k = t->data;
  char name[HTTP_HOST_MAX + 32], m[320];

  origin_name(k->o, name, sizeof name);
  fmt(m, sizeof m,
      "%s did not answer CONNECT within %" PRIu64 " ms (connect_timeout)", name,
      k->c->o.connect_timeout);
  conn_open_failed(k, HTTP_ETIMEOUT, m);
}

static void tunnel_on_read(conn *k, ssize_t n, const char *bytes) {
  http__parser *p = k->tunnel;
  char name[HTTP_HOST_MAX + 32], m[320];
  const char *b;
  size_t used, bn;
  int ev, rc;

  origin_name(k->o, name, sizeof name);
  if (n < 0) {
    if (n == UV_EOF)
      fmt(m, sizeof m,
          "%s closed the connection before answering "
          "CONNECT",
          name);
    else
      fmt(m, sizeof m, "%s: reading the CONNECT answer failed: %s", name,
          *stream_error(k->s) ? stream_error(k->s) : err_text((int)n, false));
    conn_open_failed(k, n == UV_EOF ? HTTP_EPROXY : (int)n, m);
    return;
  }
  ev = http__parser_feed(p, bytes, (size_t)n, &used, &b, &bn);
  if (ev == HTTP__MORE)
    return;
  if (ev == HTTP__ERROR) {
    fmt(m, sizeof m, "%s answered CONNECT badly: %s", name, p->msg);
    conn_open_failed(k, HTTP_EPROXY, m);
    return;
  }
  if (p->status / 100 != 2) {
    fmt(m, sizeof m, "%s answered CONNECT %s with %d %s", name, k->o->tls_host,
        p->status, p->reason);
    conn_open_failed(k, HTTP_EPROXY, m);
    return;
  }
  if (used < (size_t)n) {
    fmt(m, sizeof m, "%s sent data after its CONNECT answer", name);
    conn_open_failed(k, HTTP_EPROXY, m);
    return;
  }
  uv_timer_stop(&k->timer);
  http__parser_free(k->tunnel);
  free(k->tunnel);
  k->tunnel = NULL;
  stream_read_stop(k->s);
  k->reading = false;
  /* The CONNECT may not have called back yet, but the proxy has read all
   * of it: k->out is free for the request. */
  if (!k->o->tls) {
    k->state = CONN_IDLE;
    conn_ready(k);
    return;
  }
  k->state = CONN_TLS;
  rc = stream_start_tls(k->s, k->c->o.tls, k->o->tls_host,
                        k->c->o.connect_timeout, conn_on_tls, k);
  if (rc != 0) {
    fmt(m, sizeof m, "TLS to %s through %s failed: %s", k->o->tls_host, name,
        err_text(rc, false));
    conn_open_failed(k, rc, m);
  }
}

static void tunnel_start(conn *k) {
  http_client *c = k->c;
  uv_buf_t b;
  int rc;

  k->state = CONN_TUNNEL;
  if ((k->tunnel = malloc(sizeof *k->tunnel)) == NULL) {
    conn_open_failed(k, UV_ENOMEM, "out of memory");
    return;
  }
  http__parser_init(k->tunnel, &c->lim);
  http__parser_reset(k->tunnel, false, false, true);
  buf_reset(&k->out);
  if (buf_append(&k->out, k->o->connect_head.data, k->o->connect_head.len) !=
      0) {
    conn_open_failed(k, UV_ENOMEM, "out of memory");
    return;
  }
  b = uv_buf_init(k->out.data, (unsigned)k->out.len);
  if ((rc = stream_write(k->s, &b, 1, conn_on_written, k)) != 0) {
    conn_open_failed(k, rc, err_text(rc, false));
    return;
  }
  k->writes++;
  if ((rc = stream_read_start(k->s, conn_on_read, k)) != 0) {
    conn_open_failed(k, rc, err_text(rc, false));
    return;
  }
  k->reading = true;
  if (c->o.connect_timeout > 0)
    uv_timer_start(&k->timer, conn_on_tunnel_timeout, c->o.connect_timeout, 0);
}

static void conn_on_connect(stream *s, int status, const char *msg,
                            void *data) {
  conn *k = data;
  char name[HTTP_HOST_MAX + 32], m[384];

  (void)s; /* k->s, set by stream_connect */
  if (k->state == CONN_CLOSING)
    return;
  if (status != 0) {
    k->s = NULL; /* closed and freed by the stream */
    origin_name(k->o, name, sizeof name);
    if (status == UV_ETIMEDOUT)
      fmt(m, sizeof m,
          "connect to %s took longer than %" PRIu64 " ms (connect_timeout)",
          name, k->c->o.connect_timeout);
    else
      fmt(m, sizeof m, "connect to %s failed: %s", name,
          msg != NULL && *msg ? msg : err_text(status, false));
    conn_open_failed(k, status == UV_ETIMEDOUT ? HTTP_ETIMEOUT : status, m);
    return;
  }
  if (k->o->kind == ROUTE_TUNNEL) {
    tunnel_start(k);
    return;
  }
  k->state = CONN_IDLE;
  conn_update_reading(k);
  conn_ready(k);
}

/* Opens a connection of o for r: a pooled one, or for a long-lived r one
 * of the control lane. */
static int conn_open(origin *o, http_req *r) {
  http_client *c = o->c;
  stream_opts so;
  conn *k;
  int rc;

  if ((k = calloc(1, sizeof *k)) == NULL)
    return UV_ENOMEM;
  k->c = c;
  buf_init(&k->out, 0);
  uv_timer_init(c->loop, &k->timer);
  k->timer.data = k;
  c->n_conns++;

  memset(&so, 0, sizeof so);
  so.host = o->host;
  so.port = o->port;
  so.connect_timeout = c->o.connect_timeout;
  so.keepalive = true;
  if (o->kind == ROUTE_UNIX) {
    so.unix_path = c->unix_path;
  } else if (o->kind == ROUTE_DIRECT && o->tls) {
    so.tls = c->o.tls;
    so.tls_host = o->tls_host;
  }
  k->state = CONN_CONNECTING;
  rc = stream_connect(c->loop, &so, conn_on_connect, k, &k->s);
  if (rc != 0) {
    k->s = NULL;
    k->state = CONN_CLOSING;
    conn_close_now(k);
    return rc;
  }
  k->o = o;
  k->lane = r->long_lived;
  if (k->lane) {
    list_push_back(&o->streams, &k->node);
    o->n_streams++;
  } else {
    list_push_back(&o->conns, &k->node);
    o->n_conns++;
  }
  k->req = r;
  r->k = k;
  r->state = REQ_CONNECTING;
  r->reused = false;
  return 0;
}

/* Hands waiting requests to idle connections, and opens connections while
 * the origin has fewer than max_connections. */
static void origin_pump(origin *o) {
  http_client *c = o->c;

  while (!list_empty(&o->queue)) {
    http_req *r = container_of(o->queue.next, http_req, node);
    conn *idle = NULL;
    list *n;
    int rc;

    for (n = o->conns.next; n != &o->conns; n = n->next) {
      conn *k = container_of(n, conn, node);

      if (k->state == CONN_IDLE) {
        idle = k;
        break;
      }
    }
    if (idle != NULL && !r->force_fresh) {
      list_remove(&r->node);
      r->o = NULL;
      conn_assign(idle, r);
    } else if (o->n_conns < c->o.max_connections) {
      list_remove(&r->node);
      r->o = NULL;
      if ((rc = conn_open(o, r)) != 0) {
        char name[HTTP_HOST_MAX + 32];

        origin_name(o, name, sizeof name);
        req_fail(r, rc, "connect to %s failed: %s", name, err_text(rc, false));
      }
    } else if (idle != NULL) {
      /* A retry wants a new connection and the pool is full of idle
       * ones, which may be as stale as the last: make room. */
      conn_close(idle);
    } else {
      break;
    }
  }
}

/* ---- Requests: the exchange ---------------------------------------------- */

static void req_build_response(const http_req *r, http_response *resp) {
  memset(resp, 0, sizeof *resp);
  resp->status = r->p.status;
  resp->headers = r->p.headers;
  resp->n_headers = r->p.n_headers;
  resp->url = r->url;
}

static void req_on_deadline(uv_timer_t *t) {
  http_req *r = t->data;

  /* A code of its own: a longpoll takes its own deadline for "nothing
   * changed", which a connect or head timeout is not. */
  req_fail(r, HTTP_EDEADLINE,
           "no complete response within %" PRIu64 " ms (timeout)", r->timeout);
}

/* Whether bytes wait on r's connection that the loop has not read yet.
 * libuv runs due timers before it polls the sockets, so after the loop was
 * held up (SIGSTOP, a paused VM, a slow callback) a phase timer can come
 * due while the very bytes that would have re-armed it sit unread. */
static bool req_input_waiting(const http_req *r) {
  return r->k != NULL && r->k->s != NULL && stream_input_waiting(r->k->s);
}

static void req_on_head_timeout(uv_timer_t *t) {
  http_req *r = t->data;
  char name[HTTP_HOST_MAX + 16];

  /* Bytes of the head are in: read them first, then count again. A head
   * that never ends is stopped by max_header_size, not by this timer. */
  if (req_input_waiting(r)) {
    uv_timer_start(&r->phase, req_on_head_timeout, r->response_timeout, 0);
    return;
  }
  http_url_authority(&r->u, true, name, sizeof name);
  req_fail(r, HTTP_ETIMEOUT,
           "no response head from %s within %" PRIu64 " ms (response_timeout)",
           name, r->response_timeout);
}

static void req_on_idle_timeout(uv_timer_t *t) {
  http_req *r = t->data;

  if (req_input_waiting(r)) {
    uv_timer_start(&r->phase, req_on_idle_timeout, r->idle_timeout, 0);
    return;
  }
  req_fail(r, HTTP_ETIMEOUT, "no data for %" PRIu64 " ms (idle_timeout)",
           r->idle_timeout);
}

/* The phase timer after the head: idle between the bytes of a streaming
 * body, re-armed on every read and stopped while paused. Until the head is
 * complete the head timer started in conn_assign runs on, reads and pauses
 * notwithstanding. */
static void req_arm_phase(http_req *r) {
  if (r->state == REQ_ACTIVE && !r->got_head)
    return;
  uv_timer_stop(&r->phase);
  if (r->state != REQ_ACTIVE || r->paused)
    return;
  if (r->streaming && r->idle_timeout > 0)
    uv_timer_start(&r->phase, req_on_idle_timeout, r->idle_timeout, 0);
}

static bool same_origin(const http_url *a, const http_url *b) {
  return a->https == b->https && a->port == b->port &&
         strcmp(a->host, b->host) == 0;
}

static bool is_origin_header(const http_client *c, const char *name) {
  size_t i;

  for (i = 0; i < c->o.n_origin_headers; i++)
    if (strcasecmp(c->origin_headers[i], name) == 0)
      return true;
  return false;
}

/* Whether a redirect to another origin takes the header named name along:
 * the client's origin headers only when it keeps them, Authorization and
 * Cookie only when they are among those. */
static bool crosses_origins(const http_client *c, const char *name) {
  if (is_origin_header(c, name))
    return c->o.keep_origin_headers;
  return strcasecmp(name, "Authorization") != 0 &&
         strcasecmp(name, "Cookie") != 0;
}

/* Drops the request headers named name (without case), or with name NULL
 * those that may not go to another origin. */
static void req_drop_header(http_req *r, const char *name) {
  size_t i, j = 0;

  for (i = 0; i < r->n_headers; i++) {
    if (name != NULL ? strcasecmp(r->headers[i].name, name) == 0
                     : !crosses_origins(r->c, r->headers[i].name)) {
      free((char *)r->headers[i].name);
      free((char *)r->headers[i].value);
    } else {
      r->headers[j++] = r->headers[i];
    }
  }
  r->n_headers = j;
}

/* Follows a redirect: the connection (mid-response) closes, and the
 * request goes out again to the new URL. */
static void req_redirect(http_req *r, const char *location) {
  http_client *c = r->c;
  char err[256], *next = NULL;
  http_url nu;
  int status = r->p.status, rc;
  conn *k = r->k;

  memset(&nu, 0, sizeof nu);
  if (r->redirects >= r->max_redirects) {
    req_fail(r, HTTP_EREDIRECTS,
             "more than %u redirects (max_redirects); the last to %.150s",
             r->max_redirects, location);
    return;
  }
  if ((rc = http_url_resolve(r->url, location, &next, err, sizeof err)) != 0) {
    req_fail(r, HTTP_EURL, "redirect to %.150s: %s", location, err);
    return;
  }
  if ((rc = http_url_parse(&nu, next, err, sizeof err)) != 0) {
    req_fail(r, HTTP_EURL, "redirect to %.150s: %s", next, err);
    goto done;
  }
  if (r->u.https && !nu.https) {
    req_fail(r, HTTP_EDOWNGRADE,
             "refused a redirect from https to http (%.150s)", next);
    goto done;
  }
  if (nu.https && c->o.tls == NULL) {
    req_fail(r, HTTP_EURL, "redirect to %.150s: https needs TLS settings",
             next);
    goto done;
  }
  /* 303 asks for a GET; 301 and 302 after a POST get one too, as every
   * browser does. */
  if ((status == 303 && strcmp(r->method, "HEAD") != 0) ||
      ((status == 301 || status == 302) && strcmp(r->method, "POST") == 0)) {
    char *get = strdup("GET");

    if (get == NULL) {
      req_fail(r, UV_ENOMEM, "out of memory");
      goto done;
    }
    free(r->method);
    r->method = get;
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    req_drop_header(r, "Content-Type");
  }
  /* Credentials are for the origin they were configured for; once
   * dropped they stay dropped, even if a later hop comes back. */
  if (!same_origin(&r->u, &nu))
    req_drop_header(r, NULL);
  r->k = NULL;
  k->req = NULL;
  conn_close(k);
  uv_timer_stop(&r->phase);
  free(r->url);
  r->url = next;
  next = NULL;
  http_url_free(&r->u);
  r->u = nu;
  memset(&nu, 0, sizeof nu);
  r->redirects++;
  r->retried = r->force_fresh = false;
  r->state = REQ_QUEUED;
  req_dispatch(r);
done:
  http_url_free(&nu);
  free(next);
}

static bool is_redirect(int status) {
  return status == 301 || status == 302 || status == 303 || status == 307 ||
         status == 308;
}

static void req_on_head(http_req *r) {
  http_client *c = r->c;
  http_response resp;
  const char *loc;
  int rc;

  req_build_response(r, &resp);
  if (is_redirect(resp.status) && r->max_redirects > 0 &&
      (loc = http_response_header(&resp, "Location")) != NULL) {
    req_redirect(r, loc);
    return;
  }
  if (r->cb.on_head == NULL)
    return;
  c->api_depth++;
  r->in_cb++;
  rc = r->cb.on_head(r, &resp, r->data);
  r->in_cb--;
  c->api_depth--;
  if (rc < 0 && r->state == REQ_ACTIVE)
    req_fail(r, rc, "on_head stopped the request: %s", http_strerror(rc));
}

static void req_on_body(http_req *r, const char *b, size_t n) {
  http_client *c = r->c;
  int rc;

  if (r->cb.on_body == NULL || n == 0)
    return;
  c->api_depth++;
  r->in_cb++;
  rc = r->cb.on_body(r, b, n, r->data);
  r->in_cb--;
  c->api_depth--;
  if (rc < 0 && r->state == REQ_ACTIVE)
    req_fail(r, rc, "on_body stopped the request: %s", http_strerror(rc));
}

/* The response is complete: the connection goes back to the pool when
 * both sides allow it and nothing else is pending on it, then on_done. */
static void req_complete(http_req *r, bool leftover) {
  conn *k = r->k;

  r->k = NULL;
  k->req = NULL;
  if (r->p.keep_alive && !leftover && k->state == CONN_BUSY && k->writes == 0 &&
      !k->lane) {
    k->served++;
    conn_make_idle(k);
  } else {
    conn_close(k);
  }
  req_finish(r, 0, NULL);
}

/* Parses data for r, arrived on k, handling each event, until the data is
 * used up, r is paused or r is no longer on k (done, failed, redirected).
 * Returns the bytes consumed. */
static size_t req_process(http_req *r, conn *k, const char *data, size_t len) {
  size_t off = 0;

  while (r->state == REQ_ACTIVE && r->k == k && !r->paused) {
    const char *b;
    size_t used, bn;
    int ev = http__parser_feed(&r->p, data + off, len - off, &used, &b, &bn);

    off += used;
    switch (ev) {
    case HTTP__MORE:
      return off;
    case HTTP__HEAD:
      r->got_head = true;
      uv_timer_stop(&r->phase);
      req_on_head(r);
      if (r->state == REQ_ACTIVE && r->k == k)
        req_arm_phase(r);
      break;
    case HTTP__BODY:
      req_on_body(r, b, bn);
      break;
    case HTTP__DONE:
      req_complete(r, off < len);
      return off;
    default:
      conn_failed(k, r->p.err, r->p.msg);
      return off;
    }
  }
  return off;
}

static void conn_on_eof(conn *k, http_req *r) {
  int ev;

  if (!r->got_bytes) {
    conn_failed(k, HTTP_ECLOSED, "connection closed before any response byte");
    return;
  }
  ev = http__parser_eof(&r->p);
  if (ev == HTTP__DONE)
    req_complete(r, false);
  else if (ev == HTTP__ERROR)
    conn_failed(k, r->p.err, r->p.msg);
  else
    conn_failed(k, HTTP_ECLOSED, "connection closed before the response head");
}

static void conn_on_read(stream *s, ssize_t n, const char *bytes, void *data) {
  conn *k = data;
  http_req *r = k->req;
  char msg[256];
  size_t used;

  if (k->state == CONN_TUNNEL) {
    tunnel_on_read(k, n, bytes);
    return;
  }
  if (k->state == CONN_IDLE) {
    /* EOF, an error or bytes nobody asked for: either way this
     * connection cannot serve another request. */
    conn_close(k);
    return;
  }
  if (k->state != CONN_BUSY || r == NULL)
    return;
  if (n < 0) {
    if (n == UV_EOF) {
      conn_on_eof(k, r);
    } else {
      fmt(msg, sizeof msg, "reading the response failed: %s",
          *stream_error(s) ? stream_error(s) : err_text((int)n, false));
      conn_failed(k, (int)n, msg);
    }
    return;
  }
  if (n == 0)
    return;
  r->got_bytes = true;
  req_arm_phase(r);
  used = req_process(r, k, bytes, (size_t)n);
  if (r->state == REQ_ACTIVE && r->k == k && used < (size_t)n) {
    /* Paused in a callback: hold the rest until resume. */
    if (buf_append(&r->pending, bytes + used, (size_t)n - used) != 0) {
      req_fail(r, UV_ENOMEM, "out of memory holding a paused response");
      return;
    }
    conn_update_reading(k);
  }
}

/* Parses the bytes held while paused, then reads again. */
static void req_drain(http_req *r) {
  conn *k = r->k;
  size_t used;

  if (r->pending.len > 0) {
    used = req_process(r, k, r->pending.data, r->pending.len);
    if (r->state != REQ_ACTIVE || r->k != k)
      return;
    buf_consume(&r->pending, used);
  }
  conn_update_reading(k);
  req_arm_phase(r);
}

static void req_on_defer(uv_idle_t *h) {
  http_req *r = h->data;

  uv_idle_stop(h);
  if (r->state == REQ_FINISHING)
    req_deliver(r);
  else if (r->state == REQ_ACTIVE && !r->paused && r->k != NULL)
    req_drain(r);
}

/* A long-lived request takes the control lane: a connection of its own at
 * once, never the pool's queue, so it neither holds a pooled connection
 * for hours nor waits behind short requests. */
static void req_open_lane(http_req *r, origin *o) {
  http_client *c = r->c;
  char name[HTTP_HOST_MAX + 32];
  int rc;

  if (o->n_streams >= c->o.max_streams) {
    origin_name(o, name, sizeof name);
    req_fail(r, HTTP_ESTREAMS,
             "more than %u long-lived streams at once to %s (max_streams)",
             c->o.max_streams, name);
    return;
  }
  r->o = NULL;
  if ((rc = conn_open(o, r)) != 0) {
    origin_name(o, name, sizeof name);
    req_fail(r, rc, "connect to %s failed: %s", name, err_text(rc, false));
  }
}

static void req_dispatch(http_req *r) {
  origin *o = origin_get(r->c, &r->u);

  if (o == NULL) {
    req_fail(r, UV_ENOMEM, "out of memory");
    return;
  }
  if (r->long_lived) {
    req_open_lane(r, o);
    return;
  }
  r->state = REQ_QUEUED;
  r->o = o;
  if (r->force_fresh)
    list_push_front(&o->queue, &r->node);
  else
    list_push_back(&o->queue, &r->node);
  origin_pump(o);
}

/* ---- The public calls ---------------------------------------------------- */

/* Frees what http_client_create allocated; c may be NULL or half made. */
static void client_free(http_client *c) {
  size_t i;

  if (c == NULL)
    return;
  http_url_free(&c->http_proxy);
  http_url_free(&c->https_proxy);
  free(c->no_proxy);
  free(c->unix_path);
  for (i = 0; c->origin_headers != NULL && i < c->o.n_origin_headers; i++)
    free(c->origin_headers[i]);
  free(c->origin_headers);
  free(c);
}

static void client_on_closed(uv_handle_t *h) {
  http_client *c = h->data;
  void (*cb)(void *) = c->close_cb;
  void *data = c->close_data;

  while (!list_empty(&c->origins)) {
    origin *o = container_of(c->origins.next, origin, node);

    list_remove(&o->node);
    origin_free(o);
  }
  client_free(c);
  if (cb != NULL)
    cb(data);
}

static void client_maybe_closed(http_client *c) {
  if (c->closing && c->n_conns == 0 && c->n_reqs == 0 &&
      !uv_is_closing((uv_handle_t *)&c->close_handle))
    uv_close((uv_handle_t *)&c->close_handle, client_on_closed);
}

/* Reads one proxy variable, lower case first (as curl does). */
static int load_proxy(const char *lname, const char *uname, http_url *u,
                      bool *have, char *err, size_t errlen) {
  const char *name = lname, *v = getenv(lname);
  char e[200], *text;
  int rc;

  if (v == NULL || *v == '\0') {
    name = uname;
    v = getenv(uname);
  }
  if (v == NULL || *v == '\0')
    return 0;
  if (strstr(v, "://") == NULL) {
    if ((text = malloc(strlen(v) + 8)) == NULL)
      return UV_ENOMEM;
    strcpy(text, "http://");
    strcat(text, v);
  } else if ((text = strdup(v)) == NULL) {
    return UV_ENOMEM;
  }
  rc = http_url_parse(u, text, e, sizeof e);
  free(text);
  if (rc != 0) {
    fmt(err, errlen, "%s=%.100s: %s", name, v, e);
    return HTTP_EURL;
  }
  if (u->https) {
    fmt(err, errlen, "%s=%.100s: https:// proxies are not supported", name, v);
    return HTTP_EURL;
  }
  *have = true;
  return 0;
}

int http_client_create(uv_loop_t *loop, const http_client_opts *o,
                       http_client **out, char *err, size_t errlen) {
  http_client *c;
  const char *np;
  size_t i;
  int rc = UV_ENOMEM;

  if (loop == NULL || o == NULL || out == NULL ||
      (o->n_origin_headers > 0 && o->origin_headers == NULL)) {
    fmt(err, errlen, "http_client_create: missing argument");
    return UV_EINVAL;
  }
  if ((c = calloc(1, sizeof *c)) == NULL)
    goto fail;
  c->loop = loop;
  c->o = *o;
  list_init(&c->origins);
  if (c->o.max_connections == 0)
    c->o.max_connections = DEFAULT_MAX_CONNECTIONS;
  if (c->o.max_streams == 0)
    c->o.max_streams = DEFAULT_MAX_STREAMS;
  c->lim.max_status_line = o->max_status_line;
  c->lim.max_header_size = o->max_header_size;
  c->lim.max_headers = o->max_headers;
  c->lim.max_body = o->max_body;
  if (o->unix_path != NULL && (c->unix_path = strdup(o->unix_path)) == NULL)
    goto fail;
  c->o.unix_path = c->unix_path;
  c->o.origin_headers = NULL;
  if (o->n_origin_headers > 0) {
    c->origin_headers = calloc(o->n_origin_headers, sizeof *c->origin_headers);
    if (c->origin_headers == NULL)
      goto fail;
    for (i = 0; i < o->n_origin_headers; i++)
      if ((c->origin_headers[i] = strdup(o->origin_headers[i])) == NULL)
        goto fail;
  }
  if (o->use_env_proxy && c->unix_path == NULL) {
    if ((rc = load_proxy("http_proxy", "HTTP_PROXY", &c->http_proxy,
                         &c->have_http_proxy, err, errlen)) != 0 ||
        (rc = load_proxy("https_proxy", "HTTPS_PROXY", &c->https_proxy,
                         &c->have_https_proxy, err, errlen)) != 0)
      goto fail;
    np = getenv("no_proxy");
    if (np == NULL || *np == '\0')
      np = getenv("NO_PROXY");
    rc = UV_ENOMEM;
    if (np != NULL && *np != '\0' && (c->no_proxy = strdup(np)) == NULL)
      goto fail;
  }
  uv_timer_init(loop, &c->close_handle);
  c->close_handle.data = c;
  *out = c;
  return 0;

fail:
  if (rc == UV_ENOMEM)
    fmt(err, errlen, "out of memory");
  client_free(c);
  return rc;
}

void http_client_close(http_client *c, void (*cb)(void *data), void *data) {
  list *n, *m;

  assert(!c->closing);
  assert(c->n_active == 0 && "every request must have finished or been "
                             "cancelled");
  c->closing = true;
  c->close_cb = cb;
  c->close_data = data;
  for (n = c->origins.next; n != &c->origins; n = n->next) {
    origin *o = container_of(n, origin, node);

    while ((m = o->conns.next) != &o->conns)
      conn_close(container_of(m, conn, node));
    while ((m = o->streams.next) != &o->streams)
      conn_close(container_of(m, conn, node));
  }
  client_maybe_closed(c);
}

static void free_headers(http_header *h, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    free((char *)h[i].name);
    free((char *)h[i].value);
  }
  free(h);
}

int http_request_start(http_client *c, const http_request *req,
                       const http_callbacks *cbs, void *data, http_req **out) {
  http_request_head h;
  http__limits lim;
  http_req *r;
  char err[256];
  buf probe;
  size_t i;
  int rc = UV_ENOMEM;

  if (c == NULL || req == NULL || cbs == NULL || cbs->on_done == NULL ||
      req->url == NULL || (req->n_headers > 0 && req->headers == NULL))
    return UV_EINVAL;
  assert(!c->closing);
  if ((r = calloc(1, sizeof *r)) == NULL)
    return UV_ENOMEM;
  r->c = c;
  r->cb = *cbs;
  r->data = data;
  r->streaming = req->streaming;
  r->long_lived = req->long_lived;
  r->timeout = req->timeout;
  r->response_timeout =
      req->response_timeout > 0 ? req->response_timeout : c->o.response_timeout;
  r->idle_timeout = req->idle_timeout;
  r->max_redirects = req->max_redirects;
  list_init(&r->node);
  buf_init(&r->pending, 0);
  lim = c->lim;
  if (req->max_body > 0)
    lim.max_body = req->max_body;
  http__parser_init(&r->p, &lim);
  r->method = strdup(req->method != NULL ? req->method : "GET");
  r->url = strdup(req->url);
  if (r->method == NULL || r->url == NULL)
    goto fail;
  if (req->n_headers > 0) {
    if ((r->headers = calloc(req->n_headers, sizeof *r->headers)) == NULL)
      goto fail;
    for (i = 0; i < req->n_headers; i++) {
      r->headers[i].name =
          strdup(req->headers[i].name ? req->headers[i].name : "");
      r->headers[i].value =
          strdup(req->headers[i].value ? req->headers[i].value : "");
      r->n_headers = i + 1;
      if (r->headers[i].name == NULL || r->headers[i].value == NULL)
        goto fail;
    }
  }
  if (req->body_len > 0) {
    if ((r->body = malloc(req->body_len)) == NULL)
      goto fail;
    memcpy(r->body, req->body, req->body_len);
    r->body_len = req->body_len;
  }
  if (http_url_parse(&r->u, r->url, err, sizeof err) != 0 ||
      (r->u.https && c->o.tls == NULL)) {
    rc = HTTP_EURL;
    goto fail;
  }
  /* Refuse a head that cannot be built now rather than on the wire. */
  memset(&h, 0, sizeof h);
  h.method = r->method;
  h.url = &r->u;
  h.headers = r->headers;
  h.n_headers = r->n_headers;
  buf_init(&probe, 0);
  rc = http_request_build(&probe, &h, err, sizeof err);
  buf_free(&probe);
  if (rc != 0) {
    rc = rc == UV_ENOMEM ? UV_ENOMEM : UV_EINVAL;
    goto fail;
  }

  uv_timer_init(c->loop, &r->deadline);
  uv_timer_init(c->loop, &r->phase);
  uv_idle_init(c->loop, &r->defer);
  r->deadline.data = r->phase.data = r->defer.data = r;
  c->n_reqs++;
  c->n_active++;
  if (c->api_depth == 0)
    client_sweep(c);
  c->api_depth++;
  if (r->timeout > 0)
    uv_timer_start(&r->deadline, req_on_deadline, r->timeout, 0);
  req_dispatch(r);
  c->api_depth--;
  if (out != NULL)
    *out = r;
  return 0;

fail:
  free_headers(r->headers, r->n_headers);
  free(r->method);
  free(r->url);
  free(r->body);
  http_url_free(&r->u);
  http__parser_free(&r->p);
  buf_free(&r->pending);
  free(r);
  return rc;
}

void http_req_cancel(http_req *r) {
  http_client *c;

  if (r == NULL || r->state >= REQ_FINISHING)
    return;
  c = r->c;
  c->api_depth++;
  req_finish(r, UV_ECANCELED, "request cancelled");
  c->api_depth--;
}

void http_req_pause(http_req *r) {
  if (r == NULL || r->state >= REQ_FINISHING || r->paused)
    return;
  r->paused = true;
  if (r->k != NULL && r->k->state == CONN_BUSY)
    conn_update_reading(r->k);
  req_arm_phase(r);
}

void http_req_resume(http_req *r) {
  if (r == NULL || r->state >= REQ_FINISHING || !r->paused)
    return;
  r->paused = false;
  if (r->k != NULL && r->k->state == CONN_BUSY) {
    /* Held bytes are parsed on a later turn, so the caller's on_body does
     * not run inside this call. */
    if (r->pending.len > 0 && r->in_cb == 0)
      uv_idle_start(&r->defer, req_on_defer);
    else
      conn_update_reading(r->k);
  }
  req_arm_phase(r);
}

void http__client_tunnel_plain_http(http_client *c, bool on) {
  c->tunnel_plain_http = on;
}
