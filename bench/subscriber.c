/* The subscriber of bench/bench.py's socket_sink case, and its baseline.
 *
 *   subscriber SOCKET COUNT    subscribes to consumer "bench" on tether's
 *                              API socket (NDJSON over a chunked response)
 *                              and acknowledges every 100th event, and the
 *                              last, on a second keep-alive connection
 *   subscriber --stdin COUNT   reads the same NDJSON lines from stdin
 *
 * Both split lines and take the envelope's seq the same way, and stop
 * after COUNT events. They print the events seen and the seconds from the
 * first byte of the stream to the last event (to the answer of the last
 * acknowledgement on the socket). Plain blocking POSIX I/O and libc only,
 * so the figure is the application's side of the protocol, nothing more.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE      (256 * 1024)
#define LINE_MAX_BYTES (64 * 1024) /* longer lines are an error */
#define HEAD_MAX       (16 * 1024) /* of a response's status line + headers */
#define ACK_EVERY      100
#define CONNECT_TRIES  1000 /* 10 ms apart: tether may still be starting */

static void die(const char *fmt, ...) {
  va_list ap;

  fputs("subscriber: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static double now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- lines --------------------------------------------------------------- */

/* Splits a byte stream into lines; a line cut by a read boundary is
 * carried in part[] until its newline comes. */
typedef struct lines {
  char part[LINE_MAX_BYTES];
  size_t part_len;
  uint64_t seen;     /* lines (events) seen */
  uint64_t last_seq; /* the seq of the last one */
} lines;

/* The envelope's seq: the first "seq": of the line (the data object may
 * hold another, later). Events must arrive in order, one each, from 1. */
static void on_line(lines *l, const char *p, size_t n) {
  static const char key[] = "\"seq\":";
  const char *at = memmem(p, n, key, sizeof key - 1);
  uint64_t seq = 0;

  if (at == NULL)
    die("line %llu has no \"seq\": %.*s", (unsigned long long)l->seen + 1,
        (int)(n < 200 ? n : 200), p);
  for (at += sizeof key - 1; at < p + n && *at >= '0' && *at <= '9'; at++)
    seq = seq * 10 + (uint64_t)(*at - '0');
  if (seq != l->last_seq + 1)
    die("seq %llu after %llu: events out of order or repeated",
        (unsigned long long)seq, (unsigned long long)l->last_seq);
  l->last_seq = seq;
  l->seen++;
}

/* Feeds n bytes; calls back after each whole line through on_event, which
 * returns nonzero to stop. Returns the bytes used (all unless stopped). */
static size_t lines_feed(lines *l, const char *p, size_t n,
                         int (*on_event)(lines *, void *), void *data) {
  const char *start = p, *end = p + n, *nl;

  while (p < end) {
    nl = memchr(p, '\n', (size_t)(end - p));
    if (nl == NULL) {
      if (l->part_len + (size_t)(end - p) > sizeof l->part)
        die("a line is longer than %d bytes", LINE_MAX_BYTES);
      memcpy(l->part + l->part_len, p, (size_t)(end - p));
      l->part_len += (size_t)(end - p);
      return n;
    }
    if (l->part_len > 0) {
      if (l->part_len + (size_t)(nl - p) > sizeof l->part)
        die("a line is longer than %d bytes", LINE_MAX_BYTES);
      memcpy(l->part + l->part_len, p, (size_t)(nl - p));
      on_line(l, l->part, l->part_len + (size_t)(nl - p));
      l->part_len = 0;
    } else {
      on_line(l, p, (size_t)(nl - p));
    }
    p = nl + 1;
    if (on_event(l, data))
      break;
  }
  return (size_t)(p - start);
}

/* ---- --stdin: the pipe baseline ------------------------------------------ */

static uint64_t want;

static int stop_at_count(lines *l, void *data) {
  (void)data;
  return l->seen >= want;
}

static int run_stdin(void) {
  static char in[READ_SIZE];
  static lines l;
  double t0 = 0;
  ssize_t n;

  while (l.seen < want && (n = read(STDIN_FILENO, in, sizeof in)) != 0) {
    if (n < 0) {
      if (errno == EINTR)
        continue;
      die("read: %s", strerror(errno));
    }
    if (t0 == 0)
      t0 = now();
    lines_feed(&l, in, (size_t)n, stop_at_count, NULL);
  }
  if (l.seen < want)
    die("stdin ended after %llu of %llu events", (unsigned long long)l.seen,
        (unsigned long long)want);
  printf("%llu %.6f\n", (unsigned long long)l.seen, now() - t0);
  return 0;
}

/* ---- the socket ---------------------------------------------------------- */

static int connect_unix(const char *path) {
  struct sockaddr_un sa;
  int fd, i;

  if (strlen(path) >= sizeof sa.sun_path)
    die("socket path too long: %s", path);
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  strcpy(sa.sun_path, path);
  for (i = 0; i < CONNECT_TRIES; i++) {
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
      die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
      return fd;
    close(fd);
    if (errno != ENOENT && errno != ECONNREFUSED)
      break;
    usleep(10000);
  }
  die("connect %s: %s", path, strerror(errno));
  return -1;
}

static void write_all(int fd, const char *p, size_t n) {
  ssize_t w;

  while (n > 0) {
    if ((w = write(fd, p, n)) < 0) {
      if (errno == EINTR)
        continue;
      die("write: %s", strerror(errno));
    }
    p += w;
    n -= (size_t)w;
  }
}

/* A response's head, read byte-exactly enough: reads until the blank line
 * into buf; the bytes after it (the body's start) are left in buf from
 * *body for *have - *body bytes. Returns the status. */
static int read_head(int fd, char *buf, size_t cap, size_t *have,
                     size_t *body) {
  char *end;
  ssize_t n;
  int status;

  *have = 0;
  for (;;) {
    if (*have == cap)
      die("a response head is longer than %zu bytes", cap);
    n = read(fd, buf + *have, cap - *have);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      die("the API closed the connection before a response (%s)",
          n < 0 ? strerror(errno) : "EOF");
    *have += (size_t)n;
    if ((end = memmem(buf, *have, "\r\n\r\n", 4)) != NULL)
      break;
  }
  *body = (size_t)(end + 4 - buf);
  if (sscanf(buf, "HTTP/1.1 %d", &status) != 1)
    die("not an HTTP/1.1 response: %.40s", buf);
  return status;
}

/* The value of header name (lowercase) in head[0..len), or NULL. */
static const char *head_value(const char *head, size_t len, const char *name) {
  const char *p = head, *end = head + len, *nl;
  size_t n = strlen(name);

  for (; p < end; p = nl + 1) {
    if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
      return NULL;
    if ((size_t)(nl - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':') {
      p += n + 1;
      while (*p == ' ')
        p++;
      return p;
    }
  }
  return NULL;
}

typedef struct acker {
  int fd;
  char buf[HEAD_MAX];
  uint64_t acks;
} acker;

/* POSTs a cumulative acknowledgement and reads its whole answer: the
 * subscriber goes on only once tether has taken it. */
static void ack(acker *a, uint64_t seq) {
  char req[512], body[96];
  const char *cl;
  size_t have, start, len;
  ssize_t n;
  int blen, rlen, status;

  blen = snprintf(body, sizeof body, "{\"seq\":%llu,\"subscriber\":\"bench\"}",
                  (unsigned long long)seq);
  rlen = snprintf(req, sizeof req,
                  "POST /v1/consumers/bench/ack HTTP/1.1\r\n"
                  "Host: tether\r\n"
                  "Content-Type: application/json\r\n"
                  "Content-Length: %d\r\n\r\n%s",
                  blen, body);
  write_all(a->fd, req, (size_t)rlen);
  status = read_head(a->fd, a->buf, sizeof a->buf, &have, &start);
  if ((cl = head_value(a->buf, start, "content-length")) == NULL)
    die("ack answer without Content-Length");
  len = strtoul(cl, NULL, 10);
  if (start + len > sizeof a->buf)
    die("ack answer body of %zu bytes is too long", len);
  while (have < start + len) {
    n = read(a->fd, a->buf + have, start + len - have);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      die("the API closed the ack connection mid-answer");
    have += (size_t)n;
  }
  if (have != start + len)
    die("unexpected bytes after the ack answer");
  if (status != 200)
    die("ack of seq %llu answered %d: %.*s", (unsigned long long)seq, status,
        (int)len, a->buf + start);
  a->acks++;
}

static int ack_on_event(lines *l, void *data) {
  if (l->seen % ACK_EVERY == 0 || l->seen == want)
    ack(data, l->last_seq);
  return l->seen >= want;
}

/* Chunked transfer coding (RFC 9112 §7.1): a hex size line, that many
 * bytes, CRLF; size 0 ends the body. Chunk extensions are skipped. */
typedef enum chunk_state { C_SIZE, C_DATA, C_DATA_CR, C_DATA_LF } chunk_state;

typedef struct chunker {
  chunk_state state;
  uint64_t left;    /* bytes of the current chunk still to come */
  int size_digits;  /* hex digits of the size line so far */
  int in_extension; /* past a ';' of the size line */
  int ended;        /* the last chunk came */
} chunker;

/* Decodes n bytes, handing each piece of data to the line splitter.
 * Returns 1 once COUNT events were seen. */
static int chunker_feed(chunker *c, const char *p, size_t n, lines *l,
                        acker *a) {
  const char *end = p + n;
  size_t take;
  int d;

  while (p < end && !c->ended) {
    switch (c->state) {
    case C_SIZE:
      if (*p == '\n') {
        if (c->size_digits == 0)
          die("chunked: a size line without a size");
        if (c->left == 0) {
          c->ended = 1;
          break;
        }
        c->state = C_DATA;
      } else if (*p == ';') {
        c->in_extension = 1;
      } else if (!c->in_extension && *p != '\r') {
        if (*p >= '0' && *p <= '9')
          d = *p - '0';
        else if ((*p | 0x20) >= 'a' && (*p | 0x20) <= 'f')
          d = (*p | 0x20) - 'a' + 10;
        else
          die("chunked: bad size character 0x%02x", (unsigned char)*p);
        if (c->left >> 60)
          die("chunked: chunk size overflows");
        c->left = c->left * 16 + (uint64_t)d;
        c->size_digits++;
      }
      p++;
      break;
    case C_DATA:
      take = (size_t)(end - p) < c->left ? (size_t)(end - p) : (size_t)c->left;
      take = lines_feed(l, p, take, ack_on_event, a);
      p += take;
      c->left -= take;
      if (l->seen >= want)
        return 1;
      if (c->left == 0)
        c->state = C_DATA_CR;
      break;
    case C_DATA_CR:
      if (*p++ != '\r')
        die("chunked: no CR after a chunk's data");
      c->state = C_DATA_LF;
      break;
    case C_DATA_LF:
      if (*p++ != '\n')
        die("chunked: no LF after a chunk's data");
      c->state = C_SIZE;
      c->left = 0;
      c->size_digits = c->in_extension = 0;
      break;
    }
  }
  return 0;
}

static int run_socket(const char *path) {
  static const char get[] =
      "GET /v1/consumers/bench/events?subscriber=bench HTTP/1.1\r\n"
      "Host: tether\r\n"
      "Accept: application/x-ndjson\r\n\r\n";
  static char in[READ_SIZE];
  static lines l;
  static acker a;
  chunker c = { C_SIZE, 0, 0, 0, 0 };
  const char *te;
  size_t have, body;
  double t0;
  ssize_t n;
  int fd, status;

  fd = connect_unix(path);
  a.fd = connect_unix(path);
  write_all(fd, get, sizeof get - 1);
  status = read_head(fd, in, HEAD_MAX, &have, &body);
  t0 = now();
  if (status != 200)
    die("subscribe answered %d: %.*s", status, (int)have, in);
  te = head_value(in, body, "transfer-encoding");
  if (te == NULL || strncasecmp(te, "chunked", 7) != 0)
    die("the event stream is not chunked");
  if (!chunker_feed(&c, in + body, have - body, &l, &a)) {
    for (;;) {
      n = read(fd, in, sizeof in);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        die("read: %s", strerror(errno));
      if (n == 0 || c.ended)
        die("the stream ended after %llu of %llu events",
            (unsigned long long)l.seen, (unsigned long long)want);
      if (chunker_feed(&c, in, (size_t)n, &l, &a))
        break;
    }
  }
  printf("%llu %.6f %llu\n", (unsigned long long)l.seen, now() - t0,
         (unsigned long long)a.acks);
  close(a.fd);
  close(fd);
  return 0;
}

int main(int argc, char **argv) {
  char *end;

  if (argc != 3) {
    fprintf(stderr, "usage: subscriber SOCKET COUNT\n"
                    "       subscriber --stdin COUNT < ndjson\n");
    return 2;
  }
  want = strtoull(argv[2], &end, 10);
  if (*end != '\0' || want == 0)
    die("COUNT must be a positive integer: %s", argv[2]);
  if (strcmp(argv[1], "--stdin") == 0)
    return run_stdin();
  return run_socket(argv[1]);
}
