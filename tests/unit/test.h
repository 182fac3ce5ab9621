/* A small unit-test harness: a declared list of {name, fn}, TAP output, and
 * asserts that print both values. A failed assert abandons the test case with
 * longjmp, so helpers called from a test may assert too.
 *
 *   static void test_parse_ok(void) { ASSERT_EQ(3, parse("3")); }
 *   static const test_case tests[] = { TEST(test_parse_ok), { NULL, NULL } };
 *   TEST_MAIN(tests)
 *
 * Run one case by name: ./test_x test_parse_ok
 */
#ifndef TETHER_TEST_H
#define TETHER_TEST_H

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct test_case {
  const char *name;
  void (*fn)(void);
} test_case;

#define TEST(fn)                                                               \
  { #fn, fn }

extern jmp_buf test__jmp;
extern int test__assertions;

static inline void test__fail(const char *file, int line, const char *fmt,
                              ...) {
  va_list ap;
  fprintf(stdout, "# %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stdout, fmt, ap);
  va_end(ap);
  fputc('\n', stdout);
  fflush(stdout);
  longjmp(test__jmp, 1);
}

#define ASSERT(cond)                                                           \
  do {                                                                         \
    test__assertions++;                                                        \
    if (!(cond))                                                               \
      test__fail(__FILE__, __LINE__, "assertion failed: %s", #cond);           \
  } while (0)

#define ASSERT_EQ(expected, actual)                                            \
  do {                                                                         \
    intmax_t e_ = (intmax_t)(expected), a_ = (intmax_t)(actual);               \
    test__assertions++;                                                        \
    if (e_ != a_)                                                              \
      test__fail(__FILE__, __LINE__, "%s == %s: expected %jd, got %jd",        \
                 #expected, #actual, e_, a_);                                  \
  } while (0)

#define ASSERT_NE(unexpected, actual)                                          \
  do {                                                                         \
    intmax_t e_ = (intmax_t)(unexpected), a_ = (intmax_t)(actual);             \
    test__assertions++;                                                        \
    if (e_ == a_)                                                              \
      test__fail(__FILE__, __LINE__, "%s != %s: both are %jd", #unexpected,    \
                 #actual, a_);                                                 \
  } while (0)

#define ASSERT_UEQ(expected, actual)                                           \
  do {                                                                         \
    uintmax_t e_ = (uintmax_t)(expected), a_ = (uintmax_t)(actual);            \
    test__assertions++;                                                        \
    if (e_ != a_)                                                              \
      test__fail(__FILE__, __LINE__, "%s == %s: expected %ju, got %ju",        \
                 #expected, #actual, e_, a_);                                  \
  } while (0)

#define ASSERT_STR_EQ(expected, actual)                                        \
  do {                                                                         \
    const char *e_ = (expected), *a_ = (actual);                               \
    test__assertions++;                                                        \
    if (e_ == NULL || a_ == NULL ? e_ != a_ : strcmp(e_, a_) != 0)             \
      test__fail(__FILE__, __LINE__,                                           \
                 "%s == %s:\n#   expected \"%s\"\n#   got      \"%s\"",        \
                 #expected, #actual, e_ ? e_ : "(null)", a_ ? a_ : "(null)");  \
  } while (0)

#define ASSERT_MEM_EQ(expected, expected_len, actual, actual_len)              \
  do {                                                                         \
    const char *e_ = (const char *)(expected), *a_ = (const char *)(actual);   \
    size_t el_ = (expected_len), al_ = (actual_len);                           \
    test__assertions++;                                                        \
    if (el_ != al_ || memcmp(e_, a_, el_) != 0)                                \
      test__fail(__FILE__, __LINE__,                                           \
                 "%s == %s:\n#   expected \"%.*s\" (%zu bytes)\n#   got      " \
                 "\"%.*s\" (%zu bytes)",                                       \
                 #expected, #actual, (int)el_, e_, el_, (int)al_, a_, al_);    \
  } while (0)

/* Asserts that haystack contains needle, printing both when it does not. */
#define ASSERT_CONTAINS(haystack, needle)                                      \
  do {                                                                         \
    const char *h_ = (haystack), *n_ = (needle);                               \
    test__assertions++;                                                        \
    if (h_ == NULL || strstr(h_, n_) == NULL)                                  \
      test__fail(__FILE__, __LINE__,                                           \
                 "%s contains %s:\n#   text   \"%s\"\n#   wanted \"%s\"",      \
                 #haystack, #needle, h_ ? h_ : "(null)", n_);                  \
  } while (0)

/* Makes a fresh directory under $TMPDIR (or /tmp); the caller removes it with
 * test_rmtree. The returned string is static: copy it to keep two. */
static inline const char *test_tmpdir(void) {
  static char path[PATH_MAX];
  const char *base = getenv("TMPDIR");
  snprintf(path, sizeof path, "%s/tether-unit-XXXXXX", base ? base : "/tmp");
  if (mkdtemp(path) == NULL) {
    fprintf(stdout, "# mkdtemp(%s): %s\n", path, strerror(errno));
    longjmp(test__jmp, 1);
  }
  return path;
}

/* Removes a directory tree made by a test. */
static inline void test_rmtree(const char *path) {
  DIR *d = opendir(path);
  struct dirent *e;
  char child[PATH_MAX + 256];
  struct stat st;

  if (d == NULL) {
    unlink(path);
    return;
  }
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if ((size_t)snprintf(child, sizeof child, "%s/%s", path, e->d_name) >=
        sizeof child)
      continue;
    if (lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
      test_rmtree(child);
    else
      unlink(child);
  }
  closedir(d);
  rmdir(path);
}

/* Writes a whole file, asserting success. */
static inline void test_write_file(const char *path, const char *data,
                                   size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stdout, "# writing %s: %s\n", path, strerror(errno));
    longjmp(test__jmp, 1);
  }
}

/* Reads a whole file into a NUL-terminated malloc'd string (owned by the
 * caller); *len gets its length when len is not NULL. Returns NULL when the
 * file cannot be read. */
static inline char *test_read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t n = 0, cap = 0, got;

  if (f == NULL)
    return NULL;
  do {
    if (cap - n < 4096) {
      cap = cap ? cap * 2 : 8192;
      buf = realloc(buf, cap + 1);
      if (buf == NULL)
        abort();
    }
    got = fread(buf + n, 1, cap - n, f);
    n += got;
  } while (got > 0);
  fclose(f);
  buf[n] = '\0';
  if (len != NULL)
    *len = n;
  return buf;
}

/* Runs one case: 0 passed, 1 failed an assert, 2 asserted nothing. The
 * setjmp lives here, apart from main's locals, so none can be clobbered. */
static inline int test__run(void (*fn)(void)) {
  test__assertions = 0;
  if (setjmp(test__jmp) != 0)
    return 1;
  fn();
  return test__assertions == 0 ? 2 : 0;
}

#define TEST_MAIN(list)                                                        \
  jmp_buf test__jmp;                                                           \
  int test__assertions;                                                        \
  int main(int argc, char **argv) {                                            \
    size_t n = 0, i, run = 0;                                                  \
    int failed = 0, r;                                                         \
    while ((list)[n].name != NULL)                                             \
      n++;                                                                     \
    if (argc > 1) {                                                            \
      for (i = 0; i < n; i++)                                                  \
        if (strcmp((list)[i].name, argv[1]) == 0)                              \
          break;                                                               \
      if (i == n) {                                                            \
        fprintf(stderr, "no test named %s\n", argv[1]);                        \
        return 2;                                                              \
      }                                                                        \
      printf("1..1\n");                                                        \
    } else {                                                                   \
      printf("1..%zu\n", n);                                                   \
    }                                                                          \
    for (i = 0; i < n; i++) {                                                  \
      if (argc > 1 && strcmp((list)[i].name, argv[1]) != 0)                    \
        continue;                                                              \
      run++;                                                                   \
      fflush(stdout);                                                          \
      r = test__run((list)[i].fn);                                             \
      if (r == 2)                                                              \
        printf("# %s asserted nothing\n", (list)[i].name);                     \
      printf("%s %zu - %s\n", r == 0 ? "ok" : "not ok", run, (list)[i].name);  \
      failed += r != 0;                                                        \
      fflush(stdout);                                                          \
    }                                                                          \
    return failed ? 1 : 0;                                                     \
  }

#endif /* TETHER_TEST_H */
