/*
 * devices/cuda/kernels.cu: dtype conversion, strided packing, min/max and gathering on CUDA.
 *
 * The casts are bit-identical to devices/host/kernels.c (the reference the tests compare with):
 *   saturate  ints clamp to the target's range; floats to ints truncate toward zero (C's
 *             conversion, cvt.rzi), NaN -> 0, out-of-range values clamp; to floats, C's
 *             round-to-nearest conversion; to bool, x != 0.
 *   stretch   ((double)x - lo) / span * (MAX - MIN) + MIN in double, then saturate. Built with
 *             --fmad=false (CMake), so the multiply and the add round separately, as on the host.
 *             [lo, hi] is the range of the finite values (minmax_kernel, sat.cuh's range_add).
 * One kernel per (source, target) pair, instantiated from one template. A source of any strides
 * is walked by its merged layout (ab__cu_layout); a contiguous one takes a plain index.
 *
 * Every launcher first clears the thread's last-error slot: its only report of a failed launch
 * is cudaGetLastError, and an error left there by an earlier call (already reported by that
 * call) must not be taken for the launch's own.
 */
#include <cuda_runtime.h>

#include "devices/cuda/kernels.h"
#include "devices/cuda/sat.cuh"

namespace ab__cu { // sat.cuh opens it too

/* Byte offset of element i of the layout (the last dimension is the innermost). */
__device__ __forceinline__ int64_t offset_of(uint64_t i, const ab__cu_layout &l) {
  int64_t off = 0;
  for (int k = l.nd - 1; k >= 0; k--) {
    uint64_t n = (uint64_t)l.shape[k];
    off += (int64_t)(i % n) * l.bstride[k];
    i /= n;
  }
  return off;
}

template <int S> __device__ __forceinline__ typename tr<S>::t load(const char *src, uint64_t i, const ab__cu_layout &l,
                                                                  bool dense) {
  typedef typename tr<S>::t ST;
  return dense ? ((const ST *)src)[i] : *(const ST *)(src + offset_of(i, l));
}

__device__ __forceinline__ uint64_t first() { return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ uint64_t step() { return (uint64_t)gridDim.x * blockDim.x; }

template <int S, int D>
__global__ void cast_kernel(const char *src, ab__cu_layout l, bool dense, typename tr<D>::t *dst) {
  for (uint64_t i = first(); i < l.numel; i += step()) dst[i] = sat<S, D>(load<S>(src, i, l, dense));
}

template <int S, int D>
__global__ void stretch_kernel(const char *src, ab__cu_layout l, bool dense, typename tr<D>::t *dst, double lo,
                               double span) {
  const double range = (double)tr<D>::umax - (double)tr<D>::imin;
  for (uint64_t i = first(); i < l.numel; i += step()) {
    dst[i] = stretch_value<S, D>(load<S>(src, i, l, dense), lo, span, range);
  }
}

constexpr int THREADS = 256;

template <int S> __global__ void minmax_kernel(const char *src, ab__cu_layout l, bool dense, double *partials) {
  __shared__ double slo[THREADS], shi[THREADS];
  __shared__ int sfound[THREADS];
  double lo = 0, hi = 0;
  int found = 0;
  for (uint64_t i = first(); i < l.numel; i += step()) {
    range_add((double)load<S>(src, i, l, dense), lo, hi, found);
  }
  slo[threadIdx.x] = lo;
  shi[threadIdx.x] = hi;
  sfound[threadIdx.x] = found;
  __syncthreads();
  for (int half = THREADS / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half && sfound[threadIdx.x + half]) {
      int me = threadIdx.x, other = threadIdx.x + half;
      if (!sfound[me] || slo[other] < slo[me]) slo[me] = slo[other];
      if (!sfound[me] || shi[other] > shi[me]) shi[me] = shi[other];
      sfound[me] = 1;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partials[3 * blockIdx.x] = slo[0];
    partials[3 * blockIdx.x + 1] = shi[0];
    partials[3 * blockIdx.x + 2] = sfound[0];
  }
}

/* The pointer table travels by value in the launch parameters: no upload before the launch. */
struct slices {
  const char *src[AB__CU_GATHER_MAX];
};

/* One row of blocks per slice (blockIdx.y): no division per element. */
template <typename W> __global__ void gather_kernel(W *dst, slices s, uint64_t words) {
  const W *src = (const W *)s.src[blockIdx.y];
  W *out = dst + (uint64_t)blockIdx.y * words;
  for (uint64_t i = first(); i < words; i += step()) out[i] = src[i];
}

unsigned blocks_for(uint64_t n) {
  uint64_t b = (n + THREADS - 1) / THREADS;
  return b == 0 ? 1 : b > 8192 ? 8192 : (unsigned)b; /* grid-stride beyond this */
}

/* A contiguous layout walks by index; any other by offset_of. */
bool dense_layout(const ab__cu_layout &l, size_t es) { return l.nd == 1 && l.bstride[0] == (int64_t)es; }

template <int S, int D>
cudaError_t launch_cast(cudaStream_t st, const ab__cu_layout &l, const void *src, void *dst, bool stretch, double lo,
                        double span) {
  typedef typename tr<D>::t DT;
  bool dense = dense_layout(l, sizeof(typename tr<S>::t));
  if constexpr (!tr<S>::integer && tr<D>::integer && !tr<D>::boolean) {
    if (stretch) {
      stretch_kernel<S, D><<<blocks_for(l.numel), THREADS, 0, st>>>((const char *)src, l, dense, (DT *)dst, lo, span);
      return cudaGetLastError();
    }
  }
  cast_kernel<S, D><<<blocks_for(l.numel), THREADS, 0, st>>>((const char *)src, l, dense, (DT *)dst);
  return cudaGetLastError();
}

/* Picks the instantiation for run-time (s, d) by walking the template indexes. */
template <int S, int D = 0>
cudaError_t dispatch(int s, int d, cudaStream_t st, const ab__cu_layout &l, const void *src, void *dst, bool stretch,
                     double lo, double span) {
  if constexpr (S >= NTYPES) {
    return cudaErrorInvalidValue;
  } else if constexpr (D >= NTYPES) {
    return dispatch<S + 1, 0>(s, d, st, l, src, dst, stretch, lo, span);
  } else {
    if (s == S && d == D) return launch_cast<S, D>(st, l, src, dst, stretch, lo, span);
    return dispatch<S, D + 1>(s, d, st, l, src, dst, stretch, lo, span);
  }
}

} // namespace ab__cu
using namespace ab__cu;

extern "C" int ab__cu_cast(void *stream, int s, int d, const ab__cu_layout *l, const void *src, void *dst, int stretch,
                           double lo, double span) {
  cudaGetLastError();
  if (s < 0 || s >= NTYPES || d < 0 || d >= NTYPES) return (int)cudaErrorInvalidValue;
  return (int)dispatch<0>(s, d, (cudaStream_t)stream, *l, src, dst, stretch != 0, lo, span);
}

extern "C" int ab__cu_minmax(void *stream, int s, const ab__cu_layout *l, const void *src, double *partials) {
  cudaStream_t st = (cudaStream_t)stream;
  cudaGetLastError();
  if (s == 8)
    minmax_kernel<8><<<AB__CU_MINMAX_BLOCKS, THREADS, 0, st>>>((const char *)src, *l, dense_layout(*l, 4), partials);
  else if (s == 9)
    minmax_kernel<9><<<AB__CU_MINMAX_BLOCKS, THREADS, 0, st>>>((const char *)src, *l, dense_layout(*l, 8), partials);
  else
    return (int)cudaErrorInvalidValue;
  return (int)cudaGetLastError();
}

extern "C" int ab__cu_gather(void *stream, void *dst, const void *const *srcs, int n, size_t slice_bytes) {
  if (n <= 0 || n > AB__CU_GATHER_MAX) return (int)cudaErrorInvalidValue;
  slices s;
  bool aligned = slice_bytes % 8 == 0 && (uintptr_t)dst % 8 == 0;
  for (int i = 0; i < AB__CU_GATHER_MAX; i++) {
    s.src[i] = (const char *)srcs[i < n ? i : 0]; /* unused slots repeat slice 0: never read */
    aligned = aligned && (uintptr_t)s.src[i] % 8 == 0;
  }
  cudaStream_t st = (cudaStream_t)stream;
  cudaGetLastError();
  uint64_t words = aligned ? slice_bytes / 8 : slice_bytes; /* 8-byte words when every slice allows */
  dim3 grid(blocks_for(words) / (unsigned)n + 1, (unsigned)n);
  if (aligned) gather_kernel<uint64_t><<<grid, THREADS, 0, st>>>((uint64_t *)dst, s, words);
  else gather_kernel<uint8_t><<<grid, THREADS, 0, st>>>((uint8_t *)dst, s, words);
  return (int)cudaGetLastError();
}
