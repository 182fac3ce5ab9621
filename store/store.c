#include "store/store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define container_of(ptr, type, member)                                        \
  ((type *)((char *)(ptr)-offsetof(type, member)))

#define NS_PER_SEC INT64_C(1000000000)

/* The length of the stored time text, 2006-01-02T15:04:05.000000000Z. */
#define TIME_TEXT_LEN 30

/* SQLite waits this long for another process's write lock before giving up
 * with SQLITE_BUSY; our own writes are serialized by the store mutex. */
#define BUSY_TIMEOUT_MS 5000

/* The message of one failed item of a group commit is cut to this. */
#define ITEM_MSG_MAX 512

/* ---- Schema ------------------------------------------------------------ */

/* Forward migrations. Entry i takes a file from user_version i to i + 1 and
 * runs in its own transaction together with the user_version bump, so a
 * crash leaves the file at one version or the next, never between. Append
 * new versions; never edit a shipped one. */
static const char *const migrations[] = {
  /* 1: the cursor table of the protocol document (section 7) plus the opaque
   * upstream position, and the reset audit of section 11. */
  "CREATE TABLE cursors ("
  "  consumer_id TEXT NOT NULL CHECK (trim(consumer_id) <> ''),"
  "  stream_name TEXT NOT NULL CHECK (trim(stream_name) <> ''),"
  "  subject_id TEXT NOT NULL DEFAULT '',"
  "  last_sequence INTEGER NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),"
  "  last_delivery_id TEXT NOT NULL DEFAULT '',"
  "  last_delivered_at TEXT,"
  "  last_error TEXT NOT NULL DEFAULT '',"
  "  updated_at TEXT NOT NULL,"
  "  position TEXT NOT NULL DEFAULT '',"
  "  PRIMARY KEY (consumer_id, stream_name, subject_id)"
  ");"
  "CREATE INDEX cursors_stream_sequence_idx"
  "  ON cursors (stream_name, last_sequence DESC) WHERE last_sequence > 0;"
  "CREATE TABLE cursor_resets ("
  "  id INTEGER PRIMARY KEY,"
  "  consumer_id TEXT NOT NULL,"
  "  stream_name TEXT NOT NULL,"
  "  subject_id TEXT NOT NULL,"
  "  old_sequence INTEGER NOT NULL,"
  "  new_sequence INTEGER NOT NULL,"
  "  old_position TEXT NOT NULL,"
  "  new_position TEXT NOT NULL,"
  "  reason TEXT NOT NULL,"
  "  at TEXT NOT NULL"
  ");"
  "CREATE INDEX cursor_resets_key_idx"
  "  ON cursor_resets (consumer_id, stream_name, subject_id, id);",
  /* 2: what an operator set on a consumer that outlives a restart (paused
   * stays paused until resumed). */
  "CREATE TABLE consumer_flags ("
  "  consumer_id TEXT PRIMARY KEY CHECK (trim(consumer_id) <> ''),"
  "  paused INTEGER NOT NULL DEFAULT 0,"
  "  updated_at TEXT NOT NULL"
  ");",
  /* 3: what a source makes durable beside its cursor, in the same
   * transaction: the consumer's state, a journal and an outbox. WITHOUT
   * ROWID because every lookup and scan is by the primary key, and the
   * rows are small. A file of schema 2 gets a consumer_state row per
   * consumer it knew, with an unknown identity and the highest seq it
   * recorded anywhere (a reset's old sequence included), so a seq
   * assigned before the upgrade is never assigned again. */
  "CREATE TABLE consumer_state ("
  "  consumer_id TEXT PRIMARY KEY CHECK (trim(consumer_id) <> ''),"
  "  identity TEXT NOT NULL DEFAULT '',"
  "  high_seq INTEGER NOT NULL DEFAULT 0 CHECK (high_seq >= 0),"
  "  updated_at TEXT NOT NULL"
  ") WITHOUT ROWID;"
  "CREATE TABLE journal ("
  "  consumer_id TEXT NOT NULL CHECK (trim(consumer_id) <> ''),"
  "  key TEXT NOT NULL CHECK (key <> ''),"
  "  value BLOB NOT NULL,"
  "  updated_at TEXT NOT NULL,"
  "  PRIMARY KEY (consumer_id, key)"
  ") WITHOUT ROWID;"
  "CREATE TABLE outbox ("
  "  consumer_id TEXT NOT NULL CHECK (trim(consumer_id) <> ''),"
  "  id INTEGER NOT NULL CHECK (id >= 0),"
  "  value BLOB NOT NULL,"
  "  created_at TEXT NOT NULL,"
  "  PRIMARY KEY (consumer_id, id)"
  ") WITHOUT ROWID;"
  "INSERT INTO consumer_state (consumer_id, identity, high_seq, updated_at)"
  "  SELECT consumer_id, '', max(seq), max(at) FROM ("
  "    SELECT consumer_id, last_sequence AS seq, updated_at AS at"
  "      FROM cursors"
  "    UNION ALL SELECT consumer_id, max(old_sequence, new_sequence), at"
  "      FROM cursor_resets"
  "    UNION ALL SELECT consumer_id, 0, updated_at FROM consumer_flags"
  "  ) GROUP BY consumer_id;",
};

#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

#define ROW_COLUMNS                                                            \
  "consumer_id, stream_name, subject_id, last_sequence, position, "            \
  "last_delivery_id, last_delivered_at, last_error, updated_at"

#define KEY_MATCH "consumer_id = ?1 AND stream_name = ?2 AND subject_id = ?3"

/* Cached statements. The advance statements share one parameter layout:
 * ?1-?3 key, ?4 sequence, ?5 delivery id, ?6 delivered_at, ?7 now,
 * ?8 position. */
enum {
  ST_BEGIN,
  ST_COMMIT,
  ST_ROLLBACK,
  ST_GET,
  ST_LOAD,
  ST_INSERT,
  ST_UPDATE,
  ST_REFRESH,
  ST_RESET,
  ST_AUDIT,
  ST_ERROR,
  ST_CURSOR_PUT,
  ST_JOURNAL_PUT,
  ST_JOURNAL_DELETE,
  ST_OUTBOX_PUT,
  ST_OUTBOX_DELETE,
  ST_CONSUMER_PUT,
  ST_CONSUMER_GET,
  ST_CONSUMER_LIST,
  ST_JOURNAL_LOAD,
  ST_OUTBOX_LOAD,
  ST_CURSOR_DELETE,
  ST_REKEY,
  ST_REKEY_RESETS,
  ST_REMOVE_CURSORS,
  ST_REMOVE_JOURNAL,
  ST_REMOVE_OUTBOX,
  ST_REMOVE_STATE,
  ST_REMOVE_FLAGS,
  ST__COUNT
};

#define CONSUMER_COLUMNS "consumer_id, identity, high_seq, updated_at"

static const char *const stmt_sql[ST__COUNT] = {
  [ST_BEGIN] = "BEGIN IMMEDIATE",
  [ST_COMMIT] = "COMMIT",
  [ST_ROLLBACK] = "ROLLBACK",
  [ST_GET] = "SELECT " ROW_COLUMNS " FROM cursors WHERE " KEY_MATCH,
  [ST_LOAD] = "SELECT last_sequence, last_delivery_id, position FROM cursors "
              "WHERE " KEY_MATCH,
  [ST_INSERT] = "INSERT INTO cursors (consumer_id, stream_name, subject_id, "
                "last_sequence, last_delivery_id, last_delivered_at, "
                "last_error, updated_at, position) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, ?8)",
  [ST_UPDATE] = "UPDATE cursors SET last_sequence = ?4, last_delivery_id = ?5, "
                "last_delivered_at = ?6, last_error = '', updated_at = ?7, "
                "position = ?8 WHERE " KEY_MATCH,
  /* A replay keeps what the first delivery recorded, and fills only what
   * is missing (a reset leaves delivered_at NULL and may clear the
   * position). */
  [ST_REFRESH] = "UPDATE cursors SET "
                 "last_delivered_at = coalesce(last_delivered_at, ?6), "
                 "last_error = '', updated_at = ?7, "
                 "position = CASE WHEN position = '' THEN ?8 ELSE position END "
                 "WHERE " KEY_MATCH,
  [ST_RESET] = "INSERT INTO cursors (consumer_id, stream_name, subject_id, "
               "last_sequence, last_delivery_id, last_delivered_at, "
               "last_error, updated_at, position) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, '', ?7, ?8) "
               "ON CONFLICT (consumer_id, stream_name, subject_id) DO UPDATE "
               "SET last_sequence = excluded.last_sequence, "
               "last_delivery_id = excluded.last_delivery_id, "
               "last_delivered_at = excluded.last_delivered_at, "
               "last_error = '', updated_at = excluded.updated_at, "
               "position = excluded.position",
  [ST_AUDIT] = "INSERT INTO cursor_resets (consumer_id, stream_name, "
               "subject_id, old_sequence, new_sequence, old_position, "
               "new_position, reason, at) "
               "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
  [ST_ERROR] = "INSERT INTO cursors (consumer_id, stream_name, subject_id, "
               "last_sequence, last_delivery_id, last_delivered_at, "
               "last_error, updated_at, position) "
               "VALUES (?1, ?2, ?3, 0, '', NULL, ?4, ?5, '') "
               "ON CONFLICT (consumer_id, stream_name, subject_id) DO UPDATE "
               "SET last_error = excluded.last_error, "
               "updated_at = excluded.updated_at",
  /* ?1-?3 key, ?4 sequence, ?5 now, ?6 position. In an upsert's SET every
   * right-hand side reads the stored row, so the CASE sees the old
   * sequence. */
  [ST_CURSOR_PUT] =
      "INSERT INTO cursors (consumer_id, stream_name, subject_id, "
      "last_sequence, last_delivery_id, last_delivered_at, last_error, "
      "updated_at, position) "
      "VALUES (?1, ?2, ?3, ?4, '', CASE WHEN ?4 > 0 THEN ?5 END, '', ?5, ?6) "
      "ON CONFLICT (consumer_id, stream_name, subject_id) DO UPDATE SET "
      "last_delivered_at = CASE WHEN excluded.last_sequence > last_sequence "
      "THEN excluded.updated_at ELSE last_delivered_at END, "
      "last_sequence = max(last_sequence, excluded.last_sequence), "
      "last_error = '', updated_at = excluded.updated_at, "
      "position = excluded.position",
  /* ?1 consumer, ?2 key or id, ?3 value, ?4 now. */
  [ST_JOURNAL_PUT] = "INSERT INTO journal (consumer_id, key, value, "
                     "updated_at) VALUES (?1, ?2, ?3, ?4) "
                     "ON CONFLICT (consumer_id, key) DO UPDATE SET "
                     "value = excluded.value, updated_at = excluded.updated_at",
  [ST_JOURNAL_DELETE] = "DELETE FROM journal WHERE consumer_id = ?1 AND "
                        "key = ?2",
  [ST_OUTBOX_PUT] = "INSERT INTO outbox (consumer_id, id, value, created_at) "
                    "VALUES (?1, ?2, ?3, ?4) "
                    "ON CONFLICT (consumer_id, id) DO UPDATE SET "
                    "value = excluded.value",
  [ST_OUTBOX_DELETE] = "DELETE FROM outbox WHERE consumer_id = ?1 AND id = ?2",
  /* ?1 consumer, ?2 identity (NULL keeps the stored one), ?3 high seq,
   * ?4 now. */
  [ST_CONSUMER_PUT] = "INSERT INTO consumer_state (" CONSUMER_COLUMNS ") "
                      "VALUES (?1, coalesce(?2, ''), ?3, ?4) "
                      "ON CONFLICT (consumer_id) DO UPDATE SET "
                      "identity = coalesce(?2, identity), "
                      "high_seq = max(high_seq, excluded.high_seq), "
                      "updated_at = excluded.updated_at",
  [ST_CONSUMER_GET] = "SELECT " CONSUMER_COLUMNS " FROM consumer_state "
                      "WHERE consumer_id = ?1",
  [ST_CONSUMER_LIST] = "SELECT " CONSUMER_COLUMNS " FROM consumer_state "
                       "ORDER BY consumer_id",
  [ST_JOURNAL_LOAD] = "SELECT key, value, updated_at FROM journal "
                      "WHERE consumer_id = ?1 ORDER BY key",
  [ST_OUTBOX_LOAD] = "SELECT id, value, created_at FROM outbox "
                     "WHERE consumer_id = ?1 ORDER BY id",
  [ST_CURSOR_DELETE] = "DELETE FROM cursors WHERE " KEY_MATCH,
  /* ?1-?3 the old key, ?4-?6 the new one. */
  [ST_REKEY] = "UPDATE cursors SET consumer_id = ?4, stream_name = ?5, "
               "subject_id = ?6 WHERE " KEY_MATCH,
  [ST_REKEY_RESETS] = "UPDATE cursor_resets SET consumer_id = ?4, "
                      "stream_name = ?5, subject_id = ?6 WHERE " KEY_MATCH,
  [ST_REMOVE_CURSORS] = "DELETE FROM cursors WHERE consumer_id = ?1",
  [ST_REMOVE_JOURNAL] = "DELETE FROM journal WHERE consumer_id = ?1",
  [ST_REMOVE_OUTBOX] = "DELETE FROM outbox WHERE consumer_id = ?1",
  [ST_REMOVE_STATE] = "DELETE FROM consumer_state WHERE consumer_id = ?1",
  [ST_REMOVE_FLAGS] = "DELETE FROM consumer_flags WHERE consumer_id = ?1",
};

/* List statements are cached per shape: bit 0-2 = consumer, stream and
 * subject filters, bit 3 = a limit. */
#define LIST_CONSUMER 1
#define LIST_STREAM   2
#define LIST_SUBJECT  4
#define LIST_LIMIT    8
#define LIST_SHAPES   16

/* Reset audit statements: bit 0 = by key, bit 1 = a limit. */
#define RESETS_KEY    1
#define RESETS_LIMIT  2
#define RESETS_SHAPES 4

struct store {
  char *path;     /* owned */
  int lock_fd;    /* holds the flock on <path>.lock; -1 when not open */
  sqlite3 *db;    /* owned; opened SQLITE_OPEN_FULLMUTEX; NULL after a
                     failed recreate, until one succeeds */
  bool created;   /* store_open made the file: a first start */
  dev_t dev;      /* the identity of the file db has open, to tell */
  ino_t ino;      /* whether the path still names it */
  bool mu_init;   /* whether mu needs destroying */
  bool in_commit; /* a group commit is queued; loop thread only */
  bool sync_full; /* the connection runs synchronous=FULL (set_pragmas) */
  /* One connection must not interleave transactions, so every use of db
   * (synchronous calls and the commit worker) holds this mutex. */
  pthread_mutex_t mu;
  sqlite3_stmt *stmts[ST__COUNT];
  sqlite3_stmt *list_stmts[LIST_SHAPES];
  sqlite3_stmt *resets_stmts[RESETS_SHAPES];
};

/* ---- Messages ---------------------------------------------------------- */

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int set_err(char *err, size_t errlen, int code, const char *fmt, ...) {
  va_list ap;

  if (err != NULL && errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

static void clear_err(char *err, size_t errlen) {
  if (err != NULL && errlen > 0)
    err[0] = '\0';
}

const char *store_strerror(int code) {
  switch (code) {
  case 0:
    return "ok";
  case STORE_ENOTFOUND:
    return "cursor not found";
  case STORE_EINVAL:
    return "invalid cursor";
  case STORE_ENONMONO:
    return "non-monotonic cursor advance";
  case STORE_EREASON:
    return "reset reason required";
  case STORE_EIO:
    return "state file I/O error";
  case STORE_EFULL:
    return "no space left for the state file";
  case STORE_ECORRUPT:
    return "state file damaged or not a tether state file";
  case STORE_EBUSY:
    return "state file in use by another process";
  case STORE_ERECREATED:
    return "state file removed or replaced; created again";
  case STORE_EEXIST:
    return "cursor already exists";
  default:
    return uv_strerror(code);
  }
}

/* Maps a failed SQLite call to a STORE_E* code and a message naming the
 * state file, what we were doing, SQLite's reason and, for I/O failures,
 * the OS's. */
static int db_error(store *s, int rc, const char *what, char *err,
                    size_t errlen) {
  int prim = rc & 0xff;
  int sys = sqlite3_system_errno(s->db);
  const char *msg = sqlite3_errmsg(s->db);
  bool os =
      prim == SQLITE_IOERR || prim == SQLITE_CANTOPEN || prim == SQLITE_FULL;
  int code;

  if (prim == SQLITE_CORRUPT || prim == SQLITE_NOTADB)
    return set_err(err, errlen, STORE_ECORRUPT,
                   "state file %s is damaged or is not a tether state file "
                   "(%s: %s); move it aside to start from scratch, or "
                   "restore a backup",
                   s->path, what, msg);
  if (prim == SQLITE_FULL ||
      (prim == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT)))
    code = STORE_EFULL;
  else if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
    code = STORE_EBUSY;
  else
    code = STORE_EIO;
  /* SQLite says "readonly database" both for the file and for a directory
   * where it cannot create the -wal and -shm files; name both. */
  if (prim == SQLITE_READONLY)
    return set_err(err, errlen, code,
                   "state file %s: %s: %s; tether must be able to write the "
                   "file and create %s-wal and %s-shm beside it",
                   s->path, what, msg, s->path, s->path);
  if (os && sys != 0)
    return set_err(err, errlen, code, "state file %s: %s: %s (%s)", s->path,
                   what, msg, strerror(sys));
  return set_err(err, errlen, code, "state file %s: %s: %s", s->path, what,
                 msg);
}

static int errno_code(int e) {
  return e == ENOSPC || e == EDQUOT ? STORE_EFULL : STORE_EIO;
}

/* After the state file vanished and making it again failed, there is no
 * connection until a group commit manages it (see recreate_locked). */
static int db_lost(store *s, char *err, size_t errlen) {
  return set_err(err, errlen, STORE_EIO,
                 "state file %s is not open: it was removed while tether "
                 "ran, and creating it again failed so far",
                 s->path);
}

static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp);

/* Writes s into out as a Go-style quoted string, cut with "..." when it does
 * not fit, for error messages about ids of any length. A byte that does not
 * start valid UTF-8 is written as \xNN, so the message is valid UTF-8 for
 * the log and the API's JSON whatever the id held. */
static void quote(const char *s, size_t n, char *out, size_t outlen) {
  size_t o = 0, i, seq;
  uint32_t cp;

  assert(outlen >= 8);
  out[o++] = '"';
  for (i = 0; i < n; i += seq) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    size_t k;

    seq = 1;
    if (c >= 0x80) {
      seq = utf8_decode((const unsigned char *)s + i, n - i, &cp);
      if (seq == 0) {
        seq = 1;
        snprintf(esc, sizeof esc, "\\x%02x", c);
      } else {
        memcpy(esc, s + i, seq);
        esc[seq] = '\0';
      }
    } else if (c == '"' || c == '\\')
      snprintf(esc, sizeof esc, "\\%c", c);
    else if (c == '\n')
      snprintf(esc, sizeof esc, "\\n");
    else if (c == '\t')
      snprintf(esc, sizeof esc, "\\t");
    else if (c == '\r')
      snprintf(esc, sizeof esc, "\\r");
    else if (c < 0x20 || c == 0x7f)
      snprintf(esc, sizeof esc, "\\x%02x", c);
    else
      snprintf(esc, sizeof esc, "%c", c);
    k = strlen(esc);
    /* Keep room for "...", the closing quote and the NUL. */
    if (o + k + 5 > outlen) {
      memcpy(out + o, "...", 3);
      o += 3;
      break;
    }
    memcpy(out + o, esc, k);
    o += k;
  }
  out[o++] = '"';
  out[o] = '\0';
}

/* ---- Text rules -------------------------------------------------------- */

typedef struct slice {
  const char *p;
  size_t n;
} slice;

static slice slice_of(const char *s) {
  slice r = { s != NULL ? s : "", s != NULL ? strlen(s) : 0 };
  return r;
}

static bool slice_eq(slice a, slice b) {
  return a.n == b.n && memcmp(a.p, b.p, a.n) == 0;
}

/* Decodes one well-formed UTF-8 sequence at p (overlong forms, surrogates and
 * values past U+10FFFF are ill-formed, as in Go's utf8 package). Returns its
 * length, or 0 when p does not start one. */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *cp) {
  uint32_t c;
  size_t len, i;

  if (n == 0)
    return 0;
  if (p[0] < 0x80) {
    *cp = p[0];
    return 1;
  }
  if (p[0] >= 0xc2 && p[0] <= 0xdf) {
    len = 2;
    c = p[0] & 0x1f;
  } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
    len = 3;
    c = p[0] & 0x0f;
  } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
    len = 4;
    c = p[0] & 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (i = 1; i < len; i++) {
    if ((p[i] & 0xc0) != 0x80)
      return 0;
    c = c << 6 | (p[i] & 0x3f);
  }
  if ((len == 3 && c < 0x800) || (len == 4 && c < 0x10000) || c > 0x10ffff ||
      (c >= 0xd800 && c <= 0xdfff))
    return 0;
  *cp = c;
  return len;
}

static bool utf8_valid(slice s) {
  const unsigned char *p = (const unsigned char *)s.p;
  size_t i = 0, k;
  uint32_t cp;

  while (i < s.n) {
    k = utf8_decode(p + i, s.n - i, &cp);
    if (k == 0)
      return false;
    i += k;
  }
  return true;
}

/* Go's unicode.IsSpace, which strings.TrimSpace uses: the White_Space
 * property, i.e. ASCII \t \n \v \f \r and space, U+0085 (NEL), U+00A0 (NBSP)
 * and the Zs, Zl and Zp characters. U+180E and U+200B are deliberately
 * absent: Unicode no longer counts them as spaces, and neither does Go. */
static bool is_space(uint32_t cp) {
  static const uint32_t spaces[] = {
    0x0009, 0x000a, 0x000b, 0x000c, 0x000d, 0x0020, 0x0085, 0x00a0, 0x1680,
    0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008,
    0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
  };
  size_t i;

  for (i = 0; i < sizeof spaces / sizeof spaces[0]; i++)
    if (spaces[i] == cp)
      return true;
  return false;
}

/* strings.TrimSpace: drops whitespace runes from both ends. A byte that is
 * not well-formed UTF-8 stops the trim, as Go's decoder yields U+FFFD for
 * it. */
static slice trim(slice s) {
  const unsigned char *p = (const unsigned char *)s.p;
  size_t start = 0, end = s.n, k, i;
  uint32_t cp;

  while (start < end) {
    k = utf8_decode(p + start, end - start, &cp);
    if (k == 0 || !is_space(cp))
      break;
    start += k;
  }
  while (end > start) {
    /* Find where the last rune starts, as utf8.DecodeLastRune does: back
     * over at most three continuation bytes. */
    i = end - 1;
    while (i > start && end - i < 4 && (p[i] & 0xc0) == 0x80)
      i--;
    k = utf8_decode(p + i, end - i, &cp);
    if (k == 0 || i + k != end || !is_space(cp))
      break;
    end = i;
  }
  s.p += start;
  s.n = end - start;
  return s;
}

/* Cuts s to at most max bytes without splitting a UTF-8 sequence. */
static slice cut_utf8(slice s, size_t max) {
  size_t n = s.n;

  if (n <= max)
    return s;
  n = max;
  while (n > 0 && ((unsigned char)s.p[n] & 0xc0) == 0x80)
    n--;
  s.n = n;
  return s;
}

/* ---- Times ------------------------------------------------------------- */

static int64_t clock_now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

/* Days since 1970-01-01 of a proleptic Gregorian date, and back (Howard
 * Hinnant's civil-date algorithms), so neither direction depends on the
 * process's time zone or on timegm. */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  int64_t era, yoe, doy, doe;

  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  int64_t era, doe, yoe, doy, mp;

  z += 719468;
  era = (z >= 0 ? z : z - 146096) / 146097;
  doe = z - era * 146097;
  yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

void store_format_time(int64_t ns, char *out, size_t outlen) {
  int64_t secs = ns / NS_PER_SEC, frac = ns % NS_PER_SEC, days, rem, y;
  int m, d;

  if (frac < 0) {
    frac += NS_PER_SEC;
    secs--;
  }
  days = secs / 86400;
  rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    days--;
  }
  civil_from_days(days, &y, &m, &d);
  snprintf(out, outlen, "%04" PRId64 "-%02d-%02dT%02d:%02d:%02d.%09" PRId64 "Z",
           y, m, d, (int)(rem / 3600), (int)(rem / 60 % 60), (int)(rem % 60),
           frac);
}

static bool digits(const char *p, int n, int64_t *v) {
  int i;

  *v = 0;
  for (i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9')
      return false;
    *v = *v * 10 + (p[i] - '0');
  }
  return true;
}

int store_parse_time(const char *text, int64_t *ns) {
  static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  int64_t y, mo, d, h, mi, s, frac, secs, out;
  int dim;

  if (text == NULL || ns == NULL || strlen(text) != TIME_TEXT_LEN ||
      text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' ||
      text[16] != ':' || text[19] != '.' || text[29] != 'Z' ||
      !digits(text, 4, &y) || !digits(text + 5, 2, &mo) ||
      !digits(text + 8, 2, &d) || !digits(text + 11, 2, &h) ||
      !digits(text + 14, 2, &mi) || !digits(text + 17, 2, &s) ||
      !digits(text + 20, 9, &frac))
    return STORE_EINVAL;
  if (mo < 1 || mo > 12 || h > 23 || mi > 59 || s > 59)
    return STORE_EINVAL;
  dim = mdays[mo - 1];
  if (mo == 2 && y % 4 == 0 && (y % 100 != 0 || y % 400 == 0))
    dim = 29;
  if (d < 1 || d > dim)
    return STORE_EINVAL;
  secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
  /* Years 0000-9999 fit in seconds; nanoseconds cover 1677-2262 only.
   * Before 1970 the fraction is folded into the seconds first, so the
   * earliest instant does not overflow on the way. */
  if (secs < 0 && frac > 0) {
    secs++;
    frac -= NS_PER_SEC;
  }
  if (__builtin_mul_overflow(secs, NS_PER_SEC, &out) ||
      __builtin_add_overflow(out, frac, &out))
    return STORE_EINVAL;
  *ns = out;
  return 0;
}

/* ---- Request rules ----------------------------------------------------- */

typedef struct nkey {
  slice consumer, stream, subject;
} nkey;

typedef struct nadvance {
  nkey key;
  int64_t seq;
  slice delivery, position;
  int64_t delivered_at, now;
} nadvance;

typedef struct nreset {
  nkey key;
  int64_t seq;
  slice delivery, position, reason;
  int64_t delivered_at; /* 0 = NULL */
  int64_t now;
} nreset;

typedef struct nerror {
  nkey key;
  slice error;
  int64_t now;
} nerror;

/* The rules of a text field: present when required, at most max bytes,
 * UTF-8. prefix starts the message ("invalid cursor: " for a key). */
static int check_text(slice f, const char *prefix, const char *name,
                      bool required, size_t max, char *err, size_t errlen) {
  if (required && f.n == 0)
    return set_err(err, errlen, STORE_EINVAL, "%s%s is required", prefix, name);
  if (f.n > max)
    return set_err(err, errlen, STORE_EINVAL, "%s%s is longer than %zu bytes",
                   prefix, name, max);
  if (!utf8_valid(f))
    return set_err(err, errlen, STORE_EINVAL, "%s%s is not valid UTF-8", prefix,
                   name);
  return 0;
}

static int check_field(slice f, const char *name, bool required, char *err,
                       size_t errlen) {
  return check_text(f, "invalid cursor: ", name, required, STORE_MAX_KEY_FIELD,
                    err, errlen);
}

/* CursorKey.Normalize: trim all three, then the consumer is checked before
 * the stream, so a request with both missing names the consumer. */
static int normalize_key(const store_key *k, nkey *out, char *err,
                         size_t errlen) {
  int rc;

  out->consumer = trim(slice_of(k->consumer_id));
  out->stream = trim(slice_of(k->stream_name));
  out->subject = trim(slice_of(k->subject_id));
  if ((rc = check_field(out->consumer, "consumer id", true, err, errlen)) ||
      (rc = check_field(out->stream, "stream name", true, err, errlen)) ||
      (rc = check_field(out->subject, "subject id", false, err, errlen)))
    return rc;
  return 0;
}

static int check_position(slice p, char *err, size_t errlen) {
  if (p.n > STORE_MAX_POSITION)
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: position is longer than %d bytes",
                   STORE_MAX_POSITION);
  return 0;
}

static int normalize_advance(const store_advance *r, nadvance *out, char *err,
                             size_t errlen) {
  int rc;

  if ((rc = normalize_key(&r->key, &out->key, err, errlen)) != 0)
    return rc;
  out->delivery = trim(slice_of(r->delivery_id));
  out->seq = r->last_sequence;
  if (out->seq <= 0)
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: last sequence must be greater than zero");
  /* The position is an upstream's opaque token: stored byte for byte. */
  out->position = slice_of(r->position);
  if ((rc = check_position(out->position, err, errlen)) != 0)
    return rc;
  out->now = r->now != 0 ? r->now : clock_now();
  out->delivered_at = r->delivered_at != 0 ? r->delivered_at : out->now;
  return 0;
}

/* The sequence is checked before the reason, and a missing reason is the
 * bare "reset reason required", not an invalid cursor. */
static int normalize_reset(const store_reset *r, nreset *out, char *err,
                           size_t errlen) {
  int rc;

  if ((rc = normalize_key(&r->key, &out->key, err, errlen)) != 0)
    return rc;
  out->delivery = trim(slice_of(r->last_delivery_id));
  out->reason = trim(slice_of(r->reason));
  out->seq = r->last_sequence;
  if (out->seq < 0)
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: reset sequence must be zero or greater");
  if (out->reason.n == 0)
    return set_err(err, errlen, STORE_EREASON, "reset reason required");
  if (out->reason.n > STORE_MAX_REASON)
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: reset reason is longer than %d bytes",
                   STORE_MAX_REASON);
  out->position = slice_of(r->position);
  if ((rc = check_position(out->position, err, errlen)) != 0)
    return rc;
  out->now = r->now != 0 ? r->now : clock_now();
  out->delivered_at = r->delivered_at;
  return 0;
}

/* agh leaves the 2048-byte bound to its callers; here the store applies it,
 * so no caller can grow a row without limit. The second trim drops spaces
 * the cut may have exposed, as agh's trim after its callers' cut does. */
static int normalize_error(const store_error *r, nerror *out, char *err,
                           size_t errlen) {
  int rc;

  if ((rc = normalize_key(&r->key, &out->key, err, errlen)) != 0)
    return rc;
  out->error = trim(slice_of(r->last_error));
  if (out->error.n == 0)
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: last error is required");
  out->error = trim(cut_utf8(out->error, STORE_MAX_ERROR));
  out->now = r->now != 0 ? r->now : clock_now();
  return 0;
}

/* An operation of a group commit, checked; slices point into the op. */
typedef struct nop {
  store_op_kind kind;
  nkey key;   /* only key.consumer for the journal, outbox and consumer */
  slice name; /* journal key, or identity */
  bool keep_identity; /* a consumer op with name NULL */
  int64_t id;
  slice value; /* the value, position or error text */
  int64_t seq;
  int64_t now;
} nop;

static const char *op_kind_name(store_op_kind kind) {
  switch (kind) {
  case STORE_OP_JOURNAL_PUT:
    return "journal put";
  case STORE_OP_JOURNAL_DELETE:
    return "journal delete";
  case STORE_OP_OUTBOX_PUT:
    return "outbox put";
  case STORE_OP_OUTBOX_DELETE:
    return "outbox delete";
  case STORE_OP_CURSOR_PUT:
    return "cursor put";
  case STORE_OP_ERROR:
    return "error";
  case STORE_OP_CONSUMER:
    return "consumer state";
  }
  return "unknown operation";
}

/* Names an operation for a message, from what the caller gave (the fields
 * may be the very thing that is wrong): its kind and key. */
static void describe_op(const store_op *op, char *out, size_t outlen) {
  char c[96], a[96], b[96];
  const char *consumer = op->key.consumer_id != NULL ? op->key.consumer_id : "";

  quote(consumer, strlen(consumer), c, sizeof c);
  switch (op->kind) {
  case STORE_OP_JOURNAL_PUT:
  case STORE_OP_JOURNAL_DELETE:
    if (op->name != NULL)
      quote(op->name, strlen(op->name), a, sizeof a);
    snprintf(out, outlen, "%s of consumer %s, key %s", op_kind_name(op->kind),
             c, op->name != NULL ? a : "(null)");
    return;
  case STORE_OP_OUTBOX_PUT:
  case STORE_OP_OUTBOX_DELETE:
    snprintf(out, outlen, "%s of consumer %s, id %" PRIu64,
             op_kind_name(op->kind), c, op->id);
    return;
  case STORE_OP_CURSOR_PUT:
  case STORE_OP_ERROR: {
    const char *st = op->key.stream_name != NULL ? op->key.stream_name : "";
    const char *sub = op->key.subject_id != NULL ? op->key.subject_id : "";

    quote(st, strlen(st), a, sizeof a);
    quote(sub, strlen(sub), b, sizeof b);
    snprintf(out, outlen, "%s of cursor %s/%s/%s", op_kind_name(op->kind), c, a,
             b);
    return;
  }
  case STORE_OP_CONSUMER:
    snprintf(out, outlen, "consumer state of %s", c);
    return;
  }
  snprintf(out, outlen, "operation of kind %d", (int)op->kind);
}

/* The consumer id of an operation that is not about one cursor. */
static int normalize_consumer(const char *id, slice *out, char *err,
                              size_t errlen) {
  *out = trim(slice_of(id));
  return check_text(*out, "", "consumer id", true, STORE_MAX_KEY_FIELD, err,
                    errlen);
}

static int check_value(const store_op *op, size_t max, const char *name,
                       char *err, size_t errlen) {
  if (op->value == NULL && op->len > 0)
    return set_err(err, errlen, STORE_EINVAL,
                   "%s is NULL with a length of %zu bytes", name, op->len);
  if (op->len > max)
    return set_err(err, errlen, STORE_EINVAL, "%s is longer than %zu bytes",
                   name, max);
  return 0;
}

/* Checks an operation by its kind's rules (store.h) into out, without the
 * message's naming of the operation. */
static int normalize_op(const store_op *op, nop *out, char *err,
                        size_t errlen) {
  int rc;

  memset(out, 0, sizeof *out);
  out->kind = op->kind;
  out->now = op->now != 0 ? op->now : clock_now();
  out->value.p = op->value != NULL ? op->value : "";
  out->value.n = op->len;
  switch (op->kind) {
  case STORE_OP_JOURNAL_PUT:
  case STORE_OP_JOURNAL_DELETE:
    if ((rc = normalize_consumer(op->key.consumer_id, &out->key.consumer, err,
                                 errlen)) != 0)
      return rc;
    /* The key is an upstream's id, stored byte for byte, as a position. */
    out->name = slice_of(op->name);
    if ((rc = check_text(out->name, "", "journal key", true, STORE_MAX_NAME,
                         err, errlen)) != 0)
      return rc;
    if (op->kind == STORE_OP_JOURNAL_PUT &&
        (rc = check_value(op, STORE_MAX_VALUE, "value", err, errlen)) != 0)
      return rc;
    return 0;
  case STORE_OP_OUTBOX_PUT:
  case STORE_OP_OUTBOX_DELETE:
    if ((rc = normalize_consumer(op->key.consumer_id, &out->key.consumer, err,
                                 errlen)) != 0)
      return rc;
    if (op->id > (uint64_t)INT64_MAX)
      return set_err(err, errlen, STORE_EINVAL,
                     "outbox id %" PRIu64 " is greater than %" PRId64, op->id,
                     INT64_MAX);
    out->id = (int64_t)op->id;
    if (op->kind == STORE_OP_OUTBOX_PUT &&
        (rc = check_value(op, STORE_MAX_VALUE, "value", err, errlen)) != 0)
      return rc;
    return 0;
  case STORE_OP_CURSOR_PUT:
    if ((rc = normalize_key(&op->key, &out->key, err, errlen)) != 0)
      return rc;
    if (op->seq < 0)
      return set_err(err, errlen, STORE_EINVAL,
                     "invalid cursor: sequence must be zero or greater");
    out->seq = op->seq;
    return check_value(op, STORE_MAX_POSITION, "invalid cursor: position", err,
                       errlen);
  case STORE_OP_ERROR:
    if ((rc = normalize_key(&op->key, &out->key, err, errlen)) != 0 ||
        (rc = check_value(op, SIZE_MAX, "last error", err, errlen)) != 0)
      return rc;
    out->value = trim(out->value);
    if (out->value.n == 0)
      return set_err(err, errlen, STORE_EINVAL,
                     "invalid cursor: last error is required");
    out->value = trim(cut_utf8(out->value, STORE_MAX_ERROR));
    return 0;
  case STORE_OP_CONSUMER:
    if ((rc = normalize_consumer(op->key.consumer_id, &out->key.consumer, err,
                                 errlen)) != 0)
      return rc;
    if (op->seq < 0)
      return set_err(err, errlen, STORE_EINVAL,
                     "high seq must be zero or greater");
    out->seq = op->seq;
    out->keep_identity = op->name == NULL;
    out->name = slice_of(op->name);
    return check_text(out->name, "", "identity", false, STORE_MAX_IDENTITY, err,
                      errlen);
  }
  return set_err(err, errlen, STORE_EINVAL, "unknown operation kind %d",
                 (int)op->kind);
}

int store_op_check(const store_op *op, char *err, size_t errlen) {
  char what[400], why[256];
  nop n;
  int rc;

  clear_err(err, errlen);
  if (op == NULL)
    return set_err(err, errlen, STORE_EINVAL, "operation is required");
  if ((rc = normalize_op(op, &n, why, sizeof why)) != 0) {
    describe_op(op, what, sizeof what);
    return set_err(err, errlen, rc, "%s: %s", what, why);
  }
  return 0;
}

/* ---- Statements -------------------------------------------------------- */

static int bind_slice(sqlite3_stmt *st, int idx, slice s) {
  return sqlite3_bind_text64(st, idx, s.p, s.n, SQLITE_STATIC, SQLITE_UTF8);
}

/* Binds a time as its text; buf must outlive the statement's step. */
static int bind_time(sqlite3_stmt *st, int idx, int64_t ns, char *buf) {
  store_format_time(ns, buf, TIME_TEXT_LEN + 1);
  return sqlite3_bind_text(st, idx, buf, TIME_TEXT_LEN, SQLITE_STATIC);
}

static int bind_key(sqlite3_stmt *st, const nkey *k) {
  int rc;

  if ((rc = bind_slice(st, 1, k->consumer)) != SQLITE_OK ||
      (rc = bind_slice(st, 2, k->stream)) != SQLITE_OK ||
      (rc = bind_slice(st, 3, k->subject)) != SQLITE_OK)
    return rc;
  return SQLITE_OK;
}

/* Resets a statement for its next use and drops its bindings, which may
 * point into a caller's strings. */
static void stmt_done(sqlite3_stmt *st) {
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
}

/* Runs a statement that returns no rows. */
static int step_done(sqlite3_stmt *st) {
  int rc = sqlite3_step(st);

  stmt_done(st);
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static int tx_begin(store *s, char *err, size_t errlen) {
  int rc;

  if (s->db == NULL)
    return db_lost(s, err, errlen);
  rc = step_done(s->stmts[ST_BEGIN]);

  return rc == SQLITE_OK ? 0 : db_error(s, rc, "begin", err, errlen);
}

static int tx_commit(store *s, char *err, size_t errlen) {
  int rc = step_done(s->stmts[ST_COMMIT]);

  return rc == SQLITE_OK ? 0 : db_error(s, rc, "commit", err, errlen);
}

/* Rolls back whatever is open. SQLite already rolls back by itself after
 * some errors (SQLITE_FULL, I/O errors), so a missing transaction is fine. */
static void tx_rollback(store *s) {
  if (!sqlite3_get_autocommit(s->db))
    step_done(s->stmts[ST_ROLLBACK]);
}

static char *dup_column(sqlite3_stmt *st, int col) {
  const unsigned char *t = sqlite3_column_text(st, col);
  size_t n = (size_t)sqlite3_column_bytes(st, col);
  char *p = malloc(n + 1);

  if (p == NULL)
    return NULL;
  if (n > 0)
    memcpy(p, t, n);
  p[n] = '\0';
  return p;
}

static int time_column(store *s, sqlite3_stmt *st, int col, int64_t *ns,
                       char *err, size_t errlen) {
  const char *t;

  if (sqlite3_column_type(st, col) == SQLITE_NULL) {
    *ns = 0;
    return 0;
  }
  t = (const char *)sqlite3_column_text(st, col);
  if (t == NULL || store_parse_time(t, ns) != 0)
    return set_err(err, errlen, STORE_ECORRUPT,
                   "state file %s holds a malformed time \"%.40s\"; move it "
                   "aside to start from scratch, or restore a backup",
                   s->path, t != NULL ? t : "");
  return 0;
}

/* Reads a ROW_COLUMNS row into out (owned by the caller on success). */
static int read_row(store *s, sqlite3_stmt *st, store_cursor *out, char *err,
                    size_t errlen) {
  int rc;

  memset(out, 0, sizeof *out);
  out->last_sequence = sqlite3_column_int64(st, 3);
  if ((rc = time_column(s, st, 6, &out->last_delivered_at, err, errlen)) ||
      (rc = time_column(s, st, 8, &out->updated_at, err, errlen)))
    return rc;
  out->consumer_id = dup_column(st, 0);
  out->stream_name = dup_column(st, 1);
  out->subject_id = dup_column(st, 2);
  out->position = dup_column(st, 4);
  out->last_delivery_id = dup_column(st, 5);
  out->last_error = dup_column(st, 7);
  if (out->consumer_id == NULL || out->stream_name == NULL ||
      out->subject_id == NULL || out->position == NULL ||
      out->last_delivery_id == NULL || out->last_error == NULL) {
    store_cursor_free(out);
    return set_err(err, errlen, UV_ENOMEM, "out of memory reading a cursor");
  }
  return 0;
}

/* Reads the row of key into out, which may be NULL to test for presence. */
static int get_locked(store *s, const nkey *key, store_cursor *out, char *err,
                      size_t errlen) {
  sqlite3_stmt *st = s->stmts[ST_GET];
  int rc;

  if (s->db == NULL)
    return db_lost(s, err, errlen);
  if ((rc = bind_key(st, key)) != SQLITE_OK) {
    stmt_done(st);
    return db_error(s, rc, "read cursor", err, errlen);
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    rc = set_err(err, errlen, STORE_ENOTFOUND, "cursor not found");
  } else if (rc != SQLITE_ROW) {
    rc = db_error(s, rc, "read cursor", err, errlen);
  } else {
    rc = out != NULL ? read_row(s, st, out, err, errlen) : 0;
  }
  stmt_done(st);
  return rc;
}

/* The stored state an advance or a reset decides on. */
typedef struct prior {
  bool found;
  int64_t seq;
  char *delivery; /* owned */
  char *position; /* owned */
} prior;

static void prior_free(prior *p) {
  free(p->delivery);
  free(p->position);
  memset(p, 0, sizeof *p);
}

static int load_locked(store *s, const nkey *key, prior *out, char *err,
                       size_t errlen) {
  sqlite3_stmt *st = s->stmts[ST_LOAD];
  int rc;

  memset(out, 0, sizeof *out);
  if ((rc = bind_key(st, key)) != SQLITE_OK) {
    stmt_done(st);
    return db_error(s, rc, "read cursor", err, errlen);
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE) {
    rc = 0;
  } else if (rc != SQLITE_ROW) {
    rc = db_error(s, rc, "read cursor", err, errlen);
  } else {
    out->found = true;
    out->seq = sqlite3_column_int64(st, 0);
    out->delivery = dup_column(st, 1);
    out->position = dup_column(st, 2);
    rc = 0;
    if (out->delivery == NULL || out->position == NULL) {
      prior_free(out);
      rc = set_err(err, errlen, UV_ENOMEM, "out of memory reading a cursor");
    }
  }
  stmt_done(st);
  return rc;
}

/* The decision table of the protocol document, section 3, applied inside an
 * open transaction. A refusal (STORE_ENONMONO) is decided before anything is
 * written, so a group commit can refuse one item and keep the others. */
static int advance_locked(store *s, const nadvance *a, char *err,
                          size_t errlen) {
  char delivered[TIME_TEXT_LEN + 1], now[TIME_TEXT_LEN + 1];
  char stored_q[160], req_q[160];
  sqlite3_stmt *st;
  prior p;
  int rc;

  if ((rc = load_locked(s, &a->key, &p, err, errlen)) != 0)
    return rc;
  if (!p.found) {
    st = s->stmts[ST_INSERT];
  } else if (a->seq > p.seq) {
    st = s->stmts[ST_UPDATE];
  } else if (a->seq == p.seq && slice_eq(a->delivery, slice_of(p.delivery))) {
    st = s->stmts[ST_REFRESH];
  } else {
    quote(p.delivery, strlen(p.delivery), stored_q, sizeof stored_q);
    quote(a->delivery.p, a->delivery.n, req_q, sizeof req_q);
    rc = set_err(err, errlen, STORE_ENONMONO,
                 "non-monotonic cursor advance: stored seq %" PRId64
                 " delivery %s, requested seq %" PRId64 " delivery %s (%s)",
                 p.seq, stored_q, a->seq, req_q,
                 a->seq < p.seq ? "backward" : "fork");
    prior_free(&p);
    return rc;
  }
  prior_free(&p);
  if ((rc = bind_key(st, &a->key)) != SQLITE_OK ||
      (rc = sqlite3_bind_int64(st, 4, a->seq)) != SQLITE_OK ||
      (rc = bind_slice(st, 5, a->delivery)) != SQLITE_OK ||
      (rc = bind_time(st, 6, a->delivered_at, delivered)) != SQLITE_OK ||
      (rc = bind_time(st, 7, a->now, now)) != SQLITE_OK ||
      (rc = bind_slice(st, 8, a->position)) != SQLITE_OK) {
    stmt_done(st);
    return db_error(s, rc, "write cursor", err, errlen);
  }
  rc = step_done(st);
  return rc == SQLITE_OK ? 0 : db_error(s, rc, "write cursor", err, errlen);
}

static int reset_locked(store *s, const nreset *r, char *err, size_t errlen) {
  char delivered[TIME_TEXT_LEN + 1], now[TIME_TEXT_LEN + 1];
  sqlite3_stmt *st = s->stmts[ST_RESET];
  prior p;
  int rc;

  if ((rc = load_locked(s, &r->key, &p, err, errlen)) != 0)
    return rc;
  if ((rc = bind_key(st, &r->key)) != SQLITE_OK ||
      (rc = sqlite3_bind_int64(st, 4, r->seq)) != SQLITE_OK ||
      (rc = bind_slice(st, 5, r->delivery)) != SQLITE_OK ||
      (rc = r->delivered_at != 0 ? bind_time(st, 6, r->delivered_at, delivered)
                                 : sqlite3_bind_null(st, 6)) != SQLITE_OK ||
      (rc = bind_time(st, 7, r->now, now)) != SQLITE_OK ||
      (rc = bind_slice(st, 8, r->position)) != SQLITE_OK ||
      (rc = step_done(st)) != SQLITE_OK) {
    stmt_done(st);
    rc = db_error(s, rc, "reset cursor", err, errlen);
    goto out;
  }
  /* A reset that created the cursor records the old state as sequence 0 and
   * no position, which is how a missing cursor is read everywhere else. */
  st = s->stmts[ST_AUDIT];
  if ((rc = bind_key(st, &r->key)) != SQLITE_OK ||
      (rc = sqlite3_bind_int64(st, 4, p.found ? p.seq : 0)) != SQLITE_OK ||
      (rc = sqlite3_bind_int64(st, 5, r->seq)) != SQLITE_OK ||
      (rc = bind_slice(st, 6, slice_of(p.position))) != SQLITE_OK ||
      (rc = bind_slice(st, 7, r->position)) != SQLITE_OK ||
      (rc = bind_slice(st, 8, r->reason)) != SQLITE_OK ||
      (rc = bind_time(st, 9, r->now, now)) != SQLITE_OK ||
      (rc = step_done(st)) != SQLITE_OK) {
    stmt_done(st);
    rc = db_error(s, rc, "record reset", err, errlen);
    goto out;
  }
  rc = 0;
out:
  prior_free(&p);
  return rc;
}

static int error_locked(store *s, const nerror *e, char *err, size_t errlen) {
  char now[TIME_TEXT_LEN + 1];
  sqlite3_stmt *st = s->stmts[ST_ERROR];
  int rc;

  if ((rc = bind_key(st, &e->key)) != SQLITE_OK ||
      (rc = bind_slice(st, 4, e->error)) != SQLITE_OK ||
      (rc = bind_time(st, 5, e->now, now)) != SQLITE_OK ||
      (rc = step_done(st)) != SQLITE_OK) {
    stmt_done(st);
    return db_error(s, rc, "record cursor error", err, errlen);
  }
  return 0;
}

/* A zero-length value is bound as an empty blob, not NULL (SQLite binds
 * NULL for a NULL pointer). */
static int bind_blob(sqlite3_stmt *st, int idx, slice v) {
  return sqlite3_bind_blob64(st, idx, v.n > 0 ? v.p : "", v.n, SQLITE_STATIC);
}

/* Applies one checked operation inside the open transaction. */
static int op_locked(store *s, const nop *o, char *err, size_t errlen) {
  char now[TIME_TEXT_LEN + 1];
  sqlite3_stmt *st;
  nerror e;
  int rc;

  switch (o->kind) {
  case STORE_OP_JOURNAL_PUT:
  case STORE_OP_JOURNAL_DELETE:
    st = s->stmts[o->kind == STORE_OP_JOURNAL_PUT ? ST_JOURNAL_PUT
                                                  : ST_JOURNAL_DELETE];
    if ((rc = bind_slice(st, 1, o->key.consumer)) != SQLITE_OK ||
        (rc = bind_slice(st, 2, o->name)) != SQLITE_OK ||
        (o->kind == STORE_OP_JOURNAL_PUT &&
         ((rc = bind_blob(st, 3, o->value)) != SQLITE_OK ||
          (rc = bind_time(st, 4, o->now, now)) != SQLITE_OK)))
      break;
    rc = step_done(st);
    return rc == SQLITE_OK ? 0 : db_error(s, rc, "write journal", err, errlen);
  case STORE_OP_OUTBOX_PUT:
  case STORE_OP_OUTBOX_DELETE:
    st = s->stmts[o->kind == STORE_OP_OUTBOX_PUT ? ST_OUTBOX_PUT
                                                 : ST_OUTBOX_DELETE];
    if ((rc = bind_slice(st, 1, o->key.consumer)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 2, o->id)) != SQLITE_OK ||
        (o->kind == STORE_OP_OUTBOX_PUT &&
         ((rc = bind_blob(st, 3, o->value)) != SQLITE_OK ||
          (rc = bind_time(st, 4, o->now, now)) != SQLITE_OK)))
      break;
    rc = step_done(st);
    return rc == SQLITE_OK ? 0 : db_error(s, rc, "write outbox", err, errlen);
  case STORE_OP_CURSOR_PUT:
    st = s->stmts[ST_CURSOR_PUT];
    if ((rc = bind_key(st, &o->key)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 4, o->seq)) != SQLITE_OK ||
        (rc = bind_time(st, 5, o->now, now)) != SQLITE_OK ||
        (rc = bind_slice(st, 6, o->value)) != SQLITE_OK)
      break;
    rc = step_done(st);
    return rc == SQLITE_OK ? 0 : db_error(s, rc, "write cursor", err, errlen);
  case STORE_OP_ERROR:
    e.key = o->key;
    e.error = o->value;
    e.now = o->now;
    return error_locked(s, &e, err, errlen);
  case STORE_OP_CONSUMER:
    st = s->stmts[ST_CONSUMER_PUT];
    if ((rc = bind_slice(st, 1, o->key.consumer)) != SQLITE_OK ||
        (rc = o->keep_identity ? sqlite3_bind_null(st, 2)
                               : bind_slice(st, 2, o->name)) != SQLITE_OK ||
        (rc = sqlite3_bind_int64(st, 3, o->seq)) != SQLITE_OK ||
        (rc = bind_time(st, 4, o->now, now)) != SQLITE_OK)
      break;
    rc = step_done(st);
    return rc == SQLITE_OK
               ? 0
               : db_error(s, rc, "write consumer state", err, errlen);
  default:
    /* normalize_op let no other kind through. */
    assert(0 && "unchecked operation kind");
    return set_err(err, errlen, STORE_EINVAL, "unknown operation kind");
  }
  /* A bind failed. */
  stmt_done(st);
  return db_error(s, rc, "bind operation", err, errlen);
}

/* ---- Open and close ---------------------------------------------------- */

/* Creates every missing directory above path, owner-only. */
static int make_parents(const char *path, char *err, size_t errlen) {
  char *dir = strdup(path), *p, saved;
  struct stat st;
  int rc = 0;

  if (dir == NULL)
    return set_err(err, errlen, UV_ENOMEM, "out of memory");
  p = strrchr(dir, '/');
  if (p == NULL || p == dir)
    goto out;
  *p = '\0';
  for (p = dir + 1;; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    saved = *p;
    *p = '\0';
    if (mkdir(dir, 0700) != 0) {
      int e = errno;
      if (e != EEXIST) {
        rc = set_err(err, errlen, errno_code(e),
                     "cannot create directory %s for state file %s: %s", dir,
                     path, strerror(e));
        goto out;
      }
      if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = set_err(err, errlen, STORE_EIO,
                     "cannot use %s as the directory of state file %s: %s", dir,
                     path, strerror(ENOTDIR));
        goto out;
      }
    }
    *p = saved;
    if (saved == '\0')
      break;
  }
out:
  free(dir);
  return rc;
}

/* Takes the exclusive lock that keeps a second tether off this state file.
 * flock belongs to the open file, so the lock goes when the process does,
 * however it ends; the pid written into the file only serves the message of
 * the process that finds the lock taken. */
static int take_lock(store *s, char *err, size_t errlen) {
  char lock_path[PATH_MAX], pid[32];
  ssize_t n;
  int len;

  if (snprintf(lock_path, sizeof lock_path, "%s.lock", s->path) >=
      (int)sizeof lock_path)
    return set_err(err, errlen, STORE_EIO, "state file path %s is too long",
                   s->path);
  s->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (s->lock_fd < 0) {
    int e = errno;
    return set_err(err, errlen, errno_code(e),
                   "cannot open lock file %s of state file %s: %s", lock_path,
                   s->path, strerror(e));
  }
  if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    if (e != EWOULDBLOCK)
      return set_err(err, errlen, STORE_EIO, "cannot lock %s: %s", lock_path,
                     strerror(e));
    n = pread(s->lock_fd, pid, sizeof pid - 1, 0);
    pid[n > 0 ? n : 0] = '\0';
    pid[strcspn(pid, "\n")] = '\0';
    return set_err(err, errlen, STORE_EBUSY,
                   "state file %s is in use by another tether (pid %s)",
                   s->path, pid[0] != '\0' ? pid : "unknown");
  }
  len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(s->lock_fd, 0) != 0 ||
      pwrite(s->lock_fd, pid, (size_t)len, 0) != len) {
    int e = errno;
    return set_err(err, errlen, errno_code(e), "cannot write lock file %s: %s",
                   lock_path, strerror(e));
  }
  return 0;
}

/* Creates the state file owner-only before SQLite sees it: SQLite would
 * create it with 0644, and gives its -wal and -shm files the main file's
 * mode. Opening it for writing here also turns an unwritable file, or a
 * directory in its place, into a clear error before SQLite gets involved. */
static int create_file(store *s, char *err, size_t errlen) {
  int fd = open(s->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

  if (fd < 0) {
    int e = errno;
    return set_err(err, errlen, errno_code(e),
                   "cannot open state file %s for writing: %s", s->path,
                   strerror(e));
  }
  close(fd);
  return 0;
}

/* Runs a statement returning one integer or text row into the given
 * outputs (either may be NULL). */
static int query_one(store *s, const char *sql, int64_t *num, char *text,
                     size_t textlen, const char *what, char *err,
                     size_t errlen) {
  sqlite3_stmt *st = NULL;
  int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);

  if (rc == SQLITE_OK)
    rc = sqlite3_step(st);
  if (rc != SQLITE_ROW) {
    rc = db_error(s, rc == SQLITE_DONE ? SQLITE_ERROR : rc, what, err, errlen);
    sqlite3_finalize(st);
    return rc;
  }
  if (num != NULL)
    *num = sqlite3_column_int64(st, 0);
  if (text != NULL)
    snprintf(text, textlen, "%s",
             sqlite3_column_text(st, 0) != NULL
                 ? (const char *)sqlite3_column_text(st, 0)
                 : "");
  sqlite3_finalize(st);
  return 0;
}

static int exec_sql(store *s, const char *sql, const char *what, char *err,
                    size_t errlen) {
  int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);

  return rc == SQLITE_OK ? 0 : db_error(s, rc, what, err, errlen);
}

/* Refuses damaged files and files that are not ours before anything is
 * written: the first read fails on a non-database (SQLITE_NOTADB) or a
 * truncated one (SQLITE_CORRUPT), and quick_check walks every page. */
static int check_integrity(store *s, char *err, size_t errlen) {
  char result[256];
  int rc;

  if ((rc = query_one(s, "SELECT count(*) FROM sqlite_master", NULL, NULL, 0,
                      "read schema", err, errlen)) ||
      (rc = query_one(s, "PRAGMA quick_check", NULL, result, sizeof result,
                      "quick_check", err, errlen)))
    return rc;
  if (strcmp(result, "ok") != 0)
    return set_err(err, errlen, STORE_ECORRUPT,
                   "state file %s is damaged (quick_check: %s); move it aside "
                   "to start from scratch, or restore a backup",
                   s->path, result);
  return 0;
}

/* synchronous=NORMAL is safe for us: in WAL mode a commit is then written
 * but not fsync'd until the next checkpoint, so power loss can lose the
 * last commits. A lost commit only moves a cursor backwards, so events are
 * delivered again (duplicates), never skipped: the sink made them durable
 * before the commit was issued. */
static int set_pragmas(store *s, char *err, size_t errlen) {
  char mode[32];
  int rc;

  if ((rc = query_one(s, "PRAGMA journal_mode=WAL", NULL, mode, sizeof mode,
                      "set journal_mode", err, errlen)))
    return rc;
  if (strcmp(mode, "wal") != 0)
    return set_err(err, errlen, STORE_EIO,
                   "state file %s: cannot switch to WAL mode (journal_mode is "
                   "%s); is it on a file system without shared memory?",
                   s->path, mode);
  s->sync_full = false;
  return exec_sql(s, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON",
                  "set pragmas", err, errlen);
}

/* A commit that carries operations is made durable before it returns
 * (synchronous=FULL: the WAL is fsync'd at COMMIT), unlike a commit of
 * cursors alone. What follows such a commit is told outside and cannot be
 * taken back by a power cut: an upstream acked for a message whose journal
 * entry is then lost, an app told its write is in an outbox that then
 * lacks it, a high_seq that goes back and lets a seq the sink already
 * holds be assigned to another event. A lost cursor alone only costs
 * duplicates (set_pragmas). The setting belongs to the connection and
 * cannot change inside a transaction, so it is switched between them, and
 * only when the kind of commit changes. */
static int set_sync(store *s, bool full, char *err, size_t errlen) {
  int rc;

  if (s->sync_full == full)
    return 0;
  rc = exec_sql(s,
                full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                "set synchronous", err, errlen);
  if (rc == 0)
    s->sync_full = full;
  return rc;
}

static int migrate(store *s, char *err, size_t errlen) {
  char sql[64], what[64];
  int64_t version = 0, objects = 0;
  int rc;

  if ((rc = query_one(s, "PRAGMA user_version", &version, NULL, 0,
                      "read schema version", err, errlen)))
    return rc;
  if (version > SCHEMA_VERSION)
    return set_err(err, errlen, STORE_ECORRUPT,
                   "state file %s was written by a newer tether (schema "
                   "version %" PRId64 "; this build knows %d)",
                   s->path, version, SCHEMA_VERSION);
  if (version < 0)
    return set_err(err, errlen, STORE_ECORRUPT,
                   "state file %s has schema version %" PRId64
                   ", which no tether writes; move it aside to start from "
                   "scratch, or restore a backup",
                   s->path, version);
  if (version == 0) {
    /* Version 0 must be an empty file; tables there belong to someone
     * else, and migrating around them would mix two programs' data. */
    if ((rc = query_one(s, "SELECT count(*) FROM sqlite_master", &objects, NULL,
                        0, "read schema", err, errlen)))
      return rc;
    if (objects > 0)
      return set_err(err, errlen, STORE_ECORRUPT,
                     "state file %s is an SQLite database that tether did not "
                     "write (it has tables but no schema version); move it "
                     "aside or choose another state path",
                     s->path);
  }
  for (; version < SCHEMA_VERSION; version++) {
    snprintf(what, sizeof what, "migrate schema to version %" PRId64,
             version + 1);
    snprintf(sql, sizeof sql, "PRAGMA user_version = %" PRId64, version + 1);
    if ((rc = exec_sql(s, "BEGIN IMMEDIATE", what, err, errlen)) != 0)
      return rc;
    if ((rc = exec_sql(s, migrations[version], what, err, errlen)) != 0 ||
        (rc = exec_sql(s, sql, what, err, errlen)) != 0 ||
        (rc = exec_sql(s, "COMMIT", what, err, errlen)) != 0) {
      /* Not tx_rollback: the cached statements are prepared after the
       * migrations, against the schema they make. */
      if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
      return rc;
    }
  }
  return 0;
}

static int prepare_all(store *s, char *err, size_t errlen) {
  int i, rc;

  for (i = 0; i < ST__COUNT; i++) {
    rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                            &s->stmts[i], NULL);
    if (rc != SQLITE_OK)
      return db_error(s, rc, "prepare statements", err, errlen);
  }
  return 0;
}

/* Opens the SQLite connection on the file at s->path (made by create_file)
 * and brings it to a usable state: integrity, WAL, schema, statements. Used
 * at open and again when the file must be created anew. */
static int open_db(store *s, char *err, size_t errlen) {
  struct stat st;
  int rc;

  rc = sqlite3_open_v2(
      s->path, &s->db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
  if (rc != SQLITE_OK) {
    if (s->db == NULL)
      return set_err(err, errlen, UV_ENOMEM, "out of memory opening %s",
                     s->path);
    return db_error(s, rc, "open", err, errlen);
  }
  sqlite3_extended_result_codes(s->db, 1);
  sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
  if ((rc = check_integrity(s, err, errlen)) != 0)
    return rc;
  /* SQLite falls back to read-only when it may not write the file; a
   * cursor store that cannot commit must fail now, not at the first flush.
   */
  if (sqlite3_db_readonly(s->db, "main") == 1)
    return set_err(
        err, errlen, STORE_EIO,
        "state file %s is read-only; tether must be able to write it", s->path);
  if ((rc = set_pragmas(s, err, errlen)) != 0 ||
      (rc = migrate(s, err, errlen)) != 0 ||
      (rc = prepare_all(s, err, errlen)) != 0)
    return rc;
  /* Take the write lock once, so a file system that refuses writes to the
   * WAL or its index fails here too. */
  if ((rc = tx_begin(s, err, errlen)) != 0 ||
      (rc = tx_commit(s, err, errlen)) != 0) {
    tx_rollback(s);
    return rc;
  }
  /* The identity the commits check the path against. The connection keeps
   * the file open, so its inode number cannot go to another file while
   * tether runs: an unchanged (dev, ino) at the path is the same file. */
  if (stat(s->path, &st) != 0) {
    int e = errno;
    return set_err(err, errlen, errno_code(e), "cannot stat state file %s: %s",
                   s->path, strerror(e));
  }
  s->dev = st.st_dev;
  s->ino = st.st_ino;
  return 0;
}

int store_open(const char *path, store **out, char *err, size_t errlen) {
  struct stat st;
  store *s;
  int rc;

  clear_err(err, errlen);
  if (out == NULL || path == NULL || path[0] == '\0')
    return set_err(err, errlen, UV_EINVAL, "state file path is required");
  *out = NULL;
  s = calloc(1, sizeof *s);
  if (s == NULL)
    return set_err(err, errlen, UV_ENOMEM, "out of memory");
  s->lock_fd = -1;
  s->path = strdup(path);
  if (s->path == NULL) {
    rc = set_err(err, errlen, UV_ENOMEM, "out of memory");
    goto fail;
  }
  if ((rc = pthread_mutex_init(&s->mu, NULL)) != 0) {
    rc = set_err(err, errlen, UV_ENOMEM, "cannot create the store mutex");
    goto fail;
  }
  s->mu_init = true;
  if ((rc = make_parents(path, err, errlen)) != 0 ||
      (rc = take_lock(s, err, errlen)) != 0)
    goto fail;
  /* Under the lock, so no other tether makes the file in between. */
  s->created = stat(path, &st) != 0 && errno == ENOENT;
  if ((rc = create_file(s, err, errlen)) != 0 ||
      (rc = open_db(s, err, errlen)) != 0)
    goto fail;
  *out = s;
  return 0;

fail:
  store_close(s);
  return rc;
}

/* Finalizes every statement and closes the connection. The last connection
 * to close checkpoints the WAL into the main file and removes the -wal and
 * -shm files by name. */
static void close_db(store *s) {
  int i;

  for (i = 0; i < ST__COUNT; i++) {
    sqlite3_finalize(s->stmts[i]);
    s->stmts[i] = NULL;
  }
  for (i = 0; i < LIST_SHAPES; i++) {
    sqlite3_finalize(s->list_stmts[i]);
    s->list_stmts[i] = NULL;
  }
  for (i = 0; i < RESETS_SHAPES; i++) {
    sqlite3_finalize(s->resets_stmts[i]);
    s->resets_stmts[i] = NULL;
  }
  if (s->db != NULL)
    sqlite3_close_v2(s->db);
  s->db = NULL;
}

void store_close(store *s) {
  if (s == NULL)
    return;
  assert(!s->in_commit && "store_close while a group commit is running");
  close_db(s);
  /* The lock file stays: removing it would let a process that opened it
   * just before and a newcomer that creates a fresh one both hold "the"
   * lock. */
  if (s->lock_fd >= 0)
    close(s->lock_fd);
  if (s->mu_init)
    pthread_mutex_destroy(&s->mu);
  free(s->path);
  free(s);
}

/* ---- Synchronous operations -------------------------------------------- */

int store_get(store *s, const store_key *key, store_cursor *out, char *err,
              size_t errlen) {
  nkey k;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    memset(out, 0, sizeof *out);
  if (s == NULL || key == NULL)
    return set_err(err, errlen, UV_EINVAL, "store and key are required");
  if ((rc = normalize_key(key, &k, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  rc = get_locked(s, &k, out, err, errlen);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* Commits the open transaction and re-reads the row of key into out (which
 * may be NULL), or rolls back when rc says the write failed. */
static int finish_write(store *s, int rc, const nkey *key, store_cursor *out,
                        char *err, size_t errlen) {
  if (rc == 0 && out != NULL)
    rc = get_locked(s, key, out, err, errlen);
  if (rc == 0)
    rc = tx_commit(s, err, errlen);
  if (rc != 0) {
    tx_rollback(s);
    if (out != NULL)
      store_cursor_free(out);
  }
  return rc;
}

int store_advance_cursor(store *s, const store_advance *r, store_cursor *out,
                         char *err, size_t errlen) {
  nadvance a;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    memset(out, 0, sizeof *out);
  if (s == NULL || r == NULL)
    return set_err(err, errlen, UV_EINVAL, "store and request are required");
  if ((rc = normalize_advance(r, &a, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if ((rc = tx_begin(s, err, errlen)) == 0)
    rc = finish_write(s, advance_locked(s, &a, err, errlen), &a.key, out, err,
                      errlen);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int store_reset_cursor(store *s, const store_reset *r, store_cursor *out,
                       char *err, size_t errlen) {
  nreset n;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    memset(out, 0, sizeof *out);
  if (s == NULL || r == NULL)
    return set_err(err, errlen, UV_EINVAL, "store and request are required");
  if ((rc = normalize_reset(r, &n, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if ((rc = tx_begin(s, err, errlen)) == 0)
    rc = finish_write(s, reset_locked(s, &n, err, errlen), &n.key, out, err,
                      errlen);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int store_record_error(store *s, const store_error *r, store_cursor *out,
                       char *err, size_t errlen) {
  nerror e;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    memset(out, 0, sizeof *out);
  if (s == NULL || r == NULL)
    return set_err(err, errlen, UV_EINVAL, "store and request are required");
  if ((rc = normalize_error(r, &e, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if ((rc = tx_begin(s, err, errlen)) == 0)
    rc = finish_write(s, error_locked(s, &e, err, errlen), &e.key, out, err,
                      errlen);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* Makes room for element n of an array of *cap elements, doubling it when
 * full. Returns the (possibly moved) array, or NULL with v untouched. */
static void *grow(void *v, size_t *cap, size_t n, size_t size) {
  size_t ncap;

  if (n < *cap)
    return v;
  ncap = *cap != 0 ? *cap * 2 : 16;
  if (ncap > SIZE_MAX / size || (v = realloc(v, ncap * size)) == NULL)
    return NULL;
  *cap = ncap;
  return v;
}

static sqlite3_stmt *list_stmt(store *s, int shape, char *err, size_t errlen,
                               int *rc) {
  char sql[512];
  const char *sep = " WHERE ";
  size_t n;

  if (s->db == NULL) {
    *rc = db_lost(s, err, errlen);
    return NULL;
  }
  if (s->list_stmts[shape] != NULL)
    return s->list_stmts[shape];
  n = (size_t)snprintf(sql, sizeof sql, "SELECT " ROW_COLUMNS " FROM cursors");
  if (shape & LIST_CONSUMER) {
    n += (size_t)snprintf(sql + n, sizeof sql - n, "%sconsumer_id = ?1", sep);
    sep = " AND ";
  }
  if (shape & LIST_STREAM) {
    n += (size_t)snprintf(sql + n, sizeof sql - n, "%sstream_name = ?2", sep);
    sep = " AND ";
  }
  if (shape & LIST_SUBJECT)
    n += (size_t)snprintf(sql + n, sizeof sql - n, "%ssubject_id = ?3", sep);
  /* No COLLATE: BINARY, so the order is bytewise, as in agh. */
  n += (size_t)snprintf(sql + n, sizeof sql - n,
                        " ORDER BY stream_name, subject_id, consumer_id");
  if (shape & LIST_LIMIT)
    snprintf(sql + n, sizeof sql - n, " LIMIT ?4");
  *rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
                           &s->list_stmts[shape], NULL);
  if (*rc != SQLITE_OK) {
    *rc = db_error(s, *rc, "list cursors", err, errlen);
    return NULL;
  }
  return s->list_stmts[shape];
}

int store_list(store *s, const store_query *q, store_cursor **out, size_t *n,
               char *err, size_t errlen) {
  store_query none = { NULL, NULL, NULL, 0 };
  store_cursor *v = NULL, *grown;
  size_t cap = 0, count = 0;
  slice consumer, stream, subject;
  sqlite3_stmt *st;
  int shape = 0, rc = 0;

  clear_err(err, errlen);
  if (out != NULL)
    *out = NULL;
  if (n != NULL)
    *n = 0;
  if (s == NULL)
    return set_err(err, errlen, UV_EINVAL, "store is required");
  if (q == NULL)
    q = &none;
  /* CursorQuery.Normalize: trimmed filters, a blank one matches all. */
  consumer = trim(slice_of(q->consumer_id));
  stream = trim(slice_of(q->stream_name));
  subject = trim(slice_of(q->subject_id));
  shape |= consumer.n > 0 ? LIST_CONSUMER : 0;
  shape |= stream.n > 0 ? LIST_STREAM : 0;
  shape |= subject.n > 0 ? LIST_SUBJECT : 0;
  shape |= q->limit > 0 ? LIST_LIMIT : 0;

  pthread_mutex_lock(&s->mu);
  if ((st = list_stmt(s, shape, err, errlen, &rc)) == NULL)
    goto out;
  if (((shape & LIST_CONSUMER) &&
       (rc = bind_slice(st, 1, consumer)) != SQLITE_OK) ||
      ((shape & LIST_STREAM) &&
       (rc = bind_slice(st, 2, stream)) != SQLITE_OK) ||
      ((shape & LIST_SUBJECT) &&
       (rc = bind_slice(st, 3, subject)) != SQLITE_OK) ||
      ((shape & LIST_LIMIT) &&
       (rc = sqlite3_bind_int64(st, 4, q->limit)) != SQLITE_OK)) {
    rc = db_error(s, rc, "list cursors", err, errlen);
    goto out_stmt;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (out == NULL) {
      count++;
      continue;
    }
    if ((grown = grow(v, &cap, count, sizeof *v)) == NULL) {
      rc = set_err(err, errlen, UV_ENOMEM, "out of memory listing cursors");
      goto out_stmt;
    }
    v = grown;
    if ((rc = read_row(s, st, &v[count], err, errlen)) != 0)
      goto out_stmt;
    count++;
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(s, rc, "list cursors", err, errlen);
out_stmt:
  stmt_done(st);
out:
  pthread_mutex_unlock(&s->mu);
  if (rc != 0) {
    store_cursors_free(v, count);
    return rc;
  }
  if (out != NULL)
    *out = v;
  if (n != NULL)
    *n = count;
  return 0;
}

int store_list_resets(store *s, const store_key *key, int64_t limit,
                      store_reset_record **out, size_t *n, char *err,
                      size_t errlen) {
  store_reset_record *v = NULL, *r, *grown;
  size_t cap = 0, count = 0;
  char sql[512];
  sqlite3_stmt *st;
  int shape = 0, rc;
  nkey k;

  clear_err(err, errlen);
  if (out != NULL)
    *out = NULL;
  if (n != NULL)
    *n = 0;
  if (s == NULL || out == NULL || n == NULL)
    return set_err(err, errlen, UV_EINVAL, "store, out and n are required");
  if (key != NULL) {
    if ((rc = normalize_key(key, &k, err, errlen)) != 0)
      return rc;
    shape |= RESETS_KEY;
  }
  shape |= limit > 0 ? RESETS_LIMIT : 0;

  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    goto out;
  }
  st = s->resets_stmts[shape];
  if (st == NULL) {
    snprintf(sql, sizeof sql,
             "SELECT consumer_id, stream_name, subject_id, old_sequence, "
             "new_sequence, old_position, new_position, reason, at "
             "FROM cursor_resets%s ORDER BY id DESC%s",
             shape & RESETS_KEY ? " WHERE " KEY_MATCH : "",
             shape & RESETS_LIMIT ? " LIMIT ?4" : "");
    rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st,
                            NULL);
    if (rc != SQLITE_OK) {
      rc = db_error(s, rc, "list resets", err, errlen);
      goto out;
    }
    s->resets_stmts[shape] = st;
  }
  if (((shape & RESETS_KEY) && (rc = bind_key(st, &k)) != SQLITE_OK) ||
      ((shape & RESETS_LIMIT) &&
       (rc = sqlite3_bind_int64(st, 4, limit)) != SQLITE_OK)) {
    rc = db_error(s, rc, "list resets", err, errlen);
    goto out_stmt;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((grown = grow(v, &cap, count, sizeof *v)) == NULL) {
      rc = set_err(err, errlen, UV_ENOMEM, "out of memory listing resets");
      goto out_stmt;
    }
    v = grown;
    r = &v[count++];
    memset(r, 0, sizeof *r);
    r->old_sequence = sqlite3_column_int64(st, 3);
    r->new_sequence = sqlite3_column_int64(st, 4);
    r->consumer_id = dup_column(st, 0);
    r->stream_name = dup_column(st, 1);
    r->subject_id = dup_column(st, 2);
    r->old_position = dup_column(st, 5);
    r->new_position = dup_column(st, 6);
    r->reason = dup_column(st, 7);
    if (r->consumer_id == NULL || r->stream_name == NULL ||
        r->subject_id == NULL || r->old_position == NULL ||
        r->new_position == NULL || r->reason == NULL) {
      rc = set_err(err, errlen, UV_ENOMEM, "out of memory listing resets");
      goto out_stmt;
    }
    if ((rc = time_column(s, st, 8, &r->at, err, errlen)) != 0)
      goto out_stmt;
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(s, rc, "list resets", err, errlen);
out_stmt:
  stmt_done(st);
out:
  pthread_mutex_unlock(&s->mu);
  if (rc != 0 || count == 0) {
    store_reset_records_free(v, count);
    return rc;
  }
  *out = v;
  *n = count;
  return 0;
}

/* ---- Consumer state, journal and outbox --------------------------------- */

static int read_consumer(store *s, sqlite3_stmt *st, store_consumer *out,
                         char *err, size_t errlen) {
  int rc;

  memset(out, 0, sizeof *out);
  out->high_seq = sqlite3_column_int64(st, 2);
  if ((rc = time_column(s, st, 3, &out->updated_at, err, errlen)) != 0)
    return rc;
  out->consumer_id = dup_column(st, 0);
  out->identity = dup_column(st, 1);
  if (out->consumer_id == NULL || out->identity == NULL) {
    store_consumer_free(out);
    return set_err(err, errlen, UV_ENOMEM,
                   "out of memory reading a consumer's state");
  }
  return 0;
}

int store_get_consumer(store *s, const char *consumer_id, store_consumer *out,
                       char *err, size_t errlen) {
  sqlite3_stmt *st;
  slice id;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    memset(out, 0, sizeof *out);
  if (s == NULL || out == NULL)
    return set_err(err, errlen, UV_EINVAL, "store and out are required");
  if ((rc = normalize_consumer(consumer_id, &id, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    goto out;
  }
  st = s->stmts[ST_CONSUMER_GET];
  if ((rc = bind_slice(st, 1, id)) != SQLITE_OK) {
    stmt_done(st);
    rc = db_error(s, rc, "read consumer state", err, errlen);
    goto out;
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_DONE)
    rc = set_err(err, errlen, STORE_ENOTFOUND, "consumer state not found");
  else if (rc != SQLITE_ROW)
    rc = db_error(s, rc, "read consumer state", err, errlen);
  else
    rc = read_consumer(s, st, out, err, errlen);
  stmt_done(st);
out:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int store_list_consumers(store *s, store_consumer **out, size_t *n, char *err,
                         size_t errlen) {
  store_consumer *v = NULL, *grown;
  size_t cap = 0, count = 0;
  sqlite3_stmt *st;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    *out = NULL;
  if (n != NULL)
    *n = 0;
  if (s == NULL || out == NULL || n == NULL)
    return set_err(err, errlen, UV_EINVAL, "store, out and n are required");
  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    goto out;
  }
  st = s->stmts[ST_CONSUMER_LIST];
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((grown = grow(v, &cap, count, sizeof *v)) == NULL) {
      rc = set_err(err, errlen, UV_ENOMEM, "out of memory listing consumers");
      goto out_stmt;
    }
    v = grown;
    if ((rc = read_consumer(s, st, &v[count], err, errlen)) != 0)
      goto out_stmt;
    count++;
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(s, rc, "list consumers", err, errlen);
out_stmt:
  stmt_done(st);
out:
  pthread_mutex_unlock(&s->mu);
  if (rc != 0 || count == 0) {
    store_consumers_free(v, count);
    return rc;
  }
  *out = v;
  *n = count;
  return 0;
}

/* A blob column as an owned copy with a NUL after its bytes. */
static void *dup_blob(sqlite3_stmt *st, int col, size_t *len) {
  const void *b = sqlite3_column_blob(st, col);
  size_t n = (size_t)sqlite3_column_bytes(st, col);
  char *p = malloc(n + 1);

  if (p == NULL)
    return NULL;
  if (n > 0)
    memcpy(p, b, n);
  p[n] = '\0';
  *len = n;
  return p;
}

/* Runs the per-consumer load statement st (journal or outbox) and hands
 * each row to fill, which takes what it needs into element i of the
 * array. The array's element size is size; it is grown as rows come. */
typedef int (*load_row_fn)(store *s, sqlite3_stmt *st, void *elem, char *err,
                           size_t errlen);

static int load_rows(store *s, int stmt, const char *consumer_id, size_t size,
                     load_row_fn fill, const char *what, void **out, size_t *n,
                     char *err, size_t errlen) {
  void *v = NULL, *grown;
  size_t cap = 0, count = 0;
  sqlite3_stmt *st;
  slice id;
  int rc;

  *out = NULL;
  *n = 0;
  if ((rc = normalize_consumer(consumer_id, &id, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    goto out;
  }
  st = s->stmts[stmt];
  if ((rc = bind_slice(st, 1, id)) != SQLITE_OK) {
    rc = db_error(s, rc, what, err, errlen);
    goto out_stmt;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if ((grown = grow(v, &cap, count, size)) == NULL) {
      rc = set_err(err, errlen, UV_ENOMEM, "out of memory: %s", what);
      goto out_stmt;
    }
    v = grown;
    memset((char *)v + count * size, 0, size);
    count++;
    if ((rc = fill(s, st, (char *)v + (count - 1) * size, err, errlen)) != 0)
      goto out_stmt;
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(s, rc, what, err, errlen);
out_stmt:
  stmt_done(st);
out:
  pthread_mutex_unlock(&s->mu);
  *out = v;
  *n = count;
  return rc;
}

static int fill_journal(store *s, sqlite3_stmt *st, void *elem, char *err,
                        size_t errlen) {
  store_journal_entry *e = elem;

  e->key = dup_column(st, 0);
  e->value = dup_blob(st, 1, &e->len);
  if (e->key == NULL || e->value == NULL)
    return set_err(err, errlen, UV_ENOMEM, "out of memory loading a journal");
  return time_column(s, st, 2, &e->updated_at, err, errlen);
}

static int fill_outbox(store *s, sqlite3_stmt *st, void *elem, char *err,
                       size_t errlen) {
  store_outbox_entry *e = elem;

  e->id = (uint64_t)sqlite3_column_int64(st, 0);
  e->value = dup_blob(st, 1, &e->len);
  if (e->value == NULL)
    return set_err(err, errlen, UV_ENOMEM, "out of memory loading an outbox");
  return time_column(s, st, 2, &e->created_at, err, errlen);
}

/* The rows of one consumer's journal or outbox (stmt), each size bytes,
 * filled by fill; what names the call in errors, free_fn frees a partial
 * result. */
static int load_entries(store *s, int stmt, const char *consumer_id,
                        size_t size, load_row_fn fill, const char *what,
                        void (*free_fn)(void *, size_t), void **out, size_t *n,
                        char *err, size_t errlen) {
  void *v;
  size_t count;
  int rc;

  clear_err(err, errlen);
  if (out != NULL)
    *out = NULL;
  if (n != NULL)
    *n = 0;
  if (s == NULL || out == NULL || n == NULL)
    return set_err(err, errlen, UV_EINVAL, "store, out and n are required");
  rc = load_rows(s, stmt, consumer_id, size, fill, what, &v, &count, err,
                 errlen);
  if (rc != 0 || count == 0) {
    free_fn(v, count);
    return rc;
  }
  *out = v;
  *n = count;
  return 0;
}

static void journal_free_any(void *v, size_t n) {
  store_journal_free(v, n);
}

static void outbox_free_any(void *v, size_t n) {
  store_outbox_free(v, n);
}

int store_load_journal(store *s, const char *consumer_id,
                       store_journal_entry **out, size_t *n, char *err,
                       size_t errlen) {
  return load_entries(s, ST_JOURNAL_LOAD, consumer_id,
                      sizeof(store_journal_entry), fill_journal, "load journal",
                      journal_free_any, (void **)out, n, err, errlen);
}

int store_load_outbox(store *s, const char *consumer_id,
                      store_outbox_entry **out, size_t *n, char *err,
                      size_t errlen) {
  return load_entries(s, ST_OUTBOX_LOAD, consumer_id,
                      sizeof(store_outbox_entry), fill_outbox, "load outbox",
                      outbox_free_any, (void **)out, n, err, errlen);
}

/* ---- Removal and re-keying ---------------------------------------------- */

/* Writes a key as consumer "c", stream "s", subject "x" for messages. */
static void key_text(const nkey *k, char *out, size_t outlen) {
  char c[96], st[96], sub[96];

  quote(k->consumer.p, k->consumer.n, c, sizeof c);
  quote(k->stream.p, k->stream.n, st, sizeof st);
  quote(k->subject.p, k->subject.n, sub, sizeof sub);
  snprintf(out, outlen, "consumer %s, stream %s, subject %s", c, st, sub);
}

int store_remove_cursor(store *s, const store_key *key, char *err,
                        size_t errlen) {
  sqlite3_stmt *st;
  nkey k;
  int rc;

  clear_err(err, errlen);
  if (s == NULL || key == NULL)
    return set_err(err, errlen, UV_EINVAL, "store and key are required");
  if ((rc = normalize_key(key, &k, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    goto out;
  }
  st = s->stmts[ST_CURSOR_DELETE];
  if ((rc = bind_key(st, &k)) != SQLITE_OK) {
    stmt_done(st);
    rc = db_error(s, rc, "remove cursor", err, errlen);
    goto out;
  }
  if ((rc = step_done(st)) != SQLITE_OK)
    rc = db_error(s, rc, "remove cursor", err, errlen);
  else if (sqlite3_changes(s->db) == 0)
    rc = set_err(err, errlen, STORE_ENOTFOUND, "cursor not found");
out:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int store_remove_consumer(store *s, const char *consumer_id, char *err,
                          size_t errlen) {
  static const int tables[] = { ST_REMOVE_CURSORS, ST_REMOVE_JOURNAL,
                                ST_REMOVE_OUTBOX, ST_REMOVE_STATE,
                                ST_REMOVE_FLAGS };
  char q[96];
  int64_t removed = 0;
  sqlite3_stmt *st;
  size_t i;
  slice id;
  int rc;

  clear_err(err, errlen);
  if (s == NULL)
    return set_err(err, errlen, UV_EINVAL, "store is required");
  if ((rc = normalize_consumer(consumer_id, &id, err, errlen)) != 0)
    return rc;
  pthread_mutex_lock(&s->mu);
  if ((rc = tx_begin(s, err, errlen)) != 0)
    goto out;
  for (i = 0; i < sizeof tables / sizeof tables[0]; i++) {
    st = s->stmts[tables[i]];
    if ((rc = bind_slice(st, 1, id)) != SQLITE_OK ||
        (rc = step_done(st)) != SQLITE_OK) {
      stmt_done(st);
      rc = db_error(s, rc, "remove consumer", err, errlen);
      goto fail;
    }
    removed += sqlite3_changes(s->db);
  }
  if (removed == 0) {
    quote(id.p, id.n, q, sizeof q);
    rc = set_err(err, errlen, STORE_ENOTFOUND,
                 "the state file holds nothing for consumer %s", q);
    goto fail;
  }
  if ((rc = tx_commit(s, err, errlen)) == 0)
    goto out;
fail:
  tx_rollback(s);
out:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int store_rekey_cursor(store *s, const store_key *from, const store_key *to,
                       char *err, size_t errlen) {
  static const int stmts[] = { ST_REKEY, ST_REKEY_RESETS };
  char a[400], b[400];
  sqlite3_stmt *st;
  nkey f, t;
  size_t i;
  int rc;

  clear_err(err, errlen);
  if (s == NULL || from == NULL || to == NULL)
    return set_err(err, errlen, UV_EINVAL, "store, from and to are required");
  if ((rc = normalize_key(from, &f, err, errlen)) != 0 ||
      (rc = normalize_key(to, &t, err, errlen)) != 0)
    return rc;
  key_text(&f, a, sizeof a);
  key_text(&t, b, sizeof b);
  if (slice_eq(f.consumer, t.consumer) && slice_eq(f.stream, t.stream) &&
      slice_eq(f.subject, t.subject))
    return set_err(err, errlen, STORE_EINVAL,
                   "cannot move the cursor of %s onto itself", a);
  pthread_mutex_lock(&s->mu);
  if ((rc = tx_begin(s, err, errlen)) != 0)
    goto out;
  if ((rc = get_locked(s, &f, NULL, err, errlen)) != 0) {
    if (rc == STORE_ENOTFOUND)
      set_err(err, errlen, rc, "cannot move the cursor of %s: there is none",
              a);
    goto fail;
  }
  rc = get_locked(s, &t, NULL, err, errlen);
  if (rc == STORE_ENOTFOUND)
    clear_err(err, errlen);
  if (rc == 0) {
    rc = set_err(err, errlen, STORE_EEXIST,
                 "cannot move the cursor of %s to %s: that key has a cursor "
                 "already; remove one of the two first",
                 a, b);
    goto fail;
  }
  if (rc != STORE_ENOTFOUND)
    goto fail;
  for (i = 0; i < sizeof stmts / sizeof stmts[0]; i++) {
    st = s->stmts[stmts[i]];
    if ((rc = bind_key(st, &f)) != SQLITE_OK ||
        (rc = bind_slice(st, 4, t.consumer)) != SQLITE_OK ||
        (rc = bind_slice(st, 5, t.stream)) != SQLITE_OK ||
        (rc = bind_slice(st, 6, t.subject)) != SQLITE_OK ||
        (rc = step_done(st)) != SQLITE_OK) {
      stmt_done(st);
      rc = db_error(s, rc, "move cursor", err, errlen);
      goto fail;
    }
  }
  if ((rc = tx_commit(s, err, errlen)) == 0)
    goto out;
fail:
  tx_rollback(s);
out:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

bool store_created(const store *s) {
  return s->created;
}

const char *store_path(const store *s) {
  return s->path;
}

void store_cursor_free(store_cursor *c) {
  if (c == NULL)
    return;
  free(c->consumer_id);
  free(c->stream_name);
  free(c->subject_id);
  free(c->position);
  free(c->last_delivery_id);
  free(c->last_error);
  memset(c, 0, sizeof *c);
}

void store_cursors_free(store_cursor *v, size_t n) {
  size_t i;

  if (v == NULL)
    return;
  for (i = 0; i < n; i++)
    store_cursor_free(&v[i]);
  free(v);
}

void store_reset_records_free(store_reset_record *v, size_t n) {
  size_t i;

  if (v == NULL)
    return;
  for (i = 0; i < n; i++) {
    free(v[i].consumer_id);
    free(v[i].stream_name);
    free(v[i].subject_id);
    free(v[i].old_position);
    free(v[i].new_position);
    free(v[i].reason);
  }
  free(v);
}

void store_consumer_free(store_consumer *c) {
  if (c == NULL)
    return;
  free(c->consumer_id);
  free(c->identity);
  memset(c, 0, sizeof *c);
}

void store_consumers_free(store_consumer *v, size_t n) {
  size_t i;

  if (v == NULL)
    return;
  for (i = 0; i < n; i++)
    store_consumer_free(&v[i]);
  free(v);
}

void store_journal_free(store_journal_entry *v, size_t n) {
  size_t i;

  if (v == NULL)
    return;
  for (i = 0; i < n; i++) {
    free(v[i].key);
    free(v[i].value);
  }
  free(v);
}

void store_outbox_free(store_outbox_entry *v, size_t n) {
  size_t i;

  if (v == NULL)
    return;
  for (i = 0; i < n; i++)
    free(v[i].value);
  free(v);
}

/* ---- A state file that vanished ---------------------------------------- */

/* Whether the path no longer names the file the connection has open: it
 * was removed (with its directory, perhaps) or another file took its
 * place. Any other stat failure is left to the commit to report. */
static bool file_moved(store *s) {
  struct stat st;

  if (stat(s->path, &st) != 0)
    return errno == ENOENT || errno == ENOTDIR;
  return st.st_dev != s->dev || st.st_ino != s->ino;
}

/* Takes the lock again when its file went with the state file (rm -rf of
 * the directory): otherwise a second tether could lock a new lock file and
 * share the new state file. */
static int relock(store *s, char *err, size_t errlen) {
  char lock_path[PATH_MAX];
  struct stat a, b;
  int old = s->lock_fd, rc;

  snprintf(lock_path, sizeof lock_path, "%s.lock", s->path);
  if (fstat(old, &a) == 0 && stat(lock_path, &b) == 0 && a.st_dev == b.st_dev &&
      a.st_ino == b.st_ino)
    return 0;
  if ((rc = take_lock(s, err, errlen)) != 0) {
    if (s->lock_fd >= 0 && s->lock_fd != old)
      close(s->lock_fd);
    s->lock_fd = old;
    return rc;
  }
  close(old);
  return 0;
}

/* Makes the state file again at its path after it was removed or replaced
 * while open; runs on the commit worker with the mutex held. Writes what
 * happened into msg. The new file is empty, as at a first start: the caller
 * commits every cursor it knows into it (STORE_ERECREATED).
 *
 * The old connection closes first: on close SQLite checkpoints into the
 * file it has open (the removed one) and deletes <path>-wal and <path>-shm
 * by name, which must not be the new file's. A file someone put at the
 * path is moved aside with its -wal, never deleted; a -wal left with no
 * database is deleted, since SQLite would replay its pages into the new
 * file. */
static int recreate_locked(store *s, char *msg, size_t msglen) {
  char aside[PATH_MAX], from[PATH_MAX + 8], to[PATH_MAX + 8], why[512];
  struct stat st;
  bool replaced;
  int rc;

  close_db(s);
  /* stat, not lstat: a symlink whose target went is a removal, and the
   * new file is made at the target, through the link. */
  replaced = stat(s->path, &st) == 0;
  snprintf(aside, sizeof aside, "%s.replaced", s->path);
  snprintf(from, sizeof from, "%s-wal", s->path);
  snprintf(to, sizeof to, "%s-wal", aside);
  if (replaced) {
    if (rename(s->path, aside) != 0) {
      int e = errno;
      rc = set_err(why, sizeof why, errno_code(e), "cannot move %s aside: %s",
                   s->path, strerror(e));
      goto fail;
    }
    rename(from, to);
  } else {
    unlink(from);
  }
  snprintf(from, sizeof from, "%s-shm", s->path);
  unlink(from);
  if ((rc = make_parents(s->path, why, sizeof why)) != 0 ||
      (rc = relock(s, why, sizeof why)) != 0 ||
      (rc = create_file(s, why, sizeof why)) != 0 ||
      (rc = open_db(s, why, sizeof why)) != 0)
    goto fail;
  if (replaced)
    return set_err(msg, msglen, 0,
                   "state file %s was replaced by another file while tether "
                   "ran; moved that one to %s and created the state file "
                   "again",
                   s->path, aside);
  return set_err(msg, msglen, 0,
                 "state file %s was removed while tether ran; created it "
                 "again",
                 s->path);

fail:
  close_db(s);
  return set_err(msg, msglen, rc,
                 "state file %s was %s while tether ran, and creating it "
                 "again failed: %s",
                 s->path, replaced ? "replaced" : "removed", why);
}

/* ---- Group commit ------------------------------------------------------ */

typedef struct commit_req {
  uv_work_t work;
  store *s; /* borrowed; store_close asserts no commit is running */
  store_commit_cb cb;
  void *data;
  size_t n;
  store_advance *items; /* owned; their strings point into text */
  size_t n_ops;
  store_op *ops; /* owned; their strings and values point into text */
  nop *nops;     /* owned; the checked ops, filled by the worker */
  char *text;    /* owned: every copied string and value */
  int status;
  char msg[1024];        /* an operation's name and its reason fit */
  int *item_status;      /* owned */
  char **item_text;      /* owned, as are its entries (NULL = none) */
  const char **item_msg; /* owned array; the view handed to cb */
} commit_req;

static void commit_req_free(commit_req *c) {
  size_t i;

  if (c == NULL)
    return;
  if (c->item_text != NULL)
    for (i = 0; i < c->n; i++)
      free(c->item_text[i]);
  free(c->item_text);
  free(c->item_msg);
  free(c->item_status);
  free(c->items);
  free(c->ops);
  free(c->nops);
  free(c->text);
  free(c);
}

static size_t copy_len(const char *p) {
  return p != NULL ? strlen(p) + 1 : 1;
}

static const char *copy_str(char **dst, const char *p) {
  size_t n = copy_len(p);
  char *out = *dst;

  if (p != NULL)
    memcpy(out, p, n);
  else
    out[0] = '\0';
  *dst += n;
  return out;
}

/* A copy that keeps NULL apart from "" (a consumer op's identity). */
static const char *copy_str_or_null(char **dst, const char *p) {
  return p != NULL ? copy_str(dst, p) : NULL;
}

static const void *copy_bytes(char **dst, const void *p, size_t n) {
  char *out = *dst;

  if (p == NULL)
    return NULL;
  if (n > 0)
    memcpy(out, p, n);
  *dst += n;
  return out;
}

/* The bytes store_commit_start copies for an op; false on overflow. */
static bool op_copy_len(const store_op *op, size_t *total) {
  size_t n = copy_len(op->key.consumer_id) + copy_len(op->key.stream_name) +
             copy_len(op->key.subject_id) + copy_len(op->name);

  return !__builtin_add_overflow(*total, n, total) &&
         !__builtin_add_overflow(*total, op->value != NULL ? op->len : 0,
                                 total);
}

/* Names the failing operation i of a commit in its message. */
static void op_failed(commit_req *c, size_t i, const char *why) {
  char what[300];

  describe_op(&c->ops[i], what, sizeof what);
  snprintf(c->msg, sizeof c->msg, "operation %zu, %s: %s", i, what, why);
}

/* Applies the batch in one transaction on a thread-pool thread.
 *
 * Threading: this worker touches only its commit_req, whose requests were
 * deep-copied on the loop thread, and the SQLite connection under the store
 * mutex. It reports nothing itself; on_commit_done applies the results on
 * the loop thread. A recreate replaces the connection, the file's identity
 * and perhaps the lock, all under that mutex too.
 *
 * Durability ordering (DESIGN.md section 3): a file sink is fdatasync'd
 * before the commit that covers its events is started, and upstream acks
 * (lockd) are sent only from the commit callback, i.e. after COMMIT
 * returned. So a committed cursor is never ahead of what the sink holds,
 * and the upstream never forgets an event tether has not made durable.
 * COMMIT returning means the WAL frames are written; with
 * synchronous=NORMAL they reach the disk at the next checkpoint, which can
 * only cost duplicates (see set_pragmas); a commit with operations is
 * fsync'd at COMMIT (set_sync). A refused advance (non-monotonic, invalid)
 * is decided before it writes, so it does not hold back the others; an
 * operation that is invalid or fails, and a failure of SQLite itself (disk
 * full, I/O error), roll the whole batch back, so no cursor moves without
 * its operations and the batch can be retried as a unit. */
static void on_commit_work(uv_work_t *w) {
  commit_req *c = container_of(w, commit_req, work);
  store *s = c->s;
  char msg[ITEM_MSG_MAX];
  nadvance a;
  size_t i;
  int rc;

  c->status = 0;
  pthread_mutex_lock(&s->mu);
  /* A commit into a file that is no longer at the path would be lost at
   * the next start. Checked before every commit, an empty one too (the
   * last one at shutdown may have nothing new). */
  if (s->db == NULL || file_moved(s)) {
    rc = recreate_locked(s, c->msg, sizeof c->msg);
    c->status = rc == 0 ? STORE_ERECREATED : rc;
    pthread_mutex_unlock(&s->mu);
    return;
  }
  if (c->n == 0 && c->n_ops == 0) {
    pthread_mutex_unlock(&s->mu);
    return;
  }
  /* Every operation is checked before the transaction begins: one that
   * cannot apply fails the commit without taking the write lock. */
  for (i = 0; i < c->n_ops; i++) {
    if ((rc = normalize_op(&c->ops[i], &c->nops[i], msg, sizeof msg)) != 0) {
      op_failed(c, i, msg);
      pthread_mutex_unlock(&s->mu);
      c->status = rc;
      return;
    }
  }
  if ((rc = set_sync(s, c->n_ops > 0, c->msg, sizeof c->msg)) != 0 ||
      (rc = tx_begin(s, c->msg, sizeof c->msg)) != 0)
    goto fail;
  for (i = 0; i < c->n; i++) {
    msg[0] = '\0';
    rc = normalize_advance(&c->items[i], &a, msg, sizeof msg);
    if (rc == 0)
      rc = advance_locked(s, &a, msg, sizeof msg);
    if (rc == STORE_EINVAL || rc == STORE_ENONMONO) {
      c->item_status[i] = rc;
      c->item_text[i] = strdup(msg);
    } else if (rc != 0) {
      snprintf(c->msg, sizeof c->msg, "%s", msg);
      goto fail;
    }
  }
  /* After the advances, in the caller's order: a put and a delete of one
   * key in one commit end as the later one says. */
  for (i = 0; i < c->n_ops; i++) {
    msg[0] = '\0';
    if ((rc = op_locked(s, &c->nops[i], msg, sizeof msg)) != 0) {
      op_failed(c, i, msg);
      goto fail;
    }
  }
  if ((rc = tx_commit(s, c->msg, sizeof c->msg)) != 0)
    goto fail;
  pthread_mutex_unlock(&s->mu);
  return;

fail:
  tx_rollback(s);
  pthread_mutex_unlock(&s->mu);
  c->status = rc;
}

static void on_commit_done(uv_work_t *w, int status) {
  commit_req *c = container_of(w, commit_req, work);
  size_t i;

  /* Only uv_cancel, which nobody outside this file can reach for this
   * request, makes a queued work item end this way; nothing ran. */
  if (status == UV_ECANCELED) {
    c->status = UV_ECANCELED;
    snprintf(c->msg, sizeof c->msg, "group commit cancelled before it ran");
  }
  for (i = 0; i < c->n; i++) {
    if (c->status != 0) {
      c->item_status[i] = c->status;
      c->item_msg[i] = c->msg;
    } else if (c->item_status[i] != 0) {
      c->item_msg[i] = c->item_text[i] != NULL
                           ? c->item_text[i]
                           : store_strerror(c->item_status[i]);
    } else {
      c->item_msg[i] = "";
    }
  }
  /* Cleared before the callback, so it may start the next commit or close
   * the store. */
  c->s->in_commit = false;
  c->cb(c->data, c->status, c->msg, c->item_status, c->item_msg, c->n);
  commit_req_free(c);
}

int store_commit_start(store *s, uv_loop_t *loop, const store_advance *reqs,
                       size_t n, const store_op *ops, size_t n_ops,
                       store_commit_cb cb, void *data) {
  commit_req *c;
  size_t i, text = 0;
  char *p;
  int rc;

  if (s == NULL || loop == NULL || cb == NULL || (reqs == NULL && n > 0) ||
      (ops == NULL && n_ops > 0))
    return UV_EINVAL;
  if (s->in_commit)
    return UV_EBUSY;
  c = calloc(1, sizeof *c);
  if (c == NULL)
    return UV_ENOMEM;
  c->s = s;
  c->cb = cb;
  c->data = data;
  c->n = n;
  for (i = 0; i < n; i++)
    text += copy_len(reqs[i].key.consumer_id) +
            copy_len(reqs[i].key.stream_name) +
            copy_len(reqs[i].key.subject_id) + copy_len(reqs[i].delivery_id) +
            copy_len(reqs[i].position);
  for (i = 0; i < n_ops; i++)
    if (!op_copy_len(&ops[i], &text)) {
      rc = UV_ENOMEM;
      goto fail;
    }
  c->n_ops = n_ops;
  c->text = malloc(text > 0 ? text : 1);
  c->items = calloc(n > 0 ? n : 1, sizeof *c->items);
  c->item_status = calloc(n > 0 ? n : 1, sizeof *c->item_status);
  c->item_text = calloc(n > 0 ? n : 1, sizeof *c->item_text);
  c->item_msg = calloc(n > 0 ? n : 1, sizeof *c->item_msg);
  c->ops = calloc(n_ops > 0 ? n_ops : 1, sizeof *c->ops);
  c->nops = calloc(n_ops > 0 ? n_ops : 1, sizeof *c->nops);
  if (c->text == NULL || c->items == NULL || c->item_status == NULL ||
      c->item_text == NULL || c->item_msg == NULL || c->ops == NULL ||
      c->nops == NULL) {
    rc = UV_ENOMEM;
    goto fail;
  }
  p = c->text;
  for (i = 0; i < n; i++) {
    c->items[i] = reqs[i];
    c->items[i].key.consumer_id = copy_str(&p, reqs[i].key.consumer_id);
    c->items[i].key.stream_name = copy_str(&p, reqs[i].key.stream_name);
    c->items[i].key.subject_id = copy_str(&p, reqs[i].key.subject_id);
    c->items[i].delivery_id = copy_str(&p, reqs[i].delivery_id);
    c->items[i].position = copy_str(&p, reqs[i].position);
  }
  for (i = 0; i < n_ops; i++) {
    c->ops[i] = ops[i];
    c->ops[i].key.consumer_id = copy_str(&p, ops[i].key.consumer_id);
    c->ops[i].key.stream_name = copy_str(&p, ops[i].key.stream_name);
    c->ops[i].key.subject_id = copy_str(&p, ops[i].key.subject_id);
    c->ops[i].name = copy_str_or_null(&p, ops[i].name);
    c->ops[i].value = copy_bytes(&p, ops[i].value, ops[i].len);
  }
  if ((rc = uv_queue_work(loop, &c->work, on_commit_work, on_commit_done)) != 0)
    goto fail;
  s->in_commit = true;
  return 0;

fail:
  commit_req_free(c);
  return rc;
}

int store_set_paused(store *s, const char *consumer_id, bool paused, char *err,
                     size_t errlen) {
  char now[40];
  sqlite3_stmt *st = NULL;
  int rc;

  clear_err(err, errlen);
  if (s == NULL || consumer_id == NULL || *consumer_id == '\0')
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: consumer id is required");
  store_format_time(clock_now(), now, sizeof now);
  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
  }
  rc = sqlite3_prepare_v2(
      s->db,
      "INSERT INTO consumer_flags (consumer_id, paused, updated_at) "
      "VALUES (?1, ?2, ?3) ON CONFLICT (consumer_id) DO UPDATE SET "
      "paused = excluded.paused, updated_at = excluded.updated_at",
      -1, &st, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_text(st, 1, consumer_id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, paused ? 1 : 0);
    sqlite3_bind_text(st, 3, now, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  sqlite3_finalize(st);
  rc = rc == SQLITE_OK ? 0
                       : db_error(s, rc, "save the paused flag", err, errlen);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int store_get_paused(store *s, const char *consumer_id, bool *paused, char *err,
                     size_t errlen) {
  sqlite3_stmt *st = NULL;
  int rc;

  clear_err(err, errlen);
  *paused = false;
  if (s == NULL || consumer_id == NULL)
    return set_err(err, errlen, STORE_EINVAL,
                   "invalid cursor: consumer id is required");
  pthread_mutex_lock(&s->mu);
  if (s->db == NULL) {
    rc = db_lost(s, err, errlen);
    pthread_mutex_unlock(&s->mu);
    return rc;
  }
  rc = sqlite3_prepare_v2(
      s->db, "SELECT paused FROM consumer_flags WHERE consumer_id = ?1", -1,
      &st, NULL);
  if (rc == SQLITE_OK) {
    sqlite3_bind_text(st, 1, consumer_id, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
      *paused = sqlite3_column_int(st, 0) != 0;
    rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
  }
  sqlite3_finalize(st);
  rc = rc == SQLITE_OK ? 0
                       : db_error(s, rc, "read the paused flag", err, errlen);
  pthread_mutex_unlock(&s->mu);
  return rc;
}
