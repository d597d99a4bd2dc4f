/*
 * cli/main.c: the `arraybridge` command: devices, screen, make-plate.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/plate.h"
#include "cli/screen.h"
#include "cli/steps.h"

static const char usage[] =
    "usage: arraybridge <command> [options]\n"
    "\n"
    "commands:\n"
    "  devices                  every device: kind, index, name, memory, budget, workers\n"
    "  screen [options]         run a plate through the pipeline on every device\n"
    "  make-plate --out DIR     write the synthetic plate as TIFFs (same size options)\n"
    "\n"
    "screen options:\n"
    "  --plate DIR              a folder of multi-page uint16 TIFFs, one z-stack per file,\n"
    "                           named WELL_sSITE.tif (e.g. A01_s2.tif); default: synthetic\n"
    "  --out FILE               per-image results, CSV (default results.csv)\n"
    "  --trace FILE             a Chrome trace of every worker and stream (open in Perfetto)\n"
    "  --wells N --sites N --z N --size WxH --seed S\n"
    "                           the synthetic plate (default 96 wells, 2 sites, 16 z, 512x512,\n"
    "                           seed 1; a real 96-well plate: --wells 96 --sites 4 --z 32\n"
    "                           --size 2048x2048)\n"
    "  --devices LIST           all (default), or kinds and devices: host,opencl,cuda,opencl:1\n"
    "  --memory-limit BYTES     a budget per device (suffixes K, M, G)\n"
    "  --inflight N             stacks in flight per device, 1-8 (default 2)\n"
    "  --quiet                  no progress bar, no summary\n"
    "\n"
    "exit status: 0 every image ran; 1 fatal (missing plate folder, no device, I/O error);\n"
    "2 bad usage; 3 some images failed (their rows in the CSV say why; the rest ran)\n";

const char *kind_name(int kind) {
  static const char *names[] = {"host", "opencl", "cuda"};
  return kind >= 0 && kind < AB_KIND_COUNT ? names[kind] : "?";
}

const char *human_bytes(uint64_t b, char *buf, size_t n) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, u++;
  if (u == 0) snprintf(buf, n, "%" PRIu64 " B", b);
  else snprintf(buf, n, "%.1f %s", v, units[u]);
  return buf;
}

/* ---- device lists --------------------------------------------------------------------------- */
typedef struct {
  bool kind_all[AB_KIND_COUNT];
  int n;
  ab_device one[MAX_SCREEN_DEVICES]; /* kind:index items */
} device_list;

static int parse_kind(const char *s, size_t len) {
  for (int k = 0; k < AB_KIND_COUNT; k++)
    if (strlen(kind_name(k)) == len && strncmp(s, kind_name(k), len) == 0) return k;
  return -1;
}

static int parse_devices(const char *list, device_list *out) {
  memset(out, 0, sizeof *out);
  const char *p = list;
  while (*p) {
    size_t len = strcspn(p, ",");
    const char *colon = memchr(p, ':', len);
    int kind = parse_kind(p, colon ? (size_t)(colon - p) : len);
    if (len == 3 && strncmp(p, "all", 3) == 0) {
      for (int k = 0; k < AB_KIND_COUNT; k++) out->kind_all[k] = true;
    } else if (kind < 0 || (colon && (colon[1] < '0' || colon[1] > '9')) || out->n == MAX_SCREEN_DEVICES) {
      fprintf(stderr, "arraybridge: bad device '%.*s' (use all, host, opencl, cuda or kind:index)\n", (int)len, p);
      return EXIT_USAGE;
    } else if (colon) {
      out->one[out->n++] = (ab_device){kind, atoi(colon + 1)};
    } else {
      out->kind_all[kind] = true;
    }
    p += len + (p[len] == ',');
  }
  return 0;
}

static bool listed(const device_list *l, ab_device d) {
  if (l->kind_all[d.kind]) return true;
  for (int i = 0; i < l->n; i++)
    if (l->one[i].kind == d.kind && l->one[i].index == d.index) return true;
  return false;
}

static int check_named(ab_runtime *rt, const device_list *l) {
  ab_device_info info;
  for (int i = 0; i < l->n; i++)
    if (ab_device_info_get(rt, l->one[i], &info) != 0) {
      fprintf(stderr, "arraybridge: no device %s:%d here (see `arraybridge devices`)\n", kind_name(l->one[i].kind),
              l->one[i].index);
      return EXIT_USAGE;
    }
  return 0;
}

static int pick(ab_runtime *rt, const char *list, const device_list *l, ab_device *devs, int *ndevs) {
  ab_device all[64];
  int n = ab_runtime_devices(rt, all, 64);
  bool warned[AB_KIND_COUNT] = {false};
  *ndevs = 0;
  for (int i = 0; i < n && i < 64 && *ndevs < MAX_SCREEN_DEVICES; i++) {
    if (!listed(l, all[i])) continue;
    if (steps_for(all[i].kind) == NULL) {
      if (!warned[all[i].kind])
        fprintf(stderr, "arraybridge: this build has no screening steps for %s devices; left out\n",
                kind_name(all[i].kind));
      warned[all[i].kind] = true;
      continue;
    }
    devs[(*ndevs)++] = all[i];
  }
  if (*ndevs > 0) return 0;
  fprintf(stderr, "arraybridge: no device with screening steps among '%s' (see `arraybridge devices`)\n", list);
  return EXIT_FATAL;
}

int screen_runtime(const char *list, uint64_t memory_limit, ab_runtime **rt, ab_device *devs, int *ndevs) {
  device_list l;
  int status = parse_devices(list, &l);
  if (status != 0) return status;
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    bool named = l.kind_all[k];
    for (int i = 0; i < l.n; i++) named |= l.one[i].kind == k;
    o.kinds[k].disabled = !named && k != AB_HOST; /* the host always: counting runs there */
    o.kinds[k].memory_limit = memory_limit;
  }
  int rc = ab_runtime_create(&o, rt);
  if (rc != 0) {
    fprintf(stderr, "arraybridge: cannot start the runtime: %s\n", ab_strerror(rc));
    return EXIT_FATAL;
  }
  status = check_named(*rt, &l);
  if (status == 0) status = pick(*rt, list, &l, devs, ndevs);
  if (status != 0) ab_runtime_destroy(*rt, AB_DRAIN);
  return status;
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
    printf("%-8s %5d  %-36.36s %10s %10s %7d  %s\n", kind_name(devs[i].kind), devs[i].index, info.name, mem, bud,
           (int)info.workers, steps_for(devs[i].kind) ? "yes" : "no steps in this build");
  }
  ab_runtime_destroy(rt, AB_DRAIN);
  return EXIT_OK;
}

static int cmd_make_plate(const screen_options *o, const char *dir, int bits) {
  if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
    fprintf(stderr, "arraybridge: cannot create %s: %m\n", dir);
    return EXIT_FATAL;
  }
  plate p;
  if (plate_synthetic(&p, o->wells, o->sites, o->z, o->h, o->w, o->seed) != 0) return EXIT_FATAL;
  int status = EXIT_OK;
  for (int i = 0; i < p.n && status == EXIT_OK; i++) {
    uint16_t **s;
    int z, h, w;
    char err[300], path[4096];
    snprintf(path, sizeof path, "%s/%s_s%d.tif", dir, p.images[i].well, p.images[i].site);
    if (plate_load(&p, i, &s, &z, &h, &w, err, sizeof err) != 0 ||
        plate_write_tiff(path, s, z, h, w, bits, err, sizeof err) != 0) {
      fprintf(stderr, "arraybridge: %s\n", err);
      status = EXIT_FATAL;
    } else {
      plate_free_slices(s, z);
    }
  }
  plate_free(&p);
  return status;
}

/* ---- options -------------------------------------------------------------------------------- */
static bool parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  uint64_t mul = 1;
  if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
  else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
  else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
  if (errno || end == s || *end || s[0] == '-') return false;
  *out = (uint64_t)v * mul;
  return true;
}

static bool parse_int(const char *s, int lo, int hi, int *out) {
  uint64_t v;
  if (!parse_u64(s, &v) || v < (uint64_t)lo || v > (uint64_t)hi) return false;
  *out = (int)v;
  return true;
}

static int bad(const char *opt, const char *val) {
  fprintf(stderr, "arraybridge: bad value for %s: '%s'\n%s", opt, val ? val : "(missing)", usage);
  return EXIT_USAGE;
}

/* Parses argv[2..]; *make_dir and *bits only for make-plate. */
static int parse_options(int argc, char **argv, screen_options *o, const char **make_dir, int *bits) {
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool ok = true;
    if (strcmp(a, "--quiet") == 0) {
      o->quiet = true;
      continue;
    }
    if (v == NULL) return bad(a, NULL);
    i++;
    if (strcmp(a, "--plate") == 0) o->plate_dir = v;
    else if (strcmp(a, "--out") == 0) o->out_csv = v, *make_dir = v;
    else if (strcmp(a, "--trace") == 0) o->trace = v;
    else if (strcmp(a, "--wells") == 0) ok = parse_int(v, 1, 1536, &o->wells);
    else if (strcmp(a, "--sites") == 0) ok = parse_int(v, 1, 64, &o->sites);
    else if (strcmp(a, "--z") == 0) ok = parse_int(v, 1, 1024, &o->z);
    else if (strcmp(a, "--size") == 0) ok = sscanf(v, "%dx%d", &o->w, &o->h) == 2 && o->w >= 8 && o->h >= 8 &&
                                            o->w <= 16384 && o->h <= 16384;
    else if (strcmp(a, "--seed") == 0) ok = parse_u64(v, &o->seed);
    else if (strcmp(a, "--devices") == 0) o->devices = v;
    else if (strcmp(a, "--memory-limit") == 0) ok = parse_u64(v, &o->memory_limit);
    else if (strcmp(a, "--inflight") == 0) ok = parse_int(v, 1, 8, &o->inflight);
    else if (strcmp(a, "--bits") == 0) ok = parse_int(v, 8, 16, bits) && (*bits == 8 || *bits == 16);
    else {
      fprintf(stderr, "arraybridge: unknown option %s\n%s", a, usage);
      return EXIT_USAGE;
    }
    if (!ok) return bad(a, v);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : EXIT_OK;
  }
  screen_options o = {.out_csv = "results.csv", .wells = 96, .sites = 2, .z = 16, .h = 512, .w = 512,
                      .seed = 1, .devices = "all", .inflight = 2};
  const char *make_dir = NULL;
  int bits = 16;
  int status = parse_options(argc, argv, &o, &make_dir, &bits);
  if (status != 0) return status;
  if (strcmp(argv[1], "devices") == 0) return cmd_devices();
  if (strcmp(argv[1], "screen") == 0) return screen_run(&o);
  if (strcmp(argv[1], "make-plate") == 0) {
    if (make_dir == NULL) return bad("make-plate --out", NULL);
    return cmd_make_plate(&o, make_dir, bits);
  }
  fprintf(stderr, "arraybridge: unknown command '%s'\n%s", argv[1], usage);
  return EXIT_USAGE;
}
