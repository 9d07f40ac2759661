"""What a mining run produced, per tier: counts, fallbacks, similarity distributions.

:func:`build_report` reads a mining output directory and, optionally, the
dataset directory it was mined from, and gathers for every tier the cosine of
the negatives to the question and to the pair's positive source, next to the
cosine of the positive itself. :func:`format_report` renders the tables the
``negmine report`` command prints and :func:`plot_report` draws the figure
(matplotlib, the optional ``negmine[plot]`` extra) a user looks at to choose
the filter thresholds.

Each quantity comes from the best origin available:

1. ``data``: recomputed exactly from the embeddings of the dataset directory
   (float32, each row normalised once);
2. ``files``: ``negative_scores.pt`` / ``positive_scores.pt`` in the output
   directory;
3. ``manifest``: the summaries and histograms ``manifest.json`` records;
4. nothing: shown as ``-``.

matplotlib and torch are imported only by the functions that need them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_embeddings, check_ids, fail, normalized_float32
from .config import FILTER_NAMES, TIER_NAMES
from .stats import HIST_EDGES, SUMMARY_KEYS, summarize

__all__ = [
    "HIST_EDGES",
    "SUMMARY_KEYS",
    "Distribution",
    "PlotUnavailable",
    "Report",
    "TierRow",
    "build_report",
    "default_png_path",
    "format_report",
    "pair_cosines",
    "plot_report",
    "summarize",
]

log = logging.getLogger(__name__)

#: Largest difference between ``negative_scores.pt`` and the cosines recomputed
#: from a dataset directory for the two to count as the same run.
SCORE_TOLERANCE = 1e-3

#: Pairs per block when recomputing cosines from embeddings.
PAIR_BLOCK = 4096

#: The order in which the miner applies its filters (a candidate several of them
#: reject counts for the first); the report lists them in it.
FILTER_ORDER = FILTER_NAMES

_INSTALL_HINT = "pip install 'negmine[plot]'"


class PlotUnavailable(ImportError):
    """matplotlib, needed for the figure, is not installed."""


# --------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------


@dataclass
class Distribution:
    """One similarity distribution and where it came from.

    Attributes
    ----------
    origin : str
        ``"data"``, ``"files"``, ``"manifest"`` or ``"none"``.
    summary : dict
        :data:`SUMMARY_KEYS` to float or ``None`` (unknown).
    values : numpy.ndarray, optional
        Every value, float32 1-D, when known exactly.
    hist : tuple of (edges, counts), optional
        A recorded histogram, when the values are not known.
    """

    origin: str = "none"
    summary: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(SUMMARY_KEYS))
    values: np.ndarray | None = None
    hist: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def exact(cls, values: np.ndarray, origin: str) -> Distribution:
        """A distribution known value by value."""
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        return cls(origin=origin, summary=summarize(v), values=v)

    @classmethod
    def recorded(cls, summary: Any, hist: Any, mean: float | None = None) -> Distribution:
        """A distribution from a manifest's summary and histogram (either may be absent)."""
        s: dict[str, float | None] = dict.fromkeys(SUMMARY_KEYS)
        if isinstance(summary, Mapping):
            for k in SUMMARY_KEYS:
                v = summary.get(k)
                s[k] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        if s["mean"] is None and isinstance(mean, (int, float)):
            s["mean"] = float(mean)
        h = _parse_hist(hist)
        if h is None and all(v is None for v in s.values()):
            return cls()
        return cls(origin="manifest", summary=s, hist=h)

    @property
    def known(self) -> bool:
        """Whether anything at all is known about the distribution."""
        return self.origin != "none"

    def histogram(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(edges, density) over ``edges`` for exact values, else the recorded histogram."""
        if self.values is not None and self.values.size:
            counts, e = np.histogram(self.values, bins=edges)
            return e, _density(counts, e)
        if self.hist is not None and self.hist[1].sum() > 0:
            return self.hist[0], _density(self.hist[1], self.hist[0])
        return None


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / (total * np.diff(edges)) if total else counts.astype(np.float64)


def _parse_hist(h: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if not isinstance(h, Mapping):
        return None
    try:
        edges = np.asarray(h.get("edges"), dtype=np.float64)
        counts = np.asarray(h.get("counts"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if (
        edges.ndim != 1
        or counts.ndim != 1
        or edges.size != counts.size + 1
        or counts.size == 0
        or not np.isfinite(edges).all()
        or not (np.diff(edges) > 0).all()
        or not np.isfinite(counts).all()
    ):
        return None
    return edges, counts


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------


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


def pair_cosines(
    source_embeddings: Any,
    question_embeddings: Any,
    pair_indices: np.ndarray,
    hard_negatives: np.ndarray,
    block: int = PAIR_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines of every negative to its question and to its pair's positive.

    Parameters
    ----------
    source_embeddings : float [S, d]
    question_embeddings : float [Q, d]
    pair_indices : int [P, 2]
        (question, source) of each pair.
    hard_negatives : int [P, n_neg]
        Source ids in ``[0, S)``.
    block : int
        Pairs per block.

    Returns
    -------
    question_negative : float32 [P, n_neg]
        cos(question, negative).
    positive_negative : float32 [P, n_neg]
        cos(positive source, negative).
    question_positive : float32 [P]
        cos(question, positive source).

    Notes
    -----
    Only the sources and questions that occur are read; each is normalised once
    in float32. Products run in blocks of ``block`` pairs, so memory beyond the
    outputs stays ``O(block * n_neg * d)``.
    """
    neg = np.asarray(hard_negatives, dtype=np.int64)
    qi = np.asarray(pair_indices[:, 0], dtype=np.int64)
    si = np.asarray(pair_indices[:, 1], dtype=np.int64)
    used_s = np.unique(np.concatenate([neg.reshape(-1), si]))
    used_q = np.unique(qi)
    src = normalized_float32(np.asarray(source_embeddings)[used_s])
    qry = normalized_float32(np.asarray(question_embeddings)[used_q])
    n_p, n_neg = neg.shape
    qn = np.empty((n_p, n_neg), dtype=np.float32)
    pn = np.empty((n_p, n_neg), dtype=np.float32)
    qp = np.empty(n_p, dtype=np.float32)
    for a in range(0, n_p, block):
        b = min(a + block, n_p)
        qv = qry[np.searchsorted(used_q, qi[a:b])]
        pv = src[np.searchsorted(used_s, si[a:b])]
        nv = src[np.searchsorted(used_s, neg[a:b])]  # [B, n_neg, d]
        qn[a:b] = np.matmul(nv, qv[:, :, None])[:, :, 0]
        pn[a:b] = np.matmul(nv, pv[:, :, None])[:, :, 0]
        qp[a:b] = np.einsum("ij,ij->i", qv, pv)
    return qn, pn, qp


def _mismatch(what: str, fix: str = "") -> None:
    fail(
        "DATA_DIR",
        "hold the inputs OUT_DIR was mined from",
        what,
        fix or "Pass the dataset directory this run was mined from.",
    )


def _check_data(
    arrays: Mapping[str, Any], ids: np.ndarray, stats: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the dataset against the output; return (sources, questions, pairs)."""
    src = check_embeddings(arrays["source_embeddings"], "source_embeddings")
    qry = check_embeddings(
        arrays["question_embeddings"], "question_embeddings", src.shape[1], "source_embeddings"
    )
    pairs = np.asarray(arrays["pair_indices"])
    n_s, n_q = src.shape[0], qry.shape[0]
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        _mismatch(f"pair_indices of shape {list(pairs.shape)}, not [P, 2]")
    if pairs.shape[0] != ids.shape[0]:
        _mismatch(f"{pairs.shape[0]} pairs, while OUT_DIR holds {ids.shape[0]} rows of negatives")
    check_ids(
        pairs[:, 0],
        "pair_indices[:, 0]",
        ndim=1,
        upper=n_q,
        upper_what="Q = len(question_embeddings)",
    )
    check_ids(
        pairs[:, 1],
        "pair_indices[:, 1]",
        ndim=1,
        upper=n_s,
        upper_what="S = len(source_embeddings)",
    )
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_s):
        _mismatch(
            f"S = {n_s} sources, while hard_negatives.pt holds ids in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    recorded = {
        "n_pairs": pairs.shape[0],
        "n_sources": n_s,
        "n_questions": n_q,
        "n_clusters": len(arrays["centroid_embeddings"]),
    }
    for key, have in recorded.items():
        want = stats.get(key)
        if isinstance(want, int) and want != have:
            _mismatch(f"{key} = {have}, while the manifest records {want}")
    own = ids == pairs[:, 1:2].astype(np.int64)
    if own.any():
        p = int(np.flatnonzero(own.any(axis=1))[0])
        _mismatch(f"pair {p}'s own source {int(pairs[p, 1])} among its negatives")
    return src, qry, pairs.astype(np.int64)


def _compare(recorded: np.ndarray, recomputed: np.ndarray, fname: str) -> None:
    if recorded.shape != recomputed.shape:
        _mismatch(f"{fname} of shape {list(recorded.shape)} for {list(recomputed.shape)} cosines")
    diff = np.abs(recorded.astype(np.float64) - recomputed)
    if diff.size and not diff.max() <= SCORE_TOLERANCE:
        where = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf))),
                                 diff.shape)  # fmt: skip
        _mismatch(
            f"embeddings whose cosines differ from {fname} by up to {float(np.max(diff)):.3g} "
            f"(at {list(map(int, where))})",
            "These are not the embeddings this run was mined from.",
        )


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


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
        :func:`negmine.datasets.load_dataset`). With it every cosine is
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
    from .io import load_outputs

    out = load_outputs(out_dir)
    manifest = out["manifest"]
    ids = np.asarray(out["hard_negatives"])
    tiers = np.asarray(out["negative_tiers"])
    if ids.ndim != 2 or tiers.shape != ids.shape:
        fail(
            "out_dir",
            "hold hard_negatives.pt and negative_tiers.pt of one shape [P, n_neg]",
            f"shapes {list(ids.shape)} and {list(tiers.shape)}",
        )
    n_p, n_neg = ids.shape
    stats = manifest.get("stats") if isinstance(manifest.get("stats"), Mapping) else {}
    scores = out.get("negative_scores")
    if scores is not None and np.shape(scores) != ids.shape:
        fail(
            "out_dir",
            "hold negative_scores.pt of the shape of hard_negatives.pt",
            f"shapes {list(np.shape(scores))} and {list(ids.shape)}",
        )
    pos_scores = out.get("positive_scores")
    if pos_scores is not None and np.shape(pos_scores) != (n_p,):
        fail(
            "out_dir",
            f"hold positive_scores.pt of shape [{n_p}] (one per pair)",
            f"shape {list(np.shape(pos_scores))}",
        )

    qn = pn = qp = None
    origin_q = origin_p = origin_ref = "none"
    data_dir = None
    if data is not None:
        from .io.datasets import load_dataset

        ds = load_dataset(data)
        data_dir = ds.path
        src, qry, pairs = _check_data(ds.arrays, ids, stats)
        qn, pn, qp = pair_cosines(src, qry, pairs, ids)
        if scores is not None:
            _compare(np.asarray(scores), qn, "negative_scores.pt")
        if pos_scores is not None:
            _compare(np.asarray(pos_scores), qp, "positive_scores.pt")
        origin_q = origin_p = origin_ref = "data"
    else:
        if scores is not None:
            qn, origin_q = np.asarray(scores, dtype=np.float32), "files"
        if pos_scores is not None:
            qp, origin_ref = np.asarray(pos_scores, dtype=np.float32), "files"

    recorded = stats.get("tiers") if isinstance(stats.get("tiers"), Mapping) else {}
    counts = np.bincount(tiers.reshape(-1).clip(0, 5), minlength=6)
    tier_counts = (manifest.get("config") or {}).get("tier_counts")
    rows = []
    margin_all = None if qn is None or qp is None else qn - qp[:, None]
    for t in range(1, 5):
        rec = recorded.get(str(t)) if isinstance(recorded.get(str(t)), Mapping) else {}
        sel = tiers == t
        if qn is not None:
            q_dist = Distribution.exact(qn[sel], origin_q)
        else:
            q_dist = Distribution.recorded(
                rec.get("cosine_question"), rec.get("hist_question"), rec.get("mean_cosine")
            )
        if pn is not None:
            p_dist = Distribution.exact(pn[sel], origin_p)
        else:
            p_dist = Distribution.recorded(rec.get("cosine_positive"), rec.get("hist_positive"))
        m_dist = (
            Distribution.exact(margin_all[sel], "data" if data is not None else "files")
            if margin_all is not None
            else Distribution()
        )
        requested = _int_or_none(rec.get("requested"))
        if requested is None and isinstance(tier_counts, list) and len(tier_counts) == 4:
            requested = int(tier_counts[t - 1]) * n_p
        rows.append(
            TierRow(
                tier=t,
                name=str(rec.get("name") or TIER_NAMES[t]),
                count=int(counts[t]),
                requested=requested,
                fallback=_int_or_none(rec.get("fallback")),
                question=q_dist,
                positive=p_dist,
                margin=m_dist,
            )
        )
    if qp is not None:
        ref = Distribution.exact(qp, origin_ref)
    else:
        pc = stats.get("positive_cosine")
        ref = Distribution.recorded(pc, pc.get("hist") if isinstance(pc, Mapping) else None)

    filters: dict[str, dict[str, Any]] = {}
    raw = stats.get("filters")
    if isinstance(raw, Mapping):
        order = {name: i for i, name in enumerate(FILTER_ORDER)}
        for name in sorted(raw, key=lambda n: (order.get(n, len(order)), str(n))):
            f = raw[name]
            if not isinstance(f, Mapping):
                continue
            removed = f.get("removed") if isinstance(f.get("removed"), Mapping) else {}
            filters[str(name)] = {
                "value": f.get("value"),
                "removed": {t: _int_or_none(removed.get(str(t))) for t in range(1, 5)},
                "shortfall": _int_or_none(f.get("shortfall")),
            }
    shortfalls = stats.get("shortfalls") if isinstance(stats.get("shortfalls"), Mapping) else {}
    return Report(
        out_dir=Path(out_dir),
        n_pairs=n_p,
        n_neg=n_neg,
        tiers=rows,
        positive=ref,
        filters=filters,
        shortfalls={str(k): int(v) for k, v in shortfalls.items() if isinstance(v, int)},
        data_dir=data_dir,
    )


# --------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------

_ORIGIN_TEXT = {
    "data": "recomputed from the embeddings in {data}",
    "files": "from {file}",
    "manifest": "from the manifest's summaries",
    "none": "not available",
}

_NEED_DATA = "not available: pass --data DATA_DIR"


def _num(v: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"


def _int(v: int | None, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}}"


def _summary_cells(d: Distribution) -> str:
    return "".join(_num(d.summary[k], 8) for k in SUMMARY_KEYS)


def _title(report: Report, what: str, which: str, file: str) -> str:
    o = report.origins()[which]
    return f"{what}: " + _ORIGIN_TEXT[o].format(data=report.data_dir, file=file)


def format_report(report: Report) -> str:
    """The tables ``negmine report`` prints.

    Parameters
    ----------
    report : Report

    Returns
    -------
    str
        Per tier: the count, requested count, fallbacks and the summary of
        cos(question, negative), with cos(question, positive) as a reference
        row; the summary of cos(negative, positive); when the positive's cosine
        is known pair by pair, the summary of cos(question, negative) -
        cos(question, positive); and the candidates each filter removed. Each
        table names where its numbers come from. Cosines have three decimals;
        ``-`` marks what is unknown.
    """
    w = 22
    head = "".join(f"{k:>8}" for k in SUMMARY_KEYS)
    lines = [f"{report.out_dir}: {report.n_pairs} pairs x {report.n_neg} negatives", ""]

    lines.append(_title(report, "cos(question, negative)", "question", "negative_scores.pt"))
    lines.append(f"{'tier':<{w}}{'count':>9}{'requested':>10}{'fallback':>9}{head}")
    for r in report.tiers:
        lines.append(
            f"{f'{r.tier} {r.name}':<{w}}{r.count:>9}{_int(r.requested, 10)}"
            f"{_int(r.fallback, 9)}{_summary_cells(r.question)}"
        )
    ref = report.positive
    if ref.known:
        lines.append(
            f"{'positive (reference)':<{w}}{report.n_pairs:>9}{'':>19}{_summary_cells(ref)}"
        )
        lines.append(
            "  "
            + _title(
                report,
                "positive (reference) = cos(question, positive) of each pair",
                "reference",
                "positive_scores.pt",
            )
        )
    else:
        lines.append(f"  cos(question, positive): {_NEED_DATA}")

    lines.append("")
    lines.append(_title(report, "cos(negative, positive)", "positive", ""))
    if report.origins()["positive"] == "none":
        lines[-1] = f"cos(negative, positive): {_NEED_DATA}"
    else:
        lines.append(f"{'tier':<{w}}{'count':>9}{head}")
        for r in report.tiers:
            lines.append(f"{f'{r.tier} {r.name}':<{w}}{r.count:>9}{_summary_cells(r.positive)}")

    if report.origins()["margin"] != "none":
        lines.append("")
        lines.append(
            _title(
                report,
                "cos(question, negative) - cos(question, positive)",
                "margin",
                "negative_scores.pt and positive_scores.pt",
            )
        )
        lines.append(f"{'tier':<{w}}{'count':>9}{head}")
        for r in report.tiers:
            lines.append(f"{f'{r.tier} {r.name}':<{w}}{r.count:>9}{_summary_cells(r.margin)}")

    lines.append("")
    if report.filters:
        lines.append("candidates removed by each filter, per tier")
        lines.append(
            f"{'filter':<{w + 4}}{'value':>12}"
            + "".join(f"{f'tier {t}':>9}" for t in range(1, 5))
            + f"{'shortfall':>11}"
        )
        for name, f in report.filters.items():
            v = f["value"]
            vtext = "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
            cells = "".join(_int(f["removed"][t], 9) for t in range(1, 5))
            lines.append(f"{name:<{w + 4}}{vtext:>12}{cells}{_int(f['shortfall'], 11)}")
    else:
        lines.append("filters: none recorded in the manifest")
    sf = {k: v for k, v in report.shortfalls.items() if v}
    lines.append("")
    lines.append(f"shortfalls moved along the fallback: {sf or 'none'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------

TIER_COLORS = {1: "#1f77b4", 2: "#ff7f0e", 3: "#d62728", 4: "#2ca02c"}
POSITIVE_COLOR = "#444444"


def _matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or :class:`PlotUnavailable` with the install line."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(
            f"matplotlib is not installed, so no figure was drawn; install it with {_INSTALL_HINT}"
        ) from None
    return Figure, FigureCanvasAgg


def _edges_for(
    dists: list[Distribution], n_bins: int = 60, default: np.ndarray = HIST_EDGES
) -> np.ndarray:
    """Common bin edges over the range of the exact values (padded), within [-1, 1]
    for cosines or wider for differences."""
    lo, hi = np.inf, -np.inf
    for d in dists:
        if d.values is not None and d.values.size:
            lo, hi = min(lo, float(d.values.min())), max(hi, float(d.values.max()))
        elif d.hist is not None:
            nz = np.flatnonzero(d.hist[1])
            if nz.size:
                lo = min(lo, float(d.hist[0][nz[0]]))
                hi = max(hi, float(d.hist[0][nz[-1] + 1]))
    if not np.isfinite(lo):
        for d in dists:
            m = d.summary.get("mean")
            if m is not None:
                lo, hi = min(lo, m), max(hi, m)
    if not np.isfinite(lo):
        return default
    if hi - lo < 0.2:
        lo, hi = lo - 0.1, hi + 0.1
    pad = max(0.02, 0.03 * (hi - lo))
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def _label(name: str, d: Distribution, count: int | None = None) -> str:
    med = d.summary.get("q50")
    parts = [] if count is None else [f"n={count:,}"]
    if med is not None:
        parts.append(f"median {med:.2f}")
    elif d.summary.get("mean") is not None:
        parts.append(f"mean {d.summary['mean']:.2f}")
    return f"{name} ({', '.join(parts)})" if parts else name


def _panel(
    ax: Any,
    title: str,
    xlabel: str,
    rows: list[tuple[TierRow, Distribution]],
    reference: Distribution | None,
    lines: list[tuple[float, str]],
    missing: str,
    default_edges: np.ndarray = HIST_EDGES,
) -> None:
    dists = [d for _, d in rows] + ([reference] if reference is not None else [])
    edges = _edges_for([d for d in dists if d.known], default=default_edges)
    drawn = 0
    if reference is not None:
        h = reference.histogram(edges)
        if h is not None:
            ax.stairs(h[1], h[0], fill=True, color="#d9d9d9", zorder=1)
            label = _label("positive: cos(question, positive)", reference)
            ax.stairs(h[1], h[0], color=POSITIVE_COLOR, linewidth=1.6, linestyle="--",
                      label=label, zorder=3)  # fmt: skip
            if reference.summary["q50"] is not None:
                ax.axvline(reference.summary["q50"], color=POSITIVE_COLOR, linewidth=1,
                           linestyle=":", zorder=2)  # fmt: skip
            drawn += 1
    means_only = 0
    for r, d in rows:
        h = d.histogram(edges)
        color = TIER_COLORS[r.tier]
        if h is not None:
            ax.stairs(h[1], h[0], color=color, linewidth=1.8,
                      label=_label(f"{r.tier} {r.name}", d, r.count), zorder=4)  # fmt: skip
            drawn += 1
        elif d.summary["mean"] is not None:
            # Only the mean is known (older manifests): a vertical line at it.
            ax.axvline(d.summary["mean"], color=color, linewidth=2,
                       label=_label(f"{r.tier} {r.name}", d, r.count) + ": mean only")  # fmt: skip
            drawn += 1
            means_only += 1
    for x, text in lines:
        reference_line = text.startswith("as similar")
        ax.axvline(x, color="#888888" if reference_line else "black", linewidth=1.2,
                   linestyle=":" if reference_line else "-.", label=text, zorder=5)  # fmt: skip
    xs = [x for x, _ in lines]
    ax.set_xlim(min([edges[0], *(x - 0.03 for x in xs)]), max([edges[-1], *(x + 0.03 for x in xs)]))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(True, alpha=0.3)
    if drawn:
        # Below the axes, so it never hides a curve.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
                  frameon=False)  # fmt: skip
    if means_only == drawn and drawn:
        ax.set_yticks([])
        ax.text(0.5, 0.04, "no distribution recorded: pass --data DATA_DIR", ha="center",
                transform=ax.transAxes, fontsize=9, color="#555555")  # fmt: skip
    if not drawn:
        ax.text(0.5, 0.5, missing, ha="center", va="center", transform=ax.transAxes,
                fontsize=10, color="#555555", wrap=True)  # fmt: skip
        ax.set_yticks([])


def _filter_value(report: Report, name: str) -> float | None:
    f = report.filters.get(name)
    v = None if f is None else f.get("value")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def plot_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Draw the per-tier similarity distributions into a PNG file, atomically.

    Three panels: cos(question, negative) per tier with the positive's
    cos(question, positive) as a grey reference (and the ``max_score`` filter
    as a vertical line when set); cos(negative, positive) per tier (with
    ``near_duplicate_threshold``); and cos(question, negative) -
    cos(question, positive) per tier (with ``-absolute_margin``). Each curve is
    a density histogram; a panel whose data are unknown says what is missing.

    Parameters
    ----------
    report : Report
    path : str or path-like
        The PNG file; its directory must exist.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    PlotUnavailable
        If matplotlib is not installed (the ``negmine[plot]`` extra).
    """
    from .io import atomic_path

    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(18, 6.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    need = "not available: pass --data DATA_DIR"
    lines_q = []
    v = _filter_value(report, "max_score")
    if v is not None:
        lines_q.append((v, f"max_score = {v:g}"))
    _panel(
        axes[0],
        "Similarity of negatives to the question",
        "cos(question, negative)",
        [(r, r.question) for r in report.tiers],
        report.positive,
        lines_q,
        need,
    )
    lines_p = []
    v = _filter_value(report, "near_duplicate_threshold")
    if v is not None:
        lines_p.append((v, f"near_duplicate_threshold = {v:g}"))
    _panel(
        axes[1],
        "Similarity of negatives to the positive",
        "cos(negative, positive)",
        [(r, r.positive) for r in report.tiers],
        None,
        lines_p,
        need,
    )
    lines_m = [(0.0, "as similar as the positive")]
    v = _filter_value(report, "absolute_margin")
    if v is not None:
        lines_m.append((-v, f"-absolute_margin = {-v:g}"))
    _panel(
        axes[2],
        "Negative against positive, per pair",
        "cos(question, negative) - cos(question, positive)",
        [(r, r.margin) for r in report.tiers],
        None,
        lines_m if report.origins()["margin"] != "none" else [],
        "not available: pass --data DATA_DIR\n(or mine with positive_scores.pt)",
        default_edges=2 * HIST_EDGES,
    )
    o = report.origins()
    src = {"data": "embeddings in DATA_DIR", "files": "score files", "manifest": "manifest",
           "none": "-"}  # fmt: skip
    fig.suptitle(
        f"negmine report: {report.out_dir.name or report.out_dir}, {report.n_pairs:,} pairs x "
        f"{report.n_neg} negatives (cosines from the {src[o['question']]})",
        fontsize=12,
    )
    p = Path(path)
    with atomic_path(p) as tmp:
        fig.savefig(tmp, format="png")
    log.debug("wrote %s", p)
    return p
