/* A dead-letter file: where a sink, or the consumer for it, puts the events
 * it gave up on (on_fail = dead_letter:PATH), so the application can look
 * at them later.
 *
 * One NDJSON record per event, in the order appended:
 *
 *   {"consumer":"orders","seq":42,"attempts":5,"error":"why",
 *    "event":<the envelope line, as it was>}
 *
 * Records are appended and fdatasync'd on the thread pool, one operation at
 * a time; the callback names them only once they are durable, so a caller
 * that gives up on an event in that callback (and the cursor that then
 * passes it) is never ahead of the file. A failed operation is taken back
 * (a partial record is cut off) and tried again, first, with backoff;
 * records appended meanwhile wait behind it. A record torn by a crash gets
 * a line of its own before the next one is written, so it cannot swallow
 * it. The file is created when missing (its directory then fsync'd with
 * the first records), and reopened at its path on dead_letter_reopen
 * (SIGHUP, after logrotate moved it).
 */
#ifndef TETHER_DAEMON_DEAD_LETTER_H
#define TETHER_DAEMON_DEAD_LETTER_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

typedef struct dead_letter dead_letter;

/* The records of one dead_letter_append call, seqs first..last, are
 * durable; tag is the one given to that call. Runs on the loop thread,
 * once per call, in the order of the calls; never after dead_letter_close.
 * May append more records. */
typedef void (*dead_letter_cb)(dead_letter *d, uint64_t first, uint64_t last,
                               uint64_t tag, void *data);
/* The writer is freed when this runs. */
typedef void (*dead_letter_close_cb)(void *data);

/* Opens (or creates, mode 0600) the file at path now, so that a bad path
 * is an error at start-up, in err. consumer and sink name the writer in
 * records and logs; every string is copied. A write that fails is tried
 * again after a delay between retry_min_ms and retry_max_ms (backoff).
 * Returns 0 or a negative code. */
int dead_letter_open(uv_loop_t *loop, const char *path, const char *consumer,
                     const char *sink, uint64_t retry_min_ms,
                     uint64_t retry_max_ms, dead_letter_cb cb, void *data,
                     dead_letter **out, char *err, size_t errlen);

/* Queues one record per line of lines[0..len) (whole envelope lines, each
 * ending in '\n', the last one's optional), with seqs from first_seq on,
 * attempts and error (borrowed for the call) in each. All or nothing:
 * returns 0, or UV_ENOMEM with nothing queued. */
int dead_letter_append(dead_letter *d, uint64_t first_seq, uint32_t attempts,
                       const char *error, const char *lines, size_t len,
                       uint64_t tag);

/* Reopens the file at its path before the next records (SIGHUP). */
void dead_letter_reopen(dead_letter *d);

/* Operations that failed, for the sink's write_errors. */
uint64_t dead_letter_write_errors(const dead_letter *d);

/* The path, as given at open. */
const char *dead_letter_path(const dead_letter *d);

/* Closes the writer once its running operation is done; records queued and
 * not yet durable are dropped (no callback names them), as are callbacks
 * of the running one. cb runs exactly once, after which d is freed. */
void dead_letter_close(dead_letter *d, dead_letter_close_cb cb, void *data);

#endif
