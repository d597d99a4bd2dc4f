/*
 * test_cuda_screen_logic.c: the CUDA screening steps' arithmetic and tiling (cli/steps_pixel.h,
 * the code the kernels of cli/steps_cuda.cu run) against the host steps (cli/steps_host.c, run as
 * tasks on the host device), bit for bit: images with cells, flat ones, the extremes and noise;
 * sizes that cross the tiles' edges and windows wider than the image; filter sizes from none to
 * the largest; several percentile pairs. The functions run on the host arranged as the kernels
 * arrange them: the filter block by block through the same shared-memory tiles, the percentiles
 * from the same two 256-bin histograms with the same scan steps and pickers, the projection and
 * the scaling on packed pixel pairs as the 16-byte loads give them (and one pixel at a time, the
 * kernels' path for unaligned memory). So the kernels' logic is checked without a GPU or nvcc;
 * test_cli's same_everywhere case checks the kernels themselves on a GPU.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cli/steps.h"
#include "cli/steps_pixel.h"
#include "harness.h"

_Static_assert(SP_ONE == SCREEN_WEIGHT_ONE && SP_MAX_RADIUS == SCREEN_MAX_RADIUS, "steps_pixel.h follows steps.h");

static const DLDataType U16 = {kDLUInt, 16, 1};

/* Set when more than one thread named a percentile: the kernels' unsynchronised writes rely on one. */
static int one_finder;

/* ---- the kernels, on the host ----------------------------------------------------------------- */
static uint32_t word_at(const uint16_t *v, uint64_t i) { /* pixels i and i + 1, as a 32-bit load gives them */
  return (uint32_t)v[i] | (uint32_t)v[i + 1] << 16;
}

static void put_word(uint16_t *o, uint64_t i, uint32_t w) {
  o[i] = (uint16_t)(w & 0xffffu);
  o[i + 1] = (uint16_t)(w >> 16);
}

/* maxz_kernel: vec is the 16-byte path (taken where hw % 8 == 0 and memory is aligned). */
static void project_kernel(const uint16_t *v, uint16_t *o, int64_t nz, uint64_t hw, bool vec) {
  if (vec) {
    for (uint64_t i = 0; i < hw / 8; i++)
      for (int k = 0; k < 4; k++) {
        uint32_t m = word_at(v, i * 8 + 2 * (uint64_t)k);
        for (int64_t z = 1; z < nz; z++) m = sp_max2(m, word_at(v + (uint64_t)z * hw, i * 8 + 2 * (uint64_t)k));
        put_word(o, i * 8 + 2 * (uint64_t)k, m);
      }
    return;
  }
  for (uint64_t i = 0; i < hw; i++) {
    uint16_t m = v[i];
    for (int64_t z = 1; z < nz; z++) m = v[(uint64_t)z * hw + i] > m ? v[(uint64_t)z * hw + i] : m;
    o[i] = m;
  }
}

/* rows_kernel: block by block, every thread's share of the tile's loading, then every thread's
 * outputs (the kernel's __syncthreads between). */
static void rows_kernel(const uint16_t *in, uint16_t *out, int64_t h, int64_t w, const uint32_t *wt, int r) {
  static uint16_t tile[SP_ROW_ROWS][SP_ROW_TILE + 2 * SP_MAX_RADIUS];
  for (int64_t y0 = 0; y0 < h; y0 += SP_ROW_ROWS)
    for (int64_t x0 = 0; x0 < w; x0 += SP_ROW_TILE) {
      memset(tile, 0xee, sizeof tile); /* what a tile held before: never to be read */
      for (int ty = 0; ty < SP_ROW_ROWS && y0 + ty < h; ty++)
        for (int tx = 0; tx < SP_ROW_BX; tx++) sp_row_load(tile[ty], in + (y0 + ty) * w, x0, r, w, tx);
      for (int ty = 0; ty < SP_ROW_ROWS && y0 + ty < h; ty++)
        for (int tx = 0; tx < SP_ROW_BX; tx++) sp_row_out(tile[ty], out + (y0 + ty) * w, x0, wt, r, w, tx);
    }
}

/* cols_kernel, likewise. */
static void cols_kernel(const uint16_t *in, uint16_t *out, int64_t h, int64_t w, const uint32_t *wt, int r) {
  static uint16_t tile[SP_COL_TILE + 2 * SP_MAX_RADIUS][SP_COL_BX];
  for (int64_t y0 = 0; y0 < h; y0 += SP_COL_TILE)
    for (int64_t xb = 0; xb < w; xb += SP_COL_BX) {
      memset(tile, 0xee, sizeof tile);
      for (int ty = 0; ty < SP_COL_BY; ty++)
        for (int tx = 0; tx < SP_COL_BX; tx++) sp_col_load(&tile[0][0], in, xb + tx, y0, r, h, w, tx, ty);
      for (int ty = 0; ty < SP_COL_BY; ty++)
        for (int tx = 0; tx < SP_COL_BX; tx++) sp_col_out(&tile[0][0], out, xb + tx, y0, wt, r, h, w, tx, ty);
    }
}

static int filter_kernels(const uint16_t *in, uint16_t *out, int64_t h, int64_t w, const screen_pipeline *p) {
  size_t n = (size_t)(h * w);
  if (p->radius == 0) { /* a device-to-device copy */
    memcpy(out, in, n * 2);
    return 0;
  }
  uint32_t wt[SP_MAX_RADIUS + 1];
  for (int i = 0; i <= p->radius; i++) wt[i] = p->weight[i];
  uint16_t *t = malloc(n * 2 + 2);
  CHECK_NOT_NULL(t);
  rows_kernel(in, t, h, w, wt, p->radius);
  cols_kernel(t, out, h, w, wt, p->radius);
  free(t);
  return 0;
}

/* for_pixels: every pixel slot of every item (eight pixels where vec, from 32-bit words), each
 * counted unless past an item's pixels. */
typedef void count_fn(sp_scratch *s, uint32_t x);
static void for_pixels(const uint16_t *v, uint64_t n, bool vec, count_fn *each, sp_scratch *s) {
  uint64_t nvec = vec ? n / 8 : 0, items = nvec + (n - nvec * 8);
  for (uint64_t i = 0; i < items; i++) {
    uint32_t word[4] = {0, 0, 0, 0};
    int present = 1;
    if (i < nvec) {
      for (int k = 0; k < 4; k++) word[k] = word_at(v, i * 8 + 2 * (uint64_t)k);
      present = 8;
    } else {
      word[0] = v[nvec * 8 + (i - nvec)];
    }
    for (int k = 0; k < (vec ? 8 : 1); k++)
      if (k < present) each(s, sp_pixel(word, k));
  }
}

static void count_high(sp_scratch *s, uint32_t x) { s->high[x >> 8]++; }

static void count_low(sp_scratch *s, uint32_t x) {
  for (int k = 0; k < 2; k++)
    if (x >> 8 == s->bin[k]) s->low[k][x & 255]++;
}

/* before_bin: the 256 threads' exclusive scan, step by step as the block runs it. */
static void before_bins(const uint32_t *count, uint64_t base, uint64_t *before) {
  static uint64_t buf[2][256];
  int cur = 0;
  for (int t = 0; t < 256; t++) buf[0][t] = count[t];
  for (int d = 1; d < 256; d *= 2) {
    for (int t = 0; t < 256; t++) buf[cur ^ 1][t] = sp_scan_step(buf[cur], t, d);
    cur ^= 1;
  }
  for (int t = 0; t < 256; t++) before[t] = base + buf[cur][t] - count[t];
}

/* The percentile kernels: count_high, pick_high, count_low, pick_low. */
static void percentiles_kernels(const uint16_t *v, uint64_t n, const screen_pipeline *p, bool vec, uint32_t *lo,
                                uint32_t *hi) {
  static sp_scratch s;
  uint64_t rank[2], before[256];
  memset(&s, 0xab, sizeof s); /* what the pool gave back: only the counts are cleared */
  memset(&s, 0, offsetof(sp_scratch, before));
  sp_ranks(n, p->p_lo, p->p_hi, rank);
  for_pixels(v, n, vec, count_high, &s);
  before_bins(s.high, 0, before);
  for (int k = 0; k < 2; k++) {
    int finders = 0;
    s.bin[k] = SP_NONE;
    for (int t = 0; t < 256; t++)
      if (sp_holds(before[t], s.high[t], rank[k])) s.bin[k] = (uint32_t)t, s.before[k] = before[t], finders++;
    one_finder |= finders > 1;
  }
  for_pixels(v, n, vec, count_low, &s);
  int32_t found[2] = {-1, -1};
  for (int k = 0; k < 2; k++) {
    int finders = 0;
    before_bins(s.low[k], s.bin[k] == SP_NONE ? 0 : s.before[k], before);
    for (int t = 0; t < 256; t++)
      if (s.bin[k] != SP_NONE && sp_holds(before[t], s.low[k][t], rank[k])) found[k] = sp_value(s.bin[k], t), finders++;
    one_finder |= finders > 1;
  }
  sp_finish(found[0], found[1], lo, hi);
}

static void normalise_kernels(const uint16_t *v, uint16_t *o, uint64_t n, const screen_pipeline *p, bool vec) {
  uint32_t lo, hi;
  percentiles_kernels(v, n, p, vec, &lo, &hi);
  uint64_t nvec = vec ? n / 8 * 8 : 0;
  for (uint64_t i = 0; i < nvec; i += 2) put_word(o, i, sp_scale2(word_at(v, i), lo, hi));
  for (uint64_t i = nvec; i < n; i++) o[i] = sp_scale(v[i], lo, hi);
}

/* ---- the host steps, as the screening job runs them ------------------------------------------ */
static int run_step(ab_runtime *rt, ab_task_fn fn, const void *arg, ab_tensor *in, ab_tensor **out) {
  ab_input input = {.tensor = in};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = fn;
  d.arg = (void *)arg;
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

static int same(const uint16_t *k, const ab_tensor *host, size_t n, const char *step, const char *what) {
  const uint16_t *h = ab_tensor_dl((ab_tensor *)host)->data;
  for (size_t i = 0; i < n; i++)
    if (k[i] != h[i]) {
      fprintf(stderr, "# %s, %s: pixel %zu differs: kernels %u, host %u\n", what, step, i, k[i], h[i]);
      return 1;
    }
  return 0;
}

/* The host filter's hand-written vector versions below the widest (cli/vector.h). */
static const char *const narrower[] = {"avx2", "plain"};

/* The whole device chain on one stack, both ways, each kernel path (16-byte and one pixel); the
 * host's filter also with each narrower vector version. */
static int check_stack(ab_runtime *rt, const uint16_t *data, int64_t nz, int64_t h, int64_t w, const screen_pipeline *p,
                       const char *what) {
  int64_t shape[3] = {nz, h, w};
  size_t n = (size_t)(nz * h * w), hw = (size_t)(h * w);
  ab_tensor *in, *proj, *filt, *norm;
  CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 3, shape, &in));
  memcpy(ab_tensor_dl(in)->data, data, n * 2);
  CHECK_OK(run_step(rt, screen_steps_host.project, NULL, in, &proj));
  CHECK_OK(run_step(rt, screen_steps_host.filter, p, proj, &filt));
  screen_normalise na = {.p = p, .counted = false};
  CHECK_OK(run_step(rt, screen_steps_host.normalise, &na, filt, &norm));
  uint16_t *kp = malloc(hw * 2 + 2), *kf = malloc(hw * 2 + 2), *kn = malloc(hw * 2 + 2);
  CHECK(kp && kf && kn);
  int bad = 0;
  uint64_t otsu[256] = {0}; /* what the host's normalise hands identify: Otsu's bins of its output */
  for (size_t i = 0; i < hw; i++) otsu[((const uint16_t *)ab_tensor_dl(norm)->data)[i] >> 8]++;
  CHECK(na.counted);
  for (int k = 0; k < 256 && !bad; k++)
    if (otsu[k] != na.otsu[k]) {
      fprintf(stderr, "# %s: Otsu's bin %d: normalise counted %llu, the output has %llu\n", what, k,
              (unsigned long long)na.otsu[k], (unsigned long long)otsu[k]);
      bad = 1;
    }
  for (size_t i = 0; i < sizeof narrower / sizeof narrower[0] && !bad; i++) { /* the host's own versions agree */
    ab_tensor *again, *again_norm;
    screen_normalise na2 = {.p = p};
    setenv("AB_SCREEN_ISA", narrower[i], 1);
    CHECK_OK(run_step(rt, screen_steps_host.filter, p, proj, &again));
    CHECK_OK(run_step(rt, screen_steps_host.normalise, &na2, filt, &again_norm));
    unsetenv("AB_SCREEN_ISA");
    char also[256];
    snprintf(also, sizeof also, "%s, host steps with AB_SCREEN_ISA=%s against the widest (as kernels)", what, narrower[i]);
    bad |= same(ab_tensor_dl(filt)->data, again, hw, "filter", also);
    bad |= same(ab_tensor_dl(norm)->data, again_norm, hw, "normalise", also);
    ab_tensor_release(again);
    ab_tensor_release(again_norm);
  }
  for (int vec = 0; vec < 2 && !bad; vec++) {
    memset(kp, 0xcd, hw * 2); /* what the pool gave back */
    memset(kf, 0xcd, hw * 2);
    memset(kn, 0xcd, hw * 2);
    project_kernel(data, kp, nz, hw, vec && hw % 8 == 0);
    CHECK_OK(filter_kernels(kp, kf, h, w, p));
    normalise_kernels(kf, kn, hw, p, vec);
    bad |= same(kp, proj, hw, vec ? "project (16-byte loads)" : "project", what);
    bad |= same(kf, filt, hw, "filter", what);
    bad |= same(kn, norm, hw, vec ? "normalise (16-byte loads)" : "normalise", what);
  }
  free(kp);
  free(kf);
  free(kn);
  ab_tensor *all[] = {in, proj, filt, norm};
  for (int i = 0; i < 4; i++) ab_tensor_release(all[i]);
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
static void cells(uint16_t *v, int64_t nz, int64_t h, int64_t w, uint32_t bg) {
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
}

static screen_pipeline pipeline(double filter_size, uint32_t p_lo, uint32_t p_hi) {
  screen_pipeline p = {.filter_size = filter_size, .p_lo = p_lo, .p_hi = p_hi};
  screen_pipeline_weights(&p);
  return p;
}

/* Sizes: tiny ones, lines, one across the row tile's edge (w > 512) and the column tile's (h > 32),
 * widths and heights below the widest window (2r + 1 = 103 at --filter-size 30), and planes that
 * are no multiple of eight pixels (the kernels' one-pixel path). */
static const int64_t sizes[][3] = {{8, 96, 80}, {1, 64, 64}, {3, 1, 17}, {2, 19, 1}, {1, 1, 1}, {5, 33, 257},
                                   {2, 70, 600}, {1, 130, 9}, {2, 9, 130}, {3, 41, 1030}};
/* radii 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 51: each of the host filter's unrolled radii (1 to 8) and
 * its general one, on lines long enough for its 16-wide steps */
static const double filters[] = {0, 0.5, 1, 1.5, 2.2, 3, 3.3, 4, 4.5, 5, 30};
static const uint32_t rescale[][2] = {{10, 999}, {5, 995}, {0, 1000}};

static int test_chain_matches_host(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int bad = 0;
  /* A scaled-down run (AB_TEST_SCALE < 1, as under the sanitizers, where the emulation runs ten
   * times slower) checks every stride-th case; a stride prime to the 3 x 5 x 4 inner cases makes
   * each rescale, filter and image still come up. */
  long stride = th_scaled(1000) >= 1000 ? 1 : 1000 / th_scaled(1000), tried = 0;
  while (stride > 1 && (stride % 2 == 0 || stride % 3 == 0 || stride % 5 == 0)) stride--;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0] && !bad; k++) {
    const int64_t *s = sizes[k];
    size_t n = (size_t)(s[0] * s[1] * s[2]);
    uint16_t *v = malloc(n * 2);
    CHECK_NOT_NULL(v);
    for (int image = 0; image < 4 && !bad; image++) {
      const char *kind[] = {"cells", "flat", "0 and 65535", "noise"};
      if (image == 0) cells(v, s[0], s[1], s[2], 1000 + 500 * (uint32_t)k);
      for (size_t i = 0; i < n; i++) {
        if (image == 1) v[i] = 4242; /* flat: hi = lo + 1 */
        if (image == 2) v[i] = (uint16_t)(i % 2 ? 65535 : 0);
        if (image == 3) v[i] = (uint16_t)next();
      }
      for (size_t f = 0; f < sizeof filters / sizeof filters[0] && !bad; f++)
        for (size_t q = 0; q < sizeof rescale / sizeof rescale[0] && !bad; q++) {
          if (tried++ % stride) continue;
          screen_pipeline p = pipeline(filters[f], rescale[q][0], rescale[q][1]);
          char what[128];
          snprintf(what, sizeof what, "%s %lldx%lldx%lld, filter %g (r %d), rescale %u,%u", kind[image], (long long)s[0],
                   (long long)s[1], (long long)s[2], filters[f], p.radius, rescale[q][0], rescale[q][1]);
          bad |= check_stack(rt, v, s[0], s[1], s[2], &p, what);
        }
    }
    free(v);
  }
  CHECK_EQ_INT(one_finder, 0);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

/* The percentiles where ranks fall on the edges of the high-byte bins, of the histograms, and
 * past the end, for every kind of percentile pair (one that steps_percentiles' loop never reaches
 * for lo included): against steps_percentiles on the 65536-bin histogram of the same pixels. */
static int test_percentiles_at_bin_edges(void) {
  static const uint16_t values[] = {0, 1, 255, 256, 257, 511, 512, 4095, 4096, 65279, 65280, 65534, 65535};
  static const uint32_t pairs[][2] = {{10, 999}, {0, 1000}, {0, 1}, {999, 1000}, {500, 501}, {1000, 1000}, {999, 10}};
  static uint32_t hist[65536];
  uint16_t v[2001];
  size_t nv = sizeof values / sizeof values[0];
  for (size_t a = 0; a < nv; a++)
    for (size_t b = a; b < nv; b++)
      for (uint32_t na = 1; na <= 1000; na *= 10)
        for (size_t q = 0; q < sizeof pairs / sizeof pairs[0]; q++) {
          uint64_t n = 0;
          for (uint32_t i = 0; i < na; i++) v[n++] = values[a];
          for (uint32_t i = 0; i < 1001 - na; i++) v[n++] = values[b];
          memset(hist, 0, sizeof hist);
          for (uint64_t i = 0; i < n; i++) hist[v[i]]++;
          screen_pipeline p = {.p_lo = pairs[q][0], .p_hi = pairs[q][1]};
          uint32_t lo, hi, want_lo, want_hi;
          percentiles_kernels(v, n, &p, (a + b + q) % 2, &lo, &hi);
          steps_percentiles(hist, n, &p, &want_lo, &want_hi);
          CHECK_MSG(lo == want_lo && hi == want_hi, "%u x%u, %u x%u, per mille %u,%u: got %u..%u, host %u..%u",
                    values[a], na, values[b], 1001 - na, pairs[q][0], pairs[q][1], lo, hi, want_lo, want_hi);
        }
  screen_pipeline p = {.p_lo = 10, .p_hi = 999};
  uint32_t lo, hi, want_lo, want_hi;
  memset(hist, 0, sizeof hist); /* nothing at all: the defaults */
  percentiles_kernels(v, 0, &p, true, &lo, &hi);
  steps_percentiles(hist, 0, &p, &want_lo, &want_hi);
  CHECK(lo == want_lo && hi == want_hi);
  CHECK_EQ_INT(one_finder, 0);
  return 0;
}

/* The filter where the window is cut: every radius, on lines shorter and longer than it, one
 * pixel lit at each position, against the host step. */
static int test_filter_cut_windows(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int bad = 0;
  static const int radii[] = {1, 2, 3, 4, 5, 6, 7, 8, 17, 33, 51, SCREEN_MAX_RADIUS};
  for (size_t ri = 0; ri < sizeof radii / sizeof radii[0] && !bad; ri++) {
    int r = radii[ri];
    screen_pipeline p = {.radius = r};
    uint32_t sides = 0; /* a triangle of weights, any will do: they sum to SP_ONE */
    for (int i = 1; i <= r; i++) sides += 2 * (p.weight[i] = (uint16_t)(r + 1 - i));
    p.weight[0] = (uint16_t)(SP_ONE - sides);
    for (int64_t len = 1; len <= 2 * r + 3 && !bad; len += len < 4 ? 1 : r) {
      int64_t shape[3] = {1, 3, len};
      for (int64_t at = 0; at < len && !bad; at++) {
        uint16_t v[3 * 200] = {0};
        for (int64_t y = 0; y < 3; y++) v[y * len + at] = (uint16_t)(60000 - 1000 * y);
        ab_tensor *in, *proj, *filt;
        CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 3, shape, &in));
        memcpy(ab_tensor_dl(in)->data, v, (size_t)(3 * len) * 2);
        CHECK_OK(run_step(rt, screen_steps_host.project, NULL, in, &proj)); /* z = 1: a copy */
        uint16_t got[3 * 200];
        CHECK_OK(filter_kernels(ab_tensor_dl(proj)->data, got, 3, len, &p));
        for (size_t i = 0; i <= sizeof narrower / sizeof narrower[0] && !bad; i++) {
          if (i > 0) setenv("AB_SCREEN_ISA", narrower[i - 1], 1);
          CHECK_OK(run_step(rt, screen_steps_host.filter, &p, proj, &filt));
          unsetenv("AB_SCREEN_ISA");
          char what[80];
          snprintf(what, sizeof what, "radius %d, 3x%lld, lit at %lld, %s", r, (long long)len, (long long)at,
                   i > 0 ? narrower[i - 1] : "widest");
          bad |= same(got, filt, (size_t)(3 * len), "filter", what);
          ab_tensor_release(filt);
        }
        ab_tensor_release(in);
        ab_tensor_release(proj);
      }
    }
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

/* The host's scale, every value of a range, for ranges of every width class: each up to 300,
 * around each power of two, where its vector path gives way to the table (32768), the widest,
 * and a few hundred more. With the rescale 0, 1000 (per mille), lo is the image's least value and
 * hi 65535; the image holds every value from lo up. */
static int test_scale_every_value(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  uint32_t widths[700];
  int nw = 0;
  for (uint32_t d = 1; d <= 300; d++) widths[nw++] = d;
  for (int j = 9; j <= 16; j++)
    for (int e = -1; e <= 1; e++) widths[nw++] = (1u << j) + (uint32_t)e - (j == 16 && e >= 0 ? 1 + (uint32_t)e : 0);
  for (int i = nw; i < 700; i++) widths[nw++] = 1 + next() % 65535;
  screen_pipeline p = {.p_lo = 0, .p_hi = 1000};
  screen_normalise na = {.p = &p};
  int bad = 0;
  long stride = th_scaled(1000) >= 1000 ? 1 : 7; /* sanitizers: every seventh width */
  for (int i = 0; i < nw && !bad; i += (int)stride) {
    uint32_t lo = 65535 - widths[i];
    int64_t shape[2] = {1, 65536 - (int64_t)lo};
    ab_tensor *in, *out;
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 2, shape, &in));
    uint16_t *v = ab_tensor_dl(in)->data;
    for (int64_t x = 0; x < shape[1]; x++) v[x] = (uint16_t)(65535 - x); /* down, so the ends are no easier */
    for (size_t isa = 0; isa <= sizeof narrower / sizeof narrower[0] && !bad; isa++) {
      if (isa > 0) setenv("AB_SCREEN_ISA", narrower[isa - 1], 1);
      CHECK_OK(run_step(rt, screen_steps_host.normalise, &na, in, &out));
      unsetenv("AB_SCREEN_ISA");
      const uint16_t *o = ab_tensor_dl(out)->data;
      for (int64_t x = 0; x < shape[1] && !bad; x++)
        if (o[x] != steps_scale(v[x], lo, 65535)) {
          fprintf(stderr, "# range %u..65535, %s: %u scaled to %u, want %u\n", lo, isa ? narrower[isa - 1] : "widest",
                  v[x], o[x], steps_scale(v[x], lo, 65535));
          bad = 1;
        }
      ab_tensor_release(out);
    }
    ab_tensor_release(in);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

/* The host's normalise where values lie outside lo..hi on both sides (clamped), where the table
 * starts past lo or ends before hi, where the range is wider than the four counts take: random
 * images of several spreads, every percentile pair, each vector version, every pixel against
 * steps_scale with the percentiles of the image's own 65536-bin histogram. */
static int test_normalise_clamps(void) {
  static const uint32_t spreads[] = {3, 40, 700, 5000, 20000, 65536};
  static const uint32_t pairs[][2] = {{10, 999}, {100, 900}, {0, 1000}, {1000, 1000}, {999, 10}, {500, 501}};
  static uint32_t hist[65536];
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int bad = 0;
  for (size_t sp = 0; sp < sizeof spreads / sizeof spreads[0] && !bad; sp++) {
    int64_t shape[2] = {37, 101};
    size_t n = 37 * 101;
    ab_tensor *in, *out;
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 2, shape, &in));
    uint16_t *v = ab_tensor_dl(in)->data;
    uint32_t base = spreads[sp] >= 65536 ? 0 : 30000;
    for (size_t i = 0; i < n; i++) v[i] = (uint16_t)(base + next() % spreads[sp]);
    memset(hist, 0, sizeof hist);
    for (size_t i = 0; i < n; i++) hist[v[i]]++;
    for (size_t q = 0; q < sizeof pairs / sizeof pairs[0] && !bad; q++) {
      screen_pipeline p = {.p_lo = pairs[q][0], .p_hi = pairs[q][1]};
      screen_normalise na = {.p = &p};
      uint32_t lo, hi;
      steps_percentiles(hist, n, &p, &lo, &hi);
      for (size_t isa = 0; isa <= sizeof narrower / sizeof narrower[0] && !bad; isa++) {
        if (isa > 0) setenv("AB_SCREEN_ISA", narrower[isa - 1], 1);
        CHECK_OK(run_step(rt, screen_steps_host.normalise, &na, in, &out));
        unsetenv("AB_SCREEN_ISA");
        const uint16_t *o = ab_tensor_dl(out)->data;
        for (size_t i = 0; i < n && !bad; i++)
          if (o[i] != steps_scale(v[i], lo, hi)) {
            fprintf(stderr, "# spread %u, per mille %u,%u (%u..%u), %s: %u scaled to %u, want %u\n", spreads[sp],
                    pairs[q][0], pairs[q][1], lo, hi, isa ? narrower[isa - 1] : "widest", v[i], o[i],
                    steps_scale(v[i], lo, hi));
            bad = 1;
          }
        ab_tensor_release(out);
      }
    }
    ab_tensor_release(in);
  }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(chain_matches_host),
    TEST_ENTRY(normalise_clamps),
    TEST_ENTRY(percentiles_at_bin_edges),
    TEST_ENTRY(filter_cut_windows),
    TEST_ENTRY(scale_every_value),
    TEST_END,
};

AB_TEST_MAIN(tests)
