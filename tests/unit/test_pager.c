/* daemon/sources/pager against a fake consumer whose room the test sets:
 * items go out while there is room, the page stops at the next item when
 * it runs out and goes on from there at on_room, and done comes once. */
#include "daemon/sources/pager.c"

#include "tests/unit/test.h"

/* ---- fake consumer ------------------------------------------------------ */

static size_t room; /* what consumer_room says */

size_t consumer_room(const consumer *c) {
  (void)c;
  return room;
}

/* ---- a fake source: what the pager asked of it -------------------------- */

#define MAX_ITEMS 32

static struct {
  pager p;
  int calls[MAX_ITEMS]; /* item(i) calls */
  int order[MAX_ITEMS]; /* item indexes in call order */
  int n_order;
  int emitted; /* items that took room */
  int dones;
  size_t done_end;
  /* What item(i) does. */
  bool skip[MAX_ITEMS]; /* PAGER_NEXT without taking room */
  int end_at;           /* PAGER_END at this index; -1 = never */
  int fail_at;          /* a negative code at this index; -1 = never */
  bool room_in_item;    /* calls pager_on_room from inside item */
  size_t next_page;     /* done starts a page of this many; 0 = none */
} fk;

static int fake_item(pager *p, size_t i, void *data) {
  ASSERT(p == &fk.p);
  ASSERT(data == &fk);
  ASSERT(i < MAX_ITEMS);
  ASSERT(room > 0); /* never asked without room */
  fk.calls[i]++;
  fk.order[fk.n_order++] = (int)i;
  if (fk.room_in_item)
    pager_on_room(p); /* ignored: the loop is running */
  if ((int)i == fk.fail_at)
    return UV_EIO;
  if ((int)i == fk.end_at)
    return PAGER_END;
  if (!fk.skip[i]) {
    fk.emitted++;
    room--;
  }
  return PAGER_NEXT;
}

static void fake_done(pager *p, size_t end, void *data) {
  (void)data;
  ASSERT(!pager_active(p)); /* idle before done */
  fk.dones++;
  fk.done_end = end;
  if (fk.next_page > 0) {
    size_t n = fk.next_page;

    fk.next_page = 0;
    pager_start(p, n);
  }
}

static const pager_callbacks fake_cbs = { fake_item, fake_done };

static void setup(size_t start_room) {
  memset(&fk, 0, sizeof fk);
  fk.end_at = fk.fail_at = -1;
  room = start_room;
  pager_init(&fk.p, NULL, &fake_cbs, &fk);
  ASSERT(!pager_active(&fk.p));
}

/* ---- tests -------------------------------------------------------------- */

static void test_page_that_fits(void) {
  int i;

  setup(100);
  pager_start(&fk.p, 5);
  ASSERT(!pager_active(&fk.p));
  ASSERT_EQ(5, fk.emitted);
  ASSERT_EQ(1, fk.dones);
  ASSERT_EQ(5, fk.done_end);
  for (i = 0; i < 5; i++)
    ASSERT_EQ(i, fk.order[i]);
  ASSERT_EQ(95, room);
  pager_on_room(&fk.p); /* no page: nothing */
  ASSERT_EQ(5, fk.n_order);
  ASSERT_EQ(1, fk.dones);
}

static void test_empty_page_is_done_at_once(void) {
  setup(0); /* even without room */
  pager_start(&fk.p, 0);
  ASSERT_EQ(0, fk.n_order);
  ASSERT_EQ(1, fk.dones);
  ASSERT_EQ(0, fk.done_end);
  ASSERT(!pager_active(&fk.p));
}

/* The room runs out after two items: the page waits at the third, a call
 * without room does nothing, and on_room goes on from the third, each item
 * once, in order. */
static void test_resumes_at_the_next_item(void) {
  int i;

  setup(2);
  pager_start(&fk.p, 5);
  ASSERT(pager_active(&fk.p));
  ASSERT_EQ(2, fk.n_order);
  ASSERT_EQ(0, fk.dones);
  pager_on_room(&fk.p); /* still no room */
  ASSERT_EQ(2, fk.n_order);
  room = 1;
  pager_on_room(&fk.p);
  ASSERT_EQ(3, fk.n_order);
  ASSERT(pager_active(&fk.p));
  room = 10;
  pager_on_room(&fk.p);
  ASSERT(!pager_active(&fk.p));
  ASSERT_EQ(5, fk.n_order);
  for (i = 0; i < 5; i++) {
    ASSERT_EQ(i, fk.order[i]);
    ASSERT_EQ(1, fk.calls[i]);
  }
  ASSERT_EQ(1, fk.dones);
  ASSERT_EQ(5, fk.done_end);
}

/* A window with no room at the start (a paused consumer) takes nothing. */
static void test_no_room_takes_nothing(void) {
  setup(0);
  pager_start(&fk.p, 3);
  ASSERT_EQ(0, fk.n_order);
  ASSERT(pager_active(&fk.p));
  room = 3;
  pager_on_room(&fk.p);
  ASSERT_EQ(3, fk.emitted);
  ASSERT_EQ(1, fk.dones);
}

/* Room is checked before every item, one that takes none included: with
 * the room gone, a skipped item waits like any other. */
static void test_room_checked_before_skips_too(void) {
  setup(1);
  fk.skip[1] = true;
  pager_start(&fk.p, 3);
  ASSERT_EQ(1, fk.n_order);
  room = 1;
  pager_on_room(&fk.p);
  ASSERT_EQ(3, fk.n_order); /* the skip, then the last */
  ASSERT_EQ(2, fk.emitted);
  ASSERT_EQ(1, fk.dones);
  ASSERT_EQ(3, fk.done_end);
}

/* PAGER_END ends the page before that item: done says where, and the
 * items after it are never asked for. */
static void test_end_stops_the_page(void) {
  setup(100);
  fk.end_at = 2;
  pager_start(&fk.p, 6);
  ASSERT_EQ(3, fk.n_order);
  ASSERT_EQ(2, fk.emitted);
  ASSERT_EQ(1, fk.dones);
  ASSERT_EQ(2, fk.done_end);
  ASSERT(!pager_active(&fk.p));
  pager_on_room(&fk.p);
  ASSERT_EQ(3, fk.n_order);
}

/* A failed item drops the page: no done, no more items. */
static void test_failure_drops_the_page(void) {
  setup(1);
  fk.fail_at = 1;
  pager_start(&fk.p, 4);
  ASSERT(pager_active(&fk.p)); /* item 0 took the last room */
  room = 5;
  pager_on_room(&fk.p);
  ASSERT_EQ(2, fk.n_order);
  ASSERT(!pager_active(&fk.p));
  ASSERT_EQ(0, fk.dones);
  pager_on_room(&fk.p);
  ASSERT_EQ(2, fk.n_order);
}

/* on_room from inside an item (a consumer that gives room back at once)
 * does not recurse; done may start the next page right away. */
static void test_reentry(void) {
  int i;

  setup(100);
  fk.room_in_item = true;
  fk.next_page = 2;
  pager_start(&fk.p, 3);
  ASSERT_EQ(5, fk.n_order);
  for (i = 0; i < 3; i++)
    ASSERT_EQ(i, fk.order[i]);
  ASSERT_EQ(0, fk.order[3]);
  ASSERT_EQ(1, fk.order[4]);
  ASSERT_EQ(2, fk.dones);
  ASSERT_EQ(2, fk.done_end);
  ASSERT(!pager_active(&fk.p));
}

static const test_case tests[] = {
  TEST(test_page_that_fits),
  TEST(test_empty_page_is_done_at_once),
  TEST(test_resumes_at_the_next_item),
  TEST(test_no_room_takes_nothing),
  TEST(test_room_checked_before_skips_too),
  TEST(test_end_stops_the_page),
  TEST(test_failure_drops_the_page),
  TEST(test_reentry),
  { NULL, NULL },
};

TEST_MAIN(tests)
