"""Approximate tier 3: search only the clusters nearest each question.

:func:`probe_outside_cluster` treats the cluster layout as an inverted file:
each query probes the ``nprobe`` clusters whose centroids are most similar to
it (never its own cluster) and gets the exact top-``k`` over the sources of
those clusters, minus its question's positives. Work per block of queries is
inverted: each probed cluster is visited once, with one matrix product of the
queries probing it against the cluster's contiguous slice of the
cluster-sorted sources, so the cost scales with ``nprobe / C`` of the exact
kernel's. Each query keeps one running top-``k`` heap across its clusters,
fed its nearest cluster first; once a heap is warm, a row whose maximum is not
above its smallest kept score is skipped whole, and of the others only the
scores above it are pushed (:func:`_admit`). With ``project`` the lists
hold reduced (PCA) rows and the products are ``m``-wide
(:mod:`negmine.index.reduce`). Over 8-bit lists (``ClusterLists.codes``) the
queries are quantized too (:mod:`negmine.search.codes`) and the products are
torch's int8 x int8 ones, summed exactly in int32: about four times the
float32 rate here, and the same bytes whatever the thread count or blocking.

:func:`recall_at_k` measures how much of an exact result an approximate one
recovers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..index.lists import ClusterLists
from ..layout import ClusterLayout, PositiveSets, csr_expand
from .codes import int_products, quantize_queries
from .common import faiss_single_threaded, heap_over, run_query_blocks
from .products import matmul_into, product_threads

__all__ = ["INTEGER_BLOCK", "PROBE_BLOCK", "SCORE_BUFFER", "ClusterLists",
           "probe_outside_cluster", "quantize_queries", "recall_at_k"]  # fmt: skip

#: Queries per block. Fixed so that which queries share a matrix product (and so
#: any near-tie) never depends on how the caller batches the work.
PROBE_BLOCK = 4096
#: Queries per block over 8-bit codes. Integer products are exact and the probe
#: sets are still chosen :data:`PROBE_BLOCK` rows at a time, so which queries
#: share a block cannot change a result; a larger block spreads each cluster's
#: fixed cost (a call, a heap update) over four times the queries.
INTEGER_BLOCK = 4 * PROBE_BLOCK
#: BLAS threads of the kernel's products, whatever the machine's count: the
#: products are small (the queries probing one cluster times its sources), and
#: OpenBLAS rounds them differently with another number of threads, which can
#: flip a near-tie. Fixed, the result depends on the CPU type only.
PROBE_BLAS_THREADS = 2
#: Below every integer score (``|s| < 2**24``): an empty heap's ``-inf`` as an integer floor.
_INT_FLOOR = -(1 << 30)
#: Floats in the reusable score buffer of one cluster's matrix product; larger
#: products are split by query rows.
SCORE_BUFFER = 1 << 22


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
    out_d = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_i = np.full((n_q, k), -1, dtype=np.int64)
    n_probe = min(nprobe, n_c - 1)
    if k == 0 or n_q == 0 or n_probe < 1:
        if progress is not None and n_q:
            progress(n_q)
        return out_d, out_i
    if not isinstance(vectors, ClusterLists):
        vectors = ClusterLists.from_sorted(vectors, layout.offsets)
    kernel = _ProbeKernel(vectors, centroids, layout, positives, k, n_probe, project)
    kernel.products = products
    if kernel.integer:
        products = "torch"  # 8-bit codes: torch's integer products (exact, any thread count)
    with faiss_single_threaded(), product_threads(products, PROBE_BLAS_THREADS):
        block = INTEGER_BLOCK if kernel.integer else PROBE_BLOCK
        run_query_blocks(kernel.run, block, queries, query_rows, query_cluster,
                         query_question, out_d, out_i, progress)  # fmt: skip
    return out_d, out_i


class _ProbeKernel:
    """One block of queries against the sources of their probed clusters."""

    def __init__(self, lists, centroids, layout, positives, k, nprobe, project=None):
        self.lists = lists
        self.project = project
        self.centroids = centroids
        self.layout = layout
        self.positives = positives
        self.k = k
        self.nprobe = nprobe
        self.buf = np.empty(0, dtype=np.float32)
        self.cand_d = np.empty(0, dtype=np.float32)
        self.cand_i = np.empty(0, dtype=np.int64)
        self.local = np.empty(0, dtype=np.int64)
        self.products = "numpy"
        self.integer = project is None and lists.codes is not None
        self.ibuf = np.empty(0, dtype=np.int32)

    def _scores(self, n: int, dtype: type = np.float32) -> np.ndarray:
        """``n`` entries of the reused float32 (or int32) score buffer."""
        name = "buf" if dtype is np.float32 else "ibuf"
        if getattr(self, name).size < n:
            setattr(self, name, np.empty(max(n, SCORE_BUFFER), dtype=dtype))
        return getattr(self, name)[:n]

    def _push(self, xq, src, sub, lo, pos, top_d, top_i) -> None:
        """Score queries ``sub`` of the block against one cluster's rows ``src``
        (layout positions from ``lo``), its positives ``pos`` (block rows,
        positions within the cluster) left out, into the queries' heaps."""
        shape = (sub.size, src.shape[0])
        if self.integer:  # compared as int32; cast below, only the rows that may enter
            scores = self._scores(shape[0] * shape[1], np.int32).reshape(shape)
            int_products(xq[sub], src, scores)
        else:
            scores = self._scores(shape[0] * shape[1]).reshape(shape)
            matmul_into(xq[sub], src, scores, self.products)
        if pos[0].size:
            if self.integer:  # a positive's -inf needs floats
                ints, scores = scores, self._scores(scores.size).reshape(shape)
                scores[...] = ints
            self.local[sub] = np.arange(shape[0])
            hit_row = self.local[pos[0]]
            ok = hit_row >= 0
            scores[hit_row[ok], pos[1][ok]] = -np.inf
            self.local[sub] = -1
        # Once heaps are warm most rows hold no score above their smallest kept
        # one, and a row's maximum says so: those rows are left alone.
        live = scores.max(axis=1) > top_d[sub, 0]
        if not live.all():
            live = np.flatnonzero(live)
            if live.size == 0:
                return
            sub, scores = sub[live], scores[live]
        dist, ids = top_d[sub], top_i[sub]
        _admit(scores, dist, ids, lo)
        top_d[sub], top_i[sub] = dist, ids

    def run(self, xq, cl, qq):
        lay = self.layout
        nb = xq.shape[0]
        k, n_probe = self.k, self.nprobe
        n_c = self.centroids.shape[0]
        # Probe sets: products with the centroids, PROBE_BLOCK rows at a time
        # whatever the block (a row's rounding may depend on its product's
        # rows); own cluster never chosen.
        cs = np.empty((nb, n_c), dtype=np.float32)
        for r0 in range(0, nb, PROBE_BLOCK):
            cs[r0 : r0 + PROBE_BLOCK] = xq[r0 : r0 + PROBE_BLOCK] @ self.centroids.T
        cs[np.arange(nb), cl] = -np.inf
        probes = _probe_sets(cs, n_probe)
        if self.project is not None:
            xq = xq @ self.project.T
        if self.integer:
            xq = quantize_queries(xq, self.lists.step)
        # Invert: (row, slot) pairs grouped by probed cluster, in two rounds: each
        # query's nearest cluster first, so its heap is warm (and admits few
        # scores) when its other clusters come.
        nearest = np.argmax(cs, axis=1)
        later = probes != nearest[:, None]
        flat_c = (probes + later * n_c).reshape(-1)
        by_c = np.argsort(flat_c, kind="stable")
        pair_row = by_c // n_probe
        bounds = np.zeros(2 * n_c + 1, dtype=np.int64)
        np.cumsum(np.bincount(flat_c, minlength=2 * n_c), out=bounds[1:])
        # Positives of the block, as layout positions grouped by their cluster.
        owner, at = csr_expand(self.positives.offsets, qq)
        pos_src = self.positives.sources[at]
        pos_col = lay.rank[pos_src]
        by_pc = np.argsort(pos_col, kind="stable")
        pos_col = pos_col[by_pc]
        pos_row = owner[by_pc]
        # One running top-k heap per query (layout positions) across its clusters:
        # a source enters only if it beats the query's k-th best so far.
        size = nb * k
        if self.cand_d.size < size:
            self.cand_d = np.empty(size, dtype=np.float32)
            self.cand_i = np.empty(size, dtype=np.int64)
        top_d = self.cand_d[:size].reshape(nb, k)
        top_i = self.cand_i[:size].reshape(nb, k)
        top_d.fill(-np.inf)
        top_i.fill(-1)
        if self.local.size < nb:
            self.local = np.full(nb, -1, dtype=np.int64)
        for g in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            c = g % n_c
            lo, hi = int(lay.offsets[c]), int(lay.offsets[c + 1])
            if hi == lo:
                continue
            rows = pair_row[bounds[g] : bounds[g + 1]]
            p0, p1 = np.searchsorted(pos_col, [lo, hi])
            pos = (pos_row[p0:p1], pos_col[p0:p1] - lo)
            src = self.lists.codes(c) if self.integer else self.lists.block(c)
            step = max(1, SCORE_BUFFER // (hi - lo))
            for r0 in range(0, rows.size, step):
                self._push(xq, src, rows[r0 : r0 + step], lo, pos, top_d, top_i)
        flat_i = np.where(top_i < 0, -1, lay.order[np.maximum(top_i, 0)])
        # Descending score, ties (and the -inf padding) by ascending id, -1 last.
        id_key = np.where(flat_i >= 0, flat_i, np.iinfo(np.int64).max)
        order = np.lexsort((id_key, -top_d), axis=-1)
        return (
            np.take_along_axis(top_d, order, axis=1),
            np.take_along_axis(flat_i, order, axis=1),
        )


def _admit(scores: np.ndarray, dist: np.ndarray, ids: np.ndarray, lo: int) -> None:
    """Push row ``i`` of ``scores`` [n, w] (ids ``lo + j``) into heap row ``i``
    of ``dist`` / ``ids``, exactly as FAISS's ``addn`` would with those scores
    as float32.

    ``addn`` compares every score with its heap's smallest kept one, which only
    rises as it goes: a score not above the smallest *before* the call can never
    enter. Once the heaps are warm few scores are, so those are compacted (row
    by row, in column order) and pushed alone, which gives the same heaps,
    kept in the same order, for a fraction of the scalar work. Integer scores
    (int32, ``|s| < 2**24``, so exact as float32) are compared as integers and
    cast only where they are pushed.
    """
    import faiss

    n, w = scores.shape
    floor = dist[:, :1]  # column 0 of a min-heap row is its smallest
    if scores.dtype != np.float32:  # s > t <=> s > floor(t) for an integer s
        floor = np.maximum(np.floor(floor), _INT_FLOOR).astype(scores.dtype)
    keep = scores > floor
    cnt = np.add.reduce(keep.view(np.uint8), axis=1, dtype=np.int32)
    cold = 4 * cnt >= w  # rows where most scores may enter: the plain scan
    if cold.all():
        sc = np.ascontiguousarray(scores, dtype=np.float32)
        heap_over(dist, ids).addn(w, faiss.swig_ptr(sc), lo, 0, n)
        return
    if cold.any():
        dc, ic = dist[cold], ids[cold]
        sc = np.ascontiguousarray(scores[cold], dtype=np.float32)
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


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean fraction of each row's exact ids that the approximate row recovers.

    Parameters
    ----------
    approx_ids : int64 [M, k_a]
        Approximate result ids, ``-1`` padded.
    exact_ids : int64 [M, k]
        Exact result ids, ``-1`` padded; ids within a row are distinct.

    Returns
    -------
    float
        Mean over rows with at least one valid exact id of
        ``|approx ∩ exact| / |valid exact ids|``; ``nan`` when no row has one.
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
    if not rows.any():
        return float("nan")
    return float(np.mean(found[rows] / valid[rows]))
