#!/usr/bin/env bash
# scripts/screen.sh [SCREEN OPTIONS...]: the main job. Builds build/release (Release, no tests,
# no benchmarks) when its `arraybridge` command is missing or older than the sources, then runs
# `arraybridge screen "$@"` on every device (a synthetic 96-well plate unless --plate DIR is
# given; `build/release/cli/arraybridge screen --help` lists the options). It needs only what
# `scripts/setup.sh job` installs. The results go to results.csv (and results.json) unless
# --out says otherwise; a second run asks for --resume or --overwrite rather than replace them.
#
# Without POCL_DEVICES set, pocl shows one OpenCL CPU device; POCL_DEVICES="pthread pthread
# pthread" gives three, as the tests use. AB_JOBS: build parallelism (default: the cores).
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
B="$ROOT/build/release"
CLI="$B/cli/arraybridge"

stale() {
  [[ ! -x $CLI ]] && return 0
  [[ -n $(find "$ROOT"/{CMakeLists.txt,cmake,include,runtime,queue,devices,cli} -newer "$CLI" -print -quit) ]]
}

if stale; then
  echo "screen.sh: building $B" >&2
  cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release -DAB_BUILD_TESTS=OFF -DAB_BUILD_BENCH=OFF \
    -DAB_SANITIZE= >&2
  cmake --build "$B" -j "${AB_JOBS:-$(nproc 2>/dev/null || echo 2)}" --target arraybridge_cli >&2
fi
exec "$CLI" screen "$@"
