# Stress tests: many threads, chains, cancels, destroy mid-flight. One executable, one CTest entry
# per test so each gets its own timeout. Under TSan set AB_TEST_SCALE=0.1.
set(_ab_stress_tests many_submitters chains random_cancels destroy_cancel_midflight try_and_block_race
  convert_after_cancel_race cancel_parked_race)
ab_add_test(test_stress LABELS stress SOURCES test_stress.c TIMEOUT 120 ENV AB_TEST_ONLY=many_submitters)
foreach(_t IN LISTS _ab_stress_tests)
  if(NOT _t STREQUAL "many_submitters")
    add_test(NAME test_stress_${_t} COMMAND test_stress ${_t})
    set_tests_properties(test_stress_${_t} PROPERTIES LABELS stress TIMEOUT 120 SKIP_RETURN_CODE 77)
  endif()
endforeach()
