"""ArrayLibrary and Array: arraybridge 0.5's objects for the six array libraries, over this
package's conversions, devices, stacking and out-of-memory handling.

``ArrayLibrary.named("torch")``, ``ArrayLibrary.of(x)``, ``MemoryType.TORCH.library`` give the
same object. What 0.5's ArrayLibrary does that has a counterpart here works (devices,
conversion, stacking, dtype scaling, OOM checks and retries, cache cleanup, module loading);
its other members (conversion routes and records, streams as objects, child-process
environments, array arithmetic helpers) raise AttributeError naming what to use instead.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from abc import ABC
from types import ModuleType
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from . import _dtypes, _oom
from .devices import HOST, AcceleratorDevice, Device, HostDevice, NamedDevice, device_for
from .types import MemoryType, memory_type

_DISPLAY = {"numpy": "NumPy", "cupy": "CuPy", "torch": "PyTorch", "tensorflow": "TensorFlow", "jax": "JAX",
            "pyclesperanto": "pyclesperanto"}
_ALIASES = {"jax": ("jaxlib",), "pyclesperanto": ("pyclesperanto_prototype", "pyclesperanto_opencl",
                                                  "pyclesperanto_cuda")}
_HAS_HOST = {"numpy", "torch", "tensorflow", "jax"}

# 0.5 members without a counterpart here, and what to use instead.
_ELSEWHERE = {
    "execution_wrapper": "the decorators (arraybridge.torch, ...) or Executor.options(...).submit",
    "create_stream": "the decorators, which give each thread its own stream (arraybridge/_streams.py)",
    "stream_scope": "the decorators, which give each thread its own stream",
    "thread_stream": "the decorators, which give each thread its own stream",
    "current_device": "available_device_ids(name) and device_of(data)",
    "activate_device": "device_scope(device)",
    "prepare_import": "import_module()",
    "extend_child_environment": "the environment as it is: arraybridge needs no variables",
    "child_environment": "the environment as it is: arraybridge needs no variables",
    "imports_dlpack": "arraybridge.asdlpack(obj), which takes any DLPack producer",
    "imports_dlpack_from": "arraybridge.asdlpack(obj)",
    "exports_dlpack_from": "arraybridge.asdlpack(obj)",
    "exports_dlpack_data": "arraybridge.asdlpack(obj)",
    "export_dlpack": "arraybridge.asdlpack(obj) (a Tensor with __dlpack__)",
    "unrecorded_to_numpy": "to_numpy(data)",
    "unrecorded_from_numpy": "from_numpy(data, device)",
    "shares_numpy_buffer_on": "convert_memory, which shares host buffers whenever it can",
    "host_address_of": "arraybridge.asdlpack(data).data_ptr",
    "normalize_planes": "arraybridge.cast(data, dtype, 'stretch') per plane",
    "linspace": "the library's own module (library.module.linspace)",
    "ones": "the library's own module",
    "ones_like": "the library's own module",
    "outer": "the library's own module",
    "floor": "the library's own module",
    "logical_and": "the library's own module",
    "broadcast_to": "the library's own module",
    "prepend_axis": "the library's own module",
    "assign": "the library's own module",
}


class Array(ABC):
    """An array of any of the six libraries: isinstance(x, Array) holds for their arrays."""

    @classmethod
    def __subclasshook__(cls, sub: type) -> Any:
        if cls is not Array:
            return NotImplemented
        for klass in sub.__mro__:
            top = klass.__module__.split(".")[0]
            if top in _MODULE_OWNERS and (top != "numpy" or issubclass(sub, _numpy_array_types())):
                return True
        return NotImplemented


def _numpy_array_types() -> tuple:
    import numpy
    return (numpy.ndarray, numpy.generic)


_MODULE_OWNERS = {m: name for name in _DISPLAY for m in (name,) + _ALIASES.get(name, ())}


class ArrayLibrary:
    """One array library: its identity, its devices, conversions and memory handling."""

    __registry__: Dict[str, "ArrayLibrary"] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.display_name = _DISPLAY[name]
        self.import_name = name
        self.module_aliases: Tuple[str, ...] = _ALIASES.get(name, ())
        self.memory_type = MemoryType(name)

    def __repr__(self) -> str:
        return f"<ArrayLibrary {self.name}>"

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> Any:
        return ArrayLibrary.named, (self.name,)

    def __getattr__(self, attr: str) -> Any:
        if attr in _ELSEWHERE:
            raise AttributeError(f"ArrayLibrary.{attr} (arraybridge 0.5) has no counterpart here; use "
                                 f"{_ELSEWHERE[attr]}")
        raise AttributeError(f"ArrayLibrary has no attribute {attr!r}")

    # ---- lookup ------------------------------------------------------------------------------
    @classmethod
    def all(cls) -> Tuple["ArrayLibrary", ...]:
        return tuple(cls.__registry__.values())

    @classmethod
    def named(cls, name: Any) -> "ArrayLibrary":
        key = name.value if isinstance(name, MemoryType) else name
        lib = cls.__registry__.get(key)
        if lib is None:
            raise ValueError(f"'{key}' is not a registered array library. Available: {sorted(cls.__registry__)}")
        return lib

    @classmethod
    def for_module_name(cls, module_name: str) -> "ArrayLibrary":
        owner = _MODULE_OWNERS.get(module_name.split(".")[0])
        if owner is None:
            raise ValueError(f"No array library owns module '{module_name}'")
        return cls.__registry__[owner]

    @classmethod
    def of(cls, value: Any) -> "ArrayLibrary":
        """Which library made value (ValueError if none). Imports nothing."""
        from .convert import _detect
        return cls.__registry__[_detect(value).value]

    # ---- the module --------------------------------------------------------------------------
    @property
    def recognized_module_names(self) -> frozenset:
        return frozenset((self.import_name,) + self.module_aliases)

    def is_installed(self) -> bool:
        if self.loaded_module() is not None:
            return True
        try:
            return importlib.util.find_spec(self.import_name) is not None
        except (ImportError, ValueError):
            return False

    def loaded_module(self) -> Optional[ModuleType]:
        return sys.modules.get(self.import_name)

    def import_module(self) -> ModuleType:
        return importlib.import_module(self.import_name)

    def import_if_installed(self) -> Optional[ModuleType]:
        return self.loaded_module() or (self.import_module() if self.is_installed() else None)

    @property
    def module(self) -> ModuleType:
        return self.loaded_module() or self.import_module()

    @property
    def array_module(self) -> ModuleType:
        return importlib.import_module("jax.numpy") if self.name == "jax" else self.module

    def accepts(self, value: Any) -> bool:
        try:
            return ArrayLibrary.of(value) is self
        except ValueError:
            return False

    # ---- devices -----------------------------------------------------------------------------
    def host_devices(self) -> Tuple[HostDevice, ...]:
        return (HOST,) if self.name in _HAS_HOST else ()

    def accelerator_devices(self) -> Tuple[AcceleratorDevice, ...]:
        from .convert import available_device_ids
        if self.name == "numpy" or not self.is_installed():
            return ()
        return tuple(AcceleratorDevice(i) for i in available_device_ids(self.name))

    def available_devices(self) -> Tuple[Device, ...]:
        return self.host_devices() + self.accelerator_devices()

    def device_of(self, data: Any) -> Device:
        from .convert import device_of
        if self.name == "pyclesperanto":
            return NamedDevice(str(getattr(data, "device", "")).strip() or "opencl")
        return device_for(device_of(data, self.memory_type))

    def require_device(self, device: Device) -> None:
        if isinstance(device, NamedDevice) and self.name == "pyclesperanto":
            from .convert import target_index
            target_index(self.memory_type, device)
            return
        available = self.available_devices()
        if device not in available:
            raise ValueError(f"{self.display_name} device {device.label} is unavailable; available devices are "
                             f"{tuple(d.label for d in available)}")

    @contextlib.contextmanager
    def device_scope(self, device: Device) -> Iterator[None]:
        """A block in which the library creates arrays on device (torch, cupy, tensorflow)."""
        self.require_device(device)
        index = device.index if isinstance(device, AcceleratorDevice) else None
        with contextlib.ExitStack() as stack:
            if index is not None and self.name == "torch":
                stack.enter_context(self.module.cuda.device(index))
            elif index is not None and self.name == "cupy":
                stack.enter_context(self.module.cuda.Device(index))
            elif self.name == "tensorflow":
                stack.enter_context(self.module.device("/CPU:0" if index is None else f"/GPU:{index}"))
            yield

    def move_to_device(self, data: Any, device: Device) -> Any:
        from .convert import convert_memory
        return convert_memory(data, self.name, self.name, device)

    # ---- conversion --------------------------------------------------------------------------
    def to_numpy(self, data: Any) -> Any:
        from .convert import convert_memory
        return convert_memory(data, self.name, "numpy")

    def from_numpy(self, data: Any, device: Device = HOST) -> Any:
        from .convert import convert_memory
        return convert_memory(data, "numpy", self.name, device)

    def convert_to(self, data: Any, target: Any, device: Device = HOST) -> Any:
        from .convert import convert_memory
        return convert_memory(data, self.name, ArrayLibrary.named(str(target)).name, device)

    def stack_arrays(self, arrays: Sequence[Any], device: Device = HOST) -> Any:
        """The arrays stacked along a new first axis, on device: 2-D ones by the runtime's
        batched stacking (stack_slices), others by the library's own stack."""
        from .stack import stack_slices
        arrays = list(arrays)
        if arrays and all(len(getattr(a, "shape", ())) == 2 for a in arrays):
            return stack_slices(arrays, self.name, device)
        moved = [self.move_to_device(a, device) if self.accepts(a) else
                 self.from_numpy(ArrayLibrary.of(a).to_numpy(a), device) for a in arrays]
        return self.array_module.stack(moved)

    # ---- dtypes ------------------------------------------------------------------------------
    def dtype_name(self, dtype: Any) -> str:
        """The dtype's name as NumPy spells it ("uint16"), for any library's dtype object."""
        name = getattr(dtype, "name", None)
        if isinstance(name, str):
            return name
        try:
            import numpy
            return numpy.dtype(dtype).name
        except TypeError:
            return str(dtype).rsplit(".", 1)[-1]

    def scale_dtype(self, data: Any, target_dtype: Any) -> Any:
        """data in target_dtype; float to integer stretched min-max (arraybridge's rule)."""
        from .decorators import _apply_dtype
        import numpy
        return _apply_dtype(data, numpy.dtype(self.dtype_name(target_dtype)))

    def astype(self, data: Any, dtype: Any) -> Any:
        from .stack import cast
        return cast(data, self.dtype_name(dtype), "saturate")

    def nbytes_of(self, data: Any) -> int:
        size = 1
        for n in data.shape:
            size *= int(n)
        return size * _dtypes.of(data).itemsize

    def reshape(self, data: Any, shape: Sequence[int]) -> Any:
        return self.array_module.reshape(data, tuple(shape))

    def max(self, data: Any, axis: Any = None) -> Any:
        return _reduce(self, "max", data, axis)

    def min(self, data: Any, axis: Any = None) -> Any:
        return _reduce(self, "min", data, axis)

    def mean(self, data: Any, axis: Any = None) -> Any:
        return _reduce(self, "mean", data, axis)

    def sum(self, data: Any, axis: Any = None) -> Any:
        return _reduce(self, "sum", data, axis)

    # ---- out of memory -----------------------------------------------------------------------
    def is_oom_error(self, error: BaseException) -> bool:
        return _oom.is_oom(error)

    def cleanup_loaded(self, device: Optional[AcceleratorDevice] = None) -> None:
        if self.loaded_module() is not None and self.name in _oom._CLEARERS:
            try:
                _oom._CLEARERS[self.name](device.index if isinstance(device, AcceleratorDevice) else None)
            except Exception:  # noqa: BLE001 - best effort, as in arraybridge 0.5
                pass

    @classmethod
    def cleanup_all_loaded(cls, device: Optional[AcceleratorDevice] = None) -> None:
        for lib in cls.all():
            lib.cleanup_loaded(device)

    def run_with_oom_recovery(self, func: Any, max_retries: Optional[int] = None,
                              device: Optional[AcceleratorDevice] = None) -> Any:
        """func(), retried on out-of-memory errors with the Executor's backoff and deadline
        (max_retries is accepted and ignored: the deadline bounds the retries)."""
        return _oom.retry(func, device.index if isinstance(device, AcceleratorDevice) else None)


def _reduce(lib: ArrayLibrary, op: str, data: Any, axis: Any) -> Any:
    if lib.name == "torch":
        return getattr(data, {"max": "amax", "min": "amin"}.get(op, op))(dim=axis) if axis is not None else \
            getattr(data, op)()
    if lib.name == "tensorflow":
        return getattr(lib.module, f"reduce_{op}")(data, axis=axis)
    return getattr(lib.array_module, op)(data, axis=axis)


for _name in _DISPLAY:
    ArrayLibrary.__registry__[_name] = ArrayLibrary(_name)
del _name


def _library_of_member(self: MemoryType) -> ArrayLibrary:
    """The library this name stands for (arraybridge 0.5's MemoryType.X.library)."""
    return ArrayLibrary.named(self.value)


MemoryType.library = property(_library_of_member)  # type: ignore[attr-defined]
__all__ = ["Array", "ArrayLibrary", "memory_type"]
