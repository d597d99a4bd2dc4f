"""The Runtime object: devices, budgets, faults, errors."""
import numpy as np
import pytest

import arraybridge as ab
from arraybridge import _core


def test_devices_and_info(rt):
    devs = rt.devices()
    assert (_core.HOST, 0) in devs
    info = rt.device_info(_core.HOST, 0)
    assert info["workers"] >= 1 and info["memory_total"] > 0
    with pytest.raises(LookupError):
        rt.device_info(_core.HOST, 9)
    assert len(rt.stats()) == len(devs)


def test_kind_names_are_the_librarys(rt):
    """The kinds' names come from the library (ab_kind_name), by kind; the package's names and
    its aliases ("cpu", "gpu") follow them, and so do the Runtime's options and Tensor's repr."""
    from arraybridge._runtime import KINDS, device_name, kind_name, parse_device
    assert _core.kind_names == ("host", "opencl", "cuda")
    assert {_core.kind_names[k] for k in (_core.HOST, _core.OPENCL, _core.CUDA)} == set(_core.kind_names)
    assert set(KINDS) == set(_core.kind_names) | {"cpu", "gpu"}
    assert (kind_name("cpu"), kind_name("gpu"), kind_name("opencl")) == ("host", "cuda", "opencl")
    assert parse_device("opencl:1") == (_core.OPENCL, 1) and parse_device("gpu:0") == (_core.CUDA, 0)
    assert device_name((_core.CUDA, 0)) == "cuda:0"
    assert "device=host:0>" in repr(rt.empty((2,), (1, 8, 1), (_core.HOST, 0)))
    only_host = _core.Runtime(disable=_core.kind_names[1:])
    try:
        assert {k for k, _ in only_host.devices()} == {_core.HOST}
    finally:
        only_host.close()


def test_memory_limit_and_oom_ladder():
    r = _core.Runtime(memory_limit={"host": 1 << 20}, disable=("opencl", "cuda"), oom_deadline=0.02)
    a = r.empty((512, 512), (1, 16, 1), (0, 0))  # 512 KiB of the 1 MiB budget
    with pytest.raises(ab.OutOfMemoryError):
        r.empty((1024, 1024), (1, 16, 1), (0, 0))
    src = ab.asdlpack(np.zeros((512, 512), np.uint16))
    f = r.convert(src, (0, 0), force_copy=True)
    f2 = r.convert(src, (0, 0), force_copy=True)
    with pytest.raises(ab.OutOfMemoryError) as ei:
        f.result(), f2.result()
    assert "budget" in str(ei.value) or "memory" in str(ei.value)
    del a
    st = r.stats()[0]
    assert st["oom_events"] >= 1 and st["mem_budget"] == 1 << 20
    r.close()


def test_fault_injection_reaches_python():
    r = _core.Runtime(disable=("opencl", "cuda"), oom_no_wait=True)
    src = ab.asdlpack(np.ones(16, np.float32))
    r.fault(_core.FAULT_ALLOC, _core.HOST, 0, 1, 1)  # one failure: the ladder's retry succeeds
    assert r.convert(src, (0, 0), force_copy=True).result().shape == (16,)
    r.fault(_core.FAULT_ALLOC, _core.HOST, 0, 1, -1)  # every allocation fails
    with pytest.raises(ab.OutOfMemoryError, match="out of memory"):
        r.convert(src, (0, 0), force_copy=True).result()
    r.fault(_core.FAULT_ALLOC, _core.HOST, 0, 0, 0)  # off
    assert r.convert(src, (0, 0), force_copy=True).result().shape == (16,)
    st = r.stats()[0]
    assert st["faults_injected"] >= 2 and st["oom_events"] >= 2 and st["oom_failures"] == 1
    r.close()


def test_closed_runtime_and_bad_arguments():
    r = _core.Runtime(disable=("opencl", "cuda"))
    t = ab.asdlpack(np.zeros(4))
    with pytest.raises(LookupError):
        r.convert(t, (_core.OPENCL, 0)).result()
    with pytest.raises(LookupError):
        r.convert(t, (7, 0))
    with pytest.raises(TypeError):
        r.convert(np.zeros(2), (0, 0))
    with pytest.raises(TypeError):
        r.convert(t, "host")
    r.close()
    assert r.closed
    with pytest.raises(ab.ShutdownError):
        r.devices()
    r.close()  # idempotent
    np.testing.assert_array_equal(np.asarray(t), np.zeros(4))  # tensors outlive their runtime


def test_writing_read_only_memory_is_refused(rt):
    a = np.zeros((4, 4), np.float32)
    a.flags.writeable = False
    t = ab.asdlpack(a)
    with pytest.raises(BufferError):
        t.__dlpack__(copy=False)  # legacy consumers would get writable memory, and no copy is allowed
    copied = np.from_dlpack(t)  # otherwise they get a copy
    assert not np.shares_memory(copied, a)
    with pytest.raises(ValueError):
        np.asarray(t)[0, 0] = 1.0


def test_opencl_round_trip_all_dtypes(rt, opencl_devices):
    if not opencl_devices:
        pytest.skip("no OpenCL device")
    for dt in ["uint8", "uint16", "int32", "int64", "float32", "float64"]:
        a = (np.arange(100) % 50).astype(dt).reshape(10, 10)
        d = rt.convert(ab.asdlpack(a), opencl_devices[0]).result()
        back = rt.convert(d, (0, 0)).result()
        np.testing.assert_array_equal(np.asarray(back), a)


def test_trace_from_python(tmp_path):
    import json
    path = tmp_path / "trace.json"
    with ab.Executor(2, devices="host") as ex:
        with ex.trace(str(path)):
            fs = [ex.submit(sum, [i, 1]) for i in range(50)]
            assert [f.result() for f in fs] == [i + 1 for i in range(50)]
        with pytest.raises(ab.Error):
            ex.runtime.trace_write(str(tmp_path / "no" / "such" / "dir.json"))
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    assert any(e.get("ph") == "X" and e.get("name") == "python" for e in events)
    assert any(e.get("ph") == "M" for e in events)  # process and thread names
