/* Source `pocketbase`: a PocketBase collection read by polling with the
 * compound (created, id) cursor, a settle window against late commits, and
 * realtime only as a wake-up (protocols/pocketbase.md §2.5, §2.6, §6).
 *
 * The [upstream NAME] section (type = pocketbase) holds the origin, TLS and
 * the credentials; every consumer of one upstream shares its token and its
 * one realtime connection (daemon/sources/pb_client.h).
 */
#ifndef TETHER_DAEMON_SOURCES_POCKETBASE_H
#define TETHER_DAEMON_SOURCES_POCKETBASE_H

#include <stdbool.h>
#include <stdint.h>

#include "daemon/source.h"
#include "daemon/upstream.h"

enum { PB_AUTH_NONE, PB_AUTH_SUPERUSER, PB_AUTH_USER, PB_AUTH_TOKEN };
enum { PB_API_AUTO, PB_API_CURRENT, PB_API_LEGACY };
enum { PB_START_BEGINNING, PB_START_NOW };

/* [upstream NAME] type = pocketbase. */
typedef struct pb_upstream_conf {
  http_upstream_conf http; /* first: the options every HTTP upstream has */
  int auth;                /* PB_AUTH_* */
  char *identity;          /* email (or another identity field) */
  char *password;          /* secret */
  char *auth_collection;   /* the auth collection of auth = user */
  char *token;             /* secret: auth = token */
  int api_version;         /* PB_API_* */
  bool realtime;           /* wake the pollers through /api/realtime */
  uint64_t request_timeout;
} pb_upstream_conf;

/* [consumer NAME] reading a pocketbase upstream. */
typedef struct pb_consumer_conf {
  char *collection;
  char *filter; /* the user's filter, checked; "" = none */
  int offset;   /* PB_OFFSET_CREATED or PB_OFFSET_ID (protocol/pocketbase.h) */
  int64_t batch_size;
  uint64_t poll_interval;
  uint64_t settle;
  int start; /* PB_START_* */
  char *fields;
  char *expand;
  char *offset_store;   /* "local" or "upstream:COLLECTION" */
  char *consumer_group; /* the mirror row's group; "" = the consumer name */
  char *appname;        /* written into the mirror row when set */
} pb_consumer_conf;

extern const source_type source_pocketbase;
extern const upstream_type upstream_pocketbase;

#endif
