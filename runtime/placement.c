/*
 * runtime/placement.c: which device runs a task.
 *
 * Order: an explicit device; else data affinity (the device holding the largest
 * input); else the least-loaded device of the requested kind; round-robin when asked. Load is
 * read from relaxed gauges: placement is a heuristic, and a stale read only costs balance.
 */
#include "runtime/internal.h"

ab__device *ab__device_of(ab_runtime *rt, ab_device d) {
  if (d.kind < 0 || d.kind >= AB_KIND_COUNT || d.index < 0 || d.index >= rt->kind_count[d.kind]) return NULL;
  return &rt->devices[rt->kind_first[d.kind] + d.index];
}

static bool excluded(ab_runtime *rt, ab__device *d, uint64_t exclude) {
  long slot = d - rt->devices;
  return slot < 64 && (exclude >> slot & 1);
}

static ab__device *round_robin(ab_runtime *rt, int kind, uint64_t exclude) {
  int n = rt->kind_count[kind];
  uint32_t start = atomic_fetch_add_explicit(&rt->rr[kind], 1, memory_order_relaxed); /* a ticket */
  for (int i = 0; i < n; i++) {
    ab__device *d = &rt->devices[rt->kind_first[kind] + (int)((start + (uint32_t)i) % (uint32_t)n)];
    if (!excluded(rt, d, exclude)) return d;
  }
  return NULL;
}

/* Fewest queued and running tasks, then fewest bytes in flight, then most free budget. Ties go
 * round-robin so equal devices share the work. */
static ab__device *least_loaded(ab_runtime *rt, int kind, uint64_t exclude) {
  int n = rt->kind_count[kind];
  uint32_t start = atomic_fetch_add_explicit(&rt->rr[kind], 1, memory_order_relaxed); /* a ticket */
  ab__device *best = NULL;
  int64_t best_tasks = 0;
  uint64_t best_bytes = 0, best_free = 0;
  for (int i = 0; i < n; i++) {
    ab__device *d = &rt->devices[rt->kind_first[kind] + (int)((start + (uint32_t)i) % (uint32_t)n)];
    if (excluded(rt, d, exclude)) continue;
    int64_t tasks = atomic_load_explicit(&d->load_tasks, memory_order_relaxed);
    uint64_t bytes = atomic_load_explicit(&d->load_bytes, memory_order_relaxed);
    uint64_t used = atomic_load_explicit(&d->used, memory_order_relaxed);
    uint64_t free_b = d->budget > used ? d->budget - used : 0;
    bool better = best == NULL || tasks < best_tasks ||
                  (tasks == best_tasks && (bytes < best_bytes || (bytes == best_bytes && free_b > best_free)));
    if (better) {
      best = d;
      best_tasks = tasks;
      best_bytes = bytes;
      best_free = free_b;
    }
  }
  return best;
}

static ab__device *affinity(ab_runtime *rt, int kind, ab_tensor *const *in, int n, uint64_t exclude) {
  ab_tensor *largest = NULL;
  for (int i = 0; i < n; i++) {
    if (in[i] == NULL || ab_tensor_device(in[i]).kind != kind) continue;
    if (largest == NULL || ab_tensor_nbytes(in[i]) > ab_tensor_nbytes(largest)) largest = in[i];
  }
  if (largest == NULL) return NULL;
  ab__device *d = ab__device_of(rt, ab_tensor_device(largest));
  return d && !excluded(rt, d, exclude) ? d : NULL;
}

ab__device *ab__place(ab_runtime *rt, const ab_place *p, ab_tensor *const *inputs, int n, uint64_t exclude,
                      int *err) {
  int kind = p->device.kind;
  *err = AB_ENODEV;
  if (kind < 0 || kind >= AB_KIND_COUNT || rt->kind_count[kind] == 0) return NULL;
  ab__device *d = NULL;
  if (rt->kind_count[kind] == 1 && exclude == 0) /* one device: nothing to choose */
    return p->policy == AB_PLACE_EXPLICIT && p->device.index != 0 ? NULL : &rt->devices[rt->kind_first[kind]];
  switch (p->policy) {
  case AB_PLACE_EXPLICIT:
    d = ab__device_of(rt, p->device);
    return d && !excluded(rt, d, exclude) ? d : NULL;
  case AB_PLACE_ROUND_ROBIN:
    return round_robin(rt, kind, exclude);
  case AB_PLACE_LEAST_LOADED:
    return least_loaded(rt, kind, exclude);
  case AB_PLACE_AUTO:
  case AB_PLACE_AFFINITY:
    d = affinity(rt, kind, inputs, n, exclude);
    return d ? d : least_loaded(rt, kind, exclude);
  }
  *err = AB_EINVAL;
  return NULL;
}
