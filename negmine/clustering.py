"""Clusters for users who have none: spherical FAISS k-means over the sources.

Mining needs a cluster for every source and every pair (tiers 1 and 2 draw from
the pair's cluster and its neighbours; tier 3 searches outside it). When the
data come without clusters, :func:`cluster_sources` groups the sources with
spherical k-means (FAISS, cosine geometry, seeded) and :func:`pair_clusters`
gives each pair the cluster of its positive source.

The default number of clusters, :func:`default_n_clusters`, comes from
measurements on a real text corpus (``examples/st_compare/n_clusters.py``; the
figures are in ``docs/sentence-transformers.md``): about one cluster per
:data:`SOURCES_PER_CLUSTER` sources keeps tier 1 and tier 2 draws from
clusters of several dozen related texts, and keeps the cost of the exact
tier-3 search flat (it skips only the pair's own cluster).
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import numpy as np

from ._checks import as_numpy, check_embeddings, check_ids, fail, normalized_float32

__all__ = [
    "MAX_DEFAULT_CLUSTERS",
    "SOURCES_PER_CLUSTER",
    "Clusters",
    "cluster_sources",
    "default_n_clusters",
    "pair_clusters",
    "resolve_n_clusters",
]

log = logging.getLogger(__name__)

#: Sources per cluster the default aims at (see :func:`default_n_clusters`).
SOURCES_PER_CLUSTER = 64
#: The default never exceeds this many clusters.
MAX_DEFAULT_CLUSTERS = 65536
#: k-means iterations.
KMEANS_NITER = 20


class Clusters(NamedTuple):
    """A clustering of the sources.

    Attributes
    ----------
    centroid_embeddings : float32 [C, d]
        Unit-norm centroids; every cluster holds at least one source.
    source_cluster_ids : int64 [S]
        Cluster of each source (its nearest centroid by cosine).
    info : dict
        ``n_clusters`` (C), ``requested`` (the number asked for), ``seed``,
        ``niter``, ``method`` and ``empty_dropped`` (clusters k-means left
        empty, removed and renumbered).
    """

    centroid_embeddings: np.ndarray
    source_cluster_ids: np.ndarray
    info: dict[str, Any]


def default_n_clusters(n_sources: int) -> int:
    """The default number of clusters for ``n_sources`` sources.

    ``ceil(n_sources / SOURCES_PER_CLUSTER)``, but at least
    ``min(4, n_sources // 2)`` (a small corpus still gets a few clusters of two
    texts or more) and at most :data:`MAX_DEFAULT_CLUSTERS`.

    Parameters
    ----------
    n_sources : int
        Number of distinct sources S >= 1.

    Returns
    -------
    int
    """
    if isinstance(n_sources, bool) or not isinstance(n_sources, (int, np.integer)):
        fail("n_sources", "be an integer", repr(n_sources), exc=TypeError)
    if n_sources < 1:
        fail("n_sources", "be at least 1", n_sources)
    n = int(n_sources)
    c = max(math.ceil(n / SOURCES_PER_CLUSTER), min(4, n // 2))
    return max(1, min(c, MAX_DEFAULT_CLUSTERS))


def resolve_n_clusters(n_clusters: Any, n_sources: int) -> int:
    """``n_clusters`` as an int: ``"auto"``/``None`` gives :func:`default_n_clusters`."""
    if n_clusters is None or (isinstance(n_clusters, str) and n_clusters == "auto"):
        return default_n_clusters(n_sources)
    if isinstance(n_clusters, str):
        try:
            n_clusters = int(n_clusters)
        except ValueError:
            fail("n_clusters", "be 'auto' or a positive integer", repr(n_clusters))
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        fail("n_clusters", "be 'auto' or a positive integer", repr(n_clusters), exc=TypeError)
    if not 1 <= n_clusters <= n_sources:
        fail(
            "n_clusters",
            f"lie in [1, S] with S = {n_sources} distinct sources",
            n_clusters,
            "Use 'auto' or fewer clusters.",
        )
    return int(n_clusters)


def cluster_sources(
    source_embeddings: Any, n_clusters: Any = "auto", *, seed: int = 42, niter: int = KMEANS_NITER
) -> Clusters:
    """Spherical k-means (FAISS) over the sources, seeded.

    Parameters
    ----------
    source_embeddings : float [S, d]
        numpy array or torch tensor; normalised here.
    n_clusters : int or "auto"
        Clusters asked for; ``"auto"`` uses :func:`default_n_clusters`.
    seed : int
        k-means seed (initial centroids and sub-sampling).
    niter : int
        k-means iterations.

    Returns
    -------
    Clusters
        Unit-norm centroids float32 [C, d] and cluster ids int64 [S]. Clusters
        that end empty are dropped, so C may be below ``n_clusters``.
    """
    import faiss

    src = normalized_float32(check_embeddings(source_embeddings, "source_embeddings"))
    n_s, d = src.shape
    k = resolve_n_clusters(n_clusters, n_s)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        fail("seed", "be an integer", repr(seed), exc=TypeError)
    if k == 1:
        cen = src.mean(axis=0, keepdims=True)
    else:
        km = faiss.Kmeans(
            d,
            k,
            niter=int(niter),
            seed=int(seed),
            spherical=True,
            verbose=False,
            min_points_per_centroid=1,
            max_points_per_centroid=256,
        )
        km.train(src)
        cen = np.asarray(km.centroids, dtype=np.float32)
    cen = normalized_float32(cen)
    ids = _nearest(src, cen)
    used = np.unique(ids)
    if used.size < cen.shape[0]:
        remap = np.full(cen.shape[0], -1, dtype=np.int64)
        remap[used] = np.arange(used.size)
        cen, ids = cen[used], remap[ids]
    info = {
        "method": "spherical k-means (faiss)",
        "n_clusters": int(cen.shape[0]),
        "requested": "auto" if n_clusters is None or n_clusters == "auto" else k,
        "k": k,
        "seed": int(seed),
        "niter": int(niter),
        "empty_dropped": int(k - cen.shape[0]),
    }
    log.info("clustered %d sources into %d clusters (seed %d)", n_s, cen.shape[0], seed)
    return Clusters(np.ascontiguousarray(cen), ids.astype(np.int64), info)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid by inner product (exact), int64 [len(x)]; ties to the lower id."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    out = np.empty(x.shape[0], dtype=np.int64)
    step = 16384  # fixed query blocks: the same arithmetic whatever S
    for a in range(0, x.shape[0], step):
        _, i = index.search(x[a : a + step], 1)
        out[a : a + step] = i[:, 0]
    return out


def pair_clusters(pair_indices: Any, source_cluster_ids: Any) -> np.ndarray:
    """The cluster of each pair: the cluster of its positive source.

    Parameters
    ----------
    pair_indices : int [P, 2]
        (question, source) pairs.
    source_cluster_ids : int [S]

    Returns
    -------
    int64 [P]
    """
    scl = as_numpy(source_cluster_ids, "source_cluster_ids")
    pairs = as_numpy(pair_indices, "pair_indices")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        fail("pair_indices", "have shape [P, 2] (question, source)", f"shape {list(pairs.shape)}")
    src = check_ids(
        pairs[:, 1],
        "pair_indices[:, 1]",
        ndim=1,
        upper=scl.shape[0],
        upper_what="S = len(source_cluster_ids)",
    )
    return np.asarray(scl, dtype=np.int64)[src]
