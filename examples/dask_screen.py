#!/usr/bin/env python3
"""The screening job on Dask: each Dask worker owns an arraybridge Executor (a worker plugin,
arraybridge.dask.ExecutorPlugin) and every stack's task is annotated to run on it.

    examples/dask_screen.py [--workers 2 --wells 4 --sites 2]   # a LocalCluster on 127.0.0.1
    examples/dask_screen.py --scheduler tcp://host:8786           # an existing cluster
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import arraybridge as ab  # noqa: E402
import arraybridge.dask  # noqa: E402,F401
import screen_pipeline as sp  # noqa: E402


def process(well, site, z, size, seed):
    """One stack, generated and screened where it runs, on the worker's arraybridge Executor."""
    slices = sp.make_stack(well, site, z, (size, size), seed)
    vol = ab.stack_slices(slices, "torch")
    where = ab._core.current()  # the arraybridge worker (kind, index, worker, stream) running this
    return (well, site), sp.run_stack(vol), where


def run(client, wells, sites, z, size, seed, name="arraybridge"):
    with dask.annotate(executor=name):
        futures = [client.submit(process, w, s, z, size, seed, pure=False) for w in range(wells) for s in range(sites)]
    return client.gather(futures)


def local_cluster(n_workers=2, threads=2):
    # processes=False keeps the cluster in this process; tcp on 127.0.0.1 (inproc would refuse a host)
    return LocalCluster(n_workers=n_workers, threads_per_worker=threads, processes=False, protocol="tcp://",
                        host="127.0.0.1", dashboard_address=None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scheduler", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--wells", type=int, default=4)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--z", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cluster = None if a.scheduler else local_cluster(a.workers)
    with Client(a.scheduler or cluster) as client:
        client.register_plugin(ab.dask.ExecutorPlugin(name="arraybridge", max_workers=2, devices="host"))
        t0 = time.perf_counter()
        out = run(client, a.wells, a.sites, a.z, a.size, a.seed)
        dt = time.perf_counter() - t0
        for key, (n, mean, fg), where in sorted(out):
            print(f"well {key[0]} site {key[1]}: {n} objects, mean {mean:.4f} (arraybridge worker {where})")
        print(f"{len(out)} stacks in {dt:.2f} s on {len(client.scheduler_info()['workers'])} Dask workers")
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
