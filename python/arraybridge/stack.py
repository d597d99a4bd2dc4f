"""stack_slices, unstack_slices and cast, on the runtime.

stack_slices makes one [Z, Y, X] volume with one allocation and the runtime's batched stacking
(host slices are copied straight to their offsets on two worker threads; on a GPU, one gather
kernel). Unlike arraybridge 0.2.9 every slice is checked (2-D, same shape, same dtype) with the
offending index in the error, and TensorFlow/JAX targets work (they are built on the host and
handed over once, not assigned slice by slice).
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as _np

from . import _core, _dtypes
from ._runtime import has_kind, on_physical, runtime
from .convert import _detect, _host_array, _TO_NUMPY, convert_memory, device_of, target_index
from .devices import GpuId
from .dlpack import asdlpack
from .types import MemoryType
from .types import memory_type as _memory_type

_HOST = (_core.HOST, 0)


def _native(dt):
    """A dtype in the machine's byte order: big-endian slices are stacked byte-swapped."""
    return dt if dt is None or dt.byteorder != ">" else dt.newbyteorder("=")


def _check_slices(slices):
    if len(slices) == 0:
        raise ValueError("stack_slices: no slices")
    first = slices[0]
    shape, dtype = tuple(first.shape), _native(_dtypes.of(first))
    if len(shape) != 2:
        raise ValueError(f"stack_slices: slice 0 has shape {shape}; slices must be 2-D")
    for i, s in enumerate(slices):
        if tuple(s.shape) != shape:
            raise ValueError(f"stack_slices: slice {i} has shape {tuple(s.shape)}, slice 0 has {shape}")
        if _native(_dtypes.of(s)) != dtype:
            raise ValueError(f"stack_slices: slice {i} has dtype {_dtypes.of(s)}, slice 0 has {dtype}")


def _where(gpu_id: GpuId, device: GpuId) -> GpuId:
    if device is not None:
        if gpu_id is not None:
            raise TypeError("pass gpu_id or device, not both")
        return device
    return gpu_id


def stack_slices(slices: Sequence[Any], memory_type: Union[str, MemoryType], gpu_id: GpuId = None, *,
                 device: GpuId = None, rt: Optional[_core.Runtime] = None) -> Any:
    """Stack 2-D slices (any supported types, mixed) into one 3-D array of memory_type.

    gpu_id: the target's GPU (or OpenCL device for pyclesperanto), None for host memory, or an
    arraybridge 0.5 device object (also as device=); NumPy ignores it."""
    target = _memory_type(memory_type)
    gpu_id = target_index(target, _where(gpu_id, device))
    slices = list(slices)
    _check_slices(slices)
    rt = rt or runtime()
    on_gpu = gpu_id is not None and target in (MemoryType.TORCH, MemoryType.CUPY)
    if on_gpu and has_kind(rt, _core.CUDA):
        items = [asdlpack(_host_array(s) if _detect(s) is MemoryType.NUMPY else s) for s in slices]
        volume = rt.stack(items, on_physical(rt, _core.CUDA, gpu_id)).result()
        return _from_runtime(volume, target, gpu_id)
    items = []
    for s in slices:
        mt = _detect(s)
        items.append(_host_array(s) if mt is MemoryType.NUMPY else _host_view(s, mt))
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


def unstack_slices(array: Any, memory_type: Union[str, MemoryType], gpu_id: GpuId = None,
                   validate_slices: bool = True, *, device: GpuId = None) -> List[Any]:
    """The 2-D slices of a 3-D array as memory_type: views when no move is needed."""
    target = _memory_type(memory_type)
    gpu_id = _where(gpu_id, device)
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


def process_slices(image: Any, func: Callable[..., Any], args: Sequence[Any] = (), kwargs: Optional[dict] = None,
                   device: GpuId = None) -> Any:
    """func on each 2-D slice of a 3-D image, the results stacked again (arraybridge's
    slice_by_slice). The image is unstacked where it lives (or on `device`: a gpu_id or a device
    object); the results are stacked in the framework and on the device of the first one. If
    func returns tuples, the first items are stacked and each further item becomes a list
    across slices: (volume, [extra_1 per slice], ...)."""
    kwargs = kwargs or {}
    mt = _detect(image)
    slices = unstack_slices(image, mt, device_of(image, mt) if device is None else device)
    mains, extras, arity = [], [], None
    for i, s in enumerate(slices):
        r = func(s, *args, **kwargs)
        is_tuple = isinstance(r, tuple)
        if arity is None:
            arity = len(r) if is_tuple else -1
            if arity == 0:
                raise ValueError("process_slices: func returned an empty tuple")
        elif (len(r) if is_tuple else -1) != arity:
            raise ValueError(f"process_slices: slice {i} returned {type(r).__name__}"
                             f"{f' of {len(r)}' if is_tuple else ''}, slice 0 a "
                             f"{'tuple of %d' % arity if arity > 0 else 'single value'}")
        if is_tuple:
            mains.append(r[0])
            extras.append(r[1:])
        else:
            mains.append(r)
    if not mains:
        raise ValueError("process_slices: the image has no slices")
    out_mt = _detect(mains[0])
    volume = stack_slices(mains, out_mt, device_of(mains[0], out_mt))
    if arity > 0:
        return (volume,) + tuple(list(col) for col in zip(*extras))
    return volume


_MODES = {"saturate": _core.CAST_SATURATE, "stretch": _core.CAST_STRETCH}


def cast(data: Any, dtype: Any, mode: str = "saturate", *, rt: Optional[_core.Runtime] = None) -> Any:
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
        return _from_runtime(out, mt, out.dl_device[1])  # the physical GPU, as cupy numbers it
    host = _TO_NUMPY[mt](data)
    out = rt.convert(asdlpack(host), _HOST, dtype=_dtypes.to_dl(dtype), cast=_MODES[mode]).result()
    arr = _np.asarray(out)
    return arr if mt is MemoryType.NUMPY else convert_memory(arr, "numpy", mt, device_of(data, mt))
