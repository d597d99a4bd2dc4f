/*
 * cli/vector.h: VECTOR marks a loop function the compiler should also build for AVX2; the
 * program picks the build the CPU runs at start-up (gcc's target_clones). Either build gives
 * the same bits: the loops are integer. Sanitizer builds and other compilers get one build.
 *
 * vector_isa() picks among the loops written by hand with intrinsics (the filter's lines,
 * identify's bits): the widest the CPU has, capped by AB_SCREEN_ISA=avx2 or plain in the
 * environment, so that tests run every version on one machine and a slower one can be compared.
 * Every version gives the same bits.
 */
#ifndef AB_CLI_VECTOR_H
#define AB_CLI_VECTOR_H

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define VECTOR __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR
#endif

enum { VECTOR_PLAIN, VECTOR_AVX2 /* with POPCNT */, VECTOR_AVX512 /* with BW and VNNI */ };

/* Read on every call (a getenv): call it once per task, not per row. */
static inline int vector_isa(void) {
  int have = VECTOR_PLAIN;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) have = VECTOR_AVX2;
  if (have == VECTOR_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vnni"))
    have = VECTOR_AVX512;
#endif
  const char *cap = getenv("AB_SCREEN_ISA");
  int want = cap == NULL ? have : strcmp(cap, "plain") == 0 ? VECTOR_PLAIN : strcmp(cap, "avx2") == 0 ? VECTOR_AVX2 : have;
  return want < have ? want : have;
}

#endif
