#!/usr/bin/env bash
# scripts/without.sh [-p DEBIAN_PACKAGE]... [PATH]... -- COMMAND [ARG...]
#
# Runs COMMAND where the given paths, and every file of the given Debian packages, do not exist:
# what a machine without them sees (a consumer without the CUDA toolkit or the dlpack headers, a
# wheel without libck). Root only. The command gets a mount namespace of its own (unshare -m) in
# which each top-level folder holding a hidden path (/usr, /opt, ...) is covered by a read-only
# overlay whose upper layer holds a whiteout for each hidden path: the entries are gone, not
# emptied, and nothing outside the command sees a change.
#
# Exit status: COMMAND's; 2 for bad usage, or when this machine cannot hide (not root, no
# unshare or overlayfs): a check that cannot hide must fail, not pass without hiding.
set -euo pipefail

die() {
  echo "without.sh: $*" >&2
  exit 2
}

hide=()
while (($#)); do
  case $1 in
  -p)
    (($# >= 2)) || die "-p needs a package name"
    dpkg-query -W "$2" >/dev/null 2>&1 || die "no Debian package $2 is installed"
    # Files and links only: folders such as /usr/include belong to many packages.
    while IFS= read -r f; do
      [[ -L $f || (-e $f && ! -d $f) ]] && hide+=("$f")
    done < <(dpkg -L "$2")
    shift 2
    ;;
  --)
    shift
    break
    ;;
  /*)
    hide+=("$1")
    shift
    ;;
  *) die "paths must be absolute: $1" ;;
  esac
done
(($#)) || die "usage: without.sh [-p PACKAGE]... [PATH]... -- COMMAND [ARG...]"
[[ $(id -u) == 0 ]] || die "needs root (unshare -m, mount)"
command -v unshare >/dev/null || die "needs unshare (util-linux)"

# One upper layer per top-level folder, with a whiteout (a 0/0 character device) per hidden path.
layers=$(mktemp -d "${TMPDIR:-/tmp}/without.XXXXXX")
trap 'rm -rf "$layers"' EXIT
tops=()
for p in "${hide[@]}"; do
  [[ -e $p || -L $p ]] || continue # already absent
  p=${p%/}
  top=${p#/}
  top=/${top%%/*}
  [[ $top != "$p" ]] || die "cannot hide a top-level folder: $p"
  [[ -d $layers$top ]] || tops+=("$top")
  mkdir -p "$layers$(dirname "$p")"
  [[ -e $layers$p ]] || mknod "$layers$p" c 0 0
done

mounts=""
for top in "${tops[@]}"; do
  mounts+="mount -t overlay without -o 'lowerdir=$layers$top:$top' '$top' || exit 2; "
done
# exec: COMMAND keeps this script's stdin, stdout and exit status.
unshare -m --propagation private -- bash -c "$mounts"'exec "$@"' without "$@"
