/* devices/registry.c: the one file that knows which backends were compiled in. */
#include "devices/device.h"

extern const ab__device_ops ab__host_ops;
#ifdef AB_HAVE_OPENCL
extern const ab__device_ops ab__opencl_ops;
#endif
#ifdef AB_HAVE_CUDA
extern const ab__device_ops ab__cuda_ops;
#endif

const ab__device_ops *const ab__backends[AB_KIND_COUNT] = {
    [AB_HOST] = &ab__host_ops,
#ifdef AB_HAVE_OPENCL
    [AB_OPENCL] = &ab__opencl_ops,
#endif
#ifdef AB_HAVE_CUDA
    [AB_CUDA] = &ab__cuda_ops,
#endif
};
