#!/usr/bin/env bash
# tests/cli_test.sh CASE CLI OPENCL: one test of the `arraybridge` command (tests/cli.cmake).
#   CLI     the built command;  OPENCL  1 when the build has the OpenCL backend
# Plates are small (a few seconds even under the sanitizers). Exit 0: pass, 77: skip.
set -euo pipefail
case_=$1 CLI=$2 OPENCL=$3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d "${TMPDIR:-/tmp}/ab-cli-$case_.XXXXXX")
trap 'chmod -R u+rwx "$W" 2>/dev/null; rm -rf "$W"' EXIT
SMALL=(--wells 4 --sites 2 --z 4 --size 96x80 --seed 7)
FILES=(python3 "$HERE/cli_files.py")

fail() { echo "FAIL: $*" >&2; exit 1; }
# The number of OpenCL devices the runtime sees.
n_opencl() { "$CLI" devices | awk '$1 == "opencl"' | wc -l; }
# The number of CUDA devices the runtime sees and this build has steps for (none without a GPU).
n_cuda() { "$CLI" devices | awk '$1 == "cuda" && $NF == "yes"' | wc -l; }
# The rows of a results CSV without the device column, in plate order.
rows() { tail -n +2 "$1" | cut -d, -f1-3,5- | sort -t, -k1,1 -k2,2n -k3,3n; }
# expect STATUS CMD...: runs CMD, stdout and stderr to $W/out and $W/err; fails unless it exits STATUS.
expect() {
  local want=$1 rc=0
  shift
  "$@" >"$W/out" 2>"$W/err" || rc=$?
  ((rc == want)) || { cat "$W/out" "$W/err"; fail "$* exited $rc, want $want"; }
}
# one_line PATTERN: stderr is exactly one line, and it matches PATTERN.
one_line() {
  (($(wc -l <"$W/err") == 1)) || { cat "$W/err"; fail "want one line on stderr"; }
  grep -Eq -- "$1" "$W/err" || { cat "$W/err"; fail "stderr does not say '$1'"; }
}

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

# --help everywhere, --opt=value, one-line errors that name the option and its range, exit codes.
case_command_line() {
  local c
  for c in "" screen make-plate devices; do
    expect 0 "$CLI" $c --help
    grep -q '^usage: arraybridge' "$W/out" || fail "$c --help: no usage on stdout"
    expect 0 "$CLI" $c -h
  done
  expect 2 "$CLI"
  expect 2 "$CLI" frobnicate
  one_line "unknown command 'frobnicate'"
  expect 2 "$CLI" screen --wells x
  one_line "^arraybridge screen: --wells 'x': want a whole number from 1 to 1536"
  expect 2 "$CLI" screen --wells=0
  one_line "--wells '0': want a whole number from 1 to 1536"
  expect 2 "$CLI" screen --size 4x4
  one_line "--size '4x4': want WxH"
  expect 2 "$CLI" screen --threshold 1.5
  one_line "--threshold '1.5': want otsu, or a fraction"
  expect 2 "$CLI" screen --rescale 50,10
  one_line "--rescale '50,10'"
  expect 2 "$CLI" screen --filter-size -1
  one_line "--filter-size '-1': want a number from 0 to 30"
  expect 2 "$CLI" screen --bogus
  one_line "unknown option --bogus"
  expect 2 "$CLI" screen -x
  one_line "unknown option -x"
  expect 2 "$CLI" screen --quiet=yes
  one_line "--quiet takes no value"
  expect 2 "$CLI" screen --out
  one_line "--out needs a value"
  expect 2 "$CLI" screen extra
  one_line "unexpected argument 'extra'"
  expect 2 "$CLI" screen --layout nikon --plate "$W"
  one_line "--layout 'nikon': want simple, imagexpress or operetta"
  expect 2 "$CLI" screen --pattern '{well}_{bogus}' --plate "$W"
  one_line "unknown \{field\}"
  expect 2 "$CLI" screen --plate "$W" --wells 8
  one_line "describe the synthetic plate"
  expect 2 "$CLI" screen --devices gpu
  one_line "--devices: bad device 'gpu'"
  expect 2 "$CLI" screen --devices opencl:9
  one_line "no device opencl:9"
  if (($(n_cuda) == 0)); then # no GPU (or no CUDA steps in this build): nothing can run
    expect 2 "$CLI" screen --devices cuda --out "$W/c.csv"
    grep -q 'no device here with screening steps' "$W/err" || fail "--devices cuda: no reason"
  fi
  expect 2 "$CLI" make-plate --wells 8
  one_line "--out DIR is required"
  expect 2 "$CLI" make-plate --out "$W/p" --bits 12
  one_line "--bits '12': want 8 or 16"
  expect 2 "$CLI" devices --all
  one_line "unknown option --all"
  # --opt=value and -o work like their spaced forms
  expect 0 "$CLI" screen --wells=2 --sites=1 --z=2 --size=32x32 -o "$W/eq.csv" -q
  (($(wc -l <"$W/eq.csv") == 3)) || fail "--wells=2 --sites=1: want 2 rows"
}

case_screen_small() {
  "$CLI" screen "${SMALL[@]}" --out "$W/r.csv" --quiet
  cat "$W/r.csv"
  [[ $(head -1 "$W/r.csv") == well,site,timepoint,device,status,objects,mean_area,foreground_px,threshold,mean_intensity_1,object_intensity_1,error ]] ||
    fail "header"
  (($(wc -l <"$W/r.csv") == 9)) || fail "want 8 rows"
  local want="A01,1 A01,2 A02,1 A02,2 A03,1 A03,2 A04,1 A04,2" got
  got=$(rows "$W/r.csv" | cut -d, -f1,2 | tr '\n' ' ' | sed 's/ $//')
  [[ $got == "$want" ]] || fail "rows $got, want $want"
  (($(tail -n +2 "$W/r.csv" | cut -d, -f5 | grep -cv '^ok$') == 0)) || fail "an image failed"
  (($(tail -n +2 "$W/r.csv" | awk -F, '$6 > 0' | wc -l) >= 6)) || fail "too few images with cells"
}

# The same plate on the host alone, on each OpenCL and CUDA device alone and on all of them: the
# same numbers, and each row names the device it was forced onto.
case_same_everywhere() {
  local devs=(host all) d
  if ((OPENCL)); then
    devs+=(host,opencl) # all devices of both kinds (all leaves CPU OpenCL devices to the host)
    for ((i = 0; i < $(n_opencl); i++)); do devs+=("opencl:$i"); done
  fi
  for ((i = 0; i < $(n_cuda); i++)); do devs+=("cuda:$i"); done
  (($(n_cuda) > 0)) || echo "note: no CUDA device here: CUDA not compared"
  for d in "${devs[@]}"; do
    # two channels, a wider filter and a manual threshold: every step's arithmetic is compared
    "$CLI" screen "${SMALL[@]}" --channels 2 --filter-size 5 --devices "$d" --out "$W/$d.csv" --quiet
    "$CLI" screen "${SMALL[@]}" --threshold 0.25 --rescale 0.5,99.5 --devices "$d" --out "$W/$d-m.csv" --quiet
    if [[ $d != all && $d != *,* ]]; then
      local other
      local want=$d
      [[ $d == *:* ]] || want="$d:[0-9]*" # a kind: any device of it
      other=$(tail -n +2 "$W/$d.csv" | cut -d, -f4 | grep -vx "$want" || true)
      [[ -z $other ]] || fail "--devices $d ran images on: $other"
    fi
    rows "$W/$d.csv" >"$W/$d.cut"
    rows "$W/$d-m.csv" >"$W/$d-m.cut"
    cmp -s "$W/host.cut" "$W/$d.cut" || { diff "$W/host.cut" "$W/$d.cut" || true; fail "$d differs from host"; }
    cmp -s "$W/host-m.cut" "$W/$d-m.cut" || { diff "$W/host-m.cut" "$W/$d-m.cut" || true; fail "$d differs (manual)"; }
  done
  cmp -s "$W/host.cut" "$W/host-m.cut" && fail "the threshold and rescale options changed nothing"
  # devices that --devices all left to the host ran nothing
  local left
  left=$("${FILES[@]}" json "$W/all.json" left_to_the_host | tr -d ' ' | tr ',' ' ')
  echo "left to the host: ${left:-none}"
  for d in $left; do
    [[ $d == opencl:* ]] || fail "$d left to the host"
    grep -q ",$d," "$W/all.csv" && fail "$d was left to the host but ran images"
  done
  true
  echo "identical on: ${devs[*]}"
}

# Every layout make-plate writes is found (by the preset that matches most, by name, and by a
# pattern of one's own) and gives the same numbers; files that match nothing are listed.
case_layouts() {
  local l
  for l in simple imagexpress operetta; do
    "$CLI" make-plate --out "$W/$l" --layout $l --wells 3 --sites 2 --channels 2 --z 3 --size 64x48
    expect 0 "$CLI" screen --plate "$W/$l" --out "$W/$l.csv" --quiet
    rows "$W/$l.csv" >"$W/$l.cut"
    (($(wc -l <"$W/$l.cut") == 6)) || fail "$l: want 6 rows"
    cmp -s "$W/simple.cut" "$W/$l.cut" || { diff "$W/simple.cut" "$W/$l.cut" || true; fail "$l differs"; }
    [[ $("${FILES[@]}" json "$W/$l.json" plate.layout) == "$l" ]] || fail "$l: the preset was not found"
    expect 0 "$CLI" screen --plate "$W/$l" --layout $l --out "$W/$l-named.csv" --quiet
    cmp -s "$W/simple.cut" <(rows "$W/$l-named.csv") || fail "--layout $l differs"
  done
  find "$W/imagexpress" | head -3
  # a pattern of one's own; z as pages of one file (simple) and one file per plane (the others)
  expect 0 "$CLI" screen --plate "$W/operetta" --pattern 'r{row:2}c{col:2}f{site:2}p{z:2}-ch{channel}{*}' \
    --out "$W/own.csv" --quiet
  cmp -s "$W/simple.cut" <(rows "$W/own.csv") || fail "--pattern differs"
  # ImageXpress names with a GUID after the wavelength, and stacks as pages, no ZStep folders
  mkdir -p "$W/ix"
  cp "$W/simple/A02_s1_w1.tif" "$W/ix/MyPlate_A02_s1_w1A1B2C3D4-E5F6.tif"
  cp "$W/simple/A02_s1_w2.tif" "$W/ix/MyPlate_A02_s1_w2F00BA5.tif"
  echo "not a plate image" >"$W/ix/notes.txt" # not a TIFF: ignored
  cp "$W/simple/A01_s1_w1.tif" "$W/ix/overview.tif" # a TIFF that matches no pattern: listed
  expect 0 "$CLI" screen --plate "$W/ix" --out "$W/ix.csv" --quiet
  grep -q '1 TIFF file(s) match no pattern and are left out: .*overview.tif' "$W/err" || fail "overview.tif not listed"
  grep -q 'notes' "$W/err" && fail "a non-TIFF was listed"
  (($(wc -l <"$W/ix.csv") == 2)) || fail "ix: want one row"
  [[ $(rows "$W/ix.csv") == $(grep '^A02,1,' "$W/simple.cut") ]] || fail "ix: A02 differs from the simple layout's"
  [[ $("${FILES[@]}" json "$W/ix.json" plate.unmatched_files) == 1 ]] || fail "unmatched not recorded"
  # nothing matches: a fatal error that says so
  mkdir "$W/odd" && cp "$W/simple/A01_s1_w1.tif" "$W/odd/scan0001.tif"
  expect 1 "$CLI" screen --plate "$W/odd" --out "$W/odd.csv" --quiet
  one_line "no file name matches a known layout.*--pattern"
}

# 384- and 1536-well plates: rows A..P and A..AF, every well once; make-plate writes every file.
case_big_plates() {
  expect 0 "$CLI" screen --wells 1536 --sites 1 --z 2 --size 16x16 --out "$W/p1536.csv" --quiet
  (($(tail -n +2 "$W/p1536.csv" | cut -d, -f1 | sort -u | wc -l) == 1536)) || fail "want 1536 distinct wells"
  tail -n +2 "$W/p1536.csv" | cut -d, -f1 | grep -qx AF48 || fail "no well AF48"
  tail -n +2 "$W/p1536.csv" | cut -d, -f1 | grep -Eqvx '[A-Z]{1,2}[0-9]{2}' && fail "an odd well name"
  [[ $("${FILES[@]}" json "$W/p1536.json" plate.format) == 1536 ]] || fail "not a 1536-well format"
  expect 0 "$CLI" screen --wells 384 --sites 1 --z 2 --size 16x16 --out "$W/p384.csv" --quiet
  tail -n +2 "$W/p384.csv" | cut -d, -f1 | grep -qx P24 || fail "no well P24"
  "$CLI" make-plate --out "$W/m" --wells 1536 --sites 1 --z 1 --size 8x8
  (($(find "$W/m" -name '*.tif' | wc -l) == 1536)) || fail "make-plate: want 1536 files"
  expect 2 "$CLI" make-plate --out "$W/m" --wells 2 --sites 1 --z 1 --size 8x8
  one_line "exists \(--overwrite writes over it\)"
  expect 0 "$CLI" make-plate --out "$W/m" --wells 2 --sites 1 --z 1 --size 8x8 --overwrite
}

# A 1536-well plate runs in the memory of a 96-well one: rows go to disk, a bounded number of
# stacks is in flight.
case_bounded_memory() {
  local args=(--sites 1 --z 8 --size 64x64 --devices host --quiet) rss96 rss1536
  # under ASan, freed memory waits in a quarantine of 256 MiB by default: keep it small here
  export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=4:thread_local_quarantine_size_kb=64"
  /usr/bin/time -f '%M' -o "$W/m96" "$CLI" screen --wells 96 "${args[@]}" --out "$W/a.csv"
  /usr/bin/time -f '%M' -o "$W/m1536" "$CLI" screen --wells 1536 "${args[@]}" --out "$W/b.csv"
  rss96=$(tail -1 "$W/m96") rss1536=$(tail -1 "$W/m1536")
  echo "max RSS: 96 wells ${rss96} KiB, 1536 wells ${rss1536} KiB"
  (($(wc -l <"$W/b.csv") == 1537)) || fail "want 1536 rows"
  ((rss1536 < rss96 * 3 / 2 + 8192)) || fail "memory grows with the plate: $rss96 -> $rss1536 KiB"
}

# Every malformed input is one image's error row with a one-line reason; the rest runs.
case_bad_inputs() {
  local P="$W/plate"
  "$CLI" make-plate --out "$P" --wells 7 --sites 1 --channels 2 --z 4 --size 64x64
  "$CLI" make-plate --out "$W/small" --wells 1 --sites 1 --channels 2 --z 4 --size 48x64
  "$CLI" make-plate --out "$W/u8" --wells 1 --sites 1 --channels 2 --z 4 --size 64x64 --bits 8
  cp "$W/small/A01_s1_w2.tif" "$P/A02_s1_w2.tif"                 # channel sizes differ
  cp "$W/u8/A01_s1_w1.tif" "$P/A03_s1_w1.tif"                    # 8-bit
  echo "not a tiff" >"$P/A04_s1_w1.tif"                          # not a TIFF
  local size
  size=$(stat -c %s "$P/A05_s1_w1.tif")
  truncate -s $((size / 2)) "$P/A05_s1_w1.tif"                  # truncated
  rm "$P/A06_s1_w2.tif"                                          # a channel missing
  cp "$P/A07_s1_w1.tif" "$P/A7_s1_w1.tif"                        # the same well twice
  "${FILES[@]}" tiled "$P/B01_s1_w1.tif" 64 64                   # tiled
  cp "$P/A01_s1_w2.tif" "$P/B01_s1_w2.tif"
  expect 3 "$CLI" screen --plate "$P" --out "$W/r.csv" --quiet
  cat "$W/r.csv" "$W/err"
  grep -q '^A01,1,1,[a-z]*:[0-9],ok,' "$W/r.csv" || fail "A01 did not run"
  grep -q '^A02,1,1,,AB_ESHAPE,.*"channel 2 is 48x64, channel 1 is 64x64"' "$W/r.csv" || fail "A02: channel sizes"
  grep -q '^A03,1,1,,AB_EINVAL,.*"A03_s1_w1.tif page 1 is 8-bit.*need 16-bit' "$W/r.csv" || fail "A03: bit depth"
  grep -q '^A04,1,1,,AB_EINVAL,.*"A04_s1_w1.tif is not a readable TIFF' "$W/r.csv" || fail "A04: not a TIFF"
  grep -q '^A05,1,1,,AB_EINVAL,.*"A05_s1_w1.tif.*truncated' "$W/r.csv" || fail "A05: truncated"
  grep -q '^A06,1,1,,AB_EINVAL,.*"channel 2 missing' "$W/r.csv" || fail "A06: missing channel"
  grep -q '^A07,1,1,,AB_EINVAL,.*"duplicate: A07_s1_w1 and A7_s1_w1' "$W/r.csv" || fail "A07: duplicate"
  grep -q '^B01,1,1,,AB_EINVAL,.*"B01_s1_w1.tif page 1 is tiled' "$W/r.csv" || fail "B01: tiled"
  (($(wc -l <"$W/r.csv") == 9)) || fail "want 8 rows"
  one_line "7 of 8 images failed; see the error column"
  # --z: a stack with another number of planes is an error row
  expect 3 "$CLI" screen --plate "$P" --z 5 --out "$W/z.csv" --quiet
  grep -q '^A01,1,1,,AB_EINVAL,.*"A01_s1_w1.tif has 4 planes, --z says 5"' "$W/z.csv" || fail "--z"
  # a truncated file whose pages still chain: its page numbers tell
  "$CLI" make-plate --out "$W/t" --wells 1 --sites 1 --z 6 --size 64x64
  python3 - "$W/t/A01_s1.tif" <<'EOF'
import struct, sys
# cut the chain after the third page: point page 3's next-IFD offset at nothing
b = bytearray(open(sys.argv[1], "rb").read())
off = struct.unpack_from("<I", b, 4)[0]
for _ in range(2):
    n = struct.unpack_from("<H", b, off)[0]
    off = struct.unpack_from("<I", b, off + 2 + 12 * n)[0]
n = struct.unpack_from("<H", b, off)[0]
struct.pack_into("<I", b, off + 2 + 12 * n, 0)
open(sys.argv[1], "wb").write(b)
EOF
  expect 3 "$CLI" screen --plate "$W/t" --out "$W/t.csv" --quiet
  grep -q '"A01_s1.tif has 3 pages, its page numbers say 6' "$W/t.csv" || fail "page numbers"
  # a folder that cannot be read, an output that cannot be written: fatal, one line, before any work
  expect 1 "$CLI" screen --plate "$W/missing" --out "$W/r2.csv"
  one_line "cannot read plate folder .*/missing: No such file or directory"
  expect 1 "$CLI" screen --plate "$P/A01_s1_w1.tif" --out "$W/r2.csv"
  one_line "cannot read plate folder .*Not a directory"
  if [[ $(id -u) == 0 ]] && setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null; then
    chmod 0711 "$W" && chmod 0700 "$P" && chmod 0777 "$W/small"
    expect 1 setpriv --reuid=65534 --regid=65534 --clear-groups "$CLI" screen --plate "$P" --devices host \
      --out "$W/small/r3.csv"
    one_line "cannot read plate folder .*Permission denied"
    chmod 0755 "$P"
  elif [[ $(id -u) != 0 ]]; then
    chmod 0000 "$P"
    expect 1 "$CLI" screen --plate "$P" --devices host --out "$W/r3.csv"
    one_line "cannot read plate folder .*Permission denied"
    chmod 0755 "$P"
  fi
  expect 1 "$CLI" screen "${SMALL[@]}" --out "$W/no/such/dir/r.csv"
  one_line "cannot write .*/no/such/dir/r.csv: No such file or directory"
  expect 1 "$CLI" screen "${SMALL[@]}" --out /dev/full --quiet
  if [[ $(id -u) == 0 ]]; then
    one_line "cannot write /dev/full: No space left on device"
  else # its sidecar would be a new file in /dev
    one_line "cannot write /dev/full.json: Permission denied"
  fi
  # any output that cannot be written (--objects, --heatmap, --trace too) stops the run before it
  # makes a file, with the OS's reason: nothing is left that would refuse the next run
  touch "$W/afile"
  local opt
  for opt in --objects --heatmap --trace; do
    expect 1 "$CLI" screen "${SMALL[@]}" --out "$W/u.csv" "$opt" "$W/afile/x" --quiet
    one_line "cannot write .*/afile/x: Not a directory"
    [[ ! -e $W/u.csv && ! -e $W/u.json ]] || fail "$opt: a run that could not start left a file"
  done
  expect 1 "$CLI" screen "${SMALL[@]}" --out "$W/u.csv" --objects "$W/nodir/o.csv" --quiet
  one_line "cannot write .*/nodir/o.csv: No such file or directory"
  if [[ $(id -u) == 0 ]] && unshare -m true 2>/dev/null; then
    mkdir "$W/ro"
    expect 1 unshare -m bash -c 'mount -t tmpfs -o ro,size=16k none "$1" && shift && "$@"' _ "$W/ro" \
      "$CLI" screen "${SMALL[@]}" --out "$W/u.csv" --objects "$W/ro/o.csv" --quiet
    one_line "cannot write .*/ro/o.csv: Read-only file system"
    [[ ! -e $W/u.csv && ! -e $W/u.json ]] || fail "a read-only --objects: the run left a file"
  fi
  expect 0 "$CLI" screen "${SMALL[@]}" --out "$W/u.csv" --objects "$W/u-o.csv" --heatmap "$W/u.png" \
    --trace "$W/u-t.json" --quiet
  # an existing file written in place (--objects, --heatmap) needs no writable folder; a new
  # name there does (as does the sidecar, which is renamed over)
  local as=()
  if [[ $(id -u) == 0 ]]; then
    setpriv --reuid=65534 --regid=65534 --clear-groups true 2>/dev/null && as=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    chmod 0711 "$W"
  fi
  if [[ $(id -u) != 0 || ${#as[@]} != 0 ]]; then
    mkdir "$W/keep" "$W/free"
    touch "$W/keep/o.csv" "$W/keep/h.png"
    chmod 0666 "$W/keep/o.csv" "$W/keep/h.png" && chmod 0555 "$W/keep" && chmod 0777 "$W/free"
    expect 0 "${as[@]}" "$CLI" screen "${SMALL[@]}" --devices host --out "$W/free/k.csv" \
      --objects "$W/keep/o.csv" --heatmap "$W/keep/h.png" --quiet
    [[ -s $W/keep/o.csv && -s $W/keep/h.png ]] || fail "the files kept in place were not written"
    expect 1 "${as[@]}" "$CLI" screen "${SMALL[@]}" --devices host --out "$W/keep/k.csv" --quiet
    one_line "cannot write .*/keep/k.csv: Permission denied"
    chmod 0755 "$W/keep"
  fi
  # a disk that fills up during the run (a small tmpfs, where this may mount one): the run stops,
  # says so and exits 1; every row written before stays
  if [[ $(id -u) == 0 ]] && unshare -m true 2>/dev/null; then
    mkdir "$W/disk"
    local rc=0
    unshare -m bash -c 'mount -t tmpfs -o size=16k none "$1" && shift && "$@"; rc=$?; cp -r "$0"/. "$0.copy"; exit $rc' \
      "$W/disk" "$W/disk" "$CLI" screen --wells 96 --sites 2 --z 2 --size 64x64 --devices host --quiet \
      --out "$W/disk/r.csv" --objects "$W/disk/o.csv" 2>"$W/err" || rc=$?
    cat "$W/err"
    ((rc == 1)) || fail "a full disk: exit $rc, want 1"
    grep -q 'writing the results failed: No space left on device; [0-9]* rows were written before' "$W/err" ||
      fail "a full disk: no reason"
    local n
    n=$(sed -n 's/.*; \([0-9]*\) rows were written before.*/\1/p' "$W/err")
    (($(wc -l <"$W/disk.copy/r.csv") - 1 >= n - 1 && n > 0)) || fail "a full disk: rows lost ($n written)"
  else
    echo "note: cannot mount a small tmpfs here: the disk-full case is not run"
  fi
}

# Blank fields: a constant image (an empty well, a zero-filled or saturated field) has no
# foreground and no objects, with either threshold, on every device; the other images keep theirs.
case_blank_fields() {
  local P="$W/p" d
  "$CLI" make-plate --out "$P" --wells 3 --sites 1 --z 3 --size 64x64
  "${FILES[@]}" constant "$P/A01_s1.tif" 64 64 3 0
  "${FILES[@]}" constant "$P/A02_s1.tif" 64 64 3 65535
  local devs=(host)
  if ((OPENCL)); then for ((i = 0; i < $(n_opencl); i++)); do devs+=("opencl:$i"); done; fi
  for ((i = 0; i < $(n_cuda); i++)); do devs+=("cuda:$i"); done
  for d in "${devs[@]}"; do
    "$CLI" screen --plate "$P" --devices "$d" --out "$W/$d.csv" --quiet
    "$CLI" screen --plate "$P" --devices "$d" --threshold 0.01 --out "$W/$d-m.csv" --quiet
    cat "$W/$d.csv"
    for f in "$W/$d.csv" "$W/$d-m.csv"; do
      grep -q '^A01,1,1,[a-z]*:[0-9],ok,0,0.00,0,' "$f" || fail "$d: the blank field has objects or foreground"
      grep -q '^A02,1,1,[a-z]*:[0-9],ok,0,0.00,0,' "$f" || fail "$d: the saturated field has objects or foreground"
      awk -F, '$1 == "A03" && $6 > 0 { ok = 1 } END { exit !ok }' "$f" || fail "$d: A03 lost its objects"
    done
    cmp -s <(rows "$W/host.csv") <(rows "$W/$d.csv") || fail "$d differs from host"
  done
}

# A budget that holds one small chain per device: fewer stacks in flight, the same results; a
# budget that holds none is a usage error.
case_memory_limit() {
  "$CLI" screen "${SMALL[@]}" --devices host --out "$W/free.csv" --quiet
  "$CLI" screen "${SMALL[@]}" --memory-limit 600K --inflight 8 --out "$W/tight.csv" --quiet
  cmp -s <(rows "$W/free.csv") <(rows "$W/tight.csv") || fail "results differ"
  expect 2 "$CLI" screen "${SMALL[@]}" --memory-limit 64K --devices host --out "$W/none.csv" --quiet
  one_line "stack needs about .* --memory-limit 64.0 KiB holds none"
  [[ -e $W/none.csv ]] && fail "a run that cannot start wrote a results file"
  # files: one stack fits, the plate's first does not: nothing can run
  "$CLI" make-plate --out "$W/p" --wells 2 --sites 1 --z 4 --size 96x80
  expect 2 "$CLI" screen --plate "$W/p" --memory-limit 64K --devices host --out "$W/none2.csv" --quiet
  grep -q 'no device.s budget holds it' "$W/err" || fail "no reason on stderr"
}

# Interrupted runs keep every finished row; --resume finishes the plate; results files are never
# overwritten by accident.
case_resume() {
  local args=(--wells 96 --sites 4 --z 4 --size 128x128 --devices host --inflight 1 --quiet)
  "$CLI" screen "${args[@]}" --out "$W/ref.csv"
  "$CLI" screen "${args[@]}" --out "$W/r.csv" --objects "$W/o.csv" 2>"$W/err" &
  local pid=$! n=0 rc=0
  while (($(wc -l <"$W/r.csv" 2>/dev/null || echo 0) < 4)); do sleep 0.05; done
  kill -INT $pid
  wait $pid || rc=$?
  cat "$W/err"
  ((rc == 130)) || fail "interrupted: exit $rc, want 130"
  n=$(($(wc -l <"$W/r.csv") - 1))
  ((n > 0 && n < 384)) || fail "interrupted: $n rows"
  grep -q "interrupted: $n of 384 images have rows in .*--resume finishes the plate" "$W/err" || fail "no message"
  tail -c 1 "$W/r.csv" | od -c | grep -q '\\n' || fail "a torn last row"
  [[ $("${FILES[@]}" json "$W/r.json" complete) == false ]] || fail "the sidecar says complete"
  # without --resume or --overwrite the file is left alone
  expect 2 "$CLI" screen "${args[@]}" --out "$W/r.csv"
  one_line "r.csv exists: --resume continues it, --overwrite replaces it"
  # other parameters: refused
  expect 2 "$CLI" screen "${args[@]}" --threshold 0.4 --out "$W/r.csv" --resume
  one_line "made with other pipeline parameters"
  # a torn last line (a crash mid-write) is dropped and that image redone
  printf 'A12,4,1,host:0,ok,3' >>"$W/r.csv"
  expect 0 "$CLI" screen "${args[@]}" --out "$W/r.csv" --objects "$W/o.csv" --resume
  (($(wc -l <"$W/r.csv") == 385)) || fail "resumed: want 384 rows, have $(($(wc -l <"$W/r.csv") - 1))"
  cmp -s <(rows "$W/ref.csv") <(rows "$W/r.csv") || { diff <(rows "$W/ref.csv") <(rows "$W/r.csv") | head; fail "resumed results differ"; }
  [[ $("${FILES[@]}" json "$W/r.json" complete) == true ]] || fail "the sidecar says incomplete"
  [[ $("${FILES[@]}" json "$W/r.json" images.from_earlier_runs) == "$n" ]] || fail "earlier rows not counted"
  # every image's objects once: as many object rows per image as its objects column says
  awk -F, 'NR > 1 { want[$1 "," $2] = $6 } END { for (k in want) print k, want[k] }' "$W/r.csv" | sort >"$W/want"
  awk -F, 'NR > 1 { n[$1 "," $2]++ } END { for (k in n) print k, n[k] }' "$W/o.csv" | sort >"$W/have"
  join -a1 -e 0 -o 0,1.2,2.2 "$W/want" "$W/have" | awk '$2 != $3 { bad++ } END { exit bad > 0 }' ||
    fail "object rows do not match the objects column after resuming"
  # failed images are redone: fix a bad file and resume
  "$CLI" make-plate --out "$W/p" --wells 2 --sites 1 --z 4 --size 64x64
  cp "$W/p/A02_s1.tif" "$W/good.tif"
  echo junk >"$W/p/A02_s1.tif"
  expect 3 "$CLI" screen --plate "$W/p" --out "$W/f.csv" --quiet
  cp "$W/good.tif" "$W/p/A02_s1.tif"
  expect 0 "$CLI" screen --plate "$W/p" --out "$W/f.csv" --quiet --resume
  (($(grep -c ',ok,' "$W/f.csv") == 2 && $(wc -l <"$W/f.csv") == 3)) || { cat "$W/f.csv"; fail "the fixed image was not redone"; }
  expect 0 "$CLI" screen --plate "$W/p" --out "$W/f.csv" --quiet --overwrite
}

# The per-object table, the heatmap and the sidecar: what was made, and how.
case_outputs() {
  "$CLI" make-plate --out "$W/p" --wells 6 --sites 2 --channels 2 --z 4 --size 96x96
  rm "$W/p/A03_s1_w1.tif" "$W/p/A03_s2_w1.tif" # A03: every row failed (a red cross)
  rm "$W/p"/A05_* # A05: no rows (grey)
  expect 3 "$CLI" screen --plate "$W/p" --out "$W/r.csv" --objects "$W/o.csv" --heatmap "$W/h.png" \
    --heatmap-column object_intensity_2 --segment 1 --threshold otsu --filter-size 4 --min-size 12
  cat "$W/out"
  for f in "$W/r.csv" "$W/o.csv" "$W/h.png" "$W/r.json"; do
    grep -q "$(basename "$f")" "$W/out" || fail "the summary does not name $f"
  done
  [[ $(head -1 "$W/o.csv") == well,site,timepoint,object,area,centroid_x,centroid_y,mean_intensity_1,mean_intensity_2 ]] ||
    fail "objects header"
  awk -F, 'NR > 1 && ($5 < 12 || $6 < 0 || $6 > 95 || $7 < 0 || $7 > 95) { bad++ } END { exit bad > 0 }' "$W/o.csv" ||
    fail "an object is too small or outside the image"
  local total
  total=$(awk -F, 'NR > 1 && $5 == "ok" { n += $6 } END { print n }' "$W/r.csv")
  (($(wc -l <"$W/o.csv") - 1 == total)) || fail "object rows $(($(wc -l <"$W/o.csv") - 1)) != objects $total"
  "${FILES[@]}" png "$W/h.png" >"$W/png"
  cat "$W/png"
  grep -Eq '^colours ([5-9]|[0-9]{2,})' "$W/png" || fail "the heatmap has too few colours"
  grep -Eq '^grey [1-9]' "$W/png" || fail "no grey (no data) cells"
  # the sidecar records how the results were made
  local j=("${FILES[@]}" json "$W/r.json")
  [[ $("${j[@]}" pipeline.threshold) == otsu && $("${j[@]}" pipeline.filter_size) == 4 &&
    $("${j[@]}" pipeline.min_size) == 12 && $("${j[@]}" pipeline.segmentation_channel) == 1 &&
    $("${j[@]}" pipeline.channels) == '["1", "2"]' && $("${j[@]}" files.heatmap) == "$W/h.png" ]] ||
    { cat "$W/r.json"; fail "the sidecar misses a parameter"; }
  # segmenting the other channel changes the objects
  expect 3 "$CLI" screen --plate "$W/p" --out "$W/r2.csv" --segment 2 --quiet
  cmp -s <(rows "$W/r.csv" | cut -d, -f1-5) <(rows "$W/r2.csv" | cut -d, -f1-5) && fail "--segment 2 changed nothing"
  expect 2 "$CLI" screen --plate "$W/p" --out "$W/r3.csv" --segment 3
  one_line "--segment 3: the plate's channels are 1, 2"
  expect 2 "$CLI" screen --plate "$W/p" --out "$W/r3.csv" --heatmap "$W/x.png" --heatmap-column wells
  one_line "--heatmap-column wells: not a numeric column"
  expect 2 "$CLI" screen --plate "$W/p" --out "$W/r3.csv" --trace "$W/r3.json"
  one_line "its sidecar and --trace are both .*/r3.json: give them different files"
  expect 2 "$CLI" screen --plate "$W/p" --out "$W/r3.csv" --objects "$W/r3.csv"
  one_line "--out and --objects are both"
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
  for step in load project filter identify; do
    python3 "$HERE/trace_check.py" "$W/t.json" $step >"$W/sum"
    grep -qx "named 8" "$W/sum" || fail "want 8 $step events"
  done
}

"case_$case_"
