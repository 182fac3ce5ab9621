/* Replays a libFuzzer corpus through a target without libFuzzer, so the
 * corpus runs in gcc and sanitizer builds too. Each argument is a file or a
 * directory of files; each file is fed to LLVMFuzzerTestOneInput once. */
#include <dirent.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  uint8_t *data;
  long size;

  if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0) {
    fprintf(stderr, "cannot read %s\n", path);
    return 1;
  }
  rewind(f);
  /* An exact-size copy, so ASan sees reads past the input's end. */
  data = malloc(size > 0 ? (size_t)size : 1);
  if (data == NULL || fread(data, 1, (size_t)size, f) != (size_t)size) {
    fprintf(stderr, "cannot read %s\n", path);
    return 1;
  }
  fclose(f);
  LLVMFuzzerTestOneInput(data, (size_t)size);
  free(data);
  return 0;
}

int main(int argc, char **argv) {
  int i, failed = 0, n = 0;

  for (i = 1; i < argc; i++) {
    struct stat st;
    DIR *d;
    struct dirent *e;
    char path[PATH_MAX];

    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "no such corpus: %s\n", argv[i]);
      return 1;
    }
    if (!S_ISDIR(st.st_mode)) {
      failed |= replay_file(argv[i]);
      n++;
      continue;
    }
    if ((d = opendir(argv[i])) == NULL)
      return 1;
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.')
        continue;
      snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
      failed |= replay_file(path);
      n++;
    }
    closedir(d);
  }
  printf("replayed %d inputs\n", n);
  if (n == 0) {
    fprintf(stderr, "empty corpus\n");
    return 1;
  }
  return failed;
}
