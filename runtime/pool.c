/*
 * runtime/pool.c: fixed-size object pools, so submitting a task allocates nothing from the heap.
 *
 * Design notes
 *   - Objects live in slabs of AB__POOL_SLAB entries that are only freed with the pool, so a
 *     free list node may be read after another thread popped it: the read is harmless.
 *   - The free list is a Treiber stack of entry indexes. The head packs a 32-bit tag with the
 *     index, and every successful CAS bumps the tag, so a pop that read a stale `next` fails
 *     instead of corrupting the list (ABA).
 *   - Push publishes with release and pop takes with acquire: whatever the last owner wrote to
 *     an object happens-before the next owner's use. C11 atomics rather than ck_stack keep that
 *     edge visible to ThreadSanitizer.
 *   - Growing takes grow_lock; the new slab pointer is written before its entries are pushed, so
 *     any thread that pops an entry (acquire) sees the slab table entry it needs.
 */
#include <string.h>

#include "runtime/internal.h"

typedef struct {
  uint32_t index;
  _Atomic uint32_t next;          /* index + 1 of the next free entry; 0: end */
} ab__pool_hdr;

#define HDR_SIZE 16 /* keeps objects 16-byte aligned */

static ab__pool_hdr *entry(ab__pool *p, uint32_t index) {
  return (ab__pool_hdr *)(p->slabs[index / AB__POOL_SLAB] + (size_t)(index % AB__POOL_SLAB) * p->stride);
}

int ab__pool_init(ab__pool *p, size_t obj_size, const ab_allocator *a) {
  memset(p, 0, sizeof *p);
  p->stride = (HDR_SIZE + obj_size + 63) & ~(size_t)63;
  p->alloc = a;
  return pthread_mutex_init(&p->grow_lock, NULL) == 0 ? 0 : AB_ENOMEM;
}

void ab__pool_fini(ab__pool *p) {
  uint32_t n = atomic_load_explicit(&p->nslabs, memory_order_relaxed);
  for (uint32_t i = 0; i < n; i++) ab__free(p->alloc, p->slabs[i]);
  pthread_mutex_destroy(&p->grow_lock);
}

/* Pushes the chain first..last (linked through next) in one CAS. */
static void push_chain(ab__pool *p, ab__pool_hdr *first, ab__pool_hdr *last) {
  uint64_t h = atomic_load_explicit(&p->head, memory_order_relaxed);
  for (;;) {
    atomic_store_explicit(&last->next, (uint32_t)h, memory_order_relaxed); /* published by the CAS */
    uint64_t nh = ((h >> 32) + 1) << 32 | (uint64_t)(first->index + 1);
    /* release: the object's contents and links before it becomes reachable */
    if (atomic_compare_exchange_weak_explicit(&p->head, &h, nh, memory_order_release,
                                              memory_order_relaxed))
      return;
  }
}

static int grow(ab__pool *p) {
  int rc = 0;
  ab__lock(&p->grow_lock, AB__RANK_GROW);
  if ((uint32_t)atomic_load_explicit(&p->head, memory_order_acquire) != 0) goto out; /* raced */
  uint32_t n = atomic_load_explicit(&p->nslabs, memory_order_relaxed);
  char *slab = n < AB__POOL_MAX_SLABS ? ab__malloc(p->alloc, p->stride * AB__POOL_SLAB) : NULL;
  if (slab == NULL) {
    rc = AB_ENOMEM;
    goto out;
  }
  p->slabs[n] = slab;
  atomic_store_explicit(&p->nslabs, n + 1, memory_order_release);
  for (uint32_t i = 0; i < AB__POOL_SLAB; i++) {
    ab__pool_hdr *e = (ab__pool_hdr *)(slab + (size_t)i * p->stride);
    e->index = n * AB__POOL_SLAB + i;
    atomic_init(&e->next, i + 1 < AB__POOL_SLAB ? e->index + 2 : 0);
  }
  push_chain(p, (ab__pool_hdr *)slab, (ab__pool_hdr *)(slab + (size_t)(AB__POOL_SLAB - 1) * p->stride));
out:
  ab__unlock(&p->grow_lock, AB__RANK_GROW);
  return rc;
}

void *ab__pool_get(ab__pool *p) {
  uint64_t h = atomic_load_explicit(&p->head, memory_order_acquire);
  for (;;) {
    uint32_t idx1 = (uint32_t)h;
    if (idx1 == 0) {
      if (grow(p) != 0) return NULL;
      h = atomic_load_explicit(&p->head, memory_order_acquire);
      continue;
    }
    ab__pool_hdr *e = entry(p, idx1 - 1);
    uint32_t next = atomic_load_explicit(&e->next, memory_order_relaxed); /* validated by the CAS */
    uint64_t nh = ((h >> 32) + 1) << 32 | next;
    /* acquire: see what the object's last owner wrote before pushing it */
    if (atomic_compare_exchange_weak_explicit(&p->head, &h, nh, memory_order_acquire,
                                              memory_order_acquire))
      return (char *)e + HDR_SIZE;
  }
}

void ab__pool_put(ab__pool *p, void *obj) {
  ab__pool_hdr *e = (ab__pool_hdr *)((char *)obj - HDR_SIZE);
  push_chain(p, e, e);
}
