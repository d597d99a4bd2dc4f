/*
 * cli/main.c: the `arraybridge` command: devices, screen, make-plate. Options are parsed with
 * getopt_long, per command; a bad option is one line naming it and what it takes, exit 2.
 */
#define _GNU_SOURCE /* asprintf */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/human.h"
#include "cli/plate.h"
#include "cli/screen.h"
#include "cli/steps.h"

static const char usage_main[] =
    "usage: arraybridge COMMAND [OPTIONS]     (arraybridge COMMAND --help for its options)\n"
    "\n"
    "commands:\n"
    "  screen       run a plate through the pipeline on every device, write per-image results\n"
    "  make-plate   write the synthetic plate as TIFFs, in a vendor's layout\n"
    "  devices      list the devices: kind, index, name, memory, budget, workers\n"
    "\n"
    "  -h, --help   this text        --version   the library's version\n";

static const char usage_screen[] =
    "usage: arraybridge screen [OPTIONS]\n"
    "\n"
    "Screens a plate: per image (a site of a well) every channel's z-stack is max-projected, the\n"
    "segmentation channel smoothed and rescaled, on the devices; then thresholded, its objects\n"
    "labelled and measured. One CSV row per image, written as each finishes.\n"
    "\n"
    "plate (default: a synthetic plate; --plate DIR for files):\n"
    "  --plate DIR            a folder of 16-bit TIFFs (subfolders three deep are searched)\n"
    "  --layout NAME          simple (A01_s2.tif), imagexpress (Plate_B03_s1_w1.tif, ZStep_N/),\n"
    "                         operetta (r02c03f01p01-ch1sk1fk1fl1.tiff); default: the one that\n"
    "                         matches most files\n"
    "  --pattern PATTERN      a layout of one's own: fields {well} {row} {col} {site} {channel}\n"
    "                         {z} {timepoint} {*}, {field:N} for N digits, [...] optional; with\n"
    "                         {z} one file per plane, else the planes are a file's pages\n"
    "  --segment CH           the channel to segment (default: the first); all are measured\n"
    "  --z N                  with --plate: every stack must have N planes\n"
    "  --wells N              synthetic: 1-1536 wells (96, 384 or 1536-well format; default 96)\n"
    "  --sites N --channels N --z N --size WxH --seed S\n"
    "                         synthetic: 1-64 sites (2), 1-8 channels (1), 1-1024 planes (16),\n"
    "                         8-16384 pixels a side (512x512), any seed (1)\n"
    "\n"
    "pipeline:\n"
    "  --filter-size PX       Gaussian smoothing of PX pixels, sigma PX/2.35, 0-30 (3; 0: none)\n"
    "  --rescale LO,HI        percentiles mapped to 0 and 1, 0-100, 0.1 steps (1,99.9)\n"
    "  --threshold T          otsu (default), or a fraction of the rescaled range, 0-1\n"
    "  --min-size PX          objects smaller than PX pixels are dropped, 1-1000000 (20)\n"
    "\n"
    "output:\n"
    "  -o, --out FILE         per-image results, CSV (results.csv); FILE.json beside it (.csv\n"
    "                         replaced) records how they were made\n"
    "  --objects FILE         one row per object: label, area, centroid, intensity per channel\n"
    "  --heatmap FILE.png     a plate heatmap of one column (--heatmap-column NAME, objects)\n"
    "  --resume               keep the ok rows of an interrupted run's FILE, redo the rest\n"
    "  --overwrite            replace an existing FILE (otherwise refused)\n"
    "  --trace FILE           a Chrome trace of every worker and stream (open in Perfetto)\n"
    "  -q, --quiet            no progress bar, no summary\n"
    "\n"
    "devices:\n"
    "  --devices LIST         all (default), or kinds and devices: host,opencl,cuda,opencl:1\n"
    "  --memory-limit BYTES   a budget per device (suffixes K, M, G)\n"
    "  --inflight N           stacks in flight per device, 1-8 (2)\n"
    "  --host-workers N       host threads (loading, identifying, host steps), 1-256 (one per core)\n"
    "\n"
    "exit status: 0 every image ran; 1 fatal (unreadable plate folder, unwritable output);\n"
    "2 bad usage, or a configuration that can run nothing (no device, a budget below one\n"
    "stack); 3 some images failed (their rows say why; the rest ran); 128+N stopped by signal N\n"
    "(the rows written are kept: --resume finishes the plate)\n";

static const char usage_make_plate[] =
    "usage: arraybridge make-plate --out DIR [OPTIONS]\n"
    "\n"
    "Writes the synthetic plate (the one `screen` makes without --plate) as 16-bit TIFFs.\n"
    "\n"
    "  -o, --out DIR          the folder (made if missing)\n"
    "  --layout NAME          simple: WELL_sSITE[_wCH].tif, z as pages (default);\n"
    "                         imagexpress: [ZStep_Z/]Plate_WELL_sSITE_wCH.tif, a file per plane;\n"
    "                         operetta: rRRcCCfFFpZZ-chCHsk1fk1fl1.tiff, a file per plane\n"
    "  --wells N --sites N --channels N --z N --size WxH --seed S   as for screen\n"
    "  --bits 8|16            8 writes the top byte (for testing readers; default 16)\n"
    "  --overwrite            write over files that are there (otherwise refused)\n";

static const char usage_devices[] = "usage: arraybridge devices\n\nLists every device the runtime opens.\n";

/* ---- option errors -------------------------------------------------------------------------- */
static const char *command; /* for messages */

static int usage_error(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "arraybridge %s: ", command);
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, " (arraybridge %s --help)\n", command);
  return EXIT_USAGE;
}

/* ---- values --------------------------------------------------------------------------------- */
static bool parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (!*s || s[0] == '-' || s[0] == '+' || s[0] == ' ') return false;
  unsigned long long v = strtoull(s, &end, 10);
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
  else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
  else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
  else if (*end == 'T' || *end == 't') mul = 1ull << 40, end++;
  if (errno || end == s || *end || (v && mul > UINT64_MAX / v)) return false;
  *out = (uint64_t)v * mul;
  return true;
}

static int int_opt(const char *opt, const char *v, int lo, int hi, int *out) {
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (errno || end == v || *end || x < lo || x > hi) {
    char range[64];
    snprintf(range, sizeof range, "a whole number from %d to %d", lo, hi);
    fprintf(stderr, "arraybridge %s: %s '%s': want %s (arraybridge %s --help)\n", command, opt, v, range, command);
    return EXIT_USAGE;
  }
  *out = (int)x;
  return 0;
}

static int double_opt(const char *opt, const char *v, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !(x >= lo && x <= hi)) {
    fprintf(stderr, "arraybridge %s: %s '%s': want a number from %g to %g (arraybridge %s --help)\n", command, opt, v,
            lo, hi, command);
    return EXIT_USAGE;
  }
  *out = x;
  return 0;
}

static int size_opt(const char *v, int *w, int *h) {
  char *end;
  long a = strtol(v, &end, 10), b = *end == 'x' ? strtol(end + 1, &end, 10) : 0;
  if (*end || a < 8 || b < 8 || a > 16384 || b > 16384)
    return usage_error("--size '%s': want WxH, each 8 to 16384 pixels (e.g. 512x512)%s", v, "");
  *w = (int)a, *h = (int)b;
  return 0;
}

static int threshold_opt(const char *v, screen_pipeline *p) {
  if (strcmp(v, "otsu") == 0) {
    p->otsu = true;
    return 0;
  }
  double t;
  char *end;
  t = strtod(v, &end);
  if (end == v || *end || !(t > 0 && t <= 1))
    return usage_error("--threshold '%s': want otsu, or a fraction of the rescaled range above 0, at most 1%s", v,
                       "");
  p->otsu = false;
  p->threshold = t;
  return 0;
}

static int rescale_opt(const char *v, screen_pipeline *p) {
  double lo, hi;
  char tail;
  if (sscanf(v, "%lf,%lf%c", &lo, &hi, &tail) != 2 || !(lo >= 0 && hi <= 100 && lo < hi) ||
      fabs(lo * 10 - round(lo * 10)) > 1e-9 || fabs(hi * 10 - round(hi * 10)) > 1e-9)
    return usage_error("--rescale '%s': want LO,HI percentiles, 0 <= LO < HI <= 100, in steps of 0.1 (e.g. 1,99.9)%s",
                       v, "");
  p->p_lo = (uint32_t)lround(lo * 10);
  p->p_hi = (uint32_t)lround(hi * 10);
  return 0;
}

/* ---- getopt_long ---------------------------------------------------------------------------- */
enum {
  O_PLATE = 256, O_LAYOUT, O_PATTERN, O_SEGMENT, O_Z, O_WELLS, O_SITES, O_CHANNELS, O_SIZE, O_SEED, O_FILTER,
  O_RESCALE, O_THRESHOLD, O_MIN_SIZE, O_OBJECTS, O_HEATMAP, O_HEATMAP_COL, O_RESUME, O_OVERWRITE, O_TRACE, O_DEVICES,
  O_MEMORY, O_INFLIGHT, O_BITS, O_HOST_WORKERS,
};

static const struct option screen_long[] = {
    {"plate", required_argument, NULL, O_PLATE},       {"layout", required_argument, NULL, O_LAYOUT},
    {"pattern", required_argument, NULL, O_PATTERN},   {"segment", required_argument, NULL, O_SEGMENT},
    {"z", required_argument, NULL, O_Z},               {"wells", required_argument, NULL, O_WELLS},
    {"sites", required_argument, NULL, O_SITES},       {"channels", required_argument, NULL, O_CHANNELS},
    {"size", required_argument, NULL, O_SIZE},         {"seed", required_argument, NULL, O_SEED},
    {"filter-size", required_argument, NULL, O_FILTER}, {"rescale", required_argument, NULL, O_RESCALE},
    {"threshold", required_argument, NULL, O_THRESHOLD}, {"min-size", required_argument, NULL, O_MIN_SIZE},
    {"out", required_argument, NULL, 'o'},             {"objects", required_argument, NULL, O_OBJECTS},
    {"heatmap", required_argument, NULL, O_HEATMAP},   {"heatmap-column", required_argument, NULL, O_HEATMAP_COL},
    {"resume", no_argument, NULL, O_RESUME},           {"overwrite", no_argument, NULL, O_OVERWRITE},
    {"trace", required_argument, NULL, O_TRACE},       {"quiet", no_argument, NULL, 'q'},
    {"devices", required_argument, NULL, O_DEVICES},   {"memory-limit", required_argument, NULL, O_MEMORY},
    {"inflight", required_argument, NULL, O_INFLIGHT}, {"host-workers", required_argument, NULL, O_HOST_WORKERS},
    {"help", no_argument, NULL, 'h'},                   {NULL, 0, NULL, 0},
};

static const struct option make_plate_long[] = {
    {"out", required_argument, NULL, 'o'},         {"layout", required_argument, NULL, O_LAYOUT},
    {"wells", required_argument, NULL, O_WELLS},   {"sites", required_argument, NULL, O_SITES},
    {"channels", required_argument, NULL, O_CHANNELS}, {"z", required_argument, NULL, O_Z},
    {"size", required_argument, NULL, O_SIZE},     {"seed", required_argument, NULL, O_SEED},
    {"bits", required_argument, NULL, O_BITS},     {"overwrite", no_argument, NULL, O_OVERWRITE},
    {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0},
};

static const struct option devices_long[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};

/* The option getopt_long just rejected, as the user wrote it. */
static int bad_option(int c, char **argv, const struct option *longs) {
  const char *arg = argv[optind - 1];
  if (c == ':') return usage_error("%s needs a value%s", arg, "");
  if (optopt && optopt < 256 && strncmp(arg, "--", 2) != 0) {
    char s[3] = {'-', (char)optopt, 0};
    return usage_error("unknown option %s%s", s, "");
  }
  if (optopt >= 256 || strchr(arg, '=')) /* a long option that takes no value got one */
    for (const struct option *o = longs; o->name; o++)
      if (strncmp(arg + 2, o->name, strlen(o->name)) == 0 && o->has_arg == no_argument)
        return usage_error("--%s takes no value%s", o->name, "");
  return usage_error("unknown option %s%s", arg, "");
}

typedef struct {
  screen_options s;
  const char *make_dir;
  int bits;
  bool synthetic_given, z_given, layout_given;
} parsed;

/* Options shared by screen and make-plate: the synthetic plate. 1: not one of them. */
static int plate_option(int c, const char *v, parsed *p) {
  screen_options *o = &p->s;
  switch (c) {
  case O_WELLS: p->synthetic_given = true; return int_opt("--wells", v, 1, 1536, &o->wells);
  case O_SITES: p->synthetic_given = true; return int_opt("--sites", v, 1, 64, &o->sites);
  case O_CHANNELS: p->synthetic_given = true; return int_opt("--channels", v, 1, PLATE_MAX_CHANNELS, &o->channels);
  case O_Z: p->z_given = true; return int_opt("--z", v, 1, 1024, &o->z);
  case O_SIZE: p->synthetic_given = true; return size_opt(v, &o->w, &o->h);
  case O_SEED:
    p->synthetic_given = true;
    return parse_u64(v, &o->seed) ? 0 : usage_error("--seed '%s': want a whole number from 0 to 2^64-1%s", v, "");
  case O_LAYOUT:
    p->layout_given = true;
    o->layout = v;
    return plate_layout_named(v) ? 0 : usage_error("--layout '%s': want simple, imagexpress or operetta%s", v, "");
  default: return 1;
  }
}

static int screen_option(int c, const char *v, parsed *p) {
  screen_options *o = &p->s;
  int rc = plate_option(c, v, p);
  if (rc != 1) return rc;
  switch (c) {
  case O_PLATE: o->plate_dir = v; return 0;
  case O_PATTERN:
    o->pattern = v;
    return plate_pattern_error(v) ? usage_error("--pattern '%s': %s", v, plate_pattern_error(v)) : 0;
  case O_SEGMENT: o->segment = v; return 0;
  case O_FILTER: return double_opt("--filter-size", v, 0, 30, &o->pipeline.filter_size);
  case O_RESCALE: return rescale_opt(v, &o->pipeline);
  case O_THRESHOLD: return threshold_opt(v, &o->pipeline);
  case O_MIN_SIZE: return int_opt("--min-size", v, 1, 1000000, &o->pipeline.min_area);
  case 'o': o->out_csv = v; return 0;
  case O_OBJECTS: o->objects = v; return 0;
  case O_HEATMAP: o->heatmap = v; return 0;
  case O_HEATMAP_COL: o->heatmap_column = v; return 0;
  case O_RESUME: o->resume = true; return 0;
  case O_OVERWRITE: o->overwrite = true; return 0;
  case O_TRACE: o->trace = v; return 0;
  case 'q': o->quiet = true; return 0;
  case O_DEVICES: o->devices = v; return 0;
  case O_MEMORY:
    return parse_u64(v, &o->memory_limit) && o->memory_limit > 0
               ? 0
               : usage_error("--memory-limit '%s': want bytes above 0, with K, M, G or T for KiB...TiB%s", v, "");
  case O_INFLIGHT: return int_opt("--inflight", v, 1, 8, &o->inflight);
  case O_HOST_WORKERS: return int_opt("--host-workers", v, 1, 256, &o->host_workers);
  default: return usage_error("unknown option%s%s", "", "");
  }
}

static int make_plate_option(int c, const char *v, parsed *p) {
  int rc = plate_option(c, v, p);
  if (rc != 1) return rc;
  switch (c) {
  case 'o': p->make_dir = v; return 0;
  case O_OVERWRITE: p->s.overwrite = true; return 0;
  case O_BITS:
    if (strcmp(v, "8") == 0 || strcmp(v, "16") == 0) return p->bits = atoi(v), 0;
    return usage_error("--bits '%s': want 8 or 16%s", v, "");
  default: return usage_error("unknown option%s%s", "", "");
  }
}

/* Runs getopt_long over argv (argv[0] is the command). 0, -1 after printing help, or an exit status. */
static int parse(int argc, char **argv, const struct option *longs, const char *shorts,
                 int (*each)(int c, const char *v, parsed *p), const char *usage, parsed *p) {
  optind = 1;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, shorts, longs, NULL)) != -1) {
    if (c == 'h') {
      fputs(usage, stdout);
      return -1;
    }
    if (c == '?' || c == ':') return bad_option(c, argv, longs);
    int rc = each(c, optarg, p);
    if (rc != 0) return rc;
  }
  if (optind < argc) return usage_error("unexpected argument '%s': options start with --%s", argv[optind], "");
  return 0;
}

static int screen_checks(parsed *p) {
  screen_options *o = &p->s;
  if (o->plate_dir && p->synthetic_given)
    return usage_error("--wells, --sites, --channels, --size and --seed describe the synthetic plate, not "
                       "--plate %s%s", o->plate_dir, "");
  if (!o->plate_dir && (p->layout_given || o->pattern)) return usage_error("--layout and --pattern need --plate%s%s", "", "");
  if (p->layout_given && o->pattern) return usage_error("--layout or --pattern, not both%s%s", "", "");
  if (o->resume && o->overwrite) return usage_error("--resume or --overwrite, not both%s%s", "", "");
  if (o->heatmap_column && !o->heatmap) return usage_error("--heatmap-column needs --heatmap FILE.png%s%s", "", "");
  o->z_given = p->z_given && o->plate_dir;
  if (!o->heatmap_column) o->heatmap_column = "objects";
  screen_pipeline_weights(&o->pipeline);
  return 0;
}

/* ---- commands ------------------------------------------------------------------------------- */
static int cmd_devices(void) {
  ab_runtime *rt;
  int rc = ab_runtime_create(NULL, &rt);
  if (rc != 0) {
    fprintf(stderr, "arraybridge: cannot start the runtime: %s\n", ab_strerror(rc));
    return EXIT_FATAL;
  }
  ab_device devs[64];
  int n = ab_runtime_devices(rt, devs, 64);
  printf("%-8s %5s  %-36s %10s %10s %7s  %s\n", "kind", "index", "name", "memory", "budget", "workers",
         "screening");
  for (int i = 0; i < n && i < 64; i++) {
    ab_device_info info;
    if (ab_device_info_get(rt, devs[i], &info) != 0) continue;
    char mem[32], bud[32];
    human_bytes(info.memory_total, mem, sizeof mem);
    if (info.budget == UINT64_MAX) snprintf(bud, sizeof bud, "unlimited");
    else human_bytes(info.budget, bud, sizeof bud);
    printf("%-8s %5d  %-36.36s %10s %10s %7d  %s\n", ab_kind_name(devs[i].kind), devs[i].index, info.name, mem, bud,
           (int)info.workers, steps_for(devs[i].kind) ? "yes" : "no steps in this build");
  }
  ab_runtime_destroy(rt, AB_DRAIN);
  return EXIT_OK;
}

/* The file names of one channel's stack in a layout: one name for a multi-page file, or one per plane. */
static int plate_file(const char *dir, const char *layout, const plate_image *im, int ch, int z, char **out) {
  if (strcmp(layout, "imagexpress") == 0)
    return asprintf(out, "%s/ZStep_%d/Plate_%s_s%d_w%d.tif", dir, z + 1, im->well, im->site, ch + 1);
  if (strcmp(layout, "operetta") == 0)
    return asprintf(out, "%s/r%02dc%02df%02dp%02d-ch%dsk1fk1fl1.tiff", dir, im->row + 1, im->col + 1, im->site, z + 1,
                    ch + 1);
  if (ch == 0 && z < 0) return asprintf(out, "%s/%s_s%d.tif", dir, im->well, im->site);
  return asprintf(out, "%s/%s_s%d_w%d.tif", dir, im->well, im->site, ch + 1);
}

/* mkdir -p */
static int make_dir(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *s = buf + 1; *s; s++) {
    if (*s != '/') continue;
    *s = 0;
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) break;
    *s = '/';
  }
  if (mkdir(buf, 0777) == 0 || errno == EEXIST) return 0;
  fprintf(stderr, "arraybridge make-plate: cannot create %s: %s\n", path, strerror(errno));
  return -1;
}

static int write_stack(const char *dir, const char *layout, const plate *p, int i, int c, int nch,
                       const plate_stack *s, int bits, bool overwrite) {
  bool per_plane = strcmp(layout, "simple") != 0;
  for (int z = 0; z < (per_plane ? s->z : 1); z++) {
    char *path = NULL, err[600];
    if (plate_file(dir, layout, &p->images[i], c, per_plane ? z : (nch > 1 ? 0 : -1), &path) < 0) return -1;
    char *slash = strrchr(path, '/');
    *slash = 0;
    int rc = make_dir(path);
    *slash = '/';
    struct stat st;
    if (rc == 0 && !overwrite && stat(path, &st) == 0) {
      fprintf(stderr, "arraybridge make-plate: %s exists (--overwrite writes over it)\n", path);
      rc = -2;
    }
    if (rc == 0 && plate_write_tiff(path, s, per_plane ? z : 0, per_plane ? z + 1 : s->z, bits, err, sizeof err)) {
      fprintf(stderr, "arraybridge make-plate: %s\n", err);
      rc = -1;
    }
    free(path);
    if (rc != 0) return rc;
  }
  return 0;
}

static int cmd_make_plate(const parsed *a) {
  const screen_options *o = &a->s;
  const char *layout = o->layout ? o->layout : "simple";
  if (make_dir(a->make_dir) != 0) return EXIT_FATAL;
  plate p;
  if (plate_synthetic(&p, o->wells, o->sites, o->channels, o->z, o->h, o->w, o->seed) != 0) return EXIT_FATAL;
  int status = EXIT_OK;
  for (int i = 0; i < p.n && status == EXIT_OK; i++)
    for (int c = 0; c < p.nchannels && status == EXIT_OK; c++) {
      plate_stack s;
      char err[300];
      if (plate_load(&p, i, c, 0, &s, err, sizeof err) != 0) {
        fprintf(stderr, "arraybridge make-plate: %s\n", err);
        status = EXIT_FATAL;
        break;
      }
      int rc = write_stack(a->make_dir, layout, &p, i, c, p.nchannels, &s, a->bits, o->overwrite);
      if (rc != 0) status = rc == -2 ? EXIT_USAGE : EXIT_FATAL;
      plate_stack_free(&s);
    }
  plate_free(&p);
  return status;
}

static void defaults(parsed *p, int argc, char **argv) {
  memset(p, 0, sizeof *p);
  screen_options *o = &p->s;
  o->out_csv = "results.csv";
  o->wells = 96, o->sites = 2, o->channels = 1, o->z = 16, o->h = 512, o->w = 512, o->seed = 1;
  o->devices = "all";
  o->inflight = 2;
  o->pipeline = (screen_pipeline){.filter_size = 3, .p_lo = 10, .p_hi = 999, .otsu = true, .threshold = 0,
                                  .min_area = 20};
  o->argc = argc, o->argv = argv;
  p->bits = 16;
}

int main(int argc, char **argv) {
  /* Stacks of slices are read, used and freed at a high rate: keep their memory in the heap for
   * the next stack instead of mapping fresh (page-faulting) memory for every slice. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  if (argc < 2) {
    fputs(usage_main, stderr);
    return EXIT_USAGE;
  }
  if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    fputs(usage_main, stdout);
    return EXIT_OK;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("arraybridge %s\n", ab_version());
    return EXIT_OK;
  }
  command = argv[1];
  parsed a;
  defaults(&a, argc, argv);
  int rc;
  if (strcmp(command, "screen") == 0) {
    rc = parse(argc - 1, argv + 1, screen_long, "+:ho:q", screen_option, usage_screen, &a);
    if (rc == 0) rc = screen_checks(&a);
    return rc < 0 ? EXIT_OK : rc ? rc : screen_run(&a.s);
  }
  if (strcmp(command, "make-plate") == 0) {
    rc = parse(argc - 1, argv + 1, make_plate_long, "+:ho:", make_plate_option, usage_make_plate, &a);
    if (rc == 0 && a.make_dir == NULL) rc = usage_error("--out DIR is required%s%s", "", "");
    return rc < 0 ? EXIT_OK : rc ? rc : cmd_make_plate(&a);
  }
  if (strcmp(command, "devices") == 0) {
    rc = parse(argc - 1, argv + 1, devices_long, "+:h", NULL, usage_devices, &a);
    return rc < 0 ? EXIT_OK : rc ? rc : cmd_devices();
  }
  fprintf(stderr, "arraybridge: unknown command '%s': use screen, make-plate or devices (arraybridge --help)\n",
          command);
  return EXIT_USAGE;
}
