/*
 * runtime/tensor.c: refcounted tensors, arena allocation and views.
 *
 * A tensor's DLTensor never changes after it is made, so any thread may read it without a lock.
 * Its strides are always filled in (in elements), whatever the producer gave.
 */
#include <string.h>

#include "runtime/internal.h"

size_t ab__dtype_size(DLDataType dt) {
  if (dt.lanes != 1 || dt.bits == 0 || dt.bits % 8 != 0) return 0;
  switch (dt.code) {
  case kDLInt:
  case kDLUInt:
    return dt.bits <= 64 && (dt.bits & (dt.bits - 1)) == 0 ? dt.bits / 8 : 0;
  case kDLFloat:
    return dt.bits == 16 || dt.bits == 32 || dt.bits == 64 ? dt.bits / 8 : 0;
  case kDLBfloat:
    return dt.bits == 16 ? 2 : 0;
  case kDLComplex:
    return dt.bits == 64 || dt.bits == 128 ? dt.bits / 8 : 0;
  case AB_DL_BOOL:
    return dt.bits == 8 ? 1 : 0;
  }
  return 0;
}

bool ab__contiguous(const DLTensor *t) {
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] == 0) return true; /* no element is out of place (and the product may not fit) */
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] == 1) continue; /* any stride is fine for a dimension of one */
    if (t->strides && t->strides[i] != expect) return false;
    expect *= t->shape[i];
  }
  return true;
}

int64_t ab__collapse(const DLTensor *t, int *nd, int64_t *shape, int64_t *bstride) {
  int64_t es = (int64_t)ab__dtype_size(t->dtype), numel = 1, compact = es;
  int n = 0;
  for (int i = 0; i < t->ndim; i++)
    if (t->shape[i] == 0) { /* empty: no element, and strides that need not fit in bytes */
      *nd = 1;
      shape[0] = 0;
      bstride[0] = es;
      return 0;
    }
  for (int i = t->ndim - 1; i >= 0; i--) { /* innermost first, then reverse */
    if (t->shape[i] == 1) continue; /* any stride: it is never multiplied out */
    int64_t st = t->strides ? t->strides[i] * es : compact; /* within the checked extent */
    compact *= t->shape[i];
    numel *= t->shape[i];
    if (n > 0 && st == bstride[n - 1] * shape[n - 1]) { /* contiguous with the inner dim: merge */
      shape[n - 1] *= t->shape[i];
      continue;
    }
    shape[n] = t->shape[i];
    bstride[n] = st;
    n++;
  }
  if (n == 0) { /* 0-d, or all ones: one element */
    shape[0] = 1;
    bstride[0] = es;
    n = 1;
  }
  for (int i = 0; i < n / 2; i++) { /* outermost first */
    int64_t a = shape[i], b = bstride[i];
    shape[i] = shape[n - 1 - i];
    bstride[i] = bstride[n - 1 - i];
    shape[n - 1 - i] = a;
    bstride[n - 1 - i] = b;
  }
  *nd = n;
  return numel;
}

ab_tensor *ab__tensor_new(ab_runtime *rt) {
  if (rt && ab__forked(rt)) rt = NULL; /* the pool may be growing in a thread of the parent's */
  ab_tensor *t = rt ? ab__pool_get(&rt->tensors) : malloc(sizeof *t);
  if (t == NULL) return NULL;
  memset(t, 0, sizeof *t);
  atomic_init(&t->refs, 1);
  atomic_init(&t->shared, false);
  t->rt = rt;
  if (rt) ab__runtime_ref(rt);
  return t;
}

static void tensor_free_struct(ab_tensor *t) {
  ab_runtime *rt = t->rt;
  if (rt == NULL) {
    free(t);
    return;
  }
  ab__pool_put(&rt->tensors, t);
  ab__runtime_unref(rt);
}

void ab__tensor_fill(ab_tensor *t, const DLTensor *dl, const int64_t *strides) {
  t->dl = *dl;
  for (int i = 0; i < dl->ndim; i++) {
    t->shape[i] = dl->shape[i];
    t->strides[i] = strides[i];
  }
  t->dl.shape = t->shape;
  t->dl.strides = t->strides;
  size_t n = ab__dtype_size(dl->dtype);
  for (int i = 0; i < dl->ndim; i++) n *= (size_t)dl->shape[i];
  t->nbytes = n;
}

/* Row-major strides for shape; false when one does not fit in 64 bits (a view's shape may be
 * anything; an allocation's size was checked before). */
static bool compact_strides(int ndim, const int64_t *shape, int64_t *strides) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    strides[i] = s;
    if (i > 0 && __builtin_mul_overflow(s, shape[i] > 0 ? shape[i] : 1, &s)) return false;
  }
  return true;
}

int ab__dtype_index(DLDataType dt) {
  if (dt.lanes != 1) return -1;
  int b = dt.bits;
  switch (dt.code) {
  case kDLUInt:
    return b == 8 ? 0 : b == 16 ? 1 : b == 32 ? 2 : b == 64 ? 3 : -1;
  case kDLInt:
    return b == 8 ? 4 : b == 16 ? 5 : b == 32 ? 6 : b == 64 ? 7 : -1;
  case kDLFloat:
    return b == 32 ? 8 : b == 64 ? 9 : -1;
  case AB_DL_BOOL:
    return b == 8 ? 10 : -1;
  }
  return -1;
}

DLDevice ab__dl_device(const ab__device *d) {
  static const DLDeviceType types[] = {kDLCPU, kDLOpenCL, kDLCUDA};
  DLDevice dev = {types[d->id.kind], d->id.kind == AB_HOST ? 0 : d->physical};
  return dev;
}

/* The bytes a contiguous dt tensor of this shape holds, rounded up to 64 (at least 64). */
static int alloc_size(DLDataType dt, int ndim, const int64_t *shape, size_t *alloc) {
  size_t es = ab__dtype_size(dt);
  if (es == 0) return AB_EDTYPE;
  if (ndim < 0 || ndim > AB_MAX_NDIM || (ndim > 0 && shape == NULL)) return AB_EINVAL;
  /* The strides of an empty tensor must fit too: its empty dimensions count as one. */
  size_t span = es;
  bool empty = false;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return AB_EINVAL;
    empty |= shape[i] == 0;
    size_t n = shape[i] > 0 ? (size_t)shape[i] : 1;
    if (span > SIZE_MAX / 2 / n) return AB_EOVERFLOW;
    span *= n;
  }
  size_t bytes = empty ? 0 : span;
  *alloc = bytes ? (bytes + 63) & ~(size_t)63 : 64;
  return 0;
}

/* t describes ptr as a contiguous tensor on dev (as DLPack names it) and owns it. */
static void own(ab_tensor *t, void *ptr, DLDevice dev, DLDataType dt, int ndim, const int64_t *shape) {
  int64_t strides[AB_MAX_NDIM];
  bool fits = compact_strides(ndim, shape, strides);
  AB__ASSERT(fits); /* alloc_size bounded the product */
  DLTensor dl = {.data = ptr, .device = dev, .ndim = ndim, .dtype = dt, .shape = (int64_t *)shape};
  ab__tensor_fill(t, &dl, strides);
}

int ab__tensor_alloc_on(ab__device *d, ab__worker *w, DLDataType dt, int ndim, const int64_t *shape,
                        ab_tensor **out) {
  *out = NULL;
  size_t alloc;
  int rc = alloc_size(dt, ndim, shape, &alloc);
  if (rc != 0) return rc;
  ab_tensor *t = ab__tensor_new(d->rt);
  if (t == NULL) return AB_ENOMEM;
  void *ptr;
  if ((rc = ab__mem_alloc(d, w, alloc, &ptr)) != 0) {
    tensor_free_struct(t);
    return rc;
  }
  own(t, ptr, ab__dl_device(d), dt, ndim, shape);
  t->owner = AB__OWN_ARENA;
  t->dev = d;
  t->alloc_bytes = alloc;
  t->home = d->id;
  *out = t;
  return 0;
}

/* The device whose backend makes pinned host memory: the first one that can (CUDA's). */
static ab__device *pinner(ab_runtime *rt) {
  for (int i = 0; i < rt->ndevices; i++)
    if (rt->devices[i].ops->pinned_alloc) return &rt->devices[i];
  return NULL;
}

static int pinned_on(ab__device *p, ab__device *host, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **out) {
  size_t alloc;
  int rc = alloc_size(dt, ndim, shape, &alloc);
  if (rc != 0) return rc;
  if (ab__fault_hit(host, AB_FAULT_ALLOC)) return AB_ENOMEM;
  if ((rc = ab__mem_reserve(host, alloc)) != 0) return rc;
  ab_tensor *t = ab__tensor_new(host->rt);
  void *ptr = NULL;
  rc = t ? p->ops->pinned_alloc(p, alloc, &ptr) : AB_ENOMEM;
  if (rc != 0) {
    if (t) tensor_free_struct(t);
    ab__mem_unreserve(host, alloc);
    return rc;
  }
  own(t, ptr, (DLDevice){kDLCUDAHost, 0}, dt, ndim, shape);
  t->owner = AB__OWN_PINNED;
  t->dev = host;
  t->alloc_bytes = alloc;
  t->home = host->id;
  t->u.pinner = p;
  *out = t;
  return 0;
}

int ab_tensor_alloc_pinned(ab_runtime *rt, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (rt == NULL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  ab__device *host = ab__device_of(rt, (ab_device){AB_HOST, 0});
  if (host == NULL) return AB_ENODEV;
  ab__device *p = pinner(rt);
  if (p == NULL) return ab__tensor_alloc_on(host, &host->workers[0], dt, ndim, shape, out); /* documented fallback */
  return pinned_on(p, host, dt, ndim, shape, out);
}

int ab_tensor_alloc(ab_runtime *rt, ab_device d, DLDataType dt, int ndim, const int64_t *shape, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (rt == NULL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  ab__device *dev = ab__device_of(rt, d);
  if (dev == NULL) return AB_ENODEV;
  return ab__tensor_alloc_on(dev, &dev->workers[0], dt, ndim, shape, out);
}

ab_tensor *ab_tensor_retain(ab_tensor *t) {
  if (t == NULL) return NULL;
  int32_t was = atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed); /* from a live ref */
  AB__ASSERT(was > 0);
  return t;
}

static void release_memory(ab_tensor *t) {
  switch (t->owner) {
  case AB__OWN_VERSIONED:
    if (t->u.ver && t->u.ver->deleter) t->u.ver->deleter(t->u.ver);
    break;
  case AB__OWN_LEGACY:
    if (t->u.legacy && t->u.legacy->deleter) t->u.legacy->deleter(t->u.legacy);
    break;
  case AB__OWN_WRAP:
    if (t->u.wrap.fn) t->u.wrap.fn(t->u.wrap.ctx);
    break;
  case AB__OWN_ARENA:
    if (ab__forked(t->dev->rt)) break; /* the parent's arenas and drivers: leaked (ab__forked) */
    if (atomic_load_explicit(&t->shared, memory_order_relaxed)) /* see the field */
      ab__mem_free_shared(t->dev, t->dl.data, t->alloc_bytes);
    else
      ab__mem_free(t->dev, t->dl.data, t->alloc_bytes);
    break;
  case AB__OWN_VIEW:
    ab_tensor_release(t->u.base);
    break;
  case AB__OWN_PINNED:
    if (ab__forked(t->dev->rt)) break;
    t->u.pinner->ops->pinned_free(t->u.pinner, t->dl.data);
    ab__mem_unreserve(t->dev, t->alloc_bytes);
    break;
  }
}

void ab_tensor_release(ab_tensor *t) {
  if (t == NULL) return;
  /* acq_rel: the last releaser sees every other owner's use before freeing */
  int32_t was = atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel);
  AB__ASSERT(was > 0);
  if (was != 1) return;
  release_memory(t);
  tensor_free_struct(t);
}

const DLTensor *ab_tensor_dl(const ab_tensor *t) { return t ? &t->dl : NULL; }
uint32_t ab_tensor_flags(const ab_tensor *t) { return t ? t->flags : 0; }
ab_device ab_tensor_device(const ab_tensor *t) { return t ? t->home : (ab_device){-1, -1}; }
size_t ab_tensor_nbytes(const ab_tensor *t) { return t ? t->nbytes : 0; }
bool ab_tensor_is_contiguous(const ab_tensor *t) { return t && ab__contiguous(&t->dl); }

/* Byte offsets of the lowest and highest byte a layout touches, relative to its start (empty:
 * hi < lo). With span, empty dimensions count as one long: where its elements would be. Every
 * dimension's arithmetic must fit in 64 bits, an empty layout's too (AB_EOVERFLOW). */
static int extent(int ndim, const int64_t *shape, const int64_t *strides, int64_t es, bool span, int64_t *lo,
                  int64_t *hi) {
  bool empty = false;
  *lo = 0;
  *hi = 0;
  for (int i = 0; i < ndim; i++) {
    empty |= shape[i] == 0;
    int64_t step;
    if (__builtin_mul_overflow(shape[i] > 0 ? shape[i] - 1 : 0, strides[i], &step) ||
        __builtin_mul_overflow(step, es, &step))
      return AB_EOVERFLOW;
    if (__builtin_add_overflow(step < 0 ? *lo : *hi, step, step < 0 ? lo : hi)) return AB_EOVERFLOW;
  }
  if (__builtin_add_overflow(*hi, es - 1, hi)) return AB_EOVERFLOW;
  if (empty && !span) { /* touches nothing */
    *lo = 0;
    *hi = -1;
  }
  return 0;
}

/* Whether a view of t whose first element is off bytes past t's lies inside t: every byte it
 * reaches ([vlo, vhi] from its first element) one of t's. An empty view reaches none: it may
 * start wherever an element of t would be (t's empty dimensions counted as one long: the rows
 * of an empty volume), or one past the last. Overflow anywhere means outside. */
static bool inside(const ab_tensor *t, int64_t es, int64_t off, int64_t vlo, int64_t vhi) {
  int64_t blo, bhi, lo, hi;
  bool empty = vhi < vlo;
  if (extent(t->dl.ndim, t->shape, t->strides, es, empty, &blo, &bhi) != 0) return false;
  if (empty) return off >= blo && (off <= bhi || off - bhi == 1);
  if (__builtin_add_overflow(off, vlo, &lo) || __builtin_add_overflow(off, vhi, &hi)) return false;
  return bhi >= blo && lo >= blo && hi <= bhi;
}

/* The view's first element lies `at` bytes from t's data pointer. DLPack's byte_offset is
 * unsigned: a negative one (a view into a tensor imported with negative strides, whose data
 * points at its last-addressed element) moves the pointer instead, which only memory the host
 * or CUDA addresses directly allows (a cl_mem is a handle). */
static int place_view(const ab_tensor *t, int64_t at, DLTensor *dl) {
  if (at >= 0) {
    dl->byte_offset = (uint64_t)at;
    return 0;
  }
  if (dl->device.device_type == kDLOpenCL) return AB_EINVAL;
  dl->data = (void *)((uintptr_t)t->dl.data - (uintptr_t)(-(uint64_t)at)); /* an element of t's */
  dl->byte_offset = 0;
  return 0;
}

int ab_tensor_view(ab_tensor *t, int ndim, const int64_t *shape, const int64_t *strides, int64_t offset_elems,
                   ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (t == NULL || ndim < 0 || ndim > AB_MAX_NDIM || (ndim > 0 && shape == NULL)) return AB_EINVAL;
  for (int i = 0; i < ndim; i++)
    if (shape[i] < 0) return AB_EINVAL;
  int64_t es = (int64_t)ab__dtype_size(t->dl.dtype);
  int64_t st[AB_MAX_NDIM];
  if (strides) memcpy(st, strides, sizeof(int64_t) * (size_t)ndim);
  else if (!compact_strides(ndim, shape, st)) return AB_EINVAL;
  /* Every byte of the view must be one of t's: anything else, overflow included, is EINVAL. */
  int64_t vlo, vhi, off, at;
  if (extent(ndim, shape, st, es, false, &vlo, &vhi) != 0 || __builtin_mul_overflow(offset_elems, es, &off) ||
      !inside(t, es, off, vlo, vhi) || __builtin_add_overflow((int64_t)t->dl.byte_offset, off, &at))
    return AB_EINVAL;
  DLTensor dl = t->dl;
  dl.ndim = ndim;
  dl.shape = (int64_t *)shape;
  if (place_view(t, at, &dl) != 0) return AB_EINVAL;
  ab_tensor *v = ab__tensor_new(t->rt);
  if (v == NULL) return AB_ENOMEM;
  ab__tensor_fill(v, &dl, st);
  v->flags = t->flags & AB_TENSOR_READ_ONLY;
  v->owner = AB__OWN_VIEW;
  v->home = t->home;
  v->u.base = ab_tensor_retain(t);
  *out = v;
  return 0;
}

int ab_tensor_index(ab_tensor *t, int64_t i, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (t == NULL || t->dl.ndim < 1) return AB_EINVAL;
  if (i < 0 || i >= t->dl.shape[0]) return AB_ESHAPE;
  return ab_tensor_view(t, t->dl.ndim - 1, t->shape + 1, t->strides + 1, i * t->strides[0], out);
}
