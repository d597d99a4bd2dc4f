"""Per-thread CUDA streams for the @torch and @cupy decorators.

Each thread that calls a decorated function gets its own non-default stream per (framework,
device), made on first use and kept for the thread's life. Around the call the stream is made
current on that device, after waiting for the work already queued on the stream that was
current (the input's upload, say); before the result is handed back the stream is
synchronised, since the caller goes on with its own stream. Threads calling at once thus run
their kernels side by side instead of queueing on the default stream, as arraybridge promised.

The bookkeeping (which stream, made when, current where, synchronised when) is framework-free:
a framework is an adapter with make / current / wait / scope / sync, so it is checked without a
GPU; the torch and cupy adapters run on the GPU machine (python/tests/test_gpu.py).
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Callable, Dict, Iterator


class Adapter:
    """What the bookkeeping needs of a framework."""

    def make(self, device: int) -> Any:
        """A new non-default stream on device."""
        raise NotImplementedError

    def wait_current(self, stream: Any, device: int) -> None:
        """Make stream wait for the work queued so far on device's current stream."""
        raise NotImplementedError

    def scope(self, stream: Any, device: int) -> Any:
        """A context manager making device and stream current."""
        raise NotImplementedError

    def sync(self, stream: Any) -> None:
        raise NotImplementedError


class ThreadStreams:
    """Each thread's streams of one framework, by device."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self._local = threading.local()

    def stream(self, device: int) -> Any:
        streams: Dict[int, Any] = getattr(self._local, "streams", None)
        if streams is None:
            streams = self._local.streams = {}
        s = streams.get(device)
        if s is None:
            s = streams[device] = self.adapter.make(device)
        return s

    @contextlib.contextmanager
    def current(self, device: int) -> Iterator[Any]:
        """This thread's stream on device, current for the block and synchronised after it
        (also when the block raises: its kernels may still use memory the caller frees)."""
        s = self.stream(device)
        self.adapter.wait_current(s, device)
        try:
            with self.adapter.scope(s, device):
                yield s
        finally:
            self.adapter.sync(s)

    def call(self, device: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        with self.current(device):
            return fn(*args, **kwargs)


class TorchAdapter(Adapter):
    def __init__(self) -> None:
        self.torch = sys.modules["torch"]

    def make(self, device: int) -> Any:
        with self.torch.cuda.device(device):
            return self.torch.cuda.Stream(device=device)

    def wait_current(self, stream: Any, device: int) -> None:
        stream.wait_stream(self.torch.cuda.current_stream(device))

    def scope(self, stream: Any, device: int) -> Any:
        stack = contextlib.ExitStack()
        stack.enter_context(self.torch.cuda.device(device))
        stack.enter_context(self.torch.cuda.stream(stream))
        return stack

    def sync(self, stream: Any) -> None:
        stream.synchronize()


class CupyAdapter(Adapter):
    def __init__(self) -> None:
        self.cupy = sys.modules["cupy"]

    def make(self, device: int) -> Any:
        with self.cupy.cuda.Device(device):
            return self.cupy.cuda.Stream(non_blocking=True)

    def wait_current(self, stream: Any, device: int) -> None:
        with self.cupy.cuda.Device(device):
            stream.wait_event(self.cupy.cuda.get_current_stream().record())

    def scope(self, stream: Any, device: int) -> Any:
        stack = contextlib.ExitStack()
        stack.enter_context(self.cupy.cuda.Device(device))
        stack.enter_context(stream)
        return stack

    def sync(self, stream: Any) -> None:
        stream.synchronize()


_by_framework: Dict[str, ThreadStreams] = {}
_lock = threading.Lock()


def for_framework(name: str) -> ThreadStreams:
    """The per-thread streams of "torch" or "cupy" (the module must be imported)."""
    ts = _by_framework.get(name)
    if ts is None:
        with _lock:
            ts = _by_framework.get(name)
            if ts is None:
                ts = _by_framework[name] = ThreadStreams(TorchAdapter() if name == "torch" else CupyAdapter())
    return ts
