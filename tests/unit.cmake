# Unit tests: one executable per area, each test in a forked child (see harness.h).
ab_add_test(test_errors LABELS unit SOURCES test_errors.c)
ab_add_test(test_tensor LABELS unit SOURCES test_tensor.c)
ab_add_test(test_future LABELS unit SOURCES test_future.c)
ab_add_test(test_submit LABELS unit SOURCES test_submit.c)
ab_add_test(test_convert LABELS unit SOURCES test_convert.c)
ab_add_test(test_stack LABELS unit SOURCES test_stack.c)
ab_add_test(test_runtime LABELS unit SOURCES test_runtime.c)
ab_add_test(test_placement LABELS unit SOURCES test_placement.c)
ab_add_test(test_oom LABELS unit SOURCES test_oom.c TIMEOUT 120)
ab_add_test(test_alloc_sweep LABELS unit SOURCES test_alloc_sweep.c TIMEOUT 240)
# The header's times: backoff schedule, OOM deadline, submit and wait timeouts (about 10 s).
ab_add_test(test_timing LABELS unit SOURCES test_timing.c TIMEOUT 120)
target_link_libraries(test_convert PRIVATE m) # the scalar reference uses trunc, ldexp, isnan
# Tracing: every trace written is parsed back with Python's json module (tests/trace_check.py).
# Its OpenCL test skips without OpenCL devices; the environment gives it pocl's three.
ab_add_test(test_trace LABELS unit SOURCES test_trace.c TIMEOUT 120 ENV ${AB_OPENCL_TEST_ENV})
target_compile_definitions(test_trace PRIVATE TRACE_CHECK_PY="${CMAKE_CURRENT_SOURCE_DIR}/trace_check.py")
target_link_libraries(test_trace PRIVATE m)
