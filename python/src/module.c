/*
 * python/src/module.c: arraybridge._core, the C extension over libarraybridge.
 *
 * Design notes
 *   Objects. Runtime wraps ab_runtime, Tensor wraps ab_tensor, Future wraps ab_future. A Tensor
 *   keeps a reference on the Runtime object that made it (if any), so that a copy requested
 *   through __dlpack__(copy=True / dl_device=CPU) can go back to that runtime.
 *
 *   The GIL. It is released around every call that may wait: ab_future_wait, a blocking
 *   submit, ab_runtime_destroy. Worker threads take it (PyGILState_Ensure) only to run Python
 *   tasks, to drop references on Python objects that back imported tensors, and to report a
 *   task that ended without running its Python code (cancelled, out of memory). Because no
 *   thread ever waits on the runtime while holding the GIL, a worker waiting for the GIL always
 *   gets it.
 *
 *   Python tasks. Runtime.submit(job, fail, ...) submits a compute task whose function calls
 *   job() with the GIL held. job returns 0, or AB_ENOMEM to enter the runtime's OOM ladder (the
 *   task is parked and job is called again later). When job has run to its end, the task drops
 *   its references there and then (it holds the GIL). If the task ends any other way
 *   (cancelled, ladder exhausted, shut down), an ab_future_then callback calls fail(status,
 *   message) under the GIL. Either way each Python future is settled exactly once.
 *
 *   Imported memory. Objects exported through the buffer protocol or an array interface stay
 *   referenced by the tensor; the reference is dropped under the GIL when the tensor's last
 *   reference goes, which may be on a worker thread. After interpreter finalisation began the
 *   reference is leaked on purpose (NumPy does the same in its DLPack deleter).
 *
 *   fork(). A child process has none of its parent's worker threads, and any lock one of them
 *   held stays held for ever. So a runtime made before a fork belongs to the parent: in the
 *   child (fork_generation differs) every use of it raises ShutdownError, waiting on one of
 *   its futures raises instead of hanging, and closing or dropping it, its futures and its
 *   tensors leaks them instead of joining threads that do not exist. A child makes runtimes
 *   of its own; the kinds of device its parent had opened (OpenCL drivers such as pocl, and
 *   CUDA, do not survive fork) are left out of them, with a warning saying why.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "arraybridge.h"

#define CAPSULE_V "dltensor_versioned"
#define CAPSULE_L "dltensor"
#define CAPSULE_USED_V "used_dltensor_versioned"
#define CAPSULE_USED_L "used_dltensor"

static PyObject *Error;      /* arraybridge.Error and its subclasses, by code */
static PyObject *InvalidError, *MemError, *TimeoutErr, *CancelledErr, *DeviceErr, *ReadOnlyErr,
    *QueueFullErr, *ShutdownErr, *NotSupportedErr;
static PyObject *copy_hook; /* Python: (tensor, dl_device or None) -> new Tensor */

static _Thread_local ab_ctx *tls_ctx; /* the compute task this worker thread is running */

/* ---- fork ------------------------------------------------------------------------------------ */
/* Bumped in the child of every fork (pthread_atfork), read with the GIL held: a runtime records
 * the generation it was made in. kinds_opened: the kinds a runtime of this process opened;
 * kinds_inherited: those a parent had opened before the fork that made this process. */
static unsigned fork_generation;
static int kinds_opened[AB_KIND_COUNT], kinds_inherited[AB_KIND_COUNT];

static void on_fork_child(void) {
  fork_generation++;
  for (int k = 0; k < AB_KIND_COUNT; k++) kinds_inherited[k] |= kinds_opened[k];
}

/* ---- worker threads entering Python --------------------------------------------------------- */
/* PyGILState_Ensure on a thread Python did not create makes a new thread state each time and
 * Release destroys it: about 10 us a task. A worker keeps one thread state for its lifetime
 * instead (created by the first Ensure, whose count is never released), and a thread-exit
 * destructor deletes it. Other Ensure/Release pairs on the thread (a deleter run by the
 * runtime) find that state and leave it alone. */
static pthread_key_t tstate_key;

static void tstate_destroy(void *p) {
  if (!Py_IsInitialized() || _Py_IsFinalizing()) return; /* the interpreter is gone or going */
  PyEval_RestoreThread((PyThreadState *)p);
  PyThreadState_Clear((PyThreadState *)p);
  PyThreadState_DeleteCurrent();
}

static _Thread_local int on_worker; /* this thread is a runtime worker (it ran Python tasks) */

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
 * pattern nobody waits on single futures, the last release is old, and workers do not spin. */
static _Atomic uint64_t gil_wait_gen;    /* bumped by a thread that released the GIL in wait() */
static _Atomic int64_t gil_wait_last_ns; /* when */
#define GIL_SPIN_RECENT_NS 200000
#define GIL_SPIN_MAX_NS 20000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void waiter_released_gil(void) {
  /* relaxed: a hint for the spin below; the GIL itself orders everything that matters */
  atomic_fetch_add_explicit(&gil_wait_gen, 1, memory_order_relaxed);
  atomic_store_explicit(&gil_wait_last_ns, mono_ns(), memory_order_relaxed);
}

static void spin_for_gil_handoff(void) {
  int64_t now = mono_ns();
  if (now - atomic_load_explicit(&gil_wait_last_ns, memory_order_relaxed) > GIL_SPIN_RECENT_NS) return;
  uint64_t gen = atomic_load_explicit(&gil_wait_gen, memory_order_relaxed);
  for (int i = 0;; i++) {
    if (atomic_load_explicit(&gil_wait_gen, memory_order_relaxed) != gen) return;
    cpu_relax();
    if ((i & 63) == 63 && mono_ns() - now > GIL_SPIN_MAX_NS) return;
  }
}

/* ---- errors ---------------------------------------------------------------------------------- */
static PyObject *error_class(int code) {
  switch (code) {
  case AB_EINVAL: case AB_EDTYPE: case AB_ESHAPE: case AB_EOVERFLOW: return InvalidError;
  case AB_ENOMEM: return MemError;
  case AB_ETIMEDOUT: return TimeoutErr;
  case AB_ECANCELED: return CancelledErr;
  case AB_ENODEV: case AB_EDEVICE: return DeviceErr;
  case AB_EPERM: return ReadOnlyErr;
  case AB_EAGAIN: return QueueFullErr;
  case AB_ESHUTDOWN: return ShutdownErr;
  case AB_ENOTSUP: return NotSupportedErr;
  default: return Error;
  }
}

/* Raise the exception for code, with the call's context and an optional detail (a memory report). */
static PyObject *raise_ab(int code, const char *what, const char *detail) {
  PyObject *msg = detail && *detail
                      ? PyUnicode_FromFormat("%s: %s (%s)\n%s", what, ab_strerror(code), ab_err_name(code), detail)
                      : PyUnicode_FromFormat("%s: %s (%s)", what, ab_strerror(code), ab_err_name(code));
  if (msg == NULL) return NULL;
  PyObject *exc = PyObject_CallOneArg(error_class(code), msg);
  Py_DECREF(msg);
  if (exc == NULL) return NULL;
  PyObject *c = PyLong_FromLong(code);
  if (c) PyObject_SetAttrString(exc, "code", c);
  Py_XDECREF(c);
  PyErr_SetObject(error_class(code), exc);
  Py_DECREF(exc);
  return NULL;
}

/* ---- object types ---------------------------------------------------------------------------- */
struct py_task;

typedef struct {
  PyObject_HEAD
  ab_runtime *rt;
  struct py_task *inl_head, *inl_tail; /* host Python tasks any host worker may run (the GIL guards it) */
  int closing;                         /* close() is under way: refuse new work */
  unsigned gen;                        /* the fork_generation it was made in */
} RuntimeObject;

/* A runtime made in another process (before a fork): nothing of it may be touched here. */
static int foreign(PyObject *rt) { return rt != NULL && ((RuntimeObject *)rt)->gen != fork_generation; }

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

static void py_task_unref(struct py_task *p);
static int py_task_cancel(struct py_task *p);

static PyTypeObject RuntimeType, TensorType, FutureType;

static PyObject *tensor_new_from(ab_tensor *t, PyObject *rt) {
  TensorObject *o = PyObject_New(TensorObject, &TensorType);
  if (o == NULL) {
    ab_tensor_release(t);
    return NULL;
  }
  o->t = t;
  o->rt = rt;
  Py_XINCREF(rt);
  return (PyObject *)o;
}

static PyObject *future_new_from(ab_future *f, PyObject *rt) {
  FutureObject *o = PyObject_New(FutureObject, &FutureType);
  if (o == NULL) {
    /* The task was accepted: it runs to its end; nobody will look at it. */
    ab_future_release(f);
    return NULL;
  }
  o->f = f;
  o->rt = rt;
  o->task = NULL;
  Py_XINCREF(rt);
  return (PyObject *)o;
}

static int check_runtime(RuntimeObject *self) {
  if (foreign((PyObject *)self)) {
    PyErr_SetString(ShutdownErr, "this runtime was made before a fork, in the parent process; its worker threads do "
                                 "not exist here: make a new Executor (or runtime) in this process");
    return -1;
  }
  if (self->rt == NULL || self->closing) {
    raise_ab(AB_ESHUTDOWN, "runtime is closed", NULL);
    return -1;
  }
  return 0;
}

/* ---- argument helpers ------------------------------------------------------------------------ */
static int parse_dtype(PyObject *o, DLDataType *dt) {
  if (o == NULL || o == Py_None) {
    dt->code = 0, dt->bits = 0, dt->lanes = 0;
    return 0;
  }
  int code, bits, lanes = 1;
  if (!PyTuple_Check(o)) {
    PyErr_SetString(PyExc_TypeError, "dtype must be a (code, bits, lanes) tuple");
    return -1;
  }
  if (!PyArg_ParseTuple(o, "ii|i;dtype must be a (code, bits, lanes) tuple", &code, &bits, &lanes)) return -1;
  if (code < 0 || code > 255 || bits < 0 || bits > 255 || lanes < 0 || lanes > 65535) {
    PyErr_SetString(InvalidError, "dtype (code, bits, lanes) out of range");
    return -1;
  }
  dt->code = (uint8_t)code, dt->bits = (uint8_t)bits, dt->lanes = (uint16_t)lanes;
  return 0;
}

static int parse_shape(PyObject *seq, int64_t *shape, int *ndim, const char *what) {
  PyObject *fast = PySequence_Fast(seq, what);
  if (fast == NULL) return -1;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  if (n > AB_MAX_NDIM) {
    Py_DECREF(fast);
    PyErr_Format(InvalidError, "%s: %zd dimensions, at most %d", what, n, AB_MAX_NDIM);
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    long long v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
    if (v == -1 && PyErr_Occurred()) {
      Py_DECREF(fast);
      return -1;
    }
    shape[i] = v;
  }
  *ndim = (int)n;
  Py_DECREF(fast);
  return 0;
}

static ab_device make_device(int kind, int index) { return (ab_device){kind, index}; }

/* ---- Python-owned memory behind a tensor ------------------------------------------------------- */
typedef struct {
  PyObject *owner;  /* the exporter, kept alive while the tensor lives */
  Py_buffer view;   /* when imported through the buffer protocol */
  int has_view;
} py_owner;

static void py_owner_release(void *arg) {
  py_owner *p = arg;
  if (!Py_IsInitialized() || _Py_IsFinalizing()) return; /* leak rather than touch a dying interpreter */
  PyGILState_STATE g = PyGILState_Ensure();
  if (p->has_view) PyBuffer_Release(&p->view);
  Py_XDECREF(p->owner);
  PyMem_RawFree(p);
  PyGILState_Release(g);
}

static PyObject *wrap_owned(DLTensor *dl, uint32_t flags, py_owner *p) {
  ab_tensor *t;
  int rc = ab_tensor_wrap(dl, flags, py_owner_release, p, &t);
  if (rc != 0) {
    if (p->has_view) PyBuffer_Release(&p->view);
    Py_XDECREF(p->owner);
    PyMem_RawFree(p);
    return raise_ab(rc, "cannot import the array", NULL);
  }
  return tensor_new_from(t, NULL);
}

/* struct-module format -> DLPack dtype. Only native byte order is accepted. */
static int format_dtype(const char *fmt, Py_ssize_t itemsize, DLDataType *dt) {
  if (fmt == NULL) fmt = "B";
  if (*fmt == '@' || *fmt == '=') fmt++;
  else if (*fmt == '<') fmt++; /* x86/arm64 are little-endian; CPython builds we target are too */
  else if (*fmt == '>' || *fmt == '!') {
    PyErr_SetString(InvalidError, "big-endian data cannot be exported through DLPack; byteswap it first");
    return -1;
  }
  int complex = 0;
  if (*fmt == 'Z') complex = 1, fmt++;
  if (fmt[0] == '\0' || fmt[1] != '\0') goto bad;
  dt->lanes = 1;
  dt->bits = (uint8_t)(itemsize * 8);
  switch (*fmt) {
  case 'b': case 'h': case 'i': case 'l': case 'q': case 'n': dt->code = kDLInt; break;
  case 'B': case 'H': case 'I': case 'L': case 'Q': case 'N': dt->code = kDLUInt; break;
  case 'c': dt->code = kDLUInt; break;
  case '?': dt->code = AB_DL_BOOL; break;
  case 'e': case 'f': case 'd': dt->code = complex ? kDLComplex : kDLFloat; break;
  default: goto bad;
  }
  if (complex && dt->code != kDLComplex) goto bad;
  return 0;
bad:
  PyErr_Format(InvalidError, "unsupported buffer format '%s'", fmt);
  return -1;
}

/* ---- module functions: importing ------------------------------------------------------------- */
static PyObject *mod_from_buffer(PyObject *m, PyObject *obj) {
  py_owner *p = PyMem_RawCalloc(1, sizeof *p);
  if (p == NULL) return PyErr_NoMemory();
  if (PyObject_GetBuffer(obj, &p->view, PyBUF_RECORDS_RO) != 0) {
    PyMem_RawFree(p);
    return NULL;
  }
  p->has_view = 1;
  DLTensor dl = {0};
  int64_t shape[AB_MAX_NDIM], strides[AB_MAX_NDIM];
  Py_buffer *v = &p->view;
  if (v->ndim > AB_MAX_NDIM) {
    PyErr_Format(InvalidError, "%d dimensions, at most %d", v->ndim, AB_MAX_NDIM);
    goto fail;
  }
  if (format_dtype(v->format, v->itemsize, &dl.dtype) != 0) goto fail;
  for (int i = 0; i < v->ndim; i++) {
    shape[i] = v->shape[i];
    Py_ssize_t s = v->strides ? v->strides[i] : 0;
    if (v->strides && s % v->itemsize != 0) {
      PyErr_SetString(InvalidError, "strides are not a multiple of the item size");
      goto fail;
    }
    strides[i] = v->strides ? s / v->itemsize : 0;
  }
  if (v->ndim == 0 && v->len != v->itemsize) { /* e.g. bytes: 1-D of itemsize 1 comes with ndim 1 */
    PyErr_SetString(InvalidError, "malformed 0-d buffer");
    goto fail;
  }
  dl.data = v->buf;
  dl.device = (DLDevice){kDLCPU, 0};
  dl.ndim = v->ndim;
  dl.shape = shape;
  dl.strides = v->strides ? strides : NULL;
  p->owner = NULL;
  return wrap_owned(&dl, v->readonly ? AB_TENSOR_READ_ONLY : 0, p);
fail:
  PyBuffer_Release(&p->view);
  PyMem_RawFree(p);
  return NULL;
}

/* wrap(ptr, shape, byte_strides|None, dtype, readonly, device_type, device_id, owner) */
static PyObject *mod_wrap(PyObject *m, PyObject *args) {
  unsigned long long ptr;
  PyObject *shape_o, *strides_o, *dtype_o, *owner;
  int readonly, dev_type, dev_id;
  if (!PyArg_ParseTuple(args, "KOOOpiiO", &ptr, &shape_o, &strides_o, &dtype_o, &readonly, &dev_type, &dev_id,
                        &owner))
    return NULL;
  DLTensor dl = {0};
  int64_t shape[AB_MAX_NDIM], strides[AB_MAX_NDIM];
  int nd, nds;
  if (parse_dtype(dtype_o, &dl.dtype) != 0 || parse_shape(shape_o, shape, &nd, "shape") != 0) return NULL;
  if (strides_o != Py_None) {
    if (parse_shape(strides_o, strides, &nds, "strides") != 0) return NULL;
    if (nds != nd) return PyErr_Format(InvalidError, "strides have %d entries, shape %d", nds, nd);
    int64_t es = dl.dtype.bits / 8;
    for (int i = 0; i < nd; i++) {
      if (es == 0 || strides[i] % es != 0) return PyErr_Format(InvalidError, "stride %lld is not a multiple of the item size",
                                                               (long long)strides[i]);
      strides[i] /= es;
    }
  }
  dl.data = (void *)(uintptr_t)ptr;
  dl.device = (DLDevice){(DLDeviceType)dev_type, dev_id};
  dl.ndim = nd;
  dl.shape = shape;
  dl.strides = strides_o != Py_None ? strides : NULL;
  py_owner *p = PyMem_RawCalloc(1, sizeof *p);
  if (p == NULL) return PyErr_NoMemory();
  p->owner = owner;
  Py_INCREF(owner);
  return wrap_owned(&dl, readonly ? AB_TENSOR_READ_ONLY : 0, p);
}

/* A DLPack capsule (versioned or legacy): the tensor takes ownership, the capsule is renamed. */
static PyObject *mod_from_capsule(PyObject *m, PyObject *cap) {
  ab_tensor *t;
  int rc;
  if (PyCapsule_IsValid(cap, CAPSULE_V)) {
    DLManagedTensorVersioned *mt = PyCapsule_GetPointer(cap, CAPSULE_V);
    if (mt->version.major != DLPACK_MAJOR_VERSION) {
      PyErr_Format(NotSupportedErr, "DLPack major version %u is not supported", mt->version.major);
      return NULL;
    }
    rc = ab_tensor_import(mt, &t);
    if (rc == 0) PyCapsule_SetName(cap, CAPSULE_USED_V);
  } else if (PyCapsule_IsValid(cap, CAPSULE_L)) {
    rc = ab_tensor_import_legacy(PyCapsule_GetPointer(cap, CAPSULE_L), &t);
    if (rc == 0) PyCapsule_SetName(cap, CAPSULE_USED_L);
  } else {
    PyErr_SetString(PyExc_TypeError, "expected an unconsumed 'dltensor' or 'dltensor_versioned' capsule");
    return NULL;
  }
  if (rc != 0) return raise_ab(rc, "cannot import the DLPack tensor", NULL);
  return tensor_new_from(t, NULL);
}

/* ---- Tensor ---------------------------------------------------------------------------------- */
static void tensor_dealloc(TensorObject *self) {
  if (!foreign(self->rt)) ab_tensor_release(self->t); /* else its arena may be locked for ever */
  Py_XDECREF(self->rt);
  PyObject_Free(self);
}

static PyObject *int64_tuple(const int64_t *v, int n) {
  PyObject *t = PyTuple_New(n);
  if (t == NULL) return NULL;
  for (int i = 0; i < n; i++) PyTuple_SET_ITEM(t, i, PyLong_FromLongLong(v[i]));
  return t;
}

static PyObject *tensor_shape(TensorObject *self, void *c) {
  const DLTensor *dl = ab_tensor_dl(self->t);
  return int64_tuple(dl->shape, dl->ndim);
}

static PyObject *tensor_strides(TensorObject *self, void *c) { /* in elements, always filled */
  const DLTensor *dl = ab_tensor_dl(self->t);
  return int64_tuple(dl->strides, dl->ndim);
}

static PyObject *tensor_dtype(TensorObject *self, void *c) {
  DLDataType dt = ab_tensor_dl(self->t)->dtype;
  return Py_BuildValue("(iii)", dt.code, dt.bits, dt.lanes);
}

static PyObject *tensor_device(TensorObject *self, void *c) {
  ab_device d = ab_tensor_device(self->t);
  return Py_BuildValue("(ii)", d.kind, d.index);
}

static PyObject *tensor_dl_device(TensorObject *self, void *c) {
  const DLTensor *dl = ab_tensor_dl(self->t);
  return Py_BuildValue("(ii)", (int)dl->device.device_type, dl->device.device_id);
}

static PyObject *tensor_nbytes(TensorObject *self, void *c) { return PyLong_FromSize_t(ab_tensor_nbytes(self->t)); }
static PyObject *tensor_ndim(TensorObject *self, void *c) { return PyLong_FromLong(ab_tensor_dl(self->t)->ndim); }
static PyObject *tensor_readonly(TensorObject *self, void *c) {
  return PyBool_FromLong(ab_tensor_flags(self->t) & AB_TENSOR_READ_ONLY);
}
static PyObject *tensor_contiguous(TensorObject *self, void *c) { return PyBool_FromLong(ab_tensor_is_contiguous(self->t)); }
static PyObject *tensor_data_ptr(TensorObject *self, void *c) {
  const DLTensor *dl = ab_tensor_dl(self->t);
  return PyLong_FromUnsignedLongLong((uintptr_t)dl->data + dl->byte_offset);
}

/* NumPy's array interface v3, for host tensors only: NumPy then wraps the memory without a copy
 * and keeps this object alive as the array's base. */
static PyObject *tensor_array_interface(TensorObject *self, void *c) {
  const DLTensor *dl = ab_tensor_dl(self->t);
  if (ab_tensor_device(self->t).kind != AB_HOST) {
    PyErr_SetString(PyExc_AttributeError, "__array_interface__: the tensor is not in host memory");
    return NULL;
  }
  char kind;
  switch (dl->dtype.code) {
  case kDLInt: kind = 'i'; break;
  case kDLUInt: kind = 'u'; break;
  case kDLFloat: kind = 'f'; break;
  case kDLComplex: kind = 'c'; break;
  case AB_DL_BOOL: kind = 'b'; break;
  default:
    PyErr_SetString(PyExc_AttributeError, "__array_interface__: no NumPy type for this dtype");
    return NULL;
  }
  int es = dl->dtype.bits / 8;
  char typestr[8];
  snprintf(typestr, sizeof typestr, "%c%c%d", es == 1 ? '|' : '<', kind, es);
  PyObject *strides = PyTuple_New(dl->ndim);
  if (strides == NULL) return NULL;
  for (int i = 0; i < dl->ndim; i++) PyTuple_SET_ITEM(strides, i, PyLong_FromLongLong(dl->strides[i] * es));
  PyObject *shape = int64_tuple(dl->shape, dl->ndim);
  uintptr_t ptr = (uintptr_t)dl->data + dl->byte_offset;
  PyObject *r = Py_BuildValue("{s:N,s:s,s:(KO),s:N,s:i}", "shape", shape, "typestr", typestr, "data",
                              (unsigned long long)ptr, ab_tensor_flags(self->t) & AB_TENSOR_READ_ONLY ? Py_True : Py_False,
                              "strides", strides, "version", 3);
  return r;
}

static void capsule_destructor(PyObject *cap) {
  /* Only an unconsumed capsule still owns its tensor (DLPack's Python specification). */
  if (PyCapsule_IsValid(cap, CAPSULE_V)) {
    DLManagedTensorVersioned *m = PyCapsule_GetPointer(cap, CAPSULE_V);
    if (m->deleter) m->deleter(m);
  } else if (PyCapsule_IsValid(cap, CAPSULE_L)) {
    DLManagedTensor *m = PyCapsule_GetPointer(cap, CAPSULE_L);
    if (m->deleter) m->deleter(m);
  }
}

static PyObject *export_capsule(ab_tensor *t, int versioned, int copied) {
  int rc;
  if (versioned) {
    DLManagedTensorVersioned *m;
    rc = ab_tensor_export(t, &m);
    if (rc == 0) {
      if (copied) m->flags |= DLPACK_FLAG_BITMASK_IS_COPIED;
      PyObject *cap = PyCapsule_New(m, CAPSULE_V, capsule_destructor);
      if (cap == NULL) m->deleter(m);
      return cap;
    }
  } else {
    DLManagedTensor *m;
    rc = ab_tensor_export_legacy(t, &m);
    if (rc == 0) {
      PyObject *cap = PyCapsule_New(m, CAPSULE_L, capsule_destructor);
      if (cap == NULL) m->deleter(m);
      return cap;
    }
    if (rc == AB_EPERM) {
      PyErr_SetString(PyExc_BufferError, "the tensor is read-only and the consumer asked for legacy DLPack, "
                                         "which cannot mark it read-only: pass max_version=(1, 0)");
      return NULL;
    }
  }
  return raise_ab(rc, "cannot export the tensor", NULL);
}

/* __dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None) */
static PyObject *tensor_dlpack(TensorObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
  PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None, *copy = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|$OOOO", kwlist, &stream, &max_version, &dl_device, &copy))
    return NULL;
  if (stream != Py_None && !PyLong_Check(stream)) {
    PyErr_SetString(PyExc_TypeError, "__dlpack__: stream must be an integer or None");
    return NULL;
  }
  int versioned = 0;
  if (max_version != Py_None) {
    unsigned major, minor;
    if (!PyTuple_Check(max_version)) {
      PyErr_SetString(PyExc_TypeError, "max_version must be a (major, minor) tuple");
      return NULL;
    }
    if (!PyArg_ParseTuple(max_version, "II;max_version must be a (major, minor) tuple", &major, &minor)) return NULL;
    versioned = major >= 1;
  }
  const DLTensor *dl = ab_tensor_dl(self->t);
  int want_copy = copy != Py_None && PyObject_IsTrue(copy);
  int forbid_copy = copy != Py_None && !PyObject_IsTrue(copy);
  int other_device = 0;
  if (dl_device != Py_None) {
    int dt, di;
    if (!PyTuple_Check(dl_device)) {
      PyErr_SetString(PyExc_TypeError, "dl_device must be a (device_type, device_id) tuple");
      return NULL;
    }
    if (!PyArg_ParseTuple(dl_device, "ii;dl_device must be a (device_type, device_id) tuple", &dt, &di)) return NULL;
    int same = dt == (int)dl->device.device_type && di == dl->device.device_id;
    if (!same && dt != kDLCPU) {
      PyErr_Format(PyExc_BufferError, "__dlpack__: cannot export to device (%d, %d); only the tensor's own device "
                                      "or the CPU", dt, di);
      return NULL;
    }
    other_device = !same;
  }
  if (other_device && forbid_copy) {
    PyErr_SetString(PyExc_BufferError, "__dlpack__: copy=False, but moving to the CPU needs a copy");
    return NULL;
  }
  if (!want_copy && !other_device) return export_capsule(self->t, versioned, 0);
  if (copy_hook == NULL) {
    PyErr_SetString(PyExc_BufferError, "__dlpack__: copying is not available");
    return NULL;
  }
  PyObject *c = PyObject_CallFunctionObjArgs(copy_hook, (PyObject *)self, other_device ? dl_device : Py_None, NULL);
  if (c == NULL) return NULL;
  if (!PyObject_TypeCheck(c, &TensorType)) {
    Py_DECREF(c);
    PyErr_SetString(PyExc_TypeError, "copy hook must return a Tensor");
    return NULL;
  }
  PyObject *cap = export_capsule(((TensorObject *)c)->t, versioned, 1);
  Py_DECREF(c);
  return cap;
}

static PyObject *tensor_dlpack_device(TensorObject *self, PyObject *unused) {
  const DLTensor *dl = ab_tensor_dl(self->t);
  return Py_BuildValue("(ii)", (int)dl->device.device_type, dl->device.device_id);
}

/* A view: t[i] along the first axis. */
static PyObject *tensor_index(TensorObject *self, PyObject *arg) {
  long long i = PyLong_AsLongLong(arg);
  if (i == -1 && PyErr_Occurred()) return NULL;
  ab_tensor *v;
  int rc = ab_tensor_index(self->t, i, &v);
  if (rc != 0) return raise_ab(rc, "index", NULL);
  return tensor_new_from(v, self->rt);
}

static PyObject *tensor_repr(TensorObject *self) {
  const DLTensor *dl = ab_tensor_dl(self->t);
  ab_device d = ab_tensor_device(self->t);
  static const char *kinds[] = {"host", "opencl", "cuda"};
  char shape[256] = "";
  size_t used = 0;
  for (int i = 0; i < dl->ndim && used < sizeof shape - 24; i++)
    used += (size_t)snprintf(shape + used, sizeof shape - used, i ? ", %lld" : "%lld", (long long)dl->shape[i]);
  return PyUnicode_FromFormat("<arraybridge.Tensor shape=(%s) dtype=(%d,%d) device=%s:%d>", shape, dl->dtype.code,
                              dl->dtype.bits, d.kind >= 0 && d.kind < 3 ? kinds[d.kind] : "?", d.index);
}

static PyObject *tensor_runtime(TensorObject *self, void *c) {
  PyObject *r = self->rt ? self->rt : Py_None;
  Py_INCREF(r);
  return r;
}

static PyGetSetDef tensor_getset[] = {
    {"runtime", (getter)tensor_runtime, NULL, "the Runtime that made it, or None", NULL},
    {"shape", (getter)tensor_shape, NULL, "shape", NULL},
    {"strides", (getter)tensor_strides, NULL, "strides in elements", NULL},
    {"dtype", (getter)tensor_dtype, NULL, "DLPack (code, bits, lanes)", NULL},
    {"device", (getter)tensor_device, NULL, "the runtime's (kind, index)", NULL},
    {"dl_device", (getter)tensor_dl_device, NULL, "DLPack (device_type, device_id)", NULL},
    {"nbytes", (getter)tensor_nbytes, NULL, NULL, NULL},
    {"ndim", (getter)tensor_ndim, NULL, NULL, NULL},
    {"readonly", (getter)tensor_readonly, NULL, NULL, NULL},
    {"contiguous", (getter)tensor_contiguous, NULL, NULL, NULL},
    {"data_ptr", (getter)tensor_data_ptr, NULL, "address of the first element", NULL},
    {"__array_interface__", (getter)tensor_array_interface, NULL, NULL, NULL},
    {NULL},
};

static PyMethodDef tensor_methods[] = {
    {"__dlpack__", (PyCFunction)(void (*)(void))tensor_dlpack, METH_VARARGS | METH_KEYWORDS, NULL},
    {"__dlpack_device__", (PyCFunction)tensor_dlpack_device, METH_NOARGS, NULL},
    {"index", (PyCFunction)tensor_index, METH_O, "a view of t[i] along the first axis"},
    {NULL},
};

static PyTypeObject TensorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "arraybridge._core.Tensor",
    .tp_basicsize = sizeof(TensorObject),
    .tp_dealloc = (destructor)tensor_dealloc,
    .tp_repr = (reprfunc)tensor_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A runtime tensor (a DLPack producer). Made by the runtime or by the import functions.",
    .tp_methods = tensor_methods,
    .tp_getset = tensor_getset,
};

/* ---- Future ---------------------------------------------------------------------------------- */
static void future_dealloc(FutureObject *self) {
  if (foreign(self->rt)) { /* made before a fork: leaked, see the design notes */
    Py_XDECREF(self->rt);
    PyObject_Free(self);
    return;
  }
  if (self->task) py_task_unref(self->task);
  ab_future_release(self->f);
  Py_XDECREF(self->rt);
  PyObject_Free(self);
}

static int64_t timeout_ns(PyObject *t) {
  if (t == NULL || t == Py_None) return -1;
  double s = PyFloat_AsDouble(t);
  if (s == -1.0 && PyErr_Occurred()) return -2;
  if (s < 0) return 0;
  return s > 9e9 ? -1 : (int64_t)(s * 1e9);
}

/* While a thread waits on a future it wakes this often to run Python's signal handlers, so that
 * Ctrl-C (or any handler that raises) interrupts result() at once, as it does
 * ThreadPoolExecutor's, rather than when the task ends. Only the main thread runs handlers;
 * elsewhere the check costs a load. */
#define WAIT_SLICE_NS 20000000

/* wait(timeout=None) -> bool: True once complete. The GIL is released while waiting. */
static PyObject *future_wait(FutureObject *self, PyObject *args) {
  PyObject *t = Py_None;
  if (!PyArg_ParseTuple(args, "|O", &t)) return NULL;
  int64_t ns = timeout_ns(t);
  if (ns == -2) return NULL;
  int rc = ab_future_wait(self->f, 0);
  if (rc == AB_ETIMEDOUT && ns != 0 && foreign(self->rt)) {
    PyErr_SetString(ShutdownErr, "this task belongs to a runtime of the parent process (made before a fork): it "
                                 "cannot complete here");
    return NULL;
  }
  int64_t deadline = ns < 0 ? -1 : mono_ns() + ns;
  for (int first = 1; rc == AB_ETIMEDOUT && ns != 0; first = 0) {
    int64_t slice = WAIT_SLICE_NS;
    if (deadline >= 0) {
      int64_t left = deadline - mono_ns();
      if (left <= 0) break;
      if (left < slice) slice = left;
    }
    Py_BEGIN_ALLOW_THREADS
    if (first) waiter_released_gil();
    rc = ab_future_wait(self->f, slice);
    Py_END_ALLOW_THREADS
    if (rc == AB_ETIMEDOUT && PyErr_CheckSignals() < 0) return NULL;
  }
  if (rc == 0) Py_RETURN_TRUE;
  if (rc == AB_ETIMEDOUT) Py_RETURN_FALSE;
  return raise_ab(rc, "wait", NULL);
}

static PyObject *future_done(FutureObject *self, PyObject *u) {
  return PyBool_FromLong(ab_future_status(self->f) != AB_EPENDING);
}

static PyObject *future_status(FutureObject *self, PyObject *u) { return PyLong_FromLong(ab_future_status(self->f)); }

static PyObject *future_message(FutureObject *self, PyObject *u) {
  const char *m = ab_future_message(self->f);
  if (m == NULL) Py_RETURN_NONE;
  return PyUnicode_FromString(m);
}

/* result(timeout=None) -> Tensor or None; raises the task's error. */
static PyObject *future_result(FutureObject *self, PyObject *args) {
  PyObject *w = future_wait(self, args);
  if (w == NULL) return NULL;
  int done = w == Py_True;
  Py_DECREF(w);
  if (!done) return raise_ab(AB_ETIMEDOUT, "result", NULL);
  ab_tensor *t = NULL;
  int rc = ab_future_result(self->f, &t);
  if (rc != 0) return raise_ab(rc, "task failed", ab_future_message(self->f));
  if (t == NULL) Py_RETURN_NONE;
  return tensor_new_from(t, self->rt);
}

/* 0: it will never run (a Python task: its Python future is for the caller to settle);
 * AB_EBUSY: running; AB_EALREADY: complete. */
static PyObject *future_cancel(FutureObject *self, PyObject *u) {
  if (foreign(self->rt)) return PyLong_FromLong(AB_EBUSY); /* the parent's: not ours to touch */
  if (self->task != NULL) {
    int rc = py_task_cancel(self->task);
    if (rc != 0) return PyLong_FromLong(rc);
    ab_future_cancel(self->f); /* best effort: a task that starts anyway finds nothing to run */
    return PyLong_FromLong(0);
  }
  return PyLong_FromLong(ab_future_cancel(self->f));
}

static PyMethodDef future_methods[] = {
    {"wait", (PyCFunction)future_wait, METH_VARARGS, "wait(timeout=None) -> bool, the GIL released"},
    {"done", (PyCFunction)future_done, METH_NOARGS, NULL},
    {"status", (PyCFunction)future_status, METH_NOARGS, "0, an AB_E* code, or AB_EPENDING"},
    {"message", (PyCFunction)future_message, METH_NOARGS, "why it failed (a memory report for ENOMEM)"},
    {"result", (PyCFunction)future_result, METH_VARARGS, "result(timeout=None) -> Tensor or None"},
    {"cancel", (PyCFunction)future_cancel, METH_NOARGS, "0, AB_EBUSY (running) or AB_EALREADY"},
    {NULL},
};

static PyTypeObject FutureType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "arraybridge._core.Future",
    .tp_basicsize = sizeof(FutureObject),
    .tp_dealloc = (destructor)future_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The runtime's future for one task.",
    .tp_methods = future_methods,
};

/* ---- Runtime --------------------------------------------------------------------------------- */
static int kind_options(PyObject *d, const char *key, long long *out) {
  if (d == NULL || d == Py_None) return 0;
  PyObject *v = PyDict_GetItemString(d, key);
  if (v == NULL) return 0;
  *out = PyLong_AsLongLong(v);
  return (*out == -1 && PyErr_Occurred()) ? -1 : 1;
}

static const char *kind_names[AB_KIND_COUNT] = {"host", "opencl", "cuda"};

/* The kinds whose drivers this runtime initialised and uses (a kind it found no device of is
 * of no loss to a forked child, and not worth a warning there). */
static void note_opened_kinds(ab_runtime *rt) {
  ab_device devs[256];
  int n = ab_runtime_devices(rt, devs, 256);
  for (int i = 0; i < n && i < 256; i++)
    if (devs[i].kind != AB_HOST && devs[i].kind >= 0 && devs[i].kind < AB_KIND_COUNT) kinds_opened[devs[i].kind] = 1;
}

/* A process forked from one that had opened OpenCL or CUDA cannot use them: the drivers' threads
 * and state do not survive fork (pocl's command queues would never run, CUDA reports an
 * initialisation error). Such kinds are left out of this process's runtimes, said once each. */
static int inherited_kinds_off(ab_runtime_options *o) {
  static int warned[AB_KIND_COUNT];
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    if (!kinds_inherited[k] || o->kinds[k].disabled) continue;
    o->kinds[k].disabled = 1;
    if (warned[k]++) continue;
    if (PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                         "arraybridge: this process was forked from one that had initialised %s, whose driver "
                         "does not survive fork(); its runtimes open no %s devices. Use multiprocessing's "
                         "'spawn' or 'forkserver' start method to use them in child processes.",
                         k == AB_OPENCL ? "OpenCL" : "CUDA", kind_names[k]) < 0)
      return -1;
  }
  return 0;
}

/* Runtime(workers=None, memory_limit=None, logical_split=None, disable=(), queue_capacity=0,
 *         oom_deadline=None, oom_no_wait=False, allow_reroute=False)
 * workers / memory_limit / logical_split: dicts keyed by "host", "opencl", "cuda". */
static int runtime_init(RuntimeObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"workers", "memory_limit", "logical_split", "disable", "queue_capacity",
                           "oom_deadline", "oom_no_wait", "allow_reroute", NULL};
  PyObject *workers = NULL, *limit = NULL, *split = NULL, *disable = NULL, *deadline = Py_None;
  unsigned int qcap = 0;
  int no_wait = 0, reroute = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOOOIOpp", kwlist, &workers, &limit, &split, &disable, &qcap,
                                   &deadline, &no_wait, &reroute))
    return -1;
  if (self->rt != NULL) {
    PyErr_SetString(PyExc_RuntimeError, "Runtime already initialised");
    return -1;
  }
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    long long v;
    int r;
    if ((r = kind_options(workers, kind_names[k], &v)) < 0) return -1;
    if (r) o.kinds[k].workers_per_device = (int)v;
    if ((r = kind_options(limit, kind_names[k], &v)) < 0) return -1;
    if (r) o.kinds[k].memory_limit = (uint64_t)v;
    if ((r = kind_options(split, kind_names[k], &v)) < 0) return -1;
    if (r) o.kinds[k].logical_split = (int)v;
    if (disable && disable != Py_None) {
      PyObject *name = PyUnicode_FromString(kind_names[k]);
      int has = PySequence_Contains(disable, name);
      Py_DECREF(name);
      if (has < 0) return -1;
      o.kinds[k].disabled = has;
    }
  }
  if (inherited_kinds_off(&o) != 0) return -1;
  o.queue_capacity = qcap;
  if (deadline != Py_None) {
    int64_t ns = timeout_ns(deadline);
    if (ns == -2) return -1;
    o.oom.deadline_ns = ns < 0 ? INT64_MAX : ns;
  }
  o.oom.no_wait = no_wait;
  o.oom.allow_reroute = reroute;
  self->gen = fork_generation;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ab_runtime_create(&o, &self->rt);
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    raise_ab(rc, "cannot create the runtime", NULL);
    return -1;
  }
  note_opened_kinds(self->rt);
  return 0;
}

static void inline_list_drop(RuntimeObject *self);
static void inline_list_free(struct py_task *list);

static int runtime_close_rt(RuntimeObject *self, int how) {
  ab_runtime *rt = self->rt;
  if (rt == NULL || self->closing) return 0;
  if (foreign((PyObject *)self)) { /* the parent's: leaked, with what its records hold */
    self->rt = NULL;
    self->inl_head = self->inl_tail = NULL;
    return 0;
  }
  self->closing = 1; /* the C API must not be used while destroy runs */
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ab_runtime_destroy(rt, how);
  Py_END_ALLOW_THREADS
  self->rt = NULL; /* after destroy: workers running batches use the list until they exit */
  self->closing = 0;
  inline_list_drop(self);
  return rc;
}

/* The last reference to a Runtime can go on one of its own workers (a task drops the last
 * future that pointed at it). Destroy waits for every worker, that one included, so there it
 * runs on a thread of its own, which then drops what the inline list still holds. */
typedef struct {
  ab_runtime *rt;
  struct py_task *list;
} detached_close;

static void *close_detached(void *arg) {
  detached_close *c = arg;
  ab_runtime_destroy(c->rt, AB_DRAIN);
  inline_list_free(c->list);
  free(c);
  return NULL;
}

static void runtime_dealloc(RuntimeObject *self) {
  detached_close *c;
  pthread_t th;
  pthread_attr_t attr;
  if (self->rt && on_worker && !foreign((PyObject *)self) && (c = malloc(sizeof *c)) != NULL) {
    *c = (detached_close){self->rt, self->inl_head};
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, close_detached, c) == 0) {
      self->rt = NULL;
      self->inl_head = self->inl_tail = NULL;
    } else {
      free(c);
    }
    pthread_attr_destroy(&attr);
  }
  runtime_close_rt(self, AB_DRAIN); /* not on a worker (or the thread could not start) */
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *runtime_close(RuntimeObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"cancel", NULL};
  int cancel = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &cancel)) return NULL;
  int rc = runtime_close_rt(self, cancel ? AB_CANCEL : AB_DRAIN);
  if (rc != 0) return raise_ab(rc, "close", NULL);
  Py_RETURN_NONE;
}

static PyObject *runtime_closed(RuntimeObject *self, void *c) {
  return PyBool_FromLong(self->rt == NULL || self->closing || foreign((PyObject *)self));
}

static PyObject *runtime_devices(RuntimeObject *self, PyObject *u) {
  if (check_runtime(self)) return NULL;
  ab_device devs[256];
  int n = ab_runtime_devices(self->rt, devs, 256);
  if (n < 0) return raise_ab(n, "devices", NULL);
  if (n > 256) n = 256;
  PyObject *l = PyList_New(n);
  for (int i = 0; l && i < n; i++) PyList_SET_ITEM(l, i, Py_BuildValue("(ii)", devs[i].kind, devs[i].index));
  return l;
}

static PyObject *runtime_device_info(RuntimeObject *self, PyObject *args) {
  int kind, index;
  if (!PyArg_ParseTuple(args, "ii", &kind, &index) || check_runtime(self)) return NULL;
  ab_device_info info;
  int rc = ab_device_info_get(self->rt, make_device(kind, index), &info);
  if (rc != 0) return raise_ab(rc, "device_info", NULL);
  return Py_BuildValue("{s:s,s:(ii),s:i,s:i,s:K,s:K}", "name", info.name, "device", kind, index, "physical",
                       info.physical, "workers", info.workers, "memory_total",
                       (unsigned long long)info.memory_total, "budget", (unsigned long long)info.budget);
}

#define STAT_FIELDS(X)                                                                              \
  X(tasks_submitted) X(tasks_completed) X(tasks_failed) X(tasks_canceled) X(bytes_moved) X(mem_used)  \
  X(mem_peak) X(mem_budget) X(queued) X(parked) X(oom_events) X(oom_trims) X(oom_syncs) X(oom_spills) \
  X(oom_parks) X(oom_retries) X(oom_reroutes) X(oom_failures) X(faults_injected)

static PyObject *runtime_stats(RuntimeObject *self, PyObject *u) {
  if (check_runtime(self)) return NULL;
  ab_device_stats st[256];
  int n = ab_runtime_stats(self->rt, st, 256);
  if (n < 0) return raise_ab(n, "stats", NULL);
  if (n > 256) n = 256;
  PyObject *l = PyList_New(n);
  for (int i = 0; l && i < n; i++) {
    PyObject *d = Py_BuildValue("{s:(ii)}", "device", st[i].device.kind, st[i].device.index);
#define X(f) if (d) { PyObject *v = PyLong_FromUnsignedLongLong(st[i].f); PyDict_SetItemString(d, #f, v); Py_XDECREF(v); }
    STAT_FIELDS(X)
#undef X
    if (d == NULL) {
      Py_DECREF(l);
      return NULL;
    }
    PyList_SET_ITEM(l, i, d);
  }
  return l;
}

/* fault(op, kind, index, nth=1, count=1, delay_ns=0) */
static PyObject *runtime_fault(RuntimeObject *self, PyObject *args) {
  int op, kind, index;
  unsigned long long nth = 1;
  long long count = 1, delay = 0;
  if (!PyArg_ParseTuple(args, "iii|KLL", &op, &kind, &index, &nth, &count, &delay) || check_runtime(self)) return NULL;
  ab_fault_spec s = {.op = op, .device = make_device(kind, index), .nth = nth, .count = count, .delay_ns = delay};
  int rc = ab_runtime_fault(self->rt, &s);
  if (rc != 0) return raise_ab(rc, "fault", NULL);
  Py_RETURN_NONE;
}

static int parse_place(PyObject *dev, int policy, ab_place *p) {
  int kind = AB_HOST, index = AB_ANY;
  if (dev != NULL && dev != Py_None) {
    if (!PyTuple_Check(dev)) {
      PyErr_SetString(PyExc_TypeError, "device must be a (kind, index) tuple");
      return -1;
    }
    if (!PyArg_ParseTuple(dev, "ii;device must be a (kind, index) tuple", &kind, &index)) return -1;
  }
  p->policy = policy;
  p->device = make_device(kind, index);
  p->mode = AB_SUBMIT_TRY; /* first try with the GIL held; see submit_blocking */
  return 0;
}

/* Submit with the GIL held when the queue has room; when it is full, release the GIL and block,
 * so the workers (which may need the GIL to drain it) can make progress. Except on a thread
 * inside a runtime's task or completion callback: there blocking could stop the very workers
 * that drain the queue (every worker a task that submits, all of them waiting for room), so a
 * full queue raises QueueFullError at once, and the Executor keeps the task until there is room
 * (python/arraybridge/executor.py). */
static _Thread_local int in_runtime_thread; /* inside a Python task or a completion callback */

#define SUBMIT_BLOCKING(place, call)                                                                \
  do {                                                                                              \
    rc = (call);                                                                                    \
    if (rc == AB_EAGAIN && !try_only && !in_runtime_thread) {                                       \
      (place).mode = AB_SUBMIT_BLOCK;                                                               \
      Py_BEGIN_ALLOW_THREADS rc = (call);                                                           \
      Py_END_ALLOW_THREADS                                                                          \
    }                                                                                               \
  } while (0)

static int parse_convert_options(PyObject *device, int policy, PyObject *dtype_o, int cast, int strict, int force_copy,
                                 ab_convert_options *o, ab_device *dst) {
  *o = (ab_convert_options)AB_CONVERT_OPTIONS_INIT;
  if (parse_dtype(dtype_o, &o->dtype) != 0) return -1;
  o->cast = cast;
  o->strict = strict;
  o->force_copy = force_copy;
  if (parse_place(device, policy, &o->place) != 0) return -1;
  *dst = o->place.device;
  return 0;
}

static int as_tensor(PyObject *o, ab_tensor **t) {
  if (!PyObject_TypeCheck(o, &TensorType)) {
    PyErr_Format(PyExc_TypeError, "expected an arraybridge Tensor, got %.100s", Py_TYPE(o)->tp_name);
    return -1;
  }
  *t = ((TensorObject *)o)->t;
  return 0;
}

/* convert(tensor, device, dtype=None, cast=0, strict=False, force_copy=False, policy=EXPLICIT, try_only=False) */
static PyObject *runtime_convert(RuntimeObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"tensor", "device", "dtype", "cast", "strict", "force_copy", "policy", "try_only", NULL};
  PyObject *src_o, *device, *dtype_o = Py_None;
  int cast = 0, strict = 0, force_copy = 0, policy = AB_PLACE_EXPLICIT, try_only = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Oippip", kwlist, &src_o, &device, &dtype_o, &cast, &strict,
                                   &force_copy, &policy, &try_only) ||
      check_runtime(self))
    return NULL;
  ab_tensor *src;
  ab_convert_options o;
  ab_device dst;
  if (as_tensor(src_o, &src) || parse_convert_options(device, policy, dtype_o, cast, strict, force_copy, &o, &dst))
    return NULL;
  ab_future *f;
  int rc;
  SUBMIT_BLOCKING(o.place, ab_convert(self->rt, src, dst, &o, &f));
  if (rc != 0) return raise_ab(rc, "convert", NULL);
  return future_new_from(f, (PyObject *)self);
}

/* stack(slices, device, dtype=None, cast=0, strict=False): slices are Tensors or objects with the
 * buffer protocol (imported here without a Python wrapper each: the common numpy case). */
static PyObject *runtime_stack(RuntimeObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"slices", "device", "dtype", "cast", "strict", "policy", "try_only", NULL};
  PyObject *seq, *device, *dtype_o = Py_None;
  int cast = 0, strict = 0, policy = AB_PLACE_EXPLICIT, try_only = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|Oippp", kwlist, &seq, &device, &dtype_o, &cast, &strict, &policy,
                                   &try_only) ||
      check_runtime(self))
    return NULL;
  ab_convert_options o;
  ab_device dst;
  if (parse_convert_options(device, policy, dtype_o, cast, strict, 0, &o, &dst)) return NULL;
  PyObject *fast = PySequence_Fast(seq, "slices must be a sequence");
  if (fast == NULL) return NULL;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  ab_tensor **ts = PyMem_Calloc((size_t)n + 1, sizeof *ts);
  PyObject *result = NULL;
  if (ts == NULL) {
    PyErr_NoMemory();
    goto out;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *it = PySequence_Fast_GET_ITEM(fast, i);
    if (PyObject_TypeCheck(it, &TensorType)) {
      ts[i] = ab_tensor_retain(((TensorObject *)it)->t);
      continue;
    }
    PyObject *w = mod_from_buffer(NULL, it);
    if (w == NULL) {
      if (PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(NotSupportedErr)) {
        PyErr_Clear(); /* no buffer at all; errors in the buffer (byte order, format) stay */
        PyErr_Format(PyExc_TypeError, "slice %zd: expected a Tensor or a host array (buffer protocol), got %.100s",
                     i, Py_TYPE(it)->tp_name);
      }
      goto out;
    }
    ts[i] = ab_tensor_retain(((TensorObject *)w)->t);
    Py_DECREF(w);
  }
  ab_future *f;
  int rc;
  SUBMIT_BLOCKING(o.place, ab_stack(self->rt, ts, (size_t)n, dst, &o, &f));
  if (rc != 0) {
    raise_ab(rc, "stack", NULL);
    goto out;
  }
  result = future_new_from(f, (PyObject *)self);
out:
  for (Py_ssize_t i = 0; ts && i < n; i++) ab_tensor_release(ts[i]);
  PyMem_Free(ts);
  Py_DECREF(fast);
  return result;
}

/* unstack(volume, device) -> list of Futures */
static PyObject *runtime_unstack(RuntimeObject *self, PyObject *args) {
  PyObject *vol_o, *device;
  if (!PyArg_ParseTuple(args, "OO", &vol_o, &device) || check_runtime(self)) return NULL;
  ab_tensor *vol;
  ab_convert_options o;
  ab_device dst;
  if (as_tensor(vol_o, &vol) || parse_convert_options(device, AB_PLACE_EXPLICIT, Py_None, 0, 0, 0, &o, &dst))
    return NULL;
  const DLTensor *dl = ab_tensor_dl(vol);
  if (dl->ndim < 1) return raise_ab(AB_ESHAPE, "unstack needs at least one dimension", NULL);
  int64_t n = dl->shape[0];
  ab_future **fs = PyMem_Calloc((size_t)n + 1, sizeof *fs);
  if (fs == NULL) return PyErr_NoMemory();
  o.place.mode = AB_SUBMIT_BLOCK;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ab_unstack(self->rt, vol, dst, &o, fs);
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    PyMem_Free(fs);
    return raise_ab(rc, "unstack", NULL);
  }
  PyObject *l = PyList_New((Py_ssize_t)n);
  for (int64_t i = 0; i < n; i++) {
    PyObject *fo = l ? future_new_from(fs[i], (PyObject *)self) : NULL;
    if (fo == NULL) {
      ab_future_release(fs[i]);
      continue;
    }
    PyList_SET_ITEM(l, (Py_ssize_t)i, fo);
  }
  PyMem_Free(fs);
  if (l && PyErr_Occurred()) Py_CLEAR(l);
  return l;
}

/* empty(shape, dtype, device) -> Tensor, from the device's arena (uninitialised) */
static PyObject *runtime_empty(RuntimeObject *self, PyObject *args) {
  PyObject *shape_o, *dtype_o, *device;
  if (!PyArg_ParseTuple(args, "OOO", &shape_o, &dtype_o, &device) || check_runtime(self)) return NULL;
  int64_t shape[AB_MAX_NDIM];
  int nd, kind, index;
  DLDataType dt;
  if (parse_shape(shape_o, shape, &nd, "shape") || parse_dtype(dtype_o, &dt) ||
      !PyTuple_Check(device) || !PyArg_ParseTuple(device, "ii", &kind, &index)) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "device must be a (kind, index) tuple");
    return NULL;
  }
  ab_tensor *t;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ab_tensor_alloc(self->rt, make_device(kind, index), dt, nd, shape, &t);
  Py_END_ALLOW_THREADS
  if (rc != 0) return raise_ab(rc, "empty", NULL);
  return tensor_new_from(t, (PyObject *)self);
}

/* ---- Python tasks ---------------------------------------------------------------------------- */
/* A task that calls fn(*args, **kwargs) on a worker and settles `fut`, a Python future with
 * three methods (python/arraybridge/executor.py):
 *   fut._ab_settle(result)           fn returned
 *   fut._ab_raised(exc) -> bool      fn raised; True asks for a retry through the OOM ladder
 *   fut._ab_end(status, message)     the task ended without fn returning or raising for good
 *                                    (cancelled, out of memory at the ladder's end, shut down)
 * Before the first call fut._state must still be "PENDING" (it becomes "RUNNING"); anything
 * else means Python cancelled it first and fn is not called. */
/* Host Python tasks run in batches. A worker that holds the GIL for one host task goes on with
 * the host tasks queued behind it (up to INLINE_BATCH of them, or INLINE_NS), in submit order,
 * from a list the GIL guards: taking the GIL once per task, with the submitting thread and the
 * other workers contending for it, cost more than the tasks themselves. Each task still is its
 * own runtime task, with its own future, placement and OOM ladder: whoever claims a record
 * first (its own task or a batch) runs it; the other finds it claimed and does nothing. A task
 * run in a batch that hits out-of-memory is submitted again on its own, to walk the ladder.
 *
 * States (atomic: py_task_done reads them without the GIL):
 *   QUEUED -> OWN (its task runs it; stays OWN while parked for memory) -> DONE
 *   QUEUED -> INLINE (a batch runs it) -> DONE
 *   QUEUED -> CANCELLED (Future.cancel, or the runtime ended the task before it ran) */
enum { PT_QUEUED, PT_OWN, PT_INLINE, PT_DONE, PT_CANCELLED };
#define INLINE_BATCH 256
#define INLINE_NS 1000000

typedef struct py_task {
  PyObject *fut, *fn, *args, *kwargs; /* cleared (under the GIL) once fut is settled */
  _Atomic int state;
  _Atomic int refs;                   /* its runtime task, the inline list, its FutureObject */
  int started;                        /* fut marked RUNNING already */
  int host;                           /* on the host: may run in a batch */
  RuntimeObject *owner;               /* whose inline list; a reference while the record is live
                                         (cleared with fut: use it only while fut is set, or
                                         under a reference of one's own) */
  struct py_task *next;
} py_task;

static PyObject *s_state, *s_pending, *s_running, *s_settle, *s_raised, *s_end, *s_finished, *s_result,
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

static void py_task_unref(py_task *p) {
  /* acq_rel: the last owner sees every write the others made before letting go */
  if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1) PyMem_RawFree(p);
}

/* Claims a queued record for `to`; false if someone else did first. */
static bool py_task_claim(py_task *p, int to) {
  int expect = PT_QUEUED;
  return atomic_compare_exchange_strong(&p->state, &expect, to);
}

/* With the GIL: a task that will never run. Its Python future is the caller's to settle. */
static int py_task_cancel(py_task *p) {
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
  if (!p->started) {
    p->started = 1;
    int go = py_task_start(p);
    if (go <= 0) return go < 0 ? AB_EINVAL : 0;
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
static int py_task_submit(RuntimeObject *self, py_task *p, ab_place *place, int try_only, ab_future **out);

/* A batch-run task asked for memory: its own runtime task has ended (or will find the record
 * claimed), so it goes back to the runtime as a new task, which parks it in the OOM ladder.
 * With the GIL. */
static void py_task_resubmit(py_task *p) {
  PyObject *fut = Py_NewRef(p->fut); /* ours: q's may be cleared once q runs */
  py_task *q = PyMem_RawMalloc(sizeof *q);
  ab_future *f = NULL;
  int rc = AB_ENOMEM;
  if (q != NULL) {
    *q = (py_task){.fut = p->fut, .fn = p->fn, .args = p->args, .kwargs = p->kwargs, .started = 1,
                   .owner = p->owner}; /* the owner reference moves with fut */
    atomic_init(&q->state, PT_OWN);
    atomic_init(&q->refs, 0);
    q->host = 0; /* it walks the ladder as its own task; never batched again */
    p->fut = p->fn = p->args = p->kwargs = NULL; /* moved */
    /* TRY: this worker holds the GIL; blocking on a full queue would stop the workers that
     * drain it (they need the GIL). A full queue fails the task instead (below). */
    ab_place place = {.policy = AB_PLACE_AUTO, .device = {AB_HOST, AB_ANY}, .mode = AB_SUBMIT_TRY};
    rc = p->owner->rt && !p->owner->closing ? py_task_submit(p->owner, q, &place, 1, &f) : AB_ESHUTDOWN;
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
                                    rc == AB_ENOMEM ? "out of memory; the queue had no room to retry"
                                                    : "out of memory while the runtime shuts down");
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
static void run_inline(RuntimeObject *rt, ab_ctx *ctx) {
  int64_t start = mono_ns();
  for (int n = 0; n < INLINE_BATCH && rt->inl_head != NULL; n++) {
    if ((n & 15) == 15 && mono_ns() - start > INLINE_NS) break;
    if (ab_ctx_cancelled(ctx)) break;
    py_task *p = rt->inl_head;
    rt->inl_head = p->next;
    if (rt->inl_head == NULL) rt->inl_tail = NULL;
    if (py_task_claim(p, PT_INLINE)) {
      int rc = py_task_call(p);
      if (rc == AB_EINVAL) py_task_broken(p);
      if (rc == AB_ENOMEM) py_task_resubmit(p);
      else py_task_clear(p);
      atomic_store(&p->state, PT_DONE);
    }
    py_task_unref(p); /* the list's reference */
  }
}

static int py_task_run(ab_ctx *ctx, void *arg) {
  py_task *p = arg;
  /* A record already run in a batch, or cancelled, needs nothing: no GIL. (Read without the
   * GIL, so only a hint; the claim below decides.) */
  int st = atomic_load(&p->state);
  if (st != PT_QUEUED && st != PT_OWN) return 0;
  spin_for_gil_handoff();
  enter_python();
  int rc = 0;
  if (!py_task_claim(p, PT_OWN) && atomic_load(&p->state) != PT_OWN) {
    /* claimed meanwhile by a batch or a cancel: its owner may be gone already, do not touch it */
    leave_python();
    return 0;
  }
  /* ours (first run, or a retry after out-of-memory): the record is live, so is its owner */
  RuntimeObject *owner = p->owner;
  Py_INCREF(owner); /* whatever the task drops, the list and the object stay until we are done */
  tls_ctx = ctx;
  in_runtime_thread = 1;
  rc = py_task_call(p);
  if (rc == AB_EINVAL) py_task_broken(p);
  if (rc != AB_ENOMEM) {
    py_task_clear(p);
    atomic_store(&p->state, PT_DONE);
  }
  if (rc != AB_ENOMEM && p->host && ab_ctx_device(ctx).kind == AB_HOST) run_inline(owner, ctx);
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
  if ((never_ran || atomic_load(&p->state) == PT_OWN) && Py_IsInitialized() && !_Py_IsFinalizing()) {
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
    if (!never_ran) atomic_store(&p->state, PT_DONE);
    PyGILState_Release(g);
  }
  py_task_unref(p);
}

/* After destroy every task has completed: what is left in the inline list ran or was cancelled,
 * and holds no Python references (no GIL needed). */
static void inline_list_free(py_task *list) {
  while (list) {
    py_task *p = list;
    list = p->next;
    py_task_unref(p);
  }
}

static void inline_list_drop(RuntimeObject *self) {
  inline_list_free(self->inl_head);
  self->inl_head = self->inl_tail = NULL;
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
static int py_task_submit(RuntimeObject *self, py_task *p, ab_place *place, int try_only, ab_future **out) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.place = *place;
  d.fn = py_task_run;
  d.arg = p;
  d.name = "python"; /* traces show Python tasks under one label (names must be static) */
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
    if (self->inl_tail) self->inl_tail->next = p;
    else self->inl_head = p;
    self->inl_tail = p;
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

/* call(fut, fn, args, kwargs=None, device=None, policy=AUTO, try_only=False) -> Future */
static PyObject *runtime_call(RuntimeObject *self, PyObject *const *argv, Py_ssize_t nargs) {
  if (nargs < 3 || nargs > 7) return PyErr_Format(PyExc_TypeError, "call() takes 3 to 7 arguments (%zd given)", nargs);
  if (check_runtime(self)) return NULL;
  PyObject *fut = argv[0], *fn = argv[1], *args = argv[2];
  PyObject *kwargs = nargs > 3 ? argv[3] : Py_None, *device = nargs > 4 ? argv[4] : Py_None;
  int policy = AB_PLACE_AUTO, try_only = 0;
  if (nargs > 5 && (policy = PyLong_AsLong(argv[5])) == -1 && PyErr_Occurred()) return NULL;
  if (nargs > 6) try_only = PyObject_IsTrue(argv[6]);
  if (!PyTuple_Check(args) || (kwargs != Py_None && !PyDict_Check(kwargs)))
    return PyErr_Format(PyExc_TypeError, "call(): args must be a tuple and kwargs a dict or None");
  ab_place place = {0};
  if (parse_place(device, policy, &place) != 0) return NULL;
  py_task *p = PyMem_RawMalloc(sizeof *p);
  if (p == NULL) return PyErr_NoMemory();
  Py_INCREF(self); /* the record's, dropped by py_task_clear */
  *p = (py_task){.fut = Py_NewRef(fut), .fn = Py_NewRef(fn), .args = Py_NewRef(args),
                 .kwargs = kwargs == Py_None ? NULL : Py_NewRef(kwargs), .owner = self,
                 .host = place.device.kind == AB_HOST && place.policy != AB_PLACE_EXPLICIT};
  atomic_init(&p->state, PT_QUEUED);
  atomic_init(&p->refs, 0);
  ab_future *f;
  int rc = py_task_submit(self, p, &place, try_only, &f);
  if (rc != 0) {
    if (atomic_load(&p->refs) == 0) { /* never submitted: nobody else has it */
      py_task_clear(p);
      PyMem_RawFree(p);
    }
    return PyErr_Occurred() ? NULL : raise_ab(rc, "submit", NULL);
  }
  return future_for_task(f, self, p);
}

/* trace_start(events_per_worker=0): record every task and device memory (the runtime's tracing) */
static PyObject *runtime_trace_start(RuntimeObject *self, PyObject *args) {
  unsigned int events = 0;
  if (!PyArg_ParseTuple(args, "|I", &events) || check_runtime(self)) return NULL;
  ab_trace_options o = AB_TRACE_OPTIONS_INIT;
  o.events_per_worker = events;
  int rc = ab_trace_start(self->rt, &o);
  if (rc != 0) return raise_ab(rc, "trace_start", NULL);
  Py_RETURN_NONE;
}

static PyObject *runtime_trace_stop(RuntimeObject *self, PyObject *u) {
  if (check_runtime(self)) return NULL;
  int rc = ab_trace_stop(self->rt);
  if (rc != 0) return raise_ab(rc, "trace_stop", NULL);
  Py_RETURN_NONE;
}

/* trace_write(path): the recording as Chrome trace JSON (open it in Perfetto) */
static PyObject *runtime_trace_write(RuntimeObject *self, PyObject *arg) {
  PyObject *bytes;
  if (check_runtime(self) || !PyUnicode_FSConverter(arg, &bytes)) return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ab_trace_write(self->rt, PyBytes_AS_STRING(bytes));
  Py_END_ALLOW_THREADS
  Py_DECREF(bytes);
  if (rc != 0) return raise_ab(rc, "trace_write", NULL);
  Py_RETURN_NONE;
}

static PyMethodDef runtime_methods[] = {
    {"trace_start", (PyCFunction)runtime_trace_start, METH_VARARGS, "trace_start(events_per_worker=0)"},
    {"trace_stop", (PyCFunction)runtime_trace_stop, METH_NOARGS, NULL},
    {"trace_write", (PyCFunction)runtime_trace_write, METH_O, "trace_write(path): Chrome trace JSON"},
    {"close", (PyCFunction)(void (*)(void))runtime_close, METH_VARARGS | METH_KEYWORDS,
     "close(cancel=False): drain (or cancel) and stop; every future completes first"},
    {"devices", (PyCFunction)runtime_devices, METH_NOARGS, "[(kind, index), ...]"},
    {"device_info", (PyCFunction)runtime_device_info, METH_VARARGS, "device_info(kind, index) -> dict"},
    {"stats", (PyCFunction)runtime_stats, METH_NOARGS, "per-device counters and gauges"},
    {"fault", (PyCFunction)runtime_fault, METH_VARARGS, "fault(op, kind, index, nth=1, count=1, delay_ns=0)"},
    {"convert", (PyCFunction)(void (*)(void))runtime_convert, METH_VARARGS | METH_KEYWORDS, NULL},
    {"stack", (PyCFunction)(void (*)(void))runtime_stack, METH_VARARGS | METH_KEYWORDS, NULL},
    {"unstack", (PyCFunction)runtime_unstack, METH_VARARGS, NULL},
    {"empty", (PyCFunction)runtime_empty, METH_VARARGS, NULL},
    {"call", (PyCFunction)(void (*)(void))runtime_call, METH_FASTCALL,
     "call(fut, fn, args, kwargs=None, device=None, policy=AUTO, try_only=False) -> Future"},
    {NULL},
};

static PyGetSetDef runtime_getset[] = {
    {"closed", (getter)runtime_closed, NULL, NULL, NULL},
    {NULL},
};

static PyTypeObject RuntimeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "arraybridge._core.Runtime",
    .tp_basicsize = sizeof(RuntimeObject),
    .tp_dealloc = (destructor)runtime_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "An arraybridge runtime: devices, worker pools, queues.",
    .tp_methods = runtime_methods,
    .tp_getset = runtime_getset,
    .tp_init = (initproc)runtime_init,
    .tp_new = PyType_GenericNew,
};

/* ---- module ---------------------------------------------------------------------------------- */
/* current() -> None outside a task, else (kind, index, worker, stream) */
static PyObject *mod_current(PyObject *m, PyObject *u) {
  ab_ctx *c = tls_ctx;
  if (c == NULL) Py_RETURN_NONE;
  ab_device d = ab_ctx_device(c);
  return Py_BuildValue("(iiiK)", d.kind, d.index, ab_ctx_worker(c), (unsigned long long)(uintptr_t)ab_ctx_stream(c));
}

static PyObject *mod_cancelled(PyObject *m, PyObject *u) { return PyBool_FromLong(tls_ctx && ab_ctx_cancelled(tls_ctx)); }

static PyObject *mod_strerror(PyObject *m, PyObject *arg) {
  long c = PyLong_AsLong(arg);
  if (c == -1 && PyErr_Occurred()) return NULL;
  return PyUnicode_FromString(ab_strerror((int)c));
}

static PyObject *mod_set_copy_hook(PyObject *m, PyObject *fn) {
  Py_XINCREF(fn);
  Py_XSETREF(copy_hook, fn);
  Py_RETURN_NONE;
}

/* _note_opened(kind): a framework of this process (pyclesperanto, torch) initialised that kind's
 * driver, so a forked child must not open it either. */
static PyObject *mod_note_opened(PyObject *m, PyObject *arg) {
  long k = PyLong_AsLong(arg);
  if (k == -1 && PyErr_Occurred()) return NULL;
  if (k < 0 || k >= AB_KIND_COUNT) return PyErr_Format(PyExc_ValueError, "no device kind %ld", k);
  kinds_opened[k] = 1;
  Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"_note_opened", (PyCFunction)mod_note_opened, METH_O, "a framework initialised this kind's driver"},
    {"from_buffer", (PyCFunction)mod_from_buffer, METH_O, "a host Tensor over an object's buffer (no copy)"},
    {"from_capsule", (PyCFunction)mod_from_capsule, METH_O, "a Tensor from a DLPack capsule (consumes it)"},
    {"wrap", (PyCFunction)mod_wrap, METH_VARARGS,
     "wrap(ptr, shape, byte_strides, dtype, readonly, device_type, device_id, owner) -> Tensor"},
    {"current", (PyCFunction)mod_current, METH_NOARGS, "(kind, index, worker, stream) inside a task, else None"},
    {"cancelled", (PyCFunction)mod_cancelled, METH_NOARGS, "inside a task: has it been asked to stop?"},
    {"strerror", (PyCFunction)mod_strerror, METH_O, NULL},
    {"_set_copy_hook", (PyCFunction)mod_set_copy_hook, METH_O, NULL},
    {NULL},
};

static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "arraybridge._core",
                                        "The arraybridge runtime (C extension).", -1, module_methods,
                                        NULL, NULL, NULL, NULL};

static PyObject *new_error(PyObject *m, const char *name, PyObject *base2) {
  char full[96];
  snprintf(full, sizeof full, "arraybridge.%s", name);
  PyObject *bases = base2 ? PyTuple_Pack(2, Error, base2) : PyTuple_Pack(1, Error);
  if (bases == NULL) return NULL;
  PyObject *e = PyErr_NewException(full, bases, NULL);
  Py_DECREF(bases);
  if (e && PyModule_AddObjectRef(m, name, e) < 0) Py_CLEAR(e);
  return e;
}

PyMODINIT_FUNC PyInit__core(void) {
  if (PyType_Ready(&RuntimeType) < 0 || PyType_Ready(&TensorType) < 0 || PyType_Ready(&FutureType) < 0) return NULL;
  PyObject *cancelled_base = NULL;
  if (pthread_key_create(&tstate_key, tstate_destroy) != 0) return PyErr_NoMemory();
  if (pthread_atfork(NULL, NULL, on_fork_child) != 0) return PyErr_NoMemory();
  if (!(s_state = PyUnicode_InternFromString("_state")) || !(s_pending = PyUnicode_InternFromString("PENDING")) ||
      !(s_running = PyUnicode_InternFromString("RUNNING")) || !(s_settle = PyUnicode_InternFromString("_ab_settle")) ||
      !(s_raised = PyUnicode_InternFromString("_ab_raised")) || !(s_end = PyUnicode_InternFromString("_ab_end")) ||
      !(s_finished = PyUnicode_InternFromString("FINISHED")) || !(s_result = PyUnicode_InternFromString("_result")) ||
      !(s_condition = PyUnicode_InternFromString("_condition")) || !(s_lock = PyUnicode_InternFromString("_lock")) ||
      !(s_waiters = PyUnicode_InternFromString("_waiters")) ||
      !(s_w = PyUnicode_InternFromString("_w")) || !(s_cb = PyUnicode_InternFromString("_cb")) ||
      !(s_acquire = PyUnicode_InternFromString("acquire")) || !(s_release = PyUnicode_InternFromString("release")))
    return NULL;
  PyObject *m = PyModule_Create(&module_def);
  if (m == NULL) return NULL;
  PyObject *cf = PyImport_ImportModule("concurrent.futures");
  if (cf == NULL) goto fail;
  cancelled_base = PyObject_GetAttrString(cf, "CancelledError");
  Py_DECREF(cf);
  if (cancelled_base == NULL) goto fail;
  Error = PyErr_NewException("arraybridge.Error", PyExc_RuntimeError, NULL);
  if (Error == NULL || PyModule_AddObjectRef(m, "Error", Error) < 0) goto fail;
  if (!(InvalidError = new_error(m, "InvalidArgumentError", PyExc_ValueError)) ||
      !(MemError = new_error(m, "OutOfMemoryError", PyExc_MemoryError)) ||
      !(TimeoutErr = new_error(m, "TimeoutError", PyExc_TimeoutError)) ||
      !(CancelledErr = new_error(m, "CancelledError", cancelled_base)) ||
      !(DeviceErr = new_error(m, "DeviceError", PyExc_LookupError)) ||
      !(ReadOnlyErr = new_error(m, "ReadOnlyError", PyExc_ValueError)) ||
      !(QueueFullErr = new_error(m, "QueueFullError", NULL)) ||
      !(ShutdownErr = new_error(m, "ShutdownError", NULL)) ||
      !(NotSupportedErr = new_error(m, "NotSupportedError", PyExc_TypeError)))
    goto fail;
  Py_DECREF(cancelled_base);
  Py_INCREF(&RuntimeType);
  Py_INCREF(&TensorType);
  Py_INCREF(&FutureType);
  PyModule_AddObject(m, "Runtime", (PyObject *)&RuntimeType);
  PyModule_AddObject(m, "Tensor", (PyObject *)&TensorType);
  PyModule_AddObject(m, "Future", (PyObject *)&FutureType);
  PyModule_AddStringConstant(m, "version", ab_version());
#define ERRCONST(name, code, text) PyModule_AddIntConstant(m, "AB_" #name, code);
  AB_ERRNO_MAP(ERRCONST)
#undef ERRCONST
  PyModule_AddIntConstant(m, "AB_EPENDING", AB_EPENDING);
  PyModule_AddIntConstant(m, "HOST", AB_HOST);
  PyModule_AddIntConstant(m, "OPENCL", AB_OPENCL);
  PyModule_AddIntConstant(m, "CUDA", AB_CUDA);
  PyModule_AddIntConstant(m, "ANY", AB_ANY);
  PyModule_AddIntConstant(m, "PLACE_AUTO", AB_PLACE_AUTO);
  PyModule_AddIntConstant(m, "PLACE_EXPLICIT", AB_PLACE_EXPLICIT);
  PyModule_AddIntConstant(m, "PLACE_ROUND_ROBIN", AB_PLACE_ROUND_ROBIN);
  PyModule_AddIntConstant(m, "PLACE_LEAST_LOADED", AB_PLACE_LEAST_LOADED);
  PyModule_AddIntConstant(m, "PLACE_AFFINITY", AB_PLACE_AFFINITY);
  PyModule_AddIntConstant(m, "CAST_SATURATE", AB_CAST_SATURATE);
  PyModule_AddIntConstant(m, "CAST_STRETCH", AB_CAST_STRETCH);
  PyModule_AddIntConstant(m, "FAULT_ALLOC", AB_FAULT_ALLOC);
  PyModule_AddIntConstant(m, "FAULT_COPY", AB_FAULT_COPY);
  PyModule_AddIntConstant(m, "FAULT_LAUNCH", AB_FAULT_LAUNCH);
  return m;
fail:
  Py_XDECREF(cancelled_base);
  Py_DECREF(m);
  return NULL;
}
