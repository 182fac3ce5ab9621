/* Levelled, structured logs: one line per record, text or JSON.
 *
 *   log_info("consumer started", LS("consumer", name), LU("seq", seq));
 *
 * text:  2026-11-22T23:12:32.123Z info consumer started consumer=demo seq=4
 * json:  {"time":"2026-11-22T23:12:32.123Z","level":"info",
 *         "msg":"consumer started","consumer":"demo","seq":4}
 *
 * The level is checked before any argument is formatted. Log where a decision
 * is made (the consumer choosing to back off), not at every layer an error
 * passes through.
 */
#ifndef TETHER_DAEMON_LOG_H
#define TETHER_DAEMON_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum log_level {
  LOG_DEBUG,
  LOG_INFO,
  LOG_WARN,
  LOG_ERROR,
  LOG_OFF,
} log_level;

typedef enum log_field_type {
  LOG_F_END,
  LOG_F_STR,
  LOG_F_INT,
  LOG_F_UINT,
  LOG_F_DOUBLE,
  LOG_F_BOOL,
} log_field_type;

typedef struct log_field {
  log_field_type type;
  const char *key;
  union {
    const char *s;
    int64_t i;
    uint64_t u;
    double d;
    bool b;
  } v;
} log_field;

#define LS(k, val) ((log_field){ LOG_F_STR, (k), { .s = (val) } })
#define LI(k, val) ((log_field){ LOG_F_INT, (k), { .i = (int64_t)(val) } })
#define LU(k, val) ((log_field){ LOG_F_UINT, (k), { .u = (uint64_t)(val) } })
#define LD(k, val) ((log_field){ LOG_F_DOUBLE, (k), { .d = (double)(val) } })
#define LB(k, val) ((log_field){ LOG_F_BOOL, (k), { .b = (bool)(val) } })
#define LOG__END   ((log_field){ LOG_F_END, NULL, { .s = NULL } })

extern log_level log__level;

#define LOG__AT(lvl, ...)                                                      \
  do {                                                                         \
    if ((lvl) >= log__level)                                                   \
      log__emit((lvl), __VA_ARGS__, LOG__END);                                 \
  } while (0)

#define log_debug(...) LOG__AT(LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  LOG__AT(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  LOG__AT(LOG_WARN, __VA_ARGS__)
#define log_error(...) LOG__AT(LOG_ERROR, __VA_ARGS__)

/* Names of the levels, for the log_level option: "debug", "info", ... */
extern const char *const log_level_names[];

/* Sets the threshold and the format (LOG_FORMAT_* of daemon/config.h). */
void log_configure(log_level level, int format);

/* Sends records to path (appending) instead of stderr; NULL or "" returns to
 * stderr. Returns 0 or a negative errno; on failure the old target stays. */
int log_open(const char *path);

/* Reopens the current log file (SIGHUP, after logrotate moved it). */
int log_reopen(void);

/* Closes a log file opened by log_open. */
void log_close(void);

static inline bool log_enabled(log_level level) {
  return level >= log__level;
}

/* The entry point of the macros; fields end with LOG__END. */
void log__emit(log_level level, const char *msg, ...);

#endif
