# bench/run.d/python.sh: the Python package against its peers, in the same run.
#   py_executor  arraybridge.Executor vs concurrent.futures.ThreadPoolExecutor (same worker
#                count, same process): submit -> result round trip, and 100k-task throughput
#   py_convert   convert_memory numpy -> torch -> numpy on a 64x64 array, vs arraybridge from PyPI
#   py_stack     stack_slices of 1000 slices of 512x512 uint16, vs arraybridge from PyPI
#   py_screen    the Python screening pipeline, vs arraybridge from PyPI + ThreadPoolExecutor
# PyPI's arraybridge has our import name, so it runs in its own venv (.venv-peer) in its own
# process; rounds alternate ours and peer. The venvs come from scripts/setup.sh.
AB_BENCH_DEFAULT+=(py_executor py_convert py_stack)

PY_VENV="${AB_VENV:-$ROOT/.venv}"
PY_PEER_VENV="${AB_PEER_VENV:-$ROOT/.venv-peer}"
PY_BUILD="${AB_BENCH_PY_BUILD_DIR:-$ROOT/build/bench-python}"

# python_build: the extension, Release, jemalloc off (it cannot be dlopened), into $PY_BUILD.
python_build() {
  [[ -x $PY_VENV/bin/python ]] || die "no $PY_VENV: run scripts/setup.sh"
  [[ -n ${PY_BUILT:-} ]] && return 0
  if [[ "${AB_BENCH_NO_BUILD:-0}" != 1 ]]; then
    log "building the Python extension in $PY_BUILD"
    cmake -S "$ROOT" -B "$PY_BUILD" -DCMAKE_BUILD_TYPE=Release -DAB_WITH_JEMALLOC=OFF -DAB_BUILD_PYTHON=ON \
      -DAB_BUILD_TESTS=OFF -DAB_BUILD_BENCH=OFF -DPython3_EXECUTABLE="$PY_VENV/bin/python" >&2
    cmake --build "$PY_BUILD" -j "$JOBS" --target ab_python >&2
  fi
  PY_BUILT=1
}


bench_py_executor() {
  python_build
  run_raw "$TMP/py_executor" env PYTHONPATH="$PY_BUILD/python" "$PY_VENV/bin/python" "$ROOT/bench/py/executor.py"
  log "ours: round trip us $(raw_all "$TMP/py_executor" ours_rt_us), tasks/s $(raw_all "$TMP/py_executor" ours_tps)"
  log "ThreadPoolExecutor: round trip us $(raw_all "$TMP/py_executor" peer_rt_us), tasks/s $(raw_all "$TMP/py_executor" peer_tps)"
  local workers=${BENCH_PY_WORKERS:-2}
  emit_json py_executor roundtrip_us "$(raw_median "$TMP/py_executor" ours_rt_us)" \
    "ThreadPoolExecutor($workers)" "$(raw_median "$TMP/py_executor" peer_rt_us)" lower
  emit_json py_executor tasks_per_s "$(raw_median "$TMP/py_executor" ours_tps)" \
    "ThreadPoolExecutor($workers)" "$(raw_median "$TMP/py_executor" peer_tps)" higher
}

# One round = ours then the peer, each a process running BENCH_PY_INNER (2) repetitions.
py_convert_stack_rounds() {
  [[ -f $TMP/py_cs.done ]] && return 0
  python_build
  [[ -x $PY_PEER_VENV/bin/python ]] || die "no $PY_PEER_VENV: run scripts/setup.sh"
  local r rounds=${BENCH_ROUNDS:-3}
  for ((r = 1; r <= rounds; r++)); do
    log "py_convert/py_stack: round $r of $rounds"
    BENCH_ROUNDS=${BENCH_PY_INNER:-2} run_raw "$TMP/py_cs" env PYTHONPATH="$PY_BUILD/python" \
      "$PY_VENV/bin/python" "$ROOT/bench/py/convert_stack.py" ours
    BENCH_ROUNDS=${BENCH_PY_INNER:-2} run_raw "$TMP/py_cs" env -u PYTHONPATH \
      "$PY_PEER_VENV/bin/python" "$ROOT/bench/py/convert_stack.py" peer
  done
  touch "$TMP/py_cs.done"
}

peer_name() { "$PY_PEER_VENV/bin/python" -c 'import importlib.metadata as m; print("arraybridge-" + m.version("arraybridge") + " (PyPI)")'; }

bench_py_convert() {
  py_convert_stack_rounds
  log "ours: us $(raw_all "$TMP/py_cs" ours_convert_us); peer: us $(raw_all "$TMP/py_cs" peer_convert_us)"
  emit_json py_convert roundtrip_us "$(raw_median "$TMP/py_cs" ours_convert_us)" "$(peer_name)" \
    "$(raw_median "$TMP/py_cs" peer_convert_us)" lower
}

bench_py_stack() {
  py_convert_stack_rounds
  log "ours: ms $(raw_all "$TMP/py_cs" ours_stack_ms); peer: ms $(raw_all "$TMP/py_cs" peer_stack_ms)"
  emit_json py_stack stack_ms "$(raw_median "$TMP/py_cs" ours_stack_ms)" "$(peer_name)" \
    "$(raw_median "$TMP/py_cs" peer_stack_ms)" lower
}

# py_screen: the Python screening pipeline (examples/screen_pipeline.py) on arraybridge.Executor
# against arraybridge from PyPI plus ThreadPoolExecutor doing the same work; rounds alternate.
AB_BENCH_DEFAULT+=(py_screen)

bench_py_screen() {
  python_build
  [[ -x $PY_PEER_VENV/bin/python ]] || die "no $PY_PEER_VENV: run scripts/setup.sh"
  local r rounds=${BENCH_ROUNDS:-3}
  for ((r = 1; r <= rounds; r++)); do
    log "py_screen: round $r of $rounds"
    BENCH_ROUNDS=1 run_raw "$TMP/py_screen" env PYTHONPATH="$PY_BUILD/python" \
      "$PY_VENV/bin/python" "$ROOT/bench/py/screen.py" ours
    BENCH_ROUNDS=1 run_raw "$TMP/py_screen" env -u PYTHONPATH "$PY_PEER_VENV/bin/python" "$ROOT/bench/py/screen.py" peer
  done
  log "ours: images/s $(raw_all "$TMP/py_screen" ours_images_per_s); peer: $(raw_all "$TMP/py_screen" peer_images_per_s)"
  emit_json py_screen images_per_s "$(raw_median "$TMP/py_screen" ours_images_per_s)" \
    "$(peer_name) + ThreadPoolExecutor" "$(raw_median "$TMP/py_screen" peer_images_per_s)" higher
}
