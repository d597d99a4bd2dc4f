/* cli/plate.h: a plate of z-stacks: a folder of multi-page TIFFs, or a synthetic one. */
#ifndef AB_CLI_PLATE_H
#define AB_CLI_PLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
  char well[16];                  /* "A01" */
  int site;                       /* from 1 */
  char *path;                     /* the TIFF (malloc'd); NULL on a synthetic plate */
} plate_image;

typedef struct {
  int n;
  plate_image *images;
  bool synthetic;
  int z, h, w;                    /* synthetic: the size; TIFF: 0 (each file says) */
  uint64_t seed;
} plate;

/* wells x sites stacks of z slices of h x w, from seed. 0 or -1 (out of memory). */
int plate_synthetic(plate *p, int wells, int sites, int z, int h, int w, uint64_t seed);
/* Every *.tif / *.tiff in dir, sorted by name; "A01_s2.tif" is well A01, site 2, any other
 * name is its own well, site 1. 0, or -1 with a message in err. */
int plate_open_dir(plate *p, const char *dir, char *err, size_t errlen);
void plate_free(plate *p);

/* Image i as *z slices of *h x *w uint16, each malloc'd (free with plate_free_slices).
 * 0, or -1 with a message in err (unreadable file, not 16-bit unsigned, pages that differ). */
int plate_load(const plate *p, int i, uint16_t ***slices, int *z, int *h, int *w, char *err, size_t errlen);
void plate_free_slices(uint16_t **slices, int z);

/* Writes z slices as one multi-page TIFF, at 16 bits (or 8: the top byte, for testing the
 * reader's dtype check). 0, or -1 with a message. */
int plate_write_tiff(const char *path, uint16_t *const *slices, int z, int h, int w, int bits, char *err,
                     size_t errlen);

#endif
