"""The per-thread CUDA stream bookkeeping of the @torch and @cupy decorators, checked without a
GPU through a recording adapter (the real torch and cupy adapters run in test_gpu.py)."""
import threading

import pytest

from arraybridge import _streams


class Recording(_streams.Adapter):
    """Streams as plain objects; every call the bookkeeping makes, in order."""

    def __init__(self):
        self.log, self.made, self.lock = [], [], threading.Lock()
        self.current = threading.local()

    def _note(self, *event):
        with self.lock:
            self.log.append((threading.get_ident(),) + event)

    def make(self, device):
        s = object()
        with self.lock:
            self.made.append((threading.get_ident(), device, s))
        return s

    def wait_current(self, stream, device):
        self._note("wait", device, stream)

    def scope(self, stream, device):
        adapter = self

        class Scope:
            def __enter__(self):
                adapter.current.value = (device, stream)
                adapter._note("enter", device, stream)

            def __exit__(self, *exc):
                adapter.current.value = None
                adapter._note("exit", device, stream)
                return False

        return Scope()

    def sync(self, stream):
        self._note("sync", stream)


def test_each_thread_gets_its_own_stream_per_device_made_once():
    rec = Recording()
    ts = _streams.ThreadStreams(rec)
    got = {}

    def work(name):
        seen = []
        for dev in (0, 1, 0, 1, 0):
            seen.append(ts.call(dev, lambda: rec.current.value))
        got[name] = seen

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rec.made) == 8  # 4 threads x 2 devices, each made once
    streams = {s for _, _, s in rec.made}
    assert len(streams) == 8
    for seen in got.values():
        assert [d for d, _ in seen] == [0, 1, 0, 1, 0]  # current on the device asked for
        assert seen[0][1] is seen[2][1] is seen[4][1] and seen[1][1] is seen[3][1]  # reused
        assert seen[0][1] is not seen[1][1]
    assert len({seen[0][1] for seen in got.values()}) == 4  # no two threads share one


def test_the_stream_waits_for_the_current_one_first_and_is_synchronised_after():
    rec = Recording()
    ts = _streams.ThreadStreams(rec)
    ts.call(3, lambda: None)
    events = [e[1] for e in rec.log]
    assert events == ["wait", "enter", "exit", "sync"]
    assert all(e[-1] is rec.made[0][2] for e in rec.log)


def test_synchronised_even_when_the_function_raises():
    rec = Recording()
    ts = _streams.ThreadStreams(rec)

    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        ts.call(0, boom)
    assert [e[1] for e in rec.log] == ["wait", "enter", "exit", "sync"]
    assert rec.current.value is None


def test_keywords_reach_the_function():
    ts = _streams.ThreadStreams(Recording())
    assert ts.call(0, lambda device, fn: (device, fn), device="d", fn="f") == ("d", "f")
