/* test_convert.c: host conversions against an independent scalar reference; layouts; zero-copy. */
#include "harness.h"

#include <math.h>
#include <stdlib.h>

/* ---- the dtypes under test ------------------------------------------------------------------ */
typedef struct {
  const char *name;
  uint8_t code, bits;
} dtype_row;
static const dtype_row DT[] = {
    {"u8", kDLUInt, 8},   {"u16", kDLUInt, 16}, {"u32", kDLUInt, 32}, {"u64", kDLUInt, 64},
    {"i8", kDLInt, 8},    {"i16", kDLInt, 16},  {"i32", kDLInt, 32},  {"i64", kDLInt, 64},
    {"f32", kDLFloat, 32}, {"f64", kDLFloat, 64},
};
#define NDT ((int)(sizeof DT / sizeof DT[0]))
static DLDataType dt_of(int i) { return th_dt(DT[i].code, DT[i].bits); }

/* ---- a tagged scalar and the reference conversion ------------------------------------------ */
typedef struct {
  int kind; /* 0 signed, 1 unsigned, 2 float32, 3 float64 */
  int64_t i;
  uint64_t u;
  float f;
  double d;
} scalar;

static scalar load(const void *p, DLDataType t) {
  scalar s;
  memset(&s, 0, sizeof s);
  if (t.code == kDLInt) {
    s.kind = 0;
    switch (t.bits) {
    case 8: s.i = *(const int8_t *)p; break;
    case 16: s.i = *(const int16_t *)p; break;
    case 32: s.i = *(const int32_t *)p; break;
    default: s.i = *(const int64_t *)p; break;
    }
  } else if (t.code == kDLUInt) {
    s.kind = 1;
    switch (t.bits) {
    case 8: s.u = *(const uint8_t *)p; break;
    case 16: s.u = *(const uint16_t *)p; break;
    case 32: s.u = *(const uint32_t *)p; break;
    default: s.u = *(const uint64_t *)p; break;
    }
  } else if (t.bits == 32) {
    s.kind = 2;
    s.f = *(const float *)p;
    s.d = s.f;
  } else {
    s.kind = 3;
    s.d = *(const double *)p;
  }
  return s;
}

static void store_signed(void *p, int bits, int64_t v) {
  switch (bits) {
  case 8: *(int8_t *)p = (int8_t)v; break;
  case 16: *(int16_t *)p = (int16_t)v; break;
  case 32: *(int32_t *)p = (int32_t)v; break;
  default: *(int64_t *)p = v; break;
  }
}
static void store_unsigned(void *p, int bits, uint64_t v) {
  switch (bits) {
  case 8: *(uint8_t *)p = (uint8_t)v; break;
  case 16: *(uint16_t *)p = (uint16_t)v; break;
  case 32: *(uint32_t *)p = (uint32_t)v; break;
  default: *(uint64_t *)p = v; break;
  }
}

static int64_t smax(int bits) { return bits == 64 ? INT64_MAX : (INT64_C(1) << (bits - 1)) - 1; }
static int64_t smin(int bits) { return bits == 64 ? INT64_MIN : -(INT64_C(1) << (bits - 1)); }
static uint64_t umax(int bits) { return bits == 64 ? UINT64_MAX : (UINT64_C(1) << bits) - 1; }

/* double -> integer target: NaN -> 0, truncate toward zero, clamp */
static void store_from_double(void *p, DLDataType t, double d) {
  if (isnan(d)) d = 0;
  double tr = trunc(d);
  if (t.code == kDLInt) {
    double hip1 = ldexp(1.0, t.bits - 1), lo = -hip1;
    int64_t v = tr >= hip1 ? smax(t.bits) : tr < lo ? smin(t.bits) : (int64_t)tr;
    store_signed(p, t.bits, v);
  } else {
    double hip1 = ldexp(1.0, t.bits);
    uint64_t v = tr >= hip1 ? umax(t.bits) : tr < 0 ? 0 : (uint64_t)tr;
    store_unsigned(p, t.bits, v);
  }
}

/* The saturate reference: one element. */
static void ref_saturate(const void *src, DLDataType st, void *dst, DLDataType dt) {
  scalar s = load(src, st);
  if (dt.code == kDLFloat) {
    if (dt.bits == 32) {
      float v = s.kind == 0 ? (float)s.i : s.kind == 1 ? (float)s.u : s.kind == 2 ? s.f : (float)s.d;
      *(float *)dst = v;
    } else {
      double v = s.kind == 0 ? (double)s.i : s.kind == 1 ? (double)s.u : s.d;
      *(double *)dst = v;
    }
    return;
  }
  if (s.kind >= 2) {
    store_from_double(dst, dt, s.d);
    return;
  }
  if (dt.code == kDLInt) {
    int64_t v;
    if (s.kind == 0)
      v = s.i > smax(dt.bits) ? smax(dt.bits) : s.i < smin(dt.bits) ? smin(dt.bits) : s.i;
    else
      v = s.u > (uint64_t)smax(dt.bits) ? smax(dt.bits) : (int64_t)s.u;
    store_signed(dst, dt.bits, v);
  } else {
    uint64_t v;
    if (s.kind == 0)
      v = s.i < 0 ? 0 : (uint64_t)s.i > umax(dt.bits) ? umax(dt.bits) : (uint64_t)s.i;
    else
      v = s.u > umax(dt.bits) ? umax(dt.bits) : s.u;
    store_unsigned(dst, dt.bits, v);
  }
}

/* The stretch reference over a whole array (contiguous src, n elements), as the README defines
 * it: (x - min) / (max - min) * (MAX - MIN) + MIN in double, then a saturating cast, min and
 * max taken over the finite values (infinities then saturate, NaN becomes 0). Dividing first
 * maps max to MAX exactly; multiplying by a precomputed scale is an ulp off, which truncation
 * would turn into MAX - 1. */
static void ref_stretch(const void *src, DLDataType st, void *dst, DLDataType dt, size_t n) {
  size_t ss = th_dt_size(st), ds = th_dt_size(dt);
  if (st.code != kDLFloat || dt.code == kDLFloat) {
    for (size_t i = 0; i < n; i++) ref_saturate((const char *)src + i * ss, st, (char *)dst + i * ds, dt);
    return;
  }
  double mn = INFINITY, mx = -INFINITY;
  for (size_t i = 0; i < n; i++) {
    double x = load((const char *)src + i * ss, st).d;
    if (!isfinite(x)) continue;
    if (x < mn) mn = x;
    if (x > mx) mx = x;
  }
  if (!(mx > mn)) {
    for (size_t i = 0; i < n; i++) ref_saturate((const char *)src + i * ss, st, (char *)dst + i * ds, dt);
    return;
  }
  double MAX = dt.code == kDLInt ? (double)smax(dt.bits) : (double)umax(dt.bits);
  double MIN = dt.code == kDLInt ? (double)smin(dt.bits) : 0.0;
  double span = mx - mn;
  for (size_t i = 0; i < n; i++) {
    double x = load((const char *)src + i * ss, st).d;
    double y = (x - mn) / span * (MAX - MIN) + MIN;
    store_from_double((char *)dst + i * ds, dt, y);
  }
}

/* ---- test values ------------------------------------------------------------------------- */
static const int64_t SVALS[] = {0, 1, -1, 2, -2, 7, -7, 100, -100, 127, -128, 128, -129, 200,
                                255, 256, -255, -256, 1000, -1000, 32767, -32768, 32768, -32769,
                                65535, 65536, -65536, 100000, -100000, INT32_MAX, INT32_MIN,
                                (int64_t)INT32_MAX + 1, (int64_t)INT32_MIN - 1, UINT32_MAX,
                                (int64_t)UINT32_MAX + 1, INT64_C(1) << 53, (INT64_C(1) << 53) + 1,
                                INT64_C(123456789012345), -INT64_C(123456789012345),
                                INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1};
static const uint64_t UVALS[] = {UINT64_MAX, UINT64_MAX - 1, UINT64_C(1) << 63,
                                 (UINT64_C(1) << 63) + 1, (UINT64_C(1) << 63) - 1,
                                 UINT64_C(18446744073709550000)};
static const double FVALS[] = {0.0,     -0.0,    0.4,        -0.4,      0.5,      -0.5,
                               0.999,   -0.999,  1.5,        -1.5,      2.5,      -2.5,
                               100.7,   -100.7,  126.9,      127.5,     127.99,   128.0,
                               -127.9,  -128.5,  -129.0,     254.9,     255.5,    256.0,
                               -255.5,  32767.5, 32768.2,    -32768.9,  -32769.5, 65535.9,
                               65536.0, 1e9,     -1e9,       2147483647.0, 2147483647.9,
                               2147483648.0, -2147483648.0, -2147483648.9, -2147483649.0,
                               4294967295.0, 4294967295.5, 4294967296.0, 1e15, -1e15,
                               9007199254740993.0, 9.2e18, 9.223372036854775807e18, 9.3e18,
                               -9.2e18, -9.223372036854775808e18, -9.3e18, 1.8e19,
                               1.8446744073709551615e19, 1.9e19, 1e30, -1e30, 1e300, -1e300,
                               1e-30, -1e-30, 1e-310, INFINITY, -INFINITY, NAN, -NAN};

/* Fill a host tensor of dtype i with every test value it can hold; returns the count. */
static size_t gen_values(int di, void *buf, size_t cap) {
  DLDataType t = dt_of(di);
  size_t n = 0, es = th_dt_size(t);
  char *p = buf;
  if (t.code == kDLFloat) {
    for (size_t k = 0; k < sizeof FVALS / sizeof FVALS[0] && n < cap; k++, n++) {
      if (t.bits == 32)
        *(float *)(p + n * es) = (float)FVALS[k];
      else
        *(double *)(p + n * es) = FVALS[k];
    }
    /* integers as floats too */
    for (size_t k = 0; k < sizeof SVALS / sizeof SVALS[0] && n < cap; k++, n++) {
      if (t.bits == 32)
        *(float *)(p + n * es) = (float)SVALS[k];
      else
        *(double *)(p + n * es) = (double)SVALS[k];
    }
    return n;
  }
  for (size_t k = 0; k < sizeof SVALS / sizeof SVALS[0] && n < cap; k++) {
    int64_t v = SVALS[k];
    if (t.code == kDLInt) {
      if (v < smin(t.bits) || v > smax(t.bits)) continue;
      store_signed(p + n * es, t.bits, v);
    } else {
      if (v < 0 || (uint64_t)v > umax(t.bits)) continue;
      store_unsigned(p + n * es, t.bits, (uint64_t)v);
    }
    n++;
  }
  for (size_t k = 0; k < sizeof UVALS / sizeof UVALS[0] && n < cap; k++) {
    if (t.code != kDLUInt || t.bits != 64) break;
    store_unsigned(p + n * es, 64, UVALS[k]);
    n++;
  }
  return n;
}

static void describe(char *out, size_t len, const void *p, DLDataType t) {
  scalar s = load(p, t);
  if (s.kind == 0)
    snprintf(out, len, "%" PRId64, s.i);
  else if (s.kind == 1)
    snprintf(out, len, "%" PRIu64, s.u);
  else
    snprintf(out, len, "%.17g", s.d);
}

static bool same_value(const void *a, const void *b, DLDataType t) {
  if (t.code == kDLFloat) {
    double x = load(a, t).d, y = load(b, t).d;
    if (isnan(x) || isnan(y)) return isnan(x) && isnan(y);
    return memcmp(a, b, th_dt_size(t)) == 0; /* bitwise: -0.0 stays -0.0 */
  }
  return memcmp(a, b, th_dt_size(t)) == 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */
static void *data_of(ab_tensor *t) {
  const DLTensor *dl = ab_tensor_dl(t);
  return (char *)dl->data + dl->byte_offset;
}

/* Convert and wait; *out gets the result (or NULL); returns the future's status or the call's. */
static int convert_wait(ab_runtime *rt, ab_tensor *src, ab_device dst, const ab_convert_options *o,
                        ab_tensor **out) {
  ab_future *f = NULL;
  *out = NULL;
  int r = ab_convert(rt, src, dst, o, &f);
  if (r) return r;
  r = ab_future_wait(f, -1);
  if (r) {
    ab_future_release(f);
    return r;
  }
  r = ab_future_result(f, out);
  ab_future_release(f);
  return r;
}

static ab_convert_options opts(DLDataType dt, int cast) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.dtype = dt;
  o.cast = cast;
  return o;
}

static int check_result_layout(ab_tensor *res, DLDataType dt, int ndim, const int64_t *shape,
                               int dev) {
  const DLTensor *dl = ab_tensor_dl(res);
  CHECK_EQ_INT(dl->ndim, ndim);
  for (int i = 0; i < ndim; i++) CHECK_EQ_INT(dl->shape[i], shape[i]);
  CHECK_EQ_INT(dl->dtype.code, dt.code);
  CHECK_EQ_INT(dl->dtype.bits, dt.bits);
  CHECK_EQ_INT(dl->dtype.lanes, 1);
  CHECK(ab_tensor_is_contiguous(res));
  ab_device d = ab_tensor_device(res);
  CHECK_EQ_INT(d.kind, AB_HOST);
  CHECK_EQ_INT(d.index, dev);
  return 0;
}

/* ---- every pair, saturate and stretch ----------------------------------------------------- */
static int all_pairs(int cast) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  enum { CAP = 256 };
  int failures = 0;
  for (int si = 0; si < NDT; si++) {
    DLDataType st = dt_of(si);
    uint64_t tmp[CAP];
    size_t n = gen_values(si, tmp, CAP);
    if (cast == AB_CAST_STRETCH && st.code == kDLFloat) {
      /* NaN and infinities stay (they must not move the range); huge finite values go, as
       * their span would swamp the rest */
      size_t m = 0, es = th_dt_size(st);
      for (size_t k = 0; k < n; k++) {
        double x = load((char *)tmp + k * es, st).d;
        if (!isfinite(x) || fabs(x) < 1e20) memmove((char *)tmp + m++ * es, (char *)tmp + k * es, es);
      }
      n = m;
    }
    int64_t shape[1] = {(int64_t)n};
    ab_tensor *src = NULL;
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), st, 1, shape, &src));
    memcpy(data_of(src), tmp, n * th_dt_size(st));
    for (int di = 0; di < NDT; di++) {
      DLDataType dt = dt_of(di);
      ab_convert_options o = opts(dt, cast);
      o.force_copy = true;
      ab_tensor *res = NULL;
      int r = convert_wait(rt, src, th_host(0), &o, &res);
      CHECK_MSG(r == 0, "%s -> %s: %d%s", DT[si].name, DT[di].name, r, th_errstr(r));
      if (check_result_layout(res, dt, 1, shape, 0)) return 1;
      uint64_t want[CAP];
      if (cast == AB_CAST_STRETCH)
        ref_stretch(tmp, st, want, dt, n);
      else
        for (size_t k = 0; k < n; k++)
          ref_saturate((char *)tmp + k * th_dt_size(st), st, (char *)want + k * th_dt_size(dt), dt);
      const char *got = data_of(res);
      int bad_here = 0;
      for (size_t k = 0; k < n; k++) {
        const void *g = got + k * th_dt_size(dt), *w = (char *)want + k * th_dt_size(dt);
        if (!same_value(g, w, dt)) {
          char a[64], b[64], c[64];
          describe(a, sizeof a, (char *)tmp + k * th_dt_size(st), st);
          describe(b, sizeof b, g, dt);
          describe(c, sizeof c, w, dt);
          if (bad_here++ < 4)
            fprintf(stderr, "# %s %s -> %s: element %zu = %s: got %s, want %s\n",
                    cast == AB_CAST_STRETCH ? "stretch" : "saturate", DT[si].name, DT[di].name, k,
                    a, b, c);
        }
      }
      failures += bad_here != 0;
      ab_tensor_release(res);
    }
    ab_tensor_release(src);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_MSG(failures == 0, "%d dtype pairs differ from the reference", failures);
  return 0;
}

static int test_saturate_all_pairs(void) { return all_pairs(AB_CAST_SATURATE); }
static int test_stretch_all_pairs(void) { return all_pairs(AB_CAST_STRETCH); }

/* Stretch on a small image, with exact expectations computed by hand for u8. */
static int test_stretch_known_values(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {2, 3};
  ab_tensor *src = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, shape, &src));
  float *p = data_of(src);
  const float v[6] = {-1.0f, 0.0f, 1.0f, 0.5f, 3.0f, 2.0f}; /* min -1, max 3: scale 255/4 */
  memcpy(p, v, sizeof v);
  ab_convert_options o = opts(TH_U8, AB_CAST_STRETCH);
  ab_tensor *res = NULL;
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  const uint8_t *q = data_of(res);
  const uint8_t want[6] = {0, 63, 127, 95, 255, 191}; /* trunc((x+1)*63.75) */
  for (int i = 0; i < 6; i++) CHECK_EQ_INT(q[i], want[i]);
  ab_tensor_release(res);
  /* constant image: plain saturate */
  for (int i = 0; i < 6; i++) p[i] = 300.7f;
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  q = data_of(res);
  for (int i = 0; i < 6; i++) CHECK_EQ_INT(q[i], 255);
  ab_tensor_release(res);
  for (int i = 0; i < 6; i++) p[i] = 5.9f;
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  q = data_of(res);
  for (int i = 0; i < 6; i++) CHECK_EQ_INT(q[i], 5);
  ab_tensor_release(res);
  /* i16 target: MIN..MAX */
  memcpy(p, v, sizeof v);
  o = opts(th_dt(kDLInt, 16), AB_CAST_STRETCH);
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  const int16_t *s16 = data_of(res);
  CHECK_EQ_INT(s16[0], -32768);
  CHECK_EQ_INT(s16[4], 32767);
  ab_tensor_release(res);
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Infinities and NaN do not move the stretch range: [min, max] is that of the finite values,
 * -inf goes to the bottom of the target, +inf to the top, NaN to 0. Without a finite range
 * (none, or one value) it is a saturating cast, which treats them the same way. */
static int stretch_f64(ab_runtime *rt, const double *v, int n, DLDataType dt, ab_tensor **res) {
  int64_t shape[1] = {n};
  ab_tensor *src = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F64, 1, shape, &src));
  memcpy(data_of(src), v, sizeof(double) * (size_t)n);
  ab_convert_options o = opts(dt, AB_CAST_STRETCH);
  int rc = convert_wait(rt, src, th_host(0), &o, res);
  ab_tensor_release(src);
  return rc;
}

static int test_stretch_infinities(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_tensor *res = NULL;
  /* [-1.5, 70000]: 0.5 lands at trunc(2 / 70001.5 * 65535) = 1 */
  const double v[6] = {NAN, -INFINITY, -1.5, 0.5, 70000.0, INFINITY};
  CHECK_OK(stretch_f64(rt, v, 6, TH_U16, &res));
  const uint16_t want16[6] = {0, 0, 0, 1, 65535, 65535};
  for (int i = 0; i < 6; i++) CHECK_EQ_INT(((const uint16_t *)data_of(res))[i], want16[i]);
  ab_tensor_release(res);
  /* a signed target: the infinities go to its ends, NaN to 0 (not the bottom) */
  CHECK_OK(stretch_f64(rt, v, 6, th_dt(kDLInt, 8), &res));
  const int8_t want8[6] = {0, -128, -128, -127, 127, 127};
  for (int i = 0; i < 6; i++) CHECK_EQ_INT(((const int8_t *)data_of(res))[i], want8[i]);
  ab_tensor_release(res);
  /* no finite value, or only one: saturate */
  const double none[3] = {INFINITY, NAN, -INFINITY}, one[4] = {INFINITY, 3.7, -INFINITY, 3.7};
  CHECK_OK(stretch_f64(rt, none, 3, TH_U8, &res));
  const uint8_t want_none[3] = {255, 0, 0};
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(((const uint8_t *)data_of(res))[i], want_none[i]);
  ab_tensor_release(res);
  CHECK_OK(stretch_f64(rt, one, 4, th_dt(kDLInt, 16), &res));
  const int16_t want_one[4] = {32767, 3, -32768, 3};
  for (int i = 0; i < 4; i++) CHECK_EQ_INT(((const int16_t *)data_of(res))[i], want_one[i]);
  ab_tensor_release(res);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- layouts ------------------------------------------------------------------------------ */
static int test_strided_sources(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  int64_t shape[2] = {4, 6};
  ab_tensor *base = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, shape, &base));
  float *p = data_of(base);
  for (int i = 0; i < 24; i++) p[i] = (float)i + 0.25f;

  struct {
    const char *what;
    int ndim;
    int64_t shape[2], strides[2], offset;
  } cases[] = {
      {"transpose", 2, {6, 4}, {1, 6}, 0},
      {"negative stride rows", 2, {4, 6}, {-6, 1}, 18},
      {"negative stride both", 2, {4, 6}, {-6, -1}, 23},
      {"every other column", 2, {4, 3}, {6, 2}, 1},
      {"column", 1, {4, 0}, {6, 0}, 5},
      {"broadcast (stride 0)", 2, {3, 6}, {0, 1}, 6},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    ab_tensor *v = NULL;
    CHECK_OK(ab_tensor_view(base, cases[c].ndim, cases[c].shape, cases[c].strides, cases[c].offset, &v));
    CHECK(!ab_tensor_is_contiguous(v));
    const DLDataType targets[3] = {TH_F32, TH_U16, TH_F64};
    for (int k = 0; k < 3; k++) {
      ab_convert_options o = opts(targets[k], AB_CAST_SATURATE);
      ab_tensor *res = NULL;
      int r = convert_wait(rt, v, th_host(0), &o, &res);
      CHECK_MSG(r == 0, "%s: %d%s", cases[c].what, r, th_errstr(r));
      CHECK(res != v);
      if (check_result_layout(res, targets[k], cases[c].ndim, cases[c].shape, 0)) return 1;
      const DLTensor *vd = ab_tensor_dl(v), *rd = ab_tensor_dl(res);
      int64_t n = th_numel(vd);
      for (int64_t e = 0; e < n; e++) {
        int64_t idx[2];
        if (cases[c].ndim == 2) {
          idx[0] = e / cases[c].shape[1];
          idx[1] = e % cases[c].shape[1];
        } else {
          idx[0] = e;
        }
        const void *sp = th_elem(vd, idx);
        char want[8];
        ref_saturate(sp, TH_F32, want, targets[k]);
        const char *got = (const char *)data_of(res) + e * (int64_t)th_dt_size(targets[k]);
        CHECK_MSG(same_value(got, want, targets[k]), "%s -> bits %d: element %" PRId64 " differs",
                  cases[c].what, targets[k].bits, e);
        (void)rd;
      }
      ab_tensor_release(res);
    }
    ab_tensor_release(v);
  }
  ab_tensor_release(base);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* An imported tensor with a byte_offset and explicit (negative) strides converts correctly. */
static int imported_deleted;
static void imported_deleter(DLManagedTensorVersioned *m) { imported_deleted++; }

static int test_imported_byte_offset(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int16_t buf[16];
  for (int i = 0; i < 16; i++) buf[i] = (int16_t)(i * 100 - 700);
  int64_t shape[2] = {2, 3}, strides[2] = {-4, 1}; /* rows 1 and 0 of a 4-wide matrix, reversed */
  DLManagedTensorVersioned m;
  memset(&m, 0, sizeof m);
  m.version.major = DLPACK_MAJOR_VERSION;
  m.deleter = imported_deleter;
  m.flags = DLPACK_FLAG_BITMASK_READ_ONLY;
  m.dl_tensor.data = buf;
  m.dl_tensor.byte_offset = 5 * sizeof(int16_t); /* element 5: row 1, column 1 */
  m.dl_tensor.device.device_type = kDLCPU;
  m.dl_tensor.ndim = 2;
  m.dl_tensor.dtype = th_dt(kDLInt, 16);
  m.dl_tensor.shape = shape;
  m.dl_tensor.strides = strides;
  imported_deleted = 0;
  ab_tensor *src = NULL, *res = NULL;
  CHECK_OK(ab_tensor_import(&m, &src));
  ab_convert_options o = opts(TH_U8, AB_CAST_SATURATE);
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  if (check_result_layout(res, TH_U8, 2, shape, 0)) return 1;
  const uint8_t *q = data_of(res);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) {
      int v = buf[5 - 4 * i + j];
      int want = v < 0 ? 0 : v > 255 ? 255 : v;
      CHECK_MSG(q[i * 3 + j] == want, "(%d,%d): %d != %d", i, j, q[i * 3 + j], want);
    }
  ab_tensor_release(res);
  o = (ab_convert_options)AB_CONVERT_OPTIONS_INIT; /* same dtype: packs, does not alias */
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  CHECK(res != src);
  CHECK(ab_tensor_is_contiguous(res));
  const int16_t *r16 = data_of(res);
  CHECK_EQ_INT(r16[0], buf[5]);
  CHECK_EQ_INT(r16[3], buf[1]);
  ab_tensor_release(res);
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(imported_deleted, 1);
  return 0;
}

/* ---- zero-copy and force_copy ------------------------------------------------------------- */
static int test_zero_copy(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {3, 3};
  ab_tensor *src = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, shape, &src));
  float *p = data_of(src);
  for (int i = 0; i < 9; i++) p[i] = (float)i;

  ab_convert_options o = AB_CONVERT_OPTIONS_INIT; /* bits 0: keep dtype */
  ab_tensor *res = NULL;
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  CHECK_EQ_PTR(res, src);
  ab_tensor_release(res);
  o = opts(TH_F32, AB_CAST_SATURATE); /* the same dtype, spelled out */
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  CHECK_EQ_PTR(res, src);
  ab_tensor_release(res);
  o.cast = AB_CAST_STRETCH; /* stretch of f32 -> f32 changes nothing either */
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  CHECK_EQ_PTR(res, src);
  ab_tensor_release(res);

  o = opts(TH_F32, AB_CAST_SATURATE);
  o.force_copy = true;
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  CHECK(res != src);
  CHECK(data_of(res) != data_of(src));
  CHECK_EQ_INT(memcmp(data_of(res), p, 9 * sizeof(float)), 0);
  if (check_result_layout(res, TH_F32, 2, shape, 0)) return 1;
  p[0] = 99; /* a copy: independent */
  CHECK(((float *)data_of(res))[0] == 0.0f);
  ab_tensor_release(res);

  /* the source keeps working after all of that */
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int released_ro;
static void ro_release(void *ctx) { released_ro++; }

static int test_read_only_source(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  double data[4] = {1.9, -2.9, 70000.5, -1};
  int64_t shape[1] = {4};
  DLTensor dl;
  memset(&dl, 0, sizeof dl);
  dl.data = data;
  dl.device.device_type = kDLCPU;
  dl.ndim = 1;
  dl.dtype = TH_F64;
  dl.shape = shape;
  ab_tensor *src = NULL;
  released_ro = 0;
  CHECK_OK(ab_tensor_wrap(&dl, AB_TENSOR_READ_ONLY, ro_release, NULL, &src));
  ab_convert_options o = opts(TH_U16, AB_CAST_SATURATE);
  ab_tensor *res = NULL;
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  const uint16_t *q = data_of(res);
  CHECK_EQ_INT(q[0], 1);
  CHECK_EQ_INT(q[1], 0);
  CHECK_EQ_INT(q[2], 65535);
  CHECK_EQ_INT(q[3], 0);
  CHECK(data[0] == 1.9 && data[2] == 70000.5); /* untouched */
  ab_tensor_release(res);
  /* zero-copy of a read-only tensor is the same read-only tensor */
  o = opts(TH_F64, AB_CAST_SATURATE);
  CHECK_OK(convert_wait(rt, src, th_host(0), &o, &res));
  CHECK_EQ_PTR(res, src);
  CHECK(ab_tensor_flags(res) & AB_TENSOR_READ_ONLY);
  ab_tensor_release(res);
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(released_ro, 1);
  return 0;
}

static int test_0d_and_empty(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_tensor *s = NULL, *res = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F64, 0, NULL, &s));
  *(double *)data_of(s) = -3.7;
  ab_convert_options o = opts(th_dt(kDLInt, 8), AB_CAST_SATURATE);
  CHECK_OK(convert_wait(rt, s, th_host(0), &o, &res));
  if (check_result_layout(res, o.dtype, 0, NULL, 0)) return 1;
  CHECK_EQ_INT(*(int8_t *)data_of(res), -3);
  ab_tensor_release(res);
  o.cast = AB_CAST_STRETCH; /* one element: constant image */
  CHECK_OK(convert_wait(rt, s, th_host(0), &o, &res));
  CHECK_EQ_INT(*(int8_t *)data_of(res), -3);
  ab_tensor_release(res);
  ab_tensor_release(s);

  int64_t shape[2] = {0, 3};
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, shape, &s));
  const int casts[2] = {AB_CAST_SATURATE, AB_CAST_STRETCH};
  for (int k = 0; k < 2; k++) {
    o = opts(TH_U8, casts[k]);
    CHECK_OK(convert_wait(rt, s, th_host(0), &o, &res));
    if (check_result_layout(res, TH_U8, 2, shape, 0)) return 1;
    CHECK_EQ_U64(ab_tensor_nbytes(res), 0);
    ab_tensor_release(res);
  }
  ab_tensor_release(s);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* To another logical host device: a copy that lands there. */
static int test_to_other_logical_device(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 2));
  int64_t shape[1] = {5};
  ab_tensor *src = NULL, *res = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_I32, 1, shape, &src));
  int32_t *p = data_of(src);
  for (int i = 0; i < 5; i++) p[i] = i * 1000 - 2000;
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  CHECK_OK(convert_wait(rt, src, th_host(1), &o, &res));
  CHECK(res != src);
  if (check_result_layout(res, TH_I32, 1, shape, 1)) return 1;
  CHECK_EQ_INT(memcmp(data_of(res), p, sizeof(int32_t) * 5), 0);
  ab_tensor_release(res);
  o = opts(th_dt(kDLInt, 8), AB_CAST_SATURATE);
  CHECK_OK(convert_wait(rt, src, th_host(1), &o, &res));
  if (check_result_layout(res, o.dtype, 1, shape, 1)) return 1;
  const int8_t *q = data_of(res);
  CHECK_EQ_INT(q[0], -128);
  CHECK_EQ_INT(q[2], 0);
  CHECK_EQ_INT(q[4], 127);
  ab_tensor_release(res);
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- convert_after ------------------------------------------------------------------------ */
static int produce(ab_ctx *c, void *arg) {
  if (arg) return (int)(intptr_t)arg;
  int64_t shape[1] = {3};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_F64, 1, shape, &t);
  if (r) return r;
  double *p = data_of(t);
  p[0] = -5.5;
  p[1] = 1e6;
  p[2] = 42.9;
  return ab_ctx_set_output(c, t);
}

static int test_convert_after(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL, *pf = NULL, *cf = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  CHECK_OK(th_submit_fn(rt, th_host(0), produce, NULL, &pf));
  ab_convert_options o = opts(th_dt(kDLInt, 16), AB_CAST_SATURATE);
  CHECK_OK(ab_convert_after(rt, pf, th_host(0), &o, &cf));
  CHECK_EQ_INT(ab_future_status(cf), AB_EPENDING);
  th_gate_open(&g, 1);
  CHECK_OK(ab_future_wait(cf, -1));
  ab_tensor *res = NULL;
  CHECK_OK(ab_future_result(cf, &res));
  const int16_t *q = data_of(res);
  CHECK_EQ_INT(q[0], -5);
  CHECK_EQ_INT(q[1], 32767);
  CHECK_EQ_INT(q[2], 42);
  ab_tensor_release(res);
  ab_future_release(cf);
  ab_future_release(pf);
  /* a failed source: the conversion completes with its status */
  CHECK_OK(th_submit_fn(rt, th_host(0), produce, (void *)(intptr_t)AB_EDEVICE, &pf));
  CHECK_OK(ab_convert_after(rt, pf, th_host(0), &o, &cf));
  CHECK_OK(ab_future_wait(cf, -1));
  CHECK_EQ_INT(ab_future_status(cf), AB_EDEVICE);
  ab_future_release(cf);
  ab_future_release(pf);
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  th_gate_destroy(&g);
  return 0;
}

/* ---- bad arguments ------------------------------------------------------------------------ */
static int test_bad_args(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[1] = {4};
  ab_tensor *src = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &src));
  ab_convert_options o = opts(TH_U8, AB_CAST_SATURATE);
  ab_future *f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(NULL, src, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, NULL, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  CHECK_EQ_INT(ab_convert(rt, src, th_host(0), &o, NULL), AB_EINVAL);
  ab_convert_options b = o;
  b.size = 3;
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, src, th_host(0), &b, &f), AB_EINVAL);
  CHECK_NULL(f);
  b = o;
  b.cast = 7;
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, src, th_host(0), &b, &f), AB_EINVAL);
  CHECK_NULL(f);
  b = o;
  b.dtype = th_dt(42, 32);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, src, th_host(0), &b, &f), AB_EDTYPE);
  CHECK_NULL(f);
  b.dtype = th_dt(kDLFloat, 12);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, src, th_host(0), &b, &f), AB_EDTYPE);
  CHECK_NULL(f);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, src, th_host(5), &o, &f), AB_ENODEV);
  CHECK_NULL(f);
  ab_device cuda = {AB_CUDA, 0};
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert(rt, src, cuda, &o, &f), AB_ENODEV);
  CHECK_NULL(f);
  f = (ab_future *)(uintptr_t)1;
  CHECK_EQ_INT(ab_convert_after(rt, NULL, th_host(0), &o, &f), AB_EINVAL);
  CHECK_NULL(f);
  /* the source is still ours and fine */
  CHECK_EQ_U64(ab_tensor_nbytes(src), 16);
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A conversion whose input is a future, and which turns out zero-copy once that completes,
 * still gives back its inflight count: destroy used to wait for it for ever. */
static int test_zero_copy_after_future(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  int64_t shape[1] = {64};
  ab_tensor *src, *res;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U16, 1, shape, &src));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.force_copy = true;
  ab_future *copy, *after;
  CHECK_OK(ab_convert(rt, src, th_host(0), &o, &copy));
  CHECK_OK(ab_convert_after(rt, copy, th_host(0), NULL, &after));
  CHECK_OK(ab_future_wait(after, -1));
  CHECK_OK(ab_future_result(after, &res));
  ab_tensor *copied;
  CHECK_OK(ab_future_result(copy, &copied));
  CHECK_EQ_PTR(res, copied); /* zero-copy: the same tensor */
  ab_tensor_release(res);
  ab_tensor_release(copied);
  ab_tensor_release(src);
  ab_future_release(copy);
  ab_future_release(after);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN)); /* returns: nothing is left in flight */
  return 0;
}

/* CUDA memory from elsewhere (torch, CuPy through DLPack) belongs to a GPU, not a runtime: a
 * conversion or stack from it needs a CUDA device of this runtime on that GPU, and says
 * AB_ENODEV (not AB_ENOTSUP: the memory is fine, the GPU is not ours) when there is none. GPU
 * 63 is nobody's here, whatever the machine has; test_cuda_convert reads a real one. */
static int test_foreign_cuda_source_needs_its_gpu(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  static uint16_t fake[16]; /* never read: no device of this runtime can reach it */
  int64_t shape[1] = {16};
  DLTensor dl = {.data = fake, .device = {kDLCUDA, 63}, .ndim = 1, .dtype = {kDLUInt, 16, 1}, .shape = shape};
  ab_tensor *g;
  CHECK_OK(ab_tensor_wrap(&dl, 0, NULL, NULL, &g));
  ab_future *f;
  CHECK_OK(ab_convert(rt, g, th_host(0), NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENODEV);
  ab_future_release(f);
  ab_tensor *two[2] = {g, g};
  CHECK_OK(ab_stack(rt, two, 2, th_host(0), NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENODEV);
  ab_future_release(f);
  /* another backend's device memory still cannot be read by this runtime */
  dl.device = (DLDevice){kDLOpenCL, 0};
  ab_tensor *o;
  CHECK_OK(ab_tensor_wrap(&dl, 0, NULL, NULL, &o));
  CHECK_OK(ab_convert(rt, o, th_host(0), NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOTSUP);
  ab_future_release(f);
  ab_tensor_release(o);
  ab_tensor_release(g);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY(saturate_all_pairs),
                                      TEST_ENTRY(foreign_cuda_source_needs_its_gpu),
                                      TEST_ENTRY(stretch_all_pairs),
                                      TEST_ENTRY(stretch_known_values),
                                      TEST_ENTRY(stretch_infinities),
                                      TEST_ENTRY(strided_sources),
                                      TEST_ENTRY(imported_byte_offset),
                                      TEST_ENTRY(zero_copy),
                                      TEST_ENTRY_T(zero_copy_after_future, 10),
                                      TEST_ENTRY(read_only_source),
                                      TEST_ENTRY(0d_and_empty),
                                      TEST_ENTRY(to_other_logical_device),
                                      TEST_ENTRY(convert_after),
                                      TEST_ENTRY(bad_args),
                                      TEST_END};
AB_TEST_MAIN(tests)
