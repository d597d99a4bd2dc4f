#!/usr/bin/env bash
# scripts/gpu-check.sh: the GPU check, built here and run on a GPU machine in one command.
#
# Here (x86-64 with nvcc; no GPU needed), from anywhere in the repository:
#
#   scripts/gpu-check.sh
#
# builds everything the check runs for sm_90 (H100, H200) only, packs it into .gpu/ (ignored by
# git, at most 64 MiB) and dry-runs it: without a GPU every GPU step must say SKIP and nothing
# may fail to load. Then, on the GPU machine, from the repository root with .gpu/ beside it:
#
#   DEADLINE=420 bash .gpu/run.sh        (scripts/gpu-run.sh: the steps and the files it writes)
#
# What .gpu/ holds (everything finds its libraries through RPATH $ORIGIN, no LD_LIBRARY_PATH):
#   build/tests/     the CUDA test programs (RelWithDebInfo: the runtime's checks on)
#   build/bench/     bench_cuda, build/cli/ the arraybridge command (Release, as bench/run builds)
#   build/python/    the arraybridge package with _core built for CPython 3.12 (the GPU machine's)
#   build/lib/       libarraybridge and what the programs need beyond glibc and libstdc++:
#                    libck, libjemalloc, libOpenCL, libtiff and its codecs
#   probe, run.sh, COMMIT (the commit the binaries were built from)
#
# Environment: AB_JOBS (default: the number of cores), AB_GPU_ARCH (CUDA architectures, default
# 90-real), AB_GPU_PYTHON (a python3.12 with its headers; default pyenv's 3.12, then python3.12
# on PATH), AB_GPU_DRY_PYTHON (the interpreter of the dry run; default: a virtual environment
# of that Python 3.12 with numpy and pytest, build/gpu-dry-venv, made once from PyPI).
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$ROOT"
JOBS="${AB_JOBS:-$(nproc 2>/dev/null || echo 2)}"
ARCH="${AB_GPU_ARCH:-90-real}"
G="$ROOT/.gpu"
export PATH="$PATH:/usr/local/cuda/bin"
log() { printf '\n== gpu-check.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

PY312="${AB_GPU_PYTHON:-}"
if [[ -z $PY312 ]]; then
  # (a pyenv shim refuses to run a version that is not selected: the interpreter's own path)
  PY312=$(ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1 || true)
  [[ -n $PY312 ]] || PY312=$(command -v python3.12 || true)
fi
[[ -n $PY312 ]] && "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null ||
  die "no Python 3.12 here (the GPU machine's version): set AB_GPU_PYTHON to a python3.12 with headers"
command -v nvcc >/dev/null || die "no nvcc: the GPU check is built here with the CUDA toolkit"

# Every tree: sm_90 only (the default six architectures would not fit the 64 MiB), and RPATH
# $ORIGIN-relative in the old form (DT_RPATH), which also serves libtiff's own dependencies.
RPATH_LINK="-Wl,--disable-new-dtags"
common=(-DAB_WITH_CUDA=ON -DAB_CUDA_ARCHITECTURES="$ARCH" -DAB_SANITIZE= -DAB_BUILD_FUZZ=OFF
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON -DCMAKE_EXE_LINKER_FLAGS="$RPATH_LINK"
  -DCMAKE_SHARED_LINKER_FLAGS="$RPATH_LINK" -DCMAKE_MODULE_LINKER_FLAGS="$RPATH_LINK")

log "tests (build/gpu-tests, RelWithDebInfo, $ARCH)"
cmake -S "$ROOT" -B build/gpu-tests "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DAB_BUILD_TESTS=ON \
  -DAB_BUILD_BENCH=OFF -DAB_BUILD_CLI=OFF -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib' >/dev/null
tests=(test_cuda_nodriver test_cuda_errors test_cuda_kernel_logic test_cuda_screen_logic test_cuda_interop
  test_cuda_convert test_cuda_stack test_cuda_oom)
cmake --build build/gpu-tests -j "$JOBS" --target "${tests[@]}"

log "benchmarks and the command (build/gpu-release, Release, $ARCH)"
cmake -S "$ROOT" -B build/gpu-release "${common[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS_RELEASE="-O2 -DNDEBUG" -DAB_BUILD_TESTS=OFF -DAB_BUILD_BENCH=ON -DAB_BUILD_CLI=ON \
  -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib' >/dev/null
cmake --build build/gpu-release -j "$JOBS" --target bench_cuda arraybridge_cli
[[ -x build/gpu-release/cli/arraybridge ]] || die "the arraybridge command was not built (libtiff-dev missing?)"

log "the Python extension for $("$PY312" -c 'import sys; print(sys.version.split()[0])') (build/gpu-python)"
cmake -S "$ROOT" -B build/gpu-python "${common[@]}" -DCMAKE_BUILD_TYPE=Release -DAB_WITH_JEMALLOC=OFF \
  -DAB_WITH_OPENCL=OFF -DAB_BUILD_PYTHON=ON -DAB_BUILD_TESTS=OFF -DAB_BUILD_BENCH=OFF -DAB_BUILD_CLI=OFF \
  -DPython3_EXECUTABLE="$PY312" -DCMAKE_INSTALL_RPATH='$ORIGIN/../../lib' >/dev/null
cmake --build build/gpu-python -j "$JOBS" --target ab_python

log "probe"
mkdir -p build/gpu-probe
nvcc -O2 -arch=sm_90 -o build/gpu-probe/probe scripts/gpu-probe.cu

log "packing $G"
rm -rf "$G"
mkdir -p "$G/build/tests" "$G/build/bench/CMakeFiles/bench_cuda.dir" "$G/build/cli" "$G/build/lib" "$G/build/python"
for t in "${tests[@]}"; do cp "build/gpu-tests/tests/$t" "$G/build/tests/"; done
cp build/gpu-release/bench/bench_cuda "$G/build/bench/"
cp build/gpu-release/cli/arraybridge "$G/build/cli/"
cp -L build/gpu-release/libarraybridge.so.0 "$G/build/lib/"
cp -r build/gpu-python/python/arraybridge "$G/build/python/"
find "$G/build/python" -name __pycache__ -prune -exec rm -rf {} +
cp build/gpu-probe/probe "$G/probe"
cp scripts/gpu-run.sh "$G/run.sh"
{ git rev-parse --short HEAD 2>/dev/null || echo unknown; } | tr -d '\n' >"$G/COMMIT"
git diff --quiet HEAD 2>/dev/null || echo -n "+changes" >>"$G/COMMIT"
# The libraries the programs load, beyond what every Linux has (glibc, libgcc, libstdc++, zlib):
# the ones ldd resolves here (the programs' own RPATH folder is still empty).
mapfile -t elves < <(find "$G/build" "$G/probe" -type f \( -perm -u+x -o -name '*.so*' \))
for e in "${elves[@]}"; do ldd "$e" 2>/dev/null; done | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u |
  while read -r soname path; do
    case $soname in
      libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | ld-linux* | libgcc_s.so.* | \
        libstdc++.so.* | libz.so.* | libarraybridge.so.*) ;;
      *) cp -L "$path" "$G/build/lib/$soname" ;;
    esac
  done
find "$G" -type f \( -name '*.so*' -o -perm -u+x \) ! -name '*.sh' ! -name '*.py' -exec strip --strip-debug {} + 2>/dev/null || true
glibc=$(for e in "$G"/build/*/* "$G"/build/lib/*; do objdump -T "$e" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
size=$(du -sb "$G" | cut -f1)
log ".gpu: $((size / 1048576)) MiB, needs $glibc at most; libraries: $(ls "$G/build/lib" | tr '\n' ' ')"
((size < 64 * 1048576)) || die ".gpu is $((size / 1048576)) MiB: over the 64 MiB a device call carries"

# The dry run's Python: a 3.12 virtual environment with numpy and pytest (made once), so that
# the package imports and test_gpu.py collects and skips as it would there; without PyPI, the
# bare interpreter (the extension must still load).
dry_py="${AB_GPU_DRY_PYTHON:-}"
if [[ -z $dry_py ]]; then
  dry_py=$PY312
  venv=build/gpu-dry-venv
  if [[ -x $venv/bin/python ]] || { "$PY312" -m venv "$venv" && "$venv/bin/pip" install -q \
    --disable-pip-version-check numpy pytest; } >/dev/null 2>&1; then
    dry_py=$venv/bin/python
  else
    log "no numpy and pytest for the dry run's Python 3.12 (no PyPI?): the extension is only loaded"
  fi
fi
log "dry run (no GPU here: every GPU step must skip, nothing may fail to load)"
out=$(mktemp -d "${TMPDIR:-/tmp}/ab-gpu-dry.XXXXXX")
rc=0
OUT="$out" DEADLINE=300 AB_GPU_PYTHON="$dry_py" bash "$G/run.sh" >"$out/stdout" 2>&1 || rc=$?
cat "$out/summary.txt" 2>/dev/null || cat "$out/stdout"
if ((rc != 0)); then
  for f in "$out"/*.log; do echo "----- $f"; tail -30 "$f"; done
  die "the dry run failed (exit $rc): see above"
fi
rm -rf "$out"
log "ready: on the GPU machine run  DEADLINE=420 bash .gpu/run.sh  (device tool:" \
  'run(command="DEADLINE=420 bash .gpu/run.sh", carry=[".gpu"], timeout_s=480))'
