/* The handler of bench/bench.py's exec_sink case, and its baseline.
 *
 *   acker           reads NDJSON envelopes on stdin and answers each with
 *                   its bare seq ("N\n") on stdout: the short "ok" of the
 *                   exec sink's protocol
 *   acker --time    the same, and prints the lines and the seconds from
 *                   the first byte to EOF on stderr (the pipe baseline;
 *                   tether logs a handler's stderr, so not there)
 *
 * It reads in large blocks and answers a block's lines with one write
 * once the block is used up, as a batching handler would; a line cut by
 * the block's end waits for the next read. Exits 0 at EOF.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE      (1024 * 1024)
#define LINE_MAX_BYTES (64 * 1024) /* longer lines are an error */

static double now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void write_all(const char *p, size_t n) {
  ssize_t w;

  while (n > 0) {
    if ((w = write(STDOUT_FILENO, p, n)) < 0) {
      if (errno == EINTR)
        continue;
      perror("acker: write");
      exit(1);
    }
    p += w;
    n -= (size_t)w;
  }
}

int main(int argc, char **argv) {
  static const char key[] = "\"seq\":";
  /* A block, after the partial line carried from the last one. */
  static char in[LINE_MAX_BYTES + READ_SIZE];
  /* An answer ("N\n") is shorter than the line it answers, so a block's
   * answers always fit in a buffer of the block's size. */
  static char out[LINE_MAX_BYTES + READ_SIZE];
  int timed = argc == 2 && strcmp(argv[1], "--time") == 0;
  size_t carry = 0, o;
  unsigned long long lines = 0;
  double t0 = 0;
  ssize_t n;

  if (argc > 2 || (argc == 2 && !timed)) {
    fprintf(stderr, "usage: acker [--time] < ndjson\n");
    return 2;
  }
  for (;;) {
    char *p, *end, *nl, *at;

    n = read(STDIN_FILENO, in + carry, READ_SIZE);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      perror("acker: read");
      return 1;
    }
    if (n == 0)
      break;
    if (t0 == 0)
      t0 = now();
    p = in;
    end = in + carry + (size_t)n;
    o = 0;
    while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
      /* The envelope's seq comes first; the data may hold another. */
      at = memmem(p, (size_t)(nl - p), key, sizeof key - 1);
      if (at == NULL) {
        fprintf(stderr, "acker: a line without \"seq\": %.80s\n", p);
        return 1;
      }
      for (at += sizeof key - 1; at < nl && *at >= '0' && *at <= '9'; at++)
        out[o++] = *at;
      out[o++] = '\n';
      lines++;
      p = nl + 1;
    }
    if (o > 0)
      write_all(out, o);
    carry = (size_t)(end - p);
    if (carry > LINE_MAX_BYTES) {
      fprintf(stderr, "acker: a line is longer than %d bytes\n",
              LINE_MAX_BYTES);
      return 1;
    }
    memmove(in, p, carry);
  }
  if (timed)
    fprintf(stderr, "%llu %.6f\n", lines, now() - t0);
  return 0;
}
