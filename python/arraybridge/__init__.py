"""arraybridge: one API over NumPy, CuPy, PyTorch, JAX, TensorFlow and pyclesperanto, on a C
runtime with worker pools per device, futures, an out-of-memory backoff ladder and batched
stacking. See the README for the differences from arraybridge 0.2.9 (the seed library)."""
from . import _core, _opencl
from ._core import (CancelledError, DeviceError, Error, InvalidArgumentError, NotSupportedError, OutOfMemoryError,
                    QueueFullError, ReadOnlyError, ShutdownError, Tensor, TimeoutError)
from ._runtime import Runtime, parse_device, runtime
from .convert import available_device_ids, convert_memory, detect_memory_type
from .decorators import cupy, jax, memory_types, numpy, pyclesperanto, tensorflow, torch
from .dlpack import asdlpack, to_numpy
from .executor import Executor, Future
from .memory import cleanup_all_gpu_frameworks, memory_stats
from .stack import cast, stack_slices, unstack_slices
from .types import (CPU_MEMORY_TYPES, GPU_MEMORY_TYPES, SUPPORTED_MEMORY_TYPES, VALID_MEMORY_TYPES, DtypeConversion,
                    MemoryConversionError, MemoryType)

__version__ = _core.version

_opencl.install()  # before anything else can load an OpenCL driver (see _opencl.py)

__all__ = [
    "Executor", "Future", "Runtime", "Tensor", "runtime", "parse_device", "asdlpack", "to_numpy",
    "convert_memory", "detect_memory_type", "available_device_ids", "numpy", "cupy", "torch", "tensorflow",
    "jax", "pyclesperanto", "memory_types", "stack_slices", "unstack_slices", "cast", "memory_stats",
    "cleanup_all_gpu_frameworks", "MemoryType", "DtypeConversion", "MemoryConversionError", "CPU_MEMORY_TYPES",
    "GPU_MEMORY_TYPES", "SUPPORTED_MEMORY_TYPES", "VALID_MEMORY_TYPES", "Error", "InvalidArgumentError",
    "OutOfMemoryError", "TimeoutError", "CancelledError", "DeviceError", "ReadOnlyError", "QueueFullError",
    "ShutdownError", "NotSupportedError",
]
