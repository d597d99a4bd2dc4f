// scripts/gpu-probe.cu: the CUDA runtime behaviours devices/cuda/cuda.c relies on, answered in
// seconds on a GPU machine (scripts/gpu-check.sh builds it; .gpu/run.sh runs it first):
//   notready   does cudaEventQuery's cudaErrorNotReady stay in the thread's last-error slot
//              (cu_poll and every kernel launcher clear it either way)
//   pool_oom   which error a pool allocation larger than the GPU gets (cuda.c maps
//              cudaErrorMemoryAllocation, and cudaErrorInvalidValue for such sizes, to AB_ENOMEM)
//   batch      whether cudaMemcpyBatchAsync takes device-to-device copies (cuda.c falls back to
//              one cudaMemcpyAsync per slice for the rest of the process when it does not)
//   pageable   whether the GPU reads pageable host memory itself (HMM or ATS)
// One line per answer, "probe NAME: ...". Exit 0 when there is a GPU, 77 when there is none.
#include <cstdint>
#include <cstdio>
#include <cuda_runtime.h>

__global__ void spin(long long cycles) {
  long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

static const char *name(cudaError_t e) { return cudaGetErrorName(e); }

int main() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    printf("probe: no GPU (%s)\n", name(cudaGetLastError()));
    return 77;
  }
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, 0);
  printf("probe device: %s, sm_%d%d, %d SMs, %zu bytes\n", p.name, p.major, p.minor, p.multiProcessorCount,
         p.totalGlobalMem);
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);

  cudaEvent_t ev;
  cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
  spin<<<1, 1, 0, s>>>(1000000000LL); /* about half a second */
  cudaEventRecord(ev, s);
  cudaError_t q = cudaEventQuery(ev);
  cudaError_t slot = cudaPeekAtLastError();
  cudaEventSynchronize(ev);
  cudaError_t after = cudaGetLastError();
  printf("probe notready: query %s, slot then %s, after a successful sync %s\n", name(q), name(slot), name(after));

  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = 0;
  cudaMemPool_t pool;
  cudaMemPoolCreate(&pool, &props);
  void *big = nullptr;
  cudaError_t a = cudaMallocFromPoolAsync(&big, p.totalGlobalMem + p.totalGlobalMem / 2, pool, s);
  printf("probe pool_oom: 1.5x the GPU's memory -> %s\n", name(a));
  cudaGetLastError();

  const size_t k = 4, slice = (size_t)2 << 20;
  char *src = nullptr, *dst = nullptr;
  cudaMallocFromPoolAsync((void **)&src, k * slice, pool, s);
  cudaMallocFromPoolAsync((void **)&dst, k * slice, pool, s);
  cudaMemsetAsync(src, 0x5a, k * slice, s);
  cudaMemsetAsync(dst, 0, k * slice, s);
  void *dsts[k];
  const void *srcs[k];
  size_t sizes[k], idx = 0;
  for (size_t i = 0; i < k; i++) {
    dsts[i] = dst + i * slice;
    srcs[i] = src + (k - 1 - i) * slice;
    sizes[i] = slice;
  }
  cudaMemcpyAttributes attr = {};
  attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  cudaError_t b = cudaMemcpyBatchAsync(dsts, srcs, sizes, k, &attr, &idx, 1, s);
  cudaGetLastError();
  unsigned char last = 0;
  cudaStreamSynchronize(s);
  cudaMemcpy(&last, dst + k * slice - 1, 1, cudaMemcpyDeviceToHost);
  printf("probe batch: 4 x 2 MiB device to device -> %s, last byte 0x%02x (0x5a when it copied)\n", name(b), last);
  cudaFreeAsync(src, s);
  cudaFreeAsync(dst, s);
  cudaStreamSynchronize(s);
  cudaMemPoolDestroy(pool);

  int pageable = 0, host_tables = 0;
  cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, 0);
  cudaDeviceGetAttribute(&host_tables, cudaDevAttrPageableMemoryAccessUsesHostPageTables, 0);
  printf("probe pageable: the GPU reads pageable memory %s (host page tables: %s)\n", pageable ? "yes" : "no",
         host_tables ? "yes" : "no");
  return 0;
}
