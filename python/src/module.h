/*
 * python/src/module.h: what the files of arraybridge._core share; private to the extension,
 * which reaches the library through its public header only.
 *
 *   module.c   the module: its functions and exceptions, init, fork bookkeeping, argument parsing
 *   tensor.c   Tensor: arrays in (buffer protocol, pointers, DLPack capsules) and out (DLPack,
 *              NumPy's array interface)
 *   future.c   Future: waiting with the GIL released, results, cancel
 *   runtime.c  Runtime: options, closing, devices, stats, conversions and stacking
 *   tasks.c    Python tasks on the runtime's workers: the GIL hand-off, batches, resubmission
 */
#ifndef AB_PYTHON_MODULE_H
#define AB_PYTHON_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <time.h>

#include "arraybridge.h"

/* Python 3.13 made _Py_IsFinalizing public as Py_IsFinalizing and dropped the old name. */
#if PY_VERSION_HEX < 0x030D0000
#define Py_IsFinalizing _Py_IsFinalizing
#endif

/* Debug checks, as the library's (platform/platform.h): always compiled, so they cannot rot;
 * whether they run is a constant the compiler folds away. AB_DEBUG=1 or 0 decides when given;
 * otherwise they run unless NDEBUG is defined (a Release build, as pip's). They check the
 * invariants the design notes state. */
#if defined(AB_DEBUG)
#define PY_DEBUG AB_DEBUG
#elif defined(NDEBUG)
#define PY_DEBUG 0
#else
#define PY_DEBUG 1
#endif
_Noreturn void py_panic(const char *file, int line, const char *what);
#define PY_ASSERT(e)                                                                                \
  do {                                                                                              \
    if (PY_DEBUG && !(e)) py_panic(__FILE__, __LINE__, #e);                                         \
  } while (0)

/* ---- module.c: exceptions, fork, argument parsing -------------------------------------------- */
extern PyObject *Error; /* arraybridge.Error and its subclasses, by code */
extern PyObject *InvalidError, *MemError, *TimeoutErr, *CancelledErr, *DeviceErr, *ReadOnlyErr, *QueueFullErr,
    *ShutdownErr, *NotSupportedErr;
extern PyObject *copy_hook; /* Python: (tensor, dl_device or None) -> new Tensor */

/* Raise the exception for code, with the call's context and an optional detail (a memory report). */
PyObject *raise_ab(int code, const char *what, const char *detail);

/* Bumped in the child of every fork (pthread_atfork), read with the GIL held: a runtime records
 * the generation it was made in. kinds_opened: the kinds a runtime of this process opened;
 * kinds_inherited: those a parent had opened before the fork that made this process. */
extern unsigned fork_generation;
extern int kinds_opened[AB_KIND_COUNT], kinds_inherited[AB_KIND_COUNT];

int parse_dtype(PyObject *o, DLDataType *dt);
int parse_shape(PyObject *seq, int64_t *shape, int *ndim, const char *what);
int parse_place(PyObject *dev, int policy, ab_place *p);
int64_t timeout_ns(PyObject *t); /* seconds (None: -1, for ever) -> ns; -2 with an exception set */

static inline ab_device make_device(int kind, int index) { return (ab_device){kind, index}; }

static inline int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the object types ------------------------------------------------------------------------ */
struct py_task;

typedef struct {
  PyObject_HEAD
  ab_runtime *rt;
  struct py_task *inl_head, *inl_tail; /* host Python tasks any host worker may run (the GIL guards it) */
  int closing;                         /* close() is under way: refuse new work */
  unsigned gen;                        /* the fork_generation it was made in */
} RuntimeObject;

/* A runtime made in another process (before a fork): nothing of it may be touched here. */
static inline int foreign(PyObject *rt) { return rt != NULL && ((RuntimeObject *)rt)->gen != fork_generation; }

typedef struct {
  PyObject_HEAD
  ab_tensor *t;
  PyObject *rt; /* RuntimeObject or NULL */
} TensorObject;

typedef struct {
  PyObject_HEAD
  ab_future *f;
  PyObject *rt; /* RuntimeObject or NULL */
  struct py_task *task; /* a Python task's record (a reference), for cancel; or NULL */
} FutureObject;

extern PyTypeObject RuntimeType, TensorType, FutureType;

/* ---- tensor.c -------------------------------------------------------------------------------- */
PyObject *tensor_new_from(ab_tensor *t, PyObject *rt); /* takes t's reference, even on failure */
PyObject *mod_from_buffer(PyObject *m, PyObject *obj);
PyObject *mod_wrap(PyObject *m, PyObject *args);
PyObject *mod_from_capsule(PyObject *m, PyObject *cap);

/* ---- future.c -------------------------------------------------------------------------------- */
PyObject *future_new_from(ab_future *f, PyObject *rt); /* takes f's reference, even on failure */

/* ---- runtime.c ------------------------------------------------------------------------------- */
int check_runtime(RuntimeObject *self); /* -1 with ShutdownError set if it cannot be used */

/* ---- tasks.c --------------------------------------------------------------------------------- */
int tasks_init(void); /* at import: 0, or -1 with an exception set */
extern _Thread_local ab_ctx *tls_ctx; /* the compute task this worker thread is running */
extern _Thread_local int on_worker;   /* this thread is a runtime worker (it ran Python tasks) */
void waiter_released_gil(void);       /* a thread releases the GIL to wait on one future */
void py_task_unref(struct py_task *p);
int py_task_cancel(struct py_task *p);
void inline_list_drop(RuntimeObject *self);
void inline_list_free(struct py_task *list);
PyObject *runtime_call(RuntimeObject *self, PyObject *const *argv, Py_ssize_t nargs);

/* Submit with the GIL held when the queue has room; when it is full, release the GIL and block,
 * so the workers (which may need the GIL to drain it) can make progress. Except on a thread
 * inside a runtime's task or completion callback: there blocking could stop the very workers
 * that drain the queue (every worker a task that submits, all of them waiting for room), so a
 * full queue raises QueueFullError at once, and the Executor keeps the task until there is room
 * (python/arraybridge/executor.py). */
extern _Thread_local int in_runtime_thread; /* inside a Python task or a completion callback */

#define SUBMIT_BLOCKING(place, call)                                                                \
  do {                                                                                              \
    rc = (call);                                                                                    \
    if (rc == AB_EAGAIN && !try_only && !in_runtime_thread) {                                       \
      (place).mode = AB_SUBMIT_BLOCK;                                                               \
      Py_BEGIN_ALLOW_THREADS rc = (call);                                                           \
      Py_END_ALLOW_THREADS                                                                          \
    }                                                                                               \
  } while (0)

#endif
