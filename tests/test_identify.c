/*
 * test_identify.c: the screening job's labelling and measuring (cli/identify.c, run as a task on
 * the host device) against the plainest reference there is: every foreground pixel flooded to
 * its 8-connected neighbours, objects numbered in raster order of their first pixel. Random
 * fields of every density, shapes that only join late (a U, a comb, a staircase of diagonal
 * touches), rows whose runs cross and end on 64-pixel words, one-pixel lines both ways, a full
 * field; each with and without the per-object table, several minimum sizes and channels, and
 * every vector version the CPU has (AB_SCREEN_ISA).
 */
#include <stdlib.h>
#include <string.h>

#include "cli/identify.h"
#include "harness.h"

static const DLDataType U16 = {kDLUInt, 16, 1};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (uint32_t)(rng >> 16);
}

/* ---- the reference ---------------------------------------------------------------------------- */
typedef struct {
  int64_t objects, area_sum, fg_px;
  uint64_t obj_sum[PLATE_MAX_CHANNELS];
  screen_object *objs;
} expected;

static int reference(const uint16_t *v, const uint16_t *const *ch, int nch, int64_t h, int64_t w, uint32_t t,
                      int min_area, expected *e) {
  int64_t n = h * w;
  uint8_t *left = malloc((size_t)n);
  int64_t *stack = malloc(sizeof *stack * (size_t)n);
  e->objs = malloc(sizeof *e->objs * (size_t)n);
  CHECK(left && stack && e->objs);
  for (int64_t i = 0; i < n; i++) e->fg_px += left[i] = v[i] >= t;
  for (int64_t i = 0; i < n; i++) {
    if (!left[i]) continue;
    screen_object o = {0};
    int64_t top = 0;
    stack[top++] = i;
    left[i] = 0;
    while (top > 0) {
      int64_t q = stack[--top], y = q / w, x = q % w;
      o.area++, o.sum_x += x, o.sum_y += y;
      for (int c = 0; c < nch; c++) o.sum[c] += ch[c][q];
      for (int64_t dy = -1; dy <= 1; dy++)
        for (int64_t dx = -1; dx <= 1; dx++) {
          int64_t yy = y + dy, xx = x + dx;
          if (yy >= 0 && yy < h && xx >= 0 && xx < w && left[yy * w + xx]) {
            left[yy * w + xx] = 0;
            stack[top++] = yy * w + xx;
          }
        }
    }
    if (o.area < min_area) continue;
    e->objs[e->objects++] = o;
    e->area_sum += o.area;
    for (int c = 0; c < nch; c++) e->obj_sum[c] += o.sum[c];
  }
  free(left);
  free(stack);
  return 0;
}

/* ---- the task ----------------------------------------------------------------------------------- */
static int run_identify(ab_runtime *rt, ab_tensor **in, int nch, identify_result *r) {
  ab_input inputs[1 + PLATE_MAX_CHANNELS];
  for (int k = 0; k <= nch; k++) inputs[k] = (ab_input){.tensor = in[k]};
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = identify_task;
  d.arg = r;
  d.inputs = inputs;
  d.ninputs = 1 + nch;
  d.place.policy = AB_PLACE_EXPLICIT;
  d.place.device = th_host(0);
  ab_future *f;
  CHECK_OK(ab_submit(rt, &d, &f));
  CHECK_OK(ab_future_wait(f, -1));
  int st = ab_future_status(f);
  ab_future_release(f);
  return st;
}

static int compare(const identify_result *r, const expected *e, int nch, bool want, const char *what) {
  if (r->objects != e->objects || r->area_sum != e->area_sum || r->fg_px != e->fg_px) {
    fprintf(stderr, "# %s: %lld objects, %lld pixels in them, %lld foreground; want %lld, %lld, %lld\n", what,
            (long long)r->objects, (long long)r->area_sum, (long long)r->fg_px, (long long)e->objects,
            (long long)e->area_sum, (long long)e->fg_px);
    return 1;
  }
  for (int c = 0; c < nch; c++)
    if (r->obj_sum[c] != e->obj_sum[c]) {
      fprintf(stderr, "# %s: channel %d sums %llu, want %llu\n", what, c, (unsigned long long)r->obj_sum[c],
              (unsigned long long)e->obj_sum[c]);
      return 1;
    }
  for (int64_t k = 0; want && k < e->objects; k++) {
    const screen_object *a = &r->objs[k], *b = &e->objs[k];
    bool same = a->area == b->area && a->sum_x == b->sum_x && a->sum_y == b->sum_y;
    for (int c = 0; c < nch; c++) same = same && a->sum[c] == b->sum[c];
    if (!same) {
      fprintf(stderr, "# %s: object %lld: area %lld at (%lld, %lld)/area, want %lld at (%lld, %lld)/area\n", what,
              (long long)k + 1, (long long)a->area, (long long)a->sum_x, (long long)a->sum_y, (long long)b->area,
              (long long)b->sum_x, (long long)b->sum_y);
      return 1;
    }
  }
  return 0;
}

/* One field: seg thresholded at t (a manual threshold of t / 65535), nch channels of noise;
 * every minimum size, with and without the table, on every vector version. */
static int check_field(ab_runtime *rt, const uint16_t *seg, int64_t h, int64_t w, uint32_t t, int nch,
                       const char *what) {
  static const char *isas[] = {NULL, "avx2", "plain"};
  static const int min_areas[] = {1, 2, 5, 40};
  int64_t shape[2] = {h, w};
  size_t n = (size_t)(h * w);
  ab_tensor *in[1 + PLATE_MAX_CHANNELS];
  const uint16_t *ch[PLATE_MAX_CHANNELS];
  for (int k = 0; k <= nch; k++) {
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 2, shape, &in[k]));
    uint16_t *p = ab_tensor_dl(in[k])->data;
    for (size_t i = 0; i < n; i++) p[i] = k == 0 ? seg[i] : (uint16_t)next();
    if (k > 0) ch[k - 1] = p;
  }
  int bad = 0;
  for (size_t m = 0; m < sizeof min_areas / sizeof min_areas[0] && !bad; m++) {
    expected e = {0};
    CHECK_OK(reference(seg, ch, nch, h, w, t, min_areas[m], &e));
    for (int want = 0; want < 2 && !bad; want++)
      for (size_t i = 0; i < sizeof isas / sizeof isas[0] && !bad; i++) {
        if (isas[i]) setenv("AB_SCREEN_ISA", isas[i], 1);
        else unsetenv("AB_SCREEN_ISA");
        screen_pipeline p = {.otsu = false, .threshold = t / 65535.0, .min_area = min_areas[m]};
        identify_result r = {.p = &p, .nchannels = nch, .want_objects = want};
        CHECK_OK(run_identify(rt, in, nch, &r));
        char full[160];
        snprintf(full, sizeof full, "%s, %lldx%lld, min size %d%s, %s", what, (long long)h, (long long)w,
                 min_areas[m], want ? ", table" : "", isas[i] ? isas[i] : "widest");
        bad |= compare(&r, &e, nch, want, full);
        free(r.objs);
      }
    free(e.objs);
  }
  unsetenv("AB_SCREEN_ISA");
  for (int k = 0; k <= nch; k++) ab_tensor_release(in[k]);
  return bad;
}

#define LIT 60000
#define DARK 100

static int test_random_fields(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  static const int64_t sizes[][2] = {{1, 1}, {1, 200}, {200, 1}, {7, 63}, {9, 64}, {11, 65}, {5, 127},
                                     {6, 128}, {13, 129}, {40, 200}, {64, 64}, {3, 1030}};
  static const uint32_t density[] = {2, 10, 35, 50, 65, 90, 100}; /* percent lit */
  int bad = 0;
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0] && !bad; s++)
    for (size_t d = 0; d < sizeof density / sizeof density[0] && !bad; d++) {
      int64_t h = sizes[s][0], w = sizes[s][1];
      uint16_t *v = malloc((size_t)(h * w) * 2);
      CHECK_NOT_NULL(v);
      for (int64_t i = 0; i < h * w; i++) v[i] = next() % 100 < density[d] ? LIT : DARK;
      v[0] = 7; /* never a constant field: one of those has no foreground by rule */
      char what[64];
      snprintf(what, sizeof what, "%u%% lit", density[d]);
      bad |= check_field(rt, v, h, w, 1000, 1 + (int)(s % 3), what);
      free(v);
    }
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

/* Shapes whose parts meet only further down, or only corner to corner. */
static int test_shapes(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  enum { H = 70, W = 150 };
  static uint16_t v[H * W];
  int bad = 0;
  for (int shape = 0; shape < 6 && !bad; shape++) {
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
        bool lit = false;
        switch (shape) {
        case 0: lit = (x % 10 == 3) || y == H - 2; break;                          /* a comb, joined at the foot */
        case 1: lit = (y < H - 5 && (x == 20 || x == 120)) || (y == H - 5 && x >= 20 && x <= 120); break; /* a U */
        case 2: lit = x == y || x == y + 64 || x + y == 100; break;                /* diagonals that cross */
        case 3: lit = (x + y) % 2 == 0; break;                                     /* a checkerboard: one object */
        case 4: lit = (x / 2 + y) % 3 == 0 && x % 64 != 0; break;                  /* staircases cut at words */
        case 5: lit = x >= 60 && x < 70 && y % 3 != 1; break;                      /* bars one row apart */
        }
        v[y * W + x] = lit ? LIT : DARK;
      }
    v[0] = v[0] == LIT ? LIT : 7;
    char what[32];
    snprintf(what, sizeof what, "shape %d", shape);
    bad |= check_field(rt, v, H, W, 1000, 2, what);
  }
  for (int i = 0; i < H * W; i++) v[i] = (uint16_t)(LIT + i % 2); /* every pixel lit, not constant */
  bad |= bad ? 0 : check_field(rt, v, H, W, 1000, 1, "everything lit");
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return bad;
}

/* A constant field has no foreground whatever the threshold; sums over the image still come. */
static int test_constant_field(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  int64_t shape[2] = {16, 16};
  ab_tensor *in[2];
  for (int k = 0; k < 2; k++) {
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 2, shape, &in[k]));
    uint16_t *p = ab_tensor_dl(in[k])->data;
    for (int i = 0; i < 256; i++) p[i] = k == 0 ? 5000 : 3;
  }
  screen_pipeline p = {.otsu = true, .min_area = 1};
  identify_result r = {.p = &p, .nchannels = 1, .want_objects = true};
  CHECK_OK(run_identify(rt, in, 1, &r));
  CHECK_EQ_INT(r.fg_px, 0);
  CHECK_EQ_INT(r.objects, 0);
  CHECK_EQ_INT(r.sum[0], 3 * 256);
  free(r.objs);
  for (int k = 0; k < 2; k++) ab_tensor_release(in[k]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

/* Otsu's threshold from counts handed on by the normalise step (screen_normalise) equals the
 * one identify counts itself, and the counts are really what it uses. */
static int test_otsu_counts_handed_on(void) {
  ab_runtime *rt;
  CHECK_OK(th_runtime(&rt, 1, 1));
  enum { H = 90, W = 130 };
  int64_t shape[2] = {H, W};
  ab_tensor *in[2];
  for (int k = 0; k < 2; k++) {
    CHECK_OK(ab_tensor_alloc(rt, th_host(0), U16, 2, shape, &in[k]));
    uint16_t *p = ab_tensor_dl(in[k])->data;
    for (int y = 0; y < H; y++) /* dim noise with bright discs */
      for (int x = 0; x < W; x++) {
        int dy = y % 30 - 15, dx = x % 26 - 13;
        p[y * W + x] = (uint16_t)(dy * dy + dx * dx < 60 ? 40000 + next() % 9000 : 2000 + next() % 6000);
      }
  }
  screen_pipeline p = {.otsu = true, .min_area = 1};
  screen_normalise counts = {.p = &p, .counted = true};
  const uint16_t *seg = ab_tensor_dl(in[0])->data;
  for (int i = 0; i < H * W; i++) counts.otsu[seg[i] >> 8]++;
  identify_result own = {.p = &p, .nchannels = 1}, handed = {.p = &p, .nchannels = 1, .counted = &counts};
  CHECK_OK(run_identify(rt, in, 1, &own));
  CHECK_OK(run_identify(rt, in, 1, &handed));
  CHECK_EQ_INT(handed.threshold, own.threshold);
  CHECK_EQ_INT(handed.objects, own.objects);
  CHECK_EQ_INT(handed.fg_px, own.fg_px);
  CHECK(own.objects > 1);
  /* counts that say otherwise move the threshold: they are what is used ... */
  memset(counts.otsu, 0, sizeof counts.otsu);
  counts.otsu[10] = counts.otsu[200] = 1000;
  CHECK_OK(run_identify(rt, in, 1, &handed));
  CHECK(handed.threshold != own.threshold);
  /* ... unless they were not made (another kind normalised) */
  counts.counted = false;
  CHECK_OK(run_identify(rt, in, 1, &handed));
  CHECK_EQ_INT(handed.threshold, own.threshold);
  for (int k = 0; k < 2; k++) ab_tensor_release(in[k]);
  CHECK_OK(ab_runtime_destroy(rt, AB_DRAIN));
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(random_fields),
    TEST_ENTRY(otsu_counts_handed_on),
    TEST_ENTRY(shapes),
    TEST_ENTRY(constant_field),
    TEST_END,
};

AB_TEST_MAIN(tests)
