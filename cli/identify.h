/* cli/identify.h: thresholding, labelling and measuring one image on the host, whatever device
 * ran its steps (CellProfiler's Threshold, IdentifyPrimaryObjects without declumping,
 * MeasureObjectSizeShape and MeasureObjectIntensity, in integers where it matters). */
#ifndef AB_CLI_IDENTIFY_H
#define AB_CLI_IDENTIFY_H

#include <stdbool.h>
#include <stdint.h>

#include "cli/plate.h"
#include "cli/steps.h"

typedef struct {
  int64_t area;
  int64_t sum_x, sum_y;                     /* centroid = sum / area */
  uint64_t sum[PLATE_MAX_CHANNELS];         /* raw projected intensity, per channel */
} screen_object;

typedef struct {
  /* in */
  const screen_pipeline *p;
  const screen_normalise *counted;          /* Otsu's counts where the normalise step made them
                                               (counted->counted), else NULL or not counted */
  int nchannels;
  bool want_objects;
  /* out */
  uint32_t threshold;                       /* on the normalised scale: foreground is >= it
                                               (none in a constant image) */
  int64_t npix, fg_px, objects, area_sum;
  uint64_t sum[PLATE_MAX_CHANNELS];         /* over the image */
  uint64_t obj_sum[PLATE_MAX_CHANNELS];     /* over every object's pixels */
  screen_object *objs;                      /* want_objects: `objects` of them, malloc'd */
  int64_t cap;
} identify_result;

/* An ab_task_fn on a host worker; arg is an identify_result. Input 0 is the normalised
 * segmentation channel, inputs 1..nchannels each channel's raw projection, all [y, x] u16.
 *   threshold  Otsu's (two classes, 256 bins of v >> 8, as scikit-image's threshold_otsu: the
 *              first bin k that maximises w0 * w1 * (m0 - m1)^2, foreground v >= 256 k + 128,
 *              the centre of bin k), or p->threshold * 65535 rounded; a constant image (one
 *              value everywhere: a blank well) has no foreground, whatever the threshold;
 *   objects    8-connected components of the foreground, numbered in raster order of their
 *              first pixel; those under p->min_area pixels are dropped. */
int identify_task(ab_ctx *c, void *arg);
void identify_reset(identify_result *r);

#endif
