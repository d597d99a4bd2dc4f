/*
 * cli/steps_pixel.h: the CUDA steps' arithmetic and tiling, one pixel (or one thread) at a time.
 *
 * Written once for cli/steps_cuda.cu's kernels and for tests/test_cuda_screen_logic.c, which
 * runs the same functions on the host, arranged as the kernels arrange them (the same tiles, the
 * same scan steps, the same packed pairs), against the host steps (cli/steps_host.c) on a
 * machine without a GPU. Plain C for the host, __host__ __device__ under nvcc. The rules are
 * steps.h's; every value is an integer, so every device gives the same bits.
 */
#ifndef AB_CLI_STEPS_PIXEL_H
#define AB_CLI_STEPS_PIXEL_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __CUDACC__
#define SP_FN static __host__ __device__ __forceinline__
#else
#define SP_FN static inline
#endif

#define SP_ONE 16384u      /* steps.h's SCREEN_WEIGHT_ONE: the filter's weights sum to this */
#define SP_MAX_RADIUS 64   /* steps.h's SCREEN_MAX_RADIUS */
#define SP_THREADS 256     /* threads of every block */
#define SP_NONE 0xffffffffu

/* ---- project: the maximum over z, two pixels of a 32-bit word at a time ----------------------- */
SP_FN uint32_t sp_max2(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __vmaxu2(a, b);
#else
  uint32_t lo = (a & 0xffffu) > (b & 0xffffu) ? a & 0xffffu : b & 0xffffu;
  uint32_t hi = (a >> 16) > (b >> 16) ? a >> 16 : b >> 16;
  return lo | hi << 16;
#endif
}

/* Pixel k (0 to 7) of a 16-byte load, as four 32-bit words: the lower half of a word is the
 * pixel before (little-endian). */
SP_FN uint32_t sp_pixel(const uint32_t word[4], int k) { return (word[k / 2] >> (16 * (k % 2))) & 0xffffu; }

/* ---- filter ------------------------------------------------------------------------------------
 * Two passes over shared-memory tiles. Rows: a block of SP_ROW_BX x SP_ROW_ROWS threads takes
 * SP_ROW_ROWS rows of SP_ROW_TILE pixels, each thread SP_ROW_TILE / SP_ROW_BX of them, SP_ROW_BX
 * apart; its tile holds each row's pixels with r more on either side. Columns: a block of
 * SP_COL_BX x SP_COL_BY threads takes SP_COL_TILE rows of SP_COL_BX columns, each thread
 * SP_COL_TILE / SP_COL_BY rows, SP_COL_BY apart; its tile holds SP_COL_TILE + 2r rows. Taps past
 * the image read 0 from the tile, so the weighted sum needs no bounds; only where the window is
 * cut is the weight sum anything but SP_ONE, and only there is there a division. */
#define SP_ROW_BX 128
#define SP_ROW_ROWS 2
#define SP_ROW_TILE 512
#define SP_COL_BX 64
#define SP_COL_BY 4
#define SP_COL_TILE 32

/* What a tile holds for position `at` of a line of n pixels, `stride` elements apart. */
SP_FN uint16_t sp_tap(const uint16_t *line, int64_t stride, int64_t at, int64_t n) {
  return at >= 0 && at < n ? line[at * stride] : 0;
}

/* The filter at position `at` of a line of n: c is that pixel in a tile whose taps are `stride`
 * apart, w the weights (w[0] the centre), r the radius. */
SP_FN uint16_t sp_filter_at(const uint16_t *c, int stride, const uint32_t *w, int r, int64_t at, int64_t n) {
  uint32_t a = w[0] * c[0];
  for (int i = 1; i <= r; i++) a += w[i] * ((uint32_t)c[-i * stride] + c[i * stride]);
  if (at >= r && at + r < n) return (uint16_t)((a + SP_ONE / 2) >> 14);
  uint32_t s = w[0];
  for (int i = 1; i <= r; i++) s += (at - i >= 0 ? w[i] : 0) + (at + i < n ? w[i] : 0);
  return (uint16_t)((a + s / 2) / s);
}

/* Rows. Thread tx's share of loading one row of the tile: the pixels of `line` (w of them) from
 * x0 - r on, consecutive threads on consecutive pixels. */
SP_FN void sp_row_load(uint16_t *tile, const uint16_t *line, int64_t x0, int r, int64_t w, int tx) {
  for (int j = tx; j < SP_ROW_TILE + 2 * r; j += SP_ROW_BX) tile[j] = sp_tap(line, 1, x0 - r + j, w);
}

/* Thread tx's outputs in one row, from the loaded tile. */
SP_FN void sp_row_out(const uint16_t *tile, uint16_t *out_line, int64_t x0, const uint32_t *wt, int r, int64_t w, int tx) {
  for (int k = 0; k < SP_ROW_TILE / SP_ROW_BX; k++) {
    int64_t x = x0 + tx + (int64_t)k * SP_ROW_BX;
    if (x < w) out_line[x] = sp_filter_at(tile + r + (x - x0), 1, wt, r, x, w);
  }
}

/* Columns. The tile is SP_COL_TILE + 2r rows of SP_COL_BX; thread (tx, ty) loads column x (zeros
 * where x is past the image's right edge) from row y0 - r on, every SP_COL_BY-th row: a warp's
 * threads read consecutive pixels of one row. */
SP_FN void sp_col_load(uint16_t *tile, const uint16_t *in, int64_t x, int64_t y0, int r, int64_t h, int64_t w, int tx,
                       int ty) {
  for (int j = ty; j < SP_COL_TILE + 2 * r; j += SP_COL_BY)
    tile[j * SP_COL_BX + tx] = x < w ? sp_tap(in + x, w, y0 - r + j, h) : 0;
}

/* Thread (tx, ty)'s outputs in column x, from the loaded tile. */
SP_FN void sp_col_out(const uint16_t *tile, uint16_t *out, int64_t x, int64_t y0, const uint32_t *wt, int r, int64_t h,
                      int64_t w, int tx, int ty) {
  if (x >= w) return;
  for (int k = 0; k < SP_COL_TILE / SP_COL_BY; k++) {
    int64_t y = y0 + ty + (int64_t)k * SP_COL_BY;
    if (y < h) out[y * w + x] = sp_filter_at(tile + (r + (y - y0)) * SP_COL_BX + tx, SP_COL_BX, wt, r, y, h);
  }
}

/* ---- normalise ---------------------------------------------------------------------------------
 * The percentiles in two small histograms, as steps_percentiles() finds them from 65536 bins:
 * counts of the values' high bytes; then, inside the high-byte bin where each rank falls, counts
 * of the low bytes. A block of 256 threads, one a bin, scans each histogram (Hillis-Steele, in
 * 64-bit sums); the one thread whose bin holds a rank names it. */
typedef struct {
  uint32_t high[256];   /* counts of the high bytes */
  uint32_t low[2][256]; /* counts of the low bytes of the values in bin[k] (k: 0 lo, 1 hi) */
  uint64_t before[2];   /* values whose high byte is below bin[k] */
  uint32_t bin[2];      /* the high-byte bin that holds rank k; SP_NONE: the rank is past the end */
  uint32_t lohi[2];     /* lo and hi, for the scaling */
} sp_scratch;

/* The ranks of steps_percentiles (host side: no division on the GPU). */
SP_FN void sp_ranks(uint64_t n, uint32_t p_lo, uint32_t p_hi, uint64_t rank[2]) {
  rank[0] = n * p_lo / 1000;
  rank[1] = n * p_hi / 1000;
}

/* The value thread t of pick_low names: the low byte t inside high-byte bin `bin`. */
SP_FN int32_t sp_value(uint32_t bin, int t) { return (int32_t)(bin * 256 + (uint32_t)t); }

/* One step of the block's inclusive scan: what thread t holds after it. */
SP_FN uint64_t sp_scan_step(const uint64_t *in, int t, int d) { return in[t] + (t >= d ? in[t - d] : 0); }

/* Whether a bin with `before` values below it and `count` in it is the first whose cumulative
 * count exceeds rank. At most one bin is. */
SP_FN bool sp_holds(uint64_t before, uint32_t count, uint64_t rank) { return before <= rank && rank - before < count; }

/* lo and hi from the values found (-1: none), as steps_percentiles' loop ends: it stops at hi,
 * so a lo past hi is never reached (0); then its defaults and flat-image rule. */
SP_FN void sp_finish(int32_t found_lo, int32_t found_hi, uint32_t *lo, uint32_t *hi) {
  uint32_t l = found_lo >= 0 && (found_hi < 0 || found_lo <= found_hi) ? (uint32_t)found_lo : 0;
  uint32_t h = found_hi >= 0 ? (uint32_t)found_hi : 65535;
  if (h <= l) h = l + 1;
  *lo = l;
  *hi = h;
}

SP_FN uint16_t sp_scale(uint32_t v, uint32_t lo, uint32_t hi) {
  if (v <= lo) return 0;
  if (v >= hi) return 65535;
  return (uint16_t)((v - lo) * 65535u / (hi - lo)); /* < 2^32: a 32-bit division */
}

SP_FN uint32_t sp_scale2(uint32_t pair, uint32_t lo, uint32_t hi) {
  return sp_scale(pair & 0xffffu, lo, hi) | (uint32_t)sp_scale(pair >> 16, lo, hi) << 16;
}

#endif
