# bench/run.d/screen.sh: the screening job against its peers, and the cost of tracing.
#
#   screen               plate throughput (images/s) of `arraybridge screen` on every device at
#                        once, against the best single device (each device alone, --devices
#                        host, opencl:0, ...; the best median). ratio = all / best: below 1, the
#                        scheduling loses what a single device would have done.
#   screen_cellprofiler  the same pipeline built from CellProfiler's module functions
#                        (bench/py/cellprofiler_screen.py, in .venv-cp), one process per core as
#                        CellProfiler's batch mode runs, against `arraybridge screen` (every
#                        device, as the job runs by default), images/s, on the same TIFF plate.
#                        The JSON line also gives the object counts' relative difference per
#                        image (|ours - peer| / peer): its median and its worst.
#   screen_roofline      the host chain of one stack: project, filter, normalise and identify
#                        (threshold, label, measure), from a trace of `--devices host
#                        --host-workers 1`, the sum of each step's median (on the host the
#                        projection reads the loaded slices in place, no stacked volume), against
#                        its memory-bandwidth bound: the memory traffic the steps must make, each
#                        reading every byte of its inputs once and writing every byte of its
#                        output once (project: the z slices read, a plane written; filter: a
#                        plane each way; normalise: a plane each way; identify: the normalised
#                        plane and every channel's projection read, nothing image-sized written),
#                        at the memory traffic of a one-thread memcpy of a stack's bytes in the
#                        same run (bytes read plus bytes written per second: twice the bytes
#                        copied). Scratch a step keeps for itself is not counted. ratio = bound /
#                        chain: 0.5 is within 2x of the bound. The log also gives the figure
#                        without identify, and the older, looser one that counted memcpy's
#                        bytes copied only (twice the bound).
#   trace_overhead       empty-task throughput (bench_task_overhead's loop) with tracing on against
#                        tracing off, same program, alternating processes. ratio = on / off.
#
# The plate is written once as TIFFs (make-plate; BENCH_SCREEN_ARGS, default --wells 24 --sites 2
# --z 16 --size 512x512) so that every side reads the same files. BENCH_ROUNDS (default 3)
# rounds, the sides alternating within each; the JSON quotes medians. BENCH_CP_PROCESSES: the
# peer's processes (default: the cores).
AB_BENCH_DEFAULT+=(screen screen_cellprofiler screen_roofline trace_overhead)

SCREEN_CP_VENV="${AB_CP_VENV:-$ROOT/.venv-cp}"

screen_env() {
  export POCL_DEVICES="${POCL_DEVICES:-pthread pthread pthread}" POCL_MAX_PTHREAD_COUNT="${POCL_MAX_PTHREAD_COUNT:-1}"
  export POCL_CACHE_DIR="${POCL_CACHE_DIR:-$BUILD/pocl-cache}"
  mkdir -p "$POCL_CACHE_DIR"
}

# screen_plate: the benchmark plate as TIFFs in $TMP/plate (once per bench/run).
screen_plate() {
  [[ -d $TMP/plate ]] && return 0
  local args
  read -r -a args <<<"${BENCH_SCREEN_ARGS:---wells 24 --sites 2 --z 16 --size 512x512}"
  log "screen: writing the plate (${args[*]})"
  "$BUILD/cli/arraybridge" make-plate --out "$TMP/plate" "${args[@]}" >&2
}

# screen_once OUTFILE [SCREEN OPTIONS...]: one run on the plate; appends "images_per_s <v>".
screen_once() {
  local out=$1
  shift
  log "screen: $*"
  timeout -k 10 "${BENCH_TIMEOUT:-600}" "$BUILD/cli/arraybridge" screen --plate "$TMP/plate" "$@" \
    --out "$TMP/screen.csv" --overwrite 2>"$TMP/screen.err" >"$TMP/screen.out" ||
    { cat "$TMP/screen.out" "$TMP/screen.err" >&2; die "arraybridge screen $* failed"; }
  awk '$1 == "throughput:" { print "images_per_s", $2 }' "$TMP/screen.out" | tee -a "$out" >&2
}

bench_screen() {
  build_targets arraybridge_cli
  screen_env
  screen_plate
  # A run is short (48 images in about 0.1 s on the host alone), so seven rounds by default. Each
  # round runs `all` and the host alone back to back, `all` first in odd rounds and second in
  # even ones, so neither always follows the other devices' runs (pocl's threads leave the
  # caches cold); then the other devices alone.
  local devs=(host) d r rounds=${BENCH_ROUNDS:-7}
  while read -r kind index _; do
    [[ $kind == opencl || $kind == cuda ]] && devs+=("$kind:$index")
  done < <("$BUILD/cli/arraybridge" devices)
  screen_once /dev/null --devices all # a warm-up: kernels built and cached by pocl, the plate in the page cache
  for ((r = 1; r <= rounds; r++)); do
    ((r % 2 == 1)) && screen_once "$TMP/screen_all" --devices all
    screen_once "$TMP/screen_host" --devices host
    ((r % 2 == 0)) && screen_once "$TMP/screen_all" --devices all
    for d in "${devs[@]:1}"; do screen_once "$TMP/screen_$d" --devices "$d"; done
  done
  local best=0 best_dev="" one
  for d in "${devs[@]}"; do
    one=$(raw_median "$TMP/screen_$d" images_per_s)
    log "screen $d alone: images/s $(raw_all "$TMP/screen_$d" images_per_s)-> median $one"
    if awk -v a="$one" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$one best_dev=$d; fi
  done
  log "screen all: images/s $(raw_all "$TMP/screen_all" images_per_s)"
  emit_json screen images_per_s "$(raw_median "$TMP/screen_all" images_per_s)" \
    "best single device ($best_dev, of ${devs[*]})" "$best" higher
}

bench_screen_cellprofiler() {
  build_targets arraybridge_cli
  [[ -x $SCREEN_CP_VENV/bin/python ]] || die "no $SCREEN_CP_VENV: run scripts/setup.sh bench"
  screen_env
  screen_plate
  local r rounds=${BENCH_ROUNDS:-3} procs=${BENCH_CP_PROCESSES:-$(nproc)}
  screen_once /dev/null # warm-up
  for ((r = 1; r <= rounds; r++)); do
    screen_once "$TMP/cp_ours"
    cp "$TMP/screen.csv" "$TMP/cp_ours.csv"
    log "screen_cellprofiler: the peer, $procs processes"
    run_raw "$TMP/cp_peer" "$SCREEN_CP_VENV/bin/python" "$ROOT/bench/py/cellprofiler_screen.py" "$TMP/plate" \
      "$TMP/cp_peer.csv" --processes "$procs"
  done
  log "ours: images/s $(raw_all "$TMP/cp_ours" images_per_s); peer: $(raw_all "$TMP/cp_peer" peer_images_per_s)"
  local ours peer version counts
  ours=$(raw_median "$TMP/cp_ours" images_per_s)
  peer=$(raw_median "$TMP/cp_peer" peer_images_per_s)
  version=$(awk '$1 == "peer_version" { print $2; exit }' "$TMP/cp_peer")
  # the object counts, image by image: "median worst images"
  counts=$(python3 - "$TMP/cp_ours.csv" "$TMP/cp_peer.csv" <<'EOF'
import csv, statistics, sys
ours = {(r["well"], r["site"]): int(r["objects"]) for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "ok"}
peer = {(r["well"], r["site"]): int(r["objects"]) for r in csv.DictReader(open(sys.argv[2]))}
d = [abs(ours[k] - peer[k]) / max(peer[k], 1) for k in peer if k in ours]
if len(d) != len(peer):
    sys.exit("the two sides screened different images")
print(statistics.median(d), max(d), len(d))
EOF
  ) || die "screen_cellprofiler: object counts not comparable"
  read -r cmed cworst cn <<<"$counts"
  log "object counts over $cn images: median relative difference $cmed, worst $cworst"
  emit_json screen_cellprofiler images_per_s "$ours" "$version, $procs processes" "$peer" higher |
    sed "s/}\$/,\"count_median_rel_diff\":$cmed,\"count_worst_rel_diff\":$cworst,\"images\":$cn}/"
}

bench_screen_roofline() {
  build_targets arraybridge_cli bench_host_stack
  screen_env
  screen_plate
  local r rounds=${BENCH_ROUNDS:-3} args z=16 h=512 w=512 nch=1 i
  read -r -a args <<<"${BENCH_SCREEN_ARGS:---wells 24 --sites 2 --z 16 --size 512x512}"
  for ((i = 0; i + 1 < ${#args[@]}; i++)); do # the stack's shape, from the plate's arguments
    [[ ${args[i]} == --z ]] && z=${args[i + 1]}
    [[ ${args[i]} == --channels ]] && nch=${args[i + 1]}
    [[ ${args[i]} == --size ]] && w=${args[i + 1]%x*} h=${args[i + 1]#*x}
  done
  local steps=(project filter normalise identify)
  for ((r = 1; r <= rounds; r++)); do
    log "screen_roofline: round $r of $rounds"
    timeout -k 10 "${BENCH_TIMEOUT:-600}" "$BUILD/cli/arraybridge" screen --plate "$TMP/plate" --devices host \
      --host-workers 1 --out "$TMP/roof.csv" --overwrite --quiet --trace "$TMP/roof-trace.json" >&2 ||
      die "arraybridge screen --trace failed"
    python3 "$ROOT/bench/py/trace_steps.py" "$TMP/roof-trace.json" "${steps[@]}" >>"$TMP/roof"
    python3 "$ROOT/bench/py/trace_steps.py" "$TMP/roof-trace.json" project filter normalise |
      sed 's/^chain_ms/chain3_ms/' | grep '^chain3_ms' >>"$TMP/roof"
    BENCH_SLICES=$z BENCH_HEIGHT=$h BENCH_WIDTH=$w BENCH_REPS=${BENCH_REPS:-7} \
      run_raw "$TMP/roof_mem" "$BENCH_BIN/bench_host_stack"
  done
  local chain chain3 copy plane bytes bytes3 bound bound3
  chain=$(raw_median "$TMP/roof" chain_ms)
  chain3=$(raw_median "$TMP/roof" chain3_ms)
  copy=$(raw_median "$TMP/roof_mem" peer_gb_per_s)
  for s in "${steps[@]}"; do
    log "screen_roofline: $s ms $(awk -v s=$s '$1 == "step_ms" && $2 == s { printf "%s ", $3 }' "$TMP/roof")"
  done
  plane=$((h * w * 2))
  # read + written: project z planes + 1, filter 1 + 1, normalise 1 + 1, identify 1 + nch
  bytes3=$((z * plane + plane + 4 * plane))
  bytes=$((bytes3 + (1 + nch) * plane))
  # memcpy's traffic: each byte copied is read once and written once
  bound=$(awk -v b="$bytes" -v g="$copy" 'BEGIN { printf "%.6g", b / (2 * g * 1e9) * 1e3 }')
  bound3=$(awk -v b="$bytes3" -v g="$copy" 'BEGIN { printf "%.6g", b / (2 * g * 1e9) * 1e3 }')
  log "screen_roofline: chain ms $(raw_all "$TMP/roof" chain_ms)-> median $chain; memcpy GB/s copied" \
    "$(raw_all "$TMP/roof_mem" peer_gb_per_s)-> median $copy ($(awk -v g="$copy" 'BEGIN { print 2 * g }') GB/s of traffic);" \
    "bound $bound ms for $bytes bytes of traffic, ratio $(awk -v b="$bound" -v c="$chain" 'BEGIN { printf "%.3g", b / c }')"
  log "screen_roofline: without identify: chain ms $(raw_all "$TMP/roof" chain3_ms)-> median $chain3; bound $bound3 ms" \
    "for $bytes3 bytes, ratio $(awk -v b="$bound3" -v c="$chain3" 'BEGIN { printf "%.3g", b / c }')"
  log "screen_roofline: counting memcpy's bytes copied only (the looser reading): ratio" \
    "$(awk -v b="$bound" -v c="$chain" 'BEGIN { printf "%.3g", 2 * b / c }')"
  emit_json screen_roofline chain_ms "$chain" \
    "memory traffic bound: $bytes bytes read+written (project, filter, normalise, identify, one stack) at memcpy's $(awk -v g="$copy" 'BEGIN { print 2 * g }') GB/s read+written" \
    "$bound" lower
}

bench_trace_overhead() {
  build_targets bench_task_overhead
  local r rounds=${BENCH_ROUNDS:-3}
  for ((r = 1; r <= rounds; r++)); do
    for t in 0 1; do
      BENCH_TRACE=$t BENCH_REPS=${BENCH_REPS:-3} BENCH_RT_ITERS=1 BENCH_RT_REPS=1 \
        run_raw "$TMP/trace_$t" "$BENCH_BIN/bench_task_overhead"
    done
  done
  log "tracing off: tasks/s $(raw_all "$TMP/trace_0" tasks_per_s)"
  log "tracing on: tasks/s $(raw_all "$TMP/trace_1" tasks_per_s)"
  emit_json trace_overhead tasks_per_s "$(raw_median "$TMP/trace_1" tasks_per_s)" "tracing off" \
    "$(raw_median "$TMP/trace_0" tasks_per_s)" higher
}
