"""Memory types and dtype modes, as in arraybridge (the seed library)."""
from collections.abc import Mapping, MutableMapping
from enum import Enum

import numpy as _np


class MemoryType(str, Enum):
    NUMPY = "numpy"
    CUPY = "cupy"
    TORCH = "torch"
    TENSORFLOW = "tensorflow"
    JAX = "jax"
    PYCLESPERANTO = "pyclesperanto"

    def __str__(self):
        return self.value


CPU_MEMORY_TYPES = frozenset({MemoryType.NUMPY})
GPU_MEMORY_TYPES = frozenset(set(MemoryType) - CPU_MEMORY_TYPES)
SUPPORTED_MEMORY_TYPES = frozenset(MemoryType)
VALID_MEMORY_TYPES = frozenset(m.value for m in MemoryType)


class DtypeConversion(str, Enum):
    """What dtype a decorated function's result gets.

    PRESERVE_INPUT  the input's dtype; float results going to an integer dtype are stretched
                    min-max onto the integer range (arraybridge's behaviour), by the runtime's
                    cast kernels, with clamping
    NATIVE_OUTPUT   whatever the function returned
    UINT8 ... FLOAT64  that dtype (float -> int: the same stretch)
    """

    PRESERVE_INPUT = "preserve"
    NATIVE_OUTPUT = "native"
    UINT8 = "uint8"
    UINT16 = "uint16"
    INT16 = "int16"
    INT32 = "int32"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def numpy_dtype(self):
        if self in (DtypeConversion.PRESERVE_INPUT, DtypeConversion.NATIVE_OUTPUT):
            return None
        return _np.dtype(self.value)


class MemoryConversionError(ValueError):
    """A conversion that cannot be done, with what was asked and why."""

    def __init__(self, source_type, target_type, method, reason):
        self.source_type, self.target_type, self.method, self.reason = source_type, target_type, method, reason
        super().__init__(f"Cannot convert from {source_type} to {target_type} using {method}. Reason: {reason}")


def memory_type(value, what="memory type"):
    """A MemoryType from a MemoryType or its name; ValueError naming the valid ones otherwise."""
    if isinstance(value, MemoryType):
        return value
    try:
        return MemoryType(value)
    except ValueError:
        raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(VALID_MEMORY_TYPES)}") from None


class MemoryContractAttribute(str, Enum):
    """Names of the attributes the memory decorators set on a function (arraybridge 0.5)."""

    INPUT = "input_memory_type"
    OUTPUT = "output_memory_type"
    EXECUTION = "execution_memory_type"

    def read(self, namespace, default=None):
        """This attribute of an object or a mapping (default when it has none)."""
        value = namespace.get(self.value, default) if isinstance(namespace, Mapping) else \
            getattr(namespace, self.value, default)
        if value is None or isinstance(value, str):
            return value
        raise TypeError(f"{self.value} of {namespace!r} is {value!r}, not a library name")

    def write(self, namespace, value):
        """Set this attribute on an object or a mutable mapping."""
        if isinstance(namespace, MutableMapping):
            namespace[self.value] = value
        else:
            setattr(namespace, self.value, value)
