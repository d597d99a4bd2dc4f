#!/usr/bin/env bash
# scripts/consumer/check.sh PREFIX BUILD_DIR: use an installed arraybridge the way a consumer does.
#
# Builds this folder's consumers against PREFIX (`cmake --install ... --prefix PREFIX`) into
# BUILD_DIR: find_package (shared, static, the header as C++) and pkg-config, runs each, and
# checks that the library, the header, the CMake package and pkg-config give one version, that
# pkg-config needs nothing beyond the prefix for a shared link, and that the `arraybridge`
# command and its man page are installed and run. Every check runs, then the status is non-zero
# if any failed.
#
# AB_EXPECT_STATIC=yes (default): the static target must be there. =no: the static library's
# dependencies (the CUDA toolkit, libck-dev, ...) are hidden, so find_package must still succeed
# with only the shared library, and say why there is no static one.
set -uo pipefail

(($# == 2)) || { echo "usage: check.sh PREFIX BUILD_DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
prefix=$(readlink -f "$1")
cdir=$2
expect_static=${AB_EXPECT_STATIC:-yes}
rc=0
fail() {
  echo "FAIL: $*"
  rc=1
}

pc=$(find "$prefix" -name arraybridge.pc -print -quit)
[[ -n $pc ]] || { echo "FAIL: no arraybridge.pc under $prefix"; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
echo "--- $pc"
cat "$pc"

# The .pc describes where it was installed, not the configure-time CMAKE_INSTALL_PREFIX.
includedir=$(pkg-config --variable=includedir arraybridge)
[[ -f $includedir/arraybridge.h ]] ||
  fail "arraybridge.pc installed under $prefix says includedir=$includedir, which has no arraybridge.h"
# A shared link needs only the prefix: no private requirement (pkg-config resolves those even
# for --cflags), no path of the build machine.
flags=$(pkg-config --cflags --libs arraybridge) || fail "pkg-config --cflags --libs arraybridge"
echo "pkg-config: $flags"
for f in $flags; do
  case $f in -I* | -L*) [[ $(readlink -f "${f:2}") == "$prefix"/* ]] || fail "pkg-config gives $f, outside $prefix" ;; esac
done

# One version: the header's numbers, the .pc, the CMake package (below), the library (main.c).
header_version=$(awk '/^#define AB_VERSION_(MAJOR|MINOR|PATCH) / { v = v (v == "" ? "" : ".") $3 } END { print v }' \
  "$includedir/arraybridge/version.h")
pc_version=$(pkg-config --modversion arraybridge)
[[ $pc_version == "$header_version" ]] || fail "pkg-config says $pc_version, arraybridge/version.h $header_version"

rm -rf "$cdir"
if ! cmake -S "$HERE" -B "$cdir" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo; then
  echo "FAIL: the consumer does not configure against $prefix"
  exit 1
fi
cmake_version=$(cat "$cdir/arraybridge_version.txt")
[[ $cmake_version == "$header_version" ]] || fail "find_package says $cmake_version, arraybridge/version.h $header_version"
if [[ $expect_static == yes && ! -d $cdir/CMakeFiles/consumer_static.dir ]]; then
  fail "no arraybridge::arraybridge_static although its dependencies are here"
elif [[ $expect_static == no && -d $cdir/CMakeFiles/consumer_static.dir ]]; then
  fail "arraybridge::arraybridge_static is defined although its dependencies are hidden"
fi

libdir=$(dirname "$(find "$prefix" -name 'libarraybridge.so' -print -quit)")
[[ -f $libdir/libarraybridge.so.$header_version ]] || fail "no libarraybridge.so.$header_version in $libdir"
for t in consumer_cxx_header consumer_cmake consumer_static consumer_pc; do
  [[ -d $cdir/CMakeFiles/$t.dir ]] || continue # checked above where it matters
  echo "--- $t"
  cmake --build "$cdir" --target "$t" || { fail "$t does not build"; continue; }
  [[ $t == consumer_cxx_header ]] && continue # compile-only
  if [[ $t != consumer_static ]]; then
    # It must load the installed copy (pkg-config gives -L and no rpath: LD_LIBRARY_PATH below).
    deps=$(LD_LIBRARY_PATH="$libdir" ldd "$cdir/$t" | grep arraybridge)
    echo "$deps"
    [[ $deps == *"=> $prefix/"* ]] || fail "$t does not load libarraybridge from $prefix"
  fi
  LD_LIBRARY_PATH="$libdir" "$cdir/$t" || fail "$t exited non-zero"
done

# The command and its reference. It finds the library through its RUNPATH: no LD_LIBRARY_PATH.
echo "--- bin/arraybridge"
cli=$prefix/bin/arraybridge
if [[ ! -x $cli ]]; then
  fail "no $cli"
else
  help=$("$cli" --help) || fail "arraybridge --help exited non-zero"
  [[ $help == *screen* ]] || fail "arraybridge --help does not mention screen"
  (cd "$cdir" && "$cli" devices) || fail "arraybridge devices exited non-zero"
fi
man=$prefix/share/man/man1/arraybridge.1
if [[ ! -s $man ]]; then
  fail "no man page $man"
else
  grep -q '^\.TH ARRAYBRIDGE' "$man" || fail "$man has no .TH ARRAYBRIDGE header"
  grep -q 'make\\*-plate' "$man" || fail "$man does not describe make-plate"
fi
exit $rc
