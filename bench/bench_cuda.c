/* bench_cuda.c: arraybridge on CUDA device 0 next to plain CUDA runtime calls doing the same
 * work, in the same process, on the same GPU.
 *
 *   bench_cuda probe     exit 0 when the runtime sees a CUDA device, 77 (and a note) when not
 *   bench_cuda h2d       BENCH_BYTES (256 MiB) of pageable host memory onto the GPU:
 *                          ours_gbps      ab_convert host -> cuda:0, submit to result
 *                          pageable_gbps  cudaMemcpy from the same pageable buffer
 *                          pinned_gbps    cudaMemcpy from a cudaMallocHost buffer (the limit)
 *   bench_cuda d2h       the same bytes back into pageable host memory (ab_convert cuda:0 ->
 *                        host, force_copy; cudaMemcpy into pageable and into pinned memory)
 *   bench_cuda stack     BENCH_SLICES (1000) host slices of 512x512 uint16 onto the GPU:
 *                          ours_gbps      ab_stack
 *                          loop_gbps      one cudaMemcpy per slice (the naive way)
 *                          pinned_gbps    one cudaMemcpy of the same bytes from a
 *                                         cudaMallocHost buffer (the limit)
 *   bench_cuda convert   a small host -> GPU conversion (BENCH_CONVERT_BYTES, 64 KiB), the
 *                        median of BENCH_CONVERT_ITERS (2000) per repetition:
 *                          ours_us        ab_convert + ab_future_wait
 *                          raw_us         cudaMemcpyAsync + cudaStreamSynchronize into a kept
 *                                         buffer, from the same pageable memory
 *
 * Environment: BENCH_REPS (7). Repetitions alternate ours and the peers so that drift hits both.
 * Output: "<metric> <value>" lines (bench_util.h); bench/run.d/cuda.sh makes the JSON. */
#include <arraybridge.h>
#include <cuda_runtime_api.h>

#define BENCH_PROG "bench_cuda"
#define BENCH_NATIVE "cuda"
#include "bench_ab.h"


static const ab_device GPU = {AB_CUDA, 0};

static ab_runtime *runtime(void) {
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  o.kinds[AB_OPENCL].disabled = true;
  return bench_runtime(&o, AB_CUDA, "no CUDA device (no GPU or no driver), skipped");
}

static ab_tensor *wrap_bytes(void *p, size_t bytes) {
  int64_t shape[1] = {(int64_t)bytes};
  DLTensor dl = {.data = p, .device = {kDLCPU, 0}, .ndim = 1, .dtype = {kDLUInt, 8, 1}, .shape = shape};
  ab_tensor *t;
  CHECK(ab_tensor_wrap(&dl, 0, NULL, NULL, &t));
  return t;
}

static char *pageable(size_t bytes) {
  char *p = malloc(bytes);
  if (!p) exit(1);
  for (size_t i = 0; i < bytes; i++) p[i] = (char)(i * 7); /* touched: no first-touch faults timed */
  return p;
}

/* h2d (down == 0) or d2h (down == 1). */
static void transfer(int reps, int down) {
  size_t bytes = (size_t)bench_env_long("BENCH_BYTES", 256L << 20);
  ab_runtime *rt = runtime();
  char *host = pageable(bytes), *pin, *dev;
  CHECK(cudaMallocHost((void **)&pin, bytes));
  CHECK(cudaMalloc((void **)&dev, bytes));
  ab_tensor *src = wrap_bytes(host, bytes), *gsrc = NULL;
  if (down) {
    ab_future *f;
    CHECK(ab_convert(rt, src, GPU, NULL, &f));
    gsrc = bench_result(f);
  }
  ab_convert_options o = AB_CONVERT_OPTIONS_INIT;
  o.force_copy = true;
  enum cudaMemcpyKind kind = down ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
  for (int rep = -1; rep < reps; rep++) { /* rep -1 warms everything up */
    ab_future *f;
    double t0 = bench_now();
    CHECK(ab_convert(rt, down ? gsrc : src, down ? (ab_device){AB_HOST, 0} : GPU, &o, &f));
    ab_tensor *r = bench_result(f);
    double t1 = bench_now();
    ab_tensor_release(r);
    CHECK(down ? cudaMemcpy(host, dev, bytes, kind) : cudaMemcpy(dev, host, bytes, kind));
    double t2 = bench_now();
    CHECK(down ? cudaMemcpy(pin, dev, bytes, kind) : cudaMemcpy(dev, pin, bytes, kind));
    double t3 = bench_now();
    if (rep < 0) continue;
    printf("ours_gbps %.4f\npageable_gbps %.4f\npinned_gbps %.4f\n", bytes / (t1 - t0) / 1e9,
           bytes / (t2 - t1) / 1e9, bytes / (t3 - t2) / 1e9);
    fflush(stdout);
  }
  ab_tensor_release(src);
  ab_tensor_release(gsrc);
  CHECK(ab_runtime_destroy(rt, AB_DRAIN));
  cudaFree(dev);
  cudaFreeHost(pin);
  free(host);
}

static void stack(int reps) {
  int n = (int)bench_env_long("BENCH_SLICES", 1000);
  size_t sb = 512 * 512 * 2, total = sb * (size_t)n;
  char *host = pageable(total), *dev, *pin;
  ab_runtime *rt = runtime();
  ab_tensor **sl = malloc(sizeof *sl * (size_t)n);
  if (!sl) exit(1);
  int64_t shape[2] = {512, 512};
  for (int i = 0; i < n; i++) {
    DLTensor dl = {.data = host + (size_t)i * sb, .device = {kDLCPU, 0}, .ndim = 2,
                   .dtype = {kDLUInt, 16, 1}, .shape = shape};
    CHECK(ab_tensor_wrap(&dl, 0, NULL, NULL, &sl[i]));
  }
  CHECK(cudaMalloc((void **)&dev, total));
  CHECK(cudaMallocHost((void **)&pin, total));
  memcpy(pin, host, total);
  for (int rep = -1; rep < reps; rep++) {
    ab_future *f;
    double t0 = bench_now();
    CHECK(ab_stack(rt, sl, (size_t)n, GPU, NULL, &f));
    ab_tensor *v = bench_result(f);
    double t1 = bench_now();
    ab_tensor_release(v);
    for (int i = 0; i < n; i++)
      CHECK(cudaMemcpy(dev + (size_t)i * sb, host + (size_t)i * sb, sb, cudaMemcpyHostToDevice));
    double t2 = bench_now();
    CHECK(cudaMemcpy(dev, pin, total, cudaMemcpyHostToDevice));
    double t3 = bench_now();
    if (rep < 0) continue;
    printf("ours_gbps %.4f\nloop_gbps %.4f\npinned_gbps %.4f\n", total / (t1 - t0) / 1e9, total / (t2 - t1) / 1e9,
           total / (t3 - t2) / 1e9);
    fflush(stdout);
  }
  for (int i = 0; i < n; i++) ab_tensor_release(sl[i]);
  CHECK(ab_runtime_destroy(rt, AB_DRAIN));
  cudaFree(dev);
  cudaFreeHost(pin);
  free(sl);
  free(host);
}

static void convert(int reps) {
  size_t bytes = (size_t)bench_env_long("BENCH_CONVERT_BYTES", 65536);
  int iters = (int)bench_env_long("BENCH_CONVERT_ITERS", 2000);
  char *host = pageable(bytes), *dev;
  double *lat = malloc(sizeof(double) * (size_t)iters);
  if (!lat) exit(1);
  ab_runtime *rt = runtime();
  ab_tensor *src = wrap_bytes(host, bytes);
  cudaStream_t s;
  CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  CHECK(cudaMalloc((void **)&dev, bytes));
  for (int rep = -1; rep < reps; rep++) {
    for (int i = 0; i < iters; i++) {
      double t0 = bench_now();
      ab_future *f;
      CHECK(ab_convert(rt, src, GPU, NULL, &f));
      ab_tensor_release(bench_result(f));
      lat[i] = bench_now() - t0;
    }
    double ours = bench_median(lat, (size_t)iters);
    for (int i = 0; i < iters; i++) {
      double t0 = bench_now();
      CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s));
      CHECK(cudaStreamSynchronize(s));
      lat[i] = bench_now() - t0;
    }
    double raw = bench_median(lat, (size_t)iters);
    if (rep < 0) continue;
    printf("ours_us %.4f\nraw_us %.4f\n", ours * 1e6, raw * 1e6);
    fflush(stdout);
  }
  ab_tensor_release(src);
  CHECK(ab_runtime_destroy(rt, AB_DRAIN));
  cudaFree(dev);
  cudaStreamDestroy(s);
  free(lat);
  free(host);
}

int main(int argc, char **argv) {
  int reps = (int)bench_env_long("BENCH_REPS", 7);
  const char *m = argc == 2 ? argv[1] : "";
  if (strcmp(m, "probe") == 0) CHECK(ab_runtime_destroy(runtime(), AB_DRAIN));
  else if (strcmp(m, "h2d") == 0) transfer(reps, 0);
  else if (strcmp(m, "d2h") == 0) transfer(reps, 1);
  else if (strcmp(m, "stack") == 0) stack(reps);
  else if (strcmp(m, "convert") == 0) convert(reps);
  else {
    fprintf(stderr, "usage: bench_cuda probe|h2d|d2h|stack|convert\n");
    return 2;
  }
  return 0;
}
