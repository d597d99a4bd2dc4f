/* devices/host/host.h: the host kernels (kernels.c) behind the host backend's ops (host.c). Nothing
 * else calls them: the runtime reaches them through the ops table, as it reaches any device. */
#ifndef AB_DEVICES_HOST_H
#define AB_DEVICES_HOST_H

#include "runtime/internal.h"

/* src (any strides) into dst (contiguous) as dtype dt. AB_EDTYPE for unsupported dtypes. */
int ab__host_cast(const DLTensor *src, void *dst, DLDataType dt, const ab__cast_params *p);
int ab__host_minmax(const DLTensor *src, double *lo, double *hi, bool *found);

#endif
