/*
 * runtime/task.c: submission. Validate, take references, wait for inputs, place, enqueue;
 * ab_submit, the compute task's API (conversions: convert.c).
 *
 * Design notes
 *   - A submit that fails must leave no trace (the contract, point 1): everything it took is
 *     given back before it returns, and the future is freed without completing.
 *   - Accepting a task raises rt->inflight before testing rt->closing; destroy sets closing
 *     before reading inflight. Both are seq_cst, so either the submit sees closing and backs
 *     out, or destroy sees the task and waits for it (a Dekker pair).
 *   - A task with future inputs registers a callback on each (the node lives in its input slot,
 *     so nothing is allocated) and a count of unresolved inputs plus one for the submitter.
 *     Whoever brings the count to zero calls ab__task_ready, which places and enqueues it
 *     without blocking: it may run on a worker or inside another future's completion.
 *   - The system's reference on a task is dropped by whoever takes it out of the system: the
 *     worker that ran or discarded it, or ab__task_ready when it is already complete. A task
 *     discarded without running (cancelled, or failed by an input) lets go of its inputs then
 *     too (ab__task_drop), not when its caller releases the future: they may be memory that
 *     others wait for. Nobody reads a completed task's inputs.
 */
#include "runtime/internal.h"

void ab__inflight_done(ab_runtime *rt) {
  /* seq_cst: pairs with destroy's store of closing (see the design notes) */
  int64_t was = atomic_fetch_sub(&rt->inflight, 1);
  AB__ASSERT(was >= 1); /* each accepted task gives its count back exactly once */
  if (was == 1 && atomic_load(&rt->closing)) {
    atomic_fetch_add_explicit(&rt->idle_word, 1, memory_order_release);
    ab__futex_wake_all(&rt->idle_word);
  }
}

static int accept_begin(ab_runtime *rt) {
  atomic_fetch_add(&rt->inflight, 1); /* seq_cst: see the design notes */
  if (atomic_load(&rt->closing)) {
    ab__inflight_done(rt);
    return AB_ESHUTDOWN;
  }
  return 0;
}

void ab__task_release_inputs(ab_future *t) {
  for (int i = 0; i < t->nin; i++) {
    ab_tensor_release(t->in[i].tensor);
    ab_future_release(t->in[i].future);
  }
  if (t->in && t->in != t->in_inline) ab__free(&t->rt->alloc, t->in);
  t->in = NULL;
  t->nin = 0;
}

void ab__task_drop(ab_future *t) {
  AB__ASSERT((atomic_load_explicit(&t->state, memory_order_relaxed) & AB__PHASE) >= AB__COMPLETING);
  ab__task_release_inputs(t);
  ab_future_release(t);
}

ab_future *ab__task_new(ab_runtime *rt, int kind, int nin, const ab_place *place) {
  ab_future *t = ab__future_new(rt);
  if (t == NULL) return NULL;
  t->kind = (uint8_t)kind;
  t->in = t->in_inline;
  if (nin > AB__INLINE_INPUTS) {
    t->in = ab__calloc(&rt->alloc, sizeof(ab__input) * (size_t)nin);
    if (t->in == NULL) {
      ab_future_release(t);
      return NULL;
    }
  }
  t->nin = nin;
  if (place) t->place = *place;
  /* the place's policy, else the runtime's; its zero fields are the ladder's defaults (oom.c) */
  t->oom = place && place->oom ? *place->oom : rt->opt.oom;
  return t;
}

static int check_place(ab_runtime *rt, const ab_place *p) {
  if (p->policy < AB_PLACE_AUTO || p->policy > AB_PLACE_AFFINITY) return AB_EINVAL;
  if (p->mode != AB_SUBMIT_BLOCK && p->mode != AB_SUBMIT_TRY) return AB_EINVAL;
  if (p->oom && !ab__oom_policy_ok(p->oom)) return AB_EINVAL;
  if (p->device.kind < 0 || p->device.kind >= AB_KIND_COUNT) return AB_ENODEV;
  if (rt->kind_count[p->device.kind] == 0) return AB_ENODEV;
  /* an index names a device even where the policy does not use it: a typo is an error */
  if (p->policy == AB_PLACE_EXPLICIT && p->device.index == AB_ANY) return AB_EINVAL;
  if (p->device.index != AB_ANY && ab__device_of(rt, p->device) == NULL) return AB_ENODEV;
  return 0;
}

/* ---- device accounting ---------------------------------------------------------------------- */
void ab__task_account(ab__device *d, ab_future *t) {
  /* load gauges for placement and backpressure: relaxed, read as hints */
  atomic_fetch_add_explicit(&d->load_tasks, 1, memory_order_relaxed);
  if (t->bytes) atomic_fetch_add_explicit(&d->load_bytes, t->bytes, memory_order_relaxed);
}

void ab__device_unaccount(ab__device *d, uint64_t bytes) {
  atomic_fetch_sub_explicit(&d->load_tasks, 1, memory_order_relaxed);
  if (bytes == 0) return;
  atomic_fetch_sub_explicit(&d->load_bytes, bytes, memory_order_relaxed);
  ab__queue_signal_space(&d->queue);
}

void ab__task_unaccount(ab__device *d, ab_future *t) { ab__device_unaccount(d, t->bytes); }

typedef struct {
  ab__device *d;
  uint64_t bytes;
} full_arg;

static bool bytes_full(void *arg) {
  full_arg *a = arg;
  uint64_t max = a->d->rt->opt.max_bytes_in_flight;
  /* the task's own bytes are already accounted: count the others */
  uint64_t others = atomic_load_explicit(&a->d->load_bytes, memory_order_relaxed) - a->bytes;
  /* an otherwise empty device always admits a task, however big */
  return max != 0 && others != 0 && others + a->bytes > max;
}

static void publish(ab_future *t) {
  /* release (an RMW, so a concurrent cancel's DONE is kept): the task's fields happen-before
   * the worker's acquiring CAS. ck_ring's own ordering is invisible to ThreadSanitizer. */
  atomic_fetch_or_explicit(&t->state, 0, memory_order_release);
}

static int enqueue_bounded(ab__device *d, ab_future *t, const ab_place *p) {
  ab__task_account(d, t);
  /* release: as publish(), but nobody else can hold t yet, so a plain store will do */
  atomic_store_explicit(&t->state, AB__PENDING, memory_order_release);
  full_arg fa = {d, t->bytes};
  int rc = ab__queue_push(&d->queue, t, p->mode, ab__deadline_after(p->timeout_ns > 0 ? p->timeout_ns : -1),
                          bytes_full, &fa);
  if (rc != 0) ab__task_unaccount(d, t);
  else atomic_fetch_add_explicit(&d->submitted, 1, memory_order_relaxed); /* stat */
  return rc;
}

void ab__task_requeue(ab__device *d, ab_future *t) {
  ab__task_set_dev(t, d);
  ab__task_account(d, t);
  publish(t);
  ab__queue_push_always(&d->queue, t, &t->qlink);
}

/* ---- inputs --------------------------------------------------------------------------------- */
static void input_tensors(ab_future *t, ab_tensor **out, int cap) {
  for (int i = 0; i < t->nin && i < cap; i++) out[i] = t->in[i].tensor;
}

static uint64_t input_bytes(ab_future *t) {
  uint64_t b = 0;
  for (int i = 0; i < t->nin; i++)
    if (t->in[i].tensor) b += ab_tensor_nbytes(t->in[i].tensor);
  return b;
}

static ab__device *place_task(ab_future *t, int *err) {
  ab_tensor *ins[8] = {0};
  int n = t->nin < 8 ? t->nin : 8;
  input_tensors(t, ins, n);
  return ab__place(t->rt, &t->place, ins, n, 0, err);
}

/* Completes t without running it (it holds the caller's reference, so t stays alive). */
static void fail_unrun(ab_future *t, int status) { ab__complete(t, status, NULL, AB__PENDING); }

/* A conversion with nothing to do: the source already is the answer. It is found here, at
 * submit or when the source future completes, so it never waits in a queue or for a worker.
 * Completes t with a new reference on the source, unless a cancel completed it first (true
 * either way: t is done). Whoever completes t gives back its inflight count (t->counted); this
 * function must not touch it, since a canceller may be reading it at this moment. */
static bool zero_copy(ab_future *t) {
  if (t->kind != AB__TASK_CONVERT || t->copt.force_copy) return false;
  ab_tensor *src = t->in[0].tensor;
  if (src == NULL || !ab__fits(src, ab__target_dtype(t, src))) return false;
  ab_device home = ab_tensor_device(src);
  if (home.kind != t->dst.kind || (t->dst.index != AB_ANY && t->dst.index != home.index)) return false;
  if (ab__device_of(t->rt, home) == NULL) return false;
  ab__complete(t, 0, ab_tensor_retain(src), AB__PENDING);
  return true;
}

/* The inputs are known: convert futures to tensors, pick a device, enqueue without blocking. */
void ab__task_ready(ab_future *t) {
  int status = atomic_load_explicit(&t->dep_status, memory_order_acquire);
  if ((atomic_load_explicit(&t->state, memory_order_acquire) & AB__PHASE) != AB__PENDING) goto drop;
  if (status != 0) {
    fail_unrun(t, status);
    goto drop;
  }
  for (int i = 0; i < t->nin; i++) {
    ab__input *in = &t->in[i];
    if (in->future == NULL) continue;
    in->tensor = in->future->result ? ab_tensor_retain(in->future->result) : NULL;
    ab_future_release(in->future);
    in->future = NULL;
  }
  if (t->kind == AB__TASK_CONVERT && t->in[0].tensor == NULL) {
    fail_unrun(t, AB_EINVAL); /* the input task produced no tensor */
    goto drop;
  }
  if (t->bytes == 0) t->bytes = input_bytes(t);
  /* Completed without running, unless a cancel got there first: either way the one that
   * completed it gave back its inflight count. */
  if (zero_copy(t)) goto drop;
  int err = 0;
  ab__device *d = place_task(t, &err);
  if (d == NULL) {
    fail_unrun(t, err);
    goto drop;
  }
  if (ab__task_dev(t) == NULL) atomic_fetch_add_explicit(&d->submitted, 1, memory_order_relaxed); /* stat */
  if (t->oom_retry) ab__oom_enter(d, t);
  else ab__task_requeue(d, t);
  return;
drop:
  ab__task_drop(t);
}

static void input_done(ab_future *f, void *arg) {
  ab__input *in = arg;
  ab_future *t = in->owner;
  int st = f->status;
  if (st != 0) {
    int zero = 0;
    /* relaxed CAS: first failure wins; published by the acq_rel decrement below */
    atomic_compare_exchange_strong_explicit(&t->dep_status, &zero, st, memory_order_relaxed,
                                            memory_order_relaxed);
  }
  /* acq_rel: the last decrement sees every input's status and result */
  if (atomic_fetch_sub_explicit(&t->deps, 1, memory_order_acq_rel) == 1) ab__task_ready(t);
}

/* ---- the common submit path ----------------------------------------------------------------- */
static int has_future_inputs(ab_future *t) {
  int n = 0;
  for (int i = 0; i < t->nin; i++) n += t->in[i].future != NULL;
  return n;
}

int ab__task_submit(ab_future *t, ab_future **out) {
  ab_runtime *rt = t->rt;
  int rc = accept_begin(rt);
  if (rc != 0) goto fail;
  int nfut = has_future_inputs(t);
  if (nfut > 0) {
    if (t->place.policy == AB_PLACE_EXPLICIT) { /* known already: counted there from now on */
      ab__device *d = ab__device_of(rt, t->place.device);
      ab__task_set_dev(t, d);
      atomic_fetch_add_explicit(&d->submitted, 1, memory_order_relaxed); /* stat */
    }
    t->counted = true;
    atomic_store_explicit(&t->refs, 2, memory_order_relaxed); /* caller + system; not shared yet */
    atomic_store_explicit(&t->deps, nfut + 1, memory_order_relaxed);
    for (int i = 0; i < t->nin; i++) {
      ab__input *in = &t->in[i];
      if (in->future == NULL) continue;
      in->owner = t;
      in->cb = (ab__cb){.fn = input_done, .arg = in};
      ab__then_internal(in->future, &in->cb);
    }
    *out = t;
    if (atomic_fetch_sub_explicit(&t->deps, 1, memory_order_acq_rel) == 1) ab__task_ready(t);
    return 0;
  }
  if (t->bytes == 0) t->bytes = input_bytes(t);
  t->counted = true;
  if (zero_copy(t)) { /* completed at once (nobody else holds t yet): the count is back */
    *out = t;
    return 0;
  }
  ab__device *d = place_task(t, &rc);
  if (d == NULL) goto fail_accepted;
  ab__task_set_dev(t, d);
  atomic_store_explicit(&t->refs, 2, memory_order_relaxed); /* caller + system; not shared yet */
  if (t->oom_retry) { /* into the ladder, not the queue: it is accepted whatever the queue holds */
    atomic_fetch_add_explicit(&d->submitted, 1, memory_order_relaxed); /* stat */
    *out = t;
    ab__oom_enter(d, t);
    return 0;
  }
  rc = enqueue_bounded(d, t, &t->place);
  if (rc == 0) {
    *out = t;
    return 0;
  }
  atomic_store_explicit(&t->refs, 1, memory_order_relaxed); /* never published */
fail_accepted:
  t->counted = false;
  ab__inflight_done(rt);
fail:
  ab__task_set_dev(t, NULL);
  ab_future_release(t);
  return rc;
}

/* ---- compute tasks -------------------------------------------------------------------------- */
static int check_inputs(const ab_input *in, int n) {
  if (n < 0 || (n > 0 && in == NULL)) return AB_EINVAL;
  for (int i = 0; i < n; i++)
    if ((in[i].tensor == NULL) == (in[i].future == NULL)) return AB_EINVAL;
  return 0;
}

int ab_submit(ab_runtime *rt, const ab_task_desc *d, ab_future **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  /* sizes from before `name` or `flags` were appended are still ab_task_descs */
  if (rt == NULL || d == NULL || d->fn == NULL) return AB_EINVAL;
  if (d->size != sizeof(ab_task_desc) && d->size != offsetof(ab_task_desc, flags) &&
      d->size != offsetof(ab_task_desc, name))
    return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN; /* first: nothing of it may be locked here */
  uint32_t flags = d->size == sizeof(ab_task_desc) ? d->flags : 0;
  if (flags & ~(uint32_t)AB_TASK_OOM_RETRY) return AB_EINVAL;
  int rc = check_inputs(d->inputs, d->ninputs);
  if (rc == 0) rc = check_place(rt, &d->place);
  if (rc != 0) return rc;
  ab_future *t = ab__task_new(rt, AB__TASK_COMPUTE, d->ninputs, &d->place);
  if (t == NULL) return AB_ENOMEM;
  t->fn = d->fn;
  t->arg = d->arg;
  t->bytes = d->bytes_hint;
  t->name = d->size > offsetof(ab_task_desc, name) ? d->name : NULL;
  t->oom_retry = flags & AB_TASK_OOM_RETRY;
  for (int i = 0; i < d->ninputs; i++) {
    if (d->inputs[i].tensor) t->in[i].tensor = ab_tensor_retain(d->inputs[i].tensor);
    else t->in[i].future = ab_future_retain(d->inputs[i].future);
  }
  return ab__task_submit(t, out);
}
