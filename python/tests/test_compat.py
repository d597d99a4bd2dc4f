"""Code written for arraybridge runs here unchanged: the seed README's calls (0.2.9), and 0.5.2's
API (device objects, process_slices, MemoryType.X.library, ArrayLibrary, the device classes),
the latter checked against PyPI's arraybridge 0.5.2 itself running the same script."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import arraybridge as ab

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PEER = os.environ.get("AB_PEER_VENV", os.path.join(ROOT, ".venv-peer"))
SCRIPT = os.path.join(HERE, "data", "written_for_0_5_2.py")


def _run(python, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra)
    r = subprocess.run([python, SCRIPT], capture_output=True, text=True, timeout=300, env=env, cwd=HERE)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return r.stdout.splitlines()


def test_code_written_for_0_5_2_gives_the_same_answers():
    pytest.importorskip("torch")
    peer_python = os.path.join(PEER, "bin", "python")
    if not os.path.exists(peer_python):
        pytest.skip("no peer venv with arraybridge 0.5.2 (scripts/setup.sh makes it)")
    peer = _run(peer_python, {})
    ours = _run(sys.executable, {"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert len(peer) > 20
    assert ours == peer


def test_every_name_0_5_2_exports_imports():
    names = ["MemoryType", "ArrayLibrary", "Array", "Device", "HostDevice", "AcceleratorDevice", "NamedDevice",
             "HOST", "ConversionRoute", "ConversionRecord", "ConversionObserver", "ConversionCounters",
             "MemoryContractAttribute", "ArrayPayload", "ArrayGeometry", "convert_memory", "detect_memory_type",
             "memory_types", "DtypeConversion", "SliceBySliceRuntimeParameter", "wrap_dtype_preserving_callable",
             "stack_slices", "unstack_slices", "process_slices", "MemoryConversionError", "_ensure_module",
             "_supports_dlpack", "numpy", "cupy", "torch", "tensorflow", "jax", "pyclesperanto"]
    init = os.path.join(PEER, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages",
                        "arraybridge", "__init__.py")
    if os.path.exists(init):  # the authoritative list, where 0.5.2 is installed
        text = open(init).read()
        names = sorted(set(names) | set(re.findall(r'^\s+"(\w+)": "\.', text, re.M)))
    missing = [n for n in names if not hasattr(ab, n)]
    assert not missing
    from arraybridge.converters import convert_memory  # noqa: F401 - 0.5.2's submodules
    from arraybridge.devices import HOST, AcceleratorDevice  # noqa: F401
    from arraybridge.libraries import ArrayLibrary  # noqa: F401
    from arraybridge.slice_processing import process_slices  # noqa: F401
    from arraybridge.stack_utils import stack_slices, unstack_slices  # noqa: F401
    from arraybridge.types import MemoryContractAttribute, MemoryType  # noqa: F401


def test_names_without_a_counterpart_say_what_to_use():
    for cls in (ab.ConversionRoute, ab.ConversionRecord, ab.ConversionObserver, ab.ConversionCounters):
        with pytest.raises(ab.NotSupportedError, match="convert_memory|memory_stats"):
            cls()

    class Mine(ab.ConversionObserver):  # subclassing, as code defining observers does, still loads
        pass

    with pytest.raises(ab.NotSupportedError, match="memory_stats"):
        Mine.current()
    with pytest.raises(AttributeError, match="decorators"):
        ab.ArrayLibrary.named("torch").execution_wrapper  # noqa: B018


def test_the_seed_readme_as_written():
    torch = pytest.importorskip("torch")
    data = np.array([[1, 2], [3, 4]])
    # a CPU-only target ignores gpu_id (arraybridge raised "numpy has no device 0", GPU or not)
    back = ab.convert_memory(data, source_type="numpy", target_type="numpy", gpu_id=0)
    assert back.tolist() == [[1, 2], [3, 4]]
    t = ab.convert_memory(torch.ones(2), source_type="torch", target_type="numpy", gpu_id=0)
    assert t.tolist() == [1, 1]
    # GPU targets take gpu_id and check it: here, without a GPU, a clear error listing the devices
    gpus = ab.available_device_ids("torch")
    if gpus:
        assert ab.convert_memory(data, source_type="numpy", target_type="torch", gpu_id=0).is_cuda
    else:
        with pytest.raises(ValueError, match=r"torch has no device 0; available: \[\]"):
            ab.convert_memory(data, source_type="numpy", target_type="torch", gpu_id=0)
    assert ab.detect_memory_type(ab.convert_memory(data, "numpy", "torch")) == "torch"

    @ab.torch(input_type="numpy", output_type="torch", oom_recovery=True)
    def my_gpu_function(data):
        return data * 2

    assert isinstance(my_gpu_function(np.array([1, 2, 3])), torch.Tensor)

    @ab.torch(oom_recovery=True)
    def parallel_processing(data):
        return data * 2

    @ab.cupy(oom_recovery=True)  # decorating needs no cupy
    def memory_intensive_operation(data):
        return data @ data.T

    assert parallel_processing(torch.ones(2)).tolist() == [2, 2]
    slices_2d = [np.random.rand(100, 100) for _ in range(50)]
    volume_3d = ab.stack_slices(slices_2d, memory_type="torch", gpu_id=0 if gpus else None)
    slices_back = ab.unstack_slices(volume_3d, memory_type="torch")
    assert len(slices_back) == 50 and tuple(slices_back[7].shape) == (100, 100)
    assert ab.stack_slices(slices_2d, memory_type="numpy", gpu_id=0).shape == (50, 100, 100)
    if not gpus:
        with pytest.raises(ValueError, match="torch has no device 0"):
            ab.stack_slices(slices_2d, memory_type="torch", gpu_id=0)


def test_device_objects_everywhere_a_gpu_id_goes():
    torch = pytest.importorskip("torch")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert ab.convert_memory(a, "numpy", "torch", ab.HOST).device.type == "cpu"
    assert ab.convert_memory(a, "numpy", "torch", device=ab.HOST).device.type == "cpu"
    assert ab.convert_memory(a, "numpy", "numpy", ab.AcceleratorDevice(0)) is a  # numpy: host only
    with pytest.raises(TypeError, match="not both"):
        ab.convert_memory(a, "numpy", "torch", 0, device=ab.HOST)
    if not ab.available_device_ids("torch"):
        with pytest.raises(ValueError, match="no device 0"):
            ab.convert_memory(a, "numpy", "torch", ab.AcceleratorDevice(0))
    with pytest.raises(ValueError, match="names no devices"):
        ab.convert_memory(a, "numpy", "torch", ab.NamedDevice("gpu"))
    assert ab.stack_slices([a, a], "torch", device=ab.HOST).shape == (2, 2, 3)
    assert ab.MemoryType.TORCH.library is ab.ArrayLibrary.named("torch") is ab.ArrayLibrary.of(torch.ones(1))
    lib = ab.ArrayLibrary.named("torch")
    assert ab.HOST in lib.available_devices()
    lib.require_device(ab.HOST)
    with pytest.raises(ValueError, match="unavailable"):
        lib.require_device(ab.AcceleratorDevice(99))
    assert lib.move_to_device(torch.ones(2), ab.HOST).device.type == "cpu"
    assert lib.stack_arrays([torch.ones(2), torch.zeros(2)], ab.HOST).tolist() == [[1, 1], [0, 0]]
    assert lib.scale_dtype(torch.tensor([0.0, 0.5, 1.0]), np.uint8).tolist() == [0, 127, 255]
    assert lib.is_oom_error(RuntimeError("CUDA out of memory")) and not lib.is_oom_error(KeyError("x"))


def test_pyclesperanto_named_devices():
    cle = pytest.importorskip("pyclesperanto")
    names = list(cle.list_available_devices())
    if not names:
        pytest.skip("no OpenCL device for pyclesperanto")
    g = ab.convert_memory(np.arange(4, dtype=np.float32), "numpy", "pyclesperanto", ab.NamedDevice(names[-1]))
    assert cle.pull(g).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no device named"):
        ab.convert_memory(np.zeros(2, np.float32), "numpy", "pyclesperanto", ab.NamedDevice("no such device"))


def test_process_slices_checks_what_func_returns():
    v = np.zeros((3, 2, 2), np.float32)
    calls = iter([v[0], (v[0], 1), v[0]])
    with pytest.raises(ValueError, match="slice 1"):
        ab.process_slices(v, lambda s: next(calls), (), {})
    out = ab.process_slices(v, lambda s, add=0: s + add, (), {"add": 2})
    assert out.shape == (3, 2, 2) and out.max() == 2
