/* bench_opencl.c: arraybridge on an OpenCL device next to raw OpenCL calls doing the same work,
 * in the same process, on the same device (the first OpenCL device of the first platform).
 *
 *   bench_opencl stack     1000 host slices of 512x512 uint16 onto the device, per repetition:
 *                            ours_gbps    ab_stack, submit to result
 *                            single_gbps  one clEnqueueWriteBuffer of the same bytes, already
 *                                         contiguous on the host (the limit)
 *                            loop_gbps    one clEnqueueWriteBuffer per slice, then clFinish
 *                                         (the naive way)
 *   bench_opencl convert   a small conversion (BENCH_CONVERT_BYTES, default 64 KiB of uint16)
 *                          host -> device, per repetition the median of many:
 *                            ours_us      ab_convert + ab_future_wait
 *                            raw_us       clEnqueueWriteBuffer (blocking) into a kept buffer
 *
 * Environment: BENCH_REPS (7), BENCH_SLICES (1000), BENCH_CONVERT_ITERS (2000).
 * Repetitions alternate ours and the peers so that drift on a shared machine hits both. */
#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>
#include <arraybridge.h>

#define BENCH_PROG "bench_opencl"
#define BENCH_NATIVE "cl"
#include "bench_ab.h"


typedef struct {
  cl_context ctx;
  cl_command_queue q;
} raw_cl;

static raw_cl raw_open(void) {
  raw_cl r;
  cl_platform_id p;
  cl_device_id d;
  cl_int e;
  CHECK(clGetPlatformIDs(1, &p, NULL));
  CHECK(clGetDeviceIDs(p, CL_DEVICE_TYPE_ALL, 1, &d, NULL));
  r.ctx = clCreateContext(NULL, 1, &d, NULL, NULL, &e);
  CHECK(e);
  r.q = clCreateCommandQueue(r.ctx, d, 0, &e);
  CHECK(e);
  return r;
}

static ab_runtime *runtime(void) { return bench_runtime(NULL, AB_OPENCL, "no OpenCL device"); }

static void stack(int reps) {
  int n = (int)bench_env_long("BENCH_SLICES", 1000);
  size_t sb = 512 * 512 * 2, total = sb * (size_t)n;
  char *host = malloc(total);
  if (!host) exit(1);
  for (size_t i = 0; i < total; i++) host[i] = (char)(i * 7);
  ab_runtime *rt = runtime();
  ab_tensor **sl = malloc(sizeof *sl * (size_t)n);
  int64_t shape[2] = {512, 512};
  for (int i = 0; i < n; i++) {
    DLTensor dl = {.data = host + (size_t)i * sb, .device = {kDLCPU, 0}, .ndim = 2,
                   .dtype = {kDLUInt, 16, 1}, .shape = shape};
    CHECK(ab_tensor_wrap(&dl, 0, NULL, NULL, &sl[i]));
  }
  raw_cl r = raw_open();
  cl_int e;
  cl_mem m = clCreateBuffer(r.ctx, CL_MEM_READ_WRITE, total, NULL, &e);
  CHECK(e);
  for (int rep = -1; rep < reps; rep++) { /* rep -1 warms both up */
    ab_future *f;
    double t0 = bench_now();
    CHECK(ab_stack(rt, sl, (size_t)n, (ab_device){AB_OPENCL, 0}, NULL, &f));
    ab_tensor *v = bench_result(f);
    double t1 = bench_now();
    ab_tensor_release(v);
    CHECK(clEnqueueWriteBuffer(r.q, m, CL_TRUE, 0, total, host, 0, NULL, NULL));
    double t2 = bench_now();
    for (int i = 0; i < n; i++)
      CHECK(clEnqueueWriteBuffer(r.q, m, CL_FALSE, (size_t)i * sb, sb, host + (size_t)i * sb, 0, NULL, NULL));
    CHECK(clFinish(r.q));
    double t3 = bench_now();
    if (rep < 0) continue;
    printf("ours_gbps %.4f\nsingle_gbps %.4f\nloop_gbps %.4f\n", total / (t1 - t0) / 1e9, total / (t2 - t1) / 1e9,
           total / (t3 - t2) / 1e9);
    fflush(stdout);
  }
  for (int i = 0; i < n; i++) ab_tensor_release(sl[i]);
  clReleaseMemObject(m);
  clReleaseCommandQueue(r.q);
  clReleaseContext(r.ctx);
  CHECK(ab_runtime_destroy(rt, AB_DRAIN));
  free(sl);
  free(host);
}

static void convert(int reps) {
  size_t bytes = (size_t)bench_env_long("BENCH_CONVERT_BYTES", 65536);
  int iters = (int)bench_env_long("BENCH_CONVERT_ITERS", 2000);
  int64_t shape[1] = {(int64_t)(bytes / 2)};
  char *host = calloc(1, bytes);
  double *lat = malloc(sizeof(double) * (size_t)iters);
  if (!host || !lat) exit(1);
  ab_runtime *rt = runtime();
  DLTensor dl = {.data = host, .device = {kDLCPU, 0}, .ndim = 1, .dtype = {kDLUInt, 16, 1}, .shape = shape};
  ab_tensor *src;
  CHECK(ab_tensor_wrap(&dl, 0, NULL, NULL, &src));
  raw_cl r = raw_open();
  cl_int e;
  cl_mem m = clCreateBuffer(r.ctx, CL_MEM_READ_WRITE, bytes, NULL, &e);
  CHECK(e);
  for (int rep = -1; rep < reps; rep++) {
    for (int i = 0; i < iters; i++) {
      double t0 = bench_now();
      ab_future *f;
      CHECK(ab_convert(rt, src, (ab_device){AB_OPENCL, 0}, NULL, &f));
      ab_tensor_release(bench_result(f));
      lat[i] = bench_now() - t0;
    }
    double ours = bench_median(lat, (size_t)iters);
    for (int i = 0; i < iters; i++) {
      double t0 = bench_now();
      CHECK(clEnqueueWriteBuffer(r.q, m, CL_TRUE, 0, bytes, host, 0, NULL, NULL));
      lat[i] = bench_now() - t0;
    }
    double raw = bench_median(lat, (size_t)iters);
    if (rep < 0) continue;
    printf("ours_us %.4f\nraw_us %.4f\n", ours * 1e6, raw * 1e6);
    fflush(stdout);
  }
  ab_tensor_release(src);
  clReleaseMemObject(m);
  clReleaseCommandQueue(r.q);
  clReleaseContext(r.ctx);
  CHECK(ab_runtime_destroy(rt, AB_DRAIN));
  free(lat);
  free(host);
}

int main(int argc, char **argv) {
  int reps = (int)bench_env_long("BENCH_REPS", 7);
  if (argc == 2 && strcmp(argv[1], "stack") == 0) stack(reps);
  else if (argc == 2 && strcmp(argv[1], "convert") == 0) convert(reps);
  else {
    fprintf(stderr, "usage: bench_opencl stack|convert\n");
    return 2;
  }
  return 0;
}
