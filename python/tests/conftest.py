"""Shared test setup: several pocl OpenCL devices (one thread each), a kernel cache outside $HOME."""
import os
import tempfile

os.environ.setdefault("POCL_DEVICES", "pthread pthread pthread")
os.environ.setdefault("POCL_MAX_PTHREAD_COUNT", "1")
os.environ.setdefault("POCL_CACHE_DIR", os.path.join(tempfile.gettempdir(), "arraybridge-pocl-cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# Under the sanitizer steps (scripts/test.sh pyasan, pytsan: the runtime preloaded) everything
# runs several times slower: tests that measure time against a bound skip there, and stress
# tests shrink.
SANITIZED = any(name in os.environ.get("LD_PRELOAD", "") for name in ("libasan", "libtsan"))

import arraybridge as ab  # noqa: E402

# pocl (the OpenCL devices here) loads LLVM 15 when it first initialises. If TensorFlow was
# imported before that, the process crashes in pocl (their LLVM symbols clash); the other order
# works. So OpenCL is initialised here, before any test imports TensorFlow. README: "Known limits".
ab.runtime()


@pytest.fixture(scope="session")
def rt():
    """The process-wide runtime the arraybridge API uses."""
    return ab.runtime()


@pytest.fixture(scope="session")
def opencl_devices(rt):
    return [d for d in rt.devices() if d[0] == ab._core.OPENCL]


def optional(name):
    """The module, or skip the test when it is not installed."""
    return pytest.importorskip(name)
