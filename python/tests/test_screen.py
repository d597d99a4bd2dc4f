"""The Python screening example and the Dask integration (a LocalCluster on 127.0.0.1)."""
import os
import sys

import pytest

import arraybridge as ab

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, os.path.abspath(EXAMPLES))

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")
import screen  # noqa: E402
import screen_pipeline as sp  # noqa: E402


@pytest.fixture(scope="module")
def plate():
    return sp.make_plate(wells=3, sites=2, z=6, size=(96, 96), seed=7)


@pytest.fixture(scope="module")
def reference(plate):
    """The same steps run one after another on this thread, without the runtime."""
    return {(w, s): sp.run_stack(torch.from_numpy(__import__("numpy").stack(sl))) for w, s, sl in plate}


def test_plate_is_seeded_and_realistic(plate):
    again = sp.make_plate(wells=3, sites=2, z=6, size=(96, 96), seed=7)
    assert all((a == b).all() for (_, _, x), (_, _, y) in zip(plate, again) for a, b in zip(x, y))
    sl = plate[0][2][3]
    assert sl.dtype.name == "uint16" and sl.min() >= 100 and sl.max() > 1000  # background + cells


def test_executor_screen_matches_the_serial_run(plate, reference):
    with ab.Executor(2) as ex:
        results = screen.screen(ex, plate)
    assert results == reference
    assert all(n > 0 for n, _, _ in results.values())


def test_a_failing_step_fails_the_steps_after_it(plate):
    def broken(_):
        raise ValueError("bad step")

    ran = []
    with ab.Executor(1) as ex:
        f = ex.submit(lambda x: ran.append(x), ex.submit(broken, ex.submit(int, 3)))
        with pytest.raises(ValueError, match="bad step"):
            f.result(timeout=10)
    assert ran == []  # the dependent never ran


def test_default_device():
    with ab.Executor(1, default_device="host") as ex:
        assert ex.submit(lambda: ab._core.current()[0]).result() == ab._core.HOST
    with pytest.raises(ab.DeviceError):
        ab.Executor(1, devices="host", default_device="cuda")


def test_dask_workers_own_an_executor(plate, reference):
    pytest.importorskip("distributed")
    import dask_screen
    from distributed import Client

    cluster = dask_screen.local_cluster(n_workers=2, threads=1)
    try:
        with Client(cluster) as client:
            client.register_plugin(ab.dask.ExecutorPlugin(name="ab", max_workers=1, devices="host"))
            out = dask_screen.run(client, wells=3, sites=2, z=6, size=96, seed=7, name="ab")
            names = client.run(lambda dask_worker: sorted(dask_worker.executors))
    finally:
        cluster.close()
    assert {k: v for k, v, _ in out} == reference  # same numbers as the local run
    assert all(where is not None and where[0] == ab._core.HOST for _, _, where in out)  # on arraybridge workers
    assert all("ab" in n for n in names.values()) and len(names) == 2
