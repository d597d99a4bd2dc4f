"""convert_memory and detect_memory_type: moving arrays between frameworks.

Same-device conversions are zero-copy through each framework's own fast path (DLPack or a
shared buffer); anything else goes through host memory unless allow_cpu_roundtrip=False.
Differences from arraybridge 0.2.9, on purpose:
  * gpu_id is honoured for every GPU framework and validated (a device that does not exist is a
    ValueError listing the ones that do); a CPU-only target (numpy) ignores it; gpu_id=None
    keeps GPU data where it is and puts host data in the target framework's host memory where
    it has one (numpy, torch, jax, tensorflow). arraybridge 0.5's device objects (HOST,
    AcceleratorDevice(i), NamedDevice(name)) are accepted in its place.
  * torch tensors are detached before going to NumPy (requires_grad works).
  * the data must be of source_type (MemoryConversionError otherwise), and an unknown type is a
    ValueError naming the valid ones.
  * a read-only NumPy array going to torch (which cannot mark memory read-only) is copied rather
    than shared writable; negative strides (torch has none), big-endian data and NumPy scalars
    are converted rather than refused.
  * allow_cpu_roundtrip=False refuses every conversion that would take device data (CUDA, or
    pyclesperanto's OpenCL memory) through host memory onto a device again.
"""
from __future__ import annotations

import importlib
import warnings

from typing import Any, List, Optional, Union

import numpy as _np

from . import _dtypes
from ._oom import safe_str
from .devices import Device, GpuId, HostDevice, NamedDevice, as_gpu_id
from .types import MemoryConversionError, MemoryType, memory_type

_M = MemoryType
_modules = {}


def _mod(mt):
    m = _modules.get(mt)
    if m is None:
        name = {"tensorflow": "tensorflow", "pyclesperanto": "pyclesperanto"}.get(mt.value, mt.value)
        try:
            m = importlib.import_module(name)
        except ImportError as e:
            raise MemoryConversionError("?", mt.value, "import", f"{name} is not installed ({e})") from e
        _modules[mt] = m
    return m


# ---- detection ------------------------------------------------------------------------------
_TYPE_CACHE = {_np.ndarray: _M.NUMPY}
_MODULE_TYPES = {"numpy": _M.NUMPY, "torch": _M.TORCH, "cupy": _M.CUPY, "jax": _M.JAX, "jaxlib": _M.JAX,
                 "tensorflow": _M.TENSORFLOW, "pyclesperanto": _M.PYCLESPERANTO,
                 "pyclesperanto_prototype": _M.PYCLESPERANTO, "pyclesperanto_opencl": _M.PYCLESPERANTO,
                 "pyclesperanto_cuda": _M.PYCLESPERANTO}


def detect_memory_type(data: Any) -> str:
    """The memory type of data as a string ("numpy", "torch", ...); ValueError if it is none."""
    return _detect(data).value


def _detect(data: Any) -> MemoryType:
    t = type(data)
    mt = _TYPE_CACHE.get(t)
    if mt is not None:
        return mt
    mt = _MODULE_TYPES.get(t.__module__.split(".")[0])
    if mt is None or (mt is _M.NUMPY and not isinstance(data, (_np.ndarray, _np.generic))):
        raise ValueError(f"Unknown memory type for {t.__module__}.{t.__qualname__}")
    _TYPE_CACHE[t] = mt
    return mt


# ---- devices --------------------------------------------------------------------------------
def available_device_ids(mt: Union[str, MemoryType]) -> List[int]:
    """GPU indexes the framework of memory type mt can use here."""
    mt = memory_type(mt)
    if mt is _M.NUMPY:
        return []
    try:
        m = _mod(mt)
    except MemoryConversionError:
        return []
    try:
        if mt is _M.TORCH:
            return list(range(m.cuda.device_count())) if m.cuda.is_available() else []
        if mt is _M.CUPY:
            return list(range(m.cuda.runtime.getDeviceCount()))
        if mt is _M.JAX:
            return [i for i, d in enumerate(d for d in m.devices() if d.platform == "gpu")]
        if mt is _M.TENSORFLOW:
            return list(range(len(m.config.list_logical_devices("GPU"))))
        if mt is _M.PYCLESPERANTO:
            return list(range(len(m.list_available_devices())))
    except Exception:  # noqa: BLE001 - a framework without a driver has no devices
        return []
    return []


def target_index(mt: MemoryType, where: GpuId) -> Optional[int]:
    """The framework device index to convert onto: gpu_id (an int, or None for host memory) or an
    arraybridge 0.5 device object, validated against the devices the framework has. NumPy, which
    has only host memory, ignores it (so the seed's convert_memory(..., "numpy", gpu_id=0) works
    everywhere)."""
    if where is None or type(where) is HostDevice:
        if mt is _M.CUPY and where is not None:
            raise ValueError("cupy has no host device: pass an AcceleratorDevice (or gpu_id)")
        return None
    if mt is _M.NUMPY:
        if isinstance(where, Device) or (isinstance(where, int) and not isinstance(where, bool) and where >= 0):
            return None
    named = isinstance(where, NamedDevice)
    where = as_gpu_id(where)
    if named:  # pyclesperanto's devices have names
        if mt is not _M.PYCLESPERANTO:
            raise ValueError(f"{mt.value} names no devices; use AcceleratorDevice(index) or gpu_id")
        names = list(_mod(mt).list_available_devices())
        if where not in names:
            raise ValueError(f"pyclesperanto has no device named {where!r}; available: {names}")
        return names.index(where)
    if not isinstance(where, int) or isinstance(where, bool) or where < 0:
        raise ValueError(f"gpu_id must be a non-negative int, a device object or None, not {where!r}")
    ids = available_device_ids(mt)
    if where not in ids:
        raise ValueError(f"{mt.value} has no device {where}; available: {ids}")
    return where


def on_device(data: Any, mt: MemoryType) -> bool:
    """Whether data lives in device memory (CUDA, or pyclesperanto's OpenCL), not host memory."""
    return mt is _M.CUPY or mt is _M.PYCLESPERANTO or device_of(data, mt) is not None


def device_of(data, mt=None):
    """The framework-local GPU index data lives on, or None for host memory."""
    mt = mt or _detect(data)
    if mt is _M.TORCH:
        return data.device.index if data.device.type == "cuda" else None
    if mt is _M.CUPY:
        return data.device.id
    if mt is _M.JAX:
        dev = next(iter(data.devices()))
        return dev.id if dev.platform == "gpu" else None
    if mt is _M.TENSORFLOW:
        return int(data.device.rsplit(":", 1)[-1]) if "GPU" in data.device else None
    return None


# ---- to and from host NumPy -------------------------------------------------------------------
def _torch_to_numpy(x):
    try:
        return x.detach().numpy()  # host, no conjugate or negative bit: a view
    except (RuntimeError, TypeError):
        pass
    x = x.detach()
    if x.device.type != "cpu":
        x = x.cpu()
    if x.is_conj():
        x = x.resolve_conj()
    if x.is_neg():
        x = x.resolve_neg()
    return x.numpy()


_TO_NUMPY = {
    _M.NUMPY: lambda x: x,
    _M.TORCH: _torch_to_numpy,
    _M.CUPY: lambda x: x.get(),
    _M.JAX: lambda x: _np.asarray(x),
    _M.TENSORFLOW: lambda x: x.numpy(),
    _M.PYCLESPERANTO: lambda x: _mod(_M.PYCLESPERANTO).pull(x),
}


def _numpy_to_torch(a, gpu_id):
    torch = _mod(_M.TORCH)
    flags = a.flags
    if not (flags.writeable and flags.aligned) or a.dtype.byteorder == ">" or any(s < 0 for s in a.strides):
        # never share read-only memory; torch has no negative strides
        a = _np.array(a, dtype=a.dtype.newbyteorder("="), copy=True)
    t = torch.from_numpy(a)
    return t if gpu_id is None else t.to(f"cuda:{gpu_id}", non_blocking=False)


def _numpy_to_cupy(a, gpu_id):
    cupy = _mod(_M.CUPY)
    if gpu_id is None:
        return cupy.asarray(a)
    with cupy.cuda.Device(gpu_id):  # entered, unlike arraybridge 0.2.9
        return cupy.asarray(a)


def _numpy_to_jax(a, gpu_id):
    jax = _mod(_M.JAX)
    dev = jax.devices("cpu")[0] if gpu_id is None else [d for d in jax.devices() if d.platform == "gpu"][gpu_id]
    return jax.device_put(a, dev)


def _numpy_to_tf(a, gpu_id):
    tf = _mod(_M.TENSORFLOW)
    with tf.device("/CPU:0" if gpu_id is None else f"/GPU:{gpu_id}"):
        return tf.identity(tf.convert_to_tensor(a))


def _numpy_to_cle(a, gpu_id):
    cle = _mod(_M.PYCLESPERANTO)
    if a.ndim == 0:  # pyclesperanto has no 0-d arrays (it made an empty one): the value as shape (1,)
        a = a.reshape(1)
    if gpu_id is None:
        return cle.push(a)
    # pyclesperanto has one current device per process: gpu_id selects it (as cle.select_device)
    return cle.push(a, device=cle.select_device(gpu_id))


_FROM_NUMPY = {
    _M.NUMPY: lambda a, gpu_id: a,
    _M.TORCH: _numpy_to_torch,
    _M.CUPY: _numpy_to_cupy,
    _M.JAX: _numpy_to_jax,
    _M.TENSORFLOW: _numpy_to_tf,
    _M.PYCLESPERANTO: _numpy_to_cle,
}


# ---- direct paths (no host round trip) ---------------------------------------------------------
def _via_dlpack(target):
    def convert(x, gpu_id):
        m = _mod(target)
        if target is _M.TORCH:
            r = m.from_dlpack(x)
            return r if gpu_id is None or r.device.index == gpu_id else r.to(f"cuda:{gpu_id}")
        if target is _M.CUPY:
            r = m.from_dlpack(x)  # zero-copy, on the source's device
            return r if gpu_id is None else _cupy_on(r, gpu_id)
        if target is _M.JAX:
            return m.dlpack.from_dlpack(x)
        raise TypeError(target)
    return convert


def _same(x, gpu_id):
    return x


def _move_same_type(mt):
    """Same memory type, another device: the framework's own device move (a peer copy between
    GPUs where the hardware allows)."""
    def convert(x, gpu_id):
        if gpu_id is None or device_of(x, mt) == gpu_id:
            return x
        if mt is _M.TORCH:
            return x.to(f"cuda:{gpu_id}")
        if mt is _M.CUPY:
            return _cupy_on(x, gpu_id)
        if mt is _M.JAX:
            jax = _mod(mt)
            return jax.device_put(x, [d for d in jax.devices() if d.platform == "gpu"][gpu_id])
        raise _ViaHost()  # tensorflow, pyclesperanto: convert_memory goes through the host
    return convert


class _ViaHost(Exception):
    """A direct path that has no way but through host memory (the caller takes it, or refuses)."""


def _cupy_on(x, gpu_id):
    """A cupy array on device gpu_id: x itself, or a copy made there."""
    cupy = _mod(_M.CUPY)
    if x.device.id == gpu_id:
        return x
    with cupy.cuda.Device(gpu_id):
        return cupy.array(x, copy=True)


def _direct(src, tgt):
    if src is tgt:
        return _same if src is _M.NUMPY else _move_same_type(src)
    if src is _M.NUMPY:
        return _FROM_NUMPY[tgt]
    if tgt is _M.NUMPY:
        return lambda x, gpu_id: _TO_NUMPY[src](x)
    if {src, tgt} <= {_M.TORCH, _M.CUPY, _M.JAX}:
        return _via_dlpack(tgt)
    return None


_PATHS = {}


def _host_array(a):
    """A NumPy source every framework takes: scalars as 0-d arrays, big-endian data byte-swapped."""
    if type(a) is not _np.ndarray:
        a = _np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("="))
    return a


def convert_memory(data: Any, source_type: Union[str, MemoryType], target_type: Union[str, MemoryType],
                   gpu_id: GpuId = None, *, device: GpuId = None, allow_cpu_roundtrip: bool = True) -> Any:
    """data, of memory type source_type, as target_type (on GPU gpu_id for GPU frameworks).

    gpu_id: an int (a GPU for torch, cupy, jax, tensorflow; an OpenCL device for pyclesperanto),
    None (host memory where the target has it; GPU data stays where it is), or one of arraybridge
    0.5's device objects (also as device=). NumPy targets ignore it.

    Zero-copy when the data can stay where it is; otherwise one copy (device moves) or a host
    round trip (frameworks that share no device memory, e.g. pyclesperanto's OpenCL and CUDA).
    allow_cpu_roundtrip=False refuses any round trip through host memory from device memory to
    device memory (OpenHCS's strict mode), pyclesperanto's OpenCL memory included."""
    key = (source_type, target_type)
    path = _PATHS.get(key)
    if path is None:
        src, tgt = memory_type(source_type, "source_type"), memory_type(target_type, "target_type")
        path = _PATHS[key] = (src, tgt, _direct(src, tgt))
    src, tgt, fn = path
    actual = _detect(data)
    if actual is not src:
        raise MemoryConversionError(src.value, tgt.value, "convert_memory", f"the data is {actual.value}, not {src.value}")
    if device is not None:
        if gpu_id is not None:
            raise TypeError("convert_memory: pass gpu_id or device, not both")
        gpu_id = device
    if gpu_id is not None:
        gpu_id = target_index(tgt, gpu_id)
    if src is _M.NUMPY and (type(data) is not _np.ndarray or data.dtype.byteorder == ">"):
        data = _host_array(data)
    if tgt is _M.JAX and src is not _M.JAX:
        _check_jax_64bit(data, src)
    if fn is not None:
        try:
            return fn(data, gpu_id)
        except _ViaHost:
            pass
        except MemoryConversionError as e:
            raise _named(e, src) from e.__cause__
        except Exception as e:  # noqa: BLE001 - direct paths may refuse (DLPack device limits)
            if not allow_cpu_roundtrip:
                raise MemoryConversionError(src.value, tgt.value, "direct", safe_str(e)) from e
            if src is _M.NUMPY or tgt is _M.NUMPY:
                raise MemoryConversionError(src.value, tgt.value, "direct", safe_str(e)) from e
    if not allow_cpu_roundtrip and on_device(data, src) and _lands_on_device(tgt, gpu_id):
        raise MemoryConversionError(src.value, tgt.value, "host round trip",
                                    "the data is in device memory and would be copied through host memory onto a "
                                    "device again; no CPU fallback permitted unless explicitly authorized via "
                                    "allow_cpu_roundtrip=True")
    try:
        return _FROM_NUMPY[tgt](_TO_NUMPY[src](data), gpu_id)
    except MemoryConversionError as e:
        raise _named(e, src) from e.__cause__
    except Exception as e:  # noqa: BLE001
        raise MemoryConversionError(src.value, tgt.value, "host round trip", safe_str(e)) from e


def _named(e: MemoryConversionError, src: MemoryType) -> MemoryConversionError:
    """e with the source filled in where the raiser did not know it (a module that is missing)."""
    if e.source_type != "?":
        return e
    return MemoryConversionError(src.value, e.target_type, e.method, e.reason)


_NARROW = {"i": _np.int32, "u": _np.uint32}


def _check_jax_64bit(data, src):
    """JAX without jax_enable_x64 has no 64-bit dtypes and narrows them without a word (2**40 + 5
    became 5). Integers are converted only when every value fits the 32-bit type, else refused;
    float64 and complex128 lose precision, with a warning."""
    dt = _dtypes.of(data)
    if dt is None or dt.itemsize < 8 or dt.kind not in "iufc" or (dt.kind == "c" and dt.itemsize < 16):
        return
    if _mod(_M.JAX).config.jax_enable_x64:
        return
    if dt.kind in "fc":
        warnings.warn(f"convert_memory to jax: {dt} becomes {'float32' if dt.kind == 'f' else 'complex64'} "
                      "(jax_enable_x64 is off): values are rounded", RuntimeWarning, stacklevel=3)
        return
    a = data if src is _M.NUMPY else _TO_NUMPY[src](data)
    a = _np.asarray(a)
    info = _np.iinfo(_NARROW[dt.kind])
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise MemoryConversionError(src.value, "jax", "JAX's 32-bit dtypes",
                                    f"{dt} values outside the range of {info.dtype} (JAX's widest integer while "
                                    "jax_enable_x64 is off) would be truncated; enable it with "
                                    "jax.config.update('jax_enable_x64', True), or cast first")


def _lands_on_device(tgt: MemoryType, gpu_id: Optional[int]) -> bool:
    return tgt is _M.CUPY or tgt is _M.PYCLESPERANTO or (tgt is not _M.NUMPY and gpu_id is not None)

