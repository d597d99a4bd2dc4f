/* python/src/future.h: Future (future.c), for the files above it. */
#ifndef AB_PYTHON_FUTURE_H
#define AB_PYTHON_FUTURE_H

#include "common.h"

extern PyTypeObject FutureType;

PyObject *future_new_from(ab_future *f, PyObject *rt); /* takes f's reference, even on failure */

#endif
