"""Exact top-k outside each query's cluster, filtered through 8-bit codes.

:func:`refined_outside_cluster` returns the ids
:func:`negmine.search.exact.exact_outside_cluster` returns over sources read in
id order (scores equal up to float32 rounding), at about half its cost where
integer products run several times faster than float32 ones:

1. **Filter.** Each chunk of sources is coded in 8 bits per dimension
   (``low + (c + 128.5) * step``, ``c`` in ``[-128, 127]``) and ranked for each
   query by integer products with the query's weights ``q * step`` rounded to
   int8 (:func:`negmine.search.codes.quantize_queries`), the skipped cluster
   and the positives left out as in the exact kernel. Each query keeps its
   ``depth`` best. The code range comes from a sample of the rows, widened.
2. **Refine.** Those candidates are scored exactly from the embeddings, and the
   ``k`` best kept.
3. **Proof.** A source the filter did not keep has an integer score no higher
   than the last one kept, ``A_last``, so its cosine is at most

   ``q . low + 128.5 (q . step) + A_last / scale + 128 |e|_1 + r_max``

   where ``e`` is the query's rounding error on ``q * step`` and ``r_max``
   bounds ``|x - decoded(x)|`` (so ``|q . (x - decoded(x))| <= r_max`` for a
   unit ``q``). Sources whose own error exceeds ``r_max`` (those the code
   range clips) are scored exactly for every query instead. When the bound
   lies below the ``k``-th exact score the answer is exact; a query for which
   it does not is searched again by the exact kernel. No approximation reaches
   the result.
"""

from __future__ import annotations

import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..layout import ClusterLayout, PositiveSets, csr_expand
from .codes import int_products, quantize_queries
from .common import empty_result, faiss_single_threaded, run_query_blocks
from .exact import GROUP, _BlockKernel, exact_outside_cluster
from .products import product_threads

__all__ = ["REFINE_DEPTH", "REFINE_MIN_SOURCES", "refined_outside_cluster"]

log = logging.getLogger("negmine")

#: Candidates per query the 8-bit filter keeps for the exact refinement.
REFINE_DEPTH = 128
#: Fewest sources for which back-ends search their exact reference this way.
REFINE_MIN_SOURCES = 200_000
#: Queries and sources per integer product of the filter (128 MiB of scores).
CODE_BLOCK, CODE_CHUNK = 2048, 8192
#: Rows, evenly spaced, whose range sets each dimension's code range.
SAMPLE_ROWS = 65_536
#: Share of the sample's range added on each side of a dimension's code range.
WIDEN = 0.1
#: Runs of consecutive rows the sample is read in.
SAMPLE_RUNS = 64
#: Share of the sample whose coding error ``r_max`` covers; sources with a
#: larger error are scored exactly.
COVERED = 0.999
#: Added to the bound: float32 rounding of the exact scores (d * eps at most,
#: 2.3e-5 at d = 384) and of the bound's own terms.
SLACK = 1e-4
#: Score of an empty slot, as FAISS's float heaps leave it.
EMPTY = np.float32(-np.finfo(np.float32).max)


def _code_range(vectors, n: int, d: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``low`` and ``width`` float32 [d] of the code range, from an even sample
    of the rows, and ``r_max``."""
    # Runs of consecutive rows spread evenly: read far faster than single rows.
    run = min(n, SAMPLE_ROWS) // SAMPLE_RUNS or 1
    starts = np.unique(np.linspace(0, n - run, min(n, SAMPLE_RUNS)).astype(np.int64))
    ids = np.unique((starts[:, None] + np.arange(run)).reshape(-1))
    sample = vectors.gather(ids)
    low, high = sample.min(axis=0), sample.max(axis=0)
    pad = np.float32(WIDEN) * (high - low)  # the sample's range misses extreme rows
    low, width = low - pad, np.maximum(high - low + 2 * pad, np.float32(1e-6))
    sq = _quantizer(low, width)
    err = _errors(sq, sample)[1]
    return low, width, float(np.quantile(err, COVERED))


def _quantizer(low: np.ndarray, width: np.ndarray):
    """A FAISS 8-bit scalar quantizer over ``[low, low + width]``: code ``u``
    decodes to ``low + (u + 0.5) * width / 255``."""
    import faiss

    sq = faiss.ScalarQuantizer(low.size, faiss.ScalarQuantizer.QT_8bit)
    faiss.copy_array_to_vector(np.concatenate([low, width]).astype(np.float32), sq.trained)
    return sq


def _errors(sq, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed codes int8 [n, d] (``u - 128``) of rows ``x`` and each row's coding error."""
    codes = sq.compute_codes(x)
    diff = sq.decode(codes)
    np.subtract(x, diff, out=diff)
    err = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    np.bitwise_xor(codes, 0x80, out=codes)
    return codes.view(np.int8), err


class _CodeKernel(_BlockKernel):
    """The exact kernel's masks and heaps over integer scores of 8-bit codes:
    the block's queries come as int8 weights, each chunk of sources is coded
    when read (two halves on two threads), and sources coded worse than
    ``r_max`` are left out (and listed in ``clipped``)."""

    def __init__(self, rows, layout, positives, depth, pool, n_workers, sq, r_max):
        super().__init__(rows, layout, positives, depth, False, pool, n_workers, None,
                         block=CODE_BLOCK, chunk=CODE_CHUNK)  # fmt: skip
        self.ints = np.empty(self.buf.size, dtype=np.int32)
        self.codes = np.empty((self.chunk, rows.shape[1]), dtype=np.int8)
        self.err = np.empty(self.chunk, dtype=np.float32)
        self.sq = sq
        self.r_max = r_max
        self.clipped: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _products(self, xq, s0, s1, scores):
        import torch

        x = self.vectors[s0:s1]
        ns = s1 - s0
        cuts = np.linspace(0, ns, self.n_workers + 1).astype(np.int64).tolist()
        jobs = [self.pool.submit(self._code, x, a, b) for a, b in itertools.pairwise(cuts)]
        for job in jobs:
            job.result()
        ints = self.ints[: scores.size].reshape(scores.shape)
        int_products(xq, self.codes[:ns], ints)
        # Integer sums below 2**24 in magnitude: exact in float32.
        torch.from_numpy(scores).copy_(torch.from_numpy(ints))
        out = np.flatnonzero(self.err[:ns] > self.r_max)
        if out.size:
            scores[:, out] = -np.inf
        self.clipped[s0] = (out + s0, x[out])  # rows kept: they are scored exactly

    def _push(self, heap, scores: np.ndarray, s0: int, step: int) -> None:
        """Offer each row's scores above its heap's smallest (most are not, once
        the heaps fill): a compare and a compaction per score, then FAISS's heap."""
        import faiss

        nb = scores.shape[0]
        floor = faiss.rev_swig_ptr(heap.val, nb * self.k).reshape(nb, self.k)[:, 0]
        jobs = [
            self.pool.submit(self._push_over, heap, floor, scores, s0, r0, min(r0 + step, nb))
            for r0 in range(0, nb, step)
        ]
        for job in jobs:
            job.result()

    @staticmethod
    def _push_over(heap, floor, scores, s0: int, r0: int, r1: int) -> None:
        """Rows ``r0:r1``: the strided groups of ``GROUP`` columns (as the exact
        kernel's prefilter) whose maximum beats the row's floor, offered whole."""
        import faiss

        part = scores[r0:r1]
        nb, ns = part.shape
        n_l = ns // GROUP
        over = part[:, : n_l * GROUP].reshape(nb, GROUP, n_l).max(axis=1) > floor[r0:r1, None]
        count = over.view(np.uint8).sum(axis=1, dtype=np.int64)
        m = int(count.max()) if count.size else 0
        if 4 * m * GROUP > ns:  # heaps still filling: offer every score
            heap.addn(ns, faiss.swig_ptr(part), s0, r0, nb)
            return
        if m:
            row, group = np.nonzero(over)
            at = np.arange(row.size) - np.repeat(np.cumsum(count) - count, count)
            cols = group[:, None] + n_l * np.arange(GROUP)
            vals = np.full((nb, m, GROUP), -np.inf, dtype=np.float32)
            ids = np.full((nb, m, GROUP), -1, dtype=np.int64)
            vals[row, at] = part[row[:, None], cols]
            ids[row, at] = cols + s0
            width = m * GROUP
            heap.addn_with_ids(width, faiss.swig_ptr(vals), faiss.swig_ptr(ids), width, r0, nb)
        if n_l * GROUP < ns:
            tail = np.ascontiguousarray(part[:, n_l * GROUP :])
            heap.addn(tail.shape[1], faiss.swig_ptr(tail), s0 + n_l * GROUP, r0, nb)

    def _code(self, x: np.ndarray, a: int, b: int) -> None:
        if b > a:
            self.codes[a:b], self.err[a:b] = _errors(self.sq, x[a:b])


def refined_outside_cluster(
    rows,
    vectors,
    queries: np.ndarray,
    query_rows: np.ndarray,
    query_cluster: np.ndarray,
    query_question: np.ndarray,
    layout: ClusterLayout,
    positives: PositiveSets,
    k: int,
    depth: int = REFINE_DEPTH,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products outside each query's cluster (see the module).

    Parameters
    ----------
    rows : :class:`negmine.vectors.RowRange`
        Unit vectors of all sources in id order, sliced a chunk at a time.
    vectors : :class:`negmine.vectors.SourceVectors`
        The same sources, for gathering rows and exact cosines.
    queries, query_rows, query_cluster, query_question, layout, positives, k
        As :func:`negmine.search.exact.exact_outside_cluster`.
    depth : int
        Candidates per query the filter keeps (at least ``k``).

    Returns
    -------
    scores : float32 [M, k]
        Exact cosines, descending (ties by lower id); ``-inf`` where fewer than
        ``k`` sources are eligible.
    ids : int64 [M, k]
        Source ids, ``-1`` where fewer than ``k`` are eligible.
    """
    n_q = query_rows.shape[0]
    out_d, out_i = empty_result(n_q, k)
    if k == 0 or n_q == 0:
        return out_d, out_i
    n_s, d = rows.shape
    low, width, r_max = _code_range(vectors, n_s, d)
    step = (width / np.float32(255)).astype(np.float32)
    n_workers = max(1, min(os.cpu_count() or 1, 8))
    with (
        faiss_single_threaded(),
        ThreadPoolExecutor(n_workers) as pool,
        product_threads("torch"),
    ):
        sq = _quantizer(low, width)
        coarse = _CodeKernel(rows, layout, positives, max(depth, k), pool, n_workers, sq, r_max)
        refine = _Refine(coarse, vectors, layout, positives, low, step, r_max, k)
        run_query_blocks(refine.run, CODE_BLOCK, queries, query_rows, query_cluster,
                         query_question, out_d, out_i, None)  # fmt: skip
    bad = np.flatnonzero(~refine.proven)
    if bad.size:
        log.debug("exact reference: %d of %d queries searched again", bad.size, n_q)
        out_d[bad], out_i[bad] = exact_outside_cluster(
            rows, queries, query_rows[bad], query_cluster[bad], query_question[bad], layout,
            positives, k,
        )  # fmt: skip
    return out_d, out_i


class _Refine:
    """One block of queries: filter, refine, prove, search again where unproven."""

    def __init__(self, coarse, vectors, layout, positives, low, step, r_max, k):
        self.coarse, self.vectors = coarse, vectors
        self.layout, self.positives = layout, positives
        self.low, self.step = low.astype(np.float64), step
        self.r_max, self.k = r_max, k
        #: Whether each query's answer is proven exact, in query order.
        self.proven = np.zeros(0, dtype=bool)

    def run(self, xq: np.ndarray, cl: np.ndarray, qq: np.ndarray):
        k = self.k
        w, scale, err = _weights(xq, self.step)
        a_sc, cand = self.coarse.run(w, cl, qq)  # integer scores, descending
        x64 = xq.astype(np.float64)
        offset = x64 @ self.low + 128.5 * (x64 @ self.step.astype(np.float64))
        sc = self.vectors.to_queries(xq, np.arange(xq.shape[0]), cand)
        parts = list(self.coarse.clipped.values())
        clipped = np.concatenate([p[0] for p in parts])
        if clipped.size:
            x = np.concatenate([p[1] for p in parts])
            sc, cand = self._with_clipped(xq, cl, qq, sc, cand, clipped, x)
        id_key = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
        order = np.lexsort((id_key, -sc), axis=-1)[:, :k]
        dist = np.take_along_axis(sc, order, 1)
        ids = np.take_along_axis(cand, order, 1)
        dist[ids < 0] = EMPTY  # as the exact kernel's heaps leave an empty slot
        full = cand[:, self.coarse.k - 1] >= 0
        last = np.where(full, a_sc[:, -1], 0).astype(np.float64)
        bound = offset + last / scale + 128.0 * err + self.r_max + SLACK
        # A filter that kept fewer than its depth kept every eligible source.
        self.proven = np.concatenate([self.proven, ~full | (bound < dist[:, k - 1])])
        return dist, ids

    def _with_clipped(self, xq, cl, qq, sc, cand, clipped, x):
        """Append the clipped sources ``clipped`` (unit rows ``x``), scored
        exactly, to each query's candidates."""
        extra = xq @ x.T
        extra[self.layout.source_cluster[clipped][None, :] == cl[:, None]] = -np.inf
        owner, at = csr_expand(self.positives.offsets, qq)
        pos = self.positives.sources[at]
        where = np.searchsorted(clipped, pos)
        hit = where < clipped.size
        hit[hit] = clipped[where[hit]] == pos[hit]
        extra[owner[hit], where[hit]] = -np.inf
        if extra.shape[1] > self.k:  # only each row's k best can be in its top k
            top = np.argpartition(-extra, self.k - 1, axis=1)[:, : self.k]
            extra, ids = np.take_along_axis(extra, top, 1), clipped[top]
        else:
            ids = np.broadcast_to(clipped, extra.shape)
        ids = np.where(np.isfinite(extra), ids, -1)
        return np.concatenate([sc, extra], axis=1), np.concatenate([cand, ids], axis=1)


def _weights(xq: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int8 weights [n, d] of ``xq * step`` (:func:`quantize_queries`), their
    scale float64 [n] and the L1 norm float64 [n] of their rounding error
    ``xq * step - weights / scale`` (the bound holds for any scale)."""
    wi = quantize_queries(xq, step)
    w = xq.astype(np.float64) * step.astype(np.float64)
    top = np.abs(w).max(axis=1)
    scale = np.divide(127.0, top, out=np.ones_like(top), where=top > 0)
    err = np.abs(w - wi / scale[:, None]).sum(axis=1)
    return wi, scale, err
