/* bench_ab.h: what the benchmark programs that measure arraybridge share. The peers' programs
 * include only bench_util.h, so that they never see the library.
 *
 * Before including it, define BENCH_PROG (the program's name, for messages) and BENCH_NATIVE
 * (what a positive error code comes from: "cl", "cuda"). */
#ifndef AB_BENCH_AB_H
#define AB_BENCH_AB_H

#include <arraybridge.h>

#include "bench_util.h"

/* Exits 1, naming the call, when rc is not 0 (negative: an AB_E* code; positive: native). */
static inline void bench_check(int rc, const char *what) {
  if (rc == 0) return;
  fprintf(stderr, "%s: %s failed: %d (%s)\n", BENCH_PROG, what, rc, rc < 0 ? ab_strerror(rc) : BENCH_NATIVE);
  exit(1);
}
#define CHECK(x) bench_check((int)(x), #x)

/* A runtime made with o (NULL: defaults); exits 77 (skipped) with `why` when it has no device
 * of `kind`. */
static inline ab_runtime *bench_runtime(const ab_runtime_options *o, int kind, const char *why) {
  ab_runtime_options def = AB_RUNTIME_OPTIONS_INIT;
  ab_runtime *rt;
  CHECK(ab_runtime_create(o ? o : &def, &rt));
  ab_device d[64];
  int n = ab_runtime_devices(rt, d, 64), found = 0;
  for (int i = 0; i < n && i < 64; i++) found += d[i].kind == kind;
  if (found == 0) {
    fprintf(stderr, "%s: %s\n", BENCH_PROG, why);
    exit(77);
  }
  return rt;
}

/* f's result (waited for); f is released. */
static inline ab_tensor *bench_result(ab_future *f) {
  ab_tensor *t;
  CHECK(ab_future_wait(f, -1));
  CHECK(ab_future_result(f, &t));
  ab_future_release(f);
  return t;
}

#endif
