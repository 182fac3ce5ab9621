/* Configuration: inih splits the text into keys and values; everything else
 * (sections, continuation lines, the environment, option tables, the checks
 * across keys) happens here, in two passes.
 *
 * Pass 1 runs inside ini_parse_stream. Our reader hands inih one line at a
 * time and classifies it the way inih will, because inih alone cannot give
 * us what we need: it keeps only the first 49 bytes of a section name, it
 * reports only the first malformed line, it silently cuts a line at its
 * 200-byte buffer and carries the rest over as a new line, and it does not
 * call the handler for section headers at all. So the reader records section
 * headers itself, reports every malformed or overlong line and hands inih a
 * blank line in its place; the handler only collects key = value pairs and
 * continuation lines into the current section.
 *
 * Pass 2 walks the collected sections in file order, expands the
 * environment, parses each value through its option table and runs the
 * checks that span several keys. Errors from both passes are sorted by line
 * at the end, so the user reads them in file order.
 */
#include "daemon/config.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <ini.h>
#include <uv.h>

#include "daemon/log.h"
#include "daemon/registry.h"
#include "daemon/upstream.h"
#include "protocol/buf.h"

/* inih's line buffer is 200 bytes and needs 3 of them for "\r\n\0". */
#define CONFIG_LINE_MAX 197
/* A configuration is small; anything bigger is the wrong file. */
#define CONFIG_FILE_MAX (1024 * 1024)
#define CONFIG_NAME_MAX 64
/* Characters of a value shown in an error before it is cut with "...". */
#define ERROR_VALUE_MAX 120
/* The explicit bitmask of the check hooks has one bit per option. */
#define OPTIONS_MAX 64

/* ---- option tables ----------------------------------------------------- */

/* log_level_names without "off": tether always logs errors. The index of
 * each name equals its log_level value (test_config checks it). */
static const char *const log_level_choices[] = { "debug", "info", "warn",
                                                 "error", NULL };
/* Indices are LOG_FORMAT_TEXT and LOG_FORMAT_JSON. */
static const char *const log_format_choices[] = { "text", "json", NULL };

#define SECOND 1000
#define MINUTE (60 * SECOND)
#define HOUR   (60 * MINUTE)
#define DAY    (24 * HOUR)

const option config_daemon_options[] = {
  { "state", OPT_STRING, "./.tether/state.db", offsetof(daemon_conf, state),
    "path of the SQLite file that keeps every consumer's cursor", 0, 0, NULL,
    0 },
  { "checkpoint_interval", OPT_DURATION, "1s",
    offsetof(daemon_conf, checkpoint_interval),
    "how often delivered cursors are committed, all in one transaction", 10,
    HOUR, NULL, 0 },
  { "shutdown_timeout", OPT_DURATION, "20s",
    offsetof(daemon_conf, shutdown_timeout),
    "how long SIGTERM or SIGINT waits for in-flight events before exiting", 0,
    HOUR, NULL, 0 },
  { "log_level", OPT_ENUM, "info", offsetof(daemon_conf, log_level),
    "least severe level that is logged", 0, 0, log_level_choices, 0 },
  { "log_format", OPT_ENUM, "text", offsetof(daemon_conf, log_format),
    "text (key=value fields) or json (one object per line)", 0, 0,
    log_format_choices, 0 },
  { "log_file", OPT_STRING, "", offsetof(daemon_conf, log_file),
    "append logs to this file instead of stderr; empty = stderr", 0, 0, NULL,
    0 },
  { "status_interval", OPT_DURATION, "1m",
    offsetof(daemon_conf, status_interval),
    "how often each consumer's progress is logged; 0 = never", 0, DAY, NULL,
    0 },
  { "exit_when_done", OPT_BOOL, "false", offsetof(daemon_conf, exit_when_done),
    "exit once every finite source (generate with count) is delivered", 0, 0,
    NULL, 0 },
  { "socket", OPT_STRING, "./.tether/tether.sock",
    offsetof(daemon_conf, socket),
    "unix socket of the local API (status, cursors, subscriptions); empty = "
    "none",
    0, 0, NULL, 0 },
  { "socket_mode", OPT_MODE, "0600", offsetof(daemon_conf, socket_mode),
    "permissions of the socket: 0600 = tether's user only; 0660 with "
    "socket_group shares it",
    0, 0, NULL, 0 },
  { "socket_group", OPT_STRING, "", offsetof(daemon_conf, socket_group),
    "group that owns the socket (a name or a number); empty = unchanged", 0, 0,
    NULL, 0 },
  { "http_listen", OPT_STRING, "", offsetof(daemon_conf, http_listen),
    "HOST:PORT (or just PORT, on 127.0.0.1) for probes and /metrics only "
    "(health, ready, metrics); empty = off",
    0, 0, NULL, 0 },
  { "api_max_connections", OPT_INT, "256",
    offsetof(daemon_conf, api_max_connections),
    "connections open at once on the unix socket; one more closes the "
    "longest-idle kept-alive connection, or is answered 503 if none is idle",
    1, 65536, NULL, 0 },
  { "http_max_connections", OPT_INT, "16",
    offsetof(daemon_conf, http_max_connections),
    "connections open at once on http_listen, a budget apart from the unix "
    "socket's; one more is handled as for api_max_connections",
    1, 65536, NULL, 0 },
  { "api_request_timeout", OPT_DURATION, "10s",
    offsetof(daemon_conf, api_request_timeout),
    "time a started API request may take to arrive whole; a slower client "
    "is cut off",
    10, HOUR, NULL, 0 },
  { "ready_commit_timeout", OPT_DURATION, "30s",
    offsetof(daemon_conf, ready_commit_timeout),
    "/v1/ready (and tether status) turn false once cursor commits have "
    "been failing this long; 0 = at the first failure",
    0, DAY, NULL, 0 },
  { "api_idle_timeout", OPT_DURATION, "5s",
    offsetof(daemon_conf, api_idle_timeout),
    "time an API connection (socket or http_listen) may wait for its next "
    "request before tether closes it; subscriptions are not idle",
    10, HOUR, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

static const char *const stream_change_choices[] = { "refuse", "keep",
                                                     "restart", NULL };

const option config_consumer_options[] = {
  { "source", OPT_STRING, NULL, offsetof(consumer_conf, source),
    "built-in source type to read; set this or upstream", 0, 0, NULL, 0 },
  { "upstream", OPT_STRING, NULL, offsetof(consumer_conf, upstream),
    "name of the [upstream NAME] section to read; set this or source", 0, 0,
    NULL, 0 },
  { "sink", OPT_STRING, NULL, offsetof(consumer_conf, sink),
    "where events are delivered, as TYPE or TYPE:ARG (see the sink types)", 0,
    0, NULL, OPT_REQUIRED },
  { "max_in_flight", OPT_INT, "1000", offsetof(consumer_conf, max_in_flight),
    "events read but not yet delivered; a full window pauses the source", 1,
    1000000, NULL, 0 },
  { "max_in_flight_bytes", OPT_SIZE, "16MiB",
    offsetof(consumer_conf, max_in_flight_bytes),
    "bytes of events (their envelope lines) read but not yet delivered; the "
    "window is full at whichever bound comes first, and always takes one "
    "event",
    1024, 1099511627776ULL, NULL, 0 },
  { "on_stream_change", OPT_ENUM, "refuse",
    offsetof(consumer_conf, on_stream_change),
    "when the cursor belongs to another stream than the configuration now "
    "reads (another url, path, collection): refuse to start, keep the "
    "cursor (the same stream, renamed), or restart from the beginning",
    0, 0, stream_change_choices, 0 },
  { "retry_min", OPT_DURATION, "250ms", offsetof(consumer_conf, retry_min),
    "backoff after the sink first fails a batch", 1, HOUR, NULL, 0 },
  { "retry_max", OPT_DURATION, "30s", offsetof(consumer_conf, retry_max),
    "longest backoff between retries of a failing sink", 1, DAY, NULL, 0 },
  { "max_attempts", OPT_INT, "0", offsetof(consumer_conf, max_attempts),
    "failed attempts at delivering an event before on_fail applies (what "
    "counts as one depends on the sink, see README); 0 = unlimited",
    0, 1000000, NULL, 0 },
  { "on_fail", OPT_STRING, "retry", offsetof(consumer_conf, on_fail),
    "after max_attempts: retry (go on, with a warning), skip (log an error, "
    "give the event up) or dead_letter:PATH (append a record to PATH, "
    "fdatasync'd, then give the event up)",
    0, 0, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

const char config_embedded_default[] =
    "; tether's built-in configuration, used by `tether run` without -c.\n"
    "; Copy it to a file, change it and run `tether run -c FILE`;\n"
    "; docs/config.md lists every key.\n"
    "\n"
    "[daemon]\n"
    "; Where tether remembers how far each consumer got, so a restart\n"
    "; resumes instead of starting over.\n"
    "state = ./.tether/state.db\n"
    "; Log each consumer's progress every 5 seconds (only when it moved).\n"
    "status_interval = 5s\n"
    "\n"
    "; A consumer reads one source and delivers every event to one sink.\n"
    "[consumer demo]\n"
    "; Synthetic events, built in: no upstream service needed.\n"
    "source = generate\n"
    "; Two events per second.\n"
    "rate = 2\n"
    "; Each event as one JSON line on standard output.\n"
    "sink = stdout\n";

/* ---- growable string --------------------------------------------------- */

/* Text built piece by piece over protocol/buf. The first allocation failure
 * sticks, so a long run of appends is checked once, where the text is
 * taken. */
typedef struct sbuf {
  buf b;
  bool oom;
} sbuf;

static void sbuf_add(sbuf *s, const char *p, size_t n) {
  if (!s->oom && buf_append(&s->b, p, n) != 0)
    s->oom = true;
}

static void sbuf_puts(sbuf *s, const char *p) {
  sbuf_add(s, p, strlen(p));
}

static void sbuf_printf(sbuf *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sbuf_printf(sbuf *s, const char *fmt, ...) {
  va_list ap;

  va_start(ap, fmt);
  if (!s->oom && buf_vappendf(&s->b, fmt, ap) != 0)
    s->oom = true;
  va_end(ap);
}

/* Returns the string (owned by the caller) and empties s; NULL after an
 * allocation failed. An empty buffer gives "". */
static char *sbuf_take(sbuf *s) {
  char *text = s->oom ? NULL : buf_steal(&s->b);

  if (text == NULL)
    buf_free(&s->b);
  s->oom = false;
  return text;
}

/* ---- small helpers ----------------------------------------------------- */

/* inih uses isspace() in the C locale; so do we, without the locale. */
static bool is_blank(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
         c == '\r';
}

static bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}

static bool is_env_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_env_char(char c) {
  return is_env_start(c) || (c >= '0' && c <= '9');
}

/* inih's find_chars_or_comment: the first of chars, or of a ';' that
 * follows a blank, or the end. */
static const char *find_chars_or_comment(const char *s, const char *chars) {
  bool was_blank = false;

  while (*s != '\0' && (chars == NULL || strchr(chars, *s) == NULL) &&
         !(was_blank && *s == ';')) {
    was_blank = is_blank(*s);
    s++;
  }
  return s;
}

/* Is name 1 to 64 characters of [A-Za-z0-9_.-]? */
static bool valid_name(const char *name) {
  size_t n = strlen(name), i;

  if (n == 0 || n > CONFIG_NAME_MAX)
    return false;
  for (i = 0; i < n; i++)
    if (!is_name_char(name[i]))
      return false;
  return true;
}

/* Upstream keys whose values are masked, as no option table marks them. */
static bool looks_secret(const char *key) {
  static const char *const words[] = { "password", "secret", "token", "key",
                                       NULL };
  size_t i;

  for (i = 0; words[i] != NULL; i++)
    if (strcasestr(key, words[i]) != NULL)
      return true;
  return false;
}

static bool in_table(const option *table, const char *name, size_t n) {
  const option *o;

  for (o = table; o != NULL && o->name != NULL; o++)
    if (strlen(o->name) == n && strncmp(o->name, name, n) == 0)
      return true;
  return false;
}

/* Does s start like "rate = 5", naming a key tether knows? inih treats an
 * indented line after a key as more of that key's value, so a file whose
 * keys are indented would silently glue them together; we refuse that
 * instead. Values that merely contain "=" are not affected. */
static bool looks_like_key(const char *s) {
  size_t n = 0, i;

  while (is_name_char(s[n]))
    n++;
  if (n == 0)
    return false;
  for (i = n; s[i] == ' ' || s[i] == '\t'; i++)
    ;
  if (s[i] != '=' && s[i] != ':')
    return false;
  if (n == 4 && strncmp(s, "type", 4) == 0)
    return true;
  if (in_table(config_daemon_options, s, n) ||
      in_table(config_consumer_options, s, n))
    return true;
  for (i = 0; registry_sources[i] != NULL; i++)
    if (in_table(registry_sources[i]->options, s, n))
      return true;
  for (i = 0; registry_sinks[i] != NULL; i++)
    if (in_table(registry_sinks[i]->options, s, n))
      return true;
  return false;
}

/* Levenshtein distance, for "did you mean"; long names are never close. */
static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), i, j;
  size_t row[CONFIG_NAME_MAX + 1], diag, up;

  if (la > CONFIG_NAME_MAX || lb > CONFIG_NAME_MAX)
    return SIZE_MAX;
  for (j = 0; j <= lb; j++)
    row[j] = j;
  for (i = 1; i <= la; i++) {
    diag = row[0];
    row[0] = i;
    for (j = 1; j <= lb; j++) {
      up = row[j];
      row[j] = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < row[j])
        row[j] = up + 1;
      if (row[j - 1] + 1 < row[j])
        row[j] = row[j - 1] + 1;
      diag = up;
    }
  }
  return row[lb];
}

/* The closest option name within distance 2 over up to three tables. */
static const char *suggest(const char *key, const option *a, const option *b,
                           const option *c) {
  const option *tables[3] = { a, b, c }, *o;
  const char *best = NULL;
  size_t best_d = 3, d, t;

  for (t = 0; t < 3; t++) {
    for (o = tables[t]; o != NULL && o->name != NULL; o++) {
      d = edit_distance(key, o->name);
      if (d < best_d) {
        best_d = d;
        best = o->name;
      }
    }
  }
  return best;
}

/* A value as shown in an error: quoted by the caller, escaped here so one
 * error stays one line, and cut when long. */
static void put_shown(sbuf *b, const char *v) {
  size_t i;

  for (i = 0; v[i] != '\0'; i++) {
    unsigned char c = (unsigned char)v[i];
    if (i == ERROR_VALUE_MAX) {
      sbuf_puts(b, "...");
      return;
    }
    if (c == '"' || c == '\\')
      sbuf_printf(b, "\\%c", c);
    else if (c == '\n')
      sbuf_puts(b, "\\n");
    else if (c == '\t')
      sbuf_puts(b, "\\t");
    else if (c < 0x20 || c == 0x7f)
      sbuf_printf(b, "\\x%02x", c);
    else
      sbuf_add(b, (const char *)&v[i], 1);
  }
}

/* ---- pass 1: lines, sections and keys ---------------------------------- */

typedef enum section_kind {
  SEC_DAEMON,
  SEC_UPSTREAM,
  SEC_CONSUMER,
} section_kind;

typedef struct entry {
  char *key;
  /* As written, continuation lines joined with one space; a growable
   * string, so a long run of continuation lines costs linear time. */
  char *raw;
  size_t raw_len, raw_cap;
  int line;
} entry;

typedef struct section {
  section_kind kind;
  char *name; /* NULL for [daemon] */
  int line;
  entry *entries;
  size_t n_entries, cap_entries;
} section;

typedef struct error_line {
  int line; /* 0: about the whole file */
  size_t seq;
  char *text;
} error_line;

typedef enum line_kind {
  LINE_OTHER,        /* blank, comment, section header or replaced */
  LINE_KEY,          /* inih calls the handler with a new key */
  LINE_CONTINUATION, /* inih calls the handler with more of the last key */
} line_kind;

enum { CUR_NONE = -1, CUR_IGNORED = -2 };

typedef struct parser {
  const char *path;
  const char *text;
  size_t len, pos;

  int line;       /* the line last handed to inih */
  line_kind kind; /* what inih will do with it */
  bool in_key;    /* inih's prev_name is set: indented lines continue it */
  char prev_key[CONFIG_LINE_MAX + 1];
  int prev_key_line;

  long cur;       /* index into sections, CUR_NONE or CUR_IGNORED */
  long cur_entry; /* entry continuation lines extend; -1: drop them */
  section *sections;
  size_t n_sections, cap_sections;
  int consumer_headers; /* [consumer ...] lines seen, even invalid ones */

  error_line *errors;
  size_t n_errors, cap_errors;
  bool oom;
} parser;

static bool grow(void **p, size_t *cap, size_t n, size_t size) {
  size_t c;
  void *q;

  if (n < *cap)
    return true;
  c = *cap ? *cap * 2 : 8;
  if (c > SIZE_MAX / size)
    return false;
  q = realloc(*p, c * size);
  if (q == NULL)
    return false;
  *p = q;
  *cap = c;
  return true;
}

static void add_error_text(parser *p, int line, sbuf *b) {
  char *text = sbuf_take(b);

  if (text == NULL || !grow((void **)&p->errors, &p->cap_errors, p->n_errors,
                            sizeof *p->errors)) {
    free(text);
    p->oom = true;
    return;
  }
  p->errors[p->n_errors].line = line;
  p->errors[p->n_errors].seq = p->n_errors;
  p->errors[p->n_errors].text = text;
  p->n_errors++;
}

static void start_error(const parser *p, int line, sbuf *b) {
  if (line > 0)
    sbuf_printf(b, "%s:%d: ", p->path, line);
  else
    sbuf_printf(b, "%s: ", p->path);
}

/* "PATH:LINE: message". */
static void add_error(parser *p, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_error(parser *p, int line, const char *fmt, ...) {
  sbuf b = { 0 };
  char msg[1024];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  start_error(p, line, &b);
  sbuf_puts(&b, msg);
  add_error_text(p, line, &b);
}

static void put_label(sbuf *b, const section *s) {
  static const char *const kinds[] = { "daemon", "upstream", "consumer" };

  if (s->name == NULL)
    sbuf_printf(b, "[%s]", kinds[s->kind]);
  else
    sbuf_printf(b, "[%s %s]", kinds[s->kind], s->name);
}

/* "PATH:LINE: [SECTION]: message", about a section as a whole. */
static void section_error(parser *p, const section *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void section_error(parser *p, const section *s, const char *fmt, ...) {
  sbuf b = { 0 };
  char msg[1024];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  start_error(p, s->line, &b);
  put_label(&b, s);
  sbuf_puts(&b, ": ");
  sbuf_puts(&b, msg);
  add_error_text(p, s->line, &b);
}

/* "PATH:LINE: [SECTION] KEY = "VALUE": message"; a NULL value is shown as
 * *** (a secret). */
static void key_error(parser *p, const section *s, const entry *e,
                      const char *value, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void key_error(parser *p, const section *s, const entry *e,
                      const char *value, const char *fmt, ...) {
  sbuf b = { 0 };
  char msg[1024];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  start_error(p, e->line, &b);
  put_label(&b, s);
  sbuf_puts(&b, " ");
  put_shown(&b, e->key);
  if (value == NULL) {
    sbuf_puts(&b, " = ***: ");
  } else {
    sbuf_puts(&b, " = \"");
    put_shown(&b, value);
    sbuf_puts(&b, "\": ");
  }
  sbuf_puts(&b, msg);
  add_error_text(p, e->line, &b);
}

static section *find_section(parser *p, section_kind kind, const char *name) {
  size_t i;

  for (i = 0; i < p->n_sections; i++) {
    section *s = &p->sections[i];
    if (s->kind == kind &&
        (name == NULL ? s->name == NULL
                      : s->name != NULL && strcmp(s->name, name) == 0))
      return s;
  }
  return NULL;
}

/* A "[...]" line; text is what sits between the brackets. */
static void on_section(parser *p, const char *text, size_t n) {
  static const char expected[] =
      "expected [daemon], [upstream NAME] or [consumer NAME]";
  const char *kw, *name;
  size_t kw_len, name_len;
  section_kind kind;
  section *s;
  char namebuf[CONFIG_LINE_MAX + 1];
  sbuf b = { 0 };

  p->cur = CUR_IGNORED;
  while (n > 0 && is_blank(*text))
    text++, n--;
  while (n > 0 && is_blank(text[n - 1]))
    n--;
  kw = text;
  for (kw_len = 0; kw_len < n && !is_blank(kw[kw_len]); kw_len++)
    ;
  name = kw + kw_len;
  name_len = n - kw_len;
  while (name_len > 0 && is_blank(*name))
    name++, name_len--;
  memcpy(namebuf, name, name_len);
  namebuf[name_len] = '\0';

  if (kw_len == 6 && strncmp(kw, "daemon", 6) == 0) {
    kind = SEC_DAEMON;
  } else if (kw_len == 8 && strncmp(kw, "upstream", 8) == 0) {
    kind = SEC_UPSTREAM;
  } else if (kw_len == 8 && strncmp(kw, "consumer", 8) == 0) {
    kind = SEC_CONSUMER;
    p->consumer_headers++;
  } else {
    start_error(p, p->line, &b);
    sbuf_puts(&b, "unknown section [");
    memcpy(namebuf, text, n);
    namebuf[n] = '\0';
    put_shown(&b, namebuf);
    sbuf_printf(&b, "]: %s", expected);
    add_error_text(p, p->line, &b);
    return;
  }

  if (kind == SEC_DAEMON && name_len > 0) {
    start_error(p, p->line, &b);
    sbuf_puts(&b, "[daemon ");
    put_shown(&b, namebuf);
    sbuf_puts(&b, "]: [daemon] takes no name");
    add_error_text(p, p->line, &b);
    return;
  }
  if (kind != SEC_DAEMON && name_len == 0) {
    add_error(p, p->line, "[%s]: a name is missing: [%s NAME]",
              kind == SEC_UPSTREAM ? "upstream" : "consumer",
              kind == SEC_UPSTREAM ? "upstream" : "consumer");
    return;
  }
  if (kind != SEC_DAEMON && !valid_name(namebuf)) {
    start_error(p, p->line, &b);
    sbuf_printf(&b, "[%s ", kind == SEC_UPSTREAM ? "upstream" : "consumer");
    put_shown(&b, namebuf);
    sbuf_puts(&b, "]: a name is 1 to 64 characters of A-Z, a-z, 0-9, _, . "
                  "and -");
    add_error_text(p, p->line, &b);
    return;
  }
  if (!grow((void **)&p->sections, &p->cap_sections, p->n_sections,
            sizeof *p->sections)) {
    p->oom = true;
    return;
  }
  s = &p->sections[p->n_sections];
  memset(s, 0, sizeof *s);
  s->kind = kind;
  s->line = p->line;
  if (kind != SEC_DAEMON && (s->name = strdup(namebuf)) == NULL) {
    p->oom = true;
    return;
  }
  p->cur = (long)p->n_sections++;
}

/* Classifies line (NUL-terminated, no newline) exactly as inih will treat
 * it, records section headers, and returns false for a line inih would
 * reject, which the caller replaces with a blank one. */
static bool classify(parser *p, const char *line) {
  char tmp[CONFIG_LINE_MAX + 1];
  const char *start, *end, *rest;
  size_t n;

  p->kind = LINE_OTHER;
  n = strlen(line);
  memcpy(tmp, line, n + 1);
  start = tmp;
  /* inih skips a UTF-8 byte order mark on its first line. */
  if (p->line == 1 && (unsigned char)tmp[0] == 0xEF &&
      (unsigned char)tmp[1] == 0xBB && (unsigned char)tmp[2] == 0xBF)
    start += 3;
  while (n > (size_t)(start - tmp) && is_blank(tmp[n - 1]))
    tmp[--n] = '\0';
  while (is_blank(*start))
    start++;

  if (*start == ';' || *start == '#' || *start == '\0')
    return true;
  if (p->in_key && start > tmp) {
    p->kind = LINE_CONTINUATION;
    return true;
  }
  if (*start == '[') {
    /* Keys under a header we cannot read belong to no section we know;
     * dropping them beats reporting each as misplaced. */
    end = find_chars_or_comment(start + 1, "]");
    for (rest = end + (*end == ']'); is_blank(*rest); rest++)
      ;
    if (*end != ']' || (*rest != '\0' && *rest != ';')) {
      p->cur = CUR_IGNORED;
      return false;
    }
    p->in_key = false;
    p->cur_entry = -1;
    on_section(p, start + 1, (size_t)(end - start - 1));
    return true;
  }
  end = find_chars_or_comment(start, "=:");
  if ((*end != '=' && *end != ':') || end == start)
    return false;
  p->kind = LINE_KEY;
  p->in_key = true;
  return true;
}

/* inih's fgets-style reader over our in-memory text. */
static char *on_read_line(char *buf, int num, void *stream) {
  parser *p = stream;
  const char *start, *nl;
  size_t n;

  /* inih 55 reads with INI_MAX_LINE = 200. */
  assert(num >= CONFIG_LINE_MAX + 3);
  (void)num;
  if (p->pos >= p->len)
    return NULL;
  start = p->text + p->pos;
  nl = memchr(start, '\n', p->len - p->pos);
  n = nl != NULL ? (size_t)(nl - start) : p->len - p->pos;
  p->pos += n + (nl != NULL);
  p->line++;
  p->kind = LINE_OTHER;
  if (n > 0 && start[n - 1] == '\r')
    n--;

  if (n > CONFIG_LINE_MAX) {
    add_error(p, p->line,
              "line is %zu bytes long; the limit is %d: split the value over "
              "indented continuation lines",
              n, CONFIG_LINE_MAX);
    goto blank;
  }
  if (memchr(start, '\0', n) != NULL) {
    add_error(p, p->line, "line contains a NUL byte");
    goto blank;
  }
  memcpy(buf, start, n);
  buf[n] = '\0';
  if (!classify(p, buf)) {
    add_error(p, p->line, "expected \"key = value\" or \"[section]\"");
    p->cur_entry = -1;
    goto blank;
  }
  buf[n] = '\n';
  buf[n + 1] = '\0';
  return buf;

blank:
  /* A blank line leaves inih's state as it was, like our own. */
  p->kind = LINE_OTHER;
  buf[0] = '\n';
  buf[1] = '\0';
  return buf;
}

static void on_continuation(parser *p, const char *value) {
  section *s;
  entry *e;
  char text[CONFIG_LINE_MAX + 1];
  const char *end;
  size_t n;
  sbuf b = { 0 };

  /* inih 55 strips "; comment" from key lines but not from continuation
   * lines; strip it here too so a comment means the same on every line. */
  end = find_chars_or_comment(value, NULL);
  n = (size_t)(end - value);
  while (n > 0 && is_blank(value[n - 1]))
    n--;
  memcpy(text, value, n);
  text[n] = '\0';

  if (p->cur < 0)
    return;
  s = &p->sections[p->cur];
  if (looks_like_key(text)) {
    size_t k = 0;
    while (is_name_char(text[k]))
      k++;
    text[k] = '\0';
    start_error(p, p->line, &b);
    put_label(&b, s);
    sbuf_puts(&b, " ");
    sbuf_puts(&b, text);
    sbuf_puts(&b, ": the line is indented, so it continues the value of ");
    put_shown(&b, p->prev_key);
    sbuf_printf(&b, " (line %d); remove the indentation to start a new key",
                p->prev_key_line);
    add_error_text(p, p->line, &b);
    p->cur_entry = -1;
    return;
  }
  if (p->cur_entry < 0 || n == 0)
    return;
  e = &s->entries[p->cur_entry];
  b.b.data = e->raw;
  b.b.len = e->raw_len;
  b.b.cap = e->raw_cap;
  if (b.b.len > 0)
    sbuf_add(&b, " ", 1);
  sbuf_add(&b, text, n);
  if (!b.oom && buf_cstr(&b.b) == NULL)
    b.oom = true;
  /* Even after a failure b.b.data is the live block (realloc keeps it). */
  e->raw = b.b.data;
  e->raw_len = b.b.len;
  e->raw_cap = b.b.cap;
  if (b.oom)
    p->oom = true;
}

static int on_key(void *user, const char *section_name, const char *name,
                  const char *value) {
  parser *p = user;
  section *s;
  entry *e;
  sbuf b = { 0 };

  /* inih's section name is cut at 49 bytes; on_section keeps the whole. */
  (void)section_name;
  if (p->oom)
    return 1;
  if (p->kind == LINE_CONTINUATION) {
    on_continuation(p, value);
    return 1;
  }
  /* Our reader and inih must agree on every line. */
  assert(p->kind == LINE_KEY);
  p->cur_entry = -1;
  snprintf(p->prev_key, sizeof p->prev_key, "%s", name);
  p->prev_key_line = p->line;

  if (p->cur == CUR_NONE) {
    start_error(p, p->line, &b);
    put_shown(&b, name);
    sbuf_puts(&b, ": a key outside any section; put it under [daemon], "
                  "[upstream NAME] or [consumer NAME]");
    add_error_text(p, p->line, &b);
    return 1;
  }
  if (p->cur == CUR_IGNORED)
    return 1;
  s = &p->sections[p->cur];
  if (!grow((void **)&s->entries, &s->cap_entries, s->n_entries,
            sizeof *s->entries)) {
    p->oom = true;
    return 1;
  }
  e = &s->entries[s->n_entries];
  e->key = strdup(name);
  e->raw = strdup(value);
  e->raw_len = strlen(value);
  e->raw_cap = e->raw_len + 1;
  e->line = p->line;
  if (e->key == NULL || e->raw == NULL) {
    free(e->key);
    free(e->raw);
    p->oom = true;
    return 1;
  }
  p->cur_entry = (long)s->n_entries++;
  return 1;
}

static void entry_free(entry *e) {
  free(e->key);
  free(e->raw);
}

static void section_free(section *s) {
  size_t i;

  for (i = 0; i < s->n_entries; i++)
    entry_free(&s->entries[i]);
  free(s->entries);
  free(s->name);
}

/* Duplicates are found by sorting after pass 1 rather than by a search per
 * line, which would make a 1 MiB file of keys take seconds. The sorts run
 * over pointers, ordered by name and then by line, so the first of a run of
 * equal names is the one the file gave first. */
static int section_order(const void *a, const void *b) {
  const section *x = *(const section *const *)a;
  const section *y = *(const section *const *)b;
  int c;

  if (x->kind != y->kind)
    return x->kind < y->kind ? -1 : 1;
  c = strcmp(x->name ? x->name : "", y->name ? y->name : "");
  if (c != 0)
    return c;
  return x->line < y->line ? -1 : x->line > y->line;
}

static int entry_order(const void *a, const void *b) {
  const entry *x = *(const entry *const *)a;
  const entry *y = *(const entry *const *)b;
  int c = strcmp(x->key, y->key);

  if (c != 0)
    return c;
  return x->line < y->line ? -1 : x->line > y->line;
}

/* Reports each key given twice in s and drops the later ones. */
static void drop_duplicate_keys(parser *p, section *s) {
  entry **sorted;
  bool *drop;
  size_t i, j, n = s->n_entries;

  if (n < 2)
    return;
  sorted = malloc(n * sizeof *sorted);
  drop = calloc(n, sizeof *drop);
  if (sorted == NULL || drop == NULL) {
    p->oom = true;
    goto done;
  }
  for (i = 0; i < n; i++)
    sorted[i] = &s->entries[i];
  qsort(sorted, n, sizeof *sorted, entry_order);
  for (i = 1, j = 0; i < n; i++) {
    sbuf b = { 0 };
    if (strcmp(sorted[i]->key, sorted[j]->key) != 0) {
      j = i;
      continue;
    }
    drop[sorted[i] - s->entries] = true;
    start_error(p, sorted[i]->line, &b);
    put_label(&b, s);
    sbuf_puts(&b, " ");
    put_shown(&b, sorted[i]->key);
    sbuf_printf(&b, ": set twice (first at line %d)", sorted[j]->line);
    add_error_text(p, sorted[i]->line, &b);
  }
  for (i = 0, j = 0; i < n; i++) {
    if (drop[i])
      entry_free(&s->entries[i]);
    else
      s->entries[j++] = s->entries[i];
  }
  s->n_entries = j;

done:
  free(sorted);
  free(drop);
}

/* Reports each section given twice and drops the later ones with their
 * keys, then the duplicate keys of the sections that remain. */
static void drop_duplicates(parser *p) {
  section **sorted;
  bool *drop;
  size_t i, j, n = p->n_sections;

  if (n >= 2) {
    sorted = malloc(n * sizeof *sorted);
    drop = calloc(n, sizeof *drop);
    if (sorted == NULL || drop == NULL) {
      free(sorted);
      free(drop);
      p->oom = true;
      return;
    }
    for (i = 0; i < n; i++)
      sorted[i] = &p->sections[i];
    qsort(sorted, n, sizeof *sorted, section_order);
    for (i = 1, j = 0; i < n; i++) {
      if (sorted[i]->kind != sorted[j]->kind ||
          strcmp(sorted[i]->name ? sorted[i]->name : "",
                 sorted[j]->name ? sorted[j]->name : "") != 0) {
        j = i;
        continue;
      }
      drop[sorted[i] - p->sections] = true;
      section_error(p, sorted[i], "duplicate section (first at line %d)",
                    sorted[j]->line);
    }
    for (i = 0, j = 0; i < n; i++) {
      if (drop[i])
        section_free(&p->sections[i]);
      else
        p->sections[j++] = p->sections[i];
    }
    p->n_sections = j;
    free(sorted);
    free(drop);
  }
  for (i = 0; i < p->n_sections; i++)
    drop_duplicate_keys(p, &p->sections[i]);
}

static void parser_free(parser *p) {
  size_t i;

  for (i = 0; i < p->n_sections; i++)
    section_free(&p->sections[i]);
  free(p->sections);
  for (i = 0; i < p->n_errors; i++)
    free(p->errors[i].text);
  free(p->errors);
}

/* ---- pass 2: values ----------------------------------------------------- */

/* Expands ${VAR}, ${VAR:-default} and $$ in raw. Returns 0 with *out
 * (owned by the caller), UV_EINVAL with msg, or UV_ENOMEM. The default is
 * taken as written, up to the first "}". */
static int expand_env(const char *raw, char **out, char *msg, size_t msglen) {
  static const char forms[] = "write ${NAME} or ${NAME:-default}";
  const char *s = raw, *close, *q, *def, *v;
  char *name;
  sbuf b = { 0 };
  size_t def_len = 0;

  *out = NULL;
  while (*s != '\0') {
    if (s[0] != '$') {
      for (q = s; *q != '\0' && *q != '$'; q++)
        ;
      sbuf_add(&b, s, (size_t)(q - s));
      s = q;
      continue;
    }
    if (s[1] == '$' || s[1] != '{') {
      sbuf_add(&b, "$", 1);
      s += s[1] == '$' ? 2 : 1;
      continue;
    }
    close = strchr(s + 2, '}');
    if (close == NULL) {
      snprintf(msg, msglen, "unterminated ${: %s, or $$ for a literal $",
               forms);
      goto invalid;
    }
    q = s + 2;
    if (!is_env_start(*q))
      goto bad_name;
    while (is_env_char(*q))
      q++;
    def = NULL;
    if (q != close) {
      if (q[0] != ':' || q[1] != '-')
        goto bad_name;
      def = q + 2;
      def_len = (size_t)(close - def);
    }
    name = strndup(s + 2, (size_t)(q - s - 2));
    if (name == NULL) {
      buf_free(&b.b);
      return UV_ENOMEM;
    }
    v = getenv(name);
    if (def != NULL && (v == NULL || *v == '\0')) {
      sbuf_add(&b, def, def_len);
    } else if (v == NULL) {
      snprintf(msg, msglen,
               "environment variable %.100s is not set (write "
               "${%.100s:-default} to give a default)",
               name, name);
      free(name);
      goto invalid;
    } else {
      sbuf_puts(&b, v);
    }
    free(name);
    s = close + 1;
  }
  *out = sbuf_take(&b);
  return *out == NULL ? UV_ENOMEM : 0;

bad_name:
  snprintf(msg, msglen,
           "invalid reference %.*s: %s, NAME being letters, digits and _",
           (int)(close - s + 1 > 100 ? 100 : close - s + 1), s, forms);
invalid:
  buf_free(&b.b);
  return UV_EINVAL;
}

/* Expands e's value; on failure reports it and returns NULL. secret hides
 * the raw text too: it may be the secret itself. */
static char *expand_entry(parser *p, const section *s, const entry *e,
                          bool secret) {
  char msg[512], *v;
  int r;

  r = expand_env(e->raw, &v, msg, sizeof msg);
  if (r == UV_ENOMEM) {
    p->oom = true;
    return NULL;
  }
  if (r != 0) {
    key_error(p, s, e, secret ? NULL : e->raw, "%s", msg);
    return NULL;
  }
  return v;
}

/* Parses value into conf by o, reporting a failure. Returns true on
 * success. */
static bool apply(parser *p, const section *s, const entry *e, const option *o,
                  const char *value, void *conf) {
  char msg[512];
  int r;

  r = options_parse_value(o, value, conf, msg, sizeof msg);
  if (r == UV_ENOMEM) {
    p->oom = true;
    return false;
  }
  if (r != 0) {
    key_error(p, s, e, (o->flags & OPT_SECRET) ? NULL : value, "%s", msg);
    return false;
  }
  return true;
}

static const entry *find_entry(const section *s, const char *key) {
  size_t i;

  for (i = 0; i < s->n_entries; i++)
    if (strcmp(s->entries[i].key, key) == 0)
      return &s->entries[i];
  return NULL;
}

static void build_daemon(parser *p, const section *s, daemon_conf *d) {
  const option *o;
  const char *hint;
  char *v;
  size_t i;

  if (options_set_defaults(config_daemon_options, d) != 0) {
    p->oom = true;
    return;
  }
  if (s == NULL)
    return;
  for (i = 0; i < s->n_entries; i++) {
    const entry *e = &s->entries[i];
    o = options_find(config_daemon_options, e->key);
    v = expand_entry(p, s, e,
                     o != NULL ? (o->flags & OPT_SECRET) != 0
                               : looks_secret(e->key));
    if (v == NULL)
      continue;
    if (o == NULL) {
      hint = suggest(e->key, config_daemon_options, NULL, NULL);
      key_error(p, s, e, looks_secret(e->key) ? NULL : v,
                "unknown key in [daemon]%s%s%s", hint ? "; did you mean " : "",
                hint ? hint : "", hint ? "?" : "");
    } else {
      apply(p, s, e, o, v, d);
    }
    free(v);
  }
}

static size_t table_len(const option *t) {
  size_t n = 0;

  while (t != NULL && t[n].name != NULL)
    n++;
  return n;
}

/* One key must mean one option in a consumer section. */
static void assert_disjoint(const option *a, const option *b) {
  const option *o;

  for (o = a; o != NULL && o->name != NULL; o++)
    assert(options_find(b, o->name) == NULL && "option name collision");
}

/* Allocates a type's conf struct with its defaults; NULL for none. */
static void *new_conf(parser *p, const option *table, size_t size) {
  void *conf = calloc(1, size > 0 ? size : 1);

  assert(table_len(table) <= OPTIONS_MAX);
  if (conf == NULL || options_set_defaults(table, conf) != 0) {
    if (conf != NULL)
      options_free(table, conf);
    free(conf);
    p->oom = true;
    return NULL;
  }
  return conf;
}

/* A header name: an RFC 9110 token. */
static bool valid_header_name(const char *s) {
  if (*s == '\0')
    return false;
  for (; *s != '\0'; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
          (*s >= '0' && *s <= '9') || strchr("!#$%&'*+-.^_`|~", *s) != NULL))
      return false;
  return true;
}

static void add_kv(parser *p, config_upstream *u, const entry *e, char *v) {
  config_kv *kv = realloc(u->kv, (u->n_kv + 1) * sizeof *u->kv);

  if (kv == NULL) {
    free(v);
    p->oom = true;
    return;
  }
  u->kv = kv;
  u->kv[u->n_kv].key = strdup(e->key);
  u->kv[u->n_kv].value = v;
  u->kv[u->n_kv].line = e->line;
  if (u->kv[u->n_kv].key == NULL)
    p->oom = true;
  u->n_kv++;
}

/* The type of an [upstream] section, which decides what its other keys
 * mean. */
static void upstream_type_of(parser *p, const section *s, const entry *e,
                             config_upstream *u) {
  const char *const *t;
  char *v, *list;
  sbuf b = { 0 };

  if ((v = expand_entry(p, s, e, false)) == NULL)
    return;
  for (t = registry_upstream_types; *t != NULL; t++)
    if (strcmp(*t, v) == 0)
      break;
  if (*t != NULL) {
    u->type = v;
    u->type_reg = registry_upstream(v);
    return;
  }
  for (t = registry_upstream_types; *t != NULL; t++)
    sbuf_printf(&b, "%s%s", t == registry_upstream_types ? "" : ", ", *t);
  if ((list = sbuf_take(&b)) == NULL)
    p->oom = true;
  else
    key_error(p, s, e, v, "expected one of: %s", list);
  free(list);
  free(v);
}

/* A key of an upstream type this version consumes: an option of its table,
 * or header.NAME. Returns the explicit bit it sets, or 0. */
static uint64_t typed_upstream_key(parser *p, const section *s, const entry *e,
                                   config_upstream *u) {
  const upstream_type *ut = u->type_reg;
  const option *o = options_find(ut->options, e->key);
  const char *hint;
  char *v;
  bool header = ut->takes_headers && strncmp(e->key, "header.", 7) == 0;

  v = expand_entry(p, s, e,
                   header || (o != NULL && (o->flags & OPT_SECRET) != 0));
  if (v == NULL)
    return 0;
  if (header) {
    /* Header values often carry credentials: never shown. */
    if (!valid_header_name(e->key + 7)) {
      key_error(p, s, e, NULL,
                "header.NAME needs a header name (letters, digits and "
                "!#$%%&'*+-.^_`|~)");
      free(v);
    } else {
      add_kv(p, u, e, v);
    }
    return 0;
  }
  if (o == NULL) {
    hint = suggest(e->key, ut->options, NULL, NULL);
    key_error(p, s, e, looks_secret(e->key) ? NULL : v,
              "unknown key for an upstream of type %s%s%s%s%s", ut->name,
              ut->takes_headers ? " (request headers are header.NAME)" : "",
              hint ? "; did you mean " : "", hint ? hint : "", hint ? "?" : "");
    free(v);
    return 0;
  }
  if (!apply(p, s, e, o, v, u->conf)) {
    free(v);
    return 0;
  }
  free(v);
  return (uint64_t)1 << options_index(ut->options, o);
}

static void build_upstream(parser *p, const section *s, config_upstream *u) {
  const entry *type_e = find_entry(s, "type");
  size_t errors_before = p->n_errors, i;
  uint64_t explicit = 0;
  const option *o;
  char msg[512];
  char *v;
  int r;

  u->line = s->line;
  if ((u->name = strdup(s->name)) == NULL) {
    p->oom = true;
    return;
  }
  if (type_e == NULL)
    section_error(p, s, "type is required");
  else
    upstream_type_of(p, s, type_e, u);
  if (u->type_reg != NULL &&
      (u->conf = new_conf(p, u->type_reg->options, u->type_reg->conf_size)) ==
          NULL)
    return;
  for (i = 0; i < s->n_entries; i++) {
    const entry *e = &s->entries[i];
    bool secret = looks_secret(e->key);

    if (e == type_e)
      continue;
    if (u->type_reg != NULL) {
      explicit |= typed_upstream_key(p, s, e, u);
      continue;
    }
    /* A type for a later version: keep the keys as they are. */
    if (!valid_name(e->key)) {
      key_error(p, s, e, secret ? NULL : e->raw,
                "a key is 1 to 64 characters of A-Z, a-z, 0-9, _, . and -");
      continue;
    }
    if ((v = expand_entry(p, s, e, secret)) != NULL)
      add_kv(p, u, e, v);
  }
  if (u->type_reg == NULL)
    return;
  for (o = u->type_reg->options; o->name != NULL; o++)
    if ((o->flags & OPT_REQUIRED) &&
        !(explicit & ((uint64_t)1 << options_index(u->type_reg->options, o))))
      section_error(p, s, "%s is required", o->name);
  if (p->n_errors != errors_before || p->oom || u->type_reg->check == NULL)
    return;
  msg[0] = '\0';
  r = u->type_reg->check(u->conf, explicit, msg, sizeof msg);
  if (r == UV_ENOMEM)
    p->oom = true;
  else if (r != 0)
    section_error(p, s, "%s", msg);
}

/* "stdout or file:PATH", from the registry. */
static char *sink_forms(void) {
  sbuf b = { 0 };
  size_t i, n = 0;

  while (registry_sinks[n] != NULL)
    n++;
  for (i = 0; i < n; i++) {
    if (i > 0)
      sbuf_puts(&b, i + 1 == n ? " or " : ", ");
    sbuf_puts(&b, registry_sinks[i]->name);
    if (registry_sinks[i]->arg != NULL)
      sbuf_printf(&b, ":%s", registry_sinks[i]->arg);
  }
  return sbuf_take(&b);
}

static bool resolve_sink(parser *p, const section *s, const entry *e,
                         const char *value, config_consumer *cc) {
  const char *colon = strchr(value, ':');
  size_t n = colon ? (size_t)(colon - value) : strlen(value), i;
  const sink_type *t = NULL;
  char arg[64], *forms;

  for (i = 0; registry_sinks[i] != NULL; i++)
    if (strlen(registry_sinks[i]->name) == n &&
        strncmp(registry_sinks[i]->name, value, n) == 0)
      t = registry_sinks[i];
  if (t == NULL) {
    if ((forms = sink_forms()) == NULL) {
      p->oom = true;
      return false;
    }
    key_error(p, s, e, value, "expected %s", forms);
    free(forms);
    return false;
  }
  if (t->arg == NULL && colon != NULL) {
    key_error(p, s, e, value, "%s takes no argument: write sink = %s", t->name,
              t->name);
    return false;
  }
  if (t->arg != NULL && (colon == NULL || colon[1] == '\0')) {
    for (i = 0; t->arg[i] != '\0' && i + 1 < sizeof arg; i++)
      arg[i] = (char)(t->arg[i] >= 'A' && t->arg[i] <= 'Z' ? t->arg[i] + 32
                                                           : t->arg[i]);
    arg[i] = '\0';
    key_error(p, s, e, value, "%s needs %s %s: %s:%s", t->name,
              strchr("aeiou", arg[0]) != NULL && arg[0] != '\0' ? "an" : "a",
              arg, t->name, t->arg);
    return false;
  }
  cc->sink = t;
  if (colon != NULL && (cc->sink_arg = strdup(colon + 1)) == NULL) {
    p->oom = true;
    return false;
  }
  return true;
}

int config_parse_on_fail(const char *text, sink_policy *out, char *err,
                         size_t errlen) {
  static const char prefix[] = "dead_letter:";

  if (strcmp(text, "retry") == 0) {
    out->on_fail = SINK_ON_FAIL_RETRY;
    out->dead_letter = NULL;
  } else if (strcmp(text, "skip") == 0) {
    out->on_fail = SINK_ON_FAIL_SKIP;
    out->dead_letter = NULL;
  } else if (strncmp(text, prefix, sizeof prefix - 1) == 0 &&
             text[sizeof prefix - 1] != '\0') {
    out->on_fail = SINK_ON_FAIL_DEAD_LETTER;
    out->dead_letter = text + sizeof prefix - 1;
  } else {
    snprintf(err, errlen, "expected retry, skip or dead_letter:PATH");
    return UV_EINVAL;
  }
  return 0;
}

static uint64_t common_bit(const char *name) {
  const option *o = options_find(config_consumer_options, name);

  assert(o != NULL);
  return (uint64_t)1 << options_index(config_consumer_options, o);
}

static void build_consumer(parser *p, const section *s, config *c,
                           config_consumer *cc) {
  const entry *src_e = find_entry(s, "source");
  const entry *up_e = find_entry(s, "upstream");
  const entry *sink_e = find_entry(s, "sink");
  const option *src_opts = NULL, *sink_opts = NULL, *o;
  uint64_t explicit_common = 0, explicit_src = 0, explicit_sink = 0;
  size_t errors_before = p->n_errors, i;
  bool types_known = true, key_errors;
  char msg[512], lo[32], hi[32], *v;
  int r;

  cc->line = s->line;
  if ((cc->name = strdup(s->name)) == NULL ||
      options_set_defaults(config_consumer_options, &cc->common) != 0) {
    p->oom = true;
    return;
  }

  /* source or upstream decides which keys the section takes. */
  if (src_e != NULL && up_e != NULL) {
    section_error(p, s, "set only one of source and upstream");
    types_known = false;
  } else if (src_e == NULL && up_e == NULL) {
    section_error(p, s, "set source = TYPE or upstream = NAME");
    types_known = false;
  }
  if (src_e != NULL) {
    explicit_common |= common_bit("source");
    v = expand_entry(p, s, src_e, false);
    if (v != NULL &&
        apply(p, s, src_e, options_find(config_consumer_options, "source"), v,
              &cc->common)) {
      cc->source = registry_source(v);
      if (cc->source == NULL) {
        sbuf b = { 0 };
        char *list;
        for (i = 0; registry_sources[i] != NULL; i++)
          sbuf_printf(&b, "%s%s", i > 0 ? ", " : "", registry_sources[i]->name);
        if ((list = sbuf_take(&b)) == NULL)
          p->oom = true;
        else
          key_error(p, s, src_e, v, "expected one of: %s", list);
        free(list);
      }
    }
    free(v);
    if (cc->source == NULL)
      types_known = false;
  }
  if (up_e != NULL) {
    const config_upstream *u = NULL;

    explicit_common |= common_bit("upstream");
    v = expand_entry(p, s, up_e, false);
    if (v != NULL &&
        apply(p, s, up_e, options_find(config_consumer_options, "upstream"), v,
              &cc->common) &&
        src_e == NULL) {
      /* A name is NULL only after an allocation failed (p->oom). */
      for (i = 0; i < c->n_upstreams; i++)
        if (c->upstreams[i].name != NULL &&
            strcmp(c->upstreams[i].name, v) == 0)
          u = &c->upstreams[i];
      if (u == NULL)
        key_error(p, s, up_e, v, "no [upstream %s] section", v);
      else if (u->type != NULL && u->type_reg == NULL)
        /* A type a later version consumes: say so rather than start
         * nothing. */
        key_error(p, s, up_e, v,
                  "[upstream %s] has type %s, which this version cannot "
                  "consume yet",
                  v, u->type);
    }
    free(v);
    /* The upstream's type decides the source, and so the section's keys. */
    if (u != NULL && u->type_reg != NULL) {
      cc->upstream = u;
      cc->source = u->type_reg->source;
    } else {
      types_known = false;
    }
  }

  if (sink_e != NULL) {
    explicit_common |= common_bit("sink");
    v = expand_entry(p, s, sink_e, false);
    if (v == NULL ||
        !apply(p, s, sink_e, options_find(config_consumer_options, "sink"), v,
               &cc->common) ||
        !resolve_sink(p, s, sink_e, v, cc))
      types_known = false;
    free(v);
  } else {
    types_known = false;
  }

  if (cc->source != NULL) {
    src_opts = cc->source->options;
    assert_disjoint(src_opts, config_consumer_options);
    cc->source_conf = new_conf(p, src_opts, cc->source->conf_size);
    if (cc->source_conf == NULL)
      return;
  }
  if (cc->sink != NULL) {
    sink_opts = cc->sink->options;
    assert_disjoint(sink_opts, config_consumer_options);
    assert_disjoint(sink_opts, src_opts);
    cc->sink_conf = new_conf(p, sink_opts, cc->sink->conf_size);
    if (cc->sink_conf == NULL)
      return;
  }

  for (i = 0; i < s->n_entries; i++) {
    const entry *e = &s->entries[i];
    void *conf = NULL;
    uint64_t *bits = NULL;
    const option *table = NULL;

    if (e == src_e || e == up_e || e == sink_e)
      continue;
    if ((o = options_find(config_consumer_options, e->key)) != NULL) {
      table = config_consumer_options;
      conf = &cc->common;
      bits = &explicit_common;
    } else if ((o = options_find(src_opts, e->key)) != NULL) {
      table = src_opts;
      conf = cc->source_conf;
      bits = &explicit_src;
    } else if ((o = options_find(sink_opts, e->key)) != NULL) {
      table = sink_opts;
      conf = cc->sink_conf;
      bits = &explicit_sink;
    }
    v = expand_entry(p, s, e,
                     o != NULL ? (o->flags & OPT_SECRET) != 0
                               : looks_secret(e->key));
    if (v == NULL)
      continue;
    if (o == NULL) {
      /* Without both types we cannot tell which keys belong; the error
       * about the type says what to fix first. */
      if (types_known) {
        const char *hint =
            suggest(e->key, config_consumer_options, src_opts, sink_opts);
        key_error(p, s, e, looks_secret(e->key) ? NULL : v,
                  "unknown key for a consumer with source %s and sink %s%s%s%s",
                  cc->source->name, cc->sink->name,
                  hint ? "; did you mean " : "", hint ? hint : "",
                  hint ? "?" : "");
      }
    } else if (apply(p, s, e, o, v, conf)) {
      *bits |= (uint64_t)1 << options_index(table, o);
    }
    free(v);
  }

  /* on_fail has a grammar of its own: parsed here, once for every sink,
   * so that its error names its line. */
  cc->policy.max_attempts = cc->common.max_attempts;
  if (cc->common.on_fail != NULL &&
      config_parse_on_fail(cc->common.on_fail, &cc->policy, msg, sizeof msg) !=
          0) {
    const entry *of = find_entry(s, "on_fail");

    if (of != NULL)
      key_error(p, s, of, cc->common.on_fail, "%s", msg);
    else
      section_error(p, s, "on_fail: %s", msg);
  }

  /* Checks across keys, reported on the section header's line. Those
   * that compare values run only when every value parsed, so that a
   * default standing in for a rejected value causes no second error. */
  key_errors = p->n_errors != errors_before;
  for (o = config_consumer_options; o->name != NULL; o++)
    if ((o->flags & OPT_REQUIRED) &&
        !(explicit_common &
          ((uint64_t)1 << options_index(config_consumer_options, o))))
      section_error(p, s, "%s is required", o->name);
  for (o = src_opts; o != NULL && o->name != NULL; o++)
    if ((o->flags & OPT_REQUIRED) &&
        !(explicit_src & ((uint64_t)1 << options_index(src_opts, o))))
      section_error(p, s, "%s is required", o->name);
  for (o = sink_opts; o != NULL && o->name != NULL; o++)
    if ((o->flags & OPT_REQUIRED) &&
        !(explicit_sink & ((uint64_t)1 << options_index(sink_opts, o))))
      section_error(p, s, "%s is required", o->name);
  if (!key_errors && cc->common.retry_min > cc->common.retry_max) {
    options_format_duration(cc->common.retry_min, lo, sizeof lo);
    options_format_duration(cc->common.retry_max, hi, sizeof hi);
    section_error(p, s, "retry_min (%s) is above retry_max (%s)", lo, hi);
  }
  if (p->n_errors != errors_before || p->oom)
    return;
  if (cc->source != NULL && cc->source->check != NULL) {
    msg[0] = '\0';
    r = cc->source->check(cc->source_conf, explicit_src, msg, sizeof msg);
    if (r == UV_ENOMEM)
      p->oom = true;
    else if (r != 0)
      section_error(p, s, "%s", msg);
  }
  if (cc->sink != NULL && cc->sink->check != NULL) {
    msg[0] = '\0';
    r = cc->sink->check(cc->sink_conf, cc->sink_arg, explicit_sink, msg,
                        sizeof msg);
    if (r == UV_ENOMEM)
      p->oom = true;
    else if (r != 0)
      section_error(p, s, "%s", msg);
  }
}

static int error_order(const void *a, const void *b) {
  const error_line *x = a, *y = b;
  /* Errors about the whole file come last. */
  long lx = x->line > 0 ? x->line : LONG_MAX;
  long ly = y->line > 0 ? y->line : LONG_MAX;

  if (lx != ly)
    return lx < ly ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int config_parse(const char *path, const char *text, size_t len, config *out,
                 char **errors) {
  parser p;
  size_t i, n;
  int r, rc = 0;
  sbuf b = { 0 };

  if (path == NULL || (text == NULL && len > 0) || out == NULL ||
      errors == NULL)
    return UV_EINVAL;
  memset(out, 0, sizeof *out);
  *errors = NULL;
  memset(&p, 0, sizeof p);
  p.path = path;
  p.text = text;
  p.len = len;
  p.cur = CUR_NONE;
  p.cur_entry = -1;

  r = ini_parse_stream(on_read_line, &p, on_key, &p);
  /* The reader hands inih only lines it accepts, so inih finding an error
   * means the two disagree; report rather than pass it silently. */
  if (r != 0 && p.n_errors == 0 && !p.oom)
    add_error(&p, r > 0 ? r : 0, "expected \"key = value\" or \"[section]\"");

  drop_duplicates(&p);
  if ((out->path = strdup(path)) == NULL)
    p.oom = true;
  build_daemon(&p, find_section(&p, SEC_DAEMON, NULL), &out->daemon);

  for (i = 0, n = 0; i < p.n_sections; i++)
    n += p.sections[i].kind == SEC_UPSTREAM;
  if (n > 0 && (out->upstreams = calloc(n, sizeof *out->upstreams)) == NULL)
    p.oom = true;
  for (i = 0; i < p.n_sections && out->upstreams != NULL; i++)
    if (p.sections[i].kind == SEC_UPSTREAM)
      build_upstream(&p, &p.sections[i], &out->upstreams[out->n_upstreams++]);

  for (i = 0, n = 0; i < p.n_sections; i++)
    n += p.sections[i].kind == SEC_CONSUMER;
  if (n > 0 && (out->consumers = calloc(n, sizeof *out->consumers)) == NULL)
    p.oom = true;
  for (i = 0; i < p.n_sections && out->consumers != NULL; i++)
    if (p.sections[i].kind == SEC_CONSUMER)
      build_consumer(&p, &p.sections[i], out,
                     &out->consumers[out->n_consumers++]);
  if (p.consumer_headers == 0)
    add_error(&p, 0, "no [consumer NAME] section: nothing to consume");

  if (p.oom) {
    rc = UV_ENOMEM;
    sbuf_printf(&b, "%s: out of memory\n", path);
    *errors = sbuf_take(&b);
  } else if (p.n_errors > 0) {
    rc = UV_EINVAL;
    qsort(p.errors, p.n_errors, sizeof *p.errors, error_order);
    for (i = 0; i < p.n_errors; i++) {
      sbuf_puts(&b, p.errors[i].text);
      sbuf_puts(&b, "\n");
    }
    if ((*errors = sbuf_take(&b)) == NULL)
      rc = UV_ENOMEM;
  }
  if (rc != 0)
    config_free(out);
  parser_free(&p);
  return rc;
}

int config_load(const char *path, config *out, char **errors) {
  char *buf = NULL, *q;
  size_t len = 0, cap = 0;
  ssize_t got;
  sbuf b = { 0 };
  int fd, rc;

  if (path == NULL || out == NULL || errors == NULL)
    return UV_EINVAL;
  memset(out, 0, sizeof *out);
  *errors = NULL;
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    rc = -errno;
    goto fail;
  }
  /* Read to the end rather than trust st_size, so a pipe or /dev/stdin
   * works too; one byte past the limit tells that the file is too big. */
  for (;;) {
    if (cap - len < 4096) {
      cap = cap ? cap * 2 : 8192;
      if (cap > CONFIG_FILE_MAX + 8192)
        cap = CONFIG_FILE_MAX + 8192;
      if ((q = realloc(buf, cap)) == NULL) {
        rc = UV_ENOMEM;
        goto fail;
      }
      buf = q;
    }
    got = read(fd, buf + len, cap - len);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0) {
      rc = -errno;
      goto fail;
    }
    if (got == 0)
      break;
    len += (size_t)got;
    if (len > CONFIG_FILE_MAX) {
      rc = UV_EFBIG;
      goto fail;
    }
  }
  close(fd);
  fd = -1;
  rc = config_parse(path, buf, len, out, errors);
  free(buf);
  return rc;

fail:
  if (fd >= 0)
    close(fd);
  free(buf);
  if (rc == UV_EFBIG)
    sbuf_printf(&b,
                "%s: cannot read: larger than 1 MiB, the limit for a "
                "configuration file\n",
                path);
  else
    sbuf_printf(&b, "%s: cannot read: %s\n", path, strerror(-rc));
  *errors = sbuf_take(&b);
  return rc;
}

void config_free(config *c) {
  size_t i, j;

  if (c == NULL)
    return;
  free(c->path);
  options_free(config_daemon_options, &c->daemon);
  for (i = 0; i < c->n_upstreams; i++) {
    config_upstream *u = &c->upstreams[i];
    free(u->name);
    free(u->type);
    if (u->type_reg != NULL && u->conf != NULL)
      options_free(u->type_reg->options, u->conf);
    free(u->conf);
    for (j = 0; j < u->n_kv; j++) {
      free(u->kv[j].key);
      free(u->kv[j].value);
    }
    free(u->kv);
  }
  free(c->upstreams);
  for (i = 0; i < c->n_consumers; i++) {
    config_consumer *cc = &c->consumers[i];
    free(cc->name);
    options_free(config_consumer_options, &cc->common);
    if (cc->source != NULL && cc->source_conf != NULL)
      options_free(cc->source->options, cc->source_conf);
    free(cc->source_conf);
    if (cc->sink != NULL && cc->sink_conf != NULL)
      options_free(cc->sink->options, cc->sink_conf);
    free(cc->sink_conf);
    free(cc->sink_arg);
  }
  free(c->consumers);
  memset(c, 0, sizeof *c);
}

/* ---- dump -------------------------------------------------------------- */

/* Can a value be split before s[i] (a space) without changing it? Only at a
 * single space between two non-blanks, and not before text that would read
 * as a comment or as a key on the continuation line. */
static bool exact_break(const char *s, size_t i) {
  return s[i] == ' ' && i > 0 && !is_blank(s[i - 1]) && s[i + 1] != '\0' &&
         !is_blank(s[i + 1]) && s[i + 1] != ';' && s[i + 1] != '#' &&
         !looks_like_key(s + i + 1);
}

/* Appends words to the line begun in b (its length is measured from the
 * last newline) while they fit; returns the number used, at least one. */
static size_t pack_line(sbuf *b, char **words, size_t n) {
  const char *nl = b->b.data ? memrchr(b->b.data, '\n', b->b.len) : NULL;
  size_t len = nl ? b->b.len - (size_t)(nl + 1 - b->b.data) : b->b.len,
         used = 0, w;

  while (used < n) {
    w = strlen(words[used]);
    if (used > 0 && len + 1 + w > CONFIG_LINE_MAX)
      break;
    if (used > 0) {
      sbuf_puts(b, " ");
      len++;
    }
    sbuf_puts(b, words[used]);
    len += w;
    used++;
  }
  sbuf_puts(b, "\n");
  return used;
}

static bool push_word(char ***words, size_t *n, size_t *cap, char *w) {
  if (!grow((void **)words, cap, *n, sizeof **words))
    return false;
  (*words)[(*n)++] = w;
  return true;
}

/* Splits s in place into the words between exact breaks. A word too long
 * for a line of its own is split further at any run of blanks (not before
 * a comment or key lookalike), which keeps it parseable at the cost of
 * squeezing those blanks to one space. */
static bool split_words(char *s, char ***words, size_t *n) {
  size_t len = strlen(s), i, j, r, w, start = 0, cap = 0;
  bool *brk = calloc(len + 1, sizeof *brk);

  if (brk == NULL)
    return false;
  /* Decide every break before any byte is cut. */
  for (i = 0; i < len; i++)
    brk[i] = exact_break(s, i);
  for (i = 0; i <= len; i++) {
    if (i < len && !brk[i])
      continue;
    if (i - start + 1 > CONFIG_LINE_MAX) {
      for (j = start, w = start; j < i; j++) {
        if (!is_blank(s[j]))
          continue;
        for (r = j; r < i && is_blank(s[r]); r++)
          ;
        if (r < i && j > w && s[r] != ';' && s[r] != '#' &&
            !looks_like_key(s + r)) {
          if (!push_word(words, n, &cap, s + w))
            goto fail;
          memset(s + j, '\0', r - j);
          w = r;
        }
        j = r - 1;
      }
      if (!push_word(words, n, &cap, s + w))
        goto fail;
    } else if (!push_word(words, n, &cap, s + start)) {
      goto fail;
    }
    if (i < len)
      s[i] = '\0';
    start = i + 1;
  }
  free(brk);
  return true;

fail:
  free(brk);
  return false;
}

/* Writes key = value so that config_parse reads the same value back: "$"
 * doubled where it would start a reference, and a value too long for one
 * line split over continuation lines at single spaces. Limits: a value from
 * the environment with a line break, surrounding blanks or " ;" inside
 * cannot be written back exactly (line breaks become spaces), nor can a run
 * of more than 196 bytes without a blank (it is then written whole). */
static void dump_kv(sbuf *b, const char *key, const char *value, bool mask) {
  sbuf enc = { 0 };
  char **words = NULL, *s;
  size_t n_words = 0, i, k = strlen(key), used = 0, w0;

  if (mask) {
    sbuf_printf(b, "%s = ***\n", key);
    return;
  }
  if (value[0] == '\0') {
    sbuf_printf(b, "%s =\n", key);
    return;
  }
  for (i = 0; value[i] != '\0'; i++) {
    if (value[i] == '$' && (value[i + 1] == '$' || value[i + 1] == '{'))
      sbuf_add(&enc, "$$", 2);
    else if (value[i] == '\n')
      sbuf_add(&enc, " ", 1);
    else
      sbuf_add(&enc, &value[i], 1);
  }
  if ((s = sbuf_take(&enc)) == NULL) {
    b->oom = true;
    return;
  }
  /* "key = ;x" would read as a comment; "key=;x" does not. */
  if (s[0] == ';' && k + 1 + strlen(s) <= CONFIG_LINE_MAX) {
    sbuf_printf(b, "%s=%s\n", key, s);
    free(s);
    return;
  }
  if (k + 3 + strlen(s) <= CONFIG_LINE_MAX) {
    sbuf_printf(b, "%s = %s\n", key, s);
    free(s);
    return;
  }
  if (!split_words(s, &words, &n_words) || n_words == 0) {
    b->oom = true;
    goto done;
  }

  /* The file this came from had at least "key=" before the first word and
   * one blank before each continuation, so fall back to those when a word
   * needs the room; "key =" with every word on continuation lines reads
   * back the same too, as nothing is joined to an empty start. */
  w0 = strlen(words[0]);
  if (k + 3 + w0 <= CONFIG_LINE_MAX && words[0][0] != ';') {
    sbuf_printf(b, "%s = ", key);
  } else if (k + 1 + w0 <= CONFIG_LINE_MAX || words[0][0] == ';') {
    sbuf_printf(b, "%s=", key);
  } else {
    sbuf_printf(b, "%s =\n", key);
    sbuf_puts(b, 2 + w0 > CONFIG_LINE_MAX ? " " : "  ");
  }
  used = pack_line(b, words, n_words);
  while (used < n_words) {
    sbuf_puts(b, 2 + strlen(words[used]) > CONFIG_LINE_MAX ? " " : "  ");
    used += pack_line(b, words + used, n_words - used);
  }

done:
  free(words);
  free(s);
}

/* Is o's value in conf its default? Compared as formatted text, so 1m and
 * 60s are the same. */
static bool at_default(const option *o, const void *conf, size_t conf_size) {
  char have[128], want[128], err[128];
  void *scratch;
  bool same;

  if (o->def == NULL)
    return false;
  if (o->kind == OPT_STRING) {
    const char *v =
        *(char *const *)(const void *)((const char *)conf + o->offset);
    return v != NULL && strcmp(v, o->def) == 0;
  }
  scratch = calloc(1, conf_size > 0 ? conf_size : 1);
  if (scratch == NULL)
    return false;
  same = options_parse_value(o, o->def, scratch, err, sizeof err) == 0;
  if (same) {
    options_format_value(o, conf, have, sizeof have);
    options_format_value(o, scratch, want, sizeof want);
    same = strcmp(have, want) == 0;
  }
  free(scratch);
  return same;
}

/* Writes every option of table but the skipped ones. With comment_defaults
 * an option still at its default is written as a comment: see
 * dump_type_options. */
static void dump_options(sbuf *b, const option *table, const void *conf,
                         size_t conf_size, bool comment_defaults,
                         const char *skip1, const char *skip2,
                         const char *skip3) {
  const option *o;
  char val[128];
  const char *s;

  for (o = table; o != NULL && o->name != NULL; o++) {
    if ((skip1 && strcmp(o->name, skip1) == 0) ||
        (skip2 && strcmp(o->name, skip2) == 0) ||
        (skip3 && strcmp(o->name, skip3) == 0))
      continue;
    if (comment_defaults && at_default(o, conf, conf_size)) {
      sbuf_printf(b, "; %s = %s (default)\n", o->name,
                  (o->flags & OPT_SECRET) ? "***" : o->def);
      continue;
    }
    if (o->kind == OPT_STRING) {
      s = *(char *const *)(const void *)((const char *)conf + o->offset);
      if (s == NULL)
        continue;
      dump_kv(b, o->name, s, (o->flags & OPT_SECRET) != 0);
      continue;
    }
    options_format_value(o, conf, val, sizeof val);
    dump_kv(b, o->name, val, (o->flags & OPT_SECRET) != 0);
  }
}

/* The options of a source or sink type. A type's check may refuse two keys
 * set together (generate: template and payload_size), and a dump that
 * wrote every default would then not read back. So when the check refuses
 * the values with every key marked as written, the keys still at their
 * default are written as comments: the reader sees them, the parser does
 * not. */
static void dump_type_options(sbuf *b, const option *table, void *conf,
                              size_t conf_size,
                              int (*check)(void *, uint64_t, char *, size_t),
                              int (*sink_check)(void *, const char *, uint64_t,
                                                char *, size_t),
                              const char *arg) {
  uint64_t all = 0;
  size_t i, n = table_len(table);
  char err[256];
  int r = 0;

  for (i = 0; i < n && i < OPTIONS_MAX; i++)
    all |= (uint64_t)1 << i;
  if (check != NULL)
    r = check(conf, all, err, sizeof err);
  else if (sink_check != NULL)
    r = sink_check(conf, arg, all, err, sizeof err);
  dump_options(b, table, conf, conf_size, r != 0, NULL, NULL, NULL);
}

char *config_dump(const config *c) {
  sbuf b = { 0 };
  size_t i, j;

  if (c == NULL)
    return NULL;
  sbuf_puts(&b, "[daemon]\n");
  dump_options(&b, config_daemon_options, &c->daemon, sizeof c->daemon, false,
               NULL, NULL, NULL);
  for (i = 0; i < c->n_upstreams; i++) {
    const config_upstream *u = &c->upstreams[i];
    sbuf_printf(&b, "\n[upstream %s]\n", u->name);
    if (u->type != NULL)
      dump_kv(&b, "type", u->type, false);
    if (u->type_reg != NULL)
      dump_type_options(&b, u->type_reg->options, u->conf,
                        u->type_reg->conf_size, u->type_reg->check, NULL, NULL);
    for (j = 0; j < u->n_kv; j++)
      dump_kv(&b, u->kv[j].key, u->kv[j].value,
              u->type_reg != NULL || looks_secret(u->kv[j].key));
  }
  for (i = 0; i < c->n_consumers; i++) {
    const config_consumer *cc = &c->consumers[i];
    sbuf_printf(&b, "\n[consumer %s]\n", cc->name);
    if (cc->common.source != NULL)
      dump_kv(&b, "source", cc->common.source, false);
    if (cc->common.upstream != NULL)
      dump_kv(&b, "upstream", cc->common.upstream, false);
    if (cc->common.sink != NULL)
      dump_kv(&b, "sink", cc->common.sink, false);
    dump_options(&b, config_consumer_options, &cc->common, sizeof cc->common,
                 false, "source", "upstream", "sink");
    if (cc->source != NULL)
      dump_type_options(&b, cc->source->options, cc->source_conf,
                        cc->source->conf_size, cc->source->check, NULL, NULL);
    if (cc->sink != NULL)
      dump_type_options(&b, cc->sink->options, cc->sink_conf,
                        cc->sink->conf_size, NULL, cc->sink->check,
                        cc->sink_arg);
  }
  return sbuf_take(&b);
}

/* ---- docs/config.md ---------------------------------------------------- */

static void md_cell(sbuf *b, const char *s) {
  for (; *s != '\0'; s++) {
    if (*s == '|')
      sbuf_puts(b, "\\|");
    else
      sbuf_add(b, s, 1);
  }
}

static void md_type(sbuf *b, const option *o) {
  char lo[32], hi[32];
  size_t i;

  switch (o->kind) {
  case OPT_STRING:
    sbuf_puts(b, "string");
    return;
  case OPT_BOOL:
    sbuf_puts(b, "boolean");
    return;
  case OPT_MODE:
    sbuf_puts(b, "octal mode");
    return;
  case OPT_ENUM:
    sbuf_puts(b, "one of ");
    for (i = 0; o->choices[i] != NULL; i++)
      sbuf_printf(b, "%s`%s`", i > 0 ? ", " : "", o->choices[i]);
    return;
  case OPT_INT:
    sbuf_puts(b, "integer");
    if (o->min == 0 && o->max == 0)
      return;
    if (o->max == INT64_MAX)
      sbuf_printf(b, " >= %" PRId64, o->min);
    else
      sbuf_printf(b, " %" PRId64 "..%" PRId64, o->min, o->max);
    return;
  case OPT_DURATION:
  case OPT_SIZE:
    sbuf_puts(b, o->kind == OPT_DURATION ? "duration" : "size");
    if (o->min == 0 && o->max == 0)
      return;
    if (o->kind == OPT_DURATION) {
      options_format_duration((uint64_t)o->min, lo, sizeof lo);
      options_format_duration((uint64_t)o->max, hi, sizeof hi);
    } else {
      options_format_size((uint64_t)o->min, lo, sizeof lo);
      options_format_size((uint64_t)o->max, hi, sizeof hi);
    }
    if (o->max == INT64_MAX)
      sbuf_printf(b, " >= %s", lo);
    else
      sbuf_printf(b, " %s..%s", lo, hi);
    return;
  }
}

static void md_table(sbuf *b, const option *table) {
  const option *o;

  if (table == NULL || table->name == NULL) {
    sbuf_puts(b, "No keys of its own.\n");
    return;
  }
  sbuf_puts(b, "| key | type | default | description |\n");
  sbuf_puts(b, "|---|---|---|---|\n");
  for (o = table; o->name != NULL; o++) {
    sbuf_printf(b, "| `%s` | ", o->name);
    md_type(b, o);
    sbuf_puts(b, " | ");
    if (o->flags & OPT_REQUIRED)
      sbuf_puts(b, "required");
    else if (o->def == NULL)
      sbuf_puts(b, "none");
    else if (o->def[0] == '\0')
      sbuf_puts(b, "empty");
    else {
      sbuf_puts(b, "`");
      md_cell(b, o->def);
      sbuf_puts(b, "`");
    }
    sbuf_puts(b, " | ");
    md_cell(b, o->help);
    if (o->flags & OPT_SECRET)
      sbuf_puts(b, " (secret: shown as `***`)");
    sbuf_puts(b, " |\n");
  }
}

char *config_docs_markdown(void) {
  sbuf b = { 0 };
  const char *const *t;
  size_t i;

  sbuf_puts(
      &b,
      "# Configuration\n"
      "\n"
      "<!-- Generated by config_docs_markdown() in daemon/config.c from the\n"
      "     option tables; do not edit. After changing a table, run\n"
      "     TETHER_UPDATE_DOCS=1 meson test -C build config -->\n"
      "\n"
      "tether reads one INI file, given with `-c FILE`. `tether check -c "
      "FILE`\n"
      "validates it and prints the effective configuration, every default "
      "filled\n"
      "in and secrets shown as `***`. Every error names the file, the line, "
      "the\n"
      "section, the key, the value and what was expected:\n"
      "\n"
      "    tether.ini:12: [consumer orders] max_in_flight = \"ten\": expected "
      "an integer 1..1000000\n"
      "\n"
      "## Syntax\n"
      "\n"
      "- Sections: at most one `[daemon]` (optional), any number of\n"
      "  `[upstream NAME]` and at least one `[consumer NAME]`. A NAME is 1 to "
      "64\n"
      "  characters of `A-Z a-z 0-9 _ . -`, unique per kind of section.\n"
      "- `key = value` (or `key: value`); blanks around the key and the value "
      "are\n"
      "  dropped. A key may be set once per section.\n"
      "- A line starting with `;` or `#` is a comment. A `;` after a blank "
      "starts a\n"
      "  comment at the end of a line: `rate = 5 ; per second`.\n"
      "- A line may be at most 197 bytes long. A longer value continues on\n"
      "  indented lines; each continuation line is joined to the value with "
      "one\n"
      "  space. So keys themselves must not be indented.\n"
      "- `${VAR}` is replaced by the environment variable VAR (an error when "
      "it is\n"
      "  not set), `${VAR:-default}` by VAR, or by `default` when VAR is unset "
      "or\n"
      "  empty, and `$$` by `$`. Any other `$` stays as it is.\n"
      "- Durations: `0`, or numbers with the units `ms`, `s`, `m` and `h`, "
      "largest\n"
      "  first: `250ms`, `30s`, `5m`, `1h30m`, `1.5s` (a whole number of\n"
      "  milliseconds).\n"
      "- Sizes: a number of bytes, or a number with a unit: `B`, `KiB`, "
      "`MiB`,\n"
      "  `GiB`, `TiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000): "
      "`512`,\n"
      "  `64KiB`, `10MB`.\n"
      "- Booleans: `true` or `false`, `yes` or `no`, `on` or `off`, `1` or "
      "`0`.\n"
      "\n"
      "## [daemon]\n"
      "\n"
      "Settings of the process. The section may be left out.\n"
      "\n");
  md_table(&b, config_daemon_options);

  sbuf_puts(&b, "\n## [upstream NAME]\n\n"
                "A service that consumers read. `type` is required, one "
                "of:\n");
  for (t = registry_upstream_types; *t != NULL; t++)
    sbuf_printf(&b, "%s`%s`", t == registry_upstream_types ? "" : ", ", *t);
  sbuf_puts(&b, ".\n\nA consumer reads an upstream with `upstream = NAME`; "
                "the upstream's type\ndecides its source. This version "
                "consumes the types below. For the\nothers, the section's "
                "keys (named like a NAME) are kept for a later version,\n"
                "the values of keys whose name contains `password`, `secret`, "
                "`token` or `key`\nare shown as `***`, and a consumer that "
                "names such an upstream is an error.\n");
  for (i = 0; registry_upstreams[i] != NULL; i++) {
    const upstream_type *ut = registry_upstreams[i];

    sbuf_printf(&b, "\n### Upstream `%s`\n\n`type = %s`: %s.\n\n", ut->name,
                ut->name, ut->description);
    md_table(&b, ut->options);
    if (ut->takes_headers)
      sbuf_puts(&b, "| `header.NAME` | string | none | a request header "
                    "sent on every request, e.g. `header.Authorization = "
                    "Bearer ${TOKEN}`; never shown or logged |\n");
    sbuf_printf(&b, "\nA consumer with `upstream = NAME` of this type takes "
                    "these keys:\n\n");
    md_table(&b, ut->source->options);
  }

  sbuf_puts(&b, "\n## [consumer NAME]\n\n"
                "A consumer reads one source and delivers every event to one "
                "sink. It sets\n`source` or `upstream`, and `sink`; besides "
                "these common keys it takes the\nkeys of its source type and "
                "of its sink type.\n\n");
  md_table(&b, config_consumer_options);

  for (i = 0; registry_sources[i] != NULL; i++) {
    const source_type *st = registry_sources[i];
    sbuf_printf(&b, "\n## Source `%s`\n\n`source = %s`: %s.\n\n", st->name,
                st->name, st->description);
    md_table(&b, st->options);
  }
  for (i = 0; registry_sinks[i] != NULL; i++) {
    const sink_type *kt = registry_sinks[i];
    sbuf_printf(&b, "\n## Sink `%s`\n\n`sink = %s%s%s`: %s.\n\n", kt->name,
                kt->name, kt->arg ? ":" : "", kt->arg ? kt->arg : "",
                kt->description);
    md_table(&b, kt->options);
  }
  return sbuf_take(&b);
}
