/*
 * cli/screen.c: `arraybridge screen`, the screening job.
 *
 * Every z-stack goes through one chain of tasks on one device, each step a task whose input is
 * the previous step's future, so the chain runs without the caller waiting in between:
 *
 *   ab_stack(slices) -> normalise -> filter -> project -> threshold      (on the chosen device)
 *   project, threshold -> ab_convert_after(host) -> count                (on the host)
 *
 * Placement is explicit per stack: the device with the fewest stacks in flight (ties: round
 * robin), so faster devices take more. Backpressure: at most `inflight` stacks per device are
 * loaded and in flight; the loader waits for any one to finish before reading the next file.
 * Results are kept per image and written in plate order, so a CSV does not depend on timing.
 */
#include "cli/screen.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/plate.h"
#include "cli/steps.h"

#define MIN_AREA 8 /* pixels: smaller foreground specks are noise, not cells */
#define CHAIN 8

typedef struct {
  int status;                     /* 0 or AB_E*; 1: not run */
  char error[240];
  int slot;                       /* screening device, -1: none */
  int64_t objects, area_sum, fg_px, npix;
  uint64_t intensity_sum;
} result;

typedef struct {
  int image, slot;
  ab_future *f[CHAIN];            /* stack, normalise, filter, project, threshold, mask, proj, count */
} job;

static const char *const step_names[CHAIN] = {"stack", "normalise", "filter", "project",
                                              "threshold", "mask to host", "projection to host", "count"};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- the count step (host) ------------------------------------------------------------------ */
/* Size of the 8-connected component at i, clearing it from `left`. */
static int64_t flood(uint8_t *left, int32_t *stack, int64_t h, int64_t w, int64_t i) {
  int64_t n = 0, top = 0;
  stack[top++] = (int32_t)i;
  left[i] = 0;
  while (top > 0) {
    int64_t p = stack[--top], y = p / w, x = p % w;
    n++;
    for (int dy = -1; dy <= 1; dy++)
      for (int dx = -1; dx <= 1; dx++) {
        int64_t yy = y + dy, xx = x + dx;
        if (yy < 0 || yy >= h || xx < 0 || xx >= w || !left[yy * w + xx]) continue;
        left[yy * w + xx] = 0;
        stack[top++] = (int32_t)(yy * w + xx);
      }
  }
  return n;
}

static const void *data_of(ab_tensor *t) {
  const DLTensor *x = ab_tensor_dl(t);
  return (const char *)x->data + x->byte_offset;
}

static int count_task(ab_ctx *c, void *arg) {
  result *r = arg;
  ab_tensor *mask = ab_ctx_input(c, 0), *proj = ab_ctx_input(c, 1);
  const DLTensor *m = ab_tensor_dl(mask);
  if (m->ndim != 2 || !ab_tensor_is_contiguous(mask) || !ab_tensor_is_contiguous(proj)) return AB_ESHAPE;
  int64_t h = m->shape[0], w = m->shape[1], n = h * w;
  uint8_t *left;
  int32_t *stack;
  int rc = ab_ctx_alloc(c, (size_t)n, (void **)&left);
  if (rc == 0) rc = ab_ctx_alloc(c, (size_t)n * sizeof *stack, (void **)&stack);
  if (rc != 0) return rc;
  memcpy(left, data_of(mask), (size_t)n); /* inputs stay untouched */
  const uint16_t *p = data_of(proj);
  r->objects = r->area_sum = r->fg_px = 0;
  r->intensity_sum = 0;
  for (int64_t i = 0; i < n; i++) {
    r->intensity_sum += p[i];
    r->fg_px += ((const uint8_t *)data_of(mask))[i];
    if (!left[i]) continue;
    int64_t area = flood(left, stack, h, w, i);
    if (area >= MIN_AREA) {
      r->objects++;
      r->area_sum += area;
    }
  }
  r->npix = n;
  return 0;
}

/* ---- one stack's chain ---------------------------------------------------------------------- */
static int submit_step(ab_runtime *rt, ab_device d, int policy, ab_task_fn fn, void *arg, const char *name,
                       const ab_input *in, int nin, ab_future **out) {
  ab_task_desc t = AB_TASK_DESC_INIT;
  t.fn = fn;
  t.arg = arg;
  t.name = name;
  t.inputs = in;
  t.ninputs = nin;
  t.place.policy = policy;
  t.place.device = d;
  return ab_submit(rt, &t, out);
}

static int submit_chain(ab_runtime *rt, ab_device d, ab_tensor **slices, int z, job *j, result *r) {
  const screen_steps *st = steps_for(d.kind);
  ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
  co.place.policy = AB_PLACE_EXPLICIT;
  co.place.device = d;
  int rc = ab_stack(rt, slices, (size_t)z, d, &co, &j->f[0]);
  ab_task_fn fns[4] = {st->normalise, st->filter, st->project, st->threshold};
  for (int k = 0; k < 4 && rc == 0; k++)
    rc = submit_step(rt, d, AB_PLACE_EXPLICIT, fns[k], NULL, step_names[k + 1], &(ab_input){.future = j->f[k]},
                     1, &j->f[k + 1]);
  ab_device host = {AB_HOST, 0};
  if (rc == 0) rc = ab_convert_after(rt, j->f[4], host, NULL, &j->f[5]);
  if (rc == 0) rc = ab_convert_after(rt, j->f[3], host, NULL, &j->f[6]);
  ab_input in[2] = {{.future = j->f[5]}, {.future = j->f[6]}};
  host.index = AB_ANY;
  if (rc == 0) rc = submit_step(rt, host, AB_PLACE_AUTO, count_task, r, "count", in, 2, &j->f[7]);
  return rc;
}

static void release_chain(job *j, bool cancel) {
  for (int k = CHAIN - 1; k >= 0; k--) {
    if (j->f[k] && cancel) ab_future_cancel(j->f[k]);
    ab_future_release(j->f[k]);
    j->f[k] = NULL;
  }
}

/* The first step that failed names the error. */
static void chain_error(job *j, result *r) {
  for (int k = 0; k < CHAIN; k++) {
    int st = j->f[k] ? ab_future_status(j->f[k]) : 0;
    if (st == 0) continue;
    const char *msg = ab_future_message(j->f[k]);
    snprintf(r->error, sizeof r->error, "%s failed: %s%s%s", step_names[k], ab_strerror(st), msg ? ": " : "",
             msg ? msg : "");
    return;
  }
}

/* Host tensors over the loaded slices; the last reference frees each slice. */
static int wrap_slices(uint16_t **s, int z, int h, int w, ab_tensor **out) {
  for (int k = 0; k < z; k++) {
    int64_t shape[2] = {h, w};
    DLTensor dl = {.data = s[k], .device = {kDLCPU, 0}, .ndim = 2, .dtype = {kDLUInt, 16, 1}, .shape = shape};
    int rc = ab_tensor_wrap(&dl, 0, free, s[k], &out[k]);
    if (rc != 0) {
      for (int i = 0; i < k; i++) ab_tensor_release(out[i]);
      return rc; /* the caller still owns every slice */
    }
  }
  return 0;
}

/* ---- the run -------------------------------------------------------------------------------- */
typedef struct {
  const screen_options *o;
  ab_runtime *rt;
  ab_device devs[MAX_SCREEN_DEVICES];
  int ndevs, rr;
  int inflight[MAX_SCREEN_DEVICES], stacks[MAX_SCREEN_DEVICES];
  int cap[MAX_SCREEN_DEVICES];    /* stacks in flight the device's budget holds (see set_caps) */
  plate plate;
  result *results;
  job *jobs;                      /* njobs in flight */
  int njobs, done, failed;
  int pz, ph, pw;                 /* the plate's stack shape, from its first readable stack */
  double t0, last_bar;
  bool bar;
} run;

/* The device with room and the fewest stacks in flight (ties: round robin); -1 if none has room. */
static int pick_device(run *r) {
  int best = -1;
  for (int k = 0; k < r->ndevs; k++) {
    int s = (r->rr + k) % r->ndevs;
    if (r->inflight[s] < r->cap[s] && (best < 0 || r->inflight[s] < r->inflight[best])) best = s;
  }
  if (best >= 0) r->rr = (best + 1) % r->ndevs;
  return best;
}

/* Once the stack size is known: a chain holds about three stacks on its device until it ends
 * (the stack, normalised and filtered volumes, which its futures keep) plus the histogram and
 * the 2D results, so a budget of B holds B / that many chains. Fewer in flight beats chains
 * that each hold a part of the budget and wait on the OOM ladder for the rest. */
static void set_caps(run *r) {
  uint64_t stack = (uint64_t)r->pz * r->ph * r->pw * 2, per = 3 * stack + 6ull * r->ph * r->pw + (65538 * 4);
  for (int k = 0; k < r->ndevs; k++) {
    ab_device_info info;
    r->cap[k] = r->o->inflight;
    if (ab_device_info_get(r->rt, r->devs[k], &info) != 0 || info.budget == UINT64_MAX) continue;
    uint64_t fit = info.budget / per;
    if (fit == 0) { /* left out: its stacks would only wait out the OOM ladder's deadline */
      char need[32], have[32];
      fprintf(stderr, "arraybridge: a %dx%dx%d stack needs about %s on %s:%d, whose budget is %s: left out\n",
              r->pz, r->ph, r->pw, human_bytes(per, need, sizeof need), kind_name(r->devs[k].kind),
              r->devs[k].index, human_bytes(info.budget, have, sizeof have));
    }
    if (fit < (uint64_t)r->cap[k]) r->cap[k] = (int)fit;
  }
}

static bool has_room(run *r) {
  for (int k = 0; k < r->ndevs; k++)
    if (r->inflight[k] < r->cap[k]) return true;
  return false;
}

static void progress(run *r, bool force) {
  if (!r->bar) return;
  double t = now_s();
  if (!force && t - r->last_bar < 0.1) return;
  r->last_bar = t;
  int n = r->plate.n, width = 30, fill = n ? r->done * width / n : width;
  double rate = r->done / (t - r->t0 + 1e-9);
  fprintf(stderr, "\r  [%.*s%.*s] %d/%d images  %.1f images/s  %d failed  ", fill,
          "##############################", width - fill, "------------------------------", r->done, n, rate,
          r->failed);
  if (force) fputc('\n', stderr);
}

static void finish_job(run *r, int which) {
  job *j = &r->jobs[which];
  result *res = &r->results[j->image];
  res->status = ab_future_status(j->f[CHAIN - 1]);
  if (res->status != 0) {
    chain_error(j, res);
    r->failed++;
  }
  release_chain(j, false);
  r->inflight[j->slot]--;
  r->done++;
  r->jobs[which] = r->jobs[--r->njobs];
  progress(r, false);
}

/* Waits until one job in flight is done and records it. */
static void harvest_one(run *r) {
  ab_future *finals[MAX_SCREEN_DEVICES * 8];
  for (int i = 0; i < r->njobs; i++) finals[i] = r->jobs[i].f[CHAIN - 1];
  size_t which = 0;
  if (ab_future_wait_any(finals, (size_t)r->njobs, -1, &which) == 0) finish_job(r, (int)which);
}

static void fail_image(run *r, int i, int status, const char *msg) {
  r->results[i].status = status;
  snprintf(r->results[i].error, sizeof r->results[i].error, "%s", msg);
  r->failed++;
  r->done++;
  progress(r, false);
}

/* Loads image i, checks it against the plate, and starts its chain. */
static void start_image(run *r, int i) {
  uint16_t **s;
  int z, h, w;
  char err[200];
  if (plate_load(&r->plate, i, &s, &z, &h, &w, err, sizeof err) != 0) {
    fail_image(r, i, AB_EINVAL, err);
    return;
  }
  if (r->pz == 0) {
    r->pz = z, r->ph = h, r->pw = w;
    set_caps(r); /* nothing is in flight yet: every device keeps room for one */
  }
  if (z != r->pz || h != r->ph || w != r->pw) {
    snprintf(err, sizeof err, "stack is %dx%dx%d (z x h x w), the plate's first is %dx%dx%d", z, h, w, r->pz,
             r->ph, r->pw);
    plate_free_slices(s, z);
    fail_image(r, i, AB_ESHAPE, err);
    return;
  }
  ab_tensor **t = calloc((size_t)z, sizeof *t);
  int rc = t ? wrap_slices(s, z, h, w, t) : AB_ENOMEM;
  if (rc != 0) {
    plate_free_slices(s, z);
    free(t);
    fail_image(r, i, rc, "cannot wrap the slices");
    return;
  }
  free(s); /* the tensors own the slices now */
  int slot = pick_device(r);
  if (slot < 0) { /* every device was left out by set_caps */
    for (int k = 0; k < z; k++) ab_tensor_release(t[k]);
    free(t);
    fail_image(r, i, AB_ENOMEM, "no device's budget holds a stack (see --memory-limit)");
    return;
  }
  job *j = &r->jobs[r->njobs];
  *j = (job){.image = i, .slot = slot};
  r->results[i].slot = j->slot;
  rc = submit_chain(r->rt, r->devs[j->slot], t, z, j, &r->results[i]);
  for (int k = 0; k < z; k++) ab_tensor_release(t[k]);
  free(t);
  if (rc != 0) {
    release_chain(j, true);
    snprintf(err, sizeof err, "submit failed: %s", ab_strerror(rc));
    fail_image(r, i, rc, err);
    return;
  }
  r->inflight[j->slot]++;
  r->stacks[j->slot]++;
  r->njobs++;
}

/* ---- output --------------------------------------------------------------------------------- */
static void device_label(ab_device d, char *buf, size_t n) { snprintf(buf, n, "%s:%d", kind_name(d.kind), d.index); }

static int write_csv(run *r, FILE *f) {
  fprintf(f, "well,site,device,status,objects,mean_area,foreground_px,mean_intensity,error\n");
  for (int i = 0; i < r->plate.n; i++) {
    const result *x = &r->results[i];
    char dev[32] = "";
    if (x->slot >= 0) device_label(r->devs[x->slot], dev, sizeof dev);
    char well[sizeof r->plate.images[i].well];
    snprintf(well, sizeof well, "%s", r->plate.images[i].well);
    for (char *p = well; *p; p++)
      if (*p == ',' || *p == '"') *p = '_'; /* a file name's well: keep the row's columns */
    fprintf(f, "%s,%d,%s,%s,", well, r->plate.images[i].site, dev,
            x->status == 0 ? "ok" : ab_err_name(x->status));
    if (x->status == 0)
      fprintf(f, "%" PRId64 ",%.2f,%" PRId64 ",%.3f,\n", x->objects,
              x->objects ? (double)x->area_sum / (double)x->objects : 0.0, x->fg_px,
              (double)x->intensity_sum / (double)x->npix);
    else {
      char e[sizeof x->error];
      snprintf(e, sizeof e, "%s", x->error);
      for (char *p = e; *p; p++)
        if (*p == '"' || *p == '\n' || *p == '\r') *p = *p == '"' ? '\'' : ' '; /* one quoted line */
      fprintf(f, ",,,,\"%s\"\n", e);
    }
  }
  return ferror(f) ? -1 : 0;
}

static void summary(run *r, double secs) {
  ab_device_stats st[64];
  int n = ab_runtime_stats(r->rt, st, 64);
  uint64_t bytes = 0, retries = 0;
  for (int i = 0; i < n && i < 64; i++) bytes += st[i].bytes_moved, retries += st[i].oom_retries;
  double mpix = (double)(r->done - r->failed) * r->pz * r->ph * r->pw / 1e6;
  char b1[32], b2[32];
  printf("\nscreened %d images (%d ok, %d failed) in %.2f s\n", r->plate.n, r->done - r->failed, r->failed, secs);
  printf("throughput: %.2f images/s, %.1f Mpixel/s; bytes moved %s; OOM retries %" PRIu64 "\n",
         (r->done - r->failed) / secs, mpix / secs, human_bytes(bytes, b1, sizeof b1), retries);
  printf("\n%-10s %7s %7s %11s %10s  %s\n", "device", "stacks", "tasks", "bytes", "mem peak",
         "oom: events trims syncs spills parks retries reroutes failures");
  for (int i = 0; i < n && i < 64; i++) {
    int stacks = 0;
    for (int k = 0; k < r->ndevs; k++)
      if (r->devs[k].kind == st[i].device.kind && r->devs[k].index == st[i].device.index) stacks = r->stacks[k];
    char dev[32];
    device_label(st[i].device, dev, sizeof dev);
    printf("%-10s %7d %7" PRIu64 " %11s %10s  %6" PRIu64 " %5" PRIu64 " %5" PRIu64 " %6" PRIu64 " %5" PRIu64 " %7" PRIu64
           " %8" PRIu64 " %8" PRIu64 "\n",
           dev, stacks, st[i].tasks_completed + st[i].tasks_failed, human_bytes(st[i].bytes_moved, b1, sizeof b1),
           human_bytes(st[i].mem_peak, b2, sizeof b2), st[i].oom_events, st[i].oom_trims, st[i].oom_syncs,
           st[i].oom_spills, st[i].oom_parks, st[i].oom_retries, st[i].oom_reroutes, st[i].oom_failures);
  }
}

static int open_plate(run *r) {
  const screen_options *o = r->o;
  char err[300];
  if (o->plate_dir == NULL)
    return plate_synthetic(&r->plate, o->wells, o->sites, o->z, o->h, o->w, o->seed) == 0 ? 0 : -1;
  if (plate_open_dir(&r->plate, o->plate_dir, err, sizeof err) == 0) return 0;
  fprintf(stderr, "arraybridge: %s\n", err);
  return -1;
}

static int screen_plate(run *r) {
  r->t0 = now_s();
  for (int i = 0; i < r->plate.n; i++) {
    while (!has_room(r) && r->njobs > 0) harvest_one(r); /* no room and none in flight: see start_image */
    start_image(r, i);
  }
  while (r->njobs > 0) harvest_one(r);
  progress(r, true);
  return 0;
}

static int finish_run(run *r, FILE *csv) {
  double secs = now_s() - r->t0;
  int status = r->failed ? EXIT_SOME_FAILED : EXIT_OK;
  if (write_csv(r, csv) != 0 || fclose(csv) != 0) {
    fprintf(stderr, "arraybridge: writing %s failed\n", r->o->out_csv);
    status = EXIT_FATAL;
  }
  if (r->o->trace) {
    int rc = ab_trace_stop(r->rt);
    if (rc == 0) rc = ab_trace_write(r->rt, r->o->trace);
    if (rc != 0) {
      fprintf(stderr, "arraybridge: writing the trace %s failed: %s\n", r->o->trace, ab_strerror(rc));
      status = EXIT_FATAL;
    }
  }
  if (!r->o->quiet) summary(r, secs);
  if (r->failed) fprintf(stderr, "arraybridge: %d of %d images failed; see the error column of %s\n", r->failed,
                         r->plate.n, r->o->out_csv);
  return status;
}

int screen_run(const screen_options *o) {
  run *r = calloc(1, sizeof *r);
  if (r == NULL) return EXIT_FATAL;
  r->o = o;
  int status = screen_runtime(o->devices, o->memory_limit, &r->rt, r->devs, &r->ndevs);
  if (status != 0) {
    free(r);
    return status;
  }
  FILE *csv = NULL;
  if (open_plate(r) != 0) status = EXIT_FATAL;
  else if ((csv = fopen(o->out_csv, "w")) == NULL) {
    fprintf(stderr, "arraybridge: cannot write %s: %m\n", o->out_csv);
    status = EXIT_FATAL;
  }
  r->results = status ? NULL : calloc((size_t)r->plate.n, sizeof *r->results);
  r->jobs = status ? NULL : calloc((size_t)(o->inflight * r->ndevs), sizeof *r->jobs);
  if (status == 0 && (r->results == NULL || r->jobs == NULL)) status = EXIT_FATAL;
  for (int i = 0; status == 0 && i < r->plate.n; i++) r->results[i] = (result){.status = 1, .slot = -1};
  for (int k = 0; k < r->ndevs; k++) r->cap[k] = o->inflight; /* until the first stack is read */
  if (status == 0 && o->trace && ab_trace_start(r->rt, NULL) != 0) {
    fprintf(stderr, "arraybridge: cannot start tracing\n");
    status = EXIT_FATAL;
  }
  if (status == 0) {
    r->bar = !o->quiet && isatty(STDERR_FILENO);
    screen_plate(r);
    status = finish_run(r, csv);
    csv = NULL;
  }
  if (csv) fclose(csv);
  ab_runtime_destroy(r->rt, AB_DRAIN);
  steps_cleanup();
  plate_free(&r->plate);
  free(r->results);
  free(r->jobs);
  free(r);
  return status;
}
