"""fork(): a child process never touches its parent's runtimes, makes its own, and exits cleanly.

Each case runs in a subprocess with a timeout: the failures these guard against are a segfault
at the child's exit (joining worker threads that do not exist there) and hangs (waiting on
workers that do not exist)."""
import subprocess
import sys
import textwrap

import pytest

TIMEOUT = 120


def run(code):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, f"exit status {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


CHILD = """
import os, sys
def in_child(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        except BaseException as e:
            print("child failed:", repr(e), flush=True)
            os._exit(3)
        sys.exit(0)  # a normal exit: atexit hooks run, as in a real program
    _, status = os.waitpid(pid, 0)
    print("child status", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_child_makes_its_own_executor_and_exits():
    r = run(CHILD + """
import arraybridge as ab
ex = ab.Executor(2)
assert ex.submit(sum, [1, 2]).result() == 3
def body():
    with ab.Executor(2) as mine:
        print("child got", mine.submit(sum, [3, 4]).result(), flush=True)
in_child(body)
assert ex.submit(sum, [5, 6]).result() == 11  # the parent's executor is untouched
""")
    assert "child got 7" in r.stdout and "child status 0" in r.stdout


def test_fork_while_a_task_runs_does_not_hang_the_child_at_exit():
    r = run(CHILD + """
import threading, time, arraybridge as ab
ex = ab.Executor(2)
go = threading.Event()
running = ex.submit(go.wait, 30)
queued = [ex.submit(time.sleep, 0.01) for _ in range(10)]
time.sleep(0.1)
in_child(lambda: print("child leaving", flush=True))
go.set()
assert running.result(timeout=30) is True
""")
    assert "child leaving" in r.stdout and "child status 0" in r.stdout


def test_stack_slices_in_a_child_after_the_parent_used_it():
    r = run(CHILD + """
import numpy as np, arraybridge as ab
s = [np.full((8, 8), i, np.uint16) for i in range(4)]
assert ab.stack_slices(s, "numpy").shape == (4, 8, 8)
def body():
    v = ab.stack_slices(s, "numpy")
    print("child stacked", v.shape, int(v[3].max()), flush=True)
in_child(body)
""")
    assert "child stacked (4, 8, 8) 3" in r.stdout and "child status 0" in r.stdout


def test_the_parents_executor_and_futures_raise_in_the_child():
    r = run(CHILD + """
import threading, time, arraybridge as ab
ex = ab.Executor(1)
go = threading.Event()
pending = ex.submit(go.wait, 30)
time.sleep(0.05)
def body():
    try:
        ex.submit(int)
    except RuntimeError as e:
        print("submit:", e, flush=True)
    try:
        pending.result(timeout=5)
    except ab.ShutdownError as e:
        print("result:", e, flush=True)
    assert not pending.cancel()
in_child(body)
go.set()
pending.result(timeout=30)
""")
    assert "submit:" in r.stdout and "fork" in r.stdout.split("submit:")[1].splitlines()[0]
    assert "result:" in r.stdout and "child status 0" in r.stdout


def test_a_child_leaves_out_the_opencl_its_parent_opened():
    r = run(CHILD + """
import warnings, arraybridge as ab
rt = ab.runtime()
if not any(k == ab._core.OPENCL for k, _ in rt.devices()):
    print("no OpenCL here", flush=True)
    raise SystemExit(0)
def body():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with ab.Executor(1) as ex:
            kinds = {k for k, _ in ex.runtime.devices()}
    print("child kinds", sorted(kinds), "warned", any("fork" in str(x.message) for x in w), flush=True)
in_child(body)
""")
    if "no OpenCL here" in r.stdout:
        pytest.skip("no OpenCL device")
    assert "child kinds [0] warned True" in r.stdout


def test_multiprocessing_fork_pool():
    r = run("""
import multiprocessing as mp, numpy as np, arraybridge as ab

def work(i):
    v = ab.stack_slices([np.full((4, 4), i, np.uint16)] * 3, "numpy")
    with ab.Executor(1, devices="host") as ex:
        return int(v.sum()) + ex.submit(pow, i, 2).result()

if __name__ == "__main__":
    ab.stack_slices([np.zeros((4, 4), np.uint16)] * 2, "numpy")
    with ab.Executor(2) as ex:
        assert ex.submit(int, "5").result() == 5
        with mp.get_context("fork").Pool(2) as pool:
            print("results", pool.map(work, range(6)), flush=True)
""")
    assert "results [0, 49, 100, 153, 208, 265]" in r.stdout
