/*
 * test_opencl_common.c: helpers shared by the OpenCL tests (label `opencl`). Included, not
 * linked: every test_opencl_*.c does #include "test_opencl_common.c", so everything here is
 * static.
 *
 * The reference for every OpenCL result is the HOST device: the same source converted to
 * AB_HOST with the same options, compared byte for byte.
 */
#include "harness.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#define TOC_UNUSED __attribute__((unused))

/* ---- dtypes --------------------------------------------------------------------------------- */
typedef struct {
  const char *name;
  uint8_t code, bits;
} toc_dtype;
static const toc_dtype TOC_DT[] = {
    {"u8", kDLUInt, 8},   {"u16", kDLUInt, 16}, {"u32", kDLUInt, 32},  {"u64", kDLUInt, 64},
    {"i8", kDLInt, 8},    {"i16", kDLInt, 16},  {"i32", kDLInt, 32},   {"i64", kDLInt, 64},
    {"f32", kDLFloat, 32}, {"f64", kDLFloat, 64}, {"bool", AB_DL_BOOL, 8},
};
#define TOC_NDT ((int)(sizeof TOC_DT / sizeof TOC_DT[0]))
static TOC_UNUSED DLDataType toc_dt(int i) { return th_dt(TOC_DT[i].code, TOC_DT[i].bits); }
static TOC_UNUSED const char *toc_dt_name(DLDataType dt) {
  for (int i = 0; i < TOC_NDT; i++)
    if (TOC_DT[i].code == dt.code && TOC_DT[i].bits == dt.bits) return TOC_DT[i].name;
  return "?";
}

static TOC_UNUSED ab_device toc_ocl(int i) {
  ab_device d = {AB_OPENCL, i};
  return d;
}

/* ---- runtimes ------------------------------------------------------------------------------- */
/* Host + OpenCL; one OpenCL worker per device (two host workers). */
static TOC_UNUSED void toc_options(ab_runtime_options *o) {
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->kinds[AB_HOST].workers_per_device = 2;
  o->kinds[AB_OPENCL].workers_per_device = 1;
  o->kinds[AB_CUDA].disabled = true;
}

static TOC_UNUSED int toc_count(ab_runtime *rt, int kind) {
  ab_device devs[128];
  int n = ab_runtime_devices(rt, devs, 128);
  int c = 0;
  for (int i = 0; i < n && i < 128; i++) c += devs[i].kind == kind;
  return c;
}

/* Creates a runtime from o. 0: ready; TEST_SKIP: fewer than `need` OpenCL devices (the runtime
 * is destroyed); else an error code. */
static TOC_UNUSED int toc_runtime_opt(ab_runtime **rt, const ab_runtime_options *o, int need) {
  *rt = NULL;
  int rc = ab_runtime_create(o, rt);
  if (rc != 0) {
    fprintf(stderr, "# ab_runtime_create: %d%s\n", rc, th_errstr(rc));
    return rc;
  }
  int n = toc_count(*rt, AB_OPENCL);
  if (n < need) {
    fprintf(stderr, "# %d OpenCL device(s), need %d: skipped\n", n, need);
    ab_runtime_destroy(*rt, AB_DRAIN);
    *rt = NULL;
    return TEST_SKIP;
  }
  return 0;
}

static TOC_UNUSED int toc_runtime(ab_runtime **rt, int need) {
  ab_runtime_options o;
  toc_options(&o);
  return toc_runtime_opt(rt, &o, need);
}

/* Use at the top of a test: creates the runtime or returns the skip/fail code. */
#define TOC_RUNTIME(rtp, optp, need)                                                            \
  do {                                                                                          \
    int toc_rc_ = toc_runtime_opt((rtp), (optp), (need));                                       \
    if (toc_rc_ == TEST_SKIP) return TEST_SKIP;                                                 \
    CHECK_OK(toc_rc_);                                                                          \
  } while (0)

/* ---- futures -------------------------------------------------------------------------------- */
/* Waits for f, releases it, returns its status; *out (if not NULL) gets the result. */
static TOC_UNUSED int toc_take(ab_future *f, ab_tensor **out) {
  if (out) *out = NULL;
  if (f == NULL) return AB_EINVAL;
  int rc = ab_future_wait(f, -1);
  if (rc == 0) rc = ab_future_status(f);
  if (rc == 0 && out) rc = ab_future_result(f, out);
  ab_future_release(f);
  return rc;
}

static TOC_UNUSED ab_convert_options toc_copt(DLDataType dt, int cast) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.dtype = dt;
  o.cast = cast;
  return o;
}

/* Synchronous convert. */
static TOC_UNUSED int toc_convert(ab_runtime *rt, ab_tensor *src, ab_device dst, const ab_convert_options *o,
                                  ab_tensor **out) {
  *out = NULL;
  ab_future *f = NULL;
  int rc = ab_convert(rt, src, dst, o, &f);
  if (rc != 0) return rc;
  return toc_take(f, out);
}

/* A copy of t on host 0 with t's dtype (a plain download for device tensors). */
static TOC_UNUSED int toc_to_host(ab_runtime *rt, ab_tensor *t, ab_tensor **out) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.force_copy = true;
  return toc_convert(rt, t, th_host(0), &o, out);
}

/* ---- values --------------------------------------------------------------------------------- */
/* Bit patterns that, truncated to every integer width, hit its endpoints and neighbours. */
static const uint64_t TOC_INTS[] = {
    0, 1, 2, UINT64_MAX, UINT64_MAX - 1, 0x7e, 0x7f, 0x80, 0x81, 0xfe, 0xff, 0x100, 0x101,
    0x7ffe, 0x7fff, 0x8000, 0x8001, 0xfffe, 0xffff, 0x10000, 0x10001, 0x7ffffffe, 0x7fffffff,
    0x80000000, 0x80000001, 0xfffffffe, 0xffffffff, 0x100000000, 0x100000001,
    0x7ffffffffffffffe, 0x7fffffffffffffff, 0x8000000000000000, 0x8000000000000001,
    (1ull << 53) + 1, (1ull << 24) + 1, (uint64_t)-2, (uint64_t)-128, (uint64_t)-129,
    (uint64_t)-32768, (uint64_t)-32769, (uint64_t)(int64_t)INT32_MIN, (uint64_t)((int64_t)INT32_MIN - 1),
    12345, (uint64_t)-12345, 0x123456789abcdefull, 0xfedcba9876543210ull, 1000, 1000000, 3, 100,
};
#define TOC_NINTS ((int)(sizeof TOC_INTS / sizeof TOC_INTS[0]))

/* Floats: NaNs, infinities, signed zeros, halves, every integer range endpoint and its
 * neighbours, huge values, denormals. set 1 leaves the infinities out (stretch ranges). */
static double toc_float_value(int k, int set, bool f32) {
  static const double base[] = {
      0.0, -0.0, 0.5, -0.5, 0.99, -0.99, 1.0, -1.0, 1.5, -1.5, 2.5, -2.5,
      126.9, 127.0, 127.5, 128.0, -128.0, -128.5, -129.0, 254.9, 255.0, 255.5, 256.0,
      32767.0, 32767.5, 32768.0, -32768.0, -32769.0, 65535.0, 65535.9, 65536.0,
      2147483647.0, 2147483648.0, -2147483648.0, -2147483649.0, 4294967295.0, 4294967296.0,
      9223372036854775807.0, 9223372036854774784.0, -9223372036854775808.0, -9223372036854777856.0,
      18446744073709551615.0, 18446744073709549568.0, 3.0e19, -3.0e19, 1e30, -1e30,
      1e-40, -1e-45, 5e-324, 3.4028234663852886e38, 1e300, -1e300, 0.1, 123.456, -7.75,
  };
  const int nb = (int)(sizeof base / sizeof base[0]);
  const int nspecial = set == 0 ? 4 : 2;
  k %= nb + nspecial;
  if (k < nb) {
    double v = base[k];
    if (f32 && fabs(v) > 3.4028234663852886e38) v = v > 0 ? FLT_MAX : -FLT_MAX;
    return v;
  }
  switch (k - nb) {
  case 0: return NAN;
  case 1: return -NAN;
  case 2: return INFINITY;
  default: return -INFINITY;
  }
}

/* Element i of a source of dtype dt, value set `set` (0: everything, 1: no infinities). */
static TOC_UNUSED void toc_value(DLDataType dt, int set, int64_t i, void *p) {
  if (dt.code == kDLFloat) {
    double v = toc_float_value((int)(i % 1000), set, dt.bits == 32);
    if (dt.bits == 32) {
      float f = (float)v;
      memcpy(p, &f, 4);
    } else {
      memcpy(p, &v, 8);
    }
    return;
  }
  if (dt.code == AB_DL_BOOL) {
    *(uint8_t *)p = (uint8_t)((i * 7 + 3) % 5 < 2);
    return;
  }
  uint64_t u = TOC_INTS[i % TOC_NINTS];
  switch (dt.bits) {
  case 8: *(uint8_t *)p = (uint8_t)u; break;
  case 16: { uint16_t x = (uint16_t)u; memcpy(p, &x, 2); } break;
  case 32: { uint32_t x = (uint32_t)u; memcpy(p, &x, 4); } break;
  default: memcpy(p, &u, 8); break;
  }
}

/* A contiguous host tensor filled with toc_value(dt, set, i + seed). */
static TOC_UNUSED int toc_host_tensor(ab_runtime *rt, DLDataType dt, int ndim, const int64_t *shape, int set,
                                      int64_t seed, ab_tensor **out) {
  int rc = ab_tensor_alloc(rt, th_host(0), dt, ndim, shape, out);
  if (rc != 0) return rc;
  const DLTensor *dl = ab_tensor_dl(*out);
  int64_t n = th_numel(dl);
  size_t es = th_dt_size(dt);
  for (int64_t i = 0; i < n; i++) toc_value(dt, set, i + seed, (char *)dl->data + dl->byte_offset + (size_t)i * es);
  return 0;
}

/* Byte-for-byte equality of two contiguous host tensors of the same dtype and shape. */
static TOC_UNUSED int toc_same(const ab_tensor *a, const ab_tensor *b, const char *what) {
  const DLTensor *x = ab_tensor_dl(a), *y = ab_tensor_dl(b);
  if (x->dtype.code != y->dtype.code || x->dtype.bits != y->dtype.bits || x->ndim != y->ndim) {
    fprintf(stderr, "# %s: dtype/ndim differ (%s/%d vs %s/%d)\n", what, toc_dt_name(x->dtype), x->ndim,
            toc_dt_name(y->dtype), y->ndim);
    return 1;
  }
  for (int i = 0; i < x->ndim; i++)
    if (x->shape[i] != y->shape[i]) {
      fprintf(stderr, "# %s: shape differs in dim %d\n", what, i);
      return 1;
    }
  if (ab_tensor_device(a).kind != AB_HOST || ab_tensor_device(b).kind != AB_HOST || !ab_tensor_is_contiguous(a) ||
      !ab_tensor_is_contiguous(b)) {
    fprintf(stderr, "# %s: not contiguous host tensors\n", what);
    return 1;
  }
  size_t es = th_dt_size(x->dtype), n = ab_tensor_nbytes(a);
  const unsigned char *p = (const unsigned char *)x->data + x->byte_offset;
  const unsigned char *q = (const unsigned char *)y->data + y->byte_offset;
  if (n == 0 || memcmp(p, q, n) == 0) return 0;
  for (size_t i = 0; i < n; i += es)
    if (memcmp(p + i, q + i, es) != 0) {
      uint64_t u = 0, v = 0;
      memcpy(&u, p + i, es);
      memcpy(&v, q + i, es);
      fprintf(stderr, "# %s: element %zu differs: got 0x%" PRIx64 ", host reference 0x%" PRIx64 " (%s)\n", what,
              i / es, u, v, toc_dt_name(x->dtype));
      return 1;
    }
  return 1;
}

/* Total mem_used over the devices of `kind` (-1: all). */
static TOC_UNUSED uint64_t toc_mem_used(ab_runtime *rt, int kind) {
  ab_device_stats st[128];
  int n = ab_runtime_stats(rt, st, 128);
  uint64_t u = 0;
  for (int i = 0; i < n && i < 128; i++)
    if (kind < 0 || st[i].device.kind == kind) u += st[i].mem_used;
  return u;
}

/* Sums the stats of every device of `kind`. */
static TOC_UNUSED ab_device_stats toc_stats_sum(ab_runtime *rt, int kind) {
  ab_device_stats st[128], s;
  memset(&s, 0, sizeof s);
  int n = ab_runtime_stats(rt, st, 128);
  for (int i = 0; i < n && i < 128; i++) {
    if (st[i].device.kind != kind) continue;
    s.tasks_submitted += st[i].tasks_submitted;
    s.tasks_completed += st[i].tasks_completed;
    s.tasks_failed += st[i].tasks_failed;
    s.tasks_canceled += st[i].tasks_canceled;
    s.mem_used += st[i].mem_used;
    s.oom_events += st[i].oom_events;
    s.oom_parks += st[i].oom_parks;
    s.oom_retries += st[i].oom_retries;
    s.oom_reroutes += st[i].oom_reroutes;
    s.oom_failures += st[i].oom_failures;
    s.faults_injected += st[i].faults_injected;
  }
  return s;
}

/* mem_used of `kind`, once it equals want or 2 s have passed. The worker that completed a
 * future drops its own reference on it (and so on its result) just after waiters wake, so a
 * gauge read right after the last release may still count the result for a moment. */
static TOC_UNUSED uint64_t toc_mem_settle(ab_runtime *rt, int kind, uint64_t want) {
  uint64_t u = toc_mem_used(rt, kind);
  for (int64_t t0 = th_now_ns(); u != want && th_now_ns() - t0 < TH_SEC(2); u = toc_mem_used(rt, kind))
    th_sleep_ns(TH_MS(1));
  return u;
}
