"""The GPU paths: torch CUDA, cupy and jax on CUDA devices, through the runtime's CUDA backend.
They skip where there is no GPU (this project's development and CI machines); on a GPU machine
they are the Python half of scripts/gpu-check.sh."""
import numpy as np
import pytest

import arraybridge as ab
from arraybridge import _core

torch = pytest.importorskip("torch")
needs_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")


@pytest.fixture(scope="module")
def cuda_rt():
    rt = ab.runtime()
    if not any(k == _core.CUDA for k, _ in rt.devices()):
        pytest.skip("the runtime has no CUDA device")
    return rt


@needs_torch_cuda
def test_convert_numpy_torch_cuda_honours_gpu_id():
    for gpu in ab.available_device_ids("torch"):
        t = ab.convert_memory(np.arange(6, dtype=np.float32), "numpy", "torch", gpu)
        assert t.is_cuda and t.device.index == gpu
        back = ab.convert_memory(t, "torch", "numpy")
        assert back.tolist() == list(range(6))


@needs_torch_cuda
def test_dlpack_round_trip_on_the_gpu(cuda_rt):
    x = torch.arange(12, dtype=torch.int32, device="cuda:0").reshape(3, 4)
    t = ab.asdlpack(x)
    assert t.dl_device == (2, 0) and t.device[0] == _core.CUDA
    y = torch.from_dlpack(t)
    assert y.data_ptr() == x.data_ptr()
    host = cuda_rt.convert(t, (_core.HOST, 0)).result()
    assert np.asarray(host).tolist() == x.cpu().tolist()


@needs_torch_cuda
def test_stack_slices_onto_the_gpu(cuda_rt):
    s = [np.full((64, 64), i, np.uint16) for i in range(20)]
    v = ab.stack_slices(s, "torch", 0)
    assert v.is_cuda and tuple(v.shape) == (20, 64, 64)
    assert v.cpu().numpy().tolist() == np.stack(s).tolist()


@needs_torch_cuda
def test_executor_makes_the_worker_stream_current(cuda_rt):
    with ab.Executor(1, devices="cuda") as ex:
        def probe(x):
            cur = _core.current()
            return cur[0], cur[3], torch.cuda.current_stream().cuda_stream, x.is_cuda, x.device.index

        kind, stream, torch_stream, is_cuda, index = ex.options(device="cuda:0", input_type="torch").submit(
            probe, np.ones(4, np.float32)).result()
        assert kind == _core.CUDA and stream == torch_stream and is_cuda and index == 0


@needs_torch_cuda
def test_torch_cuda_oom_enters_the_ladder(cuda_rt):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return "ok"

    with ab.Executor(1, devices="cuda") as ex:
        assert ex.options(device="cuda:0").submit(flaky).result(timeout=30) == "ok"
    assert len(calls) == 3


def _per_thread_streams(call, default_stream):
    """Calls call() twice on each of three threads: every thread its own stream, kept across its
    calls, never the default one."""
    import threading
    seen = {}

    def work(i):
        seen[i] = [call(), call()]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    firsts = {s[0] for s in seen.values()}
    assert all(s[0] == s[1] for s in seen.values())  # kept for the thread's life
    assert len(firsts) == 3 and default_stream not in firsts


@needs_torch_cuda
def test_torch_decorator_runs_on_a_per_thread_stream_on_the_gpu_asked_for():
    gpu = ab.available_device_ids("torch")[-1]

    @ab.torch(gpu_id=gpu, output_type="torch", dtype_conversion="native")
    def probe(x):
        s = torch.cuda.current_stream()
        assert x.device.index == gpu and s.device.index == gpu
        y = x
        for _ in range(50):  # enough queued work that an unsynchronised result would show
            y = y * 1.0001
        return y, s.cuda_stream

    def call():
        y, stream = probe(np.ones((512, 512), np.float32))
        assert abs(float(y[0, 0].cpu()) - 1.0001 ** 50) < 1e-4  # complete when handed back
        return stream

    _per_thread_streams(call, torch.cuda.default_stream(gpu).cuda_stream)


def test_cupy_decorator_runs_on_a_per_thread_stream():
    cupy = pytest.importorskip("cupy")
    if not ab.available_device_ids("cupy"):
        pytest.skip("no CUDA device for cupy")
    gpu = ab.available_device_ids("cupy")[-1]

    @ab.cupy(gpu_id=gpu, dtype_conversion="native")
    def probe(x):
        assert x.device.id == gpu
        return x + 1, cupy.cuda.get_current_stream().ptr

    def call():
        y, stream = probe(np.zeros(1000, np.float32))
        assert float(y.sum()) == 1000
        return stream

    _per_thread_streams(call, 0)


@needs_torch_cuda
def test_executor_on_logical_cuda_devices_uses_the_physical_gpu(cuda_rt):
    with ab.Executor(1, devices="cuda", logical_split={"cuda": 2}) as ex:
        last = [d for d in ex.devices() if d.startswith("cuda:")][-1]
        phys = ex.device_info(last)["physical"]

        def probe(x):
            return x.device.index, torch.cuda.current_device(), _core.current()[1]

        idx, current, logical = ex.options(device=last, input_type="torch").submit(
            probe, np.ones(4, np.float32)).result(timeout=60)
    assert idx == current == phys and logical == int(last.split(":")[1])


def test_cupy_paths():
    cupy = pytest.importorskip("cupy")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001
        n = 0
    if n == 0:
        pytest.skip("no CUDA device for cupy")
    c = ab.convert_memory(np.arange(5, dtype=np.float32), "numpy", "cupy", n - 1)
    assert c.device.id == n - 1  # arraybridge 0.2.9 put it on the current device instead
    t = ab.convert_memory(c, "cupy", "torch", n - 1)
    assert t.device.index == n - 1
    np.testing.assert_array_equal(ab.convert_memory(t, "torch", "numpy"), np.arange(5))


@needs_torch_cuda
def test_torch_cuda_tensors_are_stacking_sources(cuda_rt):
    """CUDA memory that torch owns, imported through DLPack, stacks on the runtime's device of
    its GPU and converts to the host (the runtime refused it as a source before)."""
    xs = [torch.arange(64 * 48, dtype=torch.int32, device="cuda:0").reshape(64, 48) * (i + 1) for i in range(9)]
    ts = [ab.asdlpack(x) for x in xs]
    want = torch.stack(xs).cpu().numpy()
    vol = cuda_rt.stack(ts, (_core.CUDA, 0)).result()
    assert vol.device == (_core.CUDA, 0)
    assert np.asarray(cuda_rt.convert(vol, (_core.HOST, 0)).result()).tolist() == want.tolist()
    on_host = cuda_rt.stack(ts, (_core.HOST, 0)).result()
    assert np.asarray(on_host).tolist() == want.tolist()


def test_cupy_arrays_are_stacking_sources(cuda_rt):
    cupy = pytest.importorskip("cupy")
    xs = [cupy.full((32, 40), i, dtype=cupy.uint16) for i in range(6)]
    cupy.cuda.Device().synchronize()
    vol = cuda_rt.stack([ab.asdlpack(x) for x in xs], (_core.CUDA, 0)).result()
    host = np.asarray(cuda_rt.convert(vol, (_core.HOST, 0)).result())
    assert host.tolist() == np.stack([np.full((32, 40), i, np.uint16) for i in range(6)]).tolist()
