"""Code written for arraybridge 0.5.2 from PyPI, run by test_compat.py under both that package
(in the peer venv) and this one: the printed lines must be the same."""
import numpy as np, torch
import arraybridge as ab
from arraybridge import (HOST, AcceleratorDevice, ArrayLibrary, MemoryType, NamedDevice, convert_memory,
                         detect_memory_type, process_slices, stack_slices, unstack_slices)
from arraybridge.devices import HostDevice

def show(*a):
    print(*a, flush=True)

a = np.arange(12, dtype=np.uint16).reshape(3, 4)
t = convert_memory(a, "numpy", "torch", HOST)
show("to torch", type(t).__name__, t.dtype, t.device.type, t.tolist())
b = convert_memory(t, "torch", "numpy", HOST)
show("back", type(b).__name__, b.dtype, b.tolist())
show("detect", detect_memory_type(t), detect_memory_type(b))
slices = [np.full((2, 3), i, np.float32) for i in range(4)]
v = stack_slices(slices, "numpy", HOST)
show("stack numpy", v.shape, v.dtype, float(v.sum()))
vt = stack_slices(slices, "torch", HOST)
show("stack torch", type(vt).__name__, tuple(vt.shape), vt.dtype)
mixed = stack_slices([slices[0], torch.ones(2, 3)], "numpy", HOST)
show("stack mixed", mixed.shape, float(mixed.sum()))
parts = unstack_slices(vt, "numpy", HOST)
show("unstack", len(parts), type(parts[0]).__name__, parts[3].tolist())
show("unstack validate", len(unstack_slices(v, "torch", HOST, validate_slices=True)))
r = process_slices(v, lambda s: s * 2, (), {})
show("process", r.shape, float(r.sum()))
r2 = process_slices(v, lambda s, k: (s + k, float(s.sum())), (1,), {})
show("process tuple", r2[0].shape, float(r2[0].sum()), r2[1])
show("library", MemoryType.TORCH.library.name, MemoryType("numpy").library.name, ArrayLibrary.of(t).name,
     ArrayLibrary.named("numpy").name, sorted(ArrayLibrary.__registry__))
show("devices", [d.label for d in ArrayLibrary.named("numpy").available_devices()],
     HOST == HostDevice(), AcceleratorDevice(1) == AcceleratorDevice(1), AcceleratorDevice(2).label,
     NamedDevice("x").label)
show("numpy has host", HOST in ArrayLibrary.named("numpy").available_devices(),
     HOST in ArrayLibrary.named("torch").available_devices())
for call in (lambda: convert_memory(a, "numpy", "matlab", HOST), lambda: stack_slices([], "numpy", HOST),
             lambda: stack_slices([np.zeros((2, 2, 2))], "numpy", HOST), lambda: unstack_slices(a, "numpy", HOST),
             lambda: ArrayLibrary.named("matlab"), lambda: detect_memory_type([1, 2])):
    try:
        call()
        show("no error")
    except Exception as e:
        show("error", "ValueError" if isinstance(e, ValueError) else type(e).__name__)

@ab.numpy
def half(x):
    return x.astype(np.float32) / 2

h = half(np.array([0, 100, 200], np.uint16))
show("numpy decorator", h.dtype, h.tolist(), half.input_memory_type, half.output_memory_type)
h2 = half(np.array([0, 100, 200], np.uint16), dtype_config=ab.PreserveInputDtypeConfig())
show("dtype_config", h2.dtype)
@ab.numpy(slice_by_slice_default=True)
def per_slice(s):
    assert s.ndim == 2
    return s + 1
show("slices", per_slice(v).shape, float(per_slice(v).sum()))
@ab.memory_types(input_type="numpy", output_type="numpy", contract=lambda r: r is not None)
def ident(x):
    return x
show("memory_types", ident(3), ident.input_memory_type)
show("contract attr", ab.MemoryContractAttribute.INPUT.read(ident))
show("geometry", ab.ArrayGeometry.from_value(v).shape, ab.ArrayGeometry.from_value(v).ndim)
show("supports dlpack", ab._supports_dlpack(a), ab._supports_dlpack(3))
