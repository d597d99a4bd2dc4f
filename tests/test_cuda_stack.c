/*
 * test_cuda_stack.c: ab_stack onto CUDA devices and ab_unstack from them, against the same
 * slices stacked on the host (bit for bit). Skips (77) without enough CUDA devices.
 *
 * Slices: pageable and pinned host (copied by host threads into pinned chunks, each sent in one
 * DMA while the next fills; strided ones through the staging ring), on the target GPU (the gather
 * kernel below 1 MiB a slice, batched copies above), on another logical device of the GPU
 * (device-to-device copies), and a mix of all of them with a dtype change.
 */
#include "test_cuda_common.c"

enum { FROM_PAGEABLE, FROM_PINNED, FROM_SAME, FROM_OTHER, FROM_MIXED };
static const char *const FROM_NAMES[] = {"pageable", "pinned", "same device", "other logical device", "mixed"};

/* Slice i of n: a host tensor (the reference) and where the stack reads it from. */
static int make_slice(ab_runtime *rt, int from, int i, DLDataType dt, int64_t h, int64_t w, ab_tensor **ref,
                      ab_tensor **sl) {
  int64_t shape[2] = {h, w};
  CHECK_OK(toc_host_tensor(rt, dt, 2, shape, 1, i * 131, ref));
  int where = from == FROM_MIXED ? i % 4 : from;
  ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
  switch (where) {
  case FROM_PAGEABLE:
    *sl = ab_tensor_retain(*ref);
    return 0;
  case FROM_PINNED:
    CHECK_OK(ab_tensor_alloc_pinned(rt, dt, 2, shape, sl));
    memcpy(ab_tensor_dl(*sl)->data, ab_tensor_dl(*ref)->data, ab_tensor_nbytes(*ref));
    return 0;
  default:
    return toc_convert(rt, *ref, tcu_dev(where == FROM_SAME ? 0 : 1), &same, sl);
  }
}

static int stack_case(ab_runtime *rt, int from, int n, int64_t h, int64_t w, DLDataType sdt, DLDataType ddt, int mode) {
  ab_tensor **refs = calloc((size_t)n, sizeof *refs), **sls = calloc((size_t)n, sizeof *sls);
  CHECK(refs && sls);
  for (int i = 0; i < n; i++) CHECK_OK(make_slice(rt, from, i, sdt, h, w, &refs[i], &sls[i]));
  ab_convert_options o = toc_copt(ddt, mode), ro = o;
  ab_future *f, *rf;
  CHECK_OK(ab_stack(rt, sls, (size_t)n, tcu_dev(0), &o, &f));
  CHECK_OK(ab_stack(rt, refs, (size_t)n, th_host(0), &ro, &rf));
  ab_tensor *got, *ref, *back;
  CHECK_OK(toc_take(f, &got));
  CHECK_OK(toc_take(rf, &ref));
  CHECK_EQ_INT(ab_tensor_device(got).kind, AB_CUDA);
  CHECK_EQ_INT(ab_tensor_dl(got)->shape[0], n);
  CHECK_OK(toc_to_host(rt, got, &back));
  char label[96];
  snprintf(label, sizeof label, "stack %d x %lldx%lld from %s, %s", n, (long long)h, (long long)w, FROM_NAMES[from],
           mode ? "stretch" : "saturate");
  int bad = tcu_same(back, ref, label);
  ab_tensor_release(got);
  ab_tensor_release(ref);
  ab_tensor_release(back);
  for (int i = 0; i < n; i++) {
    ab_tensor_release(refs[i]);
    ab_tensor_release(sls[i]);
  }
  free(refs);
  free(sls);
  return bad;
}

static int runtime2(ab_runtime **rt) {
  ab_runtime_options opt;
  tcu_options(&opt, 2);
  return tcu_runtime_opt(rt, &opt, 2, 1);
}

#define RT2(rtp)                                                                                \
  do {                                                                                          \
    int rc_ = runtime2(rtp);                                                                    \
    if (rc_ == TEST_SKIP) return TEST_SKIP;                                                     \
    CHECK_OK(rc_);                                                                              \
  } while (0)

static int sources_test(int from) {
  ab_runtime *rt;
  RT2(&rt);
  int bad = 0;
  /* 1000 small slices (the staging ring packs them; gather runs 8 at a time), a few big ones
   * (whole chunks; batched copies on the GPU), a count that is not a multiple of 8 */
  bad |= stack_case(rt, from, 1000, 16, 24, TH_U16, TH_U16, AB_CAST_SATURATE);
  bad |= stack_case(rt, from, 5, 1024, 600, TH_U16, TH_U16, AB_CAST_SATURATE);
  bad |= stack_case(rt, from, 13, 33, 17, TH_U8, TH_U8, AB_CAST_SATURATE);
  /* a cast while stacking, both modes: stretch uses one range over every slice */
  bad |= stack_case(rt, from, 11, 40, 30, TH_F32, TH_U16, AB_CAST_SATURATE);
  bad |= stack_case(rt, from, 11, 40, 30, TH_F32, TH_U16, AB_CAST_STRETCH);
  bad |= stack_case(rt, from, 9, 20, 20, TH_F64, th_dt(kDLInt, 8), AB_CAST_STRETCH);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

static int test_stack_pageable(void) { return sources_test(FROM_PAGEABLE); }

/* 98 MB of pageable slices: several 16 MiB windows filled by the host's workers, each sent while
 * the next fills; and with pinned and device slices mixed in. */
static int test_stack_windows(void) {
  ab_runtime *rt;
  RT2(&rt);
  int bad = stack_case(rt, FROM_PAGEABLE, 48, 1024, 1000, TH_U16, TH_U16, AB_CAST_SATURATE);
  bad |= stack_case(rt, FROM_MIXED, 41, 1000, 999, TH_U16, TH_U16, AB_CAST_SATURATE);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}
static int test_stack_pinned(void) { return sources_test(FROM_PINNED); }
static int test_stack_same_device(void) { return sources_test(FROM_SAME); }
static int test_stack_other_logical(void) { return sources_test(FROM_OTHER); }
static int test_stack_mixed(void) { return sources_test(FROM_MIXED); }

/* unstack on the volume's own device: views that share its memory; onto the other logical
 * device and the host: copies, each equal to its slice. */
static int test_unstack(void) {
  ab_runtime *rt;
  RT2(&rt);
  enum { N = 6 };
  int64_t shape[3] = {N, 50, 70};
  ab_tensor *h, *g;
  CHECK_OK(toc_host_tensor(rt, TH_I32, 3, shape, 0, 0, &h));
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), NULL, &g));
  ab_device targets[3] = {tcu_dev(0), tcu_dev(1), th_host(0)};
  for (int t = 0; t < 3; t++) {
    ab_future *fs[N];
    CHECK_OK(ab_unstack(rt, g, targets[t], NULL, fs));
    for (int i = 0; i < N; i++) {
      ab_tensor *s, *back, *ref;
      CHECK_OK(toc_take(fs[i], &s));
      CHECK_EQ_INT(ab_tensor_device(s).kind, targets[t].kind);
      CHECK_EQ_INT(ab_tensor_device(s).index, targets[t].index);
      if (t == 0) /* a view: the volume's memory, slice i's offset */
        CHECK_EQ_PTR(ab_tensor_dl(s)->data, ab_tensor_dl(g)->data);
      CHECK_OK(ab_tensor_index(h, i, &ref));
      ab_tensor *refc;
      ab_convert_options fc = AB_CONVERT_OPTIONS_INIT;
      fc.force_copy = true;
      CHECK_OK(toc_convert(rt, ref, th_host(0), &fc, &refc));
      if (targets[t].kind == AB_HOST) back = ab_tensor_retain(s);
      else CHECK_OK(toc_to_host(rt, s, &back));
      CHECK_OK(toc_same(back, refc, "unstack"));
      ab_tensor_release(s);
      ab_tensor_release(back);
      ab_tensor_release(ref);
      ab_tensor_release(refc);
    }
  }
  ab_tensor_release(g);
  ab_tensor_release(h);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(stack_pageable, 120),
    TEST_ENTRY_T(stack_windows, 120),
    TEST_ENTRY_T(stack_pinned, 120),
    TEST_ENTRY_T(stack_same_device, 120),
    TEST_ENTRY_T(stack_other_logical, 120),
    TEST_ENTRY_T(stack_mixed, 120),
    TEST_ENTRY_T(unstack, 60),
    TEST_END,
};

AB_TEST_MAIN(tests)
