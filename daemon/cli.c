/* Client commands over the local API socket (see cli.h). Each request runs
 * a small loop with the project's own HTTP client over the unix socket. */
#include "daemon/cli.h"

#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "loop/http_client.h"
#include "protocol/buf.h"
#include "protocol/http.h"

#define DEFAULT_SOCKET "./.tether/tether.sock"

const char cli_usage_status[] =
    "usage: tether status [-s SOCKET] [--json]\n"
    "\n"
    "Shows every consumer of the running tether: state, cursor, what is in\n"
    "flight, lag, rate and last error. Exits 0 when tether is ready and 1\n"
    "when it is not (or cannot be reached), so it serves as an exec probe.\n"
    "\n"
    "  -s, --socket SOCKET  the local API socket (default $TETHER_SOCKET,\n"
    "                       else " DEFAULT_SOCKET ")\n"
    "  --json               print the API's JSON answer as it is\n";

const char cli_usage_consumers[] =
    "usage: tether consumers pause|resume NAME [-s SOCKET]\n"
    "\n"
    "Pauses a consumer (its source stops fetching; what is in flight is\n"
    "still delivered; it stays paused across restarts) or resumes it.\n";

const char cli_usage_cursors[] =
    "usage: tether cursors list [--consumer C] [--stream S] [--subject X]\n"
    "                           [--limit N] [--json]\n"
    "       tether cursors get CONSUMER STREAM [SUBJECT]\n"
    "       tether cursors reset CONSUMER STREAM [SUBJECT]\n"
    "                            (--position P | --from-start)\n"
    "                            [--seq N] --reason TEXT\n"
    "       tether cursors remove CONSUMER STREAM [SUBJECT]\n"
    "       (each takes -s SOCKET)\n"
    "\n"
    "Lists, shows or resets committed cursors. A reset names where the\n"
    "consumer goes on (the upstream's position, or --from-start), needs a\n"
    "reason (it is recorded) and the consumer paused with nothing in\n"
    "flight; resume it afterwards and it goes on from there. seq never goes\n"
    "backward: the events read again get seqs above every seq used before\n"
    "(--seq N only raises that floor). A cursor no configured consumer owns\n"
    "(an orphan, marked in the list) can be removed.\n";

const char cli_usage_tail[] =
    "usage: tether tail NAME [-s SOCKET] [-n COUNT] [--no-ack]\n"
    "\n"
    "Subscribes to a consumer whose sink is socket and prints each event as\n"
    "it comes, acknowledging it (so the cursor moves). --no-ack only peeks:\n"
    "it sees a copy of every event and takes none, so the cursor does not\n"
    "move for it. -n stops after COUNT events.\n";

/* ---- one request ------------------------------------------------------- */

typedef struct call {
  int status; /* HTTP status, or 0 when none came */
  buf body;
  char err[512];
  bool done;
  /* Streaming (tail). */
  int (*on_line)(struct call *c, const char *line, size_t n);
  buf pending;
  http_client *client;
  const char *socket;
  long left; /* tail -n; -1 = no end */
  bool ack;
  uint64_t acked, last_seq;
  bool ack_busy;
  http_req *stream;
  const char *consumer;
} call;

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  call *c = data;

  (void)r;
  c->done = true;
  if (resp != NULL) {
    c->status = resp->status;
    if (resp->body != NULL)
      buf_append(&c->body, resp->body, resp->body_len);
  }
  if (status != 0 && status != UV_ECANCELED && c->err[0] == '\0')
    snprintf(c->err, sizeof c->err, "%s",
             msg != NULL ? msg : http_strerror(status));
}

static const char *socket_path(const char *given) {
  const char *env = getenv("TETHER_SOCKET");

  if (given != NULL)
    return given;
  return env != NULL && *env != '\0' ? env : DEFAULT_SOCKET;
}

static int make_client(uv_loop_t *loop, const char *sock, http_client **out,
                       char *err, size_t errlen) {
  http_client_opts o;

  memset(&o, 0, sizeof o);
  o.unix_path = sock;
  o.max_connections = 4;
  o.connect_timeout = 5000;
  o.response_timeout = 30000;
  return http_client_create(loop, &o, out, err, errlen);
}

static void on_client_closed(void *data) {
  (void)data;
}

/* Runs one buffered request to the API. Returns 0 when an answer came
 * (any status), else 1 with the reason printed. */
static int request(const char *sock, const char *method, const char *path,
                   const char *body, call *c) {
  static const http_callbacks cbs = { NULL, NULL, on_done };
  http_header h[] = { { "Content-Type", "application/json" } };
  http_request req;
  http_client *cl;
  uv_loop_t loop;
  char url[1024];
  int rc;

  memset(c, 0, sizeof *c);
  buf_init(&c->body, 0);
  uv_loop_init(&loop);
  if (make_client(&loop, sock, &cl, c->err, sizeof c->err) != 0) {
    fprintf(stderr, "tether: %s\n", c->err);
    uv_loop_close(&loop);
    return 1;
  }
  snprintf(url, sizeof url, "http://tether%s", path);
  memset(&req, 0, sizeof req);
  req.method = method;
  req.url = url;
  req.headers = body != NULL ? h : NULL;
  req.n_headers = body != NULL ? 1 : 0;
  req.body = body;
  req.body_len = body != NULL ? strlen(body) : 0;
  req.timeout = 30000;
  rc = http_request_start(cl, &req, &cbs, c, NULL);
  /* Until the answer: the client keeps its connection for another
   * request, so the loop would not end by itself. */
  while (rc == 0 && !c->done && uv_run(&loop, UV_RUN_ONCE) != 0)
    ;
  http_client_close(cl, on_client_closed, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  if (rc != 0 || c->status == 0) {
    fprintf(stderr, "tether: cannot reach tether at %s: %s\n", sock,
            c->err[0] != '\0' ? c->err : http_strerror(rc));
    buf_free(&c->body);
    return 1;
  }
  buf_cstr(&c->body);
  return 0;
}

/* Prints the message of an error answer; returns 1. */
static int print_error(const call *c) {
  json_t *j = json_loadb(c->body.data, c->body.len, 0, NULL);
  const char *msg = json_string_value(
      json_object_get(json_object_get(j, "error"), "message"));

  fprintf(stderr, "tether: %s (HTTP %d)\n", msg != NULL ? msg : "error",
          c->status);
  json_decref(j);
  return 1;
}

/* Common flags: -s SOCKET, --json. Leaves the other arguments in args. */
typedef struct flags {
  const char *socket;
  bool json;
  int n;
  char *args[16];
} flags;

static int take_flags(int argc, char **argv, const char *usage, flags *f) {
  int i;

  memset(f, 0, sizeof *f);
  for (i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      fputs(usage, stdout);
      return 1;
    }
    if (strcmp(argv[i], "-s") == 0 || strcmp(argv[i], "--socket") == 0) {
      if (++i >= argc) {
        fprintf(stderr, "tether: %s needs a path\n\n%s", argv[i - 1], usage);
        return 2;
      }
      f->socket = argv[i];
    } else if (strcmp(argv[i], "--json") == 0) {
      f->json = true;
    } else if (f->n < (int)(sizeof f->args / sizeof f->args[0])) {
      f->args[f->n++] = argv[i];
    } else {
      fprintf(stderr, "tether: too many arguments\n\n%s", usage);
      return 2;
    }
  }
  f->socket = socket_path(f->socket);
  return 0;
}

#define TAKE_FLAGS(argc, argv, usage, f)                                       \
  do {                                                                         \
    int r_ = take_flags((argc), (argv), (usage), (f));                         \
    if (r_ != 0)                                                               \
      return r_ == 1 ? 0 : r_;                                                 \
  } while (0)

/* ---- status ------------------------------------------------------------ */

int cli_status(int argc, char **argv) {
  flags f;
  call ready, list;
  json_t *j, *cs, *k;
  char *why;
  size_t i;
  int ok;

  TAKE_FLAGS(argc, argv, cli_usage_status, &f);
  if (f.n > 0) {
    fprintf(stderr, "tether: unexpected argument: %s\n\n%s", f.args[0],
            cli_usage_status);
    return 2;
  }
  if (request(f.socket, "GET", "/v1/ready", NULL, &ready) != 0)
    return 1;
  ok = ready.status == 200;
  /* Why not: the answer's message ("cursor commits have been failing"). */
  why = NULL;
  if (!ok && (j = json_loadb(ready.body.data, ready.body.len, 0, NULL))) {
    const char *m = json_string_value(
        json_object_get(json_object_get(j, "error"), "message"));

    why = m != NULL ? strdup(m) : NULL;
    json_decref(j);
  }
  buf_free(&ready.body);
  if (request(f.socket, "GET", "/v1/consumers", NULL, &list) != 0) {
    free(why);
    return 1;
  }
  if (list.status != 200) {
    print_error(&list);
    buf_free(&list.body);
    free(why);
    return 1;
  }
  if (f.json) {
    printf("%s\n", list.body.data);
    buf_free(&list.body);
    free(why);
    return ok ? 0 : 1;
  }
  j = json_loadb(list.body.data, list.body.len, 0, NULL);
  cs = json_object_get(j, "consumers");
  if (ok)
    printf("tether is ready\n\n");
  else
    printf("tether is not ready%s%s\n\n", why ? ": " : "", why ? why : "");
  free(why);
  printf("%-20s %-10s %-18s %12s %12s %9s %8s %10s  %s\n", "CONSUMER", "STATE",
         "SINK", "CURSOR", "COMMITTED", "IN_FLIGHT", "LAG_S", "EVENTS/S",
         "LAST ERROR");
  json_array_foreach(cs, i, k) {
    json_t *cur = json_object_get(k, "cursor");
    const char *e = json_string_value(json_object_get(k, "last_error"));
    const char *sink = json_string_value(json_object_get(k, "sink_status"));
    char word[24];

    /* The sink's word here; what it is retrying on shows as the error. */
    snprintf(word, sizeof word, "%.*s",
             sink != NULL ? (int)strcspn(sink, ":") : 1, sink ? sink : "-");
    printf(
        "%-20s %-10s %-18s %12" JSON_INTEGER_FORMAT " %12" JSON_INTEGER_FORMAT
        " %9" JSON_INTEGER_FORMAT " %8.1f %10.1f  %s\n",
        json_string_value(json_object_get(k, "name")),
        json_string_value(json_object_get(k, "state")), word,
        json_integer_value(json_object_get(cur, "seq")),
        json_integer_value(json_object_get(k, "committed_seq")),
        json_integer_value(json_object_get(k, "in_flight")),
        json_real_value(json_object_get(json_object_get(k, "lag"), "seconds")),
        json_real_value(json_object_get(k, "delivered_per_s")),
        e != NULL ? e : "");
  }
  json_decref(j);
  buf_free(&list.body);
  return ok ? 0 : 1;
}

/* ---- consumers --------------------------------------------------------- */

int cli_consumers(int argc, char **argv) {
  char path[512], *name;
  flags f;
  call c;
  buf enc;
  int rc;

  TAKE_FLAGS(argc, argv, cli_usage_consumers, &f);
  if (f.n != 2 ||
      (strcmp(f.args[0], "pause") != 0 && strcmp(f.args[0], "resume") != 0)) {
    fprintf(stderr, "tether: expected pause NAME or resume NAME\n\n%s",
            cli_usage_consumers);
    return 2;
  }
  buf_init(&enc, 0);
  http_percent_encode(&enc, f.args[1], strlen(f.args[1]));
  name = buf_cstr(&enc);
  snprintf(path, sizeof path, "/v1/consumers/%s/%s", name, f.args[0]);
  buf_free(&enc);
  if (request(f.socket, "POST", path, "{}", &c) != 0)
    return 1;
  rc = c.status == 200 ? 0 : print_error(&c);
  if (rc == 0)
    printf("%s %s\n", f.args[1],
           strcmp(f.args[0], "pause") == 0 ? "paused" : "resumed");
  buf_free(&c.body);
  return rc;
}

/* ---- cursors ----------------------------------------------------------- */

/* One row; an orphan (no configured consumer reads it) says so, and a
 * recorded error follows the position. */
static void print_cursor(json_t *k) {
  const char *pos = json_string_value(json_object_get(k, "position"));
  const char *sub = json_string_value(json_object_get(k, "subject_id"));
  const char *err = json_string_value(json_object_get(k, "last_error"));

  printf("%-20s %-12s %-10s %12" JSON_INTEGER_FORMAT " %-7s %s%s%s\n",
         json_string_value(json_object_get(k, "consumer_id")),
         json_string_value(json_object_get(k, "stream_name")),
         sub != NULL && *sub ? sub : "-",
         json_integer_value(json_object_get(k, "last_sequence")),
         json_is_true(json_object_get(k, "orphan")) ? "orphan" : "-",
         pos != NULL ? pos : "", err != NULL ? "  last_error: " : "",
         err != NULL ? err : "");
}

static void append_param(buf *b, const char *name, const char *value) {
  buf_append_str(b, b->len == 0 ? "?" : "&");
  buf_append_str(b, name);
  buf_append_str(b, "=");
  http_percent_encode(b, value, strlen(value));
}

int cli_cursors(int argc, char **argv) {
  const char *seq = NULL, *position = NULL, *reason = NULL;
  bool from_start = false;
  const char *consumer = NULL, *stream = NULL, *subject = NULL, *limit = NULL;
  char *rest[8];
  int nrest = 0, i, rc;
  json_t *j, *list, *k;
  size_t x;
  flags f;
  buf q;
  call c;

  TAKE_FLAGS(argc, argv, cli_usage_cursors, &f);
  for (i = 0; i < f.n; i++) {
    const char **slot = NULL;

    if (strcmp(f.args[i], "--from-start") == 0) {
      from_start = true;
      continue;
    }
    if (strcmp(f.args[i], "--seq") == 0)
      slot = &seq;
    else if (strcmp(f.args[i], "--position") == 0)
      slot = &position;
    else if (strcmp(f.args[i], "--reason") == 0)
      slot = &reason;
    else if (strcmp(f.args[i], "--consumer") == 0)
      slot = &consumer;
    else if (strcmp(f.args[i], "--stream") == 0)
      slot = &stream;
    else if (strcmp(f.args[i], "--subject") == 0)
      slot = &subject;
    else if (strcmp(f.args[i], "--limit") == 0)
      slot = &limit;
    if (slot != NULL) {
      if (++i >= f.n) {
        fprintf(stderr, "tether: %s needs a value\n\n%s", f.args[i - 1],
                cli_usage_cursors);
        return 2;
      }
      *slot = f.args[i];
    } else if (nrest < 8) {
      rest[nrest++] = f.args[i];
    }
  }
  if (nrest == 0) {
    fprintf(stderr, "tether: expected list, get, reset or remove\n\n%s",
            cli_usage_cursors);
    return 2;
  }
  buf_init(&q, 0);
  if (strcmp(rest[0], "list") == 0 && nrest == 1) {
    buf_append_str(&q, "/v1/cursors");
    {
      buf params;

      buf_init(&params, 0);
      if (consumer)
        append_param(&params, "consumer_id", consumer);
      if (stream)
        append_param(&params, "stream_name", stream);
      if (subject)
        append_param(&params, "subject_id", subject);
      if (limit)
        append_param(&params, "limit", limit);
      buf_append(&q, params.data, params.len);
      buf_free(&params);
    }
    rc = request(f.socket, "GET", buf_cstr(&q), NULL, &c);
  } else if ((strcmp(rest[0], "get") == 0 || strcmp(rest[0], "remove") == 0) &&
             (nrest == 3 || nrest == 4)) {
    buf_append_str(&q, "/v1/cursors");
    for (i = 1; i < nrest; i++) {
      buf_append_str(&q, "/");
      http_percent_encode(&q, rest[i], strlen(rest[i]));
    }
    rc = request(f.socket, strcmp(rest[0], "get") == 0 ? "GET" : "DELETE",
                 buf_cstr(&q), NULL, &c);
  } else if (strcmp(rest[0], "reset") == 0 && (nrest == 3 || nrest == 4)) {
    char *end;
    long long n;
    char *body;

    if ((position == NULL) == !from_start || reason == NULL) {
      buf_free(&q);
      fprintf(stderr,
              "tether: reset needs --position P or --from-start (one of "
              "them), and --reason TEXT\n\n%s",
              cli_usage_cursors);
      return 2;
    }
    n = 0;
    if (seq != NULL) {
      n = strtoll(seq, &end, 10);
      if (*seq == '\0' || *end != '\0' || n < 0) {
        buf_free(&q);
        fprintf(stderr, "tether: --seq %s: expected an integer >= 0\n", seq);
        return 2;
      }
    }
    j = json_pack("{s:{s:s,s:s,s:s},s:s}", "key", "consumer_id", rest[1],
                  "stream_name", rest[2], "subject_id",
                  nrest == 4 ? rest[3] : "", "reason", reason);
    if (j != NULL && seq != NULL)
      json_object_set_new(j, "last_sequence", json_integer((json_int_t)n));
    if (j != NULL && from_start)
      json_object_set_new(j, "from_start", json_true());
    else if (j != NULL)
      json_object_set_new(j, "position", json_string(position));
    body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    rc = request(f.socket, "POST", "/v1/cursors/reset", body, &c);
    free(body);
  } else {
    buf_free(&q);
    fprintf(stderr, "tether: unexpected arguments\n\n%s", cli_usage_cursors);
    return 2;
  }
  buf_free(&q);
  if (rc != 0)
    return 1;
  if (c.status != 200) {
    rc = print_error(&c);
    buf_free(&c.body);
    return rc;
  }
  if (f.json) {
    printf("%s\n", c.body.data);
    buf_free(&c.body);
    return 0;
  }
  j = json_loadb(c.body.data, c.body.len, 0, NULL);
  printf("%-20s %-12s %-10s %12s %-7s %s\n", "CONSUMER", "STREAM", "SUBJECT",
         "SEQ", "ORPHAN", "POSITION");
  if ((list = json_object_get(j, "cursors")) != NULL) {
    json_array_foreach(list, x, k) {
      print_cursor(k);
    }
  } else if ((k = json_object_get(j, "removed")) != NULL) {
    print_cursor(k);
  } else {
    print_cursor(json_object_get(j, "cursor"));
  }
  json_decref(j);
  buf_free(&c.body);
  return 0;
}

/* ---- tail -------------------------------------------------------------- */

static uv_signal_t tail_sigint;

static void on_ack_done(http_req *r, int status, const http_response *resp,
                        const char *msg, void *data);

/* Acknowledges everything printed so far; one ack request at a time, the
 * next covering whatever came meanwhile (acks are cumulative). */
static void send_ack(call *c) {
  static const http_callbacks cbs = { NULL, NULL, on_ack_done };
  http_header h[] = { { "Content-Type", "application/json" } };
  char url[512], body[96];
  http_request req;
  buf enc;

  if (!c->ack || c->ack_busy || c->last_seq <= c->acked)
    return;
  buf_init(&enc, 0);
  http_percent_encode(&enc, c->consumer, strlen(c->consumer));
  snprintf(url, sizeof url, "http://tether/v1/consumers/%s/ack",
           buf_cstr(&enc));
  buf_free(&enc);
  snprintf(body, sizeof body,
           "{\"seq\":%" PRIu64 ",\"subscriber\":\"tail-%ld\"}", c->last_seq,
           (long)getpid());
  memset(&req, 0, sizeof req);
  req.method = "POST";
  req.url = url;
  req.headers = h;
  req.n_headers = 1;
  req.body = body;
  req.body_len = strlen(body);
  req.timeout = 10000;
  if (http_request_start(c->client, &req, &cbs, c, NULL) == 0) {
    c->ack_busy = true;
    c->acked = c->last_seq;
  }
}

static void on_ack_done(http_req *r, int status, const http_response *resp,
                        const char *msg, void *data) {
  call *c = data;

  (void)r;
  c->ack_busy = false;
  if (status != 0 || resp == NULL || resp->status != 200) {
    fprintf(stderr, "tether: acknowledging failed: %s\n",
            msg != NULL ? msg : "an error answer");
    if (c->stream != NULL)
      http_req_cancel(c->stream);
    return;
  }
  send_ack(c); /* what was printed meanwhile */
  if (!c->ack_busy && c->left == 0 && c->stream != NULL)
    http_req_cancel(c->stream);
}

static int tail_head(http_req *r, const http_response *resp, void *data) {
  call *c = data;

  (void)r;
  c->status = resp->status;
  return 0;
}

static int tail_body(http_req *r, const char *bytes, size_t n, void *data) {
  call *c = data;
  const char *nl;
  size_t start = 0;

  (void)r;
  if (c->status != 200) /* an error answer: kept for print_error */
    return buf_append(&c->body, bytes, n) != 0 ? UV_ENOMEM : 0;
  if (buf_append(&c->pending, bytes, n) != 0)
    return UV_ENOMEM;
  while (c->left != 0 && (nl = memchr(c->pending.data + start, '\n',
                                      c->pending.len - start)) != NULL) {
    size_t len = (size_t)(nl - (c->pending.data + start));
    const char *line = c->pending.data + start, *s = strstr(line, "\"seq\":");

    fwrite(line, 1, len + 1, stdout);
    if (s != NULL && s < nl)
      c->last_seq = strtoull(s + 6, NULL, 10);
    start += len + 1;
    if (c->left > 0)
      c->left--;
  }
  fflush(stdout);
  buf_consume(&c->pending, start);
  send_ack(c);
  if (c->left == 0 && !c->ack_busy)
    http_req_cancel(r);
  return 0;
}

static void tail_done(http_req *r, int status, const http_response *resp,
                      const char *msg, void *data) {
  call *c = data;

  (void)r;
  c->stream = NULL;
  c->done = true;
  if (resp != NULL && resp->body != NULL)
    buf_append(&c->body, resp->body, resp->body_len);
  if (status != 0 && status != UV_ECANCELED && status != HTTP_EABORTED &&
      c->err[0] == '\0')
    snprintf(c->err, sizeof c->err, "%s",
             msg != NULL ? msg : http_strerror(status));
  uv_close((uv_handle_t *)&tail_sigint, NULL);
}

static void on_tail_sigint(uv_signal_t *h, int signum) {
  call *c = h->data;

  (void)signum;
  if (c->stream != NULL)
    http_req_cancel(c->stream);
}

int cli_tail(int argc, char **argv) {
  static const http_callbacks cbs = { tail_head, tail_body, tail_done };
  http_header h[] = { { "Accept", "application/x-ndjson" } };
  http_request req;
  uv_loop_t loop;
  char url[512], *end;
  const char *name = NULL;
  flags f;
  call c;
  buf enc;
  int i, rc;

  TAKE_FLAGS(argc, argv, cli_usage_tail, &f);
  memset(&c, 0, sizeof c);
  c.left = -1;
  c.ack = true;
  for (i = 0; i < f.n; i++) {
    if (strcmp(f.args[i], "--no-ack") == 0) {
      c.ack = false;
    } else if (strcmp(f.args[i], "-n") == 0 && i + 1 < f.n) {
      c.left = strtol(f.args[++i], &end, 10);
      if (*end != '\0' || c.left <= 0) {
        fprintf(stderr, "tether: -n %s: expected a count > 0\n", f.args[i]);
        return 2;
      }
    } else if (name == NULL) {
      name = f.args[i];
    } else {
      fprintf(stderr, "tether: unexpected argument: %s\n\n%s", f.args[i],
              cli_usage_tail);
      return 2;
    }
  }
  if (name == NULL) {
    fprintf(stderr, "tether: tail needs a consumer name\n\n%s", cli_usage_tail);
    return 2;
  }
  c.consumer = name;
  c.socket = f.socket;
  buf_init(&c.body, 0);
  buf_init(&c.pending, 0);
  uv_loop_init(&loop);
  if (make_client(&loop, f.socket, &c.client, c.err, sizeof c.err) != 0) {
    fprintf(stderr, "tether: %s\n", c.err);
    uv_loop_close(&loop);
    return 1;
  }
  buf_init(&enc, 0);
  http_percent_encode(&enc, name, strlen(name));
  snprintf(url, sizeof url,
           "http://tether/v1/consumers/%s/events?subscriber=tail-%ld%s",
           buf_cstr(&enc), (long)getpid(), c.ack ? "" : "&peek=1");
  buf_free(&enc);
  memset(&req, 0, sizeof req);
  req.method = "GET";
  req.url = url;
  req.headers = h;
  req.n_headers = 1;
  req.streaming = true;
  uv_signal_init(&loop, &tail_sigint);
  tail_sigint.data = &c;
  uv_signal_start(&tail_sigint, on_tail_sigint, SIGINT);
  rc = http_request_start(c.client, &req, &cbs, &c, &c.stream);
  if (rc == 0)
    while ((!c.done || c.ack_busy) && uv_run(&loop, UV_RUN_ONCE) != 0)
      ;
  else
    uv_close((uv_handle_t *)&tail_sigint, NULL);
  http_client_close(c.client, on_client_closed, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  buf_free(&c.pending);
  if (rc != 0 || c.status == 0) {
    fprintf(stderr, "tether: cannot reach tether at %s: %s\n", f.socket,
            c.err[0] != '\0' ? c.err : http_strerror(rc));
    buf_free(&c.body);
    return 1;
  }
  if (c.status != 200) {
    rc = print_error(&c);
    buf_free(&c.body);
    return rc;
  }
  buf_free(&c.body);
  return 0;
}
