# bench/run.d/screen.sh: the screening job and the cost of tracing.
#
#   screen          plate throughput (images/s) of `arraybridge screen` on every device at once,
#                   against the sum of each device's throughput alone through the same kernels
#                   (one process per device: --devices host, opencl:0, ...). ratio = all / sum.
#                   On a machine whose OpenCL devices are CPU devices sharing the host's cores
#                   (pocl), the devices alone each have the whole machine, so the sum counts the
#                   cores several times over: the ratio there measures contention, not overhead.
#   trace_overhead  empty-task throughput (bench_task_overhead's loop) with tracing on against
#                   tracing off, same program, alternating processes. ratio = on / off.
#
# BENCH_ROUNDS (default 3) rounds each; the JSON quotes medians. BENCH_SCREEN_ARGS overrides the
# plate (default: --wells 24 --sites 2 --z 16 --size 512x512).
AB_BENCH_DEFAULT+=(screen trace_overhead)

screen_env() {
  export POCL_DEVICES="${POCL_DEVICES:-pthread pthread pthread}" POCL_MAX_PTHREAD_COUNT="${POCL_MAX_PTHREAD_COUNT:-1}"
  export POCL_CACHE_DIR="${POCL_CACHE_DIR:-$BUILD/pocl-cache}"
  mkdir -p "$POCL_CACHE_DIR"
}

# screen_once OUTFILE DEVICES: one run; appends "images_per_s <v>" to OUTFILE.
screen_once() {
  local out=$1 devs=$2 cli="$BUILD/cli/arraybridge" args
  read -r -a args <<<"${BENCH_SCREEN_ARGS:---wells 24 --sites 2 --z 16 --size 512x512}"
  log "screen: --devices $devs"
  timeout -k 10 "${BENCH_TIMEOUT:-600}" "$cli" screen "${args[@]}" --devices "$devs" --out "$TMP/screen.csv" \
    2>/dev/null >"$TMP/screen.out" || { cat "$TMP/screen.out" >&2; die "arraybridge screen --devices $devs failed"; }
  awk '$1 == "throughput:" { print "images_per_s", $2 }' "$TMP/screen.out" | tee -a "$out" >&2
}

bench_screen() {
  build_targets arraybridge_cli
  screen_env
  local devs=(host) d r rounds=${BENCH_ROUNDS:-3}
  while read -r kind index _; do
    [[ $kind == opencl ]] && devs+=("opencl:$index")
  done < <("$BUILD/cli/arraybridge" devices)
  screen_once "$TMP/screen_all" all # a warm-up: kernels built and cached by pocl
  : >"$TMP/screen_all"
  for ((r = 1; r <= rounds; r++)); do
    screen_once "$TMP/screen_all" all
    for d in "${devs[@]}"; do screen_once "$TMP/screen_$d" "$d"; done
  done
  local sum=0 one
  for d in "${devs[@]}"; do
    one=$(raw_median "$TMP/screen_$d" images_per_s)
    log "screen $d alone: images/s $(raw_all "$TMP/screen_$d" images_per_s)-> median $one"
    sum=$(awk -v a="$sum" -v b="$one" 'BEGIN { print a + b }')
  done
  log "screen all: images/s $(raw_all "$TMP/screen_all" images_per_s)"
  emit_json screen images_per_s "$(raw_median "$TMP/screen_all" images_per_s)" \
    "sum of ${#devs[@]} devices alone (${devs[*]})" "$sum" higher
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
