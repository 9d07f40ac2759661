"""build_report: a mining output directory (and its dataset) summarised per tier."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import fail
from ..config import FILTER_NAMES, TIER_NAMES
from .cosines import check_data, compare_scores, pair_cosines
from .distribution import Distribution

__all__ = ["FILTER_ORDER", "Report", "TierRow", "build_report", "default_png_path"]

#: The order in which the miner applies its filters (a candidate several of them
#: reject counts for the first); the report lists them in it.
FILTER_ORDER = FILTER_NAMES


@dataclass
class TierRow:
    """Everything the report knows about one tier.

    Attributes
    ----------
    tier : int
        Label 1-4.
    name : str
    count : int
        Negatives with this label in ``negative_tiers.pt``.
    requested : int or None
        What the proportions asked for (from the manifest).
    fallback : int or None
        Negatives with this label that came from a fallback (from the manifest).
    question : Distribution
        cos(question, negative).
    positive : Distribution
        cos(negative, the pair's positive source).
    margin : Distribution
        cos(question, negative) - cos(question, positive), per negative.
    """

    tier: int
    name: str
    count: int
    requested: int | None
    fallback: int | None
    question: Distribution
    positive: Distribution
    margin: Distribution


@dataclass
class Report:
    """A mining output, summarised per tier.

    Attributes
    ----------
    out_dir : pathlib.Path
    n_pairs, n_neg : int
    tiers : list of TierRow
        Tiers 1-4.
    positive : Distribution
        cos(question, positive) over the pairs.
    filters : dict
        The manifest's ``stats["filters"]``: name to ``{"value", "removed"
        (tier to count), "shortfall"}``; empty when none were recorded.
    shortfalls : dict
        The manifest's ``stats["shortfalls"]``.
    data_dir : pathlib.Path or None
        The dataset directory the cosines were recomputed from.
    """

    out_dir: Path
    n_pairs: int
    n_neg: int
    tiers: list[TierRow]
    positive: Distribution
    filters: dict[str, dict[str, Any]]
    shortfalls: dict[str, int]
    data_dir: Path | None = None

    def origins(self) -> dict[str, str]:
        """Where each of the three similarities came from, for the header."""

        def pick(ds: list[Distribution]) -> str:
            known = [d.origin for d in ds if d.known]
            return known[0] if known else "none"

        return {
            "question": pick([t.question for t in self.tiers]),
            "positive": pick([t.positive for t in self.tiers]),
            "reference": self.positive.origin,
            "margin": pick([t.margin for t in self.tiers]),
        }


def default_png_path(out_dir: str | os.PathLike[str]) -> Path:
    """Where ``negmine report`` writes its figure by default: ``<OUT_DIR>-report.png``
    beside the output directory (never inside it: negmine replaces that directory
    whole, and refuses to replace one holding files it did not write)."""
    d = Path(os.path.abspath(out_dir))
    return d.parent / f"{d.name}-report.png"


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _mapping(d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = d.get(key)
    return v if isinstance(v, Mapping) else {}


@dataclass
class _Cosines:
    """What is known value by value: cos(question, negative) ``qn`` [P, K],
    cos(positive, negative) ``pn`` [P, K], cos(question, positive) ``qp`` [P],
    each with its origin."""

    qn: np.ndarray | None = None
    pn: np.ndarray | None = None
    qp: np.ndarray | None = None
    origin_q: str = "none"
    origin_p: str = "none"
    origin_ref: str = "none"
    data_dir: Path | None = None


def _load(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The output directory's arrays, checked against each other."""
    from ..io import load_outputs

    out = load_outputs(out_dir)
    ids = np.asarray(out["hard_negatives"])
    tiers = np.asarray(out["negative_tiers"])
    if ids.ndim != 2 or tiers.shape != ids.shape:
        fail(
            "out_dir",
            "hold hard_negatives.pt and negative_tiers.pt of one shape [P, n_neg]",
            f"shapes {list(ids.shape)} and {list(tiers.shape)}",
        )
    scores = out.get("negative_scores")
    if scores is not None and np.shape(scores) != ids.shape:
        fail(
            "out_dir",
            "hold negative_scores.pt of the shape of hard_negatives.pt",
            f"shapes {list(np.shape(scores))} and {list(ids.shape)}",
        )
    pos_scores = out.get("positive_scores")
    if pos_scores is not None and np.shape(pos_scores) != (ids.shape[0],):
        fail(
            "out_dir",
            f"hold positive_scores.pt of shape [{ids.shape[0]}] (one per pair)",
            f"shape {list(np.shape(pos_scores))}",
        )
    manifest = out["manifest"]
    return {
        "ids": ids,
        "tiers": tiers,
        "scores": scores,
        "pos_scores": pos_scores,
        "manifest": manifest,
        "stats": _mapping(manifest, "stats"),
    }


def _cosines(out: dict[str, Any], data: str | os.PathLike[str] | None) -> _Cosines:
    """Recompute from the dataset when given, else take the score files."""
    scores, pos_scores = out["scores"], out["pos_scores"]
    if data is None:
        c = _Cosines()
        if scores is not None:
            c.qn, c.origin_q = np.asarray(scores, dtype=np.float32), "files"
        if pos_scores is not None:
            c.qp, c.origin_ref = np.asarray(pos_scores, dtype=np.float32), "files"
        return c
    from ..io.datasets import load_dataset

    ds = load_dataset(data)
    src, qry, pairs = check_data(ds.arrays, out["ids"], out["stats"])
    qn, pn, qp = pair_cosines(src, qry, pairs, out["ids"])
    if scores is not None:
        compare_scores(np.asarray(scores), qn, "negative_scores.pt")
    if pos_scores is not None:
        compare_scores(np.asarray(pos_scores), qp, "positive_scores.pt")
    return _Cosines(qn, pn, qp, "data", "data", "data", ds.path)


def _tier_row(t: int, out: dict[str, Any], cos: _Cosines, counts: np.ndarray) -> TierRow:
    rec = _mapping(_mapping(out["stats"], "tiers"), str(t))
    sel = out["tiers"] == t
    if cos.qn is not None:
        q_dist = Distribution.exact(cos.qn[sel], cos.origin_q)
    else:
        q_dist = Distribution.recorded(
            rec.get("cosine_question"), rec.get("hist_question"), rec.get("mean_cosine")
        )
    if cos.pn is not None:
        p_dist = Distribution.exact(cos.pn[sel], cos.origin_p)
    else:
        p_dist = Distribution.recorded(rec.get("cosine_positive"), rec.get("hist_positive"))
    if cos.qn is not None and cos.qp is not None:
        margin = (cos.qn - cos.qp[:, None])[sel]
        m_dist = Distribution.exact(margin, "data" if cos.data_dir is not None else "files")
    else:
        m_dist = Distribution()
    requested = _int_or_none(rec.get("requested"))
    tier_counts = (out["manifest"].get("config") or {}).get("tier_counts")
    if requested is None and isinstance(tier_counts, list) and len(tier_counts) == 4:
        requested = int(tier_counts[t - 1]) * out["ids"].shape[0]
    return TierRow(
        tier=t,
        name=str(rec.get("name") or TIER_NAMES[t]),
        count=int(counts[t]),
        requested=requested,
        fallback=_int_or_none(rec.get("fallback")),
        question=q_dist,
        positive=p_dist,
        margin=m_dist,
    )


def _filters(stats: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest's filter counts, in the miner's filter order."""
    filters: dict[str, dict[str, Any]] = {}
    raw = stats.get("filters")
    if not isinstance(raw, Mapping):
        return filters
    order = {name: i for i, name in enumerate(FILTER_ORDER)}
    for name in sorted(raw, key=lambda n: (order.get(n, len(order)), str(n))):
        f = raw[name]
        if not isinstance(f, Mapping):
            continue
        removed = _mapping(f, "removed")
        filters[str(name)] = {
            "value": f.get("value"),
            "removed": {t: _int_or_none(removed.get(str(t))) for t in range(1, 5)},
            "shortfall": _int_or_none(f.get("shortfall")),
        }
    return filters


def build_report(
    out_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None
) -> Report:
    """Summarise a mining output directory per tier.

    Parameters
    ----------
    out_dir : str or path-like
        A complete mining output directory.
    data : str or path-like, optional
        The dataset directory it was mined from (see
        :func:`negmine.io.datasets.load_dataset`). With it every cosine is
        recomputed exactly from the embeddings; without it the report uses the
        score files in ``out_dir``, then the manifest's summaries.

    Returns
    -------
    Report

    Raises
    ------
    ValueError
        If ``out_dir`` is not a complete output directory, its tensors disagree
        with each other, or ``data`` does not match it (number of pairs,
        sources, questions or clusters; ids out of range; cosines that differ
        from ``negative_scores.pt``).
    """
    out = _load(out_dir)
    cos = _cosines(out, data)
    counts = np.bincount(out["tiers"].reshape(-1).clip(0, 5), minlength=6)
    rows = [_tier_row(t, out, cos, counts) for t in range(1, 5)]
    stats = out["stats"]
    if cos.qp is not None:
        ref = Distribution.exact(cos.qp, cos.origin_ref)
    else:
        pc = stats.get("positive_cosine")
        ref = Distribution.recorded(pc, pc.get("hist") if isinstance(pc, Mapping) else None)
    shortfalls = _mapping(stats, "shortfalls")
    n_p, n_neg = out["ids"].shape
    return Report(
        out_dir=Path(out_dir),
        n_pairs=n_p,
        n_neg=n_neg,
        tiers=rows,
        positive=ref,
        filters=_filters(stats),
        shortfalls={str(k): int(v) for k, v in shortfalls.items() if isinstance(v, int)},
        data_dir=cos.data_dir,
    )
