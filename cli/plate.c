/*
 * cli/plate.c: plates from folders: the layout presets, the file-name pattern matcher, and the
 * scan that turns matched files into images (well, site, timepoint) with their channels and
 * planes. Problems that concern one image (a duplicate file, a missing channel or plane) are
 * kept on that image, so it becomes an error row and the rest of the plate runs.
 */
#define _GNU_SOURCE /* asprintf */
#include "cli/plate.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

const plate_layout plate_layouts[] = {
    {"simple", "{well}_s{site}[_w{channel}][_z{z}]", "A01_s2.tif (one multi-page stack per site)"},
    {"imagexpress", "[TimePoint_{timepoint}/][ZStep_{z}/]{*}_{well}[_s{site}][_w{channel:1}[{*}]]",
     "Plate_B03_s1_w1.tif"},
    {"operetta", "r{row:2}c{col:2}f{site:2}p{z:2}-ch{channel}sk{timepoint}fk{*}fl{*}",
     "r02c03f01p01-ch1sk1fk1fl1.tiff"},
    {NULL, NULL, NULL},
};

const plate_layout *plate_layout_named(const char *name) {
  for (const plate_layout *l = plate_layouts; l->name; l++)
    if (strcasecmp(l->name, name) == 0) return l;
  return NULL;
}

void plate_format(int wells, int *rows, int *cols) {
  if (wells <= 96) *rows = 8, *cols = 12;
  else if (wells <= 384) *rows = 16, *cols = 24;
  else *rows = 32, *cols = 48;
}

void plate_well_name(int row, int col, char *out, size_t n) {
  unsigned c = (unsigned)(col + 1) % 1000u; /* at most 3 digits, whatever the caller passes */
  if (row < 26) snprintf(out, n, "%c%02u", 'A' + row % 26, c);
  else snprintf(out, n, "A%c%02u", 'A' + (row - 26) % 26, c);
}

/* ---- the pattern matcher -------------------------------------------------------------------- */
/* A pattern compiles to a flat array of nodes. An optional group is a node whose content is the
 * nodes up to its `end`; a sequence runs from one index to another, skipping over groups it does
 * not enter. Matching is backtracking with continuations: after a group's content, the rest of
 * the enclosing sequence follows. */
enum { N_LIT, N_ANY, N_OPT, N_FIELD };
enum { F_WELL, F_ROW, F_COL, F_SITE, F_CHANNEL, F_Z, F_TIME, F_COUNT };
static const char *const field_names[] = {"well", "row", "col", "site", "channel", "z", "timepoint"};

#define MAX_NODES 256

typedef struct {
  int type, end;           /* N_OPT: content is [index + 1, end) */
  char ch;                 /* N_LIT */
  int field, width;        /* N_FIELD; width 0: any number of digits */
} node;

typedef struct {
  node n[MAX_NODES];
  int count;
} program;

static const char *compile_seq(const char **p, program *pg, char close) {
  while (**p && **p != close) {
    if (pg->count == MAX_NODES) return "pattern too long";
    node *x = &pg->n[pg->count++];
    memset(x, 0, sizeof *x);
    char c = *(*p)++;
    if (c == ']' || c == '}') return "unbalanced ] or }";
    if (c == '[') {
      x->type = N_OPT;
      int self = pg->count - 1;
      const char *e = compile_seq(p, pg, ']');
      if (e) return e;
      if (**p != ']') return "unclosed [";
      (*p)++;
      pg->n[self].end = pg->count;
    } else if (c == '{') {
      const char *q = strchr(*p, '}');
      if (q == NULL) return "unclosed {";
      char name[24];
      int len = (int)(q - *p), width = 0;
      if (len <= 0 || len >= (int)sizeof name) return "empty or long {field}";
      snprintf(name, sizeof name, "%.*s", len, *p);
      *p = q + 1;
      char *colon = strchr(name, ':');
      if (colon) {
        *colon = 0;
        width = atoi(colon + 1);
        if (width < 1 || width > 9) return "a {field:N} width must be 1 to 9";
      }
      if (strcmp(name, "*") == 0) {
        x->type = N_ANY;
        continue;
      }
      if (strcmp(name, "column") == 0) strcpy(name, "col");
      x->type = N_FIELD;
      x->width = width;
      x->field = -1;
      for (int f = 0; f < F_COUNT; f++)
        if (strcmp(name, field_names[f]) == 0) x->field = f;
      if (x->field < 0) return "unknown {field}: use well, row, col, site, channel, z, timepoint or *";
      if (width && x->field == F_WELL) return "{well} takes no width";
    } else {
      x->type = N_LIT;
      x->ch = c;
    }
  }
  return NULL;
}

static const char *compile(const char *pattern, program *pg) {
  pg->count = 0;
  if (pattern == NULL || !*pattern) return "empty pattern";
  const char *p = pattern, *e = compile_seq(&p, pg, 0);
  return e ? e : *p ? "unbalanced ]" : NULL;
}

const char *plate_pattern_error(const char *pattern) {
  program pg;
  return compile(pattern, &pg);
}

typedef struct cont {
  int i, end;
  const struct cont *next;
} cont;

typedef struct {
  int v[F_COUNT];          /* -1: not set; F_WELL unused (it sets F_ROW and F_COL) */
} captures;

/* Letters as a plate row: A..Z are 0..25, AA..AF 26..31. -1 otherwise. */
static int row_letters(const char *s, int n) {
  int a = toupper((unsigned char)s[0]);
  if (n == 1) return a >= 'A' && a <= 'Z' ? a - 'A' : -1;
  int b = toupper((unsigned char)s[1]);
  return a == 'A' && b >= 'A' && b < 'A' + PLATE_MAX_ROWS - 26 ? 26 + b - 'A' : -1;
}

static int digits_value(const char *s, int n) {
  int v = 0;
  for (int i = 0; i < n; i++) v = v * 10 + (s[i] - '0');
  return v;
}

static int count_digits(const char *s, int max) {
  int n = 0;
  while (n < max && isdigit((unsigned char)s[n])) n++;
  return n;
}

static int count_letters(const char *s, int max) {
  int n = 0;
  while (n < max && isalpha((unsigned char)s[n])) n++;
  return n;
}

static bool run(const program *pg, int i, int end, const char *s, const cont *k, captures *c);

/* Sets field f to v (agreeing with an earlier capture of it) and matches the rest. */
static bool bind(const program *pg, int i, int end, const char *s, const cont *k, captures *c, int f, int v) {
  if (c->v[f] >= 0 && c->v[f] != v) return false;
  int old = c->v[f];
  c->v[f] = v;
  if (run(pg, i + 1, end, s, k, c)) return true;
  c->v[f] = old;
  return false;
}

static bool run_well(const program *pg, int i, int end, const char *s, const cont *k, captures *c) {
  for (int l = count_letters(s, 2); l >= 1; l--) {
    int row = row_letters(s, l);
    if (row < 0) continue;
    for (int d = count_digits(s + l, 3); d >= 1; d--) {
      int col = digits_value(s + l, d) - 1;
      if (col < 0 || col >= PLATE_MAX_COLS || (c->v[F_ROW] >= 0 && c->v[F_ROW] != row)) continue;
      int old = c->v[F_ROW];
      c->v[F_ROW] = row;
      if (bind(pg, i, end, s + l + d, k, c, F_COL, col)) return true;
      c->v[F_ROW] = old;
    }
  }
  return false;
}

static bool run_field(const program *pg, int i, int end, const char *s, const cont *k, captures *c) {
  const node *x = &pg->n[i];
  if (x->field == F_WELL) return run_well(pg, i, end, s, k, c);
  if (x->field == F_ROW && x->width == 0)
    for (int l = count_letters(s, 2); l >= 1; l--) {
      int row = row_letters(s, l);
      if (row >= 0 && bind(pg, i, end, s + l, k, c, F_ROW, row)) return true;
    }
  int have = count_digits(s, 9);
  for (int d = x->width ? x->width : have; d >= 1 && d <= have; d--) {
    int v = digits_value(s, d);
    if (x->field == F_ROW || x->field == F_COL) {
      int max = x->field == F_ROW ? PLATE_MAX_ROWS : PLATE_MAX_COLS;
      if (v < 1 || v > max) continue;
      v -= 1; /* 1-based in names, 0-based here */
    }
    if (bind(pg, i, end, s + d, k, c, x->field, v)) return true;
    if (x->width) break;
  }
  return false;
}

static bool run(const program *pg, int i, int end, const char *s, const cont *k, captures *c) {
  if (i == end) return k ? run(pg, k->i, k->end, s, k->next, c) : *s == 0;
  const node *x = &pg->n[i];
  switch (x->type) {
  case N_LIT:
    return *s && tolower((unsigned char)*s) == tolower((unsigned char)x->ch) && run(pg, i + 1, end, s + 1, k, c);
  case N_ANY:
    for (size_t len = 0;; len++) {
      if (run(pg, i + 1, end, s + len, k, c)) return true;
      if (!s[len]) return false;
    }
  case N_OPT: {
    cont after = {x->end, end, k};
    captures saved = *c;
    if (run(pg, i + 1, x->end, s, &after, c)) return true;
    *c = saved;
    return run(pg, x->end, end, s, k, c);
  }
  default:
    return run_field(pg, i, end, s, k, c);
  }
}

bool plate_match(const char *pattern, const char *name, plate_fields *f) {
  program pg;
  if (compile(pattern, &pg) != NULL) return false;
  captures c;
  for (int j = 0; j < F_COUNT; j++) c.v[j] = -1;
  if (!run(&pg, 0, pg.count, name, NULL, &c) || c.v[F_ROW] < 0 || c.v[F_COL] < 0) return false;
  *f = (plate_fields){.row = c.v[F_ROW], .col = c.v[F_COL], .site = c.v[F_SITE], .channel = c.v[F_CHANNEL],
                      .z = c.v[F_Z], .timepoint = c.v[F_TIME]};
  return true;
}

/* ---- scanning a folder ---------------------------------------------------------------------- */
typedef struct {
  char *rel;               /* relative path without extension */
  char *path;              /* the file */
} found;

typedef struct {
  found *v;
  int n, cap;
} found_list;

static bool is_tiff(const char *name, size_t *stem) {
  const char *dot = strrchr(name, '.');
  if (!dot || (strcasecmp(dot, ".tif") != 0 && strcasecmp(dot, ".tiff") != 0)) return false;
  *stem = (size_t)(dot - name);
  return true;
}

static int add_found(found_list *l, const char *dir, const char *rel, size_t stem) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 256;
    found *v = realloc(l->v, sizeof *v * (size_t)cap);
    if (v == NULL) return -1;
    l->v = v, l->cap = cap;
  }
  found *f = &l->v[l->n];
  if (asprintf(&f->path, "%s/%s", dir, rel) < 0) return -1;
  f->rel = strndup(rel, stem);
  if (f->rel == NULL) {
    free(f->path);
    return -1;
  }
  l->n++;
  return 0;
}

/* Every TIFF under root/rel, `depth` folder levels down at most. Subfolders that cannot be
 * read are reported on stderr and skipped (their images then show as missing planes). */
static int scan(const char *root, const char *rel, int depth, found_list *l, char *err, size_t errlen) {
  char *dir = NULL;
  if (asprintf(&dir, "%s%s%s", root, *rel ? "/" : "", rel) < 0) return -1;
  DIR *d = opendir(dir);
  if (d == NULL) {
    if (*rel == 0) snprintf(err, errlen, "cannot read plate folder %s: %s", dir, strerror(errno));
    else fprintf(stderr, "arraybridge: cannot read %s: %s: skipped\n", dir, strerror(errno));
    free(dir);
    return *rel == 0 ? -1 : 0;
  }
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char *sub = NULL, *full = NULL;
    if (asprintf(&sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name) < 0) return closedir(d), free(dir), -1;
    struct stat st;
    size_t stem = 0;
    bool tiff = is_tiff(e->d_name, &stem);
    if (asprintf(&full, "%s/%s", root, sub) >= 0 && stat(full, &st) == 0) {
      if (S_ISDIR(st.st_mode) && depth > 0) rc = scan(root, sub, depth - 1, l, err, errlen);
      else if (S_ISREG(st.st_mode) && tiff) rc = add_found(l, root, sub, strlen(sub) - strlen(e->d_name) + stem);
    }
    free(full);
    free(sub);
  }
  closedir(d);
  free(dir);
  return rc;
}

/* ---- building images ------------------------------------------------------------------------ */
typedef struct {
  plate_fields f;
  int channel;             /* index into the plate's channels */
  const found *file;
} entry;

static int by_key(const void *a, const void *b) {
  const entry *x = a, *y = b;
  const int kx[] = {x->f.row, x->f.col, x->f.site, x->f.timepoint, x->channel, x->f.z};
  const int ky[] = {y->f.row, y->f.col, y->f.site, y->f.timepoint, y->channel, y->f.z};
  for (int i = 0; i < 6; i++)
    if (kx[i] != ky[i]) return kx[i] < ky[i] ? -1 : 1;
  return strcmp(x->file->rel, y->file->rel);
}

static bool same_image(const entry *a, const entry *b) {
  return a->f.row == b->f.row && a->f.col == b->f.col && a->f.site == b->f.site && a->f.timepoint == b->f.timepoint;
}

static void image_error(plate_image *im, const char *fmt, const char *a, const char *b, int v) {
  if (im->error) return; /* the first problem names the image's failure */
  char buf[512];
  snprintf(buf, sizeof buf, fmt, a, b, v);
  im->error = strdup(buf);
}

/* The files of one image's channel: entries [a, b), sorted by z. */
static int fill_source(plate_image *im, const plate *p, int c, const entry *e, int a, int b) {
  plate_source *s = &im->src[c];
  const char *ch = p->channel_name[c];
  if (a == b) {
    image_error(im, "channel %s missing: no file for it%s", ch, "", 0);
    return 0;
  }
  int stacks = 0;
  for (int i = a; i < b; i++) stacks += e[i].f.z < 0;
  if (stacks > 0 && stacks < b - a) {
    image_error(im, "both a stack file and plane files for channel %s (%s)", ch, e[a].file->rel, 0);
    return 0;
  }
  if (stacks > 1) {
    image_error(im, "duplicate: %s and %s name the same image", e[a].file->rel, e[a + 1].file->rel, 0);
    return 0;
  }
  if (stacks == 1) return (s->path = strdup(e[a].file->path)) ? 0 : -1;
  for (int i = a + 1; i < b; i++) {
    if (e[i].f.z == e[i - 1].f.z) {
      image_error(im, "duplicate plane: %s and %s are the same plane", e[i - 1].file->rel, e[i].file->rel, 0);
      return 0;
    }
    if (e[i].f.z != e[i - 1].f.z + 1) {
      image_error(im, "channel %s: plane %s%d missing", ch, "", e[i - 1].f.z + 1);
      return 0;
    }
  }
  s->planes = calloc((size_t)(b - a), sizeof *s->planes);
  if (s->planes == NULL) return -1;
  s->nplanes = b - a;
  for (int i = a; i < b; i++)
    if ((s->planes[i - a] = strdup(e[i].file->path)) == NULL) return -1;
  return 0;
}

static int build_images(plate *p, entry *e, int n) {
  qsort(e, (size_t)n, sizeof *e, by_key);
  int images = 0;
  for (int i = 0; i < n; i++) images += i == 0 || !same_image(&e[i - 1], &e[i]);
  p->images = calloc((size_t)images, sizeof *p->images);
  if (p->images == NULL) return -1;
  int maxrow = 0, maxcol = 0;
  for (int a = 0; a < n;) {
    int b = a;
    while (b < n && same_image(&e[a], &e[b])) b++;
    plate_image *im = &p->images[p->n++];
    im->row = e[a].f.row, im->col = e[a].f.col, im->site = e[a].f.site, im->timepoint = e[a].f.timepoint;
    plate_well_name(im->row, im->col, im->well, sizeof im->well);
    maxrow = im->row > maxrow ? im->row : maxrow;
    maxcol = im->col > maxcol ? im->col : maxcol;
    for (int c = 0, i = a; c < p->nchannels; c++) {
      int j = i;
      while (j < b && e[j].channel == c) j++;
      if (fill_source(im, p, c, e, i, j) != 0) return -1;
      i = j;
    }
    a = b;
  }
  p->rows = maxrow < 8 && maxcol < 12 ? 8 : maxrow < 16 && maxcol < 24 ? 16 : 32;
  p->cols = p->rows == 8 ? 12 : p->rows == 16 ? 24 : 48;
  return 0;
}

/* The plate's channels: the distinct channel numbers, ascending. */
static int number_channels(plate *p, entry *e, int n, char *err, size_t errlen) {
  int ids[64], nids = 0;
  for (int i = 0; i < n; i++) {
    int id = e[i].f.channel < 0 ? 1 : e[i].f.channel, k = 0;
    while (k < nids && ids[k] != id) k++;
    if (k == nids) {
      if (nids == PLATE_MAX_CHANNELS) {
        snprintf(err, errlen, "more than %d channels (up to channel %d in %s)", PLATE_MAX_CHANNELS, id,
                 e[i].file->rel);
        return -1;
      }
      ids[nids++] = id;
    }
  }
  for (int i = 1; i < nids; i++) /* insertion sort: a handful */
    for (int j = i; j > 0 && ids[j - 1] > ids[j]; j--) {
      int t = ids[j];
      ids[j] = ids[j - 1], ids[j - 1] = t;
    }
  p->nchannels = nids;
  for (int c = 0; c < nids; c++) {
    p->channel_id[c] = ids[c];
    snprintf(p->channel_name[c], sizeof p->channel_name[c], "%d", ids[c]);
  }
  for (int i = 0; i < n; i++) {
    int id = e[i].f.channel < 0 ? 1 : e[i].f.channel;
    for (int c = 0; c < nids; c++)
      if (ids[c] == id) e[i].channel = c;
  }
  return 0;
}

static int count_matches(const found_list *l, const char *pattern) {
  int n = 0;
  plate_fields f;
  for (int i = 0; i < l->n; i++) n += plate_match(pattern, l->v[i].rel, &f);
  return n;
}

static const char *pick_layout(const found_list *l, const char *layout, const char *pattern, char *err, size_t errlen,
                               const plate_layout **preset) {
  *preset = NULL;
  if (pattern) return pattern;
  if (layout) {
    *preset = plate_layout_named(layout);
    return (*preset)->pattern; /* main.c checked the name */
  }
  int best = 0;
  for (const plate_layout *x = plate_layouts; x->name; x++) {
    int m = count_matches(l, x->pattern);
    if (m > best) best = m, *preset = x;
  }
  if (*preset) return (*preset)->pattern;
  snprintf(err, errlen, "no file name matches a known layout (%s, e.g. %s, ...): give --pattern; first: %s",
           plate_layouts[0].name, plate_layouts[0].example, l->v[0].rel);
  return NULL;
}

int plate_open_dir(plate *p, const char *dir, const char *layout, const char *pattern, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  found_list l = {0};
  entry *e = NULL;
  int rc = scan(dir, "", 3, &l, err, errlen);
  if (rc == 0 && l.n == 0) {
    snprintf(err, errlen, "no .tif or .tiff files in %s", dir);
    rc = -1;
  }
  const char *pat = rc == 0 ? pick_layout(&l, layout, pattern, err, errlen, &p->layout) : NULL;
  if (pat == NULL) rc = -1;
  static const plate_layout custom = {NULL, NULL, NULL};
  if (rc == 0 && p->layout == NULL) p->layout = &custom;
  if (rc == 0 && (e = calloc((size_t)l.n, sizeof *e)) == NULL) rc = -1;
  p->unmatched = rc == 0 ? calloc(10, sizeof *p->unmatched) : NULL;
  for (int i = 0; rc == 0 && i < l.n; i++) {
    if (plate_match(pat, l.v[i].rel, &e[p->nmatched].f)) {
      entry *x = &e[p->nmatched++];
      x->file = &l.v[i];
      if (x->f.site < 0) x->f.site = 1;
      if (x->f.timepoint < 0) x->f.timepoint = 1;
      p->planes_per_file |= x->f.z >= 0;
    } else if (p->nunmatched++ < 10 && p->unmatched) {
      p->unmatched[p->nunmatched_kept++] = strdup(l.v[i].path);
    }
  }
  if (rc == 0 && p->nmatched == 0) {
    snprintf(err, errlen, "no file in %s matches the pattern %s (first: %s)", dir, pat, l.v[0].rel);
    rc = -1;
  }
  if (rc == 0) rc = number_channels(p, e, p->nmatched, err, errlen);
  if (rc == 0 && build_images(p, e, p->nmatched) != 0) {
    snprintf(err, errlen, "out of memory");
    rc = -1;
  }
  for (int i = 0; i < l.n; i++) free(l.v[i].rel), free(l.v[i].path);
  free(l.v);
  free(e);
  if (rc != 0) plate_free(p);
  return rc;
}

void plate_free(plate *p) {
  for (int i = 0; i < p->n; i++) {
    plate_image *im = &p->images[i];
    for (int c = 0; c < PLATE_MAX_CHANNELS; c++) {
      free(im->src[c].path);
      for (int z = 0; z < im->src[c].nplanes; z++) free(im->src[c].planes[z]);
      free(im->src[c].planes);
    }
    free(im->error);
  }
  for (int i = 0; i < p->nunmatched_kept; i++) free(p->unmatched[i]);
  free(p->unmatched);
  free(p->images);
  memset(p, 0, sizeof *p);
}

void plate_stack_free(plate_stack *s) {
  for (int i = 0; s->slices && i < s->z; i++) free(s->slices[i]);
  free(s->slices);
  s->slices = NULL;
}
