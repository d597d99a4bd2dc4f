/*
 * runtime/dlpack.c: DLPack in and out, legacy (0.x) and versioned (1.x).
 *
 * Nothing is touched before every field is validated: ndim, dtype, device, shapes, strides and
 * byte offset, with overflow-checked arithmetic, so a malformed producer gets AB_EINVAL,
 * AB_EOVERFLOW, AB_EDTYPE, AB_ENODEV or AB_ENOTSUP and never a crash.
 */
#include <string.h>

#include "runtime/internal.h"

int ab__kind_of_dl(DLDeviceType t, int *kind) {
  switch (t) {
  case kDLCPU:
  case kDLCUDAHost: /* pinned host memory: host-accessible */
    *kind = AB_HOST;
    return 0;
  case kDLCUDA:
  case kDLCUDAManaged:
    *kind = AB_CUDA;
    return 0;
  case kDLOpenCL:
    *kind = AB_OPENCL;
    return 0;
  default:
    return AB_ENODEV;
  }
}

static int check_shape(const DLTensor *t, size_t es, int64_t *strides_out, size_t *nbytes_out) {
  uint64_t numel = 1;
  for (int i = 0; i < t->ndim; i++) {
    if (t->shape[i] < 0) return AB_EINVAL;
    if (__builtin_mul_overflow(numel, (uint64_t)t->shape[i], &numel)) return AB_EOVERFLOW;
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(numel, (uint64_t)es, &bytes) || bytes > (uint64_t)INT64_MAX) return AB_EOVERFLOW;
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) { /* compact strides, for NULL and for the check */
    strides_out[i] = t->strides ? t->strides[i] : s;
    if (t->shape[i] > 1 && __builtin_mul_overflow(s, t->shape[i], &s)) return AB_EOVERFLOW;
  }
  *nbytes_out = (size_t)bytes;
  if (numel == 0) return 0;
  /* The byte span the strides reach must be representable, and not wrap the address space. */
  int64_t lo = 0, hi = 0;
  for (int i = 0; i < t->ndim; i++) {
    int64_t step;
    if (__builtin_mul_overflow(t->shape[i] - 1, strides_out[i], &step) ||
        __builtin_mul_overflow(step, (int64_t)es, &step))
      return AB_EOVERFLOW;
    if (__builtin_add_overflow(step < 0 ? lo : hi, step, step < 0 ? &lo : &hi)) return AB_EOVERFLOW;
  }
  if (t->data == NULL) return AB_EINVAL;
  uint64_t base;
  if (__builtin_add_overflow((uint64_t)(uintptr_t)t->data, t->byte_offset, &base)) return AB_EOVERFLOW;
  if (lo < 0 && base < (uint64_t)0 - (uint64_t)lo) return AB_EOVERFLOW; /* -lo overflows at INT64_MIN */
  uint64_t top;
  if (__builtin_add_overflow(base, (uint64_t)hi + es, &top)) return AB_EOVERFLOW;
  return 0;
}

int ab__dl_check(const DLTensor *t, int64_t *strides_out, size_t *nbytes_out) {
  if (t == NULL) return AB_EINVAL;
  if (t->ndim < 0) return AB_EINVAL;
  if (t->ndim > AB_MAX_NDIM) return AB_ENOTSUP;
  if (t->ndim > 0 && t->shape == NULL) return AB_EINVAL;
  if (t->dtype.lanes != 1) return t->dtype.lanes == 0 ? AB_EDTYPE : AB_ENOTSUP;
  size_t es = ab__dtype_size(t->dtype);
  if (es == 0) return AB_EDTYPE;
  int kind;
  if (ab__kind_of_dl(t->device.device_type, &kind) != 0 || t->device.device_id < 0) return AB_ENODEV;
  if (t->byte_offset > (uint64_t)INT64_MAX) return AB_EOVERFLOW;
  return check_shape(t, es, strides_out, nbytes_out);
}

static int import_common(const DLTensor *dl, uint32_t flags, ab_tensor **out) {
  *out = NULL;
  int64_t strides[AB_MAX_NDIM];
  size_t nbytes;
  int rc = ab__dl_check(dl, strides, &nbytes);
  if (rc != 0) return rc;
  ab_tensor *t = ab__tensor_new(NULL);
  if (t == NULL) return AB_ENOMEM;
  ab__tensor_fill(t, dl, strides);
  t->flags = flags;
  int kind = AB_HOST;
  ab__kind_of_dl(dl->device.device_type, &kind);
  t->home = (ab_device){kind, kind == AB_HOST ? 0 : dl->device.device_id};
  *out = t;
  return 0;
}

static uint32_t flags_from_dl(uint64_t f) {
  uint32_t r = 0;
  if (f & DLPACK_FLAG_BITMASK_READ_ONLY) r |= AB_TENSOR_READ_ONLY;
  if (f & DLPACK_FLAG_BITMASK_IS_COPIED) r |= AB_TENSOR_IS_COPIED;
  return r;
}

int ab_tensor_import(DLManagedTensorVersioned *m, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (m == NULL) return AB_EINVAL;
  if (m->version.major != DLPACK_MAJOR_VERSION) return AB_ENOTSUP; /* a future ABI we cannot read */
  int rc = import_common(&m->dl_tensor, flags_from_dl(m->flags), out);
  if (rc != 0) return rc;
  (*out)->owner = AB__OWN_VERSIONED;
  (*out)->u.ver = m;
  return 0;
}

int ab_tensor_import_legacy(DLManagedTensor *m, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (m == NULL) return AB_EINVAL;
  int rc = import_common(&m->dl_tensor, 0, out);
  if (rc != 0) return rc;
  (*out)->owner = AB__OWN_LEGACY;
  (*out)->u.legacy = m;
  return 0;
}

int ab_tensor_wrap(const DLTensor *dl, uint32_t flags, void (*release)(void *), void *ctx, ab_tensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (flags & ~(uint32_t)(AB_TENSOR_READ_ONLY | AB_TENSOR_IS_COPIED)) return AB_EINVAL;
  int rc = import_common(dl, flags, out);
  if (rc != 0) return rc;
  (*out)->owner = AB__OWN_WRAP;
  (*out)->u.wrap.fn = release;
  (*out)->u.wrap.ctx = ctx;
  return 0;
}

/* ---- export: the managed struct keeps a reference on the tensor ------------------------------ */
/* The consumer may use the memory on streams of its own, still running when it lets go: the
 * arena tensor under t is marked, and its memory freed after the consumer's work. */
static void mark_shared(ab_tensor *t) {
  while (t->owner == AB__OWN_VIEW) t = t->u.base;
  if (t->owner == AB__OWN_ARENA) atomic_store_explicit(&t->shared, true, memory_order_relaxed); /* see the field */
}

typedef struct {
  DLManagedTensorVersioned m;
  ab_tensor *t;
} export_v;

typedef struct {
  DLManagedTensor m;
  ab_tensor *t;
} export_l;

static void delete_v(DLManagedTensorVersioned *m) {
  export_v *e = (export_v *)m;
  ab_tensor_release(e->t);
  free(e);
}

static void delete_l(DLManagedTensor *m) {
  export_l *e = (export_l *)m;
  ab_tensor_release(e->t);
  free(e);
}

int ab_tensor_export(ab_tensor *t, DLManagedTensorVersioned **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (t == NULL) return AB_EINVAL;
  export_v *e = malloc(sizeof *e);
  if (e == NULL) return AB_ENOMEM;
  e->m.version = (DLPackVersion){DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION};
  e->m.manager_ctx = t;
  e->m.deleter = delete_v;
  e->m.flags = 0;
  if (t->flags & AB_TENSOR_READ_ONLY) e->m.flags |= DLPACK_FLAG_BITMASK_READ_ONLY;
  if (t->flags & AB_TENSOR_IS_COPIED) e->m.flags |= DLPACK_FLAG_BITMASK_IS_COPIED;
  e->m.dl_tensor = t->dl;
  e->t = ab_tensor_retain(t);
  mark_shared(t);
  *out = &e->m;
  return 0;
}

int ab_tensor_export_legacy(ab_tensor *t, DLManagedTensor **out) {
  if (out == NULL) return AB_EINVAL;
  *out = NULL;
  if (t == NULL) return AB_EINVAL;
  /* Legacy DLPack cannot say read-only: refuse rather than hand out writable memory. */
  if (t->flags & AB_TENSOR_READ_ONLY) return AB_EPERM;
  export_l *e = malloc(sizeof *e);
  if (e == NULL) return AB_ENOMEM;
  e->m.manager_ctx = t;
  e->m.deleter = delete_l;
  e->m.dl_tensor = t->dl;
  e->t = ab_tensor_retain(t);
  mark_shared(t);
  *out = &e->m;
  return 0;
}
