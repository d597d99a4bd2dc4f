#!/usr/bin/env bash
# scripts/setup.sh: install what the build, the tests and the benchmarks need, from Debian's
# packages. Idempotent: when dpkg already lists every package as installed it does nothing (no
# apt-get update), so reruns take well under a second.
#
# Runs apt-get as root, through sudo when not root. AB_SETUP_DRY_RUN=1 only says what is missing.
set -euo pipefail

PACKAGES=(
  cmake pkg-config ninja-build gcc clang
  libclang-rt-14-dev # sanitizer and libFuzzer runtimes for clang 14
  libck-dev libjemalloc-dev libdlpack-dev
  ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo # OpenCL on the CPU (pocl)
  libstarpu-dev # the task-overhead benchmark's peer
  libtiff-dev   # plate input for the main job
  python3-venv
)

log() { printf 'setup: %s\n' "$*" >&2; }

installed() {
  # dpkg -s exits 0 for removed-but-configured packages too; check the status line.
  dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null | grep -q '^ii'
}

missing=()
for p in "${PACKAGES[@]}"; do
  installed "$p" || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  log "all ${#PACKAGES[@]} packages installed"
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
