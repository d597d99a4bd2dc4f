/*
 * cli/output.c: the results CSV, the per-object CSV and the sidecar JSON (see output.h).
 *
 * Rows are appended in the order images finish and flushed one by one, so an interrupted or
 * killed run keeps every row it finished; sort by well, site and timepoint for plate order.
 * --resume rewrites the results file (and the objects file) keeping only rows of images that
 * ran ok, through a temporary file renamed over the old one, so a crash during the rewrite
 * loses nothing either.
 */
#define _GNU_SOURCE /* asprintf, open_memstream */
#include "cli/output.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arraybridge.h>

/* ---- names and keys ------------------------------------------------------------------------- */
char *output_json_path(const char *csv) {
  size_t n = strlen(csv);
  char *s = NULL;
  if (n > 4 && strcmp(csv + n - 4, ".csv") == 0) {
    if (asprintf(&s, "%.*s.json", (int)(n - 4), csv) < 0) return NULL;
  } else if (asprintf(&s, "%s.json", csv) < 0) {
    return NULL;
  }
  return s;
}

static char *header_with(const plate *p, const char *fixed, const char *const *per_channel, int nper) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) return NULL;
  fputs(fixed, f);
  for (int k = 0; k < nper; k++)
    for (int c = 0; c < p->nchannels; c++) fprintf(f, ",%s_%s", per_channel[k], p->channel_name[c]);
  fclose(f);
  return buf;
}

static const char *const image_fixed = "well,site,timepoint,device,status,objects,mean_area,foreground_px,threshold";
static const char *const image_per_channel[] = {"mean_intensity", "object_intensity"};

char *output_header(const plate *p) {
  char *h = header_with(p, image_fixed, image_per_channel, 2), *s = NULL;
  if (h && asprintf(&s, "%s,error", h) < 0) s = NULL;
  free(h);
  return s;
}

static char *objects_header(const plate *p) {
  static const char *const per[] = {"mean_intensity"};
  return header_with(p, "well,site,timepoint,object,area,centroid_x,centroid_y", per, 1);
}

bool output_has_column(const plate *p, const char *column) {
  char *h = output_header(p);
  bool found = false;
  for (char *tok = h ? strtok(h, ",") : NULL; tok; tok = strtok(NULL, ","))
    found |= strcmp(tok, column) == 0 && strcmp(tok, "well") && strcmp(tok, "device") && strcmp(tok, "status") &&
             strcmp(tok, "error");
  free(h);
  return found;
}

static uint64_t key_of(int row, int col, int site, int timepoint) {
  return (uint64_t)row << 48 | (uint64_t)col << 40 | (uint64_t)(site & 0xfffff) << 20 | (uint64_t)(timepoint & 0xfffff);
}

static uint64_t image_key(const plate_image *im) { return key_of(im->row, im->col, im->site, im->timepoint); }

/* The key of a CSV line ("A01,2,1,..."); false if the line does not start like a row. */
static bool line_key(const char *line, uint64_t *key) {
  char well[8];
  int site, tp, n = 0;
  if (sscanf(line, "%7[A-Za-z0-9],%d,%d,%n", well, &site, &tp, &n) != 3 || n == 0) return false;
  plate_fields f;
  if (!plate_match("{well}", well, &f)) return false;
  *key = key_of(f.row, f.col, site, tp);
  return true;
}

static int by_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

bool output_done(const screen_output *o, const plate *p, int i) {
  uint64_t k = image_key(&p->images[i]);
  return o->ndone && bsearch(&k, o->done, o->ndone, sizeof k, by_u64) != NULL;
}

/* ---- resuming ------------------------------------------------------------------------------- */
/* The status field (the 5th) of a row. */
static bool row_ok(const char *line) {
  const char *s = line;
  for (int i = 0; i < 4 && s; i++) s = strchr(s, ',') ? strchr(s, ',') + 1 : NULL;
  return s && strncmp(s, "ok,", 3) == 0;
}

/* Rewrites path keeping its header and the complete lines that `want` accepts; *keys gets the
 * keys of the kept lines when keys is not NULL. 0, 2 (another header) or 1 (I/O). */
static int rewrite(const char *path, const char *header, bool (*want)(const char *line, const screen_output *o),
                   screen_output *o, bool collect, char *err, size_t errlen) {
  FILE *in = fopen(path, "r");
  if (in == NULL) {
    snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
    return 1;
  }
  char *tmp = NULL, *line = NULL;
  size_t cap = 0;
  ssize_t len = getline(&line, &cap, in);
  int status = 0;
  if (len <= 0 || line[len - 1] != '\n' || strncmp(line, header, strlen(header)) != 0 ||
      (size_t)len != strlen(header) + 1) {
    snprintf(err, errlen, "%s has other columns than this run writes (another layout, channels or version): "
             "cannot resume it; write to another file or --overwrite", path);
    status = 2;
  }
  FILE *out = NULL;
  if (status == 0 && (asprintf(&tmp, "%s.tmp", path) < 0 || (out = fopen(tmp, "w")) == NULL)) {
    snprintf(err, errlen, "cannot write next to %s: %s", path, strerror(errno));
    status = 1;
  }
  if (out) fputs(line, out);
  while (status == 0 && (len = getline(&line, &cap, in)) > 0) {
    if (line[len - 1] != '\n' || !want(line, o)) continue; /* a torn last line, or a row to redo */
    fputs(line, out);
    uint64_t k;
    if (!collect || !line_key(line, &k)) continue;
    uint64_t *more = o->ndone % 1024 ? o->done : realloc(o->done, sizeof *more * (o->ndone + 1024));
    if (more == NULL) {
      status = 1;
      snprintf(err, errlen, "out of memory");
      break;
    }
    o->done = more;
    o->done[o->ndone++] = k;
  }
  fclose(in);
  free(line);
  if (out && (fclose(out) != 0 || (status == 0 && rename(tmp, path) != 0))) {
    snprintf(err, errlen, "cannot rewrite %s: %s", path, strerror(errno));
    status = 1;
  }
  if (status != 0 && tmp) unlink(tmp);
  free(tmp);
  return status;
}

static bool keep_ok(const char *line, const screen_output *o) {
  (void)o;
  return row_ok(line);
}

static bool keep_done(const char *line, const screen_output *o) {
  uint64_t k;
  return line_key(line, &k) && o->ndone && bsearch(&k, o->done, o->ndone, sizeof k, by_u64) != NULL;
}

/* The sidecar of an earlier run must have made its rows the same way. */
static int same_pipeline(const screen_output *o, const char *pipeline_line, char *err, size_t errlen) {
  FILE *f = fopen(o->json, "r");
  if (f == NULL) {
    snprintf(err, errlen, "%s has no sidecar %s saying how it was made: cannot resume it", o->csv, o->json);
    return 2;
  }
  char *line = NULL;
  size_t cap = 0;
  bool same = false, seen = false;
  while (!seen && getline(&line, &cap, f) > 0) {
    if (strncmp(line, "  \"pipeline\": ", 14) != 0) continue;
    seen = true;
    line[strcspn(line, "\n")] = 0;
    if (line[strlen(line) - 1] == ',') line[strlen(line) - 1] = 0;
    same = strcmp(line + 14, pipeline_line) == 0;
  }
  fclose(f);
  free(line);
  if (same) return 0;
  snprintf(err, errlen, "%s was made with other pipeline parameters (see %s): resume with the same ones, or "
           "write to another file", o->csv, o->json);
  return 2;
}

/* ---- opening -------------------------------------------------------------------------------- */
/* 0 if path can be written without creating anything to find out: an existing file we may
 * write (through its folder too when it is replaced by a rename: the sidecar always, the CSVs
 * when --resume rewrites them), or a new name in a folder we may write. Else the errno that
 * writing would meet. */
static int writable(const char *path, bool renamed) {
  struct stat st;
  if (stat(path, &st) == 0) {
    if (S_ISDIR(st.st_mode)) return EISDIR;
    if (faccessat(AT_FDCWD, path, W_OK, AT_EACCESS) != 0) return errno;
    if (!renamed) return 0; /* written in place */
  } else if (errno != ENOENT) {
    return errno; /* ENOTDIR: a file where a folder should be; EACCES: a folder we cannot search */
  }
  char *copy = strdup(path);
  if (copy == NULL) return ENOMEM;
  int rc = faccessat(AT_FDCWD, dirname(copy), W_OK | X_OK, AT_EACCESS) == 0 ? 0 : errno;
  free(copy);
  return rc;
}

int output_check(const screen_output *o, bool resume, const char *trace, char *err, size_t errlen) {
  char *json = output_json_path(o->csv);
  if (json == NULL) {
    snprintf(err, errlen, "out of memory");
    return 1;
  }
  const struct {
    const char *path;
    bool renamed;
  } outs[] = {{o->csv, resume}, {json, true}, {o->objects, resume}, {o->heatmap, false}, {trace, false}};
  int status = 0;
  for (size_t i = 0; i < sizeof outs / sizeof outs[0] && status == 0; i++) {
    int e = outs[i].path ? writable(outs[i].path, outs[i].renamed) : 0;
    if (e != 0) {
      snprintf(err, errlen, "cannot write %s: %s", outs[i].path, strerror(e));
      status = 1;
    }
  }
  free(json);
  return status;
}

static bool exists_nonempty(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

static FILE *open_out(const char *path, const char *mode, const char *header, char *err, size_t errlen) {
  FILE *f = fopen(path, mode);
  if (f == NULL) {
    snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    return NULL;
  }
  if (header && (fprintf(f, "%s\n", header) < 0 || fflush(f) != 0)) {
    snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    fclose(f);
    return NULL;
  }
  return f;
}

static int resume(screen_output *o, const char *pipeline_line, char *err, size_t errlen) {
  int status = same_pipeline(o, pipeline_line, err, errlen);
  if (status == 0) status = rewrite(o->csv, o->header, keep_ok, o, true, err, errlen);
  if (status != 0) return status;
  qsort(o->done, o->ndone, sizeof *o->done, by_u64);
  if (o->objects && exists_nonempty(o->objects))
    status = rewrite(o->objects, o->obj_header, keep_done, o, false, err, errlen);
  if (status != 0) return status;
  if ((o->csv_f = open_out(o->csv, "a", NULL, err, errlen)) == NULL) return 1;
  if (o->objects) {
    bool fresh = !exists_nonempty(o->objects);
    if ((o->obj_f = open_out(o->objects, "a", fresh ? o->obj_header : NULL, err, errlen)) == NULL) return 1;
  }
  return 0;
}

int output_open(screen_output *o, const plate *p, bool resume_run, bool overwrite, const char *pipeline_line,
                char *err, size_t errlen) {
  o->header = output_header(p);
  o->obj_header = objects_header(p);
  o->json = output_json_path(o->csv);
  if (o->header == NULL || o->obj_header == NULL || o->json == NULL) {
    snprintf(err, errlen, "out of memory");
    return 1;
  }
  bool have = exists_nonempty(o->csv);
  if (have && resume_run) return resume(o, pipeline_line, err, errlen);
  if (have && !overwrite) {
    snprintf(err, errlen, "%s exists: --resume continues it, --overwrite replaces it", o->csv);
    return 2;
  }
  if (o->objects && exists_nonempty(o->objects) && !overwrite && !resume_run) {
    snprintf(err, errlen, "%s exists: --overwrite replaces it", o->objects);
    return 2;
  }
  if ((o->csv_f = open_out(o->csv, "w", o->header, err, errlen)) == NULL) return 1;
  o->fresh = true;
  if (o->objects && (o->obj_f = open_out(o->objects, "w", o->obj_header, err, errlen)) == NULL) {
    output_discard(o);
    return 1;
  }
  return 0;
}

void output_discard(screen_output *o) {
  int e = errno; /* the caller reports the failure that brought it here */
  output_close(o);
  if (o->fresh) {
    unlink(o->csv);
    if (o->objects) unlink(o->objects);
    o->fresh = false;
  }
  errno = e;
}

/* ---- rows ----------------------------------------------------------------------------------- */
static void one_line(const char *in, char *out, size_t n) {
  snprintf(out, n, "%s", in ? in : "");
  for (char *s = out; *s; s++)
    if (*s == '"' || *s == '\n' || *s == '\r') *s = *s == '"' ? '\'' : ' ';
}

static int write_objects(screen_output *o, const plate *p, const plate_image *im, const identify_result *r) {
  for (int64_t k = 0; k < r->objects; k++) {
    const screen_object *x = &r->objs[k];
    fprintf(o->obj_f, "%s,%d,%d,%" PRId64 ",%" PRId64 ",%.2f,%.2f", im->well, im->site, im->timepoint, k + 1, x->area,
            (double)x->sum_x / (double)x->area, (double)x->sum_y / (double)x->area);
    for (int c = 0; c < p->nchannels; c++) fprintf(o->obj_f, ",%.3f", (double)x->sum[c] / (double)x->area);
    fputc('\n', o->obj_f);
  }
  return fflush(o->obj_f) == 0 && !ferror(o->obj_f) ? 0 : -1;
}

int output_row(screen_output *o, const plate *p, int i, const char *device, int status, const char *error,
               const identify_result *r) {
  const plate_image *im = &p->images[i];
  if (status == 0 && o->obj_f && write_objects(o, p, im, r) != 0) return -1;
  FILE *f = o->csv_f;
  fprintf(f, "%s,%d,%d,%s,%s,", im->well, im->site, im->timepoint, device ? device : "",
          status == 0 ? "ok" : ab_err_name(status));
  if (status == 0) {
    fprintf(f, "%" PRId64 ",%.2f,%" PRId64 ",%.4f", r->objects,
            r->objects ? (double)r->area_sum / (double)r->objects : 0.0, r->fg_px, r->threshold / 65535.0);
    for (int c = 0; c < p->nchannels; c++) fprintf(f, ",%.3f", (double)r->sum[c] / (double)r->npix);
    for (int c = 0; c < p->nchannels; c++)
      fprintf(f, ",%.3f", r->area_sum ? (double)r->obj_sum[c] / (double)r->area_sum : 0.0);
    fputs(",\n", f);
  } else {
    char e[512];
    one_line(error, e, sizeof e);
    for (int c = 0; c < 4 + 2 * p->nchannels; c++) fputc(',', f); /* the empty measurements */
    fprintf(f, "\"%s\"\n", e);
  }
  return fflush(f) == 0 && !ferror(f) ? 0 : -1;
}

int output_write_json(const screen_output *o, const char *text) {
  char *tmp = NULL;
  if (asprintf(&tmp, "%s.tmp", o->json) < 0) return -1;
  FILE *f = fopen(tmp, "w");
  int rc = f ? 0 : -1;
  if (f && (fputs(text, f) < 0 || fclose(f) != 0)) rc = -1;
  if (rc == 0 && rename(tmp, o->json) != 0) rc = -1;
  if (rc != 0) {
    int e = errno;
    unlink(tmp);
    errno = e;
  }
  free(tmp);
  return rc;
}

int output_close(screen_output *o) {
  int rc = 0;
  if (o->csv_f && fclose(o->csv_f) != 0) rc = -1;
  if (o->obj_f && fclose(o->obj_f) != 0) rc = -1;
  o->csv_f = o->obj_f = NULL;
  return rc;
}

void output_free(screen_output *o) {
  output_close(o);
  free(o->json);
  free(o->header);
  free(o->obj_header);
  free(o->done);
  o->json = o->header = o->obj_header = NULL;
  o->done = NULL;
  o->ndone = 0;
}
