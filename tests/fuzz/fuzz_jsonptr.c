/* Fuzzes jsonptr_parse, jsonptr_get/jsonptr_resolve and
 * jsonptr_cursor_append.
 *
 * Input: POINTER "\n" JSON. The pointer is everything before the first LF
 * (so it may hold NUL and any other byte but LF); the rest is a JSON
 * document. With no LF the same bytes are used as both. On success every
 * result must match what the text says, and a failed lookup must name a
 * token whose container does resolve. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "protocol/jsonptr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* assert() vanishes under NDEBUG; a fuzz check must not. */
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "fuzz_jsonptr: %s:%d: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* A message is one printable line: control bytes are escaped. */
static void check_message(const char *err) {
  const unsigned char *s = (const unsigned char *)err;

  CHECK(s[0] != '\0');
  for (; *s; s++)
    CHECK(*s >= 0x20 && *s != 0x7f);
}

/* The tokens, escaped again, give back the text byte for byte. */
static void check_round_trip(const jsonptr *p) {
  size_t i, j, o = 0;

  for (i = 0; i < p->n; i++) {
    const jsonptr_token *k = &p->tokens[i];
    CHECK(o < p->text_len && p->text[o] == '/');
    o++;
    CHECK(k->name[k->len] == '\0');
    for (j = 0; j < k->len; j++) {
      char c = k->name[j];
      if (c == '~' || c == '/') {
        CHECK(o + 1 < p->text_len && p->text[o] == '~');
        CHECK(p->text[o + 1] == (c == '~' ? '0' : '1'));
        o += 2;
      } else {
        CHECK(o < p->text_len && p->text[o] == c);
        o++;
      }
    }
    CHECK(k->end == o);
    if (k->is_index) {
      CHECK(k->len > 0 && (k->name[0] != '0' || k->len == 1));
      for (j = 0; j < k->len; j++)
        CHECK(k->name[j] >= '0' && k->name[j] <= '9');
    }
  }
  CHECK(o == p->text_len);
}

/* The cursor text of v: a string's bytes, an integer's digits, or JSON that
 * parses back to an equal value. */
static void check_cursor(json_t *v) {
  char err[256] = "";
  buf b;
  int r;

  buf_init(&b, 0);
  r = jsonptr_cursor_append(v, &b, err, sizeof err);
  if (json_is_real(v)) {
    CHECK(r == UV_EINVAL);
    check_message(err);
  } else if (json_is_string(v)) {
    CHECK(r == 0 && b.len == json_string_length(v));
    CHECK(b.len == 0 || memcmp(b.data, json_string_value(v), b.len) == 0);
  } else {
    json_t *back;
    CHECK(r == 0 && b.len > 0);
    back = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    CHECK(back != NULL && json_equal(back, v));
    CHECK(memchr(b.data, '\n', b.len) == NULL);
    json_decref(back);
  }
  buf_free(&b);
}

static void check_lookup(const jsonptr *p, json_t *doc) {
  char err[512] = "";
  json_t *got = NULL, *container;
  size_t fail = (size_t)-1;
  jsonptr prefix;
  int r;

  r = jsonptr_resolve(p, doc, &got, &fail, err, sizeof err);
  CHECK(jsonptr_get(p, doc) == got);
  if (r == 0) {
    CHECK(got != NULL && fail == p->n && err[0] == '\0');
    check_cursor(got);
    return;
  }
  CHECK(r == UV_ENOENT || r == UV_EINVAL);
  CHECK(got == NULL && fail < p->n);
  check_message(err);

  /* The pointer up to the failing token resolves, to its container. */
  CHECK(jsonptr_parse(p->text, fail == 0 ? 0 : p->tokens[fail - 1].end, &prefix,
                      NULL, 0) == 0);
  CHECK(prefix.n == fail);
  container = jsonptr_get(&prefix, doc);
  CHECK(container != NULL);
  if (json_is_object(container))
    CHECK(r == UV_ENOENT);
  jsonptr_free(&prefix);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int initialized;
  const char *text = (const char *)data, *json = text;
  const char *lf = size ? memchr(data, '\n', size) : NULL;
  size_t text_len = size, json_len = size, slashes = 0, i;
  char err[512] = "";
  jsonptr p;
  json_t *doc;
  int r;

  if (!initialized) {
    json_object_seed(1); /* the same hashing on every run */
    initialized = 1;
  }
  if (lf != NULL) {
    text_len = (size_t)(lf - text);
    json = lf + 1;
    json_len = size - text_len - 1;
  }

  r = jsonptr_parse(size ? text : NULL, text_len, &p, err, sizeof err);
  if (r != 0) {
    CHECK(r == UV_EINVAL);
    CHECK(p.tokens == NULL && p.n == 0 && p.text == NULL);
    CHECK(strncmp(err, "offset ", 7) == 0);
    check_message(err);
    jsonptr_free(&p);
    return 0;
  }
  for (i = 0; i < text_len; i++)
    slashes += text[i] == '/';
  CHECK(p.n == slashes);
  CHECK(p.text_len == text_len && p.text[text_len] == '\0');
  CHECK(text_len == 0 || memcmp(p.text, text, text_len) == 0);
  check_round_trip(&p);

  doc = json_loadb(json, json_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
  if (doc != NULL) {
    check_lookup(&p, doc);
    check_cursor(doc);
    json_decref(doc);
  }
  CHECK(jsonptr_get(&p, NULL) == NULL);
  jsonptr_free(&p);
  CHECK(p.tokens == NULL);
  return 0;
}
