/*
 * cli/plate.c: plates. A synthetic stack is cells as 3D Gaussian blobs (a few microns: 3-8 px
 * at 512 px) on a background with a gentle gradient, with Poisson noise, as a widefield camera
 * sees them (3-7 px wide, as at 20x); how many cells a well has follows its column, like a
 * dose series. Everything is
 * drawn from a generator seeded by (seed, image), so any image can be made alone and in any
 * order, and a plate is the same on every run.
 */
#define _GNU_SOURCE /* asprintf */
#include "cli/plate.h"

#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <tiffio.h>

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

static void init_normals(void) {
  if (normals[1] != 0) return;
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

/* ---- plates --------------------------------------------------------------------------------- */
static void well_name(int i, int wells, char *out, size_t n) {
  int cols = wells > 96 ? 24 : 12;
  snprintf(out, n, "%c%02d", 'A' + (i / cols) % 26, i % cols + 1);
}

int plate_synthetic(plate *p, int wells, int sites, int z, int h, int w, uint64_t seed) {
  memset(p, 0, sizeof *p);
  p->images = calloc((size_t)wells * (size_t)sites, sizeof *p->images);
  if (p->images == NULL) return -1;
  for (int i = 0; i < wells; i++)
    for (int s = 0; s < sites; s++) {
      plate_image *im = &p->images[p->n++];
      well_name(i, wells, im->well, sizeof im->well);
      im->site = s + 1;
    }
  p->synthetic = true;
  p->z = z, p->h = h, p->w = w;
  p->seed = seed;
  return 0;
}

static int by_path(const void *a, const void *b) {
  return strcmp(((const plate_image *)a)->path, ((const plate_image *)b)->path);
}

static bool is_tiff(const char *name) {
  const char *dot = strrchr(name, '.');
  return dot && (strcasecmp(dot, ".tif") == 0 || strcasecmp(dot, ".tiff") == 0);
}

/* "A01_s2.tif": well A01, site 2; anything else: the name without its extension, site 1. */
static void parse_name(const char *name, plate_image *im) {
  char well[16];
  int site;
  char rest[8];
  if (sscanf(name, "%15[A-Za-z0-9]_s%d.%7s", well, &site, rest) == 3) {
    snprintf(im->well, sizeof im->well, "%s", well);
    im->site = site;
    return;
  }
  snprintf(im->well, sizeof im->well, "%.*s", (int)(strrchr(name, '.') - name), name);
  im->site = 1;
}

int plate_open_dir(plate *p, const char *dir, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  DIR *d = opendir(dir);
  if (d == NULL) {
    snprintf(err, errlen, "cannot open plate folder %s: %m", dir);
    return -1;
  }
  int cap = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!is_tiff(e->d_name)) continue;
    if (p->n == cap) {
      cap = cap ? cap * 2 : 64;
      plate_image *more = realloc(p->images, sizeof *more * (size_t)cap);
      if (more == NULL) break;
      p->images = more;
    }
    plate_image *im = &p->images[p->n];
    memset(im, 0, sizeof *im);
    if (asprintf(&im->path, "%s/%s", dir, e->d_name) < 0) break;
    parse_name(e->d_name, im);
    p->n++;
  }
  closedir(d);
  if (p->n == 0) {
    snprintf(err, errlen, "no .tif or .tiff files in %s", dir);
    plate_free(p);
    return -1;
  }
  qsort(p->images, (size_t)p->n, sizeof *p->images, by_path);
  return 0;
}

void plate_free(plate *p) {
  for (int i = 0; i < p->n; i++) free(p->images[i].path);
  free(p->images);
  memset(p, 0, sizeof *p);
}

void plate_free_slices(uint16_t **slices, int z) {
  for (int i = 0; slices && i < z; i++) free(slices[i]);
  free(slices);
}

static uint16_t **alloc_slices(int z, int h, int w) {
  uint16_t **s = calloc((size_t)z, sizeof *s);
  for (int i = 0; s && i < z; i++) {
    s[i] = malloc((size_t)h * (size_t)w * sizeof **s);
    if (s[i] == NULL) {
      plate_free_slices(s, i);
      return NULL;
    }
  }
  return s;
}

/* ---- synthetic stacks ----------------------------------------------------------------------- */
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

static int synth(const plate *p, int i, uint16_t **slices) {
  int nz = p->z, h = p->h, w = p->w;
  init_normals();
  float *vol = calloc((size_t)nz * h * w, sizeof *vol);
  float *g = malloc(sizeof *g * 2 * (size_t)(w + h + 64));
  if (vol == NULL || g == NULL) {
    free(vol);
    free(g);
    return -1;
  }
  uint64_t s = p->seed * 0x100000001b3ull + (uint64_t)i;
  int col = 0;
  sscanf(p->images[i].well + 1, "%d", &col);
  /* cells per 512x512 field: 20 to 85, rising with the column */
  int ncells = (int)((20 + 5 * (col % 12) + splitmix(&s) % 10) * (double)w * h / (512.0 * 512.0)) + 2;
  for (int k = 0; k < ncells; k++) {
    cell c = {.x = uniform(&s) * w, .y = uniform(&s) * h, .z = nz * (0.3 + 0.4 * uniform(&s)),
              .sxy = 3 + 4 * uniform(&s), .sz = 1 + nz * 0.15 * uniform(&s), .amp = 600 + 2400 * uniform(&s)};
    add_cell(vol, nz, h, w, &c, g, g + w + h + 32);
  }
  for (int z = 0; z < nz; z++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        double bg = 100 + 20.0 * x / w + 10.0 * y / h; /* uneven illumination */
        slices[z][(size_t)y * w + x] = poisson(&s, bg + vol[((size_t)z * h + y) * w + x]);
      }
  free(vol);
  free(g);
  return 0;
}

/* ---- TIFF ----------------------------------------------------------------------------------- */
static _Thread_local char tiff_msg[256];

static void tiff_error(const char *module, const char *fmt, va_list ap) {
  vsnprintf(tiff_msg, sizeof tiff_msg, fmt, ap);
}

static void tiff_quiet(void) {
  TIFFSetErrorHandler(tiff_error);
  TIFFSetWarningHandler(NULL);
}

/* Checks the current page: 16-bit unsigned, one sample, strips, and h x w when *h is set. */
static int check_page(TIFF *t, int page, uint32_t *h, uint32_t *w, char *err, size_t errlen) {
  uint32_t pw = 0, ph = 0;
  uint16_t bits = 0, spp = 1, fmt = SAMPLEFORMAT_UINT;
  TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &pw);
  TIFFGetField(t, TIFFTAG_IMAGELENGTH, &ph);
  TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt);
  if (bits != 16 || spp != 1 || fmt != SAMPLEFORMAT_UINT) {
    snprintf(err, errlen, "page %d is %u-bit, %u sample(s), format %u: need 16-bit unsigned grey", page + 1,
             bits, spp, fmt);
    return -1;
  }
  if (TIFFIsTiled(t)) {
    snprintf(err, errlen, "page %d is tiled: only striped TIFFs are read", page + 1);
    return -1;
  }
  if (*h && (ph != *h || pw != *w)) {
    snprintf(err, errlen, "page %d is %ux%u, page 1 is %ux%u", page + 1, pw, ph, *w, *h);
    return -1;
  }
  *h = ph, *w = pw;
  return 0;
}

static int read_page(TIFF *t, int page, uint16_t *dst, uint32_t h, uint32_t w, char *err, size_t errlen) {
  for (uint32_t y = 0; y < h; y++)
    if (TIFFReadScanline(t, dst + (size_t)y * w, y, 0) < 0) {
      snprintf(err, errlen, "page %d, row %u unreadable (truncated?): %s", page + 1, y, tiff_msg);
      return -1;
    }
  return 0;
}

static int load_tiff(const char *path, uint16_t ***out, int *z, int *h, int *w, char *err, size_t errlen) {
  tiff_quiet();
  tiff_msg[0] = 0;
  TIFF *t = TIFFOpen(path, "r");
  if (t == NULL) {
    snprintf(err, errlen, "not a readable TIFF: %s", tiff_msg[0] ? tiff_msg : "cannot open");
    return -1;
  }
  int pages = TIFFNumberOfDirectories(t);
  uint32_t ph = 0, pw = 0;
  for (int i = 0; i < pages; i++)
    if (!TIFFSetDirectory(t, (uint16_t)i) || check_page(t, i, &ph, &pw, err, errlen) != 0) {
      if (!err[0]) snprintf(err, errlen, "page %d unreadable: %s", i + 1, tiff_msg);
      TIFFClose(t);
      return -1;
    }
  uint16_t **s = pages > 0 ? alloc_slices(pages, (int)ph, (int)pw) : NULL;
  int rc = s ? 0 : -1;
  if (s == NULL) snprintf(err, errlen, "%s", pages > 0 ? "out of memory" : "no pages");
  for (int i = 0; i < pages && rc == 0; i++)
    rc = TIFFSetDirectory(t, (uint16_t)i) ? read_page(t, i, s[i], ph, pw, err, errlen) : -1;
  TIFFClose(t);
  if (rc != 0) {
    if (!err[0]) snprintf(err, errlen, "unreadable: %s", tiff_msg);
    plate_free_slices(s, pages);
    return -1;
  }
  *out = s, *z = pages, *h = (int)ph, *w = (int)pw;
  return 0;
}

int plate_load(const plate *p, int i, uint16_t ***slices, int *z, int *h, int *w, char *err, size_t errlen) {
  err[0] = 0;
  if (!p->synthetic) return load_tiff(p->images[i].path, slices, z, h, w, err, errlen);
  uint16_t **s = alloc_slices(p->z, p->h, p->w);
  if (s == NULL || synth(p, i, s) != 0) {
    plate_free_slices(s, s ? p->z : 0);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  *slices = s, *z = p->z, *h = p->h, *w = p->w;
  return 0;
}

int plate_write_tiff(const char *path, uint16_t *const *slices, int z, int h, int w, int bits, char *err,
                     size_t errlen) {
  tiff_quiet();
  TIFF *t = TIFFOpen(path, "w");
  if (t == NULL) {
    snprintf(err, errlen, "cannot create %s: %s", path, tiff_msg);
    return -1;
  }
  uint8_t *row8 = malloc((size_t)w);
  int rc = row8 ? 0 : -1;
  for (int k = 0; k < z && rc == 0; k++) {
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)bits);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, (uint16_t)SAMPLEFORMAT_UINT);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, (uint16_t)PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, (uint16_t)PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, (uint32_t)16);
    TIFFSetField(t, TIFFTAG_SUBFILETYPE, (uint32_t)FILETYPE_PAGE);
    TIFFSetField(t, TIFFTAG_PAGENUMBER, (uint16_t)k, (uint16_t)z);
    for (int y = 0; y < h && rc == 0; y++) {
      const uint16_t *src = slices[k] + (size_t)y * w;
      void *row = (void *)src;
      if (bits == 8) {
        for (int x = 0; x < w; x++) row8[x] = (uint8_t)(src[x] >> 8);
        row = row8;
      }
      if (TIFFWriteScanline(t, row, (uint32_t)y, 0) < 0) rc = -1;
    }
    if (rc == 0 && !TIFFWriteDirectory(t)) rc = -1;
  }
  free(row8);
  TIFFClose(t);
  if (rc != 0) snprintf(err, errlen, "writing %s failed: %s", path, tiff_msg[0] ? tiff_msg : "out of memory");
  return rc;
}
