#include "protocol/envelope.h"

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
    for (run = i; run < len; run++)
      if (p[run] < 0x20 || p[run] == '"' || p[run] == '\\' || p[run] >= 0x80)
        break;
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
