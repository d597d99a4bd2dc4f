/*
 * cli/plate_tiff.c: reading a channel's z-stack (the pages of one TIFF, or one TIFF per plane)
 * and checking it on its own, and writing stacks for make-plate. Every problem is one line that
 * names the file and the page: it becomes the image's error row.
 *
 * libtiff reports errors through a process-wide handler; each thread keeps its last message in
 * a thread-local buffer, so stacks can be read on several workers at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <tiffio.h>
#include <unistd.h>

#include "cli/plate.h"

static _Thread_local char tiff_msg[256];

static void tiff_error(const char *module, const char *fmt, va_list ap) {
  (void)module;
  vsnprintf(tiff_msg, sizeof tiff_msg, fmt, ap);
}

static void tiff_quiet(void) {
  TIFFSetErrorHandler(tiff_error);
  TIFFSetWarningHandler(NULL);
}

static const char *base(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

/* Checks the current page: 16-bit unsigned grey, striped, and h x w when *h is set. */
static int check_page(TIFF *t, const char *path, int page, uint32_t *h, uint32_t *w, char *err, size_t errlen) {
  uint32_t pw = 0, ph = 0;
  uint16_t bits = 0, spp = 1, fmt = SAMPLEFORMAT_UINT;
  TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &pw);
  TIFFGetField(t, TIFFTAG_IMAGELENGTH, &ph);
  TIFFGetFieldDefaulted(t, TIFFTAG_BITSPERSAMPLE, &bits);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLESPERPIXEL, &spp);
  TIFFGetFieldDefaulted(t, TIFFTAG_SAMPLEFORMAT, &fmt);
  if (bits != 16 || spp != 1 || fmt != SAMPLEFORMAT_UINT) {
    snprintf(err, errlen, "%s page %d is %u-bit, %u sample(s), format %u: need 16-bit unsigned grey", base(path),
             page + 1, bits, spp, fmt);
    return -1;
  }
  if (TIFFIsTiled(t)) {
    snprintf(err, errlen, "%s page %d is tiled: only striped TIFFs are read", base(path), page + 1);
    return -1;
  }
  if (pw == 0 || ph == 0 || pw > 65536 || ph > 65536) {
    snprintf(err, errlen, "%s page %d is %ux%u: not an image size this reads", base(path), page + 1, pw, ph);
    return -1;
  }
  if (*h && (ph != *h || pw != *w)) {
    snprintf(err, errlen, "%s page %d is %ux%u, the stack's first plane is %ux%u", base(path), page + 1, pw, ph, *w,
             *h);
    return -1;
  }
  *h = ph, *w = pw;
  return 0;
}

/* The current page into dst, strip by strip (libtiff decodes compressed strips). */
static int read_page(TIFF *t, const char *path, int page, uint16_t *dst, uint32_t h, uint32_t w, char *err,
                     size_t errlen) {
  uint32_t rps = h;
  TIFFGetFieldDefaulted(t, TIFFTAG_ROWSPERSTRIP, &rps);
  if (rps == 0 || rps > h) rps = h;
  tstrip_t strips = TIFFNumberOfStrips(t);
  size_t row = (size_t)w * sizeof *dst;
  for (tstrip_t s = 0; s < strips; s++) {
    uint32_t y0 = s * rps, rows = y0 + rps > h ? h - y0 : rps;
    if (y0 >= h) break;
    tmsize_t want = (tmsize_t)(rows * row);
    if (TIFFReadEncodedStrip(t, s, (char *)dst + y0 * row, want) != want) {
      snprintf(err, errlen, "%s page %d, rows %u-%u unreadable (truncated?)%s%s", base(path), page + 1, y0,
               y0 + rows - 1, tiff_msg[0] ? ": " : "", tiff_msg);
      return -1;
    }
  }
  return 0;
}

static uint16_t **alloc_slices(int z, size_t plane) {
  uint16_t **s = calloc((size_t)z, sizeof *s);
  for (int i = 0; s && i < z; i++)
    if ((s[i] = malloc(plane)) == NULL) {
      for (int k = 0; k < i; k++) free(s[k]);
      free(s);
      return NULL;
    }
  return s;
}

/* ---- file access: libtiff reads through a mapping made with MAP_POPULATE, so the whole file
 * is mapped in one call instead of one page fault per 4 KiB (or one read() per strip). */
static int fd_of(thandle_t h) { return (int)(intptr_t)h; }

static tmsize_t t_read(thandle_t h, void *buf, tmsize_t n) {
  tmsize_t done = 0;
  while (done < n) {
    ssize_t k = read(fd_of(h), (char *)buf + done, (size_t)(n - done));
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    done += k;
  }
  return done;
}

static tmsize_t t_write(thandle_t h, void *buf, tmsize_t n) {
  (void)h, (void)buf, (void)n;
  return -1;
}

static toff_t t_seek(thandle_t h, toff_t off, int whence) { return (toff_t)lseek(fd_of(h), (off_t)off, whence); }
static int t_close(thandle_t h) { return close(fd_of(h)); }

static toff_t t_size(thandle_t h) {
  struct stat st;
  return fstat(fd_of(h), &st) == 0 ? (toff_t)st.st_size : 0;
}

static int t_map(thandle_t h, void **base, toff_t *size) {
  *size = t_size(h);
  if (*size == 0) return 0;
  *base = mmap(NULL, (size_t)*size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd_of(h), 0);
  return *base != MAP_FAILED;
}

static void t_unmap(thandle_t h, void *base, toff_t size) {
  (void)h;
  munmap(base, (size_t)size);
}

static TIFF *open_read(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(tiff_msg, sizeof tiff_msg, "%s", strerror(errno));
    return NULL;
  }
  TIFF *t = TIFFClientOpen(path, "r", (thandle_t)(intptr_t)fd, t_read, t_write, t_seek, t_close, t_size, t_map,
                           t_unmap);
  if (t == NULL) close(fd);
  return t;
}

/* Opens path: *pages is the length of its chain of pages (read once, for the page-number check). */
static TIFF *open_tiff(const char *path, int *pages, char *err, size_t errlen) {
  tiff_quiet();
  tiff_msg[0] = 0;
  TIFF *t = open_read(path);
  if (t == NULL) {
    snprintf(err, errlen, "%s is not a readable TIFF: %s", base(path), tiff_msg[0] ? tiff_msg : "cannot open");
    return NULL;
  }
  int n = TIFFNumberOfDirectories(t);
  uint16_t page = 0, total = 0;
  if (tiff_msg[0]) { /* the chain of pages breaks off: a truncated or damaged file */
    snprintf(err, errlen, "%s: page %d of the file unreadable (truncated?): %s", base(path), n + 1, tiff_msg);
  } else if (n == 0) {
    snprintf(err, errlen, "%s has no pages", base(path));
  } else if (!TIFFSetDirectory(t, 0)) {
    snprintf(err, errlen, "%s page 1 unreadable: %s", base(path), tiff_msg);
  } else if (TIFFGetField(t, TIFFTAG_PAGENUMBER, &page, &total) && total > 1 && total != n) {
    snprintf(err, errlen, "%s has %d pages, its page numbers say %u (truncated?)", base(path), n, total);
  } else {
    *pages = n;
    return t;
  }
  TIFFClose(t);
  return NULL;
}

/* Pages [0, n) of t, in order (TIFFReadDirectory steps along the chain), checked and read into
 * s->slices[z0 ...], allocating the stack at its first plane. */
static int read_pages(TIFF *t, const char *path, int n, plate_stack *s, int z0, int nz, char *err, size_t errlen) {
  uint32_t h = (uint32_t)s->h, w = (uint32_t)s->w;
  for (int i = 0; i < n; i++) {
    if (i > 0 && !TIFFReadDirectory(t)) {
      snprintf(err, errlen, "%s page %d unreadable: %s", base(path), i + 1, tiff_msg);
      return -1;
    }
    if (check_page(t, path, i, &h, &w, err, errlen) != 0) return -1;
    if (s->slices == NULL) {
      s->z = nz, s->h = (int)h, s->w = (int)w;
      if ((s->slices = alloc_slices(nz, (size_t)h * w * sizeof(uint16_t))) == NULL) {
        snprintf(err, errlen, "out of memory for %s", base(path));
        return -1;
      }
    }
    if (read_page(t, path, i, s->slices[z0 + i], h, w, err, errlen) != 0) return -1;
  }
  return 0;
}

static int load_pages(const char *path, plate_stack *s, char *err, size_t errlen) {
  int pages;
  TIFF *t = open_tiff(path, &pages, err, errlen);
  if (t == NULL) return -1;
  int rc = read_pages(t, path, pages, s, 0, pages, err, errlen);
  TIFFClose(t);
  return rc;
}

static int load_planes(const plate_source *src, plate_stack *s, char *err, size_t errlen) {
  for (int z = 0; z < src->nplanes; z++) {
    int pages;
    TIFF *t = open_tiff(src->planes[z], &pages, err, errlen);
    if (t == NULL) return -1;
    int rc = 0;
    if (pages != 1) {
      snprintf(err, errlen, "%s has %d pages: a plane file holds one", base(src->planes[z]), pages);
      rc = -1;
    }
    if (rc == 0) rc = read_pages(t, src->planes[z], 1, s, z, src->nplanes, err, errlen);
    TIFFClose(t);
    if (rc != 0) return -1;
  }
  return 0;
}

int plate_synth_load(const plate *p, int i, int c, plate_stack *out); /* plate_synth.c */

int plate_load(const plate *p, int i, int c, int want_z, plate_stack *out, char *err, size_t errlen) {
  err[0] = 0;
  memset(out, 0, sizeof *out);
  if (p->synthetic) {
    if (plate_synth_load(p, i, c, out) == 0) return 0;
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  const plate_source *src = &p->images[i].src[c];
  int rc = src->path ? load_pages(src->path, out, err, errlen) : load_planes(src, out, err, errlen);
  if (rc == 0 && want_z > 0 && out->z != want_z) {
    snprintf(err, errlen, "%s has %d planes, --z says %d", base(src->path ? src->path : src->planes[0]), out->z,
             want_z);
    rc = -1;
  }
  if (rc != 0) plate_stack_free(out);
  return rc;
}

int plate_write_tiff(const char *path, const plate_stack *s, int z0, int z1, int bits, char *err, size_t errlen) {
  tiff_quiet();
  tiff_msg[0] = 0;
  TIFF *t = TIFFOpen(path, "w");
  if (t == NULL) {
    snprintf(err, errlen, "cannot create %s: %s", path, tiff_msg);
    return -1;
  }
  int h = s->h, w = s->w;
  uint8_t *row8 = malloc((size_t)w);
  int rc = row8 ? 0 : -1;
  for (int k = z0; k < z1 && rc == 0; k++) {
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, (uint32_t)w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, (uint32_t)h);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, (uint16_t)bits);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)1);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, (uint16_t)SAMPLEFORMAT_UINT);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, (uint16_t)PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_PLANARCONFIG, (uint16_t)PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, (uint32_t)16);
    TIFFSetField(t, TIFFTAG_SUBFILETYPE, (uint32_t)FILETYPE_PAGE);
    TIFFSetField(t, TIFFTAG_PAGENUMBER, (uint16_t)(k - z0), (uint16_t)(z1 - z0));
    for (int y = 0; y < h && rc == 0; y++) {
      const uint16_t *src = s->slices[k] + (size_t)y * w;
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
