"""Scale out with Dask: every Dask worker owns an arraybridge Executor.

    from distributed import Client, LocalCluster
    import dask, arraybridge.dask

    client = Client(LocalCluster(...))
    client.register_plugin(arraybridge.dask.ExecutorPlugin(name="gpu", devices="cuda"))
    with dask.annotate(executor="gpu"):
        futures = client.map(segment, stacks)     # runs on each worker's arraybridge Executor

The plugin creates the Executor inside the worker (in its process, with its own runtime, devices
and memory budgets), registers it in ``worker.executors[name]`` (Dask's
``distributed.Worker(executor={...})`` mechanism) and shuts it down with the worker. Tasks
annotated ``executor=name`` are submitted to it by Dask; inside them,
``arraybridge.dask.current_executor()`` gives the Executor to fan work out further.
"""
from distributed.diagnostics.plugin import WorkerPlugin

from .executor import Executor


class ExecutorPlugin(WorkerPlugin):
    """Gives each Dask worker an arraybridge Executor named `name` (Executor's keywords pass
    through: devices, max_workers, memory_limit, ...)."""

    def __init__(self, name="arraybridge", **executor_options):
        self.name = name
        self.options = executor_options
        self._executors = {}

    def setup(self, worker):
        ex = Executor(**self.options)
        worker.executors[self.name] = ex
        self._executors[worker.address] = ex

    def teardown(self, worker):
        ex = worker.executors.pop(self.name, None) or self._executors.pop(worker.address, None)
        if ex is not None:
            ex.shutdown(wait=True)


def current_executor(name="arraybridge"):
    """The arraybridge Executor of the Dask worker running this task."""
    from distributed import get_worker
    return get_worker().executors[name]
