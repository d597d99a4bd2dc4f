/*
 * test_cuda_common.c: helpers shared by the CUDA tests (label `cuda`). Included, not linked:
 * every test_cuda_*.c does #include "test_cuda_common.c", so everything here is static.
 *
 * The value sets, the host-reference conversions and the futures helpers are the OpenCL tests'
 * (test_opencl_common.c, included here): the reference for every CUDA result is the HOST device,
 * the same source converted to AB_HOST with the same options. Only the runtime set-up differs:
 * OpenCL off, CUDA on, and a test skips (77) when the runtime has fewer CUDA devices than it
 * needs, which is always the case without a GPU or driver.
 */
#include "test_opencl_common.c"

#define TCU_UNUSED __attribute__((unused))

static TCU_UNUSED ab_device tcu_dev(int i) {
  ab_device d = {AB_CUDA, i};
  return d;
}

/* Host + CUDA; `split` logical devices per GPU; OpenCL off. */
static TCU_UNUSED void tcu_options(ab_runtime_options *o, int split) {
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->kinds[AB_HOST].workers_per_device = 2;
  o->kinds[AB_OPENCL].disabled = true;
  o->kinds[AB_CUDA].logical_split = split;
}

/* Creates a runtime from o. 0: ready; TEST_SKIP: fewer than `need` CUDA devices (or fewer than
 * `need_gpus` physical GPUs); else an error code. */
static TCU_UNUSED int tcu_runtime_opt(ab_runtime **rt, const ab_runtime_options *o, int need, int need_gpus) {
  *rt = NULL;
  int rc = ab_runtime_create(o, rt);
  if (rc != 0) {
    fprintf(stderr, "# ab_runtime_create: %d%s\n", rc, th_errstr(rc));
    return rc;
  }
  int n = toc_count(*rt, AB_CUDA), gpus = 0;
  for (int i = 0; i < n; i++) {
    ab_device_info info;
    if (ab_device_info_get(*rt, tcu_dev(i), &info) == 0 && info.physical + 1 > gpus) gpus = info.physical + 1;
  }
  if (n < need || gpus < need_gpus) {
    fprintf(stderr, "# %d CUDA device(s) on %d GPU(s), need %d on %d: skipped\n", n, gpus, need, need_gpus);
    ab_runtime_destroy(*rt, AB_DRAIN);
    *rt = NULL;
    return TEST_SKIP;
  }
  return 0;
}

#define TCU_RUNTIME(rtp, optp, need, gpus)                                                      \
  do {                                                                                          \
    int tcu_rc_ = tcu_runtime_opt((rtp), (optp), (need), (gpus));                               \
    if (tcu_rc_ == TEST_SKIP) return TEST_SKIP;                                                 \
    CHECK_OK(tcu_rc_);                                                                          \
  } while (0)

/* Like toc_same, except that two NaNs of a float dtype are equal whatever their payloads: a GPU
 * converting f64 <-> f32 gives the canonical NaN where x86 keeps the payload. Everything else
 * must match bit for bit. */
static TCU_UNUSED int tcu_same(const ab_tensor *a, const ab_tensor *b, const char *what) {
  const DLTensor *x = ab_tensor_dl(a), *y = ab_tensor_dl(b);
  if (x->dtype.code != kDLFloat || y->dtype.code != kDLFloat || x->dtype.bits != y->dtype.bits ||
      ab_tensor_nbytes(a) != ab_tensor_nbytes(b) || !ab_tensor_is_contiguous(a) || !ab_tensor_is_contiguous(b))
    return toc_same(a, b, what);
  size_t es = x->dtype.bits / 8, n = ab_tensor_nbytes(a) / es;
  const char *p = (const char *)x->data + x->byte_offset, *q = (const char *)y->data + y->byte_offset;
  for (size_t i = 0; i < n; i++) {
    double u, v;
    if (es == 4) {
      float f, g;
      memcpy(&f, p + i * 4, 4);
      memcpy(&g, q + i * 4, 4);
      u = f;
      v = g;
    } else {
      memcpy(&u, p + i * 8, 8);
      memcpy(&v, q + i * 8, 8);
    }
    if (u != u && v != v) continue;
    if (memcmp(p + i * es, q + i * es, es) != 0) {
      fprintf(stderr, "# %s: element %zu differs: got %.17g, host reference %.17g\n", what, i, u, v);
      return 1;
    }
  }
  return 0;
}

/* A host tensor of `bytes` u8 filled with a pattern that differs at every offset mod 251. */
static TCU_UNUSED int tcu_bytes(ab_runtime *rt, size_t bytes, bool pinned, ab_tensor **out) {
  int64_t shape[1] = {(int64_t)bytes};
  int rc = pinned ? ab_tensor_alloc_pinned(rt, TH_U8, 1, shape, out) : ab_tensor_alloc(rt, th_host(0), TH_U8, 1, shape, out);
  if (rc != 0) return rc;
  unsigned char *p = ab_tensor_dl(*out)->data;
  for (size_t i = 0; i < bytes; i++) p[i] = (unsigned char)(i % 251 + i / 251);
  return 0;
}
