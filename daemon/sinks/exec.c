/* Sink `exec:ARGV`: events handed to a handler process, which acknowledges
 * each one on its stdout.
 *
 * The handler protocol:
 *
 *   stdin   one NDJSON envelope per line, the same lines every sink gets
 *           ({"consumer":"orders","seq":42,...}\n). A line may come more
 *           than once (after a retry, a timeout or a restart).
 *   stdout  one answer per event, in any order:
 *             {"seq":42,"status":"ok"}                 handled
 *             42                                       the same, short
 *             {"seq":42,"status":"retry","delay_ms":500}  send it again
 *             {"seq":42,"status":"fail","error":"..."} a failed attempt
 *   stderr  logged by tether at warn, one record per line.
 *   EOF     the handler must exit when its stdin ends: that is how it
 *           learns that tether stopped, even after kill -9.
 *
 * Delivery (DESIGN §2): an event is delivered when the handler answers ok
 * for it once its whole line was written to this handler's stdin (the
 * kernel took it), or when on_fail gives up on it, see below. An answer
 * for an event whose line this handler has not been given (still queued
 * in tether, in the part of a write the kernel has not taken yet, or
 * written only to a handler that has since exited) is ignored and logged
 * like one for an unknown event: a handler that answers ahead of what it
 * read must not move the cursor past events it never got. One copy
 * written to this handler is enough: a late ok for it counts while the
 * event waits to be sent again. write() copies the batch's lines and
 * answers SINK_ACCEPTED at once; each event is reported through
 * report.delivered as its answer comes. Every event is kept until then,
 * so memory is bounded by the consumer's window (max_in_flight).
 *
 * Attempts: a fail answer, a retry answer and an event left unanswered for
 * handler_timeout each count as one attempt; the event is sent again after
 * delay_ms, or after a delay that doubles per attempt from resend_min to
 * resend_max. At max_attempts (0 = never), on_fail decides: retry (go on,
 * with a warning each time), skip (an error in the log, then delivered) or
 * dead_letter:PATH (see below). A handler that answers nothing at all for
 * handler_timeout while events wait is hung: the oldest event counts an
 * attempt and the handler is killed and restarted. A crash does not count
 * as an attempt: the event may not be to blame.
 *
 * Dead letters: the record {"consumer","seq","attempts","error","event"} is
 * appended to PATH and fdatasync'd on the thread pool (daemon/dead_letter.h;
 * max_attempts and on_fail are [consumer] keys), and only then is the
 * event reported given up. So the cursor never passes an event that was
 * neither handled nor durably dead-lettered, and sync() has nothing left to
 * do.
 *
 * The process: spawned with uv_spawn (no shell; ARGV is split into words
 * here), detached into a process group of its own so that a terminal's
 * ^C reaches tether only, and tether decides when the handler stops. Its
 * stdin is the only writer end of its input, held by tether alone (libuv
 * marks it close-on-exec), so when tether dies for any reason the handler
 * reads EOF. When the handler exits it is restarted with the backoff of
 * restart_min/restart_max, whatever is left of its process group is
 * killed, and every unanswered event is sent again in seq order; while it
 * is down the sink reports the state "handler_restarting". Closing the
 * sink closes the handler's stdin, gives it stop_timeout to exit, then
 * sends SIGTERM to the group, and SIGKILL after stop_timeout more.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/dead_letter.h"
#include "daemon/log.h"
#include "daemon/sink.h"
#include "loop/backoff.h"
#include "protocol/buf.h"

/* Caps on what the handler sends back (STYLE rule 9). */
#define EXEC_ANSWER_LINE_MAX    (64 * 1024) /* longer answers are ignored */
#define EXEC_STDERR_LINE_MAX    1024        /* longer stderr lines are cut */
#define EXEC_STDERR_LINES_PER_S 50          /* more are counted, not logged */
#define EXEC_ERROR_MAX          512         /* of an answer's error text */
/* Bytes handed to one write on the handler's stdin; one write at a time,
 * so what waits in tether's memory beyond the events is at most this. */
#define EXEC_CHUNK_MAX (64 * 1024)
/* Warnings about bad answers: at most this many per window. */
#define EXEC_WARN_BURST     10
#define EXEC_WARN_WINDOW_MS 10000

#define SECOND_MS INT64_C(1000)
#define MINUTE_MS (60 * SECOND_MS)
#define HOUR_MS   (60 * MINUTE_MS)
#define DAY_MS    (24 * HOUR_MS)

typedef struct exec_conf {
  uint64_t handler_timeout;
  uint64_t restart_min, restart_max;
  uint64_t resend_min, resend_max;
  uint64_t stop_timeout;
} exec_conf;

static const option exec_options[] = {
  { "handler_timeout", OPT_DURATION, "30s",
    offsetof(exec_conf, handler_timeout),
    "an event unanswered this long after it was sent counts as an attempt "
    "and is sent again; a handler that answers nothing for this long is "
    "restarted",
    1, DAY_MS, NULL, 0 },
  { "restart_min", OPT_DURATION, "250ms", offsetof(exec_conf, restart_min),
    "shortest wait before a handler that exited is started again", 1, HOUR_MS,
    NULL, 0 },
  { "restart_max", OPT_DURATION, "30s", offsetof(exec_conf, restart_max),
    "longest wait before a handler that keeps exiting is started again", 1,
    DAY_MS, NULL, 0 },
  { "resend_min", OPT_DURATION, "250ms", offsetof(exec_conf, resend_min),
    "wait before an event is sent again after its first failed attempt; "
    "doubles with each attempt",
    1, HOUR_MS, NULL, 0 },
  { "resend_max", OPT_DURATION, "30s", offsetof(exec_conf, resend_max),
    "longest wait before an event is sent again, a handler's delay_ms "
    "included",
    1, DAY_MS, NULL, 0 },
  { "stop_timeout", OPT_DURATION, "5s", offsetof(exec_conf, stop_timeout),
    "on close, time the handler has to exit after its stdin ends, and then "
    "after SIGTERM before SIGKILL",
    1, 10 * MINUTE_MS, NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

/* Where an event is. QUEUED, SENT and WAITING events sit on the list of
 * that name; a DEAD event is on its way into the dead-letter file. */
typedef enum ev_state { EV_QUEUED, EV_SENT, EV_WAITING, EV_DEAD } ev_state;

typedef struct ev {
  struct ev *prev, *next;
  uint64_t seq;
  uint64_t sent_at; /* EV_SENT: when it was written (loop ms) */
  uint64_t at;      /* EV_SENT: its deadline; EV_WAITING: when to resend */
  uint32_t attempts;
  ev_state state;
  /* Whether the handler has the line: written is set once its whole line
   * is in the current handler's stdin, and cleared for a new handler.
   * wid is the last write that carried the line, and wend the offset just
   * past it in that write's chunk. */
  bool written;
  uint64_t wid;
  size_t wend;
  char *error; /* the last attempt's failure, for the dead letter; owned */
  size_t len;  /* of line, '\n' included */
  char line[];
} ev;

typedef struct ev_list {
  ev *head, *tail;
} ev_list;

typedef struct seq_vec {
  uint64_t *v;
  size_t n, cap;
} seq_vec;

typedef struct ratelimit {
  uint64_t window_start;
  unsigned used;
  uint64_t suppressed;
} ratelimit;

typedef enum handler_state {
  H_DOWN,     /* no process, no handles; the restart timer may run */
  H_RUNNING,  /* spawned, its exit not yet seen */
  H_STOPPING, /* being stopped or exited; its handles are closing */
} handler_state;

typedef struct exec_sink {
  sink base;
  uv_loop_t *loop;
  char *consumer;
  char **argv; /* owned, NULL-terminated */
  uint64_t timeout_ms;
  int64_t max_attempts;
  sink_on_fail on_fail;
  uint64_t resend_min, resend_max, stop_ms;

  /* Events kept until answered, found by seq: ring[seq & (cap - 1)] for
   * seq in [lo, hi). Slots of answered events are NULL. */
  ev **ring;
  size_t cap;
  uint64_t lo, hi;
  ev_list queued, sent, waiting;
  uv_timer_t deadline_timer; /* the head of `sent` times out */
  uv_timer_t resend_timer;   /* the head of `waiting` is due */

  /* The handler process and its three pipes. A *_live flag means the
   * handle is initialized and uv_close has not been called on it yet. */
  handler_state hstate;
  uv_process_t proc;
  uv_pipe_t in, out, err;
  bool proc_live, in_live, out_live, err_live;
  int handler_closes; /* close callbacks of those handles still to come */
  bool exited;        /* exit_cb ran (or the spawn failed) */
  int pid;
  int kill_stage;        /* 0; 1 stdin closed; 2 SIGTERM sent; 3 SIGKILL sent */
  uv_timer_t proc_timer; /* restart, healthy, stop and drain phases */
  bool proc_timer_live;
  backoff restart;
  const char *state; /* reported to the consumer; NULL when normal */
  uint64_t last_answer_at;

  /* Writing to the handler's stdin: one chunk at a time. wid numbers the
   * writes; chunk_seqs holds the seqs of the events in the chunk, and
   * chunk_done how much of it the kernel is known to have taken. */
  bool writing;
  uv_write_t wreq;
  buf chunk;
  uint64_t wid;
  seq_vec chunk_seqs;
  size_t chunk_done;

  /* Reading its stdout and stderr. */
  char rbuf[64 * 1024];
  buf answer;
  bool answer_skip; /* dropping the rest of an over-long line */
  buf errline;
  bool errline_cut;
  ratelimit warn_rl, stderr_rl;

  /* Dead letters (on_fail = dead_letter:PATH); NULL otherwise. */
  dead_letter *dl;

  /* Counters for the status and /metrics (sink_stats). */
  uint64_t redelivered, failed, dead_lettered, write_errors;

  bool closing;
  int pending_closes; /* the sink's own timers */
  sink_close_cb close_cb;
  void *close_data;
} exec_sink;

static void kick_send(exec_sink *x);
static void terminate(exec_sink *x, bool gently);
static void maybe_finish_close(exec_sink *x);
static void spawn_handler(exec_sink *x);

/* ---- ARGV ------------------------------------------------------------- */

static void free_argv(char **argv) {
  size_t i;

  if (argv == NULL)
    return;
  for (i = 0; argv[i] != NULL; i++)
    free(argv[i]);
  free(argv);
}

/* Splits s into words as a shell would, without running one: blanks
 * separate words; '...' keeps everything literally; "..." keeps everything
 * but \" \\ \$ and \` (a backslash before anything else stays); outside
 * quotes a backslash escapes the next character. No expansion of any kind
 * happens. Returns 0, UV_EINVAL with the reason in err, or UV_ENOMEM. */
static int split_argv(const char *s, char ***out, char *err, size_t errlen) {
  char **argv = NULL, **grown, *word;
  size_t n = 0, cap = 0, i = 0, open_at = 0;
  bool in_word, quoted;
  buf w;
  int rc = 0;

  buf_init(&w, 0);
  *out = NULL;
  for (;;) {
    while (s[i] == ' ' || s[i] == '\t')
      i++;
    if (s[i] == '\0')
      break;
    buf_reset(&w);
    in_word = true;
    quoted = false;
    while (in_word && s[i] != '\0' && rc == 0) {
      char c = s[i];

      if (c == ' ' || c == '\t') {
        in_word = false;
      } else if (c == '\'') {
        const char *end = strchr(s + i + 1, '\'');

        open_at = i;
        if (end == NULL) {
          snprintf(err, errlen,
                   "sink = \"exec:%s\": the single quote at column %zu of ARGV "
                   "is not closed",
                   s, open_at + 1);
          rc = UV_EINVAL;
          break;
        }
        quoted = true;
        rc = buf_append(&w, s + i + 1, (size_t)(end - (s + i + 1)));
        i = (size_t)(end - s) + 1;
      } else if (c == '"') {
        open_at = i++;
        quoted = true;
        while (s[i] != '"' && s[i] != '\0' && rc == 0) {
          if (s[i] == '\\' && s[i + 1] != '\0' &&
              strchr("\"\\$`", s[i + 1]) != NULL)
            i++;
          rc = buf_append(&w, s + i, 1);
          i++;
        }
        if (rc == 0 && s[i] != '"') {
          snprintf(err, errlen,
                   "sink = \"exec:%s\": the double quote at column %zu of ARGV "
                   "is not closed",
                   s, open_at + 1);
          rc = UV_EINVAL;
          break;
        }
        i++;
      } else if (c == '\\') {
        if (s[i + 1] == '\0') {
          snprintf(err, errlen,
                   "sink = \"exec:%s\": a backslash at the end of ARGV escapes "
                   "nothing",
                   s);
          rc = UV_EINVAL;
          break;
        }
        rc = buf_append(&w, s + i + 1, 1);
        i += 2;
      } else {
        rc = buf_append(&w, s + i, 1);
        i++;
      }
    }
    if (rc != 0)
      goto fail;
    if (w.len == 0 && quoted) {
      /* Only quotes with nothing inside: most likely a mistake, and an
       * empty argument is of no use to a handler. */
      snprintf(err, errlen,
               "sink = \"exec:%s\": empty quotes make an empty argument, which "
               "is not allowed",
               s);
      rc = UV_EINVAL;
      goto fail;
    }
    if (n + 2 > cap) {
      cap = cap ? cap * 2 : 8;
      if ((grown = realloc(argv, cap * sizeof *argv)) == NULL) {
        rc = UV_ENOMEM;
        goto fail;
      }
      argv = grown;
    }
    if ((word = malloc(w.len + 1)) == NULL) {
      rc = UV_ENOMEM;
      goto fail;
    }
    if (w.len > 0)
      memcpy(word, w.data, w.len);
    word[w.len] = '\0';
    argv[n++] = word;
    argv[n] = NULL;
  }
  if (n == 0) {
    snprintf(err, errlen, "exec needs a command: sink = exec:ARGV");
    rc = UV_EINVAL;
    goto fail;
  }
  buf_free(&w);
  *out = argv;
  return 0;

fail:
  if (rc == UV_ENOMEM)
    snprintf(err, errlen, "out of memory");
  buf_free(&w);
  free_argv(argv);
  return rc;
}

/* Checks that argv[0] can be run, the way execvp would look for it, so a
 * typo is a start-up error rather than a handler restarting forever. */
static int find_program(const char *name, char *err, size_t errlen) {
  const char *path = getenv("PATH"), *p, *colon;
  char full[PATH_MAX];
  struct stat st;
  size_t dirlen;

  if (strchr(name, '/') != NULL) {
    if (access(name, X_OK) != 0) {
      int rc = -errno;

      snprintf(err, errlen, "exec: cannot run %s: %s", name, strerror(errno));
      return rc;
    }
    return 0;
  }
  if (path == NULL || path[0] == '\0')
    path = "/usr/local/bin:/usr/bin:/bin";
  for (p = path;; p = colon + 1) {
    colon = strchr(p, ':');
    dirlen = colon != NULL ? (size_t)(colon - p) : strlen(p);
    if (dirlen + 1 + strlen(name) + 1 < sizeof full) {
      /* An empty entry means the current directory, as for execvp. */
      if (dirlen == 0)
        full[dirlen++] = '.';
      else
        memcpy(full, p, dirlen);
      full[dirlen] = '/';
      strcpy(full + dirlen + 1, name);
      if (stat(full, &st) == 0 && S_ISREG(st.st_mode) &&
          access(full, X_OK) == 0)
        return 0;
    }
    if (colon == NULL)
      break;
  }
  snprintf(err, errlen, "exec: cannot run %s: not found in PATH", name);
  return UV_ENOENT;
}

static int exec_check(void *conf, const char *arg, uint64_t explicit, char *err,
                      size_t errlen) {
  exec_conf *c = conf;
  char **argv;
  char lo[32], hi[32];
  int rc;

  (void)explicit;
  if (arg != NULL) {
    if ((rc = split_argv(arg, &argv, err, errlen)) != 0)
      return rc;
    free_argv(argv);
  }
  if (c->restart_min > c->restart_max) {
    options_format_duration(c->restart_min, lo, sizeof lo);
    options_format_duration(c->restart_max, hi, sizeof hi);
    snprintf(err, errlen, "restart_min (%s) is above restart_max (%s)", lo, hi);
    return UV_EINVAL;
  }
  if (c->resend_min > c->resend_max) {
    options_format_duration(c->resend_min, lo, sizeof lo);
    options_format_duration(c->resend_max, hi, sizeof hi);
    snprintf(err, errlen, "resend_min (%s) is above resend_max (%s)", lo, hi);
    return UV_EINVAL;
  }
  return 0;
}

/* ---- small helpers ---------------------------------------------------- */

static bool rl_take(ratelimit *r, uint64_t now, unsigned burst,
                    uint64_t window_ms) {
  if (now - r->window_start >= window_ms) {
    r->window_start = now;
    r->used = 0;
  }
  if (r->used >= burst) {
    r->suppressed++;
    return false;
  }
  r->used++;
  return true;
}

/* How many were dropped since the last record that got through. */
static uint64_t rl_suppressed(ratelimit *r) {
  uint64_t n = r->suppressed;

  r->suppressed = 0;
  return n;
}

static void set_state(exec_sink *x, const char *state) {
  if (x->state == state || x->closing)
    return;
  x->state = state;
  if (x->base.report.state != NULL)
    x->base.report.state(&x->base, state, x->base.report.data);
}

static int seq_push(seq_vec *v, uint64_t seq) {
  uint64_t *grown;
  size_t cap;

  if (v->n == v->cap) {
    cap = v->cap ? v->cap * 2 : 16;
    if ((grown = realloc(v->v, cap * sizeof *grown)) == NULL)
      return UV_ENOMEM;
    v->v = grown;
    v->cap = cap;
  }
  v->v[v->n++] = seq;
  return 0;
}

/* ---- events: the ring and the lists ---------------------------------- */

static ev_list *list_of(exec_sink *x, ev_state st) {
  switch (st) {
  case EV_QUEUED:
    return &x->queued;
  case EV_SENT:
    return &x->sent;
  case EV_WAITING:
    return &x->waiting;
  case EV_DEAD:
    return NULL;
  }
  return NULL;
}

static void list_append(ev_list *l, ev *e) {
  e->next = NULL;
  e->prev = l->tail;
  if (l->tail != NULL)
    l->tail->next = e;
  else
    l->head = e;
  l->tail = e;
}

static void list_insert_before(ev_list *l, ev *pos, ev *e) {
  if (pos == NULL) {
    list_append(l, e);
    return;
  }
  e->next = pos;
  e->prev = pos->prev;
  if (pos->prev != NULL)
    pos->prev->next = e;
  else
    l->head = e;
  pos->prev = e;
}

static void unlink_ev(exec_sink *x, ev *e) {
  ev_list *l = list_of(x, e->state);

  if (l == NULL)
    return;
  if (e->prev != NULL)
    e->prev->next = e->next;
  else
    l->head = e->next;
  if (e->next != NULL)
    e->next->prev = e->prev;
  else
    l->tail = e->prev;
  e->prev = e->next = NULL;
}

static ev *find_ev(const exec_sink *x, uint64_t seq) {
  ev *e;

  if (x->cap == 0 || seq < x->lo || seq >= x->hi)
    return NULL;
  e = x->ring[seq & (x->cap - 1)];
  return e != NULL && e->seq == seq ? e : NULL;
}

/* Makes the ring cover [lo, hi). */
static int ring_cover(exec_sink *x, uint64_t lo, uint64_t hi) {
  size_t cap = x->cap ? x->cap : 64;
  ev **bigger;
  uint64_t s;

  if (x->lo == x->hi) {
    x->lo = lo;
    x->hi = lo;
  }
  if (lo > x->lo)
    lo = x->lo;
  if (hi < x->hi)
    hi = x->hi;
  if (x->cap != 0 && hi - lo <= x->cap) {
    x->lo = lo;
    x->hi = hi;
    return 0;
  }
  while (cap < hi - lo)
    cap *= 2;
  if ((bigger = calloc(cap, sizeof *bigger)) == NULL)
    return UV_ENOMEM;
  for (s = x->lo; s < x->hi; s++)
    bigger[s & (cap - 1)] = x->ring[s & (x->cap - 1)];
  free(x->ring);
  x->ring = bigger;
  x->cap = cap;
  x->lo = lo;
  x->hi = hi;
  return 0;
}

static void free_ev(ev *e) {
  free(e->error);
  free(e);
}

/* Forgets an answered event and moves base past the answered ones. */
static void remove_ev(exec_sink *x, ev *e) {
  unlink_ev(x, e);
  x->ring[e->seq & (x->cap - 1)] = NULL;
  free_ev(e);
  while (x->lo < x->hi && x->ring[x->lo & (x->cap - 1)] == NULL)
    x->lo++;
}

static int add_ev(exec_sink *x, uint64_t seq, const char *line, size_t len) {
  bool nl = len == 0 || line[len - 1] != '\n';
  ev *e, *old;
  int rc;

  if ((rc = ring_cover(x, seq, seq + 1)) != 0)
    return rc;
  if ((e = malloc(sizeof *e + len + nl)) == NULL)
    return UV_ENOMEM;
  memset(e, 0, sizeof *e);
  e->seq = seq;
  e->len = len + nl;
  memcpy(e->line, line, len);
  if (nl)
    e->line[len] = '\n';
  /* The same seq again means the consumer started over (an operator reset
   * the cursor): the newer line wins. */
  if ((old = find_ev(x, seq)) != NULL) {
    unlink_ev(x, old);
    free_ev(old);
  }
  x->ring[seq & (x->cap - 1)] = e;
  e->state = EV_QUEUED;
  list_append(&x->queued, e);
  return 0;
}

/* The handler handled it (or, with gave_up, on_fail gave up on it: the
 * consumer's source hears the difference, so an upstream is never told an
 * event the application refused was handled). */
static void settle(exec_sink *x, ev *e, bool gave_up) {
  uint64_t seq = e->seq;
  char why[256];

  /* The reason outlives e only for a give-up: the hot path copies none. */
  if (gave_up)
    snprintf(why, sizeof why, "%s", e->error != NULL ? e->error : "");
  remove_ev(x, e);
  /* Once closing, the consumer has committed its last cursor; reporting
   * now would poke a flusher that is closing too. What is answered now
   * comes again after the restart. */
  if (x->closing)
    return;
  if (gave_up && x->base.report.gave_up != NULL)
    x->base.report.gave_up(&x->base, seq, seq, why, x->base.report.data);
  else if (x->base.report.delivered != NULL)
    x->base.report.delivered(&x->base, seq, seq, x->base.report.data);
}

static void deliver(exec_sink *x, ev *e) {
  settle(x, e, false);
}

/* ---- timers for deadlines and resends --------------------------------- */

static void on_deadline(uv_timer_t *t);
static void on_resend(uv_timer_t *t);

/* Armed lazily: it fires for the head it saw, and finds the new head then
 * if that one was answered meanwhile. */
static void arm_deadline(exec_sink *x) {
  uint64_t now = uv_now(x->loop);

  if (x->closing || x->sent.head == NULL || x->hstate != H_RUNNING) {
    uv_timer_stop(&x->deadline_timer);
    return;
  }
  uv_timer_start(&x->deadline_timer, on_deadline,
                 x->sent.head->at > now ? x->sent.head->at - now : 0, 0);
}

static void arm_resend(exec_sink *x) {
  uint64_t now = uv_now(x->loop);

  if (x->closing || x->waiting.head == NULL) {
    uv_timer_stop(&x->resend_timer);
    return;
  }
  uv_timer_start(&x->resend_timer, on_resend,
                 x->waiting.head->at > now ? x->waiting.head->at - now : 0, 0);
}

static void schedule_resend(exec_sink *x, ev *e, int64_t hint_ms) {
  uint64_t delay, now = uv_now(x->loop);
  ev *pos;
  unsigned shift;

  if (hint_ms >= 0) {
    delay = (uint64_t)hint_ms;
  } else {
    shift = e->attempts > 1 ? e->attempts - 1 : 0;
    delay = shift >= 32 || x->resend_min > (x->resend_max >> shift)
                ? x->resend_max
                : x->resend_min << shift;
  }
  if (delay > x->resend_max)
    delay = x->resend_max;
  x->redelivered++;
  unlink_ev(x, e);
  e->state = EV_WAITING;
  e->at = now + delay;
  /* Sorted by time; most delays are alike, so the place is near the end. */
  for (pos = x->waiting.tail; pos != NULL && pos->at > e->at; pos = pos->prev)
    ;
  list_insert_before(&x->waiting, pos != NULL ? pos->next : x->waiting.head, e);
  if (x->waiting.head == e)
    arm_resend(x);
}

static void dl_enqueue(exec_sink *x, ev *e);

/* One failed attempt of e: a fail or retry answer, or a timeout. why is
 * borrowed for the call. */
static void count_attempt(exec_sink *x, ev *e, const char *why, int64_t hint_ms,
                          log_level level) {
  char *copy;
  size_t n = strlen(why);

  if (n > EXEC_ERROR_MAX) {
    /* Cut at a character boundary, so the text stays valid UTF-8. */
    n = EXEC_ERROR_MAX;
    while (n > 0 && ((unsigned char)why[n] & 0xC0) == 0x80)
      n--;
  }
  if ((copy = malloc(n + 1)) != NULL) {
    memcpy(copy, why, n);
    copy[n] = '\0';
    free(e->error);
    e->error = copy;
  }
  if (e->attempts < UINT32_MAX)
    e->attempts++;
  if (x->max_attempts > 0 && e->attempts >= (uint64_t)x->max_attempts) {
    switch (x->on_fail) {
    case SINK_ON_FAIL_RETRY:
      log_warn("event still not handled after max_attempts; sending it "
               "again (on_fail = retry)",
               LS("consumer", x->consumer), LS("sink", "exec"),
               LU("seq", e->seq), LU("attempts", e->attempts), LS("err", why));
      break;
    case SINK_ON_FAIL_SKIP:
      log_error("giving up on an event after max_attempts (on_fail = skip)",
                LS("consumer", x->consumer), LS("sink", "exec"),
                LU("seq", e->seq), LU("attempts", e->attempts), LS("err", why));
      x->failed++;
      settle(x, e, true);
      return;
    case SINK_ON_FAIL_DEAD_LETTER:
      log_warn("event goes to the dead-letter file after max_attempts",
               LS("consumer", x->consumer), LS("sink", "exec"),
               LU("seq", e->seq), LU("attempts", e->attempts), LS("err", why),
               LS("path", dead_letter_path(x->dl)));
      dl_enqueue(x, e);
      return;
    }
  } else if (level == LOG_WARN) {
    log_warn("event not handled; it will be sent again",
             LS("consumer", x->consumer), LS("sink", "exec"), LU("seq", e->seq),
             LU("attempts", e->attempts), LS("err", why));
  } else {
    log_debug("event not handled; it will be sent again",
              LS("consumer", x->consumer), LS("sink", "exec"),
              LU("seq", e->seq), LU("attempts", e->attempts), LS("err", why));
  }
  schedule_resend(x, e, hint_ms);
}

static void on_deadline(uv_timer_t *t) {
  exec_sink *x = t->data;
  uint64_t now = uv_now(x->loop);
  ev *e;

  while ((e = x->sent.head) != NULL && e->at <= now && x->hstate == H_RUNNING) {
    if (x->last_answer_at <= e->sent_at) {
      /* Nothing at all came back since this event went out: the handler
       * is stuck, and sending more to it would not help. */
      log_warn("the handler answered nothing within handler_timeout; "
               "restarting it",
               LS("consumer", x->consumer), LS("sink", "exec"),
               LI("pid", x->pid), LU("seq", e->seq),
               LU("timeout_ms", x->timeout_ms));
      count_attempt(x, e, "no answer within handler_timeout (hung handler)", -1,
                    LOG_DEBUG);
      terminate(x, false);
      return;
    }
    count_attempt(x, e, "no answer within handler_timeout", -1, LOG_WARN);
  }
  arm_deadline(x);
  kick_send(x);
}

static void on_resend(uv_timer_t *t) {
  exec_sink *x = t->data;
  uint64_t now = uv_now(x->loop);
  ev *e;

  while ((e = x->waiting.head) != NULL && e->at <= now) {
    unlink_ev(x, e);
    e->state = EV_QUEUED;
    list_append(&x->queued, e);
  }
  arm_resend(x);
  kick_send(x);
}

/* ---- writing to the handler ------------------------------------------- */

/* Takes note of how much of the chunk in flight the kernel has taken.
 * libuv writes what the handler's stdin accepts at once and the rest as
 * room comes, and write_queue_size counts what is still left; ours is the
 * only write on the stream, so the rest of the chunk is taken. A handler
 * that reads its lines while the tail of their chunk waits for room gets
 * its answers counted at once, not after the tail went too. */
static void note_write_progress(exec_sink *x) {
  size_t done;

  if (!x->writing || !x->in_live)
    return;
  assert(x->in.write_queue_size <= x->chunk.len);
  done = x->chunk.len - x->in.write_queue_size;
  if (done > x->chunk_done)
    x->chunk_done = done;
}

/* Whether e's whole line is in the current handler's stdin: only then may
 * an answer for it count. A handler can answer only for lines it read, so
 * an answer for anything else is a bug of the handler's (it answers ahead)
 * or a leftover of an older handler's, and taking it would move the cursor
 * past an event nobody got. */
static bool line_written(exec_sink *x, ev *e) {
  if (!e->written && e->wid != 0 && e->wid == x->wid) {
    note_write_progress(x);
    e->written = e->wend <= x->chunk_done;
  }
  return e->written;
}

static void on_stdin_written(uv_write_t *req, int status) {
  exec_sink *x = req->data;
  size_t i;
  ev *e;

  x->writing = false;
  if (status == 0) {
    /* The whole chunk was taken, even if the handler is exiting: the
     * answers it left in its stdout still count. */
    x->chunk_done = x->chunk.len;
    for (i = 0; i < x->chunk_seqs.n; i++) {
      e = find_ev(x, x->chunk_seqs.v[i]);
      if (e != NULL && e->wid == x->wid)
        e->written = true;
    }
  }
  /* On an error chunk_done keeps what was seen taken before: libuv does
   * not tell how much of the chunk it wrote, and counting less is safe. */
  if (status == UV_ECANCELED || x->hstate != H_RUNNING)
    return; /* stdin is closing; the restart sends everything again */
  if (status < 0) {
    x->write_errors++;
    log_warn("cannot write to the handler's stdin; restarting it",
             LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid),
             LS("err", uv_strerror(status)));
    terminate(x, false);
    return;
  }
  kick_send(x);
}

/* Copies queued lines into one chunk and writes it. The events count as
 * sent (their deadline runs) from here: a handler that does not read its
 * stdin is as stuck as one that does not answer. */
static void kick_send(exec_sink *x) {
  uint64_t now = uv_now(x->loop);
  bool was_empty = x->sent.head == NULL;
  uv_buf_t b;
  ev *e;
  int rc;

  if (x->closing || x->hstate != H_RUNNING || !x->in_live || x->writing ||
      x->queued.head == NULL)
    return;
  buf_reset(&x->chunk);
  x->chunk_seqs.n = 0;
  x->chunk_done = 0;
  x->wid++;
  while ((e = x->queued.head) != NULL &&
         (x->chunk.len == 0 || x->chunk.len + e->len <= EXEC_CHUNK_MAX)) {
    if (seq_push(&x->chunk_seqs, e->seq) != 0)
      break; /* out of memory: send what fits, the rest later */
    if (buf_append(&x->chunk, e->line, e->len) != 0) {
      x->chunk_seqs.n--;
      break;
    }
    e->wid = x->wid;
    e->wend = x->chunk.len;
    unlink_ev(x, e);
    e->state = EV_SENT;
    e->sent_at = now;
    e->at = now + x->timeout_ms;
    list_append(&x->sent, e);
  }
  if (x->chunk.len == 0)
    return;
  if (was_empty)
    arm_deadline(x);
  b = uv_buf_init(x->chunk.data, (unsigned)x->chunk.len);
  x->wreq.data = x;
  x->writing = true;
  rc = uv_write(&x->wreq, (uv_stream_t *)&x->in, &b, 1, on_stdin_written);
  if (rc != 0) {
    x->writing = false;
    log_warn("cannot write to the handler's stdin; restarting it",
             LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid),
             LS("err", uv_strerror(rc)));
    terminate(x, false);
  }
}

/* Every event not answered and not waiting for a delayed resend goes to
 * the new handler, in seq order. The new handler has none of the lines
 * yet: an answer for an event counts again once its line is written to
 * this one. */
static void requeue_all(exec_sink *x) {
  uint64_t s;
  ev *e;

  assert(!x->writing);
  x->chunk_done = 0;
  for (s = x->lo; s < x->hi; s++) {
    e = x->ring[s & (x->cap - 1)];
    if (e == NULL)
      continue;
    e->written = false;
    if (e->state != EV_QUEUED && e->state != EV_SENT)
      continue;
    if (e->state == EV_SENT)
      x->redelivered++;
    unlink_ev(x, e);
    e->state = EV_QUEUED;
    list_append(&x->queued, e);
  }
  uv_timer_stop(&x->deadline_timer);
}

/* ---- reading answers -------------------------------------------------- */

typedef enum answer_status { A_OK, A_RETRY, A_FAIL } answer_status;

typedef struct answer {
  uint64_t seq;
  answer_status status;
  int64_t delay_ms; /* -1: none given */
  char error[EXEC_ERROR_MAX + 1];
} answer;

/* Parses one answer line. Returns 0, or UV_EINVAL with why in err. */
static int parse_answer(const char *p, size_t n, answer *a, char *err,
                        size_t errlen) {
  json_error_t jerr;
  json_t *j, *v;
  const char *st;
  size_t i;
  int rc = UV_EINVAL;

  while (n > 0 && (p[n - 1] == '\r' || p[n - 1] == ' ' || p[n - 1] == '\t'))
    n--;
  while (n > 0 && (*p == ' ' || *p == '\t'))
    p++, n--;
  memset(a, 0, sizeof *a);
  a->delay_ms = -1;
  if (n == 0) {
    snprintf(err, errlen, "an empty line");
    return UV_EINVAL;
  }
  if (p[0] >= '0' && p[0] <= '9') {
    /* A bare number: that event is handled. */
    for (i = 0; i < n; i++) {
      if (p[i] < '0' || p[i] > '9' ||
          a->seq > (UINT64_MAX - (uint64_t)(p[i] - '0')) / 10) {
        snprintf(err, errlen, "not a sequence number");
        return UV_EINVAL;
      }
      a->seq = a->seq * 10 + (uint64_t)(p[i] - '0');
    }
    a->status = A_OK;
    return 0;
  }
  j = json_loadb(p, n, JSON_REJECT_DUPLICATES, &jerr);
  if (j == NULL) {
    snprintf(err, errlen, "not JSON: %s", jerr.text);
    return UV_EINVAL;
  }
  v = json_object_get(j, "seq");
  if (!json_is_integer(v) || json_integer_value(v) < 0) {
    snprintf(err, errlen, "\"seq\" is not a non-negative integer");
    goto out;
  }
  a->seq = (uint64_t)json_integer_value(v);
  st = json_string_value(json_object_get(j, "status"));
  if (st == NULL) {
    snprintf(err, errlen, "\"status\" is not a string");
    goto out;
  }
  if (strcmp(st, "ok") == 0) {
    a->status = A_OK;
  } else if (strcmp(st, "retry") == 0) {
    a->status = A_RETRY;
  } else if (strcmp(st, "fail") == 0) {
    a->status = A_FAIL;
  } else {
    snprintf(err, errlen, "\"status\" is not ok, retry or fail");
    goto out;
  }
  v = json_object_get(j, "delay_ms");
  if (v != NULL) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
      snprintf(err, errlen, "\"delay_ms\" is not a non-negative integer");
      goto out;
    }
    a->delay_ms = (int64_t)json_integer_value(v);
  }
  st = json_string_value(json_object_get(j, "error"));
  snprintf(a->error, sizeof a->error, "%s",
           st != NULL ? st : "the handler failed the event");
  rc = 0;
out:
  json_decref(j);
  return rc;
}

static void warn_answer(exec_sink *x, const char *msg, const char *line,
                        size_t n, uint64_t seq, const char *why) {
  char excerpt[128];

  if (!rl_take(&x->warn_rl, uv_now(x->loop), EXEC_WARN_BURST,
               EXEC_WARN_WINDOW_MS))
    return;
  if (n >= sizeof excerpt)
    n = sizeof excerpt - 1;
  memcpy(excerpt, line, n);
  excerpt[n] = '\0';
  log_warn(msg, LS("consumer", x->consumer), LS("sink", "exec"), LU("seq", seq),
           LS("err", why), LS("line", excerpt),
           LU("suppressed", rl_suppressed(&x->warn_rl)));
}

static void on_answer_line(exec_sink *x, const char *p, size_t n, bool cut) {
  char why[256];
  answer a;
  ev *e;

  if (x->closing)
    return;
  if (cut) {
    warn_answer(x, "answer line too long; ignored", p, n, 0,
                "longer than 64KiB");
    return;
  }
  if (parse_answer(p, n, &a, why, sizeof why) != 0) {
    warn_answer(x, "malformed answer from the handler; ignored", p, n, 0, why);
    return;
  }
  x->last_answer_at = uv_now(x->loop);
  if (x->state != NULL)
    set_state(x, NULL);
  e = find_ev(x, a.seq);
  if (e == NULL) {
    warn_answer(x, "answer for an unknown or already answered event; ignored",
                p, n, a.seq, "no such event waits for an answer");
    return;
  }
  if (!line_written(x, e)) {
    warn_answer(x,
                "answer for an event not yet written to the handler; "
                "ignored",
                p, n, a.seq, "its line is not in the handler's stdin yet");
    return;
  }
  switch (a.status) {
  case A_OK:
    if (e->state != EV_DEAD) /* that one is delivered by its record */
      deliver(x, e);
    break;
  case A_RETRY:
  case A_FAIL:
    if (e->state != EV_SENT) {
      /* An answer to an older copy of an event already counted. */
      log_debug("stale answer ignored", LS("consumer", x->consumer),
                LS("sink", "exec"), LU("seq", a.seq));
      break;
    }
    if (a.status == A_RETRY)
      count_attempt(x, e, "the handler asked for a retry", a.delay_ms,
                    LOG_DEBUG);
    else
      count_attempt(x, e, a.error, a.delay_ms, LOG_WARN);
    break;
  }
}

/* Logs how many stderr lines the rate limit held back since the last
 * one logged, if any. */
static void log_stderr_dropped(exec_sink *x) {
  uint64_t dropped = rl_suppressed(&x->stderr_rl);

  if (dropped > 0)
    log_warn("handler stderr lines not logged (more than 50 a second)",
             LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid),
             LU("lines", dropped));
}

static void on_stderr_line(exec_sink *x, const char *p, size_t n, bool cut) {
  char line[EXEC_STDERR_LINE_MAX + 1];

  if (n > 0 && p[n - 1] == '\r')
    n--;
  if (!rl_take(&x->stderr_rl, uv_now(x->loop), EXEC_STDERR_LINES_PER_S,
               SECOND_MS))
    return;
  if (n > EXEC_STDERR_LINE_MAX)
    n = EXEC_STDERR_LINE_MAX;
  memcpy(line, p, n);
  line[n] = '\0';
  log_stderr_dropped(x);
  if (cut)
    log_warn("handler stderr", LS("consumer", x->consumer), LS("sink", "exec"),
             LI("pid", x->pid), LS("line", line), LB("cut", true));
  else
    log_warn("handler stderr", LS("consumer", x->consumer), LS("sink", "exec"),
             LI("pid", x->pid), LS("line", line));
}

/* Splits p[0..n) into lines joined with what acc holds from before; a line
 * longer than max is handed over once, cut, and the rest of it dropped. */
static void
feed_lines(exec_sink *x, buf *acc, bool *skip, size_t max, const char *p,
           size_t n, void (*on_line)(exec_sink *, const char *, size_t, bool)) {
  const char *nl;
  size_t seg, room;

  while (n > 0) {
    nl = memchr(p, '\n', n);
    seg = nl != NULL ? (size_t)(nl - p) : n;
    if (!*skip) {
      room = max - acc->len;
      if (seg > room || buf_append(acc, p, seg) != 0) {
        if (seg > room)
          buf_append(acc, p, room);
        on_line(x, acc->data != NULL ? acc->data : "", acc->len, true);
        buf_reset(acc);
        *skip = true;
      }
    }
    if (nl == NULL)
      return;
    if (!*skip)
      on_line(x, acc->data != NULL ? acc->data : "", acc->len, false);
    buf_reset(acc);
    *skip = false;
    p = nl + 1;
    n -= seg + 1;
  }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  exec_sink *x = h->data;

  (void)suggested;
  *b = uv_buf_init(x->rbuf, sizeof x->rbuf);
}

static void handler_check_down(exec_sink *x);

static void close_handler_handle(exec_sink *x, uv_handle_t *h, bool *live);

static void on_stdout_gone(uv_timer_t *t) {
  exec_sink *x = t->data;

  log_warn("the handler closed its stdout but goes on running; restarting "
           "it",
           LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid));
  terminate(x, false);
}

static void on_stdout_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  exec_sink *x = s->data;

  if (n > 0) {
    feed_lines(x, &x->answer, &x->answer_skip, EXEC_ANSWER_LINE_MAX, b->base,
               (size_t)n, on_answer_line);
    return;
  }
  if (n == 0)
    return;
  /* EOF or an error: no more answers can come from this handler. */
  close_handler_handle(x, (uv_handle_t *)&x->out, &x->out_live);
  buf_reset(&x->answer);
  x->answer_skip = false;
  /* Usually the handler is exiting and its exit is about to be seen; if
   * it is not gone after stop_timeout, it is stopped. */
  if (x->hstate == H_RUNNING && !x->closing)
    uv_timer_start(&x->proc_timer, on_stdout_gone, x->stop_ms, 0);
  handler_check_down(x);
}

static void on_stderr_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  exec_sink *x = s->data;

  if (n > 0) {
    feed_lines(x, &x->errline, &x->errline_cut, EXEC_STDERR_LINE_MAX, b->base,
               (size_t)n, on_stderr_line);
    return;
  }
  if (n == 0)
    return;
  if (x->errline.len > 0 && !x->errline_cut)
    on_stderr_line(x, x->errline.data, x->errline.len, false);
  buf_reset(&x->errline);
  x->errline_cut = false;
  close_handler_handle(x, (uv_handle_t *)&x->err, &x->err_live);
  handler_check_down(x);
}

/* ---- the handler's life ----------------------------------------------- */

static void on_proc_timer_closed(uv_handle_t *h) {
  exec_sink *x = h->data;

  x->pending_closes--;
  maybe_finish_close(x);
}

static void on_restart_timer(uv_timer_t *t) {
  spawn_handler(t->data);
}

static void on_healthy(uv_timer_t *t) {
  exec_sink *x = t->data;

  set_state(x, NULL);
}

/* Every handle of the handler is closed: start it again later, or finish
 * closing the sink. */
static void handler_down(exec_sink *x) {
  uint64_t delay;

  x->hstate = H_DOWN;
  x->pid = 0;
  if (x->closing) {
    maybe_finish_close(x);
    return;
  }
  delay = backoff_next_at(&x->restart, uv_now(x->loop));
  set_state(x, "handler_restarting");
  log_info("restarting the handler", LS("consumer", x->consumer),
           LS("sink", "exec"), LU("in_ms", delay),
           LU("attempt", backoff_attempt(&x->restart)));
  uv_timer_start(&x->proc_timer, on_restart_timer, delay, 0);
}

static void on_handler_handle_closed(uv_handle_t *h) {
  exec_sink *x = h->data;

  if (--x->handler_closes == 0 && x->hstate == H_STOPPING && !x->proc_live &&
      !x->in_live && !x->out_live && !x->err_live)
    handler_down(x);
}

static void close_handler_handle(exec_sink *x, uv_handle_t *h, bool *live) {
  if (!*live)
    return;
  /* Closing stdin cancels a write in flight, and with it the count of
   * what the kernel took; answers still draining from stdout are judged
   * by what it shows now. */
  if (h == (uv_handle_t *)&x->in)
    note_write_progress(x);
  /* The rate limit's count would otherwise wait for the next handler's
   * stderr, or never come: say it when this stderr ends. */
  if (h == (uv_handle_t *)&x->err)
    log_stderr_dropped(x);
  *live = false;
  x->handler_closes++;
  uv_close(h, on_handler_handle_closed);
}

/* Once the process has exited and its output has ended (or stop_timeout
 * passed), the process handle and stdin go too. */
static void handler_check_down(exec_sink *x) {
  if (x->hstate != H_STOPPING || !x->exited || x->out_live || x->err_live)
    return;
  uv_timer_stop(&x->proc_timer);
  close_handler_handle(x, (uv_handle_t *)&x->in, &x->in_live);
  close_handler_handle(x, (uv_handle_t *)&x->proc, &x->proc_live);
  if (x->handler_closes == 0)
    handler_down(x);
}

static void kill_group(exec_sink *x, int sig) {
  /* The handler leads its own process group (UV_PROCESS_DETACHED makes a
   * new session). Linux does not reuse a pid while it names a live group,
   * so this cannot reach a stranger. */
  if (x->pid > 0 && kill(-x->pid, sig) != 0 && errno != ESRCH)
    log_warn("cannot signal the handler's process group",
             LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid),
             LS("err", strerror(errno)));
}

/* The process is gone but its stdout or stderr did not end: someone left
 * in its group (or escaped it) still holds them. Stop reading. */
static void on_drain_timeout(uv_timer_t *t) {
  exec_sink *x = t->data;

  close_handler_handle(x, (uv_handle_t *)&x->out, &x->out_live);
  close_handler_handle(x, (uv_handle_t *)&x->err, &x->err_live);
  handler_check_down(x);
}

static void on_kill_timer(uv_timer_t *t) {
  exec_sink *x = t->data;

  if (x->exited)
    return;
  if (x->kill_stage < 2) {
    log_warn("the handler did not exit in time; sending SIGTERM",
             LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid),
             LU("timeout_ms", x->stop_ms));
    kill_group(x, SIGTERM);
    x->kill_stage = 2;
    uv_timer_start(&x->proc_timer, on_kill_timer, x->stop_ms, 0);
  } else {
    log_warn("the handler did not exit after SIGTERM; sending SIGKILL",
             LS("consumer", x->consumer), LS("sink", "exec"), LI("pid", x->pid),
             LU("timeout_ms", x->stop_ms));
    kill_group(x, SIGKILL);
    x->kill_stage = 3;
  }
}

/* Stops a running handler: gently (stdin closed, then the signals after
 * stop_timeout each) when the sink closes, at once with SIGTERM when it is
 * hung or broken. */
static void terminate(exec_sink *x, bool gently) {
  if (x->hstate != H_RUNNING)
    return;
  x->hstate = H_STOPPING;
  uv_timer_stop(&x->deadline_timer);
  close_handler_handle(x, (uv_handle_t *)&x->in, &x->in_live);
  if (gently) {
    x->kill_stage = 1;
  } else {
    kill_group(x, SIGTERM);
    x->kill_stage = 2;
  }
  uv_timer_start(&x->proc_timer, on_kill_timer, x->stop_ms, 0);
}

static void on_handler_exit(uv_process_t *p, int64_t status, int term_signal) {
  exec_sink *x = p->data;

  x->exited = true;
  if (x->closing && status == 0 && term_signal == 0)
    log_info("handler exited", LS("consumer", x->consumer), LS("sink", "exec"),
             LI("pid", x->pid));
  else if (term_signal != 0)
    log_warn("handler killed by a signal", LS("consumer", x->consumer),
             LS("sink", "exec"), LI("pid", x->pid),
             LS("signal", strsignal(term_signal)));
  else
    log_warn("handler exited", LS("consumer", x->consumer), LS("sink", "exec"),
             LI("pid", x->pid), LI("status", status));
  if (x->hstate == H_RUNNING) {
    x->hstate = H_STOPPING;
    uv_timer_stop(&x->deadline_timer);
    close_handler_handle(x, (uv_handle_t *)&x->in, &x->in_live);
  }
  /* What the handler left behind in its group goes with it, so nothing
   * answers for a handler that is gone. */
  kill_group(x, SIGKILL);
  /* Its last answers may still be in the pipe: read to EOF, bounded. */
  uv_timer_start(&x->proc_timer, on_drain_timeout, x->stop_ms, 0);
  handler_check_down(x);
}

static void spawn_handler(exec_sink *x) {
  uv_process_options_t o;
  uv_stdio_container_t stdio[3];
  int rc;

  assert(x->hstate == H_DOWN && !x->writing);
  if (x->closing)
    return;
  uv_pipe_init(x->loop, &x->in, 0);
  uv_pipe_init(x->loop, &x->out, 0);
  uv_pipe_init(x->loop, &x->err, 0);
  x->in.data = x->out.data = x->err.data = x->proc.data = x;
  x->in_live = x->out_live = x->err_live = x->proc_live = true;
  x->exited = false;
  x->kill_stage = 0;
  stdio[0].flags = UV_CREATE_PIPE | UV_READABLE_PIPE;
  stdio[0].data.stream = (uv_stream_t *)&x->in;
  stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[1].data.stream = (uv_stream_t *)&x->out;
  stdio[2].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
  stdio[2].data.stream = (uv_stream_t *)&x->err;
  memset(&o, 0, sizeof o);
  o.file = x->argv[0];
  o.args = x->argv;
  o.exit_cb = on_handler_exit;
  o.flags = UV_PROCESS_DETACHED;
  o.stdio_count = 3;
  o.stdio = stdio;
  x->hstate = H_STOPPING;
  rc = uv_spawn(x->loop, &x->proc, &o);
  if (rc != 0) {
    log_error("cannot start the handler", LS("consumer", x->consumer),
              LS("sink", "exec"), LS("program", x->argv[0]),
              LS("err", uv_strerror(rc)));
    /* As if it had exited at once: the handles close, then a restart. */
    x->exited = true;
    close_handler_handle(x, (uv_handle_t *)&x->out, &x->out_live);
    close_handler_handle(x, (uv_handle_t *)&x->err, &x->err_live);
    handler_check_down(x);
    return;
  }
  x->hstate = H_RUNNING;
  x->pid = x->proc.pid;
  x->last_answer_at = uv_now(x->loop);
  backoff_connected(&x->restart, uv_now(x->loop));
  log_info("handler started", LS("consumer", x->consumer), LS("sink", "exec"),
           LS("program", x->argv[0]), LI("pid", x->pid));
  uv_read_start((uv_stream_t *)&x->out, on_alloc, on_stdout_read);
  uv_read_start((uv_stream_t *)&x->err, on_alloc, on_stderr_read);
  /* The state clears on the first answer, or when the handler has stayed
   * up as long as the backoff needs to call it healthy. */
  if (x->state != NULL)
    uv_timer_start(&x->proc_timer, on_healthy, x->restart.healthy_ms, 0);
  requeue_all(x);
  kick_send(x);
}

/* ---- dead letters ----------------------------------------------------- */

/* {"consumer":..,"seq":N,"attempts":A,"error":"..","event":<the line>} */
static void dl_enqueue(exec_sink *x, ev *e) {
  int rc;

  unlink_ev(x, e);
  e->state = EV_DEAD;
  rc = dead_letter_append(x->dl, e->seq, e->attempts,
                          e->error != NULL ? e->error : "", e->line, e->len, 0);
  if (rc != 0) {
    /* Out of memory: the event is not lost, it waits to be tried again. */
    log_error("cannot queue a dead letter", LS("consumer", x->consumer),
              LS("sink", "exec"), LU("seq", e->seq),
              LS("err", uv_strerror(rc)));
    schedule_resend(x, e, -1); /* from EV_DEAD, on no list */
  }
}

/* The record of seq is durable: the event is given up on. */
static void on_dead_letter(dead_letter *d, uint64_t first, uint64_t last,
                           uint64_t tag, void *data) {
  exec_sink *x = data;
  uint64_t seq;
  ev *e;

  (void)d, (void)tag;
  for (seq = first; seq <= last; seq++) {
    e = find_ev(x, seq);
    if (e != NULL && e->state == EV_DEAD) {
      x->failed++;
      x->dead_lettered++;
      settle(x, e, true);
    }
  }
}

static void on_dead_letter_closed(void *data) {
  exec_sink *x = data;

  x->dl = NULL;
  x->pending_closes--;
  maybe_finish_close(x);
}

/* ---- the sink --------------------------------------------------------- */

static void free_sink(exec_sink *x) {
  size_t i;

  if (x->ring != NULL)
    for (i = 0; i < x->cap; i++)
      if (x->ring[i] != NULL)
        free_ev(x->ring[i]);
  free(x->ring);
  free_argv(x->argv);
  free(x->consumer);
  buf_free(&x->chunk);
  free(x->chunk_seqs.v);
  buf_free(&x->answer);
  buf_free(&x->errline);
  free(x);
}

static void maybe_finish_close(exec_sink *x) {
  sink_close_cb cb;
  void *data;

  if (!x->closing || x->hstate != H_DOWN)
    return;
  if (x->proc_timer_live) {
    x->proc_timer_live = false;
    x->pending_closes++;
    uv_close((uv_handle_t *)&x->proc_timer, on_proc_timer_closed);
    return;
  }
  if (x->pending_closes > 0)
    return;
  cb = x->close_cb;
  data = x->close_data;
  free_sink(x);
  cb(data);
}

static void exec_write(sink *s, const sink_batch *b, sink_write_cb cb,
                       void *data) {
  exec_sink *x = (exec_sink *)s;
  const char *p = b->data, *end = b->data + b->len, *nl;
  uint64_t seq = b->first_seq;
  size_t len;

  assert(!x->closing);
  while (p < end) {
    nl = memchr(p, '\n', (size_t)(end - p));
    len = nl != NULL ? (size_t)(nl - p) + 1 : (size_t)(end - p);
    if (add_ev(x, seq, p, len) != 0) {
      /* The lines kept so far come again with the retry and replace
       * themselves. */
      kick_send(x);
      cb(s, SINK_RETRY, "out of memory", data);
      return;
    }
    seq++;
    p += len;
  }
  assert(b->len == 0 || seq - 1 == b->last_seq);
  kick_send(x);
  cb(s, SINK_ACCEPTED, NULL, data);
}

/* Dead letters are fdatasync'd before their event is reported delivered,
 * and a handled event is the handler's to keep: nothing is left to do. */
static void exec_sync(sink *s, sink_sync_cb cb, void *data) {
  cb(s, 0, NULL, data);
}

static void exec_reopen(sink *s) {
  exec_sink *x = (exec_sink *)s;

  if (x->dl != NULL && !x->closing)
    dead_letter_reopen(x->dl);
}

static void exec_stats(const sink *s, sink_stats *out) {
  const exec_sink *x = (const exec_sink *)s;

  out->write_errors += x->write_errors;
  if (x->dl != NULL)
    out->write_errors += dead_letter_write_errors(x->dl);
  out->redelivered += x->redelivered;
  out->failed += x->failed;
  out->dead_lettered += x->dead_lettered;
}

static void on_timer_closed(uv_handle_t *h) {
  exec_sink *x = h->data;

  x->pending_closes--;
  maybe_finish_close(x);
}

static void exec_close(sink *s, sink_close_cb cb, void *data) {
  exec_sink *x = (exec_sink *)s;

  assert(!x->closing);
  x->closing = true;
  x->close_cb = cb;
  x->close_data = data;
  x->pending_closes += 2;
  uv_close((uv_handle_t *)&x->deadline_timer, on_timer_closed);
  uv_close((uv_handle_t *)&x->resend_timer, on_timer_closed);
  /* A dead-letter write under way finishes first; records still queued
   * are dropped with their events, which come again after a restart. */
  if (x->dl != NULL) {
    x->pending_closes++;
    dead_letter_close(x->dl, on_dead_letter_closed, x);
  }
  if (x->hstate == H_RUNNING)
    terminate(x, true);
  else if (x->hstate == H_DOWN)
    uv_timer_stop(&x->proc_timer);
  maybe_finish_close(x);
}

static int exec_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const sink_policy *policy, const char *consumer_name,
                     sink **out, char *err, size_t errlen);

const sink_type sink_exec = {
  .name = "exec",
  .description =
      "a handler process reads the NDJSON lines on its stdin and answers "
      "each event on its stdout, in any order: `{\"seq\":N,\"status\":"
      "\"ok\"}` or just `N`, `{\"seq\":N,\"status\":\"retry\","
      "\"delay_ms\":D}`, or `{\"seq\":N,\"status\":\"fail\",\"error\":"
      "\"...\"}`. It must exit when its stdin ends; its stderr goes to the "
      "log. ARGV is split into words as a shell would, without running one "
      "(quotes and backslashes work; `exec:sh -c '...'` runs a shell). In "
      "the INI file, a `;` after a blank starts a comment (write `a; b`) and "
      "`${X}` is an environment reference (write `$${X}` for the shell's)",
  .options = exec_options,
  .conf_size = sizeof(exec_conf),
  .arg = "ARGV",
  .per_event_policy = true,
  .check = exec_check,
  .open = exec_open,
  .write = exec_write,
  .sync = exec_sync,
  .reopen = exec_reopen,
  .close = exec_close,
  .stats = exec_stats,
};

static int exec_open(uv_loop_t *loop, const char *arg, const void *conf,
                     const sink_policy *policy, const char *consumer_name,
                     sink **out, char *err, size_t errlen) {
  const exec_conf *c = conf;
  exec_sink *x;
  int rc;

  if ((x = calloc(1, sizeof *x)) == NULL) {
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  if ((rc = split_argv(arg != NULL ? arg : "", &x->argv, err, errlen)) != 0 ||
      (rc = find_program(x->argv[0], err, errlen)) != 0)
    goto fail;
  if ((x->consumer = strdup(consumer_name)) == NULL) {
    snprintf(err, errlen, "out of memory");
    rc = UV_ENOMEM;
    goto fail;
  }
  if (policy != NULL) {
    x->max_attempts = policy->max_attempts;
    x->on_fail = policy->on_fail;
  }
  /* Opened now, at start-up, so a bad path is a clear error before any
   * event needs it. */
  if (x->on_fail == SINK_ON_FAIL_DEAD_LETTER &&
      (rc = dead_letter_open(loop, policy->dead_letter, consumer_name, "exec",
                             c->restart_min, c->restart_max, on_dead_letter, x,
                             &x->dl, err, errlen)) != 0)
    goto fail;
  x->base.type = &sink_exec;
  x->loop = loop;
  x->timeout_ms = c->handler_timeout;
  x->resend_min = c->resend_min;
  x->resend_max = c->resend_max;
  x->stop_ms = c->stop_timeout;
  buf_init(&x->chunk, 0);
  buf_init(&x->answer, EXEC_ANSWER_LINE_MAX);
  buf_init(&x->errline, EXEC_STDERR_LINE_MAX);
  backoff_init(&x->restart, c->restart_min, c->restart_max, 0, 0);
  uv_timer_init(loop, &x->deadline_timer);
  uv_timer_init(loop, &x->resend_timer);
  uv_timer_init(loop, &x->proc_timer);
  x->deadline_timer.data = x->resend_timer.data = x;
  x->proc_timer.data = x;
  x->proc_timer_live = true;
  x->hstate = H_DOWN;
  /* The first start comes from the loop, where a failure can be reported
   * as a state (the consumer sets report after open returns). */
  uv_timer_start(&x->proc_timer, on_restart_timer, 0, 0);
  *out = &x->base;
  return 0;

fail:
  free_sink(x);
  return rc;
}
