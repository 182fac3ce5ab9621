/* The flusher commits every dirty cursor in one transaction (group commit).
 *
 * A round: sync each dirty consumer's sink (fdatasync for files), snapshot
 * its cursor as it stood when the sync began, then commit all snapshots in
 * one store transaction on the thread pool. The timer is armed only while
 * some cursor is dirty, so an idle daemon does not wake for it.
 */
#ifndef TETHER_DAEMON_FLUSHER_H
#define TETHER_DAEMON_FLUSHER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/consumer.h"
#include "store/store.h"

typedef struct flusher flusher;

/* status: 0 when every cursor that was dirty is committed. */
typedef void (*flusher_cb)(flusher *f, int status, void *data);

/* consumers (n of them) and st are borrowed for the flusher's life. */
int flusher_create(uv_loop_t *loop, store *st, uint64_t interval_ms,
                   consumer **consumers, size_t n, flusher **out);

/* A consumer's cursor moved: commit within one interval. */
void flusher_poke(flusher *f);

/* Something waits for a commit: a round now, or right after the running
 * one (which took its snapshots before the wish). */
void flusher_soon(flusher *f);

/* Runs a round as soon as the running one (if any) ends; cb follows it.
 * One waiting cb at a time. */
void flusher_flush(flusher *f, flusher_cb cb, void *data);

/* A wait for the moment no round runs (flusher_when_idle); the caller owns
 * the memory until cb has run. */
typedef struct flusher_waiter {
  void (*cb)(struct flusher_waiter *w, int status);
  struct flusher_waiter *next;
} flusher_waiter;

/* Runs w->cb once no round is in flight: at once when none is, else right
 * after the running one ends (before another can start), so the cursor
 * store can be written without a commit of older snapshots landing after
 * it. status is 0, or UV_ECANCELED when the flusher closes first. */
void flusher_when_idle(flusher *f, flusher_waiter *w);

/* Upper bounds (seconds) of the commit duration histogram's buckets. */
#define FLUSHER_BUCKETS 10
extern const double flusher_bucket_bounds[FLUSHER_BUCKETS];

typedef struct flusher_stats {
  uint64_t commits;                  /* transactions that committed */
  uint64_t failures;                 /* transactions that failed */
  uint64_t buckets[FLUSHER_BUCKETS]; /* commits at or under each bound */
  double seconds;                    /* total commit time */
} flusher_stats;

void flusher_get_stats(const flusher *f, flusher_stats *out);

/* False while commits fail (consumers are held back meanwhile). */
bool flusher_healthy(const flusher *f);
/* How long commits have been failing, in ms; 0 while they work. */
uint64_t flusher_failing_ms(const flusher *f);

/* Closes the timer once no round runs; cb follows, then f is freed. */
void flusher_close(flusher *f, void (*cb)(void *data), void *data);

#endif
