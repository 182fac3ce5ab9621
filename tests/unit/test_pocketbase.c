/* The PocketBase codec: datetimes against glibc's calendar, cursors and
 * positions, the filter rule with its messages, the exact request targets
 * of every poll shape, list/error/auth/realtime/mirror bodies good and bad.
 */
#include <stdint.h>
#include <time.h>

#include <jansson.h>
#include <uv.h>

#include "protocol/pocketbase.h"
#include "tests/unit/test.h"

/* A real-shaped PocketBase token: {"alg":"HS256","typ":"JWT"} and claims
 * {"collectionId":"pbc_3142635823","exp":1767225600,"id":"r1a2b3c4d5e6f7g",
 * "refreshable":true,"type":"auth"}, signature made up. */
#define JWT_HEAD "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
#define JWT_AUTH                                                               \
  JWT_HEAD                                                                     \
  ".eyJjb2xsZWN0aW9uSWQiOiJwYmNfMzE0MjYzNTgyMyIsImV4cCI6MTc2NzIyNTYw"          \
  "MCwiaWQiOiJyMWEyYjNjNGQ1ZTZmN2ciLCJyZWZyZXNoYWJsZSI6dHJ1ZSwidHlwZSI"        \
  "6ImF1dGgifQ.sig_0-AbC"

#define C1   "2026-01-02 10:00:00.123Z"
#define I1   "r1a2b3c4d5e6f7g"
#define W1   "2026-01-02 10:00:05.000Z"
#define USER "status = \"paid\" && total > 10"

/* The filter part of the created-start cursor:
 *   (created > "" || (created = "" && id > "")) */
#define F_START                                                                \
  "&filter=%28created%20%3E%20%22%22%20%7C%7C%20%28created%20%3D%20"           \
  "%22%22%20%26%26%20id%20%3E%20%22%22%29%29"

/* A string literal and its length, NUL bytes inside included. */
#define LIT(s) s, sizeof(s) - 1

/* ---- helpers ------------------------------------------------------------- */

static void cursor_set(pb_cursor *c, const char *created, const char *id) {
  memset(c, 0, sizeof *c);
  snprintf(c->created, sizeof c->created, "%s", created);
  snprintf(c->id, sizeof c->id, "%s", id);
}

/* Builds the target of q and compares it with want. */
static void check_target(const pb_list_query *q, const char *want) {
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, pb_list_target(q, &b));
  ASSERT_STR_EQ(want, buf_cstr(&b));
  buf_free(&b);
}

/* The default query of these tests: orders, created offset, no extras. */
static pb_list_query query(const pb_cursor *after, int64_t per_page) {
  pb_list_query q;

  memset(&q, 0, sizeof q);
  q.collection = "orders";
  q.offset = PB_OFFSET_CREATED;
  q.after = after;
  q.per_page = per_page;
  return q;
}

static void check_time(const char *text, int64_t ms) {
  char out[PB_TIME_LEN + 1];
  int64_t got = 12345;

  ASSERT_EQ(0, pb_time_parse(text, strlen(text), &got));
  ASSERT_EQ(ms, got);
  pb_time_format(ms, out);
  ASSERT_STR_EQ(text, out);
}

static void check_time_bad(const char *text) {
  int64_t got = 7;

  if (pb_time_parse(text, strlen(text), &got) != UV_EINVAL)
    test__fail(__FILE__, __LINE__, "accepted \"%s\"", text);
  ASSERT_EQ(7, got);
}

static void check_filter_ok(const char *f) {
  char err[256] = "";
  int r = pb_filter_check(f, err, sizeof err);

  if (r != 0)
    test__fail(__FILE__, __LINE__, "refused \"%s\": %s", f, err);
  ASSERT_STR_EQ("", err);
}

static void check_filter_bad(const char *f, const char *msg) {
  char err[256] = "";

  ASSERT_EQ(UV_EINVAL, pb_filter_check(f, err, sizeof err));
  ASSERT_STR_EQ(msg, err);
}

static void check_page_bad(const char *body, bool need_created,
                           const char *msg) {
  char err[256] = "";
  pb_page p;

  memset(&p, 0xAB, sizeof p);
  ASSERT_EQ(UV_EINVAL, pb_page_parse(body, strlen(body), need_created, &p, err,
                                     sizeof err));
  ASSERT(p.doc == NULL && p.items == NULL);
  ASSERT_STR_EQ(msg, err);
}

static void error_of(const char *body, pb_error *e) {
  memset(e, 0xAB, sizeof *e);
  pb_error_parse(body, strlen(body), e);
}

static void check_jwt_bad(const char *token, const char *msg) {
  char err[256] = "";
  int64_t exp = 99;

  ASSERT_EQ(UV_EINVAL, pb_jwt_exp(token, &exp, err, sizeof err));
  ASSERT_EQ(0, exp);
  ASSERT_STR_EQ(msg, err);
}

/* ---- datetimes ----------------------------------------------------------- */

static void test_time_vectors(void) {
  check_time("1970-01-01 00:00:00.000Z", 0);
  check_time("1969-12-31 23:59:59.999Z", -1);
  check_time(C1, 1767348000123LL);
  check_time("2000-02-29 23:59:59.999Z", 951868799999LL);
  check_time("2024-12-31 12:00:00.000Z", 1735646400000LL);
  check_time("0000-01-01 00:00:00.000Z", -62167219200000LL);
  check_time("9999-12-31 23:59:59.999Z", 253402300799999LL);
}

static void test_time_clamps(void) {
  char out[PB_TIME_LEN + 1];

  pb_time_format(INT64_MIN, out);
  ASSERT_STR_EQ("0000-01-01 00:00:00.000Z", out);
  pb_time_format(INT64_MAX, out);
  ASSERT_STR_EQ("9999-12-31 23:59:59.999Z", out);
  pb_time_format(253402300800000LL, out);
  ASSERT_STR_EQ("9999-12-31 23:59:59.999Z", out);
}

static void test_time_refuses(void) {
  check_time_bad("");
  check_time_bad("2026-01-02T10:00:00.123Z");
  check_time_bad("2026-01-02 10:00:00.123");
  check_time_bad("2026-01-02 10:00:00.123+");
  check_time_bad("2026-01-02 10:00:00.1234Z");
  check_time_bad("2026-01-02 10:00:00.12Z");
  check_time_bad("2026-01-02 10:00:00Z");
  check_time_bad("2026-13-02 10:00:00.123Z");
  check_time_bad("2026-00-02 10:00:00.123Z");
  check_time_bad("2026-01-00 10:00:00.123Z");
  check_time_bad("2026-01-32 10:00:00.123Z");
  check_time_bad("2025-02-29 10:00:00.123Z");
  check_time_bad("1900-02-29 10:00:00.123Z");
  check_time_bad("2026-04-31 10:00:00.123Z");
  check_time_bad("2026-01-02 24:00:00.123Z");
  check_time_bad("2026-01-02 10:60:00.123Z");
  check_time_bad("2026-01-02 10:00:60.123Z");
  check_time_bad("2026-01-02 10:00:00,123Z");
  check_time_bad("2026/01/02 10:00:00.123Z");
  check_time_bad("2026-1-02 10:00:00.123ZZ");
  check_time_bad("2026-01-02 1a:00:00.123Z");
  check_time_bad("+026-01-02 10:00:00.123Z");
  check_time_bad("2026-01-02 10:00:00.-23Z");
  check_time_bad("2026-01-02 10:00:00.123z");
  check_time_bad(" 2026-01-02 10:00:00.123Z");
  ASSERT_EQ(UV_EINVAL, pb_time_parse(NULL, 0, NULL));
  /* A NUL inside the counted bytes is a bad digit, not an end. */
  ASSERT_EQ(UV_EINVAL, pb_time_parse(LIT("2026-01-02 10:00:0\0.123Z"), NULL));
  ASSERT_EQ(0, pb_time_parse(C1 "junk", PB_TIME_LEN, NULL));
}

/* The arithmetic agrees with glibc's calendar across the years PocketBase
 * can write, leap days and month ends included. */
static void test_time_matches_libc(void) {
  uint64_t x = 0x9E3779B97F4A7C15ULL;
  char out[PB_TIME_LEN + 1], want[80];
  int i;

  for (i = 0; i < 20000; i++) {
    int64_t ms, back;
    time_t t;
    struct tm tm;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    /* 1970 .. 9999, then a few near day and year edges. */
    ms = (int64_t)(x % 253402300800000ULL);
    if (i % 4 == 1)
      ms -= ms % 86400000;
    else if (i % 4 == 2)
      ms = ms - ms % 86400000 - 1;
    if (ms < 0)
      ms = 0;
    t = (time_t)(ms / 1000);
    ASSERT(gmtime_r(&t, &tm) != NULL);
    snprintf(want, sizeof want, "%04d-%02d-%02d %02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    pb_time_format(ms, out);
    ASSERT_STR_EQ(want, out);
    ASSERT_EQ(0, pb_time_parse(out, PB_TIME_LEN, &back));
    ASSERT_EQ(ms, back);
  }
}

/* ---- ids and cursors ----------------------------------------------------- */

static void test_id_and_value_rules(void) {
  char long_id[PB_ID_MAX + 2];

  ASSERT(pb_id_ok(I1, strlen(I1)));
  ASSERT(pb_id_ok("Ünïcode-ok_1.2~", strlen("Ünïcode-ok_1.2~")));
  ASSERT(!pb_id_ok("", 0));
  ASSERT(!pb_id_ok(NULL, 0));
  ASSERT(!pb_id_ok("a\"b", 3));
  ASSERT(!pb_id_ok("a\\b", 3));
  ASSERT(!pb_id_ok("a|b", 3));
  ASSERT(!pb_id_ok("a\nb", 3));
  ASSERT(!pb_id_ok("a\x7f", 2));
  ASSERT(!pb_id_ok("a\0b", 3));
  memset(long_id, 'a', sizeof long_id);
  ASSERT(pb_id_ok(long_id, PB_ID_MAX));
  ASSERT(!pb_id_ok(long_id, PB_ID_MAX + 1));

  ASSERT(pb_value_ok("orders"));
  ASSERT(pb_value_ok("a|b 'c'"));
  ASSERT(!pb_value_ok(""));
  ASSERT(!pb_value_ok(NULL));
  ASSERT(!pb_value_ok("a\"b"));
  ASSERT(!pb_value_ok("a\\b"));
  ASSERT(!pb_value_ok("a\tb"));
  long_id[PB_ID_MAX] = '\0';
  ASSERT(pb_value_ok(long_id));
  long_id[PB_ID_MAX] = 'a';
  long_id[PB_ID_MAX + 1] = '\0';
  ASSERT(!pb_value_ok(long_id));
}

static void test_cursor_parse_format(void) {
  static const char *const good[] = { "|", C1 "|" I1, "|" I1, C1 "|",
                                      "|a b'c" };
  char err[256] = "";
  pb_cursor c;
  size_t i;
  buf b;

  ASSERT_EQ(0, pb_cursor_parse("", &c, err, sizeof err));
  ASSERT_STR_EQ("", c.created);
  ASSERT_STR_EQ("", c.id);

  buf_init(&b, 0);
  for (i = 0; i < sizeof good / sizeof good[0]; i++) {
    ASSERT_EQ(0, pb_cursor_parse(good[i], &c, err, sizeof err));
    buf_reset(&b);
    ASSERT_EQ(0, pb_cursor_format(&c, &b));
    ASSERT_STR_EQ(good[i], buf_cstr(&b));
  }
  ASSERT_EQ(0, pb_cursor_parse(C1 "|" I1, &c, NULL, 0));
  ASSERT_STR_EQ(C1, c.created);
  ASSERT_STR_EQ(I1, c.id);

  /* The start formats as "|", which reads back as the start. */
  cursor_set(&c, "", "");
  buf_reset(&b);
  ASSERT_EQ(0, pb_cursor_format(&c, &b));
  ASSERT_STR_EQ("|", buf_cstr(&b));

  /* A capped buffer keeps what it had. */
  buf_free(&b);
  buf_init(&b, 8);
  ASSERT_EQ(0, buf_append_str(&b, "x"));
  cursor_set(&c, C1, I1);
  ASSERT_EQ(UV_ENOBUFS, pb_cursor_format(&c, &b));
  ASSERT_UEQ(1, b.len);
  buf_free(&b);
}

static void test_cursor_parse_errors(void) {
  char err[256];
  pb_cursor c;

  ASSERT_EQ(UV_EINVAL, pb_cursor_parse(I1, &c, err, sizeof err));
  ASSERT_STR_EQ("position \"" I1 "\" has no \"|\" (expected \"CREATED|ID\", "
                "either half may be empty)",
                err);
  ASSERT_STR_EQ("", c.id);
  ASSERT_EQ(UV_EINVAL,
            pb_cursor_parse("2026-01-02T10:00:00.123Z|x", &c, err, sizeof err));
  ASSERT_STR_EQ("position: created \"2026-01-02T10:00:00.123Z\" is not empty "
                "or a datetime like \"2026-01-02 10:00:00.123Z\"",
                err);
  ASSERT_EQ(UV_EINVAL, pb_cursor_parse(C1 "|a|b", &c, err, sizeof err));
  ASSERT_STR_EQ("position: id \"a|b\" is not usable in a filter (at most 255 "
                "bytes, no '\"', '\\', '|' or control byte)",
                err);
  ASSERT_EQ(UV_EINVAL, pb_cursor_parse("|a\"b\n", &c, err, sizeof err));
  ASSERT_CONTAINS(err, "id \"a\\\"b\\x0A\" is not usable");
  ASSERT_EQ(UV_EINVAL, pb_cursor_parse(NULL, &c, err, sizeof err));
  ASSERT_STR_EQ("position: none given", err);
  ASSERT_EQ(UV_EINVAL, pb_cursor_parse("x|y", &c, NULL, 0));
}

static void test_cursor_cmp(void) {
  pb_cursor a, b;

  cursor_set(&a, "", "");
  cursor_set(&b, "", "a");
  ASSERT(pb_cursor_cmp(&a, &b) < 0);
  cursor_set(&a, "", "zzz");
  cursor_set(&b, C1, "");
  ASSERT(pb_cursor_cmp(&a, &b) < 0);
  cursor_set(&a, C1, "b");
  cursor_set(&b, C1, "a");
  ASSERT(pb_cursor_cmp(&a, &b) > 0);
  ASSERT(pb_cursor_cmp(&b, &a) < 0);
  cursor_set(&b, C1, "b");
  ASSERT_EQ(0, pb_cursor_cmp(&a, &b));
  /* Bytewise, as SQLite's BINARY: 'Z' < 'a' and 0xC3 > 'z'. */
  cursor_set(&a, C1, "Z");
  cursor_set(&b, C1, "a");
  ASSERT(pb_cursor_cmp(&a, &b) < 0);
  cursor_set(&a, C1, "\xC3\xA9");
  cursor_set(&b, C1, "z");
  ASSERT(pb_cursor_cmp(&a, &b) > 0);
  cursor_set(&a, "2026-01-02 10:00:00.122Z", "z");
  cursor_set(&b, C1, "a");
  ASSERT(pb_cursor_cmp(&a, &b) < 0);
}

/* ---- the filter rule ----------------------------------------------------- */

static void test_filter_accepts(void) {
  char big[PB_FILTER_MAX];

  check_filter_ok(USER);
  check_filter_ok("(a = 1 || b = 2) && c != 'x'");
  check_filter_ok("title ~ \"(unbalanced in quotes\"");
  check_filter_ok("title = 'it\"s' && body = \"don't\"");
  check_filter_ok("url = \"http://example\"");
  check_filter_ok("a / b");
  check_filter_ok("  x = 1  ");
  check_filter_ok("name = \"Zoë\"");
  memset(big, 'a', PB_FILTER_MAX - 200);
  big[PB_FILTER_MAX - 200] = '\0';
  check_filter_ok(big);
}

static void test_filter_refuses(void) {
  char big[PB_FILTER_MAX];

  /* The break-out attempt: closing our parenthesis and opening one. */
  check_filter_bad("a = 1) || (b = 2",
                   "filter: unbalanced \")\" at byte 5 (it would close the "
                   "parenthesis tether wraps the filter in)");
  check_filter_bad("(a = 1)) && (b = 2)",
                   "filter: unbalanced \")\" at byte 7 (it would close the "
                   "parenthesis tether wraps the filter in)");
  check_filter_bad("x = 1 && (y = 2 || (z = 3)",
                   "filter: unbalanced \"(\" at byte 9 (never closed)");
  check_filter_bad("a = \"x", "filter: unclosed quote starting at byte 4");
  check_filter_bad("a = 'x\" && b = 1",
                   "filter: unclosed quote starting at byte 4");
  check_filter_bad("a = \"x\\\"\"",
                   "filter: a backslash at byte 6 (not portable across "
                   "PocketBase versions)");
  check_filter_bad("a = 'x\\'",
                   "filter: a backslash at byte 6 (not portable across "
                   "PocketBase versions)");
  check_filter_bad("a = 1 // ignore",
                   "filter: \"//\" starts a comment at byte 6, which would "
                   "swallow the closing parenthesis");
  check_filter_bad("a = 1\n|| b = 2",
                   "filter: a control byte 0x0A at byte 5 (tabs and newlines "
                   "included; use spaces)");
  check_filter_bad("a\t= 1", "filter: a control byte 0x09 at byte 1 (tabs "
                             "and newlines included; use spaces)");
  check_filter_bad("a = \"x\ty\"", "filter: a control byte 0x09 at byte 6 "
                                   "(tabs and newlines included; use spaces)");
  check_filter_bad("", "filter: empty (leave the option out instead)");
  check_filter_bad("   ", "filter: empty (leave the option out instead)");
  memset(big, 'a', PB_FILTER_MAX - 199);
  big[PB_FILTER_MAX - 199] = '\0';
  check_filter_bad(big, "filter: 3301 bytes is over the limit of 3300 (the "
                        "server refuses 3500, and the cursor part needs the "
                        "rest)");
  ASSERT_EQ(UV_EINVAL, pb_filter_check(NULL, NULL, 0));
  ASSERT_EQ(UV_EINVAL, pb_filter_check(")", NULL, 0));
}

/* ---- request targets ----------------------------------------------------- */

static void test_target_created_start(void) {
  pb_cursor c;
  pb_list_query q;

  cursor_set(&c, "", "");
  q = query(&c, 200);
  /* (created > "" || (created = "" && id > "")) */
  check_target(&q, "/api/collections/orders/records?page=1&perPage=200"
                   "&skipTotal=1&sort=created%2Cid" F_START);

  /* (created > "" || ...) && created <= "W" */
  q.per_page = 100;
  q.until = W1;
  check_target(&q, "/api/collections/orders/records?page=1&perPage=100"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "%20%26%26%20created%20%3C%3D%20%222026-01-02%2010%3A00%3A"
                   "05.000Z%22");
  /* "" is none, as NULL is. */
  q.until = "";
  q.filter = "";
  q.fields = "";
  q.expand = "";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=100"
                   "&skipTotal=1&sort=created%2Cid" F_START);
}

static void test_target_created_mid(void) {
  pb_cursor c;
  pb_list_query q;

  cursor_set(&c, C1, I1);
  q = query(&c, 1000);
  q.until = W1;
  q.filter = USER;
  /* (created > "C1" || (created = "C1" && id > "I1"))
   *   && created <= "W1" && (status = "paid" && total > 10) */
  check_target(&q,
               "/api/collections/orders/records?page=1&perPage=1000"
               "&skipTotal=1&sort=created%2Cid"
               "&filter=%28created%20%3E%20%222026-01-02%2010%3A00%3A00.123Z%22"
               "%20%7C%7C%20%28created%20%3D%20%222026-01-02%2010%3A00%3A00."
               "123Z%22%20%26%26%20id%20%3E%20%22r1a2b3c4d5e6f7g%22%29%29%20"
               "%26%26%20created%20%3C%3D%20%222026-01-02%2010%3A00%3A05.000Z"
               "%22%20%26%26%20%28status%20%3D%20%22paid%22%20%26%26%20total"
               "%20%3E%2010%29");

  /* Without until. */
  q.per_page = 100;
  q.until = NULL;
  check_target(&q,
               "/api/collections/orders/records?page=1&perPage=100"
               "&skipTotal=1&sort=created%2Cid"
               "&filter=%28created%20%3E%20%222026-01-02%2010%3A00%3A00.123Z%22"
               "%20%7C%7C%20%28created%20%3D%20%222026-01-02%2010%3A00%3A00."
               "123Z%22%20%26%26%20id%20%3E%20%22r1a2b3c4d5e6f7g%22%29%29%20"
               "%26%26%20%28status%20%3D%20%22paid%22%20%26%26%20total%20%3E"
               "%2010%29");

  /* With until, without a user filter. */
  q.until = W1;
  q.filter = NULL;
  check_target(&q,
               "/api/collections/orders/records?page=1&perPage=100"
               "&skipTotal=1&sort=created%2Cid"
               "&filter=%28created%20%3E%20%222026-01-02%2010%3A00%3A00.123Z%22"
               "%20%7C%7C%20%28created%20%3D%20%222026-01-02%2010%3A00%3A00."
               "123Z%22%20%26%26%20id%20%3E%20%22r1a2b3c4d5e6f7g%22%29%29%20"
               "%26%26%20created%20%3C%3D%20%222026-01-02%2010%3A00%3A05.000Z"
               "%22");
}

static void test_target_id_offset(void) {
  pb_cursor c;
  pb_list_query q;

  /* The start of an id cursor needs no filter at all. A created in the
   * cursor and until are not used with an id offset. */
  cursor_set(&c, C1, "");
  q = query(&c, 50);
  q.offset = PB_OFFSET_ID;
  q.until = W1;
  check_target(&q, "/api/collections/orders/records?page=1&perPage=50"
                   "&skipTotal=1&sort=id");

  /* (status = "paid" && total > 10) */
  q.filter = USER;
  check_target(&q, "/api/collections/orders/records?page=1&perPage=50"
                   "&skipTotal=1&sort=id"
                   "&filter=%28status%20%3D%20%22paid%22%20%26%26%20total%20"
                   "%3E%2010%29");

  /* id > "I1" */
  cursor_set(&c, "", I1);
  q.filter = NULL;
  check_target(&q, "/api/collections/orders/records?page=1&perPage=50"
                   "&skipTotal=1&sort=id"
                   "&filter=id%20%3E%20%22r1a2b3c4d5e6f7g%22");

  /* id > "I1" && (status = "paid" && total > 10) */
  q.filter = USER;
  check_target(&q, "/api/collections/orders/records?page=1&perPage=50"
                   "&skipTotal=1&sort=id"
                   "&filter=id%20%3E%20%22r1a2b3c4d5e6f7g%22%20%26%26%20%28"
                   "status%20%3D%20%22paid%22%20%26%26%20total%20%3E%2010%29");
}

static void test_target_fields_expand(void) {
  pb_cursor c;
  pb_list_query q;

  cursor_set(&c, "", "");
  q = query(&c, 10);
  q.fields = "title";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "&fields=title%2Cid%2Ccreated");
  q.fields = "title, id";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "&fields=title%2C%20id%2Ccreated");
  /* Nothing is added when "*" picks every top-level field. */
  q.fields = "*,expand.author.name";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "&fields=%2A%2Cexpand.author.name");
  q.fields = "*:excerpt(200,true)";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "&fields=%2A%3Aexcerpt%28200%2Ctrue%29");
  /* A "*" under expand does not pick the record's own fields. */
  q.fields = "title,expand.author.*";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "&fields=title%2Cexpand.author.%2A%2Cid%2Ccreated");
  q.fields = "title,created,id";
  q.expand = "author,tags.owner";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=created%2Cid" F_START
                   "&fields=title%2Ccreated%2Cid"
                   "&expand=author%2Ctags.owner");

  /* An id offset needs only the id. */
  q.offset = PB_OFFSET_ID;
  q.expand = NULL;
  q.fields = "title";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=id&fields=title%2Cid");
  q.fields = "id,title";
  check_target(&q, "/api/collections/orders/records?page=1&perPage=10"
                   "&skipTotal=1&sort=id&fields=id%2Ctitle");
}

static void test_target_collection_encoded(void) {
  pb_cursor c;
  pb_list_query q;
  buf b;

  cursor_set(&c, "", "");
  q = query(&c, 10);
  q.collection = "my orders/2026+x";
  q.offset = PB_OFFSET_ID;
  check_target(&q, "/api/collections/my%20orders%2F2026%2Bx/records?page=1"
                   "&perPage=10&skipTotal=1&sort=id");

  buf_init(&b, 0);
  ASSERT_EQ(0, pb_probe_target("orders", &b));
  ASSERT_STR_EQ("/api/collections/orders/records?perPage=1&skipTotal=1"
                "&sort=created",
                buf_cstr(&b));
  buf_reset(&b);
  ASSERT_EQ(UV_EINVAL, pb_probe_target("", &b));
  ASSERT_UEQ(0, b.len);
  ASSERT_EQ(0, pb_probe_target("a?b", &b));
  ASSERT_STR_EQ("/api/collections/a%3Fb/records?perPage=1&skipTotal=1"
                "&sort=created",
                buf_cstr(&b));
  buf_free(&b);
}

static void check_target_err(const pb_list_query *q, int code) {
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, buf_append_str(&b, "keep"));
  ASSERT_EQ(code, pb_list_target(q, &b));
  ASSERT_MEM_EQ("keep", 4, b.data, b.len);
  buf_free(&b);
}

static void test_target_refuses(void) {
  char big[PB_FILTER_MAX], long_id[PB_ID_MAX + 1];
  pb_cursor c;
  pb_list_query q;

  cursor_set(&c, C1, I1);
  q = query(&c, 0);
  check_target_err(&q, UV_EINVAL);
  q.per_page = 1001;
  check_target_err(&q, UV_EINVAL);
  q.per_page = 1;
  q.offset = 7;
  check_target_err(&q, UV_EINVAL);
  q.offset = PB_OFFSET_CREATED;
  q.collection = "";
  check_target_err(&q, UV_EINVAL);
  q.collection = "orders";
  q.offset = PB_OFFSET_CREATED;
  q.until = "2026-01-02T10:00:05.000Z";
  check_target_err(&q, UV_EINVAL);
  q.until = NULL;
  q.filter = "a = 1) || (b = 2";
  check_target_err(&q, UV_EINVAL);
  q.filter = NULL;
  cursor_set(&c, C1, "x\" || \"1\" = \"1");
  check_target_err(&q, UV_EINVAL);
  cursor_set(&c, "x\" || id != \"", "x");
  check_target_err(&q, UV_EINVAL);

  /* Long ids with the longest user filter pass over the server's limit. */
  memset(long_id, 'i', PB_ID_MAX);
  long_id[PB_ID_MAX] = '\0';
  cursor_set(&c, C1, long_id);
  memset(big, 'a', PB_FILTER_MAX - 200);
  big[PB_FILTER_MAX - 200] = '\0';
  q.filter = big;
  q.until = W1;
  check_target_err(&q, UV_E2BIG);
  /* With a short id the same filter fits. */
  cursor_set(&c, C1, I1);
  {
    buf b;
    buf_init(&b, 0);
    ASSERT_EQ(0, pb_list_target(&q, &b));
    buf_free(&b);
  }

  /* A capped buffer: the buf error, and nothing appended. */
  {
    buf b;
    q.filter = NULL;
    buf_init(&b, 32);
    ASSERT_EQ(UV_ENOBUFS, pb_list_target(&q, &b));
    ASSERT_UEQ(0, b.len);
    buf_free(&b);
  }
}

/* ---- list responses ------------------------------------------------------ */

static void test_page_ok(void) {
  static const char body[] =
      "{\"items\":[{\"collectionId\":\"pbc_1\",\"collectionName\":\"orders\","
      "\"created\":\"\",\"id\":\"zzz\",\"total\":1},"
      "{\"created\":\"2026-01-02 10:00:00.123Z\",\"id\":\"aaa\"},"
      "{\"created\":\"2026-01-02 10:00:00.123Z\",\"id\":\"aab\",\"note\":"
      "\"nul\\u0000inside\"},"
      "{\"created\":\"2026-01-02 10:00:01.000Z\",\"id\":\"a\"}],"
      "\"page\":1,\"perPage\":4,\"totalItems\":-1,\"totalPages\":-1}";
  char err[256] = "";
  pb_cursor c;
  pb_page p;

  ASSERT_EQ(0, pb_page_parse(body, strlen(body), true, &p, err, sizeof err));
  ASSERT_STR_EQ("", err);
  ASSERT_EQ(4, p.per_page);
  ASSERT_UEQ(4, json_array_size(p.items));
  pb_item_cursor(json_array_get(p.items, 0), &c);
  ASSERT_STR_EQ("", c.created);
  ASSERT_STR_EQ("zzz", c.id);
  pb_item_cursor(json_array_get(p.items, 2), &c);
  ASSERT_STR_EQ(C1, c.created);
  ASSERT_STR_EQ("aab", c.id);
  pb_page_free(&p);
  ASSERT(p.doc == NULL);
  pb_page_free(&p);

  /* Empty pages, and id order without created. */
  ASSERT_EQ(0, pb_page_parse(LIT("{\"items\":[],\"perPage\":30}"), true, &p,
                             err, sizeof err));
  ASSERT_UEQ(0, json_array_size(p.items));
  ASSERT_EQ(30, p.per_page);
  pb_page_free(&p);
  {
    static const char ids[] =
        "{\"perPage\":500,\"items\":[{\"id\":\"a\",\"created\":5},{\"id\":"
        "\"b\"}"
        ",{\"id\":\"c\",\"created\":\"2020-01-01 00:00:00.000Z\"}]}";
    ASSERT_EQ(0, pb_page_parse(ids, strlen(ids), false, &p, err, sizeof err));
    ASSERT_EQ(500, p.per_page);
    pb_item_cursor(json_array_get(p.items, 0), &c);
    ASSERT_STR_EQ("", c.created);
    ASSERT_STR_EQ("a", c.id);
    pb_page_free(&p);
  }
}

static void test_page_errors(void) {
  char err[256];
  pb_page p;

  check_page_bad("", true,
                 "list response is not JSON: '[' or '{' expected "
                 "near end of file (line 1, column 0)");
  check_page_bad("[]", true, "list response is not a JSON object");
  check_page_bad("{\"perPage\":1}", true,
                 "list response: \"items\" is missing");
  check_page_bad("{\"items\":{},\"perPage\":1}", true,
                 "list response: \"items\" is not an array");
  check_page_bad("{\"items\":[]}", true,
                 "list response: \"perPage\" is missing");
  check_page_bad("{\"items\":[],\"perPage\":\"30\"}", true,
                 "list response: \"perPage\" is not an integer >= 1");
  check_page_bad("{\"items\":[],\"perPage\":30.0}", true,
                 "list response: \"perPage\" is not an integer >= 1");
  check_page_bad("{\"items\":[],\"perPage\":0}", true,
                 "list response: \"perPage\" is not an integer >= 1");
  check_page_bad("{\"items\":[1],\"perPage\":1}", true,
                 "items[0]: expected an object");
  check_page_bad("{\"items\":[{\"created\":\"\"}],\"perPage\":1}", true,
                 "items[0].id: missing");
  check_page_bad("{\"items\":[{\"id\":7}],\"perPage\":1}", false,
                 "items[0].id: expected a string");
  check_page_bad("{\"items\":[{\"id\":\"\"}],\"perPage\":1}", false,
                 "items[0].id: \"\" is not usable in a filter (1 to 255 bytes, "
                 "no '\"', '\\', '|' or control byte)");
  check_page_bad("{\"items\":[{\"id\":\"a\\\"b\"}],\"perPage\":1}", false,
                 "items[0].id: \"a\\\"b\" is not usable in a filter (1 to 255 "
                 "bytes, no '\"', '\\', '|' or control byte)");
  check_page_bad("{\"items\":[{\"id\":\"a\"},{\"id\":\"b\",\"created\":"
                 "\"2026-01-02 10:00:00.1Z\"},{\"id\":\"c\"}],\"perPage\":3}",
                 true,
                 "items[0].created: missing (does the collection have a "
                 "created field, and do \"fields\" leave it out?)");
  check_page_bad("{\"items\":[{\"id\":\"a\",\"created\":\"\"},{\"id\":\"b\","
                 "\"created\":\"2026-01-02T10:00:00.123Z\"},{\"id\":\"c\"}],"
                 "\"perPage\":3}",
                 true,
                 "items[1].created: expected a datetime like \"2026-01-02 "
                 "10:00:00.123Z\"");
  check_page_bad("{\"items\":[{\"id\":\"a\",\"created\":null}],\"perPage\":3}",
                 true,
                 "items[0].created: expected a datetime like \"2026-01-02 "
                 "10:00:00.123Z\"");
  /* The server ignored the sort. */
  check_page_bad("{\"items\":[{\"id\":\"b\",\"created\":\"" C1 "\"},{\"id\":"
                 "\"a\",\"created\":\"" C1 "\"}],\"perPage\":3}",
                 true,
                 "items[1]: (created, id) = (\"" C1 "\", \"a\") does not come "
                 "after the previous item's: the server did not sort by "
                 "created,id");
  check_page_bad("{\"items\":[{\"id\":\"a\",\"created\":\"" C1 "\"},{\"id\":"
                 "\"a\",\"created\":\"" C1 "\"}],\"perPage\":3}",
                 true,
                 "items[1]: (created, id) = (\"" C1 "\", \"a\") does not come "
                 "after the previous item's: the server did not sort by "
                 "created,id");
  check_page_bad("{\"items\":[{\"id\":\"b\"},{\"id\":\"a\"}],\"perPage\":3}",
                 false,
                 "items[1]: id \"a\" does not come after the previous item's: "
                 "the server did not sort by id");
  ASSERT_EQ(UV_EINVAL, pb_page_parse(NULL, 0, true, &p, err, sizeof err));
  ASSERT_EQ(UV_EINVAL, pb_page_parse(LIT("{\"items\":[],\"perPage\":1} x"),
                                     true, &p, NULL, 0));
}

/* ---- error bodies -------------------------------------------------------- */

static void test_error_bodies(void) {
  pb_error e;

  error_of("{\"data\":{},\"message\":\"Only superusers can perform this "
           "action.\",\"status\":403}",
           &e);
  ASSERT_EQ(403, e.status);
  ASSERT_STR_EQ("Only superusers can perform this action.", e.message);
  ASSERT_STR_EQ("", e.detail);
  ASSERT(!e.mfa);

  error_of("{\"code\":404,\"message\":\"The requested resource wasn't "
           "found.\",\"data\":{}}",
           &e);
  ASSERT_EQ(404, e.status);
  ASSERT_STR_EQ("The requested resource wasn't found.", e.message);

  error_of("{\"status\":400,\"message\":\"Failed to create record.\","
           "\"data\":{\"title\":{\"code\":\"validation_required\","
           "\"message\":\"Missing required value.\"},\"body\":{\"code\":"
           "\"x\",\"message\":\"y\"}}}",
           &e);
  ASSERT_EQ(400, e.status);
  ASSERT_STR_EQ("Failed to create record.", e.message);
  ASSERT_STR_EQ("title: Missing required value. (validation_required)",
                e.detail);

  /* Nested one level further, and a leaf with no code. */
  error_of("{\"status\":400,\"message\":\"m\",\"data\":{\"fields\":{\"0\":"
           "{\"name\":{\"message\":\"Invalid name.\"}}}}}",
           &e);
  ASSERT_STR_EQ("fields.0.name: Invalid name.", e.detail);
  error_of("{\"status\":400,\"data\":{\"id\":{\"code\":"
           "\"validation_not_unique\"}}}",
           &e);
  ASSERT_STR_EQ("id: validation_not_unique", e.detail);
  ASSERT_STR_EQ("", e.message);
  error_of("{\"status\":400,\"data\":{\"a\":[{\"b\":\"bare\"}]}}", &e);
  ASSERT_STR_EQ("a.0.b: bare", e.detail);

  /* status wins over code, and odd values read as none. */
  error_of("{\"status\":429,\"code\":500}", &e);
  ASSERT_EQ(429, e.status);
  error_of("{\"status\":\"403\",\"code\":403.0,\"message\":7}", &e);
  ASSERT_EQ(0, e.status);
  ASSERT_STR_EQ("", e.message);
  error_of("{\"status\":-1}", &e);
  ASSERT_EQ(0, e.status);

  /* MFA wants a second factor. */
  error_of("{\"mfaId\":\"k3v9q1wz8x2y7u4\"}", &e);
  ASSERT(e.mfa);
  ASSERT_EQ(0, e.status);
  error_of("{\"mfaId\":5}", &e);
  ASSERT(!e.mfa);

  /* Control bytes in a message become spaces. */
  error_of("{\"status\":500,\"message\":\"a\\nb\\u0000c\"}", &e);
  ASSERT_STR_EQ("a b c", e.message);
}

static void test_error_not_json(void) {
  char big[1000];
  pb_error e;
  size_t i;

  error_of("<html>\r\n<body>502 Bad Gateway</body>\r\n</html>\r\n", &e);
  ASSERT_EQ(0, e.status);
  ASSERT_STR_EQ("<html>  <body>502 Bad Gateway</body>  </html>", e.message);
  ASSERT_STR_EQ("", e.detail);
  ASSERT(!e.mfa);

  error_of("", &e);
  ASSERT_STR_EQ("", e.message);
  ASSERT_STR_EQ("", e.detail);
  error_of("\"a string\"", &e);
  ASSERT_STR_EQ("\"a string\"", e.message);
  memset(&e, 0xAB, sizeof e);
  pb_error_parse(NULL, 5, &e);
  ASSERT_STR_EQ("", e.message);

  /* At most 200 bytes, NUL included in the body. */
  for (i = 0; i < sizeof big; i++)
    big[i] = (char)('a' + i % 26);
  big[3] = '\0';
  memset(&e, 0xAB, sizeof e);
  pb_error_parse(big, sizeof big, &e);
  ASSERT_UEQ(200, strlen(e.message));
  ASSERT_EQ(' ', e.message[3]);

  /* A cut never splits a UTF-8 sequence: "é" is 2 bytes at 199..200. */
  memset(big, 'x', sizeof big);
  big[199] = (char)0xC3;
  big[200] = (char)0xA9;
  memset(&e, 0xAB, sizeof e);
  pb_error_parse(big, 300, &e);
  ASSERT_UEQ(199, strlen(e.message));
}

/* ---- auth and tokens ----------------------------------------------------- */

static void test_jwt_exp(void) {
  char err[256] = "";
  int64_t exp = 0;

  ASSERT_EQ(0, pb_jwt_exp(JWT_AUTH, &exp, err, sizeof err));
  ASSERT_EQ(1767225600, exp);
  /* {"exp":1767225600.75} rounds down. */
  ASSERT_EQ(0, pb_jwt_exp(JWT_HEAD ".eyJleHAiOjE3NjcyMjU2MDAuNzV9.sig", &exp,
                          err, sizeof err));
  ASSERT_EQ(1767225600, exp);
  /* {"exp":-1.5} */
  ASSERT_EQ(0, pb_jwt_exp("h.eyJleHAiOi0xLjV9.s", &exp, err, sizeof err));
  ASSERT_EQ(-2, exp);
  /* Padding is accepted: {"exp":12} and {"exp":123}. */
  ASSERT_EQ(0, pb_jwt_exp("h.eyJleHAiOjEyfQ==.s", &exp, err, sizeof err));
  ASSERT_EQ(12, exp);
  ASSERT_EQ(0, pb_jwt_exp("h.eyJleHAiOjEyM30=.s", &exp, err, sizeof err));
  ASSERT_EQ(123, exp);
  ASSERT_EQ(0, pb_jwt_exp("h.eyJleHAiOjEyM30.", &exp, err, sizeof err));
  ASSERT_EQ(123, exp);
}

static void test_jwt_refuses(void) {
  char big[9000];

  check_jwt_bad("abc",
                "token is not a JWT (expected three dot-separated parts)");
  check_jwt_bad("a.b",
                "token is not a JWT (expected three dot-separated parts)");
  check_jwt_bad("a.b.c.d",
                "token is not a JWT (expected three dot-separated parts)");
  check_jwt_bad(".eyJleHAiOjV9.s",
                "token is not a JWT (expected three dot-separated parts)");
  check_jwt_bad("h..s",
                "token is not a JWT (expected three dot-separated parts)");
  check_jwt_bad("", "no token");
  check_jwt_bad("h.eyJleHAiOjV9.s\r\nX: y",
                "token is not a JWT (byte 16 is not base64url: 0x0D)");
  check_jwt_bad("h.eyJleHAiOjV9+.s",
                "token is not a JWT (byte 14 is not base64url: 0x2B)");
  check_jwt_bad("h.eyJleHAi=OjV9.s", "token payload is not base64url");
  check_jwt_bad("h.eyJleHAiOjV9a.s", "token payload is not base64url");
  check_jwt_bad("h.eyJleHAiOjEyfQ=.s", "token payload is not base64url");
  /* [1] */
  check_jwt_bad("h.WzFd.s", "token payload is not a JSON object");
  check_jwt_bad("h.bm90IGpzb24.s", "token payload is not a JSON object");
  /* {"exp":"1767225600"} and {"id":"x"} */
  check_jwt_bad(JWT_HEAD ".eyJleHAiOiIxNzY3MjI1NjAwIn0.s",
                "token payload has no numeric exp");
  check_jwt_bad(JWT_HEAD ".eyJpZCI6IngifQ.s",
                "token payload has no numeric exp");
  /* {"exp":1e300} */
  check_jwt_bad("h.eyJleHAiOjFlMzAwfQ.s", "token exp is out of range");
  memset(big, 'a', sizeof big);
  big[1] = '.';
  big[3] = '.';
  big[sizeof big - 1] = '\0';
  check_jwt_bad(big, "token is 8999 bytes, over the limit of 8192");
  check_jwt_bad(NULL, "no token");
}

static void test_auth_body_and_parse(void) {
  static const char answer[] =
      "{\"record\":{\"collectionId\":\"_pbc_2773867675\",\"collectionName\":"
      "\"_superusers\",\"email\":\"ops@example.com\",\"emailVisibility\":"
      "false,\"id\":\"k3v9q1wz8x2y7u4\",\"note\":\"nul\\u0000here\","
      "\"verified\":true},\"token\":\"" JWT_AUTH "\"}";
  char err[256] = "", *token = (char *)1;
  int64_t exp = 5;
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, pb_auth_body("ops@example.com", "p\"a\\ss\nw", &b));
  ASSERT_STR_EQ("{\"identity\":\"ops@example.com\",\"password\":"
                "\"p\\\"a\\\\ss\\nw\"}",
                buf_cstr(&b));
  buf_reset(&b);
  ASSERT_EQ(UV_EINVAL, pb_auth_body("a", "\xff\xfe", &b));
  ASSERT_EQ(UV_EINVAL, pb_auth_body(NULL, "x", &b));
  ASSERT_UEQ(0, b.len);
  buf_free(&b);

  ASSERT_EQ(
      0, pb_auth_parse(answer, strlen(answer), &token, &exp, err, sizeof err));
  ASSERT_STR_EQ(JWT_AUTH, token);
  ASSERT_EQ(1767225600, exp);
  free(token);

  /* ≤ v0.22 admins answer with "admin". */
  {
    static const char admin[] =
        "{\"admin\":{\"id\":\"a1\"},\"token\":\"" JWT_AUTH "\"}";
    ASSERT_EQ(
        0, pb_auth_parse(admin, strlen(admin), &token, &exp, err, sizeof err));
    free(token);
  }

  ASSERT_EQ(UV_EINVAL, pb_auth_parse(LIT("{\"record\":{}}"), &token, &exp, err,
                                     sizeof err));
  ASSERT(token == NULL);
  ASSERT_EQ(0, exp);
  ASSERT_STR_EQ("auth answer has no \"token\" string", err);
  ASSERT_EQ(UV_EINVAL, pb_auth_parse(LIT("{\"token\":\"\"}"), &token, &exp, err,
                                     sizeof err));
  ASSERT_STR_EQ("auth answer has no \"token\" string", err);
  ASSERT_EQ(UV_EINVAL,
            pb_auth_parse(LIT("nope"), &token, &exp, err, sizeof err));
  ASSERT_STR_EQ("auth answer is not a JSON object", err);
  ASSERT_EQ(UV_EINVAL, pb_auth_parse(LIT("{\"token\":\"abc\"}"), &token, &exp,
                                     err, sizeof err));
  ASSERT_STR_EQ("token is not a JWT (expected three dot-separated parts)", err);
  ASSERT(token == NULL);
  {
    static const char nul[] = "{\"token\":\"h.eyJleHAiOjV9.s\\u0000x\"}";
    ASSERT_EQ(UV_EINVAL,
              pb_auth_parse(nul, strlen(nul), &token, &exp, err, sizeof err));
    ASSERT_STR_EQ("token is not a JWT (byte 16 is not base64url: 0x00)", err);
  }
}

/* ---- realtime ------------------------------------------------------------ */

static void test_connect(void) {
  static const char data[] =
      "{\"clientId\":\"Kx3mQ9pL2vT8wR5nZ1bC7dF4gH6jY0sA2eU8iO3k\"}";
  char id[256], small[8], err[256] = "";

  ASSERT_EQ(
      0, pb_connect_parse(data, strlen(data), id, sizeof id, err, sizeof err));
  ASSERT_STR_EQ("Kx3mQ9pL2vT8wR5nZ1bC7dF4gH6jY0sA2eU8iO3k", id);
  ASSERT_EQ(UV_ENOBUFS, pb_connect_parse(data, strlen(data), small,
                                         sizeof small, err, sizeof err));
  ASSERT_STR_EQ("", small);
  ASSERT_EQ(UV_EINVAL,
            pb_connect_parse(LIT("{}"), id, sizeof id, err, sizeof err));
  ASSERT_STR_EQ("PB_CONNECT data has no \"clientId\" string", err);
  ASSERT_EQ(UV_EINVAL,
            pb_connect_parse(LIT("x"), id, sizeof id, err, sizeof err));
  ASSERT_STR_EQ("PB_CONNECT data is not a JSON object", err);
  ASSERT_EQ(UV_EINVAL, pb_connect_parse(LIT("{\"clientId\":\"\"}"), id,
                                        sizeof id, err, sizeof err));
  ASSERT_STR_EQ("PB_CONNECT clientId is 0 bytes (expected 1 to 255)", err);
  ASSERT_EQ(UV_EINVAL, pb_connect_parse(LIT("{\"clientId\":\"a\\nb\"}"), id,
                                        sizeof id, err, sizeof err));
  ASSERT_STR_EQ("PB_CONNECT clientId \"a\\x0Ab\" holds a control byte", err);
  ASSERT_STR_EQ("", id);
}

static void test_event(void) {
  static const char ev[] =
      "{\"action\":\"create\",\"record\":{\"collectionName\":\"orders\","
      "\"created\":\"" C1 "\",\"id\":\"" I1 "\"}}";
  char action[16];
  int64_t ms = 5;

  ASSERT_EQ(0, pb_event_parse(ev, strlen(ev), action, &ms));
  ASSERT_STR_EQ("create", action);
  ASSERT_EQ(1767348000123LL, ms);
  ASSERT_EQ(0, pb_event_parse(LIT("{\"record\":{\"id\":\"a\"},\"action\":"
                                  "\"delete\"}"),
                              action, &ms));
  ASSERT_STR_EQ("delete", action);
  ASSERT_EQ(0, ms);
  ASSERT_EQ(0,
            pb_event_parse(LIT("{\"action\":\"update\",\"record\":{\"created\":"
                               "\"2026-01-02T10:00:00Z\"}}"),
                           action, &ms));
  ASSERT_EQ(0, ms);
  ASSERT_EQ(UV_EINVAL,
            pb_event_parse(LIT("{\"action\":\"create\"}"), action, &ms));
  ASSERT_STR_EQ("", action);
  ASSERT_EQ(UV_EINVAL, pb_event_parse(LIT("{\"action\":\"abcdefghijklmnop\","
                                          "\"record\":{}}"),
                                      action, &ms));
  ASSERT_EQ(UV_EINVAL, pb_event_parse(LIT("{\"action\":\"\",\"record\":{}}"),
                                      action, &ms));
  ASSERT_EQ(UV_EINVAL, pb_event_parse(LIT("[]"), action, &ms));
  ASSERT_EQ(UV_EINVAL, pb_event_parse(NULL, 0, action, &ms));
  ASSERT_EQ(
      0, pb_event_parse(LIT("{\"action\":\"abcdefghijklmno\",\"record\":{}}"),
                        action, &ms));
  ASSERT_STR_EQ("abcdefghijklmno", action);
}

static void test_subscribe_body(void) {
  const char *topics[] = { "orders/*", "invoices/*?options={\"query\":{}}" };
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, pb_subscribe_body("Kx3", topics, 2, &b));
  ASSERT_STR_EQ("{\"clientId\":\"Kx3\",\"subscriptions\":[\"orders/*\","
                "\"invoices/*?options={\\\"query\\\":{}}\"]}",
                buf_cstr(&b));
  buf_reset(&b);
  ASSERT_EQ(0, pb_subscribe_body("Kx3", NULL, 0, &b));
  ASSERT_STR_EQ("{\"clientId\":\"Kx3\",\"subscriptions\":[]}", buf_cstr(&b));
  buf_reset(&b);
  topics[1] = "\xc3";
  ASSERT_EQ(UV_EINVAL, pb_subscribe_body("Kx3", topics, 2, &b));
  ASSERT_EQ(UV_EINVAL, pb_subscribe_body(NULL, topics, 1, &b));
  ASSERT_UEQ(0, b.len);
  buf_free(&b);
}

/* ---- offset mirroring ---------------------------------------------------- */

static void test_mirror_target_and_body(void) {
  buf b;

  buf_init(&b, 0);
  /* consumer_group = "billing" && collection = "orders" */
  ASSERT_EQ(0,
            pb_mirror_find_target("consumer_offsets", "billing", "orders", &b));
  ASSERT_STR_EQ("/api/collections/consumer_offsets/records?page=1&perPage=1"
                "&skipTotal=1"
                "&filter=consumer_group%20%3D%20%22billing%22%20%26%26%20"
                "collection%20%3D%20%22orders%22",
                buf_cstr(&b));
  buf_reset(&b);
  ASSERT_EQ(UV_EINVAL, pb_mirror_find_target("m", "bill\"ing", "orders", &b));
  ASSERT_EQ(UV_EINVAL, pb_mirror_find_target("m", "billing", "", &b));
  ASSERT_UEQ(0, b.len);

  ASSERT_EQ(0, pb_mirror_body("billing", "orders", C1 "|" I1, "shop", &b));
  ASSERT_STR_EQ("{\"consumer_group\":\"billing\",\"collection\":\"orders\","
                "\"offset\":\"" C1 "|" I1 "\",\"appname\":\"shop\"}",
                buf_cstr(&b));
  buf_reset(&b);
  ASSERT_EQ(0, pb_mirror_body("billing", "orders", "", NULL, &b));
  ASSERT_STR_EQ("{\"consumer_group\":\"billing\",\"collection\":\"orders\","
                "\"offset\":\"\"}",
                buf_cstr(&b));
  buf_reset(&b);
  ASSERT_EQ(0, pb_mirror_body("billing", "orders", "|x", "", &b));
  ASSERT_STR_EQ("{\"consumer_group\":\"billing\",\"collection\":\"orders\","
                "\"offset\":\"|x\"}",
                buf_cstr(&b));
  buf_free(&b);
}

static void test_mirror_parse(void) {
  static const char row[] =
      "{\"items\":[{\"appname\":\"shop\",\"collection\":\"orders\","
      "\"consumer_group\":\"billing\",\"id\":\"o1p2q3r4s5t6u7v\",\"offset\":"
      "\"" C1 "|" I1 "\"}],\"page\":1,\"perPage\":1,\"totalItems\":-1}";
  char err[256] = "", *id = (char *)1, *off = (char *)1;

  ASSERT_EQ(0, pb_mirror_parse(row, strlen(row), &id, &off, err, sizeof err));
  ASSERT_STR_EQ("o1p2q3r4s5t6u7v", id);
  ASSERT_STR_EQ(C1 "|" I1, off);
  free(id);
  free(off);

  ASSERT_EQ(UV_ENOENT, pb_mirror_parse(LIT("{\"items\":[],\"perPage\":1}"), &id,
                                       &off, err, sizeof err));
  ASSERT(id == NULL && off == NULL);
  ASSERT_EQ(UV_EINVAL, pb_mirror_parse(LIT("{\"items\":[{\"id\":\"a\"}]}"), &id,
                                       &off, err, sizeof err));
  ASSERT_STR_EQ("offset mirror answer: items[0].offset is missing", err);
  ASSERT(id == NULL && off == NULL);
  ASSERT_EQ(UV_EINVAL,
            pb_mirror_parse(LIT("{\"items\":[{\"id\":\"a\",\"offset\":5}]}"),
                            &id, &off, err, sizeof err));
  ASSERT_STR_EQ("offset mirror answer: items[0].offset is not a string", err);
  ASSERT_EQ(UV_EINVAL,
            pb_mirror_parse(
                LIT("{\"items\":[{\"id\":\"a\",\"offset\":\"x\\u0000\"}]}"),
                &id, &off, err, sizeof err));
  ASSERT_STR_EQ("offset mirror answer: items[0].offset holds a NUL", err);
  ASSERT_EQ(UV_EINVAL, pb_mirror_parse(LIT("{\"items\":[{\"offset\":\"\"}]}"),
                                       &id, &off, err, sizeof err));
  ASSERT_STR_EQ("offset mirror answer: items[0].id is missing", err);
  ASSERT_EQ(
      UV_EINVAL,
      pb_mirror_parse(LIT("{\"items\":[{\"id\":\"a|b\",\"offset\":\"\"}]}"),
                      &id, &off, err, sizeof err));
  ASSERT_STR_EQ(
      "offset mirror answer: items[0].id \"a|b\" is not a usable record id",
      err);
  ASSERT_EQ(UV_EINVAL, pb_mirror_parse(LIT("{\"items\":[7]}"), &id, &off, err,
                                       sizeof err));
  ASSERT_STR_EQ("offset mirror answer: items[0] is not an object", err);
  ASSERT_EQ(UV_EINVAL, pb_mirror_parse(LIT("{}"), &id, &off, err, sizeof err));
  ASSERT_STR_EQ("offset mirror answer: \"items\" is missing", err);
  ASSERT_EQ(UV_EINVAL,
            pb_mirror_parse(LIT("<html>"), &id, &off, err, sizeof err));
  ASSERT_STR_EQ("offset mirror answer is not a JSON object", err);
  ASSERT(id == NULL && off == NULL);
}

static const test_case tests[] = {
  TEST(test_time_vectors),
  TEST(test_time_clamps),
  TEST(test_time_refuses),
  TEST(test_time_matches_libc),
  TEST(test_id_and_value_rules),
  TEST(test_cursor_parse_format),
  TEST(test_cursor_parse_errors),
  TEST(test_cursor_cmp),
  TEST(test_filter_accepts),
  TEST(test_filter_refuses),
  TEST(test_target_created_start),
  TEST(test_target_created_mid),
  TEST(test_target_id_offset),
  TEST(test_target_fields_expand),
  TEST(test_target_collection_encoded),
  TEST(test_target_refuses),
  TEST(test_page_ok),
  TEST(test_page_errors),
  TEST(test_error_bodies),
  TEST(test_error_not_json),
  TEST(test_jwt_exp),
  TEST(test_jwt_refuses),
  TEST(test_auth_body_and_parse),
  TEST(test_connect),
  TEST(test_event),
  TEST(test_subscribe_body),
  TEST(test_mirror_target_and_body),
  TEST(test_mirror_parse),
  { NULL, NULL },
};

TEST_MAIN(tests)
