/*
 * harness.c: the runner behind harness.h (fork per test, alarm, TAP output) and helpers the
 * test files share. The parent never creates threads: every runtime lives in a child.
 */
#define _GNU_SOURCE
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- failure reporting -------------------------------------------------------------------- */
void th_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "# %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
}

const char *th_errstr(long long v) {
  /* two buffers in turn: a failed CHECK_EQ_INT prints both of its operands in one call */
  static _Thread_local char buf[2][160];
  static _Thread_local int next;
  if (v >= 0 || v < INT32_MIN) return "";
  const char *name = ab_err_name((int)v), *text = ab_strerror((int)v);
  char *b = buf[next];
  next ^= 1;
  snprintf(b, sizeof buf[0], " (%s: %s)", name ? name : "?", text ? text : "?");
  return b;
}

int th_code_in(int code, int n, const int *codes) {
  if (code >= 0) return 0;
  for (int i = 0; i < n; i++)
    if (codes[i] == code) return 1;
  return 0;
}

/* ---- runner ------------------------------------------------------------------------------- */
static int env_flag(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

static int selected(const char *name, int argc, char **argv) {
  const char *only = getenv("AB_TEST_ONLY"); /* comma-separated names */
  if (only && *only) {
    size_t n = strlen(name);
    for (const char *p = only; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
      if (strncmp(p, name, n) == 0 && (p[n] == ',' || p[n] == '\0')) return 1;
    return 0;
  }
  if (argc <= 1) return 1;
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return 1;
  return 0;
}

static int run_in_child(const ab_test_entry *t, int timeout_s, char *why, size_t whylen) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, whylen, "fork failed: %s", strerror(errno));
    return 1;
  }
  if (pid == 0) {
    alarm((unsigned)timeout_s);
    int r = t->fn();
    fflush(stdout);
    fflush(stderr);
    exit(r); /* exit, not _exit: LeakSanitizer checks at exit */
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR) {
      snprintf(why, whylen, "waitpid: %s", strerror(errno));
      return 1;
    }
  }
  if (WIFSIGNALED(st)) {
    int sig = WTERMSIG(st);
    if (sig == SIGALRM)
      snprintf(why, whylen, "timed out after %d s", timeout_s);
    else
      snprintf(why, whylen, "killed by signal %d (%s)", sig, strsignal(sig));
    return 1;
  }
  int code = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
  if (code != 0 && code != TEST_SKIP) snprintf(why, whylen, "exit status %d", code);
  return code;
}

int ab_test_main(const ab_test_entry *tests, int argc, char **argv) {
  int n = 0, ran = 0, passed = 0, skipped = 0, failed = 0;
  for (const ab_test_entry *t = tests; t->name; t++)
    if (selected(t->name, argc, argv)) n++;
  if (n == 0) {
    fprintf(stderr, "no test matched\n");
    return 1;
  }
  const int nofork = env_flag("AB_TEST_NOFORK");
  const char *tenv = getenv("AB_TEST_TIMEOUT");
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("1..%d\n", n);
  for (const ab_test_entry *t = tests; t->name; t++) {
    if (!selected(t->name, argc, argv)) continue;
    int timeout_s = t->timeout_s > 0 ? t->timeout_s : 30;
    if (tenv && atoi(tenv) > 0) timeout_s = atoi(tenv);
    char why[128] = "";
    int r;
    ran++;
    if (nofork) {
      alarm((unsigned)timeout_s);
      r = t->fn();
      alarm(0);
      if (r != 0 && r != TEST_SKIP) snprintf(why, sizeof why, "returned %d", r);
    } else {
      r = run_in_child(t, timeout_s, why, sizeof why);
    }
    if (r == 0) {
      passed++;
      printf("ok %d - %s\n", ran, t->name);
    } else if (r == TEST_SKIP) {
      skipped++;
      printf("ok %d - %s # SKIP\n", ran, t->name);
    } else {
      failed++;
      printf("not ok %d - %s # %s\n", ran, t->name, why);
    }
    fflush(stdout);
  }
  printf("# %d passed, %d skipped, %d failed\n", passed, skipped, failed);
  if (failed) return 1;
  if (skipped == ran) return TEST_SKIP;
  return 0;
}

/* ---- helpers ------------------------------------------------------------------------------ */
double th_scale(void) {
  const char *v = getenv("AB_TEST_SCALE");
  double s = v ? atof(v) : 1.0;
  return s > 0 ? s : 1.0;
}

long th_scaled(long n) {
  long r = (long)((double)n * th_scale());
  return r < 1 ? 1 : r;
}

int64_t th_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void th_sleep_ns(int64_t ns) {
  struct timespec ts = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

void th_options(ab_runtime_options *o) {
  memset(o, 0, sizeof *o);
  o->size = sizeof *o;
  o->kinds[AB_OPENCL].disabled = true;
  o->kinds[AB_CUDA].disabled = true;
}

int th_runtime(ab_runtime **rt, int workers, int split) {
  ab_runtime_options o;
  th_options(&o);
  o.kinds[AB_HOST].workers_per_device = workers;
  o.kinds[AB_HOST].logical_split = split;
  return ab_runtime_create(&o, rt);
}

ab_device th_host(int index) {
  ab_device d = {AB_HOST, index};
  return d;
}

DLDataType th_dt(uint8_t code, uint8_t bits) {
  DLDataType d;
  d.code = code;
  d.bits = bits;
  d.lanes = 1;
  return d;
}

size_t th_dt_size(DLDataType dt) { return ((size_t)dt.bits * dt.lanes + 7) / 8; }

int64_t th_numel(const DLTensor *dl) {
  int64_t n = 1;
  for (int i = 0; i < dl->ndim; i++) n *= dl->shape[i];
  return n;
}

uint16_t th_wval(int i, int64_t k) { return (uint16_t)(i * 7919 + k * 31); }

int th_window_slices(ab_runtime *rt, int n, int64_t h, int64_t w, ab_tensor **sl) {
  for (int i = 0; i < n; i++) {
    int64_t shape[2] = {h, w}, bshape[2] = {w, h}, st[2] = {1, h};
    ab_tensor *t;
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U16, 2, i % 5 == 3 ? bshape : shape, &t));
    uint16_t *p = ab_tensor_dl(t)->data;
    for (int64_t y = 0; y < h; y++)
      for (int64_t x = 0; x < w; x++) p[i % 5 == 3 ? x * h + y : y * w + x] = th_wval(i, y * w + x);
    if (i % 5 != 3) {
      sl[i] = t;
      continue;
    }
    CHECK_OK(ab_tensor_view(t, 2, shape, st, 0, &sl[i]));
    ab_tensor_release(t);
  }
  return 0;
}

void *th_elem(const DLTensor *dl, const int64_t *idx) {
  int64_t off = 0, stride = 1;
  for (int i = dl->ndim - 1; i >= 0; i--) {
    int64_t s = dl->strides ? dl->strides[i] : stride;
    off += idx[i] * s;
    stride *= dl->shape[i];
  }
  return (char *)dl->data + dl->byte_offset + off * (int64_t)th_dt_size(dl->dtype);
}

int th_stats(ab_runtime *rt, ab_device d, ab_device_stats *out) {
  ab_device_stats st[64];
  int n = ab_runtime_stats(rt, st, 64);
  if (n < 0) return n;
  for (int i = 0; i < n && i < 64; i++) {
    if (st[i].device.kind == d.kind && st[i].device.index == d.index) {
      *out = st[i];
      return 0;
    }
  }
  return AB_ENODEV;
}

/* ---- gates -------------------------------------------------------------------------------- */
void th_gate_init(th_gate *g) {
  memset(g, 0, sizeof *g);
  sem_init(&g->started, 0, 0);
  sem_init(&g->release, 0, 0);
}

void th_gate_destroy(th_gate *g) {
  sem_destroy(&g->started);
  sem_destroy(&g->release);
}

int th_gate_task(ab_ctx *c, void *arg) {
  th_gate *g = arg;
  atomic_fetch_add(&g->ran, 1);
  sem_post(&g->started);
  for (;;) {
    if (atomic_load(&g->open)) return 0;
    if (g->honour_cancel && ab_ctx_cancelled(c)) return AB_ECANCELED;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 2000000; /* 2 ms: only to notice cancellation */
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    if (sem_timedwait(&g->release, &ts) == 0) return 0;
  }
}

void th_gate_wait_started(th_gate *g) {
  while (sem_wait(&g->started) != 0 && errno == EINTR) {
  }
}

void th_gate_open(th_gate *g, int n) {
  for (int i = 0; i < n; i++) sem_post(&g->release);
}

void th_gate_open_all(th_gate *g) {
  atomic_store(&g->open, 1);
  sem_post(&g->release);
}

int th_submit_fn(ab_runtime *rt, ab_device d, ab_task_fn fn, void *arg, ab_future **out) {
  ab_task_desc desc = AB_TASK_DESC_INIT;
  desc.fn = fn;
  desc.arg = arg;
  desc.place.policy = AB_PLACE_EXPLICIT;
  desc.place.device = d;
  return ab_submit(rt, &desc, out);
}

int th_submit_gate(ab_runtime *rt, ab_device d, th_gate *g, ab_future **out) {
  int r = th_submit_fn(rt, d, th_gate_task, g, out);
  if (r == 0) th_gate_wait_started(g);
  return r;
}

int th_count_task(ab_ctx *c, void *arg) {
  if (arg) atomic_fetch_add((atomic_int *)arg, 1);
  return 0;
}
