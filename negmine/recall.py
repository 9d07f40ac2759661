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

__all__ = ["check_recall", "held_out_sample", "measure_recall"]


def _even_sample(n: int, size: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(size, n)).astype(np.int64))


def held_out_sample(plan: MiningPlan, size: int) -> np.ndarray:
    """``size`` tier-3 queries (fewer when the run has too few), evenly spread
    over those outside the sample tuning searches (:func:`negmine.tuning.tune`)
    and the even sample of ``size``.

    Returns int64 [m], ascending positions in the plan's tier-3 queries.
    """
    from .tuning import TUNING_SAMPLE

    n = plan.n_tier3
    seen = np.union1d(_even_sample(n, plan.config.recall_sample or TUNING_SAMPLE),
                      _even_sample(n, size))  # fmt: skip
    free = np.setdiff1d(np.arange(n, dtype=np.int64), seen, assume_unique=True)
    return free[_even_sample(free.size, size)] if free.size else free


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


def check_recall(
    plan: MiningPlan, sample: int = 2000, k: int | None = None, held_out: bool = False
) -> dict[str, Any]:
    """Measure tier-3 recall@k of the plan's search against exact search.

    Takes an even sample of the tier-3 queries (one per distinct question and
    pair cluster, as mining does) and searches them the way mining would and
    exactly, with the same exclusions (the pair's cluster, the question's
    positives); filters and windows are not applied.

    A tuned search reached its target on the sample tuning measured, which is
    also the even sample checked here when the sizes agree: its recall there
    is at least the target by construction. ``held_out=True`` checks queries
    tuning never searched instead (:func:`held_out_sample`), an unbiased
    estimate of the recall of the whole run.

    Parameters
    ----------
    plan : MiningPlan
    sample : int
        Queries to check, >= 1.
    k : int, optional
        Results per query; default the tier-3 count of the config.
    held_out : bool
        Check queries outside the tuning's sample.

    Returns
    -------
    dict
        ``recall``, ``k``, ``sample`` (queries checked), ``held_out``,
        ``index`` (the search as recorded in mining stats), ``seconds_search``
        and ``seconds_exact``.

    Raises
    ------
    ValueError
        When ``held_out`` leaves no query (the run has too few tier-3 queries).
    """
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
        fail("sample", "be a positive integer", repr(sample))
    k = plan.config.tier_counts[2] if k is None else k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        fail("k", "be a positive integer", repr(k))
    if not isinstance(held_out, (bool, np.bool_)):
        fail("held_out", "be True or False", repr(held_out))
    size = int(sample)
    pick = held_out_sample(plan, size) if held_out else _even_sample(plan.n_tier3, size)
    if pick.size == 0:
        fail("held_out", "leave queries to check", f"True with {plan.n_tier3} tier-3 queries, "
             "all of them in the tuning's sample", "Check with held_out=False.")  # fmt: skip
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
        "held_out": bool(held_out),
        "index": plan.describe_search(),
        "seconds_search": round(t1 - t0, 4),
        "seconds_exact": round(t2 - t1, 4),
    }
