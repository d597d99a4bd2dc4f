"""Devices and the process-wide default runtime."""
import atexit
import threading

from . import _core

KINDS = {"host": _core.HOST, "cpu": _core.HOST, "opencl": _core.OPENCL, "cuda": _core.CUDA, "gpu": _core.CUDA}
KIND_NAMES = {_core.HOST: "host", _core.OPENCL: "opencl", _core.CUDA: "cuda"}


def kind_name(name):
    """"host", "opencl" or "cuda" for a kind's name or alias ("cpu", "gpu")."""
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"unknown device kind {name!r}")
    return KIND_NAMES[kind]


def parse_device(device, default_kind=_core.HOST):
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
        return (kind, int(idx) if idx else _core.ANY)
    raise TypeError(f"device must be a str or a (kind, index) tuple, not {type(device).__name__}")


def device_name(dev):
    kind, index = dev
    return f"{KIND_NAMES.get(kind, kind)}:{index}"


_default = None
_lock = threading.Lock()


def runtime():
    """The process-wide runtime the arraybridge API uses (created on first use, closed at exit)."""
    global _default
    rt = _default
    if rt is not None:
        return rt
    with _lock:
        if _default is None:
            _default = _core.Runtime()
            atexit.register(_close_default)
        return _default


def _close_default():
    global _default
    rt, _default = _default, None
    if rt is not None:
        rt.close()


def has_kind(rt, kind):
    return any(k == kind for k, _ in rt.devices())
