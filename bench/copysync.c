/* The raw copy baseline of bench/bench.py: copies stdin into FILE in 1 MiB
 * writes with one fdatasync per second and a last one at the end, the most
 * a sink could do with the same bytes and the same durability. Prints the
 * bytes copied and the seconds it took. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  static char chunk[1 << 20];
  double t0, last;
  long long total = 0;
  ssize_t n, w, off;
  int fd;

  if (argc != 2) {
    fprintf(stderr, "usage: copysync FILE < input\n");
    return 2;
  }
  fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
  if (fd < 0) {
    fprintf(stderr, "copysync: %s: %s\n", argv[1], strerror(errno));
    return 1;
  }
  t0 = last = now();
  while ((n = read(STDIN_FILENO, chunk, sizeof chunk)) > 0) {
    for (off = 0; off < n; off += w) {
      w = write(fd, chunk + off, (size_t)(n - off));
      if (w < 0) {
        perror("copysync: write");
        return 1;
      }
    }
    total += n;
    if (now() - last >= 1.0) {
      fdatasync(fd);
      last = now();
    }
  }
  if (n < 0 || fdatasync(fd) != 0) {
    perror("copysync");
    return 1;
  }
  printf("%lld %.6f\n", total, now() - t0);
  return 0;
}
