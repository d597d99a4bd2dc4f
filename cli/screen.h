/* cli/screen.h: the screening job: its options, its exit statuses, and screen_run, which main.c
 * calls once it has parsed the command line. */
#ifndef AB_CLI_SCREEN_H
#define AB_CLI_SCREEN_H

#include <stdbool.h>
#include <stdint.h>

#include <arraybridge.h>

#include "cli/steps.h"

/* Exit statuses (documented in `arraybridge --help` and the README). */
enum { EXIT_OK = 0, EXIT_FATAL = 1, EXIT_USAGE = 2, EXIT_SOME_FAILED = 3, EXIT_INTERRUPTED = 130 };

#define MAX_SCREEN_DEVICES 32

typedef struct {
  /* the plate */
  const char *plate_dir;          /* NULL: synthetic */
  const char *layout, *pattern;   /* both NULL: the preset that matches most files */
  int wells, sites, channels, z, h, w;
  bool z_given;                   /* --z with --plate: every stack must have z planes */
  uint64_t seed;
  const char *segment;            /* the segmentation channel's name; NULL: the first */
  /* the pipeline */
  screen_pipeline pipeline;
  /* output */
  const char *out_csv, *objects, *heatmap, *heatmap_column, *trace;
  bool resume, overwrite, quiet;
  /* devices */
  const char *devices;            /* "all", or a list of kinds and kind:index */
  uint64_t memory_limit;          /* 0: none */
  int inflight;                   /* stacks in flight per device */
  int host_workers;               /* 0: one per core */
  /* the command line, for the record */
  int argc;
  char **argv;
} screen_options;

int screen_run(const screen_options *o);


#endif
