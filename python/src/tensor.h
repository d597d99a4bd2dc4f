/* python/src/tensor.h: Tensor (tensor.c), for the files above it. */
#ifndef AB_PYTHON_TENSOR_H
#define AB_PYTHON_TENSOR_H

#include "common.h"

extern PyTypeObject TensorType;

PyObject *tensor_new_from(ab_tensor *t, PyObject *rt); /* takes t's reference, even on failure */

/* The module functions that make Tensors, and the hook __dlpack__ copies through. */
PyObject *mod_from_buffer(PyObject *m, PyObject *obj);
PyObject *mod_wrap(PyObject *m, PyObject *args);
PyObject *mod_from_capsule(PyObject *m, PyObject *cap);
PyObject *mod_set_copy_hook(PyObject *m, PyObject *fn);

#endif
