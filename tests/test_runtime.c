/* test_runtime.c: options, devices, info, stats, two runtimes, destroy (drain/cancel), lifetimes. */
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int test_options_size_checked(void) {
  ab_runtime_options o;
  th_options(&o);
  ab_runtime *rt = (ab_runtime *)(uintptr_t)1;
  o.size = sizeof o - 1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  CHECK_NULL(rt);
  o.size = 0;
  rt = (ab_runtime *)(uintptr_t)1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  CHECK_NULL(rt);
  o.size = sizeof o + 8;
  rt = (ab_runtime *)(uintptr_t)1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  CHECK_NULL(rt);
  th_options(&o);
  CHECK_EQ_INT(ab_runtime_create(&o, NULL), AB_EINVAL);
  /* other nonsense */
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = -1;
  rt = (ab_runtime *)(uintptr_t)1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  CHECK_NULL(rt);
  th_options(&o);
  o.kinds[AB_HOST].logical_split = -2;
  rt = (ab_runtime *)(uintptr_t)1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  CHECK_NULL(rt);
  th_options(&o);
  o.kinds[AB_HOST].memory_fraction = 1.5;
  rt = (ab_runtime *)(uintptr_t)1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  CHECK_NULL(rt);
  /* negative OOM times were taken as "the default" */
  for (int f = 0; f < 3; f++) {
    int64_t bad[] = {-1, INT64_MIN};
    for (int i = 0; i < 2; i++) {
      th_options(&o);
      int64_t *field = f == 0 ? &o.oom.backoff_initial_ns : f == 1 ? &o.oom.backoff_max_ns : &o.oom.deadline_ns;
      *field = bad[i];
      rt = (ab_runtime *)(uintptr_t)1;
      CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
      CHECK_NULL(rt);
    }
  }
  /* AB_RUNTIME_OPTIONS_INIT works */
  ab_runtime_options init = AB_RUNTIME_OPTIONS_INIT;
  init.kinds[AB_OPENCL].disabled = init.kinds[AB_CUDA].disabled = true;
  CHECK_OK(ab_runtime_create(&init, &rt));
  CHECK_NOT_NULL(rt);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_OK(ab_runtime_destroy(NULL, AB_DRAIN));
  CHECK_OK(ab_runtime_destroy(NULL, AB_CANCEL));
  return 0;
}

static int test_devices_and_info(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  CHECK_EQ_INT(ab_runtime_devices(rt, NULL, 0), 1);
  ab_device d[8];
  CHECK_EQ_INT(ab_runtime_devices(rt, d, 8), 1);
  CHECK_EQ_INT(d[0].kind, AB_HOST);
  CHECK_EQ_INT(d[0].index, 0);
  ab_device_info info;
  memset(&info, 0x5a, sizeof info);
  CHECK_OK(ab_device_info_get(rt, d[0], &info));
  CHECK_EQ_INT(info.device.kind, AB_HOST);
  CHECK_EQ_INT(info.device.index, 0);
  CHECK(info.name[0] != '\0');
  CHECK(memchr(info.name, '\0', sizeof info.name) != NULL);
  CHECK_EQ_INT(info.physical, 0);
  CHECK_EQ_INT(info.workers, 1);
  CHECK(info.memory_total > 0);
  CHECK_EQ_U64(info.budget, UINT64_MAX); /* no limit on the host by default */
  CHECK_ERR_IN(ab_device_info_get(rt, th_host(1), &info), AB_ENODEV);
  ab_device cu = {AB_CUDA, 0};
  CHECK_ERR_IN(ab_device_info_get(rt, cu, &info), AB_ENODEV);
  CHECK_ERR_IN(ab_device_info_get(rt, d[0], NULL), AB_EINVAL);
  CHECK_ERR_IN(ab_runtime_devices(NULL, d, 8), AB_EINVAL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_logical_split(void) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].logical_split = 3;
  o.kinds[AB_HOST].workers_per_device = 2;
  o.kinds[AB_HOST].memory_limit = 3u << 20;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_device d[8];
  CHECK_EQ_INT(ab_runtime_devices(rt, d, 8), 3);
  CHECK_EQ_INT(ab_runtime_devices(rt, d, 2), 3); /* more than cap */
  CHECK_EQ_INT(ab_runtime_devices(rt, d, 8), 3);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(d[i].kind, AB_HOST);
    CHECK_EQ_INT(d[i].index, i);
    ab_device_info info;
    CHECK_OK(ab_device_info_get(rt, d[i], &info));
    CHECK_EQ_INT(info.device.index, i);
    CHECK_EQ_INT(info.physical, 0);
    CHECK_EQ_INT(info.workers, 2);
    CHECK_EQ_U64(info.budget, 1u << 20); /* shared evenly */
    ab_device_stats st;
    CHECK_OK(th_stats(rt, d[i], &st));
    CHECK_EQ_U64(st.mem_budget, 1u << 20);
  }
  ab_device_stats st[8];
  CHECK_EQ_INT(ab_runtime_stats(rt, st, 8), 3);
  CHECK_EQ_INT(ab_runtime_stats(rt, NULL, 0), 3);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_memory_fraction(void) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].logical_split = 2;
  o.kinds[AB_HOST].workers_per_device = 1;
  o.kinds[AB_HOST].memory_fraction = 0.5;
  ab_runtime *rt;
  CHECK_OK(ab_runtime_create(&o, &rt));
  for (int i = 0; i < 2; i++) {
    ab_device_info info;
    CHECK_OK(ab_device_info_get(rt, th_host(i), &info));
    double want = (double)info.memory_total * 0.5 / 2;
    CHECK_MSG(info.budget != UINT64_MAX && (double)info.budget > want * 0.99 &&
                  (double)info.budget < want * 1.01,
              "budget %" PRIu64 " for a quarter of %" PRIu64, info.budget, info.memory_total);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_two_runtimes(void) {
  ab_runtime *a, *b;
  CHECK_OK(th_runtime(&a, 1, 1));
  CHECK_OK(th_runtime(&b, 2, 2));
  CHECK_EQ_INT(ab_runtime_devices(a, NULL, 0), 1);
  CHECK_EQ_INT(ab_runtime_devices(b, NULL, 0), 2);
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL, *fa = NULL, *fb = NULL;
  /* a is held; b still works */
  CHECK_OK(th_submit_gate(a, th_host(0), &g, &blk));
  atomic_int n = 0;
  CHECK_OK(th_submit_fn(a, th_host(0), th_count_task, &n, &fa));
  CHECK_OK(th_submit_fn(b, th_host(1), th_count_task, &n, &fb));
  CHECK_OK(ab_future_wait(fb, -1));
  CHECK_EQ_INT(ab_future_status(fa), AB_EPENDING);
  /* destroying b leaves a alone */
  CHECK_OK(ab_runtime_destroy(b, AB_DRAIN));
  th_gate_open(&g, 1);
  CHECK_OK(ab_future_wait(fa, -1));
  CHECK_OK(ab_future_status(fa));
  CHECK_EQ_INT(atomic_load(&n), 2);
  ab_future_release(fa);
  ab_future_release(fb);
  ab_future_release(blk);
  CHECK_OK(ab_runtime_destroy(a, AB_DRAIN));
  th_gate_destroy(&g);
  return 0;
}

static int record_worker(ab_ctx *c, void *arg) {
  atomic_int *seen = arg;
  int w = ab_ctx_worker(c);
  if (w < 0 || w >= 8) return AB_EINVAL;
  atomic_fetch_add(&seen[w], 1);
  /* hold until every worker has a task, so each one takes exactly one */
  atomic_fetch_add(&seen[8], 1);
  while (atomic_load(&seen[8]) < 3) th_sleep_ns(100000);
  return 0;
}

static int test_workers_distinct(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 3, 1));
  atomic_int seen[9];
  for (int i = 0; i < 9; i++) atomic_init(&seen[i], 0);
  ab_future *fs[3];
  for (int i = 0; i < 3; i++) CHECK_OK(th_submit_fn(rt, th_host(0), record_worker, seen, &fs[i]));
  CHECK_OK(ab_future_wait_all(fs, 3, -1));
  for (int i = 0; i < 3; i++) {
    CHECK_OK(ab_future_status(fs[i]));
    CHECK_EQ_INT(atomic_load(&seen[i]), 1);
    ab_future_release(fs[i]);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- stats -------------------------------------------------------------------------------- */
static int fail_task(ab_ctx *c, void *arg) { return AB_EFAULT; }

static int stats_settle(ab_runtime *rt, ab_device d, uint64_t completed, uint64_t failed,
                        ab_device_stats *st) {
  for (int i = 0; i < 5000; i++) { /* counters may trail the futures by a moment */
    if (th_stats(rt, d, st)) return -1;
    if (st->tasks_completed + st->tasks_failed >= completed + failed && st->tasks_failed >= failed)
      return 0;
    th_sleep_ns(1000000);
  }
  return 0;
}

static int test_stats_move(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  ab_device_stats st0;
  CHECK_OK(th_stats(rt, th_host(0), &st0));
  CHECK_EQ_U64(st0.tasks_submitted, 0);
  CHECK_EQ_U64(st0.tasks_completed, 0);
  CHECK_EQ_U64(st0.mem_used, 0);
  CHECK_EQ_U64(st0.queued, 0);
  CHECK_EQ_U64(st0.mem_budget, UINT64_MAX);
  enum { N = 20, K = 5 };
  ab_future *fs[N];
  for (int i = 0; i < N; i++)
    CHECK_OK(th_submit_fn(rt, th_host(0), i < K ? fail_task : th_count_task, NULL, &fs[i]));
  CHECK_OK(ab_future_wait_all(fs, N, -1));
  ab_device_stats st;
  CHECK_OK(stats_settle(rt, th_host(0), N - K, K, &st));
  CHECK_EQ_U64(st.tasks_submitted, N);
  CHECK_EQ_U64(st.tasks_failed, K);
  CHECK(st.tasks_completed == N - K || st.tasks_completed == N); /* with or without failures */
  CHECK_EQ_U64(st.tasks_canceled, 0);
  CHECK_EQ_U64(st.queued, 0);
  for (int i = 0; i < N; i++) ab_future_release(fs[i]);

  /* memory gauges */
  int64_t shape[1] = {1 << 18}; /* 1 MiB of f32 */
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &t));
  CHECK_OK(th_stats(rt, th_host(0), &st));
  CHECK(st.mem_used >= (1u << 20));
  CHECK(st.mem_peak >= st.mem_used);
  ab_tensor_release(t);
  for (int i = 0; i < 2000; i++) {
    CHECK_OK(th_stats(rt, th_host(0), &st));
    if (st.mem_used < (1u << 20)) break;
    th_sleep_ns(1000000);
  }
  CHECK(st.mem_used < (1u << 20));
  CHECK(st.mem_peak >= (1u << 20));

  /* conversions count bytes moved */
  ab_tensor *src = NULL;
  int64_t s2[1] = {1000};
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, s2, &src));
  memset((char *)ab_tensor_dl(src)->data + ab_tensor_dl(src)->byte_offset, 0, 4000);
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.dtype = TH_U16;
  ab_future *f = NULL;
  uint64_t moved0 = st.bytes_moved;
  CHECK_OK(ab_convert(rt, src, th_host(0), &o, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  for (int i = 0; i < 2000; i++) {
    CHECK_OK(th_stats(rt, th_host(0), &st));
    if (st.bytes_moved >= moved0 + 2000) break;
    th_sleep_ns(1000000);
  }
  CHECK(st.bytes_moved >= moved0 + 2000);
  ab_tensor_release(src);
  CHECK_ERR_IN(ab_runtime_stats(NULL, &st, 1), AB_EINVAL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- destroy ------------------------------------------------------------------------------ */
typedef struct {
  atomic_int calls[256];
  atomic_int status[256];
} completion_log;

typedef struct {
  completion_log *log;
  int i;
} cb_arg;

static void log_cb(ab_future *f, void *arg) {
  cb_arg *a = arg;
  atomic_store(&a->log->status[a->i], ab_future_status(f));
  atomic_fetch_add(&a->log->calls[a->i], 1);
}

static int test_destroy_drain(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  th_gate g;
  th_gate_init(&g);
  ab_future *blk = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  enum { N = 200 };
  static completion_log log;
  memset(&log, 0, sizeof log);
  static cb_arg args[N];
  ab_future *fs[N];
  atomic_int ran = 0;
  for (int i = 0; i < N; i++) {
    CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, &ran, &fs[i]));
    args[i].log = &log;
    args[i].i = i;
    CHECK_OK(ab_future_then(fs[i], log_cb, &args[i]));
  }
  /* a dependent chain too */
  ab_input in = {NULL, fs[N - 1]};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.arg = &ran;
  d.inputs = &in;
  d.ninputs = 1;
  ab_future *dep = NULL;
  CHECK_OK(ab_submit(rt, &d, &dep));
  th_gate_open(&g, 1);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(atomic_load(&ran), N + 1);
  for (int i = 0; i < N; i++) {
    CHECK_EQ_INT(atomic_load(&log.calls[i]), 1);
    CHECK_OK(atomic_load(&log.status[i]));
    CHECK_OK(ab_future_status(fs[i]));
    ab_future_release(fs[i]);
  }
  CHECK_OK(ab_future_status(dep));
  CHECK_OK(ab_future_status(blk));
  ab_future_release(dep);
  ab_future_release(blk);
  th_gate_destroy(&g);
  return 0;
}

static int test_destroy_cancel(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  th_gate g;
  th_gate_init(&g);
  g.honour_cancel = true; /* the running task stops when asked */
  ab_future *blk = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  enum { N = 200 };
  static completion_log log;
  memset(&log, 0, sizeof log);
  static cb_arg args[N + 2];
  ab_future *fs[N + 1];
  atomic_int ran = 0;
  for (int i = 0; i < N; i++) {
    CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, &ran, &fs[i]));
    args[i].log = &log;
    args[i].i = i;
    CHECK_OK(ab_future_then(fs[i], log_cb, &args[i]));
  }
  ab_input in = {NULL, fs[0]};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  d.arg = &ran;
  d.inputs = &in;
  d.ninputs = 1;
  CHECK_OK(ab_submit(rt, &d, &fs[N]));
  args[N].log = &log;
  args[N].i = N;
  CHECK_OK(ab_future_then(fs[N], log_cb, &args[N]));
  args[N + 1].log = &log;
  args[N + 1].i = N + 1;
  CHECK_OK(ab_future_then(blk, log_cb, &args[N + 1]));
  CHECK_OK(ab_runtime_destroy(rt, AB_CANCEL));
  CHECK_EQ_INT(atomic_load(&ran), 0);
  for (int i = 0; i <= N; i++) {
    CHECK_EQ_INT(atomic_load(&log.calls[i]), 1);
    CHECK_EQ_INT(atomic_load(&log.status[i]), AB_ECANCELED);
    CHECK_EQ_INT(ab_future_status(fs[i]), AB_ECANCELED);
    ab_future_release(fs[i]);
  }
  /* the running one was asked to stop and returned AB_ECANCELED */
  CHECK_EQ_INT(atomic_load(&log.calls[N + 1]), 1);
  CHECK_EQ_INT(ab_future_status(blk), AB_ECANCELED);
  ab_future_release(blk);
  th_gate_destroy(&g);
  return 0;
}

/* A thread blocked in ab_future_wait is released by destroy(AB_CANCEL). */
typedef struct {
  ab_future *f;
  int rc;
  int status;
  sem_t waiting;
} waiter_state;

static void *wait_forever(void *arg) {
  waiter_state *w = arg;
  sem_post(&w->waiting);
  w->rc = ab_future_wait(w->f, -1);
  w->status = ab_future_status(w->f);
  return NULL;
}

static int test_destroy_wakes_waiters(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  th_gate g;
  th_gate_init(&g);
  g.honour_cancel = true;
  ab_future *blk = NULL, *q = NULL;
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &blk));
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &q));
  waiter_state w[2];
  pthread_t th[2];
  for (int i = 0; i < 2; i++) {
    w[i].f = i ? q : blk;
    w[i].rc = 1;
    sem_init(&w[i].waiting, 0, 0);
    CHECK_OK(pthread_create(&th[i], NULL, wait_forever, &w[i]));
    sem_wait(&w[i].waiting);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_CANCEL));
  for (int i = 0; i < 2; i++) {
    pthread_join(th[i], NULL);
    CHECK_OK(w[i].rc);
    CHECK_EQ_INT(w[i].status, AB_ECANCELED);
    sem_destroy(&w[i].waiting);
  }
  ab_future_release(blk);
  ab_future_release(q);
  th_gate_destroy(&g);
  return 0;
}

/* The running task ignores cancellation and finishes normally: its status is its own. */
typedef struct {
  sem_t started;
  atomic_int saw_cancel;
} stubborn_state;

static int stubborn(ab_ctx *c, void *arg) {
  stubborn_state *s = arg;
  sem_post(&s->started);
  for (int i = 0; i < 20000 && !ab_ctx_cancelled(c); i++) th_sleep_ns(100000);
  atomic_store(&s->saw_cancel, ab_ctx_cancelled(c));
  return 0;
}

static int test_destroy_cancel_running_returns_own_status(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  stubborn_state s;
  memset(&s, 0, sizeof s);
  sem_init(&s.started, 0, 0);
  ab_future *f = NULL;
  CHECK_OK(th_submit_fn(rt, th_host(0), stubborn, &s, &f));
  sem_wait(&s.started);
  CHECK_OK(ab_runtime_destroy(rt, AB_CANCEL));
  CHECK_EQ_INT(atomic_load(&s.saw_cancel), 1);
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  sem_destroy(&s.started);
  return 0;
}

/* ---- lifetimes ---------------------------------------------------------------------------- */
static int produce(ab_ctx *c, void *arg) {
  int64_t shape[1] = {64};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_I32, 1, shape, &t);
  if (r) return r;
  int32_t *p = (int32_t *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset);
  for (int i = 0; i < 64; i++) p[i] = i * 2;
  return ab_ctx_set_output(c, t);
}

static int test_outlive_runtime(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 2));
  ab_future *f = NULL, *f2 = NULL;
  CHECK_OK(th_submit_fn(rt, th_host(1), produce, NULL, &f));
  CHECK_OK(th_submit_fn(rt, th_host(0), produce, NULL, &f2));
  int64_t shape[2] = {16, 16};
  ab_tensor *t = NULL, *view = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(1), TH_F64, 2, shape, &t));
  CHECK_OK(ab_tensor_index(t, 3, &view));
  DLManagedTensorVersioned *m = NULL;
  CHECK_OK(ab_tensor_export(t, &m));
  ab_tensor_release(t);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  /* everything still usable for reading and releasing */
  CHECK_OK(ab_future_status(f));
  ab_tensor *res = NULL;
  CHECK_OK(ab_future_result(f, &res));
  ab_future_release(f);
  int64_t k = 63;
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(res), &k), 126);
  ab_tensor_release(res);
  ab_future_release(f2); /* never read */
  double *row = (double *)((char *)ab_tensor_dl(view)->data + ab_tensor_dl(view)->byte_offset);
  for (int i = 0; i < 16; i++) row[i] = i; /* the memory is still there */
  ab_tensor_release(view);
  ((double *)((char *)m->dl_tensor.data + m->dl_tensor.byte_offset))[255] = 1.0;
  m->deleter(m);
  return 0;
}

static int test_create_destroy_loop(void) {
  long n = th_scaled(50);
  for (long i = 0; i < n; i++) {
    ab_runtime *rt;
    CHECK_OK(th_runtime(&rt, 1 + (int)(i % 3), 1 + (int)(i % 2)));
    if (i % 2) {
      ab_future *f = NULL;
      CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &f));
      ab_future_release(f); /* released before completion */
    }
    CHECK_OK(ab_runtime_destroy(rt, (int)(i % 4 == 1 ? AB_CANCEL : AB_DRAIN)));
  }
  return 0;
}

/* Counts have upper bounds, refused with AB_EINVAL at once: INT_MAX workers per device used to
 * allocate (and touch) gigabytes before failing. */
static int test_counts_bounded(void) {
  static const int workers[] = {INT32_MAX, AB_MAX_WORKERS + 1, 1 << 20};
  for (size_t i = 0; i < sizeof workers / sizeof workers[0]; i++) {
    for (int k = 0; k < AB_KIND_COUNT; k++) {
      ab_runtime_options o;
      th_options(&o);
      o.kinds[k].workers_per_device = workers[i];
      ab_runtime *rt = (ab_runtime *)(uintptr_t)1;
      int64_t t0 = th_now_ns();
      CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
      CHECK_NULL(rt);
      CHECK(th_now_ns() - t0 < TH_SEC(1));
    }
  }
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].logical_split = AB_MAX_SPLIT + 1;
  ab_runtime *rt = NULL;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  th_options(&o);
  o.queue_capacity = AB_MAX_QUEUE + 1;
  CHECK_EQ_INT(ab_runtime_create(&o, &rt), AB_EINVAL);
  /* the largest accepted values still make a runtime (host only, a few logical devices) */
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 64;
  o.kinds[AB_HOST].logical_split = 2;
  o.queue_capacity = AB_MAX_QUEUE;
  CHECK_OK(ab_runtime_create(&o, &rt));
  ab_device_info info;
  CHECK_OK(ab_device_info_get(rt, th_host(1), &info));
  CHECK_EQ_INT(info.workers, 64);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* The library's debug checks run in the test builds: a broken invariant (here the in-flight
 * count given back once more than taken, the failure that once hung destroy) stops the process
 * at once with the check that failed, instead of corrupting state. */
void ab__inflight_done(ab_runtime *rt); /* internal: the static library exposes it */
static int test_asserts_enabled(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    ab__inflight_done(rt); /* nothing in flight: must abort */
    _exit(0);
  }
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid);
  CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "the child was not stopped by a failed check (status %d)", st);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- fork ------------------------------------------------------------------------------------ */
static atomic_int fork_cb_ran;
static void fork_cb(ab_future *f, void *arg) {
  (void)f, (void)arg;
  atomic_fetch_add(&fork_cb_ran, 1);
}

/* ThreadSanitizer kills a child of a multi-threaded fork() that starts threads (die_after_fork):
 * under it the child leaves out making a runtime of its own, which the other builds check. */
#if defined(__SANITIZE_THREAD__)
#define FORK_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FORK_UNDER_TSAN 1
#endif
#endif
#ifndef FORK_UNDER_TSAN
#define FORK_UNDER_TSAN 0
#endif
static const bool tsan = FORK_UNDER_TSAN;

/* What the child of a fork sees of a runtime made before it (see the test below): 0 when all
 * of it holds. */
static int fork_child_checks(ab_runtime *rt, ab_future *running, ab_future *queued, ab_future *done, ab_tensor *t) {
  ab_future *f = (ab_future *)(uintptr_t)1;
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = th_count_task;
  CHECK_EQ_INT(ab_submit(rt, &d, &f), AB_ESHUTDOWN);
  CHECK_NULL(f);
  CHECK_EQ_INT(ab_convert(rt, t, th_host(0), NULL, &f), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_convert_after(rt, done, th_host(0), NULL, &f), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_stack(rt, &t, 1, th_host(0), NULL, &f), AB_ESHUTDOWN);
  ab_future *parts[4] = {f, f, f, f};
  CHECK_EQ_INT(ab_unstack(rt, t, th_host(0), NULL, parts), AB_ESHUTDOWN);
  for (int i = 0; i < 4; i++) CHECK_NULL(parts[i]);
  int64_t shape[1] = {4};
  ab_tensor *u = (ab_tensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &u), AB_ESHUTDOWN);
  CHECK_NULL(u);
  CHECK_EQ_INT(ab_tensor_alloc_pinned(rt, TH_F32, 1, shape, &u), AB_ESHUTDOWN);
  ab_device devs[4];
  ab_device_info info;
  ab_device_stats stats[4];
  ab_fault_spec fault = {.op = AB_FAULT_COPY, .device = th_host(0), .nth = 1, .count = 1};
  CHECK_EQ_INT(ab_runtime_devices(rt, devs, 4), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_device_info_get(rt, th_host(0), &info), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_runtime_stats(rt, stats, 4), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_runtime_fault(rt, &fault), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_trace_start(rt, NULL), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_trace_stop(rt), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_trace_write(rt, "/dev/null"), AB_ESHUTDOWN);
  /* the futures pending at the fork never complete here: every wait says so at once */
  CHECK_EQ_INT(ab_future_wait(running, -1), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_future_wait(queued, -1), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_future_wait(queued, 0), AB_ESHUTDOWN);
  ab_future *both[2] = {done, queued}, *pending[2] = {running, queued};
  CHECK_EQ_INT(ab_future_wait_all(both, 2, -1), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_future_wait_any(pending, 2, -1, NULL), AB_ESHUTDOWN);
  size_t which = 9;
  CHECK_OK(ab_future_wait_any(both, 2, -1, &which));
  CHECK_EQ_INT(which, 0);
  CHECK_EQ_INT(ab_future_status(running), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_future_result(queued, &u), AB_ESHUTDOWN);
  CHECK_NULL(u);
  const char *m = ab_future_message(queued);
  CHECK_MSG(m && strstr(m, "fork"), "message: %s", m ? m : "(none)");
  CHECK_EQ_INT(ab_future_then(queued, fork_cb, NULL), AB_ESHUTDOWN);
  CHECK_EQ_INT(ab_future_cancel(queued), AB_ESHUTDOWN);
  /* what was complete stays readable; a view of a tensor works (it touches no pool of rt's) */
  CHECK_OK(ab_future_status(done));
  CHECK_OK(ab_future_then(done, fork_cb, NULL));
  CHECK_EQ_INT(atomic_load(&fork_cb_ran), 1);
  CHECK_EQ_INT(ab_future_cancel(done), AB_EALREADY);
  ab_tensor *v = NULL;
  CHECK_OK(ab_tensor_index(t, 2, &v));
  CHECK(*(const float *)th_elem(ab_tensor_dl(v), NULL) == 2.0f);
  ab_tensor_release(v);
  ab_tensor_release(t); /* its memory stays: the parent's arena is not touched here */
  ab_future_release(done);
  /* destroy does not wait for workers that are not here */
  CHECK_EQ_INT(ab_runtime_destroy(rt, AB_DRAIN), AB_ESHUTDOWN);
  if (tsan) return 0; /* see FORK_UNDER_TSAN */
  /* a runtime made in the child is a runtime like any other */
  ab_runtime *mine;
  CHECK_OK(th_runtime(&mine, 1, 1));
  CHECK_OK(th_submit_fn(mine, th_host(0), th_count_task, NULL, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  ab_future_release(f);
  CHECK_OK(ab_runtime_destroy(mine, AB_DRAIN));
  return 0;
}

/* A child of fork() has none of its parent's worker threads. Every call on a runtime made
 * before the fork fails there with AB_ESHUTDOWN instead of accepting work that never runs;
 * futures pending at the fork report AB_ESHUTDOWN instead of hanging their waiters; destroy
 * returns instead of joining threads that are not there. The parent carries on unharmed. */
static int test_fork_child_refuses_inherited_runtime(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[1] = {4};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, &t));
  for (int i = 0; i < 4; i++) ((float *)ab_tensor_dl(t)->data)[i] = (float)i;
  ab_future *done, *running, *queued;
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &done));
  CHECK_OK(ab_future_wait(done, -1));
  th_gate g;
  th_gate_init(&g);
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &running));
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &queued));
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    alarm(20); /* a hang is a failure, not a stuck test */
    _exit(fork_child_checks(rt, running, queued, done, t));
  }
  int st = 0;
  CHECK(waitpid(pid, &st, 0) == pid);
  CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's checks failed (status %d)", st);
  th_gate_open_all(&g);
  CHECK_OK(ab_future_wait(queued, -1));
  CHECK_OK(ab_future_status(running));
  CHECK_OK(ab_future_status(queued));
  ab_future_release(running);
  ab_future_release(queued);
  ab_future_release(done);
  ab_tensor_release(t);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  th_gate_destroy(&g);
  return 0;
}

/* ---- destroy from inside ------------------------------------------------------------------- */
typedef struct {
  ab_runtime *rt;           /* destroyed from inside: must refuse */
  ab_runtime *other;        /* another runtime, destroyed from the same place: must work */
  atomic_int rc, other_rc, ran;
} inside_arg;

static void destroy_in_callback(ab_future *f, void *arg) {
  (void)f;
  inside_arg *a = arg;
  atomic_store(&a->rc, ab_runtime_destroy(a->rt, AB_DRAIN));
  if (a->other) atomic_store(&a->other_rc, ab_runtime_destroy(a->other, AB_DRAIN));
  atomic_store(&a->ran, 1);
}

static int destroy_in_task(ab_ctx *c, void *arg) {
  (void)c;
  destroy_in_callback(NULL, arg);
  return 0;
}

/* The callback ran (it may run after the future's waiters wake): at most 5 s. */
static int ran_within(inside_arg *a) {
  for (int i = 0; i < 5000 && !atomic_load(&a->ran); i++) th_sleep_ns(TH_MS(1));
  return atomic_load(&a->ran);
}

/* Destroy waits for every task and callback and joins every worker: called from a task or a
 * callback of the same runtime it would wait for itself. It refuses with AB_EBUSY and does
 * nothing, wherever the callback runs: on a worker, on a thread cancelling the future, on a
 * thread registering it on a complete future. Another runtime may be destroyed from there. */
static int test_destroy_from_inside_refused(void) {
  ab_runtime *rt, *other;
  CHECK_OK(th_runtime(&rt, 1, 1));
  CHECK_OK(th_runtime(&other, 1, 1));
  /* a callback on the worker that completed the future */
  th_gate g;
  th_gate_init(&g);
  ab_future *gated, *queued, *f;
  inside_arg on_worker = {.rt = rt, .other = other};
  CHECK_OK(th_submit_gate(rt, th_host(0), &g, &gated));
  CHECK_OK(ab_future_then(gated, destroy_in_callback, &on_worker));
  /* a callback run by ab_future_cancel, here */
  inside_arg on_cancel = {.rt = rt};
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &queued));
  CHECK_OK(ab_future_then(queued, destroy_in_callback, &on_cancel));
  CHECK_OK(ab_future_cancel(queued));
  CHECK_MSG(ran_within(&on_cancel), "destroy from a callback run by cancel has not returned");
  CHECK_EQ_INT(atomic_load(&on_cancel.rc), AB_EBUSY);
  th_gate_open_all(&g);
  CHECK_MSG(ran_within(&on_worker), "destroy from a callback on a worker has not returned");
  CHECK_EQ_INT(atomic_load(&on_worker.rc), AB_EBUSY);
  CHECK_OK(atomic_load(&on_worker.other_rc));
  /* a callback run at once, on a complete future */
  inside_arg at_once = {.rt = rt};
  CHECK_OK(ab_future_then(gated, destroy_in_callback, &at_once));
  CHECK(atomic_load(&at_once.ran));
  CHECK_EQ_INT(atomic_load(&at_once.rc), AB_EBUSY);
  /* a task body */
  inside_arg in_task = {.rt = rt};
  CHECK_OK(th_submit_fn(rt, th_host(0), destroy_in_task, &in_task, &f));
  CHECK_OK(ab_future_wait(f, TH_SEC(5)));
  CHECK_EQ_INT(atomic_load(&in_task.rc), AB_EBUSY);
  CHECK_OK(ab_future_status(f));
  /* nothing was done: the runtime still works, and its owner destroys it */
  ab_future *after;
  CHECK_OK(th_submit_fn(rt, th_host(0), th_count_task, NULL, &after));
  CHECK_OK(ab_future_wait(after, -1));
  CHECK_OK(ab_future_status(after));
  ab_future_release(after);
  ab_future_release(f);
  ab_future_release(gated);
  ab_future_release(queued);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  th_gate_destroy(&g);
  return 0;
}

/* One name per kind, for printing and for parsing "kind" or "kind:index" without a copy. */
static int test_kind_names(void) {
  static const struct { int kind; const char *name; } names[] = {
      {AB_HOST, "host"}, {AB_OPENCL, "opencl"}, {AB_CUDA, "cuda"}, {-1, "?"}, {AB_KIND_COUNT, "?"}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    CHECK_MSG(strcmp(ab_kind_name(names[i].kind), names[i].name) == 0, "kind %d: '%s', want '%s'", names[i].kind,
              ab_kind_name(names[i].kind), names[i].name);
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    const char *n = ab_kind_name(k);
    CHECK_EQ_INT(ab_kind_from_name(n, strlen(n)), k);
  }
  CHECK_EQ_INT(ab_kind_from_name("opencl:1", 6), AB_OPENCL); /* the part before the colon */
  CHECK_EQ_INT(ab_kind_from_name("cuda", 3), AB_EINVAL);      /* a prefix is not a name */
  CHECK_EQ_INT(ab_kind_from_name("cud", 4), AB_EINVAL);       /* nor is a shorter string */
  CHECK_EQ_INT(ab_kind_from_name("hostx", 5), AB_EINVAL);
  CHECK_EQ_INT(ab_kind_from_name("Host", 4), AB_EINVAL);
  CHECK_EQ_INT(ab_kind_from_name("", 0), AB_EINVAL);
  CHECK_EQ_INT(ab_kind_from_name(NULL, 4), AB_EINVAL);
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY(options_size_checked),
                                      TEST_ENTRY(kind_names),
                                      TEST_ENTRY(devices_and_info),
                                      TEST_ENTRY(logical_split),
                                      TEST_ENTRY(memory_fraction),
                                      TEST_ENTRY(two_runtimes),
                                      TEST_ENTRY(workers_distinct),
                                      TEST_ENTRY(stats_move),
                                      TEST_ENTRY(destroy_drain),
                                      TEST_ENTRY(destroy_cancel),
                                      TEST_ENTRY(destroy_cancel_running_returns_own_status),
                                      TEST_ENTRY(destroy_wakes_waiters),
                                      TEST_ENTRY(outlive_runtime),
                                      TEST_ENTRY(create_destroy_loop),
                                      TEST_ENTRY(counts_bounded),
                                      TEST_ENTRY(asserts_enabled),
                                      TEST_ENTRY(fork_child_refuses_inherited_runtime),
                                      TEST_ENTRY(destroy_from_inside_refused),
                                      TEST_END};
AB_TEST_MAIN(tests)
