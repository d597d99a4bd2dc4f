/*
 * test_trace.c: ab_trace_start / stop / write. Every written trace is parsed back by Python's
 * json module (tests/trace_check.py), which prints counts that the tests compare.
 */
#include "test_opencl_common.c"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef TRACE_CHECK_PY
#error "TRACE_CHECK_PY must name tests/trace_check.py"
#endif

typedef struct {
  int named, stream, other, workers, streams, counters, bad;
  long long dropped;
  char order[2200];     /* the named tasks' names, in file order, comma-separated */
} trace_summary;

/* Runs the checker on path for tasks called name. 0 on success. */
static int summarise(const char *path, const char *name, trace_summary *s) {
  memset(s, 0, sizeof *s);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "python3 %s %s %s", TRACE_CHECK_PY, path, name);
  FILE *p = popen(cmd, "r");
  if (p == NULL) return -1;
  char line[2200];
  int seen = 0;
  while (fgets(line, sizeof line, p)) {
    seen += sscanf(line, "named %d", &s->named) + sscanf(line, "stream %d", &s->stream) +
            sscanf(line, "other %d", &s->other) + sscanf(line, "workers %d", &s->workers) +
            sscanf(line, "streams %d", &s->streams) + sscanf(line, "counters %d", &s->counters) +
            sscanf(line, "bad %d", &s->bad) + sscanf(line, "dropped %lld", &s->dropped);
    if (strncmp(line, "order ", 6) == 0) {
      snprintf(s->order, sizeof s->order, "%s", line + 6);
      s->order[strcspn(s->order, "\n")] = 0;
      seen++;
    }
  }
  int rc = pclose(p);
  return rc == 0 && seen == 9 ? 0 : -1;
}

static void temp_path(char *buf, size_t n, const char *tag) {
  snprintf(buf, n, "/tmp/ab_test_trace_%d_%s.json", (int)getpid(), tag);
}

/* Submits n tasks called name on d (explicit) and waits for all of them. */
static int run_named(ab_runtime *rt, ab_device d, const char *name, int n) {
  for (int i = 0; i < n; i++) {
    ab_task_desc desc = AB_TASK_DESC_INIT;
    desc.fn = th_count_task;
    desc.name = name;
    desc.place.policy = AB_PLACE_EXPLICIT;
    desc.place.device = d;
    ab_future *f;
    int rc = ab_submit(rt, &desc, &f);
    if (rc == 0) rc = toc_take(f, NULL);
    if (rc != 0) return rc;
  }
  return 0;
}

static int host_convert(ab_runtime *rt, ab_device dst) {
  int64_t shape[2] = {16, 16};
  ab_tensor *src, *out;
  int rc = ab_tensor_alloc(rt, th_host(0), TH_U16, 2, shape, &src);
  if (rc != 0) return rc;
  memset(ab_tensor_dl(src)->data, 0, 512);
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.force_copy = true;
  rc = toc_convert(rt, src, dst, &o, &out);
  ab_tensor_release(out);
  ab_tensor_release(src);
  return rc;
}

static int test_host_events(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  CHECK_OK(ab_trace_start(rt, NULL));
  CHECK_OK(run_named(rt, th_host(0), "blur", 25));
  CHECK_OK(host_convert(rt, th_host(0)));
  CHECK_OK(ab_trace_stop(rt));
  char path[256];
  temp_path(path, sizeof path, "host");
  CHECK_OK(ab_trace_write(rt, path));
  trace_summary s;
  CHECK_OK(summarise(path, "blur", &s));
  CHECK_EQ_INT(s.named, 25);
  CHECK_EQ_INT(s.stream, 0);   /* the host has no streams */
  CHECK(s.other >= 1);         /* the conversion, named by its kind */
  CHECK_EQ_INT(s.workers, 2);  /* one track per worker */
  CHECK_EQ_INT(s.streams, 0);
  CHECK(s.counters >= 26);     /* a memory sample per task, and the conversion's allocation */
  CHECK_EQ_INT(s.bad, 0);
  CHECK_EQ_INT(s.dropped, 0);
  unlink(path);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_opencl_events(void) {
  ab_runtime *rt;
  ab_runtime_options o;
  toc_options(&o);
  TOC_RUNTIME(&rt, &o, 1);
  int nocl = toc_count(rt, AB_OPENCL);
  CHECK_OK(ab_trace_start(rt, NULL));
  for (int i = 0; i < nocl; i++) CHECK_OK(run_named(rt, toc_ocl(i), "kern", 4));
  CHECK_OK(host_convert(rt, toc_ocl(0)));
  CHECK_OK(ab_trace_stop(rt));
  char path[256];
  temp_path(path, sizeof path, "ocl");
  CHECK_OK(ab_trace_write(rt, path));
  trace_summary s;
  CHECK_OK(summarise(path, "kern", &s));
  CHECK_EQ_INT(s.named, 4 * nocl);
  CHECK_EQ_INT(s.stream, 4 * nocl); /* each also on its worker's stream track */
  CHECK(s.other >= 1);
  CHECK_EQ_INT(s.workers, 2 + nocl); /* toc_options: two host workers, one per OpenCL device */
  CHECK_EQ_INT(s.streams, nocl);
  CHECK_EQ_INT(s.bad, 0);
  unlink(path);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_stop_start(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  char path[256];
  temp_path(path, sizeof path, "ss");
  trace_summary s;
  CHECK_OK(ab_trace_write(rt, path)); /* never started: only the tracks */
  CHECK_OK(summarise(path, "a", &s));
  CHECK_EQ_INT(s.named, 0);
  CHECK_EQ_INT(s.workers, 1);

  CHECK_OK(ab_trace_start(rt, NULL));
  CHECK_EQ_INT(ab_trace_start(rt, NULL), AB_EALREADY);
  CHECK_EQ_INT(ab_trace_write(rt, path), AB_EBUSY);
  CHECK_OK(run_named(rt, th_host(0), "a", 3));
  CHECK_OK(ab_trace_stop(rt));
  CHECK_OK(ab_trace_stop(rt)); /* stopping twice is harmless */
  CHECK_OK(run_named(rt, th_host(0), "a", 5)); /* not recorded */
  CHECK_OK(ab_trace_write(rt, path));
  CHECK_OK(summarise(path, "a", &s));
  CHECK_EQ_INT(s.named, 3);

  CHECK_OK(ab_trace_start(rt, NULL)); /* a new run forgets the old one */
  CHECK_OK(run_named(rt, th_host(0), "a", 2));
  CHECK_OK(ab_trace_stop(rt));
  CHECK_OK(ab_trace_write(rt, path));
  CHECK_OK(summarise(path, "a", &s));
  CHECK_EQ_INT(s.named, 2);

  ab_trace_options bad = AB_TRACE_OPTIONS_INIT;
  bad.size = 1;
  CHECK_EQ_INT(ab_trace_start(rt, &bad), AB_EINVAL);
  CHECK_EQ_INT(ab_trace_write(rt, "/nonexistent-dir/x.json"), AB_EINVAL);
  unlink(path);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A ring of 16 on one worker: 100 tasks in sequence keep the last 16 and count 84 dropped. */
static int test_overflow_keeps_newest(void) {
  static char names[100][8];
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_trace_options o = AB_TRACE_OPTIONS_INIT;
  o.events_per_worker = 10; /* rounded up to 16 */
  CHECK_OK(ab_trace_start(rt, &o));
  for (int i = 0; i < 100; i++) {
    snprintf(names[i], sizeof names[i], "n%d", i);
    CHECK_OK(run_named(rt, th_host(0), names[i], 1));
  }
  CHECK_OK(ab_trace_stop(rt));
  char path[256], want[512] = "";
  temp_path(path, sizeof path, "ovf");
  CHECK_OK(ab_trace_write(rt, path));
  trace_summary s;
  CHECK_OK(summarise(path, "-", &s));
  for (int i = 84; i < 100; i++) {
    strcat(want, names[i]);
    if (i < 99) strcat(want, ",");
  }
  CHECK_MSG(strcmp(s.order, want) == 0, "kept %s, want %s", s.order, want);
  CHECK_EQ_INT(s.dropped, 84);
  unlink(path);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Tasks from several threads while tracing is stopped and started again: the Dekker handshake
 * under TSan, and every run's file still parses. */
typedef struct {
  ab_runtime *rt;
  atomic_int *stop;
  int rc;                         /* this thread's own */
} churn_arg;

static void *churn(void *p) {
  churn_arg *a = p;
  while (!atomic_load(a->stop) && a->rc == 0) a->rc = run_named(a->rt, th_host(0), "c", 1);
  return NULL;
}

static int test_start_stop_under_load(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 2, 1));
  atomic_int stop = 0;
  churn_arg a[2] = {{.rt = rt, .stop = &stop}, {.rt = rt, .stop = &stop}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) CHECK_OK(pthread_create(&th[i], NULL, churn, &a[i]));
  char path[256];
  temp_path(path, sizeof path, "load");
  int rounds = (int)th_scaled(20);
  int rc = 0;
  for (int r = 0; r < rounds && rc == 0; r++) {
    ab_trace_options o = AB_TRACE_OPTIONS_INIT;
    o.events_per_worker = r % 2 ? 64 : 4096; /* resized rings too */
    rc = ab_trace_start(rt, &o);
    th_sleep_ns(TH_MS(2));
    if (rc == 0) rc = ab_trace_stop(rt);
    if (rc == 0 && r % 5 == 0) rc = ab_trace_write(rt, path);
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  CHECK_OK(rc);
  CHECK_OK(a[0].rc);
  CHECK_OK(a[1].rc);
  trace_summary s;
  CHECK_OK(summarise(path, "c", &s));
  CHECK_EQ_INT(s.bad, 0);
  unlink(path);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(host_events),
    TEST_ENTRY_T(opencl_events, 120),
    TEST_ENTRY(stop_start),
    TEST_ENTRY(overflow_keeps_newest),
    TEST_ENTRY(start_stop_under_load),
    TEST_END,
};

AB_TEST_MAIN(tests)
