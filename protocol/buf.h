/* A growable byte buffer with a hard cap.
 *
 * Embeddable: callers keep a `buf` by value and pass its address. Every buffer
 * fed from outside the process has a cap, so growth past it is an error the
 * caller reports (UV_ENOBUFS), never an unbounded allocation.
 */
#ifndef TETHER_PROTOCOL_BUF_H
#define TETHER_PROTOCOL_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct buf {
  char *data; /* owned; NULL until the first append */
  size_t len; /* bytes in use */
  size_t cap; /* bytes allocated */
  size_t max; /* growth beyond this fails with UV_ENOBUFS; 0 = no cap */
} buf;

/* Sets up an empty buffer that may grow to max bytes (0 = no cap). */
void buf_init(buf *b, size_t max);

/* Frees the storage; the buffer is empty and reusable afterwards. */
void buf_free(buf *b);

/* Makes room for extra more bytes. 0, UV_ENOBUFS past the cap, UV_ENOMEM. */
int buf_reserve(buf *b, size_t extra);

/* Appends n bytes. 0, UV_ENOBUFS past the cap, UV_ENOMEM. */
int buf_append(buf *b, const void *p, size_t n);

/* Appends a NUL-terminated string. */
int buf_append_str(buf *b, const char *s);

/* Appends formatted text (no NUL counted in len). */
int buf_appendf(buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int buf_vappendf(buf *b, const char *fmt, va_list ap);

/* Drops n bytes from the front. */
void buf_consume(buf *b, size_t n);

/* Empties the buffer and keeps its storage. */
static inline void buf_reset(buf *b) {
  b->len = 0;
}

/* Returns data NUL-terminated after len (the NUL is not counted), or NULL on
 * allocation failure. The pointer is borrowed until the next change. */
char *buf_cstr(buf *b);

/* Hands the storage to the caller (free() it) and leaves the buffer empty. */
char *buf_steal(buf *b);

/* Exchanges the contents of two buffers. */
void buf_swap(buf *a, buf *b);

#endif
