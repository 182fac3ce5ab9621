#include <uv.h>

#include "protocol/http.h"
#include "tests/unit/test.h"

/* ---- URLs ---------------------------------------------------------------- */

static void test_url_parse_ok(void) {
  static const struct {
    const char *in;
    bool https;
    const char *host;
    unsigned port;
    bool ipv6;
    const char *target;
  } v[] = {
    { "http://example.com", false, "example.com", 80, false, "/" },
    { "HTTPS://Example.COM:8443/a/b?c=d#frag", true, "example.com", 8443, false,
      "/a/b?c=d" },
    { "http://[::1]:8080/x", false, "::1", 8080, true, "/x" },
    { "https://[2001:DB8::1]/", true, "2001:db8::1", 443, true, "/" },
    { "https://h", true, "h", 443, false, "/" },
    { "http://h:/p", false, "h", 80, false, "/p" },
    { "http://h?q=1", false, "h", 80, false, "/?q=1" },
    { "http://h#f", false, "h", 80, false, "/" },
    { "http://h/\xc3\xa9?x=\xff", false, "h", 80, false, "/%C3%A9?x=%FF" },
    { "http://127.0.0.1:65535/sub/demo", false, "127.0.0.1", 65535, false,
      "/sub/demo" },
    { "http://my_host.internal/", false, "my_host.internal", 80, false, "/" },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    http_url u;
    char err[128] = "";

    ASSERT_EQ(0, http_url_parse(&u, v[i].in, err, sizeof err));
    ASSERT_STR_EQ("", err);
    ASSERT_EQ(v[i].https, u.https);
    ASSERT_STR_EQ(v[i].host, u.host);
    ASSERT_EQ(v[i].port, u.port);
    ASSERT_EQ(v[i].ipv6, u.ipv6);
    ASSERT_STR_EQ(v[i].target, u.target);
    http_url_free(&u);
  }
}

static void test_url_parse_errors(void) {
  static const struct {
    const char *in;
    int code;
    const char *msg;
  } v[] = {
    { "ftp://h/", UV_EINVAL, "URL scheme must be http or https, not ftp" },
    { "example.com/x", UV_EINVAL, "URL must start with http:// or https://" },
    { "http:/x", UV_EINVAL, "URL must start with http:// or https://" },
    { "http://user:pw@h/", UV_EINVAL,
      "URL must not contain userinfo (user:password@)" },
    { "http://@h/", UV_EINVAL,
      "URL must not contain userinfo (user:password@)" },
    { "http:///x", UV_EINVAL, "URL has no host" },
    { "http://:80/x", UV_EINVAL, "URL has no host" },
    { "http://h:0/", UV_EINVAL, "URL port must be a number from 1 to 65535" },
    { "http://h:65536/", UV_EINVAL,
      "URL port must be a number from 1 to 65535" },
    { "http://h:8a/", UV_EINVAL, "URL port must be a number from 1 to 65535" },
    { "http://h:99999999999999999999/", UV_EINVAL,
      "URL port must be a number from 1 to 65535" },
    { "http://[::1/", UV_EINVAL, "URL has an invalid IPv6 literal" },
    { "http://[zz::1]/", UV_EINVAL, "URL has an invalid IPv6 literal [zz::1]" },
    { "http://[::1]x/", UV_EINVAL, "URL has text after the IPv6 literal" },
    { "http://h h/", UV_EINVAL,
      "URL contains a space or control character at offset 8" },
    { "http://h/\r\nX: y", UV_EINVAL,
      "URL contains a space or control character at offset 9" },
    { "http://h%41/", UV_EINVAL, "URL host has an invalid character '%'" },
    { "", UV_EINVAL, "URL must start with http:// or https://" },
    { NULL, UV_EINVAL, "URL is missing" },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    http_url u;
    char err[128] = "";

    ASSERT_EQ(v[i].code, http_url_parse(&u, v[i].in, err, sizeof err));
    ASSERT_STR_EQ(v[i].msg, err);
    ASSERT(u.host == NULL && u.target == NULL);
    http_url_free(&u);
  }
}

static void test_url_caps(void) {
  char *s = malloc(HTTP_URL_MAX + 64), err[128];
  http_url u;

  strcpy(s, "http://");
  memset(s + 7, 'a', 256);
  strcpy(s + 7 + 256, "/x");
  ASSERT_EQ(UV_E2BIG, http_url_parse(&u, s, err, sizeof err));
  ASSERT_STR_EQ("URL host longer than 255 bytes", err);

  /* 255 bytes of host are fine. */
  strcpy(s + 7 + 255, "/x");
  ASSERT_EQ(0, http_url_parse(&u, s, err, sizeof err));
  http_url_free(&u);

  strcpy(s, "http://h/");
  memset(s + 9, 'p', HTTP_URL_MAX);
  s[9 + HTTP_URL_MAX] = '\0';
  ASSERT_EQ(UV_E2BIG, http_url_parse(&u, s, err, sizeof err));
  ASSERT_STR_EQ("URL longer than 8192 bytes", err);
  free(s);
}

static void test_url_authority_and_format(void) {
  static const struct {
    const char *in;
    const char *auth, *auth_port, *text;
  } v[] = {
    { "http://h:80/a", "h", "h:80", "http://h/a" },
    { "http://h:81/a", "h:81", "h:81", "http://h:81/a" },
    { "https://h/a?b", "h", "h:443", "https://h/a?b" },
    { "https://h:80/", "h:80", "h:80", "https://h:80/" },
    { "http://[::1]:8080", "[::1]:8080", "[::1]:8080", "http://[::1]:8080/" },
    { "http://[::1]", "[::1]", "[::1]:80", "http://[::1]/" },
  };
  char out[300], small[4];
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    http_url u;
    char *t;

    ASSERT_EQ(0, http_url_parse(&u, v[i].in, NULL, 0));
    ASSERT_EQ(strlen(v[i].auth),
              http_url_authority(&u, false, out, sizeof out));
    ASSERT_STR_EQ(v[i].auth, out);
    ASSERT_EQ(strlen(v[i].auth_port),
              http_url_authority(&u, true, out, sizeof out));
    ASSERT_STR_EQ(v[i].auth_port, out);
    ASSERT_EQ(UV_ENOBUFS, http_url_authority(&u, true, small, sizeof small));
    t = http_url_format(&u);
    ASSERT_STR_EQ(v[i].text, t);
    free(t);
    http_url_free(&u);
  }
}

/* RFC 3986 §5.4, every example, plus what Location values look like. */
static void test_url_resolve(void) {
  static const struct {
    const char *ref, *want;
  } v[] = {
    /* §5.4.1 normal examples */
    { "g:h", "g:h" },
    { "g", "http://a/b/c/g" },
    { "./g", "http://a/b/c/g" },
    { "g/", "http://a/b/c/g/" },
    { "/g", "http://a/g" },
    { "//g", "http://g" },
    { "?y", "http://a/b/c/d;p?y" },
    { "g?y", "http://a/b/c/g?y" },
    { "#s", "http://a/b/c/d;p?q#s" },
    { "g#s", "http://a/b/c/g#s" },
    { "g?y#s", "http://a/b/c/g?y#s" },
    { ";x", "http://a/b/c/;x" },
    { "g;x", "http://a/b/c/g;x" },
    { "g;x?y#s", "http://a/b/c/g;x?y#s" },
    { "", "http://a/b/c/d;p?q" },
    { ".", "http://a/b/c/" },
    { "./", "http://a/b/c/" },
    { "..", "http://a/b/" },
    { "../", "http://a/b/" },
    { "../g", "http://a/b/g" },
    { "../..", "http://a/" },
    { "../../", "http://a/" },
    { "../../g", "http://a/g" },
    /* §5.4.2 abnormal examples */
    { "../../../g", "http://a/g" },
    { "../../../../g", "http://a/g" },
    { "/./g", "http://a/g" },
    { "/../g", "http://a/g" },
    { "g.", "http://a/b/c/g." },
    { ".g", "http://a/b/c/.g" },
    { "g..", "http://a/b/c/g.." },
    { "..g", "http://a/b/c/..g" },
    { "./../g", "http://a/b/g" },
    { "./g/.", "http://a/b/c/g/" },
    { "g/./h", "http://a/b/c/g/h" },
    { "g/../h", "http://a/b/c/h" },
    { "g;x=1/./y", "http://a/b/c/g;x=1/y" },
    { "g;x=1/../y", "http://a/b/c/y" },
    { "g?y/./x", "http://a/b/c/g?y/./x" },
    { "g?y/../x", "http://a/b/c/g?y/../x" },
    { "g#s/./x", "http://a/b/c/g#s/./x" },
    { "g#s/../x", "http://a/b/c/g#s/../x" },
    { "http:g", "http:g" },
    /* Absolute Location values, and raw spaces and UTF-8 encoded. */
    { "https://b.example/x/../y", "https://b.example/y" },
    { "/a b", "http://a/a%20b" },
    { "/\xc3\xa9", "http://a/%C3%A9" },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    char *out = NULL, err[128] = "";

    ASSERT_EQ(0, http_url_resolve("http://a/b/c/d;p?q", v[i].ref, &out, err,
                                  sizeof err));
    ASSERT_STR_EQ(v[i].want, out);
    ASSERT_STR_EQ("", err);
    free(out);
  }
}

static void test_url_resolve_edges(void) {
  char *out = NULL, err[128];

  ASSERT_EQ(
      0, http_url_resolve("https://h:8443", "next?p=2", &out, err, sizeof err));
  ASSERT_STR_EQ("https://h:8443/next?p=2", out);
  free(out);
  ASSERT_EQ(0, http_url_resolve("https://h:8443/x", "//other.example/y", &out,
                                err, sizeof err));
  ASSERT_STR_EQ("https://other.example/y", out);
  free(out);

  ASSERT_EQ(UV_EINVAL,
            http_url_resolve("http://a/", "/x\x01y", &out, err, sizeof err));
  ASSERT_STR_EQ("URL reference contains a control character at offset 2", err);
  ASSERT(out == NULL);
  ASSERT_EQ(UV_EINVAL,
            http_url_resolve("/relative", "x", &out, err, sizeof err));
  ASSERT_STR_EQ("base URL is not absolute", err);
}

static void test_percent_encode(void) {
  static const struct {
    const char *in;
    size_t n;
    const char *want;
  } v[] = {
    { "1795370959:0", 12, "1795370959%3A0" },
    { "a b/c~d-e_f.g", 13, "a%20b%2Fc~d-e_f.g" },
    { "\xc3\xa9", 2, "%C3%A9" },
    { "a\0b", 3, "a%00b" },
    { "?&=+%#", 6, "%3F%26%3D%2B%25%23" },
    { "", 0, "" },
  };
  size_t i;
  buf b;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    buf_init(&b, 0);
    ASSERT_EQ(0, http_percent_encode(&b, v[i].in, v[i].n));
    ASSERT_MEM_EQ(v[i].want, strlen(v[i].want), b.data ? b.data : "", b.len);
    buf_free(&b);
  }
  /* Past the buffer's cap nothing is appended. */
  buf_init(&b, 8);
  ASSERT_EQ(0, buf_append_str(&b, "x="));
  ASSERT_EQ(UV_ENOBUFS, http_percent_encode(&b, "::::", 4));
  ASSERT_MEM_EQ("x=", 2, b.data, b.len);
  buf_free(&b);
}

/* ---- Request heads ------------------------------------------------------- */

static void build(const char *method, const char *url, bool absolute,
                  const http_header *h, size_t n, size_t body_len,
                  const char *want) {
  http_request_head rh;
  http_url u;
  char err[128] = "";
  buf b;

  ASSERT_EQ(0, http_url_parse(&u, url, NULL, 0));
  memset(&rh, 0, sizeof rh);
  rh.method = method;
  rh.url = &u;
  rh.absolute_form = absolute;
  rh.headers = h;
  rh.n_headers = n;
  rh.user_agent = "tether/test";
  rh.body_len = body_len;
  buf_init(&b, 0);
  ASSERT_EQ(0, http_request_build(&b, &rh, err, sizeof err));
  ASSERT_STR_EQ("", err);
  ASSERT_STR_EQ(want, buf_cstr(&b));
  buf_free(&b);
  http_url_free(&u);
}

static void test_request_build(void) {
  http_header accept[] = { { "Accept", "text/event-stream" },
                           { "Cache-Control", "no-cache" } };
  http_header own[] = { { "host", "virtual.example" },
                        { "user-agent", "mine/1" } };
  http_header ctype[] = { { "Content-Type", "application/json" } };

  build("GET", "http://example.com:8080/sub/demo?x=1", false, accept, 2, 0,
        "GET /sub/demo?x=1 HTTP/1.1\r\n"
        "Host: example.com:8080\r\n"
        "User-Agent: tether/test\r\n"
        "Accept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n"
        "\r\n");
  build("GET", "https://example.com/", false, NULL, 0, 0,
        "GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: tether/test\r\n"
        "\r\n");
  build("POST", "http://[::1]:9/p", false, ctype, 1, 7,
        "POST /p HTTP/1.1\r\nHost: [::1]:9\r\nUser-Agent: tether/test\r\n"
        "Content-Type: application/json\r\nContent-Length: 7\r\n\r\n");
  /* POST, PUT and PATCH announce an empty body; GET does not. */
  build("PUT", "http://h/", false, NULL, 0, 0,
        "PUT / HTTP/1.1\r\nHost: h\r\nUser-Agent: tether/test\r\n"
        "Content-Length: 0\r\n\r\n");
  build("DELETE", "http://h/", false, NULL, 0, 0,
        "DELETE / HTTP/1.1\r\nHost: h\r\nUser-Agent: tether/test\r\n\r\n");
  /* Through an HTTP proxy: the whole URL, default port left out. */
  build("GET", "http://h:80/a?b", true, NULL, 0, 0,
        "GET http://h/a?b HTTP/1.1\r\nHost: h\r\nUser-Agent: tether/test\r\n"
        "\r\n");
  build("GET", "http://h:81/a?b", true, NULL, 0, 0,
        "GET http://h:81/a?b HTTP/1.1\r\nHost: h:81\r\n"
        "User-Agent: tether/test\r\n\r\n");
  /* The caller's Host and User-Agent win. */
  build("GET", "http://h/", false, own, 2, 0,
        "GET / HTTP/1.1\r\nhost: virtual.example\r\nuser-agent: mine/1\r\n"
        "\r\n");
}

static void test_request_build_errors(void) {
  static const struct {
    const char *method, *name, *value;
    const char *msg;
  } v[] = {
    { "GE T", NULL, NULL, "request method must be a token" },
    { "", NULL, NULL, "request method must be a token" },
    { "GET", "Bad Name", "x", "request header 0: name must be a token" },
    { "GET", "", "x", "request header 0: name must be a token" },
    { "GET", "X-A", "a\r\nX-Injected: 1",
      "request header X-A: value must not contain CR or LF" },
    { "GET", "X-A", "a\nb",
      "request header X-A: value must not contain CR or LF" },
    { "POST", "content-length", "5",
      "request header content-length is set by the client" },
    { "POST", "Transfer-Encoding", "chunked",
      "request header Transfer-Encoding is set by the client" },
  };
  http_request_head rh;
  http_header h;
  http_url u;
  size_t i;
  buf b;

  ASSERT_EQ(0, http_url_parse(&u, "http://h/", NULL, 0));
  buf_init(&b, 0);
  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    char err[128] = "";

    memset(&rh, 0, sizeof rh);
    rh.method = v[i].method;
    rh.url = &u;
    h.name = v[i].name;
    h.value = v[i].value;
    rh.headers = &h;
    rh.n_headers = v[i].name != NULL;
    ASSERT_EQ(UV_EINVAL, http_request_build(&b, &rh, err, sizeof err));
    ASSERT_STR_EQ(v[i].msg, err);
    ASSERT_EQ(0, b.len);
  }

  /* The head has a cap, and a failed build leaves out as it was. */
  {
    char *big = malloc(HTTP_REQUEST_HEAD_MAX + 1), err[128];

    memset(big, 'v', HTTP_REQUEST_HEAD_MAX);
    big[HTTP_REQUEST_HEAD_MAX] = '\0';
    h.name = "X-Big";
    h.value = big;
    memset(&rh, 0, sizeof rh);
    rh.method = "GET";
    rh.url = &u;
    rh.headers = &h;
    rh.n_headers = 1;
    ASSERT_EQ(0, buf_append_str(&b, "keep"));
    ASSERT_EQ(UV_E2BIG, http_request_build(&b, &rh, err, sizeof err));
    ASSERT_STR_EQ("request head longer than 65536 bytes", err);
    ASSERT_MEM_EQ("keep", 4, b.data, b.len);
    free(big);
  }
  buf_free(&b);
  http_url_free(&u);
}

static void test_request_build_connect(void) {
  http_url u;
  buf b;

  buf_init(&b, 0);
  ASSERT_EQ(0, http_url_parse(&u, "https://example.com/x", NULL, 0));
  ASSERT_EQ(0, http_request_build_connect(&b, &u, "tether/test"));
  ASSERT_STR_EQ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                "User-Agent: tether/test\r\n\r\n",
                buf_cstr(&b));
  http_url_free(&u);
  buf_reset(&b);
  ASSERT_EQ(0, http_url_parse(&u, "https://[::1]:8443/", NULL, 0));
  ASSERT_EQ(0, http_request_build_connect(&b, &u, NULL));
  ASSERT_STR_EQ("CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n",
                buf_cstr(&b));
  http_url_free(&u);
  buf_free(&b);
}

/* ---- Dates and Retry-After ----------------------------------------------- */

#define NOW_2026 1795370959 /* 2026-11-22 */

static void test_date_parse(void) {
  static const struct {
    const char *in;
    int64_t now;
    int rc;
    int64_t want;
  } v[] = {
    { "Sun, 06 Nov 1994 08:49:37 GMT", NOW_2026, 0, 784111777 },
    { "Sunday, 06-Nov-94 08:49:37 GMT", NOW_2026, 0, 784111777 },
    { "Sun Nov  6 08:49:37 1994", NOW_2026, 0, 784111777 },
    { "Sun Nov 16 08:49:37 1994", NOW_2026, 0, 784111777 + 10 * 86400 },
    { "  Sun, 06 Nov 1994 08:49:37 GMT  ", NOW_2026, 0, 784111777 },
    { "Thu, 01 Jan 1970 00:00:00 GMT", NOW_2026, 0, 0 },
    { "Thu, 29 Feb 2024 12:00:00 GMT", NOW_2026, 0, 1709208000 },
    /* RFC 850 years: at most 50 years ahead, else the previous century. */
    { "Tuesday, 01-Jan-30 00:00:00 GMT", NOW_2026, 0, 1893456000 },
    { "Friday, 01-Jan-99 00:00:00 GMT", NOW_2026, 0, 915148800 },
    /* The weekday is checked for spelling, not against the date. */
    { "Mon, 06 Nov 1994 08:49:37 GMT", NOW_2026, 0, 784111777 },
    { "Wed, 29 Feb 2023 00:00:00 GMT", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 31 Apr 1994 00:00:00 GMT", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 06 Nov 1994 24:00:00 GMT", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 06 Nov 1994 08:60:00 GMT", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 06 Nov 1994 08:49:37 UTC", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 06 Nov 1994 08:49:37", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 06 Nov 1994 08:49:37 GMT x", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 6 Nov 1994 08:49:37 GMT", NOW_2026, UV_EINVAL, 0 },
    { "Sun, 06 Foo 1994 08:49:37 GMT", NOW_2026, UV_EINVAL, 0 },
    { "Xyz, 06 Nov 1994 08:49:37 GMT", NOW_2026, UV_EINVAL, 0 },
    { "", NOW_2026, UV_EINVAL, 0 },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    int64_t t = -1;

    ASSERT_EQ(v[i].rc, http_date_parse(v[i].in, v[i].now, &t));
    if (v[i].rc == 0)
      ASSERT_EQ(v[i].want, t);
  }
}

static void test_retry_after(void) {
  static const struct {
    const char *value, *date;
    int64_t now;
    uint64_t want_ms;
  } v[] = {
    { "120", NULL, 0, 120000 },
    { " 5 ", NULL, 0, 5000 },
    { "0", NULL, 0, 0 },
    { "99999999999999999999999", NULL, 0, 4294967295000ull },
    /* A date counts from the response's Date header ... */
    { "Sun, 06 Nov 1994 08:50:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT",
      NOW_2026, 60000 },
    /* ... else from now, also when Date does not parse ... */
    { "Sun, 06 Nov 1994 08:50:37 GMT", NULL, 784111777, 60000 },
    { "Sun, 06 Nov 1994 08:50:37 GMT", "yesterday", 784111777 + 30, 30000 },
    /* ... and a date in the past means now. */
    { "Sun, 06 Nov 1994 08:49:37 GMT", NULL, NOW_2026, 0 },
  };
  static const struct {
    const char *value;
    const char *msg;
  } bad[] = {
    { "soon",
      "Retry-After is neither delay-seconds nor an HTTP-date: \"soon\"" },
    { "-1", "Retry-After is neither delay-seconds nor an HTTP-date: \"-1\"" },
    { "1.5", "Retry-After is neither delay-seconds nor an HTTP-date: \"1.5\"" },
    { "", "Retry-After is neither delay-seconds nor an HTTP-date: \"\"" },
    { "12\r\n",
      "Retry-After is neither delay-seconds nor an HTTP-date: \"12??\"" },
    { "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "Retry-After is neither delay-seconds nor an HTTP-date: "
      "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\"" },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    uint64_t ms = 1;
    char err[128] = "";

    ASSERT_EQ(0, http_retry_after(v[i].value, v[i].date, v[i].now, &ms, err,
                                  sizeof err));
    ASSERT_UEQ(v[i].want_ms, ms);
    ASSERT_STR_EQ("", err);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint64_t ms = 1;
    char err[128] = "";

    ASSERT_EQ(UV_EINVAL,
              http_retry_after(bad[i].value, NULL, 0, &ms, err, sizeof err));
    ASSERT_STR_EQ(bad[i].msg, err);
    ASSERT_UEQ(0, ms);
  }
}

/* ---- Content-Type, Link, NO_PROXY ---------------------------------------- */

static void test_content_type(void) {
  static const struct {
    const char *value, *essence;
    bool want;
  } v[] = {
    { "text/event-stream", "text/event-stream", true },
    { "text/event-stream; charset=utf-8", "text/event-stream", true },
    { "Text/Event-Stream;charset=UTF-8", "text/event-stream", true },
    { "  text/event-stream  ; x=y", "text/event-stream", true },
    { "text/event-streamx", "text/event-stream", false },
    { "text/event", "text/event-stream", false },
    { "text/plain", "text/event-stream", false },
    { "text/event-stream x", "text/event-stream", false },
    { "", "text/event-stream", false },
    { NULL, "text/event-stream", false },
    { "application/json", "application/json", true },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++)
    ASSERT_EQ(v[i].want, http_content_type_is(v[i].value, v[i].essence));
}

static void test_link(void) {
  static const struct {
    const char *value;
    int rc;
    const char *want;
  } v[] = {
    { "<https://api.example.com/x?page=2>; rel=\"next\", "
      "<https://api.example.com/x?page=5>; rel=\"last\"",
      0, "https://api.example.com/x?page=2" },
    { "<a,b>; rel=next", 0, "a,b" },
    { "</p1>; title=\"a, b; rel=next\"; rel=prev, </p2>; rel=\"Next\"", 0,
      "/p2" },
    { "</p1>; rel=\"prev next\"", 0, "/p1" },
    { "</p1>; rel=\"  next  \"", 0, "/p1" },
    { "</p1>; rel=prev; rel=next, </p2>; rel=next", 0, "/p2" },
    { "</p1>; rel=next; anchor=\"#x\", </p2>; rel=next", 0, "/p2" },
    { "</p1>;rel=next,</p2>", 0, "/p1" },
    { "</p1>; REL = \"next\"", 0, "/p1" },
    { "</p1>; title=\"q\\\"uote\"; rel=next", 0, "/p1" },
    { ", , </p1>; ; rel=next", 0, "/p1" },
    { "</p1>; rel=prev", UV_ENOENT, NULL },
    { "</p1>; rel=nextpage", UV_ENOENT, NULL },
    { "</p1>; rel", UV_ENOENT, NULL },
    { "", UV_ENOENT, NULL },
  };
  static const struct {
    const char *value, *msg;
  } bad[] = {
    { "p1; rel=next", "Link: expected '<' at offset 0" },
    { "</p1>; rel=prev, p2", "Link: expected '<' at offset 17" },
    { "</p1; rel=next", "Link: unterminated '<' at offset 0" },
    { "</p1>; rel=\"next", "Link: unterminated quoted string at offset 11" },
    { "</p1> rel=next", "Link: unexpected 'r' at offset 6" },
    { "</p1>; =next", "Link: expected a parameter name at offset 7" },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    char *t = NULL, err[128] = "";

    ASSERT_EQ(v[i].rc, http_link_find(v[i].value, "next", &t, err, sizeof err));
    ASSERT_STR_EQ(v[i].want, t);
    ASSERT_STR_EQ("", err);
    free(t);
  }
  for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *t = NULL, err[128] = "";

    ASSERT_EQ(UV_EINVAL,
              http_link_find(bad[i].value, "next", &t, err, sizeof err));
    ASSERT_STR_EQ(bad[i].msg, err);
    ASSERT(t == NULL);
  }
}

static void test_link_cap(void) {
  char *v = malloc(HTTP_LINK_MAX + 2), *t = NULL, err[128];

  memset(v, ' ', HTTP_LINK_MAX + 1);
  v[HTTP_LINK_MAX + 1] = '\0';
  ASSERT_EQ(UV_E2BIG, http_link_find(v, "next", &t, err, sizeof err));
  ASSERT_STR_EQ("Link header longer than 65536 bytes", err);
  free(v);
}

static void test_no_proxy(void) {
  static const struct {
    const char *list, *host;
    unsigned port;
    bool want;
  } v[] = {
    { "*", "x.com", 80, true },
    { "example.com", "example.com", 80, true },
    { "example.com", "api.example.com", 443, true },
    { "example.com", "badexample.com", 80, false },
    { "example.com", "example.com.evil", 80, false },
    { ".example.com", "example.com", 80, true },
    { ".example.com", "a.b.example.com", 80, true },
    { "*.example.com", "a.example.com", 80, true },
    { "EXAMPLE.com.", "api.Example.COM", 80, true },
    { "example.com", "example.com.", 80, true },
    { "localhost,127.0.0.1", "127.0.0.1", 80, true },
    { "localhost, 127.0.0.1", "localhost", 80, true },
    { "  other ,\tlocalhost ", "localhost", 80, true },
    { "example.com:8080", "example.com", 8080, true },
    { "example.com:8080", "example.com", 80, false },
    { "example.com:", "example.com", 80, false },
    { "10.0.0.0/8", "10.1.2.3", 80, true },
    { "10.0.0.0/8", "11.0.0.1", 80, false },
    { "192.168.1.0/25", "192.168.1.127", 80, true },
    { "192.168.1.0/25", "192.168.1.128", 80, false },
    { "10.0.0.0/33", "10.0.0.1", 80, false },
    { "::1", "::1", 80, true },
    { "0:0::1", "::1", 80, true },
    { "[::1]:8080", "::1", 8080, true },
    { "[::1]:8080", "::1", 80, false },
    { "fd00::/8", "fd12::1", 80, true },
    { "fd00::/8", "fe80::1", 80, false },
    { "127.0.0.1", "::1", 80, false },
    { "3.4", "1.2.3.4", 80, false },
    { "foo.com", "1.2.3.4", 80, false },
    { "127.0.0.1", "localhost", 80, false },
    { "", "x", 80, false },
    { ",,,", "x", 80, false },
    { NULL, "x", 80, false },
  };
  size_t i;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    if (http_no_proxy_match(v[i].list, v[i].host, (uint16_t)v[i].port) !=
        v[i].want)
      printf("# case %zu: \"%s\" vs %s:%u\n", i, v[i].list ? v[i].list : "",
             v[i].host, v[i].port);
    ASSERT_EQ(v[i].want,
              http_no_proxy_match(v[i].list, v[i].host, (uint16_t)v[i].port));
  }
}

static void test_same_origin(void) {
  ASSERT(http_url_same_origin("http://a.example/x", "http://a.example/y?z"));
  ASSERT(http_url_same_origin("HTTP://A.example:80/", "http://a.example/"));
  ASSERT(http_url_same_origin("https://[::1]/", "https://[::1]:443/q"));
  ASSERT(!http_url_same_origin("http://a.example/", "https://a.example/"));
  ASSERT(!http_url_same_origin("http://a.example/", "http://b.example/"));
  ASSERT(!http_url_same_origin("http://a.example/", "http://a.example:81/"));
  ASSERT(!http_url_same_origin("http://a.example/", "ftp://a.example/"));
  ASSERT(!http_url_same_origin("http://a.example/", "/relative"));
}

static const test_case tests[] = {
  TEST(test_same_origin),
  TEST(test_url_parse_ok),
  TEST(test_url_parse_errors),
  TEST(test_url_caps),
  TEST(test_url_authority_and_format),
  TEST(test_url_resolve),
  TEST(test_url_resolve_edges),
  TEST(test_percent_encode),
  TEST(test_request_build),
  TEST(test_request_build_errors),
  TEST(test_request_build_connect),
  TEST(test_date_parse),
  TEST(test_retry_after),
  TEST(test_content_type),
  TEST(test_link),
  TEST(test_link_cap),
  TEST(test_no_proxy),
  { NULL, NULL },
};

TEST_MAIN(tests)
