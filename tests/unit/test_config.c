/* Configuration: bad files with their exact errors, the environment,
 * continuation lines, the line limit, the dump and the generated docs. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/registry.h"
#include "daemon/sources/sse.h"
#include "daemon/upstream.h"
#include "tests/unit/test.h"

#define CONSUMER "[consumer a]\nsource = generate\nsink = stdout\n"

/* An allocator hook that fails the Nth allocation and counts live blocks,
 * so the out-of-memory test also finds leaks where ASan is absent. It
 * replaces glibc's malloc family, which ASan replaces too, so it exists
 * only in builds without ASan. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_NO_ALLOC_HOOK 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TEST_NO_ALLOC_HOOK 1
#endif

#ifndef TEST_NO_ALLOC_HOOK
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

static long alloc_countdown = -1; /* -1: off; 0: fail the next one */
static long alloc_live;           /* blocks allocated minus freed */
static bool alloc_failed;

static bool alloc_fail_now(void) {
  if (alloc_countdown < 0)
    return false;
  if (alloc_countdown-- == 0) {
    alloc_failed = true;
    return true;
  }
  return false;
}

void *malloc(size_t n) {
  void *p = alloc_fail_now() ? NULL : __libc_malloc(n);
  alloc_live += p != NULL;
  return p;
}

void *calloc(size_t n, size_t size) {
  void *p = alloc_fail_now() ? NULL : __libc_calloc(n, size);
  alloc_live += p != NULL;
  return p;
}

void *realloc(void *old, size_t n) {
  void *p;

  if (old != NULL && n == 0) {
    alloc_live--;
    return __libc_realloc(old, n);
  }
  p = alloc_fail_now() ? NULL : __libc_realloc(old, n);
  alloc_live += p != NULL && old == NULL;
  return p;
}

void free(void *p) {
  alloc_live -= p != NULL;
  __libc_free(p);
}
#endif

/* Parses text as "t.ini", expecting success. */
static void parse_ok(const char *text, config *c) {
  char *errors = NULL;
  int r = config_parse("t.ini", text, strlen(text), c, &errors);

  if (r != 0)
    printf("# unexpected errors:\n%s", errors ? errors : "(none)\n");
  free(errors);
  ASSERT_EQ(0, r);
}

/* Parses text as "t.ini", expecting exactly these errors. */
static void parse_bad(const char *text, const char *want) {
  config c;
  char *errors = NULL;
  int r = config_parse("t.ini", text, strlen(text), &c, &errors);

  if (r == 0)
    config_free(&c);
  ASSERT_EQ(UV_EINVAL, r);
  ASSERT_STR_EQ(want, errors);
  free(errors);
  /* A failed parse leaves nothing to free. */
  ASSERT(c.consumers == NULL && c.path == NULL && c.daemon.state == NULL);
}

/* The value of a generate or file option, found through the type's table. */
static const void *field(const option *table, const void *conf,
                         const char *name) {
  const option *o = options_find(table, name);
  ASSERT(o != NULL);
  return (const char *)conf + o->offset;
}

static void test_bad_configs(void) {
  static const struct {
    const char *text, *errors;
  } v[] = {
    /* 1: nothing at all */
    { "", "t.ini: no [consumer NAME] section: nothing to consume\n" },
    /* 2: only the optional section */
    { "[daemon]\nlog_level = debug\n",
      "t.ini: no [consumer NAME] section: nothing to consume\n" },
    /* 3: a key before any section */
    { "rate = 1\n" CONSUMER,
      "t.ini:1: rate: a key outside any section; put it under [daemon], "
      "[upstream NAME] or [consumer NAME]\n" },
    /* 4: every malformed line, not just the first */
    { CONSUMER "junk\n[daemon\n= 5\n[daemon] x\n",
      "t.ini:4: expected \"key = value\" or \"[section]\"\n"
      "t.ini:5: expected \"key = value\" or \"[section]\"\n"
      "t.ini:6: expected \"key = value\" or \"[section]\"\n"
      "t.ini:7: expected \"key = value\" or \"[section]\"\n" },
    /* 5 */
    { CONSUMER "[foo]\nx = 1\n",
      "t.ini:4: unknown section [foo]: expected [daemon], [upstream NAME] or "
      "[consumer NAME]\n" },
    /* 6 */
    { "[daemon main]\n" CONSUMER,
      "t.ini:1: [daemon main]: [daemon] takes no name\n" },
    /* 7: a consumer without a name is still a consumer section */
    { "[consumer]\nsink = stdout\n",
      "t.ini:1: [consumer]: a name is missing: [consumer NAME]\n" },
    /* 8 */
    { CONSUMER "[upstream a/b]\ntype = sse\n",
      "t.ini:4: [upstream a/b]: a name is 1 to 64 characters of A-Z, a-z, "
      "0-9, _, . and -\n" },
    /* 9: 65 characters */
    { "[consumer "
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
      "t.ini:1: [consumer "
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]: a "
      "name is 1 to 64 characters of A-Z, a-z, 0-9, _, . and -\n" },
    /* 10 */
    { "[daemon]\n[daemon]\n" CONSUMER CONSUMER,
      "t.ini:2: [daemon]: duplicate section (first at line 1)\n"
      "t.ini:6: [consumer a]: duplicate section (first at line 3)\n" },
    /* 11 */
    { "[consumer x]\nsource = generate\nsink = file:/tmp/o\nrotate_keep = "
      "3\nrotate_keep = 4\n",
      "t.ini:5: [consumer x] rotate_keep: set twice (first at line 4)\n" },
    /* 12 */
    { "[consumer x]\nsource = generate\nsink = file:/tmp/o\nrotate_sise = "
      "1MiB\nfoo = bar\n",
      "t.ini:4: [consumer x] rotate_sise = \"1MiB\": unknown key for a "
      "consumer with source generate and sink file; did you mean "
      "rotate_size?\n"
      "t.ini:5: [consumer x] foo = \"bar\": unknown key for a consumer with "
      "source generate and sink file\n" },
    /* 13 */
    { "[daemon]\nlog_lvl = info\n" CONSUMER,
      "t.ini:2: [daemon] log_lvl = \"info\": unknown key in [daemon]; did you "
      "mean log_level?\n" },
    /* 14 */
    { "[consumer orders]\nsource = generate\nsink = stdout\nmax_in_flight = "
      "ten\n",
      "t.ini:4: [consumer orders] max_in_flight = \"ten\": expected an "
      "integer 1..1000000\n" },
    /* 15 */
    { "[consumer orders]\nsource = generate\n",
      "t.ini:1: [consumer orders]: sink is required\n" },
    /* 16 */
    { "[upstream pb]\ntype = lockd\n[consumer a]\nsource = "
      "generate\nupstream = pb\nsink = stdout\n",
      "t.ini:3: [consumer a]: set only one of source and upstream\n" },
    /* 17 */
    { "[consumer a]\nsink = stdout\n",
      "t.ini:1: [consumer a]: set source = TYPE or upstream = NAME\n" },
    /* 18 */
    { "[consumer a]\nsource = genrate\nsink = stdout\nrate = 5\n",
      "t.ini:2: [consumer a] source = \"genrate\": expected one of: "
      "generate\n" },
    /* 19 */
    { "[consumer a]\nupstream = pb\nsink = stdout\n",
      "t.ini:2: [consumer a] upstream = \"pb\": no [upstream pb] section\n" },
    /* 20 */
    { "[upstream pb]\ntype = lockd\nurl = http://pb\n[consumer "
      "a]\nupstream = pb\ncollection = orders\nsink = stdout\n",
      "t.ini:5: [consumer a] upstream = \"pb\": [upstream pb] has type "
      "lockd, which this version cannot consume yet\n" },
    /* 21 */
    { "[upstream pb]\nurl = http://pb\n[upstream q]\ntype = kafka\n" CONSUMER,
      "t.ini:1: [upstream pb]: type is required\n"
      "t.ini:4: [upstream q] type = \"kafka\": expected one of: pocketbase, "
      "lockd, eventstream, synchro, sse, http-poll\n" },
    /* 22 */
    { "[consumer a]\nsource = generate\nsink = kafka:/tmp/p\n"
      "[consumer b]\nsource = generate\nsink = file:\n"
      "[consumer c]\nsource = generate\nsink = file\n"
      "[consumer d]\nsource = generate\nsink = stdout:x\n",
      "t.ini:3: [consumer a] sink = \"kafka:/tmp/p\": expected stdout, "
      "file:PATH, fifo:PATH, exec:ARGV or socket\n"
      "t.ini:6: [consumer b] sink = \"file:\": file needs a path: file:PATH\n"
      "t.ini:9: [consumer c] sink = \"file\": file needs a path: file:PATH\n"
      "t.ini:12: [consumer d] sink = \"stdout:x\": stdout takes no argument: "
      "write sink = stdout\n" },
    /* 23 */
    { "[consumer a]\nsource = generate\nsink = stdout\nretry_min = "
      "1m\nretry_max = 5s\n",
      "t.ini:1: [consumer a]: retry_min (1m) is above retry_max (5s)\n" },
    /* 24 */
    { "[daemon]\nlog_level = verbose\nlog_format = yaml\nexit_when_done = "
      "maybe\ncheckpoint_interval = 5\nstatus_interval = 2d\n" CONSUMER,
      "t.ini:2: [daemon] log_level = \"verbose\": expected one of: debug, "
      "info, warn, error\n"
      "t.ini:3: [daemon] log_format = \"yaml\": expected one of: text, json\n"
      "t.ini:4: [daemon] exit_when_done = \"maybe\": expected true or false\n"
      "t.ini:5: [daemon] checkpoint_interval = \"5\": expected a duration "
      "with a unit, such as 250ms, 30s, 5m or 1h\n"
      "t.ini:6: [daemon] status_interval = \"2d\": expected a duration with a "
      "unit, such as 250ms, 30s, 5m or 1h\n" },
    /* 25: inih would glue an indented key onto the previous value */
    { "[consumer a]\n  source = generate\n  sink = stdout\n",
      "t.ini:1: [consumer a]: sink is required\n"
      "t.ini:3: [consumer a] sink: the line is indented, so it continues the "
      "value of source (line 2); remove the indentation to start a new "
      "key\n" },
    /* 26: the environment */
    { "[daemon]\nstate = ${TETHER_TEST_UNSET}\nlog_file = ${TETHER_TEST_"
      "\nstatus_interval = ${1X}\n" CONSUMER,
      "t.ini:2: [daemon] state = \"${TETHER_TEST_UNSET}\": environment "
      "variable TETHER_TEST_UNSET is not set (write "
      "${TETHER_TEST_UNSET:-default} to give a default)\n"
      "t.ini:3: [daemon] log_file = \"${TETHER_TEST_\": unterminated ${: "
      "write ${NAME} or ${NAME:-default}, or $$ for a literal $\n"
      "t.ini:4: [daemon] status_interval = \"${1X}\": invalid reference "
      "${1X}: write ${NAME} or ${NAME:-default}, NAME being letters, digits "
      "and _\n" },
    /* 27: a secret-looking upstream key is not shown */
    { "[upstream pb]\ntype = lockd\npassword = ${TETHER_TEST_UNSET}\n"
      "api token = x\n" CONSUMER,
      "t.ini:3: [upstream pb] password = ***: environment variable "
      "TETHER_TEST_UNSET is not set (write ${TETHER_TEST_UNSET:-default} to "
      "give a default)\n"
      "t.ini:4: [upstream pb] api token = ***: a key is 1 to 64 characters "
      "of A-Z, a-z, 0-9, _, . and -\n" },
    /* 28: errors come out in line order across both passes */
    { "[consumer z]\nsource = generate\nsink = nope\nbad line\n",
      "t.ini:3: [consumer z] sink = \"nope\": expected stdout, file:PATH, "
      "fifo:PATH, exec:ARGV or socket\n"
      "t.ini:4: expected \"key = value\" or \"[section]\"\n" },
    /* 29: values are escaped so that one error is one line */
    { "[consumer a]\nsource = generate\nsink = stdout\nrate = \"1\"\t2\n",
      "t.ini:4: [consumer a] rate = \"\\\"1\\\"\\t2\": expected an integer "
      "0..100000000\n" },
    /* 30: the type's own check runs once every key parsed */
    { "[consumer a]\nsource = generate\nsink = stdout\ntemplate = "
      "{\"n\": {seq}\npayload_size = 64\n",
      "t.ini:1: [consumer a]: set either template or payload_size, not "
      "both\n" },
    /* 31 */
    { "[consumer a]\nsource = generate\nsink = stdout\nmax_in_flight = "
      "0\nretry_min = 0\n",
      "t.ini:4: [consumer a] max_in_flight = \"0\": expected an integer "
      "1..1000000\n"
      "t.ini:5: [consumer a] retry_min = \"0\": expected a duration "
      "1ms..1h\n" },
    /* 32: on_fail has a grammar of its own, checked for every sink, on
     * its line */
    { CONSUMER "on_fail = drop\n",
      "t.ini:4: [consumer a] on_fail = \"drop\": expected retry, skip or "
      "dead_letter:PATH\n" },
    /* 33 */
    { "[consumer a]\nsource = generate\nsink = exec:handler\n"
      "max_attempts = -1\non_fail = dead_letter:\n",
      "t.ini:4: [consumer a] max_attempts = \"-1\": expected an integer "
      "0..1000000\n"
      "t.ini:5: [consumer a] on_fail = \"dead_letter:\": expected retry, "
      "skip or dead_letter:PATH\n" },
  };
  size_t k;

  unsetenv("TETHER_TEST_UNSET");
  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    printf("# case %zu\n", k + 1);
    parse_bad(v[k].text, v[k].errors);
  }
}

static void test_nul_and_crlf(void) {
  static const char nul[] = "[consumer a]\nsource = generate\0x\nsink = "
                            "stdout\n";
  static const char crlf[] =
      "[consumer a]\r\nsource = generate\r\nsink = stdout\r\n";
  config c;
  char *errors = NULL;

  ASSERT_EQ(UV_EINVAL, config_parse("t.ini", nul, sizeof nul - 1, &c, &errors));
  ASSERT_STR_EQ("t.ini:1: [consumer a]: set source = TYPE or upstream = NAME\n"
                "t.ini:2: line contains a NUL byte\n",
                errors);
  free(errors);

  parse_ok(crlf, &c);
  ASSERT_STR_EQ("stdout", c.consumers[0].common.sink);
  config_free(&c);
}

static void test_environment(void) {
  config c;

  setenv("TETHER_TEST_DIR", "/var/lib/t", 1);
  setenv("TETHER_TEST_EMPTY", "", 1);
  unsetenv("TETHER_TEST_UNSET");
  parse_ok("[daemon]\n"
           "state = ${TETHER_TEST_DIR}/state.db\n"
           "log_file = ${TETHER_TEST_UNSET:-/var/log/t.log}\n"
           "[upstream pb]\n"
           "type = lockd\n"
           "a = ${TETHER_TEST_EMPTY:-fallback}\n"
           "b = x${TETHER_TEST_EMPTY}y\n"
           "c = $$HOME costs $5 or $ ${TETHER_TEST_UNSET:-}.\n"
           "d = $${TETHER_TEST_DIR} $$$$ a$\n"
           "e = ${TETHER_TEST_UNSET:-$x{y}\n" CONSUMER,
           &c);
  ASSERT_STR_EQ("/var/lib/t/state.db", c.daemon.state);
  ASSERT_STR_EQ("/var/log/t.log", c.daemon.log_file);
  ASSERT_EQ(1, c.n_upstreams);
  ASSERT_EQ(5, c.upstreams[0].n_kv);
  ASSERT_STR_EQ("fallback", c.upstreams[0].kv[0].value);
  ASSERT_STR_EQ("xy", c.upstreams[0].kv[1].value);
  ASSERT_STR_EQ("$HOME costs $5 or $ .", c.upstreams[0].kv[2].value);
  ASSERT_STR_EQ("${TETHER_TEST_DIR} $$ a$", c.upstreams[0].kv[3].value);
  /* A default is taken as written, up to the first "}". */
  ASSERT_STR_EQ("$x{y", c.upstreams[0].kv[4].value);
  ASSERT_EQ(10, c.upstreams[0].kv[4].line);
  config_free(&c);
  unsetenv("TETHER_TEST_DIR");
  unsetenv("TETHER_TEST_EMPTY");
}

static void test_continuation_lines(void) {
  config c;
  const config_upstream *u;

  parse_ok("[upstream pb]\n"
           "type = lockd\n"
           "filter = status = \"paid\" ; an inline comment\n"
           "  && total > 10 ; comments end continuation lines too\n"
           "; a comment line between does not end the value\n"
           "\n"
           "\t|| vip = true\n"
           "empty =\n"
           "   now set\n"
           "colon: value\n" CONSUMER,
           &c);
  u = &c.upstreams[0];
  ASSERT_EQ(3, u->n_kv);
  ASSERT_STR_EQ("filter", u->kv[0].key);
  ASSERT_STR_EQ("status = \"paid\" && total > 10 || vip = true",
                u->kv[0].value);
  ASSERT_EQ(3, u->kv[0].line);
  ASSERT_STR_EQ("now set", u->kv[1].value);
  ASSERT_STR_EQ("colon", u->kv[2].key);
  ASSERT_STR_EQ("value", u->kv[2].value);
  config_free(&c);
}

/* "[daemon]\nstate = " and enough "a" to make line 2 len bytes long. */
static char *long_line_config(size_t len) {
  static const char head[] = "[daemon]\n", key[] = "state = ";
  char *text = malloc(strlen(head) + len + strlen(CONSUMER) + 2);
  size_t o = 0;

  ASSERT(text != NULL);
  memcpy(text, head, strlen(head));
  o += strlen(head);
  memcpy(text + o, key, strlen(key));
  memset(text + o + strlen(key), 'a', len - strlen(key));
  o += len;
  text[o++] = '\n';
  strcpy(text + o, CONSUMER);
  return text;
}

static void test_line_limit(void) {
  config c;
  char *text;

  text = long_line_config(197);
  parse_ok(text, &c);
  ASSERT_EQ(189, strlen(c.daemon.state));
  config_free(&c);
  free(text);

  text = long_line_config(198);
  parse_bad(text, "t.ini:2: line is 198 bytes long; the limit is 197: split "
                  "the value over indented continuation lines\n");
  free(text);

  /* Never cut: a 1000-byte line is one error, not a value and junk. */
  text = long_line_config(1000);
  parse_bad(text, "t.ini:2: line is 1000 bytes long; the limit is 197: split "
                  "the value over indented continuation lines\n");
  free(text);
}

static void test_names_and_bom(void) {
  char name[65], text[256];
  config c;

  /* The longest name, every kind of character, after a byte order mark. */
  memset(name, 'a', 64);
  memcpy(name, "A-z_0.9", 7);
  name[64] = '\0';
  snprintf(text, sizeof text,
           "\xEF\xBB\xBF[consumer %s]\nsource = generate\n"
           "sink = file:/tmp/with:colon\n",
           name);
  parse_ok(text, &c);
  ASSERT_EQ(1, c.n_consumers);
  ASSERT_STR_EQ(name, c.consumers[0].name);
  ASSERT_STR_EQ("/tmp/with:colon", c.consumers[0].sink_arg);
  ASSERT(c.consumers[0].sink == registry_sink("file"));
  config_free(&c);
}

static void test_defaults_and_values(void) {
  config c;
  const config_consumer *cc;

  parse_ok("[daemon]\nlog_level = error\nlog_format = json\n"
           "[consumer one]\nsource = generate\nsink = file:/tmp/one.ndjson\n"
           "rate = 0 ; as fast as possible\ncount = 10\nrotate_size = 1MiB\n"
           "retry_min = 1s\nretry_max = 1s\n"
           "[consumer two]\nsource = generate\nsink = stdout\n",
           &c);
  ASSERT_STR_EQ("t.ini", c.path);
  ASSERT_STR_EQ("./.tether/state.db", c.daemon.state);
  ASSERT_UEQ(1000, c.daemon.checkpoint_interval);
  ASSERT_UEQ(20000, c.daemon.shutdown_timeout);
  ASSERT_EQ(LOG_ERROR, c.daemon.log_level);
  ASSERT_EQ(LOG_FORMAT_JSON, c.daemon.log_format);
  ASSERT_STR_EQ("", c.daemon.log_file);
  ASSERT_UEQ(60000, c.daemon.status_interval);
  ASSERT(!c.daemon.exit_when_done);
  ASSERT_EQ(2, c.n_consumers);

  cc = &c.consumers[0];
  ASSERT_STR_EQ("one", cc->name);
  ASSERT_EQ(4, cc->line);
  ASSERT(cc->source == registry_source("generate"));
  ASSERT(cc->sink == registry_sink("file"));
  ASSERT_STR_EQ("/tmp/one.ndjson", cc->sink_arg);
  ASSERT_STR_EQ("file:/tmp/one.ndjson", cc->common.sink);
  ASSERT(cc->common.upstream == NULL);
  ASSERT_EQ(1000, cc->common.max_in_flight);
  ASSERT_UEQ(1000, cc->common.retry_min);
  ASSERT_EQ(
      0, *(const int64_t *)field(cc->source->options, cc->source_conf, "rate"));
  ASSERT_EQ(10, *(const int64_t *)field(cc->source->options, cc->source_conf,
                                        "count"));
  ASSERT_UEQ(1048576, *(const uint64_t *)field(cc->sink->options, cc->sink_conf,
                                               "rotate_size"));
  ASSERT_EQ(5, *(const int64_t *)field(cc->sink->options, cc->sink_conf,
                                       "rotate_keep"));

  cc = &c.consumers[1];
  ASSERT(cc->sink == registry_sink("stdout"));
  ASSERT(cc->sink_arg == NULL);
  ASSERT_UEQ(250, cc->common.retry_min);
  ASSERT_UEQ(30000, cc->common.retry_max);
  config_free(&c);
  ASSERT(c.consumers == NULL);
}

/* max_attempts and on_fail are keys of every consumer, whatever its
 * sink, parsed once into the policy the sink gets at open. */
static void test_sink_policy(void) {
  config c;
  const config_consumer *cc;

  parse_ok("[consumer a]\nsource = generate\nsink = file:/tmp/a\n"
           "max_attempts = 3\non_fail = dead_letter:/tmp/a.dead\n"
           "[consumer b]\nsource = generate\nsink = exec:handler --x\n"
           "max_attempts = 5\non_fail = skip\n"
           "[consumer c]\nsource = generate\nsink = socket\n",
           &c);
  cc = &c.consumers[0];
  ASSERT_EQ(3, cc->policy.max_attempts);
  ASSERT_EQ(SINK_ON_FAIL_DEAD_LETTER, cc->policy.on_fail);
  ASSERT_STR_EQ("/tmp/a.dead", cc->policy.dead_letter);
  cc = &c.consumers[1];
  ASSERT_EQ(5, cc->policy.max_attempts);
  ASSERT_EQ(SINK_ON_FAIL_SKIP, cc->policy.on_fail);
  ASSERT(cc->policy.dead_letter == NULL);
  /* exec's own table no longer has them. */
  ASSERT(options_find(cc->sink->options, "max_attempts") == NULL);
  ASSERT(options_find(cc->sink->options, "on_fail") == NULL);
  cc = &c.consumers[2];
  ASSERT_EQ(0, cc->policy.max_attempts);
  ASSERT_EQ(SINK_ON_FAIL_RETRY, cc->policy.on_fail);
  ASSERT(cc->policy.dead_letter == NULL);
  config_free(&c);
}

/* The log_level enum's index is the log_level value. */
static void test_log_level_choices(void) {
  const option *o = options_find(config_daemon_options, "log_level");
  size_t i;

  ASSERT(o != NULL && o->choices != NULL);
  for (i = 0; o->choices[i] != NULL; i++)
    ASSERT_STR_EQ(log_level_names[i], o->choices[i]);
  ASSERT_EQ(LOG_OFF, i);
  o = options_find(config_daemon_options, "log_format");
  ASSERT_STR_EQ("text", o->choices[LOG_FORMAT_TEXT]);
  ASSERT_STR_EQ("json", o->choices[LOG_FORMAT_JSON]);
}

/* Parses text, dumps it, parses the dump and dumps again: the two dumps
 * must be equal. Returns the first dump (owned by the caller). */
static char *dump_round_trip(const char *text) {
  config a, b;
  char *d1, *d2, *errors = NULL;
  int r;

  parse_ok(text, &a);
  d1 = config_dump(&a);
  ASSERT(d1 != NULL);
  r = config_parse("dump.ini", d1, strlen(d1), &b, &errors);
  if (r != 0)
    printf("# the dump:\n%s# does not parse:\n%s", d1, errors);
  free(errors);
  ASSERT_EQ(0, r);
  d2 = config_dump(&b);
  ASSERT_STR_EQ(d1, d2);
  ASSERT_EQ(a.n_consumers, b.n_consumers);
  ASSERT_EQ(a.n_upstreams, b.n_upstreams);
  free(d2);
  config_free(&a);
  config_free(&b);
  return d1;
}

static void test_dump(void) {
  char *d;

  d = dump_round_trip("[upstream pb]\ntype = lockd\nurl = http://pb\n"
                      "identity = me\npassword = hunter2\nApi_Key = k1\n"
                      "[consumer orders]\nsink = file:/tmp/o\n"
                      "template = {\"seq\": {seq}}\nsource = generate\n"
                      "rotate_size = 10MiB\nretry_max = 90s\n");
  ASSERT_STR_EQ("[daemon]\n"
                "state = ./.tether/state.db\n"
                "checkpoint_interval = 1s\n"
                "shutdown_timeout = 20s\n"
                "log_level = info\n"
                "log_format = text\n"
                "log_file =\n"
                "status_interval = 1m\n"
                "exit_when_done = false\n"
                "socket = ./.tether/tether.sock\n"
                "socket_mode = 0600\n"
                "socket_group =\n"
                "http_listen =\n"
                "api_max_connections = 256\n"
                "http_max_connections = 16\n"
                "api_request_timeout = 10s\n"
                "ready_commit_timeout = 30s\n"
                "api_idle_timeout = 5s\n"
                "\n"
                "[upstream pb]\n"
                "type = lockd\n"
                "url = http://pb\n"
                "identity = me\n"
                "password = ***\n"
                "Api_Key = ***\n"
                "\n"
                "[consumer orders]\n"
                "source = generate\n"
                "sink = file:/tmp/o\n"
                "max_in_flight = 1000\n"
                "max_in_flight_bytes = 16MiB\n"
                "on_stream_change = refuse\n"
                "retry_min = 250ms\n"
                "retry_max = 1m30s\n"
                "max_attempts = 0\n"
                "on_fail = retry\n"
                /* generate refuses payload_size next to template, so
                 * its defaults are shown as comments to read back. */
                "; rate = 1 (default)\n"
                "; count = 0 (default)\n"
                "; payload_size = 100 (default)\n"
                "template = {\"seq\": {seq}}\n"
                "rotate_size = 10MiB\n"
                "rotate_keep = 5\n",
                d);
  free(d);

  d = dump_round_trip("[consumer a]\nsource = generate\nsink = stdout\n"
                      "rate = 0\n");
  ASSERT_CONTAINS(d, "\n\n[consumer a]\n"
                     "source = generate\n"
                     "sink = stdout\n"
                     "max_in_flight = 1000\n"
                     "max_in_flight_bytes = 16MiB\n"
                     "on_stream_change = refuse\n"
                     "retry_min = 250ms\n"
                     "retry_max = 30s\n"
                     "max_attempts = 0\n"
                     "on_fail = retry\n"
                     "rate = 0\n"
                     "count = 0\n"
                     "payload_size = 100\n"
                     "template =\n");
  free(d);
}

static void test_dump_hard_values(void) {
  static const char a150[] =
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
      "aaaaaaaaaa";
  char text[2048], *d, *d2;
  config c;

  /* "$" that would start a reference, and a value longer than a line. */
  snprintf(text, sizeof text,
           "[daemon]\nstate = /tmp/$$$${x}/$$/$y/%s\n  %s\n  %s\n"
           "log_file = ${TETHER_TEST_UNSET:-$$}\n" CONSUMER,
           a150, a150, a150);
  unsetenv("TETHER_TEST_UNSET");
  d = dump_round_trip(text);
  parse_ok(d, &c);
  ASSERT_EQ(strlen("/tmp/$${x}/$/$y/") + 3 * 150 + 2, strlen(c.daemon.state));
  ASSERT(strncmp(c.daemon.state, "/tmp/$${x}/$/$y/a", 17) == 0);
  ASSERT_STR_EQ("$$", c.daemon.log_file);
  config_free(&c);
  /* A value that starts with ";" must not read back as a comment. */
  d2 = dump_round_trip("[daemon]\nlog_file =;x\n" CONSUMER);
  ASSERT_CONTAINS(d2, "\nlog_file=;x\n");
  parse_ok(d2, &c);
  ASSERT_STR_EQ(";x", c.daemon.log_file);
  config_free(&c);
  free(d2);
  /* Each line of the dump fits the limit. */
  {
    const char *line = d, *nl;
    for (; (nl = strchr(line, '\n')) != NULL; line = nl + 1)
      ASSERT((size_t)(nl - line) <= 197);
  }
  free(d);
}

static void test_embedded_default(void) {
  config c;
  char *errors = NULL;
  const config_consumer *cc;

  ASSERT_EQ(0, config_parse("(embedded default)", config_embedded_default,
                            strlen(config_embedded_default), &c, &errors));
  ASSERT(errors == NULL);
  ASSERT_STR_EQ("(embedded default)", c.path);
  ASSERT_STR_EQ("./.tether/state.db", c.daemon.state);
  ASSERT_UEQ(5000, c.daemon.status_interval);
  ASSERT_EQ(1, c.n_consumers);
  cc = &c.consumers[0];
  ASSERT_STR_EQ("demo", cc->name);
  ASSERT(cc->source == registry_source("generate"));
  ASSERT(cc->sink == registry_sink("stdout"));
  ASSERT_EQ(
      2, *(const int64_t *)field(cc->source->options, cc->source_conf, "rate"));
  config_free(&c);
}

static void test_load(void) {
  char path[4200], *big, *errors = NULL;
  const char *dir = test_tmpdir();
  char tmp[4096];
  config c;
  size_t n = 1024 * 1024 + 1;

  snprintf(tmp, sizeof tmp, "%s", dir);
  snprintf(path, sizeof path, "%s/missing.ini", tmp);
  ASSERT_EQ(UV_ENOENT, config_load(path, &c, &errors));
  ASSERT(strncmp(errors, path, strlen(path)) == 0);
  ASSERT_STR_EQ(": cannot read: No such file or directory\n",
                errors + strlen(path));
  free(errors);

  ASSERT_EQ(UV_EISDIR, config_load(tmp, &c, &errors));
  ASSERT_CONTAINS(errors, ": cannot read: Is a directory\n");
  free(errors);

  snprintf(path, sizeof path, "%s/big.ini", tmp);
  big = malloc(n);
  ASSERT(big != NULL);
  memset(big, ';', n);
  test_write_file(path, big, n);
  free(big);
  ASSERT_EQ(UV_EFBIG, config_load(path, &c, &errors));
  ASSERT_CONTAINS(errors, "big.ini: cannot read: larger than 1 MiB, the "
                          "limit for a configuration file\n");
  free(errors);

  snprintf(path, sizeof path, "%s/good.ini", tmp);
  test_write_file(path, CONSUMER, strlen(CONSUMER));
  ASSERT_EQ(0, config_load(path, &c, &errors));
  ASSERT(errors == NULL);
  ASSERT_STR_EQ(path, c.path);
  config_free(&c);

  snprintf(path, sizeof path, "%s/bad.ini", tmp);
  test_write_file(path, "[consumer a]\n", 13);
  ASSERT_EQ(UV_EINVAL, config_load(path, &c, &errors));
  ASSERT_CONTAINS(errors, "bad.ini:1: [consumer a]: set source = TYPE or "
                          "upstream = NAME\n");
  free(errors);
  test_rmtree(tmp);
}

static void test_bad_arguments(void) {
  config c;
  char *errors = NULL;

  ASSERT_EQ(UV_EINVAL, config_parse(NULL, "", 0, &c, &errors));
  ASSERT_EQ(UV_EINVAL, config_parse("x", NULL, 1, &c, &errors));
  ASSERT_EQ(UV_EINVAL, config_parse("x", "", 0, NULL, &errors));
  ASSERT_EQ(UV_EINVAL, config_load(NULL, &c, &errors));
  ASSERT(config_dump(NULL) == NULL);
  config_free(NULL);
}

/* docs/config.md is generated; this keeps the committed copy current. */
static void test_docs_current(void) {
  const char *root = getenv("TETHER_SOURCE_ROOT");
  const char *update = getenv("TETHER_UPDATE_DOCS");
  char path[4096], *want, *have;

  ASSERT(root != NULL);
  snprintf(path, sizeof path, "%s/docs/config.md", root);
  want = config_docs_markdown();
  ASSERT(want != NULL);
  if (update != NULL && strcmp(update, "1") == 0) {
    test_write_file(path, want, strlen(want));
    printf("# rewrote %s\n", path);
  }
  have = test_read_file(path, NULL);
  if (have == NULL || strcmp(have, want) != 0)
    printf("# %s differs from config_docs_markdown(); rerun with "
           "TETHER_UPDATE_DOCS=1 to rewrite it (meson test -C BUILD config "
           "with TETHER_UPDATE_DOCS=1 in the environment)\n",
           path);
  ASSERT(have != NULL && strcmp(have, want) == 0);
  free(have);
  free(want);
}

static void test_docs_content(void) {
  char *md = config_docs_markdown();

  ASSERT_CONTAINS(md, "# Configuration\n");
  ASSERT_CONTAINS(md, "| key | type | default | description |\n");
  ASSERT_CONTAINS(md, "| `checkpoint_interval` | duration 10ms..1h | `1s` |");
  ASSERT_CONTAINS(md, "| `sink` | string | required |");
  ASSERT_CONTAINS(md, "## Source `generate`\n");
  ASSERT_CONTAINS(md, "`sink = file:PATH`");
  ASSERT_CONTAINS(md, "`${VAR:-default}`");
  ASSERT_CONTAINS(md, "197 bytes");
  free(md);
}

/* Fails each allocation of a parse, then of a dump, in turn: every failure
 * is UV_ENOMEM or a NULL dump, never a crash, a wrong error or a leak. */
static void test_out_of_memory(void) {
#ifndef TEST_NO_ALLOC_HOOK
  static const char *const texts[] = {
    "[daemon]\nstate = ${HOME}/x\nlog_level = debug\n"
    "[upstream pb]\ntype = sse\nurl = http://u\n  /path\nheader.X-A = 1\n"
    "[consumer a]\nsource = generate\nsink = file:/tmp/x\nrotate_keep = 3\n"
    "[consumer s]\nupstream = pb\nsink = stdout\npath = /e\n"
    "[consumer b]\nsource = generate\nsink = stdout\n",
    "[daemon]\nstate = ${TETHER_TEST_UNSET}\nlog_lvl = x\n[foo]\njunk\n"
    "[consumer a]\nsource = generate\nsink = file:\nrotate_sise = 1\n"
    "[consumer a]\n[consumer b]\nupstream = nope\nsink = nope\n",
  };
  size_t t;
  long n, live;
  config c;
  char *errors, *d;
  int r;

  unsetenv("TETHER_TEST_UNSET");
  for (t = 0; t < 2; t++) {
    for (n = 0;; n++) {
      errors = NULL;
      live = alloc_live;
      alloc_failed = false;
      alloc_countdown = n;
      r = config_parse("t.ini", texts[t], strlen(texts[t]), &c, &errors);
      alloc_countdown = -1;
      if (!alloc_failed) {
        ASSERT_EQ(t == 0 ? 0 : UV_EINVAL, r);
        if (r == 0)
          config_free(&c);
        free(errors);
        ASSERT_EQ(live, alloc_live);
        break;
      }
      if (r != UV_ENOMEM)
        printf("# text %zu, allocation %ld: %s", t, n,
               errors ? errors : "(null)\n");
      ASSERT_EQ(UV_ENOMEM, r);
      ASSERT(errors == NULL || strcmp(errors, "t.ini: out of memory\n") == 0);
      free(errors);
      ASSERT_EQ(live, alloc_live);
    }
    ASSERT(n > 10);
  }

  parse_ok(texts[0], &c);
  for (n = 0;; n++) {
    live = alloc_live;
    alloc_failed = false;
    alloc_countdown = n;
    d = config_dump(&c);
    alloc_countdown = -1;
    if (!alloc_failed) {
      ASSERT(d != NULL);
      free(d);
      break;
    }
    /* A dump that lost a scratch allocation may still be whole. */
    free(d);
    ASSERT_EQ(live, alloc_live);
  }
  config_free(&c);
#else
  ASSERT(1); /* ASan replaces the allocator; the hook needs the real one. */
#endif
}

/* Upstream types this version consumes: their own option table, header.NAME
 * keys, and consumers that take their source's keys. */
static void test_typed_upstreams(void) {
  const http_upstream_conf *h;
  const sse_conf *sc;
  char *d;
  config c;

  setenv("TETHER_TEST_TOKEN", "s3cret", 1);
  parse_ok("[upstream live]\n"
           "type = sse\n"
           "url = https://events.internal:8443/api/\n"
           "header.Authorization = Bearer ${TETHER_TEST_TOKEN}\n"
           "max_connections = 2\n"
           "[consumer a]\n"
           "upstream = live\n"
           "path = stream?x=1\n"
           "resume = query:last_event_id\n"
           "idle_timeout = 10s\n"
           "sink = stdout\n",
           &c);
  ASSERT(c.upstreams[0].type_reg == registry_upstream("sse"));
  h = c.upstreams[0].conf;
  ASSERT_STR_EQ("https://events.internal:8443/api/", h->url);
  ASSERT_EQ(2, h->max_connections);
  ASSERT(h->tls_verify);
  ASSERT_EQ(1, c.upstreams[0].n_kv);
  ASSERT_STR_EQ("header.Authorization", c.upstreams[0].kv[0].key);
  ASSERT_STR_EQ("Bearer s3cret", c.upstreams[0].kv[0].value);
  ASSERT(c.consumers[0].upstream == &c.upstreams[0]);
  ASSERT_STR_EQ("sse", c.consumers[0].source->name);
  sc = c.consumers[0].source_conf;
  ASSERT_STR_EQ("stream?x=1", sc->path);
  ASSERT_STR_EQ("query:last_event_id", sc->resume);
  ASSERT_UEQ(10000, sc->idle_timeout);
  d = config_dump(&c);
  ASSERT_CONTAINS(d, "[upstream live]\ntype = sse\nurl = "
                     "https://events.internal:8443/api/\n");
  ASSERT_CONTAINS(d, "header.Authorization = ***\n");
  ASSERT(strstr(d, "s3cret") == NULL);
  ASSERT_CONTAINS(d, "path = stream?x=1\n");
  free(d);
  config_free(&c);
  unsetenv("TETHER_TEST_TOKEN");

  parse_bad("[upstream live]\ntype = sse\nurl = http://x\nurll = y\n"
            "header. = z\n[consumer a]\nupstream = live\nsink = stdout\n"
            "rotate_keep = 2\n",
            "t.ini:4: [upstream live] urll = \"y\": unknown key for an "
            "upstream of type sse (request headers are header.NAME); did you "
            "mean url?\n"
            "t.ini:5: [upstream live] header. = ***: header.NAME needs a "
            "header name (letters, digits and !#$%&'*+-.^_`|~)\n"
            "t.ini:9: [consumer a] rotate_keep = \"2\": unknown key for a "
            "consumer with source sse and sink stdout\n");
  parse_bad("[upstream live]\ntype = sse\n[consumer a]\nupstream = live\n"
            "sink = stdout\n",
            "t.ini:1: [upstream live]: url is required\n");
  parse_bad("[upstream live]\ntype = sse\nurl = ftp://x\n[consumer a]\n"
            "upstream = live\nsink = stdout\n",
            "t.ini:1: [upstream live]: url = \"ftp://x\": expected "
            "http://HOST... or https://HOST...\n");
  parse_bad("[upstream live]\ntype = sse\nurl = http://x\n[consumer a]\n"
            "upstream = live\nsink = stdout\nresume = cookie\n",
            "t.ini:4: [consumer a]: resume = \"cookie\": expected header or "
            "query:NAME (for example query:last_event_id)\n");
  parse_bad("[upstream p]\ntype = http-poll\nurl = http://x\n"
            "[consumer a]\nupstream = p\nsink = stdout\n"
            "path = /c?since={cursor}\nitem_cursor = /seq\n"
            "page_cursor = /last_seq\n",
            "t.ini:4: [consumer a]: set exactly one of item_cursor and "
            "page_cursor\n");
  parse_bad("[upstream p]\ntype = http-poll\nurl = http://x\n"
            "[consumer a]\nupstream = p\nsink = stdout\n"
            "path = /c?since={cursor}\nitems = results\n"
            "page_cursor = /last_seq\n",
            "t.ini:4: [consumer a]: items = \"results\": offset 0: a pointer "
            "is empty or starts with \"/\", not \"r\"\n");
  parse_bad("[upstream p]\ntype = http-poll\nurl = http://x\n"
            "[consumer a]\nupstream = p\nsink = stdout\npath = /c\n"
            "page_cursor = /last_seq\n",
            "t.ini:4: [consumer a]: path needs {cursor} where the cursor "
            "goes\n");
}

static const test_case tests[] = {
  TEST(test_typed_upstreams),
  TEST(test_bad_configs),
  TEST(test_nul_and_crlf),
  TEST(test_environment),
  TEST(test_continuation_lines),
  TEST(test_line_limit),
  TEST(test_names_and_bom),
  TEST(test_defaults_and_values),
  TEST(test_sink_policy),
  TEST(test_log_level_choices),
  TEST(test_dump),
  TEST(test_dump_hard_values),
  TEST(test_embedded_default),
  TEST(test_load),
  TEST(test_bad_arguments),
  TEST(test_docs_current),
  TEST(test_docs_content),
  TEST(test_out_of_memory),
  { NULL, NULL },
};
TEST_MAIN(tests)
