"""Where independent tasks run: in this process (``local``, the default) or on Ray (``ray``).

A *task* is a plain top-level function and its arguments (a fold x seed fit, a slide to embed, a
slice to predict, a tuning worker). The driver submits tasks, gets their results back **in
submission order** (so the outcome never depends on which worker finished first) and can act on
each result as soon as it arrives (write it atomically, advance a progress bar) through
``on_done``.

* ``LocalExecutor`` runs each task when it is submitted, in this process: exactly the old
  sequential code path (exceptions propagate unchanged, callbacks run in-process).
* ``RayExecutor`` starts a local Ray (``ray.init(num_cpus=...)``) or joins a cluster
  (``address="ray://host:10001"`` or ``"auto"``). Tasks may depend on other tasks' results
  (a handle passed as an argument is resolved by Ray where the task runs), ask for GPUs
  (``num_gpus=1``), and a failing task does not stop the others: every other result still reaches
  ``on_done`` (so it is written and ``--resume`` skips it), then :class:`TaskFailed` names every
  failed task and its error.

Worker logs reach the driver through Ray's log forwarding (lines prefixed with the worker pid).
Ray is an optional extra: ``pip install 'spagraph[ray]'``.

Why hand-written: Ray's ``ray.get`` returns in order but only once every task finished, and
``ray.util.multiprocessing.Pool`` hides resource requests and task dependencies; the driver here
needs both the fixed order and per-result callbacks (atomic per-task files, progress).
"""
from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("spagraph")

EXECUTORS = ("local", "ray")


class TaskFailed(RuntimeError):
    """One or more tasks failed; ``failures`` maps task names to their error text."""

    def __init__(self, failures: dict[str, str], hint: str = ""):
        self.failures = failures
        lines = [f"{len(failures)} task(s) failed:"] + [f"  {k}: {v}" for k, v in failures.items()]
        super().__init__("\n".join(lines) + (f"\n{hint}" if hint else ""))


@dataclass
class Handle:
    """What ``submit`` returns: a name, and either a local result or a Ray ObjectRef."""
    name: str
    ref: Any = None
    value: Any = None
    error: BaseException | None = None
    meta: dict = field(default_factory=dict)


class LocalExecutor:
    """Runs every task at once, in this process (the sequential run)."""
    kind = "local"
    workers = 1

    def submit(self, fn: Callable, *args, name: str = "task", num_cpus: float = 1, num_gpus: float = 0,
               **kwargs) -> Handle:
        args = [a.value if isinstance(a, Handle) else a for a in args]
        kwargs = {k: (v.value if isinstance(v, Handle) else v) for k, v in kwargs.items()}
        return Handle(name, value=fn(*args, **kwargs))

    def put(self, obj, name: str = "object") -> Handle:
        return Handle(name, value=obj)

    def gather(self, handles: list[Handle], on_done: Callable[[int, Any], None] | None = None) -> list:
        for i, h in enumerate(handles):
            if on_done is not None:
                on_done(i, h.value)
        return [h.value for h in handles]

    def shutdown(self) -> None:
        pass


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        return True
    except ImportError:
        return False


class RayExecutor:
    """Tasks as Ray remote functions.

    Parameters
    ----------
    address : None starts a local Ray on this machine; ``"auto"`` or ``"ray://host:10001"``
        joins an existing cluster (``ray start --head`` on the head node first).
    num_cpus : CPUs of the local Ray (ignored when joining a cluster); None: all of this machine's.
    threads : torch intra-op threads inside each task (default 1: one task per CPU).
    warm : modules every worker imports at once, in the background (one task per CPU), so that
        the first real tasks do not each pay torch / torch_geometric / scanpy imports (seconds
        per worker) while the driver still reads its inputs; :meth:`wait_warm` waits for them.
        ``()`` turns it off.
    """
    kind = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, threads: int = 1,
                 warm: tuple[str, ...] | None = None):
        try:
            import ray
        except ImportError:
            raise ImportError("--executor ray needs Ray: pip install 'spagraph[ray]'") from None
        self.ray = ray
        self.threads = max(1, int(threads))
        self._started = False
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in ("PYTHONPATH", "WANDB_MODE", "HF_HUB_OFFLINE") if k in os.environ}
            env["OMP_NUM_THREADS"] = str(self.threads)
            opts = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                        runtime_env={"env_vars": env})
            if address:
                ray.init(address=address, **opts)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count(), **opts)
            self._started = True
        res = ray.cluster_resources()
        self.workers = int(res.get("CPU", 1))
        self.gpus = int(res.get("GPU", 0))
        self._remote: dict = {}
        mods = WARM_MODULES if warm is None else tuple(warm)
        self.code = code_fingerprint()
        self._warm = [self._fn(import_modules).options(num_cpus=1, name="warm-up").remote(
            import_modules, self.threads, self.code, mods) for _ in range(min(self.workers, 64))] if mods else []

    def wait_warm(self) -> float:
        """Block until every worker has imported the warm-up modules; returns the seconds waited."""
        t = time.time()
        if self._warm:
            self.ray.get(self._warm)
            self._warm = []
        return time.time() - t

    def _fn(self, fn: Callable):
        if "task" not in self._remote:          # one remote wrapper; the task function is its argument
            self._remote["task"] = self.ray.remote(_run_in_worker)
        return self._remote["task"]

    def submit(self, fn: Callable, *args, name: str = "task", num_cpus: float = 1, num_gpus: float = 0,
               **kwargs) -> Handle:
        args = [a.ref if isinstance(a, Handle) else a for a in args]
        kwargs = {k: (v.ref if isinstance(v, Handle) else v) for k, v in kwargs.items()}
        gpus = num_gpus if self.gpus else 0
        ref = self._fn(fn).options(num_cpus=num_cpus, num_gpus=gpus, name=name[:100]).remote(
            fn, self.threads, self.code, *args, **kwargs)
        return Handle(name, ref=ref)

    def put(self, obj, name: str = "object") -> Handle:
        return Handle(name, ref=self.ray.put(obj))

    def gather(self, handles: list[Handle], on_done: Callable[[int, Any], None] | None = None) -> list:
        """Wait for every handle; ``on_done(i, result)`` as each arrives; then results in order.

        A failed task is logged at once (name and error) and the others keep running; after all
        have finished, :class:`TaskFailed` lists every failure.
        """
        ray = self.ray
        pending = {h.ref: i for i, h in enumerate(handles)}
        results: list = [None] * len(handles)
        failures: dict[str, str] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=None)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - reported with the task's name below
                    cause = getattr(e, "cause", None) or e
                    msg = f"{type(cause).__name__}: {cause}".splitlines()[0][:500] if str(cause) else type(cause).__name__
                    failures[handles[i].name] = msg
                    log.error("task %s failed: %s", handles[i].name, msg)
                    continue
                if on_done is not None:
                    on_done(i, results[i])
        if failures:
            raise TaskFailed(failures)
        return results

    def shutdown(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


# What a spagraph task needs in a worker (the slow imports: torch, PyG, scanpy).
WARM_MODULES = ("torch", "torch_geometric", "scanpy", "sklearn.linear_model", "spagraph.experiment.runner",
                "spagraph.experiment.tasks", "spagraph.train.fit", "spagraph.graph.build")


def import_modules(modules: Iterable[str]) -> list[str]:
    """Import ``modules`` (a worker's warm-up; in the driver, the same for a fair sequential timing)."""
    import importlib
    for m in modules:
        importlib.import_module(m)
    return list(modules)


class CodeMismatch(RuntimeError):
    """A Ray worker runs other spagraph source code than the driver."""


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of spagraph's own source files (relative path + bytes, sorted), computed once per
    process. Driver and workers compare it: a worker that imported other code (a cluster node with
    another install, or files edited while a run was under way) would otherwise fail with an
    unpickling error far from the cause, or silently compute with other logic."""
    import hashlib
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _run_in_worker(fn: Callable, threads: int, code: str, *args, **kwargs):
    """Body of every Ray task: refuse a worker whose spagraph source differs from the driver's
    (``code``: :func:`code_fingerprint`), pin torch threads (results must not depend on the
    worker), run."""
    mine = code_fingerprint()
    if code != mine:
        import socket
        raise CodeMismatch(
            f"Ray worker {socket.gethostname()} pid {os.getpid()} runs spagraph from "
            f"{Path(__file__).resolve().parents[1]} with source {mine[:12]}, the driver's is {code[:12]}: driver "
            "and workers must run the same spagraph code (install the same version on every node, restart the "
            "workers with `ray stop` / `ray start` after an update, and do not edit the source while a run is "
            "under way); resume with --resume once they match")
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return fn(*args, **kwargs)


def get_executor(kind: str = "local", address: str | None = None, num_cpus: int | None = None,
                 threads: int | None = None):
    """``"local"`` or ``"ray"`` (see :class:`RayExecutor` for ``address`` / ``num_cpus``)."""
    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {kind!r}")
    if kind == "local":
        if address:
            raise ValueError("--address needs --executor ray")
        return LocalExecutor()
    return RayExecutor(address=address, num_cpus=num_cpus, threads=threads or 1)


def map_tasks(fn: Callable, items: Iterable, names: Iterable[str] | None = None, executor=None,
              num_cpus: float = 1, num_gpus: float = 0, on_done: Callable[[int, Any], None] | None = None) -> list:
    """``[fn(item) for item in items]`` on an executor (default local), results in input order.

    ``fn`` must be a top-level (importable) function for Ray. ``names`` label tasks in logs and
    in :class:`TaskFailed` (default ``task 0``, ``task 1``, ...). ``num_gpus=1`` asks Ray for a GPU
    per task when the cluster has GPUs (ignored otherwise).
    """
    ex = executor or LocalExecutor()
    items = list(items)
    names = list(names) if names is not None else [f"task {i}" for i in range(len(items))]
    if len(names) != len(items):
        raise ValueError(f"map_tasks: {len(items)} items but {len(names)} names")
    t0 = time.time()
    handles = [ex.submit(fn, it, name=n, num_cpus=num_cpus, num_gpus=num_gpus) for it, n in zip(items, names)]
    out = ex.gather(handles, on_done)
    log.info("%d task(s) on %s executor in %.1f s", len(items), ex.kind, time.time() - t0)
    return out
