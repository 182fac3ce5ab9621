/* The durable cursor store: one SQLite file in WAL mode.
 *
 * A cursor is keyed by (consumer_id, stream_name, subject_id) and follows the
 * rules of shared/protocols/notifications-cursors.md: advances are monotonic
 * (a smaller sequence, or the same sequence with another delivery id, is
 * refused), a reset needs a reason and is recorded in cursor_resets, and an
 * error report never moves the position.
 *
 * Beside the cursors, the file keeps per consumer what a source needs made
 * durable with them: the consumer's state (the identity of the stream its
 * cursor belongs to, and the highest seq ever assigned), a journal (values
 * by key) and an outbox (values by id). They change only through typed
 * operations of a group commit, in the same transaction as the cursor
 * advances, so a crash keeps both or neither.
 *
 * Two ways in:
 *  - synchronous calls (get, list, advance, reset, record_error, the
 *    loaders, removal and re-keying) for start-up, the local API and tests;
 *    they block on SQLite and on a store mutex;
 *  - the group commit (store_commit_start), which applies a batch of advances
 *    and operations in one BEGIN IMMEDIATE transaction on libuv's thread pool
 *    and reports on the loop thread, so the loop never waits for fsync.
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
 * opened and created it again, empty (with every table of the schema), at
 * its path; nothing of the commit was applied. The caller commits again
 * everything it keeps there, not only what moved: every cursor (the extra
 * rows of STORE_OP_CURSOR_PUT too), each consumer's state
 * (STORE_OP_CONSUMER), journal and outbox, and the paused flags. */
#define STORE_ERECREATED (-30009)
#define STORE_EEXIST     (-30010) /* a cursor already has the target key */

/* Bounds (stricter than the upstream rules; see the protocol document). */
#define STORE_MAX_KEY_FIELD 256  /* bytes of valid UTF-8 per key field */
#define STORE_MAX_POSITION  4096 /* bytes */
#define STORE_MAX_REASON    1024 /* bytes */
#define STORE_MAX_ERROR     2048 /* last_error is cut to this, on UTF-8 */
#define STORE_MAX_NAME      1024 /* bytes of a journal key */
#define STORE_MAX_IDENTITY  4096 /* bytes of a consumer's stream identity */
#define STORE_MAX_VALUE     (1024 * 1024) /* bytes of a journal or outbox value */

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

/* A consumer's row of consumer_state. Strings owned by the struct; free
 * with store_consumer_free. */
typedef struct store_consumer {
  char *consumer_id;
  char *identity;     /* "" = unknown (a row migrated from schema 2) */
  int64_t high_seq;   /* the highest seq a commit knew of; never decreases */
  int64_t updated_at; /* ns since the epoch */
} store_consumer;

/* One journal entry of a consumer. key is owned; value is owned, len
 * bytes, with a NUL after them (so a text value reads as a string). */
typedef struct store_journal_entry {
  char *key;
  void *value;
  size_t len;
  int64_t updated_at;
} store_journal_entry;

/* One outbox entry of a consumer; value as in store_journal_entry. */
typedef struct store_outbox_entry {
  uint64_t id;
  void *value;
  size_t len;
  int64_t created_at; /* when the id was first put */
} store_outbox_entry;

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

/* A consumer's state row; STORE_ENOTFOUND when it has none. out is
 * owned by the caller on success (store_consumer_free). The consumer id is
 * trimmed, as in a key. */
int store_get_consumer(store *s, const char *consumer_id, store_consumer *out,
                       char *err, size_t errlen);
/* Every consumer state row, ordered by consumer id (bytewise). *out is
 * owned by the caller (store_consumers_free); NULL when *n is 0. */
int store_list_consumers(store *s, store_consumer **out, size_t *n, char *err,
                         size_t errlen);
/* A consumer's journal, ordered by key (bytewise), and its outbox, ordered
 * by id. *out is owned by the caller (the matching free); NULL when *n is
 * 0, as for a consumer the store knows nothing of. */
int store_load_journal(store *s, const char *consumer_id,
                       store_journal_entry **out, size_t *n, char *err,
                       size_t errlen);
int store_load_outbox(store *s, const char *consumer_id,
                      store_outbox_entry **out, size_t *n, char *err,
                      size_t errlen);

/* Removes the cursor row of key; its reset audit rows stay, as history.
 * STORE_ENOTFOUND when there is none. */
int store_remove_cursor(store *s, const store_key *key, char *err,
                        size_t errlen);
/* Removes, in one transaction, every row the store holds for a consumer:
 * its cursors, journal, outbox, state and flags (the reset audit stays, as
 * history). STORE_ENOTFOUND when there was nothing to remove. */
int store_remove_consumer(store *s, const char *consumer_id, char *err,
                          size_t errlen);
/* Moves the cursor row of from, unchanged but for its key, to the key to,
 * together with its reset audit rows, in one transaction: a cursor adopted
 * under a new key keeps its position, seq and history. STORE_ENOTFOUND when
 * from has no row, STORE_EEXIST when to has one, STORE_EINVAL when the two
 * are the same key. */
int store_rekey_cursor(store *s, const store_key *from, const store_key *to,
                       char *err, size_t errlen);

void store_cursor_free(store_cursor *c);
void store_cursors_free(store_cursor *v, size_t n);
void store_reset_records_free(store_reset_record *v, size_t n);
void store_consumer_free(store_consumer *c); /* NULL allowed */
void store_consumers_free(store_consumer *v, size_t n);
void store_journal_free(store_journal_entry *v, size_t n);
void store_outbox_free(store_outbox_entry *v, size_t n);

/* A short text for a STORE_E* code: "cursor not found", ... */
const char *store_strerror(int code);

/* The typed operations of a group commit. Which fields each reads:
 *
 *  JOURNAL_PUT     key.consumer_id, name (the journal key: 1 to
 *                  STORE_MAX_NAME bytes of UTF-8, stored byte for byte),
 *                  value/len (at most STORE_MAX_VALUE bytes): inserts or
 *                  replaces the entry.
 *  JOURNAL_DELETE  key.consumer_id, name. An absent entry is not an error.
 *  OUTBOX_PUT      key.consumer_id, id (at most INT64_MAX), value/len:
 *                  inserts, or replaces the value and keeps created_at.
 *  OUTBOX_DELETE   key.consumer_id, id. An absent entry is not an error.
 *  CURSOR_PUT      key (all three fields, as in an advance; the subject is
 *                  typically a scope), value/len = the position (at most
 *                  STORE_MAX_POSITION bytes), seq >= 0: an extra cursor row
 *                  written as given, not by the monotonic-advance rule,
 *                  except that last_sequence never decreases. It clears
 *                  last_error and sets last_delivered_at when seq grows;
 *                  the delivery id stays as it was ("" for a new row).
 *  ERROR           key, value/len = the error text: the rules of
 *                  store_record_error (trimmed, required, cut to
 *                  STORE_MAX_ERROR; position untouched; a missing row is
 *                  made at seq 0).
 *  CONSUMER        key.consumer_id, name = the stream identity (at most
 *                  STORE_MAX_IDENTITY bytes of UTF-8; "" = unknown; NULL
 *                  keeps the stored one), seq = high_seq >= 0: upserts the
 *                  consumer's state, high_seq = max(stored, seq).
 *
 * Fields a kind does not read are ignored. value may be NULL only with len
 * 0. The consumer id (and a cursor key) is trimmed as in store_key. */
typedef enum store_op_kind {
  STORE_OP_JOURNAL_PUT,
  STORE_OP_JOURNAL_DELETE,
  STORE_OP_OUTBOX_PUT,
  STORE_OP_OUTBOX_DELETE,
  STORE_OP_CURSOR_PUT,
  STORE_OP_ERROR,
  STORE_OP_CONSUMER,
} store_op_kind;

typedef struct store_op {
  store_op_kind kind;
  store_key key;
  const char *name; /* journal key, or identity */
  uint64_t id;      /* outbox id */
  const void *value;
  size_t len;
  int64_t seq; /* cursor put: last_sequence; consumer: high_seq */
  int64_t now; /* 0 = the clock */
} store_op;

/* Checks an operation by the rules the commit applies, without the store:
 * 0, or STORE_EINVAL with the reason in err. A caller that stages
 * operations checks each when it is staged, since one invalid operation
 * fails the whole commit that carries it, every time it is retried. */
int store_op_check(const store_op *op, char *err, size_t errlen);

/* Group commit. status is 0 when the transaction committed (each advance
 * then has its own result in item_status: 0 or STORE_E*, with item_msg;
 * every operation was applied), or STORE_E* when the transaction as a whole
 * failed and nothing was applied (msg says why; item_status is status for
 * every advance). Runs on the loop thread; the arrays are borrowed for the
 * call. */
typedef void (*store_commit_cb)(void *data, int status, const char *msg,
                                const int *item_status,
                                const char *const *item_msg, size_t n);

/* Copies the n advances and the n_ops operations (every string and value:
 * both arrays are borrowed for the call only) and applies them in one
 * transaction on the thread pool of loop: first the advances, then the
 * operations in their order. A refused advance (STORE_EINVAL,
 * STORE_ENONMONO) is reported in its item_status and the rest commits; an
 * operation that is invalid or fails to write fails the whole commit
 * (status STORE_E*, msg naming the operation's index, kind and key), so a
 * crash or a failure never leaves a cursor without the operations that
 * went with it. A commit with operations is on disk when cb reports it
 * (fsync'd), since what follows it is told outside; one of advances alone
 * may be lost to a power cut, which costs duplicates only. One commit at a
 * time per store. Each commit, an empty one
 * too, first checks that the path still names the file the store has
 * open, and otherwise creates it again (STORE_ERECREATED: nothing of this
 * commit applied). Returns 0 (cb will run exactly once) or UV_EINVAL /
 * UV_ENOMEM / UV_EBUSY (cb will not run). */
int store_commit_start(store *s, uv_loop_t *loop, const store_advance *reqs,
                       size_t n, const store_op *ops, size_t n_ops,
                       store_commit_cb cb, void *data);

/* Formats ns as the stored text layout 2006-01-02T15:04:05.000000000Z into
 * out (at least 31 bytes), and parses it back (0 or STORE_EINVAL). */
void store_format_time(int64_t ns, char *out, size_t outlen);
int store_parse_time(const char *text, int64_t *ns);

#endif
