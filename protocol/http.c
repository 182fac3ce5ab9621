#include "protocol/http.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "protocol/errmsg.h"

static const char hex_digits[] = "0123456789ABCDEF";

/* The ASCII helpers below never depend on the locale. */
static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static bool is_alpha(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(int c) {
  return c >= '0' && c <= '9';
}

static bool is_ows(int c) {
  return c == ' ' || c == '\t';
}

static bool is_unreserved(int c) {
  return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' ||
         c == '~';
}

/* RFC 9110 tchar. */
static bool is_tchar(int c) {
  return is_alpha(c) || is_digit(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

static bool ieq_n(const char *a, const char *b, size_t n) {
  size_t i;

  for (i = 0; i < n; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
      return false;
  return true;
}

/* Quotes at most 40 bytes of s for an error message, control bytes as '?'. */
static const char *excerpt(const char *s, char *out, size_t outlen) {
  size_t i, n = strlen(s);

  if (outlen < 48)
    return "";
  for (i = 0; i < n && i < 40; i++)
    out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  if (n > 40) {
    memcpy(out + i, "...", 3);
    i += 3;
  }
  out[i] = '\0';
  return out;
}

/* ---- URLs ---------------------------------------------------------------- */

void http_url_free(http_url *u) {
  free(u->host);
  free(u->target);
  u->host = NULL;
  u->target = NULL;
}

static uint16_t default_port(bool https) {
  return https ? 443 : 80;
}

int http_url_parse(http_url *u, const char *url, char *err, size_t errlen) {
  const char *p, *auth, *auth_end, *host, *host_end, *port_s = NULL, *end;
  size_t n, i, hl;
  buf t;
  int rc;

  memset(u, 0, sizeof *u);
  if (url == NULL) {
    errmsg_set(err, errlen, "URL is missing");
    return UV_EINVAL;
  }
  n = strlen(url);
  if (n > HTTP_URL_MAX) {
    errmsg_set(err, errlen, "URL longer than %d bytes", HTTP_URL_MAX);
    return UV_E2BIG;
  }
  for (i = 0; i < n; i++)
    if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f) {
      errmsg_set(err, errlen,
                 "URL contains a space or control character at "
                 "offset %zu",
                 i);
      return UV_EINVAL;
    }
  for (p = url;
       is_alpha(*p) || is_digit(*p) || *p == '+' || *p == '-' || *p == '.'; p++)
    ;
  if (p == url || strncmp(p, "://", 3) != 0) {
    errmsg_set(err, errlen, "URL must start with http:// or https://");
    return UV_EINVAL;
  }
  if ((size_t)(p - url) == 4 && ieq_n(url, "http", 4))
    u->https = false;
  else if ((size_t)(p - url) == 5 && ieq_n(url, "https", 5))
    u->https = true;
  else {
    errmsg_set(err, errlen, "URL scheme must be http or https, not %.*s",
               (int)(p - url), url);
    return UV_EINVAL;
  }
  auth = p + 3;
  auth_end = auth + strcspn(auth, "/?#");
  if (memchr(auth, '@', (size_t)(auth_end - auth)) != NULL) {
    errmsg_set(err, errlen, "URL must not contain userinfo (user:password@)");
    return UV_EINVAL;
  }
  if (*auth == '[') {
    char v6[64];
    unsigned char bin[16];

    host = auth + 1;
    host_end = memchr(host, ']', (size_t)(auth_end - host));
    if (host_end == NULL || (size_t)(host_end - host) >= sizeof v6) {
      errmsg_set(err, errlen, "URL has an invalid IPv6 literal");
      return UV_EINVAL;
    }
    memcpy(v6, host, (size_t)(host_end - host));
    v6[host_end - host] = '\0';
    if (inet_pton(AF_INET6, v6, bin) != 1) {
      errmsg_set(err, errlen, "URL has an invalid IPv6 literal [%s]", v6);
      return UV_EINVAL;
    }
    u->ipv6 = true;
    p = host_end + 1;
    if (p < auth_end && *p != ':') {
      errmsg_set(err, errlen, "URL has text after the IPv6 literal");
      return UV_EINVAL;
    }
  } else {
    host = auth;
    host_end = memchr(auth, ':', (size_t)(auth_end - auth));
    if (host_end == NULL)
      host_end = auth_end;
    p = host_end;
    for (const char *q = host; q < host_end; q++)
      if (!is_alpha(*q) && !is_digit(*q) && *q != '-' && *q != '.' &&
          *q != '_') {
        errmsg_set(err, errlen, "URL host has an invalid character '%c'", *q);
        return UV_EINVAL;
      }
  }
  hl = (size_t)(host_end - host);
  if (hl == 0) {
    errmsg_set(err, errlen, "URL has no host");
    return UV_EINVAL;
  }
  if (hl > HTTP_HOST_MAX) {
    errmsg_set(err, errlen, "URL host longer than %d bytes", HTTP_HOST_MAX);
    return UV_E2BIG;
  }
  u->port = default_port(u->https);
  if (p < auth_end) {
    unsigned long port = 0;

    port_s = p + 1; /* p is at ':' */
    if (port_s < auth_end) {
      for (p = port_s; p < auth_end; p++) {
        if (!is_digit(*p) || port > 65535) {
          port = 0;
          break;
        }
        port = port * 10 + (unsigned long)(*p - '0');
      }
      if (port == 0 || port > 65535) {
        errmsg_set(err, errlen, "URL port must be a number from 1 to 65535");
        return UV_EINVAL;
      }
      u->port = (uint16_t)port;
    }
  }

  if ((u->host = malloc(hl + 1)) == NULL)
    return UV_ENOMEM;
  for (i = 0; i < hl; i++)
    u->host[i] = (char)lower((unsigned char)host[i]);
  u->host[hl] = '\0';

  /* The target: path and query up to a fragment, "/" when the path is
   * empty. Bytes from 0x80 up are encoded; the rest goes as written. */
  end = auth_end + strcspn(auth_end, "#");
  buf_init(&t, HTTP_URL_MAX * 3 + 2);
  rc = 0;
  if (*auth_end != '/')
    rc = buf_append(&t, "/", 1);
  for (p = auth_end; rc == 0 && p < end; p++) {
    unsigned char c = (unsigned char)*p;

    if (c >= 0x80) {
      char e[3] = { '%', hex_digits[c >> 4], hex_digits[c & 15] };
      rc = buf_append(&t, e, 3);
    } else {
      rc = buf_append(&t, p, 1);
    }
  }
  if (rc == 0 && (u->target = buf_cstr(&t)) == NULL)
    rc = UV_ENOMEM;
  if (rc != 0) {
    buf_free(&t);
    http_url_free(u);
    return UV_ENOMEM;
  }
  return 0;
}

int http_url_authority(const http_url *u, bool always_port, char *out,
                       size_t outlen) {
  int n;

  if (always_port || u->port != default_port(u->https))
    n = snprintf(out, outlen, u->ipv6 ? "[%s]:%u" : "%s:%u", u->host,
                 (unsigned)u->port);
  else
    n = snprintf(out, outlen, u->ipv6 ? "[%s]" : "%s", u->host);
  if (n < 0 || (size_t)n >= outlen)
    return UV_ENOBUFS;
  return n;
}

bool http_url_same_origin(const char *a, const char *b) {
  http_url ua, ub;
  char err[128];
  bool same;

  memset(&ua, 0, sizeof ua);
  memset(&ub, 0, sizeof ub);
  same = http_url_parse(&ua, a, err, sizeof err) == 0 &&
         http_url_parse(&ub, b, err, sizeof err) == 0 && ua.https == ub.https &&
         ua.port == ub.port && strcmp(ua.host, ub.host) == 0;
  http_url_free(&ua);
  http_url_free(&ub);
  return same;
}

char *http_url_format(const http_url *u) {
  char auth[HTTP_HOST_MAX + 16];
  buf b;

  if (http_url_authority(u, false, auth, sizeof auth) < 0)
    return NULL;
  buf_init(&b, 0);
  if (buf_appendf(&b, "%s://%s%s", u->https ? "https" : "http", auth,
                  u->target) != 0) {
    buf_free(&b);
    return NULL;
  }
  return buf_steal(&b);
}

/* RFC 3986 components of a reference, as spans into its text; a NULL start
 * means the component is undefined (as opposed to empty). */
typedef struct span {
  const char *p;
  size_t n;
} span;

typedef struct uri_parts {
  span scheme, authority, path, query, fragment;
} uri_parts;

/* Splits by the regular expression of RFC 3986 Appendix B. */
static void uri_split(const char *s, uri_parts *u) {
  const char *p = s, *q;

  memset(u, 0, sizeof *u);
  q = p + strcspn(p, ":/?#");
  if (*q == ':' && q > p && is_alpha(*p)) {
    const char *c;

    for (c = p; c < q; c++)
      if (!is_alpha(*c) && !is_digit(*c) && *c != '+' && *c != '-' && *c != '.')
        break;
    if (c == q) {
      u->scheme = (span){ p, (size_t)(q - p) };
      p = q + 1;
    }
  }
  if (p[0] == '/' && p[1] == '/') {
    p += 2;
    q = p + strcspn(p, "/?#");
    u->authority = (span){ p, (size_t)(q - p) };
    p = q;
  }
  q = p + strcspn(p, "?#");
  u->path = (span){ p, (size_t)(q - p) };
  p = q;
  if (*p == '?') {
    p++;
    q = p + strcspn(p, "#");
    u->query = (span){ p, (size_t)(q - p) };
    p = q;
  }
  if (*p == '#') {
    p++;
    u->fragment = (span){ p, strlen(p) };
  }
}

/* RFC 3986 §5.2.4, writing the output path to out (which has room for
 * in.n bytes). Returns the output length. */
static size_t remove_dot_segments(span in, char *out) {
  const char *p = in.p, *end = in.p + in.n;
  size_t o = 0;

  while (p < end) {
    size_t rest = (size_t)(end - p);

    if (rest >= 3 && memcmp(p, "../", 3) == 0) {
      p += 3;
    } else if (rest >= 2 && memcmp(p, "./", 2) == 0) {
      p += 2;
    } else if (rest >= 3 && memcmp(p, "/./", 3) == 0) {
      p += 2;
    } else if (rest == 2 && memcmp(p, "/.", 2) == 0) {
      out[o++] = '/';
      p = end;
    } else if ((rest >= 4 && memcmp(p, "/../", 4) == 0) ||
               (rest == 3 && memcmp(p, "/..", 3) == 0)) {
      /* Drop the last output segment and its slash. */
      while (o > 0 && out[o - 1] != '/')
        o--;
      if (o > 0)
        o--;
      if (rest == 3) {
        out[o++] = '/';
        p = end;
      } else {
        p += 3;
      }
    } else if ((rest == 1 && *p == '.') ||
               (rest == 2 && memcmp(p, "..", 2) == 0)) {
      p = end;
    } else {
      /* Move the first segment, with its leading slash if any. */
      const char *q = p + 1;

      while (q < end && *q != '/')
        q++;
      memcpy(out + o, p, (size_t)(q - p));
      o += (size_t)(q - p);
      p = q;
    }
  }
  return o;
}

/* Appends the merged and normalized path (§5.2.2/§5.2.3). */
static int append_path(buf *out, span base_path, bool base_has_authority,
                       span ref_path, bool merge) {
  buf tmp;
  char *o;
  size_t n;
  int rc = 0;

  buf_init(&tmp, 0);
  if (merge) {
    if (base_has_authority && base_path.n == 0) {
      rc = buf_append(&tmp, "/", 1);
    } else {
      const char *slash = NULL, *q;

      for (q = base_path.p; q < base_path.p + base_path.n; q++)
        if (*q == '/')
          slash = q;
      if (slash != NULL)
        rc = buf_append(&tmp, base_path.p, (size_t)(slash - base_path.p) + 1);
    }
  }
  if (rc == 0)
    rc = buf_append(&tmp, ref_path.p, ref_path.n);
  if (rc == 0 && tmp.len > 0) {
    if ((o = malloc(tmp.len)) == NULL) {
      rc = UV_ENOMEM;
    } else {
      n = remove_dot_segments((span){ tmp.data, tmp.len }, o);
      rc = buf_append(out, o, n);
      free(o);
    }
  }
  buf_free(&tmp);
  return rc;
}

int http_url_resolve(const char *base, const char *ref, char **out, char *err,
                     size_t errlen) {
  uri_parts b, r;
  buf clean, res;
  const uri_parts *auth_from, *query_from;
  size_t i, n;
  int rc = 0;
  bool merge = false;
  span path;

  *out = NULL;
  if (base == NULL || ref == NULL) {
    errmsg_set(err, errlen, "URL is missing");
    return UV_EINVAL;
  }
  n = strlen(ref);
  if (n > HTTP_URL_MAX || strlen(base) > HTTP_URL_MAX) {
    errmsg_set(err, errlen, "URL longer than %d bytes", HTTP_URL_MAX);
    return UV_E2BIG;
  }
  /* Browsers send a Location with raw spaces or UTF-8 percent-encoded;
   * other control bytes have no sensible meaning. */
  buf_init(&clean, 0);
  for (i = 0; rc == 0 && i < n; i++) {
    unsigned char c = (unsigned char)ref[i];

    if ((c < 0x20 && c != ' ') || c == 0x7f) {
      errmsg_set(err, errlen,
                 "URL reference contains a control character at "
                 "offset %zu",
                 i);
      buf_free(&clean);
      return UV_EINVAL;
    }
    if (c == ' ' || c >= 0x80) {
      char e[3] = { '%', hex_digits[c >> 4], hex_digits[c & 15] };
      rc = buf_append(&clean, e, 3);
    } else {
      rc = buf_append(&clean, ref + i, 1);
    }
  }
  if (rc == 0 && buf_cstr(&clean) == NULL)
    rc = UV_ENOMEM;
  if (rc != 0) {
    buf_free(&clean);
    return rc;
  }

  uri_split(base, &b);
  uri_split(clean.data, &r);
  if (b.scheme.p == NULL) {
    errmsg_set(err, errlen, "base URL is not absolute");
    buf_free(&clean);
    return UV_EINVAL;
  }

  /* §5.2.2, strict: a reference with a scheme is taken as it is. */
  buf_init(&res, 0);
  if (r.scheme.p != NULL) {
    rc = buf_append(&res, r.scheme.p, r.scheme.n);
    auth_from = &r;
    path = r.path;
    query_from = &r;
  } else {
    rc = buf_append(&res, b.scheme.p, b.scheme.n);
    if (r.authority.p != NULL) {
      auth_from = &r;
      path = r.path;
      query_from = &r;
    } else {
      auth_from = &b;
      if (r.path.n == 0) {
        path = b.path;
        query_from = r.query.p != NULL ? &r : &b;
      } else {
        path = r.path;
        merge = r.path.p[0] != '/';
        query_from = &r;
      }
    }
  }
  if (rc == 0)
    rc = buf_append(&res, ":", 1);
  if (rc == 0 && auth_from->authority.p != NULL) {
    rc = buf_append(&res, "//", 2);
    if (rc == 0)
      rc = buf_append(&res, auth_from->authority.p, auth_from->authority.n);
  }
  if (rc == 0) {
    if (auth_from == &b && r.path.n == 0)
      rc = buf_append(&res, path.p, path.n); /* base path, unchanged */
    else
      rc = append_path(&res, b.path, b.authority.p != NULL, path, merge);
  }
  if (rc == 0 && query_from->query.p != NULL) {
    rc = buf_append(&res, "?", 1);
    if (rc == 0)
      rc = buf_append(&res, query_from->query.p, query_from->query.n);
  }
  if (rc == 0 && r.fragment.p != NULL) {
    rc = buf_append(&res, "#", 1);
    if (rc == 0)
      rc = buf_append(&res, r.fragment.p, r.fragment.n);
  }
  if (rc == 0 && res.len > HTTP_URL_MAX) {
    errmsg_set(err, errlen, "URL longer than %d bytes", HTTP_URL_MAX);
    rc = UV_E2BIG;
  }
  if (rc == 0 && buf_cstr(&res) == NULL)
    rc = UV_ENOMEM;
  buf_free(&clean);
  if (rc != 0) {
    buf_free(&res);
    return rc;
  }
  *out = buf_steal(&res);
  return 0;
}

int http_percent_encode(buf *out, const char *s, size_t n) {
  size_t i, old = out->len;
  int rc = 0;

  for (i = 0; rc == 0 && i < n; i++) {
    unsigned char c = (unsigned char)s[i];

    if (is_unreserved(c)) {
      rc = buf_append(out, s + i, 1);
    } else {
      char e[3] = { '%', hex_digits[c >> 4], hex_digits[c & 15] };
      rc = buf_append(out, e, 3);
    }
  }
  if (rc != 0)
    out->len = old;
  return rc;
}

/* ---- Request heads ------------------------------------------------------- */

static bool is_token(const char *s) {
  if (*s == '\0')
    return false;
  for (; *s; s++)
    if (!is_tchar((unsigned char)*s))
      return false;
  return true;
}

static bool has_header(const http_request_head *h, const char *name) {
  size_t i, n = strlen(name);

  for (i = 0; i < h->n_headers; i++)
    if (strlen(h->headers[i].name) == n && ieq_n(h->headers[i].name, name, n))
      return true;
  return false;
}

int http_request_build(buf *out, const http_request_head *h, char *err,
                       size_t errlen) {
  char auth[HTTP_HOST_MAX + 16];
  size_t old = out->len, i;
  const char *m = h->method;
  int rc;

  if (m == NULL || !is_token(m)) {
    errmsg_set(err, errlen, "request method must be a token");
    return UV_EINVAL;
  }
  for (i = 0; i < h->n_headers; i++) {
    const char *name = h->headers[i].name, *value = h->headers[i].value;

    if (name == NULL || !is_token(name)) {
      errmsg_set(err, errlen, "request header %zu: name must be a token", i);
      return UV_EINVAL;
    }
    if (value == NULL || strpbrk(value, "\r\n") != NULL) {
      errmsg_set(err, errlen,
                 "request header %s: value must not contain CR or "
                 "LF",
                 name);
      return UV_EINVAL;
    }
    if ((strlen(name) == 14 && ieq_n(name, "Content-Length", 14)) ||
        (strlen(name) == 17 && ieq_n(name, "Transfer-Encoding", 17))) {
      errmsg_set(err, errlen, "request header %s is set by the client", name);
      return UV_EINVAL;
    }
  }
  if (http_url_authority(h->url, false, auth, sizeof auth) < 0) {
    errmsg_set(err, errlen, "URL host too long");
    return UV_EINVAL;
  }

  if (h->absolute_form)
    rc = buf_appendf(out, "%s %s://%s%s HTTP/1.1\r\n", m,
                     h->url->https ? "https" : "http", auth, h->url->target);
  else
    rc = buf_appendf(out, "%s %s HTTP/1.1\r\n", m, h->url->target);
  if (rc == 0 && !has_header(h, "Host"))
    rc = buf_appendf(out, "Host: %s\r\n", auth);
  if (rc == 0 && h->user_agent != NULL && !has_header(h, "User-Agent"))
    rc = buf_appendf(out, "User-Agent: %s\r\n", h->user_agent);
  for (i = 0; rc == 0 && i < h->n_headers; i++)
    rc =
        buf_appendf(out, "%s: %s\r\n", h->headers[i].name, h->headers[i].value);
  if (rc == 0 && (h->body_len > 0 || strcmp(m, "POST") == 0 ||
                  strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0))
    rc = buf_appendf(out, "Content-Length: %zu\r\n", h->body_len);
  if (rc == 0)
    rc = buf_append(out, "\r\n", 2);
  if (rc == 0 && out->len - old > HTTP_REQUEST_HEAD_MAX)
    rc = UV_E2BIG;
  if (rc != 0) {
    out->len = old;
    if (rc == UV_E2BIG || rc == UV_ENOBUFS) {
      errmsg_set(err, errlen, "request head longer than %d bytes",
                 HTTP_REQUEST_HEAD_MAX);
      rc = UV_E2BIG;
    } else {
      errmsg_set(err, errlen, "out of memory");
    }
  }
  return rc;
}

int http_request_build_connect(buf *out, const http_url *u,
                               const char *user_agent) {
  char auth[HTTP_HOST_MAX + 16];
  size_t old = out->len;
  int rc;

  if (http_url_authority(u, true, auth, sizeof auth) < 0)
    return UV_ENOBUFS;
  rc = buf_appendf(out, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n", auth, auth);
  if (rc == 0 && user_agent != NULL)
    rc = buf_appendf(out, "User-Agent: %s\r\n", user_agent);
  if (rc == 0)
    rc = buf_append(out, "\r\n", 2);
  if (rc != 0)
    out->len = old;
  return rc;
}

/* ---- Dates and Retry-After ----------------------------------------------- */

static const char *const month_names[12] = { "Jan", "Feb", "Mar", "Apr",
                                             "May", "Jun", "Jul", "Aug",
                                             "Sep", "Oct", "Nov", "Dec" };
static const char *const day_names[7] = { "Mon", "Tue", "Wed", "Thu",
                                          "Fri", "Sat", "Sun" };
static const char *const day_names_long[7] = {
  "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"
};

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), so no time zone or libc table is involved. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  int64_t era;
  unsigned yoe, doy, doe;

  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = (unsigned)(y - era * 400);
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static bool is_leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Reads exactly n digits. */
static bool digits(const char **s, int n, int *out) {
  int v = 0, i;

  for (i = 0; i < n; i++) {
    if (!is_digit((*s)[i]))
      return false;
    v = v * 10 + ((*s)[i] - '0');
  }
  *s += n;
  *out = v;
  return true;
}

static bool lit(const char **s, const char *l) {
  size_t n = strlen(l);

  if (strncmp(*s, l, n) != 0)
    return false;
  *s += n;
  return true;
}

static bool month(const char **s, int *m) {
  int i;

  for (i = 0; i < 12; i++)
    if (strncmp(*s, month_names[i], 3) == 0) {
      *s += 3;
      *m = i + 1;
      return true;
    }
  return false;
}

static bool clock_time(const char **s, int *h, int *mi, int *se) {
  return digits(s, 2, h) && lit(s, ":") && digits(s, 2, mi) && lit(s, ":") &&
         digits(s, 2, se);
}

static int make_time(int64_t y, int m, int d, int h, int mi, int se,
                     int64_t *out) {
  static const int mdays[12] = {
    31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31
  };
  int dim;

  if (m < 1 || m > 12 || d < 1 || h > 23 || mi > 59 || se > 60)
    return UV_EINVAL;
  dim = mdays[m - 1] + (m == 2 && is_leap(y));
  if (d > dim)
    return UV_EINVAL;
  *out = days_from_civil(y, (unsigned)m, (unsigned)d) * 86400 + h * 3600 +
         mi * 60 + se;
  return 0;
}

int http_date_parse(const char *s, int64_t now, int64_t *out) {
  int i, d, m, y, h, mi, se;
  const char *p;

  if (s == NULL)
    return UV_EINVAL;
  while (is_ows(*s))
    s++;
  /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
  for (i = 0; i < 7; i++) {
    p = s;
    if (lit(&p, day_names[i]) && lit(&p, ", ") && digits(&p, 2, &d) &&
        lit(&p, " ") && month(&p, &m) && lit(&p, " ") && digits(&p, 4, &y) &&
        lit(&p, " ") && clock_time(&p, &h, &mi, &se) && lit(&p, " GMT")) {
      while (is_ows(*p))
        p++;
      if (*p != '\0')
        return UV_EINVAL;
      return make_time(y, m, d, h, mi, se, out);
    }
  }
  /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
  for (i = 0; i < 7; i++) {
    p = s;
    if (lit(&p, day_names_long[i]) && lit(&p, ", ") && digits(&p, 2, &d) &&
        lit(&p, "-") && month(&p, &m) && lit(&p, "-") && digits(&p, 2, &y) &&
        lit(&p, " ") && clock_time(&p, &h, &mi, &se) && lit(&p, " GMT")) {
      int64_t now_year = 1970 + (now >= 0 ? now : 0) / 31556952, full;

      while (is_ows(*p))
        p++;
      if (*p != '\0')
        return UV_EINVAL;
      /* RFC 9110 §5.6.7: a year more than 50 years ahead is in the past. */
      full = now_year - now_year % 100 + y;
      if (full > now_year + 50)
        full -= 100;
      return make_time(full, m, d, h, mi, se, out);
    }
  }
  /* asctime: Sun Nov  6 08:49:37 1994 */
  for (i = 0; i < 7; i++) {
    p = s;
    if (lit(&p, day_names[i]) && lit(&p, " ") && month(&p, &m) &&
        lit(&p, " ")) {
      if (*p == ' ' && is_digit(p[1])) {
        d = p[1] - '0';
        p += 2;
      } else if (!digits(&p, 2, &d)) {
        return UV_EINVAL;
      }
      if (lit(&p, " ") && clock_time(&p, &h, &mi, &se) && lit(&p, " ") &&
          digits(&p, 4, &y)) {
        while (is_ows(*p))
          p++;
        if (*p != '\0')
          return UV_EINVAL;
        return make_time(y, m, d, h, mi, se, out);
      }
      return UV_EINVAL;
    }
  }
  return UV_EINVAL;
}

int http_retry_after(const char *value, const char *date_header, int64_t now,
                     uint64_t *delay_ms, char *err, size_t errlen) {
  const char *p, *end;
  char ex[48];
  int64_t when, base;

  *delay_ms = 0;
  if (value == NULL) {
    errmsg_set(err, errlen, "Retry-After is missing");
    return UV_EINVAL;
  }
  p = value;
  while (is_ows(*p))
    p++;
  end = p + strlen(p);
  while (end > p && is_ows(end[-1]))
    end--;
  if (end > p && is_digit(*p)) {
    const char *q;
    uint64_t secs = 0;

    for (q = p; q < end && is_digit(*q); q++)
      if (secs <= HTTP_RETRY_AFTER_MAX_S)
        secs = secs * 10 + (uint64_t)(*q - '0');
    if (q == end) {
      if (secs > HTTP_RETRY_AFTER_MAX_S)
        secs = HTTP_RETRY_AFTER_MAX_S;
      *delay_ms = secs * 1000;
      return 0;
    }
  }
  if (http_date_parse(value, now, &when) != 0) {
    errmsg_set(err, errlen,
               "Retry-After is neither delay-seconds nor an HTTP-date: \"%s\"",
               excerpt(value, ex, sizeof ex));
    return UV_EINVAL;
  }
  if (date_header == NULL || http_date_parse(date_header, now, &base) != 0)
    base = now;
  if (when > base) {
    uint64_t secs = (uint64_t)(when - base);

    if (secs > HTTP_RETRY_AFTER_MAX_S)
      secs = HTTP_RETRY_AFTER_MAX_S;
    *delay_ms = secs * 1000;
  }
  return 0;
}

/* ---- Content-Type -------------------------------------------------------- */

bool http_content_type_is(const char *value, const char *essence) {
  size_t n, m;

  if (value == NULL || essence == NULL)
    return false;
  while (is_ows(*value))
    value++;
  n = strcspn(value, "; \t");
  m = strlen(essence);
  if (n != m || !ieq_n(value, essence, n))
    return false;
  /* Only whitespace may sit between the type and its parameters. */
  value += n;
  while (is_ows(*value))
    value++;
  return *value == '\0' || *value == ';';
}

/* ---- Link (RFC 8288) ----------------------------------------------------- */

/* True when the space-separated list t[0..n) holds rel without case. */
static bool rel_has(const char *t, size_t n, const char *rel) {
  size_t i = 0, m = strlen(rel);

  while (i < n) {
    size_t j;

    while (i < n && (is_ows(t[i]) || t[i] == '\n' || t[i] == '\r'))
      i++;
    j = i;
    while (j < n && !is_ows(t[j]) && t[j] != '\n' && t[j] != '\r')
      j++;
    if (j - i == m && m > 0 && ieq_n(t + i, rel, m))
      return true;
    i = j;
  }
  return false;
}

int http_link_find(const char *value, const char *rel, char **target, char *err,
                   size_t errlen) {
  const char *s = value;
  size_t n, i = 0;
  buf qv;
  int rc = UV_ENOENT;

  *target = NULL;
  if (value == NULL || rel == NULL)
    return UV_ENOENT;
  n = strlen(s);
  if (n > HTTP_LINK_MAX) {
    errmsg_set(err, errlen, "Link header longer than %d bytes", HTTP_LINK_MAX);
    return UV_E2BIG;
  }
  buf_init(&qv, 0);
  while (rc == UV_ENOENT) {
    size_t uri_start, uri_end;
    bool rel_seen = false, matches = false, anchored = false;

    while (i < n && (is_ows(s[i]) || s[i] == ','))
      i++;
    if (i == n)
      break;
    if (s[i] != '<') {
      errmsg_set(err, errlen, "Link: expected '<' at offset %zu", i);
      rc = UV_EINVAL;
      break;
    }
    uri_start = ++i;
    while (i < n && s[i] != '>')
      i++;
    if (i == n) {
      errmsg_set(err, errlen, "Link: unterminated '<' at offset %zu",
                 uri_start - 1);
      rc = UV_EINVAL;
      break;
    }
    uri_end = i++;
    /* Parameters: *( OWS ";" OWS name [ BWS "=" BWS value ] ). */
    for (;;) {
      size_t name, name_len;
      const char *v = NULL;
      size_t vn = 0;

      while (i < n && is_ows(s[i]))
        i++;
      if (i == n || s[i] == ',')
        break;
      if (s[i] != ';') {
        errmsg_set(err, errlen, "Link: unexpected '%c' at offset %zu", s[i], i);
        rc = UV_EINVAL;
        break;
      }
      i++;
      while (i < n && is_ows(s[i]))
        i++;
      name = i;
      while (i < n && is_tchar((unsigned char)s[i]))
        i++;
      name_len = i - name;
      if (name_len == 0) {
        /* RFC 8288 allows an empty parameter list item ("; ;"). */
        if (i < n && (s[i] == ';' || s[i] == ',' || is_ows(s[i])))
          continue;
        if (i == n)
          break;
        errmsg_set(err, errlen, "Link: expected a parameter name at offset %zu",
                   i);
        rc = UV_EINVAL;
        break;
      }
      while (i < n && is_ows(s[i]))
        i++;
      if (i < n && s[i] == '=') {
        i++;
        while (i < n && is_ows(s[i]))
          i++;
        if (i < n && s[i] == '"') {
          size_t q = i++;

          buf_reset(&qv);
          while (i < n && s[i] != '"') {
            if (s[i] == '\\' && i + 1 < n)
              i++;
            if (buf_append(&qv, s + i, 1) != 0) {
              rc = UV_ENOMEM;
              break;
            }
            i++;
          }
          if (rc == UV_ENOMEM)
            break;
          if (i == n) {
            errmsg_set(err, errlen,
                       "Link: unterminated quoted string at "
                       "offset %zu",
                       q);
            rc = UV_EINVAL;
            break;
          }
          i++;
          v = qv.data != NULL ? qv.data : "";
          vn = qv.len;
        } else {
          /* A token; be lenient and take anything up to ; , or space. */
          v = s + i;
          while (i < n && s[i] != ';' && s[i] != ',' && !is_ows(s[i]))
            i++;
          vn = (size_t)(s + i - v);
        }
      }
      if (name_len == 3 && ieq_n(s + name, "rel", 3) && !rel_seen) {
        rel_seen = true;
        matches = v != NULL && rel_has(v, vn, rel);
      } else if (name_len == 6 && ieq_n(s + name, "anchor", 6)) {
        anchored = true;
      }
    }
    if (rc != UV_ENOENT)
      break;
    if (matches && !anchored) {
      size_t un = uri_end - uri_start;

      if ((*target = malloc(un + 1)) == NULL) {
        rc = UV_ENOMEM;
        break;
      }
      memcpy(*target, s + uri_start, un);
      (*target)[un] = '\0';
      rc = 0;
    }
  }
  buf_free(&qv);
  return rc;
}

/* ---- NO_PROXY ------------------------------------------------------------ */

typedef struct ip_addr {
  int family; /* 0 when the text is not an IP literal */
  unsigned char b[16];
} ip_addr;

static void ip_parse(const char *s, size_t n, ip_addr *a) {
  char tmp[64];

  a->family = 0;
  if (n == 0 || n >= sizeof tmp)
    return;
  memcpy(tmp, s, n);
  tmp[n] = '\0';
  if (inet_pton(AF_INET, tmp, a->b) == 1)
    a->family = AF_INET;
  else if (inet_pton(AF_INET6, tmp, a->b) == 1)
    a->family = AF_INET6;
}

static bool ip_prefix_eq(const ip_addr *a, const ip_addr *b, unsigned bits) {
  unsigned full = bits / 8, rest = bits % 8;

  if (memcmp(a->b, b->b, full) != 0)
    return false;
  if (rest == 0)
    return true;
  return ((a->b[full] ^ b->b[full]) & (0xff00 >> rest) & 0xff) == 0;
}

/* Matches one trimmed entry e[0..n) against the host. */
static bool no_proxy_entry(const char *e, size_t n, const char *host, size_t hl,
                           const ip_addr *hip, uint16_t port) {
  const char *h = e, *colon;
  size_t h_n = n, colons = 0, i;
  long eport = -1;

  if (n == 1 && e[0] == '*')
    return true;
  for (i = 0; i < n; i++)
    colons += e[i] == ':';
  if (e[0] == '[') {
    const char *rb = memchr(e, ']', n);

    if (rb == NULL)
      return false;
    h = e + 1;
    h_n = (size_t)(rb - h);
    colon = rb + 1 < e + n && rb[1] == ':' ? rb + 1 : NULL;
  } else {
    /* One colon is host:port; more are a bare IPv6 address. */
    colon = colons == 1 ? memchr(e, ':', n) : NULL;
    if (colon != NULL)
      h_n = (size_t)(colon - e);
  }
  if (colon != NULL) {
    const char *p = colon + 1;

    eport = 0;
    if (p == e + n)
      return false;
    for (; p < e + n; p++) {
      if (!is_digit(*p) || eport > 65535)
        return false;
      eport = eport * 10 + (*p - '0');
    }
    if (eport != port)
      return false;
  }
  if (h_n == 0)
    return false;

  /* An IP address or prefix. */
  {
    const char *slash = memchr(h, '/', h_n);
    ip_addr eip;

    ip_parse(h, slash != NULL ? (size_t)(slash - h) : h_n, &eip);
    if (eip.family != 0) {
      unsigned bits = eip.family == AF_INET ? 32 : 128, max = bits;

      if (hip->family != eip.family)
        return false;
      if (slash != NULL) {
        const char *p = slash + 1;

        if (p == h + h_n)
          return false;
        bits = 0;
        for (; p < h + h_n; p++) {
          if (!is_digit(*p) || bits > max)
            return false;
          bits = bits * 10 + (unsigned)(*p - '0');
        }
        if (bits > max)
          return false;
      }
      return ip_prefix_eq(&eip, hip, bits);
    }
    if (slash != NULL)
      return false;
  }
  if (hip->family != 0)
    return false; /* domain entries never match an IP literal */

  /* A domain: "*.x", ".x" and "x" all match x and its subdomains. */
  if (h_n >= 2 && h[0] == '*' && h[1] == '.') {
    h += 2;
    h_n -= 2;
  } else if (h[0] == '.') {
    h++;
    h_n--;
  }
  if (h_n > 0 && h[h_n - 1] == '.')
    h_n--;
  if (h_n == 0 || h_n > hl)
    return false;
  if (!ieq_n(host + hl - h_n, h, h_n))
    return false;
  return hl == h_n || host[hl - h_n - 1] == '.';
}

bool http_no_proxy_match(const char *no_proxy, const char *host,
                         uint16_t port) {
  const char *p;
  size_t hl;
  ip_addr hip;

  if (no_proxy == NULL || host == NULL)
    return false;
  hl = strlen(host);
  if (hl > 0 && host[hl - 1] == '.')
    hl--;
  ip_parse(host, hl, &hip);
  p = no_proxy;
  while (*p != '\0') {
    size_t n;

    while (*p == ',' || is_ows(*p))
      p++;
    n = strcspn(p, ", \t");
    if (n > 0 && n <= HTTP_HOST_MAX + 64 &&
        no_proxy_entry(p, n, host, hl, &hip, port))
      return true;
    p += n;
  }
  return false;
}
