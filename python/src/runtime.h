/* python/src/runtime.h: Runtime (runtime.c), for the module. */
#ifndef AB_PYTHON_RUNTIME_H
#define AB_PYTHON_RUNTIME_H

#include "common.h"

extern PyTypeObject RuntimeType;

#endif
