/*
 * python/src/tasks.c: Python tasks on the runtime's workers (Runtime.call): worker threads
 * entering Python, the GIL hand-off, batches of host tasks, resubmission after out-of-memory,
 * and settling each task's Python future exactly once.
 *
 * Design notes
 *   A Python task is a record (py_task) and a runtime compute task whose body, py_task_run,
 *   calls fn(*args, **kwargs) with the GIL held and settles fut, the Executor's future, through
 *   its methods (described at py_task below). When fn ran out of memory (fut._ab_raised says
 *   so), the body returns AB_ENOMEM: the runtime's OOM ladder parks the task and runs the body
 *   again later.
 *
 *   Who touches what. The GIL guards every Python object, a record's Python references (fut,
 *   fn, args, kwargs, and owner, its Runtime) and each Runtime's inline list; no thread waits
 *   on the runtime while holding it (module.c), so a worker waiting for it always gets it.
 *   - The submitting thread (Runtime.call, GIL held) makes the record, submits its task, puts
 *     a host task on its Runtime's inline list and registers py_task_done on the task's future.
 *   - The worker that pops the task runs py_task_run: it reads the record's state without the
 *     GIL (a hint that saves taking it for nothing), takes the GIL, claims the record and calls
 *     fn; on the host it then runs the inline list's queued records too (run_inline). A task
 *     whose record a batch or a cancel claimed first runs the list only (run_batch_only).
 *   - The thread that completes the task (its worker, a thread cancelling it or destroying the
 *     runtime, the caller of ab_future_then if it is complete already) runs py_task_done, which
 *     takes the GIL only to settle a future whose fn never ran or was given up on.
 *   - Future.cancel (GIL held) claims a queued record; the Executor then settles its future.
 *   - Closing a runtime drops what its inline list holds after the destroy: every task has
 *     completed then, and no record holds a Python reference (close_detached needs no GIL).
 *
 *   The claim protocol. A record leaves QUEUED by one compare-and-swap, so exactly one of its
 *   own task, a batch, a cancel or the task's completion wins it. Only the winner touches its
 *   Python references afterwards (for OWN, the task's completion too, once the task is over:
 *   below); the others see it claimed and leave it alone.
 *     QUEUED -> OWN -> DONE      its own task runs it; it stays OWN while parked for memory and
 *                                through every retry of the ladder
 *     QUEUED -> INLINE -> DONE   a batch runs it (out of memory: its references move to a new
 *                                record, submitted on its own in state OWN: py_task_resubmit)
 *     QUEUED -> CANCELLED        it never runs: Future.cancel, or the task ended first
 *   A record still OWN when its task completes was given up on (the ladder's end, shut down
 *   while parked): py_task_done settles its future with the task's status. Whoever settles
 *   fut then drops the record's Python references, so each future is settled exactly once.
 *
 *   Batches. Taking the GIL once per task, with the submitting thread and the other workers
 *   contending for it, cost more than small host tasks themselves. So a worker that holds the
 *   GIL for one host task goes on with the host tasks queued behind it (up to INLINE_BATCH, or
 *   for INLINE_NS), in submit order, from the inline list. Each still is its own runtime task,
 *   with its own future, placement and OOM ladder; whichever claims the record first runs it.
 *
 *   References. A record's refs count its owners: its runtime task (dropped by py_task_done,
 *   which runs exactly once), the FutureObject Runtime.call returns, and the inline list while
 *   it holds the record. The last one frees it. While a record holds its Python references it
 *   also holds one on its Runtime. The inline list is allocated apart from the Runtime and freed
 *   only after the runtime's destroy returns, so a task of that runtime may use its record's
 *   list even after the Runtime object is gone (a record a batch ran holds no reference).
 *
 *   Memory orders. The states are seq_cst, the default: a few operations per task, next to a
 *   GIL hand-off. The others:
 *   - refs is set to 2 relaxed before ab_submit, which publishes the record to the worker
 *     (the queue's release, the worker's acquire) and to the completion; and set back to 0
 *     relaxed after a failed submit, which published nothing.
 *   - The inline list's reference is added relaxed: the thread adding it holds two already, so
 *     the count cannot reach zero meanwhile, and the list itself is published by the GIL.
 *   - py_task_unref is acq_rel: each owner's writes to the record happen before it lets go
 *     (release), and the last owner sees them all before it frees the record (acquire).
 *   - An inline list's queued count is relaxed: a hint that a task with nothing of its own to
 *     run reads without the GIL, to decide whether to take it; the GIL orders the list.
 *   - gil_wait_gen, gil_wait_last_ns and gil_waiting are relaxed: hints that decide whether a
 *     worker spins for a few microseconds; the GIL orders everything that matters.
 *
 *   Invariants, checked by PY_ASSERT (common.h): a record is submitted with no owners yet, QUEUED
 *   (or OWN, resubmitted); refs never drops below zero; a record runs only with its Python
 *   references; only the holder of an OWN or INLINE claim marks a record DONE; an inline list's
 *   head and tail are both set or both NULL.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "common.h"
#include "future.h"
#include "tasks.h"

_Thread_local ab_ctx *tls_ctx; /* the compute task this worker thread is running */

/* ---- worker threads entering Python --------------------------------------------------------- */
/* PyGILState_Ensure on a thread Python did not create makes a new thread state each time and
 * Release destroys it: about 10 us a task. A worker keeps one thread state for its lifetime
 * instead (created by the first Ensure, whose count is never released), and a thread-exit
 * destructor deletes it. Other Ensure/Release pairs on the thread (a deleter run by the
 * runtime) find that state and leave it alone. */
static pthread_key_t tstate_key;

static void tstate_destroy(void *p) {
  if (!Py_IsInitialized() || Py_IsFinalizing()) return; /* the interpreter is gone or going */
  PyEval_RestoreThread((PyThreadState *)p);
  PyThreadState_Clear((PyThreadState *)p);
  PyThreadState_DeleteCurrent();
}

_Thread_local int on_worker; /* this thread is a runtime worker (it ran Python tasks) */

static PyThreadState *enter_python(void) {
  on_worker = 1;
  PyThreadState *ts = pthread_getspecific(tstate_key);
  if (ts != NULL) {
    PyEval_RestoreThread(ts);
    return ts;
  }
  PyGILState_Ensure(); /* never released: the state outlives this task */
  ts = PyThreadState_Get();
  pthread_setspecific(tstate_key, ts);
  return ts;
}

static void leave_python(void) { PyEval_SaveThread(); }

/* The GIL hand-off in a submit -> result() round trip. The worker pops the task while the
 * submitting thread still holds the GIL (it is on its way to result()), so the worker blocks on
 * the GIL's condition variable and pays a futex wake-up (5-20 us here) when result() releases
 * it. Instead, a worker spins for a few microseconds when a thread released the GIL to wait on
 * a future recently (a round-trip pattern), until the next such release. In a throughput
 * pattern nobody waits on single futures, the last release is old, and workers do not spin.
 * Nor does a worker that comes after the release, when a waiter is in wait() already: the GIL
 * may well be free, and with the waiter's thread on the worker's core (a 2-core machine with
 * three busy threads) it surely was, so that each round trip spun the whole 20 us for
 * nothing (33 us a round trip pinned to one core, 9.5 us now; 10 -> 6.7 us on two). */
static _Atomic uint64_t gil_wait_gen;    /* bumped by a thread that released the GIL in wait() */
static _Atomic int64_t gil_wait_last_ns; /* when */
static _Atomic int gil_waiting;          /* threads in wait() now, the GIL released */
#define GIL_SPIN_RECENT_NS 200000
#define GIL_SPIN_MAX_NS 20000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

void waiter_released_gil(bool first) {
  /* relaxed: hints for the spin below; the GIL itself orders everything that matters */
  atomic_fetch_add_explicit(&gil_waiting, 1, memory_order_relaxed);
  if (!first) return; /* the same wait, after a look at the signals */
  atomic_fetch_add_explicit(&gil_wait_gen, 1, memory_order_relaxed);
  atomic_store_explicit(&gil_wait_last_ns, mono_ns(), memory_order_relaxed);
}

void waiter_wants_gil(void) { atomic_fetch_sub_explicit(&gil_waiting, 1, memory_order_relaxed); /* a hint */ }

static void spin_for_gil_handoff(void) {
  int64_t now = mono_ns();
  if (now - atomic_load_explicit(&gil_wait_last_ns, memory_order_relaxed) > GIL_SPIN_RECENT_NS) return;
  uint64_t gen = atomic_load_explicit(&gil_wait_gen, memory_order_relaxed);
  for (int i = 0;; i++) {
    if (atomic_load_explicit(&gil_wait_gen, memory_order_relaxed) != gen ||
        atomic_load_explicit(&gil_waiting, memory_order_relaxed) > 0)
      return;
    cpu_relax();
    if ((i & 63) == 63 && mono_ns() - now > GIL_SPIN_MAX_NS) return;
  }
}

_Thread_local int in_runtime_thread; /* see SUBMIT_BLOCKING (tasks.h) */

/* ---- Python tasks ---------------------------------------------------------------------------- */
/* A task that calls fn(*args, **kwargs) on a worker and settles `fut`, a Python future with
 * four methods (python/arraybridge/executor.py):
 *   fut._ab_settle(result)           fn returned
 *   fut._ab_raised(exc) -> bool      fn raised; True asks for a retry through the OOM ladder
 *   fut._ab_end(status, message)     the task ended without fn returning or raising for good
 *                                    (cancelled, out of memory at the ladder's end, shut down)
 *   fut._ab_retry()                  fn is about to run again after _ab_raised asked for it
 * Before the first call fut._state must still be "PENDING" (it becomes "RUNNING"); anything
 * else means Python cancelled it first and fn is not called. */
/* A record's states (atomic: py_task_run and py_task_done read them without the GIL): the claim
 * protocol of the design notes. */
enum { PT_QUEUED, PT_OWN, PT_INLINE, PT_DONE, PT_CANCELLED };
#define INLINE_BATCH 256
#define INLINE_NS 1000000

struct py_task {
  PyObject *fut, *fn, *args, *kwargs; /* cleared (under the GIL) once fut is settled */
  _Atomic int state;
  _Atomic int refs;                   /* its runtime task, the inline list, its FutureObject */
  int started;                        /* fut marked RUNNING already */
  int host;                           /* on the host: may run in a batch */
  RuntimeObject *owner;               /* its Runtime; a reference while the record is live
                                         (cleared with fut: use it only while fut is set, or
                                         under a reference of one's own) */
  inline_list *inl;                   /* owner's list: valid while its runtime task is */
  struct py_task *next;
};

static PyObject *s_state, *s_pending, *s_running, *s_settle, *s_raised, *s_retry, *s_end, *s_finished, *s_result,
    *s_condition, *s_lock, *s_waiters, *s_w, *s_cb, *s_acquire, *s_release;

/* The common case of fut._ab_settle(result), without running Python code: nobody waits on the
 * future's condition and no callback is registered, so settling is two attribute writes under
 * the condition's lock (taken without blocking; any doubt falls back to _ab_settle). The lock
 * matters: concurrent.futures.wait() checks states and installs waiters while holding it. */
static int empty_or_none(PyObject *o) { return o == Py_None || (PyList_Check(o) && PyList_GET_SIZE(o) == 0); }

static int settle_fast(PyObject *fut, PyObject *result) {
  int done = 0;
  PyObject *cond = PyObject_GetAttr(fut, s_condition);
  PyObject *lock = cond ? PyObject_GetAttr(cond, s_lock) : NULL;
  PyObject *got = lock ? PyObject_CallMethodOneArg(lock, s_acquire, Py_False) : NULL;
  if (got == Py_True) {
    /* fut._w and fut._cb: None until someone waits or adds a callback (executor.py) */
    PyObject *w = PyObject_GetAttr(fut, s_w), *cw = PyObject_GetAttr(cond, s_waiters),
             *cb = PyObject_GetAttr(fut, s_cb);
    if (w && cw && cb && empty_or_none(w) && PyObject_Length(cw) == 0 && empty_or_none(cb) &&
        PyObject_SetAttr(fut, s_result, result) == 0 && PyObject_SetAttr(fut, s_state, s_finished) == 0)
      done = 1;
    Py_XDECREF(w);
    Py_XDECREF(cw);
    Py_XDECREF(cb);
    PyObject *r = PyObject_CallMethodNoArgs(lock, s_release);
    Py_XDECREF(r);
  }
  Py_XDECREF(got);
  Py_XDECREF(lock);
  Py_XDECREF(cond);
  PyErr_Clear(); /* any failure above just means the slow path */
  return done;
}

static void py_task_clear(py_task *p) {
  if (p->fut != NULL) Py_DECREF(p->owner); /* the record's reference goes with its Python ones */
  Py_CLEAR(p->fut);
  Py_CLEAR(p->fn);
  Py_CLEAR(p->args);
  Py_CLEAR(p->kwargs);
}

void py_task_unref(py_task *p) {
  /* acq_rel: the last owner sees every write the others made before letting go */
  int was = atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel);
  PY_ASSERT(was >= 1); /* each owner lets go once */
  if (was == 1) PyMem_RawFree(p);
}

static bool holds_claim(py_task *p) {
  /* relaxed: only a check, by a thread that has seen the claim (made it, or loaded it) */
  int st = atomic_load_explicit(&p->state, memory_order_relaxed);
  return st == PT_OWN || st == PT_INLINE;
}

/* The claim's holder (its own task or a batch) is done with the record: fut settled, the Python
 * references dropped or moved. */
static void py_task_finish(py_task *p) {
  PY_ASSERT(holds_claim(p)); /* nobody else marks a record done */
  atomic_store(&p->state, PT_DONE);
}

/* Claims a queued record for `to`; false if someone else did first. */
static bool py_task_claim(py_task *p, int to) {
  int expect = PT_QUEUED;
  return atomic_compare_exchange_strong(&p->state, &expect, to);
}

/* With the GIL: a task that will never run. Its Python future is the caller's to settle. */
int py_task_cancel(py_task *p) {
  if (py_task_claim(p, PT_CANCELLED)) {
    py_task_clear(p);
    return 0;
  }
  return atomic_load(&p->state) == PT_DONE ? AB_EALREADY : AB_EBUSY;
}

/* Marks fut running; 0 if it was no longer pending (cancelled from Python). */
static int py_task_start(py_task *p) {
  PyObject *state = PyObject_GetAttr(p->fut, s_state);
  if (state == NULL) return -1;
  int pending = PyUnicode_Check(state) && PyUnicode_Compare(state, s_pending) == 0;
  Py_DECREF(state);
  if (!pending) return 0;
  return PyObject_SetAttr(p->fut, s_state, s_running) == 0 ? 1 : -1;
}

/* The raised exception as one object, its traceback attached (PyErr_GetRaisedException of 3.12). */
static PyObject *fetch_exception(void) {
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != NULL) PyException_SetTraceback(value, tb);
  Py_XDECREF(type);
  Py_XDECREF(tb);
  return value;
}

/* The future's own methods failed (a bug, or MemoryError in them): report it, and still settle
 * the future, or its waiters would wait for ever. */
static void py_task_broken(py_task *p) {
  PyErr_WriteUnraisable(p->fut);
  PyObject *r = PyObject_CallMethod(p->fut, "_ab_end", "is", AB_EINVAL, "arraybridge could not settle this future");
  if (r == NULL) PyErr_WriteUnraisable(p->fut);
  Py_XDECREF(r);
}

/* Calls fn and settles fut; returns 0, or AB_ENOMEM to be parked and called again. */
static int py_task_call(py_task *p) {
  PY_ASSERT(p->fut != NULL); /* a record runs only with its Python references */
  if (!p->started) {
    p->started = 1;
    int go = py_task_start(p);
    if (go <= 0) return go < 0 ? AB_EINVAL : 0;
  } else { /* a retry: the future clears caches now, after the ladder's deadline began */
    PyObject *r = PyObject_CallMethodNoArgs(p->fut, s_retry);
    if (r == NULL) PyErr_WriteUnraisable(p->fut); /* only a cache clearing lost: fn still runs */
    Py_XDECREF(r);
  }
  PyObject *r = PyObject_Call(p->fn, p->args, p->kwargs);
  if (r != NULL) {
    if (settle_fast(p->fut, r)) {
      Py_DECREF(r);
      return 0;
    }
    PyObject *ok = PyObject_CallMethodOneArg(p->fut, s_settle, r);
    Py_DECREF(r);
    if (ok == NULL) return AB_EINVAL;
    Py_DECREF(ok);
    return 0;
  }
  PyObject *exc = fetch_exception();
  PyObject *retry = PyObject_CallMethodOneArg(p->fut, s_raised, exc);
  Py_DECREF(exc);
  if (retry == NULL) return AB_EINVAL;
  int again = PyObject_IsTrue(retry);
  Py_DECREF(retry);
  return again == 1 ? AB_ENOMEM : 0;
}

static PyObject *future_for_task(ab_future *f, RuntimeObject *rt, py_task *p);
static int py_task_submit(RuntimeObject *self, py_task *p, ab_place *place, int try_only, uint32_t flags,
                          ab_future **out);

/* A batch-run task asked for memory: its own runtime task has ended (or will find the record
 * claimed), so it goes back to the runtime as a new task, straight into the OOM ladder
 * (AB_TASK_OOM_RETRY): parked from the submit, its retries ahead of the queue and its deadline
 * counted from now, the failure just seen. Submitted as an ordinary task, it waited behind the
 * whole queue for its first retry (seconds of work, under load) and missed its deadline by as
 * much. With the GIL. */
static void py_task_resubmit(py_task *p) {
  PyObject *fut = Py_NewRef(p->fut); /* ours: q's may be cleared once q runs */
  py_task *q = PyMem_RawMalloc(sizeof *q);
  ab_future *f = NULL;
  int rc = AB_ENOMEM;
  if (q != NULL) {
    *q = (py_task){.fut = p->fut, .fn = p->fn, .args = p->args, .kwargs = p->kwargs, .started = 1,
                   .owner = p->owner, .inl = p->inl}; /* the owner reference moves with fut */
    atomic_init(&q->state, PT_OWN);
    atomic_init(&q->refs, 0);
    q->host = 0; /* it walks the ladder as its own task; never batched again */
    p->fut = p->fn = p->args = p->kwargs = NULL; /* moved */
    /* A task in the ladder never waits for queue space: TRY only says that this worker, which
     * holds the GIL, must not block. */
    ab_place place = {.policy = AB_PLACE_AUTO, .device = {AB_HOST, AB_ANY}, .mode = AB_SUBMIT_TRY};
    rc = p->owner->rt && !p->owner->closing ? py_task_submit(p->owner, q, &place, 1, AB_TASK_OOM_RETRY, &f)
                                            : AB_ESHUTDOWN;
  }
  if (rc == 0) {
    PyObject *fo = future_for_task(f, p->owner, q);
    if (fo == NULL || PyObject_SetAttrString(fut, "_task", fo) != 0)
      PyErr_WriteUnraisable(fut); /* the task runs; only result()'s wait on it is lost */
    Py_XDECREF(fo);
    Py_DECREF(fut);
    return;
  }
  PyErr_Clear();
  PyObject *r = PyObject_CallMethod(fut, "_ab_end", "is", AB_ENOMEM,
                                    rc == AB_ESHUTDOWN ? "out of memory while the runtime shuts down"
                                                       : "out of memory; the retry could not be submitted");
  if (r == NULL) PyErr_WriteUnraisable(fut);
  Py_XDECREF(r);
  Py_DECREF(fut);
  if (q && atomic_load(&q->refs) == 0) { /* not submitted */
    py_task_clear(q);
    PyMem_RawFree(q);
  } else if (!q) {
    py_task_clear(p);
  }
}

/* With the GIL: the queued host tasks, in submit order, until the batch's budget is spent. */
static void run_inline(inline_list *l, ab_ctx *ctx) {
  int64_t start = mono_ns();
  for (int n = 0; n < INLINE_BATCH && l->head != NULL; n++) {
    if ((n & 15) == 15 && mono_ns() - start > INLINE_NS) break;
    if (ab_ctx_cancelled(ctx)) break;
    py_task *p = l->head;
    l->head = p->next;
    if (l->head == NULL) l->tail = NULL;
    PY_ASSERT((l->head == NULL) == (l->tail == NULL));
    atomic_fetch_sub_explicit(&l->queued, 1, memory_order_relaxed); /* a hint; the GIL orders the list */
    if (py_task_claim(p, PT_INLINE)) {
      int rc = py_task_call(p);
      if (rc == AB_EINVAL) py_task_broken(p);
      if (rc == AB_ENOMEM) py_task_resubmit(p);
      else py_task_clear(p);
      py_task_finish(p);
    }
    py_task_unref(p); /* the list's reference */
  }
}

/* Whether this task's worker should run the host records queued behind it. */
static bool batches_here(const py_task *p, ab_ctx *ctx) {
  return p->host && ab_ctx_device(ctx).kind == AB_HOST;
}

/* For a record claimed by a batch or a cancel: its owner may be gone already, so only its list
 * (alive while this task is) is touched. While host records wait there, this worker takes the
 * batch over: a worker that found nothing of its own to do is the one with time for them. */
static int run_batch_only(py_task *p, ab_ctx *ctx, bool have_gil) {
  /* relaxed: a hint; run_inline reads the list itself under the GIL */
  bool waiting = batches_here(p, ctx) && atomic_load_explicit(&p->inl->queued, memory_order_relaxed) > 0;
  if (!waiting) {
    if (have_gil) leave_python();
    return 0;
  }
  if (!have_gil) {
    spin_for_gil_handoff();
    enter_python();
  }
  tls_ctx = ctx;
  in_runtime_thread = 1;
  run_inline(p->inl, ctx);
  in_runtime_thread = 0;
  tls_ctx = NULL;
  leave_python();
  return 0;
}

static int py_task_run(ab_ctx *ctx, void *arg) {
  py_task *p = arg;
  /* A record already run in a batch, or cancelled, needs nothing of its own: no GIL unless
   * there is a batch to run. (Read without the GIL, so only a hint; the claim below decides.) */
  int st = atomic_load(&p->state);
  if (st != PT_QUEUED && st != PT_OWN) return run_batch_only(p, ctx, false);
  spin_for_gil_handoff();
  enter_python();
  int rc = 0;
  if (!py_task_claim(p, PT_OWN) && atomic_load(&p->state) != PT_OWN)
    return run_batch_only(p, ctx, true); /* claimed meanwhile by a batch or a cancel */
  /* ours (first run, or a retry after out-of-memory): the record is live, so is its owner */
  RuntimeObject *owner = p->owner;
  Py_INCREF(owner); /* whatever the task drops, the object stays until we are done */
  tls_ctx = ctx;
  in_runtime_thread = 1;
  rc = py_task_call(p);
  if (rc == AB_EINVAL) py_task_broken(p);
  if (rc != AB_ENOMEM) {
    py_task_clear(p);
    py_task_finish(p);
  }
  if (rc != AB_ENOMEM && batches_here(p, ctx)) run_inline(p->inl, ctx);
  in_runtime_thread = 0;
  tls_ctx = NULL;
  Py_DECREF(owner); /* may be the last reference: runtime_dealloc knows it runs on a worker */
  leave_python();
  return rc;
}

/* Runs exactly once per task, after it completes (contract point 5). A task that ended without
 * running its function (cancelled by the runtime, out of memory at the ladder's end, shut
 * down) settles its Python future here; one that ran it, here or in a batch, already did. */
static void py_task_done(ab_future *f, void *arg) {
  py_task *p = arg;
  bool never_ran = py_task_claim(p, PT_CANCELLED);
  /* OWN after completion: the ladder gave up on it (a retry would have left it running) */
  if ((never_ran || atomic_load(&p->state) == PT_OWN) && Py_IsInitialized() && !Py_IsFinalizing()) {
    PyGILState_STATE g = PyGILState_Ensure();
    const char *msg = ab_future_message(f);
    int status = ab_future_status(f);
    int outer = in_runtime_thread; /* the future's callbacks run here: they must not block */
    in_runtime_thread = 1;
    if (p->fut != NULL) {
      PyObject *r = PyObject_CallMethod(p->fut, "_ab_end", "is", status ? status : AB_ECANCELED, msg ? msg : "");
      if (r == NULL) PyErr_WriteUnraisable(p->fut);
      Py_XDECREF(r);
    }
    in_runtime_thread = outer;
    py_task_clear(p);
    if (!never_ran) py_task_finish(p);
    PyGILState_Release(g);
  }
  py_task_unref(p);
}

/* After destroy every task has completed: what is left in the inline list ran or was cancelled,
 * and holds no Python references (no GIL needed). */
void inline_list_free(inline_list *l) {
  if (l == NULL) return;
  for (py_task *p = l->head, *next; p != NULL; p = next) {
    next = p->next;
    py_task_unref(p);
  }
  PyMem_RawFree(l);
}

void inline_list_drop(RuntimeObject *self) {
  inline_list_free(self->inl);
  self->inl = NULL;
}

/* The FutureObject for a submitted record; it takes the reference py_task_submit made for it. */
static PyObject *future_for_task(ab_future *f, RuntimeObject *rt, py_task *p) {
  PyObject *o = future_new_from(f, (PyObject *)rt);
  if (o == NULL) {
    py_task_unref(p);
    return NULL;
  }
  ((FutureObject *)o)->task = p;
  return o;
}

/* Submits p's runtime task. p's references, all taken before the task can complete: its task's
 * (released by py_task_done), the inline list's for host tasks, and one for the caller's
 * FutureObject (future_for_task). With the GIL. */
static int py_task_submit(RuntimeObject *self, py_task *p, ab_place *place, int try_only, uint32_t flags,
                          ab_future **out) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.flags = flags;
  d.place = *place;
  d.fn = py_task_run;
  d.arg = p;
  d.name = "python"; /* traces show Python tasks under one label (names must be static) */
  /* relaxed: nobody else sees p yet; new (QUEUED) or moved out of a batch (OWN, started) */
  PY_ASSERT(atomic_load_explicit(&p->refs, memory_order_relaxed) == 0);
  PY_ASSERT(atomic_load_explicit(&p->state, memory_order_relaxed) == (p->started ? PT_OWN : PT_QUEUED));
  atomic_store_explicit(&p->refs, 2, memory_order_relaxed); /* nobody else sees p yet */
  int rc;
  SUBMIT_BLOCKING(d.place, ab_submit(self->rt, &d, out));
  if (rc != 0) {
    atomic_store_explicit(&p->refs, 0, memory_order_relaxed); /* never seen: the caller frees it */
    return rc;
  }
  if (p->host && atomic_load(&p->state) == PT_QUEUED) { /* the GIL guards the list */
    atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed); /* p is live: we hold two */
    p->next = NULL;
    inline_list *l = self->inl;
    PY_ASSERT(l == p->inl && (l->head == NULL) == (l->tail == NULL));
    if (l->tail) l->tail->next = p;
    else l->head = p;
    l->tail = p;
    atomic_fetch_add_explicit(&l->queued, 1, memory_order_relaxed); /* a hint; the GIL orders the list */
  }
  rc = ab_future_then(*out, py_task_done, p);
  if (rc != 0) {
    /* Only the allocator can fail here. The task is queued and must not end without anyone
     * settling its future: cancel it, wait for it (it may have started), then do what its
     * completion callback would have done (settle the future if it never ran, drop the task's
     * reference). The caller still gets its future. */
    ab_future_cancel(*out);
    Py_BEGIN_ALLOW_THREADS ab_future_wait(*out, -1);
    Py_END_ALLOW_THREADS
    py_task_done(*out, p);
  }
  return 0;
}

/* A Python task: fut settled with fn(*args, **kwargs) (kwargs may be NULL), run where place says.
 * The Future of its runtime task, or NULL with an exception set. With the GIL. */
PyObject *tasks_call(RuntimeObject *self, PyObject *fut, PyObject *fn, PyObject *args, PyObject *kwargs,
                     ab_place *place, int try_only) {
  py_task *p = PyMem_RawMalloc(sizeof *p);
  if (p == NULL) return PyErr_NoMemory();
  Py_INCREF(self); /* the record's, dropped by py_task_clear */
  *p = (py_task){.fut = Py_NewRef(fut), .fn = Py_NewRef(fn), .args = Py_NewRef(args), .kwargs = Py_XNewRef(kwargs),
                 .owner = self, .inl = self->inl, .host = place->device.kind == AB_HOST && place->policy != AB_PLACE_EXPLICIT};
  atomic_init(&p->state, PT_QUEUED);
  atomic_init(&p->refs, 0);
  ab_future *f;
  int rc = py_task_submit(self, p, place, try_only, 0, &f);
  if (rc != 0) {
    if (atomic_load(&p->refs) == 0) { /* never submitted: nobody else has it */
      py_task_clear(p);
      PyMem_RawFree(p);
    }
    return PyErr_Occurred() ? NULL : raise_ab(rc, "submit", NULL);
  }
  return future_for_task(f, self, p);
}

int tasks_init(void) {
  if (pthread_key_create(&tstate_key, tstate_destroy) != 0) {
    PyErr_NoMemory();
    return -1;
  }
  if (!(s_state = PyUnicode_InternFromString("_state")) || !(s_pending = PyUnicode_InternFromString("PENDING")) ||
      !(s_running = PyUnicode_InternFromString("RUNNING")) || !(s_settle = PyUnicode_InternFromString("_ab_settle")) ||
      !(s_raised = PyUnicode_InternFromString("_ab_raised")) || !(s_retry = PyUnicode_InternFromString("_ab_retry")) ||
      !(s_end = PyUnicode_InternFromString("_ab_end")) ||
      !(s_finished = PyUnicode_InternFromString("FINISHED")) || !(s_result = PyUnicode_InternFromString("_result")) ||
      !(s_condition = PyUnicode_InternFromString("_condition")) || !(s_lock = PyUnicode_InternFromString("_lock")) ||
      !(s_waiters = PyUnicode_InternFromString("_waiters")) ||
      !(s_w = PyUnicode_InternFromString("_w")) || !(s_cb = PyUnicode_InternFromString("_cb")) ||
      !(s_acquire = PyUnicode_InternFromString("acquire")) || !(s_release = PyUnicode_InternFromString("release")))
    return -1;
  return 0;
}
