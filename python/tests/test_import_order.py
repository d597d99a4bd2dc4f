"""Import orders: numpy, torch, jax, tensorflow, cupy, pyclesperanto and arraybridge in any order,
then every framework used, in one process, without a crash.

pocl (the OpenCL driver here) and TensorFlow each carry an LLVM; when TensorFlow's is loaded
first, the driver's crashes against it inside dlopen (arraybridge/_opencl.py). Each order runs
in a subprocess, since the failure is a segmentation fault. One order cannot be helped from
here: TensorFlow and then pyclesperanto, both before arraybridge, crashes in pyclesperanto's own
import, before any arraybridge code runs; it is left out."""
import concurrent.futures as cf
import importlib.util
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import importlib, sys
for name in sys.argv[1].split(","):
    importlib.import_module(name)
import numpy as np, arraybridge as ab
with ab.Executor(2) as ex:
    kinds = sorted({d.split(":")[0] for d in ex.devices()})
    on = ex.options(device="opencl") if "opencl" in kinds else ex
    assert on.submit(lambda a: a.sum(), np.arange(4)).result() == 6
    v = ab.stack_slices([np.full((4, 4), i, np.uint16) for i in range(3)], "numpy")
    assert int(v[2].max()) == 2
for mt in ("torch", "jax", "tensorflow", "pyclesperanto"):
    x = ab.convert_memory(np.arange(6, dtype=np.float32), "numpy", mt)
    assert np.asarray(ab.convert_memory(x, mt, "numpy")).tolist() == list(range(6)), mt
print("ok", ",".join(kinds))
"""

BASE = ["tensorflow", "pyclesperanto", "arraybridge"]


def _orders():
    """Every order of tensorflow, pyclesperanto and arraybridge but the hopeless one, with numpy,
    torch, jax (and cupy, when installed) placed before, between and after them."""
    import itertools
    others = ["numpy", "torch", "jax"] + (["cupy"] if importlib.util.find_spec("cupy") else [])
    out = []
    for i, perm in enumerate(itertools.permutations(BASE)):
        if perm.index("tensorflow") < perm.index("pyclesperanto") < perm.index("arraybridge"):
            continue  # crashes in pyclesperanto itself (module docstring)
        order = list(perm)
        for j, name in enumerate(others):
            order.insert((i + j) % (len(order) + 1), name)
        out.append(order)
    return out


def _run(order):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(order)], capture_output=True, text=True,
                           timeout=240, env=env)
    except subprocess.TimeoutExpired:
        return order, None, "timed out"
    return order, r.returncode, r.stdout + r.stderr[-2000:]


def test_every_import_order_works():
    for name in ("torch", "jax", "tensorflow", "pyclesperanto"):
        pytest.importorskip(name)
    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(_run, _orders()))
    failed = [(o, rc, out) for o, rc, out in results if rc != 0 or "ok" not in out]
    assert not failed, "\n\n".join(f"{','.join(o)}: exit {rc}\n{out}" for o, rc, out in failed)
    with_opencl = [out for _, _, out in results if "opencl" in out]
    assert with_opencl or not _opencl_here(), "OpenCL was lost in every order"


def _opencl_here():
    import arraybridge as ab
    return any(k == ab._core.OPENCL for k, _ in ab.runtime().devices())


def test_opencl_left_out_with_a_reason_where_it_cannot_be_loaded_safely():
    """With an allocator preloaded, RTLD_DEEPBIND cannot keep pocl's LLVM apart from TensorFlow's:
    the runtime then opens no OpenCL device and says why, once, instead of crashing."""
    pytest.importorskip("tensorflow")
    jemalloc = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    if not os.path.exists(jemalloc):
        pytest.skip("no jemalloc to preload")
    code = ("import tensorflow, warnings, arraybridge as ab\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    a, b = ab.Executor(1), ab.Executor(1)\n"
            "print('devices', a.devices(), b.devices(), 'warnings', len([x for x in w if 'OpenCL' in str(x.message)]))\n"
            "print(a.submit(sum, [1, 2]).result())\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", LD_PRELOAD=jemalloc)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "devices ['host:0'] ['host:0'] warnings 1" in r.stdout and r.stdout.strip().endswith("3")


# arraybridge first, then @torch, @jax, @tensorflow and @pyclesperanto calls on a uint16 image, with
# a kernel that pocl has to compile at the end: the OpenCL driver, loaded by the runtime with lazy
# binding, had calls of clang and LLVM not bound yet when TensorFlow's LLVM arrived, and they
# were then bound to TensorFlow's (a SIGSEGV in clang's code generation, in about half the runs).
COMPILE_AFTER_TF = r"""
import numpy as np, arraybridge as ab
from arraybridge import torch as on_torch, jax as on_jax, tensorflow as on_tf, pyclesperanto as on_cle
img = np.array([[0, 1000, 65535], [30000, 2, 40000]], np.uint16)
assert on_torch(output_type="numpy")(lambda x: x + 10)(img)[0, 1] == 1010
assert on_jax(output_type="numpy")(lambda x: x + 1)(img)[0, 1] == 1001
assert on_tf(output_type="numpy")(lambda x: x + 1)(img)[0, 1] == 1001
import pyclesperanto as cle
print("cle", on_cle(output_type="numpy")(lambda x: cle.add_image_and_scalar(x, scalar=1))(img.astype(np.float32))[0, 1])
"""


def test_kernels_compiled_after_tensorflow_do_not_crash():
    """Up to 4 runs, bounded in time; pocl's and pyclesperanto's kernel caches are off, so that
    the kernels are compiled after TensorFlow came."""
    for name in ("torch", "jax", "tensorflow", "pyclesperanto"):
        pytest.importorskip(name)
    if not _opencl_here():
        pytest.skip("no OpenCL driver")
    import time
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", POCL_KERNEL_CACHE="0",
               CLESPERANTO_NO_CACHE="1")
    end, runs = time.monotonic() + 150 * float(os.environ.get("AB_TEST_SCALE", "1")), 0
    while runs < 4 and (runs == 0 or time.monotonic() < end):
        r = subprocess.run([sys.executable, "-c", COMPILE_AFTER_TF], capture_output=True, text=True,
                           timeout=240, env=env)
        runs += 1
        assert r.returncode == 0, f"run {runs}: exit {r.returncode}\n{r.stdout}{r.stderr[-3000:]}"
        assert "cle 1001" in r.stdout, r.stdout
