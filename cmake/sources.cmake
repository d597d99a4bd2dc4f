# The library's sources, by layer. Backends register in devices/registry.c.
set(AB_SOURCES
  platform/platform.c
  runtime/errors.c
  runtime/pool.c
  runtime/runtime.c
  runtime/placement.c
  runtime/future.c
  runtime/task.c
  runtime/worker.c
  runtime/ctx.c
  runtime/memory.c
  runtime/oom.c
  runtime/tensor.c
  runtime/dlpack.c
  runtime/convert.c
  runtime/stack.c
  runtime/fill.c
  runtime/trace.c
  queue/queue.c
  devices/registry.c
  devices/host/host.c
  devices/host/kernels.c
)

set(AB_OPENCL_SOURCES
  devices/opencl/opencl.c
  devices/opencl/source.c
)

set(AB_CUDA_SOURCES
  devices/cuda/cuda.c
  devices/cuda/kernels.cu
)
