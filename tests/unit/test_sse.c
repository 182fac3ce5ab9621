/* protocol/sse: the vectors of shared/protocols/sse-and-http-poll.md §4, one
 * test case per row, each also run through the property test of §4 (every
 * two-read split, one byte per read, 1,000 seeded random partitions with
 * empty reads, half of them pausing after every callback). Then pausing,
 * caps, UTF-8 repair and the memory bound on random input. */
#include "protocol/sse.h"

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "tests/unit/test.h"

/* ---- Recording what the parser calls back ---- */

enum { K_NONE, K_EVENT, K_ID_ONLY, K_RETRY };

typedef struct call {
  int kind;
  char *type, *data, *id;
  size_t type_len, data_len, id_len;
  uint64_t ms;
} call;

typedef struct result {
  call *calls;
  size_t n, cap;
  int err; /* the error a feed returned, 0 = none */
  char *last_id;
  size_t last_id_len;
  bool has_retry;
  uint64_t retry;
  size_t max_held; /* the most sse_parser_held reported after a feed */
} result;

typedef struct rec {
  result *res;
  sse_parser *p;
  size_t max_event_size;
  bool pause; /* every callback asks to pause */
} rec;

static char *dup_mem(const char *s, size_t n) {
  char *d = malloc(n + 1);

  if (d == NULL)
    abort();
  memcpy(d, s, n);
  d[n] = '\0';
  return d;
}

static call *add_call(result *res, int kind) {
  call *c;

  if (res->n == res->cap) {
    res->cap = res->cap ? res->cap * 2 : 8;
    res->calls = realloc(res->calls, res->cap * sizeof *res->calls);
    if (res->calls == NULL)
      abort();
  }
  c = &res->calls[res->n++];
  memset(c, 0, sizeof *c);
  c->kind = kind;
  return c;
}

static void result_free(result *res) {
  size_t i;

  for (i = 0; i < res->n; i++) {
    free(res->calls[i].type);
    free(res->calls[i].data);
    free(res->calls[i].id);
  }
  free(res->calls);
  free(res->last_id);
  memset(res, 0, sizeof *res);
}

/* A string the parser hands out: non-NULL, NUL-terminated after its length,
 * valid UTF-8 is checked elsewhere. */
static void check_str(const char *s, size_t len) {
  ASSERT(s != NULL);
  ASSERT_EQ(0, s[len]);
}

static int on_event(void *data, const sse_event *ev) {
  rec *r = data;
  call *c = add_call(r->res, K_EVENT);
  size_t len;
  const char *id;

  check_str(ev->type, ev->type_len);
  check_str(ev->data, ev->data_len);
  check_str(ev->id, ev->id_len);
  ASSERT(ev->type_len > 0);
  ASSERT(ev->data_len <= r->max_event_size);
  /* The getter agrees with the event while inside the callback. */
  id = sse_parser_last_id(r->p, &len);
  ASSERT_MEM_EQ(ev->id, ev->id_len, id, len);
  c->type = dup_mem(ev->type, ev->type_len);
  c->type_len = ev->type_len;
  c->data = dup_mem(ev->data, ev->data_len);
  c->data_len = ev->data_len;
  c->id = dup_mem(ev->id, ev->id_len);
  c->id_len = ev->id_len;
  return r->pause;
}

static int on_id_only(void *data, const char *id, size_t len) {
  rec *r = data;
  call *c = add_call(r->res, K_ID_ONLY);

  check_str(id, len);
  c->id = dup_mem(id, len);
  c->id_len = len;
  return r->pause;
}

static int on_retry(void *data, uint64_t ms) {
  rec *r = data;
  uint64_t got = 0;

  add_call(r->res, K_RETRY)->ms = ms;
  ASSERT(sse_parser_retry(r->p, &got));
  ASSERT_UEQ(ms, got);
  return r->pause;
}

static const sse_callbacks cbs = { on_event, on_id_only, on_retry };

/* ---- Feeding ---- */

typedef struct input {
  const char *s;
  size_t n;
} input;

#define MAX_RESP 2

/* One vector: up to two responses, the caps, and what must come out. */
typedef struct exp_call {
  int kind;
  const char *type;
  const char *data;
  size_t data_len;
  const char *id;
  uint64_t ms;
} exp_call;

typedef struct vector {
  int row;
  input resp[MAX_RESP];
  sse_limits lim;
  exp_call calls[4];
  int err;
  const char *last_id; /* NULL = "" */
} vector;

static size_t resp_total(const vector *v) {
  size_t i, t = 0;

  for (i = 0; i < MAX_RESP; i++)
    t += v->resp[i].n;
  return t;
}

static size_t resp_count(const vector *v) {
  size_t i = 1;

  while (i < MAX_RESP && v->resp[i].s != NULL)
    i++;
  return i;
}

/* Feeds one read (part of one response), re-feeding after each pause the
 * rest as a source would once its window has room. Returns false when the
 * parser failed: the source would close the connection. */
static bool feed_read(sse_parser *p, rec *r, const char *s, size_t n) {
  size_t used, held;
  int rc;

  for (;;) {
    rc = sse_parser_feed(p, s, n, &used);
    ASSERT(used <= n);
    held = sse_parser_held(p);
    if (held > r->res->max_held)
      r->res->max_held = held;
    if (rc == SSE_PAUSED) {
      ASSERT(r->pause);
      s += used;
      n -= used;
      continue;
    }
    if (rc < 0) {
      r->res->err = rc;
      /* The error is sticky until the next response. */
      ASSERT_EQ(rc, sse_parser_feed(p, "\n\n", 2, &used));
      ASSERT_UEQ(0, used);
      return false;
    }
    ASSERT_EQ(0, rc);
    ASSERT_UEQ(n, used);
    return true;
  }
}

/* Records the parser's last event id and retry value, then frees it. */
static void finish(sse_parser *p, result *out) {
  const char *id = sse_parser_last_id(p, &out->last_id_len);

  out->last_id = dup_mem(id, out->last_id_len);
  out->has_retry = sse_parser_retry(p, &out->retry);
  sse_parser_free(p);
}

/* Runs vector v fed in reads of the given lengths over its responses laid
 * end to end (a read crossing a response boundary is cut there). The reads
 * may stop short of the end. When prefix is given, prefix[k] is the number
 * of calls feeding the first k bytes in one read gives, and after each read
 * exactly that many must have happened. */
static void run(const vector *v, const size_t *reads, size_t nreads, bool pause,
                const size_t *prefix, result *out) {
  sse_parser p;
  rec r = { out, &p, 0, pause };
  size_t ri = 0, roff = 0, goff = 0, i, left, take, nresp = resp_count(v);
  bool failed = false;

  memset(out, 0, sizeof *out);
  ASSERT_EQ(0, sse_parser_init(&p, &v->lim, &cbs, &r));
  r.max_event_size = v->lim.max_event_size ? v->lim.max_event_size
                                           : SSE_DEFAULT_MAX_EVENT_SIZE;
  sse_parser_new_response(&p);
  for (i = 0; i < nreads; i++) {
    left = reads[i];
    do {
      while (roff == v->resp[ri].n && ri + 1 < nresp && left > 0) {
        ri++;
        roff = 0;
        sse_parser_new_response(&p);
        failed = false;
      }
      take = left < v->resp[ri].n - roff ? left : v->resp[ri].n - roff;
      ASSERT(take == left || ri + 1 < nresp);
      if (!failed)
        failed = !feed_read(&p, &r, v->resp[ri].s + roff, take);
      roff += take;
      goff += take;
      left -= take;
    } while (left > 0);
    if (prefix != NULL)
      ASSERT_UEQ(prefix[goff], out->n);
  }
  finish(&p, out);
}

static void run_one_read(const vector *v, result *out) {
  size_t n = resp_total(v);

  run(v, &n, 1, false, NULL, out);
}

/* ---- Comparing ---- */

/* Calls that are not events leave their strings NULL. */
static const char *or_empty(const char *s) {
  return s != NULL ? s : "";
}

static void assert_same(const result *want, const result *got) {
  size_t i;

  ASSERT_UEQ(want->n, got->n);
  for (i = 0; i < want->n; i++) {
    const call *a = &want->calls[i], *b = &got->calls[i];

    ASSERT_EQ(a->kind, b->kind);
    ASSERT_MEM_EQ(or_empty(a->type), a->type_len, or_empty(b->type),
                  b->type_len);
    ASSERT_MEM_EQ(or_empty(a->data), a->data_len, or_empty(b->data),
                  b->data_len);
    ASSERT_MEM_EQ(or_empty(a->id), a->id_len, or_empty(b->id), b->id_len);
    ASSERT_UEQ(a->ms, b->ms);
  }
  ASSERT_EQ(want->err, got->err);
  ASSERT_MEM_EQ(want->last_id, want->last_id_len, got->last_id,
                got->last_id_len);
  ASSERT_EQ(want->has_retry, got->has_retry);
  if (want->has_retry)
    ASSERT_UEQ(want->retry, got->retry);
}

/* Checks a one-read result against the row's expectations. */
static void assert_expected(const vector *v, const result *got) {
  const char *want_id = v->last_id ? v->last_id : "";
  size_t i, n = 0;
  bool has_retry = false;
  uint64_t retry = 0;

  while (n < 4 && v->calls[n].kind != K_NONE)
    n++;
  ASSERT_UEQ(n, got->n);
  for (i = 0; i < n; i++) {
    const exp_call *e = &v->calls[i];
    const call *c = &got->calls[i];

    ASSERT_EQ(e->kind, c->kind);
    switch (e->kind) {
    case K_EVENT:
      ASSERT_MEM_EQ(e->type, strlen(e->type), c->type, c->type_len);
      ASSERT_MEM_EQ(e->data, e->data_len, c->data, c->data_len);
      ASSERT_MEM_EQ(e->id, strlen(e->id), c->id, c->id_len);
      break;
    case K_ID_ONLY:
      ASSERT_MEM_EQ(e->id, strlen(e->id), c->id, c->id_len);
      break;
    case K_RETRY:
      ASSERT_UEQ(e->ms, c->ms);
      has_retry = true;
      retry = e->ms;
      break;
    }
  }
  ASSERT_EQ(v->err, got->err);
  ASSERT_MEM_EQ(want_id, strlen(want_id), got->last_id, got->last_id_len);
  ASSERT_EQ(has_retry, got->has_retry);
  if (has_retry)
    ASSERT_UEQ(retry, got->retry);
}

/* ---- A seeded generator (xorshift64*) ---- */

static uint64_t rng_state;

static void rng_seed(uint64_t seed) {
  rng_state = seed ? seed : 0x9E3779B97F4A7C15u;
}

static uint64_t rng(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Du;
}

static size_t rng_below(size_t n) {
  return n ? (size_t)(rng() % n) : 0;
}

/* ---- The property test of §4 ---- */

#define RANDOM_PARTITIONS 1000
#define MAX_READS(total)  (4 * (total) + 64)

static void check_vector(const vector *v) {
  size_t total = resp_total(v), k, nreads, left, maxread;
  size_t *prefix, *reads;
  result want, got;
  int i;

  run_one_read(v, &want);
  assert_expected(v, &want);

  /* prefix[k]: the calls that feeding the first k bytes in one read makes;
   * any other partition must have made exactly as many by then. */
  prefix = calloc(total + 1, sizeof *prefix);
  reads = calloc(MAX_READS(total), sizeof *reads);
  if (prefix == NULL || reads == NULL)
    abort();
  for (k = 0; k <= total; k++) {
    run(v, &k, 1, false, NULL, &got);
    prefix[k] = got.n;
    result_free(&got);
  }
  ASSERT_UEQ(want.n, prefix[total]);

  /* Two reads, split at every offset, ends included (an empty read). */
  for (k = 0; k <= total; k++) {
    reads[0] = k;
    reads[1] = total - k;
    run(v, reads, 2, false, prefix, &got);
    assert_same(&want, &got);
    result_free(&got);
  }

  /* One byte per read, with and without pausing. */
  for (k = 0; k < total; k++)
    reads[k] = 1;
  run(v, reads, total, false, prefix, &got);
  assert_same(&want, &got);
  result_free(&got);
  run(v, reads, total, true, prefix, &got);
  assert_same(&want, &got);
  result_free(&got);

  /* Random partitions with empty reads; odd ones pause after each call. */
  rng_seed(0x5EED0000u + (uint64_t)v->row);
  for (i = 0; i < RANDOM_PARTITIONS; i++) {
    maxread = 1 + rng_below(i % 3 == 0 ? total + 1 : 6);
    nreads = 0;
    left = total;
    while (left > 0 || rng_below(4) == 0) {
      k = rng_below(5) == 0 ? 0 : 1 + rng_below(maxread);
      if (k > left)
        k = left;
      if (nreads == MAX_READS(total) - 1)
        k = left; /* out of room: the rest in one read */
      reads[nreads++] = k;
      left -= k;
      if (nreads == MAX_READS(total))
        break;
    }
    ASSERT_UEQ(0, left);
    run(v, reads, nreads, i % 2 == 1, prefix, &got);
    assert_same(&want, &got);
    result_free(&got);
  }

  result_free(&want);
  free(prefix);
  free(reads);
}

/* ---- The vectors of §4 ---- */

#define B(lit)                                                                 \
  { lit, sizeof(lit) - 1 }
#define EV(t, d, i)                                                            \
  { K_EVENT, t, d, sizeof(d) - 1, i, 0 }
#define MSG(d, i) EV("message", d, i)
#define ID_ONLY(i)                                                             \
  { K_ID_ONLY, NULL, NULL, 0, i, 0 }
#define RETRY(ms)                                                              \
  { K_RETRY, NULL, NULL, 0, NULL, ms }
#define BOM "\xEF\xBB\xBF"

static const vector vectors[] = {
  { .row = 1, .resp = { B("data: a\n\n") }, .calls = { MSG("a", "") } },
  { .row = 2, .resp = { B("data:a\n\n") }, .calls = { MSG("a", "") } },
  { .row = 3, .resp = { B("data:  a\n\n") }, .calls = { MSG(" a", "") } },
  { .row = 4, .resp = { B("data:\ta\n\n") }, .calls = { MSG("\ta", "") } },
  { .row = 5, .resp = { B("data\n\n") }, .calls = { MSG("", "") } },
  { .row = 6, .resp = { B("data:\n\n") }, .calls = { MSG("", "") } },
  { .row = 7, .resp = { B("data\ndata\n\n") }, .calls = { MSG("\n", "") } },
  { .row = 8,
    .resp = { B("data: a\ndata: b\n\n") },
    .calls = { MSG("a\nb", "") } },
  { .row = 9, .resp = { B("data: a\n\n\n\n") }, .calls = { MSG("a", "") } },
  { .row = 10, .resp = { B("event: add\n\n") } },
  { .row = 11,
    .resp = { B("event: add\ndata: 1\n\ndata: 2\n\n") },
    .calls = { EV("add", "1", ""), MSG("2", "") } },
  { .row = 12,
    .resp = { B("event:\ndata: x\n\n") },
    .calls = { MSG("x", "") } },
  { .row = 13, .resp = { B("Data: x\n\nDATA: y\n\n") } },
  { .row = 14, .resp = { B("data : x\n\n") } },
  { .row = 15,
    .resp = { B("data: a\n \ndata: b\n\n") },
    .calls = { MSG("a\nb", "") } },
  { .row = 16,
    .resp = { B(": hi\n:\ndata: a\n\n") },
    .calls = { MSG("a", "") } },
  { .row = 17,
    .resp = { B("foo: bar\ndata: a\n\n") },
    .calls = { MSG("a", "") } },
  { .row = 18,
    .resp = { B("data: a:b\ndata:: c\n\n") },
    .calls = { MSG("a:b\n: c", "") } },
  { .row = 19,
    .resp = { B("id: 1\ndata: a\n\ndata: b\n\n") },
    .calls = { MSG("a", "1"), MSG("b", "1") },
    .last_id = "1" },
  { .row = 20,
    .resp = { B("id: 1\ndata: a\n\nid\ndata: b\n\n") },
    .calls = { MSG("a", "1"), MSG("b", "") } },
  { .row = 21,
    .resp = { B("id: 1\ndata: a\n\nid: 2\0x\ndata: b\n\n") },
    .calls = { MSG("a", "1"), MSG("b", "1") },
    .last_id = "1" },
  { .row = 22,
    .resp = { B("id: 3\nid: 4\0\ndata: c\n\n") },
    .calls = { MSG("c", "3") },
    .last_id = "3" },
  { .row = 23,
    .resp = { B("id: 7\n\n") },
    .calls = { ID_ONLY("7") },
    .last_id = "7" },
  { .row = 24, .resp = { B("id: 7\n") } },
  { .row = 25, .resp = { B("retry: 500\ndata: a") }, .calls = { RETRY(500) } },
  { .row = 26,
    .resp = { B("id:  5\ndata: x\n\n") },
    .calls = { MSG("x", " 5") },
    .last_id = " 5" },
  { .row = 27, .resp = { B("retry: 1000\n") }, .calls = { RETRY(1000) } },
  { .row = 28,
    .resp = { B("retry: 1000x\ndata: x\n\n") },
    .calls = { MSG("x", "") } },
  { .row = 29,
    .resp = { B("retry:  100\nretry: -1\nretry: +5\nretry: 1.5\nretry: 0x10\n"
                "retry:\n") } },
  { .row = 30, .resp = { B("retry: 03000\n") }, .calls = { RETRY(3000) } },
  { .row = 31,
    .resp = { B("retry: 99999999999999999999\n") },
    .calls = { RETRY(UINT64_MAX) } },
  { .row = 32, .resp = { B("retry: 0\n") }, .calls = { RETRY(0) } },
  { .row = 33,
    .resp = { B("data: a\rdata: b\r\r") },
    .calls = { MSG("a\nb", "") } },
  { .row = 34,
    .resp = { B("data: a\r\ndata: b\r\n\r\n") },
    .calls = { MSG("a\nb", "") } },
  { .row = 35, .resp = { B("data: a\r\n\n") }, .calls = { MSG("a", "") } },
  { .row = 35, .resp = { B("data: a\n\r\n") }, .calls = { MSG("a", "") } },
  { .row = 36, .resp = { B("data: a\r\r\n") }, .calls = { MSG("a", "") } },
  { .row = 37,
    .resp = { B("data: a\n\rdata: b\n\n") },
    .calls = { MSG("a", ""), MSG("b", "") } },
  { .row = 38, .resp = { B(BOM "data: a\n\n") }, .calls = { MSG("a", "") } },
  { .row = 39,
    .resp = { B(BOM BOM "data: 1\n\ndata: 2\n\n") },
    .calls = { MSG("2", "") } },
  { .row = 40,
    .resp = { B("data: a\n\n" BOM "data: b\n\n") },
    .calls = { MSG("a", "") } },
  { .row = 41,
    .resp = { B("\xEF\xBB"
                "data: a\n\n") } },
  { .row = 42,
    .resp = { B("data: \xFF\n\n") },
    .calls = { MSG("\xEF\xBF\xBD", "") } },
  { .row = 43,
    .resp = { B("data: \xE2\x82\xAC\n\n") },
    .calls = { MSG("\xE2\x82\xAC", "") } },
  { .row = 44, .resp = { B("data: a\0b\n\n") }, .calls = { MSG("a\0b", "") } },
  { .row = 45,
    .resp = { B("data: 0123456789a\n\n") },
    .lim = { .max_line = 16 },
    .err = SSE_ELINE },
  { .row = 46,
    .resp = { B("data: 12345678\ndata: 12345678\n\n") },
    .lim = { .max_event_size = 16 },
    .err = SSE_EEVENT },
  { .row = 47,
    .resp = { B("data: a\n\n"), B(BOM "data: b\n\n") },
    .calls = { MSG("a", ""), MSG("b", "") } },
  { .row = 48,
    .resp = { B("event: x\ndata: a\n"), B("data: b\n\n") },
    .calls = { MSG("b", "") } },
};

#define NVECTORS (sizeof vectors / sizeof vectors[0])

static void check_row(int row) {
  size_t i, found = 0;

  for (i = 0; i < NVECTORS; i++) {
    if (vectors[i].row != row)
      continue;
    check_vector(&vectors[i]);
    found++;
  }
  ASSERT(found > 0);
}

#define ROW(num, what)                                                         \
  static void test_row_##num##_##what(void) {                                  \
    check_row(1##num - 100);                                                   \
  }

ROW(01, basic)
ROW(02, no_space)
ROW(03, one_space_stripped)
ROW(04, tab_kept)
ROW(05, data_no_colon)
ROW(06, data_empty_value)
ROW(07, one_trailing_lf_removed)
ROW(08, data_joined_with_lf)
ROW(09, extra_blank_lines)
ROW(10, no_data_not_dispatched)
ROW(11, type_does_not_carry_over)
ROW(12, empty_type_is_message)
ROW(13, field_names_case_sensitive)
ROW(14, field_with_trailing_space_unknown)
ROW(15, space_line_is_not_blank)
ROW(16, comments)
ROW(17, unknown_field)
ROW(18, split_at_first_colon)
ROW(19, id_persists)
ROW(20, id_reset)
ROW(21, id_with_nul_ignored)
ROW(22, nul_id_keeps_earlier_id)
ROW(23, id_only_block)
ROW(24, id_never_dispatched)
ROW(25, retry_per_line_partial_dropped)
ROW(26, id_one_space_stripped)
ROW(27, retry_alone)
ROW(28, retry_non_digit_ignored)
ROW(29, retry_invalid_forms)
ROW(30, retry_decimal)
ROW(31, retry_saturates)
ROW(32, retry_zero)
ROW(33, cr_only)
ROW(34, crlf)
ROW(35, mixed_terminators)
ROW(36, cr_then_crlf)
ROW(37, lone_cr_blank_line)
ROW(38, bom_stripped)
ROW(39, second_bom_in_field_name)
ROW(40, bom_only_at_start)
ROW(41, partial_bom)
ROW(42, invalid_utf8)
ROW(43, code_point_split_across_reads)
ROW(44, nul_in_data)
ROW(45, line_too_long)
ROW(46, event_too_large)
ROW(47, bom_per_response)
ROW(48, buffers_dropped_at_eof)

/* ---- Beyond the table ---- */

/* A parser with the recording callbacks, for the hand-written cases. */
typedef struct fixture {
  sse_parser p;
  rec r;
  result res;
} fixture;

static void fx_init(fixture *f, size_t max_line, size_t max_event_size) {
  sse_limits lim = { max_line, max_event_size };

  memset(f, 0, sizeof *f);
  f->r.res = &f->res;
  f->r.p = &f->p;
  f->r.max_event_size =
      max_event_size ? max_event_size : SSE_DEFAULT_MAX_EVENT_SIZE;
  ASSERT_EQ(0, sse_parser_init(&f->p, &lim, &cbs, &f->r));
  sse_parser_new_response(&f->p);
}

/* Feeds s in one read; returns the feed's result and the bytes used. */
static int fx_feed(fixture *f, const char *s, size_t n, size_t *used) {
  size_t u;
  int rc = sse_parser_feed(&f->p, s, n, &u);

  if (used != NULL)
    *used = u;
  return rc;
}

#define FEED(f, lit) fx_feed(f, lit, sizeof(lit) - 1, NULL)

static void fx_free(fixture *f) {
  sse_parser_free(&f->p);
  result_free(&f->res);
}

static void test_row_43_the_given_split(void) {
  fixture f;

  fx_init(&f, 0, 0);
  ASSERT_EQ(0, FEED(&f, "data: \xE2\x82"));
  ASSERT_UEQ(0, f.res.n);
  ASSERT_EQ(0, FEED(&f, "\xAC\n\n"));
  ASSERT_UEQ(1, f.res.n);
  ASSERT_MEM_EQ("\xE2\x82\xAC", 3, f.res.calls[0].data,
                f.res.calls[0].data_len);
  fx_free(&f);
}

static void test_row_33_dispatches_before_any_further_byte(void) {
  fixture f;

  fx_init(&f, 0, 0);
  ASSERT_EQ(0, FEED(&f, "data: a\rdata: b\r\r"));
  ASSERT_UEQ(1, f.res.n);
  ASSERT_MEM_EQ("a\nb", 3, f.res.calls[0].data, f.res.calls[0].data_len);
  /* The LF that may follow belongs to the last CR: no second blank line. */
  ASSERT_EQ(0, FEED(&f, "\ndata: c\n\n"));
  ASSERT_UEQ(2, f.res.n);
  fx_free(&f);
}

static void test_error_names(void) {
  ASSERT_STR_EQ("line_too_long", sse_strerror(SSE_ELINE));
  ASSERT_STR_EQ("event_too_large", sse_strerror(SSE_EEVENT));
  ASSERT_STR_EQ("paused", sse_strerror(SSE_PAUSED));
  ASSERT_STR_EQ("ENOMEM", sse_strerror(UV_ENOMEM));
}

static void test_line_cap_boundary(void) {
  fixture f;
  size_t used;

  /* 16 bytes is allowed, terminated or not; the 17th byte is an error even
   * before the line ends, so memory stays bounded. */
  fx_init(&f, 16, 0);
  ASSERT_EQ(0, FEED(&f, "data: 0123456789\n\n"));
  ASSERT_UEQ(1, f.res.n);
  ASSERT_EQ(0, FEED(&f, "data: 0123456789"));
  ASSERT_EQ(SSE_ELINE, fx_feed(&f, "a", 1, &used));
  ASSERT_UEQ(0, used);
  ASSERT_STR_EQ("line_too_long", sse_strerror(SSE_ELINE));
  /* Sticky until the next response, which starts clean. */
  ASSERT_EQ(SSE_ELINE, FEED(&f, "\n\n"));
  sse_parser_new_response(&f.p);
  ASSERT_EQ(0, FEED(&f, "data: b\n\n"));
  ASSERT_UEQ(2, f.res.n);
  ASSERT_MEM_EQ("b", 1, f.res.calls[1].data, f.res.calls[1].data_len);
  fx_free(&f);
}

static void test_error_reports_bytes_used(void) {
  fixture f;
  size_t used;
  static const char in[] = "data: a\n\ndata: 0123456789abcdef\n\n";

  fx_init(&f, 16, 0);
  ASSERT_EQ(SSE_ELINE, fx_feed(&f, in, sizeof in - 1, &used));
  /* The event before the long line was dispatched and its bytes used. */
  ASSERT_UEQ(1, f.res.n);
  ASSERT_UEQ(strlen("data: a\n\n"), used);
  fx_free(&f);
}

static void test_event_cap_boundary(void) {
  fixture f;

  /* The data buffer counts an LF per line: "12345678\n1234567\n" is 17
   * bytes, "12345678\n123456\n" is 16. */
  fx_init(&f, 0, 16);
  ASSERT_EQ(0, FEED(&f, "data: 12345678\ndata: 123456\n\n"));
  ASSERT_UEQ(1, f.res.n);
  ASSERT_UEQ(15, f.res.calls[0].data_len);
  ASSERT_EQ(SSE_EEVENT, FEED(&f, "data: 12345678\ndata: 1234567\n"));
  ASSERT_STR_EQ("event_too_large", sse_strerror(SSE_EEVENT));
  ASSERT_UEQ(1, f.res.n);
  fx_free(&f);
}

static void test_id_cap_counts_repaired_bytes(void) {
  fixture f;

  /* Four bad bytes make a 12-byte id, which fits; six make 18, which does
   * not, although their line is only 9 bytes. */
  fx_init(&f, 16, 0);
  ASSERT_EQ(0, FEED(&f, "id: \xFF\xFF\xFF\xFF\n\ndata: x\n\n"));
  ASSERT_UEQ(2, f.res.n);
  ASSERT_EQ(K_ID_ONLY, f.res.calls[0].kind);
  ASSERT_UEQ(12, f.res.calls[0].id_len);
  ASSERT_EQ(SSE_ELINE, FEED(&f, "id:\xFF\xFF\xFF\xFF\xFF\xFF\n"));
  fx_free(&f);
}

/* The maximal-subpart cases of the Encoding standard and Unicode §3.9. */
static void test_utf8_repair(void) {
  static const struct {
    const char *in, *out;
  } cases[] = {
    { "\xF0\x9F\x98\x80", "\xF0\x9F\x98\x80" }, /* valid 4-byte */
    { "\xC3\xA9", "\xC3\xA9" },                 /* valid 2-byte */
    { "\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD" }, /* overlong lead */
    { "\xE0\x80\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" },
    { "\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" }, /* surrogate */
    { "\xF4\x90\x80\x80",
      "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD" }, /* > U+10FFFF */
    { "\xF0\x9F\x98", "\xEF\xBF\xBD" }, /* truncated at the end */
    { "\xF0\x9F\x98"
      "A",
      "\xEF\xBF\xBD"
      "A" }, /* cut by ASCII */
    { "\xE2\x82\xE2\x82\xAC", "\xEF\xBF\xBD\xE2\x82\xAC" },
    { "\x80\xBF", "\xEF\xBF\xBD\xEF\xBF\xBD" }, /* lone continuations */
    { "\xF5\xFE", "\xEF\xBF\xBD\xEF\xBF\xBD" }, /* never valid */
    { "a\xE1\x80\xE2\xF0\x91\x92\xF1\xBF\x41",
      "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\x41" }, /* WHATWG */
  };
  size_t i;
  char line[64];
  fixture f;
  int n;

  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fx_init(&f, 0, 0);
    n = snprintf(line, sizeof line, "data: %s\n\n", cases[i].in);
    ASSERT_EQ(0, fx_feed(&f, line, (size_t)n, NULL));
    ASSERT_UEQ(1, f.res.n);
    ASSERT_MEM_EQ(cases[i].out, strlen(cases[i].out), f.res.calls[0].data,
                  f.res.calls[0].data_len);
    fx_free(&f);
  }
  /* Event types and ids are repaired the same way. */
  fx_init(&f, 0, 0);
  ASSERT_EQ(0, FEED(&f, "event: a\xFF\nid: \xC0\ndata: x\n\n"));
  ASSERT_UEQ(1, f.res.n);
  ASSERT_MEM_EQ("a\xEF\xBF\xBD", 4, f.res.calls[0].type,
                f.res.calls[0].type_len);
  ASSERT_MEM_EQ("\xEF\xBF\xBD", 3, f.res.calls[0].id, f.res.calls[0].id_len);
  fx_free(&f);
}

static void test_id_only_on_change_only(void) {
  fixture f;

  fx_init(&f, 0, 0);
  ASSERT_EQ(0, FEED(&f, "id: 7\n\nid: 7\n\n:\n\nid\n\n\n"));
  ASSERT_UEQ(2, f.res.n);
  ASSERT_EQ(K_ID_ONLY, f.res.calls[0].kind);
  ASSERT_MEM_EQ("7", 1, f.res.calls[0].id, f.res.calls[0].id_len);
  /* A reset is a change too: the cursor becomes "". */
  ASSERT_EQ(K_ID_ONLY, f.res.calls[1].kind);
  ASSERT_UEQ(0, f.res.calls[1].id_len);
  fx_free(&f);
}

static void test_new_response_keeps_last_id_and_retry(void) {
  fixture f;
  size_t len;
  uint64_t ms = 0;

  fx_init(&f, 0, 0);
  ASSERT_EQ(0, FEED(&f, "retry: 250\nid: 5\ndata: a\n\nid: 6\n"));
  /* The response ends before id 6 is dispatched: it was never the last event
   * id, so the next response's events do not carry it either. */
  sse_parser_new_response(&f.p);
  ASSERT_STR_EQ("5", sse_parser_last_id(&f.p, &len));
  ASSERT_UEQ(1, len);
  ASSERT(sse_parser_retry(&f.p, &ms));
  ASSERT_UEQ(250, ms);
  ASSERT_EQ(0, FEED(&f, "data: b\n\n"));
  ASSERT_UEQ(3, f.res.n);
  ASSERT_MEM_EQ("5", 1, f.res.calls[2].id, f.res.calls[2].id_len);
  fx_free(&f);
}

static void test_defaults_and_null_callbacks(void) {
  sse_parser p;
  size_t used, len;
  uint64_t ms = 0;

  ASSERT_EQ(UV_EINVAL, sse_parser_init(NULL, NULL, NULL, NULL));
  ASSERT_EQ(0, sse_parser_init(&p, NULL, NULL, NULL));
  ASSERT(!sse_parser_retry(&p, &ms));
  ASSERT_STR_EQ("", sse_parser_last_id(&p, &len));
  ASSERT_UEQ(0, len);
  ASSERT_EQ(0, sse_parser_feed(&p, "id: 1\ndata: a\n\nretry: 9\n", 24, &used));
  ASSERT_UEQ(24, used);
  ASSERT_STR_EQ("1", sse_parser_last_id(&p, &len));
  ASSERT(sse_parser_retry(&p, &ms));
  ASSERT_UEQ(9, ms);
  ASSERT_EQ(0, sse_parser_feed(&p, NULL, 0, &used));
  ASSERT_UEQ(0, used);
  sse_parser_free(&p);
  sse_parser_free(NULL);
}

/* Builds a random stream that is mostly SSE: field lines, comments, blank
 * lines, every terminator, BOMs, NULs and bad UTF-8. */
static size_t random_stream(char *out, size_t cap) {
  static const char *const pieces[] = {
    "data: ",
    "data:",
    "data",
    "id: ",
    "id:",
    "id",
    "event: ",
    "event:",
    "retry: ",
    "retry:",
    ":",
    ": hi",
    " ",
    "\n",
    "\n",
    "\n",
    "\r",
    "\r\n",
    "\r\n",
    BOM,
    "\xEF\xBB",
    "\xFF",
    "\xE2\x82",
    "\xAC",
    "\xF0\x9F\x98\x80",
    "x",
    "hello",
    "1234",
    "00000000000000000000000",
    "\0",
    "a:b",
    "\t",
  };
  size_t n = 0, i, len;
  const char *s;

  while (n < cap) {
    i = rng_below(sizeof pieces / sizeof pieces[0] + 4);
    if (i >= sizeof pieces / sizeof pieces[0]) {
      out[n++] = (char)rng(); /* any byte */
      continue;
    }
    s = pieces[i];
    len = s[0] == '\0' ? 1 : strlen(s);
    if (len > cap - n)
      break;
    memcpy(out + n, s, len);
    n += len;
  }
  return n;
}

/* Feeds s in random reads; returns the calls (and the first error, after
 * which the response is restarted as a source would reconnect). */
static void feed_random(const char *s, size_t n, size_t max_line,
                        size_t max_event_size, bool pause, uint64_t seed,
                        result *res) {
  sse_parser p;
  sse_limits lim = { max_line, max_event_size };
  rec r = { res, &p, max_event_size, pause };
  size_t off = 0, k, used, held;
  size_t bound = 4 * (max_line + 1) + max_event_size + 1;
  int rc;

  memset(res, 0, sizeof *res);
  rng_seed(seed);
  ASSERT_EQ(0, sse_parser_init(&p, &lim, &cbs, &r));
  sse_parser_new_response(&p);
  while (off < n) {
    k = rng_below(5) == 0 ? 0 : 1 + rng_below(97);
    if (k > n - off)
      k = n - off;
    rc = sse_parser_feed(&p, s + off, k, &used);
    held = sse_parser_held(&p);
    if (held > res->max_held)
      res->max_held = held;
    ASSERT(held <= bound);
    ASSERT(used <= k);
    if (rc < 0) {
      if (res->err == 0)
        res->err = rc;
      ASSERT(rc == SSE_ELINE || rc == SSE_EEVENT);
      sse_parser_new_response(&p);
      off += k; /* the rest of that read is lost with the connection */
      continue;
    }
    if (rc == SSE_PAUSED)
      ASSERT(pause);
    else
      ASSERT_UEQ(k, used);
    off += used;
  }
  finish(&p, res);
}

static void test_memory_bound_random(void) {
  static char in[64 * 1024];
  static const size_t caps[][2] = {
    { 1, 1 }, { 4, 8 }, { 16, 16 }, { 64, 32 }, { 100, 1000 }, { 1000, 100 },
  };
  size_t c, n, bound;
  int round;
  result res;

  for (round = 0; round < 20; round++) {
    rng_seed(0xB0B0u + (uint64_t)round);
    n = random_stream(in, sizeof in);
    for (c = 0; c < sizeof caps / sizeof caps[0]; c++) {
      bound = 4 * (caps[c][0] + 1) + caps[c][1] + 1;
      feed_random(in, n, caps[c][0], caps[c][1], round % 2 == 0,
                  (uint64_t)round * 31 + c, &res);
      ASSERT(res.max_held <= bound);
      result_free(&res);
    }
  }
}

/* The same events whether every callback pauses (and the caller feeds the
 * rest again) or none does, also when the reads are random. */
static void test_pause_after_each_event(void) {
  static char in[32 * 1024];
  size_t n, used, off, k;
  result want, got;
  sse_parser p;
  rec r;
  int round, rc;
  size_t pauses;

  for (round = 0; round < 20; round++) {
    rng_seed(0xCAFEu + (uint64_t)round);
    n = random_stream(in, sizeof in);
    /* Large caps: no errors, so the two runs must match call for call. */
    feed_random(in, n, 1 << 20, 1 << 20, false, 7, &want);
    ASSERT_EQ(0, want.err);

    memset(&got, 0, sizeof got);
    r = (rec){ &got, &p, 1 << 20, true };
    sse_parser_init(&p, &(sse_limits){ 1 << 20, 1 << 20 }, &cbs, &r);
    sse_parser_new_response(&p);
    pauses = 0;
    rng_seed(0xFEEDu + (uint64_t)round);
    for (off = 0; off < n;) {
      k = 1 + rng_below(200);
      if (k > n - off)
        k = n - off;
      rc = sse_parser_feed(&p, in + off, k, &used);
      ASSERT(rc == 0 || rc == SSE_PAUSED);
      if (rc == SSE_PAUSED) {
        pauses++;
        /* Exactly one call happened since the last pause. */
        ASSERT_UEQ(pauses, got.n);
      }
      off += used; /* the caller keeps the rest and feeds it next */
    }
    ASSERT_UEQ(want.n, pauses);
    finish(&p, &got);
    ASSERT_UEQ(want.n, got.n);
    want.max_held = got.max_held = 0;
    assert_same(&want, &got);
    result_free(&want);
    result_free(&got);
  }
}

/* A pause on the line that ends in CR: the LF that starts the re-fed rest
 * is still part of that terminator. */
static void test_pause_at_cr_keeps_lf_pending(void) {
  fixture f;
  size_t used;
  static const char in[] = "data: a\r\r\ndata: b\r\n\r\n";

  fx_init(&f, 0, 0);
  f.r.pause = true;
  ASSERT_EQ(SSE_PAUSED, fx_feed(&f, in, sizeof in - 1, &used));
  ASSERT_UEQ(strlen("data: a\r\r"), used);
  ASSERT_UEQ(1, f.res.n);
  ASSERT_EQ(SSE_PAUSED, fx_feed(&f, in + used, sizeof in - 1 - used, &used));
  ASSERT_UEQ(2, f.res.n);
  ASSERT_MEM_EQ("b", 1, f.res.calls[1].data, f.res.calls[1].data_len);
  fx_free(&f);
}

static int on_event_fails(void *data, const sse_event *ev) {
  int *calls = data;

  (void)ev;
  ++*calls;
  return UV_EIO;
}

/* A negative return stops the feed with that code, like a cap error. */
static void test_callback_error_stops_feed(void) {
  static const sse_callbacks fails = { on_event_fails, NULL, NULL };
  static const char in[] = "data: a\r\n\r\ndata: b\n\n";
  sse_parser p;
  size_t used;
  int calls = 0;

  ASSERT_EQ(0, sse_parser_init(&p, NULL, &fails, &calls));
  sse_parser_new_response(&p);
  ASSERT_EQ(UV_EIO, sse_parser_feed(&p, in, sizeof in - 1, &used));
  /* Used up to the CR that dispatched; its LF is not part of any line. */
  ASSERT_UEQ(strlen("data: a\r\n\r"), used);
  ASSERT_EQ(1, calls);
  ASSERT_EQ(UV_EIO, sse_parser_feed(&p, in + used, 2, &used));
  ASSERT_UEQ(0, used);
  ASSERT_EQ(1, calls);
  sse_parser_new_response(&p);
  ASSERT_EQ(UV_EIO, sse_parser_feed(&p, "data: c\n\n", 9, &used));
  ASSERT_UEQ(9, used);
  ASSERT_EQ(2, calls);
  sse_parser_free(&p);
}

static const test_case tests[] = {
  TEST(test_row_01_basic),
  TEST(test_row_02_no_space),
  TEST(test_row_03_one_space_stripped),
  TEST(test_row_04_tab_kept),
  TEST(test_row_05_data_no_colon),
  TEST(test_row_06_data_empty_value),
  TEST(test_row_07_one_trailing_lf_removed),
  TEST(test_row_08_data_joined_with_lf),
  TEST(test_row_09_extra_blank_lines),
  TEST(test_row_10_no_data_not_dispatched),
  TEST(test_row_11_type_does_not_carry_over),
  TEST(test_row_12_empty_type_is_message),
  TEST(test_row_13_field_names_case_sensitive),
  TEST(test_row_14_field_with_trailing_space_unknown),
  TEST(test_row_15_space_line_is_not_blank),
  TEST(test_row_16_comments),
  TEST(test_row_17_unknown_field),
  TEST(test_row_18_split_at_first_colon),
  TEST(test_row_19_id_persists),
  TEST(test_row_20_id_reset),
  TEST(test_row_21_id_with_nul_ignored),
  TEST(test_row_22_nul_id_keeps_earlier_id),
  TEST(test_row_23_id_only_block),
  TEST(test_row_24_id_never_dispatched),
  TEST(test_row_25_retry_per_line_partial_dropped),
  TEST(test_row_26_id_one_space_stripped),
  TEST(test_row_27_retry_alone),
  TEST(test_row_28_retry_non_digit_ignored),
  TEST(test_row_29_retry_invalid_forms),
  TEST(test_row_30_retry_decimal),
  TEST(test_row_31_retry_saturates),
  TEST(test_row_32_retry_zero),
  TEST(test_row_33_cr_only),
  TEST(test_row_34_crlf),
  TEST(test_row_35_mixed_terminators),
  TEST(test_row_36_cr_then_crlf),
  TEST(test_row_37_lone_cr_blank_line),
  TEST(test_row_38_bom_stripped),
  TEST(test_row_39_second_bom_in_field_name),
  TEST(test_row_40_bom_only_at_start),
  TEST(test_row_41_partial_bom),
  TEST(test_row_42_invalid_utf8),
  TEST(test_row_43_code_point_split_across_reads),
  TEST(test_row_44_nul_in_data),
  TEST(test_row_45_line_too_long),
  TEST(test_row_46_event_too_large),
  TEST(test_row_47_bom_per_response),
  TEST(test_row_48_buffers_dropped_at_eof),
  TEST(test_row_43_the_given_split),
  TEST(test_row_33_dispatches_before_any_further_byte),
  TEST(test_error_names),
  TEST(test_line_cap_boundary),
  TEST(test_error_reports_bytes_used),
  TEST(test_event_cap_boundary),
  TEST(test_id_cap_counts_repaired_bytes),
  TEST(test_utf8_repair),
  TEST(test_id_only_on_change_only),
  TEST(test_new_response_keeps_last_id_and_retry),
  TEST(test_defaults_and_null_callbacks),
  TEST(test_memory_bound_random),
  TEST(test_pause_after_each_event),
  TEST(test_pause_at_cr_keeps_lf_pending),
  TEST(test_callback_error_stops_feed),
  { NULL, NULL },
};

TEST_MAIN(tests)
