/* The hand-over of one page of items to the consumer's window, for every
 * source that polls in pages (http-poll, pocketbase): items go to the
 * window while it has room; when the room runs out the page stops at the
 * next item and goes on from there at on_room, so nothing is dropped and
 * nothing is handed over twice. The source holds the page and says what
 * handing over one item means; the pager keeps the place.
 *
 *   pager_init(&s->pager, c, &cbs, s);          (at start)
 *   pager_start(&s->pager, n);                  (a page of n items came)
 *   pager_on_room(&s->pager);                   (from the source's on_room)
 *   pager_active(&s->pager)                     (a page still waits: do not
 *                                                poll for the next)
 *
 * Room is checked before each item, the first included: a window that is
 * full, paused or stopped (consumer_room() == 0) takes nothing.
 */
#ifndef TETHER_DAEMON_SOURCES_PAGER_H
#define TETHER_DAEMON_SOURCES_PAGER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct consumer consumer;
typedef struct pager pager;

/* What pager_callbacks.item returns, beside a negative code. */
enum {
  PAGER_NEXT = 0, /* item i is done (handed over or skipped): go on */
  PAGER_END = 1,  /* the page ends before item i, which is not taken (it
                     and those after it wait for another poll) */
};

typedef struct pager_callbacks {
  /* Hands item i over (consumer_emit, once at most) or skips it; called
   * only while the window has room. Returns PAGER_NEXT, PAGER_END, or a
   * negative code when the source has failed: the page is then dropped and
   * done is not called. */
  int (*item)(pager *p, size_t i, void *data);
  /* The page is over: every item is done, or the page ended at item end
   * (end == n when it ran through). Once per page, after the pager went
   * idle, so it may start the next request or even the next page. */
  void (*done)(pager *p, size_t end, void *data);
} pager_callbacks;

/* Embeddable; every field is private. */
struct pager {
  consumer *_c;
  pager_callbacks _cb;
  void *_data;
  size_t _next; /* the next item to hand over */
  size_t _n;
  bool _active;  /* a page is being handed over */
  bool _running; /* inside the loop that hands items over */
};

/* Sets up p for the consumer c (borrowed for p's life); cb is copied,
 * data goes to every callback. */
void pager_init(pager *p, consumer *c, const pager_callbacks *cb, void *data);

/* Hands over a page of n items, from item 0: as many as the room takes
 * now, the rest from pager_on_room. No page may be active. */
void pager_start(pager *p, size_t n);

/* The window has room again: the page goes on where it stopped. Nothing
 * happens when no page waits, or inside the pager's own callbacks. */
void pager_on_room(pager *p);

/* True from pager_start until the page is over or dropped. */
bool pager_active(const pager *p);

#endif
