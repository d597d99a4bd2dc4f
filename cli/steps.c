/*
 * cli/steps.c: which steps serve which device kind. Each kind's steps live in their own file
 * (steps_host.c, steps_opencl.c, steps_cuda.cu); this is the one table that knows which of them
 * this build has.
 */
#include "cli/steps.h"

const screen_steps *steps_for(int kind) {
  switch (kind) {
  case AB_HOST:
    return &screen_steps_host;
#ifdef AB_HAVE_OPENCL
  case AB_OPENCL:
    return &screen_steps_opencl;
#endif
#ifdef AB_HAVE_CUDA
  case AB_CUDA:
    return &screen_steps_cuda;
#endif
  default:
    return NULL; /* a kind this build has no backend for (see steps.h) */
  }
}

void steps_cleanup(void) {
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    const screen_steps *s = steps_for(k);
    if (s && s->cleanup) s->cleanup();
  }
}
