/* test_oom.c: the OOM ladder on the host through memory_limit, spill and fault injection. */
#define _GNU_SOURCE
#include "harness.h"

#include <stdlib.h>

#define MiB (UINT64_C(1) << 20)
#define LIMIT (4 * MiB)
#define TASK_BYTES (3 * MiB / 2) /* two fit in LIMIT, three do not */
#define HOLD_BYTES (3 * MiB)     /* HOLD + TASK > LIMIT */

static void *data_of(ab_tensor *t) {
  const DLTensor *dl = ab_tensor_dl(t);
  return (char *)dl->data + dl->byte_offset;
}

static void oom_options(ab_runtime_options *o, int workers, int split) {
  th_options(o);
  o->kinds[AB_HOST].workers_per_device = workers;
  o->kinds[AB_HOST].logical_split = split;
  o->kinds[AB_HOST].memory_limit = LIMIT;
}

static int alloc_bytes(ab_runtime *rt, ab_device d, uint64_t bytes, ab_tensor **out) {
  int64_t shape[1] = {(int64_t)bytes};
  return ab_tensor_alloc(rt, d, TH_U8, 1, shape, out);
}

/* The task: an output of TASK_BYTES (or arg bytes), filled, returned. */
static atomic_int task_runs;
static int alloc_output(ab_ctx *c, void *arg) {
  atomic_fetch_add(&task_runs, 1);
  int64_t shape[1] = {arg ? (int64_t)(intptr_t)arg : (int64_t)TASK_BYTES};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_U8, 1, shape, &t);
  if (r) return r;
  memset(data_of(t), 0x5c, (size_t)shape[0]);
  return ab_ctx_set_output(c, t);
}

static int submit_alloc(ab_runtime *rt, ab_device d, const ab_oom_policy *oom, ab_input *in,
                        int nin, ab_future **out) {
  ab_task_desc desc = AB_TASK_DESC_INIT;
  desc.fn = alloc_output;
  desc.inputs = in;
  desc.ninputs = nin;
  desc.place.policy = AB_PLACE_EXPLICIT;
  desc.place.device = d;
  desc.place.oom = oom;
  return ab_submit(rt, &desc, out);
}

static int wait_stat(ab_runtime *rt, ab_device d, size_t offset, uint64_t at_least) {
  for (int i = 0; i < 10000; i++) {
    ab_device_stats st;
    if (th_stats(rt, d, &st)) return -1;
    if (*(uint64_t *)((char *)&st + offset) >= at_least) return 0;
    th_sleep_ns(1000000);
  }
  return -1;
}

/* The runtime may hold a finished task (and its output) a moment after the future completes:
 * wait until the device's usage drops to `bytes` or less. */
static int wait_used_le(ab_runtime *rt, ab_device d, uint64_t bytes) {
  for (int i = 0; i < 5000; i++) {
    ab_device_stats st;
    if (th_stats(rt, d, &st)) return -1;
    if (st.mem_used <= bytes) return 0;
    th_sleep_ns(1000000);
  }
  return -1;
}

/* ---- parking: 10 tasks of 1.5 MiB under a 4 MiB limit all complete --------------------------- */
static int test_park_until_memory_frees(void) {
  ab_runtime_options o;
  oom_options(&o, 2, 1);
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  enum { N = 10 };
  ab_future *fs[N];
  for (int i = 0; i < N; i++) CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &fs[i]));
  /* whichever two run first hold the budget (tasks run in no promised order) */
  /* nothing is freed until we release a result: some task must park */
  CHECK_OK(wait_stat(rt, th_host(0), offsetof(ab_device_stats, oom_parks), 1));
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_LE_U64(st.mem_used, LIMIT);
  /* consume in completion order (parked tasks retry in no promised order), releasing as we go */
  ab_future *left[N];
  int idx[N], nleft = N;
  for (int i = 0; i < N; i++) left[i] = fs[i], idx[i] = i;
  while (nleft > 0) {
    size_t w = 0;
    CHECK_OK(ab_future_wait_any(left, (size_t)nleft, -1, &w));
    CHECK((int)w < nleft);
    int i = idx[w];
    left[w] = left[nleft - 1];
    idx[w] = idx[nleft - 1];
    nleft--;
    int s = ab_future_status(fs[i]);
    CHECK_MSG(s == 0, "task %d: %d%s: %s", i, s, th_errstr(s),
              ab_future_message(fs[i]) ? ab_future_message(fs[i]) : "(no message)");
    ab_tensor *t = NULL;
    CHECK_OK(ab_future_result(fs[i], &t));
    CHECK_NOT_NULL(t);
    CHECK_EQ_U64(ab_tensor_nbytes(t), TASK_BYTES);
    CHECK_EQ_INT(((uint8_t *)data_of(t))[TASK_BYTES - 1], 0x5c);
    ab_tensor_release(t);
    ab_future_release(fs[i]);
  }
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK(st.oom_events >= 1);
  CHECK(st.oom_parks >= 1);
  CHECK(st.oom_retries >= 1);
  CHECK_EQ_U64(st.oom_failures, 0);
  CHECK_LE_U64(st.mem_peak, LIMIT);
  CHECK_EQ_U64(st.tasks_failed, 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- frees that cannot help do not wake parked tasks ------------------------------------------ */
/* Each attempt takes a small scratch block, then fails on a big one and frees the scratch: a
 * free on the device. While another tensor holds the budget, those frees cannot make room; if
 * they woke the parked tasks, the tasks would wake each other for ever (a retry storm: millions
 * of retries a second). Parked tasks must wait for their backoff or for a free that can fit. */
static int small_then_big(ab_ctx *c, void *arg) {
  (void)arg;
  void *small, *big;
  int r = ab_ctx_alloc(c, 64 * 1024, &small); /* freed when the task ends, success or not */
  if (r) return r;
  return ab_ctx_alloc(c, TASK_BYTES, &big);
}

static int test_useless_frees_do_not_cause_a_retry_storm(void) {
  ab_runtime_options o;
  oom_options(&o, 2, 1);
  o.oom.backoff_initial_ns = 1000000;  /* 1 ms */
  o.oom.backoff_max_ns = 8000000;      /* 8 ms */
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_tensor *hold;
  CHECK_OK(alloc_bytes(rt, th_host(0), HOLD_BYTES, &hold)); /* HOLD + TASK > LIMIT */
  enum { N = 4 };
  ab_future *fs[N];
  for (int i = 0; i < N; i++) {
    ab_task_desc d = AB_TASK_DESC_INIT;
    d.fn = small_then_big;
    d.place.policy = AB_PLACE_EXPLICIT;
    d.place.device = th_host(0);
    CHECK_OK(ab_submit(rt, &d, &fs[i]));
  }
  th_sleep_ns(100000000); /* 100 ms parked: at most ~100/8 + 4 timed retries each */
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_MSG(st.oom_retries < 50 * N, "%" PRIu64 " retries in 100 ms: frees that cannot fit woke parked tasks",
            st.oom_retries);
  ab_tensor_release(hold); /* a free that fits: they complete */
  CHECK_OK(ab_future_wait_all(fs, N, -1));
  for (int i = 0; i < N; i++) {
    CHECK_EQ_INT(ab_future_status(fs[i]), 0);
    ab_future_release(fs[i]);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- no_wait: a clean AB_ENOMEM with a message ------------------------------------------------ */
static int test_no_wait_fails_cleanly(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  o.oom.no_wait = true;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_tensor *hold = NULL;
  CHECK_OK(alloc_bytes(rt, th_host(0), HOLD_BYTES, &hold));
  /* a direct allocation past the budget fails at once */
  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  CHECK_EQ_INT(alloc_bytes(rt, th_host(0), TASK_BYTES, &t), AB_ENOMEM);
  CHECK_NULL(t);
  /* an input that must come through untouched */
  int64_t ishape[1] = {256};
  ab_tensor *input = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, ishape, &input));
  for (int i = 0; i < 256; i++) ((uint8_t *)data_of(input))[i] = (uint8_t)i;
  ab_input in = {input, NULL};
  ab_future *f = NULL;
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, &in, 1, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_future_result(f, &t), AB_ENOMEM);
  CHECK_NULL(t);
  const char *msg = ab_future_message(f);
  CHECK_NOT_NULL(msg);
  CHECK_MSG(strcasestr(msg, "memory") != NULL, "message: %s", msg);
  for (int i = 0; i < 256; i++) CHECK_EQ_INT(((uint8_t *)data_of(input))[i], i);
  ab_future_release(f);
  ab_device_stats st;
  /* counters may trail the future's completion by a moment */
  CHECK_OK(wait_stat(rt, th_host(0), offsetof(ab_device_stats, oom_failures), 1));
  CHECK_OK(wait_stat(rt, th_host(0), offsetof(ab_device_stats, tasks_failed), 1));
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK(st.oom_events >= 1);
  CHECK_EQ_U64(st.oom_parks, 0); /* no_wait skips parking */
  /* with the memory back, the same task succeeds */
  ab_tensor_release(hold);
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, &in, 1, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  ab_tensor_release(input);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* The per-task policy overrides the runtime's. */
/* A negative time in a task's own policy was taken as "the default"; it is refused at submit,
 * and so is a conversion carrying one. */
static int test_negative_policy_times_refused(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  for (int f = 0; f < 3; f++) {
    ab_oom_policy p = {0};
    int64_t *field = f == 0 ? &p.backoff_initial_ns : f == 1 ? &p.backoff_max_ns : &p.deadline_ns;
    *field = f == 2 ? INT64_MIN : -1;
    ab_future *fut = (ab_future *)(uintptr_t)1;
    CHECK_EQ_INT(submit_alloc(rt, th_host(0), &p, NULL, 0, &fut), AB_EINVAL);
    CHECK_NULL(fut);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_per_task_policy(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_tensor *hold = NULL;
  CHECK_OK(alloc_bytes(rt, th_host(0), HOLD_BYTES, &hold));
  ab_oom_policy nw = {0};
  nw.no_wait = true;
  ab_future *f = NULL;
  CHECK_OK(submit_alloc(rt, th_host(0), &nw, NULL, 0, &f));
  CHECK_OK(ab_future_wait(f, TH_SEC(5))); /* would be 10 s with the default ladder */
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  ab_future_release(f);
  /* a short deadline: parks, retries, then fails */
  ab_oom_policy dl = {0};
  dl.backoff_initial_ns = TH_MS(1);
  dl.backoff_max_ns = TH_MS(4);
  dl.deadline_ns = TH_MS(60);
  CHECK_OK(submit_alloc(rt, th_host(0), &dl, NULL, 0, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  CHECK_NOT_NULL(ab_future_message(f));
  ab_future_release(f);
  CHECK_OK(wait_stat(rt, th_host(0), offsetof(ab_device_stats, oom_failures), 2));
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK(st.oom_parks >= 1);
  CHECK(st.oom_retries >= 1);
  /* parked, then memory is freed from outside: it completes */
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &f));
  CHECK_OK(wait_stat(rt, th_host(0), offsetof(ab_device_stats, oom_parks), st.oom_parks + 1));
  CHECK_EQ_INT(ab_future_status(f), AB_EPENDING);
  ab_tensor_release(hold);
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- spill ------------------------------------------------------------------------------------ */
typedef struct {
  _Atomic(ab_tensor *) victim;
  atomic_int calls;
  atomic_ullong bytes;
  atomic_int dev_kind, dev_index;
} spill_state;

static bool spill_cb(size_t bytes, ab_device device, void *arg) {
  spill_state *s = arg;
  atomic_fetch_add(&s->calls, 1);
  atomic_store(&s->bytes, (unsigned long long)bytes);
  atomic_store(&s->dev_kind, device.kind);
  atomic_store(&s->dev_index, device.index);
  ab_tensor *t = atomic_exchange(&s->victim, NULL);
  if (!t) return false;
  ab_tensor_release(t);
  return true;
}

static int test_spill_makes_retry_succeed(void) {
  spill_state s;
  memset(&s, 0, sizeof s);
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  o.oom.no_wait = true; /* only the spill step can save it */
  o.spill = spill_cb;
  o.spill_arg = &s;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_tensor *hold = NULL;
  CHECK_OK(alloc_bytes(rt, th_host(0), HOLD_BYTES, &hold));
  atomic_store(&s.victim, hold);
  ab_future *f = NULL;
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &f));
  CHECK_OK(ab_future_wait(f, -1));
  int st0 = ab_future_status(f);
  CHECK_MSG(st0 == 0, "status %d%s", st0, th_errstr(st0));
  CHECK(atomic_load(&s.calls) >= 1);
  CHECK(atomic_load(&s.bytes) > 0);
  CHECK_EQ_INT(atomic_load(&s.dev_kind), AB_HOST);
  CHECK_EQ_INT(atomic_load(&s.dev_index), 0);
  CHECK_NULL(atomic_load(&s.victim));
  ab_future_release(f);
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK(st.oom_spills >= 1);
  CHECK_EQ_U64(st.oom_failures, 0);
  /* nothing left to spill: the callback says no, the task fails */
  CHECK_OK(wait_used_le(rt, th_host(0), 0));
  CHECK_OK(alloc_bytes(rt, th_host(0), HOLD_BYTES, &hold));
  int calls = atomic_load(&s.calls);
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  CHECK(atomic_load(&s.calls) > calls);
  ab_future_release(f);
  ab_tensor_release(hold);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- fault injection ---------------------------------------------------------------------------- */
static int test_fault_alloc_once_retries(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  o.kinds[AB_HOST].memory_limit = 0; /* no budget: only the injected fault */
  o.oom.backoff_initial_ns = TH_MS(1);
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_fault_spec fs = {AB_FAULT_ALLOC, {AB_HOST, AB_ANY}, 1, 1, 0};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  ab_future *f = NULL;
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &f));
  CHECK_OK(ab_future_wait(f, -1));
  int s = ab_future_status(f);
  CHECK_MSG(s == 0, "status %d%s", s, th_errstr(s));
  ab_tensor *t = NULL;
  CHECK_OK(ab_future_result(f, &t));
  CHECK_EQ_INT(((uint8_t *)data_of(t))[0], 0x5c);
  ab_tensor_release(t);
  ab_future_release(f);
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_EQ_U64(st.faults_injected, 1);
  CHECK(st.oom_events >= 1);
  CHECK_EQ_U64(st.oom_failures, 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_fault_alloc_always_no_wait(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  o.kinds[AB_HOST].memory_limit = 0;
  o.oom.no_wait = true;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  int64_t ishape[1] = {64};
  ab_tensor *input = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, ishape, &input));
  for (int i = 0; i < 64; i++) ((uint8_t *)data_of(input))[i] = (uint8_t)(255 - i);
  ab_fault_spec fs = {AB_FAULT_ALLOC, {AB_HOST, AB_ANY}, 1, -1, 0};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  ab_input in = {input, NULL};
  ab_future *f = NULL;
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, &in, 1, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  CHECK_NOT_NULL(ab_future_message(f));
  ab_future_release(f);
  /* a conversion fails the same way, its source untouched */
  ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
  co.dtype = TH_F32;
  CHECK_OK(ab_convert(rt, input, th_host(0), &co, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  ab_future_release(f);
  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, ishape, &t), AB_ENOMEM);
  CHECK_NULL(t);
  for (int i = 0; i < 64; i++) CHECK_EQ_INT(((uint8_t *)data_of(input))[i], 255 - i);
  ab_device_stats st;
  CHECK_OK(wait_stat(rt, th_host(0), offsetof(ab_device_stats, oom_failures), 2));
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK(st.faults_injected >= 3);
  /* injection off: everything works again */
  ab_fault_spec off;
  memset(&off, 0, sizeof off);
  CHECK_OK(ab_runtime_fault(rt, &off));
  CHECK_OK(submit_alloc(rt, th_host(0), NULL, &in, 1, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  ab_tensor_release(input);
  CHECK_ERR_IN(ab_runtime_fault(NULL, &off), AB_EINVAL);
  CHECK_ERR_IN(ab_runtime_fault(rt, NULL), AB_EINVAL);
  ab_fault_spec bad = {99, {AB_HOST, 0}, 1, 1, 0};
  CHECK_ERR_IN(ab_runtime_fault(rt, &bad), AB_EINVAL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* nth counts from the call: the first two allocations pass, the third fails. */
static int test_fault_nth(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  o.kinds[AB_HOST].memory_limit = 0;
  o.oom.no_wait = true;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_fault_spec fs = {AB_FAULT_ALLOC, {AB_HOST, 0}, 3, -1, 0};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  int64_t shape[1] = {16};
  ab_tensor *a = NULL, *b = NULL, *c = (ab_tensor *)(uintptr_t)1;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, shape, &a));
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, shape, &b));
  CHECK_EQ_INT(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, shape, &c), AB_ENOMEM);
  CHECK_NULL(c);
  ab_tensor_release(a);
  ab_tensor_release(b);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Delay injection slows completion but changes no result. */
static int test_fault_delay(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_fault_spec fs = {AB_FAULT_LAUNCH, {AB_HOST, AB_ANY}, 0, 0, TH_MS(2)};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  ab_future *f[4];
  for (int i = 0; i < 4; i++) CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &f[i]));
  CHECK_OK(ab_future_wait_all(f, 4, -1));
  for (int i = 0; i < 4; i++) {
    CHECK_OK(ab_future_status(f[i]));
    ab_future_release(f[i]);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* LAUNCH faults fail compute tasks and conversion kernels; COPY faults fail plain copies. */
static int test_fault_launch_and_copy(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 2));
  ab_fault_spec fs = {AB_FAULT_LAUNCH, {AB_HOST, AB_ANY}, 1, 1, 0};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  atomic_int ran = 0;
  ab_future *f = NULL;
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, &ran, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_EFAULT);
  CHECK_EQ_INT(atomic_load(&ran), 0); /* the launch failed: the body never ran */
  ab_future_release(f);
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, &ran, &f)); /* count was 1 */
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  CHECK_EQ_INT(atomic_load(&ran), 1);
  ab_future_release(f);

  int64_t shape[1] = {32};
  ab_tensor *src = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &src));
  memset(data_of(src), 0, 128);
  ab_fault_spec cp = {AB_FAULT_COPY, {AB_HOST, AB_ANY}, 1, 1, 0};
  CHECK_OK(ab_runtime_fault(rt, &cp));
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT; /* same dtype, other device: a copy */
  CHECK_OK(ab_convert(rt, src, th_host(1), &o, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_EFAULT);
  ab_future_release(f);
  CHECK_OK(ab_convert(rt, src, th_host(1), &o, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  ab_device_stats s0, s1;
  CHECK_OK(th_stats(rt, th_host(0), &s0));
  CHECK_OK(th_stats(rt, th_host(1), &s1));
  CHECK_EQ_U64(s0.faults_injected + s1.faults_injected, 2);
  ab_tensor_release(src);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A completion delay holds the future back at least that long (a lower bound only). */
static int test_fault_delay_holds_completion(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_fault_spec fs = {AB_FAULT_ALLOC, {AB_HOST, AB_ANY}, 0, 0, TH_MS(300)};
  CHECK_OK(ab_runtime_fault(rt, &fs));
  ab_future *f = NULL;
  int64_t t0 = th_now_ns();
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &f));
  int r = ab_future_wait(f, TH_MS(50));
  if (r == 0) CHECK_MSG(th_now_ns() - t0 >= TH_MS(300), "completed before the injected delay");
  else CHECK_EQ_INT(r, AB_ETIMEDOUT);
  CHECK_OK(ab_future_wait(f, -1));
  CHECK(th_now_ns() - t0 >= TH_MS(300));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  ab_fault_spec off;
  memset(&off, 0, sizeof off);
  CHECK_OK(ab_runtime_fault(rt, &off));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- re-route --------------------------------------------------------------------------------- */
static int where_ran(ab_ctx *c, void *arg) {
  int64_t shape[1] = {(int64_t)MiB};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_U8, 1, shape, &t);
  if (r) return r;
  atomic_store((atomic_int *)arg, ab_ctx_device(c).index);
  return ab_ctx_set_output(c, t);
}

static int test_reroute(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 2); /* two logical devices, 2 MiB each */
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_tensor *hold = NULL;
  CHECK_OK(alloc_bytes(rt, th_host(0), 3 * MiB / 2, &hold)); /* device 0 cannot fit 1 MiB more */
  ab_oom_policy p = {0};
  p.allow_reroute = true;
  p.backoff_initial_ns = TH_MS(1);
  p.backoff_max_ns = TH_MS(2);
  p.deadline_ns = TH_MS(20);
  /* placed by affinity on device 0 (its only input lives there); not explicit, so it may move */
  int64_t small[1] = {16};
  ab_tensor *input = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, small, &input));
  ab_input in = {input, NULL};
  atomic_int dev = -1;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = where_ran;
  d.arg = &dev;
  d.inputs = &in;
  d.ninputs = 1;
  d.place.policy = AB_PLACE_AFFINITY;
  d.place.device = th_host(AB_ANY);
  d.place.oom = &p;
  ab_future *f = NULL;
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  int s = ab_future_status(f);
  CHECK_MSG(s == 0, "status %d%s", s, th_errstr(s));
  CHECK_EQ_INT(atomic_load(&dev), 1);
  ab_tensor *t = NULL;
  CHECK_OK(ab_future_result(f, &t));
  CHECK_EQ_INT(ab_tensor_device(t).index, 1);
  ab_tensor_release(t);
  ab_future_release(f);
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  ab_device_stats st1;
  CHECK_OK(th_stats(rt, th_host(1), &st1));
  CHECK(st.oom_reroutes + st1.oom_reroutes >= 1);
  ab_tensor_release(input);
  ab_tensor_release(hold);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Scratch memory from ab_ctx_alloc is given back when the task ends: ten tasks that each take
 * 3 MiB of scratch run one after another under a 4 MiB limit. */
static int scratch_task(ab_ctx *c, void *arg) {
  void *p = NULL;
  int r = ab_ctx_alloc(c, HOLD_BYTES, &p);
  if (r) return r;
  memset(p, 0x33, HOLD_BYTES);
  return 0;
}

static int test_scratch_freed_at_task_end(void) {
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  o.oom.no_wait = true; /* a leak would fail the next task at once */
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  for (int i = 0; i < 10; i++) {
    ab_future *f = NULL;
    CHECK_OK(th_submit_fn(rt, th_host(0), scratch_task, NULL, &f));
    CHECK_OK(ab_future_wait(f, -1));
    int s = ab_future_status(f);
    CHECK_MSG(s == 0, "task %d: %d%s", i, s, th_errstr(s));
    ab_future_release(f);
  }
  CHECK_OK(wait_used_le(rt, th_host(0), 0));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Memory comes back: after everything is released, mem_used returns to 0. */
static int test_mem_used_returns_to_zero(void) {
  ab_runtime_options o;
  oom_options(&o, 2, 1);
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_future *fs[6];
  for (int i = 0; i < 6; i++) {
    CHECK_OK(submit_alloc(rt, th_host(0), NULL, NULL, 0, &fs[i]));
    CHECK_OK(ab_future_wait(fs[i], -1));
    CHECK_OK(ab_future_status(fs[i]));
    ab_future_release(fs[i]);
  }
  ab_device_stats st;
  for (int i = 0; i < 2000; i++) {
    CHECK_OK(th_stats(rt, th_host(0), &st));
    if (st.mem_used == 0) break;
    th_sleep_ns(1000000);
  }
  CHECK_EQ_U64(st.mem_used, 0);
  CHECK(st.mem_peak >= TASK_BYTES);
  CHECK_EQ_U64(st.mem_budget, LIMIT);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- a task's own out-of-memory (a framework in it ran out) gives the device's cache back ---- */
static atomic_int framework_calls;
static int framework_task(ab_ctx *c, void *arg) {
  (void)c;
  (void)arg;
  return atomic_fetch_add(&framework_calls, 1) == 0 ? AB_ENOMEM : 0; /* short of memory once */
}

/* Memory the device's pools cache is what another framework in the process may lack: before
 * the task is parked, the cache is trimmed and pending frees synchronised (counted in the
 * stats), then the retry succeeds. The runtime's own ladder failures are not counted twice. */
static int test_task_oom_gives_cache_back(void) {
  ab_runtime *rt;
  ab_runtime_options o;
  oom_options(&o, 1, 1);
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_device_stats before, after;
  CHECK_OK(th_stats(rt, th_host(0), &before));
  ab_future *f;
  CHECK_OK(th_submit_fn(rt, th_host(0), framework_task, NULL, &f));
  CHECK_OK(ab_future_wait(f, TH_SEC(30)));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  CHECK_EQ_INT(atomic_load(&framework_calls), 2);
  CHECK_OK(th_stats(rt, th_host(0), &after));
  CHECK_EQ_U64(after.oom_trims - before.oom_trims, 1);
  CHECK_EQ_U64(after.oom_syncs - before.oom_syncs, 1);
  CHECK_EQ_U64(after.oom_parks - before.oom_parks, 1);
  /* a task the runtime's own ladder failed: trimmed and synchronised by the ladder, once */
  ab_tensor *hold;
  CHECK_OK(alloc_bytes(rt, th_host(0), HOLD_BYTES, &hold));
  CHECK_OK(th_stats(rt, th_host(0), &before));
  ab_oom_policy nw = {.no_wait = true};
  CHECK_OK(submit_alloc(rt, th_host(0), &nw, NULL, 0, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  ab_future_release(f);
  CHECK_OK(th_stats(rt, th_host(0), &after));
  CHECK_EQ_U64(after.oom_trims - before.oom_trims, 1);
  CHECK_EQ_U64(after.oom_syncs - before.oom_syncs, 1);
  ab_tensor_release(hold);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A parked task that is cancelled is dropped from the parked list at once, with its inputs, not
 * at its next retry: under memory pressure those inputs may be what others wait for. The cancel
 * comes the moment the task is parked, while its worker is between reading the parked list and
 * going to sleep: the wake-up must not be lost there either. */
static atomic_int input_released;
static void on_input_release(void *ctx) {
  (void)ctx;
  atomic_store(&input_released, 1);
}
static int oom_always(ab_ctx *c, void *arg) {
  (void)c;
  atomic_fetch_add((atomic_int *)arg, 1);
  return AB_ENOMEM;
}

static int test_cancel_parked_releases_inputs(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  static float data[4];
  int64_t shape[1] = {4};
  DLTensor dl = {.data = data, .device = {kDLCPU, 0}, .ndim = 1, .dtype = TH_F32, .shape = shape};
  ab_oom_policy p = {.backoff_initial_ns = TH_SEC(5), .deadline_ns = TH_SEC(60)}; /* retry in 5 s */
  int64_t worst = 0;
  for (int round = 0; round < 10; round++) {
    atomic_store(&input_released, 0);
    ab_tensor *in = NULL;
    CHECK_OK(ab_tensor_wrap(&dl, 0, on_input_release, NULL, &in));
    atomic_int runs = 0;
    ab_input inputs[1] = {{in, NULL}};
    ab_task_desc d = AB_TASK_DESC_INIT;
    d.fn = oom_always;
    d.arg = &runs;
    d.inputs = inputs;
    d.ninputs = 1;
    d.place.policy = AB_PLACE_EXPLICIT;
    d.place.device = th_host(0);
    d.place.oom = &p;
    ab_future *f = NULL;
    CHECK_OK(ab_submit(rt, &d, &f));
    ab_tensor_release(in); /* the task holds the last reference */
    ab_device_stats st;
    do CHECK_OK(th_stats(rt, th_host(0), &st));
    while (st.parked == 0);
    int64_t t0 = th_now_ns();
    CHECK_OK(ab_future_cancel(f));
    CHECK_EQ_INT(ab_future_status(f), AB_ECANCELED);
    while (!atomic_load(&input_released) && th_now_ns() - t0 < TH_SEC(2)) th_sleep_ns(TH_MS(1) / 10);
    int64_t took = th_now_ns() - t0;
    if (took > worst) worst = took;
    CHECK_MSG(atomic_load(&input_released), "round %d: still held %.0f ms after the cancel", round, (double)took / 1e6);
    CHECK_EQ_INT(atomic_load(&runs), 1);
    CHECK_OK(th_stats(rt, th_host(0), &st));
    CHECK_EQ_U64(st.parked, 0);
    ab_future_release(f);
  }
  printf("# cancelled parked tasks' inputs were released within %.2f ms (their retries were 5 s away)\n",
         (double)worst / 1e6);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- AB_TASK_OOM_RETRY: a task whose caller ran it out of memory enters the ladder ------------ */
typedef struct {
  atomic_int next;   /* the order in which tasks ran */
  int at;            /* when the flagged one ran: its position, -1 before */
} run_order;

static int note_order(ab_ctx *c, void *arg) {
  (void)c;
  atomic_fetch_add(&((run_order *)arg)->next, 1);
  return 0;
}

static int note_order_flagged(ab_ctx *c, void *arg) {
  (void)c;
  run_order *o = arg;
  o->at = atomic_fetch_add(&o->next, 1);
  return 0;
}

/* Submitted with AB_TASK_OOM_RETRY, a task starts parked, even on a full queue (TRY mode), and
 * its first retry runs before the tasks queued ahead of it; with no_wait it fails at once with
 * its memory report, its function never run. Unknown flags are refused; a desc from before
 * `flags` existed is accepted. */
static int test_submit_oom_retry_starts_parked(void) {
  enum { CAP = 4 };
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 1;
  o.queue_capacity = CAP;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL, *queued[CAP] = {0};
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk)); /* the worker is held */
  run_order order = {.at = -1};
  for (int i = 0; i < CAP; i++) CHECK_OK(th_submit_fn(rt, th_host(0), note_order, &order, &queued[i]));
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = note_order_flagged;
  d.arg = &order;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(0);
  d.place.mode = AB_SUBMIT_TRY;
  ab_future *f = NULL;
  CHECK_ERR_IN(ab_submit(rt, &d, &f), AB_EAGAIN); /* the queue is full */
  d.flags = AB_TASK_OOM_RETRY;
  CHECK_OK(ab_submit(rt, &d, &f)); /* the ladder needs no room in the queue */
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_EQ_U64(st.parked, 1);
  CHECK_EQ_U64(st.oom_parks, 1);
  CHECK_EQ_INT(ab_future_status(f), AB_EPENDING);
  th_sleep_ns(TH_MS(5)); /* its first retry is due (1 ms) */
  th_gate_open_all(&g);
  CHECK_OK(ab_future_wait(f, TH_SEC(10)));
  CHECK_OK(ab_future_status(f));
  CHECK_OK(ab_future_wait_all(queued, CAP, TH_SEC(10)));
  CHECK_MSG(order.at == 0, "the retry ran after %d queued tasks", order.at);
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_EQ_U64(st.oom_retries, 1);
  CHECK_EQ_U64(st.parked, 0);
  ab_future_release(f);
  for (int i = 0; i < CAP; i++) ab_future_release(queued[i]);

  /* no_wait: it fails at once, unrun */
  ab_oom_policy nw = {.no_wait = true};
  d.place.oom = &nw;
  order.at = -1;
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_EQ_INT(ab_future_status(f), AB_ENOMEM);
  CHECK(order.at == -1);
  const char *msg = ab_future_message(f);
  CHECK_MSG(msg && strstr(msg, "out of memory on host:0") && strstr(msg, "no wait"), "message: %s", msg ? msg : "-");
  ab_future_release(f);

  /* flags the library does not know; a desc that ends before flags */
  d.place.oom = NULL;
  d.flags = 1u << 7;
  CHECK_ERR_IN(ab_submit(rt, &d, &f), AB_EINVAL);
  CHECK_NULL(f);
  d.size = offsetof(ab_task_desc, flags);
  d.place.mode = AB_SUBMIT_BLOCK;
  CHECK_OK(ab_submit(rt, &d, &f)); /* flags not read: an ordinary task */
  CHECK_OK(ab_future_wait(f, TH_SEC(10)));
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_EQ_U64(st.oom_parks, 1);
  ab_future_release(f);
  CHECK_OK(ab_future_wait(blk, TH_SEC(10)));
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  th_gate_destroy(&g);
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY(park_until_memory_frees),
                                      TEST_ENTRY(submit_oom_retry_starts_parked),
                                      TEST_ENTRY(task_oom_gives_cache_back),
                                      TEST_ENTRY(no_wait_fails_cleanly),
                                      TEST_ENTRY(per_task_policy),
                                      TEST_ENTRY(negative_policy_times_refused),
                                      TEST_ENTRY(spill_makes_retry_succeed),
                                      TEST_ENTRY(fault_alloc_once_retries),
                                      TEST_ENTRY(fault_alloc_always_no_wait),
                                      TEST_ENTRY(fault_nth),
                                      TEST_ENTRY(fault_delay),
                                      TEST_ENTRY(fault_launch_and_copy),
                                      TEST_ENTRY(fault_delay_holds_completion),
                                      TEST_ENTRY(reroute),
                                      TEST_ENTRY(scratch_freed_at_task_end),
                                      TEST_ENTRY(mem_used_returns_to_zero),
                                      TEST_ENTRY(useless_frees_do_not_cause_a_retry_storm),
                                      TEST_ENTRY(cancel_parked_releases_inputs),
                                      TEST_END};
AB_TEST_MAIN(tests)
