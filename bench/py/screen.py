"""py_screen, one side: the screening pipeline of examples/screen_pipeline.py over a synthetic
plate, in images (stacks) per second.
  ours  arraybridge.Executor, each step a task taking the previous step's future (examples/screen.py)
  peer  arraybridge from PyPI plus concurrent.futures.ThreadPoolExecutor, one task per stack
        (stack_slices into torch, then the same steps), the way its users run it today
Both with BENCH_PY_WORKERS threads (default: the number of cores). Prints "<side>_images_per_s v".
Environment: BENCH_ROUNDS (3), BENCH_PY_SCREEN_STACKS (16), BENCH_PY_SCREEN_Z (16),
BENCH_PY_SCREEN_SIZE (256).
"""
import concurrent.futures as cf
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import arraybridge as ab  # noqa: E402
import screen_pipeline as sp  # noqa: E402

SIDE = sys.argv[1] if len(sys.argv) > 1 else "ours"
WORKERS = int(os.environ.get("BENCH_PY_WORKERS", os.cpu_count() or 2))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
STACKS = int(os.environ.get("BENCH_PY_SCREEN_STACKS", 16))
Z = int(os.environ.get("BENCH_PY_SCREEN_Z", 16))
SIZE = int(os.environ.get("BENCH_PY_SCREEN_SIZE", 256))


def ours(plate):
    import screen
    with ab.Executor(WORKERS, devices="host") as ex:
        screen.screen(ex, plate[:2])  # warm-up
        t0 = time.perf_counter()
        results = screen.screen(ex, plate)
        return len(results) / (time.perf_counter() - t0)


def peer(plate):
    from arraybridge.devices import HOST

    def one(slices):
        return sp.run_stack(ab.stack_slices(slices, "torch", HOST))

    with cf.ThreadPoolExecutor(WORKERS) as ex:
        list(ex.map(one, [s for _, _, s in plate[:2]]))  # warm-up
        t0 = time.perf_counter()
        results = list(ex.map(one, [s for _, _, s in plate]))
        return len(results) / (time.perf_counter() - t0)


def main():
    plate = sp.make_plate(wells=STACKS, sites=1, z=Z, size=(SIZE, SIZE), seed=0)
    run = ours if SIDE == "ours" else peer
    for _ in range(ROUNDS):
        print(f"{SIDE}_images_per_s", run(plate), flush=True)


if __name__ == "__main__":
    main()
