/*
 * python/src/common.c: what every file of the extension stands on: the exceptions and raising
 * them, parsing the arguments the types share, fork bookkeeping, the debug checks' report.
 */
#include "common.h"

PyObject *Error;      /* arraybridge.Error and its subclasses, by code */
PyObject *InvalidError, *MemError, *TimeoutErr, *CancelledErr, *DeviceErr, *ReadOnlyErr,
    *QueueFullErr, *ShutdownErr, *NotSupportedErr;

_Noreturn void py_panic(const char *file, int line, const char *what) {
  fprintf(stderr, "arraybridge._core: %s:%d: assertion failed: %s\n", file, line, what);
  abort();
}

/* ---- fork: why, in module.c's design notes --------------------------------------------------- */
unsigned fork_generation; /* see common.h */
int kinds_opened[AB_KIND_COUNT], kinds_inherited[AB_KIND_COUNT];

void on_fork_child(void) {
  fork_generation++;
  for (int k = 0; k < AB_KIND_COUNT; k++) kinds_inherited[k] |= kinds_opened[k];
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
PyObject *raise_ab(int code, const char *what, const char *detail) {
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

/* ---- argument helpers ------------------------------------------------------------------------ */
int parse_dtype(PyObject *o, DLDataType *dt) {
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

int parse_shape(PyObject *seq, int64_t *shape, int *ndim, const char *what) {
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

int parse_place(PyObject *dev, int policy, ab_place *p) {
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
  p->mode = AB_SUBMIT_TRY; /* first try with the GIL held; see SUBMIT_BLOCKING */
  return 0;
}

int64_t timeout_ns(PyObject *t) {
  if (t == NULL || t == Py_None) return -1;
  double s = PyFloat_AsDouble(t);
  if (s == -1.0 && PyErr_Occurred()) return -2;
  if (s < 0) return 0;
  return s > 9e9 ? -1 : (int64_t)(s * 1e9);
}
