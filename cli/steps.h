/*
 * cli/steps.h: the screening pipeline's device steps, one implementation per device kind.
 *
 * The pipeline is CellProfiler's usual one for z-stacks (MakeProjection, Smooth,
 * RescaleIntensity, then IdentifyPrimaryObjects): per channel the stack is projected, and the
 * segmentation channel's projection is smoothed and rescaled on the device; thresholding,
 * labelling and measuring run on the host (cli/identify.c), the same code whatever device ran
 * the steps.
 *
 * Every step is an ab_task_fn: input 0 is the previous step's tensor on the task's device, the
 * output a new tensor there; `arg` is the run's const screen_pipeline for filter, a
 * screen_normalise (below) for normalise, NULL for project. The
 * arithmetic is integer throughout, so every kind gives the same bits and a plate's results do
 * not depend on which device ran a stack. Exactly:
 *
 *   project    [z, y, x] u16 -> [y, x] u16: out[y][x] = max over z of in[z][y][x].
 *
 *   project_slices (optional; NULL where a kind has none)
 *              z inputs, each a [y, x] u16 slice on the task's device -> [y, x] u16: the same
 *              maximum, read from the slices where they are. A kind that has it skips ab_stack
 *              (the host: its slices are already in its memory, and a volume nobody keeps is
 *              8 MiB written and read again per stack for nothing).
 *
 *   filter     [y, x] u16 -> [y, x] u16: a separable Gaussian with integer weights, normalised
 *              at the edges (the window is cut at the image border and divided by the weights
 *              that remain, as CellProfiler's smoothing with a mask does). With r = p->radius
 *              and w[i] = p->weight[i] (w[0] + 2 * (w[1] + ... + w[r]) == 1 << 14):
 *                rows:    a = sum over i in [-r, r], 0 <= x + i < W of  w[|i|] * in[y][x + i]
 *                         s = sum of w[|i|] over the same i
 *                         t[y][x] = (a + s / 2) / s                      (u32 math, t is u16)
 *                columns: b = sum over j in [-r, r], 0 <= y + j < H of  w[|j|] * t[y + j][x]
 *                         s = sum of w[|j|] over the same j
 *                         out[y][x] = (b + s / 2) / s
 *              (integer division; a, b < 2^30.) Where the whole window fits, s == 1 << 14 and
 *              this is (a + 8192) >> 14. r == 0 copies.
 *
 *   normalise  [y, x] u16 -> [y, x] u16: a 65536-bin histogram of the n = y * x values; lo and
 *              hi are the p->p_lo and p->p_hi per-mille percentiles: the smallest value v whose
 *              cumulative count exceeds n * p / 1000 (u64, integer division); if hi <= lo,
 *              hi = lo + 1. Then out = 0 where v <= lo, 65535 where v >= hi, and
 *              (v - lo) * 65535 / (hi - lo) between (u32 math).
 *
 * A kind without a row in the table (one this build has no backend for) is not offered for
 * screening. Adding one is a new steps_<kind>.c (steps_cuda.cu for CUDA) and a row in
 * steps_for() (steps.c).
 */
#ifndef AB_CLI_STEPS_H
#define AB_CLI_STEPS_H

#include <arraybridge.h>

#define SCREEN_MAX_RADIUS 64      /* the filter's half-width in pixels */
#define SCREEN_WEIGHT_ONE (1u << 14)

/* Everything that decides a result, fixed for a run (the CSV's sidecar JSON records it). */
typedef struct {
  /* filter (device): CellProfiler's Smooth "Gaussian Filter" of `filter_size` pixels: sigma is
   * filter_size / 2.35, the window reaches int(4 sigma + 0.5) pixels (scipy's truncate=4). */
  double filter_size;
  int radius;
  uint16_t weight[SCREEN_MAX_RADIUS + 1];
  /* normalise (device) */
  uint32_t p_lo, p_hi;            /* per mille: 10 and 999 are the 1st and 99.9th percentiles */
  /* identify (host) */
  bool otsu;                      /* else a manual threshold */
  double threshold;               /* manual: a fraction of the normalised range, (0, 1] */
  int min_area;                   /* pixels: smaller objects are dropped */
  int segment;                    /* the channel segmented (an index into the plate's channels) */
} screen_pipeline;

/* normalise's arg: the run's pipeline, and Otsu's histogram of the image it writes (256 bins of
 * v >> 8, as identify.h counts them), which a kind that counts its histogram on the host also
 * fills (counted = true), so that the identify step need not count every pixel again. A kind
 * that does not leaves counted false. The caller clears counted before the step runs. */
typedef struct {
  const screen_pipeline *p;
  bool counted;
  uint64_t otsu[256];
} screen_normalise;

/* Fills the filter's radius and weights from p->filter_size (see above). */
void screen_pipeline_weights(screen_pipeline *p);

typedef struct {
  int kind;                       /* ab_kind */
  ab_task_fn project, filter, normalise;
  ab_task_fn project_slices;      /* NULL: ab_stack, then project */
  ab_task_fn host_cores;          /* a quick task on the device, asked before anything is built:
                                     arg is a bool *, set when the device computes on the host's
                                     own CPU cores (an OpenCL CPU device). NULL: it does not */
  ab_task_fn prepare;             /* run once on each device the plate will use, before it starts
                                     (builds kernels); arg NULL. NULL: nothing to do */
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

/* Shared by every kind: the percentile rule, on the histogram of the values first..last (host
 * memory: hist[v] counts v; no value outside those). */
static inline void steps_percentiles_in(const uint32_t *hist, uint32_t first, uint32_t last, uint64_t n,
                                        const screen_pipeline *p, uint32_t *lo, uint32_t *hi) {
  uint64_t rank_lo = n * p->p_lo / 1000, rank_hi = n * p->p_hi / 1000, cum = 0;
  uint32_t l = 0, h = 65535;
  bool have_lo = false;
  for (uint32_t v = first; v <= last; v++) {
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
  if (h <= l) h = l + 1; /* a flat image: avoid dividing by zero */
  *lo = l;
  *hi = h;
}

/* The same over all 65536 values. */
static inline void steps_percentiles(const uint32_t *hist, uint64_t n, const screen_pipeline *p, uint32_t *lo,
                                     uint32_t *hi) {
  steps_percentiles_in(hist, 0, 65535, n, p, lo, hi);
}

static inline uint16_t steps_scale(uint32_t v, uint32_t lo, uint32_t hi) {
  if (v <= lo) return 0;
  if (v >= hi) return 65535;
  return (uint16_t)((v - lo) * 65535u / (hi - lo));
}

#endif
