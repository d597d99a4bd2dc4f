"""stack_slices, unstack_slices and cast, on the runtime.

stack_slices makes one [Z, Y, X] volume with one allocation and the runtime's batched stacking
(host slices are copied straight to their offsets on two worker threads; on a GPU, one gather
kernel). Unlike arraybridge 0.2.9 every slice is checked (2-D, same shape, same dtype) with the
offending index in the error, and TensorFlow/JAX targets work (they are built on the host and
handed over once, not assigned slice by slice).
"""
import numpy as _np

from . import _core, _dtypes
from ._runtime import has_kind, runtime
from .convert import _detect, _TO_NUMPY, convert_memory, device_of
from .dlpack import asdlpack
from .types import MemoryType, memory_type

_HOST = (_core.HOST, 0)


def _check_slices(slices):
    if len(slices) == 0:
        raise ValueError("stack_slices: no slices")
    first = slices[0]
    shape, dtype = tuple(first.shape), _dtypes.of(first)
    if len(shape) != 2:
        raise ValueError(f"stack_slices: slice 0 has shape {shape}; slices must be 2-D")
    for i, s in enumerate(slices):
        if tuple(s.shape) != shape:
            raise ValueError(f"stack_slices: slice {i} has shape {tuple(s.shape)}, slice 0 has {shape}")
        if _dtypes.of(s) != dtype:
            raise ValueError(f"stack_slices: slice {i} has dtype {_dtypes.of(s)}, slice 0 has {dtype}")


def stack_slices(slices, memory_type_, gpu_id=None, *, rt=None):
    """Stack 2-D slices (any supported types, mixed) into one 3-D array of memory_type_."""
    target = memory_type(memory_type_)
    slices = list(slices)
    _check_slices(slices)
    rt = rt or runtime()
    on_gpu = gpu_id is not None and target in (MemoryType.TORCH, MemoryType.CUPY)
    if on_gpu and has_kind(rt, _core.CUDA):
        volume = rt.stack([asdlpack(s) for s in slices], (_core.CUDA, gpu_id)).result()
        return _from_runtime(volume, target, gpu_id)
    items = []
    for s in slices:
        mt = _detect(s)
        items.append(s if mt is MemoryType.NUMPY else _host_view(s, mt))
    volume = rt.stack(items, _HOST).result()
    return convert_memory(_np.asarray(volume), "numpy", target, gpu_id)


def _host_view(s, mt):
    if device_of(s, mt) is None:
        return _TO_NUMPY[mt](s)  # zero-copy for host torch / jax / tensorflow
    return asdlpack(s)  # a GPU slice: the runtime moves it


def _from_runtime(volume, target, gpu_id):
    if target is MemoryType.TORCH:
        import torch
        return torch.from_dlpack(volume)
    import cupy
    with cupy.cuda.Device(gpu_id):
        return cupy.from_dlpack(volume)


def unstack_slices(array, memory_type_, gpu_id=None, validate_slices=True):
    """The 2-D slices of a 3-D array as memory_type_: views when no move is needed."""
    target = memory_type(memory_type_)
    src = _detect(array)
    if len(array.shape) != 3:
        raise ValueError(f"unstack_slices: expected a 3-D array, got shape {tuple(array.shape)}")
    volume = convert_memory(array, src, target, gpu_id)
    out = [volume[i] for i in range(volume.shape[0])]
    if validate_slices:
        for i, s in enumerate(out):
            if len(s.shape) != 2:
                raise ValueError(f"unstack_slices: slice {i} has shape {tuple(s.shape)}")
    return out


_MODES = {"saturate": _core.CAST_SATURATE, "stretch": _core.CAST_STRETCH}


def cast(data, dtype, mode="saturate", *, rt=None):
    """data converted to dtype by the runtime's cast kernels, in data's own memory type.

    mode "saturate" clamps to the target's range (float -> uint16 clips at 0 and 65535, NaN
    -> 0), unlike NumPy's astype, which wraps around; "stretch" maps the float range min-max onto
    the integer range (arraybridge's dtype "preserve" behaviour)."""
    if mode not in _MODES:
        raise ValueError(f"cast mode must be one of {sorted(_MODES)}, not {mode!r}")
    mt = _detect(data)
    rt = rt or runtime()
    on_device = device_of(data, mt) is not None
    if on_device and has_kind(rt, _core.CUDA):
        t = asdlpack(data)
        out = rt.convert(t, t.device, dtype=_dtypes.to_dl(dtype), cast=_MODES[mode]).result()
        return _from_runtime(out, mt, t.device[1])
    host = _TO_NUMPY[mt](data)
    out = rt.convert(asdlpack(host), _HOST, dtype=_dtypes.to_dl(dtype), cast=_MODES[mode]).result()
    arr = _np.asarray(out)
    return arr if mt is MemoryType.NUMPY else convert_memory(arr, "numpy", mt, device_of(data, mt))
