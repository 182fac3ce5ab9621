/* RFC 6901 JSON Pointer over jansson, compiled once at config time.
 *
 *   jsonptr p;
 *   char err[256];
 *   if (jsonptr_parse("/results", 8, &p, err, sizeof err) != 0) ... report err
 *   json_t *items = jsonptr_get(&p, doc);          (borrowed from doc)
 *   jsonptr_free(&p);
 *
 * A pointer is "" (the whole document) or a sequence of "/token". Each token
 * is unescaped once at parse time ("~1" -> "/", then "~0" -> "~"), so lookups
 * do no string work. Tokens are length-counted: a member name may hold NUL
 * and any other byte, and it is compared byte for byte (json_object_getn).
 * On an array, a token is an index only when it is "0" or a digit 1-9
 * followed by digits, base 10; "-" (past the end) never names an element
 * when reading.
 *
 * The pointer is written raw, as in an INI value: no JSON escaping and no
 * "#" fragment form. Pure: no I/O, no global state.
 */
#ifndef TETHER_PROTOCOL_JSONPTR_H
#define TETHER_PROTOCOL_JSONPTR_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "protocol/buf.h"

/* One reference token, read-only for callers. */
typedef struct jsonptr_token {
  const char *name; /* unescaped bytes, NUL-terminated after len; owned by
                       the jsonptr */
  size_t len;
  size_t end;    /* offset in jsonptr.text just past this token's escaped
                    form, so text[0..end) is the pointer to this value */
  bool is_index; /* "0" or [1-9][0-9]*: usable on an array */
  size_t index;  /* when is_index; saturated at SIZE_MAX on overflow, which
                    no array reaches, so it reads as past the end */
} jsonptr_token;

/* A compiled pointer. Embeddable: keep it by value, set it up with
 * jsonptr_parse and release it with jsonptr_free. All fields are read-only. */
typedef struct jsonptr {
  jsonptr_token *tokens; /* owned; one block with text and the names, freed
                            by jsonptr_free; never NULL after a parse */
  size_t n;              /* number of tokens; 0 = the whole document */
  const char *text;      /* the pointer as written, NUL-terminated after
                            text_len (it may hold NUL itself) */
  size_t text_len;
} jsonptr;

/* Compiles len bytes of text (NULL is allowed when len is 0). Returns 0,
 * UV_EINVAL for a syntax error (a non-empty pointer that does not start with
 * "/", or "~" not followed by "0" or "1"; err names the byte offset), or
 * UV_ENOMEM. On error *out is zeroed, so jsonptr_free on it is harmless. text
 * is borrowed for the call. err may be NULL. */
int jsonptr_parse(const char *text, size_t len, jsonptr *out, char *err,
                  size_t errlen);

/* Releases what jsonptr_parse took and zeroes *p. Safe on a zeroed struct
 * and twice in a row. */
void jsonptr_free(jsonptr *p);

/* The value p names in doc, borrowed from doc (no reference taken), or NULL
 * when it names nothing or doc is NULL. */
json_t *jsonptr_get(const jsonptr *p, json_t *doc);

/* Like jsonptr_get, and says why a lookup fails. On success *out is the
 * borrowed value and 0 is returned. Otherwise *out is NULL, err says which
 * token failed and why, and the result is
 *   UV_ENOENT  no member "results" [at /a]
 *              index 3 past the end (length 2) [at /foo]
 *              "-" names no element [at /foo]
 *   UV_EINVAL  "01" is not an array index [at /foo]
 *              not an object or array at /a   (the document itself: "the
 *              document is not an object or array")
 *              no document                    (doc is NULL)
 * " at PREFIX" is the pointer as written up to the container; it is left
 * out when the container is the document itself. Names and prefixes are
 * quoted with control bytes, '"' and '\' escaped, and shortened past 64
 * bytes. *fail_token, when not NULL, gets the index of the failing token (0
 * for no document, n on success). err may be NULL. */
int jsonptr_resolve(const jsonptr *p, json_t *doc, json_t **out,
                    size_t *fail_token, char *err, size_t errlen);

/* Appends the cursor text of a JSON value to out, as http-poll reads a
 * cursor: a string as is (its bytes, NUL included), an integer in decimal,
 * true/false/null/arrays/objects as compact JSON text (members in document
 * order). A real is rejected: its text is not a faithful cursor. Returns 0,
 * UV_EINVAL (v is a real or NULL; err says so), or out's UV_ENOMEM or
 * UV_ENOBUFS. On error out keeps its previous length. v is borrowed for the
 * call. err may be NULL. */
int jsonptr_cursor_append(const json_t *v, buf *out, char *err, size_t errlen);

#endif
