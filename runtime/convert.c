/*
 * runtime/convert.c: the conversion API (ab_convert, ab_convert_after), the conversion task's
 * body, run by a worker of the destination device D, and the planner that picks the path of
 * every tensor a conversion or a stack (stack.c) moves.
 *
 * The zero-copy case never gets here (task.c completes it at submit). Otherwise the output is a
 * fresh contiguous tensor on D, so out-of-memory leaves the inputs untouched and the task can
 * run again. For a source on device S:
 *   same memory (S == D, or both host)  one copy if the layout and dtype already fit, else D's
 *                                       cast kernel (packing and dtype in one pass)
 *   host -> device                      upload; a strided source is packed on the host first, and
 *                                       a dtype change runs on the device after the upload
 *   device -> host                      download; a cast on S first when the layout or dtype
 *                                       must change, through S's transfer worker
 *   device -> other device              a direct copy where the backend has one (the same GPU,
 *                                       or peers: ops->copy_from), else through host memory in
 *                                       chunks, the download of one chunk overlapping the upload
 *                                       of the one before; refused with AB_EPERM under the strict
 *                                       option
 */
#include "runtime/internal.h"

/* ---- the API -------------------------------------------------------------------------------- */
int ab__convert_check(ab_runtime *rt, ab_device dst, const ab_convert_options *o) {
  if (ab__forked(rt)) return AB_ESHUTDOWN; /* first: nothing of it may be locked here */
  if (o && o->size != sizeof(ab_convert_options)) return AB_EINVAL;
  if (o && o->cast != AB_CAST_SATURATE && o->cast != AB_CAST_STRETCH) return AB_EINVAL;
  if (o && o->dtype.bits != 0 && ab__dtype_size(o->dtype) == 0) return AB_EDTYPE;
  if (dst.kind < 0 || dst.kind >= AB_KIND_COUNT) return AB_ENODEV;
  if (dst.index != AB_ANY && ab__device_of(rt, dst) == NULL) return AB_ENODEV;
  if (dst.index == AB_ANY && rt->kind_count[dst.kind] == 0) return AB_ENODEV;
  if (o && o->place.mode != AB_SUBMIT_BLOCK && o->place.mode != AB_SUBMIT_TRY) return AB_EINVAL;
  if (o && o->place.oom && !ab__oom_policy_ok(o->place.oom)) return AB_EINVAL;
  return 0;
}

ab_future *ab__convert_task(ab_runtime *rt, int kind, int nin, ab_device dst, const ab_convert_options *o) {
  ab_convert_options def = AB_CONVERT_OPTIONS_INIT;
  if (o == NULL) o = &def;
  ab_place p = o->place;
  p.device = dst;
  p.policy = dst.index == AB_ANY ? (o->place.policy == AB_PLACE_EXPLICIT ? AB_PLACE_AUTO : o->place.policy)
                                 : AB_PLACE_EXPLICIT;
  ab_future *t = ab__task_new(rt, kind, nin, &p);
  if (t == NULL) return NULL;
  t->copt = *o;
  t->dst = dst;
  return t;
}

/* One source, a tensor or a future's result. */
static int convert_submit(ab_runtime *rt, ab_input in, ab_device dst, const ab_convert_options *o, ab_future **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (rt == NULL || (in.tensor == NULL && in.future == NULL)) return AB_EINVAL;
  int rc = ab__convert_check(rt, dst, o);
  if (rc != 0) return rc;
  ab_future *t = ab__convert_task(rt, AB__TASK_CONVERT, 1, dst, o);
  if (t == NULL) return AB_ENOMEM;
  if (in.tensor) t->in[0].tensor = ab_tensor_retain(in.tensor);
  else t->in[0].future = ab_future_retain(in.future);
  return ab__task_submit(t, out);
}

int ab_convert(ab_runtime *rt, ab_tensor *src, ab_device dst, const ab_convert_options *o, ab_future **out) {
  return convert_submit(rt, (ab_input){.tensor = src}, dst, o, out);
}

int ab_convert_after(ab_runtime *rt, ab_future *src, ab_device dst, const ab_convert_options *o,
                     ab_future **out) {
  return convert_submit(rt, (ab_input){.future = src}, dst, o, out);
}

/* ---- the planner ---------------------------------------------------------------------------- */
#define CHUNK ((size_t)8 << 20) /* device-to-device staging, two of them in flight */

static void count_moved(ab__device *d, size_t bytes) {
  atomic_fetch_add_explicit(&d->stats.bytes_moved, bytes, memory_order_relaxed); /* stat */
}

/* A CUDA pointer from elsewhere (torch, CuPy, through DLPack) is valid in every stream of the
 * process: any of this runtime's devices on its GPU can read it, `near` (the task's) first. */
static ab__device *cuda_by_physical(ab_runtime *rt, int gpu, ab__device *near, int *err) {
  if (near->id.kind == AB_CUDA && near->physical == gpu) return near;
  for (int i = 0; i < rt->kind_count[AB_CUDA]; i++) {
    ab__device *d = &rt->devices[rt->kind_first[AB_CUDA] + i];
    if (d->physical == gpu) return d;
  }
  *err = AB_ENODEV; /* a GPU this runtime does not use (or none at all) */
  return NULL;
}

/* The device whose memory holds t: host memory is any host worker's to read; device memory
 * must be this runtime's own (a cl_mem of another context cannot be used here), except CUDA
 * memory, which belongs to a GPU rather than to a runtime. */
ab__device *ab__source_device(ab_runtime *rt, const ab_tensor *t, ab__device *near, int *err) {
  ab_device home = ab_tensor_device(t);
  if (home.kind == AB_HOST) {
    if (rt->kind_count[AB_HOST] > 0) return ab__host_device(rt);
    *err = AB_ENODEV;
    return NULL;
  }
  while (t->owner == AB__OWN_VIEW) t = t->u.base;
  if (t->owner == AB__OWN_ARENA && t->dev->rt == rt) return t->dev;
  if (t->dl.device.device_type == kDLCUDA || t->dl.device.device_type == kDLCUDAManaged)
    return cuda_by_physical(rt, t->dl.device.device_id, near, err);
  *err = AB_ENOTSUP;
  return NULL;
}

/* A contiguous DLTensor describing a scratch buffer shaped like src. */
static DLTensor scratch_view(const ab_tensor *src, void *base, const ab__device *d, DLDataType dt) {
  DLTensor dl = src->dl;
  dl.data = base;
  dl.byte_offset = 0;
  dl.strides = NULL;
  dl.dtype = dt;
  dl.device = ab__dl_device(d);
  return dl;
}

static size_t bytes_as(const ab_tensor *src, DLDataType dt) {
  return src->nbytes / ab__dtype_size(src->dl.dtype) * ab__dtype_size(dt);
}

/* Scratch memory on d through worker w, from d's budget (a zero-byte request takes one byte,
 * so that every scratch block is a real allocation). */
static int scratch(ab__device *d, ab__worker *w, size_t bytes, void **p) {
  return ab__mem_alloc(d, w, bytes ? bytes : 1, p);
}

static void scratch_free(ab__device *d, void *p, size_t bytes) { ab__mem_free(d, p, bytes ? bytes : 1); }

/* Host staging memory comes from the host device's budget. */
static int host_scratch(ab_runtime *rt, size_t bytes, void **p) {
  return scratch(ab__host_device(rt), &ab__host_device(rt)->workers[0], bytes, p);
}

static void host_scratch_free(ab_runtime *rt, void *p, size_t bytes) { scratch_free(ab__host_device(rt), p, bytes); }

/* src packed into contiguous host memory by the host's own kernels, through its ops table like
 * any device's (host kernels keep no state: any host worker may run them, on any thread). */
static int host_pack(ab_runtime *rt, const ab_tensor *src, void *pack) {
  ab__device *h = ab__host_device(rt);
  return h->ops->cast(&h->workers[0], &src->dl, pack, 0, src->dl.dtype, NULL);
}

/* ---- the paths ------------------------------------------------------------------------------ */
static int local(ab__worker *w, const ab_tensor *src, void *dst, size_t off, DLDataType dt, const ab__cast_params *p) {
  if (ab__fits(src, dt))
    return w->dev->ops->copy(w, dst, off, src->dl.data, src->dl.byte_offset, src->nbytes);
  return w->dev->ops->cast(w, &src->dl, dst, off, dt, p);
}

static int host_to_device(ab__worker *w, const ab_tensor *src, void *dst, size_t off, DLDataType dt,
                          const ab__cast_params *p) {
  ab__device *d = w->dev;
  ab_runtime *rt = d->rt;
  const void *h = ab__host_ptr(src);
  void *pack = NULL;
  int rc = 0;
  if (!ab__contiguous(&src->dl)) { /* pack on the host, keeping the dtype */
    if ((rc = host_scratch(rt, src->nbytes, &pack)) != 0) return rc;
    rc = host_pack(rt, src, pack);
    h = pack;
  }
  if (rc == 0 && ab__same_dtype(src->dl.dtype, dt)) {
    rc = d->ops->upload(w, dst, off, h, src->nbytes);
  } else if (rc == 0) { /* the dtype change runs on the device, after the upload */
    void *tmp;
    if ((rc = scratch(d, w, src->nbytes, &tmp)) == 0) {
      DLTensor tv = scratch_view(src, tmp, d, src->dl.dtype);
      rc = d->ops->upload(w, tmp, 0, h, src->nbytes);
      if (rc == 0) rc = d->ops->cast(w, &tv, dst, off, dt, p);
      int f = d->ops->finish(w); /* before the scratch can be reused */
      if (rc == 0) rc = f;
      scratch_free(d, tmp, src->nbytes);
    }
  }
  if (pack) {
    int f = d->ops->finish(w); /* the upload reads pack */
    if (rc == 0) rc = f;
    host_scratch_free(rt, pack, src->nbytes);
  }
  return rc;
}

/* On S, through its transfer worker: src as a contiguous dt tensor into host memory. */
static int device_to_host(ab__device *s, const ab_tensor *src, void *host, DLDataType dt, const ab__cast_params *p) {
  ab__worker *x = &s->xfer;
  int rc;
  ab__lock(&s->xfer_lock, AB__RANK_XFER);
  if (ab__fits(src, dt)) {
    rc = s->ops->download(x, host, src->dl.data, src->dl.byte_offset, src->nbytes);
  } else {
    size_t bytes = bytes_as(src, dt);
    void *tmp;
    if ((rc = scratch(s, x, bytes, &tmp)) == 0) {
      rc = s->ops->cast(x, &src->dl, tmp, 0, dt, p);
      if (rc == 0) rc = s->ops->download(x, host, tmp, 0, bytes);
      if (rc != 0) s->ops->finish(x); /* the kernel may still write tmp: drain before reuse */
      scratch_free(s, tmp, bytes);
    }
  }
  ab__unlock(&s->xfer_lock, AB__RANK_XFER);
  return rc;
}

/* S and D are different devices: host staging in chunks, two buffers so that the download of
 * chunk k+1 (S's transfer queue) runs while the upload of chunk k (D's queue) is in flight. */
static int stream_between(ab__device *s, ab__worker *w, const void *src, size_t src_off, void *dst, size_t dst_off,
                          size_t bytes) {
  ab_runtime *rt = w->dev->rt;
  size_t chunk = bytes < CHUNK ? bytes : CHUNK;
  void *stage;
  int rc = host_scratch(rt, 2 * chunk, &stage);
  if (rc != 0) return rc;
  ab__lock(&s->xfer_lock, AB__RANK_XFER);
  for (size_t done = 0, k = 0; done < bytes && rc == 0; done += chunk, k++) {
    size_t n = bytes - done < chunk ? bytes - done : chunk;
    char *buf = (char *)stage + (k % 2) * chunk;
    if (k >= 2) rc = w->dev->ops->finish(w); /* the upload that last read buf is done */
    if (rc == 0) rc = s->ops->download(&s->xfer, buf, src, src_off + done, n);
    if (rc == 0) rc = w->dev->ops->upload(w, dst, dst_off + done, buf, n);
  }
  ab__unlock(&s->xfer_lock, AB__RANK_XFER);
  int f = w->dev->ops->finish(w);
  if (rc == 0) rc = f;
  host_scratch_free(rt, stage, 2 * chunk);
  return rc;
}

/* S's memory straight into D's, enqueued on D's worker w, when the backend can. */
static bool direct(ab__device *s, ab__device *d) {
  return s->ops == d->ops && d->ops->can_peer && d->ops->can_peer(d, s);
}

static int between(ab__device *s, ab__worker *w, const void *src, size_t src_off, void *dst, size_t dst_off,
                   size_t bytes) {
  if (direct(s, w->dev)) return w->dev->ops->copy_from(w, dst, dst_off, s, src, src_off, bytes);
  return stream_between(s, w, src, src_off, dst, dst_off, bytes);
}

static int device_to_device(ab__device *s, ab__worker *w, const ab_tensor *src, void *dst, size_t off, DLDataType dt,
                            const ab__cast_params *p) {
  ab__device *d = w->dev;
  const ab_tensor *from = src;
  void *packed = NULL;
  int rc = 0;
  if (!ab__contiguous(&src->dl)) { /* pack on S first: only contiguous bytes travel */
    ab__lock(&s->xfer_lock, AB__RANK_XFER);
    if ((rc = scratch(s, &s->xfer, src->nbytes, &packed)) == 0) {
      rc = s->ops->cast(&s->xfer, &src->dl, packed, 0, src->dl.dtype, NULL);
      int f = s->ops->finish(&s->xfer);
      if (rc == 0) rc = f;
    }
    ab__unlock(&s->xfer_lock, AB__RANK_XFER);
    if (rc != 0) goto out;
  }
  const void *sbase = packed ? packed : from->dl.data;
  size_t soff = packed ? 0 : from->dl.byte_offset;
  if (ab__same_dtype(src->dl.dtype, dt)) {
    rc = between(s, w, sbase, soff, dst, off, src->nbytes);
  } else { /* bring the bytes over, then cast on D */
    void *tmp;
    if ((rc = scratch(d, w, src->nbytes, &tmp)) == 0) {
      rc = between(s, w, sbase, soff, tmp, 0, src->nbytes);
      DLTensor tv = scratch_view(src, tmp, d, src->dl.dtype);
      if (rc == 0) rc = d->ops->cast(w, &tv, dst, off, dt, p);
      int f = d->ops->finish(w);
      if (rc == 0) rc = f;
      scratch_free(d, tmp, src->nbytes);
    }
  }
out:
  if (packed) {
    int f = d->ops->finish(w); /* a direct copy on w's stream may still read it */
    if (rc == 0) rc = f;
    scratch_free(s, packed, src->nbytes);
  }
  return rc;
}

int ab__put(ab_ctx *c, const ab_tensor *src, void *dst, size_t off, DLDataType dt, const ab__cast_params *p) {
  ab__worker *w = c->w;
  ab__device *d = w->dev;
  int rc = 0;
  ab__device *s = ab__source_device(d->rt, src, d, &rc);
  if (s == NULL) return rc;
  bool s_host = s->id.kind == AB_HOST, d_host = d->id.kind == AB_HOST;
  if ((s_host && d_host) || s == d) return local(w, src, dst, off, dt, p);
  if (c->task->copt.strict && !s_host && !d_host && !direct(s, d)) return AB_EPERM; /* would stage through the host */
  if (s_host) return host_to_device(w, src, dst, off, dt, p);
  if (d_host) return device_to_host(s, src, (char *)dst + off, dt, p);
  return device_to_device(s, w, src, dst, off, dt, p);
}

/* ---- the tasks ------------------------------------------------------------------------------ */
int ab__finish_output(ab_ctx *c, ab_tensor *out, int rc) {
  if (rc != 0) {
    c->w->dev->ops->finish(c->w);
    ab_tensor_release(out);
    return rc;
  }
  out->flags = AB_TENSOR_IS_COPIED;
  count_moved(c->w->dev, out->nbytes);
  c->output = out;
  return 0;
}

int ab__convert_run(ab_ctx *c) {
  ab_future *t = c->task;
  ab__device *d = c->w->dev;
  ab_tensor *src = t->in[0].tensor;
  DLDataType dt = ab__target_dtype(t, src);
  if (ab__fault_hit(d, ab__fits(src, dt) ? AB_FAULT_COPY : AB_FAULT_LAUNCH)) return AB_EFAULT;
  ab_tensor *out;
  int rc = ab__tensor_alloc_on(d, c->w, dt, src->dl.ndim, src->shape, &out);
  if (rc != 0) return rc;
  if (out->nbytes == 0) return ab__finish_output(c, out, 0); /* nothing to move; src's data may be NULL */
  ab__cast_params p = {.mode = t->copt.cast};
  /* a big host array onto a device that pipelines its maps: several threads fill the staging
   * (tests turn it on for the other backends with ab__map_window_test) */
  bool streamed = false;
  size_t pipe = d->ops->map_chunk ? d->ops->map_chunk : ab__map_window_test;
  if (d->id.kind != AB_HOST && d->ops->map_write && pipe && out->nbytes >= pipe && ab__plain_host(src, dt))
    rc = ab__fill_from_host(c, out, out->nbytes, dt, &streamed);
  if (rc == 0 && !streamed) rc = ab__put(c, src, out->dl.data, 0, dt, &p);
  return ab__finish_output(c, out, rc);
}
