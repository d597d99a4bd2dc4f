/*
 * test_cuda_screen_logic.c: the CUDA screening steps' arithmetic (cli/steps_pixel.h, the code
 * the kernels of cli/steps_cuda.cu run per pixel) against the host steps (cli/steps_host.c, run
 * as tasks on the host device), bit for bit, on stacks with cells, flat ones and edge sizes.
 * The functions run on the host, arranged as the kernels arrange them (the percentiles as one
 * block of SP_THREADS threads with a scan), so the kernels' logic is checked without a GPU or
 * nvcc; test_cli's same_everywhere case checks the kernels themselves on a GPU.
 */
#include <stdlib.h>
#include <string.h>

#include "cli/steps.h"
#include "cli/steps_pixel.h"
#include "harness.h"

static const sp_params P = {SCREEN_THRESHOLD, 1, SCREEN_P_LO, SCREEN_P_HI};
static const DLDataType U16 = {kDLUInt, 16, 1};

/* ---- the kernels, on the host ----------------------------------------------------------------- */
/* Set when more than one thread found a rank: the kernel's unsynchronised writes rely on one. */
static int one_finder;

static void percentiles_block(const uint32_t *hist, uint64_t n, uint32_t *lo, uint32_t *hi) {
  static uint64_t before[SP_THREADS];
  uint64_t run = 0;
  for (int t = 0; t < SP_THREADS; t++) { /* per-thread sums, exclusive scan */
    before[t] = run;
    for (int v = t * SP_BINS; v < (t + 1) * SP_BINS; v++) run += hist[v];
  }
  uint64_t rank_lo, rank_hi;
  sp_ranks(n, &P, &rank_lo, &rank_hi);
  int32_t found_lo = -1, found_hi = -1;
  int nlo = 0, nhi = 0;
  for (int t = 0; t < SP_THREADS; t++) {
    int32_t l = sp_find(hist, t, before[t], rank_lo), h = sp_find(hist, t, before[t], rank_hi);
    if (l >= 0) found_lo = l, nlo++;
    if (h >= 0) found_hi = h, nhi++;
  }
  one_finder |= nlo > 1 || nhi > 1;
  sp_finish(found_lo, found_hi, lo, hi);
}

static void normalise_kernels(const uint16_t *v, uint64_t n, uint16_t *o) {
  static uint32_t hist[65536];
  memset(hist, 0, sizeof hist);
  for (uint64_t i = 0; i < n; i++) hist[v[i]]++;
  uint32_t lo, hi;
  percentiles_block(hist, n, &lo, &hi);
  for (uint64_t i = 0; i < n; i++) o[i] = sp_scale(v[i], lo, hi);
}

static void filter_kernel(const uint16_t *v, uint16_t *o, int64_t nz, int64_t h, int64_t w) {
  for (int64_t z = 0; z < nz; z++)
    for (int64_t y = 0; y < h; y++)
      for (int64_t x = 0; x < w; x++) o[(z * h + y) * w + x] = sp_box(v + z * h * w, h, w, y, x, P.radius);
}

static void project_kernel(const uint16_t *v, uint16_t *o, int64_t nz, int64_t hw) {
  for (int64_t i = 0; i < hw; i++) o[i] = sp_maxz(v, nz, hw, i);
}

static void threshold_kernel(const uint16_t *v, uint8_t *o, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = sp_threshold(v[i], P.threshold);
}

/* ---- the host steps, as the screening job runs them ------------------------------------------ */
static int run_step(ab_runtime *rt, ab_task_fn fn, ab_tensor *in, ab_tensor **out) {
  ab_input input = {.tensor = in};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = fn;
  d.inputs = &input;
  d.ninputs = 1;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(0);
  ab_future *f;
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  CHECK_OK(ab_future_status(f));
  CHECK_OK(ab_future_result(f, out));
  ab_future_release(f);
  return 0;
}

static int same(const void *a, const void *b, size_t bytes, const char *step, const char *what) {
  if (memcmp(a, b, bytes) == 0) return 0;
  const unsigned char *x = a, *y = b;
  size_t i = 0;
  while (x[i] == y[i]) i++;
  fprintf(stderr, "# %s, %s: byte %zu differs: kernels %u, host %u\n", what, step, i, x[i], y[i]);
  return 1;
}

/* The whole chain on one stack, both ways. */
static int check_stack(ab_runtime *rt, const uint16_t *data, int64_t nz, int64_t h, int64_t w, const char *what) {
  int64_t shape[3] = {nz, h, w};
  size_t n = (size_t)(nz * h * w), hw = (size_t)(h * w);
  ab_tensor *in, *norm, *filt, *proj, *mask;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 3, shape, &in));
  memcpy(ab_tensor_dl(in)->data, data, n * 2);
  CHECK_OK(run_step(rt, screen_steps_host.normalise, in, &norm));
  CHECK_OK(run_step(rt, screen_steps_host.filter, norm, &filt));
  CHECK_OK(run_step(rt, screen_steps_host.project, filt, &proj));
  CHECK_OK(run_step(rt, screen_steps_host.threshold, proj, &mask));
  uint16_t *kn = malloc(n * 2), *kf = malloc(n * 2), *kp = malloc(hw * 2);
  uint8_t *km = malloc(hw);
  CHECK(kn && kf && kp && km);
  normalise_kernels(data, n, kn);
  filter_kernel(kn, kf, nz, h, w);
  project_kernel(kf, kp, nz, (int64_t)hw);
  threshold_kernel(kp, km, (int64_t)hw);
  int bad = same(kn, ab_tensor_dl(norm)->data, n * 2, "normalise", what);
  bad |= same(kf, ab_tensor_dl(filt)->data, n * 2, "filter", what);
  bad |= same(kp, ab_tensor_dl(proj)->data, hw * 2, "project", what);
  bad |= same(km, ab_tensor_dl(mask)->data, hw, "threshold", what);
  free(kn);
  free(kf);
  free(kp);
  free(km);
  ab_tensor *all[] = {in, norm, filt, proj, mask};
  for (int i = 0; i < 5; i++) ab_tensor_release(all[i]);
  return bad;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}

/* Background noise around `bg`, a few bright discs (cells), some saturated pixels. */
static uint16_t *cells(int64_t nz, int64_t h, int64_t w, uint32_t bg) {
  uint16_t *v = malloc((size_t)(nz * h * w) * 2);
  if (v == NULL) return NULL;
  for (int64_t i = 0; i < nz * h * w; i++) v[i] = (uint16_t)(bg + next() % 200);
  for (int c = 0; c < 6; c++) {
    int64_t cy = next() % h, cx = next() % w, r = 2 + next() % 6;
    uint32_t peak = 20000 + next() % 40000;
    for (int64_t z = 0; z < nz; z++)
      for (int64_t y = cy - r; y <= cy + r; y++)
        for (int64_t x = cx - r; x <= cx + r; x++)
          if (y >= 0 && y < h && x >= 0 && x < w && (y - cy) * (y - cy) + (x - cx) * (x - cx) <= r * r)
            v[(z * h + y) * w + x] = (uint16_t)(peak - z * 300);
  }
  v[0] = 65535;
  return v;
}

static int test_chain_matches_host(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  static const int64_t sizes[][3] = {{8, 96, 80}, {1, 64, 64}, {3, 1, 17}, {2, 19, 1}, {1, 1, 1}, {5, 33, 257}};
  int bad = 0;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    const int64_t *s = sizes[k];
    uint16_t *v = cells(s[0], s[1], s[2], 1000 + 500 * (uint32_t)k);
    CHECK_NOT_NULL(v);
    char what[64];
    snprintf(what, sizeof what, "cells %lldx%lldx%lld", (long long)s[0], (long long)s[1], (long long)s[2]);
    bad |= check_stack(rt, v, s[0], s[1], s[2], what);
    for (int64_t i = 0; i < s[0] * s[1] * s[2]; i++) v[i] = 4242; /* flat: hi = lo + 1 */
    bad |= check_stack(rt, v, s[0], s[1], s[2], "flat");
    for (int64_t i = 0; i < s[0] * s[1] * s[2]; i++) v[i] = (uint16_t)(i % 2 ? 65535 : 0); /* the extremes */
    bad |= check_stack(rt, v, s[0], s[1], s[2], "0 and 65535");
    free(v);
  }
  CHECK_EQ_INT(one_finder, 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

/* The percentiles on histograms whose ranks fall on the edges of the threads' shares. */
static int test_percentiles_at_share_edges(void) {
  static uint32_t hist[65536];
  static const uint32_t bins[] = {0, 1, SP_BINS - 1, SP_BINS, SP_BINS + 1, 65535 - SP_BINS, 65534, 65535};
  for (size_t a = 0; a < sizeof bins / sizeof bins[0]; a++)
    for (size_t b = a; b < sizeof bins / sizeof bins[0]; b++)
      for (uint32_t na = 1; na <= 1000; na *= 10) {
        memset(hist, 0, sizeof hist);
        hist[bins[a]] += na;
        hist[bins[b]] += 1000 - na + 1;
        uint64_t n = na + 1000 - na + 1;
        uint32_t lo, hi, want_lo, want_hi;
        percentiles_block(hist, n, &lo, &hi);
        steps_percentiles(hist, n, &want_lo, &want_hi);
        CHECK_MSG(lo == want_lo && hi == want_hi, "bins %u x%u, %u: got %u..%u, host %u..%u", bins[a], na, bins[b],
                  lo, hi, want_lo, want_hi);
      }
  memset(hist, 0, sizeof hist); /* nothing at all: the defaults */
  uint32_t lo, hi, want_lo, want_hi;
  percentiles_block(hist, 0, &lo, &hi);
  steps_percentiles(hist, 0, &want_lo, &want_hi);
  CHECK(lo == want_lo && hi == want_hi);
  CHECK_EQ_INT(one_finder, 0);
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(chain_matches_host),
    TEST_ENTRY(percentiles_at_share_edges),
    TEST_END,
};

AB_TEST_MAIN(tests)
