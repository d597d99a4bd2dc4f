#!/usr/bin/env bash
# scripts/test.sh [STEP...]: every test, the way CI runs them. Steps, in order:
#
#   plain     build/test   RelWithDebInfo, gcc; ctest (all labels); benchmarks built, not run;
#                          the CUDA backend built (AB_WITH_CUDA=AUTO: when nvcc is there), so CI
#                          always compiles it; its tests skip without a GPU but one
#   symbols   the shared library of build/test exports only ab_* symbols
#   consumer  cmake --install build/test --prefix build/prefix, then scripts/consumer built
#             against it through find_package (shared, static) and pkg-config, and run
#   gpu       scripts/gpu-check.sh: the GPU check built for sm_90 and packed into .gpu/ (tests,
#             benchmarks, the command, the Python extension for CPython 3.12), then run here
#             dry: with no GPU every GPU step must skip, and everything must load (about a
#             minute of CPU; the first run also makes a Python 3.12 venv with numpy and pytest)
#   asan      build/asan   -DAB_SANITIZE=address (ASan+UBSan), ctest, then the benchmark
#             programs once at toy sizes (a smoke run: no time is checked)
#   tsan      build/tsan   -DAB_SANITIZE=thread, AB_TEST_SCALE=0.1, tests/tsan.supp
#   fuzz      build/fuzz   clang, -DAB_SANITIZE=address -DAB_BUILD_FUZZ=ON; ctest -R fuzz
#   python    build/python the extension (-DAB_WITH_JEMALLOC=OFF -DAB_BUILD_PYTHON=ON) against
#             .venv's interpreter; ctest -L python (pytest over python/tests, real frameworks)
#   pip       pip wheel ./python, installed into a fresh venv, imported by a plain interpreter
#             with no environment variables, and used once
#   pyasan    build/pyasan the extension built with ASan+UBSan, libasan preloaded, PYTHONMALLOC=malloc
#             (so ASan sees Python's allocations too): the executor, runtime and DLPack tests
#   pytsan    build/pytsan the extension built with -fsanitize=thread, loaded into the venv's
#             (uninstrumented) interpreter with libtsan preloaded; the executor, runtime and
#             DLPack tests. TSan sees the GIL's mutexes through its interceptors, so the Python
#             task batching, cancels and settling are checked like the C code
#
# No argument runs them all. Every step runs even when an earlier one failed (symbols and consumer
# use build/test, so they fail too when it did not build); the exit status is non-zero if any step
# failed, and the last line is the summary. Each step's log goes to build/logs/<step>.log too.
#
# Environment: AB_JOBS (default: the number of cores), AB_CMAKE_ARGS (extra -D flags for every
# tree), AB_CTEST_ARGS (extra ctest arguments, e.g. "-L unit").
#
# The sanitizer trees build without CUDA (AB_WITH_CUDA=OFF): with no GPU here the CUDA code can
# only take its zero-device path, which the plain tree already runs, while nvcc would add a
# minute of kernel builds to each tree. For a GPU machine, scripts/gpu-check.sh packs .gpu/.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$ROOT"
B="$ROOT/build"
JOBS="${AB_JOBS:-$(nproc 2>/dev/null || echo 2)}"
read -r -a EXTRA_CMAKE <<<"${AB_CMAKE_ARGS:-}"
read -r -a EXTRA_CTEST <<<"${AB_CTEST_ARGS:-}"
ALL_STEPS=(plain symbols consumer gpu asan tsan fuzz python pip pyasan pytsan)
VENV="${AB_VENV:-$ROOT/.venv}"

mkdir -p "$B/logs" "$B/pocl-cache"

# Shared by every tree, for whatever does not set its own (tests/opencl.cmake gives each tree a
# kernel cache of its own, and detect_leaks=0 under ASan: LeakSanitizer crashes inside a cold
# pocl kernel compile, ENVIRONMENT.md section 8).
export POCL_DEVICES="pthread pthread pthread" # three OpenCL CPU devices
export POCL_MAX_PTHREAD_COUNT=1               # one thread each on a 2-core machine
export POCL_CACHE_DIR="$B/pocl-cache"
export STARPU_NCPU=2 STARPU_SILENT=1 STARPU_NCUDA=0 STARPU_NOPENCL=0 STARPU_HOME="$B/starpu-home"
export CTEST_OUTPUT_ON_FAILURE=1

log() { printf '\n== test.sh: %s\n' "$*" >&2; }

# configure_build DIR CMAKE_ARGS...: configure and build one tree.
configure_build() {
  local dir=$1
  shift
  cmake -S "$ROOT" -B "$dir" "$@" "${EXTRA_CMAKE[@]}"
  cmake --build "$dir" -j "$JOBS"
}

# run_ctest DIR CTEST_ARGS...
run_ctest() {
  local dir=$1
  shift
  ctest --test-dir "$dir" --output-on-failure --no-tests=error -j "$JOBS" "$@" "${EXTRA_CTEST[@]}"
}

# ---------------------------------------------------------------------------------------------
# Steps

step_plain() {
  configure_build "$B/test" -DAB_WITH_CUDA=AUTO -DAB_SANITIZE= -DAB_BUILD_TESTS=ON -DAB_BUILD_BENCH=ON -DAB_BUILD_FUZZ=OFF
  run_ctest "$B/test"
}

# Only ab_* may be exported; the linker's own markers are allowed.
step_symbols() {
  local lib
  lib=$(readlink -f "$B/test/libarraybridge.so")
  [[ -f $lib ]] || { echo "no $B/test/libarraybridge.so (did 'plain' build?)"; return 1; }
  local syms bad internal
  syms=$(nm -D --defined-only "$lib" | awk '{ print $NF }')
  [[ -n $syms ]] || { echo "nm found no dynamic symbols in $lib"; return 1; }
  bad=$(grep -Ev '^(ab_|_init$|_fini$|_edata$|_end$|__bss_start$)' <<<"$syms" || true)
  internal=$(grep '^ab__' <<<"$syms" || true) # internal names must stay hidden too
  if [[ -n $bad || -n $internal ]]; then
    echo "libarraybridge.so exports symbols outside the public ab_* API:"
    printf '%s\n' $bad $internal
    return 1
  fi
  # And every function the header declares AB_API is there.
  local declared missing
  declared=$(grep -E '^AB_API' "$ROOT/include/arraybridge.h" | grep -oE '\bab_[a-z0-9_]+\(' | tr -d '(' | sort -u)
  missing=$(comm -23 <(echo "$declared") <(sort -u <<<"$syms"))
  if [[ -n $missing ]]; then
    echo "declared AB_API in arraybridge.h but not exported:"
    echo "$missing"
    return 1
  fi
  echo "libarraybridge.so: $(grep -c '^ab_' <<<"$syms") ab_* symbols, nothing else;" \
    "all $(grep -c . <<<"$declared") AB_API functions of arraybridge.h exported"
}

step_consumer() {
  local prefix="$B/prefix" cdir="$B/consumer"
  rm -rf "$prefix" "$cdir"
  cmake --install "$B/test" --prefix "$prefix"
  local pc
  pc=$(find "$prefix" -name arraybridge.pc -print -quit)
  [[ -n $pc ]] || { echo "no arraybridge.pc installed under $prefix"; return 1; }
  local pcdir rc=0
  pcdir=$(dirname "$pc")
  echo "--- installed $pc"
  cat "$pc"
  # The .pc must describe where it was installed, not the configure-time CMAKE_INSTALL_PREFIX.
  local includedir
  includedir=$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=includedir arraybridge)
  if [[ ! -f $includedir/arraybridge.h ]]; then
    echo "FAIL: arraybridge.pc installed with --prefix $prefix says includedir=$includedir," \
      "which has no arraybridge.h (the .pc is not relocated to the install prefix)"
    rc=1
  fi
  PKG_CONFIG_PATH="$pcdir${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
    cmake -S "$ROOT/scripts/consumer" -B "$cdir" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo
  local libdir
  libdir=$(dirname "$(find "$prefix" -name 'libarraybridge.so' -print -quit)")
  libdir=$(readlink -f "$libdir")
  prefix=$(readlink -f "$prefix")
  # Each consumer on its own, so that one broken path does not hide the others.
  local t
  for t in consumer_cxx_header consumer_cmake consumer_static consumer_pc; do
    if [[ ! -d $cdir/CMakeFiles/$t.dir ]]; then # the tree defines no such target
      [[ $t == consumer_static || $t == consumer_cxx_header ]] && continue # optional
      echo "FAIL: no target $t"
      rc=1
      continue
    fi
    echo "--- $t"
    if ! cmake --build "$cdir" --target "$t"; then
      echo "FAIL: $t does not build"
      rc=1
      continue
    fi
    [[ $t == consumer_cxx_header ]] && continue # compile-only
    if [[ $t != consumer_static ]]; then
      # It must load the installed copy, not the build tree's. (pkg-config gives -L and no rpath,
      # so the loader path names the prefix for every run.)
      local deps
      deps=$(LD_LIBRARY_PATH="$libdir" ldd "$cdir/$t" | grep arraybridge || true)
      echo "$deps"
      if [[ $deps != *"=> $prefix/"* ]]; then
        echo "FAIL: $t does not load libarraybridge from $prefix"
        rc=1
      fi
    fi
    if ! LD_LIBRARY_PATH="$libdir" "$cdir/$t"; then
      echo "FAIL: $t exited non-zero"
      rc=1
    fi
  done
  return $rc
}

step_gpu() { "$ROOT/scripts/gpu-check.sh"; }

step_asan() {
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  configure_build "$B/asan" -DAB_SANITIZE=address -DAB_WITH_CUDA=OFF -DAB_BUILD_TESTS=ON -DAB_BUILD_BENCH=ON -DAB_BUILD_FUZZ=OFF
  # Python tests load the library into an uninstrumented interpreter: not under sanitizers.
  local rc=0
  run_ctest "$B/asan" -LE python || rc=1
  # The benchmark programs, once, at toy sizes: they must run clean, however long they take.
  echo "--- benchmark smoke run (ASan)"
  # BENCH_QUEUE_CAPACITY=8: submitters block on a full queue, the path a default-sized run
  # takes only under load. timeout: a hang (lost wake-up) fails the step instead of CI.
  BENCH_TASKS=5000 BENCH_REPS=2 BENCH_RT_ITERS=200 BENCH_RT_REPS=1 BENCH_QUEUE_CAPACITY=8 \
    timeout -k 10 300 "$B/asan/bench/bench_task_overhead" || { echo "FAIL: bench_task_overhead (rc $?)"; rc=1; }
  BENCH_SLICES=16 BENCH_HEIGHT=64 BENCH_WIDTH=48 BENCH_REPS=2 \
    timeout -k 10 300 "$B/asan/bench/bench_host_stack" || { echo "FAIL: bench_host_stack (rc $?)"; rc=1; }
  return $rc
}

step_tsan() {
  export TSAN_OPTIONS="suppressions=$ROOT/tests/tsan.supp halt_on_error=1 second_deadlock_stack=1"
  export AB_TEST_SCALE=0.1 # stress tests scale their iteration counts down
  configure_build "$B/tsan" -DAB_SANITIZE=thread -DAB_WITH_CUDA=OFF -DAB_BUILD_TESTS=ON -DAB_BUILD_BENCH=OFF -DAB_BUILD_FUZZ=OFF
  run_ctest "$B/tsan" -LE python
}

step_fuzz() {
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  CC=clang configure_build "$B/fuzz" -DCMAKE_C_COMPILER=clang -DAB_SANITIZE=address -DAB_WITH_CUDA=OFF \
    -DAB_BUILD_FUZZ=ON -DAB_BUILD_BENCH=OFF -DAB_BUILD_TESTS=ON
  run_ctest "$B/fuzz" -R fuzz
}

need_venv() {
  [[ -x $VENV/bin/python ]] || { echo "no $VENV/bin/python: run scripts/setup.sh first"; return 1; }
}

step_python() {
  need_venv || return 1
  cmake -S "$ROOT" -B "$B/python" -DAB_SANITIZE= -DAB_WITH_JEMALLOC=OFF -DAB_BUILD_PYTHON=ON \
    -DAB_BUILD_TESTS=ON -DAB_BUILD_BENCH=OFF -DPython3_EXECUTABLE="$VENV/bin/python" "${EXTRA_CMAKE[@]}"
  cmake --build "$B/python" -j "$JOBS" --target ab_python
  run_ctest "$B/python" -L python
}

step_pip() {
  need_venv || return 1
  local wheels="$B/wheels" venv="$B/pip-venv"
  rm -rf "$wheels" "$venv"
  "$VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$wheels" "$ROOT/python" || return 1
  python3 -m venv "$venv" || return 1
  "$venv/bin/pip" install -q --disable-pip-version-check "$wheels"/arraybridge-*.whl || return 1
  # A plain interpreter, no PYTHONPATH, no LD_PRELOAD or GLIBC_TUNABLES, outside the source tree.
  (cd / && env -i PATH=/usr/bin:/bin HOME="$HOME" "$venv/bin/python" -c '
import numpy as np, arraybridge as ab
print("arraybridge", ab.__version__, "from", ab.__file__)
v = ab.stack_slices([np.full((4, 4), i, np.uint16) for i in range(3)], "numpy")
assert v.shape == (3, 4, 4) and v[2].max() == 2
with ab.Executor(2, devices="host") as ex:
    assert ex.submit(sum, [1, 2, 3]).result() == 6
print("ok")')
}

# sanitized_python SANITIZER BUILD: the extension built with -DAB_SANITIZE=SANITIZER into BUILD.
sanitized_python() {
  cmake -S "$ROOT" -B "$2" -DAB_SANITIZE="$1" -DAB_WITH_JEMALLOC=OFF -DAB_WITH_CUDA=OFF \
    -DAB_BUILD_PYTHON=ON -DAB_BUILD_TESTS=OFF -DAB_BUILD_BENCH=OFF -DAB_BUILD_CLI=OFF \
    -DPython3_EXECUTABLE="$VENV/bin/python" "${EXTRA_CMAKE[@]}" &&
    cmake --build "$2" -j "$JOBS" --target ab_python
}

# The tests the sanitizer steps run: the extension's own code paths, without TensorFlow and JAX
# (uninstrumented thread pools and allocators of their own, which the sanitizers misread).
PY_SANITIZED_TESTS=(python/tests/test_executor.py python/tests/test_runtime.py python/tests/test_dlpack.py
  -k "not imports_from_frameworks")

step_pyasan() {
  need_venv || return 1
  local asan
  asan=$(readlink -f "$(gcc -print-file-name=libasan.so)")
  [[ -f $asan ]] || { echo "no libasan for gcc"; return 1; }
  sanitized_python address "$B/pyasan" || return 1
  # detect_leaks=0: the interpreter keeps what it allocated until exit, by design
  (cd "$ROOT" && PYTHONMALLOC=malloc ASAN_OPTIONS="detect_leaks=0:abort_on_error=1" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" LD_PRELOAD="$asan" PYTHONPATH="$B/pyasan/python" \
    timeout -k 10 900 "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${PY_SANITIZED_TESTS[@]}")
}

step_pytsan() {
  need_venv || return 1
  local tsan
  tsan=$(gcc -print-file-name=libtsan.so)
  tsan=$(readlink -f "$tsan")
  [[ -f $tsan ]] || { echo "no libtsan for gcc"; return 1; }
  sanitized_python thread "$B/pytsan" || return 1
  # exitcode=66: any report fails the run even when every test passed
  (cd "$ROOT" && TSAN_OPTIONS="suppressions=$ROOT/tests/tsan.supp report_signal_unsafe=0 exitcode=66" \
    LD_PRELOAD="$tsan" PYTHONPATH="$B/pytsan/python" timeout -k 10 900 "$VENV/bin/python" -m pytest -q \
    -p no:cacheprovider "${PY_SANITIZED_TESTS[@]}")
}

# ---------------------------------------------------------------------------------------------

declare -A RESULT=() SECONDS_TAKEN=()
steps=("$@")
((${#steps[@]})) || steps=("${ALL_STEPS[@]}")
for s in "${steps[@]}"; do
  declare -F "step_$s" >/dev/null || { echo "test.sh: unknown step '$s' (steps: ${ALL_STEPS[*]})" >&2; exit 2; }
done

t_all=$SECONDS
for s in "${steps[@]}"; do
  log "$s"
  t0=$SECONDS
  # A subshell per step: its exports stay in it, and set -e inside stops only that step. (Not
  # inside an `if`: bash ignores set -e in a condition, subshells included.)
  set +e
  (
    set -euo pipefail
    "step_$s"
  ) 2>&1 | tee "$B/logs/$s.log"
  rc=${PIPESTATUS[0]}
  set -e
  if ((rc == 0)); then RESULT[$s]=PASS; else RESULT[$s]=FAIL; fi
  SECONDS_TAKEN[$s]=$((SECONDS - t0))
  log "$s: ${RESULT[$s]} (${SECONDS_TAKEN[$s]} s, log build/logs/$s.log)"
done

summary=()
failed=0
for s in "${steps[@]}"; do
  summary+=("$s=${RESULT[$s]}(${SECONDS_TAKEN[$s]}s)")
  [[ ${RESULT[$s]} == FAIL ]] && failed=$((failed + 1))
done
# Every ctest run's "N% tests passed, F tests failed out of T" lines, added up over the steps.
totals=$(for s in "${steps[@]}"; do cat "$B/logs/$s.log" 2>/dev/null; done |
  awk '/tests passed, [0-9]+ tests failed out of [0-9]+/ { f += $4; t += $NF }
       /tests passed out of [0-9]+/ { t += $NF }
       END { printf "%d passed, %d failed\n", t - f, f }')
if ((failed)); then
  echo "test.sh: FAILED ($failed of ${#steps[@]} steps) in $((SECONDS - t_all)) s: ${summary[*]}"
  echo "test.sh: $totals"
  exit 1
fi
echo "test.sh: ALL PASSED in $((SECONDS - t_all)) s: ${summary[*]}"
echo "test.sh: $totals"
