"""Tier-3 recall: the run's search against the exact search, same exclusions."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._checks import fail
from .blocks import tier3_ids
from .plan import MiningPlan
from .search.probe import recall_at_k
from .vectors import question_vectors

__all__ = ["check_recall", "measure_recall"]


def _even_sample(n: int, size: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(size, n)).astype(np.int64))


def measure_recall(plan: MiningPlan, t3_ids: np.ndarray) -> dict[str, Any] | None:
    """Recall of a run's tier-3 ids against exact search, on an even sample.

    Parameters
    ----------
    plan : MiningPlan
    t3_ids : int64 [M, n3]
        The run's tier-3 ids, one row per tier-3 query.

    Returns
    -------
    dict or None
        ``k``, ``sample``, ``recall`` and ``seconds``; None when the run's
        search is exact, tier 3 is empty or ``config.recall_sample`` is 0.
    """
    cfg = plan.config
    if not (cfg.recall_sample and cfg.tier_counts[2]):
        return None
    if cfg.nprobe is None and plan.index is None:
        return None
    t0 = time.perf_counter()
    pick = _even_sample(len(t3_ids), cfg.recall_sample)
    qq = plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    args = (qvec, rows, plan.t3_cluster[pick], qq)
    # A random draw from the window is measured on the window itself.
    whole = cfg.tier3_sampling == "random"
    approx = t3_ids[pick]
    if whole:
        approx, _, _ = tier3_ids(plan, *args, keep_window=True)
    exact, _, _ = tier3_ids(plan, *args, exact=True, keep_window=whole)
    return {
        "k": int(approx.shape[1]),
        "sample": int(pick.size),
        "recall": round(float(recall_at_k(approx, exact)), 4),
        "seconds": round(time.perf_counter() - t0, 4),
    }


def check_recall(plan: MiningPlan, sample: int = 2000, k: int | None = None) -> dict[str, Any]:
    """Measure tier-3 recall@k of the plan's search against exact search.

    Takes an even sample of the tier-3 queries (one per distinct question and
    pair cluster, as mining does) and searches them the way mining would and
    exactly, with the same exclusions (the pair's cluster, the question's
    positives); filters and windows are not applied.

    Parameters
    ----------
    plan : MiningPlan
    sample : int
        Queries to check, >= 1.
    k : int, optional
        Results per query; default the tier-3 count of the config.

    Returns
    -------
    dict
        ``recall``, ``k``, ``sample``, ``index`` (the search as recorded in
        mining stats), ``seconds_search`` and ``seconds_exact``.
    """
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
        fail("sample", "be a positive integer", repr(sample))
    k = plan.config.tier_counts[2] if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        fail("k", "be a positive integer", repr(k))
    pick = _even_sample(plan.n_tier3, int(sample))
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    t0 = time.perf_counter()
    _, got = plan.backend.search(qvec, rows, cl, qq, int(k))
    t1 = time.perf_counter()
    _, exact = plan.exact_reference(qvec, rows, cl, qq, int(k))
    t2 = time.perf_counter()
    return {
        "recall": round(float(recall_at_k(got, exact)), 4),
        "k": int(k),
        "sample": int(pick.size),
        "index": plan.describe_search(),
        "seconds_search": round(t1 - t0, 4),
        "seconds_exact": round(t2 - t1, 4),
    }
