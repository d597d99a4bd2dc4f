/* test_tensor.c: alloc, views, index, wrap, import/export (legacy and versioned), validation. */
#include "harness.h"

#include <stdlib.h>

/* ---- a producer's managed tensor, with a deleter that counts -------------------------------- */
typedef struct {
  DLManagedTensorVersioned m;
  DLManagedTensor lm;
  int64_t shape[AB_MAX_NDIM + 4];
  int64_t strides[AB_MAX_NDIM + 4];
  float buf[64];
  int deleted;
} producer;

static void deleter_v(DLManagedTensorVersioned *self) {
  producer *p = self->manager_ctx;
  p->deleted++;
}
static void deleter_l(DLManagedTensor *self) {
  producer *p = self->manager_ctx;
  p->deleted++;
}

/* A 2x3 float32 contiguous host tensor; version 1.0. */
static void producer_init(producer *p) {
  memset(p, 0, sizeof *p);
  for (int i = 0; i < 64; i++) p->buf[i] = (float)i;
  p->shape[0] = 2;
  p->shape[1] = 3;
  DLTensor dl;
  memset(&dl, 0, sizeof dl);
  dl.data = p->buf;
  dl.device.device_type = kDLCPU;
  dl.device.device_id = 0;
  dl.ndim = 2;
  dl.dtype = TH_F32;
  dl.shape = p->shape;
  dl.strides = NULL;
  dl.byte_offset = 0;
  p->m.version.major = DLPACK_MAJOR_VERSION;
  p->m.version.minor = DLPACK_MINOR_VERSION;
  p->m.manager_ctx = p;
  p->m.deleter = deleter_v;
  p->m.flags = 0;
  p->m.dl_tensor = dl;
  p->lm.dl_tensor = dl;
  p->lm.manager_ctx = p;
  p->lm.deleter = deleter_l;
}

/* ---- alloc -------------------------------------------------------------------------------- */
static int test_alloc_basic(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {3, 4};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, shape, &t));
  CHECK_NOT_NULL(t);
  const DLTensor *dl = ab_tensor_dl(t);
  CHECK_NOT_NULL(dl);
  CHECK_NOT_NULL(dl->data);
  CHECK_EQ_INT(dl->ndim, 2);
  CHECK_EQ_INT(dl->shape[0], 3);
  CHECK_EQ_INT(dl->shape[1], 4);
  if (dl->strides) {
    CHECK_EQ_INT(dl->strides[0], 4);
    CHECK_EQ_INT(dl->strides[1], 1);
  }
  CHECK_EQ_INT(dl->dtype.code, kDLFloat);
  CHECK_EQ_INT(dl->dtype.bits, 32);
  CHECK_EQ_INT(dl->dtype.lanes, 1);
  CHECK_EQ_INT(dl->device.device_type, kDLCPU);
  CHECK_EQ_U64(ab_tensor_nbytes(t), 48);
  CHECK(ab_tensor_is_contiguous(t));
  CHECK_EQ_INT(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY, 0);
  ab_device d = ab_tensor_device(t);
  CHECK_EQ_INT(d.kind, AB_HOST);
  CHECK_EQ_INT(d.index, 0);
  /* the whole extent is writable (ASan checks) */
  float *p = (float *)((char *)dl->data + dl->byte_offset);
  for (int i = 0; i < 12; i++) p[i] = (float)i;
  /* retain/release pairs */
  CHECK_EQ_PTR(ab_tensor_retain(t), t);
  ab_tensor_release(t);
  CHECK_EQ_INT(p[11], 11);
  ab_tensor_release(t);
  ab_tensor_release(NULL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_alloc_0d_and_empty(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F64, 0, NULL, &t));
  CHECK_EQ_INT(ab_tensor_dl(t)->ndim, 0);
  CHECK_EQ_U64(ab_tensor_nbytes(t), 8);
  CHECK(ab_tensor_is_contiguous(t));
  *(double *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset) = 1.5;
  ab_tensor_release(t);
  int64_t shape[3] = {2, 0, 5};
  t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U16, 3, shape, &t));
  CHECK_EQ_U64(ab_tensor_nbytes(t), 0);
  CHECK_EQ_INT(ab_tensor_dl(t)->shape[1], 0);
  ab_tensor_release(t);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_alloc_rejects(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[AB_MAX_NDIM + 1];
  for (int i = 0; i <= AB_MAX_NDIM; i++) shape[i] = 1;
  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), TH_F32, -1, shape, &t), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(t);
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), TH_F32, AB_MAX_NDIM + 1, shape, &t), AB_EINVAL,
               AB_ESHAPE);
  CHECK_NULL(t);
  int64_t neg[2] = {2, -3};
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, neg, &t), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(t);
  int64_t huge[2] = {INT64_C(1) << 40, INT64_C(1) << 40};
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, huge, &t), AB_EOVERFLOW);
  CHECK_NULL(t);
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), th_dt(99, 32), 1, shape, &t), AB_EDTYPE);
  CHECK_NULL(t);
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(7), TH_F32, 1, shape, &t), AB_ENODEV);
  CHECK_NULL(t);
  t = (ab_tensor *)(uintptr_t)1;
  ab_device cuda = {AB_CUDA, 0};
  CHECK_ERR_IN(ab_tensor_alloc(rt, cuda, TH_F32, 1, shape, &t), AB_ENODEV);
  CHECK_NULL(t);
  CHECK_ERR_IN(ab_tensor_alloc(NULL, th_host(0), TH_F32, 1, shape, &t), AB_EINVAL);
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, shape, NULL), AB_EINVAL);
  CHECK_ERR_IN(ab_tensor_alloc(rt, th_host(0), TH_F32, 1, NULL, &t), AB_EINVAL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- views and index ---------------------------------------------------------------------- */
static int test_view_and_index(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {4, 5};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_I32, 2, shape, &t));
  const DLTensor *dl = ab_tensor_dl(t);
  int32_t *base = (int32_t *)((char *)dl->data + dl->byte_offset);
  for (int i = 0; i < 20; i++) base[i] = i;

  /* transpose: shape {5,4}, strides {1,5} */
  int64_t vs[2] = {5, 4}, vst[2] = {1, 5};
  ab_tensor *v = NULL;
  CHECK_OK(ab_tensor_view(t, 2, vs, vst, 0, &v));
  CHECK(!ab_tensor_is_contiguous(v));
  CHECK_EQ_U64(ab_tensor_nbytes(v), 80);
  for (int64_t i = 0; i < 5; i++)
    for (int64_t j = 0; j < 4; j++) {
      int64_t idx[2] = {i, j};
      CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(v), idx), j * 5 + i);
    }
  /* shares memory */
  base[7] = 700;
  int64_t i27[2] = {2, 1};
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(v), i27), 700);
  ab_device vd = ab_tensor_device(v);
  CHECK_EQ_INT(vd.kind, AB_HOST);
  CHECK_EQ_INT(vd.index, 0);

  /* a 2x2 window at offset 6 */
  int64_t ws[2] = {2, 2}, wst[2] = {5, 1};
  ab_tensor *w = NULL;
  CHECK_OK(ab_tensor_view(t, 2, ws, wst, 6, &w));
  int64_t i11[2] = {1, 1};
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(w), i11), 12);

  /* reversed first row: negative stride */
  int64_t rs[1] = {5}, rst[1] = {-1};
  ab_tensor *r = NULL;
  CHECK_OK(ab_tensor_view(t, 1, rs, rst, 4, &r));
  for (int64_t i = 0; i < 5; i++) CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(r), &i), 4 - i);

  /* NULL strides: contiguous view */
  int64_t fs[1] = {20};
  ab_tensor *flat = NULL;
  CHECK_OK(ab_tensor_view(t, 1, fs, NULL, 0, &flat));
  CHECK(ab_tensor_is_contiguous(flat));
  int64_t i19 = 19;
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(flat), &i19), 19);

  /* outside the extent */
  ab_tensor *bad = (ab_tensor *)(uintptr_t)1;
  int64_t big[1] = {21};
  CHECK_ERR_IN(ab_tensor_view(t, 1, big, NULL, 0, &bad), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(bad);
  bad = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_view(t, 1, fs, NULL, 1, &bad), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(bad);
  bad = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_view(t, 1, rs, rst, 3, &bad), AB_EINVAL, AB_ESHAPE); /* reaches -1 */
  CHECK_NULL(bad);
  bad = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_view(t, 1, fs, NULL, -1, &bad), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(bad);
  int64_t negs[1] = {-2};
  CHECK_ERR_IN(ab_tensor_view(t, 1, negs, NULL, 0, &bad), AB_EINVAL, AB_ESHAPE);
  int64_t ovs[1] = {2}, ovst[1] = {INT64_MAX / 2};
  CHECK_ERR_IN(ab_tensor_view(t, 1, ovs, ovst, 0, &bad), AB_EINVAL, AB_ESHAPE, AB_EOVERFLOW);
  CHECK_ERR_IN(ab_tensor_view(t, AB_MAX_NDIM + 1, fs, NULL, 0, &bad), AB_EINVAL, AB_ESHAPE);

  /* index */
  ab_tensor *row = NULL;
  CHECK_OK(ab_tensor_index(t, 3, &row));
  CHECK_EQ_INT(ab_tensor_dl(row)->ndim, 1);
  CHECK_EQ_INT(ab_tensor_dl(row)->shape[0], 5);
  CHECK(ab_tensor_is_contiguous(row));
  int64_t k = 2;
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(row), &k), 17);
  bad = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_index(t, 4, &bad), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(bad);
  CHECK_ERR_IN(ab_tensor_index(t, -1, &bad), AB_EINVAL, AB_ESHAPE);
  /* index of a view: row 2 of the transpose is column 2 of t (t[1][2] was set to 700) */
  ab_tensor *col = NULL;
  CHECK_OK(ab_tensor_index(v, 2, &col));
  for (int64_t j = 0; j < 4; j++) CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(col), &j), j == 1 ? 700 : j * 5 + 2);
  /* index of a 1-d gives a 0-d */
  ab_tensor *scalar = NULL;
  CHECK_OK(ab_tensor_index(row, 4, &scalar));
  CHECK_EQ_INT(ab_tensor_dl(scalar)->ndim, 0);
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(scalar), NULL), 19);
  CHECK_ERR_IN(ab_tensor_index(scalar, 0, &bad), AB_EINVAL, AB_ESHAPE);

  /* views keep the base alive: drop the base first, then read through the views (ASan) */
  ab_tensor_release(t);
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(w), i11), 12);
  ab_tensor_release(w);
  ab_tensor_release(v);
  ab_tensor_release(r);
  ab_tensor_release(flat);
  ab_tensor_release(row);
  ab_tensor_release(col);
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(scalar), NULL), 19);
  ab_tensor_release(scalar);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Views of views compose offsets and strides, negative ones included. */
static int test_nested_views(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t n = 24;
  ab_tensor *flat = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_I32, 1, &n, &flat));
  int32_t *p = (int32_t *)((char *)ab_tensor_dl(flat)->data + ab_tensor_dl(flat)->byte_offset);
  for (int i = 0; i < 24; i++) p[i] = i;
  int64_t s46[2] = {4, 6};
  ab_tensor *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  CHECK_OK(ab_tensor_view(flat, 2, s46, NULL, 0, &a));       /* a[i][j] = 6i + j */
  int64_t rst[2] = {-6, 1};
  CHECK_OK(ab_tensor_view(a, 2, s46, rst, 18, &b));           /* b[i][j] = a[3-i][j] */
  CHECK_OK(ab_tensor_index(b, 1, &c));                        /* c[j] = a[2][j] = 12 + j */
  int64_t three = 3, m1 = -2;
  CHECK_OK(ab_tensor_view(c, 1, &three, &m1, 5, &d));         /* d[k] = c[5 - 2k] */
  for (int64_t j = 0; j < 6; j++) CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(c), &j), 12 + j);
  for (int64_t k = 0; k < 3; k++) CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(d), &k), 17 - 2 * k);
  int64_t i31[2] = {3, 1};
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(b), i31), 1);
  ab_tensor_release(flat);
  ab_tensor_release(a);
  ab_tensor_release(b);
  ab_tensor_release(c);
  int64_t k2 = 2;
  CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(d), &k2), 13); /* still alive through d */
  ab_tensor_release(d);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Every view whose bytes do not lie inside its base is refused with AB_EINVAL, whatever the
 * arithmetic would overflow to (an offset near INT64_MAX on a 64-byte tensor was accepted, and
 * converting the view then read far outside it). Views that do fit, near the edges, work. */
static int test_view_bounds_hostile(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t n = 64;
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U8, 1, &n, &t));
  uint8_t *p = ab_tensor_dl(t)->data;
  for (int i = 0; i < 64; i++) p[i] = (uint8_t)i;
  int64_t i32n = 16;
  ab_tensor *t32 = NULL; /* 4-byte elements: offset * 4 overflows sooner */
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_I32, 1, &i32n, &t32));
  static const struct {
    int ndim;
    int64_t shape[2], strides[2], offset;
  } bad[] = {
      {1, {1}, {1}, INT64_MAX},
      {1, {2}, {1}, INT64_MAX},
      {1, {1}, {1}, INT64_MAX - 1},
      {1, {64}, {1}, INT64_MAX - 62},
      {1, {1}, {1}, INT64_MIN},
      {1, {2}, {-1}, INT64_MIN + 1},
      {1, {1}, {1}, 64},
      {1, {1}, {1}, -1},
      {1, {2}, {INT64_MAX}, 0},
      {1, {2}, {INT64_MIN}, 63},
      {1, {3}, {INT64_MAX / 2 + 1}, 0},
      {2, {2, 2}, {INT64_MAX, 1}, 0},
      {2, {2, 2}, {-INT64_MAX, -INT64_MAX}, INT64_MAX},
      {2, {INT64_MAX, 2}, {0, 1}, 63},
      {1, {65}, {1}, 0},
      {1, {33}, {2}, 0},
      {1, {2}, {64}, 0},
  };
  for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
    ab_tensor *v = (ab_tensor *)(uintptr_t)1;
    int rc = ab_tensor_view(t, bad[k].ndim, bad[k].shape, bad[k].strides, bad[k].offset, &v);
    CHECK_MSG(rc == AB_EINVAL, "case %zu: %d%s", k, rc, th_errstr(rc));
    CHECK_NULL(v);
    v = (ab_tensor *)(uintptr_t)1;
    rc = ab_tensor_view(t32, bad[k].ndim, bad[k].shape, bad[k].strides, bad[k].offset, &v);
    CHECK_MSG(rc == AB_EINVAL, "case %zu (i32): %d%s", k, rc, th_errstr(rc));
    CHECK_NULL(v);
  }
  /* element offsets that overflow only once scaled by the element size */
  ab_tensor *v = (ab_tensor *)(uintptr_t)1;
  int64_t one = 1;
  CHECK_EQ_INT(ab_tensor_view(t32, 1, &one, NULL, INT64_MAX / 4 + 1, &v), AB_EINVAL);
  CHECK_NULL(v);
  CHECK_EQ_INT(ab_tensor_view(t32, 1, &one, NULL, INT64_MAX / 2, &v), AB_EINVAL);
  /* the last byte; a reversed full view; a stride-0 broadcast; empty views at either end */
  struct {
    int ndim;
    int64_t shape[2], strides[2], offset, first;
  } good[] = {{1, {1}, {1}, 63, 63}, {1, {64}, {-1}, 63, 63}, {2, {4, 8}, {0, 8}, 7, 7},
              {1, {0}, {1}, 64, -1}, {1, {0}, {1}, 0, -1},   {2, {2, 0}, {1, 1}, 63, -1}};
  for (size_t k = 0; k < sizeof good / sizeof good[0]; k++) {
    CHECK_OK(ab_tensor_view(t, good[k].ndim, good[k].shape, good[k].strides, good[k].offset, &v));
    if (good[k].first >= 0) {
      int64_t zero[2] = {0, 0};
      CHECK_EQ_INT(*(uint8_t *)th_elem(ab_tensor_dl(v), zero), good[k].first);
    }
    ab_future *f = NULL;
    CHECK_OK(ab_convert(rt, v, th_host(0), NULL, &f));
    CHECK_OK(ab_future_wait(f, -1));
    CHECK_OK(ab_future_status(f));
    ab_future_release(f);
    ab_tensor_release(v);
  }
  /* empty views may start one past the end, not further */
  int64_t zero = 0;
  CHECK_EQ_INT(ab_tensor_view(t, 1, &zero, NULL, 65, &v), AB_EINVAL);
  CHECK_EQ_INT(ab_tensor_view(t, 1, &zero, NULL, INT64_MAX, &v), AB_EINVAL);
  CHECK_EQ_INT(ab_tensor_view(t, 1, &zero, NULL, -1, &v), AB_EINVAL);
  ab_tensor_release(t32);
  ab_tensor_release(t);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* A tensor imported with negative strides, its data pointing at its last-addressed row (as
 * numpy exports a[::-1]): its rows are views below that pointer, which DLPack's unsigned
 * byte_offset cannot say; the view moves its data pointer instead, and reads the right bytes. */
static void nothing(void *ctx) { (void)ctx; }
static int test_view_below_data_pointer(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int32_t buf[12];
  for (int i = 0; i < 12; i++) buf[i] = i;
  int64_t shape[2] = {3, 4}, strides[2] = {-4, 1};
  DLTensor dl = {.data = buf + 8, .device = {kDLCPU, 0}, .ndim = 2, .dtype = TH_I32, .shape = shape, .strides = strides};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_wrap(&dl, 0, nothing, NULL, &t));
  for (int64_t r = 0; r < 3; r++) {
    ab_tensor *row = NULL;
    CHECK_OK(ab_tensor_index(t, r, &row));
    const DLTensor *rd = ab_tensor_dl(row);
    for (int64_t j = 0; j < 4; j++) CHECK_EQ_INT(*(int32_t *)th_elem(rd, &j), (2 - r) * 4 + j);
    ab_future *f = NULL;
    CHECK_OK(ab_convert(rt, row, th_host(0), &(ab_convert_options){.size = sizeof(ab_convert_options), .force_copy = true}, &f));
    ab_tensor *c = NULL;
    CHECK_OK(ab_future_wait(f, -1));
    CHECK_OK(ab_future_result(f, &c));
    CHECK_EQ_INT(((int32_t *)ab_tensor_dl(c)->data)[3], (2 - r) * 4 + 3);
    /* and back through DLPack: the export's offsets are valid */
    DLManagedTensorVersioned *m = NULL;
    CHECK_OK(ab_tensor_export(row, &m));
    ab_tensor *again = NULL;
    CHECK_OK(ab_tensor_import(m, &again));
    int64_t j0 = 0;
    CHECK_EQ_INT(*(int32_t *)th_elem(ab_tensor_dl(again), &j0), (2 - r) * 4);
    ab_tensor_release(again);
    ab_tensor_release(c);
    ab_future_release(f);
    ab_tensor_release(row);
  }
  ab_tensor_release(t);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- wrap --------------------------------------------------------------------------------- */
static int released;
static void on_release(void *ctx) {
  released += (ctx == &released) ? 1 : 1000; /* 1000: wrong ctx */
}

static int test_wrap(void) {
  float data[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3};
  DLTensor dl;
  memset(&dl, 0, sizeof dl);
  dl.data = data;
  dl.device.device_type = kDLCPU;
  dl.ndim = 2;
  dl.dtype = TH_F32;
  dl.shape = shape;
  released = 0;
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_wrap(&dl, AB_TENSOR_READ_ONLY, on_release, &released, &t));
  /* the tensor has its own copy of the metadata */
  shape[0] = 99;
  CHECK_EQ_INT(ab_tensor_dl(t)->shape[0], 2);
  CHECK_EQ_PTR((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset, data);
  CHECK(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY);
  CHECK_EQ_U64(ab_tensor_nbytes(t), 24);
  ab_device d = ab_tensor_device(t);
  CHECK_EQ_INT(d.kind, AB_HOST);
  CHECK_EQ_INT(d.index, 0);
  ab_tensor_retain(t);
  ab_tensor_release(t);
  CHECK_EQ_INT(released, 0);
  /* a view inherits READ_ONLY and keeps the wrap alive */
  ab_tensor *row = NULL;
  CHECK_OK(ab_tensor_index(t, 1, &row));
  CHECK(ab_tensor_flags(row) & AB_TENSOR_READ_ONLY);
  ab_tensor_release(t);
  CHECK_EQ_INT(released, 0);
  int64_t k = 0;
  CHECK(*(float *)th_elem(ab_tensor_dl(row), &k) == 4.0f);
  ab_tensor_release(row);
  CHECK_EQ_INT(released, 1);

  /* NULL release function is fine */
  shape[0] = 2;
  CHECK_OK(ab_tensor_wrap(&dl, 0, NULL, NULL, &t));
  CHECK_EQ_INT(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY, 0);
  ab_tensor_release(t);

  /* rejects */
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_wrap(NULL, 0, NULL, NULL, &t), AB_EINVAL);
  CHECK_NULL(t);
  dl.ndim = -1;
  released = 0;
  t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_wrap(&dl, 0, on_release, &released, &t), AB_EINVAL, AB_ESHAPE);
  CHECK_NULL(t);
  CHECK_EQ_INT(released, 0); /* failure: ownership stays with the caller */
  return 0;
}

/* ---- export ------------------------------------------------------------------------------- */
static int test_export_versioned(void) {
  float data[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3};
  DLTensor dl;
  memset(&dl, 0, sizeof dl);
  dl.data = data;
  dl.device.device_type = kDLCPU;
  dl.ndim = 2;
  dl.dtype = TH_F32;
  dl.shape = shape;
  released = 0;
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_wrap(&dl, AB_TENSOR_READ_ONLY, on_release, &released, &t));
  DLManagedTensorVersioned *m = NULL;
  CHECK_OK(ab_tensor_export(t, &m));
  CHECK_NOT_NULL(m);
  CHECK_EQ_INT(m->version.major, 1);
  CHECK(m->flags & DLPACK_FLAG_BITMASK_READ_ONLY);
  CHECK_NOT_NULL(m->deleter);
  CHECK_EQ_INT(m->dl_tensor.ndim, 2);
  CHECK_EQ_INT(m->dl_tensor.shape[0], 2);
  CHECK_EQ_INT(m->dl_tensor.shape[1], 3);
  CHECK_EQ_INT(m->dl_tensor.dtype.code, kDLFloat);
  CHECK_EQ_INT(m->dl_tensor.dtype.bits, 32);
  CHECK_EQ_INT(m->dl_tensor.device.device_type, kDLCPU);
  CHECK_EQ_PTR((char *)m->dl_tensor.data + m->dl_tensor.byte_offset, data);
  /* the export holds a reference */
  ab_tensor_release(t);
  CHECK_EQ_INT(released, 0);
  int64_t idx[2] = {1, 2};
  CHECK(*(float *)th_elem(&m->dl_tensor, idx) == 6.0f);
  m->deleter(m);
  CHECK_EQ_INT(released, 1);

  /* a writable arena tensor exports without READ_ONLY; a view exports its strides */
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t s2[2] = {3, 4};
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_F32, 2, s2, &t));
  float *p = (float *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset);
  for (int i = 0; i < 12; i++) p[i] = (float)i;
  int64_t vs[2] = {4, 3}, vst[2] = {1, 4};
  ab_tensor *v = NULL;
  CHECK_OK(ab_tensor_view(t, 2, vs, vst, 0, &v));
  ab_tensor_release(t);
  CHECK_OK(ab_tensor_export(v, &m));
  CHECK_EQ_INT(m->flags & DLPACK_FLAG_BITMASK_READ_ONLY, 0);
  CHECK_NOT_NULL(m->dl_tensor.strides);
  CHECK_EQ_INT(m->dl_tensor.strides[0], 1);
  CHECK_EQ_INT(m->dl_tensor.strides[1], 4);
  ab_tensor_release(v);
  int64_t i21[2] = {2, 1};
  CHECK(*(float *)th_elem(&m->dl_tensor, i21) == 6.0f);
  m->deleter(m);

  DLManagedTensorVersioned *nm = (DLManagedTensorVersioned *)(uintptr_t)1;
  CHECK_ERR_IN(ab_tensor_export(NULL, &nm), AB_EINVAL);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static int test_export_legacy(void) {
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t s[1] = {5};
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), TH_U16, 1, s, &t));
  uint16_t *p = (uint16_t *)((char *)ab_tensor_dl(t)->data + ab_tensor_dl(t)->byte_offset);
  for (int i = 0; i < 5; i++) p[i] = (uint16_t)(100 + i);
  DLManagedTensor *m = NULL;
  CHECK_OK(ab_tensor_export_legacy(t, &m));
  CHECK_NOT_NULL(m);
  CHECK_NOT_NULL(m->deleter);
  ab_tensor_release(t);
  CHECK_EQ_INT(m->dl_tensor.ndim, 1);
  CHECK_EQ_INT(m->dl_tensor.shape[0], 5);
  CHECK_EQ_INT(m->dl_tensor.dtype.code, kDLUInt);
  CHECK_EQ_INT(m->dl_tensor.dtype.bits, 16);
  int64_t k = 4;
  CHECK_EQ_INT(*(uint16_t *)th_elem(&m->dl_tensor, &k), 104);
  /* legacy DLPack cannot say read-only: exporting a read-only tensor that way is refused */
  ab_tensor *ro = NULL, *view = NULL;
  int64_t one = 1;
  CHECK_OK(ab_tensor_wrap(ab_tensor_dl(t), AB_TENSOR_READ_ONLY, NULL, NULL, &ro));
  DLManagedTensor *lm = (DLManagedTensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_tensor_export_legacy(ro, &lm), AB_EPERM);
  CHECK_NULL(lm);
  CHECK_OK(ab_tensor_view(ro, 1, &one, NULL, 2, &view)); /* views inherit it */
  lm = (DLManagedTensor *)(uintptr_t)1;
  CHECK_EQ_INT(ab_tensor_export_legacy(view, &lm), AB_EPERM);
  CHECK_NULL(lm);
  ab_tensor_release(view);
  ab_tensor_release(ro);
  /* legacy round trip: import what we exported */
  ab_tensor *back = NULL;
  CHECK_OK(ab_tensor_import_legacy(m, &back));
  CHECK_EQ_INT(*(uint16_t *)th_elem(ab_tensor_dl(back), &k), 104);
  ab_tensor_release(back); /* runs m's deleter */
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* ---- import ------------------------------------------------------------------------------- */
static int test_import_versioned(void) {
  producer p;
  producer_init(&p);
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  CHECK_EQ_INT(p.deleted, 0);
  const DLTensor *dl = ab_tensor_dl(t);
  CHECK_EQ_INT(dl->ndim, 2);
  CHECK_EQ_INT(dl->shape[0], 2);
  CHECK_EQ_INT(dl->shape[1], 3);
  CHECK_EQ_PTR((char *)dl->data + dl->byte_offset, p.buf);
  CHECK_EQ_U64(ab_tensor_nbytes(t), 24);
  CHECK(ab_tensor_is_contiguous(t));
  CHECK_EQ_INT(ab_tensor_flags(t) & (AB_TENSOR_READ_ONLY | AB_TENSOR_IS_COPIED), 0);
  ab_device d = ab_tensor_device(t);
  CHECK_EQ_INT(d.kind, AB_HOST);
  CHECK_EQ_INT(d.index, 0);
  ab_tensor *t2 = ab_tensor_retain(t);
  ab_tensor_release(t);
  CHECK_EQ_INT(p.deleted, 0);
  ab_tensor *row = NULL;
  CHECK_OK(ab_tensor_index(t2, 1, &row));
  ab_tensor_release(t2);
  CHECK_EQ_INT(p.deleted, 0);
  ab_tensor_release(row);
  CHECK_EQ_INT(p.deleted, 1); /* exactly once, at the last release */

  /* flags */
  producer_init(&p);
  p.m.flags = DLPACK_FLAG_BITMASK_READ_ONLY | DLPACK_FLAG_BITMASK_IS_COPIED;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  CHECK(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY);
  CHECK(ab_tensor_flags(t) & AB_TENSOR_IS_COPIED);
  /* re-export keeps READ_ONLY */
  DLManagedTensorVersioned *m = NULL;
  CHECK_OK(ab_tensor_export(t, &m));
  CHECK(m->flags & DLPACK_FLAG_BITMASK_READ_ONLY);
  ab_tensor_release(t);
  CHECK_EQ_INT(p.deleted, 0);
  m->deleter(m);
  CHECK_EQ_INT(p.deleted, 1);

  /* explicit strides, byte_offset, NULL deleter */
  producer_init(&p);
  p.m.dl_tensor.byte_offset = 4 * sizeof(float);
  p.strides[0] = 1;
  p.strides[1] = 2;
  p.m.dl_tensor.strides = p.strides;
  p.m.deleter = NULL;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  CHECK(!ab_tensor_is_contiguous(t));
  int64_t idx[2] = {1, 2};
  CHECK(*(float *)th_elem(ab_tensor_dl(t), idx) == 9.0f); /* 4 + 1*1 + 2*2 */
  CHECK_EQ_U64(ab_tensor_nbytes(t), 24);
  ab_tensor_release(t);

  /* 0-d, shape may be NULL */
  producer_init(&p);
  p.m.dl_tensor.ndim = 0;
  p.m.dl_tensor.shape = NULL;
  p.m.dl_tensor.byte_offset = 8;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  CHECK_EQ_U64(ab_tensor_nbytes(t), 4);
  CHECK(*(float *)th_elem(ab_tensor_dl(t), NULL) == 2.0f);
  ab_tensor_release(t);
  CHECK_EQ_INT(p.deleted, 1);

  /* empty with NULL data is fine */
  producer_init(&p);
  p.shape[0] = 0;
  p.m.dl_tensor.data = NULL;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  CHECK_EQ_U64(ab_tensor_nbytes(t), 0);
  ab_tensor_release(t);
  CHECK_EQ_INT(p.deleted, 1);
  return 0;
}

static int test_import_legacy(void) {
  producer p;
  producer_init(&p);
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_import_legacy(&p.lm, &t));
  CHECK_EQ_U64(ab_tensor_nbytes(t), 24);
  CHECK_EQ_INT(ab_tensor_flags(t) & AB_TENSOR_READ_ONLY, 0);
  int64_t idx[2] = {1, 1};
  CHECK(*(float *)th_elem(ab_tensor_dl(t), idx) == 4.0f);
  DLManagedTensorVersioned *m = NULL;
  CHECK_OK(ab_tensor_export(t, &m));
  ab_tensor_release(t);
  CHECK_EQ_INT(p.deleted, 0);
  m->deleter(m);
  CHECK_EQ_INT(p.deleted, 1);
  return 0;
}

/* Every invalid field: the import fails, *out is NULL, the deleter is not called, and the
 * caller still owns the tensor (its deleter works afterwards). */
typedef void (*mutator)(producer *p);
static void m_ndim_neg(producer *p) { p->m.dl_tensor.ndim = -1; }
static void m_ndim_big(producer *p) {
  p->m.dl_tensor.ndim = AB_MAX_NDIM + 1;
  for (int i = 0; i < AB_MAX_NDIM + 1; i++) p->shape[i] = 1;
}
static void m_shape_neg(producer *p) { p->shape[1] = -3; }
static void m_shape_null(producer *p) { p->m.dl_tensor.shape = NULL; }
static void m_data_null(producer *p) { p->m.dl_tensor.data = NULL; }
static void m_code(producer *p) { p->m.dl_tensor.dtype.code = 99; }
static void m_bits0(producer *p) { p->m.dl_tensor.dtype.bits = 0; }
static void m_float_bits(producer *p) { p->m.dl_tensor.dtype.bits = 24; }
static void m_lanes0(producer *p) { p->m.dl_tensor.dtype.lanes = 0; }
static void m_dev_type(producer *p) { p->m.dl_tensor.device.device_type = (DLDeviceType)99; }
static void m_dev_id(producer *p) { p->m.dl_tensor.device.device_id = -1; }
static void m_version(producer *p) { p->m.version.major = 2; }

static void m_shape_overflow(producer *p) {
  p->m.dl_tensor.ndim = 3;
  p->shape[0] = INT64_C(1) << 30;
  p->shape[1] = INT64_C(1) << 30;
  p->shape[2] = INT64_C(1) << 30;
}
static void m_bytes_overflow(producer *p) { /* numel fits in int64, numel * 4 does not */
  p->m.dl_tensor.ndim = 1;
  p->m.dl_tensor.dtype.bits = 64;
  p->shape[0] = INT64_MAX / 2;
}
static void m_stride_overflow(producer *p) {
  p->strides[0] = INT64_MAX / 2;
  p->strides[1] = 1;
  p->m.dl_tensor.strides = p->strides;
}
static void m_stride_overflow_neg(producer *p) {
  p->strides[0] = INT64_MIN / 2;
  p->strides[1] = INT64_MIN / 2;
  p->m.dl_tensor.strides = p->strides;
}

static void m_stride_int64_min_bytes(producer *p) { /* the low extent is exactly INT64_MIN bytes */
  p->m.dl_tensor.ndim = 1;
  p->m.dl_tensor.dtype.bits = 64;
  p->shape[0] = 2;
  p->strides[0] = -(INT64_C(1) << 60);
  p->m.dl_tensor.strides = p->strides;
}

typedef struct {
  const char *what;
  mutator fn;
  int codes[4];
  int ncodes;
} reject_case;

static int import_rejects(bool legacy) {
  const reject_case cases[] = {
      {"ndim < 0", m_ndim_neg, {AB_EINVAL, AB_ESHAPE}, 2},
      /* valid DLPack we cannot represent: "not supported" is a fair answer too */
      {"ndim > AB_MAX_NDIM", m_ndim_big, {AB_EINVAL, AB_ESHAPE, AB_ENOTSUP}, 3},
      {"negative shape", m_shape_neg, {AB_EINVAL, AB_ESHAPE}, 2},
      {"NULL shape with ndim > 0", m_shape_null, {AB_EINVAL, AB_ESHAPE}, 2},
      {"NULL data, nonzero size", m_data_null, {AB_EINVAL}, 1},
      {"dtype code", m_code, {AB_EDTYPE}, 1},
      {"dtype bits 0", m_bits0, {AB_EDTYPE}, 1},
      {"float bits 24", m_float_bits, {AB_EDTYPE}, 1},
      {"dtype lanes 0", m_lanes0, {AB_EDTYPE}, 1},
      {"device type", m_dev_type, {AB_ENODEV, AB_EDEVICE, AB_ENOTSUP, AB_EINVAL}, 4},
      {"device id < 0", m_dev_id, {AB_ENODEV, AB_EDEVICE, AB_EINVAL}, 3},
      {"shape product overflow", m_shape_overflow, {AB_EOVERFLOW}, 1},
      {"byte size overflow", m_bytes_overflow, {AB_EOVERFLOW}, 1},
      {"stride extent overflow", m_stride_overflow, {AB_EOVERFLOW}, 1},
      {"negative stride extent overflow", m_stride_overflow_neg, {AB_EOVERFLOW}, 1},
      {"stride extent of INT64_MIN bytes", m_stride_int64_min_bytes, {AB_EOVERFLOW}, 1},
      {"version major 2", m_version, {AB_EINVAL, AB_ENOTSUP}, 2},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    if (legacy && cases[i].fn == m_version) continue;
    producer p;
    producer_init(&p);
    cases[i].fn(&p);
    if (legacy) p.lm.dl_tensor = p.m.dl_tensor;
    ab_tensor *t = (ab_tensor *)(uintptr_t)1;
    int r = legacy ? ab_tensor_import_legacy(&p.lm, &t) : ab_tensor_import(&p.m, &t);
    int ok = th_code_in(r, cases[i].ncodes, cases[i].codes);
    CHECK_MSG(ok, "%s import, %s: got %d%s", legacy ? "legacy" : "versioned", cases[i].what, r,
              th_errstr(r));
    CHECK_MSG(t == NULL, "%s: *out not NULL after failure", cases[i].what);
    CHECK_MSG(p.deleted == 0, "%s: deleter called on failure", cases[i].what);
    if (r == 0 && t) ab_tensor_release(t);
    /* still ours */
    if (legacy)
      p.lm.deleter(&p.lm);
    else
      p.m.deleter(&p.m);
    CHECK_EQ_INT(p.deleted, 1);
  }
  ab_tensor *t = (ab_tensor *)(uintptr_t)1;
  CHECK_ERR_IN(legacy ? ab_tensor_import_legacy(NULL, &t) : ab_tensor_import(NULL, &t), AB_EINVAL);
  CHECK_NULL(t);
  producer p;
  producer_init(&p);
  CHECK_ERR_IN(legacy ? ab_tensor_import_legacy(&p.lm, NULL) : ab_tensor_import(&p.m, NULL),
               AB_EINVAL);
  CHECK_EQ_INT(p.deleted, 0);
  return 0;
}

static int test_import_rejects_versioned(void) { return import_rejects(false); }
static int test_import_rejects_legacy(void) { return import_rejects(true); }

/* A newer minor version is readable (same ABI). */
static int test_import_minor_version(void) {
  producer p;
  producer_init(&p);
  p.m.version.minor = 7;
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  ab_tensor_release(t);
  CHECK_EQ_INT(p.deleted, 1);
  return 0;
}

/* An imported tensor can feed a task and its deleter runs once everything is done. */
static int read_sum(ab_ctx *c, void *arg) {
  ab_tensor *in = ab_ctx_input(c, 0);
  if (!in) return AB_EINVAL;
  const DLTensor *dl = ab_tensor_dl(in);
  double s = 0;
  for (int64_t i = 0; i < dl->shape[0]; i++)
    for (int64_t j = 0; j < dl->shape[1]; j++) {
      int64_t idx[2] = {i, j};
      s += *(float *)th_elem(dl, idx);
    }
  *(double *)arg = s;
  return 0;
}

static int test_import_into_task(void) {
  producer p;
  producer_init(&p);
  ab_tensor *t = NULL;
  CHECK_OK(ab_tensor_import(&p.m, &t));
  ab_runtime *rt = NULL;
  CHECK_OK(th_runtime(&rt, 1, 1));
  double sum = -1;
  ab_input in = {t, NULL};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = read_sum;
  d.arg = &sum;
  d.inputs = &in;
  d.ninputs = 1;
  ab_future *f = NULL;
  CHECK_OK(ab_submit(rt, &d, &f));
  ab_tensor_release(t); /* the task holds its own reference */
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  CHECK(sum == 15.0);
  ab_future_release(f);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  CHECK_EQ_INT(p.deleted, 1);
  return 0;
}

static const ab_test_entry tests[] = {TEST_ENTRY(alloc_basic),
                                      TEST_ENTRY(alloc_0d_and_empty),
                                      TEST_ENTRY(alloc_rejects),
                                      TEST_ENTRY(view_and_index),
                                      TEST_ENTRY(nested_views),
                                      TEST_ENTRY(view_bounds_hostile),
                                      TEST_ENTRY(view_below_data_pointer),
                                      TEST_ENTRY(wrap),
                                      TEST_ENTRY(export_versioned),
                                      TEST_ENTRY(export_legacy),
                                      TEST_ENTRY(import_versioned),
                                      TEST_ENTRY(import_legacy),
                                      TEST_ENTRY(import_rejects_versioned),
                                      TEST_ENTRY(import_rejects_legacy),
                                      TEST_ENTRY(import_minor_version),
                                      TEST_ENTRY(import_into_task),
                                      TEST_END};
AB_TEST_MAIN(tests)
