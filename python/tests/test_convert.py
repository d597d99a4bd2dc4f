"""convert_memory / detect_memory_type over every memory-type pair that exists without a GPU."""
import numpy as np
import pytest

import arraybridge as ab

CPU_TYPES = ["numpy", "torch", "jax", "tensorflow", "pyclesperanto"]
MODULES = {"numpy": "numpy", "torch": "torch", "jax": "jax", "tensorflow": "tensorflow",
           "pyclesperanto": "pyclesperanto"}


def make(mt, a):
    pytest.importorskip(MODULES[mt])
    return ab.convert_memory(a, "numpy", mt, None)


def host(x):
    return np.asarray(ab.convert_memory(x, ab.detect_memory_type(x), "numpy", None))


@pytest.mark.parametrize("src", CPU_TYPES)
@pytest.mark.parametrize("dst", CPU_TYPES)
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_every_pair(src, dst, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3).astype(dtype)
    x = make(src, a)
    assert ab.detect_memory_type(x) == src
    pytest.importorskip(MODULES[dst])
    y = ab.convert_memory(x, src, dst, None)
    assert ab.detect_memory_type(y) == dst
    np.testing.assert_array_equal(host(y), a)
    assert str(host(y).dtype) == dtype


def test_numpy_torch_share_memory():
    torch = pytest.importorskip("torch")
    a = np.arange(10, dtype=np.float32)
    t = ab.convert_memory(a, "numpy", "torch", None)
    t[0] = 42
    assert a[0] == 42  # zero-copy
    back = ab.convert_memory(t, "torch", "numpy", None)
    assert back.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    g = torch.ones(3, requires_grad=True) * 2  # arraybridge 0.2.9 failed here (no detach)
    np.testing.assert_array_equal(ab.convert_memory(g, "torch", "numpy", None), [2, 2, 2])


def test_read_only_numpy_to_torch_is_copied_not_shared_writable():
    pytest.importorskip("torch")
    a = np.arange(4, dtype=np.int32)
    a.flags.writeable = False
    t = ab.convert_memory(a, "numpy", "torch", None)
    t[0] = 9
    assert a[0] == 0


def test_enum_and_str_types():
    a = np.zeros(3)
    assert ab.convert_memory(a, ab.MemoryType.NUMPY, ab.MemoryType.NUMPY, None) is a
    assert ab.convert_memory(a, "numpy", "numpy") is a


@pytest.mark.parametrize("bad", ["matlab", "", None, 3])
def test_unknown_types(bad):
    with pytest.raises(ValueError, match="expected one of"):
        ab.convert_memory(np.zeros(2), "numpy", bad, None)
    with pytest.raises(ValueError, match="expected one of"):
        ab.convert_memory(np.zeros(2), bad, "numpy", None)


def test_wrong_source_type():
    pytest.importorskip("torch")
    with pytest.raises(ab.MemoryConversionError, match="the data is numpy"):
        ab.convert_memory(np.zeros(2), "torch", "numpy", None)


@pytest.mark.parametrize("bad", [[1, 2], "abc", 3.0, None, {"a": 1}])
def test_detect_rejects_non_arrays(bad):
    with pytest.raises(ValueError, match="Unknown memory type"):
        ab.detect_memory_type(bad)


def test_gpu_id_is_validated():
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match="has no device 3"):
        ab.convert_memory(np.zeros(2), "numpy", "torch", 3)
    with pytest.raises(ValueError, match="non-negative"):
        ab.convert_memory(np.zeros(2), "numpy", "torch", -1)
    with pytest.raises(ValueError, match="non-negative"):
        ab.convert_memory(np.zeros(2), "numpy", "torch", "0")


def test_pyclesperanto_gpu_id_selects_an_opencl_device():
    cle = pytest.importorskip("pyclesperanto")
    ids = ab.available_device_ids("pyclesperanto")
    if not ids:
        pytest.skip("no OpenCL device for pyclesperanto")
    g = ab.convert_memory(np.arange(4, dtype=np.float32), "numpy", "pyclesperanto", ids[-1])
    np.testing.assert_array_equal(cle.pull(g), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="has no device"):
        ab.convert_memory(np.zeros(2, np.float32), "numpy", "pyclesperanto", 99)


def test_strict_mode_refuses_host_round_trips_only_for_device_data():
    pytest.importorskip("torch")
    a = np.arange(3.0)
    assert ab.convert_memory(a, "numpy", "torch", None, allow_cpu_roundtrip=False).tolist() == [0, 1, 2]


def test_zero_d_and_empty():
    for mt in ["torch", "jax", "tensorflow"]:
        pytest.importorskip(MODULES[mt])
        for a in (np.array(5.0), np.zeros((0, 4), np.float32)):
            y = ab.convert_memory(a, "numpy", mt, None)
            assert host(y).shape == a.shape
