/*
 * cli/plate_synth.c: synthetic plates. A stack is cells as 3D Gaussian blobs (3-7 px wide, as a
 * widefield camera sees nuclei at 20x) on a background with a gentle gradient, with Poisson
 * noise; how many cells a well has follows its column, like a dose series. Channel 1 is the
 * nuclei; further channels see the same cells, wider and dimmer, with a brightness that also
 * follows the column (a marker measured inside the nuclei). Everything is drawn from a generator
 * seeded by (seed, image, channel), so any stack can be made alone, on any thread, in any order,
 * and a plate is the same on every run.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/plate.h"

/* ---- random numbers ------------------------------------------------------------------------- */
static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static double uniform(uint64_t *s) { return (double)(splitmix(s) >> 11) * 0x1.0p-53; }

#define NORMALS 4096
static float normals[NORMALS]; /* standard normal deviates, Box-Muller from a fixed seed */
static pthread_once_t normals_once = PTHREAD_ONCE_INIT;

static void init_normals(void) {
  uint64_t s = 12345;
  for (int i = 0; i < NORMALS; i += 2) {
    double u = uniform(&s) + 1e-12, v = uniform(&s), r = sqrt(-2 * log(u));
    normals[i] = (float)(r * cos(2 * M_PI * v));
    normals[i + 1] = (float)(r * sin(2 * M_PI * v));
  }
}

/* Poisson(lambda): Knuth's product for small means, the normal approximation above. */
static uint16_t poisson(uint64_t *s, double lambda) {
  double v;
  if (lambda < 20) {
    double l = exp(-lambda), p = uniform(s);
    int k = 0;
    while (p > l && k < 100) {
      p *= uniform(s);
      k++;
    }
    v = k;
  } else {
    v = lambda + sqrt(lambda) * normals[splitmix(s) % NORMALS] + 0.5;
  }
  return v < 0 ? 0 : v > 65535 ? 65535 : (uint16_t)v;
}

/* ---- the plate ------------------------------------------------------------------------------ */
int plate_synthetic(plate *p, int wells, int sites, int channels, int z, int h, int w, uint64_t seed) {
  memset(p, 0, sizeof *p);
  pthread_once(&normals_once, init_normals);
  plate_format(wells, &p->rows, &p->cols);
  p->images = calloc((size_t)wells * (size_t)sites, sizeof *p->images);
  if (p->images == NULL) return -1;
  for (int i = 0; i < wells; i++)
    for (int s = 0; s < sites; s++) {
      plate_image *im = &p->images[p->n++];
      im->row = i / p->cols, im->col = i % p->cols;
      plate_well_name(im->row, im->col, im->well, sizeof im->well);
      im->site = s + 1, im->timepoint = 1;
    }
  p->nchannels = channels;
  for (int c = 0; c < channels; c++) {
    p->channel_id[c] = c + 1;
    snprintf(p->channel_name[c], sizeof p->channel_name[c], "%d", c + 1);
  }
  p->synthetic = true;
  p->z = z, p->h = h, p->w = w;
  p->seed = seed;
  return 0;
}

/* ---- stacks --------------------------------------------------------------------------------- */
typedef struct {
  double x, y, z, sxy, sz, amp;
} cell;

/* Adds one cell's blob to the float volume: separable, so one exp per axis and pixel. */
static void add_cell(float *vol, int nz, int h, int w, const cell *c, float *gx, float *gy) {
  int r = (int)ceil(3 * c->sxy);
  int x0 = (int)c->x - r, y0 = (int)c->y - r, n = 2 * r + 1;
  for (int i = 0; i < n; i++) {
    double dx = x0 + i - c->x, dy = y0 + i - c->y;
    gx[i] = (float)exp(-dx * dx / (2 * c->sxy * c->sxy));
    gy[i] = (float)exp(-dy * dy / (2 * c->sxy * c->sxy));
  }
  for (int z = 0; z < nz; z++) {
    double dz = z - c->z;
    float a = (float)(c->amp * exp(-dz * dz / (2 * c->sz * c->sz)));
    if (a < 1) continue;
    for (int j = 0; j < n; j++) {
      int y = y0 + j;
      if (y < 0 || y >= h) continue;
      float *row = vol + ((size_t)z * h + y) * w;
      for (int i = 0; i < n; i++) {
        int x = x0 + i;
        if (x >= 0 && x < w) row[x] += a * gy[j] * gx[i];
      }
    }
  }
}

/* Channel c of image i into the slices. Channel 0 is the nuclei; others the marker. */
static int synth(const plate *p, int i, int c, uint16_t **slices) {
  int nz = p->z, h = p->h, w = p->w;
  int gl = 2 * (w + h) + 128; /* one blob's axis profiles, up to 2 * ceil(3 * 7 * 1.8) + 1 each */
  float *vol = calloc((size_t)nz * h * w, sizeof *vol), *g = malloc(sizeof *g * (size_t)gl);
  if (vol == NULL || g == NULL) {
    free(vol);
    free(g);
    return -1;
  }
  uint64_t s = p->seed * 0x100000001b3ull + (uint64_t)i;
  int col = p->images[i].col + 1;
  /* cells per 512x512 field: 20 to 85, rising with the column */
  int ncells = (int)((20 + 5 * (col % 12) + splitmix(&s) % 10) * (double)w * h / (512.0 * 512.0)) + 2;
  double dose = 0.5 + (double)(col % 12) / 11.0; /* the marker's brightness, 0.5x to 1.5x */
  for (int k = 0; k < ncells; k++) {
    cell e = {.x = uniform(&s) * w, .y = uniform(&s) * h, .z = nz * (0.3 + 0.4 * uniform(&s)),
              .sxy = 3 + 4 * uniform(&s), .sz = 1 + nz * 0.15 * uniform(&s), .amp = 600 + 2400 * uniform(&s)};
    double mark = uniform(&s); /* drawn for every channel, so all channels see the same cells */
    if (c > 0) {
      e.sxy *= 1.8;
      e.amp *= 0.3 * dose * (0.5 + mark);
    }
    add_cell(vol, nz, h, w, &e, g, g + gl / 2);
  }
  uint64_t noise = s ^ (0x9e3779b97f4a7c15ull * (uint64_t)c);
  double base = c == 0 ? 100 : 200;
  for (int z = 0; z < nz; z++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        double bg = base + 20.0 * x / w + 10.0 * y / h; /* uneven illumination */
        slices[z][(size_t)y * w + x] = poisson(&noise, bg + vol[((size_t)z * h + y) * w + x]);
      }
  free(vol);
  free(g);
  return 0;
}

int plate_synth_load(const plate *p, int i, int c, plate_stack *out); /* for plate_tiff.c */

int plate_synth_load(const plate *p, int i, int c, plate_stack *out) {
  out->z = p->z, out->h = p->h, out->w = p->w;
  out->slices = calloc((size_t)p->z, sizeof *out->slices);
  for (int k = 0; out->slices && k < p->z; k++)
    if ((out->slices[k] = malloc((size_t)p->h * p->w * sizeof(uint16_t))) == NULL) break;
  if (out->slices && out->slices[p->z - 1] && synth(p, i, c, out->slices) == 0) return 0;
  plate_stack_free(out);
  return -1;
}
