# CUDA tests (label `cuda`). test_cuda_nodriver runs everywhere: without a driver or GPU the
# runtime must show zero CUDA devices. Every other test skips (exit 77) when the runtime has
# fewer CUDA devices than it needs, so here they only prove that they build; on a GPU machine
# scripts/gpu-check.sh runs them (and compute-sanitizer over them).
foreach(_t nodriver convert stack oom)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/test_cuda_${_t}.c)
    ab_add_test(test_cuda_${_t} LABELS cuda SOURCES test_cuda_${_t}.c TIMEOUT 300)
    target_link_libraries(test_cuda_${_t} PRIVATE m)
  endif()
endforeach()

# The CUDA screening steps' per-pixel code and tiling (cli/steps_pixel.h) on the host against
# the host steps (cli/steps_host.c, with the filter weights of cli/pipeline.c): plain C, so it
# runs in every tree, with or without nvcc.
ab_add_test(test_cuda_screen_logic LABELS cuda SOURCES test_cuda_screen_logic.c ${PROJECT_SOURCE_DIR}/cli/steps_host.c
  ${PROJECT_SOURCE_DIR}/cli/pipeline.c TIMEOUT 120)
target_link_libraries(test_cuda_screen_logic PRIVATE m)

# The kernels' per-element logic (devices/cuda/sat.cuh) on the host against the host kernels:
# runs without a GPU, in trees that have nvcc. nvcc builds the reference with the kernels' flags.
if(AB_HAVE_CUDA)
  # How a failed CUDA call is reported (its name, the code, the last-error slot): real failing
  # calls, no GPU needed.
  ab_add_test(test_cuda_errors LABELS cuda SOURCES test_cuda_errors.c TIMEOUT 60)
  # The backend next to CUDA code of its own (what torch and CuPy do): skips without a GPU.
  ab_add_test(test_cuda_interop LABELS cuda SOURCES test_cuda_interop.c TIMEOUT 300)
  ab_add_test(test_cuda_kernel_logic LABELS cuda SOURCES test_cuda_kernel_logic.c cuda_sat_ref.cu TIMEOUT 120)
  set_target_properties(test_cuda_kernel_logic PROPERTIES CUDA_ARCHITECTURES OFF CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON)
  target_compile_options(test_cuda_kernel_logic PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:--fmad=false>")
  target_link_libraries(test_cuda_kernel_logic PRIVATE m)
endif()
