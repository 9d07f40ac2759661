"""The cluster layout every sampler shares.

Sources sorted by cluster (``order``, ``offsets``: a CSR over clusters), the
positives of each question (a CSR over questions) and the adjacent-cluster
table. Built once per mining run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._checks import normalized_float32
from ._order import stable_order

__all__ = ["ClusterLayout", "PositiveSets", "adjacent_clusters", "csr_expand"]


def csr_expand(offsets: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand CSR rows ``keys`` into flat (owner, position) pairs.

    Parameters
    ----------
    offsets : int64 [K + 1]
        CSR offsets.
    keys : int64 [R]
        Which CSR row each of ``R`` owners reads.

    Returns
    -------
    owner : int64 [N]
        Index into ``keys`` (0..R-1) of each expanded element, non-decreasing.
    pos : int64 [N]
        Position in the CSR value array of each expanded element.
    """
    starts = offsets[keys]
    counts = offsets[keys + 1] - starts
    owner = np.repeat(np.arange(len(keys), dtype=np.int64), counts)
    if owner.size == 0:
        return owner, owner.copy()
    first = np.cumsum(counts) - counts
    pos = np.arange(owner.size, dtype=np.int64) - first[owner] + starts[owner]
    return owner, pos


def adjacent_clusters(centroid_embeddings: np.ndarray, adjacent_k: int) -> np.ndarray:
    """For each cluster, the ``adjacent_k`` clusters with the most similar centroids.

    Similarity is cosine, found with an exact FAISS inner-product index over the
    L2-normalised centroids. A cluster never lists itself, even when another
    centroid is identical to its own.

    Parameters
    ----------
    centroid_embeddings : float [C, d]
        Centroids, finite and non-zero (checked by the caller).
    adjacent_k : int
        Neighbours per cluster, >= 0.

    Returns
    -------
    numpy.ndarray of int64, shape [C, adjacent_k]
        Neighbour cluster ids, most similar first; ``-1`` pads rows when
        ``adjacent_k >= C``.
    """
    import faiss

    cents = normalized_float32(np.asarray(centroid_embeddings))
    n_c = cents.shape[0]
    out = np.full((n_c, adjacent_k), -1, dtype=np.int64)
    if adjacent_k == 0 or n_c < 2:
        return out
    k = min(adjacent_k + 1, n_c)
    index = faiss.IndexFlatIP(cents.shape[1])
    index.add(cents)
    _, nbr = index.search(cents, k)
    own = np.arange(n_c)[:, None]
    is_self = nbr == own
    # Drop the cluster itself; where a tie pushed it out of the top k+1, drop the last.
    no_self = ~is_self.any(axis=1)
    is_self[no_self, k - 1] = True
    keep = nbr[~is_self].reshape(n_c, k - 1)
    m = min(adjacent_k, k - 1)
    out[:, :m] = keep[:, :m]
    return out


@dataclass(frozen=True)
class PositiveSets:
    """Positive sources of each question as a CSR.

    Attributes
    ----------
    offsets : int64 [Q + 1]
    sources : int64 [nnz]
        Distinct positive source ids, sorted within each question.
    """

    offsets: np.ndarray
    sources: np.ndarray

    @classmethod
    def from_pairs(cls, pair_indices: np.ndarray, n_questions: int) -> PositiveSets:
        """Build from ``pair_indices`` int64 [P, 2] of (question, source)."""
        q = pair_indices[:, 0]
        s = pair_indices[:, 1]
        n_src = int(s.max()) + 1 if s.size else 1
        key = np.unique(q * n_src + s)
        uq = key // n_src
        us = key - uq * n_src
        counts = np.bincount(uq, minlength=n_questions)
        offsets = np.zeros(n_questions + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets=offsets, sources=us.astype(np.int64))

    def counts(self) -> np.ndarray:
        """Number of distinct positives per question, int64 [Q]."""
        return np.diff(self.offsets)


@dataclass(frozen=True)
class ClusterLayout:
    """Sources grouped by cluster.

    Attributes
    ----------
    order : int64 [S]
        Source ids sorted by cluster, ascending id within a cluster.
    offsets : int64 [C + 1]
        Cluster ``c`` holds ``order[offsets[c]:offsets[c + 1]]``.
    rank : int64 [S]
        Inverse of ``order``: the layout position of each source.
    source_cluster : int64 [S]
        Cluster of each source.
    adjacent : int64 [C, adjacent_k]
        Adjacent clusters, ``-1`` padded.
    """

    order: np.ndarray
    offsets: np.ndarray
    rank: np.ndarray
    source_cluster: np.ndarray
    adjacent: np.ndarray

    @classmethod
    def build(
        cls, source_cluster: np.ndarray, n_clusters: int, adjacent: np.ndarray
    ) -> ClusterLayout:
        """Build from cluster ids int64 [S] in [0, C) and an adjacent table."""
        order = stable_order(source_cluster)
        counts = np.bincount(source_cluster, minlength=n_clusters)
        offsets = np.zeros(n_clusters + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size, dtype=np.int64)
        return cls(order, offsets, rank, source_cluster, adjacent)

    @property
    def sizes(self) -> np.ndarray:
        """Sources per cluster, int64 [C]."""
        return np.diff(self.offsets)

    @property
    def n_sources(self) -> int:
        return int(self.order.size)

    @property
    def n_clusters(self) -> int:
        return int(self.offsets.size - 1)
