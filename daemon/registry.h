/* The source and sink types this build knows, in the order docs list them. */
#ifndef TETHER_DAEMON_REGISTRY_H
#define TETHER_DAEMON_REGISTRY_H

#include "daemon/sink.h"
#include "daemon/source.h"

/* NULL-terminated. */
extern const source_type *const registry_sources[];
extern const sink_type *const registry_sinks[];

struct upstream_type;

/* Every upstream type a [upstream] section may name, those consumed by a
 * later version included. NULL-terminated. */
extern const char *const registry_upstream_types[];

/* The upstream types this version consumes. NULL-terminated. */
extern const struct upstream_type *const registry_upstreams[];

const source_type *registry_source(const char *name);
/* NULL for an unknown type and for one this version does not consume. */
const struct upstream_type *registry_upstream(const char *name);
const sink_type *registry_sink(const char *name);

#endif
