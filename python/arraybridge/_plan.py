"""How an Executor task converts its arguments and result, and which stream it runs on."""
import contextlib
import sys

from . import _core
from .convert import _detect, convert_memory
from .types import MemoryType, memory_type


class Plan:
    def __init__(self, input_type, output_type):
        self.input_type = memory_type(input_type, "input_type") if input_type is not None else None
        self.output_type = memory_type(output_type, "output_type") if output_type is not None else None

    def run(self, fn, args, kwargs=None):
        cur = _core.current()  # (kind, index, worker, stream) of this worker's task
        kwargs = kwargs or {}
        if self.input_type is not None:
            gpu_id = _gpu_id(cur, self.input_type)
            args = tuple(self._convert(a, self.input_type, gpu_id) for a in args)
            kwargs = {k: self._convert(v, self.input_type, gpu_id) for k, v in kwargs.items()}
        with stream_scope(cur):
            r = fn(*args, **kwargs)
        if self.output_type is not None:
            gpu_id = _gpu_id(cur, self.output_type)
            if isinstance(r, tuple):
                r = tuple(self._convert(x, self.output_type, gpu_id) for x in r)
            else:
                r = self._convert(r, self.output_type, gpu_id)
        return r

    @staticmethod
    def _convert(x, target, gpu_id):
        try:
            src = _detect(x)
        except ValueError:
            return x  # not an array: passed through
        return convert_memory(x, src, target, gpu_id)


_CUDA_TYPES = frozenset({MemoryType.TORCH, MemoryType.CUPY, MemoryType.JAX, MemoryType.TENSORFLOW})


def _gpu_id(cur, target):
    """The framework device index for this worker's device: CUDA devices for the CUDA
    frameworks, OpenCL devices for pyclesperanto; host memory (None) otherwise."""
    if cur is None:
        return None
    if cur[0] == _core.CUDA and target in _CUDA_TYPES:
        return cur[1]
    if cur[0] == _core.OPENCL and target is MemoryType.PYCLESPERANTO:
        return cur[1]
    return None


@contextlib.contextmanager
def stream_scope(cur):
    """On a CUDA worker, make its stream current for torch and cupy while the task runs."""
    if cur is None or cur[0] != _core.CUDA or not cur[3]:
        yield
        return
    with contextlib.ExitStack() as stack:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            s = torch.cuda.ExternalStream(cur[3], device=f"cuda:{cur[1]}")
            stack.enter_context(torch.cuda.stream(s))
        cupy = sys.modules.get("cupy")
        if cupy is not None:
            stack.enter_context(cupy.cuda.Device(cur[1]))
            stack.enter_context(cupy.cuda.ExternalStream(cur[3]))
        yield
