/*
 * python/src/tensor.c: Tensor, the runtime's tensor as a Python object, and the ways arrays come
 * in (the buffer protocol, a raw pointer with its owner, a DLPack capsule) and go out (DLPack,
 * NumPy's array interface).
 *
 * Design notes
 *   A Tensor keeps a reference on the Runtime object that made it (if any), so that a copy
 *   requested through __dlpack__(copy=True / dl_device=CPU) can go back to that runtime.
 *
 *   Imported memory. Objects exported through the buffer protocol or an array interface stay
 *   referenced by the tensor; the reference is dropped under the GIL when the tensor's last
 *   reference goes, which may be on a worker thread. After interpreter finalisation began the
 *   reference is leaked on purpose (NumPy does the same in its DLPack deleter).
 */
#include "common.h"
#include "tensor.h"

#define CAPSULE_V "dltensor_versioned"
#define CAPSULE_L "dltensor"
#define CAPSULE_USED_V "used_dltensor_versioned"
#define CAPSULE_USED_L "used_dltensor"

static PyObject *copy_hook; /* Python: (tensor, dl_device or None) -> new Tensor */

/* _set_copy_hook(fn): how __dlpack__ copies (arraybridge/dlpack.py: through the tensor's runtime) */
PyObject *mod_set_copy_hook(PyObject *m, PyObject *fn) {
  Py_XINCREF(fn);
  Py_XSETREF(copy_hook, fn);
  Py_RETURN_NONE;
}

PyObject *tensor_new_from(ab_tensor *t, PyObject *rt) {
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

/* ---- Python-owned memory behind a tensor ------------------------------------------------------- */
typedef struct {
  PyObject *owner;  /* the exporter, kept alive while the tensor lives */
  Py_buffer view;   /* when imported through the buffer protocol */
  int has_view;
} py_owner;

static void py_owner_release(void *arg) {
  py_owner *p = arg;
  if (!Py_IsInitialized() || Py_IsFinalizing()) return; /* leak rather than touch a dying interpreter */
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

/* ---- importing: the module functions from_buffer, wrap, from_capsule ------------------------- */
PyObject *mod_from_buffer(PyObject *m, PyObject *obj) {
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
PyObject *mod_wrap(PyObject *m, PyObject *args) {
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
PyObject *mod_from_capsule(PyObject *m, PyObject *cap) {
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

/* __array__: NumPy asks for it only when __array_interface__ is absent (it takes the getter's
 * AttributeError for that): a tensor in device memory, or of a dtype NumPy lacks. Without it
 * np.asarray(t) made a 0-d object array holding the tensor, without a word. */
static PyObject *tensor_array(TensorObject *self, PyObject *args, PyObject *kw) {
  (void)args, (void)kw;
  ab_device d = ab_tensor_device(self->t);
  if (d.kind != AB_HOST)
    return PyErr_Format(PyExc_BufferError, "np.asarray: the tensor is in %s:%d memory, not host memory; "
                                           "arraybridge.to_numpy(t) copies it to the host", ab_kind_name(d.kind), d.index);
  return PyErr_Format(PyExc_TypeError, "np.asarray: the tensor's dtype has no NumPy equivalent");
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
    PyObject *major, *minor;
    if (!PyTuple_Check(max_version) ||
        !PyArg_ParseTuple(max_version, "O!O!;max_version must be a (major, minor) tuple of ints", &PyLong_Type,
                          &major, &PyLong_Type, &minor)) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "max_version must be a (major, minor) tuple of ints");
      return NULL;
    }
    /* compared as Python ints: (-1, -1) is below 1.0 (legacy), (2**70, 0) above it (versioned) */
    int overflow;
    long long m = PyLong_AsLongLongAndOverflow(major, &overflow);
    if (m == -1 && PyErr_Occurred()) return NULL;
    versioned = overflow > 0 || (overflow == 0 && m >= 1);
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
  /* Read-only memory goes out as a copy unless the consumer forbids copying: torch (and other
   * consumers) ignore DLPack's READ_ONLY flag and would write into it, a bytes object say. */
  int readonly = (ab_tensor_flags(self->t) & AB_TENSOR_READ_ONLY) != 0;
  if (!want_copy && !other_device && !(readonly && !forbid_copy)) return export_capsule(self->t, versioned, 0);
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
  char shape[256] = "";
  size_t used = 0;
  for (int i = 0; i < dl->ndim && used < sizeof shape - 24; i++)
    used += (size_t)snprintf(shape + used, sizeof shape - used, i ? ", %lld" : "%lld", (long long)dl->shape[i]);
  return PyUnicode_FromFormat("<arraybridge.Tensor shape=(%s) dtype=(%d,%d) device=%s:%d>", shape, dl->dtype.code,
                              dl->dtype.bits, ab_kind_name(d.kind), d.index);
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
    {"__array__", (PyCFunction)(void (*)(void))tensor_array, METH_VARARGS | METH_KEYWORDS, NULL},
    {"index", (PyCFunction)tensor_index, METH_O, "a view of t[i] along the first axis"},
    {NULL},
};

PyTypeObject TensorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "arraybridge._core.Tensor",
    .tp_basicsize = sizeof(TensorObject),
    .tp_dealloc = (destructor)tensor_dealloc,
    .tp_repr = (reprfunc)tensor_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A runtime tensor (a DLPack producer). Made by the runtime or by the import functions.",
    .tp_methods = tensor_methods,
    .tp_getset = tensor_getset,
};

