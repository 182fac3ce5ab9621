#include "daemon/sources/pager.h"

#include <assert.h>
#include <string.h>

#include "daemon/consumer.h"

void pager_init(pager *p, consumer *c, const pager_callbacks *cb, void *data) {
  memset(p, 0, sizeof *p);
  p->_c = c;
  p->_cb = *cb;
  p->_data = data;
}

/* Hands items over from _next while there is room. An item that fails
 * drops the page; one that ends it, or the last one, ends it with done. */
static void run(pager *p) {
  size_t end;
  int rc;

  p->_running = true;
  while (p->_next < p->_n) {
    if (consumer_room(p->_c) == 0) {
      p->_running = false;
      return; /* pager_on_room goes on */
    }
    rc = p->_cb.item(p, p->_next, p->_data);
    if (rc < 0) {
      p->_running = false;
      p->_active = false;
      return;
    }
    if (rc == PAGER_END)
      break;
    p->_next++;
  }
  end = p->_next;
  p->_running = false;
  p->_active = false;
  p->_cb.done(p, end, p->_data);
}

void pager_start(pager *p, size_t n) {
  assert(!p->_active && "a page is still being handed over");
  p->_active = true;
  p->_next = 0;
  p->_n = n;
  run(p);
}

void pager_on_room(pager *p) {
  if (p->_active && !p->_running)
    run(p);
}

bool pager_active(const pager *p) {
  return p->_active;
}
