/* A small intrusive doubly linked list with a sentinel head, and
 * container_of to get from a node back to the struct that holds it. Used
 * for the HTTP client's origins, connections and queues and the HTTP
 * server's connections. */
#ifndef TETHER_LOOP_LIST_H
#define TETHER_LOOP_LIST_H

#include <stdbool.h>
#include <stddef.h>

#define container_of(ptr, type, member)                                        \
  ((type *)((char *)(ptr)-offsetof(type, member)))

typedef struct list {
  struct list *prev, *next;
} list;

static inline void list_init(list *l) {
  l->prev = l->next = l;
}

static inline bool list_empty(const list *l) {
  return l->next == l;
}

static inline void list_push_back(list *l, list *n) {
  n->prev = l->prev;
  n->next = l;
  l->prev->next = n;
  l->prev = n;
}

static inline void list_push_front(list *l, list *n) {
  n->next = l->next;
  n->prev = l;
  l->next->prev = n;
  l->next = n;
}

/* Unlinks n and leaves it an empty list, so a second remove is harmless. */
static inline void list_remove(list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  list_init(n);
}

#endif
