/*
 * cli/steps_cuda.cu: the pipeline's steps on CUDA devices (see steps.h for the arithmetic; the
 * per-pixel code is steps_pixel.h, shared with the test that checks it on the host).
 *
 * Design notes
 *   - Each step enqueues its kernels on the task's stream (ab_ctx_stream) and returns; memory
 *     comes from ab_ctx_alloc and ab_ctx_alloc_tensor, which the runtime orders on that stream.
 *     The runtime completes the task when the stream has run them, and the next step's kernels
 *     queue behind them. Nothing here waits for the GPU.
 *   - normalise never brings the histogram to the host: a warp-aggregated atomic histogram, one
 *     block that finds both percentiles (sums per thread, a scan, one thread per rank scans its
 *     own bins), and the scaling, which reads lo and hi from device memory.
 *   - The library keeps its CUDA runtime to itself (linked statically, hidden), so this
 *     program links one of its own. Both drive the same driver context of the GPU (the
 *     primary context), where the runtime's streams and memory are valid. The input tensor
 *     names the GPU (DLPack device id), which this runtime makes current before launching.
 *   - A CUDA call that fails fails the step with AB_EDEVICE and a message naming the call and
 *     the CUDA error (ab_ctx_fail: the image's CSV row and, with AB_DEBUG, stderr).
 */
#include <cuda_runtime.h>

extern "C" {
#include "cli/steps.h"
}
#include "cli/steps_pixel.h"

namespace {

/* The step configuration, as the kernels take it (steps.h holds the values). */
const sp_params params = {SCREEN_THRESHOLD, 1 /* a 3x3 box */, SCREEN_P_LO, SCREEN_P_HI};

const DLDataType U16 = {kDLUInt, 16, 1}, U8 = {kDLUInt, 8, 1};
constexpr int THREADS = 256;

__device__ __forceinline__ uint64_t first() { return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ uint64_t step() { return (uint64_t)gridDim.x * blockDim.x; }

unsigned blocks_for(uint64_t n) {
  uint64_t b = (n + THREADS - 1) / THREADS;
  return b == 0 ? 1 : b > 8192 ? 8192 : (unsigned)b; /* grid-stride beyond this */
}

/* ---- kernels ---------------------------------------------------------------------------------- */
/* Threads of a warp that hold the same value add once: cells and background are runs of
 * similar values, which would otherwise queue on a few bins. */
__global__ void hist_kernel(const uint16_t *v, uint64_t n, uint32_t *hist) {
  for (uint64_t i0 = (uint64_t)blockIdx.x * blockDim.x; i0 < n; i0 += step()) {
    uint64_t i = i0 + threadIdx.x;
    bool in = i < n;
    unsigned active = __ballot_sync(0xffffffffu, in);
    if (!in) continue;
    uint32_t x = v[i];
    unsigned peers = __match_any_sync(active, x);
    if ((threadIdx.x & 31) == (unsigned)(__ffs(peers) - 1)) atomicAdd(&hist[x], (uint32_t)__popc(peers));
  }
}

/* One block of SP_THREADS: lohi[65536] = lo, lohi[65537] = hi (steps_percentiles' rule). */
__global__ void percentiles_kernel(uint32_t *lohi, uint64_t n, sp_params p) {
  __shared__ uint64_t before[SP_THREADS];
  __shared__ int32_t found[2];
  const int t = threadIdx.x;
  uint64_t sum = 0;
  for (int v = t * SP_BINS; v < (t + 1) * SP_BINS; v++) sum += lohi[v];
  before[t] = sum;
  if (t < 2) found[t] = -1;
  __syncthreads();
  for (int d = 1; d < SP_THREADS; d *= 2) { /* inclusive scan (Hillis-Steele) */
    uint64_t add = t >= d ? before[t - d] : 0;
    __syncthreads();
    before[t] += add;
    __syncthreads();
  }
  uint64_t mine = before[t] - sum; /* exclusive: the counts before this thread's bins */
  uint64_t rank_lo, rank_hi;
  sp_ranks(n, &p, &rank_lo, &rank_hi);
  int32_t lo = sp_find(lohi, t, mine, rank_lo), hi = sp_find(lohi, t, mine, rank_hi);
  if (lo >= 0) found[0] = lo; /* one thread at most finds each */
  if (hi >= 0) found[1] = hi;
  __syncthreads();
  if (t == 0) {
    uint32_t l, h;
    sp_finish(found[0], found[1], &l, &h);
    lohi[65536] = l;
    lohi[65537] = h;
  }
}

__global__ void scale_kernel(const uint16_t *v, uint64_t n, uint16_t *o, const uint32_t *lohi) {
  uint32_t lo = lohi[65536], hi = lohi[65537];
  for (uint64_t i = first(); i < n; i += step()) o[i] = sp_scale(v[i], lo, hi);
}

/* One thread per pixel: x and y from a 2D grid, z from grid.z. */
__global__ void box_kernel(const uint16_t *v, uint16_t *o, int64_t h, int64_t w, int r) {
  int64_t x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, y = (int64_t)blockIdx.y * blockDim.y + threadIdx.y;
  if (x >= w || y >= h) return;
  size_t slice = (size_t)blockIdx.z * (size_t)(h * w);
  o[slice + (size_t)(y * w + x)] = sp_box(v + slice, h, w, y, x, r);
}

__global__ void maxz_kernel(const uint16_t *v, uint16_t *o, int64_t nz, uint64_t hw) {
  for (uint64_t i = first(); i < hw; i += step()) o[i] = sp_maxz(v, nz, (int64_t)hw, (int64_t)i);
}

__global__ void threshold_kernel(const uint16_t *v, uint8_t *o, uint64_t n, uint32_t t) {
  for (uint64_t i = first(); i < n; i += step()) o[i] = sp_threshold(v[i], t);
}

/* ---- the steps ---------------------------------------------------------------------------- */
int launched(ab_ctx *c, cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  cudaGetLastError(); /* reported here: not again by the next launch */
  if (e == cudaErrorMemoryAllocation) return AB_ENOMEM;
  return ab_ctx_fail(c, AB_EDEVICE, "%s failed (cli/steps_cuda.cu): %s: %s", what, cudaGetErrorName(e),
                     cudaGetErrorString(e));
}

/* Input 0, checked like the host's; the stream, with the input's GPU current in this program's
 * CUDA runtime (design notes). */
int input(ab_ctx *c, int ndim, const DLTensor **x, const uint16_t **v, cudaStream_t *s) {
  int rc = steps_input_u16(c, ndim, x);
  if (rc != 0) return rc;
  if ((*x)->device.device_type != kDLCUDA) return AB_ENOTSUP;
  *s = (cudaStream_t)ab_ctx_stream(c);
  *v = (const uint16_t *)((const char *)(*x)->data + (*x)->byte_offset);
  cudaGetLastError(); /* whatever an earlier call left is not this step's */
  return launched(c, cudaSetDevice((*x)->device.device_id), "cudaSetDevice");
}

int finish(ab_ctx *c, int rc, ab_tensor *out) {
  if (rc != 0) {
    ab_tensor_release(out); /* stream-ordered: its free waits for the work enqueued so far */
    return rc;
  }
  return ab_ctx_set_output(c, out);
}

int64_t numel(const DLTensor *x) {
  int64_t n = 1;
  for (int i = 0; i < x->ndim; i++) n *= x->shape[i];
  return n;
}

int cuda_normalise(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  const uint16_t *v;
  cudaStream_t s;
  int rc = input(c, 3, &x, &v, &s);
  if (rc != 0) return rc;
  uint32_t *lohi; /* 65536 bins, then lo and hi */
  if ((rc = ab_ctx_alloc(c, (65536 + 2) * sizeof(uint32_t), (void **)&lohi)) != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 3, x->shape, &out)) != 0) return rc;
  uint16_t *o = (uint16_t *)ab_tensor_dl(out)->data;
  uint64_t n = (uint64_t)numel(x);
  rc = launched(c, cudaMemsetAsync(lohi, 0, 65536 * sizeof(uint32_t), s), "cudaMemsetAsync");
  if (rc == 0) {
    hist_kernel<<<blocks_for(n), THREADS, 0, s>>>(v, n, lohi);
    rc = launched(c, cudaGetLastError(), "the histogram kernel's launch");
  }
  if (rc == 0) {
    percentiles_kernel<<<1, SP_THREADS, 0, s>>>(lohi, n, params);
    rc = launched(c, cudaGetLastError(), "the percentiles kernel's launch");
  }
  if (rc == 0) {
    scale_kernel<<<blocks_for(n), THREADS, 0, s>>>(v, n, o, lohi);
    rc = launched(c, cudaGetLastError(), "the scale kernel's launch");
  }
  return finish(c, rc, out);
}

int cuda_filter(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  const uint16_t *v;
  cudaStream_t s;
  int rc = input(c, 3, &x, &v, &s);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 3, x->shape, &out)) != 0) return rc;
  int64_t nz = x->shape[0], h = x->shape[1], w = x->shape[2];
  if (nz > 65535) return finish(c, AB_ESHAPE, out); /* grid.z; the CLI allows 1024 */
  dim3 block(32, 8), grid((unsigned)((w + 31) / 32), (unsigned)((h + 7) / 8), (unsigned)nz);
  if (nz > 0 && h > 0 && w > 0) {
    box_kernel<<<grid, block, 0, s>>>(v, (uint16_t *)ab_tensor_dl(out)->data, h, w, params.radius);
    rc = launched(c, cudaGetLastError(), "the filter kernel's launch");
  }
  return finish(c, rc, out);
}

int cuda_project(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  const uint16_t *v;
  cudaStream_t s;
  int rc = input(c, 3, &x, &v, &s);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape + 1, &out)) != 0) return rc;
  uint64_t hw = (uint64_t)(x->shape[1] * x->shape[2]);
  if (hw > 0 && x->shape[0] > 0) {
    maxz_kernel<<<blocks_for(hw), THREADS, 0, s>>>(v, (uint16_t *)ab_tensor_dl(out)->data, x->shape[0], hw);
    rc = launched(c, cudaGetLastError(), "the projection kernel's launch");
  }
  return finish(c, rc, out);
}

int cuda_threshold(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  const uint16_t *v;
  cudaStream_t s;
  int rc = input(c, 2, &x, &v, &s);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U8, 2, x->shape, &out)) != 0) return rc;
  uint64_t n = (uint64_t)numel(x);
  if (n > 0) {
    threshold_kernel<<<blocks_for(n), THREADS, 0, s>>>(v, (uint8_t *)ab_tensor_dl(out)->data, n, params.threshold);
    rc = launched(c, cudaGetLastError(), "the threshold kernel's launch");
  }
  return finish(c, rc, out);
}

} // namespace

extern "C" const screen_steps screen_steps_cuda = {
    AB_CUDA, cuda_normalise, cuda_filter, cuda_project, cuda_threshold, NULL,
};
