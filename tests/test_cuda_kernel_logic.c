/*
 * test_cuda_kernel_logic.c: the CUDA kernels' value conversions (devices/cuda/sat.cuh, run on
 * the host through cuda_sat_ref.cu) against the host device's conversions, for every dtype
 * pair, both cast modes and the OpenCL tests' special values (NaN, infinities, every integer
 * range endpoint and its neighbours), with the stretch range found by the minmax kernel's
 * logic. Runs without a GPU: it checks the kernels' logic (the clamping branches, the stretch
 * range and formula), not the GPU's instructions, which test_cuda_convert does on a GPU.
 */
#include "test_cuda_common.c"

int tcu_kernel_value(int s, int d, const void *x, void *out, int stretch, double lo, double span);
void tcu_range_add(double v, double *lo, double *hi, int *found);

enum { N = 1000 };

/* Every element of src (dtype s) through the kernel logic into out (dtype d). */
static int kernel_all(int s, int d, const ab_tensor *src, void *out, int stretch, double lo, double span) {
  size_t ses = th_dt_size(toc_dt(s)), des = th_dt_size(toc_dt(d));
  const char *p = ab_tensor_dl(src)->data;
  for (int i = 0; i < N; i++) CHECK_OK(tcu_kernel_value(s, d, p + (size_t)i * ses, (char *)out + (size_t)i * des, stretch, lo, span));
  return 0;
}

/* The stretch range over src as minmax_kernel finds it (sat.cuh's range_add, one element at a
 * time): the host's finite min and max, else the stretch below differs from the host's. */
static void range_of(const ab_tensor *src, int s, double *lo, double *hi, bool *found) {
  const char *p = ab_tensor_dl(src)->data;
  int any = 0;
  for (int i = 0; i < N; i++) {
    double v;
    if (s == 8) {
      float f;
      memcpy(&f, p + (size_t)i * 4, 4);
      v = f;
    } else {
      memcpy(&v, p + (size_t)i * 8, 8);
    }
    tcu_range_add(v, lo, hi, &any);
  }
  *found = any != 0;
}

static int pair(ab_runtime *rt, int s, int d, int set, int mode) {
  int64_t shape[1] = {N};
  ab_tensor *src, *ref, *mine;
  CHECK_OK(toc_host_tensor(rt, toc_dt(s), 1, shape, set, 0, &src));
  ab_convert_options o = toc_copt(toc_dt(d), mode);
  o.force_copy = true;
  CHECK_OK(toc_convert(rt, src, th_host(0), &o, &ref));
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), toc_dt(d), 1, shape, &mine));
  double lo = 0, hi = 0;
  bool found = false;
  bool stretchable = mode == AB_CAST_STRETCH && (s == 8 || s == 9) && d <= 7;
  if (stretchable) range_of(src, s, &lo, &hi, &found);
  int stretch = stretchable && found && hi > lo;
  CHECK_OK(kernel_all(s, d, src, ab_tensor_dl(mine)->data, stretch, lo, hi - lo));
  char label[64];
  snprintf(label, sizeof label, "%s->%s %s set %d", TOC_DT[s].name, TOC_DT[d].name, mode ? "stretch" : "saturate", set);
  int bad = toc_same(mine, ref, label); /* the same machine: NaN payloads must match too */
  ab_tensor_release(src);
  ab_tensor_release(ref);
  ab_tensor_release(mine);
  return bad;
}

static int test_every_pair(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int failures = 0, checks = 0;
  for (int s = 0; s < TOC_NDT; s++)
    for (int set = 0; set < (toc_dt(s).code == kDLFloat ? 2 : 1); set++)
      for (int d = 0; d < TOC_NDT; d++)
        for (int mode = AB_CAST_SATURATE; mode <= AB_CAST_STRETCH; mode++, checks++) failures += pair(rt, s, d, set, mode) != 0;
  fprintf(stderr, "# %d checks, %d failed\n", checks, failures);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return failures != 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(every_pair, 120),
    TEST_END,
};

AB_TEST_MAIN(tests)
