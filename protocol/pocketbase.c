/* The PocketBase codec (shared/protocols/pocketbase.md). Everything here is
 * a pure function of its arguments: the source in daemon/sources/ does the
 * I/O and keeps the state.
 *
 * Two rules carry most of the weight. First, every value tether quotes into
 * a filter (ids, datetimes, collection and group names) is refused when it
 * holds '"', '\' or a control byte, so the quoting can never be broken and
 * the text means the same on every fexpr version (§2.4). Second, a user's
 * filter is wrapped as "(...)" only after pb_filter_check has shown that the
 * wrapping cannot change what the cursor part means.
 */
#include "protocol/pocketbase.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "protocol/errmsg.h"
#include "protocol/http.h"

/* The user's part of a filter leaves this much of PB_FILTER_MAX for the
 * cursor part. */
#define PB_USER_FILTER_MAX (PB_FILTER_MAX - 200)

/* A JWT longer than this is refused. PocketBase's tokens are a few hundred
 * bytes; the cap keeps a hostile answer from sizing our copies. */
#define PB_TOKEN_MAX 8192

/* How many bytes of an offending value a message shows. */
#define PB_SHOW_MAX 64
/* Room for PB_SHOW_MAX bytes escaped as \xNN, two quotes, "..." and NUL. */
#define PB_SHOWN_SIZE (4 * PB_SHOW_MAX + 8)

/* How deep pb_error_parse looks into "data" for a leaf. Validation errors
 * are one level deep; lists of sub-objects add two more. */
#define PB_DATA_DEPTH 4

/* A non-JSON error body shows at most this many bytes. */
#define PB_BODY_SHOW 200

/* The oldest and newest instants the §2.1 layout can write:
 * 0000-01-01 00:00:00.000Z and 9999-12-31 23:59:59.999Z. */
#define PB_MS_MIN (-62167219200000LL)
#define PB_MS_MAX 253402300799999LL

#define MS_PER_DAY 86400000LL
/* Days from 0000-01-01 to 1970-01-01 in the proleptic Gregorian calendar. */
#define EPOCH_DAYS 719528LL

static const char shape[] = "\"2026-01-02 10:00:00.123Z\"";

/* Quotes up to PB_SHOW_MAX bytes of s into out (PB_SHOWN_SIZE bytes) so a
 * message stays one printable line: control bytes become \xNN, '"' and '\'
 * are escaped, and a cut is marked with "...". */
static const char *show(char *out, const char *s, size_t len) {
  size_t i, o = 0, n = len < PB_SHOW_MAX ? len : PB_SHOW_MAX;

  out[o++] = '"';
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];

    if (c < 0x20 || c == 0x7f) {
      o += (size_t)snprintf(out + o, 5, "\\x%02X", c);
    } else {
      if (c == '"' || c == '\\')
        out[o++] = '\\';
      out[o++] = (char)c;
    }
  }
  out[o++] = '"';
  if (n < len) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

static bool is_control(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

/* Copies n bytes of s into dst (size dstsize) as one printable line:
 * control bytes become spaces, and a cut never splits a UTF-8 sequence. */
static void copy_line(char *dst, size_t dstsize, const char *s, size_t n) {
  size_t i, back;

  if (n >= dstsize) {
    n = dstsize - 1;
    /* Step back over continuation bytes to the start of the cut sequence;
     * a sequence has at most three, so stray ones are cut like any byte. */
    for (back = 0; back < 3 && n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80;
         back++)
      n--;
  }
  for (i = 0; i < n; i++)
    dst[i] = is_control((unsigned char)s[i]) ? ' ' : s[i];
  dst[n] = '\0';
}

/* ---- Datetimes (§2.1) ---------------------------------------------------- */

static bool is_leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days in the years 0 .. y-1, for y >= 0 (year 0 is a leap year). */
static int64_t days_before_year(int64_t y) {
  return 365 * y + (y + 3) / 4 - (y + 99) / 100 + (y + 399) / 400;
}

static const int month_start[2][13] = {
  { 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365 },
  { 0, 31, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335, 366 },
};

/* Writes v (0 <= v < 10^n) as exactly n digits. */
static void put_digits(char *out, int v, int n) {
  while (n-- > 0) {
    out[n] = (char)('0' + v % 10);
    v /= 10;
  }
}

void pb_time_format(int64_t unix_ms, char out[PB_TIME_LEN + 1]) {
  int64_t ms, days, y, doy;
  int m, leap, rest;

  if (unix_ms < PB_MS_MIN)
    unix_ms = PB_MS_MIN;
  if (unix_ms > PB_MS_MAX)
    unix_ms = PB_MS_MAX;
  ms = unix_ms - PB_MS_MIN; /* from 0000-01-01, never negative */
  days = ms / MS_PER_DAY;
  rest = (int)(ms % MS_PER_DAY);

  /* 146097 days make 400 years, so this guess is off by at most one. */
  y = days * 400 / 146097;
  while (days_before_year(y + 1) <= days)
    y++;
  while (days_before_year(y) > days)
    y--;
  doy = days - days_before_year(y);
  leap = is_leap(y);
  for (m = 1; m < 12 && month_start[leap][m] <= doy; m++)
    ;
  memcpy(out, "0000-00-00 00:00:00.000Z", PB_TIME_LEN + 1);
  put_digits(out, (int)y, 4);
  put_digits(out + 5, m, 2);
  put_digits(out + 8, (int)(doy - month_start[leap][m - 1]) + 1, 2);
  put_digits(out + 11, rest / 3600000, 2);
  put_digits(out + 14, rest / 60000 % 60, 2);
  put_digits(out + 17, rest / 1000 % 60, 2);
  put_digits(out + 20, rest % 1000, 3);
}

/* n ASCII digits at s as a number, or -1. */
static int digits(const char *s, int n) {
  int v = 0;

  for (; n > 0; n--, s++) {
    if (*s < '0' || *s > '9')
      return -1;
    v = v * 10 + (*s - '0');
  }
  return v;
}

int pb_time_parse(const char *s, size_t len, int64_t *unix_ms) {
  int y, mo, d, h, mi, sec, ms, leap;
  int64_t days;

  if (s == NULL || len != PB_TIME_LEN || s[4] != '-' || s[7] != '-' ||
      s[10] != ' ' || s[13] != ':' || s[16] != ':' || s[19] != '.' ||
      s[23] != 'Z')
    return UV_EINVAL;
  y = digits(s, 4);
  mo = digits(s + 5, 2);
  d = digits(s + 8, 2);
  h = digits(s + 11, 2);
  mi = digits(s + 14, 2);
  sec = digits(s + 17, 2);
  ms = digits(s + 20, 3);
  if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 || mi < 0 ||
      mi > 59 || sec < 0 || sec > 59 || ms < 0)
    return UV_EINVAL;
  leap = is_leap(y);
  if (d > month_start[leap][mo] - month_start[leap][mo - 1])
    return UV_EINVAL;
  days = days_before_year(y) + month_start[leap][mo - 1] + (d - 1);
  if (unix_ms != NULL)
    *unix_ms = (days - EPOCH_DAYS) * MS_PER_DAY + h * 3600000LL + mi * 60000LL +
               sec * 1000LL + ms;
  return 0;
}

/* ---- Cursors ------------------------------------------------------------- */

bool pb_id_ok(const char *id, size_t len) {
  size_t i;

  if (id == NULL || len == 0 || len > PB_ID_MAX)
    return false;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)id[i];
    if (c == '"' || c == '\\' || c == '|' || is_control(c))
      return false;
  }
  return true;
}

bool pb_value_ok(const char *v) {
  size_t i;

  if (v == NULL || v[0] == '\0')
    return false;
  for (i = 0; v[i] != '\0'; i++) {
    unsigned char c = (unsigned char)v[i];
    if (i == PB_ID_MAX || c == '"' || c == '\\' || is_control(c))
      return false;
  }
  return true;
}

int pb_cursor_parse(const char *pos, pb_cursor *out, char *err, size_t errlen) {
  char shown[PB_SHOWN_SIZE];
  const char *bar;
  size_t clen, ilen;

  assert(out != NULL);
  memset(out, 0, sizeof *out);
  if (pos == NULL) {
    errmsg_set(err, errlen, "position: none given");
    return UV_EINVAL;
  }
  if (pos[0] == '\0')
    return 0;
  bar = strchr(pos, '|');
  if (bar == NULL) {
    errmsg_set(err, errlen,
               "position %s has no \"|\" (expected \"CREATED|ID\", either half "
               "may be empty)",
               show(shown, pos, strlen(pos)));
    return UV_EINVAL;
  }
  clen = (size_t)(bar - pos);
  ilen = strlen(bar + 1);
  if (clen != 0 && pb_time_parse(pos, clen, NULL) != 0) {
    errmsg_set(err, errlen,
               "position: created %s is not empty or a datetime like %s",
               show(shown, pos, clen), shape);
    return UV_EINVAL;
  }
  if (ilen != 0 && !pb_id_ok(bar + 1, ilen)) {
    errmsg_set(
        err, errlen,
        "position: id %s is not usable in a filter (at most %d bytes, no "
        "'\"', '\\', '|' or control byte)",
        show(shown, bar + 1, ilen), PB_ID_MAX);
    return UV_EINVAL;
  }
  memcpy(out->created, pos, clen);
  memcpy(out->id, bar + 1, ilen);
  return 0;
}

int pb_cursor_format(const pb_cursor *c, buf *out) {
  size_t old = out->len;
  int r;

  assert(c != NULL && out != NULL);
  if ((r = buf_append_str(out, c->created)) != 0 ||
      (r = buf_append(out, "|", 1)) != 0 ||
      (r = buf_append_str(out, c->id)) != 0)
    out->len = old;
  return r;
}

int pb_cursor_cmp(const pb_cursor *a, const pb_cursor *b) {
  /* strcmp compares as unsigned char, which is SQLite's BINARY order for
   * text without NUL bytes; "" sorts before every datetime. */
  int r = strcmp(a->created, b->created);
  return r != 0 ? r : strcmp(a->id, b->id);
}

/* ---- The filter rule (§2.4) ---------------------------------------------- */

int pb_filter_check(const char *filter, char *err, size_t errlen) {
  size_t i, len, quote_at = 0, open_at = 0;
  size_t depth = 0;
  char quote = 0;
  bool blank = true;

  if (filter == NULL) {
    errmsg_set(err, errlen, "filter: none given");
    return UV_EINVAL;
  }
  len = strlen(filter);
  if (len > PB_USER_FILTER_MAX) {
    errmsg_set(err, errlen,
               "filter: %zu bytes is over the limit of %d (the server refuses "
               "%d, and the cursor part needs the rest)",
               len, PB_USER_FILTER_MAX, PB_FILTER_MAX);
    return UV_EINVAL;
  }
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)filter[i];

    /* Backslashes and control bytes are refused inside quotes too: how a
     * backslash reads changed in fexpr v0.6.0, and a newline ends a
     * comment. */
    if (c == '\\') {
      errmsg_set(err, errlen,
                 "filter: a backslash at byte %zu (not portable across "
                 "PocketBase versions)",
                 i);
      return UV_EINVAL;
    }
    if (is_control(c)) {
      errmsg_set(err, errlen,
                 "filter: a control byte 0x%02X at byte %zu (tabs and newlines "
                 "included; use spaces)",
                 c, i);
      return UV_EINVAL;
    }
    if (c != ' ')
      blank = false;
    if (quote != 0) {
      if (c == (unsigned char)quote)
        quote = 0;
      continue;
    }
    switch (c) {
    case '"':
    case '\'':
      quote = (char)c;
      quote_at = i;
      break;
    case '(':
      if (depth++ == 0)
        open_at = i;
      break;
    case ')':
      if (depth == 0) {
        errmsg_set(err, errlen,
                   "filter: unbalanced \")\" at byte %zu (it would close the "
                   "parenthesis tether wraps the filter in)",
                   i);
        return UV_EINVAL;
      }
      depth--;
      break;
    case '/':
      if (i + 1 < len && filter[i + 1] == '/') {
        errmsg_set(err, errlen,
                   "filter: \"//\" starts a comment at byte %zu, which would "
                   "swallow the closing parenthesis",
                   i);
        return UV_EINVAL;
      }
      break;
    default:
      break;
    }
  }
  if (quote != 0) {
    errmsg_set(err, errlen, "filter: unclosed quote starting at byte %zu",
               quote_at);
    return UV_EINVAL;
  }
  if (depth != 0) {
    errmsg_set(err, errlen,
               "filter: unbalanced \"(\" at byte %zu (never closed)", open_at);
    return UV_EINVAL;
  }
  if (blank) {
    errmsg_set(err, errlen, "filter: empty (leave the option out instead)");
    return UV_EINVAL;
  }
  return 0;
}

/* ---- Request targets (§1, §2.5) ------------------------------------------ */

static bool is_set(const char *s) {
  return s != NULL && s[0] != '\0';
}

/* Appends "/api/collections/<C>/records?" with C encoded as a path
 * segment: only unreserved bytes are left as they are, so '/', '?' and
 * '%' in a name cannot change the route. */
static int records_path(const char *collection, buf *out) {
  int r;

  if ((r = buf_append_str(out, "/api/collections/")) != 0 ||
      (r = http_percent_encode(out, collection, strlen(collection))) != 0)
    return r;
  return buf_append_str(out, "/records?");
}

/* Appends "&name=" and value fully percent-encoded. http_percent_encode
 * leaves only A-Z a-z 0-9 - . _ ~ as they are, so '&', '"', '+', ' ' and
 * ',' all become %XX, as Go's url.ParseQuery needs (§1). */
static int query_param(buf *out, const char *name, const char *v, size_t n) {
  int r;

  if ((r = buf_appendf(out, "&%s=", name)) != 0)
    return r;
  return http_percent_encode(out, v, n);
}

/* True when the comma-separated list holds an entry that is exactly name,
 * spaces around it aside. */
static bool list_has(const char *list, const char *name) {
  size_t n = strlen(name);
  const char *p = list;

  for (;;) {
    const char *end = strchr(p, ',');
    const char *e = end != NULL ? end : p + strlen(p);

    while (p < e && *p == ' ')
      p++;
    while (e > p && e[-1] == ' ')
      e--;
    if ((size_t)(e - p) == n && memcmp(p, name, n) == 0)
      return true;
    if (end == NULL)
      return false;
    p = end + 1;
  }
}

/* "*" picks every top-level field, and "*:excerpt(...)" does too. */
static bool list_has_wildcard(const char *list) {
  const char *p = list;

  for (;;) {
    while (*p == ' ')
      p++;
    if (*p == '*') {
      const char *q = p + 1;
      while (*q == ' ')
        q++;
      if (*q == '\0' || *q == ',' || *q == ':')
        return true;
    }
    p = strchr(p, ',');
    if (p == NULL)
      return false;
    p++;
  }
}

/* The decoded filter of one poll, into f. */
static int list_filter(const pb_list_query *q, buf *f) {
  const pb_cursor *c = q->after;
  bool user = is_set(q->filter);
  int r = 0;

  if (q->offset == PB_OFFSET_ID) {
    if (c->id[0] != '\0')
      r = buf_appendf(f, "id > \"%s\"", c->id);
  } else {
    r = buf_appendf(f,
                    "(created > \"%s\" || (created = \"%s\" && id > \"%s\"))",
                    c->created, c->created, c->id);
    if (r == 0 && is_set(q->until))
      r = buf_appendf(f, " && created <= \"%s\"", q->until);
  }
  if (r == 0 && user)
    r = buf_appendf(f, "%s(%s)", f->len > 0 ? " && " : "", q->filter);
  return r;
}

int pb_list_target(const pb_list_query *q, buf *out) {
  size_t old = out->len;
  const char *fields;
  buf f;
  int r;

  assert(q != NULL && q->collection != NULL && q->after != NULL);
  /* The values quoted into the filter are checked again here: a cursor or
   * bound that broke the quoting would read other records, silently. */
  if (q->collection[0] == '\0' ||
      (q->offset != PB_OFFSET_CREATED && q->offset != PB_OFFSET_ID))
    return UV_EINVAL;
  if (q->per_page < 1 || q->per_page > 1000)
    return UV_EINVAL;
  if (q->offset == PB_OFFSET_CREATED &&
      ((q->after->created[0] != '\0' &&
        pb_time_parse(q->after->created, strlen(q->after->created), NULL) !=
            0) ||
       (is_set(q->until) &&
        pb_time_parse(q->until, strlen(q->until), NULL) != 0)))
    return UV_EINVAL;
  if (q->after->id[0] != '\0' && !pb_id_ok(q->after->id, strlen(q->after->id)))
    return UV_EINVAL;
  if (is_set(q->filter) && pb_filter_check(q->filter, NULL, 0) != 0)
    return UV_EINVAL;

  buf_init(&f, 0);
  if ((r = list_filter(q, &f)) != 0)
    goto done;
  if (f.len > PB_FILTER_MAX) {
    r = UV_E2BIG;
    goto done;
  }

  if ((r = records_path(q->collection, out)) != 0 ||
      (r = buf_appendf(out, "page=1&perPage=%lld&skipTotal=1",
                       (long long)q->per_page)) != 0)
    goto done;
  if (q->offset == PB_OFFSET_ID)
    r = query_param(out, "sort", "id", 2);
  else
    r = query_param(out, "sort", "created,id", 10);
  if (r != 0 ||
      (f.len > 0 && (r = query_param(out, "filter", f.data, f.len)) != 0))
    goto done;

  if (is_set(q->fields)) {
    fields = q->fields;
    buf_reset(&f);
    if ((r = buf_append_str(&f, fields)) != 0)
      goto done;
    if (!list_has_wildcard(fields)) {
      if (!list_has(fields, "id"))
        r = buf_append_str(&f, ",id");
      if (r == 0 && q->offset == PB_OFFSET_CREATED &&
          !list_has(fields, "created"))
        r = buf_append_str(&f, ",created");
    }
    if (r != 0 || (r = query_param(out, "fields", f.data, f.len)) != 0)
      goto done;
  }
  if (is_set(q->expand))
    r = query_param(out, "expand", q->expand, strlen(q->expand));

done:
  buf_free(&f);
  if (r != 0)
    out->len = old;
  return r;
}

int pb_probe_target(const char *collection, buf *out) {
  size_t old = out->len;
  int r;

  assert(collection != NULL);
  if (collection[0] == '\0')
    return UV_EINVAL;
  if ((r = records_path(collection, out)) != 0 ||
      (r = buf_append_str(out, "perPage=1&skipTotal=1&sort=created")) != 0)
    out->len = old;
  return r;
}

/* ---- List responses (§2) ------------------------------------------------- */

/* Copies a string member of item into dst (size dstsize), or "". */
static void copy_member(json_t *item, const char *key, char *dst,
                        size_t dstsize) {
  json_t *v = json_object_get(item, key);
  size_t n;

  dst[0] = '\0';
  if (!json_is_string(v))
    return;
  n = json_string_length(v);
  if (n >= dstsize)
    return;
  memcpy(dst, json_string_value(v), n);
  dst[n] = '\0';
}

void pb_item_cursor(json_t *item, pb_cursor *out) {
  json_t *created;

  assert(out != NULL);
  memset(out, 0, sizeof *out);
  copy_member(item, "id", out->id, sizeof out->id);
  if (!pb_id_ok(out->id, strlen(out->id)))
    out->id[0] = '\0';
  created = json_object_get(item, "created");
  if (json_is_string(created) &&
      pb_time_parse(json_string_value(created), json_string_length(created),
                    NULL) == 0)
    copy_member(item, "created", out->created, sizeof out->created);
}

/* Checks items[i]; fills cur with its cursor. */
static int check_item(json_t *item, size_t i, bool need_created, pb_cursor *cur,
                      char *err, size_t errlen) {
  char shown[PB_SHOWN_SIZE];
  json_t *id, *created;

  if (!json_is_object(item)) {
    errmsg_set(err, errlen, "items[%zu]: expected an object", i);
    return UV_EINVAL;
  }
  id = json_object_get(item, "id");
  if (!json_is_string(id)) {
    errmsg_set(err, errlen, "items[%zu].id: %s", i,
               id == NULL ? "missing" : "expected a string");
    return UV_EINVAL;
  }
  if (!pb_id_ok(json_string_value(id), json_string_length(id))) {
    errmsg_set(err, errlen,
               "items[%zu].id: %s is not usable in a filter (1 to %d bytes, no "
               "'\"', '\\', '|' or control byte)",
               i, show(shown, json_string_value(id), json_string_length(id)),
               PB_ID_MAX);
    return UV_EINVAL;
  }
  if (need_created) {
    created = json_object_get(item, "created");
    if (created == NULL) {
      errmsg_set(err, errlen,
                 "items[%zu].created: missing (does the collection have a "
                 "created field, and do \"fields\" leave it out?)",
                 i);
      return UV_EINVAL;
    }
    if (!json_is_string(created) ||
        (json_string_length(created) != 0 &&
         pb_time_parse(json_string_value(created), json_string_length(created),
                       NULL) != 0)) {
      errmsg_set(err, errlen, "items[%zu].created: expected a datetime like %s",
                 i, shape);
      return UV_EINVAL;
    }
  }
  pb_item_cursor(item, cur);
  if (!need_created)
    cur->created[0] = '\0';
  return 0;
}

int pb_page_parse(const char *body, size_t len, bool need_created, pb_page *out,
                  char *err, size_t errlen) {
  char a[PB_SHOWN_SIZE], b[PB_SHOWN_SIZE], text[JSON_ERROR_TEXT_LENGTH];
  pb_cursor prev, cur;
  json_error_t jerr;
  json_t *doc, *items, *per_page;
  size_t i, n;

  assert(out != NULL);
  memset(out, 0, sizeof *out);
  if (body == NULL)
    len = 0;
  /* NUL is allowed in strings: a record may hold one in any text field,
   * and refusing it would stall the whole collection. Ids are checked. */
  doc = json_loadb(len > 0 ? body : "", len, JSON_ALLOW_NUL, &jerr);
  if (doc == NULL) {
    /* jansson quotes the bad token, which may hold control bytes. */
    copy_line(text, sizeof text, jerr.text, strlen(jerr.text));
    errmsg_set(err, errlen,
               "list response is not JSON: %s (line %d, column %d)", text,
               jerr.line, jerr.column);
    return UV_EINVAL;
  }
  if (!json_is_object(doc)) {
    errmsg_set(err, errlen, "list response is not a JSON object");
    goto fail;
  }
  items = json_object_get(doc, "items");
  if (!json_is_array(items)) {
    errmsg_set(err, errlen, "list response: \"items\" is %s",
               items == NULL ? "missing" : "not an array");
    goto fail;
  }
  per_page = json_object_get(doc, "perPage");
  if (!json_is_integer(per_page) || json_integer_value(per_page) < 1) {
    errmsg_set(err, errlen, "list response: \"perPage\" is %s",
               per_page == NULL ? "missing" : "not an integer >= 1");
    goto fail;
  }
  n = json_array_size(items);
  for (i = 0; i < n; i++) {
    if (check_item(json_array_get(items, i), i, need_created, &cur, err,
                   errlen) != 0)
      goto fail;
    if (i > 0 && pb_cursor_cmp(&prev, &cur) >= 0) {
      if (need_created)
        errmsg_set(
            err, errlen,
            "items[%zu]: (created, id) = (%s, %s) does not come after the "
            "previous item's: the server did not sort by created,id",
            i, show(a, cur.created, strlen(cur.created)),
            show(b, cur.id, strlen(cur.id)));
      else
        errmsg_set(err, errlen,
                   "items[%zu]: id %s does not come after the previous item's: "
                   "the server did not sort by id",
                   i, show(a, cur.id, strlen(cur.id)));
      goto fail;
    }
    prev = cur;
  }
  out->doc = doc;
  out->items = items;
  out->per_page = (int64_t)json_integer_value(per_page);
  return 0;

fail:
  json_decref(doc);
  return UV_EINVAL;
}

void pb_page_free(pb_page *p) {
  if (p == NULL)
    return;
  json_decref(p->doc);
  memset(p, 0, sizeof *p);
}

/* ---- Error bodies (§5) --------------------------------------------------- */

/* Appends text to dst (size dstsize, NUL-terminated) as far as it fits. */
static void append_line(char *dst, size_t dstsize, const char *s, size_t n) {
  size_t have = strlen(dst);

  if (have + 1 < dstsize)
    copy_line(dst + have, dstsize - have, s, n);
}

/* The first leaf under v, depth levels at most, as "PATH: MESSAGE (CODE)".
 * A leaf is an object with a string "message" or "code" (each validation
 * error is {code, message[, params]}), or a bare string. */
static bool data_leaf(json_t *v, char *path, size_t pathsize, int depth,
                      char *out, size_t outsize) {
  size_t plen = strlen(path), i;
  json_t *msg, *code, *child;
  const char *key;
  char idx[24];

  if (json_is_string(v) && plen > 0) {
    copy_line(out, outsize, path, plen);
    append_line(out, outsize, ": ", 2);
    append_line(out, outsize, json_string_value(v), json_string_length(v));
    return true;
  }
  if (!json_is_object(v) && !json_is_array(v))
    return false;
  msg = json_object_get(v, "message");
  code = json_object_get(v, "code");
  if (plen > 0 && (json_is_string(msg) || json_is_string(code))) {
    copy_line(out, outsize, path, plen);
    append_line(out, outsize, ": ", 2);
    if (json_is_string(msg)) {
      append_line(out, outsize, json_string_value(msg),
                  json_string_length(msg));
      if (json_is_string(code)) {
        append_line(out, outsize, " (", 2);
        append_line(out, outsize, json_string_value(code),
                    json_string_length(code));
        append_line(out, outsize, ")", 1);
      }
    } else {
      append_line(out, outsize, json_string_value(code),
                  json_string_length(code));
    }
    return true;
  }
  if (depth == 0)
    return false;
  if (json_is_object(v)) {
    json_object_foreach(v, key, child) {
      snprintf(path + plen, pathsize - plen, "%s%s", plen > 0 ? "." : "", key);
      if (data_leaf(child, path, pathsize, depth - 1, out, outsize))
        return true;
    }
  } else {
    json_array_foreach(v, i, child) {
      snprintf(idx, sizeof idx, "%zu", i);
      snprintf(path + plen, pathsize - plen, "%s%s", plen > 0 ? "." : "", idx);
      if (data_leaf(child, path, pathsize, depth - 1, out, outsize))
        return true;
    }
  }
  path[plen] = '\0';
  return false;
}

/* A status is a small positive integer; anything else reads as none. */
static int status_of(json_t *v) {
  json_int_t s;

  if (!json_is_integer(v))
    return 0;
  s = json_integer_value(v);
  return s >= 1 && s <= 999 ? (int)s : 0;
}

void pb_error_parse(const char *body, size_t len, pb_error *out) {
  char path[256];
  json_t *doc, *msg;
  size_t i, n;

  /* The message field holds a whole shown body. */
  _Static_assert(PB_BODY_SHOW < sizeof out->message, "message too small");

  assert(out != NULL);
  memset(out, 0, sizeof *out);
  if (body == NULL)
    len = 0;
  doc = len > 0 ? json_loadb(body, len, JSON_ALLOW_NUL, NULL) : NULL;
  if (!json_is_object(doc)) {
    /* A proxy's HTML page or plain text: its first bytes, trimmed, say
     * more than a bare status. */
    for (i = 0;
         i < len && (body[i] == ' ' || is_control((unsigned char)body[i])); i++)
      ;
    copy_line(out->message, PB_BODY_SHOW + 1, body + i, len - i);
    for (n = strlen(out->message); n > 0 && out->message[n - 1] == ' '; n--)
      out->message[n - 1] = '\0';
    json_decref(doc);
    return;
  }
  out->status = status_of(json_object_get(doc, "status"));
  if (out->status == 0)
    out->status = status_of(json_object_get(doc, "code"));
  msg = json_object_get(doc, "message");
  if (json_is_string(msg))
    copy_line(out->message, sizeof out->message, json_string_value(msg),
              json_string_length(msg));
  path[0] = '\0';
  data_leaf(json_object_get(doc, "data"), path, sizeof path, PB_DATA_DEPTH,
            out->detail, sizeof out->detail);
  out->mfa = json_is_string(json_object_get(doc, "mfaId"));
  json_decref(doc);
}

/* ---- JSON bodies --------------------------------------------------------- */

/* Appends v as compact JSON (members in insertion order) and drops the
 * reference. UV_EINVAL when v is NULL: jansson refused a value, e.g. text
 * that is not UTF-8. */
static int dump_json(json_t *v, buf *out) {
  size_t need, old = out->len;
  int r = 0;

  if (v == NULL)
    return UV_EINVAL;
  need = json_dumpb(v, NULL, 0, JSON_COMPACT);
  if (need == 0) {
    r = UV_EINVAL;
  } else if ((r = buf_reserve(out, need)) == 0) {
    /* Nothing touches v between the two calls, so the size holds. */
    if (json_dumpb(v, out->data + out->len, need, JSON_COMPACT) != need)
      r = UV_EINVAL;
    else
      out->len += need;
  }
  json_decref(v);
  if (r != 0)
    out->len = old;
  return r;
}

/* Sets key to a string; false when the text is not UTF-8 (or no memory). */
static bool set_string(json_t *o, const char *key, const char *s) {
  return o != NULL && s != NULL &&
         json_object_set_new(o, key, json_string(s)) == 0;
}

int pb_auth_body(const char *identity, const char *password, buf *out) {
  json_t *o = json_object();

  if (!set_string(o, "identity", identity) ||
      !set_string(o, "password", password)) {
    json_decref(o);
    return UV_EINVAL;
  }
  return dump_json(o, out);
}

int pb_subscribe_body(const char *client_id, const char *const *topics,
                      size_t n, buf *out) {
  json_t *o = json_object(), *a = json_array();
  size_t i;

  if (o == NULL || a == NULL || !set_string(o, "clientId", client_id))
    goto fail;
  for (i = 0; i < n; i++)
    if (topics[i] == NULL || json_array_append_new(a, json_string(topics[i])))
      goto fail;
  if (json_object_set_new(o, "subscriptions", a) != 0) {
    a = NULL; /* set_new took it either way */
    goto fail;
  }
  return dump_json(o, out);

fail:
  json_decref(a);
  json_decref(o);
  return UV_EINVAL;
}

int pb_mirror_body(const char *group, const char *collection,
                   const char *offset, const char *appname, buf *out) {
  json_t *o = json_object();

  if (!set_string(o, "consumer_group", group) ||
      !set_string(o, "collection", collection) ||
      !set_string(o, "offset", offset) ||
      (is_set(appname) && !set_string(o, "appname", appname))) {
    json_decref(o);
    return UV_EINVAL;
  }
  return dump_json(o, out);
}

/* ---- Tokens (§4) --------------------------------------------------------- */

/* The value of a base64url digit, or -1. */
static int b64url(unsigned char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '-')
    return 62;
  if (c == '_')
    return 63;
  return -1;
}

/* Decodes base64url (padding optional) into out, which has room for
 * n * 3 / 4 + 1 bytes. Returns the length, or -1 when the text is not
 * base64url. */
static long b64url_decode(const char *s, size_t n, unsigned char *out) {
  size_t i, o = 0, pad = 0;
  unsigned acc = 0;
  int bits = 0;

  while (n > 0 && s[n - 1] == '=' && pad < 2) {
    n--;
    pad++;
  }
  /* Padding, when present, fills the last group of four. */
  if ((pad > 0 && (n + pad) % 4 != 0) || n % 4 == 1)
    return -1;
  for (i = 0; i < n; i++) {
    int v = b64url((unsigned char)s[i]);
    if (v < 0)
      return -1;
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
      acc &= (1u << bits) - 1;
    }
  }
  return (long)o;
}

int pb_jwt_exp(const char *token, int64_t *exp, char *err, size_t errlen) {
  const char *dot1, *dot2, *payload;
  unsigned char *raw = NULL;
  json_t *doc = NULL, *v;
  size_t len, plen, i;
  int64_t t;
  long n;
  double d;
  int r = UV_EINVAL;

  assert(exp != NULL);
  *exp = 0;
  if (token == NULL || token[0] == '\0') {
    errmsg_set(err, errlen, "no token");
    return UV_EINVAL;
  }
  len = strlen(token);
  if (len > PB_TOKEN_MAX) {
    errmsg_set(err, errlen, "token is %zu bytes, over the limit of %d", len,
               PB_TOKEN_MAX);
    return UV_EINVAL;
  }
  dot1 = strchr(token, '.');
  dot2 = dot1 != NULL ? strchr(dot1 + 1, '.') : NULL;
  if (dot2 == NULL || strchr(dot2 + 1, '.') != NULL || dot1 == token ||
      dot2 == dot1 + 1) {
    errmsg_set(err, errlen,
               "token is not a JWT (expected three dot-separated parts)");
    return UV_EINVAL;
  }
  /* Every byte is checked, the signature's too: the token goes into an
   * Authorization header as it is. */
  for (i = 0; i < len; i++) {
    if (token[i] != '.' && token[i] != '=' &&
        b64url((unsigned char)token[i]) < 0) {
      errmsg_set(err, errlen,
                 "token is not a JWT (byte %zu is not base64url: 0x%02X)", i,
                 (unsigned char)token[i]);
      return UV_EINVAL;
    }
  }
  payload = dot1 + 1;
  plen = (size_t)(dot2 - payload);
  raw = malloc(plen * 3 / 4 + 1);
  if (raw == NULL) {
    errmsg_set(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  n = b64url_decode(payload, plen, raw);
  if (n < 0) {
    errmsg_set(err, errlen, "token payload is not base64url");
    goto done;
  }
  doc = json_loadb((const char *)raw, (size_t)n, 0, NULL);
  if (!json_is_object(doc)) {
    errmsg_set(err, errlen, "token payload is not a JSON object");
    goto done;
  }
  v = json_object_get(doc, "exp");
  if (json_is_integer(v)) {
    *exp = (int64_t)json_integer_value(v);
    r = 0;
  } else if (json_is_real(v)) {
    d = json_real_value(v);
    if (!(d >= -9.2e18 && d <= 9.2e18)) {
      errmsg_set(err, errlen, "token exp is out of range");
      goto done;
    }
    /* Round down, not toward zero: a token is better refreshed a moment
     * early than late. */
    t = (int64_t)d;
    *exp = (double)t > d ? t - 1 : t;
    r = 0;
  } else {
    errmsg_set(err, errlen, "token payload has no numeric exp");
  }

done:
  json_decref(doc);
  free(raw);
  return r;
}

int pb_auth_parse(const char *body, size_t len, char **token, int64_t *exp,
                  char *err, size_t errlen) {
  json_t *doc, *t;
  int r;

  assert(token != NULL && exp != NULL);
  *token = NULL;
  *exp = 0;
  /* NUL is allowed in strings: the auth record may hold one anywhere. */
  doc = body != NULL ? json_loadb(body, len, JSON_ALLOW_NUL, NULL) : NULL;
  if (!json_is_object(doc)) {
    errmsg_set(err, errlen, "auth answer is not a JSON object");
    json_decref(doc);
    return UV_EINVAL;
  }
  t = json_object_get(doc, "token");
  if (!json_is_string(t) || json_string_length(t) == 0) {
    errmsg_set(err, errlen, "auth answer has no \"token\" string");
    json_decref(doc);
    return UV_EINVAL;
  }
  if (strlen(json_string_value(t)) != json_string_length(t)) {
    errmsg_set(err, errlen,
               "token is not a JWT (byte %zu is not base64url: 0x00)",
               strlen(json_string_value(t)));
    json_decref(doc);
    return UV_EINVAL;
  }
  if ((r = pb_jwt_exp(json_string_value(t), exp, err, errlen)) == 0) {
    *token = strdup(json_string_value(t));
    if (*token == NULL) {
      errmsg_set(err, errlen, "out of memory");
      r = UV_ENOMEM;
    }
  }
  if (r != 0)
    *exp = 0;
  json_decref(doc);
  return r;
}

/* ---- Realtime (§6) ------------------------------------------------------- */

int pb_connect_parse(const char *data, size_t len, char *id, size_t idsize,
                     char *err, size_t errlen) {
  char shown[PB_SHOWN_SIZE];
  json_t *doc, *v;
  const char *s;
  size_t n, i;
  int r = UV_EINVAL;

  assert(id != NULL && idsize > 0);
  id[0] = '\0';
  doc = data != NULL ? json_loadb(data, len, JSON_ALLOW_NUL, NULL) : NULL;
  if (!json_is_object(doc)) {
    errmsg_set(err, errlen, "PB_CONNECT data is not a JSON object");
    goto done;
  }
  v = json_object_get(doc, "clientId");
  if (!json_is_string(v)) {
    errmsg_set(err, errlen, "PB_CONNECT data has no \"clientId\" string");
    goto done;
  }
  s = json_string_value(v);
  n = json_string_length(v);
  if (n == 0 || n > PB_ID_MAX) {
    errmsg_set(err, errlen,
               "PB_CONNECT clientId is %zu bytes (expected 1 to %d)", n,
               PB_ID_MAX);
    goto done;
  }
  for (i = 0; i < n; i++) {
    if (is_control((unsigned char)s[i])) {
      errmsg_set(err, errlen, "PB_CONNECT clientId %s holds a control byte",
                 show(shown, s, n));
      goto done;
    }
  }
  if (n >= idsize) {
    errmsg_set(err, errlen,
               "PB_CONNECT clientId is %zu bytes, over room for %zu", n,
               idsize - 1);
    r = UV_ENOBUFS;
    goto done;
  }
  memcpy(id, s, n);
  id[n] = '\0';
  r = 0;

done:
  json_decref(doc);
  return r;
}

int pb_event_parse(const char *data, size_t len, char action[16],
                   int64_t *created_ms) {
  json_t *doc, *a, *rec, *c;
  size_t n, i;
  int r = UV_EINVAL;

  assert(action != NULL && created_ms != NULL);
  action[0] = '\0';
  *created_ms = 0;
  doc = data != NULL ? json_loadb(data, len, JSON_ALLOW_NUL, NULL) : NULL;
  a = json_object_get(doc, "action");
  rec = json_object_get(doc, "record");
  if (!json_is_string(a) || !json_is_object(rec))
    goto done;
  n = json_string_length(a);
  if (n == 0 || n > 15)
    goto done;
  for (i = 0; i < n; i++)
    if (is_control((unsigned char)json_string_value(a)[i]))
      goto done;
  memcpy(action, json_string_value(a), n);
  action[n] = '\0';
  c = json_object_get(rec, "created");
  if (json_is_string(c) &&
      pb_time_parse(json_string_value(c), json_string_length(c), created_ms) !=
          0)
    *created_ms = 0;
  r = 0;

done:
  json_decref(doc);
  return r;
}

/* ---- Offset mirroring (§8) ----------------------------------------------- */

int pb_mirror_find_target(const char *mirror, const char *group,
                          const char *collection, buf *out) {
  size_t old = out->len;
  buf f;
  int r;

  if (!pb_value_ok(mirror) || !pb_value_ok(group) || !pb_value_ok(collection))
    return UV_EINVAL;
  buf_init(&f, 0);
  if ((r = buf_appendf(&f, "consumer_group = \"%s\" && collection = \"%s\"",
                       group, collection)) != 0 ||
      (r = records_path(mirror, out)) != 0 ||
      (r = buf_append_str(out, "page=1&perPage=1&skipTotal=1")) != 0 ||
      (r = query_param(out, "filter", f.data, f.len)) != 0)
    out->len = old;
  buf_free(&f);
  return r;
}

int pb_mirror_parse(const char *body, size_t len, char **id, char **offset,
                    char *err, size_t errlen) {
  char shown[PB_SHOWN_SIZE];
  json_t *doc, *items, *item, *v, *o;
  int r = UV_EINVAL;

  assert(id != NULL && offset != NULL);
  *id = NULL;
  *offset = NULL;
  doc = body != NULL ? json_loadb(body, len, JSON_ALLOW_NUL, NULL) : NULL;
  if (!json_is_object(doc)) {
    errmsg_set(err, errlen, "offset mirror answer is not a JSON object");
    goto done;
  }
  items = json_object_get(doc, "items");
  if (!json_is_array(items)) {
    errmsg_set(err, errlen, "offset mirror answer: \"items\" is %s",
               items == NULL ? "missing" : "not an array");
    goto done;
  }
  if (json_array_size(items) == 0) {
    errmsg_set(err, errlen, "offset mirror: no row for this group");
    r = UV_ENOENT;
    goto done;
  }
  item = json_array_get(items, 0);
  if (!json_is_object(item)) {
    errmsg_set(err, errlen, "offset mirror answer: items[0] is not an object");
    goto done;
  }
  v = json_object_get(item, "id");
  if (!json_is_string(v)) {
    errmsg_set(err, errlen, "offset mirror answer: items[0].id is %s",
               v == NULL ? "missing" : "not a string");
    goto done;
  }
  if (!pb_id_ok(json_string_value(v), json_string_length(v))) {
    errmsg_set(err, errlen,
               "offset mirror answer: items[0].id %s is not a usable record id",
               show(shown, json_string_value(v), json_string_length(v)));
    goto done;
  }
  o = json_object_get(item, "offset");
  if (!json_is_string(o)) {
    errmsg_set(err, errlen, "offset mirror answer: items[0].offset is %s",
               o == NULL ? "missing" : "not a string");
    goto done;
  }
  if (strlen(json_string_value(o)) != json_string_length(o)) {
    errmsg_set(err, errlen,
               "offset mirror answer: items[0].offset holds a NUL");
    goto done;
  }
  *id = strdup(json_string_value(v));
  *offset = strdup(json_string_value(o));
  if (*id == NULL || *offset == NULL) {
    free(*id);
    free(*offset);
    *id = NULL;
    *offset = NULL;
    errmsg_set(err, errlen, "out of memory");
    r = UV_ENOMEM;
    goto done;
  }
  r = 0;

done:
  json_decref(doc);
  return r;
}
