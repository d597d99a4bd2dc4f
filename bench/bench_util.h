/* bench_util.h: clocks and medians shared by the benchmark programs.
 *
 * Every benchmark program prints raw measurements on stdout, one per line, as
 *   <metric> <value>
 * (one line per repetition), and progress on stderr. bench/run takes the medians and prints the
 * comparison JSON. Keeping the programs dumb keeps the JSON format in one place. */
#ifndef AB_BENCH_UTIL_H
#define AB_BENCH_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Sorts v in place. */
static inline double bench_median(double *v, size_t n) {
  if (n == 0)
    return 0.0;
  qsort(v, n, sizeof *v, bench_cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A positive integer from the environment, or def. */
static inline long bench_env_long(const char *name, long def) {
  const char *s = getenv(name);
  if (!s || !*s)
    return def;
  char *end;
  long v = strtol(s, &end, 10);
  return (*end == '\0' && v > 0) ? v : def;
}

#endif
