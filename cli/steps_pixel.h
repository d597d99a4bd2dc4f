/*
 * cli/steps_pixel.h: the CUDA steps' arithmetic, one pixel (or one thread's share) at a time.
 *
 * Written once for cli/steps_cuda.cu's kernels and for tests/test_cuda_screen_logic.c, which
 * runs the same functions on the host, arranged as the kernels arrange them, against the host
 * steps (cli/steps_host.c) on a machine without a GPU. Plain C for the host, __host__
 * __device__ under nvcc. The rules are steps.h's; every value is an integer, so every device
 * gives the same bits.
 */
#ifndef AB_CLI_STEPS_PIXEL_H
#define AB_CLI_STEPS_PIXEL_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SP_FN static __host__ __device__ __forceinline__
#else
#define SP_FN static inline
#endif

/* What the kernels take as parameters rather than constants: the step configuration. */
typedef struct {
  uint32_t threshold;             /* threshold: 1 where the value is >= this */
  int radius;                     /* filter: a (2r+1) x (2r+1) box mean; 1 is steps.h's 3x3 */
  uint32_t p_lo, p_hi;            /* normalise: the percentiles, per mille */
} sp_params;

/* normalise: percentiles over a 65536-bin histogram, found by SP_THREADS threads of one block,
 * each owning SP_BINS consecutive bins: a thread sums its bins, an exclusive scan over the sums
 * gives what comes before each, and the thread whose bins hold a rank finds its bin. */
#define SP_THREADS 1024
#define SP_BINS (65536 / SP_THREADS)

SP_FN void sp_ranks(uint64_t n, const sp_params *p, uint64_t *rank_lo, uint64_t *rank_hi) {
  *rank_lo = n * p->p_lo / 1000;
  *rank_hi = n * p->p_hi / 1000;
}

/* The first bin v of thread t's share with (before + the counts up to v) > rank, or -1 when the
 * rank is not in the share. */
SP_FN int32_t sp_find(const uint32_t *hist, int t, uint64_t before, uint64_t rank) {
  uint64_t cum = before;
  for (int v = t * SP_BINS; v < (t + 1) * SP_BINS; v++) {
    cum += hist[v];
    if (cum > rank) return before > rank ? -1 : v;
  }
  return -1;
}

/* lo and hi from the bins found (-1: none): steps_percentiles' defaults and flat-stack rule. */
SP_FN void sp_finish(int32_t found_lo, int32_t found_hi, uint32_t *lo, uint32_t *hi) {
  uint32_t l = found_lo >= 0 ? (uint32_t)found_lo : 0, h = found_hi >= 0 ? (uint32_t)found_hi : 65535;
  if (h <= l) h = l + 1;
  *lo = l;
  *hi = h;
}

SP_FN uint16_t sp_scale(uint32_t v, uint32_t lo, uint32_t hi) {
  if (v <= lo) return 0;
  if (v >= hi) return 65535;
  return (uint16_t)((v - lo) * 65535u / (hi - lo));
}

/* filter: the box mean at (y, x) of one h x w slice, edges clamped, rounded to nearest. */
SP_FN uint16_t sp_box(const uint16_t *s, int64_t h, int64_t w, int64_t y, int64_t x, int r) {
  uint32_t sum = 0, n = (uint32_t)(2 * r + 1) * (uint32_t)(2 * r + 1);
  for (int dy = -r; dy <= r; dy++) {
    int64_t yy = y + dy < 0 ? 0 : y + dy > h - 1 ? h - 1 : y + dy;
    for (int dx = -r; dx <= r; dx++) {
      int64_t xx = x + dx < 0 ? 0 : x + dx > w - 1 ? w - 1 : x + dx;
      sum += s[yy * w + xx];
    }
  }
  return (uint16_t)((sum + n / 2) / n);
}

/* project: the maximum over z of pixel i (hw pixels a slice). */
SP_FN uint16_t sp_maxz(const uint16_t *v, int64_t nz, int64_t hw, int64_t i) {
  uint16_t m = v[i];
  for (int64_t z = 1; z < nz; z++)
    if (v[z * hw + i] > m) m = v[z * hw + i];
  return m;
}

SP_FN uint8_t sp_threshold(uint16_t v, uint32_t t) { return v >= t; }

#endif
