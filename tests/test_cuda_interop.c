/*
 * test_cuda_interop.c: the CUDA backend next to CUDA code outside it, which is how torch and
 * CuPy meet it in one process. Each test uses the CUDA runtime directly (the test links the
 * same static cudart as the library) and skips (77) without a GPU.
 *
 *   launch_after_pending_poll   a worker polls an event that is not done yet, then launches:
 *                               the poll's cudaErrorNotReady must not fail the launch
 *   foreign_cuda_memory         cudaMalloc'd memory imported as a kDLCUDA tensor converts,
 *                               casts and stacks on any logical device of its GPU
 *   failed_copy_is_named        a copy from a bad device pointer fails its future with a
 *                               message naming the call and the CUDA error; the runtime goes on
 *   consumer_stream_orders_the_free
 *                               exported memory dropped while the consumer's copy is still
 *                               queued on the legacy default stream is not reused before it
 *   framework_oom_gets_memory_back
 *                               a task whose own cudaMalloc runs out gets the pool's cached
 *                               memory back before its retry
 */
#include <cuda_runtime_api.h>

#include "test_cuda_common.c"

#define CU_OK(x) CHECK_EQ_INT((int)(x), (int)cudaSuccess)

/* ---- a poll that finds the event pending, then a launch ---------------------------------- */
/* Keeps the worker's stream busy for tens of milliseconds: memsets over a scratch gigabyte. */
static int busy_task(ab_ctx *c, void *arg) {
  (void)arg;
  void *p;
  size_t bytes = (size_t)1 << 30;
  int rc = ab_ctx_alloc(c, bytes, &p);
  for (int i = 0; rc == 0 && i < 60; i++)
    if (cudaMemsetAsync(p, i, bytes, (cudaStream_t)ab_ctx_stream(c)) != cudaSuccess) rc = AB_EDEVICE;
  return rc;
}

static int test_launch_after_pending_poll(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  opt.kinds[AB_CUDA].workers_per_device = 1; /* the cast runs on the thread that polled */
  TCU_RUNTIME(&rt, &opt, 1, 1);
  int64_t shape[1] = {100000};
  ab_tensor *h, *ref, *got, *back;
  CHECK_OK(toc_host_tensor(rt, TH_U16, 1, shape, 0, 3, &h));
  ab_convert_options o = toc_copt(TH_F32, AB_CAST_SATURATE), ro = o;
  ro.force_copy = true;
  CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &ref));
  for (int round = 0; round < 3; round++) {
    ab_future *busy, *cast;
    CHECK_OK(th_submit_fn(rt, tcu_dev(0), busy_task, NULL, &busy));
    CHECK_OK(ab_convert(rt, h, tcu_dev(0), &o, &cast)); /* queued behind it on the same worker */
    int rc = toc_take(cast, &got);
    CHECK_MSG(rc == 0, "the cast after a pending poll: %d%s", rc, th_errstr(rc));
    CHECK_OK(toc_take(busy, NULL));
    CHECK_OK(toc_to_host(rt, got, &back));
    CHECK_OK(toc_same(back, ref, "cast after a pending poll"));
    ab_tensor_release(got);
    ab_tensor_release(back);
  }
  ab_tensor_release(h);
  ab_tensor_release(ref);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- memory from cudaMalloc, as torch or CuPy would hand it over --------------------------- */
static void cuda_free_ctx(void *p) { cudaFree(p); }

/* n u16 elements of pattern `seed` in cudaMalloc'd memory, as a kDLCUDA tensor of GPU gpu. */
static int foreign_tensor(ab_runtime *rt, int gpu, int64_t n, int seed, ab_tensor **host, ab_tensor **dev) {
  int64_t shape[1] = {n};
  CHECK_OK(toc_host_tensor(rt, TH_U16, 1, shape, 0, seed, host));
  void *p;
  CU_OK(cudaSetDevice(gpu));
  CU_OK(cudaMalloc(&p, (size_t)n * 2));
  CU_OK(cudaMemcpy(p, ab_tensor_dl(*host)->data, (size_t)n * 2, cudaMemcpyHostToDevice));
  DLTensor dl = {.data = p, .device = {kDLCUDA, gpu}, .ndim = 1, .dtype = {kDLUInt, 16, 1}, .shape = shape};
  CHECK_OK(ab_tensor_wrap(&dl, 0, cuda_free_ctx, p, dev));
  return 0;
}

static int test_foreign_cuda_memory(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 2); /* cuda:0 and cuda:1 share GPU 0 */
  TCU_RUNTIME(&rt, &opt, 2, 1);
  ab_tensor *h, *g, *got, *back, *ref;
  CHECK_OK(foreign_tensor(rt, 0, 300001, 5, &h, &g));
  CHECK_OK(toc_to_host(rt, g, &back)); /* GPU -> host */
  CHECK_OK(toc_same(back, h, "foreign -> host"));
  ab_tensor_release(back);
  ab_convert_options o = toc_copt(TH_F32, AB_CAST_SATURATE), ro = o;
  ro.force_copy = true;
  CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &ref));
  for (int d = 0; d < 2; d++) { /* a cast on either logical device of the GPU */
    CHECK_OK(toc_convert(rt, g, tcu_dev(d), &o, &got));
    CHECK_EQ_INT(ab_tensor_device(got).index, d);
    CHECK_OK(toc_to_host(rt, got, &back));
    CHECK_OK(toc_same(back, ref, "foreign cast"));
    ab_tensor_release(got);
    ab_tensor_release(back);
  }
  ab_tensor_release(ref);
  /* stacked with itself and a host slice, onto each logical device and the host */
  ab_tensor *sl[3] = {g, h, g}, *hs[3] = {h, h, h};
  ab_device dst[3] = {tcu_dev(0), tcu_dev(1), th_host(0)};
  ab_future *f;
  CHECK_OK(ab_stack(rt, hs, 3, th_host(0), NULL, &f));
  CHECK_OK(toc_take(f, &ref));
  for (int k = 0; k < 3; k++) {
    CHECK_OK(ab_stack(rt, sl, 3, dst[k], NULL, &f));
    CHECK_OK(toc_take(f, &got));
    if (dst[k].kind == AB_HOST) back = ab_tensor_retain(got);
    else CHECK_OK(toc_to_host(rt, got, &back));
    CHECK_OK(toc_same(back, ref, "foreign stack"));
    ab_tensor_release(got);
    ab_tensor_release(back);
  }
  ab_tensor_release(ref);
  ab_tensor_release(g);
  ab_tensor_release(h);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- a failing CUDA call names itself ------------------------------------------------------ */
static int test_failed_copy_is_named(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  int64_t shape[1] = {4096};
  DLTensor dl = {.data = (void *)(uintptr_t)0x1000, .device = {kDLCUDA, 0}, .ndim = 1, .dtype = {kDLUInt, 8, 1},
                 .shape = shape}; /* no allocation of this process is there */
  ab_tensor *bad;
  CHECK_OK(ab_tensor_wrap(&dl, 0, NULL, NULL, &bad));
  ab_future *f;
  CHECK_OK(ab_convert(rt, bad, th_host(0), NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_EDEVICE);
  const char *m = ab_future_message(f);
  fprintf(stderr, "# message: %s\n", m ? m : "(none)");
  CHECK(m && strstr(m, "cudaMemcpyAsync failed (devices/cuda/cuda.c:") && strstr(m, ": cudaError"));
  ab_future_release(f);
  ab_tensor_release(bad);
  /* the device still works */
  ab_tensor *h, *g, *back;
  CHECK_OK(tcu_bytes(rt, 1 << 20, false, &h));
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), NULL, &g));
  CHECK_OK(toc_to_host(rt, g, &back));
  CHECK_OK(toc_same(back, h, "after the failed copy"));
  ab_tensor *all[] = {h, g, back};
  for (int i = 0; i < 3; i++) ab_tensor_release(all[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- exported memory and the consumer's stream ---------------------------------------------- */
static int test_consumer_stream_orders_the_free(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  opt.kinds[AB_CUDA].workers_per_device = 1;
  TCU_RUNTIME(&rt, &opt, 1, 1);
  const size_t N = (size_t)256 << 20, DELAY = (size_t)1 << 30;
  ab_tensor *a, *b, *g, *g2;
  CHECK_OK(tcu_bytes(rt, N, false, &a));
  CHECK_OK(tcu_bytes(rt, N, false, &b));
  memset(ab_tensor_dl(b)->data, 0xee, N);
  CHECK_OK(toc_convert(rt, a, tcu_dev(0), NULL, &g));
  DLManagedTensorVersioned *m;
  CHECK_OK(ab_tensor_export(g, &m));
  ab_tensor_release(g); /* the consumer's reference is the last one */
  /* The consumer: its default (legacy) stream is busy for a while, then reads the tensor. */
  void *copy, *delay;
  CU_OK(cudaSetDevice(0));
  CU_OK(cudaMalloc(&copy, N));
  CU_OK(cudaMalloc(&delay, DELAY));
  CU_OK(cudaDeviceSynchronize());
  for (int i = 0; i < 120; i++) CU_OK(cudaMemsetAsync(delay, i, DELAY, cudaStreamLegacy)); /* tens of ms */
  CU_OK(cudaMemcpyAsync(copy, m->dl_tensor.data, N, cudaMemcpyDeviceToDevice, cudaStreamLegacy));
  m->deleter(m); /* done with it, as far as the host knows: its copy has not run yet */
  /* New data of the same size at once: the pool must not hand the block over before the copy. */
  CHECK_OK(toc_convert(rt, b, tcu_dev(0), NULL, &g2));
  CU_OK(cudaDeviceSynchronize());
  ab_tensor *seen;
  int64_t shape[1] = {(int64_t)N};
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, shape, &seen));
  CU_OK(cudaMemcpy(ab_tensor_dl(seen)->data, copy, N, cudaMemcpyDeviceToHost));
  CHECK_OK(toc_same(seen, a, "what the consumer read"));
  cudaFree(copy);
  cudaFree(delay);
  ab_tensor *all[] = {a, b, g2, seen};
  for (int i = 0; i < 4; i++) ab_tensor_release(all[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- a framework's out-of-memory inside a task ---------------------------------------------- */
typedef struct {
  size_t bytes;
  atomic_int calls;
} big_alloc;

static int big_alloc_task(ab_ctx *c, void *arg) {
  (void)ab_ctx_stream(c); /* the worker's GPU current */
  big_alloc *b = arg;
  atomic_fetch_add(&b->calls, 1);
  void *p;
  cudaError_t e = cudaMalloc(&p, b->bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    return AB_ENOMEM; /* as the Python executor does for torch's OutOfMemoryError */
  }
  if (e != cudaSuccess) return AB_EDEVICE;
  cudaFree(p);
  return 0;
}

static int test_framework_oom_gets_memory_back(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  ab_device_info info;
  CHECK_OK(ab_device_info_get(rt, tcu_dev(0), &info));
  int64_t half[1] = {(int64_t)(info.memory_total / 2)};
  ab_tensor *t;
  CHECK_OK(ab_tensor_alloc(rt, tcu_dev(0), TH_U8, 1, half, &t));
  ab_tensor_release(t); /* back in the pool's cache, not the driver's */
  size_t free_b = 0, total_b = 0;
  CU_OK(cudaMemGetInfo(&free_b, &total_b));
  fprintf(stderr, "# free after the release: %zu of %zu\n", free_b, total_b);
  big_alloc b = {.bytes = total_b / 10 * 7};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = big_alloc_task;
  d.arg = &b;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = tcu_dev(0);
  ab_oom_policy pol = {.deadline_ns = TH_SEC(5)};
  d.place.oom = &pol;
  ab_future *f;
  CHECK_OK(ab_submit(rt, &d, &f));
  int rc = toc_take(f, NULL);
  fprintf(stderr, "# %d call(s)\n", atomic_load(&b.calls));
  CHECK_MSG(rc == 0, "the task: %d%s", rc, th_errstr(rc));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(launch_after_pending_poll, 60),
    TEST_ENTRY_T(foreign_cuda_memory, 60),
    TEST_ENTRY_T(failed_copy_is_named, 60),
    TEST_ENTRY_T(consumer_stream_orders_the_free, 60),
    TEST_ENTRY_T(framework_oom_gets_memory_back, 60),
    TEST_END,
};

AB_TEST_MAIN(tests)
