/* peer_starpu.c: StarPU 1.3's task overhead, the peer of bench_task_overhead.
 *
 * Same two measures as ours, the way StarPU is meant to be used for them:
 *   throughput  N empty tasks (nbuffers = 0, an empty CPU function), detach = 1, then
 *               starpu_task_wait_for_all(); tasks per second over submit + wait.
 *   round trip  one synchronous task (synchronous = 1: submit returns once it ran), M times;
 *               the median of the per-task times, in microseconds.
 * The scheduler comes from the environment (STARPU_SCHED=eager, or unset for the default, lws),
 * as do STARPU_NCPU=2 STARPU_NCUDA=0 STARPU_NOPENCL=0 (bench/run sets them).
 *
 * Output on stdout: "starpu_version <x.y.z>", then one line per repetition: "tasks_per_s <v>",
 * "roundtrip_us <v>" and "roundtrip_mean_us <v>", plus "cold_tasks_per_s <v>" for the warm-up
 * batch; bench/run takes the medians. */
#include <starpu.h>

#include "bench_util.h"

static void empty_cpu(void *buffers[], void *arg) {
  (void)buffers;
  (void)arg;
}

static struct starpu_codelet empty_cl = {
    .cpu_funcs = {empty_cpu},
    .nbuffers = 0,
    .name = "empty",
};

static int submit_detached(long n) {
  for (long i = 0; i < n; i++) {
    struct starpu_task *t = starpu_task_create();
    t->cl = &empty_cl;
    t->detach = 1;
    int rc = starpu_task_submit(t);
    if (rc != 0) {
      fprintf(stderr, "peer_starpu: starpu_task_submit: %d\n", rc);
      return rc;
    }
  }
  return starpu_task_wait_for_all();
}

static int throughput(long ntasks, long reps) {
  /* Warm-up: one full batch, timed apart as "cold", as bench_task_overhead does. */
  double t0 = bench_now();
  if (submit_detached(ntasks) != 0)
    return 1;
  printf("cold_tasks_per_s %.6g\n", (double)ntasks / (bench_now() - t0));
  for (long r = 0; r < reps; r++) {
    t0 = bench_now();
    if (submit_detached(ntasks) != 0)
      return 1;
    double dt = bench_now() - t0;
    printf("tasks_per_s %.6g\n", (double)ntasks / dt);
    fflush(stdout);
  }
  return 0;
}

static int roundtrip(long iters, long reps) {
  double *lat = malloc(sizeof *lat * (size_t)iters);
  if (!lat)
    return 1;
  for (long r = -1; r < reps; r++) { /* r == -1: warm-up */
    double total = 0;
    for (long i = 0; i < iters; i++) {
      struct starpu_task *t = starpu_task_create();
      t->cl = &empty_cl;
      t->synchronous = 1;
      double t0 = bench_now();
      int rc = starpu_task_submit(t);
      double dt = bench_now() - t0;
      if (rc != 0) {
        fprintf(stderr, "peer_starpu: synchronous submit: %d\n", rc);
        free(lat);
        return 1;
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

int main(void) {
  long ntasks = bench_env_long("BENCH_TASKS", 100000);
  long reps = bench_env_long("BENCH_REPS", 7);
  long iters = bench_env_long("BENCH_RT_ITERS", 10000);
  long rt_reps = bench_env_long("BENCH_RT_REPS", 5);

  double t0 = bench_now();
  int rc = starpu_init(NULL);
  if (rc != 0) {
    fprintf(stderr, "peer_starpu: starpu_init: %d\n", rc);
    return 1;
  }
  int major = 0, minor = 0, release = 0;
  starpu_get_version(&major, &minor, &release);
  printf("starpu_version %d.%d.%d\n", major, minor, release);
  const char *sched = getenv("STARPU_SCHED");
  fprintf(stderr, "peer_starpu: init %.1f ms, %u CPU workers, scheduler %s\n",
          (bench_now() - t0) * 1e3, starpu_cpu_worker_get_count(), sched && *sched ? sched : "default");
  int bad = throughput(ntasks, reps) || roundtrip(iters, rt_reps);
  starpu_shutdown();
  return bad;
}
