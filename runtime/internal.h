/*
 * runtime/internal.h: the runtime's own structures. Nothing here is public.
 *
 * Map of the runtime (one job per file):
 *   runtime.c    create/destroy, device discovery, stats, fault injection, kind names
 *   task.c       submission: validation, inputs, dependencies, backpressure; ab_submit
 *   placement.c  which device runs a task
 *   future.c     the future's state machine: completion, waiting, callbacks, cancel
 *   worker.c     the worker loop: pop, claim, run, complete
 *   ctx.c        the task context a body sees (ab_ctx_*)
 *   memory.c     per-device budgets, frees, fault injection
 *   oom.c        the OOM ladder, all seven steps, and the parked tasks
 *   convert.c    ab_convert, the conversion task, and the planner that picks a move's path
 *   stack.c      ab_stack, ab_unstack, and the stacking task
 *   fill.c       plain host slices straight into a new tensor, by a crew of host workers
 *   tensor.c     refcounted tensors, views; dlpack.c validation, import, export
 *   pool.c       fixed-size object pools (futures, tensors) with a lock-free free list
 *   errors.c     error names and texts, the thread's device note; trace.c the Chrome trace
 *   ../platform/ clocks, futexes, ck_ec ops, the allocation hook, debug checks, lock ranks
 *   ../queue/    the bounded per-device queue; ../devices/ the backends behind one ops table
 */
#ifndef AB_RUNTIME_INTERNAL_H
#define AB_RUNTIME_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "arraybridge.h"
#include "platform/platform.h"
#include "queue/queue.h"

/* errors.c: the calling thread's note about the last backend call that failed ("" : none).
 * ab__device_error sets it (and prints it when AB_DEBUG is set); take returns a copy from a
 * (NULL: none, or no memory) and clears it. */
void ab__device_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ab__device_verror(const char *fmt, va_list ap);
void ab__device_error_clear(void);
const char *ab__device_error_peek(void);
char *ab__device_error_take(const ab_allocator *a);
bool ab__debug_env(void); /* AB_DEBUG is set (and not "0") */
/* code is one of AB_ERRNO_MAP's failures (AB_EPENDING is not: it means "not complete") */
bool ab__is_failure(int code);

/* ---- pool.c: fixed-size objects, never returned to the system before the pool dies ------- */
#define AB__POOL_SLAB 256
#define AB__POOL_MAX_SLABS 16384
typedef struct {
  _Atomic uint64_t head;          /* (tag << 32) | (index + 1); 0 in the low half: empty */
  size_t stride;                  /* bytes per entry, header included */
  const ab_allocator *alloc;
  pthread_mutex_t grow_lock;
  _Atomic uint32_t nslabs;
  char *slabs[AB__POOL_MAX_SLABS];
} ab__pool;

int ab__pool_init(ab__pool *p, size_t obj_size, const ab_allocator *a);
void ab__pool_fini(ab__pool *p);
void *ab__pool_get(ab__pool *p);  /* NULL: out of memory */
void ab__pool_put(ab__pool *p, void *obj);

/* ---- the device ops table (devices/device.h holds the contract; it names ab__device and
 * ab__worker, defined below) ------------------------------------------------------------------ */
#include "devices/device.h"

/* ---- memory.c ----------------------------------------------------------------------------- */
typedef struct {
  _Atomic uint64_t completed, failed, canceled, bytes_moved;
  _Atomic uint64_t oom_events, oom_trims, oom_syncs, oom_spills, oom_parks, oom_retries,
      oom_reroutes, oom_failures, faults_injected;
} ab__counters;

typedef struct {
  _Atomic int armed;
  _Atomic uint64_t seen[AB_FAULT_OPS];
  _Atomic uint64_t nth[AB_FAULT_OPS];   /* relaxed: published by armed's release */
  _Atomic int64_t count[AB_FAULT_OPS];
  _Atomic int64_t delay_ns;
} ab__faults;

/* ab_ctx_alloc blocks, freed when the task ends. The record lives on the host: the block
 * itself may be device memory (a cl_mem, a CUDA pointer) that the host cannot write. */
typedef struct ab__scratch {
  struct ab__scratch *next;       /* chain of full record blocks */
  int n;
  struct { void *base; size_t bytes; } blk[8];
} ab__scratch;

/* A task whose work is enqueued on a worker's stream and not yet done: it completes when its
 * event does, in order (the stream is in order). */
typedef struct {
  ab_future *task;
  ab_tensor *output;
  ab__scratch scratch;
  void *event;
  int64_t trace_t0, trace_t1;     /* body start and end when tracing, else 0 */
} ab__pending;

#define AB__PENDING_MAX 8

struct ab__worker {
  ab__device *dev;
  int index;                      /* in the device's pool; -1 for the transfer worker */
  pthread_t thread;
  bool started;
  void *backend;                  /* the backend's per-worker state: stream, arena */
  int npending, pending_head;     /* a ring, touched only by the worker's own thread */
  ab__pending pending[AB__PENDING_MAX];
  /* trace.c: this worker's event ring; written by its thread only, read after ab_trace_stop */
  struct ab__trace_rec *trace;
  uint32_t trace_mask;            /* capacity - 1 (a power of two) */
  uint64_t trace_head;            /* events ever written since start */
  _Atomic int trace_busy;         /* the thread is writing a record (stop waits for 0) */
  /* oom.c: bytes of the last allocation the ladder gave up on (0: none). A hint for parking;
   * atomic because user threads allocate through workers[0] too. */
  _Atomic size_t oom_need;
};

struct ab__device {
  ab_runtime *rt;
  ab_device id;
  int physical;                   /* index among the backend's physical devices */
  char name[64];
  const ab__device_ops *ops;
  void *backend;                  /* the backend's per-device state */
  bool opened;                    /* ops->open succeeded: close it */
  bool locks_made;                /* park_lock and xfer_lock exist */
  uint64_t memory_total;

  ab__queue queue;
  int nworkers;
  ab__worker *workers;
  /* A worker without a thread, for other devices' tasks that must read or write this device's
   * memory (a copy to the host, a transfer between devices); xfer_lock serialises them. */
  ab__worker xfer;
  pthread_mutex_t xfer_lock;

  uint64_t budget;                /* UINT64_MAX: unlimited */
  _Atomic uint64_t used, peak;
  _Atomic uint32_t freed_gen;     /* bumped on every free: parked tasks retry when it moves */

  pthread_mutex_t park_lock;      /* guards parked; AB__RANK_PARK */
  ab_future *parked;
  _Atomic uint32_t nparked;
  _Atomic int64_t park_due;       /* earliest retry time of a parked task (INT64_MAX: none; 0: now) */
  _Atomic uint32_t park_seen_gen; /* freed_gen at the last poll of the parked list */

  /* Written by submitters and workers alike: a cache line of their own. */
  _Alignas(64) _Atomic int64_t load_tasks; /* queued and running: least-loaded placement */
  _Atomic uint64_t load_bytes;    /* input bytes of queued and running tasks: backpressure */

  _Atomic uint64_t submitted;     /* written by submitters only */

  _Alignas(64) ab__faults faults;
  ab__counters stats;             /* written by workers */
};

/* Budget reservation and release (memory.c): AB_ENOMEM when the budget has no room. */
int ab__mem_reserve(ab__device *d, size_t bytes);
void ab__mem_unreserve(ab__device *d, size_t bytes);
/* oom.c: bytes on d through worker w (w's arena; w may be the device's first worker on another
 * thread), walking ladder steps 1-4 when they do not fit. */
int ab__mem_alloc(ab__device *d, ab__worker *w, size_t bytes, void **ptr);
void ab__mem_free(ab__device *d, void *ptr, size_t bytes);
/* The same for memory a DLPack consumer had (ops->free_shared: after that consumer's work). */
void ab__mem_free_shared(ab__device *d, void *ptr, size_t bytes);
bool ab__fault_hit(ab__device *d, int op);

/* ---- the runtime -------------------------------------------------------------------------- */
struct ab_runtime {
  _Atomic int64_t inflight;       /* accepted tasks not yet complete; never below 0 */
  _Atomic int closing;            /* no new submissions */
  _Alignas(64) ab_runtime_options opt;
  _Atomic int trace_on;           /* read by every task: beside the read-mostly options */
  uint32_t fork_gen;              /* ab__fork_gen() when made: see ab__forked */
  ab_allocator alloc;
  int ndevices;
  ab__device *devices;            /* grouped by kind, in ab_kind order */
  int kind_first[AB_KIND_COUNT], kind_count[AB_KIND_COUNT];
  _Atomic uint32_t rr[AB_KIND_COUNT];

  ab__pool futures, tensors;
  _Atomic int cancelling;         /* destroy(AB_CANCEL): queued tasks are cancelled, not run */
  _Atomic int stopping;           /* workers exit */
  _Atomic uint32_t idle_word;     /* destroy sleeps here until inflight reaches 0 */
  _Atomic int64_t refs;           /* 1 for the owner + one per live future and pooled tensor */
  pthread_mutex_t trace_lock;     /* serialises ab_trace_start, stop and write; AB__RANK_TRACE */
  /* ab_future_wait_any sleeps on done_gen, which completions bump while any_waiters > 0: its
   * own line, written only while someone waits (future.c) */
  _Alignas(64) _Atomic uint32_t done_gen;
  _Atomic int32_t any_waiters;
  /* oom.c: the deadline keeper, a thread that fails parked tasks at their OOM deadline when no
   * worker is free to. It sleeps on keeper_word until keeper_due, the earliest deadline it
   * knows; keeper_lock guards keeper_due (AB__RANK_KEEPER: nothing else is held with it). */
  pthread_t keeper;
  bool keeper_started, keeper_lock_made;
  pthread_mutex_t keeper_lock;
  int64_t keeper_due;
  _Atomic uint32_t keeper_word;
  int64_t trace_t0;               /* when the last trace run started (CLOCK_MONOTONIC ns) */
  bool trace_tsc;                 /* records hold TSC ticks, mapped by the pairs below */
  int64_t trace_tsc0, trace_tsc1, trace_ns1; /* (tsc, ns) at start (ns: trace_t0) and stop */
};

/* A runtime inherited through fork(): its workers, and any lock they held, stay in the parent.
 * Every entry point refuses it with AB_ESHUTDOWN before touching a lock or a queue, a future
 * of it that was not complete at the fork reports AB_ESHUTDOWN, and what it owns is leaked in
 * the child (the process image goes with the child's exit or exec). */
static inline bool ab__forked(const ab_runtime *rt) { return rt->fork_gen != ab__fork_gen(); }

void ab__runtime_unref(ab_runtime *rt);
static inline void ab__runtime_ref(ab_runtime *rt) {
  atomic_fetch_add_explicit(&rt->refs, 1, memory_order_relaxed); /* a ref is only taken from a ref */
}
ab__device *ab__device_of(ab_runtime *rt, ab_device d); /* NULL: no such device */

/* ---- placement.c -------------------------------------------------------------------------- */
/* Chooses the device for a task; inputs give data affinity. exclude: bitmask of device slots
 * to avoid (re-routing). Returns NULL with *err set when no device fits. */
ab__device *ab__place(ab_runtime *rt, const ab_place *p, ab_tensor *const *inputs, int n,
                      uint64_t exclude, int *err);

/* ---- tensors ------------------------------------------------------------------------------ */
enum { AB__OWN_VERSIONED, AB__OWN_LEGACY, AB__OWN_WRAP, AB__OWN_ARENA, AB__OWN_VIEW, AB__OWN_PINNED };

struct ab_tensor {
  DLTensor dl;                    /* shape and strides point into the arrays below */
  int64_t shape[AB_MAX_NDIM];
  int64_t strides[AB_MAX_NDIM];   /* always filled, in elements */
  _Atomic int32_t refs;
  uint32_t flags;
  uint8_t owner;
  ab_device home;                 /* the logical device the data lives on */
  ab_runtime *rt;                 /* set: the struct came from rt's pool */
  ab__device *dev;                /* ARENA, PINNED: whose budget holds the memory */
  size_t nbytes;                  /* elements x element size */
  size_t alloc_bytes;             /* ARENA: bytes reserved */
  _Atomic bool shared;            /* ARENA: exported through DLPack (tensor.c frees it with
                                     ab__mem_free_shared); relaxed: the last release's acq_rel
                                     on refs orders it before the free */
  union {
    DLManagedTensorVersioned *ver;
    DLManagedTensor *legacy;
    struct { void (*fn)(void *); void *ctx; } wrap;
    ab_tensor *base;
    ab__device *pinner;           /* PINNED: the GPU device whose backend allocated it */
  } u;
};

size_t ab__dtype_size(DLDataType dt);
static inline bool ab__same_dtype(DLDataType a, DLDataType b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}
/* The dtypes the cast kernels know, in the order every backend indexes its kernels by:
 * u8 u16 u32 u64 i8 i16 i32 i64 f32 f64 bool. -1 for any other. */
#define AB__NDTYPES 11
int ab__dtype_index(DLDataType dt);
DLDevice ab__dl_device(const ab__device *d); /* how DLPack names a device's memory */
int ab__dl_check(const DLTensor *t, int64_t *strides_out, size_t *nbytes_out);
int ab__kind_of_dl(DLDeviceType t, int *kind); /* host-like types map to AB_HOST */
ab_tensor *ab__tensor_new(ab_runtime *rt);     /* refs = 1, zeroed; rt NULL: malloc */
void ab__tensor_fill(ab_tensor *t, const DLTensor *dl, const int64_t *strides);
int ab__tensor_alloc_on(ab__device *d, ab__worker *w, DLDataType dt, int ndim, const int64_t *shape,
                        ab_tensor **out);
bool ab__contiguous(const DLTensor *t);
/* t's layout with size-1 dims dropped and contiguous neighbours merged: *nd dims (at least 1)
 * of shape and byte strides, the last one the innermost. Returns the element count. */
int64_t ab__collapse(const DLTensor *t, int *nd, int64_t *shape, int64_t *bstride);

/* ---- futures and tasks -------------------------------------------------------------------- */
typedef struct ab__cb {
  struct ab__cb *next;
  void (*fn)(ab_future *f, void *arg);
  void *arg;
  bool heap;                      /* allocated by ab_future_then; freed after it runs */
} ab__cb;

/* The future's state word, also its futex. */
enum {
  AB__PENDING = 0,                /* waiting for inputs, queued or parked */
  AB__RUNNING = 1,
  AB__COMPLETING = 2,             /* the one completer is writing status and result */
  AB__DONE = 3,
  AB__PHASE = 3,
  AB__WAITERS = 1u << 2,          /* someone sleeps on the word: wake on DONE */
  AB__CANCEL_REQ = 1u << 3,       /* cancel asked while running */
};

enum { AB__TASK_COMPUTE, AB__TASK_CONVERT, AB__TASK_STACK };

typedef struct {
  ab_tensor *tensor;              /* owned reference once known */
  ab_future *future;              /* owned reference until resolved */
  ab__cb cb;                      /* registration on future */
  ab_future *owner;
} ab__input;

#define AB__INLINE_INPUTS 2

struct ab_future {
  _Atomic uint32_t state;
  _Atomic int32_t refs;
  int32_t status;
  ab_tensor *result;
  char *message;
  _Atomic(ab__cb *) cbs;
  ab_runtime *rt;
  ab__cb inline_cb;
  _Atomic int inline_cb_used;

  /* the task */
  uint8_t kind;
  bool counted;                   /* holds an inflight count; set before anyone else sees it */
  bool oom_retry;                 /* AB_TASK_OOM_RETRY: enters the ladder, not the queue */
  _Atomic(ab__device *) dev;      /* where it is queued, parked or running: ab__task_dev */
  ab_place place;
  ab_oom_policy oom;
  _Atomic int32_t deps;           /* unresolved inputs, plus one while submitting */
  _Atomic int32_t dep_status;     /* first failing input's status */
  int nin;
  ab__input *in;
  ab__input in_inline[AB__INLINE_INPUTS];
  ab_task_fn fn;
  void *arg;
  ab_convert_options copt;
  ab_device dst;
  uint64_t bytes;                 /* for backpressure, accounted while queued or running */

  /* the OOM ladder's memory of this task */
  int64_t park_until;             /* its next retry, or its deadline when no retry is left */
  int64_t backoff;                /* the interval after the next retry */
  int64_t oom_deadline;           /* its first failure + the policy's deadline: it fails then */
  uint32_t park_gen;
  uint64_t park_need;             /* bytes it could not get (0: unknown) */
  uint64_t tried;                 /* device slots tried by re-routing */
  uint32_t parks;
  ab_future *park_next;
  ab__qnode qlink;                /* overflow list link in the device queue */
  const char *name;               /* compute tasks: the trace label (NULL: "task") */
};

/* The device a task counts on. Set when it is placed, re-placed or requeued, read by whoever
 * completes it, and a cancel may complete it while a worker requeues it: relaxed atomics, since
 * the value only attributes statistics (the task's other fields are published by its state). */
static inline ab__device *ab__task_dev(const ab_future *t) {
  return atomic_load_explicit(&t->dev, memory_order_relaxed);
}
static inline void ab__task_set_dev(ab_future *t, ab__device *d) {
  atomic_store_explicit(&t->dev, d, memory_order_relaxed);
}

/* The dtype a conversion or stack task makes from src: the options' dtype, or src's own. */
static inline DLDataType ab__target_dtype(const ab_future *t, const ab_tensor *src) {
  return t->copt.dtype.bits ? t->copt.dtype : src->dl.dtype;
}

ab_future *ab__future_new(ab_runtime *rt);      /* refs = 1; NULL on ENOMEM */
/* Completes f once. from: the phase the caller saw (PENDING for cancel and dependency failure,
 * RUNNING for the worker). Returns false when f was already completing. Takes result's ref. */
bool ab__complete(ab_future *f, int status, ab_tensor *result, uint32_t from);
void ab__future_free(ab_future *f);
int ab__then_internal(ab_future *f, ab__cb *node); /* node provided by caller */
/* The calling thread is one of rt's workers, or runs a callback of one of rt's futures: it
 * must not wait for rt to drain (ab_runtime_destroy refuses with AB_EBUSY). */
bool ab__thread_inside(const ab_runtime *rt);

/* task.c: a new task of a kind with nin input slots, placed as place says (its OOM policy the
 * place's, else the runtime's); refs = 1, NULL when out of memory. */
ab_future *ab__task_new(ab_runtime *rt, int kind, int nin, const ab_place *place);
/* Takes ownership of t (the caller's only reference), its inputs filled in: on success *out gets
 * the caller's reference; on failure t is gone with everything it held. */
int ab__task_submit(ab_future *t, ab_future **out);
/* task.c: a task whose inputs are resolved goes to a device (or fails) */
void ab__task_ready(ab_future *t);
void ab__task_requeue(ab__device *d, ab_future *t);  /* parked or re-routed: never blocks */
void ab__task_account(ab__device *d, ab_future *t);  /* t counts on d (placement, backpressure) */
void ab__task_unaccount(ab__device *d, ab_future *t); /* the task left the device */
void ab__device_unaccount(ab__device *d, uint64_t bytes); /* the same, for a task given away */
void ab__task_release_inputs(ab_future *t);
void ab__task_drop(ab_future *t); /* completed, leaving the system: its inputs, then its reference */
void ab__inflight_done(ab_runtime *rt);

/* trace.c: recording is one relaxed load when off (see trace.c's design notes) */
static inline bool ab__tracing(ab_runtime *rt) {
  return atomic_load_explicit(&rt->trace_on, memory_order_relaxed); /* a hint; re-checked */
}
/* t0, t1: the body's start and end; t2: completion (t1 when the body did the work) */
/* The trace's clock: the TSC where it is invariant (a few ns, against 30-60 for clock_gettime on
 * a VM), mapped onto CLOCK_MONOTONIC when the trace is written; else CLOCK_MONOTONIC itself. */
static inline int64_t ab__trace_now(const ab_runtime *rt) {
#if defined(__x86_64__)
  if (rt->trace_tsc) return (int64_t)__builtin_ia32_rdtsc();
#endif
  return ab__now_ns();
}
void ab__trace_task(ab__worker *w, ab_future *t, int64_t t0, int64_t t1, int64_t t2, int status);
void ab__trace_mem(ab__device *d, uint64_t used);
void ab__trace_init(ab_runtime *rt);
void ab__trace_fini(ab_runtime *rt);

/* worker.c */
extern _Thread_local ab__worker *ab__current_worker; /* the worker this thread is, or NULL */
int ab__workers_start(ab__device *d);
void ab__workers_join(ab__device *d);
/* Wakes d's sleeping workers (a task is due, memory was freed): a wake-up of d's queue, which
 * is where they sleep. Inline, so that what frees memory need not call up into worker.c. */
static inline void ab__wake_workers(ab__device *d) { ab__queue_wake(&d->queue); }

/* oom.c: the ladder's steps 5-7 and its parked tasks */
/* Whether a policy's times are valid: zero takes the default, below zero is AB_EINVAL (a
 * negative time is no time at all, not "the default"). */
bool ab__oom_policy_ok(const ab_oom_policy *p);
/* A body on w returned AB_ENOMEM for t. True: t lives on, parked or re-routed, and another
 * worker may own it already: the caller must not touch it. False: t fails, its message says
 * why (step 7). */
bool ab__oom_task(ab__worker *w, ab_future *t);
/* A task submitted with AB_TASK_OOM_RETRY, placed on d (pending, counted, not accounted):
 * parked as if it had just run out of memory there, or re-routed, or failed. */
void ab__oom_enter(ab__device *d, ab_future *t);
/* Between tasks: is a parked task due on d, or has memory been freed since the last poll? */
bool ab__park_wants_poll(ab__device *d);
/* The due parked task of d that has waited longest, to run now, ahead of d's queue (NULL:
 * none); on the way, fails those past their deadline and drops cancelled ones. *next (when not
 * NULL): the earliest retry or deadline left, the present when more tasks are due, -1 for none. */
ab_future *ab__park_take(ab__device *d, int64_t *next);
void ab__park_flush(ab__device *d, int status); /* destroy: complete every parked task */
int ab__keeper_start(ab_runtime *rt);            /* the deadline keeper's thread */
void ab__keeper_stop(ab_runtime *rt);            /* after rt->stopping is set: joins it */
void ab__park_cancelled(ab_future *t);           /* t was cancelled while pending: maybe parked */

/* A cancel was asked for t while it runs, or the runtime is being destroyed with AB_CANCEL.
 * Relaxed: a body polls it and only needs to see the request eventually; nothing else is read
 * through it. */
static inline bool ab__cancel_asked(const ab__worker *w, const ab_future *t) {
  return (atomic_load_explicit(&t->state, memory_order_relaxed) & AB__CANCEL_REQ) ||
         atomic_load_explicit(&w->dev->rt->cancelling, memory_order_relaxed);
}

/* ctx.c: what a task body sees (ab_ctx_*); its scratch is freed by the worker when the task ends */
struct ab_ctx {
  ab__worker *w;
  ab_future *task;
  ab_tensor *output;
  ab__scratch scratch;            /* the first 8 blocks inline, then a chain */
};
/* Runs a compute task's body: its status is 0 or a failure code, whatever the body returned
 * (anything else becomes AB_EINVAL, the message naming what it returned). */
int ab__ctx_run(ab_ctx *c);
/* The compute task whose body this thread is running (NULL: none): a wait on it from inside
 * can never end (future.c). */
extern _Thread_local const ab_future *ab__running_task;

/* ---- conversions and stacking: convert.c, stack.c, fill.c ---------------------------------- */
/* The host device (the first of its kind): only for a runtime that has one. */
static inline ab__device *ab__host_device(ab_runtime *rt) { return &rt->devices[rt->kind_first[AB_HOST]]; }
/* Where a host tensor's first byte lies. */
static inline const void *ab__host_ptr(const ab_tensor *t) { return (const char *)t->dl.data + t->dl.byte_offset; }
/* src's bytes already are the answer: the right dtype, laid out contiguously. */
static inline bool ab__fits(const ab_tensor *src, DLDataType dt) {
  return ab__same_dtype(src->dl.dtype, dt) && ab__contiguous(&src->dl);
}
/* A host tensor that needs no packing or cast: its bytes go straight to their place. */
static inline bool ab__plain_host(const ab_tensor *sl, DLDataType dt) {
  return ab_tensor_device(sl).kind == AB_HOST && ab__fits(sl, dt);
}

/* convert.c: the checks of a conversion's destination and options (0 or an AB_E* code), and
 * its task without inputs yet; stacking makes its tasks with them too */
int ab__convert_check(ab_runtime *rt, ab_device dst, const ab_convert_options *o);
ab_future *ab__convert_task(ab_runtime *rt, int kind, int nin, ab_device dst, const ab_convert_options *o);
/* convert.c: the device whose memory holds t (near: the task's, preferred where several can
 * read it), or NULL with *err set */
ab__device *ab__source_device(ab_runtime *rt, const ab_tensor *t, ab__device *near, int *err);
/* convert.c: src, wherever it is, into (dst, off) on c's device as a contiguous dt array, by the
 * path the planner picks */
int ab__put(ab_ctx *c, const ab_tensor *src, void *dst, size_t off, DLDataType dt, const ab__cast_params *p);
/* convert.c: the end of a conversion or stack. On failure (rc) nothing may still write into
 * out, so the stream is drained before out goes; on success out becomes the task's result. */
int ab__finish_output(ab_ctx *c, ab_tensor *out, int rc);
/* The bodies of conversion (convert.c) and stacking (stack.c) tasks */
int ab__convert_run(ab_ctx *c);
int ab__stack_run(ab_ctx *c);

/* fill.c: the plain host inputs of c's task into out, input i at byte slice * i: straight into
 * out's memory on the host, through mapped windows on a device. *done false (rc 0): this device
 * cannot map, and the caller moves them itself. */
int ab__fill_from_host(ab_ctx *c, ab_tensor *out, size_t slice, DLDataType dt, bool *done);
/* Tests only: host slices stream into a device (or the host) in windows of at most this many
 * bytes, so that many-window pipelines run on small data (0: the backend's own size). */
extern size_t ab__map_window_test;

#endif
