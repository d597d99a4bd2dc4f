"""Framework out-of-memory errors: recognise them, and clear the framework's cache.

Recognised by exception type (looked up lazily, only for frameworks already imported) and by
message. Unlike arraybridge 0.2.9, a generic cupy CUDARuntimeError or a TensorFlow
InvalidArgumentError is not taken for out-of-memory, and the cache clearing really runs.
"""
import gc
import sys

_PATTERNS = ("out of memory", "cuda_error_out_of_memory", "resource_exhausted", "oom when allocating",
             "allocation failure", "cl_mem_object_allocation_failure", "cl_out_of_resources",
             "cannot allocate memory", "memory exhausted", "resource exhausted")


def _oom_types():
    types = [MemoryError]
    torch = sys.modules.get("torch")
    if torch is not None:
        t = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) or getattr(torch, "OutOfMemoryError", None)
        if t is not None:
            types.append(t)
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        t = getattr(getattr(getattr(cupy, "cuda", None), "memory", None), "OutOfMemoryError", None)
        if t is not None:
            types.append(t)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        t = getattr(getattr(tf, "errors", None), "ResourceExhaustedError", None)
        if t is not None:
            types.append(t)
    return tuple(types)


def is_oom(exc):
    """True for an out-of-memory error of numpy, torch, cupy, jax, tensorflow or OpenCL."""
    from ._core import OutOfMemoryError
    if isinstance(exc, (OutOfMemoryError,) + _oom_types()):
        return True
    msg = safe_str(exc).lower()
    return any(p in msg for p in _PATTERNS)


def safe_str(exc):
    """str(exc), or a stand-in when the exception's __str__ itself raises: whatever is wrong with
    an exception, it must still reach the caller as itself."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any failure of a user's __str__
        return f"<{type(exc).__name__}: str() failed>"


def framework_of(exc):
    mod = type(exc).__module__.split(".")[0]
    if mod in ("jaxlib", "jax"):
        return "jax"
    return mod


def clear_cache(exc=None, device_id=None):
    """Free what the framework that raised exc caches (all loaded frameworks when exc is None)."""
    which = framework_of(exc) if exc is not None else None
    for name, fn in _CLEARERS.items():
        if (which is None or which == name or which == "builtins") and name in sys.modules:
            try:
                fn(device_id)
            except Exception:  # noqa: BLE001 - clearing is best effort; the ladder retries anyway
                pass
    gc.collect()


def _clear_torch(device_id):
    torch = sys.modules["torch"]
    if torch.cuda.is_available():
        torch.cuda.synchronize(device_id)
        torch.cuda.empty_cache()


def _clear_cupy(device_id):
    cupy = sys.modules["cupy"]
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()


def _clear_jax(device_id):
    jax = sys.modules["jax"]
    jax.clear_caches()  # compiled executables; live buffers are freed by gc.collect() below


def _clear_tf(device_id):
    tf = sys.modules["tensorflow"]
    tf.keras.backend.clear_session() if hasattr(tf, "keras") else None


_CLEARERS = {"torch": _clear_torch, "cupy": _clear_cupy, "jax": _clear_jax, "tensorflow": _clear_tf}
