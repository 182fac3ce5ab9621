/* The local API: HTTP/1.1 on a unix socket (and optionally a loopback TCP
 * port for probes and metrics). JSON in and out; every error is
 * {"error":{"code":"...","message":"..."}} with a fitting status.
 *
 *   GET  /v1/health                       liveness
 *   GET  /v1/ready                        503 while starting or draining
 *   GET  /v1/consumers                    state, cursor, lag, rates, errors
 *   POST /v1/consumers/{name}/pause       persisted until resume
 *   POST /v1/consumers/{name}/resume
 *   GET  /v1/consumers/{name}/events      subscribe (sink = socket)
 *   POST /v1/consumers/{name}/ack         {"seq":N} or {"seqs":[...]}
 *   GET  /v1/cursors?consumer_id=&stream_name=&subject_id=&limit=
 *   GET  /v1/cursors/{consumer_id}/{stream_name}/{subject_id}
 *   POST /v1/cursors/reset                reason required, consumer paused
 *   GET  /metrics                         Prometheus text format
 *
 * The TCP listener answers only health, ready and metrics: nothing that
 * changes state is reachable off the unix socket.
 */
#ifndef TETHER_DAEMON_API_H
#define TETHER_DAEMON_API_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "daemon/config.h"
#include "daemon/consumer.h"
#include "daemon/flusher.h"
#include "store/store.h"

typedef struct api api;

/* What the API reads and steers; borrowed for the API's life. */
typedef struct api_env {
  const config *cfg;
  consumer **consumers;
  size_t n;
  store *st;
  flusher *fl;
  /* "starting", "running" or "draining" */
  const char *(*phase)(void *data);
  void *data;
} api_env;

/* Listens on [daemon] socket (and http_listen when set). Returns 0 or a
 * negative code with the reason in err. */
int api_start(uv_loop_t *loop, const api_env *env, api **out, char *err,
              size_t errlen);

/* Closes the listeners and every connection; cb follows, then a is freed. */
void api_close(api *a, void (*cb)(void *data), void *data);

#endif
