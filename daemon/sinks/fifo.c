/* Sink `fifo:PATH`: NDJSON lines written into a named pipe.
 *
 * Delivery: an event is delivered once the reader has read its line, not
 * when the line went into the pipe. A reader that leaves takes with it
 * nothing but what it read: the pipe's unread bytes die with the pipe, so
 * every line it had not read whole is written again, first, to the next
 * reader. Each batch is answered SINK_ACCEPTED once it is all in the pipe
 * (so a slow reader still slows the source), and its events are reported
 * through report.delivered as the reader takes them.
 *
 * How far the reader has read: FIONREAD on the write end counts the bytes
 * still in the pipe, so the reader has taken (bytes that went in) minus
 * that. Every line goes into `kept` as it is written and stays there until
 * the reader has taken it whole; only then is it reported. The bytes in
 * the pipe are one stream: `kept` holds it from the start of the oldest
 * line not yet read, each line's end is an offset in that stream, and a
 * session (one descriptor, or one restart of the writing after a reader
 * left) maps stream offsets to the pipe's bytes from where it began.
 *
 * When to look: right after each write, then on the `check` timer while a
 * line written is not yet read: 1 ms at first, doubling up to 256 ms while
 * the reader takes nothing, back to 1 ms once it does. A reader waiting in
 * read() takes the bytes within its wake-up latency, so the first look
 * usually reports them (the delay added to a delivery is about 1 ms; a
 * steady stream is reported by the look after the next write); a reader
 * that is stuck costs 4 looks a second; an empty pipe costs nothing, as no
 * timer runs.
 *
 * Noticing a reader leave. With no reader left, a write fails with EPIPE
 * and the descriptor polls POLLERR. But the pipe and its bytes live as
 * long as any descriptor holds it: a reader that opens the FIFO again
 * before the loop noticed the last one leave reads what that one left,
 * starting inside the line it was cut off in, and by then POLLERR is gone.
 * So the sink also watches the FIFO with inotify for IN_CLOSE_NOWRITE (a
 * read-only descriptor closed) and IN_OPEN, which are queued, never
 * missed. Each look samples FIONREAD first and reads the events after. No
 * close: every byte the sample counts as taken was read by a reader that
 * is still there. Closes, no open, and no reader left now: the readers of
 * the last look took those bytes alone, and the sample counts. Otherwise
 * it does not: every line not yet reported is written again, and nothing
 * counts until it is. A reader that is back already gets the rest of the
 * line being written and then those lines, so it never sees a line of
 * tether's torn or interleaved; only the first bytes it finds may be the
 * tail of the line its predecessor was cut off in. With no reader, the
 * descriptor is closed at once (the kernel then drops the pipe's bytes)
 * and the lines wait for the next reader. One that opens the FIFO in the
 * instant between that look and the close keeps the pipe, which may end in
 * the head of a line: an open seen after the close makes the sink open the
 * FIFO again at once and write the rest of that line (`rest`) first.
 *
 * Without inotify (fs.inotify.max_user_instances reached), a departure
 * counts from EPIPE or POLLERR alone, which is exact unless the next reader
 * opened the FIFO before tether noticed; then the line cut between them
 * can be lost. One reader at a time: readers sharing a FIFO split lines
 * between them whatever the writer does.
 *
 * Memory: `kept` holds what the pipe holds unread (at most its capacity,
 * 64 KiB by default and up to /proc/sys/fs/pipe-max-size, 1 MiB, with
 * F_SETPIPE_SZ), the line the reader is in, the chunk of the batch
 * being written (FIFO_CHUNK) and at most one `rest`; lines to write again
 * replace, not add to, those. The batch itself is the consumer's, borrowed
 * until its callback.
 *
 * The FIFO is opened O_WRONLY|O_NONBLOCK, so the loop never blocks: with no
 * reader the open fails with ENXIO, and the sink reports the state
 * "waiting_for_reader" and tries again every fifo_reopen_interval, holding
 * the batch (the consumer's window fills and the source stops). Writes are
 * driven by a uv_poll_t for POLLOUT, so a slow reader keeps the write
 * pending. A reopen (SIGHUP) waits for the current line to be written whole
 * before it closes the descriptor, because the reader keeps the pipe (and
 * its bytes) alive across it.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "daemon/log.h"
#include "daemon/sink.h"
#include "protocol/buf.h"

/* Writes per poll wake-up before the loop gets a turn (STYLE rule 9). */
#define FIFO_WRITES_PER_WAKEUP 32
/* The most of a batch one write() offers: what is offered is copied into
 * `kept` first, so this bounds the copy the pipe may refuse. */
#define FIFO_CHUNK (64 * 1024)
/* The look at how far the reader has read: see the comment at the top. */
#define FIFO_CHECK_MIN_MS 1
#define FIFO_CHECK_MAX_MS 256

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

/* A line written (or to write again) and not yet read whole. */
typedef struct fifo_line {
  uint64_t seq;
  uint64_t end; /* stream offset just past its newline */
} fifo_line;

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

  /* Watching the reader: the check timer, and inotify for its leaving. */
  uv_timer_t check;
  uint64_t check_ms;  /* the check timer's next period */
  int ino_fd;         /* inotify instance; -1 without (see the top) */
  int wd;             /* its watch on the FIFO open now; -1 without */
  uv_poll_t ino_poll; /* on ino_fd, while ino_fd >= 0 */
  bool rewind_wanted; /* a reader left, another is there: write again */
  bool stalled;       /* out of memory: writing waits for the check */
  bool no_fionread;   /* FIONREAD failed: delivered once written */
  bool ino_warned;    /* said once that inotify is missing */

  /* The stream of lines: kept.data[0] is stream offset kept_base; the
   * oldest line not yet read starts at `live`; lines[l_head..l_n) are
   * those lines in order; lines[l_head..l_sent) are written whole in the
   * current session. A line being written from the batch has its bytes
   * written so far at the end of `kept`, past its last record. */
  buf kept;
  uint64_t kept_base;
  uint64_t live;
  fifo_line *lines;
  size_t l_head, l_sent, l_n, l_cap;
  uint64_t sent;     /* stream offset written in the current session */
  uint64_t sent0;    /* stream offset where the current session began */
  uint64_t wr_total; /* bytes that went into the pipe: tether's, or
                        there when the descriptor was opened */
  uint64_t wr_at;    /* wr_total when the current session began */
  /* The rest of a line whose head may be in a pipe that outlived its
   * descriptor (see reader_left): written first, outside the stream. */
  buf rest;
  size_t rest_off;

  /* The batch being written: borrowed from the consumer until the cb. */
  bool writing;
  const char *data;
  size_t len, off;
  uint64_t next_seq; /* of the line at data + off */
  sink_write_cb write_cb;
  void *write_data;

  /* Counters for the status and /metrics (sink_stats). */
  uint64_t write_errors; /* writes cut short by the reader leaving */
  uint64_t redelivered;  /* lines written again to a new reader */

  bool reopen_wanted; /* SIGHUP: reopen at the next line boundary */
  bool closing;
  int pending_closes;
  sink_close_cb close_cb;
  void *close_data;
} fifo_sink;

static void start_poll(fifo_sink *f);
static void try_open(fifo_sink *f);
static bool check_reader(fifo_sink *f, bool saw_gone);
static void arm_check(fifo_sink *f, bool progress, bool from_timer);
static void on_check(uv_timer_t *t);

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

/* ---- the stream of lines ---------------------------------------------- */

static uint64_t kept_end(const fifo_sink *f) {
  return f->kept_base + f->kept.len;
}

/* Where line i (an index into lines, up to l_n) starts. */
static uint64_t line_start(const fifo_sink *f, size_t i) {
  return i == f->l_head ? f->live : f->lines[i - 1].end;
}

/* Whether the current session stopped inside a line: its rest must go
 * into the pipe before anything else does. */
static bool mid_line(const fifo_sink *f) {
  return f->rest_off < f->rest.len || f->sent != line_start(f, f->l_sent);
}

/* What is left to write of the current line (mid_line): of `rest`, of a
 * line to write again, or of the batch. */
static void line_rest(const fifo_sink *f, const char **p, size_t *len) {
  const char *nl;

  if (f->rest_off < f->rest.len) {
    *p = f->rest.data + f->rest_off;
    *len = f->rest.len - f->rest_off;
    return;
  }
  if (f->sent < kept_end(f)) {
    *p = f->kept.data + (f->sent - f->kept_base);
    *len = (size_t)(kept_end(f) - f->sent);
  } else {
    *p = f->data + f->off;
    *len = f->len - f->off;
  }
  if ((nl = memchr(*p, '\n', *len)) != NULL)
    *len = (size_t)(nl - *p) + 1;
}

/* Drops what lies before `live` once it is half of `kept`, so each byte is
 * moved at most once on average. */
static void compact(fifo_sink *f) {
  uint64_t dead = f->live - f->kept_base;

  if (f->l_head == f->l_n) {
    f->l_head = f->l_sent = f->l_n = 0;
  }
  if (dead > 0 && dead * 2 >= f->kept.len) {
    buf_consume(&f->kept, (size_t)dead);
    f->kept_base = f->live;
  }
}

/* The current session ends and a new one begins at the oldest line not
 * read: every line kept is written again, from its start. Never called
 * mid-line with the descriptor open (a reader would get the head of a line
 * followed by another line). */
static void rewind_lines(fifo_sink *f) {
  f->redelivered += f->l_sent - f->l_head;
  f->rewind_wanted = false;
  f->l_sent = f->l_head;
  f->sent = f->sent0 = f->live;
  f->wr_at = f->wr_total;
}

/* Forgets the head of a line cut by the reader's leaving: the descriptor is
 * being closed, so the pipe's copy dies with it, and the batch goes back to
 * the start of that line. */
static void drop_cut_line(fifo_sink *f) {
  uint64_t last = f->l_n > f->l_head ? f->lines[f->l_n - 1].end : f->live;
  size_t cut = (size_t)(kept_end(f) - last);

  if (cut == 0)
    return;
  assert(f->writing && f->off >= cut && f->sent == kept_end(f));
  f->kept.len -= cut;
  f->off -= cut;
  f->sent = last;
  f->redelivered++;
}

/* Reports the lines the reader has taken whole, given `taken`, the bytes
 * that left the pipe since it was opened. Returns whether any was. */
static bool deliver(fifo_sink *f, uint64_t taken) {
  uint64_t limit;
  size_t i, from = f->l_head, run;

  /* A reader left and another reads on: the byte counts no longer say
   * who read what, so nothing counts until the lines go again. */
  if (f->rewind_wanted)
    return false;
  if (taken < f->wr_at)
    return false; /* still bytes from before this session */
  limit = f->sent0 + (taken - f->wr_at);
  for (i = from; i < f->l_sent && f->lines[i].end <= limit; i++)
    ;
  if (i == from)
    return false;
  f->live = f->lines[i - 1].end;
  f->l_head = i;
  /* The consumer is told in runs of consecutive seqs. It may call back into
   * the sink (a new write, even close), which leaves these records be. */
  run = from;
  while (run < i && f->base.report.delivered != NULL) {
    size_t j = run + 1;

    while (j < i && f->lines[j].seq == f->lines[j - 1].seq + 1)
      j++;
    f->base.report.delivered(&f->base, f->lines[run].seq, f->lines[j - 1].seq,
                             f->base.report.data);
    run = j;
  }
  if (!f->closing)
    compact(f);
  return true;
}

/* ---- watching the reader ---------------------------------------------- */

/* What the inotify events read at one look say about the FIFO open now. */
typedef struct fifo_events {
  unsigned closes; /* read-only descriptors closed: readers leaving */
  unsigned opens;  /* descriptors opened (readers coming, or tether) */
} fifo_events;

/* Reads the queued inotify events. The kernel merges an event into the
 * one queued before it when they are alike, so two closes in a row count
 * as one; an open between them never merges, which is why opens are
 * watched too. A queue that overflowed counts as both. */
static fifo_events drain_events(fifo_sink *f) {
  _Alignas(struct inotify_event) char buf[4096];
  const struct inotify_event *e;
  fifo_events ev = { 0, 0 };
  ssize_t n;
  size_t at;
  int i;

  if (f->ino_fd < 0)
    return ev;
  for (i = 0; i < 64; i++) {
    n = read(f->ino_fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    for (at = 0; at + sizeof *e <= (size_t)n; at += sizeof *e + e->len) {
      e = (const struct inotify_event *)(buf + at);
      if (e->mask & IN_Q_OVERFLOW) {
        ev.closes++;
        ev.opens++;
      } else if (e->wd == f->wd && f->wd >= 0) {
        ev.closes += (e->mask & IN_CLOSE_NOWRITE) != 0;
        ev.opens += (e->mask & IN_OPEN) != 0;
      }
    }
  }
  return ev;
}

/* Watches the FIFO just opened (the inode of fd, whatever the path names
 * now) for readers opening and closing it. */
static void watch_fifo(fifo_sink *f) {
  char p[64];
  int wd;

  if (f->ino_fd < 0)
    return;
  snprintf(p, sizeof p, "/proc/self/fd/%d", f->fd);
  wd = inotify_add_watch(f->ino_fd, p, IN_CLOSE_NOWRITE | IN_OPEN);
  if (wd < 0 && !f->ino_warned) {
    f->ino_warned = true;
    log_warn("cannot watch the FIFO for a reader leaving; one that opens it "
             "again at once may miss the line cut before",
             LS("consumer", f->consumer), LS("sink", "fifo"),
             LS("path", f->path), LS("err", strerror(errno)));
  }
  if (f->wd >= 0 && f->wd != wd)
    inotify_rm_watch(f->ino_fd, f->wd);
  f->wd = wd;
}

/* A descriptor was just opened: a session begins. Bytes already in the
 * pipe (left by an earlier descriptor, for a reader that kept the FIFO
 * open) count as having gone in before; a reader closing before now has
 * read nothing of it. */
static void begin_session(fifo_sink *f) {
  int unread = 0;

  watch_fifo(f);
  drain_events(f);
  if (ioctl(f->fd, FIONREAD, &unread) != 0 || unread < 0)
    unread = 0;
  f->wr_total = (uint64_t)unread;
  rewind_lines(f);
  f->wr_at += f->rest.len - f->rest_off; /* goes in before the stream */
}

/* Whether the pipe has no reader left, asked now, not from a stale poll. */
static bool no_reader(const fifo_sink *f) {
  struct pollfd p = { .fd = f->fd, .events = POLLOUT };

  return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP)) != 0;
}

/* ---- descriptors and handles ------------------------------------------ */

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

    buf_free(&f->kept);
    buf_free(&f->rest);
    free(f->lines);
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
  f->stalled = false;
  uv_timer_stop(&f->check);
}

static void on_reopen_timer(uv_timer_t *t) {
  try_open(t->data);
}

static void wait_for_reader(fifo_sink *f) {
  if (!f->closing && !uv_is_active((uv_handle_t *)&f->reopen))
    uv_timer_start(&f->reopen, on_reopen_timer, f->reopen_ms, f->reopen_ms);
}

/* Keeps a copy of what is left to write of the current line in `rest`. */
static int keep_rest(fifo_sink *f) {
  const char *p;
  size_t len;

  if (f->rest_off < f->rest.len) {
    buf_consume(&f->rest, f->rest_off);
    f->rest_off = 0;
    return 0;
  }
  line_rest(f, &p, &len);
  buf_reset(&f->rest);
  return buf_append(&f->rest, p, len);
}

/* Opens the FIFO again at once, for a reader that may hold the pipe of the
 * descriptor just closed (old). Returns whether a reader is there. */
static bool reopen_now(fifo_sink *f, const struct stat *old) {
  struct stat st;
  char err[320];
  int fd = open_fifo(f->path, f->mode, err, sizeof err);

  if (fd < 0)
    return false;
  if (fstat(fd, &st) != 0 || st.st_dev != old->st_dev ||
      st.st_ino != old->st_ino) {
    /* Another FIFO at the path: a new pipe, no head to complete. */
    buf_reset(&f->rest);
    f->rest_off = 0;
  }
  f->fd = fd;
  begin_session(f);
  start_poll(f);
  return true;
}

/* A reader closed the FIFO (inotify), or none is left (EPIPE, POLLERR), or
 * the descriptor is broken (force). ev holds the events read with the
 * sample unread (valid when counted). */
static void reader_left(fifo_sink *f, bool counted, int unread, fifo_events ev,
                        bool force) {
  bool gone = force || no_reader(f), carry;
  struct stat st;

  if (f->writing)
    f->write_errors++;
  /* The sample counts when the readers there at the last look were the
   * only ones since, and they are gone (see the top). */
  if (gone && !force && (f->wd < 0 || (ev.closes > 0 && ev.opens == 0))) {
    if (f->no_fionread)
      deliver(f, f->wr_total);
    else if (counted)
      deliver(f, f->wr_total - (uint64_t)unread);
  }
  if (f->closing || f->fd < 0)
    return;
  if (!gone) {
    /* Another reader opened the FIFO before the loop saw this one go, and
     * reads what it left. It gets the rest of the line being written, then
     * every line not reported, again (pump). */
    f->rewind_wanted = true;
    start_poll(f);
    return;
  }
  /* With no reader left, closing the descriptor makes the kernel drop the
   * pipe's bytes. But a reader may open the FIFO between the look above
   * and the close: the pipe then lives on, ending in the head of the line
   * being written, and that reader must get the rest of the line before
   * anything else. An open seen after the close says it may have. */
  carry = !force && mid_line(f) && keep_rest(f) == 0 && fstat(f->fd, &st) == 0;
  drop_cut_line(f);
  rewind_lines(f);
  drop_fd(f);
  if (carry && (f->wd < 0 || drain_events(f).opens > 0) && reopen_now(f, &st))
    return;
  buf_reset(&f->rest);
  f->rest_off = 0;
  set_state(f, "waiting_for_reader");
  wait_for_reader(f);
}

/* Looks how far the reader has read: reports the lines it took whole, and
 * notices a reader that left (saw_gone: EPIPE or POLLERR said so). Returns
 * whether a line was reported. */
static bool check_reader(fifo_sink *f, bool saw_gone) {
  int unread = 0;
  bool counted = false;
  fifo_events ev;

  if (f->fd < 0) {
    drain_events(f); /* about no reader of ours */
    return false;
  }
  /* FIONREAD first, the close events after: see the top. */
  if (!f->no_fionread) {
    if (ioctl(f->fd, FIONREAD, &unread) != 0) {
      log_warn("FIONREAD cannot count what a FIFO holds here: a line counts "
               "delivered once written, and a reader that leaves loses what "
               "the pipe held",
               LS("consumer", f->consumer), LS("sink", "fifo"),
               LS("err", strerror(errno)));
      f->no_fionread = true;
    } else {
      /* More than went in: another writer shares the FIFO, and the count
       * says nothing of ours. */
      counted = unread >= 0 && (uint64_t)unread <= f->wr_total;
    }
  }
  ev = drain_events(f);
  if (ev.closes > 0 || saw_gone) {
    reader_left(f, counted, unread, ev, false);
    return false;
  }
  if (f->no_fionread)
    return deliver(f, f->wr_total);
  return counted && deliver(f, f->wr_total - (uint64_t)unread);
}

/* Keeps the check timer running while a line written is not yet read (or
 * writing is stalled), with the period of the top comment. */
static void arm_check(fifo_sink *f, bool progress, bool from_timer) {
  bool need =
      f->fd >= 0 && !f->closing && (f->l_sent > f->l_head || f->stalled);

  if (!need) {
    uv_timer_stop(&f->check);
    f->check_ms = FIFO_CHECK_MIN_MS;
    return;
  }
  if (progress)
    f->check_ms = FIFO_CHECK_MIN_MS;
  else if (from_timer && f->check_ms < FIFO_CHECK_MAX_MS)
    f->check_ms *= 2;
  if (from_timer || progress || !uv_is_active((uv_handle_t *)&f->check))
    uv_timer_start(&f->check, on_check, f->check_ms, 0);
}

static void on_check(uv_timer_t *t) {
  fifo_sink *f = t->data;
  bool progress;

  f->stalled = false;
  progress = check_reader(f, false);
  if (f->closing)
    return;
  arm_check(f, progress, true);
  start_poll(f);
}

static void on_inotify(uv_poll_t *h, int status, int events) {
  fifo_sink *f = h->data;
  bool progress;

  (void)events;
  if (status < 0) {
    /* The checks still read it; only the wake-up is lost. */
    uv_poll_stop(h);
    return;
  }
  progress = check_reader(f, false);
  if (f->closing || f->fd < 0)
    return;
  arm_check(f, progress, false);
  start_poll(f);
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
  struct stat a, b;
  char err[320];
  int fd;

  assert(!mid_line(f));
  f->reopen_wanted = false;
  err[0] = '\0';
  fd = open_fifo(f->path, f->mode, err, sizeof err);
  if (fd < 0 && fd != UV_ENXIO) {
    log_error("reopening the FIFO failed; still writing the old one",
              LS("consumer", f->consumer), LS("sink", "fifo"), LS("err", err));
    return;
  }
  log_info("reopened FIFO", LS("consumer", f->consumer), LS("sink", "fifo"),
           LS("path", f->path), LB("reader", fd >= 0));
  if (fd >= 0 && fstat(fd, &b) == 0 && fstat(f->fd, &a) == 0 &&
      a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
    /* The same pipe: its reader, its bytes and the count of them carry
     * over to the new descriptor. */
    drop_fd(f);
    f->fd = fd;
    start_poll(f); /* or once the old poll handle is closed */
    arm_check(f, false, false);
    return;
  }
  /* Another pipe, or none: what the old one holds may never be read. What
   * was read is reported; the rest goes again into the new one. */
  check_reader(f, false);
  if (f->closing) {
    if (fd >= 0)
      close(fd);
    return;
  }
  if (f->fd >= 0) {
    rewind_lines(f);
    drop_fd(f);
  }
  if (fd < 0) {
    /* The FIFO now at the path has no reader yet. */
    set_state(f, "waiting_for_reader");
    wait_for_reader(f);
    return;
  }
  f->fd = fd;
  uv_timer_stop(&f->reopen);
  set_state(f, NULL);
  begin_session(f);
  start_poll(f);
}

/* ---- writing ---------------------------------------------------------- */

/* Makes room for line records up to l_n + extra (those past l_n are staged
 * for the write in progress). 0 or UV_ENOMEM. */
static int reserve_lines(fifo_sink *f, size_t extra) {
  fifo_line *bigger;
  size_t cap;

  if (f->l_n + extra <= f->l_cap)
    return 0;
  if (f->l_head > 0) {
    /* Slide down first: the front is read and reported. */
    memmove(f->lines, f->lines + f->l_head,
            (f->l_n + extra - 1 - f->l_head) * sizeof *f->lines);
    f->l_n -= f->l_head;
    f->l_sent -= f->l_head;
    f->l_head = 0;
    if (f->l_n + extra <= f->l_cap)
      return 0;
  }
  cap = f->l_cap ? f->l_cap : 256;
  while (cap < f->l_n + extra)
    cap *= 2;
  if ((bigger = realloc(f->lines, cap * sizeof *bigger)) == NULL)
    return UV_ENOMEM;
  f->lines = bigger;
  f->l_cap = cap;
  return 0;
}

/* Where the bytes of one write come from. */
typedef enum fifo_src { FROM_REST, FROM_KEPT, FROM_BATCH } fifo_src;

/* The next bytes to write: the rest of a cut line, else the lines to write
 * again, else the next chunk of the batch, with the records of the lines
 * it completes staged past l_n and room for its bytes in `kept`. line_only
 * stops at the end of the current line. Returns the count of staged
 * records (*len 0: nothing to write), or UV_ENOMEM. */
static int next_chunk(fifo_sink *f, bool line_only, const char **p, size_t *len,
                      fifo_src *src) {
  const char *s, *q, *end, *nl;
  uint64_t base = kept_end(f);
  int staged = 0;

  *len = 0;
  if (f->rest_off < f->rest.len) {
    *p = f->rest.data + f->rest_off;
    *len = f->rest.len - f->rest_off;
    *src = FROM_REST;
    return 0;
  }
  if (f->sent < base) {
    *p = f->kept.data + (f->sent - f->kept_base);
    *len = (size_t)(base - f->sent);
    *src = FROM_KEPT;
    if (line_only && (nl = memchr(*p, '\n', *len)) != NULL)
      *len = (size_t)(nl - *p) + 1;
    return 0;
  }
  if (!f->writing || f->off == f->len)
    return 0;
  *src = FROM_BATCH;
  s = f->data + f->off;
  end = s + (f->len - f->off < FIFO_CHUNK ? f->len - f->off : FIFO_CHUNK);
  for (q = s; q < end; q = nl + 1) {
    if ((nl = memchr(q, '\n', (size_t)(end - q))) == NULL)
      break;
    if (reserve_lines(f, (size_t)staged + 1) != 0) {
      end = nl; /* up to this line's end, the rest when there is room */
      break;
    }
    f->lines[f->l_n + (size_t)staged].seq = f->next_seq + (uint64_t)staged;
    f->lines[f->l_n + (size_t)staged].end = base + (uint64_t)(nl - s) + 1;
    staged++;
    if (line_only) {
      end = nl + 1;
      break;
    }
  }
  if (end == s || buf_reserve(&f->kept, (size_t)(end - s)) != 0)
    return UV_ENOMEM;
  *p = s;
  *len = (size_t)(end - s);
  return staged;
}

/* Accounts n bytes written from p. Bytes of the batch are kept, and the
 * staged records of the lines they complete count. */
static void took(fifo_sink *f, const char *p, size_t n, fifo_src src,
                 int staged) {
  uint64_t to = f->sent + n;
  int rc;

  f->wr_total += n;
  if (src == FROM_REST) {
    if ((f->rest_off += n) == f->rest.len) {
      buf_reset(&f->rest);
      f->rest_off = 0;
    }
    return;
  }
  if (src == FROM_BATCH) {
    rc = buf_append(&f->kept, p, n); /* room reserved by next_chunk */
    assert(rc == 0);
    (void)rc;
    f->off += n;
    for (; staged > 0 && f->lines[f->l_n].end <= to; staged--) {
      f->l_n++;
      f->next_seq++;
    }
  }
  f->sent = to;
  while (f->l_sent < f->l_n && f->lines[f->l_sent].end <= f->sent)
    f->l_sent++;
}

/* Writes what the pipe takes, a bounded number of times, then looks how
 * far the reader is. */
static void pump(fifo_sink *f) {
  const char *p = NULL;
  fifo_src src = FROM_KEPT;
  bool progress = false;
  size_t len;
  ssize_t n;
  int i, staged;

  for (i = 0; i < FIFO_WRITES_PER_WAKEUP && f->fd >= 0 && !f->closing; i++) {
    bool line_only = f->rewind_wanted || f->reopen_wanted;

    if (line_only && !mid_line(f)) {
      /* At a line boundary: what waited for one happens now. */
      if (f->rewind_wanted)
        rewind_lines(f);
      if (f->reopen_wanted) {
        do_reopen(f);
        return;
      }
      continue;
    }
    staged = next_chunk(f, line_only, &p, &len, &src);
    if (staged < 0) {
      /* Out of memory for the copy: nothing more goes out until the check
       * timer comes back, as what goes out must be kept. */
      f->stalled = true;
      break;
    }
    if (len == 0) {
      if (f->writing && f->len == 0)
        finish_write(f, SINK_DELIVERED, NULL); /* an empty batch */
      break;
    }
    n = write(f->fd, p, len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN)
        break; /* the poll for POLLOUT stays armed */
      if (errno != EPIPE) {
        log_error("FIFO write failed; reopening it",
                  LS("consumer", f->consumer), LS("sink", "fifo"),
                  LS("path", f->path), LS("err", strerror(errno)));
        reader_left(f, false, 0, (fifo_events){ 0, 0 }, true);
        return;
      }
      check_reader(f, true);
      if (!f->closing && f->fd >= 0)
        start_poll(f);
      return;
    }
    took(f, p, (size_t)n, src, staged);
    if (src == FROM_BATCH && f->off == f->len)
      finish_write(f, SINK_ACCEPTED, NULL);
    /* A reader as fast as the loop makes room as fast as it is filled;
     * looking now and then keeps `kept` to about a pipe and a chunk. */
    if (f->fd >= 0 && !f->closing && kept_end(f) - f->live > FIFO_CHUNK)
      progress |= check_reader(f, false);
  }
  if (f->fd < 0 || f->closing)
    return;
  progress |= check_reader(f, false);
  if (f->fd < 0 || f->closing)
    return;
  arm_check(f, progress, false);
  start_poll(f);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  fifo_sink *f = h->data;
  bool progress;

  /* libuv reports POLLERR, which a pipe's write end raises when it has no
   * reader left, as a negative status and stops the handle. */
  if (status < 0) {
    progress = check_reader(f, true);
    if (!f->closing && f->fd >= 0) {
      arm_check(f, progress, false);
      start_poll(f);
    }
    return;
  }
  if (events & UV_WRITABLE)
    pump(f);
}

/* Watches the descriptor: for room while there is something to write, and
 * always for the reader leaving (POLLERR is reported whatever the events
 * asked). */
static void start_poll(fifo_sink *f) {
  bool work =
      !f->stalled && (f->rest_off < f->rest.len || f->sent < kept_end(f) ||
                      f->writing || f->rewind_wanted || f->reopen_wanted);
  int events = UV_DISCONNECT | (work ? UV_WRITABLE : 0);
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
      reader_left(f, false, 0, (fifo_events){ 0, 0 }, true);
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
  begin_session(f);
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
  f->next_seq = b->first_seq;
  f->write_cb = cb;
  f->write_data = data;
  /* The write starts from the poll callback, never from here, so cb never
   * runs inside this call. An empty batch still goes through the poll. */
  start_poll(f);
}

/* Nothing to make durable: a pipe has no disk behind it, and a line is
 * reported only once its reader has it. */
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
  if (mid_line(f)) {
    f->reopen_wanted = true;
    start_poll(f);
    return;
  }
  do_reopen(f);
}

/* Closing mid-line would leave the reader a cut line before its EOF: one
 * last try, without waiting, to finish that line. */
static void finish_line(fifo_sink *f) {
  const char *p;
  size_t len;
  ssize_t n;

  if (f->fd < 0 || !mid_line(f))
    return;
  line_rest(f, &p, &len);
  while (len > 0) {
    n = write(f->fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      log_warn("closing in the middle of a line; the reader sees it cut",
               LS("consumer", f->consumer), LS("sink", "fifo"),
               LS("path", f->path));
      return;
    }
    p += n;
    len -= (size_t)n;
  }
}

/* A write still pending is given back undelivered: with no reader (or a
 * reader that does not read) it could wait forever, and the consumer keeps
 * what is not delivered behind the cursor for the next run, as it keeps the
 * lines in the pipe not yet reported read. Those stay in the pipe for the
 * reader, so it may see them twice. A cut line is the one torn line this
 * can leave, and only when tether stops mid-line with the reader still
 * there. */
static void fifo_close(sink *s, sink_close_cb cb, void *data) {
  fifo_sink *f = (fifo_sink *)s;

  assert(!f->closing);
  f->closing = true;
  finish_line(f);
  if (f->writing)
    finish_write(f, SINK_RETRY, "the sink closed before the batch was written");
  f->close_cb = cb;
  f->close_data = data;
  drop_fd(f);
  f->pending_closes += 2;
  uv_close((uv_handle_t *)&f->reopen, on_handle_closed);
  uv_close((uv_handle_t *)&f->check, on_handle_closed);
  if (f->ino_fd >= 0) {
    f->pending_closes++;
    uv_close((uv_handle_t *)&f->ino_poll, on_handle_closed);
    close(f->ino_fd);
    f->ino_fd = -1;
  }
}

static int fifo_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const sink_policy *policy, const char *consumer_name,
                     sink **out, char *err, size_t errlen);

static void fifo_stats(const sink *s, sink_stats *out) {
  const fifo_sink *f = (const fifo_sink *)s;

  out->write_errors += f->write_errors;
  out->redelivered += f->redelivered;
}

const sink_type sink_fifo = {
  .name = "fifo",
  .description =
      "NDJSON lines written into a named pipe (made with mkfifo when "
      "missing); with no reader, tether waits and keeps the events, and an "
      "event counts delivered once the reader has read its line",
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

/* Watches for readers closing the FIFO (see the top). Without inotify the
 * sink works on, with the weaker rule the top states. */
static void init_inotify(fifo_sink *f) {
  f->wd = -1;
  f->ino_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (f->ino_fd >= 0 && uv_poll_init(f->loop, &f->ino_poll, f->ino_fd) != 0) {
    close(f->ino_fd);
    f->ino_fd = -1;
    errno = EBADF;
  }
  if (f->ino_fd < 0) {
    f->ino_warned = true;
    log_warn("cannot watch the FIFO for a reader leaving (inotify; see "
             "fs.inotify.max_user_instances); one that opens it again at "
             "once may miss the line cut before",
             LS("consumer", f->consumer), LS("sink", "fifo"),
             LS("path", f->path), LS("err", strerror(errno)));
    return;
  }
  f->ino_poll.data = f;
  uv_poll_start(&f->ino_poll, UV_READABLE, on_inotify);
}

static int fifo_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const sink_policy *policy, const char *consumer_name,
                     sink **out, char *err, size_t errlen) {
  const fifo_conf *fc = conf;
  fifo_sink *f;
  int rc, fd;

  (void)policy; /* applied by the consumer, to the batches this sink fails */
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
  f->check_ms = FIFO_CHECK_MIN_MS;
  buf_init(&f->kept, 0);
  buf_init(&f->rest, 0);
  uv_timer_init(loop, &f->reopen);
  uv_timer_init(loop, &f->check);
  f->reopen.data = f;
  f->check.data = f;
  init_inotify(f);
  f->fd = fd;
  if (fd >= 0) {
    begin_session(f);
    start_poll(f);
  } else {
    /* The first try comes at once, on the loop, where the state can be
     * reported (the consumer sets report after open returns). */
    uv_timer_start(&f->reopen, on_reopen_timer, 0, f->reopen_ms);
  }
  *out = &f->base;
  return 0;
}
