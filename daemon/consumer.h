/* A consumer joins one source to one sink through a bounded delivery window
 * and keeps the cursor of the highest contiguous delivered event.
 *
 * The flow of one event (DESIGN §3):
 *   source --consumer_emit--> window (encoded as an NDJSON envelope line)
 *   --> sink write --> delivered --> cursor advances --> the flusher syncs
 *   the sink and commits the cursor --> (upstream ack, later sources).
 *
 * Backpressure, not buffering: at most max_in_flight events (and about
 * max_in_flight_bytes of their lines) are between emit and delivery.
 * consumer_room() says how many more may be emitted now; a source with no
 * room stops reading and waits for its on_room().
 *
 * What a source may rely on is written in daemon/source.h: settlement of
 * every event, on_durable after every commit, a two-phase stop.
 */
#ifndef TETHER_DAEMON_CONSUMER_H
#define TETHER_DAEMON_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/config.h"
#include "daemon/sink.h"
#include "daemon/source.h"
#include "store/store.h"

typedef struct consumer consumer;
typedef struct upstream upstream;

typedef enum consumer_state {
  CONSUMER_STARTING,
  CONSUMER_CONNECTED, /* the source is reading */
  CONSUMER_BACKOFF,   /* waiting to retry the source or the sink */
  CONSUMER_PAUSED,    /* paused by an operator */
  CONSUMER_DONE,      /* a finite source emitted everything */
  CONSUMER_FAILED,    /* stopped on an error that retrying cannot fix */
  CONSUMER_STOPPED,
} consumer_state;

extern const char *const consumer_state_names[];

/* One event as a source hands it over. Every pointer is borrowed for the
 * call: the consumer copies what it keeps. */
typedef struct event {
  const char *name;     /* "create", "tick", ...; NUL-terminated */
  const char *kind;     /* e.g. the collection; NUL-terminated */
  const char *position; /* the upstream cursor after this event */
  size_t position_len;
  const char *data; /* the payload */
  size_t data_len;
  bool data_is_json; /* embed as it is; false: encode as a JSON string */
  int64_t time_ms;   /* event time in Unix ms; 0 = now */
} event;

/* Where an error came from, for the errors counted in consumer_stats. */
enum { CONSUMER_ERROR_SOURCE, CONSUMER_ERROR_SINK, CONSUMER_ERROR_COMMIT };

/* What the flusher needs of a consumer, and what the status shows. */
typedef struct consumer_stats {
  uint64_t emitted;         /* events taken from the source since start */
  uint64_t delivered;       /* events the sink reported delivered */
  uint64_t delivered_seq;   /* cursor: highest contiguous delivered seq */
  uint64_t committed_seq;   /* the cursor as last committed */
  size_t in_flight;         /* emitted, not yet delivered */
  uint64_t bytes_in_flight; /* their envelope lines, not yet settled */
  uint64_t bytes_delivered; /* envelope lines the sink delivered */
  uint64_t errors[3];       /* failures, by CONSUMER_ERROR_* */
  uint64_t sink_retries;    /* batches the sink failed and that came again */
  uint64_t sink_rewinds;    /* times the sink lost what it held since the last
                               commit (a removed file) and every event after
                               the committed cursor was delivered again */
  uint64_t retried;         /* events sent to the sink again, for any reason */
  uint64_t failed;          /* events the sink gave up on (skip, dead letter) */
  uint64_t dead_lettered;   /* of those, kept in a dead-letter file */
  uint64_t write_errors;    /* sink writes that failed */
  uint64_t oldest_ms;       /* age of the oldest event in flight; 0 = none */
  const char *position;     /* the cursor's position (not NUL-terminated) */
  size_t position_len;
  uint64_t reconnects;    /* times the source backed off */
  uint64_t cursor_stalls; /* pages whose next cursor was the one asked for */
  int64_t backoff_until;  /* Unix ms the source waits until; 0 = none */
  unsigned attempt;       /* failures since the source last connected */
  const char *last_error; /* "" when none; borrowed */
} consumer_stats;

/* Called on the loop thread. Any may be NULL. */
typedef struct consumer_hooks {
  /* The state changed. */
  void (*on_state)(consumer *c, consumer_state state, void *data);
  /* The sink delivered a batch: the cursor moved. */
  void (*on_delivered)(consumer *c, void *data);
  /* The window emptied: everything emitted is delivered (or abandoned). */
  void (*on_drained)(consumer *c, void *data);
  /* consumer_close finished; the consumer may be destroyed now. */
  void (*on_closed)(consumer *c, void *data);
  /* Something waits for a commit (consumer_when_durable, a lease that ran
   * out): commit now rather than within the interval. */
  void (*on_commit_wanted)(consumer *c, void *data);
  void *data;
} consumer_hooks;

/* A wait for the commit that covers what was staged before it; the caller
 * owns the memory until cb has run. status is 0, an error when that commit
 * failed for good, or UV_ECANCELED when the consumer closes first. */
typedef struct consumer_waiter {
  void (*cb)(struct consumer_waiter *w, int status);
  struct consumer_waiter *next;
} consumer_waiter;

/* Creates a consumer for conf (borrowed for its life), opens its sink and
 * positions it after the committed cursor (resume). Returns 0 or a negative
 * code with the reason in err. */
int consumer_create(uv_loop_t *loop, const config_consumer *conf,
                    const source_resume *resume, const consumer_hooks *hooks,
                    consumer **out, char *err, size_t errlen);

/* Starts the source (not while paused: then at consumer_resume). */
int consumer_start(consumer *c, char *err, size_t errlen);

/* Stops taking events for good (a drain): the source's intake stops, what
 * is in the window is still delivered, and the source lives on, hearing
 * settlements and on_durable, until consumer_close. */
void consumer_stop_intake(consumer *c);

/* True when nothing is in the window and no write is outstanding. */
bool consumer_drained(const consumer *c);

/* Gives up on what is not yet written (the second signal) so closing does
 * not wait for it; what is delivered stays delivered. */
void consumer_abandon(consumer *c);

/* Closes the source, then the sink; hooks->on_closed follows, after which
 * the consumer may be destroyed. */
void consumer_close(consumer *c);
void consumer_destroy(consumer *c);

/* The upstream runtime the source reads (set by the daemon before start);
 * NULL for built-in sources. */
void consumer_set_upstream(consumer *c, upstream *up);
upstream *consumer_upstream(const consumer *c);

/* For sources (see daemon/source.h). */
size_t consumer_room(const consumer *c);
/* Hands one event to the window; room must be > 0. Returns its seq, which
 * the source's on_settled and on_durable later name, or 0 when memory ran
 * out (nothing was taken). */
uint64_t consumer_emit(consumer *c, const event *ev);
/* The intake the source should have now (daemon/source.h). */
source_intake consumer_intake(const consumer *c);
void consumer_source_connected(consumer *c);
/* The source lost its upstream (why) and tries again in delay_ms; attempt
 * counts its failures since it last connected. Logged here. */
void consumer_source_backoff(consumer *c, uint64_t delay_ms, unsigned attempt,
                             const char *why);
void consumer_source_done(consumer *c);

/* Records a source keeps beside its cursor (daemon/source.h), staged for
 * the next group commit and written in the same transaction as the cursor:
 * a journal by key (e.g. delivered but not yet acknowledged upstream), an
 * outbox by id (writes to send upstream) and extra cursor rows by subject
 * (e.g. one per scope). Everything is copied. Returns 0, UV_ENOMEM, or
 * STORE_EINVAL when the state file would refuse it (logged). */
int consumer_journal_put(consumer *c, const char *key, const void *value,
                         size_t len);
int consumer_journal_delete(consumer *c, const char *key);
int consumer_outbox_put(consumer *c, uint64_t id, const void *value,
                        size_t len);
int consumer_outbox_delete(consumer *c, uint64_t id);
int consumer_cursor_put(consumer *c, const char *subject, const char *position,
                        uint64_t seq);
/* Calls w->cb once a commit covers everything staged before this call,
 * and asks for that commit now (a push that answers only once durable). */
void consumer_when_durable(consumer *c, consumer_waiter *w);
/* A page brought items but not a new cursor (counted for the metrics; the
 * source decides what to do and logs). */
void consumer_source_stalled(consumer *c);
void consumer_source_failed(consumer *c, const char *why);
void consumer_source_closed(consumer *c);
uv_loop_t *consumer_loop(const consumer *c);
const char *consumer_name(const consumer *c);

/* For the flusher. A sync snapshot is the cursor as it stands when the sink
 * sync starts; only that snapshot may be committed once the sync is done.
 * A sync that fails with SINK_EREMOVED has rewound the consumer to its
 * committed cursor before cb runs: everything after it is delivered again,
 * with the same seq numbers, from a source started again at that cursor. */
typedef void (*consumer_sync_cb)(consumer *c, int status, const char *msg,
                                 void *data);
bool consumer_dirty(const consumer *c);
void consumer_sync(consumer *c, consumer_sync_cb cb, void *data);
/* The snapshot taken by the last consumer_sync. position is borrowed until
 * the next consumer_sync. */
void consumer_snapshot(const consumer *c, uint64_t *seq, const char **position,
                       int64_t *delivered_at_ns);
/* The store holds the cursor seq at position (borrowed for the call),
 * delivered at delivered_at_ns. Never moves the committed cursor back. */
void consumer_committed(consumer *c, uint64_t seq, const char *position,
                        int64_t delivered_at_ns);
/* The commit of the last snapshot ended: status 0 (then the source hears
 * on_durable, and waiters run), or a failure (what it carried is staged
 * again for the next one). */
void consumer_commit_done(consumer *c, int status);
/* The records the snapshot carries, for the flusher: n ops, the first at
 * *ops, each stride bytes after the last (borrowed until commit_done). */
void consumer_snapshot_ops(const consumer *c, const store_op **ops, size_t *n,
                           size_t *stride);
/* The consumer's state row (identity, seq lease) as an op, for a state file
 * made again; its strings are borrowed from the consumer. */
void consumer_state_op(const consumer *c, store_op *op);

/* The identity of the stream (source_type.identity), recorded with the seq
 * lease in the state file; copied. */
void consumer_set_identity(consumer *c, const char *identity);
/* Seqs up to high_seq are reserved in the state file; none beyond the
 * lease is handed out until a commit extends it. Without a call, no
 * lease is kept (unit tests). */
void consumer_set_seq_lease(consumer *c, uint64_t high_seq);
uint64_t consumer_seq_lease(const consumer *c);
/* The cursor last committed (at start: the one it resumed from), for a
 * state file that must be written again from scratch. position is borrowed
 * until the next commit or reset. */
void consumer_committed_cursor(consumer *c, uint64_t *seq,
                               const char **position, int64_t *delivered_at_ns);
const char *consumer_stream_name(const consumer *c);

/* An operator's pause: the source's intake pauses (in-flight events are
 * still delivered, and the source still acknowledges them) and the state is
 * paused until consumer_resume. */
void consumer_pause(consumer *c);
/* Intake on again (or the source starts, when it was paused at start or
 * reset meanwhile). */
int consumer_resume(consumer *c, char *err, size_t errlen);
bool consumer_is_paused(const consumer *c);

/* After an operator reset the cursor (paused and drained): the consumer
 * goes on from seq and position; its source, which read from the old
 * position, is closed and a new one starts at the resume. Returns UV_EBUSY
 * when events are still in flight. */
int consumer_reset_to(consumer *c, uint64_t seq, const char *position);

/* The sink, for the local API (socket sink subscriptions). */
sink *consumer_sink(const consumer *c);
/* The sink's own state ("waiting_for_reader"), "" when normal. */
const char *consumer_sink_state(const consumer *c);
const config_consumer *consumer_config(const consumer *c);

/* Holds the source back (room 0) while the cursor cannot be committed, so
 * what a crash would re-deliver stays bounded; release gives room again. */
void consumer_hold(consumer *c, bool hold);

/* Reopens the sink's files (SIGHUP). */
void consumer_reopen(consumer *c);

/* The sink's condition in a few words, into out: "ok", its own state
 * ("waiting_for_reader", "no_subscriber"), "retrying: ERROR" while a failed
 * batch waits, "failed: ERROR" once it gave up. Returns out. */
const char *consumer_sink_status(const consumer *c, char *out, size_t len);
/* What holds the consumer up now: a failing commit, else a failing sink,
 * else the source's last error ("" when none). Borrowed. */
const char *consumer_error_now(const consumer *c);
/* The flusher's word on commits: the failure while they fail (recorded in
 * the cursor row once they work again), NULL once one went through. */
void consumer_set_commit_error(consumer *c, const char *why);

consumer_state consumer_get_state(const consumer *c);
void consumer_get_stats(const consumer *c, consumer_stats *out);

#endif
