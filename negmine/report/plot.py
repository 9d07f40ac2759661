"""plot_report: the figure of the per-tier similarity distributions (matplotlib, lazily)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..stats import HIST_EDGES
from .build import Report, TierRow
from .distribution import Distribution

__all__ = ["POSITIVE_COLOR", "TIER_COLORS", "PlotUnavailable", "plot_report"]

log = logging.getLogger("negmine.report")

_INSTALL_HINT = "pip install 'negmine[plot]'"


class PlotUnavailable(ImportError):
    """matplotlib, needed for the figure, is not installed."""


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


def _draw_reference(ax: Any, reference: Distribution, edges: np.ndarray) -> int:
    """The positive's distribution as a grey area; 1 if drawn."""
    h = reference.histogram(edges)
    if h is None:
        return 0
    ax.stairs(h[1], h[0], fill=True, color="#d9d9d9", zorder=1)
    label = _label("positive: cos(question, positive)", reference)
    ax.stairs(h[1], h[0], color=POSITIVE_COLOR, linewidth=1.6, linestyle="--",
              label=label, zorder=3)  # fmt: skip
    if reference.summary["q50"] is not None:
        ax.axvline(reference.summary["q50"], color=POSITIVE_COLOR, linewidth=1,
                   linestyle=":", zorder=2)  # fmt: skip
    return 1


def _draw_tiers(
    ax: Any, rows: list[tuple[TierRow, Distribution]], edges: np.ndarray
) -> tuple[int, int]:
    """One curve per tier (a line at the mean when only that is known): (drawn, means only)."""
    drawn = means_only = 0
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
    return drawn, means_only


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
    drawn = 0 if reference is None else _draw_reference(ax, reference, edges)
    n_tiers, means_only = _draw_tiers(ax, rows, edges)
    drawn += n_tiers
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


def _marks(report: Report, name: str, text: str, sign: float = 1.0) -> list[tuple[float, str]]:
    """A vertical line at the filter ``name``'s value (times ``sign``), when it was set."""
    v = _filter_value(report, name)
    return [] if v is None else [(sign * v, text.format(sign * v))]


def _panels(report: Report) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The arguments of :func:`_panel` for the three panels, left to right."""
    need = "not available: pass --data DATA_DIR"
    margin_lines = [(0.0, "as similar as the positive")]
    margin_lines += _marks(report, "absolute_margin", "-absolute_margin = {:g}", -1.0)
    return [
        (
            (
                "Similarity of negatives to the question",
                "cos(question, negative)",
                [(r, r.question) for r in report.tiers],
                report.positive,
                _marks(report, "max_score", "max_score = {:g}"),
                need,
            ),
            {},
        ),
        (
            (
                "Similarity of negatives to the positive",
                "cos(negative, positive)",
                [(r, r.positive) for r in report.tiers],
                None,
                _marks(report, "near_duplicate_threshold", "near_duplicate_threshold = {:g}"),
                need,
            ),
            {},
        ),
        (
            (
                "Negative against positive, per pair",
                "cos(question, negative) - cos(question, positive)",
                [(r, r.margin) for r in report.tiers],
                None,
                margin_lines if report.origins()["margin"] != "none" else [],
                "not available: pass --data DATA_DIR\n(or mine with positive_scores.pt)",
            ),
            {"default_edges": 2 * HIST_EDGES},
        ),
    ]


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
    from ..io import atomic_path

    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(18, 6.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (args, kw) in zip(axes, _panels(report), strict=True):
        _panel(ax, *args, **kw)
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
