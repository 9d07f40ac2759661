"""Tier 3: the sources most similar to a question outside its cluster.

The exact kernel, returning ``(scores, ids)`` with ``-1`` ids where a row ran
out of eligible sources:

* :func:`exact_outside_cluster` — exact. Fixed blocks of queries (grouped by the
  cluster they must skip) times fixed chunks of sources through BLAS; the
  excluded cluster's columns and the question's positives are set to ``-inf``
  in the score block, and FAISS's C++ heap keeps the running top-k. No
  re-search is ever needed and the cost stays close to the bare matrix product.
  Per-query score thresholds (the score filters of :mod:`negmine.filters`) are
  masked the same way, and the scores above them counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..layout import ClusterLayout, PositiveSets, csr_expand
from .common import (
    QUERY_BLOCK,
    _new_heap,
    empty_result,
    faiss_single_threaded,
    run_query_blocks,
)
from .products import matmul_into, product_threads

__all__ = ["QUERY_BLOCK", "SOURCE_CHUNK", "exact_outside_cluster", "workspace_for"]

#: Sources per matrix product.
SOURCE_CHUNK = 32768
#: Columns per candidate group of the top-k prefilter.
GROUP = 16


def exact_outside_cluster(
    vectors: np.ndarray,
    queries: np.ndarray,
    query_rows: np.ndarray,
    query_cluster: np.ndarray,
    query_question: np.ndarray,
    layout: ClusterLayout,
    positives: PositiveSets,
    k: int,
    progress: Callable[[int], None] | None = None,
    cluster_sorted: bool = False,
    workspace: np.ndarray | None = None,
    score_cut: tuple[np.ndarray, np.ndarray] | None = None,
    products: str = "numpy",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products outside each query's cluster.

    Parameters
    ----------
    vectors : float32 [S, d]
        L2-normalised sources, C-contiguous: in source-id order, or in layout
        order (``vectors[i]`` is source ``layout.order[i]``) when
        ``cluster_sorted``. Sorted storage turns the skipped cluster into one
        contiguous column range per block, which is much cheaper to mask.
    queries : float32 [Q', d]
        L2-normalised question vectors.
    query_rows : int64 [M]
        Row of ``queries`` of each of the M queries.
    query_cluster : int64 [M]
        Cluster each query must skip; sorting queries by it makes blocks share
        one excluded range (any order is correct).
    query_question : int64 [M]
        Question id of each query, for its positives.
    layout : ClusterLayout
    positives : PositiveSets
    k : int
    progress : callable, optional
        Called with the number of queries finished after each block.
    cluster_sorted : bool
        See ``vectors``.
    workspace : float32 [QUERY_BLOCK * min(SOURCE_CHUNK, S)], optional
        Score buffer to reuse across calls (see :func:`workspace_for`).
    score_cut : (float32 [M, T], int64 [M, T]), optional
        Per-query score thresholds, non-increasing along a row, and an output
        array: scores above a row's last threshold are excluded like the
        skipped cluster, and ``counts[:, j]`` receives how many sources outside
        the cluster and not positives scored above threshold ``j``.
    products : {"numpy", "torch"}
        Library of the products (see :mod:`negmine.search.products`): numpy's
        BLAS on the threads the caller gave it, or torch on as many.

    Returns
    -------
    scores : float32 [M, k]
        Descending; ``-inf`` where fewer than ``k`` sources are eligible.
    ids : int64 [M, k]
        Source ids, ``-1`` where fewer than ``k`` are eligible.
    """

    n_q = query_rows.shape[0]
    out_d, out_i = empty_result(n_q, k)
    if k == 0 or n_q == 0:
        return out_d, out_i
    # Each heap update runs single-threaded on a share of the rows in plain
    # threads (the FAISS call releases the GIL).
    n_workers = max(1, min(os.cpu_count() or 1, 8))
    with faiss_single_threaded(), ThreadPoolExecutor(n_workers) as pool, product_threads(products):
        kernel = _BlockKernel(
            vectors, layout, positives, k, cluster_sorted, pool, n_workers, workspace
        )
        kernel.products = products
        run = kernel.run if score_cut is None else _with_cut(kernel.run, *score_cut)
        run_query_blocks(run, QUERY_BLOCK, queries, query_rows, query_cluster,
                         query_question, out_d, out_i, progress)  # fmt: skip
    return out_d, out_i


def _with_cut(
    run: Callable[..., tuple[np.ndarray, np.ndarray]], thresholds: np.ndarray, counts: np.ndarray
) -> Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``run(xq, cl, qq)`` of consecutive query blocks, each with its rows of the cut."""
    at = [0]

    def run_block(xq, cl, qq):
        b0 = at[0]
        b1 = at[0] = b0 + xq.shape[0]
        counts[b0:b1] = 0
        return run(xq, cl, qq, thresholds[b0:b1], counts[b0:b1])

    return run_block


class _BlockKernel:
    """One block of queries against all sources, chunk by chunk."""

    def __init__(self, vectors, layout, positives, k, cluster_sorted, pool, n_workers, workspace,
                 block: int = QUERY_BLOCK, chunk: int = SOURCE_CHUNK):  # fmt: skip
        self.vectors = vectors
        self.layout = layout
        self.positives = positives
        self.k = k
        self.sorted = cluster_sorted
        self.pool = pool
        self.n_workers = n_workers
        self.chunk = min(chunk, vectors.shape[0])
        size = block * self.chunk
        ok = workspace is not None and workspace.dtype == np.float32 and workspace.size >= size
        self.buf = workspace if ok else np.empty(size, dtype=np.float32)
        self.over = np.empty(0, dtype=bool)
        self.products = "numpy"

    def _products(self, xq: np.ndarray, s0: int, s1: int, scores: np.ndarray) -> None:
        """``scores[:] = xq @ vectors[s0:s1].T``: the block's scores of one chunk."""
        matmul_into(xq, self.vectors[s0:s1], scores, self.products)

    def _mask_runs(self, scores, s0, s1, runs) -> None:
        lay = self.layout
        for r0, r1, c in runs:
            if self.sorted:
                lo = max(int(lay.offsets[c]), s0)
                hi = min(int(lay.offsets[c + 1]), s1)
                if hi > lo:
                    scores[r0:r1, lo - s0 : hi - s0] = -np.inf
            else:
                members = lay.order[lay.offsets[c] : lay.offsets[c + 1]]
                lo, hi = np.searchsorted(members, [s0, s1])
                if hi > lo:
                    scores[r0:r1][:, members[lo:hi] - s0] = -np.inf

    def _push(self, heap, scores: np.ndarray, s0: int, step: int) -> None:
        """Offer a score block [nb, ns] (columns ``s0 + j``) to the running top-k heap.

        The columns are split into ``GROUP`` strided groups of ``L`` columns
        (column ``t * L + l`` is in group ``l``). Each row's k best elements lie
        in the k groups with the largest maxima, so a SIMD max over the groups
        and a heap over the ``L`` maxima leave ``k * GROUP`` candidates per row
        for the exact heap: far less work than heaping every score.
        """
        import faiss

        nb, ns = scores.shape
        k = self.k
        n_l = ns // GROUP
        if n_l < 4 * k:
            jobs = [
                self.pool.submit(
                    heap.addn,
                    ns,
                    faiss.swig_ptr(scores[r0 : r0 + step]),
                    s0,
                    r0,
                    min(step, nb - r0),
                )
                for r0 in range(0, nb, step)
            ]
            for job in jobs:
                job.result()
            return
        jobs = [
            self.pool.submit(self._push_groups, heap, scores[r0 : r0 + step], s0, r0)
            for r0 in range(0, nb, step)
        ]
        for job in jobs:
            job.result()

    def _push_groups(self, heap, scores: np.ndarray, s0: int, i0: int) -> None:
        """Group-max prefilter of :meth:`_push` for heap rows ``i0 : i0 + len(scores)``."""
        import faiss

        nb, ns = scores.shape
        k = self.k
        n_l = ns // GROUP
        gmax = scores[:, : n_l * GROUP].reshape(nb, GROUP, n_l).max(axis=1)
        gheap, _, group = _new_heap(nb, k)
        gheap.addn(n_l, faiss.swig_ptr(gmax), 0, 0, nb)
        cols = (np.maximum(group, 0)[:, :, None] + n_l * np.arange(GROUP)).reshape(nb, k * GROUP)
        vals = np.take_along_axis(scores, cols, axis=1)
        vals[np.repeat(group < 0, GROUP, axis=1)] = -np.inf
        cols += s0
        heap.addn_with_ids(k * GROUP, faiss.swig_ptr(vals), faiss.swig_ptr(cols), k * GROUP, i0, nb)
        if n_l * GROUP < ns:
            tail = np.ascontiguousarray(scores[:, n_l * GROUP :])
            heap.addn(tail.shape[1], faiss.swig_ptr(tail), s0 + n_l * GROUP, i0, nb)

    def _cut(self, scores: np.ndarray, thr: np.ndarray, counts: np.ndarray) -> None:
        """Count the scores above each threshold column; mask those above the last."""
        if self.over.size < scores.size:
            self.over = np.empty(scores.size, dtype=bool)
        over = self.over[: scores.size].reshape(scores.shape)
        for j in range(thr.shape[1]):
            np.greater(scores, thr[:, j : j + 1], out=over)
            # Summing the bytes is faster than count_nonzero along rows.
            counts[:, j] += over.view(np.uint8).sum(axis=1, dtype=np.int32)
        np.copyto(scores, np.float32(-np.inf), where=over)

    def run(self, xq, cl, qq, thr=None, counts=None):

        nb = xq.shape[0]
        n_s = self.vectors.shape[0]
        # Runs of equal cluster inside the block: one range to mask per run.
        brk = np.flatnonzero(np.diff(cl)) + 1
        starts = np.concatenate([[0], brk])
        ends = np.concatenate([brk, [nb]])
        runs = list(zip(starts.tolist(), ends.tolist(), cl[starts].tolist(), strict=True))
        owner, at = csr_expand(self.positives.offsets, qq)
        pos_col = self.positives.sources[at]
        if self.sorted:
            pos_col = self.layout.rank[pos_col]
        heap, dist, ids = _new_heap(nb, self.k)
        step = -(-nb // self.n_workers)
        for s0 in range(0, n_s, self.chunk):
            s1 = min(s0 + self.chunk, n_s)
            ns = s1 - s0
            scores = self.buf[: nb * ns].reshape(nb, ns)
            self._products(xq, s0, s1, scores)
            self._mask_runs(scores, s0, s1, runs)
            hit = (pos_col >= s0) & (pos_col < s1)
            scores[owner[hit], pos_col[hit] - s0] = -np.inf
            if thr is not None:
                self._cut(scores, thr, counts)
            self._push(heap, scores, s0, step)
        heap.reorder()
        if self.sorted:
            ids = np.where(ids >= 0, self.layout.order[np.maximum(ids, 0)], -1)
        return dist, ids


def workspace_for(n_sources: int) -> np.ndarray:
    """A score buffer for :func:`exact_outside_cluster` over ``n_sources`` sources."""
    return np.empty(QUERY_BLOCK * min(SOURCE_CHUNK, n_sources), dtype=np.float32)
