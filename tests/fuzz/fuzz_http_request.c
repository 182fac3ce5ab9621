/* Feeds bytes as a client's side of one connection to the local API server,
 * through its socketless connection (loop/http_srv_test.h): the server's own
 * parser, dispatch, pipelining, responses and errors, without a socket. A
 * handler answers every request with its body; what the server wrote back
 * is then parsed with the HTTP client's parser and checked.
 *
 * The first two bytes are settings, the rest is what the client sends:
 *   byte 0: bits 0-1 how requests are answered: 0 whole, 1 streamed in two
 *           chunks, 2 later (after the loop went idle), 3 by turns;
 *           bit 2 small caps (so every cap can be reached within max_len);
 *           bit 3 the client closes its side at the end;
 *   byte 1: chunk size, 0 = everything at once; the loop runs until idle
 *           after each chunk.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "loop/http_parse.h"
#include "loop/http_server.h"
#include "loop/http_srv_test.h"
#include "protocol/buf.h"

/* The shortest request llhttp accepts, "GET / HTTP/1.1\n\n". */
#define MIN_REQUEST 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct expect {
  char *body; /* what the answer carries: the request's body */
  size_t len;
  bool head;
} expect;

typedef struct fz {
  unsigned mode;
  size_t max_body;
  expect *ex;
  size_t n_ex, cap_ex;
  http_conn *held; /* answered later */
  size_t held_ix;
  bool closed;
} fz;

static void answer(fz *z, http_conn *c, unsigned how, const expect *e) {
  size_t half = e->len / 2;

  if (how == 1) {
    assert(http_conn_stream_start(c, 200, "application/octet-stream") == 0);
    assert(http_conn_stream_write(c, e->body, half) == 0);
    assert(http_conn_stream_write(c, e->body + half, e->len - half) == 0);
    http_conn_stream_end(c);
    /* Answered: nothing more may go. */
    assert(http_conn_stream_write(c, "x", 1) == UV_EINVAL);
  } else {
    assert(http_conn_respond(c, 200, "application/octet-stream", NULL, 0,
                             e->body, e->len) == 0);
    assert(http_conn_respond(c, 200, NULL, NULL, 0, NULL, 0) == UV_EINVAL);
  }
  (void)z;
}

static void on_request(http_conn *c, const http_srv_request *r, void *data) {
  fz *z = data;
  unsigned how;
  expect *e;
  size_t i;

  /* Strictly one at a time. */
  assert(z->held == NULL);
  assert(r->method != NULL && r->target != NULL && r->body != NULL);
  assert(r->body[r->body_len] == '\0');
  assert(r->body_len <= z->max_body);
  assert(r->n_headers == 0 || r->headers != NULL);
  for (i = 0; i < r->n_headers; i++)
    assert(r->headers[i].name != NULL && r->headers[i].value != NULL &&
           r->headers[i].name[0] != '\0');
  assert(!r->tcp && r->pid == getpid());
  if (z->n_ex == z->cap_ex) {
    z->cap_ex = z->cap_ex ? z->cap_ex * 2 : 16;
    z->ex = realloc(z->ex, z->cap_ex * sizeof *z->ex);
    assert(z->ex != NULL);
  }
  e = &z->ex[z->n_ex++];
  e->len = r->body_len;
  e->body = malloc(r->body_len + 1);
  assert(e->body != NULL);
  memcpy(e->body, r->body, r->body_len + 1);
  e->head = strcmp(r->method, "HEAD") == 0;
  how = z->mode == 3 ? (unsigned)(z->n_ex % 3) : z->mode;
  if (how == 2) {
    z->held = c;
    z->held_ix = z->n_ex - 1;
    return;
  }
  answer(z, c, how, e);
}

static void pump(uv_loop_t *loop, http_server *s, fz *z) {
  unsigned guard = 0;
  http_conn *c;

  for (;;) {
    while (http__server_fake_pending(s)) {
      assert(++guard < 1000000);
      uv_run(loop, UV_RUN_NOWAIT);
    }
    if ((c = z->held) == NULL)
      break;
    /* The loop went idle with an answer due: answer now, from outside any
     * callback, as a handler answering later would. */
    z->held = NULL;
    answer(z, c, 0, &z->ex[z->held_ix]);
  }
}

static void on_closed(void *data) {
  ((fz *)data)->closed = true;
}

/* Parses one response from out at *off; 1 when whole, 0 when not. */
static int parse_one(http__parser *p, const buf *out, size_t *off, bool head) {
  const char *b, *data = out->data != NULL ? out->data : "";
  size_t used, bn, at = *off;
  int ev;

  http__parser_reset(p, false, head, false);
  do {
    ev = http__parser_feed(p, data + at, out->len - at, &used, &b, &bn);
    at += used;
  } while (ev == HTTP__HEAD);
  if (ev != HTTP__DONE)
    return 0;
  *off = at;
  return 1;
}

static const char *header(const http__parser *p, const char *name) {
  size_t i;

  for (i = 0; i < p->n_headers; i++)
    if (strcasecmp(p->headers[i].name, name) == 0)
      return p->headers[i].value;
  return NULL;
}

/* Every request got its answer, in order, with its body; at most one
 * error answer follows, and nothing after a response that closes. */
static void check_output(const fz *z, const buf *out, bool open) {
  static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
  http__limits lim = { 0, 0, 0, 64 * 1024 * 1024 };
  http__parser p;
  size_t off = 0, i;
  const char *conn;
  bool closing = false;

  http__parser_init(&p, &lim);
  for (i = 0; i < z->n_ex; i++) {
    assert(!closing);
    assert(parse_one(&p, out, &off, z->ex[i].head) == 1);
    assert(p.status == 200);
    if (!z->ex[i].head) {
      assert(p.body.len == z->ex[i].len);
      assert(p.body.len == 0 ||
             memcmp(p.body.data, z->ex[i].body, p.body.len) == 0);
    }
    conn = header(&p, "Connection");
    closing = conn != NULL && strcmp(conn, "close") == 0;
  }
  while (out->len - off >= sizeof cont - 1 &&
         memcmp(out->data + off, cont, sizeof cont - 1) == 0)
    off += sizeof cont - 1;
  if (off < out->len) {
    /* The server's own error answer: JSON, and the connection closes. A
     * HEAD request's has no body, whatever Content-Length says. */
    json_error_t je;
    json_t *j, *e;
    size_t at = off;

    assert(!closing);
    if (parse_one(&p, out, &at, false) != 1) {
      at = off;
      assert(parse_one(&p, out, &at, true) == 1);
    }
    assert(at == out->len);
    assert(p.status >= 400 && p.status <= 599);
    conn = header(&p, "Connection");
    assert(conn != NULL && strcmp(conn, "close") == 0);
    closing = true;
    if (p.body.len > 0) {
      j = json_loadb(p.body.data, p.body.len, 0, &je);
      assert(j != NULL);
      e = json_object_get(j, "error");
      assert(json_is_string(json_object_get(e, "code")));
      assert(json_is_string(json_object_get(e, "message")));
      json_decref(j);
    }
  }
  if (closing)
    assert(!open);
  http__parser_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static uv_loop_t loop;
  static bool loop_ready;
  http_server_opts o;
  http_server *s = NULL;
  char err[256];
  const char *in;
  size_t n, off = 0, chunk, i;
  bool open;
  fz z;
  buf out;

  if (size < 2)
    return 0;
  if (!loop_ready) {
    assert(uv_loop_init(&loop) == 0);
    loop_ready = true;
  }
  memset(&z, 0, sizeof z);
  memset(&o, 0, sizeof o);
  z.mode = data[0] & 3;
  if (data[0] & 4) {
    o.max_header_size = 128;
    o.max_body = 32;
  }
  z.max_body = o.max_body ? o.max_body : 1024 * 1024;
  chunk = data[1];
  in = (const char *)data + 2;
  n = size - 2;

  assert(http_server_start(&loop, &o, on_request, &z, &s, err, sizeof err) ==
         0);
  buf_init(&out, 0);
  assert(http__server_fake_open(s, &out) == 0);
  while (off < n) {
    size_t len = chunk == 0 || n - off < chunk ? n - off : chunk;

    assert(http__server_fake_feed(s, in + off, len) == 0);
    off += len;
    pump(&loop, s, &z);
  }
  if (data[0] & 8) {
    http__server_fake_eof(s);
    pump(&loop, s, &z);
    assert(!http__server_fake_open_p(s));
  }
  open = http__server_fake_open_p(s);
  assert(z.held == NULL);
  assert(z.n_ex * MIN_REQUEST <= n);
  check_output(&z, &out, open);

  http_server_close(s, on_closed, &z);
  while (!z.closed)
    uv_run(&loop, UV_RUN_NOWAIT);
  assert(!uv_loop_alive(&loop));
  for (i = 0; i < z.n_ex; i++)
    free(z.ex[i].body);
  free(z.ex);
  buf_free(&out);
  return 0;
}
