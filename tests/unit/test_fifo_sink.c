/* The fifo sink against real named pipes. The reader lives in the test's
 * own loop (a timer reading a non-blocking descriptor), so the order of
 * what the writer and the reader do is under the test's control. */
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <uv.h>

#include "daemon/registry.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

#define MAX_STATES 16
#define MAX_SEQ    10000

struct reader;

/* A fake consumer: counts write outcomes, records the states and which
 * events are reported delivered. With `lines` set (the batch of
 * make_lines), each report is checked against what the readers hold: an
 * event is delivered only once a reader has read its line whole. */
typedef struct fake {
  int write_calls;
  sink_outcome outcome;
  char msg[256];
  int sync_calls, sync_status;
  int close_calls;
  const char *states[MAX_STATES];
  int n_states;
  unsigned char delivered[MAX_SEQ + 1]; /* times each seq was reported */
  uint64_t n_delivered;                 /* distinct seqs reported */
  const char *lines;                    /* seq N is line N-1 of lines */
  size_t width;
  struct reader *readers[2];
  unsigned char have[MAX_SEQ + 1]; /* seqs some reader has whole */
  int early;                       /* reports of a line no reader had whole */
} fake;

static void on_write(sink *s, sink_outcome outcome, const char *msg,
                     void *data) {
  fake *f = data;

  (void)s;
  f->write_calls++;
  f->outcome = outcome;
  snprintf(f->msg, sizeof f->msg, "%s", msg ? msg : "");
}

static void on_sync(sink *s, int status, const char *msg, void *data) {
  fake *f = data;

  (void)s, (void)msg;
  f->sync_calls++;
  f->sync_status = status;
}

static void on_state(sink *s, const char *state, void *data) {
  fake *f = data;

  (void)s;
  if (f->n_states < MAX_STATES)
    f->states[f->n_states++] = state;
}

static void on_close(void *data) {
  fake *f = data;

  f->close_calls++;
}

static bool read_whole(fake *f, uint64_t seq);

static void on_delivered(sink *s, uint64_t first, uint64_t last, void *data) {
  fake *f = data;
  uint64_t seq;

  (void)s;
  ASSERT(first >= 1 && first <= last && last <= MAX_SEQ);
  for (seq = first; seq <= last; seq++) {
    if (f->delivered[seq]++ == 0)
      f->n_delivered++;
    if (f->lines != NULL && !read_whole(f, seq))
      f->early++;
  }
}

/* A reader of the FIFO, driven by a timer: every tick it reads at most
 * per_tick bytes (0: it reads nothing). */
typedef struct reader {
  int fd;
  uv_timer_t tick;
  size_t per_tick;
  char *data;
  size_t len, cap;
  size_t scanned; /* by scan_readers */
} reader;

static void reader_read(reader *r, size_t max) {
  char chunk[16384];
  size_t want;
  ssize_t n;

  while (max > 0 && r->fd >= 0) {
    want = max < sizeof chunk ? max : sizeof chunk;
    n = read(r->fd, chunk, want);
    if (n <= 0)
      return;
    if (r->len + (size_t)n > r->cap) {
      r->cap = (r->len + (size_t)n) * 2;
      r->data = realloc(r->data, r->cap + 1);
      if (r->data == NULL)
        abort();
    }
    memcpy(r->data + r->len, chunk, (size_t)n);
    r->len += (size_t)n;
    r->data[r->len] = '\0';
    max -= (size_t)n;
  }
}

static void on_reader_tick(uv_timer_t *t) {
  reader *r = t->data;

  reader_read(r, r->per_tick);
}

/* Notes the whole lines the readers got since the last look. A reader
 * starts at a line boundary, or (one that opened the FIFO before the sink
 * noticed the last one leave) with the tail of a line, which is no line
 * of the batch and is skipped. Each line starts with its index. */
static void scan_readers(fake *f) {
  size_t i, idx;
  reader *r;
  char *nl;

  for (i = 0; i < 2; i++) {
    if ((r = f->readers[i]) == NULL)
      continue;
    while ((nl = memchr(r->data + r->scanned, '\n', r->len - r->scanned))) {
      size_t len = (size_t)(nl - (r->data + r->scanned)) + 1;

      if (len == f->width && sscanf(r->data + r->scanned, "%5zu", &idx) == 1 &&
          idx < MAX_SEQ &&
          memcmp(r->data + r->scanned, f->lines + idx * f->width, len) == 0)
        f->have[idx + 1] = 1;
      r->scanned += len;
    }
  }
}

/* The readers whose data on_delivered checks reports against; they read
 * nothing until opened. */
static void watch_readers(fake *f, reader *a, reader *b) {
  memset(a, 0, sizeof *a);
  f->readers[0] = a;
  if (b != NULL) {
    memset(b, 0, sizeof *b);
    f->readers[1] = b;
  }
}

static bool read_whole(fake *f, uint64_t seq) {
  scan_readers(f);
  return f->have[seq] != 0;
}

static void reader_open(uv_loop_t *loop, reader *r, const char *path,
                        size_t per_tick) {
  memset(r, 0, sizeof *r);
  r->fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT(r->fd >= 0);
  r->per_tick = per_tick;
  uv_timer_init(loop, &r->tick);
  r->tick.data = r;
  uv_timer_start(&r->tick, on_reader_tick, 1, 1);
}

static void reader_close_fd(reader *r) {
  if (r->fd >= 0)
    close(r->fd);
  r->fd = -1;
}

/* Closes the descriptor and the timer; the data stays for checks. */
static void reader_close(reader *r) {
  reader_close_fd(r);
  uv_close((uv_handle_t *)&r->tick, NULL);
}

typedef struct fixture {
  uv_loop_t loop;
  char dir[PATH_MAX];
  char path[PATH_MAX + 64];
  char conf[256];
  const sink_type *type;
  sink *s;
  fake f;
  uint64_t next_seq; /* of the next batch's first line */
} fixture;

static void set_option(fixture *fx, const char *name, const char *value) {
  char err[256];
  const option *o = options_find(fx->type->options, name);

  ASSERT(o != NULL);
  ASSERT_EQ(0, options_parse_value(o, value, fx->conf, err, sizeof err));
}

static void setup(fixture *fx) {
  memset(fx, 0, sizeof *fx);
  signal(SIGPIPE, SIG_IGN);
  ASSERT_EQ(0, uv_loop_init(&fx->loop));
  snprintf(fx->dir, sizeof fx->dir, "%s", test_tmpdir());
  snprintf(fx->path, sizeof fx->path, "%s/events.pipe", fx->dir);
  fx->type = registry_sink("fifo");
  ASSERT(fx->type != NULL);
  ASSERT(fx->type->conf_size <= sizeof fx->conf);
  ASSERT_EQ(0, options_set_defaults(fx->type->options, fx->conf));
  set_option(fx, "fifo_reopen_interval", "5ms");
  fx->next_seq = 1;
}

static void open_sink(fixture *fx) {
  char err[512];
  int rc = fx->type->open(&fx->loop, fx->path, fx->conf, NULL, "test", &fx->s,
                          err, sizeof err);

  if (rc != 0)
    test__fail(__FILE__, __LINE__, "open: %s", err);
  fx->s->report.state = on_state;
  fx->s->report.delivered = on_delivered;
  fx->s->report.data = &fx->f;
}

/* Writes whole lines, numbered on from the last batch. */
static void write_batch(fixture *fx, const char *data, size_t len) {
  sink_batch b = { data, len, fx->next_seq, fx->next_seq };
  size_t i;

  for (i = 0; i < len; i++)
    if (data[i] == '\n')
      fx->next_seq++;
  b.last_seq = fx->next_seq - 1;
  fx->type->write(fx->s, &b, on_write, &fx->f);
}

/* Whether events 1..n are reported delivered, each at least once. */
static bool all_delivered(const fake *f, uint64_t n) {
  uint64_t seq;

  for (seq = 1; seq <= n; seq++)
    if (f->delivered[seq] == 0)
      return false;
  return true;
}

static bool written(void *arg) {
  return ((fake *)arg)->write_calls > 0;
}

static bool waiting_reported(void *arg) {
  fake *f = arg;

  return f->n_states > 0 && f->states[f->n_states - 1] != NULL &&
         strcmp(f->states[f->n_states - 1], "waiting_for_reader") == 0;
}

static bool ready_reported(void *arg) {
  fake *f = arg;

  return f->n_states > 0 && f->states[f->n_states - 1] == NULL;
}

static void teardown(fixture *fx) {
  if (fx->s != NULL) {
    fx->type->close(fx->s, on_close, &fx->f);
    fx->s = NULL;
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    ASSERT_EQ(1, fx->f.close_calls);
  }
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(0, uv_loop_close(&fx->loop));
  test_rmtree(fx->dir);
}

/* n lines of exactly width bytes each, newline included: "00042 xxx...\n". */
static char *make_lines(size_t n, size_t width) {
  char *p = malloc(n * width + 1);
  size_t i;

  ASSERT(p != NULL);
  for (i = 0; i < n; i++) {
    char *l = p + i * width;

    memset(l, 'x', width - 1);
    snprintf(l, 7, "%05zu ", i);
    l[6] = 'x';
    l[width - 1] = '\n';
  }
  p[n * width] = '\0';
  return p;
}

static void test_creates_fifo_with_mode(void) {
  fixture fx;
  struct stat st;

  setup(&fx);
  set_option(&fx, "fifo_mode", "0640");
  open_sink(&fx);
  ASSERT_EQ(0, stat(fx.path, &st));
  ASSERT(S_ISFIFO(st.st_mode));
  ASSERT_EQ(0640, st.st_mode & 0777);
  teardown(&fx);
}

static void test_regular_file_is_an_open_error(void) {
  fixture fx;
  char err[512];
  sink *s = NULL;

  setup(&fx);
  test_write_file(fx.path, "x\n", 2);
  ASSERT_EQ(UV_EEXIST, fx.type->open(&fx.loop, fx.path, fx.conf, NULL, "t", &s,
                                     err, sizeof err));
  ASSERT_CONTAINS(err, "/events.pipe exists and is not a FIFO");
  ASSERT(s == NULL);
  snprintf(fx.path, sizeof fx.path, "%s/missing/events.pipe", fx.dir);
  ASSERT_EQ(UV_ENOENT, fx.type->open(&fx.loop, fx.path, fx.conf, NULL, "t", &s,
                                     err, sizeof err));
  ASSERT_CONTAINS(err, "/missing/events.pipe: No such file or directory");
  teardown(&fx);
}

/* No reader: the batch waits, the state says why; a reader comes and the
 * batch is written, delivered once read, and the state clears. */
static void test_waits_for_reader(void) {
  fixture fx;
  reader r;
  const char *lines = "{\"seq\":1}\n{\"seq\":2}\n";

  setup(&fx);
  open_sink(&fx);
  RUN_UNTIL(&fx.loop, waiting_reported(&fx.f), 2000);
  write_batch(&fx, lines, strlen(lines));
  RUN_FOR(&fx.loop, 50);
  ASSERT_EQ(0, fx.f.write_calls);
  reader_open(&fx.loop, &r, fx.path, SIZE_MAX);
  RUN_UNTIL(&fx.loop, written(&fx.f), 2000);
  ASSERT_EQ(SINK_ACCEPTED, fx.f.outcome);
  ASSERT(ready_reported(&fx.f));
  ASSERT_EQ(2, fx.f.n_states);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 2), 2000);
  ASSERT_STR_EQ(lines, r.data);
  reader_close(&r);
  free(r.data);
  teardown(&fx);
}

/* The reader leaves while the idle sink holds the pipe: the sink notices,
 * waits, and writes to the next reader. */
static void test_reader_leaves_while_idle(void) {
  fixture fx;
  reader r1, r2;

  setup(&fx);
  ASSERT_EQ(0, mkfifo(fx.path, 0600)); /* an existing FIFO is used */
  reader_open(&fx.loop, &r1, fx.path, SIZE_MAX);
  open_sink(&fx);
  write_batch(&fx, "a\n", 2);
  RUN_UNTIL(&fx.loop, written(&fx.f), 2000);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 1), 2000); /* it has the line */
  reader_close(&r1);
  RUN_UNTIL(&fx.loop, waiting_reported(&fx.f), 2000);
  reader_open(&fx.loop, &r2, fx.path, SIZE_MAX);
  RUN_UNTIL(&fx.loop, ready_reported(&fx.f), 2000);
  fx.f.write_calls = 0;
  write_batch(&fx, "b\n", 2);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 2), 2000);
  ASSERT_EQ(1, fx.f.delivered[1]);
  ASSERT_STR_EQ("a\n", r1.data);
  ASSERT_STR_EQ("b\n", r2.data);
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  teardown(&fx);
}

/* The reader drains the pipe, which ends in the middle of a line, and
 * leaves before the sink looked. The next reader gets that line whole, and
 * between them every line arrives once: what the first read is reported
 * when it leaves. */
static void test_reader_leaves_mid_line(void) {
  const size_t n = 3000, width = 99; /* 297000 bytes; 65536 % 99 != 0 */
  fixture fx;
  reader r1, r2;
  char *lines = make_lines(n, width), *cut;
  size_t whole1;
  sink_stats st;

  setup(&fx);
  fx.f.lines = lines;
  fx.f.width = width;
  watch_readers(&fx.f, &r1, &r2);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r1, fx.path, 0); /* reads nothing yet */
  open_sink(&fx);
  write_batch(&fx, lines, n * width);
  RUN_FOR(&fx.loop, 30); /* the pipe fills up */
  ASSERT_EQ(0, fx.f.write_calls);
  ASSERT_EQ(0, fx.f.n_delivered);
  reader_read(&r1, SIZE_MAX);
  ASSERT(r1.len > 0);
  reader_close(&r1);
  /* The pipe held a cut line: the first reader has its head only. */
  ASSERT(r1.len % width != 0);
  whole1 = r1.len - r1.len % width;
  RUN_UNTIL(&fx.loop, waiting_reported(&fx.f), 2000);
  ASSERT_EQ(0, fx.f.write_calls);
  ASSERT_EQ(whole1 / width, fx.f.n_delivered);
  reader_open(&fx.loop, &r2, fx.path, SIZE_MAX);
  RUN_UNTIL(&fx.loop, written(&fx.f), 5000);
  ASSERT_EQ(SINK_ACCEPTED, fx.f.outcome);
  memset(&st, 0, sizeof st);
  fx.type->stats(fx.s, &st);
  ASSERT_EQ(1, st.write_errors);
  ASSERT_EQ(1, st.redelivered);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, n), 5000);
  ASSERT_EQ(0, fx.f.early);
  ASSERT_EQ(n, fx.f.n_delivered);
  /* The second reader starts with the line that was cut, whole. */
  ASSERT_EQ(n * width - whole1, r2.len);
  ASSERT_MEM_EQ(lines + whole1, n * width - whole1, r2.data, r2.len);
  cut = r1.data + whole1;
  ASSERT_MEM_EQ(lines + whole1, r1.len - whole1, cut, r1.len - whole1);
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  free(lines);
  teardown(&fx);
}

typedef struct slow_check {
  fixture *fx;
  reader *r;
  size_t total;
  bool early; /* the write completed with more than a pipe's worth unread */
} slow_check;

static bool slow_done(void *arg) {
  slow_check *c = arg;

  if (c->fx->f.write_calls > 0 && c->r->len + 65536 * 2 < c->total)
    c->early = true;
  return c->r->len == c->total;
}

/* A batch far bigger than the pipe, a reader taking 8 KiB per
 * millisecond: the write stays pending until the pipe took the rest. */
static void test_slow_reader_big_batch(void) {
  const size_t n = 10000, width = 100; /* 1 MB */
  fixture fx;
  reader r;
  char *lines = make_lines(n, width);
  slow_check c;

  setup(&fx);
  fx.f.lines = lines;
  fx.f.width = width;
  watch_readers(&fx.f, &r, NULL);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r, fx.path, 8192);
  open_sink(&fx);
  write_batch(&fx, lines, n * width);
  c.fx = &fx;
  c.r = &r;
  c.total = n * width;
  c.early = false;
  RUN_UNTIL(&fx.loop, slow_done(&c), 20000);
  ASSERT(!c.early);
  ASSERT_EQ(1, fx.f.write_calls);
  ASSERT_EQ(SINK_ACCEPTED, fx.f.outcome);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, n), 5000);
  ASSERT_EQ(0, fx.f.early);
  ASSERT_MEM_EQ(lines, n * width, r.data, r.len);
  reader_close(&r);
  free(r.data);
  free(lines);
  teardown(&fx);
}

/* Closing with no reader gives the pending batch back undelivered. */
static void test_close_gives_back_pending_write(void) {
  fixture fx;

  setup(&fx);
  open_sink(&fx);
  write_batch(&fx, "x\n", 2);
  RUN_FOR(&fx.loop, 20);
  ASSERT_EQ(0, fx.f.write_calls);
  fx.type->close(fx.s, on_close, &fx.f);
  fx.s = NULL;
  ASSERT_EQ(1, fx.f.write_calls);
  ASSERT_EQ(SINK_RETRY, fx.f.outcome);
  uv_run(&fx.loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, fx.f.close_calls);
  teardown(&fx);
}

static void test_sync_is_immediate(void) {
  fixture fx;

  setup(&fx);
  open_sink(&fx);
  fx.type->sync(fx.s, on_sync, &fx.f);
  ASSERT_EQ(1, fx.f.sync_calls);
  ASSERT_EQ(0, fx.f.sync_status);
  teardown(&fx);
}

/* SIGHUP: the FIFO was replaced; the sink writes into the new one what
 * comes next. */
static void test_reopen_follows_new_fifo(void) {
  fixture fx;
  reader r1, r2;

  setup(&fx);
  ASSERT_EQ(0, mkfifo(fx.path, 0600)); /* an existing FIFO is used */
  reader_open(&fx.loop, &r1, fx.path, SIZE_MAX);
  open_sink(&fx);
  write_batch(&fx, "old\n", 4);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 1), 2000);
  ASSERT_EQ(0, unlink(fx.path));
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r2, fx.path, SIZE_MAX);
  fx.type->reopen(fx.s);
  fx.f.write_calls = 0;
  write_batch(&fx, "new\n", 4);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 2), 2000);
  ASSERT_STR_EQ("old\n", r1.data);
  ASSERT_STR_EQ("new\n", r2.data);
  reader_close(&r1);
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  teardown(&fx);
}

/* SIGHUP while a line is half in the pipe: the sink finishes that line
 * before it closes, so the reader (who keeps the pipe) sees every line
 * once and whole. */
static void test_reopen_mid_line_finishes_the_line(void) {
  const size_t n = 3000, width = 99;
  fixture fx;
  reader r;
  char *lines = make_lines(n, width);

  setup(&fx);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r, fx.path, 0);
  open_sink(&fx);
  write_batch(&fx, lines, n * width);
  RUN_FOR(&fx.loop, 30);
  fx.type->reopen(fx.s);
  r.per_tick = SIZE_MAX;
  RUN_UNTIL(&fx.loop, written(&fx.f), 5000);
  ASSERT_EQ(SINK_ACCEPTED, fx.f.outcome);
  /* The same pipe: what it held unread counts on, nothing comes twice. */
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, n), 5000);
  ASSERT_MEM_EQ(lines, n * width, r.data, r.len);
  reader_close(&r);
  free(r.data);
  free(lines);
  teardown(&fx);
}

/* The FIFO is removed while no reader has it: the sink makes it again. */
static void test_fifo_made_again_when_removed(void) {
  fixture fx;
  reader r;
  struct stat st;

  setup(&fx);
  open_sink(&fx);
  RUN_UNTIL(&fx.loop, waiting_reported(&fx.f), 2000);
  ASSERT_EQ(0, unlink(fx.path));
  write_batch(&fx, "z\n", 2);
  RUN_FOR(&fx.loop, 30);
  ASSERT_EQ(0, stat(fx.path, &st));
  ASSERT(S_ISFIFO(st.st_mode));
  reader_open(&fx.loop, &r, fx.path, SIZE_MAX);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 1), 2000);
  ASSERT_STR_EQ("z\n", r.data);
  reader_close(&r);
  free(r.data);
  teardown(&fx);
}

/* The reader reads part of what the pipe holds, cutting a line, and
 * leaves: only the lines it read whole are reported, each once it had
 * them, and the next reader gets every line it had not, starting with the
 * one it cut, whole. */
static void test_reader_reads_part_then_leaves(void) {
  const size_t n = 3000, width = 99, part = 10000; /* 101 lines and 1 byte */
  fixture fx;
  reader r1, r2;
  char *lines = make_lines(n, width);
  sink_stats st;

  setup(&fx);
  fx.f.lines = lines;
  fx.f.width = width;
  watch_readers(&fx.f, &r1, &r2);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r1, fx.path, 0);
  open_sink(&fx);
  write_batch(&fx, lines, n * width);
  RUN_FOR(&fx.loop, 50); /* the pipe fills up; nothing is read */
  ASSERT_EQ(0, fx.f.n_delivered);
  reader_read(&r1, part);
  ASSERT_EQ(part, r1.len);
  RUN_UNTIL(&fx.loop, fx.f.n_delivered == part / width, 2000);
  RUN_FOR(&fx.loop, 20);
  ASSERT_EQ(part / width, fx.f.n_delivered);
  reader_close(&r1);
  RUN_UNTIL(&fx.loop, waiting_reported(&fx.f), 2000);
  ASSERT_EQ(part / width, fx.f.n_delivered);
  reader_open(&fx.loop, &r2, fx.path, SIZE_MAX);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, n), 5000);
  ASSERT_EQ(0, fx.f.early);
  ASSERT_EQ(SINK_ACCEPTED, fx.f.outcome);
  /* Exactly the lines not read whole, in order, once. */
  ASSERT_MEM_EQ(lines + part / width * width, n * width - part / width * width,
                r2.data, r2.len);
  memset(&st, 0, sizeof st);
  fx.type->stats(fx.s, &st);
  ASSERT_EQ(1, st.write_errors);
  ASSERT(st.redelivered > 100); /* what the pipe held unread */
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  free(lines);
  teardown(&fx);
}

/* The reader cuts a line and leaves, and the next one opens the FIFO
 * before the sink has looked: it finds in the pipe the tail of the cut
 * line, then lines after it. The sink notices the change all the same
 * (inotify), reports nothing the new reader read until it has sent every
 * line not yet reported again, whole, after the end of what is in the
 * pipe; no line is lost. */
static void test_reader_back_before_the_sink_looks(void) {
  const size_t n = 3000, width = 99, part = 10000;
  fixture fx;
  reader r1, r2;
  char *lines = make_lines(n, width), *p, *nl;
  uint64_t seq;

  setup(&fx);
  fx.f.lines = lines;
  fx.f.width = width;
  watch_readers(&fx.f, &r1, &r2);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r1, fx.path, 0);
  open_sink(&fx);
  write_batch(&fx, lines, n * width);
  RUN_FOR(&fx.loop, 50);
  reader_read(&r1, part);
  RUN_UNTIL(&fx.loop, fx.f.n_delivered == part / width, 2000);
  reader_read(&r1, part); /* more, which the sink does not see */
  reader_close_fd(&r1);
  reader_open(&fx.loop, &r2, fx.path, 0);
  reader_read(&r2, 5000); /* the tail of the cut line, and on */
  ASSERT_EQ(5000, r2.len);
  r2.per_tick = SIZE_MAX;
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, n), 5000);
  ASSERT_EQ(0, fx.f.early);
  for (seq = 1; seq <= n; seq++)
    ASSERT(read_whole(&fx.f, seq));
  /* The one piece of the second reader that is not a line of the batch is
   * its start: the tail of the first reader's cut line. */
  ASSERT(r2.data[0] != '0');
  for (p = (char *)memchr(r2.data, '\n', r2.len) + 1; p < r2.data + r2.len;
       p = nl + 1) {
    nl = memchr(p, '\n', (size_t)(r2.data + r2.len - p));
    ASSERT(nl != NULL);
    ASSERT_EQ(width, nl - p + 1);
    ASSERT(memcmp(p, lines + (size_t)atoi(p) * width, width) == 0);
  }
  reader_close(&r1);
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  free(lines);
  teardown(&fx);
}

/* SIGHUP with lines in the old FIFO that its reader has not read: they
 * may never be, so they go into the new one too, ahead of what follows. */
static void test_reopen_new_fifo_gets_unread_lines(void) {
  fixture fx;
  reader r1, r2;

  setup(&fx);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r1, fx.path, 0); /* never reads */
  open_sink(&fx);
  write_batch(&fx, "old\n", 4);
  RUN_UNTIL(&fx.loop, written(&fx.f), 2000);
  ASSERT_EQ(0, unlink(fx.path));
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r2, fx.path, SIZE_MAX);
  fx.type->reopen(fx.s);
  fx.f.write_calls = 0;
  write_batch(&fx, "new\n", 4);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 2), 2000);
  ASSERT_STR_EQ("old\nnew\n", r2.data);
  reader_close(&r1);
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  teardown(&fx);
}

/* The same with a pipe of 1 MiB (F_SETPIPE_SZ, the default most a user
 * may ask for): what it held unread, nearly 1 MiB, comes again whole. */
static void test_big_pipe_reader_leaves(void) {
  const size_t n = 8000, width = 300, part = 500000; /* 1666 lines + 200 */
  fixture fx;
  reader r1, r2;
  char *lines = make_lines(n, width);

  setup(&fx);
  fx.f.lines = lines;
  fx.f.width = width;
  watch_readers(&fx.f, &r1, &r2);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r1, fx.path, 0);
  ASSERT_EQ(1 << 20, fcntl(r1.fd, F_SETPIPE_SZ, 1 << 20));
  open_sink(&fx);
  write_batch(&fx, lines, n * width);
  RUN_FOR(&fx.loop, 100);
  reader_read(&r1, part);
  ASSERT_EQ(part, r1.len);
  reader_close(&r1);
  RUN_UNTIL(&fx.loop, waiting_reported(&fx.f), 2000);
  ASSERT_EQ(part / width, fx.f.n_delivered);
  reader_open(&fx.loop, &r2, fx.path, SIZE_MAX);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, n), 10000);
  ASSERT_EQ(0, fx.f.early);
  ASSERT_MEM_EQ(lines + part / width * width, n * width - part / width * width,
                r2.data, r2.len);
  reader_close(&r2);
  free(r1.data);
  free(r2.data);
  free(lines);
  teardown(&fx);
}

static void count_active_timers(uv_handle_t *h, void *arg) {
  if (h->type == UV_TIMER && uv_is_active(h) && !uv_is_closing(h))
    (*(int *)arg)++;
}

/* The look at the reader's progress runs only while a line written is not
 * yet read: a sink whose pipe is empty runs no timer. */
static void test_idle_sink_runs_no_timer(void) {
  fixture fx;
  reader r;
  int timers = 0;

  setup(&fx);
  ASSERT_EQ(0, mkfifo(fx.path, 0600));
  reader_open(&fx.loop, &r, fx.path, 0);
  open_sink(&fx);
  write_batch(&fx, "a\nb\n", 4);
  RUN_UNTIL(&fx.loop, written(&fx.f), 2000);
  uv_timer_stop(&r.tick);
  RUN_FOR(&fx.loop, 20);
  uv_walk(&fx.loop, count_active_timers, &timers);
  ASSERT_EQ(1, timers); /* the sink's look, while the lines wait */
  ASSERT_EQ(0, fx.f.n_delivered);
  reader_read(&r, SIZE_MAX);
  RUN_UNTIL(&fx.loop, all_delivered(&fx.f, 2), 2000);
  timers = 0;
  uv_walk(&fx.loop, count_active_timers, &timers);
  ASSERT_EQ(0, timers);
  reader_close(&r);
  free(r.data);
  teardown(&fx);
}

static const test_case tests[] = {
  TEST(test_creates_fifo_with_mode),
  TEST(test_regular_file_is_an_open_error),
  TEST(test_waits_for_reader),
  TEST(test_reader_leaves_while_idle),
  TEST(test_reader_leaves_mid_line),
  TEST(test_slow_reader_big_batch),
  TEST(test_close_gives_back_pending_write),
  TEST(test_sync_is_immediate),
  TEST(test_reopen_follows_new_fifo),
  TEST(test_reopen_mid_line_finishes_the_line),
  TEST(test_fifo_made_again_when_removed),
  TEST(test_reader_reads_part_then_leaves),
  TEST(test_reader_back_before_the_sink_looks),
  TEST(test_reopen_new_fifo_gets_unread_lines),
  TEST(test_big_pipe_reader_leaves),
  TEST(test_idle_sink_runs_no_timer),
  { NULL, NULL },
};

TEST_MAIN(tests)
