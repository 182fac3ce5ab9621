/* The consumer core against a counting fake source and a fake sink whose
 * callbacks the test completes by hand. */
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/flusher.h"
#include "daemon/log.h"
#include "protocol/buf.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- fake sink ---------------------------------------------------------- */

static struct {
  int opens, writes, syncs, closes;
  buf last_batch;
  uint64_t first_seq, last_seq;
  sink_write_cb write_cb;
  void *write_data;
  sink_sync_cb sync_cb;
  void *sync_data;
  sink s;
} fs;

static const option no_options[] = { { NULL, 0, NULL, 0, NULL, 0, 0, NULL,
                                       0 } };

static int fake_sink_open(uv_loop_t *loop, const char *arg, const void *conf,
                          const sink_policy *policy, const char *name,
                          sink **out, char *err, size_t errlen);

static void fake_sink_write(sink *s, const sink_batch *b, sink_write_cb cb,
                            void *data) {
  (void)s;
  ASSERT(fs.write_cb == NULL);
  fs.writes++;
  buf_reset(&fs.last_batch);
  ASSERT_EQ(0, buf_append(&fs.last_batch, b->data, b->len));
  fs.first_seq = b->first_seq;
  fs.last_seq = b->last_seq;
  fs.write_cb = cb;
  fs.write_data = data;
}

static void fake_sink_sync(sink *s, sink_sync_cb cb, void *data) {
  (void)s;
  fs.syncs++;
  fs.sync_cb = cb;
  fs.sync_data = data;
}

static void fake_sink_close(sink *s, sink_close_cb cb, void *data) {
  (void)s;
  fs.closes++;
  cb(data);
}

static const sink_type fake_sink = {
  .name = "fake",
  .description = "test",
  .options = no_options,
  .open = fake_sink_open,
  .write = fake_sink_write,
  .sync = fake_sink_sync,
  .close = fake_sink_close,
};

static int fake_sink_open(uv_loop_t *loop, const char *arg, const void *conf,
                          const sink_policy *policy, const char *name,
                          sink **out, char *err, size_t errlen) {
  (void)loop, (void)arg, (void)conf, (void)policy, (void)name, (void)err,
      (void)errlen;
  fs.opens++;
  fs.s.type = &fake_sink;
  *out = &fs.s;
  return 0;
}

static void complete_write(sink_outcome o, const char *msg) {
  sink_write_cb cb = fs.write_cb;

  ASSERT(cb != NULL);
  fs.write_cb = NULL;
  cb(&fs.s, o, msg, fs.write_data);
}

/* ---- fake source -------------------------------------------------------- */

/* What the fake source heard, by callback. settled[seq] is the outcome
 * each event came to plus one (0 = none yet); a second settlement of one
 * event fails the test. */
#define MAX_SEQ 256

static struct {
  int starts, closes, rooms, delivered_calls, durable_calls;
  int intakes[3]; /* by source_intake */
  source_intake intake;
  uint64_t resume_seq, last_delivered, durable_seq;
  char resume_pos[64], durable_pos[64];
  int settled[MAX_SEQ];
  int settle_calls[3]; /* by source_outcome */
  consumer *c;
  source s;
} src;

static const char *fake_stream(const void *conf) {
  (void)conf;
  return "fake-stream";
}

static int fake_start(consumer *c, const void *conf, const source_resume *r,
                      source **out, char *err, size_t errlen);

static void fake_close(source *s) {
  (void)s;
  src.closes++;
  consumer_source_closed(src.c);
}

static void fake_on_room(source *s) {
  (void)s;
  src.rooms++;
}

static void fake_on_settled(source *s, uint64_t first, uint64_t last,
                            source_outcome o) {
  uint64_t seq;

  (void)s;
  ASSERT(first <= last && last < MAX_SEQ);
  for (seq = first; seq <= last; seq++) {
    ASSERT_EQ(0, src.settled[seq]);
    src.settled[seq] = (int)o + 1;
  }
  src.settle_calls[o]++;
  if (o == SOURCE_DELIVERED) {
    src.delivered_calls++;
    src.last_delivered = last;
  }
}

static void fake_on_durable(source *s, uint64_t seq, const char *pos) {
  (void)s;
  src.durable_calls++;
  src.durable_seq = seq;
  snprintf(src.durable_pos, sizeof src.durable_pos, "%s", pos);
}

static void fake_on_intake(source *s, source_intake i) {
  (void)s;
  src.intakes[i]++;
  src.intake = i;
}

/* How many of seqs first..last came to outcome o. */
static int settled_as(uint64_t first, uint64_t last, source_outcome o) {
  int n = 0;

  for (; first <= last; first++)
    n += src.settled[first] == (int)o + 1;
  return n;
}

static const source_type fake_source = {
  .name = "fake",
  .description = "test",
  .options = no_options,
  .stream_name = fake_stream,
  .start = fake_start,
  .close = fake_close,
  .on_room = fake_on_room,
  .on_settled = fake_on_settled,
  .on_durable = fake_on_durable,
  .on_intake = fake_on_intake,
};

static int fake_start(consumer *c, const void *conf, const source_resume *r,
                      source **out, char *err, size_t errlen) {
  (void)conf, (void)err, (void)errlen;
  src.starts++;
  /* Settlements are per instance: a new one may emit the seqs an older
   * one had (a rewind replays from the committed cursor). */
  memset(src.settled, 0, sizeof src.settled);
  src.c = c;
  src.resume_seq = r->seq;
  snprintf(src.resume_pos, sizeof src.resume_pos, "%s", r->position);
  src.s.type = &fake_source;
  src.s.consumer = c;
  *out = &src.s;
  consumer_source_connected(c);
  return 0;
}

/* ---- fixture ------------------------------------------------------------ */

static struct {
  int states[8], delivered_hooks, drained_hooks, closed_hooks;
} hk;

static void on_state(consumer *c, consumer_state s, void *data) {
  (void)c, (void)data;
  hk.states[s]++;
}

static void on_delivered(consumer *c, void *data) {
  (void)c, (void)data;
  hk.delivered_hooks++;
}

static void on_drained(consumer *c, void *data) {
  (void)c, (void)data;
  hk.drained_hooks++;
}

static void on_closed(consumer *c, void *data) {
  (void)c, (void)data;
  hk.closed_hooks++;
}

/* max_in_flight_bytes for the next setup; 0 = 1 MiB. */
static uint64_t setup_max_bytes;

typedef struct fixture {
  uv_loop_t loop;
  config_consumer conf;
  consumer *c;
} fixture;

static void setup(fixture *f, int64_t window, uint64_t resume_seq,
                  const char *resume_pos) {
  consumer_hooks hooks = { on_state,  on_delivered, on_drained,
                           on_closed, NULL,         NULL };
  source_resume r;
  char err[256];

  memset(&r, 0, sizeof r);
  r.seq = resume_seq;
  r.position = resume_pos;
  memset(&fs, 0, sizeof fs);
  memset(&src, 0, sizeof src);
  memset(&hk, 0, sizeof hk);
  memset(f, 0, sizeof *f);
  buf_init(&fs.last_batch, 0);
  ASSERT_EQ(0, uv_loop_init(&f->loop));
  f->conf.name = "orders";
  f->conf.common.max_in_flight = window;
  f->conf.common.max_in_flight_bytes =
      setup_max_bytes != 0 ? setup_max_bytes : 1 << 20;
  f->conf.common.retry_min = 1;
  f->conf.common.retry_max = 4;
  f->conf.source = &fake_source;
  f->conf.sink = &fake_sink;
  ASSERT_EQ(0, consumer_create(&f->loop, &f->conf, &r, &hooks, &f->c, err,
                               sizeof err));
  ASSERT_EQ(1, fs.opens);
  ASSERT_EQ(0, consumer_start(f->c, err, sizeof err));
  ASSERT_EQ(1, src.starts);
}

static void teardown(fixture *f) {
  consumer_close(f->c);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, hk.closed_hooks);
  ASSERT_EQ(1, fs.closes);
  consumer_destroy(f->c);
  ASSERT_EQ(0, uv_loop_close(&f->loop));
  buf_free(&fs.last_batch);
}

static void emit(fixture *f, const char *pos, const char *data) {
  event ev;

  memset(&ev, 0, sizeof ev);
  ev.name = "create";
  ev.kind = "orders";
  ev.position = pos;
  ev.position_len = strlen(pos);
  ev.data = data;
  ev.data_len = strlen(data);
  ev.data_is_json = true;
  ev.time_ms = 1767348000000;
  ASSERT(consumer_emit(f->c, &ev) != 0);
}

/* Runs the loop until the fake sink has seen n writes (bounded). */
static void run_until_writes(fixture *f, int n) {
  int turns;

  for (turns = 0; fs.writes < n && turns < 1000; turns++)
    uv_run(&f->loop, UV_RUN_ONCE);
  ASSERT_EQ(n, fs.writes);
}

static void test_resume_and_envelope(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 10, 41, "p41");
  ASSERT_EQ(41, src.resume_seq);
  ASSERT_STR_EQ("p41", src.resume_pos);
  emit(&f, "p42", "{\"id\":1}");
  run_until_writes(&f, 1);
  ASSERT_EQ(42, fs.first_seq);
  ASSERT_EQ(42, fs.last_seq);
  ASSERT_STR_EQ("{\"consumer\":\"orders\",\"seq\":42,\"cursor\":\"p42\","
                "\"event\":\"create\",\"kind\":\"orders\","
                "\"time\":\"2026-01-02T10:00:00.000Z\",\"data\":{\"id\":1}}\n",
                buf_cstr(&fs.last_batch));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(41, st.delivered_seq);
  ASSERT_EQ(1, st.in_flight);
  complete_write(SINK_DELIVERED, NULL);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(42, st.delivered_seq);
  ASSERT_EQ(0, st.in_flight);
  ASSERT_EQ(1, hk.delivered_hooks);
  ASSERT_EQ(1, src.delivered_calls);
  ASSERT_EQ(42, src.last_delivered);
  teardown(&f);
}

static void test_window_is_backpressure(void) {
  fixture f;
  int i;

  setup(&f, 4, 0, "");
  ASSERT_EQ(4, consumer_room(f.c));
  for (i = 1; i <= 4; i++)
    emit(&f, "p", "{}");
  ASSERT_EQ(0, consumer_room(f.c));
  run_until_writes(&f, 1);
  /* Still full while the sink holds the batch. */
  ASSERT_EQ(0, consumer_room(f.c));
  ASSERT_EQ(0, src.rooms);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(4, consumer_room(f.c));
  ASSERT_EQ(1, src.rooms);
  teardown(&f);
}

static void test_batches_form_while_sink_is_busy(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 100, 0, "");
  emit(&f, "a", "1");
  run_until_writes(&f, 1);
  emit(&f, "b", "2");
  emit(&f, "c", "3");
  uv_run(&f.loop, UV_RUN_NOWAIT);
  /* One write at a time: the next batch waits for the first. */
  ASSERT_EQ(1, fs.writes);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(2, fs.writes);
  ASSERT_EQ(2, fs.first_seq);
  ASSERT_EQ(3, fs.last_seq);
  ASSERT_CONTAINS(buf_cstr(&fs.last_batch), "\"seq\":2,\"cursor\":\"b\"");
  ASSERT_CONTAINS(buf_cstr(&fs.last_batch), "\"seq\":3,\"cursor\":\"c\"");
  complete_write(SINK_DELIVERED, NULL);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq);
  ASSERT_EQ(3, st.delivered);
  ASSERT(hk.drained_hooks >= 1);
  ASSERT(consumer_drained(f.c));
  teardown(&f);
}

static void on_synced(consumer *c, int status, const char *msg, void *data) {
  int *calls = data;

  (void)c, (void)msg;
  ASSERT_EQ(0, status);
  (*calls)++;
}

static void test_sync_snapshot(void) {
  fixture f;
  uint64_t seq;
  const char *pos;
  int64_t at;
  int calls = 0;
  sink_sync_cb cb;

  setup(&f, 10, 5, "p5");
  ASSERT(!consumer_dirty(f.c));
  emit(&f, "p6", "{}");
  emit(&f, "p7", "{}");
  run_until_writes(&f, 1);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT(consumer_dirty(f.c));
  consumer_sync(f.c, on_synced, &calls);
  /* The snapshot is the cursor when the sync began... */
  emit(&f, "p8", "{}");
  run_until_writes(&f, 2);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT(!consumer_dirty(f.c)); /* while syncing */
  cb = fs.sync_cb;
  fs.sync_cb = NULL;
  cb(&fs.s, 0, NULL, fs.sync_data);
  ASSERT_EQ(1, calls);
  /* ...not what was delivered during it. */
  consumer_snapshot(f.c, &seq, &pos, &at);
  ASSERT_EQ(7, seq);
  ASSERT_STR_EQ("p7", pos);
  ASSERT(at > 0);
  ASSERT(consumer_dirty(f.c)); /* seq 8 waits for the next round */
  teardown(&f);
}

static void test_sync_and_commit(void) {
  fixture f;
  int calls = 0;
  sink_sync_cb cb;
  consumer_stats st;

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{}");
  run_until_writes(&f, 1);
  complete_write(SINK_DELIVERED, NULL);
  consumer_sync(f.c, on_synced, &calls);
  ASSERT_EQ(1, fs.syncs);
  cb = fs.sync_cb;
  fs.sync_cb = NULL;
  cb(&fs.s, 0, NULL, fs.sync_data);
  ASSERT_EQ(1, calls);
  consumer_committed(f.c, 1, "p1", 0);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(1, st.committed_seq);
  ASSERT(!consumer_dirty(f.c));
  /* Commits never move the cursor backwards. */
  consumer_committed(f.c, 0, "", 0);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(1, st.committed_seq);
  teardown(&f);
}

static void test_retry_resends_same_batch(void) {
  fixture f;
  consumer_stats st;
  char first[512];

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{\"n\":1}");
  emit(&f, "p2", "{\"n\":2}");
  run_until_writes(&f, 1);
  snprintf(first, sizeof first, "%s", buf_cstr(&fs.last_batch));
  complete_write(SINK_RETRY, "write out: No space left on device");
  ASSERT_EQ(CONSUMER_BACKOFF, consumer_get_state(f.c));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(0, st.delivered_seq);
  ASSERT_EQ(1, st.sink_retries);
  /* Events emitted meanwhile do not join the failed batch. */
  emit(&f, "p3", "{\"n\":3}");
  run_until_writes(&f, 2);
  ASSERT_STR_EQ(first, buf_cstr(&fs.last_batch));
  ASSERT_EQ(1, fs.first_seq);
  ASSERT_EQ(2, fs.last_seq);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(CONSUMER_CONNECTED, consumer_get_state(f.c));
  ASSERT_EQ(3, fs.writes);
  ASSERT_EQ(3, fs.first_seq);
  complete_write(SINK_DELIVERED, NULL);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq);
  teardown(&f);
}

static void test_fatal_stops_source(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{}");
  run_until_writes(&f, 1);
  complete_write(SINK_FATAL, "write stdout: Broken pipe");
  ASSERT_EQ(CONSUMER_FAILED, consumer_get_state(f.c));
  /* Intake stops for good; the source stays open until the close, and
   * hears that what it emitted will not be delivered by this run. */
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_STOPPED]);
  ASSERT_EQ(0, src.closes);
  ASSERT_EQ(1, settled_as(1, 1, SOURCE_ABANDONED));
  ASSERT_EQ(0, consumer_room(f.c));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(0, st.delivered_seq);
  teardown(&f);
}

static void test_hold_blocks_room(void) {
  fixture f;

  setup(&f, 3, 0, "");
  consumer_hold(f.c, true);
  ASSERT_EQ(0, consumer_room(f.c));
  consumer_hold(f.c, false);
  ASSERT_EQ(3, consumer_room(f.c));
  ASSERT_EQ(1, src.rooms);
  teardown(&f);
}

static void test_abandon_drops_staged(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{}");
  run_until_writes(&f, 1);
  emit(&f, "p2", "{}");
  emit(&f, "p3", "{}");
  consumer_abandon(f.c);
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_STOPPED]);
  ASSERT_EQ(0, src.closes);
  /* The staged ones are given up; the one the sink holds may yet land. */
  ASSERT_EQ(2, settled_as(2, 3, SOURCE_ABANDONED));
  ASSERT_EQ(0, src.settled[1]);
  ASSERT(!consumer_drained(f.c)); /* the outstanding write */
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(1, settled_as(1, 1, SOURCE_DELIVERED));
  ASSERT(consumer_drained(f.c));
  uv_run(&f.loop, UV_RUN_NOWAIT);
  ASSERT_EQ(1, fs.writes);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(1, st.delivered_seq);
  ASSERT_EQ(0, st.in_flight);
  teardown(&f);
}

static void test_stop_source_still_delivers(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{}");
  emit(&f, "p2", "{}");
  consumer_stop_intake(f.c);
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_STOPPED]);
  ASSERT_EQ(0, src.closes);
  ASSERT_EQ(0, consumer_room(f.c));
  run_until_writes(&f, 1);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(CONSUMER_STOPPED, consumer_get_state(f.c));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(2, st.delivered_seq);
  ASSERT(consumer_drained(f.c));
  teardown(&f);
}

/* A source that fails while lines wait behind a slow write: they are
 * still written, and the window drains (a shutdown waits for that). */
static void test_source_failure_still_delivers_staged(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{}");
  run_until_writes(&f, 1);
  emit(&f, "p2", "{}");
  emit(&f, "p3", "{}");
  consumer_source_failed(f.c, "tie_group_exceeds_page");
  ASSERT_EQ(CONSUMER_FAILED, consumer_get_state(f.c));
  ASSERT(!consumer_drained(f.c));
  complete_write(SINK_DELIVERED, NULL);
  run_until_writes(&f, 2);
  ASSERT_EQ(2, fs.first_seq);
  ASSERT_EQ(3, fs.last_seq);
  complete_write(SINK_DELIVERED, NULL);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq);
  ASSERT(consumer_drained(f.c));
  ASSERT(hk.drained_hooks >= 1);
  ASSERT_EQ(CONSUMER_FAILED, consumer_get_state(f.c));
  teardown(&f);
}

static void ack(uint64_t first, uint64_t last) {
  fs.s.report.delivered(&fs.s, first, last, fs.s.report.data);
}

/* A sink that acknowledges events one by one, in any order: the cursor is
 * the highest seq below which everything is acknowledged, with that
 * event's position. */
static void test_acks_in_any_order(void) {
  fixture f;
  consumer_stats st;
  uint64_t seq;
  const char *pos;
  int64_t at;
  int calls = 0;
  sink_sync_cb cb;
  char p[8];
  int i;

  setup(&f, 8, 10, "p10");
  for (i = 11; i <= 15; i++) {
    snprintf(p, sizeof p, "p%d", i);
    emit(&f, p, "{}");
  }
  run_until_writes(&f, 1);
  complete_write(SINK_ACCEPTED, NULL);
  /* Accepted is not delivered: the window stays full of them. */
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(10, st.delivered_seq);
  ASSERT_EQ(5, st.in_flight);
  ack(13, 14);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(10, st.delivered_seq);
  ack(11, 11);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(11, st.delivered_seq);
  ack(12, 12);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(14, st.delivered_seq);
  ASSERT_EQ(1, st.in_flight);
  consumer_sync(f.c, on_synced, &calls);
  cb = fs.sync_cb;
  fs.sync_cb = NULL;
  cb(&fs.s, 0, NULL, fs.sync_data);
  consumer_snapshot(f.c, &seq, &pos, &at);
  ASSERT_EQ(14, seq);
  ASSERT_STR_EQ("p14", pos);
  /* Acks outside the window and repeats change nothing. */
  ack(1, 12);
  ack(14, 14);
  ack(99, 120);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(14, st.delivered_seq);
  ack(15, 15);
  ASSERT(consumer_drained(f.c));
  teardown(&f);
}

/* The window keeps growing past the ring's first size with acks pending,
 * and every position stays with its event. */
static void test_ring_grows_with_the_window(void) {
  fixture f;
  consumer_stats st;
  uint64_t seq;
  const char *pos;
  int64_t at;
  int calls = 0, i;
  sink_sync_cb cb;
  char p[16];

  setup(&f, 100, 0, "");
  for (i = 1; i <= 100; i++) {
    snprintf(p, sizeof p, "pos-%d", i);
    emit(&f, p, "{}");
  }
  ASSERT_EQ(0, consumer_room(f.c));
  run_until_writes(&f, 1);
  complete_write(SINK_ACCEPTED, NULL);
  ack(1, 77);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(77, st.delivered_seq);
  consumer_sync(f.c, on_synced, &calls);
  cb = fs.sync_cb;
  fs.sync_cb = NULL;
  cb(&fs.s, 0, NULL, fs.sync_data);
  consumer_snapshot(f.c, &seq, &pos, &at);
  ASSERT_STR_EQ("pos-77", pos);
  ack(78, 100);
  teardown(&f);
}

static void test_sink_failed_through_report(void) {
  fixture f;

  setup(&f, 10, 0, "");
  emit(&f, "p1", "{}");
  run_until_writes(&f, 1);
  complete_write(SINK_ACCEPTED, NULL);
  fs.s.report.failed(&fs.s, "handler exited", fs.s.report.data);
  ASSERT_EQ(CONSUMER_FAILED, consumer_get_state(f.c));
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_STOPPED]);
  ASSERT_EQ(1, settled_as(1, 1, SOURCE_ABANDONED));
  ASSERT(consumer_drained(f.c));
  teardown(&f);
}

static void test_pause_and_resume(void) {
  fixture f;
  char err[128];

  setup(&f, 10, 3, "p3");
  emit(&f, "p4", "{}");
  emit(&f, "p5", "{}");
  consumer_pause(f.c);
  ASSERT(consumer_is_paused(f.c));
  /* A pause keeps the source: its intake pauses. */
  ASSERT_EQ(0, src.closes);
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_PAUSED]);
  ASSERT_EQ(CONSUMER_PAUSED, consumer_get_state(f.c));
  ASSERT_EQ(0, consumer_room(f.c));
  /* In-flight events still go out while paused, and the source hears. */
  run_until_writes(&f, 1);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(2, settled_as(4, 5, SOURCE_DELIVERED));
  ASSERT_EQ(CONSUMER_PAUSED, consumer_get_state(f.c));
  ASSERT_EQ(0, src.rooms);
  ASSERT_EQ(0, consumer_resume(f.c, err, sizeof err));
  ASSERT_EQ(1, src.starts);
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_ON]);
  ASSERT_EQ(1, src.rooms);
  ASSERT_EQ(10, consumer_room(f.c));
  ASSERT_EQ(CONSUMER_CONNECTED, consumer_get_state(f.c));
  teardown(&f);
}

static void test_reset_to_needs_a_drained_window(void) {
  fixture f;
  consumer_stats st;
  char err[128];

  setup(&f, 10, 8, "p8");
  emit(&f, "p9", "{}");
  consumer_pause(f.c);
  ASSERT_EQ(UV_EBUSY, consumer_reset_to(f.c, 2, "p2"));
  run_until_writes(&f, 1);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(0, consumer_reset_to(f.c, 2, "p2"));
  /* The paused source read from the old position: it goes. */
  ASSERT_EQ(1, src.closes);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(2, st.delivered_seq);
  ASSERT_EQ(2, st.committed_seq);
  ASSERT_EQ(0, consumer_resume(f.c, err, sizeof err));
  ASSERT_EQ(2, src.starts);
  ASSERT_EQ(2, src.resume_seq);
  ASSERT_STR_EQ("p2", src.resume_pos);
  teardown(&f);
}

/* ---- rewind after a removed file ---------------------------------------- */

static void on_sync_status(consumer *c, int status, const char *msg,
                           void *data) {
  int *got = data;

  (void)c, (void)msg;
  *got = status;
}

/* Syncs and completes the fake sink's sync with status; returns what the
 * flusher's callback saw. */
static int sync_with(fixture *f, int status, const char *msg) {
  sink_sync_cb cb;
  int got = 1;

  consumer_sync(f->c, on_sync_status, &got);
  cb = fs.sync_cb;
  ASSERT(cb != NULL);
  fs.sync_cb = NULL;
  cb(&fs.s, status, msg, fs.sync_data);
  return got;
}

/* Delivers p<from>..p<to> through the fake sink in one batch. */
static void deliver(fixture *f, int from, int to) {
  char p[16];
  int i;

  for (i = from; i <= to; i++) {
    snprintf(p, sizeof p, "p%d", i);
    emit(f, p, "{}");
  }
  run_until_writes(f, fs.writes + 1);
  complete_write(SINK_DELIVERED, NULL);
}

/* Emits p<from>..p<to> and has the sink accept them as one batch: each is
 * then out, waiting for its own report. */
static void deliver_accepted(fixture *f, int from, int to) {
  char p[16];
  int i;

  for (i = from; i <= to; i++) {
    snprintf(p, sizeof p, "p%d", i);
    emit(f, p, "{}");
  }
  run_until_writes(f, fs.writes + 1);
  complete_write(SINK_ACCEPTED, NULL);
}

/* The sink's file was removed: everything after the committed cursor is
 * gone. The consumer goes back to that cursor before the flusher hears of
 * the failed sync, drops the window (a batch the sink still holds is
 * ignored when it returns), and starts the source again from the committed
 * seq and position, so the same events come again with the same seqs. */
static void test_rewind_on_removed_file(void) {
  fixture f;
  consumer_stats st;
  uint64_t seq;
  const char *pos;
  int64_t at;

  setup(&f, 100, 10, "p10");
  deliver(&f, 11, 13);
  ASSERT_EQ(0, sync_with(&f, 0, NULL));
  consumer_snapshot(f.c, &seq, &pos, &at);
  consumer_committed(f.c, seq, pos, at);
  consumer_committed_cursor(f.c, &seq, &pos, &at);
  ASSERT_EQ(13, seq);
  ASSERT_STR_EQ("p13", pos);
  deliver(&f, 14, 15);
  emit(&f, "p16", "{}");
  run_until_writes(&f, 3); /* p16 is with the sink */
  emit(&f, "p17", "{}");   /* p17 is staged */

  ASSERT_EQ(SINK_EREMOVED,
            sync_with(&f, SINK_EREMOVED, "out.ndjson was removed"));
  ASSERT_EQ(1, src.closes);
  /* The one the sink held and the staged one were never delivered: the
   * old instance heard so (in one run) before it was closed. */
  ASSERT_EQ(1, src.settle_calls[SOURCE_ABANDONED]);
  ASSERT_EQ(2, src.starts);
  ASSERT_EQ(13, src.resume_seq);
  ASSERT_STR_EQ("p13", src.resume_pos);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(13, st.delivered_seq);
  ASSERT_EQ(13, st.committed_seq);
  ASSERT_EQ(0, st.in_flight);
  ASSERT_EQ(1, st.sink_rewinds);
  ASSERT_EQ(4, st.retried); /* 14..17 come again */
  ASSERT(!consumer_dirty(f.c));
  ASSERT_EQ(CONSUMER_CONNECTED, consumer_get_state(f.c));

  /* The batch the sink held returns, delivered or not: it moves nothing,
   * and the staged p17 is gone. */
  emit(&f, "p14", "{}");
  complete_write(SINK_DELIVERED, NULL);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(13, st.delivered_seq);
  run_until_writes(&f, 4);
  ASSERT_EQ(14, fs.first_seq);
  ASSERT_EQ(14, fs.last_seq);
  ASSERT_CONTAINS(buf_cstr(&fs.last_batch), "\"seq\":14,\"cursor\":\"p14\"");
  complete_write(SINK_DELIVERED, NULL);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(14, st.delivered_seq);
  ASSERT(consumer_dirty(f.c));
  teardown(&f);
}

/* A paused consumer rewinds too: its source, which read past the committed
 * cursor, is closed and not started again until the resume, which starts it
 * from the committed cursor, not from what was handed over. */
static void test_rewind_while_paused(void) {
  fixture f;
  consumer_stats st;
  char err[128];

  setup(&f, 100, 0, "");
  deliver(&f, 1, 2);
  consumer_committed(f.c, 2, "p2", 0);
  deliver(&f, 3, 5);
  consumer_pause(f.c);
  ASSERT_EQ(0, src.closes);
  ASSERT_EQ(SINK_EREMOVED, sync_with(&f, SINK_EREMOVED, "removed"));
  ASSERT_EQ(1, src.closes);
  ASSERT_EQ(1, src.starts);
  ASSERT_EQ(CONSUMER_PAUSED, consumer_get_state(f.c));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(2, st.delivered_seq);
  ASSERT_EQ(0, consumer_resume(f.c, err, sizeof err));
  ASSERT_EQ(2, src.starts);
  ASSERT_EQ(2, src.resume_seq);
  ASSERT_STR_EQ("p2", src.resume_pos);
  teardown(&f);
}

/* A finite source that had emitted everything is started again, so what
 * was lost is produced once more and the consumer is not left "done"
 * with a gap. A stop for a drain meanwhile cancels that restart. */
static void test_rewind_restarts_a_done_source(void) {
  fixture f;

  setup(&f, 100, 0, "");
  deliver(&f, 1, 3);
  consumer_source_done(f.c);
  ASSERT_EQ(CONSUMER_DONE, consumer_get_state(f.c));
  ASSERT_EQ(SINK_EREMOVED, sync_with(&f, SINK_EREMOVED, "removed"));
  ASSERT_EQ(2, src.starts);
  ASSERT_EQ(0, src.resume_seq);
  ASSERT_EQ(CONSUMER_CONNECTED, consumer_get_state(f.c));
  teardown(&f);
}

/* ---- flusher_when_idle -------------------------------------------------- */

static struct {
  int flushed, idle_calls, idle_status;
  int flushed_at_idle; /* rounds finished when the waiter ran */
} fw;

static void on_flushed(flusher *fl, int status, void *data) {
  (void)fl, (void)data;
  ASSERT_EQ(0, status);
  fw.flushed++;
}

static void on_idle(flusher_waiter *w, int status) {
  (void)w;
  fw.idle_calls++;
  fw.idle_status = status;
  fw.flushed_at_idle = fw.flushed;
}

static void remove_tree(const char *dir) {
  char path[512];
  struct dirent *e;
  DIR *d = opendir(dir);

  ASSERT(d != NULL);
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    ASSERT_EQ(0, unlink(path));
  }
  closedir(d);
  ASSERT_EQ(0, rmdir(dir));
}

static void on_flusher_closed(void *data) {
  *(int *)data = 1;
}

static void complete_sync(void) {
  sink_sync_cb cb = fs.sync_cb;

  ASSERT(cb != NULL);
  fs.sync_cb = NULL;
  cb(&fs.s, 0, NULL, fs.sync_data);
}

/* A cursor reset must not be overwritten by a commit of an older snapshot:
 * the waiter runs only once no round is in flight, after the running one
 * has committed, and is cancelled when the flusher closes first. */
static void test_flusher_when_idle(void) {
  char dir[] = "/tmp/tether-flusher-XXXXXX", path[64], err[256];
  flusher_waiter w = { on_idle, NULL };
  int closed = 0;
  fixture f;
  store *st;
  flusher *fl;

  ASSERT(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/state.db", dir);
  memset(&fw, 0, sizeof fw);
  setup(&f, 10, 0, "");
  ASSERT_EQ(0, store_open(path, &st, err, sizeof err));
  ASSERT_EQ(0, flusher_create(&f.loop, st, 60000, &f.c, 1, &fl));

  /* Idle: the waiter runs at once. */
  flusher_when_idle(fl, &w);
  ASSERT_EQ(1, fw.idle_calls);
  ASSERT_EQ(0, fw.idle_status);

  /* A round held in its sink sync: the waiter waits for its commit. */
  emit(&f, "p1", "{}");
  run_until_writes(&f, 1);
  complete_write(SINK_DELIVERED, NULL);
  flusher_flush(fl, on_flushed, NULL);
  ASSERT(fs.sync_cb != NULL);
  flusher_when_idle(fl, &w);
  ASSERT_EQ(1, fw.idle_calls);
  complete_sync();
  RUN_UNTIL(&f.loop, fw.idle_calls == 2, 5000);
  ASSERT_EQ(0, fw.idle_status);
  ASSERT_EQ(1, fw.flushed_at_idle);

  /* Closing while a round runs cancels the waiter. */
  emit(&f, "p2", "{}");
  run_until_writes(&f, 2);
  complete_write(SINK_DELIVERED, NULL);
  flusher_flush(fl, on_flushed, NULL);
  flusher_when_idle(fl, &w);
  flusher_close(fl, on_flusher_closed, &closed);
  complete_sync();
  RUN_UNTIL(&f.loop, closed, 5000);
  ASSERT_EQ(3, fw.idle_calls);
  ASSERT_EQ(UV_ECANCELED, fw.idle_status);
  store_close(st);
  teardown(&f);
  remove_tree(dir);
}

/* ---- max_attempts and on_fail for a sink that fails whole batches ----- */

/* Sends the log to a file in dir, for the tests that read it back. */
static void log_to(const char *dir, char *path, size_t len) {
  snprintf(path, len, "%s/tether.log", dir);
  ASSERT_EQ(0, log_open(path));
  log_configure(LOG_INFO, LOG_FORMAT_TEXT);
}

static void log_back(void) {
  log_open(NULL);
  log_configure(LOG_INFO, LOG_FORMAT_TEXT);
}

/* Fails the batch the fake sink holds, as a full disk would. */
static void fail_write(fixture *f, int nth) {
  run_until_writes(f, nth);
  complete_write(SINK_RETRY, "write out: No space left on device");
}

/* on_fail = skip: the batch's max_attempts-th failed write gives its
 * events up. The source hears SOURCE_GAVE_UP for exactly those seqs, the
 * cursor passes them, and the next batch starts with a fresh count. */
static void test_batch_skipped_after_max_attempts(void) {
  char dir[PATH_MAX], logpath[PATH_MAX + 32], *log;
  consumer_stats st;
  uint64_t seq;
  const char *pos;
  int64_t at;
  fixture f;

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  log_to(dir, logpath, sizeof logpath);
  setup(&f, 10, 0, "");
  f.conf.policy.max_attempts = 2;
  f.conf.policy.on_fail = SINK_ON_FAIL_SKIP;
  emit(&f, "p1", "{}");
  emit(&f, "p2", "{}");
  emit(&f, "p3", "{}");
  fail_write(&f, 1);
  ASSERT_EQ(0, settled_as(1, 3, SOURCE_GAVE_UP));
  ASSERT_EQ(CONSUMER_BACKOFF, consumer_get_state(f.c));
  fail_write(&f, 2);
  ASSERT_EQ(1, fs.first_seq);
  ASSERT_EQ(3, fs.last_seq);
  ASSERT_EQ(3, settled_as(1, 3, SOURCE_GAVE_UP));
  ASSERT_EQ(1, src.settle_calls[SOURCE_GAVE_UP]);
  ASSERT_EQ(0, src.settled[4]);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq);
  ASSERT_EQ(0, st.in_flight);
  ASSERT_EQ(3, st.failed);
  ASSERT_EQ(0, st.dead_lettered);
  ASSERT_EQ(CONSUMER_CONNECTED, consumer_get_state(f.c));
  ASSERT(consumer_drained(f.c));
  /* The cursor a commit takes passes the given-up events. */
  ASSERT_EQ(0, sync_with(&f, 0, NULL));
  consumer_snapshot(f.c, &seq, &pos, &at);
  ASSERT_EQ(3, seq);
  ASSERT_STR_EQ("p3", pos);
  /* One failure of the next batch is retried, not given up. */
  emit(&f, "p4", "{}");
  fail_write(&f, 3);
  ASSERT_EQ(0, src.settled[4]);
  run_until_writes(&f, 4);
  ASSERT_EQ(4, fs.first_seq);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(1, settled_as(4, 4, SOURCE_DELIVERED));
  teardown(&f);
  log_back();
  log = test_read_file(logpath, NULL);
  ASSERT(log != NULL);
  ASSERT_CONTAINS(log, "error giving up on a batch after max_attempts "
                       "(on_fail = skip) consumer=orders sink=fake "
                       "first_seq=1 last_seq=3 attempts=2 err=\"write out: "
                       "No space left on device\"");
  free(log);
  test_rmtree(dir);
}

/* on_fail = dead_letter:PATH: each line of the batch becomes a record with
 * the last error, and its event is given up only once the records are
 * durable; the next batch does not wait for them. */
static void test_batch_dead_lettered_after_max_attempts(void) {
  char dir[PATH_MAX], dl[PATH_MAX + 32], batch[1024], *text, *nl, *p;
  consumer_stats st;
  json_error_t jerr;
  json_t *rec;
  fixture f;
  int n = 0;

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(dl, sizeof dl, "%s/dead.ndjson", dir);
  setup(&f, 10, 0, "");
  f.conf.policy.max_attempts = 2;
  f.conf.policy.on_fail = SINK_ON_FAIL_DEAD_LETTER;
  f.conf.policy.dead_letter = dl;
  emit(&f, "p1", "{\"n\":1}");
  emit(&f, "p2", "{\"n\":2}");
  fail_write(&f, 1);
  fail_write(&f, 2);
  snprintf(batch, sizeof batch, "%s", buf_cstr(&fs.last_batch));
  /* Not given up before the records are durable. */
  ASSERT_EQ(0, settled_as(1, 2, SOURCE_GAVE_UP));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(0, st.delivered_seq);
  ASSERT_EQ(2, st.in_flight);
  ASSERT(!consumer_drained(f.c));
  emit(&f, "p3", "{\"n\":3}");
  run_until_writes(&f, 3);
  ASSERT_EQ(3, fs.first_seq);
  complete_write(SINK_DELIVERED, NULL);
  RUN_UNTIL(&f.loop, settled_as(1, 2, SOURCE_GAVE_UP) == 2, 10000);
  ASSERT_EQ(1, settled_as(3, 3, SOURCE_DELIVERED));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq);
  ASSERT_EQ(2, st.failed);
  ASSERT_EQ(2, st.dead_lettered);
  ASSERT(consumer_drained(f.c));
  text = test_read_file(dl, NULL);
  ASSERT(text != NULL);
  for (p = text; (nl = strchr(p, '\n')) != NULL; p = nl + 1, n++) {
    rec = json_loadb(p, (size_t)(nl - p), 0, &jerr);
    ASSERT(rec != NULL);
    ASSERT_STR_EQ("orders",
                  json_string_value(json_object_get(rec, "consumer")));
    ASSERT_EQ(n + 1, json_integer_value(json_object_get(rec, "seq")));
    ASSERT_EQ(2, json_integer_value(json_object_get(rec, "attempts")));
    ASSERT_STR_EQ("write out: No space left on device",
                  json_string_value(json_object_get(rec, "error")));
    json_decref(rec);
  }
  ASSERT_EQ(2, n);
  ASSERT_STR_EQ("", p);
  /* Each record holds its line of the batch, as it was. */
  nl = strchr(batch, '\n');
  *nl = '\0';
  ASSERT_CONTAINS(text, batch);
  p = nl + 1;
  nl = strchr(p, '\n');
  ASSERT(nl != NULL);
  *nl = '\0';
  ASSERT_CONTAINS(text, p);
  free(text);
  teardown(&f);
  test_rmtree(dir);
}

/* on_fail = retry: nothing is given up; a warning at each max_attempts. */
static void test_batch_retried_past_max_attempts(void) {
  char dir[PATH_MAX], logpath[PATH_MAX + 32], *log, *at;
  fixture f;
  int i, warnings = 0;

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  log_to(dir, logpath, sizeof logpath);
  setup(&f, 10, 0, "");
  f.conf.policy.max_attempts = 2;
  f.conf.policy.on_fail = SINK_ON_FAIL_RETRY;
  emit(&f, "p1", "{}");
  for (i = 1; i <= 5; i++)
    fail_write(&f, i);
  ASSERT_EQ(0, src.settled[1]);
  run_until_writes(&f, 6);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(1, settled_as(1, 1, SOURCE_DELIVERED));
  teardown(&f);
  log_back();
  log = test_read_file(logpath, NULL);
  ASSERT(log != NULL);
  for (at = log; (at = strstr(at, "batch still not written after "
                                  "max_attempts; trying again (on_fail = "
                                  "retry)")) != NULL;
       at++)
    warnings++;
  ASSERT_EQ(2, warnings); /* at the 2nd and the 4th */
  ASSERT_CONTAINS(log, "first_seq=1 last_seq=1 attempts=4");
  free(log);
  test_rmtree(dir);
}

/* A sink that applies the policy to each event (exec, socket) is left to
 * it: its failed writes are only retried. */
static void test_per_event_sink_keeps_its_policy(void) {
  static sink_type per_event;
  fixture f;
  int i;

  setup(&f, 10, 0, "");
  per_event = fake_sink;
  per_event.per_event_policy = true;
  fs.s.type = &per_event;
  f.conf.policy.max_attempts = 1;
  f.conf.policy.on_fail = SINK_ON_FAIL_SKIP;
  emit(&f, "p1", "{}");
  for (i = 1; i <= 3; i++)
    fail_write(&f, i);
  ASSERT_EQ(0, src.settled[1]);
  run_until_writes(&f, 4);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(1, settled_as(1, 1, SOURCE_DELIVERED));
  teardown(&f);
}

/* Records queued before a rewind name seqs that the events emitted again
 * take over: when they become durable, those events are not given up. */
static void test_dead_letter_before_rewind_settles_nothing(void) {
  char dir[PATH_MAX], dl[PATH_MAX + 32], *text = NULL;
  consumer_stats st;
  fixture f;

  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(dl, sizeof dl, "%s/dead.ndjson", dir);
  setup(&f, 10, 0, "");
  f.conf.policy.max_attempts = 1;
  f.conf.policy.on_fail = SINK_ON_FAIL_DEAD_LETTER;
  f.conf.policy.dead_letter = dl;
  emit(&f, "p1", "{}");
  fail_write(&f, 1);
  ASSERT_EQ(SINK_EREMOVED, sync_with(&f, SINK_EREMOVED, "out was removed"));
  ASSERT_EQ(2, src.starts);
  emit(&f, "p1", "{}");
  RUN_UNTIL(&f.loop,
            (free(text), text = test_read_file(dl, NULL)) != NULL &&
                strstr(text, "\"seq\":1,") != NULL,
            10000);
  free(text);
  RUN_FOR(&f.loop, 50);
  ASSERT_EQ(0, src.settled[1]);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(0, st.delivered_seq);
  ASSERT_EQ(0, st.dead_lettered);
  run_until_writes(&f, 2);
  complete_write(SINK_DELIVERED, NULL);
  ASSERT_EQ(1, settled_as(1, 1, SOURCE_DELIVERED));
  teardown(&f);
  test_rmtree(dir);
}

/* ---- the source contract (daemon/source.h) ------------------------------ */

static void gave_up(uint64_t first, uint64_t last) {
  fs.s.report.gave_up(&fs.s, first, last, "refused", fs.s.report.data);
}

/* Commits the snapshot the way the flusher does after a good transaction:
 * the advance, then the end of the commit. */
static void commit_snapshot(fixture *f) {
  uint64_t seq;
  const char *pos;
  int64_t at;

  ASSERT_EQ(0, sync_with(f, 0, NULL));
  consumer_snapshot(f->c, &seq, &pos, &at);
  consumer_committed(f->c, seq, pos, at);
  consumer_commit_done(f->c, 0);
}

static void test_emit_returns_the_seq(void) {
  fixture f;
  event ev;

  setup(&f, 10, 41, "p41");
  memset(&ev, 0, sizeof ev);
  ev.name = "create";
  ev.kind = "orders";
  ev.position = "p";
  ev.position_len = 1;
  ev.data = "{}";
  ev.data_len = 2;
  ev.data_is_json = true;
  ASSERT_EQ(42, consumer_emit(f.c, &ev));
  ASSERT_EQ(43, consumer_emit(f.c, &ev));
  teardown(&f);
}

/* Each event comes to one outcome, told to the source in ranges and in any
 * order: delivered, gave up (the cursor passes it: the application refused
 * it), abandoned (the cursor does not: it comes again). */
static void test_settlement_kinds(void) {
  fixture f;
  consumer_stats st;

  setup(&f, 10, 0, "");
  deliver_accepted(&f, 1, 6);
  ack(3, 3);
  gave_up(1, 2);
  ASSERT_EQ(1, settled_as(3, 3, SOURCE_DELIVERED));
  ASSERT_EQ(2, settled_as(1, 2, SOURCE_GAVE_UP));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq); /* a refused event does not hold it */
  /* A repeat changes nothing: each event is settled once. */
  ack(1, 3);
  gave_up(3, 3);
  ASSERT_EQ(1, settled_as(3, 3, SOURCE_DELIVERED));
  ack(5, 5);
  consumer_abandon(f.c);
  ASSERT_EQ(1, settled_as(5, 5, SOURCE_DELIVERED));
  ASSERT_EQ(2, settled_as(4, 4, SOURCE_ABANDONED) +
                   settled_as(6, 6, SOURCE_ABANDONED));
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(3, st.delivered_seq); /* not past an abandoned one */
  ASSERT(consumer_drained(f.c));
  teardown(&f);
}

/* on_durable comes only after a commit covered the events: never at the
 * delivery, never after a failed commit. */
static void test_durable_only_after_the_commit(void) {
  fixture f;
  uint64_t seq;
  const char *pos;
  int64_t at;

  setup(&f, 10, 0, "");
  deliver(&f, 1, 2);
  ASSERT_EQ(2, settled_as(1, 2, SOURCE_DELIVERED));
  ASSERT_EQ(0, src.durable_calls);
  /* A commit that fails tells the source nothing. */
  ASSERT_EQ(0, sync_with(&f, 0, NULL));
  consumer_commit_done(f.c, STORE_EIO);
  ASSERT_EQ(0, src.durable_calls);
  ASSERT(consumer_dirty(f.c));
  /* The next one does, with the committed position. */
  ASSERT_EQ(0, sync_with(&f, 0, NULL));
  consumer_snapshot(f.c, &seq, &pos, &at);
  consumer_committed(f.c, seq, pos, at);
  ASSERT_EQ(0, src.durable_calls); /* not before the commit ended */
  consumer_commit_done(f.c, 0);
  ASSERT_EQ(1, src.durable_calls);
  ASSERT_EQ(2, src.durable_seq);
  ASSERT_STR_EQ("p2", src.durable_pos);
  teardown(&f);
}

/* A drain stops intake and keeps the source: what is in flight is settled
 * and the final commit's on_durable reaches it; close comes after, and
 * nothing after close. */
static void test_drain_keeps_the_source_until_close(void) {
  fixture f;

  setup(&f, 10, 0, "");
  deliver_accepted(&f, 1, 3);
  consumer_stop_intake(f.c);
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_STOPPED]);
  ASSERT_EQ(0, consumer_room(f.c));
  ack(1, 3);
  ASSERT_EQ(3, settled_as(1, 3, SOURCE_DELIVERED));
  ASSERT(consumer_drained(f.c));
  commit_snapshot(&f);
  ASSERT_EQ(1, src.durable_calls);
  ASSERT_EQ(3, src.durable_seq);
  ASSERT_EQ(0, src.closes);
  consumer_close(f.c);
  ASSERT_EQ(1, src.closes);
  /* Closed: a late commit does not reach it. */
  consumer_commit_done(f.c, 0);
  ASSERT_EQ(1, src.durable_calls);
  uv_run(&f.loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, hk.closed_hooks);
  consumer_destroy(f.c);
  ASSERT_EQ(0, uv_loop_close(&f.loop));
  buf_free(&fs.last_batch);
}

/* A paused consumer keeps its source: acks of what is out still settle
 * and commit, the source hears on_durable (it acknowledges upstream), no
 * room is given, and the resume gives room to the same instance. */
static void test_pause_keeps_acking(void) {
  fixture f;
  char err[128];

  setup(&f, 10, 0, "");
  deliver_accepted(&f, 1, 4);
  consumer_pause(f.c);
  ASSERT_EQ(1, src.intakes[SOURCE_INTAKE_PAUSED]);
  ack(1, 4);
  ASSERT_EQ(4, settled_as(1, 4, SOURCE_DELIVERED));
  ASSERT_EQ(0, src.rooms);
  ASSERT_EQ(0, consumer_room(f.c));
  commit_snapshot(&f);
  ASSERT_EQ(1, src.durable_calls);
  ASSERT_EQ(4, src.durable_seq);
  ASSERT_EQ(0, consumer_resume(f.c, err, sizeof err));
  ASSERT_EQ(1, src.starts);
  ASSERT_EQ(0, src.closes);
  ASSERT_EQ(1, src.rooms);
  teardown(&f);
}

/* The window is bounded in bytes too: it is full once its lines reach
 * max_in_flight_bytes, always takes one event however big, and settling
 * frees the room. */
static void test_byte_bound(void) {
  fixture f;
  consumer_stats st;
  char data[256];

  setup_max_bytes = 500;
  setup(&f, 100, 0, "");
  setup_max_bytes = 0;
  memset(data, 'x', 200);
  data[0] = '"';
  data[199] = '"';
  data[200] = '\0';
  emit(&f, "p1", data); /* a line of some 330 bytes */
  ASSERT(consumer_room(f.c) > 0);
  emit(&f, "p2", data);
  ASSERT_EQ(0, consumer_room(f.c));
  consumer_get_stats(f.c, &st);
  ASSERT(st.bytes_in_flight >= 500 && st.bytes_in_flight < 700);
  run_until_writes(&f, 1);
  complete_write(SINK_ACCEPTED, NULL);
  ASSERT_EQ(0, consumer_room(f.c));
  ack(1, 1);
  ASSERT(consumer_room(f.c) > 0);
  ack(2, 2);
  consumer_get_stats(f.c, &st);
  ASSERT_EQ(0, st.bytes_in_flight);
  ASSERT(st.bytes_delivered >= 500);
  /* One event bigger than the bound still goes: the window is empty. */
  {
    char huge[1024];

    memset(huge, 'y', sizeof huge - 1);
    huge[0] = '"';
    huge[sizeof huge - 2] = '"';
    huge[sizeof huge - 1] = '\0';
    ASSERT(consumer_room(f.c) > 0);
    emit(&f, "p3", huge);
    ASSERT_EQ(0, consumer_room(f.c));
  }
  teardown(&f);
}

/* ---- records and the seq lease, through a real store ------------------- */

static int waited, waited_status;

static void on_waited(consumer_waiter *w, int status) {
  (void)w;
  waited++;
  waited_status = status;
}

/* Records a source stages go into the same commit as the cursor, the
 * source hears on_durable once they are in, and a waiter runs then. */
static void test_records_commit_with_the_cursor(void) {
  char dir[] = "/tmp/tether-records-XXXXXX", path[64], err[256];
  consumer_waiter w = { on_waited, NULL };
  store_journal_entry *j = NULL;
  store_cursor cur;
  size_t n = 0;
  int closed = 0;
  fixture f;
  store *st;
  flusher *fl;
  store_key key = { "orders", "fake", "" };

  ASSERT(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/state.db", dir);
  waited = 0;
  setup(&f, 10, 0, "");
  ASSERT_EQ(0, store_open(path, &st, err, sizeof err));
  ASSERT_EQ(0, flusher_create(&f.loop, st, 60000, &f.c, 1, &fl));

  deliver(&f, 1, 2);
  ASSERT_EQ(0, consumer_journal_put(f.c, "m1", "lease-1", 7));
  consumer_when_durable(f.c, &w);
  ASSERT(consumer_dirty(f.c));
  flusher_flush(fl, NULL, NULL);
  ASSERT_EQ(0, src.durable_calls); /* the sync comes first */
  complete_sync();
  RUN_UNTIL(&f.loop, waited == 1, 5000);
  ASSERT_EQ(0, waited_status);
  ASSERT_EQ(1, src.durable_calls);
  ASSERT_EQ(2, src.durable_seq);
  ASSERT_EQ(0, store_load_journal(st, "orders", &j, &n, err, sizeof err));
  ASSERT_EQ(1, n);
  ASSERT_STR_EQ("m1", j[0].key);
  ASSERT_MEM_EQ("lease-1", 7, j[0].value, j[0].len);
  store_journal_free(j, n);
  memset(&cur, 0, sizeof cur);
  ASSERT_EQ(0, store_get(st, &key, &cur, err, sizeof err));
  ASSERT_EQ(2, cur.last_sequence);
  store_cursor_free(&cur);

  /* Records alone, with the cursor where it was: on_durable again. */
  ASSERT_EQ(0, consumer_journal_delete(f.c, "m1"));
  flusher_flush(fl, NULL, NULL);
  complete_sync();
  RUN_UNTIL(&f.loop, src.durable_calls == 2, 5000);
  ASSERT_EQ(2, src.durable_seq);
  ASSERT_EQ(0, store_load_journal(st, "orders", &j, &n, err, sizeof err));
  ASSERT_EQ(0, n);
  /* A record the store would refuse is refused when it is staged. */
  ASSERT_EQ(STORE_EINVAL, consumer_journal_put(f.c, "", "x", 1));

  flusher_close(fl, on_flusher_closed, &closed);
  RUN_UNTIL(&f.loop, closed, 5000);
  store_close(st);
  teardown(&f);
  remove_tree(dir);
}

/* No seq is handed out above the lease kept in the state file: the first
 * emit waits for the commit that extends it, which records the stream's
 * identity too. */
static void test_seq_lease(void) {
  char dir[] = "/tmp/tether-lease-XXXXXX", path[64], err[256];
  store_consumer sc;
  int closed = 0;
  fixture f;
  store *st;
  flusher *fl;

  ASSERT(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/state.db", dir);
  setup(&f, 10, 5, "p5");
  consumer_set_identity(f.c, "http://up/orders");
  consumer_set_seq_lease(f.c, 0);
  ASSERT_EQ(5, consumer_seq_lease(f.c)); /* never below the cursor */
  ASSERT_EQ(0, consumer_room(f.c));
  ASSERT(consumer_dirty(f.c));
  ASSERT_EQ(0, store_open(path, &st, err, sizeof err));
  ASSERT_EQ(0, flusher_create(&f.loop, st, 60000, &f.c, 1, &fl));
  flusher_flush(fl, NULL, NULL);
  complete_sync();
  RUN_UNTIL(&f.loop, consumer_seq_lease(f.c) > 5, 5000);
  ASSERT(consumer_seq_lease(f.c) >= 5 + 1024);
  ASSERT_EQ(10, consumer_room(f.c));
  memset(&sc, 0, sizeof sc);
  ASSERT_EQ(0, store_get_consumer(st, "orders", &sc, err, sizeof err));
  ASSERT_UEQ(consumer_seq_lease(f.c), (uint64_t)sc.high_seq);
  ASSERT_STR_EQ("http://up/orders", sc.identity);
  store_consumer_free(&sc);
  ASSERT(!consumer_dirty(f.c));
  flusher_close(fl, on_flusher_closed, &closed);
  RUN_UNTIL(&f.loop, closed, 5000);
  store_close(st);
  teardown(&f);
  remove_tree(dir);
}

static const test_case tests[] = {
  TEST(test_records_commit_with_the_cursor),
  TEST(test_seq_lease),
  TEST(test_emit_returns_the_seq),
  TEST(test_settlement_kinds),
  TEST(test_durable_only_after_the_commit),
  TEST(test_drain_keeps_the_source_until_close),
  TEST(test_pause_keeps_acking),
  TEST(test_byte_bound),
  TEST(test_batch_skipped_after_max_attempts),
  TEST(test_batch_dead_lettered_after_max_attempts),
  TEST(test_batch_retried_past_max_attempts),
  TEST(test_per_event_sink_keeps_its_policy),
  TEST(test_dead_letter_before_rewind_settles_nothing),
  TEST(test_flusher_when_idle),
  TEST(test_rewind_on_removed_file),
  TEST(test_rewind_while_paused),
  TEST(test_rewind_restarts_a_done_source),
  TEST(test_source_failure_still_delivers_staged),
  TEST(test_pause_and_resume),
  TEST(test_reset_to_needs_a_drained_window),
  TEST(test_acks_in_any_order),
  TEST(test_ring_grows_with_the_window),
  TEST(test_sink_failed_through_report),
  TEST(test_resume_and_envelope),
  TEST(test_window_is_backpressure),
  TEST(test_batches_form_while_sink_is_busy),
  TEST(test_sync_snapshot),
  TEST(test_sync_and_commit),
  TEST(test_retry_resends_same_batch),
  TEST(test_fatal_stops_source),
  TEST(test_hold_blocks_room),
  TEST(test_abandon_drops_staged),
  TEST(test_stop_source_still_delivers),
  { NULL, NULL },
};

TEST_MAIN(tests)
