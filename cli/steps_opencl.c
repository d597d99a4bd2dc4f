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
 *   - Work items take eight pixels each (vector loads and stores), so pocl's CPU devices and
 *     GPUs alike run whole vectors. The percentiles are found from two small histograms (the
 *     high byte, then the low byte inside the two bins the ranks fall in), each work item
 *     counting a run of pixels privately; the picks and the scale table run as one work item,
 *     so lo and hi never leave the device between the counting and the scaling.
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
    "#define ONE 16384u\n"
    /* maximum over z, eight pixels a work item */
    "__kernel void maxz(__global const ushort *v, ulong off, __global ushort *o, int nz, ulong hw) {\n"
    "  size_t x0 = get_global_id(0) * 8; __global const ushort *p = v + off;\n"
    "  if (x0 + 8 <= hw) {\n"
    "    ushort8 m = vload8(0, p + x0);\n"
    "    for (int z = 1; z < nz; z++) m = max(m, vload8(0, p + (size_t)z * hw + x0));\n"
    "    vstore8(m, 0, o + x0);\n"
    "  } else for (size_t x = x0; x < hw; x++) {\n"
    "    ushort m = p[x];\n"
    "    for (int z = 1; z < nz; z++) m = max(m, p[(size_t)z * hw + x]);\n"
    "    o[x] = m;\n"
    "  }\n"
    "}\n"
    /* the filter's rule where the window is cut (steps.h), at position `at` of a line of n */
    "uint cut(__global const ushort *p, long step, int at, int n, __global const ushort *wt, int r) {\n"
    "  uint a = 0, s = 0;\n"
    "  for (int i = -r; i <= r; i++) {\n"
    "    if (at + i < 0 || at + i >= n) continue;\n"
    "    uint k = wt[abs(i)]; a += k * p[(long)i * step]; s += k;\n"
    "  }\n"
    "  return (a + s / 2) / s;\n"
    "}\n"
    /* one pass of the separable filter, eight pixels of a row a work item: along x, or along y
     * (rows y - r .. y + r of the same eight columns) */
    "__kernel void smooth(__global const ushort *v, ulong off, __global ushort *o, __global const ushort *wt,\n"
    "                     int r, int along_x, int w, int h) {\n"
    "  int x0 = get_global_id(0) * 8, y = get_global_id(1);\n"
    "  __global const ushort *p = v + off + (size_t)y * w;\n"
    "  long step = along_x ? 1 : w;\n"
    "  bool inside = x0 + 8 <= w && (along_x ? x0 - r >= 0 && x0 + 7 + r < w : y - r >= 0 && y + r < h);\n"
    "  if (inside) {\n"
    "    uint8 a = convert_uint8(vload8(0, p + x0)) * (uint)wt[0];\n"
    "    for (int i = 1; i <= r; i++)\n"
    "      a += (convert_uint8(vload8(0, p + x0 - i * step)) + convert_uint8(vload8(0, p + x0 + i * step))) * (uint)wt[i];\n"
    "    vstore8(convert_ushort8((a + ONE / 2) >> 14), 0, o + (size_t)y * w + x0);\n"
    "  } else for (int x = x0; x < x0 + 8 && x < w; x++)\n"
    "    o[(size_t)y * w + x] = (ushort)cut(p + x, step, along_x ? x : y, along_x ? w : h, wt, r);\n"
    "}\n"
    /* normalise's percentiles exactly as steps_percentiles() finds them, without a 65536-bin
     * histogram: counts of the high byte, then of the low byte inside the two high-byte bins
     * where the ranks fall. Each work item counts a run of pixels privately and adds its counts
     * once. s: [0, 256) high bytes, [256, 512) and [512, 768) low bytes for lo and hi, then
     * B_lo, before_lo, B_hi, before_hi, lo, hi; the scale table (ushort) from s + 776. */
    "__kernel void zero(__global uint *s) { s[get_global_id(0)] = 0; }\n"
    "__kernel void count_high(__global const ushort *v, ulong off, ulong n, __global uint *s) {\n"
    "  uint h[256]; for (int b = 0; b < 256; b++) h[b] = 0;\n"
    "  ulong per = (n + get_global_size(0) - 1) / get_global_size(0), a = get_global_id(0) * per;\n"
    "  ulong e = min(a + per, n);\n"
    "  for (ulong i = a; i < e; i++) h[v[off + i] >> 8]++;\n"
    "  for (int b = 0; b < 256; b++) if (h[b]) atomic_add(&s[b], h[b]);\n"
    "}\n"
    "void find(__global const uint *h, ulong rank, ulong before, uint *at, ulong *cum) {\n"
    "  ulong c = before; uint b = 0;\n"
    "  for (; b < 255; b++) { if (c + h[b] > rank) break; c += h[b]; }\n"
    "  *at = b; *cum = c;\n"
    "}\n"
    "__kernel void pick_high(__global uint *s, ulong n, ulong p_lo, ulong p_hi) {\n"
    "  uint b; ulong c;\n"
    "  find(s, n * p_lo / 1000, 0, &b, &c); s[768] = b; s[769] = (uint)c;\n"
    "  find(s, n * p_hi / 1000, 0, &b, &c); s[770] = b; s[771] = (uint)c;\n"
    "}\n"
    "__kernel void count_low(__global const ushort *v, ulong off, ulong n, __global uint *s) {\n"
    "  uint hl[256], hh[256]; for (int b = 0; b < 256; b++) hl[b] = hh[b] = 0;\n"
    "  uint bl = s[768], bh = s[770];\n"
    "  ulong per = (n + get_global_size(0) - 1) / get_global_size(0), a = get_global_id(0) * per;\n"
    "  ulong e = min(a + per, n);\n"
    "  for (ulong i = a; i < e; i++) {\n"
    "    uint x = v[off + i];\n"
    "    if (x >> 8 == bl) hl[x & 255]++;\n"
    "    if (x >> 8 == bh) hh[x & 255]++;\n"
    "  }\n"
    "  for (int b = 0; b < 256; b++) { if (hl[b]) atomic_add(&s[256 + b], hl[b]); if (hh[b]) atomic_add(&s[512 + b], hh[b]); }\n"
    "}\n"
    /* lo and hi, then the table: t[k - 1] = k * 65535 / (hi - lo) for k in [1, hi - lo), the
     * quotient and remainder stepped exactly, no division per entry */
    "__kernel void pick_low(__global uint *s, ulong n, ulong p_lo, ulong p_hi) {\n"
    "  uint b; ulong c;\n"
    "  find(s + 256, n * p_lo / 1000, s[769], &b, &c); uint lo = s[768] * 256 + b;\n"
    "  find(s + 512, n * p_hi / 1000, s[771], &b, &c); uint hi = s[770] * 256 + b;\n"
    "  if (hi <= lo) hi = lo + 1;\n"
    "  s[772] = lo; s[773] = hi;\n"
    "  __global ushort *t = (__global ushort *)(s + 776);\n"
    "  uint d = hi - lo, sq = 65535 / d, sr = 65535 % d, q = 0, rem = 0;\n"
    "  for (uint k = 1; k < d; k++) { q += sq; rem += sr; if (rem >= d) { rem -= d; q++; } t[k - 1] = (ushort)q; }\n"
    "}\n"
    "__kernel void scale(__global const ushort *v, ulong off, __global ushort *o, __global const uint *s, ulong n) {\n"
    "  size_t i0 = get_global_id(0) * 8; uint lo = s[772], hi = s[773];\n"
    "  __global const ushort *t = (__global const ushort *)(s + 776);\n"
    "  for (size_t i = i0; i < i0 + 8 && i < n; i++) {\n"
    "    uint x = v[off + i];\n"
    "    o[i] = x <= lo ? 0 : x >= hi ? 65535 : t[x - lo - 1];\n"
    "  }\n"
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

static size_t groups_of_8(size_t n) { return (n + 7) / 8; }

static int ocl_project(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  cl_mem in, o;
  cl_ulong off;
  int rc = input(c, 3, &x, &in, &off);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = output(c, U16, 2, x->shape + 1, &out, &o)) != 0) return rc;
  cl_ulong hw = (cl_ulong)(x->shape[1] * x->shape[2]);
  size_t g = groups_of_8((size_t)hw);
  cl_int nz = (cl_int)x->shape[0];
  return finish(c, launch(c, "maxz", 1, &g, 5, (karg[]){ARG(in), ARG(off), ARG(o), ARG(nz), ARG(hw)}), out);
}

static int ocl_filter(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  cl_mem in, t, wt, o;
  cl_ulong off, zero = 0;
  int rc = input(c, 2, &x, &in, &off);
  if (rc != 0) return rc;
  cl_int h = (cl_int)x->shape[0], w = (cl_int)x->shape[1], r = p->radius, along_x = 1, along_y = 0;
  size_t g[2] = {groups_of_8((size_t)w), (size_t)h}, wbytes = (size_t)(p->radius + 1) * sizeof(uint16_t);
  if ((rc = ab_ctx_alloc(c, (size_t)w * (size_t)h * sizeof(uint16_t), (void **)&t)) != 0) return rc;
  if ((rc = ab_ctx_alloc(c, wbytes, (void **)&wt)) != 0) return rc;
  /* the weights live as long as the run: a write that does not block is safe */
  cl_int e = clEnqueueWriteBuffer(ab_ctx_stream(c), wt, CL_FALSE, 0, wbytes, p->weight, 0, NULL, NULL);
  if (e != CL_SUCCESS) return cl_rc(e);
  ab_tensor *out;
  if ((rc = output(c, U16, 2, x->shape, &out, &o)) != 0) return rc;
  rc = launch(c, "smooth", 2, g, 8,
              (karg[]){ARG(in), ARG(off), ARG(t), ARG(wt), ARG(r), ARG(along_x), ARG(w), ARG(h)});
  if (rc == 0)
    rc = launch(c, "smooth", 2, g, 8,
                (karg[]){ARG(t), ARG(zero), ARG(o), ARG(wt), ARG(r), ARG(along_y), ARG(w), ARG(h)});
  return finish(c, rc, out);
}

#define SCRATCH_UINTS (776 + 65536 / 2) /* the counts, the picks, the scale table */

static int ocl_normalise(ab_ctx *c, void *arg) {
  const screen_pipeline *p = ((const screen_normalise *)arg)->p;
  const DLTensor *x;
  cl_mem in, s, o;
  cl_ulong off;
  int rc = input(c, 2, &x, &in, &off);
  if (rc != 0) return rc;
  if ((rc = ab_ctx_alloc(c, SCRATCH_UINTS * sizeof(cl_uint), (void **)&s)) != 0) return rc;
  ab_tensor *out;
  if ((rc = output(c, U16, 2, x->shape, &out, &o)) != 0) return rc;
  cl_ulong n = (cl_ulong)(x->shape[0] * x->shape[1]), p_lo = p->p_lo, p_hi = p->p_hi;
  size_t counters = 776, one = 1, runs = n / 4096 + 1, eights = groups_of_8((size_t)n);
  if (runs > 256) runs = 256; /* work items that each count a run of pixels */
  karg count[] = {ARG(in), ARG(off), ARG(n), ARG(s)}, pick[] = {ARG(s), ARG(n), ARG(p_lo), ARG(p_hi)};
  rc = launch(c, "zero", 1, &counters, 1, (karg[]){ARG(s)});
  if (rc == 0) rc = launch(c, "count_high", 1, &runs, 4, count);
  if (rc == 0) rc = launch(c, "pick_high", 1, &one, 4, pick);
  if (rc == 0) rc = launch(c, "count_low", 1, &runs, 4, count);
  if (rc == 0) rc = launch(c, "pick_low", 1, &one, 4, pick);
  if (rc == 0) rc = launch(c, "scale", 1, &eights, 5, (karg[]){ARG(in), ARG(off), ARG(o), ARG(s), ARG(n)});
  return finish(c, rc, out);
}

/* Whether the device is a CPU (pocl's are: they run on the host's own cores). */
static int ocl_host_cores(ab_ctx *c, void *arg) {
  cl_device_id dev;
  cl_device_type type = 0;
  if (clGetCommandQueueInfo(ab_ctx_stream(c), CL_QUEUE_DEVICE, sizeof dev, &dev, NULL) == CL_SUCCESS &&
      clGetDeviceInfo(dev, CL_DEVICE_TYPE, sizeof type, &type, NULL) == CL_SUCCESS)
    *(bool *)arg = (type & CL_DEVICE_TYPE_CPU) != 0;
  return 0;
}

/* Builds (or finds) the device's program, so that the plate's first stacks do not wait for it. */
static int ocl_prepare(ab_ctx *c, void *arg) {
  (void)arg;
  cl_program prog;
  return program_for(ab_ctx_stream(c), &prog);
}

const screen_steps screen_steps_opencl = {
    .kind = AB_OPENCL,
    .project = ocl_project,
    .filter = ocl_filter,
    .normalise = ocl_normalise,
    .host_cores = ocl_host_cores,
    .prepare = ocl_prepare,
    .cleanup = opencl_cleanup,
};
