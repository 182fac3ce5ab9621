/* The daemon's life on one loop:
 *
 *   start     open the store, read each cursor, open each sink, start each
 *             source after its committed cursor
 *   run       deliver; the flusher commits cursors; a status line now and
 *             then when something moved; SIGHUP reopens files
 *   drain     SIGTERM/SIGINT: sources stop, what is in flight is delivered
 *             (up to shutdown_timeout)
 *   flush     one last group commit of what is delivered
 *   close     every handle closed, the store closed, exit
 *
 * A second signal while draining gives up on what is not yet written and
 * goes straight to the last commit.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <sys/stat.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "daemon/api.h"
#include "daemon/consumer.h"
#include "daemon/flusher.h"
#include "daemon/log.h"
#include "daemon/upstream.h"
#include "protocol/buf.h"
#include "store/store.h"

typedef enum phase { STARTING, RUNNING, DRAINING, FLUSHING, CLOSING } phase;

typedef struct daemon_ctx {
  uv_loop_t loop;
  const config *cfg;
  store *st;
  consumer **consumers;
  size_t n;
  size_t created;
  flusher *fl;
  api *api;
  upstream **upstreams; /* per config upstream; NULL when none reads it */
  size_t open_upstreams;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t shutdown_timer, status_timer;
  uv_timer_t drain_timer; /* says what a drain still waits for */
  phase phase;
  int exit_code;
  size_t open_consumers;
  uint64_t *status_seq; /* delivered_seq at the last status line */
  consumer_state *status_state;
  uint64_t status_at;
} daemon_ctx;

static void begin_shutdown(daemon_ctx *d, const char *why);

static bool terminal(consumer_state s) {
  return s == CONSUMER_DONE || s == CONSUMER_FAILED;
}

static void on_closed_handle(uv_handle_t *h) {
  (void)h;
}

static void on_upstream_closed(void *data) {
  daemon_ctx *d = data;

  d->open_upstreams--;
}

/* Upstreams close after every consumer: a source's last request must have
 * ended before its upstream's client lets go of the connections. */
static void close_upstreams(daemon_ctx *d) {
  size_t i;

  for (i = 0; i < d->cfg->n_upstreams; i++) {
    if (d->upstreams[i] == NULL)
      continue;
    upstream_close(d->upstreams[i], on_upstream_closed, d);
    d->upstreams[i] = NULL;
  }
}

static void on_consumer_closed(consumer *c, void *data) {
  daemon_ctx *d = data;

  (void)c;
  if (--d->open_consumers == 0 && d->phase == CLOSING)
    close_upstreams(d);
}

static void on_flusher_closed(void *data) {
  daemon_ctx *d = data;

  d->fl = NULL;
}

static void on_api_closed(void *data) {
  daemon_ctx *d = data;

  d->api = NULL;
}

static void close_all(daemon_ctx *d) {
  size_t i;

  d->phase = CLOSING;
  if (d->api != NULL)
    api_close(d->api, on_api_closed, d);
  uv_close((uv_handle_t *)&d->sigterm, on_closed_handle);
  uv_close((uv_handle_t *)&d->sigint, on_closed_handle);
  uv_close((uv_handle_t *)&d->sighup, on_closed_handle);
  uv_close((uv_handle_t *)&d->shutdown_timer, on_closed_handle);
  uv_close((uv_handle_t *)&d->status_timer, on_closed_handle);
  uv_close((uv_handle_t *)&d->drain_timer, on_closed_handle);
  for (i = 0; i < d->created; i++)
    consumer_close(d->consumers[i]);
  if (d->open_consumers == 0)
    close_upstreams(d);
  if (d->fl != NULL)
    flusher_close(d->fl, on_flusher_closed, d);
}

static void on_final_flush(flusher *f, int status, void *data) {
  daemon_ctx *d = data;
  consumer_stats st;
  size_t i;

  (void)f;
  if (status != 0) {
    log_error("last cursor commit failed; events delivered since the last "
              "good commit will be delivered again after a restart",
              LS("err", status < -30000 ? store_strerror(status)
                                        : uv_strerror(status)));
    d->exit_code = TETHER_EXIT_RUNTIME;
  }
  for (i = 0; i < d->created; i++) {
    consumer_get_stats(d->consumers[i], &st);
    log_info("consumer stopped", LS("consumer", consumer_name(d->consumers[i])),
             LU("delivered", st.delivered), LU("cursor", st.committed_seq));
  }
  close_all(d);
}

static void begin_flush(daemon_ctx *d) {
  if (d->phase == FLUSHING || d->phase == CLOSING)
    return;
  d->phase = FLUSHING;
  uv_timer_stop(&d->shutdown_timer);
  uv_timer_stop(&d->drain_timer);
  flusher_flush(d->fl, on_final_flush, d);
}

static bool all_drained(const daemon_ctx *d) {
  size_t i;

  for (i = 0; i < d->created; i++)
    if (!consumer_drained(d->consumers[i]))
      return false;
  return true;
}

/* With every consumer done or failed, there is nothing left to run: exit
 * (1 when one failed), or with nothing failed, when exit_when_done says so. */
static void check_finished(daemon_ctx *d) {
  bool failed = false;
  size_t i;

  if (d->phase != RUNNING)
    return;
  for (i = 0; i < d->created; i++) {
    consumer_state s = consumer_get_state(d->consumers[i]);

    if (!terminal(s))
      return;
    failed |= s == CONSUMER_FAILED;
  }
  if (failed) {
    d->exit_code = TETHER_EXIT_RUNTIME;
    begin_shutdown(d, "every consumer has stopped, at least one failed");
  } else if (d->cfg->daemon.exit_when_done && all_drained(d)) {
    begin_shutdown(d, "every source is done (exit_when_done)");
  }
}

static void on_state(consumer *c, consumer_state s, void *data) {
  daemon_ctx *d = data;

  (void)c;
  if (terminal(s))
    check_finished(d);
}

static void on_delivered(consumer *c, void *data) {
  daemon_ctx *d = data;

  (void)c;
  flusher_poke(d->fl);
}

static void on_commit_wanted(consumer *c, void *data) {
  daemon_ctx *d = data;

  (void)c;
  if (d->fl != NULL)
    flusher_soon(d->fl);
}

static void on_drained(consumer *c, void *data) {
  daemon_ctx *d = data;

  (void)c;
  if (d->phase == DRAINING && all_drained(d))
    begin_flush(d);
  else if (d->phase == RUNNING)
    check_finished(d);
}

/* Every DRAIN_LOG_MS of a drain, a line per consumer it still waits for,
 * and on what: so a drain that takes its whole shutdown_timeout says why
 * (a fifo with no reader, a socket consumer with no subscriber, a sink
 * retrying a full disk). */
#define DRAIN_LOG_MS 2000

static void on_drain_log(uv_timer_t *t) {
  daemon_ctx *d = t->data;
  consumer_stats st;
  char sink[320];
  size_t i;

  for (i = 0; i < d->created; i++) {
    consumer *c = d->consumers[i];

    if (consumer_drained(c))
      continue;
    consumer_get_stats(c, &st);
    log_info("draining: still waiting for a consumer",
             LS("consumer", consumer_name(c)), LU("in_flight", st.in_flight),
             LS("sink", consumer_sink_status(c, sink, sizeof sink)),
             LS("last_error", consumer_error_now(c)));
  }
}

static void on_shutdown_timeout(uv_timer_t *t) {
  daemon_ctx *d = t->data;
  size_t i;

  log_warn("shutdown timeout: giving up on events not yet delivered; they "
           "come again after a restart",
           LU("timeout_ms", d->cfg->daemon.shutdown_timeout));
  for (i = 0; i < d->created; i++)
    consumer_abandon(d->consumers[i]);
  begin_flush(d);
}

static void begin_shutdown(daemon_ctx *d, const char *why) {
  size_t i;

  if (d->phase != RUNNING)
    return;
  d->phase = DRAINING;
  log_info("shutting down", LS("reason", why),
           LU("timeout_ms", d->cfg->daemon.shutdown_timeout));
  uv_timer_stop(&d->status_timer);
  for (i = 0; i < d->created; i++)
    consumer_stop_intake(d->consumers[i]);
  if (all_drained(d)) {
    begin_flush(d);
    return;
  }
  uv_timer_start(&d->shutdown_timer, on_shutdown_timeout,
                 d->cfg->daemon.shutdown_timeout, 0);
  uv_timer_start(&d->drain_timer, on_drain_log, DRAIN_LOG_MS, DRAIN_LOG_MS);
}

static void on_signal(uv_signal_t *h, int signum) {
  daemon_ctx *d = h->data;
  size_t i;

  if (signum == SIGHUP) {
    int err = log_reopen();

    if (err != 0)
      log_error("reopening the log file failed", LS("err", strerror(-err)));
    for (i = 0; i < d->created; i++)
      consumer_reopen(d->consumers[i]);
    return;
  }
  if (d->phase == RUNNING) {
    begin_shutdown(d, signum == SIGTERM ? "SIGTERM" : "SIGINT");
  } else if (d->phase == DRAINING) {
    log_warn("second signal: stopping now; events not yet delivered come "
             "again after a restart");
    for (i = 0; i < d->created; i++)
      consumer_abandon(d->consumers[i]);
    begin_flush(d);
  }
}

/* One line per consumer whose cursor or state moved since the last line:
 * informative while events flow, silent when idle. */
static void on_status(uv_timer_t *t) {
  daemon_ctx *d = t->data;
  uint64_t now = uv_now(&d->loop), secs;
  consumer_stats st;
  consumer_state s;
  size_t i;

  secs = now > d->status_at ? now - d->status_at : 1;
  for (i = 0; i < d->created; i++) {
    consumer_get_stats(d->consumers[i], &st);
    s = consumer_get_state(d->consumers[i]);
    if (st.delivered_seq == d->status_seq[i] && s == d->status_state[i])
      continue;
    if (st.last_error[0] != '\0')
      log_info("status", LS("consumer", consumer_name(d->consumers[i])),
               LS("state", consumer_state_names[s]),
               LU("cursor", st.delivered_seq),
               LU("committed", st.committed_seq), LU("attempt", st.attempt),
               LS("last_error", st.last_error));
    else
      log_info(
          "status", LS("consumer", consumer_name(d->consumers[i])),
          LS("state", consumer_state_names[s]), LU("cursor", st.delivered_seq),
          LU("committed", st.committed_seq), LU("in_flight", st.in_flight),
          LD("events_per_s", (double)(st.delivered_seq - d->status_seq[i]) *
                                 1000.0 / (double)secs));
    d->status_seq[i] = st.delivered_seq;
    d->status_state[i] = s;
  }
  d->status_at = now;
}

/* One runtime per upstream that some consumer reads. */
static int open_upstreams(daemon_ctx *d) {
  char err[512];
  size_t i, j;
  int rc;

  for (i = 0; i < d->cfg->n_upstreams; i++) {
    const config_upstream *u = &d->cfg->upstreams[i];
    bool used = false;

    for (j = 0; j < d->n; j++)
      used |= d->cfg->consumers[j].upstream == u;
    if (!used)
      continue;
    rc = upstream_open(&d->loop, u, &d->upstreams[i], err, sizeof err);
    if (rc != 0) {
      log_error("cannot set up the upstream", LS("upstream", u->name),
                LS("err", err));
      return rc;
    }
    d->open_upstreams++;
  }
  return 0;
}

static upstream *upstream_of(daemon_ctx *d, const config_consumer *cc) {
  size_t i;

  for (i = 0; i < d->cfg->n_upstreams; i++)
    if (cc->upstream == &d->cfg->upstreams[i])
      return d->upstreams[i];
  return NULL;
}

static const char *phase_name(void *data) {
  daemon_ctx *d = data;

  switch (d->phase) {
  case STARTING:
    return "starting";
  case RUNNING:
    return "running";
  default:
    return "draining";
  }
}

/* The socket's directory, like the state file's, is made when missing. */
static int make_parent(const char *path) {
  char dir[PATH_MAX];
  char *p;

  if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
    return -ENAMETOOLONG;
  if ((p = strrchr(dir, '/')) == NULL || p == dir)
    return 0;
  *p = '\0';
  for (p = dir + 1; *p != '\0'; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
      return -errno;
    *p = '/';
  }
  if (mkdir(dir, 0700) != 0 && errno != EEXIST)
    return -errno;
  return 0;
}

static int start_api(daemon_ctx *d) {
  api_env env;
  char err[512];
  int rc;

  if (d->cfg->daemon.socket[0] == '\0' && d->cfg->daemon.http_listen[0] == '\0')
    return 0;
  if (d->cfg->daemon.socket[0] != '\0' &&
      (rc = make_parent(d->cfg->daemon.socket)) != 0) {
    log_error("cannot make the socket's directory",
              LS("socket", d->cfg->daemon.socket), LS("err", strerror(-rc)));
    return rc;
  }
  memset(&env, 0, sizeof env);
  env.cfg = d->cfg;
  env.consumers = d->consumers;
  env.n = d->created;
  env.st = d->st;
  env.fl = d->fl;
  env.phase = phase_name;
  env.data = d;
  rc = api_start(&d->loop, &env, &d->api, err, sizeof err);
  if (rc != 0)
    log_error("cannot start the local API", LS("socket", d->cfg->daemon.socket),
              LS("err", err));
  return rc;
}

/* A consumer with no cursor starts over. On a first start that is the
 * plan; in a state file that existed (emptied, its WAL lost before a
 * checkpoint, its rows gone) it may be state lost without a word, so it is
 * a warning that says where the consumer starts. A consumer added to the
 * configuration since the last run says so too: it is worth a line. */
static void no_cursor(daemon_ctx *d, const config_consumer *cc) {
  const char *state = store_path(d->st);

  if (store_created(d->st))
    log_info("no cursor yet: the consumer starts at seq 1, where its source "
             "starts without one",
             LS("consumer", cc->name), LS("source", cc->source->name),
             LS("state", state));
  else
    log_warn("no cursor for the consumer in the state file: it starts over "
             "at seq 1, where its source starts without one",
             LS("consumer", cc->name), LS("source", cc->source->name),
             LS("state", state));
}

/* The cursor of cc, under its key (consumer, source type). A cursor an
 * earlier version kept under a key with the path or collection in it is
 * moved to the new key first, so an upgrade resumes where it was. */
static int read_cursor(daemon_ctx *d, const config_consumer *cc,
                       store_cursor *cur, char *err, size_t errlen) {
  const char *legacy = cc->source->stream_name != NULL
                           ? cc->source->stream_name(cc->source_conf)
                           : NULL;
  store_key key = { cc->name, cc->source->name, "" }, from;
  int rc = store_get(d->st, &key, cur, err, errlen);

  if (rc != STORE_ENOTFOUND || legacy == NULL ||
      strcmp(legacy, cc->source->name) == 0)
    return rc;
  from = key;
  from.stream_name = legacy;
  rc = store_rekey_cursor(d->st, &from, &key, err, errlen);
  if (rc == STORE_ENOTFOUND)
    return rc;
  if (rc != 0)
    return rc;
  log_info("cursor moved to the key this version keeps it under",
           LS("consumer", cc->name), LS("from", legacy),
           LS("to", cc->source->name));
  return store_get(d->st, &key, cur, err, errlen);
}

/* Checks that the stored cursor belongs to the stream the configuration
 * now reads (its identity), and applies on_stream_change when it does not.
 * A cursor with no identity yet (kept by an earlier version) is taken as
 * the configured stream's. r may be reset to the start; *lease is the
 * seq lease the consumer goes on from. Returns 0, or TETHER_EXIT_USAGE when
 * the consumer must not start. */
static int check_stream(daemon_ctx *d, const config_consumer *cc,
                        const char *identity, const store_cursor *cur,
                        source_resume *r, uint64_t *lease) {
  store_consumer sc;
  char err[512];
  int rc;

  memset(&sc, 0, sizeof sc);
  rc = store_get_consumer(d->st, cc->name, &sc, err, sizeof err);
  if (rc != 0 && rc != STORE_ENOTFOUND) {
    log_error("cannot read the consumer's state", LS("consumer", cc->name),
              LS("err", err));
    return TETHER_EXIT_RUNTIME;
  }
  *lease = rc == 0 && sc.high_seq > 0 ? (uint64_t)sc.high_seq : 0;
  if (*lease < r->seq)
    *lease = r->seq;
  if (rc != 0 || cur == NULL || sc.identity[0] == '\0' ||
      strcmp(sc.identity, identity) == 0) {
    store_consumer_free(&sc);
    return 0;
  }
  switch (cc->common.on_stream_change) {
  case STREAM_CHANGE_KEEP:
    log_warn("the cursor was taken from another stream; keeping it "
             "(on_stream_change = keep)",
             LS("consumer", cc->name), LS("was", sc.identity),
             LS("now", identity), LU("cursor", r->seq));
    break;
  case STREAM_CHANGE_RESTART: {
    store_reset rs;
    char reason[1024];
    store_key key = { cc->name, cc->source->name, "" };

    snprintf(reason, sizeof reason,
             "on_stream_change = restart: the stream changed from %s to %s",
             sc.identity, identity);
    memset(&rs, 0, sizeof rs);
    rs.key = key;
    /* seq never goes backward: the new stream's events come after every
     * seq the old one used. */
    rs.last_sequence = (int64_t)*lease;
    rs.position = "";
    rs.reason = reason;
    if (store_reset_cursor(d->st, &rs, NULL, err, sizeof err) != 0) {
      log_error("cannot reset the cursor", LS("consumer", cc->name),
                LS("err", err));
      store_consumer_free(&sc);
      return TETHER_EXIT_RUNTIME;
    }
    log_warn("the cursor was taken from another stream; starting over "
             "(on_stream_change = restart)",
             LS("consumer", cc->name), LS("was", sc.identity),
             LS("now", identity), LU("seq_from", *lease + 1));
    r->seq = *lease;
    r->position = "";
    break;
  }
  default:
    log_error("the cursor was taken from another stream than the "
              "configuration now reads; the consumer does not start. If it "
              "is the same stream (a renamed host, a moved path), set "
              "on_stream_change = keep; to read the new stream from its "
              "start, set on_stream_change = restart",
              LS("consumer", cc->name), LS("was", sc.identity),
              LS("now", identity), LU("cursor", r->seq));
    store_consumer_free(&sc);
    return TETHER_EXIT_USAGE;
  }
  store_consumer_free(&sc);
  return 0;
}

/* Reads each consumer's committed cursor and creates it after that point. */
static int create_consumers(daemon_ctx *d) {
  static const consumer_hooks hooks_template = {
    .on_state = on_state,
    .on_delivered = on_delivered,
    .on_drained = on_drained,
    .on_closed = on_consumer_closed,
    .on_commit_wanted = on_commit_wanted,
  };
  consumer_hooks hooks = hooks_template;
  char err[512];
  size_t i;
  int rc;

  hooks.data = d;
  for (i = 0; i < d->n; i++) {
    const config_consumer *cc = &d->cfg->consumers[i];
    upstream *up = upstream_of(d, cc);
    store_cursor cur;
    source_resume r;
    uint64_t lease = 0;
    buf identity;

    memset(&cur, 0, sizeof cur);
    memset(&r, 0, sizeof r);
    r.position = "";
    buf_init(&identity, 0);
    if (cc->source->identity(cc->source_conf,
                             up != NULL ? upstream_http_conf(up)->url : "",
                             &identity) != 0) {
      log_error("out of memory", LS("consumer", cc->name));
      return TETHER_EXIT_RUNTIME;
    }
    rc = read_cursor(d, cc, &cur, err, sizeof err);
    if (rc == 0) {
      r.seq = (uint64_t)cur.last_sequence;
      r.position = cur.position;
    } else if (rc == STORE_ENOTFOUND) {
      no_cursor(d, cc);
    } else {
      log_error("cannot read the cursor", LS("consumer", cc->name),
                LS("err", err));
      buf_free(&identity);
      return TETHER_EXIT_RUNTIME;
    }
    rc = check_stream(d, cc, identity.data, rc == 0 ? &cur : NULL, &r, &lease);
    if (rc != 0) {
      store_cursor_free(&cur);
      buf_free(&identity);
      return rc;
    }
    rc = consumer_create(&d->loop, cc, &r, &hooks, &d->consumers[i], err,
                         sizeof err);
    if (rc == 0) {
      bool paused = false;

      consumer_set_upstream(d->consumers[i], up);
      consumer_set_identity(d->consumers[i], identity.data);
      consumer_set_seq_lease(d->consumers[i], lease);
      /* An operator's pause outlives a restart. */
      if (store_get_paused(d->st, cc->name, &paused, err, sizeof err) == 0 &&
          paused) {
        consumer_pause(d->consumers[i]);
        log_info("consumer stays paused", LS("consumer", cc->name));
      }
    }
    if (rc == 0)
      log_info("consumer ready", LS("consumer", cc->name),
               LS("source", cc->source->name), LS("sink", cc->common.sink),
               LU("resume_after", r.seq));
    store_cursor_free(&cur);
    buf_free(&identity);
    if (rc != 0) {
      log_error("cannot start the consumer", LS("consumer", cc->name),
                LS("sink", cc->common.sink), LS("err", err));
      return TETHER_EXIT_RUNTIME;
    }
    d->created++;
    d->open_consumers++;
    d->status_seq[i] = r.seq;
  }
  return 0;
}

int daemon_run(const config *cfg) {
  daemon_ctx d;
  char err[512];
  size_t i;
  int rc, start_rc;

  memset(&d, 0, sizeof d);
  d.cfg = cfg;
  d.n = cfg->n_consumers;
  d.exit_code = TETHER_EXIT_OK;
  d.phase = STARTING;
  /* A closed reader must be an EPIPE the sink reports, not a silent death;
   * a file over RLIMIT_FSIZE must be an EFBIG, not a core dump. */
  signal(SIGPIPE, SIG_IGN);
  signal(SIGXFSZ, SIG_IGN);

  rc = store_open(cfg->daemon.state, &d.st, err, sizeof err);
  if (rc != 0) {
    log_error("cannot open the state file", LS("path", cfg->daemon.state),
              LS("err", err));
    return TETHER_EXIT_RUNTIME;
  }
  d.consumers = calloc(d.n, sizeof *d.consumers);
  d.status_seq = calloc(d.n, sizeof *d.status_seq);
  d.status_state = calloc(d.n, sizeof *d.status_state);
  d.upstreams = calloc(cfg->n_upstreams + 1, sizeof *d.upstreams);
  if (d.consumers == NULL || d.status_seq == NULL || d.status_state == NULL ||
      d.upstreams == NULL || uv_loop_init(&d.loop) != 0) {
    log_error("out of memory");
    free(d.upstreams);
    free(d.consumers);
    free(d.status_seq);
    free(d.status_state);
    store_close(d.st);
    return TETHER_EXIT_RUNTIME;
  }

  rc = open_upstreams(&d);
  if (rc == 0)
    rc = create_consumers(&d);
  start_rc = rc;
  if (rc == 0)
    rc = flusher_create(&d.loop, d.st, cfg->daemon.checkpoint_interval,
                        d.consumers, d.created, &d.fl);
  if (rc == 0)
    rc = start_api(&d);
  uv_signal_init(&d.loop, &d.sigterm);
  uv_signal_init(&d.loop, &d.sigint);
  uv_signal_init(&d.loop, &d.sighup);
  uv_timer_init(&d.loop, &d.shutdown_timer);
  uv_timer_init(&d.loop, &d.status_timer);
  uv_timer_init(&d.loop, &d.drain_timer);
  d.sigterm.data = d.sigint.data = d.sighup.data = &d;
  d.shutdown_timer.data = d.status_timer.data = d.drain_timer.data = &d;

  if (rc != 0) {
    d.exit_code =
        start_rc == TETHER_EXIT_USAGE ? TETHER_EXIT_USAGE : TETHER_EXIT_RUNTIME;
    close_all(&d);
  } else {
    uv_signal_start(&d.sigterm, on_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_signal, SIGINT);
    uv_signal_start(&d.sighup, on_signal, SIGHUP);
    if (cfg->daemon.status_interval > 0) {
      d.status_at = uv_now(&d.loop);
      uv_timer_start(&d.status_timer, on_status, cfg->daemon.status_interval,
                     cfg->daemon.status_interval);
    }
    log_info("tether started", LS("version", TETHER_VERSION),
             LU("consumers", d.n), LS("state", cfg->daemon.state),
             LS("config", cfg->path));
    for (i = 0; i < d.created; i++) {
      if (consumer_start(d.consumers[i], err, sizeof err) != 0)
        log_error("cannot start the source",
                  LS("consumer", consumer_name(d.consumers[i])),
                  LS("err", err));
    }
    if (d.phase == STARTING)
      d.phase = RUNNING;
    check_finished(&d);
  }

  uv_run(&d.loop, UV_RUN_DEFAULT);

  for (i = 0; i < d.created; i++)
    consumer_destroy(d.consumers[i]);
  rc = uv_loop_close(&d.loop);
  if (rc != 0)
    log_error("handles left open at exit", LS("err", uv_strerror(rc)));
  store_close(d.st);
  free(d.upstreams);
  free(d.consumers);
  free(d.status_seq);
  free(d.status_state);
  if (d.exit_code == TETHER_EXIT_OK)
    log_info("tether stopped");
  return d.exit_code;
}
