/* tether's command line: run, check, the API clients, version, help. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "daemon/cli.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log.h"

static const char usage_main[] =
    "usage: tether <command> [options]\n"
    "\n"
    "tether consumes upstream services for the application beside it and\n"
    "hands it events at least once, resuming from durable cursors.\n"
    "\n"
    "commands:\n"
    "  run [-c FILE]     run the consumers of FILE (without -c: a built-in\n"
    "                    demo, a generate source writing to stdout)\n"
    "  check [-c FILE]   validate FILE and print the effective configuration\n"
    "  status            ask a running tether whether it is ready\n"
    "  consumers         list the consumers of a running tether, pause or\n"
    "                    resume one\n"
    "  cursors           show or reset the durable cursors\n"
    "  tail CONSUMER     follow the events a consumer delivers\n"
    "  version           print the version\n"
    "  help [COMMAND]    show help for a command; `help config` prints the\n"
    "                    reference of every configuration option\n"
    "\n"
    "exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error\n";

static const char usage_run[] =
    "usage: tether run [-c FILE]\n"
    "\n"
    "Runs every [consumer] of FILE until SIGTERM or SIGINT, then delivers\n"
    "what is in flight (up to shutdown_timeout), commits the cursors and\n"
    "exits 0. A second signal stops at once after committing what is\n"
    "delivered. SIGHUP reopens the log file and file sinks.\n"
    "\n"
    "Without -c, tether runs its embedded default: a generate source writing\n"
    "to stdout, with state in ./.tether/.\n"
    "\n"
    "  -c, --config FILE   the configuration file\n";

static const char usage_check[] =
    "usage: tether check [-c FILE]\n"
    "\n"
    "Validates FILE and prints the effective configuration with every\n"
    "default filled in and secrets masked. Exits 0 when it is valid and 2\n"
    "with every error, one per line, when it is not. Without -c, checks the\n"
    "embedded default.\n"
    "\n"
    "  -c, --config FILE   the configuration file\n";

static const char usage_version[] = "usage: tether version\n"
                                    "\n"
                                    "Prints the version.\n";

static const char usage_help[] =
    "usage: tether help [COMMAND | config]\n"
    "\n"
    "Shows help for a command, or with `config` the reference of every\n"
    "configuration option (the same text as docs/config.md).\n";

typedef struct command {
  const char *name;
  const char *usage;
  int (*run)(int argc, char **argv);
} command;

static int cmd_run(int argc, char **argv);
static int cmd_check(int argc, char **argv);
static int cmd_version(int argc, char **argv);
static int cmd_help(int argc, char **argv);

static const command commands[] = {
  { "run", usage_run, cmd_run },
  { "check", usage_check, cmd_check },
  { "status", cli_usage_status, cli_status },
  { "consumers", cli_usage_consumers, cli_consumers },
  { "cursors", cli_usage_cursors, cli_cursors },
  { "tail", cli_usage_tail, cli_tail },
  { "version", usage_version, cmd_version },
  { "help", usage_help, cmd_help },
  { NULL, NULL, NULL },
};

static const command *find_command(const char *name) {
  size_t i;

  for (i = 0; commands[i].name != NULL; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

static int usage_error(const char *usage, const char *fmt, const char *arg) {
  fprintf(stderr, "tether: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n\n%s", usage);
  return TETHER_EXIT_USAGE;
}

/* Reads -c FILE / --config FILE / --config=FILE. Returns 0, 1 when help was
 * asked for, or an exit code >= 2. */
static int parse_config_flag(int argc, char **argv, const char *usage,
                             const char **path) {
  int i;

  *path = NULL;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];

    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage, stdout);
      return 1;
    }
    if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
      if (i + 1 >= argc)
        return usage_error(usage, "%s needs a file name", a);
      *path = argv[++i];
    } else if (strncmp(a, "--config=", 9) == 0) {
      *path = a + 9;
    } else {
      return usage_error(usage, "unexpected argument: %s", a);
    }
  }
  return 0;
}

/* Loads path, or the embedded default when path is NULL. On failure prints
 * every error and returns TETHER_EXIT_USAGE. */
static int load(const char *path, config *cfg) {
  char *errors = NULL;
  int rc;

  if (path != NULL)
    rc = config_load(path, cfg, &errors);
  else
    rc = config_parse("(embedded default)", config_embedded_default,
                      strlen(config_embedded_default), cfg, &errors);
  if (rc == 0)
    return 0;
  if (errors != NULL) {
    fputs(errors, stderr);
    if (errors[0] != '\0' && errors[strlen(errors) - 1] != '\n')
      fputc('\n', stderr);
  } else {
    fprintf(stderr, "tether: %s\n", uv_strerror(rc));
  }
  free(errors);
  return TETHER_EXIT_USAGE;
}

static int cmd_run(int argc, char **argv) {
  const char *path;
  config cfg;
  int rc;

  if ((rc = parse_config_flag(argc, argv, usage_run, &path)) != 0)
    return rc == 1 ? TETHER_EXIT_OK : rc;
  if ((rc = load(path, &cfg)) != 0)
    return rc;
  log_configure((log_level)cfg.daemon.log_level, cfg.daemon.log_format);
  rc = log_open(cfg.daemon.log_file);
  if (rc != 0) {
    fprintf(stderr, "tether: cannot open log file %s: %s\n",
            cfg.daemon.log_file, strerror(-rc));
    config_free(&cfg);
    return TETHER_EXIT_RUNTIME;
  }
  rc = daemon_run(&cfg);
  log_close();
  config_free(&cfg);
  return rc;
}

static int cmd_check(int argc, char **argv) {
  const char *path;
  config cfg;
  char *dump;
  int rc;

  if ((rc = parse_config_flag(argc, argv, usage_check, &path)) != 0)
    return rc == 1 ? TETHER_EXIT_OK : rc;
  if ((rc = load(path, &cfg)) != 0)
    return rc;
  dump = config_dump(&cfg);
  config_free(&cfg);
  if (dump == NULL) {
    fprintf(stderr, "tether: out of memory\n");
    return TETHER_EXIT_RUNTIME;
  }
  fputs(dump, stdout);
  free(dump);
  return TETHER_EXIT_OK;
}

static int cmd_version(int argc, char **argv) {
  if (argc > 1) {
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
      fputs(usage_version, stdout);
      return TETHER_EXIT_OK;
    }
    return usage_error(usage_version, "unexpected argument: %s", argv[1]);
  }
  printf("tether %s (libuv %s)\n", TETHER_VERSION, uv_version_string());
  return TETHER_EXIT_OK;
}

static int cmd_help(int argc, char **argv) {
  const command *c;
  char *docs;

  if (argc < 2 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "--help") == 0) {
    fputs(argc < 2 ? usage_main : usage_help, stdout);
    return TETHER_EXIT_OK;
  }
  if (strcmp(argv[1], "config") == 0) {
    docs = config_docs_markdown();
    if (docs == NULL)
      return TETHER_EXIT_RUNTIME;
    fputs(docs, stdout);
    free(docs);
    return TETHER_EXIT_OK;
  }
  if ((c = find_command(argv[1])) == NULL)
    return usage_error(usage_main, "no command named %s", argv[1]);
  fputs(c->usage, stdout);
  return TETHER_EXIT_OK;
}

int main(int argc, char **argv) {
  const command *c;

  if (argc < 2) {
    fputs(usage_main, stderr);
    return TETHER_EXIT_USAGE;
  }
  if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    fputs(usage_main, stdout);
    return TETHER_EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)
    return cmd_version(1, argv + 1);
  if ((c = find_command(argv[1])) == NULL)
    return usage_error(usage_main, "no command named %s", argv[1]);
  return c->run(argc - 1, argv + 1);
}
