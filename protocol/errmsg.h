/* The one way a codec fills a caller's message buffer: printf-style, cut to
 * fit, and nothing at all when the caller passed no buffer. */
#ifndef TETHER_PROTOCOL_ERRMSG_H
#define TETHER_PROTOCOL_ERRMSG_H

#include <stddef.h>

/* Writes the formatted text into err (errlen bytes, NUL-terminated) unless
 * err is NULL or errlen is 0. */
void errmsg_set(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
