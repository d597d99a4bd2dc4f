#!/usr/bin/env python3
"""The screening job in Python on arraybridge.Executor: every stack of a synthetic plate through
stack -> normalise -> Gaussian filter -> max projection -> count, each step a task whose input is
the previous step's future (the runtime starts it when that one is done: no thread blocks
between steps), with real framework functions: torch for the volume steps, NumPy and SciPy for
counting. Tasks go to the host workers, or to the CUDA devices (torch tensors on the GPU) when
the runtime has any.

    examples/screen.py [--wells 8 --sites 2 --z 16 --size 256 --workers N --out results.csv]
"""
import argparse
import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import arraybridge as ab  # noqa: E402
import screen_pipeline as sp  # noqa: E402


def screen_stack(ex, slices, device=None):
    """The future of one stack's (objects, mean, foreground): five tasks, each taking the previous
    one's future as its argument."""
    on = ex.options(device=device)
    vol = on.submit(ab.stack_slices, slices, "torch")
    norm = ex.options(device=device, input_type="torch").submit(sp.normalise, vol)  # onto the device's GPU
    proj = on.submit(sp.project, on.submit(sp.gaussian, norm))
    return ex.options(device=device, input_type="numpy").submit(sp.count, proj)


def screen(ex, plate, device=None):
    """{(well, site): (objects, mean, foreground)} for the plate, every stack in flight at once."""
    futures = {(well, site): screen_stack(ex, slices, device) for well, site, slices in plate}
    return {k: f.result() for k, f in futures.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wells", type=int, default=8)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--z", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="host workers (default: one per core)")
    p.add_argument("--out", default=None, help="CSV of per-image results")
    p.add_argument("--trace", default=None, help="write a Chrome trace (Perfetto) of the run here")
    a = p.parse_args(argv)
    plate = sp.make_plate(a.wells, a.sites, a.z, (a.size, a.size), a.seed)
    with ab.Executor(a.workers) as ex:
        device = "cuda" if any(d.startswith("cuda:") for d in ex.devices()) else None
        t0 = time.perf_counter()
        if a.trace:
            with ex.trace(a.trace):
                results = screen(ex, plate, device)
        else:
            results = screen(ex, plate, device)
        dt = time.perf_counter() - t0
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["well", "site", "objects", "mean", "foreground"])
            for (well, site), (n, mean, fg) in sorted(results.items()):
                w.writerow([well, site, n, f"{mean:.6f}", f"{fg:.6f}"])
    print(f"{len(results)} stacks in {dt:.2f} s: {len(results) / dt:.1f} images/s "
          f"({a.z} slices of {a.size}x{a.size} each, device {device or 'host'})")
    return results


if __name__ == "__main__":
    main()
