"""Executors: run a plan's blocks, in this process or elsewhere.

An executor maps a block function over block numbers and yields each result
as it is ready (:meth:`LocalExecutor.map`). :func:`run_blocks` is the driver
around it, shared by every executor: it skips blocks a checkpoint already
holds, stores each new block as it arrives, reports progress and records which
worker (CPU, BLAS, FAISS build) computed each block.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ._faults import pause_point
from .blocks import pair_block, tier3_block
from .plan import MiningPlan

if TYPE_CHECKING:
    from .io import Checkpoints

__all__ = [
    "LocalExecutor",
    "MinedBlocks",
    "make_executor",
    "run_blocks",
    "timed",
    "worker_identity",
]

Job = tuple[int, tuple[Any, ...]]


def worker_identity() -> str:
    """What decides this process's float arithmetic: CPU model, BLAS, FAISS build.

    Workers with the same identity compute the same bytes for the same block.
    """
    return _static_identity().format(threads=blas_threads())


@functools.cache
def _static_identity() -> str:
    import faiss

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = "unknown"
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{cfg.get('name')} {cfg.get('version')}"
    except (TypeError, KeyError):
        pass
    opts = faiss.get_compile_options().strip()
    return (f"{platform.machine()} | {cpu} | {blas}, {{threads}} BLAS threads | "
            f"faiss {faiss.__version__} {opts}")  # fmt: skip


def blas_threads() -> int | None:
    """Threads of the BLAS numpy multiplies with (None when it cannot be told).

    The probe kernel's small products round differently with another number of
    BLAS threads, so it is part of a worker's identity.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


class LocalExecutor:
    """Runs blocks one after the other in this process."""

    name = "local"

    def map(
        self, fn: Callable[..., dict[str, np.ndarray]], plan: MiningPlan, jobs: Iterable[Job]
    ) -> Iterator[tuple[int, dict[str, np.ndarray], str, float]]:
        """Yield ``(g, fn(plan, g, *args), worker identity, seconds)`` for each job."""
        for g, args in jobs:
            yield (g, *timed(fn, plan, g, *args))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "workers": 1}

    def close(self) -> None:
        pass


def timed(fn: Callable[..., dict[str, np.ndarray]], plan: MiningPlan, g: int, *args: Any):
    """``(fn(plan, g, *args), worker identity, seconds it took)``."""
    t0 = time.perf_counter()
    out = fn(plan, g, *args)
    return out, worker_identity(), time.perf_counter() - t0


def make_executor(name: str, address: str | None = None):
    """The executor called ``name`` ("local" or "ray")."""
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address)
    return LocalExecutor()


class MinedBlocks:
    """Every block's arrays, assembled in plan order."""

    def __init__(self, plan: MiningPlan):
        n3, n_p, n_neg = plan.config.tier_counts[2], plan.inputs.n_pairs, plan.config.n_neg
        self.t3_ids = np.empty((plan.n_tier3, n3), dtype=np.int64)
        self.filters = np.zeros((2, 5), dtype=np.int64)
        self.ids = np.empty((n_p, n_neg), dtype=np.int64)
        self.tiers = np.empty((n_p, n_neg), dtype=np.int64)
        self.scores = np.empty((n_p, n_neg), dtype=np.float32)
        self.pos_neg = np.empty((n_p, n_neg), dtype=np.float32)
        self.pos = np.empty(n_p, dtype=np.float32)
        self.short = np.zeros(0, dtype=np.int64)
        self.workers: dict[str, list[str]] = {}
        self.seconds: dict[str, list[float]] = {"tier3": [], "pairs": []}
        self.reused = 0
        self.computed = 0
        #: Tier-3 rows searched again past the pool (with a pool).
        self.searched_again = 0
        #: The pool searched by this run: float32 / int64 [M, plan.pool_width].
        self.pool_scores: np.ndarray | None = None
        self.pool_ids: np.ndarray | None = None
        if plan.config.pool_depth is not None and plan.pool is None:
            self.pool_scores = np.empty((plan.n_tier3, plan.pool_width), dtype=np.float32)
            self.pool_ids = np.empty((plan.n_tier3, plan.pool_width), dtype=np.int64)

    def put_tier3(self, plan: MiningPlan, g: int, done: dict[str, np.ndarray]) -> None:
        c0, c1 = plan.tier3_range(g)
        self.t3_ids[c0:c1] = done["ids"]
        if "filters" in done:
            self.filters += done["filters"]
        if "again" in done:
            self.searched_again += int(done["again"][0])
        if self.pool_ids is not None:
            self.pool_scores[c0:c1] = done["pool_scores"]
            self.pool_ids[c0:c1] = done["pool_ids"]

    def put_pairs(self, plan: MiningPlan, g: int, done: dict[str, np.ndarray]) -> None:
        p0, p1 = plan.pair_range(g)
        for name in ("ids", "tiers", "scores", "pos_neg", "pos"):
            getattr(self, name)[p0:p1] = done[name]
        self.short = done["short"] if self.short.size == 0 else self.short + done["short"]


def _stage(
    executor, fn, plan: MiningPlan, kind: str, n_blocks: int, args_of: Callable[[int], tuple],
    put: Callable[[int, dict], None], size_of: Callable[[int], int], ckpt, bar, out: MinedBlocks,
) -> None:  # fmt: skip
    todo: list[Job] = []
    for g in range(n_blocks):
        done = ckpt.load(kind, g) if ckpt is not None else None
        if done is None:
            todo.append((g, args_of(g)))
            continue
        put(g, done)
        out.reused += 1
        out.workers.setdefault("checkpoint", []).append(f"{kind}-{g}")
        bar(size_of(g))
    for g, done, who, secs in executor.map(fn, plan, todo):
        if ckpt is not None:
            ckpt.save(kind, g, done)
            pause_point(f"after-{kind}-{g}")
        put(g, done)
        out.computed += 1
        out.workers.setdefault(who, []).append(f"{kind}-{g}")
        out.seconds[kind].append(secs)
        bar(size_of(g))


def run_blocks(
    plan: MiningPlan,
    executor: Any,
    checkpoints: Checkpoints | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
    after_tier3: Callable[[MinedBlocks], None] | None = None,
) -> MinedBlocks:
    """Run every block of ``plan`` on ``executor``; tier 3 first, then the pairs.

    Parameters
    ----------
    plan : MiningPlan
    executor : LocalExecutor or RayExecutor
    checkpoints : negmine.io.Checkpoints, optional
        Where finished blocks are stored and, on resume, found.
    progress : callable ``(stage, total) -> update``, optional
        Opens a progress report; ``update(n)`` is called as work finishes.
    after_tier3 : callable, optional
        Called with the results once tier 3 is complete (recall measurement).
    """
    out = MinedBlocks(plan)
    no_bar = lambda n: None  # noqa: E731
    bar = progress("tier 3 search", plan.n_tier3) if progress else no_bar
    _stage(executor, tier3_block, plan, "tier3", plan.n_tier3_blocks, lambda g: (),
           functools.partial(out.put_tier3, plan),
           lambda g: np.subtract(*plan.tier3_range(g)[::-1]), checkpoints, bar, out)  # fmt: skip
    if after_tier3 is not None:
        after_tier3(out)
    if "backend" in plan.__dict__:  # built here (in-process): the pair blocks do not search
        plan.backend.release()

    def pair_args(g: int) -> tuple[np.ndarray]:
        p0, p1 = plan.pair_range(g)
        return (out.t3_ids[plan.pair_query[p0:p1]],)

    bar = progress("sampling tiers 1, 2, 4", plan.inputs.n_pairs) if progress else no_bar
    _stage(executor, pair_block, plan, "pairs", plan.n_pair_blocks, pair_args,
           functools.partial(out.put_pairs, plan),
           lambda g: np.subtract(*plan.pair_range(g)[::-1]), checkpoints, bar, out)  # fmt: skip
    for name in ("vectors", "raw_vectors"):  # built here: their pass buffers go
        if name in plan.__dict__:
            plan.__dict__[name].free_buffers()
    return out


def cpu_count() -> int:
    """CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
