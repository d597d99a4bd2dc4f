/*
 * runtime/fill.c: plain host slices straight into a new tensor's memory, for the stacking task
 * (its host slices) and the conversion task (one big host array): on the host a streaming copy
 * into the volume itself, on a device through the backend's mapped windows (ops->map_write).
 *
 * Design notes
 *   - The volume's bytes are filled window by window: a window is host memory standing for
 *     volume bytes [lo, lo + len): the volume itself on the host, ops->map_write's memory on a
 *     device. Where the backend pipelines (ops->map_chunk), window k+1 fills while window k
 *     travels to the device; otherwise the whole volume is one window.
 *   - A window is copied by a crew: this thread and up to CREW_MAX - 1 host workers, which
 *     claim PART-byte pieces of it. One memcpy stream does not saturate memory (on the 2-core
 *     development machine, 14.8 GB/s against 23.5 for two threads), let alone a GPU's DMA.
 *     Helpers are submitted with AB_SUBMIT_TRY; one that has not started by the end is
 *     cancelled, so a busy host pool never holds a stack up (and this thread never waits for a
 *     helper to start: no deadlock when it is a host worker itself).
 *   - claim packs the window's generation (high 16 bits) with the next piece's offset, so a
 *     helper late from window k can never take a piece of window k+1 for one of window k: its
 *     CAS fails once the generation moved. A window's fields are written before its claim word
 *     is published (release) and read after a successful claim (acquire, from the same release
 *     sequence); the owner moves on only when the window's bytes are all counted done (acquire,
 *     pairing with each piece's release).
 */
#include <sched.h>

#include "runtime/internal.h"

#define PART ((size_t)256 << 10)
#define CREW_MAX 8
#define GEN_SHIFT 48
#define OFF_MASK (((uint64_t)1 << GEN_SHIFT) - 1)

size_t ab__map_window_test;

typedef struct {
  ab_future *task;                /* its inputs are the slices */
  size_t slice;                   /* bytes per slice */
  DLDataType dt;
  char *window;                   /* host memory for volume bytes [lo, lo + len) */
  size_t lo;
  _Atomic size_t len;             /* read before a claim, so atomic; relaxed (design notes) */
  _Atomic uint64_t claim;         /* generation << GEN_SHIFT | the next piece's offset */
  _Atomic size_t done;            /* bytes of the window copied */
  _Atomic int over;               /* no more windows: helpers leave */
} crew;

/* Volume bytes [a, b) from the plain host slices they belong to into the window. */
static void copy_range(const crew *cr, size_t a, size_t b) {
  for (size_t i = a / cr->slice; i * cr->slice < b; i++) {
    const ab_tensor *sl = cr->task->in[i].tensor;
    size_t s0 = i * cr->slice, from = a > s0 ? a : s0, to = b < s0 + cr->slice ? b : s0 + cr->slice;
    if (ab__plain_host(sl, cr->dt))
      ab__copy_stream(cr->window + (from - cr->lo), (const char *)ab__host_ptr(sl) + (from - s0), to - from);
  }
}

/* Copies pieces of window `gen` until none is left or the window has moved on. */
static void crew_work(crew *cr, uint64_t gen) {
  uint64_t v = atomic_load_explicit(&cr->claim, memory_order_acquire);
  for (;;) {
    size_t off = v & OFF_MASK, len = atomic_load_explicit(&cr->len, memory_order_relaxed);
    if (v >> GEN_SHIFT != gen || off >= len) return;
    /* acquire: the window's fields, published with its claim word */
    if (!atomic_compare_exchange_weak_explicit(&cr->claim, &v, v + PART, memory_order_acquire, memory_order_acquire))
      continue;
    size_t end = len - off < PART ? len : off + PART;
    copy_range(cr, cr->lo + off, cr->lo + end);
    atomic_fetch_add_explicit(&cr->done, end - off, memory_order_release); /* pairs with the owner's wait */
    v = atomic_load_explicit(&cr->claim, memory_order_acquire);
  }
}

static int crew_task(ab_ctx *c, void *arg) {
  (void)c;
  crew *cr = arg;
  uint64_t seen = 0; /* generations start at 1 */
  for (unsigned spins = 0;;) {
    uint64_t gen = atomic_load_explicit(&cr->claim, memory_order_acquire) >> GEN_SHIFT;
    if (gen != seen) {
      crew_work(cr, gen);
      seen = gen;
      spins = 0;
    } else if (atomic_load_explicit(&cr->over, memory_order_acquire)) {
      return 0;
    } else if (++spins < 64) { /* the next window comes within microseconds, unless a DMA holds it */
      ab__cpu_relax();
    } else {
      sched_yield();
    }
  }
}

/* Up to n helpers; returns how many were submitted. */
static int crew_start(ab_runtime *rt, crew *cr, ab_future **f, int n) {
  ab_task_desc d = AB_TASK_DESC_INIT;
  d.fn = crew_task;
  d.arg = cr;
  d.name = "stack copy"; /* in traces */
  d.place.mode = AB_SUBMIT_TRY;
  int k = 0;
  while (k < n && ab_submit(rt, &d, &f[k]) == 0) k++;
  return k;
}

/* Helpers that never started are cancelled; the others are told to leave and waited for. */
static void crew_stop(crew *cr, ab_future **f, int n) {
  atomic_store_explicit(&cr->over, 1, memory_order_release); /* after the last window's fields */
  for (int k = 0; k < n; k++) {
    if (ab_future_cancel(f[k]) != 0) ab_future_wait(f[k], -1);
    ab_future_release(f[k]);
  }
}

/* Publishes window [lo, lo + len) at `host` as generation gen, copies it with the crew, and
 * returns once every byte is in. */
static void crew_window(crew *cr, uint64_t gen, char *host, size_t lo, size_t len) {
  cr->window = host;
  cr->lo = lo;
  atomic_store_explicit(&cr->len, len, memory_order_relaxed);
  atomic_store_explicit(&cr->done, 0, memory_order_relaxed);
  atomic_store_explicit(&cr->claim, gen << GEN_SHIFT, memory_order_release); /* the fields above */
  crew_work(cr, gen);
  /* the helpers' last pieces: a few microseconds, unless a helper lost its core (then yield) */
  for (unsigned spins = 0; atomic_load_explicit(&cr->done, memory_order_acquire) < len; spins++)
    if (spins < 256) ab__cpu_relax();
    else sched_yield();
}

static size_t window_bytes(const ab__device *d, size_t total) {
  size_t win = d->id.kind != AB_HOST && d->ops->map_chunk ? d->ops->map_chunk : total;
  return ab__map_window_test && ab__map_window_test < win ? ab__map_window_test : win;
}

int ab__fill_from_host(ab_ctx *c, ab_tensor *out, size_t slice, DLDataType dt, bool *done) {
  ab__worker *w = c->w;
  ab__device *d = w->dev;
  ab_runtime *rt = d->rt;
  bool host = d->id.kind == AB_HOST;
  if (!host && d->ops->map_write == NULL) return 0;
  if (host && ab__fault_hit(d, AB_FAULT_COPY)) return AB_EFAULT;
  size_t total = out->nbytes, win = window_bytes(d, total);
  crew cr = {.task = c->task, .slice = slice, .dt = dt};
  ab_future *helpers[CREW_MAX - 1];
  /* the host's other workers, as many as a window has pieces for, at most CREW_MAX - 1 */
  size_t pieces = (win + PART - 1) / PART, want = rt->kind_count[AB_HOST] ? (size_t)ab__host_device(rt)->nworkers : 0;
  if (host && want > 0) want--; /* this thread is one of them */
  if (want > pieces - 1) want = pieces - 1;
  if (want > CREW_MAX - 1) want = CREW_MAX - 1;
  int nh = 0, rc = 0;
  uint64_t gen = 1;
  for (size_t lo = 0; lo < total && rc == 0; lo += win, gen++) {
    size_t len = total - lo < win ? total - lo : win;
    void *h = (char *)out->dl.data + lo;
    if (!host && (rc = d->ops->map_write(w, out->dl.data, lo, len, &h)) != 0) break;
    if (gen == 1) nh = crew_start(rt, &cr, helpers, (int)want);
    crew_window(&cr, gen, h, lo, len);
    if (!host) rc = d->ops->unmap(w, out->dl.data, h);
    if (rc == 0 && ab_ctx_cancelled(c)) rc = AB_ECANCELED;
  }
  crew_stop(&cr, helpers, nh);
  if (rc == AB_ENOTSUP && gen == 1) return 0; /* no staging memory for a map: uploads instead */
  *done = rc == 0;
  return rc;
}
