#include "daemon/registry.h"

#include <string.h>

#include "daemon/upstream.h"

extern const source_type source_generate;
extern const sink_type sink_stdout;
extern const sink_type sink_file;
extern const sink_type sink_fifo;
extern const sink_type sink_exec;
extern const sink_type sink_socket;
extern const upstream_type upstream_pocketbase;
extern const upstream_type upstream_sse;
extern const upstream_type upstream_http_poll;

const source_type *const registry_sources[] = {
  &source_generate,
  NULL,
};

const sink_type *const registry_sinks[] = {
  &sink_stdout, &sink_file, &sink_fifo, &sink_exec, &sink_socket, NULL,
};

const upstream_type *const registry_upstreams[] = {
  &upstream_pocketbase,
  &upstream_sse,
  &upstream_http_poll,
  NULL,
};

const char *const registry_upstream_types[] = {
  "pocketbase", "lockd", "eventstream", "synchro", "sse", "http-poll", NULL,
};

const source_type *registry_source(const char *name) {
  size_t i;

  for (i = 0; registry_sources[i] != NULL; i++)
    if (strcmp(registry_sources[i]->name, name) == 0)
      return registry_sources[i];
  return NULL;
}

const sink_type *registry_sink(const char *name) {
  size_t i;

  for (i = 0; registry_sinks[i] != NULL; i++)
    if (strcmp(registry_sinks[i]->name, name) == 0)
      return registry_sinks[i];
  return NULL;
}

const upstream_type *registry_upstream(const char *name) {
  size_t i;

  for (i = 0; registry_upstreams[i] != NULL; i++)
    if (strcmp(registry_upstreams[i]->name, name) == 0)
      return registry_upstreams[i];
  return NULL;
}
