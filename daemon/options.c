/* Option tables: parsing and formatting of the value kinds of options.h.
 *
 * Every parser here accepts exactly its grammar and nothing else: no
 * surrounding blanks, no trailing junk, no silent wrap-around. inih already
 * trims values, so a blank inside a value is a typo worth reporting. */
#include "daemon/options.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

/* Outcomes of the unit parsers; the public wrappers map them to UV_E*. */
enum {
  NUM_OK,
  NUM_SYNTAX,   /* not in the grammar */
  NUM_FRACTION, /* a fraction that is not a whole number of the base unit */
  NUM_RANGE,    /* does not fit in 64 bits */
};

#define MS_PER_S UINT64_C(1000)
#define MS_PER_M (60 * MS_PER_S)
#define MS_PER_H (60 * MS_PER_M)
#define KIB      UINT64_C(1024)

/* The most fraction digits we carry exactly; 10^18 still fits in 64 bits. */
#define FRACTION_DIGITS_MAX 18

static const char duration_expected[] =
    "expected a duration with a unit, such as 250ms, 30s, 5m or 1h";
static const char size_expected[] =
    "expected a size such as 512, 64KiB or 10MiB";

/* A decimal number as written: whole part and fraction, the fraction kept
 * as an integer with its digit count after trailing zeros are dropped, so
 * 1.50 and 1.5 are the same number. */
typedef struct number {
  uint64_t whole;
  uint64_t frac;
  unsigned frac_digits;
  bool has_point;
  bool too_big;     /* the whole part overflowed */
  bool too_precise; /* more significant fraction digits than we carry */
} number;

static bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

static bool mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
  if (a != 0 && b > UINT64_MAX / a)
    return false;
  *out = a * b;
  return true;
}

static bool add_u64(uint64_t a, uint64_t b, uint64_t *out) {
  if (b > UINT64_MAX - a)
    return false;
  *out = a + b;
  return true;
}

/* Scans digits[.digits] at *s. Returns false when no number starts there or
 * a point is not followed by a digit. */
static bool scan_number(const char **s, number *n) {
  const char *p = *s;
  unsigned zeros = 0;

  memset(n, 0, sizeof *n);
  if (!is_digit(*p))
    return false;
  for (; is_digit(*p); p++) {
    if (!mul_u64(n->whole, 10, &n->whole) ||
        !add_u64(n->whole, (uint64_t)(*p - '0'), &n->whole))
      n->too_big = true;
  }
  if (*p == '.') {
    n->has_point = true;
    p++;
    if (!is_digit(*p))
      return false;
    for (; is_digit(*p); p++) {
      /* Zeros count only once a non-zero digit follows them. */
      if (*p == '0') {
        zeros++;
        continue;
      }
      if (n->frac_digits + zeros + 1 > FRACTION_DIGITS_MAX) {
        n->too_precise = true;
        zeros = 0;
        continue;
      }
      for (; zeros > 0; zeros--, n->frac_digits++)
        n->frac *= 10;
      n->frac = n->frac * 10 + (uint64_t)(*p - '0');
      n->frac_digits++;
    }
  }
  *s = p;
  return true;
}

static uint64_t gcd_u64(uint64_t a, uint64_t b) {
  while (b != 0) {
    uint64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* n * unit, exactly: NUM_FRACTION when the result is not a whole number,
 * NUM_RANGE when it does not fit. The fraction is frac / 10^k; dividing
 * unit and 10^k by their gcd first keeps every step within 64 bits. */
static int number_times(const number *n, uint64_t unit, uint64_t *out) {
  uint64_t whole, part = 0, pow10 = 1, g;
  unsigned i;

  if (n->too_big)
    return NUM_RANGE;
  if (n->too_precise)
    return NUM_FRACTION;
  if (!mul_u64(n->whole, unit, &whole))
    return NUM_RANGE;
  if (n->frac_digits > 0) {
    for (i = 0; i < n->frac_digits; i++)
      pow10 *= 10;
    g = gcd_u64(unit, pow10);
    if (n->frac % (pow10 / g) != 0)
      return NUM_FRACTION;
    if (!mul_u64(n->frac / (pow10 / g), unit / g, &part))
      return NUM_RANGE;
  }
  if (!add_u64(whole, part, out))
    return NUM_RANGE;
  return NUM_OK;
}

/* Units of a duration, largest first; each may appear once, in this order,
 * so 1h30m parses and 30m1h or 1m1m are reported as typos. "ms" comes
 * before "m" so that the longer name wins. */
static const struct {
  const char *name;
  uint64_t ms;
  int rank;
} duration_units[] = {
  { "ms", 1, 0 },
  { "h", MS_PER_H, 3 },
  { "m", MS_PER_M, 2 },
  { "s", MS_PER_S, 1 },
};

static int parse_duration(const char *text, uint64_t *ms) {
  const char *p = text;
  uint64_t total = 0, part;
  int last_rank = 4, r;
  size_t i, len;
  number n;

  if (strcmp(text, "0") == 0) {
    *ms = 0;
    return NUM_OK;
  }
  if (*p == '\0')
    return NUM_SYNTAX;
  while (*p != '\0') {
    if (!scan_number(&p, &n))
      return NUM_SYNTAX;
    for (i = 0; i < sizeof duration_units / sizeof duration_units[0]; i++) {
      len = strlen(duration_units[i].name);
      if (strncmp(p, duration_units[i].name, len) == 0)
        break;
    }
    if (i == sizeof duration_units / sizeof duration_units[0])
      return NUM_SYNTAX;
    if (duration_units[i].rank >= last_rank)
      return NUM_SYNTAX;
    last_rank = duration_units[i].rank;
    p += len;
    r = number_times(&n, duration_units[i].ms, &part);
    if (r != NUM_OK)
      return r;
    if (!add_u64(total, part, &total))
      return NUM_RANGE;
  }
  *ms = total;
  return NUM_OK;
}

static const struct {
  const char *name;
  uint64_t bytes;
} size_units[] = {
  { "B", 1 },
  { "KiB", KIB },
  { "MiB", KIB *KIB },
  { "GiB", KIB *KIB *KIB },
  { "TiB", KIB *KIB *KIB *KIB },
  { "KB", 1000 },
  { "MB", 1000 * 1000 },
  { "GB", 1000 * 1000 * 1000 },
};

static int parse_size(const char *text, uint64_t *bytes) {
  const char *p = text;
  size_t i;
  number n;

  if (!scan_number(&p, &n))
    return NUM_SYNTAX;
  if (*p == '\0') {
    /* A bare number counts bytes, so it must be whole. */
    if (n.has_point)
      return NUM_SYNTAX;
    return number_times(&n, 1, bytes);
  }
  for (i = 0; i < sizeof size_units / sizeof size_units[0]; i++)
    if (strcmp(p, size_units[i].name) == 0)
      return number_times(&n, size_units[i].bytes, bytes);
  return NUM_SYNTAX;
}

static int to_uv(int r) {
  switch (r) {
  case NUM_OK:
    return 0;
  case NUM_RANGE:
    return UV_ERANGE;
  default:
    return UV_EINVAL;
  }
}

int options_parse_duration(const char *text, uint64_t *ms) {
  if (text == NULL || ms == NULL)
    return UV_EINVAL;
  return to_uv(parse_duration(text, ms));
}

int options_parse_size(const char *text, uint64_t *bytes) {
  if (text == NULL || bytes == NULL)
    return UV_EINVAL;
  return to_uv(parse_size(text, bytes));
}

void options_format_duration(uint64_t ms, char *out, size_t outlen) {
  size_t o = 0;
  int n;

  if (outlen == 0)
    return;
  out[0] = '\0';
  if (ms == 0 || ms % MS_PER_S != 0) {
    snprintf(out, outlen, "%" PRIu64 "%s", ms, ms == 0 ? "" : "ms");
    return;
  }
  if (ms >= MS_PER_H) {
    n = snprintf(out, outlen, "%" PRIu64 "h", ms / MS_PER_H);
    o = n < 0 ? outlen : (size_t)n;
    ms %= MS_PER_H;
  }
  if (ms >= MS_PER_M && o < outlen) {
    n = snprintf(out + o, outlen - o, "%" PRIu64 "m", ms / MS_PER_M);
    o += n < 0 ? outlen : (size_t)n;
    ms %= MS_PER_M;
  }
  if (ms > 0 && o < outlen)
    snprintf(out + o, outlen - o, "%" PRIu64 "s", ms / MS_PER_S);
}

void options_format_size(uint64_t bytes, char *out, size_t outlen) {
  static const char *const names[] = { "KiB", "MiB", "GiB", "TiB" };
  const char *unit = NULL;
  uint64_t v = bytes;
  size_t i;

  for (i = 0; i < 4 && v != 0 && v % KIB == 0; i++) {
    v /= KIB;
    unit = names[i];
  }
  snprintf(out, outlen, "%" PRIu64 "%s", v, unit ? unit : "");
}

/* The message for a value outside [min, max] of an integer option. */
static void int_expected(const option *o, char *err, size_t errlen) {
  if (o->min == 0 && o->max == 0)
    snprintf(err, errlen, "expected an integer");
  else if (o->max == INT64_MAX)
    snprintf(err, errlen, "expected an integer >= %" PRId64, o->min);
  else
    snprintf(err, errlen, "expected an integer %" PRId64 "..%" PRId64, o->min,
             o->max);
}

static int parse_int(const option *o, const char *text, int64_t *out, char *err,
                     size_t errlen) {
  const char *p = text;
  bool neg = false;
  uint64_t v = 0;
  /* The magnitude of INT64_MIN is one more than INT64_MAX. */
  uint64_t limit;
  int64_t r;

  if (*p == '+' || *p == '-')
    neg = *p++ == '-';
  limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  if (!is_digit(*p))
    goto bad;
  for (; is_digit(*p); p++) {
    uint64_t d = (uint64_t)(*p - '0');
    if (v > (limit - d) / 10)
      goto bad;
    v = v * 10 + d;
  }
  if (*p != '\0')
    goto bad;
  if (neg)
    r = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
  else
    r = (int64_t)v;
  if ((o->min != 0 || o->max != 0) && (r < o->min || r > o->max))
    goto bad;
  *out = r;
  return 0;

bad:
  int_expected(o, err, errlen);
  return UV_EINVAL;
}

static bool bounded(const option *o) {
  return o->min != 0 || o->max != 0;
}

static bool in_bounds(const option *o, uint64_t v) {
  if (!bounded(o))
    return true;
  return v >= (uint64_t)(o->min < 0 ? 0 : o->min) &&
         (o->max < 0 ? false : v <= (uint64_t)o->max);
}

/* "expected a duration 10ms..1h" or "expected a size 32..1MiB". */
static void range_expected(const option *o, const char *what,
                           void (*fmt)(uint64_t, char *, size_t), char *err,
                           size_t errlen) {
  char lo[32], hi[32];

  fmt((uint64_t)(o->min < 0 ? 0 : o->min), lo, sizeof lo);
  if (o->max == INT64_MAX) {
    snprintf(err, errlen, "expected a %s >= %s", what, lo);
    return;
  }
  fmt((uint64_t)(o->max < 0 ? 0 : o->max), hi, sizeof hi);
  snprintf(err, errlen, "expected a %s %s..%s", what, lo, hi);
}

static void enum_expected(const option *o, char *err, size_t errlen) {
  size_t i, n;
  int w;

  n = 0;
  w = snprintf(err, errlen, "expected one of: ");
  n = w < 0 ? errlen : (size_t)w;
  for (i = 0; o->choices[i] != NULL && n < errlen; i++) {
    w = snprintf(err + n, errlen - n, "%s%s", i > 0 ? ", " : "", o->choices[i]);
    n += w < 0 ? errlen : (size_t)w;
  }
}

int options_parse_value(const option *o, const char *text, void *conf,
                        char *err, size_t errlen) {
  static const char *const truths[] = { "true", "yes", "on", "1", NULL };
  static const char *const lies[] = { "false", "no", "off", "0", NULL };
  char *field, *copy;
  uint64_t u;
  int64_t i64;
  size_t i;
  int r;

  if (o == NULL || text == NULL || conf == NULL || err == NULL || errlen == 0)
    return UV_EINVAL;
  err[0] = '\0';
  field = (char *)conf + o->offset;

  switch (o->kind) {
  case OPT_STRING:
    copy = strdup(text);
    if (copy == NULL) {
      snprintf(err, errlen, "out of memory");
      return UV_ENOMEM;
    }
    free(*(char **)(void *)field);
    *(char **)(void *)field = copy;
    return 0;

  case OPT_INT:
    r = parse_int(o, text, &i64, err, errlen);
    if (r == 0)
      memcpy(field, &i64, sizeof i64);
    return r;

  case OPT_BOOL:
    for (i = 0; truths[i] != NULL; i++) {
      if (strcasecmp(text, truths[i]) == 0) {
        *(bool *)(void *)field = true;
        return 0;
      }
      if (strcasecmp(text, lies[i]) == 0) {
        *(bool *)(void *)field = false;
        return 0;
      }
    }
    snprintf(err, errlen, "expected true or false");
    return UV_EINVAL;

  case OPT_DURATION:
    r = parse_duration(text, &u);
    if (r == NUM_SYNTAX) {
      snprintf(err, errlen, "%s", duration_expected);
      return UV_EINVAL;
    }
    if (r == NUM_FRACTION) {
      snprintf(err, errlen,
               "expected a whole number of milliseconds, such as 1.5s or "
               "1500ms");
      return UV_EINVAL;
    }
    if (r == NUM_RANGE || !in_bounds(o, u)) {
      if (bounded(o))
        range_expected(o, "duration", options_format_duration, err, errlen);
      else
        snprintf(err, errlen, "%s", duration_expected);
      return UV_EINVAL;
    }
    memcpy(field, &u, sizeof u);
    return 0;

  case OPT_SIZE:
    r = parse_size(text, &u);
    if (r == NUM_SYNTAX) {
      snprintf(err, errlen, "%s", size_expected);
      return UV_EINVAL;
    }
    if (r == NUM_FRACTION) {
      snprintf(err, errlen,
               "expected a whole number of bytes, such as 1.5KiB or 1536");
      return UV_EINVAL;
    }
    if (r == NUM_RANGE || !in_bounds(o, u)) {
      if (bounded(o))
        range_expected(o, "size", options_format_size, err, errlen);
      else
        snprintf(err, errlen, "%s", size_expected);
      return UV_EINVAL;
    }
    memcpy(field, &u, sizeof u);
    return 0;

  case OPT_MODE: {
    /* Permission bits are written in octal, as chmod takes them. */
    const char *p = text;
    int64_t mode = 0;

    for (; *p >= '0' && *p <= '7' && mode <= 0777; p++)
      mode = mode * 8 + (*p - '0');
    if (*text == '\0' || *p != '\0' || mode > 0777) {
      snprintf(err, errlen,
               "expected permission bits in octal, such as 0600 or 0660");
      return UV_EINVAL;
    }
    memcpy(field, &mode, sizeof mode);
    return 0;
  }

  case OPT_ENUM:
    assert(o->choices != NULL);
    for (i = 0; o->choices[i] != NULL; i++) {
      if (strcmp(text, o->choices[i]) == 0) {
        *(int *)(void *)field = (int)i;
        return 0;
      }
    }
    enum_expected(o, err, errlen);
    return UV_EINVAL;
  }
  assert(0 && "unknown option kind");
  return UV_EINVAL;
}

void options_format_value(const option *o, const void *conf, char *out,
                          size_t outlen) {
  const char *field = (const char *)conf + o->offset;
  const char *s;
  uint64_t u;
  int64_t i64;
  int e;

  if (outlen == 0)
    return;
  out[0] = '\0';
  switch (o->kind) {
  case OPT_STRING:
    s = *(char *const *)(const void *)field;
    snprintf(out, outlen, "%s", s != NULL ? s : "");
    break;
  case OPT_INT:
    memcpy(&i64, field, sizeof i64);
    snprintf(out, outlen, "%" PRId64, i64);
    break;
  case OPT_MODE:
    memcpy(&i64, field, sizeof i64);
    snprintf(out, outlen, "0%03" PRIo64, (uint64_t)i64);
    break;
  case OPT_BOOL:
    snprintf(out, outlen, "%s",
             *(const bool *)(const void *)field ? "true" : "false");
    break;
  case OPT_DURATION:
    memcpy(&u, field, sizeof u);
    options_format_duration(u, out, outlen);
    break;
  case OPT_SIZE:
    memcpy(&u, field, sizeof u);
    options_format_size(u, out, outlen);
    break;
  case OPT_ENUM:
    e = *(const int *)(const void *)field;
    assert(o->choices != NULL && e >= 0);
    snprintf(out, outlen, "%s", o->choices[e]);
    break;
  }
}

/* conf is treated as uninitialized: string fields are overwritten, not
 * freed, so this is the first call on a fresh struct (pair it with
 * options_free). */
int options_set_defaults(const option *table, void *conf) {
  char err[128];
  const option *o;
  int r;

  if (table == NULL)
    return UV_EINVAL;
  for (o = table; o->name != NULL; o++) {
    char *field = (char *)conf + o->offset;
    if (o->kind == OPT_STRING)
      *(char **)(void *)field = NULL;
    if (o->def == NULL) {
      switch (o->kind) {
      case OPT_STRING:
        break;
      case OPT_INT:
      case OPT_MODE:
        memset(field, 0, sizeof(int64_t));
        break;
      case OPT_BOOL:
        *(bool *)(void *)field = false;
        break;
      case OPT_DURATION:
      case OPT_SIZE:
        memset(field, 0, sizeof(uint64_t));
        break;
      case OPT_ENUM:
        *(int *)(void *)field = 0;
        break;
      }
      continue;
    }
    r = options_parse_value(o, o->def, conf, err, sizeof err);
    if (r == UV_ENOMEM)
      return r;
    /* A table's default must satisfy its own table. */
    assert(r == 0 && "option default does not parse");
  }
  return 0;
}

void options_free(const option *table, void *conf) {
  const option *o;

  if (table == NULL || conf == NULL)
    return;
  for (o = table; o->name != NULL; o++) {
    if (o->kind == OPT_STRING) {
      char **field = (char **)(void *)((char *)conf + o->offset);
      free(*field);
      *field = NULL;
    }
  }
}

const option *options_find(const option *table, const char *name) {
  const option *o;

  if (table == NULL || name == NULL)
    return NULL;
  for (o = table; o->name != NULL; o++)
    if (strcmp(o->name, name) == 0)
      return o;
  return NULL;
}

size_t options_index(const option *table, const option *o) {
  assert(table != NULL && o >= table);
  return (size_t)(o - table);
}
