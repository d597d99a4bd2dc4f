"""arraybridge.Executor: a concurrent.futures.Executor on the runtime's worker pools.

Every submit is one runtime task. It is placed on a device (explicit, or the least-loaded of a
kind), runs on one of that device's worker threads with the GIL held, and settles a
concurrent.futures.Future subclass, so ``concurrent.futures.wait``, ``as_completed`` and
``asyncio.wrap_future`` work unchanged. ``result()`` waits inside the runtime with the GIL
released (a short spin, then a futex), which is where most of the speed over
ThreadPoolExecutor comes from.

Out-of-memory errors of torch, cupy, jax and tensorflow (by exception type and by message) clear
that framework's cache and enter the runtime's OOM ladder: the task is parked and run again with
exponential backoff until its deadline, then fails with arraybridge.OutOfMemoryError, chained to
the framework's own exception.
"""
import atexit as _atexit
import concurrent.futures as _cf
import functools as _functools
import weakref as _weakref
import threading as _threading
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING

from . import _core, _oom
from ._runtime import kind_name, parse_device

_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_ENOMEM = _core.AB_ENOMEM


class Future(_cf.Future):
    """A concurrent.futures.Future settled by a runtime task.

    The futures of one executor share one Condition (creating a Condition per future costs more
    than the rest of a submit); result() and exception() wait on the runtime instead of it."""

    # Defaults as class attributes, and the two lists made on first use: a submit then creates
    # one object the garbage collector tracks instead of three (with 100k futures alive, the
    # collector's passes were a third of the time), and sets two attributes, not nine.
    _state = PENDING
    _result = None
    _exception = None
    _task = None  # the runtime's Future
    _oom_retry = True
    _last_oom = None
    _w = None   # concurrent.futures' _waiters, once someone waits
    _cb = None  # _done_callbacks, once someone adds one

    def __init__(self, condition):  # no super().__init__: it would make a Condition
        self._condition = condition

    @property
    def _waiters(self):
        w = self._w
        if w is None:
            w = self._w = []
        return w

    @property
    def _done_callbacks(self):
        cb = self._cb
        if cb is None:
            cb = self._cb = []
        return cb

    def _wait_settled(self, timeout):
        if self._state in _DONE:
            return
        task = self._task
        if task is not None and not task.wait(timeout):
            raise _cf.TimeoutError()
        # The task is complete. A task that ran settled this future before completing; a
        # cancelled or failed one settles it from a completion callback, possibly a moment later.
        with self._condition:
            while self._state not in _DONE:
                self._condition.wait(0.001)

    def result(self, timeout=None):
        if self._state == FINISHED and self._exception is None:
            return self._result
        self._wait_settled(timeout)
        return super().result(0)

    def exception(self, timeout=None):
        self._wait_settled(timeout)
        return super().exception(0)

    def cancel(self):
        """Cancel a task that has not started; False once it runs (or is parked for memory)."""
        state = self._state
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return True
        if state != PENDING or self._task is None:
            return False
        if self._task.cancel() == 0:  # claimed before anyone ran it: it never will
            self._cancel_now()
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def _cancel_now(self):
        if _cf.Future.cancel(self):
            self.set_running_or_notify_cancel()  # tells wait() and as_completed()

    # ---- called by the runtime (python/src/module.c), with the GIL held -------------------------
    def _ab_settle(self, result):
        cond = self._condition
        with cond:
            self._result = result
            self._state = FINISHED
            if self._w:
                for waiter in self._w:
                    waiter.add_result(self)
            if cond._waiters:
                cond.notify_all()
        if self._cb:
            self._invoke_callbacks()

    def _ab_raised(self, exc):
        """fn raised exc: True to be parked and run again (a framework out-of-memory error)."""
        if self._oom_retry and _oom.is_oom(exc):
            _oom.clear_cache(exc)
            self._last_oom = exc
            return True
        self.set_exception(exc)
        return False

    def _ab_end(self, status, message):
        """The task ended without fn finishing: cancelled, out of memory, shut down."""
        if self._state in _DONE:
            return
        if status == _core.AB_ECANCELED and self._state == PENDING:
            self._cancel_now()
            return
        if status == _ENOMEM and self._last_oom is not None:
            exc = _core.OutOfMemoryError(f"out of memory after the runtime's backoff ladder:\n{message}")
            exc.__cause__ = self._last_oom
        else:
            cls = _core.CancelledError if status == _core.AB_ECANCELED else _core.Error
            exc = cls(f"task ended: {_core.strerror(status)} ({status}) {message}".rstrip())
        exc.code = status
        if self._state == PENDING:
            self.set_running_or_notify_cancel()
        self.set_exception(exc)


_OPTIONS = frozenset({"device", "input_type", "output_type", "oom_retry"})


class Executor(_cf.Executor):
    """A concurrent.futures.Executor over the arraybridge runtime.

    Executor(max_workers=None, *, devices=None, workers_per_device=None, memory_limit=None,
             logical_split=None, queue_capacity=65536, oom_deadline=None)

    max_workers     host worker threads (ThreadPoolExecutor's meaning); default one per core
    devices         which kinds to open: "host", "opencl", "cuda", a list of them, or None (all
                    present). The host is always open.
    workers_per_device  {"opencl": 2, "cuda": 2, ...} or an int for every GPU kind
    memory_limit    {"cuda": bytes, ...} or an int for every kind: the runtime's own budget
    oom_deadline    seconds a task may spend parked waiting for memory (default 10)
    default_device  where submit runs tasks that name no device (default: the host)
    """

    def __init__(self, max_workers=None, *, devices=None, workers_per_device=None, memory_limit=None,
                 logical_split=None, queue_capacity=1 << 16, oom_deadline=None, default_device=None,
                 thread_name_prefix=None):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        workers = _per_kind(workers_per_device, exclude_host=True)
        if max_workers is not None:
            workers["host"] = max_workers
        disable = _disabled_kinds(devices)
        self._runtime = _core.Runtime(workers=workers, memory_limit=_per_kind(memory_limit),
                                      logical_split=_per_kind(logical_split, exclude_host=True),
                                      disable=disable, queue_capacity=queue_capacity, oom_deadline=oom_deadline)
        self._condition = _threading.Condition()
        self._shutdown = False
        self._shutdown_lock = _threading.Lock()
        self._closer = None
        self._plans = {}
        self._call = self._runtime.call
        _live.add(self)
        self._default_device = None
        if default_device is not None:
            self._default_device = parse_device(default_device)
            if not any(k == self._default_device[0] for k, _ in self._runtime.devices()):
                raise _core.DeviceError(f"default_device {default_device!r}: the runtime has no such device")

    @property
    def runtime(self):
        return self._runtime

    def devices(self):
        """[(kind, index), ...] the runtime opened."""
        return self._runtime.devices()

    def stats(self):
        return self._runtime.stats()

    def trace(self, path, events_per_worker=0):
        """A context manager recording a Chrome trace of every task and device memory while its
        block runs, written to `path` (open it in https://ui.perfetto.dev)."""
        return _Trace(self._runtime, path, events_per_worker)

    def submit(self, fn, /, *args, **kwargs):
        """submit(fn, *args, device=None, input_type=None, output_type=None, oom_retry=True, **kwargs)

        Run fn(*args, **kwargs) on a worker of `device` ("host", "opencl", "opencl:1", "cuda:0",
        or None for any host worker) and return a concurrent.futures.Future.

        input_type converts array arguments (positional and keyword) to that memory type on the
        device before the call; output_type converts the result. On CUDA devices the worker's
        stream is made current for torch and cupy while fn runs. oom_retry=False lets a
        framework's out-of-memory error fail the future at once."""
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if (kwargs and not _OPTIONS.isdisjoint(kwargs)) or self._default_device is not None:
            return self._submit_with_options(fn, args, kwargs)
        fut = Future(self._condition)
        try:
            fut._task = self._call(fut, fn, args, kwargs or None)
        except _core.ShutdownError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return fut

    def _submit_with_options(self, fn, args, kwargs):
        device = kwargs.pop("device", None) or self._default_device
        input_type = kwargs.pop("input_type", None)
        output_type = kwargs.pop("output_type", None)
        oom_retry = kwargs.pop("oom_retry", True)
        dev = parse_device(device)
        if input_type is not None or output_type is not None or dev[0] == _core.CUDA:
            fn = _functools.partial(self._plan(input_type, output_type).run, fn)
            args, kwargs = (args, kwargs), None
        fut = Future(self._condition)
        if not oom_retry:
            fut._oom_retry = False
        policy = _core.PLACE_EXPLICIT if dev[1] >= 0 else _core.PLACE_AUTO
        try:
            fut._task = self._call(fut, fn, args, kwargs or None, dev, policy)
        except _core.ShutdownError:
            raise RuntimeError("cannot schedule new futures after shutdown") from None
        return fut

    def _plan(self, input_type, output_type):
        key = (input_type, output_type)
        plan = self._plans.get(key)
        if plan is None:
            from ._plan import Plan
            plan = self._plans[key] = Plan(input_type, output_type)
        return plan

    def map(self, fn, *iterables, timeout=None, chunksize=1, device=None, **options):
        if device is None and not options:
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        submit = self.submit

        class _Bound:  # super().map calls self.submit(fn, *args)
            def submit(self, f, *args):
                return submit(f, *args, device=device, **options)

        return _cf.Executor.map(_Bound(), fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop accepting work. cancel_futures cancels tasks that have not started; wait blocks
        until every task has completed (the runtime drains or cancels; it never strands one).
        A later shutdown(wait=True) waits for an earlier shutdown(wait=False) to finish."""
        with self._shutdown_lock:
            if not self._shutdown:
                self._shutdown = True
                self._closer = _threading.Thread(target=self._runtime.close, kwargs={"cancel": cancel_futures},
                                                 name="arraybridge-shutdown", daemon=True)
                self._closer.start()
        if wait:
            self._closer.join()


# Executors still open at exit are drained before the interpreter finalises: after that, a worker
# that needs the GIL to finish a Python task could never get it, and the runtime's destroy (run
# when the object is collected) would wait for it for ever. concurrent.futures does the same.
_live = _weakref.WeakSet()


@_atexit.register
def _drain_at_exit():
    for ex in list(_live):
        ex.shutdown(wait=True)


class _Trace:
    def __init__(self, rt, path, events):
        self.rt, self.path, self.events = rt, path, events

    def __enter__(self):
        self.rt.trace_start(self.events)
        return self

    def __exit__(self, *exc):
        self.rt.trace_stop()
        self.rt.trace_write(self.path)
        return False


def _per_kind(value, exclude_host=False):
    if value is None:
        return {}
    if isinstance(value, dict):
        return {kind_name(k): int(v) for k, v in value.items()}
    kinds = ("opencl", "cuda") if exclude_host else ("host", "opencl", "cuda")
    return {k: int(value) for k in kinds}


def _disabled_kinds(devices):
    if devices is None or devices == "all":
        return ()
    wanted = {devices} if isinstance(devices, str) else set(devices)
    names = {kind_name(d.split(":")[0]) for d in wanted}
    return tuple(k for k in ("opencl", "cuda") if k not in names)
