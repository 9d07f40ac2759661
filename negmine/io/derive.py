"""Source clusters derived from the pairs (majority) or the nearest centroid."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .._checks import as_numpy, check_ids, fail

__all__ = ["DerivedClusters", "derive_source_clusters"]

# Nearest-centroid search: values per query chunk (at most 65536 rows, fewer
# for wide embeddings so a float64 chunk stays near 128 MB), neighbours asked
# for, and the cosine gap below which two centroids count as tied (float32
# round-off).
_SEARCH_CHUNK_VALUES = 1 << 24
_SEARCH_K = 8
_TIE_TOL = 1e-6


class DerivedClusters(NamedTuple):
    """Result of :func:`derive_source_clusters`.

    Attributes
    ----------
    source_cluster_ids : int64 [S]
        Cluster of each source.
    n_majority : int
        Sources placed by the majority cluster of their pairs.
    n_majority_ties : int
        Of those, sources whose top count was shared by several clusters.
    n_nearest : int
        Sources in no pair, placed by their nearest centroid.
    """

    source_cluster_ids: np.ndarray
    n_majority: int
    n_majority_ties: int
    n_nearest: int


def _nearest_centroids(
    source_embeddings: np.ndarray,
    centroid_embeddings: np.ndarray,
    ids: np.ndarray,
    names: Mapping[str, str],
) -> np.ndarray:
    """Nearest centroid by cosine for the sources ``ids``; ties to the smallest id."""
    import faiss

    n_c = centroid_embeddings.shape[0]
    cents = _unit_rows(centroid_embeddings, np.arange(n_c), names["centroid_embeddings"])
    index = faiss.IndexFlatIP(cents.shape[1])
    index.add(cents)
    k = min(_SEARCH_K, n_c)
    out = np.empty(ids.size, dtype=np.int64)
    step = min(65536, max(256, _SEARCH_CHUNK_VALUES // max(cents.shape[1], 1)))
    for start in range(0, ids.size, step):
        chunk = ids[start : start + step]
        q = _unit_rows(source_embeddings, chunk, names["source_embeddings"])
        scores, nbr = index.search(q, k)
        tied = scores >= scores[:, :1] - _TIE_TOL
        best = np.where(tied, nbr, np.iinfo(np.int64).max).min(axis=1)
        # A tie group that fills all k results may continue past them: score
        # those queries against every centroid.
        if k < n_c and tied[:, -1].any():
            rows = np.flatnonzero(tied[:, -1])
            s = q[rows] @ cents.T
            best[rows] = np.argmax(s >= s.max(axis=1, keepdims=True) - _TIE_TOL, axis=1)
        out[start : start + len(chunk)] = best
    return out


def _unit_rows(a: np.ndarray, rows: np.ndarray, name: str) -> np.ndarray:
    """Rows ``rows`` of ``a`` as float32 with unit norm; fail on zero or non-finite rows."""
    blk = np.asarray(a[rows], dtype=np.float64)
    if blk.ndim != 2:
        fail(name, "be a 2-D float array [n, d]", f"shape {list(np.shape(a))}")
    norms = np.linalg.norm(blk, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(rows[np.flatnonzero(bad)[0]])
        fail(
            name,
            "have finite, non-zero rows to find the nearest centroid by cosine",
            f"a zero or non-finite row {row}",
            "Drop or re-embed that row.",
        )
    return np.ascontiguousarray(blk / norms[:, None], dtype=np.float32)


def derive_source_clusters(
    source_embeddings: Any,
    centroid_embeddings: Any,
    pair_indices: Any,
    pair_cluster_ids: Any,
    *,
    names: Mapping[str, str] | None = None,
) -> DerivedClusters:
    """Assign every source a cluster from its pairs, or its nearest centroid.

    A source that appears in pairs gets the cluster most of those pairs carry
    (``pair_cluster_ids`` counted over the pairs whose source it is); a tie
    goes to the smallest cluster id. A source in no pair gets the centroid with
    the highest cosine similarity; cosines within 1e-6 of the best count as
    tied (float32 round-off) and a tie goes to the smallest cluster id.

    Parameters
    ----------
    source_embeddings : float [S, d]
        Only rows of sources in no pair are read; those must be finite and
        non-zero.
    centroid_embeddings : float [C, d]
        Finite, non-zero rows.
    pair_indices : int [P, 2]
        (question, source) pairs; sources in ``[0, S)``.
    pair_cluster_ids : int [P]
        Cluster of each pair, in ``[0, C)``.
    names : mapping, optional
        Names to use for the four arguments in error messages (for example the
        file names they were loaded from).

    Returns
    -------
    DerivedClusters
        ``source_cluster_ids`` int64 [S] plus counts of how each rule was used.

    Notes
    -----
    The pair counts take one sort of ``source * C + cluster`` keys
    (``O(P log P)``); the unpaired sources are searched with an exact FAISS
    inner-product index in row chunks. Memory stays ``O(P + S + C * d)``:
    nothing of size ``S x C`` is built.
    """
    nm = {k: k for k in _ARG_NAMES}
    if names:
        nm.update(names)
    src, cents, pair_src, pair_clu = _checked_args(
        source_embeddings, centroid_embeddings, pair_indices, pair_cluster_ids, nm
    )
    out, n_majority, n_ties = _majority_clusters(pair_src, pair_clu, src.shape[0], cents.shape[0])
    lonely = np.flatnonzero(out < 0)
    if lonely.size:
        if cents.shape[0] == 0:
            fail(
                nm["centroid_embeddings"],
                "have at least one row to place sources that are in no pair",
                f"shape {list(cents.shape)} with {lonely.size} such sources",
            )
        out[lonely] = _nearest_centroids(src, cents, lonely, nm)
    return DerivedClusters(out, n_majority, n_ties, int(lonely.size))


_ARG_NAMES = ("source_embeddings", "centroid_embeddings", "pair_indices", "pair_cluster_ids")


def _checked_args(
    source_embeddings: Any,
    centroid_embeddings: Any,
    pair_indices: Any,
    pair_cluster_ids: Any,
    nm: Mapping[str, str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sources, centroids, the source of each pair and its cluster, checked."""
    src = as_numpy(source_embeddings, nm["source_embeddings"])
    cents = as_numpy(centroid_embeddings, nm["centroid_embeddings"])
    for a, key in ((src, "source_embeddings"), (cents, "centroid_embeddings")):
        if a.ndim != 2:
            fail(nm[key], "be a 2-D float array [n, d]", f"shape {list(a.shape)}")
    n_s, n_c = src.shape[0], cents.shape[0]
    if cents.shape[1] != src.shape[1]:
        fail(
            nm["centroid_embeddings"],
            f"have width d={src.shape[1]} like `{nm['source_embeddings']}`",
            f"shape {list(cents.shape)}",
        )
    pairs = as_numpy(pair_indices, nm["pair_indices"])
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        fail(
            nm["pair_indices"], "have shape [P, 2] (question, source)", f"shape {list(pairs.shape)}"
        )
    pair_src = check_ids(
        pairs[:, 1],
        f"{nm['pair_indices']}[:, 1]",
        ndim=1,
        upper=n_s,
        upper_what=f"S = len({nm['source_embeddings']})",
    )
    pair_clu = check_ids(
        pair_cluster_ids,
        nm["pair_cluster_ids"],
        ndim=1,
        upper=n_c,
        upper_what=f"C = len({nm['centroid_embeddings']})",
    )
    if pair_clu.shape[0] != pair_src.shape[0]:
        fail(
            nm["pair_cluster_ids"],
            f"have one entry per pair (P = {pair_src.shape[0]})",
            f"length {pair_clu.shape[0]}",
        )
    return src, cents, pair_src, pair_clu


def _majority_clusters(
    pair_src: np.ndarray, pair_clu: np.ndarray, n_s: int, n_c: int
) -> tuple[np.ndarray, int, int]:
    """The majority cluster of each paired source (-1 for the others), and counts."""
    out = np.full(n_s, -1, dtype=np.int64)
    if not pair_src.size:
        return out, 0, 0
    keys, counts = np.unique(pair_src * n_c + pair_clu, return_counts=True)
    k_src = keys // n_c
    k_clu = keys - k_src * n_c
    # keys are sorted by (source, cluster); a stable sort by (source, -count)
    # keeps the smallest cluster first among equal counts.
    order = np.lexsort((-counts, k_src))
    s_sorted = k_src[order]
    first = np.ones(order.size, dtype=bool)
    first[1:] = s_sorted[1:] != s_sorted[:-1]
    win = order[first]
    out[k_src[win]] = k_clu[win]
    # A tie: the runner-up of a source (next in sorted order) has the same count.
    nxt = np.flatnonzero(first) + 1
    nxt = nxt[nxt < order.size]
    nxt = nxt[s_sorted[nxt] == s_sorted[nxt - 1]]
    n_ties = int(np.count_nonzero(counts[order[nxt]] == counts[order[nxt - 1]]))
    return out, int(win.size), n_ties
