/* The dead-letter file (see dead_letter.h).
 *
 * Two buffers take turns: records are appended to `queue` on the loop
 * thread; an operation swaps them into `op` and runs on the thread pool,
 * which alone touches op, fd and the file flags until its after-work
 * callback. A failed operation keeps op as it is and runs again before
 * anything queued meanwhile, so records reach the file in the order they
 * were appended and nothing needs memory to be put back.
 */
#include "daemon/dead_letter.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "daemon/log.h"
#include "loop/backoff.h"
#include "protocol/buf.h"

/* The records of one append call. */
typedef struct dl_run {
  uint64_t first, last, tag;
} dl_run;

typedef struct run_vec {
  dl_run *v;
  size_t n, cap;
} run_vec;

struct dead_letter {
  uv_loop_t *loop;
  char *path, *consumer, *sink;
  dead_letter_cb cb;
  void *data;

  /* Owned by the running operation while busy. */
  int fd;
  bool dir_sync;     /* the file was created: sync its directory */
  bool tail_checked; /* the file's end was looked at for a torn record */
  buf op;
  run_vec op_runs;
  bool op_reopen;
  int result;
  char msg[320];

  buf queue;
  run_vec queue_runs;
  bool busy, reopen_wanted;
  bool in_cb; /* calling cb: a close waits until the calls are done */
  uv_work_t work;
  uv_timer_t timer; /* a failed operation runs again */
  backoff retry;
  uint64_t write_errors;

  bool closing, timer_closed;
  dead_letter_close_cb close_cb;
  void *close_data;
};

static void kick(dead_letter *d);

static int append_json_string(buf *b, const char *s) {
  json_t *j = json_string(s);
  char *text;
  int rc;

  if (j == NULL)
    j = json_string("(not valid UTF-8)");
  if (j == NULL || (text = json_dumps(j, JSON_ENCODE_ANY)) == NULL) {
    json_decref(j);
    return UV_ENOMEM;
  }
  rc = buf_append_str(b, text);
  free(text);
  json_decref(j);
  return rc;
}

static int run_push(run_vec *v, uint64_t first, uint64_t last, uint64_t tag) {
  dl_run *grown;
  size_t cap;

  if (v->n == v->cap) {
    cap = v->cap ? v->cap * 2 : 16;
    if ((grown = realloc(v->v, cap * sizeof *grown)) == NULL)
      return UV_ENOMEM;
    v->v = grown;
    v->cap = cap;
  }
  v->v[v->n++] = (dl_run){ first, last, tag };
  return 0;
}

/* ---- the thread pool side --------------------------------------------- */

static int write_all(int fd, const char *p, size_t n) {
  ssize_t w;

  while (n > 0) {
    w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* A new file's name is durable only once its directory is. */
static int sync_dir_of(const char *path) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  int fd, rc = 0;

  if (slash == NULL)
    strcpy(dir, ".");
  else if (slash == path)
    strcpy(dir, "/");
  else if ((size_t)(slash - path) < sizeof dir)
    memcpy(dir, path, (size_t)(slash - path)), dir[slash - path] = '\0';
  else
    return -ENAMETOOLONG;
  if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
    return -errno;
  if (fsync(fd) != 0 && errno != EINVAL)
    rc = -errno;
  close(fd);
  return rc;
}

static int open_file(const char *path, bool *created) {
  struct stat st;
  int fd;

  *created = stat(path, &st) != 0;
  /* Read and write: the last byte is read back to find a torn record
   * (pread on a write-only descriptor fails with EBADF). */
  fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  return fd < 0 ? -errno : fd;
}

/* Appends op to the file and makes it durable. */
static void on_work(uv_work_t *req) {
  dead_letter *d = req->data;
  const char *what = "write";
  struct stat st;
  off_t before = -1;
  bool created;
  char last;
  int rc = 0, fd;

  if (d->op_reopen) {
    what = "reopen";
    if ((fd = open_file(d->path, &created)) < 0) {
      rc = fd;
      goto out;
    }
    /* What was written to the old file is durable already; this only
     * hurries what a failed operation may have left in it. */
    fdatasync(d->fd);
    close(d->fd);
    d->fd = fd;
    d->dir_sync |= created;
    d->tail_checked = false;
  }
  if (d->op.len == 0)
    goto out;
  what = "write";
  if (fstat(d->fd, &st) != 0) {
    rc = -errno;
    goto out;
  }
  before = st.st_size;
  /* A record cut by a crash must not swallow the next one: give it its
   * own line. */
  if (!d->tail_checked && before > 0 &&
      pread(d->fd, &last, 1, before - 1) == 1 && last != '\n' &&
      (rc = write_all(d->fd, "\n", 1)) != 0)
    goto out;
  d->tail_checked = true;
  if ((rc = write_all(d->fd, d->op.data, d->op.len)) != 0)
    goto cut;
  what = "fdatasync";
  if (fdatasync(d->fd) != 0) {
    rc = -errno;
    goto out;
  }
  if (d->dir_sync) {
    what = "fsync of the directory of";
    if ((rc = sync_dir_of(d->path)) != 0)
      goto out;
    d->dir_sync = false;
  }
  goto out;

cut:
  /* Take back a partial record, so the retry appends whole lines. */
  if (ftruncate(d->fd, before) != 0)
    d->tail_checked = false;
out:
  d->result = rc;
  if (rc != 0)
    snprintf(d->msg, sizeof d->msg, "%s %s: %s", what, d->path, strerror(-rc));
}

/* ---- the loop side ---------------------------------------------------- */

static void free_writer(dead_letter *d) {
  if (d->fd >= 0)
    close(d->fd);
  buf_free(&d->op);
  buf_free(&d->queue);
  free(d->op_runs.v);
  free(d->queue_runs.v);
  free(d->path);
  free(d->consumer);
  free(d->sink);
  free(d);
}

static void maybe_finish_close(dead_letter *d) {
  dead_letter_close_cb cb;
  void *data;

  if (!d->closing || d->busy || d->in_cb || !d->timer_closed)
    return;
  cb = d->close_cb;
  data = d->close_data;
  free_writer(d);
  cb(data);
}

static void on_timer_closed(uv_handle_t *h) {
  dead_letter *d = h->data;

  d->timer_closed = true;
  maybe_finish_close(d);
}

static void on_retry_timer(uv_timer_t *t) {
  kick(t->data);
}

static void on_done(uv_work_t *req, int status) {
  dead_letter *d = req->data;
  uint64_t delay;
  size_t i;

  (void)status; /* never cancelled: nothing calls uv_cancel on it */
  d->busy = false;
  if (d->closing) {
    maybe_finish_close(d);
    return;
  }
  if (d->result != 0) {
    /* Nothing of the operation counts: op stays as it is and runs again
     * first, after a while. */
    d->write_errors++;
    if (d->op_reopen)
      d->reopen_wanted = true;
    delay = backoff_next(&d->retry);
    log_error("cannot write the dead-letter file; trying again",
              LS("consumer", d->consumer), LS("sink", d->sink),
              LS("err", d->msg), LU("retry_in_ms", delay));
    uv_timer_start(&d->timer, on_retry_timer, delay, 0);
    return;
  }
  backoff_reset(&d->retry);
  if (d->op_reopen)
    log_info("reopened the dead-letter file", LS("consumer", d->consumer),
             LS("sink", d->sink), LS("path", d->path));
  buf_reset(&d->op);
  /* The callbacks may append (to queue) and even close: op_runs is left
   * alone until they are done. */
  d->in_cb = true;
  for (i = 0; i < d->op_runs.n && !d->closing; i++)
    d->cb(d, d->op_runs.v[i].first, d->op_runs.v[i].last, d->op_runs.v[i].tag,
          d->data);
  d->op_runs.n = 0;
  d->in_cb = false;
  if (d->closing) {
    maybe_finish_close(d);
    return;
  }
  kick(d);
}

static void kick(dead_letter *d) {
  run_vec rtmp;

  if (d->busy || d->closing || uv_is_active((uv_handle_t *)&d->timer))
    return;
  if (d->op.len == 0) {
    /* No failed operation waits to run again: take the queue. */
    if (d->queue.len == 0 && !d->reopen_wanted)
      return;
    buf_swap(&d->op, &d->queue);
    rtmp = d->op_runs;
    d->op_runs = d->queue_runs;
    d->queue_runs = rtmp;
  }
  d->op_reopen = d->reopen_wanted;
  d->reopen_wanted = false;
  d->busy = true;
  d->work.data = d;
  /* Fails only without a work callback. */
  (void)uv_queue_work(d->loop, &d->work, on_work, on_done);
}

int dead_letter_append(dead_letter *d, uint64_t first_seq, uint32_t attempts,
                       const char *error, const char *lines, size_t len,
                       uint64_t tag) {
  const char *p = lines, *end = lines + len, *nl;
  size_t before = d->queue.len, n;
  uint64_t seq = first_seq;
  int rc = 0;

  assert(!d->closing);
  while (p < end && rc == 0) {
    nl = memchr(p, '\n', (size_t)(end - p));
    n = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
    if ((rc = buf_append_str(&d->queue, "{\"consumer\":")) != 0 ||
        (rc = append_json_string(&d->queue, d->consumer)) != 0 ||
        (rc = buf_appendf(
             &d->queue,
             ",\"seq\":%" PRIu64 ",\"attempts\":%" PRIu32 ",\"error\":", seq,
             attempts)) != 0 ||
        (rc = append_json_string(&d->queue, error != NULL ? error : "")) != 0 ||
        (rc = buf_append_str(&d->queue, ",\"event\":")) != 0 ||
        /* The envelope is embedded as it came, byte for byte. */
        (rc = n > 0 ? buf_append(&d->queue, p, n)
                    : buf_append_str(&d->queue, "null")) != 0 ||
        (rc = buf_append_str(&d->queue, "}\n")) != 0)
      break;
    seq++;
    p += n + (nl != NULL);
  }
  if (rc == 0 && seq > first_seq)
    rc = run_push(&d->queue_runs, first_seq, seq - 1, tag);
  if (rc != 0) {
    d->queue.len = before;
    return UV_ENOMEM;
  }
  kick(d);
  return 0;
}

void dead_letter_reopen(dead_letter *d) {
  if (d->closing)
    return;
  d->reopen_wanted = true;
  kick(d);
}

uint64_t dead_letter_write_errors(const dead_letter *d) {
  return d->write_errors;
}

const char *dead_letter_path(const dead_letter *d) {
  return d->path;
}

void dead_letter_close(dead_letter *d, dead_letter_close_cb cb, void *data) {
  assert(!d->closing);
  d->closing = true;
  d->close_cb = cb;
  d->close_data = data;
  uv_close((uv_handle_t *)&d->timer, on_timer_closed);
}

int dead_letter_open(uv_loop_t *loop, const char *path, const char *consumer,
                     const char *sink, uint64_t retry_min_ms,
                     uint64_t retry_max_ms, dead_letter_cb cb, void *data,
                     dead_letter **out, char *err, size_t errlen) {
  dead_letter *d = calloc(1, sizeof *d);
  bool created;
  int rc;

  if (d == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  d->fd = -1;
  if ((d->path = strdup(path)) == NULL ||
      (d->consumer = strdup(consumer)) == NULL ||
      (d->sink = strdup(sink)) == NULL) {
    snprintf(err, errlen, "out of memory");
    rc = UV_ENOMEM;
    goto fail;
  }
  /* Opened now, on the loop thread: at start-up, so a bad path is a clear
   * error before any event needs the file. */
  if ((d->fd = open_file(path, &created)) < 0) {
    rc = d->fd;
    d->fd = -1;
    snprintf(err, errlen, "cannot open the dead-letter file %s: %s", path,
             strerror(-rc));
    goto fail;
  }
  d->dir_sync = created;
  d->loop = loop;
  d->cb = cb;
  d->data = data;
  buf_init(&d->op, 0);
  buf_init(&d->queue, 0);
  backoff_init(&d->retry, retry_min_ms, retry_max_ms, 0, 0);
  uv_timer_init(loop, &d->timer);
  d->timer.data = d;
  *out = d;
  return 0;

fail:
  free_writer(d);
  return rc;
}
