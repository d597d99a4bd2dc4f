#!/usr/bin/env bash
# scripts/gpu-check.sh: the CUDA checks that need a GPU, for a machine that has one (CI and the
# development machines have none: there the CUDA tests skip). Steps:
#
#   build      build/gpu  RelWithDebInfo, -DAB_WITH_CUDA=ON (fails loudly without nvcc)
#   ctest      ctest -L cuda; every CUDA test must pass, none may skip (a skip means the
#              runtime saw no GPU)
#   sanitizer  compute-sanitizer memcheck and racecheck over each CUDA test, when it exists
#   bench      bench/run cuda_h2d cuda_d2h cuda_stack cuda_convert (JSON lines on stdout)
#   python     when $AB_VENV (default .venv) has torch with CUDA: the extension built with CUDA,
#              then pytest python/tests/test_gpu.py (torch CUDA, cupy if installed), skips shown
#
# Environment: AB_JOBS (default: the number of cores), AB_GPU_BUILD (default build/gpu),
# AB_CUDA_ARCHITECTURES (default: the build's own list; "native" is quicker on one machine).
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
cd "$ROOT"
B="${AB_GPU_BUILD:-$ROOT/build/gpu}"
JOBS="${AB_JOBS:-$(nproc 2>/dev/null || echo 2)}"
export PATH="$PATH:/usr/local/cuda/bin"
log() { printf '\n== gpu-check.sh: %s\n' "$*" >&2; }
failed=0

log "build ($B)"
arch=()
[[ -n ${AB_CUDA_ARCHITECTURES:-} ]] && arch=(-DAB_CUDA_ARCHITECTURES="$AB_CUDA_ARCHITECTURES")
cmake -S "$ROOT" -B "$B" -DAB_WITH_CUDA=ON -DAB_BUILD_TESTS=ON -DAB_BUILD_BENCH=ON "${arch[@]}"
cmake --build "$B" -j "$JOBS"

log "ctest -L cuda"
if ! ctest --test-dir "$B" -L cuda --output-on-failure --no-tests=error -j 1 | tee "$B/gpu-ctest.log"; then
  failed=1
fi
if grep -q "Not Run\|Skipped" "$B/gpu-ctest.log"; then
  echo "FAIL: CUDA tests skipped: the runtime sees no (or too few) CUDA devices"
  grep "Skipped" "$B/gpu-ctest.log" || true
  failed=1
fi

log "compute-sanitizer"
if command -v compute-sanitizer >/dev/null; then
  for t in "$B"/tests/test_cuda_*; do
    [[ -x $t ]] || continue
    for tool in memcheck racecheck; do
      echo "--- $tool $(basename "$t")"
      # In-process (no fork per test): the sanitizer follows one process. Errors exit non-zero.
      if ! AB_TEST_NOFORK=1 compute-sanitizer --tool "$tool" --error-exitcode 99 "$t"; then
        echo "FAIL: $tool $(basename "$t")"
        failed=1
      fi
    done
  done
else
  echo "compute-sanitizer not found: skipped"
fi

log "bench"
if ! bench/run cuda_h2d cuda_d2h cuda_stack cuda_convert; then failed=1; fi

VENV="${AB_VENV:-$ROOT/.venv}"
if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  log "python (GPU tests)"
  cmake -S "$ROOT" -B "$B-python" -DAB_WITH_JEMALLOC=OFF -DAB_BUILD_PYTHON=ON -DAB_WITH_CUDA=ON \
    -DAB_BUILD_TESTS=OFF -DAB_BUILD_BENCH=OFF -DPython3_EXECUTABLE="$VENV/bin/python" "${arch[@]}"
  cmake --build "$B-python" -j "$JOBS" --target ab_python
  PYTHONPATH="$B-python/python" "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider \
    "$ROOT/python/tests/test_gpu.py" || failed=1
else
  log "python: no venv with CUDA torch at $VENV: GPU tests of the Python package not run"
fi

if ((failed)); then
  log "FAILED"
  exit 1
fi
log "all passed"
