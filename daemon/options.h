/* Option tables: one table per section kind, source type and sink type.
 *
 * A table is an array of `option` ending with an entry whose name is NULL.
 * Each entry says how to parse one INI key into a field of a configuration
 * struct (found by offsetof), its default and a one-line help. The same table
 * drives parsing, unknown-key errors, `tether check` output and
 * docs/config.md, so an option exists in exactly one place.
 */
#ifndef TETHER_DAEMON_OPTIONS_H
#define TETHER_DAEMON_OPTIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum option_kind {
  OPT_STRING,   /* char *: owned by the struct, freed by options_free */
  OPT_INT,      /* int64_t within [min, max] */
  OPT_BOOL,     /* bool: true|false|yes|no|on|off|1|0 */
  OPT_DURATION, /* uint64_t milliseconds: 0, 250ms, 30s, 5m, 1h, 1h30m */
  OPT_SIZE,     /* uint64_t bytes: 512, 64KiB, 10MiB, 1GiB (also KB, MB) */
  OPT_ENUM,     /* int: index into choices */
  OPT_MODE,     /* int64_t: octal permission bits, 0600, 0660 (<= 0777) */
} option_kind;

enum {
  OPT_REQUIRED = 1 << 0, /* no default: the key must be given */
  OPT_SECRET = 1 << 1,   /* printed as *** by `tether check`, never logged */
};

typedef struct option {
  const char *name;
  option_kind kind;
  const char *def; /* default as a user would write it; NULL = none */
  size_t offset;   /* offsetof(conf struct, field) */
  const char *help;
  /* Bounds for OPT_INT, OPT_DURATION (ms) and OPT_SIZE (bytes). When both
   * are 0 the option is unbounded (non-negative for durations and sizes). */
  int64_t min, max;
  const char *const *choices; /* OPT_ENUM: NULL-terminated */
  unsigned flags;             /* OPT_REQUIRED, OPT_SECRET */
} option;

/* Writes every default of table into conf. Strings are strdup'd. Returns 0
 * or UV_ENOMEM. A default that does not parse is a programmer error. */
int options_set_defaults(const option *table, void *conf);

/* Parses text for option o into conf. On failure returns UV_EINVAL and
 * writes what was expected into err, e.g. "expected an integer 1..1000". */
int options_parse_value(const option *o, const char *text, void *conf,
                        char *err, size_t errlen);

/* Formats the current value of o in conf the way a user would write it
 * (durations as 1s, 250ms, 1h30m; sizes as 64KiB; enums by name). Secrets
 * are not masked here; callers mask with the OPT_SECRET flag. */
void options_format_value(const option *o, const void *conf, char *out,
                          size_t outlen);

/* Frees the OPT_STRING fields of conf (not conf itself). */
void options_free(const option *table, void *conf);

/* Finds an option by name, or NULL. */
const option *options_find(const option *table, const char *name);

/* Index of o in table, for the `explicit` bitmask passed to check hooks. */
size_t options_index(const option *table, const option *o);

/* Value parsers, shared with anything else that reads these units. */
int options_parse_duration(const char *text, uint64_t *ms);
int options_parse_size(const char *text, uint64_t *bytes);
void options_format_duration(uint64_t ms, char *out, size_t outlen);
void options_format_size(uint64_t bytes, char *out, size_t outlen);

#endif
