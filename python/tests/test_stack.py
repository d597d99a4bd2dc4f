"""stack_slices, unstack_slices and cast."""
import numpy as np
import pytest

import arraybridge as ab


def slices(n=5, shape=(4, 6), dtype=np.uint16):
    return [np.full(shape, i, dtype=dtype) + np.arange(shape[1], dtype=dtype) for i in range(n)]


@pytest.mark.parametrize("target", ["numpy", "torch", "jax", "tensorflow", "pyclesperanto"])
def test_stack_to_every_cpu_type(target):
    pytest.importorskip({"numpy": "numpy"}.get(target, target))
    s = slices()
    v = ab.stack_slices(s, target)
    assert ab.detect_memory_type(v) == target
    host = np.asarray(ab.convert_memory(v, target, "numpy"))
    np.testing.assert_array_equal(host, np.stack(s))
    assert host.dtype == np.uint16


def test_stack_mixed_and_strided_sources():
    torch = pytest.importorskip("torch")
    s = slices(4, dtype=np.float32)
    mixed = [s[0], torch.from_numpy(s[1].copy()), np.asfortranarray(s[2]), s[3][:, ::-1][:, ::-1]]
    np.testing.assert_array_equal(ab.stack_slices(mixed, "numpy"), np.stack(s))
    big = np.arange(60, dtype=np.float32).reshape(6, 10)
    np.testing.assert_array_equal(ab.stack_slices([big[::2, ::3], big[1::2, ::3]], "numpy"),
                                  np.stack([big[::2, ::3], big[1::2, ::3]]))


def test_stack_errors():
    with pytest.raises(ValueError, match="no slices"):
        ab.stack_slices([], "numpy")
    with pytest.raises(ValueError, match="slice 0 has shape"):
        ab.stack_slices([np.zeros((2, 2, 2))], "numpy")
    with pytest.raises(ValueError, match="slice 2 has shape"):
        ab.stack_slices([np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3))], "numpy")
    with pytest.raises(ValueError, match="slice 1 has dtype"):
        ab.stack_slices([np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.float32)], "numpy")
    with pytest.raises(ValueError, match="expected one of"):
        ab.stack_slices(slices(), "matlab")


def test_stack_onto_an_opencl_device(rt, opencl_devices):
    if not opencl_devices:
        pytest.skip("no OpenCL device")
    s = slices(12, (32, 32))
    vol = rt.stack(s, opencl_devices[-1]).result()
    assert vol.device == opencl_devices[-1] and vol.shape == (12, 32, 32)
    np.testing.assert_array_equal(ab.to_numpy(vol), np.stack(s))
    views = [f.result() for f in rt.unstack(vol, opencl_devices[-1])]
    assert [v.shape for v in views] == [(32, 32)] * 12
    back = [f.result() for f in rt.unstack(vol, (0, 0))]
    np.testing.assert_array_equal(np.asarray(back[5]), s[5])


def test_unstack():
    v = np.stack(slices())
    out = ab.unstack_slices(v, "numpy")
    assert len(out) == 5 and all(o.base is not None for o in out)  # views
    np.testing.assert_array_equal(out[3], v[3])
    torch = pytest.importorskip("torch")
    out = ab.unstack_slices(v, "torch")
    assert all(isinstance(o, torch.Tensor) for o in out)
    with pytest.raises(ValueError, match="3-D"):
        ab.unstack_slices(np.zeros((2, 2)), "numpy")


def test_cast_saturates_where_numpy_wraps():
    a = np.array([-5.0, 0.0, 1.5, 70000.0, np.nan], dtype=np.float32)
    np.testing.assert_array_equal(ab.cast(a, "uint16"), [0, 0, 1, 65535, 0])
    assert ab.cast(np.array([300], np.int32), np.uint8).tolist() == [255]
    assert ab.cast(np.array([-1], np.int64), "uint32").tolist() == [0]


def test_cast_stretch_like_arraybridge():
    a = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    assert ab.cast(a, "uint8", "stretch").tolist() == [0, 127, 255]
    assert ab.cast(a, "uint16", "stretch").tolist() == [0, 32767, 65535]
    assert ab.cast(np.array([100.0, 200.0]), "uint16", "stretch").tolist() == [0, 65535]
    torch = pytest.importorskip("torch")
    t = ab.cast(torch.tensor([0.0, 1.0]), "uint8", "stretch")
    assert isinstance(t, torch.Tensor) and t.tolist() == [0, 255]
    with pytest.raises(ValueError, match="cast mode"):
        ab.cast(a, "uint8", "wrap")


@pytest.mark.parametrize("target", ["numpy", "torch"])
def test_stack_big_endian_slices_byteswapped(target):
    """Big-endian NumPy slices (FITS, some TIFFs) stack as convert_memory converts them: the
    values kept, in the machine's byte order; mixed byte orders of one dtype stack too."""
    pytest.importorskip(target)
    s = (np.arange(6) * 300).astype(">u2").reshape(2, 3)
    assert s.dtype.byteorder == ">"
    v = ab.stack_slices([s, s.astype("<u2"), s[::-1]], target)
    v = np.asarray(ab.convert_memory(v, target, "numpy"))
    assert v.dtype == np.uint16 and (v == np.stack([s, s, s[::-1]])).all()
    with pytest.raises(ValueError, match="slice 1 has dtype"):
        ab.stack_slices([s, s.astype(">i2")], "numpy")
