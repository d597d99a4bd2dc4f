"""DLPack in: asdlpack() makes a runtime Tensor out of anything that describes an array.

Accepted, in this order: a Tensor; a DLPack producer (``__dlpack__``, asked for DLPack 1.x first
so read-only arrays stay read-only, legacy otherwise); ``__array_interface__`` version 3;
``__cuda_array_interface__`` versions 2 and 3; the Python buffer protocol. Big-endian data is
refused (DLPack has no byte order), read-only memory stays read-only, 0-d, empty and
negative-stride arrays are described exactly. The Tensor keeps the source alive.

DLPack out: Tensor implements ``__dlpack__(stream, max_version, dl_device, copy)`` and
``__dlpack_device__``, so ``numpy.from_dlpack``, ``torch.from_dlpack`` and friends take it.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as _np

from . import _core, _dtypes

KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_OPENCL = 1, 2, 3, 4
Tensor = _core.Tensor


def asdlpack(obj: Any) -> "_core.Tensor":
    """A runtime Tensor viewing obj's memory (no copy)."""
    if isinstance(obj, Tensor):
        return obj
    if hasattr(obj, "__dlpack__"):
        return _from_producer(obj)
    ai = getattr(obj, "__array_interface__", None)
    if ai is not None:
        return _from_interface(obj, ai, KDL_CPU, 0)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        return _from_cuda_interface(obj, cai)
    if isinstance(obj, (int, float, complex, str)):
        raise TypeError(f"{type(obj).__name__} is not an array")
    try:
        return _core.from_buffer(obj)
    except TypeError:
        raise TypeError(f"{type(obj).__name__} is not an array: it has no __dlpack__, "
                        "__array_interface__, __cuda_array_interface__ or buffer") from None


def _from_producer(obj):
    dev = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else (KDL_CPU, 0)
    stream = None
    if int(dev[0]) == KDL_CUDA:
        # The runtime's streams do not wait on the producer's: make the data ready first.
        _sync_cuda_producer(obj)
        stream = -1
    try:
        cap = obj.__dlpack__(stream=stream, max_version=(1, 0))
    except TypeError:  # a producer older than DLPack 1.0 (the Array API 2023.12)
        cap = obj.__dlpack__() if stream is None else obj.__dlpack__(stream=stream)
    return _core.from_capsule(cap)


def _sync_cuda_producer(obj):
    mod = type(obj).__module__.split(".")[0]
    if mod == "torch":
        import torch
        torch.cuda.current_stream(obj.device).synchronize()
    elif mod == "cupy":
        import cupy
        cupy.cuda.get_current_stream().synchronize()


def _parse_interface(ai, what, versions):
    version = ai.get("version")
    if version not in versions:
        raise ValueError(f"{what} version {version} is not supported (expected {sorted(versions)})")
    typestr = ai["typestr"]
    if typestr[0] == ">" and typestr[2:] != "1":
        raise ValueError(f"big-endian data ({typestr}) cannot be exported through DLPack; byteswap it first")
    descr = ai.get("descr")
    if descr is not None and len(descr) > 1:
        raise TypeError(f"{what}: structured dtypes are not supported")
    if ai.get("mask") is not None:
        raise ValueError(f"{what}: masked arrays are not supported")
    return _dtypes.to_dl(_np.dtype(typestr.replace(">", "<") if typestr[2:] == "1" else typestr))


def _from_interface(obj, ai, dev_type, dev_id):
    dl = _parse_interface(ai, "__array_interface__", {3})
    data = ai.get("data")
    if data is None or not isinstance(data, tuple):
        # data is the object's own buffer (None) or another object exposing one
        return _core.from_buffer(obj if data is None else data)
    ptr, readonly = data
    ptr += ai.get("offset", 0)
    return _core.wrap(ptr, tuple(ai["shape"]), ai.get("strides"), dl, bool(readonly), dev_type, dev_id, obj)


def _from_cuda_interface(obj, cai):
    dl = _parse_interface(cai, "__cuda_array_interface__", {2, 3})
    ptr, readonly = cai["data"]
    if cai.get("version") == 3 and cai.get("stream") not in (None,):
        _sync_cuda_producer(obj)
    return _core.wrap(ptr, tuple(cai["shape"]), cai.get("strides"), dl, bool(readonly), KDL_CUDA,
                      _cuda_device_of(ptr), obj)


def _cuda_device_of(ptr):
    """The CUDA device that holds ptr. Asked of CuPy when it is installed, else device 0."""
    try:
        import cupy
        return int(cupy.cuda.runtime.pointerGetAttributes(ptr).device)
    except Exception:
        return 0


def to_numpy(t: "_core.Tensor", rt: Optional["_core.Runtime"] = None) -> _np.ndarray:
    """A NumPy array of a Tensor: a view for host tensors, a copy for device ones."""
    if t.device[0] != _core.HOST:
        from ._runtime import runtime
        rt = rt or runtime()
        t = rt.convert(t, (_core.HOST, 0)).result()
    return _np.asarray(t)


def _copy_hook(t, dl_device):
    """Tensor.__dlpack__(copy=True or dl_device=CPU): a fresh copy through the runtime."""
    from ._runtime import runtime
    rt = t.runtime if t.runtime is not None and not t.runtime.closed else runtime()
    dst = (_core.HOST, 0) if dl_device is not None or t.runtime is None else t.device
    return rt.convert(t, dst, force_copy=True).result()


_core._set_copy_hook(_copy_hook)
