/*
 * runtime/worker.c: the worker loop: pop, claim, run, complete (the context its task bodies
 * see: ctx.c).
 *
 * Design notes
 *   - A worker pops a task, claims it with a CAS PENDING -> RUNNING (acquire: pairs with the
 *     submitter's release), runs it, and completes it with a CAS RUNNING -> COMPLETING. A task
 *     cancelled while queued fails the claim and is dropped: it never runs.
 *   - Idle workers spin briefly (a task usually arrives within microseconds in a busy pipeline),
 *     then sleep on the queue's event count. Parked tasks give the sleep a deadline, and the
 *     spin too: it ends at the earliest retry and at any wake-up (spin_pop).
 *   - A backend with events (ops->record) has a task's work enqueued, not done, when its body
 *     returns: the worker records an event and keeps the task in its pending ring (scratch and
 *     inputs stay alive), runs the next one, and completes pending tasks in order as polling
 *     finds their events done. It blocks on the oldest only when the ring is full or there is
 *     nothing else to do. Host tasks complete at once.
 *   - A body's AB_ENOMEM goes to the OOM ladder (oom.c), which parks the task, re-routes it or
 *     fails it. Parked tasks come back through this loop, ahead of the queue: between any two
 *     tasks, when one is due or memory was freed, a worker takes the due one off the parked
 *     list before it pops the queue; an idle one sleeps no longer than the earliest retry.
 */
#include <sched.h>
#include <string.h>

#include "runtime/internal.h"

static void free_scratch(ab__worker *w, ab__scratch *head) {
  ab__scratch *s = head;
  while (s) {
    for (int i = 0; i < s->n; i++) ab__mem_free(w->dev, s->blk[i].base, s->blk[i].bytes);
    ab__scratch *next = s->next;
    if (s != head) ab__free(&w->dev->rt->alloc, s);
    s = next;
  }
}

static int run_body(ab_ctx *c) {
  ab_future *t = c->task;
  switch (t->kind) {
  case AB__TASK_COMPUTE:
    if (ab__fault_hit(c->w->dev, AB_FAULT_LAUNCH)) return AB_EFAULT;
    return ab__ctx_run(c);
  case AB__TASK_CONVERT:
    return ab__convert_run(c);
  case AB__TASK_STACK:
    return ab__stack_run(c);
  }
  AB__NOT_REACHED();
}

/* ---- the loop ------------------------------------------------------------------------------- */
static bool claim(ab_future *t) {
  /* acquire, already on the first load: the pointer came through ck_ring, whose ordering is
   * invisible to ThreadSanitizer; this load is the edge that pairs with the submit's release */
  uint32_t s = atomic_load_explicit(&t->state, memory_order_acquire);
  AB__ASSERT((s & AB__PHASE) != AB__RUNNING); /* a task is queued once at a time */
  while ((s & AB__PHASE) == AB__PENDING)
    /* acquire: pairs with the submitter's release, so the task's fields are visible */
    if (atomic_compare_exchange_weak_explicit(&t->state, &s, (s & ~(uint32_t)AB__PHASE) | AB__RUNNING,
                                              memory_order_acquire, memory_order_relaxed))
      return true;
  return false;
}

/* The end of a task whose body ran and whose stream work is done: out-of-memory goes to the
 * ladder, anything else completes the future. */
static void finish_task(ab__worker *w, ab_future *t, int rc, ab_tensor *output, ab__scratch *scratch,
                        int64_t trace_t0, int64_t trace_t1, int64_t trace_t2) {
  ab__device *d = w->dev;
  if (trace_t0) ab__trace_task(w, t, trace_t0, trace_t1, trace_t2, rc); /* before t is handed on */
  free_scratch(w, scratch);
  if (rc != 0) {
    ab_tensor_release(output);
    output = NULL;
  }
  uint64_t bytes = t->bytes; /* once t is parked or re-routed, another worker may own it */
  if (rc == AB_ENOMEM && ab__oom_task(w, t)) {
    ab__device_unaccount(d, bytes);
    return; /* parked or re-routed: the system's reference travels with it */
  }
  if (rc == AB_ENOMEM && ab__cancel_asked(w, t)) rc = AB_ECANCELED; /* asked to stop while short of memory */
  if (rc != 0 && rc != AB_ENOMEM && !t->message) /* what the backend said, e.g. a CUDA error's name */
    t->message = ab__device_error_take(&d->rt->alloc);
  ab__device_error_clear();
  ab__task_release_inputs(t); /* not needed any more: free them before anyone sees completion */
  int64_t delay = atomic_load_explicit(&d->faults.delay_ns, memory_order_relaxed);
  if (delay > 0) ab__sleep_ns(delay);
  ab__complete(t, rc, output, AB__RUNNING);
  ab__task_unaccount(d, t);
  ab_future_release(t); /* the system's reference */
}

/* Completes pending tasks whose events are done, oldest first; with block, waits for the
 * oldest one first. */
static void reap(ab__worker *w, bool block) {
  const ab__device_ops *ops = w->dev->ops;
  while (w->npending > 0) {
    ab__pending *p = &w->pending[w->pending_head];
    int st = block ? ops->wait(w, p->event) : ops->poll(w, p->event);
    if (st == 0) return;
    ops->event_free(p->event);
    ab__pending done = *p;
    w->pending_head = (w->pending_head + 1) % AB__PENDING_MAX;
    w->npending--;
    finish_task(w, done.task, st < 0 ? st : 0, done.output, &done.scratch, done.trace_t0, done.trace_t1,
                done.trace_t0 ? ab__trace_now(w->dev->rt) : 0);
    block = false;
  }
}

static void run_one(ab__worker *w, ab_future *t) {
  ab__device *d = w->dev;
  ab_runtime *rt = d->rt;
  if (!claim(t)) goto drop; /* cancelled while queued or parked: it never runs */
  if (atomic_load_explicit(&rt->cancelling, memory_order_relaxed)) {
    ab__complete(t, AB_ECANCELED, NULL, AB__RUNNING);
    goto drop;
  }
  if (w->npending == AB__PENDING_MAX) reap(w, true); /* room for this one */
  ab_ctx c = {.w = w, .task = t};
  ab__device_error_clear(); /* a note left by an earlier task is not this one's */
  int64_t t0 = ab__tracing(rt) ? ab__trace_now(rt) : 0; /* the one branch tracing costs when off */
  int rc = run_body(&c);
  int64_t t1 = t0 ? ab__trace_now(rt) : 0;
  void *event = NULL;
  if (rc == 0 && d->ops->record) rc = d->ops->record(w, &event);
  if (event) { /* enqueued: it completes when its event does, while we go on */
    int slot = (w->pending_head + w->npending) % AB__PENDING_MAX;
    w->pending[slot] = (ab__pending){t, c.output, c.scratch, event, t0, t1};
    w->npending++;
    return;
  }
  int done = d->ops->finish(w); /* the future completes when its stream has */
  if (rc == 0) rc = done;
  /* without a stream, the task was done when its body returned: no third clock read */
  int64_t t2 = t0 && d->ops->stream ? ab__trace_now(rt) : t1;
  finish_task(w, t, rc, c.output, &c.scratch, t0, t1, t2);
  return;
drop:
  ab__task_unaccount(d, t);
  ab__task_drop(t);
}

static size_t qlink_offset(void) { return offsetof(ab_future, qlink); }

static ab_future *pop(ab__device *d) { return ab__queue_pop(&d->queue, qlink_offset()); }

/* Before sleeping, poll a little: a few pauses, then yields. Yielding hands the core to a
 * submitter or another worker when there are more threads than cores (a pure spin would steal
 * it), yet still picks up the next task within microseconds, far sooner than a futex wake-up.
 * The yields end at a parked task's retry time (until; < 0: none) and when the queue's event
 * count moves without a task for this worker (a wake-up: a task parked, cancelled, or memory
 * freed), since on a busy machine each yield may hand the core away for a whole time slice (64
 * of them once cost 90 ms before a 1 ms retry). They are not cut after a fixed time: a worker
 * that shares its core with the submitter sees each yield last until the submitter's slice
 * ends; cut after 100 us, it went to sleep between two submits, and every submit then paid a
 * futex wake-up and the submitter lost its core to the woken worker. */
static ab_future *spin_pop(ab__device *d, uint32_t snap, int64_t until) {
  for (int i = 0; i < 64; i++) {
    ab_future *t = pop(d);
    if (t) return t;
    ab__cpu_relax();
  }
  for (int i = 0; i < 64; i++) {
    sched_yield();
    ab_future *t = pop(d);
    if (t) return t;
    if (ab__queue_snapshot(&d->queue) != snap || (until >= 0 && ab__now_ns() >= until)) break;
  }
  return NULL;
}

_Thread_local ab__worker *ab__current_worker;

static void *worker_main(void *arg) {
  ab__worker *w = arg;
  ab__current_worker = w;
  ab__device *d = w->dev;
  ab_runtime *rt = d->rt;
  for (;;) {
    if (w->npending) reap(w, false);
    /* a due retry goes first: the queue may hold seconds of work */
    ab_future *t = ab__park_wants_poll(d) ? ab__park_take(d, NULL) : NULL;
    if (t == NULL) t = pop(d);
    if (t == NULL && w->npending) { /* nothing new: wait for the device instead */
      reap(w, true);
      continue;
    }
    if (t == NULL) {
      /* The snapshot before the parked list is read: a wake-up after it (a task parked with an
       * earlier retry, a parked task cancelled, memory freed) ends the sleep below at once,
       * instead of being lost until the retry time read here. */
      uint32_t snap = ab__queue_snapshot(&d->queue);
      int64_t next_retry;
      t = ab__park_take(d, &next_retry);
      if (t == NULL) t = spin_pop(d, snap, next_retry);
      if (t == NULL) {
        if (atomic_load_explicit(&rt->stopping, memory_order_acquire)) return NULL;
        t = pop(d);
        if (t == NULL) {
          ab__queue_wait(&d->queue, snap, next_retry);
          continue;
        }
      }
    }
    run_one(w, t);
  }
}

int ab__workers_start(ab__device *d) {
  for (int i = 0; i < d->nworkers; i++) {
    ab__worker *w = &d->workers[i];
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) return AB_ENOMEM;
    w->started = true;
  }
  return 0;
}

void ab__workers_join(ab__device *d) {
  for (int i = 0; d->workers && i < d->nworkers; i++) {
    if (!d->workers[i].started) continue;
    pthread_join(d->workers[i].thread, NULL);
    d->workers[i].started = false;
  }
}
