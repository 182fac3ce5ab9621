/* Internal to loop/http_client.c: the response parser it runs on every
 * connection, exposed for the fuzz target and the unit tests. Not an API
 * for other modules.
 *
 * It wraps llhttp with tether's caps and turns its callbacks into events
 * the caller handles outside of llhttp, so user callbacks never run inside
 * the parser and may pause, cancel or start requests freely:
 *
 *   http__parser_reset(&p, streaming, head_request, false);
 *   while ((ev = http__parser_feed(&p, data, len, &used, &b, &bn)) != ...)
 *     data += used, len -= used; ... handle ev ...
 *   at EOF: http__parser_eof(&p)
 *
 * Interim 1xx answers (100 Continue, 103 Early Hints) are skipped inside;
 * at most HTTP__MAX_INFORMATIONAL of them, and their heads count towards
 * the header cap.
 */
#ifndef TETHER_LOOP_HTTP_PARSE_H
#define TETHER_LOOP_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#include <llhttp.h>

#include "loop/http_client.h"
#include "protocol/buf.h"

#define HTTP__MAX_INFORMATIONAL 10

typedef struct http__limits {
  size_t max_status_line; /* bytes */
  size_t max_header_size; /* bytes of all header lines (trailers apart) */
  size_t max_headers;     /* count */
  size_t max_body;        /* bytes of a buffered body */
} http__limits;

enum http__event {
  HTTP__MORE = 0, /* everything was consumed: feed more, or eof */
  HTTP__HEAD,     /* the final status and headers are in */
  HTTP__BODY,     /* streaming: body bytes, borrowed from the data fed */
  HTTP__DONE,     /* the response is complete */
  HTTP__ERROR     /* err and msg say why; every later feed repeats it */
};

typedef struct http__parser {
  llhttp_t ll; /* first, so a callback's llhttp_t * is the parser */
  http__limits lim;
  /* Results, valid from HTTP__HEAD on. */
  int status;
  char reason[64];      /* the reason phrase, cut to fit */
  http_header *headers; /* owned; strings point into _strings */
  size_t n_headers;
  buf body;        /* a buffered body (not streaming) */
  bool keep_alive; /* from HTTP__DONE: the connection may serve another */
  int err;         /* from HTTP__ERROR: an HTTP_E* code */
  char msg[192];
  /* private */
  bool _streaming, _no_body, _connect;
  bool _head_done, _done, _status_done, _in_field, _informational;
  int _event;
  unsigned _n_informational;
  const char *_chunk;            /* start of the data being executed */
  size_t _raw;                   /* head bytes before _chunk */
  size_t _msg_base, _status_end; /* head positions, from the reset */
  size_t _last;                  /* end of the last span seen */
  size_t _trailer_bytes, _n_trailers;
  const char *_body_at; /* the streaming body span of HTTP__BODY */
  size_t _body_len;
  buf _strings;  /* "name\0value\0" pairs of the current head */
  size_t *_offs; /* name and value offsets into _strings */
  size_t _offs_cap;
} http__parser;

/* Sets the caps (copied); zero caps take the client's defaults. Pair with
 * http__parser_free. */
void http__parser_init(http__parser *p, const http__limits *lim);

/* Prepares for a new response: streaming hands the body out as HTTP__BODY
 * events instead of buffering it; head_request and connect mean the
 * response has no body (answers to HEAD, and to CONNECT, where the tunnel
 * starts after the head). */
void http__parser_reset(http__parser *p, bool streaming, bool head_request,
                        bool connect);

/* Runs data[0..len) until the next event. *used gets the bytes consumed;
 * with HTTP__BODY, *body and *body_len the bytes (pointing into data).
 * Feed the rest (data + *used) next, even when it is empty: the parser may
 * have more to report without new bytes. */
int http__parser_feed(http__parser *p, const char *data, size_t len,
                      size_t *used, const char **body, size_t *body_len);

/* The peer closed: HTTP__DONE when that ends a close-delimited body,
 * HTTP__ERROR (HTTP_ECLOSED) in the middle of a head or a framed body,
 * HTTP__MORE when no byte of a response had arrived. */
int http__parser_eof(http__parser *p);

void http__parser_free(http__parser *p);

/* Tests: send plain http through the proxy with CONNECT, as https would
 * go, so the tunnel can be tested without TLS. */
void http__client_tunnel_plain_http(http_client *c, bool on);

#endif
