"""The rest of arraybridge 0.5's exported names.

ArrayPayload and ArrayGeometry work as they do there. The conversion-route machinery
(ConversionRoute, ConversionRecord, ConversionObserver, ConversionCounters) has no counterpart:
conversions here are planned inside convert_memory and the runtime. Those names import, so
code that mentions them loads, and using them raises NotSupportedError naming what to use.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Optional, Tuple

from ._core import NotSupportedError


class ArrayPayload(ABC):
    """A container whose array data can be transformed without losing its context."""

    @abstractmethod
    def array_payload_data(self) -> Any:
        """The array this payload carries."""

    @abstractmethod
    def with_data(self, data: Any) -> "ArrayPayload":
        """This payload's context around other array data."""

    def map_array_payload(self, transform: Callable[[Any], Any]) -> "ArrayPayload":
        data = self.array_payload_data()
        out = transform(data)
        return self if out is data else self.with_data(out)


@dataclass(frozen=True)
class ArrayGeometry:
    """An array's shape, read without moving its data."""

    shape: Tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @classmethod
    def from_value(cls, value: Any) -> Optional["ArrayGeometry"]:
        data = value.array_payload_data() if isinstance(value, ArrayPayload) else value
        shape = getattr(data, "shape", None)
        if shape is None:
            import numpy
            try:
                shape = numpy.asarray(data).shape
            except (TypeError, ValueError):
                return None
        try:
            return cls(tuple(int(n) for n in shape))
        except (TypeError, ValueError):
            return None

    @classmethod
    def require_from_value(cls, value: Any, *, value_name: str = "Value") -> "ArrayGeometry":
        g = cls.from_value(value)
        if g is None:
            raise TypeError(f"{value_name} requires concrete array geometry, got {type(value).__name__}.")
        return g


class _Unsupported(type):
    """The metaclass of 0.5 names without a counterpart: they import, can be subclassed and
    named in annotations; calling them or their attributes raises, saying what to use."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise NotSupportedError(cls._why())

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotSupportedError(cls._why())

    def _why(cls) -> str:
        return (f"arraybridge 0.5's {cls.__name__} has no counterpart here: conversions are planned by "
                f"convert_memory and the runtime. {cls._instead}")


_STATS = ("To see what moved, use arraybridge.memory_stats() (bytes moved per device) or "
          "Executor.trace(path) (every task and copy on a timeline).")


class ConversionRoute(metaclass=_Unsupported):
    _instead = "Call convert_memory(data, source_type, target_type, device) directly."


class ConversionRecord(metaclass=_Unsupported):
    _instead = _STATS


class ConversionObserver(metaclass=_Unsupported):
    _instead = _STATS


class ConversionCounters(metaclass=_Unsupported):
    _instead = _STATS


def _ensure_module(module_name: str) -> ModuleType:
    """Import module_name; ImportError naming it when it is not installed."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        raise ImportError(f"Module {module_name} is required for this operation but is not installed") from None


def _supports_dlpack(obj: Any) -> bool:
    """Whether obj exports itself through DLPack."""
    return any(callable(getattr(obj, a, None)) for a in ("__dlpack__", "toDlpack", "to_dlpack"))
