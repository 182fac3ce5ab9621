/* RFC 6901 JSON Pointer: the RFC's own examples, every error with its code
 * and message, NUL in names, huge indices, and the cursor text of a value. */
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "protocol/jsonptr.h"
#include "tests/unit/test.h"

/* RFC 6901 §5. jansson reads "i\\j" as i\j and "k\"l" as k"l. */
static const char rfc_doc[] =
    "{\"foo\": [\"bar\", \"baz\"], \"\": 0, \"a/b\": 1, \"c%d\": 2, "
    "\"e^f\": 3, \"g|h\": 4, \"i\\\\j\": 5, \"k\\\"l\": 6, \" \": 7, "
    "\"m~n\": 8}";

static json_t *load(const char *text) {
  json_error_t e;
  json_t *j = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
  if (j == NULL)
    test__fail(__FILE__, __LINE__, "bad test JSON: %s", e.text);
  return j;
}

static void parse_ok(const char *text, size_t len, jsonptr *p) {
  char err[256] = "";
  int r = jsonptr_parse(text, len, p, err, sizeof err);
  if (r != 0)
    test__fail(__FILE__, __LINE__, "parse %s: %d %s", text, r, err);
}

/* Resolves ptr (a C string) in doc and checks the result equals the JSON
 * text want, and that jsonptr_get agrees. */
static void check_get(json_t *doc, const char *ptr, const char *want) {
  jsonptr p;
  json_t *got, *expected = load(want);
  size_t fail = 99;
  char err[256] = "";

  parse_ok(ptr, strlen(ptr), &p);
  ASSERT_EQ(0, jsonptr_resolve(&p, doc, &got, &fail, err, sizeof err));
  ASSERT_STR_EQ("", err);
  ASSERT_UEQ(p.n, fail);
  ASSERT(got != NULL);
  if (!json_equal(expected, got))
    test__fail(__FILE__, __LINE__, "%s: wrong value", ptr);
  ASSERT(jsonptr_get(&p, doc) == got);
  json_decref(expected);
  jsonptr_free(&p);
}

/* Resolves ptr (len bytes) in doc and checks the code, failing token and the
 * exact message; jsonptr_get must give NULL. */
static void check_fail_n(json_t *doc, const char *ptr, size_t len, int code,
                         size_t token, const char *msg) {
  jsonptr p;
  json_t *got = (json_t *)1;
  size_t fail = 99;
  char err[256] = "";

  parse_ok(ptr, len, &p);
  ASSERT_EQ(code, jsonptr_resolve(&p, doc, &got, &fail, err, sizeof err));
  ASSERT(got == NULL);
  ASSERT_UEQ(token, fail);
  ASSERT_STR_EQ(msg, err);
  ASSERT(jsonptr_get(&p, doc) == NULL);
  jsonptr_free(&p);
}

static void check_fail(json_t *doc, const char *ptr, int code, size_t token,
                       const char *msg) {
  check_fail_n(doc, ptr, strlen(ptr), code, token, msg);
}

static void check_parse_err(const char *text, size_t len, const char *msg) {
  jsonptr p;
  char err[256] = "";

  memset(&p, 0xAB, sizeof p);
  ASSERT_EQ(UV_EINVAL, jsonptr_parse(text, len, &p, err, sizeof err));
  ASSERT_STR_EQ(msg, err);
  ASSERT(p.tokens == NULL && p.n == 0 && p.text == NULL);
  jsonptr_free(&p);
}

static void test_rfc6901_examples(void) {
  json_t *doc = load(rfc_doc);

  check_get(doc, "", rfc_doc);
  check_get(doc, "/foo", "[\"bar\", \"baz\"]");
  check_get(doc, "/foo/0", "\"bar\"");
  check_get(doc, "/", "0");
  check_get(doc, "/a~1b", "1");
  check_get(doc, "/c%d", "2");
  check_get(doc, "/e^f", "3");
  check_get(doc, "/g|h", "4");
  check_get(doc, "/i\\j", "5");
  check_get(doc, "/k\"l", "6");
  check_get(doc, "/ ", "7");
  check_get(doc, "/m~0n", "8");
  check_get(doc, "/foo/1", "\"baz\"");
  json_decref(doc);
}

static void test_parse_tokens(void) {
  jsonptr p;

  parse_ok("", 0, &p);
  ASSERT_UEQ(0, p.n);
  ASSERT(p.tokens != NULL);
  ASSERT_STR_EQ("", p.text);
  jsonptr_free(&p);

  parse_ok(NULL, 0, &p);
  ASSERT_UEQ(0, p.n);
  jsonptr_free(&p);

  /* ~1 first, then ~0: "~01" is "~1", never "/". */
  parse_ok("/~01/~10/a~0~1b/", 16, &p);
  ASSERT_UEQ(4, p.n);
  ASSERT_MEM_EQ("~1", 2, p.tokens[0].name, p.tokens[0].len);
  ASSERT_MEM_EQ("/0", 2, p.tokens[1].name, p.tokens[1].len);
  ASSERT_MEM_EQ("a~/b", 4, p.tokens[2].name, p.tokens[2].len);
  ASSERT_UEQ(0, p.tokens[3].len);
  ASSERT_EQ('\0', p.tokens[3].name[0]);
  ASSERT_UEQ(4, p.tokens[0].end);
  ASSERT_UEQ(8, p.tokens[1].end);
  ASSERT_UEQ(15, p.tokens[2].end);
  ASSERT_UEQ(16, p.tokens[3].end);
  ASSERT_STR_EQ("/~01/~10/a~0~1b/", p.text);
  ASSERT_UEQ(16, p.text_len);
  ASSERT(!p.tokens[0].is_index);
  jsonptr_free(&p);

  parse_ok("/0/10/01/-/1a/ 1/+1/", 20, &p);
  ASSERT_UEQ(8, p.n);
  ASSERT(p.tokens[0].is_index);
  ASSERT_UEQ(0, p.tokens[0].index);
  ASSERT(p.tokens[1].is_index);
  ASSERT_UEQ(10, p.tokens[1].index);
  ASSERT(!p.tokens[2].is_index);
  ASSERT(!p.tokens[3].is_index);
  ASSERT(!p.tokens[4].is_index);
  ASSERT(!p.tokens[5].is_index);
  ASSERT(!p.tokens[6].is_index);
  ASSERT(!p.tokens[7].is_index);
  jsonptr_free(&p);

  /* The text is copied: the caller's buffer may go away. */
  {
    char tmp[] = "/abc";
    parse_ok(tmp, 4, &p);
    memset(tmp, 'x', 4);
    ASSERT_MEM_EQ("abc", 3, p.tokens[0].name, p.tokens[0].len);
    ASSERT_STR_EQ("/abc", p.text);
    jsonptr_free(&p);
  }
}

static void test_parse_errors(void) {
  check_parse_err("a", 1,
                  "offset 0: a pointer is empty or starts with \"/\", not "
                  "\"a\"");
  check_parse_err("#/a", 3,
                  "offset 0: a pointer is empty or starts with \"/\", not "
                  "\"#\"");
  check_parse_err(" /a", 3,
                  "offset 0: a pointer is empty or starts with \"/\", not "
                  "\" \"");
  check_parse_err("/~", 2,
                  "offset 1: \"~\" ends the pointer (write \"~0\" for \"~\" "
                  "and \"~1\" for \"/\")");
  check_parse_err("/a~2", 4,
                  "offset 2: \"~2\" is not an escape (write \"~0\" for \"~\" "
                  "and \"~1\" for \"/\")");
  check_parse_err("/a/b~/c", 7,
                  "offset 4: \"~/\" is not an escape (write \"~0\" for \"~\" "
                  "and \"~1\" for \"/\")");
  check_parse_err("/~0~", 4,
                  "offset 3: \"~\" ends the pointer (write \"~0\" for \"~\" "
                  "and \"~1\" for \"/\")");
  check_parse_err("/~\0", 3,
                  "offset 1: \"~\\x00\" is not an escape (write \"~0\" for "
                  "\"~\" and \"~1\" for \"/\")");
  check_parse_err("\n", 1,
                  "offset 0: a pointer is empty or starts with \"/\", not "
                  "\"\\x0A\"");

  /* err may be NULL, and a short buffer truncates. */
  {
    jsonptr p;
    char small[8];
    ASSERT_EQ(UV_EINVAL, jsonptr_parse("x", 1, &p, NULL, 0));
    ASSERT_EQ(UV_EINVAL, jsonptr_parse("x", 1, &p, small, sizeof small));
    ASSERT_STR_EQ("offset ", small);
  }
}

static void test_get_errors(void) {
  json_t *doc = load("{\"foo\": [\"a\", \"b\"], \"a\": 1, \"o\": {\"a/b\": "
                     "{\"s\": \"x\"}}, \"e\": []}");
  json_t *scalar = load("5");

  check_fail(doc, "/results", UV_ENOENT, 0, "no member \"results\"");
  check_fail(doc, "/results/0", UV_ENOENT, 0, "no member \"results\"");
  check_fail(doc, "/foo/3", UV_ENOENT, 1,
             "index 3 past the end (length 2) at /foo");
  check_fail(doc, "/foo/2", UV_ENOENT, 1,
             "index 2 past the end (length 2) at /foo");
  check_fail(doc, "/e/0", UV_ENOENT, 1,
             "index 0 past the end (length 0) at /e");
  check_fail(doc, "/foo/01", UV_EINVAL, 1,
             "\"01\" is not an array index at /foo");
  check_fail(doc, "/foo/", UV_EINVAL, 1, "\"\" is not an array index at /foo");
  check_fail(doc, "/foo/+1", UV_EINVAL, 1,
             "\"+1\" is not an array index at /foo");
  check_fail(doc, "/foo/1e0", UV_EINVAL, 1,
             "\"1e0\" is not an array index at /foo");
  check_fail(doc, "/foo/ 1", UV_EINVAL, 1,
             "\" 1\" is not an array index at /foo");
  check_fail(doc, "/foo/-1", UV_EINVAL, 1,
             "\"-1\" is not an array index at /foo");
  check_fail(doc, "/foo/-", UV_ENOENT, 1, "\"-\" names no element at /foo");
  check_fail(doc, "/a/b", UV_EINVAL, 1, "not an object or array at /a");
  check_fail(doc, "/foo/0/x", UV_EINVAL, 2, "not an object or array at /foo/0");
  check_fail(doc, "/o/a~1b/s/t", UV_EINVAL, 3,
             "not an object or array at /o/a~1b/s");
  check_fail(doc, "/o/a~1b/t", UV_ENOENT, 2, "no member \"t\" at /o/a~1b");
  check_fail(doc, "/o/a/b", UV_ENOENT, 1, "no member \"a\" at /o");
  check_fail(scalar, "/x", UV_EINVAL, 0,
             "the document is not an object or array");
  check_fail(scalar, "/0", UV_EINVAL, 0,
             "the document is not an object or array");

  /* Quoting: '"', '\' and control bytes are escaped, long names cut. */
  check_fail(doc, "/o/x\"y\\z\x01", UV_ENOENT, 1,
             "no member \"x\\\"y\\\\z\\x01\" at /o");
  check_fail_n(doc, "/a\0b", 4, UV_ENOENT, 0, "no member \"a\\x00b\"");
  check_fail(doc,
             "/o/0123456789012345678901234567890123456789012345678901234567"
             "890123456789",
             UV_ENOENT, 1,
             "no member "
             "\"0123456789012345678901234567890123456789012345678901234567890"
             "123\"... at /o");

  /* A NULL document, and a NULL err. */
  {
    jsonptr p;
    json_t *got = (json_t *)1;
    size_t fail = 99;
    char err[64];

    parse_ok("/a", 2, &p);
    ASSERT_EQ(UV_EINVAL, jsonptr_resolve(&p, NULL, &got, &fail, err, 64));
    ASSERT_STR_EQ("no document", err);
    ASSERT(got == NULL);
    ASSERT_UEQ(0, fail);
    ASSERT(jsonptr_get(&p, NULL) == NULL);
    ASSERT_EQ(UV_EINVAL, jsonptr_resolve(&p, scalar, &got, NULL, NULL, 0));
    ASSERT_EQ(0, jsonptr_resolve(&p, doc, &got, NULL, NULL, 0));
    ASSERT_EQ(1, json_integer_value(got));
    jsonptr_free(&p);
  }
  json_decref(scalar);
  json_decref(doc);
}

/* A member name may hold any byte, NUL included. jansson's parser refuses
 * "\u0000" in keys, but an object built with json_object_setn holds one. */
static void test_nul_in_names(void) {
  json_t *doc = json_object(), *inner = json_object();
  jsonptr p;

  ASSERT_EQ(0, json_object_setn_new(doc, "a\0b", 3, json_integer(1)));
  ASSERT_EQ(0, json_object_setn_new(doc, "a", 1, json_integer(2)));
  ASSERT_EQ(0, json_object_setn_new(doc, "a\0", 2, inner));
  ASSERT_EQ(0, json_object_setn_new(inner, "\0", 1, json_integer(3)));
  ASSERT_EQ(0,
            json_object_setn_new_nocheck(doc, "\xff\xfe", 2, json_integer(4)));

  parse_ok("/a\0b", 4, &p);
  ASSERT_UEQ(1, p.n);
  ASSERT_UEQ(3, p.tokens[0].len);
  ASSERT_EQ(1, json_integer_value(jsonptr_get(&p, doc)));
  jsonptr_free(&p);

  parse_ok("/a", 2, &p);
  ASSERT_EQ(2, json_integer_value(jsonptr_get(&p, doc)));
  jsonptr_free(&p);

  parse_ok("/a\0/\0", 5, &p);
  ASSERT_UEQ(2, p.n);
  ASSERT_EQ(3, json_integer_value(jsonptr_get(&p, doc)));
  ASSERT_UEQ(5, p.text_len);
  jsonptr_free(&p);

  parse_ok("/\xff\xfe", 3, &p);
  ASSERT_EQ(4, json_integer_value(jsonptr_get(&p, doc)));
  jsonptr_free(&p);

  /* "a\0c" is not "a" or "a\0b": lengths and every byte count. */
  check_fail_n(doc, "/a\0c", 4, UV_ENOENT, 0, "no member \"a\\x00c\"");
  check_fail_n(doc, "/a\0/\0\0", 6, UV_ENOENT, 1,
               "no member \"\\x00\\x00\" at /a\\x00");
  json_decref(doc);
}

static void test_huge_indices(void) {
  json_t *doc = load("{\"arr\": [\"a\", \"b\"], \"18446744073709551616\": 1}");
  jsonptr p;

  parse_ok("/18446744073709551615/18446744073709551616/"
           "999999999999999999999999999999/18446744073709551614",
           94, &p);
  ASSERT_UEQ(4, p.n);
  ASSERT(p.tokens[0].is_index);
  ASSERT(p.tokens[1].is_index);
  ASSERT(p.tokens[2].is_index);
  ASSERT(p.tokens[3].is_index);
  if (SIZE_MAX == UINT64_MAX) {
    ASSERT_UEQ(SIZE_MAX, p.tokens[0].index);
    ASSERT_UEQ(SIZE_MAX - 1, p.tokens[3].index);
  }
  ASSERT_UEQ(SIZE_MAX, p.tokens[1].index);
  ASSERT_UEQ(SIZE_MAX, p.tokens[2].index);
  jsonptr_free(&p);

  check_fail(doc, "/arr/18446744073709551616", UV_ENOENT, 1,
             "index 18446744073709551616 past the end (length 2) at /arr");
  check_fail(doc, "/arr/99999999999999999999999999999999", UV_ENOENT, 1,
             "index 99999999999999999999999999999999 past the end (length 2) "
             "at /arr");
  check_fail(doc, "/arr/4294967296", UV_ENOENT, 1,
             "index 4294967296 past the end (length 2) at /arr");
  /* On an object the same digits are a member name. */
  check_get(doc, "/18446744073709551616", "1");
  json_decref(doc);
}

static void test_names_on_objects_indices_on_arrays(void) {
  json_t *doc = load("{\"0\": \"zero\", \"01\": \"oh-one\", \"-\": \"dash\", "
                     "\"list\": [[10, 11], {\"0\": \"obj\"}]}");

  check_get(doc, "/0", "\"zero\"");
  check_get(doc, "/01", "\"oh-one\"");
  check_get(doc, "/-", "\"dash\"");
  check_get(doc, "/list/0/1", "11");
  check_get(doc, "/list/1/0", "\"obj\"");
  check_fail(doc, "/list/0/2", UV_ENOENT, 2,
             "index 2 past the end (length 2) at /list/0");
  json_decref(doc);
}

static void test_get_borrows(void) {
  json_t *doc = load("{\"a\": {\"b\": [1]}}"), *v;
  jsonptr p;

  parse_ok("/a/b", 4, &p);
  v = jsonptr_get(&p, doc);
  ASSERT(v != NULL);
  ASSERT_UEQ(1, v->refcount);
  ASSERT(jsonptr_get(&p, doc) == v);
  ASSERT_UEQ(1, v->refcount);
  jsonptr_free(&p);
  json_decref(doc);
}

static void test_deep(void) {
  enum { DEPTH = 499 }; /* odd, so the innermost is an object */
  json_t *doc = json_array(), *cur = doc, *next;
  buf text;
  jsonptr p;
  size_t i;

  for (i = 0; i < DEPTH; i++) {
    next = i % 2 ? json_array() : json_object();
    if (json_is_array(cur))
      json_array_append_new(cur, next);
    else
      json_object_set_new(cur, "k", next);
    cur = next;
  }
  json_object_set_new(cur, "end", json_true());
  buf_init(&text, 0);
  for (i = 0; i < DEPTH; i++)
    ASSERT_EQ(0, buf_append_str(&text, i % 2 ? "/k" : "/0"));
  ASSERT_EQ(0, buf_append_str(&text, "/end"));
  parse_ok(text.data, text.len, &p);
  ASSERT_UEQ(DEPTH + 1, p.n);
  ASSERT(jsonptr_get(&p, doc) == json_true());
  jsonptr_free(&p);
  buf_free(&text);
  json_decref(doc);
}

static void test_free_twice(void) {
  jsonptr p;

  memset(&p, 0, sizeof p);
  jsonptr_free(&p);
  parse_ok("/a/b", 4, &p);
  jsonptr_free(&p);
  ASSERT(p.tokens == NULL);
  jsonptr_free(&p);
  jsonptr_free(NULL);
}

/* Appends the cursor text of the JSON value in text and compares. */
static void check_cursor(const char *text, const char *want, size_t want_len) {
  json_t *v = load(text);
  buf b;
  char err[128] = "";

  buf_init(&b, 0);
  ASSERT_EQ(0, buf_append_str(&b, "pre:"));
  ASSERT_EQ(0, jsonptr_cursor_append(v, &b, err, sizeof err));
  ASSERT_STR_EQ("", err);
  ASSERT_MEM_EQ("pre:", 4, b.data, 4);
  ASSERT_MEM_EQ(want, want_len, b.data + 4, b.len - 4);
  buf_free(&b);
  json_decref(v);
}

/* The expected text is a literal that may hold NUL: its size gives the
 * length. */
#define CHECK_CURSOR(text, want) check_cursor(text, want, sizeof want - 1)

static void test_cursor_text(void) {
  CHECK_CURSOR("\"5-g1AAAA\"", "5-g1AAAA");
  CHECK_CURSOR("\"\"", "");
  CHECK_CURSOR("\"a\\u0000b\"", "a\0b");
  CHECK_CURSOR("\"caf\\u00e9\"", "caf\xc3\xa9");
  CHECK_CURSOR("42", "42");
  CHECK_CURSOR("0", "0");
  CHECK_CURSOR("-7", "-7");
  CHECK_CURSOR("9223372036854775807", "9223372036854775807");
  CHECK_CURSOR("-9223372036854775808", "-9223372036854775808");
  CHECK_CURSOR("true", "true");
  CHECK_CURSOR("false", "false");
  CHECK_CURSOR("null", "null");
  CHECK_CURSOR("[1, \"x\", {\"b\": 2, \"a\": 1}]",
               "[1,\"x\",{\"b\":2,\"a\":1}]");
  CHECK_CURSOR("{\"z\": 1, \"a\": [2.5]}", "{\"z\":1,\"a\":[2.5]}");
  CHECK_CURSOR("{}", "{}");
}

static void test_cursor_errors(void) {
  json_t *real = json_real(1.5), *s = json_string("abcdef");
  buf b;
  char err[128] = "";

  buf_init(&b, 0);
  ASSERT_EQ(0, buf_append_str(&b, "keep"));
  ASSERT_EQ(UV_EINVAL, jsonptr_cursor_append(real, &b, err, sizeof err));
  ASSERT_STR_EQ("a cursor cannot be a real number (1.5): use an integer or a "
                "string",
                err);
  ASSERT_UEQ(4, b.len);
  ASSERT_EQ(UV_EINVAL, jsonptr_cursor_append(NULL, &b, err, sizeof err));
  ASSERT_STR_EQ("no cursor value", err);
  ASSERT_EQ(UV_EINVAL, jsonptr_cursor_append(real, &b, NULL, 0));
  buf_free(&b);

  /* A capped buffer: the cap is an error and the length stays. */
  buf_init(&b, 8);
  ASSERT_EQ(0, buf_append_str(&b, "keep"));
  ASSERT_EQ(UV_ENOBUFS, jsonptr_cursor_append(s, &b, err, sizeof err));
  ASSERT_STR_EQ("cursor too long", err);
  ASSERT_UEQ(4, b.len);
  json_decref(s);
  s = load("{\"abcdef\": 1}");
  ASSERT_EQ(UV_ENOBUFS, jsonptr_cursor_append(s, &b, err, sizeof err));
  ASSERT_UEQ(4, b.len);
  buf_free(&b);
  json_decref(s);
  json_decref(real);
}

static const test_case tests[] = {
  TEST(test_rfc6901_examples),
  TEST(test_parse_tokens),
  TEST(test_parse_errors),
  TEST(test_get_errors),
  TEST(test_nul_in_names),
  TEST(test_huge_indices),
  TEST(test_names_on_objects_indices_on_arrays),
  TEST(test_get_borrows),
  TEST(test_deep),
  TEST(test_free_twice),
  TEST(test_cursor_text),
  TEST(test_cursor_errors),
  { NULL, NULL },
};
TEST_MAIN(tests)
