"""py_executor: arraybridge.Executor against concurrent.futures.ThreadPoolExecutor, same worker
count, same process, alternating rounds. Prints "metric value" lines for bench/run:
  ours_rt_us / peer_rt_us     submit -> result() round trip of a no-op, microseconds
  ours_tps / peer_tps         tasks per second: N no-op submits, then concurrent.futures.wait

Environment: BENCH_PY_WORKERS (2), BENCH_PY_TASKS (100000), BENCH_PY_RT_ITERS (20000),
BENCH_ROUNDS (5).
"""
import os

# NumPy's OpenBLAS threads poll for work for a while after start-up, on this 2-core machine
# stealing a core from whichever executor runs then; no task here uses BLAS. Both sides share it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import concurrent.futures as cf  # noqa: E402
import gc  # noqa: E402
import time  # noqa: E402

import arraybridge as ab  # noqa: E402

WORKERS = int(os.environ.get("BENCH_PY_WORKERS", 2))
TASKS = int(os.environ.get("BENCH_PY_TASKS", 100000))
RT_ITERS = int(os.environ.get("BENCH_PY_RT_ITERS", 20000))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 5))


def noop():
    return None


def throughput(ex):
    gc.collect()
    t0 = time.perf_counter()
    fs = [ex.submit(noop) for _ in range(TASKS)]
    cf.wait(fs)
    dt = time.perf_counter() - t0
    assert all(f.result() is None for f in fs)
    return TASKS / dt


def round_trip(ex):
    for _ in range(100):
        ex.submit(noop).result()
    t0 = time.perf_counter()
    for _ in range(RT_ITERS):
        ex.submit(noop).result()
    return (time.perf_counter() - t0) / RT_ITERS * 1e6


def main():
    for _ in range(ROUNDS):
        with ab.Executor(WORKERS, devices="host") as ex:
            print("ours_tps", throughput(ex), flush=True)
            print("ours_rt_us", round_trip(ex), flush=True)
        with cf.ThreadPoolExecutor(WORKERS) as ex:
            print("peer_tps", throughput(ex), flush=True)
            print("peer_rt_us", round_trip(ex), flush=True)


if __name__ == "__main__":
    main()
