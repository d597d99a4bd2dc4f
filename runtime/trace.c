/*
 * runtime/trace.c: recording a timeline of tasks and device memory, and writing it as Chrome
 * trace JSON (ab_trace_start, ab_trace_stop, ab_trace_write).
 *
 * Design notes
 *   - One ring of fixed-size records per worker, written only by that worker's thread: no lock,
 *     no allocation, no shared cache line on the hot path. A full ring overwrites its oldest
 *     records; head counts every record ever written, so head - capacity were dropped.
 *   - Off, the cost is ab__tracing(): one relaxed load of rt->trace_on, a predictable branch
 *     before each task and each budget change. The flag is only a hint for the hot path: a
 *     writer then announces itself (trace_busy = 1, seq_cst) and re-reads the flag (seq_cst)
 *     before it touches its ring. ab_trace_stop clears the flag (seq_cst), then waits until no
 *     worker is busy. Store-then-load on both sides (Dekker): either the writer sees the flag
 *     clear and backs off, or stop sees it busy and waits, so once stop returns no thread
 *     touches a ring and ab_trace_write reads them without racing.
 *   - ab_trace_start fills the rings (and the head counts) before it sets the flag with a
 *     seq_cst store, which the writer's seq_cst load pairs with: a writer that sees the flag
 *     sees its ring.
 *   - Memory samples come from the thread that changes a device's budget. Only workers have a
 *     ring, so changes made by other threads (a caller releasing its last tensor) show up at
 *     the next sample a worker takes; every task's record also carries its device's usage.
 *   - Timestamps: two per task, so their cost is most of what tracing costs. Where the TSC is
 *     invariant (constant and non-stop: CPUID 0x80000007 EDX bit 8) records hold TSC ticks,
 *     and start and stop each take a (TSC, CLOCK_MONOTONIC) pair that maps them linearly onto
 *     CLOCK_MONOTONIC when the trace is written; elsewhere they are CLOCK_MONOTONIC itself. The
 *     JSON gives microseconds since start either way.
 *   - trace_lock serialises start, stop and write with each other; it is never taken by a
 *     worker, and nothing else is taken under it.
 */
#include <inttypes.h>
#include <sched.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#include <string.h>

#include "runtime/internal.h"

#define DEFAULT_EVENTS (1u << 16)
#define MAX_EVENTS (1u << 24)

enum { REC_TASK = 1, REC_MEM = 2 };

typedef struct ab__trace_rec {
  int64_t t0, t1, t2;             /* task: body start, body end, completion; mem: t0 only */
  const char *name;               /* task: its label (static) */
  uint64_t mem;                   /* bytes in use on the device, after the event */
  int32_t status;                 /* task: its status */
  int16_t dev;                    /* slot of the device in rt->devices */
  uint8_t type;
} ab__trace_rec;


static void free_rings(ab_runtime *rt) {
  for (int i = 0; rt->devices && i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    for (int j = 0; d->workers && j < d->nworkers; j++) {
      ab__free(&rt->alloc, d->workers[j].trace);
      d->workers[j].trace = NULL;
    }
  }
}

void ab__trace_fini(ab_runtime *rt) {
  free_rings(rt);
  pthread_mutex_destroy(&rt->trace_lock);
}

/* ---- the hot path ------------------------------------------------------------------------- */
/* The ring slot for one record, with trace_busy set; NULL when tracing has stopped. */
static ab__trace_rec *begin(ab__worker *w) {
  atomic_store(&w->trace_busy, 1);          /* seq_cst: Dekker with ab_trace_stop */
  if (!atomic_load(&w->dev->rt->trace_on)) { /* seq_cst: see the design notes */
    atomic_store_explicit(&w->trace_busy, 0, memory_order_release);
    return NULL;
  }
  return &w->trace[w->trace_head & w->trace_mask];
}

static void end(ab__worker *w) {
  w->trace_head++;
  /* release: the record before stop's acquire sees the worker idle */
  atomic_store_explicit(&w->trace_busy, 0, memory_order_release);
}

static const char *task_name(const ab_future *t) {
  switch (t->kind) {
  case AB__TASK_CONVERT:
    return "convert";
  case AB__TASK_STACK:
    return "stack";
  default:
    return t->name ? t->name : "task";
  }
}

void ab__trace_task(ab__worker *w, ab_future *t, int64_t t0, int64_t t1, int64_t t2, int status) {
  ab__trace_rec *r = begin(w);
  if (r == NULL) return;
  ab__device *d = w->dev;
  *r = (ab__trace_rec){.t0 = t0, .t1 = t1, .t2 = t2, .name = task_name(t), .status = status,
                       .mem = atomic_load_explicit(&d->used, memory_order_relaxed), /* a gauge */
                       .dev = (int16_t)(d - d->rt->devices), .type = REC_TASK};
  end(w);
}

void ab__trace_mem(ab__device *d, uint64_t used) {
  ab__worker *w = ab__current_worker;
  if (w == NULL || w->dev->rt != d->rt) return; /* only workers have rings (design notes) */
  int64_t now = ab__trace_now(d->rt);
  ab__trace_rec *r = begin(w);
  if (r == NULL) return;
  *r = (ab__trace_rec){.t0 = now, .mem = used, .dev = (int16_t)(d - d->rt->devices), .type = REC_MEM};
  end(w);
}

/* ---- start and stop ----------------------------------------------------------------------- */
static bool invariant_tsc(void) {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  return __get_cpuid(0x80000007, &a, &b, &c, &d) && (d & (1u << 8));
#else
  return false;
#endif
}

/* Before the workers start: trace_tsc is read by them without synchronisation, so it is set
 * once, for the runtime's life. */
void ab__trace_init(ab_runtime *rt) {
  pthread_mutex_init(&rt->trace_lock, NULL);
  rt->trace_tsc = invariant_tsc();
}

/* A (TSC, CLOCK_MONOTONIC) pair, the TSC read halfway through the clock read. */
static void clock_pair(int64_t *tsc, int64_t *ns) {
#if defined(__x86_64__)
  int64_t a = (int64_t)__builtin_ia32_rdtsc();
  *ns = ab__now_ns();
  *tsc = a + ((int64_t)__builtin_ia32_rdtsc() - a) / 2;
#else
  *ns = ab__now_ns();
  *tsc = *ns;
#endif
}

static uint32_t ring_size(const ab_trace_options *o) {
  uint32_t n = o && o->events_per_worker ? o->events_per_worker : DEFAULT_EVENTS;
  if (n > MAX_EVENTS) n = MAX_EVENTS;
  uint32_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

/* Every worker gets an empty ring of n records (kept from the last run when the size fits). */
static int make_rings(ab_runtime *rt, uint32_t n) {
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    for (int j = 0; j < d->nworkers; j++) {
      ab__worker *w = &d->workers[j];
      if (w->trace && w->trace_mask + 1 != n) {
        ab__free(&rt->alloc, w->trace);
        w->trace = NULL;
      }
      if (w->trace == NULL) w->trace = ab__malloc(&rt->alloc, sizeof(ab__trace_rec) * n);
      if (w->trace == NULL) return AB_ENOMEM;
      w->trace_mask = n - 1;
      w->trace_head = 0;
    }
  }
  return 0;
}

int ab_trace_start(ab_runtime *rt, const ab_trace_options *o) {
  if (rt == NULL || (o && o->size != sizeof(ab_trace_options))) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN; /* trace_lock may be held by a parent's thread */
  ab__lock(&rt->trace_lock, AB__RANK_TRACE);
  int rc = AB_EALREADY;
  if (!atomic_load_explicit(&rt->trace_on, memory_order_relaxed)) { /* written under the lock */
    rc = make_rings(rt, ring_size(o));
    if (rc != 0) free_rings(rt);
  }
  if (rc == 0) {
    clock_pair(&rt->trace_tsc0, &rt->trace_t0);
    rt->trace_tsc1 = rt->trace_tsc0, rt->trace_ns1 = rt->trace_t0; /* until stop */
    atomic_store(&rt->trace_on, 1); /* seq_cst: publishes the rings (design notes) */
  }
  ab__unlock(&rt->trace_lock, AB__RANK_TRACE);
  return rc;
}

int ab_trace_stop(ab_runtime *rt) {
  if (rt == NULL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  ab__lock(&rt->trace_lock, AB__RANK_TRACE);
  bool was_on = atomic_load_explicit(&rt->trace_on, memory_order_relaxed); /* written under the lock */
  atomic_store(&rt->trace_on, 0); /* seq_cst: Dekker with begin() */
  if (was_on) clock_pair(&rt->trace_tsc1, &rt->trace_ns1);
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    for (int j = 0; j < d->nworkers; j++)
      /* acquire: pairs with end()'s release, so the last record is visible to the writer */
      while (atomic_load_explicit(&d->workers[j].trace_busy, memory_order_acquire)) sched_yield();
  }
  ab__unlock(&rt->trace_lock, AB__RANK_TRACE);
  return 0;
}

/* ---- the JSON ----------------------------------------------------------------------------- */
/* A JSON string body: quotes, backslashes and control characters escaped. */
static void put_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static bool has_stream(const ab__device *d) { return d->ops->record != NULL; }

/* Tracks: a process per device, a thread per worker, and one per worker stream (tid 1000+). */
static void put_metadata(FILE *f, ab_runtime *rt, const char **sep) {
  char buf[160];
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    snprintf(buf, sizeof buf, "%s:%d %s", ab_kind_name(d->id.kind), d->id.index, d->name);
    fprintf(f, "%s{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":%d,\"tid\":0,\"args\":{\"name\":", *sep, i + 1);
    put_str(f, buf);
    fputs("}}", f);
    *sep = ",\n";
    fprintf(f, "%s{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":%d,\"tid\":0,\"args\":{\"sort_index\":%d}}",
            *sep, i + 1, i);
    for (int j = 0; j < d->nworkers; j++) {
      fprintf(f, "%s{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"worker %d\"}}",
              *sep, i + 1, j + 1, j);
      if (has_stream(d))
        fprintf(f, "%s{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%d,\"tid\":%d,\"args\":{\"name\":\"stream %d\"}}",
                *sep, i + 1, 1001 + j, j);
    }
  }
}

/* A record's time in microseconds since start. A task that began before a restart reads as
 * beginning at it. */
static double us(const ab_runtime *rt, int64_t t) {
  double v;
  if (!rt->trace_tsc) {
    v = (double)(t - rt->trace_t0) / 1e3;
  } else {
    int64_t ticks = rt->trace_tsc1 - rt->trace_tsc0;
    double ns_per_tick = ticks > 0 ? (double)(rt->trace_ns1 - rt->trace_t0) / (double)ticks : 0;
    v = (double)(t - rt->trace_tsc0) * ns_per_tick / 1e3;
  }
  return v < 0 ? 0 : v;
}

static void put_counter(FILE *f, ab_runtime *rt, const char *sep, int dev, int64_t t, uint64_t mem) {
  fprintf(f, "%s{\"ph\":\"C\",\"name\":\"memory\",\"pid\":%d,\"tid\":0,\"ts\":%.3f,\"args\":{\"used\":%" PRIu64 "}}",
          sep, dev + 1, us(rt, t), mem);
}

/* A task: its body on the worker's track; on a device with streams, the enqueued work on the
 * stream's track until the worker saw it complete. */
static void put_task(FILE *f, ab_runtime *rt, const char *sep, const ab__trace_rec *r, int worker) {
  bool stream = has_stream(&rt->devices[r->dev]);
  int64_t body_end = stream ? r->t1 : r->t2;
  fprintf(f, "%s{\"ph\":\"X\",\"name\":", sep);
  put_str(f, r->name);
  fprintf(f, ",\"cat\":\"task\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"status\":%d}}",
          r->dev + 1, worker + 1, us(rt, r->t0), us(rt, body_end) - us(rt, r->t0), (int)r->status);
  if (stream) {
    fprintf(f, "%s{\"ph\":\"X\",\"name\":", sep);
    put_str(f, r->name);
    fprintf(f, ",\"cat\":\"stream\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"status\":%d}}",
            r->dev + 1, 1001 + worker, us(rt, r->t1), us(rt, r->t2) - us(rt, r->t1), (int)r->status);
  }
  put_counter(f, rt, sep, r->dev, r->t2, r->mem);
}

/* One worker's records, oldest first; returns how many it dropped. */
static uint64_t put_ring(FILE *f, ab_runtime *rt, const ab__worker *w, const char **sep) {
  if (w->trace == NULL) return 0;
  uint64_t cap = (uint64_t)w->trace_mask + 1;
  uint64_t first = w->trace_head > cap ? w->trace_head - cap : 0;
  for (uint64_t k = first; k < w->trace_head; k++) {
    const ab__trace_rec *r = &w->trace[k & w->trace_mask];
    if (r->type == REC_TASK) put_task(f, rt, *sep, r, w->index);
    else put_counter(f, rt, *sep, r->dev, r->t0, r->mem);
    *sep = ",\n";
  }
  return first;
}

static int write_json(ab_runtime *rt, FILE *f) {
  const char *sep = "";
  fputs("{\"traceEvents\":[\n", f);
  put_metadata(f, rt, &sep);
  uint64_t dropped = 0, recorded = 0;
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *d = &rt->devices[i];
    for (int j = 0; j < d->nworkers; j++) {
      dropped += put_ring(f, rt, &d->workers[j], &sep);
      recorded += d->workers[j].trace_head;
    }
  }
  fprintf(f, "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"arraybridge %s\","
             "\"events_recorded\":%" PRIu64 ",\"events_dropped\":%" PRIu64 "}}\n",
          ab_version(), recorded, dropped);
  return ferror(f) ? AB_EINVAL : 0;
}

int ab_trace_write(ab_runtime *rt, const char *path) {
  if (rt == NULL || path == NULL) return AB_EINVAL;
  if (ab__forked(rt)) return AB_ESHUTDOWN;
  ab__lock(&rt->trace_lock, AB__RANK_TRACE);
  int rc = AB_EBUSY;
  if (!atomic_load_explicit(&rt->trace_on, memory_order_relaxed)) { /* written under the lock */
    FILE *f = fopen(path, "w");
    rc = f ? write_json(rt, f) : AB_EINVAL;
    if (f && fclose(f) != 0) rc = AB_EINVAL;
  }
  ab__unlock(&rt->trace_lock, AB__RANK_TRACE);
  return rc;
}
