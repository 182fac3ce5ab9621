/* The NDJSON envelope every sink receives, one JSON object per line:
 *
 *   {"consumer":"orders","seq":42,"cursor":"...","event":"create",
 *    "kind":"orders","time":"2026-01-02T10:00:00.000Z","data":{...}}
 *
 * data is embedded as it came when the source vouches that it is JSON, and
 * encoded as a JSON string otherwise. Strings are escaped per RFC 8259; bytes
 * that are not valid UTF-8 become U+FFFD, so every line is valid JSON.
 */
#ifndef TETHER_PROTOCOL_ENVELOPE_H
#define TETHER_PROTOCOL_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/buf.h"

/* The constant start of every line of one consumer, escaped once. */
typedef struct envelope_prefix {
  char *data; /* owned; {"consumer":"NAME","seq": */
  size_t len;
} envelope_prefix;

typedef struct envelope {
  uint64_t seq;
  const char *cursor; /* the position after this event */
  size_t cursor_len;
  const char *event; /* NUL-terminated */
  const char *kind;  /* NUL-terminated */
  const char *time;  /* RFC 3339 text, NUL-terminated */
  const char *data;
  size_t data_len;
  bool data_is_json;
} envelope;

/* 0 or UV_ENOMEM. */
int envelope_prefix_init(envelope_prefix *p, const char *consumer);
void envelope_prefix_free(envelope_prefix *p);

/* Appends one line, newline included. 0, UV_ENOMEM or UV_ENOBUFS (the
 * buffer's cap); on error out is left as it was. */
int envelope_append(buf *out, const envelope_prefix *p, const envelope *e);

/* True when s[0..n) is one RFC 8259 JSON text (any value, surrounded by
 * optional whitespace) made of valid UTF-8, nested at most 256 deep: then
 * it may be embedded as data as it is. Never allocates. */
bool envelope_is_json(const char *s, size_t n);

/* Appends s as a JSON string, quotes included. */
int envelope_append_json_string(buf *out, const char *s, size_t len);

/* Writes v in decimal at out (room for 20 bytes, no NUL) and returns the
 * number of digits. */
size_t envelope_put_u64(char *out, uint64_t v);

/* Formats Unix milliseconds as 2026-01-02T10:00:00.000Z (24 bytes and a
 * NUL; out must hold 25). */
void envelope_format_time(int64_t unix_ms, char *out);

#endif
