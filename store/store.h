/* The durable cursor store: one SQLite file in WAL mode.
 *
 * A cursor is keyed by (consumer_id, stream_name, subject_id) and follows the
 * rules of shared/protocols/notifications-cursors.md: advances are monotonic
 * (a smaller sequence, or the same sequence with another delivery id, is
 * refused), a reset needs a reason and is recorded in cursor_resets, and an
 * error report never moves the position.
 *
 * Two ways in:
 *  - synchronous calls (get, list, advance, reset, record_error) for start-up,
 *    the local API and tests; they block on SQLite and on a store mutex;
 *  - the group commit (store_commit_start), which applies a batch of advances
 *    in one BEGIN IMMEDIATE transaction on libuv's thread pool and reports on
 *    the loop thread, so the loop never waits for fsync.
 */
#ifndef TETHER_STORE_STORE_H
#define TETHER_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

/* Error codes, negative and apart from libuv's UV_E* range. */
#define STORE_ENOTFOUND (-30001) /* cursor not found */
#define STORE_EINVAL    (-30002) /* invalid cursor: key, sequence, bounds */
#define STORE_ENONMONO  (-30003) /* non-monotonic cursor advance */
#define STORE_EREASON   (-30004) /* reset reason required */
#define STORE_EIO       (-30005) /* SQLite or the file system failed */
#define STORE_EFULL     (-30006) /* no space left (SQLITE_FULL, ENOSPC) */
#define STORE_ECORRUPT  (-30007) /* not a tether state file, or damaged */
#define STORE_EBUSY     (-30008) /* in use by another process */
/* A group commit found the state file removed or replaced since it was
 * opened and created it again, empty, at its path; nothing of the commit
 * was applied. The caller commits every cursor it holds, not only the
 * moved ones, and whatever else it keeps there (paused flags). */
#define STORE_ERECREATED (-30009)

/* Bounds (stricter than the upstream rules; see the protocol document). */
#define STORE_MAX_KEY_FIELD 256  /* bytes of valid UTF-8 per key field */
#define STORE_MAX_POSITION  4096 /* bytes */
#define STORE_MAX_REASON    1024 /* bytes */
#define STORE_MAX_ERROR     2048 /* last_error is cut to this, on UTF-8 */

typedef struct store store;

typedef struct store_key {
  const char *consumer_id; /* required, trimmed */
  const char *stream_name; /* required, trimmed */
  const char *subject_id;  /* "" or NULL = an unscoped stream */
} store_key;

/* A row. Every string is owned by the struct; free with store_cursor_free.
 * Times are nanoseconds since the Unix epoch, UTC. */
typedef struct store_cursor {
  char *consumer_id, *stream_name, *subject_id;
  int64_t last_sequence;
  char *position;            /* opaque upstream cursor; "" when none */
  char *last_delivery_id;    /* "" when none */
  int64_t last_delivered_at; /* 0 = never (NULL in the table) */
  char *last_error;          /* "" when none */
  int64_t updated_at;
} store_cursor;

typedef struct store_advance {
  store_key key;
  int64_t last_sequence;   /* must be > 0 */
  const char *delivery_id; /* trimmed; NULL = "" */
  const char *position;    /* NULL = "" */
  int64_t delivered_at;    /* 0 = now */
  int64_t now;             /* 0 = the clock */
} store_advance;

typedef struct store_reset {
  store_key key;
  int64_t last_sequence;        /* must be >= 0 */
  const char *last_delivery_id; /* NULL = "" */
  const char *position;         /* NULL = "" */
  int64_t delivered_at;         /* 0 = NULL in the table (not "now") */
  const char *reason;           /* required, trimmed, recorded */
  int64_t now;                  /* 0 = the clock */
} store_reset;

typedef struct store_error {
  store_key key;
  const char *last_error; /* required, trimmed, cut to STORE_MAX_ERROR */
  int64_t now;            /* 0 = the clock */
} store_error;

typedef struct store_query {
  /* Exact filters; NULL or blank matches any. */
  const char *consumer_id, *stream_name, *subject_id;
  /* At most this many rows; <= 0 = unlimited. */
  int64_t limit;
} store_query;

/* One row of the reset audit table. */
typedef struct store_reset_record {
  char *consumer_id, *stream_name, *subject_id;
  int64_t old_sequence, new_sequence;
  char *old_position, *new_position;
  char *reason;
  int64_t at;
} store_reset_record;

/* Opens (creating if needed, with its directory) the state file at path,
 * checks its integrity, migrates its schema forward and takes an exclusive
 * lock so a second tether cannot share it. Returns 0 or STORE_E* with the
 * reason in err: a damaged file or one from a newer tether is
 * STORE_ECORRUPT, never silently replaced. */
int store_open(const char *path, store **out, char *err, size_t errlen);

/* Closes the store; no commit may be running. NULL is allowed. */
void store_close(store *s);

/* Whether store_open made the state file (a first start), as opposed to
 * opening one that existed, however empty. */
bool store_created(const store *s);

/* The state file's path; borrowed for the store's life. */
const char *store_path(const store *s);

/* The rows of the protocol document. Each returns 0 or STORE_E* with the
 * reason in err; out (may be NULL) receives the stored row after the call. */
int store_get(store *s, const store_key *key, store_cursor *out, char *err,
              size_t errlen);
int store_list(store *s, const store_query *q, store_cursor **out, size_t *n,
               char *err, size_t errlen);
int store_advance_cursor(store *s, const store_advance *r, store_cursor *out,
                         char *err, size_t errlen);
int store_reset_cursor(store *s, const store_reset *r, store_cursor *out,
                       char *err, size_t errlen);
int store_record_error(store *s, const store_error *r, store_cursor *out,
                       char *err, size_t errlen);

/* The reset audit, newest first; limit <= 0 = all. */
int store_list_resets(store *s, const store_key *key, int64_t limit,
                      store_reset_record **out, size_t *n, char *err,
                      size_t errlen);

/* An operator's pause of a consumer, kept across restarts. */
int store_set_paused(store *s, const char *consumer_id, bool paused, char *err,
                     size_t errlen);
/* *paused is false for a consumer never paused. */
int store_get_paused(store *s, const char *consumer_id, bool *paused, char *err,
                     size_t errlen);

void store_cursor_free(store_cursor *c);
void store_cursors_free(store_cursor *v, size_t n);
void store_reset_records_free(store_reset_record *v, size_t n);

/* A short text for a STORE_E* code: "cursor not found", ... */
const char *store_strerror(int code);

/* Group commit. status is 0 when the transaction committed (each item then
 * has its own result in item_status: 0 or STORE_E*, with item_msg), or
 * STORE_E* when the transaction as a whole failed and nothing was applied
 * (msg says why). Runs on the loop thread; the arrays are borrowed for the
 * call. */
typedef void (*store_commit_cb)(void *data, int status, const char *msg,
                                const int *item_status,
                                const char *const *item_msg, size_t n);

/* Copies the n requests and applies them in one transaction on the thread
 * pool of loop. One commit at a time per store. Each commit, n == 0 too,
 * first checks that the path still names the file the store has open, and
 * otherwise creates it again (STORE_ERECREATED). Returns 0 (cb will run
 * exactly once) or UV_ENOMEM / UV_EBUSY (cb will not run). */
int store_commit_start(store *s, uv_loop_t *loop, const store_advance *reqs,
                       size_t n, store_commit_cb cb, void *data);

/* Formats ns as the stored text layout 2006-01-02T15:04:05.000000000Z into
 * out (at least 31 bytes), and parses it back (0 or STORE_EINVAL). */
void store_format_time(int64_t ns, char *out, size_t outlen);
int store_parse_time(const char *text, int64_t *ns);

#endif
