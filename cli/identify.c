/*
 * cli/identify.c: the host's part of every image (see identify.h).
 *
 * Foreground is a few percent of a typical image, so the time goes to the passes over every
 * pixel, not to the objects: Otsu's histogram (handed on by the host's normalise step, which
 * counted its own input anyway; else counted here in four interleaved counts, so that runs of
 * equal values do not wait on one counter), the channels' sums in blocks of 32-bit lanes, and
 * one pass that turns the thresholded segmentation channel into bits, 32 or 16 pixels a compare
 * where the CPU has AVX-512 or AVX2. Objects are then labelled from the rows' runs of set bits
 * (union-find over runs that touch in the row above, the root always the run that comes first)
 * rather than pixel by pixel, and measured run by run: sums over a run are its length times an
 * arithmetic series for x, and a loop over its pixels for the channels.
 */
#include "cli/identify.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <arraybridge.h>

#include "cli/vector.h"

static const uint16_t *data_of(ab_tensor *t) {
  const DLTensor *x = ab_tensor_dl(t);
  return (const uint16_t *)((const char *)x->data + x->byte_offset);
}

/* Otsu's threshold over 256 bins, in the order scikit-image computes it. */
static void otsu_histogram(const uint16_t *v, int64_t n, uint64_t hist[256]) {
  uint32_t part[4][256] = {{0}}; /* a quarter of the values each: n < 2^34 */
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    part[0][v[i] >> 8]++;
    part[1][v[i + 1] >> 8]++;
    part[2][v[i + 2] >> 8]++;
    part[3][v[i + 3] >> 8]++;
  }
  for (; i < n; i++) part[0][v[i] >> 8]++;
  for (int k = 0; k < 256; k++) hist[k] = (uint64_t)part[0][k] + part[1][k] + part[2][k] + part[3][k];
}

/* counted: the histogram the normalise step made of v, or NULL to count it here. */
static uint32_t otsu(const uint16_t *v, int64_t n, const uint64_t *counted) {
  uint64_t hist[256];
  if (counted) memcpy(hist, counted, sizeof hist);
  else otsu_histogram(v, n, hist);
  int used = 0;
  for (int k = 0; k < 256; k++) used += hist[k] != 0;
  if (used <= 1) return v[0]; /* one bin (a constant image): scikit-image returns its value */
  uint64_t w1 = 0, total = 0;
  double s1 = 0, stotal = 0;
  for (int k = 0; k < 256; k++) total += hist[k], stotal += (double)hist[k] * k;
  double best = -1;
  int at = 0;
  for (int k = 0; k < 255; k++) {
    w1 += hist[k];
    s1 += (double)hist[k] * k;
    uint64_t w2 = total - w1;
    if (w1 == 0 || w2 == 0) continue;
    double m1 = s1 / (double)w1, m2 = (stotal - s1) / (double)w2;
    double var = (double)w1 * (double)w2 * (m1 - m2) * (m1 - m2);
    if (var > best) best = var, at = k;
  }
  return 256u * (uint32_t)at + 128u;
}

typedef struct {
  int64_t h, w;
  int nch;
  const uint16_t *ch[PLATE_MAX_CHANNELS];
} image;

/* Every pixel has the same value: a blank well, a saturated or zero-filled field. */
static bool constant(const uint16_t *v, int64_t n) {
  for (int64_t i = 1; i < n; i++)
    if (v[i] != v[0]) return false;
  return true;
}

void identify_reset(identify_result *r) {
  r->threshold = 0;
  r->npix = r->fg_px = r->objects = r->area_sum = 0;
  memset(r->sum, 0, sizeof r->sum);
  memset(r->obj_sum, 0, sizeof r->obj_sum);
}

VECTOR static uint64_t sum_u16(const uint16_t *restrict v, int64_t n) {
  uint64_t s = 0;
  for (int64_t at = 0; at < n; at += 1 << 16) { /* 2^16 values of 2^16 - 1 fit 32 bits */
    int64_t end = n - at < 1 << 16 ? n : at + (1 << 16);
    uint32_t k = 0;
    for (int64_t i = at; i < end; i++) k += v[i];
    s += k;
  }
  return s;
}

/* ---- the foreground as bits ------------------------------------------------------------------ */
/* Bit x % 64 of word x / 64 is set where v[x] >= t, for one row of w pixels; the bits past w in
 * the last word are clear. Returns how many are set. */
typedef int64_t row_bits_fn(uint64_t *b, const uint16_t *v, int64_t w, uint16_t t);

static int64_t row_bits_c(uint64_t *b, const uint16_t *v, int64_t w, uint16_t t) {
  int64_t set = 0;
  for (int64_t x0 = 0; x0 < w; x0 += 64) {
    int64_t m = w - x0 < 64 ? w - x0 : 64;
    uint64_t word = 0;
    for (int64_t k = 0; k < m; k++) word |= (uint64_t)(v[x0 + k] >= t) << k;
    b[x0 / 64] = word;
    set += __builtin_popcountll(word);
  }
  return set;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86_BITS 1

/* 32 pixels a compare, straight into a mask register; the rest as above. */
__attribute__((target("avx512f,avx512bw,popcnt"))) static int64_t row_bits_avx512(uint64_t *b, const uint16_t *v,
                                                                                 int64_t w, uint16_t t) {
  const __m512i tv = _mm512_set1_epi16((short)t);
  int64_t x0 = 0, set = 0;
  for (; x0 + 64 <= w; x0 += 64) {
    uint64_t lo = _mm512_cmpge_epu16_mask(_mm512_loadu_si512(v + x0), tv);
    uint64_t hi = _mm512_cmpge_epu16_mask(_mm512_loadu_si512(v + x0 + 32), tv);
    b[x0 / 64] = lo | hi << 32;
    set += _mm_popcnt_u64(b[x0 / 64]);
  }
  return x0 < w ? set + row_bits_c(b + x0 / 64, v + x0, w - x0, t) : set;
}

/* 16 pixels a compare (v >= t where max(v, t) == v); two compares packed to bytes, put back in
 * order (pack works within 128-bit lanes) and their top bits taken. */
__attribute__((target("avx2,popcnt"))) static int64_t row_bits_avx2(uint64_t *b, const uint16_t *v, int64_t w,
                                                                   uint16_t t) {
  const __m256i tv = _mm256_set1_epi16((short)t);
  int64_t x0 = 0, set = 0;
  for (; x0 + 64 <= w; x0 += 64) {
    uint64_t word = 0;
    for (int half = 0; half < 2; half++) {
      const uint16_t *p = v + x0 + 32 * half;
      __m256i a = _mm256_loadu_si256((const __m256i *)p), c = _mm256_loadu_si256((const __m256i *)(p + 16));
      a = _mm256_cmpeq_epi16(_mm256_max_epu16(a, tv), a);
      c = _mm256_cmpeq_epi16(_mm256_max_epu16(c, tv), c);
      __m256i bytes = _mm256_permute4x64_epi64(_mm256_packs_epi16(a, c), 0xd8);
      word |= (uint64_t)(uint32_t)_mm256_movemask_epi8(bytes) << (32 * half);
    }
    b[x0 / 64] = word;
    set += _mm_popcnt_u64(word);
  }
  return x0 < w ? set + row_bits_c(b + x0 / 64, v + x0, w - x0, t) : set;
}
#endif

static row_bits_fn *row_bits(void) {
#ifdef HAVE_X86_BITS
  int isa = vector_isa();
  if (isa == VECTOR_AVX512) return row_bits_avx512;
  if (isa == VECTOR_AVX2) return row_bits_avx2;
#endif
  return row_bits_c;
}

/* ---- objects from runs ------------------------------------------------------------------------ */
/* A run is a row's foreground from x0 up to x1 (excluded). link is first the union-find parent
 * (a run with a smaller index in the same object, or itself), then the object's number. Runs are
 * made in raster order, and a union keeps the smaller index as the root, so an object's root is
 * its first run, which holds its first pixel: numbering roots in order numbers objects in
 * raster order of their first pixel. */
typedef struct {
  int32_t x0, x1, y, link;
} run;

/* How many runs the rows of bits hold: the set bits whose left neighbour is clear. */
static int64_t count_runs(const uint64_t *b, int64_t h, int64_t nw) {
  int64_t k = 0;
  for (int64_t y = 0; y < h; y++) {
    uint64_t carry = 0; /* the last bit of the word to the left */
    for (int64_t i = y * nw; i < (y + 1) * nw; i++) {
      k += __builtin_popcountll(b[i] & ~(b[i] << 1 | carry));
      carry = b[i] >> 63;
    }
  }
  return k;
}

/* The runs of one row of nw words of bits, appended at out, in order; returns how many. */
static int64_t row_runs(const uint64_t *b, int64_t nw, int32_t y, run *out) {
  int64_t k = 0, i = 0;
  uint64_t word = nw > 0 ? b[0] : 0; /* the bits of word i not yet in a run */
  while (i < nw) {
    if (word == 0) {
      if (++i < nw) word = b[i];
      continue;
    }
    int64_t x0 = i * 64 + __builtin_ctzll(word), x1;
    uint64_t zeros = ~word & (~0ull << __builtin_ctzll(word)); /* clear bits at or after the start */
    while (zeros == 0 && i + 1 < nw) zeros = ~(word = b[++i]);  /* the run goes on into the next word */
    if (zeros == 0) { /* ... to the end of the row (only where w is a multiple of 64) */
      x1 = (i + 1) * 64;
      word = 0;
    } else {
      int z = __builtin_ctzll(zeros);
      x1 = i * 64 + z;
      word &= ~0ull << z; /* bit z is clear: what is left starts after it */
    }
    out[k++] = (run){.x0 = (int32_t)x0, .x1 = (int32_t)x1, .y = y, .link = 0};
  }
  return k;
}

static int32_t root_of(run *r, int32_t i) {
  while (r[i].link != i) {
    r[i].link = r[r[i].link].link; /* path halving */
    i = r[i].link;
  }
  return i;
}

static void unite(run *r, int32_t a, int32_t b) {
  a = root_of(r, a);
  b = root_of(r, b);
  if (a < b) r[b].link = a;
  else if (b < a) r[a].link = b;
}

/* Joins each run of a row, [cb, ce), to the runs of the row above, [pb, pe), that touch it:
 * 8-connected, [a, b) above touches [x0, x1) where a <= x1 and x0 <= b. Both rows are in order,
 * so runs above that end left of one run end left of every later one. */
static void join_rows(run *r, int64_t pb, int64_t pe, int64_t cb, int64_t ce) {
  int64_t j = pb;
  for (int64_t i = cb; i < ce; i++) {
    r[i].link = (int32_t)i;
    while (j < pe && r[j].x1 < r[i].x0) j++;
    for (int64_t k = j; k < pe && r[k].x0 <= r[i].x1; k++) unite(r, (int32_t)i, (int32_t)k);
  }
}

/* Every run's link becomes -1 - its object's number; returns how many objects. A run's parent
 * comes before it, so it has its number already when the run is reached. */
static int64_t number_objects(run *r, int64_t nruns) {
  int64_t nobj = 0;
  for (int64_t i = 0; i < nruns; i++) r[i].link = r[i].link == i ? (int32_t)(-1 - nobj++) : r[r[i].link].link;
  return nobj;
}

/* The objects' areas, then for each the index it is kept at (r->objects before it), or -1 where
 * it is under the minimum size. */
static int keep_objects(identify_result *r, const run *runs, int64_t nruns, int64_t *obj, int64_t nobj) {
  for (int64_t k = 0; k < nobj; k++) obj[k] = 0;
  for (int64_t i = 0; i < nruns; i++) obj[-1 - runs[i].link] += runs[i].x1 - runs[i].x0;
  int64_t kept = 0;
  for (int64_t k = 0; k < nobj; k++) kept += obj[k] >= r->p->min_area;
  if (r->want_objects && kept > r->cap) {
    screen_object *more = realloc(r->objs, sizeof *more * (size_t)kept);
    if (more == NULL) return AB_ENOMEM;
    r->objs = more, r->cap = kept;
  }
  for (int64_t k = 0; k < nobj; k++) {
    if (obj[k] < r->p->min_area) {
      obj[k] = -1;
      continue;
    }
    if (r->want_objects) r->objs[r->objects] = (screen_object){.area = obj[k]};
    r->area_sum += obj[k];
    obj[k] = r->objects++;
  }
  return 0;
}

/* The kept objects' sums, run by run. */
static void measure_runs(identify_result *r, const image *m, const run *runs, int64_t nruns, const int64_t *obj) {
  for (int64_t i = 0; i < nruns; i++) {
    int64_t k = obj[-1 - runs[i].link], x0 = runs[i].x0, x1 = runs[i].x1, len = x1 - x0;
    if (k < 0) continue;
    screen_object *o = r->want_objects ? &r->objs[k] : NULL;
    for (int c = 0; c < m->nch; c++) {
      const uint16_t *row = m->ch[c] + (int64_t)runs[i].y * m->w;
      uint64_t s = 0;
      for (int64_t x = x0; x < x1; x++) s += row[x];
      r->obj_sum[c] += s;
      if (o) o->sum[c] += s;
    }
    if (o) {
      o->sum_x += (x0 + x1 - 1) * len / 2;
      o->sum_y += (int64_t)runs[i].y * len;
    }
  }
}

/* Labels the foreground of rows of bits and measures the objects. */
static int objects(ab_ctx *c, identify_result *r, const image *m, const uint64_t *bits, int64_t nw) {
  int64_t nruns = count_runs(bits, m->h, nw), *obj;
  if (nruns == 0) return 0;
  run *runs;
  int rc = ab_ctx_alloc(c, (size_t)nruns * sizeof *runs, (void **)&runs);
  if (rc == 0) rc = ab_ctx_alloc(c, (size_t)nruns * sizeof *obj, (void **)&obj);
  if (rc != 0) return rc;
  int64_t above = 0, at = 0; /* the row above's runs start at above, this row's at at */
  for (int64_t y = 0; y < m->h; y++) {
    int64_t k = row_runs(bits + y * nw, nw, (int32_t)y, runs + at);
    join_rows(runs, above, at, at, at + k);
    above = at;
    at += k;
  }
  assert(at == nruns);
  int64_t nobj = number_objects(runs, nruns);
  if ((rc = keep_objects(r, runs, nruns, obj, nobj)) != 0) return rc;
  measure_runs(r, m, runs, nruns, obj);
  return 0;
}

int identify_task(ab_ctx *c, void *arg) {
  identify_result *r = arg;
  identify_reset(r); /* a task may run again after the OOM ladder parked it */
  if (ab_ctx_ninputs(c) != 1 + r->nchannels) return AB_EINVAL;
  image m = {.nch = r->nchannels};
  const DLTensor *seg = ab_tensor_dl(ab_ctx_input(c, 0));
  if (seg->ndim != 2 || seg->dtype.bits != 16) return AB_ESHAPE;
  m.h = seg->shape[0], m.w = seg->shape[1];
  for (int k = 0; k <= r->nchannels; k++) {
    ab_tensor *t = ab_ctx_input(c, k);
    const DLTensor *x = ab_tensor_dl(t);
    if (x->ndim != 2 || x->shape[0] != m.h || x->shape[1] != m.w || !ab_tensor_is_contiguous(t)) return AB_ESHAPE;
    if (k > 0) m.ch[k - 1] = data_of(t);
  }
  int64_t n = m.h * m.w, nw = (m.w + 63) / 64;
  if (n > INT32_MAX) return AB_ESHAPE; /* runs hold their coordinates and indices in 32 bits */
  uint64_t *bits;
  int rc = ab_ctx_alloc(c, (size_t)(m.h * nw) * sizeof *bits, (void **)&bits);
  if (rc != 0) return rc;
  const uint16_t *v = data_of(ab_ctx_input(c, 0));
  const uint64_t *counted = r->counted && r->counted->counted ? r->counted->otsu : NULL;
  r->threshold = r->p->otsu ? otsu(v, n, counted) : (uint32_t)lround(r->p->threshold * 65535);
  if (r->threshold > 65535) return AB_EINVAL; /* a manual threshold is at most 1 */
  for (int k = 0; k < r->nchannels; k++) r->sum[k] = sum_u16(m.ch[k], n);
  r->npix = n;
  /* Nothing stands out of a constant image, whatever its threshold: Otsu's is its one value
   * (scikit-image's, CellProfiler's), and keeping pixels >= it would make the whole field one
   * object, which CellProfiler's border filter then drops. */
  if (constant(v, n)) return 0;
  row_bits_fn *to_bits = row_bits();
  for (int64_t y = 0; y < m.h; y++) r->fg_px += to_bits(bits + y * nw, v + y * m.w, m.w, (uint16_t)r->threshold);
  return r->fg_px > 0 ? objects(c, r, &m, bits, nw) : 0;
}
