/*
 * fuzz_dlpack.c: libFuzzer target for DLPack import (versioned and legacy).
 *
 * The input describes a managed tensor: ndim (may be negative or too big), shape, strides (or
 * NULL), dtype, device, byte_offset, flags and a data buffer (real, sized from the input, or
 * NULL). The import must accept or reject it without touching memory it was not given; on
 * success the tensor's metadata must match, nbytes must be consistent, export and re-import
 * must work, and the producer's deleter must run exactly once after the last release. On
 * failure the deleter must not run and the caller keeps ownership.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arraybridge.h"

typedef struct {
  const uint8_t *p;
  size_t n;
} reader;

static uint8_t take_u8(reader *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}

static uint64_t take_u64(reader *r) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)take_u8(r) << (8 * i);
  return v;
}

/* Mostly small values (realistic), sometimes raw 64-bit ones (hostile). */
static int64_t take_dim(reader *r) {
  uint8_t sel = take_u8(r);
  switch (sel >> 6) {
  case 0: return sel & 7;                       /* 0..7 */
  case 1: return (int64_t)(sel & 63) - 16;       /* -16..47 */
  case 2: return (int64_t)((uint64_t)1 << (sel & 63)); /* powers of two, incl. 2^63 (negative) */
  default: return (int64_t)take_u64(r);
  }
}

typedef struct {
  int deleted;
  void *buf;
} owner;

static void del_v(DLManagedTensorVersioned *m) { ((owner *)m->manager_ctx)->deleted++; }
static void del_l(DLManagedTensor *m) { ((owner *)m->manager_ctx)->deleted++; }

static void check(bool ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "fuzz_dlpack: %s\n", what);
    abort();
  }
}

/* Expected nbytes (numel * element size) with overflow detection; -1 on overflow. */
static int64_t expect_nbytes(const DLTensor *dl) {
  __int128 n = 1;
  for (int i = 0; i < dl->ndim; i++)
    if (dl->shape[i] < 0) return -1;
  for (int i = 0; i < dl->ndim; i++) {
    n *= dl->shape[i];
    if (n > INT64_MAX) return -1;
  }
  n *= ((int64_t)dl->dtype.bits * dl->dtype.lanes + 7) / 8;
  return n > INT64_MAX ? -1 : (int64_t)n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  uint8_t mode = take_u8(&r);
  bool legacy = mode & 1, with_strides = mode & 2, null_data = (mode & 12) == 12,
       null_shape = (mode & 0x70) == 0x70;
  int32_t ndim = (int32_t)(int8_t)take_u8(&r) % 24; /* -23..23 */
  int64_t shape[24], strides[24];
  int nd = ndim < 0 ? 0 : ndim;
  for (int i = 0; i < nd; i++) shape[i] = take_dim(&r);
  for (int i = 0; i < nd; i++) strides[i] = take_dim(&r);

  DLTensor dl;
  memset(&dl, 0, sizeof dl);
  dl.ndim = ndim;
  dl.shape = null_shape ? NULL : shape;
  dl.strides = with_strides ? strides : NULL;
  dl.dtype.code = take_u8(&r) % 8;
  uint8_t bsel = take_u8(&r);
  static const uint8_t bits[] = {8, 16, 32, 64, 1, 4, 12, 24, 0, 128};
  dl.dtype.bits = bsel < 200 ? bits[bsel % 10] : bsel;
  uint8_t lsel = take_u8(&r);
  dl.dtype.lanes = lsel < 220 ? 1 : (uint16_t)(lsel - 220);
  uint8_t dsel = take_u8(&r);
  dl.device.device_type = (DLDeviceType)(dsel < 200 ? kDLCPU : dsel - 200);
  dl.device.device_id = (int32_t)(int8_t)take_u8(&r) % 4;
  uint8_t osel = take_u8(&r);
  dl.byte_offset = osel < 128 ? (uint64_t)(osel & 15) * 4 : take_u64(&r);
  uint64_t flags = take_u8(&r) & 7; /* READ_ONLY, IS_COPIED and one unknown bit */
  uint8_t vmaj = take_u8(&r);
  uint32_t major = vmaj < 240 ? 1 : vmaj - 240;

  /* a real buffer sized from the input: up to 4 KiB */
  size_t bufsize = ((size_t)take_u8(&r) << 4) | (take_u8(&r) & 15);
  owner own = {0, NULL};
  if (!null_data) {
    own.buf = malloc(bufsize ? bufsize : 1);
    memset(own.buf, 0xa5, bufsize ? bufsize : 1);
  }
  dl.data = own.buf;

  DLManagedTensorVersioned mv;
  DLManagedTensor ml;
  memset(&mv, 0, sizeof mv);
  memset(&ml, 0, sizeof ml);
  mv.version.major = major;
  mv.version.minor = 0;
  mv.manager_ctx = &own;
  mv.deleter = del_v;
  mv.flags = flags;
  mv.dl_tensor = dl;
  ml.manager_ctx = &own;
  ml.deleter = del_l;
  ml.dl_tensor = dl;

  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  int rc = legacy ? ab_tensor_import_legacy(&ml, &t) : ab_tensor_import(&mv, &t);
  if (rc != 0) {
    check(rc < 0, "import returned a positive code");
    check(t == NULL, "failed import left *out set");
    check(own.deleted == 0, "failed import called the deleter");
    free(own.buf);
    return 0;
  }
  check(t != NULL, "import succeeded without a tensor");
  check(own.deleted == 0, "import called the deleter");

  /* a successful import describes a valid tensor */
  check(ndim >= 0 && ndim <= AB_MAX_NDIM, "accepted an invalid ndim");
  const DLTensor *got = ab_tensor_dl(t);
  check(got->ndim == ndim, "ndim changed");
  for (int i = 0; i < ndim; i++) {
    check(got->shape[i] == shape[i], "shape changed");
    check(shape[i] >= 0, "accepted a negative extent");
  }
  check(got->dtype.code == dl.dtype.code && got->dtype.bits == dl.dtype.bits &&
            got->dtype.lanes == dl.dtype.lanes,
        "dtype changed");
  check(got->dtype.bits != 0 && got->dtype.lanes != 0, "accepted a zero-sized dtype");
  int64_t want = expect_nbytes(&dl);
  check(want >= 0, "accepted a shape whose byte size overflows");
  if (dl.dtype.bits % 8 == 0) /* sub-byte types may pack: no opinion on their size */
    check(ab_tensor_nbytes(t) == (size_t)want, "nbytes inconsistent with shape and dtype");
  if (with_strides && want > 0) {
    /* the addressed extent, in bytes, must not overflow either */
    __int128 lo = 0, hi = 0;
    for (int i = 0; i < ndim; i++) {
      __int128 span = (__int128)(shape[i] - 1) * strides[i];
      if (span < 0) lo += span; else hi += span;
    }
    __int128 es = ((int64_t)dl.dtype.bits * dl.dtype.lanes + 7) / 8;
    /* every element's byte offset from the first must be representable */
    check(hi * es <= INT64_MAX && lo * es >= INT64_MIN, "accepted strides whose extent overflows");
  }
  check(want == 0 || dl.data != NULL, "accepted NULL data with a nonzero size");
  /* the first element, where it is, must be data + byte_offset */
  check((uintptr_t)got->data + got->byte_offset == (uintptr_t)dl.data + dl.byte_offset,
        "data address changed");
  if (!legacy) {
    check(!(flags & DLPACK_FLAG_BITMASK_READ_ONLY) == !(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY),
          "READ_ONLY not honoured");
    check(!(flags & DLPACK_FLAG_BITMASK_IS_COPIED) == !(ab_tensor_flags(t) & AB_TENSOR_IS_COPIED),
          "IS_COPIED not honoured");
  }
  (void)ab_tensor_is_contiguous(t);
  (void)ab_tensor_device(t);

  /* export, versioned and legacy, and import them again */
  DLManagedTensorVersioned *ev = NULL;
  DLManagedTensor *el = NULL;
  check(ab_tensor_export(t, &ev) == 0 && ev, "export failed");
  bool ro = ab_tensor_flags(t) & AB_TENSOR_READ_ONLY;
  int lr = ab_tensor_export_legacy(t, &el);
  if (ro) /* legacy DLPack cannot say read-only: refused */
    check(lr == AB_EPERM && el == NULL, "legacy export of a read-only tensor not refused");
  else
    check(lr == 0 && el, "legacy export failed");
  check(ev->dl_tensor.ndim == ndim, "export changed ndim");
  ab_tensor *t2 = NULL, *t3 = NULL;
  check(ab_tensor_import(ev, &t2) == 0, "re-import of an export failed");
  if (el) check(ab_tensor_import_legacy(el, &t3) == 0, "legacy re-import of an export failed");
  check(ab_tensor_nbytes(t2) == (size_t)want && (!t3 || ab_tensor_nbytes(t3) == (size_t)want),
        "re-import changed nbytes");
  check(!(ab_tensor_flags(t2) & AB_TENSOR_READ_ONLY) == !(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY),
        "export lost READ_ONLY");

  /* a view of the first row, when there is one */
  if (ndim > 0 && shape[0] > 0) {
    ab_tensor *row = NULL;
    if (ab_tensor_index(t, 0, &row) == 0) ab_tensor_release(row);
  }

  ab_tensor_release(t);
  check(own.deleted == 0, "deleter ran while exports were alive");
  ab_tensor_release(t2);
  if (t3) check(own.deleted == 0, "deleter ran while a legacy export was alive");
  ab_tensor_release(t3);
  check(own.deleted == 1, "deleter did not run exactly once");
  free(own.buf);
  return 0;
}
