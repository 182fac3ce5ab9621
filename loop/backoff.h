/* The one retry policy of tether: a few immediate tries, then exponential
 * delays with full jitter between min and max, reset after success.
 *
 * Embeddable: keep a `backoff` by value in the object that retries.
 *
 *   delay = backoff_next(&b);   // 0 for the immediate tries
 *   ... on success: backoff_reset(&b);
 */
#ifndef TETHER_LOOP_BACKOFF_H
#define TETHER_LOOP_BACKOFF_H

#include <stdint.h>

typedef struct backoff {
  uint64_t min_ms;    /* floor of every computed delay */
  uint64_t max_ms;    /* cap of every delay, hints included */
  unsigned immediate; /* tries before the first delay */
  /* private */
  unsigned _attempt; /* failures since the last reset */
  uint64_t _rng;     /* xorshift64 state */
} backoff;

/* Sets up a policy; seed 0 picks one from the clock and the address. */
void backoff_init(backoff *b, uint64_t min_ms, uint64_t max_ms,
                  unsigned immediate, uint64_t seed);

/* Records a failure and returns how long to wait before the next try: 0 for
 * the first `immediate` failures, then a uniform random delay in
 * [min, min(max, min * 2^k)] where k counts the delayed tries so far. */
uint64_t backoff_next(backoff *b);

/* Like backoff_next, but an upstream's own hint (Retry-After, SSE retry:)
 * wins over the computed delay, clamped to [0, max]. */
uint64_t backoff_next_hinted(backoff *b, uint64_t hint_ms);

/* Forgets the failures after a success. */
void backoff_reset(backoff *b);

/* Failures since the last reset. */
static inline unsigned backoff_attempt(const backoff *b) {
  return b->_attempt;
}

#endif
