"""Approximate tier 3: search only the clusters nearest each question.

:func:`probe_outside_cluster` treats the cluster layout as an inverted file:
each query probes the ``nprobe`` clusters whose centroids are most similar to
it (never its own cluster) and gets the exact top-``k`` over the sources of
those clusters, minus its question's positives. Work per block of queries is
inverted: each probed cluster is visited once, with one matrix product of the
queries probing it against the cluster's contiguous slice of the
cluster-sorted sources, so the cost scales with ``nprobe / C`` of the exact
kernel's (the scan, :mod:`negmine.search.scan`). With ``project`` the lists
hold reduced (PCA) rows and the products are ``m``-wide
(:mod:`negmine.index.reduce`). Over 8-bit lists (``ClusterLists.codes``) the
queries are quantized too (:mod:`negmine.search.codes`) and the products are
torch's int8 x int8 ones, summed exactly in int32: about four times the
float32 rate here, and the same bytes whatever the thread count or blocking.
So over 8-bit lists a block's queries are cut in :data:`SCAN_THREADS`
parts scanned on as many threads, each with one-thread products: the scan's
selection is numpy work on one core, which a single scan with two-thread
products leaves the other core idle through. Over 8-bit lists split in
sub-lists (``ClusterLists.sub``, :mod:`negmine.index.sublists`) a query
probes ``nprobe`` sub-lists instead, chosen by integer products with their
centroids' codes (:func:`sub_list_probes`), and the scan runs over them.

:func:`recall_at_k` measures how much of an exact result an approximate one
recovers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from .._compiled import int_top
from ..index.lists import ClusterLists
from ..index.sublists import SubLists
from ..layout import ClusterLayout, PositiveSets, csr_expand
from .codes import int_products, quantize_queries
from .common import RowsOf, empty_result, faiss_single_threaded, heap_over, run_query_blocks
from .products import one_thread_pool, product_threads
from .scan import SCORE_BUFFER, ListScan

__all__ = ["INTEGER_BLOCK", "PROBE_BLOCK", "SCORE_BUFFER", "ClusterLists",
           "probe_outside_cluster", "quantize_queries", "recall_at_k",
           "recall_per_row", "sub_list_probes", "sub_list_scores"]  # fmt: skip

#: Queries per block. Fixed so that which queries share a matrix product (and so
#: any near-tie) never depends on how the caller batches the work.
PROBE_BLOCK = 4096
#: Queries per block over 8-bit codes. Integer products are exact and the probe
#: sets are still chosen :data:`PROBE_BLOCK` rows at a time, so which queries
#: share a block cannot change a result; a larger block spreads each cluster's
#: fixed cost (a call, a heap update) over more queries: sixteen times
#: :data:`PROBE_BLOCK`, so each of the scan's two threads gets eight times.
INTEGER_BLOCK = 16 * PROBE_BLOCK
#: BLAS threads of the kernel's products, whatever the machine's count: the
#: products are small (the queries probing one cluster times its sources), and
#: OpenBLAS rounds them differently with another number of threads, which can
#: flip a near-tie. Fixed, the result depends on the CPU type only.
PROBE_BLAS_THREADS = 2
#: Chunks of :data:`PROBE_BLOCK` rows whose probe-set choice may wait on the
#: pool while the next chunk's centroid products run; each holds its
#: ``[PROBE_BLOCK, C]`` float32 scores until chosen, so this bounds that memory.
PREPARE_AHEAD = 2
#: Scores in one chunk of the sub-list choice (:func:`sub_list_probes`): half a
#: MiB of int32, which the choice reads while the product has left it in cache.
SUB_SCORE_BUFFER = 1 << 17
#: Threads a block's scan over 8-bit lists is cut across (each with one-thread
#: integer products, which are exact: any count gives the same bytes).
SCAN_THREADS = PROBE_BLAS_THREADS


def _probe_sets(cscores: np.ndarray, nprobe: int) -> np.ndarray:
    """The ``nprobe`` largest columns of each row, ties to the lower column.

    Parameters
    ----------
    cscores : float32 [B, C]
        Query x centroid scores, the own cluster already ``-inf``.
    nprobe : int
        In ``[1, C]``.

    Returns
    -------
    int64 [B, nprobe]
        Chosen clusters of each row, ascending cluster id.
    """
    nb, n_c = cscores.shape
    if nprobe >= n_c:
        return np.broadcast_to(np.arange(n_c, dtype=np.int64), (nb, n_c)).copy()
    thresh = np.partition(cscores, n_c - nprobe, axis=1)[:, n_c - nprobe]
    sel = cscores > thresh[:, None]
    need = nprobe - sel.sum(axis=1)
    eq = cscores == thresh[:, None]
    # Only rows with more ties at the threshold than places need the cumsum.
    tied = np.flatnonzero(eq.sum(axis=1) > need)
    if tied.size:
        eq[tied] &= np.cumsum(eq[tied], axis=1) <= need[tied, None]
    sel |= eq
    _, cols = np.nonzero(sel)
    return cols.reshape(nb, nprobe).astype(np.int64, copy=False)


def probe_outside_cluster(
    vectors: np.ndarray | ClusterLists,
    centroids: np.ndarray,
    queries: np.ndarray,
    query_rows: np.ndarray,
    query_cluster: np.ndarray,
    query_question: np.ndarray,
    layout: ClusterLayout,
    positives: PositiveSets,
    k: int,
    nprobe: int,
    progress: Callable[[int], None] | None = None,
    project: np.ndarray | None = None,
    products: str = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner products over the ``nprobe`` nearest clusters but one's own.

    For each query, the probe set is the ``nprobe`` clusters whose centroids
    have the largest inner product with the query, its own cluster excluded
    (ties go to the lower cluster id; an empty cluster may be probed and adds
    nothing). The result is exact over the probe set: the ``k`` largest inner
    products among the probed clusters' sources that are not positives of the
    query's question. With ``nprobe >= C - 1`` it is the exact tier-3 result.

    Parameters
    ----------
    vectors : float32 [S, d] or ClusterLists
        L2-normalised sources in layout order (``vectors[i]`` is source
        ``layout.order[i]``), so cluster ``c`` is the contiguous rows
        ``layout.offsets[c]:layout.offsets[c + 1]``; or the same rows as
        per-cluster blocks. Lists with 8-bit ``codes`` are searched through
        them: the scores are then integer sums of quantized queries and codes,
        which rank the probed sources but are not cosines (re-rank them).
    centroids : float32 [C, d]
        L2-normalised cluster centroids.
    queries : float32 [Q', d]
        L2-normalised question vectors.
    query_rows : int64 [M]
        Row of ``queries`` of each of the M queries.
    query_cluster : int64 [M]
        Cluster each query must skip (its pair's cluster).
    query_question : int64 [M]
        Question id of each query, for its positives.
    layout : ClusterLayout
    positives : PositiveSets
    k : int
        Results per query, >= 0.
    nprobe : int
        Clusters probed per query, >= 1; values above ``C - 1`` act as ``C - 1``.
        Over sub-lists (``vectors.sub``), sub-lists probed, up to ``G``.
    progress : callable, optional
        Called with the number of queries finished after each block.
    project : float32 [m, d], optional
        Axes the lists are reduced to (``vectors`` then holds ``m`` columns):
        probe sets are still chosen with the full queries, the products use
        ``queries @ project.T``, and the scores are those reduced products.
    products : {"numpy", "torch"}
        Library of the float32 query x source products (see
        :mod:`negmine.search.products`), on :data:`PROBE_BLAS_THREADS` threads;
        integer products always go through torch.

    Returns
    -------
    scores : float32 [M, k]
        Descending (ties by lower source id); ``-inf`` where fewer than ``k``
        probed sources are eligible.
    ids : int64 [M, k]
        Source ids, ``-1`` where fewer than ``k`` are eligible.

    Notes
    -----
    Queries are processed in fixed blocks of :data:`PROBE_BLOCK`
    (:data:`INTEGER_BLOCK` over 8-bit codes), so results do not depend on how
    a caller slices the queries as long as the slices are aligned to that
    block.
    """
    if nprobe < 1:
        raise ValueError(f"`nprobe` must be >= 1; got {nprobe}.")
    n_q = query_rows.shape[0]
    n_c = centroids.shape[0]
    out_d, out_i = empty_result(n_q, k)
    n_probe = min(nprobe, n_c - 1)
    if k == 0 or n_q == 0 or n_probe < 1:
        if progress is not None and n_q:
            progress(n_q)
        return out_d, out_i
    if not isinstance(vectors, ClusterLists):
        vectors = ClusterLists.from_sorted(vectors, layout.offsets)
    kernel: _ProbeKernel
    if vectors.sub is not None and project is None:
        kernel = _SubListKernel(vectors, layout, positives, k, nprobe)
    else:
        kernel = _ProbeKernel(vectors, centroids, layout, positives, k, n_probe, project, products,
                              SCAN_THREADS)  # fmt: skip
    # 8-bit codes: torch's integer products (exact, any thread count).
    library = "torch" if kernel.integer else products
    with faiss_single_threaded(), product_threads(library, PROBE_BLAS_THREADS), _workers(kernel):
        block = INTEGER_BLOCK if kernel.integer else PROBE_BLOCK
        # Over 8-bit lists the float32 queries are only quantized, a chunk at a time.
        run_query_blocks(kernel.run, block, queries, query_rows, query_cluster,
                         query_question, out_d, out_i, progress, lazy=kernel.integer)  # fmt: skip
    return out_d, out_i


class _ProbeKernel:
    """One block of queries against the sources of their probed clusters.

    The probe sets are chosen here, in the calling thread; the scan of the lists
    (:class:`~negmine.search.scan.ListScan`) is cut by query rows into
    ``len(scans)`` parts run on ``pool``'s threads, which gives the same heaps
    as one scan (a query's heap depends on nothing but its own rows). Only
    over 8-bit codes: ``workers`` scans there (one-thread integer products are
    exact), one otherwise (float32 products keep their fixed BLAS threads).
    """

    def __init__(self, lists, centroids, layout, positives, k, nprobe, project=None,
                 products="numpy", workers=1):  # fmt: skip
        self.lists = lists
        self.project = project
        self.centroids = centroids
        self.nprobe = nprobe
        self.integer = project is None and lists.codes is not None
        self.scans = [ListScan(lists, layout, positives, k, self.integer, products)
                      for _ in range(workers if self.integer else 1)]  # fmt: skip
        self.pool: ThreadPoolExecutor | None = None
        self.order = layout.order

    def _prepare(self, xq: np.ndarray, cl: np.ndarray) -> tuple[np.ndarray, ...]:
        """Probe sets int64 [n, nprobe], nearest probed cluster int64 [n] and the
        queries as the lists are scored (reduced, or quantized to int8).

        The centroid products (and a reduction's) are computed here, PROBE_BLOCK
        rows at a time whatever the block (a row's rounding may depend on its
        product's rows); the rest of each chunk (the choice, own cluster never
        chosen, and the quantization, all row by row) goes to the pool when
        there is one, while the next chunk's product runs.
        """
        nb = xq.shape[0]
        probes = np.empty((nb, self.nprobe), dtype=np.int64)
        nearest = np.empty(nb, dtype=np.int64)
        xs = xq if self.project is None else xq @ self.project.T
        xw = np.empty(xs.shape, dtype=np.int8) if self.integer else xs
        jobs: list[Future[None]] = []
        for r0 in range(0, nb, PROBE_BLOCK):
            r1 = min(r0 + PROBE_BLOCK, nb)
            if len(jobs) >= PREPARE_AHEAD:  # each holds a [PROBE_BLOCK, C] score block
                jobs.pop(0).result()
            chunk = xq[r0:r1]
            args = (chunk @ self.centroids.T, cl[r0:r1], probes[r0:r1], nearest[r0:r1],
                    chunk if self.project is None else xs[r0:r1], xw[r0:r1])  # fmt: skip
            if self.pool is None:
                self._choose(*args)
            else:
                jobs.append(self.pool.submit(self._choose, *args))
        for job in jobs:
            job.result()
        return probes, nearest, xw

    def _choose(self, cs, cl, probes, nearest, xs, xw) -> None:
        """Fill ``probes``, ``nearest`` (and ``xw``, over 8-bit lists) of one chunk
        from its centroid scores ``cs`` float32 [n, C]."""
        cs[np.arange(cs.shape[0]), cl] = -np.inf
        probes[...] = _probe_sets(cs, self.nprobe)
        nearest[...] = np.argmax(cs, axis=1)
        if self.integer:
            quantize_queries(xs, self.lists.step, out=xw)

    def run(self, xq, cl, qq):
        probes, nearest, xq = self._prepare(xq, cl)
        nb = xq.shape[0]
        cuts = np.linspace(0, nb, len(self.scans) + 1).astype(np.int64).tolist()
        if self.pool is None or nb < 2 * len(self.scans):
            top_d, top_i = self.scans[0].run(xq, probes, nearest, qq)
        else:
            parts = [self.pool.submit(_scan_part, s, xq[a:b], probes[a:b], nearest[a:b], qq[a:b])
                     for s, a, b in zip(self.scans, cuts[:-1], cuts[1:], strict=True)]  # fmt: skip
            done = [p.result() for p in parts]
            top_d = np.concatenate([d for d, _ in done])
            top_i = np.concatenate([i for _, i in done])
        flat_i = np.where(top_i < 0, -1, self.order[np.maximum(top_i, 0)])
        # Descending score, ties (and the -inf padding) by ascending id, -1 last.
        id_key = np.where(flat_i >= 0, flat_i, np.iinfo(np.int64).max)
        order = np.lexsort((id_key, -top_d), axis=-1)
        return (
            np.take_along_axis(top_d, order, axis=1),
            np.take_along_axis(flat_i, order, axis=1),
        )


class _SubListKernel(_ProbeKernel):
    """The kernel over 8-bit lists split in sub-lists (:mod:`negmine.index.sublists`).

    A query probes the ``nprobe`` sub-lists whose centroids' codes score
    highest against its quantized weights, those of its own cluster left out
    (:func:`sub_list_probes`); the scan is the same, over the sub-lists as
    lists (a layout whose "clusters" are the sub-lists), and its positions map
    back to source ids through the sub-lists' order.
    """

    def __init__(self, lists, layout, positives, k, nprobe):
        sub = lists.sub
        super().__init__(lists, None, sub.layout(layout), positives, k,
                         max(1, min(nprobe, sub.n_lists)), None, "torch", SCAN_THREADS)  # fmt: skip
        self.sub = sub

    def _prepare(self, xq: np.ndarray, cl: np.ndarray) -> tuple[np.ndarray, ...]:
        """Probe sets int64 [n, nprobe] (``-1`` padded), the best probed sub-list
        int64 [n] and the quantized queries, :data:`PROBE_BLOCK` rows at a time
        on the pool's threads when there is one (each row's choice depends on
        that row alone)."""
        nb = xq.shape[0]
        probes = np.empty((nb, self.nprobe), dtype=np.int64)
        nearest = np.empty(nb, dtype=np.int64)
        xw = np.empty(xq.shape, dtype=np.int8)
        # Each chunk's float32 rows are gathered (``xq`` may be a RowsOf) by its own job.
        cuts = [slice(r0, r0 + PROBE_BLOCK) for r0 in range(0, nb, PROBE_BLOCK)]
        chunks = [(xq, c, *(a[c] for a in (cl, probes, nearest, xw))) for c in cuts]
        if self.pool is None:
            for args in chunks:
                self._choose_sub(*args)
        else:
            for job in [self.pool.submit(self._choose_sub, *args) for args in chunks]:
                job.result()
        return probes, nearest, xw

    def _choose_sub(self, xq, rows, cl, probes, nearest, xw) -> None:
        with faiss_single_threaded():
            part = xq[rows] if isinstance(xq, np.ndarray) else RowsOf(xq.queries, xq.rows[rows])
            quantize_queries(part, self.lists.step, out=xw)
            probes[...], nearest[...] = sub_list_probes(self.sub, xw, cl, self.nprobe)


def sub_list_scores(sub: SubLists, xw: np.ndarray, cluster: np.ndarray) -> np.ndarray:
    """Integer scores of quantized queries against every sub-list's centroid code.

    Parameters
    ----------
    sub : SubLists
    xw : int8 [n, d]
        Queries quantized for the lists (:func:`quantize_queries`).
    cluster : int64 [n]
        Cluster each query skips: its sub-lists score the int32 minimum.

    Returns
    -------
    int32 [n, G]
    """
    out = np.empty((xw.shape[0], sub.n_lists), dtype=np.int32)
    if out.size:
        int_products(np.ascontiguousarray(xw), sub.codes, out)
    owner, at = csr_expand(sub.first, cluster)
    out[owner, at] = np.iinfo(np.int32).min
    return out


def sub_list_probes(
    sub: SubLists, xw: np.ndarray, cluster: np.ndarray, nprobe: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``nprobe`` sub-lists each query probes and the best of them.

    Parameters
    ----------
    sub : SubLists
    xw : int8 [n, d]
        Quantized queries.
    cluster : int64 [n]
        Cluster each query skips.
    nprobe : int
        >= 1.

    Returns
    -------
    probes : int64 [n, nprobe]
        The sub-lists with the largest integer scores (:func:`sub_list_scores`),
        those FAISS's heap keeps (ties included), in no particular order;
        ``-1`` where fewer lists lie outside the query's cluster.
    best : int64 [n]
        The highest-scoring of them (``-1`` for none); of several, the first in
        FAISS's heap.
    """
    import faiss

    n, g = xw.shape[0], sub.n_lists
    top = np.full((n, nprobe), np.iinfo(np.int32).min, dtype=np.int32)
    ids = np.full((n, nprobe), -1, dtype=np.int64)
    step = max(1, SUB_SCORE_BUFFER // max(1, g))
    choose = int_top()  # the compiled choice: FAISS's entries, fewer of them pushed
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        scores = sub_list_scores(sub, xw[r0:r1], cluster[r0:r1])
        top_d, top_i = top[r0:r1], ids[r0:r1]
        if choose is None:
            heap_over(top_d, top_i).addn(g, faiss.swig_ptr(scores), 0, 0, r1 - r0)
            continue
        redo = np.flatnonzero(choose(scores, top_d, top_i))
        if redo.size:  # a tied best: the first of them in FAISS's heap is ``best``
            d_r = np.full((redo.size, nprobe), np.iinfo(np.int32).min, dtype=np.int32)
            i_r = np.full((redo.size, nprobe), -1, dtype=np.int64)
            s_r = np.ascontiguousarray(scores[redo])
            heap_over(d_r, i_r).addn(g, faiss.swig_ptr(s_r), 0, 0, redo.size)
            top_d[redo], top_i[redo] = d_r, i_r
    best = ids[np.arange(n), np.argmax(top, axis=1)] if n else np.zeros(0, dtype=np.int64)
    return ids, best


def _scan_part(scan: ListScan, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scan.run(*args)`` on a worker thread, FAISS on that thread alone."""
    with faiss_single_threaded():  # OpenMP's thread count is the calling thread's
        return scan.run(*args)


@contextmanager
def _workers(kernel: _ProbeKernel) -> Iterator[None]:
    """Threads for the kernel's scans, torch's products on one thread each
    meanwhile (integer products are exact: the same bytes on any count)."""
    if len(kernel.scans) < 2:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with one_thread_pool(len(kernel.scans), "negmine-scan") as pool:
            kernel.pool = pool
            yield
    finally:
        kernel.pool = None
        torch.set_num_threads(before)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of each row's exact ids that the approximate row recovers.

    The mean of :func:`recall_per_row`; ``nan`` when no row has an exact id.
    """
    rows = recall_per_row(approx_ids, exact_ids)
    return float(np.mean(rows)) if rows.size else float("nan")


def recall_per_row(approx_ids: np.ndarray, exact_ids: np.ndarray) -> np.ndarray:
    """Fraction of each row's exact ids that the approximate row recovers.

    Parameters
    ----------
    approx_ids : int64 [M, k_a]
        Approximate result ids, ``-1`` padded.
    exact_ids : int64 [M, k]
        Exact result ids, ``-1`` padded; ids within a row are distinct.

    Returns
    -------
    float64 [M']
        ``|approx ∩ exact| / |valid exact ids|`` of each row with at least one
        valid exact id, in row order.
    """
    approx_ids = np.asarray(approx_ids)
    exact_ids = np.asarray(exact_ids)
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise ValueError(
            f"`approx_ids` must have as many rows as `exact_ids`; got "
            f"{approx_ids.shape[0]} and {exact_ids.shape[0]}."
        )
    n = exact_ids.shape[0]
    found = np.zeros(n, dtype=np.int64)
    valid = (exact_ids >= 0).sum(axis=1) if exact_ids.ndim == 2 else np.zeros(n, np.int64)
    step = max(1, (1 << 22) // max(1, approx_ids.shape[1] * exact_ids.shape[1]))
    for r0 in range(0, n, step):
        e = exact_ids[r0 : r0 + step]
        a = approx_ids[r0 : r0 + step]
        hit = (a[:, :, None] == e[:, None, :]).any(axis=1) & (e >= 0)
        found[r0 : r0 + step] = hit.sum(axis=1)
    rows = valid > 0
    return found[rows] / valid[rows]
