/*
 * cli/steps.h: the screening pipeline's device steps, one implementation per device kind.
 *
 * Every step is an ab_task_fn: input 0 is the previous step's tensor on the task's device, the
 * output a new tensor there. The arithmetic is integer throughout, so every kind gives the same
 * bits and a plate's results do not depend on which device ran a stack:
 *
 *   normalise  [z, y, x] u16 -> u16: a 65536-bin histogram of the stack, lo and hi its 1st and
 *              99.9th percentiles (the smallest value whose cumulative count exceeds n*p),
 *              then v -> 0 below lo, 65535 above hi, (v - lo) * 65535 / (hi - lo) between
 *   filter     [z, y, x] u16 -> u16: a 3x3 box mean per slice, (sum + 4) / 9, edges clamped
 *   project    [z, y, x] u16 -> [y, x] u16: the maximum over z
 *   threshold  [y, x] u16 -> [y, x] u8: 1 where the value is >= SCREEN_THRESHOLD, else 0
 *
 * A kind without a row in the table (one this build has no backend for) is not offered for
 * screening. Adding one is a new steps_<kind>.c (steps_cuda.cu for CUDA) and a row in
 * steps_for().
 */
#ifndef AB_CLI_STEPS_H
#define AB_CLI_STEPS_H

#include <arraybridge.h>

#define SCREEN_THRESHOLD 19661u /* 30% of the normalised range */
#define SCREEN_P_LO 10   /* per mille: the 1st percentile */
#define SCREEN_P_HI 999  /* the 99.9th: cells fill only a few percent of a stack's voxels */

typedef struct {
  int kind;                       /* ab_kind */
  ab_task_fn normalise, filter, project, threshold;
  void (*cleanup)(void);          /* frees cached programs; NULL: nothing to free */
} screen_steps;

/* The steps for a device kind, or NULL when this build has none for it. */
const screen_steps *steps_for(int kind);
void steps_cleanup(void);

extern const screen_steps screen_steps_host;
#ifdef AB_HAVE_OPENCL
extern const screen_steps screen_steps_opencl;
#endif
#ifdef AB_HAVE_CUDA
extern const screen_steps screen_steps_cuda;
#endif

/* Shared by every kind: the task's input 0, checked (contiguous, uint16, ndim dimensions). */
static inline int steps_input_u16(ab_ctx *c, int ndim, const DLTensor **out) {
  ab_tensor *t = ab_ctx_input(c, 0);
  if (t == NULL) return AB_EINVAL;
  const DLTensor *x = ab_tensor_dl(t);
  if (x->ndim != ndim || !ab_tensor_is_contiguous(t)) return AB_ESHAPE;
  if (x->dtype.code != kDLUInt || x->dtype.bits != 16) return AB_EDTYPE;
  *out = x;
  return 0;
}

/* Shared by every kind: the percentile rule, on a histogram (host memory). */
static inline void steps_percentiles(const uint32_t *hist, uint64_t n, uint32_t *lo, uint32_t *hi) {
  uint64_t rank_lo = n * SCREEN_P_LO / 1000, rank_hi = n * SCREEN_P_HI / 1000, cum = 0;
  uint32_t l = 0, h = 65535;
  bool have_lo = false;
  for (uint32_t v = 0; v < 65536; v++) {
    cum += hist[v];
    if (!have_lo && cum > rank_lo) {
      l = v;
      have_lo = true;
    }
    if (cum > rank_hi) {
      h = v;
      break;
    }
  }
  if (h <= l) h = l + 1; /* a flat stack: avoid dividing by zero */
  *lo = l;
  *hi = h;
}

static inline uint16_t steps_scale(uint32_t v, uint32_t lo, uint32_t hi) {
  if (v <= lo) return 0;
  if (v >= hi) return 65535;
  return (uint16_t)((v - lo) * 65535u / (hi - lo));
}

#endif
