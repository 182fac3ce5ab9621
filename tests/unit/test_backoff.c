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

static const test_case tests[] = {
  TEST(test_immediate_tries_then_delays),
  TEST(test_capped_at_max),
  TEST(test_full_jitter_spreads),
  TEST(test_reset_and_hint),
  TEST(test_min_equals_max),
  { NULL, NULL },
};

TEST_MAIN(tests)
