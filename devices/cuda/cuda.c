/*
 * devices/cuda/cuda.c: the CUDA backend, on the runtime API (cudart_static).
 *
 * Per device (a logical device; several may share one GPU): a private cudaMemPool with an
 * unlimited release threshold, so freed blocks stay in the pool and the next task of the same
 * size reuses them (never cudaMalloc/cudaFree per task); a service stream for allocations and
 * frees made by threads that are not this device's workers. Per worker: a non-blocking stream,
 * a pool of events with timing disabled, and a pinned staging ring. No driver (error 35) or no
 * GPU (100) means zero devices, not an error.
 *
 * Design notes
 *   - Completion by polling (runtime/worker.c): after a task's body the worker records one of
 *     its pooled events on its stream and completes the future when cudaEventQuery says the
 *     event is done. No host callbacks. An event goes back to the free list of the worker that
 *     recorded it; only that worker's thread records and frees them, so the list has no lock.
 *   - Readiness across streams: a tensor made on worker A's stream is handed to a task on worker
 *     B only through its future, which completes after A's event has: the data is in place
 *     before B enqueues anything, so no cudaStreamWaitEvent is needed. The same holds for peer
 *     copies: the source tensor's producer is done when the consumer's copy is enqueued.
 *   - Memory is stream-ordered: a worker allocates on its own stream (cudaMallocFromPoolAsync)
 *     and frees on its own stream; other threads (ab_tensor_alloc, the last release of a tensor
 *     on a user thread, the transfer worker's callers) use the service stream, and allocate with
 *     a synchronisation so the block is usable from any stream at once. A free is only ever
 *     issued after the memory's last use has completed (the runtime finishes a stream before it
 *     frees scratch, and tasks release inputs only after their events), so freeing on another
 *     stream than the one that used the memory is safe.
 *   - The staging ring (RING_SLOTS chunks of RING_CHUNK bytes, cudaMallocHost): an upload from
 *     pageable memory copies piece k into a chunk while the DMA of piece k-1 runs; each chunk
 *     has an event, and a chunk is reused only once its event is done. Small uploads share a
 *     chunk (stacking many slices). Downloads are synchronous by contract: they drain the ring,
 *     then alternate chunks, copying chunk k-1 out while chunk k's DMA runs. Pinned sources and
 *     destinations (cudaPointerGetAttributes) take one direct DMA. The transfer worker has a
 *     ring of its own; its callers hold the device's xfer_lock.
 *   - The OOM ladder: a pool allocation that fails returns AB_ENOMEM to runtime/oom.c; trim
 *     gives the pool's unused memory back (cudaMemPoolTrimTo), drain_frees waits for every
 *     stream of the device so that pending frees land in the pool, then trims the pools of
 *     every logical device of the GPU, and the search starts again.
 *   - Memory handed to code outside the runtime (a DLPack consumer: torch, CuPy) may still be
 *     read by that code's kernels when its last reference goes: such memory is freed on the
 *     device's legacy default stream (free_shared), which runs after everything the consumer's
 *     default stream, and any blocking stream, had enqueued. The pool's release threshold is the
 *     device's budget: what the runtime keeps cached never exceeds what it may hold, and a trim
 *     hands the rest back to the driver, where other frameworks in the process can get it.
 *   - Mapped stacking (map_write, unmap): a second ring per worker, MAP_SLOTS pinned chunks of
 *     MAP_CHUNK bytes, made on first use. runtime/fill.c fills a chunk from many host slices
 *     with several threads, unmap sends it with one DMA and returns, and the next chunk fills
 *     while it travels: pageable slices reach the GPU at close to pinned bandwidth.
 *   - Errors: every CUDA call goes through CU(), which clears the thread's last-error slot (the
 *     runtime API keeps the last error of any call, and a launch reports it through
 *     cudaGetLastError: a stale cudaErrorNotReady from an event poll would fail the next
 *     launch) and leaves a note naming the call, the line and the CUDA error for the task's
 *     future (runtime/errors.c). Sticky errors stay sticky whatever is cleared.
 *   - Fault injection: allocations in the runtime's ladder and ab_tensor_alloc_pinned,
 *     AB_FAULT_COPY before each upload, download and copy, AB_FAULT_LAUNCH before each kernel.
 */
#include <string.h>

#include <cuda_runtime_api.h>

#include "devices/cuda/kernels.h"
#include "runtime/internal.h"

#define RING_SLOTS 3
#define RING_CHUNK ((size_t)4 << 20)
#define MAP_SLOTS 4
#define MAP_CHUNK ((size_t)16 << 20)
#define RING_ALIGN 256
#define EVENTS (AB__PENDING_MAX + 1)
#define BATCH_MIN ((size_t)1 << 20) /* gather slices this big go to the copy engines */
#define MAX_GPUS 64

typedef struct {
  int phys;
  cudaMemPool_t pool;
  cudaStream_t service;
  uint64_t peers;                 /* bit p: copies to and from GPU p go direct */
} cu_dev;

typedef struct cu_worker cu_worker;

typedef struct cu_event {
  cudaEvent_t ev;
  cu_worker *owner;
  struct cu_event *next;
} cu_event;

typedef struct {
  char *buf;                      /* pinned */
  cudaEvent_t done;               /* after the last DMA that reads or writes buf */
  bool busy;
} ring_slot;

struct cu_worker {
  cudaStream_t stream;
  ring_slot ring[RING_SLOTS];
  int cur;                        /* the chunk uploads fill */
  size_t fill;                    /* bytes of it handed out */
  ring_slot map[MAP_SLOTS];       /* map_write's chunks, made on first use (design notes) */
  int map_next;                   /* the chunk the next map_write takes */
  bool map_failed;                /* no pinned memory for them: map_write says AB_ENOTSUP */
  ring_slot *mapped;              /* the chunk handed out and not yet unmapped */
  size_t mapped_off, mapped_bytes;
  cu_event events[EVENTS];
  cu_event *free_events;
  double *partials;               /* device: minmax's per-block results */
};

extern const ab__device_ops ab__cuda_ops;

/* A CUDA call's result as an AB_E* code. On failure the thread's last-error slot is cleared
 * (the error is reported here, by this call's caller: it must not fail a later launch, whose
 * only report is cudaGetLastError) and the thread's device note names the call, where it was
 * made and the CUDA error (ab_future_message; on stderr with AB_DEBUG). */
int ab__cu_check(int err, const char *call, int line) {
  cudaError_t e = (cudaError_t)err;
  if (e == cudaSuccess) return 0;
  cudaGetLastError();
  int name = (int)strcspn(call, "("); /* the function, not its arguments */
  ab__device_error("%.*s failed (devices/cuda/cuda.c:%d): %s: %s", name, call, line, cudaGetErrorName(e),
                   cudaGetErrorString(e));
  return e == cudaErrorMemoryAllocation ? AB_ENOMEM : AB_EDEVICE;
}
#define CU(call) ab__cu_check((int)(call), #call, __LINE__)
#define CU_AS(err, name) ab__cu_check((int)(err), name, __LINE__) /* a result kept in a variable */

/* Makes phys the calling thread's device (every thread calls from any device's ops). */
static int use(int phys) {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur == phys) return 0;
  return CU(cudaSetDevice(phys));
}

/* A user's thread (runtime create and destroy, ab_tensor_alloc, the last release of a tensor)
 * gets its own current device back afterwards: we must not move its CUDA calls elsewhere.
 * Worker threads are ours; compute tasks get their device back through ab_ctx_stream. */
static int enter(int phys, int *prev) {
  *prev = -1;
  if (ab__current_worker == NULL && cudaGetDevice(prev) != cudaSuccess) *prev = -1;
  return use(phys);
}

static void leave(int prev) {
  if (prev >= 0) cudaSetDevice(prev);
}

static cu_dev *dev_of(ab__device *d) { return d->backend; }
static cu_worker *worker_of(ab__worker *w) { return w->backend; }
static cudaStream_t stream_of(ab__worker *w) { return worker_of(w)->stream; }
static int use_w(ab__worker *w) { return use(dev_of(w->dev)->phys); }

/* ---- discovery ------------------------------------------------------------------------------ */
static int cu_probe(ab__phys_info *out, int cap) {
  int n = 0; /* cudaGetDeviceCount leaves it alone on error */
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) { /* 35: no driver, 100: no GPU; anything else: none usable either */
    cudaGetLastError();
    return 0;
  }
  if (n > MAX_GPUS) n = MAX_GPUS;
  for (int i = 0; i < n && i < cap; i++) {
    struct cudaDeviceProp p;
    if (CU(cudaGetDeviceProperties(&p, i)) != 0) return i;
    snprintf(out[i].name, sizeof out[i].name, "%.63s", p.name);
    out[i].memory_total = p.totalGlobalMem;
  }
  return n;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */
/* Direct copies with every GPU that allows them both ways; the pool lets those GPUs in. */
static void enable_peers(cu_dev *c) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return;
  for (int p = 0; p < n && p < MAX_GPUS; p++) {
    int to = 0, from = 0;
    if (p == c->phys) continue;
    if (CU(cudaDeviceCanAccessPeer(&to, c->phys, p)) != 0 || CU(cudaDeviceCanAccessPeer(&from, p, c->phys)) != 0 ||
        !to || !from)
      continue;
    cudaError_t e = cudaDeviceEnablePeerAccess(p, 0);
    if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError();
      continue;
    }
    cudaGetLastError(); /* AlreadyEnabled: another logical device of this GPU did it */
    struct cudaMemAccessDesc a = {.location = {.type = cudaMemLocationTypeDevice, .id = p},
                                  .flags = cudaMemAccessFlagsProtReadWrite};
    if (CU(cudaMemPoolSetAccess(c->pool, &a, 1)) == 0) c->peers |= 1ull << p;
  }
}

static void cu_close(ab__device *d) {
  cu_dev *c = d->backend;
  if (c == NULL) return;
  int prev;
  enter(c->phys, &prev);
  if (c->service) {
    cudaStreamSynchronize(c->service);
    cudaStreamDestroy(c->service);
  }
  if (c->pool) cudaMemPoolDestroy(c->pool);
  leave(prev);
  free(c);
  d->backend = NULL;
}

static int cu_open(ab__device *d) {
  cu_dev *c = calloc(1, sizeof *c);
  if (c == NULL) return AB_ENOMEM;
  d->backend = c;
  c->phys = d->physical;
  int prev, rc = enter(c->phys, &prev);
  struct cudaMemPoolProps props = {.allocType = cudaMemAllocationTypePinned,
                                   .handleTypes = cudaMemHandleTypeNone,
                                   .location = {.type = cudaMemLocationTypeDevice, .id = c->phys}};
  if (rc == 0) rc = CU(cudaMemPoolCreate(&c->pool, &props));
  /* Freed blocks stay for reuse up to the budget (never more than the runtime may hold); past
   * it, and after a trim, they go back to the driver for other frameworks (design notes). */
  uint64_t keep = d->budget < d->memory_total ? d->budget : d->memory_total;
  if (rc == 0) rc = CU(cudaMemPoolSetAttribute(c->pool, cudaMemPoolAttrReleaseThreshold, &keep));
  if (rc == 0) rc = CU(cudaStreamCreateWithFlags(&c->service, cudaStreamNonBlocking));
  if (rc == 0) enable_peers(c);
  leave(prev);
  if (rc != 0) cu_close(d); /* the runtime closes only devices that opened */
  return rc;
}

static void cu_worker_stop(ab__worker *w) {
  cu_worker *cw = w->backend;
  if (cw == NULL) return;
  int prev;
  enter(dev_of(w->dev)->phys, &prev);
  if (cw->stream) cudaStreamSynchronize(cw->stream);
  if (cw->partials) cudaFreeAsync(cw->partials, cw->stream);
  for (int i = 0; i < RING_SLOTS; i++) {
    if (cw->ring[i].buf) cudaFreeHost(cw->ring[i].buf);
    if (cw->ring[i].done) cudaEventDestroy(cw->ring[i].done);
  }
  for (int i = 0; i < MAP_SLOTS; i++) {
    if (cw->map[i].buf) cudaFreeHost(cw->map[i].buf);
    if (cw->map[i].done) cudaEventDestroy(cw->map[i].done);
  }
  for (int i = 0; i < EVENTS; i++)
    if (cw->events[i].ev) cudaEventDestroy(cw->events[i].ev);
  if (cw->stream) {
    cudaStreamSynchronize(cw->stream); /* the partials' free */
    cudaStreamDestroy(cw->stream);
  }
  leave(prev);
  free(cw);
  w->backend = NULL;
}

static int make_events(cu_worker *cw) {
  for (int i = 0; i < EVENTS; i++) {
    int rc = CU(cudaEventCreateWithFlags(&cw->events[i].ev, cudaEventDisableTiming));
    if (rc != 0) return rc;
    cw->events[i].owner = cw;
    cw->events[i].next = cw->free_events;
    cw->free_events = &cw->events[i];
  }
  return 0;
}

/* n pinned chunks of `bytes`, each with its event. */
static int make_slots(ring_slot *slots, int n, size_t bytes) {
  for (int i = 0; i < n; i++) {
    int rc = CU(cudaMallocHost((void **)&slots[i].buf, bytes));
    if (rc == 0) rc = CU(cudaEventCreateWithFlags(&slots[i].done, cudaEventDisableTiming));
    if (rc != 0) return rc;
  }
  return 0;
}

static int cu_worker_start(ab__worker *w) {
  cu_dev *c = dev_of(w->dev);
  cu_worker *cw = calloc(1, sizeof *cw);
  if (cw == NULL) return AB_ENOMEM;
  w->backend = cw;
  int prev, rc = enter(c->phys, &prev);
  if (rc == 0) rc = CU(cudaStreamCreateWithFlags(&cw->stream, cudaStreamNonBlocking));
  if (rc == 0) rc = make_events(cw);
  if (rc == 0) rc = make_slots(cw->ring, RING_SLOTS, RING_CHUNK);
  size_t pb = sizeof(double) * 3 * AB__CU_MINMAX_BLOCKS;
  if (rc == 0) rc = CU(cudaMallocFromPoolAsync((void **)&cw->partials, pb, c->pool, cw->stream));
  if (rc == 0) rc = CU(cudaStreamSynchronize(cw->stream));
  leave(prev);
  return rc; /* on failure the runtime calls worker_stop, which frees what was made */
}

/* ---- memory --------------------------------------------------------------------------------- */
/* A thread that is w itself (a worker in its task, or a transfer worker's caller) orders its
 * memory on w's stream; any other thread goes through the service stream. */
static bool on_own_stream(ab__worker *w) { return w->index < 0 || ab__current_worker == w; }

/* A request the GPU cannot hold is out of memory whatever the driver calls it: the pool may
 * answer one larger than the device with cudaErrorInvalidValue rather than
 * cudaErrorMemoryAllocation, and the OOM ladder must see AB_ENOMEM either way. */
static int pool_error(int rc, cudaError_t e, size_t bytes, uint64_t total) {
  return rc == AB_EDEVICE && e == cudaErrorInvalidValue && bytes > total ? AB_ENOMEM : rc;
}

static int pool_alloc(ab__device *d, ab__worker *w, size_t bytes, void **ptr) {
  cu_dev *c = dev_of(d);
  bool own = on_own_stream(w);
  cudaStream_t s = own ? stream_of(w) : c->service;
  cudaError_t e = cudaMallocFromPoolAsync(ptr, bytes, c->pool, s);
  int rc = pool_error(CU_AS(e, "cudaMallocFromPoolAsync"), e, bytes, d->memory_total);
  if (rc != 0 || own) return rc;
  rc = CU(cudaStreamSynchronize(s)); /* usable from any stream once we return */
  if (rc != 0) cudaFreeAsync(*ptr, s);
  return rc;
}

static int cu_alloc(ab__worker *w, size_t bytes, void **ptr) {
  cu_dev *c = dev_of(w->dev);
  int prev, rc = enter(c->phys, &prev);
  if (rc == 0) rc = pool_alloc(w->dev, w, bytes, ptr);
  leave(prev);
  return rc;
}

static void cu_free(ab__device *d, void *ptr, size_t bytes) {
  (void)bytes;
  cu_dev *c = dev_of(d);
  int prev;
  enter(c->phys, &prev);
  ab__worker *me = ab__current_worker;
  cudaStream_t s = me && me->dev == d ? stream_of(me) : c->service;
  CU(cudaFreeAsync(ptr, s));
  leave(prev);
}

/* Memory a DLPack consumer had: freed on the legacy default stream, so that the block returns
 * to the pool only after the consumer's kernels enqueued on its default stream (or any
 * blocking stream) before this free (design notes). The runtime's own streams are non-blocking
 * and its own uses are done before any free, so they never wait on it. */
static void cu_free_shared(ab__device *d, void *ptr, size_t bytes) {
  (void)bytes;
  int prev;
  enter(dev_of(d)->phys, &prev);
  CU(cudaFreeAsync(ptr, cudaStreamLegacy));
  leave(prev);
}

static void cu_trim(ab__worker *w) { CU(cudaMemPoolTrimTo(dev_of(w->dev)->pool, 0)); }

/* Every pool on d's GPU gives its unused memory back: the logical devices of one GPU each keep
 * a pool, and what one of them caches another may need. Pools are thread-safe. */
static void trim_siblings(ab__device *d) {
  ab_runtime *rt = d->rt;
  int phys = dev_of(d)->phys;
  for (int i = 0; i < rt->ndevices; i++) {
    ab__device *o = &rt->devices[i];
    if (o->ops == &ab__cuda_ops && o->backend && dev_of(o)->phys == phys) CU(cudaMemPoolTrimTo(dev_of(o)->pool, 0));
  }
}

static int cu_drain_frees(ab__device *d) {
  cu_dev *c = dev_of(d);
  int prev, rc = enter(c->phys, &prev);
  for (int i = 0; i < d->nworkers && rc == 0; i++)
    if (d->workers[i].backend) rc = CU(cudaStreamSynchronize(stream_of(&d->workers[i])));
  if (rc == 0 && d->xfer.backend) rc = CU(cudaStreamSynchronize(stream_of(&d->xfer)));
  if (rc == 0) rc = CU(cudaStreamSynchronize(c->service));
  if (rc == 0) trim_siblings(d);
  leave(prev);
  return rc;
}

static int cu_pinned_alloc(ab__device *d, size_t bytes, void **ptr) {
  int prev, rc = enter(dev_of(d)->phys, &prev);
  if (rc == 0) rc = CU(cudaMallocHost(ptr, bytes ? bytes : 1));
  leave(prev);
  return rc;
}

static void cu_pinned_free(ab__device *d, void *ptr) {
  (void)d;
  CU(cudaFreeHost(ptr));
}

/* A compute task launches on this stream next: its device must be the thread's current one
 * (the worker may have served another GPU's transfer since). */
static void *cu_stream(ab__worker *w) {
  use_w(w); /* a failure shows at the task's first call on the stream */
  return stream_of(w);
}

/* ---- completion ----------------------------------------------------------------------------- */
static int cu_finish(ab__worker *w) {
  int rc = use_w(w);
  return rc ? rc : CU(cudaStreamSynchronize(stream_of(w)));
}

static int cu_record(ab__worker *w, void **event) {
  cu_worker *cw = worker_of(w);
  cu_event *e = cw->free_events;
  if (e == NULL) return AB_EDEVICE; /* more than AB__PENDING_MAX + 1 pending: a runtime bug */
  int rc = use_w(w);
  if (rc == 0) rc = CU(cudaEventRecord(e->ev, cw->stream));
  if (rc != 0) return rc;
  cw->free_events = e->next;
  *event = e;
  return 0;
}

/* NotReady is an answer, not an error, but the runtime still keeps it as the thread's last
 * error: cleared here, or the worker's next launch would report it as its own failure. */
static int cu_poll(ab__worker *w, void *event) {
  (void)w;
  cudaError_t e = cudaEventQuery(((cu_event *)event)->ev);
  if (e == cudaErrorNotReady) {
    cudaGetLastError();
    return 0;
  }
  return e == cudaSuccess ? 1 : CU_AS(e, "cudaEventQuery");
}

static int cu_wait(ab__worker *w, void *event) {
  (void)w;
  int rc = CU(cudaEventSynchronize(((cu_event *)event)->ev));
  return rc == 0 ? 1 : rc;
}

static void cu_event_free(void *event) {
  cu_event *e = event;
  e->next = e->owner->free_events;
  e->owner->free_events = e;
}

/* ---- data movement -------------------------------------------------------------------------- */
static bool pinned(const void *host) {
  struct cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, host) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

/* Waits until slot i's last DMA is done. */
static int slot_idle(ring_slot *s) {
  if (!s->busy) return 0;
  s->busy = false;
  return CU(cudaEventSynchronize(s->done));
}

/* n (<= RING_CHUNK) bytes of staging for an upload: in the current chunk if they fit, else the
 * next chunk once its DMA is done. */
static int ring_take(cu_worker *cw, size_t n, ring_slot **slot, char **p) {
  if (cw->fill + n > RING_CHUNK) {
    cw->cur = (cw->cur + 1) % RING_SLOTS;
    cw->fill = 0;
  }
  ring_slot *s = &cw->ring[cw->cur];
  if (cw->fill == 0) {
    int rc = slot_idle(s);
    if (rc != 0) return rc;
  }
  *slot = s;
  *p = s->buf + cw->fill;
  cw->fill += (n + RING_ALIGN - 1) & ~(size_t)(RING_ALIGN - 1);
  return 0;
}

/* Every chunk idle; uploads start again at chunk 0. */
static int ring_drain(cu_worker *cw) {
  int rc = 0;
  for (int i = 0; i < RING_SLOTS; i++) {
    int r = slot_idle(&cw->ring[i]);
    if (rc == 0) rc = r;
  }
  cw->cur = 0;
  cw->fill = 0;
  return rc;
}

static int staged_upload(cu_worker *cw, char *dst, const char *host, size_t bytes) {
  for (size_t done = 0; done < bytes;) {
    size_t n = bytes - done < RING_CHUNK ? bytes - done : RING_CHUNK;
    ring_slot *s;
    char *stage;
    int rc = ring_take(cw, n, &s, &stage);
    if (rc != 0) return rc;
    memcpy(stage, host + done, n); /* while the previous piece's DMA runs */
    rc = CU(cudaMemcpyAsync(dst + done, stage, n, cudaMemcpyHostToDevice, cw->stream));
    if (rc == 0) rc = CU(cudaEventRecord(s->done, cw->stream));
    if (rc != 0) return rc;
    s->busy = true;
    done += n;
  }
  return 0;
}

static int cu_upload(ab__worker *w, void *dst, size_t off, const void *host, size_t bytes) {
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  int rc = use_w(w);
  if (rc != 0) return rc;
  if (pinned(host))
    return CU(cudaMemcpyAsync((char *)dst + off, host, bytes, cudaMemcpyHostToDevice, stream_of(w)));
  return staged_upload(worker_of(w), (char *)dst + off, host, bytes);
}

/* Host access to [off, off + bytes) of base for writing, bytes <= MAP_CHUNK: the next map
 * chunk, once its last DMA is done. The chunks are made on the first call; without pinned
 * memory for them the answer is AB_ENOTSUP, and the caller uploads instead. */
static int cu_map_write(ab__worker *w, void *base, size_t off, size_t bytes, void **host) {
  (void)base;
  cu_worker *cw = worker_of(w);
  AB__ASSERT(bytes <= MAP_CHUNK && cw->mapped == NULL);
  if (cw->map_failed) return AB_ENOTSUP;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  int rc = use_w(w);
  if (rc == 0 && cw->map[0].buf == NULL && (rc = make_slots(cw->map, MAP_SLOTS, MAP_CHUNK)) != 0) {
    for (int i = 0; i < MAP_SLOTS; i++) { /* give back what was made: uploads will do */
      if (cw->map[i].buf) cudaFreeHost(cw->map[i].buf);
      if (cw->map[i].done) cudaEventDestroy(cw->map[i].done);
      cw->map[i] = (ring_slot){0};
    }
    cudaGetLastError();
    cw->map_failed = true;
    return AB_ENOTSUP;
  }
  ring_slot *s = &cw->map[cw->map_next];
  if (rc == 0) rc = slot_idle(s);
  if (rc != 0) return rc;
  cw->map_next = (cw->map_next + 1) % MAP_SLOTS;
  cw->mapped = s;
  cw->mapped_off = off;
  cw->mapped_bytes = bytes;
  *host = s->buf;
  return 0;
}

/* The mapped chunk goes to the device in one DMA, in order on w's stream; the next map_write
 * fills another chunk while it travels. */
static int cu_unmap(ab__worker *w, void *base, void *host) {
  cu_worker *cw = worker_of(w);
  ring_slot *s = cw->mapped;
  AB__ASSERT(s != NULL && host == s->buf);
  cw->mapped = NULL;
  int rc = use_w(w);
  if (rc == 0)
    rc = CU(cudaMemcpyAsync((char *)base + cw->mapped_off, s->buf, cw->mapped_bytes, cudaMemcpyHostToDevice,
                            cw->stream));
  if (rc == 0) rc = CU(cudaEventRecord(s->done, cw->stream));
  if (rc == 0) s->busy = true;
  return rc;
}

/* Chunk k's DMA into slot k % 2 is enqueued before chunk k-1 is copied out of the other. */
static int staged_download(cu_worker *cw, char *host, const char *src, size_t bytes) {
  int rc = ring_drain(cw);
  size_t prev_off = 0, prev_n = 0;
  for (size_t done = 0, k = 0; rc == 0 && done < bytes; done += RING_CHUNK, k++) {
    size_t n = bytes - done < RING_CHUNK ? bytes - done : RING_CHUNK;
    ring_slot *s = &cw->ring[k % 2];
    rc = CU(cudaMemcpyAsync(s->buf, src + done, n, cudaMemcpyDeviceToHost, cw->stream));
    if (rc == 0) rc = CU(cudaEventRecord(s->done, cw->stream));
    if (rc != 0) break;
    s->busy = true;
    if (k > 0) {
      ring_slot *p = &cw->ring[(k - 1) % 2];
      if ((rc = slot_idle(p)) == 0) memcpy(host + prev_off, p->buf, prev_n);
    }
    prev_off = done;
    prev_n = n;
  }
  if (rc == 0 && prev_n > 0) {
    ring_slot *p = &cw->ring[((bytes - 1) / RING_CHUNK) % 2];
    if ((rc = slot_idle(p)) == 0) memcpy(host + prev_off, p->buf, prev_n);
  }
  int d = ring_drain(cw); /* on failure too: no DMA may still write a chunk */
  return rc ? rc : d;
}

static int cu_download(ab__worker *w, void *host, const void *src, size_t off, size_t bytes) {
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  int rc = use_w(w);
  if (rc != 0) return rc;
  cudaStream_t s = stream_of(w);
  if (!pinned(host)) return staged_download(worker_of(w), host, (const char *)src + off, bytes);
  rc = CU(cudaMemcpyAsync(host, (const char *)src + off, bytes, cudaMemcpyDeviceToHost, s));
  return rc ? rc : CU(cudaStreamSynchronize(s));
}

static int cu_copy(ab__worker *w, void *dst, size_t dst_off, const void *src, size_t src_off, size_t bytes) {
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  int rc = use_w(w);
  if (rc != 0) return rc;
  return CU(cudaMemcpyAsync((char *)dst + dst_off, (const char *)src + src_off, bytes, cudaMemcpyDeviceToDevice,
                                stream_of(w)));
}

static bool cu_can_peer(ab__device *d, ab__device *s) {
  if (s->ops != &ab__cuda_ops || d->ops != &ab__cuda_ops) return false;
  cu_dev *a = dev_of(d), *b = dev_of(s);
  return a->phys == b->phys || (a->peers >> b->phys & 1);
}

/* The same GPU (logical devices): a plain device-to-device copy; peers: cudaMemcpyPeerAsync. */
static int cu_copy_from(ab__worker *w, void *dst, size_t dst_off, ab__device *s, const void *src, size_t src_off,
                        size_t bytes) {
  if (!cu_can_peer(w->dev, s)) return AB_ENOTSUP;
  int from = dev_of(s)->phys, to = dev_of(w->dev)->phys;
  if (from == to) return cu_copy(w, dst, dst_off, src, src_off, bytes);
  if (bytes == 0) return 0;
  if (ab__fault_hit(w->dev, AB_FAULT_COPY)) return AB_EFAULT;
  int rc = use(to);
  if (rc != 0) return rc;
  return CU(cudaMemcpyPeerAsync((char *)dst + dst_off, to, (const char *)src + src_off, from, bytes, stream_of(w)));
}

/* ---- kernels -------------------------------------------------------------------------------- */
static int layout_of(const DLTensor *t, ab__cu_layout *l) {
  int64_t numel = ab__collapse(t, &l->nd, l->shape, l->bstride);
  l->numel = (uint64_t)numel;
  size_t es = ab__dtype_size(t->dtype);
  /* The kernels load whole elements: the first one must be aligned (DLPack asks for it). */
  return ((uintptr_t)t->data + t->byte_offset) % es ? AB_ENOTSUP : 0;
}

static const char *first_elem(const DLTensor *t) { return (const char *)t->data + t->byte_offset; }


static int cu_minmax(ab__worker *w, const DLTensor *src, double *lo, double *hi, bool *found) {
  int s = ab__dtype_index(src->dtype);
  *found = false;
  if (s != 8 && s != 9) return AB_EDTYPE;
  ab__cu_layout l;
  int rc = layout_of(src, &l);
  if (rc != 0 || l.numel == 0) return rc;
  if (ab__fault_hit(w->dev, AB_FAULT_LAUNCH)) return AB_EFAULT;
  if ((rc = use_w(w)) != 0) return rc;
  cu_worker *cw = worker_of(w);
  rc = CU_AS(ab__cu_minmax(cw->stream, s, &l, first_elem(src), cw->partials), "the minmax kernel's launch");
  double part[3 * AB__CU_MINMAX_BLOCKS];
  if (rc == 0) rc = staged_download(cw, (char *)part, (const char *)cw->partials, sizeof part);
  if (rc != 0) return rc;
  for (int g = 0; g < AB__CU_MINMAX_BLOCKS; g++) {
    if (part[3 * g + 2] == 0) continue;
    if (!*found || part[3 * g] < *lo) *lo = part[3 * g];
    if (!*found || part[3 * g + 1] > *hi) *hi = part[3 * g + 1];
    *found = true;
  }
  return 0;
}

static bool stretchable(int s, int d) { return (s == 8 || s == 9) && d <= 7; }

static int cu_cast(ab__worker *w, const DLTensor *src, void *dst, size_t dst_off, DLDataType dt,
                   const ab__cast_params *p) {
  int s = ab__dtype_index(src->dtype), d = ab__dtype_index(dt);
  if (s < 0 || d < 0) return AB_EDTYPE;
  ab__cu_layout l;
  int rc = layout_of(src, &l);
  if (rc != 0 || l.numel == 0) return rc;
  bool stretch = false;
  double lo = 0, hi = 0;
  if (p && p->mode == AB_CAST_STRETCH && stretchable(s, d)) {
    bool found = p->have_range;
    lo = p->lo;
    hi = p->hi;
    if (!found && (rc = cu_minmax(w, src, &lo, &hi, &found)) != 0) return rc;
    stretch = found && hi > lo;
  }
  if (ab__fault_hit(w->dev, AB_FAULT_LAUNCH)) return AB_EFAULT;
  if ((rc = use_w(w)) != 0) return rc;
  return CU_AS(ab__cu_cast(stream_of(w), s, d, &l, first_elem(src), (char *)dst + dst_off, stretch, lo, hi - lo),
               "the cast kernel's launch");
}

/* Set once cudaMemcpyBatchAsync has failed in this process: whatever the reason (a driver
 * without batches, a kind of copy it refuses), the loop of copies does the work from then on. */
static _Atomic bool batch_broken;

/* Big slices: one batch of copies for the copy engines (cudaMemcpyBatchAsync where the runtime
 * has it), a loop of copies otherwise. */
static int copy_batch(ab__worker *w, char *dst, size_t slice, int n, const void *const *srcs) {
  cudaStream_t st = stream_of(w);
#if CUDART_VERSION >= 12080
  if (atomic_load_explicit(&batch_broken, memory_order_relaxed)) goto loop; /* a hint: either path works */
  void *dsts[AB__GATHER_MAX];
  size_t sizes[AB__GATHER_MAX], idx = 0;
  for (int i = 0; i < n; i++) {
    dsts[i] = dst + slice * (size_t)i;
    sizes[i] = slice;
  }
  struct cudaMemcpyAttributes a = {.srcAccessOrder = cudaMemcpySrcAccessOrderStream};
#if CUDART_VERSION >= 13000
  cudaError_t e = cudaMemcpyBatchAsync(dsts, srcs, sizes, (size_t)n, &a, &idx, 1, st);
#else
  size_t fail = 0;
  cudaError_t e = cudaMemcpyBatchAsync(dsts, (void **)srcs, sizes, (size_t)n, &a, &idx, 1, &fail, st);
#endif
  if (e == cudaSuccess) return 0;
  /* The batch is refused as a whole before any copy is enqueued, or its copies all write what
   * the loop writes again: either way the loop below gives the right bytes. A sticky error
   * fails the loop's first copy as well. */
  cudaGetLastError();
  if (ab__debug_env())
    fprintf(stderr, "arraybridge: cudaMemcpyBatchAsync: %s; one cudaMemcpyAsync per slice from now on\n",
            cudaGetErrorName(e));
  atomic_store_explicit(&batch_broken, true, memory_order_relaxed);
loop:
#endif
  for (int i = 0; i < n; i++) {
    int rc = CU(cudaMemcpyAsync(dst + slice * (size_t)i, srcs[i], slice, cudaMemcpyDeviceToDevice, st));
    if (rc != 0) return rc;
  }
  return 0;
}

static int cu_gather(ab__worker *w, void *dst, size_t dst_off, size_t slice_bytes, int n, void *const *bases,
                     const size_t *offs) {
  if (n <= 0 || slice_bytes == 0) return 0;
  if (n > AB__GATHER_MAX) return AB_EINVAL;
  const void *srcs[AB__GATHER_MAX];
  for (int i = 0; i < n; i++) srcs[i] = (const char *)bases[i] + offs[i];
  bool big = slice_bytes >= BATCH_MIN;
  if (ab__fault_hit(w->dev, big ? AB_FAULT_COPY : AB_FAULT_LAUNCH)) return AB_EFAULT;
  int rc = use_w(w);
  if (rc != 0) return rc;
  if (big) return copy_batch(w, (char *)dst + dst_off, slice_bytes, n, srcs);
  return CU_AS(ab__cu_gather(stream_of(w), (char *)dst + dst_off, srcs, n, slice_bytes), "the gather kernel's launch");
}

const ab__device_ops ab__cuda_ops = {
    .size = sizeof(ab__device_ops),
    .name = "cuda",
    .kind = AB_CUDA,
    .default_workers = 2,
    .probe = cu_probe,
    .open = cu_open,
    .close = cu_close,
    .worker_start = cu_worker_start,
    .worker_stop = cu_worker_stop,
    .alloc = cu_alloc,
    .free = cu_free,
    .trim = cu_trim,
    .drain_frees = cu_drain_frees,
    .stream = cu_stream,
    .finish = cu_finish,
    .record = cu_record,
    .poll = cu_poll,
    .wait = cu_wait,
    .event_free = cu_event_free,
    .upload = cu_upload,
    .download = cu_download,
    .copy = cu_copy,
    .cast = cu_cast,
    .gather = cu_gather,
    .minmax = cu_minmax,
    .can_peer = cu_can_peer,
    .copy_from = cu_copy_from,
    .map_write = cu_map_write,
    .unmap = cu_unmap,
    .map_chunk = MAP_CHUNK,
    .free_shared = cu_free_shared,
    .pinned_alloc = cu_pinned_alloc,
    .pinned_free = cu_pinned_free,
};
