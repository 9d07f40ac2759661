"""Sub-lists: each user cluster's sources split in smaller lists, for 8-bit cluster lists.

A search over lists that are whole clusters scans every source of each cluster
it probes. Clusters overlap, so reaching a recall target takes many of them:
on the 1M store bench, recall@3 0.95 probed 46 clusters, about 45,000 sources
per query. Cut each cluster into lists of a few hundred sources
(:func:`sublist_size`: about :data:`SUBLIST_BYTES` of codes each) by spherical
k-means within the cluster, and probe the lists whose own
centroids score highest: the same recall took about 11,000 sources over
lists of 250 (docs/benchmarks.md). A sub-list never mixes clusters, so leaving a query's
own cluster out is leaving out a contiguous range of lists.

:func:`split_clusters` computes the partition when an index is built
(``"clusters,fast"``); :class:`SubLists` is what a search reads back from the
index: the position of every source in sub-list order, the lists' bounds, the
cluster of each list and the lists' centroids as 8-bit codes, scored against
the quantized queries as the codes themselves are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._checks import normalized_float32, release_pages, take_rows

__all__ = ["SUBLIST_BYTES", "SUBLIST_SIZE", "SubLists", "split_clusters", "sublist_size"]

#: Bytes of 8-bit codes per sub-list aimed at by ``"clusters,fast"``: lists of
#: ``SUBLIST_BYTES / d`` sources (:func:`sublist_size`). Smaller lists scan
#: fewer sources at the same recall but add a fixed cost per (query, list) pair
#: and more centroids to score, and a row's products cost in proportion to
#: ``d``: what balances the two is a size in bytes. Tuned to recall@3 0.95 at
#: d = 384 (262,144 pairs of the 1M store bench), tier 3 took 28.7 s over
#: whole clusters, 23.8 s over lists of 256, 21.6 s of 384, 18.7-21.5 s of 512,
#: 18.6 s of 768 and 19.5 s of 1024; at d = 128 (about 60,000 pairs of the
#: 10M store bench), 19.1-22.5 s over whole clusters, 22.8 s over lists of 512
#: and 15.2-15.9 s over lists of 1536 (docs/benchmarks.md).
SUBLIST_BYTES = 512 * 384
#: Sources per sub-list at d = 384.
SUBLIST_SIZE = SUBLIST_BYTES // 384
#: Rounds of k-means within a cluster.
KMEANS_ITERATIONS = 10
#: Sources gathered from the embeddings at a time (whole clusters, in order).
_GATHER = 1 << 17


def sublist_size(d: int) -> int:
    """Sources per sub-list of ``"clusters,fast"`` at width ``d``: about
    :data:`SUBLIST_BYTES` of codes (512 at d = 384, 1536 at d = 128)."""
    return max(1, round(SUBLIST_BYTES / max(1, int(d))))


def split_clusters(
    src: Any, scl: np.ndarray, n_clusters: int, size: int = SUBLIST_SIZE, seed: int = 1234
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split each cluster into sub-lists of about ``size`` sources.

    Each cluster of ``n`` sources is cut by spherical k-means into
    ``max(1, round(n / size))`` parts (FAISS ``Kmeans``, seeded with ``seed``
    plus the cluster id); parts left empty are dropped. Sub-lists are numbered
    cluster by cluster, so those of cluster ``c`` are consecutive.

    Parameters
    ----------
    src : array-like, float [S, d]
        Raw source embeddings (normalised here, chunk by chunk).
    scl : int64 [S]
        Cluster of each source, in ``[0, n_clusters)``.
    n_clusters : int
    size : int
        Sources per sub-list aimed at, >= 1.
    seed : int

    Returns
    -------
    list_of_source : int64 [S]
        Sub-list of each source.
    per_cluster : int64 [C]
        Number of sub-lists of each cluster (0 for an empty cluster).
    centroids : float32 [G, d]
        L2-normalised mean of each sub-list's sources.
    """
    import faiss

    n, d = src.shape
    order = np.argsort(scl, kind="stable")
    bounds = np.zeros(n_clusters + 1, dtype=np.int64)
    np.cumsum(np.bincount(scl, minlength=n_clusters), out=bounds[1:])
    out = np.empty(n, dtype=np.int64)
    per_cluster = np.zeros(n_clusters, dtype=np.int64)
    cents: list[np.ndarray] = []
    next_id = 0
    c = 0
    while c < n_clusters:
        # Whole clusters c..c1-1, about _GATHER sources, read in id order.
        c1 = int(np.searchsorted(bounds, bounds[c] + _GATHER, side="right")) - 1
        c1 = min(max(c1, c + 1), n_clusters)
        ids = order[bounds[c] : bounds[c1]]
        rows = np.sort(ids)
        x = normalized_float32(take_rows(src, rows))
        x = x[np.searchsorted(rows, ids)]  # back to cluster order
        release_pages(src)
        for cc in range(c, c1):
            lo, hi = int(bounds[cc] - bounds[c]), int(bounds[cc + 1] - bounds[c])
            if hi == lo:
                continue
            xc = x[lo:hi]
            k = max(1, round((hi - lo) / size))
            if k == 1:
                part = np.zeros(hi - lo, dtype=np.int64)
            else:
                km = faiss.Kmeans(d, k, niter=KMEANS_ITERATIONS, seed=seed + cc,
                                  spherical=True, min_points_per_centroid=1,
                                  max_points_per_centroid=1 << 30)  # fmt: skip
                km.train(xc)
                _, part = km.index.search(xc, 1)
                part = part[:, 0].astype(np.int64)
            used, part = np.unique(part, return_inverse=True)  # empty parts dropped
            by = np.argsort(part, kind="stable")
            starts = np.searchsorted(part[by], np.arange(used.size))
            sums = np.add.reduceat(xc[by].astype(np.float64), starts, axis=0)
            cents.append(normalized_float32(sums.astype(np.float32)))
            out[ids[lo:hi]] = next_id + part
            per_cluster[cc] = used.size
            next_id += used.size
        c = c1
    centroids = np.concatenate(cents) if cents else np.zeros((0, d), dtype=np.float32)
    return out, per_cluster, centroids


@dataclass
class SubLists:
    """The sub-lists of an index, as a search reads them.

    Positions here are *sub-list positions*: sub-list ``g`` holds the
    positions ``offsets[g]:offsets[g + 1]``, each the source ``order[i]``.

    Attributes
    ----------
    offsets : int64 [G + 1]
    order : int64 [S]
        Source id at each position (by cluster, sub-list, then ascending id).
    first : int64 [C + 1]
        Cluster ``c`` owns the sub-lists ``first[c]:first[c + 1]``.
    codes : int8 [G, d]
        The sub-lists' centroids as 8-bit codes minus 128, in the lists' own
        quantizer (scored like sources: integer products with quantized queries).
    """

    offsets: np.ndarray
    order: np.ndarray
    first: np.ndarray
    codes: np.ndarray
    _layout: Any = field(default=None, repr=False)

    @property
    def n_lists(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def list_cluster(self) -> np.ndarray:
        """Cluster of each sub-list, int64 [G]."""
        return np.repeat(np.arange(self.first.size - 1, dtype=np.int64), np.diff(self.first))

    def layout(self, clusters: Any) -> Any:
        """A :class:`~negmine.layout.ClusterLayout` whose "clusters" are the sub-lists.

        ``clusters`` is the layout of the user's clusters (its source clusters
        and adjacency are kept). Built once.
        """
        if self._layout is None:
            from ..layout import ClusterLayout

            rank = np.empty_like(self.order)
            rank[self.order] = np.arange(self.order.size, dtype=np.int64)
            self._layout = ClusterLayout(self.order, self.offsets, rank, clusters.source_cluster,
                                         clusters.adjacent)  # fmt: skip
        return self._layout
