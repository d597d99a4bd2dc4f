/*
 * cli/steps_opencl.c: the pipeline's steps on OpenCL devices (see steps.h for the arithmetic).
 *
 * Design notes
 *   - Each step enqueues its kernels on the task's queue (ab_ctx_stream) and returns: the
 *     runtime completes the task when the queue has run them, and the next step's kernels queue
 *     behind them. Nothing here waits.
 *   - The program is built once per device, lazily, by the first task that needs it: the device
 *     is found from the queue (CL_QUEUE_CONTEXT, CL_QUEUE_DEVICE). Programs are cached per
 *     context under one mutex (a build takes it only on first use), and the cache holds a
 *     reference on the context so that its address cannot be reused by another one.
 *   - Kernel objects are made per task and released after their enqueue (the command keeps
 *     them): clSetKernelArg is not thread-safe, and a fresh kernel is cheap next to a stack.
 *   - percentiles runs as one work item: a scan of 65536 bins, so that lo and hi never leave
 *     the device between the histogram and the scaling.
 */
#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "cli/steps.h"

static const char *source =
    "__kernel void zero(__global uint *h) { h[get_global_id(0)] = 0; }\n"
    "__kernel void hist(__global const ushort *v, ulong off, __global uint *h) {\n"
    "  atomic_inc(&h[v[off + get_global_id(0)]]);\n"
    "}\n"
    /* the same rule as steps_percentiles(); lo and hi go after the 65536 bins */
    "__kernel void percentiles(__global uint *lohi, ulong n, ulong p_lo, ulong p_hi) {\n"
    "  __global const uint *h = lohi;\n"
    "  ulong rank_lo = n * p_lo / 1000, rank_hi = n * p_hi / 1000, cum = 0;\n"
    "  uint l = 0, hi = 65535; int have_lo = 0;\n"
    "  for (uint v = 0; v < 65536; v++) {\n"
    "    cum += h[v];\n"
    "    if (!have_lo && cum > rank_lo) { l = v; have_lo = 1; }\n"
    "    if (cum > rank_hi) { hi = v; break; }\n"
    "  }\n"
    "  if (hi <= l) hi = l + 1;\n"
    "  lohi[65536] = l; lohi[65537] = hi;\n"
    "}\n"
    "__kernel void scale(__global const ushort *v, ulong off, __global ushort *o, __global const uint *lohi) {\n"
    "  size_t i = get_global_id(0); uint x = v[off + i], lo = lohi[65536], hi = lohi[65537];\n"
    "  o[i] = x <= lo ? 0 : x >= hi ? 65535 : (ushort)((x - lo) * 65535u / (hi - lo));\n"
    "}\n"
    /* one pass of the separable filter (steps.h): along x (dx 1) or along y (dx 0) */
    "__kernel void smooth(__global const ushort *v, ulong off, __global ushort *o, __global const ushort *wt,\n"
    "                     int r, int along_x) {\n"
    "  int x = get_global_id(0), y = get_global_id(1);\n"
    "  int w = get_global_size(0), h = get_global_size(1);\n"
    "  int n = along_x ? w : h, at = along_x ? x : y;\n"
    "  uint a = 0, s = 0;\n"
    "  for (int i = -r; i <= r; i++) {\n"
    "    if (at + i < 0 || at + i >= n) continue;\n"
    "    uint k = wt[abs(i)];\n"
    "    a += k * v[off + (along_x ? (size_t)y * w + x + i : (size_t)(y + i) * w + x)];\n"
    "    s += k;\n"
    "  }\n"
    "  o[(size_t)y * w + x] = (ushort)((a + s / 2) / s);\n"
    "}\n"
    "__kernel void maxz(__global const ushort *v, ulong off, __global ushort *o, int nz) {\n"
    "  size_t i = get_global_id(0), hw = get_global_size(0);\n"
    "  ushort m = v[off + i];\n"
    "  for (int z = 1; z < nz; z++) m = max(m, v[off + z * hw + i]);\n"
    "  o[i] = m;\n"
    "}\n";

#define MAX_PROGRAMS 64

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  cl_context ctx;
  cl_program prog;
} cache[MAX_PROGRAMS];
static int ncache;

static int cl_rc(cl_int e) {
  if (e == CL_SUCCESS) return 0;
  if (e == CL_MEM_OBJECT_ALLOCATION_FAILURE || e == CL_OUT_OF_RESOURCES || e == CL_OUT_OF_HOST_MEMORY)
    return AB_ENOMEM;
  return AB_EDEVICE;
}

static cl_program build(cl_context ctx, cl_device_id dev) {
  cl_int e;
  cl_program p = clCreateProgramWithSource(ctx, 1, &source, NULL, &e);
  if (e != CL_SUCCESS) return NULL;
  if (clBuildProgram(p, 1, &dev, "", NULL, NULL) != CL_SUCCESS) {
    char log[2048] = "";
    clGetProgramBuildInfo(p, dev, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log, NULL);
    fprintf(stderr, "arraybridge: screening kernels do not build: %s\n", log);
    clReleaseProgram(p);
    return NULL;
  }
  return p;
}

/* The program for the device behind q, built on first use. */
static int program_for(cl_command_queue q, cl_program *out) {
  cl_context ctx;
  cl_device_id dev;
  if (clGetCommandQueueInfo(q, CL_QUEUE_CONTEXT, sizeof ctx, &ctx, NULL) != CL_SUCCESS ||
      clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof dev, &dev, NULL) != CL_SUCCESS)
    return AB_EDEVICE;
  pthread_mutex_lock(&cache_lock);
  int i = 0;
  while (i < ncache && cache[i].ctx != ctx) i++;
  if (i == ncache && ncache < MAX_PROGRAMS) {
    /* a failed build is cached too (as NULL): it is reported once, not once per stack */
    cache[i].prog = build(ctx, dev);
    clRetainContext(ctx); /* the key stays this context's (design notes) */
    cache[ncache++].ctx = ctx;
  }
  *out = i < ncache ? cache[i].prog : NULL;
  pthread_mutex_unlock(&cache_lock);
  return *out ? 0 : i < ncache ? AB_EDEVICE : AB_ENOMEM;
}

static void opencl_cleanup(void) {
  pthread_mutex_lock(&cache_lock);
  for (int i = 0; i < ncache; i++) {
    if (cache[i].prog) clReleaseProgram(cache[i].prog);
    clReleaseContext(cache[i].ctx);
  }
  ncache = 0;
  pthread_mutex_unlock(&cache_lock);
}

/* ---- launching ------------------------------------------------------------------------------ */
typedef struct {
  size_t size;
  const void *value;
} karg;

/* Enqueues kernel `name` over a 1-3D range with the given arguments. */
static int launch(ab_ctx *c, const char *name, int dims, const size_t *global, int nargs, const karg *args) {
  cl_command_queue q = ab_ctx_stream(c);
  cl_program prog;
  int rc = program_for(q, &prog);
  if (rc != 0) return rc;
  cl_int e;
  cl_kernel k = clCreateKernel(prog, name, &e);
  if (e != CL_SUCCESS) return cl_rc(e);
  for (int i = 0; i < nargs && e == CL_SUCCESS; i++) e = clSetKernelArg(k, (cl_uint)i, args[i].size, args[i].value);
  if (e == CL_SUCCESS) e = clEnqueueNDRangeKernel(q, k, (cl_uint)dims, NULL, global, NULL, 0, NULL, NULL);
  clReleaseKernel(k); /* the command holds it */
  return cl_rc(e);
}

static const DLDataType U16 = {kDLUInt, 16, 1};

/* Input 0 as a buffer and an element offset, checked like the host's. */
static int input(ab_ctx *c, int ndim, const DLTensor **out, cl_mem *mem, cl_ulong *off) {
  int rc = steps_input_u16(c, ndim, out);
  if (rc != 0) return rc;
  const DLTensor *x = *out;
  *mem = x->data;
  *off = x->byte_offset / sizeof(uint16_t);
  return 0;
}

/* A new output tensor and its buffer (outputs start at offset 0). */
static int output(ab_ctx *c, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **t, cl_mem *mem) {
  int rc = ab_ctx_alloc_tensor(c, dt, ndim, shape, t);
  if (rc == 0) *mem = ab_tensor_dl(*t)->data;
  return rc;
}

#define ARG(v) {sizeof(v), &(v)}

static int finish(ab_ctx *c, int rc, ab_tensor *out) {
  if (rc != 0) {
    ab_tensor_release(out);
    return rc;
  }
  return ab_ctx_set_output(c, out);
}

static int ocl_project(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  cl_mem in, o;
  cl_ulong off;
  int rc = input(c, 3, &x, &in, &off);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = output(c, U16, 2, x->shape + 1, &out, &o)) != 0) return rc;
  size_t hw = (size_t)(x->shape[1] * x->shape[2]);
  cl_int nz = (cl_int)x->shape[0];
  return finish(c, launch(c, "maxz", 1, &hw, 4, (karg[]){ARG(in), ARG(off), ARG(o), ARG(nz)}), out);
}

static int ocl_filter(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  cl_mem in, t, wt, o;
  cl_ulong off, zero = 0;
  int rc = input(c, 2, &x, &in, &off);
  if (rc != 0) return rc;
  size_t g[2] = {(size_t)x->shape[1], (size_t)x->shape[0]}, wbytes = (size_t)(p->radius + 1) * sizeof(uint16_t);
  if ((rc = ab_ctx_alloc(c, g[0] * g[1] * sizeof(uint16_t), (void **)&t)) != 0) return rc;
  if ((rc = ab_ctx_alloc(c, wbytes, (void **)&wt)) != 0) return rc;
  /* the weights live as long as the run: a write that does not block is safe */
  cl_int e = clEnqueueWriteBuffer(ab_ctx_stream(c), wt, CL_FALSE, 0, wbytes, p->weight, 0, NULL, NULL);
  if (e != CL_SUCCESS) return cl_rc(e);
  ab_tensor *out;
  if ((rc = output(c, U16, 2, x->shape, &out, &o)) != 0) return rc;
  cl_int r = p->radius, along_x = 1, along_y = 0;
  rc = launch(c, "smooth", 2, g, 6, (karg[]){ARG(in), ARG(off), ARG(t), ARG(wt), ARG(r), ARG(along_x)});
  if (rc == 0) rc = launch(c, "smooth", 2, g, 6, (karg[]){ARG(t), ARG(zero), ARG(o), ARG(wt), ARG(r), ARG(along_y)});
  return finish(c, rc, out);
}

static int ocl_normalise(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  cl_mem in, scratch, o;
  cl_ulong off;
  int rc = input(c, 2, &x, &in, &off);
  if (rc != 0) return rc;
  /* 65536 bins, then lo and hi */
  if ((rc = ab_ctx_alloc(c, (65536 + 2) * sizeof(cl_uint), (void **)&scratch)) != 0) return rc;
  ab_tensor *out;
  if ((rc = output(c, U16, 2, x->shape, &out, &o)) != 0) return rc;
  cl_ulong n = (cl_ulong)(x->shape[0] * x->shape[1]), p_lo = p->p_lo, p_hi = p->p_hi;
  size_t bins = 65536, one = 1, all = (size_t)n;
  rc = launch(c, "zero", 1, &bins, 1, (karg[]){ARG(scratch)});
  if (rc == 0) rc = launch(c, "hist", 1, &all, 3, (karg[]){ARG(in), ARG(off), ARG(scratch)});
  if (rc == 0) rc = launch(c, "percentiles", 1, &one, 4, (karg[]){ARG(scratch), ARG(n), ARG(p_lo), ARG(p_hi)});
  if (rc == 0) rc = launch(c, "scale", 1, &all, 4, (karg[]){ARG(in), ARG(off), ARG(o), ARG(scratch)});
  return finish(c, rc, out);
}

const screen_steps screen_steps_opencl = {
    .kind = AB_OPENCL,
    .project = ocl_project,
    .filter = ocl_filter,
    .normalise = ocl_normalise,
    .cleanup = opencl_cleanup,
};
