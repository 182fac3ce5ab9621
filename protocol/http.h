/* HTTP/1.1 pieces that need no socket: URLs, request heads and the response
 * headers a source has to interpret (RFC 3986, RFC 9110, RFC 8288).
 *
 * loop/http_client speaks the protocol; this module only turns text into
 * values and values into text, so every rule here is unit-tested and fuzzed
 * without I/O. Errors are UV_EINVAL (malformed input), UV_E2BIG (a cap, see
 * below), UV_ENOBUFS (an output buffer's cap) or UV_ENOMEM, each with the
 * reason in the caller's err buffer where the function takes one.
 *
 *   http_url u;
 *   if (http_url_parse(&u, "https://[::1]:8443/x?y=1", err, sizeof err) == 0)
 *     ... u.https, u.host "::1", u.port 8443, u.target "/x?y=1" ...
 *   http_url_free(&u);
 */
#ifndef TETHER_PROTOCOL_HTTP_H
#define TETHER_PROTOCOL_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocol/buf.h"

/* Caps on the text this module accepts. */
#define HTTP_URL_MAX          8192  /* bytes of a URL or a Location value */
#define HTTP_HOST_MAX         255   /* bytes of a host name (RFC 1035) */
#define HTTP_REQUEST_HEAD_MAX 65536 /* bytes of a request head we build */
#define HTTP_LINK_MAX         65536 /* bytes of one Link header value */
/* Retry-After delays saturate here (about 136 years in seconds); callers
 * clamp to their own maximum anyway. */
#define HTTP_RETRY_AFTER_MAX_S 4294967295u

/* One header line. Both strings are borrowed from whoever made the array. */
typedef struct http_header {
  const char *name;
  const char *value;
} http_header;

/* An absolute http or https URL, split for a request. */
typedef struct http_url {
  bool https;
  char *host;    /* owned: lower-case name or IP literal, no brackets */
  uint16_t port; /* as written, else 80 or 443 */
  bool ipv6;     /* host is an IPv6 literal (bracketed in the URL) */
  char *target;  /* owned: path and query, at least "/"; no fragment */
} http_url;

/* Parses an absolute http:// or https:// URL: scheme and host are
 * case-insensitive, IPv6 literals sit in brackets, a missing port is the
 * scheme's default, a fragment is dropped, bytes from 0x80 up in the target
 * are percent-encoded. Userinfo (user:password@) is refused, as are spaces
 * and control characters. Returns 0, or UV_EINVAL / UV_E2BIG with err set
 * ("URL scheme must be http or https"); u needs http_url_free either way. */
int http_url_parse(http_url *u, const char *url, char *err, size_t errlen);

/* Frees the strings of u; a zeroed or already freed u is fine. */
void http_url_free(http_url *u);

/* The Host header value and CONNECT authority of u: "host" (or "[v6]"),
 * followed by ":port" when the port is not the scheme's default or when
 * always_port is set. Returns the length written, or UV_ENOBUFS when out
 * (HTTP_HOST_MAX + 9 bytes always suffice) is too small. */
int http_url_authority(const http_url *u, bool always_port, char *out,
                       size_t outlen);

/* True when the absolute URLs a and b have the same origin: scheme, host
 * and port (RFC 6454), after parsing (so "HTTP://X:80/" is "http://x/").
 * Anything that does not parse as http(s) is no origin: false. */
bool http_url_same_origin(const char *a, const char *b);

/* The URL as text, scheme://authority/target, owned by the caller (free());
 * NULL when memory ran out. */
char *http_url_format(const http_url *u);

/* Resolves a URI reference (a Location value) against an absolute base URL
 * by RFC 3986 §5.2, dot segments removed. Spaces and bytes from 0x80 up in
 * ref are percent-encoded first, as browsers do; other control characters
 * are an error. *out is owned by the caller (free()). The result may have
 * any scheme: parse it with http_url_parse to check it is http(s). */
int http_url_resolve(const char *base, const char *ref, char **out, char *err,
                     size_t errlen);

/* Appends s[0..n) with every byte outside A-Z a-z 0-9 - . _ ~ written as
 * %XX (upper-case hex), for a query value. 0, UV_ENOBUFS or UV_ENOMEM; on
 * error out is left as it was. */
int http_percent_encode(buf *out, const char *s, size_t n);

/* What a request head is made of; every pointer is borrowed for the call. */
typedef struct http_request_head {
  const char *method;         /* a token: "GET", "POST", ... */
  const http_url *url;        /* gives the target and Host */
  bool absolute_form;         /* target is the whole URL (an HTTP proxy) */
  const http_header *headers; /* extra headers, sent in order */
  size_t n_headers;
  const char *user_agent; /* sent unless headers has one; NULL = none */
  size_t body_len;        /* announced in Content-Length */
} http_request_head;

/* Appends "METHOD target HTTP/1.1", Host (unless headers has one, which
 * then wins), User-Agent, the extra headers and, when body_len > 0 or the
 * method is POST, PUT or PATCH, Content-Length; then the blank line. Header
 * names must be tokens and values must not hold CR or LF; Content-Length
 * and Transfer-Encoding belong to the client and are refused. Returns 0, or
 * UV_EINVAL / UV_E2BIG (over HTTP_REQUEST_HEAD_MAX) / UV_ENOMEM with err
 * set; out is left as it was on error. */
int http_request_build(buf *out, const http_request_head *h, char *err,
                       size_t errlen);

/* Appends "CONNECT host:port HTTP/1.1" with Host and, when not NULL,
 * User-Agent, for a tunnel through a proxy to u. 0, UV_ENOBUFS or
 * UV_ENOMEM. */
int http_request_build_connect(buf *out, const http_url *u,
                               const char *user_agent);

/* Parses an HTTP-date in any of the three forms of RFC 9110 §5.6.7
 * (IMF-fixdate "Sun, 06 Nov 1994 08:49:37 GMT", RFC 850 "Sunday,
 * 06-Nov-94 08:49:37 GMT", asctime "Sun Nov  6 08:49:37 1994") into Unix
 * seconds. now (Unix seconds) places an RFC 850 two-digit year: one that
 * would be more than 50 years ahead is taken from the previous century.
 * Returns 0 or UV_EINVAL. */
int http_date_parse(const char *s, int64_t now, int64_t *out);

/* Interprets a Retry-After value: delay-seconds, or an HTTP-date measured
 * from the response's Date header when that parses, else from now (Unix
 * seconds). *delay_ms gets the wait, 0 for a date in the past, saturating
 * at HTTP_RETRY_AFTER_MAX_S seconds. Returns 0, or UV_EINVAL with err set
 * ("Retry-After is neither delay-seconds nor an HTTP-date: \"soon\""). */
int http_retry_after(const char *value, const char *date_header, int64_t now,
                     uint64_t *delay_ms, char *err, size_t errlen);

/* True when the media type of a Content-Type value is essence ("type/sub"),
 * both compared without case and parameters ignored:
 * "Text/Event-Stream; charset=utf-8" is "text/event-stream". NULL value is
 * false. */
bool http_content_type_is(const char *value, const char *essence);

/* Finds in an RFC 8288 Link value the first link whose first rel parameter
 * lists rel (space-separated relation types, compared without case); links
 * with an anchor parameter are skipped. Several Link lines are one list:
 * join them with ", ". *target gets the URI reference between < and >,
 * unresolved, owned by the caller (free()). Returns 0, UV_ENOENT when no
 * link has that rel, or UV_EINVAL / UV_E2BIG with err set ("Link: expected
 * '<' at offset 0"). */
int http_link_find(const char *value, const char *rel, char **target, char *err,
                   size_t errlen);

/* True when a NO_PROXY list says host (a name or an IP literal without
 * brackets) at port is reached directly. The list is separated by commas
 * and spaces; an entry is "*" (everything), a domain ("example.com" and
 * ".example.com" both match it and its subdomains), an IP address, an IP
 * prefix ("10.0.0.0/8", "fd00::/8"), optionally with ":port" ("[::1]:8080"
 * for IPv6). Names compare without case and without a trailing dot. NULL or
 * an empty list matches nothing. */
bool http_no_proxy_match(const char *no_proxy, const char *host, uint16_t port);

#endif
