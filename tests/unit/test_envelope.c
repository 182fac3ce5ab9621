#include <jansson.h>
#include <uv.h>

#include "protocol/envelope.h"
#include "tests/unit/test.h"

static envelope sample(void) {
  envelope e;

  e.seq = 42;
  e.cursor = "2026-01-02 10:00:00.000Z|r1a2b3c4d5e6f7g";
  e.cursor_len = strlen(e.cursor);
  e.event = "create";
  e.kind = "orders";
  e.time = "2026-01-02T10:00:00.000Z";
  e.data = "{\"id\":\"r1\",\"total\":9.5}";
  e.data_len = strlen(e.data);
  e.data_is_json = true;
  return e;
}

static void test_line_is_exact(void) {
  envelope_prefix p;
  envelope e = sample();
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, envelope_prefix_init(&p, "orders"));
  ASSERT_EQ(0, envelope_append(&b, &p, &e));
  ASSERT_STR_EQ("{\"consumer\":\"orders\",\"seq\":42,"
                "\"cursor\":\"2026-01-02 10:00:00.000Z|r1a2b3c4d5e6f7g\","
                "\"event\":\"create\",\"kind\":\"orders\","
                "\"time\":\"2026-01-02T10:00:00.000Z\","
                "\"data\":{\"id\":\"r1\",\"total\":9.5}}\n",
                buf_cstr(&b));
  envelope_prefix_free(&p);
  buf_free(&b);
}

static void test_non_json_data_is_a_string(void) {
  envelope_prefix p;
  envelope e = sample();
  buf b;

  buf_init(&b, 0);
  e.data = "plain \"text\"\nline2";
  e.data_len = strlen(e.data);
  e.data_is_json = false;
  ASSERT_EQ(0, envelope_prefix_init(&p, "c"));
  ASSERT_EQ(0, envelope_append(&b, &p, &e));
  ASSERT_CONTAINS(buf_cstr(&b), ",\"data\":\"plain \\\"text\\\"\\nline2\"}\n");
  envelope_prefix_free(&p);
  buf_free(&b);
}

static void check_string(const char *in, size_t len, const char *want) {
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, envelope_append_json_string(&b, in, len));
  ASSERT_STR_EQ(want, buf_cstr(&b));
  buf_free(&b);
}

static void test_escaping(void) {
  check_string("", 0, "\"\"");
  check_string("a\\b", 3, "\"a\\\\b\"");
  check_string("\x01\x1f\t\r\b\f", 6, "\"\\u0001\\u001f\\t\\r\\b\\f\"");
  check_string("nul\0x", 5, "\"nul\\u0000x\"");
  /* Valid UTF-8 passes through: 2, 3 and 4 byte forms. */
  check_string("\xc3\xa9\xe7\x95\x8c\xf0\x9f\x98\x80", 9,
               "\"\xc3\xa9\xe7\x95\x8c\xf0\x9f\x98\x80\"");
  /* Invalid bytes become U+FFFD: a lone continuation, an overlong '/', a
   * surrogate, a truncated sequence at the end, and 0xFF. */
  check_string("\x80", 1, "\"\xef\xbf\xbd\"");
  check_string("\xc0\xaf", 2, "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  check_string("\xed\xa0\x80", 3, "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
  check_string("ok\xe7\x95", 4, "\"ok\xef\xbf\xbd\xef\xbf\xbd\"");
  check_string("\xff", 1, "\"\xef\xbf\xbd\"");
  check_string("\xf4\x90\x80\x80", 4,
               "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
}

static void test_consumer_name_is_escaped(void) {
  envelope_prefix p;

  ASSERT_EQ(0, envelope_prefix_init(&p, "a\"b"));
  ASSERT_MEM_EQ("{\"consumer\":\"a\\\"b\",\"seq\":", 25, p.data, p.len);
  envelope_prefix_free(&p);
}

static void test_cap_leaves_buffer_unchanged(void) {
  envelope_prefix p;
  envelope e = sample();
  buf b;

  buf_init(&b, 64);
  ASSERT_EQ(0, buf_append_str(&b, "keep"));
  ASSERT_EQ(0, envelope_prefix_init(&p, "orders"));
  ASSERT_EQ(UV_ENOBUFS, envelope_append(&b, &p, &e));
  ASSERT_STR_EQ("keep", buf_cstr(&b));
  envelope_prefix_free(&p);
  buf_free(&b);
}

/* Property: whatever bytes a source hands over as a string, every line is
 * valid JSON that decodes back to the same seq and kind. */
static void test_random_strings_make_valid_json(void) {
  envelope_prefix p;
  envelope e = sample();
  unsigned char data[64];
  uint64_t x = 88172645463325252ull;
  json_error_t jerr;
  json_t *j;
  buf b;
  int i, k;

  ASSERT_EQ(0, envelope_prefix_init(&p, "fuzzy"));
  buf_init(&b, 0);
  for (i = 0; i < 2000; i++) {
    for (k = 0; k < (int)sizeof data; k++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      data[k] = (unsigned char)x;
    }
    e.seq = (uint64_t)i;
    e.data = (const char *)data;
    e.data_len = (size_t)(x % sizeof data);
    e.data_is_json = false;
    e.cursor = (const char *)data + 3;
    e.cursor_len = (size_t)(x % 7);
    buf_reset(&b);
    ASSERT_EQ(0, envelope_append(&b, &p, &e));
    ASSERT_EQ('\n', b.data[b.len - 1]);
    j = json_loadb(b.data, b.len - 1, JSON_ALLOW_NUL, &jerr);
    if (j == NULL)
      test__fail(__FILE__, __LINE__, "invalid JSON: %s in %s", jerr.text,
                 buf_cstr(&b));
    ASSERT_EQ(i, json_integer_value(json_object_get(j, "seq")));
    ASSERT_STR_EQ("orders", json_string_value(json_object_get(j, "kind")));
    ASSERT(json_is_string(json_object_get(j, "data")));
    json_decref(j);
  }
  envelope_prefix_free(&p);
  buf_free(&b);
}

static void test_time_format(void) {
  char out[32];

  envelope_format_time(0, out);
  ASSERT_STR_EQ("1970-01-01T00:00:00.000Z", out);
  envelope_format_time(1767348000123, out);
  ASSERT_STR_EQ("2026-01-02T10:00:00.123Z", out);
  envelope_format_time(-1, out);
  ASSERT_STR_EQ("1969-12-31T23:59:59.999Z", out);
}

static void test_is_json(void) {
  static const char *const good[] = {
    "{}",
    "[]",
    " { } ",
    "0",
    "-0",
    "1.5e10",
    "-12.25E-3",
    "\"\"",
    "true",
    "false",
    "null",
    "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\\\"y\"}",
    "[[[[]]]]",
    "\"\\u00e9\\n\\/\"",
    "\"\xc3\xa9\xf0\x9f\x98\x80\"",
    "\t[ 1 , 2 ]\r\n",
    "{\"a\" : { \"b\" : [ ] } }",
    NULL,
  };
  static const char *const bad[] = {
    "",
    " ",
    "{",
    "}",
    "[1,]",
    "[,1]",
    "{\"a\"}",
    "{\"a\":}",
    "{a:1}",
    "{\"a\":1,}",
    "01",
    "1.",
    ".5",
    "1e",
    "+1",
    "-",
    "tru",
    "nul",
    "\"abc",
    "\"a\\x\"",
    "\"\\u12\"",
    "\"tab\there\"",
    "[1 2]",
    "{} {}",
    "1 2",
    "\"\xff\"",
    "\"\xc0\xaf\"",
    "[1]]",
    "{\"a\":1]",
    "NaN",
    "Infinity",
    NULL,
  };
  char deep[600];
  size_t i;

  for (i = 0; good[i] != NULL; i++)
    if (!envelope_is_json(good[i], strlen(good[i])))
      test__fail(__FILE__, __LINE__, "rejected valid JSON: %s", good[i]);
  for (i = 0; bad[i] != NULL; i++)
    if (envelope_is_json(bad[i], strlen(bad[i])))
      test__fail(__FILE__, __LINE__, "accepted invalid JSON: %s", bad[i]);
  /* NUL inside a string must be escaped, and the length is what counts. */
  ASSERT(!envelope_is_json("\"a\0b\"", 5));
  ASSERT(envelope_is_json("{}\0", 2));
  /* 256 levels are fine, 257 are not. */
  memset(deep, '[', 256);
  memset(deep + 256, ']', 256);
  ASSERT(envelope_is_json(deep, 512));
  memset(deep, '[', 257);
  memset(deep + 257, ']', 257);
  ASSERT(!envelope_is_json(deep, 514));
}

/* Whatever jansson accepts (within the depth bound), the validator accepts:
 * random JSON-ish text from a small alphabet. */
static void test_is_json_agrees_with_jansson(void) {
  static const char alphabet[] = "{}[]:,\"\\ 0123-.eE+truefalsnl\xc3\xa9ux";
  char text[24];
  uint64_t x = 1234567;
  json_error_t jerr;
  json_t *j;
  int i, k, n, accepted = 0;

  for (i = 0; i < 200000; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    n = (int)(x % sizeof text);
    for (k = 0; k < n; k++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      text[k] = alphabet[x % (sizeof alphabet - 1)];
    }
    j = json_loadb(text, (size_t)n, JSON_DECODE_ANY, &jerr);
    if (j != NULL) {
      accepted++;
      if (!envelope_is_json(text, (size_t)n))
        test__fail(__FILE__, __LINE__, "jansson accepts, we reject: %.*s", n,
                   text);
      json_decref(j);
    }
  }
  ASSERT(accepted > 100);
}

static const test_case tests[] = {
  TEST(test_is_json),
  TEST(test_is_json_agrees_with_jansson),
  TEST(test_line_is_exact),
  TEST(test_non_json_data_is_a_string),
  TEST(test_escaping),
  TEST(test_consumer_name_is_escaped),
  TEST(test_cap_leaves_buffer_unchanged),
  TEST(test_random_strings_make_valid_json),
  TEST(test_time_format),
  { NULL, NULL },
};

TEST_MAIN(tests)
