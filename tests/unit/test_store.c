/* Unit tests of store/: the 36 vectors of the protocol document's section 10,
 * tether's additions of section 11 (position, bounds, reset audit), the
 * file's life (migrations, damage, locking, permissions) and the group
 * commit on the thread pool. */
#include "store/store.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <time.h>

#include <sqlite3.h>

#include "tests/unit/test.h"

#define SEC    INT64_C(1000000000)
#define MINUTE (60 * SEC)
#define HOUR   (60 * MINUTE)
/* 2026-05-05T15:00:00Z, the T0 of the vector table. */
#define T0 (INT64_C(1777993200) * SEC)

static char err[1024];

/* Asserts that a store call returns the expected code, printing the store's
 * message when it does not. */
#define ASSERT_RC(expected, call)                                              \
  do {                                                                         \
    int rc_ = (call);                                                          \
    test__assertions++;                                                        \
    if (rc_ != (expected))                                                     \
      test__fail(__FILE__, __LINE__, "%s: expected %d, got %d (%s)", #call,    \
                 (int)(expected), rc_, err);                                   \
  } while (0)

/* Paths are built from a temporary directory of up to PATH_MAX bytes, so
 * buffers that extend it are larger, and -Wformat-truncation stays quiet. */
#define PATH_BUF (PATH_MAX + 64)

typedef struct fixture {
  char dir[PATH_MAX];
  char path[PATH_BUF];
  store *s;
} fixture;

static int rm_entry(const char *path, const struct stat *st, int flag,
                    struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* test_rmtree with nftw: test.h's recursive version trips gcc's
 * -Wformat-truncation when it is inlined into this file alone. */
static void rmtree(const char *path) {
  nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void fx_open(fixture *f) {
  snprintf(f->dir, sizeof f->dir, "%s", test_tmpdir());
  snprintf(f->path, sizeof f->path, "%s/state.db", f->dir);
  f->s = NULL;
  ASSERT_RC(0, store_open(f->path, &f->s, err, sizeof err));
}

static void fx_close(fixture *f) {
  store_close(f->s);
  f->s = NULL;
  rmtree(f->dir);
}

static store_key key3(const char *consumer, const char *stream,
                      const char *subject) {
  store_key k = { consumer, stream, subject };
  return k;
}

/* The key most vectors use. */
static const store_key K = { "c", "s", "" };

static int advance(store *s, store_key k, int64_t seq, const char *id,
                   int64_t at, int64_t now, const char *position,
                   store_cursor *out) {
  store_advance r = { k, seq, id, position, at, now };
  return store_advance_cursor(s, &r, out, err, sizeof err);
}

static int reset(store *s, store_key k, int64_t seq, const char *id, int64_t at,
                 const char *position, const char *reason, int64_t now,
                 store_cursor *out) {
  store_reset r = { k, seq, id, position, at, reason, now };
  return store_reset_cursor(s, &r, out, err, sizeof err);
}

static int record(store *s, store_key k, const char *msg, int64_t now,
                  store_cursor *out) {
  store_error r = { k, msg, now };
  return store_record_error(s, &r, out, err, sizeof err);
}

/* Asserts every stored field but the key. */
static void expect_row(const store_cursor *c, int64_t seq, const char *id,
                       int64_t at, const char *error, int64_t updated,
                       const char *position) {
  ASSERT_EQ(seq, c->last_sequence);
  ASSERT_STR_EQ(id, c->last_delivery_id);
  ASSERT_EQ(at, c->last_delivered_at);
  ASSERT_STR_EQ(error, c->last_error);
  ASSERT_EQ(updated, c->updated_at);
  ASSERT_STR_EQ(position, c->position);
}

/* Reads the stored row of k back and checks it as expect_row does. */
static void expect_stored(store *s, store_key k, int64_t seq, const char *id,
                          int64_t at, const char *error, int64_t updated,
                          const char *position) {
  store_cursor c;

  ASSERT_RC(0, store_get(s, &k, &c, err, sizeof err));
  expect_row(&c, seq, id, at, error, updated, position);
  store_cursor_free(&c);
}

static void expect_missing(store *s, store_key k) {
  ASSERT_RC(STORE_ENOTFOUND, store_get(s, &k, NULL, err, sizeof err));
}

/* ---- Section 10: the vector table -------------------------------------- */

static void test_vector_01_get_trims_key(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(STORE_ENOTFOUND, store_get(f.s, &(store_key){ " c1 ", " s ", "" },
                                       &c, err, sizeof err));
  ASSERT_STR_EQ("cursor not found", err);
  /* The lookup used the trimmed key: a row stored under it is found. */
  ASSERT_RC(0, advance(f.s, key3("c1", "s", ""), 1, "d1", T0, T0, NULL, NULL));
  ASSERT_RC(0, store_get(f.s, &(store_key){ " c1 ", " s ", "" }, &c, err,
                         sizeof err));
  ASSERT_STR_EQ("c1", c.consumer_id);
  ASSERT_STR_EQ("s", c.stream_name);
  ASSERT_STR_EQ("", c.subject_id);
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_02_get_blank_consumer(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, store_get(f.s, &(store_key){ "   ", "s", "" }, NULL,
                                    err, sizeof err));
  ASSERT_STR_EQ("invalid cursor: consumer id is required", err);
  fx_close(&f);
}

static void test_vector_03_get_consumer_checked_first(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL,
            store_get(f.s, &(store_key){ "", "", "" }, NULL, err, sizeof err));
  ASSERT_STR_EQ("invalid cursor: consumer id is required", err);
  fx_close(&f);
}

static void test_vector_04_get_blank_stream(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, store_get(f.s, &(store_key){ "c", "\t", "" }, NULL,
                                    err, sizeof err));
  ASSERT_STR_EQ("invalid cursor: stream name is required", err);
  fx_close(&f);
}

static void test_vector_05_advance_sequence_zero(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, advance(f.s, K, 0, "d", 0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: last sequence must be greater than zero", err);
  ASSERT_RC(STORE_EINVAL, advance(f.s, K, -1, "d", 0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: last sequence must be greater than zero", err);
  expect_missing(f.s, K);
  fx_close(&f);
}

static void test_vector_06_advance_key_checked_first(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3(" ", "s", ""), 0, "d", 0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: consumer id is required", err);
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3("c", "", ""), 0, "d", 0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: stream name is required", err);
  fx_close(&f);
}

static void test_vector_07_advance_create(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 7, "delivery-7", T0 - MINUTE, T0, NULL, &c));
  expect_row(&c, 7, "delivery-7", T0 - MINUTE, "", T0, "");
  ASSERT_STR_EQ("c", c.consumer_id);
  store_cursor_free(&c);
  expect_stored(f.s, K, 7, "delivery-7", T0 - MINUTE, "", T0, "");
  fx_close(&f);
}

static void test_vector_08_advance_trims_id_and_fills_at(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 11, " d-11 ", 0, T0, NULL, &c));
  expect_row(&c, 11, "d-11", T0, "", T0, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_09_advance_replay_clears_error(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 11, "d-11", T0, T0, NULL, NULL));
  ASSERT_RC(0, record(f.s, K, "bridge delivery failed", T0, NULL));
  expect_stored(f.s, K, 11, "d-11", T0, "bridge delivery failed", T0, "");
  ASSERT_RC(0, advance(f.s, K, 11, "d-11", 0, T0 + HOUR, NULL, &c));
  expect_row(&c, 11, "d-11", T0, "", T0 + HOUR, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_10_advance_fork(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "delivery-15", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_ENONMONO,
            advance(f.s, K, 15, "delivery-15b", 0, T0 + MINUTE, NULL, NULL));
  ASSERT_STR_EQ("non-monotonic cursor advance: stored seq 15 delivery "
                "\"delivery-15\", requested seq 15 delivery \"delivery-15b\" "
                "(fork)",
                err);
  expect_stored(f.s, K, 15, "delivery-15", T0, "", T0, "");
  fx_close(&f);
}

static void test_vector_11_advance_backward(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "delivery-15", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_ENONMONO,
            advance(f.s, K, 14, "delivery-14", 0, T0 + MINUTE, NULL, NULL));
  ASSERT_STR_EQ("non-monotonic cursor advance: stored seq 15 delivery "
                "\"delivery-15\", requested seq 14 delivery \"delivery-14\" "
                "(backward)",
                err);
  expect_stored(f.s, K, 15, "delivery-15", T0, "", T0, "");
  fx_close(&f);
}

static void test_vector_12_advance_set_id_then_empty(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "d-15", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_ENONMONO, advance(f.s, K, 15, "", 0, T0, NULL, NULL));
  ASSERT_STR_EQ("non-monotonic cursor advance: stored seq 15 delivery "
                "\"d-15\", requested seq 15 delivery \"\" (fork)",
                err);
  expect_stored(f.s, K, 15, "d-15", T0, "", T0, "");
  fx_close(&f);
}

static void test_vector_13_advance_empty_id_refresh(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, K, 15, "", T0 + HOUR, T0 + MINUTE, NULL, &c));
  /* A refresh keeps the stored delivered_at. */
  expect_row(&c, 15, "", T0, "", T0 + MINUTE, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_14_advance_empty_id_then_set(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_ENONMONO, advance(f.s, K, 15, "x", 0, T0, NULL, NULL));
  ASSERT_STR_EQ("non-monotonic cursor advance: stored seq 15 delivery \"\", "
                "requested seq 15 delivery \"x\" (fork)",
                err);
  expect_stored(f.s, K, 15, "", T0, "", T0, "");
  fx_close(&f);
}

static void test_vector_15_advance_forward_empty_id(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "d-15", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, K, 16, "", 0, T0 + MINUTE, NULL, &c));
  expect_row(&c, 16, "", T0 + MINUTE, "", T0 + MINUTE, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_16_advance_forward_reused_id(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "d-15", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, K, 16, "d-15", 0, T0 + MINUTE, NULL, &c));
  expect_row(&c, 16, "d-15", T0 + MINUTE, "", T0 + MINUTE, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_17_advance_no_time_check(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 15, "d-15", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, K, 16, "d-16", T0 - HOUR, T0 - 2 * HOUR, NULL, &c));
  expect_row(&c, 16, "d-16", T0 - HOUR, "", T0 - 2 * HOUR, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_18_advance_after_record_error(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, record(f.s, K, "e", T0, NULL));
  expect_stored(f.s, K, 0, "", 0, "e", T0, "");
  ASSERT_RC(0, advance(f.s, K, 1, "d1", 0, T0 + MINUTE, NULL, &c));
  expect_row(&c, 1, "d1", T0 + MINUTE, "", T0 + MINUTE, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_19_advance_refresh_fills_null_at(void) {
  fixture f;
  store_cursor c;
  int64_t t1 = T0 + HOUR;

  fx_open(&f);
  ASSERT_RC(0, reset(f.s, K, 2, "", 0, NULL, "replay", T0, NULL));
  expect_stored(f.s, K, 2, "", 0, "", T0, "");
  ASSERT_RC(0, advance(f.s, K, 2, "", 0, t1, NULL, &c));
  expect_row(&c, 2, "", t1, "", t1, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_20_reset_backward(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 21, "delivery-21", T0, T0, "pos-21", NULL));
  ASSERT_RC(0, record(f.s, K, "late failure", T0, NULL));
  ASSERT_RC(0, reset(f.s, K, 2, NULL, 0, NULL,
                     "operator replay after bridge repair", T0 + MINUTE, &c));
  expect_row(&c, 2, "", 0, "", T0 + MINUTE, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_21_reset_reason_required(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 3, "d3", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_EREASON, reset(f.s, K, 0, NULL, 0, NULL, NULL, T0, NULL));
  ASSERT_STR_EQ("reset reason required", err);
  ASSERT_RC(STORE_EREASON, reset(f.s, K, 0, NULL, 0, NULL, "", T0, NULL));
  ASSERT_STR_EQ("reset reason required", err);
  expect_stored(f.s, K, 3, "d3", T0, "", T0, "");
  fx_close(&f);
}

static void test_vector_22_reset_blank_reason(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EREASON, reset(f.s, K, 4, NULL, 0, NULL, "  \n ", T0, NULL));
  ASSERT_STR_EQ("reset reason required", err);
  expect_missing(f.s, K);
  fx_close(&f);
}

static void test_vector_23_reset_sequence_before_reason(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, reset(f.s, K, -1, NULL, 0, NULL, NULL, T0, NULL));
  ASSERT_STR_EQ("invalid cursor: reset sequence must be zero or greater", err);
  fx_close(&f);
}

static void test_vector_24_reset_creates(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, reset(f.s, K, 5, NULL, 0, NULL, "r", T0, &c));
  expect_row(&c, 5, "", 0, "", T0, "");
  store_cursor_free(&c);
  expect_stored(f.s, K, 5, "", 0, "", T0, "");
  fx_close(&f);
}

static void test_vector_25_reset_forward_clears_error(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 5, "d5", T0, T0, NULL, NULL));
  ASSERT_RC(0, record(f.s, K, "e", T0, NULL));
  expect_stored(f.s, K, 5, "d5", T0, "e", T0, "");
  ASSERT_RC(0, reset(f.s, K, 9, "d9", T0, NULL, "r", T0 + MINUTE, &c));
  expect_row(&c, 9, "d9", T0, "", T0 + MINUTE, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_26_reset_reason_not_in_row(void) {
  fixture f;
  store_cursor c;
  const char *reason = "reason-7f3a9 operator replay";

  fx_open(&f);
  ASSERT_RC(0, reset(f.s, K, 5, NULL, 0, NULL, reason, T0, NULL));
  ASSERT_RC(0, store_get(f.s, &K, &c, err, sizeof err));
  ASSERT(strstr(c.consumer_id, "7f3a9") == NULL);
  ASSERT(strstr(c.stream_name, "7f3a9") == NULL);
  ASSERT(strstr(c.subject_id, "7f3a9") == NULL);
  ASSERT(strstr(c.position, "7f3a9") == NULL);
  ASSERT(strstr(c.last_delivery_id, "7f3a9") == NULL);
  ASSERT(strstr(c.last_error, "7f3a9") == NULL);
  expect_row(&c, 5, "", 0, "", T0, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_27_record_error_keeps_position(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 31, "delivery-31", T0, T0, "p31", NULL));
  ASSERT_RC(0, record(f.s, K, "bridge delivery failed", T0 + MINUTE, &c));
  expect_row(&c, 31, "delivery-31", T0, "bridge delivery failed", T0 + MINUTE,
             "p31");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_28_record_error_creates(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, record(f.s, K, "bridge delivery failed", T0, &c));
  expect_row(&c, 0, "", 0, "bridge delivery failed", T0, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_29_record_error_blank(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, record(f.s, K, "   ", T0, NULL));
  ASSERT_STR_EQ("invalid cursor: last error is required", err);
  ASSERT_RC(STORE_EINVAL, record(f.s, K, NULL, T0, NULL));
  ASSERT_STR_EQ("invalid cursor: last error is required", err);
  expect_missing(f.s, K);
  fx_close(&f);
}

static void test_vector_30_record_error_trimmed(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, record(f.s, K, "  boom  ", T0, &c));
  ASSERT_STR_EQ("boom", c.last_error);
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_vector_31_list_stream_limit(void) {
  fixture f;
  store_query q = { NULL, "task_events", NULL, 1 };
  store_cursor *v;
  size_t n;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, key3("consumer-a", "task_events", "task-a"), 1,
                       "d1", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, key3("consumer-b", "task_events", "task-b"), 2,
                       "d2", T0, T0, NULL, NULL));
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  ASSERT_STR_EQ("consumer-a", v[0].consumer_id);
  ASSERT_STR_EQ("task-a", v[0].subject_id);
  ASSERT_EQ(1, v[0].last_sequence);
  store_cursors_free(v, n);
  fx_close(&f);
}

/* Rows for the ordering and limit vectors, inserted out of order. */
static void seed_list(store *s) {
  static const char *const rows[][3] = {
    { "c2", "b", "" }, { "c1", "b", "x" }, { "c1", "a", "x" },
    { "c2", "a", "" }, { "c1", "a", "" },  { "C9", "a", "" },
  };
  size_t i;

  for (i = 0; i < sizeof rows / sizeof rows[0]; i++)
    ASSERT_RC(0, advance(s, key3(rows[i][0], rows[i][1], rows[i][2]),
                         (int64_t)i + 1, "d", T0, T0, NULL, NULL));
}

static void test_vector_32_list_order(void) {
  /* Stream, then subject ("" before "x"), then consumer, bytewise ("C9"
   * before "c1"). */
  static const char *const want[][3] = {
    { "C9", "a", "" },  { "c1", "a", "" }, { "c2", "a", "" },
    { "c1", "a", "x" }, { "c2", "b", "" }, { "c1", "b", "x" },
  };
  fixture f;
  store_cursor *v;
  size_t n, i;

  fx_open(&f);
  seed_list(f.s);
  ASSERT_RC(0, store_list(f.s, NULL, &v, &n, err, sizeof err));
  ASSERT_UEQ(6, n);
  for (i = 0; i < n; i++) {
    ASSERT_STR_EQ(want[i][0], v[i].consumer_id);
    ASSERT_STR_EQ(want[i][1], v[i].stream_name);
    ASSERT_STR_EQ(want[i][2], v[i].subject_id);
  }
  store_cursors_free(v, n);
  fx_close(&f);
}

static void test_vector_33_list_limit_unlimited(void) {
  fixture f;
  store_query q = { NULL, NULL, NULL, 0 };
  store_cursor *v;
  size_t n;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, key3("a", "s", ""), 1, "d", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, key3("b", "s", ""), 1, "d", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, key3("c", "s", ""), 1, "d", T0, T0, NULL, NULL));
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(3, n);
  store_cursors_free(v, n);
  q.limit = -5;
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(3, n);
  store_cursors_free(v, n);
  q.limit = 2;
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(2, n);
  store_cursors_free(v, n);
  fx_close(&f);
}

static void test_vector_34_list_blank_filter_ignored(void) {
  fixture f;
  store_query q = { "\t", " ", "\xe3\x80\x80", 0 };
  store_cursor *v;
  size_t n;

  fx_open(&f);
  seed_list(f.s);
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(6, n);
  store_cursors_free(v, n);
  /* A non-blank filter is exact and trimmed. */
  q.consumer_id = " c1 ";
  q.stream_name = "a";
  q.subject_id = NULL;
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(2, n);
  ASSERT_STR_EQ("", v[0].subject_id);
  ASSERT_STR_EQ("x", v[1].subject_id);
  store_cursors_free(v, n);
  fx_close(&f);
}

static void test_vector_35_list_no_match(void) {
  fixture f;
  store_query q = { "nobody", NULL, NULL, 0 };
  store_cursor sentinel, *v = &sentinel;
  size_t n = 99;

  fx_open(&f);
  seed_list(f.s);
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(0, n);
  ASSERT(v == NULL);
  /* A prefix is not a match. */
  q.consumer_id = "c";
  ASSERT_RC(0, store_list(f.s, &q, &v, &n, err, sizeof err));
  ASSERT_UEQ(0, n);
  fx_close(&f);
}

static void test_vector_36_truncate_error(void) {
  fixture f;
  store_cursor c;
  char msg[2048 + 32];

  memset(msg, 'a', 2047);
  snprintf(msg + 2047, sizeof msg - 2047, "\xe7\x95\x8c trailing");
  fx_open(&f);
  ASSERT_RC(0, record(f.s, K, msg, T0, &c));
  ASSERT_UEQ(2047, strlen(c.last_error));
  ASSERT_MEM_EQ(msg, 2047, c.last_error, strlen(c.last_error));
  store_cursor_free(&c);
  /* Exactly 2048 bytes are kept as they are. */
  memset(msg, 'b', 2048);
  msg[2048] = '\0';
  ASSERT_RC(0, record(f.s, K, msg, T0, &c));
  ASSERT_UEQ(2048, strlen(c.last_error));
  store_cursor_free(&c);
  fx_close(&f);
}

/* ---- Position (section 11) --------------------------------------------- */

static void test_position_update_replaces(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0, "p1", NULL));
  expect_stored(f.s, K, 1, "d1", T0, "", T0, "p1");
  ASSERT_RC(0, advance(f.s, K, 2, "d2", T0, T0, "p2", NULL));
  expect_stored(f.s, K, 2, "d2", T0, "", T0, "p2");
  /* The update path replaces the position even with none. */
  ASSERT_RC(0, advance(f.s, K, 3, "d3", T0, T0, NULL, NULL));
  expect_stored(f.s, K, 3, "d3", T0, "", T0, "");
  fx_close(&f);
}

static void test_position_refresh_keeps_stored(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0, "p1", NULL));
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0 + MINUTE, "other", NULL));
  expect_stored(f.s, K, 1, "d1", T0, "", T0 + MINUTE, "p1");
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0 + MINUTE, "", NULL));
  expect_stored(f.s, K, 1, "d1", T0, "", T0 + MINUTE, "p1");
  fx_close(&f);
}

static void test_position_refresh_fills_empty(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0, NULL, NULL));
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0, "p1", NULL));
  expect_stored(f.s, K, 1, "d1", T0, "", T0, "p1");
  fx_close(&f);
}

static void test_position_reset_sets(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 9, "d9", T0, T0, "p9", NULL));
  ASSERT_RC(0, reset(f.s, K, 4, NULL, 0, "p4", "rewind", T0, &c));
  expect_row(&c, 4, "", 0, "", T0, "p4");
  store_cursor_free(&c);
  /* NULL is "". */
  ASSERT_RC(0, reset(f.s, K, 4, NULL, 0, NULL, "rewind", T0, &c));
  expect_row(&c, 4, "", 0, "", T0, "");
  store_cursor_free(&c);
  fx_close(&f);
}

static void test_position_record_error_never_moves(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  ASSERT_RC(0, record(f.s, K, "first", T0, &c));
  ASSERT_STR_EQ("", c.position);
  store_cursor_free(&c);
  ASSERT_RC(0, advance(f.s, K, 2, "d2", T0, T0, "p2", NULL));
  ASSERT_RC(0, record(f.s, K, "second", T0 + MINUTE, NULL));
  expect_stored(f.s, K, 2, "d2", T0, "second", T0 + MINUTE, "p2");
  fx_close(&f);
}

static void test_position_stored_verbatim(void) {
  fixture f;
  const char *pos = "  2026-01-02 10:00:00.000Z|r1a2b3c4d5e6f7g \t";

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 1, "d1", T0, T0, pos, NULL));
  expect_stored(f.s, K, 1, "d1", T0, "", T0, pos);
  fx_close(&f);
}

/* ---- Bounds and trimming (section 11) ---------------------------------- */

static void test_bounds_key_fields(void) {
  char big[STORE_MAX_KEY_FIELD + 2];
  fixture f;

  memset(big, 'k', sizeof big - 1);
  big[sizeof big - 1] = '\0'; /* 257 bytes */
  fx_open(&f);
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3(big, "s", ""), 1, "d", T0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: consumer id is longer than 256 bytes", err);
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3("c", big, ""), 1, "d", T0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: stream name is longer than 256 bytes", err);
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3("c", "s", big), 1, "d", T0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: subject id is longer than 256 bytes", err);
  /* The key is checked before the sequence. */
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3(big, "s", ""), 0, "d", T0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: consumer id is longer than 256 bytes", err);
  ASSERT_RC(STORE_EINVAL, store_get(f.s, &(store_key){ big, "s", "" }, NULL,
                                    err, sizeof err));
  /* 256 bytes fit, and so do surrounding spaces, which are trimmed first. */
  big[STORE_MAX_KEY_FIELD] = '\0';
  ASSERT_RC(0, advance(f.s, key3(big, big, big), 1, "d", T0, T0, NULL, NULL));
  fx_close(&f);
}

static void test_bounds_key_utf8(void) {
  static const char *const bad[] = {
    "c\xff",            /* not UTF-8 at all */
    "\xc3\x28",         /* a lead byte without its continuation */
    "\xc0\xaf",         /* overlong "/" */
    "\xed\xa0\x80",     /* a UTF-16 surrogate */
    "\xf4\x90\x80\x80", /* past U+10FFFF */
    "ab\xe7\x95",       /* cut short */
  };
  fixture f;
  size_t i;

  fx_open(&f);
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ASSERT_RC(STORE_EINVAL,
              advance(f.s, key3(bad[i], "s", ""), 1, "d", T0, T0, NULL, NULL));
    ASSERT_STR_EQ("invalid cursor: consumer id is not valid UTF-8", err);
  }
  ASSERT_RC(STORE_EINVAL,
            advance(f.s, key3("c", "s", "\xff"), 1, "d", T0, T0, NULL, NULL));
  ASSERT_STR_EQ("invalid cursor: subject id is not valid UTF-8", err);
  /* Valid multi-byte text is fine. */
  ASSERT_RC(0, advance(f.s, key3("\xe7\x95\x8c-\xf0\x9f\x98\x80", "s", ""), 1,
                       "d", T0, T0, NULL, NULL));
  fx_close(&f);
}

static void test_bounds_position(void) {
  char pos[STORE_MAX_POSITION + 2];
  fixture f;

  memset(pos, 'p', sizeof pos - 1);
  pos[sizeof pos - 1] = '\0'; /* 4097 bytes */
  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, advance(f.s, K, 1, "d", T0, T0, pos, NULL));
  ASSERT_STR_EQ("invalid cursor: position is longer than 4096 bytes", err);
  ASSERT_RC(STORE_EINVAL, reset(f.s, K, 1, NULL, 0, pos, "r", T0, NULL));
  ASSERT_STR_EQ("invalid cursor: position is longer than 4096 bytes", err);
  expect_missing(f.s, K);
  pos[STORE_MAX_POSITION] = '\0';
  ASSERT_RC(0, advance(f.s, K, 1, "d", T0, T0, pos, NULL));
  fx_close(&f);
}

static void test_bounds_reason(void) {
  char reason[STORE_MAX_REASON + 2];
  fixture f;

  memset(reason, 'r', sizeof reason - 1);
  reason[sizeof reason - 1] = '\0'; /* 1025 bytes */
  fx_open(&f);
  ASSERT_RC(STORE_EINVAL, reset(f.s, K, 1, NULL, 0, NULL, reason, T0, NULL));
  ASSERT_STR_EQ("invalid cursor: reset reason is longer than 1024 bytes", err);
  expect_missing(f.s, K);
  reason[STORE_MAX_REASON] = '\0';
  ASSERT_RC(0, reset(f.s, K, 1, NULL, 0, NULL, reason, T0, NULL));
  fx_close(&f);
}

static void test_trim_go_parity(void) {
  fixture f;
  store_cursor c;

  fx_open(&f);
  /* U+3000, U+2028, \v, U+0085 before; U+00A0, U+1680, U+2029, U+202F,
   * U+205F, \f, U+2000 and U+200A after. */
  ASSERT_RC(0, advance(f.s,
                       key3("\xe3\x80\x80\xe2\x80\xa8\v\xc2\x85"
                            "c"
                            "\xc2\xa0\xe1\x9a\x80\xe2\x80\xa9\xe2\x80\xaf"
                            "\xe2\x81\x9f\f\xe2\x80\x80\xe2\x80\x8a",
                            "s", ""),
                       1, "d", T0, T0, NULL, &c));
  ASSERT_STR_EQ("c", c.consumer_id);
  store_cursor_free(&c);
  /* Not spaces for Go: U+200B (zero width space), U+180E (Mongolian vowel
   * separator) and U+FEFF (byte order mark). */
  ASSERT_RC(0, advance(f.s,
                       key3("\xe2\x80\x8b"
                            "c2",
                            "\xe1\xa0\x8e"
                            "s",
                            "x\xef\xbb\xbf"),
                       1, "d", T0, T0, NULL, &c));
  ASSERT_STR_EQ("\xe2\x80\x8b"
                "c2",
                c.consumer_id);
  ASSERT_STR_EQ("\xe1\xa0\x8e"
                "s",
                c.stream_name);
  ASSERT_STR_EQ("x\xef\xbb\xbf", c.subject_id);
  store_cursor_free(&c);
  /* Inner spaces stay; an invalid byte stops the trim. */
  ASSERT_RC(0, advance(f.s, key3("a b", "s", " \t"), 1, "\x85 d \xc2\x85", T0,
                       T0, NULL, &c));
  ASSERT_STR_EQ("a b", c.consumer_id);
  ASSERT_STR_EQ("", c.subject_id);
  ASSERT_STR_EQ("\x85 d", c.last_delivery_id);
  store_cursor_free(&c);
  fx_close(&f);
}

/* Messages quote ids; a byte that is not UTF-8 is escaped, so the message
 * stays valid UTF-8 for the log and the API's JSON, and UTF-8 stays as it
 * is. */
static void test_message_quotes_invalid_utf8(void) {
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 5, "d\xc3\xbc", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_ENONMONO,
            advance(f.s, K, 5, "\xff\xc3\xbc\xc3", T0, T0, NULL, NULL));
  ASSERT_STR_EQ("non-monotonic cursor advance: stored seq 5 delivery "
                "\"d\xc3\xbc\", requested seq 5 delivery "
                "\"\\xff\xc3\xbc\\xc3\" (fork)",
                err);
  fx_close(&f);
}

/* ---- Reset audit -------------------------------------------------------- */

static void test_reset_audit_recorded(void) {
  fixture f;
  store_reset_record *v;
  size_t n;

  fx_open(&f);
  ASSERT_RC(0, reset(f.s, K, 5, NULL, 0, "p5", " first reason ", T0, NULL));
  ASSERT_RC(0, advance(f.s, K, 9, "d9", T0, T0, "p9", NULL));
  ASSERT_RC(
      0, reset(f.s, K, 2, NULL, 0, "p2", "operator replay", T0 + MINUTE, NULL));
  ASSERT_RC(
      0, reset(f.s, key3("other", "s", ""), 1, NULL, 0, NULL, "o", T0, NULL));

  ASSERT_RC(0, store_list_resets(f.s, &K, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(2, n);
  /* Newest first. */
  ASSERT_STR_EQ("c", v[0].consumer_id);
  ASSERT_STR_EQ("s", v[0].stream_name);
  ASSERT_STR_EQ("", v[0].subject_id);
  ASSERT_EQ(9, v[0].old_sequence);
  ASSERT_EQ(2, v[0].new_sequence);
  ASSERT_STR_EQ("p9", v[0].old_position);
  ASSERT_STR_EQ("p2", v[0].new_position);
  ASSERT_STR_EQ("operator replay", v[0].reason);
  ASSERT_EQ(T0 + MINUTE, v[0].at);
  /* The reset that created the cursor starts from nothing. */
  ASSERT_EQ(0, v[1].old_sequence);
  ASSERT_EQ(5, v[1].new_sequence);
  ASSERT_STR_EQ("", v[1].old_position);
  ASSERT_STR_EQ("p5", v[1].new_position);
  ASSERT_STR_EQ("first reason", v[1].reason);
  ASSERT_EQ(T0, v[1].at);
  store_reset_records_free(v, n);

  ASSERT_RC(0, store_list_resets(f.s, NULL, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(3, n);
  ASSERT_STR_EQ("other", v[0].consumer_id);
  store_reset_records_free(v, n);
  ASSERT_RC(0, store_list_resets(f.s, NULL, 1, &v, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  store_reset_records_free(v, n);
  ASSERT_RC(0, store_list_resets(f.s, &(store_key){ "none", "s", NULL }, 0, &v,
                                 &n, err, sizeof err));
  ASSERT_UEQ(0, n);
  ASSERT(v == NULL);
  /* A refused reset records nothing. */
  ASSERT_RC(STORE_EREASON, reset(f.s, K, 1, NULL, 0, NULL, " ", T0, NULL));
  ASSERT_RC(0, store_list_resets(f.s, &K, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(2, n);
  store_reset_records_free(v, n);
  fx_close(&f);
}

/* ---- Times -------------------------------------------------------------- */

static void expect_time(int64_t ns, const char *text) {
  char buf[64];
  int64_t back = 0;

  store_format_time(ns, buf, sizeof buf);
  ASSERT_STR_EQ(text, buf);
  ASSERT_EQ(0, store_parse_time(text, &back));
  ASSERT_EQ(ns, back);
}

static void test_time_format_round_trip(void) {
  static const char *const bad[] = {
    "2026-05-05T15:00:00Z",
    "2026-05-05T15:00:00.00000000Z",
    "2026-05-05T15:00:00.0000000000Z",
    "2026-05-05T15:00:00.000000000+01:00",
    "2026-05-05 15:00:00.000000000Z",
    "2026-02-29T00:00:00.000000000Z",
    "2026-13-01T00:00:00.000000000Z",
    "2026-00-01T00:00:00.000000000Z",
    "2026-05-05T24:00:00.000000000Z",
    "2026-05-05T15:60:00.000000000Z",
    "2026-05-05T15:00:60.000000000Z",
    "2026-05-05T15:00:00.00000000aZ",
    "9999-12-31T23:59:59.999999999Z", /* past int64 nanoseconds */
    "",
  };
  int64_t ns;
  size_t i;

  expect_time(T0, "2026-05-05T15:00:00.000000000Z");
  expect_time(T0 + 1, "2026-05-05T15:00:00.000000001Z");
  expect_time(T0 - MINUTE + 123456789, "2026-05-05T14:59:00.123456789Z");
  expect_time(0, "1970-01-01T00:00:00.000000000Z");
  expect_time(-1, "1969-12-31T23:59:59.999999999Z");
  expect_time(INT64_C(1709164800) * SEC, "2024-02-29T00:00:00.000000000Z");
  expect_time(INT64_MAX, "2262-04-11T23:47:16.854775807Z");
  expect_time(INT64_MIN, "1677-09-21T00:12:43.145224192Z");
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ns = 42;
    ASSERT_EQ(STORE_EINVAL, store_parse_time(bad[i], &ns));
    ASSERT_EQ(42, ns);
  }
  ASSERT_EQ(STORE_EINVAL, store_parse_time(NULL, &ns));
}

/* The stored text is the 9-digit layout, so text order is time order. */
static void test_time_stored_as_text(void) {
  fixture f;
  sqlite3 *db;
  sqlite3_stmt *st;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 1, "d", T0 + 5, T0, NULL, NULL));
  ASSERT_EQ(SQLITE_OK,
            sqlite3_open_v2(f.path, &db, SQLITE_OPEN_READONLY, NULL));
  ASSERT_EQ(SQLITE_OK,
            sqlite3_prepare_v2(db,
                               "SELECT last_delivered_at, updated_at, "
                               "typeof(last_delivered_at) FROM cursors",
                               -1, &st, NULL));
  ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
  ASSERT_STR_EQ("2026-05-05T15:00:00.000000005Z",
                (const char *)sqlite3_column_text(st, 0));
  ASSERT_STR_EQ("2026-05-05T15:00:00.000000000Z",
                (const char *)sqlite3_column_text(st, 1));
  ASSERT_STR_EQ("text", (const char *)sqlite3_column_text(st, 2));
  sqlite3_finalize(st);
  sqlite3_close(db);
  fx_close(&f);
}

static int64_t wall_ns(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * SEC + ts.tv_nsec;
}

static void test_time_zero_now_is_clock(void) {
  fixture f;
  store_cursor c;
  int64_t before, after;

  fx_open(&f);
  before = wall_ns();
  ASSERT_RC(0, advance(f.s, K, 1, "d", 0, 0, NULL, &c));
  after = wall_ns();
  ASSERT(c.updated_at >= before && c.updated_at <= after);
  ASSERT_EQ(c.updated_at, c.last_delivered_at);
  store_cursor_free(&c);
  ASSERT_RC(0, record(f.s, K, "e", 0, &c));
  ASSERT(c.updated_at >= after);
  store_cursor_free(&c);
  fx_close(&f);
}

/* ---- The file ----------------------------------------------------------- */

static void test_persists_across_reopen(void) {
  fixture f;
  store_reset_record *v;
  size_t n;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 3, "d3", T0, T0, "p3", NULL));
  ASSERT_RC(0, record(f.s, K, "flaky", T0 + MINUTE, NULL));
  ASSERT_RC(0, reset(f.s, key3("r", "s", "x"), 8, "d8", T0, "p8", "why",
                     T0 + HOUR, NULL));
  store_close(f.s);
  f.s = NULL;
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  expect_stored(f.s, K, 3, "d3", T0, "flaky", T0 + MINUTE, "p3");
  expect_stored(f.s, key3("r", "s", "x"), 8, "d8", T0, "", T0 + HOUR, "p8");
  ASSERT_RC(0, store_list_resets(f.s, NULL, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  ASSERT_STR_EQ("why", v[0].reason);
  store_reset_records_free(v, n);
  fx_close(&f);
}

static void test_open_creates_dirs_owner_only(void) {
  char dir[PATH_MAX], path[PATH_BUF], sub[PATH_BUF + 8];
  struct stat st;
  store *s = NULL;

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(path, sizeof path, "%s/a/b/state.db", dir);
  ASSERT_RC(0, store_open(path, &s, err, sizeof err));
  ASSERT_EQ(0, stat(path, &st));
  ASSERT_EQ(0600, st.st_mode & 0777);
  snprintf(sub, sizeof sub, "%s/a", dir);
  ASSERT_EQ(0, stat(sub, &st));
  ASSERT(S_ISDIR(st.st_mode));
  ASSERT_EQ(0700, st.st_mode & 0777);
  snprintf(sub, sizeof sub, "%s/a/b", dir);
  ASSERT_EQ(0, stat(sub, &st));
  ASSERT_EQ(0700, st.st_mode & 0777);
  /* SQLite gives the WAL the main file's mode. */
  snprintf(sub, sizeof sub, "%s-wal", path);
  ASSERT_EQ(0, stat(sub, &st));
  ASSERT_EQ(0600, st.st_mode & 0777);
  store_close(s);
  rmtree(dir);
}

static int64_t pragma_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st;
  int64_t v;

  ASSERT_EQ(SQLITE_OK, sqlite3_prepare_v2(db, sql, -1, &st, NULL));
  ASSERT_EQ(SQLITE_ROW, sqlite3_step(st));
  v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static void test_migrate_empty_file_to_v1(void) {
  fixture f;
  sqlite3 *db;
  char *header;
  size_t len;

  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  test_write_file(f.path, "", 0);
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  store_close(f.s);
  f.s = NULL;

  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(3, pragma_int(db, "PRAGMA user_version"));
  ASSERT_EQ(1, pragma_int(db, "SELECT count(*) FROM sqlite_master WHERE "
                              "type = 'table' AND name = 'cursors'"));
  ASSERT_EQ(1, pragma_int(db, "SELECT count(*) FROM sqlite_master WHERE "
                              "type = 'table' AND name = 'cursor_resets'"));
  ASSERT_EQ(1, pragma_int(db, "SELECT count(*) FROM sqlite_master WHERE name "
                              "= 'cursors_stream_sequence_idx' AND sql LIKE "
                              "'%WHERE last_sequence > 0'"));
  ASSERT_EQ(1, pragma_int(db, "SELECT count(*) FROM pragma_table_info("
                              "'cursors') WHERE name = 'position' AND "
                              "\"notnull\" = 1 AND dflt_value = ''''''"));
  ASSERT_EQ(3, pragma_int(db, "SELECT count(*) FROM pragma_table_info("
                              "'cursors') WHERE pk > 0"));
  /* The CHECKs of section 7 hold for writers other than the store. */
  ASSERT_EQ(SQLITE_CONSTRAINT,
            sqlite3_exec(db,
                         "INSERT INTO cursors (consumer_id, stream_name, "
                         "updated_at) VALUES (' ', 's', 'x')",
                         NULL, NULL, NULL));
  ASSERT_EQ(SQLITE_CONSTRAINT,
            sqlite3_exec(db,
                         "INSERT INTO cursors (consumer_id, stream_name, "
                         "last_sequence, updated_at) VALUES ('c', 's', -1, "
                         "'x')",
                         NULL, NULL, NULL));
  sqlite3_close(db);
  /* Bytes 18 and 19 of the header are 2 in WAL mode. */
  header = test_read_file(f.path, &len);
  ASSERT(header != NULL && len >= 100);
  ASSERT_EQ(2, header[18]);
  ASSERT_EQ(2, header[19]);
  free(header);

  /* Reopening a current file migrates nothing and keeps its data. */
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  ASSERT_RC(0, advance(f.s, K, 1, "d", T0, T0, NULL, NULL));
  fx_close(&f);
}

static void make_db(const char *path, const char *sql) {
  sqlite3 *db;

  ASSERT_EQ(SQLITE_OK, sqlite3_open(path, &db));
  ASSERT_EQ(SQLITE_OK, sqlite3_exec(db, sql, NULL, NULL, NULL));
  ASSERT_EQ(SQLITE_OK, sqlite3_close(db));
}

static void test_migrate_refuses_newer_schema(void) {
  char want[PATH_BUF + 128];
  fixture f;

  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  make_db(f.path, "CREATE TABLE future (x); PRAGMA user_version = 99");
  f.s = NULL;
  ASSERT_RC(STORE_ECORRUPT, store_open(f.path, &f.s, err, sizeof err));
  ASSERT(f.s == NULL);
  snprintf(want, sizeof want,
           "state file %s was written by a newer tether (schema version 99; "
           "this build knows 3)",
           f.path);
  ASSERT_STR_EQ(want, err);
  fx_close(&f);
}

static void test_migrate_refuses_foreign_database(void) {
  fixture f;

  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  make_db(f.path, "CREATE TABLE cursors (x)");
  f.s = NULL;
  ASSERT_RC(STORE_ECORRUPT, store_open(f.path, &f.s, err, sizeof err));
  ASSERT_CONTAINS(err, f.path);
  ASSERT_CONTAINS(err, "tether did not write");
  fx_close(&f);
}

static void test_open_garbage_file_untouched(void) {
  char garbage[8192], wal[PATH_BUF + 8];
  fixture f;
  size_t i, len;
  char *after;

  for (i = 0; i < sizeof garbage; i++)
    garbage[i] = (char)(i % 64 == 63 ? '\n' : 'a' + (char)(i % 26));
  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  test_write_file(f.path, garbage, sizeof garbage);
  f.s = NULL;
  ASSERT_RC(STORE_ECORRUPT, store_open(f.path, &f.s, err, sizeof err));
  ASSERT_CONTAINS(err, f.path);
  ASSERT_CONTAINS(err, "not a tether state file");
  ASSERT_CONTAINS(err,
                  "move it aside to start from scratch, or restore a backup");
  after = test_read_file(f.path, &len);
  ASSERT(after != NULL);
  ASSERT_MEM_EQ(garbage, sizeof garbage, after, len);
  free(after);
  snprintf(wal, sizeof wal, "%s-wal", f.path);
  ASSERT_EQ(-1, access(wal, F_OK));
  /* And it stays refused. */
  ASSERT_RC(STORE_ECORRUPT, store_open(f.path, &f.s, err, sizeof err));
  fx_close(&f);
}

static void test_open_truncated_db_detected(void) {
  char pos[1001], id[32];
  fixture f;
  struct stat st;
  int i;

  memset(pos, 'p', sizeof pos - 1);
  pos[sizeof pos - 1] = '\0';
  fx_open(&f);
  for (i = 0; i < 300; i++) {
    snprintf(id, sizeof id, "consumer-%d", i);
    ASSERT_RC(0, advance(f.s, key3(id, "s", ""), 1, "d", T0, T0, pos, NULL));
  }
  store_close(f.s);
  f.s = NULL;
  ASSERT_EQ(0, stat(f.path, &st));
  ASSERT(st.st_size > 100 * 1024);
  ASSERT_EQ(0, truncate(f.path, st.st_size / 2));
  ASSERT_RC(STORE_ECORRUPT, store_open(f.path, &f.s, err, sizeof err));
  ASSERT(f.s == NULL);
  ASSERT_CONTAINS(err, f.path);
  ASSERT_CONTAINS(err, "damaged");
  ASSERT_CONTAINS(err, "restore a backup");
  fx_close(&f);
}

static void test_open_lock_contention(void) {
  char want[PATH_BUF + 128];
  fixture f;
  store *second = NULL;

  fx_open(&f);
  ASSERT_RC(STORE_EBUSY, store_open(f.path, &second, err, sizeof err));
  ASSERT(second == NULL);
  snprintf(want, sizeof want,
           "state file %s is in use by another tether (pid %ld)", f.path,
           (long)getpid());
  ASSERT_STR_EQ(want, err);
  /* The failed open did not steal or drop the first one's lock. */
  ASSERT_RC(0, advance(f.s, K, 1, "d", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_EBUSY, store_open(f.path, &second, err, sizeof err));
  store_close(f.s);
  f.s = NULL;
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  expect_stored(f.s, K, 1, "d", T0, "", T0, "");
  fx_close(&f);
}

static void test_open_unwritable_location(void) {
  char dir[PATH_MAX], file[PATH_BUF], path[PATH_BUF + 32];
  store *s = NULL;

  /* Tests may run as root, where modes do not stop writes; a regular file
   * where a directory should be, or a directory where the file should be,
   * stops everyone. */
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(file, sizeof file, "%s/plain", dir);
  test_write_file(file, "x", 1);
  snprintf(path, sizeof path, "%s/sub/state.db", file);
  ASSERT_RC(STORE_EIO, store_open(path, &s, err, sizeof err));
  ASSERT(s == NULL);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "Not a directory");

  snprintf(path, sizeof path, "%s/state.db", dir);
  ASSERT_EQ(0, mkdir(path, 0700));
  ASSERT_RC(STORE_EIO, store_open(path, &s, err, sizeof err));
  ASSERT(s == NULL);
  ASSERT_CONTAINS(err, path);
  ASSERT_CONTAINS(err, "Is a directory");
  rmtree(dir);
}

static void test_open_bad_arguments(void) {
  store *s = NULL;

  ASSERT_RC(UV_EINVAL, store_open("", &s, err, sizeof err));
  ASSERT_RC(UV_EINVAL, store_open(NULL, &s, err, sizeof err));
  ASSERT(s == NULL);
  store_close(NULL);
}

static void test_strerror_texts(void) {
  ASSERT_STR_EQ("cursor not found", store_strerror(STORE_ENOTFOUND));
  ASSERT_STR_EQ("invalid cursor", store_strerror(STORE_EINVAL));
  ASSERT_STR_EQ("non-monotonic cursor advance", store_strerror(STORE_ENONMONO));
  ASSERT_STR_EQ("reset reason required", store_strerror(STORE_EREASON));
  ASSERT(strlen(store_strerror(STORE_EIO)) > 0);
  ASSERT(strlen(store_strerror(STORE_EFULL)) > 0);
  ASSERT(strlen(store_strerror(STORE_ECORRUPT)) > 0);
  ASSERT(strlen(store_strerror(STORE_EBUSY)) > 0);
  ASSERT_STR_EQ("cursor already exists", store_strerror(STORE_EEXIST));
  ASSERT_STR_EQ(uv_strerror(UV_EBUSY), store_strerror(UV_EBUSY));
}

static void test_list_count_only(void) {
  fixture f;
  size_t n = 0;

  fx_open(&f);
  seed_list(f.s);
  ASSERT_RC(0, store_list(f.s, NULL, NULL, &n, err, sizeof err));
  ASSERT_UEQ(6, n);
  fx_close(&f);
}

/* ---- Group commit ------------------------------------------------------- */

#define MAX_ITEMS 128

typedef struct commit_result {
  int calls;
  int status;
  char msg[512];
  size_t n;
  int item_status[MAX_ITEMS];
  char item_msg[MAX_ITEMS][256];
  /* Set to start another commit from inside the callback. */
  store *again;
  uv_loop_t *loop;
  int again_rc;
  uint64_t done_at;
} commit_result;

static void on_commit(void *data, int status, const char *msg,
                      const int *item_status, const char *const *item_msg,
                      size_t n) {
  commit_result *r = data;
  size_t i;

  r->calls++;
  r->status = status;
  r->done_at = uv_hrtime();
  snprintf(r->msg, sizeof r->msg, "%s", msg != NULL ? msg : "(null)");
  r->n = n;
  for (i = 0; i < n && i < MAX_ITEMS; i++) {
    r->item_status[i] = item_status[i];
    snprintf(r->item_msg[i], sizeof r->item_msg[i], "%s", item_msg[i]);
  }
  if (r->again != NULL)
    r->again_rc =
        store_commit_start(r->again, r->loop, NULL, 0, NULL, 0, on_commit, r);
  r->again = NULL;
}

static void test_commit_batch_with_nonmonotonic_item(void) {
  fixture f;
  uv_loop_t loop;
  commit_result res;
  store_advance reqs[3] = {
    { { "c1", "s", "" }, 1, "d1", "p1", T0, T0 + MINUTE },
    { { "c2", "s", "" }, 5, "other", "p-other", 0, T0 + MINUTE },
    { { "c3", "s", "x" }, 3, "d3", NULL, 0, T0 + MINUTE },
  };

  memset(&res, 0, sizeof res);
  fx_open(&f);
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_RC(0, advance(f.s, key3("c2", "s", ""), 5, "d5", T0, T0, "p5", NULL));
  ASSERT_EQ(0,
            store_commit_start(f.s, &loop, reqs, 3, NULL, 0, on_commit, &res));
  /* One commit at a time. */
  ASSERT_EQ(UV_EBUSY,
            store_commit_start(f.s, &loop, reqs, 3, NULL, 0, on_commit, &res));
  ASSERT_EQ(0, res.calls);
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, res.calls);
  ASSERT_EQ(0, res.status);
  ASSERT_UEQ(3, res.n);
  ASSERT_EQ(0, res.item_status[0]);
  ASSERT_EQ(STORE_ENONMONO, res.item_status[1]);
  ASSERT_EQ(0, res.item_status[2]);
  ASSERT_STR_EQ("", res.item_msg[0]);
  ASSERT_STR_EQ("non-monotonic cursor advance: stored seq 5 delivery \"d5\", "
                "requested seq 5 delivery \"other\" (fork)",
                res.item_msg[1]);
  ASSERT_STR_EQ("", res.item_msg[2]);
  expect_stored(f.s, key3("c1", "s", ""), 1, "d1", T0, "", T0 + MINUTE, "p1");
  expect_stored(f.s, key3("c2", "s", ""), 5, "d5", T0, "", T0, "p5");
  expect_stored(f.s, key3("c3", "s", "x"), 3, "d3", T0 + MINUTE, "",
                T0 + MINUTE, "");
  /* The next commit may start once the callback ran. */
  res.again = NULL;
  ASSERT_EQ(0,
            store_commit_start(f.s, &loop, NULL, 0, NULL, 0, on_commit, &res));
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(2, res.calls);
  ASSERT_EQ(0, res.status);
  ASSERT_UEQ(0, res.n);
  ASSERT_EQ(0, uv_loop_close(&loop));
  fx_close(&f);
}

static void test_commit_invalid_item_and_copies(void) {
  char consumer[16] = "copy-me", position[16] = "pos-1";
  fixture f;
  uv_loop_t loop;
  commit_result res;
  store_advance reqs[2];

  memset(&res, 0, sizeof res);
  memset(reqs, 0, sizeof reqs);
  reqs[0] =
      (store_advance){ { consumer, "s", NULL }, 1, NULL, position, T0, T0 };
  reqs[1] = (store_advance){ { " ", "s", NULL }, 1, NULL, NULL, T0, T0 };
  fx_open(&f);
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0,
            store_commit_start(f.s, &loop, reqs, 2, NULL, 0, on_commit, &res));
  /* The requests were copied: the caller's buffers are free again. */
  memset(consumer, 'X', sizeof consumer - 1);
  memset(position, 'Y', sizeof position - 1);
  reqs[0].last_sequence = 99;
  /* The callback may start the next commit. */
  res.again = f.s;
  res.loop = &loop;
  res.again_rc = -1;
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(2, res.calls);
  ASSERT_EQ(0, res.again_rc);
  expect_stored(f.s, key3("copy-me", "s", ""), 1, "", T0, "", T0, "pos-1");
  ASSERT_EQ(0, uv_loop_close(&loop));
  fx_close(&f);
}

static void test_commit_item_errors_reported(void) {
  fixture f;
  uv_loop_t loop;
  commit_result res;
  store_advance reqs[2] = {
    { { " ", "s", NULL }, 1, NULL, NULL, T0, T0 },
    { { "c", "s", NULL }, 0, NULL, NULL, T0, T0 },
  };

  memset(&res, 0, sizeof res);
  fx_open(&f);
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0,
            store_commit_start(f.s, &loop, reqs, 2, NULL, 0, on_commit, &res));
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, res.calls);
  ASSERT_EQ(0, res.status);
  ASSERT_EQ(STORE_EINVAL, res.item_status[0]);
  ASSERT_STR_EQ("invalid cursor: consumer id is required", res.item_msg[0]);
  ASSERT_EQ(STORE_EINVAL, res.item_status[1]);
  ASSERT_STR_EQ("invalid cursor: last sequence must be greater than zero",
                res.item_msg[1]);
  ASSERT_EQ(UV_EINVAL,
            store_commit_start(f.s, &loop, NULL, 1, NULL, 0, on_commit, &res));
  ASSERT_EQ(UV_EINVAL,
            store_commit_start(f.s, &loop, reqs, 1, NULL, 0, NULL, &res));
  ASSERT_EQ(0, uv_loop_close(&loop));
  fx_close(&f);
}

/* A hundred cursors in one transaction, with a synchronous call racing the
 * worker for the store mutex. */
static void test_commit_hundred_cursors(void) {
  char names[100][16];
  store_advance reqs[100];
  fixture f;
  uv_loop_t loop;
  commit_result res;
  store_cursor *v;
  size_t n;
  uint64_t start;
  int i;

  memset(&res, 0, sizeof res);
  for (i = 0; i < 100; i++) {
    snprintf(names[i], sizeof names[i], "consumer-%03d", i);
    reqs[i] = (store_advance){
      { names[i], "events", NULL }, 10 + i, NULL, "position-token", 0, T0
    };
  }
  fx_open(&f);
  ASSERT_EQ(0, uv_loop_init(&loop));
  start = uv_hrtime();
  ASSERT_EQ(
      0, store_commit_start(f.s, &loop, reqs, 100, NULL, 0, on_commit, &res));
  ASSERT_RC(
      0, advance(f.s, key3("sync", "events", ""), 1, "d", T0, T0, NULL, NULL));
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, res.calls);
  ASSERT_EQ(0, res.status);
  printf("# commit of 100 cursors took %.3f ms\n",
         (double)(res.done_at - start) / 1e6);
  /* Generous, for sanitizer builds on a slow machine. */
  ASSERT(res.done_at - start < UINT64_C(2000000000));
  for (i = 0; i < 100; i++)
    ASSERT_EQ(0, res.item_status[i]);
  ASSERT_RC(0, store_list(f.s, &(store_query){ NULL, "events", NULL, 0 }, &v,
                          &n, err, sizeof err));
  ASSERT_UEQ(101, n);
  ASSERT_STR_EQ("consumer-000", v[0].consumer_id);
  ASSERT_EQ(10, v[0].last_sequence);
  ASSERT_STR_EQ("position-token", v[0].position);
  ASSERT_EQ(109, v[99].last_sequence);
  ASSERT_STR_EQ("sync", v[100].consumer_id);
  store_cursors_free(v, n);
  ASSERT_EQ(0, uv_loop_close(&loop));
  fx_close(&f);
}

/* A disk that fills up: every write reports STORE_EFULL, the group commit
 * reports it for the whole batch, and nothing half-written stays. Needs a
 * small tmpfs, so only as root. */
static void test_disk_full(void) {
  char dir[PATH_MAX], mnt[PATH_BUF], path[PATH_BUF + 32], id[32];
  char pos[STORE_MAX_POSITION + 1];
  store_advance reqs[10];
  char names[10][16];
  commit_result res;
  uv_loop_t loop;
  store *s = NULL;
  int i, rc = 0;

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(mnt, sizeof mnt, "%s/mnt", dir);
  ASSERT_EQ(0, mkdir(mnt, 0700));
  if (geteuid() != 0 || mount("tmpfs", mnt, "tmpfs", 0, "size=192k") != 0) {
    printf("# skip: cannot mount a small tmpfs (%s)\n",
           geteuid() != 0 ? "not root" : strerror(errno));
    ASSERT(1);
    rmtree(dir);
    return;
  }
  snprintf(path, sizeof path, "%s/state.db", mnt);
  memset(pos, 'p', sizeof pos - 1);
  pos[sizeof pos - 1] = '\0';
  ASSERT_RC(0, store_open(path, &s, err, sizeof err));
  for (i = 0; i < 1000; i++) {
    snprintf(id, sizeof id, "consumer-%d", i);
    if ((rc = advance(s, key3(id, "s", ""), 1, "d", T0, T0, pos, NULL)) != 0)
      break;
  }
  ASSERT_RC(STORE_EFULL, rc);
  ASSERT_CONTAINS(err, path);
  /* What committed before is still there and readable. */
  expect_stored(s, key3("consumer-0", "s", ""), 1, "d", T0, "", T0, pos);
  expect_missing(s, key3(id, "s", ""));

  memset(&res, 0, sizeof res);
  for (i = 0; i < 10; i++) {
    snprintf(names[i], sizeof names[i], "batch-%d", i);
    reqs[i] = (store_advance){ { names[i], "s", NULL }, 1, NULL, pos, 0, T0 };
  }
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0,
            store_commit_start(s, &loop, reqs, 10, NULL, 0, on_commit, &res));
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, res.calls);
  ASSERT_EQ(STORE_EFULL, res.status);
  ASSERT_CONTAINS(res.msg, path);
  ASSERT_EQ(STORE_EFULL, res.item_status[0]);
  ASSERT_EQ(STORE_EFULL, res.item_status[9]);
  expect_missing(s, key3("batch-0", "s", ""));
  ASSERT_EQ(0, uv_loop_close(&loop));
  store_close(s);
  ASSERT_EQ(0, umount(mnt));
  rmtree(dir);
}

/* A file written by schema 1 gains the consumer flags and keeps its rows. */
static void test_migrate_v1_to_v2(void) {
  char errbuf[512];
  store_cursor cur;
  bool paused = true;
  sqlite3 *db;
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 7, "d7", 0, T0, "p7", NULL));
  store_close(f.s);
  f.s = NULL;
  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(SQLITE_OK,
            sqlite3_exec(db,
                         "DROP TABLE consumer_flags; DROP TABLE "
                         "consumer_state; DROP TABLE journal; DROP TABLE "
                         "outbox; PRAGMA user_version = 1",
                         NULL, NULL, NULL));
  sqlite3_close(db);
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  memset(&cur, 0, sizeof cur);
  ASSERT_RC(0, store_get(f.s, &K, &cur, err, sizeof err));
  ASSERT_EQ(7, cur.last_sequence);
  ASSERT_STR_EQ("p7", cur.position);
  store_cursor_free(&cur);
  ASSERT_EQ(0, store_get_paused(f.s, "c", &paused, errbuf, sizeof errbuf));
  ASSERT(!paused);
  ASSERT_EQ(0, store_set_paused(f.s, "c", true, errbuf, sizeof errbuf));
  store_close(f.s);
  f.s = NULL;
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  ASSERT_EQ(0, store_get_paused(f.s, "c", &paused, errbuf, sizeof errbuf));
  ASSERT(paused);
  ASSERT_EQ(0, store_set_paused(f.s, "c", false, errbuf, sizeof errbuf));
  ASSERT_EQ(0, store_get_paused(f.s, "c", &paused, errbuf, sizeof errbuf));
  ASSERT(!paused);
  fx_close(&f);
}

/* A migration that fails (here: a table of the next version is there
 * already) is reported with its reason and rolled back; the file stays at
 * its version with its rows, and the store does not crash on the way. */
static void test_migrate_failure_rolls_back(void) {
  store_cursor cur;
  sqlite3 *db;
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 7, "d7", 0, T0, "p7", NULL));
  store_close(f.s);
  f.s = NULL;
  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(SQLITE_OK, sqlite3_exec(db,
                                    "DROP TABLE IF EXISTS consumer_state; "
                                    "DROP TABLE IF EXISTS journal; "
                                    "DROP TABLE IF EXISTS outbox; "
                                    "DELETE FROM consumer_flags; "
                                    "PRAGMA user_version = 1",
                                    NULL, NULL, NULL));
  sqlite3_close(db);
  ASSERT_RC(STORE_EIO, store_open(f.path, &f.s, err, sizeof err));
  ASSERT(f.s == NULL);
  ASSERT_CONTAINS(err, f.path);
  ASSERT_CONTAINS(err, "migrate schema to version 2: table consumer_flags "
                       "already exists");
  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(1, pragma_int(db, "PRAGMA user_version"));
  ASSERT_EQ(7, pragma_int(db, "SELECT last_sequence FROM cursors"));
  sqlite3_close(db);
  /* Curing the cause lets the next start migrate. */
  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(SQLITE_OK,
            sqlite3_exec(db, "DROP TABLE consumer_flags", NULL, NULL, NULL));
  sqlite3_close(db);
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  ASSERT_RC(0, store_get(f.s, &K, &cur, err, sizeof err));
  ASSERT_EQ(7, cur.last_sequence);
  store_cursor_free(&cur);
  fx_close(&f);
}

/* ---- A state file that vanishes while open ------------------------------ */

/* Runs one group commit of reqs and ops to its end. */
static void commit_ops(store *s, const store_advance *reqs, size_t n,
                       const store_op *ops, size_t n_ops, commit_result *res) {
  uv_loop_t loop;

  memset(res, 0, sizeof *res);
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0,
            store_commit_start(s, &loop, reqs, n, ops, n_ops, on_commit, res));
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(0, uv_loop_close(&loop));
  ASSERT_EQ(1, res->calls);
}

static void commit_now(store *s, const store_advance *reqs, size_t n,
                       commit_result *res) {
  commit_ops(s, reqs, n, NULL, 0, res);
}

static void remove_with_wal(const char *path) {
  char side[PATH_BUF + 8];

  ASSERT_EQ(0, unlink(path));
  snprintf(side, sizeof side, "%s-wal", path);
  unlink(side);
  snprintf(side, sizeof side, "%s-shm", path);
  unlink(side);
}

/* The seq of consumer's cursor in the file at path (-1 when none), read
 * with SQLite directly rather than through the store under test. */
static int64_t seq_in_file(const char *path, const char *consumer) {
  sqlite3 *db;
  sqlite3_stmt *st;
  int64_t seq = -1;

  ASSERT_EQ(SQLITE_OK, sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL));
  if (sqlite3_prepare_v2(db,
                         "SELECT last_sequence FROM cursors WHERE "
                         "consumer_id = ?1",
                         -1, &st, NULL) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, consumer, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
      seq = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  return seq;
}

/* The state file removed (with its -wal and -shm) under an open store: the
 * next commit notices, applies nothing, makes a new file with the schema
 * at the path and says so; the commit after it lands in the new file. */
static void test_commit_recreates_removed_file(void) {
  store_advance first = { { "c1", "s", "" }, 4, "c1:4", "p4", T0, T0 };
  store_advance next = { { "c2", "s", "" }, 9, "c2:9", "p9", T0, T0 };
  commit_result res;
  fixture f;
  bool paused = true;

  fx_open(&f);
  ASSERT(store_created(f.s));
  ASSERT_STR_EQ(f.path, store_path(f.s));
  commit_now(f.s, &first, 1, &res);
  ASSERT_EQ(0, res.status);
  remove_with_wal(f.path);

  commit_now(f.s, &next, 1, &res);
  ASSERT_EQ(STORE_ERECREATED, res.status);
  ASSERT_EQ(STORE_ERECREATED, res.item_status[0]);
  ASSERT_CONTAINS(res.msg, "was removed while tether ran; created it again");
  ASSERT_CONTAINS(res.msg, f.path);
  /* A new, empty state file with the schema: nothing of either commit. */
  ASSERT_EQ(0, access(f.path, F_OK));
  expect_missing(f.s, key3("c1", "s", ""));
  expect_missing(f.s, key3("c2", "s", ""));
  ASSERT_RC(0, store_get_paused(f.s, "c1", &paused, err, sizeof err));
  ASSERT(!paused);

  /* The caller commits what it holds; it is in the file at the path. */
  commit_now(f.s, &first, 1, &res);
  ASSERT_EQ(0, res.status);
  commit_now(f.s, &next, 1, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_EQ(4, seq_in_file(f.path, "c1"));
  ASSERT_EQ(9, seq_in_file(f.path, "c2"));
  store_close(f.s);
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  ASSERT(!store_created(f.s));
  expect_stored(f.s, key3("c2", "s", ""), 9, "c2:9", T0, "", T0, "p9");
  fx_close(&f);
}

/* A commit of nothing still checks the file: the last one at shutdown may
 * have nothing new to write. */
static void test_empty_commit_checks_the_file(void) {
  commit_result res;
  fixture f;

  fx_open(&f);
  commit_now(f.s, NULL, 0, &res);
  ASSERT_EQ(0, res.status);
  remove_with_wal(f.path);
  commit_now(f.s, NULL, 0, &res);
  ASSERT_EQ(STORE_ERECREATED, res.status);
  ASSERT_EQ(0, access(f.path, F_OK));
  commit_now(f.s, NULL, 0, &res);
  ASSERT_EQ(0, res.status);
  fx_close(&f);
}

/* Another file moved onto the path: same inode check, and that file is
 * moved aside with its name in the message, never deleted. */
static void test_commit_moves_replacing_file_aside(void) {
  store_advance adv = { { "c", "s", "" }, 2, "c:2", "p2", T0, T0 };
  char other[PATH_BUF + 16], aside[PATH_BUF + 16];
  commit_result res;
  fixture f;
  char *text;

  fx_open(&f);
  commit_now(f.s, &adv, 1, &res);
  ASSERT_EQ(0, res.status);
  snprintf(other, sizeof other, "%s.other", f.path);
  snprintf(aside, sizeof aside, "%s.replaced", f.path);
  test_write_file(other, "not ours\n", 9);
  ASSERT_EQ(0, rename(other, f.path));

  commit_now(f.s, &adv, 1, &res);
  ASSERT_EQ(STORE_ERECREATED, res.status);
  ASSERT_CONTAINS(res.msg, "was replaced by another file while tether ran");
  ASSERT_CONTAINS(res.msg, aside);
  text = test_read_file(aside, NULL);
  ASSERT_STR_EQ("not ours\n", text);
  free(text);
  expect_missing(f.s, K);
  commit_now(f.s, &adv, 1, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_EQ(2, seq_in_file(f.path, "c"));
  fx_close(&f);
}

/* Making the file again can fail (its directory is now a file): the store
 * says why, every call fails with a clear error meanwhile, and a later
 * commit makes it once that is cured. The lock, gone with the directory,
 * is taken again. */
static void test_recreate_fails_then_recovers(void) {
  char dir[PATH_BUF], path[PATH_BUF + 16], lock[PATH_BUF + 32];
  store_journal_entry *journal;
  store_outbox_entry *outbox;
  store_consumer *consumers, consumer;
  commit_result res;
  store_cursor cur;
  store *s = NULL, *second = NULL;
  bool paused;
  size_t n;

  snprintf(dir, sizeof dir, "%s/sub", test_tmpdir());
  snprintf(path, sizeof path, "%s/state.db", dir);
  snprintf(lock, sizeof lock, "%s.lock", path);
  ASSERT_RC(0, store_open(path, &s, err, sizeof err));
  rmtree(dir);
  test_write_file(dir, "x", 1);

  commit_now(s, NULL, 0, &res);
  ASSERT_EQ(STORE_EIO, res.status);
  ASSERT_CONTAINS(res.msg, "was removed while tether ran, and creating it "
                           "again failed: ");
  ASSERT_RC(STORE_EIO, store_get(s, &K, &cur, err, sizeof err));
  ASSERT_CONTAINS(err, "is not open: it was removed while tether ran");
  ASSERT_RC(STORE_EIO, store_list(s, NULL, NULL, NULL, err, sizeof err));
  ASSERT_RC(STORE_EIO, advance(s, K, 1, "d", T0, T0, NULL, NULL));
  ASSERT_RC(STORE_EIO, store_set_paused(s, "c", true, err, sizeof err));
  ASSERT_RC(STORE_EIO, store_get_paused(s, "c", &paused, err, sizeof err));
  ASSERT_RC(STORE_EIO, store_get_consumer(s, "c", &consumer, err, sizeof err));
  ASSERT_CONTAINS(err, "is not open: it was removed while tether ran");
  ASSERT_RC(STORE_EIO,
            store_list_consumers(s, &consumers, &n, err, sizeof err));
  ASSERT_RC(STORE_EIO,
            store_load_journal(s, "c", &journal, &n, err, sizeof err));
  ASSERT_RC(STORE_EIO, store_load_outbox(s, "c", &outbox, &n, err, sizeof err));
  ASSERT_RC(STORE_EIO, store_remove_cursor(s, &K, err, sizeof err));
  ASSERT_RC(STORE_EIO, store_remove_consumer(s, "c", err, sizeof err));
  ASSERT_RC(STORE_EIO, store_rekey_cursor(s, &K, &(store_key){ "c", "t", "" },
                                          err, sizeof err));
  ASSERT_CONTAINS(err, "is not open: it was removed while tether ran");

  ASSERT_EQ(0, unlink(dir));
  commit_now(s, NULL, 0, &res);
  ASSERT_EQ(STORE_ERECREATED, res.status);
  ASSERT_EQ(0, access(lock, F_OK));
  /* The new lock is held: a second tether is refused. */
  ASSERT_RC(STORE_EBUSY, store_open(path, &second, err, sizeof err));
  ASSERT_RC(STORE_ENOTFOUND, store_get(s, &K, &cur, err, sizeof err));
  store_close(s);
  rmtree(dir);
  *strrchr(dir, '/') = '\0';
  rmtree(dir);
}

/* A state file that exists, however empty, is not a first start. */
static void test_created_only_on_first_open(void) {
  fixture f;

  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  test_write_file(f.path, "", 0);
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  ASSERT(!store_created(f.s));
  fx_close(&f);
}

/* ---- Typed operations --------------------------------------------------- */

static store_op op_journal_put(const char *consumer, const char *key,
                               const char *value, int64_t now) {
  store_op op = { STORE_OP_JOURNAL_PUT,
                  { consumer, NULL, NULL },
                  key,
                  0,
                  value,
                  value != NULL ? strlen(value) : 0,
                  0,
                  now };
  return op;
}

static store_op op_journal_delete(const char *consumer, const char *key) {
  store_op op = {
    STORE_OP_JOURNAL_DELETE, { consumer, NULL, NULL }, key, 0, NULL, 0, 0, T0
  };
  return op;
}

static store_op op_outbox_put(const char *consumer, uint64_t id,
                              const char *value, int64_t now) {
  store_op op = { STORE_OP_OUTBOX_PUT,
                  { consumer, NULL, NULL },
                  NULL,
                  id,
                  value,
                  value != NULL ? strlen(value) : 0,
                  0,
                  now };
  return op;
}

static store_op op_outbox_delete(const char *consumer, uint64_t id) {
  store_op op = {
    STORE_OP_OUTBOX_DELETE, { consumer, NULL, NULL }, NULL, id, NULL, 0, 0, T0
  };
  return op;
}

static store_op op_cursor_put(store_key k, int64_t seq, const char *position,
                              int64_t now) {
  store_op op = { STORE_OP_CURSOR_PUT,
                  k,
                  NULL,
                  0,
                  position,
                  position != NULL ? strlen(position) : 0,
                  seq,
                  now };
  return op;
}

static store_op op_error(store_key k, const char *text, int64_t now) {
  store_op op = {
    STORE_OP_ERROR, k, NULL, 0, text, text != NULL ? strlen(text) : 0, 0, now
  };
  return op;
}

static store_op op_consumer(const char *consumer, const char *identity,
                            int64_t high_seq, int64_t now) {
  store_op op = { STORE_OP_CONSUMER,
                  { consumer, NULL, NULL },
                  identity,
                  0,
                  NULL,
                  0,
                  high_seq,
                  now };
  return op;
}

/* Asserts a consumer's journal: n entries, keys[i] holding values[i] (text),
 * updated at times[i]. */
static void expect_journal(store *s, const char *consumer, size_t n,
                           const char *const *keys, const char *const *values,
                           const int64_t *times) {
  store_journal_entry *v = NULL;
  size_t got = 99, i;

  ASSERT_RC(0, store_load_journal(s, consumer, &v, &got, err, sizeof err));
  ASSERT_UEQ(n, got);
  ASSERT(n > 0 || v == NULL);
  for (i = 0; i < n; i++) {
    ASSERT_STR_EQ(keys[i], v[i].key);
    ASSERT_MEM_EQ(values[i], strlen(values[i]), v[i].value, v[i].len);
    ASSERT_EQ('\0', ((char *)v[i].value)[v[i].len]);
    if (times != NULL)
      ASSERT_EQ(times[i], v[i].updated_at);
  }
  store_journal_free(v, got);
}

static void expect_outbox(store *s, const char *consumer, size_t n,
                          const uint64_t *ids, const char *const *values,
                          const int64_t *times) {
  store_outbox_entry *v = NULL;
  size_t got = 99, i;

  ASSERT_RC(0, store_load_outbox(s, consumer, &v, &got, err, sizeof err));
  ASSERT_UEQ(n, got);
  ASSERT(n > 0 || v == NULL);
  for (i = 0; i < n; i++) {
    ASSERT_UEQ(ids[i], v[i].id);
    ASSERT_MEM_EQ(values[i], strlen(values[i]), v[i].value, v[i].len);
    if (times != NULL)
      ASSERT_EQ(times[i], v[i].created_at);
  }
  store_outbox_free(v, got);
}

static void expect_consumer(store *s, const char *consumer,
                            const char *identity, int64_t high_seq,
                            int64_t updated) {
  store_consumer c;

  ASSERT_RC(0, store_get_consumer(s, consumer, &c, err, sizeof err));
  ASSERT_STR_EQ(identity, c.identity);
  ASSERT_EQ(high_seq, c.high_seq);
  if (updated != 0)
    ASSERT_EQ(updated, c.updated_at);
  store_consumer_free(&c);
}

/* Puts, replaces and deletes (an absent key too, which is no error), in a
 * commit of operations alone; keys are kept byte for byte and ordered
 * bytewise, values are bytes (a NUL inside, an empty one). */
static void test_ops_journal(void) {
  static const char *const keys1[] = { "a", "b" };
  static const char *const vals1[] = { "1", "2" };
  static const int64_t times1[] = { T0, T0 };
  store_op ops[6];
  store_journal_entry *v;
  commit_result res;
  fixture f;
  size_t n;

  fx_open(&f);
  ops[0] = op_journal_put("c", "b", "2", T0);
  ops[1] = op_journal_put("c", "a", "1", T0);
  ops[2] = op_journal_put("c", "c", "3", T0);
  ops[3] = op_journal_put("other", "a", "x", T0);
  ops[4] = op_journal_delete("c", "c");
  ops[5] = op_journal_delete("c", "absent");
  commit_ops(f.s, NULL, 0, ops, 6, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_STR_EQ("", res.msg);
  ASSERT_UEQ(0, res.n);
  expect_journal(f.s, "c", 2, keys1, vals1, times1);
  /* The consumer id is trimmed, as in a cursor key. */
  expect_journal(f.s, " c\t", 2, keys1, vals1, times1);

  ops[0] = op_journal_put("c", "a", NULL, T0 + MINUTE);
  ops[0].value = "\0x\0";
  ops[0].len = 3;
  ops[1] = op_journal_put("c", "e", NULL, T0);
  ops[2] = op_journal_put("c", " k", "spaced", T0);
  ops[3] = op_journal_put("c", "\xc3\xbc", "u", T0);
  commit_ops(f.s, NULL, 0, ops, 4, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_RC(0, store_load_journal(f.s, "c", &v, &n, err, sizeof err));
  ASSERT_UEQ(5, n);
  ASSERT_STR_EQ(" k", v[0].key);
  ASSERT_STR_EQ("a", v[1].key);
  ASSERT_MEM_EQ("\0x\0", 3, v[1].value, v[1].len);
  ASSERT_EQ(T0 + MINUTE, v[1].updated_at);
  ASSERT_STR_EQ("b", v[2].key);
  ASSERT_STR_EQ("e", v[3].key);
  ASSERT_UEQ(0, v[3].len);
  ASSERT(v[3].value != NULL);
  ASSERT_STR_EQ("\xc3\xbc", v[4].key);
  store_journal_free(v, n);
  expect_journal(f.s, "other", 1, (const char *const[]){ "a" },
                 (const char *const[]){ "x" }, NULL);
  expect_journal(f.s, "nobody", 0, NULL, NULL, NULL);
  fx_close(&f);
}

/* Ids in order; a put of an existing id replaces its value and keeps
 * created_at; the bounds of an id. */
static void test_ops_outbox(void) {
  static const uint64_t ids[] = { 0, 1, 3, INT64_MAX };
  static const char *const vals[] = { "zero", "one", "three", "max" };
  static const int64_t times[] = { T0, T0, T0, T0 };
  store_op ops[7];
  commit_result res;
  fixture f;

  fx_open(&f);
  ops[0] = op_outbox_put("c", 3, "three", T0);
  ops[1] = op_outbox_put("c", 1, "one", T0);
  ops[2] = op_outbox_put("c", 2, "two", T0);
  ops[3] = op_outbox_put("c", 0, "zero", T0);
  ops[4] = op_outbox_put("c", INT64_MAX, "max", T0);
  ops[5] = op_outbox_delete("c", 2);
  ops[6] = op_outbox_delete("c", 99);
  commit_ops(f.s, NULL, 0, ops, 7, &res);
  ASSERT_EQ(0, res.status);
  expect_outbox(f.s, "c", 4, ids, vals, times);

  ops[0] = op_outbox_put("c", 1, "uno", T0 + HOUR);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  ASSERT_EQ(0, res.status);
  expect_outbox(f.s, "c", 4, ids,
                (const char *const[]){ "zero", "uno", "three", "max" }, times);
  expect_outbox(f.s, "other", 0, NULL, NULL, NULL);
  fx_close(&f);
}

/* Extra cursor rows: the position as given, backwards too; the sequence
 * never decreases; delivered_at moves when the sequence grows; last_error
 * is cleared; the delivery id stays as it was. */
static void test_ops_cursor_put(void) {
  store_key a = { "c", "s", "scope-a" }, b = { "c", "s", "scope-b" };
  store_op ops[2];
  commit_result res;
  fixture f;

  fx_open(&f);
  ops[0] = op_cursor_put(a, 5, "pa5", T0);
  ops[1] = op_cursor_put(b, 0, NULL, T0);
  commit_ops(f.s, NULL, 0, ops, 2, &res);
  ASSERT_EQ(0, res.status);
  expect_stored(f.s, a, 5, "", T0, "", T0, "pa5");
  expect_stored(f.s, b, 0, "", 0, "", T0, "");
  ASSERT_RC(0, record(f.s, a, "boom", T0 + MINUTE, NULL));

  ops[0] = op_cursor_put(a, 3, "pa3-back", T0 + 2 * MINUTE);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  ASSERT_EQ(0, res.status);
  expect_stored(f.s, a, 5, "", T0, "", T0 + 2 * MINUTE, "pa3-back");

  ops[0] = op_cursor_put(a, 9, "pa9", T0 + 3 * MINUTE);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  expect_stored(f.s, a, 9, "", T0 + 3 * MINUTE, "", T0 + 3 * MINUTE, "pa9");

  ASSERT_RC(0, advance(f.s, a, 10, "d10", T0, T0, "adv", NULL));
  ops[0] = op_cursor_put(a, 10, "put", T0 + HOUR);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  expect_stored(f.s, a, 10, "d10", T0, "", T0 + HOUR, "put");
  /* The other scope was not touched. */
  expect_stored(f.s, b, 0, "", 0, "", T0, "");
  fx_close(&f);
}

/* The rules of store_record_error: trimmed, cut, position untouched, a
 * missing row made at seq 0. */
static void test_ops_error(void) {
  char long_error[STORE_MAX_ERROR + 100];
  store_cursor c;
  store_op ops[2];
  commit_result res;
  fixture f;

  memset(long_error, 'e', sizeof long_error - 1);
  long_error[sizeof long_error - 1] = '\0';
  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 4, "d4", T0, T0, "p4", NULL));
  ops[0] = op_error(K, "  disk on fire \n", T0 + MINUTE);
  ops[1] = op_error(key3("new", "s", ""), long_error, T0 + HOUR);
  commit_ops(f.s, NULL, 0, ops, 2, &res);
  ASSERT_EQ(0, res.status);
  expect_stored(f.s, K, 4, "d4", T0, "disk on fire", T0 + MINUTE, "p4");
  ASSERT_RC(
      0, store_get(f.s, &(store_key){ "new", "s", "" }, &c, err, sizeof err));
  ASSERT_EQ(0, c.last_sequence);
  ASSERT_STR_EQ("", c.position);
  ASSERT_UEQ(STORE_MAX_ERROR, strlen(c.last_error));
  store_cursor_free(&c);
  fx_close(&f);
}

/* The consumer's state: identity replaced, kept (NULL) or cleared (""),
 * high_seq never decreasing; get, list and their errors. */
static void test_ops_consumer(void) {
  store_outbox_entry *o;
  store_consumer *v, c;
  store_op ops[2];
  commit_result res;
  fixture f;
  size_t n;

  fx_open(&f);
  ASSERT_RC(0, store_list_consumers(f.s, &v, &n, err, sizeof err));
  ASSERT_UEQ(0, n);
  ASSERT(v == NULL);
  ops[0] = op_consumer("c", "https://up/x", 10, T0);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  ASSERT_EQ(0, res.status);
  expect_consumer(f.s, "c", "https://up/x", 10, T0);
  ops[0] = op_consumer(" c ", NULL, 7, T0 + MINUTE);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  expect_consumer(f.s, "c", "https://up/x", 10, T0 + MINUTE);
  ops[0] = op_consumer("c", "", 12, T0);
  ops[1] = op_consumer("b", NULL, 0, T0);
  commit_ops(f.s, NULL, 0, ops, 2, &res);
  expect_consumer(f.s, "c", "", 12, T0);
  expect_consumer(f.s, "b", "", 0, T0);
  ops[0] = op_consumer("c", "y", 0, T0);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  expect_consumer(f.s, "c", "y", 12, T0);

  ASSERT_RC(0, store_list_consumers(f.s, &v, &n, err, sizeof err));
  ASSERT_UEQ(2, n);
  ASSERT_STR_EQ("b", v[0].consumer_id);
  ASSERT_STR_EQ("c", v[1].consumer_id);
  ASSERT_EQ(12, v[1].high_seq);
  store_consumers_free(v, n);

  ASSERT_RC(STORE_ENOTFOUND,
            store_get_consumer(f.s, "nobody", &c, err, sizeof err));
  ASSERT_STR_EQ("consumer state not found", err);
  ASSERT_RC(STORE_EINVAL, store_get_consumer(f.s, " ", &c, err, sizeof err));
  ASSERT_STR_EQ("consumer id is required", err);
  ASSERT_RC(UV_EINVAL, store_get_consumer(f.s, "c", NULL, err, sizeof err));
  ASSERT_RC(UV_EINVAL, store_list_consumers(f.s, NULL, &n, err, sizeof err));
  ASSERT_RC(UV_EINVAL, store_load_journal(f.s, "c", NULL, &n, err, sizeof err));
  ASSERT_RC(UV_EINVAL, store_load_outbox(NULL, "c", NULL, &n, err, sizeof err));
  ASSERT_RC(STORE_EINVAL,
            store_load_outbox(f.s, NULL, &o, &n, err, sizeof err));
  ASSERT_STR_EQ("consumer id is required", err);
  store_consumer_free(NULL);
  store_consumers_free(NULL, 0);
  store_journal_free(NULL, 0);
  store_outbox_free(NULL, 0);
  fx_close(&f);
}

/* One commit: the advances first, then the operations in their order. A
 * put after an advance of the same key sets the position, an error after
 * it stays (the advance cleared it first), and put/delete pairs end as the
 * later one says. */
static void test_ops_order_after_advances(void) {
  store_advance adv = { { "c", "s", "" }, 3, "d3", "p3", T0, T0 };
  store_op ops[8];
  commit_result res;
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, record(f.s, K, "old error", T0, NULL));
  ops[0] = op_cursor_put(K, 3, "from-op", T0);
  ops[1] = op_error(K, "after the advance", T0);
  ops[2] = op_journal_put("c", "k", "1", T0);
  ops[3] = op_journal_delete("c", "k");
  ops[4] = op_journal_delete("c", "j");
  ops[5] = op_journal_put("c", "j", "2", T0);
  ops[6] = op_outbox_put("c", 1, "a", T0);
  ops[7] = op_outbox_delete("c", 1);
  commit_ops(f.s, &adv, 1, ops, 8, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_UEQ(1, res.n);
  ASSERT_EQ(0, res.item_status[0]);
  expect_stored(f.s, K, 3, "d3", T0, "after the advance", T0, "from-op");
  expect_journal(f.s, "c", 1, (const char *const[]){ "j" },
                 (const char *const[]){ "2" }, NULL);
  expect_outbox(f.s, "c", 0, NULL, NULL, NULL);
  fx_close(&f);
}

/* A refused advance keeps its own status; the transaction commits, with
 * the operations. */
static void test_ops_commit_beside_refused_advance(void) {
  store_advance adv[2] = {
    { { "c", "s", "" }, 4, "d4", "p4", T0, T0 },
    { { "c2", "s", "" }, 1, "e1", "q1", T0, T0 },
  };
  store_op op = op_journal_put("c", "k", "v", T0);
  commit_result res;
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, advance(f.s, K, 5, "d5", T0, T0, "p5", NULL));
  commit_ops(f.s, adv, 2, &op, 1, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_EQ(STORE_ENONMONO, res.item_status[0]);
  ASSERT_CONTAINS(res.item_msg[0], "(backward)");
  ASSERT_EQ(0, res.item_status[1]);
  expect_stored(f.s, K, 5, "d5", T0, "", T0, "p5");
  expect_stored(f.s, key3("c2", "s", ""), 1, "e1", T0, "", T0, "q1");
  expect_journal(f.s, "c", 1, (const char *const[]){ "k" },
                 (const char *const[]){ "v" }, NULL);
  fx_close(&f);
}

/* Fills buf with n - 1 copies of c and a NUL; returns it. */
static const char *repeat(char *buf, size_t n, char c) {
  memset(buf, c, n - 1);
  buf[n - 1] = '\0';
  return buf;
}

/* Every way an operation can be invalid: the commit that carries it fails
 * as a whole with a message naming the operation, nothing of it is
 * applied, and store_op_check says the same without the index. */
static void test_ops_invalid_fail_whole_commit(void) {
  static char big[STORE_MAX_VALUE + 1];
  char long_key[STORE_MAX_NAME + 2], long_pos[STORE_MAX_POSITION + 2];
  char long_identity[STORE_MAX_IDENTITY + 2], want[1024];
  struct {
    store_op op;
    const char *msg;
  } cases[] = {
    { op_journal_put(" ", "k", "v", T0),
      "journal put of consumer \" \", key \"k\": consumer id is required" },
    { op_journal_put("c", NULL, "v", T0),
      "journal put of consumer \"c\", key (null): journal key is required" },
    { op_journal_delete("c", ""),
      "journal delete of consumer \"c\", key \"\": journal key is required" },
    { op_journal_delete("c", repeat(long_key, sizeof long_key, 'k')),
      "journal key is longer than 1024 bytes" },
    { op_journal_put("c", "\xff", "v", T0),
      "journal put of consumer \"c\", key \"\\xff\": journal key is not "
      "valid UTF-8" },
    { { STORE_OP_JOURNAL_PUT, { "c", NULL, NULL }, "k", 0, NULL, 3, 0, T0 },
      "journal put of consumer \"c\", key \"k\": value is NULL with a length "
      "of 3 bytes" },
    { { STORE_OP_JOURNAL_PUT,
        { "c", NULL, NULL },
        "k",
        0,
        big,
        sizeof big,
        0,
        T0 },
      "journal put of consumer \"c\", key \"k\": value is longer than 1048576 "
      "bytes" },
    { op_outbox_put("c", (uint64_t)INT64_MAX + 1, "v", T0),
      "outbox put of consumer \"c\", id 9223372036854775808: outbox id "
      "9223372036854775808 is greater than 9223372036854775807" },
    { op_outbox_delete(NULL, 1),
      "outbox delete of consumer \"\", id 1: consumer id is required" },
    { { STORE_OP_OUTBOX_PUT,
        { "c", NULL, NULL },
        NULL,
        1,
        big,
        sizeof big,
        0,
        T0 },
      "outbox put of consumer \"c\", id 1: value is longer than 1048576 "
      "bytes" },
    { op_cursor_put(key3("c", "", "x"), 1, "p", T0),
      "cursor put of cursor \"c\"/\"\"/\"x\": invalid cursor: stream name is "
      "required" },
    { op_cursor_put(K, -1, "p", T0),
      "cursor put of cursor \"c\"/\"s\"/\"\": invalid cursor: sequence must "
      "be zero or greater" },
    { op_cursor_put(K, 1, repeat(long_pos, sizeof long_pos, 'p'), T0),
      "invalid cursor: position is longer than 4096 bytes" },
    { op_error(K, " \t ", T0),
      "error of cursor \"c\"/\"s\"/\"\": invalid cursor: last error is "
      "required" },
    { op_error(key3("", "s", ""), "e", T0),
      "error of cursor \"\"/\"s\"/\"\": invalid cursor: consumer id is "
      "required" },
    { op_consumer("c", "id", -1, T0),
      "consumer state of \"c\": high seq must be zero or greater" },
    { op_consumer("c", repeat(long_identity, sizeof long_identity, 'i'), 1, T0),
      "consumer state of \"c\": identity is longer than 4096 bytes" },
    { op_consumer("c", "\xc0\x80", 1, T0),
      "consumer state of \"c\": identity is not valid UTF-8" },
    { { (store_op_kind)99, { "c", "s", "" }, NULL, 0, NULL, 0, 0, T0 },
      "operation of kind 99: unknown operation kind 99" },
  };
  store_advance adv = { { "c", "s", "" }, 1, "d1", "p1", T0, T0 };
  store_op ops[2];
  commit_result res;
  fixture f;
  size_t i;

  fx_open(&f);
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ops[0] = op_journal_put("c", "valid", "v", T0);
    ops[1] = cases[i].op;
    commit_ops(f.s, &adv, 1, ops, 2, &res);
    ASSERT_EQ(STORE_EINVAL, res.status);
    ASSERT_EQ(STORE_EINVAL, res.item_status[0]);
    ASSERT_STR_EQ(res.msg, res.item_msg[0]);
    ASSERT(strncmp(res.msg, "operation 1, ", 13) == 0);
    ASSERT_CONTAINS(res.msg, cases[i].msg);
    ASSERT_RC(STORE_EINVAL, store_op_check(&cases[i].op, err, sizeof err));
    ASSERT_STR_EQ(res.msg + 13, err);
    /* Messages that name the whole operation are exact. */
    if (strstr(cases[i].msg, " of ") != NULL ||
        strncmp(cases[i].msg, "operation", 9) == 0) {
      snprintf(want, sizeof want, "operation 1, %s", cases[i].msg);
      ASSERT_STR_EQ(want, res.msg);
    }
    expect_missing(f.s, K);
    expect_journal(f.s, "c", 0, NULL, NULL, NULL);
    ASSERT_RC(0, store_op_check(&ops[0], err, sizeof err));
    ASSERT_STR_EQ("", err);
  }
  ASSERT_RC(STORE_EINVAL, store_op_check(NULL, err, sizeof err));
  /* The same commit without the bad operation goes through. */
  commit_ops(f.s, &adv, 1, ops, 1, &res);
  ASSERT_EQ(0, res.status);
  expect_stored(f.s, K, 1, "d1", T0, "", T0, "p1");
  fx_close(&f);
}

/* An operation that fails to write (a trigger stands in for a disk that
 * refuses) rolls back the advances before it and the operations around
 * it. */
static void test_ops_write_failure_rolls_back(void) {
  store_advance adv = { { "c", "s", "" }, 1, "d1", "p1", T0, T0 };
  store_op ops[3];
  commit_result res;
  sqlite3 *db;
  fixture f;

  fx_open(&f);
  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(SQLITE_OK,
            sqlite3_exec(db,
                         "CREATE TRIGGER refuse BEFORE INSERT ON outbox "
                         "WHEN NEW.id = 666 BEGIN "
                         "SELECT RAISE(ABORT, 'injected failure'); END",
                         NULL, NULL, NULL));
  sqlite3_close(db);
  ops[0] = op_journal_put("c", "a", "1", T0);
  ops[1] = op_outbox_put("c", 666, "x", T0);
  ops[2] = op_consumer("c", "id", 1, T0);
  commit_ops(f.s, &adv, 1, ops, 3, &res);
  ASSERT_EQ(STORE_EIO, res.status);
  ASSERT_EQ(STORE_EIO, res.item_status[0]);
  ASSERT_CONTAINS(res.msg, "operation 1, outbox put of consumer \"c\", id "
                           "666: state file ");
  ASSERT_CONTAINS(res.msg, "write outbox: injected failure");
  expect_missing(f.s, K);
  expect_journal(f.s, "c", 0, NULL, NULL, NULL);
  ASSERT_RC(
      STORE_ENOTFOUND,
      store_get_consumer(f.s, "c", &(store_consumer){ 0 }, err, sizeof err));

  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(SQLITE_OK,
            sqlite3_exec(db, "DROP TRIGGER refuse", NULL, NULL, NULL));
  sqlite3_close(db);
  commit_ops(f.s, &adv, 1, ops, 3, &res);
  ASSERT_EQ(0, res.status);
  expect_stored(f.s, K, 1, "d1", T0, "", T0, "p1");
  expect_consumer(f.s, "c", "id", 1, T0);
  fx_close(&f);
}

/* The store copies every string and value: the caller's buffers are free
 * once store_commit_start returned. */
static void test_ops_copied(void) {
  char consumer[8] = "copy", key[8] = "key", value[8] = "value";
  char identity[8] = "ident", stream[8] = "s", subject[8] = "x";
  store_op ops[4];
  uv_loop_t loop;
  commit_result res;
  fixture f;

  memset(&res, 0, sizeof res);
  fx_open(&f);
  ops[0] = op_journal_put(consumer, key, value, T0);
  ops[1] = op_outbox_put(consumer, 7, value, T0);
  ops[2] = op_consumer(consumer, identity, 3, T0);
  ops[3] = op_cursor_put(key3(consumer, stream, subject), 2, value, T0);
  ASSERT_EQ(0, uv_loop_init(&loop));
  ASSERT_EQ(0,
            store_commit_start(f.s, &loop, NULL, 0, ops, 4, on_commit, &res));
  memset(consumer, 'X', sizeof consumer - 1);
  memset(key, 'Y', sizeof key - 1);
  memset(value, 'Z', sizeof value - 1);
  memset(identity, 'W', sizeof identity - 1);
  memset(stream, 'V', sizeof stream - 1);
  memset(subject, 'U', sizeof subject - 1);
  memset(ops, 0, sizeof ops);
  ASSERT_EQ(0, uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_EQ(0, uv_loop_close(&loop));
  ASSERT_EQ(1, res.calls);
  ASSERT_EQ(0, res.status);
  expect_journal(f.s, "copy", 1, (const char *const[]){ "key" },
                 (const char *const[]){ "value" }, NULL);
  expect_outbox(f.s, "copy", 1, (const uint64_t[]){ 7 },
                (const char *const[]){ "value" }, NULL);
  expect_consumer(f.s, "copy", "ident", 3, T0);
  expect_stored(f.s, key3("copy", "s", "x"), 2, "", T0, "", T0, "value");
  ASSERT_EQ(UV_EINVAL,
            store_commit_start(f.s, &loop, NULL, 0, NULL, 1, on_commit, &res));
  fx_close(&f);
}

/* A commit that carries operations reaches the disk before it returns
 * (synchronous=FULL), since what follows it is told outside; one of
 * cursors alone does not (a lost one costs duplicates only). Counted by
 * interposing the sync calls SQLite makes. */
static int syncs;

static int count_sync(const char *name, int fd) {
  int (*real)(int) = NULL;
  void *sym = dlsym(RTLD_NEXT, name);

  memcpy(&real, &sym, sizeof sym);
  __atomic_add_fetch(&syncs, 1, __ATOMIC_SEQ_CST);
  return real(fd);
}

int fdatasync(int fd) {
  return count_sync("fdatasync", fd);
}

int fsync(int fd) {
  return count_sync("fsync", fd);
}

static int syncs_during(store *s, const store_advance *adv, size_t n,
                        const store_op *ops, size_t n_ops) {
  commit_result res;
  int before = __atomic_load_n(&syncs, __ATOMIC_SEQ_CST);

  commit_ops(s, adv, n, ops, n_ops, &res);
  ASSERT_EQ(0, res.status);
  return __atomic_load_n(&syncs, __ATOMIC_SEQ_CST) - before;
}

static void test_ops_commit_is_synced(void) {
  store_advance adv = { { "c", "s", "" }, 1, "d", "p", T0, T0 };
  store_op op = op_journal_put("c", "k", "v", T0);
  fixture f;

  fx_open(&f);
  /* The first frames of a new WAL may sync its header. */
  commit_ops(f.s, &adv, 1, NULL, 0, &(commit_result){ 0 });
  adv.last_sequence++;
  ASSERT_EQ(0, syncs_during(f.s, &adv, 1, NULL, 0));
  adv.last_sequence++;
  ASSERT(syncs_during(f.s, &adv, 1, &op, 1) >= 1);
  adv.last_sequence++;
  /* A commit that changes nothing writes nothing, so the value moves. */
  op.value = "w";
  ASSERT(syncs_during(f.s, NULL, 0, &op, 1) >= 1);
  adv.last_sequence++;
  ASSERT_EQ(0, syncs_during(f.s, &adv, 1, NULL, 0));
  fx_close(&f);
}

/* ---- Removal and re-keying ---------------------------------------------- */

static void test_remove_cursor(void) {
  store_reset_record *v;
  fixture f;
  size_t n;

  fx_open(&f);
  ASSERT_RC(0, reset(f.s, K, 3, NULL, 0, "p3", "why", T0, NULL));
  ASSERT_RC(0, advance(f.s, key3("c", "s", "x"), 1, "d", T0, T0, NULL, NULL));
  ASSERT_RC(0, store_remove_cursor(f.s, &(store_key){ " c", "s ", NULL }, err,
                                   sizeof err));
  expect_missing(f.s, K);
  expect_stored(f.s, key3("c", "s", "x"), 1, "d", T0, "", T0, "");
  /* Its reset audit stays, as history. */
  ASSERT_RC(0, store_list_resets(f.s, &K, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  store_reset_records_free(v, n);
  ASSERT_RC(STORE_ENOTFOUND, store_remove_cursor(f.s, &K, err, sizeof err));
  ASSERT_STR_EQ("cursor not found", err);
  ASSERT_RC(STORE_EINVAL, store_remove_cursor(f.s, &(store_key){ "c", "", "" },
                                              err, sizeof err));
  ASSERT_STR_EQ("invalid cursor: stream name is required", err);
  ASSERT_RC(UV_EINVAL, store_remove_cursor(f.s, NULL, err, sizeof err));
  fx_close(&f);
}

/* Puts one of every row the store keeps for a consumer. */
static void seed_consumer(store *s, const char *consumer) {
  store_op ops[4];
  commit_result res;

  ASSERT_RC(0, advance(s, key3(consumer, "s", ""), 2, "d", T0, T0, "p", NULL));
  ASSERT_RC(
      0, reset(s, key3(consumer, "s", ""), 1, NULL, 0, "p1", "why", T0, NULL));
  ASSERT_RC(0, store_set_paused(s, consumer, true, err, sizeof err));
  ops[0] = op_journal_put(consumer, "k", "v", T0);
  ops[1] = op_outbox_put(consumer, 1, "v", T0);
  ops[2] = op_consumer(consumer, "id", 2, T0);
  ops[3] = op_cursor_put(key3(consumer, "s", "scope"), 2, "q", T0);
  commit_ops(s, NULL, 0, ops, 4, &res);
  ASSERT_EQ(0, res.status);
}

static void test_remove_consumer(void) {
  store_reset_record *v;
  store_cursor *cur;
  bool paused;
  fixture f;
  size_t n;

  fx_open(&f);
  seed_consumer(f.s, "c");
  seed_consumer(f.s, "other");
  ASSERT_RC(0, store_remove_consumer(f.s, " c ", err, sizeof err));
  ASSERT_RC(0, store_list(f.s, &(store_query){ "c", NULL, NULL, 0 }, &cur, &n,
                          err, sizeof err));
  ASSERT_UEQ(0, n);
  expect_journal(f.s, "c", 0, NULL, NULL, NULL);
  expect_outbox(f.s, "c", 0, NULL, NULL, NULL);
  ASSERT_RC(
      STORE_ENOTFOUND,
      store_get_consumer(f.s, "c", &(store_consumer){ 0 }, err, sizeof err));
  ASSERT_RC(0, store_get_paused(f.s, "c", &paused, err, sizeof err));
  ASSERT(!paused);
  /* The reset audit stays, as history. */
  ASSERT_RC(0, store_list_resets(f.s, &(store_key){ "c", "s", "" }, 0, &v, &n,
                                 err, sizeof err));
  ASSERT_UEQ(1, n);
  store_reset_records_free(v, n);
  /* The other consumer keeps everything. */
  ASSERT_RC(0, store_list(f.s, &(store_query){ "other", NULL, NULL, 0 }, &cur,
                          &n, err, sizeof err));
  ASSERT_UEQ(2, n);
  store_cursors_free(cur, n);
  expect_journal(f.s, "other", 1, (const char *const[]){ "k" },
                 (const char *const[]){ "v" }, NULL);
  expect_outbox(f.s, "other", 1, (const uint64_t[]){ 1 },
                (const char *const[]){ "v" }, NULL);
  expect_consumer(f.s, "other", "id", 2, T0);
  ASSERT_RC(0, store_get_paused(f.s, "other", &paused, err, sizeof err));
  ASSERT(paused);

  ASSERT_RC(STORE_ENOTFOUND, store_remove_consumer(f.s, "c", err, sizeof err));
  ASSERT_STR_EQ("the state file holds nothing for consumer \"c\"", err);
  ASSERT_RC(STORE_EINVAL, store_remove_consumer(f.s, "", err, sizeof err));
  ASSERT_STR_EQ("consumer id is required", err);
  ASSERT_RC(UV_EINVAL, store_remove_consumer(NULL, "c", err, sizeof err));
  /* A consumer known only by one table is removed too. */
  ASSERT_RC(0, store_set_paused(f.s, "flag-only", true, err, sizeof err));
  ASSERT_RC(0, store_remove_consumer(f.s, "flag-only", err, sizeof err));
  fx_close(&f);
}

/* Adoption of a row under a new key keeps everything but the key, and its
 * reset history follows; the error cases, table-driven. */
static void test_rekey_cursor(void) {
  static const store_key from = { "c", "path?limit=100", "" };
  static const store_key to = { "c", "http_poll", "" };
  struct {
    store_key from, to;
    int rc;
    const char *msg;
  } bad[] = {
    { { "c", "none", "" },
      { "c", "new", "" },
      STORE_ENOTFOUND,
      "cannot move the cursor of consumer \"c\", stream \"none\", subject "
      "\"\": there is none" },
    { { "c", "http_poll", "" },
      { "d", "taken", "" },
      STORE_EEXIST,
      "cannot move the cursor of consumer \"c\", stream \"http_poll\", "
      "subject \"\" to consumer \"d\", stream \"taken\", subject \"\": that "
      "key has a cursor already; remove one of the two first" },
    { { "c", "http_poll", "" },
      { " c", "http_poll ", NULL },
      STORE_EINVAL,
      "cannot move the cursor of consumer \"c\", stream \"http_poll\", "
      "subject \"\" onto itself" },
    { { "", "a", "" },
      { "c", "b", "" },
      STORE_EINVAL,
      "invalid cursor: consumer id is required" },
    { { "c", "a", "" },
      { "c", "b", "\xff" },
      STORE_EINVAL,
      "invalid cursor: subject id is not valid UTF-8" },
  };
  store_reset_record *v;
  store_cursor c;
  fixture f;
  size_t i, n;

  fx_open(&f);
  ASSERT_RC(0, reset(f.s, from, 7, NULL, 0, "p7", "operator", T0, NULL));
  ASSERT_RC(0,
            advance(f.s, from, 9, "d9", T0 + MINUTE, T0 + MINUTE, "p9", NULL));
  ASSERT_RC(0, record(f.s, from, "flaky", T0 + HOUR, NULL));
  ASSERT_RC(0,
            advance(f.s, key3("d", "taken", ""), 1, "x", T0, T0, NULL, NULL));
  ASSERT_RC(0, store_rekey_cursor(f.s, &from, &to, err, sizeof err));
  ASSERT_STR_EQ("", err);
  expect_missing(f.s, from);
  ASSERT_RC(0, store_get(f.s, &to, &c, err, sizeof err));
  ASSERT_STR_EQ("http_poll", c.stream_name);
  expect_row(&c, 9, "d9", T0 + MINUTE, "flaky", T0 + HOUR, "p9");
  store_cursor_free(&c);
  ASSERT_RC(0, store_list_resets(f.s, &to, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  ASSERT_STR_EQ("operator", v[0].reason);
  store_reset_records_free(v, n);
  ASSERT_RC(0, store_list_resets(f.s, &from, 0, &v, &n, err, sizeof err));
  ASSERT_UEQ(0, n);

  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ASSERT_RC(bad[i].rc, store_rekey_cursor(f.s, &bad[i].from, &bad[i].to, err,
                                            sizeof err));
    ASSERT_STR_EQ(bad[i].msg, err);
  }
  /* Nothing moved on the way. */
  expect_stored(f.s, to, 9, "d9", T0 + MINUTE, "flaky", T0 + HOUR, "p9");
  expect_stored(f.s, key3("d", "taken", ""), 1, "x", T0, "", T0, "");
  ASSERT_RC(UV_EINVAL, store_rekey_cursor(f.s, &from, NULL, err, sizeof err));
  fx_close(&f);
}

/* ---- Schema 3 on older files --------------------------------------------- */

/* Copies a file of tests/unit/data to path. */
static void copy_fixture(const char *name, const char *path) {
  char from[PATH_BUF];
  const char *root = getenv("TETHER_SOURCE_ROOT");
  size_t len;
  char *data;

  snprintf(from, sizeof from, "%s/tests/unit/data/%s",
           root != NULL ? root : ".", name);
  data = test_read_file(from, &len);
  if (data == NULL)
    printf("# cannot read %s (set TETHER_SOURCE_ROOT)\n", from);
  ASSERT(data != NULL);
  test_write_file(path, data, len);
  free(data);
}

static int64_t time_of(const char *text) {
  int64_t ns = 0;

  ASSERT_EQ(0, store_parse_time(text, &ns));
  return ns;
}

static int64_t file_int(const char *path, const char *sql) {
  sqlite3 *db;
  int64_t v;

  ASSERT_EQ(SQLITE_OK, sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL));
  v = pragma_int(db, sql);
  sqlite3_close(db);
  return v;
}

/* The state file the schema 2 release wrote (tests/unit/data/README says
 * how): every cursor, the reset record and the paused flag survive the
 * migration, each consumer gets a state row with an unknown identity and
 * the highest seq it recorded, and the new tables work. */
static void test_migrate_v2_release_file(void) {
  store_advance adv[2] = {
    { { "gen", "generate", "" }, 41, "gen:41", "41", T0, T0 },
    { { "held", "generate", "" }, 13, "held:13", "13", T0, T0 },
  };
  store_reset_record *resets;
  store_consumer *consumers;
  store_cursor *v;
  store_op ops[3];
  commit_result res;
  bool paused;
  fixture f;
  size_t n;

  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  copy_fixture("state-v2.db", f.path);
  ASSERT_EQ(2, file_int(f.path, "PRAGMA user_version"));
  f.s = NULL;
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  ASSERT(!store_created(f.s));

  ASSERT_RC(0, store_list(f.s, NULL, &v, &n, err, sizeof err));
  ASSERT_UEQ(3, n);
  ASSERT_STR_EQ("gen", v[0].consumer_id);
  ASSERT_STR_EQ("generate", v[0].stream_name);
  expect_row(&v[0], 40, "gen:40", time_of("2026-12-06T06:10:14.739204558Z"), "",
             time_of("2026-12-06T06:10:14.758261411Z"), "40");
  ASSERT_STR_EQ("held", v[1].consumer_id);
  expect_row(&v[1], 12, "", 0, "", time_of("2026-12-06T06:10:14.909335211Z"),
             "12");
  ASSERT_STR_EQ("sub", v[2].consumer_id);
  expect_row(&v[2], 22, "sub:22", time_of("2026-12-06T06:10:14.976737511Z"), "",
             time_of("2026-12-06T06:10:14.979211928Z"), "22");
  store_cursors_free(v, n);

  ASSERT_RC(0, store_list_resets(f.s, NULL, 0, &resets, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  ASSERT_STR_EQ("held", resets[0].consumer_id);
  ASSERT_STR_EQ("generate", resets[0].stream_name);
  ASSERT_STR_EQ("", resets[0].subject_id);
  ASSERT_EQ(30, resets[0].old_sequence);
  ASSERT_EQ(12, resets[0].new_sequence);
  ASSERT_STR_EQ("30", resets[0].old_position);
  ASSERT_STR_EQ("12", resets[0].new_position);
  ASSERT_STR_EQ("fixture: replay from 12", resets[0].reason);
  ASSERT_EQ(time_of("2026-12-06T06:10:14.909335211Z"), resets[0].at);
  store_reset_records_free(resets, n);

  ASSERT_RC(0, store_get_paused(f.s, "held", &paused, err, sizeof err));
  ASSERT(paused);
  ASSERT_RC(0, store_get_paused(f.s, "gen", &paused, err, sizeof err));
  ASSERT(!paused);

  /* held's high seq is the 30 its reset went back from. */
  ASSERT_RC(0, store_list_consumers(f.s, &consumers, &n, err, sizeof err));
  ASSERT_UEQ(3, n);
  ASSERT_STR_EQ("gen", consumers[0].consumer_id);
  ASSERT_STR_EQ("", consumers[0].identity);
  ASSERT_EQ(40, consumers[0].high_seq);
  ASSERT_EQ(time_of("2026-12-06T06:10:14.758261411Z"), consumers[0].updated_at);
  ASSERT_STR_EQ("held", consumers[1].consumer_id);
  ASSERT_EQ(30, consumers[1].high_seq);
  ASSERT_EQ(time_of("2026-12-06T06:10:14.909335211Z"), consumers[1].updated_at);
  ASSERT_STR_EQ("sub", consumers[2].consumer_id);
  ASSERT_EQ(22, consumers[2].high_seq);
  store_consumers_free(consumers, n);
  expect_journal(f.s, "gen", 0, NULL, NULL, NULL);
  expect_outbox(f.s, "gen", 0, NULL, NULL, NULL);

  /* The migrated file takes advances (held's reset row too) and
   * operations. */
  ops[0] = op_journal_put("gen", "m1", "lease", T0);
  ops[1] = op_outbox_put("held", 1, "write", T0);
  ops[2] = op_consumer("gen", "generate", 41, T0);
  commit_ops(f.s, adv, 2, ops, 3, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_EQ(0, res.item_status[0]);
  ASSERT_EQ(0, res.item_status[1]);
  store_close(f.s);
  f.s = NULL;
  ASSERT_EQ(3, file_int(f.path, "PRAGMA user_version"));
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  expect_stored(f.s, key3("held", "generate", ""), 13, "held:13", T0, "", T0,
                "13");
  expect_journal(f.s, "gen", 1, (const char *const[]){ "m1" },
                 (const char *const[]){ "lease" }, NULL);
  expect_outbox(f.s, "held", 1, (const uint64_t[]){ 1 },
                (const char *const[]){ "write" }, NULL);
  expect_consumer(f.s, "gen", "generate", 41, T0);
  expect_consumer(f.s, "held", "", 30, 0);
  fx_close(&f);
}

/* A consumer the file knew only by its paused flag gets a state row too,
 * at seq 0. */
static void test_migrate_v2_flag_only_consumer(void) {
  sqlite3 *db;
  fixture f;

  fx_open(&f);
  ASSERT_RC(0, store_set_paused(f.s, "quiet", true, err, sizeof err));
  store_close(f.s);
  f.s = NULL;
  ASSERT_EQ(SQLITE_OK, sqlite3_open(f.path, &db));
  ASSERT_EQ(SQLITE_OK, sqlite3_exec(db,
                                    "DROP TABLE consumer_state; DROP TABLE "
                                    "journal; DROP TABLE outbox; "
                                    "PRAGMA user_version = 2",
                                    NULL, NULL, NULL));
  sqlite3_close(db);
  ASSERT_RC(0, store_open(f.path, &f.s, err, sizeof err));
  expect_consumer(f.s, "quiet", "", 0, 0);
  fx_close(&f);
}

/* A file made again after it was removed has the tables of schema 3; the
 * operations of the commit that found it gone were not applied. */
static void test_recreated_file_has_new_tables(void) {
  store_op ops[3];
  commit_result res;
  fixture f;

  fx_open(&f);
  ops[0] = op_journal_put("c", "k", "v", T0);
  ops[1] = op_outbox_put("c", 1, "w", T0);
  ops[2] = op_consumer("c", "id", 5, T0);
  commit_ops(f.s, NULL, 0, ops, 3, &res);
  ASSERT_EQ(0, res.status);
  remove_with_wal(f.path);
  commit_ops(f.s, NULL, 0, ops, 1, &res);
  ASSERT_EQ(STORE_ERECREATED, res.status);
  expect_journal(f.s, "c", 0, NULL, NULL, NULL);
  ASSERT_RC(
      STORE_ENOTFOUND,
      store_get_consumer(f.s, "c", &(store_consumer){ 0 }, err, sizeof err));
  commit_ops(f.s, NULL, 0, ops, 3, &res);
  ASSERT_EQ(0, res.status);
  ASSERT_EQ(3, file_int(f.path, "PRAGMA user_version"));
  ASSERT_EQ(1, file_int(f.path, "SELECT count(*) FROM journal"));
  expect_consumer(f.s, "c", "id", 5, T0);
  fx_close(&f);
}

/* ---- kill -9 during commits --------------------------------------------- */

#define KILL_RUNS 12

/* The child of test_kill9_commits_all_or_nothing: commits round after
 * round until it is killed. Round i advances K to seq i and carries
 * operations that say i: journal entry j<i> put and j<i-2> deleted, outbox
 * id i put and i-1 deleted, a scope cursor and the consumer's high seq at
 * i. After its first commit it writes a byte to ready, so the parent's
 * kill lands among commits however slowly it started. Never returns;
 * exits with a code saying what failed. */
static void kill_child(const char *path, int ready) {
  char pos[32], id[32], key[32], old[32], val[32];
  store_advance adv = { { "c", "s", "" }, 0, id, pos, 0, 0 };
  store_op ops[6];
  commit_result res;
  uv_loop_t loop;
  store_cursor c;
  store *s = NULL;
  int64_t i;
  int rc;

  if (store_open(path, &s, NULL, 0) != 0)
    _exit(3);
  rc = store_get(s, &K, &c, NULL, 0);
  if (rc != 0 && rc != STORE_ENOTFOUND)
    _exit(4);
  i = rc == 0 ? c.last_sequence : 0;
  store_cursor_free(&c);
  if (uv_loop_init(&loop) != 0)
    _exit(5);
  /* Bounded, should the parent never kill. */
  for (i++; i < 1000000; i++) {
    snprintf(pos, sizeof pos, "p%" PRId64, i);
    snprintf(id, sizeof id, "d%" PRId64, i);
    snprintf(key, sizeof key, "j%" PRId64, i);
    snprintf(old, sizeof old, "j%" PRId64, i - 2);
    snprintf(val, sizeof val, "%" PRId64, i);
    adv.last_sequence = i;
    ops[0] = op_journal_put("c", key, val, 0);
    ops[1] = op_journal_delete("c", old);
    ops[2] = op_outbox_put("c", (uint64_t)i, val, 0);
    ops[3] = op_outbox_delete("c", (uint64_t)i - 1);
    ops[4] = op_cursor_put(key3("c", "s", "scope"), i, val, 0);
    ops[5] = op_consumer("c", "identity", i, 0);
    memset(&res, 0, sizeof res);
    if (store_commit_start(s, &loop, &adv, 1, ops, 6, on_commit, &res) != 0 ||
        uv_run(&loop, UV_RUN_DEFAULT) != 0 || res.status != 0 ||
        res.item_status[0] != 0)
      _exit(6);
    if (ready >= 0 && (write(ready, "r", 1) != 1 || close(ready) != 0))
      _exit(7);
    ready = -1;
  }
  _exit(0);
}

static void expect_stored_seq_pos(store *s, store_key k, int64_t seq,
                                  const char *position) {
  store_cursor c;

  ASSERT_RC(0, store_get(s, &k, &c, err, sizeof err));
  ASSERT_EQ(seq, c.last_sequence);
  ASSERT_STR_EQ(position, c.position);
  store_cursor_free(&c);
}

/* What a killed child left: the cursor at some S, and exactly the
 * operations of rounds up to S (nothing of round S + 1). */
static int64_t check_after_kill(const char *path) {
  char key[32], val[32], prev_key[32], prev_val[32], pos[32];
  store_outbox_entry *o;
  store_cursor c;
  store *s = NULL;
  int64_t seq;
  size_t n;

  ASSERT_RC(0, store_open(path, &s, err, sizeof err));
  /* Every child made a commit before it was killed. */
  ASSERT_RC(0, store_get(s, &K, &c, err, sizeof err));
  seq = c.last_sequence;
  snprintf(pos, sizeof pos, "p%" PRId64, seq);
  ASSERT_STR_EQ(pos, c.position);
  store_cursor_free(&c);
  snprintf(key, sizeof key, "j%" PRId64, seq);
  snprintf(val, sizeof val, "%" PRId64, seq);
  snprintf(prev_key, sizeof prev_key, "j%" PRId64, seq - 1);
  snprintf(prev_val, sizeof prev_val, "%" PRId64, seq - 1);
  /* Keys compare as text: j9 after j10. */
  if (seq == 1)
    expect_journal(s, "c", 1, (const char *const[]){ key },
                   (const char *const[]){ val }, NULL);
  else if (strcmp(prev_key, key) < 0)
    expect_journal(s, "c", 2, (const char *const[]){ prev_key, key },
                   (const char *const[]){ prev_val, val }, NULL);
  else
    expect_journal(s, "c", 2, (const char *const[]){ key, prev_key },
                   (const char *const[]){ val, prev_val }, NULL);
  ASSERT_RC(0, store_load_outbox(s, "c", &o, &n, err, sizeof err));
  ASSERT_UEQ(1, n);
  ASSERT_UEQ((uint64_t)seq, o[0].id);
  store_outbox_free(o, n);
  expect_stored_seq_pos(s, key3("c", "s", "scope"), seq, val);
  expect_consumer(s, "c", "identity", seq, 0);
  store_close(s);
  return seq;
}

static void test_kill9_commits_all_or_nothing(void) {
  unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
  int64_t seq, last = 0;
  int run, status, ready[2];
  struct timespec delay;
  struct pollfd pfd;
  char byte;
  fixture f;
  pid_t pid;

  printf("# seed %u\n", seed);
  snprintf(f.dir, sizeof f.dir, "%s", test_tmpdir());
  snprintf(f.path, sizeof f.path, "%s/state.db", f.dir);
  f.s = NULL;
  for (run = 0; run < KILL_RUNS; run++) {
    fflush(stdout);
    ASSERT_EQ(0, pipe(ready));
    pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      close(ready[0]);
      kill_child(f.path, ready[1]);
    }
    close(ready[1]);
    /* Bounded, generous for a sanitizer build on a loaded machine. */
    pfd.fd = ready[0];
    pfd.events = POLLIN;
    if (poll(&pfd, 1, 60000) != 1 || read(ready[0], &byte, 1) != 1) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      close(ready[0]);
      ASSERT(!"the child made no commit within 60 s");
    }
    close(ready[0]);
    /* 0 to 30 ms after its first commit: from one to hundreds more. */
    delay.tv_sec = 0;
    delay.tv_nsec = (long)(rand_r(&seed) % 31) * 1000000L;
    nanosleep(&delay, NULL);
    ASSERT_EQ(0, kill(pid, SIGKILL));
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    /* Killed, not exited on a failure of its own. */
    if (!WIFSIGNALED(status))
      printf("# child exited with %d\n", WEXITSTATUS(status));
    ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    seq = check_after_kill(f.path);
    /* Each child committed at least once, or this tested nothing. */
    ASSERT(seq > last);
    printf("# run %d: killed at seq %" PRId64 "\n", run, seq);
    last = seq;
  }
  fx_close(&f);
}

static const test_case tests[] = {
  TEST(test_migrate_v1_to_v2),
  TEST(test_migrate_failure_rolls_back),
  TEST(test_commit_recreates_removed_file),
  TEST(test_empty_commit_checks_the_file),
  TEST(test_commit_moves_replacing_file_aside),
  TEST(test_recreate_fails_then_recovers),
  TEST(test_created_only_on_first_open),
  TEST(test_vector_01_get_trims_key),
  TEST(test_vector_02_get_blank_consumer),
  TEST(test_vector_03_get_consumer_checked_first),
  TEST(test_vector_04_get_blank_stream),
  TEST(test_vector_05_advance_sequence_zero),
  TEST(test_vector_06_advance_key_checked_first),
  TEST(test_vector_07_advance_create),
  TEST(test_vector_08_advance_trims_id_and_fills_at),
  TEST(test_vector_09_advance_replay_clears_error),
  TEST(test_vector_10_advance_fork),
  TEST(test_vector_11_advance_backward),
  TEST(test_vector_12_advance_set_id_then_empty),
  TEST(test_vector_13_advance_empty_id_refresh),
  TEST(test_vector_14_advance_empty_id_then_set),
  TEST(test_vector_15_advance_forward_empty_id),
  TEST(test_vector_16_advance_forward_reused_id),
  TEST(test_vector_17_advance_no_time_check),
  TEST(test_vector_18_advance_after_record_error),
  TEST(test_vector_19_advance_refresh_fills_null_at),
  TEST(test_vector_20_reset_backward),
  TEST(test_vector_21_reset_reason_required),
  TEST(test_vector_22_reset_blank_reason),
  TEST(test_vector_23_reset_sequence_before_reason),
  TEST(test_vector_24_reset_creates),
  TEST(test_vector_25_reset_forward_clears_error),
  TEST(test_vector_26_reset_reason_not_in_row),
  TEST(test_vector_27_record_error_keeps_position),
  TEST(test_vector_28_record_error_creates),
  TEST(test_vector_29_record_error_blank),
  TEST(test_vector_30_record_error_trimmed),
  TEST(test_vector_31_list_stream_limit),
  TEST(test_vector_32_list_order),
  TEST(test_vector_33_list_limit_unlimited),
  TEST(test_vector_34_list_blank_filter_ignored),
  TEST(test_vector_35_list_no_match),
  TEST(test_vector_36_truncate_error),
  TEST(test_position_update_replaces),
  TEST(test_position_refresh_keeps_stored),
  TEST(test_position_refresh_fills_empty),
  TEST(test_position_reset_sets),
  TEST(test_position_record_error_never_moves),
  TEST(test_position_stored_verbatim),
  TEST(test_bounds_key_fields),
  TEST(test_bounds_key_utf8),
  TEST(test_bounds_position),
  TEST(test_bounds_reason),
  TEST(test_trim_go_parity),
  TEST(test_message_quotes_invalid_utf8),
  TEST(test_reset_audit_recorded),
  TEST(test_time_format_round_trip),
  TEST(test_time_stored_as_text),
  TEST(test_time_zero_now_is_clock),
  TEST(test_persists_across_reopen),
  TEST(test_open_creates_dirs_owner_only),
  TEST(test_migrate_empty_file_to_v1),
  TEST(test_migrate_refuses_newer_schema),
  TEST(test_migrate_refuses_foreign_database),
  TEST(test_open_garbage_file_untouched),
  TEST(test_open_truncated_db_detected),
  TEST(test_open_lock_contention),
  TEST(test_open_unwritable_location),
  TEST(test_open_bad_arguments),
  TEST(test_strerror_texts),
  TEST(test_list_count_only),
  TEST(test_commit_batch_with_nonmonotonic_item),
  TEST(test_commit_invalid_item_and_copies),
  TEST(test_commit_item_errors_reported),
  TEST(test_commit_hundred_cursors),
  TEST(test_disk_full),
  TEST(test_ops_journal),
  TEST(test_ops_outbox),
  TEST(test_ops_cursor_put),
  TEST(test_ops_error),
  TEST(test_ops_consumer),
  TEST(test_ops_order_after_advances),
  TEST(test_ops_commit_beside_refused_advance),
  TEST(test_ops_invalid_fail_whole_commit),
  TEST(test_ops_write_failure_rolls_back),
  TEST(test_ops_copied),
  TEST(test_ops_commit_is_synced),
  TEST(test_remove_cursor),
  TEST(test_remove_consumer),
  TEST(test_rekey_cursor),
  TEST(test_migrate_v2_release_file),
  TEST(test_migrate_v2_flag_only_consumer),
  TEST(test_recreated_file_has_new_tables),
  TEST(test_kill9_commits_all_or_nothing),
  { NULL, NULL },
};

TEST_MAIN(tests)
