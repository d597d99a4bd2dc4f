/*
 * runtime/convert.c: the bodies of conversion and stacking tasks, run by a worker of the
 * destination device D, and the planner that picks their path.
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
#include <sched.h>
#include <string.h>

#include "runtime/internal.h"

#define CHUNK ((size_t)8 << 20) /* device-to-device staging, two of them in flight */

static bool is_float(DLDataType dt) { return dt.code == kDLFloat && (dt.bits == 32 || dt.bits == 64); }
static bool is_int(DLDataType dt) { return dt.code == kDLInt || dt.code == kDLUInt; }

static void count_moved(ab__device *d, size_t bytes) {
  atomic_fetch_add_explicit(&d->stats.bytes_moved, bytes, memory_order_relaxed); /* stat */
}

static ab__device *host_of(ab_runtime *rt) { return &rt->devices[rt->kind_first[AB_HOST]]; }

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
static ab__device *source_device(ab_runtime *rt, const ab_tensor *t, ab__device *near, int *err) {
  ab_device home = ab_tensor_device(t);
  if (home.kind == AB_HOST) {
    if (rt->kind_count[AB_HOST] > 0) return host_of(rt);
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

static const void *host_ptr(const ab_tensor *t) { return (const char *)t->dl.data + t->dl.byte_offset; }

/* src's bytes already are the answer: the right dtype, laid out contiguously. */
static bool fits(const ab_tensor *src, DLDataType dt) {
  return ab__same_dtype(src->dl.dtype, dt) && ab__contiguous(&src->dl);
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
  return scratch(host_of(rt), &host_of(rt)->workers[0], bytes, p);
}

static void host_scratch_free(ab_runtime *rt, void *p, size_t bytes) { scratch_free(host_of(rt), p, bytes); }

/* src packed into contiguous host memory by the host's own kernels, through its ops table like
 * any device's (host kernels keep no state: any host worker may run them, on any thread). */
static int host_pack(ab_runtime *rt, const ab_tensor *src, void *pack) {
  ab__device *h = host_of(rt);
  return h->ops->cast(&h->workers[0], &src->dl, pack, 0, src->dl.dtype, NULL);
}

/* ---- the paths ------------------------------------------------------------------------------ */
static int local(ab__worker *w, const ab_tensor *src, void *dst, size_t off, DLDataType dt, const ab__cast_params *p) {
  if (fits(src, dt))
    return w->dev->ops->copy(w, dst, off, src->dl.data, src->dl.byte_offset, src->nbytes);
  return w->dev->ops->cast(w, &src->dl, dst, off, dt, p);
}

static int host_to_device(ab__worker *w, const ab_tensor *src, void *dst, size_t off, DLDataType dt,
                          const ab__cast_params *p) {
  ab__device *d = w->dev;
  ab_runtime *rt = d->rt;
  const void *h = host_ptr(src);
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
  if (fits(src, dt)) {
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

/* src, wherever it is, into (dst, off) on the worker's device as a contiguous dt array. */
static int put(ab_ctx *c, const ab_tensor *src, void *dst, size_t off, DLDataType dt, const ab__cast_params *p) {
  ab__worker *w = c->w;
  ab__device *d = w->dev;
  int rc = 0;
  ab__device *s = source_device(d->rt, src, d, &rc);
  if (s == NULL) return rc;
  bool s_host = s->id.kind == AB_HOST, d_host = d->id.kind == AB_HOST;
  if ((s_host && d_host) || s == d) return local(w, src, dst, off, dt, p);
  if (c->task->copt.strict && !s_host && !d_host && !direct(s, d)) return AB_EPERM; /* would stage through the host */
  if (s_host) return host_to_device(w, src, dst, off, dt, p);
  if (d_host) return device_to_host(s, src, (char *)dst + off, dt, p);
  return device_to_device(s, w, src, dst, off, dt, p);
}


/* ---- the tasks ------------------------------------------------------------------------------ */
static bool plain_host(const ab_tensor *sl, DLDataType dt);
static int stream_in(ab_ctx *c, ab_tensor *out, size_t slice, DLDataType dt, bool *done);

/* The end of a conversion or stack: on failure nothing may still write into out, so the stream
 * is drained before out goes; on success out becomes the task's result. */
static int finish_output(ab_ctx *c, ab_tensor *out, int rc) {
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
  if (ab__fault_hit(d, fits(src, dt) ? AB_FAULT_COPY : AB_FAULT_LAUNCH)) return AB_EFAULT;
  ab_tensor *out;
  int rc = ab__tensor_alloc_on(d, c->w, dt, src->dl.ndim, src->shape, &out);
  if (rc != 0) return rc;
  if (out->nbytes == 0) return finish_output(c, out, 0); /* nothing to move; src's data may be NULL */
  ab__cast_params p = {.mode = t->copt.cast};
  /* a big host array onto a device that pipelines its maps: several threads fill the staging
   * (tests turn it on for the other backends with ab__map_window_test) */
  bool streamed = false;
  size_t pipe = d->ops->map_chunk ? d->ops->map_chunk : ab__map_window_test;
  if (d->id.kind != AB_HOST && d->ops->map_write && pipe && out->nbytes >= pipe && plain_host(src, dt))
    rc = stream_in(c, out, out->nbytes, dt, &streamed);
  if (rc == 0 && !streamed) rc = put(c, src, out->dl.data, 0, dt, &p);
  return finish_output(c, out, rc);
}

/* Stretching a stack uses one range over every slice, so slices stay comparable. Each slice's
 * range is found where the slice lies. */
static int stack_range(ab_ctx *c, ab__cast_params *p, DLDataType dt) {
  ab_future *t = c->task;
  if (p->mode != AB_CAST_STRETCH || !is_float(t->in[0].tensor->dl.dtype) || !is_int(dt)) return 0;
  for (int i = 0; i < t->nin; i++) {
    const ab_tensor *sl = t->in[i].tensor;
    if (sl->nbytes == 0) continue; /* no range to find; its data may be NULL */
    int rc = 0;
    ab__device *s = source_device(c->w->dev->rt, sl, c->w->dev, &rc);
    if (s == NULL) return rc;
    double lo, hi;
    bool found;
    /* our own worker, any host worker (host kernels keep no state), or S's transfer worker */
    bool foreign = s != c->w->dev && s->id.kind != AB_HOST;
    ab__worker *w = s == c->w->dev ? c->w : foreign ? &s->xfer : &s->workers[0];
    if (foreign) ab__lock(&s->xfer_lock, AB__RANK_XFER);
    rc = s->ops->minmax(w, &sl->dl, &lo, &hi, &found);
    if (foreign) ab__unlock(&s->xfer_lock, AB__RANK_XFER);
    if (rc != 0) return rc;
    if (!found) continue;
    if (!p->have_range || lo < p->lo) p->lo = lo;
    if (!p->have_range || hi > p->hi) p->hi = hi;
    p->have_range = true;
  }
  if (!p->have_range) p->mode = AB_CAST_SATURATE; /* all NaN: zeros either way */
  return 0;
}

/* A slice already on this device, in the right layout and dtype: the gather kernel moves it. */
static bool gatherable(ab_ctx *c, const ab_tensor *sl, DLDataType dt) {
  if (sl == NULL) return false;
  ab__device *d = c->w->dev;
  int err;
  return d->id.kind != AB_HOST && fits(sl, dt) && source_device(d->rt, sl, d, &err) == d;
}

/* Gathers the run of gatherable slices from i, up to AB__GATHER_MAX; returns how many. */
static int gather_run(ab_ctx *c, int i, ab_tensor *out, size_t slice, DLDataType dt) {
  ab_future *t = c->task;
  void *bases[AB__GATHER_MAX];
  size_t offs[AB__GATHER_MAX];
  int n = 0;
  for (; n < AB__GATHER_MAX && i + n < t->nin && gatherable(c, t->in[i + n].tensor, dt); n++) {
    bases[n] = t->in[i + n].tensor->dl.data;
    offs[n] = t->in[i + n].tensor->dl.byte_offset;
  }
  int rc = c->w->dev->ops->gather(c->w, out->dl.data, slice * (size_t)i, slice, n, bases, offs);
  return rc < 0 ? rc : n;
}

/* ---- host slices straight into device memory ------------------------------------------------ */
/*
 * Design notes
 *   - The volume's bytes are filled window by window: a window is host memory standing for
 *     volume bytes [lo, lo + len): the volume itself on the host, ops->map_write's memory on a
 *     device. Where the backend pipelines (ops->map_chunk), window k+1 fills while window k
 *     travels to the device; otherwise the whole volume is one window.
 *   - A window is copied by a crew: this thread and up to CREW_MAX - 1 host workers, which
 *     claim PART-byte pieces of it. One memcpy stream does not saturate memory (on the 2-core
 *     development machine, 14.8 GB/s against 23.5 for two threads), let alone a GPU's DMA.
 *     Helpers are submitted with AB_SUBMIT_TRY; one that has not started by the end is
 *     cancelled, so a busy host pool never holds a stack up (and this thread never waits for a
 *     helper to start: no deadlock when it is a host worker itself).
 *   - claim packs the window's generation (high 16 bits) with the next piece's offset, so a
 *     helper late from window k can never take a piece of window k+1 for one of window k: its
 *     CAS fails once the generation moved. A window's fields are written before its claim word
 *     is published (release) and read after a successful claim (acquire, from the same release
 *     sequence); the owner moves on only when the window's bytes are all counted done (acquire,
 *     pairing with each piece's release).
 */
#define PART ((size_t)256 << 10)
#define CREW_MAX 8
#define GEN_SHIFT 48
#define OFF_MASK (((uint64_t)1 << GEN_SHIFT) - 1)

size_t ab__map_window_test;

/* A host slice that needs no packing or cast: its bytes go straight to their offset. */
static bool plain_host(const ab_tensor *sl, DLDataType dt) {
  return ab_tensor_device(sl).kind == AB_HOST && fits(sl, dt);
}

typedef struct {
  ab_future *task;                /* its inputs are the slices */
  size_t slice;                   /* bytes per slice */
  DLDataType dt;
  char *window;                   /* host memory for volume bytes [lo, lo + len) */
  size_t lo;
  _Atomic size_t len;             /* read before a claim, so atomic; relaxed (design notes) */
  _Atomic uint64_t claim;         /* generation << GEN_SHIFT | the next piece's offset */
  _Atomic size_t done;            /* bytes of the window copied */
  _Atomic int over;               /* no more windows: helpers leave */
} crew;

/* Volume bytes [a, b) from the plain host slices they belong to into the window. */
static void copy_range(const crew *cr, size_t a, size_t b) {
  for (size_t i = a / cr->slice; i * cr->slice < b; i++) {
    const ab_tensor *sl = cr->task->in[i].tensor;
    size_t s0 = i * cr->slice, from = a > s0 ? a : s0, to = b < s0 + cr->slice ? b : s0 + cr->slice;
    if (plain_host(sl, cr->dt))
      ab__copy_stream(cr->window + (from - cr->lo), (const char *)host_ptr(sl) + (from - s0), to - from);
  }
}

/* Copies pieces of window `gen` until none is left or the window has moved on. */
static void crew_work(crew *cr, uint64_t gen) {
  uint64_t v = atomic_load_explicit(&cr->claim, memory_order_acquire);
  for (;;) {
    size_t off = v & OFF_MASK, len = atomic_load_explicit(&cr->len, memory_order_relaxed);
    if (v >> GEN_SHIFT != gen || off >= len) return;
    /* acquire: the window's fields, published with its claim word */
    if (!atomic_compare_exchange_weak_explicit(&cr->claim, &v, v + PART, memory_order_acquire, memory_order_acquire))
      continue;
    size_t end = len - off < PART ? len : off + PART;
    copy_range(cr, cr->lo + off, cr->lo + end);
    atomic_fetch_add_explicit(&cr->done, end - off, memory_order_release); /* pairs with the owner's wait */
    v = atomic_load_explicit(&cr->claim, memory_order_acquire);
  }
}

static int crew_task(ab_ctx *c, void *arg) {
  (void)c;
  crew *cr = arg;
  uint64_t seen = 0; /* generations start at 1 */
  for (unsigned spins = 0;;) {
    uint64_t gen = atomic_load_explicit(&cr->claim, memory_order_acquire) >> GEN_SHIFT;
    if (gen != seen) {
      crew_work(cr, gen);
      seen = gen;
      spins = 0;
    } else if (atomic_load_explicit(&cr->over, memory_order_acquire)) {
      return 0;
    } else if (++spins < 64) { /* the next window comes within microseconds, unless a DMA holds it */
      ab__cpu_relax();
    } else {
      sched_yield();
    }
  }
}

/* Up to n helpers; returns how many were submitted. */
static int crew_start(ab_runtime *rt, crew *cr, ab_future **f, int n) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = crew_task;
  d.arg = cr;
  d.name = "stack copy"; /* in traces */
  d.place.mode = AB_SUBMIT_TRY;
  int k = 0;
  while (k < n && ab_submit(rt, &d, &f[k]) == 0) k++;
  return k;
}

/* Helpers that never started are cancelled; the others are told to leave and waited for. */
static void crew_stop(crew *cr, ab_future **f, int n) {
  atomic_store_explicit(&cr->over, 1, memory_order_release); /* after the last window's fields */
  for (int k = 0; k < n; k++) {
    if (ab_future_cancel(f[k]) != 0) ab_future_wait(f[k], -1);
    ab_future_release(f[k]);
  }
}

/* Publishes window [lo, lo + len) at `host` as generation gen, copies it with the crew, and
 * returns once every byte is in. */
static void crew_window(crew *cr, uint64_t gen, char *host, size_t lo, size_t len) {
  cr->window = host;
  cr->lo = lo;
  atomic_store_explicit(&cr->len, len, memory_order_relaxed);
  atomic_store_explicit(&cr->done, 0, memory_order_relaxed);
  atomic_store_explicit(&cr->claim, gen << GEN_SHIFT, memory_order_release); /* the fields above */
  crew_work(cr, gen);
  /* the helpers' last pieces: a few microseconds, unless a helper lost its core (then yield) */
  for (unsigned spins = 0; atomic_load_explicit(&cr->done, memory_order_acquire) < len; spins++)
    if (spins < 256) ab__cpu_relax();
    else sched_yield();
}

static size_t window_bytes(const ab__device *d, size_t total) {
  size_t win = d->id.kind != AB_HOST && d->ops->map_chunk ? d->ops->map_chunk : total;
  return ab__map_window_test && ab__map_window_test < win ? ab__map_window_test : win;
}

/* Fills the plain host slices of c's task into out (slices of `slice` bytes): straight into
 * its memory on the host, through mapped windows on a device. *done false: the device cannot
 * map (put() does it all). */
static int stream_in(ab_ctx *c, ab_tensor *out, size_t slice, DLDataType dt, bool *done) {
  ab__worker *w = c->w;
  ab__device *d = w->dev;
  ab_runtime *rt = d->rt;
  bool host = d->id.kind == AB_HOST;
  if (!host && d->ops->map_write == NULL) return 0;
  if (host && ab__fault_hit(d, AB_FAULT_COPY)) return AB_EFAULT;
  size_t total = out->nbytes, win = window_bytes(d, total);
  crew cr = {.task = c->task, .slice = slice, .dt = dt};
  ab_future *helpers[CREW_MAX - 1];
  /* the host's other workers, as many as a window has pieces for, at most CREW_MAX - 1 */
  size_t pieces = (win + PART - 1) / PART, want = rt->kind_count[AB_HOST] ? (size_t)host_of(rt)->nworkers : 0;
  if (host && want > 0) want--; /* this thread is one of them */
  if (want > pieces - 1) want = pieces - 1;
  if (want > CREW_MAX - 1) want = CREW_MAX - 1;
  int nh = 0, rc = 0;
  uint64_t gen = 1;
  for (size_t lo = 0; lo < total && rc == 0; lo += win, gen++) {
    size_t len = total - lo < win ? total - lo : win;
    void *h = (char *)out->dl.data + lo;
    if (!host && (rc = d->ops->map_write(w, out->dl.data, lo, len, &h)) != 0) break;
    if (gen == 1) nh = crew_start(rt, &cr, helpers, (int)want);
    crew_window(&cr, gen, h, lo, len);
    if (!host) rc = d->ops->unmap(w, out->dl.data, h);
    if (rc == 0 && ab_ctx_cancelled(c)) rc = AB_ECANCELED;
  }
  crew_stop(&cr, helpers, nh);
  if (rc == AB_ENOTSUP && gen == 1) return 0; /* no staging memory for a map: uploads instead */
  *done = rc == 0;
  return rc;
}

/* A stack of at least two plain host slices goes through stream_in; the others are left to
 * put(). */
static int stack_host_slices(ab_ctx *c, ab_tensor *out, size_t slice, DLDataType dt, bool *done) {
  ab_future *t = c->task;
  int nplain = 0;
  for (int i = 0; i < t->nin; i++) nplain += plain_host(t->in[i].tensor, dt);
  if (nplain < 2 || out->nbytes == 0) return 0;
  return stream_in(c, out, slice, dt, done);
}

int ab__stack_run(ab_ctx *c) {
  ab_future *t = c->task;
  ab__device *d = c->w->dev;
  const ab_tensor *first = t->in[0].tensor;
  DLDataType dt = ab__target_dtype(t, first);
  if (ab__fault_hit(d, fits(first, dt) ? AB_FAULT_COPY : AB_FAULT_LAUNCH)) return AB_EFAULT;
  int64_t shape[AB_MAX_NDIM];
  shape[0] = t->nin;
  memcpy(shape + 1, first->shape, sizeof(int64_t) * (size_t)first->dl.ndim);
  ab__cast_params p = {.mode = t->copt.cast};
  int rc = stack_range(c, &p, dt);
  ab_tensor *out = NULL;
  if (rc == 0) rc = ab__tensor_alloc_on(d, c->w, dt, first->dl.ndim + 1, shape, &out);
  if (rc != 0) return rc;
  size_t slice = out->nbytes / (size_t)t->nin;
  if (slice == 0) return finish_output(c, out, 0); /* empty slices: their data may be NULL */
  bool mapped = false;
  if (rc == 0) rc = stack_host_slices(c, out, slice, dt, &mapped);
  for (int i = 0; i < t->nin && rc == 0;) {
    if (mapped && plain_host(t->in[i].tensor, dt)) {
      i++;
    } else if (ab_ctx_cancelled(c)) {
      rc = AB_ECANCELED;
    } else if (gatherable(c, t->in[i].tensor, dt)) {
      int moved = gather_run(c, i, out, slice, dt);
      if (moved < 0) rc = moved;
      else i += moved;
    } else {
      rc = put(c, t->in[i].tensor, out->dl.data, slice * (size_t)i, dt, &p);
      i++;
    }
  }
  return finish_output(c, out, rc);
}
