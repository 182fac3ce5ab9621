/* The exec sink against real handler processes: small Python scripts
 * written into a temporary directory. Each test runs the loop until a
 * condition holds (bounded), closes the sink and checks the loop closes
 * clean. */
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/registry.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

#define MAX_SEQ    4096
#define MAX_STATES 64

typedef struct fake {
  int delivered[MAX_SEQ]; /* times each seq was reported */
  int distinct;           /* seqs reported at least once */
  int write_calls;
  sink_outcome outcome;
  int close_calls;
  const char *states[MAX_STATES];
  int n_states;
  /* Dead letters: whether seq dl_seq's record was in dl_path, durable,
   * when its delivery was reported. */
  const char *dl_path;
  uint64_t dl_seq;
  int dl_seen_at_delivery;
} fake;

static void on_delivered(sink *s, uint64_t first, uint64_t last, void *data) {
  fake *f = data;
  uint64_t q;

  (void)s;
  for (q = first; q <= last && q < MAX_SEQ; q++) {
    if (f->delivered[q]++ == 0)
      f->distinct++;
    if (f->dl_path != NULL && q == f->dl_seq) {
      char *text = test_read_file(f->dl_path, NULL);
      char want[64];

      snprintf(want, sizeof want, "\"seq\":%" PRIu64 ",", q);
      f->dl_seen_at_delivery = text != NULL && strstr(text, want) != NULL;
      free(text);
    }
  }
}

static void on_state(sink *s, const char *state, void *data) {
  fake *f = data;

  (void)s;
  if (f->n_states < MAX_STATES)
    f->states[f->n_states++] = state;
}

static void on_write(sink *s, sink_outcome outcome, const char *msg,
                     void *data) {
  fake *f = data;

  (void)s, (void)msg;
  f->write_calls++;
  f->outcome = outcome;
}

static void on_close(void *data) {
  ((fake *)data)->close_calls++;
}

typedef struct fixture {
  uv_loop_t loop;
  char dir[PATH_MAX];
  char log[PATH_MAX + 64];
  char arg[PATH_MAX * 2];
  char conf[512];
  consumer_conf common; /* max_attempts and on_fail are [consumer] keys */
  sink_policy policy;   /* parsed from common, as the configuration does */
  const sink_type *type;
  sink *s;
  fake f;
} fixture;

static void set_option(fixture *fx, const char *name, const char *value) {
  char err[256];
  const option *o = options_find(fx->type->options, name);

  if (o == NULL) {
    o = options_find(config_consumer_options, name);
    ASSERT(o != NULL);
    ASSERT_EQ(0, options_parse_value(o, value, &fx->common, err, sizeof err));
    fx->policy.max_attempts = fx->common.max_attempts;
    ASSERT_EQ(0, config_parse_on_fail(fx->common.on_fail, &fx->policy, err,
                                      sizeof err));
    return;
  }
  ASSERT_EQ(0, options_parse_value(o, value, fx->conf, err, sizeof err));
}

static void setup(fixture *fx) {
  memset(fx, 0, sizeof *fx);
  signal(SIGPIPE, SIG_IGN);
  ASSERT_EQ(0, uv_loop_init(&fx->loop));
  snprintf(fx->dir, sizeof fx->dir, "%s", test_tmpdir());
  snprintf(fx->log, sizeof fx->log, "%s/tether.log", fx->dir);
  ASSERT_EQ(0, log_open(fx->log));
  log_configure(LOG_DEBUG, LOG_FORMAT_TEXT);
  fx->type = registry_sink("exec");
  ASSERT(fx->type != NULL);
  ASSERT(fx->type->conf_size <= sizeof fx->conf);
  ASSERT_EQ(0, options_set_defaults(fx->type->options, fx->conf));
  ASSERT_EQ(0, options_set_defaults(config_consumer_options, &fx->common));
  set_option(fx, "on_fail", "retry");
  /* Small durations, so failures and restarts take milliseconds. */
  set_option(fx, "restart_min", "5ms");
  set_option(fx, "restart_max", "50ms");
  set_option(fx, "resend_min", "5ms");
  set_option(fx, "resend_max", "50ms");
  set_option(fx, "stop_timeout", "200ms");
  set_option(fx, "handler_timeout", "5s");
}

static const char prelude[] =
    "#!/usr/bin/python3\n"
    "import json, os, signal, subprocess, sys, time\n"
    "def out(text):\n"
    "    sys.stdout.write(text + '\\n')\n"
    "    sys.stdout.flush()\n"
    "def ack(seq, status='ok', **kw):\n"
    "    d = {'seq': seq, 'status': status}\n"
    "    d.update(kw)\n"
    "    out(json.dumps(d))\n"
    "def events():\n"
    "    while True:\n"
    "        line = sys.stdin.readline()\n"
    "        if not line:\n"
    "            return\n"
    "        yield json.loads(line)\n"
    "def note(name, text):\n"
    "    with open(os.path.join(DIR, name), 'a') as f:\n"
    "        f.write(text + '\\n')\n";

/* Writes the handler script and points the sink's argument at it. */
static void handler(fixture *fx, const char *body) {
  char path[PATH_MAX + 64], dirline[PATH_MAX + 32];
  FILE *f;

  snprintf(path, sizeof path, "%s/handler.py", fx->dir);
  snprintf(dirline, sizeof dirline, "DIR = '%s'\n", fx->dir);
  f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs(prelude, f);
  fputs(dirline, f);
  fputs(body, f);
  ASSERT_EQ(0, fclose(f));
  ASSERT_EQ(0, chmod(path, 0755));
  snprintf(fx->arg, sizeof fx->arg, "%s", path);
}

static void open_sink(fixture *fx) {
  char err[512];
  int rc = fx->type->open(&fx->loop, fx->arg, fx->conf, &fx->policy, "test",
                          &fx->s, err, sizeof err);

  if (rc != 0)
    test__fail(__FILE__, __LINE__, "open: %s", err);
  fx->s->report.delivered = on_delivered;
  fx->s->report.state = on_state;
  fx->s->report.data = &fx->f;
}

/* Hands over events first..last as one batch of envelope lines, each
 * with a string of pad bytes in its data. */
static void write_padded(fixture *fx, uint64_t first, uint64_t last,
                         size_t pad) {
  char *lines = malloc((last - first + 1) * (128 + pad) + 1);
  size_t len = 0;
  sink_batch b;
  uint64_t q;

  ASSERT(lines != NULL);
  for (q = first; q <= last; q++) {
    len += (size_t)sprintf(lines + len,
                           "{\"consumer\":\"test\",\"seq\":%" PRIu64
                           ",\"cursor\":\"%" PRIu64
                           "\",\"event\":\"tick\",\"data\":{\"n\":%" PRIu64,
                           q, q, q);
    if (pad > 0) {
      len += (size_t)sprintf(lines + len, ",\"pad\":\"");
      memset(lines + len, 'x', pad);
      len += pad;
      lines[len++] = '"';
    }
    len += (size_t)sprintf(lines + len, "}}\n");
  }
  b.data = lines;
  b.len = len;
  b.first_seq = first;
  b.last_seq = last;
  fx->f.write_calls = 0;
  fx->type->write(fx->s, &b, on_write, &fx->f);
  free(lines); /* the sink copied what it keeps */
  ASSERT_EQ(1, fx->f.write_calls);
  ASSERT_EQ(SINK_ACCEPTED, fx->f.outcome);
}

static void write_events(fixture *fx, uint64_t first, uint64_t last) {
  write_padded(fx, first, last, 0);
}

static void expect_delivered(fixture *fx, int n, uint64_t ms) {
  RUN_UNTIL_OR_TIMEOUT(&fx->loop, fx->f.distinct >= n, ms);
  if (fx->f.distinct < n) {
    char *log = test_read_file(fx->log, NULL);

    printf("# --- log ---\n%s", log ? log : "");
    free(log);
    test__fail(__FILE__, __LINE__, "delivered %d of %d events in %ums",
               fx->f.distinct, n, (unsigned)ms);
  }
}

static void close_sink(fixture *fx) {
  if (fx->s == NULL)
    return;
  fx->type->close(fx->s, on_close, &fx->f);
  fx->s = NULL;
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, fx->f.close_calls);
}

static void teardown(fixture *fx) {
  close_sink(fx);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(0, uv_loop_close(&fx->loop));
  options_free(fx->type->options, fx->conf);
  options_free(config_consumer_options, &fx->common);
  log_open(NULL);
  log_configure(LOG_INFO, LOG_FORMAT_TEXT);
  test_rmtree(fx->dir);
}

static sink_stats stats_of(fixture *fx) {
  sink_stats st;

  memset(&st, 0, sizeof st);
  ASSERT(fx->type->stats != NULL);
  fx->type->stats(fx->s, &st);
  return st;
}

static char *read_log(fixture *fx) {
  char *text = test_read_file(fx->log, NULL);

  ASSERT(text != NULL);
  return text;
}

static int count_of(const char *text, const char *needle) {
  int n = 0;

  for (; (text = strstr(text, needle)) != NULL; text++)
    n++;
  return n;
}

static char *read_note(fixture *fx, const char *name) {
  char path[PATH_MAX + 64];

  snprintf(path, sizeof path, "%s/%s", fx->dir, name);
  return test_read_file(path, NULL);
}

/* ---- the ack protocol ------------------------------------------------- */

static void test_acks_in_order(void) {
  fixture fx;
  int i;

  setup(&fx);
  handler(&fx, "for e in events():\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 10);
  write_events(&fx, 11, 20);
  expect_delivered(&fx, 20, 10000);
  for (i = 1; i <= 20; i++)
    ASSERT_EQ(1, fx.f.delivered[i]);
  ASSERT_EQ(0, fx.f.n_states);
  teardown(&fx);
}

/* Answers in reverse order, half of them as bare numbers. */
static void test_acks_out_of_order_and_bare(void) {
  fixture fx;
  char *log;
  int i;

  setup(&fx);
  handler(&fx, "got = []\n"
               "for e in events():\n"
               "    got.append(e['seq'])\n"
               "    if len(got) == 10:\n"
               "        for s in reversed(got):\n"
               "            out(str(s)) if s % 2 else ack(s)\n"
               "        got = []\n");
  open_sink(&fx);
  write_events(&fx, 1, 10);
  expect_delivered(&fx, 10, 10000);
  for (i = 1; i <= 10; i++)
    ASSERT_EQ(1, fx.f.delivered[i]);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT(strstr(log, "malformed") == NULL);
  ASSERT_CONTAINS(log, "handler exited consumer=test sink=exec");
  free(log);
  teardown(&fx);
}

static uint64_t now_ms(void) {
  return uv_hrtime() / 1000000;
}

/* retry with delay_ms: sent again after that delay; without delay_ms:
 * after resend_min. A delay_ms above resend_max is cut to it. */
static void test_retry_with_delay(void) {
  fixture fx;
  uint64_t start;
  char *seen;

  setup(&fx);
  set_option(&fx, "resend_max", "1s");
  handler(&fx, "tried = set()\n"
               "for e in events():\n"
               "    s = e['seq']\n"
               "    note('seen', str(s))\n"
               "    if s in tried:\n"
               "        ack(s)\n"
               "    else:\n"
               "        tried.add(s)\n"
               "        ack(s, 'retry', delay_ms=150) if s == 1 else "
               "ack(s, 'retry')\n");
  open_sink(&fx);
  start = now_ms();
  write_events(&fx, 1, 2);
  expect_delivered(&fx, 1, 10000);
  ASSERT(fx.f.delivered[2] == 1); /* after resend_min (5ms), long before */
  expect_delivered(&fx, 2, 10000);
  ASSERT(now_ms() - start >= 150);
  seen = read_note(&fx, "seen");
  ASSERT_EQ(2, count_of(seen, "1\n"));
  ASSERT_EQ(2, count_of(seen, "2\n"));
  free(seen);
  teardown(&fx);
}

static void test_fail_then_skip(void) {
  fixture fx;
  char *log, *seen;
  sink_stats st;

  setup(&fx);
  set_option(&fx, "max_attempts", "2");
  set_option(&fx, "on_fail", "skip");
  handler(&fx, "for e in events():\n"
               "    note('seen', str(e['seq']))\n"
               "    if e['seq'] == 3:\n"
               "        ack(3, 'fail', error='no such order')\n"
               "    else:\n"
               "        ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 5);
  expect_delivered(&fx, 5, 10000);
  st = stats_of(&fx);
  ASSERT_EQ(1, st.failed);
  ASSERT_EQ(0, st.dead_lettered);
  ASSERT_EQ(1, st.redelivered);
  seen = read_note(&fx, "seen");
  ASSERT_EQ(2, count_of(seen, "3\n"));
  free(seen);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "error giving up on an event after max_attempts "
                       "(on_fail = skip) consumer=test sink=exec seq=3 "
                       "attempts=2 err=\"no such order\"");
  ASSERT_CONTAINS(log, "warn event not handled; it will be sent again "
                       "consumer=test sink=exec seq=3 attempts=1");
  free(log);
  teardown(&fx);
}

/* max_attempts with on_fail = retry: nothing is given up, each further
 * failure is a warning. */
static void test_fail_keeps_retrying(void) {
  fixture fx;
  char *log;

  setup(&fx);
  set_option(&fx, "max_attempts", "2");
  handler(&fx, "n = 0\n"
               "for e in events():\n"
               "    if e['seq'] == 1 and n < 4:\n"
               "        n += 1\n"
               "        ack(1, 'fail', error='later')\n"
               "    else:\n"
               "        ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 1);
  expect_delivered(&fx, 1, 10000);
  log = read_log(&fx);
  ASSERT_EQ(3, count_of(log, "sending it again (on_fail = retry)"));
  free(log);
  teardown(&fx);
}

static void test_fail_dead_letter(void) {
  fixture fx;
  char dl[PATH_MAX + 64], opt[PATH_MAX + 80], *text, *nl;
  json_t *rec, *ev, *want;
  json_error_t jerr;
  sink_stats st;
  const char *line3 = "{\"consumer\":\"test\",\"seq\":3,\"cursor\":\"3\","
                      "\"event\":\"tick\",\"data\":{\"n\":3}}";

  setup(&fx);
  snprintf(dl, sizeof dl, "%s/dead.ndjson", fx.dir);
  snprintf(opt, sizeof opt, "dead_letter:%s", dl);
  set_option(&fx, "max_attempts", "2");
  set_option(&fx, "on_fail", opt);
  fx.f.dl_path = dl;
  fx.f.dl_seq = 3;
  handler(&fx, "for e in events():\n"
               "    if e['seq'] == 3:\n"
               "        ack(3, 'fail', error='boom \\u00e9')\n"
               "    else:\n"
               "        ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 5);
  expect_delivered(&fx, 5, 10000);
  /* The record was in the file when seq 3 was reported delivered. */
  ASSERT_EQ(1, fx.f.dl_seen_at_delivery);
  st = stats_of(&fx);
  ASSERT_EQ(1, st.failed);
  ASSERT_EQ(1, st.dead_lettered);
  ASSERT_EQ(1, st.redelivered);
  ASSERT_EQ(0, st.write_errors);
  text = test_read_file(dl, NULL);
  ASSERT(text != NULL);
  nl = strchr(text, '\n');
  ASSERT(nl != NULL && nl[1] == '\0'); /* one record */
  rec = json_loadb(text, (size_t)(nl - text), 0, &jerr);
  ASSERT(rec != NULL);
  ASSERT_STR_EQ("test", json_string_value(json_object_get(rec, "consumer")));
  ASSERT_EQ(3, json_integer_value(json_object_get(rec, "seq")));
  ASSERT_EQ(2, json_integer_value(json_object_get(rec, "attempts")));
  ASSERT_STR_EQ("boom \xc3\xa9",
                json_string_value(json_object_get(rec, "error")));
  ev = json_object_get(rec, "event");
  want = json_loads(line3, 0, &jerr);
  ASSERT(want != NULL);
  ASSERT(json_equal(want, ev));
  /* The envelope is embedded as it came, byte for byte. */
  ASSERT_CONTAINS(text, line3);
  json_decref(want);
  json_decref(rec);
  free(text);
  teardown(&fx);
}

/* SIGHUP: the dead-letter file was moved away; the next record goes into a
 * new file at the path. */
static void test_dead_letter_reopen(void) {
  fixture fx;
  char dl[PATH_MAX + 64], moved[PATH_MAX + 80], opt[PATH_MAX + 80], *text;

  setup(&fx);
  snprintf(dl, sizeof dl, "%s/dead.ndjson", fx.dir);
  snprintf(moved, sizeof moved, "%s.1", dl);
  snprintf(opt, sizeof opt, "dead_letter:%s", dl);
  set_option(&fx, "max_attempts", "1");
  set_option(&fx, "on_fail", opt);
  handler(&fx, "for e in events():\n"
               "    if e['seq'] in (3, 7):\n"
               "        ack(e['seq'], 'fail')\n"
               "    else:\n"
               "        ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 5);
  expect_delivered(&fx, 5, 10000);
  ASSERT_EQ(0, rename(dl, moved));
  fx.type->reopen(fx.s);
  write_events(&fx, 6, 8);
  expect_delivered(&fx, 8, 10000);
  text = test_read_file(moved, NULL);
  ASSERT_CONTAINS(text, "\"seq\":3,\"attempts\":1,"
                        "\"error\":\"the handler failed the event\"");
  ASSERT(strstr(text, "\"seq\":7,") == NULL);
  free(text);
  text = test_read_file(dl, NULL);
  ASSERT(text != NULL);
  ASSERT_CONTAINS(text, "\"seq\":7,");
  ASSERT(strstr(text, "\"seq\":3,") == NULL);
  free(text);
  teardown(&fx);
}

/* ---- timeouts, crashes, restarts -------------------------------------- */

/* A handler that ignores the first copy of one event: that event times
 * out and is sent again to the same handler. The timeout counts from the
 * write, handler start-up included: under a loaded machine (sanitizers,
 * parallel suites) a Python handler can take a few hundred ms to start, so
 * a tighter one would time out every copy and restart it for ever. */
static void test_dropped_event_is_resent(void) {
  fixture fx;
  char *log;

  setup(&fx);
  set_option(&fx, "handler_timeout", "1s");
  handler(&fx, "dropped = False\n"
               "for e in events():\n"
               "    if e['seq'] == 2 and not dropped:\n"
               "        dropped = True\n"
               "        continue\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 3);
  expect_delivered(&fx, 3, 10000);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "event not handled; it will be sent again "
                       "consumer=test sink=exec seq=2 attempts=1 "
                       "err=\"no answer within handler_timeout\"");
  ASSERT_EQ(1, count_of(log, "handler started"));
  free(log);
  teardown(&fx);
}

/* A handler stuck on one event: it is killed and restarted, and the events
 * come again. */
static void test_hung_handler_is_restarted(void) {
  fixture fx;
  char *log;

  setup(&fx);
  set_option(&fx, "handler_timeout", "1s");
  handler(&fx, "for e in events():\n"
               "    if e['seq'] == 2 and not os.path.exists(DIR + '/hung'):\n"
               "        note('hung', 'x')\n"
               "        time.sleep(1000)\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 3);
  expect_delivered(&fx, 3, 10000);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "the handler answered nothing within "
                       "handler_timeout; restarting it");
  ASSERT_CONTAINS(log, "handler killed by a signal");
  ASSERT_EQ(2, count_of(log, "handler started"));
  free(log);
  teardown(&fx);
}

/* Exits after every third answer: restarted each time, the unanswered
 * events sent again in seq order, every one delivered. */
static void test_crash_every_n(void) {
  fixture fx;
  char *log, *seen, *p;
  long last = 0, pid = 0, cur_pid, s;
  int i;

  setup(&fx);
  handler(&fx, "n = 0\n"
               "for e in events():\n"
               "    note('seen', '%d %d' % (os.getpid(), e['seq']))\n"
               "    ack(e['seq'])\n"
               "    n += 1\n"
               "    if n == 3:\n"
               "        sys.exit(3)\n");
  open_sink(&fx);
  write_events(&fx, 1, 10);
  write_events(&fx, 11, 20);
  expect_delivered(&fx, 20, 20000);
  for (i = 1; i <= 20; i++)
    ASSERT_EQ(1, fx.f.delivered[i]);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "warn handler exited consumer=test sink=exec pid=");
  ASSERT_CONTAINS(log, " status=3");
  ASSERT(count_of(log, "handler started") >= 7);
  free(log);
  /* Each handler saw its events in seq order. */
  seen = read_note(&fx, "seen");
  ASSERT(seen != NULL);
  for (p = seen; sscanf(p, "%ld %ld", &cur_pid, &s) == 2;) {
    if (cur_pid != pid)
      last = 0;
    ASSERT(s > last);
    last = s;
    pid = cur_pid;
    p = strchr(p, '\n') + 1;
  }
  free(seen);
  teardown(&fx);
}

/* A handler that closes its stdout but runs on can answer nothing more:
 * after stop_timeout it is stopped and started again. */
static void test_closed_stdout_restarts(void) {
  fixture fx;
  char *log;

  setup(&fx);
  set_option(&fx, "stop_timeout", "100ms");
  handler(&fx, "if not os.path.exists(DIR + '/once'):\n"
               "    note('once', 'x')\n"
               "    os.close(1)\n"
               "    for e in events():\n"
               "        pass\n"
               "for e in events():\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 2);
  expect_delivered(&fx, 2, 10000);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "the handler closed its stdout but goes on running; "
                       "restarting it");
  ASSERT_EQ(2, count_of(log, "handler started"));
  free(log);
  teardown(&fx);
}

static bool saw_restarting(void *arg) {
  fake *f = arg;
  int i;

  for (i = 0; i < f->n_states; i++)
    if (f->states[i] != NULL && strcmp(f->states[i], "handler_restarting") == 0)
      return true;
  return false;
}

/* Exits at once, every time: restarts back off, never a hot loop, and the
 * state says so. */
static void test_exits_at_start_backs_off(void) {
  fixture fx;
  char *log;
  int starts;

  setup(&fx);
  set_option(&fx, "restart_min", "20ms");
  set_option(&fx, "restart_max", "100ms");
  handler(&fx, "sys.exit(1)\n");
  open_sink(&fx);
  write_events(&fx, 1, 3);
  RUN_UNTIL(&fx.loop, saw_restarting(&fx.f), 5000);
  RUN_FOR(&fx.loop, 600);
  ASSERT_EQ(0, fx.f.distinct);
  ASSERT_STR_EQ("handler_restarting", fx.f.states[fx.f.n_states - 1]);
  close_sink(&fx);
  log = read_log(&fx);
  starts = count_of(log, "handler started");
  /* 600 ms of waits of 20..100 ms: a few, not hundreds. */
  ASSERT(starts >= 3);
  ASSERT(starts <= 32);
  ASSERT_CONTAINS(log, "info restarting the handler consumer=test sink=exec");
  free(log);
  teardown(&fx);
}

/* The state clears once a restarted handler answers. */
static void test_state_clears_on_answer(void) {
  fixture fx;

  setup(&fx);
  handler(&fx, "if not os.path.exists(DIR + '/once'):\n"
               "    note('once', 'x')\n"
               "    sys.exit(2)\n"
               "for e in events():\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 2);
  expect_delivered(&fx, 2, 10000);
  ASSERT(saw_restarting(&fx.f));
  ASSERT(fx.f.states[fx.f.n_states - 1] == NULL);
  teardown(&fx);
}

/* Garbage, unknown seqs, bad statuses and repeated answers are logged and
 * ignored. */
static void test_malformed_answers_ignored(void) {
  fixture fx;
  char *log;
  int i;

  setup(&fx);
  handler(&fx, "for e in events():\n"
               "    s = e['seq']\n"
               "    out('garbage')\n"
               "    out('{\"seq\": \"x\", \"status\": \"ok\"}')\n"
               "    out('{\"seq\": %d, \"status\": \"maybe\"}' % s)\n"
               "    out('{\"seq\": 99999, \"status\": \"ok\"}')\n"
               "    out('')\n"
               "    out('-5')\n"
               "    ack(s)\n"
               "    ack(s)\n");
  open_sink(&fx);
  write_events(&fx, 1, 2);
  expect_delivered(&fx, 2, 10000);
  for (i = 1; i <= 2; i++)
    ASSERT_EQ(1, fx.f.delivered[i]);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "malformed answer from the handler; ignored "
                       "consumer=test sink=exec seq=0 err=\"not JSON:");
  ASSERT_CONTAINS(log, "err=\"\\\"seq\\\" is not a non-negative integer\"");
  ASSERT_CONTAINS(log, "err=\"\\\"status\\\" is not ok, retry or fail\"");
  ASSERT_CONTAINS(log, "answer for an unknown or already answered event; "
                       "ignored consumer=test sink=exec seq=99999");
  ASSERT_CONTAINS(log, "seq=1 err=\"no such event waits for an answer\"");
  /* Rate-limited: 10 in the window, the rest counted. */
  ASSERT_EQ(10, count_of(log, "ignored consumer=test"));
  free(log);
  teardown(&fx);
}

/* Lines of about 100 KB. The handler's stdin is a socket pair (libuv
 * makes stdio pipes that way) whose buffer takes about 200 KiB, and the
 * handler's reader holds 8 KiB more: fewer than three such lines past the
 * one the handler is on, so an answer five ahead is for a line not
 * written yet. */
#define BIG_PAD 100000

/* Every seq reported delivered is among those the handler wrote into the
 * note file `name` as it read them. */
static void expect_delivered_were_read(fixture *fx, const char *name) {
  bool read[MAX_SEQ] = { false };
  char *text = read_note(fx, name), *p, *end;
  unsigned long q;
  int n = 0;

  ASSERT(text != NULL);
  for (p = text; (q = strtoul(p, &end, 10)) != 0 || end != p; p = end) {
    ASSERT(q < MAX_SEQ);
    read[q] = true;
    n++;
  }
  free(text);
  ASSERT(n > 0);
  for (q = 0; q < MAX_SEQ; q++)
    if (fx->f.delivered[q] > 0 && !read[q])
      test__fail(__FILE__, __LINE__,
                 "seq %lu was reported delivered, but the handler never "
                 "read it (%s)",
                 q, name);
}

/* A handler that answers for seq + 5 as it reads seq (a bug of its own)
 * while the pipe is full and the events behind wait in tether: those
 * answers are ignored, and each event is delivered by the answer the
 * handler gives once it has read it. */
static void test_answer_ahead_of_write_ignored(void) {
  fixture fx;
  char *log;

  setup(&fx);
  handler(&fx, "for e in events():\n"
               "    s = e['seq']\n"
               "    note('read', str(s))\n"
               "    ack(s + 5)\n"
               "    ack(s)\n"
               "    time.sleep(0.02)\n");
  open_sink(&fx);
  write_padded(&fx, 1, 40, BIG_PAD);
  expect_delivered(&fx, 40, 20000);
  /* Nothing timed out: the handler's own answer for each line counted,
   * even while the rest of that line's write waited for room. */
  ASSERT_UEQ(0, stats_of(&fx).redelivered);
  /* Closing ends the handler's stdin: it reads what is left in the pipe,
   * noting each line, and exits. */
  close_sink(&fx);
  expect_delivered_were_read(&fx, "read");
  log = read_log(&fx);
  /* Which answers came ahead of the write depends on timing; some did. */
  ASSERT_CONTAINS(log, "warn answer for an event not yet written to the "
                       "handler; ignored consumer=test sink=exec seq=");
  ASSERT_CONTAINS(log, " err=\"its line is not in the handler's stdin yet\"");
  free(log);
  teardown(&fx);
}

/* Small lines in 64 KiB writes to a handler slower than tether, reading
 * a byte at a time as a shell's `read` does: its stdin stays full, and it
 * answers for lines of earlier writes while later ones wait for room.
 * Those answers count at once: none is taken for one ahead of the write,
 * and no event times out. */
static void test_answers_count_while_write_waits(void) {
  fixture fx;
  char *log;
  int i;

  setup(&fx);
  set_option(&fx, "handler_timeout", "10s");
  handler(&fx, "while True:\n"
               "    line = sys.stdin.buffer.raw.readline()\n"
               "    if not line:\n"
               "        break\n"
               "    ack(json.loads(line)['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 1500);
  write_events(&fx, 1501, 3000);
  expect_delivered(&fx, 3000, 60000);
  for (i = 1; i <= 3000; i++)
    ASSERT_EQ(1, fx.f.delivered[i]);
  ASSERT_UEQ(0, stats_of(&fx).redelivered);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT(strstr(log, "not yet written") == NULL);
  free(log);
  teardown(&fx);
}

/* The first handler reads every line and exits without answering; the
 * second answers every event at once, before it reads a line. Only the
 * answers for lines written to the second handler count: having given the
 * line to the first one does not. */
static void test_answer_needs_line_written_to_this_handler(void) {
  fixture fx;
  char *log;

  setup(&fx);
  handler(&fx, "if not os.path.exists(DIR + '/first'):\n"
               "    note('first', 'x')\n"
               "    for e in events():\n"
               "        if e['seq'] == 20:\n"
               "            sys.exit(1)\n"
               "for s in range(1, 21):\n"
               "    out(str(s))\n"
               "for e in events():\n"
               "    note('read', str(e['seq']))\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_padded(&fx, 1, 20, BIG_PAD);
  expect_delivered(&fx, 20, 20000);
  close_sink(&fx);
  expect_delivered_were_read(&fx, "read");
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "answer for an event not yet written to the handler");
  ASSERT_EQ(2, count_of(log, "handler started"));
  free(log);
  teardown(&fx);
}

/* The sum of the lines= counts of the "not logged" records. */
static uint64_t stderr_dropped(const char *log) {
  const char *key = "handler stderr lines not logged", *p = log, *l;
  uint64_t sum = 0;

  while ((p = strstr(p, key)) != NULL) {
    l = strstr(p, " lines=");
    ASSERT(l != NULL);
    sum += strtoull(l + 7, NULL, 10);
    p = l;
  }
  return sum;
}

/* A handler that floods its stderr and exits at once: the count of lines
 * the rate limit held back comes when its stderr ends, not with the next
 * line of another handler (which may never come). The same when the sink
 * closes a flooding handler. */
static void test_stderr_flood_counted_at_exit(void) {
  fixture fx;
  char *log;

  setup(&fx);
  handler(&fx, "if not os.path.exists(DIR + '/once'):\n"
               "    note('once', 'x')\n"
               "    for i in range(300):\n"
               "        sys.stderr.write('flood %d\\n' % i)\n"
               "    sys.exit(0)\n"
               "for i in range(300, 500):\n"
               "    sys.stderr.write('flood %d\\n' % i)\n"
               "sys.stderr.flush()\n"
               "for e in events():\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 1);
  RUN_UNTIL(&fx.loop, saw_restarting(&fx.f), 10000);
  log = read_log(&fx);
  /* Of the first handler's 300 lines, what was not logged is counted
   * before the restart. */
  ASSERT_EQ(300, count_of(log, "line=\"flood ") + (int)stderr_dropped(log));
  free(log);
  expect_delivered(&fx, 1, 10000);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_EQ(500, count_of(log, "line=\"flood ") + (int)stderr_dropped(log));
  ASSERT(count_of(log, "handler stderr lines not logged (more than 50 a "
                       "second) consumer=test sink=exec pid=") >= 2);
  free(log);
  teardown(&fx);
}

static void test_stderr_reaches_log(void) {
  fixture fx;
  char *log;

  setup(&fx);
  handler(&fx, "sys.stderr.write('hello from the handler\\n')\n"
               "sys.stderr.write('x' * 3000 + '\\n')\n"
               "sys.stderr.flush()\n"
               "for e in events():\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  write_events(&fx, 1, 1);
  expect_delivered(&fx, 1, 10000);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "warn handler stderr consumer=test sink=exec pid=");
  ASSERT_CONTAINS(log, " line=\"hello from the handler\"");
  ASSERT_CONTAINS(log, " cut=true");
  ASSERT(strstr(log, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") !=
         NULL);
  free(log);
  teardown(&fx);
}

/* ---- configuration and start-up --------------------------------------- */

static void expect_check(fixture *fx, const char *arg, const char *want) {
  char err[512];
  int rc;

  err[0] = '\0';
  rc = fx->type->check(fx->conf, arg, 0, err, sizeof err);
  if (want == NULL) {
    if (rc != 0)
      test__fail(__FILE__, __LINE__, "check(%s): %s", arg, err);
    return;
  }
  ASSERT_EQ(UV_EINVAL, rc);
  ASSERT_STR_EQ(want, err);
}

static void test_check_errors(void) {
  fixture fx;

  setup(&fx);
  expect_check(&fx, "sh -c 'echo \"a b\"; exit 0' handler", NULL);
  expect_check(&fx, "a\\ b \"c\\\"d\" e'f'", NULL);
  expect_check(&fx, "echo 'abc",
               "sink = \"exec:echo 'abc\": the single quote at column 6 of "
               "ARGV is not closed");
  expect_check(&fx, "echo a\"bc",
               "sink = \"exec:echo a\"bc\": the double quote at column 7 of "
               "ARGV is not closed");
  expect_check(&fx, "echo abc\\",
               "sink = \"exec:echo abc\\\": a backslash at the end of ARGV "
               "escapes nothing");
  expect_check(&fx, "", "exec needs a command: sink = exec:ARGV");
  expect_check(&fx, "   ", "exec needs a command: sink = exec:ARGV");
  expect_check(&fx, "echo ''",
               "sink = \"exec:echo ''\": empty quotes make an empty argument, "
               "which is not allowed");
  set_option(&fx, "restart_min", "1m");
  set_option(&fx, "restart_max", "1s");
  expect_check(&fx, "echo", "restart_min (1m) is above restart_max (1s)");
  set_option(&fx, "restart_min", "1s");
  set_option(&fx, "resend_min", "2s");
  set_option(&fx, "resend_max", "1s");
  expect_check(&fx, "echo", "resend_min (2s) is above resend_max (1s)");
  teardown(&fx);
}

static void test_argv_reaches_handler(void) {
  fixture fx;
  char script[PATH_MAX], *args;

  setup(&fx);
  handler(&fx, "note('args', json.dumps(sys.argv[1:]))\n"
               "for e in events():\n"
               "    ack(e['seq'])\n");
  ASSERT(strlen(fx.arg) < sizeof script);
  memcpy(script, fx.arg, strlen(fx.arg) + 1);
  snprintf(fx.arg, sizeof fx.arg,
           "%s  'a b' \"c\\\"d \\x\" e\\ f g'h'\"i\" '$HOME'", script);
  open_sink(&fx);
  write_events(&fx, 1, 1);
  expect_delivered(&fx, 1, 10000);
  args = read_note(&fx, "args");
  ASSERT_STR_EQ("[\"a b\", \"c\\\"d \\\\x\", \"e f\", \"ghi\", \"$HOME\"]\n",
                args);
  free(args);
  teardown(&fx);
}

static void test_open_errors(void) {
  fixture fx;
  char err[512], opt[PATH_MAX + 80];
  sink *s = NULL;

  setup(&fx);
  ASSERT_EQ(UV_ENOENT,
            fx.type->open(&fx.loop, "no-such-handler-xyz --flag", fx.conf,
                          &fx.policy, "t", &s, err, sizeof err));
  ASSERT_STR_EQ("exec: cannot run no-such-handler-xyz: not found in PATH", err);
  ASSERT_EQ(UV_ENOENT, fx.type->open(&fx.loop, "/nonexistent/handler", fx.conf,
                                     &fx.policy, "t", &s, err, sizeof err));
  ASSERT_STR_EQ(
      "exec: cannot run /nonexistent/handler: No such file or directory", err);
  snprintf(opt, sizeof opt, "dead_letter:%s/missing/dead.ndjson", fx.dir);
  set_option(&fx, "on_fail", opt);
  ASSERT_EQ(UV_ENOENT, fx.type->open(&fx.loop, "true", fx.conf, &fx.policy, "t",
                                     &s, err, sizeof err));
  ASSERT_CONTAINS(err, "cannot open the dead-letter file ");
  ASSERT_CONTAINS(err, "/missing/dead.ndjson: No such file or directory");
  ASSERT(s == NULL);
  teardown(&fx);
}

/* ---- closing ---------------------------------------------------------- */

/* A handler that exits on EOF: closing takes no signal. */
static void test_close_waits_for_exit_on_eof(void) {
  fixture fx;
  char *log;
  uint64_t start;

  setup(&fx);
  set_option(&fx, "stop_timeout", "5s");
  handler(&fx, "for e in events():\n"
               "    ack(e['seq'])\n"
               "note('eof', 'x')\n");
  open_sink(&fx);
  write_events(&fx, 1, 2);
  expect_delivered(&fx, 2, 10000);
  start = now_ms();
  close_sink(&fx);
  ASSERT(now_ms() - start < 4000);
  log = read_log(&fx);
  ASSERT(strstr(log, "SIGTERM") == NULL);
  ASSERT_CONTAINS(log, "info handler exited consumer=test sink=exec");
  free(log);
  log = read_note(&fx, "eof");
  ASSERT_STR_EQ("x\n", log);
  free(log);
  teardown(&fx);
}

static bool process_gone(long pid) {
  char path[64], *stat;
  bool gone;

  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  stat = test_read_file(path, NULL);
  if (stat == NULL)
    return true;
  /* A zombie waiting for its new parent counts as gone. */
  gone = strstr(stat, ") Z ") != NULL;
  free(stat);
  return gone;
}

/* A handler that ignores EOF and SIGTERM, with a child in its group:
 * SIGTERM after stop_timeout, then SIGKILL, and the child goes too. */
static void test_close_kills_stubborn_group(void) {
  fixture fx;
  char *log, *child;
  long pid;
  int i;

  setup(&fx);
  set_option(&fx, "stop_timeout", "100ms");
  handler(&fx, "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "p = subprocess.Popen(['sleep', '1000'])\n"
               "note('child', str(p.pid))\n"
               "for e in events():\n"
               "    ack(e['seq'])\n"
               "while True:\n"
               "    time.sleep(1)\n");
  open_sink(&fx);
  write_events(&fx, 1, 1);
  expect_delivered(&fx, 1, 10000);
  close_sink(&fx);
  log = read_log(&fx);
  ASSERT_CONTAINS(log, "the handler did not exit in time; sending SIGTERM");
  ASSERT_CONTAINS(log, "the handler did not exit after SIGTERM; sending "
                       "SIGKILL");
  free(log);
  child = read_note(&fx, "child");
  ASSERT(child != NULL);
  pid = strtol(child, NULL, 10);
  free(child);
  ASSERT(pid > 0);
  for (i = 0; i < 200 && !process_gone(pid); i++)
    usleep(10000);
  ASSERT(process_gone(pid));
  teardown(&fx);
}

/* Closing while the handler is down between restarts. */
static void test_close_while_restarting(void) {
  fixture fx;

  setup(&fx);
  set_option(&fx, "restart_min", "1s");
  set_option(&fx, "restart_max", "1s");
  handler(&fx, "sys.exit(1)\n");
  open_sink(&fx);
  write_events(&fx, 1, 1);
  RUN_UNTIL(&fx.loop, saw_restarting(&fx.f), 5000);
  teardown(&fx);
}

static void on_sync(sink *s, int status, const char *msg, void *data) {
  int *calls = data;

  (void)s, (void)msg;
  ASSERT_EQ(0, status);
  (*calls)++;
}

/* Nothing to make durable: dead letters are synced before delivery. */
static void test_sync_is_immediate(void) {
  fixture fx;
  int calls = 0;

  setup(&fx);
  handler(&fx, "for e in events():\n"
               "    ack(e['seq'])\n");
  open_sink(&fx);
  fx.type->sync(fx.s, on_sync, &calls);
  ASSERT_EQ(1, calls);
  teardown(&fx);
}

static const test_case tests[] = {
  TEST(test_acks_in_order),
  TEST(test_acks_out_of_order_and_bare),
  TEST(test_retry_with_delay),
  TEST(test_fail_then_skip),
  TEST(test_fail_keeps_retrying),
  TEST(test_fail_dead_letter),
  TEST(test_dead_letter_reopen),
  TEST(test_dropped_event_is_resent),
  TEST(test_hung_handler_is_restarted),
  TEST(test_crash_every_n),
  TEST(test_closed_stdout_restarts),
  TEST(test_exits_at_start_backs_off),
  TEST(test_state_clears_on_answer),
  TEST(test_malformed_answers_ignored),
  TEST(test_answer_ahead_of_write_ignored),
  TEST(test_answers_count_while_write_waits),
  TEST(test_answer_needs_line_written_to_this_handler),
  TEST(test_stderr_flood_counted_at_exit),
  TEST(test_stderr_reaches_log),
  TEST(test_check_errors),
  TEST(test_argv_reaches_handler),
  TEST(test_open_errors),
  TEST(test_close_waits_for_exit_on_eof),
  TEST(test_close_kills_stubborn_group),
  TEST(test_close_while_restarting),
  TEST(test_sync_is_immediate),
  { NULL, NULL },
};

TEST_MAIN(tests)
