#include "loop/backoff.h"

#include <assert.h>

#include <uv.h>

static uint64_t next_random(backoff *b) {
  uint64_t x = b->_rng;

  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  b->_rng = x;
  return x;
}

void backoff_init(backoff *b, uint64_t min_ms, uint64_t max_ms,
                  unsigned immediate, uint64_t seed) {
  assert(min_ms <= max_ms);
  b->min_ms = min_ms;
  b->max_ms = max_ms;
  b->immediate = immediate;
  b->healthy_ms = max_ms > 10000 ? max_ms : 10000;
  b->_attempt = 0;
  b->_success_at = 0;
  /* Different seeds per object and process keep many consumers that failed
   * together from retrying in lockstep. */
  if (seed == 0)
    seed =
        uv_hrtime() ^ ((uint64_t)(uintptr_t)b << 17) ^ (uint64_t)uv_os_getpid();
  b->_rng = seed != 0 ? seed : 0x9E3779B97F4A7C15ull;
}

uint64_t backoff_next(backoff *b) {
  unsigned k;
  uint64_t ceiling, span;

  b->_attempt++;
  if (b->_attempt <= b->immediate)
    return 0;
  k = b->_attempt - b->immediate - 1;
  /* min * 2^k, saturating at max. */
  ceiling = b->min_ms;
  while (k-- > 0 && ceiling < b->max_ms)
    ceiling = ceiling > b->max_ms / 2 ? b->max_ms : ceiling * 2;
  if (ceiling > b->max_ms)
    ceiling = b->max_ms;
  span = ceiling - b->min_ms;
  return b->min_ms + (span == 0 ? 0 : next_random(b) % (span + 1));
}

uint64_t backoff_next_hinted(backoff *b, uint64_t hint_ms) {
  backoff_next(b);
  return hint_ms > b->max_ms ? b->max_ms : hint_ms;
}

void backoff_reset(backoff *b) {
  b->_attempt = 0;
}

void backoff_connected(backoff *b, uint64_t now_ms) {
  b->_success_at = now_ms != 0 ? now_ms : 1;
}

uint64_t backoff_next_at(backoff *b, uint64_t now_ms) {
  if (b->_success_at != 0 && now_ms >= b->_success_at &&
      now_ms - b->_success_at >= b->healthy_ms)
    b->_attempt = 0;
  b->_success_at = 0;
  return backoff_next(b);
}

void backoff_budget_init(backoff_budget *bb, double rate, double burst) {
  bb->rate = rate > 0 ? rate : 1;
  bb->burst = burst >= 1 ? burst : 1;
  bb->_tokens = bb->burst;
  bb->_at = 0;
  bb->_started = false;
}

uint64_t backoff_budget_take(backoff_budget *bb, uint64_t now_ms,
                             uint64_t delay_ms) {
  uint64_t when = now_ms + delay_ms;
  double wait_s;

  /* Refill up to the moment the reconnect would happen. */
  if (!bb->_started) {
    bb->_started = true;
    bb->_at = when;
  } else if (when > bb->_at) {
    bb->_tokens += (double)(when - bb->_at) / 1000.0 * bb->rate;
    if (bb->_tokens > bb->burst)
      bb->_tokens = bb->burst;
    bb->_at = when;
  }
  bb->_tokens -= 1;
  if (bb->_tokens >= 0)
    return delay_ms;
  /* In debt: this reconnect waits until the bucket has paid it back. */
  wait_s = -bb->_tokens / bb->rate;
  return delay_ms + (uint64_t)(wait_s * 1000.0 + 0.5);
}
