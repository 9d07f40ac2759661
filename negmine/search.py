"""Tier 3: the sources most similar to a question outside its cluster.

Two kernels, both returning ``(scores, ids)`` with ``-1`` ids where a row ran
out of eligible sources:

* :func:`exact_outside_cluster` — exact. Fixed blocks of queries (grouped by the
  cluster they must skip) times fixed chunks of sources through BLAS; the
  excluded cluster's columns and the question's positives are set to ``-inf``
  in the score block, and FAISS's C++ heap keeps the running top-k. No
  re-search is ever needed and the cost stays close to the bare matrix product.
* :func:`overfetch_outside_cluster` — for any FAISS index: search with a
  larger k, drop same-cluster and positive hits, and re-search only the rows
  that came up short with a larger k.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import ClusterLayout, PositiveSets, csr_expand

__all__ = ["QUERY_BLOCK", "SOURCE_CHUNK", "exact_outside_cluster", "overfetch_outside_cluster"]

#: Queries per matrix product. Fixed so that the arithmetic (and so any
#: near-tie) never depends on how the caller batches the work.
QUERY_BLOCK = 1024
#: Sources per matrix product.
SOURCE_CHUNK = 32768


def _new_heap(n: int, k: int):
    import faiss

    dist = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    heap = faiss.float_minheap_array_t()
    heap.nh = n
    heap.k = k
    heap.val = faiss.swig_ptr(dist)
    heap.ids = faiss.swig_ptr(ids)
    heap.heapify()
    return heap, dist, ids


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
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products outside each query's cluster.

    Parameters
    ----------
    vectors : float32 [S, d]
        L2-normalised sources, C-contiguous.
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

    Returns
    -------
    scores : float32 [M, k]
        Descending; ``-inf`` where fewer than ``k`` sources are eligible.
    ids : int64 [M, k]
        Source ids, ``-1`` where fewer than ``k`` are eligible.
    """
    import faiss

    n_q = query_rows.shape[0]
    n_s = vectors.shape[0]
    out_d = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_i = np.full((n_q, k), -1, dtype=np.int64)
    if k == 0 or n_q == 0:
        return out_d, out_i
    chunk = min(SOURCE_CHUNK, n_s)
    buf = np.empty(QUERY_BLOCK * chunk, dtype=np.float32)
    # The heap updates are light; FAISS's OpenMP threads would only fight the
    # BLAS threads of the matrix product for the two cores.
    n_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        _exact_blocks(vectors, queries, query_rows, query_cluster, query_question, layout,
                      positives, k, buf, chunk, out_d, out_i, progress)  # fmt: skip
    finally:
        faiss.omp_set_num_threads(n_threads)
    return out_d, out_i


def _exact_blocks(
    vectors, queries, query_rows, query_cluster, query_question, layout, positives, k, buf,
    chunk, out_d, out_i, progress,
) -> None:  # fmt: skip
    import faiss

    n_q = query_rows.shape[0]
    n_s = vectors.shape[0]
    for b0 in range(0, n_q, QUERY_BLOCK):
        b1 = min(b0 + QUERY_BLOCK, n_q)
        nb = b1 - b0
        xq = queries[query_rows[b0:b1]]
        cl = query_cluster[b0:b1]
        # Runs of equal cluster inside the block (one range to mask per run).
        brk = np.flatnonzero(np.diff(cl)) + 1
        run_start = np.concatenate([[0], brk])
        run_end = np.concatenate([brk, [nb]])
        run_members = [
            layout.order[layout.offsets[c] : layout.offsets[c + 1]] for c in cl[run_start]
        ]
        owner, pos = csr_expand(positives.offsets, query_question[b0:b1])
        pos_src = positives.sources[pos]
        heap, dist, ids = _new_heap(nb, k)
        for s0 in range(0, n_s, chunk):
            s1 = min(s0 + chunk, n_s)
            ns = s1 - s0
            scores = buf[: nb * ns].reshape(nb, ns)
            np.matmul(xq, vectors[s0:s1].T, out=scores)
            for r0, r1, members in zip(run_start, run_end, run_members, strict=True):
                lo, hi = np.searchsorted(members, [s0, s1])
                if hi > lo:
                    scores[r0:r1][:, members[lo:hi] - s0] = -np.inf
            in_chunk = (pos_src >= s0) & (pos_src < s1)
            scores[owner[in_chunk], pos_src[in_chunk] - s0] = -np.inf
            heap.addn(ns, faiss.swig_ptr(scores), s0, 0, nb)
        heap.reorder()
        out_d[b0:b1] = dist
        out_i[b0:b1] = ids
        if progress is not None:
            progress(nb)


def overfetch_outside_cluster(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    n_total: int,
    queries: np.ndarray,
    query_rows: np.ndarray,
    query_cluster: np.ndarray,
    query_question: np.ndarray,
    layout: ClusterLayout,
    positives: PositiveSets,
    k: int,
    first_k: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` outside each query's cluster through any k-NN ``search``.

    Searches ``first_k`` neighbours (default: ``k`` plus the positives and
    twice the mean cluster size), drops hits in the query's cluster and
    positives of its question, then re-searches only the rows still short with
    four times the k, until they are full or the whole index was returned.

    Parameters
    ----------
    search : callable ``(queries [n, d], k) -> (scores [n, k], ids [n, k])``
        Descending inner products; ids ``-1`` for missing results.
    n_total : int
        Vectors in the index (the largest useful k).
    queries, query_rows, query_cluster, query_question, layout, positives, k, progress
        As in :func:`exact_outside_cluster`.
    first_k : int, optional

    Returns
    -------
    scores : float32 [M, k]
    ids : int64 [M, k]
    """
    n_q = query_rows.shape[0]
    out_d = np.full((n_q, k), -np.inf, dtype=np.float32)
    out_i = np.full((n_q, k), -1, dtype=np.int64)
    if k == 0 or n_q == 0:
        return out_d, out_i
    n_pos = positives.counts()[query_question]
    if first_k is None:
        mean_size = n_total / max(layout.n_clusters, 1)
        first_k = k + int(n_pos.max()) + int(2 * mean_size)
    pos_keys = (
        np.repeat(np.arange(positives.offsets.size - 1), positives.counts()) * n_total
        + positives.sources
    )
    todo = np.arange(n_q)
    kk = min(first_k, n_total)
    while todo.size:
        done_rows = []
        for b0 in range(0, todo.size, QUERY_BLOCK):
            rows = todo[b0 : b0 + QUERY_BLOCK]
            d, ids = search(queries[query_rows[rows]], kk)
            ok = ids >= 0
            safe = np.where(ok, ids, 0)
            ok &= layout.source_cluster[safe] != query_cluster[rows, None]
            key = query_question[rows, None] * n_total + safe
            at = np.minimum(np.searchsorted(pos_keys, key), max(pos_keys.size - 1, 0))
            if pos_keys.size:
                ok &= pos_keys[at] != key
            # Keep the first k eligible hits per row, in search order.
            rank = np.cumsum(ok, axis=1) - 1
            keep = ok & (rank < k)
            r_idx, c_idx = np.nonzero(keep)
            out_i[rows[r_idx], rank[r_idx, c_idx]] = ids[r_idx, c_idx]
            out_d[rows[r_idx], rank[r_idx, c_idx]] = d[r_idx, c_idx]
            full = (ok.sum(axis=1) >= k) | (kk >= n_total)
            done_rows.append(rows[full])
            if progress is not None:
                progress(int(full.sum()))
        finished = np.concatenate(done_rows)
        todo = np.setdiff1d(todo, finished, assume_unique=True)
        kk = min(kk * 4, n_total)
    return out_d, out_i
