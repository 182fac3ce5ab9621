#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>

#include <uv.h>

#include "daemon/registry.h"
#include "tests/unit/test.h"

typedef struct result {
  int calls;
  int status; /* sink_outcome for writes, errno status for syncs */
  char msg[512];
} result;

static void on_write(sink *s, sink_outcome outcome, const char *msg,
                     void *data) {
  result *r = data;

  (void)s;
  r->calls++;
  r->status = (int)outcome;
  snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
}

static void on_sync(sink *s, int status, const char *msg, void *data) {
  result *r = data;

  (void)s;
  r->calls++;
  r->status = status;
  snprintf(r->msg, sizeof r->msg, "%s", msg ? msg : "");
}

static int closed_calls;

static void on_close(void *data) {
  (void)data;
  closed_calls++;
}

typedef struct fixture {
  uv_loop_t loop;
  char dir[PATH_MAX];
  char path[PATH_MAX + 64];
  char conf[256];
  const sink_type *type;
  sink *s;
} fixture;

static void set_option(fixture *f, const char *name, const char *value) {
  char err[256];
  const option *o = options_find(f->type->options, name);

  ASSERT(o != NULL);
  ASSERT_EQ(0, options_parse_value(o, value, f->conf, err, sizeof err));
}

static void setup(fixture *f) {
  memset(f, 0, sizeof *f);
  ASSERT_EQ(0, uv_loop_init(&f->loop));
  snprintf(f->dir, sizeof f->dir, "%s", test_tmpdir());
  snprintf(f->path, sizeof f->path, "%s/out.ndjson", f->dir);
  f->type = registry_sink("file");
  ASSERT(f->type != NULL);
  ASSERT(f->type->conf_size <= sizeof f->conf);
  ASSERT_EQ(0, options_set_defaults(f->type->options, f->conf));
}

static void open_sink(fixture *f) {
  char err[512];
  int rc = f->type->open(&f->loop, f->path, f->conf, NULL, "test", &f->s, err,
                         sizeof err);

  if (rc != 0)
    test__fail(__FILE__, __LINE__, "open: %s", err);
}

static void write_batch(fixture *f, const char *lines, result *r) {
  sink_batch b = { lines, strlen(lines), 1, 1 };

  memset(r, 0, sizeof *r);
  f->type->write(f->s, &b, on_write, r);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, r->calls);
}

static void sync_sink(fixture *f) {
  result r;

  memset(&r, 0, sizeof r);
  f->type->sync(f->s, on_sync, &r);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, r.calls);
  ASSERT_EQ(0, r.status);
}

static void teardown(fixture *f) {
  closed_calls = 0;
  if (f->s != NULL) {
    f->type->close(f->s, on_close, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    ASSERT_EQ(1, closed_calls);
  }
  ASSERT_EQ(0, uv_loop_close(&f->loop));
  test_rmtree(f->dir);
}

static void assert_file(const char *path, const char *want) {
  char *got = test_read_file(path, NULL);

  ASSERT_STR_EQ(want, got);
  free(got);
}

static void test_write_and_sync(void) {
  fixture f;
  result r;

  setup(&f);
  open_sink(&f);
  write_batch(&f, "{\"seq\":1}\n{\"seq\":2}\n", &r);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  write_batch(&f, "{\"seq\":3}\n", &r);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  sync_sink(&f);
  assert_file(f.path, "{\"seq\":1}\n{\"seq\":2}\n{\"seq\":3}\n");
  teardown(&f);
}

static void test_appends_to_existing_file(void) {
  fixture f;
  result r;

  setup(&f);
  test_write_file(f.path, "old\n", 4);
  open_sink(&f);
  write_batch(&f, "new\n", &r);
  assert_file(f.path, "old\nnew\n");
  teardown(&f);
}

static void test_partial_line_is_repaired(void) {
  fixture f;
  result r;
  char big[10000];

  setup(&f);
  test_write_file(f.path, "a\nb\npartial", 11);
  open_sink(&f);
  assert_file(f.path, "a\nb\n");
  write_batch(&f, "c\n", &r);
  assert_file(f.path, "a\nb\nc\n");
  teardown(&f);

  /* A torn line longer than one read chunk, after a whole line. */
  setup(&f);
  memset(big, 'x', sizeof big);
  big[0] = 'L';
  big[1] = '\n';
  test_write_file(f.path, big, sizeof big);
  open_sink(&f);
  assert_file(f.path, "L\n");
  teardown(&f);

  /* No newline at all: the whole file was one torn line. */
  setup(&f);
  test_write_file(f.path, "torn", 4);
  open_sink(&f);
  assert_file(f.path, "");
  teardown(&f);
}

static void test_rotation_by_size(void) {
  char p1[PATH_MAX + 128], p2[PATH_MAX + 128], p3[PATH_MAX + 128];
  fixture f;
  result r;

  setup(&f);
  set_option(&f, "rotate_size", "10");
  set_option(&f, "rotate_keep", "2");
  snprintf(p1, sizeof p1, "%s.1", f.path);
  snprintf(p2, sizeof p2, "%s.2", f.path);
  snprintf(p3, sizeof p3, "%s.3", f.path);
  open_sink(&f);
  write_batch(&f, "1111\n2222\n", &r); /* exactly 10: no rotation */
  assert_file(f.path, "1111\n2222\n");
  write_batch(&f, "3333\n", &r); /* would pass 10: rotate first */
  ASSERT_EQ(SINK_DELIVERED, r.status);
  assert_file(p1, "1111\n2222\n");
  assert_file(f.path, "3333\n");
  write_batch(&f, "4444\n", &r);
  write_batch(&f, "5555\n", &r);
  assert_file(p2, "1111\n2222\n");
  assert_file(p1, "3333\n4444\n");
  assert_file(f.path, "5555\n");
  write_batch(&f, "666666\n", &r);
  write_batch(&f, "777777\n", &r);
  /* Only rotate_keep old files are kept. */
  assert_file(p2, "5555\n");
  assert_file(p1, "666666\n");
  assert_file(f.path, "777777\n");
  ASSERT(access(p3, F_OK) != 0);
  teardown(&f);
}

/* A write that fails half-way is cut back, so the retry appends whole lines
 * and no torn line is left in the middle of the file. */
/* A batch bigger than rotate_size is split between whole lines; a line
 * longer than rotate_size gets a file of its own. */
static void test_rotation_splits_batches(void) {
  char p1[PATH_MAX + 128], p2[PATH_MAX + 128], p3[PATH_MAX + 128];
  fixture f;
  result r;

  setup(&f);
  set_option(&f, "rotate_size", "10");
  set_option(&f, "rotate_keep", "5");
  snprintf(p1, sizeof p1, "%s.1", f.path);
  snprintf(p2, sizeof p2, "%s.2", f.path);
  snprintf(p3, sizeof p3, "%s.3", f.path);
  open_sink(&f);
  write_batch(&f, "1111\n2222\n3333\n4444\nlong-line-xyz\n5\n", &r);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  assert_file(p3, "1111\n2222\n");
  assert_file(p2, "3333\n4444\n");
  assert_file(p1, "long-line-xyz\n");
  assert_file(f.path, "5\n");
  teardown(&f);
}

static void test_failed_write_is_cut_back(void) {
  struct rlimit old, lim;
  char line[11], batch[201], *got;
  fixture f;
  result r;
  size_t len = 0;
  int i;

  setup(&f);
  signal(SIGXFSZ, SIG_IGN);
  memset(batch, 0, sizeof batch);
  for (i = 0; i < 20; i++) {
    snprintf(line, sizeof line, "line-%03d\n", i);
    strcat(batch, line);
  }
  open_sink(&f);
  write_batch(&f, "0123456789012345678\n", &r);
  ASSERT_EQ(0, getrlimit(RLIMIT_FSIZE, &old));
  lim = old;
  lim.rlim_cur = 100;
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &lim));
  write_batch(&f, batch, &r);
  ASSERT_EQ(0, setrlimit(RLIMIT_FSIZE, &old));
  ASSERT_EQ(SINK_RETRY, r.status);
  ASSERT_CONTAINS(r.msg, "write ");
  ASSERT_CONTAINS(r.msg, "File too large");
  assert_file(f.path, "0123456789012345678\n");
  /* Space is back: the same batch goes through whole. */
  write_batch(&f, batch, &r);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  got = test_read_file(f.path, &len);
  ASSERT_EQ(20 + strlen(batch), len);
  ASSERT_STR_EQ(batch, got + 20);
  free(got);
  teardown(&f);
}

static void test_reopen_after_move(void) {
  char moved[PATH_MAX + 128];
  fixture f;
  result r;

  setup(&f);
  open_sink(&f);
  write_batch(&f, "a\n", &r);
  snprintf(moved, sizeof moved, "%s.old", f.path);
  ASSERT_EQ(0, rename(f.path, moved));
  f.type->reopen(f.s);
  write_batch(&f, "b\n", &r);
  assert_file(moved, "a\n");
  assert_file(f.path, "b\n");
  teardown(&f);
}

static void test_open_error_names_path(void) {
  char err[512];
  fixture f;
  sink *s = NULL;

  setup(&f);
  snprintf(f.path, sizeof f.path, "%s/missing/out.ndjson", f.dir);
  ASSERT_EQ(-ENOENT, f.type->open(&f.loop, f.path, f.conf, NULL, "t", &s, err,
                                  sizeof err));
  ASSERT_CONTAINS(err, "cannot open ");
  ASSERT_CONTAINS(err, "/missing/out.ndjson: No such file or directory");
  ASSERT(s == NULL);
  teardown(&f);
}

static void test_close_waits_for_write(void) {
  fixture f;
  result r;
  sink_batch b = { "x\n", 2, 1, 1 };

  setup(&f);
  open_sink(&f);
  memset(&r, 0, sizeof r);
  closed_calls = 0;
  f.type->write(f.s, &b, on_write, &r);
  f.type->close(f.s, on_close, NULL);
  f.s = NULL;
  uv_run(&f.loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, r.calls);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  ASSERT_EQ(1, closed_calls);
  assert_file(f.path, "x\n");
  teardown(&f);
}

/* Redirects fd 1 for the stdout sink; returns the saved descriptor. */
static int redirect_stdout(int fd) {
  int saved;

  fflush(stdout);
  saved = dup(STDOUT_FILENO);
  ASSERT(saved >= 0);
  ASSERT_EQ(STDOUT_FILENO, dup2(fd, STDOUT_FILENO));
  return saved;
}

static void restore_stdout(int saved) {
  dup2(saved, STDOUT_FILENO);
  close(saved);
}

static void test_stdout_into_file(void) {
  fixture f;
  result r;
  char err[256];
  int fd, saved;

  setup(&f);
  f.type = registry_sink("stdout");
  fd = open(f.path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT(fd >= 0);
  saved = redirect_stdout(fd);
  close(fd);
  if (f.type->open(&f.loop, NULL, NULL, NULL, "t", &f.s, err, sizeof err) !=
      0) {
    restore_stdout(saved);
    test__fail(__FILE__, __LINE__, "open: %s", err);
  }
  write_batch(&f, "{\"a\":1}\n", &r);
  sync_sink(&f);
  restore_stdout(saved);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  assert_file(f.path, "{\"a\":1}\n");
  teardown(&f);
}

static void test_stdout_closed_reader_is_fatal(void) {
  fixture f;
  result r;
  char err[256];
  int p[2], saved;

  setup(&f);
  signal(SIGPIPE, SIG_IGN);
  f.type = registry_sink("stdout");
  ASSERT_EQ(0, pipe(p));
  close(p[0]);
  saved = redirect_stdout(p[1]);
  close(p[1]);
  ASSERT_EQ(
      0, f.type->open(&f.loop, NULL, NULL, NULL, "t", &f.s, err, sizeof err));
  write_batch(&f, "{\"a\":1}\n", &r);
  restore_stdout(saved);
  ASSERT_EQ(SINK_FATAL, r.status);
  ASSERT_CONTAINS(r.msg, "write stdout: Broken pipe");
  teardown(&f);
}

/* Runs a sync to its end and returns its status, with its message in r. */
static int sync_status(fixture *f, result *r) {
  memset(r, 0, sizeof *r);
  f->type->sync(f->s, on_sync, r);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, r->calls);
  return r->status;
}

/* A file removed under the sink: writes into the open descriptor still
 * succeed, the sync says the file is gone (so no commit covers those
 * lines) and opens a new one at the path for what comes next. */
static void test_removed_file_detected_at_sync(void) {
  fixture f;
  result r;

  setup(&f);
  open_sink(&f);
  write_batch(&f, "a\n", &r);
  sync_sink(&f);
  ASSERT_EQ(0, unlink(f.path));
  write_batch(&f, "b\n", &r);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  ASSERT_EQ(SINK_EREMOVED, sync_status(&f, &r));
  ASSERT_CONTAINS(r.msg, "out.ndjson was removed; writing a new file there");
  assert_file(f.path, "");
  write_batch(&f, "a\n", &r);
  ASSERT_EQ(SINK_DELIVERED, r.status);
  ASSERT_EQ(0, sync_status(&f, &r));
  assert_file(f.path, "a\n");
  teardown(&f);
}

/* A rename (logrotate before its SIGHUP) keeps the data where it went:
 * nothing is lost, so the sync succeeds and no new file appears. */
static void test_renamed_file_is_not_removed(void) {
  char moved[PATH_MAX + 128];
  fixture f;
  result r;

  setup(&f);
  open_sink(&f);
  write_batch(&f, "a\n", &r);
  snprintf(moved, sizeof moved, "%s.1", f.path);
  ASSERT_EQ(0, rename(f.path, moved));
  write_batch(&f, "b\n", &r);
  ASSERT_EQ(0, sync_status(&f, &r));
  ASSERT(access(f.path, F_OK) != 0);
  assert_file(moved, "a\nb\n");
  teardown(&f);
}

/* A batch queued behind the sync that finds the file removed is not
 * written into the new file, where it would stand ahead of the events
 * delivered again: it is answered retry, untouched. */
static void test_write_behind_removal_is_refused(void) {
  sink_batch b = { "late\n", 5, 7, 7 };
  fixture f;
  result sr, wr;

  setup(&f);
  open_sink(&f);
  write_batch(&f, "a\n", &wr);
  ASSERT_EQ(0, unlink(f.path));
  memset(&sr, 0, sizeof sr);
  memset(&wr, 0, sizeof wr);
  f.type->sync(f.s, on_sync, &sr);
  f.type->write(f.s, &b, on_write, &wr);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, sr.calls);
  ASSERT_EQ(SINK_EREMOVED, sr.status);
  ASSERT_EQ(1, wr.calls);
  ASSERT_EQ(SINK_RETRY, wr.status);
  ASSERT_CONTAINS(wr.msg, "not written: the file was removed");
  assert_file(f.path, "");
  teardown(&f);
}

/* Rotation and SIGHUP leave a removed file to the sync: a rotation must
 * not rename a path that is no longer its file, and neither may start a
 * new file before the consumer has gone back to its committed cursor. */
static void test_rotation_and_reopen_leave_removal_to_sync(void) {
  char p1[PATH_MAX + 128];
  fixture f;
  result r;

  setup(&f);
  set_option(&f, "rotate_size", "10");
  snprintf(p1, sizeof p1, "%s.1", f.path);
  open_sink(&f);
  write_batch(&f, "1111\n2222\n", &r);
  ASSERT_EQ(0, unlink(f.path));
  write_batch(&f, "3333\n", &r); /* would rotate */
  ASSERT_EQ(SINK_DELIVERED, r.status);
  f.type->reopen(f.s);
  write_batch(&f, "4444\n", &r);
  ASSERT(access(p1, F_OK) != 0);
  ASSERT(access(f.path, F_OK) != 0);
  ASSERT_EQ(SINK_EREMOVED, sync_status(&f, &r));
  assert_file(f.path, "");
  /* Rotation by size goes on as before in the new file. */
  write_batch(&f, "5555\n6666\n", &r);
  write_batch(&f, "7777\n", &r);
  assert_file(p1, "5555\n6666\n");
  assert_file(f.path, "7777\n");
  ASSERT_EQ(0, sync_status(&f, &r));
  teardown(&f);
}

static const test_case tests[] = {
  TEST(test_write_and_sync),
  TEST(test_appends_to_existing_file),
  TEST(test_partial_line_is_repaired),
  TEST(test_rotation_by_size),
  TEST(test_rotation_splits_batches),
  TEST(test_failed_write_is_cut_back),
  TEST(test_reopen_after_move),
  TEST(test_removed_file_detected_at_sync),
  TEST(test_renamed_file_is_not_removed),
  TEST(test_write_behind_removal_is_refused),
  TEST(test_rotation_and_reopen_leave_removal_to_sync),
  TEST(test_open_error_names_path),
  TEST(test_close_waits_for_write),
  TEST(test_stdout_into_file),
  TEST(test_stdout_closed_reader_is_fatal),
  { NULL, NULL },
};

TEST_MAIN(tests)
