"""py_convert and py_stack, one side of the comparison: this file runs with whichever arraybridge
is importable (ours in the project's venv, PyPI's in the peer's venv: same import name, so the
peer runs in a subprocess of its own environment). Prints "metric value" lines:

  <side>_convert_us   one numpy -> torch -> numpy round trip of a 64x64 float32 array through
                      convert_memory (two calls), microseconds, median of BENCH_ROUNDS
  <side>_stack_ms     stack_slices of 1000 slices of 512x512 uint16 into numpy, milliseconds

argv[1] is the side's name ("ours" or "peer"). Environment: BENCH_ROUNDS (5),
BENCH_PY_CONVERT_ITERS (20000), BENCH_SLICES (1000).
"""
import os
import statistics
import sys
import time

import numpy as np

import arraybridge as ab

SIDE = sys.argv[1] if len(sys.argv) > 1 else "ours"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))
ITERS = int(os.environ.get("BENCH_PY_CONVERT_ITERS", 20000))
SLICES = int(os.environ.get("BENCH_SLICES", 1000))

try:  # arraybridge >= 0.5 names devices, and ours takes its device objects too: both run this
    from arraybridge.devices import HOST as DEVICE
except ImportError:  # 0.2.x: gpu_id=None for host memory
    DEVICE = None


def convert_round_trip():
    a = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    for _ in range(200):
        ab.convert_memory(ab.convert_memory(a, "numpy", "torch", DEVICE), "torch", "numpy", DEVICE)
    t0 = time.perf_counter()
    for _ in range(ITERS):
        t = ab.convert_memory(a, "numpy", "torch", DEVICE)
        b = ab.convert_memory(t, "torch", "numpy", DEVICE)
    dt = time.perf_counter() - t0
    assert b.shape == a.shape and float(b[3, 5]) == float(a[3, 5])
    return dt / ITERS * 1e6


def stack():
    rng = np.random.default_rng(1)
    slices = [rng.integers(0, 65535, (512, 512), dtype=np.uint16) for _ in range(SLICES)]
    v = ab.stack_slices(slices, "numpy", DEVICE)  # warm-up, and a check
    assert v.shape == (SLICES, 512, 512) and (v[SLICES // 2] == slices[SLICES // 2]).all()
    del v
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        v = ab.stack_slices(slices, "numpy", DEVICE)
        times.append(time.perf_counter() - t0)
        del v
    return statistics.median(times) * 1e3


def main():
    for _ in range(ROUNDS):
        print(f"{SIDE}_convert_us", convert_round_trip(), flush=True)
        print(f"{SIDE}_stack_ms", stack(), flush=True)


if __name__ == "__main__":
    main()
