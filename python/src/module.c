/*
 * python/src/module.c: arraybridge._core, the C extension over libarraybridge: the module's
 * functions, its exceptions and constants, its init. The files and their layers: common.h.
 *
 * Design notes
 *   Objects. Runtime wraps ab_runtime, Tensor wraps ab_tensor, Future wraps ab_future.
 *
 *   The GIL. It is released around every call that may wait: ab_future_wait, a blocking
 *   submit, ab_runtime_destroy. Worker threads take it only to run Python tasks (tasks.c), to
 *   drop references on Python objects that back imported tensors (tensor.c), and to report a
 *   task that ended without running its Python code (cancelled, out of memory). Because no
 *   thread ever waits on the runtime while holding the GIL, a worker waiting for the GIL always
 *   gets it.
 *
 *   fork(). A child process has none of its parent's worker threads, and any lock one of them
 *   held stays held for ever. So a runtime made before a fork belongs to the parent: in the
 *   child (fork_generation differs) every use of it raises ShutdownError, waiting on one of
 *   its futures raises instead of hanging, and closing or dropping it, its futures and its
 *   tensors leaks them instead of joining threads that do not exist. A child makes runtimes
 *   of its own; the kinds of device its parent had opened (OpenCL drivers such as pocl, and
 *   CUDA, do not survive fork) are left out of them, with a warning saying why.
 */
#include <pthread.h>

#include "common.h"
#include "future.h"
#include "runtime.h"
#include "tasks.h"
#include "tensor.h"

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

/* kind_names: the kinds' names by kind, the library's (ab_kind_name), so that Python spells
 * them as the command line, traces and memory reports do. */
static int add_kind_names(PyObject *m) {
  PyObject *names = PyTuple_New(AB_KIND_COUNT);
  for (int k = 0; names && k < AB_KIND_COUNT; k++) {
    PyObject *s = PyUnicode_FromString(ab_kind_name(k));
    if (s == NULL) Py_CLEAR(names);
    else PyTuple_SET_ITEM(names, k, s);
  }
  if (names == NULL) return -1;
  int rc = PyModule_AddObjectRef(m, "kind_names", names);
  Py_DECREF(names);
  return rc;
}

PyMODINIT_FUNC PyInit__core(void) {
  if (PyType_Ready(&RuntimeType) < 0 || PyType_Ready(&TensorType) < 0 || PyType_Ready(&FutureType) < 0) return NULL;
  PyObject *cancelled_base = NULL;
  if (pthread_atfork(NULL, NULL, on_fork_child) != 0) return PyErr_NoMemory();
  if (tasks_init() != 0) return NULL;
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
  Py_CLEAR(cancelled_base); /* the fail path below must not drop it again */
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
  if (add_kind_names(m) != 0) goto fail;
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
