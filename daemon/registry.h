/* The source and sink types this build knows, in the order docs list them. */
#ifndef TETHER_DAEMON_REGISTRY_H
#define TETHER_DAEMON_REGISTRY_H

#include "daemon/sink.h"
#include "daemon/source.h"

/* NULL-terminated. */
extern const source_type *const registry_sources[];
extern const sink_type *const registry_sinks[];

/* Upstream types a later version consumes; `[upstream]` sections may name
 * them today. NULL-terminated. */
extern const char *const registry_upstream_types[];

const source_type *registry_source(const char *name);
const sink_type *registry_sink(const char *name);

#endif
