#include <uv.h>

#include "protocol/buf.h"
#include "tests/unit/test.h"

static void test_append_and_cstr(void) {
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, buf_append(&b, "abc", 3));
  ASSERT_EQ(0, buf_append_str(&b, "def"));
  ASSERT_EQ(0, buf_appendf(&b, "-%d-%s", 42, "x"));
  ASSERT_STR_EQ("abcdef-42-x", buf_cstr(&b));
  ASSERT_EQ(11, b.len);
  buf_free(&b);
  ASSERT(b.data == NULL);
}

static void test_cap_is_enforced(void) {
  buf b;

  buf_init(&b, 8);
  ASSERT_EQ(0, buf_append(&b, "12345678", 8));
  ASSERT_EQ(UV_ENOBUFS, buf_append(&b, "9", 1));
  ASSERT_EQ(8, b.len);
  ASSERT_EQ(UV_ENOBUFS, buf_appendf(&b, "%s", "more"));
  ASSERT_MEM_EQ("12345678", 8, b.data, b.len);
  /* cstr still works at the cap: the NUL is not counted against it. */
  ASSERT_STR_EQ("12345678", buf_cstr(&b));
  buf_free(&b);
}

static void test_overflow_is_refused(void) {
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, buf_append(&b, "x", 1));
  ASSERT_EQ(UV_ENOBUFS, buf_reserve(&b, SIZE_MAX));
  ASSERT_EQ(UV_ENOBUFS, buf_reserve(&b, SIZE_MAX - 1));
  ASSERT_EQ(1, b.len);
  buf_free(&b);
}

static void test_consume_swap_steal(void) {
  buf a, b;
  char *s;

  buf_init(&a, 0);
  buf_init(&b, 0);
  ASSERT_EQ(0, buf_append_str(&a, "hello world"));
  buf_consume(&a, 6);
  ASSERT_STR_EQ("world", buf_cstr(&a));
  buf_consume(&a, 100);
  ASSERT_EQ(0, a.len);
  ASSERT_EQ(0, buf_append_str(&a, "A"));
  ASSERT_EQ(0, buf_append_str(&b, "BB"));
  buf_swap(&a, &b);
  ASSERT_STR_EQ("BB", buf_cstr(&a));
  ASSERT_STR_EQ("A", buf_cstr(&b));
  s = buf_steal(&a);
  ASSERT_STR_EQ("BB", s);
  ASSERT(a.data == NULL);
  ASSERT_EQ(0, a.len);
  free(s);
  buf_reset(&b);
  ASSERT_EQ(0, b.len);
  buf_free(&b);
}

static void test_growth_keeps_content(void) {
  buf b;
  size_t i;

  buf_init(&b, 0);
  for (i = 0; i < 10000; i++)
    ASSERT_EQ(0, buf_append(&b, &"0123456789"[i % 10], 1));
  ASSERT_EQ(10000, b.len);
  for (i = 0; i < 10000; i++)
    ASSERT_EQ('0' + (int)(i % 10), b.data[i]);
  buf_free(&b);
}

static const test_case tests[] = {
  TEST(test_append_and_cstr),      TEST(test_cap_is_enforced),
  TEST(test_overflow_is_refused),  TEST(test_consume_swap_steal),
  TEST(test_growth_keeps_content), { NULL, NULL },
};

TEST_MAIN(tests)
