"""Where an array lives, as arraybridge 0.5 names it: the host, or one accelerator of a library.

These are the device objects of arraybridge 0.5.x (``HOST``, ``AcceleratorDevice(0)``,
``NamedDevice("...")``). Every function that takes a ``gpu_id`` (the seed's spelling: an int, or
None for host memory) takes one of them in its place too:

    convert_memory(x, "numpy", "torch", HOST)              # host memory (gpu_id=None)
    convert_memory(x, "numpy", "torch", AcceleratorDevice(1))   # GPU 1 (gpu_id=1)
    stack_slices(slices, "pyclesperanto", NamedDevice("pthread-cpu"))  # an OpenCL device by name
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Union


class Device(ABC):
    """One place array data can live. Equal fields, equal device."""

    @property
    @abstractmethod
    def label(self) -> str:
        """Short text naming this device in messages."""


@dataclass(frozen=True)
class HostDevice(Device):
    """Main memory, computed on by the host processor."""

    @property
    def label(self) -> str:
        return "host"


@dataclass(frozen=True)
class AcceleratorDevice(Device):
    """One accelerator as its library numbers it (a CUDA device for torch, cupy, jax and
    tensorflow; an OpenCL device for pyclesperanto)."""

    index: int

    @property
    def label(self) -> str:
        return f"accelerator:{self.index}"


@dataclass(frozen=True)
class NamedDevice(Device):
    """A device a library reports by name (pyclesperanto's OpenCL devices)."""

    name: str

    @property
    def label(self) -> str:
        return f"device:{self.name}"


HOST = HostDevice()

GpuId = Union[int, Device, None]


def as_gpu_id(where: GpuId) -> Union[int, str, None]:
    """A gpu_id or a Device -> an int index, a device name (NamedDevice), or None (host)."""
    if where is None or isinstance(where, HostDevice):
        return None
    if isinstance(where, AcceleratorDevice):
        return where.index
    if isinstance(where, NamedDevice):
        return where.name
    return where


def device_for(index: Optional[int]) -> Device:
    """The Device object for a framework index (None: the host)."""
    return HOST if index is None else AcceleratorDevice(index)
