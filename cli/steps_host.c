/*
 * cli/steps_host.c: the pipeline's steps on the host device (see steps.h for the arithmetic).
 *
 * Each step is one or two passes over memory (bench/run screen_roofline measures the chain
 * against memcpy):
 *   project    in chunks of 8 KiB of output, so the running maximum stays in L1 while every
 *              plane streams past it once, four planes a pass (the maximum is loaded and stored
 *              a quarter as often); straight from the loaded slices (no volume);
 *   filter     the separable passes over whole rows, 16-bit lanes with a pairwise multiply-add
 *              per tap (below, at the filter), the sums in registers through every tap; only
 *              the r border columns and rows, where the window is cut, take the general
 *              (dividing) path;
 *   normalise  one pass for the value range, one for the histogram over it (four counts), a
 *              table over the range built without a division per value (quotient and remainder
 *              stepped exactly), one pass that scales (a multiply and shifts in 16-bit lanes,
 *              exact, below; else through the table); and Otsu's histogram of the output for
 *              the identify step, from the input's histogram through the table (the range's
 *              values, not the pixels).
 * Loops that vectorise are compiled for AVX2 as well where the compiler can (target_clones),
 * and the right one is picked when the program starts; the filter's lines and the scale are
 * written by hand for AVX-512 (with VNNI's dot product) and AVX2, picked by vector_isa()
 * (cli/vector.h). The results are the same bits either way.
 */
#include <assert.h>
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

/* The first four planes: the maximum starts from them. */
VECTOR static void max4(uint16_t *restrict o, const uint16_t *restrict a, const uint16_t *restrict b,
                        const uint16_t *restrict c, const uint16_t *restrict d, size_t n) {
  for (size_t i = 0; i < n; i++) o[i] = MAX(MAX(a[i], b[i]), MAX(c[i], d[i]));
}

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
    int z = 1;
    if (nz >= 4) {
      max4(o + c0, s[0] + c0, s[1] + c0, s[2] + c0, s[3] + c0, n);
      z = 4;
    } else {
      memcpy(o + c0, s[0] + c0, n * sizeof *o);
    }
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

/* The filter's interior in 16-bit lanes. A pixel v is kept as v ^ 0x8000, which read as int16
 * is v - 32768: then one pairwise multiply-add (x86's pmaddwd) takes w[i] * (left + right) for
 * a tap into a 32-bit sum, with no widening. The weights of a whole window sum to 1 << 14, so
 * the sum of w * (v - 32768) is the true sum a less 2^29: adding 2^29 back gives steps.h's a
 * exactly (|each product| <= 2^29, every partial sum within 32 bits). */
#define BIAS 0x8000u
#define BACK ((1u << 29) + SCREEN_WEIGHT_ONE / 2) /* the bias back, and steps.h's rounding */

/* o[x] = (a + 8192) >> 14, then ^ flip, for n positions: the window at c[x], taps s apart, over
 * biased values. One position at a time; the vector version below does the bulk. */
static void window_line_c(uint16_t *o, const uint16_t *c, int64_t n, int64_t s, const uint16_t *w, int r,
                          uint16_t flip) {
  for (int64_t x = 0; x < n; x++) {
    int32_t a = w[0] * (int16_t)c[x];
    for (int i = 1; i <= r; i++) a += w[i] * ((int16_t)c[x - i * s] + (int16_t)c[x + i * s]);
    o[x] = (uint16_t)(((uint32_t)a + BACK) >> 14) ^ flip;
  }
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_LINE 1

/* 16 positions a step: the two taps of a pair interleaved (unpack), multiplied by (w, w) and
 * added (madd); the halves come out as pixels 0-3, 8-11 and 4-7, 12-15, which pack puts back in
 * order. The rest one at a time. Inlined with r a constant for the usual radii (below), so the
 * taps unroll and their weights stay in registers. */
__attribute__((target("avx2"), always_inline)) static inline void window_avx2(uint16_t *o, const uint16_t *c, int64_t n,
                                                                            int64_t s, const uint16_t *w, const int r,
                                                                            uint16_t flip) {
  const __m256i back = _mm256_set1_epi32((int)BACK), zero = _mm256_setzero_si256();
  const __m256i fl = _mm256_set1_epi16((short)flip), w0 = _mm256_set1_epi32(w[0]);
  __m256i wv[SCREEN_MAX_RADIUS + 1]; /* (w[i], w[i]) in every pair, made once a line */
  for (int i = 1; i <= r; i++) wv[i] = _mm256_set1_epi32((int)(w[i] | (uint32_t)w[i] << 16));
  int64_t x = 0;
  for (; x + 16 <= n; x += 16) {
    __m256i m = _mm256_loadu_si256((const __m256i *)(c + x));
    __m256i lo = _mm256_madd_epi16(_mm256_unpacklo_epi16(m, zero), w0);
    __m256i hi = _mm256_madd_epi16(_mm256_unpackhi_epi16(m, zero), w0);
#pragma GCC unroll 16
    for (int i = 1; i <= r; i++) {
      __m256i l = _mm256_loadu_si256((const __m256i *)(c + x - i * s));
      __m256i h = _mm256_loadu_si256((const __m256i *)(c + x + i * s));
      lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_unpacklo_epi16(l, h), wv[i]));
      hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_unpackhi_epi16(l, h), wv[i]));
    }
    lo = _mm256_srli_epi32(_mm256_add_epi32(lo, back), 14);
    hi = _mm256_srli_epi32(_mm256_add_epi32(hi, back), 14);
    _mm256_storeu_si256((__m256i *)(o + x), _mm256_xor_si256(_mm256_packus_epi32(lo, hi), fl));
  }
  window_line_c(o + x, c + x, n - x, s, w, r, flip);
}

/* fn(..., r, ...) with r a constant for the usual radii (filter sizes up to 4.5 pixels). */
#define BY_RADIUS(fn, o, c, n, s, w, r, flip)                                                  \
  switch (r) {                                                                                \
  case 1: fn(o, c, n, s, w, 1, flip); break;                                                  \
  case 2: fn(o, c, n, s, w, 2, flip); break;                                                  \
  case 3: fn(o, c, n, s, w, 3, flip); break;                                                  \
  case 4: fn(o, c, n, s, w, 4, flip); break;                                                  \
  case 5: fn(o, c, n, s, w, 5, flip); break;                                                  \
  case 6: fn(o, c, n, s, w, 6, flip); break;                                                  \
  case 7: fn(o, c, n, s, w, 7, flip); break;                                                  \
  case 8: fn(o, c, n, s, w, 8, flip); break;                                                  \
  default: fn(o, c, n, s, w, r, flip); break;                                                 \
  }

__attribute__((target("avx2"))) static void window_line_avx2(uint16_t *o, const uint16_t *c, int64_t n, int64_t s,
                                                             const uint16_t *w, int r, uint16_t flip) {
  BY_RADIUS(window_avx2, o, c, n, s, w, r, flip)
}

/* The same in 512-bit registers, 32 positions a step, where the CPU has AVX-512 and its dot
 * product (vpdpwssd: the pairwise multiply-add and the add into the sum in one instruction).
 * unpack and pack work within 128-bit lanes at every width, so the order comes out the same. A
 * line that does not end on a whole step ends with one more step over its last 32 positions,
 * which writes some outputs twice, with the same values (o and c never overlap). */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
window_avx512(uint16_t *o, const uint16_t *c, int64_t n, int64_t s, const uint16_t *w, const int r, uint16_t flip) {
  if (n < 32) {
    window_avx2(o, c, n, s, w, r, flip);
    return;
  }
  const __m512i back = _mm512_set1_epi32((int)BACK), zero = _mm512_setzero_si512();
  const __m512i fl = _mm512_set1_epi16((short)flip), w0 = _mm512_set1_epi32(w[0]);
  __m512i wv[SCREEN_MAX_RADIUS + 1];
  for (int i = 1; i <= r; i++) wv[i] = _mm512_set1_epi32((int)(w[i] | (uint32_t)w[i] << 16));
  for (int64_t x = 0;; x += 32) {
    if (x + 32 > n) x = n - 32; /* the last step, overlapping the one before */
    __m512i m = _mm512_loadu_si512(c + x);
    __m512i lo = _mm512_madd_epi16(_mm512_unpacklo_epi16(m, zero), w0);
    __m512i hi = _mm512_madd_epi16(_mm512_unpackhi_epi16(m, zero), w0);
#pragma GCC unroll 16
    for (int i = 1; i <= r; i++) {
      __m512i l = _mm512_loadu_si512(c + x - i * s);
      __m512i h = _mm512_loadu_si512(c + x + i * s);
      lo = _mm512_dpwssd_epi32(lo, _mm512_unpacklo_epi16(l, h), wv[i]);
      hi = _mm512_dpwssd_epi32(hi, _mm512_unpackhi_epi16(l, h), wv[i]);
    }
    lo = _mm512_srli_epi32(_mm512_add_epi32(lo, back), 14);
    hi = _mm512_srli_epi32(_mm512_add_epi32(hi, back), 14);
    _mm512_storeu_si512(o + x, _mm512_xor_si512(_mm512_packus_epi32(lo, hi), fl));
    if (x + 32 == n) break;
  }
}

__attribute__((target("avx2,avx512f,avx512bw,avx512vnni"))) static void
window_line_avx512(uint16_t *o, const uint16_t *c, int64_t n, int64_t s, const uint16_t *w, int r, uint16_t flip) {
  BY_RADIUS(window_avx512, o, c, n, s, w, r, flip)
}
#endif

typedef void window_line_fn(uint16_t *, const uint16_t *, int64_t, int64_t, const uint16_t *, int, uint16_t);

static window_line_fn *window_line(void) {
#ifdef HAVE_AVX2_LINE
  int isa = vector_isa();
  if (isa == VECTOR_AVX512) return window_line_avx512;
  if (isa == VECTOR_AVX2) return window_line_avx2;
#endif
  return window_line_c;
}

VECTOR static void flip_row(uint16_t *restrict o, const uint16_t *restrict in, int64_t n) {
  for (int64_t x = 0; x < n; x++) o[x] = in[x] ^ BIAS;
}

/* A row near the top or bottom: the rows [y + jlo, y + jhi] of t (biased), weighted, over their
 * weight sum. */
VECTOR static void cut_rows(uint16_t *restrict o, uint32_t *restrict acc, const uint16_t *restrict t, int64_t w,
                            int jlo, int jhi, const screen_pipeline *p) {
  uint32_t s = 0;
  for (int64_t x = 0; x < w; x++) acc[x] = 0;
  for (int j = jlo; j <= jhi; j++) {
    uint32_t k = p->weight[j < 0 ? -j : j];
    const uint16_t *row = t + j * w;
    s += k;
    for (int64_t x = 0; x < w; x++) acc[x] += k * (uint32_t)(row[x] ^ BIAS);
  }
  for (int64_t x = 0; x < w; x++) o[x] = (uint16_t)((acc[x] + s / 2) / s);
}

/* One row along x into t (biased): the interior through the window, the r columns at each end
 * cut. */
static void row_pass(const uint16_t *in, uint16_t *t, int64_t w, uint16_t *row, window_line_fn *line,
                     const screen_pipeline *p) {
  int64_t r = p->radius;
  if (w <= 2 * r) {
    for (int64_t x = 0; x < w; x++) t[x] = cut_window(in, x, w, 1, p) ^ BIAS;
    return;
  }
  flip_row(row, in, w);
  line(t + r, row + r, w - 2 * r, 1, p->weight, (int)r, BIAS);
  for (int64_t x = 0; x < r; x++) {
    t[x] = cut_window(in, x, w, 1, p) ^ BIAS;
    t[w - 1 - x] = cut_window(in, w - 1 - x, w, 1, p) ^ BIAS;
  }
}

static int host_filter(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 2, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  int64_t h = x->shape[0], w = x->shape[1], r = p->radius;
  const uint16_t *v = u16_in(x);
  uint16_t *o = ab_tensor_dl(out)->data, *t, *row;
  uint32_t *acc;
  if ((rc = ab_ctx_alloc(c, (size_t)(h * w) * sizeof *t, (void **)&t)) != 0 ||
      (rc = ab_ctx_alloc(c, (size_t)w * sizeof *row, (void **)&row)) != 0 ||
      (rc = ab_ctx_alloc(c, (size_t)w * sizeof *acc, (void **)&acc)) != 0) {
    ab_tensor_release(out);
    return rc;
  }
  if (r == 0) {
    memcpy(o, v, (size_t)(h * w) * sizeof *o);
    return ab_ctx_set_output(c, out);
  }
  window_line_fn *line = window_line();
  for (int64_t y = 0; y < h; y++) row_pass(v + y * w, t + y * w, w, row, line, p);
  for (int64_t y = 0; y < h; y++) {
    if (y >= r && y < h - r) /* the whole window fits: rows are vectors */
      line(o + y * w, t + y * w, w, w, p->weight, (int)r, 0);
    else
      cut_rows(o + y * w, acc, t + y * w, w, y - r < 0 ? (int)-y : (int)-r, y + r >= h ? (int)(h - 1 - y) : (int)r, p);
  }
  return ab_ctx_set_output(c, out);
}

/* ---- normalise ------------------------------------------------------------------------------ */
/* The smallest and largest value: the histogram, its clearing and the scale table then cover
 * that range only (typically a few thousand values of the 65536). */
VECTOR static void value_range(const uint16_t *restrict v, int64_t n, uint32_t *first, uint32_t *last) {
  uint16_t a = 65535, b = 0;
  for (int64_t i = 0; i < n; i++) {
    a = v[i] < a ? v[i] : a;
    b = v[i] > b ? v[i] : b;
  }
  *first = a, *last = b;
}

/* hist[v] for v in first..last. With part (4 * (last - first + 1) counts), four counts, each
 * over every fourth pixel, added at the end: a smoothed image repeats values from pixel to pixel,
 * and one count would wait on its own last increment. */
static void histogram(const uint16_t *v, int64_t n, uint32_t *hist, uint32_t *part, uint32_t first, uint32_t last) {
  uint32_t r = last - first + 1;
  memset(hist + first, 0, r * sizeof *hist);
  if (part == NULL) {
    for (int64_t i = 0; i < n; i++) hist[v[i]]++;
    return;
  }
  memset(part, 0, 4 * r * sizeof *part);
  uint32_t *p0 = part, *p1 = part + r, *p2 = part + 2 * r, *p3 = part + 3 * r;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    p0[v[i] - first]++;
    p1[v[i + 1] - first]++;
    p2[v[i + 2] - first]++;
    p3[v[i + 3] - first]++;
  }
  for (; i < n; i++) p0[v[i] - first]++;
  for (uint32_t k = 0; k < r; k++) hist[first + k] = p0[k] + p1[k] + p2[k] + p3[k];
}

/* lut[v] = steps_scale(v, lo, hi) for v in first..last: k * 65535 / d for v = lo + k, stepped
 * exactly from the first such v, without a division per value. */
static void scale_table(uint16_t *lut, uint32_t first, uint32_t last, uint32_t lo, uint32_t hi) {
  uint32_t d = hi - lo, v = first;
  for (; v <= last && v <= lo; v++) lut[v] = 0;
  if (v > last) return;
  uint64_t before = (uint64_t)(v - lo - 1) * 65535; /* k - 1 times 65535, for the first v past lo */
  uint32_t step_q = 65535 / d, step_r = 65535 % d, q = (uint32_t)(before / d), rem = (uint32_t)(before % d);
  for (; v < hi && v <= last; v++) {
    q += step_q;
    rem += step_r;
    if (rem >= d) rem -= d, q++;
    lut[v] = (uint16_t)q;
  }
  for (; v <= last; v++) lut[v] = 65535;
}

static void apply_table(const uint16_t *lut, const uint16_t *v, uint16_t *o, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = lut[v[i]];
}

/* The same without the table, in 16-bit lanes, where d = hi - lo <= 32768: a table look-up is a
 * load and a store per pixel, this is a few vector operations per 32 pixels.
 *
 * For k = clamp(v, lo, hi) - lo in 0..d, steps_scale is floor(k * 65535 / d). Take
 * L = ceil(log2 d), S = max(2L, 16) and M = ceil(65535 * 2^S / d): then
 * floor(k * M / 2^S) == floor(k * 65535 / d) for every such k. (k * M / 2^S exceeds k * 65535 / d
 * by less than k / 2^S <= d / d^2 = 1 / d, and the fraction of k * 65535 / d is at most
 * (d - 1) / d, so the sum stays below the next integer.) M < 2^32 where L <= 15, so it is two
 * 16-bit halves Mh, Ml, and k * M = (k * Mh) * 2^16 + k * Ml; the bits from S up (S >= 16) need
 * only the high half of k * Ml, the whole of k * Mh and the carry between them. */
typedef struct {
  uint16_t lo, hi, ml, mh;
  int right, left; /* S - 16 and 32 - S: the result is mid >> right | top << left */
} scale_magic;

static bool scale_magic_for(uint32_t lo, uint32_t hi, scale_magic *m) {
  uint32_t d = hi - lo;
  if (d > 32768 || hi > 65535) return false;
  int l = 0;
  while ((1u << l) < d) l++;
  int s = 2 * l < 16 ? 16 : 2 * l;
  uint64_t big = ((65535ull << s) + d - 1) / d;
  assert(big >> 32 == 0);
  *m = (scale_magic){.lo = (uint16_t)lo, .hi = (uint16_t)hi, .ml = (uint16_t)big, .mh = (uint16_t)(big >> 16),
                     .right = s - 16, .left = 32 - s};
  return true;
}

typedef void scale_fn(uint16_t *o, const uint16_t *v, int64_t n, const scale_magic *m);

#ifdef HAVE_AVX2_LINE
/* 16 or 32 pixels a step, for n >= 16; an image that does not end on a whole step ends with one
 * more over its last pixels (o and v never overlap). */
__attribute__((target("avx2"))) static void scale_avx2(uint16_t *o, const uint16_t *v, int64_t n,
                                                      const scale_magic *m) {
  const __m256i lo = _mm256_set1_epi16((short)m->lo), hi = _mm256_set1_epi16((short)m->hi);
  const __m256i ml = _mm256_set1_epi16((short)m->ml), mh = _mm256_set1_epi16((short)m->mh);
  const __m128i right = _mm_cvtsi32_si128(m->right), left = _mm_cvtsi32_si128(m->left);
  for (int64_t i = 0;; i += 16) {
    if (i + 16 > n) i = n - 16;
    __m256i k = _mm256_loadu_si256((const __m256i *)(v + i));
    k = _mm256_sub_epi16(_mm256_min_epu16(_mm256_max_epu16(k, lo), hi), lo);
    __m256i a1 = _mm256_mulhi_epu16(k, ml), b0 = _mm256_mullo_epi16(k, mh), b1 = _mm256_mulhi_epu16(k, mh);
    __m256i mid = _mm256_add_epi16(b0, a1);
    /* the carry out of b0 + a1: the top bit of (b0 & a1) | ((b0 | a1) & ~mid) */
    __m256i carry = _mm256_or_si256(_mm256_and_si256(b0, a1), _mm256_andnot_si256(mid, _mm256_or_si256(b0, a1)));
    __m256i top = _mm256_add_epi16(b1, _mm256_srli_epi16(carry, 15));
    _mm256_storeu_si256((__m256i *)(o + i), _mm256_or_si256(_mm256_srl_epi16(mid, right), _mm256_sll_epi16(top, left)));
    if (i + 16 == n) break;
  }
}

__attribute__((target("avx512f,avx512bw"))) static void scale_avx512(uint16_t *o, const uint16_t *v, int64_t n,
                                                                    const scale_magic *m) {
  if (n < 32) {
    scale_avx2(o, v, n, m);
    return;
  }
  const __m512i lo = _mm512_set1_epi16((short)m->lo), hi = _mm512_set1_epi16((short)m->hi);
  const __m512i ml = _mm512_set1_epi16((short)m->ml), mh = _mm512_set1_epi16((short)m->mh);
  const __m512i one = _mm512_set1_epi16(1);
  const __m128i right = _mm_cvtsi32_si128(m->right), left = _mm_cvtsi32_si128(m->left);
  for (int64_t i = 0;; i += 32) {
    if (i + 32 > n) i = n - 32;
    __m512i k = _mm512_loadu_si512(v + i);
    k = _mm512_sub_epi16(_mm512_min_epu16(_mm512_max_epu16(k, lo), hi), lo);
    __m512i a1 = _mm512_mulhi_epu16(k, ml), b0 = _mm512_mullo_epi16(k, mh), b1 = _mm512_mulhi_epu16(k, mh);
    __m512i mid = _mm512_add_epi16(b0, a1);
    __m512i top = _mm512_mask_add_epi16(b1, _mm512_cmplt_epu16_mask(mid, a1), b1, one); /* the carry */
    _mm512_storeu_si512(o + i, _mm512_or_si512(_mm512_srl_epi16(mid, right), _mm512_sll_epi16(top, left)));
    if (i + 32 == n) break;
  }
}
#endif

/* The vector scale for this CPU, or NULL: the table then. For n >= 16 pixels. */
static scale_fn *scale_by_multiply(void) {
#ifdef HAVE_AVX2_LINE
  int isa = vector_isa();
  if (isa == VECTOR_AVX512) return scale_avx512;
  if (isa == VECTOR_AVX2) return scale_avx2;
#endif
  return NULL;
}

/* Otsu's 256 bins of the output, from the histogram of the input: every pixel of value v
 * becomes lut[v]. */
static void otsu_counts(const uint32_t *hist, const uint16_t *lut, uint32_t first, uint32_t last, uint64_t *otsu) {
  memset(otsu, 0, 256 * sizeof *otsu);
  for (uint32_t v = first; v <= last; v++) otsu[lut[v] >> 8] += hist[v];
}

static int host_normalise(ab_ctx *c, void *arg) {
  screen_normalise *a = arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 2, &x);
  if (rc != 0) return rc;
  const uint16_t *v = u16_in(x);
  int64_t n = x->shape[0] * x->shape[1];
  uint32_t *hist, *part = NULL, first = 0, last = 0, lo, hi;
  uint16_t *lut;
  if (n > 0) value_range(v, n, &first, &last);
  uint32_t range = last - first + 1;
  if ((rc = ab_ctx_alloc(c, 65536 * sizeof *hist, (void **)&hist)) != 0 ||
      (rc = ab_ctx_alloc(c, 65536 * sizeof *lut, (void **)&lut)) != 0 ||
      (range <= 65536 / 4 && n >= 16 * (int64_t)range && /* the four counts where they pay */
       (rc = ab_ctx_alloc(c, 4 * range * sizeof *part, (void **)&part)) != 0))
    return rc;
  histogram(v, n, hist, part, first, last);
  steps_percentiles_in(hist, first, last, (uint64_t)n, a->p, &lo, &hi);
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  scale_table(lut, first, last, lo, hi);
  scale_fn *scale = n >= 16 ? scale_by_multiply() : NULL;
  scale_magic m;
  if (scale && scale_magic_for(lo, hi, &m)) scale(ab_tensor_dl(out)->data, v, n, &m);
  else apply_table(lut, v, ab_tensor_dl(out)->data, n);
  otsu_counts(hist, lut, first, last, a->otsu);
  a->counted = true;
  return ab_ctx_set_output(c, out);
}

const screen_steps screen_steps_host = {
    .kind = AB_HOST,
    .project = host_project,
    .filter = host_filter,
    .normalise = host_normalise,
    .project_slices = host_project_slices,
};
