/* Feeds bytes as a server's response through the HTTP client's own parser
 * (loop/http_parse.h), split into chunks, and checks what it reports.
 *
 * The first two bytes are settings, the rest is the response:
 *   byte 0: bit 0 streaming, bit 1 answer to HEAD, bit 2 answer to CONNECT,
 *           bit 3 small caps (so every cap can be reached within max_len);
 *   byte 1: chunk size, 0 = everything in one execute.
 */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loop/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  http__limits lim = { 0, 0, 0, 0 };
  http__parser p;
  const char *in, *b;
  size_t n, off = 0, chunk, used, bn, body_total = 0, events = 0, i;
  bool streaming, head_seen = false, done = false;
  int ev = HTTP__MORE;

  if (size < 2)
    return 0;
  streaming = data[0] & 1;
  if (data[0] & 8) {
    lim.max_status_line = 64;
    lim.max_header_size = 256;
    lim.max_headers = 4;
    lim.max_body = 128;
  }
  chunk = data[1];
  in = (const char *)data + 2;
  n = size - 2;

  http__parser_init(&p, &lim);
  http__parser_reset(&p, streaming, data[0] & 2, data[0] & 4);
  while (!done) {
    size_t len = chunk == 0 || n - off < chunk ? n - off : chunk;

    ev = http__parser_feed(&p, in + off, len, &used, &b, &bn);
    assert(used <= len);
    off += used;
    /* Every event but MORE stops the parser; it cannot loop in place. */
    events++;
    assert(events <= 2 * n + 16);
    switch (ev) {
    case HTTP__MORE:
      assert(used == len);
      if (off == n) {
        ev = http__parser_eof(&p);
        assert(ev == HTTP__DONE || ev == HTTP__ERROR || ev == HTTP__MORE);
        done = true;
      }
      break;
    case HTTP__HEAD:
      assert(!head_seen);
      head_seen = true;
      assert(p.status >= 100 && p.status <= 999);
      assert(p.n_headers <= p.lim.max_headers);
      for (i = 0; i < p.n_headers; i++)
        assert(p.headers[i].name != NULL && p.headers[i].value != NULL);
      break;
    case HTTP__BODY:
      assert(streaming && head_seen);
      assert(b >= in && b + bn <= in + n);
      body_total += bn;
      break;
    case HTTP__DONE:
      done = true;
      break;
    default:
      assert(ev == HTTP__ERROR);
      assert(p.err < 0);
      assert(p.msg[0] != '\0');
      done = true;
      break;
    }
  }
  if (ev == HTTP__DONE) {
    assert(head_seen);
    assert(p.status >= 200);
    /* A finished parser stays finished. */
    assert(http__parser_feed(&p, in, n, &used, &b, &bn) == HTTP__DONE);
  }
  assert(body_total <= n);
  assert(p.body.len <= n && p.body.len <= p.lim.max_body);
  assert(streaming ? p.body.len == 0 : body_total == 0);
  http__parser_free(&p);
  return 0;
}
