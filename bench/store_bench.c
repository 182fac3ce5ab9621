/* The cost of one group commit of the store, by what it carries: cursor
 * advances alone, or advances with journal puts (the typed operations a
 * source stages beside its cursor). Each case runs its commits one after
 * the other on a fresh state file, each timed from store_commit_start to
 * its callback, and prints the median and the 90th percentile.
 *
 *   build/bench/store_bench [-d DIR] [-n COMMITS] [CASE...]
 *
 * DIR (default: the current directory) must be on the disk to measure:
 * a commit with operations waits for fsync, and on tmpfs that is free.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "store/store.h"

#define VALUE_LEN 64 /* bytes of each journal value, a lease and an id */

typedef struct bench_case {
  const char *name;
  const char *what;
  size_t advances; /* cursors moved per commit */
  size_t puts;     /* journal puts per commit (new keys each time) */
  size_t deletes;  /* journal deletes per commit (the previous puts) */
} bench_case;

static const bench_case cases[] = {
  { "advance_1", "1 cursor advance", 1, 0, 0 },
  { "advance_100", "100 cursor advances", 100, 0, 0 },
  { "journal_1", "1 advance + 1 journal put", 1, 1, 0 },
  { "journal_100", "1 advance + 100 journal puts", 1, 100, 0 },
  { "journal_1000", "1 advance + 1000 journal puts", 1, 1000, 0 },
  { "journal_1000_steady", "1 advance + 1000 puts + 1000 deletes", 1, 1000,
    1000 },
};

typedef struct run_state {
  int status;
  char msg[256];
  uint64_t done_at;
} run_state;

static void on_done(void *data, int status, const char *msg,
                    const int *item_status, const char *const *item_msg,
                    size_t n) {
  run_state *r = data;
  size_t i;

  r->done_at = uv_hrtime();
  r->status = status;
  snprintf(r->msg, sizeof r->msg, "%s", msg);
  for (i = 0; i < n && r->status == 0; i++)
    if (item_status[i] != 0) {
      r->status = item_status[i];
      snprintf(r->msg, sizeof r->msg, "%s", item_msg[i]);
    }
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

  return x < y ? -1 : x > y;
}

/* Runs one case for commits commits in a new state file under dir; fills
 * the sorted commit times. Returns 0 or -1 with a message on stderr. */
static int run_case(const bench_case *c, const char *dir, size_t commits,
                    uint64_t *times) {
  char path[4096], lock[4096 + 8], err[512], value[VALUE_LEN];
  char(*keys)[32] = NULL, (*names)[32] = NULL;
  store_advance *adv = NULL;
  store_op *ops = NULL;
  store *s = NULL;
  uv_loop_t loop;
  run_state r;
  size_t i, k, n_ops = c->puts + c->deletes;
  uint64_t start;
  int rc = -1;

  snprintf(path, sizeof path, "%s/store-bench-%s-%ld.db", dir, c->name,
           (long)getpid());
  memset(value, 'v', sizeof value);
  adv = calloc(c->advances, sizeof *adv);
  names = calloc(c->advances, sizeof *names);
  ops = calloc(n_ops > 0 ? n_ops : 1, sizeof *ops);
  keys = calloc(2 * (c->puts > 0 ? c->puts : 1), sizeof *keys);
  if (adv == NULL || names == NULL || ops == NULL || keys == NULL ||
      uv_loop_init(&loop) != 0) {
    fprintf(stderr, "store_bench: out of memory\n");
    goto out;
  }
  if (store_open(path, &s, err, sizeof err) != 0) {
    fprintf(stderr, "store_bench: %s\n", err);
    goto out_loop;
  }
  for (i = 0; i < c->advances; i++) {
    snprintf(names[i], sizeof names[i], "consumer-%zu", i);
    adv[i].key.consumer_id = names[i];
    adv[i].key.stream_name = "bench";
    adv[i].position = "position-token";
  }
  /* One commit before the timed ones, as a running tether has had. */
  for (i = 0; i <= commits; i++) {
    for (k = 0; k < c->advances; k++)
      adv[k].last_sequence = (int64_t)i + 1;
    /* Keys of this round in one half of keys, the previous round's in the
     * other, so the deletes name what the last commit put. */
    for (k = 0; k < c->puts; k++) {
      char *key = keys[(i % 2) * c->puts + k];

      snprintf(key, sizeof keys[0], "m-%08zu-%04zu", i, k);
      ops[k] = (store_op){ .kind = STORE_OP_JOURNAL_PUT,
                           .key = { "consumer-0", NULL, NULL },
                           .name = key,
                           .value = value,
                           .len = sizeof value };
    }
    for (k = 0; k < c->deletes; k++)
      ops[c->puts + k] =
          (store_op){ .kind = STORE_OP_JOURNAL_DELETE,
                      .key = { "consumer-0", NULL, NULL },
                      .name =
                          i > 0 ? keys[((i + 1) % 2) * c->puts + k] : "none" };
    memset(&r, 0, sizeof r);
    start = uv_hrtime();
    if (store_commit_start(s, &loop, adv, c->advances, ops, n_ops, on_done,
                           &r) != 0 ||
        uv_run(&loop, UV_RUN_DEFAULT) != 0) {
      fprintf(stderr, "store_bench: %s: cannot run a commit\n", c->name);
      goto out_store;
    }
    if (r.status != 0) {
      fprintf(stderr, "store_bench: %s: commit failed: %s\n", c->name, r.msg);
      goto out_store;
    }
    if (i > 0)
      times[i - 1] = r.done_at - start;
  }
  qsort(times, commits, sizeof *times, cmp_u64);
  rc = 0;
out_store:
  store_close(s);
  unlink(path);
  snprintf(lock, sizeof lock, "%s.lock", path);
  unlink(lock);
out_loop:
  uv_loop_close(&loop);
out:
  free(adv);
  free(names);
  free(ops);
  free(keys);
  return rc;
}

int main(int argc, char **argv) {
  const char *dir = ".";
  size_t commits = 200, i, n_ops;
  uint64_t *times, median, p90;
  int opt, failed = 0, ran = 0, j;

  while ((opt = getopt(argc, argv, "d:n:")) != -1) {
    if (opt == 'd') {
      dir = optarg;
    } else if (opt == 'n' && atoi(optarg) > 0) {
      commits = (size_t)atoi(optarg);
    } else {
      fprintf(stderr, "usage: store_bench [-d DIR] [-n COMMITS] [CASE...]\n");
      return 2;
    }
  }
  times = calloc(commits, sizeof *times);
  if (times == NULL)
    return 1;
  printf("%-20s %-38s %7s %10s %10s %10s\n", "case", "commit", "commits",
         "p50 ms", "p90 ms", "p50 us/op");
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const bench_case *c = &cases[i];
    bool wanted = optind == argc;

    for (j = optind; j < argc; j++)
      wanted = wanted || strcmp(argv[j], c->name) == 0;
    if (!wanted)
      continue;
    ran++;
    if (run_case(c, dir, commits, times) != 0) {
      failed = 1;
      continue;
    }
    median = times[commits / 2];
    p90 = times[commits * 9 / 10];
    n_ops = c->advances + c->puts + c->deletes;
    printf("%-20s %-38s %7zu %10.3f %10.3f %10.2f\n", c->name, c->what, commits,
           (double)median / 1e6, (double)p90 / 1e6,
           (double)median / 1e3 / (double)n_ops);
    fflush(stdout);
  }
  free(times);
  if (ran == 0) {
    fprintf(stderr, "store_bench: no such case\n");
    return 2;
  }
  return failed;
}
