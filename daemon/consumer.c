/* The consumer: one source, one sink, a bounded window between them and the
 * cursor of the highest contiguous delivered event.
 *
 * Events are encoded into NDJSON lines as they are emitted, into `staged`.
 * When the sink is idle, the staged lines become one batch (`writing`) and a
 * new staging buffer starts, so the source keeps producing while the sink
 * writes. The sink delivers batches in order and wholly or not at all, so
 * the highest delivered event is always the end of the last delivered batch:
 * the cursor is contiguous by construction.
 *
 * Sequences: every emitted event gets next_seq; seq numbers continue from the
 * committed cursor across restarts. In flight = emitted, not yet delivered =
 * next_seq - 1 - delivered_seq, and it never exceeds max_in_flight.
 *
 * Settlement: every event emitted comes to one outcome, told to the source
 * through on_settled: delivered (the sink has it), gave up (the sink
 * refused it for good: on_fail = skip or dead_letter after max_attempts)
 * or abandoned (this run will not deliver it: a forced stop, a sink that
 * failed for good, a rewind). The cursor passes delivered and given-up
 * events, never abandoned ones. After every group commit the source hears
 * on_durable(seq): the only point where it may tell anything outside.
 *
 * The source's life has two phases (daemon/source.h): intake (on, paused
 * or stopped for good) and the instance itself, which lives on while intake
 * is off, so settlements and on_durable reach it through a pause, a drain
 * and the final commit; consumer_close closes it.
 *
 * Rewind: when the sink reports that what it held since the last commit is
 * gone (a file sink's file was removed, SINK_EREMOVED), the consumer goes
 * back to the committed cursor as a restart after a crash would: the window
 * is dropped, the cursor and next_seq return to the committed ones, and the
 * source is stopped and started again from the committed seq and position.
 * The consumer keeps no delivered lines, so the source produces them again,
 * with the same seq numbers; every source already resumes from a cursor.
 */
#include "daemon/consumer.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/dead_letter.h"
#include "daemon/log.h"
#include "loop/backoff.h"
#include "protocol/buf.h"
#include "protocol/envelope.h"
#include "store/store.h"

const char *const consumer_state_names[] = {
  "starting", "connected", "backoff", "paused", "done", "failed", "stopped",
};

struct consumer {
  uv_loop_t *loop;
  const config_consumer *conf;
  consumer_hooks hooks;
  consumer_state state;
  const char *stream_name;

  source *src;          /* the instance, until consumer_source_closed */
  bool src_closing;     /* close() called, waiting for consumer_source_closed */
  source_intake intake; /* as last told to the source */
  bool src_done;        /* a finite source emitted everything */
  bool failed;          /* the sink or the source failed for good */
  bool sink_dead;       /* the sink failed for good: nothing more is written;
                           a failed source still lets the window drain */
  bool held;            /* consumer_hold: room is 0 */
  bool abandoned;       /* consumer_abandon: undelivered events dropped */
  bool paused;          /* consumer_pause: intake paused until resumed */
  bool stopping;        /* consumer_stop_intake: intake stopped for good */
  bool resume_wanted;   /* start a new source once the old one has closed
                           (a rewind, or a resume after a reset) */
  bool discard_write;   /* the outstanding write predates a rewind */

  sink *snk;
  bool closing;
  bool rest_closing; /* timers and sink asked to close */
  int pending_closes;

  envelope_prefix prefix;
  uint64_t max_in_flight;
  uint64_t max_bytes;       /* max_in_flight_bytes */
  uint64_t bytes_in_flight; /* lines of events not yet settled */
  uint64_t next_seq;        /* the seq of the next emitted event */
  buf staged;               /* lines emitted and not yet handed to the sink */
  uint64_t staged_first;    /* seq of the first staged line */
  buf writing;              /* the batch the sink holds */
  uint64_t writing_first, writing_last;
  /* One slot per event in flight (seq & (ring_cap - 1)): its position and
   * whether the sink has delivered it. Sinks that acknowledge one by one
   * (exec, socket) do so in any order; the cursor is the highest seq below
   * which every slot is done. Slot buffers are reused, so a warm window
   * allocates nothing per event. */
  struct slot {
    char *pos;
    uint32_t len, cap;
    uint32_t bytes; /* of its envelope line */
    uint8_t state;  /* SLOT_* */
    uint64_t at;    /* uv_now() when emitted: the age of what waits */
  } * ring;
  size_t ring_cap;        /* a power of two, above the events in flight */
  char sink_state[64];    /* the sink's own state ("waiting_for_reader") */
  char sink_error[256];   /* the failure a batch retry waits on; "" = none */
  char commit_error[256]; /* the last commit failure while they fail */
  bool write_outstanding; /* sink->write called, cb not yet run */
  bool retry_wait;        /* the batch failed; retry_timer runs */
  uv_timer_t retry_timer;
  uv_idle_t kick; /* hands staged lines to the sink once per loop turn */
  backoff retry;
  /* max_attempts and on_fail for a sink that fails whole batches (see
   * give_up_batch): failed writes of the batch at fail_first, and the
   * dead-letter file, opened at its first record. */
  uint64_t fail_first, fail_count;
  dead_letter *dl;

  /* The cursor: the highest contiguous delivered event. */
  uint64_t delivered_seq;
  buf delivered_pos;
  int64_t delivered_at_ns;
  uint64_t committed_seq;
  buf committed_pos; /* the position committed with committed_seq */
  int64_t committed_at_ns;

  /* Records sources staged for the next commit (daemon/source.h), and
   * those the running commit carries. Each op's strings point into its
   * own allocations (name, value). */
  struct staged {
    store_op op;
    char *name;
    void *value;
  } * ops, *snap_ops;
  size_t n_ops, cap_ops, n_snap_ops, cap_snap_ops;
  consumer_waiter *waiters, *snap_waiters; /* consumer_when_durable */

  /* seqs up to seq_lease are reserved in the state file (its high_seq):
   * no seq above it is handed out, so after a crash and a reset the new
   * seqs start above every seq ever used. UINT64_MAX: no lease (tests). */
  uint64_t seq_lease;
  uint64_t lease_emitted; /* next_seq when the lease was last extended */
  char *identity;         /* the stream identity, recorded with the lease */
  bool identity_due;      /* not yet in the state file */
  uint64_t snap_lease;    /* the lease the running commit extends to; 0 */
  bool snap_error;        /* the running commit records error_text */
  bool snap_moved;        /* the running commit advances the cursor */

  /* An error waiting to be recorded in the cursor row (rate-bounded). */
  char error_text[256];
  bool error_due;
  uint64_t error_at_seq;  /* the cursor when it came; an advance clears it */
  uint64_t error_last_ms; /* uv_now() of the last one recorded */

  /* The snapshot a sync covers; only it may be committed afterwards. */
  bool syncing;
  uint64_t snap_seq;
  buf snap_pos;
  int64_t snap_at_ns;
  consumer_sync_cb sync_cb;
  void *sync_data;

  upstream *up;
  /* Source health, for the status line and the local API. */
  char last_error[256];
  int64_t backoff_until;
  unsigned attempt;
  uint64_t reconnects;

  /* The envelope's time, formatted once per millisecond. */
  int64_t time_ms;
  char time_text[32];

  consumer_stats stats;
};

enum { SLOT_PENDING, SLOT_DELIVERED, SLOT_GAVE_UP };

static void staged_free(struct staged *v, size_t n);
static void run_waiters(consumer_waiter *w, int status);

const char *const source_outcome_names[] = { "delivered", "gave_up",
                                             "abandoned" };

static int64_t wall_ns(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void set_state(consumer *c, consumer_state st) {
  if (c->state == st)
    return;
  c->state = st;
  if (c->hooks.on_state != NULL)
    c->hooks.on_state(c, st, c->hooks.data);
}

/* A source that may still be called: created and not closing. */
static bool src_live(const consumer *c) {
  return c->src != NULL && !c->src_closing;
}

/* The intake the source should have now. */
static source_intake wanted_intake(const consumer *c) {
  if (c->stopping || c->failed || c->closing)
    return SOURCE_INTAKE_STOPPED;
  return c->paused ? SOURCE_INTAKE_PAUSED : SOURCE_INTAKE_ON;
}

/* The state the consumer is in when nothing is going wrong. */
static consumer_state healthy_state(const consumer *c) {
  if (c->failed)
    return CONSUMER_FAILED;
  if (c->paused)
    return CONSUMER_PAUSED;
  if (c->src_done)
    return CONSUMER_DONE;
  if (src_live(c) && c->intake == SOURCE_INTAKE_ON)
    return CONSUMER_CONNECTED;
  return c->stopping ? CONSUMER_STOPPED : CONSUMER_STARTING;
}

static uint64_t in_flight(const consumer *c) {
  return c->next_seq - 1 - c->delivered_seq;
}

/* Nothing waits to be written and nothing written waits for its ack. */
bool consumer_drained(const consumer *c) {
  return c->staged.len == 0 && !c->write_outstanding && !c->retry_wait &&
         (c->abandoned || c->sink_dead || in_flight(c) == 0);
}

size_t consumer_room(const consumer *c) {
  uint64_t used = in_flight(c);

  if (c->held || c->failed || !src_live(c) || c->intake != SOURCE_INTAKE_ON ||
      used >= c->max_in_flight)
    return 0;
  /* The byte bound: one event always fits in an empty window, however big
   * it is, so a large event cannot wedge the consumer. */
  if (used > 0 && c->bytes_in_flight >= c->max_bytes)
    return 0;
  /* No seq beyond the lease: the next commit extends it. */
  if (c->next_seq > c->seq_lease)
    return 0;
  if (c->seq_lease - c->next_seq + 1 < c->max_in_flight - used)
    return (size_t)(c->seq_lease - c->next_seq + 1);
  return (size_t)(c->max_in_flight - used);
}

/* Asks the daemon for a commit now, not within the interval. */
static void commit_soon(consumer *c) {
  if (c->hooks.on_commit_wanted != NULL)
    c->hooks.on_commit_wanted(c, c->hooks.data);
}

/* An error for the cursor row's last_error (source, sink or commit). It is
 * recorded by the next commit unless the cursor moves first (an advance
 * clears last_error, as the store's rules say), and at most once every
 * ERROR_RECORD_MS, so a flapping upstream costs one write per interval. */
#define ERROR_RECORD_MS 10000

static void note_error(consumer *c, int kind, const char *why) {
  c->stats.errors[kind]++;
  snprintf(c->error_text, sizeof c->error_text, "%s", why);
  c->error_due = c->error_text[0] != '\0';
  c->error_at_seq = c->delivered_seq;
}

/* Tells a live source about a change of intake, once per change. */
static void tell_intake(consumer *c) {
  source_intake want = wanted_intake(c);

  if (!src_live(c) || c->intake == want)
    return;
  c->intake = want;
  if (c->src->type->on_intake != NULL)
    c->src->type->on_intake(c->src, want);
}

static void give_room(consumer *c) {
  if (src_live(c) && consumer_room(c) > 0)
    c->src->type->on_room(c->src);
}

static void on_kick(uv_idle_t *h);

/* The batch starts on the next loop turn, not at once: a source emitting a
 * burst from one callback then fills one batch instead of sending its first
 * event alone. */
static void schedule_kick(consumer *c) {
  if (!c->write_outstanding && !c->retry_wait && !c->closing &&
      !uv_is_active((uv_handle_t *)&c->kick))
    uv_idle_start(&c->kick, on_kick);
}

static void on_written(sink *s, sink_outcome outcome, const char *msg,
                       void *data);

static void issue_write(consumer *c) {
  sink_batch b;

  assert(!c->write_outstanding);
  b.data = c->writing.data;
  b.len = c->writing.len;
  b.first_seq = c->writing_first;
  b.last_seq = c->writing_last;
  c->write_outstanding = true;
  c->snk->type->write(c->snk, &b, on_written, c);
}

/* Turns the staged lines into the next batch when the sink is idle. */
static void start_batch(consumer *c) {
  if (c->write_outstanding || c->retry_wait || c->staged.len == 0 ||
      c->sink_dead)
    return;
  assert(c->writing.len == 0);
  buf_swap(&c->staged, &c->writing);
  c->writing_first = c->staged_first;
  c->writing_last = c->next_seq - 1;
  issue_write(c);
}

static void on_kick(uv_idle_t *h) {
  consumer *c = h->data;

  uv_idle_stop(h);
  start_batch(c);
}

static struct slot *slot_of(const consumer *c, uint64_t seq) {
  return &c->ring[seq & (c->ring_cap - 1)];
}

/* Tells the source the outcome of first..last, in runs of events that
 * were still pending (an event is settled once). */
static void settle(consumer *c, uint64_t first, uint64_t last, uint8_t state,
                   source_outcome outcome) {
  uint64_t seq, run = 0;
  struct slot *sl;

  if (first <= c->delivered_seq)
    first = c->delivered_seq + 1;
  if (last >= c->next_seq)
    last = c->next_seq - 1;
  for (seq = first; seq <= last; seq++) {
    sl = slot_of(c, seq);
    if (sl->state != SLOT_PENDING) {
      if (run != 0 && src_live(c) && c->src->type->on_settled != NULL)
        c->src->type->on_settled(c->src, run, seq - 1, outcome);
      run = 0;
      continue;
    }
    sl->state = state;
    c->bytes_in_flight -= sl->bytes;
    if (state == SLOT_DELIVERED)
      c->stats.bytes_delivered += sl->bytes;
    if (run == 0)
      run = seq;
  }
  if (run != 0 && src_live(c) && c->src->type->on_settled != NULL)
    c->src->type->on_settled(c->src, run, last, outcome);
}

/* Everything emitted and not settled will not be delivered by this run:
 * the source hears it is abandoned, and next_seq comes back to the cursor,
 * so the window is empty. Those seqs name the same events again only if a
 * new source replays them from the cursor. */
static void abandon_pending(consumer *c) {
  uint64_t seq, run = 0;

  for (seq = c->delivered_seq + 1; seq < c->next_seq; seq++) {
    struct slot *sl = slot_of(c, seq);

    if (sl->state == SLOT_PENDING) {
      c->bytes_in_flight -= sl->bytes;
      if (run == 0)
        run = seq;
      continue;
    }
    if (run != 0 && src_live(c) && c->src->type->on_settled != NULL)
      c->src->type->on_settled(c->src, run, seq - 1, SOURCE_ABANDONED);
    run = 0;
  }
  if (run != 0 && src_live(c) && c->src->type->on_settled != NULL)
    c->src->type->on_settled(c->src, run, c->next_seq - 1, SOURCE_ABANDONED);
  /* Settled events past the cursor (an ack sink's, out of order) cannot be
   * committed over the abandoned ones before them: they come again too. */
  c->bytes_in_flight = 0;
  c->next_seq = c->delivered_seq + 1;
}

/* Gives up on what is not delivered. keep_write: a batch the sink still
 * holds may yet come back delivered (a drain's second signal), so only what
 * is after it is abandoned; otherwise (the sink failed for good) its answer
 * is ignored when it comes and everything pending is abandoned. */
static void drop_undelivered(consumer *c, bool keep_write) {
  buf_reset(&c->staged);
  if (c->retry_wait) {
    uv_timer_stop(&c->retry_timer);
    c->retry_wait = false;
    buf_reset(&c->writing);
  }
  if (c->write_outstanding && !keep_write)
    c->discard_write = true;
  if (c->write_outstanding && keep_write) {
    uint64_t keep = c->writing_last;
    uint64_t seq, run = 0;

    for (seq = keep + 1; seq < c->next_seq; seq++) {
      c->bytes_in_flight -= slot_of(c, seq)->bytes;
      if (run == 0)
        run = seq;
    }
    if (run != 0 && src_live(c) && c->src->type->on_settled != NULL)
      c->src->type->on_settled(c->src, run, c->next_seq - 1, SOURCE_ABANDONED);
    c->next_seq = keep + 1;
    return;
  }
  buf_reset(&c->writing);
  abandon_pending(c);
}

static void notify_drained(consumer *c) {
  if (consumer_drained(c) && c->hooks.on_drained != NULL)
    c->hooks.on_drained(c, c->hooks.data);
}

/* Makes room in the ring for one more event in flight. */
static int ring_reserve(consumer *c) {
  struct slot *bigger;
  size_t cap = c->ring_cap ? c->ring_cap : 16, i;
  uint64_t seq;

  if (in_flight(c) + 1 < c->ring_cap)
    return 0;
  while (cap <= in_flight(c) + 1)
    cap *= 2;
  if ((bigger = calloc(cap, sizeof *bigger)) == NULL)
    return UV_ENOMEM;
  /* Events in flight move to their new places; the rest of the old slots'
   * buffers are freed. */
  for (seq = c->delivered_seq + 1; seq < c->next_seq; seq++) {
    bigger[seq & (cap - 1)] = *slot_of(c, seq);
    slot_of(c, seq)->pos = NULL;
  }
  for (i = 0; i < c->ring_cap; i++)
    free(c->ring[i].pos);
  free(c->ring);
  c->ring = bigger;
  c->ring_cap = cap;
  return 0;
}

static int set_slot(consumer *c, uint64_t seq, const char *pos, size_t len) {
  struct slot *sl = slot_of(c, seq);
  char *p;

  if (len + 1 > sl->cap) {
    if (len + 1 > UINT32_MAX || (p = realloc(sl->pos, len + 1)) == NULL)
      return UV_ENOMEM;
    sl->pos = p;
    sl->cap = (uint32_t)(len + 1);
  }
  memcpy(sl->pos, pos, len);
  sl->pos[len] = '\0';
  sl->len = (uint32_t)len;
  sl->state = SLOT_PENDING;
  sl->bytes = 0;
  sl->at = uv_now(c->loop);
  return 0;
}

/* Moves the cursor over every settled slot after it, then tells whoever
 * waits on the cursor: the flusher, the source (room) and the drain. */
static void advance(consumer *c) {
  uint64_t from = c->delivered_seq;
  struct slot *sl;

  while (c->delivered_seq + 1 < c->next_seq &&
         slot_of(c, c->delivered_seq + 1)->state != SLOT_PENDING)
    c->delivered_seq++;
  if (c->delivered_seq == from)
    return;
  sl = slot_of(c, c->delivered_seq);
  buf_reset(&c->delivered_pos);
  if (buf_append(&c->delivered_pos, sl->pos, sl->len) != 0) {
    /* Without the position the cursor cannot be committed; keep the old
     * one (and its seq) so nothing is committed ahead. */
    c->delivered_seq = from;
    return;
  }
  c->delivered_at_ns = wall_ns();
  c->stats.delivered += c->delivered_seq - from;
  if (c->hooks.on_delivered != NULL)
    c->hooks.on_delivered(c, c->hooks.data);
  give_room(c);
}

static void on_sink_delivered(sink *s, uint64_t first, uint64_t last,
                              void *data) {
  consumer *c = data;

  (void)s;
  settle(c, first, last, SLOT_DELIVERED, SOURCE_DELIVERED);
  advance(c);
  notify_drained(c);
}

static void on_sink_gave_up(sink *s, uint64_t first, uint64_t last,
                            const char *why, void *data) {
  consumer *c = data;

  (void)s, (void)why;
  settle(c, first, last, SLOT_GAVE_UP, SOURCE_GAVE_UP);
  advance(c);
  notify_drained(c);
}

static void on_sink_failed(sink *s, const char *why, void *data) {
  consumer *c = data;

  (void)s;
  if (c->failed)
    return;
  log_error("sink failed for good; the consumer stops",
            LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
            LS("err", why));
  snprintf(c->last_error, sizeof c->last_error, "%s", why);
  note_error(c, CONSUMER_ERROR_SINK, why);
  c->failed = true;
  c->sink_dead = true;
  drop_undelivered(c, false);
  tell_intake(c);
  set_state(c, CONSUMER_FAILED);
  notify_drained(c);
}

static void on_sink_state(sink *s, const char *state, void *data) {
  consumer *c = data;

  (void)s;
  if (state != NULL)
    log_warn("sink waiting", LS("consumer", c->conf->name),
             LS("sink", c->snk->type->name), LS("state", state));
  else if (c->sink_state[0] != '\0')
    log_info("sink ready again", LS("consumer", c->conf->name),
             LS("sink", c->snk->type->name));
  snprintf(c->sink_state, sizeof c->sink_state, "%s",
           state != NULL ? state : "");
}

/* The dead-letter records of a batch are durable: its events are given
 * up on. tag is the rewind count when they were queued: after a rewind,
 * those seqs name events emitted again, which are not. */
static void on_dead_letter(dead_letter *d, uint64_t first, uint64_t last,
                           uint64_t tag, void *data) {
  consumer *c = data;

  (void)d;
  if (tag != c->stats.sink_rewinds)
    return;
  c->stats.failed += last - first + 1;
  c->stats.dead_lettered += last - first + 1;
  on_sink_gave_up(c->snk, first, last, "dead-lettered after max_attempts", c);
}

static void maybe_closed(consumer *c);

static void on_dead_letter_closed(void *data) {
  consumer *c = data;

  c->dl = NULL;
  c->pending_closes--;
  maybe_closed(c);
}

/* max_attempts and on_fail, for a sink that fails whole batches (not
 * per_event_policy): each SINK_RETRY of the batch being written is an
 * attempt. At max_attempts, skip gives its events up, dead_letter queues a
 * record per line and gives them up once the records are durable, and
 * retry warns and goes on (again at each further max_attempts). Returns
 * true when the batch is done with; the next one then starts. */
static bool give_up_batch(consumer *c, const char *msg) {
  const sink_policy *p = &c->conf->policy;
  uint64_t first = c->writing_first, last = c->writing_last;
  char err[512];
  int rc;

  if (c->snk->type->per_event_policy || p->max_attempts <= 0)
    return false;
  /* The count starts again with each batch, and after a success. */
  if (backoff_attempt(&c->retry) == 0 || c->fail_first != first) {
    c->fail_first = first;
    c->fail_count = 0;
  }
  if (++c->fail_count % (uint64_t)p->max_attempts != 0)
    return false;
  switch (p->on_fail) {
  case SINK_ON_FAIL_RETRY:
    log_warn("batch still not written after max_attempts; trying again "
             "(on_fail = retry)",
             LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
             LU("first_seq", first), LU("last_seq", last),
             LU("attempts", c->fail_count), LS("err", msg));
    return false;
  case SINK_ON_FAIL_SKIP:
    log_error("giving up on a batch after max_attempts (on_fail = skip)",
              LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
              LU("first_seq", first), LU("last_seq", last),
              LU("attempts", c->fail_count), LS("err", msg));
    c->stats.failed += last - first + 1;
    break;
  case SINK_ON_FAIL_DEAD_LETTER:
    /* Opened at the first need, so only consumers that give up hold the
     * file open; a path that cannot be opened leaves the batch to be
     * retried, and the open is tried again at the next max_attempts. */
    rc = c->dl != NULL
             ? 0
             : dead_letter_open(c->loop, p->dead_letter, c->conf->name,
                                c->snk->type->name, c->conf->common.retry_min,
                                c->conf->common.retry_max, on_dead_letter, c,
                                &c->dl, err, sizeof err);
    if (rc == 0)
      rc = dead_letter_append(
          c->dl, first,
          c->fail_count > UINT32_MAX ? UINT32_MAX : (uint32_t)c->fail_count,
          msg, c->writing.data, c->writing.len, c->stats.sink_rewinds);
    if (rc != 0) {
      log_error("cannot dead-letter a batch after max_attempts; it will be "
                "retried",
                LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
                LU("first_seq", first), LU("last_seq", last),
                LS("err", c->dl == NULL ? err : uv_strerror(rc)));
      return false;
    }
    log_warn("a batch goes to the dead-letter file after max_attempts",
             LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
             LU("first_seq", first), LU("last_seq", last),
             LU("attempts", c->fail_count), LS("err", msg),
             LS("path", p->dead_letter));
    break;
  }
  buf_reset(&c->writing);
  backoff_reset(&c->retry);
  c->fail_first = 0;
  if (p->on_fail == SINK_ON_FAIL_SKIP)
    on_sink_gave_up(c->snk, first, last, msg, c);
  set_state(c, healthy_state(c));
  start_batch(c);
  return true;
}

static void on_retry(uv_timer_t *t) {
  consumer *c = t->data;

  c->retry_wait = false;
  if (c->closing || c->abandoned)
    return;
  issue_write(c);
}

static void on_written(sink *s, sink_outcome outcome, const char *msg,
                       void *data) {
  consumer *c = data;
  uint64_t delay;

  (void)s;
  c->write_outstanding = false;
  /* A batch from before a rewind: its events come again from the source.
   * Only a sink that cannot go on still counts. */
  if (c->discard_write && outcome != SINK_FATAL) {
    c->discard_write = false;
    buf_reset(&c->writing);
    start_batch(c);
    notify_drained(c);
    return;
  }
  c->discard_write = false;
  switch (outcome) {
  case SINK_DELIVERED:
  case SINK_ACCEPTED:
    buf_reset(&c->writing);
    c->sink_error[0] = '\0';
    if (backoff_attempt(&c->retry) > 0) {
      log_info("sink recovered", LS("consumer", c->conf->name),
               LS("sink", c->snk->type->name),
               LU("attempts", backoff_attempt(&c->retry)));
      backoff_reset(&c->retry);
    }
    set_state(c, healthy_state(c));
    /* Delivered: the whole batch, at once. Accepted: the sink reports each
     * event later through on_sink_delivered, and takes the next batch
     * now. */
    if (outcome == SINK_DELIVERED) {
      settle(c, c->writing_first, c->writing_last, SLOT_DELIVERED,
             SOURCE_DELIVERED);
      advance(c);
    }
    start_batch(c);
    break;

  case SINK_RETRY:
    c->stats.sink_retries++;
    c->stats.retried += c->writing_last - c->writing_first + 1;
    if (c->abandoned || c->closing) {
      /* Shutting down: what is not delivered stays behind the cursor and
       * comes again after the restart. */
      buf_reset(&c->writing);
      abandon_pending(c);
      break;
    }
    if (give_up_batch(c, msg))
      break;
    delay = backoff_next(&c->retry);
    snprintf(c->sink_error, sizeof c->sink_error, "%s", msg);
    note_error(c, CONSUMER_ERROR_SINK, msg);
    log_warn("sink failed; the batch will be retried",
             LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
             LS("err", msg), LU("events", c->writing_last - c->delivered_seq),
             LU("retry_in_ms", delay),
             LU("attempt", backoff_attempt(&c->retry)));
    c->retry_wait = true;
    uv_timer_start(&c->retry_timer, on_retry, delay, 0);
    set_state(c, CONSUMER_BACKOFF);
    break;

  case SINK_FATAL:
    log_error("sink failed for good; the consumer stops",
              LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
              LS("err", msg));
    snprintf(c->last_error, sizeof c->last_error, "%s", msg);
    note_error(c, CONSUMER_ERROR_SINK, msg);
    c->failed = true;
    c->sink_dead = true;
    buf_reset(&c->writing);
    drop_undelivered(c, false);
    tell_intake(c);
    set_state(c, CONSUMER_FAILED);
    break;
  }
  notify_drained(c);
}

uint64_t consumer_emit(consumer *c, const event *ev) {
  envelope e;
  size_t before = c->staged.len;
  uint64_t seq = c->next_seq;
  int64_t ms;

  /* The cheap part of consumer_room: a source that emits without room
   * breaks the window (the rest of the checks run in consumer_room, which
   * the source asked). */
  assert(c->next_seq - 1 - c->delivered_seq < c->max_in_flight &&
         "emit without room");
  ms = ev->time_ms;
  if (ms == 0) {
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  }
  if (ms != c->time_ms) {
    envelope_format_time(ms, c->time_text);
    c->time_ms = ms;
  }
  e.seq = seq;
  e.cursor = ev->position != NULL ? ev->position : "";
  e.cursor_len = ev->position != NULL ? ev->position_len : 0;
  e.event = ev->name;
  e.kind = ev->kind;
  e.time = c->time_text;
  e.data = ev->data;
  e.data_len = ev->data_len;
  e.data_is_json = ev->data_is_json;
  if (ring_reserve(c) != 0 || set_slot(c, seq, e.cursor, e.cursor_len) != 0 ||
      envelope_append(&c->staged, &c->prefix, &e) != 0) {
    c->staged.len = before;
    return 0;
  }
  slot_of(c, seq)->bytes = (uint32_t)(c->staged.len - before);
  c->bytes_in_flight += c->staged.len - before;
  if (before == 0)
    c->staged_first = seq;
  c->next_seq++;
  c->stats.emitted++;
  schedule_kick(c);
  /* The lease ran out: the next emit waits for the commit extending it. */
  if (c->next_seq > c->seq_lease)
    commit_soon(c);
  return seq;
}

int consumer_create(uv_loop_t *loop, const config_consumer *conf,
                    const source_resume *resume, const consumer_hooks *hooks,
                    consumer **out, char *err, size_t errlen) {
  consumer *c = calloc(1, sizeof *c);
  int rc;

  if (c == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  c->loop = loop;
  c->conf = conf;
  if (hooks != NULL)
    c->hooks = *hooks;
  c->state = CONSUMER_STARTING;
  /* The cursor key names the source type, never a path or a tuning
   * option: the stream itself is told by the identity beside it. */
  c->stream_name = conf->source->name;
  c->max_in_flight = (uint64_t)conf->common.max_in_flight;
  c->seq_lease = UINT64_MAX;
  c->max_bytes = conf->common.max_in_flight_bytes > 0
                     ? conf->common.max_in_flight_bytes
                     : UINT64_MAX;
  c->delivered_seq = resume->seq;
  c->committed_seq = resume->seq;
  c->next_seq = resume->seq + 1;
  c->time_ms = -1;
  buf_init(&c->staged, 0);
  buf_init(&c->writing, 0);
  buf_init(&c->delivered_pos, 0);
  buf_init(&c->committed_pos, 0);
  buf_init(&c->snap_pos, 0);
  backoff_init(&c->retry, conf->common.retry_min, conf->common.retry_max, 0, 0);
  if ((rc = envelope_prefix_init(&c->prefix, conf->name)) != 0 ||
      (rc = buf_append_str(&c->delivered_pos, resume->position)) != 0 ||
      (rc = buf_append_str(&c->committed_pos, resume->position)) != 0) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  rc = conf->sink->open(loop, conf->sink_arg, conf->sink_conf, &conf->policy,
                        conf->name, &c->snk, err, errlen);
  if (rc != 0)
    goto fail;
  c->snk->report.delivered = on_sink_delivered;
  c->snk->report.gave_up = on_sink_gave_up;
  c->snk->report.failed = on_sink_failed;
  c->snk->report.state = on_sink_state;
  c->snk->report.data = c;
  uv_timer_init(loop, &c->retry_timer);
  uv_idle_init(loop, &c->kick);
  c->retry_timer.data = c;
  c->kick.data = c;
  *out = c;
  return 0;

fail:
  envelope_prefix_free(&c->prefix);
  buf_free(&c->delivered_pos);
  buf_free(&c->committed_pos);
  free(c);
  return rc;
}

/* Creates the source after the last event handed over: the committed
 * cursor at start, the delivered one after a rewind or a reset (the window
 * is empty then). */
static int start_source(consumer *c, char *err, size_t errlen) {
  source_resume r;
  int rc;

  assert(c->src == NULL && in_flight(c) == 0);
  memset(&r, 0, sizeof r);
  r.seq = c->delivered_seq;
  r.position = buf_cstr(&c->delivered_pos);
  if (r.position == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  c->src_done = false;
  c->intake = wanted_intake(c);
  if (c->next_seq > c->seq_lease)
    commit_soon(c);
  rc =
      c->conf->source->start(c, c->conf->source_conf, &r, &c->src, err, errlen);
  if (rc != 0) {
    c->src = NULL;
    c->failed = true;
    set_state(c, CONSUMER_FAILED);
    return rc;
  }
  set_state(c, healthy_state(c));
  return 0;
}

int consumer_start(consumer *c, char *err, size_t errlen) {
  /* Paused at start (a pause outlives a restart): the source starts when
   * it is resumed. */
  if (c->paused) {
    set_state(c, CONSUMER_PAUSED);
    return 0;
  }
  if (c->src != NULL || c->failed || c->stopping || c->closing)
    return 0;
  return start_source(c, err, errlen);
}

/* Asks a live source to close; consumer_source_closed follows. */
static void close_source(consumer *c) {
  if (!src_live(c))
    return;
  c->src_closing = true;
  /* May call consumer_source_closed at once. */
  c->src->type->close(c->src);
}

void consumer_stop_intake(consumer *c) {
  c->stopping = true;
  /* A stop for good outranks a restart a rewind or a resume asked for. */
  c->resume_wanted = false;
  tell_intake(c);
  set_state(c, healthy_state(c));
}

void consumer_abandon(consumer *c) {
  c->abandoned = true;
  consumer_stop_intake(c);
  drop_undelivered(c, true);
  notify_drained(c);
}

void consumer_hold(consumer *c, bool hold) {
  bool was = c->held;

  c->held = hold;
  if (was && !hold)
    give_room(c);
}

static void maybe_closed(consumer *c) {
  if (c->pending_closes > 0 || c->src != NULL || c->snk != NULL)
    return;
  set_state(c, c->failed ? CONSUMER_FAILED : CONSUMER_STOPPED);
  if (c->hooks.on_closed != NULL)
    c->hooks.on_closed(c, c->hooks.data);
}

static void on_handle_closed(uv_handle_t *h) {
  consumer *c = h->data;

  c->pending_closes--;
  maybe_closed(c);
}

static void on_sink_closed(void *data) {
  consumer *c = data;

  c->snk = NULL;
  maybe_closed(c);
}

/* Closing order: the source first (it may still emit from a callback that
 * is already queued), then the sink, which finishes its running operation
 * before it lets go. */
static void close_rest(consumer *c) {
  if (c->src != NULL || c->rest_closing)
    return;
  c->rest_closing = true;
  c->pending_closes = 2;
  uv_close((uv_handle_t *)&c->retry_timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->kick, on_handle_closed);
  if (c->dl != NULL) {
    c->pending_closes++;
    dead_letter_close(c->dl, on_dead_letter_closed, c);
  }
  c->snk->type->close(c->snk, on_sink_closed, c);
}

void consumer_source_closed(consumer *c) {
  char err[256];

  c->src_closing = false;
  c->src = NULL;
  if (c->closing) {
    close_rest(c);
    return;
  }
  if (c->resume_wanted) {
    c->resume_wanted = false;
    if (!c->failed && !c->stopping && !c->paused &&
        start_source(c, err, sizeof err) != 0)
      consumer_source_failed(c, err);
  }
  set_state(c, healthy_state(c));
}

void consumer_pause(consumer *c) {
  if (c->paused)
    return;
  c->paused = true;
  tell_intake(c);
  set_state(c, healthy_state(c));
}

int consumer_resume(consumer *c, char *err, size_t errlen) {
  if (!c->paused)
    return 0;
  c->paused = false;
  if (c->failed || c->closing || c->stopping) {
    set_state(c, healthy_state(c));
    return 0;
  }
  if (c->src == NULL)
    return start_source(c, err, errlen);
  /* A source closing from a reset starts anew once it has closed. */
  if (c->src_closing) {
    c->resume_wanted = true;
    return 0;
  }
  tell_intake(c);
  set_state(c, healthy_state(c));
  give_room(c);
  return 0;
}

bool consumer_is_paused(const consumer *c) {
  return c->paused;
}

int consumer_reset_to(consumer *c, uint64_t seq, const char *position) {
  if (!consumer_drained(c) || in_flight(c) > 0)
    return UV_EBUSY;
  buf_reset(&c->delivered_pos);
  buf_reset(&c->committed_pos);
  if (buf_append_str(&c->delivered_pos, position) != 0 ||
      buf_append_str(&c->committed_pos, position) != 0)
    return UV_ENOMEM;
  c->delivered_seq = seq;
  c->committed_seq = seq;
  c->committed_at_ns = 0;
  c->next_seq = seq + 1;
  /* The paused source read from the old position: it goes, and the
   * resume starts a new one from the new cursor. */
  close_source(c);
  if (c->next_seq > c->seq_lease)
    commit_soon(c);
  return 0;
}

sink *consumer_sink(const consumer *c) {
  return c->snk;
}

const char *consumer_sink_state(const consumer *c) {
  return c->sink_state;
}

const config_consumer *consumer_config(const consumer *c) {
  return c->conf;
}

void consumer_close(consumer *c) {
  consumer_waiter *w = c->waiters, *sw = c->snap_waiters;

  assert(!c->closing);
  c->closing = true;
  c->waiters = c->snap_waiters = NULL;
  run_waiters(w, UV_ECANCELED);
  run_waiters(sw, UV_ECANCELED);
  c->resume_wanted = false;
  if (c->retry_wait) {
    uv_timer_stop(&c->retry_timer);
    c->retry_wait = false;
  }
  tell_intake(c);
  close_source(c);
  close_rest(c);
}

void consumer_destroy(consumer *c) {
  if (c == NULL)
    return;
  envelope_prefix_free(&c->prefix);
  buf_free(&c->staged);
  buf_free(&c->writing);
  buf_free(&c->delivered_pos);
  buf_free(&c->committed_pos);
  buf_free(&c->snap_pos);
  for (size_t i = 0; i < c->ring_cap; i++)
    free(c->ring[i].pos);
  free(c->ring);
  staged_free(c->ops, c->n_ops);
  staged_free(c->snap_ops, c->n_snap_ops);
  free(c->ops);
  free(c->snap_ops);
  free(c->identity);
  free(c);
}

void consumer_source_connected(consumer *c) {
  if (c->attempt > 0 || c->last_error[0] != '\0')
    log_info("source connected again", LS("consumer", c->conf->name),
             LS("source", c->conf->source->name), LU("attempts", c->attempt));
  c->attempt = 0;
  c->backoff_until = 0;
  c->last_error[0] = '\0';
  set_state(c, healthy_state(c));
}

void consumer_source_backoff(consumer *c, uint64_t delay_ms, unsigned attempt,
                             const char *why) {
  snprintf(c->last_error, sizeof c->last_error, "%s", why);
  note_error(c, CONSUMER_ERROR_SOURCE, why);
  c->attempt = attempt;
  c->backoff_until = wall_ns() / 1000000 + (int64_t)delay_ms;
  c->reconnects++;
  /* The first failure is worth a warning; a failure that keeps recurring
   * is logged again at each attempt, so the log shows it is still
   * failing, and the status line carries it too. */
  log_warn("source failed; retrying", LS("consumer", c->conf->name),
           LS("source", c->conf->source->name), LS("err", why),
           LU("retry_in_ms", delay_ms), LU("attempt", attempt));
  if (!c->failed && src_live(c) && c->intake == SOURCE_INTAKE_ON)
    set_state(c, CONSUMER_BACKOFF);
}

void consumer_set_upstream(consumer *c, upstream *up) {
  c->up = up;
}

upstream *consumer_upstream(const consumer *c) {
  return c->up;
}

void consumer_source_done(consumer *c) {
  c->src_done = true;
  if (!c->retry_wait)
    set_state(c, healthy_state(c));
  log_info("source finished", LS("consumer", c->conf->name),
           LU("last_seq", c->next_seq - 1));
}

void consumer_source_stalled(consumer *c) {
  c->stats.cursor_stalls++;
}

/* The source failed for good: its intake stops, and it stays open, so what
 * it emitted is still settled and made durable; consumer_close closes it. */
void consumer_source_failed(consumer *c, const char *why) {
  snprintf(c->last_error, sizeof c->last_error, "%s", why);
  note_error(c, CONSUMER_ERROR_SOURCE, why);
  log_error("source failed; the consumer stops", LS("consumer", c->conf->name),
            LS("source", c->conf->source->name), LS("err", why));
  c->failed = true;
  c->resume_wanted = false;
  tell_intake(c);
  set_state(c, CONSUMER_FAILED);
}

uv_loop_t *consumer_loop(const consumer *c) {
  return c->loop;
}

const char *consumer_name(const consumer *c) {
  return c->conf->name;
}

const char *consumer_stream_name(const consumer *c) {
  return c->stream_name;
}

source_intake consumer_intake(const consumer *c) {
  return wanted_intake(c);
}

/* The lease is extended by a chunk: at least LEASE_MIN seqs, or twice
 * what was emitted since the last extension, so a busy consumer extends
 * about once a commit and an idle one not at all. */
#define LEASE_MIN 1024

static bool lease_low(const consumer *c) {
  uint64_t used = c->next_seq - 1;

  return c->seq_lease != UINT64_MAX &&
         (c->identity_due || used + LEASE_MIN / 2 > c->seq_lease ||
          used + (c->next_seq - c->lease_emitted) > c->seq_lease);
}

bool consumer_dirty(const consumer *c) {
  if (c->syncing)
    return false;
  return c->delivered_seq > c->committed_seq || c->n_ops > 0 ||
         c->waiters != NULL || lease_low(c) ||
         (c->error_due && c->error_at_seq == c->delivered_seq);
}

/* ---- records staged by sources ------------------------------------------ */

static void staged_free(struct staged *v, size_t n) {
  size_t i;

  for (i = 0; i < n; i++) {
    free(v[i].name);
    free(v[i].value);
  }
}

/* Copies op (its name, subject and value) to the end of the staged ones. A
 * rule the store would refuse fails here, at the source that staged it,
 * not later in a commit that carries everyone's cursors. */
static int stage_op(consumer *c, const store_op *op, bool is_staged) {
  struct staged **v = is_staged ? &c->ops : &c->snap_ops;
  size_t *n = is_staged ? &c->n_ops : &c->n_snap_ops;
  size_t *cap = is_staged ? &c->cap_ops : &c->cap_snap_ops;
  struct staged *st;
  const char *name =
      op->kind == STORE_OP_CURSOR_PUT ? op->key.subject_id : op->name;
  store_op checked = *op;
  char err[256];
  int rc;

  checked.key.consumer_id = c->conf->name;
  checked.key.stream_name = c->stream_name;
  if (op->kind != STORE_OP_CURSOR_PUT)
    checked.key.subject_id = "";
  if ((rc = store_op_check(&checked, err, sizeof err)) != 0) {
    log_error("a record the state file would refuse was not staged",
              LS("consumer", c->conf->name), LS("err", err));
    return rc;
  }
  if (*n == *cap) {
    size_t want = *cap ? *cap * 2 : 8;
    struct staged *bigger = realloc(*v, want * sizeof *bigger);

    if (bigger == NULL)
      return UV_ENOMEM;
    *v = bigger;
    *cap = want;
  }
  st = &(*v)[*n];
  memset(st, 0, sizeof *st);
  st->op = *op;
  st->op.key.consumer_id = c->conf->name;
  st->op.key.stream_name = c->stream_name;
  if (name != NULL && (st->name = strdup(name)) == NULL)
    return UV_ENOMEM;
  if (op->len > 0) {
    if ((st->value = malloc(op->len)) == NULL) {
      free(st->name);
      return UV_ENOMEM;
    }
    memcpy(st->value, op->value, op->len);
  }
  st->op.value = st->value;
  if (op->kind == STORE_OP_CURSOR_PUT) {
    st->op.key.subject_id = st->name;
    st->op.name = NULL;
  } else {
    st->op.key.subject_id = "";
    st->op.name = st->name;
  }
  (*n)++;
  if (is_staged && c->hooks.on_delivered != NULL)
    c->hooks.on_delivered(c, c->hooks.data); /* commit within the interval */
  return 0;
}

int consumer_journal_put(consumer *c, const char *key, const void *value,
                         size_t len) {
  store_op op = {
    .kind = STORE_OP_JOURNAL_PUT, .name = key, .value = value, .len = len
  };

  return stage_op(c, &op, true);
}

int consumer_journal_delete(consumer *c, const char *key) {
  store_op op = { .kind = STORE_OP_JOURNAL_DELETE, .name = key };

  return stage_op(c, &op, true);
}

int consumer_outbox_put(consumer *c, uint64_t id, const void *value,
                        size_t len) {
  store_op op = {
    .kind = STORE_OP_OUTBOX_PUT, .id = id, .value = value, .len = len
  };

  return stage_op(c, &op, true);
}

int consumer_outbox_delete(consumer *c, uint64_t id) {
  store_op op = { .kind = STORE_OP_OUTBOX_DELETE, .id = id };

  return stage_op(c, &op, true);
}

int consumer_cursor_put(consumer *c, const char *subject, const char *position,
                        uint64_t seq) {
  store_op op = { .kind = STORE_OP_CURSOR_PUT,
                  .value = position,
                  .len = strlen(position),
                  .seq = (int64_t)seq };

  op.key.subject_id = subject;
  return stage_op(c, &op, true);
}

void consumer_when_durable(consumer *c, consumer_waiter *w) {
  if (c->closing) {
    w->cb(w, UV_ECANCELED);
    return;
  }
  w->next = c->waiters;
  c->waiters = w;
  commit_soon(c);
}

static void run_waiters(consumer_waiter *w, int status) {
  consumer_waiter *next;

  for (; w != NULL; w = next) {
    next = w->next;
    w->cb(w, status);
  }
}

void consumer_set_identity(consumer *c, const char *identity) {
  free(c->identity);
  c->identity = strdup(identity);
  c->identity_due = true;
}

void consumer_set_seq_lease(consumer *c, uint64_t high_seq) {
  c->seq_lease = high_seq > c->next_seq - 1 ? high_seq : c->next_seq - 1;
  c->lease_emitted = c->next_seq;
}

uint64_t consumer_seq_lease(const consumer *c) {
  return c->seq_lease;
}

/* What goes into the commit beside the cursor: the staged records, a lease
 * extension when the lease runs low, the error to record. Returns 0 or
 * UV_ENOMEM (then nothing of it is in this snapshot). */
static int snapshot_ops(consumer *c) {
  uint64_t now = uv_now(c->loop);
  store_op op;
  int rc = 0;

  assert(c->n_snap_ops == 0 && c->snap_waiters == NULL);
  /* The staged records move whole: swap the vectors. */
  {
    struct staged *v = c->snap_ops;
    size_t cap = c->cap_snap_ops;

    c->snap_ops = c->ops;
    c->cap_snap_ops = c->cap_ops;
    c->n_snap_ops = c->n_ops;
    c->ops = v;
    c->cap_ops = cap;
    c->n_ops = 0;
  }
  c->snap_waiters = c->waiters;
  c->waiters = NULL;
  if (lease_low(c)) {
    uint64_t used = c->next_seq - 1;
    uint64_t chunk = 2 * (c->next_seq - c->lease_emitted);

    if (chunk < LEASE_MIN)
      chunk = LEASE_MIN;
    memset(&op, 0, sizeof op);
    op.kind = STORE_OP_CONSUMER;
    op.name = c->identity_due ? c->identity : NULL;
    op.seq = (int64_t)((c->seq_lease > used ? c->seq_lease : used) + chunk);
    c->snap_lease = (uint64_t)op.seq;
    rc = stage_op(c, &op, false);
  }
  if (rc == 0 && c->error_due && c->error_at_seq == c->delivered_seq &&
      (c->error_last_ms == 0 || now - c->error_last_ms >= ERROR_RECORD_MS)) {
    memset(&op, 0, sizeof op);
    op.kind = STORE_OP_ERROR;
    op.value = c->error_text;
    op.len = strlen(c->error_text);
    if ((rc = stage_op(c, &op, false)) == 0)
      c->snap_error = true;
  }
  return rc;
}

/* A failed commit: what it carried is staged again, ahead of what came
 * meanwhile, for the next one. The lease and the error are made afresh by
 * the next snapshot. */
static void unsnapshot_ops(consumer *c) {
  size_t i, k = 0, want = c->n_snap_ops + c->n_ops;
  struct staged *v = want > 0 ? malloc(want * sizeof *v) : NULL;

  for (i = 0; i < c->n_snap_ops; i++) {
    struct staged *st = &c->snap_ops[i];

    if (st->op.kind == STORE_OP_CONSUMER || st->op.kind == STORE_OP_ERROR ||
        v == NULL) {
      if (v == NULL && st->op.kind != STORE_OP_CONSUMER &&
          st->op.kind != STORE_OP_ERROR)
        log_error("out of memory: a staged record is dropped",
                  LS("consumer", c->conf->name));
      free(st->name);
      free(st->value);
      continue;
    }
    v[k++] = *st;
  }
  if (v != NULL) {
    if (c->n_ops > 0)
      memcpy(v + k, c->ops, c->n_ops * sizeof *v);
    k += c->n_ops;
    free(c->ops);
    c->ops = v;
    c->n_ops = k;
    c->cap_ops = want;
  }
  c->n_snap_ops = 0;
  c->snap_lease = 0;
  c->snap_error = false;
  /* Waiters go on waiting for the next commit. */
  if (c->snap_waiters != NULL) {
    consumer_waiter *w = c->snap_waiters, *last = w;

    while (last->next != NULL)
      last = last->next;
    last->next = c->waiters;
    c->waiters = w;
    c->snap_waiters = NULL;
  }
}

void consumer_snapshot_ops(const consumer *c, const store_op **ops, size_t *n,
                           size_t *stride) {
  *ops = c->n_snap_ops > 0 ? &c->snap_ops[0].op : NULL;
  *n = c->n_snap_ops;
  *stride = sizeof(struct staged);
}

void consumer_state_op(const consumer *c, store_op *op) {
  memset(op, 0, sizeof *op);
  op->kind = STORE_OP_CONSUMER;
  op->key.consumer_id = c->conf->name;
  op->key.stream_name = c->stream_name;
  op->key.subject_id = "";
  op->name = c->identity;
  op->seq = c->seq_lease == UINT64_MAX ? 0 : (int64_t)c->seq_lease;
}

/* Goes back to the committed cursor (see the top of the file). Runs on the
 * loop thread from the sink's sync callback, before the flusher hears of
 * the failed sync, so no commit can cover what was lost. */
static void rewind_to_committed(consumer *c, const char *why) {
  uint64_t lost = c->next_seq - 1 - c->committed_seq;

  log_error("the sink lost what it held since the last commit; delivering "
            "again everything after the committed cursor",
            LS("consumer", c->conf->name), LS("sink", c->snk->type->name),
            LS("path", c->conf->sink_arg != NULL ? c->conf->sink_arg : ""),
            LS("err", why), LU("committed", c->committed_seq),
            LU("events", lost));
  c->stats.sink_rewinds++;
  c->stats.retried += lost;

  /* The window goes: staged lines are dropped, a batch waiting to be
   * retried too, and one the sink still holds is ignored when it
   * returns. What was not settled is abandoned. */
  buf_reset(&c->staged);
  if (c->retry_wait) {
    uv_timer_stop(&c->retry_timer);
    c->retry_wait = false;
    buf_reset(&c->writing);
  }
  if (c->write_outstanding)
    c->discard_write = true;
  if (uv_is_active((uv_handle_t *)&c->kick))
    uv_idle_stop(&c->kick);
  abandon_pending(c);

  /* Back to the committed cursor. Resuming from the delivered position
   * would skip what was lost, so without memory for the copy the consumer
   * stops (its cursor no longer dirty); a restart resumes from the
   * committed cursor. */
  c->delivered_seq = c->committed_seq;
  c->delivered_at_ns = c->committed_at_ns;
  c->next_seq = c->committed_seq + 1;
  if (buf_reserve(&c->delivered_pos, c->committed_pos.len + 1) != 0) {
    consumer_source_failed(c, "out of memory restoring the committed cursor");
    return;
  }
  buf_reset(&c->delivered_pos);
  buf_append(&c->delivered_pos, c->committed_pos.data, c->committed_pos.len);

  /* The source read past the committed cursor: it goes. A running one
   * starts again from the cursor once it has closed; a paused one when it
   * is resumed; a failed or draining one not at all (a restart resumes
   * from the committed cursor too). */
  if (src_live(c)) {
    c->src_done = false;
    c->resume_wanted = !c->failed && !c->stopping && !c->paused;
    close_source(c);
  }
  set_state(c, healthy_state(c));
  notify_drained(c);
}

static void on_synced(sink *s, int status, const char *msg, void *data) {
  consumer *c = data;
  consumer_sync_cb cb = c->sync_cb;

  (void)s;
  c->syncing = false;
  c->sync_cb = NULL;
  if (status == SINK_EREMOVED)
    rewind_to_committed(c, msg != NULL ? msg : "the sink's file was removed");
  cb(c, status, msg, c->sync_data);
}

void consumer_sync(consumer *c, consumer_sync_cb cb, void *data) {
  assert(!c->syncing);
  assert(c->snk != NULL);
  c->syncing = true;
  c->sync_cb = cb;
  c->sync_data = data;
  c->snap_seq = c->delivered_seq;
  c->snap_at_ns = c->delivered_at_ns;
  c->snap_moved = c->delivered_seq > c->committed_seq;
  buf_reset(&c->snap_pos);
  if (buf_append(&c->snap_pos, c->delivered_pos.data, c->delivered_pos.len) !=
          0 ||
      buf_cstr(&c->snap_pos) == NULL || snapshot_ops(c) != 0) {
    /* Memory, or a lease or error record the store would refuse (both
     * logged where they happened). */
    unsnapshot_ops(c);
    c->syncing = false;
    c->sync_cb = NULL;
    cb(c, UV_ENOMEM, "out of memory or an invalid record", data);
    return;
  }
  c->snk->type->sync(c->snk, on_synced, c);
}

void consumer_snapshot(const consumer *c, uint64_t *seq, const char **position,
                       int64_t *delivered_at_ns) {
  *seq = c->snap_seq;
  *position = c->snap_pos.data != NULL ? c->snap_pos.data : "";
  *delivered_at_ns = c->snap_at_ns;
}

/* The cursor up to seq, at position, is committed (the flusher's advance
 * went through). consumer_commit_done follows for the whole commit. */
void consumer_committed(consumer *c, uint64_t seq, const char *position,
                        int64_t delivered_at_ns) {
  if (seq <= c->committed_seq)
    return;
  /* Room first, so the stored pair never mixes a new seq with an old
   * position; without it the previous cursor stays, which a rewind can
   * only repeat from. */
  if (buf_reserve(&c->committed_pos, strlen(position) + 1) != 0) {
    log_error("out of memory keeping the committed position",
              LS("consumer", c->conf->name));
    return;
  }
  buf_reset(&c->committed_pos);
  buf_append_str(&c->committed_pos, position);
  buf_cstr(&c->committed_pos);
  c->committed_seq = seq;
  c->committed_at_ns = delivered_at_ns;
}

/* The durability rule's last step: the commit is done, so the source may
 * now tell the world (on_durable). It hears this after every commit that
 * covered the consumer (moved its cursor or carried its records), while it
 * lives: through a pause, a drain and the final commit. */
void consumer_commit_done(consumer *c, int status) {
  consumer_waiter *w = c->snap_waiters;
  bool had_ops = false;
  size_t i;

  if (status != 0) {
    unsnapshot_ops(c);
    return;
  }
  for (i = 0; i < c->n_snap_ops; i++)
    had_ops |= c->snap_ops[i].op.kind != STORE_OP_CONSUMER &&
               c->snap_ops[i].op.kind != STORE_OP_ERROR;
  staged_free(c->snap_ops, c->n_snap_ops);
  c->n_snap_ops = 0;
  c->snap_waiters = NULL;
  if (c->snap_lease != 0) {
    c->seq_lease = c->snap_lease;
    c->lease_emitted = c->next_seq;
    c->identity_due = false;
    c->snap_lease = 0;
    give_room(c); /* emits that waited for the lease */
  }
  if (c->snap_error) {
    c->snap_error = false;
    c->error_last_ms = uv_now(c->loop);
    c->error_due = false;
  }
  if ((c->snap_moved || had_ops) && src_live(c) &&
      c->src->type->on_durable != NULL) {
    const char *pos = buf_cstr(&c->committed_pos);

    c->src->type->on_durable(c->src, c->committed_seq, pos != NULL ? pos : "");
  }
  c->snap_moved = false;
  run_waiters(w, 0);
}

void consumer_committed_cursor(consumer *c, uint64_t *seq,
                               const char **position,
                               int64_t *delivered_at_ns) {
  const char *p = buf_cstr(&c->committed_pos);

  *seq = c->committed_seq;
  *position = p != NULL ? p : "";
  *delivered_at_ns = c->committed_at_ns;
}

void consumer_reopen(consumer *c) {
  if (c->snk != NULL && !c->closing && c->snk->type->reopen != NULL)
    c->snk->type->reopen(c->snk);
  if (c->dl != NULL && !c->closing)
    dead_letter_reopen(c->dl);
}

void consumer_set_commit_error(consumer *c, const char *why) {
  if (why == NULL) {
    c->commit_error[0] = '\0';
    return;
  }
  snprintf(c->commit_error, sizeof c->commit_error, "%s", why);
  note_error(c, CONSUMER_ERROR_COMMIT, c->commit_error);
}

const char *consumer_sink_status(const consumer *c, char *out, size_t len) {
  if (c->sink_dead)
    snprintf(out, len, "failed: %s", c->last_error);
  else if (c->retry_wait && c->sink_error[0] != '\0')
    snprintf(out, len, "retrying: %s", c->sink_error);
  else if (c->sink_state[0] != '\0')
    snprintf(out, len, "%s", c->sink_state);
  else
    snprintf(out, len, "ok");
  return out;
}

const char *consumer_error_now(const consumer *c) {
  if (c->commit_error[0] != '\0')
    return c->commit_error;
  if (c->retry_wait && c->sink_error[0] != '\0')
    return c->sink_error;
  return c->last_error;
}

consumer_state consumer_get_state(const consumer *c) {
  return c->state;
}

void consumer_get_stats(const consumer *c, consumer_stats *out) {
  *out = c->stats;
  out->delivered_seq = c->delivered_seq;
  out->committed_seq = c->committed_seq;
  out->in_flight = (size_t)in_flight(c);
  out->bytes_in_flight = c->bytes_in_flight;
  out->oldest_ms = in_flight(c) > 0
                       ? uv_now(c->loop) - slot_of(c, c->delivered_seq + 1)->at
                       : 0;
  out->position = c->delivered_pos.data != NULL ? c->delivered_pos.data : "";
  out->position_len = c->delivered_pos.len;
  out->reconnects = c->reconnects;
  out->backoff_until = c->backoff_until;
  out->attempt = c->attempt;
  out->last_error = c->last_error;
  out->write_errors = out->sink_retries;
  if (c->dl != NULL)
    out->write_errors += dead_letter_write_errors(c->dl);
  if (c->snk != NULL && c->snk->type->stats != NULL) {
    sink_stats ss;

    memset(&ss, 0, sizeof ss);
    c->snk->type->stats(c->snk, &ss);
    out->write_errors += ss.write_errors;
    out->retried += ss.redelivered;
    out->failed += ss.failed;
    out->dead_lettered += ss.dead_lettered;
  }
}
