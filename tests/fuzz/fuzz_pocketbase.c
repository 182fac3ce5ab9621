/* Fuzzes the PocketBase codec (protocol/pocketbase.h).
 *
 * The low four bits of the first byte pick what the rest of the input is
 * fed to, so a seed's first letter names its parser:
 *
 *   a  pb_time_parse           i  pb_jwt_exp
 *   b  pb_time_format (int64)  j  pb_connect_parse
 *   c  pb_cursor_parse         k  pb_event_parse
 *   d  pb_filter_check         l  pb_mirror_parse
 *   e  pb_page_parse, created  m  the builders, values split at LF
 *   f  pb_page_parse, id       n  two positions split at LF, compared
 *   g  pb_error_parse          o, p  every parser above
 *   h  pb_auth_parse
 *
 * On success each result is checked against what the contract promises
 * (a parsed position formats back to its text, an accepted filter is
 * balanced and its target wraps it in parentheses, page items are in
 * order with usable ids); on failure the message must be one printable,
 * NUL-terminated line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "protocol/pocketbase.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* assert() vanishes under NDEBUG; a fuzz check must not. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_pocketbase: %s:%d: %s\n", __FILE__, __LINE__,      \
              #cond);                                                          \
      abort();                                                                 \
    }                                                                          \
  } while (0)

#define ERRLEN 512

static bool is_control(unsigned char c) {
  return c < 0x20 || c == 0x7f;
}

/* A message is one printable line, NUL-terminated inside its buffer. */
static void check_message(const char *err, size_t size) {
  size_t n = strnlen(err, size);

  CHECK(n > 0 && n < size);
  for (size_t i = 0; i < n; i++)
    CHECK(!is_control((unsigned char)err[i]));
}

/* Text with no control byte, NUL-terminated inside size (may be empty). */
static void check_line(const char *s, size_t size) {
  size_t n = strnlen(s, size);

  CHECK(n < size);
  for (size_t i = 0; i < n; i++)
    CHECK(!is_control((unsigned char)s[i]));
}

/* A copy of the input with a NUL after it, cut at the first NUL. */
static char *cstr(const uint8_t *data, size_t size) {
  char *s = malloc(size + 1);

  CHECK(s != NULL);
  if (size > 0)
    memcpy(s, data, size);
  s[size] = '\0';
  return s;
}

static int unhex(int c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* A target holds only unreserved bytes, "%XX" with upper-case hex, and the
 * structure "/?&=". Returns the decoded value of "&name=" (malloc'd) or
 * NULL when the target has no such parameter. */
static char *check_target(buf *b, const char *name) {
  size_t i, nlen = strlen(name), o = 0, len = b->len;
  const char *p, *found = NULL, *t = buf_cstr(b);
  char *v;

  CHECK(t != NULL);
  CHECK(len > 17 && memcmp(t, "/api/collections/", 17) == 0);
  CHECK(strnlen(t, len + 1) == len);
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)t[i];
    if (c == '%') {
      CHECK(i + 2 < len && unhex(t[i + 1]) >= 0 && unhex(t[i + 2]) >= 0);
      i += 2;
    } else {
      CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
            (c >= '0' && c <= '9') || strchr("-._~/?&=", c) != NULL);
    }
  }
  CHECK(memchr(t, '?', len) != NULL);
  for (p = strchr(t, '?'); p != NULL; p = strchr(p + 1, '&')) {
    if (strncmp(p + 1, name, nlen) == 0 && p[1 + nlen] == '=') {
      CHECK(found == NULL);
      found = p + 2 + nlen;
    }
  }
  if (found == NULL)
    return NULL;
  v = malloc(len + 1);
  CHECK(v != NULL);
  for (p = found; *p != '\0' && *p != '&'; p++) {
    if (*p == '%') {
      v[o++] = (char)(unhex(p[1]) * 16 + unhex(p[2]));
      p += 2;
    } else {
      v[o++] = *p;
    }
  }
  v[o] = '\0';
  return v;
}

/* The rule of pb_filter_check, written again as a plain scan so the two can
 * be compared: true when f (len bytes, no NUL) should pass. */
static bool filter_oracle(const char *f, size_t len) {
  size_t i;
  long depth = 0;
  char quote = 0;
  bool blank = true;

  if (len > PB_FILTER_MAX - 200)
    return false;
  for (i = 0; i < len; i++) {
    unsigned char c = (unsigned char)f[i];
    if (c == '\\' || is_control(c))
      return false;
    blank = blank && c == ' ';
    if (quote) {
      quote = c == (unsigned char)quote ? 0 : quote;
    } else if (c == '"' || c == '\'') {
      quote = (char)c;
    } else if (c == '(') {
      depth++;
    } else if (c == ')') {
      if (--depth < 0)
        return false;
    } else if (c == '/' && i + 1 < len && f[i + 1] == '/') {
      return false;
    }
  }
  return quote == 0 && depth == 0 && !blank;
}

/* The target of one poll after c, checked, and its filter compared with
 * what the cursor says. */
static void check_poll(const pb_cursor *c, int offset, const char *until,
                       const char *user) {
  pb_list_query q;
  char *filter, want[2 * PB_ID_MAX + 256];
  buf b;
  int r;

  memset(&q, 0, sizeof q);
  q.collection = "orders";
  q.offset = offset;
  q.after = c;
  q.until = until;
  q.filter = user;
  q.per_page = 1000;
  q.fields = "title";
  buf_init(&b, 0);
  r = pb_list_target(&q, &b);
  if (r == UV_E2BIG) {
    CHECK(user != NULL);
    buf_free(&b);
    return;
  }
  CHECK(r == 0);
  filter = check_target(&b, "filter");
  if (offset == PB_OFFSET_ID && c->id[0] == '\0' && user == NULL) {
    CHECK(filter == NULL);
  } else {
    CHECK(filter != NULL && strlen(filter) <= PB_FILTER_MAX);
    if (offset == PB_OFFSET_ID && c->id[0] != '\0') {
      snprintf(want, sizeof want, "id > \"%s\"", c->id);
      CHECK(strncmp(filter, want, strlen(want)) == 0);
    } else if (offset == PB_OFFSET_CREATED) {
      snprintf(want, sizeof want,
               "(created > \"%s\" || (created = \"%s\" && id > \"%s\"))",
               c->created, c->created, c->id);
      CHECK(strncmp(filter, want, strlen(want)) == 0);
    }
    if (user != NULL) {
      size_t fl = strlen(filter), ul = strlen(user);
      CHECK(fl >= ul + 2 && filter[fl - 1] == ')' &&
            filter[fl - ul - 2] == '(' &&
            memcmp(filter + fl - ul - 1, user, ul) == 0);
    }
  }
  free(filter);
  buf_free(&b);
}

static void fuzz_time(const uint8_t *data, size_t size) {
  char out[PB_TIME_LEN + 1];
  int64_t ms = 0;

  if (pb_time_parse((const char *)data, size, &ms) == 0) {
    CHECK(size == PB_TIME_LEN);
    pb_time_format(ms, out);
    CHECK(memcmp(out, data, PB_TIME_LEN) == 0 && out[PB_TIME_LEN] == '\0');
  }
}

static void fuzz_time_format(const uint8_t *data, size_t size) {
  char out[PB_TIME_LEN + 1];
  int64_t ms = 0, back = 1, want;
  uint64_t u = 0;
  size_t i;

  for (i = 0; i < size && i < 8; i++)
    u = u << 8 | data[i];
  memcpy(&ms, &u, sizeof ms);
  want = ms < -62167219200000LL   ? -62167219200000LL
         : ms > 253402300799999LL ? 253402300799999LL
                                  : ms;
  pb_time_format(ms, out);
  CHECK(strlen(out) == PB_TIME_LEN);
  CHECK(pb_time_parse(out, PB_TIME_LEN, &back) == 0 && back == want);
}

static void fuzz_cursor(const uint8_t *data, size_t size) {
  char *pos = cstr(data, size), err[ERRLEN] = "";
  pb_cursor c, again;
  buf b;

  if (pb_cursor_parse(pos, &c, err, sizeof err) != 0) {
    check_message(err, sizeof err);
    free(pos);
    return;
  }
  buf_init(&b, 0);
  CHECK(pb_cursor_format(&c, &b) == 0);
  CHECK(strcmp(buf_cstr(&b), pos[0] == '\0' ? "|" : pos) == 0);
  CHECK(pb_cursor_parse(buf_cstr(&b), &again, NULL, 0) == 0);
  CHECK(pb_cursor_cmp(&c, &again) == 0);
  CHECK(c.id[0] == '\0' || pb_id_ok(c.id, strlen(c.id)));
  check_poll(&c, PB_OFFSET_CREATED, NULL, NULL);
  check_poll(&c, PB_OFFSET_CREATED, c.created[0] ? c.created : NULL, NULL);
  check_poll(&c, PB_OFFSET_ID, NULL, "a = 1");
  check_poll(&c, PB_OFFSET_ID, NULL, NULL);
  buf_free(&b);
  free(pos);
}

static void fuzz_filter(const uint8_t *data, size_t size) {
  char *f = cstr(data, size), err[ERRLEN] = "";
  size_t len = strlen(f);
  pb_cursor start, mid;
  int r;

  r = pb_filter_check(f, err, sizeof err);
  CHECK((r == 0) == filter_oracle(f, len));
  if (r != 0) {
    CHECK(r == UV_EINVAL);
    check_message(err, sizeof err);
    CHECK(strncmp(err, "filter: ", 8) == 0);
    free(f);
    return;
  }
  CHECK(err[0] == '\0');
  memset(&start, 0, sizeof start);
  memset(&mid, 0, sizeof mid);
  memcpy(mid.created, "2026-01-02 10:00:00.123Z", PB_TIME_LEN);
  memcpy(mid.id, "r1a2b3c4d5e6f7g", 15);
  check_poll(&start, PB_OFFSET_CREATED, "2026-01-02 10:00:05.000Z", f);
  check_poll(&mid, PB_OFFSET_CREATED, NULL, f);
  check_poll(&start, PB_OFFSET_ID, NULL, f);
  check_poll(&mid, PB_OFFSET_ID, NULL, f);
  free(f);
}

static void fuzz_page(const uint8_t *data, size_t size, bool need_created) {
  char err[ERRLEN] = "";
  pb_cursor prev, cur;
  pb_page p;
  size_t i, n;
  buf b;

  if (pb_page_parse((const char *)data, size, need_created, &p, err,
                    sizeof err) != 0) {
    CHECK(p.doc == NULL && p.items == NULL);
    check_message(err, sizeof err);
    return;
  }
  CHECK(p.doc != NULL && json_is_array(p.items) && p.per_page >= 1);
  CHECK(json_integer_value(json_object_get(p.doc, "perPage")) == p.per_page);
  n = json_array_size(p.items);
  buf_init(&b, 0);
  for (i = 0; i < n; i++) {
    json_t *item = json_array_get(p.items, i), *id;
    pb_cursor back;

    CHECK(json_is_object(item));
    id = json_object_get(item, "id");
    CHECK(json_is_string(id) &&
          pb_id_ok(json_string_value(id), json_string_length(id)));
    pb_item_cursor(item, &cur);
    CHECK(strcmp(cur.id, json_string_value(id)) == 0);
    if (need_created) {
      json_t *c = json_object_get(item, "created");
      CHECK(json_is_string(c) &&
            strcmp(cur.created, json_string_value(c)) == 0);
    } else {
      cur.created[0] = '\0';
    }
    CHECK(i == 0 || pb_cursor_cmp(&prev, &cur) < 0);
    buf_reset(&b);
    CHECK(pb_cursor_format(&cur, &b) == 0);
    CHECK(pb_cursor_parse(buf_cstr(&b), &back, NULL, 0) == 0);
    CHECK(pb_cursor_cmp(&cur, &back) == 0);
    prev = cur;
  }
  buf_free(&b);
  pb_page_free(&p);
  CHECK(p.doc == NULL);
}

static void fuzz_error(const uint8_t *data, size_t size) {
  json_t *doc;
  pb_error e;

  memset(&e, 0xAB, sizeof e);
  pb_error_parse((const char *)data, size, &e);
  CHECK(e.status >= 0 && e.status <= 999);
  check_line(e.message, sizeof e.message);
  check_line(e.detail, sizeof e.detail);
  doc = json_loadb((const char *)data, size, JSON_ALLOW_NUL, NULL);
  if (!json_is_object(doc)) {
    /* Not an object: at most 200 bytes of the body, and nothing else. */
    CHECK(strlen(e.message) <= 200);
    CHECK(e.status == 0 && e.detail[0] == '\0' && !e.mfa);
    CHECK(size == 0 || e.message[0] != ' ');
  }
  json_decref(doc);
}

static void check_token(const char *token, int64_t exp) {
  int64_t again = 0;
  size_t i;

  for (i = 0; token[i] != '\0'; i++) {
    unsigned char c = (unsigned char)token[i];
    CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
          (c >= '0' && c <= '9') || strchr("-_.=", c) != NULL);
  }
  CHECK(i > 0 && i <= 8192);
  CHECK(pb_jwt_exp(token, &again, NULL, 0) == 0 && again == exp);
}

static void fuzz_auth(const uint8_t *data, size_t size) {
  char err[ERRLEN] = "", *token = (char *)1;
  int64_t exp = 1;
  int r;

  r = pb_auth_parse((const char *)data, size, &token, &exp, err, sizeof err);
  if (r != 0) {
    CHECK(r == UV_EINVAL && token == NULL && exp == 0);
    check_message(err, sizeof err);
    return;
  }
  CHECK(token != NULL);
  check_token(token, exp);
  free(token);
}

static void fuzz_jwt(const uint8_t *data, size_t size) {
  char *t = cstr(data, size), err[ERRLEN] = "";
  int64_t exp = 1;
  int r;

  r = pb_jwt_exp(t, &exp, err, sizeof err);
  if (r != 0) {
    CHECK(r == UV_EINVAL && exp == 0);
    check_message(err, sizeof err);
  } else {
    check_token(t, exp);
  }
  free(t);
}

static void fuzz_connect(const uint8_t *data, size_t size) {
  char id[PB_ID_MAX + 1], small[16], err[ERRLEN] = "";
  size_t n;
  int r;

  r = pb_connect_parse((const char *)data, size, id, sizeof id, err,
                       sizeof err);
  if (r != 0) {
    CHECK(r == UV_EINVAL && id[0] == '\0');
    check_message(err, sizeof err);
    return;
  }
  n = strlen(id);
  CHECK(n >= 1 && n <= PB_ID_MAX);
  check_line(id, sizeof id);
  r = pb_connect_parse((const char *)data, size, small, sizeof small, err,
                       sizeof err);
  if (n < sizeof small)
    CHECK(r == 0 && strcmp(small, id) == 0);
  else
    CHECK(r == UV_ENOBUFS && small[0] == '\0');
}

static void fuzz_event(const uint8_t *data, size_t size) {
  char action[16], out[PB_TIME_LEN + 1];
  int64_t ms = 1, back;
  size_t n;

  memset(action, 'x', sizeof action);
  if (pb_event_parse((const char *)data, size, action, &ms) != 0) {
    CHECK(action[0] == '\0' && ms == 0);
    return;
  }
  n = strnlen(action, sizeof action);
  CHECK(n >= 1 && n <= 15);
  check_line(action, sizeof action);
  if (ms != 0) {
    pb_time_format(ms, out);
    CHECK(pb_time_parse(out, PB_TIME_LEN, &back) == 0 && back == ms);
  }
}

static void fuzz_mirror(const uint8_t *data, size_t size) {
  char err[ERRLEN] = "", *id = (char *)1, *off = (char *)1;
  int r;

  r = pb_mirror_parse((const char *)data, size, &id, &off, err, sizeof err);
  if (r != 0) {
    CHECK(r == UV_EINVAL || r == UV_ENOENT);
    CHECK(id == NULL && off == NULL);
    check_message(err, sizeof err);
    return;
  }
  CHECK(id != NULL && off != NULL && pb_id_ok(id, strlen(id)));
  free(id);
  free(off);
}

/* The builders: what they write parses back to the values given. */
static void fuzz_builders(const uint8_t *data, size_t size) {
  char *s = cstr(data, size), *v[4] = { s, "", "", "" }, *lf;
  json_t *doc;
  int i, n = 1;
  buf b;

  for (i = 0; i < 3 && (lf = strchr(v[i], '\n')) != NULL; i++, n++) {
    *lf = '\0';
    v[i + 1] = lf + 1;
  }
  buf_init(&b, 0);
  if (pb_auth_body(v[0], v[1], &b) == 0) {
    doc = json_loadb(b.data, b.len, 0, NULL);
    CHECK(json_is_object(doc) && json_object_size(doc) == 2);
    CHECK(strcmp(json_string_value(json_object_get(doc, "identity")), v[0]) ==
          0);
    CHECK(strcmp(json_string_value(json_object_get(doc, "password")), v[1]) ==
          0);
    json_decref(doc);
  } else {
    CHECK(b.len == 0);
  }
  buf_reset(&b);
  if (pb_mirror_body(v[0], v[1], v[2], v[3], &b) == 0) {
    doc = json_loadb(b.data, b.len, 0, NULL);
    CHECK(json_is_object(doc));
    CHECK(json_object_size(doc) == (v[3][0] != '\0' ? 4u : 3u));
    CHECK(strcmp(json_string_value(json_object_get(doc, "offset")), v[2]) == 0);
    json_decref(doc);
  }
  buf_reset(&b);
  {
    const char *const topics[3] = { v[1], v[2], v[3] };
    if (pb_subscribe_body(v[0], topics, (size_t)(n - 1), &b) == 0) {
      json_t *subs;
      doc = json_loadb(b.data, b.len, 0, NULL);
      subs = json_object_get(doc, "subscriptions");
      CHECK(json_is_array(subs) && json_array_size(subs) == (size_t)(n - 1));
      for (i = 0; i < n - 1; i++)
        CHECK(strcmp(json_string_value(json_array_get(subs, (size_t)i)),
                     topics[i]) == 0);
      json_decref(doc);
    }
  }
  buf_reset(&b);
  if (pb_mirror_find_target(v[0], v[1], v[2], &b) == 0) {
    char *f = check_target(&b, "filter");
    CHECK(pb_value_ok(v[0]) && pb_value_ok(v[1]) && pb_value_ok(v[2]));
    CHECK(f != NULL && strstr(f, v[1]) != NULL);
    free(f);
  } else {
    CHECK(!pb_value_ok(v[0]) || !pb_value_ok(v[1]) || !pb_value_ok(v[2]));
    CHECK(b.len == 0);
  }
  buf_reset(&b);
  if (v[0][0] != '\0') {
    CHECK(pb_probe_target(v[0], &b) == 0);
    free(check_target(&b, "sort"));
  } else {
    CHECK(pb_probe_target(v[0], &b) == UV_EINVAL && b.len == 0);
  }
  buf_free(&b);
  free(s);
}

static void fuzz_cmp(const uint8_t *data, size_t size) {
  char *s = cstr(data, size), *lf = strchr(s, '\n');
  pb_cursor a, b;
  int ab, ba;

  if (lf != NULL) {
    *lf = '\0';
    if (pb_cursor_parse(s, &a, NULL, 0) == 0 &&
        pb_cursor_parse(lf + 1, &b, NULL, 0) == 0) {
      ab = pb_cursor_cmp(&a, &b);
      ba = pb_cursor_cmp(&b, &a);
      CHECK((ab < 0) == (ba > 0) && (ab == 0) == (ba == 0));
      CHECK(pb_cursor_cmp(&a, &a) == 0);
      if (ab == 0)
        CHECK(strcmp(a.created, b.created) == 0 && strcmp(a.id, b.id) == 0);
    }
  }
  free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int initialized;
  const uint8_t *rest;
  size_t n;
  int which;

  if (!initialized) {
    json_object_seed(1); /* the same hashing on every run */
    initialized = 1;
  }
  if (size == 0)
    return 0;
  which = data[0] & 0x0f;
  rest = data + 1;
  n = size - 1;
  if (which == 15 || which == 0) {
    fuzz_time(rest, n);
    fuzz_cursor(rest, n);
    fuzz_filter(rest, n);
    fuzz_page(rest, n, true);
    fuzz_page(rest, n, false);
    fuzz_error(rest, n);
    fuzz_auth(rest, n);
    fuzz_jwt(rest, n);
    fuzz_connect(rest, n);
    fuzz_event(rest, n);
    fuzz_mirror(rest, n);
    fuzz_time_format(rest, n);
    fuzz_builders(rest, n);
    fuzz_cmp(rest, n);
    return 0;
  }
  switch (which) {
  case 1:
    fuzz_time(rest, n);
    break;
  case 2:
    fuzz_time_format(rest, n);
    break;
  case 3:
    fuzz_cursor(rest, n);
    break;
  case 4:
    fuzz_filter(rest, n);
    break;
  case 5:
    fuzz_page(rest, n, true);
    break;
  case 6:
    fuzz_page(rest, n, false);
    break;
  case 7:
    fuzz_error(rest, n);
    break;
  case 8:
    fuzz_auth(rest, n);
    break;
  case 9:
    fuzz_jwt(rest, n);
    break;
  case 10:
    fuzz_connect(rest, n);
    break;
  case 11:
    fuzz_event(rest, n);
    break;
  case 12:
    fuzz_mirror(rest, n);
    break;
  case 13:
    fuzz_builders(rest, n);
    break;
  default:
    fuzz_cmp(rest, n);
    break;
  }
  return 0;
}
