/*
 * runtime/memory.c: per-device memory budgets, frees, and fault injection. An allocation that
 * does not fit walks the OOM ladder (oom.c).
 *
 * Design notes
 *   - The budget is the runtime's own limit, enforced here for every backend: a CAS loop adds
 *     the request to `used` only if it stays within `budget`. It is how users share a device with
 *     other frameworks, and how the OOM ladder is tested without a GPU.
 *   - Every free bumps freed_gen and, when tasks are parked on the device, wakes a worker so
 *     they retry at once instead of waiting for their backoff timer.
 */
#include "runtime/internal.h"

static void raise_peak(ab__device *d, uint64_t used) {
  uint64_t p = atomic_load_explicit(&d->peak, memory_order_relaxed);
  /* relaxed: a statistic */
  while (used > p && !atomic_compare_exchange_weak_explicit(&d->peak, &p, used, memory_order_relaxed,
                                                            memory_order_relaxed)) {
  }
}

int ab__mem_reserve(ab__device *d, size_t bytes) {
  uint64_t u = atomic_load_explicit(&d->used, memory_order_relaxed);
  do {
    if (bytes > d->budget || u > d->budget - bytes) return AB_ENOMEM;
    /* relaxed: the budget is a counter; the memory itself is ordered by the allocator */
  } while (!atomic_compare_exchange_weak_explicit(&d->used, &u, u + bytes, memory_order_relaxed,
                                                  memory_order_relaxed));
  raise_peak(d, u + bytes);
  if (ab__tracing(d->rt)) ab__trace_mem(d, u + bytes);
  return 0;
}

void ab__mem_unreserve(ab__device *d, size_t bytes) {
  uint64_t u = atomic_fetch_sub_explicit(&d->used, bytes, memory_order_relaxed); /* a counter */
  if (ab__tracing(d->rt)) ab__trace_mem(d, u - bytes);
}

bool ab__fault_hit(ab__device *d, int op) {
  ab__faults *f = &d->faults;
  /* acquire: pairs with ab_runtime_fault's release, so nth and count are visible */
  if (!atomic_load_explicit(&f->armed, memory_order_acquire)) return false;
  uint64_t nth = atomic_load_explicit(&f->nth[op], memory_order_relaxed);
  int64_t cnt = atomic_load_explicit(&f->count[op], memory_order_relaxed);
  if (nth == 0) return false;
  uint64_t n = atomic_fetch_add_explicit(&f->seen[op], 1, memory_order_relaxed) + 1; /* a counter */
  bool hit = n >= nth && (cnt < 0 || n < nth + (uint64_t)cnt);
  if (hit) atomic_fetch_add_explicit(&d->stats.faults_injected, 1, memory_order_relaxed); /* stat */
  return hit;
}

static void freed(ab__device *d, size_t bytes) {
  ab__mem_unreserve(d, bytes);
  /* release: the freed budget before a parked task's retry reads it */
  atomic_fetch_add_explicit(&d->freed_gen, 1, memory_order_release);
  if (atomic_load_explicit(&d->nparked, memory_order_relaxed) > 0) ab__wake_workers(d);
}

void ab__mem_free(ab__device *d, void *ptr, size_t bytes) {
  d->ops->free(d, ptr, bytes);
  freed(d, bytes);
}

void ab__mem_free_shared(ab__device *d, void *ptr, size_t bytes) {
  (d->ops->free_shared ? d->ops->free_shared : d->ops->free)(d, ptr, bytes);
  freed(d, bytes);
}
