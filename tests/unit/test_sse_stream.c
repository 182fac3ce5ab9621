/* daemon/sources/sse_stream against a local server (loop/http_server on
 * TCP) whose answers each test scripts: events and control events, the
 * resume point by header and by query, backpressure, retry: hints,
 * refusals, the poison rule, the idle timeout, drop, stop, close, and the
 * control lane (a stream leaves the pool free). */
#include "daemon/sources/sse_stream.h"

#include <signal.h>
#include <strings.h>

#include "daemon/config.h"
#include "loop/http_server.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

#define MAX_REQS 16

typedef struct fixture fixture;

static struct fixture {
  uv_loop_t loop;
  http_server *srv;
  char base[64];
  char url[96]; /* base + "/ev" */
  http_upstream_conf hc;
  config_upstream cu;
  config_kv kv[1];
  upstream *up;
  sse_stream st;
  bool st_open;
  int closed;        /* close callbacks of the upstream and the server */
  int stream_closed; /* sse_stream_close callbacks */

  /* The server's side. */
  int requests;
  char target[MAX_REQS][256];
  char last_id[MAX_REQS][64]; /* Last-Event-ID, "" when none */
  char test_hdr[MAX_REQS][16];
  char cache[MAX_REQS][32];
  http_conn *conn; /* the stream held open */
  void (*answer)(http_conn *c, int index);

  /* The owner's side. */
  int events, controls, opens, ends;
  char got[4096];  /* "type:data;" per on_event */
  char ctl[512];   /* the same per on_control */
  int pause_at;    /* on_event returns PAUSE when events reaches it */
  bool room;       /* what has_room says */
  char cursor[64]; /* what the cursor hook says */
  bool track_id;   /* on_event moves the cursor to the event's id */
  int open_rc;     /* what on_open returns */
  bool stop_in_end;
  sse_stream_end end;
  char end_why[512];
  int end_http; /* the status of the end's head; 0 = none */
} F;

/* ---- the server ---------------------------------------------------------- */

static const char *header_of(const http_srv_request *req, const char *name) {
  size_t i;

  for (i = 0; i < req->n_headers; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return "";
}

static void on_conn_closed(http_conn *c, void *data) {
  (void)data;
  if (F.conn == c)
    F.conn = NULL;
}

static void stream_open(http_conn *c) {
  http_stream_callbacks cbs = { NULL, on_conn_closed, NULL };

  ASSERT_EQ(0, http_conn_stream_start(c, 200, "text/event-stream"));
  http_conn_stream_callbacks(c, &cbs);
  F.conn = c;
}

static void stream_send(const char *text) {
  ASSERT(F.conn != NULL);
  ASSERT_EQ(0, http_conn_stream_write(F.conn, text, strlen(text)));
}

static void handler(http_conn *c, const http_srv_request *req, void *data) {
  int i = F.requests;

  (void)data;
  if (strcmp(req->target, "/short") == 0) {
    http_conn_respond(c, 200, "text/plain", NULL, 0, "ok", 2);
    return;
  }
  ASSERT(i < MAX_REQS);
  F.requests++;
  snprintf(F.target[i], sizeof F.target[i], "%s", req->target);
  snprintf(F.last_id[i], sizeof F.last_id[i], "%s",
           header_of(req, "Last-Event-ID"));
  snprintf(F.test_hdr[i], sizeof F.test_hdr[i], "%s", header_of(req, "X-Test"));
  snprintf(F.cache[i], sizeof F.cache[i], "%s",
           header_of(req, "Cache-Control"));
  if (strcmp(header_of(req, "Accept"), "text/event-stream") != 0) {
    http_conn_respond(c, 406, "text/plain", NULL, 0, "", 0);
    return;
  }
  F.answer(c, i);
}

/* ---- the owner ----------------------------------------------------------- */

static void append(char *out, size_t cap, const sse_event *ev) {
  size_t n = strlen(out);

  snprintf(out + n, cap - n, "%.*s:%.*s;", (int)ev->type_len, ev->type,
           (int)ev->data_len, ev->data);
}

static int on_open(sse_stream *st, const http_response *resp, void *data) {
  (void)st;
  ASSERT(data == &F);
  ASSERT_EQ(200, resp->status);
  F.opens++;
  return F.open_rc;
}

static int on_event(sse_stream *st, const sse_event *ev, void *data) {
  (void)st, (void)data;
  F.events++;
  append(F.got, sizeof F.got, ev);
  if (F.track_id)
    snprintf(F.cursor, sizeof F.cursor, "%.*s", (int)ev->id_len, ev->id);
  if (strcmp(ev->type, "skip") == 0)
    return SSE_STREAM_SKIP;
  return F.events == F.pause_at ? SSE_STREAM_PAUSE : SSE_STREAM_NEXT;
}

static int on_control(sse_stream *st, const sse_event *ev, void *data) {
  (void)st, (void)data;
  F.controls++;
  append(F.ctl, sizeof F.ctl, ev);
  return SSE_STREAM_NEXT;
}

static const char *cursor(sse_stream *st, void *data) {
  (void)st, (void)data;
  return F.cursor;
}

static bool has_room(sse_stream *st, void *data) {
  (void)st, (void)data;
  return F.room;
}

static void on_end(sse_stream *st, const sse_stream_end *e, void *data) {
  (void)data;
  F.ends++;
  F.end = *e;
  snprintf(F.end_why, sizeof F.end_why, "%s", e->why);
  F.end.why = F.end_why;
  F.end_http = e->resp != NULL ? e->resp->status : 0;
  F.end.resp = NULL;
  if (F.stop_in_end)
    sse_stream_stop(st);
}

static const sse_stream_hooks hooks = {
  .on_open = on_open,
  .on_event = on_event,
  .on_control = on_control,
  .cursor = cursor,
  .has_room = has_room,
  .on_end = on_end,
};

/* ---- fixture ------------------------------------------------------------- */

static const upstream_type fake_type = { .name = "sse" };

static void on_closed(void *data) {
  (void)data;
  F.closed++;
}

static void on_stream_closed(sse_stream *st, void *data) {
  (void)st;
  ASSERT(data == &F);
  F.stream_closed++;
}

static void setup(void (*answer)(http_conn *c, int index)) {
  http_server_opts so;
  char err[256] = "";

  signal(SIGPIPE, SIG_IGN);
  memset(&F, 0, sizeof F);
  F.answer = answer;
  F.room = true;
  ASSERT_EQ(0, uv_loop_init(&F.loop));
  memset(&so, 0, sizeof so);
  so.tcp_host = "127.0.0.1";
  ASSERT_EQ(0, http_server_start(&F.loop, &so, handler, NULL, &F.srv, err,
                                 sizeof err));
  snprintf(F.base, sizeof F.base, "http://127.0.0.1:%u",
           (unsigned)http_server_tcp_port(F.srv));
  snprintf(F.url, sizeof F.url, "%s/ev", F.base);
  F.hc.url = F.base;
  F.hc.unix_socket = F.hc.ca_file = F.hc.client_cert = F.hc.client_key = "";
  F.hc.tls_verify = true;
  F.hc.max_connections = 1;
  F.hc.max_streams = 4;
  F.hc.connect_timeout = 2000;
  F.hc.reconnect_min = 10;
  F.hc.reconnect_max = 200;
  F.hc.response_timeout = 2000;
  F.kv[0].key = "header.X-Test";
  F.kv[0].value = "yes";
  F.cu.name = "ref";
  F.cu.type = "sse";
  F.cu.type_reg = &fake_type;
  F.cu.conf = &F.hc;
  F.cu.kv = F.kv;
  F.cu.n_kv = 1;
}

/* The upstream and the stream, with the test's options. */
static void open_stream(sse_stream_opts *o) {
  static const http_header cache = { "Cache-Control", "no-cache" };
  char err[256] = "";

  ASSERT_EQ(0, upstream_open(&F.loop, &F.cu, &F.up, err, sizeof err));
  if (o->url == NULL)
    o->url = F.url;
  if (o->n_headers == 0) {
    o->headers = &cache;
    o->n_headers = 1;
  }
  ASSERT_EQ(0, sse_stream_init(&F.st, F.up, o, &hooks, &F, err, sizeof err));
  F.st_open = true;
}

static void teardown(void) {
  int ends = F.ends;

  if (F.st_open) {
    F.st_open = false;
    F.stream_closed = 0;
    sse_stream_close(&F.st, on_stream_closed, &F);
    ASSERT_EQ(0, F.stream_closed); /* never inside the call */
    RUN_UNTIL(&F.loop, F.stream_closed == 1, 5000);
    ASSERT_EQ(ends, F.ends); /* no hook after close */
  }
  upstream_close(F.up, on_closed, NULL);
  http_server_close(F.srv, on_closed, NULL);
  RUN_UNTIL(&F.loop, F.closed == 2, 5000);
  RUN_UNTIL(&F.loop, !uv_loop_alive(&F.loop), 5000);
  ASSERT_EQ(0, uv_loop_close(&F.loop));
}

/* ---- answers ------------------------------------------------------------- */

/* First: a control event, events (one of a skipped type), a clean end.
 * Then: one more event, held open. */
static void answer_two_bodies(http_conn *c, int i) {
  stream_open(c);
  if (i == 0) {
    stream_send(": hi\n\nevent: hello\ndata: c1\n\nid: 1\ndata: a\n\n"
                "id: 2\nevent: skip\ndata: s\n\nid: 3\ndata: b\n\n");
    http_conn_stream_end(c);
    F.conn = NULL;
  } else {
    stream_send("id: 4\ndata: c\n\n");
  }
}

static void answer_held(http_conn *c, int i) {
  (void)i;
  stream_open(c);
}

static void answer_five(http_conn *c, int i) {
  (void)i;
  stream_open(c);
  stream_send("data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\n");
}

static void answer_retry_hint(http_conn *c, int i) {
  stream_open(c);
  if (i == 0)
    stream_send("retry: 150\n\ndata: x\n\n");
  http_conn_stream_end(c);
  F.conn = NULL;
}

static void answer_poison(http_conn *c, int i) {
  char big[200];

  (void)i;
  stream_open(c);
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  stream_send("id: 7\ndata: ok\n\ndata: ");
  stream_send(big);
  stream_send("\n\n");
}

static void answer_one_then_silence(http_conn *c, int i) {
  (void)i;
  stream_open(c);
  stream_send("data: one\n\n");
}

/* ---- tests --------------------------------------------------------------- */

static void test_events_controls_and_resume(void) {
  const char *const control[] = { "hello", NULL };
  sse_stream_opts o;

  setup(answer_two_bodies);
  memset(&o, 0, sizeof o);
  o.control_types = control;
  F.track_id = true;
  open_stream(&o);
  sse_stream_start(&F.st);
  ASSERT(sse_stream_connected(&F.st));
  RUN_UNTIL(&F.loop, F.events == 4, 5000);
  ASSERT_STR_EQ("message:a;skip:s;message:b;message:c;", F.got);
  ASSERT_STR_EQ("hello:c1;", F.ctl);
  ASSERT_EQ(2, F.opens);
  /* The clean end: a routine reconnect after reconnect_min. */
  ASSERT_EQ(1, F.ends);
  ASSERT_EQ(0, F.end.status);
  ASSERT(!F.end.failure && !F.end.fatal && !F.end.refused);
  ASSERT(F.end.delay_ms >= 10);
  ASSERT_STR_EQ("the stream ended", F.end_why);
  /* The reconnect resumes from the owner's cursor, with the upstream's
   * and the owner's headers. */
  ASSERT_EQ(2, F.requests);
  ASSERT_STR_EQ("/ev", F.target[0]);
  ASSERT_STR_EQ("", F.last_id[0]);
  ASSERT_STR_EQ("3", F.last_id[1]);
  ASSERT_STR_EQ("yes", F.test_hdr[1]);
  ASSERT_STR_EQ("no-cache", F.cache[1]);
  ASSERT(sse_stream_connected(&F.st));
  teardown();
}

static void test_resume_by_query(void) {
  sse_stream_opts o;
  char url[128];

  setup(answer_held);
  memset(&o, 0, sizeof o);
  snprintf(url, sizeof url, "%s/ev?x=1", F.base);
  o.url = url;
  o.resume_query = "last";
  snprintf(F.cursor, sizeof F.cursor, "a b/7");
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.opens == 1, 5000);
  ASSERT_STR_EQ("/ev?x=1&last=a%20b%2F7", F.target[0]);
  ASSERT_STR_EQ("", F.last_id[0]);
  teardown();
}

/* PAUSE stops reading right after that event; resume goes on from the
 * next. An owner without room takes nothing, even of bytes that arrived. */
static void test_backpressure(void) {
  sse_stream_opts o;

  setup(answer_five);
  memset(&o, 0, sizeof o);
  F.pause_at = 2;
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.events == 2, 5000);
  RUN_FOR(&F.loop, 100);
  ASSERT_EQ(2, F.events);
  F.pause_at = 4;
  sse_stream_resume(&F.st);
  ASSERT_EQ(4, F.events); /* inside the call */
  F.room = false;
  sse_stream_resume(&F.st); /* no room: nothing */
  ASSERT_EQ(4, F.events);
  F.room = true;
  sse_stream_resume(&F.st);
  ASSERT_EQ(5, F.events);
  ASSERT_STR_EQ("message:1;message:2;message:3;message:4;message:5;", F.got);
  /* No room while two more arrive: neither is taken. */
  F.room = false;
  stream_send("data: 6\n\ndata: 7\n\n");
  RUN_FOR(&F.loop, 150);
  ASSERT_EQ(5, F.events);
  F.room = true;
  sse_stream_resume(&F.st);
  RUN_UNTIL(&F.loop, F.events == 7, 5000);
  ASSERT_STR_EQ("message:1;message:2;message:3;message:4;message:5;"
                "message:6;message:7;",
                F.got);
  ASSERT_EQ(0, F.ends);
  ASSERT_EQ(1, F.requests);
  teardown();
}

static void test_retry_hint(void) {
  sse_stream_opts o;

  setup(answer_retry_hint);
  memset(&o, 0, sizeof o);
  F.stop_in_end = true;
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.ends == 1, 5000);
  ASSERT(!F.end.failure);
  ASSERT(F.end.delay_ms >= 150 && F.end.delay_ms <= 200);
  /* Stopped in on_end: no reconnect. */
  RUN_FOR(&F.loop, 250);
  ASSERT_EQ(1, F.requests);
  teardown();
}

static int refuse_status;
static const char *refuse_ctype;
static const http_header retry_after = { "Retry-After", "1" };

static void answer_refusal(http_conn *c, int i) {
  (void)i;
  if (refuse_status == 204)
    http_conn_respond(c, 204, NULL, NULL, 0, NULL, 0);
  else
    http_conn_respond(c, refuse_status, refuse_ctype,
                      refuse_status == 503 ? &retry_after : NULL,
                      refuse_status == 503 ? 1 : 0, "no", 2);
}

/* A head that is no event stream: fatal when no retry can fix it, a
 * backoff (Retry-After winning) when it can, and never fatal for a
 * persistent stream. */
static void test_refusals(void) {
  static const struct {
    int status;
    const char *ctype;
    bool persistent, fatal;
    uint64_t min_delay;
    const char *why; /* %s = the URL */
  } v[] = {
    { 204, NULL, false, true, 0,
      "the server answered 204 No Content: it asks clients to stop" },
    { 200, "text/plain", false, true, 0,
      "expected Content-Type text/event-stream from %s, got text/plain" },
    { 404, "text/plain", false, true, 0,
      "HTTP 404 from %s; retrying cannot fix this: check the url and path" },
    { 503, "text/plain", false, false, 1000, "HTTP 503 from %s" },
    { 404, "text/plain", true, false, 0, "HTTP 404 from %s" },
    { 204, NULL, true, false, 0, "HTTP 204 from %s" },
  };
  size_t k;

  for (k = 0; k < sizeof v / sizeof v[0]; k++) {
    sse_stream_opts o;
    char want[512];

    setup(answer_refusal);
    refuse_status = v[k].status;
    refuse_ctype = v[k].ctype;
    F.hc.reconnect_max = 2000;
    memset(&o, 0, sizeof o);
    o.persistent = v[k].persistent;
    F.stop_in_end = true;
    open_stream(&o);
    sse_stream_start(&F.st);
    RUN_UNTIL(&F.loop, F.ends == 1, 5000);
    snprintf(want, sizeof want, v[k].why, F.url);
    ASSERT_STR_EQ(want, F.end_why);
    ASSERT(F.end.refused && F.end.failure);
    ASSERT_EQ(v[k].fatal, F.end.fatal);
    ASSERT_EQ(v[k].status, F.end_http);
    ASSERT_EQ(0, F.opens);
    if (!v[k].fatal)
      ASSERT(F.end.delay_ms >= v[k].min_delay);
    teardown();
  }
}

/* An event over max_event_size at the same cursor, again and again: two
 * retries, then fatal, naming the cap and the id. */
static void test_poison_event(void) {
  sse_stream_opts o;
  char want[256];

  setup(answer_poison);
  memset(&o, 0, sizeof o);
  o.limits.max_event_size = 64;
  F.track_id = true;
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.ends == 1, 5000);
  snprintf(want, sizeof want, "event_too_large in the stream from %s", F.url);
  ASSERT_STR_EQ(want, F.end_why);
  ASSERT_EQ(SSE_EEVENT, F.end.status);
  ASSERT(F.end.failure && !F.end.fatal);
  RUN_UNTIL(&F.loop, F.ends == 3, 5000);
  ASSERT(F.end.fatal);
  ASSERT_STR_EQ("event_too_large 3 times after id \"7\": a poison event; "
                "raise max_event_size or skip it upstream",
                F.end_why);
  ASSERT_STR_EQ("7", F.last_id[1]);
  RUN_FOR(&F.loop, 100);
  ASSERT_EQ(3, F.requests); /* no reconnect after the fatal one */
  ASSERT(!sse_stream_connected(&F.st));
  teardown();
}

static void test_idle_timeout(void) {
  sse_stream_opts o;

  setup(answer_one_then_silence);
  memset(&o, 0, sizeof o);
  o.idle_timeout = 100;
  F.stop_in_end = true;
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.ends == 1, 5000);
  ASSERT_EQ(1, F.events);
  ASSERT_EQ(HTTP_ETIMEOUT, F.end.status);
  ASSERT(F.end.failure && !F.end.fatal);
  ASSERT_STR_EQ("no data for 100 ms (idle_timeout)", F.end_why);
  teardown();
}

/* on_open refuses: a failure; stop in on_end holds the stream until the
 * next start. */
static void test_open_refused_then_stop_and_start(void) {
  sse_stream_opts o;

  setup(answer_held);
  memset(&o, 0, sizeof o);
  F.open_rc = UV_EPROTO;
  F.stop_in_end = true;
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.ends == 1, 5000);
  ASSERT_EQ(UV_EPROTO, F.end.status);
  ASSERT(F.end.failure && !F.end.fatal);
  RUN_FOR(&F.loop, 100);
  ASSERT_EQ(1, F.requests);
  F.open_rc = 0;
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.opens == 2, 5000);
  ASSERT_EQ(2, F.requests);
  ASSERT_EQ(1, F.ends);
  teardown();
}

/* drop ends the connection as a failure with the owner's words; the
 * stream reconnects. */
static void test_drop_reconnects(void) {
  sse_stream_opts o;

  setup(answer_held);
  memset(&o, 0, sizeof o);
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.opens == 1, 5000);
  sse_stream_drop(&F.st, "the topics were refused");
  RUN_UNTIL(&F.loop, F.ends == 1, 5000);
  ASSERT_EQ(UV_ECANCELED, F.end.status);
  ASSERT(F.end.failure && !F.end.fatal);
  ASSERT_STR_EQ("the topics were refused", F.end_why);
  RUN_UNTIL(&F.loop, F.opens == 2, 5000);
  ASSERT_EQ(2, F.requests);
  teardown();
}

/* A start right after a stop, while the stopped request is still ending,
 * connects once it has ended; the stop itself calls no hook. */
static void test_stop_then_start_at_once(void) {
  sse_stream_opts o;

  setup(answer_held);
  memset(&o, 0, sizeof o);
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.opens == 1, 5000);
  sse_stream_stop(&F.st);
  ASSERT(!sse_stream_connected(&F.st));
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.opens == 2, 5000);
  ASSERT_EQ(2, F.requests);
  ASSERT_EQ(0, F.ends);
  teardown();
}

/* Close with the stream open: no hook after it, the callback once. */
static void test_close_while_connected(void) {
  sse_stream_opts o;

  setup(answer_held);
  memset(&o, 0, sizeof o);
  open_stream(&o);
  sse_stream_start(&F.st);
  RUN_UNTIL(&F.loop, F.opens == 1, 5000);
  teardown();
  ASSERT_EQ(0, F.ends);
  ASSERT_EQ(1, F.requests);
}

static int short_status, short_dones;

static void on_short_done(http_req *r, int status, const http_response *resp,
                          const char *msg, void *data) {
  (void)r, (void)msg, (void)data;
  short_dones++;
  short_status = status == 0 ? resp->status : status;
}

/* The control lane: with max_connections = 1 and two streams open, a
 * short request of the upstream still goes out at once. */
static void test_streams_leave_the_pool_free(void) {
  static const http_callbacks cbs = { NULL, NULL, on_short_done };
  sse_stream_opts o;
  sse_stream second;
  http_request req;
  char err[256];

  setup(answer_held);
  memset(&o, 0, sizeof o);
  open_stream(&o);
  sse_stream_start(&F.st);
  ASSERT_EQ(0, sse_stream_init(&second, F.up, &o, &hooks, &F, err, sizeof err));
  sse_stream_start(&second);
  RUN_UNTIL(&F.loop, F.opens == 2, 5000);
  memset(&req, 0, sizeof req);
  req.method = "GET";
  snprintf(err, sizeof err, "%s/short", F.base);
  req.url = err;
  short_dones = 0;
  ASSERT_EQ(0, http_request_start(upstream_http(F.up), &req, &cbs, NULL, NULL));
  RUN_UNTIL(&F.loop, short_dones == 1, 2000);
  ASSERT_EQ(200, short_status);
  F.stream_closed = 0;
  sse_stream_close(&second, on_stream_closed, &F);
  RUN_UNTIL(&F.loop, F.stream_closed == 1, 5000);
  teardown();
}

static const test_case tests[] = {
  TEST(test_events_controls_and_resume),
  TEST(test_resume_by_query),
  TEST(test_backpressure),
  TEST(test_retry_hint),
  TEST(test_refusals),
  TEST(test_poison_event),
  TEST(test_idle_timeout),
  TEST(test_open_refused_then_stop_and_start),
  TEST(test_drop_reconnects),
  TEST(test_stop_then_start_at_once),
  TEST(test_close_while_connected),
  TEST(test_streams_leave_the_pool_free),
  { NULL, NULL },
};

TEST_MAIN(tests)
