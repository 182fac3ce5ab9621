/* Source `generate`: synthetic events at a set rate, for the quickstart,
 * demos and benchmarks. Its cursor is the sequence number, so a restart
 * resumes numbering after the last committed event. */
#include <assert.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <uv.h>

#include "daemon/consumer.h"
#include "daemon/source.h"
#include "protocol/buf.h"
#include "protocol/envelope.h"

typedef struct generate_conf {
  int64_t rate;          /* events per second; 0 = as fast as the window */
  int64_t count;         /* the last sequence to emit; 0 = forever */
  uint64_t payload_size; /* bytes of each event's data */
  char *template;        /* JSON data with {seq}; "" = a padded object */
} generate_conf;

static const option generate_options[] = {
  { "rate", OPT_INT, "1", offsetof(generate_conf, rate),
    "events per second; 0 = as fast as the delivery window allows", 0,
    100000000, NULL, 0 },
  { "count", OPT_INT, "0", offsetof(generate_conf, count),
    "sequence number of the last event; 0 = never stop", 0, INT64_MAX, NULL,
    0 },
  { "payload_size", OPT_SIZE, "100", offsetof(generate_conf, payload_size),
    "size of each event's data in bytes (a JSON object padded to it)", 32,
    1048576, NULL, 0 },
  { "template", OPT_STRING, "", offsetof(generate_conf, template),
    "JSON data for each event; {seq} is replaced by its sequence number", 0, 0,
    NULL, 0 },
  { NULL, 0, NULL, 0, NULL, 0, 0, NULL, 0 },
};

extern const source_type source_generate;

static int generate_check(void *conf, uint64_t explicit, char *err,
                          size_t errlen) {
  generate_conf *g = conf;
  json_error_t jerr;
  json_t *j;
  char *text;
  size_t i, n = strlen(g->template), o = 0;
  const uint64_t payload_bit =
      (uint64_t)1 << options_index(
          generate_options, options_find(generate_options, "payload_size"));

  if (n == 0)
    return 0;
  if (explicit & payload_bit) {
    snprintf(err, errlen, "set either template or payload_size, not both");
    return UV_EINVAL;
  }
  /* Validate with a sample number in place of {seq}, so what is sent is
   * always valid JSON whatever the sequence. */
  text = malloc(n * 2 + 1);
  if (text == NULL)
    return UV_ENOMEM;
  for (i = 0; i < n;) {
    if (strncmp(g->template + i, "{seq}", 5) == 0) {
      memcpy(text + o, "12345", 5);
      o += 5;
      i += 5;
    } else {
      text[o++] = g->template[i++];
    }
  }
  text[o] = '\0';
  j = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
  free(text);
  if (j == NULL) {
    snprintf(err, errlen,
             "template is not valid JSON once {seq} is a number: %s at "
             "column %d",
             jerr.text, jerr.column);
    return UV_EINVAL;
  }
  json_decref(j);
  return 0;
}

static const char *generate_stream_name(const void *conf) {
  (void)conf;
  return "generate";
}

/* Every generator counts from 1: one stream. */
static int generate_identity(const void *conf, const char *upstream_url,
                             buf *out) {
  (void)conf, (void)upstream_url;
  buf_reset(out);
  return buf_append_str(out, "generate") != 0 || buf_cstr(out) == NULL
             ? UV_ENOMEM
             : 0;
}

/* A bounded amount of work per wake-up (STYLE rule 9), so one fast source
 * cannot starve the rest of the loop. */
#define GENERATE_BURST 4096

typedef struct generate {
  source base;
  const generate_conf *conf;
  uv_timer_t timer; /* paces rate > 0 */
  uv_idle_t idle;   /* drives rate = 0 while the window has room */
  int pending_closes;
  bool stopping;
  bool done;
  uint64_t next;    /* sequence of the next event */
  uint64_t t0;      /* uv_now() when pacing (re)started */
  uint64_t paced;   /* events emitted since t0 */
  buf data;         /* the current event's data */
  char *pad;        /* payload_size bytes of 'x' */
  size_t fixed_len; /* bytes of the default object without digits or pad */
} generate;

/* The default data: {"seq":N,"payload":"xxx..."} padded to payload_size. */
static int build_default(generate *g, const char *digits, size_t n) {
  size_t want = g->conf->payload_size, have = g->fixed_len + n;
  size_t pad = want > have ? want - have : 0;
  char *p;
  int err;

  buf_reset(&g->data);
  if ((err = buf_reserve(&g->data, have + pad)) != 0)
    return err;
  p = g->data.data;
  memcpy(p, "{\"seq\":", 7);
  memcpy(p + 7, digits, n);
  memcpy(p + 7 + n, ",\"payload\":\"", 12);
  memcpy(p + 19 + n, g->pad, pad);
  memcpy(p + 19 + n + pad, "\"}", 2);
  g->data.len = have + pad;
  return 0;
}

static int build_template(generate *g, const char *digits, size_t n) {
  const char *t = g->conf->template, *hit;
  int err;

  buf_reset(&g->data);
  while ((hit = strstr(t, "{seq}")) != NULL) {
    if ((err = buf_append(&g->data, t, (size_t)(hit - t))) != 0 ||
        (err = buf_append(&g->data, digits, n)) != 0)
      return err;
    t = hit + 5;
  }
  return buf_append_str(&g->data, t);
}

static bool finished(const generate *g) {
  return g->conf->count > 0 && g->next > (uint64_t)g->conf->count;
}

/* Emits up to max events. Returns the number emitted. */
static uint64_t emit_some(generate *g, uint64_t max) {
  consumer *c = g->base.consumer;
  struct timespec ts;
  char digits[24];
  event ev;
  uint64_t i;
  size_t n;
  int err;

  if (max > GENERATE_BURST)
    max = GENERATE_BURST;
  /* One clock read per burst: a burst takes well under a millisecond, the
   * resolution of the envelope's time. */
  clock_gettime(CLOCK_REALTIME, &ts);
  ev.name = "tick";
  ev.kind = "generate";
  ev.data_is_json = true;
  ev.time_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
  /* Room is asked for each event: the window is bounded in bytes too. */
  for (i = 0; i < max && !finished(g) && consumer_room(c) > 0; i++) {
    n = envelope_put_u64(digits, g->next);
    err = g->conf->template[0] != '\0' ? build_template(g, digits, n)
                                       : build_default(g, digits, n);
    if (err != 0) {
      consumer_source_failed(c, "out of memory building an event");
      return i;
    }
    ev.position = digits;
    ev.position_len = n;
    ev.data = g->data.data;
    ev.data_len = g->data.len;
    if (consumer_emit(c, &ev) == 0) {
      consumer_source_failed(c, "out of memory queueing an event");
      return i;
    }
    g->next++;
  }
  if (finished(g) && !g->done) {
    g->done = true;
    uv_timer_stop(&g->timer);
    uv_idle_stop(&g->idle);
    consumer_source_done(c);
  }
  return i;
}

static void on_idle(uv_idle_t *h) {
  generate *g = h->data;

  emit_some(g, UINT64_MAX);
  /* No room: sleep until on_room, so a full window costs no CPU. */
  if (!g->done && consumer_room(g->base.consumer) == 0)
    uv_idle_stop(&g->idle);
}

static void on_tick(uv_timer_t *t) {
  generate *g = t->data;
  uint64_t now = uv_now(t->loop);
  uint64_t rate = (uint64_t)g->conf->rate;
  /* The first event goes out at once, then rate per second. */
  uint64_t due = 1 + (now - g->t0) * rate / 1000;

  /* More than a second behind (the sink was slow): start pacing afresh
   * rather than bursting to catch up on synthetic events. */
  if (due > g->paced + rate + 1) {
    g->t0 = now;
    g->paced = 0;
    due = 1;
  }
  if (due > g->paced)
    g->paced += emit_some(g, due - g->paced);
}

static void start_pacing(generate *g);

static void generate_on_room(source *s) {
  generate *g = (generate *)s;

  if (g->stopping || g->done)
    return;
  if (g->conf->rate == 0)
    uv_idle_start(&g->idle, on_idle);
}

static int generate_start(consumer *c, const void *conf,
                          const source_resume *resume, source **out, char *err,
                          size_t errlen) {
  const generate_conf *gc = conf;
  generate *g = calloc(1, sizeof *g);
  uv_loop_t *loop = consumer_loop(c);

  if (g == NULL || (g->pad = malloc(gc->payload_size + 1)) == NULL) {
    free(g);
    snprintf(err, errlen, "out of memory");
    return UV_ENOMEM;
  }
  memset(g->pad, 'x', gc->payload_size);
  g->base.type = &source_generate;
  g->base.consumer = c;
  g->conf = gc;
  g->fixed_len = 7 + 12 + 2;
  /* The position is the generator's own counter. It is the seq too until a
   * reset moves the seq above every seq used before; from then on the
   * counter goes on from the position it was reset to. */
  g->next = resume->position[0] != '\0'
                ? strtoull(resume->position, NULL, 10) + 1
                : 1;
  buf_init(&g->data, 0);
  uv_timer_init(loop, &g->timer);
  uv_idle_init(loop, &g->idle);
  g->timer.data = g;
  g->idle.data = g;
  *out = &g->base;
  consumer_source_connected(c);
  if (finished(g)) {
    g->done = true;
    consumer_source_done(c);
    return 0;
  }
  if (consumer_intake(c) == SOURCE_INTAKE_ON)
    start_pacing(g);
  return 0;
}

/* Pacing starts afresh after a pause: a paused generator is a quiet one
 * (no timer runs), and it does not burst to catch up afterwards. */
static void start_pacing(generate *g) {
  uv_loop_t *loop = consumer_loop(g->base.consumer);
  uint64_t period;

  if (g->done || g->stopping)
    return;
  if (g->conf->rate == 0) {
    uv_idle_start(&g->idle, on_idle);
    return;
  }
  /* Tick often enough that each tick carries about one event, but at
   * most once a millisecond and at least once a second. */
  period = 1000 / (uint64_t)g->conf->rate;
  if (period < 1)
    period = 1;
  g->t0 = uv_now(loop);
  g->paced = 0;
  uv_timer_start(&g->timer, on_tick, 0, period);
}

static void generate_on_intake(source *s, source_intake intake) {
  generate *g = (generate *)s;

  if (intake == SOURCE_INTAKE_ON) {
    start_pacing(g);
    return;
  }
  uv_timer_stop(&g->timer);
  uv_idle_stop(&g->idle);
}

static void on_close(uv_handle_t *h) {
  generate *g = h->data;

  if (--g->pending_closes > 0)
    return;
  consumer *c = g->base.consumer;
  buf_free(&g->data);
  free(g->pad);
  free(g);
  consumer_source_closed(c);
}

static void generate_close(source *s) {
  generate *g = (generate *)s;

  assert(!g->stopping);
  g->stopping = true;
  g->pending_closes = 2;
  uv_close((uv_handle_t *)&g->timer, on_close);
  uv_close((uv_handle_t *)&g->idle, on_close);
}

const source_type source_generate = {
  .name = "generate",
  .description = "synthetic events at a set rate (demos, benchmarks)",
  .options = generate_options,
  .conf_size = sizeof(generate_conf),
  .check = generate_check,
  .stream_name = generate_stream_name,
  .identity = generate_identity,
  .start = generate_start,
  .close = generate_close,
  .on_room = generate_on_room,
  .on_intake = generate_on_intake,
};
