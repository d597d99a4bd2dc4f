"""Memory-type decorators: @numpy, @cupy, @torch, @tensorflow, @jax, @pyclesperanto and
@memory_types, with the keywords of arraybridge 0.2.9 and 0.5.x.

Differences from arraybridge, on purpose:
  * they convert: the first argument (the image) goes to input_type, the result to output_type
    (arraybridge's decorators only attach metadata);
  * gpu_id=N (or a device object) places the data on that device (0.2.9 had no gpu_id keyword);
  * @torch and @cupy run the function on the calling thread's own CUDA stream on that device,
    made current for the call and synchronised before the result is handed back
    (arraybridge/_streams.py);
  * torch cannot add, compare or take the maximum of uint16 or uint32 tensors, so @torch hands
    such an image over as int32 or int64 (lossless); the dtype step brings the result back;
  * the dtype step works when called directly (0.2.9 raised KeyError without dtype_config) and
    uses the runtime's cast kernels: a float result going back to an integer dtype is stretched
    min-max and clamped, never wrapped around, for every integer dtype (0.2.9 turned uint16 into
    float32 on torch/jax/tf and int8/int64 into 0/1);
  * oom_recovery follows the Executor's policy: after clearing the framework's cache, retries
    with exponential backoff (1 ms doubling to 100 ms) until the deadline (10 s), then the
    framework's error propagates; arraybridge retried three times at once.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as _np

from . import _dtypes, _oom
from .convert import _detect, convert_memory, device_of, target_index
from .devices import GpuId
from .stack import cast, process_slices
from .types import DtypeConversion, MemoryType, memory_type

F = TypeVar("F", bound=Callable[..., Any])

OOM_BACKOFF_INITIAL = _oom.BACKOFF_INITIAL
OOM_BACKOFF_MAX = _oom.BACKOFF_MAX
OOM_DEADLINE = _oom.DEADLINE


# ---- arraybridge 0.5's dtype configuration objects ---------------------------------------------
class DtypeConversionConfig:
    """A dtype policy object (arraybridge 0.5): its default_dtype_conversion is used. Pass one as
    dtype_config= to a decorated call, or dtype_config_default= to the decorator."""

    default_dtype_conversion: DtypeConversion = DtypeConversion.PRESERVE_INPUT

    @classmethod
    def require_parameter_name(cls) -> str:
        return "dtype_config"

    @classmethod
    def default_value(cls) -> "DtypeConversionConfig":
        return PRESERVE_INPUT_DTYPE_CONFIG


@dataclass(frozen=True)
class PreserveInputDtypeConfig(DtypeConversionConfig):
    default_dtype_conversion: DtypeConversion = DtypeConversion.PRESERVE_INPUT


PRESERVE_INPUT_DTYPE_CONFIG = PreserveInputDtypeConfig()


class SliceBySliceRuntimeParameter:
    """The slice_by_slice keyword a decorated function takes (arraybridge 0.5's declaration)."""

    @classmethod
    def require_parameter_name(cls) -> str:
        return "slice_by_slice"

    @classmethod
    def default_value(cls) -> bool:
        return False

    @classmethod
    def annotation_type(cls) -> type:
        return bool

    @classmethod
    def parameter(cls, *, default_value: Optional[bool] = None) -> inspect.Parameter:
        return inspect.Parameter("slice_by_slice", inspect.Parameter.KEYWORD_ONLY,
                                 default=cls.default_value() if default_value is None else default_value,
                                 annotation=bool)


# ---- the decorators ----------------------------------------------------------------------------
def memory_types(input_type: Union[str, MemoryType], output_type: Union[str, MemoryType],
                 contract: Any = None) -> Callable[[F], F]:
    """Declare (and enforce) a function's memory types; see the module's notes. A callable
    contract is checked against every result; any other contract is kept as metadata
    (__processing_contract__), as in arraybridge 0.5."""
    it, ot = memory_type(input_type, "input_type"), memory_type(output_type, "output_type")

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            if callable(contract) and not contract(result):
                raise ValueError(f"Function {func.__name__} violated its output contract")
            return result

        wrapper.input_memory_type = it.value
        wrapper.output_memory_type = ot.value
        if contract is not None and not callable(contract):
            wrapper.__processing_contract__ = contract
        return wrapper

    return decorate


def run_with_oom_recovery(call: Callable[[], Any], device_id: Optional[int] = None,
                          deadline: Optional[float] = None) -> Any:
    """call(), retried after an out-of-memory error (the framework's cache cleared, a backoff of
    1 ms doubling to 100 ms) until `deadline` seconds (default 10, as the Executor's) have
    passed since the first failure; then the framework's error propagates."""
    return _oom.retry(call, device_id, deadline)


_TORCH_WIDER = {_np.dtype(_np.uint16): "int32", _np.dtype(_np.uint32): "int64"}


def _torch_computable(x: Any) -> Any:
    """torch implements few operations for uint16 and uint32: widen them losslessly."""
    wider = _TORCH_WIDER.get(_dtypes.of(x))
    if wider is None:
        return x
    import torch
    return x.to(getattr(torch, wider))


def _dtype_target(mode: Union[str, DtypeConversion], input_dtype: Optional[_np.dtype]) -> Optional[_np.dtype]:
    mode = DtypeConversion(mode) if not isinstance(mode, DtypeConversion) else mode
    if mode is DtypeConversion.NATIVE_OUTPUT:
        return None
    if mode is DtypeConversion.PRESERVE_INPUT:
        return input_dtype
    return mode.numpy_dtype


def _apply_dtype(result: Any, target: Optional[_np.dtype]) -> Any:
    if target is None:
        return result
    have = _dtypes.of(result)
    if have is None or have == target:
        return result
    mode = "stretch" if have.kind == "f" and target.kind in "iub" and target.kind != "b" else "saturate"
    return cast(result, target, mode)


def _stream_device(x: Any, mt: MemoryType, gpu_id: Optional[int]) -> Optional[int]:
    """The CUDA device a torch or cupy call runs on (None: not on a GPU, no stream)."""
    if mt is MemoryType.TORCH:
        import sys
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return None
    elif mt is not MemoryType.CUPY:
        return None
    try:
        if _detect(x) is mt:
            dev = device_of(x, mt)
            if dev is not None:
                return dev
    except ValueError:
        pass
    return gpu_id


def _wrap(f: Callable[..., Any], mt: MemoryType, it: Optional[MemoryType], ot: Optional[MemoryType],
          oom_recovery: bool, contract: Any, gpu_id: GpuId, dtype_conversion: Any, slice_by_slice: bool,
          oom_deadline: Optional[float]) -> Callable[..., Any]:
    """The decorated function. it / ot None: no conversion in or out (wrap_dtype_preserving_callable)."""

    @functools.wraps(f)
    def wrapper(image, *args, dtype_conversion=dtype_conversion, slice_by_slice=slice_by_slice,
                dtype_config=None, **kwargs):
        if dtype_config is not None:
            dtype_conversion = dtype_config.default_dtype_conversion
        try:
            src = _detect(image)
        except ValueError:
            src = None
        in_dtype = _dtypes.of(image)
        x = convert_memory(image, src, it, gpu_id) if src is not None and it is not None else image
        if it is MemoryType.TORCH and src is not None:
            x = _torch_computable(x)
        call = f
        if slice_by_slice and getattr(x, "ndim", 0) == 3:
            call = functools.partial(_sliced, f)
        dev = _stream_device(x, it or mt, target_index(it, gpu_id) if gpu_id is not None and it else None)
        if dev is not None:
            from . import _streams
            call = functools.partial(_streams.for_framework((it or mt).value).call, dev, call)
        if oom_recovery:
            result = _oom.retry(lambda: call(x, *args, **kwargs), dev, oom_deadline)
        else:
            result = call(x, *args, **kwargs)
        if callable(contract) and not contract(result):
            raise ValueError(f"Function {f.__name__} violated its output contract")
        extra = ()
        if isinstance(result, tuple):
            result, extra = result[0], result[1:]
        result = _apply_dtype(result, _dtype_target(dtype_conversion, in_dtype))
        if ot is not None:
            try:
                rsrc = _detect(result)
            except ValueError:
                rsrc = None
            if rsrc is not None:
                result = convert_memory(result, rsrc, ot, gpu_id)
        return (result,) + extra if extra else result

    wrapper.input_memory_type = (it or mt).value
    wrapper.output_memory_type = (ot or mt).value
    wrapper.execution_memory_type = mt.value
    if contract is not None and not callable(contract):
        wrapper.__processing_contract__ = contract
    return wrapper


def _sliced(f: Callable[..., Any], volume: Any, *args: Any, **kwargs: Any) -> Any:
    """slice_by_slice: f on each 2-D slice, restacked; extra tuple outputs become lists."""
    return process_slices(volume, f, args, kwargs)


def _framework_decorator(mt: MemoryType) -> Callable[..., Any]:
    def decorator(func: Optional[F] = None, *, input_type: Union[str, MemoryType] = mt,
                  output_type: Union[str, MemoryType] = mt, oom_recovery: bool = True, contract: Any = None,
                  gpu_id: GpuId = None, dtype_conversion: Union[str, DtypeConversion] = DtypeConversion.PRESERVE_INPUT,
                  slice_by_slice: bool = False, slice_by_slice_default: Optional[bool] = None,
                  dtype_config_default: Optional[DtypeConversionConfig] = None,
                  oom_deadline: Optional[float] = None) -> Any:
        it, ot = memory_type(input_type, "input_type"), memory_type(output_type, "output_type")
        if slice_by_slice_default is not None:
            slice_by_slice = slice_by_slice_default
        if dtype_config_default is not None:
            dtype_conversion = dtype_config_default.default_dtype_conversion

        def decorate(f):
            return _wrap(f, mt, it, ot, oom_recovery, contract, gpu_id, dtype_conversion, slice_by_slice,
                         oom_deadline)

        return decorate(func) if func is not None else decorate

    decorator.__name__ = mt.value
    decorator.__qualname__ = mt.value
    decorator.__doc__ = f"Run the function on {mt.value} data (see the module's notes)."
    return decorator


def wrap_dtype_preserving_callable(func: F, mem_type: Union[str, MemoryType], *,
                                   slice_by_slice_default: bool = False,
                                   dtype_config_default: Optional[DtypeConversionConfig] = None) -> F:
    """arraybridge 0.5's dtype and slice controls around func, without converting its input or
    output: the result gets the input's dtype back (or dtype_config's), slice_by_slice=True
    runs it per 2-D slice."""
    mt = memory_type(mem_type)
    mode = (dtype_config_default or PRESERVE_INPUT_DTYPE_CONFIG).default_dtype_conversion
    return _wrap(func, mt, None, None, False, None, None, mode, slice_by_slice_default, None)


numpy = _framework_decorator(MemoryType.NUMPY)
cupy = _framework_decorator(MemoryType.CUPY)
torch = _framework_decorator(MemoryType.TORCH)
tensorflow = _framework_decorator(MemoryType.TENSORFLOW)
jax = _framework_decorator(MemoryType.JAX)
pyclesperanto = _framework_decorator(MemoryType.PYCLESPERANTO)
