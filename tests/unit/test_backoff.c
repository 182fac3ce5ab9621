#include "loop/backoff.h"
#include "tests/unit/test.h"

static void test_immediate_tries_then_delays(void) {
  backoff b;
  uint64_t d;
  int i;

  backoff_init(&b, 250, 30000, 3, 12345);
  ASSERT_EQ(0, backoff_next(&b));
  ASSERT_EQ(0, backoff_next(&b));
  ASSERT_EQ(0, backoff_next(&b));
  ASSERT_EQ(3, backoff_attempt(&b));
  /* The first delayed try has the ceiling min * 2^0 = min. */
  ASSERT_EQ(250, backoff_next(&b));
  /* The next ones stay within [min, min * 2^k]. */
  for (i = 1; i < 10; i++) {
    uint64_t ceiling = 250ull << i;

    d = backoff_next(&b);
    if (ceiling > 30000)
      ceiling = 30000;
    ASSERT(d >= 250);
    ASSERT(d <= ceiling);
  }
}

static void test_capped_at_max(void) {
  backoff b;
  int i;

  backoff_init(&b, 100, 1000, 0, 7);
  for (i = 0; i < 200; i++)
    ASSERT(backoff_next(&b) <= 1000);
  /* Attempts far past 64 doublings must not overflow the shift. */
  for (i = 0; i < 100; i++)
    ASSERT(backoff_next(&b) >= 100);
}

static void test_full_jitter_spreads(void) {
  backoff b;
  uint64_t first, d;
  int i, differ = 0;

  /* Many consumers failing together must not retry in lockstep: delays at a
   * high attempt vary between draws. */
  backoff_init(&b, 10, 100000, 0, 99);
  for (i = 0; i < 12; i++)
    backoff_next(&b);
  first = backoff_next(&b);
  for (i = 0; i < 20; i++) {
    d = backoff_next(&b);
    differ += d != first;
  }
  ASSERT(differ > 10);
}

static void test_reset_and_hint(void) {
  backoff b;

  backoff_init(&b, 250, 30000, 1, 1);
  ASSERT_EQ(0, backoff_next(&b));
  ASSERT(backoff_next(&b) >= 250);
  backoff_reset(&b);
  ASSERT_EQ(0, backoff_attempt(&b));
  ASSERT_EQ(0, backoff_next(&b));
  /* A hint wins over the computed delay, clamped to max. */
  ASSERT_EQ(5000, backoff_next_hinted(&b, 5000));
  ASSERT_EQ(30000, backoff_next_hinted(&b, 3600000));
  ASSERT_EQ(3, backoff_attempt(&b));
}

static void test_min_equals_max(void) {
  backoff b;

  backoff_init(&b, 500, 500, 0, 0);
  ASSERT_EQ(500, backoff_next(&b));
  ASSERT_EQ(500, backoff_next(&b));
}

static void test_healthy_period_resets(void) {
  backoff b;

  backoff_init(&b, 100, 1000, 0, 3);
  b.healthy_ms = 5000;
  backoff_next(&b);
  backoff_next(&b);
  backoff_next(&b);
  ASSERT_EQ(3, backoff_attempt(&b));
  /* Up for 1 s only: the failures stand, the next delay keeps growing. */
  backoff_connected(&b, 10000);
  backoff_next_at(&b, 11000);
  ASSERT_EQ(4, backoff_attempt(&b));
  /* Up for 5 s: forgotten; this is the first failure again. */
  backoff_connected(&b, 20000);
  ASSERT_EQ(100, backoff_next_at(&b, 25000));
  ASSERT_EQ(1, backoff_attempt(&b));
  /* Without a connection in between, next_at is plain next. */
  backoff_next_at(&b, 90000);
  ASSERT_EQ(2, backoff_attempt(&b));
}

static void test_budget_spreads_a_stampede(void) {
  backoff_budget bb;
  uint64_t d[10];
  int i;

  /* 2 reconnects a second, bursts of 3: ten consumers cut off at once. */
  backoff_budget_init(&bb, 2, 3);
  for (i = 0; i < 10; i++)
    d[i] = backoff_budget_take(&bb, 1000, 0);
  ASSERT_EQ(0, d[0]);
  ASSERT_EQ(0, d[1]);
  ASSERT_EQ(0, d[2]);
  ASSERT_EQ(500, d[3]);
  ASSERT_EQ(1000, d[4]);
  ASSERT_EQ(3500, d[9]);
  /* Later, the bucket has refilled. */
  ASSERT_EQ(0, backoff_budget_take(&bb, 60000, 0));
  /* A delay already asked for counts as time to refill. */
  backoff_budget_init(&bb, 1, 1);
  ASSERT_EQ(0, backoff_budget_take(&bb, 0, 0));
  ASSERT_EQ(1000, backoff_budget_take(&bb, 0, 1000));
}

static const test_case tests[] = {
  TEST(test_healthy_period_resets),
  TEST(test_budget_spreads_a_stampede),
  TEST(test_immediate_tries_then_delays),
  TEST(test_capped_at_max),
  TEST(test_full_jitter_spreads),
  TEST(test_reset_and_hint),
  TEST(test_min_equals_max),
  { NULL, NULL },
};

TEST_MAIN(tests)
