/* Driving a libuv loop from a test with bounded waits (include after
 * test.h): RUN_UNTIL runs the loop until a condition holds or a deadline
 * passes, then asserts the condition; RUN_FOR runs it for a fixed time, to
 * show that nothing happens. */
#ifndef TETHER_TEST_UV_H
#define TETHER_TEST_UV_H

#include <stdint.h>

#include <uv.h>

static uv_timer_t test__guard;

static inline void test__on_guard(uv_timer_t *t) {
  (void)t;
}

/* Runs the loop until cond holds or ms pass, without asserting (the
 * caller looks at cond itself). An unreferenced 5 ms timer keeps each turn
 * short without keeping the loop alive. */
#define RUN_UNTIL_OR_TIMEOUT(loop, cond, ms)                                   \
  do {                                                                         \
    uint64_t dl_;                                                              \
    uv_timer_init((loop), &test__guard);                                       \
    uv_timer_start(&test__guard, test__on_guard, 5, 5);                        \
    uv_unref((uv_handle_t *)&test__guard);                                     \
    uv_update_time(loop);                                                      \
    dl_ = uv_now(loop) + (ms);                                                 \
    while (!(cond) && uv_now(loop) < dl_)                                      \
      uv_run((loop), UV_RUN_ONCE);                                             \
    uv_close((uv_handle_t *)&test__guard, NULL);                               \
    uv_run((loop), UV_RUN_NOWAIT);                                             \
  } while (0)

#define RUN_UNTIL(loop, cond, ms)                                              \
  do {                                                                         \
    RUN_UNTIL_OR_TIMEOUT(loop, cond, ms);                                      \
    ASSERT(cond);                                                              \
  } while (0)

#define RUN_FOR(loop, ms)                                                      \
  do {                                                                         \
    uint64_t until_ = uv_now(loop) + (ms);                                     \
    RUN_UNTIL(loop, uv_now(loop) >= until_, (ms) + 1000);                      \
  } while (0)

#endif
