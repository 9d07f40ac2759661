"""Search settings tuned to a tier-3 recall target.

An approximate tier 3 is never run at settings whose recall nobody measured.
Given a target recall ``R``, :func:`tune` searches an even sample of the
run's tier-3 queries (the pair's cluster and the question's positives
excluded, as mining does) at a ladder of settings, cheapest first, and keeps
the first whose recall@k against exact search reaches ``R`` over all queries
with :data:`TUNING_CONFIDENCE` (a lower bound from the sample, see
:func:`~negmine.recall_bounds.lower_bound`):

* ``nprobe`` (``1, 2, 3, 4, 6, 8, 11, 16, ...``, steps of about sqrt 2, up to
  every list) for a ``"clusters"`` index,
  the built-in probing over the user's clusters and a FAISS IVF index;
* ``ef_search`` (``16, 32, ...`` up to :data:`EF_SEARCH_MAX`, or the index's
  size) for an HNSW index;
* then, where the index stores lossy codes (SQ, PQ, fp16), ``rerank``
  doubled up to :data:`RERANK_MAX` at the deepest of the above;
* for reduced lists (``"clusters,PCA<m>"``), whose candidate pass is cheap but
  coarse, each ``nprobe`` at the re-rank depths of :data:`REDUCED_LADDER`, and
  for 8-bit lists (``"clusters,SQ8"``, ``"clusters,fast"``), whose integer
  candidate pass is nearly exact, at those of :data:`CODES_LADDER` (walked
  deepest first, see :func:`~negmine.tuning_walk.walk_reranked`, and given up when recall stops
  growing with ``nprobe``).

The exact reference is computed once and reused for every setting. Over 8-bit
lists the searches of the ladder are answered from one scan of the sample
(:mod:`negmine.search.prefix`: each (query, list) pair is scored once, however
many settings are tried), and the setting chosen is searched once more by the
search itself, whose measurement is the one kept. Over lists
that are the user's clusters, a search at ``nprobe`` can only return sources of
the clusters it probes, so the exact hits' clusters bound its recall from above
(:func:`probe_bound`): the settings whose bound is below the target are never
searched, which leaves the choice as it was and skips the cheap end of the
ladder. Once a ladder step of ``nprobe`` reaches the target, the values between
it and the step below are searched, from the bottom up and then by bisection
(:func:`~negmine.tuning_walk.refine_nprobe`, again passing over those whose bound is short), so
the chosen ``nprobe`` is the smallest that reaches the target, not the next
step of about sqrt 2. A target
no setting of the ladder reaches is an error naming the best recall and its
settings; there is no silent fallback. :func:`tune_plan` is the miner's entry
point: it tunes when ``target_recall`` is set, and to
:data:`DEFAULT_TARGET_RECALL` when an approximate index comes without search
settings.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NoReturn

import numpy as np

from ._checks import fail
from .plan import CODES_RERANK, COMPRESSED_RERANK, REDUCED_RERANK, MiningPlan
from .recall import _even_sample
from .recall_bounds import TUNING_CONFIDENCE, lower_bound, probe_bound
from .search.backends import ProbeBackend
from .search.prefix import PrefixSearch
from .search.probe import recall_per_row
from .tuning_walk import PLATEAU, refine_nprobe, walk_reranked
from .vectors import question_vectors

__all__ = [
    "CODES_LADDER",
    "DEFAULT_TARGET_RECALL",
    "EF_SEARCH_MAX",
    "PLATEAU",
    "REDUCED_LADDER",
    "RERANK_MAX",
    "TUNING_SAMPLE",
    "probe_bound",
    "search_ladder",
    "tune",
    "tune_plan",
    "tuning_target",
]

log = logging.getLogger(__name__)

#: The recall@k an approximate index given no search settings is tuned to.
DEFAULT_TARGET_RECALL = 0.95
#: Tier-3 queries sampled for tuning when ``recall_sample`` is 0.
TUNING_SAMPLE = 1000
#: The deepest ``ef_search`` tried for an HNSW index.
EF_SEARCH_MAX = 4096
#: The deepest ``rerank`` tried for an index with lossy codes.
RERANK_MAX = 32
#: Re-rank depths tried at each ``nprobe`` of reduced lists.
REDUCED_LADDER = (REDUCED_RERANK, 2 * REDUCED_RERANK, 4 * REDUCED_RERANK)
#: Re-rank depths tried at each ``nprobe`` of 8-bit cluster lists.
CODES_LADDER = (1, CODES_RERANK, 2 * CODES_RERANK)
_SETTINGS = ("nprobe", "ef_search", "rerank")


def _nprobes(hi: int) -> list[int]:
    """``nprobe`` values ``1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, ...`` (steps of
    about sqrt 2, so the chosen one costs at most ~1.4x the cheapest that would
    do) below ``hi``, then ``hi``."""
    out: list[int] = []
    i = 0
    while (v := round(2 ** (i / 2))) < hi:
        if not out or v > out[-1]:
            out.append(v)
        i += 1
    return [*out, hi]


def _doubling(lo: int, hi: int) -> list[int]:
    """``lo, 2 lo, 4 lo, ...`` below ``hi``, then ``hi``."""
    out, v = [], lo
    while v < hi:
        out.append(v)
        v *= 2
    return [*out, hi]


def _faiss_knobs(plan: MiningPlan) -> tuple[str | None, int, bool]:
    """The primary setting of a FAISS index, its largest useful value and
    whether the index's scores are lossy (codes rather than float32)."""
    import faiss

    index = plan.index.index
    ivf = faiss.try_extract_index_ivf(index)
    top = faiss.downcast_index(index)
    if ivf is not None:
        exact_scores = isinstance(top, faiss.IndexIVFFlat)
        return "nprobe", int(ivf.nlist), not exact_scores
    if isinstance(top, faiss.IndexHNSW):
        ef_max = min(EF_SEARCH_MAX, max(16, int(index.ntotal)))
        return "ef_search", ef_max, not isinstance(top, faiss.IndexHNSWFlat)
    return None, 0, True


def rerank_ladder(plan: MiningPlan) -> tuple[int, ...] | None:
    """The re-rank depths tried at every ``nprobe`` of ``plan``'s cluster lists
    (reduced or 8-bit), or None where ``rerank`` is not tuned that way."""
    index = plan.index
    if index is None or not index.is_clusters:
        return None
    if index.reduction is not None:
        return REDUCED_LADDER
    return CODES_LADDER if index.manifest["clusters"]["codec"] == "SQ8" else None


def search_ladder(plan: MiningPlan) -> list[dict[str, int]]:
    """The settings :func:`tune` tries for ``plan``, cheapest first.

    Parameters
    ----------
    plan : MiningPlan
        A plan whose search is approximate, or the built-in search (no index).

    Returns
    -------
    list of dict
        Each the search settings to apply (``nprobe``, ``ef_search``, ``rerank``).
    """
    index, n_c = plan.index, plan.inputs.n_clusters
    if index is None or index.is_clusters:
        subs = None if index is None else index.sub_list_count
        steps = [{"nprobe": v} for v in _nprobes(max(1, n_c - 1) if subs is None else subs)]
        if index is None or index.manifest["clusters"]["codec"] == "Flat":
            return steps
        ladder = rerank_ladder(plan)
        if ladder is not None:
            return [dict(s, rerank=r) for s in steps for r in ladder]
        reranks = [r for r in _doubling(COMPRESSED_RERANK, RERANK_MAX) if r > COMPRESSED_RERANK]
        return steps + [dict(steps[-1], rerank=r) for r in reranks]
    knob, top, lossy = _faiss_knobs(plan)
    steps = (
        []
        if knob is None
        else [{knob: v} for v in (_doubling(16, top) if knob == "ef_search" else _nprobes(top))]
    )
    if lossy:
        last = steps[-1] if steps else {}
        steps += [dict(last, rerank=r) for r in _doubling(2, RERANK_MAX)]
    return steps or [{}]


def tuning_target(plan: MiningPlan) -> tuple[float | None, bool]:
    """The recall target ``plan`` is tuned to, and whether it is the default.

    ``config.target_recall`` when set (None for a flat index: exact search
    meets any target); :data:`DEFAULT_TARGET_RECALL` for an approximate index
    given no search settings; None otherwise (explicit settings are used as
    given, the built-in search without ``nprobe`` is exact).
    """
    cfg, index = plan.config, plan.index
    if cfg.tier_counts[2] == 0 or plan.n_tier3 == 0:
        return None, False
    if index is not None and index.is_exact:
        return None, False
    if cfg.target_recall is not None:
        return cfg.target_recall, False
    if index is None or any(getattr(cfg, n) is not None for n in _SETTINGS):
        return None, False
    return DEFAULT_TARGET_RECALL, True


def tune(
    plan: MiningPlan, target: float, *, sample: int | None = None, k: int | None = None,
    default: bool = False,
) -> tuple[MiningPlan, dict[str, Any]]:  # fmt: skip
    """The cheapest settings of :func:`search_ladder` whose recall@k reaches ``target``.

    A setting reaches ``target`` when the :data:`TUNING_CONFIDENCE` lower bound
    of its recall over all of the run's tier-3 queries, from the sample
    (:func:`~negmine.recall_bounds.lower_bound`), does: the sample's own recall is then a little
    above the target unless the sample holds every query.

    Parameters
    ----------
    plan : MiningPlan
        Without search settings (``nprobe``, ``ef_search``, ``rerank`` unset).
    target : float
        Recall@k to reach, in (0, 1].
    sample : int, optional
        Tier-3 queries searched (an even sample); default ``config.recall_sample``
        when set, else :data:`TUNING_SAMPLE`.
    k : int, optional
        Depth of the recall; default the end of the tier-3 rank window
        (``n3`` without one), the depth mining reads.
    default : bool
        Whether ``target`` is the default one (recorded, and named in errors).

    Returns
    -------
    plan : MiningPlan
        ``plan`` at the chosen settings (``target_recall`` cleared).
    tuning : dict
        ``target``, ``default``, ``k``, ``sample``, ``settings`` (the search
        settings in force), ``recall`` (on the sample), ``recall_lower`` (its
        lower bound over all queries) and ``confidence``, ``seconds`` (all of
        the tuning), ``seconds_exact`` (the exact search of the sample),
        ``tried`` (each setting tried, in the order searched, with its recall,
        lower bound, search seconds and ``merged``: whether it was answered
        from one scan of the sample, :class:`~negmine.search.prefix.PrefixSearch`;
        the choice is then searched once more by the search itself, last) and
        ``skipped`` (each ``nprobe`` not searched because its
        :func:`probe_bound` is below ``target``, with that bound, ascending).

    Raises
    ------
    ValueError
        When no setting of the ladder reaches ``target``, naming the best
        recall, its settings and the ways out.
    """
    t0 = time.perf_counter()
    cfg = plan.config
    k = int(cfg.window[1] if k is None else k)
    size = int(sample or cfg.recall_sample or TUNING_SAMPLE)
    pick = _even_sample(plan.n_tier3, size)
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    _, exact = plan.exact_reference(qvec, rows, cl, qq, k)
    t_exact = time.perf_counter() - t0
    tried: list[dict[str, Any]] = []
    steps, skipped, bounds = _within_bound(plan, target, probe_bound_args=(qvec, rows, cl, exact))

    ladder = rerank_ladder(plan)
    prefix = _prefix_search(plan, ladder, (qvec, rows, cl, qq), k)

    def measure(step: dict[str, int]) -> tuple[MiningPlan, float]:
        """Search the sample at ``step``: the plan and the recall's lower bound."""
        t1 = time.perf_counter()
        cand = plan.with_search(target_recall=None, **step)
        b = cand.backend
        merged = prefix is not None and prefix.covers(b.nprobe, b.rerank or 1, k)
        if merged:
            _, got = prefix.search(b.nprobe, b.rerank or 1, k)
        else:
            _, got = b.search(qvec, rows, cl, qq, k)
        per_row = recall_per_row(got, exact)
        recall = float(np.mean(per_row)) if per_row.size else float("nan")
        low = lower_bound(per_row, plan.n_tier3)
        tried.append({"settings": cand.search_params(), "recall": round(recall, 4),
                      "lower": round(low, 4), "merged": merged,
                      "seconds": round(time.perf_counter() - t1, 4)})  # fmt: skip
        return cand, low

    def choose() -> MiningPlan:
        if ladder is not None:
            found = walk_reranked(steps, target, measure, ladder)
        else:
            found = next((c for c in map(measure, steps) if c[1] >= target), None)
        if found is None:
            _unreachable(plan, target, default, k, int(pick.size), tried, skipped)
        ladder_nprobes = [s["nprobe"] for s in search_ladder(plan) if "nprobe" in s]
        return refine_nprobe(found, ladder_nprobes, target, measure, bounds, skipped, ladder)[0]

    cand = choose()
    if prefix is not None:
        # The choice came from merged candidates: measure it with the search
        # itself. Should a tie at a cut have tipped it (not seen so far), the
        # ladder is walked again with the search itself.
        prefix = None
        if measure(cand.search_params())[1] < target:
            cand = choose()
            once = {s["nprobe"]: s for s in skipped}
            skipped[:] = [once[p] for p in sorted(once)]
    chosen = next(t for t in reversed(tried) if t["settings"] == cand.search_params())
    return cand, {
        "target": target, "default": default, "k": k, "sample": int(pick.size),
        "settings": cand.search_params(), "recall": chosen["recall"],
        "recall_lower": chosen["lower"], "confidence": TUNING_CONFIDENCE,
        "seconds": round(time.perf_counter() - t0, 4),
        "seconds_exact": round(t_exact, 4), "tried": tried, "skipped": skipped,
    }  # fmt: skip


def _prefix_search(
    plan: MiningPlan, ladder: tuple[int, ...] | None, sample: tuple[np.ndarray, ...], k: int
) -> PrefixSearch | None:
    """Tuning's searches over 8-bit lists as selections from one scan of the
    sample (:class:`~negmine.search.prefix.PrefixSearch`); None for other indexes."""
    backend = plan.backend
    if not isinstance(backend, ProbeBackend) or backend.lists.codes is None:
        return None
    if backend.project is not None or ladder is None or k < 1:
        return None
    qvec, rows, cl, qq = sample
    return PrefixSearch(backend, qvec, rows, cl, qq, depth=k * max(ladder))


def _within_bound(
    plan: MiningPlan, target: float, probe_bound_args: tuple[np.ndarray, ...]
) -> tuple[list[dict[str, int]], list[dict[str, Any]], dict[int, float]]:
    """:func:`search_ladder`'s settings but those whose :func:`probe_bound` is
    below ``target``, the ``nprobe`` values left out, each with its bound, and
    the bound at every ``nprobe`` from 1 to the ladder's last (empty when there
    is none: a FAISS index)."""
    steps = search_ladder(plan)
    nprobes = list(dict.fromkeys(s["nprobe"] for s in steps if "nprobe" in s))
    every = list(range(1, max(nprobes) + 1)) if nprobes else []
    bound = probe_bound(plan, *probe_bound_args, every)
    bounds = {} if bound is None else {p: float(b) for p, b in zip(every, bound, strict=True)}
    skipped = [{"nprobe": p, "bound": round(bounds[p], 4)} for p in nprobes
               if p in bounds and bounds[p] < target]  # fmt: skip
    short = {s["nprobe"] for s in skipped}
    return [s for s in steps if s.get("nprobe") not in short], skipped, bounds


def _unreachable(plan, target, default, k, n, tried, skipped) -> NoReturn:
    best = max(tried, key=lambda t: t["recall"])
    at = ", ".join(f"{a}={b}" for a, b in best["settings"].items()) or "its stored settings"
    tops = ", ".join(f"{a}={b}" for a, b in tried[-1]["settings"].items()) or "none"
    what = plan.describe_search().get("factory", "the built-in search")
    why = " (the default, as the index came without search settings)" if default else ""
    ruled = f"; {len(skipped)} smaller nprobe ruled out by their bound" if skipped else ""
    low = best["lower"]
    sure = (f" ({low:.4f} or more over all queries at {TUNING_CONFIDENCE:.0%} confidence; "
            "a larger recall_sample narrows that)") if low < best["recall"] else ""  # fmt: skip
    fail(
        "target_recall",
        f"be reachable within the search settings of this index ({what}: tried "
        f"{len(tried)} settings up to {tops}{ruled})",
        f"{target}{why}; the best tier-3 recall@{k} on {n} sampled queries was "
        f"{best['recall']:.4f}, at {at}{sure}",
        "Lower target_recall, pass explicit settings to use them as they are, or use an "
        "index that can reach it (more bits per code, lists that are your clusters, or "
        "'flat' for exact search).",
    )


def tune_plan(plan: MiningPlan) -> tuple[MiningPlan, dict[str, Any] | None]:
    """``plan`` tuned to its recall target (see :func:`tuning_target`), if any.

    Returns the plan to mine with and the tuning record (None when not tuned);
    logs one INFO line when it tunes.
    """
    target, default = tuning_target(plan)
    if target is None:
        return plan, None
    tuned, info = tune(plan, target, default=default)
    why = " (the default target: no search settings were given)" if default else ""
    settings = ", ".join(f"{a}={b}" for a, b in info["settings"].items()) or "as stored"
    log.info(
        "tier-3 search tuned to recall@%d >= %g%s: %s reached %.4f on %d queries (%.4f or "
        "more over all, %d %% confidence) in %.2f s", info["k"], target, why, settings,
        info["recall"], info["sample"], info["recall_lower"], round(100 * TUNING_CONFIDENCE),
        info["seconds"],
    )  # fmt: skip
    return tuned, info
