/*
 * test_opencl_sched.c: scheduling over the OpenCL devices: round-robin spreads evenly,
 * least-loaded avoids a busy device, AUTO/AFFINITY follow the input's device, logical devices
 * (logical_split = 2) convert between halves of one physical device, ab_ctx_stream is the
 * worker's cl_command_queue.
 */
#include "test_opencl_common.c"

#if defined(__has_include)
#if __has_include(<CL/cl.h>)
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#define TOC_HAVE_CL 1
#endif
#endif

#define MAXDEV 16

typedef struct {
  atomic_int count[MAXDEV];
  atomic_int bad_kind;
  atomic_int null_stream;
  atomic_int bad_queue;
  atomic_int total;
} where_ran;

/* Records the device the task runs on; checks its stream. */
static int record_task(ab_ctx *c, void *arg) {
  where_ran *w = arg;
  ab_device d = ab_ctx_device(c);
  if (d.kind != AB_OPENCL || d.index < 0 || d.index >= MAXDEV) {
    atomic_fetch_add(&w->bad_kind, 1);
    return 0;
  }
  atomic_fetch_add(&w->count[d.index], 1);
  void *s = ab_ctx_stream(c);
  if (s == NULL) atomic_fetch_add(&w->null_stream, 1);
#ifdef TOC_HAVE_CL
  else {
    cl_command_queue q = s;
    cl_device_id dev = NULL;
    cl_context ctx = NULL;
    if (clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof dev, &dev, NULL) != CL_SUCCESS || dev == NULL ||
        clGetCommandQueueInfo(q, CL_QUEUE_CONTEXT, sizeof ctx, &ctx, NULL) != CL_SUCCESS || ctx == NULL)
      atomic_fetch_add(&w->bad_queue, 1);
    /* an input on this device lives in the queue's context */
    if (ab_ctx_ninputs(c) > 0) {
      ab_tensor *in = ab_ctx_input(c, 0);
      if (ab_tensor_device(in).kind == AB_OPENCL && ab_tensor_device(in).index == d.index) {
        cl_context mctx = NULL;
        cl_mem m = ab_tensor_dl(in)->data;
        if (clGetMemObjectInfo(m, CL_MEM_CONTEXT, sizeof mctx, &mctx, NULL) != CL_SUCCESS || mctx != ctx)
          atomic_fetch_add(&w->bad_queue, 1);
        /* and the queue can read it */
        unsigned char byte = 0;
        if (ab_tensor_nbytes(in) > 0 &&
            clEnqueueReadBuffer(q, m, CL_TRUE, ab_tensor_dl(in)->byte_offset, 1, &byte, 0, NULL, NULL) != CL_SUCCESS)
          atomic_fetch_add(&w->bad_queue, 1);
      }
    }
  }
#endif
  atomic_fetch_add(&w->total, 1);
  return 0;
}

static int submit_record(ab_runtime *rt, int policy, int index, where_ran *w, ab_tensor *in, ab_future *fin,
                         ab_future **out) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = record_task;
  d.arg = w;
  d.place.policy = policy;
  d.place.device = (ab_device){AB_OPENCL, index};
  ab_input input = {in, fin};
  if (in || fin) {
    d.inputs = &input;
    d.ninputs = 1;
  }
  return ab_submit(rt, &d, out);
}

static int wait_all_ok(ab_future **fs, int n) {
  CHECK_OK(ab_future_wait_all(fs, (size_t)n, TH_SEC(60)));
  for (int i = 0; i < n; i++) {
    CHECK_OK(ab_future_status(fs[i]));
    ab_future_release(fs[i]);
    fs[i] = NULL;
  }
  return 0;
}

static int test_round_robin(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  int ndev = toc_count(rt, AB_OPENCL);
  CHECK(ndev <= MAXDEV);
  for (int round = 0; round < 3; round++) {
    int n = (int)th_scaled(30) + round; /* not always a multiple of the device count */
    where_ran w;
    memset(&w, 0, sizeof w);
    ab_future *fs[64];
    CHECK(n <= 64);
    for (int i = 0; i < n; i++) CHECK_OK(submit_record(rt, AB_PLACE_ROUND_ROBIN, AB_ANY, &w, NULL, NULL, &fs[i]));
    CHECK_OK(wait_all_ok(fs, n));
    CHECK_EQ_INT(atomic_load(&w.total), n);
    CHECK_EQ_INT(atomic_load(&w.bad_kind), 0);
    CHECK_EQ_INT(atomic_load(&w.null_stream), 0);
    CHECK_EQ_INT(atomic_load(&w.bad_queue), 0);
    int lo = n, hi = 0;
    for (int i = 0; i < ndev; i++) {
      int c = atomic_load(&w.count[i]);
      lo = c < lo ? c : lo;
      hi = c > hi ? c : hi;
    }
    CHECK_MSG(hi - lo <= 1, "round-robin over %d devices, %d tasks: min %d max %d", ndev, n, lo, hi);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A device kept busy by a gated task gets none of the least-loaded tasks. */
static int test_least_loaded_avoids_busy(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  int ndev = toc_count(rt, AB_OPENCL);
  for (int busy = 0; busy < ndev; busy++) {
    th_gate g;
    th_gate_init(&g);
    /* one gated task running and three queued behind it: a load of 4 */
    ab_future *gate = NULL, *queued[3];
    CHECK_OK(th_submit_gate(rt, toc_ocl(busy), &g, &gate));
    for (int i = 0; i < 3; i++) CHECK_OK(th_submit_fn(rt, toc_ocl(busy), th_gate_task, &g, &queued[i]));
    where_ran w;
    memset(&w, 0, sizeof w);
    int n = (int)th_scaled(24);
    if (n < 6) n = 6; /* ties rotate over all devices: two tasks may both land on one idle device */
    ab_future *fs[32];
    for (int i = 0; i < n; i++) {
      CHECK_OK(submit_record(rt, AB_PLACE_LEAST_LOADED, AB_ANY, &w, NULL, NULL, &fs[i]));
      /* at most two in flight, so an idle device never looks as loaded as the busy one */
      if (i % 2 == 1) CHECK_OK(ab_future_wait_all(fs, (size_t)i + 1, TH_SEC(30)));
    }
    /* they all complete while the busy device is still blocked: none went there */
    CHECK_OK(ab_future_wait_all(fs, (size_t)n, TH_SEC(30)));
    CHECK_EQ_INT(ab_future_status(gate), AB_EPENDING);
    CHECK_EQ_INT(atomic_load(&w.count[busy]), 0);
    CHECK_EQ_INT(atomic_load(&w.total), n);
    int used = 0;
    for (int i = 0; i < ndev; i++) used += atomic_load(&w.count[i]) > 0;
    CHECK_MSG(ndev < 3 || used == ndev - 1, "least-loaded used %d of the %d idle devices", used, ndev - 1);
    th_gate_open_all(&g);
    CHECK_OK(toc_take(gate, NULL));
    for (int i = 0; i < 3; i++) CHECK_OK(toc_take(queued[i], NULL));
    CHECK_OK(wait_all_ok(fs, n));
    th_gate_destroy(&g);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* AUTO and AFFINITY run a compute task on the device holding its input (a tensor, or the
 * result of a future); the queue the task sees belongs to that device. */
static int test_affinity(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  TOC_RUNTIME(&rt, &opt, 2);
  int ndev = toc_count(rt, AB_OPENCL);
  const int64_t shape[1] = {1000};
  ab_tensor *h = NULL;
  CHECK_OK(toc_host_tensor(rt, TH_F32, 1, shape, 0, 0, &h));
  for (int rep = 0; rep < (int)th_scaled(4); rep++)
    for (int dv = 0; dv < ndev; dv++) {
      ab_tensor *t = NULL;
      ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
      CHECK_OK(toc_convert(rt, h, toc_ocl(dv), &same, &t));
      for (int pol = 0; pol < 2; pol++) {
        where_ran w;
        memset(&w, 0, sizeof w);
        ab_future *fs[4];
        int policy = pol ? AB_PLACE_AFFINITY : AB_PLACE_AUTO;
        CHECK_OK(submit_record(rt, policy, AB_ANY, &w, t, NULL, &fs[0]));
        /* an index that is not the input's: AUTO does not use it */
        CHECK_OK(submit_record(rt, policy, (dv + 1) % ndev, &w, t, NULL, &fs[1]));
        /* the input as a future: a conversion onto dv, with a dtype change */
        ab_convert_options o = toc_copt(TH_U16, AB_CAST_STRETCH);
        ab_future *cf = NULL;
        CHECK_OK(ab_convert(rt, h, toc_ocl(dv), &o, &cf));
        CHECK_OK(submit_record(rt, policy, AB_ANY, &w, NULL, cf, &fs[2]));
        ab_future_release(cf);
        CHECK_OK(submit_record(rt, policy, AB_ANY, &w, t, NULL, &fs[3]));
        CHECK_OK(wait_all_ok(fs, 4));
        CHECK_MSG(atomic_load(&w.count[dv]) == 4, "policy %d, input on opencl:%d: %d of 4 ran there", policy, dv,
                  atomic_load(&w.count[dv]));
        CHECK_EQ_INT(atomic_load(&w.bad_queue), 0);
        CHECK_EQ_INT(atomic_load(&w.null_stream), 0);
      }
      ab_tensor_release(t);
    }
  ab_tensor_release(h);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int host_stream_task(ab_ctx *c, void *arg) {
  *(void **)arg = ab_ctx_stream(c);
  return ab_ctx_device(c).kind == AB_HOST ? 0 : AB_EINVAL;
}

/* ab_ctx_stream: a cl_command_queue on every OpenCL worker, NULL on the host. */
static int test_ctx_stream(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  opt.kinds[AB_OPENCL].workers_per_device = 2;
  TOC_RUNTIME(&rt, &opt, 1);
  int ndev = toc_count(rt, AB_OPENCL);
  for (int dv = 0; dv < ndev; dv++) {
    where_ran w;
    memset(&w, 0, sizeof w);
    ab_future *fs[8];
    for (int i = 0; i < 8; i++) CHECK_OK(submit_record(rt, AB_PLACE_EXPLICIT, dv, &w, NULL, NULL, &fs[i]));
    CHECK_OK(wait_all_ok(fs, 8));
    CHECK_EQ_INT(atomic_load(&w.count[dv]), 8);
    CHECK_EQ_INT(atomic_load(&w.null_stream), 0);
    CHECK_EQ_INT(atomic_load(&w.bad_queue), 0);
  }
  void *s = (void *)1;
  ab_future *f = NULL;
  CHECK_OK(th_submit_fn(rt, th_host(0), host_stream_task, &s, &f));
  CHECK_OK(toc_take(f, NULL));
  CHECK_NULL(s);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* logical_split = 2: twice the devices, each half of a physical one with half its budget;
 * conversions between the halves of one physical device (and across) are bit for bit. */
static int test_logical_split(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  opt.kinds[AB_OPENCL].logical_split = 2;
  opt.kinds[AB_OPENCL].memory_limit = 64ull << 20;
  TOC_RUNTIME(&rt, &opt, 2);
  int ndev = toc_count(rt, AB_OPENCL);
  CHECK_EQ_INT(ndev % 2, 0);
  /* the physical count, from a runtime without the split */
  ab_runtime *rt1;
  ab_runtime_options o1;
  toc_options(&o1);
  TOC_RUNTIME(&rt1, &o1, 1);
  int nphys = toc_count(rt1, AB_OPENCL);
  CHECK_OK(ab_runtime_destroy(rt1, AB_DRAIN));
  CHECK_EQ_INT(ndev, 2 * nphys);
  for (int i = 0; i < ndev; i++) {
    ab_device_info info;
    CHECK_OK(ab_device_info_get(rt, toc_ocl(i), &info));
    CHECK_EQ_INT(info.device.kind, AB_OPENCL);
    CHECK_EQ_INT(info.device.index, i);
    CHECK_EQ_INT(info.physical, i / 2);
    CHECK_EQ_U64(info.budget, 32ull << 20);
  }
  const int64_t shape[2] = {17, 33};
  for (int s = 0; s < TOC_NDT; s++) {
    ab_tensor *h = NULL, *a = NULL;
    CHECK_OK(toc_host_tensor(rt, toc_dt(s), 2, shape, toc_dt(s).code == kDLFloat, s, &h));
    ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
    CHECK_OK(toc_convert(rt, h, toc_ocl(0), &same, &a));
    for (int d = 0; d < TOC_NDT; d++) {
      if ((s + d) % 3 != 0 && th_scale() < 1) continue;
      for (int mode = 0; mode < 2; mode++) {
        ab_convert_options o = toc_copt(toc_dt(d), mode);
        ab_tensor *ref = NULL;
        ab_convert_options ro = o;
        ro.force_copy = true;
        CHECK_OK(toc_convert(rt, h, th_host(0), &ro, &ref));
        int targets[3] = {1, 0, ndev > 2 ? 3 : 1}; /* other half, the same half, another physical */
        for (int k = 0; k < 3; k++) {
          ab_tensor *r = NULL, *back = NULL;
          ab_convert_options oo = o;
          oo.force_copy = true;
          CHECK_OK(toc_convert(rt, a, toc_ocl(targets[k]), &oo, &r));
          CHECK_EQ_INT(ab_tensor_device(r).index, targets[k]);
          /* and back from that half to the first */
          ab_tensor *r2 = NULL;
          CHECK_OK(toc_convert(rt, r, toc_ocl(0), &same, &r2));
          CHECK_OK(toc_to_host(rt, r2, &back));
          char label[64];
          snprintf(label, sizeof label, "logical 0->%d %s->%s %d", targets[k], TOC_DT[s].name, TOC_DT[d].name, mode);
          CHECK_OK(toc_same(back, ref, label));
          ab_tensor_release(back);
          ab_tensor_release(r);
          ab_tensor_release(r2);
        }
        ab_tensor_release(ref);
      }
    }
    ab_tensor_release(a);
    ab_tensor_release(h);
  }
  /* strict: the halves of one physical device are separate devices; staging between them goes
   * through the host and is refused */
  {
    ab_tensor *h = NULL, *a = NULL;
    const int64_t sh1[1] = {64};
    CHECK_OK(toc_host_tensor(rt, TH_F32, 1, sh1, 1, 0, &h));
    ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
    CHECK_OK(toc_convert(rt, h, toc_ocl(0), &same, &a));
    ab_convert_options so = AB_CONVERT_OPTIONS_INIT;
    so.strict = true;
    ab_future *f = NULL;
    CHECK_OK(ab_convert(rt, a, toc_ocl(1), &so, &f));
    CHECK_EQ_INT(toc_take(f, NULL), AB_EPERM);
    ab_tensor_release(a);
    ab_tensor_release(h);
  }
  /* round-robin covers every logical device */
  where_ran w;
  memset(&w, 0, sizeof w);
  ab_future *fs[MAXDEV * 2];
  CHECK(ndev <= MAXDEV);
  for (int i = 0; i < 2 * ndev; i++) CHECK_OK(submit_record(rt, AB_PLACE_ROUND_ROBIN, AB_ANY, &w, NULL, NULL, &fs[i]));
  CHECK_OK(wait_all_ok(fs, 2 * ndev));
  for (int i = 0; i < ndev; i++) CHECK_EQ_INT(atomic_load(&w.count[i]), 2);
  CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

typedef struct {
  ab_runtime *rt;
  int nblocks;
  size_t bytes;
  uint64_t used_inside; /* the device's mem_used seen from inside the task */
  int bad_mem;          /* blocks that are not cl_mem objects of at least `bytes` */
  int alloc_rc;         /* the first failing ab_ctx_alloc */
} scratch_arg;

/* Scratch memory on an OpenCL worker: ab_ctx_alloc hands out device buffers (cl_mem) that count
 * against the device's budget while the task runs and are freed when it ends. */
static int scratch_task(ab_ctx *c, void *arg) {
  scratch_arg *a = arg;
  for (int i = 0; i < a->nblocks; i++) {
    void *p = NULL;
    int rc = ab_ctx_alloc(c, a->bytes, &p);
    if (rc != 0) {
      a->alloc_rc = rc;
      return rc;
    }
    if (p == NULL) a->bad_mem++;
#ifdef TOC_HAVE_CL
    size_t sz = 0;
    if (p && (clGetMemObjectInfo((cl_mem)p, CL_MEM_SIZE, sizeof sz, &sz, NULL) != CL_SUCCESS || sz < a->bytes))
      a->bad_mem++;
    /* usable on the task's queue */
    unsigned char pat = 0x5a;
    if (p && (clEnqueueFillBuffer((cl_command_queue)ab_ctx_stream(c), (cl_mem)p, &pat, 1, 0, a->bytes, 0, NULL,
                                  NULL) != CL_SUCCESS))
      a->bad_mem++;
#endif
  }
  ab_device_stats st;
  if (th_stats(a->rt, ab_ctx_device(c), &st) == 0) a->used_inside = st.mem_used;
  return 0;
}

static int test_ctx_alloc_scratch(void) {
  ab_runtime *rt;
  ab_runtime_options opt;
  toc_options(&opt);
  opt.kinds[AB_OPENCL].memory_limit = 16ull << 20;
  TOC_RUNTIME(&rt, &opt, 1);
  int ndev = toc_count(rt, AB_OPENCL);
  for (int dv = 0; dv < ndev; dv++) {
    /* more blocks than one scratch record holds */
    scratch_arg a = {.rt = rt, .nblocks = 12, .bytes = 1 << 20};
    ab_future *f = NULL;
    CHECK_OK(th_submit_fn(rt, toc_ocl(dv), scratch_task, &a, &f));
    CHECK_OK(toc_take(f, NULL));
    CHECK_EQ_INT(a.bad_mem, 0);
    CHECK_EQ_INT(a.alloc_rc, 0);
    CHECK(a.used_inside >= 12ull << 20);
    CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
    /* past the budget with no_wait: AB_ENOMEM, and what it got is freed */
    scratch_arg b = {.rt = rt, .nblocks = 20, .bytes = 1 << 20};
    ab_oom_policy nw = {.no_wait = true};
    ab_task_desc d = AB_TASK_DESC_INIT;
    d.fn = scratch_task;
    d.arg = &b;
    d.place.policy = AB_PLACE_EXPLICIT;
    d.place.device = toc_ocl(dv);
    d.place.oom = &nw;
    CHECK_OK(ab_submit(rt, &d, &f));
    CHECK_EQ_INT(toc_take(f, NULL), AB_ENOMEM);
    CHECK_EQ_INT(b.alloc_rc, AB_ENOMEM);
    CHECK_EQ_U64(toc_mem_settle(rt, AB_OPENCL, 0), 0);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY_T(ctx_alloc_scratch, 60),
    TEST_ENTRY_T(round_robin, 60),
    TEST_ENTRY_T(least_loaded_avoids_busy, 60),
    TEST_ENTRY_T(affinity, 60),
    TEST_ENTRY_T(ctx_stream, 60),
    TEST_ENTRY_T(logical_split, 120),
    TEST_END,
};
AB_TEST_MAIN(tests)
