/* An LD_PRELOAD shim for the crash test: after every successful fdatasync
 * or fsync of the file named by $SYNCSPY_PATH, it appends the file's size at
 * that moment to $SYNCSPY_LOG. The test then knows which prefix of the sink
 * file was durable before each cursor commit, and can check that a committed
 * cursor never points past it. */
#include <dlfcn.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef int (*sync_fn)(int);

static void record(int fd) {
  const char *want = getenv("SYNCSPY_PATH"), *log = getenv("SYNCSPY_LOG");
  char link[64], path[PATH_MAX], line[32];
  struct stat st;
  ssize_t n;
  int out;

  if (want == NULL || log == NULL)
    return;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  n = readlink(link, path, sizeof path - 1);
  if (n < 0)
    return;
  path[n] = '\0';
  if (strcmp(path, want) != 0 || fstat(fd, &st) != 0)
    return;
  n = snprintf(line, sizeof line, "%" PRIdMAX "\n", (intmax_t)st.st_size);
  out = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  if (out < 0)
    return;
  /* One write, so a kill -9 never leaves half a number. */
  if (write(out, line, (size_t)n) != n)
    abort();
  close(out);
}

static int call(const char *name, int fd) {
  sync_fn real = (sync_fn)(uintptr_t)dlsym(RTLD_NEXT, name);
  int rc = real(fd);

  if (rc == 0)
    record(fd);
  return rc;
}

int fdatasync(int fd) {
  return call("fdatasync", fd);
}

int fsync(int fd) {
  return call("fsync", fd);
}
