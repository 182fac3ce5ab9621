/* daemon/sources/http_source with several requests at once, against a fake
 * consumer and upstream (an HTTP client of the test's own) and a local
 * server (loop/http_server on TCP) that answers some paths and holds
 * others: close cancels every request, each on_done runs once and sees the
 * source closing, and the source is freed (and the consumer told) only
 * after the last one. */
#include "daemon/sources/http_source.c"

#include <signal.h>

#include "loop/http_server.h"
#include "tests/unit/test.h"
#include "tests/unit/test_uv.h"

/* ---- fake upstream ------------------------------------------------------ */

struct upstream {
  uv_loop_t *loop;
  http_client *client;
  http_upstream_conf hc;
};

http_client *upstream_http(upstream *up) {
  return up->client;
}

const http_upstream_conf *upstream_http_conf(const upstream *up) {
  return &up->hc;
}

uv_loop_t *upstream_loop(const upstream *up) {
  return up->loop;
}

void upstream_backoff_init(const upstream *up, backoff *b) {
  backoff_init(b, up->hc.reconnect_min, up->hc.reconnect_max, 0, 1);
}

backoff_budget *upstream_budget(void) {
  static backoff_budget bb;
  static bool ready;

  if (!ready) {
    backoff_budget_init(&bb, 1000, 1000);
    ready = true;
  }
  return &bb;
}

/* ---- fake consumer ------------------------------------------------------ */

struct consumer {
  uv_loop_t *loop;
  upstream *up;
  int closed, failed, backoffs;
};

uv_loop_t *consumer_loop(const consumer *c) {
  return c->loop;
}

upstream *consumer_upstream(const consumer *c) {
  return c->up;
}

void consumer_source_closed(consumer *c) {
  c->closed++;
}

void consumer_source_failed(consumer *c, const char *why) {
  (void)why;
  c->failed++;
}

void consumer_source_backoff(consumer *c, uint64_t delay_ms, unsigned attempt,
                             const char *why) {
  (void)delay_ms, (void)attempt, (void)why;
  c->backoffs++;
}

/* ---- fixture ------------------------------------------------------------ */

#define MAX_REQS 8

static const source_type fake_source = { .name = "fake" };

static struct {
  uv_loop_t loop;
  http_server *srv;
  char base[64];
  upstream up;
  consumer c;
  http_source *hs;
  int frees;
  int closed; /* the upstream and the server */
  /* per request: on_done calls, its status, whether the source was
   * closing then, and whether it was freed already (it must not be) */
  int dones[MAX_REQS], status[MAX_REQS];
  bool ended[MAX_REQS], freed_before[MAX_REQS];
  int close_in_done; /* request index whose on_done closes the source */
} F;

static void handler(http_conn *c, const http_srv_request *req, void *data) {
  (void)data;
  if (strcmp(req->target, "/hold") != 0)
    http_conn_respond(c, 200, "text/plain", NULL, 0, "ok", 2);
  /* /hold: never answered; the client's cancel closes it */
}

static void free_fn(http_source *hs) {
  ASSERT(hs == F.hs);
  F.frees++;
  free(hs);
}

static void on_done(http_req *r, int status, const http_response *resp,
                    const char *msg, void *data) {
  int i = (int)(intptr_t)data;

  (void)r, (void)resp, (void)msg;
  ASSERT(i >= 0 && i < MAX_REQS);
  F.dones[i]++;
  F.status[i] = status;
  F.freed_before[i] = F.frees > 0;
  F.ended[i] = http_source_ended(F.hs);
  if (i == F.close_in_done && !F.ended[i])
    http_source_close(&F.hs->base);
}

static const http_callbacks cbs = { NULL, NULL, on_done };

static void on_env_closed(void *data) {
  (void)data;
  F.closed++;
}

static void setup(void) {
  http_client_opts co;
  http_server_opts so;
  char err[256] = "";

  signal(SIGPIPE, SIG_IGN);
  memset(&F, 0, sizeof F);
  F.close_in_done = -1;
  ASSERT_EQ(0, uv_loop_init(&F.loop));
  memset(&so, 0, sizeof so);
  so.tcp_host = "127.0.0.1";
  ASSERT_EQ(0, http_server_start(&F.loop, &so, handler, NULL, &F.srv, err,
                                 sizeof err));
  snprintf(F.base, sizeof F.base, "http://127.0.0.1:%u",
           (unsigned)http_server_tcp_port(F.srv));
  F.up.loop = &F.loop;
  F.up.hc.reconnect_min = 10;
  F.up.hc.reconnect_max = 200;
  memset(&co, 0, sizeof co);
  co.max_connections = 4;
  co.connect_timeout = 2000;
  ASSERT_EQ(0, http_client_create(&F.loop, &co, &F.up.client, err, sizeof err));
  F.c.loop = &F.loop;
  F.c.up = &F.up;
  F.hs = calloc(1, sizeof *F.hs);
  ASSERT(F.hs != NULL);
  http_source_init(F.hs, &fake_source, &F.c, free_fn);
}

static void teardown(void) {
  http_client_close(F.up.client, on_env_closed, NULL);
  http_server_close(F.srv, on_env_closed, NULL);
  RUN_UNTIL(&F.loop, F.closed == 2, 5000);
  RUN_UNTIL(&F.loop, !uv_loop_alive(&F.loop), 5000);
  ASSERT_EQ(0, uv_loop_close(&F.loop));
}

static void start(int i, const char *path) {
  http_request req;
  char url[128];
  http_req *r = NULL;

  memset(&req, 0, sizeof req);
  req.method = "GET";
  snprintf(url, sizeof url, "%s%s", F.base, path);
  req.url = url;
  ASSERT_EQ(0, http_source_request(F.hs, &req, &cbs, (void *)(intptr_t)i, &r));
  ASSERT(r != NULL);
}

/* ---- tests -------------------------------------------------------------- */

/* Two requests held, one answered: the answered one ends on its own while
 * the others run; close cancels both held ones, each on_done sees the
 * source closing, and the source is freed once, after the last. */
static void test_close_cancels_every_request(void) {
  setup();
  start(0, "/hold");
  start(1, "/hold");
  start(2, "/ok");
  ASSERT_EQ(3, http_source_requests(F.hs));
  RUN_UNTIL(&F.loop, F.dones[2] == 1, 5000);
  ASSERT_EQ(0, F.status[2]);
  ASSERT(!F.ended[2]);
  ASSERT_EQ(2, http_source_requests(F.hs));
  http_source_close(&F.hs->base);
  ASSERT_EQ(0, F.dones[0] + F.dones[1]); /* on a later turn */
  RUN_UNTIL(&F.loop, F.c.closed == 1, 5000);
  ASSERT_EQ(1, F.dones[0]);
  ASSERT_EQ(1, F.dones[1]);
  ASSERT_EQ(UV_ECANCELED, F.status[0]);
  ASSERT_EQ(UV_ECANCELED, F.status[1]);
  ASSERT(F.ended[0] && F.ended[1]);
  ASSERT(!F.freed_before[0] && !F.freed_before[1]);
  ASSERT_EQ(1, F.frees);
  teardown();
}

/* A close from inside one request's on_done (a source that finishes its
 * last write, then closes) cancels the rest and frees after them. */
static void test_close_from_an_on_done(void) {
  setup();
  start(0, "/hold");
  start(1, "/ok");
  F.close_in_done = 1;
  RUN_UNTIL(&F.loop, F.c.closed == 1, 5000);
  ASSERT_EQ(1, F.dones[1]);
  ASSERT(!F.ended[1]);
  ASSERT_EQ(1, F.dones[0]);
  ASSERT_EQ(UV_ECANCELED, F.status[0]);
  ASSERT(F.ended[0] && !F.freed_before[0]);
  ASSERT_EQ(1, F.frees);
  teardown();
}

/* With nothing in flight the source closes on a later turn. */
static void test_close_with_no_request(void) {
  setup();
  start(0, "/ok");
  RUN_UNTIL(&F.loop, F.dones[0] == 1, 5000);
  ASSERT_EQ(0, http_source_requests(F.hs));
  http_source_close(&F.hs->base);
  ASSERT_EQ(0, F.frees); /* never inside the call */
  RUN_UNTIL(&F.loop, F.c.closed == 1, 5000);
  ASSERT_EQ(1, F.frees);
  teardown();
}

static const test_case tests[] = {
  TEST(test_close_cancels_every_request),
  TEST(test_close_from_an_on_done),
  TEST(test_close_with_no_request),
  { NULL, NULL },
};

TEST_MAIN(tests)
