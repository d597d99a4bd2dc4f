# bench/run.d/cuda.sh: arraybridge on CUDA device 0 against plain CUDA runtime calls on the same
# GPU, in the same process (bench/bench_cuda.c), and torch where it has CUDA. Without a GPU (or
# a driver, or a build with CUDA) each benchmark prints a one-line note on stderr, no JSON, and
# succeeds.
AB_BENCH_DEFAULT+=(cuda_h2d cuda_d2h cuda_stack cuda_convert screen_gpu)

# 0 when bench_cuda is built and sees a GPU; else a note and 1.
cuda_ready() {
  local name=$1
  if ! has_target bench_cuda; then
    log "$name: no CUDA backend in this build (nvcc not found?), skipped"
    return 1
  fi
  build_targets bench_cuda
  local rc=0
  "$BENCH_BIN/bench_cuda" probe 2>/dev/null || rc=$?
  if ((rc == 77)); then
    log "$name: no CUDA device (no GPU or no driver), skipped"
    return 1
  fi
  ((rc == 0)) || die "$name: bench_cuda probe failed (exit $rc)"
}

# cuda_transfer NAME MODE: pageable host memory through the runtime, against cudaMemcpy from the
# same pageable memory and from pinned memory (the limit).
cuda_transfer() {
  local name=$1 mode=$2
  cuda_ready "$name" || return 0
  run_raw "$TMP/$name" "$BENCH_BIN/bench_cuda" "$mode"
  log "ours: GB/s $(raw_all "$TMP/$name" ours_gbps)"
  log "cudaMemcpy pageable: GB/s $(raw_all "$TMP/$name" pageable_gbps)"
  log "cudaMemcpy pinned: GB/s $(raw_all "$TMP/$name" pinned_gbps)"
  local ours
  ours=$(raw_median "$TMP/$name" ours_gbps)
  emit_json "$name" gb_per_s "$ours" "cudaMemcpy pageable" "$(raw_median "$TMP/$name" pageable_gbps)" higher
  emit_json "$name" gb_per_s "$ours" "cudaMemcpy pinned" "$(raw_median "$TMP/$name" pinned_gbps)" higher
}

bench_cuda_h2d() { cuda_transfer cuda_h2d h2d; }
bench_cuda_d2h() { cuda_transfer cuda_d2h d2h; }

# cuda_stack: 1000 host slices of 512x512 uint16 onto the GPU (host threads fill pinned chunks,
# each sent while the next fills), against a cudaMemcpy per slice, against a cudaMemcpy of the
# same bytes from pinned memory (the limit), and against torch.stack(slices).cuda() when python3
# has torch with CUDA.
bench_cuda_stack() {
  cuda_ready cuda_stack || return 0
  run_raw "$TMP/cu_stack" "$BENCH_BIN/bench_cuda" stack
  log "ours: GB/s $(raw_all "$TMP/cu_stack" ours_gbps)"
  log "cudaMemcpy per slice: GB/s $(raw_all "$TMP/cu_stack" loop_gbps)"
  log "cudaMemcpy pinned: GB/s $(raw_all "$TMP/cu_stack" pinned_gbps)"
  local ours
  ours=$(raw_median "$TMP/cu_stack" ours_gbps)
  emit_json cuda_stack gb_per_s "$ours" "cudaMemcpy per slice" "$(raw_median "$TMP/cu_stack" loop_gbps)" higher
  emit_json cuda_stack gb_per_s "$ours" "cudaMemcpy pinned" "$(raw_median "$TMP/cu_stack" pinned_gbps)" higher
  if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    log "cuda_stack: no python torch with CUDA, no torch line"
    return 0
  fi
  python3 - "${BENCH_SLICES:-1000}" "${BENCH_REPS:-7}" >"$TMP/cu_stack_torch" <<'PY'
import sys, time, numpy as np, torch
n, reps = int(sys.argv[1]), int(sys.argv[2])
sl = [torch.from_numpy((np.arange(512 * 512, dtype=np.uint16) * (i + 7)).reshape(512, 512)) for i in range(n)]
for rep in range(-1, reps):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    v = torch.stack(sl).cuda()
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    del v
    if rep >= 0:
        print("torch_gbps %.4f" % (n * 512 * 512 * 2 / (t1 - t0) / 1e9))
PY
  emit_json cuda_stack gb_per_s "$ours" "torch-$(python3 -c 'import torch; print(torch.__version__)') stack().cuda()" \
    "$(raw_median "$TMP/cu_stack_torch" torch_gbps)" higher
}

# cuda_convert: a small host -> GPU conversion (64 KiB) through the runtime (submit, worker,
# staging, completion by event polling) against cudaMemcpyAsync + cudaStreamSynchronize.
bench_cuda_convert() {
  cuda_ready cuda_convert || return 0
  run_raw "$TMP/cu_convert" "$BENCH_BIN/bench_cuda" convert
  log "ours: us $(raw_all "$TMP/cu_convert" ours_us)"
  log "raw: us $(raw_all "$TMP/cu_convert" raw_us)"
  emit_json cuda_convert latency_us "$(raw_median "$TMP/cu_convert" ours_us)" \
    "cudaMemcpyAsync+sync" "$(raw_median "$TMP/cu_convert" raw_us)" lower
}

# screen_gpu: `arraybridge screen` on CUDA device 0 alone against the same plate on the host
# device alone (one worker per core), BENCH_ROUNDS (3) alternating rounds after a warm-up, on the
# TIFF plate bench/run.d/screen.sh writes (BENCH_SCREEN_ARGS). ratio = cuda / host images per
# second.
bench_screen_gpu() {
  cuda_ready screen_gpu || return 0
  build_targets arraybridge_cli
  if ! "$BUILD/cli/arraybridge" devices | awk '$1 == "cuda" && $NF == "yes"' | grep -q .; then
    log "screen_gpu: this build has no CUDA screening steps, skipped"
    return 0
  fi
  screen_env
  screen_plate
  local r rounds=${BENCH_ROUNDS:-3}
  screen_once "$TMP/sg_warm" --devices cuda:0 # the plate in the page cache, the kernels loaded
  for ((r = 1; r <= rounds; r++)); do
    screen_once "$TMP/sg_cuda" --devices cuda:0
    screen_once "$TMP/sg_host" --devices host
  done
  log "screen_gpu cuda:0: images/s $(raw_all "$TMP/sg_cuda" images_per_s)"
  log "screen_gpu host: images/s $(raw_all "$TMP/sg_host" images_per_s)"
  emit_json screen_gpu images_per_s "$(raw_median "$TMP/sg_cuda" images_per_s)" \
    "host device alone ($(nproc) cores)" "$(raw_median "$TMP/sg_host" images_per_s)" higher
}
