"""arraybridge.Executor: a concurrent.futures.Executor on the runtime's worker pools.

Every submit is one runtime task. It is placed on a device (explicit, or the least-loaded of a
kind), runs on one of that device's worker threads with the GIL held, and settles a
concurrent.futures.Future subclass, so ``concurrent.futures.wait``, ``as_completed`` and
``asyncio.wrap_future`` work unchanged. ``result()`` waits inside the runtime with the GIL
released (a short spin, then a futex), which is where most of the speed over
ThreadPoolExecutor comes from.

``submit(fn, *args, **kwargs)`` passes every keyword to fn, as concurrent.futures promises.
Where a task runs and what it converts are options of their own::

    ex.options(device="cuda:0", input_type="torch", output_type="numpy").submit(fn, image)

Futures among the arguments (also inside lists, tuples and dicts) are inputs: the task is
handed to the runtime when the last of them settles (a completion callback, so no worker
waits for it), with each future replaced by its result; a failed input fails the task with
the input's exception, without running it.

A task or a completion callback never blocks on a full queue (the workers that would make room
may be the ones submitting): the runtime refuses at once, and the executor keeps the task in an
overflow list that a thread of its own hands over as room appears.

Out-of-memory errors of torch, cupy, jax and tensorflow (by exception type and by message) clear
that framework's cache and enter the runtime's OOM ladder: the task is parked and run again with
exponential backoff until its deadline, then fails with arraybridge.OutOfMemoryError, chained to
the framework's own exception.
"""
from __future__ import annotations

import atexit as _atexit
import collections as _collections
import concurrent.futures as _cf
import functools as _functools
import os as _os
import threading as _threading
import time as _time
import weakref as _weakref
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

from . import _core, _oom
from ._runtime import GPU_KIND_NAMES, KIND_NAMES, Runtime, device_name, kind_name, parse_device

_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_FOLLOW = 0.05  # seconds between looks at a waited future's state and task (Future._wait_settled)
_ENOMEM = _core.AB_ENOMEM
_AUTO, _EXPLICIT = _core.PLACE_AUTO, _core.PLACE_EXPLICIT

T = TypeVar("T")
DeviceSpec = Union[str, "tuple[int, int]", None]
PerKind = Union[int, Mapping[str, int], None]


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
    _task = None  # the runtime's Future; None until the task is handed to the runtime
    _gate = None  # the _Gate holding the task while its input futures settle
    _oom_retry = True
    _oom_deadline = _oom.DEADLINE  # the executor's oom_deadline
    _oom_since = None  # when fn first ran out of memory (time.monotonic())
    _last_oom = None
    _w = None   # concurrent.futures' _waiters, once someone waits
    _cb = None  # _done_callbacks, once someone adds one

    def __init__(self, condition: _threading.Condition) -> None:  # no super().__init__: it would make a Condition
        self._condition = condition

    @property
    def _waiters(self) -> list:
        w = self._w
        if w is None:
            w = self._w = []
        return w

    @property
    def _done_callbacks(self) -> list:
        cb = self._cb
        if cb is None:
            cb = self._cb = []
        return cb

    def _wait_settled(self, timeout: Optional[float]) -> None:
        if self._state in _DONE:
            return
        end = None if timeout is None else _time.monotonic() + timeout
        task = self._task
        if task is None:  # waiting for its inputs, or for room in the queue
            with self._condition:
                while self._task is None and self._state not in _DONE:
                    self._condition.wait(_left(end, 0.1))
                    if end is not None and _time.monotonic() >= end and self._state not in _DONE:
                        raise _cf.TimeoutError()
            task = self._task
            if self._state in _DONE:
                return
        # A task that a batch ran into out-of-memory goes back to the runtime as a new task, which
        # replaces _task (python/src/tasks.c) and may settle this future long before the old one
        # completes: look again every _FOLLOW seconds, and follow the replacement.
        while not task.wait(_left(end, _FOLLOW)):
            if self._state in _DONE:
                return
            if end is not None and _time.monotonic() >= end:
                raise _cf.TimeoutError()
            task = self._task
        # The task is complete. A task that ran settled this future before completing; a
        # cancelled or failed one settles it from a completion callback, possibly a moment
        # later; one that a batch runs settles when the batch gets to its end.
        with self._condition:
            while self._state not in _DONE:
                if end is not None and _time.monotonic() >= end:
                    raise _cf.TimeoutError()
                self._condition.wait(_left(end, 0.05))

    def result(self, timeout: Optional[float] = None) -> Any:
        if self._state == FINISHED and self._exception is None:
            return self._result
        self._wait_settled(timeout)
        return super().result(0)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._wait_settled(timeout)
        return super().exception(0)

    def cancel(self) -> bool:
        """Cancel a task that has not started; False once it runs (or is parked for memory)."""
        state = self._state
        if state in (CANCELLED, CANCELLED_AND_NOTIFIED):
            return True
        if state != PENDING:
            return False
        task = self._task
        if task is None:  # waiting for its inputs (the gate lets go of it), or for room
            gate = self._gate
            if gate is not None:
                gate.abandon()
            self._cancel_now()
        elif task.cancel() == 0:  # claimed before anyone ran it
            self._cancel_now()
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def _cancel_now(self) -> None:
        if _cf.Future.cancel(self):
            self.set_running_or_notify_cancel()  # tells wait() and as_completed()

    def _handed_over(self, task: Any) -> None:
        with self._condition:
            self._task = task
            self._condition.notify_all()

    def _fail(self, exc: BaseException) -> None:
        """Settle with exc a future whose task never ran (a failed input, a refused submit)."""
        with self._condition:
            if self._state != PENDING:
                return
            self._state = _cf._base.RUNNING
        self.set_exception(exc)

    # ---- called by the runtime (python/src/tasks.c), with the GIL held --------------------------
    def _ab_settle(self, result: Any) -> None:
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

    def _ab_raised(self, exc: BaseException) -> bool:
        """fn raised exc: True to be parked and run again (a framework out-of-memory error).

        The deadline is wall-clock time since the first out-of-memory error, as the runtime's
        ladder counts it from the moment this returns True: a retry that is running when it
        comes fails here rather than being parked again. The framework's cache is cleared
        before the retry (_ab_retry), not here: a garbage collection may take a good part of a
        second, and the ladder's deadline would start only after it."""
        if self._oom_retry and _oom.is_oom(exc):
            now = _time.monotonic()
            self._last_oom = exc
            if self._oom_since is None:
                self._oom_since = now
            elif now - self._oom_since >= self._oom_deadline:
                self._ab_end(_ENOMEM, f"out of memory for {now - self._oom_since:.3f} s, past the deadline "
                                      f"({self._oom_deadline:g} s)")
                return False
            return True
        self.set_exception(exc)
        return False

    def _ab_retry(self) -> None:
        """fn is about to run again after out-of-memory: free what the framework caches first,
        unless that would carry the task past its deadline (_oom.relieve)."""
        exc, since = self._last_oom, self._oom_since
        if exc is not None and since is not None:
            _oom.relieve(exc, None, self._oom_deadline - (_time.monotonic() - since))

    def _ab_end(self, status: int, message: str) -> None:
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


def _left(end: Optional[float], cap: Optional[float] = None) -> Optional[float]:
    if end is None:
        return cap
    left = max(0.0, end - _time.monotonic())
    return left if cap is None else min(left, cap)


class Options:
    """Placement and conversion for the tasks submitted through it (made by Executor.options).

    device          "host", "opencl", "opencl:1", "cuda:0", ... (no index: the least-loaded
                    device of that kind)
    input_type      convert array arguments (positional and keyword) to this memory type on
                    the task's device before the call ("torch", "cupy", "numpy", ...)
    output_type     convert the result (each item of a tuple) to this memory type
    oom_retry       False: a framework's out-of-memory error fails the future at once instead
                    of entering the runtime's backoff ladder
    """

    __slots__ = ("_ex", "device", "input_type", "output_type", "oom_retry", "_place", "_policy", "_plan")

    def __init__(self, ex: "Executor", device: DeviceSpec = None, input_type: Optional[str] = None,
                 output_type: Optional[str] = None, oom_retry: bool = True) -> None:
        self._ex = ex
        self.device, self.input_type, self.output_type, self.oom_retry = device, input_type, output_type, oom_retry
        kind, index = parse_device(device)
        if not any(k == kind and (index < 0 or i == index) for k, i in ex._device_list):
            have = ", ".join(ex.devices())
            raise _core.DeviceError(f"device {device!r}: the executor has no such device (it has {have})")
        self._place = None if device is None else (kind, index)
        self._policy = _EXPLICIT if index >= 0 else _AUTO
        self._plan = None
        if input_type is not None or output_type is not None or kind == _core.CUDA:
            from ._plan import Plan
            self._plan = Plan(input_type, output_type, ex._physical)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future":
        """Run fn(*args, **kwargs) with these options; every keyword goes to fn."""
        return self._ex._submit(fn, args, kwargs, self)

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[T]:
        """Executor.map with these options."""
        return _cf.Executor.map(self, fn, *iterables, timeout=timeout, chunksize=chunksize)

    def __repr__(self) -> str:
        return (f"Options(device={self.device!r}, input_type={self.input_type!r}, "
                f"output_type={self.output_type!r}, oom_retry={self.oom_retry!r})")


class Executor(_cf.Executor):
    """A concurrent.futures.Executor over the arraybridge runtime.

    Executor(max_workers=None, *, devices=None, workers_per_device=None, memory_limit=None,
             logical_split=None, queue_capacity=65536, oom_deadline=None, default_device=None)

    max_workers     host worker threads (ThreadPoolExecutor's meaning); default one per core
    devices         which kinds to open: "host", "opencl", "cuda", a list of them, or None (all
                    present). The host is always open.
    workers_per_device  {"opencl": 2, "cuda": 2, ...} or an int for every GPU kind
    memory_limit    {"cuda": bytes, ...} or an int for every kind: the runtime's own budget
    logical_split   {"cuda": N}: each physical device of that kind becomes N logical ones
    queue_capacity  tasks each device's queue holds before submit blocks (tasks and callbacks
                    never block: see the module's notes)
    oom_deadline    seconds a task may spend out of memory before it fails (default 10)
    default_device  where submit runs tasks that name no device (default: any host worker)
    """

    def __init__(self, max_workers: Optional[int] = None, *, devices: Union[str, Sequence[str], None] = None,
                 workers_per_device: PerKind = None, memory_limit: PerKind = None, logical_split: PerKind = None,
                 queue_capacity: int = 1 << 16, oom_deadline: Optional[float] = None,
                 default_device: DeviceSpec = None, thread_name_prefix: Optional[str] = None) -> None:
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        workers = _per_kind(workers_per_device, exclude_host=True)
        if max_workers is not None:
            workers[KIND_NAMES[_core.HOST]] = max_workers
        self._runtime = Runtime(workers=workers, memory_limit=_per_kind(memory_limit),
                                logical_split=_per_kind(logical_split, exclude_host=True),
                                disable=_disabled_kinds(devices), queue_capacity=queue_capacity,
                                oom_deadline=oom_deadline)
        self._device_list = self._runtime.devices()
        self._physical = {d: self._runtime.device_info(*d)["physical"] for d in self._device_list}
        self._condition = _threading.Condition()
        self._shutdown = False
        self._shutdown_lock = _threading.Lock()
        self._closer = None
        self._call = self._runtime.call
        self._pid = _os.getpid()
        self._oom_deadline = _oom.DEADLINE if oom_deadline is None else float(oom_deadline)
        # Accepted tasks not yet handed to the runtime: waiting for input futures, or for room.
        self._held = _threading.Condition(_threading.Lock())
        self._held_count = 0
        self._gates = set()  # the _Gates still waiting for inputs
        self._overflow = _collections.deque()
        self._pump = None
        self._cancel_held = False
        _live.add(self)
        self._default = None if default_device is None else Options(self, default_device)
        # submit's fast path: no default device, the default deadline (futures need no setting)
        self._plain = self._default is None and self._oom_deadline == _oom.DEADLINE

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def devices(self) -> list:
        """The devices the runtime opened, by name: ["host:0", "opencl:0", "cuda:0", ...]."""
        return [device_name(d) for d in self._device_list]

    def device_info(self, device: DeviceSpec) -> dict:
        """What the runtime knows of one device: name, physical index, workers, memory, budget."""
        kind, index = parse_device(device)
        return self._runtime.device_info(kind, max(index, 0))

    def stats(self) -> list:
        return self._runtime.stats()

    def trace(self, path: str, events_per_worker: int = 0) -> "_Trace":
        """A context manager recording a Chrome trace of every task and device memory while its
        block runs, written to `path` (open it in https://ui.perfetto.dev)."""
        return _Trace(self._runtime, path, events_per_worker)

    def options(self, *, device: DeviceSpec = None, input_type: Optional[str] = None,
                output_type: Optional[str] = None, oom_retry: bool = True) -> Options:
        """Placement and conversion options for tasks: ``ex.options(device="cuda:0",
        output_type="numpy").submit(fn, *args, **kwargs)``; see Options. Reusable."""
        return Options(self, device, input_type, output_type, oom_retry)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future:
        """Run fn(*args, **kwargs) on a worker (of default_device, else any host worker) and
        return a concurrent.futures.Future. Every keyword goes to fn; for placement and
        conversions use ``options(...).submit``. Futures among the arguments are inputs (see
        the module's notes)."""
        if not self._plain or self._shutdown or ((args or kwargs) and _has_future(args, kwargs)):
            return self._submit(fn, args, kwargs, self._default)
        fut = Future(self._condition)
        try:
            fut._task = self._call(fut, fn, args, kwargs or None)
        except _core.QueueFullError:  # a task or a callback submitting: it must not block
            self._hold(fut, (fn, args, kwargs or None, None, _AUTO))
        except _core.ShutdownError as e:
            raise RuntimeError(f"cannot schedule new futures: {e}") from None
        return fut

    def _submit(self, fn: Callable[..., Any], args: tuple, kwargs: dict, opts: Optional[Options]) -> Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        fut = Future(self._condition)
        if self._oom_deadline != _oom.DEADLINE:
            fut._oom_deadline = self._oom_deadline
        if opts is not None and not opts.oom_retry:
            fut._oom_retry = False
        if (args or kwargs) and _has_future(args, kwargs):
            _Gate(self, fut, fn, args, kwargs, opts)
        else:
            self._hand_over(fut, fn, args, kwargs, opts)
        return fut

    def _task_of(self, fn: Callable[..., Any], args: tuple, kwargs: dict, opts: Optional[Options]) -> tuple:
        if opts is None:
            return fn, args, kwargs or None, None, _AUTO
        if opts._plan is not None:
            fn, args, kwargs = _functools.partial(opts._plan.run, fn), (args, kwargs), None
        return fn, args, kwargs or None, opts._place, opts._policy

    def _hand_over(self, fut: Future, fn: Callable[..., Any], args: tuple, kwargs: dict,
                   opts: Optional[Options]) -> None:
        task = self._task_of(fn, args, kwargs, opts)
        try:
            fut._task = self._call(fut, *task)
        except _core.QueueFullError:
            self._hold(fut, task)
        except _core.ShutdownError as e:
            raise RuntimeError(f"cannot schedule new futures: {e}") from None

    # ---- tasks accepted but not yet handed to the runtime ----------------------------------------
    def _hold(self, fut: Future, task: tuple) -> None:
        """Keep a task the runtime's full queue refused a runtime thread; the pump thread hands
        it over (blocking there is harmless) in submit order."""
        with self._held:
            self._held_count += 1
            self._overflow.append((fut, task))
            self._start_pump()

    def _pump_loop(self) -> None:
        me = _threading.current_thread()
        while True:
            with self._held:
                idle_until = _time.monotonic() + 1.0
                while not self._overflow:
                    if (self._shutdown and self._held_count == 0) or _time.monotonic() > idle_until:
                        if self._pump is me:  # a later overflow starts another
                            self._pump = None
                        return
                    self._held.wait(0.1)
                fut, task = self._overflow.popleft()
            self._release_held(fut, task)

    def _release_held(self, fut: Future, task: Optional[tuple]) -> None:
        """Hand a held task over (task None: it failed or was cancelled already)."""
        try:
            if task is not None and fut._state == PENDING:
                if self._cancel_held:
                    fut._cancel_now()
                else:
                    try:
                        fut._handed_over(self._call(fut, *task))
                    except _core.QueueFullError:  # a runtime thread gating: wait in the pump
                        with self._held:
                            self._held_count += 1
                            self._overflow.append((fut, task))
                            self._start_pump()
                    except Exception as e:  # noqa: BLE001 - shut down, or the device went away
                        fut._fail(e)
        finally:
            with self._held:
                self._held_count -= 1
                self._held.notify_all()

    def _start_pump(self) -> None:
        """With self._held held: a pump thread that will see the overflow list (it leaves after
        a second with nothing to do, and before the runtime closes)."""
        if self._pump is None:
            self._pump = _threading.Thread(target=self._pump_loop, name="arraybridge-overflow", daemon=True)
            self._pump.start()
        self._held.notify_all()

    def map(self, fn: Callable[..., T], *iterables: Iterable[Any], timeout: Optional[float] = None,
            chunksize: int = 1) -> Iterator[T]:
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work. cancel_futures cancels tasks that have not started; wait blocks
        until every task has completed (the runtime drains or cancels; it never strands one).
        A later shutdown(wait=True) waits for an earlier shutdown(wait=False) to finish."""
        with self._shutdown_lock:
            if not self._shutdown:
                self._shutdown = True
                self._cancel_held = cancel_futures
                self._closer = _threading.Thread(target=self._close, args=(cancel_futures,),
                                                 name="arraybridge-shutdown", daemon=True)
                self._closer.start()
        if wait:
            self._closer.join()

    def _close(self, cancel: bool) -> None:
        if cancel:
            with self._held:
                held, self._overflow = list(self._overflow), _collections.deque()
                gates = list(self._gates)
            for fut, _ in held:
                self._release_held(fut, None)
                fut._cancel_now()
            for gate in gates:  # not started either: waiting for their inputs
                gate.fut.cancel()
        # Accepted work not yet handed over (waiting for inputs that this runtime will complete,
        # or for room) goes in before the runtime drains; a task gated on a future of another
        # executor that never settles keeps shutdown(wait=True) waiting, as its own task would
        # (cancel_futures, or cancelling the future, lets it go; at exit it is cancelled).
        with self._held:
            while self._held_count and self._pid == _os.getpid():
                self._held.wait(0.1)
            pump = self._pump
            self._held.notify_all()
        if pump is not None and self._pid == _os.getpid():
            pump.join()  # it has nothing left to hand over: gone before the workers
        self._runtime.close(cancel=cancel)


# Executors still open at exit are drained before the interpreter finalises: after that, a worker
# that needs the GIL to finish a Python task could never get it, and the runtime's destroy (run
# when the object is collected) would wait for it for ever. concurrent.futures does the same.
_live = _weakref.WeakSet()


@_atexit.register
def _drain_at_exit() -> None:
    executors = list(_live)
    for ex in executors:
        ex.shutdown(wait=False)
    # Nothing but arraybridge's own workers can settle a future now: a task still waiting for a
    # future of another kind (one nobody set, say) would keep the interpreter from exiting for
    # ever; it is cancelled. Tasks waiting for other arraybridge tasks run when those complete.
    for ex in executors:
        with ex._held:
            gates = list(ex._gates)
        for gate in gates:
            if gate.waits_for_foreign():
                gate.fut.cancel()
    for ex in executors:
        ex.shutdown(wait=True)


def _forget_parents_executors() -> None:
    """In a forked child the parent's executors have no workers: nothing to drain at exit."""
    _live.clear()


_os.register_at_fork(after_in_child=_forget_parents_executors)


# ---- futures as arguments ----------------------------------------------------------------------
_LEAVES = frozenset({int, float, str, bytes, bool, type(None), complex})


def _has_future(args: tuple, kwargs: dict) -> bool:
    for a in args:
        if type(a) not in _LEAVES and _contains_future(a):
            return True
    for a in kwargs.values():
        if type(a) not in _LEAVES and _contains_future(a):
            return True
    return False


def _contains_future(x: Any) -> bool:
    if isinstance(x, _cf.Future):
        return True
    t = type(x)
    if t is list or t is tuple or (isinstance(x, tuple) and hasattr(x, "_fields")):
        return any(type(i) not in _LEAVES and _contains_future(i) for i in x)
    if t is dict:
        return any(type(v) not in _LEAVES and _contains_future(v) for v in x.values())
    return False


def _futures_in(x: Any, out: list) -> None:
    if isinstance(x, _cf.Future):
        out.append(x)
    elif type(x) in (list, tuple) or (isinstance(x, tuple) and hasattr(x, "_fields")):
        for i in x:
            _futures_in(i, out)
    elif type(x) is dict:
        for v in x.values():
            _futures_in(v, out)


class _InputFailed(Exception):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _resolved(x: Any) -> Any:
    if isinstance(x, _cf.Future):
        if x.cancelled():
            raise _InputFailed(_cf.CancelledError("an input future was cancelled"))
        exc = x.exception(0)
        if exc is not None:
            raise _InputFailed(exc)
        return x.result(0)
    t = type(x)
    if t is list:
        return [_resolved(i) for i in x]
    if t is tuple:
        return tuple(_resolved(i) for i in x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return t._make(_resolved(i) for i in x)
    if t is dict:
        return {k: _resolved(v) for k, v in x.items()}
    return x


class _Gate:
    """Holds a task until its input futures settle. Each input gets a done callback; the last one
    (on whichever thread settles it) replaces the futures by their results and hands the task
    over, or fails it with the first failed input's exception."""

    __slots__ = ("ex", "fut", "fn", "args", "kwargs", "opts", "left", "lock", "inputs", "over")

    def __init__(self, ex: Executor, fut: Future, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 opts: Optional[Options]) -> None:
        inputs: list = []
        _futures_in(args, inputs)
        _futures_in(kwargs, inputs)
        self.ex, self.fut, self.fn, self.args, self.kwargs, self.opts = ex, fut, fn, args, kwargs, opts
        self.lock = _threading.Lock()
        self.left = len(inputs) + 1  # one for this constructor, so no callback releases it early
        self.inputs = inputs
        self.over = False  # handed on (inputs all settled) or abandoned (cancelled): once
        fut._gate = self
        with ex._held:
            ex._held_count += 1
            ex._gates.add(self)
        for f in inputs:
            f.add_done_callback(self._input_done)
        self._input_done(None)

    def _end(self) -> bool:
        """With self.lock held: True for the one caller that ends the gate."""
        if self.over:
            return False
        self.over = True
        self.fut._gate = None
        with self.ex._held:
            self.ex._gates.discard(self)
        return True

    def abandon(self) -> None:
        """The future was cancelled before its inputs settled: let go of the task now (shutdown
        waits for held tasks), whatever the inputs do later."""
        with self.lock:
            if not self._end():
                return
        self.inputs = self.args = self.kwargs = None
        self.ex._release_held(self.fut, None)

    def waits_for_foreign(self) -> bool:
        """Whether an input that is still pending is not an arraybridge task's future."""
        inputs = self.inputs or ()
        return any(not isinstance(f, Future) and not f.done() for f in inputs)

    def _input_done(self, _f: Any) -> None:
        with self.lock:
            self.left -= 1
            if self.left or not self._end():
                return
        self.inputs = None
        ex, fut = self.ex, self.fut
        try:
            args, kwargs = _resolved(self.args), _resolved(self.kwargs)
        except _InputFailed as e:
            fut._fail(e.exc)
            ex._release_held(fut, None)
            return
        try:
            task = ex._task_of(self.fn, args, kwargs, self.opts)
        except BaseException as e:  # noqa: BLE001 - reported on the future, not the settling thread
            fut._fail(e)
            ex._release_held(fut, None)
            return
        ex._release_held(fut, task)


class _Trace:
    def __init__(self, rt: Runtime, path: str, events: int) -> None:
        self.rt, self.path, self.events = rt, path, events

    def __enter__(self) -> "_Trace":
        self.rt.trace_start(self.events)
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.rt.trace_stop()
        self.rt.trace_write(self.path)
        return False


def _per_kind(value: PerKind, exclude_host: bool = False) -> dict:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {kind_name(k): int(v) for k, v in value.items()}
    kinds = GPU_KIND_NAMES if exclude_host else tuple(KIND_NAMES.values())
    return {k: int(value) for k in kinds}


def _disabled_kinds(devices: Union[str, Sequence[str], None]) -> tuple:
    if devices is None or devices == "all":
        return ()
    wanted = {devices} if isinstance(devices, str) else set(devices)
    names = {kind_name(d.split(":")[0]) for d in wanted}
    return tuple(k for k in GPU_KIND_NAMES if k not in names)
