"""DLPack in (asdlpack, every protocol) and out (__dlpack__ with every keyword)."""
import array
import gc
import mmap
import sys

import numpy as np
import pytest

import arraybridge as ab
from arraybridge import _core

DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64", "complex64", "complex128", "bool"]
SAMPLES = {
    "0-d": lambda dt: np.array(7, dtype=dt),
    "1-d": lambda dt: np.arange(5).astype(dt),
    "3-d": lambda dt: np.arange(120).reshape(4, 6, 5).astype(dt),
    "sliced": lambda dt: np.arange(150).reshape(5, 6, 5).astype(dt)[1:3, ::2, ::-1],
    "empty": lambda dt: np.zeros((0, 3), dtype=dt),
}


class ArrayInterfaceOnly:
    def __init__(self, a):
        self._a = a
        self.__array_interface__ = a.__array_interface__


class CudaInterfaceOnly:
    def __init__(self, ptr, shape, typestr, strides=None, version=3, readonly=False):
        self.__cuda_array_interface__ = {"data": (ptr, readonly), "shape": shape, "typestr": typestr,
                                         "strides": strides, "version": version}


def roundtrip(t):
    return np.from_dlpack(t)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
@pytest.mark.parametrize("protocol", ["dlpack", "array_interface", "buffer"])
def test_asdlpack_matrix(dt, sample, protocol):
    a = SAMPLES[sample](dt)
    if protocol == "dlpack":
        src = a
    elif protocol == "array_interface":
        src = ArrayInterfaceOnly(a)
    else:
        src = memoryview(a)
    t = ab.asdlpack(src)
    assert t.shape == a.shape
    assert t.ndim == a.ndim
    assert t.nbytes == a.nbytes
    if a.size:
        assert t.data_ptr == a.__array_interface__["data"][0]
        strides = tuple(s // a.itemsize for s in a.strides)
        assert t.strides == strides
    assert t.dl_device == (1, 0) and t.device == (_core.HOST, 0)
    b = np.asarray(t)
    assert b.dtype == a.dtype
    np.testing.assert_array_equal(b, a)


def test_keeps_the_source_alive():
    a = np.arange(10, dtype=np.int32)
    t = ab.asdlpack(ArrayInterfaceOnly(a))
    ref = sys.getrefcount(a)
    del a
    gc.collect()
    np.testing.assert_array_equal(np.asarray(t), np.arange(10, dtype=np.int32))
    assert ref >= 2


def test_read_only_stays_read_only():
    a = np.arange(6, dtype=np.float32)
    a.flags.writeable = False
    for src in (a, ArrayInterfaceOnly(a), memoryview(a), b"abcdef"):
        t = ab.asdlpack(src)
        assert t.readonly, type(src)
        assert not np.asarray(t).flags.writeable
    t = ab.asdlpack(a)
    with pytest.raises(BufferError, match="read-only"):
        t.__dlpack__(copy=False)  # a legacy consumer cannot be told "read-only", nor given a copy
    cap = t.__dlpack__(max_version=(1, 0), copy=False)
    assert type(cap).__name__ == "PyCapsule"
    c = np.from_dlpack(_LegacyOnly(t))  # otherwise a copy
    assert c.tolist() == list(range(6)) and not np.shares_memory(c, a)


def test_read_only_memory_is_copied_for_consumers_that_ignore_the_flag():
    """torch.from_dlpack ignores DLPack's READ_ONLY flag: it was handed the memory of an
    immutable bytes object, writably. Read-only tensors go out as copies (IS_COPIED) unless
    the consumer passes copy=False; the source never changes."""
    torch = pytest.importorskip("torch")
    src = bytes(bytearray(b"abcd"))
    x = torch.from_dlpack(ab.asdlpack(src))
    x += 1
    assert src == b"abcd" and bytes(x.numpy()) == b"bcde"
    a = np.arange(4, dtype=np.float32)
    a.flags.writeable = False
    y = torch.from_dlpack(ab.asdlpack(a))
    y += 1
    assert a.tolist() == [0, 1, 2, 3]
    w = np.arange(4, dtype=np.float32)
    z = torch.from_dlpack(ab.asdlpack(w))  # writable memory is still shared
    z += 1
    assert w.tolist() == [1, 2, 3, 4]


def test_max_version_compared_as_python_ints():
    t = ab.asdlpack(np.ones(3))
    assert "versioned" not in repr(t.__dlpack__(max_version=(-1, -1)))  # below 1.0: legacy
    assert "versioned" not in repr(t.__dlpack__(max_version=(0, 8)))
    assert "versioned" in repr(t.__dlpack__(max_version=(2**70, 0)))
    assert "versioned" in repr(t.__dlpack__(max_version=(1, 0)))
    with pytest.raises(TypeError, match="max_version"):
        t.__dlpack__(max_version=(1.0, 0))


class _LegacyOnly:
    def __init__(self, t):
        self.t = t

    def __dlpack__(self, stream=None):
        return self.t.__dlpack__()

    def __dlpack_device__(self):
        return self.t.__dlpack_device__()


def test_buffer_protocol_objects():
    for obj, expect in [(b"\x01\x02\x03", [1, 2, 3]), (bytearray(b"\x04\x05"), [4, 5]),
                        (array.array("d", [1.5, 2.5]), [1.5, 2.5]), (array.array("l", [-3, 9]), [-3, 9])]:
        t = ab.asdlpack(obj)
        assert np.asarray(t).tolist() == expect
    assert ab.asdlpack(bytearray(b"xy")).readonly is False
    m = mmap.mmap(-1, 16)
    m[:4] = b"abcd"
    t = ab.asdlpack(m)
    assert bytes(np.asarray(t)[:4]) == b"abcd"
    del t
    gc.collect()
    m.close()


def test_big_endian_is_refused():
    a = np.arange(4, dtype=">u2")
    with pytest.raises((ValueError, BufferError)):
        ab.asdlpack(a)
    with pytest.raises(ValueError, match="big-endian"):
        ab.asdlpack(ArrayInterfaceOnly(a))
    with pytest.raises(ValueError, match="big-endian"):
        ab.asdlpack(memoryview(a))
    # single-byte types have no byte order
    assert ab.asdlpack(ArrayInterfaceOnly(np.arange(3, dtype=">u1"))).shape == (3,)


@pytest.mark.parametrize("bad", [3, 2.5, "text", None, object()])
def test_not_an_array(bad):
    with pytest.raises(TypeError, match="not an array"):
        ab.asdlpack(bad)


def test_bad_interfaces():
    a = np.arange(4, dtype=np.int32)
    ai = dict(a.__array_interface__)
    for change, err in [({"version": 2}, ValueError), ({"typestr": "|V8"}, TypeError),
                        ({"typestr": "<M8[s]"}, TypeError), ({"mask": a}, ValueError)]:
        o = ArrayInterfaceOnly(a)
        o.__array_interface__ = {**ai, **change}
        with pytest.raises(err):
            ab.asdlpack(o)
    o = ArrayInterfaceOnly(a)
    o.__array_interface__ = {**ai, "strides": (3,)}  # not a multiple of the item size
    with pytest.raises(ValueError):
        ab.asdlpack(o)


def test_huge_shapes_overflow():
    with pytest.raises(ValueError):  # 2**62 x 2**62 elements overflow int64 byte counts
        _core.wrap(4096, (2**62, 2**62), None, (1, 8, 1), False, 1, 0, None)
    with pytest.raises((ValueError, TypeError)):
        _core.wrap(4096, tuple([1] * 17), None, (1, 8, 1), False, 1, 0, None)
    with pytest.raises(ab.NotSupportedError):
        _core.wrap(4096, (2,), None, (1, 8, 3), False, 1, 0, None)  # vector lanes
    with pytest.raises(LookupError):
        _core.wrap(4096, (2,), None, (1, 8, 1), False, 99, 0, None)  # device type


def test_cuda_array_interface_is_described():
    t = ab.asdlpack(CudaInterfaceOnly(0x10000, (2, 3), "<f4", version=2))
    assert t.dl_device == (2, 0) and t.shape == (2, 3)
    assert t.device[0] == _core.CUDA
    with pytest.raises(ValueError, match="big-endian"):
        ab.asdlpack(CudaInterfaceOnly(0x10000, (2,), ">f4"))
    with pytest.raises(ValueError, match="version"):
        ab.asdlpack(CudaInterfaceOnly(0x10000, (2,), "<f4", version=1))


def test_dlpack_out_versions_and_copy():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    t = ab.asdlpack(a)
    assert t.__dlpack_device__() == (1, 0)
    legacy = t.__dlpack__()
    assert _capsule_name(legacy) == b"dltensor"
    versioned = t.__dlpack__(max_version=(1, 2))
    assert _capsule_name(versioned) == b"dltensor_versioned"
    old = t.__dlpack__(max_version=(0, 8))
    assert _capsule_name(old) == b"dltensor"
    # consumed by numpy and torch, sharing memory
    b = np.from_dlpack(t)
    assert b.__array_interface__["data"][0] == a.__array_interface__["data"][0]
    torch = pytest.importorskip("torch")
    tt = torch.from_dlpack(t)
    assert tt.data_ptr() == a.__array_interface__["data"][0]
    # copy=True: a fresh buffer with the same values
    c = np.from_dlpack(t, copy=True)
    assert c.__array_interface__["data"][0] != a.__array_interface__["data"][0]
    np.testing.assert_array_equal(c, a)
    cap = t.__dlpack__(max_version=(1, 0), copy=True)
    assert _capsule_name(cap) == b"dltensor_versioned"
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(2, 0))
    with pytest.raises(TypeError):
        t.__dlpack__(stream="x")


def test_dlpack_device_tensor_to_cpu(rt, opencl_devices):
    if not opencl_devices:
        pytest.skip("no OpenCL device")
    a = np.arange(10, dtype=np.float32)
    dev = rt.convert(ab.asdlpack(a), opencl_devices[0]).result()
    assert dev.dl_device[0] == 4
    with pytest.raises(BufferError):
        dev.__dlpack__(dl_device=(1, 0), copy=False)
    with pytest.raises((RuntimeError, BufferError)):  # BufferError from numpy 2.5 on
        np.from_dlpack(dev)  # numpy cannot read OpenCL memory
    host = np.from_dlpack(_ToCPU(dev))
    np.testing.assert_array_equal(host, a)
    np.testing.assert_array_equal(ab.to_numpy(dev), a)


class _ToCPU:
    """A consumer that asks for CPU memory (what the 2023.12 Array API lets consumers do)."""

    def __init__(self, t):
        self.t = t

    def __dlpack__(self, **kw):
        return self.t.__dlpack__(max_version=(1, 0), dl_device=(1, 0))

    def __dlpack_device__(self):
        return (1, 0)


def _capsule_name(cap):
    import ctypes
    get = ctypes.pythonapi.PyCapsule_GetName
    get.restype, get.argtypes = ctypes.c_char_p, [ctypes.py_object]
    return get(cap)


def test_capsule_lifetimes():
    a = np.arange(8, dtype=np.int64)
    t = ab.asdlpack(a)
    for _ in range(100):
        t.__dlpack__()  # unused capsules free their tensor reference
        t.__dlpack__(max_version=(1, 0))
    caps = [t.__dlpack__() for _ in range(3)]
    outs = [_core.from_capsule(c) for c in caps]
    with pytest.raises(TypeError, match="unconsumed"):
        _core.from_capsule(caps[0])  # a capsule is consumed once
    del t, caps
    gc.collect()
    for o in outs:
        np.testing.assert_array_equal(np.asarray(o), np.arange(8))
    with pytest.raises(TypeError):
        _core.from_capsule(object())


def test_imports_from_frameworks():
    torch = pytest.importorskip("torch")
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    t = ab.asdlpack(x)
    assert t.data_ptr == x.data_ptr() and t.shape == (2, 3)
    xt = x.t()  # non-contiguous
    t2 = ab.asdlpack(xt)
    assert t2.strides == (1, 3) and not t2.contiguous
    np.testing.assert_array_equal(np.asarray(t2), xt.numpy())
    jnp = pytest.importorskip("jax.numpy")
    j = jnp.arange(4, dtype=jnp.int32)
    np.testing.assert_array_equal(np.asarray(ab.asdlpack(j)), [0, 1, 2, 3])


def test_np_asarray_of_device_memory_is_an_error(rt, opencl_devices):
    """NumPy took the missing __array_interface__ as 'not an array' and made a 0-d object
    array holding the tensor; now it is told why it cannot have one."""
    if not opencl_devices:
        pytest.skip("no OpenCL device")
    cl = rt.convert(ab.asdlpack(np.arange(3.0)), opencl_devices[0]).result(10)
    with pytest.raises(BufferError, match="not host memory.*to_numpy"):
        np.asarray(cl)
    assert ab.to_numpy(cl).tolist() == [0.0, 1.0, 2.0]
