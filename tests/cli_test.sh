#!/usr/bin/env bash
# tests/cli_test.sh CASE CLI OPENCL: one test of the `arraybridge` command (tests/cli.cmake).
#   CLI     the built command;  OPENCL  1 when the build has the OpenCL backend
# Plates are small (a few seconds even under the sanitizers). Exit 0: pass, 77: skip.
set -euo pipefail
case_=$1 CLI=$2 OPENCL=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/ab-cli-$case_.XXXXXX")
trap 'rm -rf "$W"' EXIT
SMALL=(--wells 4 --sites 2 --z 4 --size 96x80 --seed 7)

fail() { echo "FAIL: $*" >&2; exit 1; }
# The number of OpenCL devices the runtime sees.
n_opencl() { "$CLI" devices | awk '$1 == "opencl"' | wc -l; }
# The number of CUDA devices the runtime sees and this build has steps for (none without a GPU).
n_cuda() { "$CLI" devices | awk '$1 == "cuda" && $NF == "yes"' | wc -l; }

case_devices() {
  "$CLI" devices >"$W/out"
  cat "$W/out"
  grep -Eq '^host +0 ' "$W/out" || fail "no host:0 line"
  if ((OPENCL)); then
    local n
    n=$(n_opencl)
    # POCL_DEVICES asks pocl for three; another platform (or none) may show other counts
    ((n == 3)) || { echo "note: $n OpenCL devices, not pocl's 3: only their lines are checked"; return 0; }
    for i in 0 1 2; do grep -Eq "^opencl +$i " "$W/out" || fail "no opencl:$i line"; done
  fi
}

case_screen_small() {
  "$CLI" screen "${SMALL[@]}" --out "$W/r.csv" --quiet
  cat "$W/r.csv"
  [[ $(head -1 "$W/r.csv") == well,site,device,status,objects,mean_area,foreground_px,mean_intensity,error ]] ||
    fail "header"
  (($(wc -l <"$W/r.csv") == 9)) || fail "want 8 rows"
  local want="A01,1 A01,2 A02,1 A02,2 A03,1 A03,2 A04,1 A04,2" got
  got=$(tail -n +2 "$W/r.csv" | cut -d, -f1,2 | tr '\n' ' ' | sed 's/ $//')
  [[ $got == "$want" ]] || fail "rows $got, want $want"
  (($(tail -n +2 "$W/r.csv" | cut -d, -f4 | grep -cv '^ok$') == 0)) || fail "an image failed"
  (($(tail -n +2 "$W/r.csv" | awk -F, '$5 > 0' | wc -l) >= 6)) || fail "too few images with cells"
}

# The same plate on the host alone, on each OpenCL and CUDA device alone and on all of them: the
# same numbers, and each row names the device it was forced onto.
case_same_everywhere() {
  local devs=(host all) d
  if ((OPENCL)); then
    for ((i = 0; i < $(n_opencl); i++)); do devs+=("opencl:$i"); done
  fi
  for ((i = 0; i < $(n_cuda); i++)); do devs+=("cuda:$i"); done
  (($(n_cuda) > 0)) || echo "note: no CUDA device here: CUDA not compared"
  for d in "${devs[@]}"; do
    "$CLI" screen "${SMALL[@]}" --devices "$d" --out "$W/$d.csv" --quiet
    if [[ $d != all ]]; then
      local other
      local want=$d
      [[ $d == *:* ]] || want="$d:[0-9]*" # a kind: any device of it
      other=$(tail -n +2 "$W/$d.csv" | cut -d, -f3 | grep -vx "$want" || true)
      [[ -z $other ]] || fail "--devices $d ran images on: $other"
    fi
    cut -d, -f1,2,4- "$W/$d.csv" >"$W/$d.cut"
    cmp -s "$W/host.cut" "$W/$d.cut" || { diff "$W/host.cut" "$W/$d.cut" || true; fail "$d differs from host"; }
  done
  echo "identical on: ${devs[*]}"
}

case_bad_inputs() {
  local P="$W/plate"
  "$CLI" make-plate --out "$P" --wells 3 --sites 1 --z 4 --size 64x64
  "$CLI" make-plate --out "$W/small" --wells 1 --sites 1 --z 4 --size 48x64
  "$CLI" make-plate --out "$W/u8" --wells 1 --sites 1 --z 4 --size 64x64 --bits 8
  cp "$W/small/A01_s1.tif" "$P/Z09_s1.tif"  # wrong size (the plate's first stack is A01)
  cp "$W/u8/A01_s1.tif" "$P/B01_s1.tif"     # 8-bit
  echo "not a tiff" >"$P/C01_s1.tif"         # unreadable
  local size
  size=$(stat -c %s "$P/A02_s1.tif")
  truncate -s $((size / 2)) "$P/A02_s1.tif"  # truncated
  local rc=0
  "$CLI" screen --plate "$P" --out "$W/r.csv" --quiet 2>"$W/err" || rc=$?
  cat "$W/r.csv" "$W/err"
  ((rc == 3)) || fail "exit $rc, want 3 (some images failed)"
  grep -q '^A01,1,[a-z]*:[0-9],ok,' "$W/r.csv" || fail "A01 did not run"
  grep -q '^A03,1,[a-z]*:[0-9],ok,' "$W/r.csv" || fail "A03 did not run"
  grep -q '^A02,1,,AB_EINVAL,.*"' "$W/r.csv" || fail "no error row for the truncated A02"
  grep -q '^B01,1,,AB_EINVAL,.*16-bit' "$W/r.csv" || fail "no dtype error row for B01"
  grep -q '^C01,1,,AB_EINVAL,.*TIFF' "$W/r.csv" || fail "no error row for C01"
  grep -q "^Z09,1,,AB_ESHAPE,.*plate's first" "$W/r.csv" || fail "no shape error row for Z09"
  grep -q '4 of 6 images failed' "$W/err" || fail "no failure count on stderr"
  rc=0
  "$CLI" screen --plate "$W/missing" --out "$W/r2.csv" 2>"$W/err" || rc=$?
  ((rc == 1)) || fail "missing folder: exit $rc, want 1"
  grep -q 'cannot open plate folder' "$W/err" || fail "missing folder: no message"
  rc=0
  "$CLI" screen --wells x 2>/dev/null || rc=$?
  ((rc == 2)) || fail "bad option: exit $rc, want 2"
  rc=0
  "$CLI" screen --devices opencl:9 --out "$W/r3.csv" 2>"$W/err" || rc=$?
  ((rc == 2)) || fail "unknown device: exit $rc, want 2"
}

# A budget that holds one small chain per device: fewer stacks in flight, the same results.
case_memory_limit() {
  "$CLI" screen "${SMALL[@]}" --devices host --out "$W/free.csv" --quiet
  "$CLI" screen "${SMALL[@]}" --memory-limit 600K --inflight 8 --out "$W/tight.csv" --quiet
  cut -d, -f1,2,4- "$W/free.csv" >"$W/free.cut"
  cut -d, -f1,2,4- "$W/tight.csv" >"$W/tight.cut"
  cmp -s "$W/free.cut" "$W/tight.cut" || { diff "$W/free.cut" "$W/tight.cut" || true; fail "results differ"; }
  local rc=0
  "$CLI" screen "${SMALL[@]}" --memory-limit 64K --devices host --out "$W/none.csv" --quiet 2>"$W/err" || rc=$?
  cat "$W/err"
  ((rc == 3)) || fail "a budget below one stack: exit $rc, want 3"
  grep -q 'needs about' "$W/err" || fail "no warning that a stack cannot fit"
  (($(grep -c ',AB_ENOMEM,' "$W/none.csv") == 8)) || fail "want 8 AB_ENOMEM rows"
}

# --trace: valid JSON, one track per worker (and per stream on OpenCL devices), every step.
case_trace() {
  "$CLI" screen "${SMALL[@]}" --out "$W/r.csv" --trace "$W/t.json" --quiet
  local workers streams
  workers=$("$CLI" devices | awk '$1 == "host" || $1 == "opencl" || $1 == "cuda" { n += $(NF - 1) } END { print n }')
  streams=$("$CLI" devices | awk '$1 == "opencl" || $1 == "cuda" { n += $(NF - 1) } END { print n + 0 }')
  python3 "$HERE/trace_check.py" "$W/t.json" normalise >"$W/sum"
  cat "$W/sum" | grep -v '^order'
  grep -qx "workers $workers" "$W/sum" || fail "want $workers worker tracks"
  grep -qx "streams $streams" "$W/sum" || fail "want $streams stream tracks"
  grep -qx "named 8" "$W/sum" || fail "want 8 normalise events"
  grep -qx "bad 0" "$W/sum" || fail "malformed events"
  for step in stack filter project threshold count; do
    python3 "$HERE/trace_check.py" "$W/t.json" $step >"$W/sum"
    grep -qx "named 8" "$W/sum" || fail "want 8 $step events"
  done
}

"case_$case_"
