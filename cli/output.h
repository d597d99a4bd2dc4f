/* cli/output.h: what a screening run writes, so that it survives: a results row per image,
 * written and flushed when the image finishes; optionally a row per object; a sidecar JSON that
 * says how the results were made; a plate heatmap (PNG). --resume keeps the rows of images
 * that ran and redoes the others. */
#ifndef AB_CLI_OUTPUT_H
#define AB_CLI_OUTPUT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cli/identify.h"
#include "cli/plate.h"

typedef struct {
  const char *csv;         /* per image (required) */
  const char *objects;     /* per object, or NULL */
  const char *heatmap;     /* PNG, or NULL */
  const char *column;      /* the heatmap's column */
  char *json;              /* the sidecar: csv with .json for .csv */
  FILE *csv_f, *obj_f;
  char *header, *obj_header;
  uint64_t *done;          /* images whose ok rows were kept (--resume), sorted keys */
  size_t ndone;
  bool fresh;              /* output_open made the CSVs anew: output_discard removes them */
} screen_output;

/* The sidecar's path for a results CSV (malloc'd). */
char *output_json_path(const char *csv);
/* The results CSV's columns, for these channels (malloc'd). */
char *output_header(const plate *p);

/* Whether every output (the CSVs, the sidecar, the heatmap, and `trace` when not NULL) can be
 * written, found without creating any file, so that a run that cannot write one of them leaves
 * nothing behind; `resume`: the CSVs will be rewritten and renamed over. 0, or 1 after writing
 * "cannot write PATH: the OS's reason" into err. */
int output_check(const screen_output *o, bool resume, const char *trace, char *err, size_t errlen);
/* Opens the outputs before anything runs. An existing results file is kept and continued only
 * with `resume` (its header and the sidecar's pipeline line must equal this run's), replaced
 * only with `overwrite`; otherwise it is a usage error. Returns 0, or 2 (usage) / 1 (I/O)
 * after writing a one-line reason into err. */
int output_open(screen_output *o, const plate *p, bool resume, bool overwrite, const char *pipeline_line, char *err,
                size_t errlen);
/* Whether image i has an ok row from an earlier run. */
bool output_done(const screen_output *o, const plate *p, int i);
/* Writes and flushes image i's row (and its objects first). 0, or -1 with errno set. */
int output_row(screen_output *o, const plate *p, int i, const char *device, int status, const char *error,
               const identify_result *r);
/* Writes the sidecar (atomically: a temporary file renamed over it). 0, or -1 with errno. */
int output_write_json(const screen_output *o, const char *text);
/* A run that cannot start after output_open: closes the CSVs and removes them when output_open
 * made them (a resumed pair is left as it was, resumable). errno is kept. */
void output_discard(screen_output *o);
/* Closes the CSVs (0, or -1 with errno when a buffered write failed). */
int output_close(screen_output *o);
void output_free(screen_output *o);

/* The heatmap of o->column from the results CSV as it stands (rows of earlier runs included):
 * one cell per well, the mean of its ok rows, on a colour scale. 0, or -1 with a reason. */
int output_heatmap(const screen_output *o, const plate *p, char *err, size_t errlen);
/* Whether `column` is a numeric column of this run's CSV. */
bool output_has_column(const plate *p, const char *column);

#endif
