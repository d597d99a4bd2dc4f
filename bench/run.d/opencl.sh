# bench/run.d/opencl.sh: arraybridge on an OpenCL device against raw OpenCL calls on the same
# device, in the same process (bench/bench_opencl.c). On this machine the devices are pocl's
# CPU devices: three of them, one thread each, as the tests use.
AB_BENCH_DEFAULT+=(opencl_stack opencl_convert)

opencl_env() {
  export POCL_DEVICES="${POCL_DEVICES:-pthread pthread pthread}" POCL_MAX_PTHREAD_COUNT="${POCL_MAX_PTHREAD_COUNT:-1}"
  export POCL_CACHE_DIR="${POCL_CACHE_DIR:-$BUILD/pocl-cache}"
  mkdir -p "$POCL_CACHE_DIR"
}

# opencl_stack: 1000 host slices of 512x512 uint16 stacked onto OpenCL device 0, against one
# clEnqueueWriteBuffer of the same bytes already contiguous (the limit) and against a loop of
# per-slice clEnqueueWriteBuffer calls (the naive way).
bench_opencl_stack() {
  has_target bench_opencl || { log "opencl_stack: no OpenCL backend in this build, skipped"; return 0; }
  build_targets bench_opencl
  opencl_env
  run_raw "$TMP/ocl_stack" "$BENCH_BIN/bench_opencl" stack
  log "ours: GB/s $(raw_all "$TMP/ocl_stack" ours_gbps)"
  log "single write: GB/s $(raw_all "$TMP/ocl_stack" single_gbps)"
  log "per-slice writes: GB/s $(raw_all "$TMP/ocl_stack" loop_gbps)"
  local ours
  ours=$(raw_median "$TMP/ocl_stack" ours_gbps)
  emit_json opencl_stack gb_per_s "$ours" "clEnqueueWriteBuffer contiguous" \
    "$(raw_median "$TMP/ocl_stack" single_gbps)" higher
  emit_json opencl_stack gb_per_s "$ours" "clEnqueueWriteBuffer per slice" \
    "$(raw_median "$TMP/ocl_stack" loop_gbps)" higher
}

# opencl_convert: a small host -> device conversion (64 KiB) through the runtime (submit, worker,
# copy, completion) against the blocking clEnqueueWriteBuffer doing the same copy.
bench_opencl_convert() {
  has_target bench_opencl || { log "opencl_convert: no OpenCL backend in this build, skipped"; return 0; }
  build_targets bench_opencl
  opencl_env
  run_raw "$TMP/ocl_convert" "$BENCH_BIN/bench_opencl" convert
  log "ours: us $(raw_all "$TMP/ocl_convert" ours_us)"
  log "raw: us $(raw_all "$TMP/ocl_convert" raw_us)"
  emit_json opencl_convert latency_us "$(raw_median "$TMP/ocl_convert" ours_us)" \
    "clEnqueueWriteBuffer blocking" "$(raw_median "$TMP/ocl_convert" raw_us)" lower
}
