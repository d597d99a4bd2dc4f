/*
 * cli/vector.h: VECTOR marks a loop function the compiler should also build for AVX2; the
 * program picks the build the CPU runs at start-up (gcc's target_clones). Either build gives
 * the same bits: the loops are integer. Sanitizer builds and other compilers get one build.
 */
#ifndef AB_CLI_VECTOR_H
#define AB_CLI_VECTOR_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
    !defined(__SANITIZE_THREAD__)
#define VECTOR __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR
#endif

#endif
