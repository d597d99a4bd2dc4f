/*
 * devices/host/host.c: the host backend. One device (the machine), a jemalloc arena per worker.
 *
 * Each worker gets its own explicit jemalloc arena (arenas.create), so workers allocating
 * volumes at once do not contend on one arena's locks, and a worker's trim purges only its own
 * pages. Frees may come from any thread: dallocx finds the owning arena from the pointer.
 * Without jemalloc (the Python module) large blocks are mapped and cached per device (below);
 * sanitizer builds use aligned_alloc for everything.
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
#elif defined(AB_HOST_BLOCK_CACHE)
/* Without jemalloc (the Python module: Debian's jemalloc cannot be dlopened) large blocks are
 * mapped directly, with transparent huge pages asked for, and a freed block is kept in a small
 * per-device cache for the next allocation of about its size. A pipeline reallocates the same
 * volume sizes over and over; fresh 4 KiB pages cost a fault and a zeroing each (512 MiB of
 * them take longer than copying the data in). The OOM ladder's trim step unmaps the cache.
 * Sanitizer builds leave this off, so that ASan sees every block. */
#include <pthread.h>
#include <sys/mman.h>

#define LARGE_BLOCK ((size_t)1 << 20)
#define CACHE_SLOTS 8
#define HUGE_PAGE ((size_t)2 << 20)

typedef struct {
  pthread_mutex_t lock;
  void *ptr[CACHE_SLOTS];
  size_t len[CACHE_SLOTS];   /* mapped length; 0: empty slot */
  size_t cached, cap;        /* bytes held, and the most it may hold */
} block_cache;

static size_t mapped_len(size_t bytes) { return (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1); }

static int host_open(ab__device *d) {
  block_cache *c = calloc(1, sizeof *c);
  if (c == NULL) return AB_ENOMEM;
  pthread_mutex_init(&c->lock, NULL);
  c->cap = ab__host_memory() / 8; /* never sit on more than an eighth of the machine */
  d->backend = c;
  return 0;
}

static void cache_drop_all(block_cache *c) {
  pthread_mutex_lock(&c->lock);
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (c->len[i]) munmap(c->ptr[i], c->len[i]), c->len[i] = 0;
  c->cached = 0;
  pthread_mutex_unlock(&c->lock);
}

static void host_close(ab__device *d) {
  block_cache *c = d->backend;
  if (c == NULL) return;
  cache_drop_all(c);
  pthread_mutex_destroy(&c->lock);
  free(c);
  d->backend = NULL;
}

static int host_worker_start(ab__worker *w) {
  (void)w;
  return 0;
}

static void host_worker_stop(ab__worker *w) { (void)w; }

/* The smallest cached block that fits without wasting more than an eighth of it. */
static void *cache_take(block_cache *c, size_t len) {
  void *p = NULL;
  int best = -1;
  pthread_mutex_lock(&c->lock);
  for (int i = 0; i < CACHE_SLOTS; i++)
    if (c->len[i] >= len && c->len[i] - len <= c->len[i] / 8 && (best < 0 || c->len[i] < c->len[best])) best = i;
  if (best >= 0) {
    p = c->ptr[best];
    c->cached -= c->len[best];
    c->len[best] = 0;
  }
  pthread_mutex_unlock(&c->lock);
  return p;
}

static int host_alloc(ab__worker *w, size_t bytes, void **ptr) {
  if (bytes < LARGE_BLOCK) {
    *ptr = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    return *ptr ? 0 : AB_ENOMEM;
  }
  size_t len = mapped_len(bytes);
  void *p = cache_take(w->dev->backend, len);
  if (p == NULL) {
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return AB_ENOMEM;
    madvise(p, len, MADV_HUGEPAGE); /* a hint: fewer faults and TLB misses when THP is on */
  }
  *ptr = p;
  return 0;
}

static void host_free(ab__device *d, void *ptr, size_t bytes) {
  if (bytes < LARGE_BLOCK) {
    free(ptr);
    return;
  }
  block_cache *c = d->backend;
  size_t len = mapped_len(bytes);
  pthread_mutex_lock(&c->lock);
  for (int i = 0; i < CACHE_SLOTS && c->cached + len <= c->cap; i++) {
    if (c->len[i] == 0) {
      c->ptr[i] = ptr, c->len[i] = len, c->cached += len;
      ptr = NULL;
      break;
    }
  }
  pthread_mutex_unlock(&c->lock);
  if (ptr != NULL) munmap(ptr, len); /* cache full */
}

static void host_trim(ab__worker *w) { cache_drop_all(w->dev->backend); }
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

static int host_drain_frees(ab__device *d) {
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
    .drain_frees = host_drain_frees,
    .stream = NULL,
    .finish = host_finish,
    .upload = host_upload,
    .download = host_download,
    .copy = host_copy,
    .cast = host_cast,
    .gather = host_gather,
    .minmax = host_minmax,
};
