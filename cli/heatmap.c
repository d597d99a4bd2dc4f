/*
 * cli/heatmap.c: the plate heatmap, a PNG drawn and encoded here (zlib's deflate and CRC, no
 * image library): one cell per well holding the mean of a chosen column over the well's ok
 * rows, on the viridis scale, row letters and column numbers around it, a colour bar with its
 * range, the column's name on top. Wells without rows are grey; wells whose every row failed
 * are grey with a red cross.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cli/output.h"

/* ---- a 5x7 font: digits, capitals (lower case is drawn as capitals) and some punctuation ---- */
static const char glyph_chars[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.-_+:/%(),=";
static const uint8_t glyphs[][7] = {
    {14, 17, 19, 21, 25, 17, 14}, {4, 12, 4, 4, 4, 4, 14},     {14, 17, 1, 2, 4, 8, 31},
    {31, 2, 4, 2, 1, 17, 14},     {2, 6, 10, 18, 31, 2, 2},    {31, 16, 30, 1, 1, 17, 14},
    {6, 8, 16, 30, 17, 17, 14},   {31, 1, 2, 4, 8, 8, 8},      {14, 17, 17, 14, 17, 17, 14},
    {14, 17, 17, 15, 1, 2, 12},   {14, 17, 17, 17, 31, 17, 17}, {30, 17, 17, 30, 17, 17, 30},
    {14, 17, 16, 16, 16, 17, 14}, {28, 18, 17, 17, 17, 18, 28}, {31, 16, 16, 30, 16, 16, 31},
    {31, 16, 16, 30, 16, 16, 16}, {14, 17, 16, 23, 17, 17, 15}, {17, 17, 17, 31, 17, 17, 17},
    {14, 4, 4, 4, 4, 4, 14},      {7, 2, 2, 2, 2, 18, 12},     {17, 18, 20, 24, 20, 18, 17},
    {16, 16, 16, 16, 16, 16, 31}, {17, 27, 21, 21, 17, 17, 17}, {17, 17, 25, 21, 19, 17, 17},
    {14, 17, 17, 17, 17, 17, 14}, {30, 17, 17, 30, 16, 16, 16}, {14, 17, 17, 17, 21, 18, 13},
    {30, 17, 17, 30, 20, 18, 17}, {15, 16, 16, 14, 1, 1, 30},   {31, 4, 4, 4, 4, 4, 4},
    {17, 17, 17, 17, 17, 17, 14}, {17, 17, 17, 17, 17, 10, 4}, {17, 17, 17, 21, 21, 21, 10},
    {17, 17, 10, 4, 10, 17, 17},  {17, 17, 17, 10, 4, 4, 4},   {31, 1, 2, 4, 8, 16, 31},
    {0, 0, 0, 0, 0, 12, 12},      {0, 0, 0, 31, 0, 0, 0},      {0, 0, 0, 0, 0, 0, 31},
    {0, 4, 4, 31, 4, 4, 0},       {0, 12, 12, 0, 12, 12, 0},   {0, 1, 2, 4, 8, 16, 0},
    {24, 25, 2, 4, 8, 19, 3},     {2, 4, 8, 8, 8, 4, 2},       {8, 4, 2, 2, 2, 4, 8},
    {0, 0, 0, 0, 12, 4, 8},       {0, 0, 31, 0, 31, 0, 0},
};

typedef struct {
  int w, h;
  uint8_t *rgb;
} canvas;

static void put(canvas *c, int x, int y, const uint8_t col[3]) {
  if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
  memcpy(c->rgb + ((size_t)y * c->w + x) * 3, col, 3);
}

static void fill(canvas *c, int x0, int y0, int w, int h, const uint8_t col[3]) {
  for (int y = y0; y < y0 + h; y++)
    for (int x = x0; x < x0 + w; x++) put(c, x, y, col);
}

/* Text at (x, y), `scale` pixels per font pixel; returns its width. */
static int text(canvas *c, int x, int y, const char *s, int scale, const uint8_t col[3]) {
  int x0 = x;
  for (; *s; s++, x += 6 * scale) {
    char ch = (char)(*s >= 'a' && *s <= 'z' ? *s - 32 : *s);
    const char *at = strchr(glyph_chars, ch);
    if (ch == ' ' || at == NULL || ch == 0) continue;
    const uint8_t *g = glyphs[at - glyph_chars];
    for (int gy = 0; gy < 7; gy++)
      for (int gx = 0; gx < 5; gx++)
        if (g[gy] >> (4 - gx) & 1) fill(c, x + gx * scale, y + gy * scale, scale, scale, col);
  }
  return x - x0;
}

static int text_width(const char *s, int scale) { return (int)strlen(s) * 6 * scale; }

/* viridis at t in [0, 1], from nine of its colours */
static void viridis(double t, uint8_t out[3]) {
  static const uint8_t v[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},  {44, 113, 142}, {33, 144, 141},
                                  {39, 173, 129}, {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
  t = t < 0 ? 0 : t > 1 ? 1 : t;
  double f = t * 8;
  int i = f >= 8 ? 7 : (int)f;
  f -= i;
  for (int k = 0; k < 3; k++) out[k] = (uint8_t)lround(v[i][k] + f * (v[i + 1][k] - v[i][k]));
}

/* ---- PNG ------------------------------------------------------------------------------------ */
static void be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

static int chunk(FILE *f, const char *type, const uint8_t *data, uint32_t len) {
  uint8_t head[8];
  be32(head, len);
  memcpy(head + 4, type, 4);
  uLong crc = crc32(0, head + 4, 4);
  if (len) crc = crc32(crc, data, len);
  uint8_t tail[4];
  be32(tail, (uint32_t)crc);
  return fwrite(head, 8, 1, f) == 1 && (len == 0 || fwrite(data, len, 1, f) == 1) && fwrite(tail, 4, 1, f) == 1 ? 0
                                                                                                             : -1;
}

/* An 8-bit RGB PNG: every row with filter 0, one zlib stream in one IDAT. */
static int write_png(const char *path, const canvas *c) {
  size_t row = (size_t)c->w * 3 + 1, raw_len = row * (size_t)c->h;
  uint8_t *raw = malloc(raw_len);
  uLongf zlen = compressBound((uLong)raw_len);
  uint8_t *z = malloc(zlen);
  int rc = raw && z ? 0 : -1;
  if (rc == 0) {
    for (int y = 0; y < c->h; y++) {
      raw[y * row] = 0;
      memcpy(raw + y * row + 1, c->rgb + (size_t)y * c->w * 3, row - 1);
    }
    rc = compress2(z, &zlen, raw, (uLong)raw_len, 9) == Z_OK ? 0 : -1;
  }
  FILE *f = rc == 0 ? fopen(path, "wb") : NULL;
  if (f) {
    static const uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    uint8_t ihdr[13];
    be32(ihdr, (uint32_t)c->w);
    be32(ihdr + 4, (uint32_t)c->h);
    ihdr[8] = 8, ihdr[9] = 2, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0; /* 8-bit RGB, no interlace */
    rc = fwrite(sig, 8, 1, f) == 1 ? 0 : -1;
    if (rc == 0) rc = chunk(f, "IHDR", ihdr, 13);
    if (rc == 0) rc = chunk(f, "IDAT", z, (uint32_t)zlen);
    if (rc == 0) rc = chunk(f, "IEND", NULL, 0);
    if (fclose(f) != 0) rc = -1;
  } else {
    rc = -1;
  }
  free(raw);
  free(z);
  return rc;
}

/* ---- the plate's values --------------------------------------------------------------------- */
typedef struct {
  double sum[PLATE_MAX_ROWS][PLATE_MAX_COLS];
  int ok[PLATE_MAX_ROWS][PLATE_MAX_COLS], rows[PLATE_MAX_ROWS][PLATE_MAX_COLS];
} well_values;

static int column_index(const char *header, const char *column) {
  int i = 0;
  for (const char *s = header; s; s = strchr(s, ','), s = s ? s + 1 : NULL, i++) {
    size_t n = strcspn(s, ",\n");
    if (n == strlen(column) && strncmp(s, column, n) == 0) return i;
  }
  return -1;
}

/* Field i of a CSV line (fields before the quoted error hold no commas). */
static const char *field(const char *line, int i) {
  for (; i > 0 && line; i--) line = strchr(line, ',') ? strchr(line, ',') + 1 : NULL;
  return line;
}

static int read_values(const screen_output *o, well_values *v, char *err, size_t errlen) {
  FILE *f = fopen(o->csv, "r");
  if (f == NULL) {
    snprintf(err, errlen, "cannot read %s: %s", o->csv, strerror(errno));
    return -1;
  }
  char *line = NULL;
  size_t cap = 0;
  int col = -1;
  if (getline(&line, &cap, f) > 0) col = column_index(line, o->column);
  while (col >= 0 && getline(&line, &cap, f) > 0) {
    plate_fields w;
    char well[8];
    if (sscanf(line, "%7[A-Za-z0-9],", well) != 1 || !plate_match("{well}", well, &w)) continue;
    v->rows[w.row][w.col]++;
    const char *st = field(line, 4), *val = field(line, col);
    if (st && strncmp(st, "ok,", 3) == 0 && val && *val != ',') {
      v->sum[w.row][w.col] += strtod(val, NULL);
      v->ok[w.row][w.col]++;
    }
  }
  free(line);
  fclose(f);
  if (col < 0) snprintf(err, errlen, "%s has no column %s", o->csv, o->column);
  return col < 0 ? -1 : 0;
}

/* ---- drawing -------------------------------------------------------------------------------- */
static const uint8_t white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, grey[3] = {200, 200, 200},
                     red[3] = {200, 30, 30}, line_grey[3] = {150, 150, 150};

static void draw_cells(canvas *c, const plate *p, const well_values *v, int x0, int y0, int cell, double lo,
                       double hi) {
  for (int r = 0; r < p->rows; r++)
    for (int k = 0; k < p->cols; k++) {
      int x = x0 + k * cell, y = y0 + r * cell;
      uint8_t col[3];
      if (v->ok[r][k]) viridis(hi > lo ? (v->sum[r][k] / v->ok[r][k] - lo) / (hi - lo) : 0.5, col);
      else memcpy(col, grey, 3);
      fill(c, x + 1, y + 1, cell - 1, cell - 1, col);
      if (v->rows[r][k] && !v->ok[r][k])
        for (int d = 2; d < cell - 2; d++) put(c, x + d, y + d, red), put(c, x + cell - d, y + d, red);
    }
  for (int r = 0; r <= p->rows; r++) fill(c, x0, y0 + r * cell, p->cols * cell + 1, 1, line_grey);
  for (int k = 0; k <= p->cols; k++) fill(c, x0 + k * cell, y0, 1, p->rows * cell + 1, line_grey);
}

static void draw_labels(canvas *c, const plate *p, int x0, int y0, int cell, int scale) {
  char s[16];
  for (int r = 0; r < p->rows; r++) {
    plate_well_name(r, 0, s, sizeof s);
    s[strlen(s) - 2] = 0; /* the row letters */
    text(c, x0 - 4 - text_width(s, scale), y0 + r * cell + (cell - 7 * scale) / 2, s, scale, black);
  }
  for (int k = 0; k < p->cols; k++) {
    snprintf(s, sizeof s, "%d", k + 1);
    if (text_width(s, scale) > cell && k % 2) continue; /* crowded: every other column */
    text(c, x0 + k * cell + (cell - text_width(s, scale)) / 2, y0 - 4 - 7 * scale, s, scale, black);
  }
}

static void draw_bar(canvas *c, int x, int y, int h, double lo, double hi, int scale) {
  for (int i = 0; i < h; i++) {
    uint8_t col[3];
    viridis(1.0 - (double)i / (h - 1), col);
    fill(c, x, y + i, 16, 1, col);
  }
  char s[32];
  snprintf(s, sizeof s, "%.4g", hi);
  text(c, x + 22, y, s, scale, black);
  snprintf(s, sizeof s, "%.4g", lo);
  text(c, x + 22, y + h - 7 * scale, s, scale, black);
}

int output_heatmap(const screen_output *o, const plate *p, char *err, size_t errlen) {
  well_values *v = calloc(1, sizeof *v);
  if (v == NULL || read_values(o, v, err, errlen) != 0) {
    if (v == NULL) snprintf(err, errlen, "out of memory");
    free(v);
    return -1;
  }
  double lo = INFINITY, hi = -INFINITY;
  for (int r = 0; r < p->rows; r++)
    for (int k = 0; k < p->cols; k++)
      if (v->ok[r][k]) {
        double m = v->sum[r][k] / v->ok[r][k];
        lo = m < lo ? m : lo, hi = m > hi ? m : hi;
      }
  if (lo > hi) lo = hi = 0;
  int cell = p->cols <= 12 ? 40 : p->cols <= 24 ? 26 : 16, scale = cell >= 26 ? 2 : 1;
  int left = 12 + 12 * scale, top = 16 + 20 * scale, gw = p->cols * cell + 1, gh = p->rows * cell + 1;
  canvas c = {.w = left + gw + 24 + 16 + 11 * 6 * scale, .h = top + gh + 12};
  c.rgb = malloc((size_t)c.w * c.h * 3);
  if (c.rgb == NULL) {
    free(v);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  memset(c.rgb, 255, (size_t)c.w * c.h * 3);
  fill(&c, 0, 0, 1, 1, white);
  text(&c, left, 6, o->column, scale, black);
  draw_labels(&c, p, left, top, cell, scale);
  draw_cells(&c, p, v, left, top, cell, lo, hi);
  draw_bar(&c, left + gw + 16, top, gh, lo, hi, scale);
  int rc = write_png(o->heatmap, &c);
  if (rc != 0) snprintf(err, errlen, "cannot write %s: %s", o->heatmap, strerror(errno ? errno : EIO));
  free(c.rgb);
  free(v);
  return rc;
}
