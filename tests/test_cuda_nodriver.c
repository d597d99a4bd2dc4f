/*
 * test_cuda_nodriver.c: the runtime with the CUDA backend and whatever the machine has. It runs
 * everywhere (never skips): without a driver (error 35) or a GPU (100) the runtime must come up
 * with zero CUDA devices and refuse CUDA requests with AB_ENODEV; with a GPU, the CUDA devices
 * must be there and pinned tensors pinned.
 */
#include "test_cuda_common.c"

static int ncuda(ab_runtime *rt) { return toc_count(rt, AB_CUDA); }

static int test_runtime_comes_up(void) {
  ab_runtime *rt;
  ab_runtime_options o;
  tcu_options(&o, 1);
  CHECK_OK(ab_runtime_create(&o, &rt));
  int n = ncuda(rt);
  fprintf(stderr, "# %d CUDA device(s)\n", n);
  CHECK(n >= 0);
  CHECK(toc_count(rt, AB_HOST) == 1); /* the host is there either way */
  /* a host task still runs */
  atomic_int ran = 0;
  ab_future *f;
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, &ran, &f));
  CHECK_OK(toc_take(f, NULL));
  CHECK_EQ_INT(atomic_load(&ran), 1);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* CUDA device n (one past the last) does not exist: every entry point says AB_ENODEV. */
static int test_missing_device_is_enodev(void) {
  ab_runtime *rt;
  ab_runtime_options o;
  tcu_options(&o, 1);
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_device missing = tcu_dev(ncuda(rt));
  int64_t shape[1] = {16};
  ab_tensor *t = NULL;
  CHECK_EQ_INT(ab_tensor_alloc(rt, missing, TH_F32, 1, shape, &t), AB_ENODEV);
  CHECK_NULL(t);
  ab_device_info info;
  CHECK_EQ_INT(ab_device_info_get(rt, missing, &info), AB_ENODEV);
  ab_tensor *h;
  CHECK_OK(toc_host_tensor(rt, TH_F32, 1, shape, 0, 0, &h));
  ab_future *f = NULL;
  CHECK_EQ_INT(ab_convert(rt, h, missing, NULL, &f), AB_ENODEV);
  CHECK_NULL(f);
  ab_tensor *slices[1] = {h};
  CHECK_EQ_INT(ab_stack(rt, slices, 1, missing, NULL, &f), AB_ENODEV);
  CHECK_NULL(f);
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = missing;
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ENODEV);
  /* AUTO placement over CUDA devices when there are none: no device either */
  if (ncuda(rt) == 0) {
    d.place.policy = AB_PLACE_AUTO;
    d.place.device = tcu_dev(AB_ANY);
    CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ENODEV);
  }
  ab_tensor_release(h);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Pinned where there is a GPU, ordinary host memory where there is not (the documented
 * fallback); usable as a host tensor either way, and freed back to the host budget. */
static int test_pinned_alloc(void) {
  ab_runtime *rt;
  ab_runtime_options o;
  tcu_options(&o, 1);
  CHECK_OK(ab_runtime_create(&o, &rt));
  int64_t shape[2] = {3, 1000};
  ab_tensor *p = NULL;
  CHECK_OK(ab_tensor_alloc_pinned(rt, TH_U16, 2, shape, &p));
  const DLTensor *dl = ab_tensor_dl(p);
  CHECK_EQ_INT(dl->device.device_type, ncuda(rt) > 0 ? kDLCUDAHost : kDLCPU);
  CHECK_EQ_INT(ab_tensor_device(p).kind, AB_HOST);
  CHECK(ab_tensor_is_contiguous(p));
  CHECK_EQ_U64(ab_tensor_nbytes(p), 6000);
  memset(dl->data, 0xab, 6000); /* writable host memory */
  CHECK(toc_mem_used(rt, AB_HOST) >= 6000);
  ab_tensor *q = NULL; /* host -> host conversion reads it like any host tensor */
  ab_convert_options co = toc_copt(TH_U8, AB_CAST_SATURATE);
  CHECK_OK(toc_convert(rt, p, th_host(0), &co, &q));
  CHECK_EQ_INT(((unsigned char *)ab_tensor_dl(q)->data)[2999], 255); /* 0xabab saturates */
  ab_tensor_release(q);
  ab_tensor_release(p);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_HOST, 0), 0);
  CHECK_EQ_INT(ab_tensor_alloc_pinned(rt, th_dt(kDLFloat, 7), 1, shape, &p), AB_EDTYPE);
  CHECK_EQ_INT(ab_tensor_alloc_pinned(NULL, TH_U8, 1, shape, &p), AB_EINVAL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* kinds[AB_CUDA].disabled: no CUDA device, even on a GPU machine. */
static int test_disabled(void) {
  ab_runtime *rt;
  ab_runtime_options o;
  tcu_options(&o, 1);
  o.kinds[AB_CUDA].disabled = true;
  CHECK_OK(ab_runtime_create(&o, &rt));
  CHECK_EQ_INT(ncuda(rt), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Logical devices multiply whatever there is: zero stays zero, N GPUs give 3N. */
static int test_logical_split_count(void) {
  ab_runtime *rt1, *rt3;
  ab_runtime_options o;
  tcu_options(&o, 1);
  CHECK_OK(ab_runtime_create(&o, &rt1));
  tcu_options(&o, 3);
  CHECK_OK(ab_runtime_create(&o, &rt3));
  CHECK_EQ_INT(ncuda(rt3), 3 * ncuda(rt1));
  CHECK_OK(ab_runtime_destroy(rt1, AB_DRAIN));
  CHECK_OK(ab_runtime_destroy(rt3, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(runtime_comes_up),
    TEST_ENTRY(missing_device_is_enodev),
    TEST_ENTRY(pinned_alloc),
    TEST_ENTRY(disabled),
    TEST_ENTRY(logical_split_count),
    TEST_END,
};

AB_TEST_MAIN(tests)
