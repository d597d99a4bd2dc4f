#!/usr/bin/env bash
# scripts/test.sh [STEP...]: every test, the way CI runs them. Steps, in order:
#
#   plain     build/test   RelWithDebInfo, gcc; ctest (all labels); benchmarks built, not run;
#                          the CUDA backend built (AB_WITH_CUDA=AUTO: when nvcc is there), so CI
#                          always compiles it; its tests skip without a GPU but one
#   symbols   the shared library of build/test exports only ab_* symbols
#   consumer  cmake --install build/test --prefix build/prefix, then scripts/consumer built
#             against it through find_package (shared, static) and pkg-config, and run; one
#             version everywhere; the arraybridge command and its man page installed
#   cleanroom the same install and consumer with the CUDA toolkit and the dlpack, OpenCL, ck
#             and jemalloc development files hidden (scripts/without.sh, root): only a C
#             compiler, CMake and pkg-config are left
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
#   pip       the Python package as users get it: an sdist, a wheel built by pip from it alone
#             (isolated, scikit-build-core, out of the tree), repaired by auditwheel (libck
#             bundled), installed into a fresh venv and used by a plain interpreter with no
#             environment variables where libck, dlpack and the CUDA toolkit are hidden; one
#             version in version.h, the metadata and the library; `pip wheel .` leaves the tree
#             as it was. Tools in build/pip-tools (python/requirements-build.txt)
#   pyasan    build/pyasan the extension built with ASan+UBSan, libasan preloaded, PYTHONMALLOC=malloc
#             (so ASan sees Python's allocations too): the executor, runtime and DLPack tests
#   pytsan    build/pytsan the extension built with -fsanitize=thread, loaded into the venv's
#             (uninstrumented) interpreter with libtsan preloaded; the executor, runtime and
#             DLPack tests. TSan sees the GIL's mutexes through its interceptors, so the Python
#             task batching, cancels and settling are checked like the C code
#
# No argument runs them all. Every step runs even when an earlier one failed (symbols, consumer
# and cleanroom use build/test, so they fail too when it did not build); the exit status is
# non-zero if any step failed, and the last line is the summary. Each step's log goes to
# build/logs/<step>.log too.
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
ALL_STEPS=(plain symbols consumer cleanroom gpu asan tsan fuzz python pip pyasan pytsan)
VENV="${AB_VENV:-$ROOT/.venv}"

mkdir -p "$B/logs" "$B/pocl-cache"

# Shared by every tree, for whatever does not set its own (tests/opencl.cmake gives each tree a
# kernel cache of its own, and detect_leaks=0 under ASan: when pocl compiles a kernel that is not
# cached yet, LeakSanitizer reports pocl's and LLVM's leaks or crashes in its tracer).
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
  rm -rf "$B/prefix"
  cmake --install "$B/test" --prefix "$B/prefix"
  "$ROOT/scripts/consumer/check.sh" "$B/prefix" "$B/consumer"
}

# What a machine without the CUDA toolkit and without development packages sees: the install of
# build/test (built with CUDA where nvcc is) used by a consumer with the toolkit, the dlpack,
# OpenCL, ck and jemalloc development files and libjemalloc.so hidden (scripts/without.sh). Only
# a C compiler, CMake and pkg-config remain; the shared library must do (cudart and jemalloc are
# inside it), and find_package must not fail.
step_cleanroom() {
  local prefix="$B/cleanroom/prefix"
  rm -rf "$B/cleanroom"
  cmake --install "$B/test" --prefix "$prefix" >/dev/null
  local hide=(-p libdlpack-dev -p libck-dev -p libjemalloc-dev -p libjemalloc2 -p ocl-icd-opencl-dev -p opencl-c-headers)
  hide+=($(cuda_toolkit_paths))
  echo "hidden: ${hide[*]}"
  AB_EXPECT_STATIC=no "$ROOT/scripts/without.sh" "${hide[@]}" -- bash -c '
    for p in /usr/include/dlpack/dlpack.h /usr/include/CL/cl.h /usr/include/ck_ring.h; do
      [[ ! -e $p ]] || { echo "FAIL: $p is not hidden"; exit 1; }
    done
    ! command -v nvcc >/dev/null || { echo "FAIL: nvcc is not hidden"; exit 1; }
    exec "$0" "$@"' "$ROOT/scripts/consumer/check.sh" "$prefix" "$B/cleanroom/consumer"
}

# The CUDA toolkit's folders, and the wrappers on PATH that run its programs.
cuda_toolkit_paths() {
  local p
  for p in /usr/local/cuda /usr/local/cuda-* /opt/cuda; do
    [[ -e $p ]] && echo "$p"
  done
  find /usr/local/bin /usr/bin -maxdepth 1 -type f -size -4k -exec grep -lI 'cuda[^ ]*/bin/' {} + 2>/dev/null || true
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

# pip_tools DIR: a venv with python/requirements-build.txt, reinstalled only when that changes.
pip_tools() {
  local dir=$1 reqs="$ROOT/python/requirements-build.txt"
  [[ -x $dir/bin/python ]] || python3 -m venv "$dir" || return 1
  cmp -s "$reqs" "$dir/.ab-requirements" && return 0
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$reqs" && cp "$reqs" "$dir/.ab-requirements"
}

# The libck the loader would find: every libck.so* in its cache, and what each links to.
libck_paths() {
  local f
  for f in $(ldconfig -p | awk '$1 ~ /^libck\.so/ { print $NF }'); do
    echo "$f"
    readlink -f "$f"
  done | sort -u
}

step_pip() {
  local tools="$B/pip-tools" dist="$B/dist" venv="$B/pip-venv"
  pip_tools "$tools" || return 1
  rm -rf "$dist" "$venv"
  # 1. The sdist, then a wheel from it alone (pip's isolated build: scikit-build-core from PyPI,
  #    CMake out of the source tree): the sdist carries all the wheel needs.
  "$tools/bin/python" -m build --sdist --outdir "$dist" "$ROOT"
  "$tools/bin/pip" wheel -v --no-deps --no-cache-dir --disable-pip-version-check -w "$dist/raw" "$dist"/arraybridge-*.tar.gz
  # 2. Repaired: libck is bundled (arraybridge.libs), the OpenCL ICD loader stays the system's,
  #    since it reads the system's vendor files (/etc/OpenCL/vendors).
  PATH="$tools/bin:$PATH" "$tools/bin/auditwheel" repair --exclude libOpenCL.so.1 -w "$dist" "$dist"/raw/*.whl
  local whl files rc=0
  whl=$(ls "$dist"/arraybridge-*-manylinux*.whl)
  files=$(unzip -Z1 "$whl")
  grep -q '^arraybridge\.libs/libck' <<<"$files" || { echo "FAIL: libck is not bundled in $whl"; rc=1; }
  ! grep -q '^arraybridge\.libs/libOpenCL' <<<"$files" || { echo "FAIL: $whl bundles an OpenCL loader"; rc=1; }
  grep -q '^arraybridge/py\.typed$' <<<"$files" || { echo "FAIL: no arraybridge/py.typed in $whl"; rc=1; }
  # 3. Installed into a fresh venv, used by a plain interpreter (no PYTHONPATH, LD_PRELOAD or
  #    GLIBC_TUNABLES, outside the source tree) on a machine without libck (library and
  #    development files), dlpack or the CUDA toolkit.
  python3 -m venv "$venv" || return 1
  "$venv/bin/pip" install -q --disable-pip-version-check "$whl" || return 1
  local version
  version=$(awk '/^#define AB_VERSION_(MAJOR|MINOR|PATCH) / { v = v (v == "" ? "" : ".") $3 } END { print v }' \
    "$ROOT/include/arraybridge/version.h")
  (cd / && "$ROOT/scripts/without.sh" -p libck-dev -p libdlpack-dev $(libck_paths) $(cuda_toolkit_paths) -- \
    env -i PATH=/usr/bin:/bin HOME="$HOME" AB_VERSION="$version" "$venv/bin/python" -c '
import importlib.metadata, os, numpy as np, arraybridge as ab
print("arraybridge", ab.__version__, "from", ab.__file__)
assert not os.path.exists("/usr/include/ck_ring.h") and not os.path.exists("/usr/local/cuda"), "not hidden"
# One version: version.h, the package metadata, the C library inside the extension.
assert ab.__version__ == importlib.metadata.version("arraybridge") == os.environ["AB_VERSION"], ab.__version__
libck = {l.split()[-1] for l in open("/proc/self/maps") if "libck" in l}
assert libck and all("/arraybridge.libs/" in p for p in libck), libck
v = ab.stack_slices([np.full((4, 4), i, np.uint16) for i in range(3)], "numpy")
assert v.shape == (3, 4, 4) and v[2].max() == 2
with ab.Executor(2, devices="host") as ex:
    assert ex.submit(sum, [1, 2, 3]).result() == 6
print("ok: libck from", *libck)') || rc=1
  # 4. pip wheel from the source tree builds outside it: nothing new appears but under build/.
  local before after
  before=$(git -C "$ROOT" status --porcelain --ignored | grep -v ' build/$' || true)
  "$tools/bin/pip" wheel -q --no-deps --no-cache-dir --disable-pip-version-check -w "$dist/tree" "$ROOT" || rc=1
  after=$(git -C "$ROOT" status --porcelain --ignored | grep -v ' build/$' || true)
  [[ $before == "$after" ]] || { echo "FAIL: pip wheel . changed the source tree:"; diff <(echo "$before") <(echo "$after"); rc=1; }
  # 5. A missing system library stops the build with one line naming its Debian package.
  local pkg out
  for pkg in libck-dev libdlpack-dev; do
    rm -rf "$B/pip-missing"
    out=$("$ROOT/scripts/without.sh" -p $pkg -- cmake -S "$ROOT" -B "$B/pip-missing" -DAB_WITH_CUDA=OFF 2>&1) &&
      { echo "FAIL: configured without $pkg"; rc=1; }
    grep -E "^  arraybridge: .*apt-get install $pkg\$" <<<"$out" ||
      { echo "FAIL: without $pkg, CMake does not say 'apt-get install $pkg' on one line:"; echo "$out" | tail; rc=1; }
  done
  rm -rf "$B/pip-missing"
  return $rc
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
