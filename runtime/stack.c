/*
 * runtime/stack.c: ab_stack (n slices into one new [n, ...] tensor) and ab_unstack (a volume
 * back into slices), and the stacking task's body, run by a worker of the destination device.
 *
 * The volume is one allocation on the destination, filled slice by slice, each the fastest way
 * its source allows: plain host slices by a crew of host workers (fill.c), slices already on
 * the destination by the backend's gather kernel (up to AB__GATHER_MAX per call), every other
 * slice by the conversion planner (convert.c), which picks its path. Out-of-memory leaves the
 * slices untouched, so the task can run again. ab_unstack makes one conversion per slice (a
 * view of the volume: zero-copy where nothing needs to change).
 */
#include <string.h>

#include "runtime/internal.h"

/* ---- the API -------------------------------------------------------------------------------- */
static int check_slices(ab_tensor *const *slices, size_t n) {
  if (slices == NULL || n == 0 || n > (size_t)INT32_MAX) return AB_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (slices[i] == NULL) return AB_EINVAL;
  const DLTensor *a = &slices[0]->dl;
  if (a->ndim + 1 > AB_MAX_NDIM) return AB_ENOTSUP;
  for (size_t i = 1; i < n; i++) {
    const DLTensor *b = &slices[i]->dl;
    if (!ab__same_dtype(a->dtype, b->dtype)) return AB_EDTYPE;
    if (a->ndim != b->ndim) return AB_ESHAPE;
    for (int k = 0; k < a->ndim; k++)
      if (a->shape[k] != b->shape[k]) return AB_ESHAPE;
  }
  return 0;
}

int ab_stack(ab_runtime *rt, ab_tensor *const *slices, size_t n, ab_device dst, const ab_convert_options *o,
             ab_future **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (rt == NULL) return AB_EINVAL;
  int rc = check_slices(slices, n);
  if (rc == 0) rc = ab__convert_check(rt, dst, o);
  if (rc != 0) return rc;
  ab_future *t = ab__convert_task(rt, AB__TASK_STACK, (int)n, dst, o);
  if (t == NULL) return AB_ENOMEM;
  for (size_t i = 0; i < n; i++) t->in[i].tensor = ab_tensor_retain(slices[i]);
  return ab__task_submit(t, out);
}

static void release_all(ab_future **fs, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    ab_future_release(fs[i]);
    fs[i] = NULL;
  }
}

int ab_unstack(ab_runtime *rt, ab_tensor *volume, ab_device dst, const ab_convert_options *o, ab_future **out) {
  if (volume == NULL || out == NULL) return AB_EINVAL; /* no length known: out is left alone */
  if (volume->dl.ndim < 1) return AB_ESHAPE;
  int64_t n = volume->dl.shape[0];
  for (int64_t i = 0; i < n; i++) out[i] = NULL; /* first: on any failure out is all NULL */
  if (rt == NULL) return AB_EINVAL;
  int rc = ab__convert_check(rt, dst, o);
  if (rc != 0) return rc;
  if (atomic_load(&rt->closing)) return AB_ESHUTDOWN;
  for (int64_t i = 0; i < n && rc == 0; i++) {
    ab_tensor *view;
    rc = ab_tensor_index(volume, i, &view);
    if (rc != 0) break;
    ab_convert_options def = AB_CONVERT_OPTIONS_INIT;
    const ab_convert_options *co = o ? o : &def;
    /* ab_convert returns the view itself when it already is the answer: zero-copy */
    rc = ab_convert(rt, view, dst, co, &out[i]);
    ab_tensor_release(view);
  }
  if (rc != 0) {
    for (int64_t i = 0; i < n; i++) /* queued copies are cancelled: nothing is left behind */
      if (out[i]) ab_future_cancel(out[i]);
    release_all(out, n);
  }
  return rc;
}

/* ---- the task ------------------------------------------------------------------------------- */
static bool is_float(DLDataType dt) { return dt.code == kDLFloat && (dt.bits == 32 || dt.bits == 64); }
static bool is_int(DLDataType dt) { return dt.code == kDLInt || dt.code == kDLUInt; }

/* Stretching a stack uses one range over every slice, so slices stay comparable: that of their
 * finite values (ops->minmax). Each slice's range is found where the slice lies. */
static int stack_range(ab_ctx *c, ab__cast_params *p, DLDataType dt) {
  ab_future *t = c->task;
  if (p->mode != AB_CAST_STRETCH || !is_float(t->in[0].tensor->dl.dtype) || !is_int(dt)) return 0;
  for (int i = 0; i < t->nin; i++) {
    const ab_tensor *sl = t->in[i].tensor;
    if (sl->nbytes == 0) continue; /* no range to find; its data may be NULL */
    int rc = 0;
    ab__device *s = ab__source_device(c->w->dev->rt, sl, c->w->dev, &rc);
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
  if (!p->have_range) p->mode = AB_CAST_SATURATE; /* no finite value: what one tensor gets */
  return 0;
}

/* A slice already on this device, in the right layout and dtype: the gather kernel moves it. */
static bool gatherable(ab_ctx *c, const ab_tensor *sl, DLDataType dt) {
  if (sl == NULL) return false;
  ab__device *d = c->w->dev;
  int err;
  return d->id.kind != AB_HOST && ab__fits(sl, dt) && ab__source_device(d->rt, sl, d, &err) == d;
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

/* A stack of at least two plain host slices goes through ab__fill_from_host; the others are
 * left to ab__put(). */
static int stack_host_slices(ab_ctx *c, ab_tensor *out, size_t slice, DLDataType dt, bool *done) {
  ab_future *t = c->task;
  int nplain = 0;
  for (int i = 0; i < t->nin; i++) nplain += ab__plain_host(t->in[i].tensor, dt);
  if (nplain < 2 || out->nbytes == 0) return 0;
  return ab__fill_from_host(c, out, slice, dt, done);
}

int ab__stack_run(ab_ctx *c) {
  ab_future *t = c->task;
  ab__device *d = c->w->dev;
  const ab_tensor *first = t->in[0].tensor;
  DLDataType dt = ab__target_dtype(t, first);
  if (ab__fault_hit(d, ab__fits(first, dt) ? AB_FAULT_COPY : AB_FAULT_LAUNCH)) return AB_EFAULT;
  int64_t shape[AB_MAX_NDIM];
  shape[0] = t->nin;
  memcpy(shape + 1, first->shape, sizeof(int64_t) * (size_t)first->dl.ndim);
  ab__cast_params p = {.mode = t->copt.cast};
  int rc = stack_range(c, &p, dt);
  ab_tensor *out = NULL;
  if (rc == 0) rc = ab__tensor_alloc_on(d, c->w, dt, first->dl.ndim + 1, shape, &out);
  if (rc != 0) return rc;
  size_t slice = out->nbytes / (size_t)t->nin;
  if (slice == 0) return ab__finish_output(c, out, 0); /* empty slices: their data may be NULL */
  bool mapped = false;
  if (rc == 0) rc = stack_host_slices(c, out, slice, dt, &mapped);
  for (int i = 0; i < t->nin && rc == 0;) {
    if (mapped && ab__plain_host(t->in[i].tensor, dt)) {
      i++;
    } else if (ab_ctx_cancelled(c)) {
      rc = AB_ECANCELED;
    } else if (gatherable(c, t->in[i].tensor, dt)) {
      int moved = gather_run(c, i, out, slice, dt);
      if (moved < 0) rc = moved;
      else i += moved;
    } else {
      rc = ab__put(c, t->in[i].tensor, out->dl.data, slice * (size_t)i, dt, &p);
      i++;
    }
  }
  return ab__finish_output(c, out, rc);
}
