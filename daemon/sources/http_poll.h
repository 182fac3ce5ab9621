/* Source `http-poll`: a JSON REST collection or changes feed read in pages,
 * its cursor taken by JSON pointer. Consumer options; the upstream holds the
 * origin, TLS and headers. */
#ifndef TETHER_DAEMON_SOURCES_HTTP_POLL_H
#define TETHER_DAEMON_SOURCES_HTTP_POLL_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/source.h"

enum { POLL_EXCLUSIVE, POLL_INCLUSIVE };
enum { POLL_MODE_POLL, POLL_MODE_LONGPOLL };

typedef struct http_poll_conf {
  char *path;           /* request target template with {cursor} */
  char *cursor_initial; /* the cursor before the first commit */
  char *items;          /* pointer to the item array; "" = the body */
  char *item_cursor;    /* pointer inside each item, or "" */
  char *page_cursor;    /* pointer inside the response, or "" */
  char *item_id;        /* pointer to a unique id per item, or "" */
  int cursor_bound;     /* POLL_EXCLUSIVE or POLL_INCLUSIVE */
  int64_t page_size;    /* the limit written in path; 0 = unknown */
  char *more;           /* pointer to "keep paging" (CouchDB /pending) */
  int mode;             /* POLL_MODE_* */
  uint64_t poll_interval;
  uint64_t request_timeout;
  uint64_t max_page_size; /* bytes of one response body */
  bool follow_next;       /* follow Link: rel="next" within a cycle */
  bool conditional;       /* If-None-Match with the last ETag */
  char *event;            /* the envelope's event name */
  char *tuning_params;    /* query names left out of the stream's identity */
} http_poll_conf;

extern const source_type source_http_poll;

#endif
