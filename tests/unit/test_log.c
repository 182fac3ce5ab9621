#include <jansson.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "tests/unit/test.h"

static char dir[PATH_MAX], path[PATH_MAX + 16];

static void setup(int format, log_level level) {
  snprintf(dir, sizeof dir, "%s", test_tmpdir());
  snprintf(path, sizeof path, "%s/log", dir);
  log_configure(level, format);
  ASSERT_EQ(0, log_open(path));
}

static char *finish(void) {
  char *text;

  log_close();
  text = test_read_file(path, NULL);
  test_rmtree(dir);
  log_configure(LOG_INFO, LOG_FORMAT_TEXT);
  return text;
}

static void test_text_format(void) {
  char *text;

  setup(LOG_FORMAT_TEXT, LOG_INFO);
  log_info("consumer started", LS("consumer", "demo"), LU("seq", 42),
           LI("delta", -3), LB("ok", true),
           LS("err", "no space left on device"), LS("empty", ""));
  text = finish();
  ASSERT(text != NULL);
  /* time, level, message, then key=value with spaces quoted. */
  ASSERT_EQ('Z', text[23]);
  ASSERT_STR_EQ(" info consumer started consumer=demo seq=42 delta=-3 ok=true "
                "err=\"no space left on device\" empty=\"\"\n",
                text + 24);
  free(text);
}

static void test_json_format(void) {
  json_error_t jerr;
  json_t *j;
  char *text;

  setup(LOG_FORMAT_JSON, LOG_DEBUG);
  log_debug("quote \" and\nnewline", LS("path", "/tmp/a b"), LU("n", 7),
            LD("rate", 2.5));
  text = finish();
  j = json_loads(text, JSON_DISABLE_EOF_CHECK, &jerr);
  ASSERT(j != NULL);
  ASSERT_STR_EQ("debug", json_string_value(json_object_get(j, "level")));
  ASSERT_STR_EQ("quote \" and\nnewline",
                json_string_value(json_object_get(j, "msg")));
  ASSERT_STR_EQ("/tmp/a b", json_string_value(json_object_get(j, "path")));
  ASSERT_EQ(7, json_integer_value(json_object_get(j, "n")));
  ASSERT(json_real_value(json_object_get(j, "rate")) == 2.5);
  ASSERT_EQ(24, strlen(json_string_value(json_object_get(j, "time"))));
  json_decref(j);
  free(text);
}

static int evaluated;

static const char *count_eval(void) {
  evaluated++;
  return "x";
}

static void test_level_filters_before_formatting(void) {
  char *text;

  setup(LOG_FORMAT_TEXT, LOG_WARN);
  evaluated = 0;
  log_info("hidden", LS("v", count_eval()));
  log_debug("hidden too", LS("v", count_eval()));
  log_warn("shown", LS("v", count_eval()));
  text = finish();
  ASSERT_EQ(1, evaluated);
  ASSERT(strstr(text, "hidden") == NULL);
  ASSERT_CONTAINS(text, " warn shown v=x\n");
  free(text);
}

static void test_long_values_are_cut_whole(void) {
  static char big[10000];
  json_error_t jerr;
  json_t *j;
  char *text;

  memset(big, 'a', sizeof big - 1);
  setup(LOG_FORMAT_JSON, LOG_INFO);
  log_error("big", LS("small", "s"), LS("huge", big), LS("after", "z"));
  text = finish();
  /* The record stays one valid JSON line, marked as cut. */
  ASSERT(strlen(text) < 4200);
  j = json_loads(text, JSON_DISABLE_EOF_CHECK, &jerr);
  ASSERT(j != NULL);
  ASSERT_STR_EQ("s", json_string_value(json_object_get(j, "small")));
  ASSERT(json_object_get(j, "huge") == NULL);
  ASSERT(json_is_true(json_object_get(j, "cut")));
  json_decref(j);
  free(text);
}

static void test_reopen_follows_rename(void) {
  char moved[PATH_MAX + 128];
  char *a, *b;

  setup(LOG_FORMAT_TEXT, LOG_INFO);
  log_info("first");
  snprintf(moved, sizeof moved, "%s.1", path);
  ASSERT_EQ(0, rename(path, moved));
  log_info("second");
  ASSERT_EQ(0, log_reopen());
  log_info("third");
  log_close();
  a = test_read_file(moved, NULL);
  b = test_read_file(path, NULL);
  ASSERT_CONTAINS(a, "first");
  ASSERT_CONTAINS(a, "second");
  ASSERT_CONTAINS(b, "third");
  ASSERT(strstr(b, "first") == NULL);
  free(a);
  free(b);
  test_rmtree(dir);
  log_configure(LOG_INFO, LOG_FORMAT_TEXT);
}

static void test_open_failure_keeps_old_target(void) {
  char *text;

  ASSERT_EQ(-ENOENT, log_open("/nonexistent-dir/tether.log"));
  setup(LOG_FORMAT_TEXT, LOG_INFO);
  ASSERT_EQ(-ENOENT, log_open("/nonexistent-dir/tether.log"));
  log_info("still here");
  text = finish();
  ASSERT_CONTAINS(text, "still here");
  free(text);
}

static const test_case tests[] = {
  TEST(test_text_format),
  TEST(test_json_format),
  TEST(test_level_filters_before_formatting),
  TEST(test_long_values_are_cut_whole),
  TEST(test_reopen_follows_rename),
  TEST(test_open_failure_keeps_old_target),
  { NULL, NULL },
};

TEST_MAIN(tests)
