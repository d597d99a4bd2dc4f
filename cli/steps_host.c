/*
 * cli/steps_host.c: the pipeline's steps on the host device (see steps.h for the arithmetic).
 *
 * Each step is one or two passes over memory (bench/run screen_roofline measures the chain
 * against memcpy):
 *   project    in chunks of 8 KiB of output, so the running maximum stays in L1 while every
 *              plane streams past it once, four planes a pass (the maximum is loaded and stored
 *              a quarter as often); straight from the loaded slices (no volume);
 *   filter     the separable passes over whole rows, with the symmetric weights folded
 *              (w[i] * (left + right)), 32 outputs at a time whose sums stay in registers
 *              through every tap; the rows' pass keeps its results in 32 bits for the columns'
 *              taps; only the r border columns and rows, where the window is cut, take the
 *              general (dividing) path;
 *   normalise  one pass for the histogram, then a 65536-entry table built without a division
 *              per value (quotient and remainder stepped exactly), then one pass through it.
 * Loops that vectorise are compiled for AVX2 as well where the compiler can (target_clones),
 * and the right one is picked when the program starts. The results are the same bits either way.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/steps.h"
#include "cli/vector.h"

static const DLDataType U16 = {kDLUInt, 16, 1};

static const uint16_t *u16_in(const DLTensor *x) {
  return (const uint16_t *)((const char *)x->data + x->byte_offset);
}

/* ---- project -------------------------------------------------------------------------------- */
#define CHUNK 4096 /* pixels */

VECTOR static void max_into(uint16_t *restrict o, const uint16_t *restrict s, size_t n) {
  for (size_t i = 0; i < n; i++) o[i] = s[i] > o[i] ? s[i] : o[i];
}

#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Four planes at a time: the running maximum is loaded and stored a quarter as often. */
VECTOR static void max4_into(uint16_t *restrict o, const uint16_t *restrict a, const uint16_t *restrict b,
                             const uint16_t *restrict c, const uint16_t *restrict d, size_t n) {
  for (size_t i = 0; i < n; i++) o[i] = MAX(MAX(MAX(a[i], b[i]), MAX(c[i], d[i])), o[i]);
}

static int host_project(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 3, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape + 1, &out)) != 0) return rc;
  size_t nz = (size_t)x->shape[0], hw = (size_t)(x->shape[1] * x->shape[2]);
  const uint16_t *v = u16_in(x);
  uint16_t *o = ab_tensor_dl(out)->data;
  for (size_t c0 = 0; c0 < hw; c0 += CHUNK) {
    size_t n = hw - c0 < CHUNK ? hw - c0 : CHUNK;
    memcpy(o + c0, v + c0, n * sizeof *o);
    for (size_t z = 1; z < nz; z++) max_into(o + c0, v + z * hw + c0, n);
  }
  return ab_ctx_set_output(c, out);
}

static int host_project_slices(ab_ctx *c, void *arg) {
  (void)arg;
  int nz = ab_ctx_ninputs(c);
  if (nz < 1) return AB_EINVAL;
  const DLTensor *first = ab_tensor_dl(ab_ctx_input(c, 0));
  const uint16_t **s = NULL;
  int rc = ab_ctx_alloc(c, sizeof *s * (size_t)nz, (void **)&s);
  for (int z = 0; z < nz && rc == 0; z++) {
    const DLTensor *x = ab_tensor_dl(ab_ctx_input(c, z));
    if (x->ndim != 2 || x->shape[0] != first->shape[0] || x->shape[1] != first->shape[1] ||
        !ab_tensor_is_contiguous(ab_ctx_input(c, z)))
      return AB_ESHAPE;
    if (x->dtype.code != kDLUInt || x->dtype.bits != 16) return AB_EDTYPE;
    s[z] = u16_in(x);
  }
  ab_tensor *out;
  if (rc != 0 || (rc = ab_ctx_alloc_tensor(c, U16, 2, first->shape, &out)) != 0) return rc;
  size_t hw = (size_t)(first->shape[0] * first->shape[1]);
  uint16_t *o = ab_tensor_dl(out)->data;
  for (size_t c0 = 0; c0 < hw; c0 += CHUNK) {
    size_t n = hw - c0 < CHUNK ? hw - c0 : CHUNK;
    memcpy(o + c0, s[0] + c0, n * sizeof *o);
    int z = 1;
    for (; z + 4 <= nz; z += 4) max4_into(o + c0, s[z] + c0, s[z + 1] + c0, s[z + 2] + c0, s[z + 3] + c0, n);
    for (; z < nz; z++) max_into(o + c0, s[z] + c0, n);
  }
  return ab_ctx_set_output(c, out);
}

/* ---- filter --------------------------------------------------------------------------------- */
/* The general rule at one position of a line: the window cut at the ends, divided by what is left. */
static uint16_t cut_window(const uint16_t *in, int64_t at, int64_t n, int64_t step, const screen_pipeline *p) {
  int64_t lo = at - p->radius < 0 ? -at : -p->radius, hi = at + p->radius >= n ? n - 1 - at : p->radius;
  uint32_t a = 0, s = 0;
  for (int64_t i = lo; i <= hi; i++) {
    uint32_t w = p->weight[i < 0 ? -i : i];
    a += w * in[(at + i) * step];
    s += w;
  }
  return (uint16_t)((a + s / 2) / s);
}

/* Eight lanes of 32 bits: one AVX2 register (two SSE2 ones); load8 reads one from anywhere. */
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8_any __attribute__((vector_size(32), aligned(4), may_alias));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
#define load8(at) (*(const u32x8_any *)(at))
#define INLINE __attribute__((always_inline)) static inline

/* The whole window at in[0] .. in[31], taps s apart, before rounding: four registers of sums
 * that stay in registers through every tap and do not wait on each other. */
INLINE void window32(u32x8 a[4], const uint32_t *in, int64_t s, const uint32_t *w, int r) {
  for (int k = 0; k < 4; k++) a[k] = w[0] * load8(in + 8 * k);
  for (int i = 1; i <= r; i++) {
    uint32_t wi = w[i];
    const uint32_t *lo = in - i * s, *hi = in + i * s;
    for (int k = 0; k < 4; k++) a[k] += wi * (load8(lo + 8 * k) + load8(hi + 8 * k));
  }
}

static inline uint32_t window1(const uint32_t *in, int64_t s, const uint32_t *w, int r) {
  uint32_t a = w[0] * in[0];
  for (int i = 1; i <= r; i++) a += w[i] * (in[-i * s] + in[i * s]);
  return a;
}

#define ROUND(a) (((a) + SCREEN_WEIGHT_ONE / 2) >> 14)

/* The rows' pass where the window fits: t[x] for n positions, from the widened row `in`. */
VECTOR static void fir_rows(uint32_t *restrict t, const uint32_t *restrict in, int64_t n, const uint32_t *w, int r) {
  int64_t x = 0;
  for (; x + 32 <= n; x += 32) {
    u32x8 a[4];
    window32(a, in + x, 1, w, r);
    for (int k = 0; k < 4; k++) {
      u32x8 v = ROUND(a[k]);
      memcpy(t + x + 8 * k, &v, sizeof v);
    }
  }
  for (; x < n; x++) t[x] = ROUND(window1(in + x, 1, w, r));
}

/* The columns' pass where the window fits: one output row of n from t's rows, s apart. */
VECTOR static void fir_cols(uint16_t *restrict o, const uint32_t *restrict t, int64_t n, int64_t s, const uint32_t *w,
                            int r) {
  int64_t x = 0;
  for (; x + 32 <= n; x += 32) {
    u32x8 a[4];
    window32(a, t + x, s, w, r);
    for (int k = 0; k < 4; k++) {
      u16x8 v = __builtin_convertvector(ROUND(a[k]), u16x8);
      memcpy(o + x + 8 * k, &v, sizeof v);
    }
  }
  for (; x < n; x++) o[x] = (uint16_t)ROUND(window1(t + x, s, w, r));
}

VECTOR static void widen(uint32_t *restrict o, const uint16_t *restrict in, int64_t n) {
  for (int64_t x = 0; x < n; x++) o[x] = in[x];
}

/* A row near the top or bottom: the rows [y + jlo, y + jhi] of t, weighted, over their weight sum. */
VECTOR static void cut_rows(uint16_t *restrict o, uint32_t *restrict acc, const uint32_t *restrict t, int64_t w,
                            int jlo, int jhi, const screen_pipeline *p) {
  uint32_t s = 0;
  for (int64_t x = 0; x < w; x++) acc[x] = 0;
  for (int j = jlo; j <= jhi; j++) {
    uint32_t k = p->weight[j < 0 ? -j : j];
    const uint32_t *row = t + j * w;
    s += k;
    for (int64_t x = 0; x < w; x++) acc[x] += k * row[x];
  }
  for (int64_t x = 0; x < w; x++) o[x] = (uint16_t)((acc[x] + s / 2) / s);
}

/* One row along x into t: the interior through the window, the r columns at each end cut. */
static void row_pass(const uint16_t *in, uint32_t *t, int64_t w, uint32_t *wide, const uint32_t *wt,
                     const screen_pipeline *p) {
  int64_t r = p->radius;
  if (w <= 2 * r) {
    for (int64_t x = 0; x < w; x++) t[x] = cut_window(in, x, w, 1, p);
    return;
  }
  widen(wide, in, w);
  fir_rows(t + r, wide + r, w - 2 * r, wt, (int)r);
  for (int64_t x = 0; x < r; x++) {
    t[x] = cut_window(in, x, w, 1, p);
    t[w - 1 - x] = cut_window(in, w - 1 - x, w, 1, p);
  }
}

/* The rows' pass keeps its results in 32 bits (each below 2^16, as steps.h's t), so that the
 * columns' taps load them without widening every one again. */
static int host_filter(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 2, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  int64_t h = x->shape[0], w = x->shape[1], r = p->radius;
  const uint16_t *v = u16_in(x);
  uint16_t *o = ab_tensor_dl(out)->data;
  uint32_t *t, *acc, wt[SCREEN_MAX_RADIUS + 1];
  if ((rc = ab_ctx_alloc(c, (size_t)(h * w) * sizeof *t, (void **)&t)) != 0 ||
      (rc = ab_ctx_alloc(c, (size_t)w * sizeof *acc, (void **)&acc)) != 0) {
    ab_tensor_release(out);
    return rc;
  }
  if (r == 0) {
    memcpy(o, v, (size_t)(h * w) * sizeof *o);
    return ab_ctx_set_output(c, out);
  }
  for (int64_t i = 0; i <= r; i++) wt[i] = p->weight[i];
  for (int64_t y = 0; y < h; y++) row_pass(v + y * w, t + y * w, w, acc, wt, p);
  for (int64_t y = 0; y < h; y++) {
    if (y >= r && y < h - r) /* the whole window fits: rows are vectors */
      fir_cols(o + y * w, t + y * w, w, w, wt, (int)r);
    else
      cut_rows(o + y * w, acc, t + y * w, w, y - r < 0 ? (int)-y : (int)-r, y + r >= h ? (int)(h - 1 - y) : (int)r, p);
  }
  return ab_ctx_set_output(c, out);
}

/* ---- normalise ------------------------------------------------------------------------------ */
static void histogram(const uint16_t *v, int64_t n, uint32_t *h) {
  for (int64_t i = 0; i < n; i++) h[v[i]]++;
}

/* lut[v] = steps_scale(v, lo, hi) for every v: k * 65535 / d for v = lo + k, stepped exactly. */
static void scale_table(uint16_t *lut, uint32_t lo, uint32_t hi) {
  uint32_t d = hi - lo, step_q = 65535 / d, step_r = 65535 % d, q = 0, rem = 0;
  for (uint32_t v = 0; v <= lo; v++) lut[v] = 0;
  for (uint32_t v = lo + 1; v < hi; v++) {
    q += step_q;
    rem += step_r;
    if (rem >= d) rem -= d, q++;
    lut[v] = (uint16_t)q;
  }
  for (uint32_t v = hi; v < 65536; v++) lut[v] = 65535;
}

static void apply_table(const uint16_t *lut, const uint16_t *v, uint16_t *o, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = lut[v[i]];
}

static int host_normalise(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 2, &x);
  if (rc != 0) return rc;
  uint32_t *hist;
  uint16_t *lut;
  if ((rc = ab_ctx_alloc(c, 65536 * sizeof *hist, (void **)&hist)) != 0 ||
      (rc = ab_ctx_alloc(c, 65536 * sizeof *lut, (void **)&lut)) != 0)
    return rc;
  memset(hist, 0, 65536 * sizeof *hist);
  const uint16_t *v = u16_in(x);
  int64_t n = x->shape[0] * x->shape[1];
  histogram(v, n, hist);
  uint32_t lo, hi;
  steps_percentiles(hist, (uint64_t)n, p, &lo, &hi);
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  scale_table(lut, lo, hi);
  apply_table(lut, v, ab_tensor_dl(out)->data, n);
  return ab_ctx_set_output(c, out);
}

const screen_steps screen_steps_host = {
    .kind = AB_HOST,
    .project = host_project,
    .filter = host_filter,
    .normalise = host_normalise,
    .project_slices = host_project_slices,
};
