/*
 * devices/opencl/source.c: the OpenCL C program, generated once per device at start.
 *
 * One kernel per (source, target) dtype pair, each using the OpenCL built-in whose semantics
 * match the host reference exactly: convert_T_sat_rtz for floats to integers (truncate, clamp,
 * NaN -> 0), convert_T_sat for integers, convert_T (round to nearest) for float targets, and
 * x != 0 for bool. Stretch kernels compute (x - lo) / span * range + min in double with
 * contraction off, as the host does, so results match bit for bit; the minmax kernels find
 * [lo, hi] over the finite values only, as the host does (infinities then saturate).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devices/opencl/opencl.h"

const ab__cl_type ab__cl_types[AB__CL_NTYPES] = {
    {"u8", "uchar", 'u', 0, 255.0},
    {"u16", "ushort", 'u', 0, 65535.0},
    {"u32", "uint", 'u', 0, 4294967295.0},
    {"u64", "ulong", 'u', 0, 18446744073709551615.0},
    {"i8", "char", 'i', -128.0, 127.0},
    {"i16", "short", 'i', -32768.0, 32767.0},
    {"i32", "int", 'i', -2147483648.0, 2147483647.0},
    {"i64", "long", 'i', -9223372036854775808.0, 9223372036854775807.0},
    {"f32", "float", 'f', 0, 0},
    {"f64", "double", 'f', 0, 0},
    {"b8", "uchar", 'b', 0, 1},
};

typedef struct {
  char *buf;
  size_t len, cap;
  bool oom;
} sbuf;

static void put(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#include <stdarg.h>
static void put(sbuf *s, const char *fmt, ...) {
  if (s->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    /* the first call has no buffer yet: measure only (NULL + 0 is undefined in C) */
    int n = vsnprintf(s->buf ? s->buf + s->len : NULL, s->cap - s->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      s->oom = true;
      return;
    }
    if (s->len + (size_t)n < s->cap) {
      s->len += (size_t)n;
      return;
    }
    size_t cap = (s->cap + (size_t)n) * 2;
    char *b = realloc(s->buf, cap);
    if (b == NULL) {
      s->oom = true;
      return;
    }
    s->buf = b;
    s->cap = cap;
  }
}

static const char prelude[] =
    "#pragma OPENCL EXTENSION cl_khr_fp64 : enable\n"
    "#pragma OPENCL FP_CONTRACT OFF\n"
    "/* Byte offset of element i of a strided tensor (row-major over nd merged dims). */\n"
    "inline long ab_offset(ulong i, int nd, long8 shape, long8 bstride) {\n"
    "  long sh[8] = {shape.s0, shape.s1, shape.s2, shape.s3, shape.s4, shape.s5, shape.s6, shape.s7};\n"
    "  long bs[8] = {bstride.s0, bstride.s1, bstride.s2, bstride.s3, bstride.s4, bstride.s5, bstride.s6, bstride.s7};\n"
    "  long off = 0;\n"
    "  for (int k = nd - 1; k >= 0; k--) {\n"
    "    off += (long)(i % (ulong)sh[k]) * bs[k];\n"
    "    i /= (ulong)sh[k];\n"
    "  }\n"
    "  return off;\n"
    "}\n";

static void conv_expr(char *out, size_t cap, const ab__cl_type *s, const ab__cl_type *d) {
  if (d->cat == 'b') snprintf(out, cap, "(uchar)(v != (%s)0)", s->cl);
  else if (d->cat == 'f') snprintf(out, cap, "convert_%s(v)", d->cl);
  else if (s->cat == 'f') snprintf(out, cap, "convert_%s_sat_rtz(v)", d->cl);
  else snprintf(out, cap, "convert_%s_sat(v)", d->cl);
}

static void cast_kernel(sbuf *b, const ab__cl_type *s, const ab__cl_type *d) {
  char expr[96];
  conv_expr(expr, sizeof expr, s, d);
  put(b,
      "__kernel void cast_%s_%s(__global const uchar *src, ulong src_off, int nd, long8 shape, long8 bst,\n"
      "    __global uchar *dst, ulong dst_off) {\n"
      "  ulong i = get_global_id(0);\n"
      "  %s v = *(__global const %s *)(src + src_off + ab_offset(i, nd, shape, bst));\n"
      "  ((__global %s *)(dst + dst_off))[i] = %s;\n"
      "}\n",
      s->name, d->name, s->cl, s->cl, d->cl, expr);
}

static void stretch_kernel(sbuf *b, const ab__cl_type *s, const ab__cl_type *d) {
  put(b,
      "__kernel void stretch_%s_%s(__global const uchar *src, ulong src_off, int nd, long8 shape, long8 bst,\n"
      "    __global uchar *dst, ulong dst_off, double lo, double span) {\n"
      "  ulong i = get_global_id(0);\n"
      "  double x = (double)*(__global const %s *)(src + src_off + ab_offset(i, nd, shape, bst));\n"
      "  double y = (x - lo) / span * %.17g + %.17g;\n"
      "  ((__global %s *)(dst + dst_off))[i] = convert_%s_sat_rtz(y);\n"
      "}\n",
      s->name, d->name, s->cl, d->max - d->min, d->min, d->cl, d->cl);
}

static void minmax_kernel(sbuf *b, const ab__cl_type *s) {
  put(b,
      "__kernel void minmax_%s(__global const uchar *src, ulong src_off, int nd, long8 shape, long8 bst,\n"
      "    ulong n, __global double *out) {\n"
      "  ulong g = get_global_id(0), G = get_global_size(0);\n"
      "  double lo = 0, hi = 0; int found = 0;\n"
      "  for (ulong i = g; i < n; i += G) {\n"
      "    double x = (double)*(__global const %s *)(src + src_off + ab_offset(i, nd, shape, bst));\n"
      "    if (!isfinite(x)) continue;\n"
      "    if (!found || x < lo) lo = x;\n"
      "    if (!found || x > hi) hi = x;\n"
      "    found = 1;\n"
      "  }\n"
      "  out[3 * g] = lo; out[3 * g + 1] = hi; out[3 * g + 2] = found;\n"
      "}\n",
      s->name, s->cl);
}

/* Up to 8 slices per launch, each work-item one word; words are 8 bytes when every offset
 * and the slice size allow it, else 1. */
static void gather_kernel(sbuf *b, const char *name, const char *word) {
  put(b, "__kernel void gather_%s(__global %s *dst, ulong dst_off, ulong words, int n", name, word);
  for (int i = 0; i < 8; i++) put(b, ", __global const %s *s%d, ulong o%d", word, i, i);
  put(b, ") {\n  ulong g = get_global_id(0); ulong k = g / words, i = g %% words;\n"
         "  __global const %s *s; ulong o;\n  switch (k) {\n", word);
  for (int i = 0; i < 8; i++) put(b, "  case %d: s = s%d; o = o%d; break;\n", i, i, i);
  put(b, "  default: return;\n  }\n  dst[dst_off + k * words + i] = s[o + i];\n}\n");
}

char *ab__cl_program_source(void) {
  sbuf b = {0};
  put(&b, "%s", prelude);
  for (int s = 0; s < AB__CL_NTYPES; s++)
    for (int d = 0; d < AB__CL_NTYPES; d++) cast_kernel(&b, &ab__cl_types[s], &ab__cl_types[d]);
  for (int s = 0; s < AB__CL_NTYPES; s++) {
    if (ab__cl_types[s].cat != 'f') continue;
    minmax_kernel(&b, &ab__cl_types[s]);
    for (int d = 0; d < AB__CL_NTYPES; d++)
      if (ab__cl_types[d].cat == 'u' || ab__cl_types[d].cat == 'i') stretch_kernel(&b, &ab__cl_types[s], &ab__cl_types[d]);
  }
  gather_kernel(&b, "u64", "ulong");
  gather_kernel(&b, "u8", "uchar");
  if (b.oom) {
    free(b.buf);
    return NULL;
  }
  return b.buf;
}
