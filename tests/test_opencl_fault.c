/*
 * test_opencl_fault.c: fault injection at every OpenCL call site (AB_FAULT_ALLOC, _COPY,
 * _LAUNCH; nth = 1..K) over a host -> opencl conversion with a dtype change, opencl -> host,
 * opencl -> opencl and a mixed ab_stack. Every run ends with success (the right data) or
 * AB_EFAULT / AB_ENOMEM; inputs are unchanged; every device's mem_used returns to what it was;
 * a clean run works afterwards. Delayed completion (delay_ns) times a wait out, then completes.
 */
#include "test_opencl_common.c"

#define NOPS 6
#define MAXNTH 48

typedef struct {
  ab_runtime *rt;
  ab_tensor *h32;     /* host f32 [8, 12] */
  ab_tensor *h64base; /* host f64 [10, 16] */
  ab_tensor *h64v;    /* a negative-stride [8, 12] view of it */
  ab_tensor *o32;     /* opencl:0 copy of h32 */
  ab_tensor *o64base; /* opencl:0 copy of h64base */
  ab_tensor *o64v;    /* the same view on opencl:0 */
  ab_tensor *o1;      /* opencl:1 (or 0) copy of h32 */
  ab_tensor *o2base;  /* opencl:2 (or 0) copy of h64base... as f32: see setup */
  ab_tensor *o2v;
  ab_tensor *h2base, *h2v; /* host mirrors of o2base / o2v */
  ab_tensor *pristine[3];  /* copies of h32, h64base, h2base */
  int ndev;
} fixture;

static const int64_t SH[2] = {8, 12};
static const int64_t BSH[2] = {10, 16};
static const int64_t VST[2] = {-16, -1};
static const int64_t VOFF = 9 * 16 + 13; /* rows 9..2, cols 13..2 */

static const char *OP_NAMES[NOPS] = {"upload+cast", "upload strided+stretch", "cast+download", "download",
                                     "opencl->opencl", "stack"};

static void fixture_free(fixture *f) {
  ab_tensor *ts[] = {f->h32, f->h64base, f->h64v, f->o32, f->o64base, f->o64v, f->o1, f->o2base, f->o2v, f->h2base, f->h2v};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) ab_tensor_release(ts[i]);
  for (int i = 0; i < 3; i++) ab_tensor_release(f->pristine[i]);
}

static int fixture_make(ab_runtime *rt, fixture *f) {
  memset(f, 0, sizeof *f);
  f->rt = rt;
  f->ndev = toc_count(rt, AB_OPENCL);
  int d1 = f->ndev > 1 ? 1 : 0, d2 = f->ndev > 2 ? 2 : d1;
  ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
  CHECK_OK(toc_host_tensor(rt, TH_F32, 2, SH, 1, 0, &f->h32));
  CHECK_OK(toc_host_tensor(rt, TH_F64, 2, BSH, 1, 7, &f->h64base));
  CHECK_OK(ab_tensor_view(f->h64base, 2, SH, VST, VOFF, &f->h64v));
  CHECK_OK(toc_convert(rt, f->h32, toc_ocl(0), &same, &f->o32));
  CHECK_OK(toc_convert(rt, f->h64base, toc_ocl(0), &same, &f->o64base));
  CHECK_OK(ab_tensor_view(f->o64base, 2, SH, VST, VOFF, &f->o64v));
  CHECK_OK(toc_convert(rt, f->h32, toc_ocl(d1), &same, &f->o1));
  /* f32 slices for the stack: a strided one on opencl:2 */
  CHECK_OK(toc_host_tensor(rt, TH_F32, 2, BSH, 1, 29, &f->h2base));
  CHECK_OK(ab_tensor_view(f->h2base, 2, SH, VST, VOFF, &f->h2v));
  CHECK_OK(toc_convert(rt, f->h2base, toc_ocl(d2), &same, &f->o2base));
  CHECK_OK(ab_tensor_view(f->o2base, 2, SH, VST, VOFF, &f->o2v));
  CHECK_OK(toc_to_host(rt, f->h32, &f->pristine[0]));
  CHECK_OK(toc_to_host(rt, f->h64base, &f->pristine[1]));
  CHECK_OK(toc_to_host(rt, f->h2base, &f->pristine[2]));
  return 0;
}

/* Submits op k with oom policy pol (may be NULL). */
static int op_submit(fixture *f, int k, const ab_oom_policy *pol, ab_future **out) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.place.oom = pol;
  int d1 = f->ndev > 1 ? 1 : 0;
  switch (k) {
  case 0: /* host -> opencl:0, dtype change (upload, then a kernel) */
    o.dtype = TH_U16;
    return ab_convert(f->rt, f->h32, toc_ocl(0), &o, out);
  case 1: /* host strided -> opencl:0, stretch (host packing, upload, minmax, kernel) */
    o.dtype = TH_U8;
    o.cast = AB_CAST_STRETCH;
    return ab_convert(f->rt, f->h64v, toc_ocl(0), &o, out);
  case 2: /* opencl:0 strided -> host, dtype change (a kernel on S, then download) */
    o.dtype = th_dt(kDLInt, 16);
    o.cast = AB_CAST_STRETCH;
    return ab_convert(f->rt, f->o64v, th_host(0), &o, out);
  case 3: /* opencl:0 -> host, same dtype (plain download) */
    return ab_convert(f->rt, f->o32, th_host(0), &o, out);
  case 4: /* opencl:0 strided -> opencl:1, dtype change (pack on S, staging, kernel on D) */
    o.dtype = TH_F32;
    return ab_convert(f->rt, f->o64v, toc_ocl(d1), &o, out);
  case 5: { /* stack of host, opencl:0, opencl:1, opencl:2 strided slices onto opencl:0 */
    ab_tensor *sl[4] = {f->h32, f->o32, f->o1, f->o2v};
    o.dtype = th_dt(kDLInt, 32);
    o.cast = AB_CAST_STRETCH;
    return ab_stack(f->rt, sl, 4, toc_ocl(0), &o, out);
  }
  }
  return AB_EINVAL;
}

/* The host reference of op k. */
static int op_reference(fixture *f, int k, ab_tensor **out) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.force_copy = true;
  ab_future *fu = NULL;
  switch (k) {
  case 0: o.dtype = TH_U16; return toc_convert(f->rt, f->h32, th_host(0), &o, out);
  case 1: o.dtype = TH_U8; o.cast = AB_CAST_STRETCH; return toc_convert(f->rt, f->h64v, th_host(0), &o, out);
  case 2: o.dtype = th_dt(kDLInt, 16); o.cast = AB_CAST_STRETCH; return toc_convert(f->rt, f->h64v, th_host(0), &o, out);
  case 3: return toc_convert(f->rt, f->h32, th_host(0), &o, out);
  case 4: o.dtype = TH_F32; return toc_convert(f->rt, f->h64v, th_host(0), &o, out);
  case 5: {
    ab_tensor *sl[4] = {f->h32, f->h32, f->h32, f->h2v};
    o.dtype = th_dt(kDLInt, 32);
    o.cast = AB_CAST_STRETCH;
    int rc = ab_stack(f->rt, sl, 4, th_host(0), &o, &fu);
    return rc ? rc : toc_take(fu, out);
  }
  }
  return AB_EINVAL;
}

/* The inputs still hold what they held: every device tensor reads back as its host mirror. */
static int inputs_intact(fixture *f, const char *label) {
  ab_tensor *pairs[4][2] = {{f->o32, f->h32}, {f->o64base, f->h64base}, {f->o1, f->h32}, {f->o2base, f->h2base}};
  for (int i = 0; i < 4; i++) {
    ab_tensor *b = NULL;
    CHECK_OK(toc_to_host(f->rt, pairs[i][0], &b));
    int bad = toc_same(b, pairs[i][1], label);
    ab_tensor_release(b);
    CHECK_MSG(bad == 0, "%s: input %d changed", label, i);
  }
  /* and the host inputs are what they were made as */
  ab_tensor *hosts[3] = {f->h32, f->h64base, f->h2base};
  for (int i = 0; i < 3; i++) CHECK_MSG(toc_same(hosts[i], f->pristine[i], label) == 0, "%s: host input %d changed", label, i);
  return 0;
}

static int snapshot(ab_runtime *rt, uint64_t *used, int cap) {
  ab_device_stats st[32];
  int n = ab_runtime_stats(rt, st, 32);
  for (int i = 0; i < n && i < cap; i++) used[i] = st[i].mem_used;
  return n;
}

/* Waits up to 2 s for every device's mem_used to equal want[]. */
static int settle(ab_runtime *rt, const uint64_t *want, int n) {
  uint64_t now[32];
  for (int64_t t0 = th_now_ns(); th_now_ns() - t0 < TH_SEC(2); th_sleep_ns(TH_MS(1))) {
    int m = snapshot(rt, now, 32), same = m == n;
    for (int i = 0; same && i < n && i < 32; i++) same = now[i] == want[i];
    if (same) break;
  }
  return 0;
}

/* A snapshot once it has stopped changing for 5 ms (results of earlier tasks all dropped). */
static int quiesce(ab_runtime *rt, uint64_t *used) {
  uint64_t again[32];
  int n = snapshot(rt, used, 32);
  for (int64_t t0 = th_now_ns(); th_now_ns() - t0 < TH_SEC(2);) {
    th_sleep_ns(TH_MS(5));
    int m = snapshot(rt, again, 32);
    if (m == n && memcmp(again, used, sizeof(uint64_t) * (size_t)(n < 32 ? n : 32)) == 0) break;
    n = m;
    memcpy(used, again, sizeof again);
  }
  return n;
}

static uint64_t injected(ab_runtime *rt) {
  ab_device_stats st[32];
  int n = ab_runtime_stats(rt, st, 32);
  uint64_t s = 0;
  for (int i = 0; i < n && i < 32; i++) s += st[i].faults_injected;
  return s;
}

static int arm(ab_runtime *rt, int target, int op, uint64_t nth, int64_t count) {
  ab_fault_spec s;
  memset(&s, 0, sizeof s);
  s.op = op;
  s.device = (ab_device){AB_OPENCL, target};
  s.nth = nth;
  s.count = count;
  return ab_runtime_fault(rt, &s);
}

/* One faulted run of op k; *hit tells whether a fault was injected. */
static int faulted_run(fixture *f, int k, int target, int fop, uint64_t nth, int64_t count, const ab_oom_policy *pol,
                       ab_tensor *ref, bool *hit, int *status) {
  char label[128];
  snprintf(label, sizeof label, "%s, fault %d on opencl:%d nth %" PRIu64 " count %lld", OP_NAMES[k], fop, target, nth,
           (long long)count);
  uint64_t before[32], after[32];
  int n = quiesce(f->rt, before);
  uint64_t inj0 = injected(f->rt);
  CHECK_OK(arm(f->rt, target, fop, nth, count));
  ab_future *fu = NULL;
  int rc = op_submit(f, k, pol, &fu);
  CHECK_MSG(rc == 0, "%s: submit %d%s", label, rc, th_errstr(rc));
  CHECK_MSG(ab_future_wait(fu, TH_SEC(60)) == 0, "%s: did not complete", label);
  CHECK_OK(arm(f->rt, AB_ANY, fop, 0, 0)); /* off on every OpenCL device */
  *hit = injected(f->rt) > inj0;
  *status = ab_future_status(fu);
  CHECK_MSG(*status == 0 || *status == AB_EFAULT || *status == AB_ENOMEM, "%s: status %d%s", label, *status,
            th_errstr(*status));
  if (!*hit) CHECK_MSG(*status == 0, "%s: failed without a fault: %d%s", label, *status, th_errstr(*status));
  if (*status == 0) {
    ab_tensor *r = NULL, *b = NULL;
    CHECK_OK(ab_future_result(fu, &r));
    if (ab_tensor_device(r).kind == AB_HOST) b = ab_tensor_retain(r);
    else CHECK_OK(toc_to_host(f->rt, r, &b));
    int bad = toc_same(b, ref, label);
    ab_tensor_release(b);
    ab_tensor_release(r);
    CHECK_MSG(bad == 0, "%s: succeeded with wrong data", label);
  } else {
    ab_tensor *r = (ab_tensor *)1;
    CHECK_EQ_INT(ab_future_result(fu, &r), *status);
  }
  ab_future_release(fu);
  CHECK_OK(inputs_intact(f, label));
  /* no leak: every device holds what it held before. The worker that completed a future drops
   * its own reference (and so the result it holds) just after the waiter wakes: poll briefly. */
  CHECK_OK(settle(f->rt, before, n));
  CHECK_EQ_INT(snapshot(f->rt, after, 32), n);
  for (int i = 0; i < n && i < 32; i++)
    CHECK_MSG(after[i] == before[i], "%s: device slot %d mem_used %" PRIu64 " -> %" PRIu64, label, i, before[i],
              after[i]);
  return 0;
}

/* For each op and each fault target (every OpenCL device at once, then each one alone, since
 * the counters are per device): nth = 1.. until a run sees no fault. */
static int sweep(fixture *f, int fop, int64_t count, const ab_oom_policy *pol, bool expect_success) {
  for (int k = 0; k < NOPS; k++) {
    if (th_scale() < 1 && (k + fop) % 2) continue;
    ab_tensor *ref = NULL;
    CHECK_OK(op_reference(f, k, &ref));
    int hits = 0, failed = 0, runs = 0;
    for (int target = AB_ANY; target < f->ndev; target++) {
      if (th_scale() < 1 && target >= 0) break;
      uint64_t nth = 1;
      for (; nth <= MAXNTH; nth++) {
        bool hit = false;
        int st = 0;
        if (faulted_run(f, k, target, fop, nth, count, pol, ref, &hit, &st) != 0) {
          ab_tensor_release(ref);
          return 1;
        }
        runs++;
        hits += hit;
        failed += st != 0;
        if (expect_success)
          CHECK_MSG(st == 0, "%s: fault %d on opencl:%d nth %" PRIu64 " should be absorbed: %d%s", OP_NAMES[k], fop,
                    target, nth, st, th_errstr(st));
        if (!hit) break;
      }
      CHECK_MSG(nth <= MAXNTH, "%s: fault %d still hit at nth %d", OP_NAMES[k], fop, MAXNTH);
    }
    fprintf(stderr, "# %-24s fault %d count %2lld: %d runs, %d with a fault, %d failed\n", OP_NAMES[k], fop,
            (long long)count, runs, hits, failed);
    /* the plain download allocates nothing on a device and runs no kernel; every other op
     * allocates, copies and launches on OpenCL devices */
    if (k != 3 || fop == AB_FAULT_COPY) CHECK_MSG(hits > 0, "%s: fault %d never hit", OP_NAMES[k], fop);
    /* a clean run afterwards */
    bool hit = false;
    int st = -1;
    CHECK_OK(faulted_run(f, k, AB_ANY, fop, 0, 0, pol, ref, &hit, &st));
    CHECK_EQ_INT(st, 0);
    ab_tensor_release(ref);
  }
  return 0;
}

static int fault_test(int fop, int64_t count, bool no_wait, bool expect_success) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 1);
  fixture f;
  if (fixture_make(rt, &f) != 0) {
    fixture_free(&f);
    return 1;
  }
  ab_oom_policy nw = {.no_wait = true};
  int rc = sweep(&f, fop, count, no_wait ? &nw : NULL, expect_success);
  fixture_free(&f);
  CHECK_OK(rc);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ALLOC faults fail as out-of-memory: with no_wait, AB_ENOMEM (or absorbed by the ladder's
 * retry after trim); with count = -1 every later allocation fails too. */
static int test_fault_alloc(void) { return fault_test(AB_FAULT_ALLOC, 1, true, false); }
static int test_fault_alloc_every(void) { return fault_test(AB_FAULT_ALLOC, -1, true, false); }
/* One failed allocation with waiting allowed: the ladder retries and the run succeeds. */
static int test_fault_alloc_absorbed(void) { return fault_test(AB_FAULT_ALLOC, 1, false, true); }
static int test_fault_copy(void) { return fault_test(AB_FAULT_COPY, 1, false, false); }
static int test_fault_copy_every(void) { return fault_test(AB_FAULT_COPY, -1, false, false); }
static int test_fault_launch(void) { return fault_test(AB_FAULT_LAUNCH, 1, false, false); }
static int test_fault_launch_every(void) { return fault_test(AB_FAULT_LAUNCH, -1, false, false); }

/* delay_ns delays every completion on the device: a short wait times out, then it completes. */
static int test_delayed_completion(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 1);
  fixture f;
  CHECK_OK(fixture_make(rt, &f));
  const int64_t delay = TH_MS(300);
  for (int k = 0; k < NOPS; k++) {
    ab_tensor *ref = NULL;
    CHECK_OK(op_reference(&f, k, &ref));
    ab_fault_spec s;
    memset(&s, 0, sizeof s);
    s.device = (ab_device){AB_OPENCL, AB_ANY};
    s.delay_ns = delay;
    /* the host device too: opencl -> host runs on a host worker */
    CHECK_OK(ab_runtime_fault(rt, &s));
    s.device = (ab_device){AB_HOST, AB_ANY};
    CHECK_OK(ab_runtime_fault(rt, &s));
    int64_t t0 = th_now_ns();
    ab_future *fu = NULL;
    CHECK_OK(op_submit(&f, k, NULL, &fu));
    CHECK_MSG(ab_future_wait(fu, TH_MS(20)) == AB_ETIMEDOUT, "%s: completed within 20 ms despite the delay",
              OP_NAMES[k]);
    CHECK_EQ_INT(ab_future_status(fu), AB_EPENDING);
    ab_tensor *r = (ab_tensor *)1;
    CHECK_EQ_INT(ab_future_result(fu, &r), AB_EPENDING);
    CHECK_OK(ab_future_wait(fu, TH_SEC(30)));
    CHECK_MSG(th_now_ns() - t0 >= delay, "%s: completed after %lld ms", OP_NAMES[k],
              (long long)((th_now_ns() - t0) / 1000000));
    CHECK_OK(ab_future_status(fu));
    memset(&s, 0, sizeof s); /* delay off */
    s.device = (ab_device){AB_OPENCL, AB_ANY};
    CHECK_OK(ab_runtime_fault(rt, &s));
    s.device = (ab_device){AB_HOST, AB_ANY};
    CHECK_OK(ab_runtime_fault(rt, &s));
    ab_tensor *b = NULL;
    CHECK_OK(ab_future_result(fu, &r));
    if (ab_tensor_device(r).kind == AB_HOST) b = ab_tensor_retain(r);
    else CHECK_OK(toc_to_host(rt, r, &b));
    CHECK_OK(toc_same(b, ref, OP_NAMES[k]));
    ab_tensor_release(b);
    ab_tensor_release(r);
    ab_future_release(fu);
    ab_tensor_release(ref);
  }
  /* off again: a conversion completes promptly */
  int64_t t0 = th_now_ns();
  ab_future *fu = NULL;
  CHECK_OK(op_submit(&f, 0, NULL, &fu));
  CHECK_OK(toc_take(fu, NULL));
  CHECK_MSG(th_now_ns() - t0 < delay, "still delayed: %lld ms", (long long)((th_now_ns() - t0) / 1000000));
  fixture_free(&f);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A failed download after a cast kernel was enqueued on the source device's transfer queue:
 * the kernel's scratch output must not be recycled while the kernel may still write it. The next
 * allocation of that size on the device (an upload) must read back exactly what was uploaded.
 * (With one pocl thread per device the kernel always finishes before the upload runs; with
 * POCL_MAX_PTHREAD_COUNT=2 this catches a scratch buffer freed while still being written.) */
static int test_failed_download_scratch_reuse(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 1);
  const int64_t n = th_scale() < 1 ? (1 << 20) : (4 << 20);
  const int64_t bshape[2] = {n / 512, 1024}, vshape[2] = {n / 512, 512}, vstr[2] = {1024, 2}, n1[1] = {n};
  ab_tensor *hb = NULL, *ob = NULL, *ov = NULL, *h2 = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F64, 2, bshape, &hb));
  double *p = (double *)ab_tensor_dl(hb)->data;
  for (int64_t i = 0; i < 2 * n; i++) p[i] = 1000.0 + (double)(i % 1000);
  ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
  CHECK_OK(toc_convert(rt, hb, toc_ocl(0), &same, &ob));
  CHECK_OK(ab_tensor_view(ob, 2, vshape, vstr, 0, &ov));
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, n1, &h2));
  float *q = (float *)ab_tensor_dl(h2)->data;
  for (int64_t i = 0; i < n; i++) q[i] = 7.0f;
  for (int rep = 0; rep < 3; rep++) {
    /* opencl:0 strided f64 -> host f32: cast on opencl:0, then the download, which fails */
    CHECK_OK(arm(rt, 0, AB_FAULT_COPY, 1, 1));
    ab_convert_options co = toc_copt(TH_F32, AB_CAST_SATURATE);
    ab_future *f = NULL;
    CHECK_OK(ab_convert(rt, ov, th_host(0), &co, &f));
    CHECK_EQ_INT(toc_take(f, NULL), AB_EFAULT);
    CHECK_OK(arm(rt, AB_ANY, AB_FAULT_COPY, 0, 0));
    /* an upload of the same size onto opencl:0 */
    ab_tensor *o2 = NULL, *back = NULL;
    CHECK_OK(toc_convert(rt, h2, toc_ocl(0), &same, &o2));
    th_sleep_ns(TH_MS(300)); /* a straggling kernel would write into o2 meanwhile */
    CHECK_OK(toc_to_host(rt, o2, &back));
    CHECK_OK(toc_same(back, h2, "upload after a failed download"));
    ab_tensor_release(back);
    ab_tensor_release(o2);
  }
  ab_tensor_release(ov);
  ab_tensor_release(ob);
  ab_tensor_release(hb);
  ab_tensor_release(h2);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(failed_download_scratch_reuse, 60),
    TEST_ENTRY_T(fault_alloc, 120),
    TEST_ENTRY_T(fault_alloc_every, 120),
    TEST_ENTRY_T(fault_alloc_absorbed, 120),
    TEST_ENTRY_T(fault_copy, 120),
    TEST_ENTRY_T(fault_copy_every, 120),
    TEST_ENTRY_T(fault_launch, 120),
    TEST_ENTRY_T(fault_launch_every, 120),
    TEST_ENTRY_T(delayed_completion, 60),
    TEST_END,
};
AB_TEST_MAIN(tests)
