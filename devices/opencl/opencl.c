/*
 * devices/opencl/opencl.c: the OpenCL backend, through the ICD loader.
 *
 * Every device of every platform (pocl's are CPU-type, so all types are enumerated). One context
 * and one program per device, built at start from source.c; one in-order queue, a set of kernel
 * objects (clSetKernelArg is not thread-safe, so each worker has its own) and a buffer cache per
 * worker. No platform at all means zero devices, not an error.
 *
 * Design notes
 *   - Operations are enqueued in order on the calling worker's queue. After a task's body, the
 *     worker enqueues a marker event and goes on to the next task; it completes the future when
 *     polling finds the event done (runtime/worker.c). So a future completes only when its data
 *     is in place, a consumer never waits on a producer's event, and a buffer freed by the last
 *     release is idle. Within a task, many slice copies are many enqueues and no wait.
 *   - Buffers come back to the cache of the worker whose thread frees them (or the device's
 *     first worker when a foreign thread does), under that worker's cache lock; the owner takes
 *     the lock too, so a worker's cache is only ever touched by one thread at a time. Trim (the
 *     OOM ladder's step 2) releases a worker's whole cache.
 *   - Fault injection covers every call site: allocation in the runtime's ladder, AB_FAULT_COPY
 *     before each read, write and copy, AB_FAULT_LAUNCH before each kernel.
 */
#include <string.h>

#include "devices/opencl/opencl.h"

#define CACHE_SLOTS 32
#define MINMAX_GROUPS 64

typedef struct {
  cl_device_id id;
  cl_context ctx;
  cl_program prog;
  uint64_t max_alloc;
} ocl_dev;

typedef struct {
  cl_mem mem;
  size_t size;
} cached;

typedef struct {
  cl_command_queue q;
  cl_kernel cast[AB__CL_NTYPES][AB__CL_NTYPES];
  cl_kernel stretch[AB__CL_NTYPES][AB__CL_NTYPES];
  cl_kernel minmax[AB__CL_NTYPES];
  cl_kernel gather[2];            /* 8-byte words, bytes */
  cl_mem partials;
  pthread_mutex_t lock;           /* guards the cache */
  cached cache[CACHE_SLOTS];
  int ncache;
} ocl_worker;

static int cl_err(cl_int e) {
  switch (e) {
  case CL_SUCCESS:
    return 0;
  case CL_MEM_OBJECT_ALLOCATION_FAILURE:
  case CL_OUT_OF_RESOURCES:
  case CL_OUT_OF_HOST_MEMORY:
    return AB_ENOMEM;
  default:
    return AB_EDEVICE;
  }
}

/* ---- discovery ------------------------------------------------------------------------------ */
/* The index-th device over all platforms, in ICD order; the count when index < 0. */
static int find_device(int index, cl_device_id *out) {
  cl_uint np = 0;
  if (clGetPlatformIDs(0, NULL, &np) != CL_SUCCESS || np == 0) return 0; /* no platform: none */
  cl_platform_id plats[16];
  if (np > 16) np = 16;
  if (clGetPlatformIDs(np, plats, NULL) != CL_SUCCESS) return 0;
  int n = 0;
  for (cl_uint p = 0; p < np; p++) {
    cl_uint nd = 0;
    if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || nd == 0) continue;
    cl_device_id devs[64];
    if (nd > 64) nd = 64;
    if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, devs, NULL) != CL_SUCCESS) continue;
    for (cl_uint i = 0; i < nd; i++, n++)
      if (n == index) {
        *out = devs[i];
        return n + 1;
      }
  }
  return n;
}

static int ocl_probe(ab__phys_info *out, int cap) {
  int n = find_device(-1, NULL);
  for (int i = 0; i < n && i < cap; i++) {
    cl_device_id id;
    find_device(i, &id);
    cl_ulong mem = 0;
    clGetDeviceInfo(id, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    out[i].memory_total = mem;
    char name[48] = "OpenCL device";
    clGetDeviceInfo(id, CL_DEVICE_NAME, sizeof name, name, NULL);
    name[sizeof name - 1] = 0;
    snprintf(out[i].name, sizeof out[i].name, "%s", name);
  }
  return n;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */
static int build(ocl_dev *o) {
  char *src = ab__cl_program_source();
  if (src == NULL) return AB_ENOMEM;
  cl_int e;
  const char *s = src;
  o->prog = clCreateProgramWithSource(o->ctx, 1, &s, NULL, &e);
  free(src);
  if (e != CL_SUCCESS) return cl_err(e);
  e = clBuildProgram(o->prog, 1, &o->id, "-cl-std=CL1.2", NULL, NULL);
  if (e != CL_SUCCESS) {
    char log[4096] = "";
    clGetProgramBuildInfo(o->prog, o->id, CL_PROGRAM_BUILD_LOG, sizeof log, log, NULL);
    log[sizeof log - 1] = 0;
    fprintf(stderr, "arraybridge: OpenCL program build failed (%d):\n%s\n", e, log);
    return AB_EDEVICE;
  }
  return 0;
}

static void ocl_close(ab__device *d) {
  ocl_dev *o = d->backend;
  if (o == NULL) return;
  if (o->prog) clReleaseProgram(o->prog);
  if (o->ctx) clReleaseContext(o->ctx);
  free(o);
  d->backend = NULL;
}

static int ocl_open(ab__device *d) {
  ocl_dev *o = calloc(1, sizeof *o);
  if (o == NULL) return AB_ENOMEM;
  d->backend = o;
  int rc = AB_ENODEV;
  if (find_device(d->physical, &o->id) > d->physical) {
    cl_ulong max_alloc = 0;
    clGetDeviceInfo(o->id, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof max_alloc, &max_alloc, NULL);
    o->max_alloc = max_alloc;
    cl_int e;
    o->ctx = clCreateContext(NULL, 1, &o->id, NULL, NULL, &e);
    rc = e == CL_SUCCESS ? build(o) : cl_err(e);
  }
  if (rc != 0) ocl_close(d); /* the runtime closes only devices that opened */
  return rc;
}

static void release_cache(ocl_worker *ow) {
  for (int i = 0; i < ow->ncache; i++) clReleaseMemObject(ow->cache[i].mem);
  ow->ncache = 0;
}

static void ocl_worker_stop(ab__worker *w) {
  ocl_worker *ow = w->backend;
  if (ow == NULL) return;
  release_cache(ow);
  for (int s = 0; s < AB__CL_NTYPES; s++) {
    if (ow->minmax[s]) clReleaseKernel(ow->minmax[s]);
    for (int t = 0; t < AB__CL_NTYPES; t++) {
      if (ow->cast[s][t]) clReleaseKernel(ow->cast[s][t]);
      if (ow->stretch[s][t]) clReleaseKernel(ow->stretch[s][t]);
    }
  }
  for (int i = 0; i < 2; i++)
    if (ow->gather[i]) clReleaseKernel(ow->gather[i]);
  if (ow->partials) clReleaseMemObject(ow->partials);
  if (ow->q) clReleaseCommandQueue(ow->q);
  pthread_mutex_destroy(&ow->lock);
  free(ow);
  w->backend = NULL;
}

static int ocl_worker_start(ab__worker *w) {
  ocl_dev *o = w->dev->backend;
  ocl_worker *ow = calloc(1, sizeof *ow);
  if (ow == NULL) return AB_ENOMEM;
  if (pthread_mutex_init(&ow->lock, NULL) != 0) {
    free(ow);
    return AB_ENOMEM;
  }
  w->backend = ow;
  cl_int e;
  ow->q = clCreateCommandQueue(o->ctx, o->id, 0, &e);
  if (e == CL_SUCCESS)
    ow->partials = clCreateBuffer(o->ctx, CL_MEM_READ_WRITE, sizeof(double) * 3 * MINMAX_GROUPS, NULL, &e);
  return cl_err(e);
}

/* ---- memory --------------------------------------------------------------------------------- */
static bool take_cached(ocl_worker *ow, size_t bytes, void **base) {
  int best = -1;
  pthread_mutex_lock(&ow->lock);
  for (int i = 0; i < ow->ncache; i++) {
    size_t s = ow->cache[i].size; /* best fit, wasting at most a quarter */
    if (s >= bytes && s - bytes <= bytes / 4 && (best < 0 || s < ow->cache[best].size)) best = i;
  }
  if (best >= 0) {
    *base = ow->cache[best].mem;
    ow->cache[best] = ow->cache[--ow->ncache];
  }
  pthread_mutex_unlock(&ow->lock);
  return best >= 0;
}

static int ocl_alloc(ab__worker *w, size_t bytes, void **base) {
  ocl_dev *o = w->dev->backend;
  if (bytes > o->max_alloc) return AB_ENOTSUP; /* no wait would make it fit */
  if (take_cached(w->backend, bytes, base)) return 0;
  ab__device *d = w->dev; /* a sibling's cache beats a fresh buffer: its pages are touched */
  for (int i = 0; i < d->nworkers; i++)
    if (&d->workers[i] != w && take_cached(d->workers[i].backend, bytes, base)) return 0;
  cl_int e;
  cl_mem m = clCreateBuffer(o->ctx, CL_MEM_READ_WRITE, bytes, NULL, &e);
  if (e != CL_SUCCESS) return cl_err(e);
  *base = m;
  return 0;
}

static void ocl_free(ab__device *d, void *base, size_t bytes) {
  ab__worker *w = ab__current_worker && ab__current_worker->dev == d ? ab__current_worker : &d->workers[0];
  ocl_worker *ow = w->backend;
  pthread_mutex_lock(&ow->lock);
  bool kept = ow->ncache < CACHE_SLOTS;
  if (kept) ow->cache[ow->ncache++] = (cached){base, bytes};
  pthread_mutex_unlock(&ow->lock);
  if (!kept) clReleaseMemObject(base);
}

static void ocl_trim(ab__worker *w) {
  ocl_worker *ow = w->backend;
  pthread_mutex_lock(&ow->lock);
  release_cache(ow);
  pthread_mutex_unlock(&ow->lock);
}

static int ocl_drain_frees(ab__device *d) {
  (void)d;
  return 0; /* every op waits for itself: nothing is pending */
}

static void *ocl_stream(ab__worker *w) { return ((ocl_worker *)w->backend)->q; }

/* ---- data movement -------------------------------------------------------------------------- */
static int ocl_finish(ab__worker *w) { return cl_err(clFinish(((ocl_worker *)w->backend)->q)); }

static int ocl_record(ab__worker *w, void **event) {
  ocl_worker *ow = w->backend;
  cl_event e;
  cl_int r = clEnqueueMarkerWithWaitList(ow->q, 0, NULL, &e);
  if (r != CL_SUCCESS) return cl_err(r);
  *event = e;
  return cl_err(clFlush(ow->q)); /* submitted, so that polling sees progress */
}

static int ocl_poll(ab__worker *w, void *event) {
  (void)w;
  cl_int st;
  cl_int r = clGetEventInfo(event, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof st, &st, NULL);
  if (r != CL_SUCCESS) return cl_err(r);
  if (st < 0) return AB_EDEVICE;
  return st == CL_COMPLETE;
}

static int ocl_wait(ab__worker *w, void *event) {
  cl_event e = event;
  cl_int r = clWaitForEvents(1, &e);
  return r == CL_SUCCESS ? 1 : r == CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST ? AB_EDEVICE : ocl_poll(w, event);
}

static void ocl_event_free(void *event) { clReleaseEvent(event); }

static int ocl_upload(ab__worker *w, void *dst, size_t off, const void *host, size_t bytes) {
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  ocl_worker *ow = w->backend;
  return cl_err(clEnqueueWriteBuffer(ow->q, dst, CL_FALSE, off, bytes, host, 0, NULL, NULL));
}

static int ocl_download(ab__worker *w, void *host, const void *src, size_t off, size_t bytes) {
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  ocl_worker *ow = w->backend;
  return cl_err(clEnqueueReadBuffer(ow->q, (cl_mem)src, CL_TRUE, off, bytes, host, 0, NULL, NULL));
}

static int ocl_copy(ab__worker *w, void *dst, size_t dst_off, const void *src, size_t src_off, size_t bytes) {
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  ocl_worker *ow = w->backend;
  return cl_err(clEnqueueCopyBuffer(ow->q, (cl_mem)src, dst, src_off, dst_off, bytes, 0, NULL, NULL));
}

static int ocl_map_write(ab__worker *w, void *base, size_t off, size_t bytes, void **host) {
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  ocl_worker *ow = w->backend;
  cl_int e;
  *host = clEnqueueMapBuffer(ow->q, base, CL_TRUE, CL_MAP_WRITE_INVALIDATE_REGION, off, bytes, 0, NULL, NULL, &e);
  return cl_err(e);
}

static int ocl_unmap(ab__worker *w, void *base, void *host) {
  ocl_worker *ow = w->backend;
  return cl_err(clEnqueueUnmapMemObject(ow->q, base, host, 0, NULL, NULL));
}

/* ---- kernels -------------------------------------------------------------------------------- */
static cl_kernel kernel(ab__worker *w, cl_kernel *slot, const char *fmt, const char *a, const char *b) {
  if (*slot) return *slot;
  char name[64];
  snprintf(name, sizeof name, fmt, a, b);
  cl_int e;
  *slot = clCreateKernel(((ocl_dev *)w->dev->backend)->prog, name, &e);
  return e == CL_SUCCESS ? *slot : NULL;
}

/* The strided layout as the kernels take it: merged dims, byte strides, at most 8. */
typedef struct {
  cl_int nd;
  cl_long8 shape, bstride;
  cl_ulong numel, off;
} layout;

static int layout_of(const DLTensor *t, layout *l) {
  int nd;
  int64_t shape[AB_MAX_NDIM], bstride[AB_MAX_NDIM];
  int64_t numel = ab__collapse(t, &nd, shape, bstride);
  if (nd > 8) return AB_ENOTSUP;
  memset(l, 0, sizeof *l);
  l->nd = nd;
  for (int i = 0; i < nd; i++) {
    l->shape.s[i] = shape[i];
    l->bstride.s[i] = bstride[i];
  }
  for (int i = nd; i < 8; i++) l->shape.s[i] = 1;
  l->numel = (cl_ulong)numel;
  l->off = t->byte_offset;
  return 0;
}

static cl_int set_layout_args(cl_kernel k, const DLTensor *src, const layout *l) {
  cl_mem m = src->data;
  cl_int e = clSetKernelArg(k, 0, sizeof m, &m);
  e |= clSetKernelArg(k, 1, sizeof l->off, &l->off);
  e |= clSetKernelArg(k, 2, sizeof l->nd, &l->nd);
  e |= clSetKernelArg(k, 3, sizeof l->shape, &l->shape);
  e |= clSetKernelArg(k, 4, sizeof l->bstride, &l->bstride);
  return e;
}

static int launch(ab__worker *w, cl_kernel k, size_t global) {
  if (ab__fault_hit(w->dev, AB_FAULT_LAUNCH)) return AB_EFAULT;
  ocl_worker *ow = w->backend;
  return cl_err(clEnqueueNDRangeKernel(ow->q, k, 1, NULL, &global, NULL, 0, NULL, NULL));
}

static int ocl_minmax(ab__worker *w, const DLTensor *src, double *lo, double *hi, bool *found) {
  int s = ab__dtype_index(src->dtype);
  *found = false;
  if (s < 0 || ab__cl_types[s].cat != 'f') return AB_EDTYPE;
  layout l;
  int rc = layout_of(src, &l);
  if (rc != 0 || l.numel == 0) return rc;
  ocl_worker *ow = w->backend;
  cl_kernel k = kernel(w, &ow->minmax[s], "minmax_%s%s", ab__cl_types[s].name, "");
  if (k == NULL) return AB_EDEVICE;
  if (set_layout_args(k, src, &l) != CL_SUCCESS || clSetKernelArg(k, 5, sizeof l.numel, &l.numel) != CL_SUCCESS ||
      clSetKernelArg(k, 6, sizeof ow->partials, &ow->partials) != CL_SUCCESS)
    return AB_EDEVICE;
  if ((rc = launch(w, k, MINMAX_GROUPS)) != 0) return rc;
  double part[3 * MINMAX_GROUPS];
  if ((rc = ocl_download(w, part, ow->partials, 0, sizeof part)) != 0) return rc;
  for (int g = 0; g < MINMAX_GROUPS; g++) {
    if (part[3 * g + 2] == 0) continue;
    if (!*found || part[3 * g] < *lo) *lo = part[3 * g];
    if (!*found || part[3 * g + 1] > *hi) *hi = part[3 * g + 1];
    *found = true;
  }
  return 0;
}

static int ocl_cast(ab__worker *w, const DLTensor *src, void *dst, size_t dst_off, DLDataType dt,
                    const ab__cast_params *p) {
  int s = ab__dtype_index(src->dtype), d = ab__dtype_index(dt);
  if (s < 0 || d < 0) return AB_EDTYPE;
  layout l;
  int rc = layout_of(src, &l);
  if (rc != 0 || l.numel == 0) return rc;
  ocl_worker *ow = w->backend;
  bool stretch = false;
  double lo = 0, hi = 0;
  if (p && p->mode == AB_CAST_STRETCH && ab__cl_types[s].cat == 'f' &&
      (ab__cl_types[d].cat == 'u' || ab__cl_types[d].cat == 'i')) {
    bool found = p->have_range;
    lo = p->lo;
    hi = p->hi;
    if (!found && (rc = ocl_minmax(w, src, &lo, &hi, &found)) != 0) return rc;
    stretch = found && hi > lo;
  }
  const char *sn = ab__cl_types[s].name, *dn = ab__cl_types[d].name;
  cl_kernel k = stretch ? kernel(w, &ow->stretch[s][d], "stretch_%s_%s", sn, dn)
                        : kernel(w, &ow->cast[s][d], "cast_%s_%s", sn, dn);
  if (k == NULL) return AB_EDEVICE;
  cl_mem out = dst;
  cl_ulong off = dst_off;
  cl_int e = set_layout_args(k, src, &l);
  e |= clSetKernelArg(k, 5, sizeof out, &out);
  e |= clSetKernelArg(k, 6, sizeof off, &off);
  if (stretch) {
    double span = hi - lo;
    e |= clSetKernelArg(k, 7, sizeof lo, &lo);
    e |= clSetKernelArg(k, 8, sizeof span, &span);
  }
  if (e != CL_SUCCESS) return AB_EDEVICE;
  return launch(w, k, (size_t)l.numel);
}

static int ocl_gather(ab__worker *w, void *dst, size_t dst_off, size_t slice_bytes, int n, void *const *bases,
                      const size_t *offs) {
  if (n <= 0 || slice_bytes == 0) return 0;
  if (n > AB__GATHER_MAX) return AB_EINVAL;
  size_t unit = 8;
  for (int i = 0; i < n; i++)
    if (offs[i] % 8) unit = 1;
  if (dst_off % 8 || slice_bytes % 8) unit = 1;
  ocl_worker *ow = w->backend;
  cl_kernel k = unit == 8 ? kernel(w, &ow->gather[0], "gather_%s%s", "u64", "") : kernel(w, &ow->gather[1], "gather_%s%s", "u8", "");
  if (k == NULL) return AB_EDEVICE;
  cl_mem out = dst;
  cl_ulong doff = dst_off / unit, words = slice_bytes / unit;
  cl_int cnt = n;
  cl_int e = clSetKernelArg(k, 0, sizeof out, &out);
  e |= clSetKernelArg(k, 1, sizeof doff, &doff);
  e |= clSetKernelArg(k, 2, sizeof words, &words);
  e |= clSetKernelArg(k, 3, sizeof cnt, &cnt);
  for (int i = 0; i < 8; i++) { /* unused slots repeat slice 0: never read, but must be valid */
    cl_mem m = bases[i < n ? i : 0];
    cl_ulong o = offs[i < n ? i : 0] / unit;
    e |= clSetKernelArg(k, (cl_uint)(4 + 2 * i), sizeof m, &m);
    e |= clSetKernelArg(k, (cl_uint)(5 + 2 * i), sizeof o, &o);
  }
  if (e != CL_SUCCESS) return AB_EDEVICE;
  return launch(w, k, (size_t)words * (size_t)n);
}

const ab__device_ops ab__opencl_ops = {
    .size = sizeof(ab__device_ops),
    .name = "opencl",
    .kind = AB_OPENCL,
    .default_workers = 2,
    .probe = ocl_probe,
    .open = ocl_open,
    .close = ocl_close,
    .worker_start = ocl_worker_start,
    .worker_stop = ocl_worker_stop,
    .alloc = ocl_alloc,
    .free = ocl_free,
    .trim = ocl_trim,
    .drain_frees = ocl_drain_frees,
    .stream = ocl_stream,
    .finish = ocl_finish,
    .record = ocl_record,
    .poll = ocl_poll,
    .wait = ocl_wait,
    .event_free = ocl_event_free,
    .upload = ocl_upload,
    .download = ocl_download,
    .copy = ocl_copy,
    .map_write = ocl_map_write,
    .unmap = ocl_unmap,
    .cast = ocl_cast,
    .gather = ocl_gather,
    .minmax = ocl_minmax,
};
