/* bench_host_stack.c: ab_stack of host slices onto the host, against a plain memcpy loop.
 *
 * N slices of H x W uint16 (default 1000 of 512 x 512, 500 MiB in all), each its own caller
 * buffer wrapped with ab_tensor_wrap, stacked with ab_stack onto host device 0; every repetition
 * waits for the future and releases the result, so the runtime allocates (or reuses) the
 * destination each time, as a real pipeline would.
 *
 * The peers are the bandwidth limit: the same slices memcpy-ed into one destination that was
 * allocated and touched beforehand (no page faults in the timed loop), by one thread, and by as
 * many threads as the host has cores (each a contiguous share of the slices; on the 2-core VM a
 * single thread does not saturate memory).
 *
 * The two alternate within each repetition so that drift hits both alike; one warm-up of each
 * comes first. The first stacked result is checked byte for byte against the slices.
 *
 * Output on stdout, one line per repetition: "ours_gb_per_s <v>", "peer_gb_per_s <v>" (one
 * thread) and "peer_mt_gb_per_s <v>" (BENCH_PEER_THREADS threads, default one per core)
 * (1 GB = 1e9 bytes); bench/run takes the medians. */
#include <arraybridge.h>
#include <pthread.h>
#include <unistd.h>

#include "bench_util.h"

static int fail(const char *what, int rc) {
  fprintf(stderr, "bench_host_stack: %s: %s (%d)\n", what, ab_strerror(rc), rc);
  return 1;
}

typedef struct {
  long n, h, w;
  size_t slice_bytes;
  uint16_t **data;
  ab_tensor **slices;
  uint8_t *dst; /* the peer's destination */
} stack_bench;

static int make_slices(stack_bench *b) {
  int64_t shape[2] = {b->h, b->w};
  b->data = calloc((size_t)b->n, sizeof *b->data);
  b->slices = calloc((size_t)b->n, sizeof *b->slices);
  if (!b->data || !b->slices)
    return 1;
  for (long i = 0; i < b->n; i++) {
    b->data[i] = malloc(b->slice_bytes);
    if (!b->data[i])
      return 1;
    size_t count = b->slice_bytes / sizeof(uint16_t);
    for (size_t k = 0; k < count; k++) /* touches every page, and makes each slice distinct */
      b->data[i][k] = (uint16_t)(k * 31u + (size_t)i * 7u);
    DLTensor dl;
    memset(&dl, 0, sizeof dl);
    dl.data = b->data[i];
    dl.device.device_type = kDLCPU;
    dl.device.device_id = 0;
    dl.ndim = 2;
    dl.dtype.code = kDLUInt;
    dl.dtype.bits = 16;
    dl.dtype.lanes = 1;
    dl.shape = shape; /* the runtime copies the DLTensor's shape on wrap */
    dl.strides = NULL;
    dl.byte_offset = 0;
    int rc = ab_tensor_wrap(&dl, 0, NULL, NULL, &b->slices[i]);
    if (rc != 0)
      return fail("ab_tensor_wrap", rc);
  }
  return 0;
}

static void free_slices(stack_bench *b) {
  for (long i = 0; b->slices && i < b->n; i++)
    ab_tensor_release(b->slices[i]);
  for (long i = 0; b->data && i < b->n; i++)
    free(b->data[i]);
  free(b->slices);
  free(b->data);
}

/* Checks a stacked result: shape [n, h, w], uint16, contiguous, every slice's bytes. */
static int check_result(const stack_bench *b, ab_tensor *out) {
  const DLTensor *dl = ab_tensor_dl(out);
  if (!dl || dl->ndim != 3 || dl->shape[0] != b->n || dl->shape[1] != b->h || dl->shape[2] != b->w ||
      dl->dtype.code != kDLUInt || dl->dtype.bits != 16 || !ab_tensor_is_contiguous(out)) {
    fprintf(stderr, "bench_host_stack: the stacked result has the wrong shape, dtype or layout\n");
    return 1;
  }
  const uint8_t *base = (const uint8_t *)dl->data + dl->byte_offset;
  for (long i = 0; i < b->n; i++) {
    if (memcmp(base + (size_t)i * b->slice_bytes, b->data[i], b->slice_bytes) != 0) {
      fprintf(stderr, "bench_host_stack: slice %ld differs in the stacked result\n", i);
      return 1;
    }
  }
  return 0;
}

/* One ab_stack onto the host, waited for and released; seconds in *dt. */
static int ours_once(ab_runtime *rt, stack_bench *b, int check, double *dt) {
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  ab_device host = {AB_HOST, 0};
  ab_future *f = NULL;
  ab_tensor *out = NULL;
  double t0 = bench_now();
  int rc = ab_stack(rt, b->slices, (size_t)b->n, host, &o, &f);
  if (rc != 0)
    return fail("ab_stack", rc);
  rc = ab_future_wait(f, -1);
  if (rc == 0)
    rc = ab_future_result(f, &out);
  if (rc == 0 && check)
    rc = check_result(b, out) ? AB_EINVAL : 0;
  if (rc != 0 && ab_future_message(f))
    fprintf(stderr, "bench_host_stack: %s\n", ab_future_message(f));
  ab_tensor_release(out);
  ab_future_release(f);
  *dt = bench_now() - t0;
  return rc != 0 ? fail("stack result", rc) : 0;
}

static void copy_range(stack_bench *b, long from, long to) {
  for (long i = from; i < to; i++)
    memcpy(b->dst + (size_t)i * b->slice_bytes, b->data[i], b->slice_bytes);
}

static double peer_once(stack_bench *b) {
  double t0 = bench_now();
  copy_range(b, 0, b->n);
  double dt = bench_now() - t0;
  /* keep the copies observable so the loop cannot be dropped */
  volatile uint8_t sink = b->dst[(size_t)(b->n - 1) * b->slice_bytes];
  (void)sink;
  return dt;
}

typedef struct {
  stack_bench *b;
  long from, to;
} copy_share;

static void *copy_share_main(void *arg) {
  copy_share *c = arg;
  copy_range(c->b, c->from, c->to);
  return NULL;
}

/* nthreads threads (the caller is one of them), each a contiguous share of the slices. Thread
 * creation is inside the timing, as a pool's wake-up is inside ours. */
static double peer_mt_once(stack_bench *b, long nthreads) {
  pthread_t th[64];
  copy_share share[64];
  if (nthreads > 64)
    nthreads = 64;
  double t0 = bench_now();
  for (long k = 0; k < nthreads; k++) {
    share[k].b = b;
    share[k].from = b->n * k / nthreads;
    share[k].to = b->n * (k + 1) / nthreads;
  }
  long started = 0;
  for (long k = 1; k < nthreads; k++, started++)
    if (pthread_create(&th[k], NULL, copy_share_main, &share[k]) != 0)
      break;
  for (long k = started + 1; k < nthreads; k++) /* threads that failed to start: copy here */
    copy_range(b, share[k].from, share[k].to);
  copy_range(b, share[0].from, share[0].to);
  for (long k = 1; k <= started; k++)
    pthread_join(th[k], NULL);
  double dt = bench_now() - t0;
  volatile uint8_t sink = b->dst[(size_t)(b->n - 1) * b->slice_bytes];
  (void)sink;
  return dt;
}

int main(void) {
  stack_bench b = {0};
  b.n = bench_env_long("BENCH_SLICES", 1000);
  b.h = bench_env_long("BENCH_HEIGHT", 512);
  b.w = bench_env_long("BENCH_WIDTH", 512);
  long reps = bench_env_long("BENCH_REPS", 7);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  long peer_threads = bench_env_long("BENCH_PEER_THREADS", cores > 0 ? cores : 2);
  b.slice_bytes = (size_t)b.h * (size_t)b.w * sizeof(uint16_t);
  double total = (double)b.slice_bytes * (double)b.n;

  ab_runtime_options opt = AB_RUNTIME_OPTIONS_INIT;
  opt.kinds[AB_OPENCL].disabled = true;
  opt.kinds[AB_CUDA].disabled = true;
  ab_runtime *rt = NULL;
  int rc = ab_runtime_create(&opt, &rt);
  if (rc != 0)
    return fail("ab_runtime_create", rc);

  int bad = make_slices(&b);
  b.dst = bad ? NULL : malloc(b.slice_bytes * (size_t)b.n);
  if (!bad && !b.dst)
    bad = 1;
  if (!bad) {
    memset(b.dst, 0, b.slice_bytes * (size_t)b.n); /* pre-fault the peer's destination */
    fprintf(stderr, "bench_host_stack: %ld slices of %ldx%ld uint16, %.1f MB per stack; memcpy peers: 1 and %ld threads\n",
            b.n, b.h, b.w, total / 1e6, peer_threads);
  }

  double dt;
  if (!bad)
    printf("peer_threads %ld\n", peer_threads);
  if (!bad) { /* warm-up, and the one checked result */
    bad = ours_once(rt, &b, 1, &dt);
    peer_once(&b);
    peer_mt_once(&b, peer_threads);
  }
  for (long r = 0; r < reps && !bad; r++) {
    bad = ours_once(rt, &b, 0, &dt);
    if (bad)
      break;
    double pdt = peer_once(&b);
    double mdt = peer_mt_once(&b, peer_threads);
    printf("ours_gb_per_s %.6g\n", total / dt / 1e9);
    printf("peer_gb_per_s %.6g\n", total / pdt / 1e9);
    printf("peer_mt_gb_per_s %.6g\n", total / mdt / 1e9);
    fflush(stdout);
  }

  free(b.dst);
  free_slices(&b);
  rc = ab_runtime_destroy(rt, AB_DRAIN);
  if (rc != 0 && !bad)
    bad = fail("ab_runtime_destroy", rc);
  return bad;
}
