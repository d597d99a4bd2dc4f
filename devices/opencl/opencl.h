/* devices/opencl/opencl.h: the OpenCL backend's own declarations. */
#ifndef AB_DEVICES_OPENCL_H
#define AB_DEVICES_OPENCL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>

#include "runtime/internal.h"

#define AB__CL_NTYPES AB__NDTYPES /* in ab__dtype_index's order */

typedef struct {
  const char *name;               /* u8 ... b8, as in kernel names */
  const char *cl;                 /* the OpenCL C type */
  char cat;                       /* u, i, f or b(ool) */
  double min, max;                /* integer range, for stretch */
} ab__cl_type;

extern const ab__cl_type ab__cl_types[AB__CL_NTYPES];

/* The program's source (malloc'd), one kernel per dtype pair; NULL when out of memory. */
char *ab__cl_program_source(void);

#endif
