/*
 * runtime/runtime.c: create, destroy, devices, statistics, fault injection.
 *
 * Design notes
 *   - Destroy: set closing (new submits fail with AB_ESHUTDOWN), in AB_CANCEL mode also set
 *     cancelling (workers cancel what they pop; parked tasks are cancelled), wait until the
 *     inflight count is zero (every accepted future has completed), then stop and join workers.
 *   - Destroy refuses (AB_EBUSY) on a thread it would wait for: one of the runtime's workers (a
 *     task, or a callback run there), or any thread inside a callback of one of its futures
 *     (whose completion holds an inflight count until the callbacks return).
 *   - fork(): a runtime made before the fork has no workers in the child, and a lock one of
 *     them held stays held there. Every entry point checks ab__forked first and refuses with
 *     AB_ESHUTDOWN; destroy too, leaving the child's copy as it is rather than joining threads
 *     that do not exist, and the last reference never frees it (its devices' drivers are not
 *     fork-safe either).
 *   - The runtime's memory is freed only when its last reference goes: futures and tensors made
 *     by the runtime hold one each, so users may release them after destroy. The backends'
 *     arenas are closed then too, once no tensor can point into them.
 */
#include <string.h>

#include "runtime/internal.h"

#define MAX_PHYS 16

static int kind_workers(const ab_runtime *rt, const ab__device_ops *ops, int kind, int split) {
  int n = rt->opt.kinds[kind].workers_per_device;
  if (n > 0) return n; /* at most AB_MAX_WORKERS: check_options */
  if (ops->default_workers > 0) return ops->default_workers;
  n = ab__ncpu() / (split > 0 ? split : 1);
  return n < 1 ? 1 : n > AB_MAX_WORKERS ? AB_MAX_WORKERS : n; /* a default is clamped */
}

static uint64_t kind_budget(const ab_kind_options *k, int kind, uint64_t total, int split) {
  uint64_t b = kind == AB_HOST || total == 0 ? UINT64_MAX : total; /* a device holds what it has */
  if (k->memory_limit) b = k->memory_limit;
  else if (k->memory_fraction > 0 && k->memory_fraction <= 1 && total) b = (uint64_t)(k->memory_fraction * (double)total);
  return b == UINT64_MAX ? b : b / (uint64_t)split;
}

static int check_options(const ab_runtime_options *o) {
  /* Version 1 of the struct is the only layout so far; later versions will also accept the
   * sizes of the ones before them. */
  if (o->size != sizeof(ab_runtime_options)) return AB_EINVAL;
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    const ab_kind_options *ko = &o->kinds[k];
    if (ko->workers_per_device < 0 || ko->workers_per_device > AB_MAX_WORKERS) return AB_EINVAL;
    if (ko->logical_split < 0 || ko->logical_split > AB_MAX_SPLIT) return AB_EINVAL;
    if (!(ko->memory_fraction >= 0 && ko->memory_fraction <= 1)) return AB_EINVAL; /* NaN too */
  }
  if (o->queue_capacity > AB_MAX_QUEUE) return AB_EINVAL;
  if (!ab__oom_policy_ok(&o->oom)) return AB_EINVAL;
  return 0;
}

/* ---- devices -------------------------------------------------------------------------------- */
static int count_devices(ab_runtime *rt, ab__phys_info phys[AB_KIND_COUNT][MAX_PHYS], int nphys[AB_KIND_COUNT]) {
  int total = 0;
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    const ab__device_ops *ops = ab__backends[k];
    nphys[k] = 0;
    if (ops == NULL || rt->opt.kinds[k].disabled) continue;
    int n = ops->probe(phys[k], MAX_PHYS);
    if (n < 0) return n;
    nphys[k] = n < MAX_PHYS ? n : MAX_PHYS;
    int split = rt->opt.kinds[k].logical_split > 0 ? rt->opt.kinds[k].logical_split : 1;
    rt->kind_first[k] = total;
    rt->kind_count[k] = nphys[k] * split;
    total += rt->kind_count[k];
  }
  return total;
}

static int device_init(ab_runtime *rt, ab__device *d, int kind, int index, int physical, const ab__phys_info *pi) {
  const ab__device_ops *ops = ab__backends[kind];
  int split = rt->opt.kinds[kind].logical_split > 0 ? rt->opt.kinds[kind].logical_split : 1;
  d->rt = rt;
  d->id = (ab_device){kind, index};
  d->physical = physical;
  d->ops = ops;
  d->memory_total = pi->memory_total;
  if (split > 1) snprintf(d->name, sizeof d->name, "%.40s [%d/%d]", pi->name, (index % split + 1) % 100, split % 100);
  else snprintf(d->name, sizeof d->name, "%s", pi->name);
  d->budget = kind_budget(&rt->opt.kinds[kind], kind, pi->memory_total, split);
  atomic_init(&d->park_due, INT64_MAX);
  if (pthread_mutex_init(&d->park_lock, NULL) != 0) return AB_ENOMEM;
  if (pthread_mutex_init(&d->xfer_lock, NULL) != 0) {
    pthread_mutex_destroy(&d->park_lock);
    return AB_ENOMEM;
  }
  d->locks_made = true;
  d->nworkers = kind_workers(rt, ops, kind, split);
  d->workers = ab__calloc(&rt->alloc, sizeof(ab__worker) * (size_t)d->nworkers);
  if (d->workers == NULL) return AB_ENOMEM;
  int rc = ab__queue_init(&d->queue, rt->opt.queue_capacity ? rt->opt.queue_capacity : 4096, &rt->alloc);
  if (rc != 0) return rc;
  if ((rc = ops->open(d)) != 0) return rc;
  d->opened = true;
  for (int i = 0; i < d->nworkers; i++) {
    d->workers[i].dev = d;
    d->workers[i].index = i;
    if ((rc = ops->worker_start(&d->workers[i])) != 0) return rc;
  }
  d->xfer.dev = d;
  d->xfer.index = -1;
  return ops->worker_start(&d->xfer);
}

/* Frees what device_init made, in reverse; safe on a partly made device. */
static void device_fini(ab_runtime *rt, ab__device *d) {
  if (d->ops == NULL) return;
  for (int i = 0; d->workers && i < d->nworkers; i++)
    if (d->workers[i].backend && d->ops->worker_stop) d->ops->worker_stop(&d->workers[i]);
  if (d->xfer.backend && d->ops->worker_stop) d->ops->worker_stop(&d->xfer);
  if (d->opened && d->ops->close) d->ops->close(d);
  ab__queue_fini(&d->queue, &rt->alloc);
  ab__free(&rt->alloc, d->workers);
  if (d->locks_made) {
    pthread_mutex_destroy(&d->park_lock);
    pthread_mutex_destroy(&d->xfer_lock);
  }
}

static int devices_open(ab_runtime *rt) {
  ab__phys_info phys[AB_KIND_COUNT][MAX_PHYS];
  int nphys[AB_KIND_COUNT];
  int total = count_devices(rt, phys, nphys);
  if (total < 0) return total;
  if (total == 0) return AB_ENODEV;
  rt->devices = ab__calloc(&rt->alloc, sizeof(ab__device) * (size_t)total);
  if (rt->devices == NULL) return AB_ENOMEM;
  rt->ndevices = total;
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    int split = rt->opt.kinds[k].logical_split > 0 ? rt->opt.kinds[k].logical_split : 1;
    for (int i = 0; i < rt->kind_count[k]; i++) {
      int rc = device_init(rt, &rt->devices[rt->kind_first[k] + i], k, i, i / split, &phys[k][i / split]);
      if (rc != 0) return rc;
    }
  }
  for (int i = 0; i < rt->ndevices; i++) {
    int rc = ab__workers_start(&rt->devices[i]);
    if (rc != 0) return rc;
  }
  return 0;
}

static void stop_workers(ab_runtime *rt) {
  atomic_store_explicit(&rt->stopping, 1, memory_order_release); /* pairs with the loop's acquire */
  for (int i = 0; i < rt->ndevices; i++) ab__wake_workers(&rt->devices[i]);
  ab__keeper_stop(rt);
  for (int i = 0; i < rt->ndevices; i++) ab__workers_join(&rt->devices[i]);
}

/* After the workers are gone, queues hold only completed (cancelled) tasks: drop them. */
static void drop_leftovers(ab_runtime *rt) {
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    ab_future *t;
    while ((t = ab__queue_pop(&d->queue, offsetof(ab_future, qlink))) != NULL) {
      AB__ASSERT((atomic_load(&t->state) & AB__PHASE) == AB__DONE);
      ab__task_unaccount(d, t);
      ab__task_drop(t);
    }
  }
}

static void runtime_free(ab_runtime *rt) {
  ab__trace_fini(rt); /* the rings hang off the workers: free them first */
  for (int i = 0; rt->devices && i < rt->ndevices; i++) device_fini(rt, &rt->devices[i]);
  ab__free(&rt->alloc, rt->devices);
  ab__pool_fini(&rt->futures);
  ab__pool_fini(&rt->tensors);
  if (rt->keeper_lock_made) pthread_mutex_destroy(&rt->keeper_lock);
  ab_allocator a = rt->alloc;
  ab__free(&a, rt);
}

void ab__runtime_unref(ab_runtime *rt) {
  /* acq_rel: the last owner sees every use of the runtime before freeing it */
  if (atomic_fetch_sub_explicit(&rt->refs, 1, memory_order_acq_rel) == 1 && !ab__forked(rt)) runtime_free(rt);
}

int ab_runtime_create(const ab_runtime_options *opt, ab_runtime **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  if (opt) {
    int rc = check_options(opt);
    if (rc != 0) return rc;
    o = *opt;
  }
  ab_allocator a = {0};
  if (o.allocator) a = *o.allocator;
  if ((a.malloc_fn == NULL) != (a.free_fn == NULL)) return AB_EINVAL;
  if (ab__fork_watch() != 0) return AB_ENOMEM;
  ab_runtime *rt = ab__calloc(&a, sizeof *rt);
  if (rt == NULL) return AB_ENOMEM;
  rt->fork_gen = ab__fork_gen();
  rt->opt = o;
  rt->opt.allocator = NULL;
  rt->alloc = a;
  atomic_init(&rt->refs, 1);
  ab__trace_init(rt);
  if (ab__pool_init(&rt->futures, sizeof(ab_future), &rt->alloc) != 0) {
    ab__free(&a, rt);
    return AB_ENOMEM;
  }
  if (ab__pool_init(&rt->tensors, sizeof(ab_tensor), &rt->alloc) != 0) {
    pthread_mutex_destroy(&rt->futures.grow_lock);
    ab__free(&a, rt);
    return AB_ENOMEM;
  }
  int rc = devices_open(rt);
  if (rc == 0) rc = ab__keeper_start(rt);
  if (rc != 0) {
    stop_workers(rt);
    runtime_free(rt);
    return rc;
  }
  *out = rt;
  return 0;
}

static void wait_idle(ab_runtime *rt) {
  for (;;) {
    uint32_t w = atomic_load_explicit(&rt->idle_word, memory_order_acquire);
    if (atomic_load(&rt->inflight) == 0) return; /* seq_cst: see task.c's design notes */
    if (atomic_load_explicit(&rt->cancelling, memory_order_relaxed))
      for (int i = 0; i < rt->ndevices; i++) ab__park_flush(&rt->devices[i], AB_ECANCELED);
    /* the timeout is a safety net only: completions wake us */
    ab__futex_wait(&rt->idle_word, w, ab__now_ns() + 50000000);
  }
}

int ab_runtime_destroy(ab_runtime *rt, int how) {
  if (rt == NULL) return 0;
  if (how != AB_DRAIN && how != AB_CANCEL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN; /* the parent's: left as it is (see ab__forked) */
  if (ab__thread_inside(rt)) return AB_EBUSY; /* it would wait for this very thread */
  if (how == AB_CANCEL) atomic_store(&rt->cancelling, 1);
  atomic_store(&rt->closing, 1); /* seq_cst: see task.c's design notes */
  for (int i = 0; i < rt->ndevices; i++) ab__wake_workers(&rt->devices[i]);
  wait_idle(rt);
  stop_workers(rt);
  drop_leftovers(rt);
  ab__runtime_unref(rt);
  return 0;
}

/* In ab_kind order. */
static const char *const kind_names[AB_KIND_COUNT] = {[AB_HOST] = "host", [AB_OPENCL] = "opencl", [AB_CUDA] = "cuda"};

const char *ab_kind_name(int kind) { return kind >= 0 && kind < AB_KIND_COUNT ? kind_names[kind] : "?"; }

int ab_kind_from_name(const char *name, size_t len) {
  for (int k = 0; name && k < AB_KIND_COUNT; k++)
    if (strlen(kind_names[k]) == len && strncmp(name, kind_names[k], len) == 0) return k;
  return AB_EINVAL;
}

int ab_runtime_devices(ab_runtime *rt, ab_device *out, int cap) {
  if (rt == NULL || cap < 0 || (cap > 0 && out == NULL)) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  for (int i = 0; i < rt->ndevices && i < cap; i++) out[i] = rt->devices[i].id;
  return rt->ndevices;
}

int ab_device_info_get(ab_runtime *rt, ab_device dev, ab_device_info *out) {
  if (rt == NULL || out == NULL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  ab__device *d = ab__device_of(rt, dev);
  if (d == NULL) return AB_ENODEV;
  memset(out, 0, sizeof *out);
  out->device = d->id;
  snprintf(out->name, sizeof out->name, "%s", d->name);
  out->physical = d->physical;
  out->workers = d->nworkers;
  out->memory_total = d->memory_total;
  out->budget = d->budget;
  return 0;
}

static uint64_t rd(_Atomic uint64_t *c) { return atomic_load_explicit(c, memory_order_relaxed); }

int ab_runtime_stats(ab_runtime *rt, ab_device_stats *out, int cap) {
  if (rt == NULL || cap < 0 || (cap > 0 && out == NULL)) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  for (int i = 0; i < rt->ndevices && i < cap; i++) {
    ab__device *d = &rt->devices[i];
    ab__counters *c = &d->stats;
    out[i] = (ab_device_stats){
        .device = d->id,
        .tasks_submitted = rd(&d->submitted), .tasks_completed = rd(&c->completed),
        .tasks_failed = rd(&c->failed), .tasks_canceled = rd(&c->canceled),
        .bytes_moved = rd(&c->bytes_moved),
        .mem_used = rd(&d->used), .mem_peak = rd(&d->peak), .mem_budget = d->budget,
        .queued = ab__queue_depth(&d->queue),
        .parked = atomic_load_explicit(&d->nparked, memory_order_relaxed),
        .oom_events = rd(&c->oom_events), .oom_trims = rd(&c->oom_trims), .oom_syncs = rd(&c->oom_syncs),
        .oom_spills = rd(&c->oom_spills), .oom_parks = rd(&c->oom_parks), .oom_retries = rd(&c->oom_retries),
        .oom_reroutes = rd(&c->oom_reroutes), .oom_failures = rd(&c->oom_failures),
        .faults_injected = rd(&c->faults_injected),
    };
  }
  return rt->ndevices;
}

static void fault_arm(ab__device *d, const ab_fault_spec *s) {
  ab__faults *f = &d->faults;
  atomic_store_explicit(&f->armed, 0, memory_order_relaxed);
  for (int op = 0; op < AB_FAULT_OPS; op++) {
    atomic_store_explicit(&f->nth[op], 0, memory_order_relaxed);
    atomic_store_explicit(&f->seen[op], 0, memory_order_relaxed);
  }
  if (s->nth > 0) {
    atomic_store_explicit(&f->nth[s->op], s->nth, memory_order_relaxed);
    atomic_store_explicit(&f->count[s->op], s->count, memory_order_relaxed);
  }
  atomic_store_explicit(&f->delay_ns, s->delay_ns > 0 ? s->delay_ns : 0, memory_order_relaxed);
  /* release: nth and count before armed is seen by ab__fault_hit */
  atomic_store_explicit(&f->armed, s->nth > 0, memory_order_release);
}

int ab_runtime_fault(ab_runtime *rt, const ab_fault_spec *s) {
  if (rt == NULL || s == NULL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  if (s->op < 0 || s->op >= AB_FAULT_OPS || s->delay_ns < 0) return AB_EINVAL;
  bool off = s->nth == 0 && s->delay_ns == 0;
  if (off) { /* a zeroed spec disarms every device, whatever it names */
    for (int i = 0; i < rt->ndevices; i++) fault_arm(&rt->devices[i], s);
    return 0;
  }
  if (s->device.kind < 0 || s->device.kind >= AB_KIND_COUNT) return AB_ENODEV;
  if (s->device.index != AB_ANY && ab__device_of(rt, s->device) == NULL) return AB_ENODEV;
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    if (d->id.kind == s->device.kind && (s->device.index == AB_ANY || s->device.index == d->id.index))
      fault_arm(d, s);
  }
  return 0;
}
