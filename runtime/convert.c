/*
 * runtime/convert.c: the bodies of conversion and stacking tasks, run by a worker of the
 * destination device.
 *
 * The planner picks the cheapest path: the zero-copy case never gets here (task.c completes it
 * at submit); a contiguous source of the right dtype is one copy; anything else (strides, a
 * dtype change) is the device's cast kernel. The output is always a fresh contiguous tensor
 * from the worker's arena, so out-of-memory leaves the inputs untouched and the task can rerun.
 */
#include <string.h>

#include "runtime/internal.h"

static DLDataType target(const ab_future *t, const ab_tensor *src) {
  return t->copt.dtype.bits ? t->copt.dtype : src->dl.dtype;
}

static bool same_dtype(DLDataType a, DLDataType b) { return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes; }

static bool is_float(DLDataType dt) { return dt.code == kDLFloat && (dt.bits == 32 || dt.bits == 64); }
static bool is_int(DLDataType dt) { return dt.code == kDLInt || dt.code == kDLUInt; }

/* Which memory a device can read directly. Cross-kind paths arrive with the GPU backends. */
static int check_path(const ab_tensor *src, const ab__device *d, const ab_convert_options *o) {
  int from = ab_tensor_device(src).kind;
  if (o->strict && from != AB_HOST && d->id.kind != AB_HOST && from != d->id.kind) return AB_EPERM;
  if (from != d->id.kind || d->id.kind != AB_HOST) return AB_ENOTSUP;
  return 0;
}

/* src (on w's device) into dst + off (w's device), as dtype dt. */
static int move_one(ab_ctx *c, const ab_tensor *src, void *dst, size_t off, DLDataType dt, const ab__cast_params *p) {
  ab__worker *w = c->w;
  if (same_dtype(src->dl.dtype, dt) && ab__contiguous(&src->dl))
    return w->dev->ops->copy(w, dst, off, src->dl.data, src->dl.byte_offset, src->nbytes);
  return w->dev->ops->cast(w, &src->dl, dst, off, dt, p);
}

static bool needs_kernel(const ab_tensor *src, DLDataType dt) {
  return !same_dtype(src->dl.dtype, dt) || !ab__contiguous(&src->dl);
}

static void count_moved(ab__device *d, size_t bytes) {
  atomic_fetch_add_explicit(&d->stats.bytes_moved, bytes, memory_order_relaxed); /* stat */
}

int ab__convert_run(ab_ctx *c) {
  ab_future *t = c->task;
  ab__device *d = c->w->dev;
  ab_tensor *src = t->in[0].tensor;
  int rc = check_path(src, d, &t->copt);
  if (rc != 0) return rc;
  DLDataType dt = target(t, src);
  if (ab__fault_hit(d, needs_kernel(src, dt) ? AB_FAULT_LAUNCH : AB_FAULT_COPY)) return AB_EFAULT;
  ab_tensor *out;
  rc = ab__tensor_alloc_on(d, c->w, dt, src->dl.ndim, src->shape, &out);
  if (rc != 0) return rc;
  ab__cast_params p = {.mode = t->copt.cast};
  rc = move_one(c, src, out->dl.data, 0, dt, &p);
  if (rc != 0) {
    ab_tensor_release(out);
    return rc;
  }
  out->flags = AB_TENSOR_IS_COPIED;
  count_moved(d, out->nbytes);
  c->output = out;
  return 0;
}

/* Stretching a stack uses one range over every slice, so slices stay comparable. */
static int stack_range(ab_ctx *c, ab__cast_params *p, DLDataType dt) {
  ab_future *t = c->task;
  ab__worker *w = c->w;
  if (p->mode != AB_CAST_STRETCH || !is_float(t->in[0].tensor->dl.dtype) || !is_int(dt)) return 0;
  for (int i = 0; i < t->nin; i++) {
    double lo, hi;
    bool found;
    int rc = w->dev->ops->minmax(w, &t->in[i].tensor->dl, &lo, &hi, &found);
    if (rc != 0) return rc;
    if (!found) continue;
    if (!p->have_range || lo < p->lo) p->lo = lo;
    if (!p->have_range || hi > p->hi) p->hi = hi;
    p->have_range = true;
  }
  if (!p->have_range) { /* all NaN: saturate gives zeros, as stretch would */
    p->mode = AB_CAST_SATURATE;
  }
  return 0;
}

int ab__stack_run(ab_ctx *c) {
  ab_future *t = c->task;
  ab__device *d = c->w->dev;
  const ab_tensor *first = t->in[0].tensor;
  for (int i = 0; i < t->nin; i++) {
    int rc = check_path(t->in[i].tensor, d, &t->copt);
    if (rc != 0) return rc;
  }
  DLDataType dt = target(t, first);
  if (ab__fault_hit(d, needs_kernel(first, dt) ? AB_FAULT_LAUNCH : AB_FAULT_COPY)) return AB_EFAULT;
  int64_t shape[AB_MAX_NDIM];
  shape[0] = t->nin;
  memcpy(shape + 1, first->shape, sizeof(int64_t) * (size_t)first->dl.ndim);
  ab__cast_params p = {.mode = t->copt.cast};
  int rc = stack_range(c, &p, dt);
  ab_tensor *out = NULL;
  if (rc == 0) rc = ab__tensor_alloc_on(d, c->w, dt, first->dl.ndim + 1, shape, &out);
  if (rc != 0) return rc;
  size_t slice = out->nbytes / (size_t)t->nin;
  for (int i = 0; i < t->nin && rc == 0; i++) {
    if (ab_ctx_cancelled(c)) rc = AB_ECANCELED;
    else rc = move_one(c, t->in[i].tensor, out->dl.data, slice * (size_t)i, dt, &p);
  }
  if (rc != 0) {
    ab_tensor_release(out);
    return rc;
  }
  out->flags = AB_TENSOR_IS_COPIED;
  count_moved(d, out->nbytes);
  c->output = out;
  return 0;
}
