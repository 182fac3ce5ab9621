/* Group commit of cursors.
 *
 * The order that keeps the delivery guarantee, and why:
 *
 *   1. sink write       the batch is delivered (in the page cache, for files)
 *   2. sink sync        fdatasync: the delivered bytes are on disk
 *   3. cursor commit    the store records the cursor of step 2's snapshot
 *   4. upstream ack     the source's on_durable: only now may anything be
 *                       told outside (an ack, an offset mirror)
 *
 * A cursor committed before its events are durable in the sink could, after
 * a power cut, point past events that never reached the disk: lost events.
 * So the snapshot is taken when the sync *starts*, and only that snapshot is
 * committed once the sync has finished; anything delivered during the sync
 * waits for the next round. The commit itself runs on the thread pool
 * (store_commit_start), so the loop never waits for the disk.
 *
 * When a commit fails (a full disk, an I/O error), every consumer is held
 * back until one succeeds, so what a crash would deliver again stays bounded
 * by one interval and the window, and the commit is retried with backoff.
 *
 * Two ways the disk can lose what a round relies on, while every write
 * still succeeds:
 *  - a file sink's file removed: its sync fails with SINK_EREMOVED, the
 *    consumer has already gone back to its committed cursor, and the round
 *    commits nothing for it;
 *  - the state file removed or replaced: the store creates it again, empty
 *    (STORE_ERECREATED), and the same round commits into it every
 *    consumer's cursor, not only the moved ones (need_full), then the
 *    paused flags. Until that full commit succeeds, every round makes it.
 */
#include "daemon/flusher.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "loop/backoff.h"

struct flusher {
  uv_loop_t *loop;
  store *st;
  uint64_t interval;
  consumer **consumers;
  size_t n;
  uv_timer_t timer;

  bool in_round;
  bool want_round; /* a flush was asked for during a round */
  size_t pending_syncs;
  bool *taking; /* per consumer: part of this round */
  bool round_failed;
  store_advance *reqs;
  char (*delivery_ids)[96];
  size_t *req_consumer; /* reqs[i] belongs to consumers[req_consumer[i]] */
  store_op *ops;        /* the records the taking consumers staged */
  size_t n_ops, cap_ops;

  flusher_cb round_cb; /* the flusher_flush the running round answers */
  void *round_cb_data;
  flusher_cb wait_cb; /* asked for during a round: answered by the next */
  void *wait_cb_data;
  flusher_waiter *idle_waiters; /* flusher_when_idle, run when a round ends */

  bool need_full;       /* the state file is new: commit every cursor */
  bool full_in_flight;  /* the running commit is such a full one */
  bool recreated_round; /* this round already found the file recreated */
  size_t commit_items;  /* items of the running commit (0 = a check only) */

  bool unhealthy;
  uint64_t failing_since; /* uv_now() of the first failure of a run */
  backoff retry;
  uint64_t commit_started; /* uv_hrtime() of the running commit */
  flusher_stats stats;

  bool closing;
  bool timer_closing;
  void (*close_cb)(void *data);
  void *close_data;
};

static void round_start(flusher *f);

static void on_timer(uv_timer_t *t) {
  flusher *f = t->data;

  if (f->in_round)
    f->want_round = true;
  else
    round_start(f);
}

static void arm(flusher *f, uint64_t delay) {
  if (!f->closing)
    uv_timer_start(&f->timer, on_timer, delay, 0);
}

void flusher_poke(flusher *f) {
  if (!f->unhealthy && !f->in_round && !uv_is_active((uv_handle_t *)&f->timer))
    arm(f, f->interval);
}

static void hold_all(flusher *f, bool hold) {
  size_t i;

  for (i = 0; i < f->n; i++)
    consumer_hold(f->consumers[i], hold);
}

static void on_closed(uv_handle_t *h) {
  flusher *f = h->data;
  void (*cb)(void *) = f->close_cb;
  void *data = f->close_data;

  free(f->taking);
  free(f->reqs);
  free(f->ops);
  free(f->delivery_ids);
  free(f->req_consumer);
  free(f);
  cb(data);
}

static void close_timer(flusher *f) {
  if (f->timer_closing)
    return;
  f->timer_closing = true;
  uv_close((uv_handle_t *)&f->timer, on_closed);
}

/* Runs the idle waiters, each once; ones added meanwhile run too. */
static void run_idle_waiters(flusher *f, int status) {
  flusher_waiter *w;

  while ((w = f->idle_waiters) != NULL && (status != 0 || !f->in_round)) {
    f->idle_waiters = w->next;
    w->cb(w, status);
  }
}

void flusher_when_idle(flusher *f, flusher_waiter *w) {
  if (f->closing) {
    w->cb(w, UV_ECANCELED);
    return;
  }
  if (!f->in_round) {
    w->cb(w, 0);
    return;
  }
  w->next = f->idle_waiters;
  f->idle_waiters = w;
}

static void round_done(flusher *f, int status) {
  flusher_cb cb = f->round_cb;
  void *data = f->round_cb_data;
  bool dirty = false;
  size_t i;

  f->in_round = false;
  f->round_cb = NULL;
  if (cb != NULL)
    cb(f, status, data);
  if (f->closing) {
    run_idle_waiters(f, UV_ECANCELED);
    close_timer(f);
    return;
  }
  run_idle_waiters(f, 0);
  for (i = 0; i < f->n; i++)
    dirty |= consumer_dirty(f->consumers[i]);
  if (f->want_round) {
    /* A flush asked for during the round needs a round of its own: the one
     * that just ended took its snapshots before the request. */
    f->want_round = false;
    f->round_cb = f->wait_cb;
    f->round_cb_data = f->wait_cb_data;
    f->wait_cb = NULL;
    round_start(f);
  } else if (dirty && !f->unhealthy) {
    arm(f, f->interval);
  }
}

const double flusher_bucket_bounds[FLUSHER_BUCKETS] = {
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5,
};

static void count_commit(flusher *f, bool ok) {
  double secs = (double)(uv_hrtime() - f->commit_started) / 1e9;
  size_t i;

  /* A commit of nothing only checked the state file: no transaction. */
  if (ok && f->commit_items == 0)
    return;
  if (!ok) {
    f->stats.failures++;
    return;
  }
  f->stats.commits++;
  f->stats.seconds += secs;
  for (i = 0; i < FLUSHER_BUCKETS; i++)
    if (secs <= flusher_bucket_bounds[i])
      f->stats.buckets[i]++;
}

void flusher_get_stats(const flusher *f, flusher_stats *out) {
  *out = f->stats;
}

static void round_commit(flusher *f);

/* After a full commit into a new state file: what else the store held that
 * the daemon knows, the operators' pauses. Written synchronously, on this
 * rare path only, right after the commit, so no commit is running. */
static void restore_flags(flusher *f) {
  char err[512];
  size_t i;

  for (i = 0; i < f->n; i++) {
    consumer *c = f->consumers[i];

    if (consumer_is_paused(c) &&
        store_set_paused(f->st, consumer_name(c), true, err, sizeof err) != 0)
      log_error("cannot write the paused flag into the new state file",
                LS("consumer", consumer_name(c)), LS("err", err));
  }
}

static void on_commit(void *data, int status, const char *msg,
                      const int *item_status, const char *const *item_msg,
                      size_t n) {
  flusher *f = data;
  bool full = f->full_in_flight;
  uint64_t delay;
  size_t i;
  int result = 0;

  f->full_in_flight = false;
  count_commit(f, status == 0);
  /* The store has made the state file again; tether still holds every
   * cursor, so it goes into the new file in this round. A second time in
   * one round is a failure like any other, retried with backoff. */
  if (status == STORE_ERECREATED && !f->recreated_round) {
    log_error("the state file was removed or replaced; writing every "
              "consumer's cursor into a new one",
              LS("state", store_path(f->st)), LS("err", msg));
    f->need_full = true;
    f->recreated_round = true;
    round_commit(f);
    return;
  }
  if (status != 0) {
    for (i = 0; i < f->n; i++)
      if (f->taking[i])
        consumer_commit_done(f->consumers[i], status);
    delay = backoff_next(&f->retry);
    if (delay < f->interval)
      delay = f->interval;
    log_error("cursor commit failed; consumers wait until it succeeds",
              LS("err", msg), LU("retry_in_ms", delay),
              LU("attempt", backoff_attempt(&f->retry)));
    if (!f->unhealthy) {
      hold_all(f, true);
      f->failing_since = uv_now(f->loop);
    }
    f->unhealthy = true;
    {
      char why[320];

      snprintf(why, sizeof why, "cursor commit failed: %s", msg);
      for (i = 0; i < f->n; i++)
        consumer_set_commit_error(f->consumers[i], why);
    }
    uv_timer_stop(&f->timer);
    arm(f, delay);
    round_done(f, status);
    return;
  }
  if (f->unhealthy) {
    log_info("cursor commits recovered",
             LU("attempts", backoff_attempt(&f->retry)));
    f->unhealthy = false;
    backoff_reset(&f->retry);
    hold_all(f, false);
    for (i = 0; i < f->n; i++)
      consumer_set_commit_error(f->consumers[i], NULL);
  }
  for (i = 0; i < n; i++) {
    consumer *c = f->consumers[f->req_consumer[i]];

    if (item_status[i] == 0) {
      consumer_committed(c, (uint64_t)f->reqs[i].last_sequence,
                         f->reqs[i].position, f->reqs[i].delivered_at);
      continue;
    }
    result = item_status[i];
    /* A refused advance means another writer moved the cursor (an operator
     * reset, a second tether): stop rather than overwrite it. */
    log_error("cursor commit refused; the consumer stops",
              LS("consumer", consumer_name(c)), LS("err", item_msg[i]));
    consumer_source_failed(c, item_msg[i]);
  }
  /* The durability rule: sources hear on_durable only now. */
  for (i = 0; i < f->n; i++)
    if (f->taking[i])
      consumer_commit_done(f->consumers[i], 0);
  if (full) {
    f->need_full = false;
    restore_flags(f);
    log_warn("the new state file holds every consumer's cursor again",
             LS("state", store_path(f->st)), LU("cursors", n));
  }
  round_done(f, result != 0 ? result : (f->round_failed ? UV_EIO : 0));
}

static int reserve_ops(flusher *f, size_t more) {
  store_op *bigger;
  size_t want = f->cap_ops ? f->cap_ops : 16;

  while (want < f->n_ops + more)
    want *= 2;
  if (want == f->cap_ops)
    return 0;
  if ((bigger = realloc(f->ops, want * sizeof *bigger)) == NULL)
    return UV_ENOMEM;
  f->ops = bigger;
  f->cap_ops = want;
  return 0;
}

/* The records c's snapshot carries join this round's operations. */
static int add_ops(flusher *f, consumer *c) {
  const store_op *op;
  size_t n, stride, i;

  consumer_snapshot_ops(c, &op, &n, &stride);
  if (n == 0)
    return 0;
  if (reserve_ops(f, n) != 0)
    return UV_ENOMEM;
  for (i = 0; i < n; i++)
    f->ops[f->n_ops++] =
        *(const store_op *)(const void *)((const char *)op + i * stride);
  return 0;
}

/* A state file made again: c's state row (identity, seq lease) too. */
static int add_state_op(flusher *f, consumer *c) {
  if (reserve_ops(f, 1) != 0)
    return UV_ENOMEM;
  consumer_state_op(c, &f->ops[f->n_ops++]);
  return 0;
}

/* A round that cannot be committed: the taking consumers take back what
 * their snapshots carried, for the next one. */
static void round_abort(flusher *f, int status) {
  size_t i;

  for (i = 0; i < f->n; i++)
    if (f->taking[i])
      consumer_commit_done(f->consumers[i], status);
  round_done(f, status);
}

static void round_commit(flusher *f) {
  size_t i, n = 0;
  uint64_t seq, committed;
  const char *pos, *committed_pos;
  int64_t at, committed_at;
  int rc;

  f->n_ops = 0;
  for (i = 0; i < f->n; i++) {
    consumer *c = f->consumers[i];
    store_advance *r;

    if ((f->need_full && add_state_op(f, c) != 0) ||
        (f->taking[i] && add_ops(f, c) != 0)) {
      log_error("out of memory building a commit");
      round_abort(f, UV_ENOMEM);
      return;
    }
    if (f->taking[i]) {
      consumer_snapshot(c, &seq, &pos, &at);
      consumer_committed_cursor(c, &committed, &committed_pos, &committed_at);
      /* Records alone, no new cursor: nothing to advance. */
      if (seq <= committed && !f->need_full)
        continue;
    } else if (f->need_full) {
      /* Not moved this round, but the new state file has none of it. */
      consumer_committed_cursor(c, &seq, &pos, &at);
      if (seq == 0)
        continue;
    } else {
      continue;
    }
    r = &f->reqs[n];
    memset(r, 0, sizeof *r);
    r->key.consumer_id = consumer_name(c);
    r->key.stream_name = consumer_stream_name(c);
    r->key.subject_id = "";
    r->last_sequence = (int64_t)seq;
    /* Deterministic, so a replay of the same commit is an idempotent
     * refresh rather than a fork. */
    snprintf(f->delivery_ids[n], sizeof f->delivery_ids[n], "%s:%" PRIu64,
             consumer_name(c), seq);
    r->delivery_id = f->delivery_ids[n];
    r->position = pos;
    r->delivered_at = at;
    f->req_consumer[n] = i;
    n++;
  }
  /* Even with nothing to commit the store is asked: it checks that the
   * state file is still there, which the last round before an exit must
   * do too. */
  f->commit_items = n;
  f->full_in_flight = f->need_full;
  f->commit_started = uv_hrtime();
  rc = store_commit_start(f->st, f->loop, f->reqs, n, f->ops, f->n_ops,
                          on_commit, f);
  if (rc != 0) {
    f->full_in_flight = false;
    log_error("cursor commit could not start", LS("err", uv_strerror(rc)));
    round_abort(f, rc);
  }
}

static void on_synced(consumer *c, int status, const char *msg, void *data) {
  flusher *f = data;
  size_t i;

  if (status != 0) {
    for (i = 0; i < f->n; i++)
      if (f->consumers[i] == c)
        f->taking[i] = false;
    /* Its records wait too: what they say may rest on the delivery. */
    consumer_commit_done(c, status);
    f->round_failed = true;
    /* A removed file was reported by the consumer, which rewound. */
    if (status != SINK_EREMOVED)
      log_error("sink sync failed; the cursor stays where it was",
                LS("consumer", consumer_name(c)), LS("err", msg));
  }
  if (--f->pending_syncs == 0)
    round_commit(f);
}

static void round_start(flusher *f) {
  size_t i;

  assert(!f->in_round);
  uv_timer_stop(&f->timer);
  f->in_round = true;
  f->round_failed = false;
  f->recreated_round = false;
  f->pending_syncs = 1; /* held until every sync is asked for */
  for (i = 0; i < f->n; i++) {
    f->taking[i] = consumer_dirty(f->consumers[i]);
    if (f->taking[i]) {
      f->pending_syncs++;
      consumer_sync(f->consumers[i], on_synced, f);
    }
  }
  if (--f->pending_syncs == 0)
    round_commit(f);
}

int flusher_create(uv_loop_t *loop, store *st, uint64_t interval_ms,
                   consumer **consumers, size_t n, flusher **out) {
  flusher *f = calloc(1, sizeof *f);

  if (f == NULL)
    return UV_ENOMEM;
  f->taking = calloc(n ? n : 1, sizeof *f->taking);
  f->reqs = calloc(n ? n : 1, sizeof *f->reqs);
  f->delivery_ids = calloc(n ? n : 1, sizeof *f->delivery_ids);
  f->req_consumer = calloc(n ? n : 1, sizeof *f->req_consumer);
  if (f->taking == NULL || f->reqs == NULL || f->delivery_ids == NULL ||
      f->req_consumer == NULL) {
    free(f->taking);
    free(f->reqs);
    free(f->delivery_ids);
    free(f->req_consumer);
    free(f);
    return UV_ENOMEM;
  }
  f->loop = loop;
  f->st = st;
  f->interval = interval_ms;
  f->consumers = consumers;
  f->n = n;
  backoff_init(&f->retry, interval_ms,
               30000 > interval_ms ? 30000 : interval_ms, 0, 0);
  uv_timer_init(loop, &f->timer);
  f->timer.data = f;
  *out = f;
  return 0;
}

void flusher_soon(flusher *f) {
  if (f->closing)
    return;
  if (f->in_round) {
    f->want_round = true;
    return;
  }
  /* While commits fail, the backoff's timer sets the pace. */
  if (f->unhealthy)
    return;
  round_start(f);
}

void flusher_flush(flusher *f, flusher_cb cb, void *data) {
  if (f->in_round) {
    assert(f->wait_cb == NULL && "one waiting flush at a time");
    f->wait_cb = cb;
    f->wait_cb_data = data;
    f->want_round = true;
    return;
  }
  f->round_cb = cb;
  f->round_cb_data = data;
  round_start(f);
}

bool flusher_healthy(const flusher *f) {
  return !f->unhealthy;
}

uint64_t flusher_failing_ms(const flusher *f) {
  return f->unhealthy ? uv_now(f->loop) - f->failing_since : 0;
}

void flusher_close(flusher *f, void (*cb)(void *data), void *data) {
  f->closing = true;
  f->close_cb = cb;
  f->close_data = data;
  uv_timer_stop(&f->timer);
  /* A running round finishes first; round_done closes the timer then. */
  if (!f->in_round) {
    run_idle_waiters(f, UV_ECANCELED);
    close_timer(f);
  }
}
