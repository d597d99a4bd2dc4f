"""Framework out-of-memory errors: recognise them, and clear the framework's cache.

Recognised by exception type (looked up lazily, only for frameworks already imported) and by
message. Unlike arraybridge 0.2.9, a generic cupy CUDARuntimeError or a TensorFlow
InvalidArgumentError is not taken for out-of-memory, and the cache clearing really runs.
"""
import gc
import sys
import time

# The out-of-memory policy, shared by the Executor's tasks (the C runtime's defaults, which its
# ladder applies) and the decorators' retry loop (retry() below): wait 1 ms after the first
# failure, doubling up to 100 ms, and give up once 10 s have passed since the first failure.
BACKOFF_INITIAL = 0.001
BACKOFF_MAX = 0.1
DEADLINE = 10.0

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
    """Free what the framework that raised exc caches (every loaded framework when exc is None;
    for a built-in exception, such as MemoryError or an old torch's RuntimeError, the CUDA
    frameworks' pools), then collect garbage: cycles may hold the arrays that fill memory."""
    which = framework_of(exc) if exc is not None else None
    for name, fn in _CLEARERS.items():
        if name in sys.modules and (which is None or which == name or (which == "builtins" and name in _CUDA)):
            try:
                fn(device_id)
            except Exception:  # noqa: BLE001 - clearing is best effort; the ladder retries anyway
                pass
    gc.collect()


_CUDA = ("torch", "cupy")
_clear_cost = 0.0      # how long the last relieve() took, seconds
_last_relief = -1e9    # when it ended (time.monotonic())


def relieve(exc, device_id=None, remaining=None):
    """clear_cache for a task about to retry after exc, unless that would hurt more than help: a
    full garbage collection in a big process takes up to a second with the GIL held, so it is
    skipped when the last one took more than a fifth of the time since (the retries would spend
    their time collecting), or when less than twice its cost is left before the deadline (it
    would carry the task past it). Returns whether it ran."""
    global _clear_cost, _last_relief
    now = time.monotonic()
    if remaining is not None and remaining < 2 * _clear_cost:
        return False
    if now - _last_relief < 4 * _clear_cost:
        return False
    clear_cache(exc, device_id)
    end = time.monotonic()
    _clear_cost, _last_relief = end - now, end
    return True


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


# TensorFlow has nothing to clear: eager tensors are freed when collected, and resetting Keras'
# session (arraybridge 0.2.9 did not either) would take a second and disturb the user's models.
_CLEARERS = {"torch": _clear_torch, "cupy": _clear_cupy, "jax": _clear_jax}


def retry(call, device_id=None, deadline=None):
    """call(), run again after an out-of-memory error until `deadline` seconds (DEADLINE by
    default) have passed since the first one: the framework's cache cleared, then a backoff
    (BACKOFF_INITIAL doubling to BACKOFF_MAX) clipped so the last attempt comes at the deadline.
    Anything else, or the error after the deadline, propagates."""
    deadline = DEADLINE if deadline is None else deadline
    delay, end = BACKOFF_INITIAL, None
    while True:
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are retried
            if not is_oom(e):
                raise
            now = time.monotonic()
            if end is None:
                end = now + deadline
            if now >= end:
                raise
            relieve(e, device_id, end - now)
            time.sleep(max(0.0, min(delay, end - time.monotonic())))
            delay = min(delay * 2, BACKOFF_MAX)
