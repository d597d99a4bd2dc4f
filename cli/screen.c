/*
 * cli/screen.c: `arraybridge screen`, the screening job.
 *
 * Design notes
 *   - An image (one site of one well) goes through: a load task on a host worker (every channel
 *     read and checked on its own), then, on one device, per channel ab_stack -> project, and
 *     for the segmentation channel filter -> normalise; the results come to the host
 *     (ab_convert_after, zero-copy there) and one identify task thresholds, labels and measures.
 *     Each step is a task whose inputs are the previous steps' futures, so the main thread only
 *     starts chains and harvests them; it never waits between steps.
 *   - Memory is bounded: at most `inflight` chains per device (fewer where the device's budget
 *     holds fewer), and at most a few loaded images waiting for a device. A plate of any size
 *     runs in the same memory; rows go to disk as images finish.
 *   - Placement: each loaded image goes to the device expected to finish it first, from each
 *     device's measured chain time (an average of its recent chains) and the chains it has in
 *     flight; a device with no measurement yet takes one chain at a time until it has one. When
 *     the best device is busy the image waits for it rather than going to a slower one, so
 *     adding a slow device never makes the plate slower.
 *   - Interrupts: SIGINT or SIGTERM stops loading; chains in flight finish and their rows are
 *     written; the run says where it stopped and exits 128 + the signal. A second signal kills
 *     the process at once (SA_RESETHAND): every row written so far is on disk already.
 */
#define _GNU_SOURCE /* open_memstream */
#include "cli/screen.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/human.h"
#include "cli/identify.h"
#include "cli/output.h"
#include "cli/plate.h"

#define MAX_FUTURES (3 * PLATE_MAX_CHANNELS + 4)
#define PREFETCH 2 /* loaded or loading images beyond one per device, with host workers to spare */

typedef enum { J_FREE, J_LOADING, J_READY, J_RUNNING } job_state;

typedef struct run run;

typedef struct {
  job_state state;
  int image, slot;
  run *r;
  ab_future *load;
  plate_stack st[PLATE_MAX_CHANNELS];
  char err[400];
  uint64_t need[MAX_SCREEN_DEVICES]; /* device bytes its chain would hold on each device */
  double t0;
  ab_future *f[MAX_FUTURES];
  const char *fname[MAX_FUTURES];
  int nf;
  identify_result id;
  screen_normalise norm;                    /* the normalise step's arg; Otsu's counts for id */
} job;

struct run {
  const screen_options *o;
  ab_runtime *rt;
  ab_device devs[MAX_SCREEN_DEVICES];
  int ndevs;
  /* per device */
  int inflight[MAX_SCREEN_DEVICES], stacks[MAX_SCREEN_DEVICES], measured[MAX_SCREEN_DEVICES];
  uint64_t used[MAX_SCREEN_DEVICES], budget[MAX_SCREEN_DEVICES];
  double chain_s[MAX_SCREEN_DEVICES];
  plate plate;
  screen_output out;
  job *jobs;
  int njobs;
  int next, todo, done, ok, failed, skipped, written;
  int want_z, prefetch;
  bool stop, never_fits;
  int write_errno;
  double t0, last_bar;
  bool bar;
  char *pipeline_line;
  char left_out[256];             /* devices --devices all left to the host (see leave_to_host) */
  int left_out_len;
};

static volatile sig_atomic_t interrupted;

static void on_signal(int sig) { interrupted = sig; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void device_label(ab_device d, char *buf, size_t n) { snprintf(buf, n, "%s:%d", ab_kind_name(d.kind), d.index); }

/* ---- loading (a task on a host worker) ------------------------------------------------------ */
static int load_task(ab_ctx *c, void *arg) {
  (void)c;
  job *j = arg;
  const plate *p = &j->r->plate;
  for (int k = 0; k < p->nchannels; k++) {
    if (plate_load(p, j->image, k, j->r->want_z, &j->st[k], j->err, sizeof j->err) != 0) return AB_EINVAL;
    if (k > 0 && (j->st[k].h != j->st[0].h || j->st[k].w != j->st[0].w)) {
      snprintf(j->err, sizeof j->err, "channel %s is %dx%d, channel %s is %dx%d", p->channel_name[k], j->st[k].w,
               j->st[k].h, p->channel_name[0], j->st[0].w, j->st[0].h);
      return AB_ESHAPE;
    }
  }
  return 0;
}

static void free_stacks(job *j) {
  for (int k = 0; k < PLATE_MAX_CHANNELS; k++) plate_stack_free(&j->st[k]);
}

/* ---- one image's chain ---------------------------------------------------------------------- */
static int submit_step(run *r, ab_device d, int policy, ab_task_fn fn, void *arg, const char *name,
                       const ab_input *in, int nin, job *j) {
  ab_task_desc t = AB_TASK_DESC_INIT;
  t.fn = fn, t.arg = arg, t.name = name, t.inputs = in, t.ninputs = nin;
  t.place.policy = policy, t.place.device = d;
  j->fname[j->nf] = name;
  return ab_submit(r->rt, &t, &j->f[j->nf++]);
}

static int to_host(run *r, ab_future *src, const char *name, job *j) {
  j->fname[j->nf] = name;
  return ab_convert_after(r->rt, src, (ab_device){AB_HOST, 0}, NULL, &j->f[j->nf++]);
}

/* Host tensors over a loaded stack; the last reference frees each slice. */
static int wrap(plate_stack *s, ab_tensor **out) {
  for (int k = 0; k < s->z; k++) {
    int64_t shape[2] = {s->h, s->w};
    DLTensor dl = {.data = s->slices[k], .device = {kDLCPU, 0}, .ndim = 2, .dtype = {kDLUInt, 16, 1}, .shape = shape};
    int rc = ab_tensor_wrap(&dl, 0, free, s->slices[k], &out[k]);
    if (rc != 0) {
      for (int i = 0; i < k; i++) ab_tensor_release(out[i]);
      return rc; /* the stack still owns every slice */
    }
  }
  for (int k = 0; k < s->z; k++) s->slices[k] = NULL; /* the tensors own them now */
  return 0;
}

/* The channel's projection on d: from the slices where the kind projects them in place, else
 * from a volume that ab_stack makes on d. */
static int project_channel(run *r, ab_device d, const screen_steps *st, plate_stack *s, job *j) {
  ab_tensor **t = calloc((size_t)s->z, sizeof *t);
  ab_input *in = calloc((size_t)s->z, sizeof *in);
  int rc = t && in ? wrap(s, t) : AB_ENOMEM;
  bool wrapped = rc == 0;
  if (rc == 0 && st->project_slices) {
    for (int k = 0; k < s->z; k++) in[k].tensor = t[k];
    rc = submit_step(r, d, AB_PLACE_EXPLICIT, st->project_slices, NULL, "project", in, s->z, j);
  } else if (rc == 0) {
    ab_convert_options co = AB_CONVERT_OPTIONS_INIT;
    co.place.policy = AB_PLACE_EXPLICIT, co.place.device = d;
    j->fname[j->nf] = "stack";
    rc = ab_stack(r->rt, t, (size_t)s->z, d, &co, &j->f[j->nf++]);
    if (rc == 0)
      rc = submit_step(r, d, AB_PLACE_EXPLICIT, st->project, NULL, "project", &(ab_input){.future = j->f[j->nf - 1]},
                       1, j);
  }
  for (int k = 0; wrapped && k < s->z; k++) ab_tensor_release(t[k]); /* the tasks hold their own */
  free(t);
  free(in);
  return rc;
}

static int submit_chain(run *r, job *j) {
  ab_device d = r->devs[j->slot];
  const screen_steps *st = steps_for(d.kind);
  const screen_pipeline *pl = &r->o->pipeline;
  int nch = r->plate.nchannels, rc = 0;
  ab_future *proj[PLATE_MAX_CHANNELS];
  for (int k = 0; k < nch && rc == 0; k++) {
    rc = project_channel(r, d, st, &j->st[k], j);
    proj[k] = rc == 0 ? j->f[j->nf - 1] : NULL;
  }
  ab_input in[1 + PLATE_MAX_CHANNELS] = {{0}};
  if (rc == 0)
    rc = submit_step(r, d, AB_PLACE_EXPLICIT, st->filter, (void *)pl, "filter",
                     &(ab_input){.future = proj[pl->segment]}, 1, j);
  j->norm = (screen_normalise){.p = pl, .counted = false};
  if (rc == 0)
    rc = submit_step(r, d, AB_PLACE_EXPLICIT, st->normalise, &j->norm, "normalise",
                     &(ab_input){.future = j->f[j->nf - 1]}, 1, j);
  if (rc == 0 && (rc = to_host(r, j->f[j->nf - 1], "normalised to host", j)) == 0) in[0].future = j->f[j->nf - 1];
  for (int k = 0; k < nch && rc == 0; k++)
    if ((rc = to_host(r, proj[k], "projection to host", j)) == 0) in[1 + k] = (ab_input){.future = j->f[j->nf - 1]};
  j->id.p = pl;
  j->id.counted = &j->norm;
  j->id.nchannels = nch;
  j->id.want_objects = r->o->objects != NULL;
  if (rc == 0)
    rc = submit_step(r, (ab_device){AB_HOST, AB_ANY}, AB_PLACE_AUTO, identify_task, &j->id, "identify", in, 1 + nch,
                     j);
  return rc;
}

/* Cancels the chain's steps and waits for them: one may be running already (cancelling only
 * asks it to stop), and the normalise step writes Otsu's counts into the job. */
static void cancel_chain(job *j) {
  for (int k = 0; k < j->nf; k++)
    if (j->f[k]) ab_future_cancel(j->f[k]);
  for (int k = 0; k < j->nf; k++)
    if (j->f[k]) ab_future_wait(j->f[k], -1);
}

static void release_chain(job *j) {
  for (int k = j->nf - 1; k >= 0; k--) {
    ab_future_release(j->f[k]);
    j->f[k] = NULL;
  }
  j->nf = 0;
}

/* The first step that failed names the error. */
static void chain_error(job *j) {
  for (int k = 0; k < j->nf; k++) {
    int st = ab_future_status(j->f[k]);
    if (st == 0) continue;
    const char *msg = ab_future_message(j->f[k]);
    snprintf(j->err, sizeof j->err, "%s failed: %s%s%s", j->fname[k], ab_strerror(st), msg ? ": " : "", msg ? msg : "");
    return;
  }
}

/* ---- placement ------------------------------------------------------------------------------ */
/* Device bytes a chain holds on a device of `kind` at its peak: each channel's projection (and
 * its stacked volume where the kind stacks), the filter's output and scratch, the normalised
 * image, the histogram (and on the host the scale table), and on the host the identify task's
 * scratch (a bit per pixel, and its runs: none at least) and the copies that come from other
 * devices. At least this much, so that a chain a budget can never hold is not started there. */
static uint64_t chain_bytes(const job *j, int nch, int kind) {
  uint64_t plane = (uint64_t)j->st[0].h * j->st[0].w * 2, b = 3 * plane;
  for (int k = 0; k < nch; k++) b += plane + (steps_for(kind)->project_slices ? 0 : (uint64_t)j->st[k].z * plane);
  if (kind == AB_HOST) b += 65536 * 4 + 65536 * 2 + plane / 16 + (uint64_t)(nch + 1) * plane;
  else b += (65536 + 2) * 4;
  return b;
}

static double oldest_start(const run *r, int slot) {
  double t = 0;
  for (int i = 0; i < r->njobs; i++)
    if (r->jobs[i].state == J_RUNNING && r->jobs[i].slot == slot && (t == 0 || r->jobs[i].t0 < t)) t = r->jobs[i].t0;
  return t;
}

/* When a new chain on slot s would finish, if it started as soon as s has room. */
static double finish_time(const run *r, int s, double now) {
  double est = r->chain_s[s];
  if (r->inflight[s] == 0) return now + est;
  double oldest = oldest_start(r, s);
  if (r->measured[s] == 0) est = now - oldest; /* a lower bound: its first chain is still going */
  bool room = r->inflight[s] < r->o->inflight && r->measured[s] > 0;
  if (room) return now + est;
  double free_at = oldest + est > now ? oldest + est : now;
  return free_at + est;
}

/* The slot for job j now, -1 to wait for one, -2 when no device's budget can ever hold it. */
static int pick_device(run *r, const job *j) {
  double now = now_s(), best_t = 0;
  int best = -1;
  bool fits_somewhere = false;
  for (int s = 0; s < r->ndevs; s++) {
    if (j->need[s] > r->budget[s]) continue;
    fits_somewhere = true;
    double t = finish_time(r, s, now);
    if (best < 0 || t < best_t) best = s, best_t = t;
  }
  if (!fits_somewhere) return -2;
  bool room = r->inflight[best] < (r->measured[best] ? r->o->inflight : 1) &&
              r->used[best] + j->need[best] <= r->budget[best];
  return room ? best : -1;
}

/* ---- progress and rows ---------------------------------------------------------------------- */
static void progress(run *r, bool force) {
  if (!r->bar) return;
  double t = now_s();
  if (!force && t - r->last_bar < 0.1) return;
  r->last_bar = t;
  int n = r->todo, width = 30, fill = n ? r->done * width / n : width;
  double rate = r->done / (t - r->t0 + 1e-9);
  fprintf(stderr, "\r  [%.*s%.*s] %d/%d images  %.1f images/s  %d failed  ", fill,
          "##############################", width - fill, "------------------------------", r->done, n, rate,
          r->failed);
  if (force) fputc('\n', stderr);
}

static void row(run *r, int image, int slot, int status, const char *error, const identify_result *id) {
  char dev[32] = "";
  if (slot >= 0) device_label(r->devs[slot], dev, sizeof dev);
  if (r->write_errno == 0 && output_row(&r->out, &r->plate, image, dev, status, error, id) != 0) {
    r->write_errno = errno ? errno : EIO;
    r->stop = true; /* nothing more could be kept */
  } else if (r->write_errno == 0) {
    r->written++;
  }
  r->done++;
  if (status == 0) r->ok++;
  else r->failed++;
  progress(r, false);
}

static void free_job(run *r, job *j) {
  free_stacks(j);
  if (j->load) ab_future_release(j->load);
  j->load = NULL;
  release_chain(j);
  j->state = J_FREE;
  (void)r;
}

/* ---- the main loop -------------------------------------------------------------------------- */
static job *free_slot(run *r) {
  for (int i = 0; i < r->njobs; i++)
    if (r->jobs[i].state == J_FREE) return &r->jobs[i];
  return NULL;
}

static int count(const run *r, job_state s) {
  int n = 0;
  for (int i = 0; i < r->njobs; i++) n += r->jobs[i].state == s;
  return n;
}

/* Starts loading the next images that need it, up to the prefetch window. */
static void start_loads(run *r) {
  while (!r->stop && r->next < r->plate.n && count(r, J_LOADING) + count(r, J_READY) < r->ndevs + r->prefetch) {
    int i = r->next++;
    if (output_done(&r->out, &r->plate, i)) continue;
    if (r->plate.images[i].error) {
      row(r, i, -1, AB_EINVAL, r->plate.images[i].error, NULL);
      continue;
    }
    job *j = free_slot(r);
    if (j == NULL) {
      r->next--;
      return;
    }
    j->image = i, j->r = r, j->err[0] = 0, j->nf = 0;
    ab_task_desc t = AB_TASK_DESC_INIT;
    t.fn = load_task, t.arg = j, t.name = "load";
    t.place.policy = AB_PLACE_AUTO, t.place.device = (ab_device){AB_HOST, AB_ANY};
    int rc = ab_submit(r->rt, &t, &j->load);
    if (rc != 0) {
      row(r, i, -1, rc, "cannot start loading", NULL);
      continue;
    }
    j->state = J_LOADING;
  }
}

static void launch(run *r, job *j, int slot) {
  j->slot = slot;
  j->t0 = now_s();
  int rc = submit_chain(r, j);
  free_stacks(j); /* the stacks' tensors own what they hold */
  if (rc != 0) {
    cancel_chain(j); /* before free_job: the job may be reused at once */
    char err[80];
    snprintf(err, sizeof err, "submit failed: %s", ab_strerror(rc));
    row(r, j->image, slot, rc, err, NULL);
    free_job(r, j);
    return;
  }
  j->state = J_RUNNING;
  r->inflight[slot]++;
  r->stacks[slot]++;
  r->used[slot] += j->need[slot];
}

/* Gives ready images to devices, lowest image first, while the best device has room. */
static void place_ready(run *r) {
  for (;;) {
    job *first = NULL;
    for (int i = 0; i < r->njobs; i++)
      if (r->jobs[i].state == J_READY && (first == NULL || r->jobs[i].image < first->image)) first = &r->jobs[i];
    if (first == NULL) return;
    int slot = pick_device(r, first);
    if (slot == -1) return;
    if (slot >= 0) {
      launch(r, first, slot);
      continue;
    }
    char need[32];
    snprintf(first->err, sizeof first->err, "needs about %s of device memory: no device's budget holds it "
             "(see --memory-limit)", human_bytes(first->need[0], need, sizeof need));
    if (r->ok == 0 && count(r, J_RUNNING) == 0) { /* nothing can run: a usage error, not a failed image */
      fprintf(stderr, "arraybridge: a %dx%dx%d stack %s\n", first->st[0].z, first->st[0].h, first->st[0].w,
              first->err);
      r->never_fits = r->stop = true;
      free_job(r, first);
      return;
    }
    row(r, first->image, -1, AB_ENOMEM, first->err, NULL);
    free_job(r, first);
  }
}

static void loaded(run *r, job *j) {
  int st = ab_future_status(j->load);
  ab_future_release(j->load);
  j->load = NULL;
  if (st != 0 || r->stop) {
    if (st != 0 && st != AB_ECANCELED)
      row(r, j->image, -1, st, j->err[0] ? j->err : ab_strerror(st), NULL);
    free_job(r, j);
    return;
  }
  for (int s = 0; s < r->ndevs; s++) j->need[s] = chain_bytes(j, r->plate.nchannels, r->devs[s].kind);
  j->state = J_READY;
}

static void finished(run *r, job *j) {
  ab_future *last = j->f[j->nf - 1];
  int st = ab_future_status(last), s = j->slot;
  if (st != 0) chain_error(j);
  else { /* a running average of the device's chain time, for placement */
    double t = now_s() - j->t0;
    r->chain_s[s] = r->measured[s] ? 0.7 * r->chain_s[s] + 0.3 * t : t;
    r->measured[s]++;
  }
  row(r, j->image, s, st, j->err, &j->id);
  r->inflight[s]--;
  r->used[s] -= j->need[s];
  release_chain(j);
  j->state = J_FREE;
}

/* Waits (up to 100 ms, so that signals and the progress bar are seen) for a load or a chain. */
static void harvest(run *r) {
  ab_future *fs[256];
  int nf = 0;
  for (int i = 0; i < r->njobs && nf < 256; i++) {
    job *j = &r->jobs[i];
    if (j->state == J_LOADING) fs[nf++] = j->load;
    else if (j->state == J_RUNNING) fs[nf++] = j->f[j->nf - 1];
  }
  size_t which;
  if (nf == 0 || ab_future_wait_any(fs, (size_t)nf, 100 * 1000 * 1000, &which) != 0) return;
  for (int i = 0; i < r->njobs; i++) {
    job *j = &r->jobs[i];
    if (j->state == J_LOADING && ab_future_status(j->load) != AB_EPENDING) loaded(r, j);
    else if (j->state == J_RUNNING && ab_future_status(j->f[j->nf - 1]) != AB_EPENDING) finished(r, j);
  }
}

/* Stopping (a signal, a failed write, nothing fits): loads are cancelled, ready images dropped,
 * chains in flight finish. */
static void stop_now(run *r) {
  for (int i = 0; i < r->njobs; i++) {
    job *j = &r->jobs[i];
    if (j->state == J_LOADING) ab_future_cancel(j->load);
    if (j->state == J_READY) free_job(r, j);
  }
}

static void screen_plate(run *r) {
  r->t0 = now_s();
  for (;;) {
    if (interrupted && !r->stop) r->stop = true;
    if (r->stop) stop_now(r);
    if (!r->stop) place_ready(r); /* before more loads: a chain's first step then finds its slices in cache */
    start_loads(r);
    bool active = count(r, J_LOADING) + count(r, J_READY) + count(r, J_RUNNING) > 0;
    if (!active && (r->stop || r->next >= r->plate.n)) break;
    harvest(r);
  }
  progress(r, true);
}

/* ---- the record of the run ------------------------------------------------------------------ */
static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; s && *s; s++) {
    if (*s == '"' || *s == '\\') fprintf(f, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) fprintf(f, "\\u%04x", *s);
    else fputc(*s, f);
  }
  fputc('"', f);
}

/* One line of JSON with every parameter that decides a result (--resume compares it). */
static char *pipeline_line(const screen_options *o, const plate *p) {
  const screen_pipeline *pl = &o->pipeline;
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) return NULL;
  fprintf(f, "{\"projection\": \"max\", \"filter\": \"gaussian\", \"filter_size\": %g, \"sigma\": %.6g, "
          "\"filter_radius\": %d, \"filter_weights\": [", pl->filter_size, pl->filter_size / 2.35, pl->radius);
  for (int i = 0; i <= pl->radius; i++) fprintf(f, "%s%u", i ? ", " : "", pl->weight[i]);
  fprintf(f, "], \"rescale_percentiles\": [%g, %g], \"threshold\": ", pl->p_lo / 10.0, pl->p_hi / 10.0);
  if (pl->otsu) fputs("\"otsu\"", f);
  else fprintf(f, "%g", pl->threshold);
  fprintf(f, ", \"min_size\": %d, \"connectivity\": 8, \"segmentation_channel\": ", pl->min_area);
  json_string(f, p->channel_name[pl->segment]);
  fputs(", \"channels\": [", f);
  for (int c = 0; c < p->nchannels; c++) {
    if (c) fputs(", ", f);
    json_string(f, p->channel_name[c]);
  }
  fputs("]}", f);
  fclose(f);
  return buf;
}

static void json_files(FILE *f, const run *r) {
  const screen_options *o = r->o;
  fputs("  \"files\": {\"results\": ", f);
  json_string(f, o->out_csv);
  fputs(", \"parameters\": ", f);
  json_string(f, r->out.json);
  const char *names[] = {"objects", "heatmap", "trace"}, *paths[] = {o->objects, o->heatmap, o->trace};
  for (int i = 0; i < 3; i++)
    if (paths[i]) {
      fprintf(f, ", \"%s\": ", names[i]);
      json_string(f, paths[i]);
    }
  fputs("},\n", f);
}

static void json_plate(FILE *f, const run *r) {
  const plate *p = &r->plate;
  const screen_options *o = r->o;
  fputs("  \"plate\": {", f);
  if (p->synthetic) {
    fprintf(f, "\"synthetic\": {\"wells\": %d, \"sites\": %d, \"channels\": %d, \"z\": %d, \"size\": \"%dx%d\", "
            "\"seed\": %" PRIu64 "}", o->wells, o->sites, o->channels, p->z, p->w, p->h, p->seed);
  } else {
    fputs("\"folder\": ", f);
    json_string(f, o->plate_dir);
    fputs(", \"layout\": ", f);
    json_string(f, p->layout->name ? p->layout->name : "custom");
    fputs(", \"pattern\": ", f);
    json_string(f, o->pattern ? o->pattern : p->layout->pattern);
    fprintf(f, ", \"matched_files\": %d, \"unmatched_files\": %d, \"unmatched_examples\": [", p->nmatched,
            p->nunmatched);
    for (int i = 0; i < p->nunmatched_kept; i++) {
      if (i) fputs(", ", f);
      json_string(f, p->unmatched[i]);
    }
    fputc(']', f);
  }
  fprintf(f, ", \"format\": %d, \"images\": %d},\n", p->rows * p->cols, p->n);
}

static int write_record(run *r, bool complete, double secs) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (f == NULL) return -1;
  fprintf(f, "{\n  \"arraybridge\": \"%s\",\n  \"command\": [", ab_version());
  for (int i = 0; i < r->o->argc; i++) {
    if (i) fputs(", ", f);
    json_string(f, r->o->argv[i]);
  }
  fputs("],\n", f);
  json_plate(f, r);
  fprintf(f, "  \"pipeline\": %s,\n  \"devices\": [", r->pipeline_line);
  for (int s = 0; s < r->ndevs; s++) {
    char d[32];
    device_label(r->devs[s], d, sizeof d);
    fprintf(f, "%s\"%s\"", s ? ", " : "", d);
  }
  fputs("], \"left_to_the_host\": ", f);
  json_string(f, r->left_out);
  fputs(",\n", f);
  json_files(f, r);
  fprintf(f, "  \"complete\": %s,\n  \"images\": {\"plate\": %d, \"from_earlier_runs\": %d, \"this_run\": %d, "
          "\"ok\": %d, \"failed\": %d, \"seconds\": %.3f}\n}\n", complete ? "true" : "false", r->plate.n, r->skipped,
          r->done, r->ok, r->failed, secs);
  fclose(f);
  int rc = output_write_json(&r->out, buf);
  free(buf);
  return rc;
}

/* ---- summary -------------------------------------------------------------------------------- */
static void summary(run *r, double secs) {
  ab_device_stats st[64];
  int n = ab_runtime_stats(r->rt, st, 64);
  uint64_t bytes = 0, retries = 0;
  for (int i = 0; i < n && i < 64; i++) bytes += st[i].bytes_moved, retries += st[i].oom_retries;
  char b1[32], b2[32];
  printf("\nscreened %d images (%d ok, %d failed", r->done, r->ok, r->failed);
  if (r->skipped) printf("; %d done by an earlier run", r->skipped);
  printf(") in %.2f s\n", secs);
  printf("throughput: %.2f images/s; bytes moved %s; OOM retries %" PRIu64 "\n", r->ok / secs,
         human_bytes(bytes, b1, sizeof b1), retries);
  if (r->left_out_len)
    printf("left to the host (CPU devices on its own cores; name them in --devices to use them): %s\n", r->left_out);
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

static void list_files(const run *r, bool heatmap_ok, bool trace_ok) {
  const screen_options *o = r->o;
  printf("\nfiles:\n  %-11s %s\n  %-11s %s\n", "results", o->out_csv, "parameters", r->out.json);
  if (o->objects) printf("  %-11s %s\n", "objects", o->objects);
  if (o->heatmap && heatmap_ok) printf("  %-11s %s (%s)\n", "heatmap", o->heatmap, o->heatmap_column);
  if (o->trace && trace_ok) printf("  %-11s %s\n", "trace", o->trace);
}

/* ---- the devices ---------------------------------------------------------------------------- */
/* A --devices list that names nothing usable: one line, exit status 2, like every option error
 * of the command (main.c). */
__attribute__((format(printf, 1, 2))) static int devices_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "arraybridge screen: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, " (arraybridge screen --help)\n");
  va_end(ap);
  return EXIT_USAGE;
}

typedef struct {
  bool kind_all[AB_KIND_COUNT];
  int n;
  ab_device one[MAX_SCREEN_DEVICES]; /* kind:index items */
} device_list;

static int parse_devices(const char *list, device_list *out) {
  memset(out, 0, sizeof *out);
  const char *p = list;
  if (!*p) return devices_error("--devices: empty; use all, host, opencl, cuda or kind:index");
  while (*p) {
    size_t len = strcspn(p, ",");
    const char *colon = memchr(p, ':', len);
    int kind = ab_kind_from_name(p, colon ? (size_t)(colon - p) : len);
    char item[64];
    snprintf(item, sizeof item, "%.*s", (int)len, p);
    if (len == 3 && strncmp(p, "all", 3) == 0) {
      for (int k = 0; k < AB_KIND_COUNT; k++) out->kind_all[k] = true;
    } else if (kind < 0 || (colon && (colon[1] < '0' || colon[1] > '9')) || out->n == MAX_SCREEN_DEVICES) {
      return devices_error("--devices: bad device '%s'; use all, host, opencl, cuda or kind:index", item);
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
      char d[32];
      snprintf(d, sizeof d, "%s:%d", ab_kind_name(l->one[i].kind), l->one[i].index);
      return devices_error("--devices: no device %s here (see `arraybridge devices`)", d);
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
                ab_kind_name(all[i].kind));
      warned[all[i].kind] = true;
      continue;
    }
    devs[(*ndevs)++] = all[i];
  }
  if (*ndevs > 0) return 0;
  return devices_error("--devices %s: no device here with screening steps (see `arraybridge devices`)", list);
}

/* A runtime for the device list ("all", "host,opencl", "opencl:1"): the kinds it names are
 * opened (the host always: loading and identifying run there); *devs gets the devices to screen
 * on. 0, or an exit status after printing why. */
static int screen_runtime(const char *list, uint64_t memory_limit, int host_workers, ab_runtime **rt, ab_device *devs,
                          int *ndevs) {
  device_list l;
  int status = parse_devices(list, &l);
  if (status != 0) return status;
  ab_runtime_options o = AB_RUNTIME_OPTIONS_INIT;
  for (int k = 0; k < AB_KIND_COUNT; k++) {
    bool named = l.kind_all[k];
    for (int i = 0; i < l.n; i++) named |= l.one[i].kind == k;
    o.kinds[k].disabled = !named && k != AB_HOST; /* the host always: loading and identifying run there */
    o.kinds[k].memory_limit = memory_limit;
  }
  o.kinds[AB_HOST].workers_per_device = host_workers;
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

/* ---- the run -------------------------------------------------------------------------------- */
static int open_plate(run *r, char *err, size_t errlen) {
  const screen_options *o = r->o;
  if (o->plate_dir == NULL) {
    if (plate_synthetic(&r->plate, o->wells, o->sites, o->channels, o->z, o->h, o->w, o->seed) == 0) return 0;
    snprintf(err, errlen, "out of memory");
    return EXIT_FATAL;
  }
  if (plate_open_dir(&r->plate, o->plate_dir, o->layout, o->pattern, err, errlen) != 0) return EXIT_FATAL;
  r->want_z = o->z_given ? o->z : 0;
  const plate *p = &r->plate;
  if (p->nunmatched) {
    fprintf(stderr, "arraybridge: %d TIFF file(s) match no pattern and are left out:", p->nunmatched);
    for (int i = 0; i < p->nunmatched_kept; i++) fprintf(stderr, " %s", p->unmatched[i]);
    fprintf(stderr, "%s\n", p->nunmatched > p->nunmatched_kept ? " ..." : "");
  }
  return 0;
}

/* The segmentation channel by name, and the heatmap column, once the plate's channels are known. */
static int resolve_channels(run *r, screen_pipeline *pl, char *err, size_t errlen) {
  const plate *p = &r->plate;
  pl->segment = 0;
  if (r->o->segment) {
    pl->segment = -1;
    for (int c = 0; c < p->nchannels; c++)
      if (strcmp(p->channel_name[c], r->o->segment) == 0) pl->segment = c;
    if (pl->segment < 0) {
      snprintf(err, errlen, "--segment %s: the plate's channels are %s%s%s%s", r->o->segment, p->channel_name[0],
               p->nchannels > 1 ? ", " : "", p->nchannels > 1 ? p->channel_name[1] : "", p->nchannels > 2 ? ", ..." : "");
      return EXIT_USAGE;
    }
  }
  if (r->o->heatmap && !output_has_column(p, r->o->heatmap_column)) {
    char *h = output_header(p);
    snprintf(err, errlen, "--heatmap-column %s: not a numeric column; this run's columns are %s", r->o->heatmap_column,
             h ? h : "?");
    free(h);
    return EXIT_USAGE;
  }
  return 0;
}

/* A synthetic plate's stacks all have one size: a budget that holds none is known at once. */
static int check_budgets(run *r) {
  if (!r->plate.synthetic) return 0;
  job probe = {0};
  for (int k = 0; k < r->plate.nchannels; k++) probe.st[k] = (plate_stack){.z = r->plate.z, .h = r->plate.h, .w = r->plate.w};
  uint64_t need = UINT64_MAX;
  for (int s = 0; s < r->ndevs; s++) {
    uint64_t n = chain_bytes(&probe, r->plate.nchannels, r->devs[s].kind);
    if (n <= r->budget[s]) return 0;
    need = n < need ? n : need;
  }
  char b1[32], b2[32];
  fprintf(stderr, "arraybridge: a %dx%dx%d stack needs about %s of device memory; --memory-limit %s holds none: "
          "raise it\n", r->plate.z, r->plate.h, r->plate.w, human_bytes(need, b1, sizeof b1),
          human_bytes(r->o->memory_limit, b2, sizeof b2));
  return EXIT_USAGE;
}

/* With --devices all, devices that compute on the host's own cores (pocl's OpenCL CPU devices)
 * are left to the host device: they would add the copies of their path and no cores. Named
 * (--devices opencl, host,opencl:1) they are used like any other. */
static void leave_to_host(run *r, const bool *host_cores) {
  bool have_host = false;
  for (int s = 0; s < r->ndevs; s++) have_host |= r->devs[s].kind == AB_HOST;
  if (!have_host || strcmp(r->o->devices, "all") != 0) return;
  int n = 0;
  for (int s = 0; s < r->ndevs; s++) {
    if (!host_cores[s]) {
      r->devs[n++] = r->devs[s];
      continue;
    }
    char d[32];
    device_label(r->devs[s], d, sizeof d);
    r->left_out_len += snprintf(r->left_out + r->left_out_len, sizeof r->left_out - (size_t)r->left_out_len, "%s%s",
                                r->left_out_len ? ", " : "", d);
    if (r->left_out_len >= (int)sizeof r->left_out) r->left_out_len = (int)sizeof r->left_out - 1;
  }
  r->ndevs = n;
}

/* A steps op as a task on every device that has it, all at once, waiting for them all: ask, the
 * host_cores op with its answer in host_cores[s]; else prepare. 0, or the first failure's status
 * (said on stderr). */
static int on_each_device(run *r, bool ask, bool *host_cores) {
  ab_future *f[MAX_SCREEN_DEVICES] = {NULL};
  int rc = 0;
  for (int s = 0; s < r->ndevs; s++) {
    const screen_steps *st = steps_for(r->devs[s].kind);
    ab_task_desc t = AB_TASK_DESC_INIT;
    t.fn = ask ? st->host_cores : st->prepare;
    if (t.fn == NULL) continue;
    t.arg = ask ? &host_cores[s] : NULL, t.name = ask ? "host cores" : "prepare";
    t.place.policy = AB_PLACE_EXPLICIT, t.place.device = r->devs[s];
    if ((rc = ab_submit(r->rt, &t, &f[s])) != 0) break;
  }
  for (int s = 0; s < r->ndevs; s++) {
    if (f[s] == NULL) continue;
    ab_future_wait(f[s], -1);
    int st = ab_future_status(f[s]);
    if (st != 0 && rc == 0) {
      char d[32];
      device_label(r->devs[s], d, sizeof d);
      fprintf(stderr, "arraybridge: the screening steps cannot start on %s: %s\n", d, ab_strerror(st));
      rc = st;
    }
    ab_future_release(f[s]);
  }
  return rc;
}

/* Which devices the plate uses (those left to the host are asked, never built for), then their
 * steps prepare (build their kernels), before the clock starts. */
static int prepare_devices(run *r) {
  bool host_cores[MAX_SCREEN_DEVICES] = {false};
  int rc = on_each_device(r, true, host_cores);
  if (rc == 0) leave_to_host(r, host_cores);
  if (rc == 0) rc = on_each_device(r, false, NULL);
  return rc == 0 ? 0 : EXIT_FATAL;
}

/* Two outputs on one path would overwrite each other (the sidecar is the CSV's name with .json). */
static int distinct_outputs(const screen_options *o, const char *json) {
  const char *names[] = {"--out", "its sidecar", "--objects", "--heatmap", "--trace"};
  const char *paths[] = {o->out_csv, json, o->objects, o->heatmap, o->trace};
  for (int i = 0; i < 5; i++)
    for (int k = i + 1; k < 5; k++)
      if (paths[i] && paths[k] && strcmp(paths[i], paths[k]) == 0) {
        fprintf(stderr, "arraybridge: %s and %s are both %s: give them different files\n", names[i], names[k],
                paths[i]);
        return EXIT_USAGE;
      }
  return 0;
}

static int prepare(run *r) {
  const screen_options *o = r->o;
  char err[700];
  char *json = output_json_path(o->out_csv);
  int same = json ? distinct_outputs(o, json) : EXIT_FATAL;
  free(json);
  if (same != 0) return same;
  screen_pipeline *pl = (screen_pipeline *)&o->pipeline; /* the segment index is set here, once */
  int status = open_plate(r, err, sizeof err);
  if (status == 0) status = resolve_channels(r, pl, err, sizeof err);
  if (status != 0) {
    fprintf(stderr, "arraybridge: %s\n", err);
    return status;
  }
  if ((status = prepare_devices(r)) != 0) return status;
  for (int s = 0; s < r->ndevs; s++) {
    ab_device_info info;
    r->budget[s] = ab_device_info_get(r->rt, r->devs[s], &info) == 0 ? info.budget : UINT64_MAX;
  }
  if ((status = check_budgets(r)) != 0) return status;
  r->pipeline_line = pipeline_line(o, &r->plate);
  if (r->pipeline_line == NULL) {
    fprintf(stderr, "arraybridge: out of memory\n");
    return EXIT_FATAL;
  }
  r->out.csv = o->out_csv, r->out.objects = o->objects, r->out.heatmap = o->heatmap, r->out.column = o->heatmap_column;
  /* Every output must be writable before the first is made: a run that stops here leaves no
   * results file that would refuse the next run. */
  if (output_check(&r->out, o->resume, o->trace, err, sizeof err) != 0) {
    fprintf(stderr, "arraybridge: %s\n", err);
    return EXIT_FATAL;
  }
  /* Loads ahead keep host workers busy while the main thread starts chains; with one worker they
   * would only run before, and evict from cache, the slices of the chain that waits behind them. */
  ab_device_info host;
  r->prefetch = ab_device_info_get(r->rt, (ab_device){AB_HOST, 0}, &host) == 0 && host.workers > 1 ? PREFETCH : 0;
  r->njobs = r->ndevs * o->inflight + r->ndevs + r->prefetch;
  r->jobs = calloc((size_t)r->njobs, sizeof *r->jobs);
  if (r->jobs == NULL) return EXIT_FATAL;
  if (o->trace && ab_trace_start(r->rt, NULL) != 0) {
    fprintf(stderr, "arraybridge: cannot start tracing\n");
    return EXIT_FATAL;
  }
  status = output_open(&r->out, &r->plate, o->resume, o->overwrite, r->pipeline_line, err, sizeof err);
  if (status != 0) {
    fprintf(stderr, "arraybridge: %s\n", err);
    return status;
  }
  for (int i = 0; i < r->plate.n; i++) r->skipped += output_done(&r->out, &r->plate, i);
  r->todo = r->plate.n - r->skipped;
  if (write_record(r, false, 0) != 0) {
    fprintf(stderr, "arraybridge: cannot write %s: %s\n", r->out.json, strerror(errno));
    output_discard(&r->out); /* a results file without its sidecar could not be resumed */
    return EXIT_FATAL;
  }
  return 0;
}

static int finish_run(run *r) {
  double secs = now_s() - r->t0;
  const screen_options *o = r->o;
  int status = r->failed ? EXIT_SOME_FAILED : EXIT_OK;
  if (r->never_fits) status = EXIT_USAGE;
  if (interrupted) status = 128 + interrupted;
  if (output_close(&r->out) != 0 && r->write_errno == 0) r->write_errno = errno ? errno : EIO;
  if (r->write_errno) {
    fprintf(stderr, "arraybridge: writing the results failed: %s; %d rows were written before\n",
            strerror(r->write_errno), r->written);
    status = EXIT_FATAL;
  }
  bool trace_ok = false, heat_ok = false;
  if (o->trace) {
    int rc = ab_trace_stop(r->rt);
    errno = 0;
    if (rc == 0) rc = ab_trace_write(r->rt, o->trace);
    trace_ok = rc == 0;
    if (rc != 0) { /* the file's own trouble, as the OS says it, where there is one */
      fprintf(stderr, "arraybridge: writing the trace %s failed: %s\n", o->trace,
              rc == AB_EINVAL && errno ? strerror(errno) : ab_strerror(rc));
      status = EXIT_FATAL;
    }
  }
  char err[600];
  if (o->heatmap && r->write_errno == 0) {
    heat_ok = output_heatmap(&r->out, &r->plate, err, sizeof err) == 0;
    if (!heat_ok) {
      fprintf(stderr, "arraybridge: heatmap: %s\n", err);
      status = EXIT_FATAL;
    }
  }
  bool complete = r->done + r->skipped == r->plate.n;
  if (write_record(r, complete, secs) != 0) {
    fprintf(stderr, "arraybridge: cannot write %s: %s\n", r->out.json, strerror(errno));
    status = EXIT_FATAL;
  }
  if (!o->quiet) {
    summary(r, secs);
    list_files(r, heat_ok, trace_ok);
  }
  if (interrupted || (!complete && r->write_errno == 0 && !r->never_fits))
    fprintf(stderr, "arraybridge: interrupted: %d of %d images have rows in %s; --resume finishes the plate\n",
            r->done + r->skipped, r->plate.n, o->out_csv);
  if (r->failed) fprintf(stderr, "arraybridge: %d of %d images failed; see the error column of %s\n", r->failed,
                         r->done, o->out_csv);
  return status;
}

int screen_run(const screen_options *o) {
  run *r = calloc(1, sizeof *r);
  if (r == NULL) return EXIT_FATAL;
  r->o = o;
  int status = screen_runtime(o->devices, o->memory_limit, o->host_workers, &r->rt, r->devs, &r->ndevs);
  if (status != 0) {
    free(r);
    return status;
  }
  status = prepare(r);
  struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND | SA_RESTART}, old_int, old_term;
  sigemptyset(&sa.sa_mask);
  if (status == 0) {
    interrupted = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    r->bar = !o->quiet && isatty(STDERR_FILENO);
    screen_plate(r);
    status = finish_run(r);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
  }
  ab_runtime_destroy(r->rt, AB_DRAIN);
  for (int i = 0; r->jobs && i < r->njobs; i++) {
    free_stacks(&r->jobs[i]);
    free(r->jobs[i].id.objs);
  }
  steps_cleanup();
  output_free(&r->out);
  plate_free(&r->plate);
  free(r->pipeline_line);
  free(r->jobs);
  free(r);
  return status;
}
