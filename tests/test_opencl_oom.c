/*
 * test_opencl_oom.c: the OOM ladder on OpenCL devices with the runtime's own budget
 * (kinds[AB_OPENCL].memory_limit = L per physical device).
 *   - oversubscription (2x L over time) completes 100% through parking, no failures;
 *   - oom.no_wait: the same fails cleanly with AB_ENOMEM and a memory report, inputs intact;
 *   - allow_reroute with AUTO placement moves a task off a full device.
 */
#include "test_opencl_common.c"

#define L_BYTES ((uint64_t)8 << 20)
#define IN_BYTES 4096

typedef struct {
  uint64_t bytes;       /* the output each task allocates */
  atomic_int runs;      /* task bodies started (retries included) */
  atomic_int enomem;    /* bodies that returned AB_ENOMEM */
  atomic_int device[8]; /* where the successful run was */
} alloc_arg;

/* Allocates a `bytes` output on its device and returns it; AB_ENOMEM parks (safe to rerun). */
static int alloc_task(ab_ctx *c, void *arg) {
  alloc_arg *a = arg;
  atomic_fetch_add(&a->runs, 1);
  ab_tensor *t = NULL;
  int64_t shape[1] = {(int64_t)a->bytes};
  int rc = ab_ctx_alloc_tensor(c, TH_U8, 1, shape, &t);
  if (rc != 0) {
    if (rc == AB_ENOMEM) atomic_fetch_add(&a->enomem, 1);
    return rc;
  }
  ab_device d = ab_ctx_device(c);
  if (d.index >= 0 && d.index < 8) atomic_fetch_add(&a->device[d.index], 1);
  return ab_ctx_set_output(c, t);
}

static int submit_alloc(ab_runtime *rt, int policy, int index, alloc_arg *a, ab_tensor *in, const ab_oom_policy *oom,
                        ab_future **out) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = alloc_task;
  d.arg = a;
  d.place.policy = policy;
  d.place.device = (ab_device){AB_OPENCL, index};
  d.place.oom = oom;
  ab_input input = {in, NULL};
  if (in) {
    d.inputs = &input;
    d.ninputs = 1;
  }
  return ab_submit(rt, &d, out);
}

static void oom_options(ab_runtime_options *o) {
  toc_options(o);
  o->kinds[AB_OPENCL].memory_limit = L_BYTES;
}

/* Every OpenCL device: its budget is L and nothing is in use. */
static int check_idle(ab_runtime *rt) {
  toc_mem_settle(rt, AB_OPENCL, 0);
  ab_device_stats st[32];
  int n = ab_runtime_stats(rt, st, 32);
  for (int i = 0; i < n && i < 32; i++) {
    if (st[i].device.kind != AB_OPENCL) continue;
    CHECK_EQ_U64(st[i].mem_budget, L_BYTES);
    CHECK_EQ_U64(st[i].mem_used, 0);
  }
  return 0;
}

/* 4 tasks of L/2 per device, outputs held by a consumer for a while: 2x L over time on each
 * device; everything completes through parking, nothing fails. */
static int oversubscription(int workers) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  opt.kinds[AB_OPENCL].workers_per_device = workers;
  TOC_RUNTIME(&rt, &opt, 1);
  int ndev = toc_count(rt, AB_OPENCL);
  CHECK_OK(check_idle(rt));
  alloc_arg a;
  memset(&a, 0, sizeof a);
  a.bytes = L_BYTES / 2;
  int rounds = th_scale() < 1 ? 1 : 2;
  for (int r = 0; r < rounds; r++) {
    int n = 4 * ndev;
    ab_future *fs[64];
    CHECK(n <= 64);
    for (int i = 0; i < n; i++) CHECK_OK(submit_alloc(rt, AB_PLACE_ROUND_ROBIN, AB_ANY, &a, NULL, NULL, &fs[i]));
    /* the consumer takes outputs as they complete (in submission order it could wait on a
     * parked task whose memory is held by later outputs it has not released yet), holds each
     * a little, releases it */
    for (int left = n; left > 0; left--) {
      size_t i = 0;
      ab_tensor *t = NULL;
      CHECK_OK(ab_future_wait_any(fs, (size_t)left, TH_SEC(60), &i));
      CHECK_MSG(ab_future_status(fs[i]) == 0, "task %zu: %s: %s", i, th_errstr(ab_future_status(fs[i])),
                ab_future_message(fs[i]) ? ab_future_message(fs[i]) : "(no message)");
      CHECK_OK(ab_future_result(fs[i], &t));
      CHECK_NOT_NULL(t);
      CHECK_EQ_INT(ab_tensor_device(t).kind, AB_OPENCL);
      CHECK_EQ_U64(ab_tensor_nbytes(t), L_BYTES / 2);
      th_sleep_ns(TH_MS(20));
      ab_tensor_release(t);
      ab_future_release(fs[i]);
      fs[i] = fs[left - 1];
    }
  }
  ab_device_stats s = toc_stats_sum(rt, AB_OPENCL);
  CHECK_MSG(s.oom_parks > 0, "no task parked (oom_events %" PRIu64 ")", s.oom_events);
  CHECK_EQ_U64(s.tasks_failed, 0);
  CHECK_EQ_U64(s.oom_failures, 0);
  CHECK(atomic_load(&a.enomem) > 0);
  int ok = 0;
  for (int i = 0; i < 8; i++) ok += atomic_load(&a.device[i]);
  CHECK_EQ_INT(ok, 4 * ndev * rounds);
  CHECK_OK(check_idle(rt));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_oversubscription_completes(void) { return oversubscription(1); }
/* Two workers per device: a parked task may be retried by the other worker. */
static int test_oversubscription_two_workers(void) { return oversubscription(2); }

/* A conversion onto a full device parks and completes once memory is freed; its data is right. */
static int test_conversion_parks(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  TOC_RUNTIME(&rt, &opt, 1);
  alloc_arg a;
  memset(&a, 0, sizeof a);
  a.bytes = L_BYTES / 2;
  ab_future *hold[2];
  for (int i = 0; i < 2; i++) {
    CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &a, NULL, NULL, &hold[i]));
    CHECK_OK(ab_future_wait(hold[i], TH_SEC(30)));
    CHECK_OK(ab_future_status(hold[i]));
  }
  const int64_t shape[1] = {(int64_t)(L_BYTES / 8 / 4)}; /* L/8 bytes of f32 */
  for (int k = 0; k < 2; k++) {
    /* f32 -> f64: L/8 scratch + L/4 out; u8 -> u16: L/8 scratch + L/4 out */
    ab_tensor *h = NULL, *got = NULL;
    DLDataType sdt = k ? TH_U8 : TH_F32;
    int64_t sh[1] = {k ? shape[0] * 4 : shape[0]};
    CHECK_OK(toc_host_tensor(rt, sdt, 1, sh, 1, 0, &h));
    ab_convert_options o = toc_copt(k ? TH_U16 : TH_F64, AB_CAST_SATURATE);
    ab_future *f = NULL;
    CHECK_OK(ab_convert(rt, h, toc_ocl(0), &o, &f));
    /* it cannot fit while both halves are held */
    CHECK_EQ_INT(ab_future_wait(f, TH_MS(150)), AB_ETIMEDOUT);
    ab_device_stats st;
    CHECK_OK(th_stats(rt, toc_ocl(0), &st));
    CHECK(st.oom_parks > 0);
    ab_future_release(hold[k]); /* frees L/2 */
    hold[k] = NULL;
    CHECK_OK(toc_take(f, &got));
    CHECK_EQ_INT(ab_tensor_device(got).kind, AB_OPENCL);
    ab_tensor_release(got);
    ab_tensor_release(h);
    if (k == 0) { /* refill the half for the second round */
      CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &a, NULL, NULL, &hold[0]));
      CHECK_OK(ab_future_wait(hold[0], TH_SEC(30)));
      CHECK_OK(ab_future_status(hold[0]));
      ab_future *tmp = hold[0];
      hold[0] = hold[1];
      hold[1] = tmp;
    }
  }
  for (int i = 0; i < 2; i++) ab_future_release(hold[i]);
  /* and the data of a parked-then-completed conversion is right */
  ab_future *h2[2];
  for (int i = 0; i < 2; i++) {
    CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &a, NULL, NULL, &h2[i]));
    CHECK_OK(ab_future_wait(h2[i], TH_SEC(30)));
  }
  ab_tensor *h = NULL, *got = NULL, *back = NULL, *ref = NULL;
  CHECK_OK(toc_host_tensor(rt, TH_F64, 1, shape, 0, 5, &h));
  ab_convert_options o = toc_copt(th_dt(kDLInt, 16), AB_CAST_STRETCH);
  ab_future *f = NULL;
  CHECK_OK(ab_convert(rt, h, toc_ocl(0), &o, &f));
  CHECK_EQ_INT(ab_future_wait(f, TH_MS(100)), AB_ETIMEDOUT);
  ab_future_release(h2[0]);
  ab_future_release(h2[1]);
  CHECK_OK(toc_take(f, &got));
  CHECK_OK(toc_to_host(rt, got, &back));
  ab_convert_options ro = o;
  ro.force_copy = true;
  CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &ref));
  CHECK_OK(toc_same(back, ref, "parked conversion"));
  ab_tensor_release(got);
  ab_tensor_release(back);
  ab_tensor_release(ref);
  ab_tensor_release(h);
  ab_device_stats s = toc_stats_sum(rt, AB_OPENCL);
  CHECK_EQ_U64(s.tasks_failed, 0);
  CHECK_OK(check_idle(rt));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* oom.no_wait: the oversubscribing task fails with AB_ENOMEM and a memory report; its input is
 * intact; once memory is back the same work succeeds. Runtime-wide and per task. */
static int test_no_wait_fails_cleanly(void) {
  for (int per_task = 0; per_task < 2; per_task++) {
    ab_runtime *rt;
    ab_runtime_options opt;
    oom_options(&opt);
    ab_oom_policy nw = {.no_wait = true};
    if (!per_task) opt.oom = nw;
    TOC_RUNTIME(&rt, &opt, 1);
    const ab_oom_policy *pol = per_task ? &nw : NULL;
    /* the input: IN_BYTES on opencl:0 */
    const int64_t ishape[1] = {IN_BYTES / 4};
    ab_tensor *hin = NULL, *in = NULL;
    CHECK_OK(toc_host_tensor(rt, TH_F32, 1, ishape, 0, 0, &hin));
    ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
    CHECK_OK(toc_convert(rt, hin, toc_ocl(0), &same, &in));
    alloc_arg fill, a;
    memset(&fill, 0, sizeof fill);
    memset(&a, 0, sizeof a);
    fill.bytes = L_BYTES / 2 - IN_BYTES;
    a.bytes = L_BYTES / 2;
    ab_future *hold[2];
    for (int i = 0; i < 2; i++) {
      CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &fill, in, pol, &hold[i]));
      CHECK_OK(ab_future_wait(hold[i], TH_SEC(30)));
      CHECK_OK(ab_future_status(hold[i]));
    }
    int64_t t0 = th_now_ns();
    ab_future *f = NULL;
    CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &a, in, pol, &f));
    CHECK_OK(ab_future_wait(f, TH_SEC(30)));
    CHECK_MSG(th_now_ns() - t0 < TH_SEC(5), "no_wait took %lld ms", (long long)((th_now_ns() - t0) / 1000000));
    CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
    ab_tensor *r = (ab_tensor *)1;
    CHECK_EQ_INT(ab_future_result(f, &r), AB_ENOMEM);
    const char *msg = ab_future_message(f);
    CHECK_NOT_NULL(msg);
    CHECK_MSG(strstr(msg, "memory") != NULL, "message: %s", msg);
    ab_future_release(f);
    /* a conversion onto the full device fails the same way */
    const int64_t cshape[1] = {(int64_t)(L_BYTES / 2 / 4)};
    ab_tensor *hc = NULL, *hc_copy = NULL;
    CHECK_OK(toc_host_tensor(rt, TH_F32, 1, cshape, 1, 3, &hc));
    CHECK_OK(toc_to_host(rt, hc, &hc_copy));
    ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
    co.place.oom = pol;
    CHECK_OK(ab_convert(rt, hc, toc_ocl(0), &co, &f));
    CHECK_OK(ab_future_wait(f, TH_SEC(30)));
    CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
    msg = ab_future_message(f);
    CHECK_NOT_NULL(msg);
    CHECK_MSG(strstr(msg, "memory") != NULL, "message: %s", msg);
    ab_future_release(f);
    CHECK_OK(toc_same(hc, hc_copy, "no_wait: conversion source intact"));
    /* inputs intact */
    ab_tensor *back = NULL;
    CHECK_OK(toc_to_host(rt, in, &back)); /* download: no device scratch needed */
    CHECK_OK(toc_same(back, hin, "no_wait: input intact"));
    ab_tensor_release(back);
    ab_device_stats st;
    CHECK_OK(th_stats(rt, toc_ocl(0), &st));
    CHECK(st.oom_failures >= 2);
    CHECK_EQ_U64(st.oom_parks, 0);
    CHECK_EQ_U64(st.mem_used, L_BYTES - IN_BYTES);
    /* memory back: the same work succeeds */
    ab_future_release(hold[0]);
    CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &a, in, pol, &f));
    CHECK_OK(toc_take(f, NULL));
    ab_future_release(hold[1]);
    CHECK_OK(ab_convert(rt, hc, toc_ocl(0), &co, &f));
    ab_tensor *got = NULL;
    CHECK_OK(toc_take(f, &got));
    CHECK_OK(toc_to_host(rt, got, &back));
    CHECK_OK(toc_same(back, hc_copy, "no_wait: conversion after memory is back"));
    ab_tensor_release(back);
    ab_tensor_release(got);
    ab_tensor_release(hc);
    ab_tensor_release(hc_copy);
    ab_tensor_release(in);
    ab_tensor_release(hin);
    CHECK_OK(check_idle(rt));
    CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  }
  return 0;
}

/* The oversubscribing workload of test_oversubscription_completes under oom.no_wait, with every
 * output held until all tasks are done: exactly two tasks per device fit, the others fail at
 * once with AB_ENOMEM and a memory report; nothing leaks. */
static int test_no_wait_oversubscription(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  opt.oom.no_wait = true;
  TOC_RUNTIME(&rt, &opt, 1);
  int ndev = toc_count(rt, AB_OPENCL);
  alloc_arg a;
  memset(&a, 0, sizeof a);
  a.bytes = L_BYTES / 2;
  int n = 4 * ndev;
  ab_future *fs[64];
  CHECK(n <= 64);
  for (int i = 0; i < n; i++) CHECK_OK(submit_alloc(rt, AB_PLACE_ROUND_ROBIN, AB_ANY, &a, NULL, NULL, &fs[i]));
  CHECK_OK(ab_future_wait_all(fs, (size_t)n, TH_SEC(60)));
  int ok = 0, enomem = 0;
  for (int i = 0; i < n; i++) {
    int st = ab_future_status(fs[i]);
    CHECK_MSG(st == 0 || st == AB_ENOMEM, "task %d: %d%s", i, st, th_errstr(st));
    if (st == 0) {
      ok++;
      ab_tensor *t = NULL;
      CHECK_OK(ab_future_result(fs[i], &t));
      CHECK_NOT_NULL(t);
      CHECK_EQ_U64(ab_tensor_nbytes(t), L_BYTES / 2);
      ab_tensor_release(t);
    } else {
      enomem++;
      const char *msg = ab_future_message(fs[i]);
      CHECK_NOT_NULL(msg);
      CHECK_MSG(strstr(msg, "memory") != NULL, "message: %s", msg);
    }
  }
  CHECK_EQ_INT(ok, 2 * ndev);
  CHECK_EQ_INT(enomem, 2 * ndev);
  for (int i = 0; i < ndev; i++) CHECK_EQ_INT(atomic_load(&a.device[i]), 2);
  ab_device_stats s = toc_stats_sum(rt, AB_OPENCL);
  CHECK_EQ_U64(s.oom_parks, 0);
  CHECK(s.oom_failures >= (uint64_t)(2 * ndev));
  for (int i = 0; i < n; i++) ab_future_release(fs[i]);
  CHECK_OK(check_idle(rt));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* allow_reroute with AUTO: a task whose input (and so its affinity) is on a full device runs on
 * another OpenCL device; with EXPLICIT placement it is not moved. */
static int test_reroute(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  oom_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  const int64_t ishape[1] = {IN_BYTES / 4};
  ab_tensor *hin = NULL, *in = NULL;
  CHECK_OK(toc_host_tensor(rt, TH_F32, 1, ishape, 0, 0, &hin));
  ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
  CHECK_OK(toc_convert(rt, hin, toc_ocl(0), &same, &in));
  alloc_arg fill;
  memset(&fill, 0, sizeof fill);
  fill.bytes = L_BYTES / 2 - IN_BYTES;
  ab_future *hold[2];
  for (int i = 0; i < 2; i++) {
    CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &fill, NULL, NULL, &hold[i]));
    CHECK_OK(ab_future_wait(hold[i], TH_SEC(30)));
    CHECK_OK(ab_future_status(hold[i]));
  }
  /* two ladders: park briefly then re-route; and no_wait + re-route */
  ab_oom_policy pols[2] = {
      {.allow_reroute = true, .backoff_initial_ns = TH_MS(1), .backoff_max_ns = TH_MS(5), .deadline_ns = TH_MS(50)},
      {.allow_reroute = true, .no_wait = true},
  };
  uint64_t reroutes_before = 0;
  for (int k = 0; k < 2; k++) {
    alloc_arg a;
    memset(&a, 0, sizeof a);
    a.bytes = L_BYTES / 2;
    ab_future *f = NULL;
    CHECK_OK(submit_alloc(rt, AB_PLACE_AUTO, AB_ANY, &a, in, &pols[k], &f));
    ab_tensor *out = NULL;
    CHECK_OK(toc_take(f, &out));
    CHECK_EQ_INT(ab_tensor_device(out).kind, AB_OPENCL);
    CHECK_MSG(ab_tensor_device(out).index != 0, "ladder %d: result on the full device", k);
    CHECK_EQ_INT(atomic_load(&a.device[0]), 0);
    CHECK(atomic_load(&a.enomem) >= 1);
    ab_device_stats st;
    CHECK_OK(th_stats(rt, toc_ocl(0), &st));
    CHECK_MSG(st.oom_reroutes > reroutes_before, "ladder %d: oom_reroutes %" PRIu64, k, st.oom_reroutes);
    reroutes_before = st.oom_reroutes;
    if (k == 0) CHECK(st.oom_parks > 0);
    ab_tensor_release(out);
  }
  /* EXPLICIT placement is never re-routed: it fails (no_wait) on its device */
  alloc_arg a;
  memset(&a, 0, sizeof a);
  a.bytes = L_BYTES / 2;
  ab_future *f = NULL;
  CHECK_OK(submit_alloc(rt, AB_PLACE_EXPLICIT, 0, &a, in, &pols[1], &f));
  CHECK_EQ_INT(toc_take(f, NULL), AB_ENOMEM);
  CHECK_EQ_INT(atomic_load(&a.device[1]) + atomic_load(&a.device[2]), 0);
  /* the input is intact */
  ab_tensor *back = NULL;
  CHECK_OK(toc_to_host(rt, in, &back));
  CHECK_OK(toc_same(back, hin, "reroute: input intact"));
  ab_tensor_release(back);
  ab_future_release(hold[0]);
  ab_future_release(hold[1]);
  ab_tensor_release(in);
  ab_tensor_release(hin);
  /* the completion counters are bumped just after waiters wake: poll briefly */
  ab_device_stats s = toc_stats_sum(rt, AB_OPENCL);
  for (int64_t t0 = th_now_ns(); s.tasks_failed < 1 && th_now_ns() - t0 < TH_SEC(2); s = toc_stats_sum(rt, AB_OPENCL))
    th_sleep_ns(TH_MS(1));
  CHECK_EQ_U64(s.tasks_failed, 1);
  CHECK_OK(check_idle(rt));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(oversubscription_completes, 120),
    TEST_ENTRY_T(oversubscription_two_workers, 120),
    TEST_ENTRY_T(conversion_parks, 60),
    TEST_ENTRY_T(no_wait_fails_cleanly, 60),
    TEST_ENTRY_T(no_wait_oversubscription, 60),
    TEST_ENTRY_T(reroute, 60),
    TEST_END,
};
AB_TEST_MAIN(tests)
