"""Devices and the process-wide default runtime."""
from __future__ import annotations

import atexit
import os
import threading
from typing import Any, Optional, Tuple, Union

from . import _core, _opencl

# The kinds' names are the library's (ab_kind_name), as the command line, traces and memory
# reports write them; the aliases users may write besides are kept here and nowhere else.
KIND_NAMES = dict(enumerate(_core.kind_names))  # kind -> "host", "opencl", "cuda"
KINDS = {**{name: kind for kind, name in KIND_NAMES.items()}, "cpu": _core.HOST, "gpu": _core.CUDA}
GPU_KIND_NAMES = tuple(name for kind, name in KIND_NAMES.items() if kind != _core.HOST)


def kind_name(name: str) -> str:
    """"host", "opencl" or "cuda" for a kind's name or alias ("cpu", "gpu")."""
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown device kind {name!r}")
    return KIND_NAMES[kind]


def parse_device(device: Union[str, Tuple[Any, int], None], default_kind: int = _core.HOST) -> Tuple[int, int]:
    """'host', 'opencl', 'opencl:1', 'cuda:0', (kind, index) or None -> (kind, index).

    An index of -1 (_core.ANY) means any device of that kind."""
    if device is None:
        return (default_kind, _core.ANY)
    if isinstance(device, tuple) and len(device) == 2:
        kind, index = device
        if isinstance(kind, str):
            kind = parse_device(kind)[0]
        return (int(kind), int(index))
    if isinstance(device, str):
        name, _, idx = device.partition(":")
        kind = KINDS.get(name.lower())
        if kind is None:
            raise ValueError(f"unknown device {device!r}: expected host, opencl[:N] or cuda[:N]")
        try:
            return (kind, int(idx) if idx else _core.ANY)
        except ValueError:
            raise ValueError(f"device {device!r}: the index after ':' must be an integer, as in "
                             f"'{name.lower()}:0'") from None
    raise TypeError(f"device must be a str or a (kind, index) tuple, not {type(device).__name__}")


def device_name(dev: Tuple[int, int]) -> str:
    """(kind, index) -> "cuda:0", "opencl:1", "host:0"."""
    kind, index = dev
    return f"{KIND_NAMES.get(kind, kind)}:{index}"


class Runtime(_core.Runtime):
    """An arraybridge runtime (see _core.Runtime for the options). Made here rather than from
    the extension directly, it first makes loading the OpenCL drivers safe next to TensorFlow,
    and opens no OpenCL device where that cannot be done (arraybridge/_opencl.py)."""

    def __init__(self, workers: Optional[dict] = None, memory_limit: Optional[dict] = None,
                 logical_split: Optional[dict] = None, disable: Tuple[str, ...] = (), **options: Any) -> None:
        disable = tuple(disable or ())
        opencl = KIND_NAMES[_core.OPENCL]
        if opencl not in disable and _opencl.opencl_refused():
            disable += (opencl,)
        super().__init__(workers, memory_limit, logical_split, disable, **options)


_default = None
_lock = threading.Lock()


def runtime() -> "Runtime":
    """The process-wide runtime the arraybridge API uses (created on first use, closed at exit)."""
    global _default
    rt = _default
    if rt is not None:
        return rt
    with _lock:
        if _default is None:
            _default = Runtime()
            atexit.register(_close_default)
        return _default


def _close_default():
    global _default
    rt, _default = _default, None
    if rt is not None:
        rt.close()


def _before_fork():
    """Frameworks that initialised a driver in this process: a forked child must not use it
    (arraybridge's own runtimes are accounted for by the extension)."""
    import sys
    if "pyclesperanto" in sys.modules or "pyclesperanto_prototype" in sys.modules:
        _core._note_opened(_core.OPENCL)  # they initialise OpenCL when imported
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():
            _core._note_opened(_core.CUDA)
    except Exception:  # noqa: BLE001 - a half-imported torch: nothing initialised
        pass


def _after_fork_in_child():
    """The parent's default runtime has no worker threads here: the child makes its own on first
    use (the old one is dropped; the extension leaks what it held rather than join threads
    that do not exist)."""
    global _default, _lock
    _default = None
    _lock = threading.Lock()


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def has_kind(rt, kind):
    return any(k == kind for k, _ in rt.devices())


def on_physical(rt: Any, kind: int, physical: int) -> Tuple[int, int]:
    """rt's device of that kind on physical device `physical` (a GPU as torch and cupy number
    it): the first of its logical devices when rt splits devices (logical_split)."""
    for k, i in rt.devices():
        if k == kind and rt.device_info(k, i)["physical"] == physical:
            return (k, i)
    raise _core.DeviceError(f"the runtime has no {KIND_NAMES.get(kind, kind)} device on physical device {physical}")
