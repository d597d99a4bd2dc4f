/*
 * devices/cuda/kernels.h: what cuda.c asks of kernels.cu. Plain C on both sides (kernels.cu is
 * C++ and cannot include the runtime's C11 headers), so only fixed-size types cross it.
 * Every launcher enqueues on the given stream and returns the cudaError_t of the launch.
 */
#ifndef AB_DEVICES_CUDA_KERNELS_H
#define AB_DEVICES_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AB__CU_MAXDIM 16      /* AB_MAX_NDIM */
#define AB__CU_GATHER_MAX 8   /* AB__GATHER_MAX */
#define AB__CU_MINMAX_BLOCKS 256 /* two per SM of an H100 or H200 (132 SMs) */

/* A strided source as the kernels walk it: merged dims, outermost first, strides in bytes. */
typedef struct {
  int nd;
  int64_t shape[AB__CU_MAXDIM];
  int64_t bstride[AB__CU_MAXDIM];
  uint64_t numel;
} ab__cu_layout;

/* src (the first element's address) into contiguous dst, from dtype index s to d (in
 * ab__dtype_index's order). stretch: (x - lo) / span onto d's range; s float, d integer. */
int ab__cu_cast(void *stream, int s, int d, const ab__cu_layout *l, const void *src, void *dst, int stretch,
                double lo, double span);
/* Per block b: partials[3b] = lowest, [3b+1] = highest non-NaN value, [3b+2] = 1 if any. */
int ab__cu_minmax(void *stream, int s, const ab__cu_layout *l, const void *src, double *partials);
/* n slices of slice_bytes from srcs[i] into dst one after another, one launch. */
int ab__cu_gather(void *stream, void *dst, const void *const *srcs, int n, size_t slice_bytes);

#ifdef __cplusplus
}
#endif
#endif
