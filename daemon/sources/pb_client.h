/* What the consumers of one PocketBase upstream share: the auth token (with
 * its refresh before exp and the re-authentication after a 401/403), the
 * server's clock read from Date headers, and the one realtime connection
 * that carries every consumer's topic and wakes their pollers.
 *
 * Realtime is a wake-up, never a source of records (§6): an event or a new
 * PB_CONNECT only tells a poller to look now.
 */
#ifndef TETHER_DAEMON_SOURCES_PB_CLIENT_H
#define TETHER_DAEMON_SOURCES_PB_CLIENT_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "daemon/upstream.h"
#include "loop/http_client.h"
#include "loop/list.h"

typedef struct pb_client pb_client;

/* A poller waiting for a token. Embedded in the source; cb runs once, on a
 * later turn of the loop, with status 0 (pb_client_token has one now) or a
 * negative code and why (authentication failed for good). */
typedef struct pb_waiter {
  void (*cb)(struct pb_waiter *w, int status, const char *why);
  /* private */
  list _node;
  bool _queued;
} pb_waiter;

/* A poller's realtime topic. Embedded in the source. */
typedef struct pb_watch {
  const char *topic; /* "COLLECTION/ *" without the space; borrowed */
  /* A record event on the topic; created_ms is the record's created (0 =
   * unknown). */
  void (*on_event)(struct pb_watch *w, int64_t created_ms);
  /* The stream (re)connected and the topics are subscribed: poll now to
   * catch up on what the gap hid. */
  void (*on_connect)(struct pb_watch *w);
  /* private */
  list _node;
} pb_watch;

/* The runtime of an upstream of type pocketbase (upstream_type.ext_open and
 * ext_close). */
int pb_client_open(upstream *up, void **ext, char *err, size_t errlen);
void pb_client_close(void *ext, void (*cb)(void *data), void *data);

pb_client *pb_client_of(upstream *up);

/* The base URL without a trailing slash, for request targets "/api/...". */
const char *pb_client_base(const pb_client *pc);
/* True once a superuser login fell back to /api/admins (≤ v0.22). */
bool pb_client_legacy(const pb_client *pc);

/* A request to the server, made ready by pb_client_prepare: req points
 * into the rest, so it is started from here (http_request_start or
 * http_source_request, which copy it), then freed. */
typedef struct pb_request {
  http_request req;
  /* private */
  http_header _headers[64];
  char *_url;
} pb_request;

/* Makes method on base + path ("/api/...") with the JSON body (or NULL),
 * the token (or NULL) and the upstream's headers; everything is borrowed
 * until the request is started. Returns 0 or UV_ENOMEM. */
int pb_client_prepare(pb_client *pc, const char *method, const char *path,
                      const char *body, size_t body_len, const char *token,
                      pb_request *out);
void pb_request_free(pb_request *r);

/* pb_client_prepare, then http_request_start. */
int pb_client_request(pb_client *pc, const char *method, const char *path,
                      const char *body, size_t body_len, const char *token,
                      const http_callbacks *cbs, void *data, http_req **out);

/* The token to send, or NULL when none is needed (auth = none). *gen
 * names the token, for pb_client_reject. Returns false when a token is
 * needed and none is ready: wait with pb_client_wait. */
bool pb_client_token(pb_client *pc, const char **token, unsigned *gen);

/* Queues w until a token is ready (starting the login if none runs). */
void pb_client_wait(pb_client *pc, pb_waiter *w);
void pb_client_cancel_wait(pb_client *pc, pb_waiter *w);

/* A request with token gen got 401 or 403: that token is dropped and a new
 * login starts (once per token). Returns false when there is nothing to
 * renew (auth = none or token): the caller fails. */
bool pb_client_reject(pb_client *pc, unsigned gen);

/* The failure that ended authentication for good, or NULL. */
const char *pb_client_auth_error(const pb_client *pc);

/* Reads the Date header of a response: the server's clock. */
void pb_client_observe(pb_client *pc, const http_response *resp);
/* A record's created (server Unix ms), seen now in an answer or an event:
 * the server's clock has reached it. */
void pb_client_observe_stamp(pb_client *pc, int64_t server_ms);
/* The server's time now, in Unix ms: the local clock corrected by the best
 * lower bound seen lately (Date headers, record stamps), erring early. */
int64_t pb_client_server_now(const pb_client *pc);
/* Unix ms on the server → ms on the loop clock (uv_now). */
uint64_t pb_client_loop_time(const pb_client *pc, int64_t server_ms);

/* Adds or removes a topic; the stream is (re)subscribed. With realtime
 * off nothing happens. */
void pb_client_watch(pb_client *pc, pb_watch *w);
void pb_client_unwatch(pb_client *pc, pb_watch *w);
/* A watch's topic string changed: the topics are posted again. */
void pb_client_topics_changed(pb_client *pc);

#endif
