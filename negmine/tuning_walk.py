"""How tuning walks its ladder of search settings.

:func:`negmine.tuning.tune` measures settings one at a time; these functions
choose which to measure next: :func:`walk_reranked` walks ``nprobe`` at the
deepest re-rank of reduced or 8-bit lists, and :func:`refine_nprobe` searches
the ``nprobe`` values between a ladder's steps (and shallower re-ranks) for the
smallest setting that still reaches the target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .plan import MiningPlan

__all__ = ["PLATEAU", "refine_nprobe", "walk_reranked"]

#: Least gain in recall over two ``nprobe`` steps for tuning reduced lists to go on.
PLATEAU = 0.001


def refine_nprobe(
    found: tuple[MiningPlan, float], ladder: list[int], target: float,
    measure: Callable[[dict[str, int]], tuple[MiningPlan, float]],
    bounds: dict[int, float], skipped: list[dict[str, Any]],
    reranks: tuple[int, ...] | None = None,
) -> tuple[MiningPlan, float]:  # fmt: skip
    """``found`` (the first setting of the ladder to reach ``target``) at the
    smallest ``nprobe`` between the ladder's step below it and its own that
    still reaches ``target``, its other settings kept; with re-rank depths
    ``reranks`` (``found`` at the deepest, from :func:`walk_reranked`), the
    ``nprobe`` is searched at the deepest and then the shallowest depth that
    reaches ``target`` there is kept.

    The ladder's steps are about sqrt 2 apart, so its choice may probe up to
    ~1.4x the clusters needed. Recall grows with ``nprobe`` (a larger one
    probes a superset of the clusters; with lossy codes a new candidate can,
    rarely, push a hit out of the re-rank), so the values in between are
    searched from the bottom, 1, 2, 4, ... values on, then by bisection: the
    step below missed the target (searched, or ruled out by its bound), the
    found one reached it. Values whose bound (``bounds``) is below
    ``target`` are not searched; they are added to ``skipped``. The result was
    measured to reach ``target``, like every choice of :func:`negmine.tuning.tune`.
    """
    settings = found[0].search_params()
    hi = settings.get("nprobe")
    if hi is None:
        return found
    lo = max((p for p in ladder if p < hi), default=0)
    between = []
    for p in range(lo + 1, hi):
        if p in bounds and bounds[p] < target:
            skipped.append({"nprobe": p, "bound": round(bounds[p], 4)})
        else:
            between.append(p)
    skipped.sort(key=lambda s: s["nprobe"])
    best, a, b = found, 0, len(between)  # between[:a] miss; between[b] (or hi) reaches
    # The step below just missed, so the answer tends to lie near the bottom:
    # gallop up from it (1, 2, 4, ... values on), then bisect the last gap.
    reach = 1
    while a < b:
        at = min(a + reach, b) - 1
        got = measure(dict(settings, nprobe=between[at]))
        if got[1] >= target:
            best, b = got, at
            break
        a, reach = at + 1, 2 * reach
    while a < b:
        mid = (a + b) // 2
        got = measure(dict(settings, nprobe=between[mid]))
        if got[1] >= target:
            best, b = got, mid
        else:
            a = mid + 1
    if reranks is None:
        return best
    at = best[0].search_params()["nprobe"]
    for r in reranks[:-1]:  # shallower depths at the nprobe found
        got = measure(dict(settings, nprobe=at, rerank=r))
        if got[1] >= target:
            return got
    return best


def walk_reranked(
    steps: list[dict[str, int]], target: float,
    measure: Callable[[dict[str, int]], tuple[MiningPlan, float]], ladder: tuple[int, ...],
) -> tuple[MiningPlan, float] | None:  # fmt: skip
    """The first ``nprobe`` of ``steps`` at which reduced or 8-bit lists reach
    ``target`` at their deepest re-rank of ``ladder``, searched at that depth.

    A shallower re-rank keeps a subset of a deeper one's candidates, so its
    recall is no higher: each ``nprobe`` is tried at the deepest re-rank only,
    and :func:`refine_nprobe` then tries the shallower depths at the ``nprobe``
    it settles on, which gives :func:`negmine.tuning.search_ladder`'s order (``nprobe``, then
    ``rerank``) with fewer searches. The walk gives
    up once the deepest re-rank's recall has gained less than :data:`PLATEAU`
    over two ``nprobe`` steps (about a doubling) while still short of the target:
    the candidate pass, not the probing, then bounds it.
    """
    deep = ladder[-1]
    seen: list[float] = []
    for nprobe in dict.fromkeys(s["nprobe"] for s in steps):
        cand, recall = measure({"nprobe": nprobe, "rerank": deep})
        if recall >= target:
            return cand, recall
        seen.append(recall)
        if len(seen) >= 3 and seen[-1] - seen[-3] < PLATEAU:
            return None
    return None
