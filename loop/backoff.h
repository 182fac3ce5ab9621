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

#include <stdbool.h>
#include <stdint.h>

typedef struct backoff {
  uint64_t min_ms;     /* floor of every computed delay */
  uint64_t max_ms;     /* cap of every delay, hints included */
  unsigned immediate;  /* tries before the first delay */
  uint64_t healthy_ms; /* a success that lasts this long forgets failures */
  /* private */
  unsigned _attempt;    /* failures since the last reset */
  uint64_t _rng;        /* xorshift64 state */
  uint64_t _success_at; /* when the last success began (ms); 0 = none */
} backoff;

/* Sets up a policy; seed 0 picks one from the clock and the address. */
void backoff_init(backoff *b, uint64_t min_ms, uint64_t max_ms,
                  unsigned immediate, uint64_t seed);
/* healthy_ms starts as max(max_ms, 10 s); set the field to change it. */

/* Records a failure and returns how long to wait before the next try: 0 for
 * the first `immediate` failures, then a uniform random delay in
 * [min, min(max, min * 2^k)] where k counts the delayed tries so far. */
uint64_t backoff_next(backoff *b);

/* Like backoff_next, but an upstream's own hint (Retry-After, SSE retry:)
 * wins over the computed delay, clamped to [0, max]. */
uint64_t backoff_next_hinted(backoff *b, uint64_t hint_ms);

/* Forgets the failures after a success. */
void backoff_reset(backoff *b);

/* A connection came up at now_ms. The failures are forgotten only once it
 * has stayed up for healthy_ms (see backoff_next_at): a server that accepts
 * and drops at once must not reset the backoff to zero each time. */
void backoff_connected(backoff *b, uint64_t now_ms);

/* backoff_next for a connection that just ended at now_ms: when it had been
 * up for healthy_ms, the failures before it are forgotten first. */
uint64_t backoff_next_at(backoff *b, uint64_t now_ms);

/* A process-wide reconnect budget: at most `rate` reconnects per second
 * across every consumer, with bursts up to `burst`, so that many consumers
 * cut off by one network blip do not redial in lockstep. Embeddable. */
typedef struct backoff_budget {
  double rate;  /* tokens per second */
  double burst; /* bucket size */
  /* private */
  double _tokens;
  uint64_t _at; /* ms of the last refill */
  bool _started;
} backoff_budget;

void backoff_budget_init(backoff_budget *bb, double rate, double burst);

/* Takes a token for a reconnect wanted after delay_ms (from now_ms) and
 * returns the delay to use: delay_ms, or later when the budget is spent. */
uint64_t backoff_budget_take(backoff_budget *bb, uint64_t now_ms,
                             uint64_t delay_ms);

/* Failures since the last reset. */
static inline unsigned backoff_attempt(const backoff *b) {
  return b->_attempt;
}

#endif
