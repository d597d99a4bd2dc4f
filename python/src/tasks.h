/* python/src/tasks.h: Python tasks on the runtime's workers (tasks.c), for the files above it. */
#ifndef AB_PYTHON_TASKS_H
#define AB_PYTHON_TASKS_H

#include "common.h"

int tasks_init(void); /* at import: 0, or -1 with an exception set */

/* A Python task: fut settled with fn(*args, **kwargs) (kwargs may be NULL), run where place says.
 * The Future of its runtime task, or NULL with an exception set. With the GIL. */
PyObject *tasks_call(RuntimeObject *self, PyObject *fut, PyObject *fn, PyObject *args, PyObject *kwargs,
                     ab_place *place, int try_only);

/* For a Python task's Future: Future.cancel (0 if it will never run, else AB_EBUSY or
 * AB_EALREADY), and letting go of the record. */
int py_task_cancel(py_task *p);
void py_task_unref(py_task *p);

/* For a closing Runtime, after ab_runtime_destroy: what its inline list still holds. */
void inline_list_drop(RuntimeObject *self);
void inline_list_free(inline_list *l);

/* A thread releases the GIL to wait on one future (first: its first slice of that wait), and
 * its wait ends: hints for a worker about to take the GIL. */
void waiter_released_gil(bool first);
void waiter_wants_gil(void);

/* This thread's part in the runtime. */
extern _Thread_local ab_ctx *tls_ctx;       /* the compute task it is running */
extern _Thread_local int on_worker;         /* it is a runtime worker (it ran Python tasks) */
extern _Thread_local int in_runtime_thread; /* inside a Python task or a completion callback */

/* Submit with the GIL held when the queue has room; when it is full, release the GIL and block,
 * so the workers (which may need the GIL to drain it) can make progress. Except on a thread
 * inside a runtime's task or completion callback: there blocking could stop the very workers
 * that drain the queue (every worker a task that submits, all of them waiting for room), so a
 * full queue raises QueueFullError at once, and the Executor keeps the task until there is room
 * (python/arraybridge/executor.py). */
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
