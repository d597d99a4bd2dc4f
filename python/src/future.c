/*
 * python/src/future.c: Future, the runtime's future for one task as a Python object.
 *
 * Design notes
 *   Waiting releases the GIL (a worker may need it to finish the task), in slices, so that
 *   signal handlers run while a thread waits. A Python task's Future holds a reference on the
 *   task's record (tasks.c), so that cancel() can claim it before it runs.
 */
#include "common.h"
#include "future.h"
#include "tasks.h"
#include "tensor.h"

PyObject *future_new_from(ab_future *f, PyObject *rt) {
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
    waiter_released_gil(first);
    rc = ab_future_wait(self->f, slice);
    waiter_wants_gil();
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

PyTypeObject FutureType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "arraybridge._core.Future",
    .tp_basicsize = sizeof(FutureObject),
    .tp_dealloc = (destructor)future_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The runtime's future for one task.",
    .tp_methods = future_methods,
};
