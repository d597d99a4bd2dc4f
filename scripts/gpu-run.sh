#!/usr/bin/env bash
# .gpu/run.sh: the GPU check, on the GPU machine, in one command that stops itself in time.
# scripts/gpu-check.sh builds everything it runs (sm_90) into .gpu/build and copies this file to
# .gpu/run.sh; nothing is built here, so no compiler, pkg-config or package registry is needed.
# From the repository root:
#
#   DEADLINE=420 bash .gpu/run.sh
#
# Steps, in order, each under a timeout of min(its cap, the time left before DEADLINE seconds):
#   env       nvidia-smi, compute-sanitizer, python3's torch and CuPy
#   probe     the CUDA runtime behaviours the backend relies on (scripts/gpu-probe.cu)
#   tests     every CUDA test program, each test in a child process (the harness's default);
#             a skipped test is a failure on a GPU machine (except those that need two GPUs
#             on a machine with one)
#   screen    `arraybridge screen` of a synthetic plate on the host, on --devices cuda and on
#             --devices all: every CSV's rows equal to the host's (sorted, as rows come in the
#             order images finish; the device column aside), every sidecar JSON complete and
#             with the host run's pipeline; then tests/cli_test.sh same_everywhere (each
#             device alone)
#   pytest    python/tests/test_gpu.py with this machine's python3 (torch, CuPy) and the carried
#             extension; a skip is a failure on a GPU machine
#   bench     bench/run cuda_h2d cuda_d2h cuda_stack cuda_convert screen_gpu, JSON lines
#   sanitize  compute-sanitizer memcheck and racecheck on chosen tests and a small screen
#             (--report-api-errors no: some tests fail allocations on purpose)
#
# Without a GPU (a dry run on a development machine) every GPU step must say SKIP and nothing
# may fail: that proves everything loads. At most 8 files go to $OUT (default .gpu/out):
# summary.txt, probe.log, tests.log, screen.log, pytest.log, bench.jsonl, bench.log,
# sanitizer.log. The last line of summary.txt (and of the output) is the verdict; the exit
# status is 0 when nothing failed.
#
# Environment: DEADLINE (seconds, default 420), OUT, AB_GPU_PYTHON (default python3).
set -u
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
G=$PWD/.gpu
B=$G/build
O=${OUT:-$G/out}
DEADLINE=${DEADLINE:-420}
PY=${AB_GPU_PYTHON:-python3}
mkdir -p "$O"
S=$O/summary.txt
: >"$S"
export PATH=$PATH:/usr/local/cuda/bin PYTHONUNBUFFERED=1
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
DRY=0
((GPUS > 0)) || DRY=1
FAILED=()

say() { echo "$*" | tee -a "$S"; }
left() { echo $((DEADLINE - SECONDS)); }
# what an exit status RC means, for a verdict
status() { case $1 in 124) echo "timed out: unverified" ;; 125) echo "no time left to run it" ;; *) echo "exit $1" ;; esac; }
# verdict NAME PASS|FAIL|SKIP DETAIL
verdict() {
  say "$1: $2${3:+ ($3)}"
  [[ $2 == FAIL ]] && FAILED+=("$1")
  return 0
}
# run_capped LOG CAP CMD...: appends CMD's output to LOG under a timeout of min(CAP, time left
# - 10); sets RC (124: timed out, 125: no time left to start it).
run_capped() {
  local log=$1 cap=$2
  shift 2
  local l
  l=$(left)
  if ((l < 20)); then
    echo "----- not run (${l}s left): $*" >>"$log"
    RC=125
    return
  fi
  ((cap > l - 10)) && cap=$((l - 10))
  echo "----- $* (cap ${cap}s)" >>"$log"
  RC=0
  timeout -k 5 "$cap" "$@" >>"$log" 2>&1 || RC=$?
}

# ---- env --------------------------------------------------------------------------------------
{
  echo "gpu-run: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(cat "$G/COMMIT" 2>/dev/null || echo '?'), deadline ${DEADLINE}s"
  if ((DRY)); then echo "mode: dry run (no GPU): every GPU step must skip"; else echo "mode: $GPUS GPU(s)"; fi
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -4
  else
    echo "nvidia-smi: not here"
  fi
  if command -v compute-sanitizer >/dev/null; then compute-sanitizer --version | tail -1; else echo "compute-sanitizer: not here"; fi
  "$PY" -c 'import sys; print("python", sys.version.split()[0])' 2>&1 | tail -1
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' 2>&1 | tail -1
  "$PY" -c 'import cupy; print("cupy", cupy.__version__)' 2>&1 | tail -1
  echo "cores $(nproc)"
} | tee -a "$S"

# ---- probe ------------------------------------------------------------------------------------
run_capped "$O/probe.log" 30 "$G/probe"
case $RC in
  0) verdict probe PASS "$(grep -c '^probe ' "$O/probe.log") answers" ;;
  77) verdict probe "$( ((DRY)) && echo SKIP || echo FAIL)" "no GPU" ;;
  *) verdict probe FAIL "exit $RC" ;;
esac
grep '^probe ' "$O/probe.log" >>"$S"

# ---- tests ------------------------------------------------------------------------------------
# Tests that need two GPUs skip on a machine with one: not a failure there.
two_gpu_tests='peer_matrix'
for t in "$B"/tests/test_cuda_*; do
  name=$(basename "$t")
  run_capped "$O/tests.log" 150 env AB_TEST_TIMEOUT=120 "$t"
  line=$(awk -v n="$name" '/^----- /{on = index($0, n) > 0} on && /^# [0-9]+ passed/' "$O/tests.log" | tail -1)
  skips=$(awk -v n="$name" '/^----- /{on = index($0, n) > 0} on && /# SKIP$/ {print $4}' "$O/tests.log" |
    grep -vxE "$( ((GPUS >= 2)) && echo '^$' || echo "$two_gpu_tests")" | tr '\n' ' ')
  if ((RC == 0 || RC == 77)) && [[ $line == *" 0 failed" ]]; then
    if [[ -z $skips ]]; then verdict "$name" PASS "${line#\# }"
    elif ((DRY)); then verdict "$name" SKIP "${line#\# }"
    else verdict "$name" FAIL "skipped on a GPU machine: $skips"
    fi
  else
    verdict "$name" FAIL "$(status $RC)${line:+, ${line#\# }}"
  fi
done

# ---- screen -----------------------------------------------------------------------------------
CLI=$B/cli/arraybridge
PLATE=(--wells 8 --sites 2 --z 8 --size 256x192 --seed 3)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
side() { python3 tests/cli_files.py json "$W/$1.json" "$2" 2>>"$O/screen.log"; } # a value of a run's sidecar
run_capped "$O/screen.log" 30 "$CLI" devices
ncuda=$(awk '$1 == "cuda" && $NF == "yes"' "$O/screen.log" | wc -l)
for d in host cuda all; do
  run_capped "$O/screen.log" 90 "$CLI" screen "${PLATE[@]}" --devices "$d" --out "$W/$d.csv" --quiet
  if [[ $d == cuda ]] && ((ncuda == 0)); then
    verdict "screen --devices cuda" "$( ((DRY)) && echo SKIP || echo FAIL)" "no CUDA device, exit $RC"
    continue
  fi
  if ((RC != 0)); then
    verdict "screen --devices $d" FAIL "$(status $RC)"
    continue
  fi
  # rows are written as images finish: compare them sorted, without the device column (the 4th)
  tail -n +2 "$W/$d.csv" | cut -d, -f1-3,5- | sort >"$W/$d.cut"
  ran_on=$(tail -n +2 "$W/$d.csv" | cut -d, -f4 | sed 's/:.*//' | sort | uniq -c | awk '{printf "%s%s x%s", s, $2, $1; s = ", "}')
  # the sidecar (FILE.json): the run completed, and the pipeline is the host run's, weights and all
  complete=$(side "$d" complete) pipeline=$(side "$d" pipeline) devices=$(side "$d" devices)
  echo "$d: complete $complete, devices $devices" >>"$O/screen.log"
  if [[ $complete != true ]]; then
    verdict "screen --devices $d" FAIL "the sidecar says complete: ${complete:-nothing}"
  elif [[ $d != host && $pipeline != "$(side host pipeline)" ]]; then
    verdict "screen --devices $d" FAIL "the sidecar's pipeline differs from the host run's"
  elif [[ $d != host ]] && ! cmp -s "$W/host.cut" "$W/$d.cut"; then
    diff "$W/host.cut" "$W/$d.cut" >>"$O/screen.log"
    verdict "screen --devices $d" FAIL "CSV differs from the host's"
  elif [[ $d == cuda && ($ran_on != cuda* || $ran_on == *,*) ]]; then
    verdict "screen --devices $d" FAIL "images ran on $ran_on"
  else
    verdict "screen --devices $d" PASS "$(($(wc -l <"$W/$d.csv") - 1)) images on $ran_on"
  fi
done
run_capped "$O/screen.log" 120 bash tests/cli_test.sh same_everywhere "$CLI" 1
if ((RC == 0)); then verdict "cli_test same_everywhere" PASS "$(grep -h '^identical on' "$O/screen.log" | tail -1)"
else verdict "cli_test same_everywhere" FAIL "$(status $RC)"
fi

# ---- pytest -----------------------------------------------------------------------------------
PYP=$B/python
if "$PY" -c 'import numpy, pytest' >/dev/null 2>&1; then
  run_capped "$O/pytest.log" 180 env PYTHONPATH="$PYP" "$PY" -m pytest -q -rs -p no:cacheprovider python/tests/test_gpu.py
  last=$(grep -E '(passed|failed|skipped|error)' "$O/pytest.log" | tail -1)
  # exit 5 (nothing collected): the module skipped itself as a whole (no torch)
  if ((RC == 5)) && [[ $last == *skipped* && $last != *failed* && $last != *error* ]]; then RC=0; fi
  if ((RC != 0)); then verdict pytest FAIL "$(status $RC): $last"
  elif [[ $last == *skipped* ]]; then verdict pytest "$( ((DRY)) && echo SKIP || echo FAIL)" "$last"
  else verdict pytest PASS "$last"
  fi
else # no numpy or pytest for this interpreter (a dry run): the extension must still load
  run_capped "$O/pytest.log" 30 "$PY" -c '
import importlib.util, glob, sys
path = glob.glob(sys.argv[1] + "/arraybridge/_core*.so")[0]
spec = importlib.util.spec_from_file_location("arraybridge._core", path)
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
print("loaded", path, "with", sys.version.split()[0])' "$PYP"
  if ((RC == 0 && DRY)); then verdict pytest SKIP "no numpy or pytest for $PY; the extension loads"
  else verdict pytest FAIL "no numpy or pytest for $PY, or the extension does not load (exit $RC)"
  fi
fi

# ---- bench ------------------------------------------------------------------------------------
: >"$O/bench.jsonl"
run_capped "$O/bench.log" 240 env AB_BENCH_NO_BUILD=1 AB_BENCH_BUILD_DIR="$B" BENCH_REPS=5 BENCH_ROUNDS=3 \
  BENCH_TIMEOUT=120 bash -c 'bench/run cuda_h2d cuda_d2h cuda_stack cuda_convert screen_gpu >>"$1"' _ "$O/bench.jsonl"
nj=$(grep -c '^{' "$O/bench.jsonl")
if ((RC != 0)); then verdict bench FAIL "$(status $RC), $nj JSON lines"
elif ((nj == 0)); then verdict bench "$( ((DRY)) && echo SKIP || echo FAIL)" "no JSON line"
else verdict bench PASS "$nj JSON lines"
fi
cat "$O/bench.jsonl" >>"$S"

# ---- sanitize ---------------------------------------------------------------------------------
# In-process (AB_TEST_NOFORK) so that the sanitizer follows every test; exit 99 on any error.
CS=(compute-sanitizer --report-api-errors no --error-exitcode 99)
sanitize() {
  local name=$1 cap=$2
  shift 2
  if ((DRY)) || ! command -v compute-sanitizer >/dev/null; then
    verdict "$name" "$( ((DRY)) && echo SKIP || echo FAIL)" "no GPU or no compute-sanitizer"
    return
  fi
  run_capped "$O/sanitizer.log" "$cap" env AB_TEST_NOFORK=1 AB_TEST_TIMEOUT=$((cap - 5)) "$@"
  local sum
  sum=$(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$O/sanitizer.log" | tail -1)
  if ((RC == 0)); then verdict "$name" PASS "$sum"
  else verdict "$name" FAIL "$(status $RC)${sum:+: $sum}"
  fi
}
# --overwrite: the second tool's run replaces the first one's results
SMALL=(screen --wells 2 --sites 1 --z 4 --size 128x96 --devices cuda --out "$W/sanitize.csv" --overwrite --quiet)
sanitize "memcheck screen" 60 "${CS[@]}" --tool memcheck "$CLI" "${SMALL[@]}"
sanitize "racecheck screen" 60 "${CS[@]}" --tool racecheck "$CLI" "${SMALL[@]}"
sanitize "memcheck stack" 90 "${CS[@]}" --tool memcheck "$B/tests/test_cuda_stack" stack_same_device stack_pageable
sanitize "memcheck interop" 60 "${CS[@]}" --tool memcheck "$B/tests/test_cuda_interop" foreign_cuda_memory \
  launch_after_pending_poll
sanitize "memcheck convert" 60 "${CS[@]}" --tool memcheck "$B/tests/test_cuda_convert" local_matrix
sanitize "racecheck stack" 60 "${CS[@]}" --tool racecheck "$B/tests/test_cuda_stack" stack_same_device

# ---- verdict ----------------------------------------------------------------------------------
if ((${#FAILED[@]})); then
  say "gpu-run: FAIL in ${SECONDS}s: ${FAILED[*]}"
  exit 1
fi
say "gpu-run: PASS in ${SECONDS}s$( ((DRY)) && echo ' (dry run: GPU steps skipped)')"
