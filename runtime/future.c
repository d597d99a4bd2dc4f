/*
 * runtime/future.c: the future's state machine.
 *
 * Design notes
 *   - One 32-bit word holds the phase (PENDING -> RUNNING -> COMPLETING -> DONE, or PENDING ->
 *     COMPLETING -> DONE for cancels and failed inputs) and two flags: WAITERS (someone sleeps on
 *     the word, a futex) and CANCEL_REQ (cancel asked while running).
 *   - Exactly-once completion: the only way into COMPLETING is a CAS from the phase the completer
 *     saw, so of a worker, a canceller and a failing input only one wins. The winner writes
 *     status and result, then stores DONE with release; readers load the word with acquire
 *     before they read status or result.
 *   - Callbacks form a Treiber stack closed by a sentinel. The completer swaps in the sentinel
 *     after DONE is visible, then runs the callbacks in the order they were added. ab_future_then
 *     that finds the sentinel runs its callback at once: every callback runs exactly once.
 *   - Whoever calls ab__complete holds a reference on the future, since a callback may release
 *     the last one held by the user.
 *   - A task in the system (queued, parked, waiting for inputs) holds one reference of its own;
 *     the caller of submit holds another. The runtime holds one reference per live future, so
 *     futures outlive ab_runtime_destroy safely.
 *   - wait_any registers nothing on the futures: a caller polling with a timeout must not leave
 *     a record on each of them per call. It counts itself in rt->any_waiters and sleeps on
 *     rt->done_gen, which a completer bumps (and wakes) when it sees a waiter. The completer's
 *     DONE exchange and its load of any_waiters, the waiter's increment and its loads of the
 *     states, are seq_cst: either the completer sees the waiter, or the waiter sees DONE.
 *   - Waiting spins briefly before it sleeps, bounded in time and by the deadline: on a busy
 *     machine a sched_yield may last a whole time slice.
 *   - A wait that nothing but the waiting thread could end is refused (AB_EBUSY) instead of
 *     sleeping for ever: a worker waiting for its own running task, for one whose stream work
 *     it has still to reap, or for one queued or parked on its device when it is the device's
 *     only worker. Only the blocking path looks, so it costs nothing when f is done.
 *   - Each thread keeps a stack of the runtimes whose callbacks it is running (cb_frames, on
 *     the stack of run_callbacks): ab_runtime_destroy there would wait for the completion that
 *     called it, so it refuses.
 *   - In a child of fork() (ab__forked), a future of an inherited runtime that was not complete
 *     never will be: waits, status, result and callbacks say AB_ESHUTDOWN instead.
 */
#include <sched.h>
#include <string.h>

#include "runtime/internal.h"

static ab__cb closed_sentinel;
#define CLOSED (&closed_sentinel)

static const char forked_message[] =
    "this future's runtime was made before fork(), in the parent process: its workers are not in this "
    "process, so the future never completes here";

/* The runtimes whose futures' callbacks this thread is running, innermost first. */
typedef struct cb_frame {
  const ab_runtime *rt;
  struct cb_frame *up;
} cb_frame;
static _Thread_local cb_frame *cb_frames;

bool ab__thread_inside(const ab_runtime *rt) {
  if (ab__current_worker && ab__current_worker->dev->rt == rt) return true;
  for (const cb_frame *fr = cb_frames; fr; fr = fr->up)
    if (fr->rt == rt) return true;
  return false;
}

static void run_callback(ab_future *f, ab__cb *node) {
  cb_frame fr = {f->rt, cb_frames};
  cb_frames = &fr;
  node->fn(f, node->arg);
  cb_frames = fr.up;
}

ab_future *ab__future_new(ab_runtime *rt) {
  ab_future *f = ab__pool_get(&rt->futures);
  if (f == NULL) return NULL;
  memset(f, 0, sizeof *f);
  atomic_init(&f->state, AB__PENDING);
  atomic_init(&f->refs, 1);
  atomic_init(&f->cbs, NULL);
  atomic_init(&f->inline_cb_used, 0);
  atomic_init(&f->deps, 0);
  atomic_init(&f->dep_status, 0);
  atomic_init(&f->dev, NULL);
  f->rt = rt;
  ab__runtime_ref(rt);
  return f;
}

void ab__future_free(ab_future *f) {
  ab_runtime *rt = f->rt;
  ab_tensor_release(f->result);
  ab__free(&rt->alloc, f->message);
  ab__task_release_inputs(f);
  ab__pool_put(&rt->futures, f);
  ab__runtime_unref(rt);
}

ab_future *ab_future_retain(ab_future *f) {
  if (f == NULL) return NULL;
  int32_t was = atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed); /* from a live ref */
  AB__ASSERT(was > 0);
  return f;
}

void ab_future_release(ab_future *f) {
  if (f == NULL) return;
  /* acq_rel: the last releaser must see every other owner's writes before freeing */
  int32_t was = atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel);
  AB__ASSERT(was > 0);
  if (was == 1) ab__future_free(f);
}

static void run_callbacks(ab_future *f) {
  /* acq_rel: acquire the nodes pushed with release; release orders DONE before the sentinel */
  ab__cb *list = atomic_exchange_explicit(&f->cbs, CLOSED, memory_order_acq_rel);
  AB__ASSERT(list != CLOSED); /* callbacks run once */
  ab__cb *fifo = NULL;
  while (list) { /* reverse: callbacks run in the order they were added */
    ab__cb *next = list->next;
    list->next = fifo;
    fifo = list;
    list = next;
  }
  while (fifo) {
    ab__cb *next = fifo->next; /* read first: the callback may free fifo's owner */
    bool heap = fifo->heap;
    run_callback(f, fifo);
    if (heap) ab__free(&f->rt->alloc, fifo);
    fifo = next;
  }
}

static void count_completion(ab_future *f, int status) {
  ab__device *d = ab__task_dev(f);
  if (d == NULL) return;
  ab__counters *c = &d->stats;
  /* statistics only: relaxed */
  if (status == 0) atomic_fetch_add_explicit(&c->completed, 1, memory_order_relaxed);
  else if (status == AB_ECANCELED) atomic_fetch_add_explicit(&c->canceled, 1, memory_order_relaxed);
  else atomic_fetch_add_explicit(&c->failed, 1, memory_order_relaxed);
}

/* A completion that someone in wait_any may be sleeping for. */
static void wake_any_waiters(ab_runtime *rt) {
  /* seq_cst: pairs with wait_any's increment (see the design notes) */
  if (atomic_load(&rt->any_waiters) == 0) return;
  atomic_fetch_add_explicit(&rt->done_gen, 1, memory_order_release); /* DONE before the bump */
  ab__futex_wake_all(&rt->done_gen);
}

bool ab__complete(ab_future *f, int status, ab_tensor *result, uint32_t from) {
  AB__ASSERT(from == AB__PENDING || from == AB__RUNNING);
  uint32_t s = atomic_load_explicit(&f->state, memory_order_relaxed);
  do {
    if ((s & AB__PHASE) != from) {
      ab_tensor_release(result);
      return false;
    }
    /* acquire: a canceller must see the task's fields; pairs with submit's release */
  } while (!atomic_compare_exchange_weak_explicit(&f->state, &s, (s & ~AB__PHASE) | AB__COMPLETING,
                                                  memory_order_acquire, memory_order_relaxed));
  f->status = status;
  f->result = result;
  count_completion(f, status); /* before DONE: a waiter that wakes sees the counters moved */
  /* seq_cst (release at least: status and result before DONE; seq_cst for wait_any, see the
   * design notes). The exchange returns any WAITERS set meanwhile. */
  uint32_t old = atomic_exchange(&f->state, AB__DONE);
  AB__ASSERT((old & AB__PHASE) == AB__COMPLETING); /* only the winner of the CAS writes DONE */
  if (old & AB__WAITERS) ab__futex_wake_all(&f->state);
  wake_any_waiters(f->rt);
  run_callbacks(f);
  if (f->counted) ab__inflight_done(f->rt);
  return true;
}

static bool is_done(const ab_future *f) {
  /* acquire: pairs with the completer's release so status and result are visible */
  return (atomic_load_explicit(&f->state, memory_order_acquire) & AB__PHASE) == AB__DONE;
}

/* What a future that is not complete says about it: it will be (AB_EPENDING), or it never can
 * be here, since its runtime's workers stayed in the parent of a fork (AB_ESHUTDOWN). */
static int not_done_status(const ab_future *f) { return ab__forked(f->rt) ? AB_ESHUTDOWN : AB_EPENDING; }

int ab_future_status(const ab_future *f) {
  if (f == NULL) return AB_EINVAL;
  return is_done(f) ? f->status : not_done_status(f);
}

int ab_future_result(ab_future *f, ab_tensor **out) {
  if (f == NULL || out == NULL) return AB_EINVAL;
  *out = NULL;
  if (!is_done(f)) return not_done_status(f);
  if (f->status == 0 && f->result) *out = ab_tensor_retain(f->result);
  return f->status;
}

const char *ab_future_message(const ab_future *f) {
  if (f == NULL) return NULL;
  if (!is_done(f)) return ab__forked(f->rt) ? forked_message : NULL;
  return f->message;
}

/* Only the calling thread could complete f, so waiting for it would never end: it is this
 * worker's running task, or its stream work waits in this worker's pending ring, or it is
 * queued, parked or due on this worker's device, which has no other worker. (A cancel from
 * another thread could still end such a wait; nothing else could.) */
static bool waits_for_itself(const ab_future *f) {
  const ab__worker *w = ab__current_worker;
  if (w == NULL || w->dev->rt != f->rt) return false;
  if (f == ab__running_task) return true;
  for (int i = 0; i < w->npending; i++) /* the ring is this thread's own */
    if (w->pending[(w->pending_head + i) % AB__PENDING_MAX].task == f) return true;
  /* relaxed: a hint, as the device may still change (only this thread would change it) */
  uint32_t s = atomic_load_explicit(&f->state, memory_order_relaxed);
  return (s & AB__PHASE) == AB__PENDING && ab__task_dev(f) == w->dev && w->dev->nworkers == 1;
}

/* 0 if waiting for f (not complete) may end, else the code the wait fails with at once:
 * AB_ESHUTDOWN for an inherited runtime's future, AB_EBUSY (blocking waits only) for one that
 * only this thread could complete. */
static int cannot_complete(const ab_future *f, bool blocking) {
  if (ab__forked(f->rt)) return AB_ESHUTDOWN;
  if (blocking && waits_for_itself(f)) return AB_EBUSY;
  return 0;
}

/* Polls briefly before sleeping: most small tasks finish in less time than a futex round trip.
 * A few pauses, then yields: a pure spin would hold the core the worker needs when they share
 * one (4000 pauses, 110 us here, made a pinned round trip 12x slower). The yields stop after
 * SPIN_NS or at the deadline: with every core busy, each one may last a whole time slice
 * (32 of them made a 20 ms timeout return after 45). */
#define SPIN_NS 50000
static bool spin_until_done(const ab_future *f, int64_t deadline) {
  for (int i = 0; i < 128; i++) {
    if (is_done(f)) return true;
    ab__cpu_relax();
  }
  int64_t end = ab__now_ns() + SPIN_NS;
  if (deadline >= 0 && deadline < end) end = deadline;
  for (int i = 0; i < 32 && ab__now_ns() < end; i++) {
    sched_yield();
    if (is_done(f)) return true;
  }
  return is_done(f);
}

int ab_future_wait(ab_future *f, int64_t timeout_ns) {
  if (f == NULL) return AB_EINVAL;
  if (is_done(f)) return 0;
  int stuck = cannot_complete(f, timeout_ns != 0);
  if (stuck != 0) return stuck;
  if (timeout_ns == 0) return AB_ETIMEDOUT;
  int64_t deadline = ab__deadline_after(timeout_ns);
  if (spin_until_done(f, deadline)) return 0;
  for (;;) {
    uint32_t s = atomic_load_explicit(&f->state, memory_order_acquire);
    if ((s & AB__PHASE) == AB__DONE) return 0;
    if (deadline >= 0 && ab__now_ns() >= deadline) return AB_ETIMEDOUT;
    /* relaxed: the flag only asks for a wake-up; DONE is re-read with acquire above */
    if (!(s & AB__WAITERS) &&
        !atomic_compare_exchange_weak_explicit(&f->state, &s, s | AB__WAITERS, memory_order_relaxed,
                                               memory_order_relaxed))
      continue;
    ab__futex_wait(&f->state, s | AB__WAITERS, deadline);
  }
}

int ab__then_internal(ab_future *f, ab__cb *node) {
  ab__cb *head = atomic_load_explicit(&f->cbs, memory_order_acquire);
  for (;;) {
    if (head == CLOSED) { /* already complete: run now, on this thread */
      run_callback(f, node);
      if (node->heap) ab__free(&f->rt->alloc, node);
      return 0;
    }
    node->next = head;
    /* release: the node's fields before the completer reads them */
    if (atomic_compare_exchange_weak_explicit(&f->cbs, &head, node, memory_order_release,
                                              memory_order_acquire))
      return 0;
  }
}

int ab_future_then(ab_future *f, void (*cb)(ab_future *, void *), void *arg) {
  if (f == NULL || cb == NULL) return AB_EINVAL;
  if (!is_done(f) && ab__forked(f->rt)) return AB_ESHUTDOWN; /* it would never run */
  ab__cb *node = &f->inline_cb;
  int expected = 0;
  /* relaxed: the flag only hands out the inline node; the list push publishes it */
  if (!atomic_compare_exchange_strong_explicit(&f->inline_cb_used, &expected, 1,
                                               memory_order_relaxed, memory_order_relaxed)) {
    node = ab__malloc(&f->rt->alloc, sizeof *node);
    if (node == NULL) return AB_ENOMEM;
    node->heap = true;
  } else {
    node->heap = false;
  }
  node->fn = cb;
  node->arg = arg;
  return ab__then_internal(f, node);
}

int ab_future_cancel(ab_future *f) {
  if (f == NULL) return AB_EINVAL;
  if (ab__forked(f->rt)) return is_done(f) ? AB_EALREADY : AB_ESHUTDOWN; /* no lock of it is safe here */
  uint32_t s = atomic_load_explicit(&f->state, memory_order_relaxed);
  for (;;) {
    switch (s & AB__PHASE) {
    case AB__PENDING:
      if (ab__complete(f, AB_ECANCELED, NULL, AB__PENDING)) {
        ab__park_cancelled(f); /* if it was parked, have it dropped now, not at its retry */
        return 0;
      }
      break;
    case AB__RUNNING:
      /* relaxed: the running task polls the flag; nothing else is published with it */
      if (atomic_compare_exchange_weak_explicit(&f->state, &s, s | AB__CANCEL_REQ,
                                                memory_order_relaxed, memory_order_relaxed))
        return AB_EBUSY;
      continue;
    default:
      return AB_EALREADY;
    }
    s = atomic_load_explicit(&f->state, memory_order_relaxed);
  }
}

int ab_future_wait_all(ab_future *const *fs, size_t n, int64_t timeout_ns) {
  if (fs == NULL && n > 0) return AB_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (fs[i] == NULL) return AB_EINVAL;
  int64_t deadline = ab__deadline_after(timeout_ns);
  for (size_t i = 0; i < n; i++) {
    int64_t left = deadline < 0 ? -1 : deadline - ab__now_ns();
    if (deadline >= 0 && left < 0) left = 0;
    int rc = ab_future_wait(fs[i], left);
    if (rc != 0) return rc;
  }
  return 0;
}

static bool find_done(ab_future *const *fs, size_t n, size_t *which) {
  for (size_t i = 0; i < n; i++)
    /* seq_cst: pairs with the completer's exchange (see the design notes) */
    if ((atomic_load(&fs[i]->state) & AB__PHASE) == AB__DONE) {
      if (which) *which = i;
      return true;
    }
  return false;
}

/* Futures of other runtimes bump their own runtime's word, not the one this waiter sleeps on:
 * with a mix, it looks again at least this often. */
#define MIXED_POLL_NS 1000000

int ab_future_wait_any(ab_future *const *fs, size_t n, int64_t timeout_ns, size_t *which) {
  if (fs == NULL || n == 0) return AB_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (fs[i] == NULL) return AB_EINVAL;
  if (find_done(fs, n, which)) return 0;
  /* sleep on the word of a runtime whose futures can complete; fail if none can */
  ab_runtime *rt = NULL;
  int stuck = 0;
  for (size_t i = 0; i < n && rt == NULL; i++) {
    int why = cannot_complete(fs[i], timeout_ns != 0);
    if (why == 0) rt = fs[i]->rt;
    else if (stuck != AB_ESHUTDOWN) stuck = why;
  }
  if (rt == NULL) return stuck;
  if (timeout_ns == 0) return AB_ETIMEDOUT;
  int64_t deadline = ab__deadline_after(timeout_ns);
  bool mixed = false;
  for (size_t i = 0; i < n && !mixed; i++) mixed = fs[i]->rt != rt;
  atomic_fetch_add(&rt->any_waiters, 1); /* seq_cst: see the design notes */
  int rc = 0;
  for (;;) {
    /* acquire: a bump read here comes after its DONE, which find_done then sees */
    uint32_t gen = atomic_load_explicit(&rt->done_gen, memory_order_acquire);
    if (find_done(fs, n, which)) break;
    int64_t now = ab__now_ns();
    if (deadline >= 0 && now >= deadline) {
      rc = AB_ETIMEDOUT;
      break;
    }
    int64_t until = deadline;
    if (mixed && (until < 0 || until > now + MIXED_POLL_NS)) until = now + MIXED_POLL_NS;
    ab__futex_wait(&rt->done_gen, gen, until);
  }
  atomic_fetch_sub_explicit(&rt->any_waiters, 1, memory_order_relaxed); /* only stops the bumps */
  return rc;
}
