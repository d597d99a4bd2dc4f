/*
 * python/src/runtime.c: Runtime, an ab_runtime as a Python object: its options, closing it,
 * its devices and statistics, and the conversions and stacking it submits (its Python tasks:
 * tasks.c).
 *
 * Design notes
 *   Closing destroys the runtime with the GIL released: its workers may need the GIL to finish
 *   the Python tasks they run. The last reference to a Runtime can go on one of its own
 *   workers; the destroy then runs on a thread of its own (runtime_dealloc).
 *
 *   A runtime made before a fork belongs to the parent process (module.c's notes): in a child
 *   every use of it raises ShutdownError and closing it leaks it.
 */
#include <pthread.h>

#include "common.h"
#include "future.h"
#include "runtime.h"
#include "tasks.h"
#include "tensor.h"

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

/* ---- Runtime --------------------------------------------------------------------------------- */
/* d[key] into *out: 1 when given, 0 when not, -1 with an exception (negative values included:
 * a negative memory limit read as unsigned would mean no limit at all). */
static int kind_options(PyObject *d, const char *what, const char *key, long long *out) {
  if (d == NULL || d == Py_None) return 0;
  PyObject *v = PyDict_GetItemString(d, key);
  if (v == NULL) return 0;
  *out = PyLong_AsLongLong(v);
  if (*out == -1 && PyErr_Occurred()) return -1;
  if (*out < 0) {
    PyErr_Format(PyExc_ValueError, "%s for %s must be 0 or more, not %lld", what, key, *out);
    return -1;
  }
  return 1;
}

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
                         k == AB_OPENCL ? "OpenCL" : "CUDA", ab_kind_name(k)) < 0)
      return -1;
  }
  return 0;
}

/* Runtime(workers=None, memory_limit=None, logical_split=None, disable=(), queue_capacity=0,
 *         oom_deadline=None, oom_no_wait=False, allow_reroute=False)
 * workers / memory_limit / logical_split: dicts keyed by the kinds' names (ab_kind_name: "host",
 * "opencl", "cuda"); disable: a sequence of them. */
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
    if ((r = kind_options(workers, "workers", ab_kind_name(k), &v)) < 0) return -1;
    if (r) o.kinds[k].workers_per_device = (int)v;
    if ((r = kind_options(limit, "memory_limit", ab_kind_name(k), &v)) < 0) return -1;
    if (r) o.kinds[k].memory_limit = (uint64_t)v;
    if ((r = kind_options(split, "logical_split", ab_kind_name(k), &v)) < 0) return -1;
    if (r) o.kinds[k].logical_split = (int)v;
    if (disable && disable != Py_None) {
      PyObject *name = PyUnicode_FromString(ab_kind_name(k));
      int has = PySequence_Contains(disable, name);
      Py_DECREF(name);
      if (has < 0) return -1;
      o.kinds[k].disabled = has;
    }
  }
  if (inherited_kinds_off(&o) != 0) return -1;
  o.queue_capacity = qcap;
  if (deadline != Py_None) {
    double s = PyFloat_AsDouble(deadline);
    if (s == -1.0 && PyErr_Occurred()) return -1;
    if (!(s >= 0)) { /* NaN too */
      PyErr_Format(PyExc_ValueError, "oom_deadline must be 0 or more seconds (or None), not %R", deadline);
      return -1;
    }
    int64_t ns = timeout_ns(deadline);
    if (ns == -2) return -1;
    o.oom.deadline_ns = ns < 0 ? INT64_MAX : ns;
  }
  o.oom.no_wait = no_wait;
  o.oom.allow_reroute = reroute;
  self->gen = fork_generation;
  if ((self->inl = PyMem_RawCalloc(1, sizeof *self->inl)) == NULL) {
    PyErr_NoMemory();
    return -1;
  }
  int rc;
  Py_BEGIN_ALLOW_THREADS rc = ab_runtime_create(&o, &self->rt);
  Py_END_ALLOW_THREADS
  if (rc != 0) {
    PyMem_RawFree(self->inl);
    self->inl = NULL;
    raise_ab(rc, "cannot create the runtime", NULL);
    return -1;
  }
  note_opened_kinds(self->rt);
  return 0;
}

static int runtime_close_rt(RuntimeObject *self, int how) {
  ab_runtime *rt = self->rt;
  if (rt == NULL || self->closing) return 0;
  if (foreign((PyObject *)self)) { /* the parent's: leaked, with what its records hold */
    self->rt = NULL;
    self->inl = NULL;
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
  inline_list *list;
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
    *c = (detached_close){self->rt, self->inl};
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, close_detached, c) == 0) {
      self->rt = NULL;
      self->inl = NULL;
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

/* call(fut, fn, args, kwargs=None, device=None, policy=AUTO, try_only=False) -> Future: a Python
 * task (tasks.c) */
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
  return tasks_call(self, fut, fn, args, kwargs == Py_None ? NULL : kwargs, &place, try_only);
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

PyTypeObject RuntimeType = {
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
