/* Internal to loop/http_server.c: one connection without a socket, for the
 * fuzz target and the unit tests. Not an API for other modules.
 *
 * The connection is the server's own (the same parser, dispatch, pipelining,
 * responses, timers and errors); only the transport is replaced. Bytes fed
 * wait on a "wire" and are read from it on later loop turns, at most one
 * read buffer per turn and only while the connection reads, as a socket
 * would deliver them; what the server writes is appended to out at once,
 * and each write completes on a later turn.
 *
 *   http_server_start(loop, &o_without_listeners, handler, ud, &s, ...);
 *   http__server_fake_open(s, &out);
 *   http__server_fake_feed(s, bytes, n);
 *   while (http__server_fake_pending(s))
 *     uv_run(loop, UV_RUN_NOWAIT);
 *   http__server_fake_eof(s); ... run again ...
 *   http_server_close(s, cb, ud);
 */
#ifndef TETHER_LOOP_HTTP_SRV_TEST_H
#define TETHER_LOOP_HTTP_SRV_TEST_H

#include <stdbool.h>
#include <stddef.h>

#include "loop/http_server.h"
#include "protocol/buf.h"

/* Opens the socketless connection of s (one at a time). Everything the
 * server writes to it is appended to out, borrowed until the connection
 * closes. The peer credentials are those of the process. Returns 0,
 * UV_EBUSY (one is open, or the server is closing) or UV_ENOMEM. */
int http__server_fake_open(http_server *s, buf *out);

/* The client sends data[0..len) (copied). Ignored once the connection
 * closed. Returns 0 or UV_ENOMEM. */
int http__server_fake_feed(http_server *s, const char *data, size_t len);

/* The client closes its side: EOF once the wire is read. */
void http__server_fake_eof(http_server *s);

/* True while a loop turn has work for the connection: writes to complete,
 * bytes or EOF it is ready to read, a step deferred to the next turn. */
bool http__server_fake_pending(const http_server *s);

/* True while the socketless connection is open. */
bool http__server_fake_open_p(const http_server *s);

#endif
