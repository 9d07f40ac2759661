"""Run a plan's blocks as Ray tasks.

The plan goes to the object store once per run (``ray.put``); each task gets a
reference to it, and a worker deserialises it once and keeps it for the
run's later tasks. Arrays in the object store are shared, read-only memory on
each node, so a node holds one copy of the inputs whatever its number of
workers; an index travels as its serialised bytes. Tasks return their block's
arrays and the worker's identity (CPU, BLAS, FAISS build); the driver stores
checkpoints, reports progress and assembles the output, exactly as the local
executor's driver does, so both give the same bytes.

Tasks multiply with as many BLAS threads as the driver would (Ray starts its
workers with one): the probe kernel's small products round differently with
another thread count. A worker lost mid-task costs only that task: Ray runs it again. A task that
fails for a real reason (bad input found on a worker) stops the run with that
error, re-raised on the driver as itself.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from .executor import Job, blas_threads, cpu_count, timed
from .plan import MiningPlan

__all__ = ["RayExecutor"]

log = logging.getLogger(__name__)

#: Times Ray runs a task again after its worker died.
MAX_RETRIES = 3

_PLANS: dict[str, MiningPlan] = {}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "executor='ray' needs Ray, which is not installed: pip install 'negmine[ray]'"
        ) from None
    return ray


def _run_block(box: list[Any], threads: int | None, fn: Callable[..., dict], g: int, *args: Any):
    """A Ray task: block ``g`` of the plan behind ``box[0]``, on ``threads`` BLAS threads."""
    import ray

    from ._faults import pause_point

    if threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            return _run_block(box, None, fn, g, *args)

    key = box[0].hex()
    plan = _PLANS.get(key)
    if plan is None:
        _PLANS.clear()  # one run's plan at a time per worker
        plan = _PLANS[key] = ray.get(box[0])
    pause_point(f"task-{fn.__name__}-{g}")
    return timed(fn, plan, g, *args)


class RayExecutor:
    """Runs blocks as tasks on a Ray cluster.

    Parameters
    ----------
    address : str, optional
        The cluster to join. Default: ``RAY_ADDRESS`` when set, else a local
        instance with this machine's CPUs, shut down by :meth:`close`.
    """

    name = "ray"

    def __init__(self, address: str | None = None):
        ray = _import_ray()
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if address is None:
                # Ray runs workers at niceness 15 by default; on a local instance
                # they are the whole job, so they run at the driver's priority.
                kw.update(num_cpus=cpu_count(), include_dashboard=False,
                          _system_config={"worker_niceness": 0})  # fmt: skip
            ray.init(address=address, **kw)
            self._owned = True
        self._plan_ref: Any = None
        self.put_seconds = 0.0
        # Ray starts workers with one BLAS thread; the probe kernel's small
        # products round differently with another count, so tasks use the
        # driver's (see worker_identity).
        self._threads = blas_threads()
        self._plan_id: int | None = None

    def _plan(self, plan: MiningPlan) -> Any:
        if self._plan_id != id(plan):
            t0 = time.perf_counter()
            self._plan_ref = self._ray.put(plan)
            self._plan_id = id(plan)
            self.put_seconds = time.perf_counter() - t0
        return self._plan_ref

    def map(
        self, fn: Callable[..., dict[str, np.ndarray]], plan: MiningPlan, jobs: Iterable[Job]
    ) -> Iterator[tuple[int, dict[str, np.ndarray], str, float]]:
        """Yield ``(g, fn(plan, g, *args), worker identity, seconds)`` as tasks finish."""
        ray = self._ray
        box = [self._plan(plan)]
        # A task takes as many CPUs as it runs BLAS threads: no oversubscription.
        cpus = self._threads or 1
        task = ray.remote(_run_block).options(
            num_cpus=cpus, max_retries=MAX_RETRIES, retry_exceptions=False
        )
        jobs = list(jobs)
        limit = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus)
        pending: dict[Any, int] = {}
        at = 0
        try:
            while at < len(jobs) or pending:
                while at < len(jobs) and len(pending) < limit:
                    g, args = jobs[at]
                    pending[task.remote(box, self._threads, fn, g, *args)] = g
                    at += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                g = pending.pop(ready[0])
                yield (g, *self._get(ready[0]))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def describe(self) -> dict[str, Any]:
        res = self._ray.cluster_resources()
        return {"name": self.name, "workers": int(res.get("CPU", 0)),
                "nodes": len(self._ray.nodes()),
                "plan_put_seconds": round(self.put_seconds, 4)}  # fmt: skip

    def close(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()
        self._plan_ref = None
