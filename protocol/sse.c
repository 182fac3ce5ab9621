/* The SSE parser. The steps follow shared/protocols/sse-and-http-poll.md §1
 * (the WHATWG "event stream interpretation"), in the order given there.
 *
 * Lines are cut from the raw bytes, before UTF-8 decoding. That gives the
 * same result as decoding first: CR, LF and ':' are ASCII, and an ASCII byte
 * is never part of a multi-byte sequence, so the decoder always ends an
 * ill-formed sequence at them with one U+FFFD, whichever order is used. The
 * same holds for the field names: a known name is ASCII, so comparing raw
 * bytes matches exactly when the decoded name would. Only values are decoded,
 * once the whole line is there, so a code point split across reads needs no
 * decoder state between reads.
 *
 * A line wholly inside one read is parsed in place; only a line that a read
 * boundary cuts is copied into _line.
 */
#include "protocol/sse.h"

#include <assert.h>
#include <string.h>

#include <uv.h>

#define BOM_DONE 3

static const unsigned char bom[BOM_DONE] = { 0xEF, 0xBB, 0xBF };
static const unsigned char replacement[3] = { 0xEF, 0xBF, 0xBD };

int sse_parser_init(sse_parser *p, const sse_limits *lim,
                    const sse_callbacks *cb, void *data) {
  if (p == NULL)
    return UV_EINVAL;
  memset(p, 0, sizeof *p);
  p->_lim.max_line = SSE_DEFAULT_MAX_LINE;
  p->_lim.max_event_size = SSE_DEFAULT_MAX_EVENT_SIZE;
  if (lim != NULL && lim->max_line != 0)
    p->_lim.max_line = lim->max_line;
  if (lim != NULL && lim->max_event_size != 0)
    p->_lim.max_event_size = lim->max_event_size;
  if (cb != NULL)
    p->_cb = *cb;
  p->_data = data;
  buf_init(&p->_line, p->_lim.max_line);
  buf_init(&p->_evdata, p->_lim.max_event_size);
  buf_init(&p->_type, p->_lim.max_line);
  buf_init(&p->_idbuf, p->_lim.max_line);
  buf_init(&p->_last_id, p->_lim.max_line);
  return 0;
}

void sse_parser_free(sse_parser *p) {
  if (p == NULL)
    return;
  assert(!p->_in_cb && "sse_parser_free from a callback");
  buf_free(&p->_line);
  buf_free(&p->_evdata);
  buf_free(&p->_type);
  buf_free(&p->_idbuf);
  buf_free(&p->_last_id);
}

void sse_parser_new_response(sse_parser *p) {
  assert(!p->_in_cb && "sse_parser_new_response from a callback");
  buf_reset(&p->_line);
  buf_reset(&p->_evdata);
  buf_reset(&p->_type);
  /* Chromium starts each response's parser with the id buffer set to the
   * last event id string. Keeping an id line of a response that ended before
   * its blank line would label the next response's events with an id the
   * server was never asked to resume from. */
  p->_idbuf_set = false;
  p->_skip_lf = false;
  p->_bom = 0;
  p->_err = 0;
}

/* A buffer's bytes NUL-terminated, or "" while it has no storage. buf keeps
 * one spare byte after len, so the NUL always fits. */
static const char *cstr(buf *b) {
  if (b->data == NULL)
    return "";
  b->data[b->len] = '\0';
  return b->data;
}

/* Appends s to out with each ill-formed sequence replaced as the Encoding
 * standard's UTF-8 decoder does: one U+FFFD per maximal subpart (a valid
 * lead byte and the continuation bytes that may follow it), and the byte
 * that broke the sequence is looked at again as a lead byte. Valid runs are
 * copied in one append. 0, UV_ENOBUFS (the cap) or UV_ENOMEM. */
static int append_utf8(buf *out, const unsigned char *s, size_t n) {
  size_t i = 0, start = 0, j, k, need;
  unsigned char b, lo, hi;
  int err;

  while (i < n) {
    b = s[i];
    if (b < 0x80) {
      i++;
      continue;
    }
    lo = 0x80;
    hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2;
      if (b == 0xE0)
        lo = 0xA0; /* no overlong forms */
      else if (b == 0xED)
        hi = 0x9F; /* no surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3;
      if (b == 0xF0)
        lo = 0x90; /* no overlong forms */
      else if (b == 0xF4)
        hi = 0x8F; /* nothing above U+10FFFF */
    } else {
      need = 0; /* 80..C1 and F5..FF never start a sequence */
    }
    j = i + 1;
    for (k = 0; k < need && j < n && s[j] >= lo && s[j] <= hi; k++, j++) {
      lo = 0x80;
      hi = 0xBF;
    }
    if (need != 0 && k == need) {
      i = j;
      continue;
    }
    if ((err = buf_append(out, s + start, i - start)) != 0 ||
        (err = buf_append(out, replacement, sizeof replacement)) != 0)
      return err;
    i = start = j;
  }
  return buf_append(out, s + start, n - start);
}

/* What a callback's return value means for the feed: go on, pause, or stop
 * with the callback's own error. */
static int verdict(int r) {
  return r > 0 ? SSE_PAUSED : r;
}

/* A blank line: §1 "Dispatch", steps 1 to 5. */
static int dispatch(sse_parser *p) {
  sse_event ev;
  bool changed = false;
  int r = 0;

  /* Step 1. The two buffers trade places rather than copy, so dispatch
   * never allocates; the id buffer then reads as the string again. */
  if (p->_idbuf_set) {
    if (p->_idbuf.len != p->_last_id.len ||
        (p->_idbuf.len != 0 &&
         memcmp(p->_idbuf.data, p->_last_id.data, p->_idbuf.len) != 0)) {
      buf_swap(&p->_idbuf, &p->_last_id);
      cstr(&p->_last_id);
      changed = true;
    }
    p->_idbuf_set = false;
  }

  /* Step 2: no data line, nothing to dispatch; only the id may have moved. */
  if (p->_evdata.len == 0) {
    buf_reset(&p->_type);
    if (changed && p->_cb.on_id_only != NULL) {
      p->_in_cb = true;
      r = p->_cb.on_id_only(p->_data, cstr(&p->_last_id), p->_last_id.len);
      p->_in_cb = false;
    }
    return verdict(r);
  }

  /* Step 3: every data line appended an LF, so there is one to drop. */
  p->_evdata.len--;
  ev.type = p->_type.len != 0 ? cstr(&p->_type) : "message";
  ev.type_len = p->_type.len != 0 ? p->_type.len : strlen("message");
  ev.data = cstr(&p->_evdata);
  ev.data_len = p->_evdata.len;
  ev.id = cstr(&p->_last_id);
  ev.id_len = p->_last_id.len;
  if (p->_cb.on_event != NULL) {
    p->_in_cb = true;
    r = p->_cb.on_event(p->_data, &ev);
    p->_in_cb = false;
  }
  buf_reset(&p->_evdata);
  buf_reset(&p->_type);
  return verdict(r);
}

/* A retry value: ASCII digits only, at least one. The value saturates
 * rather than wrapping, so 99999999999999999999 means "a very long time". */
static int retry(sse_parser *p, const unsigned char *v, size_t n) {
  uint64_t ms = 0;
  size_t i;
  int r = 0;

  if (n == 0)
    return 0;
  for (i = 0; i < n; i++) {
    unsigned d = (unsigned)v[i] - '0';

    if (d > 9)
      return 0;
    ms = ms > (UINT64_MAX - d) / 10 ? UINT64_MAX : ms * 10 + d;
  }
  p->_retry = ms;
  p->_has_retry = true;
  if (p->_cb.on_retry != NULL) {
    p->_in_cb = true;
    r = p->_cb.on_retry(p->_data, ms);
    p->_in_cb = false;
  }
  return verdict(r);
}

/* Sets an id or type buffer to a decoded value. Its cap is max_line, which
 * only UTF-8 repair can pass (one bad byte becomes three). */
static int set_string(buf *b, const unsigned char *v, size_t n) {
  int err;

  buf_reset(b);
  err = append_utf8(b, v, n);
  return err == UV_ENOBUFS ? SSE_ELINE : err;
}

/* One complete line without its terminator: 0, SSE_PAUSED or an error. */
static int process_line(sse_parser *p, const unsigned char *l, size_t len) {
  const unsigned char *colon, *v;
  size_t flen, vlen;
  int err;

  if (len == 0)
    return dispatch(p);
  if (l[0] == ':')
    return 0; /* a comment */
  colon = memchr(l, ':', len);
  if (colon != NULL) {
    flen = (size_t)(colon - l);
    v = colon + 1;
    vlen = len - flen - 1;
    if (vlen != 0 && *v == ' ') {
      v++;
      vlen--;
    }
  } else {
    flen = len;
    v = l + len;
    vlen = 0;
  }

  if (flen == 4 && memcmp(l, "data", 4) == 0) {
    if ((err = append_utf8(&p->_evdata, v, vlen)) == 0)
      err = buf_append(&p->_evdata, "\n", 1);
    return err == UV_ENOBUFS ? SSE_EEVENT : err;
  }
  if (flen == 5 && memcmp(l, "event", 5) == 0)
    return set_string(&p->_type, v, vlen);
  if (flen == 2 && memcmp(l, "id", 2) == 0) {
    if (memchr(v, '\0', vlen) != NULL)
      return 0; /* the buffer keeps its value (row 22) */
    p->_idbuf_set = true;
    return set_string(&p->_idbuf, v, vlen);
  }
  if (flen == 5 && memcmp(l, "retry", 5) == 0)
    return retry(p, v, vlen);
  return 0; /* an unknown field */
}

int sse_parser_feed(sse_parser *p, const void *bytes, size_t n,
                    size_t *consumed) {
  const unsigned char *s = bytes, *l;
  const unsigned char *lf = NULL, *cr = NULL;
  size_t i = 0, eol, len;
  int rc = 0;

  assert(p != NULL && consumed != NULL && (bytes != NULL || n == 0));
  assert(!p->_in_cb && "sse_parser_feed from a callback");
  if (p->_err != 0) {
    *consumed = 0;
    return p->_err;
  }
  while (i < n) {
    if (p->_skip_lf) {
      p->_skip_lf = false;
      if (s[i] == '\n') {
        i++;
        continue;
      }
    }

    /* One BOM at the start of each response, matched a byte at a time so a
     * BOM cut across reads is still found. On a mismatch the bytes matched
     * so far are content: they start the first line (row 41). */
    if (p->_bom != BOM_DONE) {
      if (s[i] == bom[p->_bom]) {
        p->_bom++;
        i++;
        continue;
      }
      assert(p->_line.len == 0);
      if (p->_bom > p->_lim.max_line) {
        rc = SSE_ELINE;
        break;
      }
      if ((rc = buf_append(&p->_line, bom, p->_bom)) != 0)
        break;
      p->_bom = BOM_DONE;
    }

    /* The next CR and LF are remembered across lines, so a read of many
     * short CR-only (or LF-only) lines is scanned once, not once per line. */
    if (lf == NULL || lf < s + i) {
      lf = memchr(s + i, '\n', n - i);
      if (lf == NULL)
        lf = s + n;
    }
    if (cr == NULL || cr < s + i) {
      cr = memchr(s + i, '\r', n - i);
      if (cr == NULL)
        cr = s + n;
    }
    eol = (size_t)((lf < cr ? lf : cr) - s);
    len = eol - i;
    if (len > p->_lim.max_line - p->_line.len) {
      rc = SSE_ELINE;
      break;
    }
    if (eol == n) {
      /* The line goes on in the next read. */
      if ((rc = buf_append(&p->_line, s + i, len)) != 0)
        break;
      i = n;
      break;
    }
    if (p->_line.len == 0) {
      l = s + i;
    } else {
      if ((rc = buf_append(&p->_line, s + i, len)) != 0)
        break;
      l = (const unsigned char *)p->_line.data;
      len = p->_line.len;
    }
    /* A CR ends the line now; an LF right after it, in this read or the
     * next, belongs to the same terminator. */
    p->_skip_lf = s[eol] == '\r';
    i = eol + 1;
    rc = process_line(p, l, len);
    buf_reset(&p->_line);
    if (rc != 0)
      break;
  }
  *consumed = i;
  if (rc < 0)
    p->_err = rc;
  return rc;
}

const char *sse_parser_last_id(const sse_parser *p, size_t *len) {
  if (len != NULL)
    *len = p->_last_id.len;
  /* dispatch NUL-terminates the string each time it changes. */
  return p->_last_id.data != NULL ? p->_last_id.data : "";
}

bool sse_parser_retry(const sse_parser *p, uint64_t *ms) {
  if (p->_has_retry && ms != NULL)
    *ms = p->_retry;
  return p->_has_retry;
}

size_t sse_parser_held(const sse_parser *p) {
  return p->_line.cap + p->_evdata.cap + p->_type.cap + p->_idbuf.cap +
         p->_last_id.cap;
}

const char *sse_strerror(int code) {
  switch (code) {
  case 0:
    return "ok";
  case SSE_PAUSED:
    return "paused";
  case SSE_ELINE:
    return "line_too_long";
  case SSE_EEVENT:
    return "event_too_large";
  default:
    return uv_err_name(code);
  }
}
