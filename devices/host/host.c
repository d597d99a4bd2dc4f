/*
 * devices/host/host.c: the host backend. One device (the machine), a jemalloc arena per worker.
 *
 * Each worker gets its own explicit jemalloc arena (arenas.create), so workers allocating
 * volumes at once do not contend on one arena's locks, and a worker's trim purges only its own
 * pages. Frees may come from any thread: dallocx finds the owning arena from the pointer.
 * Without jemalloc (sanitizer builds, the Python module) memory comes from aligned_alloc.
 */
#include <string.h>

#include "devices/host/host.h"

#ifdef AB_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

static int host_probe(ab__phys_info *out, int cap) {
  if (cap < 1) return 1;
  snprintf(out[0].name, sizeof out[0].name, "host (%d cores)", ab__ncpu());
  out[0].memory_total = ab__host_memory();
  return 1;
}

#ifdef AB_HAVE_JEMALLOC
/* w->backend and d->backend hold an arena index + 1, so NULL still means "nothing to stop". */
static unsigned arena_of(ab__worker *w) { return (unsigned)((uintptr_t)w->backend - 1); }
static unsigned large_arena_of(ab__device *d) { return (unsigned)((uintptr_t)d->backend - 1); }

/* Blocks this big come from one arena per device: the workers of a device then share the cache
 * of volume-sized blocks, while small blocks stay in per-worker arenas with no contention. */
#define LARGE_BLOCK ((size_t)1 << 20)

static void arena_set(unsigned idx, const char *what, ssize_t value) {
  char cmd[64];
  snprintf(cmd, sizeof cmd, "arena.%u.%s", idx, what);
  mallctl(cmd, NULL, NULL, &value, sizeof value);
}

static int host_worker_start(ab__worker *w) {
  unsigned idx;
  size_t len = sizeof idx;
  if (mallctl("arenas.create", &idx, &len, NULL, 0) != 0) return AB_ENOMEM;
  /* Keep freed pages: a pipeline reallocates the same volume sizes over and over, and fresh
   * pages cost a fault and a zeroing each. The OOM ladder's trim step purges them. */
  arena_set(idx, "dirty_decay_ms", -1);
  arena_set(idx, "muzzy_decay_ms", -1);
  w->backend = (void *)(uintptr_t)(idx + 1);
  return 0;
}

static int host_open(ab__device *d) {
  ab__worker tmp = {0};
  int rc = host_worker_start(&tmp);
  d->backend = tmp.backend;
  return rc;
}

static void host_close(ab__device *d) {
  char cmd[64];
  snprintf(cmd, sizeof cmd, "arena.%u.destroy", large_arena_of(d));
  mallctl(cmd, NULL, NULL, NULL, 0);
  d->backend = NULL;
}

static void host_worker_stop(ab__worker *w) {
  char cmd[64];
  snprintf(cmd, sizeof cmd, "arena.%u.destroy", arena_of(w));
  mallctl(cmd, NULL, NULL, NULL, 0);
  w->backend = NULL;
}

static int host_alloc(ab__worker *w, size_t bytes, void **ptr) {
  unsigned arena = bytes >= LARGE_BLOCK ? large_arena_of(w->dev) : arena_of(w);
  *ptr = mallocx(bytes, MALLOCX_ARENA(arena) | MALLOCX_TCACHE_NONE | MALLOCX_ALIGN(64));
  return *ptr ? 0 : AB_ENOMEM;
}

static void host_free(ab__device *d, void *ptr, size_t bytes) {
  (void)d;
  (void)bytes;
  dallocx(ptr, MALLOCX_TCACHE_NONE);
}

static void host_trim(ab__worker *w) {
  char cmd[64];
  snprintf(cmd, sizeof cmd, "arena.%u.purge", arena_of(w));
  mallctl(cmd, NULL, NULL, NULL, 0);
  snprintf(cmd, sizeof cmd, "arena.%u.purge", large_arena_of(w->dev));
  mallctl(cmd, NULL, NULL, NULL, 0);
}
#else
static int host_open(ab__device *d) {
  (void)d;
  return 0;
}

static void host_close(ab__device *d) { (void)d; }

static int host_worker_start(ab__worker *w) {
  (void)w;
  return 0;
}

static void host_worker_stop(ab__worker *w) { (void)w; }

static int host_alloc(ab__worker *w, size_t bytes, void **ptr) {
  (void)w;
  *ptr = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
  return *ptr ? 0 : AB_ENOMEM;
}

static void host_free(ab__device *d, void *ptr, size_t bytes) {
  (void)d;
  (void)bytes;
  free(ptr);
}

static void host_trim(ab__worker *w) { (void)w; }
#endif

static int host_sync(ab__device *d) {
  (void)d;
  return 0; /* host frees are immediate */
}

static int host_cast(ab__worker *w, const DLTensor *src, void *dst, size_t dst_off, DLDataType dt,
                     const ab__cast_params *p) {
  (void)w;
  return ab__host_cast(src, (char *)dst + dst_off, dt, p);
}

static int host_minmax(ab__worker *w, const DLTensor *src, double *lo, double *hi, bool *found) {
  (void)w;
  return ab__host_minmax(src, lo, hi, found);
}

/* On the host, moving data in, out and within is one memcpy. */
static int host_copy(ab__worker *w, void *dst, size_t dst_off, const void *src, size_t src_off, size_t bytes) {
  (void)w;
  memcpy((char *)dst + dst_off, (const char *)src + src_off, bytes);
  return 0;
}

static int host_gather(ab__worker *w, void *dst, size_t dst_off, size_t slice_bytes, int n, void *const *bases,
                       const size_t *offs) {
  (void)w;
  for (int i = 0; i < n; i++)
    memcpy((char *)dst + dst_off + (size_t)i * slice_bytes, (const char *)bases[i] + offs[i], slice_bytes);
  return 0;
}

static int host_finish(ab__worker *w) {
  (void)w;
  return 0; /* every host op is done when it returns */
}

static int host_upload(ab__worker *w, void *dst, size_t dst_off, const void *host, size_t bytes) {
  return host_copy(w, dst, dst_off, host, 0, bytes);
}

static int host_download(ab__worker *w, void *host, const void *src, size_t src_off, size_t bytes) {
  return host_copy(w, host, 0, src, src_off, bytes);
}

const ab__device_ops ab__host_ops = {
    .size = sizeof(ab__device_ops),
    .name = "host",
    .kind = AB_HOST,
    .default_workers = 0,
    .probe = host_probe,
    .open = host_open,
    .close = host_close,
    .worker_start = host_worker_start,
    .worker_stop = host_worker_stop,
    .alloc = host_alloc,
    .free = host_free,
    .trim = host_trim,
    .sync = host_sync,
    .stream = NULL,
    .finish = host_finish,
    .upload = host_upload,
    .download = host_download,
    .copy = host_copy,
    .cast = host_cast,
    .gather = host_gather,
    .minmax = host_minmax,
};
