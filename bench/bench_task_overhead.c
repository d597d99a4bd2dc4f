/* bench_task_overhead.c: what one empty task costs in arraybridge, the twin of peer_starpu.c.
 *
 *   throughput  N empty compute tasks on the host device (default options: one worker per core),
 *               every future kept, then ab_future_wait_all and the releases; tasks per second
 *               over the whole submit + wait + release. StarPU's peer detaches its tasks and
 *               calls starpu_task_wait_for_all, which also frees them, so both sides pay for
 *               creating, running, completing and freeing every task.
 *   round trip  submit one empty task, ab_future_wait it, release it; M times; the median of
 *               the per-task times, in microseconds.
 *
 * Only the host kind is opened: OpenCL (pocl) and CUDA devices would start worker threads of
 * their own on the same two cores, and StarPU's peer runs with STARPU_NOPENCL=0 as well.
 *
 * BENCH_TASKS, BENCH_REPS, BENCH_RT_ITERS, BENCH_RT_REPS and BENCH_QUEUE_CAPACITY (default: the
 * runtime's) change the sizes. BENCH_TRACE=1 records a trace (ab_trace_start, default rings)
 * throughout: bench/run's trace_overhead compares the two.
 *
 * Output on stdout, one line per repetition: "tasks_per_s <v>", "roundtrip_us <v>" and
 * "roundtrip_mean_us <v>", plus "cold_tasks_per_s <v>" for the warm-up batch; bench/run takes
 * the medians. */
#include <arraybridge.h>

#include "bench_util.h"

static int empty_task(ab_ctx *ctx, void *arg) {
  (void)ctx;
  (void)arg;
  return 0;
}

static int fail(const char *what, int rc) {
  fprintf(stderr, "bench_task_overhead: %s: %s (%d)\n", what, ab_strerror(rc), rc);
  return 1;
}

static ab_task_desc empty_desc(void) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = empty_task;
  d.place.policy = AB_PLACE_AUTO;
  d.place.device.kind = AB_HOST;
  d.place.device.index = AB_ANY;
  d.place.mode = AB_SUBMIT_BLOCK;
  return d;
}

/* Submits n tasks, waits for all of them, releases them; checks every status. */
static int run_batch(ab_runtime *rt, ab_future **fs, long n) {
  ab_task_desc d = empty_desc();
  long submitted = 0;
  int rc = 0;
  for (; submitted < n; submitted++) {
    rc = ab_submit(rt, &d, &fs[submitted]);
    if (rc != 0)
      break;
  }
  int wrc = ab_future_wait_all(fs, (size_t)submitted, -1);
  int bad = 0;
  for (long i = 0; i < submitted; i++) {
    if (ab_future_status(fs[i]) != 0)
      bad++;
    ab_future_release(fs[i]);
  }
  if (rc != 0)
    return fail("ab_submit", rc);
  if (wrc != 0)
    return fail("ab_future_wait_all", wrc);
  if (bad) {
    fprintf(stderr, "bench_task_overhead: %d tasks failed\n", bad);
    return 1;
  }
  return 0;
}

static int throughput(ab_runtime *rt, long ntasks, long reps) {
  ab_future **fs = calloc((size_t)ntasks, sizeof *fs);
  if (!fs)
    return 1;
  /* Warm-up: one full batch, timed apart as "cold" (the first batch grows the task pools; later
   * ones reuse them). StarPU's peer warms up the same way. */
  double t0 = bench_now();
  int bad = run_batch(rt, fs, ntasks);
  if (!bad)
    printf("cold_tasks_per_s %.6g\n", (double)ntasks / (bench_now() - t0));
  for (long r = 0; r < reps && !bad; r++) {
    t0 = bench_now();
    bad = run_batch(rt, fs, ntasks);
    double dt = bench_now() - t0;
    if (!bad) {
      printf("tasks_per_s %.6g\n", (double)ntasks / dt);
      fflush(stdout);
    }
  }
  free(fs);
  return bad;
}

static int roundtrip(ab_runtime *rt, long iters, long reps) {
  double *lat = malloc(sizeof *lat * (size_t)iters);
  if (!lat)
    return 1;
  ab_task_desc d = empty_desc();
  for (long r = -1; r < reps; r++) { /* r == -1: warm-up */
    double total = 0;
    for (long i = 0; i < iters; i++) {
      ab_future *f = NULL;
      double t0 = bench_now();
      int rc = ab_submit(rt, &d, &f);
      if (rc == 0)
        rc = ab_future_wait(f, -1);
      if (rc == 0)
        rc = ab_future_status(f);
      ab_future_release(f);
      double dt = bench_now() - t0;
      if (rc != 0) {
        free(lat);
        return fail("round trip", rc);
      }
      lat[i] = dt * 1e6;
      total += dt;
    }
    if (r >= 0) {
      printf("roundtrip_us %.6g\n", bench_median(lat, (size_t)iters));
      printf("roundtrip_mean_us %.6g\n", total * 1e6 / (double)iters);
      fflush(stdout);
    }
  }
  free(lat);
  return 0;
}

static void describe(ab_runtime *rt, double init_s) {
  ab_device devs[8];
  int n = ab_runtime_devices(rt, devs, 8);
  fprintf(stderr, "bench_task_overhead: arraybridge %s, init %.1f ms, %d device(s)", ab_version(),
          init_s * 1e3, n);
  for (int i = 0; i < n && i < 8; i++) {
    ab_device_info info;
    if (ab_device_info_get(rt, devs[i], &info) == 0)
      fprintf(stderr, "; %s: %d workers", info.name, (int)info.workers);
  }
  fputc('\n', stderr);
}

int main(void) {
  long ntasks = bench_env_long("BENCH_TASKS", 100000);
  long reps = bench_env_long("BENCH_REPS", 7);
  long iters = bench_env_long("BENCH_RT_ITERS", 10000);
  long rt_reps = bench_env_long("BENCH_RT_REPS", 5);

  ab_runtime_options opt = AB_RUNTIME_OPTIONS_INIT;
  opt.kinds[AB_OPENCL].disabled = true;
  opt.kinds[AB_CUDA].disabled = true;
  opt.queue_capacity = (uint32_t)bench_env_long("BENCH_QUEUE_CAPACITY", 0); /* 0: the default */
  ab_runtime *rt = NULL;
  double t0 = bench_now();
  int rc = ab_runtime_create(&opt, &rt);
  if (rc != 0)
    return fail("ab_runtime_create", rc);
  describe(rt, bench_now() - t0);
  if (bench_env_long("BENCH_TRACE", 0) == 1 && (rc = ab_trace_start(rt, NULL)) != 0)
    return fail("ab_trace_start", rc);

  int bad = throughput(rt, ntasks, reps) || roundtrip(rt, iters, rt_reps);
  rc = ab_runtime_destroy(rt, AB_DRAIN);
  if (rc != 0 && !bad)
    bad = fail("ab_runtime_destroy", rc);
  return bad;
}
