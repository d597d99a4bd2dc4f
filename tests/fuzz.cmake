# libFuzzer targets (clang only). Configure the whole tree with the same sanitizers, e.g.
#   CC=clang cmake -S . -B build-fuzz -DAB_SANITIZE=address -DAB_BUILD_FUZZ=ON
# fuzz_dlpack_short (label unit) runs the DLPack fuzzer for 20000 inputs.
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
endif()
