/*
 * python/src/common.h: what every file of arraybridge._core stands on: the object types' layouts,
 * the exceptions, argument parsing, fork bookkeeping, debug checks. The extension reaches the
 * library through its public header only. Its files, each above those it uses:
 *
 *   module.c   the module: its functions, exceptions and constants, init
 *   runtime.c  Runtime: options, closing, devices, stats, convert, stack, unstack, call
 *   future.c   Future: waiting with the GIL released, results, cancel
 *   tasks.c    Python tasks on the runtime's workers: the GIL hand-off, batches, resubmission
 *   tensor.c   Tensor: arrays in (buffer protocol, pointers, DLPack capsules) and out (DLPack,
 *              NumPy's array interface)
 *   common.c   this header's functions
 *
 * future.c and tasks.c use each other: a Python task's Future cancels and releases its record,
 * and the scheduler makes the Future of a task it submits again after out-of-memory. Each file
 * but module.c has a header of its own for what it gives the files above it.
 */
#ifndef AB_PYTHON_COMMON_H
#define AB_PYTHON_COMMON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdatomic.h>
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

/* ---- exceptions, fork, argument parsing ------------------------------------------------------ */
extern PyObject *Error; /* arraybridge.Error and its subclasses, by code */
extern PyObject *InvalidError, *MemError, *TimeoutErr, *CancelledErr, *DeviceErr, *ReadOnlyErr, *QueueFullErr,
    *ShutdownErr, *NotSupportedErr;

/* Raise the exception for code, with the call's context and an optional detail (a memory report). */
PyObject *raise_ab(int code, const char *what, const char *detail);

/* Bumped in the child of every fork (pthread_atfork), read with the GIL held: a runtime records
 * the generation it was made in. kinds_opened: the kinds a runtime of this process opened;
 * kinds_inherited: those a parent had opened before the fork that made this process. */
extern unsigned fork_generation;
extern int kinds_opened[AB_KIND_COUNT], kinds_inherited[AB_KIND_COUNT];
void on_fork_child(void); /* pthread_atfork's, registered at import */

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
typedef struct py_task py_task; /* a Python task's record (tasks.c) */

/* Host Python tasks any host worker may run, in submit order. Allocated with its runtime and
 * freed after ab_runtime_destroy returns: a task of that runtime may use it even after the
 * Runtime object is gone. */
typedef struct {
  py_task *head, *tail;   /* the GIL guards them */
  _Atomic long queued;    /* how many records are in it: a hint read without the GIL */
} inline_list;

typedef struct {
  PyObject_HEAD
  ab_runtime *rt;
  inline_list *inl;             /* with rt: NULL before the runtime is made and after it closed */
  int closing;                  /* close() is under way: refuse new work */
  unsigned gen;                 /* the fork_generation it was made in */
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
  py_task *task; /* a Python task's record (a reference), for cancel; or NULL */
} FutureObject;

#endif
