# libFuzzer targets (clang only). Configure the whole tree with the same sanitizers, e.g.
#   CC=clang cmake -S . -B build-fuzz -DAB_SANITIZE=address -DAB_BUILD_FUZZ=ON
# Short runs, label unit (scripts/test.sh fuzz runs them):
#   fuzz_dlpack_short       the DLPack import fuzzer, 20000 inputs
#   fuzz_view_short         views, conversions, stacks and unstacks on host devices, 20000 inputs
#   fuzz_view_opencl_short  the same onto pocl's OpenCL devices too, 3000 inputs; LeakSanitizer
#                           off, since pocl's kernel compiler leaks when the runtime starts
# A longer run: build/fuzz/tests/fuzz_view -max_total_time=600 CORPUS_DIR
if(AB_BUILD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "AB_BUILD_FUZZ needs clang (gcc has no -fsanitize=fuzzer)")
  endif()
  # Coverage feedback from inside the library, not just the target (fuzz builds only).
  target_compile_options(ab_objects PRIVATE -fsanitize=fuzzer-no-link)
  add_executable(fuzz_dlpack fuzz/fuzz_dlpack.c)
  target_compile_options(fuzz_dlpack PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_dlpack PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_dlpack PRIVATE arraybridge_static)
  add_test(NAME fuzz_dlpack_short
           COMMAND fuzz_dlpack -runs=20000 -seed=1 -max_len=512 -rss_limit_mb=2048)
  set_tests_properties(fuzz_dlpack_short PROPERTIES LABELS unit TIMEOUT 300)
  add_executable(fuzz_view fuzz/fuzz_view.c)
  target_compile_options(fuzz_view PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_options(fuzz_view PRIVATE -fsanitize=fuzzer,address,undefined)
  target_link_libraries(fuzz_view PRIVATE arraybridge_static m)
  add_test(NAME fuzz_view_short COMMAND fuzz_view -runs=20000 -seed=1 -max_len=256 -len_control=0 -rss_limit_mb=2048)
  set_tests_properties(fuzz_view_short PROPERTIES LABELS unit TIMEOUT 300)
  add_test(NAME fuzz_view_opencl_short COMMAND fuzz_view -runs=3000 -seed=2 -max_len=256 -len_control=0
           -rss_limit_mb=4096)
  file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/pocl-cache)
  set_tests_properties(fuzz_view_opencl_short PROPERTIES LABELS "unit;opencl" TIMEOUT 300
    ENVIRONMENT "AB_FUZZ_OPENCL=1;ASAN_OPTIONS=detect_leaks=0:abort_on_error=1;POCL_DEVICES=pthread pthread pthread;POCL_MAX_PTHREAD_COUNT=1;POCL_CACHE_DIR=${CMAKE_BINARY_DIR}/pocl-cache")
endif()
