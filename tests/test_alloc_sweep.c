/*
 * test_alloc_sweep.c: fail the Nth allocation, for N = 1, 2, ... until a run needs no more, over
 * runtime create, submit, then-callbacks, convert and stack (SQLite-style). Every failing run
 * must end in AB_ENOMEM (from a call or a future), leak nothing and hang nowhere.
 * Then the same over device memory with ab_runtime_fault(AB_FAULT_ALLOC) and oom.no_wait.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the allocator hook ----------------------------------------------------------------------- */
static atomic_long hook_calls, hook_live, hook_fail_at, hook_failed;

static void *hook_malloc(size_t bytes, void *arg) {
  long n = atomic_fetch_add(&hook_calls, 1) + 1;
  if (n == atomic_load(&hook_fail_at)) {
    atomic_fetch_add(&hook_failed, 1);
    return NULL;
  }
  void *p = malloc(bytes ? bytes : 1);
  if (p) atomic_fetch_add(&hook_live, 1);
  return p;
}

static void hook_free(void *p, void *arg) {
  if (!p) return;
  atomic_fetch_sub(&hook_live, 1);
  free(p);
}

static const ab_allocator hook = {hook_malloc, hook_free, NULL};

/* ---- the scenario ------------------------------------------------------------------------------ */
static int fill_output(ab_ctx *c, void *arg) {
  ab_tensor *in = ab_ctx_input(c, 0);
  if (!in) return AB_EINVAL;
  int64_t shape[1] = {32};
  ab_tensor *t = NULL;
  int r = ab_ctx_alloc_tensor(c, TH_F32, 1, shape, &t);
  if (r) return r;
  void *scratch = NULL;
  r = ab_ctx_alloc(c, 256, &scratch);
  if (r) {
    ab_tensor_release(t);
    return r;
  }
  memset(scratch, 0, 256);
  float *p = (float *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset);
  for (int i = 0; i < 32; i++) p[i] = (float)i;
  return ab_ctx_set_output(c, t);
}

static atomic_int cb_calls;
static void count_cb(ab_future *f, void *arg) { atomic_fetch_add(&cb_calls, 1); }

typedef struct {
  int enomem_seen; /* some call or future reported AB_ENOMEM */
  int cb_registered;
} run_log;

/* A result is acceptable if it is 0 or AB_ENOMEM; note the latter. */
#define ACCEPT(log, expr)                                                                        \
  do {                                                                                           \
    int acc_r_ = (expr);                                                                         \
    if (acc_r_ == AB_ENOMEM)                                                                     \
      (log)->enomem_seen = 1;                                                                    \
    else if (acc_r_ != 0) {                                                                      \
      th_fail(__FILE__, __LINE__, "%s = %d%s (want 0 or AB_ENOMEM), fail_at=%ld", #expr, acc_r_, \
              th_errstr(acc_r_), atomic_load(&hook_fail_at));                                    \
      return -1;                                                                                 \
    }                                                                                            \
  } while (0)

/* Waits on f (if any) and folds its status into the log; releases it. */
static int settle(run_log *log, ab_future *f) {
  if (!f) return 0;
  int r = ab_future_wait(f, -1);
  if (r) {
    th_fail(__FILE__, __LINE__, "wait: %d%s", r, th_errstr(r));
    return -1;
  }
  int s = ab_future_status(f);
  ab_future_release(f);
  if (s == AB_ENOMEM) {
    log->enomem_seen = 1;
    return 0;
  }
  if (s != 0) {
    th_fail(__FILE__, __LINE__, "future status %d%s, fail_at=%ld", s, th_errstr(s),
            atomic_load(&hook_fail_at));
    return -1;
  }
  return 0;
}

/* One run. Returns 1 if the injected failure was hit, 0 if not, -1 on a violation. */
static int one_run(long fail_at) {
  atomic_store(&hook_calls, 0);
  atomic_store(&hook_failed, 0);
  atomic_store(&hook_fail_at, fail_at);
  atomic_store(&cb_calls, 0);
  run_log log = {0, 0};
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 2;
  o.kinds[AB_HOST].logical_split = 2;
  o.allocator = &hook;
  ab_runtime *rt = (ab_runtime *)(uintptr_t)1;
  int r = ab_runtime_create(&o, &rt);
  if (r) {
    if (r != AB_ENOMEM || rt != NULL) {
      th_fail(__FILE__, __LINE__, "create: %d%s, rt %p, fail_at=%ld", r, th_errstr(r), (void *)rt,
              fail_at);
      return -1;
    }
    log.enomem_seen = 1;
    goto check;
  }
  {
    /* an input tensor */
    int64_t shape[2] = {4, 8};
    ab_tensor *src = NULL, *sl[3] = {NULL, NULL, NULL};
    ACCEPT(&log, ab_tensor_alloc(rt, th_host(0), TH_U16, 2, shape, &src));
    if (src) {
      uint16_t *p = (uint16_t *)((char *)ab_tensor_dl(src)->data + ab_tensor_dl(src)->byte_offset);
      for (int i = 0; i < 32; i++) p[i] = (uint16_t)(i * 100);
      /* submit */
      ab_input in = {src, NULL};
      ab_task_desc d = AB_TASK_DESC_INIT;
      d.fn = fill_output;
      d.inputs = &in;
      d.ninputs = 1;
      d.place.policy = AB_PLACE_EXPLICIT;
      d.place.device = th_host(1);
      ab_future *f = NULL, *g = NULL, *h = NULL;
      ACCEPT(&log, ab_submit(rt, &d, &f));
      if (f) {
        int tr = ab_future_then(f, count_cb, NULL);
        ACCEPT(&log, tr);
        if (tr == 0) log.cb_registered++;
        /* a dependent on f: convert_after */
        ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
        co.dtype = TH_U8;
        ACCEPT(&log, ab_convert_after(rt, f, th_host(0), &co, &g));
      }
      /* convert */
      ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
      co.dtype = TH_F32;
      ACCEPT(&log, ab_convert(rt, src, th_host(1), &co, &h));
      if (settle(&log, f) || settle(&log, g) || settle(&log, h)) return -1;
      /* stack: views of src plus a copy */
      for (int i = 0; i < 3; i++) ACCEPT(&log, ab_tensor_index(src, i, &sl[i]));
      if (sl[0] && sl[1] && sl[2]) {
        ab_future *sf = NULL;
        ACCEPT(&log, ab_stack(rt, sl, 3, th_host(1), &co, &sf));
        if (settle(&log, sf)) return -1;
      }
      for (int i = 0; i < 3; i++) ab_tensor_release(sl[i]);
      ab_tensor_release(src);
    }
    r = ab_runtime_destroy(rt, AB_DRAIN);
    if (r) {
      th_fail(__FILE__, __LINE__, "destroy: %d%s, fail_at=%ld", r, th_errstr(r), fail_at);
      return -1;
    }
  }
check:
  if (atomic_load(&cb_calls) != log.cb_registered) {
    th_fail(__FILE__, __LINE__, "callbacks ran %d times, %d registered, fail_at=%ld",
            atomic_load(&cb_calls), log.cb_registered, fail_at);
    return -1;
  }
  if (atomic_load(&hook_live) != 0) {
    th_fail(__FILE__, __LINE__, "%ld allocations leaked, fail_at=%ld", atomic_load(&hook_live),
            fail_at);
    return -1;
  }
  int hit = atomic_load(&hook_failed) != 0;
  if (hit && !log.enomem_seen) {
    th_fail(__FILE__, __LINE__, "allocation %ld failed but no call or future reported AB_ENOMEM",
            fail_at);
    return -1;
  }
  if (!hit && log.enomem_seen) {
    th_fail(__FILE__, __LINE__, "AB_ENOMEM without an injected failure, fail_at=%ld", fail_at);
    return -1;
  }
  return hit;
}

/* Runs one_run(n) in a child so that a crash at one failure point does not hide the others.
 * Returns one_run's result, or -2 for a crash or hang (printed). */
static int forked_run(long n) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return one_run(n);
  if (pid == 0) {
    alarm(20);
    int r = one_run(n);
    exit(r < 0 ? 3 : r);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
  }
  if (WIFSIGNALED(st)) {
    fprintf(stderr, "# fail_at=%ld: killed by signal %d (%s)\n", n, WTERMSIG(st),
            strsignal(WTERMSIG(st)));
    return -2;
  }
  int code = WEXITSTATUS(st);
  if (code == 0 || code == 1) return code;
  if (code != 3) fprintf(stderr, "# fail_at=%ld: exit status %d\n", n, code);
  return -1;
}

static int test_host_allocator_sweep(void) {
  const char *at = getenv("AB_SWEEP_AT"); /* debugging: one failure point, in this process */
  if (at && atol(at) > 0) return one_run(atol(at)) < 0;
  /* a clean run first: it must use the hook and leave nothing behind */
  int r = one_run(0);
  CHECK_EQ_INT(r, 0);
  long total = atomic_load(&hook_calls);
  CHECK_MSG(total > 0, "the runtime never called the allocator hook");
  fprintf(stderr, "# a clean run makes %ld allocator calls\n", total);
  long limit = total * 4 + 100, n, bad = 0;
  int64_t t0 = th_now_ns();
  for (n = 1; n <= limit; n++) {
    r = forked_run(n);
    if (r < 0) bad++;
    if (r == 0) break; /* the run needed fewer than n allocations */
    if (th_now_ns() - t0 > TH_SEC(80)) {
      fprintf(stderr, "# time budget spent after %ld runs\n", n);
      break;
    }
  }
  fprintf(stderr, "# swept %ld failure points, %ld bad\n", n, bad);
  CHECK_EQ_INT(bad, 0);
  CHECK(n <= limit);
  return 0;
}

/* ---- the device-memory sweep ------------------------------------------------------------------- */
static int dev_run(uint64_t nth, int *hit) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = 1;
  o.kinds[AB_HOST].logical_split = 2;
  o.oom.no_wait = true;
  ab_runtime *rt;
  int r = ab_runtime_create(&o, &rt);
  if (r) {
    th_fail(__FILE__, __LINE__, "create: %d%s", r, th_errstr(r));
    return -1;
  }
  ab_fault_spec fs = {AB_FAULT_ALLOC, {AB_HOST, AB_ANY}, nth, -1, 0};
  r = ab_runtime_fault(rt, &fs);
  if (r) {
    th_fail(__FILE__, __LINE__, "fault: %d%s", r, th_errstr(r));
    return -1;
  }
  run_log log = {0, 0};
  int64_t shape[3] = {3, 4, 5};
  ab_tensor *vol = NULL;
  ACCEPT(&log, ab_tensor_alloc(rt, th_host(0), TH_F32, 3, shape, &vol));
  if (vol) {
    float *p = (float *)((char *)ab_tensor_dl(vol)->data + ab_tensor_dl(vol)->byte_offset);
    for (int i = 0; i < 60; i++) p[i] = (float)i * 1.5f;
    ab_input in = {vol, NULL};
    ab_task_desc d = AB_TASK_DESC_INIT;
    d.fn = fill_output;
    d.inputs = &in;
    d.ninputs = 1;
    d.place.policy = AB_PLACE_EXPLICIT;
    d.place.device = th_host(1);
    ab_future *f = NULL, *c = NULL, *s = NULL, *u[3] = {NULL, NULL, NULL};
    ACCEPT(&log, ab_submit(rt, &d, &f));
    ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
    co.dtype = TH_U16;
    ACCEPT(&log, ab_convert(rt, vol, th_host(0), &co, &c));
    ab_tensor *sl[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) ACCEPT(&log, ab_tensor_index(vol, i, &sl[i]));
    if (sl[0] && sl[1] && sl[2]) ACCEPT(&log, ab_stack(rt, sl, 3, th_host(1), &co, &s));
    ab_convert_options same = AB_CONVERT_OPTIONS_INIT;
    int ur = ab_unstack(rt, vol, th_host(1), &same, u);
    ACCEPT(&log, ur);
    if (settle(&log, f) || settle(&log, c) || settle(&log, s)) return -1;
    if (ur == 0)
      for (int i = 0; i < 3; i++)
        if (settle(&log, u[i])) return -1;
    for (int i = 0; i < 60; i++) /* inputs untouched whatever happened */
      if (p[i] != (float)i * 1.5f) {
        th_fail(__FILE__, __LINE__, "input element %d changed, nth=%" PRIu64, i, nth);
        return -1;
      }
    for (int i = 0; i < 3; i++) ab_tensor_release(sl[i]);
    ab_tensor_release(vol);
  }
  /* every byte comes back */
  uint64_t injected = 0;
  for (int dev = 0; dev < 2; dev++) {
    ab_device_stats st;
    int i;
    for (i = 0; i < 2000; i++) {
      if (th_stats(rt, th_host(dev), &st)) return -1;
      if (st.mem_used == 0) break;
      th_sleep_ns(1000000);
    }
    if (st.mem_used != 0) {
      th_fail(__FILE__, __LINE__, "device %d: %" PRIu64 " bytes still used, nth=%" PRIu64, dev,
              st.mem_used, nth);
      return -1;
    }
    injected += st.faults_injected;
  }
  r = ab_runtime_destroy(rt, AB_DRAIN);
  if (r) return -1;
  *hit = injected != 0;
  if (*hit && !log.enomem_seen) {
    th_fail(__FILE__, __LINE__, "faults injected at nth=%" PRIu64 " but no AB_ENOMEM seen", nth);
    return -1;
  }
  if (!*hit && log.enomem_seen) {
    th_fail(__FILE__, __LINE__, "AB_ENOMEM without a fault, nth=%" PRIu64, nth);
    return -1;
  }
  return 0;
}

static int test_device_alloc_sweep(void) {
  uint64_t nth;
  int hit = 1;
  for (nth = 1; nth <= 500 && hit; nth++)
    if (dev_run(nth, &hit)) return 1;
  fprintf(stderr, "# swept %" PRIu64 " device allocation failure points\n", nth - 1);
  CHECK(!hit);
  CHECK(nth > 2); /* at least one allocation was there to fail */
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY_T(host_allocator_sweep, 110),
                                      TEST_ENTRY_T(device_alloc_sweep, 110), TEST_END};
AB_TEST_MAIN(tests)
