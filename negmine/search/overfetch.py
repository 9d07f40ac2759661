"""Tier 3 through any k-NN search: over-fetch, drop excluded hits, search again.

The generic back-end of FAISS indexes whose lists are not the user's clusters
(HNSW, IVF over its own k-means, PQ, ...). Same-cluster hits and positives are
dropped after the search; rows left short are searched again with a larger k.
Widening stops where it cannot help and is bounded in memory: what is left
short goes to the fallback tier and is counted as shortfall.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..layout import ClusterLayout, PositiveSets
from .common import QUERY_BLOCK, empty_result, max_depth

__all__ = ["overfetch_outside_cluster"]


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
    four times the k. A row stops widening when it is full, when the search
    returned fewer hits than asked (a wider search at the same settings
    reaches nothing new), or at the depth cap :func:`~negmine.search.common.max_depth`
    (results of one call stay within :data:`~negmine.search.common.RESULT_BYTES`);
    it is then left short (``-1``) for the fallback tier.

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
    out_d, out_i = empty_result(n_q, k)
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
    cap = max_depth(n_total)
    kk = min(first_k, cap)
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
            reached_all = (ids >= 0).sum(axis=1) < kk
            full = (ok.sum(axis=1) >= k) | reached_all | (kk >= cap)
            done_rows.append(rows[full])
            if progress is not None:
                progress(int(full.sum()))
        finished = np.concatenate(done_rows)
        todo = np.setdiff1d(todo, finished, assume_unique=True)
        kk = min(kk * 4, cap)
    return out_d, out_i
