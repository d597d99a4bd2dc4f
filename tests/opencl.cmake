# OpenCL tests (label `opencl`): pocl CPU devices, three of them, one thread each. Every test
# skips (exit 77) when the runtime shows no OpenCL device. ASan: detect_leaks=0 because pocl and
# LLVM leak when they compile a kernel that is not in the cache yet: LeakSanitizer then reports
# about 1.4 MB of their leaks or dies in its own tracer (signal 11), which no suppressions file
# prevents. Once kernels are cached, pocl's buffer and queue work is clean under ASan.
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/pocl-cache)
set(AB_OPENCL_TEST_ENV
  "POCL_DEVICES=pthread pthread pthread"
  "POCL_MAX_PTHREAD_COUNT=1"
  "POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache"
  "ASAN_OPTIONS=detect_leaks=0")

foreach(_t convert stack sched oom fault)
  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/test_opencl_${_t}.c)
    ab_add_test(test_opencl_${_t} LABELS opencl SOURCES test_opencl_${_t}.c TIMEOUT 180
      ENV ${AB_OPENCL_TEST_ENV})
    if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
      target_link_libraries(test_opencl_${_t} PRIVATE m)
    endif()
  endif()
endforeach()

# The same fault test file, one test of it, on two-threaded pocl devices: a cast kernel still
# running on a transfer queue after a failed download is only visible when the device runs
# commands from two queues at once (with one thread it always finishes first). A deliberate
# exception to POCL_MAX_PTHREAD_COUNT=1; short (about 2 s).
if(TARGET test_opencl_fault)
  add_test(NAME test_opencl_fault_mt COMMAND test_opencl_fault failed_download_scratch_reuse)
  set_tests_properties(test_opencl_fault_mt PROPERTIES LABELS opencl TIMEOUT 180 SKIP_RETURN_CODE 77
    ENVIRONMENT "POCL_DEVICES=pthread pthread pthread;POCL_MAX_PTHREAD_COUNT=2;POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache;ASAN_OPTIONS=detect_leaks=0")
endif()
