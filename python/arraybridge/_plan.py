"""How an Executor task converts its arguments and result, and which stream it runs on."""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from . import _core
from .convert import _detect, convert_memory
from .types import MemoryType, memory_type

Device = Tuple[int, int]


class Plan:
    """input_type / output_type conversions around fn, on the device the task runs on.

    Arrays handed to fn as torch tensors are widened where torch cannot compute on their dtype
    (uint16 to int32, uint32 to int64, losslessly), as the @torch decorator does; the result
    keeps the dtype fn gives it.

    physical maps the runtime's (kind, index) to the physical device's index: with
    logical_split, runtime device cuda:3 may be GPU 1, and torch, cupy and pyclesperanto
    number physical devices."""

    def __init__(self, input_type: Optional[str], output_type: Optional[str],
                 physical: Optional[Dict[Device, int]] = None) -> None:
        self.input_type = memory_type(input_type, "input_type") if input_type is not None else None
        self.output_type = memory_type(output_type, "output_type") if output_type is not None else None
        self.physical = physical or {}

    def run(self, fn: Callable[..., Any], args: tuple, kwargs: Optional[dict] = None) -> Any:
        cur = _core.current()  # (kind, index, worker, stream) of this worker's task
        kwargs = kwargs or {}
        if self.input_type is not None:
            gpu_id = framework_device(cur, self.input_type, self.physical)
            args = tuple(self._convert(a, self.input_type, gpu_id, True) for a in args)
            kwargs = {k: self._convert(v, self.input_type, gpu_id, True) for k, v in kwargs.items()}
        with stream_scope(cur, self.physical):
            r = fn(*args, **kwargs)
        if self.output_type is not None:
            gpu_id = framework_device(cur, self.output_type, self.physical)
            if isinstance(r, tuple):
                r = tuple(self._convert(x, self.output_type, gpu_id) for x in r)
            else:
                r = self._convert(r, self.output_type, gpu_id)
        return r

    @staticmethod
    def _convert(x: Any, target: MemoryType, gpu_id: Optional[int], computable: bool = False) -> Any:
        try:
            src = _detect(x)
        except ValueError:
            return x  # not an array: passed through
        x = convert_memory(x, src, target, gpu_id)
        if computable and target is MemoryType.TORCH:
            from .decorators import _torch_computable
            x = _torch_computable(x)  # uint16 -> int32, uint32 -> int64, as @torch hands them over
        return x


_CUDA_TYPES = frozenset({MemoryType.TORCH, MemoryType.CUPY, MemoryType.JAX, MemoryType.TENSORFLOW})


def physical_index(cur: Optional[tuple], physical: Dict[Device, int]) -> Optional[int]:
    """The physical device index of the worker's device (its own index without a split)."""
    if cur is None:
        return None
    return physical.get((cur[0], cur[1]), cur[1])


def framework_device(cur: Optional[tuple], target: MemoryType, physical: Dict[Device, int]) -> Optional[int]:
    """The framework's device index for this worker's device: the physical CUDA device for the
    CUDA frameworks, the physical OpenCL device for pyclesperanto; host memory (None) otherwise."""
    if cur is None:
        return None
    if cur[0] == _core.CUDA and target in _CUDA_TYPES:
        return physical_index(cur, physical)
    if cur[0] == _core.OPENCL and target is MemoryType.PYCLESPERANTO:
        return physical_index(cur, physical)
    return None


@contextlib.contextmanager
def stream_scope(cur: Optional[tuple], physical: Optional[Dict[Device, int]] = None) -> Iterator[None]:
    """On a CUDA worker, make its stream current for torch and cupy while the task runs, on the
    worker's physical GPU, and synchronise it before the result is handed back (the caller's
    thread uses other streams)."""
    if cur is None or cur[0] != _core.CUDA or not cur[3]:
        yield
        return
    gpu = physical_index(cur, physical or {})
    syncs = []
    with contextlib.ExitStack() as stack:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            s = torch.cuda.ExternalStream(cur[3], device=f"cuda:{gpu}")
            stack.enter_context(torch.cuda.device(gpu))
            stack.enter_context(torch.cuda.stream(s))
            syncs.append(s.synchronize)
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            stack.enter_context(cupy.cuda.Device(gpu))
            s = cupy.cuda.ExternalStream(cur[3])
            stack.enter_context(s)
            syncs.append(s.synchronize)
        yield
    for sync in syncs:
        sync()
