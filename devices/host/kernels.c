/*
 * devices/host/kernels.c: dtype conversion and strided packing on the host.
 *
 * These are the reference the OpenCL and CUDA kernels are tested against, bit for bit:
 *   saturate  ints clamp to the target's range; floats to ints truncate toward zero, NaN -> 0,
 *             out-of-range values clamp; to floats, plain C conversion; to bool, x != 0.
 *   stretch   float -> integer: t = (x - lo) / (hi - lo), y = t * (MAX - MIN) + MIN in double,
 *             then saturate (truncation, as arraybridge does). [lo, hi] is the range of the
 *             finite values: NaN and infinities do not stretch it, and the formula then takes
 *             -inf to MIN, +inf to MAX and NaN to 0. lo == hi (a constant image) or no finite
 *             value at all: plain saturate, which does the same with them.
 *             Any other pair: saturate.
 * A source of any strides (negative too) is walked row by row after merging the dimensions
 * that are contiguous with each other, so the inner loops see long runs they can vectorise.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "devices/host/host.h"

#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wsign-compare"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wbool-compare"
#endif

/* Traits: C type, signed, integer, bool, min, max. */
#define CT_u8 uint8_t
#define CT_u16 uint16_t
#define CT_u32 uint32_t
#define CT_u64 uint64_t
#define CT_i8 int8_t
#define CT_i16 int16_t
#define CT_i32 int32_t
#define CT_i64 int64_t
#define CT_f32 float
#define CT_f64 double
#define CT_b8 uint8_t
#define SG_u8 0
#define SG_u16 0
#define SG_u32 0
#define SG_u64 0
#define SG_i8 1
#define SG_i16 1
#define SG_i32 1
#define SG_i64 1
#define SG_f32 1
#define SG_f64 1
#define SG_b8 0
#define IN_f32 0
#define IN_f64 0
#define IN_u8 1
#define IN_u16 1
#define IN_u32 1
#define IN_u64 1
#define IN_i8 1
#define IN_i16 1
#define IN_i32 1
#define IN_i64 1
#define IN_b8 1
#define BO_b8 1
#define BO_u8 0
#define BO_u16 0
#define BO_u32 0
#define BO_u64 0
#define BO_i8 0
#define BO_i16 0
#define BO_i32 0
#define BO_i64 0
#define BO_f32 0
#define BO_f64 0
#define MN_u8 0
#define MN_u16 0
#define MN_u32 0
#define MN_u64 0
#define MN_i8 INT8_MIN
#define MN_i16 INT16_MIN
#define MN_i32 INT32_MIN
#define MN_i64 INT64_MIN
#define MN_f32 0
#define MN_f64 0
#define MN_b8 0
#define MX_u8 UINT8_MAX
#define MX_u16 UINT16_MAX
#define MX_u32 UINT32_MAX
#define MX_u64 UINT64_MAX
#define MX_i8 INT8_MAX
#define MX_i16 INT16_MAX
#define MX_i32 INT32_MAX
#define MX_i64 INT64_MAX
#define MX_f32 0
#define MX_f64 0
#define MX_b8 1

#define SRC_TYPES(X) X(u8) X(u16) X(u32) X(u64) X(i8) X(i16) X(i32) X(i64) X(f32) X(f64) X(b8)
#define DST_TYPES(X, S) X(S, u8) X(S, u16) X(S, u32) X(S, u64) X(S, i8) X(S, i16) X(S, i32) X(S, i64) X(S, f32) X(S, f64) X(S, b8)

enum {
#define ID(T) T_##T,
  SRC_TYPES(ID)
#undef ID
  T_COUNT
};

#define DEF_SAT(S, D)                                                                         \
  static inline CT_##D sat_##S##_##D(CT_##S x) {                                             \
    if (BO_##D) return x != 0;                                                               \
    if (!IN_##D) return (CT_##D)x;                                                           \
    if (!IN_##S) {                                                                           \
      if (x != x) return 0;                                                                  \
      if ((double)x <= (double)MN_##D) return (CT_##D)MN_##D;                                \
      if ((double)x >= (double)MX_##D) return (CT_##D)MX_##D;                                \
      return (CT_##D)x;                                                                      \
    }                                                                                        \
    if (SG_##S && x < 0) {                                                                   \
      if (!SG_##D) return 0;                                                                 \
      if ((int64_t)x < (int64_t)MN_##D) return (CT_##D)MN_##D;                               \
      return (CT_##D)x;                                                                      \
    }                                                                                        \
    if ((uint64_t)x > (uint64_t)MX_##D) return (CT_##D)MX_##D;                               \
    return (CT_##D)x;                                                                        \
  }                                                                                          \
  static void conv_##S##_##D(const char *s, int64_t ss, char *d, int64_t n) {                \
    CT_##D *o = (CT_##D *)d;                                                                 \
    CT_##S v;                                                                                \
    if (ss == (int64_t)sizeof v) {                                                           \
      for (int64_t k = 0; k < n; k++) {                                                      \
        memcpy(&v, s + k * (int64_t)sizeof v, sizeof v);                                     \
        o[k] = sat_##S##_##D(v);                                                             \
      }                                                                                      \
    } else {                                                                                 \
      for (int64_t k = 0; k < n; k++) {                                                      \
        memcpy(&v, s + k * ss, sizeof v);                                                    \
        o[k] = sat_##S##_##D(v);                                                             \
      }                                                                                      \
    }                                                                                        \
  }

#define DEF_ROW(S) DST_TYPES(DEF_SAT, S)
SRC_TYPES(DEF_ROW)

typedef void (*conv_fn)(const char *s, int64_t ss, char *d, int64_t n);

static const conv_fn conv_table[T_COUNT][T_COUNT] = {
#define ENTRY(S, D) [T_##S][T_##D] = conv_##S##_##D,
#define ENTRY_ROW(S) DST_TYPES(ENTRY, S)
    SRC_TYPES(ENTRY_ROW)
#undef ENTRY
#undef ENTRY_ROW
};

/* Stretch: float sources onto integer targets. */
#define DEF_STRETCH(S, D)                                                                     \
  static void stretch_##S##_##D(const char *s, int64_t ss, char *d, int64_t n, double lo, double span) { \
    CT_##D *o = (CT_##D *)d;                                                                 \
    const double range = (double)MX_##D - (double)MN_##D;                                    \
    CT_##S v;                                                                                \
    for (int64_t k = 0; k < n; k++) {                                                        \
      memcpy(&v, s + k * ss, sizeof v);                                                      \
      o[k] = sat_f64_##D(((double)v - lo) / span * range + (double)MN_##D);                  \
    }                                                                                        \
  }
#define INT_TYPES(X, S) X(S, u8) X(S, u16) X(S, u32) X(S, u64) X(S, i8) X(S, i16) X(S, i32) X(S, i64)
INT_TYPES(DEF_STRETCH, f32)
INT_TYPES(DEF_STRETCH, f64)

typedef void (*stretch_fn)(const char *s, int64_t ss, char *d, int64_t n, double lo, double span);
static const stretch_fn stretch_table[T_COUNT][T_COUNT] = {
#define SENTRY(S, D) [T_##S][T_##D] = stretch_##S##_##D,
    INT_TYPES(SENTRY, f32) INT_TYPES(SENTRY, f64)
#undef SENTRY
};

/* The enum above follows ab__dtype_index's order. */
_Static_assert(T_COUNT == AB__NDTYPES && T_f32 == 8 && T_b8 == 10, "dtype order");

/* ---- walking a strided tensor row by row ------------------------------------------------- */
typedef struct {
  int nd;                         /* merged dimensions; the last one is the row */
  int64_t shape[AB_MAX_NDIM];
  int64_t bstride[AB_MAX_NDIM];   /* bytes */
  const char *base;
  int64_t numel;
} rows_t;

static void rows_init(rows_t *r, const DLTensor *t) {
  r->base = (const char *)t->data + t->byte_offset;
  r->numel = ab__collapse(t, &r->nd, r->shape, r->bstride);
}

typedef void (*row_visit)(const char *row, int64_t stride, int64_t n, void *ctx);

static void rows_each(const rows_t *r, row_visit fn, void *ctx) {
  if (r->numel == 0) return;
  int outer = r->nd - 1;
  int64_t idx[AB_MAX_NDIM] = {0};
  const char *p = r->base;
  for (;;) {
    fn(p, r->bstride[outer], r->shape[outer], ctx);
    int k = outer - 1;
    for (; k >= 0; k--) { /* odometer over the outer dimensions */
      p += r->bstride[k];
      if (++idx[k] < r->shape[k]) break;
      p -= r->bstride[k] * r->shape[k];
      idx[k] = 0;
    }
    if (k < 0) return;
  }
}

/* ---- the visitors -------------------------------------------------------------------------- */
typedef struct {
  conv_fn conv;
  stretch_fn stretch;
  double lo, span;
  char *out;
  int64_t out_es;
} cast_ctx;

static void visit_cast(const char *row, int64_t stride, int64_t n, void *arg) {
  cast_ctx *c = arg;
  if (c->stretch) c->stretch(row, stride, c->out, n, c->lo, c->span);
  else c->conv(row, stride, c->out, n);
  c->out += n * c->out_es;
}

static void visit_copy(const char *row, int64_t stride, int64_t n, void *arg) {
  cast_ctx *c = arg;
  if (stride == c->out_es) {
    memcpy(c->out, row, (size_t)(n * c->out_es));
  } else {
    for (int64_t k = 0; k < n; k++) memcpy(c->out + k * c->out_es, row + k * stride, (size_t)c->out_es);
  }
  c->out += n * c->out_es;
}

typedef struct {
  int type;
  double lo, hi;
  bool found;
} minmax_ctx;

static void visit_minmax(const char *row, int64_t stride, int64_t n, void *arg) {
  minmax_ctx *m = arg;
  for (int64_t k = 0; k < n; k++) {
    double v;
    if (m->type == T_f32) {
      float f;
      memcpy(&f, row + k * stride, sizeof f);
      v = f;
    } else {
      memcpy(&v, row + k * stride, sizeof v);
    }
    if (!isfinite(v)) continue; /* one infinity would make every (x - lo) / span NaN or 0 */
    if (!m->found || v < m->lo) m->lo = v;
    if (!m->found || v > m->hi) m->hi = v;
    m->found = true;
  }
}

int ab__host_minmax(const DLTensor *src, double *lo, double *hi, bool *found) {
  int s = ab__dtype_index(src->dtype);
  if (s != T_f32 && s != T_f64) return AB_EDTYPE;
  rows_t r;
  rows_init(&r, src);
  minmax_ctx m = {.type = s};
  rows_each(&r, visit_minmax, &m);
  *lo = m.lo;
  *hi = m.hi;
  *found = m.found;
  return 0;
}

int ab__host_cast(const DLTensor *src, void *dst, DLDataType dt, const ab__cast_params *p) {
  rows_t r;
  rows_init(&r, src);
  cast_ctx c = {.out = dst, .out_es = (int64_t)ab__dtype_size(dt)};
  if (ab__same_dtype(src->dtype, dt)) { /* any dtype, bytes only */
    rows_each(&r, visit_copy, &c);
    return 0;
  }
  int s = ab__dtype_index(src->dtype), d = ab__dtype_index(dt);
  if (s < 0 || d < 0) return AB_EDTYPE;
  c.conv = conv_table[s][d];
  if (p && p->mode == AB_CAST_STRETCH && stretch_table[s][d]) {
    double lo = p->lo, hi = p->hi;
    bool found = p->have_range;
    if (!p->have_range) ab__host_minmax(src, &lo, &hi, &found);
    if (found && hi > lo) {
      c.stretch = stretch_table[s][d];
      c.lo = lo;
      c.span = hi - lo;
    }
  }
  rows_each(&r, visit_cast, &c);
  return 0;
}
