/*
 * test_cuda_oom.c: the OOM ladder, fault injection, cancellation and shutdown on CUDA devices.
 * Skips (77) without a CUDA device.
 *
 * The ladder is driven two ways: by the runtime's budget (memory_limit), and by the GPU itself
 * (a budget larger than the GPU, so that the pool's cudaErrorMemoryAllocation is what fails).
 */
#include "test_cuda_common.c"

#define L_BYTES ((uint64_t)64 << 20)

static void oom_options(ab_runtime_options *o) {
  tcu_options(o, 1);
  o->kinds[AB_CUDA].memory_limit = L_BYTES;
  o->kinds[AB_CUDA].workers_per_device = 1;
}

/* A conversion that cannot fit while two halves of the budget are held parks, and completes
 * with the right data once one half is released. */
static int test_conversion_parks(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  int64_t half[1] = {(int64_t)(L_BYTES / 2)};
  ab_tensor *hold[2];
  for (int i = 0; i < 2; i++) CHECK_OK(ab_tensor_alloc(rt, tcu_dev(0), TH_U8, 1, half, &hold[i]));
  int64_t shape[1] = {(int64_t)(L_BYTES / 8 / 8)};
  ab_tensor *h, *got, *back, *ref;
  CHECK_OK(toc_host_tensor(rt, TH_F64, 1, shape, 1, 5, &h));
  ab_convert_options o = toc_copt(th_dt(kDLInt, 16), AB_CAST_STRETCH);
  ab_future *f;
  CHECK_OK(ab_convert(rt, h, tcu_dev(0), &o, &f));
  CHECK_EQ_INT(ab_future_wait(f, TH_MS(150)), AB_ETIMEDOUT); /* no memory while both are held */
  ab_device_stats st;
  CHECK_OK(th_stats(rt, tcu_dev(0), &st));
  CHECK(st.oom_events > 0 && st.oom_trims > 0 && st.oom_syncs > 0 && st.oom_parks > 0);
  ab_tensor_release(hold[0]);
  CHECK_OK(toc_take(f, &got));
  CHECK_OK(toc_to_host(rt, got, &back));
  ab_convert_options ro = o;
  ro.force_copy = true;
  CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &ref));
  CHECK_OK(toc_same(back, ref, "parked conversion"));
  ab_tensor *all[] = {got, back, ref, h, hold[1]};
  for (int i = 0; i < 5; i++) ab_tensor_release(all[i]);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_CUDA, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* no_wait: AB_ENOMEM with a memory report; the input is intact and the same work succeeds
 * once memory is back. */
static int test_no_wait_fails_cleanly(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  opt.oom.no_wait = true;
  TCU_RUNTIME(&rt, &opt, 1, 1);
  int64_t most[1] = {(int64_t)(L_BYTES - (1 << 20))};
  ab_tensor *hold, *h, *copy, *got, *back;
  CHECK_OK(ab_tensor_alloc(rt, tcu_dev(0), TH_U8, 1, most, &hold));
  CHECK_OK(tcu_bytes(rt, 4 << 20, false, &h));
  ab_convert_options fc = AB_CONVERT_OPTIONS_INIT;
  fc.force_copy = true;
  CHECK_OK(toc_convert(rt, h, th_host(0), &fc, &copy));
  ab_future *f;
  CHECK_OK(ab_convert(rt, h, tcu_dev(0), NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  CHECK_NOT_NULL(ab_future_message(f));
  CHECK(strstr(ab_future_message(f), "out of memory on cuda:0") != NULL);
  ab_future_release(f);
  CHECK_OK(toc_same(h, copy, "input after ENOMEM"));
  ab_tensor_release(hold);
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), NULL, &got));
  CHECK_OK(toc_to_host(rt, got, &back));
  CHECK_OK(toc_same(back, h, "after memory came back"));
  ab_tensor *all[] = {h, copy, got, back};
  for (int i = 0; i < 4; i++) ab_tensor_release(all[i]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* The GPU runs out before the budget does: the pool's allocation failure walks the same ladder
 * (trim, drain_frees) and ends in AB_ENOMEM, and the device still works afterwards. */
static int test_pool_exhaustion(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 1);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  ab_device_info info;
  CHECK_OK(ab_device_info_get(rt, tcu_dev(0), &info));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  opt.kinds[AB_CUDA].memory_limit = info.memory_total * 4;
  TCU_RUNTIME(&rt, &opt, 1, 1);
  int64_t too_big[1] = {(int64_t)(info.memory_total + info.memory_total / 2)};
  ab_tensor *t = NULL;
  CHECK_EQ_INT(ab_tensor_alloc(rt, tcu_dev(0), TH_U8, 1, too_big, &t), AB_ENOMEM);
  CHECK_NULL(t);
  ab_device_stats st;
  CHECK_OK(th_stats(rt, tcu_dev(0), &st));
  CHECK(st.oom_events > 0 && st.oom_trims > 0 && st.oom_syncs > 0);
  CHECK_EQ_U64(st.mem_used, 0); /* the failed reservation was given back */
  ab_tensor *h, *g, *back;
  CHECK_OK(tcu_bytes(rt, 1 << 20, false, &h));
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), NULL, &g));
  CHECK_OK(toc_to_host(rt, g, &back));
  CHECK_OK(toc_same(back, h, "after exhaustion"));
  ab_tensor_release(h);
  ab_tensor_release(g);
  ab_tensor_release(back);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int set_fault(ab_runtime *rt, int op, uint64_t nth, int64_t count) {
  ab_fault_spec f = {.op = op, .device = tcu_dev(AB_ANY), .nth = nth, .count = count};
  return ab_runtime_fault(rt, &f);
}

/* One injected fault of each kind: an allocation fault is absorbed by the ladder (the retry
 * succeeds), a copy or launch fault fails that conversion with AB_EFAULT; the next one is
 * fine either way, and nothing leaks. */
static int fault_case(int op, DLDataType to) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  int64_t shape[1] = {100000};
  ab_tensor *h, *got = NULL, *back, *ref;
  CHECK_OK(toc_host_tensor(rt, TH_F32, 1, shape, 1, 0, &h));
  ab_convert_options o = toc_copt(to, AB_CAST_SATURATE), ro = o;
  ro.force_copy = true;
  CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &ref));
  CHECK_OK(set_fault(rt, op, 1, 1));
  int rc = toc_convert(rt, h, tcu_dev(0), &o, &got);
  if (op == AB_FAULT_ALLOC) CHECK_OK(rc);
  else CHECK_EQ_INT(rc, AB_EFAULT);
  ab_tensor_release(got);
  ab_device_stats st;
  CHECK_OK(th_stats(rt, tcu_dev(0), &st));
  CHECK_EQ_U64(st.faults_injected, 1);
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), &o, &got));
  CHECK_OK(toc_to_host(rt, got, &back));
  CHECK_OK(tcu_same(back, ref, "after the fault"));
  ab_tensor *all[] = {h, got, back, ref};
  for (int i = 0; i < 4; i++) ab_tensor_release(all[i]);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_CUDA, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_fault_alloc(void) { return fault_case(AB_FAULT_ALLOC, TH_U16); }
static int test_fault_copy(void) { return fault_case(AB_FAULT_COPY, TH_F32); }
static int test_fault_launch(void) { return fault_case(AB_FAULT_LAUNCH, TH_U16); }

/* Every allocation fails: the pinned allocation says AB_ENOMEM, and so does a conversion once
 * its ladder is done (no_wait). */
static int test_fault_alloc_every(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  opt.oom.no_wait = true;
  TCU_RUNTIME(&rt, &opt, 1, 1);
  ab_fault_spec hf = {.op = AB_FAULT_ALLOC, .device = th_host(0), .nth = 1, .count = -1};
  CHECK_OK(ab_runtime_fault(rt, &hf));
  int64_t shape[1] = {1000};
  ab_tensor *p = NULL;
  CHECK_EQ_INT(ab_tensor_alloc_pinned(rt, TH_U8, 1, shape, &p), AB_ENOMEM);
  CHECK_NULL(p);
  ab_fault_spec off = {0};
  CHECK_OK(ab_runtime_fault(rt, &off));
  ab_tensor *h;
  CHECK_OK(tcu_bytes(rt, 1000, false, &h));
  CHECK_OK(set_fault(rt, AB_FAULT_ALLOC, 1, -1));
  ab_tensor *got = NULL;
  CHECK_EQ_INT(toc_convert(rt, h, tcu_dev(0), NULL, &got), AB_ENOMEM);
  ab_tensor_release(h);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A conversion queued behind a blocked worker is cancelled and never runs; the worker then
 * goes on. */
static int test_cancel_queued(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  TCU_RUNTIME(&rt, &opt, 1, 1);
  th_gate g;
  th_gate_init(&g);
  ab_future *gate;
  CHECK_OK(th_submit_gate(rt, tcu_dev(0), &g, &gate));
  ab_tensor *h;
  CHECK_OK(tcu_bytes(rt, 1 << 20, false, &h));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.place.policy = AB_PLACE_EXPLICIT;
  o.place.device = tcu_dev(0);
  ab_future *f;
  CHECK_OK(ab_convert(rt, h, tcu_dev(0), &o, &f));
  CHECK_OK(ab_future_cancel(f));
  th_gate_open_all(&g);
  CHECK_OK(toc_take(gate, NULL));
  CHECK_EQ_INT(toc_take(f, NULL), AB_ECANCELED);
  ab_tensor *got;
  CHECK_OK(toc_convert(rt, h, tcu_dev(0), NULL, &got));
  ab_tensor_release(got);
  ab_tensor_release(h);
  th_gate_destroy(&g);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_CUDA, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Destroy with work in flight on every stream: AB_DRAIN completes everything with status 0,
 * AB_CANCEL completes everything with 0 or AB_ECANCELED; every future completes either way and
 * results outlive the runtime. */
static int shutdown_case(int how) {
  ab_runtime *rt;
  ab_runtime_options opt;
  tcu_options(&opt, 2);
  TCU_RUNTIME(&rt, &opt, 2, 1);
  enum { N = 40 };
  ab_tensor *h;
  CHECK_OK(tcu_bytes(rt, 3 << 20, false, &h));
  ab_future *f[N];
  for (int i = 0; i < N; i++) {
    ab_convert_options o = toc_copt(i % 2 ? TH_U16 : TH_U8, AB_CAST_SATURATE);
    CHECK_OK(ab_convert(rt, h, tcu_dev(i % 2), &o, &f[i]));
  }
  CHECK_OK(ab_runtime_destroy(rt, how));
  int ok = 0;
  for (int i = 0; i < N; i++) {
    CHECK_OK(ab_future_wait(f[i], 0)); /* complete before destroy returned */
    int st = ab_future_status(f[i]);
    if (how == AB_DRAIN) CHECK_OK(st);
    else CHECK(st == 0 || st == AB_ECANCELED);
    ok += st == 0;
    ab_tensor *t = NULL;
    if (st == 0) {
      CHECK_OK(ab_future_result(f[i], &t));
      CHECK_EQ_U64(ab_tensor_nbytes(t), (size_t)(3 << 20) * (i % 2 ? 2 : 1));
    }
    ab_tensor_release(t);
    ab_future_release(f[i]);
  }
  fprintf(stderr, "# %d of %d completed\n", ok, N);
  ab_tensor_release(h);
  return 0;
}

static int test_shutdown_drain(void) { return shutdown_case(AB_DRAIN); }
static int test_shutdown_cancel(void) { return shutdown_case(AB_CANCEL); }

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(conversion_parks, 60),
    TEST_ENTRY_T(no_wait_fails_cleanly, 60),
    TEST_ENTRY_T(pool_exhaustion, 60),
    TEST_ENTRY_T(fault_alloc, 60),
    TEST_ENTRY_T(fault_copy, 60),
    TEST_ENTRY_T(fault_launch, 60),
    TEST_ENTRY_T(fault_alloc_every, 60),
    TEST_ENTRY_T(cancel_queued, 60),
    TEST_ENTRY_T(shutdown_drain, 60),
    TEST_ENTRY_T(shutdown_cancel, 60),
    TEST_END,
};

AB_TEST_MAIN(tests)
