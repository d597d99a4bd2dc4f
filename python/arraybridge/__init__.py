"""arraybridge: one API over NumPy, CuPy, PyTorch, JAX, TensorFlow and pyclesperanto, on a C
runtime with worker pools per device, futures, an out-of-memory backoff ladder and batched
stacking. Code written for arraybridge 0.2.9 (the seed library) or 0.5.x from PyPI runs
unchanged; see the README's compatibility table for what differs, and why."""
from . import _core, _opencl
from ._compat import (ArrayGeometry, ArrayPayload, ConversionCounters, ConversionObserver, ConversionRecord,
                      ConversionRoute, _ensure_module, _supports_dlpack)
from ._core import (CancelledError, DeviceError, Error, InvalidArgumentError, NotSupportedError, OutOfMemoryError,
                    QueueFullError, ReadOnlyError, ShutdownError, Tensor, TimeoutError)
from ._runtime import Runtime, parse_device, runtime
from .convert import available_device_ids, convert_memory, detect_memory_type
from .decorators import (PRESERVE_INPUT_DTYPE_CONFIG, DtypeConversionConfig, PreserveInputDtypeConfig,
                         SliceBySliceRuntimeParameter, cupy, jax, memory_types, numpy, pyclesperanto, tensorflow,
                         torch, wrap_dtype_preserving_callable)
from .devices import HOST, AcceleratorDevice, Device, HostDevice, NamedDevice
from .dlpack import asdlpack, to_numpy
from .executor import Executor, Future, Options
from .libraries import Array, ArrayLibrary
from .memory import cleanup_all_gpu_frameworks, memory_stats
from .stack import cast, process_slices, stack_slices, unstack_slices
from .types import (CPU_MEMORY_TYPES, GPU_MEMORY_TYPES, SUPPORTED_MEMORY_TYPES, VALID_MEMORY_TYPES, DtypeConversion,
                    MemoryContractAttribute, MemoryConversionError, MemoryType)

__version__ = _core.version

_opencl.install()  # before anything else can load an OpenCL driver (see _opencl.py)

__all__ = [
    # the runtime and the Executor
    "Executor", "Future", "Options", "Runtime", "Tensor", "runtime", "parse_device", "asdlpack", "to_numpy",
    "Error", "InvalidArgumentError", "OutOfMemoryError", "TimeoutError", "CancelledError", "DeviceError",
    "ReadOnlyError", "QueueFullError", "ShutdownError", "NotSupportedError",
    # arraybridge's API (0.2.9 and 0.5)
    "convert_memory", "detect_memory_type", "available_device_ids", "numpy", "cupy", "torch", "tensorflow",
    "jax", "pyclesperanto", "memory_types", "stack_slices", "unstack_slices", "process_slices", "cast",
    "memory_stats", "cleanup_all_gpu_frameworks", "MemoryType", "DtypeConversion", "MemoryConversionError",
    "CPU_MEMORY_TYPES", "GPU_MEMORY_TYPES", "SUPPORTED_MEMORY_TYPES", "VALID_MEMORY_TYPES",
    "Device", "HostDevice", "AcceleratorDevice", "NamedDevice", "HOST", "ArrayLibrary", "Array",
    "MemoryContractAttribute", "DtypeConversionConfig", "PreserveInputDtypeConfig", "PRESERVE_INPUT_DTYPE_CONFIG",
    "SliceBySliceRuntimeParameter", "wrap_dtype_preserving_callable", "ArrayPayload", "ArrayGeometry",
    "ConversionRoute", "ConversionRecord", "ConversionObserver", "ConversionCounters",
    "_ensure_module", "_supports_dlpack",
]
