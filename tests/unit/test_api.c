/* daemon/api: how it answers names and bytes it cannot use. The module is
 * included whole to reach its static helpers (percent-decoding, the error
 * answers, the router); requests go through the HTTP server's socketless
 * connection (loop/http_srv_test.h) to an API with no consumers and no
 * store, which is all a request for an unknown name may touch. */
#include "daemon/api.c"

#include "loop/http_srv_test.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- A fixture: a server without listeners, routed to api.c ------------- */

typedef void (*handler_fn)(http_conn *c, const http_srv_request *r, api *a);

typedef struct fx {
  uv_loop_t loop;
  http_server *s;
  api a;
  handler_fn handler; /* NULL: the API's router */
  buf out;            /* what the server wrote */
  bool closed;
} fx;

static fx F;

static const char *phase_running(void *data) {
  (void)data;
  return "running";
}

static void fx_on_request(http_conn *c, const http_srv_request *r, void *data) {
  fx *f = data;

  if (f->handler != NULL)
    f->handler(c, r, &f->a);
  else
    route(c, r, &f->a);
}

static void fx_init(fx *f, handler_fn handler) {
  http_server_opts o;
  char err[256] = "";

  memset(f, 0, sizeof *f);
  ASSERT_EQ(0, uv_loop_init(&f->loop));
  f->a.loop = &f->loop;
  f->a.env.phase = phase_running;
  f->handler = handler;
  buf_init(&f->out, 0);
  memset(&o, 0, sizeof o);
  ASSERT_EQ(0, http_server_start(&f->loop, &o, fx_on_request, f, &f->s, err,
                                 sizeof err));
  ASSERT_EQ(0, http__server_fake_open(f->s, &f->out));
}

static void fx_on_closed(void *data) {
  ((fx *)data)->closed = true;
}

static void fx_finish(fx *f) {
  http_server_close(f->s, fx_on_closed, f);
  RUN_UNTIL(&f->loop, f->closed, 2000);
  RUN_UNTIL(&f->loop, !uv_loop_alive(&f->loop), 2000);
  ASSERT_EQ(0, uv_loop_close(&f->loop));
  buf_free(&f->out);
}

typedef struct answer {
  int status;
  json_t *body; /* parsed; NULL when it is not JSON in UTF-8 */
} answer;

/* Sends one request for target (any bytes) and parses its answer, which
 * must be whole JSON: jansson refuses a text that is not UTF-8. */
static answer ask(fx *f, const char *method, const char *target) {
  char head[512];
  const char *text, *body;
  answer an = { 0, NULL };
  int n;

  buf_reset(&f->out);
  n = snprintf(head, sizeof head,
               "%s %s HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", method,
               target);
  ASSERT(n > 0 && (size_t)n < sizeof head);
  ASSERT_EQ(0, http__server_fake_feed(f->s, head, (size_t)n));
  RUN_UNTIL(&f->loop, !http__server_fake_pending(f->s), 2000);
  text = buf_cstr(&f->out);
  ASSERT(text != NULL);
  ASSERT_EQ(1, sscanf(text, "HTTP/1.1 %d", &an.status));
  body = strstr(text, "\r\n\r\n");
  ASSERT(body != NULL);
  an.body = json_loads(body + 4, 0, NULL);
  ASSERT(an.body != NULL);
  return an;
}

static const char *error_field(const answer *an, const char *field) {
  json_t *e = json_object_get(an->body, "error");

  ASSERT(json_is_object(e));
  ASSERT_EQ(2, json_object_size(e));
  return json_string_value(json_object_get(e, field));
}

/* The answer is status with {"error":{"code":code,"message":msg}}. */
static void assert_error(answer an, int status, const char *code,
                         const char *msg) {
  ASSERT_EQ(status, an.status);
  ASSERT_STR_EQ(code, error_field(&an, "code"));
  ASSERT_STR_EQ(msg, error_field(&an, "message"));
  json_decref(an.body);
}

/* ---- Percent-decoding ---------------------------------------------------- */

static void test_pct_decode(void) {
  static const struct {
    const char *in;
    bool query;
    int rc;
    const char *out;
  } v[] = {
    { "gen", false, 0, "gen" },
    { "%ff%FE", false, 0, "\xff\xfe" },
    { "a%2Fb", false, 0, "a/b" },
    { "a+b", false, 0, "a+b" },
    { "a+b", true, 0, "a b" },
    { "%zz", false, UV_EINVAL, NULL },
    { "%f", false, UV_EINVAL, NULL },
    { "ab%", false, UV_EINVAL, NULL },
    { "gen%00x", false, UV_EILSEQ, NULL },
    { "%00", true, UV_EILSEQ, NULL },
  };
  size_t i;
  char *out;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    printf("# %s\n", v[i].in);
    ASSERT_EQ(v[i].rc, pct_decode(v[i].in, strlen(v[i].in), v[i].query, &out));
    ASSERT_STR_EQ(v[i].out, out);
    free(out);
  }
}

static void test_printable(void) {
  char out[16];

  ASSERT_STR_EQ("gen", printable("gen", out, sizeof out));
  ASSERT_STR_EQ("%FF%FE", printable("\xff\xfe", out, sizeof out));
  ASSERT_STR_EQ("a b%25%0A", printable("a b%\n", out, sizeof out));
  /* Cut short, and says so. */
  ASSERT_STR_EQ("%FF%FF%FF%FF...",
                printable("\xff\xff\xff\xff\xff\xff", out, sizeof out));
  ASSERT_STR_EQ("abcdefghij...",
                printable("abcdefghijklmnopqrstu", out, sizeof out));
}

/* ---- Answers ------------------------------------------------------------- */

static void reply_bad_utf8(http_conn *c, const http_srv_request *r, api *a) {
  (void)a;
  if (strcmp(r->target, "/unbuilt") == 0)
    respond_json(c, 200, NULL); /* what json_pack gives for "\xff" */
  else
    error_reply(c, 404, "consumer_not_found", "no consumer named %s",
                "\xff\xfe!");
}

/* A message holding bytes that are not UTF-8 is still answered as asked;
 * an answer that could not be built is not called out of memory. */
static void test_error_reply_any_bytes(void) {
  fx *f = &F;

  fx_init(f, reply_bad_utf8);
  assert_error(ask(f, "GET", "/x"), 404, "consumer_not_found",
               "no consumer named \xEF\xBF\xBD\xEF\xBF\xBD!");
  assert_error(ask(f, "GET", "/unbuilt"), 500, "internal",
               "the answer could not be encoded as JSON");
  fx_finish(f);
}

/* ---- Routes that take a name -------------------------------------------- */

static void test_names_not_utf8_are_unknown(void) {
  static const char *const names[] = { "%ff%fe", "\xff\xfe", "gen%ff", "%c3%28",
                                       "\xe2\x82" };
  static const char *const shown[] = { "%FF%FE", "%FF%FE", "gen%FF", "%C3(",
                                       "%E2%82" };
  static const struct {
    const char *method, *suffix;
  } routes[] = { { "GET", "" },
                 { "POST", "/pause" },
                 { "POST", "/resume" },
                 { "GET", "/events" },
                 { "POST", "/ack" } };
  fx *f = &F;
  char target[128], msg[128], seen[128];
  size_t i, j;

  fx_init(f, NULL);
  for (i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(msg, sizeof msg, "no consumer named %s", shown[i]);
    for (j = 0; j < sizeof routes / sizeof routes[0]; j++) {
      snprintf(target, sizeof target, "/v1/consumers/%s%s", names[i],
               routes[j].suffix);
      printf("# %s %s\n", routes[j].method,
             printable(target, seen, sizeof seen));
      assert_error(ask(f, routes[j].method, target), 404, "consumer_not_found",
                   msg);
    }
  }
  fx_finish(f);
}

static void test_bytes_no_name_may_hold(void) {
  fx *f = &F;

  fx_init(f, NULL);
  assert_error(ask(f, "GET", "/v1/\xff"), 404, "not_found",
               "no endpoint GET /v1/%FF");
  /* %00 would cut the name short: gen%00x is not gen. */
  assert_error(ask(f, "GET", "/v1/consumers/gen%00x"), 400, "bad_request",
               "the path has %00 (a NUL byte), which no name or value may "
               "hold");
  assert_error(ask(f, "GET", "/v1/consumers/%zz"), 400, "bad_request",
               "the path has a bad percent escape (% and two hex digits)");
  /* A filter that cannot be decoded is refused, never dropped. */
  assert_error(ask(f, "GET", "/v1/cursors?consumer_id=%zz"), 400, "bad_request",
               "query parameter consumer_id has a bad percent escape (% and "
               "two hex digits)");
  assert_error(ask(f, "GET", "/v1/cursors?stream_name=a%00"), 400,
               "bad_request",
               "query parameter stream_name has %00 (a NUL byte), which no "
               "name or value may hold");
  assert_error(ask(f, "GET", "/v1/cursors?limit=%ff"), 400, "invalid_cursor",
               "limit = \"%FF\": expected an integer 0..1000 (0 = the "
               "default, 100)");
  fx_finish(f);
}

static const test_case tests[] = { TEST(test_pct_decode),
                                   TEST(test_printable),
                                   TEST(test_error_reply_any_bytes),
                                   TEST(test_names_not_utf8_are_unknown),
                                   TEST(test_bytes_no_name_may_hold),
                                   { NULL, NULL } };
TEST_MAIN(tests)
