/* libFuzzer target for protocol/sse.
 *
 * The first four bytes configure the run, the rest is the body:
 *   [0] max_line: 0 = the default, 1..239 as is, 240..255 = 4096
 *   [1] max_event_size: 0 = the default, 1..255 as is
 *   [2] reads: bits 0-1 pick one byte per read, fixed reads of
 *       ((bits 2-5) + 1) bytes, or seeded random reads (empty ones
 *       included); bit 6 starts a second response at offset [3]; bit 7
 *       makes every callback pause, so the rest of each read is fed again
 *   [3] where the second response starts (bit 6 of [2])
 *
 * The body is parsed twice: once in one read per response, and once in the
 * reads [2] asks for. Both must make the same calls and end with the same
 * error, last event id and retry value. Every string handed out must be
 * non-NULL, NUL-terminated, valid UTF-8 and within its cap, and the parser
 * must never hold more than its bound.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocol/buf.h"
#include "protocol/sse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      abort();                                                                 \
  } while (0)

typedef struct run {
  sse_parser p;
  buf log; /* every call, serialized in order */
  size_t max_line, max_event_size, bound;
  bool pause;
} run;

/* Checks s is valid UTF-8 (no overlongs, surrogates or values past
 * U+10FFFF), as every string the parser hands out must be. */
static bool valid_utf8(const unsigned char *s, size_t n) {
  size_t i = 0, k, need;
  unsigned char lo, hi;

  while (i < n) {
    unsigned char b = s[i++];

    if (b < 0x80)
      continue;
    lo = 0x80;
    hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF)
      need = 1;
    else if (b >= 0xE0 && b <= 0xEF)
      need = 2, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4)
      need = 3, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    else
      return false;
    for (k = 0; k < need; k++, i++) {
      if (i >= n || s[i] < lo || s[i] > hi)
        return false;
      lo = 0x80;
      hi = 0xBF;
    }
  }
  return true;
}

static void check_str(const char *s, size_t len, size_t cap) {
  CHECK(s != NULL);
  CHECK(s[len] == '\0');
  CHECK(len <= cap);
  CHECK(valid_utf8((const unsigned char *)s, len));
}

static void log_bytes(run *r, char tag, const char *s, size_t n) {
  CHECK(buf_append(&r->log, &tag, 1) == 0);
  CHECK(buf_append(&r->log, &n, sizeof n) == 0);
  CHECK(buf_append(&r->log, s, n) == 0);
}

static int on_event(void *data, const sse_event *ev) {
  run *r = data;
  size_t len;

  /* The default type "message" may be longer than a tiny max_line. */
  check_str(ev->type, ev->type_len, r->max_line > 7 ? r->max_line : 7);
  check_str(ev->data, ev->data_len, r->max_event_size);
  check_str(ev->id, ev->id_len, r->max_line);
  CHECK(ev->type_len > 0);
  CHECK(sse_parser_last_id(&r->p, &len) != NULL && len == ev->id_len);
  log_bytes(r, 'T', ev->type, ev->type_len);
  log_bytes(r, 'D', ev->data, ev->data_len);
  log_bytes(r, 'I', ev->id, ev->id_len);
  return r->pause;
}

static int on_id_only(void *data, const char *id, size_t len) {
  run *r = data;

  check_str(id, len, r->max_line);
  log_bytes(r, 'O', id, len);
  return r->pause;
}

static int on_retry(void *data, uint64_t ms) {
  run *r = data;

  log_bytes(r, 'R', (const char *)&ms, sizeof ms);
  return r->pause;
}

static const sse_callbacks cbs = { on_event, on_id_only, on_retry };

/* Feeds one read, again and again while a callback pauses. Returns the
 * error, or 0. */
static int feed(run *r, const uint8_t *s, size_t n) {
  size_t used;
  int rc;

  for (;;) {
    rc = sse_parser_feed(&r->p, s, n, &used);
    CHECK(used <= n);
    CHECK(sse_parser_held(&r->p) <= r->bound);
    if (rc == SSE_PAUSED) {
      CHECK(r->pause);
      s += used;
      n -= used;
      continue;
    }
    if (rc != 0) {
      CHECK(rc == SSE_ELINE || rc == SSE_EEVENT);
      log_bytes(r, 'E', (const char *)&rc, sizeof rc);
      return rc;
    }
    CHECK(used == n);
    return 0;
  }
}

/* One response in reads chosen by mode; stops at the first error, as a
 * source closes the connection. */
static void feed_response(run *r, const uint8_t *s, size_t n, uint8_t mode,
                          uint32_t *seed) {
  size_t off = 0, k, fixed = (size_t)((mode >> 2) & 0xF) + 1;

  sse_parser_new_response(&r->p);
  while (off < n) {
    switch (mode & 3) {
    case 0:
      k = 1;
      break;
    case 1:
      k = fixed;
      break;
    case 2:
      *seed = *seed * 1103515245u + 12345u;
      k = (*seed >> 16) % (fixed * 4 + 2); /* 0 = an empty read */
      break;
    default:
      k = n - off;
      break;
    }
    if (k > n - off)
      k = n - off;
    if (feed(r, s + off, k) != 0)
      return;
    off += k;
  }
}

static void run_init(run *r, const sse_limits *lim, bool pause) {
  memset(r, 0, sizeof *r);
  r->max_line = lim->max_line ? lim->max_line : SSE_DEFAULT_MAX_LINE;
  r->max_event_size =
      lim->max_event_size ? lim->max_event_size : SSE_DEFAULT_MAX_EVENT_SIZE;
  r->bound = 4 * (r->max_line + 1) + r->max_event_size + 1;
  r->pause = pause;
  buf_init(&r->log, 0);
  CHECK(sse_parser_init(&r->p, lim, &cbs, r) == 0);
}

/* Appends the state a source reads once the stream is over. */
static void run_finish(run *r) {
  const char *id;
  size_t len;
  uint64_t ms = 0;
  bool has;

  id = sse_parser_last_id(&r->p, &len);
  check_str(id, len, r->max_line);
  log_bytes(r, 'L', id, len);
  has = sse_parser_retry(&r->p, &ms);
  log_bytes(r, 'R', (const char *)&ms, has ? sizeof ms : 0);
  sse_parser_free(&r->p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sse_limits lim;
  run whole, cut;
  const uint8_t *body;
  size_t n, split;
  uint8_t mode;
  uint32_t seed;

  if (size < 4)
    return 0;
  lim.max_line = data[0] >= 240 ? 4096 : data[0];
  lim.max_event_size = data[1];
  mode = data[2];
  body = data + 4;
  n = size - 4;
  split = mode & 0x40 ? (data[3] < n ? data[3] : n) : n;
  seed = (uint32_t)mode * 2654435761u + (uint32_t)n;

  run_init(&whole, &lim, false);
  feed_response(&whole, body, split, 3, &seed);
  if (split < n)
    feed_response(&whole, body + split, n - split, 3, &seed);
  run_finish(&whole);

  run_init(&cut, &lim, (mode & 0x80) != 0);
  feed_response(&cut, body, split, mode, &seed);
  if (split < n)
    feed_response(&cut, body + split, n - split, mode, &seed);
  run_finish(&cut);

  /* Cutting the body into reads and pausing change nothing, errors
   * included: a cap is hit at the same byte whatever the reads. */
  CHECK(whole.log.len == cut.log.len);
  CHECK(whole.log.len == 0 ||
        memcmp(whole.log.data, cut.log.data, whole.log.len) == 0);
  buf_free(&whole.log);
  buf_free(&cut.log);
  return 0;
}
