/* Option tables: every value kind, good and bad, with the exact message. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/options.h"
#include "tests/unit/test.h"

typedef struct conf {
  char *s;
  int64_t i;
  bool b;
  uint64_t d;
  uint64_t z;
  int e;
} conf;

static const char *const colors[] = { "text", "json", NULL };

/* One table with each kind and a few bound styles. */
static const option table[] = {
  { "s", OPT_STRING, "hello", offsetof(conf, s), "a string", 0, 0, NULL, 0 },
  { "i", OPT_INT, "5", offsetof(conf, i), "bounded", 1, 1000000, NULL, 0 },
  { "b", OPT_BOOL, "false", offsetof(conf, b), "a bool", 0, 0, NULL, 0 },
  { "d", OPT_DURATION, "1s", offsetof(conf, d), "bounded", 10, 3600000, NULL,
    0 },
  { "z", OPT_SIZE, "100", offsetof(conf, z), "bounded", 32, 1048576, NULL, 0 },
  { "e", OPT_ENUM, "json", offsetof(conf, e), "an enum", 0, 0, colors, 0 },
  { "any", OPT_INT, NULL, offsetof(conf, i), "unbounded", 0, 0, NULL, 0 },
  { "nonneg", OPT_INT, "0", offsetof(conf, i), "at least 0", 0, INT64_MAX, NULL,
    0 },
  { "anyd", OPT_DURATION, "0", offsetof(conf, d), "unbounded", 0, 0, NULL, 0 },
  { "anyz", OPT_SIZE, "0", offsetof(conf, z), "unbounded", 0, 0, NULL, 0 },
  { "d0", OPT_DURATION, "0", offsetof(conf, d), "0..1h", 0, 3600000, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

static const option *opt(const char *name) {
  const option *o = options_find(table, name);
  ASSERT(o != NULL);
  return o;
}

/* Parses text as option name into c, expecting success. */
static void parse_ok(conf *c, const char *name, const char *text) {
  char err[256] = "";
  int r = options_parse_value(opt(name), text, c, err, sizeof err);
  if (r != 0)
    printf("# %s = \"%s\": %s\n", name, text, err);
  ASSERT_EQ(0, r);
}

/* Parses text as option name, expecting failure with message. */
static void parse_bad(const char *name, const char *text, const char *msg) {
  conf c = { 0 };
  char err[256] = "";
  int r = options_parse_value(opt(name), text, &c, err, sizeof err);
  if (r == 0)
    printf("# %s = \"%s\" was accepted\n", name, text);
  ASSERT_EQ(UV_EINVAL, r);
  ASSERT_STR_EQ(msg, err);
}

static void test_int_good(void) {
  static const struct {
    const char *name, *text;
    int64_t want;
  } v[] = {
    { "i", "1", 1 },
    { "i", "1000000", 1000000 },
    { "i", "+42", 42 },
    { "i", "007", 7 },
    { "any", "-1", -1 },
    { "any", "9223372036854775807", INT64_MAX },
    { "any", "-9223372036854775808", INT64_MIN },
    { "any", "0", 0 },
    { "nonneg", "0", 0 },
    { "nonneg", "9223372036854775807", INT64_MAX },
  };
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    conf c = { 0 };
    parse_ok(&c, v[k].name, v[k].text);
    ASSERT_EQ(v[k].want, c.i);
  }
}

static void test_int_bad(void) {
  static const struct {
    const char *name, *text, *msg;
  } v[] = {
    { "i", "0", "expected an integer 1..1000000" },
    { "i", "1000001", "expected an integer 1..1000000" },
    { "i", "-1", "expected an integer 1..1000000" },
    { "i", "ten", "expected an integer 1..1000000" },
    { "i", "", "expected an integer 1..1000000" },
    { "i", " 5", "expected an integer 1..1000000" },
    { "i", "5 ", "expected an integer 1..1000000" },
    { "i", "1e3", "expected an integer 1..1000000" },
    { "i", "1.0", "expected an integer 1..1000000" },
    { "i", "0x10", "expected an integer 1..1000000" },
    { "i", "+", "expected an integer 1..1000000" },
    { "i", "--1", "expected an integer 1..1000000" },
    { "any", "9223372036854775808", "expected an integer" },
    { "any", "-9223372036854775809", "expected an integer" },
    { "any", "99999999999999999999999", "expected an integer" },
    { "any", "", "expected an integer" },
    { "nonneg", "-1", "expected an integer >= 0" },
    { "nonneg", "9223372036854775808", "expected an integer >= 0" },
  };
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++)
    parse_bad(v[k].name, v[k].text, v[k].msg);
}

static void test_bool(void) {
  static const struct {
    const char *text;
    bool want;
  } good[] = {
    { "true", true }, { "TRUE", true },   { "Yes", true }, { "on", true },
    { "1", true },    { "false", false }, { "No", false }, { "OFF", false },
    { "0", false },   { "fAlSe", false },
  };
  static const char *const bad[] = { "",      "2",     "y",      "n",
                                     "truee", " true", "enabled" };
  size_t k;

  for (k = 0; k < sizeof good / sizeof good[0]; k++) {
    conf c = { 0 };
    c.b = !good[k].want;
    parse_ok(&c, "b", good[k].text);
    ASSERT_EQ(good[k].want, c.b);
  }
  for (k = 0; k < sizeof bad / sizeof bad[0]; k++)
    parse_bad("b", bad[k], "expected true or false");
}

static void test_duration_good(void) {
  static const struct {
    const char *text;
    uint64_t ms;
  } v[] = {
    { "0", 0 },
    { "0s", 0 },
    { "0ms", 0 },
    { "250ms", 250 },
    { "30s", 30000 },
    { "5m", 300000 },
    { "1h", 3600000 },
    { "1h30m", 5400000 },
    { "1h1m1s1ms", 3661001 },
    { "1.5s", 1500 },
    { "1.500s", 1500 },
    { "0.001s", 1 },
    { "0.5h", 1800000 },
    { "1.25m", 75000 },
    { "1.0ms", 1 },
    { "2.00000000000000000000000000s", 2000 },
    { "18446744073709551615ms", UINT64_MAX },
  };
  size_t k;
  uint64_t ms;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    ms = 12345;
    if (options_parse_duration(v[k].text, &ms) != 0)
      printf("# %s rejected\n", v[k].text);
    ASSERT_EQ(0, options_parse_duration(v[k].text, &ms));
    ASSERT_UEQ(v[k].ms, ms);
  }
}

static void test_duration_bad(void) {
  static const char unit[] =
      "expected a duration with a unit, such as 250ms, 30s, 5m or 1h";
  static const char whole[] =
      "expected a whole number of milliseconds, such as 1.5s or 1500ms";
  static const struct {
    const char *name, *text, *msg;
  } v[] = {
    { "anyd", "", unit },
    { "anyd", "5", unit },
    { "anyd", "00", unit },
    { "anyd", "1.5", unit },
    { "anyd", "-1s", unit },
    { "anyd", "+1s", unit },
    { "anyd", "1 s", unit },
    { "anyd", " 1s", unit },
    { "anyd", "1s ", unit },
    { "anyd", "1x", unit },
    { "anyd", "1d", unit },
    { "anyd", "s", unit },
    { "anyd", ".5s", unit },
    { "anyd", "1.s", unit },
    { "anyd", "30m1h", unit },
    { "anyd", "1m1m", unit },
    { "anyd", "1ms1s", unit },
    { "anyd", "1e3ms", unit },
    { "anyd", "1.0001s", whole },
    { "anyd", "1.5ms", whole },
    { "anyd", "0.0000000000000000000001h", whole },
    { "anyd", "18446744073709551616ms", unit },
    { "anyd", "5124095576030432h", unit },
    { "anyd", "18446744073709551615ms1s", unit },
    { "d", "5ms", "expected a duration 10ms..1h" },
    { "d", "1h0m0.001s", "expected a duration 10ms..1h" },
    { "d", "99999999999999999999h", "expected a duration 10ms..1h" },
    { "d", "5", unit },
    { "d0", "2h", "expected a duration 0..1h" },
  };
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++)
    parse_bad(v[k].name, v[k].text, v[k].msg);
}

static void test_duration_codes(void) {
  uint64_t ms = 7;

  ASSERT_EQ(UV_EINVAL, options_parse_duration("5", &ms));
  ASSERT_EQ(UV_EINVAL, options_parse_duration("1.0001s", &ms));
  ASSERT_EQ(UV_ERANGE, options_parse_duration("99999999999999999999h", &ms));
  ASSERT_EQ(UV_EINVAL, options_parse_duration(NULL, &ms));
  ASSERT_UEQ(7, ms);
}

static void test_size_good(void) {
  static const struct {
    const char *text;
    uint64_t bytes;
  } v[] = {
    { "0", 0 },
    { "512", 512 },
    { "0B", 0 },
    { "512B", 512 },
    { "64KiB", 65536 },
    { "10MiB", 10485760 },
    { "1GiB", 1073741824 },
    { "2TiB", UINT64_C(2199023255552) },
    { "10KB", 10000 },
    { "10MB", 10000000 },
    { "3GB", 3000000000 },
    { "1.5KiB", 1536 },
    { "0.5MB", 500000 },
    { "18446744073709551615", UINT64_MAX },
    { "16777215TiB", UINT64_C(16777215) << 40 },
  };
  size_t k;
  uint64_t bytes;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    bytes = 1;
    if (options_parse_size(v[k].text, &bytes) != 0)
      printf("# %s rejected\n", v[k].text);
    ASSERT_EQ(0, options_parse_size(v[k].text, &bytes));
    ASSERT_UEQ(v[k].bytes, bytes);
  }
}

static void test_size_bad(void) {
  static const char plain[] = "expected a size such as 512, 64KiB or 10MiB";
  static const struct {
    const char *name, *text, *msg;
  } v[] = {
    { "anyz", "", plain },
    { "anyz", "1e3", plain },
    { "anyz", "-1", plain },
    { "anyz", "+1", plain },
    { "anyz", "1.5", plain },
    { "anyz", "64 KiB", plain },
    { "anyz", "64kib", plain },
    { "anyz", "64K", plain },
    { "anyz", "1KiBB", plain },
    { "anyz", "KiB", plain },
    { "anyz", " 1", plain },
    { "anyz", "1.1B",
      "expected a whole number of bytes, such as 1.5KiB or 1536" },
    { "anyz", "18446744073709551616", plain },
    { "anyz", "16777216TiB", plain },
    { "z", "31", "expected a size 32..1MiB" },
    { "z", "1048577", "expected a size 32..1MiB" },
    { "z", "2MiB", "expected a size 32..1MiB" },
    { "z", "99999999999999999999999", "expected a size 32..1MiB" },
  };
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++)
    parse_bad(v[k].name, v[k].text, v[k].msg);
}

static void test_enum(void) {
  conf c = { 0 };

  parse_ok(&c, "e", "json");
  ASSERT_EQ(1, c.e);
  parse_ok(&c, "e", "text");
  ASSERT_EQ(0, c.e);
  parse_bad("e", "JSON", "expected one of: text, json");
  parse_bad("e", "", "expected one of: text, json");
  parse_bad("e", "yaml", "expected one of: text, json");
}

static void test_string(void) {
  conf c = { 0 };

  parse_ok(&c, "s", "one");
  ASSERT_STR_EQ("one", c.s);
  /* A second value replaces the first without a leak. */
  parse_ok(&c, "s", "");
  ASSERT_STR_EQ("", c.s);
  options_free(table, &c);
  ASSERT(c.s == NULL);
}

static void test_format_duration(void) {
  static const struct {
    uint64_t ms;
    const char *text;
  } v[] = {
    { 0, "0" },          { 1, "1ms" },
    { 250, "250ms" },    { 1500, "1500ms" },
    { 1000, "1s" },      { 45000, "45s" },
    { 60000, "1m" },     { 90000, "1m30s" },
    { 3600000, "1h" },   { 5400000, "1h30m" },
    { 7200000, "2h" },   { 3661000, "1h1m1s" },
    { 86400000, "24h" }, { 3600001, "3600001ms" },
  };
  char out[64];
  uint64_t back;
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    options_format_duration(v[k].ms, out, sizeof out);
    ASSERT_STR_EQ(v[k].text, out);
    ASSERT_EQ(0, options_parse_duration(out, &back));
    ASSERT_UEQ(v[k].ms, back);
  }
  /* A short buffer is cut, never overrun. */
  options_format_duration(5400000, out, 3);
  ASSERT_STR_EQ("1h", out);
}

static void test_format_size(void) {
  static const struct {
    uint64_t bytes;
    const char *text;
  } v[] = {
    { 0, "0" },
    { 1, "1" },
    { 1000, "1000" },
    { 1024, "1KiB" },
    { 1536, "1536" },
    { 65536, "64KiB" },
    { 10485760, "10MiB" },
    { 1073741824, "1GiB" },
    { UINT64_C(1) << 40, "1TiB" },
    { UINT64_C(1) << 50, "1024TiB" },
    { UINT64_MAX, "18446744073709551615" },
  };
  char out[64];
  uint64_t back;
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    options_format_size(v[k].bytes, out, sizeof out);
    ASSERT_STR_EQ(v[k].text, out);
    ASSERT_EQ(0, options_parse_size(out, &back));
    ASSERT_UEQ(v[k].bytes, back);
  }
}

static void test_defaults_format_free(void) {
  conf c;
  char out[64];

  memset(&c, 0xAA, sizeof c);
  ASSERT_EQ(0, options_set_defaults(table, &c));
  ASSERT_STR_EQ("hello", c.s);
  ASSERT_UEQ(0, c.d); /* d0, the last duration, defaults to 0 */
  options_format_value(opt("s"), &c, out, sizeof out);
  ASSERT_STR_EQ("hello", out);
  options_format_value(opt("b"), &c, out, sizeof out);
  ASSERT_STR_EQ("false", out);
  options_format_value(opt("e"), &c, out, sizeof out);
  ASSERT_STR_EQ("json", out);
  parse_ok(&c, "z", "64KiB");
  options_format_value(opt("z"), &c, out, sizeof out);
  ASSERT_STR_EQ("64KiB", out);
  parse_ok(&c, "anyd", "1h30m");
  options_format_value(opt("d"), &c, out, sizeof out);
  ASSERT_STR_EQ("1h30m", out);
  parse_ok(&c, "any", "-0");
  options_format_value(opt("i"), &c, out, sizeof out);
  ASSERT_STR_EQ("0", out);
  parse_ok(&c, "any", "-12");
  options_format_value(opt("i"), &c, out, sizeof out);
  ASSERT_STR_EQ("-12", out);
  options_free(table, &c);
  ASSERT(c.s == NULL);
}

static void test_find_index(void) {
  const option *o = options_find(table, "z");

  ASSERT(o != NULL);
  ASSERT_EQ(4, options_index(table, o));
  ASSERT(options_find(table, "nope") == NULL);
  ASSERT(options_find(NULL, "z") == NULL);
}

static void test_bad_arguments(void) {
  conf c = { 0 };
  char err[8];

  ASSERT_EQ(UV_EINVAL, options_parse_value(NULL, "1", &c, err, sizeof err));
  ASSERT_EQ(UV_EINVAL, options_parse_value(opt("i"), NULL, &c, err, 8));
  ASSERT_EQ(UV_EINVAL, options_parse_value(opt("i"), "1", &c, err, 0));
  /* A short message buffer truncates the message, nothing more. */
  ASSERT_EQ(UV_EINVAL, options_parse_value(opt("i"), "x", &c, err, 8));
  ASSERT_STR_EQ("expecte", err);
}

static const test_case tests[] = {
  TEST(test_int_good),
  TEST(test_int_bad),
  TEST(test_bool),
  TEST(test_duration_good),
  TEST(test_duration_bad),
  TEST(test_duration_codes),
  TEST(test_size_good),
  TEST(test_size_bad),
  TEST(test_enum),
  TEST(test_string),
  TEST(test_format_duration),
  TEST(test_format_size),
  TEST(test_defaults_format_free),
  TEST(test_find_index),
  TEST(test_bad_arguments),
  { NULL, NULL },
};
TEST_MAIN(tests)
