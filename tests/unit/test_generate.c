/* The generate source end to end through a consumer into the real file
 * sink. */
#include <jansson.h>
#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/registry.h"
#include "tests/unit/test.h"

typedef struct fixture {
  uv_loop_t loop;
  char dir[PATH_MAX];
  char path[PATH_MAX + 64];
  config_consumer conf;
  char source_conf[256];
  char sink_conf[256];
  consumer *c;
  int closed;
} fixture;

static void set_option(const option *table, void *conf, const char *name,
                       const char *value) {
  char err[256];
  const option *o = options_find(table, name);

  ASSERT(o != NULL);
  if (options_parse_value(o, value, conf, err, sizeof err) != 0)
    test__fail(__FILE__, __LINE__, "%s = %s: %s", name, value, err);
}

static void setup(fixture *f) {
  memset(f, 0, sizeof *f);
  ASSERT_EQ(0, uv_loop_init(&f->loop));
  snprintf(f->dir, sizeof f->dir, "%s", test_tmpdir());
  snprintf(f->path, sizeof f->path, "%s/out.ndjson", f->dir);
  f->conf.name = "gen";
  f->conf.common.max_in_flight = 1000;
  f->conf.common.max_in_flight_bytes = 16 << 20;
  f->conf.common.retry_min = 1;
  f->conf.common.retry_max = 10;
  f->conf.source = registry_source("generate");
  f->conf.sink = registry_sink("file");
  f->conf.sink_arg = f->path;
  f->conf.source_conf = f->source_conf;
  f->conf.sink_conf = f->sink_conf;
  ASSERT(f->conf.source != NULL);
  ASSERT_EQ(0, options_set_defaults(f->conf.source->options, f->source_conf));
  ASSERT_EQ(0, options_set_defaults(f->conf.sink->options, f->sink_conf));
}

static void gen_option(fixture *f, const char *name, const char *value) {
  set_option(f->conf.source->options, f->source_conf, name, value);
}

static void on_closed(consumer *c, void *data) {
  fixture *f = data;

  (void)c;
  f->closed++;
}

/* Runs the consumer from resume_seq until the source is done and every
 * event is delivered, within a bounded number of loop turns. */
static void run(fixture *f, uint64_t resume_seq) {
  consumer_hooks hooks = { NULL, NULL, NULL, on_closed, NULL, f };
  char pos[32], err[256];
  source_resume r;
  int turns;

  memset(&r, 0, sizeof r);
  r.seq = resume_seq;
  r.position = pos;
  snprintf(pos, sizeof pos, "%llu", (unsigned long long)resume_seq);
  if (consumer_create(&f->loop, &f->conf, &r, &hooks, &f->c, err, sizeof err) !=
      0)
    test__fail(__FILE__, __LINE__, "create: %s", err);
  ASSERT_EQ(0, consumer_start(f->c, err, sizeof err));
  for (turns = 0; turns < 100000; turns++) {
    if (consumer_get_state(f->c) == CONSUMER_DONE && consumer_drained(f->c))
      break;
    uv_run(&f->loop, UV_RUN_ONCE);
  }
  ASSERT_EQ(CONSUMER_DONE, consumer_get_state(f->c));
  consumer_close(f->c);
  uv_run(&f->loop, UV_RUN_DEFAULT);
  ASSERT_EQ(1, f->closed);
  consumer_destroy(f->c);
}

static void teardown(fixture *f) {
  options_free(f->conf.source->options, f->source_conf);
  options_free(f->conf.sink->options, f->sink_conf);
  ASSERT_EQ(0, uv_loop_close(&f->loop));
  test_rmtree(f->dir);
}

/* Checks the file holds seq first..last in order and returns the parsed
 * data of line `which` (0-based; a new reference) for further checks. */
static json_t *check_lines(const char *path, uint64_t first, uint64_t last,
                           size_t which) {
  char *text = test_read_file(path, NULL), *line, *save = NULL;
  json_t *picked = NULL, *j;
  json_error_t jerr;
  uint64_t want = first;
  size_t i = 0;

  ASSERT(text != NULL);
  for (line = strtok_r(text, "\n", &save); line != NULL;
       line = strtok_r(NULL, "\n", &save), i++) {
    j = json_loads(line, 0, &jerr);
    if (j == NULL)
      test__fail(__FILE__, __LINE__, "line %zu: %s", i, jerr.text);
    ASSERT_UEQ(want, json_integer_value(json_object_get(j, "seq")));
    ASSERT_STR_EQ("gen", json_string_value(json_object_get(j, "consumer")));
    ASSERT_STR_EQ("tick", json_string_value(json_object_get(j, "event")));
    if (i == which)
      picked = json_incref(json_object_get(j, "data"));
    json_decref(j);
    want++;
  }
  free(text);
  ASSERT_UEQ(last + 1, want);
  return picked;
}

static void test_count_and_payload_size(void) {
  fixture f;
  json_t *data;
  char *s;

  setup(&f);
  gen_option(&f, "rate", "0");
  gen_option(&f, "count", "10");
  run(&f, 0);
  data = check_lines(f.path, 1, 10, 2);
  ASSERT_EQ(3, json_integer_value(json_object_get(data, "seq")));
  s = json_dumps(data, JSON_COMPACT);
  ASSERT_EQ(100, strlen(s)); /* payload_size defaults to 100 bytes */
  free(s);
  json_decref(data);
  teardown(&f);
}

static void test_resumes_after_cursor(void) {
  fixture f;
  json_t *data;

  setup(&f);
  gen_option(&f, "rate", "0");
  gen_option(&f, "count", "10");
  run(&f, 6);
  data = check_lines(f.path, 7, 10, 0);
  ASSERT_EQ(7, json_integer_value(json_object_get(data, "seq")));
  json_decref(data);
  teardown(&f);
}

static void test_done_at_start_when_count_reached(void) {
  fixture f;

  setup(&f);
  gen_option(&f, "count", "10");
  run(&f, 10);
  /* Nothing new to write: the file stays empty. */
  json_decref(check_lines(f.path, 11, 10, 0));
  teardown(&f);
}

static void test_template(void) {
  fixture f;
  json_t *data;

  setup(&f);
  gen_option(&f, "rate", "0");
  gen_option(&f, "count", "3");
  gen_option(&f, "template", "{\"n\":{seq},\"s\":\"id-{seq}\",\"k\":[1]}");
  run(&f, 0);
  data = check_lines(f.path, 1, 3, 1);
  ASSERT_EQ(2, json_integer_value(json_object_get(data, "n")));
  ASSERT_STR_EQ("id-2", json_string_value(json_object_get(data, "s")));
  json_decref(data);
  teardown(&f);
}

static void test_small_window_keeps_order(void) {
  fixture f;

  setup(&f);
  f.conf.common.max_in_flight = 2;
  gen_option(&f, "rate", "0");
  gen_option(&f, "count", "500");
  run(&f, 0);
  json_decref(check_lines(f.path, 1, 500, 0));
  teardown(&f);
}

static void test_paced_rate(void) {
  fixture f;
  uint64_t t0, ms;

  setup(&f);
  gen_option(&f, "rate", "200");
  gen_option(&f, "count", "20");
  t0 = uv_hrtime();
  run(&f, 0);
  ms = (uv_hrtime() - t0) / 1000000;
  json_decref(check_lines(f.path, 1, 20, 0));
  /* 20 events at 200/s: the first at once, the last about 95 ms later. */
  ASSERT(ms >= 80);
  teardown(&f);
}

static void test_check_rejects_bad_templates(void) {
  const source_type *t = registry_source("generate");
  char conf[256], err[256];
  uint64_t payload_bit;

  ASSERT_EQ(0, options_set_defaults(t->options, conf));
  set_option(t->options, conf, "template", "{\"n\":{seq}");
  ASSERT_EQ(UV_EINVAL, t->check(conf, 0, err, sizeof err));
  ASSERT_CONTAINS(err, "template is not valid JSON once {seq} is a number");
  set_option(t->options, conf, "template", "{\"n\":{seq}}");
  ASSERT_EQ(0, t->check(conf, 0, err, sizeof err));
  payload_bit = (uint64_t)1 << options_index(
                    t->options, options_find(t->options, "payload_size"));
  ASSERT_EQ(UV_EINVAL, t->check(conf, payload_bit, err, sizeof err));
  ASSERT_STR_EQ("set either template or payload_size, not both", err);
  options_free(t->options, conf);
}

static const test_case tests[] = {
  TEST(test_count_and_payload_size),           TEST(test_resumes_after_cursor),
  TEST(test_done_at_start_when_count_reached), TEST(test_template),
  TEST(test_small_window_keeps_order),         TEST(test_paced_rate),
  TEST(test_check_rejects_bad_templates),      { NULL, NULL },
};

TEST_MAIN(tests)
