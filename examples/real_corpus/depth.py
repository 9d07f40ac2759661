"""How many clusters tier 3 must probe: exact tier-3 hits and the rank of the cluster holding each.

Tier 3 of a query (a question and its pair's cluster) is the top ``k`` sources by
cosine outside that cluster, the question's positives excluded. The probed
search ranks the other clusters by the inner product of the question with their
unit centroids and searches only the ``nprobe`` first, exactly. An exact hit is
therefore found at ``nprobe`` exactly when its cluster ranks ``<= nprobe``, so
one exact search and one rank per hit give recall@k at every ``nprobe`` at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from negmine.layout import PositiveSets, csr_expand

#: Queries per block of the exact search ([block, S] float32 scores).
BLOCK = 1024
#: The ``nprobe`` values tables show (about sqrt(2) apart), cut at ``C - 1``.
LADDER = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 90, 128, 181, 256, 362, 512, 724, 1024)
#: Recall targets for which the needed ``nprobe`` is reported.
TARGETS = (0.90, 0.95, 0.98)
#: The other centroids whose cosine to the question is reported (1st, 10th, 64th nearest).
CENTROID_RANKS = (1, 10, 64)


@dataclass
class Depth:
    """Tier-3 probe depth of one corpus and clustering.

    Attributes
    ----------
    hit_rank : int64 [M, k]
        Rank (1 = nearest) of the cluster holding each exact tier-3 hit among the
        query's other clusters, by inner product with the unit centroids.
    own_share : float
        Share of each question's exact top-``k`` over all sources (positives
        excluded) that lies in its own cluster.
    centroid_cos : dict of str to float
        Mean cosine of the question to its own unit centroid (``"own"``) and to
        its 1st/10th/64th nearest other one (``"1"``, ``"10"``, ``"64"``).
    sizes : int64 [C]
        Sources per cluster.
    extra : dict of str to float
        Other counts (``"queries"``: tier-3 queries measured).
    """

    hit_rank: np.ndarray
    own_share: float
    centroid_cos: dict[str, float]
    sizes: np.ndarray
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.sizes.size)

    def recall(self, nprobe: int) -> float:
        """Tier-3 recall@k when the ``nprobe`` nearest other clusters are searched."""
        return float((self.hit_rank <= nprobe).mean())

    def needed(self, target: float) -> int:
        """Smallest ``nprobe`` whose recall@k is at least ``target``."""
        r = np.sort(self.hit_rank, axis=None)
        return int(r[max(0, math.ceil(target * r.size) - 1)])

    def rank_percentiles(self) -> tuple[float, float, float]:
        """Median, 90th and 95th percentile of :attr:`hit_rank`."""
        p = np.percentile(self.hit_rank, (50, 90, 95), method="inverted_cdf")
        return float(p[0]), float(p[1]), float(p[2])

    def size_skew(self) -> float:
        """Largest cluster over the median cluster size."""
        return float(self.sizes.max() / max(1.0, float(np.median(self.sizes))))


def tier3_queries(pairs: np.ndarray, pair_cluster: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (question, pair cluster) queries, as mining makes them.

    Parameters
    ----------
    pairs : int64 [P, 2]
        (question, source) pairs.
    pair_cluster : int64 [P]
        Cluster of each pair.

    Returns
    -------
    question : int64 [M]
    cluster : int64 [M]
    """
    key = np.unique(np.stack([pairs[:, 0], pair_cluster], axis=1), axis=0)
    return key[:, 0].astype(np.int64), key[:, 1].astype(np.int64)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` largest scores per row, descending."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _cluster_rank(cs: np.ndarray, hit_cluster: np.ndarray) -> np.ndarray:
    """Rank (1-based, ties to the lower id) of ``hit_cluster`` [B, k] in rows of ``cs`` [B, C]."""
    v = np.take_along_axis(cs, hit_cluster, axis=1)[:, :, None]
    row = cs[:, None, :]
    lower = np.arange(cs.shape[1])[None, None, :] < hit_cluster[:, :, None]
    return 1 + (row > v).sum(axis=2) + ((row == v) & lower).sum(axis=2)


def exact_tier3(
    src: np.ndarray,
    qry: np.ndarray,
    pairs: np.ndarray,
    src_cluster: np.ndarray,
    query_q: np.ndarray,
    query_c: np.ndarray,
    k: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact tier-3 ids, and each question's top ``k`` over all sources, by brute force.

    Parameters
    ----------
    src : float32 [S, d]
        Unit source embeddings.
    qry : float32 [Q, d]
        Unit question embeddings.
    pairs : int64 [P, 2]
        (question, source) pairs; every positive of a question is excluded.
    src_cluster : int64 [S]
    query_q, query_c : int64 [M]
        Question and cluster of each query.
    k : int

    Returns
    -------
    tier3 : int64 [M, k]
        Top ``k`` sources outside the query's cluster, descending cosine.
    anywhere : int64 [M, k]
        Top ``k`` sources, own cluster included.
    """
    pos = PositiveSets.from_pairs(pairs, qry.shape[0])
    m = query_q.size
    tier3 = np.empty((m, k), np.int64)
    anywhere = np.empty((m, k), np.int64)
    for b0 in range(0, m, BLOCK):
        qq, cl = query_q[b0 : b0 + BLOCK], query_c[b0 : b0 + BLOCK]
        scores = qry[qq] @ src.T
        owner, at = csr_expand(pos.offsets, qq)
        scores[owner, pos.sources[at]] = -np.inf
        anywhere[b0 : b0 + qq.size] = _top(scores, k)
        scores[src_cluster[None, :] == cl[:, None]] = -np.inf
        tier3[b0 : b0 + qq.size] = _top(scores, k)
    return tier3, anywhere


def probe_depth(
    src: np.ndarray,
    qry: np.ndarray,
    pairs: np.ndarray,
    pair_cluster: np.ndarray,
    src_cluster: np.ndarray,
    centroids: np.ndarray,
    k: int = 3,
    sample: int | None = None,
) -> Depth:
    """Measure how deep tier 3 must probe on one corpus and clustering.

    Parameters
    ----------
    src : float32 [S, d]
        Unit source embeddings.
    qry : float32 [Q, d]
        Unit question embeddings.
    pairs : int64 [P, 2]
    pair_cluster : int64 [P]
        Cluster of each pair (the one its tier 3 skips).
    src_cluster : int64 [S]
        Cluster of each source, in ``[0, C)``.
    centroids : float32 [C, d]
        Cluster centroids (normalised here).
    k : int
        Tier-3 results per query.
    sample : int, optional
        Measure an even sample of this many queries instead of all.

    Returns
    -------
    Depth
    """
    cent = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    n_c = cent.shape[0]
    query_q, query_c = tier3_queries(pairs, pair_cluster)
    if sample is not None and sample < query_q.size:
        pick = np.unique(np.linspace(0, query_q.size - 1, sample).astype(np.int64))
        query_q, query_c = query_q[pick], query_c[pick]
    tier3, anywhere = exact_tier3(src, qry, pairs, src_cluster, query_q, query_c, k)
    ranks = np.empty_like(tier3)
    picks = [r for r in CENTROID_RANKS if r <= n_c - 1]
    cos_sum = np.zeros(1 + len(picks))
    for b0 in range(0, query_q.size, BLOCK):
        sl = slice(b0, b0 + BLOCK)
        qv, cl = qry[query_q[sl]], query_c[sl]
        cs = qv @ cent.T
        rows = np.arange(cl.size)
        cos_sum[0] += float(cs[rows, cl].sum())
        cs[rows, cl] = -np.inf
        ranks[sl] = _cluster_rank(cs, src_cluster[tier3[sl]])
        desc = -np.sort(-cs, axis=1)
        cos_sum[1:] += desc[:, [r - 1 for r in picks]].sum(axis=0)
    cos = cos_sum / query_q.size
    own = src_cluster[anywhere] == query_c[:, None]
    return Depth(
        hit_rank=ranks,
        own_share=float(own.mean()),
        centroid_cos={
            "own": float(cos[0]),
            **dict(zip(map(str, picks), cos[1:].tolist(), strict=True)),
        },
        sizes=np.bincount(src_cluster, minlength=n_c),
        extra={"queries": float(query_q.size)},
    )


def library_recall(
    src: np.ndarray,
    qry: np.ndarray,
    pairs: np.ndarray,
    pair_cluster: np.ndarray,
    src_cluster: np.ndarray,
    centroids: np.ndarray,
    nprobe: int,
    k: int = 3,
) -> float:
    """Tier-3 recall@k of negmine's own probed search at ``nprobe``, against :func:`exact_tier3`.

    A check of the rank shortcut of :func:`probe_depth`: the two must agree
    (up to exact ties).
    """
    from negmine.layout import ClusterLayout
    from negmine.search.probe import probe_outside_cluster, recall_at_k

    cent = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    n_c = cent.shape[0]
    query_q, query_c = tier3_queries(pairs, pair_cluster)
    exact, _ = exact_tier3(src, qry, pairs, src_cluster, query_q, query_c, k)
    layout = ClusterLayout.build(src_cluster, n_c, np.full((n_c, 1), -1, np.int64))
    pos = PositiveSets.from_pairs(pairs, qry.shape[0])
    _, got = probe_outside_cluster(
        np.ascontiguousarray(src[layout.order]), cent.astype(np.float32), qry,
        query_q, query_c, query_q, layout, pos, k, nprobe,
    )  # fmt: skip
    return float(recall_at_k(got, exact))
