#!/usr/bin/env bash
# scripts/setup.sh [job|test|bench]: install what a purpose needs, and nothing more.
#
#   job     Debian packages to build the library and run the screening job (`arraybridge
#           screen`): the compiler, CMake, concurrencykit, jemalloc, DLPack, OpenCL with pocl,
#           libtiff and zlib. No Python.
#   test    (the default) everything scripts/test.sh needs: the job's packages, clang and its
#           sanitizer runtimes, StarPU (the task benchmark's peer, built with the tests),
#           help2man (the installed man page; a build without it installs none), and the
#           Python side in two virtual environments (PyPI's frameworks are newer than Debian's):
#             .venv       numpy, torch (CPU), jax, tensorflow-cpu, pyopencl, pyclesperanto, dask,
#                         pytest (python/requirements.txt)
#             .venv-peer  arraybridge from PyPI, the benchmark peer, which has our import name
#                         (python/requirements-peer.txt)
#   bench   the test side and .venv-cp: CellProfiler's module library, the screening job's peer,
#           with its own numpy 1.x (bench/py/requirements-cellprofiler.txt)
# Idempotent: when dpkg lists every package and each venv's requirements are unchanged since its
# last install, it does nothing, so reruns take about a second.
#
# Runs apt-get as root, through sudo when not root. AB_SETUP_DRY_RUN=1 only says what is missing.
# AB_SETUP_NO_PYTHON=1 skips the virtual environments.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
PURPOSE=${1:-test}

JOB_PACKAGES=(
  cmake make pkg-config gcc libc6-dev
  libck-dev libjemalloc-dev libdlpack-dev
  ocl-icd-opencl-dev opencl-headers pocl-opencl-icd # OpenCL on the CPU (pocl)
  libtiff-dev zlib1g-dev                            # plates in; the heatmap PNG out
)
TEST_PACKAGES=(
  ninja-build clang clinfo
  libclang-rt-14-dev # sanitizer and libFuzzer runtimes for clang 14
  libstarpu-dev      # the task-overhead benchmark's peer
  help2man           # the command's man page, from its --help (the install test checks it)
  python3-venv
)

case $PURPOSE in
  job) PACKAGES=("${JOB_PACKAGES[@]}") ;;
  test | bench) PACKAGES=("${JOB_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "setup: unknown purpose '$PURPOSE': use job, test or bench (scripts/setup.sh --help)" >&2
    exit 2
    ;;
esac

log() { printf 'setup: %s\n' "$*" >&2; }

installed() {
  # dpkg -s exits 0 for removed-but-configured packages too; check the status line.
  dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'
}

# venv DIR REQUIREMENTS: create DIR and install REQUIREMENTS unless they are what it last got.
venv() {
  local dir=$1 reqs=$2 stamp=$1/.ab-requirements
  if [[ ! -x $dir/bin/python ]]; then
    log "creating $dir"
    python3 -m venv "$dir"
  fi
  if cmp -s "$reqs" "$stamp"; then
    return 0
  fi
  log "installing $(basename "$reqs") into $dir"
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$reqs" >&2
  cp "$reqs" "$stamp"
}

python_side() {
  [[ $PURPOSE == job || "${AB_SETUP_NO_PYTHON:-0}" == 1 ]] && return 0
  venv "$ROOT/.venv" "$ROOT/python/requirements.txt"
  venv "$ROOT/.venv-peer" "$ROOT/python/requirements-peer.txt"
  if [[ $PURPOSE == bench ]]; then
    venv "$ROOT/.venv-cp" "$ROOT/bench/py/requirements-cellprofiler.txt"
  fi
  log "python: the virtual environments for $PURPOSE are ready"
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  log "all ${#PACKAGES[@]} packages for $PURPOSE installed"
  python_side
  exit 0
fi
log "missing: ${missing[*]}"
if [[ "${AB_SETUP_DRY_RUN:-0}" == 1 ]]; then
  exit 1
fi

SUDO=()
if [[ $(id -u) != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    log "error: not root and no sudo; install as root: apt-get install -y ${missing[*]}"
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >&2
"${SUDO[@]}" apt-get install -y -q "${missing[@]}" >&2

still=()
for p in "${missing[@]}"; do
  installed "$p" || still+=("$p")
done
if ((${#still[@]})); then
  log "error: still missing after apt-get install: ${still[*]}"
  exit 1
fi
log "installed: ${missing[*]}"
python_side
