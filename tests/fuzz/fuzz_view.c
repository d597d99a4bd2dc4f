/*
 * fuzz_view.c: libFuzzer target for views and conversions.
 *
 * The input builds a host tensor (dtype, shape, contents), then a chain of views of it (shape,
 * strides and offset: small, negative or hostile 64-bit values; ab_tensor_view or
 * ab_tensor_index), and converts, stacks and unstacks the last one onto a device (a host
 * logical device, an OpenCL device when there is one, or one that does not exist) with a
 * target dtype, cast mode and force_copy. Checks:
 *   - a view is accepted exactly when every byte it reaches lies inside the tensor it views
 *     (empty views: where an element could be, or one past the end), computed here in 128-bit
 *     arithmetic; refused views get AB_EINVAL and a NULL out;
 *   - every accepted view reads the elements the oracle says, and a conversion of it has them
 *     (saturating casts checked against a scalar reference), on any device;
 *   - every future completes exactly once, with 0 or a clean error code; nothing leaks.
 * OpenCL devices are used when AB_FUZZ_OPENCL=1 (pocl compiles kernels when the runtime
 * starts, and LeakSanitizer must then be off: see tests/fuzz.cmake).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arraybridge.h"

typedef __int128 i128;

static ab_runtime *rt;
static int nopencl;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  const char *ocl = getenv("AB_FUZZ_OPENCL");
  bool with_ocl = ocl && strcmp(ocl, "1") == 0;
  o.kinds[AB_OPENCL].disabled = !with_ocl;
  o.kinds[AB_OPENCL].workers_per_device = 1;
  o.kinds[AB_CUDA].disabled = true;
  o.kinds[AB_HOST].workers_per_device = 2; /* two, so host stacks split their copies */
  o.kinds[AB_HOST].logical_split = 2;
  if (ab_runtime_create(&o, &rt) != 0) abort();
  ab_device devs[16];
  int n = ab_runtime_devices(rt, devs, 16);
  for (int i = 0; i < n && i < 16; i++) nopencl += devs[i].kind == AB_OPENCL;
  return 0;
}

static void check(bool ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_view: %s\n", what);
    abort();
  }
}

/* ---- reading the input ------------------------------------------------------------------------ */
typedef struct {
  const uint8_t *p;
  size_t n;
} reader;

static uint8_t u8(reader *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

static uint64_t u64(reader *r) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)u8(r) << (8 * i);
  return v;
}

/* Mostly small values, sometimes edges, sometimes raw 64-bit ones. */
static int64_t num(reader *r) {
  uint8_t sel = u8(r);
  switch (sel >> 5) {
  case 0: case 1: case 2: return sel & 7;
  case 3: return (int64_t)(sel & 15) - 8;
  case 4: return (int64_t)(sel & 63) - 16;
  case 5: {
    static const int64_t edge[] = {INT64_MAX, INT64_MIN, INT64_MAX - 1, INT64_MIN + 1, INT64_MAX / 2,
                                   INT64_MAX / 4 + 1, -INT64_MAX / 2, 1ll << 32, -(1ll << 32), 1ll << 62};
    return edge[(sel & 31) % 10];
  }
  default: return (int64_t)u64(r);
  }
}

/* ---- dtypes and the scalar reference ---------------------------------------------------------- */
static const DLDataType DTYPES[] = {
    {kDLUInt, 8, 1},  {kDLUInt, 16, 1}, {kDLUInt, 32, 1}, {kDLUInt, 64, 1},  {kDLInt, 8, 1},
    {kDLInt, 16, 1},  {kDLInt, 32, 1},  {kDLInt, 64, 1},  {kDLFloat, 32, 1}, {kDLFloat, 64, 1},
    {kDLFloat, 16, 1}, {AB_DL_BOOL, 8, 1},
};
#define NDTYPES 12
#define NREF 10 /* the first ten have a reference cast */

static bool same_dt(DLDataType a, DLDataType b) { return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes; }

typedef struct {
  int kind; /* 0 signed, 1 unsigned, 2 float */
  int64_t i;
  uint64_t u;
  double d;
} scalar;

static scalar load(const void *p, DLDataType t) {
  scalar s = {0};
  if (t.code == kDLInt) {
    s.i = t.bits == 8 ? *(const int8_t *)p : t.bits == 16 ? *(const int16_t *)p
        : t.bits == 32 ? *(const int32_t *)p : *(const int64_t *)p;
  } else if (t.code == kDLUInt) {
    s.kind = 1;
    s.u = t.bits == 8 ? *(const uint8_t *)p : t.bits == 16 ? *(const uint16_t *)p
        : t.bits == 32 ? *(const uint32_t *)p : *(const uint64_t *)p;
  } else {
    s.kind = 2;
    s.d = t.bits == 32 ? *(const float *)p : *(const double *)p;
  }
  return s;
}

static int64_t smax(int b) { return b == 64 ? INT64_MAX : (INT64_C(1) << (b - 1)) - 1; }
static int64_t smin(int b) { return b == 64 ? INT64_MIN : -(INT64_C(1) << (b - 1)); }
static uint64_t umax(int b) { return b == 64 ? UINT64_MAX : (UINT64_C(1) << b) - 1; }

/* The saturating cast of one element into 8 bytes (compared on the target's size). */
static void ref_cast(const void *src, DLDataType st, void *dst, DLDataType dt) {
  scalar s = load(src, st);
  memset(dst, 0, 8);
  if (dt.code == kDLFloat) {
    double v = s.kind == 0 ? (double)s.i : s.kind == 1 ? (double)s.u : s.d;
    if (dt.bits == 32) {
      float f = s.kind == 0 ? (float)s.i : s.kind == 1 ? (float)s.u : (float)s.d;
      memcpy(dst, &f, 4);
    } else {
      memcpy(dst, &v, 8);
    }
    return;
  }
  i128 v;
  if (s.kind == 2) {
    double d = isnan(s.d) ? 0 : trunc(s.d);
    double lim = ldexp(1.0, 64);
    v = d >= lim ? (i128)UINT64_MAX + 1 : d <= -lim ? -(i128)UINT64_MAX - 1 : (i128)d;
  } else {
    v = s.kind == 0 ? (i128)s.i : (i128)s.u;
  }
  if (dt.code == kDLInt) {
    int64_t r = v > smax(dt.bits) ? smax(dt.bits) : v < smin(dt.bits) ? smin(dt.bits) : (int64_t)v;
    memcpy(dst, &r, dt.bits / 8); /* little-endian: the low bytes */
  } else {
    uint64_t r = v < 0 ? 0 : v > (i128)umax(dt.bits) ? umax(dt.bits) : (uint64_t)v;
    memcpy(dst, &r, dt.bits / 8);
  }
}

/* ---- the oracle: a tensor's geometry relative to the root allocation --------------------------- */
typedef struct {
  int ndim;
  int64_t shape[AB_MAX_NDIM], strides[AB_MAX_NDIM]; /* strides in elements */
  i128 first;                                       /* byte of element 0, from the root's start */
} geom;

static geom geom_of(const ab_tensor *t, const ab_tensor *root) {
  const DLTensor *dl = ab_tensor_dl(t), *r = ab_tensor_dl(root);
  geom g = {.ndim = dl->ndim};
  for (int i = 0; i < dl->ndim; i++) {
    g.shape[i] = dl->shape[i];
    g.strides[i] = dl->strides[i];
  }
  g.first = ((i128)(uintptr_t)dl->data + dl->byte_offset) - ((i128)(uintptr_t)r->data + r->byte_offset);
  return g;
}

static bool empty_of(const geom *g) {
  for (int i = 0; i < g->ndim; i++)
    if (g->shape[i] == 0) return true;
  return false;
}

/* Lowest and highest byte reached, relative to the first element (span: empty dims count as one). */
static void reach(const geom *g, int64_t es, bool span, i128 *lo, i128 *hi) {
  *lo = 0;
  *hi = 0;
  for (int i = 0; i < g->ndim; i++) {
    i128 n = g->shape[i] > 0 ? g->shape[i] - 1 : 0;
    if (g->shape[i] == 0 && !span) continue;
    i128 step = n * g->strides[i] * es;
    if (step < 0) *lo += step;
    else *hi += step;
  }
  *hi += es - 1;
}

static bool fits64(i128 v) { return v >= INT64_MIN && v <= INT64_MAX; }

/* Whether the library must accept view(base, v, offset): the header's rule, with int64 limits. */
static bool should_accept(const geom *base, const geom *v, int64_t offset, int64_t es) {
  /* the per-dimension products the library forms must fit in 64 bits */
  for (int i = 0; i < v->ndim; i++) {
    i128 step = (i128)(v->shape[i] > 0 ? v->shape[i] - 1 : 0) * v->strides[i];
    if (!fits64(step) || !fits64(step * es)) return false;
  }
  i128 vlo, vhi, blo, bhi, off = (i128)offset * es;
  reach(v, es, false, &vlo, &vhi);
  if (!fits64(vlo) || !fits64(vhi) || !fits64(off)) return false;
  bool vempty = empty_of(v);
  reach(base, es, vempty, &blo, &bhi);
  if (!fits64(blo) || !fits64(bhi)) return false;
  if (vempty) return off >= blo && off <= bhi + 1;
  if (empty_of(base)) return false;
  return off + vlo >= blo && off + vhi <= bhi;
}

/* ---- one input -------------------------------------------------------------------------------- */
enum { MAX_ROOT = 4096, MAX_VIEWS = 4, MAX_ELEMS = 4096 };

/* Visits every element of g in row-major order: its byte position from the root's start. */
static int64_t positions(const geom *g, int64_t es, i128 *pos, int64_t cap) {
  i128 n = 1;
  for (int i = 0; i < g->ndim; i++) n = g->shape[i] == 0 || n == 0 ? 0 : n * g->shape[i] > cap ? cap + 1 : n * g->shape[i];
  if (n > cap) return -1;
  for (int64_t k = 0; k < n; k++) {
    int64_t rem = k;
    i128 p = g->first;
    for (int i = g->ndim - 1; i >= 0; i--) {
      p += (i128)(rem % g->shape[i]) * g->strides[i] * es;
      rem /= g->shape[i];
    }
    pos[k] = p;
  }
  return (int64_t)n;
}

static int64_t wait_status(ab_future *f) {
  check(ab_future_wait(f, -1) == 0, "wait failed");
  int st = ab_future_status(f);
  check(st != AB_EPENDING, "complete but pending");
  return st;
}

/* Compares a contiguous host copy (dtype dt) with the oracle's elements (of dtype st). */
static void compare(const void *got, DLDataType dt, const uint8_t *root, DLDataType st, const i128 *pos,
                    int64_t n, int cast) {
  size_t ds = (dt.bits + 7) / 8, ss = (st.bits + 7) / 8;
  bool exact = same_dt(dt, st), ref = !exact && cast == AB_CAST_SATURATE;
  int si = -1, di = -1;
  for (int i = 0; i < NREF; i++) {
    if (same_dt(DTYPES[i], st)) si = i;
    if (same_dt(DTYPES[i], dt)) di = i;
  }
  if (!exact && (!ref || si < 0 || di < 0)) return; /* stretch, f16, bool: no reference here */
  for (int64_t k = 0; k < n; k++) {
    const uint8_t *src = root + (size_t)pos[k];
    const uint8_t *g = (const uint8_t *)got + (size_t)k * ds;
    if (exact) {
      check(memcmp(g, src, ss) == 0, "a copied element differs from the view's");
      continue;
    }
    uint8_t want[8];
    ref_cast(src, st, want, dt);
    if (dt.code == kDLFloat && dt.bits == 32) {
      float a, b;
      memcpy(&a, g, 4);
      memcpy(&b, want, 4);
      check((isnan(a) && isnan(b)) || memcmp(&a, &b, 4) == 0, "a cast f32 element differs");
    } else if (dt.code == kDLFloat) {
      double a, b;
      memcpy(&a, g, 8);
      memcpy(&b, want, 8);
      check((isnan(a) && isnan(b)) || memcmp(&a, &b, 8) == 0, "a cast f64 element differs");
    } else {
      check(memcmp(g, want, ds) == 0, "a cast integer element differs");
    }
  }
}

/* How a conversion of a valid view may fail: a dtype pair without a kernel (f16, bool), or an
 * output whose shape cannot be allocated (an empty view with huge dimensions, stacked). */
static bool clean_failure(int st) { return st == AB_EDTYPE || st == AB_ENOTSUP || st == AB_EOVERFLOW; }

/* A finished conversion's result on the host: itself, or a copy from its device. */
static ab_tensor *on_host(ab_tensor *t) {
  if (ab_tensor_device(t).kind == AB_HOST) return ab_tensor_retain(t);
  ab_future *f = NULL;
  check(ab_convert(rt, t, (ab_device){AB_HOST, 0}, NULL, &f) == 0, "copy back refused");
  check(wait_status(f) == 0, "copy back failed");
  ab_tensor *h = NULL;
  check(ab_future_result(f, &h) == 0 && h, "copy back without a result");
  ab_future_release(f);
  return h;
}

static ab_device pick_device(reader *r) {
  uint8_t s = u8(r);
  switch (s % 8) {
  case 0: case 1: case 2: return (ab_device){AB_HOST, 0};
  case 3: case 4: return (ab_device){AB_HOST, 1};
  case 5: return nopencl ? (ab_device){AB_OPENCL, s / 8 % nopencl} : (ab_device){AB_HOST, 1};
  case 6: return (ab_device){AB_HOST, AB_ANY};
  default: return s & 8 ? (ab_device){AB_CUDA, 0} : (ab_device){(int32_t)(s / 16) - 4, (int32_t)(s % 5) - 1};
  }
}

static bool device_exists(ab_device d) {
  if (d.kind == AB_HOST) return d.index == AB_ANY || (d.index >= 0 && d.index < 2);
  if (d.kind == AB_OPENCL) return d.index == AB_ANY ? nopencl > 0 : d.index >= 0 && d.index < nopencl;
  return false;
}

static void convert_and_check(reader *r, ab_tensor *v, const geom *g, const ab_tensor *root, DLDataType st,
                              int64_t es) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  uint8_t sel = u8(r);
  if (sel & 1) o.dtype = DTYPES[(sel >> 1) % NDTYPES];
  o.cast = sel & 0x40 ? AB_CAST_STRETCH : AB_CAST_SATURATE;
  o.force_copy = sel & 0x80;
  ab_device dst = pick_device(r);
  static i128 pos[MAX_ELEMS];
  int64_t n = positions(g, es, pos, MAX_ELEMS);
  const uint8_t *rp = (const uint8_t *)ab_tensor_dl(root)->data;
  DLDataType dt = o.dtype.bits ? o.dtype : st;
  /* convert */
  ab_future *f = NULL;
  int rc = ab_convert(rt, v, dst, &o, &f);
  if (!device_exists(dst)) check(rc == AB_ENODEV && f == NULL, "a missing device not refused with AB_ENODEV");
  if (rc != 0) {
    check(rc < 0 && f == NULL, "failed convert left *out set");
    return;
  }
  int st_rc = (int)wait_status(f);
  if (st_rc == 0) {
    ab_tensor *res = NULL;
    check(ab_future_result(f, &res) == 0 && res, "convert without a result");
    const DLTensor *rd = ab_tensor_dl(res);
    check(rd->ndim == g->ndim && ab_tensor_is_contiguous(res) && same_dt(rd->dtype, dt), "convert result's layout");
    for (int i = 0; i < g->ndim; i++) check(rd->shape[i] == g->shape[i], "convert changed the shape");
    if (n >= 0 && ab_tensor_nbytes(res) > 0) {
      ab_tensor *h = on_host(res);
      compare((const char *)ab_tensor_dl(h)->data + ab_tensor_dl(h)->byte_offset, dt, rp, st, pos, n, o.cast);
      ab_tensor_release(h);
    }
    ab_tensor_release(res);
  } else {
    check(clean_failure(st_rc), "convert failed with an unexpected code");
  }
  ab_future_release(f);
  /* stack three of it, and unstack it */
  ab_tensor *three[3] = {v, v, v};
  rc = ab_stack(rt, three, 3, dst, &o, &f);
  if (rc == 0) {
    int s2 = (int)wait_status(f);
    check(s2 == 0 || clean_failure(s2), "stack failed oddly");
    if (s2 == 0 && n >= 0) {
      ab_tensor *res = NULL;
      check(ab_future_result(f, &res) == 0 && res, "stack without a result");
      check(ab_tensor_dl(res)->shape[0] == 3, "stack's first dimension");
      if (ab_tensor_nbytes(res) > 0) {
        ab_tensor *h = on_host(res);
        const char *base = (const char *)ab_tensor_dl(h)->data + ab_tensor_dl(h)->byte_offset;
        for (int k = 0; k < 3; k++)
          compare(base + (size_t)k * ab_tensor_nbytes(h) / 3, dt, rp, st, pos, n, o.cast);
        ab_tensor_release(h);
      }
      ab_tensor_release(res);
    }
    ab_future_release(f);
  } else {
    check(rc < 0 && f == NULL, "failed stack left *out set");
  }
  if (g->ndim >= 1 && g->shape[0] <= 64) {
    ab_future *fs[64];
    rc = ab_unstack(rt, v, dst, &o, fs);
    if (rc == 0) {
      for (int64_t i = 0; i < g->shape[0]; i++) {
        int s3 = (int)wait_status(fs[i]);
        check(s3 == 0 || clean_failure(s3), "unstack failed oddly");
        ab_future_release(fs[i]);
      }
    } else {
      for (int64_t i = 0; i < g->shape[0]; i++) check(fs[i] == NULL, "failed unstack left out[] set");
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  /* the root: a contiguous host tensor of up to MAX_ROOT bytes, filled from the input */
  DLDataType st = DTYPES[u8(&r) % NDTYPES];
  int64_t es = (st.bits + 7) / 8;
  int rnd = 1 + u8(&r) % 3;
  int64_t shape[3], total = es;
  for (int i = 0; i < rnd; i++) {
    shape[i] = u8(&r) % 17;
    total *= shape[i] ? shape[i] : 1;
  }
  if (total > MAX_ROOT) return 0;
  ab_tensor *root = NULL;
  check(ab_tensor_alloc(rt, (ab_device){AB_HOST, 0}, st, rnd, shape, &root) == 0, "alloc failed");
  uint8_t *rp = ab_tensor_dl(root)->data;
  for (size_t i = 0; i < ab_tensor_nbytes(root); i++) rp[i] = size ? data[(i * 7 + 3) % size] : 0;
  /* a chain of views */
  ab_tensor *cur = ab_tensor_retain(root);
  int nviews = u8(&r) % (MAX_VIEWS + 1);
  for (int k = 0; k < nviews; k++) {
    geom base = geom_of(cur, root);
    ab_tensor *v = (ab_tensor *)(uintptr_t)1;
    int rc;
    if (u8(&r) % 4 == 0) { /* index */
      int64_t i = num(&r);
      rc = ab_tensor_index(cur, i, &v);
      bool ok = base.ndim >= 1 && i >= 0 && i < base.shape[0];
      check((rc == 0) == ok, ok ? "a valid index refused" : "an invalid index accepted");
      if (!ok) check(v == NULL, "failed index left *out set");
    } else {
      geom want = {.ndim = u8(&r) % 5};
      bool null_strides = u8(&r) & 1;
      for (int i = 0; i < want.ndim; i++) want.shape[i] = num(&r);
      for (int i = 0; i < want.ndim; i++) want.strides[i] = num(&r);
      int64_t offset = num(&r);
      bool bad = false; /* a negative extent, or contiguous strides that overflow */
      for (int i = 0; i < want.ndim; i++) bad |= want.shape[i] < 0;
      if (null_strides && !bad) { /* contiguous, as the library computes them */
        i128 s = 1;
        for (int i = want.ndim - 1; i >= 0 && !bad; i--) {
          want.strides[i] = (int64_t)s;
          s *= want.shape[i] > 0 ? want.shape[i] : 1;
          bad = i > 0 && !fits64(s);
        }
      }
      rc = ab_tensor_view(cur, want.ndim, want.shape, null_strides ? NULL : want.strides, offset, &v);
      bool ok = !bad && should_accept(&base, &want, offset, es);
      if (ok && rc != 0) {
        fprintf(stderr, "fuzz_view: view refused (%d): ndim %d offset %lld\n", rc, want.ndim, (long long)offset);
        abort();
      }
      if (!ok && !(rc == AB_EINVAL && v == NULL)) {
        fprintf(stderr, "fuzz_view: view accepted or refused oddly (%d): ndim %d offset %lld es %lld; base ndim %d\n", rc,
                want.ndim, (long long)offset, (long long)es, base.ndim);
        for (int i = 0; i < want.ndim; i++)
          fprintf(stderr, "  view dim %d: %lld x %lld\n", i, (long long)want.shape[i], (long long)want.strides[i]);
        for (int i = 0; i < base.ndim; i++)
          fprintf(stderr, "  base dim %d: %lld x %lld\n", i, (long long)base.shape[i], (long long)base.strides[i]);
        abort();
      }
      if (rc == 0) {
        geom got = geom_of(v, root);
        check(got.first == base.first + (i128)offset * es, "the view's first element is elsewhere");
      }
    }
    if (rc != 0) break;
    ab_tensor_release(cur);
    cur = v;
  }
  /* every element of the last view lies in the root; read them all (ASan checks the bounds) */
  geom g = geom_of(cur, root);
  static i128 pos[MAX_ELEMS];
  int64_t n = positions(&g, es, pos, MAX_ELEMS);
  for (int64_t k = 0; k < n; k++) {
    check(pos[k] >= 0 && pos[k] + es <= (i128)ab_tensor_nbytes(root), "a view's element lies outside the root");
    volatile uint8_t x = rp[(size_t)pos[k]];
    (void)x;
  }
  if (n >= 0) convert_and_check(&r, cur, &g, root, st, es);
  ab_tensor_release(cur);
  ab_tensor_release(root);
  return 0;
}
