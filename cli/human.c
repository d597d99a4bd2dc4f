/* cli/human.c: numbers as the command prints them for people (human.h). */
#include "cli/human.h"

#include <inttypes.h>
#include <stdio.h>

const char *human_bytes(uint64_t b, char *buf, size_t n) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, u++;
  if (u == 0) snprintf(buf, n, "%" PRIu64 " B", b);
  else snprintf(buf, n, "%.1f %s", v, units[u]);
  return buf;
}
