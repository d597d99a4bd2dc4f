/*
 * cli/identify.c: the host's part of every image (see identify.h).
 *
 * Foreground is a few percent of a typical image, so the time goes to the passes over every
 * pixel, not to the objects: Otsu's histogram (four interleaved counts, so that runs of equal
 * values do not wait on one counter), then one pass that writes the mask and counts it, the
 * channels' sums in blocks of 32-bit lanes, and the search for seeds eight mask bytes at a time.
 * Objects are still flooded one at a time from their first pixel in raster order, so they come
 * out numbered as before.
 */
#include "cli/identify.h"

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

static uint32_t otsu(const uint16_t *v, int64_t n) {
  uint64_t hist[256];
  otsu_histogram(v, n, hist);
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
  uint8_t *left;           /* foreground not yet in an object */
  int32_t *stack;
} image;

/* The 8-connected object at pixel i: its pixels leave `left`, its sums go to o. */
static void flood(image *m, int64_t i, screen_object *o) {
  int64_t top = 0, w = m->w, h = m->h;
  memset(o, 0, sizeof *o);
  m->stack[top++] = (int32_t)i;
  m->left[i] = 0;
  while (top > 0) {
    int64_t q = m->stack[--top], y = (uint32_t)q / (uint32_t)w, x = q - y * w; /* n < 2^31: 32-bit division */
    o->area++;
    o->sum_x += x, o->sum_y += y;
    for (int c = 0; c < m->nch; c++) o->sum[c] += m->ch[c][q];
    for (int64_t yy = y > 0 ? y - 1 : 0; yy <= y + 1 && yy < h; yy++)
      for (int64_t xx = x > 0 ? x - 1 : 0; xx <= x + 1 && xx < w; xx++)
        if (m->left[yy * w + xx]) {
          m->left[yy * w + xx] = 0;
          m->stack[top++] = (int32_t)(yy * w + xx);
        }
  }
}

/* Every pixel has the same value: a blank well, a saturated or zero-filled field. */
static bool constant(const uint16_t *v, int64_t n) {
  for (int64_t i = 1; i < n; i++)
    if (v[i] != v[0]) return false;
  return true;
}

static int keep(identify_result *r, const screen_object *o) {
  r->objects++;
  r->area_sum += o->area;
  for (int c = 0; c < r->nchannels; c++) r->obj_sum[c] += o->sum[c];
  if (!r->want_objects) return 0;
  if (r->objects > r->cap) {
    int64_t cap = r->cap ? 2 * r->cap : 64;
    screen_object *more = realloc(r->objs, sizeof *more * (size_t)cap);
    if (more == NULL) return AB_ENOMEM;
    r->objs = more, r->cap = cap;
  }
  r->objs[r->objects - 1] = *o;
  return 0;
}

void identify_reset(identify_result *r) {
  r->threshold = 0;
  r->npix = r->fg_px = r->objects = r->area_sum = 0;
  memset(r->sum, 0, sizeof r->sum);
  memset(r->obj_sum, 0, sizeof r->obj_sum);
}

/* m[i] = v[i] >= t; returns how many are set. */
VECTOR static int64_t mask(uint8_t *restrict m, const uint16_t *restrict v, int64_t n, uint16_t t) {
  int64_t set = 0;
  for (int64_t at = 0; at < n; at += 1 << 16) { /* a 32-bit count per block */
    int64_t end = n - at < 1 << 16 ? n : at + (1 << 16);
    uint32_t k = 0;
    for (int64_t i = at; i < end; i++) {
      uint8_t b = v[i] >= t;
      m[i] = b;
      k += b;
    }
    set += k;
  }
  return set;
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

/* The first set mask byte at or after i, or n. */
static int64_t next_set(const uint8_t *m, int64_t i, int64_t n) {
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    memcpy(&word, m + i, sizeof word);
    if (word != 0) break;
  }
  while (i < n && !m[i]) i++;
  return i;
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
  int64_t n = m.h * m.w;
  if (n > INT32_MAX) return AB_ESHAPE; /* the flood's stack holds pixel indices in 32 bits */
  int rc = ab_ctx_alloc(c, (size_t)n, (void **)&m.left);
  if (rc == 0) rc = ab_ctx_alloc(c, (size_t)n * sizeof *m.stack, (void **)&m.stack);
  if (rc != 0) return rc;
  const uint16_t *v = data_of(ab_ctx_input(c, 0));
  r->threshold = r->p->otsu ? otsu(v, n) : (uint32_t)lround(r->p->threshold * 65535);
  if (r->threshold > 65535) return AB_EINVAL; /* a manual threshold is at most 1 */
  /* Nothing stands out of a constant image, whatever its threshold: Otsu's is its one value
   * (scikit-image's, CellProfiler's), and keeping pixels >= it would make the whole field one
   * object, which CellProfiler's border filter then drops. */
  if (constant(v, n)) {
    memset(m.left, 0, (size_t)n);
    r->fg_px = 0;
  } else {
    r->fg_px = mask(m.left, v, n, (uint16_t)r->threshold);
  }
  for (int k = 0; k < r->nchannels; k++) r->sum[k] = sum_u16(m.ch[k], n);
  r->npix = n;
  for (int64_t i = next_set(m.left, 0, n); i < n; i = next_set(m.left, i + 1, n)) {
    screen_object o;
    flood(&m, i, &o);
    if (o.area >= r->p->min_area && (rc = keep(r, &o)) != 0) return rc;
  }
  return 0;
}
