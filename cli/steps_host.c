/* cli/steps_host.c: the pipeline's steps on the host device (see steps.h for the arithmetic). */
#include <stdlib.h>
#include <string.h>

#include "cli/steps.h"

static const DLDataType U16 = {kDLUInt, 16, 1}, U8 = {kDLUInt, 8, 1};

static int input(ab_ctx *c, int ndim, const DLTensor **out) { return steps_input_u16(c, ndim, out); }

static const uint16_t *u16_in(const DLTensor *x) {
  return (const uint16_t *)((const char *)x->data + x->byte_offset);
}

static int64_t numel(const DLTensor *x) {
  int64_t n = 1;
  for (int i = 0; i < x->ndim; i++) n *= x->shape[i];
  return n;
}

static int host_normalise(ab_ctx *c, void *arg) {
  const DLTensor *x;
  int rc = input(c, 3, &x);
  if (rc != 0) return rc;
  uint32_t *hist;
  if ((rc = ab_ctx_alloc(c, 65536 * sizeof *hist, (void **)&hist)) != 0) return rc;
  memset(hist, 0, 65536 * sizeof *hist);
  const uint16_t *v = u16_in(x);
  int64_t n = numel(x);
  for (int64_t i = 0; i < n; i++) hist[v[i]]++;
  uint32_t lo, hi;
  steps_percentiles(hist, (uint64_t)n, &lo, &hi);
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 3, x->shape, &out)) != 0) return rc;
  uint16_t *o = ab_tensor_dl(out)->data;
  for (int64_t i = 0; i < n; i++) o[i] = steps_scale(v[i], lo, hi);
  return ab_ctx_set_output(c, out);
}

static int64_t clampi(int64_t v, int64_t hi) { return v < 0 ? 0 : v > hi ? hi : v; }

static int host_filter(ab_ctx *c, void *arg) {
  const DLTensor *x;
  int rc = input(c, 3, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 3, x->shape, &out)) != 0) return rc;
  int64_t nz = x->shape[0], h = x->shape[1], w = x->shape[2];
  const uint16_t *v = u16_in(x);
  uint16_t *o = ab_tensor_dl(out)->data;
  for (int64_t z = 0; z < nz; z++) {
    const uint16_t *s = v + z * h * w;
    for (int64_t y = 0; y < h; y++)
      for (int64_t xx = 0; xx < w; xx++) {
        uint32_t sum = 0;
        for (int dy = -1; dy <= 1; dy++)
          for (int dx = -1; dx <= 1; dx++) sum += s[clampi(y + dy, h - 1) * w + clampi(xx + dx, w - 1)];
        o[(z * h + y) * w + xx] = (uint16_t)((sum + 4) / 9);
      }
  }
  return ab_ctx_set_output(c, out);
}

static int host_project(ab_ctx *c, void *arg) {
  const DLTensor *x;
  int rc = input(c, 3, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape + 1, &out)) != 0) return rc;
  int64_t nz = x->shape[0], hw = x->shape[1] * x->shape[2];
  const uint16_t *v = u16_in(x);
  uint16_t *o = ab_tensor_dl(out)->data;
  memcpy(o, v, (size_t)hw * sizeof *o);
  for (int64_t z = 1; z < nz; z++)
    for (int64_t i = 0; i < hw; i++)
      if (v[z * hw + i] > o[i]) o[i] = v[z * hw + i];
  return ab_ctx_set_output(c, out);
}

static int host_threshold(ab_ctx *c, void *arg) {
  const DLTensor *x;
  int rc = input(c, 2, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U8, 2, x->shape, &out)) != 0) return rc;
  int64_t n = numel(x);
  const uint16_t *v = u16_in(x);
  uint8_t *o = ab_tensor_dl(out)->data;
  for (int64_t i = 0; i < n; i++) o[i] = v[i] >= SCREEN_THRESHOLD;
  return ab_ctx_set_output(c, out);
}

const screen_steps screen_steps_host = {
    .kind = AB_HOST,
    .normalise = host_normalise,
    .filter = host_filter,
    .project = host_project,
    .threshold = host_threshold,
};

const screen_steps *steps_for(int kind) {
  switch (kind) {
  case AB_HOST:
    return &screen_steps_host;
#ifdef AB_HAVE_OPENCL
  case AB_OPENCL:
    return &screen_steps_opencl;
#endif
#ifdef AB_HAVE_CUDA
  case AB_CUDA:
    return &screen_steps_cuda;
#endif
  default:
    return NULL; /* a kind this build has no backend for (see steps.h) */
  }
}

void steps_cleanup(void) {
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    const screen_steps *s = steps_for(k);
    if (s && s->cleanup) s->cleanup();
  }
}
