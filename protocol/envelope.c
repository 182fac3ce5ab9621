#include "protocol/envelope.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <uv.h>

static const char hex[] = "0123456789abcdef";

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there
 * are not one (overlong forms, surrogates and values past U+10FFFF are not). */
static size_t utf8_seq(const unsigned char *p, size_t n) {
  unsigned char c = p[0];

  if (c < 0x80)
    return 1;
  if (c >= 0xC2 && c <= 0xDF)
    return n >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
      return 0;
    if (c == 0xE0 && p[1] < 0xA0)
      return 0; /* overlong */
    if (c == 0xED && p[1] >= 0xA0)
      return 0; /* UTF-16 surrogate */
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 ||
        (p[3] & 0xC0) != 0x80)
      return 0;
    if (c == 0xF0 && p[1] < 0x90)
      return 0; /* overlong */
    if (c == 0xF4 && p[1] >= 0x90)
      return 0; /* past U+10FFFF */
    return 4;
  }
  return 0;
}

/* Deeper nesting is not JSON to us: the data is then sent as a string,
 * which is still valid. The bound keeps the validator's stack fixed. */
#define JSON_MAX_DEPTH 256

static size_t skip_ws(const unsigned char *p, size_t i, size_t n) {
  while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
    i++;
  return i;
}

static bool is_hex(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
         (c >= 'A' && c <= 'F');
}

/* A string starting at the quote p[i]; returns the index after its closing
 * quote, or 0 when it is not one. */
#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* True when one of the 8 bytes in w needs a closer look inside a JSON
 * string: a control (< 0x20), '"', '\\', or the high bit (non-ASCII). The
 * usual word-at-a-time tests for a zero or a small byte. */
static bool word_special(uint64_t w) {
  uint64_t quote = w ^ (ONES * '"'), slash = w ^ (ONES * '\\');

  return (((w - ONES * 0x20) | (quote - ONES) | (slash - ONES)) &
          ~(quote & slash & w) & HIGHS) != 0 ||
         (w & HIGHS) != 0;
}

/* Skips the plain bytes of a string from i, 8 at a time where it can. */
static size_t skip_plain(const unsigned char *p, size_t i, size_t n) {
  uint64_t w;

  while (n - i >= 8) {
    memcpy(&w, p + i, 8);
    if (word_special(w))
      break;
    i += 8;
  }
  while (i < n && p[i] >= 0x20 && p[i] < 0x80 && p[i] != '"' && p[i] != '\\')
    i++;
  return i;
}

static size_t scan_string(const unsigned char *p, size_t i, size_t n) {
  size_t k;

  for (i++; i < n;) {
    unsigned char c;

    if ((i = skip_plain(p, i, n)) >= n)
      return 0;
    c = p[i];

    if (c == '"')
      return i + 1;
    if (c < 0x20)
      return 0;
    if (c == '\\') {
      if (i + 1 >= n)
        return 0;
      c = p[i + 1];
      if (c == 'u') {
        if (i + 5 >= n || !is_hex(p[i + 2]) || !is_hex(p[i + 3]) ||
            !is_hex(p[i + 4]) || !is_hex(p[i + 5]))
          return 0;
        i += 6;
      } else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' ||
                 c == 'n' || c == 'r' || c == 't') {
        i += 2;
      } else {
        return 0;
      }
      continue;
    }
    if (c >= 0x80) {
      if ((k = utf8_seq(p + i, n - i)) == 0)
        return 0;
      i += k;
      continue;
    }
    i++;
  }
  return 0;
}

/* A number at p[i]; returns the index after it, or 0. */
static size_t scan_number(const unsigned char *p, size_t i, size_t n) {
  size_t start;

  if (i < n && p[i] == '-')
    i++;
  if (i >= n)
    return 0;
  if (p[i] == '0') {
    i++;
  } else if (p[i] >= '1' && p[i] <= '9') {
    while (i < n && p[i] >= '0' && p[i] <= '9')
      i++;
  } else {
    return 0;
  }
  if (i < n && p[i] == '.') {
    start = ++i;
    while (i < n && p[i] >= '0' && p[i] <= '9')
      i++;
    if (i == start)
      return 0;
  }
  if (i < n && (p[i] == 'e' || p[i] == 'E')) {
    i++;
    if (i < n && (p[i] == '+' || p[i] == '-'))
      i++;
    start = i;
    while (i < n && p[i] >= '0' && p[i] <= '9')
      i++;
    if (i == start)
      return 0;
  }
  return i;
}

static size_t scan_literal(const unsigned char *p, size_t i, size_t n,
                           const char *lit, size_t len) {
  return n - i >= len && memcmp(p + i, lit, len) == 0 ? i + len : 0;
}

bool envelope_is_json(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  /* One bit per level: 1 = inside an object, 0 = inside an array. */
  unsigned char stack[JSON_MAX_DEPTH / 8];
  size_t depth = 0, i = 0, next;

  /* The grammar as a small state machine: expect a value; after a value,
   * expect ',' or the closer of the current level (or the end). */
  for (;;) {
    i = skip_ws(p, i, n);
    if (i >= n)
      return false;
    /* A value. */
    switch (p[i]) {
    case '{':
    case '[': {
      bool object = p[i] == '{';

      if (depth == JSON_MAX_DEPTH)
        return false;
      if (object)
        stack[depth / 8] |= (unsigned char)(1u << (depth % 8));
      else
        stack[depth / 8] &= (unsigned char)~(1u << (depth % 8));
      depth++;
      i = skip_ws(p, i + 1, n);
      if (i < n && p[i] == (object ? '}' : ']')) {
        /* An empty container is a whole value. */
        depth--;
        i++;
        goto after_value;
      }
      if (object) {
        /* The first key. */
        if (i >= n || p[i] != '"' || (i = scan_string(p, i, n)) == 0)
          return false;
        i = skip_ws(p, i, n);
        if (i >= n || p[i] != ':')
          return false;
        i++;
      }
      continue;
    }
    case '"':
      next = scan_string(p, i, n);
      break;
    case 't':
      next = scan_literal(p, i, n, "true", 4);
      break;
    case 'f':
      next = scan_literal(p, i, n, "false", 5);
      break;
    case 'n':
      next = scan_literal(p, i, n, "null", 4);
      break;
    default:
      next = scan_number(p, i, n);
    }
    if (next == 0)
      return false;
    i = next;

  after_value:
    for (;;) {
      i = skip_ws(p, i, n);
      if (depth == 0)
        return i == n;
      if (i >= n)
        return false;
      if (p[i] == ',') {
        i++;
        if (stack[(depth - 1) / 8] & (1u << ((depth - 1) % 8))) {
          i = skip_ws(p, i, n);
          if (i >= n || p[i] != '"' || (i = scan_string(p, i, n)) == 0)
            return false;
          i = skip_ws(p, i, n);
          if (i >= n || p[i] != ':')
            return false;
          i++;
        }
        break; /* expect the next value */
      }
      if (p[i] ==
          ((stack[(depth - 1) / 8] & (1u << ((depth - 1) % 8))) ? '}' : ']')) {
        depth--;
        i++;
        continue;
      }
      return false;
    }
  }
}

int envelope_append_json_string(buf *out, const char *s, size_t len) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0, run, k;
  int err;

  /* The worst case is 6 output bytes per input byte (\u00XX); reserving it
   * up front keeps the loop free of checks. */
  if (len > (SIZE_MAX - 2) / 6)
    return UV_ENOBUFS;
  if ((err = buf_reserve(out, len * 6 + 2)) != 0)
    return err;
  out->data[out->len++] = '"';
  while (i < len) {
    /* Copy the longest plain run at once: most text needs no escaping. */
    run = skip_plain(p, i, len);
    memcpy(out->data + out->len, p + i, run - i);
    out->len += run - i;
    i = run;
    if (i == len)
      break;
    if (p[i] >= 0x80) {
      k = utf8_seq(p + i, len - i);
      if (k == 0) {
        memcpy(out->data + out->len, "\xEF\xBF\xBD", 3); /* U+FFFD */
        out->len += 3;
        i++;
      } else {
        memcpy(out->data + out->len, p + i, k);
        out->len += k;
        i += k;
      }
      continue;
    }
    out->data[out->len++] = '\\';
    switch (p[i]) {
    case '"':
      out->data[out->len++] = '"';
      break;
    case '\\':
      out->data[out->len++] = '\\';
      break;
    case '\n':
      out->data[out->len++] = 'n';
      break;
    case '\r':
      out->data[out->len++] = 'r';
      break;
    case '\t':
      out->data[out->len++] = 't';
      break;
    case '\b':
      out->data[out->len++] = 'b';
      break;
    case '\f':
      out->data[out->len++] = 'f';
      break;
    default:
      memcpy(out->data + out->len, "u00", 3);
      out->len += 3;
      out->data[out->len++] = hex[p[i] >> 4];
      out->data[out->len++] = hex[p[i] & 15];
    }
    i++;
  }
  out->data[out->len++] = '"';
  return 0;
}

int envelope_prefix_init(envelope_prefix *p, const char *consumer) {
  buf b;
  int err;

  buf_init(&b, 0);
  if ((err = buf_append_str(&b, "{\"consumer\":")) != 0 ||
      (err = envelope_append_json_string(&b, consumer, strlen(consumer))) !=
          0 ||
      (err = buf_append_str(&b, ",\"seq\":")) != 0) {
    buf_free(&b);
    return err;
  }
  p->len = b.len;
  p->data = buf_steal(&b);
  return p->data == NULL ? UV_ENOMEM : 0;
}

void envelope_prefix_free(envelope_prefix *p) {
  free(p->data);
  p->data = NULL;
  p->len = 0;
}

size_t envelope_put_u64(char *out, uint64_t v) {
  char tmp[20];
  size_t n = 0, i;

  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (i = 0; i < n; i++)
    out[i] = tmp[n - 1 - i];
  return n;
}

#define PUT_LIT(b, lit)                                                        \
  do {                                                                         \
    memcpy((b)->data + (b)->len, lit, sizeof(lit) - 1);                        \
    (b)->len += sizeof(lit) - 1;                                               \
  } while (0)

/* Largest string length the envelope takes: its worst case (6 bytes per
 * byte) must not overflow size_t. */
#define ENVELOPE_MAX_FIELD (SIZE_MAX / 64)

int envelope_append(buf *out, const envelope_prefix *p, const envelope *e) {
  size_t event_len = strlen(e->event), kind_len = strlen(e->kind),
         time_len = strlen(e->time), need;
  int err;

  if (e->cursor_len > ENVELOPE_MAX_FIELD || e->data_len > ENVELOPE_MAX_FIELD ||
      event_len > ENVELOPE_MAX_FIELD || kind_len > ENVELOPE_MAX_FIELD ||
      time_len > ENVELOPE_MAX_FIELD)
    return UV_ENOBUFS;
  /* One reservation for the worst case of the whole line keeps the hot
   * path free of growth checks: every write below fits in it. */
  need = p->len + 20 + 64 + (e->cursor_len + event_len + kind_len) * 6 + 6 +
         time_len + (e->data_is_json ? e->data_len : e->data_len * 6 + 2);
  if ((err = buf_reserve(out, need)) != 0)
    return err;
  memcpy(out->data + out->len, p->data, p->len);
  out->len += p->len;
  out->len += envelope_put_u64(out->data + out->len, e->seq);
  PUT_LIT(out, ",\"cursor\":");
  envelope_append_json_string(out, e->cursor, e->cursor_len);
  PUT_LIT(out, ",\"event\":");
  envelope_append_json_string(out, e->event, event_len);
  PUT_LIT(out, ",\"kind\":");
  envelope_append_json_string(out, e->kind, kind_len);
  PUT_LIT(out, ",\"time\":\"");
  memcpy(out->data + out->len, e->time, time_len);
  out->len += time_len;
  PUT_LIT(out, "\",\"data\":");
  if (e->data_is_json) {
    memcpy(out->data + out->len, e->data, e->data_len);
    out->len += e->data_len;
  } else {
    envelope_append_json_string(out, e->data, e->data_len);
  }
  PUT_LIT(out, "}\n");
  return 0;
}

void envelope_format_time(int64_t unix_ms, char *out) {
  time_t secs = (time_t)(unix_ms / 1000);
  int ms = (int)(unix_ms % 1000);
  struct tm tm;

  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  gmtime_r(&secs, &tm);
  strftime(out, 21, "%Y-%m-%dT%H:%M:%S", &tm);
  out[19] = '.';
  out[20] = (char)('0' + ms / 100);
  out[21] = (char)('0' + ms / 10 % 10);
  out[22] = (char)('0' + ms % 10);
  out[23] = 'Z';
  out[24] = '\0';
}
