# The `arraybridge` command (label `cli`): tests/cli_test.sh CASE, one CTest entry per case.
# Three pocl devices, as for the OpenCL tests (opencl.cmake is read after this file).
if(TARGET arraybridge_cli)
  set(_ab_cli_env
    "POCL_DEVICES=pthread pthread pthread"
    "POCL_MAX_PTHREAD_COUNT=1"
    "POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache"
    "ASAN_OPTIONS=detect_leaks=0")
  set(_ab_cli_opencl 0)
  if(AB_HAVE_OPENCL)
    set(_ab_cli_opencl 1)
  endif()
  foreach(_c devices command_line screen_small same_everywhere layouts big_plates bounded_memory bad_inputs
                blank_fields memory_limit resume outputs trace)
    add_test(NAME cli_${_c}
             COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli_test.sh ${_c} $<TARGET_FILE:arraybridge_cli> ${_ab_cli_opencl})
    set_tests_properties(cli_${_c} PROPERTIES LABELS cli TIMEOUT 300 SKIP_RETURN_CODE 77 ENVIRONMENT "${_ab_cli_env}")
  endforeach()
endif()

# The job's labelling and measuring (cli/identify.c) against a pixel-by-pixel flood.
ab_add_test(test_identify LABELS cli SOURCES test_identify.c ${PROJECT_SOURCE_DIR}/cli/identify.c TIMEOUT 120)
target_link_libraries(test_identify PRIVATE m)
