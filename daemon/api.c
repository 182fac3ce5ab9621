/* The local API (see api.h): routes requests of loop/http_server to the
 * consumers, the cursor store and the socket sinks. */
#include "daemon/api.h"

#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "daemon/log.h"
#include "daemon/sinks/socket.h"
#include "loop/http_server.h"
#include "protocol/buf.h"

/* GET /v1/cursors: the default and the largest page. */
#define API_CURSORS_DEFAULT 100
#define API_CURSORS_MAX     1000

typedef struct rate_sample {
  uint64_t delivered;
  uint64_t at; /* uv_now() */
  double per_s;
} rate_sample;

struct api {
  uv_loop_t *loop;
  api_env env;
  http_server *srv;
  rate_sample *rates; /* per consumer */
  uint64_t started;   /* uv_now() at start */
  time_t started_wall;
  void (*close_cb)(void *data);
  void *close_data;
};

/* ---- answers ----------------------------------------------------------- */

static void respond_oom(http_conn *c) {
  static const char oom[] =
      "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";

  http_conn_respond(c, 500, "application/json", NULL, 0, oom, sizeof oom - 1);
}

/* Answers j (consumed). A NULL j is an answer that could not be built:
 * json_pack refuses a string that is not UTF-8 as readily as it fails
 * for memory, so it is not called out of memory; json_dumps of an object
 * that was built fails for memory only. */
static void respond_json(http_conn *c, int status, json_t *j) {
  static const char unbuilt[] =
      "{\"error\":{\"code\":\"internal\",\"message\":\"the answer could "
      "not be encoded as JSON\"}}";
  char *text;

  if (j == NULL) {
    http_conn_respond(c, 500, "application/json", NULL, 0, unbuilt,
                      sizeof unbuilt - 1);
    return;
  }
  text = json_dumps(j, JSON_COMPACT);
  json_decref(j);
  if (text == NULL) {
    respond_oom(c);
    return;
  }
  http_conn_respond(c, status, "application/json", NULL, 0, text, strlen(text));
  free(text);
}

static void error_reply(http_conn *c, int status, const char *code,
                        const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The message may quote what a client sent, in any bytes: the answer is
 * escaped by http_conn_respond_error, which never refuses a message
 * (bytes that are not UTF-8 become U+FFFD), so only memory can fail it. */
static void error_reply(http_conn *c, int status, const char *code,
                        const char *fmt, ...) {
  char msg[512];
  va_list ap;

  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (http_conn_respond_error(c, status, code, msg) == UV_ENOMEM)
    respond_oom(c);
}

/* Client text for a message: printable ASCII as it is, every other byte
 * (and '%') as %XX, the way it can be typed back into a URL. Returns
 * out. */
static const char *printable(const char *s, char *out, size_t outlen) {
  static const char hex[] = "0123456789ABCDEF";
  size_t o = 0;

  /* Room is kept for one more escape, "..." and the NUL. */
  for (; *s != '\0' && o + 7 <= outlen; s++) {
    unsigned char ch = (unsigned char)*s;

    if (ch >= 0x20 && ch < 0x7f && ch != '%') {
      out[o++] = (char)ch;
    } else {
      out[o++] = '%';
      out[o++] = hex[ch >> 4];
      out[o++] = hex[ch & 15];
    }
  }
  if (*s != '\0') {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = '\0';
  return out;
}

/* ---- request pieces ---------------------------------------------------- */

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Why a path or a query could not be decoded (a negative code of
 * pct_decode), for a 400. */
static const char *decode_error(int rc) {
  return rc == UV_EILSEQ ? "%00 (a NUL byte), which no name or value may hold"
                         : "a bad percent escape (% and two hex digits)";
}

/* Percent-decodes s[0..n) into *out, a new string ('+' is a space in a
 * query). Returns 0, UV_EINVAL on a bad escape, UV_EILSEQ on %00 (it would
 * cut the C string short, and "gen%00x" must not name "gen") or UV_ENOMEM.
 * Other bytes pass as they are, UTF-8 or not: a name that is not UTF-8
 * names nothing, and each answer says so. Segments are decoded after the
 * path is split, so an id holding '/' is sent as %2F. */
static int pct_decode(const char *s, size_t n, bool query, char **out) {
  char *d = malloc(n + 1), *o = d;
  size_t i;
  int hi, lo;

  *out = NULL;
  if (d == NULL)
    return UV_ENOMEM;
  for (i = 0; i < n; i++) {
    if (s[i] == '%') {
      if (n - i < 3 || (hi = hexval(s[i + 1])) < 0 ||
          (lo = hexval(s[i + 2])) < 0) {
        free(d);
        return UV_EINVAL;
      }
      if (hi == 0 && lo == 0) {
        free(d);
        return UV_EILSEQ;
      }
      *o++ = (char)(hi * 16 + lo);
      i += 2;
    } else {
      *o++ = query && s[i] == '+' ? ' ' : s[i];
    }
  }
  *o = '\0';
  *out = d;
  return 0;
}

/* The path of a target, split into at most max segments (decoded). Returns
 * the count (max + 1 when there are more), or a negative code of
 * pct_decode (UV_EINVAL also for a target that is not a path). */
static int split_path(const char *target, char **seg, int max) {
  const char *p = target, *end;
  int n = 0, rc;

  if (*p != '/')
    return UV_EINVAL;
  while (*p == '/' && n <= max) {
    p++;
    end = p + strcspn(p, "/?");
    if (end == p && (*end == '?' || *end == '\0'))
      break;
    if (n == max)
      return max + 1;
    if ((rc = pct_decode(p, (size_t)(end - p), false, &seg[n])) != 0) {
      while (n > 0)
        free(seg[--n]);
      return rc;
    }
    n++;
    p = end;
  }
  return n;
}

static void free_segs(char **seg, int n) {
  int i;

  for (i = 0; i < n; i++)
    free(seg[i]);
}

/* The decoded value of query parameter name into *out (NULL when it is
 * absent). Returns 0 or a negative code of pct_decode: a value that cannot
 * be decoded is an error, never taken for an absent one (a filter dropped
 * would list every cursor). */
static int query_param(const char *target, const char *name, char **out) {
  const char *q = strchr(target, '?'), *p, *end, *eq;
  size_t len = strlen(name);

  *out = NULL;
  if (q == NULL)
    return 0;
  for (p = q + 1; *p != '\0'; p = *end ? end + 1 : end) {
    end = p + strcspn(p, "&");
    eq = memchr(p, '=', (size_t)(end - p));
    if (eq != NULL && (size_t)(eq - p) == len && memcmp(p, name, len) == 0)
      return pct_decode(eq + 1, (size_t)(end - eq - 1), true, out);
    if (eq == NULL && (size_t)(end - p) == len && memcmp(p, name, len) == 0)
      return (*out = strdup("")) == NULL ? UV_ENOMEM : 0;
  }
  return 0;
}

/* Reads the query parameters names[i] into out[i]; on an error answers
 * 400 (or 500 for memory), frees what it read and returns false. */
static bool query_params(http_conn *c, const char *target,
                         const char *const *names, char **out, size_t n) {
  size_t i, j;
  int rc;

  for (i = 0; i < n; i++) {
    if ((rc = query_param(target, names[i], &out[i])) == 0)
      continue;
    for (j = 0; j < i; j++) {
      free(out[j]);
      out[j] = NULL;
    }
    if (rc == UV_ENOMEM)
      respond_oom(c);
    else
      error_reply(c, 400, "bad_request", "query parameter %s has %s", names[i],
                  decode_error(rc));
    return false;
  }
  return true;
}

static const char *header(const http_srv_request *req, const char *name) {
  size_t i;

  for (i = 0; i < req->n_headers; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return NULL;
}

static consumer *find_consumer(api *a, const char *name) {
  size_t i;

  for (i = 0; i < a->env.n; i++)
    if (strcmp(consumer_name(a->env.consumers[i]), name) == 0)
      return a->env.consumers[i];
  return NULL;
}

static size_t consumer_index(api *a, const consumer *c) {
  size_t i;

  for (i = 0; i < a->env.n; i++)
    if (a->env.consumers[i] == c)
      return i;
  return 0;
}

static void time_text(int64_t ns, char *out, size_t n) {
  store_format_time(ns, out, n);
}

/* ---- consumers --------------------------------------------------------- */

static json_t *consumer_json(api *a, consumer *c) {
  const config_consumer *cc = consumer_config(c);
  rate_sample *r = &a->rates[consumer_index(a, c)];
  uint64_t now = uv_now(a->loop);
  consumer_stats st;
  consumer_state s = consumer_get_state(c);
  json_t *o, *backoff = json_null();
  char until[40];

  consumer_get_stats(c, &st);
  /* A rate over at least a second, refreshed by the requests that read
   * it: no timer runs for it when nobody looks. */
  if (now - r->at >= 1000) {
    r->per_s =
        (double)(st.delivered - r->delivered) * 1000.0 / (double)(now - r->at);
    r->delivered = st.delivered;
    r->at = now;
  }
  if (st.backoff_until > 0) {
    time_text(st.backoff_until * 1000000, until, sizeof until);
    backoff = json_pack("{s:s,s:i}", "until", until, "attempt",
                        (json_int_t)st.attempt);
  }
  o = json_pack(
      "{s:s,s:s,s:s,s:s?,s:s,s:b,s:{s:I,s:s%},s:I,s:I,s:{s:I,s:f},s:I,s:I,"
      "s:f,s:I,s:I,s:o}",
      "name", consumer_name(c), "state", consumer_state_names[s], "source",
      cc->source->name, "upstream", cc->common.upstream, "sink",
      cc->common.sink, "paused", consumer_is_paused(c), "cursor", "seq",
      (json_int_t)st.delivered_seq, "position", st.position, st.position_len,
      "committed_seq", (json_int_t)st.committed_seq, "in_flight",
      (json_int_t)st.in_flight, "lag", "events", (json_int_t)st.in_flight,
      "seconds", (double)st.oldest_ms / 1000.0, "events_received",
      (json_int_t)st.emitted, "events_delivered", (json_int_t)st.delivered,
      "delivered_per_s", r->per_s, "sink_retries", (json_int_t)st.sink_retries,
      "reconnects", (json_int_t)st.reconnects, "backoff", backoff);
  if (o == NULL)
    return NULL;
  json_object_set_new(o, "events_retried",
                      json_integer((json_int_t)st.retried));
  json_object_set_new(o, "cursor_stalls",
                      json_integer((json_int_t)st.cursor_stalls));
  json_object_set_new(o, "events_failed", json_integer((json_int_t)st.failed));
  json_object_set_new(o, "events_dead_lettered",
                      json_integer((json_int_t)st.dead_lettered));
  json_object_set_new(o, "sink_rewinds",
                      json_integer((json_int_t)st.sink_rewinds));
  if (consumer_error_now(c)[0] != '\0')
    json_object_set_new(o, "last_error", json_string(consumer_error_now(c)));
  if (consumer_sink_state(c)[0] != '\0')
    json_object_set_new(o, "sink_state", json_string(consumer_sink_state(c)));
  {
    char sink_status[320];

    json_object_set_new(
        o, "sink_status",
        json_string(consumer_sink_status(c, sink_status, sizeof sink_status)));
  }
  json_object_set_new(o, "bytes_delivered",
                      json_integer((json_int_t)st.bytes_delivered));
  json_object_set_new(o, "bytes_in_flight",
                      json_integer((json_int_t)st.bytes_in_flight));
  if (consumer_sink(c) != NULL && cc->sink == &sink_socket)
    json_object_set_new(
        o, "subscribers",
        json_integer((json_int_t)socket_sink_subscribers(consumer_sink(c))));
  return o;
}

static void list_consumers(api *a, http_conn *c) {
  json_t *arr = json_array();
  size_t i;

  for (i = 0; i < a->env.n; i++)
    json_array_append_new(arr, consumer_json(a, a->env.consumers[i]));
  respond_json(c, 200, json_pack("{s:o}", "consumers", arr));
}

/* POST .../pause and .../resume: persisted first, so a restart keeps it. */
static void set_paused(api *a, http_conn *c, const http_srv_request *req,
                       consumer *k, bool pause) {
  char err[256];
  int rc;

  rc = store_set_paused(a->env.st, consumer_name(k), pause, err, sizeof err);
  if (rc != 0) {
    error_reply(c, 503, "store_unavailable", "%s", err);
    return;
  }
  if (pause) {
    consumer_pause(k);
  } else if (consumer_resume(k, err, sizeof err) != 0) {
    error_reply(c, 500, "internal", "%s", err);
    return;
  }
  log_info(pause ? "consumer paused" : "consumer resumed",
           LS("consumer", consumer_name(k)), LI("by_uid", (int64_t)req->uid),
           LI("by_pid", (int64_t)req->pid));
  respond_json(c, 200, json_pack("{s:o}", "consumer", consumer_json(a, k)));
}

static void subscribe(api *a, http_conn *c, const http_srv_request *req,
                      consumer *k) {
  static const char *const names[] = { "peek", "subscriber" };
  const char *accept = header(req, "Accept");
  char *q[2], *peek, *name;
  bool ndjson = accept != NULL && strstr(accept, "application/x-ndjson");
  int rc;

  (void)a;
  if (!query_params(c, req->target, names, q, 2))
    return;
  peek = q[0];
  name = q[1];
  if (consumer_config(k)->sink != &sink_socket) {
    free(peek);
    free(name);
    error_reply(c, 409, "not_a_socket_sink",
                "consumer %s delivers to %s; only sink = socket serves "
                "subscribers",
                consumer_name(k), consumer_config(k)->common.sink);
    return;
  }
  rc = socket_sink_subscribe(
      consumer_sink(k), c, ndjson ? SOCKET_NDJSON : SOCKET_SSE,
      peek != NULL && strcmp(peek, "0") != 0 && strcmp(peek, "false") != 0,
      name != NULL && name[0] != '\0' ? name : NULL, (long)req->uid,
      (long)req->pid);
  free(peek);
  free(name);
  if (rc != 0)
    error_reply(c, 503, "unavailable", "cannot subscribe: %s", uv_strerror(rc));
}

static void ack(api *a, http_conn *c, const http_srv_request *req,
                consumer *k) {
  json_error_t jerr;
  json_t *body, *seq, *seqs, *who, *v;
  size_t n = 0, i;

  (void)a;
  if (consumer_config(k)->sink != &sink_socket) {
    error_reply(c, 409, "not_a_socket_sink",
                "consumer %s delivers to %s; only sink = socket takes acks",
                consumer_name(k), consumer_config(k)->common.sink);
    return;
  }
  body = json_loadb(req->body, req->body_len, 0, &jerr);
  if (body == NULL) {
    error_reply(c, 400, "invalid_json", "%s at line %d column %d", jerr.text,
                jerr.line, jerr.column);
    return;
  }
  seq = json_object_get(body, "seq");
  seqs = json_object_get(body, "seqs");
  who = json_object_get(body, "subscriber");
  if ((seq == NULL) == (seqs == NULL) ||
      (who != NULL && !json_is_string(who)) ||
      (seq != NULL && (!json_is_integer(seq) || json_integer_value(seq) < 0)) ||
      (seqs != NULL && !json_is_array(seqs))) {
    json_decref(body);
    error_reply(c, 400, "invalid_ack",
                "expected {\"seq\":N} (everything up to N), or "
                "{\"seqs\":[N,...]}, and optionally \"subscriber\":\"NAME\"");
    return;
  }
  if (seq != NULL) {
    n = socket_sink_ack_through(consumer_sink(k),
                                (uint64_t)json_integer_value(seq),
                                json_string_value(who));
  } else {
    json_array_foreach(seqs, i, v) {
      if (json_is_integer(v) && json_integer_value(v) >= 0)
        n += socket_sink_ack(consumer_sink(k), (uint64_t)json_integer_value(v),
                             json_string_value(who));
    }
  }
  json_decref(body);
  respond_json(c, 200, json_pack("{s:I}", "acknowledged", (json_int_t)n));
}

/* ---- cursors ----------------------------------------------------------- */

/* A cursor no configured consumer reads: its consumer is gone from the
 * configuration, or it was kept under a key that is not its consumer's
 * any more. Extra rows of a configured consumer (a subject, such as a
 * scope) are its source's. */
static bool orphan(api *a, const store_cursor *cur) {
  consumer *k = find_consumer(a, cur->consumer_id);

  if (k == NULL)
    return true;
  return strcmp(cur->stream_name, consumer_stream_name(k)) != 0;
}

static json_t *cursor_json(api *a, const store_cursor *cur) {
  char t[40];
  json_t *o =
      json_pack("{s:s,s:s,s:s,s:I,s:s,s:s}", "consumer_id", cur->consumer_id,
                "stream_name", cur->stream_name, "subject_id", cur->subject_id,
                "last_sequence", (json_int_t)cur->last_sequence, "position",
                cur->position, "last_delivery_id", cur->last_delivery_id);

  if (o == NULL)
    return NULL;
  if (cur->last_delivered_at != 0) {
    time_text(cur->last_delivered_at, t, sizeof t);
    json_object_set_new(o, "last_delivered_at", json_string(t));
  }
  if (cur->last_error[0] != '\0')
    json_object_set_new(o, "last_error", json_string(cur->last_error));
  time_text(cur->updated_at, t, sizeof t);
  json_object_set_new(o, "updated_at", json_string(t));
  if (orphan(a, cur))
    json_object_set_new(o, "orphan", json_true());
  return o;
}

static void store_error_reply(http_conn *c, int rc, const char *err) {
  switch (rc) {
  case STORE_ENOTFOUND:
    error_reply(c, 404, "cursor_not_found", "%s", err);
    return;
  case STORE_EINVAL:
    error_reply(c, 400, "invalid_cursor", "%s", err);
    return;
  case STORE_EREASON:
    error_reply(c, 400, "reset_reason_required", "%s", err);
    return;
  case STORE_ENONMONO:
    error_reply(c, 409, "non_monotonic_cursor", "%s", err);
    return;
  case STORE_EBUSY:
  case STORE_EIO:
  case STORE_EFULL:
    error_reply(c, 503, "store_unavailable", "%s", err);
    return;
  default:
    error_reply(c, 500, "internal", "%s", err);
  }
}

static void list_cursors(api *a, http_conn *c, const http_srv_request *req) {
  static const char *const names[] = { "consumer_id", "stream_name",
                                       "subject_id", "limit" };
  char *v[4], *cid, *sn, *sub, *lim, shown[64];
  store_cursor *rows = NULL;
  store_query q;
  char err[256], *end;
  size_t n = 0, i;
  long long limit = API_CURSORS_DEFAULT;
  json_t *arr;
  int rc;

  if (!query_params(c, req->target, names, v, 4))
    return;
  cid = v[0];
  sn = v[1];
  sub = v[2];
  lim = v[3];
  if (lim != NULL) {
    errno = 0;
    limit = strtoll(lim, &end, 10);
    if (*lim == '\0' || *end != '\0' || errno != 0 || limit < 0) {
      error_reply(c, 400, "invalid_cursor",
                  "limit = \"%s\": expected an integer 0..%d (0 = the "
                  "default, %d)",
                  printable(lim, shown, sizeof shown), API_CURSORS_MAX,
                  API_CURSORS_DEFAULT);
      goto out;
    }
    if (limit == 0)
      limit = API_CURSORS_DEFAULT;
    if (limit > API_CURSORS_MAX)
      limit = API_CURSORS_MAX;
  }
  q.consumer_id = cid;
  q.stream_name = sn;
  q.subject_id = sub;
  q.limit = limit;
  rc = store_list(a->env.st, &q, &rows, &n, err, sizeof err);
  if (rc != 0) {
    store_error_reply(c, rc, err);
    goto out;
  }
  arr = json_array();
  for (i = 0; i < n; i++)
    json_array_append_new(arr, cursor_json(a, &rows[i]));
  store_cursors_free(rows, n);
  respond_json(c, 200, json_pack("{s:o}", "cursors", arr));
out:
  free(cid);
  free(sn);
  free(sub);
  free(lim);
}

static void get_cursor(api *a, http_conn *c, char **seg, int n) {
  store_key key = { seg[2], seg[3], n > 4 ? seg[4] : "" };
  store_cursor cur;
  char err[256];
  int rc;

  memset(&cur, 0, sizeof cur);
  rc = store_get(a->env.st, &key, &cur, err, sizeof err);
  if (rc != 0) {
    store_error_reply(c, rc, err);
    return;
  }
  respond_json(c, 200, json_pack("{s:o}", "cursor", cursor_json(a, &cur)));
  store_cursor_free(&cur);
}

/* DELETE /v1/cursors/C/S[/SUBJECT]: only an orphan goes (a consumer in the
 * configuration owns its cursors: reset them instead). A consumer gone from
 * the configuration loses its other state with its last cursor. */
static void remove_cursor(api *a, http_conn *c, const http_srv_request *req,
                          char **seg, int n) {
  store_key key = { seg[2], seg[3], n > 4 ? seg[4] : "" };
  store_cursor cur, *rest = NULL;
  store_query q;
  size_t left = 0;
  char err[256];
  int rc;

  memset(&cur, 0, sizeof cur);
  rc = store_get(a->env.st, &key, &cur, err, sizeof err);
  if (rc != 0) {
    store_error_reply(c, rc, err);
    return;
  }
  if (!orphan(a, &cur)) {
    char shown[256];

    error_reply(c, 409, "cursor_in_use",
                "consumer %s reads this cursor: it is reset, not removed "
                "(remove the consumer from the configuration first)",
                printable(cur.consumer_id, shown, sizeof shown));
    store_cursor_free(&cur);
    return;
  }
  rc = store_remove_cursor(a->env.st, &key, err, sizeof err);
  memset(&q, 0, sizeof q);
  q.consumer_id = key.consumer_id;
  q.limit = 1;
  if (rc == 0 && find_consumer(a, key.consumer_id) == NULL &&
      store_list(a->env.st, &q, &rest, &left, err, sizeof err) == 0 &&
      left == 0)
    store_remove_consumer(a->env.st, key.consumer_id, err, sizeof err);
  store_cursors_free(rest, left);
  if (rc != 0) {
    store_error_reply(c, rc, err);
    store_cursor_free(&cur);
    return;
  }
  log_warn("orphan cursor removed", LS("consumer", cur.consumer_id),
           LS("stream", cur.stream_name), LS("subject", cur.subject_id),
           LI("seq", cur.last_sequence), LI("by_uid", (int64_t)req->uid),
           LI("by_pid", (int64_t)req->pid));
  respond_json(c, 200, json_pack("{s:o}", "removed", cursor_json(a, &cur)));
  store_cursor_free(&cur);
}

static const char *string_field(json_t *o, const char *name) {
  json_t *v = json_object_get(o, name);

  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* A validated reset waiting for the flusher to be idle. */
typedef struct pending_reset {
  flusher_waiter w; /* first: the waiter is the struct */
  api *a;
  http_conn *c; /* NULL once the client went away (then nothing is done) */
  json_t *body; /* holds the strings r points into */
  store_reset r;
  bool from_start;   /* "from_start": true: position "" on purpose */
  bool has_position; /* "position" was given */
  long uid, pid;     /* the caller, for the log */
} pending_reset;

static void pending_free(pending_reset *p) {
  json_decref(p->body);
  free(p);
}

/* Answers 409 and frees p when the owner of the cursor is running or has
 * events in flight. */
static bool reset_allowed(pending_reset *p) {
  consumer *k = find_consumer(p->a, p->r.key.consumer_id);

  if (k != NULL && !consumer_is_paused(k)) {
    error_reply(p->c, 409, "consumer_not_paused",
                "pause consumer %s before resetting its cursor",
                consumer_name(k));
  } else if (k != NULL && !consumer_drained(k)) {
    error_reply(p->c, 409, "consumer_busy",
                "consumer %s still has events in flight; try again when "
                "they are delivered",
                consumer_name(k));
  } else {
    return true;
  }
  pending_free(p);
  return false;
}

static void on_reset_client_gone(http_conn *c, void *data) {
  pending_reset *p = data;

  (void)c;
  p->c = NULL;
}

static void on_idle_reset(flusher_waiter *w, int status) {
  pending_reset *p = (pending_reset *)w;
  store_cursor cur;
  consumer *k;
  char err[256];
  int rc;

  if (p->c == NULL) { /* nobody to tell: nothing is changed */
    pending_free(p);
    return;
  }
  if (status != 0) {
    error_reply(p->c, 503, "shutting_down", "tether is stopping");
    pending_free(p);
    return;
  }
  /* The consumer may have been resumed while the reset waited. */
  if (!reset_allowed(p))
    return;
  k = find_consumer(p->a, p->r.key.consumer_id);
  /* The cursor of a configured consumer: seq never goes backward. The
   * events read again after the reset get seqs above every seq handed
   * out (the lease in the state file covers those a crash forgot), so an
   * application that drops duplicates by seq never drops a new event. */
  if (k != NULL && strcmp(p->r.key.stream_name, consumer_stream_name(k)) == 0 &&
      (p->r.key.subject_id == NULL || p->r.key.subject_id[0] == '\0')) {
    uint64_t floor = consumer_seq_lease(k);

    if (floor != UINT64_MAX && (uint64_t)p->r.last_sequence < floor)
      p->r.last_sequence = (int64_t)floor;
  }
  memset(&cur, 0, sizeof cur);
  rc = store_reset_cursor(p->a->env.st, &p->r, &cur, err, sizeof err);
  if (rc != 0) {
    store_error_reply(p->c, rc, err);
    pending_free(p);
    return;
  }
  if (k != NULL && strcmp(cur.stream_name, consumer_stream_name(k)) == 0 &&
      cur.subject_id[0] == '\0')
    consumer_reset_to(k, (uint64_t)cur.last_sequence, cur.position);
  log_warn("cursor reset", LS("consumer", cur.consumer_id),
           LS("stream", cur.stream_name), LI("seq", cur.last_sequence),
           LS("reason", p->r.reason), LI("by_uid", p->uid),
           LI("by_pid", p->pid));
  respond_json(p->c, 200,
               json_pack("{s:o}", "cursor", cursor_json(p->a, &cur)));
  store_cursor_free(&cur);
  pending_free(p);
}

/* POST /v1/cursors/reset: only while the consumer that owns the cursor is
 * paused with nothing in flight, and recorded with its reason. */
static void reset_cursor(api *a, http_conn *c, const http_srv_request *req) {
  static const char *const allowed[] = {
    "key",      "last_sequence", "last_delivery_id", "last_delivered_at",
    "position", "from_start",    "reason",           NULL
  };
  json_error_t jerr;
  json_t *body, *key, *v;
  const char *name, *at;
  http_stream_callbacks cbs;
  pending_reset *p;
  store_reset r;
  size_t i;

  body = json_loadb(req->body, req->body_len, 0, &jerr);
  if (body == NULL || !json_is_object(body)) {
    json_decref(body);
    error_reply(c, 400, "invalid_json", "%s",
                body ? "expected an object" : jerr.text);
    return;
  }
  json_object_foreach(body, name, v) {
    for (i = 0; allowed[i] != NULL && strcmp(allowed[i], name) != 0; i++)
      ;
    if (allowed[i] == NULL) {
      error_reply(c, 400, "invalid_cursor", "unknown field \"%s\"", name);
      json_decref(body);
      return;
    }
  }
  key = json_object_get(body, "key");
  v = json_object_get(body, "last_sequence");
  memset(&r, 0, sizeof r);
  r.key.consumer_id = string_field(key, "consumer_id");
  r.key.stream_name = string_field(key, "stream_name");
  r.key.subject_id = string_field(key, "subject_id");
  r.last_delivery_id = string_field(body, "last_delivery_id");
  r.position = string_field(body, "position");
  r.reason = string_field(body, "reason");
  if (!json_is_object(key) || r.key.consumer_id == NULL ||
      r.key.stream_name == NULL || (v != NULL && !json_is_integer(v)) ||
      (json_object_get(body, "from_start") != NULL &&
       !json_is_boolean(json_object_get(body, "from_start")))) {
    json_decref(body);
    error_reply(c, 400, "invalid_cursor",
                "expected {\"key\":{\"consumer_id\",\"stream_name\","
                "\"subject_id\"},\"position\":\"...\" or "
                "\"from_start\":true,\"reason\":\"...\"}, and optionally "
                "\"last_sequence\":N (a floor for the seq)");
    return;
  }
  /* Where the consumer goes on is named, never implied: a reset without a
   * position used to replay the whole upstream. */
  if ((r.position == NULL) ==
      !json_is_true(json_object_get(body, "from_start"))) {
    json_decref(body);
    error_reply(c, 400, "position_required",
                "a reset names where to go on: \"position\" (the upstream's "
                "cursor, as tether cursors get shows it) or \"from_start\": "
                "true, not both");
    return;
  }
  if (r.position == NULL)
    r.position = "";
  r.last_sequence = v != NULL ? json_integer_value(v) : 0;
  if ((at = string_field(body, "last_delivered_at")) != NULL &&
      store_parse_time(at, &r.delivered_at) != 0) {
    json_decref(body);
    error_reply(c, 400, "invalid_cursor",
                "last_delivered_at = \"%s\": expected RFC 3339 UTC with 9 "
                "fractional digits",
                at);
    return;
  }
  if ((p = calloc(1, sizeof *p)) == NULL) {
    json_decref(body);
    error_reply(c, 500, "internal", "out of memory");
    return;
  }
  p->w.cb = on_idle_reset;
  p->a = a;
  p->c = c;
  p->body = body;
  p->r = r;
  p->uid = (long)req->uid;
  p->pid = (long)req->pid;
  if (!reset_allowed(p))
    return;
  /* A group commit in flight holds snapshots taken before the reset: it
   * must land first, or it would write the old cursor back over the new
   * one. The reset waits for the moment no commit runs. */
  if (a->env.fl == NULL) {
    on_idle_reset(&p->w, 0);
    return;
  }
  cbs.on_drain = NULL;
  cbs.on_closed = on_reset_client_gone;
  cbs.data = p;
  http_conn_stream_callbacks(c, &cbs);
  flusher_when_idle(a->env.fl, &p->w);
}

/* ---- metrics ----------------------------------------------------------- */

static void metric_help(buf *b, const char *name, const char *type,
                        const char *help) {
  buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value: backslash, quote and newline escaped. */
static void label(buf *b, const char *v) {
  for (; *v != '\0'; v++) {
    if (*v == '\\' || *v == '"')
      buf_appendf(b, "\\%c", *v);
    else if (*v == '\n')
      buf_append_str(b, "\\n");
    else
      buf_append(b, v, 1);
  }
}

#define PER_CONSUMER(b, name, type, help, expr)                                \
  do {                                                                         \
    metric_help((b), (name), (type), (help));                                  \
    for (i = 0; i < a->env.n; i++) {                                           \
      consumer_get_stats(a->env.consumers[i], &st);                            \
      buf_appendf((b), "%s{consumer=\"", (name));                              \
      label((b), consumer_name(a->env.consumers[i]));                          \
      buf_appendf((b), "\"} %.17g\n", (double)(expr));                         \
    }                                                                          \
  } while (0)

static uint64_t open_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  uint64_t n = 0;

  if (d == NULL)
    return 0;
  while ((e = readdir(d)) != NULL)
    n += e->d_name[0] != '.';
  closedir(d);
  return n > 0 ? n - 1 : 0; /* the directory's own descriptor */
}

static uint64_t rss_bytes(void) {
  long pages = 0, rss = 0;
  FILE *f = fopen("/proc/self/statm", "r");

  if (f == NULL)
    return 0;
  if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
    rss = 0;
  fclose(f);
  return (uint64_t)rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void metrics(api *a, http_conn *c) {
  consumer_stats st;
  flusher_stats fs;
  struct rusage ru;
  size_t i, s;
  buf b;

  buf_init(&b, 0);
  metric_help(&b, "tether_build_info", "gauge", "the running version");
  buf_appendf(&b, "tether_build_info{version=\"%s\"} 1\n", TETHER_VERSION);
  PER_CONSUMER(&b, "tether_events_received_total", "counter",
               "events the source handed to the consumer", st.emitted);
  PER_CONSUMER(&b, "tether_events_delivered_total", "counter",
               "events the sink delivered", st.delivered);
  PER_CONSUMER(&b, "tether_sink_delivered_bytes_total", "counter",
               "bytes of envelope lines the sink delivered",
               st.bytes_delivered);
  PER_CONSUMER(&b, "tether_events_in_flight_bytes", "gauge",
               "bytes of envelope lines handed over and not yet delivered",
               st.bytes_in_flight);
  PER_CONSUMER(&b, "tether_events_retried_total", "counter",
               "events sent to the sink again (a failed write, a retry "
               "answer, a timeout, a subscriber or handler gone)",
               st.retried);
  PER_CONSUMER(&b, "tether_events_failed_total", "counter",
               "events the sink gave up on after max_attempts", st.failed);
  PER_CONSUMER(&b, "tether_events_dead_lettered_total", "counter",
               "failed events kept in the dead-letter file", st.dead_lettered);
  PER_CONSUMER(&b, "tether_sink_write_errors_total", "counter",
               "sink writes that failed", st.write_errors);
  PER_CONSUMER(&b, "tether_events_in_flight", "gauge",
               "events handed over and not yet delivered", st.in_flight);
  PER_CONSUMER(&b, "tether_cursor_lag_events", "gauge",
               "events between the source and the delivered cursor",
               st.in_flight);
  PER_CONSUMER(&b, "tether_cursor_lag_seconds", "gauge",
               "age of the oldest event not yet delivered",
               (double)st.oldest_ms / 1000.0);
  PER_CONSUMER(&b, "tether_cursor_uncommitted_events", "gauge",
               "delivered events the committed cursor does not cover yet",
               st.delivered_seq - st.committed_seq);
  PER_CONSUMER(&b, "tether_upstream_reconnects_total", "counter",
               "times the source lost its upstream and backed off",
               st.reconnects);
  PER_CONSUMER(&b, "tether_sink_rewinds_total", "counter",
               "times the sink lost what it held since the last commit (a "
               "removed file) and everything after the cursor came again",
               st.sink_rewinds);
  PER_CONSUMER(&b, "tether_source_cursor_stalls_total", "counter",
               "pages that brought items but came back with the cursor they "
               "were asked with (http-poll)",
               st.cursor_stalls);
  metric_help(&b, "tether_consumer_state", "gauge",
              "1 for the state each consumer is in");
  for (i = 0; i < a->env.n; i++) {
    consumer_state cs = consumer_get_state(a->env.consumers[i]);

    for (s = 0; s <= CONSUMER_STOPPED; s++) {
      buf_append_str(&b, "tether_consumer_state{consumer=\"");
      label(&b, consumer_name(a->env.consumers[i]));
      buf_appendf(&b, "\",state=\"%s\"} %d\n", consumer_state_names[s],
                  (consumer_state)s == cs);
    }
  }
  metric_help(&b, "tether_errors_total", "counter",
              "failures by where they came from (the last is in the cursor "
              "row's last_error)");
  for (i = 0; i < a->env.n; i++) {
    static const char *const kinds[] = { "source", "sink", "commit" };

    consumer_get_stats(a->env.consumers[i], &st);
    for (s = 0; s < 3; s++) {
      buf_append_str(&b, "tether_errors_total{consumer=\"");
      label(&b, consumer_name(a->env.consumers[i]));
      buf_appendf(&b, "\",kind=\"%s\"} %" PRIu64 "\n", kinds[s], st.errors[s]);
    }
  }
  metric_help(&b, "tether_sink_state", "gauge",
              "1 for the state each consumer's sink is in");
  for (i = 0; i < a->env.n; i++) {
    static const char *const sink_states[] = {
      "ok", "waiting_for_reader", "no_subscriber", "retrying", "failed",
    };
    char now[320];
    size_t len;

    consumer_sink_status(a->env.consumers[i], now, sizeof now);
    len = strcspn(now, ":");
    for (s = 0; s < sizeof sink_states / sizeof sink_states[0]; s++) {
      buf_append_str(&b, "tether_sink_state{consumer=\"");
      label(&b, consumer_name(a->env.consumers[i]));
      buf_appendf(&b, "\",state=\"%s\"} %d\n", sink_states[s],
                  strlen(sink_states[s]) == len &&
                      strncmp(now, sink_states[s], len) == 0);
    }
  }
  if (a->env.fl != NULL) {
    flusher_get_stats(a->env.fl, &fs);
    metric_help(&b, "tether_store_commit_duration_seconds", "histogram",
                "time of each group commit of cursors");
    for (i = 0; i < FLUSHER_BUCKETS; i++)
      buf_appendf(&b,
                  "tether_store_commit_duration_seconds_bucket{le=\"%g\"} "
                  "%" PRIu64 "\n",
                  flusher_bucket_bounds[i], fs.buckets[i]);
    buf_appendf(&b,
                "tether_store_commit_duration_seconds_bucket{le=\"+Inf\"} "
                "%" PRIu64 "\n"
                "tether_store_commit_duration_seconds_sum %.9f\n"
                "tether_store_commit_duration_seconds_count %" PRIu64 "\n",
                fs.commits, fs.seconds, fs.commits);
    metric_help(&b, "tether_store_commit_failures_total", "counter",
                "group commits that failed");
    buf_appendf(&b, "tether_store_commit_failures_total %" PRIu64 "\n",
                fs.failures);
  }
  getrusage(RUSAGE_SELF, &ru);
  metric_help(&b, "process_cpu_seconds_total", "counter",
              "user and system CPU time");
  buf_appendf(&b, "process_cpu_seconds_total %.6f\n",
              (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                  (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  metric_help(&b, "process_resident_memory_bytes", "gauge", "resident memory");
  buf_appendf(&b, "process_resident_memory_bytes %" PRIu64 "\n", rss_bytes());
  metric_help(&b, "process_open_fds", "gauge", "open file descriptors");
  buf_appendf(&b, "process_open_fds %" PRIu64 "\n", open_fds());
  metric_help(&b, "process_start_time_seconds", "gauge",
              "start time, Unix seconds");
  buf_appendf(&b, "process_start_time_seconds %lld\n",
              (long long)a->started_wall);
  if (buf_cstr(&b) == NULL) {
    buf_free(&b);
    error_reply(c, 500, "internal", "out of memory");
    return;
  }
  http_conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, 0,
                    b.data, b.len);
  buf_free(&b);
}

/* ---- routing ----------------------------------------------------------- */

static bool method_is(http_conn *c, const http_srv_request *req,
                      const char *want) {
  http_header allow = { "Allow", want };

  if (strcmp(req->method, want) == 0)
    return true;
  {
    char body[160];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"method_not_allowed\",\"message\":"
                     "\"%s is not allowed here; use %s\"}}",
                     req->method, want);

    http_conn_respond(c, 405, "application/json", &allow, 1, body, (size_t)n);
  }
  return false;
}

static void route(http_conn *c, const http_srv_request *req, void *data) {
  api *a = data;
  char *seg[6], shown[160];
  int n = split_path(req->target, seg, 5);
  consumer *k;

  if (n == UV_ENOMEM) {
    respond_oom(c);
    return;
  }
  if (n < 0) {
    error_reply(c, 400, "bad_request", "the path has %s", decode_error(n));
    return;
  }
  if (n > 5) {
    free_segs(seg, 5);
    error_reply(c, 404, "not_found", "no such endpoint");
    return;
  }
  if (n == 1 && strcmp(seg[0], "metrics") == 0) {
    if (method_is(c, req, "GET"))
      metrics(a, c);
    goto out;
  }
  if (n < 2 || strcmp(seg[0], "v1") != 0)
    goto not_found;
  if (n == 2 && strcmp(seg[1], "health") == 0) {
    if (method_is(c, req, "GET"))
      respond_json(
          c, 200,
          json_pack("{s:s,s:s}", "status", "ok", "version", TETHER_VERSION));
    goto out;
  }
  if (n == 2 && strcmp(seg[1], "ready") == 0) {
    const char *phase = a->env.phase(a->env.data);

    if (!method_is(c, req, "GET"))
      goto out;
    if (strcmp(phase, "running") != 0) {
      error_reply(c, 503, "not_ready", "tether is %s", phase);
    } else if (a->env.fl != NULL && !flusher_healthy(a->env.fl) &&
               flusher_failing_ms(a->env.fl) >=
                   a->env.cfg->daemon.ready_commit_timeout) {
      /* The cursors cannot be made durable: a restart now would deliver
       * again everything since the last good commit. */
      error_reply(c, 503, "commits_failing",
                  "cursor commits have been failing for %.1f s "
                  "(ready_commit_timeout): %s",
                  (double)flusher_failing_ms(a->env.fl) / 1000.0,
                  a->env.n > 0 ? consumer_error_now(a->env.consumers[0]) : "");
    } else {
      respond_json(c, 200, json_pack("{s:b}", "ready", 1));
    }
    goto out;
  }
  /* Everything below reads or changes state: the unix socket only. */
  if (req->tcp) {
    error_reply(c, 404, "not_found",
                "only /v1/health, /v1/ready and /metrics are served on "
                "http_listen; use the unix socket");
    goto out;
  }
  if (strcmp(seg[1], "consumers") == 0) {
    if (n == 2) {
      if (method_is(c, req, "GET"))
        list_consumers(a, c);
      goto out;
    }
    if ((k = find_consumer(a, seg[2])) == NULL) {
      error_reply(c, 404, "consumer_not_found", "no consumer named %s",
                  printable(seg[2], shown, sizeof shown));
      goto out;
    }
    if (n == 3) {
      if (method_is(c, req, "GET"))
        respond_json(c, 200,
                     json_pack("{s:o}", "consumer", consumer_json(a, k)));
    } else if (n == 4 && strcmp(seg[3], "pause") == 0) {
      if (method_is(c, req, "POST"))
        set_paused(a, c, req, k, true);
    } else if (n == 4 && strcmp(seg[3], "resume") == 0) {
      if (method_is(c, req, "POST"))
        set_paused(a, c, req, k, false);
    } else if (n == 4 && strcmp(seg[3], "events") == 0) {
      if (method_is(c, req, "GET"))
        subscribe(a, c, req, k);
    } else if (n == 4 && strcmp(seg[3], "ack") == 0) {
      if (method_is(c, req, "POST"))
        ack(a, c, req, k);
    } else {
      goto not_found;
    }
    goto out;
  }
  if (strcmp(seg[1], "cursors") == 0) {
    if (n == 2) {
      if (method_is(c, req, "GET"))
        list_cursors(a, c, req);
    } else if (n == 3 && strcmp(seg[2], "reset") == 0) {
      if (method_is(c, req, "POST"))
        reset_cursor(a, c, req);
    } else if ((n == 4 || n == 5) && strcmp(req->method, "DELETE") == 0) {
      remove_cursor(a, c, req, seg, n);
    } else if (n == 4 || n == 5) {
      if (method_is(c, req, "GET"))
        get_cursor(a, c, seg, n);
    } else {
      goto not_found;
    }
    goto out;
  }

not_found:
  error_reply(c, 404, "not_found", "no endpoint %s %s", req->method,
              printable(req->target, shown, sizeof shown));
out:
  free_segs(seg, n);
}

/* ---- life -------------------------------------------------------------- */

/* HOST:PORT, [IPv6]:PORT, or :PORT / PORT for the loopback address. */
static int parse_listen(const char *text, char *host, size_t hostlen,
                        uint16_t *port) {
  const char *colon = strrchr(text, ':');
  char *end;
  long p;

  if (colon == NULL || colon == text) {
    p = strtol(colon != NULL ? colon + 1 : text, &end, 10);
    if (*end != '\0' || end == (colon != NULL ? colon + 1 : text) || p < 0 ||
        p > 65535)
      return UV_EINVAL;
    snprintf(host, hostlen, "127.0.0.1");
    *port = (uint16_t)p;
    return 0;
  }
  if ((size_t)(colon - text) >= hostlen)
    return UV_EINVAL;
  p = strtol(colon + 1, &end, 10);
  if (*end != '\0' || p < 0 || p > 65535)
    return UV_EINVAL;
  memcpy(host, text, (size_t)(colon - text));
  host[colon - text] = '\0';
  if (host[0] == '[' && host[strlen(host) - 1] == ']') {
    memmove(host, host + 1, strlen(host) - 2);
    host[strlen(host) - 2] = '\0';
  }
  *port = (uint16_t)p;
  return 0;
}

int api_start(uv_loop_t *loop, const api_env *env, api **out, char *err,
              size_t errlen) {
  const daemon_conf *dc = &env->cfg->daemon;
  http_server_opts o;
  char host[128];
  size_t i;
  api *a;
  int rc;

  if ((a = calloc(1, sizeof *a)) == NULL ||
      (a->rates = calloc(env->n ? env->n : 1, sizeof *a->rates)) == NULL) {
    free(a);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  a->loop = loop;
  a->env = *env;
  a->started = uv_now(loop);
  for (i = 0; i < env->n; i++)
    a->rates[i].at = a->started;
  a->started_wall = time(NULL);
  memset(&o, 0, sizeof o);
  o.unix_path = dc->socket[0] != '\0' ? dc->socket : NULL;
  o.unix_mode = (unsigned)dc->socket_mode;
  o.unix_gid = (gid_t)-1;
  o.max_connections = (unsigned)dc->api_max_connections;
  o.tcp_max_connections = (unsigned)dc->http_max_connections;
  o.request_timeout = (uint64_t)dc->api_request_timeout;
  o.idle_timeout = (uint64_t)dc->api_idle_timeout;
  if (dc->socket_group[0] != '\0') {
    struct group *g = getgrnam(dc->socket_group);
    char *end;
    long gid = strtol(dc->socket_group, &end, 10);

    if (g != NULL)
      o.unix_gid = g->gr_gid;
    else if (*end == '\0' && gid >= 0)
      o.unix_gid = (gid_t)gid;
    else {
      snprintf(err, errlen, "socket_group %s: no such group", dc->socket_group);
      free(a->rates);
      free(a);
      return UV_EINVAL;
    }
  }
  if (dc->http_listen[0] != '\0') {
    if (parse_listen(dc->http_listen, host, sizeof host, &o.tcp_port) != 0) {
      snprintf(err, errlen,
               "http_listen = \"%s\": expected HOST:PORT or PORT, e.g. "
               "127.0.0.1:9464",
               dc->http_listen);
      free(a->rates);
      free(a);
      return UV_EINVAL;
    }
    o.tcp_host = host;
  }
  rc = http_server_start(loop, &o, route, a, &a->srv, err, errlen);
  if (rc != 0) {
    free(a->rates);
    free(a);
    return rc;
  }
  if (o.tcp_host != NULL) {
    char bound[160];

    snprintf(bound, sizeof bound, strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
             (unsigned)http_server_tcp_port(a->srv));
    log_info("local API listening", LS("socket", dc->socket),
             LS("http_listen", bound));
  } else {
    log_info("local API listening", LS("socket", dc->socket));
  }
  *out = a;
  return 0;
}

static void on_server_closed(void *data) {
  api *a = data;
  void (*cb)(void *) = a->close_cb;
  void *cb_data = a->close_data;

  free(a->rates);
  free(a);
  cb(cb_data);
}

void api_close(api *a, void (*cb)(void *data), void *data) {
  a->close_cb = cb;
  a->close_data = data;
  http_server_close(a->srv, on_server_closed, a);
}
