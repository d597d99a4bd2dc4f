/* cli/pipeline.c: the filter's integer weights, made once per run on the host so that every
 * device gets the same integers (see steps.h). */
#include <math.h>

#include "cli/steps.h"

void screen_pipeline_weights(screen_pipeline *p) {
  double sigma = p->filter_size / 2.35;
  int r = sigma > 0 ? (int)(4 * sigma + 0.5) : 0;
  if (r > SCREEN_MAX_RADIUS) r = SCREEN_MAX_RADIUS;
  double g[SCREEN_MAX_RADIUS + 1], total = 0;
  for (int i = 0; i <= r; i++) {
    g[i] = exp(-(double)i * i / (2 * sigma * sigma));
    total += i ? 2 * g[i] : g[i];
  }
  uint32_t sides = 0;
  for (int i = 1; i <= r; i++) {
    p->weight[i] = (uint16_t)lround(SCREEN_WEIGHT_ONE * g[i] / total);
    sides += 2u * p->weight[i];
  }
  p->weight[0] = (uint16_t)(SCREEN_WEIGHT_ONE - sides); /* the weights sum to exactly 1 << 14 */
  p->radius = r;
}
