/* The dead-letter writer against real files in a temporary directory. The
 * sync calls are interposed, so a test can tell what was durable when a
 * callback ran. */
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/dead_letter.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- fdatasync, watched ----------------------------------------------- */

/* The path whose syncs are watched, and its size at the last successful
 * fdatasync of it (-1: none yet). Written on the thread pool. */
static char watched[PATH_MAX];
static long long synced_size = -1;

int fdatasync(int fd) {
  int (*real)(int) = NULL;
  void *sym = dlsym(RTLD_NEXT, "fdatasync");
  char link[64], path[PATH_MAX];
  struct stat st;
  ssize_t n;
  int rc;

  memcpy(&real, &sym, sizeof sym);
  rc = real(fd);
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof path - 1);
  if (rc == 0 && n > 0) {
    path[n] = '\0';
    if (strcmp(path, watched) == 0 && fstat(fd, &st) == 0)
      __atomic_store_n(&synced_size, (long long)st.st_size, __ATOMIC_SEQ_CST);
  }
  return rc;
}

/* ---- fixture ------------------------------------------------------------ */

#define MAX_CALLS 16

typedef struct fixture {
  uv_loop_t loop;
  char dir[PATH_MAX];
  char path[PATH_MAX + 32];
  char log[PATH_MAX + 32];
  dead_letter *d;
  /* What the callback heard, in order. */
  uint64_t first[MAX_CALLS], last[MAX_CALLS], tag[MAX_CALLS];
  int calls;
  /* Whether the file's whole content was fdatasync'd at each call. */
  int durable_at_call[MAX_CALLS];
  int closes;
} fixture;

static void on_durable(dead_letter *d, uint64_t first, uint64_t last,
                       uint64_t tag, void *data) {
  fixture *fx = data;
  struct stat st;

  (void)d;
  ASSERT(fx->calls < MAX_CALLS);
  fx->first[fx->calls] = first;
  fx->last[fx->calls] = last;
  fx->tag[fx->calls] = tag;
  ASSERT_EQ(0, stat(fx->path, &st));
  fx->durable_at_call[fx->calls] =
      __atomic_load_n(&synced_size, __ATOMIC_SEQ_CST) == (long long)st.st_size;
  fx->calls++;
}

static void on_closed(void *data) {
  ((fixture *)data)->closes++;
}

static void setup(fixture *fx) {
  memset(fx, 0, sizeof *fx);
  ASSERT_EQ(0, uv_loop_init(&fx->loop));
  snprintf(fx->dir, sizeof fx->dir, "%s", test_tmpdir());
  snprintf(fx->path, sizeof fx->path, "%s/dead.ndjson", fx->dir);
  snprintf(fx->log, sizeof fx->log, "%s/tether.log", fx->dir);
  ASSERT(realpath(fx->dir, watched) != NULL);
  strcat(watched, "/dead.ndjson");
  __atomic_store_n(&synced_size, -1, __ATOMIC_SEQ_CST);
  ASSERT_EQ(0, log_open(fx->log));
  log_configure(LOG_DEBUG, LOG_FORMAT_TEXT);
}

static void open_writer(fixture *fx) {
  char err[512];
  int rc = dead_letter_open(&fx->loop, fx->path, "orders", "file", 5, 20,
                            on_durable, fx, &fx->d, err, sizeof err);

  if (rc != 0)
    test__fail(__FILE__, __LINE__, "open: %s", err);
}

static void teardown(fixture *fx) {
  if (fx->d != NULL)
    dead_letter_close(fx->d, on_closed, fx);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(fx->d != NULL ? 1 : 0, fx->closes);
  ASSERT_EQ(0, uv_loop_close(&fx->loop));
  log_open(NULL);
  log_configure(LOG_INFO, LOG_FORMAT_TEXT);
  test_rmtree(fx->dir);
}

/* An envelope line of seq, newline included. */
static const char *line_of(uint64_t seq) {
  static char text[256];

  snprintf(text, sizeof text,
           "{\"consumer\":\"orders\",\"seq\":%" PRIu64 ",\"cursor\":\"c%" PRIu64
           "\",\"event\":\"create\",\"data\":{\"n\":%" PRIu64 "}}\n",
           seq, seq, seq);
  return text;
}

/* Splits text into its lines, each parsed as one JSON object, and checks
 * record i is seq's with attempts and error. */
static void expect_record(const char *line, size_t len, uint64_t seq,
                          int attempts, const char *error) {
  json_error_t jerr;
  json_t *rec = json_loadb(line, len, 0, &jerr), *want;
  const char *env = line_of(seq);
  void *it;
  const char *order[] = { "consumer", "seq", "attempts", "error", "event" };
  size_t i = 0;

  if (rec == NULL)
    test__fail(__FILE__, __LINE__, "not JSON: %.*s", (int)len, line);
  ASSERT_STR_EQ("orders", json_string_value(json_object_get(rec, "consumer")));
  ASSERT_EQ((long long)seq, json_integer_value(json_object_get(rec, "seq")));
  ASSERT_EQ(attempts, json_integer_value(json_object_get(rec, "attempts")));
  ASSERT_STR_EQ(error, json_string_value(json_object_get(rec, "error")));
  want = json_loadb(env, strlen(env) - 1, 0, &jerr);
  ASSERT(want != NULL);
  ASSERT(json_equal(want, json_object_get(rec, "event")));
  json_decref(want);
  /* The fields come in the order exec has always written them. */
  for (it = json_object_iter(rec); it != NULL;
       it = json_object_iter_next(rec, it))
    ASSERT_STR_EQ(order[i++], json_object_iter_key(it));
  ASSERT_EQ(5, (int)i);
  json_decref(rec);
  /* The envelope is embedded as it came, byte for byte. */
  ASSERT(memmem(line, len, env, strlen(env) - 1) != NULL);
}

/* The lines of path, in lines[] (pointers into *text, which the caller
 * frees). Returns how many. */
static size_t read_lines(const char *path, char **text, const char **lines,
                         size_t *lens, size_t max) {
  char *p, *nl;
  size_t n = 0;

  *text = test_read_file(path, NULL);
  ASSERT(*text != NULL);
  for (p = *text; *p != '\0'; p = nl + 1) {
    nl = strchr(p, '\n');
    ASSERT(nl != NULL); /* every record ends its line */
    ASSERT(n < max);
    lines[n] = p;
    lens[n++] = (size_t)(nl - p);
  }
  return n;
}

/* ---- tests -------------------------------------------------------------- */

/* One record per line, in the order appended, each call's records named
 * by one callback with its tag, and only once they were fdatasync'd. */
static void test_records(void) {
  fixture fx;
  char lines3[1024], *text;
  const char *lines[8];
  size_t lens[8], n;

  setup(&fx);
  open_writer(&fx);
  ASSERT_EQ(0, dead_letter_append(fx.d, 7, 5, "boom \xc3\xa9", line_of(7),
                                  strlen(line_of(7)), 41));
  snprintf(lines3, sizeof lines3, "%s", line_of(10));
  strcat(lines3, line_of(11));
  strcat(lines3, line_of(12));
  /* The last line's newline is optional. */
  ASSERT_EQ(0, dead_letter_append(fx.d, 10, 2, "write x: No space left", lines3,
                                  strlen(lines3) - 1, 42));
  RUN_UNTIL(&fx.loop, fx.calls == 2, 10000);
  ASSERT_UEQ(7, fx.first[0]);
  ASSERT_UEQ(7, fx.last[0]);
  ASSERT_UEQ(41, fx.tag[0]);
  ASSERT_UEQ(10, fx.first[1]);
  ASSERT_UEQ(12, fx.last[1]);
  ASSERT_UEQ(42, fx.tag[1]);
  ASSERT_EQ(1, fx.durable_at_call[0]);
  ASSERT_EQ(1, fx.durable_at_call[1]);
  n = read_lines(fx.path, &text, lines, lens, 8);
  ASSERT_EQ(4, (int)n);
  expect_record(lines[0], lens[0], 7, 5, "boom \xc3\xa9");
  expect_record(lines[1], lens[1], 10, 2, "write x: No space left");
  expect_record(lines[2], lens[2], 11, 2, "write x: No space left");
  expect_record(lines[3], lens[3], 12, 2, "write x: No space left");
  free(text);
  ASSERT_UEQ(0, dead_letter_write_errors(fx.d));
  teardown(&fx);
}

/* A record cut by a crash gets a line of its own: the next one is whole
 * and parses. */
static void test_torn_tail(void) {
  static const char torn[] = "{\"consumer\":\"orders\",\"seq\":3,\"atte";
  fixture fx;
  const char *lines[8];
  size_t lens[8];
  char *text;

  setup(&fx);
  test_write_file(fx.path, torn, strlen(torn));
  open_writer(&fx);
  ASSERT_EQ(0, dead_letter_append(fx.d, 4, 1, "e", line_of(4),
                                  strlen(line_of(4)), 0));
  RUN_UNTIL(&fx.loop, fx.calls == 1, 10000);
  ASSERT_EQ(2, (int)read_lines(fx.path, &text, lines, lens, 8));
  ASSERT_MEM_EQ(torn, strlen(torn), lines[0], lens[0]);
  expect_record(lines[1], lens[1], 4, 1, "e");
  free(text);
  teardown(&fx);
}

/* SIGHUP after the file was moved away: the next records go into a new
 * file at the path. */
static void test_reopen(void) {
  fixture fx;
  char moved[PATH_MAX + 64], *text, *log;
  const char *lines[8];
  size_t lens[8];

  setup(&fx);
  snprintf(moved, sizeof moved, "%s.1", fx.path);
  open_writer(&fx);
  ASSERT_EQ(0, dead_letter_append(fx.d, 1, 1, "a", line_of(1),
                                  strlen(line_of(1)), 0));
  RUN_UNTIL(&fx.loop, fx.calls == 1, 10000);
  ASSERT_EQ(0, rename(fx.path, moved));
  dead_letter_reopen(fx.d);
  ASSERT_EQ(0, dead_letter_append(fx.d, 2, 1, "b", line_of(2),
                                  strlen(line_of(2)), 0));
  RUN_UNTIL(&fx.loop, fx.calls == 2, 10000);
  ASSERT_EQ(1, fx.durable_at_call[1]);
  ASSERT_EQ(1, (int)read_lines(moved, &text, lines, lens, 8));
  expect_record(lines[0], lens[0], 1, 1, "a");
  free(text);
  ASSERT_EQ(1, (int)read_lines(fx.path, &text, lines, lens, 8));
  expect_record(lines[0], lens[0], 2, 1, "b");
  free(text);
  log = test_read_file(fx.log, NULL);
  ASSERT_CONTAINS(log, "info reopened the dead-letter file consumer=orders "
                       "sink=file path=");
  free(log);
  teardown(&fx);
}

/* A write that fails (the file may grow no more) is taken back, retried
 * with backoff and reported only once it went through; records appended
 * meanwhile wait behind it. */
static void test_failed_write_is_retried(void) {
  fixture fx;
  struct rlimit old, lim;
  char pad[8192], *text, *log;
  const char *lines[8];
  size_t lens[8], n;
  struct stat st;

  setup(&fx);
  signal(SIGXFSZ, SIG_IGN);
  memset(pad, 'x', sizeof pad - 1);
  pad[sizeof pad - 2] = '\n';
  pad[sizeof pad - 1] = '\0';
  test_write_file(fx.path, pad, strlen(pad));
  open_writer(&fx);
  ASSERT_EQ(0, getrlimit(RLIMIT_FSIZE, &old));
  lim = old;
  lim.rlim_cur = strlen(pad) + 100; /* above the log file, below a record */
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &lim));
  ASSERT_EQ(0, dead_letter_append(fx.d, 1, 3, "first", line_of(1),
                                  strlen(line_of(1)), 0));
  RUN_UNTIL(&fx.loop, dead_letter_write_errors(fx.d) >= 2, 10000);
  ASSERT_EQ(0, dead_letter_append(fx.d, 2, 3, "second", line_of(2),
                                  strlen(line_of(2)), 0));
  RUN_FOR(&fx.loop, 50);
  ASSERT_EQ(0, fx.calls);
  /* Nothing partial was left behind. */
  ASSERT_EQ(0, stat(fx.path, &st));
  ASSERT_EQ((long long)strlen(pad), (long long)st.st_size);
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &old));
  RUN_UNTIL(&fx.loop, fx.calls == 2, 10000);
  ASSERT_UEQ(1, fx.first[0]);
  ASSERT_UEQ(2, fx.first[1]);
  ASSERT_EQ(1, fx.durable_at_call[0]);
  n = read_lines(fx.path, &text, lines, lens, 8);
  ASSERT_EQ(3, (int)n);
  expect_record(lines[1], lens[1], 1, 3, "first");
  expect_record(lines[2], lens[2], 2, 3, "second");
  free(text);
  log = test_read_file(fx.log, NULL);
  ASSERT_CONTAINS(log, "error cannot write the dead-letter file; trying again "
                       "consumer=orders sink=file err=\"write ");
  ASSERT_CONTAINS(log, "File too large\" retry_in_ms=");
  free(log);
  teardown(&fx);
}

/* Closing while an operation runs: it finishes, no callback comes after
 * the close, and the close callback runs once. */
static void test_close_drops_callbacks(void) {
  fixture fx;

  setup(&fx);
  open_writer(&fx);
  ASSERT_EQ(0, dead_letter_append(fx.d, 1, 1, "a", line_of(1),
                                  strlen(line_of(1)), 0));
  dead_letter_close(fx.d, on_closed, &fx);
  fx.d = NULL;
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, fx.closes);
  ASSERT_EQ(0, fx.calls);
  fx.closes = 0;
  teardown(&fx);
}

static void test_open_error(void) {
  fixture fx;
  char err[512], bad[PATH_MAX + 64];
  dead_letter *d = NULL;

  setup(&fx);
  snprintf(bad, sizeof bad, "%s/missing/dead.ndjson", fx.dir);
  ASSERT_EQ(UV_ENOENT, dead_letter_open(&fx.loop, bad, "orders", "file", 5, 20,
                                        on_durable, &fx, &d, err, sizeof err));
  ASSERT_CONTAINS(err, "cannot open the dead-letter file ");
  ASSERT_CONTAINS(err, "/missing/dead.ndjson: No such file or directory");
  ASSERT(d == NULL);
  teardown(&fx);
}

static const test_case tests[] = {
  TEST(test_records),
  TEST(test_torn_tail),
  TEST(test_reopen),
  TEST(test_failed_write_is_retried),
  TEST(test_close_drops_callbacks),
  TEST(test_open_error),
  { NULL, NULL },
};

TEST_MAIN(tests)
