"""The probe kernel's scan: queries against the lists they probe, into running heaps.

A :class:`ListScan` takes a set of queries whose probe sets are chosen (see
:mod:`negmine.search.probe`) and returns each query's exact top-``k`` over the
sources of its probed clusters. Work is inverted: each probed cluster is
visited once, with one matrix product of the queries probing it against the
cluster's rows, and each query keeps one running top-``k`` heap across its
clusters, fed its nearest cluster first. Once a heap is warm, a row whose
maximum is not above its smallest kept score is skipped whole, and of the
others only the scores above it are pushed (:func:`_admit`). Over 8-bit lists
the heaps hold the integer scores themselves and FAISS pushes each row whole
(:func:`_admit_int`), or, with the ``numba`` extra, a compiled push does the
same in one pass (:mod:`negmine.search.compiled`).

A query's heap depends only on its own probe set, its own scores and its own
positives, so the queries of a block may be cut into parts scanned by
separate :class:`ListScan` objects (one per thread) with the same result.
"""

from __future__ import annotations

import numpy as np

from .._compiled import int_push
from .._order import stable_order
from ..index.lists import ClusterLists
from ..layout import ClusterLayout, PositiveSets, csr_expand
from .codes import int_products
from .common import heap_over
from .products import matmul_into

__all__ = ["SCORE_BUFFER", "ListScan"]

#: Floats in the reusable score buffer of one cluster's matrix product; larger
#: products are split by query rows.
SCORE_BUFFER = 1 << 22
#: An integer heap's empty slot and a left-out positive's score: below every
#: integer score (``|s| < 2**24``), so, like ``-inf`` in a float heap, never admitted.
_INT_EMPTY = np.iinfo(np.int32).min


class ListScan:
    """Scans queries over their probed lists; holds the buffers of one thread.

    Parameters
    ----------
    lists : ClusterLists
        Float32 (or reduced) rows, or 8-bit codes when ``integer``.
    layout : ClusterLayout
    positives : PositiveSets
    k : int
    integer : bool
        Score 8-bit codes with integer products (queries int8).
    products : {"numpy", "torch"}
        Library of float32 products.
    """

    def __init__(
        self, lists: ClusterLists, layout: ClusterLayout, positives: PositiveSets, k: int,
        integer: bool, products: str = "numpy",
    ):  # fmt: skip
        self.lists = lists
        self.layout = layout
        self.positives = positives
        self.k = k
        self.integer = integer
        self.products = products
        # The compiled push (the ``numba`` extra), same bytes as FAISS's.
        self.fused = int_push() if integer else None
        self.buf = np.empty(0, dtype=np.float32)
        self.ibuf = np.empty(0, dtype=np.int32)
        self.qbuf = np.empty(0, dtype=np.float32)
        self.local = np.empty(0, dtype=np.int64)

    def run(
        self, xq: np.ndarray, probes: np.ndarray, nearest: np.ndarray, qq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query over its probed clusters, positives left out.

        Parameters
        ----------
        xq : float32 or int8 [n, w]
            The queries as the lists are scored (reduced, or quantized).
        probes : int64 [n, nprobe]
            Clusters (lists) each query probes; ``-1`` for none.
        nearest : int64 [n]
            Each query's nearest probed cluster (scanned first).
        qq : int64 [n]
            Question of each query, for its positives.

        Returns
        -------
        top_d : float32 [n, k]
            Min-heap rows (unsorted); ``-inf`` where fewer are eligible.
        top_i : int64 [n, k]
            Layout positions, ``-1`` where fewer are eligible.
        """
        lay, k = self.layout, self.k
        nb, n_probe = probes.shape
        n_c = len(lay.offsets) - 1
        # (row, slot) pairs grouped by probed cluster, in two rounds: each query's
        # nearest cluster first, so its heap is warm (and admits few scores) when
        # its other clusters come.
        # A probe of -1 (fewer lists to probe than places) goes to a last, unread group.
        later = probes != nearest[:, None]
        flat_c = np.where(probes >= 0, probes + later * n_c, 2 * n_c).reshape(-1)
        del later
        bounds = np.zeros(2 * n_c + 2, dtype=np.int64)
        np.cumsum(np.bincount(flat_c, minlength=2 * n_c + 1), out=bounds[1:])
        # A stable sort is one permutation; numpy sorts 16-bit keys by radix, in O(n).
        if 2 * n_c < 1 << 16:
            flat_c = flat_c.astype(np.uint16)
        pair_row = np.argsort(flat_c, kind="stable")
        del flat_c  # the scan below holds only the sorted rows (a large block's memory)
        pair_row //= n_probe
        # Positives of the queries, as layout positions grouped by their cluster.
        owner, at = csr_expand(self.positives.offsets, qq)
        pos_col = lay.rank[self.positives.sources[at]]
        by_pc = stable_order(pos_col)
        pos_col = pos_col[by_pc]
        pos_row = owner[by_pc]
        pos_at = np.searchsorted(pos_col, lay.offsets).tolist()  # each cluster's positives
        # Over 8-bit lists the heaps keep the integer scores (exact in float32).
        empty = _INT_EMPTY if self.integer else -np.inf
        top_d = np.full((nb, k), empty, dtype=np.int32 if self.integer else np.float32)
        top_i = np.full((nb, k), -1, dtype=np.int64)
        if self.local.size < nb:
            self.local = np.full(nb, -1, dtype=np.int64)
        for g in np.flatnonzero(bounds[1:-1] > bounds[:-2]).tolist():
            c = g % n_c
            lo, hi = int(lay.offsets[c]), int(lay.offsets[c + 1])
            if hi == lo:
                continue
            rows = pair_row[bounds[g] : bounds[g + 1]]
            p0, p1 = pos_at[c], pos_at[c + 1]
            pos = (pos_row[p0:p1], pos_col[p0:p1] - lo)
            src = self.lists.codes(c) if self.integer else self.lists.block(c)
            step = max(1, SCORE_BUFFER // (hi - lo))
            for r0 in range(0, rows.size, step):
                self._push(xq, src, rows[r0 : r0 + step], lo, pos, top_d, top_i)
        if self.integer:
            top_d = np.where(top_d == _INT_EMPTY, np.float32(-np.inf), top_d.astype(np.float32))
        return top_d, top_i

    def _scores(self, n: int, dtype: type = np.float32) -> np.ndarray:
        """``n`` entries of the reused float32 (or int32) score buffer."""
        name = "buf" if dtype is np.float32 else "ibuf"
        if getattr(self, name).size < n:
            setattr(self, name, np.empty(max(n, SCORE_BUFFER), dtype=dtype))
        return getattr(self, name)[:n]

    def _queries(self, xq: np.ndarray, sub: np.ndarray) -> np.ndarray:
        """Rows ``sub`` of ``xq`` [n, w], gathered into the reused query buffer
        (a fresh array a visit costs fresh pages, slow to fault in on some
        machines)."""
        need = sub.size * xq.shape[1]
        if self.qbuf.size < need or self.qbuf.dtype != xq.dtype:
            self.qbuf = np.empty(max(need, self.qbuf.size), dtype=xq.dtype)
        out = self.qbuf[:need].reshape(sub.size, xq.shape[1])
        # "clip" (the rows are in range) writes straight into ``out``; "raise" buffers.
        np.take(xq, sub, axis=0, out=out, mode="clip")
        return out

    def _push(self, xq, src, sub, lo, pos, top_d, top_i) -> None:
        """Score queries ``sub`` against one cluster's rows ``src`` (layout
        positions from ``lo``), its positives ``pos`` (query rows, positions
        within the cluster) left out, into the queries' heaps."""
        shape = (sub.size, src.shape[0])
        if self.integer:
            scores = self._scores(shape[0] * shape[1], np.int32).reshape(shape)
            int_products(self._queries(xq, sub), src, scores)
        else:
            scores = self._scores(shape[0] * shape[1]).reshape(shape)
            matmul_into(self._queries(xq, sub), src, scores, self.products)
        if pos[0].size:
            self.local[sub] = np.arange(shape[0])
            hit_row = self.local[pos[0]]
            ok = hit_row >= 0
            scores[hit_row[ok], pos[1][ok]] = _INT_EMPTY if self.integer else -np.inf
            self.local[sub] = -1
        if self.fused is not None:
            self.fused(scores, np.ascontiguousarray(sub), top_d, top_i, lo)
            return
        # Once heaps are warm most rows hold no score above their smallest kept
        # one, and a row's maximum says so: those rows are left alone.
        live = _row_max(scores, self.integer) > top_d[sub, 0]
        if not live.all():
            live = np.flatnonzero(live)
            if live.size == 0:
                return
            sub, scores = sub[live], scores[live]
        dist, ids = top_d[sub], top_i[sub]
        (_admit_int if self.integer else _admit)(scores, dist, ids, lo)
        top_d[sub], top_i[sub] = dist, ids


def _row_max(scores: np.ndarray, integer: bool) -> np.ndarray:
    """Maximum of each row of ``scores`` [n, w] (int32 or float32): through torch
    over 8-bit lists (``integer``), whose products already use it (about 1.5x
    numpy's reduction on the machines measured), through numpy otherwise, so
    float32 lists never import torch. A maximum is exact either way."""
    if not integer:
        return scores.max(axis=1)
    import torch

    return torch.amax(torch.from_numpy(scores), dim=1).numpy()


def _admit(scores: np.ndarray, dist: np.ndarray, ids: np.ndarray, lo: int) -> None:
    """Push row ``i`` of ``scores`` float32 [n, w] (ids ``lo + j``) into heap
    row ``i`` of ``dist`` / ``ids``, exactly as FAISS's ``addn`` would.

    ``addn`` compares every score with its heap's smallest kept one, which only
    rises as it goes: a score not above the smallest *before* the call can never
    enter. Once the heaps are warm few scores are, so those are compacted (row
    by row, in column order) and pushed alone, which gives the same heaps,
    kept in the same order, for a fraction of the scalar work.
    """
    import faiss

    n, w = scores.shape
    keep = scores > dist[:, :1]  # column 0 of a min-heap row is its smallest
    cnt = np.add.reduce(keep.view(np.uint8), axis=1, dtype=np.int32)
    cold = 4 * cnt >= w  # rows where most scores may enter: the plain scan
    if cold.all():
        heap_over(dist, ids).addn(w, faiss.swig_ptr(np.ascontiguousarray(scores)), lo, 0, n)
        return
    if cold.any():
        dc, ic = dist[cold], ids[cold]
        sc = np.ascontiguousarray(scores[cold])
        heap_over(dc, ic).addn(w, faiss.swig_ptr(sc), lo, 0, dc.shape[0])
        dist[cold], ids[cold] = dc, ic
        warm = np.flatnonzero(~cold)
        keep = keep[warm]
        cnt[cold] = 0
    else:
        warm = None
    most = int(cnt.max())
    if most == 0:
        return
    # The scores that may enter, row by row in column order (row-major).
    flat = np.flatnonzero(keep)
    r = flat // w
    c = flat - r * w
    if warm is not None:
        r = warm[r]
    at = np.arange(r.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    vals = np.full((n, most), -np.inf, dtype=np.float32)
    cols = np.full((n, most), -1, dtype=np.int64)
    vals[r, at] = scores[r, c]
    cols[r, at] = c + lo
    heap_over(dist, ids).addn_with_ids(most, faiss.swig_ptr(vals), faiss.swig_ptr(cols), most, 0, n)


def _admit_int(scores: np.ndarray, dist: np.ndarray, ids: np.ndarray, lo: int) -> None:
    """Push row ``i`` of ``scores`` int32 [n, w] (ids ``lo + j``) into the
    integer heap row ``i`` of ``dist`` int32 / ``ids``: FAISS's ``addn`` over
    the rows as they are, which compares each score with its heap's smallest in
    one pass. Integer scores are exact as float32 (``|s| < 2**24``), so these
    are the heaps, ids and order, a float heap would keep.
    """
    import faiss

    n, w = scores.shape
    heap_over(dist, ids).addn(w, faiss.swig_ptr(np.ascontiguousarray(scores)), lo, 0, n)
