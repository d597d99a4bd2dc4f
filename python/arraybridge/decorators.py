"""Memory-type decorators: @numpy, @cupy, @torch, @tensorflow, @jax, @pyclesperanto and
@memory_types.

Differences from arraybridge 0.2.9, on purpose:
  * they convert: the first argument (the image) goes to input_type, the result to output_type
    (0.2.9's decorators only attached metadata);
  * gpu_id=N places the data on that device (0.2.9 had no gpu_id keyword);
  * the dtype step works when called directly (0.2.9 raised KeyError without dtype_config) and
    uses the runtime's cast kernels: a float result going back to an integer dtype is stretched
    min-max and clamped, never wrapped around, for every integer dtype (0.2.9 turned uint16 into
    float32 on torch/jax/tf and int8/int64 into 0/1);
  * oom_recovery backs off exponentially (1 ms doubling to 100 ms, for up to 2 s) after clearing
    the framework's cache, instead of three immediate retries.
"""
import functools
import time

import numpy as _np

from . import _dtypes, _oom
from .convert import _detect, convert_memory
from .stack import cast, stack_slices
from .types import DtypeConversion, MemoryType, memory_type

OOM_BACKOFF_INITIAL = 0.001
OOM_BACKOFF_MAX = 0.1
OOM_DEADLINE = 2.0


def memory_types(input_type, output_type, contract=None):
    """Declare (and enforce) a function's memory types; see the module's notes."""
    it, ot = memory_type(input_type, "input_type"), memory_type(output_type, "output_type")

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            result = func(*args, **kwargs)
            if contract is not None and not contract(result):
                raise ValueError(f"{func.__name__} violated its output contract")
            return result

        wrapper.input_memory_type = it.value
        wrapper.output_memory_type = ot.value
        return wrapper

    return decorate


def _run_with_oom_recovery(func, args, kwargs, gpu_id):
    delay, deadline = OOM_BACKOFF_INITIAL, time.monotonic() + OOM_DEADLINE
    while True:
        try:
            return func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not _oom.is_oom(e) or time.monotonic() + delay > deadline:
                raise
            _oom.clear_cache(e, gpu_id)
            time.sleep(delay)
            delay = min(delay * 2, OOM_BACKOFF_MAX)


def _dtype_target(mode, input_dtype):
    mode = DtypeConversion(mode) if not isinstance(mode, DtypeConversion) else mode
    if mode is DtypeConversion.NATIVE_OUTPUT:
        return None
    if mode is DtypeConversion.PRESERVE_INPUT:
        return input_dtype
    return mode.numpy_dtype


def _apply_dtype(result, target):
    if target is None:
        return result
    have = _dtypes.of(result)
    if have is None or have == target:
        return result
    mode = "stretch" if have.kind == "f" and target.kind in "iub" and target.kind != "b" else "saturate"
    return cast(result, target, mode)


def _framework_decorator(mt):
    def decorator(func=None, *, input_type=mt, output_type=mt, oom_recovery=True, contract=None, gpu_id=None,
                  dtype_conversion=DtypeConversion.PRESERVE_INPUT, slice_by_slice=False):
        it, ot = memory_type(input_type, "input_type"), memory_type(output_type, "output_type")

        def decorate(f):
            @functools.wraps(f)
            def wrapper(image, *args, dtype_conversion=dtype_conversion, slice_by_slice=slice_by_slice, **kwargs):
                try:
                    src = _detect(image)
                except ValueError:
                    src = None
                in_dtype = _dtypes.of(image)
                x = convert_memory(image, src, it, gpu_id) if src is not None else image
                call = functools.partial(_call_sliced, f) if slice_by_slice and getattr(x, "ndim", 0) == 3 else f
                if oom_recovery:
                    result = _run_with_oom_recovery(call, (x,) + args, kwargs, gpu_id)
                else:
                    result = call(x, *args, **kwargs)
                if contract is not None and not contract(result):
                    raise ValueError(f"{f.__name__} violated its output contract")
                extra = ()
                if isinstance(result, tuple):
                    result, extra = result[0], result[1:]
                result = _apply_dtype(result, _dtype_target(dtype_conversion, in_dtype))
                try:
                    rsrc = _detect(result)
                except ValueError:
                    rsrc = None
                if rsrc is not None:
                    result = convert_memory(result, rsrc, ot, gpu_id if ot is not MemoryType.NUMPY else None)
                return (result,) + extra if extra else result

            wrapper.input_memory_type = it.value
            wrapper.output_memory_type = ot.value
            return wrapper

        return decorate(func) if func is not None else decorate

    decorator.__name__ = mt.value
    decorator.__doc__ = f"Run the function on {mt.value} data (see the module's notes)."
    return decorator


def _call_sliced(f, volume, *args, **kwargs):
    """slice_by_slice: f on each 2-D slice, restacked; extra tuple outputs become lists."""
    mt = _detect(volume)
    outs = [f(volume[i], *args, **kwargs) for i in range(volume.shape[0])]
    if outs and isinstance(outs[0], tuple):
        mains = [o[0] for o in outs]
        extras = tuple(list(col) for col in zip(*(o[1:] for o in outs)))
        return (stack_slices(mains, mt),) + extras
    return stack_slices(outs, mt)


numpy = _framework_decorator(MemoryType.NUMPY)
cupy = _framework_decorator(MemoryType.CUPY)
torch = _framework_decorator(MemoryType.TORCH)
tensorflow = _framework_decorator(MemoryType.TENSORFLOW)
jax = _framework_decorator(MemoryType.JAX)
pyclesperanto = _framework_decorator(MemoryType.PYCLESPERANTO)
