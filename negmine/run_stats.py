"""The statistics of a mining run (the ``stats`` of its manifest)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .blocks import PAIR_COUNTS
from .config import TIER_NAMES
from .executor import MinedBlocks
from .filters import COLUMN
from .plan import MiningPlan
from .stats import histogram, summarize

__all__ = ["StageClock", "run_stats"]


def _tier_stats(plan: MiningPlan, mined: MinedBlocks, short: dict[str, int]) -> dict[str, Any]:
    n_p = mined.tiers.shape[0]
    counts = np.bincount(mined.tiers.reshape(-1), minlength=5)[1:]
    per_tier = {}
    for t in range(1, 5):
        sel = mined.tiers == t
        to_q, to_p = mined.scores[sel], mined.pos_neg[sel]
        cq = summarize(to_q)
        per_tier[str(t)] = {
            "name": TIER_NAMES[t],
            "requested": int(plan.config.tier_counts[t - 1] * n_p),
            "count": int(counts[t - 1]),
            "mean_cosine": cq["mean"],
            "fallback": int(short[f"fallback{t}"]),
            "cosine_question": cq,
            "cosine_positive": summarize(to_p),
            "hist_question": histogram(to_q),
            "hist_positive": histogram(to_p),
        }
    return per_tier


def _filter_stats(plan: MiningPlan, mined: MinedBlocks, short: dict[str, int]) -> dict[str, Any]:
    filters = {}
    for name, value in plan.config.filters.items():
        col = COLUMN[name]
        removed = {"1": 0, "2": 0, "3": int(mined.filters[0, col]), "4": 0}
        shortfall = int(mined.filters[1, col])
        if name == "near_duplicate_threshold":
            for t in ("1", "2", "4"):
                removed[t] = int(short[f"near_dup{t}"])
            shortfall += int(short["near_dup_short"])
        filters[name] = {"value": value, "removed": removed, "shortfall": shortfall}
    return filters


def run_stats(
    plan: MiningPlan,
    mined: MinedBlocks,
    timings: dict[str, float],
    recall: dict[str, Any] | None,
    validation_ok: bool | None,
    executor: dict[str, Any],
    cpu: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The run's statistics.

    Per tier: counts, the slots of its quota another tier filled
    (``fallback``), summaries and histograms of each negative's cosine to the
    question and to the pair's source; the cosine of each pair's question to
    its source; per active filter the candidates it removed in each tier and
    the slots it sent to a fallback tier; the search, its measured recall, the
    timings (wall and, given ``cpu``, this process's CPU seconds over all its
    threads, keyed as ``timings``) and which workers computed which blocks.
    """
    from .assemble import SHORT_KEYS

    short = dict(zip(PAIR_COUNTS, mined.short.tolist(), strict=True))
    inp = plan.inputs
    return {
        "n_pairs": inp.n_pairs,
        "n_sources": inp.n_sources,
        "n_questions": inp.n_questions,
        "n_clusters": inp.n_clusters,
        "tier3_queries": plan.n_tier3,
        "tiers": _tier_stats(plan, mined, short),
        "positive_cosine": {**summarize(mined.pos), "hist": histogram(mined.pos)},
        "filters": _filter_stats(plan, mined, short),
        "shortfalls": {k: int(short[k]) for k in SHORT_KEYS},
        "timings_seconds": {k: round(v, 4) for k, v in timings.items()},
        "cpu_seconds": {k: round(v, 4) for k, v in (cpu or {}).items()},
        "index": plan.describe_search(),
        "tier3_recall": recall,
        "validation_ok": validation_ok,
        "executor": executor,
    }


class StageClock:
    """Wall and CPU seconds of the consecutive stages of a run.

    CPU seconds are this process's, all its threads together
    (:func:`time.process_time`), so CPU over wall says how many cores a stage
    kept busy. ``lap(name)`` closes the stage that began at the last lap (or at
    construction); ``finish()`` adds ``total``.
    """

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._start = self._last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall[name] = now[0] - self._last[0]
        self.cpu[name] = now[1] - self._last[1]
        self._last = now

    def finish(self) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall["total"] = now[0] - self._start[0]
        self.cpu["total"] = now[1] - self._start[1]
