"""Bounds on tier-3 recall that tuning relies on.

* :func:`probe_bound`: over lists that are the user's clusters (or sub-lists
  of them), the highest recall@k any search probing ``nprobe`` lists can reach,
  from the exact hits' clusters; tuning never searches a setting whose bound is
  below its target.
* :func:`lower_bound`: a one-sided lower bound on the recall over all of a
  run's tier-3 queries, from the recall of each sampled one.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .plan import MiningPlan

__all__ = ["TUNING_CONFIDENCE", "lower_bound", "probe_bound"]

#: One-sided confidence with which a tuned setting's recall over all of the run's
#: tier-3 queries reaches the target, judged from the sample (:func:`lower_bound`).
TUNING_CONFIDENCE = 0.95
#: Slack on the centroid scores in :func:`probe_bound`: far above the rounding of
#: float32 products of unit vectors, so no cluster the search may probe is missed.
_RANK_SLACK = 1e-4
#: Elements of the comparison array :func:`probe_bound` builds per step.
_BOUND_STEP = 1 << 24


def probe_bound(
    plan: MiningPlan, queries: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
    exact_ids: np.ndarray, nprobes: list[int],
) -> np.ndarray | None:  # fmt: skip
    """The highest recall@k a search probing ``plan``'s clusters can reach at each ``nprobe``.

    A search over lists that are the user's clusters (the built-in probing, a
    ``"clusters"`` index of any storage) returns only sources of the clusters
    it probes: the ``nprobe`` whose centroids score highest against the query,
    its own cluster left out. An exact hit whose cluster has ``r`` other
    clusters scoring above it can be found only from ``nprobe > r``. ``r`` is
    counted with a slack of :data:`_RANK_SLACK` in the clusters' favour, so
    rounding in the search's own centroid products cannot make the bound too
    low, and re-ranking only keeps a subset of the candidates: no search of
    these lists can do better.

    Parameters
    ----------
    plan : MiningPlan
    queries : float32 [Q', d]
        L2-normalised question vectors.
    rows : int64 [M]
        Row of ``queries`` of each sampled query.
    cluster : int64 [M]
        Cluster each query skips.
    exact_ids : int64 [M, k]
        Exact top-k ids, ``-1`` padded (the reference recall is measured against).
    nprobes : list of int
        ``nprobe`` values to bound.

    Returns
    -------
    float64 [len(nprobes)] or None
        The bound at each ``nprobe``, measured like
        :func:`~negmine.search.probe.recall_at_k`; None when the search's lists
        are not the user's clusters (a FAISS index).
    """
    index = plan.index
    if index is not None and not index.is_clusters:
        return None
    n, k = exact_ids.shape
    if index is not None and index.sub_list_count is not None:
        ranks = _sub_list_ranks(plan, queries, rows, cluster, exact_ids)
        return _bound_at(ranks, exact_ids, nprobes)
    cent = np.asarray(plan.inputs.centroids, dtype=np.float32)
    n_c = cent.shape[0]
    ranks = np.zeros((n, k), dtype=np.int64)
    step = max(1, _BOUND_STEP // max(1, k * n_c))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        cs = queries[rows[r0:r1]] @ cent.T
        cs[np.arange(r1 - r0), cluster[r0:r1]] = -np.inf
        hit = plan.layout.source_cluster[np.maximum(exact_ids[r0:r1], 0)]
        floor = np.take_along_axis(cs, hit, axis=1) + np.float32(_RANK_SLACK)
        ranks[r0:r1] = (cs[:, None, :] > floor[:, :, None]).sum(axis=2)
    return _bound_at(ranks, exact_ids, nprobes)


def _sub_list_ranks(
    plan: MiningPlan, queries: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
    exact_ids: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """For each exact hit, the sub-lists scoring strictly above its own, as the
    search scores them (integer products, exact: no slack): it can be probed
    only from ``nprobe`` above that. int64 [M, k]; hits ``-1`` rank 0."""
    from .search.probe import quantize_queries, sub_list_scores

    lists = plan.backend.lists
    sub = lists.sub
    where = sub.layout(plan.layout).rank[np.maximum(exact_ids, 0)]
    hit = np.searchsorted(sub.offsets, where, side="right") - 1
    n, k = exact_ids.shape
    ranks = np.zeros((n, k), dtype=np.int64)
    step = max(1, _BOUND_STEP // max(1, k * sub.n_lists))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        xw = quantize_queries(queries[rows[r0:r1]], lists.step)
        sc = sub_list_scores(sub, xw, cluster[r0:r1])
        own = np.take_along_axis(sc, hit[r0:r1], axis=1)
        ranks[r0:r1] = (sc[:, None, :] > own[:, :, None]).sum(axis=2)
    return ranks


def _bound_at(ranks: np.ndarray, exact_ids: np.ndarray, nprobes: list[int]) -> np.ndarray:
    """Mean share of each row's exact hits whose rank is below each ``nprobe``."""
    valid = exact_ids >= 0
    n_valid = valid.sum(axis=1)
    keep = n_valid > 0
    if not keep.any():
        return np.full(len(nprobes), np.nan)
    out = [float(np.mean(((ranks < p) & valid).sum(axis=1)[keep] / n_valid[keep])) for p in nprobes]
    return np.asarray(out, dtype=np.float64)


def lower_bound(per_row: np.ndarray, population: int) -> float:
    """A one-sided :data:`TUNING_CONFIDENCE` lower bound on the mean recall of all
    ``population`` tier-3 queries, from the recall of each sampled one.

    The sample mean less ``z`` standard errors (normal approximation), the error
    shrunk by the finite-population factor ``sqrt((N - n) / (N - 1))``: a sample
    of every query has no sampling error, and its bound is its mean.

    Parameters
    ----------
    per_row : float64 [n]
        Recall of each sampled query (:func:`~negmine.search.probe.recall_per_row`).
    population : int
        Tier-3 queries the sample was drawn from, ``N >= n``.

    Returns
    -------
    float
        ``nan`` for an empty sample.
    """
    n = per_row.size
    if n == 0:
        return float("nan")
    mean = float(np.mean(per_row))
    if n < 2 or n >= population:
        return mean
    z = NormalDist().inv_cdf(TUNING_CONFIDENCE)
    se = float(np.std(per_row, ddof=1)) / math.sqrt(n)
    return mean - z * se * math.sqrt((population - n) / (population - 1))
