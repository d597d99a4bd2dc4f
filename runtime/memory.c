/*
 * runtime/memory.c: per-device memory budgets, fault injection, and ladder steps 1-4.
 *
 * Design notes
 *   - The budget is the runtime's own limit, enforced here for every backend: a CAS loop adds
 *     the request to `used` only if it stays within `budget`. It is how users share a device with
 *     other frameworks, and how the OOM ladder is tested without a GPU.
 *   - Ladder steps 1-4 run inline in the allocating thread: the arena (inside ops->alloc), trim
 *     the worker's cache, synchronise pending frees, the user's spill callback. Steps 5-7 (park,
 *     re-route, fail) need the task and live in worker.c.
 *   - Every free bumps freed_gen and, when tasks are parked on the device, wakes a worker so
 *     they retry at once instead of waiting for their backoff timer.
 */
#include <inttypes.h>
#include <string.h>

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

static int try_alloc(ab__device *d, ab__worker *w, size_t bytes, void **ptr) {
  if (ab__fault_hit(d, AB_FAULT_ALLOC)) return AB_ENOMEM;
  int rc = ab__mem_reserve(d, bytes);
  if (rc != 0) return rc;
  rc = d->ops->alloc(w, bytes, ptr);
  if (rc != 0) ab__mem_unreserve(d, bytes);
  return rc;
}

static void count(_Atomic uint64_t *c) { atomic_fetch_add_explicit(c, 1, memory_order_relaxed); }

int ab__mem_alloc(ab__device *d, ab__worker *w, size_t bytes, void **ptr) {
  int rc = try_alloc(d, w, bytes, ptr);
  if (rc != AB_ENOMEM) return rc;
  count(&d->stats.oom_events);
  if (d->ops->trim) { /* step 2: this worker's cached blocks */
    d->ops->trim(w);
    count(&d->stats.oom_trims);
    if ((rc = try_alloc(d, w, bytes, ptr)) != AB_ENOMEM) return rc;
  }
  if (d->ops->sync) { /* step 3: frees still pending on the device's streams */
    d->ops->sync(d);
    count(&d->stats.oom_syncs);
    if ((rc = try_alloc(d, w, bytes, ptr)) != AB_ENOMEM) return rc;
  }
  ab_runtime *rt = d->rt;
  for (int i = 0; i < 4 && rt->opt.spill; i++) { /* step 4: the user frees something */
    count(&d->stats.oom_spills);
    if (!rt->opt.spill(bytes, d->id, rt->opt.spill_arg)) break;
    if ((rc = try_alloc(d, w, bytes, ptr)) != AB_ENOMEM) return rc;
  }
  if (w) atomic_store_explicit(&w->oom_need, bytes, memory_order_relaxed); /* a hint (worker.c) */
  return AB_ENOMEM;
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

static const char *kind_name(int kind) {
  static const char *names[] = {"host", "opencl", "cuda"};
  return kind >= 0 && kind < AB_KIND_COUNT ? names[kind] : "?";
}

char *ab__mem_report(ab__device *d, const ab_future *t) {
  char *msg = ab__malloc(&d->rt->alloc, 512);
  if (msg == NULL) return NULL;
  uint64_t used = atomic_load_explicit(&d->used, memory_order_relaxed);
  uint64_t peak = atomic_load_explicit(&d->peak, memory_order_relaxed);
  char budget[32];
  if (d->budget == UINT64_MAX) snprintf(budget, sizeof budget, "unlimited");
  else snprintf(budget, sizeof budget, "%" PRIu64, d->budget);
  snprintf(msg, 512,
           "out of memory on %s:%d (%s): budget %s bytes, in use %" PRIu64 ", peak %" PRIu64
           "; device ladder totals: %" PRIu64 " trims, %" PRIu64 " syncs, %" PRIu64 " spills; this task parked %u times%s",
           kind_name(d->id.kind), d->id.index, d->name, budget, used, peak, (uint64_t)atomic_load(&d->stats.oom_trims),
           (uint64_t)atomic_load(&d->stats.oom_syncs), (uint64_t)atomic_load(&d->stats.oom_spills),
           t ? t->parks : 0u, t && t->oom.no_wait ? " (policy: no wait)" : "");
  return msg;
}
