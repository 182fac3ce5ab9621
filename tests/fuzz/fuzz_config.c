/* Fuzzes config_parse with arbitrary text. On success the result must hold
 * the invariants the daemon relies on, and its dump must parse again. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* assert() vanishes under NDEBUG; a fuzz check must not. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_config: %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static void check_config(const config *c) {
  size_t i;

  CHECK(c->path != NULL);
  CHECK(c->daemon.state != NULL && c->daemon.log_file != NULL);
  CHECK(c->n_consumers >= 1 && c->consumers != NULL);
  for (i = 0; i < c->n_consumers; i++) {
    const config_consumer *cc = &c->consumers[i];
    CHECK(cc->name != NULL && cc->name[0] != '\0');
    CHECK(cc->source != NULL && cc->source_conf != NULL);
    CHECK(cc->sink != NULL && cc->sink_conf != NULL);
    CHECK(cc->common.sink != NULL);
    CHECK((cc->sink->arg != NULL) == (cc->sink_arg != NULL));
    CHECK(cc->sink_arg == NULL || cc->sink_arg[0] != '\0');
    CHECK(cc->common.max_in_flight >= 1);
    CHECK(cc->common.retry_min <= cc->common.retry_max);
  }
  for (i = 0; i < c->n_upstreams; i++)
    CHECK(c->upstreams[i].name != NULL && c->upstreams[i].type != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int initialized;
  config c, again;
  char *errors = NULL, *dump;
  size_t i;
  int r;

  if (!initialized) {
    /* Fixed values, so every run expands ${...} the same way. */
    setenv("FUZZ_A", "fuzz", 1);
    setenv("FUZZ_EMPTY", "", 1);
    unsetenv("FUZZ_UNSET");
    initialized = 1;
  }

  r = config_parse("fuzz.ini", (const char *)data, size, &c, &errors);
  if (r != 0) {
    CHECK(errors != NULL && errors[0] != '\0');
    CHECK(errors[strlen(errors) - 1] == '\n');
    CHECK(c.consumers == NULL && c.path == NULL);
    free(errors);
    return 0;
  }
  CHECK(errors == NULL);
  check_config(&c);

  dump = config_dump(&c);
  CHECK(dump != NULL);
  r = config_parse("dump.ini", dump, strlen(dump), &again, &errors);
  if (r != 0) {
    fprintf(stderr, "fuzz_config: the dump does not parse:\n%s---\n%s", dump,
            errors ? errors : "");
    abort();
  }
  check_config(&again);
  CHECK(again.n_consumers == c.n_consumers);
  CHECK(again.n_upstreams == c.n_upstreams);
  for (i = 0; i < c.n_consumers; i++) {
    CHECK(strcmp(again.consumers[i].name, c.consumers[i].name) == 0);
    CHECK(again.consumers[i].source == c.consumers[i].source);
    CHECK(again.consumers[i].sink == c.consumers[i].sink);
  }
  config_free(&again);
  free(dump);
  config_free(&c);
  return 0;
}
