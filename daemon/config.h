/* Configuration: one INI file, parsed by inih, driven by option tables.
 *
 * The file has a [daemon] section, any number of [upstream NAME] sections
 * and one or more [consumer NAME] sections. Values may reference the
 * environment as ${VAR} or ${VAR:-default}. Every error names the file, the
 * line, the section, the key, the value and what was expected.
 */
#ifndef TETHER_DAEMON_CONFIG_H
#define TETHER_DAEMON_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "daemon/options.h"
#include "daemon/sink.h"
#include "daemon/source.h"

enum { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

/* [daemon], filled by config_daemon_options. */
typedef struct daemon_conf {
  char *state;                   /* path of the cursor store */
  uint64_t checkpoint_interval;  /* ms between group commits */
  uint64_t shutdown_timeout;     /* ms to drain in-flight work on SIGTERM */
  int log_level;                 /* log_level enum of daemon/log.h */
  int log_format;                /* LOG_FORMAT_* */
  char *log_file;                /* "" = stderr */
  uint64_t status_interval;      /* ms between status lines; 0 = never */
  bool exit_when_done;           /* exit once every finite source is done */
  char *socket;                  /* the local API's unix socket; "" = none */
  int64_t socket_mode;           /* its permission bits */
  char *socket_group;            /* its group; "" = unchanged */
  char *http_listen;             /* HOST:PORT for probes; "" = none */
  int64_t api_max_connections;   /* open at once on the unix socket */
  int64_t http_max_connections;  /* open at once on http_listen, apart */
  uint64_t api_request_timeout;  /* ms a started request may take */
  uint64_t api_idle_timeout;     /* ms a connection may wait for a request */
  uint64_t ready_commit_timeout; /* ms of failing commits before not ready */
} daemon_conf;

/* What a consumer does when its cursor belongs to another stream than the
 * one its configuration now reads (source_type.identity). */
enum { STREAM_CHANGE_REFUSE, STREAM_CHANGE_KEEP, STREAM_CHANGE_RESTART };

/* The keys every [consumer] section has, whatever its source and sink. */
typedef struct consumer_conf {
  char *source;                 /* built-in source type, e.g. generate */
  char *upstream;               /* or the [upstream NAME] it reads */
  char *sink;                   /* stdout | file:PATH */
  int64_t max_in_flight;        /* the delivery window */
  uint64_t max_in_flight_bytes; /* its bound in bytes of envelope lines */
  int on_stream_change;         /* STREAM_CHANGE_* */
  uint64_t retry_min;           /* ms, first backoff after a sink failure */
  uint64_t retry_max;           /* ms, cap of the sink retry backoff */
  int64_t max_attempts;         /* failed attempts before on_fail; 0 = never */
  char *on_fail;                /* retry | skip | dead_letter:PATH */
} consumer_conf;

typedef struct config_kv {
  char *key, *value;
  int line;
} config_kv;

struct upstream_type;

/* [upstream NAME]. A type this version consumes (sse, http-poll) fills conf
 * through its option table and keeps its header.NAME keys in kv; any other
 * type keeps every key but type in kv, for a later version. */
typedef struct config_upstream {
  char *name;
  char *type;
  int line;
  const struct upstream_type *type_reg; /* NULL: not consumed yet */
  void *conf;                           /* filled by type_reg->options */
  config_kv *kv;                        /* in file order */
  size_t n_kv;
} config_upstream;

typedef struct config_consumer {
  char *name;
  int line; /* of the section header */
  consumer_conf common;
  const config_upstream *upstream; /* the upstream it reads, or NULL */
  const source_type *source;
  void *source_conf; /* filled by source->options */
  const sink_type *sink;
  char *sink_arg;  /* the part after "file:"; NULL when the type takes none */
  void *sink_conf; /* filled by sink->options */
  /* max_attempts and on_fail, parsed; dead_letter points into
   * common.on_fail. */
  sink_policy policy;
} config_consumer;

typedef struct config {
  char *path; /* as given, or "(embedded default)" */
  daemon_conf daemon;
  config_upstream *upstreams;
  size_t n_upstreams;
  config_consumer *consumers;
  size_t n_consumers;
} config;

extern const option config_daemon_options[];
extern const option config_consumer_options[];

/* The configuration `tether run` uses without -c: a generate source writing
 * to stdout, state under ./.tether/. */
extern const char config_embedded_default[];

/* Parses text (len bytes, need not be NUL-terminated) that came from path.
 * On success returns 0 and fills *out (free with config_free). On failure
 * returns UV_EINVAL and sets *errors to every problem found, one per line,
 * each "path:line: [section] key = "value": what was expected"; the caller
 * frees it. The environment is read with getenv. */
int config_parse(const char *path, const char *text, size_t len, config *out,
                 char **errors);

/* Parses an on_fail value (retry, skip or dead_letter:PATH) into the
 * on_fail and dead_letter fields of out; dead_letter points into text.
 * Returns 0, or UV_EINVAL with what was expected in err. */
int config_parse_on_fail(const char *text, sink_policy *out, char *err,
                         size_t errlen);

/* Reads path and parses it; an unreadable file is an error in *errors. */
int config_load(const char *path, config *out, char **errors);

/* Frees everything config_parse allocated; *c is zeroed. */
void config_free(config *c);

/* The effective configuration as INI text, defaults filled in and secrets
 * masked as ***. The caller frees the string. */
char *config_dump(const config *c);

/* docs/config.md, generated from the option tables. The caller frees it. */
char *config_docs_markdown(void);

#endif
