/* Sinks `stdout` and `file:PATH`: NDJSON lines written to a descriptor.
 *
 * Both share one engine. Every blocking call (writev, fdatasync, rename,
 * open) runs on libuv's thread pool, one operation at a time per sink, so
 * the loop never waits for the disk and no two threads touch the descriptor
 * at once. While an operation runs, the loop thread does not read the fields
 * the operation owns (fd, size); it only queues the next request.
 *
 * Delivery (DESIGN §2): a batch is delivered once every byte is written. A
 * file is durable only after fdatasync, which the flusher asks for with
 * sync() before it commits the cursor that covers the batch.
 *
 * A failed write never leaves half a batch behind: the file is cut back to
 * its size before the batch, so a retry appends whole lines again and a
 * reader never sees a torn line in the middle of the file.
 *
 * A file removed while tether writes it (rm, not a rename) takes with it
 * every line since the last commit, while writes into the open descriptor
 * still succeed. The sync is the one place that notices: after fdatasync it
 * checks the file still has a name (st_nlink > 0). If not, it opens a new
 * file at the path and fails with SINK_EREMOVED, so the flusher commits
 * nothing and the consumer delivers again from its committed cursor into
 * the new file, in order. A rename (logrotate) keeps the link count, so the
 * data stays where it was moved and nothing comes again. Rotation and
 * SIGHUP leave a removed file for the next sync to replace: a write between
 * them would land in the new file ahead of the events that come again.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <uv.h>

#include "daemon/log.h"
#include "daemon/sink.h"

typedef struct file_conf {
  uint64_t rotate_size; /* bytes; 0 = never rotate */
  int64_t rotate_keep;  /* rotated files kept: PATH.1 .. PATH.N */
} file_conf;

static const option file_options[] = {
  { "rotate_size", OPT_SIZE, "0", offsetof(file_conf, rotate_size),
    "rotate the file before it grows past this size; 0 = never", 0, 0, NULL,
    0 },
  { "rotate_keep", OPT_INT, "5", offsetof(file_conf, rotate_keep),
    "rotated files to keep (PATH.1 is the newest)", 1, 1000, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

static const option stdout_options[] = {
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

typedef enum op_kind { OP_NONE, OP_WRITE, OP_SYNC, OP_REOPEN } op_kind;

typedef struct fsink {
  sink base;
  uv_loop_t *loop;
  char *path; /* NULL for stdout */
  char *consumer;
  uint64_t rotate_size;
  int64_t rotate_keep;
  bool is_stdout;

  /* Owned by the running operation while one runs. */
  int fd;
  bool regular;   /* a regular file: fdatasync and truncate apply */
  bool seek_back; /* not O_APPEND: move the offset back after a cut */
  uint64_t size;

  /* The operation on the thread pool and its result. */
  uv_work_t work;
  op_kind op;
  int result; /* 0 or -errno */
  char msg[320];
  bool rotated;        /* the write rotated the file */
  bool reopen_skipped; /* a reopen found the file removed; the sync acts */
  /* A batch that failed after some of its lines went into a rotated file:
   * its identity and how far it got. */
  uint64_t part_seq;
  size_t part_len, part_off;

  /* Requests waiting for the running operation. */
  bool write_wanted;
  sink_batch batch;
  sink_write_cb write_cb;
  void *write_data;
  bool sync_wanted;
  sink_sync_cb sync_cb;
  void *sync_data;
  bool reopen_wanted;
  bool closing;
  sink_close_cb close_cb;
  void *close_data;
} fsink;

static void next_op(fsink *f);

static const char *target_name(const fsink *f) {
  return f->is_stdout ? "stdout" : f->path;
}

static void set_msg(fsink *f, const char *what, int err) {
  snprintf(f->msg, sizeof f->msg, "%s %s: %s", what, target_name(f),
           strerror(-err));
}

/* Opens path for appending. Returns the descriptor or -errno. */
static int open_append(const char *path) {
  int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);

  return fd < 0 ? -errno : fd;
}

/* Cuts a trailing partial line (one a crash left half-written) back to the
 * last newline. Returns the bytes removed, or -errno. */
static int64_t repair_tail(int fd, uint64_t size) {
  char chunk[4096];
  uint64_t end = size, start;
  ssize_t n, i;

  while (end > 0) {
    start = end > sizeof chunk ? end - sizeof chunk : 0;
    n = pread(fd, chunk, (size_t)(end - start), (off_t)start);
    if (n < 0)
      return -errno;
    if (n != (ssize_t)(end - start))
      return -EIO;
    for (i = n - 1; i >= 0; i--) {
      if (chunk[i] == '\n') {
        if (start + (uint64_t)i + 1 == size)
          return 0;
        if (ftruncate(fd, (off_t)(start + (uint64_t)i + 1)) != 0)
          return -errno;
        return (int64_t)(size - (start + (uint64_t)i + 1));
      }
    }
    end = start;
  }
  /* No newline at all: the whole file is one torn line. */
  if (size > 0 && ftruncate(fd, 0) != 0)
    return -errno;
  return (int64_t)size;
}

/* fsync on a directory makes renames in it durable. */
static int sync_dir_of(const char *path) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  int fd, rc = 0;

  if (slash == NULL) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    if ((size_t)(slash - path) >= sizeof dir)
      return -ENAMETOOLONG;
    memcpy(dir, path, (size_t)(slash - path));
    dir[slash - path] = '\0';
  }
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fsync(fd) != 0 && errno != EINVAL)
    rc = -errno;
  close(fd);
  return rc;
}

/* Records errno's reason for what failed and returns -errno. */
static int fail_with(fsink *f, const char *what) {
  int err = -errno;

  set_msg(f, what, err);
  return err;
}

/* Whether the open file was removed from its directory. An fstat failure
 * counts as not removed: the caller's next step reports it. */
static bool removed(int fd) {
  struct stat st;

  return fstat(fd, &st) == 0 && st.st_nlink == 0;
}

/* Thread pool. PATH -> PATH.1 -> ... -> PATH.keep (dropped). The old file
 * is fdatasync'd before it is renamed, because the flusher's next sync only
 * reaches the new descriptor. */
static int rotate(fsink *f) {
  char from[PATH_MAX], to[PATH_MAX];
  int64_t i;
  int fd;

  if (fdatasync(f->fd) != 0)
    return fail_with(f, "fdatasync");
  /* Renaming the path now would move a file that is not ours (or fail).
   * The removed file takes the lines until the next sync replaces it. */
  if (removed(f->fd)) {
    f->size = 0;
    return 0;
  }
  snprintf(to, sizeof to, "%s.%" PRId64, f->path, f->rotate_keep);
  if (unlink(to) != 0 && errno != ENOENT)
    return fail_with(f, "rotate");
  for (i = f->rotate_keep - 1; i >= 1; i--) {
    snprintf(from, sizeof from, "%s.%" PRId64, f->path, i);
    snprintf(to, sizeof to, "%s.%" PRId64, f->path, i + 1);
    if (rename(from, to) != 0 && errno != ENOENT)
      return fail_with(f, "rotate");
  }
  snprintf(to, sizeof to, "%s.1", f->path);
  if (rename(f->path, to) != 0)
    return fail_with(f, "rotate");
  fd = open_append(f->path);
  if (fd < 0) {
    set_msg(f, "open", fd);
    return fd;
  }
  close(f->fd);
  f->fd = fd;
  f->size = 0;
  sync_dir_of(f->path);
  f->rotated = true;
  return 0;
}

/* Waits until a non-blocking descriptor someone else shares (a pipe set to
 * O_NONBLOCK by the parent) can take more. */
static int wait_writable(int fd) {
  struct pollfd p = { .fd = fd, .events = POLLOUT, .revents = 0 };

  while (poll(&p, 1, -1) < 0)
    if (errno != EINTR)
      return -errno;
  return 0;
}

static int write_all(int fd, const char *data, size_t len) {
  ssize_t n;
  int err;

  while (len > 0) {
    n = write(fd, data, len > (size_t)SSIZE_MAX ? (size_t)SSIZE_MAX : len);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN) {
        if ((err = wait_writable(fd)) != 0)
          return err;
        continue;
      }
      return -errno;
    }
    data += n;
    len -= (size_t)n;
  }
  return 0;
}

static size_t first_line_len(const char *p, size_t n) {
  const char *nl = memchr(p, '\n', n);

  return nl != NULL ? (size_t)(nl - p) + 1 : n;
}

/* The longest run of whole lines of p[0..n) within room bytes, or the first
 * line alone when not even that fits. */
static size_t fit_lines(const char *p, size_t n, size_t room) {
  size_t i = room < n ? room : n;

  while (i > 0)
    if (p[--i] == '\n')
      return i + 1;
  return first_line_len(p, n);
}

/* Writes the batch, rotating between whole lines so no file grows past
 * rotate_size (a single line longer than that gets a file of its own).
 *
 * Lines written before a rotation are durable in the rotated file, so when a
 * later part fails, the retry of the same batch starts where the failure was
 * instead of writing those lines twice. */
static void do_write(fsink *f) {
  const char *p = f->batch.data;
  size_t len = f->batch.len, off = 0, chunk, room;
  uint64_t before;
  int err;

  f->rotated = false;
  f->result = 0;
  if (p == NULL || len == 0)
    return;
  if (f->part_seq == f->batch.first_seq && f->part_len == len)
    off = f->part_off;
  while (off < len) {
    chunk = len - off;
    if (f->rotate_size > 0) {
      if (f->size > 0 &&
          f->size + first_line_len(p + off, chunk) > f->rotate_size) {
        if ((err = rotate(f)) != 0)
          goto fail;
      }
      if (f->size + chunk > f->rotate_size) {
        room =
            f->rotate_size > f->size ? (size_t)(f->rotate_size - f->size) : 0;
        chunk = fit_lines(p + off, chunk, room);
      }
    }
    before = f->size;
    err = write_all(f->fd, p + off, chunk);
    if (err != 0) {
      set_msg(f, "write", err);
      /* Take back the part that made it, so the retry appends whole
       * lines. */
      if (f->regular &&
          (ftruncate(f->fd, (off_t)before) != 0 ||
           (f->seek_back && lseek(f->fd, (off_t)before, SEEK_SET) < 0))) {
        int terr = errno;

        snprintf(f->msg + strlen(f->msg), sizeof f->msg - strlen(f->msg),
                 "; and cutting back the partial batch failed: %s",
                 strerror(terr));
      }
      goto fail;
    }
    f->size += chunk;
    off += chunk;
  }
  f->part_len = 0;
  f->part_seq = 0;
  f->result = 0;
  return;

fail:
  f->part_seq = f->batch.first_seq;
  f->part_len = len;
  f->part_off = off;
  f->result = err;
}

/* The file at the path was removed after the last sync: whatever it held
 * since the last commit is gone. Opens a new file there and says so; when
 * that fails, the removed one stays open, and every later sync comes back
 * here and tries again, so nothing is committed meanwhile. */
static void replace_removed(fsink *f) {
  struct stat st;
  int fd;

  /* A batch cut short by a rotation resumes in the removed file no more:
   * it comes again whole, from the consumer. */
  f->part_seq = 0;
  f->part_len = 0;
  f->result = SINK_EREMOVED;
  fd = open_append(f->path);
  if (fd >= 0 && fstat(fd, &st) != 0) {
    int err = -errno;

    close(fd);
    fd = err;
  }
  if (fd < 0) {
    snprintf(f->msg, sizeof f->msg,
             "%s was removed, and creating it again failed: %s", f->path,
             strerror(-fd));
    return;
  }
  close(f->fd);
  f->fd = fd;
  f->regular = S_ISREG(st.st_mode);
  f->size = (uint64_t)st.st_size;
  snprintf(f->msg, sizeof f->msg, "%s was removed; writing a new file there",
           f->path);
}

static void do_sync(fsink *f) {
  f->result = 0;
  if (!f->regular)
    return;
  if (fdatasync(f->fd) != 0) {
    f->result = -errno;
    set_msg(f, "fdatasync", f->result);
    return;
  }
  /* Standard output has no path to open again. */
  if (!f->is_stdout && removed(f->fd))
    replace_removed(f);
}

/* The old descriptor is synced before it is closed: data delivered into it
 * must be durable before a later commit, and the next sync only reaches the
 * new one. */
static void do_reopen(fsink *f) {
  struct stat st;
  int fd;

  f->result = 0;
  f->reopen_skipped = false;
  if (f->regular && fdatasync(f->fd) != 0) {
    f->result = -errno;
    set_msg(f, "fdatasync", f->result);
    return;
  }
  /* Removed rather than moved: the lines since the last commit are gone,
   * and only the sync can tell the consumer to deliver them again. */
  if (f->regular && removed(f->fd)) {
    f->reopen_skipped = true;
    return;
  }
  fd = open_append(f->path);
  if (fd < 0) {
    f->result = fd;
    set_msg(f, "reopen", fd);
    return;
  }
  if (fstat(fd, &st) != 0) {
    f->result = -errno;
    set_msg(f, "fstat", f->result);
    close(fd);
    return;
  }
  close(f->fd);
  f->fd = fd;
  f->size = (uint64_t)st.st_size;
}

static void on_work(uv_work_t *req) {
  fsink *f = req->data;

  f->msg[0] = '\0';
  switch (f->op) {
  case OP_WRITE:
    do_write(f);
    break;
  case OP_SYNC:
    do_sync(f);
    break;
  case OP_REOPEN:
    do_reopen(f);
    break;
  case OP_NONE:
    assert(0 && "no operation");
  }
}

/* Errors a retry may cure (space comes back, a file system recovers) and
 * those it cannot (the reader of stdout went away). */
static sink_outcome outcome_of(int err) {
  if (err == 0)
    return SINK_DELIVERED;
  if (err == -EPIPE || err == -EBADF || err == -EINVAL)
    return SINK_FATAL;
  return SINK_RETRY;
}

static void on_work_done(uv_work_t *req, int status) {
  fsink *f = req->data;
  op_kind op = f->op;
  sink_write_cb wcb;
  sink_sync_cb scb;
  void *data;
  int result = status == UV_ECANCELED ? UV_ECANCELED : f->result;

  f->op = OP_NONE;
  switch (op) {
  case OP_WRITE:
    if (f->rotated)
      log_info("rotated file", LS("consumer", f->consumer), LS("sink", "file"),
               LS("path", f->path));
    wcb = f->write_cb;
    data = f->write_data;
    f->write_cb = NULL;
    wcb(&f->base, outcome_of(result), result ? f->msg : NULL, data);
    break;
  case OP_SYNC:
    scb = f->sync_cb;
    data = f->sync_data;
    f->sync_cb = NULL;
    scb(&f->base, result, result ? f->msg : NULL, data);
    /* A batch that waited behind the sync belongs after the events the
     * consumer now delivers again: written first, it would stand ahead of
     * them in the new file. The consumer drops it and it comes again. */
    if (result == SINK_EREMOVED && f->write_wanted) {
      f->write_wanted = false;
      wcb = f->write_cb;
      data = f->write_data;
      f->write_cb = NULL;
      wcb(&f->base, SINK_RETRY,
          "not written: the file was removed, and delivery starts again "
          "from the committed cursor",
          data);
    }
    break;
  case OP_REOPEN:
    if (f->reopen_skipped)
      log_warn("not reopening the file: it was removed, not moved; the next "
               "cursor commit replaces it",
               LS("consumer", f->consumer), LS("sink", "file"),
               LS("path", f->path));
    else if (result != 0)
      log_error("reopening file failed; still writing the old one",
                LS("consumer", f->consumer), LS("sink", "file"),
                LS("err", f->msg));
    else
      log_info("reopened file", LS("consumer", f->consumer), LS("sink", "file"),
               LS("path", f->path));
    break;
  case OP_NONE:
    assert(0 && "completion without an operation");
  }
  next_op(f);
}

static void start_op(fsink *f, op_kind op) {
  int err;

  f->op = op;
  f->work.data = f;
  err = uv_queue_work(f->loop, &f->work, on_work, on_work_done);
  /* uv_queue_work fails only on a NULL work callback. */
  assert(err == 0);
  (void)err;
}

static void finish_close(fsink *f) {
  sink_close_cb cb = f->close_cb;
  void *data = f->close_data;

  if (!f->is_stdout && f->fd >= 0)
    close(f->fd);
  free(f->path);
  free(f->consumer);
  free(f);
  cb(data);
}

/* Picks the next operation. A sync goes before a waiting write: it covers
 * only what was delivered before it was asked for, and the commit waits on
 * it. A reopen goes first of all, so a write after SIGHUP lands in the new
 * file. */
static void next_op(fsink *f) {
  if (f->op != OP_NONE)
    return;
  if (f->reopen_wanted) {
    f->reopen_wanted = false;
    start_op(f, OP_REOPEN);
  } else if (f->sync_wanted) {
    f->sync_wanted = false;
    start_op(f, OP_SYNC);
  } else if (f->write_wanted) {
    f->write_wanted = false;
    start_op(f, OP_WRITE);
  } else if (f->closing) {
    finish_close(f);
  }
}

static void fsink_write(sink *s, const sink_batch *b, sink_write_cb cb,
                        void *data) {
  fsink *f = (fsink *)s;

  assert(f->write_cb == NULL && "one write at a time");
  assert(!f->closing);
  f->batch = *b;
  f->write_cb = cb;
  f->write_data = data;
  f->write_wanted = true;
  next_op(f);
}

static void fsink_sync(sink *s, sink_sync_cb cb, void *data) {
  fsink *f = (fsink *)s;

  assert(f->sync_cb == NULL && "one sync at a time");
  f->sync_cb = cb;
  f->sync_data = data;
  f->sync_wanted = true;
  next_op(f);
}

static void fsink_reopen(sink *s) {
  fsink *f = (fsink *)s;

  if (f->is_stdout || f->closing)
    return;
  f->reopen_wanted = true;
  next_op(f);
}

static void fsink_close(sink *s, sink_close_cb cb, void *data) {
  fsink *f = (fsink *)s;

  assert(!f->closing);
  f->closing = true;
  f->close_cb = cb;
  f->close_data = data;
  next_op(f);
}

static fsink *fsink_new(uv_loop_t *loop, const char *consumer_name) {
  fsink *f = calloc(1, sizeof *f);

  if (f == NULL)
    return NULL;
  f->loop = loop;
  f->fd = -1;
  f->consumer = strdup(consumer_name);
  if (f->consumer == NULL) {
    free(f);
    return NULL;
  }
  return f;
}

static int file_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const char *consumer_name, sink **out, char *err,
                     size_t errlen) {
  const file_conf *fc = conf;
  struct stat st;
  int64_t cut;
  fsink *f;
  int rc;

  if ((f = fsink_new(loop, consumer_name)) == NULL ||
      (f->path = strdup(arg)) == NULL) {
    rc = UV_ENOMEM;
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  f->base.type = NULL; /* set by the caller's type below */
  f->rotate_size = fc->rotate_size;
  f->rotate_keep = fc->rotate_keep;
  /* Opening happens once at start-up, before the loop runs, so doing it
   * here (not on the thread pool) blocks nothing. */
  f->fd = open_append(arg);
  if (f->fd < 0) {
    rc = f->fd;
    snprintf(err, errlen, "cannot open %s: %s", arg, strerror(-rc));
    goto fail;
  }
  if (fstat(f->fd, &st) != 0) {
    rc = -errno;
    snprintf(err, errlen, "cannot stat %s: %s", arg, strerror(-rc));
    goto fail;
  }
  f->regular = S_ISREG(st.st_mode);
  f->size = (uint64_t)st.st_size;
  if (f->regular && f->size > 0) {
    cut = repair_tail(f->fd, f->size);
    if (cut < 0) {
      rc = (int)cut;
      snprintf(err, errlen, "cannot repair the end of %s: %s", arg,
               strerror(-rc));
      goto fail;
    }
    if (cut > 0) {
      log_warn("cut a partial last line left by a crash",
               LS("consumer", consumer_name), LS("sink", "file"),
               LS("path", arg), LI("bytes", cut));
      f->size -= (uint64_t)cut;
    }
  }
  *out = &f->base;
  return 0;

fail:
  if (f != NULL) {
    if (f->fd >= 0)
      close(f->fd);
    free(f->path);
    free(f->consumer);
    free(f);
  }
  return rc;
}

static int file_sink_open(uv_loop_t *loop, const char *arg, const void *conf,
                          const sink_policy *policy, const char *consumer_name,
                          sink **out, char *err, size_t errlen);
static int stdout_sink_open(uv_loop_t *loop, const char *arg, const void *conf,
                            const sink_policy *policy,
                            const char *consumer_name, sink **out, char *err,
                            size_t errlen);

const sink_type sink_stdout = {
  .name = "stdout",
  .description = "NDJSON lines on standard output",
  .options = stdout_options,
  .conf_size = 0,
  .arg = NULL,
  .open = stdout_sink_open,
  .write = fsink_write,
  .sync = fsink_sync,
  .reopen = fsink_reopen,
  .close = fsink_close,
};

const sink_type sink_file = {
  .name = "file",
  .description = "NDJSON lines appended to a file, fdatasync'd before each "
                 "cursor commit, rotated by size",
  .options = file_options,
  .conf_size = sizeof(file_conf),
  .arg = "PATH",
  .open = file_sink_open,
  .write = fsink_write,
  .sync = fsink_sync,
  .reopen = fsink_reopen,
  .close = fsink_close,
};

static int file_sink_open(uv_loop_t *loop, const char *arg, const void *conf,
                          const sink_policy *policy, const char *consumer_name,
                          sink **out, char *err, size_t errlen) {
  int rc;

  /* The consumer applies the policy to the batches this sink fails. */
  (void)policy;
  rc = file_open(loop, arg, conf, consumer_name, out, err, errlen);
  if (rc == 0)
    (*out)->type = &sink_file;
  return rc;
}

static int stdout_sink_open(uv_loop_t *loop, const char *arg, const void *conf,
                            const sink_policy *policy,
                            const char *consumer_name, sink **out, char *err,
                            size_t errlen) {
  struct stat st;
  fsink *f;

  (void)arg, (void)conf, (void)policy;
  if (fstat(STDOUT_FILENO, &st) != 0) {
    snprintf(err, errlen, "standard output is not open: %s", strerror(errno));
    return -errno;
  }
  if ((f = fsink_new(loop, consumer_name)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  f->base.type = &sink_stdout;
  f->is_stdout = true;
  f->fd = STDOUT_FILENO;
  /* Standard output redirected into a file gets the same durability as a
   * file sink; a pipe or a terminal has nothing to sync. */
  f->regular = S_ISREG(st.st_mode);
  if (f->regular) {
    /* A file opened by the shell with > is written at its offset, not at
     * its end; size tracks that offset. */
    off_t pos = lseek(STDOUT_FILENO, 0, SEEK_CUR);
    int fl = fcntl(STDOUT_FILENO, F_GETFL);

    f->seek_back = fl >= 0 && !(fl & O_APPEND);
    f->size = f->seek_back && pos >= 0 ? (uint64_t)pos : (uint64_t)st.st_size;
  }
  *out = &f->base;
  return 0;
}
