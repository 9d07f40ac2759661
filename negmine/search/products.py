"""The float32 matrix products of tier 3, through numpy's BLAS or torch's.

The search kernels spend most of their time in ``queries @ sources.T`` over
fixed blocks. numpy's wheel multiplies through OpenBLAS, torch's CPU wheel
through MKL, and neither is faster on every machine, so the library is a
setting (``products`` of :class:`negmine.config.MiningConfig`):

* :func:`matmul_into` computes one product into a preallocated float32 block
  with either library (torch through ``torch.from_numpy`` views: no copies);
* :func:`product_threads` runs a block of products on a fixed number of
  threads, for both libraries alike;
* :func:`calibrate` times both libraries on products shaped like the kernels'
  and names the faster one; its result is cached per machine, so ``"auto"``
  measures once.

The two libraries round differently (they sum in other orders), so a run's
bytes depend on the library; for a given library, block and thread count they
are fixed. torch is imported only when it is used.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import fail
from ..config import PRODUCTS
from .common import blas_threads

__all__ = [
    "CALIBRATION_SHAPES",
    "LIBRARIES",
    "PRODUCTS",
    "blas_thread_count",
    "cache_path",
    "calibrate",
    "matmul_into",
    "product_threads",
    "resolve_products",
    "torch_available",
]

log = logging.getLogger("negmine")

#: Libraries a product can run through.
LIBRARIES = ("numpy", "torch")
#: ``(rows, columns)`` of the products :func:`calibrate` times: a block of
#: queries against a few thousand sources, and the small products of one
#: probed cluster (the queries probing it times its sources).
CALIBRATION_SHAPES = ((4096, 2000), (256, 384))
#: Seconds of timed products per library and shape (after one untimed call).
_TIME_PER_SHAPE = 0.08
_CACHE_FORMAT = 1


def torch_available() -> bool:
    """Whether torch can be imported (checked without importing it)."""
    return importlib.util.find_spec("torch") is not None


def matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray, library: str = "numpy") -> None:
    """``out[:] = a @ b.T`` through ``library``'s BLAS.

    Parameters
    ----------
    a : float32 [m, d]
    b : float32 [n, d]
        Rows to multiply with; any strides (a row-major block is read as its
        transpose, no copy).
    out : float32 [m, n]
        C-contiguous, written in place.
    library : {"numpy", "torch"}
    """
    if library == "numpy":
        np.matmul(a, b.T, out=out)
        return
    import torch

    torch.matmul(_tensor(torch, a), _tensor(torch, b).T, out=torch.from_numpy(out))


def _tensor(torch: Any, a: np.ndarray) -> Any:
    """A torch view of ``a``; read-only arrays (memory-mapped indexes) too, silently."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    import warnings

    with warnings.catch_warnings():
        # torch warns that it cannot mark the view read-only; it is only read.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def blas_thread_count() -> int:
    """Threads numpy's BLAS runs on now (the largest count threadpoolctl finds)."""
    from threadpoolctl import threadpool_info

    counts = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    return max(counts) if counts else os.cpu_count() or 1


def one_thread_pool(workers: int, name: str = "negmine") -> ThreadPoolExecutor:
    """A pool of ``workers`` threads whose torch products each run on one thread.

    ``torch.set_num_threads`` sets the OpenMP team size of the calling thread
    only (OpenMP keeps it per thread), and a thread started later begins at
    OpenMP's default, the core count: without this, each worker's integer
    product (oneDNN's, parallel through OpenMP) starts a team of that many
    threads, which then spin against the other workers' teams for the cores.
    Each thread here sets its own count to one as it starts.
    """
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=_one_torch_thread)


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


@contextmanager
def product_threads(library: str, n: int | None = None) -> Iterator[None]:
    """Run the block's products on ``n`` threads, whichever library computes them.

    Parameters
    ----------
    library : {"numpy", "torch"}
    n : int or None
        Threads of numpy's BLAS (through threadpoolctl) and, for torch, of
        torch (``torch.set_num_threads``, restored on exit). ``None``: numpy's
        BLAS stays as the caller set it, and torch runs on as many threads.
    """
    if library == "numpy":
        if n is None:
            yield
        else:
            with blas_threads(n):
                yield
        return
    import torch

    n = blas_thread_count() if n is None else n
    before = torch.get_num_threads()
    with blas_threads(n):
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)


# ---------------------------------------------------------------- calibration
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_path() -> Path:
    """The calibration cache: ``$XDG_CACHE_HOME/negmine/products.json``
    (``~/.cache/negmine/products.json`` when the variable is unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "negmine" / "products.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == _CACHE_FORMAT else {}


def _write_cache(path: Path, key: str, record: dict[str, Any]) -> None:
    """Add ``record`` under ``key``; an unwritable cache only costs a new measurement."""
    data = _read_cache(path) or {"format": _CACHE_FORMAT}
    data.setdefault("machines", {})[key] = record
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError as e:
        log.debug("products: calibration not cached at %s (%s)", path, e)
        with suppress(OSError):
            tmp.unlink(missing_ok=True)


def _time_library(library: str, a: np.ndarray, b: np.ndarray, threads: int) -> float:
    """Best seconds of one ``a @ b.T`` through ``library`` over about
    ``_TIME_PER_SHAPE / 2`` seconds (at least 3 calls, after an untimed one)."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    best = math.inf
    with product_threads(library, threads):
        matmul_into(a, b, out, library)  # untimed: first-call set-up
        t_end = time.perf_counter() + _TIME_PER_SHAPE / 2
        reps = 0
        while reps < 3 or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            matmul_into(a, b, out, library)
            best = min(best, time.perf_counter() - t0)
            reps += 1
    return max(best, 1e-9)


def _best_seconds(libs: list[str], shape: tuple[int, int], d: int, threads: int) -> list[float]:
    """Best seconds of each library's ``[m, d] @ [d, n]``, in two rounds of
    opposite order, so that both libraries meet the same load of the machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((shape[0], d), dtype=np.float32)
    b = rng.standard_normal((shape[1], d), dtype=np.float32)
    best = dict.fromkeys(libs, math.inf)
    for order in (libs, libs[::-1]):
        for lib in order:
            best[lib] = min(best[lib], _time_library(lib, a, b, threads))
    return [best[lib] for lib in libs]


def calibrate(
    d: int = 384,
    shapes: Sequence[tuple[int, int]] = CALIBRATION_SHAPES,
    threads: int | None = None,
    cache: bool = True,
) -> dict[str, Any]:
    """Time numpy's and torch's float32 products here and name the faster library.

    Each library computes products ``[m, d] @ [d, n]`` of every shape on
    ``threads`` threads, repeated for about 0.1 s per shape and library in two
    rounds of opposite order; the fastest call counts. The score of a library
    is the geometric mean of its GFLOP/s over the shapes; the higher one wins.
    Without torch the answer is numpy.

    Parameters
    ----------
    d : int
        Dimension of the vectors.
    shapes : sequence of (int, int)
        ``(m, n)`` of each product timed.
    threads : int, optional
        Threads of both libraries; default: the count numpy's BLAS has now.
    cache : bool
        Read and write the result in :func:`cache_path`, keyed by CPU model,
        numpy and torch versions, threads, ``d`` and the shapes.

    Returns
    -------
    dict
        ``library`` (``"numpy"`` or ``"torch"``), ``gflops`` (library -> score),
        ``gflops_by_shape`` (library -> ``"mxn"`` -> GFLOP/s), ``threads``,
        ``d``, ``cpu``, ``versions``, ``seconds`` (time spent measuring),
        ``load_average`` and ``cpu_count`` (a load above the count means other
        processes shared the cores: the figures are then theirs as much as the
        libraries') and ``cached`` (whether the record came from the cache).

    Notes
    -----
    The first measurement of a machine is kept: ``"auto"`` then chooses the
    same library on every run there, whatever the load of the moment.
    Delete :func:`cache_path`, or pass ``cache=False``, to measure again.
    """
    n = int(threads) if threads is not None else blas_thread_count()
    shapes = [(int(m), int(w)) for m, w in shapes]
    libs = ["numpy"]
    if torch_available():
        import torch

        libs.append("torch")
    versions = {"numpy": np.__version__}
    if "torch" in libs:
        versions["torch"] = torch.__version__
    cpu = _cpu_model()
    key = json.dumps([cpu, versions, n, int(d), shapes])
    path = cache_path()
    if cache:
        hit = _read_cache(path).get("machines", {}).get(key)
        if isinstance(hit, dict) and hit.get("library") in libs:
            return {**hit, "cached": True}
    t0 = time.perf_counter()
    secs = np.array([_best_seconds(libs, shape, int(d), n) for shape in shapes])  # [shape, lib]
    flops = 2.0 * d * np.array([m * w for m, w in shapes], dtype=np.float64)[:, None] / secs / 1e9
    names = [f"{m}x{w}" for m, w in shapes]
    by_shape = {lib: {s: round(float(f), 2) for s, f in zip(names, flops[:, j], strict=True)}
                for j, lib in enumerate(libs)}  # fmt: skip
    score = {lib: math.exp(float(np.mean(np.log(flops[:, j])))) for j, lib in enumerate(libs)}
    record = {
        "library": max(libs, key=lambda lib: score[lib]),
        "gflops": {lib: round(v, 2) for lib, v in score.items()},
        "gflops_by_shape": by_shape,
        "threads": n,
        "d": int(d),
        "cpu": cpu,
        "versions": versions,
        "seconds": round(time.perf_counter() - t0, 3),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
    }
    log.info("products: %s (GFLOP/s %s, %d threads)", record["library"], score, n)
    if cache:
        _write_cache(path, key, record)
    return {**record, "cached": False}


def resolve_products(setting: str, d: int = 384, threads: int | None = None) -> dict[str, Any]:
    """The library a ``products`` setting means on this machine.

    Parameters
    ----------
    setting : {"numpy", "torch", "auto"}
    d : int
        Dimension of the vectors (for ``"auto"``'s calibration).
    threads : int, optional
        Threads the kernel's products run on (for ``"auto"``).

    Returns
    -------
    dict
        ``setting``, ``library`` (``"numpy"`` or ``"torch"``) and
        ``calibration`` (:func:`calibrate`'s record for ``"auto"``, else None).
    """
    if setting not in PRODUCTS:
        fail("products", f"be one of {', '.join(map(repr, PRODUCTS))}", repr(setting))
    if setting != "auto":
        return {"setting": setting, "library": setting, "calibration": None}
    cal = calibrate(d=d, threads=threads)
    return {"setting": setting, "library": cal["library"], "calibration": cal}
