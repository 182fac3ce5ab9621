/* PocketBase wire codec (protocols/pocketbase.md): request targets and
 * bodies, response parsers, datetimes, cursors and the filter rule. No I/O;
 * the source in daemon/sources/pocketbase.c joins it to the loop.
 *
 * The cursor is the compound (created, id) of the last record handed on,
 * kept as one position string "<created>|<id>" (created never holds '|').
 * With offset = id the created half is empty: "|<id>". "" is the start:
 * before every record, those with created = "" included.
 */
#ifndef TETHER_PROTOCOL_POCKETBASE_H
#define TETHER_PROTOCOL_POCKETBASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "protocol/buf.h"

/* "YYYY-MM-DD HH:MM:SS.mmmZ": a space, not T, and exactly 3 fraction
 * digits, UTC (§2.1). */
#define PB_TIME_LEN 24
/* Longest id tether accepts. */
#define PB_ID_MAX 255
/* The server refuses longer filters (§2). */
#define PB_FILTER_MAX 3500

enum { PB_OFFSET_CREATED, PB_OFFSET_ID };

/* Unix ms → the §2.1 layout; out gets PB_TIME_LEN chars and a NUL. A value
 * outside years 0000..9999 is clamped to the nearest end of that range. */
void pb_time_format(int64_t unix_ms, char out[PB_TIME_LEN + 1]);

/* The §2.1 layout (exactly PB_TIME_LEN bytes) → Unix ms. Returns 0, or
 * UV_EINVAL for anything else ("" included): 'T' for the space, no 'Z', a
 * field out of range (month 13, Feb 30, hour 24, second 60). unix_ms may be
 * NULL to only check the text. */
int pb_time_parse(const char *s, size_t len, int64_t *unix_ms);

typedef struct pb_cursor {
  char created[PB_TIME_LEN + 1]; /* "" = before every created */
  char id[PB_ID_MAX + 1];        /* "" = before every id */
} pb_cursor;

/* True when id may go into a filter: 1..PB_ID_MAX bytes, no '"', no '\\',
 * no '|' and no control byte (< 0x20 or 0x7f). */
bool pb_id_ok(const char *id, size_t len);

/* Reads a position: "" → both halves empty; "C|I" → created C ("" or the
 * §2.1 layout) and id I ("" or pb_id_ok). Anything else → UV_EINVAL with
 * the reason in err (err may be NULL). "|" reads as the start too. */
int pb_cursor_parse(const char *pos, pb_cursor *out, char *err, size_t errlen);

/* Appends "created|id" (the start as "|"). 0 or the buf error; on error
 * out keeps its previous length. */
int pb_cursor_format(const pb_cursor *c, buf *out);

/* Orders two cursors as the server's sort=created,id does (bytewise, as
 * SQLite's BINARY collation): <0, 0, >0. */
int pb_cursor_cmp(const pb_cursor *a, const pb_cursor *b);

/* Checks a user's filter against the portable rule (§2.4), so that
 * wrapping it as "(...)" cannot change what the cursor part means:
 * at most PB_FILTER_MAX - 200 bytes; no backslash and no control byte
 * anywhere (newline and tab included); every quote ('...' or "...")
 * closed; parentheses outside quotes balanced and never below zero; no
 * "//" comment outside quotes; not empty or only spaces. Returns 0, or
 * UV_EINVAL with what is wrong and the byte offset (from 0) in err; NULL
 * is refused too. err may be NULL. */
int pb_filter_check(const char *filter, char *err, size_t errlen);

/* Also the rule for a value tether quotes itself into a filter
 * (collection, consumer group): non-empty, at most PB_ID_MAX bytes, no '"',
 * no '\\', no control byte. */
bool pb_value_ok(const char *v);

typedef struct pb_list_query {
  const char *collection; /* percent-encoded into the path */
  int offset;             /* PB_OFFSET_CREATED or PB_OFFSET_ID */
  const pb_cursor *after; /* records strictly after this */
  const char *until;      /* created <= until (§2.6); NULL or "" = none;
                             ignored with PB_OFFSET_ID */
  const char *filter;     /* the user's filter (checked); NULL or "" = none */
  int64_t per_page;       /* 1..1000 */
  const char *fields;     /* NULL or "" = every field; else "id" and
                             (with PB_OFFSET_CREATED) "created" are added
                             when no entry is exactly that name; nothing
                             is added when an entry is "*" or "*:..." */
  const char *expand;     /* NULL or "" = none */
} pb_list_query;

/* Appends the request target of one poll (§2.5), starting with "/api/":
 *
 *   /api/collections/C/records?page=1&perPage=N&skipTotal=1&sort=created,id
 *     &filter=(created > "C" || (created = "C" && id > "I"))
 *             && created <= "W" && (USER)
 *     [&fields=...][&expand=...]
 *
 * With PB_OFFSET_ID: sort=id and filter id > "I" && (USER). The parts with
 * nothing to say are left out (no "created <= " without until, no "&& ()"
 * without a filter, no filter at all when both are absent and the cursor
 * is the start of an id cursor). filter, sort, fields and expand are fully
 * percent-encoded (space → %20, never '+'; only A-Z a-z 0-9 - . _ ~ are
 * left as they are, so the sort reads "created%2Cid"). The cursor's created
 * is not used with PB_OFFSET_ID. Returns 0; UV_EINVAL when the collection
 * is empty, offset is unknown, per_page is outside 1..1000, or a value for the
 * filter fails its rule (a created or until that is not the §2.1 layout, an id
 * failing pb_id_ok, a filter failing pb_filter_check), so nothing can break the
 * quoting; UV_E2BIG when the whole filter would be over PB_FILTER_MAX
 * bytes (long ids with a long user filter); or the buf error. On error out
 * keeps its previous length. All pointers are borrowed for the call. */
int pb_list_target(const pb_list_query *q, buf *out);

/* Appends a probe target: perPage=1&skipTotal=1&sort=created and nothing
 * else, to tell "no created field" from "bad filter" after a 400. The path
 * is the same as pb_list_target's. 0, UV_EINVAL for an empty collection,
 * or the buf error. */
int pb_probe_target(const char *collection, buf *out);

/* A parsed list response. */
typedef struct pb_page {
  json_t *doc;      /* owned; freed by pb_page_free */
  json_t *items;    /* borrowed from doc: an array of objects */
  int64_t per_page; /* as the server echoed it */
} pb_page;

/* Parses a 200 list body (strings may hold NUL): an object with an array
 * "items" and an integer "perPage" >= 1; every item an object with a string
 * "id" (pb_id_ok) and, when need_created, a string "created" that is "" or the
 * §2.1 layout. Items must come in strictly increasing (created, id) order, or
 * id order when !need_created; a violation is an error (the server ignored the
 * sort). Returns 0, or UV_EINVAL with the first fault in err, e.g.
 * "items[3].created: expected a datetime like \"2026-01-02 10:00:00.123Z\"".
 * On error out->doc is NULL. */
int pb_page_parse(const char *body, size_t len, bool need_created, pb_page *out,
                  char *err, size_t errlen);
void pb_page_free(pb_page *p);

/* The cursor of an item that pb_page_parse accepted: its id, and its
 * created when that is a string in the §2.1 layout ("" otherwise). With
 * PB_OFFSET_ID the caller clears created, so the position reads "|<id>". */
void pb_item_cursor(json_t *item, pb_cursor *out);

/* An error body (§5): {status|code, message, data}. Never fails: a body
 * that is not a JSON object leaves status 0 and message its first 200 bytes
 * with control bytes as spaces and the spaces at either end trimmed (a cut
 * never splits a UTF-8 sequence). message and detail are always
 * NUL-terminated and hold no control byte. A status outside 1..999 or not
 * an integer reads as 0. The detail leaf is looked for up to 4 levels into
 * data; nested names are joined with '.' ("fields.0.name: ..."). */
typedef struct pb_error {
  int status;        /* "status" (v0.23+) or "code" (≤ v0.22); 0 = none */
  char message[256]; /* "" when absent */
  char detail[256];  /* the first data leaf as "FIELD: MESSAGE (CODE)", "" */
  bool mfa;          /* a 401 body {"mfaId":...}: MFA wants a second factor */
} pb_error;
void pb_error_parse(const char *body, size_t len, pb_error *out);

/* {"identity":..,"password":..} for auth-with-password, compact. 0,
 * UV_EINVAL when a value is NULL or not UTF-8, or the buf error. */
int pb_auth_body(const char *identity, const char *password, buf *out);

/* An auth answer {"token":"...", "record"|"admin":{...}} → the token
 * (malloc'd, caller frees) and its exp claim (Unix seconds). UV_EINVAL
 * with the reason in err when there is no token or it is not a JWT with a
 * numeric exp (see pb_jwt_exp), UV_ENOMEM. */
int pb_auth_parse(const char *body, size_t len, char **token, int64_t *exp,
                  char *err, size_t errlen);

/* The exp claim of a JWT, read without checking the signature: the middle
 * part is base64url JSON (padding optional). Every byte must be base64url,
 * '.' or '=' (the token goes into a header as it is), at most 8192 bytes;
 * the header and payload parts are non-empty. A real exp is rounded down.
 * 0, or UV_EINVAL (UV_ENOMEM) with the reason; *exp is 0 on error. */
int pb_jwt_exp(const char *token, int64_t *exp, char *err, size_t errlen);

/* PB_CONNECT data {"clientId":"..."} → the id (1..255 bytes, no control
 * bytes) copied into id (size idsize, NUL-terminated). UV_EINVAL with the
 * reason, or UV_ENOBUFS when the id does not fit idsize. */
int pb_connect_parse(const char *data, size_t len, char *id, size_t idsize,
                     char *err, size_t errlen);

/* A realtime record event {"action":"...","record":{...,"created":...}}.
 * action gets the action (at most 15 bytes, NUL-terminated); created_ms
 * the record's created, or 0 when absent, empty or unparsable. UV_EINVAL
 * when the data is not such an object (action must be a string of 1..15
 * bytes with no control byte, record an object). */
int pb_event_parse(const char *data, size_t len, char action[16],
                   int64_t *created_ms);

/* {"clientId":"...","subscriptions":["t1","t2",...]}, compact; n may be 0.
 * 0, UV_EINVAL when a value is NULL or not UTF-8, or the buf error. */
int pb_subscribe_body(const char *client_id, const char *const *topics,
                      size_t n, buf *out);

/* Offset mirroring (§8 proposal). The target that finds a group's row:
 * /api/collections/M/records?page=1&perPage=1&skipTotal=1
 *   &filter=consumer_group = "G" && collection = "C"
 * (values checked with pb_value_ok by the caller; UV_EINVAL here too when
 * one fails). The filter is percent-encoded as pb_list_target's. */
int pb_mirror_find_target(const char *mirror, const char *group,
                          const char *collection, buf *out);

/* The row's body: {"consumer_group":G,"collection":C,"offset":O} plus
 * "appname":A when A is non-empty (A may be NULL). 0, UV_EINVAL when a
 * value is NULL or not UTF-8, or the buf error. */
int pb_mirror_body(const char *group, const char *collection,
                   const char *offset, const char *appname, buf *out);

/* The first item of a find answer: its record id and offset. UV_ENOENT
 * when items is empty; UV_EINVAL with the reason when malformed (offset
 * missing, not a string or holding NUL; id failing pb_id_ok); UV_ENOMEM.
 * id and offset are malloc'd (caller frees), NULL on error. The offset is
 * not checked as a position: pb_cursor_parse does that. */
int pb_mirror_parse(const char *body, size_t len, char **id, char **offset,
                    char *err, size_t errlen);

#endif
