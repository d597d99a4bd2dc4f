/*
 * test_cuda_errors.c: how the CUDA backend reports a failed CUDA call, with real calls of the
 * CUDA runtime that fail on any machine (no GPU needed): the code it returns, the note that
 * becomes the task's ab_future_message (which call, where, the CUDA error's name), and the
 * thread's last-error slot left clear, so that the failure cannot be reported again by a later,
 * unrelated kernel launch (whose only report is cudaGetLastError).
 */
#include <cuda_runtime_api.h>
#include <string.h>

#include "harness.h"

/* devices/cuda/cuda.c and runtime/errors.c (internal: the static library shows them to tests) */
int ab__cu_check(int err, const char *call, int line);
const char *ab__device_error_peek(void);
void ab__device_error_clear(void);

/* A device that exists nowhere: without a driver error 35, without a GPU 100, else 101. */
static int test_failed_call_is_named(void) {
  cudaError_t e = cudaSetDevice(1 << 20);
  CHECK(e != cudaSuccess);
  CHECK_EQ_INT(ab__cu_check(e, "cudaSetDevice(1 << 20)", 123), AB_EDEVICE);
  char want[256];
  snprintf(want, sizeof want, "cudaSetDevice failed (devices/cuda/cuda.c:123): %s: %s", cudaGetErrorName(e),
           cudaGetErrorString(e));
  CHECK_MSG(strcmp(ab__device_error_peek(), want) == 0, "note '%s', want '%s'", ab__device_error_peek(), want);
  /* The slot is clear: a launch now would report only its own failure. (Without a driver or
   * a GPU every call, this one too, fails again at initialisation: nothing to see then.) */
  if (e != cudaErrorInsufficientDriver && e != cudaErrorNoDevice) CHECK_EQ_INT(cudaPeekAtLastError(), cudaSuccess);
  ab__device_error_clear();
  return 0;
}

/* Running out of device memory is AB_ENOMEM (the runtime's OOM ladder), still with a note. */
static int test_out_of_memory_is_enomem(void) {
  CHECK_EQ_INT(ab__cu_check(cudaErrorMemoryAllocation, "cudaMallocFromPoolAsync(ptr, bytes, pool, s)", 9), AB_ENOMEM);
  CHECK(strstr(ab__device_error_peek(), "cudaMallocFromPoolAsync failed (devices/cuda/cuda.c:9): "
                                        "cudaErrorMemoryAllocation") == ab__device_error_peek());
  CHECK_OK(ab__cu_check(cudaSuccess, "cudaStreamSynchronize(s)", 10));
  ab__device_error_clear();
  return 0;
}

static const ab_test_entry tests[] = {
    TEST_ENTRY(failed_call_is_named),
    TEST_ENTRY(out_of_memory_is_enomem),
    TEST_END,
};

AB_TEST_MAIN(tests)
