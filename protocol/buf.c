#include "protocol/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

void buf_init(buf *b, size_t max) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->max = max;
}

void buf_free(buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

int buf_reserve(buf *b, size_t extra) {
  size_t need, cap;
  char *p;

  /* One byte more than asked for, so buf_cstr never has to grow. */
  if (extra > SIZE_MAX - b->len - 1)
    return UV_ENOBUFS;
  need = b->len + extra + 1;
  if (need <= b->cap)
    return 0;
  if (b->max != 0 && need > b->max + 1)
    return UV_ENOBUFS;
  cap = b->cap ? b->cap : 64;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  if (b->max != 0 && cap > b->max + 1)
    cap = b->max + 1;
  p = realloc(b->data, cap);
  if (p == NULL)
    return UV_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int buf_append(buf *b, const void *p, size_t n) {
  int err;

  if (n == 0)
    return 0;
  if ((err = buf_reserve(b, n)) != 0)
    return err;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

int buf_append_str(buf *b, const char *s) {
  return buf_append(b, s, strlen(s));
}

int buf_vappendf(buf *b, const char *fmt, va_list ap) {
  va_list ap2;
  int n, err;

  va_copy(ap2, ap);
  n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0)
    return UV_EINVAL;
  if ((err = buf_reserve(b, (size_t)n)) != 0)
    return err;
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  return 0;
}

int buf_appendf(buf *b, const char *fmt, ...) {
  va_list ap;
  int err;

  va_start(ap, fmt);
  err = buf_vappendf(b, fmt, ap);
  va_end(ap);
  return err;
}

void buf_consume(buf *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

char *buf_cstr(buf *b) {
  if (buf_reserve(b, 0) != 0)
    return NULL;
  b->data[b->len] = '\0';
  return b->data;
}

char *buf_steal(buf *b) {
  char *p = buf_cstr(b);

  if (p == NULL)
    return NULL;
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  return p;
}

void buf_swap(buf *a, buf *b) {
  buf t = *a;

  *a = *b;
  *b = t;
}
