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


@pytest.mark.parametrize("src", ["numpy", "torch"])
def test_zero_d_to_pyclesperanto_keeps_the_value(src):
    """pyclesperanto has no 0-d arrays (it made an empty one: the value lost); a 0-d array or a
    NumPy scalar arrives as shape (1,), its value kept."""
    pytest.importorskip("pyclesperanto")
    for a in (np.array(5, np.uint16), np.float32(3.5)):
        x = a if src == "numpy" else make(src, np.asarray(a))
        c = ab.convert_memory(x, src, "pyclesperanto")
        back = host(c)
        assert back.shape == (1,) and back.dtype == np.asarray(a).dtype and back[0] == a


# ---- layouts and byte orders a framework cannot take as they are ---------------------------------
def _layouts():
    base = np.arange(60, dtype=np.float32).reshape(5, 12)
    ro = base.copy()
    ro.flags.writeable = False
    raw = np.zeros(61 * 4 + 1, np.uint8)[1:61 * 4 + 1]  # 4-byte items at an odd address
    unaligned = raw.view(np.float32)[:60].reshape(5, 12)
    unaligned[...] = base
    return {
        "negative strides": base[::-1],
        "negative inner stride": base[:, ::-2],
        "uint16 reversed": base.astype(np.uint16)[::-1, ::-1],
        "fortran order": np.asfortranarray(base),
        "transposed": base.T,
        "stepped": base[::2, 1::3],
        "broadcast (stride 0)": np.broadcast_to(np.arange(4, dtype=np.float32), (3, 4)),
        "read-only": ro,
        "unaligned": unaligned,
        "big-endian": base.astype(">f4"),
        "0-d": np.array(7.5, np.float32),
        "numpy scalar": np.float32(2.5),
    }


@pytest.mark.parametrize("target", ["torch", "jax", "tensorflow", "pyclesperanto", "cupy"])
def test_any_numpy_layout_converts_to_every_framework(target):
    pytest.importorskip(MODULES.get(target, target))
    if target == "cupy" and not ab.available_device_ids("cupy"):
        pytest.skip("no CUDA device for cupy")
    for name, a in _layouts().items():
        y = ab.convert_memory(a, "numpy", target, None)
        back = np.asarray(ab.convert_memory(y, target, "numpy", None))
        np.testing.assert_array_equal(back, np.asarray(a), err_msg=name)
        assert back.dtype == np.asarray(a).dtype.newbyteorder("="), name


def test_negative_strides_to_torch_keep_values_and_leave_the_source_alone():
    torch = pytest.importorskip("torch")
    a = np.arange(6, dtype=np.int32)
    t = ab.convert_memory(a[::-1], "numpy", "torch")
    assert t.tolist() == [5, 4, 3, 2, 1, 0]
    t[0] = 99
    assert a[5] == 5  # a copy: torch cannot view negative strides
    assert torch


# ---- strict mode -------------------------------------------------------------------------------
def test_strict_mode_refuses_pyclesperanto_round_trips_through_the_host():
    cle = pytest.importorskip("pyclesperanto")
    ids = ab.available_device_ids("pyclesperanto")
    if len(ids) < 2:
        pytest.skip("needs two OpenCL devices")
    g = ab.convert_memory(np.arange(4, dtype=np.float32), "numpy", "pyclesperanto", ids[0])
    with pytest.raises(ab.MemoryConversionError, match="allow_cpu_roundtrip"):
        ab.convert_memory(g, "pyclesperanto", "pyclesperanto", ids[1], allow_cpu_roundtrip=False)
    moved = ab.convert_memory(g, "pyclesperanto", "pyclesperanto", ids[1])  # allowed by default
    assert cle.pull(moved).tolist() == [0, 1, 2, 3]
    # from device memory to host memory, or host memory onto a device, is no round trip
    assert ab.convert_memory(g, "pyclesperanto", "numpy", allow_cpu_roundtrip=False).tolist() == [0, 1, 2, 3]
    up = ab.convert_memory(np.ones(2, np.float32), "numpy", "pyclesperanto", ids[1], allow_cpu_roundtrip=False)
    assert cle.pull(up).tolist() == [1, 1]


def test_strict_mode_refuses_device_to_device_through_the_host_for_gpu_frameworks():
    torch = pytest.importorskip("torch")
    gpus = ab.available_device_ids("torch")
    cle = pytest.importorskip("pyclesperanto")
    if not gpus or not ab.available_device_ids("pyclesperanto"):
        pytest.skip("needs a CUDA device (GPU machine)")
    g = cle.push(np.ones(3, np.float32))
    with pytest.raises(ab.MemoryConversionError, match="allow_cpu_roundtrip"):
        ab.convert_memory(g, "pyclesperanto", "torch", gpus[0], allow_cpu_roundtrip=False)
    t = torch.ones(3, device=f"cuda:{gpus[0]}")
    with pytest.raises(ab.MemoryConversionError, match="allow_cpu_roundtrip"):
        ab.convert_memory(t, "torch", "pyclesperanto", None, allow_cpu_roundtrip=False)


@pytest.mark.parametrize("src", ["numpy", "torch"])
def test_jax_without_x64_never_truncates_silently(src):
    """JAX with jax_enable_x64 off (its default) has no 64-bit dtypes: int64 values beyond int32
    are refused (JAX made 2**40 + 5 into 5), those that fit convert exactly, and float64 is
    rounded to float32 with a RuntimeWarning."""
    jax = pytest.importorskip("jax")
    if jax.config.jax_enable_x64:
        pytest.skip("jax_enable_x64 is on in this process")
    big = np.array([2**40 + 5, 1], np.int64)
    with pytest.raises(ab.MemoryConversionError, match="jax_enable_x64"):
        ab.convert_memory(make(src, big), src, "jax")
    with pytest.raises(ab.MemoryConversionError, match="jax_enable_x64"):
        ab.convert_memory(make(src, np.array([2**32], np.uint64) if src == "numpy" else big), src, "jax")
    small = np.array([-(2**31), 2**31 - 1, 0], np.int64)
    assert host(ab.convert_memory(make(src, small), src, "jax")).tolist() == small.tolist()
    with pytest.warns(RuntimeWarning, match="float64 becomes float32"):
        j = ab.convert_memory(make(src, np.array([1 + 1e-12])), src, "jax")
    assert host(j).dtype == np.float32


def test_a_missing_framework_is_named_with_the_source():
    import importlib.util
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed")
    with pytest.raises(ab.MemoryConversionError, match="from numpy to cupy.*not installed"):
        ab.convert_memory(np.ones(2), "numpy", "cupy")
