/*
 * cli/plate.h: a plate of images as labs have them. An image is one site of one well (at one
 * timepoint); it has one or more channels, and each channel is a z-stack, stored either as the
 * pages of one TIFF or as one TIFF per plane. A plate is a folder whose file names follow a
 * pattern with named fields (plate_layout), or a synthetic plate made on the fly.
 */
#ifndef AB_CLI_PLATE_H
#define AB_CLI_PLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PLATE_MAX_CHANNELS 8
#define PLATE_MAX_ROWS 32 /* A..Z, AA..AF: a 1536-well plate */
#define PLATE_MAX_COLS 48

/* ---- layouts -------------------------------------------------------------------------------- */
/* A file-name pattern, matched against each TIFF's path relative to the plate folder with its
 * .tif/.tiff extension removed. Literal text matches case-insensitively; fields:
 *   {well}      a row (1-2 letters) and a column (1-3 digits): B03, AF48, b3
 *   {row}       1-2 letters, or 1-based digits          {col}, {column}  1-based digits
 *   {site}, {channel}, {z}, {timepoint}                 digits
 *   {NAME:N}    exactly N digits                        {*}  any text, shortest first
 *   [ ... ]     optional: matched if it can be, skipped otherwise
 * Without {z}, a channel's planes are the pages of one file; with it, one file per plane. */
typedef struct {
  const char *name;        /* "simple", ...; NULL for a user's --pattern */
  const char *pattern;
  const char *example;     /* a file name it matches, for messages */
} plate_layout;

extern const plate_layout plate_layouts[]; /* the presets, ending with {NULL} */
const plate_layout *plate_layout_named(const char *name);

/* Fields a layout's pattern can fill; -1 where the name has none. */
typedef struct {
  int row, col, site, channel, z, timepoint; /* row, col from 0; the others as written */
} plate_fields;

/* Whether `name` (a relative path without extension) matches `pattern`, and its fields. */
bool plate_match(const char *pattern, const char *name, plate_fields *f);
/* NULL when the pattern is well formed, else why not (a static string). */
const char *plate_pattern_error(const char *pattern);

/* ---- plates --------------------------------------------------------------------------------- */
typedef struct {
  char *path;              /* pages mode: the file; NULL when the channel is missing */
  char **planes;           /* planes mode: nplanes files, by z */
  int nplanes;
} plate_source;

typedef struct {
  char well[8];            /* "A01", "AF48" */
  int row, col;            /* from 0 */
  int site, timepoint;     /* from 1 */
  plate_source src[PLATE_MAX_CHANNELS];
  char *error;             /* found while scanning (duplicate file, missing channel or plane):
                              the image becomes an error row without being read */
} plate_image;

typedef struct {
  int n;
  plate_image *images;     /* by well (row, column), site, timepoint */
  int nchannels;
  int channel_id[PLATE_MAX_CHANNELS];       /* as the file names number them */
  char channel_name[PLATE_MAX_CHANNELS][12];/* "1", "2": column suffixes */
  int rows, cols;          /* the plate format: 8x12, 16x24 or 32x48 */
  bool synthetic;
  int z, h, w;             /* synthetic: every stack's size */
  uint64_t seed;
  const plate_layout *layout;
  bool planes_per_file;    /* the layout has {z} */
  int nmatched, nunmatched;
  char **unmatched;        /* the first few TIFF names that matched no layout (for messages) */
  int nunmatched_kept;
} plate;

/* The plate format that holds `wells` wells (96, 384, 1536) and the name of well i in it. */
void plate_format(int wells, int *rows, int *cols);
void plate_well_name(int row, int col, char *out, size_t n);

/* wells x sites synthetic stacks of z slices of h x w, in `channels` channels. 0, or -1. */
int plate_synthetic(plate *p, int wells, int sites, int channels, int z, int h, int w, uint64_t seed);
/* Every TIFF under dir (three folder levels deep) whose name matches the layout: a preset's
 * name, a pattern of one's own (`pattern`), or, with both NULL, the preset that matches most.
 * 0, or -1 with a message in err (folder unreadable, nothing matches, a bad pattern). */
int plate_open_dir(plate *p, const char *dir, const char *layout, const char *pattern, char *err,
                   size_t errlen);
void plate_free(plate *p);

/* ---- stacks --------------------------------------------------------------------------------- */
typedef struct {
  int z, h, w;
  uint16_t **slices;       /* z planes of h x w, each malloc'd */
} plate_stack;

/* Channel c of image i, read and checked on its own: every plane 16-bit unsigned grey, striped,
 * the same size as the first, readable to the end; want_z > 0: exactly that many planes.
 * 0, or -1 with a one-line reason in err. */
int plate_load(const plate *p, int i, int c, int want_z, plate_stack *out, char *err, size_t errlen);
void plate_stack_free(plate_stack *s);

/* Writes planes [z0, z1) of s as one multi-page TIFF at 16 bits (or 8: the top byte, for testing
 * the reader's checks). 0, or -1 with a message. */
int plate_write_tiff(const char *path, const plate_stack *s, int z0, int z1, int bits, char *err, size_t errlen);

#endif
