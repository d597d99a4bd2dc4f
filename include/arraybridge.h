/*
 * arraybridge.h: a runtime that moves and processes arrays across CPUs and GPUs.
 *
 * Objects
 *   ab_runtime  owns everything: devices, a worker pool per device, queues, arenas. No global
 *               state: two runtimes in one process are independent.
 *   ab_device   a (kind, index) pair. Indexes count the runtime's devices of that kind, logical
 *               devices included (one physical device may be split into N logical ones).
 *   ab_tensor   a refcounted DLTensor plus who owns its memory (an imported DLPack deleter, a
 *               runtime arena, or a base tensor for views).
 *   ab_future   a refcounted handle on the result of a task.
 *
 * Errors
 *   Every fallible call returns 0 or a negative AB_E* code; ab_strerror() names it. Its
 *   out-parameters are NULL after any failure (ab_unstack: every entry, see there).
 *
 * NULL
 *   Every function accepts NULL for any pointer argument. Fallible ones return AB_EINVAL (or
 *   treat it as documented, e.g. a NULL options pointer means the defaults); the others return
 *   a neutral value, given beside each: NULL, 0, false, or the device {-1, -1}.
 *
 * The async contract (read this before using futures)
 *   1. A submit call (ab_submit, ab_convert, ab_stack, ab_unstack, ...) that returns an error
 *      queued nothing, ran nothing and will fire no callback; *out is set to NULL. Tensors passed
 *      to it keep the references the caller had.
 *   2. A submit call that returns 0 hands the caller one reference on a future. That future
 *      completes exactly once, with a status: 0, AB_ECANCELED, AB_ENOMEM, an input's failure, or
 *      the task's own error code (a failure code of the table below; a body that returns
 *      anything else fails with AB_EINVAL, see ab_task_desc.fn). This holds whatever happens
 *      after: cancel, out-of-memory, runtime destroy (AB_DRAIN runs it, AB_CANCEL cancels it).
 *      A task that completes with 0 did all its work. (In a child of fork(), see below.)
 *   3. A task whose inputs include futures becomes runnable when they have all completed. If one
 *      of them failed, the task does not run and completes with that input's status.
 *   4. Cancelling a task that has not started means it never runs; its future completes with
 *      AB_ECANCELED, and so do its dependents. A running task is asked to stop (ab_ctx_cancelled)
 *      and completes with whatever it returns.
 *   5. Callbacks (ab_future_then) run exactly once, after the status and result are visible, on
 *      the thread that completed the future: a worker, a thread calling ab_future_cancel or
 *      ab_runtime_destroy, the runtime's OOM deadline keeper (a parked task failing at its
 *      deadline), or the caller of ab_future_then itself if the future was already complete.
 *      A callback must not block: it may release futures and tensors, read results and submit
 *      with AB_SUBMIT_TRY, but must not wait on futures or submit blocking, nor destroy the
 *      future's runtime (refused with AB_EBUSY: destroy would wait for the very completion that
 *      runs the callback).
 *   6. Out-of-memory does not fail a task at once: it walks the ladder of ab_oom_policy
 *      (trim, synchronise, spill callback, park and retry with backoff, re-route) and fails with
 *      AB_ENOMEM only at its end. Inputs are never modified, so nothing is lost.
 *   7. ab_runtime_destroy never strands a caller: every accepted future completes before it
 *      returns. Futures and tensors may outlive their runtime; release them when done.
 *   8. Times are kept: retries come on their backoff schedule, OOM deadlines and the timeouts
 *      of blocking submits and waits expire when they say, within 10% or 5 ms (whichever is
 *      more), idle or busy, as far as the operating system schedules the thread that acts.
 *
 * Threads
 *   Every function is thread-safe, except that a runtime must not be used after (or while)
 *   ab_runtime_destroy returns, other than to release futures and tensors.
 *
 * fork()
 *   A runtime's worker threads stay in the process that made it. In a child of fork(), every
 *   call on a runtime made before the fork fails at once with AB_ESHUTDOWN, touching nothing of
 *   it (a lock a parent's thread held may stay held for ever): submits, conversions, tensor
 *   allocation, statistics, tracing, and ab_runtime_destroy, which leaves the child's copy to
 *   the process's exit or exec instead of joining threads that are not there. A future of such
 *   a runtime that was not complete at the fork never completes in the child: waiting for it,
 *   its status and its result give AB_ESHUTDOWN at once, its message says why, and
 *   ab_future_then and ab_future_cancel refuse it with AB_ESHUTDOWN. A future that was
 *   complete keeps its status and result; tensors stay readable and may be viewed and released
 *   (the runtime's own memory is then left alone). A runtime made in the child works as usual.
 *   The check costs one load per call (a counter that a pthread_atfork handler bumps in the
 *   child), not a getpid() system call.
 */
#ifndef ARRAYBRIDGE_H
#define ARRAYBRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arraybridge/dlpack.h"
#include "arraybridge/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(AB_STATIC)
#define AB_API
#else
#define AB_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------------
 * Errors. One table generates the enum, ab_strerror and ab_err_name.
 */
#define AB_ERRNO_MAP(X)                                                                       \
  X(EINVAL, -22, "invalid argument")                                                         \
  X(ENOMEM, -12, "out of memory")                                                            \
  X(EAGAIN, -11, "queue full, try again")                                                    \
  X(ETIMEDOUT, -110, "timed out")                                                            \
  X(ECANCELED, -125, "operation canceled")                                                   \
  X(ENODEV, -19, "no such device")                                                           \
  X(ENOTSUP, -95, "operation not supported")                                                 \
  X(ESHUTDOWN, -108, "runtime is shutting down")                                             \
  X(EBUSY, -16, "task is running")                                                           \
  X(EALREADY, -114, "already complete")                                                      \
  X(EPERM, -1, "not permitted (read-only tensor or strict path)")                            \
  X(EOVERFLOW, -75, "shape or stride arithmetic overflows")                                  \
  X(EDTYPE, -1001, "unsupported or mismatched dtype")                                        \
  X(ESHAPE, -1002, "mismatched or invalid shape")                                            \
  X(EDEVICE, -1003, "device error")                                                          \
  X(EPENDING, -1004, "future has not completed")                                             \
  X(EFAULT, -1005, "injected fault")

typedef enum {
#define AB__ERR_ENUM(name, code, text) AB_##name = code,
  AB_ERRNO_MAP(AB__ERR_ENUM)
#undef AB__ERR_ENUM
} ab_errno;

AB_API const char *ab_strerror(int code);
AB_API const char *ab_err_name(int code);
AB_API const char *ab_version(void); /* the library's AB_VERSION_STRING */

/* ---------------------------------------------------------------------------------------------
 * Devices
 */
typedef enum { AB_HOST = 0, AB_OPENCL = 1, AB_CUDA = 2, AB_KIND_COUNT = 3 } ab_kind;

/* A kind's name, as the command line, traces and memory reports write it ("cuda:0" is the
 * first CUDA device): "host", "opencl" or "cuda"; "?" for a number that names no kind. */
AB_API const char *ab_kind_name(int kind);
/* The kind whose name is exactly the first len bytes of name (so "opencl:1" parses without a
 * copy: pass the length before the colon), or AB_EINVAL when none is (or name is NULL). */
AB_API int ab_kind_from_name(const char *name, size_t len);

typedef struct {
  int32_t kind;  /* ab_kind */
  int32_t index; /* among the runtime's devices of this kind; AB_ANY in a placement request */
} ab_device;

#define AB_ANY (-1)

/* Upper bounds of the counts below; a larger value is AB_EINVAL (a default is clamped). */
#define AB_MAX_WORKERS 1024          /* workers_per_device */
#define AB_MAX_SPLIT 64              /* logical_split */
#define AB_MAX_QUEUE (1u << 24)      /* queue_capacity */

/* Per-kind settings. Zero fields take the defaults given. */
typedef struct {
  bool disabled;             /* do not open devices of this kind */
  int workers_per_device;    /* host: one per core; GPUs: 2 (1..AB_MAX_WORKERS) */
  int logical_split;         /* split each physical device into N logical ones (default 1;
                                1..AB_MAX_SPLIT) */
  uint64_t memory_limit;     /* bytes each physical device may hold (0: no limit on the host,
                                the device's memory on GPUs); logical devices share it evenly */
  double memory_fraction;    /* alternatively, a fraction of the device's memory (0..1] */
} ab_kind_options;

/* The OOM ladder (see the contract, point 6). Zero fields take the defaults given; negative
 * times are AB_EINVAL (from ab_runtime_create, or from the submit whose ab_place carries
 * them). A parked task is retried after backoff_initial_ns, then after twice that, and so on up to
 * backoff_max_ns between tries (1, 2, 4, ... 64, 100, 100 ms by default), and earlier when
 * memory on its device is freed. A due retry goes ahead of the tasks in the device's queue:
 * an idle worker runs it on time (contract, point 8), and on a busy device the first worker
 * to finish its task does, however long the queue. The deadline is wall-clock time from the
 * task's first failure; when it comes, a task parked or waiting for a worker to retry it
 * fails at once (re-routed first, where allowed), without waiting for a worker. */
typedef struct {
  bool no_wait;              /* skip parking: fail with AB_ENOMEM after the spill step */
  bool allow_reroute;        /* after the deadline, try another device of the same kind
                                (never for AB_PLACE_EXPLICIT tasks: their device was chosen) */
  int64_t backoff_initial_ns;/* first park interval (default 1 ms) */
  int64_t backoff_max_ns;    /* cap on the doubling interval (default 100 ms) */
  int64_t deadline_ns;       /* how long a task may stay out of memory, from its first failure
                                (default 10 s): its attempts and waits included */
} ab_oom_policy;

/* The host allocator for the runtime's own structures (not tensor data). */
typedef struct {
  void *(*malloc_fn)(size_t bytes, void *arg);
  void (*free_fn)(void *ptr, void *arg);
  void *arg;
} ab_allocator;

/* The user's spill callback: free something and return true to have the runtime try again. */
typedef bool (*ab_spill_fn)(size_t bytes, ab_device device, void *arg);

typedef struct {
  size_t size;               /* sizeof(ab_runtime_options); AB_RUNTIME_OPTIONS_INIT sets it.
                                A size the library does not know is AB_EINVAL. */
  ab_kind_options kinds[AB_KIND_COUNT];
  uint32_t queue_capacity;   /* tasks queued per device before submit blocks (default 4096;
                                at most AB_MAX_QUEUE) */
  uint64_t max_bytes_in_flight; /* per device, input bytes of queued and running tasks (0: none) */
  ab_oom_policy oom;         /* default ladder for every task */
  ab_spill_fn spill;
  void *spill_arg;
  const ab_allocator *allocator; /* NULL: malloc/free */
} ab_runtime_options;

#define AB_RUNTIME_OPTIONS_INIT {.size = sizeof(ab_runtime_options)}

typedef struct ab_runtime ab_runtime;
typedef struct ab_tensor ab_tensor;
typedef struct ab_future ab_future;
typedef struct ab_ctx ab_ctx;

enum { AB_DRAIN = 0, AB_CANCEL = 1 };

AB_API int ab_runtime_create(const ab_runtime_options *opt, ab_runtime **out); /* opt NULL: defaults */
/* Stops accepting work; AB_DRAIN runs every accepted task, AB_CANCEL cancels those not yet
 * running (and asks running ones to stop). Returns once every future has completed and every
 * worker has exited. NULL is accepted. AB_EBUSY, doing nothing, on a thread it would have to
 * wait for: from a task of this runtime (or anything else running on one of its workers) and
 * from a callback of one of its futures, wherever that callback runs; call it from another
 * thread. AB_ESHUTDOWN in a child of fork() (see fork() above). */
AB_API int ab_runtime_destroy(ab_runtime *rt, int how);
/* Fills up to cap devices, returns how many the runtime has (may exceed cap). */
AB_API int ab_runtime_devices(ab_runtime *rt, ab_device *out, int cap);

typedef struct {
  ab_device device;
  char name[64];
  int32_t physical;          /* index of the physical device this logical one is part of */
  int32_t workers;
  uint64_t memory_total;     /* bytes the physical device has */
  uint64_t budget;           /* bytes this device may hold (UINT64_MAX: unlimited) */
} ab_device_info;

AB_API int ab_device_info_get(ab_runtime *rt, ab_device d, ab_device_info *out);

/* Statistics, per device. Counters only grow; gauges are instantaneous. A task counts on the
 * device it was placed on; a task with future inputs is placed when they complete, so one that
 * is cancelled or fails before then counts only where its placement was explicit. */
typedef struct {
  ab_device device;
  uint64_t tasks_submitted, tasks_completed, tasks_failed, tasks_canceled;
  uint64_t bytes_moved;      /* bytes written by conversions and stacking on this device */
  uint64_t mem_used, mem_peak, mem_budget;  /* gauges and the budget, bytes */
  uint64_t queued;           /* gauge: tasks waiting in the queue */
  uint64_t parked;           /* gauge: tasks waiting for memory */
  /* the OOM ladder, one counter per step */
  uint64_t oom_events, oom_trims, oom_syncs, oom_spills, oom_parks, oom_retries, oom_reroutes,
      oom_failures;
  uint64_t faults_injected;
} ab_device_stats;

/* Fills up to cap entries (one per device), returns the number of devices. */
AB_API int ab_runtime_stats(ab_runtime *rt, ab_device_stats *out, int cap);

/* Fault injection, on any device: fail `count` operations of `op` starting with the `nth`
 * (1-based, counted from this call) with AB_EFAULT (allocations fail as out-of-memory, so they
 * feed the OOM ladder), or delay every completion by delay_ns. count < 0: fail every one from
 * the nth on. A spec with nth == 0 and delay_ns == 0 turns injection off on every device. */
typedef enum { AB_FAULT_ALLOC = 0, AB_FAULT_COPY = 1, AB_FAULT_LAUNCH = 2, AB_FAULT_OPS = 3 } ab_fault_op;
typedef struct {
  int32_t op;                /* ab_fault_op */
  ab_device device;          /* which device; index AB_ANY: all of that kind */
  uint64_t nth;
  int64_t count;
  int64_t delay_ns;
} ab_fault_spec;

AB_API int ab_runtime_fault(ab_runtime *rt, const ab_fault_spec *spec);

/* ---------------------------------------------------------------------------------------------
 * Tensors. The DLTensor of a tensor is immutable once made; data may change only through tasks.
 */
#define AB_MAX_NDIM 16

enum { AB_TENSOR_READ_ONLY = 1u << 0, AB_TENSOR_IS_COPIED = 1u << 1 };

/* Import takes ownership on success: the producer's deleter runs when the last reference is
 * released. On failure ownership stays with the caller and the deleter is not called.
 * Imports validate every field first: ndim, shapes and strides (no overflow), dtype, device.
 * A tensor with no elements may have NULL data (DLPack allows it): nothing ever reads it. */
AB_API int ab_tensor_import(DLManagedTensorVersioned *m, ab_tensor **out);
AB_API int ab_tensor_import_legacy(DLManagedTensor *m, ab_tensor **out);
/* Wrap memory the caller owns; `release(ctx)` runs when the last reference goes (may be NULL). */
AB_API int ab_tensor_wrap(const DLTensor *dl, uint32_t flags, void (*release)(void *ctx), void *ctx,
                          ab_tensor **out);
/* Export: the consumer owns the returned struct and must call its deleter once. */
AB_API int ab_tensor_export(ab_tensor *t, DLManagedTensorVersioned **out);
AB_API int ab_tensor_export_legacy(ab_tensor *t, DLManagedTensor **out);
/* A contiguous tensor from device d's arena; counts against d's memory budget. */
AB_API int ab_tensor_alloc(ab_runtime *rt, ab_device d, DLDataType dt, int ndim, const int64_t *shape,
                           ab_tensor **out);
/* A contiguous host tensor in page-locked (pinned) memory, which GPUs reach by DMA directly: a
 * conversion from or to it skips the staging copy. Allocated by the first CUDA device's
 * backend; its DLPack device is kDLCUDAHost and ab_tensor_device says AB_HOST 0. It counts
 * against the host's memory budget. Without a CUDA device (no GPU, no driver, or a build
 * without CUDA) it falls back to ordinary host memory, as ab_tensor_alloc on AB_HOST 0 gives
 * (device kDLCPU), so code using it runs anywhere. AB_ENOMEM when pinned memory runs out
 * (no OOM ladder: pinned memory is not cached). */
AB_API int ab_tensor_alloc_pinned(ab_runtime *rt, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **out);
/* A view sharing t's memory; shape/strides in elements (NULL: contiguous), its first element
 * offset_elems elements from t's. AB_EINVAL unless every byte it reaches is one of t's, which
 * also refuses offsets and strides whose arithmetic overflows. An empty view reaches no bytes:
 * it may start wherever an element of t would be (t's empty dimensions counted as one long,
 * as for the rows of an empty volume) or one past t's last byte. */
AB_API int ab_tensor_view(ab_tensor *t, int ndim, const int64_t *shape, const int64_t *strides,
                          int64_t offset_elems, ab_tensor **out);
/* t[i] along the first axis, as a view. */
AB_API int ab_tensor_index(ab_tensor *t, int64_t i, ab_tensor **out);

AB_API const DLTensor *ab_tensor_dl(const ab_tensor *t);    /* NULL: NULL */
AB_API uint32_t ab_tensor_flags(const ab_tensor *t);        /* NULL: 0 */
AB_API ab_device ab_tensor_device(const ab_tensor *t);      /* NULL: {-1, -1} */
AB_API size_t ab_tensor_nbytes(const ab_tensor *t);         /* elements x element size; NULL: 0 */
AB_API bool ab_tensor_is_contiguous(const ab_tensor *t);    /* NULL: false */
AB_API ab_tensor *ab_tensor_retain(ab_tensor *t);           /* returns t; NULL: NULL */
AB_API void ab_tensor_release(ab_tensor *t);                /* NULL: nothing */

/* ---------------------------------------------------------------------------------------------
 * Placement and submission options
 */
typedef enum {
  AB_PLACE_AUTO = 0,         /* among devices of device.kind: data affinity, else least-loaded.
                                The index is not used (but must exist or be AB_ANY), so a
                                zeroed ab_place is AUTO over the host devices. */
  AB_PLACE_EXPLICIT = 1,
  AB_PLACE_ROUND_ROBIN = 2,
  AB_PLACE_LEAST_LOADED = 3,
  AB_PLACE_AFFINITY = 4,     /* where the largest input lies, else least-loaded */
} ab_place_policy;

typedef enum {
  AB_SUBMIT_BLOCK = 0,       /* wait for queue space (up to timeout_ns if > 0: AB_ETIMEDOUT,
                                kept as the contract's point 8 says) */
  AB_SUBMIT_TRY = 1,         /* AB_EAGAIN at once when the queue is full */
} ab_submit_mode;

typedef struct {
  int32_t policy;            /* ab_place_policy */
  ab_device device;          /* kind to use; a specific index for EXPLICIT (or AUTO) */
  int32_t mode;              /* ab_submit_mode */
  int64_t timeout_ns;        /* for AB_SUBMIT_BLOCK; 0 waits for ever */
  const ab_oom_policy *oom;  /* NULL: the runtime's */
} ab_place;

/* ---------------------------------------------------------------------------------------------
 * Conversions
 */
typedef enum {
  AB_CAST_SATURATE = 0,      /* clamp to the target range; floats to ints truncate, NaN -> 0 */
  AB_CAST_STRETCH = 1,       /* float -> int: the [min, max] of the source's finite values
                                stretched onto the target's whole range, then saturated, so
                                -inf goes to the bottom, +inf to the top and NaN to 0; with
                                no finite range (a constant image, or no finite value) it is
                                a saturating cast, which does the same with them */
} ab_cast_mode;

typedef struct {
  size_t size;               /* sizeof(ab_convert_options) */
  DLDataType dtype;          /* target dtype; bits == 0 keeps the source's */
  int32_t cast;              /* ab_cast_mode */
  bool strict;               /* refuse any path through host memory (AB_EPERM) */
  bool force_copy;           /* never return the source itself (zero-copy) */
  ab_place place;            /* where the work runs; the destination device by default */
} ab_convert_options;

#define AB_CONVERT_OPTIONS_INIT {.size = sizeof(ab_convert_options)}

/* The result is a contiguous tensor on dst with the requested dtype. When src already is one,
 * the future completes with src itself (a new reference) unless force_copy is set. */
AB_API int ab_convert(ab_runtime *rt, ab_tensor *src, ab_device dst, const ab_convert_options *o,
                      ab_future **out);
/* The same, on the result of another task, once it completes. */
AB_API int ab_convert_after(ab_runtime *rt, ab_future *src, ab_device dst, const ab_convert_options *o,
                            ab_future **out);
/* One [n, ...] tensor on dst from n slices of equal shape and dtype, wherever they are. */
AB_API int ab_stack(ab_runtime *rt, ab_tensor *const *slices, size_t n, ab_device dst,
                    const ab_convert_options *o, ab_future **out);
/* volume[i] for every i, on dst: views of volume when it is already there (zero-copy), copies
 * otherwise. out must hold volume's first dimension of futures. On failure, futures already
 * made are cancelled and released, and out is all NULL; only a NULL or 0-d volume (no length
 * to go by) leaves out as it was. */
AB_API int ab_unstack(ab_runtime *rt, ab_tensor *volume, ab_device dst, const ab_convert_options *o,
                      ab_future **out);

/* ---------------------------------------------------------------------------------------------
 * Compute tasks
 */
typedef int (*ab_task_fn)(ab_ctx *ctx, void *arg);

typedef struct {
  ab_tensor *tensor;         /* one of the two */
  ab_future *future;         /* its result becomes the input once it completes */
} ab_input;

typedef struct {
  size_t size;               /* sizeof(ab_task_desc) */
  ab_task_fn fn;             /* returns 0 or an AB_E* failure code; AB_ENOMEM enters the OOM
                                ladder, so fn must then be safe to run again. Anything else
                                (AB_EPENDING, a positive number, a code not in the table) is
                                a bug in fn: the task fails with AB_EINVAL and its message
                                names the value fn returned */
  void *arg;
  const ab_input *inputs;
  int ninputs;
  ab_place place;
  uint64_t bytes_hint;       /* bytes the task moves, for backpressure (default: input bytes) */
  const char *name;          /* a static label for traces (must outlive the runtime); NULL:
                                "task". Older callers whose size ends before it are accepted. */
  uint32_t flags;            /* AB_TASK_*; older callers whose size ends before it are accepted */
} ab_task_desc;

/* ab_task_desc.flags */
enum {
  /* fn ran out of memory already, run by the caller itself (a batch of its own, say): the task
   * starts in the OOM ladder, parked on the device placement picks, its first retry after the
   * policy's backoff_initial_ns and its deadline counted from this submit. It never waits for
   * queue space, and its retries go ahead of queued tasks like every retry. With no_wait (or
   * AB_CANCEL under way) it completes at once with AB_ENOMEM, fn not run. */
  AB_TASK_OOM_RETRY = 1u << 0,
};

#define AB_TASK_DESC_INIT {.size = sizeof(ab_task_desc)}

AB_API int ab_submit(ab_runtime *rt, const ab_task_desc *d, ab_future **out);

/* Inside a compute task */
AB_API ab_device ab_ctx_device(ab_ctx *c); /* NULL: {-1, -1} */
AB_API void *ab_ctx_stream(ab_ctx *c);   /* cudaStream_t, cl_command_queue, or NULL on the host */
AB_API int ab_ctx_worker(ab_ctx *c);     /* index of the worker within its device's pool */
                                         /* (ab_ctx_worker and ab_ctx_ninputs: NULL: AB_EINVAL) */
/* Scratch memory from the worker's arena, freed when the task ends; counts against the budget
 * and walks the OOM ladder before returning AB_ENOMEM (return it from fn to park the task).
 * *ptr is device memory as the device names it: a host pointer, a cl_mem, a CUDA pointer. */
AB_API int ab_ctx_alloc(ab_ctx *c, size_t bytes, void **ptr);
AB_API int ab_ctx_ninputs(ab_ctx *c);
AB_API ab_tensor *ab_ctx_input(ab_ctx *c, int i);   /* borrowed; NULL when i is out of range */
/* A tensor for this task's output on its device; counts against the budget (OOM ladder). */
AB_API int ab_ctx_alloc_tensor(ab_ctx *c, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **out);
/* The task's result; the future takes the caller's reference. */
AB_API int ab_ctx_set_output(ab_ctx *c, ab_tensor *t);
AB_API bool ab_ctx_cancelled(ab_ctx *c);   /* NULL: false */
/* Explains the task's failure: the text (printf-style) becomes its future's message
 * (ab_future_message), and is printed on stderr when AB_DEBUG is set. Returns code, so a task
 * ends with `return ab_ctx_fail(c, AB_EDEVICE, "histogram: %s", cudaGetErrorName(e));`. A task
 * that ends with 0 keeps no message; one that ends with AB_ENOMEM gets the memory report. */
AB_API int ab_ctx_fail(ab_ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---------------------------------------------------------------------------------------------
 * Futures
 */
/* 0 once complete; AB_ETIMEDOUT if timeout_ns (< 0: for ever; 0: poll) passes first, kept as
 * the contract's point 8 says (the same for wait_all and wait_any). A blocking wait that only
 * the calling thread could end fails at once with AB_EBUSY: from a task or a callback running
 * on a worker, a wait for that worker's own running task, for a task whose device work that
 * worker has still to collect, or for a task queued or parked on its device when it is the
 * device's only worker (only a cancel from another thread could end such a wait). Deadlocks
 * through other threads are not detected; callbacks must not wait at all (point 5). wait_any
 * fails so only when every future is so. AB_ESHUTDOWN: see fork() above. */
AB_API int ab_future_wait(ab_future *f, int64_t timeout_ns);
/* The status once complete (0 or AB_E*), AB_EPENDING before (AB_ESHUTDOWN where it never will
 * be: see fork() above). */
AB_API int ab_future_status(const ab_future *f);
/* The status; on success *out gets a new reference on the result (NULL for tasks without one).
 * AB_EPENDING if not complete (AB_ESHUTDOWN: see fork() above). */
AB_API int ab_future_result(ab_future *f, ab_tensor **out);
/* Text explaining a failure (with a memory report for AB_ENOMEM), or NULL. Valid while f is. */
AB_API const char *ab_future_message(const ab_future *f);
/* cb(f, arg) once f completes (see the contract, point 5). AB_ENOMEM if the runtime's
 * allocator fails, and then cb never runs (nor after AB_ESHUTDOWN: see fork() above). */
AB_API int ab_future_then(ab_future *f, void (*cb)(ab_future *f, void *arg), void *arg);
/* 0: f will complete (or completed) with AB_ECANCELED. AB_EBUSY: running, asked to stop.
 * AB_EALREADY: already complete. */
AB_API int ab_future_cancel(ab_future *f);
AB_API int ab_future_wait_all(ab_future *const *fs, size_t n, int64_t timeout_ns);
/* 0 and *which (when which is not NULL) once one of them is complete; *which is untouched on
 * failure. Registers nothing on the futures: polling it with a timeout leaves nothing behind.
 * Futures of several runtimes may be mixed (completions in the others are then noticed within
 * a millisecond). */
AB_API int ab_future_wait_any(ab_future *const *fs, size_t n, int64_t timeout_ns, size_t *which);
AB_API ab_future *ab_future_retain(ab_future *f);   /* returns f; NULL: NULL */
AB_API void ab_future_release(ab_future *f);        /* NULL: nothing */

/* ---------------------------------------------------------------------------------------------
 * Tracing: a timeline of every task on every worker and stream, and of device memory, written
 * as Chrome trace JSON (open it in Perfetto or chrome://tracing). Each worker records into a
 * ring of its own, so recording takes no lock and allocates nothing; a full ring overwrites its
 * oldest events (the JSON says how many were dropped). Off, it costs one branch per task.
 */
typedef struct {
  size_t size;               /* sizeof(ab_trace_options); AB_TRACE_OPTIONS_INIT sets it */
  uint32_t events_per_worker;/* ring capacity, rounded up to a power of two (default 1 << 16;
                                more than 1 << 24 is taken as 1 << 24) */
} ab_trace_options;

#define AB_TRACE_OPTIONS_INIT {.size = sizeof(ab_trace_options)}

/* Starts recording (o NULL: defaults), discarding what an earlier run recorded.
 * AB_EALREADY: already recording. AB_ENOMEM: the rings could not be allocated. */
AB_API int ab_trace_start(ab_runtime *rt, const ab_trace_options *o);
/* Stops recording; what was recorded stays until the next start. 0 if it was not recording. */
AB_API int ab_trace_stop(ab_runtime *rt);
/* Writes what the last run recorded to path: "traceEvents" with a process per device, a thread
 * per worker (and per stream on devices that have them), an "X" event per task named by its
 * ab_task_desc.name or kind ("convert", "stack"), and "C" events for device memory in use.
 * AB_EBUSY while recording (stop first); AB_EINVAL if path cannot be written (errno then says
 * why). */
AB_API int ab_trace_write(ab_runtime *rt, const char *path);

#ifdef __cplusplus
}
#endif
#endif
