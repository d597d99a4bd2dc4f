/* test_submit.c: argument checks, backpressure (TRY, timeout), ctx accessors and outputs. */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#define SENTINEL ((ab_future *)(uintptr_t)0x1)
#define SENTINEL_T ((ab_tensor *)(uintptr_t)0x1)

static int nop(ab_ctx *c, void *arg) { return 0; }

static int test_bad_args(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  atomic_int ran = 0;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.arg = &ran;
  ab_future *f = SENTINEL;

  CHECK_EQ_INT(ab_submit(NULL, &d, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, NULL, &f), AB_EINVAL);
  CHECK_NULL(f);
  CHECK_EQ_INT(ab_submit(rt, &d, NULL), AB_EINVAL);

  ab_task_desc b = d;
  b.size = 0;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);
  b = d;
  b.size = sizeof(ab_task_desc) + 64;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);

  b = d;
  b.fn = NULL;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);

  b = d;
  b.ninputs = -1;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);
  b.ninputs = 2;
  b.inputs = NULL;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);

  /* an input must be a tensor or a future */
  ab_input none = {NULL, NULL};
  b = d;
  b.inputs = &none;
  b.ninputs = 1;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);

  b = d;
  b.place.policy = 42;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);
  b = d;
  b.place.mode = 9;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_EINVAL);
  CHECK_NULL(f);

  /* a failed submit with a tensor input keeps the caller's reference */
  int64_t shape[1] = {4};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &t));
  ab_input tin = {t, NULL};
  b = d;
  b.inputs = &tin;
  b.ninputs = 1;
  b.place.policy = AB_PLACE_EXPLICIT;
  b.place.device = th_host(3);
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &b, &f), AB_ENODEV);
  CHECK_NULL(f);
  CHECK_EQ_U64(ab_tensor_nbytes(t), 16); /* still ours, still valid */
  ab_tensor_release(t);

  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(atomic_load(&ran), 0); /* nothing ran */
  return 0;
}

static int test_unknown_device(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 2));
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = nop;
  ab_future *f = SENTINEL;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(2); /* two logical host devices: 0 and 1 */
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ENODEV);
  CHECK_NULL(f);
  d.place.policy = AB_PLACE_AUTO;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ENODEV);
  CHECK_NULL(f);
  d.place.device.kind = AB_CUDA; /* disabled: no devices of that kind */
  d.place.device.index = AB_ANY;
  d.place.policy = AB_PLACE_ROUND_ROBIN;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ENODEV);
  CHECK_NULL(f);
  d.place.device.kind = AB_OPENCL;
  d.place.policy = AB_PLACE_LEAST_LOADED;
  f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ENODEV);
  CHECK_NULL(f);
  d.place.device.kind = 17; /* not a kind at all */
  f = SENTINEL;
  CHECK_ERR_IN(ab_submit(rt, &d, &f), AB_ENODEV, AB_EINVAL);
  CHECK_NULL(f);
  d.place.device = th_host(-5);
  d.place.policy = AB_PLACE_EXPLICIT;
  f = SENTINEL;
  CHECK_ERR_IN(ab_submit(rt, &d, &f), AB_ENODEV, AB_EINVAL);
  CHECK_NULL(f);
  /* a valid one still works */
  d.place.device = th_host(1);
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* queue_capacity = 4, one worker held by a gate: exactly 4 more are accepted with TRY. */
static int test_try_full_queue(void) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 1;
  o.kinds[AB_HOST].logical_split = 1;
  o.queue_capacity = 4;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  atomic_int ran = 0;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.arg = &ran;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(0);
  d.place.mode = AB_SUBMIT_TRY;
  ab_future *fs[16] = {0};
  int accepted = 0, r = 0;
  while (accepted < 16) {
    ab_future *f = SENTINEL;
    r = ab_submit(rt, &d, &f);
    if (r != 0) {
      CHECK_NULL(f);
      break;
    }
    fs[accepted++] = f;
  }
  CHECK_EQ_INT(r, AB_EAGAIN);
  CHECK_EQ_INT(accepted, 4);
  ab_device_stats st;
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK_EQ_U64(st.queued, 4);
  /* again: still full */
  ab_future *f = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_EAGAIN);
  CHECK_NULL(f);
  th_gate_open(&g, 1);
  CHECK_OK(ab_future_wait_all(fs, (size_t)accepted, -1));
  CHECK_EQ_INT(atomic_load(&ran), accepted);
  /* space again */
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  ab_future_release(f);
  for (int i = 0; i < accepted; i++) ab_future_release(fs[i]);
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(atomic_load(&ran), accepted + 1);
  th_gate_destroy(&g);
  return 0;
}

static int test_block_timeout(void) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 1;
  o.queue_capacity = 2;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  atomic_int ran = 0;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.arg = &ran;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(0);
  d.place.mode = AB_SUBMIT_BLOCK;
  d.place.timeout_ns = TH_MS(20);
  ab_future *fs[2] = {0};
  CHECK_OK(ab_submit(rt, &d, &fs[0]));
  CHECK_OK(ab_submit(rt, &d, &fs[1]));
  ab_future *f = SENTINEL;
  int64_t t0 = th_now_ns();
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ETIMEDOUT);
  CHECK_NULL(f);
  CHECK(th_now_ns() - t0 >= TH_MS(19)); /* it waited (a lower bound only) */
  /* a blocking submit without timeout proceeds once the queue drains */
  th_gate_open(&g, 1);
  d.place.timeout_ns = 0;
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  ab_future_release(f);
  CHECK_OK(ab_future_wait_all(fs, 2, -1));
  ab_future_release(fs[0]);
  ab_future_release(fs[1]);
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(atomic_load(&ran), 3); /* the rejected one never ran */
  th_gate_destroy(&g);
  return 0;
}

/* max_bytes_in_flight: TRY refuses a task whose bytes would pass the limit on a busy device. */
static int test_bytes_in_flight(void) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 1;
  o.max_bytes_in_flight = 1000;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  atomic_int ran = 0;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.arg = &ran;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(0);
  d.place.mode = AB_SUBMIT_TRY;
  d.bytes_hint = 600;
  ab_future *a = NULL, *b = SENTINEL, *c = NULL;
  CHECK_OK(ab_submit(rt, &d, &a));
  CHECK_EQ_INT(ab_submit(rt, &d, &b), AB_EAGAIN); /* 600 + 600 > 1000 */
  CHECK_NULL(b);
  d.bytes_hint = 300;
  CHECK_OK(ab_submit(rt, &d, &c)); /* 900 fits */
  /* blocking with a timeout waits for bytes too */
  d.place.mode = AB_SUBMIT_BLOCK;
  d.place.timeout_ns = TH_MS(10);
  d.bytes_hint = 600;
  b = SENTINEL;
  CHECK_EQ_INT(ab_submit(rt, &d, &b), AB_ETIMEDOUT);
  CHECK_NULL(b);
  th_gate_open(&g, 1);
  d.place.timeout_ns = 0;
  CHECK_OK(ab_submit(rt, &d, &b)); /* space comes back */
  ab_future *all[3] = {a, b, c};
  CHECK_OK(ab_future_wait_all(all, 3, -1));
  for (int i = 0; i < 3; i++) ab_future_release(all[i]);
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(atomic_load(&ran), 3);
  th_gate_destroy(&g);
  return 0;
}

/* ---- ctx accessors ------------------------------------------------------------------------ */
typedef struct {
  ab_device dev;
  void *stream;
  int worker;
  int ninputs;
  const void *in_data[3];
  int in_null_past_end;
  int cancelled;
  int alloc_rc;
  int alloc_rc2;
} ctx_seen;

static int look_at_ctx(ab_ctx *c, void *arg) {
  ctx_seen *s = arg;
  s->dev = ab_ctx_device(c);
  s->stream = ab_ctx_stream(c);
  s->worker = ab_ctx_worker(c);
  s->ninputs = ab_ctx_ninputs(c);
  for (int i = 0; i < s->ninputs && i < 3; i++) {
    ab_tensor *t = ab_ctx_input(c, i);
    s->in_data[i] = t ? (char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset : NULL;
  }
  s->in_null_past_end = ab_ctx_input(c, s->ninputs) == NULL && ab_ctx_input(c, -1) == NULL;
  s->cancelled = ab_ctx_cancelled(c);
  /* scratch memory: writable over its whole size */
  void *p = NULL;
  s->alloc_rc = ab_ctx_alloc(c, 1 << 20, &p);
  if (s->alloc_rc == 0) memset(p, 0xab, 1 << 20);
  void *q = NULL;
  s->alloc_rc2 = ab_ctx_alloc(c, 100, &q);
  if (s->alloc_rc2 == 0) {
    memset(q, 1, 100);
    if (p && q && (char *)q < (char *)p + (1 << 20) && (char *)q + 100 > (char *)p)
      s->alloc_rc2 = 12345; /* overlap */
  }
  return 0;
}

static int test_ctx_accessors(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 3, 2));
  int64_t shape[1] = {8};
  ab_tensor *a = NULL, *b = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(1), TH_F32, 1, shape, &a));
  CHECK_OK(ab_tensor_alloc(rt, th_host(1), TH_U8, 1, shape, &b));
  ab_input ins[2] = {{a, NULL}, {b, NULL}};
  ctx_seen s;
  memset(&s, 0, sizeof s);
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = look_at_ctx;
  d.arg = &s;
  d.inputs = ins;
  d.ninputs = 2;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(1);
  ab_future *f = NULL;
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  CHECK_EQ_INT(s.dev.kind, AB_HOST);
  CHECK_EQ_INT(s.dev.index, 1);
  CHECK_NULL(s.stream);
  CHECK(s.worker >= 0 && s.worker < 3);
  CHECK_EQ_INT(s.ninputs, 2);
  /* same device: zero-copy, the task sees the caller's memory */
  CHECK_EQ_PTR(s.in_data[0], (char *)ab_tensor_dl(a)->data + ab_tensor_dl(a)->byte_offset);
  CHECK_EQ_PTR(s.in_data[1], (char *)ab_tensor_dl(b)->data + ab_tensor_dl(b)->byte_offset);
  CHECK(s.in_null_past_end);
  CHECK_EQ_INT(s.cancelled, 0);
  CHECK_OK(s.alloc_rc);
  CHECK_OK(s.alloc_rc2);
  ab_future_release(f);
  ab_tensor_release(a);
  ab_tensor_release(b);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- outputs ------------------------------------------------------------------------------ */
static int make_output(ab_ctx *c, void *arg) {
  int64_t shape[2] = {3, 5};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_F64, 2, shape, &t);
  if (r) return r;
  if (!ab_tensor_is_contiguous(t)) {
    ab_tensor_release(t);
    return AB_EFAULT;
  }
  ab_device d = ab_tensor_device(t), cd = ab_ctx_device(c);
  if (d.kind != cd.kind || d.index != cd.index) {
    ab_tensor_release(t);
    return AB_EDEVICE;
  }
  double *p = (double *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset);
  for (int i = 0; i < 15; i++) p[i] = i * 0.5 + (double)(intptr_t)arg;
  return ab_ctx_set_output(c, t);
}

static int make_output_then_fail(ab_ctx *c, void *arg) {
  int64_t shape[1] = {4};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_F32, 1, shape, &t);
  if (r) return r;
  r = ab_ctx_set_output(c, t);
  if (r) return r;
  return AB_EDEVICE;
}

static int test_set_output_result(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 2));
  ab_future *f = NULL;
  CHECK_OK(th_submit_fn(rt, th_host(1), make_output, (void *)(intptr_t)10, &f));
  CHECK_OK(ab_future_wait(f, -1));
  ab_tensor *t = NULL;
  CHECK_OK(ab_future_result(f, &t));
  CHECK_NOT_NULL(t);
  ab_tensor *t2 = NULL;
  CHECK_OK(ab_future_result(f, &t2)); /* a new reference each time */
  CHECK_EQ_PTR(t2, t);
  ab_tensor_release(t2);
  ab_future_release(f); /* the result outlives the future */
  const DLTensor *dl = ab_tensor_dl(t);
  CHECK_EQ_INT(dl->ndim, 2);
  CHECK_EQ_INT(dl->shape[0], 3);
  CHECK_EQ_INT(dl->shape[1], 5);
  CHECK_EQ_INT(dl->dtype.code, kDLFloat);
  CHECK_EQ_INT(dl->dtype.bits, 64);
  ab_device d = ab_tensor_device(t);
  CHECK_EQ_INT(d.index, 1);
  int64_t idx[2] = {2, 4};
  CHECK(*(double *)th_elem(dl, idx) == 14 * 0.5 + 10);
  ab_tensor_release(t);

  /* a task that sets an output and then fails: the status wins, no result */
  CHECK_OK(th_submit_fn(rt, th_host(0), make_output_then_fail, NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_future_result(f, &t), AB_EDEVICE);
  CHECK_NULL(t);
  ab_future_release(f);

  /* result read after the runtime is gone */
  CHECK_OK(th_submit_fn(rt, th_host(0), make_output, (void *)(intptr_t)1, &f));
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_OK(ab_future_status(f));
  CHECK_OK(ab_future_result(f, &t));
  CHECK(*(double *)th_elem(ab_tensor_dl(t), idx) == 14 * 0.5 + 1);
  ab_future_release(f);
  ab_tensor_release(t);
  return 0;
}

/* ab_ctx_alloc_tensor arguments; *arg gets the number of the first check that failed */
static int bad_alloc_args(ab_ctx *c, void *arg) {
  int *step = arg;
  int64_t neg[1] = {-1}, ok[1] = {4};
  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  *step = 1;
  int r = ab_ctx_alloc_tensor(c, TH_F32, 1, neg, &t);
  if (r >= 0 || t != NULL) return AB_EFAULT;
  *step = 2;
  t = (ab_tensor *)(uintptr_t)1;
  r = ab_ctx_alloc_tensor(c, th_dt(77, 8), 1, ok, &t);
  if (r != AB_EDTYPE || t != NULL) return AB_EFAULT;
  *step = 3;
  r = ab_ctx_alloc_tensor(c, TH_F32, AB_MAX_NDIM + 1, ok, &t);
  if (r >= 0) return AB_EFAULT;
  *step = 5;
  r = ab_ctx_alloc(c, 16, NULL);
  if (r != AB_EINVAL) return AB_EFAULT;
  *step = 0;
  return 0;
}

static int test_ctx_bad_args(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_future *f = NULL;
  int step = -1;
  CHECK_OK(th_submit_fn(rt, th_host(0), bad_alloc_args, &step, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_MSG(ab_future_status(f) == 0, "check %d inside the task failed", step);
  ab_future_release(f);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A default-initialised placement (AUTO, host 0) works; tensor inputs keep references. */
static int sum_input(ab_ctx *c, void *arg) {
  ab_tensor *t = ab_ctx_input(c, 0);
  const DLTensor *dl = ab_tensor_dl(t);
  float s = 0;
  for (int64_t i = 0; i < dl->shape[0]; i++) s += *(float *)th_elem(dl, &i);
  *(float *)arg = s;
  return 0;
}

static int test_tensor_input_reference(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  int64_t shape[1] = {4};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &t));
  float *p = (float *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset);
  for (int i = 0; i < 4; i++) p[i] = (float)(i + 1);
  float sum = 0;
  ab_input in = {t, NULL};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = sum_input;
  d.arg = &sum;
  d.inputs = &in;
  d.ninputs = 1;
  ab_future *f = NULL;
  CHECK_OK(ab_submit(rt, &d, &f));
  ab_tensor_release(t); /* queued task holds its own */
  th_gate_open(&g, 1);
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  CHECK(sum == 10.0f);
  ab_future_release(f);
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  th_gate_destroy(&g);
  return 0;
}

/* ---- out-parameters on every error path --------------------------------------------------------- */
#define TSENT ((ab_tensor *)(uintptr_t)0x1)

static void release_nothing(void *ctx) { (void)ctx; }

/* What the header says a failed call leaves in its out-parameters: NULL, for every early
 * error of every function that has one. */
static int test_out_params_on_error(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {4, 4}, neg = -1;
  ab_tensor *t = NULL, *o = TSENT;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, shape, &t));
  ab_runtime *r2 = (ab_runtime *)(uintptr_t)1;
  ab_runtime_options bad = AB_RUNTIME_OPTIONS_INIT;
  bad.size = 1;
  CHECK_ERR_IN(ab_runtime_create(&bad, &r2), AB_EINVAL);
  CHECK_NULL(r2);
  r2 = (ab_runtime *)(uintptr_t)1;
  bad = (ab_runtime_options)AB_RUNTIME_OPTIONS_INIT;
  bad.kinds[AB_HOST].workers_per_device = -1;
  CHECK_ERR_IN(ab_runtime_create(&bad, &r2), AB_EINVAL);
  CHECK_NULL(r2);
#define EXPECT_T(call, ...)                                                                   \
  do {                                                                                        \
    o = TSENT;                                                                                \
    CHECK_ERR_IN(call, __VA_ARGS__);                                                          \
    CHECK_NULL(o);                                                                            \
  } while (0)
  EXPECT_T(ab_tensor_alloc(NULL, th_host(0), TH_F32, 2, shape, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_alloc(rt, th_host(4), TH_F32, 2, shape, &o), AB_ENODEV);
  EXPECT_T(ab_tensor_alloc(rt, th_host(0), th_dt(kDLFloat, 12), 2, shape, &o), AB_EDTYPE);
  EXPECT_T(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, &neg, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_alloc_pinned(NULL, TH_F32, 2, shape, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_alloc_pinned(rt, TH_F32, -1, shape, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_view(NULL, 1, shape, NULL, 0, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_view(t, 1, &neg, NULL, 0, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_view(t, 2, shape, NULL, 1, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_index(NULL, 0, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_index(t, 4, &o), AB_ESHAPE);
  DLTensor dl = {.data = NULL, .device = {kDLCPU, 0}, .ndim = 1, .dtype = TH_F32, .shape = shape};
  EXPECT_T(ab_tensor_wrap(&dl, 0, release_nothing, NULL, &o), AB_EINVAL); /* NULL data, 4 elements */
  EXPECT_T(ab_tensor_wrap(NULL, 0, release_nothing, NULL, &o), AB_EINVAL);
  dl.data = &neg;
  EXPECT_T(ab_tensor_wrap(&dl, 1u << 7, release_nothing, NULL, &o), AB_EINVAL);
  DLManagedTensorVersioned mv = {.version = {9, 0}, .dl_tensor = dl};
  EXPECT_T(ab_tensor_import(&mv, &o), AB_ENOTSUP);
  EXPECT_T(ab_tensor_import(NULL, &o), AB_EINVAL);
  DLManagedTensor ml = {.dl_tensor = dl};
  ml.dl_tensor.ndim = -1;
  EXPECT_T(ab_tensor_import_legacy(&ml, &o), AB_EINVAL);
  EXPECT_T(ab_tensor_import_legacy(NULL, &o), AB_EINVAL);
  DLManagedTensorVersioned *ev = (DLManagedTensorVersioned *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_export(NULL, &ev), AB_EINVAL);
  CHECK_NULL(ev);
  DLManagedTensor *el = (DLManagedTensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_export_legacy(NULL, &el), AB_EINVAL);
  CHECK_NULL(el);
#undef EXPECT_T
  /* submits */
  ab_future *f = SENTINEL, *done = NULL;
  CHECK_OK(th_submit_fn(rt, th_host(0), nop, NULL, &done));
  CHECK_OK(ab_future_wait(done, -1));
  ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
  co.size = 0;
  CHECK_ERR_IN(ab_convert(rt, t, th_host(0), &co, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = SENTINEL;
  CHECK_ERR_IN(ab_convert(rt, NULL, th_host(0), NULL, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = SENTINEL;
  CHECK_ERR_IN(ab_convert_after(rt, done, th_host(6), NULL, &f), AB_ENODEV);
  CHECK_NULL(f);
  f = SENTINEL;
  CHECK_ERR_IN(ab_stack(rt, &t, 0, th_host(0), NULL, &f), AB_EINVAL);
  CHECK_NULL(f);
  f = SENTINEL;
  CHECK_ERR_IN(ab_stack(NULL, &t, 1, th_host(0), NULL, &f), AB_EINVAL);
  CHECK_NULL(f);
  /* a result that is not there */
  o = TSENT;
  CHECK_EQ_INT(ab_future_result(done, &o), 0);
  CHECK_NULL(o); /* a task without an output */
  ab_future_release(done);
  ab_tensor_release(t);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A body must return 0 or an AB_E* failure. Anything else (AB_EPENDING, which would leave a
 * completed future saying "not completed", a positive number, a code outside the table) fails
 * the task with AB_EINVAL, its message naming what the body returned and what it said; real
 * failure codes pass through unchanged. */
typedef struct {
  int code;
  const char *said; /* NULL: the body says nothing */
} ret_arg;

static int returns_code(ab_ctx *c, void *arg) {
  const ret_arg *a = arg;
  return a->said ? ab_ctx_fail(c, a->code, "%s", a->said) : a->code;
}

static int test_status_not_a_failure(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  const ret_arg cases[] = {{AB_EPENDING, NULL}, {5, NULL}, {1, "one is not an error code"}, {-5, NULL},
                           {INT32_MIN, NULL}, {AB_EDTYPE, "kept"}, {AB_EALREADY, NULL}};
  const int want[] = {AB_EINVAL, AB_EINVAL, AB_EINVAL, AB_EINVAL, AB_EINVAL, AB_EDTYPE, AB_EALREADY};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ab_future *f = NULL;
    CHECK_OK(th_submit_fn(rt, th_host(0), returns_code, (void *)&cases[i], &f));
    CHECK_OK(ab_future_wait(f, -1));
    CHECK_EQ_INT(ab_future_status(f), want[i]);
    ab_tensor *t = SENTINEL_T;
    CHECK_EQ_INT(ab_future_result(f, &t), want[i]);
    CHECK_NULL(t);
    const char *m = ab_future_message(f);
    if (want[i] == AB_EINVAL) {
      char code[16];
      snprintf(code, sizeof code, "%d", cases[i].code);
      CHECK_MSG(m && strstr(m, code), "case %zu: message %s names no %s", i, m ? m : "(none)", code);
      CHECK_MSG(!cases[i].said || strstr(m, cases[i].said), "case %zu: the body's text is lost: %s", i, m);
    } else if (cases[i].said) {
      CHECK_MSG(m && strcmp(m, cases[i].said) == 0, "case %zu: message %s", i, m ? m : "(none)");
    }
    ab_future_release(f);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY(bad_args),
                                      TEST_ENTRY(unknown_device),
                                      TEST_ENTRY(try_full_queue),
                                      TEST_ENTRY(block_timeout),
                                      TEST_ENTRY(bytes_in_flight),
                                      TEST_ENTRY(ctx_accessors),
                                      TEST_ENTRY(set_output_result),
                                      TEST_ENTRY(ctx_bad_args),
                                      TEST_ENTRY(tensor_input_reference),
                                      TEST_ENTRY(out_params_on_error),
                                      TEST_ENTRY(status_not_a_failure),
                                      TEST_END};
AB_TEST_MAIN(tests)
