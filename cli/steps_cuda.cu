/*
 * cli/steps_cuda.cu: the pipeline's steps on CUDA devices (see steps.h for the arithmetic; the
 * per-pixel code and the tiling are steps_pixel.h, shared with the test that checks them on the
 * host).
 *
 * Design notes
 *   - Each step enqueues its kernels on the task's stream (ab_ctx_stream) and returns; memory
 *     comes from ab_ctx_alloc and ab_ctx_alloc_tensor, which the runtime orders on that stream.
 *     The runtime completes the task when the stream has run them, and the next step's kernels
 *     queue behind them. Nothing here waits for the GPU, and nothing comes back to the host:
 *     the filter's weights travel as a kernel parameter, the percentiles' ranks are computed
 *     here from the shape, and lo and hi stay in device memory between the picking and the
 *     scaling.
 *   - project reads eight pixels a thread (16-byte loads, two pixels a __vmaxu2) where the
 *     planes are 16-byte aligned, one otherwise; consecutive threads read consecutive bytes.
 *   - filter is two passes over shared-memory tiles (steps_pixel.h): rows, then columns, each
 *     tile loaded once with coalesced reads, every tap then read from shared memory. The
 *     division of the cut window happens only within r pixels of an edge.
 *   - normalise finds the percentiles from two 256-bin histograms (the high byte; then the low
 *     byte inside the two bins where the ranks fall), counted per block in shared memory with
 *     warp-aggregated atomics (threads of a warp holding the same bin add once: background
 *     pixels share a few bins) and added to device memory once per block; one block of 256
 *     threads scans each and picks. Then the scaling, eight pixels a thread.
 *   - The library keeps its CUDA runtime to itself (linked statically, hidden), so this
 *     program links one of its own. Both drive the same driver context of the GPU (the
 *     primary context), where the runtime's streams and memory are valid. The input tensor
 *     names the GPU (DLPack device id), which this runtime makes current before launching.
 *   - A CUDA call that fails fails the step with AB_EDEVICE and a message naming the call and
 *     the CUDA error (ab_ctx_fail: the image's CSV row and, with AB_DEBUG, stderr).
 */
#include <cuda_runtime.h>
#include <stddef.h>

extern "C" {
#include "cli/steps.h"
}
#include "cli/steps_pixel.h"

static_assert(SP_ONE == SCREEN_WEIGHT_ONE && SP_MAX_RADIUS == SCREEN_MAX_RADIUS, "steps_pixel.h follows steps.h");
static_assert(SP_ROW_TILE % SP_ROW_BX == 0 && SP_COL_TILE % SP_COL_BY == 0, "whole outputs per thread");
static_assert(SP_ROW_BX * SP_ROW_ROWS == SP_THREADS && SP_COL_BX * SP_COL_BY == SP_THREADS, "block sizes");

namespace {

const DLDataType U16 = {kDLUInt, 16, 1};
constexpr unsigned MAX_BLOCKS = 8192;   /* grid-stride beyond this */
constexpr unsigned COUNT_BLOCKS = 128;  /* histogram blocks: each adds its 256 bins to memory once */
constexpr unsigned MAX_GRID_Y = 65535;

/* The filter's weights, by value: a kernel parameter, so no copy waits for host memory. */
struct weights {
  int r;
  uint32_t w[SP_MAX_RADIUS + 1];
};

__device__ __forceinline__ uint64_t first() { return (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ uint64_t stride() { return (uint64_t)gridDim.x * blockDim.x; }

unsigned blocks_for(uint64_t items, unsigned cap) {
  uint64_t b = (items + SP_THREADS - 1) / SP_THREADS;
  return b == 0 ? 1 : b > cap ? cap : (unsigned)b;
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* ---- project ---------------------------------------------------------------------------------- */
/* VEC: eight pixels an item (hw % 8 == 0 and v 16-byte aligned, so every plane is); else one. */
template <bool VEC>
__global__ void maxz_kernel(const uint16_t *__restrict__ v, uint16_t *__restrict__ o, int nz, uint64_t hw) {
  if (VEC) {
    const uint4 *in = (const uint4 *)v;
    uint64_t items = hw / 8;
    for (uint64_t i = first(); i < items; i += stride()) {
      uint4 m = in[i];
      for (int z = 1; z < nz; z++) {
        uint4 x = in[(uint64_t)z * items + i];
        m = make_uint4(sp_max2(m.x, x.x), sp_max2(m.y, x.y), sp_max2(m.z, x.z), sp_max2(m.w, x.w));
      }
      ((uint4 *)o)[i] = m;
    }
  } else {
    for (uint64_t i = first(); i < hw; i += stride()) {
      uint16_t m = v[i];
      for (int z = 1; z < nz; z++) {
        uint16_t x = v[(uint64_t)z * hw + i];
        m = x > m ? x : m;
      }
      o[i] = m;
    }
  }
}

/* ---- filter ----------------------------------------------------------------------------------- */
__device__ __forceinline__ void load_weights(uint32_t *sw, const weights &p) {
  for (int i = threadIdx.y * blockDim.x + threadIdx.x; i <= p.r; i += SP_THREADS) sw[i] = p.w[i];
}

/* Along x: blocks of SP_ROW_BX x SP_ROW_ROWS threads, SP_ROW_TILE pixels of SP_ROW_ROWS rows each. */
__global__ void rows_kernel(const uint16_t *__restrict__ in, uint16_t *__restrict__ out, int64_t h, int64_t w,
                            weights p) {
  __shared__ uint32_t sw[SP_MAX_RADIUS + 1];
  __shared__ uint16_t tile[SP_ROW_ROWS][SP_ROW_TILE + 2 * SP_MAX_RADIUS];
  load_weights(sw, p);
  const int r = p.r, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t x0 = (int64_t)blockIdx.x * SP_ROW_TILE;
  for (int64_t y0 = (int64_t)blockIdx.y * SP_ROW_ROWS; y0 < h; y0 += (int64_t)gridDim.y * SP_ROW_ROWS) {
    const int64_t y = y0 + ty;
    __syncthreads(); /* the weights are in; the previous rows' taps are read */
    if (y < h) sp_row_load(tile[ty], in + y * w, x0, r, w, tx);
    __syncthreads();
    if (y < h) sp_row_out(tile[ty], out + y * w, x0, sw, r, w, tx);
  }
}

/* Along y: blocks of SP_COL_BX x SP_COL_BY threads, SP_COL_TILE rows of SP_COL_BX columns each. */
__global__ void cols_kernel(const uint16_t *__restrict__ in, uint16_t *__restrict__ out, int64_t h, int64_t w,
                            weights p) {
  __shared__ uint32_t sw[SP_MAX_RADIUS + 1];
  __shared__ uint16_t tile[SP_COL_TILE + 2 * SP_MAX_RADIUS][SP_COL_BX];
  load_weights(sw, p);
  const int r = p.r, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t x = (int64_t)blockIdx.x * SP_COL_BX + tx;
  for (int64_t y0 = (int64_t)blockIdx.y * SP_COL_TILE; y0 < h; y0 += (int64_t)gridDim.y * SP_COL_TILE) {
    __syncthreads(); /* the weights are in; the previous rows' taps are read */
    sp_col_load(&tile[0][0], in, x, y0, r, h, w, tx, ty);
    __syncthreads();
    sp_col_out(&tile[0][0], out, x, y0, sw, r, h, w, tx, ty);
  }
}

/* ---- normalise -------------------------------------------------------------------------------- */
/* Adds one to bin `key` of a shared histogram for each thread of the warp holding it (threads in
 * `active`, every one of which calls this), one atomic per distinct key; SP_NONE adds nothing. */
__device__ __forceinline__ void count_once(uint32_t *hist, unsigned active, uint32_t key) {
  unsigned peers = __match_any_sync(active, key);
  if (key != SP_NONE && (threadIdx.x & 31) == (unsigned)(__ffs(peers) - 1)) atomicAdd(&hist[key], (uint32_t)__popc(peers));
}

/* The pixels, eight an item where VEC (v 16-byte aligned; the n % 8 after them one an item), else
 * one an item: calls each(active, value, present) for every pixel slot of every item. Every
 * thread of a warp that has an item makes the same calls (eight slots where VEC, present false
 * past an item's pixels), as the warp-wide intrinsics in `each` need; items go in block-wide
 * steps, so a warp's threads leave the loop together. */
template <bool VEC, typename F>
__device__ __forceinline__ void for_pixels(const uint16_t *__restrict__ v, uint64_t n, F each) {
  const uint64_t vec = VEC ? n / 8 : 0, items = vec + (n - vec * 8);
  for (uint64_t base = (uint64_t)blockIdx.x * blockDim.x; base < items; base += stride()) {
    const uint64_t i = base + threadIdx.x;
    const unsigned active = __ballot_sync(0xffffffffu, i < items);
    if (i >= items) continue; /* the warp's last step: base + blockDim.x is past items too */
    if constexpr (!VEC) {
      each(active, v[i], true);
    } else {
      uint32_t word[4] = {0, 0, 0, 0};
      int present = 1;
      if (i < vec) {
        uint4 q = ((const uint4 *)v)[i];
        word[0] = q.x, word[1] = q.y, word[2] = q.z, word[3] = q.w;
        present = 8;
      } else {
        word[0] = v[vec * 8 + (i - vec)];
      }
#pragma unroll
      for (int k = 0; k < 8; k++) each(active, sp_pixel(word, k), k < present);
    }
  }
}

template <bool VEC>
__global__ void count_high_kernel(const uint16_t *__restrict__ v, uint64_t n, sp_scratch *s) {
  __shared__ uint32_t hist[256];
  hist[threadIdx.x] = 0;
  __syncthreads();
  for_pixels<VEC>(v, n, [&](unsigned active, uint32_t x, bool present) {
    count_once(hist, active, present ? x >> 8 : SP_NONE);
  });
  __syncthreads();
  if (hist[threadIdx.x]) atomicAdd(&s->high[threadIdx.x], hist[threadIdx.x]);
}

template <bool VEC>
__global__ void count_low_kernel(const uint16_t *__restrict__ v, uint64_t n, sp_scratch *s) {
  __shared__ uint32_t hist[2][256];
  hist[0][threadIdx.x] = hist[1][threadIdx.x] = 0;
  const uint32_t bin0 = s->bin[0], bin1 = s->bin[1];
  __syncthreads();
  for_pixels<VEC>(v, n, [&](unsigned active, uint32_t x, bool present) {
    count_once(hist[0], active, present && x >> 8 == bin0 ? x & 255 : SP_NONE);
    count_once(hist[1], active, present && x >> 8 == bin1 ? x & 255 : SP_NONE);
  });
  __syncthreads();
  for (int k = 0; k < 2; k++)
    if (hist[k][threadIdx.x]) atomicAdd(&s->low[k][threadIdx.x], hist[k][threadIdx.x]);
}

/* Values below each of the 256 threads' bins (`mine` in its own), offset by `base`: an
 * exclusive scan in shared memory, sp_scan_step's Hillis-Steele steps on two buffers. */
__device__ __forceinline__ uint64_t before_bin(uint32_t mine, uint64_t base) {
  __shared__ uint64_t buf[2][256];
  const int t = threadIdx.x;
  int cur = 0;
  __syncthreads(); /* an earlier call's reads of buf are done */
  buf[0][t] = mine;
  __syncthreads();
  for (int d = 1; d < 256; d *= 2) {
    buf[cur ^ 1][t] = sp_scan_step(buf[cur], t, d);
    __syncthreads();
    cur ^= 1;
  }
  return base + buf[cur][t] - mine;
}

/* One block of 256: the high-byte bins that hold the two ranks, and the values below them. */
__global__ void pick_high_kernel(sp_scratch *s, uint64_t rank_lo, uint64_t rank_hi) {
  __shared__ uint32_t found[2];
  const int t = threadIdx.x;
  const uint64_t rank[2] = {rank_lo, rank_hi};
  if (t < 2) found[t] = SP_NONE;
  const uint32_t count = s->high[t];
  const uint64_t before = before_bin(count, 0); /* syncs after found[] is set */
  for (int k = 0; k < 2; k++)
    if (sp_holds(before, count, rank[k])) {
      found[k] = (uint32_t)t; /* one thread at most (sp_holds) */
      s->before[k] = before;
    }
  __syncthreads();
  if (t < 2) s->bin[t] = found[t];
}

/* One block of 256: lo and hi, from the low bytes inside the bins pick_high found. */
__global__ void pick_low_kernel(sp_scratch *s, uint64_t rank_lo, uint64_t rank_hi) {
  __shared__ int32_t found[2];
  const int t = threadIdx.x;
  const uint64_t rank[2] = {rank_lo, rank_hi};
  if (t < 2) found[t] = -1;
  for (int k = 0; k < 2; k++) {
    const uint32_t bin = s->bin[k], count = s->low[k][t];
    const uint64_t before = before_bin(count, bin == SP_NONE ? 0 : s->before[k]);
    if (bin != SP_NONE && sp_holds(before, count, rank[k])) found[k] = sp_value(bin, t);
  }
  __syncthreads();
  if (t == 0) sp_finish(found[0], found[1], &s->lohi[0], &s->lohi[1]);
}

template <bool VEC>
__global__ void scale_kernel(const uint16_t *__restrict__ v, uint16_t *__restrict__ o, uint64_t n,
                             const sp_scratch *s) {
  const uint32_t lo = s->lohi[0], hi = s->lohi[1];
  uint64_t done = 0;
  if constexpr (VEC) {
    done = n / 8 * 8;
    for (uint64_t i = first(); i < n / 8; i += stride()) {
      uint4 q = ((const uint4 *)v)[i];
      ((uint4 *)o)[i] = make_uint4(sp_scale2(q.x, lo, hi), sp_scale2(q.y, lo, hi), sp_scale2(q.z, lo, hi),
                                   sp_scale2(q.w, lo, hi));
    }
  }
  for (uint64_t i = done + first(); i < n; i += stride()) o[i] = sp_scale(v[i], lo, hi);
}

/* ---- the steps -------------------------------------------------------------------------------- */
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

uint16_t *data_of(ab_tensor *t) { return (uint16_t *)ab_tensor_dl(t)->data; }

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
  int nz = (int)x->shape[0];
  uint16_t *o = data_of(out);
  if (hw > 0 && nz > 0) {
    if (hw % 8 == 0 && aligned16(v) && aligned16(o))
      maxz_kernel<true><<<blocks_for(hw / 8, MAX_BLOCKS), SP_THREADS, 0, s>>>(v, o, nz, hw);
    else
      maxz_kernel<false><<<blocks_for(hw, MAX_BLOCKS), SP_THREADS, 0, s>>>(v, o, nz, hw);
    rc = launched(c, cudaGetLastError(), "the projection kernel's launch");
  }
  return finish(c, rc, out);
}

unsigned grid_y(int64_t rows, int per_block) {
  int64_t b = (rows + per_block - 1) / per_block;
  return b > MAX_GRID_Y ? MAX_GRID_Y : (unsigned)b; /* the kernels step over the rest */
}

int cuda_filter(ab_ctx *c, void *arg) {
  const screen_pipeline *p = (const screen_pipeline *)arg;
  const DLTensor *x;
  const uint16_t *v;
  cudaStream_t s;
  int rc = input(c, 2, &x, &v, &s);
  if (rc != 0) return rc;
  if (p->radius < 0 || p->radius > SP_MAX_RADIUS) return AB_EINVAL;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  int64_t h = x->shape[0], w = x->shape[1];
  uint16_t *o = data_of(out), *t;
  if (h == 0 || w == 0) return finish(c, 0, out);
  if (p->radius == 0) {
    rc = launched(c, cudaMemcpyAsync(o, v, (size_t)(h * w) * sizeof *o, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync");
    return finish(c, rc, out);
  }
  if ((rc = ab_ctx_alloc(c, (size_t)(h * w) * sizeof *t, (void **)&t)) != 0) return finish(c, rc, out);
  weights wt = {p->radius, {0}};
  for (int i = 0; i <= p->radius; i++) wt.w[i] = p->weight[i];
  dim3 rows_grid((unsigned)((w + SP_ROW_TILE - 1) / SP_ROW_TILE), grid_y(h, SP_ROW_ROWS));
  rows_kernel<<<rows_grid, dim3(SP_ROW_BX, SP_ROW_ROWS), 0, s>>>(v, t, h, w, wt);
  rc = launched(c, cudaGetLastError(), "the filter's row kernel's launch");
  if (rc == 0) {
    dim3 cols_grid((unsigned)((w + SP_COL_BX - 1) / SP_COL_BX), grid_y(h, SP_COL_TILE));
    cols_kernel<<<cols_grid, dim3(SP_COL_BX, SP_COL_BY), 0, s>>>(t, o, h, w, wt);
    rc = launched(c, cudaGetLastError(), "the filter's column kernel's launch");
  }
  return finish(c, rc, out);
}

int cuda_normalise(ab_ctx *c, void *arg) {
  const screen_pipeline *p = ((const screen_normalise *)arg)->p;
  const DLTensor *x;
  const uint16_t *v;
  cudaStream_t s;
  int rc = input(c, 2, &x, &v, &s);
  if (rc != 0) return rc;
  sp_scratch *sc;
  if ((rc = ab_ctx_alloc(c, sizeof *sc, (void **)&sc)) != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  uint16_t *o = data_of(out);
  uint64_t n = (uint64_t)(x->shape[0] * x->shape[1]), rank[2];
  if (n == 0) return finish(c, 0, out);
  sp_ranks(n, p->p_lo, p->p_hi, rank);
  const bool vec = aligned16(v) && aligned16(o);
  const uint64_t items = vec ? n / 8 + n % 8 : n;
  const unsigned count_grid = blocks_for(items, COUNT_BLOCKS), scale_grid = blocks_for(vec ? n / 8 + 1 : n, MAX_BLOCKS);
  rc = launched(c, cudaMemsetAsync(sc, 0, offsetof(sp_scratch, before), s), "cudaMemsetAsync");
  if (rc == 0) {
    if (vec) count_high_kernel<true><<<count_grid, SP_THREADS, 0, s>>>(v, n, sc);
    else count_high_kernel<false><<<count_grid, SP_THREADS, 0, s>>>(v, n, sc);
    rc = launched(c, cudaGetLastError(), "the high-byte histogram kernel's launch");
  }
  if (rc == 0) {
    pick_high_kernel<<<1, SP_THREADS, 0, s>>>(sc, rank[0], rank[1]);
    rc = launched(c, cudaGetLastError(), "the high-byte percentile kernel's launch");
  }
  if (rc == 0) {
    if (vec) count_low_kernel<true><<<count_grid, SP_THREADS, 0, s>>>(v, n, sc);
    else count_low_kernel<false><<<count_grid, SP_THREADS, 0, s>>>(v, n, sc);
    rc = launched(c, cudaGetLastError(), "the low-byte histogram kernel's launch");
  }
  if (rc == 0) {
    pick_low_kernel<<<1, SP_THREADS, 0, s>>>(sc, rank[0], rank[1]);
    rc = launched(c, cudaGetLastError(), "the low-byte percentile kernel's launch");
  }
  if (rc == 0) {
    if (vec) scale_kernel<true><<<scale_grid, SP_THREADS, 0, s>>>(v, o, n, sc);
    else scale_kernel<false><<<scale_grid, SP_THREADS, 0, s>>>(v, o, n, sc);
    rc = launched(c, cudaGetLastError(), "the scale kernel's launch");
  }
  return finish(c, rc, out);
}

/* Loads every kernel onto the task's GPU before the plate's clock starts (the runtime loads
 * modules lazily, on a kernel's first launch, and compiles PTX there for a GPU this build has no
 * SASS for). The GPU is the stream's. */
#if CUDART_VERSION >= 12080 /* cudaStreamGetDevice */
int cuda_prepare(ab_ctx *c, void *arg) {
  (void)arg;
  int dev;
  cudaGetLastError();
  int rc = launched(c, cudaStreamGetDevice((cudaStream_t)ab_ctx_stream(c), &dev), "cudaStreamGetDevice");
  if (rc == 0) rc = launched(c, cudaSetDevice(dev), "cudaSetDevice");
  const void *kernels[] = {
      (const void *)maxz_kernel<true>,        (const void *)maxz_kernel<false>,       (const void *)rows_kernel,
      (const void *)cols_kernel,              (const void *)count_high_kernel<true>,  (const void *)count_high_kernel<false>,
      (const void *)pick_high_kernel,         (const void *)count_low_kernel<true>,   (const void *)count_low_kernel<false>,
      (const void *)pick_low_kernel,          (const void *)scale_kernel<true>,       (const void *)scale_kernel<false>,
  };
  cudaFuncAttributes a;
  for (size_t i = 0; i < sizeof kernels / sizeof kernels[0] && rc == 0; i++)
    rc = launched(c, cudaFuncGetAttributes(&a, kernels[i]), "cudaFuncGetAttributes");
  return rc;
}
#define CUDA_PREPARE cuda_prepare
#else
#define CUDA_PREPARE NULL /* the kernels load on their first launch */
#endif

} // namespace

extern "C" const screen_steps screen_steps_cuda = {
    AB_CUDA,      /* kind */
    cuda_project, /* project */
    cuda_filter,  /* filter */
    cuda_normalise,
    NULL,         /* project_slices: the slices are stacked onto the GPU first (ab_stack) */
    NULL,         /* host_cores: a GPU is no share of the host's cores */
    CUDA_PREPARE, /* prepare */
    NULL,         /* cleanup */
};
