"""The memory-type decorators."""
import time

import numpy as np
import pytest

import arraybridge as ab


def test_memory_types_metadata_and_contract():
    @ab.memory_types("numpy", "torch", contract=lambda r: r is not None)
    def f(x):
        return x

    assert f.input_memory_type == "numpy" and f.output_memory_type == "torch"
    assert f(1) == 1
    with pytest.raises(ValueError, match="contract"):
        f(None)
    with pytest.raises(ValueError):
        ab.memory_types("numpy", "matlab")


def test_torch_decorator_converts_in_and_out():
    torch = pytest.importorskip("torch")

    @ab.torch(output_type="numpy")
    def double(x):
        assert isinstance(x, torch.Tensor)
        return x * 2

    r = double(np.arange(4, dtype=np.float32))
    assert isinstance(r, np.ndarray) and r.tolist() == [0, 2, 4, 6]

    @ab.torch
    def ident(x):
        return x

    assert isinstance(ident(np.zeros(2, np.float32)), torch.Tensor)
    assert double.input_memory_type == "torch" and ident.output_memory_type == "torch"

    @ab.torch(input_type="numpy")
    def takes_numpy(x):
        return type(x).__name__

    assert takes_numpy(torch.zeros(2)) == "ndarray"


def test_dtype_preserve_stretches_float_results_back():
    @ab.numpy
    def smooth(x):
        return x.astype(np.float32) / 2.0  # a float result from a uint16 image

    r = smooth(np.array([0, 100, 200], dtype=np.uint16))
    assert r.dtype == np.uint16 and r.tolist() == [0, 32767, 65535]
    native = smooth(np.array([0, 100, 200], dtype=np.uint16), dtype_conversion=ab.DtypeConversion.NATIVE_OUTPUT)
    assert native.dtype == np.float32 and native.tolist() == [0, 50, 100]
    as8 = smooth(np.array([0, 2], dtype=np.uint16), dtype_conversion="uint8")
    assert as8.dtype == np.uint8 and as8.tolist() == [0, 255]


def test_torch_uint16_is_kept_not_turned_into_float32():
    torch = pytest.importorskip("torch")

    @ab.torch(output_type="numpy")
    def blur(x):
        return x.float() * 0.5

    r = blur(np.array([0, 1000, 4000], dtype=np.uint16))
    assert r.dtype == np.uint16 and r.tolist() == [0, 16383, 65535]
    assert torch


def test_slice_by_slice_and_tuple_outputs():
    @ab.numpy(slice_by_slice=True, dtype_conversion="native")
    def per_slice(s):
        assert s.ndim == 2
        return s + 1, int(s.sum())

    v = np.zeros((3, 2, 2), np.int32)
    out, sums = per_slice(v)
    assert out.shape == (3, 2, 2) and out.max() == 1 and sums == [0, 0, 0]


def test_oom_recovery_backs_off_and_retries():
    calls = []

    @ab.numpy
    def flaky(x):
        calls.append(1)
        if len(calls) < 3:
            raise MemoryError("out of memory")
        return x

    assert flaky(np.ones(2)).tolist() == [1, 1]
    assert len(calls) == 3

    @ab.numpy(oom_recovery=False)
    def fails(x):
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        fails(np.ones(2))


def test_non_oom_errors_are_not_retried():
    calls = []

    @ab.numpy
    def bad(x):
        calls.append(1)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError):
        bad(np.ones(2))
    assert len(calls) == 1


def test_gpu_id_is_validated_by_gpu_decorators():
    pytest.importorskip("torch")

    @ab.torch(gpu_id=5)
    def f(x):
        return x

    with pytest.raises(ValueError, match="has no device 5"):
        f(np.zeros(2))


def test_cleanup_and_memory_stats(rt):
    pytest.importorskip("torch")
    assert "torch" in ab.cleanup_all_gpu_frameworks()
    stats = ab.memory_stats(rt)
    assert "host:0" in stats["runtime"]
    assert {"mem_used", "mem_peak", "oom_parks"} <= set(stats["runtime"]["host:0"])


def test_torch_decorator_computes_on_uint16_images():
    torch = pytest.importorskip("torch")
    seen = []

    @ab.torch(output_type="numpy")
    def brighten(x):
        seen.append(x.dtype)
        return x + 100

    @ab.torch(output_type="numpy", dtype_conversion="native")
    def stats(x):
        return torch.stack([x.max(), x.min(), (x > 5).sum()])

    img = np.array([[0, 10], [65500, 3]], dtype=np.uint16)
    r = brighten(img)
    assert seen == [torch.int32]  # torch cannot add uint16 tensors: widened, losslessly
    assert r.dtype == np.uint16 and r.tolist() == [[100, 110], [65535, 103]]  # back, saturated
    assert stats(img).tolist() == [65500, 0, 2]
    assert stats(img.astype(np.uint32) * 60000).tolist() == [65500 * 60000, 0, 3]  # uint32: as int64


def test_oom_recovery_uses_the_executors_policy_and_honours_its_deadline():
    from arraybridge import _oom
    assert ab.decorators.OOM_DEADLINE == _oom.DEADLINE == 10.0
    assert (_oom.BACKOFF_INITIAL, _oom.BACKOFF_MAX) == (0.001, 0.1)
    calls = []

    @ab.numpy(oom_deadline=0.5)
    def always(x):
        calls.append(time.monotonic())
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        always(np.ones(2))
    took = time.monotonic() - calls[0]
    # the deadline is 0.5 s: the last attempt comes at it (not up to a backoff step before),
    # within 10% (the bound asked for), plus room for a loaded 2-core machine
    assert 0.5 <= took <= 0.5 * 1.1 + 0.15, took
    assert len(calls) >= 3  # retried (how often depends on how long clearing caches takes)
