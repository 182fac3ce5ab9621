#include "daemon/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "daemon/config.h"

log_level log__level = LOG_INFO;

const char *const log_level_names[] = { "debug", "info", "warn",
                                        "error", "off",  NULL };

static int log_format = LOG_FORMAT_TEXT;
static int log_fd = STDERR_FILENO;
static char *log_path;

/* A record longer than this is cut (its last fields dropped, cut=true
 * added): logs are for people, and one runaway value must not cost a large
 * allocation. */
#define LOG_LINE_MAX 4096

typedef struct line {
  char data[LOG_LINE_MAX];
  size_t len;
  bool cut;
} line;

static void put(line *l, const char *s, size_t n) {
  /* Keep room for the newline. */
  size_t room = sizeof l->data - 1 - l->len;

  if (n > room) {
    n = room;
    l->cut = true;
  }
  memcpy(l->data + l->len, s, n);
  l->len += n;
}

static void puts_(line *l, const char *s) {
  put(l, s, strlen(s));
}

static void putf(line *l, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void putf(line *l, const char *fmt, ...) {
  char tmp[64];
  va_list ap;
  int n;

  va_start(ap, fmt);
  n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0)
    put(l, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* JSON string body: quotes, backslashes and control bytes escaped. */
static void put_json_str(line *l, const char *s) {
  const char *p;

  for (p = s; *p != '\0'; p++) {
    unsigned char c = (unsigned char)*p;

    if (c == '"' || c == '\\') {
      char esc[2] = { '\\', (char)c };
      put(l, esc, 2);
    } else if (c == '\n') {
      put(l, "\\n", 2);
    } else if (c == '\t') {
      put(l, "\\t", 2);
    } else if (c < 0x20) {
      putf(l, "\\u%04x", c);
    } else {
      put(l, p, 1);
    }
  }
}

/* Text values are bare when they are one plain word, quoted otherwise. */
static void put_text_value(line *l, const char *s) {
  const char *p;
  bool plain = *s != '\0';

  for (p = s; *p != '\0' && plain; p++)
    if (*p == ' ' || *p == '"' || *p == '=' || (unsigned char)*p < 0x20)
      plain = false;
  if (plain) {
    puts_(l, s);
    return;
  }
  put(l, "\"", 1);
  put_json_str(l, s);
  put(l, "\"", 1);
}

static void put_time(line *l) {
  struct timespec ts;
  struct tm tm;
  char tmp[32];

  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
  puts_(l, tmp);
  putf(l, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void put_field(line *l, const log_field *f) {
  bool json = log_format == LOG_FORMAT_JSON;

  if (json) {
    put(l, ",\"", 2);
    put_json_str(l, f->key);
    put(l, "\":", 2);
  } else {
    put(l, " ", 1);
    puts_(l, f->key);
    put(l, "=", 1);
  }
  switch (f->type) {
  case LOG_F_STR:
    if (json) {
      put(l, "\"", 1);
      put_json_str(l, f->v.s ? f->v.s : "");
      put(l, "\"", 1);
    } else {
      put_text_value(l, f->v.s ? f->v.s : "");
    }
    break;
  case LOG_F_INT:
    putf(l, "%" PRId64, f->v.i);
    break;
  case LOG_F_UINT:
    putf(l, "%" PRIu64, f->v.u);
    break;
  case LOG_F_DOUBLE:
    putf(l, "%.6g", f->v.d);
    break;
  case LOG_F_BOOL:
    puts_(l, f->v.b ? "true" : "false");
    break;
  case LOG_F_END:
    break;
  }
}

void log__emit(log_level level, const char *msg, ...) {
  static line scratch;
  line l;
  va_list ap;
  log_field f;
  ssize_t n;
  size_t off = 0;

  l.len = 0;
  l.cut = false;
  if (log_format == LOG_FORMAT_JSON) {
    puts_(&l, "{\"time\":\"");
    put_time(&l);
    puts_(&l, "\",\"level\":\"");
    puts_(&l, log_level_names[level]);
    puts_(&l, "\",\"msg\":\"");
    put_json_str(&l, msg);
    puts_(&l, "\"");
  } else {
    put_time(&l);
    puts_(&l, " ");
    puts_(&l, log_level_names[level]);
    puts_(&l, " ");
    puts_(&l, msg);
  }
  va_start(ap, msg);
  for (;;) {
    f = va_arg(ap, log_field);
    if (f.type == LOG_F_END)
      break;
    /* A field goes in whole or not at all, so a cut JSON record still
     * parses; the cut is marked by a final field. */
    scratch.len = 0;
    scratch.cut = false;
    put_field(&scratch, &f);
    if (scratch.cut || scratch.len > sizeof l.data - 32 - l.len) {
      l.cut = true;
      break;
    }
    put(&l, scratch.data, scratch.len);
  }
  va_end(ap);
  if (l.cut)
    puts_(&l, log_format == LOG_FORMAT_JSON ? ",\"cut\":true" : " cut=true");
  if (log_format == LOG_FORMAT_JSON)
    put(&l, "}", 1);
  l.data[l.len++] = '\n';

  /* One write per record, so lines from a crash are whole. */
  while (off < l.len) {
    n = write(log_fd, l.data + off, l.len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    off += (size_t)n;
  }
}

void log_configure(log_level level, int format) {
  log__level = level;
  log_format = format;
}

static int open_log(const char *path) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);

  return fd < 0 ? -errno : fd;
}

int log_open(const char *path) {
  int fd;
  char *copy;

  if (path == NULL || *path == '\0') {
    log_close();
    return 0;
  }
  if ((copy = strdup(path)) == NULL)
    return -ENOMEM;
  if ((fd = open_log(path)) < 0) {
    free(copy);
    return fd;
  }
  log_close();
  log_fd = fd;
  log_path = copy;
  return 0;
}

int log_reopen(void) {
  int fd;

  if (log_path == NULL)
    return 0;
  if ((fd = open_log(log_path)) < 0)
    return fd;
  close(log_fd);
  log_fd = fd;
  return 0;
}

void log_close(void) {
  if (log_path != NULL) {
    close(log_fd);
    free(log_path);
    log_path = NULL;
  }
  log_fd = STDERR_FILENO;
}
