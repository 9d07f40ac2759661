"""The store bench's products floor: what a probe search's candidate products alone cost here.

A search over cluster lists does one kind of work in bulk: the products of each
tier-3 query with every source of the clusters it probes. How fast a machine
runs them decides most of the mining time, and machines differ (integer
products ran at about 1,600 GOP/s per thread on one machine here and at 385 on
another of the same name). So the store bench reports mining as a multiple of
this floor, not only in seconds:

* :func:`scanned_per_query` counts the sources a query's probe set holds, over
  an even sample of the plan's tier-3 queries, with the kernel's own choice of
  clusters;
* :func:`product_rate` times the storage's product on the shapes and threads
  the kernel uses (8-bit lists: one-thread integer products on each scan
  thread at once; float32 or reduced lists: the plan's library on the kernel's
  BLAS threads);
* :func:`products_floor` is their quotient: the seconds no implementation of
  that candidate pass could beat on this machine at this rate.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["FLOOR_SAMPLE", "product_rate", "products_floor", "scanned_per_query"]

#: Tier-3 queries :func:`scanned_per_query` samples (evenly; all when fewer).
FLOOR_SAMPLE = 8192
#: Seconds each thread of :func:`product_rate` keeps multiplying.
RATE_SECONDS = 1.0


def scanned_per_query(plan: Any, nprobe: int, sample: int = FLOOR_SAMPLE) -> float:
    """Mean number of sources in a tier-3 query's probe set.

    Parameters
    ----------
    plan : MiningPlan
    nprobe : int
        Clusters probed per query (at most ``C - 1`` are); sub-lists, over
        lists split in them.
    sample : int
        Tier-3 queries to count over, evenly spaced; all when fewer.

    Returns
    -------
    float
        Mean over the sampled queries of the sizes of the clusters each probes:
        the ``nprobe`` whose centroids score highest, its own cluster left out,
        chosen as the probe kernel chooses them.
    """
    from .search.probe import PROBE_BLOCK, _probe_sets, quantize_queries, sub_list_probes
    from .vectors import question_vectors

    if plan.n_tier3 == 0:
        return 0.0
    pick = np.unique(np.linspace(0, plan.n_tier3 - 1, min(sample, plan.n_tier3)).astype(np.int64))
    cl = plan.t3_cluster[pick]
    qvec, rows = question_vectors(plan.inputs.questions, plan.t3_question[pick])
    lists = _sub_listed(plan)
    if lists is not None:  # sub-lists, chosen by the kernel's integer scores
        sub = lists.sub
        xw = quantize_queries(qvec[rows], lists.step)
        probes, _ = sub_list_probes(sub, xw, cl, max(1, min(nprobe, sub.n_lists)))
        sizes = np.append(np.diff(sub.offsets), 0)  # a -1 probe holds nothing
        return float(sizes[probes].sum()) / pick.size
    cent = np.asarray(plan.inputs.centroids, dtype=np.float32)
    sizes = np.diff(plan.layout.offsets)
    n_probe = max(1, min(nprobe, cent.shape[0] - 1))
    total = 0
    for r0 in range(0, pick.size, PROBE_BLOCK):
        r1 = min(r0 + PROBE_BLOCK, pick.size)
        cs = qvec[rows[r0:r1]] @ cent.T
        cs[np.arange(r1 - r0), cl[r0:r1]] = -np.inf
        total += int(sizes[_probe_sets(cs, n_probe)].sum())
    return total / pick.size


def _sub_listed(plan: Any) -> Any:
    """The plan's tier-3 lists when they are sub-lists, else None."""
    index = plan.index
    if index is None or not index.is_clusters or index.sub_list_count is None:
        return None
    return plan.backend.lists


def product_rate(
    integer: bool, m: int, n: int, d: int, library: str = "numpy", seconds: float = RATE_SECONDS
) -> float:
    """Operations per second (2 per multiply-add) of the probe kernel's products.

    Parameters
    ----------
    integer : bool
        int8 x int8 products summed in int32 (8-bit lists), on each of the
        scan's threads at once, one thread of torch each; otherwise float32
        products through ``library`` on the kernel's BLAS threads.
    m, n, d : int
        Shape of one product: ``[m, d] @ [d, n]``.
    library : {"numpy", "torch"}
        Float32 products' library.
    seconds : float
        How long each thread keeps multiplying (after one untimed call).

    Returns
    -------
    float
        Operations per second over all threads together.
    """
    from .search.probe import PROBE_BLAS_THREADS, SCAN_THREADS

    rng = np.random.default_rng(0)
    if integer:
        from .search.codes import int_products
        from .search.products import one_thread_pool, product_threads

        a = rng.integers(-127, 128, (m, d), dtype=np.int8)
        b = rng.integers(-127, 128, (n, d), dtype=np.int8)

        def run(_: int) -> int:  # each thread its own output, as each scan thread has
            out = np.empty((m, n), dtype=np.int32)
            return _loop(lambda: int_products(a, b, out), seconds)

        with product_threads("torch", 1), one_thread_pool(SCAN_THREADS) as pool:
            t0 = time.perf_counter()
            calls = sum(pool.map(run, range(SCAN_THREADS)))
            wall = time.perf_counter() - t0
    else:
        from .search.products import matmul_into, product_threads

        a = rng.standard_normal((m, d), dtype=np.float32)
        b = rng.standard_normal((n, d), dtype=np.float32)
        out = np.empty((m, n), dtype=np.float32)
        with product_threads(library, PROBE_BLAS_THREADS):
            t0 = time.perf_counter()
            calls = _loop(lambda: matmul_into(a, b, out, library), seconds)
            wall = time.perf_counter() - t0
    return 2.0 * m * n * d * calls / wall


def _loop(product: Any, seconds: float) -> int:
    """Call ``product`` once untimed, then until ``seconds`` have passed; the timed calls."""
    product()
    calls, end = 0, time.perf_counter() + seconds
    while calls < 3 or time.perf_counter() < end:
        product()
        calls += 1
    return calls + 1  # the caller's clock also ran over the untimed call


def products_floor(plan: Any, nprobe: int) -> dict[str, Any] | None:
    """The seconds a probe search of ``plan``'s tier-3 queries spends in its
    candidate products at this machine's rate, or None when the plan's tier 3
    is not a probe search over cluster lists.

    Returns
    -------
    dict or None
        ``scanned_per_query`` (float), ``choice_per_query`` (sub-list
        centroids scored per query, 0 over whole clusters), ``kind`` (``"int8"`` or the float32
        library), ``width`` (columns multiplied: ``d``, or a reduction's),
        ``shape`` ``[m, n]`` of the timed product, ``ops_per_s`` and ``floor_s``
        (all ``plan.n_tier3`` queries).
    """
    from .search.backends import ProbeBackend
    from .search.probe import INTEGER_BLOCK, PROBE_BLOCK, SCAN_THREADS, SCORE_BUFFER

    backend = plan.backend
    if not isinstance(backend, ProbeBackend):
        return None
    lists = backend.lists
    integer = backend.project is None and lists.codes is not None
    library = plan.products["library"]
    sub = lists.sub if integer else None
    n_c = len(plan.layout.offsets) - 1 if sub is None else sub.n_lists
    scanned = scanned_per_query(plan, nprobe)
    n_probe = max(1, min(nprobe, n_c - 1 if sub is None else n_c))
    n = max(1, round(scanned / n_probe))  # a probed cluster's mean size
    # Queries probing one cluster in one block (per scan thread over 8-bit lists),
    # split as the kernel splits products larger than its score buffer.
    per = INTEGER_BLOCK / SCAN_THREADS if integer else PROBE_BLOCK
    m = max(1, min(round(per * n_probe / n_c), SCORE_BUFFER // n))
    rate = product_rate(integer, m, n, lists.d, library)
    # Over sub-lists, choosing them is integer products too: one per sub-list.
    chosen = 0 if sub is None else sub.n_lists
    ops = 2.0 * plan.n_tier3 * (scanned + chosen) * lists.d
    return {
        "scanned_per_query": round(scanned, 1),
        "choice_per_query": int(chosen),
        "kind": "int8" if integer else library,
        "width": int(lists.d),
        "shape": [int(m), int(n)],
        "ops_per_s": rate,
        "floor_s": ops / rate,
    }
