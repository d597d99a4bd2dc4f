/*
 * devices/device.h: the contract every backend implements, one const table per backend.
 *
 * Core code never includes a backend's headers (CUDA, OpenCL); it calls these ops. A backend
 * keeps its state behind d->backend (per device) and w->backend (per worker: the stream or
 * queue and the arena). Every op is called from the thread noted beside it; an op that may fail
 * returns 0 or a negative AB_E* code. Allocation failures return AB_ENOMEM, which the runtime
 * turns into its OOM ladder.
 */
#ifndef AB_DEVICES_DEVICE_H
#define AB_DEVICES_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arraybridge.h" /* DLTensor, DLDataType, ab_kind */

/* The runtime's device and worker (runtime/internal.h): a backend keeps its own state behind
 * their `backend` pointers, and this contract needs no more than their names. */
typedef struct ab__device ab__device;
typedef struct ab__worker ab__worker;
typedef struct ab__device_ops ab__device_ops;

typedef struct {
  char name[64];
  uint64_t memory_total;          /* bytes */
} ab__phys_info;

/* How a cast converts values (ab_cast_mode). STRETCH maps [lo, hi], the range of a float
 * source's finite values, onto the integer target's range; have_range says lo and hi are given
 * (stacking computes them over every slice), else the kernel finds them in src. */
typedef struct {
  int mode;
  bool have_range;
  double lo, hi;
} ab__cast_params;

struct ab__device_ops {
  size_t size;                    /* sizeof(struct ab__device_ops): tables only ever grow */
  const char *name;
  int kind;                       /* ab_kind */
  int default_workers;            /* per device when the options say 0 (0: one per core) */

  /* Discovery (runtime_create thread). Fills up to cap entries; returns how many physical
   * devices exist (0 when the platform or driver is absent: not an error). */
  int (*probe)(ab__phys_info *out, int cap);
  /* Per device and per worker lifecycle (runtime_create / destroy thread). */
  int (*open)(ab__device *d);
  void (*close)(ab__device *d);
  int (*worker_start)(ab__worker *w); /* sets w->backend when there is anything to stop */
  void (*worker_stop)(ab__worker *w);

  /* Memory. alloc: from w's arena (worker thread, or any thread with w = the device's first
   * worker). free: any thread, stream-ordered after the memory's last use. trim: give w's cached
   * blocks back. drain_frees: wait until the frees still pending on the device's streams have
   * landed, so their memory can be allocated again (the OOM ladder's step 3; NULL or a no-op
   * where frees are immediate). */
  int (*alloc)(ab__worker *w, size_t bytes, void **ptr);
  void (*free)(ab__device *d, void *ptr, size_t bytes);
  void (*trim)(ab__worker *w);
  int (*drain_frees)(ab__device *d);

  /* The worker's stream for compute tasks (cudaStream_t, cl_command_queue; NULL on the host). */
  void *(*stream)(ab__worker *w);

  /* Data movement and kernels, in order on w's stream. upload, copy and cast may return before
   * they are done: finish(w) waits for everything enqueued on w (the worker calls it before it
   * completes a task), and host memory given to upload must stay valid until then. download
   * and minmax return when done. Device memory is named by a base (a pointer on the host, a
   * cl_mem, a CUDA pointer) and a byte offset, exactly as DLTensor names it. w is a worker of
   * the device that owns the memory, or that device's transfer worker (ab__device.xfer). */
  int (*finish)(ab__worker *w);
  /* Completion by polling, not by waiting (NULL: the backend's ops are done when they return).
   * record: an event that completes after everything enqueued on w so far. poll: 1 when it has,
   * 0 while it has not, or an error. wait: until it has. event_free: release it. */
  int (*record)(ab__worker *w, void **event);
  int (*poll)(ab__worker *w, void *event);
  int (*wait)(ab__worker *w, void *event);
  void (*event_free)(void *event);
  int (*upload)(ab__worker *w, void *dst, size_t dst_off, const void *host, size_t bytes);
  int (*download)(ab__worker *w, void *host, const void *src, size_t src_off, size_t bytes);
  int (*copy)(ab__worker *w, void *dst, size_t dst_off, const void *src, size_t src_off, size_t bytes);
  /* src (any strides, on this device) into dst (contiguous, this device) as dtype dt. */
  int (*cast)(ab__worker *w, const DLTensor *src, void *dst, size_t dst_off, DLDataType dt,
              const ab__cast_params *p);
  /* Host access to [off, off + bytes) of device memory for writing (its old contents are not
   * kept): *host points at it until unmap, which makes the writes visible on the device. On a
   * CPU device it is the memory itself; on a discrete GPU the driver stages it. NULL ops: the
   * backend has no mapping, use upload. */
  int (*map_write)(ab__worker *w, void *base, size_t off, size_t bytes, void **host);
  int (*unmap)(ab__worker *w, void *base, void *host);
  /* n contiguous slices of slice_bytes each, on this device at (bases[i], offs[i]), into dst
   * at dst_off one after another: one kernel for many slices rather than n copies. */
  int (*gather)(ab__worker *w, void *dst, size_t dst_off, size_t slice_bytes, int n, void *const *bases,
                const size_t *offs);
  /* The smallest and largest finite value of a float tensor (NaN and infinities are not
   * counted: they must not stretch the range); *found false if there is none. */
  int (*minmax)(ab__worker *w, const DLTensor *src, double *lo, double *hi, bool *found);

  /* Direct copies between two devices of this backend, with no host memory on the way (the
   * same physical GPU, or peers). can_peer: whether copy_from works from s's memory to d's.
   * copy_from: enqueued on w's stream (w is d's worker), like copy. NULL: host staging only. */
  bool (*can_peer)(ab__device *d, ab__device *s);
  int (*copy_from)(ab__worker *w, void *dst, size_t dst_off, ab__device *s, const void *src, size_t src_off,
                   size_t bytes);
  /* Page-locked (pinned) host memory for ab_tensor_alloc_pinned, made by a GPU backend's driver
   * so that its copies run at full speed; not the host backend's own memory, which is its
   * alloc (any thread). NULL: none. */
  int (*pinned_alloc)(ab__device *d, size_t bytes, void **ptr);
  void (*pinned_free)(ab__device *d, void *ptr);

  /* map_write's pipeline: 0, map the whole range at once; else map at most map_chunk bytes at
   * a time, and unmap returns as soon as the piece is on its way (a discrete GPU's DMA), so the
   * caller fills the next piece while the last one travels. map_write may then also return
   * AB_ENOTSUP (no staging memory): upload instead. */
  size_t map_chunk;
  /* free, for memory that code outside the runtime had (a DLPack consumer such as torch): the
   * memory must not be reused before the work that code enqueued on the device is done, which
   * the runtime cannot see (any thread). NULL: free. */
  void (*free_shared)(ab__device *d, void *ptr, size_t bytes);
};

#define AB__GATHER_MAX 8 /* slices per gather call */

/* registry.c: the backends compiled in, indexed by ab_kind (NULL: not built). */
extern const ab__device_ops *const ab__backends[AB_KIND_COUNT];

#endif
