#include "protocol/jsonptr.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "protocol/errmsg.h"

/* How many bytes of a member name or a pointer prefix a message shows. A
 * pointer comes from a config file and a name from the upstream; either may
 * be long or hold control bytes, and a message must stay one short line. */
#define JSONPTR_SHOW_NAME   64
#define JSONPTR_SHOW_PREFIX 128

/* Room for JSONPTR_SHOW_PREFIX bytes escaped as \xNN, quotes and "...". */
#define JSONPTR_SHOWN_MAX (4 * JSONPTR_SHOW_PREFIX + 8)

/* Writes up to max bytes of s into out (JSONPTR_SHOWN_MAX bytes), with
 * control bytes as \xNN. When quoted, the text is wrapped in '"' and '"' and
 * '\' are escaped too, as in JSON. A cut is marked with "...". */
static const char *show(char *out, const char *s, size_t len, size_t max,
                        bool quoted) {
  size_t i, o = 0, n = len < max ? len : max;

  if (quoted)
    out[o++] = '"';
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) {
      o += (size_t)snprintf(out + o, 5, "\\x%02X", c);
    } else if (quoted && (c == '"' || c == '\\')) {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else {
      out[o++] = (char)c;
    }
  }
  if (quoted)
    out[o++] = '"';
  if (n < len) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

/* RFC 6901 array-index = %x30 / ( %x31-39 *%x30-39 ). The value saturates
 * at SIZE_MAX, which is past the end of every array jansson can hold. */
static bool parse_index(const char *s, size_t len, size_t *out) {
  size_t i, v = 0;

  if (len == 0 || (s[0] == '0' && len > 1))
    return false;
  for (i = 0; i < len; i++) {
    unsigned d = (unsigned char)s[i] - '0';
    if (d > 9)
      return false;
    if (v > (SIZE_MAX - d) / 10)
      v = SIZE_MAX;
    else if (v != SIZE_MAX)
      v = v * 10 + d;
  }
  *out = v;
  return true;
}

int jsonptr_parse(const char *text, size_t len, jsonptr *out, char *err,
                  size_t errlen) {
  char shown[JSONPTR_SHOWN_MAX];
  size_t i, n = 0, t;
  char *block, *copy, *names;
  jsonptr_token *tok;

  assert(out != NULL);
  assert(text != NULL || len == 0);
  memset(out, 0, sizeof *out);
  if (len > 0 && text[0] != '/') {
    errmsg_set(err, errlen,
               "offset 0: a pointer is empty or starts with \"/\", not %s",
               show(shown, text, 1, 1, true));
    return UV_EINVAL;
  }
  for (i = 0; i < len; i++) {
    if (text[i] == '/') {
      n++;
    } else if (text[i] == '~') {
      if (i + 1 == len) {
        errmsg_set(err, errlen,
                   "offset %zu: \"~\" ends the pointer (write \"~0\" for \"~\" "
                   "and \"~1\" for \"/\")",
                   i);
        return UV_EINVAL;
      }
      if (text[i + 1] != '0' && text[i + 1] != '1') {
        errmsg_set(
            err, errlen,
            "offset %zu: %s is not an escape (write \"~0\" for \"~\" and "
            "\"~1\" for \"/\")",
            i, show(shown, text + i, 2, 2, true));
        return UV_EINVAL;
      }
      i++;
    }
  }

  /* One block: the token array, a copy of the text, then every unescaped
   * name with a NUL after it. Unescaping never lengthens a token, so len
   * bytes plus one NUL per token bound the names. */
  if (len > SIZE_MAX / 4 ||
      n > (SIZE_MAX - 2 * (len + 1)) / (sizeof *tok + 1)) {
    errmsg_set(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  block = malloc(n * sizeof *tok + 2 * (len + 1) + n);
  if (block == NULL) {
    errmsg_set(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  tok = (jsonptr_token *)(void *)block;
  copy = block + n * sizeof *tok;
  names = copy + len + 1;
  if (len > 0)
    memcpy(copy, text, len);
  copy[len] = '\0';

  /* The syntax was checked above, so every "~" here is "~0" or "~1". */
  for (i = 0, t = 0; i < len; t++) {
    jsonptr_token *k = &tok[t];
    i++; /* the "/" */
    k->name = names;
    k->len = 0;
    while (i < len && text[i] != '/') {
      if (text[i] == '~') {
        names[k->len++] = text[i + 1] == '1' ? '/' : '~';
        i += 2;
      } else {
        names[k->len++] = text[i++];
      }
    }
    names[k->len] = '\0';
    names += k->len + 1;
    k->end = i;
    k->is_index = parse_index(k->name, k->len, &k->index);
    if (!k->is_index)
      k->index = 0;
  }
  assert(t == n);
  out->tokens = tok;
  out->n = n;
  out->text = copy;
  out->text_len = len;
  return 0;
}

void jsonptr_free(jsonptr *p) {
  if (p == NULL)
    return;
  free(p->tokens);
  memset(p, 0, sizeof *p);
}

/* One step down from cur by token k, or NULL. No messages: this is the hot
 * path, run for every item of every page. */
static json_t *step(json_t *cur, const jsonptr_token *k) {
  if (json_is_object(cur))
    return json_object_getn(cur, k->name, k->len);
  if (json_is_array(cur) && k->is_index)
    return json_array_get(cur, k->index);
  return NULL;
}

json_t *jsonptr_get(const jsonptr *p, json_t *doc) {
  size_t i;

  assert(p != NULL);
  for (i = 0; doc != NULL && i < p->n; i++)
    doc = step(doc, &p->tokens[i]);
  return doc;
}

int jsonptr_resolve(const jsonptr *p, json_t *doc, json_t **out,
                    size_t *fail_token, char *err, size_t errlen) {
  char name[JSONPTR_SHOWN_MAX], at[JSONPTR_SHOWN_MAX + 4];
  const jsonptr_token *k;
  json_t *cur = doc, *next;
  size_t i = 0, prefix;
  int r = 0;

  assert(p != NULL && out != NULL);
  *out = NULL;
  if (doc == NULL) {
    errmsg_set(err, errlen, "no document");
    r = UV_EINVAL;
    goto done;
  }
  for (; i < p->n; i++, cur = next) {
    k = &p->tokens[i];
    if ((next = step(cur, k)) != NULL)
      continue;

    /* Failed: say where. The container is at text[0..prefix). */
    prefix = i == 0 ? 0 : p->tokens[i - 1].end;
    at[0] = '\0';
    if (prefix > 0) {
      memcpy(at, " at ", 5);
      show(at + 4, p->text, prefix, JSONPTR_SHOW_PREFIX, false);
    }
    show(name, k->name, k->len, JSONPTR_SHOW_NAME, true);
    if (json_is_object(cur)) {
      errmsg_set(err, errlen, "no member %s%s", name, at);
      r = UV_ENOENT;
    } else if (json_is_array(cur)) {
      if (k->len == 1 && k->name[0] == '-') {
        errmsg_set(err, errlen, "\"-\" names no element%s", at);
        r = UV_ENOENT;
      } else if (!k->is_index) {
        errmsg_set(err, errlen, "%s is not an array index%s", name, at);
        r = UV_EINVAL;
      } else {
        /* The token's own digits, so a huge index reads as written. */
        errmsg_set(err, errlen, "index %s past the end (length %zu)%s",
                   show(name, k->name, k->len, JSONPTR_SHOW_NAME, false),
                   json_array_size(cur), at);
        r = UV_ENOENT;
      }
    } else if (prefix == 0) {
      errmsg_set(err, errlen, "the document is not an object or array");
      r = UV_EINVAL;
    } else {
      errmsg_set(err, errlen, "not an object or array%s", at);
      r = UV_EINVAL;
    }
    goto done;
  }
  *out = cur;

done:
  if (fail_token != NULL)
    *fail_token = i;
  return r;
}

int jsonptr_cursor_append(const json_t *v, buf *out, char *err, size_t errlen) {
  const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
  char num[32];
  size_t need;
  int r;

  assert(out != NULL);
  if (v == NULL) {
    errmsg_set(err, errlen, "no cursor value");
    return UV_EINVAL;
  }
  switch (json_typeof(v)) {
  case JSON_STRING:
    r = buf_append(out, json_string_value(v), json_string_length(v));
    break;
  case JSON_INTEGER:
    snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    r = buf_append_str(out, num);
    break;
  case JSON_REAL:
    /* 1.0 and 1 are the same number to the server but different text to
     * us, and %.17g can print a value the server never sent. */
    errmsg_set(err, errlen,
               "a cursor cannot be a real number (%.17g): use an integer or a "
               "string",
               json_real_value(v));
    return UV_EINVAL;
  default:
    need = json_dumpb(v, NULL, 0, flags);
    if (need == 0) {
      errmsg_set(err, errlen, "cannot encode the cursor value as JSON");
      return UV_EINVAL;
    }
    if ((r = buf_reserve(out, need)) != 0)
      break;
    /* Nothing else touches v between the two calls, so the size holds. */
    if (json_dumpb(v, out->data + out->len, need, flags) != need) {
      errmsg_set(err, errlen, "cannot encode the cursor value as JSON");
      return UV_EINVAL;
    }
    out->len += need;
    break;
  }
  if (r != 0)
    errmsg_set(err, errlen,
               r == UV_ENOBUFS ? "cursor too long" : "out of memory");
  return r;
}
