/* Sink `fifo:PATH`: NDJSON lines written into a named pipe.
 *
 * Delivery (DESIGN §2): a batch is delivered once every byte of it is
 * written into the pipe. What the reader does with it afterwards is the
 * reader's business; a reader that leaves loses what the pipe buffer held.
 *
 * The FIFO is opened O_WRONLY|O_NONBLOCK, so the loop never blocks: with no
 * reader the open fails with ENXIO, and the sink reports the state
 * "waiting_for_reader" and tries again every fifo_reopen_interval, holding
 * the batch (the consumer's window fills and the source stops). Writes are
 * driven by a uv_poll_t for POLLOUT and track exactly how many bytes went
 * out, so a slow reader simply keeps the write pending.
 *
 * No torn lines. When the reader leaves mid-line (EPIPE, or POLLERR while
 * idle), the descriptor is closed at once: with neither a reader nor a
 * writer left, the kernel discards the pipe buffer, so the next reader
 * cannot see the head of a cut line. The batch is then resent from the
 * start of the line that was cut. A reopen (SIGHUP) waits for the current
 * line to be written whole before it closes the descriptor, because the
 * reader keeps the pipe (and its buffer) alive across it.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "daemon/log.h"
#include "daemon/sink.h"

/* Writes per poll wake-up before the loop gets a turn (STYLE rule 9). */
#define FIFO_WRITES_PER_WAKEUP 32

#define SECOND_MS INT64_C(1000)
#define MINUTE_MS (60 * SECOND_MS)

typedef struct fifo_conf {
  int64_t fifo_mode;             /* permission bits of a FIFO tether makes */
  uint64_t fifo_reopen_interval; /* ms between opens while no reader */
} fifo_conf;

static const option fifo_options[] = {
  { "fifo_mode", OPT_MODE, "0600", offsetof(fifo_conf, fifo_mode),
    "permission bits of the FIFO when tether creates it (an existing one is "
    "left as it is)",
    0, 0, NULL, 0 },
  { "fifo_reopen_interval", OPT_DURATION, "200ms",
    offsetof(fifo_conf, fifo_reopen_interval),
    "how often the FIFO is opened again while it has no reader", 1, MINUTE_MS,
    NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

typedef struct fifo_sink {
  sink base;
  uv_loop_t *loop;
  char *path;
  char *consumer;
  mode_t mode;
  uint64_t reopen_ms;

  int fd;              /* -1 while there is no reader */
  uv_poll_t poll;      /* on fd; exists only while poll_inited */
  bool poll_inited;    /* uv_poll_init done, uv_close not yet called */
  bool poll_closing;   /* uv_close called, close_cb not yet run */
  uv_timer_t reopen;   /* retries the open while there is no reader */
  const char *waiting; /* the state reported, NULL when normal */
  int last_open_err;   /* logged once per distinct error */

  /* The batch being written: borrowed from the consumer until the cb. */
  bool writing;
  const char *data;
  size_t len, off;
  sink_write_cb write_cb;
  void *write_data;

  /* Counters for the status and /metrics (sink_stats). */
  uint64_t write_errors; /* writes cut short by the reader leaving */
  uint64_t redelivered;  /* cut lines written again whole */

  bool reopen_wanted; /* SIGHUP: reopen at the next line boundary */
  bool closing;
  int pending_closes;
  sink_close_cb close_cb;
  void *close_data;
} fifo_sink;

static void start_poll(fifo_sink *f);
static void try_open(fifo_sink *f);

static void set_state(fifo_sink *f, const char *state) {
  if (f->waiting == state || f->closing)
    return;
  f->waiting = state;
  if (f->base.report.state != NULL)
    f->base.report.state(&f->base, state, f->base.report.data);
}

/* Makes the FIFO at path unless something is there already. Returns 0 or
 * -errno, with the reason in err. */
static int ensure_fifo(const char *path, mode_t mode, char *err,
                       size_t errlen) {
  struct stat st;

  if (stat(path, &st) == 0) {
    if (!S_ISFIFO(st.st_mode)) {
      snprintf(err, errlen, "%s exists and is not a FIFO", path);
      return UV_EEXIST;
    }
    return 0;
  }
  if (errno != ENOENT) {
    int rc = -errno;

    snprintf(err, errlen, "cannot stat %s: %s", path, strerror(errno));
    return rc;
  }
  if (mkfifo(path, mode) != 0 && errno != EEXIST) {
    int rc = -errno;

    snprintf(err, errlen, "cannot create the FIFO %s: %s", path,
             strerror(errno));
    return rc;
  }
  /* mkfifo applies the umask; the mode asked for is the mode wanted. */
  if (chmod(path, mode) != 0) {
    int rc = -errno;

    snprintf(err, errlen, "cannot set the mode of %s: %s", path,
             strerror(errno));
    return rc;
  }
  return 0;
}

/* Opens the write end without blocking. Returns the descriptor, UV_ENXIO
 * when no reader has the FIFO open, or another negative code with err
 * filled in. */
static int open_fifo(const char *path, mode_t mode, char *err, size_t errlen) {
  struct stat st;
  int fd, rc;

  fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    /* Someone removed it: make it again, as at start-up. */
    if ((rc = ensure_fifo(path, mode, err, errlen)) != 0)
      return rc;
    fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
  }
  if (fd < 0) {
    rc = -errno;
    if (rc != UV_ENXIO)
      snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return rc;
  }
  /* The path may have been replaced since it was checked; writing into a
   * regular file with O_NONBLOCK would "work" and mislead everyone. */
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) {
    close(fd);
    snprintf(err, errlen, "%s exists and is not a FIFO", path);
    return UV_EEXIST;
  }
  return fd;
}

/* The sink is freed once its last handle is closed (STYLE rule 8). */
static void on_handle_closed(uv_handle_t *h) {
  fifo_sink *f = h->data;

  if (h == (uv_handle_t *)&f->poll) {
    f->poll_closing = false;
    /* A descriptor opened meanwhile gets its poll handle now. */
    if (!f->closing && f->fd >= 0)
      start_poll(f);
  }
  if (--f->pending_closes == 0 && f->closing) {
    sink_close_cb cb = f->close_cb;
    void *data = f->close_data;

    free(f->path);
    free(f->consumer);
    free(f);
    cb(data);
  }
}

/* Closes the descriptor. The poll handle is stopped first (it must not
 * watch a closed descriptor) and closed; a new one is made for the next
 * descriptor once this one's close callback has run. */
static void drop_fd(fifo_sink *f) {
  if (f->fd < 0)
    return;
  if (f->poll_inited) {
    uv_poll_stop(&f->poll);
    f->poll_inited = false;
    f->poll_closing = true;
    f->pending_closes++;
    uv_close((uv_handle_t *)&f->poll, on_handle_closed);
  }
  close(f->fd);
  f->fd = -1;
}

static void on_reopen_timer(uv_timer_t *t) {
  try_open(t->data);
}

static void wait_for_reader(fifo_sink *f) {
  if (!f->closing && !uv_is_active((uv_handle_t *)&f->reopen))
    uv_timer_start(&f->reopen, on_reopen_timer, f->reopen_ms, f->reopen_ms);
}

/* The offset of the start of the line that holds byte off-1: where a
 * resend must start so that no reader sees a line's tail without its
 * head. */
static size_t line_start(const char *p, size_t off) {
  while (off > 0 && p[off - 1] != '\n')
    off--;
  return off;
}

/* The reader went away. Whatever the pipe held is lost with it (it was
 * delivered); the cut line, if any, is sent again whole. */
static void reader_gone(fifo_sink *f) {
  size_t start;

  if (f->writing) {
    f->write_errors++;
    start = line_start(f->data, f->off);
    if (start != f->off)
      f->redelivered++;
    f->off = start;
  }
  drop_fd(f);
  if (f->closing)
    return;
  set_state(f, "waiting_for_reader");
  wait_for_reader(f);
}

/* Ends the write and goes back to watching only for the reader leaving;
 * cb may start the next write at once. */
static void finish_write(fifo_sink *f, sink_outcome outcome, const char *msg) {
  sink_write_cb cb = f->write_cb;
  void *data = f->write_data;

  f->writing = false;
  f->write_cb = NULL;
  f->data = NULL;
  f->len = f->off = 0;
  start_poll(f);
  cb(&f->base, outcome, msg, data);
}

/* SIGHUP at a line boundary. The new descriptor is opened before the old
 * one is closed: a reader that has both never sees the moment without a
 * writer, which it would take for EOF. */
static void do_reopen(fifo_sink *f) {
  char err[320];
  int fd;

  f->reopen_wanted = false;
  err[0] = '\0';
  fd = open_fifo(f->path, f->mode, err, sizeof err);
  if (fd < 0 && fd != UV_ENXIO) {
    log_error("reopening the FIFO failed; still writing the old one",
              LS("consumer", f->consumer), LS("sink", "fifo"), LS("err", err));
    return;
  }
  drop_fd(f);
  log_info("reopened FIFO", LS("consumer", f->consumer), LS("sink", "fifo"),
           LS("path", f->path), LB("reader", fd >= 0));
  if (fd < 0) {
    /* The FIFO now at the path has no reader yet. */
    set_state(f, "waiting_for_reader");
    wait_for_reader(f);
    return;
  }
  f->fd = fd;
  start_poll(f); /* or once the old poll handle is closed */
}

/* Writes what the pipe takes, a bounded number of times. */
static void pump(fifo_sink *f) {
  size_t limit;
  ssize_t n;
  int i;

  for (i = 0; i < FIFO_WRITES_PER_WAKEUP && f->writing && f->fd >= 0; i++) {
    limit = f->len - f->off;
    if (f->reopen_wanted) {
      const char *nl = memchr(f->data + f->off, '\n', limit);

      /* Finish the current line only; at a boundary, reopen. */
      if (f->off == line_start(f->data, f->off)) {
        do_reopen(f);
        return;
      }
      if (nl != NULL)
        limit = (size_t)(nl - (f->data + f->off)) + 1;
    }
    n = write(f->fd, f->data + f->off, limit);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        return; /* the poll for POLLOUT stays armed */
      if (errno != EPIPE)
        log_error("FIFO write failed; reopening it",
                  LS("consumer", f->consumer), LS("sink", "fifo"),
                  LS("path", f->path), LS("err", strerror(errno)));
      reader_gone(f);
      return;
    }
    f->off += (size_t)n;
    if (f->off == f->len) {
      finish_write(f, SINK_DELIVERED, NULL);
      if (f->reopen_wanted && !f->writing)
        do_reopen(f);
      return;
    }
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  fifo_sink *f = h->data;

  /* libuv reports POLLERR, which a pipe's write end raises when it has no
   * reader left, as a negative status and stops the handle. */
  if (status < 0) {
    reader_gone(f);
    return;
  }
  if ((events & UV_WRITABLE) && f->writing)
    pump(f);
}

/* Watches the descriptor: for room while a batch waits, and always for
 * the reader leaving (POLLERR is reported whatever the events asked). */
static void start_poll(fifo_sink *f) {
  int events = UV_DISCONNECT | (f->writing ? UV_WRITABLE : 0);
  int rc;

  if (f->fd < 0 || f->closing)
    return;
  if (!f->poll_inited) {
    if (f->poll_closing)
      return; /* on_handle_closed comes back here */
    rc = uv_poll_init(f->loop, &f->poll, f->fd);
    if (rc != 0) {
      log_error("cannot poll the FIFO", LS("consumer", f->consumer),
                LS("sink", "fifo"), LS("path", f->path),
                LS("err", uv_strerror(rc)));
      close(f->fd);
      f->fd = -1;
      wait_for_reader(f);
      return;
    }
    f->poll.data = f;
    f->poll_inited = true;
  }
  uv_poll_start(&f->poll, events, on_poll);
}

static void try_open(fifo_sink *f) {
  char err[320];
  int fd;

  if (f->closing || f->fd >= 0)
    return;
  err[0] = '\0';
  fd = open_fifo(f->path, f->mode, err, sizeof err);
  if (fd < 0) {
    if (fd == UV_ENXIO) {
      set_state(f, "waiting_for_reader");
    } else {
      /* Not a missing reader but a broken path: say so once, and keep
       * trying, as someone may fix it. */
      if (fd != f->last_open_err)
        log_error("cannot open the FIFO; trying again",
                  LS("consumer", f->consumer), LS("sink", "fifo"),
                  LS("err", err));
      set_state(f, "open_failed");
    }
    f->last_open_err = fd;
    wait_for_reader(f);
    return;
  }
  f->fd = fd;
  f->last_open_err = 0;
  uv_timer_stop(&f->reopen);
  set_state(f, NULL);
  start_poll(f);
}

static void fifo_write(sink *s, const sink_batch *b, sink_write_cb cb,
                       void *data) {
  fifo_sink *f = (fifo_sink *)s;

  assert(!f->writing && "one write at a time");
  assert(!f->closing);
  f->writing = true;
  f->data = b->data;
  f->len = b->len;
  f->off = 0;
  f->write_cb = cb;
  f->write_data = data;
  /* The write starts from the poll callback, never from here, so cb never
   * runs inside this call. An empty batch still goes through the poll. */
  if (f->fd >= 0)
    start_poll(f);
}

/* Nothing to make durable: a pipe has no disk behind it. */
static void fifo_sync(sink *s, sink_sync_cb cb, void *data) {
  cb(s, 0, NULL, data);
}

static void fifo_reopen(sink *s) {
  fifo_sink *f = (fifo_sink *)s;

  if (f->closing)
    return;
  if (f->fd < 0) {
    /* No reader: the timer is already trying; try now. */
    try_open(f);
    return;
  }
  f->reopen_wanted = true;
  if (!f->writing || f->off == line_start(f->data, f->off))
    do_reopen(f);
}

/* Closing mid-line would leave the reader a cut line before its EOF: one
 * last try, without waiting, to finish that line. */
static void finish_line(fifo_sink *f) {
  const char *nl;
  ssize_t n;

  while (f->fd >= 0 && f->off != line_start(f->data, f->off)) {
    nl = memchr(f->data + f->off, '\n', f->len - f->off);
    n = write(f->fd, f->data + f->off,
              nl != NULL ? (size_t)(nl - (f->data + f->off)) + 1
                         : f->len - f->off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      log_warn("closing in the middle of a line; the reader sees it cut",
               LS("consumer", f->consumer), LS("sink", "fifo"),
               LS("path", f->path));
      return;
    }
    f->off += (size_t)n;
  }
}

/* A write still pending is given back undelivered: with no reader (or a
 * reader that does not read) it could wait forever, and the consumer keeps
 * what is not delivered behind the cursor for the next run. Its bytes
 * already in the pipe stay there; a cut line is the one torn line this can
 * leave, and only when tether stops mid-line with the reader still there. */
static void fifo_close(sink *s, sink_close_cb cb, void *data) {
  fifo_sink *f = (fifo_sink *)s;

  assert(!f->closing);
  f->closing = true;
  if (f->writing) {
    finish_line(f);
    finish_write(f, SINK_RETRY, "the sink closed before the batch was written");
  }
  f->close_cb = cb;
  f->close_data = data;
  drop_fd(f);
  f->pending_closes++;
  uv_close((uv_handle_t *)&f->reopen, on_handle_closed);
}

static int fifo_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const char *consumer_name, sink **out, char *err,
                     size_t errlen);

static void fifo_stats(const sink *s, sink_stats *out) {
  const fifo_sink *f = (const fifo_sink *)s;

  out->write_errors += f->write_errors;
  out->redelivered += f->redelivered;
}

const sink_type sink_fifo = {
  .name = "fifo",
  .description =
      "NDJSON lines written into a named pipe (made with mkfifo when "
      "missing); with no reader, tether waits and keeps the events",
  .options = fifo_options,
  .conf_size = sizeof(fifo_conf),
  .arg = "PATH",
  .open = fifo_open,
  .write = fifo_write,
  .sync = fifo_sync,
  .reopen = fifo_reopen,
  .close = fifo_close,
  .stats = fifo_stats,
};

static int fifo_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const char *consumer_name, sink **out, char *err,
                     size_t errlen) {
  const fifo_conf *fc = conf;
  fifo_sink *f;
  int rc, fd;

  if (arg == NULL || arg[0] == '\0') {
    snprintf(err, errlen, "fifo needs a path: fifo:PATH");
    return UV_EINVAL;
  }
  if ((rc = ensure_fifo(arg, (mode_t)fc->fifo_mode, err, errlen)) != 0)
    return rc;
  /* At start-up a missing reader is normal; any other error is not. */
  fd = open_fifo(arg, (mode_t)fc->fifo_mode, err, errlen);
  if (fd < 0 && fd != UV_ENXIO)
    return fd;
  f = calloc(1, sizeof *f);
  if (f == NULL || (f->path = strdup(arg)) == NULL ||
      (f->consumer = strdup(consumer_name)) == NULL) {
    if (f != NULL) {
      free(f->path);
      free(f);
    }
    if (fd >= 0)
      close(fd);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  f->base.type = &sink_fifo;
  f->loop = loop;
  f->mode = (mode_t)fc->fifo_mode;
  f->reopen_ms = fc->fifo_reopen_interval;
  f->fd = fd;
  uv_timer_init(loop, &f->reopen);
  f->reopen.data = f;
  if (fd >= 0) {
    start_poll(f);
  } else {
    /* The first try comes at once, on the loop, where the state can be
     * reported (the consumer sets report after open returns). */
    uv_timer_start(&f->reopen, on_reopen_timer, 0, f->reopen_ms);
  }
  *out = &f->base;
  return 0;
}
