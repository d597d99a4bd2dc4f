/* cli/steps_host.c: the pipeline's steps on the host device (see steps.h for the arithmetic). */
#include <stdlib.h>
#include <string.h>

#include "cli/steps.h"

static const DLDataType U16 = {kDLUInt, 16, 1};

static const uint16_t *u16_in(const DLTensor *x) {
  return (const uint16_t *)((const char *)x->data + x->byte_offset);
}

static int host_project(ab_ctx *c, void *arg) {
  (void)arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 3, &x);
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

/* One pass of the separable filter along a line of n values spaced `step` apart. */
static void filter_line(const uint16_t *in, uint16_t *out, int64_t n, int64_t step, const screen_pipeline *p) {
  int r = p->radius;
  for (int64_t x = 0; x < n; x++) {
    uint32_t a = 0, s = 0;
    for (int i = -r; i <= r; i++) {
      if (x + i < 0 || x + i >= n) continue;
      uint32_t w = p->weight[abs(i)];
      a += w * in[(x + i) * step];
      s += w;
    }
    out[x * step] = (uint16_t)((a + s / 2) / s);
  }
}

static int host_filter(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 2, &x);
  if (rc != 0) return rc;
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  int64_t h = x->shape[0], w = x->shape[1];
  uint16_t *t;
  if ((rc = ab_ctx_alloc(c, (size_t)(h * w) * sizeof *t, (void **)&t)) != 0) {
    ab_tensor_release(out);
    return rc;
  }
  const uint16_t *v = u16_in(x);
  uint16_t *o = ab_tensor_dl(out)->data;
  for (int64_t y = 0; y < h; y++) filter_line(v + y * w, t + y * w, w, 1, p);
  for (int64_t xx = 0; xx < w; xx++) filter_line(t + xx, o + xx, h, w, p);
  return ab_ctx_set_output(c, out);
}

static int host_normalise(ab_ctx *c, void *arg) {
  const screen_pipeline *p = arg;
  const DLTensor *x;
  int rc = steps_input_u16(c, 2, &x);
  if (rc != 0) return rc;
  uint32_t *hist;
  if ((rc = ab_ctx_alloc(c, 65536 * sizeof *hist, (void **)&hist)) != 0) return rc;
  memset(hist, 0, 65536 * sizeof *hist);
  const uint16_t *v = u16_in(x);
  int64_t n = x->shape[0] * x->shape[1];
  for (int64_t i = 0; i < n; i++) hist[v[i]]++;
  uint32_t lo, hi;
  steps_percentiles(hist, (uint64_t)n, p, &lo, &hi);
  ab_tensor *out;
  if ((rc = ab_ctx_alloc_tensor(c, U16, 2, x->shape, &out)) != 0) return rc;
  uint16_t *o = ab_tensor_dl(out)->data;
  for (int64_t i = 0; i < n; i++) o[i] = steps_scale(v[i], lo, hi);
  return ab_ctx_set_output(c, out);
}

const screen_steps screen_steps_host = {
    .kind = AB_HOST,
    .project = host_project,
    .filter = host_filter,
    .normalise = host_normalise,
};

const screen_steps *steps_for(int kind) {
  switch (kind) {
  case AB_HOST:
    return &screen_steps_host;
#ifdef AB_HAVE_OPENCL
  case AB_OPENCL:
    return &screen_steps_opencl;
#endif
  default:
    return NULL; /* CUDA: no steps yet (see steps.h) */
  }
}

void steps_cleanup(void) {
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    const screen_steps *s = steps_for(k);
    if (s && s->cleanup) s->cleanup();
  }
}
